"""Effects benchmark: features per second, and the cost over the forward passes they need.

    python bench/interventions.py [--features 16] [--width 256] [--hook layer.9.resid]
                                  [--tokens 12000] [--device cpu]

An SAE of --width random unit latents (SAELens layout, written here) is mined on Gemma
3 270M over the first --tokens tokens of the default corpus (not timed). Then
`compute_effects` measures --features of its features: each needs its top explain
windows run clean, ablated and steered, and its random windows clean and ablated (a
window's clean pass is shared by every feature that shows it). Every batch it runs is
recorded, and the same batches are replayed in this process as bare forward passes of
the causal LM (blocks, final norm, LM head) without hooks, without an SAE and without
any reduction: the passes the measures cannot do without. The ratio is effects time over
that baseline. Goal (issue 18): <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gloss.pipeline.effects as effects_module  # noqa: E402
from gloss.pipeline.corpus import Corpus  # noqa: E402
from gloss.pipeline.effects import compute_effects  # noqa: E402
from gloss.pipeline.mining import mine  # noqa: E402
from gloss.pipeline.settings import CorpusConfig, EffectsConfig, MiningConfig  # noqa: E402
from gloss.pipeline.sources import load_source  # noqa: E402
from gloss.pipeline.subjects import load_subject  # noqa: E402
from gloss.store import open_store  # noqa: E402

MINING = MiningConfig(top_explain=8, top_holdout=2, quantiles=4, quantile_pool=20,
                      random_explain=4, random_holdout=2, batch_size=16)  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_sae(folder: Path, d_in: int, width: int) -> Path:
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(width, d_in, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    cfg = {"d_in": d_in, "d_sae": width, "architecture": "standard"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = {"W_enc": W_dec.T.contiguous() / 50, "b_enc": torch.full((width,), -0.5),
               "W_dec": W_dec, "b_dec": torch.zeros(d_in)}  # fmt: skip
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


def corpus_file(folder: Path, subject, tokens: int) -> Path:
    """The default corpus's first lines, up to about `tokens` tokens, as one file."""
    from gloss.pipeline.corpus import default_corpus_files

    lines, count = [], 0
    for file in default_corpus_files():
        for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
            if count >= tokens:
                break
            lines.append(line)
            count += len(subject.encode(line))
    path = folder / "corpus.md"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--hook", default="layer.9.resid")
    parser.add_argument("--tokens", type=int, default=12_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    subject = load_subject("gemma-3-270m", device=args.device)
    tmp = Path(tempfile.mkdtemp(prefix="gloss-bench-effects-"))
    sae = load_source(
        f"sae:{write_sae(tmp, subject.hook_width(args.hook), args.width)}",
        subject.hook_width(args.hook),
    )
    corpus = Corpus(
        CorpusConfig(paths=(str(corpus_file(tmp, subject, args.tokens)),)), subject.encode
    )
    store = open_store(f"sqlite:///{tmp / 'bench.db'}")
    started = time.perf_counter()
    result = mine(store, subject, sae, args.hook, corpus, MINING, progress=False)
    print(f"mined {result.features} features ({result.dead} dead) over {result.tokens:,} "
          f"tokens in {time.perf_counter() - started:.1f} s (not timed below)")  # fmt: skip
    info = store.source(result.source_id)
    config = EffectsConfig()
    chosen = [f.id for f in store.features(info.id, status="mined")][: args.features]

    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    recorded = effects_module.logprobs

    def recording(subject_, ids, valid, *rest, **kw):
        batches.append((ids.clone(), valid.clone()))
        return recorded(subject_, ids, valid, *rest, **kw)

    effects_module.logprobs = recording  # type: ignore[assignment]
    sync(args.device)
    started = time.perf_counter()
    counts = compute_effects(store, subject, sae, info, config, feature_ids=chosen)
    sync(args.device)
    effects_s = time.perf_counter() - started
    effects_module.logprobs = recorded  # type: ignore[assignment]

    rows = sum(len(ids) for ids, _ in batches)
    tokens = sum(int(valid.sum()) for _, valid in batches)
    sync(args.device)
    started = time.perf_counter()
    with torch.inference_mode():
        for ids, valid in batches:
            full, mask = subject._with_specials(ids.to(subject.device), valid.long())
            hidden = subject.model(input_ids=full, attention_mask=mask, use_cache=False)[0]
            subject.logits(hidden)
    sync(args.device)
    bare_s = time.perf_counter() - started
    n = counts["measured"]
    print(f"subject gemma-3-270m on {args.device}, {args.hook}, SAE width {args.width}, "
          f"[effects] windows {config.windows} + random {config.random}, batch {config.batch}")  # fmt: skip
    print(f"forward rows needed: {rows} windows, {tokens:,} tokens, {len(batches)} batches "
          f"({rows / max(n, 1):.1f} rows per feature)")  # fmt: skip
    print(f"effects:     {n} features in {effects_s:.2f} s = {n / effects_s:.2f} features/s")
    print(f"bare passes: the same batches in {bare_s:.2f} s")
    print(f"ratio effects / bare forward passes: {effects_s / bare_s:.2f}x (goal <= 1.3x)")
    store.close()


if __name__ == "__main__":
    main()
