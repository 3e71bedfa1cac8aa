"""Many `gloss run` workers on one PostgreSQL database (issue 16): real processes, real
MiniLM, a scripted LLM server on loopback; workers killed with SIGKILL at random moments
while they hold mining units and feature claims; one budget shared by all of them."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from gloss.pipeline import config as cfg
from gloss.pipeline.cli import main
from gloss.pipeline.run import group_status
from gloss.store import LockedError, open_store
from tests.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 32
WORKERS = 4

SENTENCES = [
    "The river ran past the mill and under the old stone bridge.",
    "Three kilometres is a little less than two miles, and a mile is 1.6 kilometres.",
    'She said: "Never again, never again," and then she laughed again.',
    "In 1848 the city of Paris saw revolution; in 1871 the Commune rose.",
    "The cat sat on the mat. The dog sat on the log. The bird sat on the word.",
    "Water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
]


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def write_config(tmp_path: Path, database: str, llm: ScriptedLLM, extra: str = "") -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    rng = random.Random(0)
    for i in range(40):
        doc = " ".join(rng.choice(SENTENCES) for _ in range(12))
        (corpus / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    endpoint = (
        f'model = "scripted"\nbase_url = "{llm.base_url}"\nmax_attempts = 2\n'
        "backoff_s = 0.01\nconcurrency = 2\n"
    )
    path = tmp_path / "gloss.toml"
    path.write_text(
        f'database = "{database}"\n'
        '[subject]\nmodel = "minilm"\nhook = "layer.1.mlp"\n'
        f'features = "0:{N_FEATURES}"\n'
        f'[corpus]\npaths = ["{corpus}"]\nctx_len = 16\n'
        "[mining]\ntop_explain = 4\ntop_holdout = 2\nquantiles = 2\nquantile_explain = 1\n"
        "quantile_holdout = 1\nrandom_holdout = 2\nbatch_size = 16\nfeature_chunk = 4\n"
        '[explainer]\nstyle = "openai"\nmax_examples = 4\n'
        '[simulator]\nmethod = "logprobs"\n'
        f"[llm.explainer]\n{endpoint}[llm.simulator]\n{endpoint}"
        f"[run]\npoll_s = 0.2\n{extra}",
        encoding="utf-8",
    )
    return path


def start(config: Path, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gloss.pipeline.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(procs: list[subprocess.Popen], log: Path, timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"workers did not finish:\n{log.read_text()[-4000:]}") from None
    return codes


def query(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def outcome(url: str) -> dict[int, tuple]:
    """Per feature index: status, its current label (text, author) and that label's
    simulation scores, and how many model labels it has."""
    rows = query(
        url,
        """SELECT f."index", f.status, e.text, e.author_kind,
                  (SELECT count(*) FROM explanations m
                    WHERE m.feature_id = f.id AND m.author_kind = 'model'),
                  (SELECT count(*) FROM scores s
                    WHERE s.explanation_id = e.id AND s.method = 'simulation'),
                  (SELECT max(s.value) FROM scores s
                    WHERE s.explanation_id = e.id AND s.method = 'simulation')
           FROM features f
           LEFT JOIN explanations e ON e.feature_id = f.id AND e.status IN ('proposed', 'accepted')
           ORDER BY f."index\"""",
    )
    return {row[0]: row[1:] for row in rows}


def assert_every_feature_done_once(url: str) -> dict[int, tuple]:
    done = outcome(url)
    assert sorted(done) == list(range(N_FEATURES))
    live = {i: row for i, row in done.items() if row[0] == "mined"}
    assert len(live) >= N_FEATURES // 2, "MiniLM neurons should mostly be alive"
    for index, (status, label, author, models, sims, _) in done.items():
        assert status in ("mined", "dead"), (index, status)
        if status == "dead":
            continue
        assert author == "model" and label, (index, label, author)
        assert models == 1, f"feature {index} has {models} model labels"
        assert sims == 1, f"feature {index}'s label has {sims} simulation scores"
    for sql in (
        "SELECT count(*) FROM claims",
        "SELECT count(*) FROM mining_units",
        "SELECT count(*) FROM runs WHERE status = 'running'",
        "SELECT count(*) FROM (SELECT explanation_id FROM scores GROUP BY explanation_id, "
        "method HAVING count(*) > 1) d",
    ):
        assert query(url, sql) == [(0,)], sql
    return done


def test_four_workers_share_a_plan_and_do_every_feature_once(tmp_path, postgres_url, llm, capsys):
    llm.latency_s = 0.1
    config = write_config(tmp_path, postgres_url, llm)
    log = tmp_path / "workers.log"
    procs = [start(config, log) for _ in range(WORKERS)]
    assert finish(procs, log) == [0] * WORKERS, log.read_text()[-4000:]

    done = assert_every_feature_done_once(postgres_url)
    live = sum(row[0] == "mined" for row in done.values())
    kinds = [r["kind"] for r in (_requests(llm))]
    assert kinds.count("explain") == live and kinds.count("simulate") == live, "paid twice"
    with open_store(postgres_url) as store:
        status = group_status(store, cfg.load(config))
    assert status is not None and status["status"] == "done"
    workers = status["workers"]
    assert len(workers) == WORKERS and {w["status"] for w in workers} == {"done"}
    assert sum(w["mined"] for w in workers) == N_FEATURES
    assert sum(w["labels"] for w in workers) == live
    assert sum(w["mined"] > 0 for w in workers) >= 2, "mining was not shared"
    assert sum(w["labels"] > 0 for w in workers) >= 2, "labeling was not shared"
    assert status["left"]["mine"] == status["left"]["explain"] == status["left"]["score"] == 0

    assert main(["run", "--config", str(config), "--status"]) == 0
    out = capsys.readouterr().out
    assert f"run group {status['group']}: done" in out
    assert "left: mine 0, explain 0, score 0 features" in out
    rows = [line.split() for line in out.splitlines()]
    table = [r for r in rows if len(r) >= 9 and r[0].isdigit() and r[4] == "done"]
    assert sorted(int(r[0]) for r in table) == [w["run"] for w in workers]
    assert main(["--database", postgres_url, "runs"]) == 0
    assert capsys.readouterr().out.count(f"in group {status['group']}") == WORKERS


