"""`gloss run`, the nightly job: real MiniLM, a real SQLite file, a scripted LLM server,
and real subprocesses for SIGKILL, SIGTERM and lock contention."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gloss.pipeline import config as cfg
from gloss.pipeline.cli import main
from gloss.pipeline.run import EXIT_INTERRUPTED, EXIT_PARTIAL, LOCK, holder_name
from gloss.store import LockedError, open_store
from tests.scripted_llm import ScriptedLLM

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 6

TEXT = """The river ran past the mill and under the old stone bridge.
Three kilometres is a little less than two miles, and a mile is 1.6 kilometres.
She said: "Never again, never again," and then she laughed again.
In 1848 the city of Paris saw revolution; in 1871 the Commune rose.
The cat sat on the mat. The dog sat on the log. The bird sat on the word.
Water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.
"""


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def workdir(tmp_path, llm):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(TEXT * (1 + i % 3), encoding="utf-8")
    toml = (
        f'database = "sqlite:///{tmp_path / "gloss.db"}"\n'
        '[subject]\nmodel = "minilm"\nhook = "layer.1.mlp"\n'
        f'features = "0:{N_FEATURES}"\n'
        f'[corpus]\npaths = ["{corpus}"]\nctx_len = 16\n'
        "[mining]\ntop_explain = 4\ntop_holdout = 2\nquantiles = 2\nquantile_explain = 1\n"
        "quantile_holdout = 1\nrandom_holdout = 2\nbatch_size = 16\n"
        '[explainer]\nstyle = "openai"\nmax_examples = 4\n'
        '[simulator]\nmethod = "logprobs"\n'
        f'[llm.explainer]\nmodel = "scripted"\nbase_url = "{llm.base_url}"\nmax_attempts = 2\nbackoff_s = 0.01\nconcurrency = 2\n'
        f'[llm.simulator]\nmodel = "scripted"\nbase_url = "{llm.base_url}"\nmax_attempts = 2\nbackoff_s = 0.01\nconcurrency = 2\n'
    )
    (tmp_path / "gloss.toml").write_text(toml, encoding="utf-8")
    return tmp_path


def gloss(workdir: Path, *args: str) -> int:
    return main(["run", "--config", str(workdir / "gloss.toml"), *args])


def db(workdir: Path) -> sqlite3.Connection:
    return sqlite3.connect(workdir / "gloss.db")


def counts(workdir: Path) -> dict[str, int]:
    queries = {
        table: f"SELECT count(*) FROM {table}"
        for table in ("features", "windows", "explanations", "scores", "llm_calls")
    }
    queries.update(
        examples="SELECT coalesce(sum(count), 0) FROM feature_examples",
        labeled="SELECT count(*) FROM feature_labels WHERE label IS NOT NULL",
        model_labels="SELECT count(*) FROM explanations WHERE author_kind = 'model'",
        model_labeled="SELECT count(*) FROM feature_labels WHERE author_kind = 'model'",
        scored="SELECT count(*) FROM feature_labels l WHERE EXISTS (SELECT 1 FROM scores s "
        "WHERE s.explanation_id = l.explanation_id AND s.method = 'simulation')",
    )
    con = db(workdir)
    out = {name: con.execute(sql).fetchone()[0] for name, sql in queries.items()}
    con.close()
    return out


DUPLICATES = [
    "SELECT feature_id FROM explanations WHERE author_kind = 'model' GROUP BY 1 HAVING count(*) > 1",
    "SELECT feature_id FROM explanations WHERE author_kind = 'baseline' GROUP BY 1 HAVING count(*) > 1",
    "SELECT explanation_id FROM scores GROUP BY explanation_id, method, simulator_model "
    "HAVING count(*) > 1",
]


def assert_no_duplicates(workdir: Path) -> None:
    """No doubled labels or scores, and no window twice among a feature's examples."""
    from gloss.store import ExampleSet

    con = db(workdir)
    for sql in DUPLICATES:
        assert con.execute(sql).fetchall() == [], sql
    for feature_id, data in con.execute("SELECT feature_id, data FROM feature_examples"):
        windows = ExampleSet.unpack(data).windows.tolist()
        assert len(windows) == len(set(windows)), feature_id
    con.close()


