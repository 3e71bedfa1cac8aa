"""Corpora: windows within documents, dedupe, seeded sampling, lenient reading of bad files."""

from __future__ import annotations

import json
import logging

import pytest

from gloss.pipeline.corpus import Corpus, CorpusConfig, default_corpus_files, iter_windows
from gloss.store.errors import ConfigError, InputError

VOCAB: dict[str, int] = {}


def encode(text: str) -> list[int]:
    """A whitespace tokenizer: enough to check windowing without a model."""
    return [VOCAB.setdefault(word, len(VOCAB)) for word in text.split()]


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_windows_never_cross_documents_and_keep_tails(tmp_path):
    (tmp_path / "a.txt").write_text(words("a", 50))
    (tmp_path / "b.txt").write_text(words("b", 35) + "\n")
    windows = list(iter_windows(CorpusConfig((str(tmp_path),), ctx_len=16, min_len=4), encode))
    by_doc: dict[str, list] = {}
    for w in windows:
        by_doc.setdefault(w.doc_id, []).append(w)
    # 50 = 3*16 + 2 and 35 = 2*16 + 3: both tails are under min_len=4 and dropped
    assert sorted(len(v) for v in by_doc.values()) == [2, 3]
    for doc_windows in by_doc.values():
        prefixes = {
            next(k for k, v in VOCAB.items() if v == t)[0] for w in doc_windows for t in w.token_ids
        }
        assert len(prefixes) == 1
    a = by_doc[str(tmp_path / "a.txt")]
    assert [w.offset for w in a] == [0, 16, 32] and all(len(w.token_ids) == 16 for w in a)
    b = by_doc[str(tmp_path / "b.txt")]
    assert [len(w.token_ids) for w in b] == [16, 16]  # tail of 3 < min_len 4
    tails = list(iter_windows(CorpusConfig((str(tmp_path),), ctx_len=16, min_len=2), encode))
    assert sorted(len(w.token_ids) for w in tails)[:2] == [2, 3]


def test_identical_windows_are_kept_once(tmp_path):
    text = words("dup", 64)
    (tmp_path / "one.txt").write_text(text)
    (tmp_path / "two.txt").write_text(text)
    windows = list(iter_windows(CorpusConfig((str(tmp_path / "*.txt"),), ctx_len=16), encode))
    assert len(windows) == 4


def test_max_tokens_sample_is_seeded_and_recorded(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i}.txt").write_text(words(f"d{i}w", 160))
    config = CorpusConfig((str(tmp_path),), ctx_len=16, max_tokens=320, seed=3)
    first = Corpus(config, encode).scan()
    sample = [(w.doc_id, w.offset) for w in first]
    assert len(sample) == 20 == first.n_windows and first.n_tokens == 320
    assert len({doc for doc, _ in sample}) > 5  # spread over documents, not the first few
    again = [(w.doc_id, w.offset) for w in Corpus(config, encode).scan()]
    other = CorpusConfig((str(tmp_path),), ctx_len=16, max_tokens=320, seed=4)
    assert sample == again
    assert sample != [(w.doc_id, w.offset) for w in Corpus(other, encode).scan()]
    record = first.record()
    assert record["seed"] == 3 and record["corpus_tokens"] == 20 * 160 and record["tokens"] == 320


def test_jsonl_with_field_and_bad_records(tmp_path, caplog):
    lines = [json.dumps({"body": words("j", 20)}), "not json", json.dumps({"title": "x"}), "",
             json.dumps({"body": words("k", 20)})]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        windows = list(
            iter_windows(
                CorpusConfig((str(tmp_path / "c.jsonl"),), field="body", ctx_len=8), encode
            )
        )
    assert len(windows) == 4 and {w.doc_id.rsplit(":", 1)[1] for w in windows} == {"1", "5"}
    assert "not JSON" in caplog.text and "without a text field 'body'" in caplog.text


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": [words("p", 16), None, words("q", 16)]}), tmp_path / "t.parquet"
    )
    windows = list(iter_windows(CorpusConfig((str(tmp_path / "t.parquet"),), ctx_len=16), encode))
    assert len(windows) == 2
    with pytest.raises(InputError, match="no column 'body'"):
        list(iter_windows(CorpusConfig((str(tmp_path / "t.parquet"),), field="body"), encode))


