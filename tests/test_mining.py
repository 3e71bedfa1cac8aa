"""Mining against brute force on a real model, splits, dead features, resume, both databases."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import func, select

from gloss.pipeline.cli import main
from gloss.pipeline.corpus import Corpus, CorpusConfig
from gloss.pipeline.mining import (
    Checkpoint,
    FeatureMiner,
    MiningConfig,
    Reservoir,
    mine,
    text_activations,
)
from gloss.pipeline.sources import load_source
from gloss.store import open_store
from gloss.store.models import FeatureExamples, Window

HOOK = "layer.1.mlp"
SENTENCES = [
    "The committee approved the budget after a long debate about roads and schools.",
    "She poured the tea, added two spoons of sugar, and stirred it slowly.",
    "Convert 5 miles to kilometers: multiply by 1.609 to get about 8 kilometers.",
    "The river flooded the valley in April, and the farmers lost their wheat.",
    "He wrote the function in Python, but the tests failed on Windows.",
    "Three hundred soldiers marched north through the snow toward the castle.",
    "The recipe calls for flour, butter, eggs and a pinch of salt.",
    "In 1905 Einstein published four papers that changed physics.",
]


def write_corpus(folder: Path, docs: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for d in range(docs):
        order = rng.permutation(len(SENTENCES))
        (folder / f"doc{d}.txt").write_text(" ".join(SENTENCES[i] for i in order[: 3 + d]))
    return folder


SMALL = MiningConfig(
    top_explain=4, top_holdout=2, quantiles=3, quantile_explain=1, quantile_holdout=1,
    quantile_pool=8, random_explain=1, random_holdout=2, batch_size=5, write_every=7,
    top_validation=2, quantile_validation=1, random_validation=1, silent_validation=1,
    silent_holdout=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def corpus_for(subject, folder: Path) -> Corpus:
    return Corpus(CorpusConfig((str(folder),), ctx_len=16, min_len=4), subject.encode)


def brute_force(subject, folder: Path, features: list[int]):
    """Every window's activations, one window per forward pass: the reference."""
    out = []
    for w in corpus_for(subject, folder).scan():
        acts = subject.activations(torch.tensor([w.token_ids]), None, [HOOK])[HOOK][0]
        out.append((list(w.token_ids), acts[:, features].numpy()))
    return out