def test_a_run_labels_and_scores_then_a_second_run_is_a_no_op(workdir, llm, capsys):
    assert gloss(workdir) == 0
    out = capsys.readouterr().out
    assert "done" in out
    first = counts(workdir)
    live = (
        first["features"]
        - db(workdir).execute("SELECT count(*) FROM features WHERE status='dead'").fetchone()[0]
    )
    assert first["features"] == N_FEATURES
    assert first["labeled"] == first["model_labeled"] == live and first["scored"] == live
    calls = len(llm.requests)
    assert calls == 2 * live  # one explain and one simulation call per feature

    assert gloss(workdir) == 0
    assert counts(workdir) == first
    assert len(llm.requests) == calls
    with open_store(f"sqlite:///{workdir / 'gloss.db'}") as store:
        runs = store.runs()
    assert [r.status for r in runs if r.kind == "run"] == ["done", "done"]
    assert runs[0].code_version and runs[0].config["subject"]["hook"] == "layer.1.mlp"
    # every label the run wrote is searchable by meaning: the first run embedded them all
    workers = [r for r in reversed(runs) if r.kind == "run"]
    assert [r.counts["search"]["embedded"] for r in workers] == [live, 0]
    vectors = db(workdir).execute("SELECT count(*) FROM label_vectors").fetchone()[0]
    assert vectors == first["labeled"]