def _requests(llm: ScriptedLLM) -> list[dict]:
    from tests.scripted_llm import _kind

    out = []
    for body in llm.requests:
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        out.append({"kind": _kind(prompt)})
    return out


def _holders(url: str, table: str) -> set[int]:
    return {
        int(holder.split("#")[0].rpartition(":")[2])
        for (holder,) in query(url, f"SELECT DISTINCT holder FROM {table}")
    }


def test_workers_killed_at_random_moments_change_nothing_but_the_time(tmp_path, postgres_url, llm):
    """SIGKILL a worker holding a mining unit or a feature claim, at a random moment, at
    least ten times; a supervisor restarts it. The final labels and scores equal those
    of one undisturbed worker, and nothing is doubled or left behind."""
    llm.latency_s = 0.5
    config = write_config(tmp_path, postgres_url, llm)
    log = tmp_path / "workers.log"
    rng = random.Random(16)
    procs = [start(config, log) for _ in range(WORKERS)]
    kills = {"mining": 0, "labeling": 0}
    mining = True
    deadline = time.monotonic() + 300
    while sum(kills.values()) < 12 and time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            break
        mined = "SELECT count(*) FROM features WHERE status IN ('mined', 'dead')"
        mining = mining and kills["mining"] < 4 and query(postgres_url, mined) != [(N_FEATURES,)]
        phase = "mining" if mining else "labeling"
        table = "mining_units" if mining else "claims"
        by_pid = {p.pid: p for p in procs if p.poll() is None}
        held = sorted(_holders(postgres_url, table) & set(by_pid))
        if not held:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.0, 0.4))
        victim = by_pid[rng.choice(held)]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills[phase] += 1
        procs[procs.index(victim)] = start(config, log)
    codes = finish(procs, log)
    print("kills", kills)
    assert sum(kills.values()) >= 10, (kills, log.read_text()[-3000:])
    assert kills["mining"] >= 1 and kills["labeling"] >= 6, kills
    assert codes == [0] * WORKERS, log.read_text()[-4000:]
    chaotic = assert_every_feature_done_once(postgres_url)
    abandoned = query(postgres_url, "SELECT count(*) FROM runs WHERE kind = 'run' "
                      "AND status = 'abandoned'")[0][0]  # fmt: skip
    assert abandoned == sum(kills.values())
    # A worker restarted after the last one left starts a new group, with nothing to do.
    groups = query(postgres_url, "SELECT status FROM runs WHERE kind = 'group'")
    assert {status for (status,) in groups} == {"done"}

    (tmp_path / "calm").mkdir()
    calm_db = tmp_path / "calm" / "gloss.db"
    calm = write_config(tmp_path / "calm", f"sqlite:///{calm_db}", llm)
    llm.latency_s = 0.0
    assert finish([start(calm, log)], log) == [0]
    assert outcome(f"sqlite:///{calm_db}") == chaotic


def test_a_budget_shared_by_four_workers_is_never_overspent(tmp_path, postgres_url, llm):
    llm.latency_s = 0.05
    budget = 6000
    config = write_config(tmp_path, postgres_url, llm, f"max_llm_tokens = {budget}\n")
    log = tmp_path / "workers.log"
    procs = [start(config, log) for _ in range(WORKERS)]
    codes = finish(procs, log)
    assert set(codes) <= {0, 10}, log.read_text()[-4000:]
    assert 10 in codes, "the budget should stop the work"
    (spent,) = query(postgres_url, "SELECT coalesce(sum(tokens_in + tokens_out), 0) "
                     "FROM llm_calls")[0]  # fmt: skip
    worst = query(postgres_url, "SELECT max(tokens_in) FROM llm_calls")[0][0] + max(
        body.get("max_tokens", 0) for body in llm.requests
    )
    assert budget / 2 < spent <= budget + WORKERS * worst, (spent, worst)
    (group,) = query(postgres_url, "SELECT tokens_in + tokens_out, reserved_tokens, status "
                     "FROM runs WHERE kind = 'group'")  # fmt: skip
    assert group[0] == spent and group[2] == "partial"
    assert query(postgres_url, "SELECT sum(reserved_tokens) FROM runs WHERE kind = 'run'") == [(0,)]
    messages = query(postgres_url, "SELECT message FROM runs WHERE kind = 'run'")
    assert any("budget reached" in (m or "") for (m,) in messages)


def test_a_second_sqlite_worker_is_told_to_use_postgresql(tmp_path, llm):
    llm.latency_s = 0.5
    url = f"sqlite:///{tmp_path / 'gloss.db'}"
    config = write_config(tmp_path, url, llm)
    log = tmp_path / "first.log"
    first = start(config, log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            if _lock_held(url):
                break
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, "-m", "gloss.pipeline.cli", "run", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == LockedError.exit_code, second.stderr
        message = second.stderr.strip().splitlines()
        assert len(message) == 1 and "SQLite takes one gloss run at a time" in message[0]
        assert "postgresql" in message[0].lower()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def _lock_held(url: str) -> bool:
    try:
        return query(url, "SELECT count(*) FROM locks") == [(1,)]
    except OperationalError:  # the first worker is still creating the database
        return False