def test_mining_matches_brute_force(minilm, corpus_dir, sqlite_store):
    features = list(range(40))
    reference = brute_force(minilm, corpus_dir, features)
    source = load_source("neurons", minilm.hook_width(HOOK))
    result = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), SMALL,
                  features, progress=False)  # fmt: skip
    all_acts = np.concatenate([a for _, a in reference])
    assert result.features == 40 and result.tokens == len(all_acts) == result.windows * 16 - sum(
        16 - len(t) for t, _ in reference
    )
    assert any(len(t) < 16 for t, _ in reference), "the corpus should exercise padded windows"
    infos = {f.index: f for f in sqlite_store.features(result.source_id)}
    for j, index in enumerate(features):
        info = infos[index]
        column = all_acts[:, j]
        assert info.max_act == pytest.approx(column.max(), abs=1e-4)
        assert info.mean_act == pytest.approx(column.mean(), abs=1e-4)
        assert info.density == pytest.approx((column > 0).mean(), abs=1e-3)
        if column.max() > 0:
            assert sum(info.histogram["counts"]) == int((column > 0).sum())
            assert info.histogram["edges"][-1] >= column.max() > info.histogram["edges"][-2]
        else:
            assert info.histogram is None and info.status == "dead"
        examples = sqlite_store.examples(info.id)
        by_window = {tuple(e.token_ids): e for e in examples}
        assert len(by_window) == len(examples), "a window is used once per feature"
        # Top windows: the brute-force ranking by window max, values up to float16.
        maxes = sorted(((a[:, j].max(), tuple(t)) for t, a in reference), reverse=True)
        tops = sorted((e for e in examples if e.kind == "top"), key=lambda e: -e.max_act)
        expected = [m for m in maxes if m[0] > 0][:8]
        assert len(tops) == len(expected)
        for example, (value, tokens) in zip(tops, expected, strict=True):
            assert example.max_act == pytest.approx(value, abs=1e-4)
            if tuple(example.token_ids) != tokens:  # only a tie may swap windows
                assert value == pytest.approx(by_window.get(tokens, example).max_act, abs=1e-4)
        for example in examples:
            acts = dict((tuple(t), a[:, j]) for t, a in reference)[tuple(example.token_ids)]
            np.testing.assert_allclose(example.acts, acts.astype(np.float16), rtol=2e-3, atol=2e-3)
            assert example.max_act == pytest.approx(acts.max(), abs=1e-4)
        # Three disjoint splits; held-out splits have top, random and silent windows.
        explain = {e.window_id for e in examples if e.split == "explain"}
        validation = {e.window_id for e in examples if e.split == "validation"}
        holdout = {e.window_id for e in examples if e.split == "holdout"}
        assert holdout and validation
        assert not explain & holdout and not explain & validation and not validation & holdout
        kinds = Counter((e.split, e.kind.split(":")[0]) for e in examples)
        assert kinds[("holdout", "random")] == 2 and kinds[("explain", "random")] == 1
        assert kinds[("validation", "random")] == 1
        silent = [e for e in examples if e.kind == "silent"]
        assert all(e.max_act <= 0 for e in silent)
        # Silent windows, holdout first: as many as wanted, or as the corpus has left
        # besides the random windows (which may be silent too).
        left = sum(1 for _, a in reference if a[:, j].max() <= 0) - sum(
            1 for e in examples if e.kind == "random" and e.max_act <= 0
        )
        assert kinds[("holdout", "silent")] == min(2, left)
        assert kinds[("validation", "silent")] == min(1, left - min(2, left))
        if len(expected) == 8:
            assert kinds[("holdout", "top")] == 2 and kinds[("validation", "top")] == 2
            assert kinds[("explain", "top")] == 4
            # Held-out ranks spread over the top; ranks within a split follow the activation.
            assert [e.split for e in tops] == [
                "explain", "validation", "holdout", "explain",
                "explain", "validation", "holdout", "explain",
            ]  # fmt: skip
            for split in ("explain", "validation", "holdout"):
                ranked = sorted((e for e in tops if e.split == split), key=lambda e: e.rank)
                assert ranked == [e for e in tops if e.split == split]
        active = sum(1 for m in maxes if m[0] > 0)
        n_quantile = sum(
            kinds[(split, "quantile")] for split in ("explain", "validation", "holdout")
        )
        assert active > 8 or not n_quantile  # quantile windows are never top windows
    # Only windows used by examples are stored.
    with sqlite_store.session() as s:
        stored = s.scalar(select(func.count()).select_from(Window))
    used = len({e.window_id for f in sqlite_store.features() for e in sqlite_store.examples(f.id)})
    assert stored == used < len(reference) + 1
    run = sqlite_store.run(result.run_id)
    assert run.status == "done" and run.counts["features"] == 40
    assert run.config["corpus"]["ctx_len"] == 16 and run.config["mining"]["top_explain"] == 4


@pytest.mark.parametrize("size", [3, 8, 20])
def test_reservoir_keeps_the_largest_keys_with_their_strips(size):
    """Block appends while there is room, then merges: always the top `size` keys per row."""
    g = torch.Generator().manual_seed(size)
    n_features, ctx = 5, 6
    reservoir = Reservoir(n_features, size, ctx, torch.device("cpu"))
    seen_keys, seen_strips, start = [], [], 0
    for batch, width in [(4, 6), (4, 6), (7, 5), (1, 6), (9, 6), (4, 3)]:
        keys = torch.rand(n_features, batch, generator=g)
        keys[keys < 0.2] = -torch.inf  # windows that may not enter, as in the quantile pool
        strips = torch.randn(batch, n_features, width, generator=g).half()
        feature_major = strips.transpose(0, 1).contiguous()
        reservoir.update(keys, keys * 10, feature_major, torch.arange(start, start + batch))
        start += batch
        seen_keys.append(keys)
        seen_strips.append(torch.nn.functional.pad(strips, (0, ctx - width)))
    all_keys, all_strips = torch.cat(seen_keys, dim=1), torch.cat(seen_strips)
    for f in range(n_features):
        kept = reservoir.keys[f] > -torch.inf
        expected = all_keys[f][all_keys[f] > -torch.inf].sort(descending=True).values[:size]
        assert torch.equal(reservoir.keys[f][kept].sort(descending=True).values, expected)
        for slot in kept.nonzero().flatten().tolist():
            window = int(reservoir.windows[f, slot])
            assert reservoir.keys[f, slot] == all_keys[f, window]
            assert reservoir.maxes[f, slot] == all_keys[f, window] * 10
            assert torch.equal(reservoir.acts[f, slot], all_strips[window, f])