def test_bad_bytes_empty_files_and_enormous_lines_warn(tmp_path, caplog):
    (tmp_path / "latin1.txt").write_bytes("café naïve ".encode("latin-1") * 40)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "huge.txt").write_text(" ".join(["word"] * 60_000) + " " + words("h", 100))
    config = CorpusConfig((str(tmp_path),), ctx_len=16, max_line_chars=10_000)
    with caplog.at_level(logging.WARNING):
        windows = list(iter_windows(config, encode))
    assert "not valid UTF-8" in caplog.text
    assert "empty.txt is empty" in caplog.text
    assert "line over 10000 characters" in caplog.text
    docs = {w.doc_id.rsplit("/", 1)[1] for w in windows}
    assert docs == {"latin1.txt", "huge.txt"}


def test_empty_corpus_and_bad_paths_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(InputError, match="gave no windows"):
        Corpus(CorpusConfig((str(tmp_path),)), encode).scan()
    with pytest.raises(InputError, match="matches no file"):
        Corpus(CorpusConfig((str(tmp_path / "nope.txt"),)), encode).scan()
    with pytest.raises(ConfigError, match="ctx_len"):
        list(iter_windows(CorpusConfig((str(tmp_path),), ctx_len=1), encode))
    with pytest.raises(ConfigError, match="below one window"):
        Corpus(CorpusConfig((str(tmp_path),), max_tokens=3), encode).scan()


def test_default_corpus_is_installed_real_prose():
    files = default_corpus_files()
    assert len(files) == 38
    text = "".join(f.read_text() for f in files)
    assert len(text.split()) > 800_000  # about 1.26M MiniLM tokens
    assert "To be, or not to be" in text


def test_default_corpus_windows_are_clean(minilm):
    config = CorpusConfig(max_tokens=2_000)
    corpus = Corpus(config, minilm.encode).scan()
    windows = list(corpus)
    assert corpus.corpus_tokens > 1_000_000
    assert len(windows) == 2_000 // 64
    text = minilm.tokenizer.decode(list(windows[0].token_ids))
    assert "**" not in text and "#" not in text


def _scan_traced(path, max_line: int) -> tuple[list[int], int, int]:
    """(lengths of the texts handed to the encoder, windows, peak traced bytes) of one file."""
    import tracemalloc

    handed: list[int] = []

    def count(text: str) -> list[int]:
        handed.append(len(text))
        assert len(text) <= max_line, f"a piece of {len(text)} characters reached the encoder"
        return [len(word) for word in text.split()]

    config = CorpusConfig((str(path),), ctx_len=64, max_line_chars=max_line)
    tracemalloc.start()
    try:
        n_windows = sum(1 for _ in iter_windows(config, count))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return handed, n_windows, peak


def test_one_line_files_are_read_in_linear_work_and_flat_memory(tmp_path):
    """A file that is one enormous line must cost what any file of its size costs."""
    peaks = {}
    for mb in (1, 4):
        path = tmp_path / f"line{mb}.txt"
        path.write_text(("ab abc a abcd " * (mb << 20))[: mb << 20])
        handed, n_windows, peaks[mb] = _scan_traced(path, max_line=100_000)
        assert sum(handed) == path.stat().st_size  # every character encoded once
        assert n_windows > 0
    assert peaks[4] < 2 * peaks[1], peaks
    assert peaks[4] < 8 << 20, peaks


def test_long_lines_among_short_ones_are_cut_without_losing_a_word(tmp_path, caplog):
    """Every line over max_line_chars is cut at spaces, wherever it is; words stay whole."""
    text = words("s", 30) + "\n" + words("l", 5_000) + "\n" + words("t", 40)
    path = tmp_path / "mixed.txt"
    path.write_text(text)
    pieces: list[str] = []

    def keep(piece: str) -> list[int]:
        pieces.append(piece)
        return encode(piece)

    config = CorpusConfig((str(path),), ctx_len=16, min_len=1, max_line_chars=1_000)
    with caplog.at_level(logging.WARNING):
        tokens = [t for w in iter_windows(config, keep) for t in w.token_ids]
    assert "".join(pieces) == text
    assert max(len(line) for piece in pieces for line in piece.split("\n")) <= 1_000
    assert tokens == encode(text)
    assert caplog.text.count("line over 1000 characters") == 1