def test_dry_run_plans_and_does_nothing(workdir, llm, capsys):
    assert main(["run", "--config", str(workdir / "gloss.toml"), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["mine"] == N_FEATURES and plan["explain"] == N_FEATURES
    assert plan["explain_calls"] == N_FEATURES and plan["est_prompt_tokens"] > 0
    assert counts(workdir)["explanations"] == 0 and llm.requests == []


def test_a_human_label_survives_a_run(workdir, llm):
    assert gloss(workdir, "--features", "0:2") == 0
    url = f"sqlite:///{workdir / 'gloss.db'}"
    with open_store(url) as store:
        feature = store.search("", status="proposed")[0].feature_id
        store.review(feature, "edit", "ann", text="a label ann wrote")
    assert gloss(workdir) == 0
    with open_store(url) as store:
        current = store.current_explanation(feature)
        assert (current.text, current.author_kind) == ("a label ann wrote", "human")
    assert gloss(workdir, "--relabel-human") == 0
    with open_store(url) as store:
        assert store.current_explanation(feature).author_kind == "model"


def test_budget_stops_cleanly_and_the_next_run_finishes(workdir, llm, capsys):
    assert gloss(workdir, "--max-llm-tokens", "1") == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "budget reached" in out
    after = counts(workdir)
    # every call books its worst case first: none fits in one token, so none starts
    assert after["llm_calls"] == 0 and after["model_labels"] == 0
    assert gloss(workdir) == 0
    final = counts(workdir)
    assert final["labeled"] == final["scored"] == final["model_labeled"] > after["model_labels"]
    assert_no_duplicates(workdir)


def test_failed_features_are_retried_then_left_flagged(workdir, llm):
    llm.label_override = "   "  # an answer with no label: a recorded failure, never a label
    assert gloss(workdir, "--features", "0:2") == EXIT_PARTIAL
    con = db(workdir)
    assert (
        con.execute("SELECT count(*) FROM explanations WHERE author_kind = 'model'").fetchone()[0]
        == 0
    )
    # until an LLM label succeeds, the baseline label is the current one
    kinds = con.execute(
        "SELECT DISTINCT author_kind FROM feature_labels WHERE label IS NOT NULL"
    ).fetchall()
    assert kinds == [("baseline",)]
    assert con.execute("SELECT max(failures) FROM features").fetchone()[0] == 1
    con.close()
    for _ in range(3):
        gloss(workdir, "--features", "0:2")
    con = db(workdir)
    assert con.execute("SELECT max(failures) FROM features").fetchone()[0] == 3  # max_failures
    calls = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    con.close()
    llm.label_override = None
    assert gloss(workdir, "--features", "0:2") == 0  # flagged features are left alone
    assert db(workdir).execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls


def test_lock_contention_gives_a_clear_message_and_exit_code(workdir, llm, capsys):
    url = f"sqlite:///{workdir / 'gloss.db'}"
    with open_store(url) as store:
        store.acquire_lock(LOCK, holder_name())  # held by a live process: this one
    assert gloss(workdir) == LockedError.exit_code
    err = capsys.readouterr().err
    assert "another gloss run holds" in err
    assert "SQLite takes one gloss run at a time" in err and "PostgreSQL" in err
    assert len(err.strip().splitlines()) == 1
    with open_store(url) as store:
        store.release_lock(LOCK, holder_name())
    assert gloss(workdir) == 0


def test_config_errors_name_the_key(workdir, capsys):
    path = workdir / "gloss.toml"
    path.write_text(path.read_text() + "\n[run]\nlimt = 3\n")
    assert gloss(workdir) == 2
    assert "limt" in capsys.readouterr().err


def _start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gloss.pipeline.cli",
            "run",
            "--config",
            str(workdir / "gloss.toml"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_labels(workdir: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if (workdir / "gloss.db").exists() and counts(workdir)["model_labels"] >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run made no progress")


def test_sigkill_mid_run_loses_only_work_in_flight(workdir, llm):
    llm.latency_s = 0.4
    proc = _start(workdir)
    _wait_for_labels(workdir, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = counts(workdir)
    assert 2 <= before["model_labels"] < N_FEATURES
    llm.latency_s = 0.0
    done = _start(workdir)  # takes over the dead run's lock at once
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    after = counts(workdir)
    assert after["labeled"] == after["scored"] == after["model_labeled"] >= before["model_labels"]
    assert after["examples"] == before["examples"] and after["windows"] == before["windows"]
    assert_no_duplicates(workdir)
    con = db(workdir)
    statuses = [r[0] for r in con.execute("SELECT status FROM runs WHERE kind = 'run' ORDER BY id")]
    con.close()
    assert statuses == ["abandoned", "done"]


def test_sigterm_stops_gracefully_and_marks_the_run_interrupted(workdir, llm):
    llm.latency_s = 0.4
    proc = _start(workdir)
    _wait_for_labels(workdir, proc, 1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in out
    con = db(workdir)
    assert con.execute("SELECT status FROM runs WHERE kind = 'run'").fetchone()[0] == "interrupted"
    assert con.execute("SELECT count(*) FROM locks").fetchone()[0] == 0
    con.close()
    assert_no_duplicates(workdir)


def test_template_names_every_setting_and_parses():
    config = cfg.load()  # no gloss.toml here: the template is used
    text = cfg.template()
    import dataclasses

    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield f.name

    missing = [name for name in walk(config) if f"{name} =" not in text]
    assert missing == []


def test_config_file_checks(tmp_path, monkeypatch):
    path = tmp_path / "gloss.toml"
    path.write_text('[explainer]\nstyle = "openai"\nmax_examples = "ten"\n')
    with pytest.raises(cfg.ConfigError, match="max_examples must be int"):
        cfg.load(path)
    path.write_text("[nope]\n")
    with pytest.raises(cfg.ConfigError, match="unknown key 'nope'"):
        cfg.load(path)
    path.write_text("this is = not toml = at all")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(path)
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "missing.toml")
    path.write_text('[llm.explainer]\nmodel = "from-file"\n[run]\nlimit = 5\n')
    monkeypatch.setenv("GLOSS_EXPLAINER_MODEL", "from-env")
    monkeypatch.setenv("GLOSS_DATABASE_URL", "sqlite:///env.db")
    config = cfg.load(path)
    assert config.llm.explainer.model == "from-env" and config.database == "sqlite:///env.db"
    assert config.run.limit == 5 and config.llm.simulator.model == "gemma-3-270m"


def test_gloss_init_writes_the_template_once(tmp_path, capsys):
    target = tmp_path / "gloss.toml"
    assert main(["init", str(target)]) == 0
    assert target.read_text() == cfg.template()
    assert main(["init", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cfg.load(target).subject.model == "minilm"


def test_runs_lists_runs(workdir, llm, capsys):
    assert gloss(workdir, "--features", "0:1") == 0
    capsys.readouterr()
    assert main(["--database", f"sqlite:///{workdir / 'gloss.db'}", "runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in runs} >= {"run", "mine"}


# ---------------------------------------------------------------- issue 11: integrity


def statuses(workdir: Path) -> list[tuple[str, str]]:
    con = db(workdir)
    out = con.execute("SELECT kind, status FROM runs ORDER BY id").fetchall()
    con.close()
    return out


def test_a_human_label_written_during_the_explain_stage_survives_the_run(workdir, llm):
    """The run lists features to explain, then asks the LLM; reviewers label all of
    them while the first answer is on its way: no model label may supersede theirs."""
    llm.latency_s = 0.5
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(gloss(workdir)))
    thread.start()
    deadline = time.monotonic() + 240
    while not any(r["kind"] == "explain" for r in llm.requests):
        assert time.monotonic() < deadline and thread.is_alive(), "the run never asked"
        time.sleep(0.02)
    url = f"sqlite:///{workdir / 'gloss.db'}"
    with open_store(url) as store:
        mined = [f.id for f in store.features(status="mined")]
        for feature_id in mined:
            store.review(feature_id, "edit", "ann", text=f"ann's label for {feature_id}")
    thread.join(240)
    assert codes and codes[0] in (0, EXIT_PARTIAL)
    with open_store(url) as store:
        for feature_id in mined:
            assert store.current_explanation(feature_id).author_kind == "human", feature_id
    con = db(workdir)
    model = con.execute("SELECT status FROM explanations WHERE author_kind = 'model'").fetchall()
    con.close()
    assert model and {s for (s,) in model} == {"candidate"}
    assert_no_duplicates(workdir)


def test_after_a_run_whose_explainer_failed_a_plain_explain_labels_the_features(
    workdir, llm, capsys
):
    llm.label_override = "   "
    assert gloss(workdir) == EXIT_PARTIAL
    assert counts(workdir)["model_labels"] == 0  # baseline labels are current
    llm.label_override = None
    llm.requests.clear()
    assert main(["explain", "--config", str(workdir / "gloss.toml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    live = counts(workdir)["labeled"]
    assert summary["explained"] == live > 0 and summary["calls"] >= live
    assert counts(workdir)["model_labeled"] == live


def _start_stage(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gloss.pipeline.cli",
            *args,
            "--config",
            str(workdir / "gloss.toml"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_standalone_stage_stopped_by_a_signal_is_recorded_interrupted(workdir, llm, sig):
    assert gloss(workdir, "--features", "0:3") == 0
    llm.requests.clear()
    llm.latency_s = 5.0
    proc = _start_stage(workdir, "score", "--simulator-model", "another")
    deadline = time.monotonic() + 120
    while not llm.requests:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "gloss: interrupted"
    assert statuses(workdir)[-1] == ("score", "interrupted")
    con = db(workdir)
    outcomes = [o for (o,) in con.execute("SELECT outcome FROM llm_calls ORDER BY id")]
    assert con.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
    con.close()
    assert outcomes[-1] == "interrupted", "the call in flight is in the ledger"


def test_kill_9_mid_mining_leaves_no_run_running(workdir, llm):
    corpus = workdir / "corpus"
    for i in range(12, 60):
        (corpus / f"doc{i}.txt").write_text(TEXT * (1 + i % 5), encoding="utf-8")
    proc = _start(workdir)
    deadline = time.monotonic() + 240
    while ("mine", "running") not in _safe_statuses(workdir):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert ("mine", "running") in statuses(workdir)
    llm.latency_s = 0.0
    again = _start(workdir)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    runs = statuses(workdir)
    # The dead worker's group is still fresh: the next worker joins it and ends it done.
    assert runs[:3] == [("group", "done"), ("run", "abandoned"), ("mine", "abandoned")]
    assert all(status != "running" for _, status in runs)
    con = db(workdir)
    parents = con.execute("SELECT parent_id FROM runs WHERE id IN (2, 3) ORDER BY id").fetchall()
    con.close()
    assert parents == [(1,), (2,)]


def _safe_statuses(workdir: Path) -> list[tuple[str, str]]:
    try:
        return statuses(workdir) if (workdir / "gloss.db").exists() else []
    except sqlite3.OperationalError:
        return []


# ---------------------------------------------------------------- issue 12: source = "learn"


def test_a_run_learns_its_dictionary_once_then_labels_its_features(
    workdir, llm, capsys, monkeypatch
):
    monkeypatch.setenv("GLOSS_CACHE", str(workdir / "cache"))
    path = workdir / "gloss.toml"
    text = path.read_text().replace('hook = "layer.1.mlp"', 'hook = "layer.0-2.resid"')
    text = text.replace("[subject]\n", '[subject]\nsource = "learn"\n')
    text += (
        "[learn]\nwidth = 32\nk = 4\ntrain_tokens = 1500\nholdout_tokens = 100\nbatch_size = 64\n"
    )
    path.write_text(text)
    assert main(["run", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "learn:   a dictionary of 32 latents (k=4) at layer.0-2.resid" in out
    assert f"mine:    {N_FEATURES} features" in out
    assert gloss(workdir) == 0
    first = counts(workdir)
    assert first["features"] == N_FEATURES and first["labeled"] >= 1
    assert first["scored"] == first["labeled"]
    con = db(workdir)
    (source,) = con.execute("SELECT name, hook, kind FROM feature_sources").fetchall()
    layers = con.execute("SELECT count(*) FROM features WHERE layers IS NOT NULL").fetchone()[0]
    con.close()
    assert source[1:] == ("layer.0-2.resid", "sae") and layers == N_FEATURES
    assert statuses(workdir)[:4] == [
        ("group", "done"),
        ("run", "done"),
        ("learn", "done"),
        ("mine", "done"),
    ]
    assert gloss(workdir) == 0
    assert counts(workdir) == first
    with open_store(f"sqlite:///{workdir / 'gloss.db'}") as store:
        learn_runs = [r for r in store.runs() if r.kind == "learn"]
    assert [r.counts["reused"] for r in learn_runs] == [1, 0]


def test_a_run_with_four_scorers_stores_all_four_for_every_new_label(workdir, llm, capsys):
    config = workdir / "gloss.toml"
    methods = ["simulation", "detection", "fuzzing", "embedding"]
    config.write_text(
        config.read_text() + f'[scoring]\nmethods = {json.dumps(methods)}\nprimary = "detection"\n'
    )
    assert gloss(workdir) == 0
    con = db(workdir)
    labels = con.execute(
        "SELECT explanation_id FROM feature_labels WHERE author_kind = 'model'"
    ).fetchall()
    assert len(labels) >= N_FEATURES - 1
    for (explanation_id,) in labels:
        stored = con.execute(
            "SELECT method, value, calls FROM scores WHERE explanation_id = ? ORDER BY method",
            (explanation_id,),
        ).fetchall()
        assert [m for m, _, _ in stored] == sorted(methods)
        by = {m: (v, c) for m, v, c in stored}
        assert by["embedding"][1] == 0 and by["simulation"][1] == 1
        # labels rank by the primary method's score
        (score,) = con.execute(
            "SELECT score FROM explanations WHERE id = ?", (explanation_id,)
        ).fetchone()
        assert score == by["detection"][0]
    con.close()
    requests = len(llm.requests)
    assert gloss(workdir) == 0  # nothing is left: no call at all
    assert len(llm.requests) == requests
    assert_no_duplicates(workdir)