def test_histogram_counts_every_positive_activation_in_its_bin():
    g = torch.Generator().manual_seed(0)
    miner = FeatureMiner(3, 8, MiningConfig(histogram_bins=8))
    batches = [torch.randn(4, 8, 3, generator=g) * scale for scale in (0.5, 1, 4, 2)]
    for i, acts in enumerate(batches):  # the range grows: bins double and merge
        valid = torch.ones(4, 8, dtype=torch.bool)
        valid[0, 5:] = False
        miner.update(acts.movedim(-1, 0), valid, torch.arange(4 * i, 4 * i + 4))
    for f in range(3):
        values = torch.cat([torch.cat([a[1:, :, f].flatten(), a[0, :5, f]]) for a in batches])
        positive = values[values > 0].double().numpy()
        hist = miner.histograms()[f]
        assert np.allclose(np.diff(hist["edges"]), hist["edges"][1])  # equal-width bins
        assert hist["counts"] == np.histogram(positive, bins=hist["edges"])[0].tolist()
        assert hist["edges"][-1] >= positive.max() > hist["edges"][-2]


def test_quantiles_span_the_active_range(minilm, corpus_dir, sqlite_store):
    config = MiningConfig(top_explain=2, top_holdout=1, quantiles=4, quantile_explain=2,
                          quantile_holdout=0, quantile_pool=40, random_holdout=3, batch_size=8)  # fmt: skip
    source = load_source("neurons", minilm.hook_width(HOOK))
    result = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                  range(8), progress=False)  # fmt: skip
    for info in sqlite_store.features(result.source_id):
        examples = sqlite_store.examples(info.id)
        quantile = [e for e in examples if e.kind.startswith("quantile:")]
        assert all(e.max_act > 0 for e in quantile)
        means = {}
        for e in quantile:
            means.setdefault(int(e.kind.split(":")[1]), []).append(e.max_act)
        levels = [np.mean(means[q]) for q in sorted(means)]
        assert levels == sorted(levels), "quantile 1 is the weakest, the last the strongest"


def sae_with_dead_latent(folder: Path, d_in: int) -> Path:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_in, 6, generator=g) / d_in**0.5
    b = torch.zeros(6)
    b[2] = -1e4  # never active
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": 6}))
    save_file({"W_enc": W, "b_enc": b, "W_dec": W.T.contiguous(), "b_dec": torch.zeros(d_in)},
              str(folder / "sae_weights.safetensors"))  # fmt: skip
    return folder


def test_sae_mining_records_dead_features(minilm, corpus_dir, tmp_path, sqlite_store):
    source = load_source(str(sae_with_dead_latent(tmp_path / "sae", 1536)), 1536)
    result = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), SMALL,
                  progress=False)  # fmt: skip
    assert result.features == 6 and result.dead == 1 and result.dead_indices == [2]
    status = sqlite_store.feature_statuses(result.source_id)
    assert status[2] == "dead" and Counter(status.values())["mined"] == 5
    dead = sqlite_store.features(result.source_id, indices=[2])[0]
    examples = sqlite_store.examples(dead.id)
    assert {e.kind for e in examples} == {"random", "silent"}
    assert all(e.max_act <= 0 for e in examples)
    # Same files, same source: mining again reuses it and skips finished features.
    again = load_source(str(tmp_path / "sae"), 1536)
    rerun = mine(sqlite_store, minilm, again, HOOK, corpus_for(minilm, corpus_dir), SMALL,
                 progress=False)  # fmt: skip
    assert rerun.source_id == result.source_id and rerun.skipped == 6 and rerun.features == 0


