"""`gloss export --format neuronpedia|delphi` and `gloss import delphi|neuronpedia`.

Round trips go from a seeded store through the files into a second, fresh store (on
SQLite and PostgreSQL), and hand-written files in each tool's own format (as
Neuronpedia's explanation rows and delphi's run folders hold them) are imported too.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gloss.pipeline.cli import main
from gloss.pipeline.scoring import auc, balanced_accuracy
from gloss.store import InputError, Store, open_store
from gloss.store.types import ImportedLabel, ImportedScore
from tests.conftest import _admin, _database_url, postgres_server_url
from tests.mined import token_features
from tests.seed import LABELS, SOURCE, seed_features

TARGET = "toy/mlp.0/neurons"  # token_features' source: hook mlp.0, six features
MODULE = "layer.0.mlp"  # the seeded source's hook: its delphi module by default
NP = "gemma-2-2b/20-gemmascope-res-16k"


@pytest.fixture
def fresh_url(db_url, tmp_path) -> Iterator[str]:
    """A second, empty database of the same kind as `db_url`."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server = postgres_server_url()
    assert server is not None
    name = f"gloss_test_{uuid.uuid4().hex[:12]}"
    admin = _admin(server)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield _database_url(server, name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def gloss(capsys, url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--database", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def detection(store: Store, feature_id: int, said: list[int]) -> tuple[float | None, dict]:
    """A detection score's value and details as gloss's scorer writes them, over the
    feature's holdout windows: the first counted active, the rest silent."""
    windows = store.examples(feature_id, "holdout")
    examples = [
        {"window_id": w.window_id, "kind": w.kind, "active": i == 0, "said": s}
        for i, (w, s) in enumerate(zip(windows, said, strict=True))
    ]
    truth = [e["active"] for e in examples]
    value, _ = balanced_accuracy(truth, [s == 1 for s in said])
    return value, {"n_active": 1, "n_silent": len(said) - 1, "examples": examples}


@pytest.fixture
def source(db_url) -> Iterator[tuple[str, dict[int, float | None]]]:
    """The seeded store with detection scores on labels 0 and 1, an embedding score on
    label 0 and a baseline label on the unlabeled feature 4; yields (url, detection
    values by index)."""
    with open_store(db_url) as store:
        seeded = seed_features(store)
        values = {}
        for index, said in ((0, [1, 0]), (1, [1, 1])):
            value, details = detection(store, seeded.feature_ids[index], said)
            store.add_score(
                seeded.explanation_ids[index],
                "detection",
                value,
                details=details,
                simulator_model="gemma-3-270m",
            )
            values[index] = value
        windows = store.examples(seeded.feature_ids[0], "holdout")
        store.add_score(
            seeded.explanation_ids[0],
            "embedding",
            0.75,
            simulator_model="minilm",
            details={
                "examples": [
                    {"window_id": w.window_id, "kind": w.kind, "active": True, "similarity": 0.3}
                    for w in windows
                ]
            },
        )
        store.add_explanation(
            seeded.feature_ids[4],
            "tokens 'x', 'y'",
            author_kind="baseline",
            author_name="baseline",
        )
    yield db_url, values


@pytest.fixture
def target(fresh_url) -> Iterator[str]:
    """A fresh store with six unlabeled features but for feature 1, whose label a human
    wrote, and feature 2, which has a gloss model label nobody accepted."""
    with open_store(fresh_url) as store:
        _, ids = token_features(store, ["river", "bank", "money", "loan", "water", "tree"])
        store.review(ids[1], "edit", "ana", text="a label ana wrote")
        store.add_explanation(
            ids[2],
            "an older model label",
            author_kind="model",
            author_name="explainer",
            model="old-model",
        )
    yield fresh_url


def labels_of(url: str, source_name: str) -> dict[int, list]:
    """Every label of each feature of a source, by index, newest first."""
    with open_store(url) as store:
        src = store.source(source_name)
        return {f.index: store.explanations(f.id) for f in store.features(src.id)}


def exported_labels() -> dict[int, str]:
    return {i: label for i, (label, _) in LABELS.items() if label is not None}


# ---------------------------------------------------------------- delphi


def test_delphi_export_follows_delphis_layout(source, capsys, tmp_path):
    url, values = source
    out = tmp_path / "run"
    code, _, err = gloss(capsys, url, "export", "--format", "delphi", "--out", str(out))
    assert code == 0 and "exported 5 labels" in err
    assert "2 detection" in err and "left out 1 baseline labels" in err
    names = sorted(p.name for p in (out / "explanations").iterdir())
    assert names == [f"{MODULE}_latent{i}.txt" for i in sorted(exported_labels())]
    for index, label in exported_labels().items():
        raw = (out / "explanations" / f"{MODULE}_latent{index}.txt").read_bytes()
        assert json.loads(raw) == label  # a JSON string, as delphi's orjson.dumps writes
    assert sorted(p.name for p in (out / "scores" / "detection").iterdir()) == [
        f"{MODULE}_latent0.txt",
        f"{MODULE}_latent1.txt",
    ]
    records = json.loads((out / "scores" / "detection" / f"{MODULE}_latent1.txt").read_text())
    with open_store(url) as store:
        seeded = store.features(store.source(SOURCE).id, indices=[1])[0]
        windows = store.examples(seeded.id, "holdout")
    assert [set(r) for r in records] == [
        {
            "str_tokens",
            "activations",
            "distance",
            "activating",
            "prediction",
            "probability",
            "correct",
        }
    ] * 2
    assert [r["str_tokens"] for r in records] == [w.tokens for w in windows]
    assert [(r["activating"], r["prediction"], r["correct"]) for r in records] == [
        (True, True, True),
        (False, True, False),
    ]
    config = json.loads((out / "run_config.json").read_text())
    assert config["explainer_model"] == "gemma-3-270m" and config["hookpoints"] == [MODULE]
    assert config["scorers"] == ["detection"]
    assert values[1] == pytest.approx(0.5)


def test_delphi_round_trip_into_a_fresh_store(source, target, capsys, tmp_path):
    url, values = source
    out = tmp_path / "run"
    assert gloss(capsys, url, "export", "--format", "delphi", "--out", str(out))[0] == 0
    code, stdout, _ = gloss(
        capsys, target, "import", "delphi", str(out), "--map", f"{TARGET}={MODULE}"
    )
    assert code == 0, stdout
    assert "imported 5 labels" in stdout and "4 current, 1 candidates" in stdout
    assert "scores: detection 2" in stdout
    imported = labels_of(target, TARGET)
    for index, label in exported_labels().items():
        (mine,) = [e for e in imported[index] if e.text == label]
        assert mine.author_kind == "model" and mine.author_name == "delphi"
        assert mine.model == "gemma-3-270m"
        origin = mine.details["imported"]
        assert origin["tool"] == "delphi" and origin["module"] == MODULE
        assert origin["file"].endswith(f"explanations/{MODULE}_latent{index}.txt")
        assert [s.value for s in mine.scores if s.method == "detection"] == (
            [pytest.approx(values[index])] if index in values else []
        )
    human = [e for e in imported[1] if e.author_kind == "human"][0]
    assert human.status == "accepted"  # the human label stands
    assert [e.status for e in imported[1] if e.author_name == "delphi"] == ["candidate"]
    older = [e for e in imported[2] if e.author_name == "explainer"][0]
    assert older.status == "superseded"  # a machine label nobody accepted gives way
    assert not [e for e in imported[4] if e.author_name == "delphi"]  # baselines stay home


def test_import_twice_adds_nothing(source, target, capsys, tmp_path):
    url, _ = source
    out = tmp_path / "run"
    gloss(capsys, url, "export", "--format", "delphi", "--out", str(out))
    first = gloss(capsys, target, "import", "delphi", str(out), "--map", f"{TARGET}={MODULE}")
    before = labels_of(target, TARGET)
    code, stdout, _ = gloss(
        capsys, target, "import", "delphi", str(out), "--map", f"{TARGET}={MODULE}"
    )
    assert first[0] == code == 0
    assert "imported 0 labels" in stdout and "skipped 5 labels already in the store" in stdout
    after = labels_of(target, TARGET)
    assert {
        i: [(e.id, e.status, len(e.scores)) for e in labels] for i, labels in after.items()
    } == {i: [(e.id, e.status, len(e.scores)) for e in labels] for i, labels in before.items()}


def write_delphi_run(root: Path) -> list[dict]:
    """A delphi run folder as delphi writes it: two modules, detection, fuzz and
    simulation scores, run_config.json. Returns latent 3's detection records."""
    (root / "explanations").mkdir(parents=True)
    for name, text_ in (
        ("layers.6.mlp_latent3.txt", "Mentions of rivers and their banks"),
        ("layers.6.mlp_latent4.txt", "Financial  loans\nand interest"),
        ("layers.6.mlp_latent99.txt", "A latent gloss never mined"),
        ("layers.7.mlp_latent0.txt", "A module gloss does not map"),
    ):
        (root / "explanations" / name).write_bytes(json.dumps(text_).encode())
    records = [
        {"str_tokens": [" the", " river"], "activations": [0.0, 3.5], "distance": 1,
         "activating": True, "prediction": True, "probability": 0.9, "correct": True},
        {"str_tokens": [" a", " bank"], "activations": [0.0, 2.0], "distance": 3,
         "activating": True, "prediction": False, "probability": 0.4, "correct": False},
        {"str_tokens": [" flow", "s"], "activations": [1.0, 0.0], "distance": 5,
         "activating": True, "prediction": True, "probability": 0.7, "correct": True},
        {"str_tokens": [" cats", " sleep"], "activations": [0.0, 0.0], "distance": -1,
         "activating": False, "prediction": False, "probability": 0.2, "correct": True},
        {"str_tokens": [" red", " car"], "activations": [0.0, 0.0], "distance": -1,
         "activating": False, "prediction": True, "probability": 0.6, "correct": False},
        {"str_tokens": [" no", " answer"], "activations": [0.0, 0.0], "distance": -1,
         "activating": False, "prediction": None, "probability": None, "correct": None},
    ]  # fmt: skip
    for scorer in ("detection", "fuzz", "simulation"):
        (root / "scores" / scorer).mkdir(parents=True)
        (root / "scores" / scorer / "layers.6.mlp_latent3.txt").write_text(json.dumps(records))
    (root / "run_config.json").write_text(
        json.dumps(
            {
                "model": "EleutherAI/pythia-160m",
                "explainer_model": "Qwen/Qwen2.5-7B",
                "hookpoints": ["layers.6.mlp", "layers.7.mlp"],
                "scorers": ["detection"],
            }
        )
    )
    return records


def test_import_a_delphi_run_written_by_delphi(store, capsys, tmp_path):
    _, ids = token_features(store, ["river", "bank", "money", "loan", "water", "tree"])
    records = write_delphi_run(tmp_path / "results" / "run1")
    code, stdout, _ = gloss(
        capsys,
        store.url,
        "import",
        "delphi",
        str(tmp_path / "results" / "run1"),
        "--map",
        f"{TARGET}=layers.6.mlp",
    )
    assert code == 0, stdout
    assert "imported 2 labels" in stdout and "2 current" in stdout
    assert "layers.7.mlp 1" in stdout and f"{TARGET}:99" in stdout
    assert "not read (no gloss equal): scores/simulation" in stdout
    assert "kept in the labels' details (no gloss equal): delphi fuzz 1" in stdout
    river = store.current_explanation(ids[3])
    assert river.text == "Mentions of rivers and their banks" and river.model == "Qwen/Qwen2.5-7B"
    assert store.current_explanation(ids[4]).text == "Financial loans and interest"
    (score,) = river.scores
    answered = [r for r in records if r["prediction"] is not None]
    truth = [r["activating"] for r in answered]
    expected, _ = balanced_accuracy(truth, [r["prediction"] for r in answered])
    assert score.method == "detection" and score.value == pytest.approx(expected)
    assert score.simulator_model == "Qwen/Qwen2.5-7B" and score.details["records"] == records
    assert score.details["n_unanswered"] == 1
    assert score.details["auc"] == pytest.approx(
        auc(truth, [r["probability"] for r in answered])[0]
    )
    fuzz = river.details["imported"]["scores"]["delphi fuzz"]
    assert fuzz["value"] == pytest.approx(expected)  # the same records, kept, not a score
    assert river.details["imported"]["explainer_model"] == "Qwen/Qwen2.5-7B"


# ---------------------------------------------------------------- Neuronpedia


def test_neuronpedia_export_writes_explanation_rows(source, capsys, tmp_path):
    url, values = source
    out = tmp_path / "np.json"
    code, _, err = gloss(
        capsys,
        url,
        "export",
        "--format",
        "neuronpedia",
        "--out",
        str(out),
        "--map",
        f"{SOURCE}={NP}",
        "--neuronpedia-author",
        "clxyz",
    )
    assert code == 0 and "exported 5 labels" in err and "authorId left out" not in err
    rows = json.loads(out.read_text())
    assert [int(r["index"]) for r in rows] == sorted(exported_labels())
    first = rows[0]
    assert first["modelId"] == "gemma-2-2b" and first["layer"] == "20-gemmascope-res-16k"
    assert first["index"] == "0" and first["description"] == LABELS[0][0]
    assert first["explanationModelName"] == "gemma-3-270m" and first["authorId"] == "clxyz"
    assert "gloss label #" in first["notes"] and first["typeName"] is None
    by_type = {s["explanationScoreTypeName"]: s for s in first["scores"]}
    assert set(by_type) == {"eleuther_recall", "eleuther_embedding"}
    assert by_type["eleuther_recall"]["value"] == pytest.approx(values[0])
    assert by_type["eleuther_embedding"]["explanationScoreModelName"] == "minilm"
    breakdown = json.loads(by_type["eleuther_recall"]["jsonDetails"])
    assert [b["ground_truth"] for b in breakdown] == [True, False]
    assert len({r["id"] for r in rows}) == len(rows)
    assert [r["scores"] for r in rows[2:]] == [[]] * 3  # no fuzzing or simulation crosses


def test_neuronpedia_round_trip_into_a_fresh_store(source, target, capsys, tmp_path):
    url, values = source
    out = tmp_path / "np.json"
    gloss(
        capsys,
        url,
        "export",
        "--format",
        "neuronpedia",
        "--out",
        str(out),
        "--map",
        f"{SOURCE}={NP}",
    )
    code, stdout, _ = gloss(
        capsys, target, "import", "neuronpedia", str(out), "--map", f"{TARGET}={NP}"
    )
    assert code == 0 and "imported 5 labels" in stdout, stdout
    assert "scores: detection 2, embedding 1" in stdout
    imported = labels_of(target, TARGET)
    for index, label in exported_labels().items():
        (mine,) = [e for e in imported[index] if e.text == label]
        assert (mine.author_kind, mine.author_name, mine.model) == (
            "model",
            "neuronpedia",
            "gemma-3-270m",
        )
        assert mine.details["imported"]["fields"]["index"] == str(index)
        assert mine.details["imported"]["file"] == str(out.resolve())
        scores = {s.method: s for s in mine.scores}
        if index in values:
            assert scores["detection"].value == pytest.approx(values[index])
            assert scores["detection"].simulator_model == "gemma-3-270m"
    assert [e.status for e in imported[1] if e.author_name == "neuronpedia"] == ["candidate"]
    assert [e.status for e in imported[1] if e.author_kind == "human"] == ["accepted"]
    code, stdout, _ = gloss(
        capsys, target, "import", "neuronpedia", str(out), "--map", f"{TARGET}={NP}"
    )
    assert code == 0 and "imported 0 labels" in stdout


def test_import_neuronpedia_rows_as_neuronpedia_exports_them(store, capsys, tmp_path):
    """JSON Lines, gzipped, as in explanations/batch-0.jsonl.gz of Neuronpedia's datasets."""
    _, ids = token_features(store, ["river", "bank", "money", "loan", "water", "tree"])
    recall = [{"text": " the river", "ground_truth": True, "prediction": True}]
    rows = [
        {"id": "clx1", "modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "2",
         "authorId": "cl0", "description": " references to money and payments",
         "embedding": [0.1] * 256, "typeName": "oai_token-act-pair",
         "explanationModelName": "gpt-4o-mini", "umap_x": 0.5, "umap_y": 1.5,
         "scores": [
             {"id": "s1", "value": 0.8, "explanationScoreTypeName": "eleuther_recall",
              "explanationScoreModelName": "gpt-4o-mini", "jsonDetails": json.dumps(recall)},
             {"id": "s2", "value": 0.6, "explanationScoreTypeName": "eleuther_fuzz",
              "explanationScoreModelName": "gpt-4o-mini", "jsonDetails": "[]"},
         ]},
        {"id": "clx2", "modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "2",
         "authorId": "cl0", "description": "money", "typeName": "np_max-act",
         "explanationModelName": "claude-3-5-haiku"},
        {"id": "clx3", "modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "5",
         "authorId": "cl0", "description": "", "explanationModelName": "gpt-4o-mini"},
        {"id": "clx4", "modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "0",
         "authorId": "cl0", "description": "another SAE", "explanationModelName": "gpt-4o-mini"},
    ]  # fmt: skip
    path = tmp_path / "batch-0.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    code, stdout, _ = gloss(
        capsys, store.url, "import", "neuronpedia", str(path), "--map", f"{TARGET}={NP}"
    )
    assert code == 0, stdout
    assert "imported 2 labels" in stdout and "1 current, 1 candidates" in stdout
    assert "skipped 1 empty descriptions" in stdout
    assert "gemma-2-2b/12-gemmascope-res-16k 1" in stdout
    history = store.explanations(ids[2])
    first = [e for e in history if e.status == "proposed"][0]
    assert first.text == "references to money and payments" and first.model == "gpt-4o-mini"
    assert [e.text for e in history if e.status == "candidate"] == ["money"]
    fields = first.details["imported"]["fields"]
    assert fields["typeName"] == "oai_token-act-pair" and "embedding" not in fields
    assert first.details["imported"]["scores"]["eleuther_fuzz"] == [
        {"value": 0.6, "model": "gpt-4o-mini"}
    ]
    (score,) = first.scores
    assert (score.method, score.value, score.simulator_model) == (
        "detection",
        pytest.approx(0.8),
        "gpt-4o-mini",
    )
    assert score.details["json_details"] == recall


def test_import_a_feature_as_neuronpedias_api_returns_it(store, capsys, tmp_path):
    _, ids = token_features(store, ["river", "bank", "money", "loan"])
    feature = {
        "modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "3",
        "maxActApprox": 12.5, "pos_str": [" loan"],
        "explanations": [
            {"id": "clx9", "modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k",
             "index": "3", "description": "loans and lending", "authorId": "cl0",
             "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini",
             "scores": []},
        ],
    }  # fmt: skip
    path = tmp_path / "feature.json"
    path.write_text(json.dumps(feature))
    code, stdout, _ = gloss(
        capsys, store.url, "import", "neuronpedia", str(path), "--map", f"{TARGET}={NP}"
    )
    assert code == 0 and "imported 1 labels" in stdout, stdout
    assert store.current_explanation(ids[3]).text == "loans and lending"


# ---------------------------------------------------------------- bad input


def count_labels(url: str) -> int:
    with open_store(url) as store:
        with store.session() as s:
            return s.execute(text("SELECT count(*) FROM explanations")).scalar_one()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("layers.6.mlp_latent4.txt", b"not json", "is JSON, and this is not"),
        ("layers.6.mlp_latent4.txt", b'["a list"]', "holds a JSON string"),
        ("notes.txt", b'"x"', "not a delphi explanation file"),
        ("scores/detection/layers.6.mlp_latent3.txt", b'{"a": 1}', "per-sample records"),
        ("layers.6.mlp_latent4.txt", json.dumps("bell \x07").encode(), "control characters"),
    ],
)
def test_bad_delphi_files_are_one_line_errors_and_change_nothing(
    sqlite_url, capsys, tmp_path, name, content, message
):
    with open_store(sqlite_url) as store:
        token_features(store, ["river", "bank", "money", "loan", "water", "tree"])
    root = tmp_path / "run"
    write_delphi_run(root)
    bad = root / name if name.startswith("scores/") else root / "explanations" / name
    bad.write_bytes(content)
    code, out, err = gloss(
        capsys, sqlite_url, "import", "delphi", str(root), "--map", f"{TARGET}=layers.6.mlp"
    )
    assert code == 2 and message in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert count_labels(sqlite_url) == 0  # the good files were not imported either


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON or JSON Lines (line 1"),
        (b'[{"layer": "x", "index": "1", "description": "d"}]', "record 1 has no modelId"),
        (b'[{"modelId": "m", "layer": "l", "index": "one", "description": "d"}]', "'one'"),
        (b'[{"modelId": "m", "layer": "l", "index": "1", "description": "d"}, 7]', "record 2"),
        (
            b'[{"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "1", '
            b'"description": "d", "scores": [{"explanationScoreTypeName": "eleuther_recall", '
            b'"value": "high"}]}]',
            "score value 'high'",
        ),
    ],
)
def test_bad_neuronpedia_files_are_one_line_errors_and_change_nothing(
    store, capsys, tmp_path, content, message
):
    token_features(store, ["river", "bank", "money", "loan", "water", "tree"])
    path = tmp_path / "explanations.json"
    path.write_bytes(content)
    code, out, err = gloss(
        capsys, store.url, "import", "neuronpedia", str(path), "--map", f"{TARGET}={NP}"
    )
    assert code == 2 and message in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert count_labels(store.url) == 0


