"""Dictionary-learning benchmark: quality on held-out tokens and training speed against a
bare forward pass, in one process.

    python bench/learn.py [--hooks layer.0-5.resid] [--width 4096] [--k 32]
                          [--tokens 1000000] [--device cpu] [--lr 0.0016,0.0008]

For each hook spec (repeat --hooks) and learning rate (comma list) it trains one
dictionary over MiniLM on the bundled corpus (Shakespeare, 64-token windows) and reports
FVU, mean L0 and the dead-latent share on the held-out tokens, and training tokens/s as
a ratio to a bare forward pass to the same layers over the same corpus stream (windows
read and tokenized, activations gathered), measured in the same run just before.

Goals (issue 12): 4,096 latents, k = 32, 1M training tokens: FVU <= 0.2, dead share
<= 10%, training throughput >= 0.5x the bare forward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gloss.pipeline.corpus import Corpus, CorpusConfig  # noqa: E402
from gloss.pipeline.learn import LearnConfig, _vectors, evaluate, select_holdout, train  # noqa: E402
from gloss.pipeline.subjects import load_subject  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(subject, corpus: Corpus, hooks: list[str], tokens: int) -> tuple[int, float]:
    """(tokens, seconds) of streaming windows through the subject to the deepest hook."""
    per_block = 16384
    done, start = 0, time.perf_counter()
    windows = iter(corpus)
    while done < tokens:
        block = list(islice(windows, max(1, per_block // corpus.config.ctx_len)))
        if not block:
            break
        vectors = _vectors(subject, hooks, block, corpus.config.ctx_len)
        done += len(next(iter(vectors.values())))
    sync(subject.device)
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--hooks", action="append", help="hook spec (repeatable)")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens")
    parser.add_argument("--holdout", type=int, default=20_000, help="held-out tokens")
    parser.add_argument("--baseline-tokens", type=int, default=100_000)
    parser.add_argument("--lr", default=None, help="comma list; default: LearnConfig's")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    subject = load_subject(args.model, device=args.device)
    corpus = Corpus(CorpusConfig(ctx_len=64), subject.encode)
    started = time.perf_counter()
    corpus.scan()
    scan_s = time.perf_counter() - started
    print(f"{args.model} on {subject.device} ({torch.get_num_threads()} CPU threads); corpus "
          f"{corpus.n_tokens:,} tokens in {corpus.n_windows:,} windows (scan {scan_s:.1f} s)",
          flush=True)  # fmt: skip
    results = []
    for spec in args.hooks or ["layer.0-5.resid"]:
        hooks = subject.parse_hooks(spec)
        bare_forward(subject, corpus, hooks, 4096)  # warm-up: first kernels, allocator
        base_tokens, base_s = bare_forward(subject, corpus, hooks, args.baseline_tokens)
        print(f"  bare forward to {hooks[-1]}: {base_tokens / base_s:,.0f} tokens/s "
              f"({base_tokens:,} tokens, {base_s:.1f} s)", flush=True)  # fmt: skip
        for lr in [float(x) for x in args.lr.split(",")] if args.lr else [None]:
            config = LearnConfig(width=args.width, k=args.k,
                                 train_tokens=args.tokens, holdout_tokens=args.holdout, lr=lr)  # fmt: skip
            if args.batch_size:
                config = replace(config, batch_size=args.batch_size)
            started = time.perf_counter()
            select_holdout(corpus, config.holdout_tokens, config.seed)
            holdout_s = time.perf_counter() - started
            trained = train(subject, spec, corpus, config, progress=sys.stderr.isatty())
            sync(subject.device)
            train_s = trained.seconds - holdout_s  # the held-out sample is drawn once, up front
            started = time.perf_counter()
            quality = evaluate(subject, trained, corpus.config.ctx_len)
            eval_s = time.perf_counter() - started
            ratio = (trained.tokens / train_s) / (base_tokens / base_s)
            row = {
                "hooks": spec, "width": args.width, "k": args.k, "lr": config.learning_rate,
                "batch_size": config.batch_size, "tokens": trained.tokens,
                "vectors": trained.tokens * len(hooks), "steps": trained.steps,
                "fvu": quality["fvu"], "l0": quality["l0"], "dead_share": quality["dead_share"],
                "per_hook_fvu": {h: v["fvu"] for h, v in quality["per_hook"].items()},
                "holdout_tokens": quality["holdout_tokens"], "train_s": train_s,
                "holdout_select_s": holdout_s, "eval_s": eval_s,
                "train_tokens_per_s": trained.tokens / train_s,
                "bare_tokens_per_s": base_tokens / base_s, "throughput_ratio": ratio,
                "device": str(subject.device),
            }  # fmt: skip
            results.append(row)
            goals = [quality["fvu"] <= 0.2, quality["dead_share"] <= 0.10, ratio >= 0.5]
            print(f"  {spec} width {args.width} k {args.k} lr {config.learning_rate:g} batch "
                  f"{config.batch_size}: {trained.tokens:,} tokens ({trained.steps} steps) in "
                  f"{train_s:.1f} s (+{holdout_s:.1f} s drawing the held-out sample)\n"
                  f"    held-out ({quality['holdout_tokens']:,} tokens): FVU {quality['fvu']:.3f}"
                  f" (goal <= 0.2), L0 {quality['l0']:.1f}, dead {quality['dead_share']:.1%} "
                  f"(goal <= 10%)\n"
                  f"    per point FVU: " + ", ".join(
                      f"{h.split('.')[1]}:{v['fvu']:.3f}" for h, v in quality["per_hook"].items())
                  + f"\n    training {trained.tokens / train_s:,.0f} tokens/s = {ratio:.2f}x the "
                  f"bare forward (goal >= 0.5); goals met: {sum(goals)}/3", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
