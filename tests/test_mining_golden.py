"""Mining's choices are pinned: a small SAE over a fixed corpus, mined with a fixed seed in
several feature chunks and write groups, picks exactly the windows it picked before mining
was made fast (tests/data/mining_golden.json, written by this file's __main__ from the code
as it was then). Faster choice of examples, windows decoded once, one forward pass per batch:
none of them may change what is stored."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import text

from gloss.pipeline.corpus import Corpus, CorpusConfig
from gloss.pipeline.mining import mine
from gloss.pipeline.settings import MiningConfig
from gloss.pipeline.sources import load_source
from gloss.store import open_store

GOLDEN = Path(__file__).parent / "data" / "mining_golden.json"
HOOK = "layer.1.resid"
WIDTH = 48
CONFIG = MiningConfig(
    top_explain=4, top_holdout=2, top_validation=1, quantiles=3, quantile_explain=1,
    quantile_holdout=1, quantile_validation=1, quantile_pool=8, random_explain=1,
    random_holdout=2, random_validation=1, silent_explain=1, silent_validation=1,
    silent_holdout=2, batch_size=5, feature_chunk=20, write_every=7, seed=3,
)  # fmt: skip


def small_sae(folder: Path, d_in: int = 384) -> Path:
    """48 latents with biases that make some dense, some sparse and one dead."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_in, WIDTH, generator=g) / d_in**0.5
    b = torch.linspace(-1.5, 0.2, WIDTH)
    b[5] = -1e4
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": WIDTH}))
    save_file({"W_enc": W, "b_enc": b, "W_dec": W.T.contiguous(), "b_dec": torch.zeros(d_in)},
              str(folder / "sae_weights.safetensors"))  # fmt: skip
    return folder


def digest(minilm, corpus_dir: Path, scratch: Path) -> dict[str, list]:
    """Per feature: its statistics and every example as (window hash, split, kind, rank, max)."""
    source = load_source(str(small_sae(scratch / "sae")), 384)
    corpus = Corpus(CorpusConfig((str(corpus_dir),), ctx_len=16, min_len=4), minilm.encode)
    with open_store(f"sqlite:///{scratch / 'g.db'}") as store:
        result = mine(store, minilm, source, HOOK, corpus, CONFIG, progress=False)
        out = {}
        for info in store.features(result.source_id):
            examples = sorted(
                (
                    hashlib.sha1(json.dumps(e.token_ids).encode()).hexdigest()[:12],
                    e.split, e.kind, e.rank, round(e.max_act, 3),
                )
                for e in store.examples(info.id)
            )  # fmt: skip
            stats = [round(info.max_act, 3), round(info.mean_act, 4), round(info.density, 4)]
            out[str(info.index)] = [stats, [list(e) for e in examples]]
    return out


@pytest.mark.slow
def test_mining_picks_what_it_picked_before(minilm, tmp_path):
    from tests.test_mining import write_corpus

    assert_golden(digest(minilm, write_corpus(tmp_path / "corpus"), tmp_path))


def assert_golden(got: dict[str, list]) -> None:
    expected = json.loads(GOLDEN.read_text())
    assert sorted(got, key=int) == sorted(expected, key=int)
    for index in expected:
        assert got[index][0] == pytest.approx(expected[index][0], abs=2e-3), index
        assert [e[:4] for e in got[index][1]] == [e[:4] for e in expected[index][1]], index
        for mine_, old in zip(got[index][1], expected[index][1], strict=True):
            assert mine_[4] == pytest.approx(old[4], abs=2e-3)


if __name__ == "__main__":  # python -m tests.test_mining_golden: (re)write the golden file
    from gloss.pipeline.subjects import load_subject
    from tests.test_mining import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_corpus(Path(tmp) / "corpus")
        data = digest(load_subject("minilm"), folder, Path(tmp))
    GOLDEN.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN}: {len(data)} features", file=sys.stderr)


@pytest.mark.slow
def test_the_model_runs_once_per_batch_whatever_the_chunks(minilm, tmp_path, monkeypatch):
    from gloss.pipeline.subjects import cache_dir
    from tests.test_mining import write_corpus

    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "cache"))  # not another run's pass files

    folder = write_corpus(tmp_path / "corpus")
    corpus = Corpus(CorpusConfig((str(folder),), ctx_len=16, min_len=4), minilm.encode).scan()
    batches = -(-corpus.n_windows // CONFIG.batch_size)
    calls = []
    original = minilm.activations

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    decoded = []
    strings = minilm.token_strings
    monkeypatch.setattr(minilm, "activations", counted)
    monkeypatch.setattr(minilm, "token_strings", lambda ids: decoded.append(1) or strings(ids))
    digest(minilm, folder, tmp_path)  # 48 features in chunks of 20: three chunks
    assert len(calls) == batches
    assert not list((cache_dir() / "mining").glob("pass-*")), "the pass cache is removed"
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store, store.session() as s:
        windows = s.scalar(text("SELECT count(*) FROM windows"))
    assert len(decoded) == windows, "each window decoded once, whatever the chunks"


@pytest.mark.slow
def test_without_room_for_the_pass_each_chunk_runs_the_model_again(minilm, tmp_path, monkeypatch,
                                                                    caplog):  # fmt: skip
    import shutil

    from tests.test_mining import write_corpus

    full = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    calls = []
    original = minilm.activations
    monkeypatch.setattr(minilm, "activations", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert_golden(digest(minilm, write_corpus(tmp_path / "corpus"), tmp_path))  # same picks
    batches = len(calls) // 3
    assert len(calls) == 3 * batches and batches > 0, "three chunks, three passes"
    assert "do not fit in half the free disk" in caplog.text
