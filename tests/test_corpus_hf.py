"""Corpora from Hugging Face datasets: save_to_disk folders, .arrow files and `hf:NAME`
(read offline from a datasets cache laid out as `load_dataset` leaves it) give the same
windows as the same texts in a JSONL file; bad fields and empty datasets are one-line errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from gloss.pipeline.corpus import Corpus, CorpusConfig, iter_windows
from gloss.store.errors import ConfigError, InputError
from tests.test_corpus import encode, words

datasets = pytest.importorskip("datasets")

TEXTS = [words("alpha", 30), "", words("beta", 7), words("gamma", 45), words("alpha", 30)]


def windows(spec: str, **settings) -> list[tuple[int, tuple[int, ...]]]:
    config = CorpusConfig((spec,), ctx_len=8, min_len=2, **settings)
    return [(w.offset, w.token_ids) for w in iter_windows(config, encode)]


def jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_saved_dataset_and_arrow_file_give_the_windows_of_the_same_texts(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))}).save_to_disk(folder)
    plain = windows(str(jsonl(tmp_path / "same.jsonl", TEXTS)))
    assert len(plain) > 10
    assert windows(str(folder)) == plain
    (arrow,) = folder.glob("*.arrow")
    assert windows(str(arrow)) == plain
    ids = [w.doc_id for w in iter_windows(CorpusConfig((str(folder),), ctx_len=8), encode)]
    assert ids[0] == f"{folder}:0" and f"{folder}:3" in ids and f"{folder}:1" not in ids


def test_field_picks_the_column_and_a_missing_one_names_the_columns(tmp_path):
    folder = tmp_path / "saved"
    data = {"body": [words("b", 20)], "title": [words("t", 20)]}
    datasets.Dataset.from_dict(data).save_to_disk(folder)
    assert windows(str(folder), field="body") == windows(str(folder / "*.arrow"), field="body")
    assert windows(str(folder), field="body") != windows(str(folder), field="title")
    with pytest.raises(
        InputError, match=r"has no column 'text' \(columns: body, title\); pass --field"
    ) as error:
        windows(str(folder))
    one_line(error)


def test_an_empty_dataset_is_a_one_line_error(tmp_path, caplog):
    folder = tmp_path / "empty"
    features = datasets.Features({"text": datasets.Value("string")})
    datasets.Dataset.from_dict({"text": []}, features=features).save_to_disk(folder)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(InputError, match="gave no windows") as error,
    ):
        Corpus(CorpusConfig((str(folder),)), encode).scan()
    one_line(error)
    assert "is empty" in caplog.text


def test_a_dataset_dict_folder_names_its_splits(tmp_path):
    folder = tmp_path / "dict"
    split = datasets.Dataset.from_dict({"text": [words("s", 12)]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(folder)
    with pytest.raises(InputError, match=r"holds the splits train, test: give one") as error:
        windows(str(folder))
    one_line(error)
    assert windows(str(folder / "test")) == windows(
        str(jsonl(tmp_path / "s.jsonl", [words("s", 12)]))
    )


def test_without_datasets_the_error_names_the_extra(tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [words("x", 9)]}).save_to_disk(folder)
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without it finds
    for spec in (str(folder), "hf:acme/tiny"):
        with pytest.raises(ConfigError, match=r"pip install 'gloss\[hf\]'") as error:
            windows(spec)
        one_line(error)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """A datasets cache holding acme/tiny (splits train and test) as `load_dataset` leaves
    it after a download, and the hub offline."""
    from datasets.packaged_modules.parquet.parquet import Parquet
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "datasets"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets and huggingface_hub read these once, at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    source = tmp_path / "tiny"
    source.mkdir()
    parquet = {}
    for split, texts in (("train", TEXTS), ("test", [words("test", 20)])):
        datasets.Dataset.from_dict({"text": texts}).to_parquet(source / f"{split}.parquet")
        parquet[split] = [str(source / f"{split}.parquet")]
    builder = Parquet(cache_dir=str(cache), dataset_name="tiny", config_name="default",
                      config_id="default", hash="0123abcd", data_files=parquet)  # fmt: skip
    builder.download_and_prepare()
    # the hub dataset acme/tiny is cached under its namespace: acme___tiny/CONFIG/VERSION/HASH
    (cache / "tiny").rename(cache / "acme___tiny")
    return cache


def test_hf_name_reads_the_datasets_cache_offline(tmp_path, offline_cache):
    plain = windows(str(jsonl(tmp_path / "same.jsonl", TEXTS)))
    assert windows("hf:acme/tiny") == plain == windows("hf:acme/tiny:default:train")
    test = windows("hf:acme/tiny::test")
    assert test == windows(str(jsonl(tmp_path / "t.jsonl", [words("test", 20)])))
    ids = {w.doc_id for w in iter_windows(CorpusConfig(("hf:acme/tiny::test",), ctx_len=8), encode)}
    assert ids == {"hf:acme/tiny::test:0"}
    # a sample drawn twice is the same sample: what resuming and plan keys rely on
    config = CorpusConfig(("hf:acme/tiny",), ctx_len=8, max_tokens=40, seed=2)
    first = [(w.doc_id, w.offset) for w in Corpus(config, encode).scan()]
    assert first == [(w.doc_id, w.offset) for w in Corpus(config, encode).scan()]
    with pytest.raises(
        InputError, match="not in the datasets cache and HF_HUB_OFFLINE is set"
    ) as error:
        windows("hf:acme/missing")
    one_line(error)
    with pytest.raises(
        InputError, match=r"cannot load the corpus hf:acme/tiny::valid: .*valid"
    ) as error:
        windows("hf:acme/tiny::valid")
    one_line(error)
    with pytest.raises(InputError, match="give hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT"):
        windows("hf:acme/tiny:a:b:c")


@pytest.mark.slow
def test_cli_mines_a_hub_dataset_as_it_mines_the_same_texts(
    tmp_path, offline_cache, monkeypatch, capsys
):
    from gloss.pipeline.cli import main
    from gloss.store import open_store

    monkeypatch.chdir(tmp_path)
    plain = jsonl(tmp_path / "same.jsonl", TEXTS)
    results = {}
    for name, corpus in (("hub", "hf:acme/tiny"), ("plain", str(plain))):
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        code = main(["--database", db, "mine", "--corpus", corpus, "--features", "0:6",
                     "--ctx-len", "16", "--json"])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        summary = json.loads(out.strip().splitlines()[-1])
        store = open_store(db)
        features = store.features(store.source(summary["source"]).id)
        stats = {f.index: (f.max_act, f.mean_act, f.density) for f in features}
        results[name] = (summary["windows"], summary["tokens"], stats)
    assert results["hub"] == results["plain"]
    assert results["plain"][0] > 3 and len(results["plain"][2]) == 6