@pytest.mark.parametrize("chunk", [8192, 8])
def test_resume_after_interruption_has_no_duplicates(minilm, corpus_dir, sqlite_store, tmp_path,
                                                     chunk):  # fmt: skip
    """Interrupted while writing its first group (in chunks of 8, while the second chunk's
    pass runs), a mine keeps that group; a rerun mines the rest, as one run would have."""
    config = replace(SMALL, feature_chunk=chunk)
    source = load_source("neurons", minilm.hook_width(HOOK))
    written: list[list[int]] = []

    def crash_after_first_group(indices: list[int]) -> None:
        written.append(indices)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
             range(20), progress=False, on_write=crash_after_first_group)  # fmt: skip
    assert written == [list(range(7))]
    first_run = sqlite_store.runs()[0]
    assert first_run.status == "interrupted"
    statuses = sqlite_store.feature_statuses(1)
    assert sorted(statuses) == list(range(7))
    result = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                  range(20), progress=False)  # fmt: skip
    assert (result.skipped, result.features) == (7, 13)
    pairs = [
        (f.id, e.window_id) for f in sqlite_store.features() for e in sqlite_store.examples(f.id)
    ]
    assert len(pairs) == len(set(pairs))
    # The same as one uninterrupted mine: statistics and top windows per feature.
    with open_store(f"sqlite:///{tmp_path / 'fresh.db'}") as fresh:
        clean = mine(fresh, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                     range(20), progress=False)  # fmt: skip

        def summary(store, source_id):
            rows = {}
            for f in store.features(source_id):
                tops = [(tuple(e.token_ids), round(e.max_act, 4))
                        for e in store.examples(f.id) if e.kind == "top"]  # fmt: skip
                rows[f.index] = (f.status, round(f.max_act, 4), f.density, sorted(tops))
            return rows

        assert summary(sqlite_store, result.source_id) == summary(fresh, clean.source_id)


def test_store_writes_on_both_databases(minilm, corpus_dir, store):
    source = load_source("neurons", minilm.hook_width(HOOK))
    corpus = corpus_for(minilm, corpus_dir)
    result = mine(store, minilm, source, HOOK, corpus, SMALL, range(5), progress=False)
    with store.session() as s:
        windows = s.scalar(select(func.count()).select_from(Window))
        examples = s.scalar(select(func.sum(FeatureExamples.count)))
    again = mine(store, minilm, source, HOOK, corpus, SMALL, range(5), force=True, progress=False)
    assert again.features == 5 and again.source_id == result.source_id
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Window)) == windows
        assert s.scalar(select(func.sum(FeatureExamples.count))) == examples > 0
    card = store.feature_card(f"{store.source(result.source_id).name}:3")
    assert card.feature.status == "mined" and card.examples
    assert all(len(e.acts) == len(e.tokens) for e in card.examples)


def test_text_activations_for_fires(minilm, tmp_path):
    source = load_source(str(sae_with_dead_latent(tmp_path / "sae", 1536)), 1536)
    tokens, acts, points, _ = text_activations(
        minilm, source, HOOK, "Convert 5 miles to kilometers."
    )
    assert points == [HOOK]
    assert tokens[:2] == ["convert", "5"] and acts.shape == (len(tokens), 6)
    assert (acts[:, 2] == 0).all()
    _, some, _, _ = text_activations(minilm, source, HOOK, "Convert 5 miles.", [4, 0])
    assert some.shape[1] == 2


