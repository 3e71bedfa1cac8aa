"""`gloss search/show/export/label/fires` on a real SQLite file, in-process and as a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from gloss.pipeline.cli import main
from gloss.store import open_store
from tests.seed import LABEL_XSS, LABELS, SOURCE, XSS, seed_features


@pytest.fixture
def db(sqlite_url):
    with open_store(sqlite_url) as store:
        seeded = seed_features(store)
    return sqlite_url, seeded


def gloss(capsys, url, *args):
    code = main(["--database", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_a_table_or_json(db, capsys):
    url, _ = db
    code, out, _ = gloss(capsys, url, "search", "apple")
    assert code == 0 and "apples as a fruit" in out and "1 of 1 shown" in out
    code, out, _ = gloss(capsys, url, "search", "--min-score", "0.3", "--json")
    rows = json.loads(out)
    assert {r["index"] for r in rows} == {0, 1, 3}
    assert rows[0]["ref"] == f"{SOURCE}:0" and rows[0]["score"] == pytest.approx(0.61)
    code, out, _ = gloss(capsys, url, "search", "--status", "unlabeled", "--json")
    assert [r["index"] for r in json.loads(out)] == [4]
    code, out, _ = gloss(capsys, url, "search", "--unreviewed", "--max-score", "0.1", "--json")
    assert [r["index"] for r in json.loads(out)] == [2]
    code, out, _ = gloss(capsys, url, "search", "--reviewed", "--json")
    assert json.loads(out) == []
    code, out, _ = gloss(capsys, url, "search", "zebra")
    assert out.strip() == "no features match"


def test_show_marks_activating_tokens(db, capsys):
    url, seeded = db
    code, out, _ = gloss(capsys, url, "show", f"{SOURCE}:3")
    assert code == 0
    assert LABEL_XSS in out and "score 0.300" in out and "prompt explain-v1 v1" in out
    assert "top contexts (explain split, 1)" in out and "random contexts (holdout split, 1)" in out
    assert "<<" in out and "\033[" not in out
    assert "activation histogram" in out and "density 4%" in out
    # the top example of feature 3 peaks on window 3's token 3 (" is")
    assert "A kilogram<< is>><< heavy>>" in out
    code, out, _ = gloss(capsys, url, "show", str(seeded.feature_ids[4]), "--color", "always")
    assert "\033[1;31m" in out and "label: none yet" in out
    code, out, _ = gloss(capsys, url, "show", f"{SOURCE}:4", "--json")
    card = json.loads(out)
    assert card["current"] is None and len(card["examples"]) == 5
    assert any(XSS in ex["tokens"] for ex in card["examples"])


def test_label_then_history(db, capsys):
    url, seeded = db
    code, out, _ = gloss(capsys, url, "label", f"{SOURCE}:1", "miles and km", "--by", "ana")
    assert code == 0 and "miles and km" in out
    code, out, _ = gloss(capsys, url, "show", f"{SOURCE}:1")
    assert "history (newest first)" in out and "human ana" in out and "superseded" in out
    assert "ana  edit" in out
    with open_store(url) as store:
        current = store.current_explanation(seeded.feature_ids[1])
    assert current.parent_id == seeded.explanation_ids[1] and current.status == "accepted"


def test_export_streams_jsonl_and_csv(db, capsys, tmp_path):
    url, _ = db
    code, out, _ = gloss(capsys, url, "export")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == sorted(LABELS) and rows[3]["label"] == LABEL_XSS
    path = tmp_path / "labels.csv"
    code, _, err = gloss(capsys, url, "export", "--format", "csv", "--out", str(path))
    assert code == 0 and "exported 6 features" in err
    with path.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert table[1]["label"] == LABELS[1][0] and json.loads(table[1]["scores"]) == {
        "simulation": pytest.approx(0.42)
    }
    assert table[1]["model"] == "gemma-3-270m" and table[4]["label"] == ""


def test_errors_are_one_line(db, capsys):
    url, _ = db
    for args, code, text in (
        (["show", f"{SOURCE}:99"], 4, "no feature"),
        (["search", "--order", "x"], 2, "invalid choice"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "gloss.pipeline.cli", "--database", url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == code, (args, run.stderr)
        assert text in run.stderr and "Traceback" not in run.stderr
    for args, code, text in (
        (["show", "nonsense"], 2, "bad feature reference"),
        (["label", f"{SOURCE}:1", "  ", "--by", "ana"], 2, "needs the new label text"),
        (["export", "--out", "/no/such/dir/x.csv"], 2, "cannot write /no/such/dir/x.csv"),
    ):
        returned = main(["--database", url, *args])
        err = capsys.readouterr().err
        assert returned == code and text in err, (args, err)


def test_windows_read_as_text_for_bpe_and_wordpiece_tokens():
    from gloss.pipeline.prompts import spell

    bpe = ["The", " apple", " pie", "."]
    assert "".join(g + t for g, t in spell(bpe)) == "The apple pie."
    wordpiece = ["she", "dot", "##es", "on", "him"]
    assert "".join(g + t for g, t in spell(wordpiece)) == "she dotes on him"
    assert spell(["##"]) == [("", "##")]


HEAVY = ("torch", "transformers", "openai", "llama_cpp")
IMPORTS_AFTER = """
import sys
from gloss.pipeline.cli import main
code = main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY", code, ",".join(heavy))
"""


@pytest.mark.parametrize(
    "command",
    [
        ["search", "apple"],
        ["show", "1"],
        ["runs"],
        ["export"],
        ["label", "1", "fruit", "--by", "a"],
    ],
)
def test_query_commands_never_import_a_model(db, tmp_path, command):
    """The query commands start in well under a second only if they load no model code,
    also with a gloss.toml beside them (which once loaded every stage to find the database)."""
    url, _ = db
    (tmp_path / "gloss.toml").write_text(
        f'database = "{url}"\n[subject]\nhook = "layer.0-5.resid"\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER.format(heavy=HEAVY), *command],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("HEAVY"))
    assert line == "HEAVY 0 ", (line, out[-500:])


def test_the_review_app_imports_no_model():
    code = f"import sys, review.app; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command", [["search"], ["show", "1"], ["runs"], ["export"], ["db", "current"]]
)
def test_a_read_only_command_on_a_missing_database_says_so_and_creates_nothing(
    tmp_path, capsys, command
):
    missing = tmp_path / "typo" / "gloss.db"
    missing.parent.mkdir()
    code = main(["--database", f"sqlite:///{missing}", *command])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith(f"gloss: no database at sqlite:///{missing}")
    assert len(err.strip().splitlines()) == 1
    assert not missing.exists()


@pytest.mark.empty_database
def test_a_read_only_command_on_an_empty_database_creates_no_schema(postgres_url, capsys):
    from gloss.store.db import current_revision

    code = main(["--database", postgres_url, "search"])
    assert code == 3 and "holds no gloss database yet" in capsys.readouterr().err
    assert current_revision(postgres_url) is None


def test_renamed_flags_still_work_for_a_release_and_say_their_new_name(sqlite_url, capsys):
    from gloss.pipeline.cli import build_parser

    parser = build_parser()
    old = parser.parse_args(["run", "--max-tokens", "7"])
    assert old.max_tokens == 7
    assert "--max-tokens is deprecated here: use --max-llm-tokens" in capsys.readouterr().err
    assert parser.parse_args(["run", "--max-llm-tokens", "7"]).max_tokens == 7
    assert capsys.readouterr().err == ""
    mine = parser.parse_args(["mine", "--model", "minilm", "--max-tokens", "50"])
    assert (mine.model, mine.max_tokens) == ("minilm", 50)
    err = capsys.readouterr().err
    assert "use --subject" in err and "use --corpus-tokens" in err
    assert parser.parse_args(["explain", "--model", "m"]).model == "m"
    assert "use --llm-model" in capsys.readouterr().err
    # --force meant three things; each command now names what it does again
    for command, new in (("mine", "remine"), ("explain", "relabel"), ("score", "rescore")):
        args = parser.parse_args([command, "--force"])
        assert getattr(args, new) is True
        assert f"use --{new}" in capsys.readouterr().err
        assert getattr(parser.parse_args([command]), new) is False