def test_mapping_mistakes_are_one_line_errors(source, capsys, tmp_path):
    url, _ = source
    out = str(tmp_path / "np.json")
    for args, message in (
        (["--map", f"{SOURCE}"], "--map takes SOURCE=ID"),
        (["--map", f"nope={NP}"], "no feature source 'nope'"),
        (["--map", f"{SOURCE}=no-slash"], "a Neuronpedia id is MODEL/SOURCE"),
        ([], "no source to export: pass --map SOURCE=MODEL/SOURCE"),
        (["--map-file", str(tmp_path / "missing.json")], "cannot read a mapping file"),
    ):
        code, _, err = gloss(capsys, url, "export", "--format", "neuronpedia", "--out", out, *args)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not Path(out).exists()
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({SOURCE: NP}))
    code, _, err = gloss(
        capsys, url, "export", "--format", "neuronpedia", "--out", out, "--map-file", str(mapping)
    )
    assert code == 0 and json.loads(Path(out).read_text())[0]["modelId"] == "gemma-2-2b"


def test_the_store_refuses_bad_imported_scores_whole(store):
    _, ids = token_features(store, ["river", "bank"])
    good = ImportedLabel(ids[0], "rivers", "delphi", None, {})
    for scores, message in (
        ((ImportedScore("detection", float("nan"), {}),), "finite number"),
        ((ImportedScore("detection", 0.5, {}), ImportedScore("detection", 0.7, {})), "two scores"),
    ):
        with pytest.raises(InputError, match=message):
            store.import_labels([good, ImportedLabel(ids[1], "banks", "delphi", None, {}, scores)])
    assert store.explanations(ids[0]) == [] and store.explanations(ids[1]) == []
    assert store.import_labels([good, good]) == ["current", "present"]


def test_export_in_these_formats_needs_out(source, capsys):
    url, _ = source
    code, _, err = gloss(capsys, url, "export", "--format", "delphi")
    assert code == 2 and "--format delphi needs --out" in err


def test_a_file_with_nothing_mapped_is_an_error(store, capsys, tmp_path):
    token_features(store, ["river", "bank"])
    root = tmp_path / "run"
    write_delphi_run(root)
    code, _, err = gloss(capsys, store.url, "import", "delphi", str(root))
    assert code == 2 and "none of its modules (layers.6.mlp, layers.7.mlp)" in err
    assert "--map SOURCE=MODULE" in err and count_labels(store.url) == 0