def test_cli_mine_and_bad_inputs(corpus_dir, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["--database", db, "mine", "--subject", "minilm", "--hook", HOOK, "--features", "0:3",
            "--corpus", str(corpus_dir), "--ctx-len", "16", "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["features"] == 3 and summary["tokens"] > 0 and 0 <= summary["dead"] <= 3
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 3
    cases = [
        (["--hook", "layer.7.mlp"], "valid points are layer.N.mlp"),
        (["--hook", HOOK, "--features", "a:b"], "bad --features"),
        (["--hook", HOOK, "--features", "0:99999"], "out of range"),
        (["--hook", HOOK, "--corpus", str(tmp_path / "missing")], "matches no file"),
        (["--hook", HOOK, "--source", str(tmp_path)], "unknown feature source"),
        (["--hook", HOOK, "--subject", "not a model!"], "no model"),
    ]
    for extra, message in cases:
        assert main(["--database", db, "mine", *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_cli_mine_reads_gloss_toml_under_its_flags(corpus_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLOSS_DATABASE_URL", raising=False)
    (tmp_path / "gloss.toml").write_text(
        'database = "sqlite:///mined.db"\n'
        f'[subject]\nmodel = "minilm"\nhook = "{HOOK}"\nfeatures = "0:2"\n'
        f'[corpus]\npaths = ["{corpus_dir}"]\nctx_len = 16\nmin_len = 4\n'
        "[mining]\ntop_explain = 3\n"
    )
    assert main(["mine", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["features"] == 2 and summary["source"] == f"minilm/{HOOK}/neurons"
    with open_store("sqlite:///mined.db") as store:
        run = store.run(summary["run"])
        assert run.config["corpus"]["ctx_len"] == 16 and run.config["mining"]["top_explain"] == 3
    assert main(["mine", "--features", "2:3", "--top-k", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["features"] == 1, "--features beats the file's selector"
    with open_store("sqlite:///mined.db") as store:
        assert store.run(summary["run"]).config["mining"]["top_explain"] == 2


def mine_until_third_batch(minilm, corpus_dir, store, tmp_path, monkeypatch, features):
    """Mine with a checkpoint after every batch, interrupted at its third batch.

    Returns (config, source, batches): `batches` then collects the sizes of the batches
    that later mines run.
    """
    monkeypatch.setenv("GLOSS_CACHE", str(tmp_path / "cache"))
    config = MiningConfig(**{**SMALL.to_dict(), "checkpoint_every_s": 0})
    source = load_source("neurons", minilm.hook_width(HOOK))
    real = minilm.activations
    batches: list[int] = []

    def counted(ids, *args, **kwargs):
        batches.append(len(ids))
        if len(batches) == 3 and crashing:
            raise KeyboardInterrupt
        return real(ids, *args, **kwargs)

    crashing = True
    monkeypatch.setattr(minilm, "activations", counted)
    with pytest.raises(KeyboardInterrupt):
        mine(store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config, features,
             progress=False)  # fmt: skip
    crashing = False
    batches.clear()
    return config, source, batches


def test_an_interrupted_pass_resumes_mid_corpus_with_the_same_result(
    minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch
):
    """Checkpoints let a rerun skip the windows already seen and still match a clean mine."""
    config, source, batches = mine_until_third_batch(
        minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch, range(12)
    )
    assert list((tmp_path / "cache" / "mining").glob("*.pt")), "a checkpoint was left"
    resumed = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                   range(12), progress=False)  # fmt: skip
    resumed_batches = list(batches)
    with open_store(f"sqlite:///{tmp_path / 'fresh.db'}") as fresh:
        clean = mine(fresh, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                     range(12), progress=False)  # fmt: skip
        assert sum(resumed_batches) == clean.windows - 2 * config.batch_size, "2 not redone"
        assert (resumed.windows, resumed.tokens) == (clean.windows, clean.tokens)

        def everything(store, source_id):
            return {
                f.index: (f.status, f.max_act, f.mean_act, f.density, f.histogram, sorted(
                    (e.split, e.kind, e.rank, tuple(e.token_ids), e.max_act, tuple(e.acts))
                    for e in store.examples(f.id)
                ))
                for f in store.features(source_id)
            }  # fmt: skip

        assert everything(sqlite_store, resumed.source_id) == everything(fresh, clean.source_id)
    assert not list((tmp_path / "cache" / "mining").glob("*.pt")), "removed once written"


def test_a_checkpoint_from_other_windows_is_not_resumed(
    minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch
):
    config, source, batches = mine_until_third_batch(
        minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch, range(4)
    )
    (path,) = (tmp_path / "cache" / "mining").glob("*.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "fingerprint": "windows of another corpus"}, path)
    result = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                  range(4), progress=False)  # fmt: skip
    assert sum(batches) == result.windows, "the whole pass is redone"
    corpus = corpus_for(minilm, corpus_dir).scan()
    torn = Checkpoint(sqlite_store, minilm, result.source_id, HOOK, corpus, config, [0, 1])
    torn.path.write_bytes(b"half a checkpoint")
    assert torn.load() is None, "an unreadable checkpoint means starting the pass over"


def test_a_pass_under_other_settings_deletes_the_checkpoint_it_cannot_resume(
    minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch
):
    config, source, batches = mine_until_third_batch(
        minilm, corpus_dir, sqlite_store, tmp_path, monkeypatch, range(4)
    )
    (stale,) = (tmp_path / "cache" / "mining").glob("*.pt")
    elsewhere = stale.with_name("0123456789abcdef-" + stale.name.split("-")[1])
    elsewhere.write_bytes(stale.read_bytes())  # another source's: not this pass's to delete
    unplaced = stale.with_name("0123456789abcdef0123456789abcdef.pt")  # named as before places
    unplaced.write_bytes(b"")
    other = MiningConfig(**{**config.to_dict(), "top_explain": config.top_explain + 1})
    mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), other, range(4),
         progress=False)  # fmt: skip
    assert not stale.exists() and not unplaced.exists() and elsewhere.exists()


def test_features_mined_over_another_corpus_are_reported(minilm, corpus_dir, sqlite_store):
    source = load_source("neurons", minilm.hook_width(HOOK))
    first = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), SMALL,
                 range(3), progress=False)  # fmt: skip
    same = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), SMALL,
                range(4), progress=False)  # fmt: skip
    assert (same.skipped, same.stale) == (3, [])
    other = Corpus(CorpusConfig((str(corpus_dir),), ctx_len=12, min_len=4), minilm.encode)
    operational = MiningConfig(**{**SMALL.to_dict(), "batch_size": 3, "write_every": 2})
    changed = mine(sqlite_store, minilm, source, HOOK, other, operational, range(5),
                   progress=False)  # fmt: skip
    assert (changed.skipped, changed.features, changed.stale) == (4, 1, [0, 1, 2, 3])
    assert sqlite_store.run(changed.run_id).counts["stale"] == 4
    settings = MiningConfig(**{**SMALL.to_dict(), "top_explain": 2})
    again = mine(sqlite_store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), settings,
                 range(5), progress=False)  # fmt: skip
    assert again.stale == [0, 1, 2, 3, 4] and first.run_id < again.run_id


def test_a_unit_held_by_a_live_process_is_left_to_it_and_a_dead_ones_is_taken(
    minilm, corpus_dir, sqlite_store
):
    import socket
    import subprocess
    import sys

    config = replace(SMALL, feature_chunk=8)
    source = load_source("neurons", minilm.hook_width(HOOK))
    store = sqlite_store
    subject_id = store.get_or_create_subject(**minilm.identity())
    source_id = store.get_or_create_source(subject_id, minilm.canonical_hook(HOOK), "neurons",
                                           source.width, source.params_hash)  # fmt: skip
    assert store.claim_unit(source_id, 0, 8, "another-host:1#1")
    first = mine(store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config, range(16),
                 progress=False)  # fmt: skip
    assert (first.features, first.elsewhere) == (8, 8)
    assert sorted(store.feature_statuses(source_id)) == list(range(8, 16))
    assert store.claim_holders() == ["another-host:1#1"]  # its own units released
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    store.drop_claims("another-host:1#1")
    assert store.claim_unit(source_id, 0, 8, f"{socket.gethostname()}:{gone}#1")
    second = mine(store, minilm, source, HOOK, corpus_for(minilm, corpus_dir), config,
                  range(16), progress=False)  # fmt: skip
    assert (second.features, second.elsewhere, second.skipped) == (8, 0, 8)
    assert store.claim_holders() == []
