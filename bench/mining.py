"""Mining benchmark: overhead over a bare forward pass, early-stop savings, memory, tokens/s.

    python bench/mining.py [--model minilm] [--hook layer.3.mlp] [--tokens 16000] [--device cpu]
    python bench/mining.py --end-to-end [--widths 512,16384,131072] [--tokens 20000]

All timings run on the same windows in one process, best of --repeat runs each, so
they compare under the same load. Peak memory is measured in child processes (one
per corpus size) so each number is that run's own high-water mark.

`--end-to-end` times `gloss mine` whole (corpus read and tokenisation, forward, encode,
reservoirs, choosing examples, decoding and writing to SQLite) for synthetic SAEs of
each width on MiniLM's residual stream (`--hook layer.3.resid`), each in a child process
that also reports its peak memory, against the *model work* measured in this process on
the same tokens: a bare forward to the hook plus the SAE encode alone (gloss's encoder:
one dense matmul and ReLU, in feature chunks of `feature_chunk` so it fits in memory). The corpus is the
first --tokens tokens' worth of the default corpus's text, written to a file and mined
whole, so reading and tokenising it count in proportion (a 20k-token sample of the whole
default corpus would tokenise all 1.2M of its tokens first, a fixed 1.4 s here). Goal
(issue 15): end to end <= 1.5x the model work at 16,384 latents and <= 2x at 131,072.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gloss.pipeline.corpus import Corpus, CorpusConfig  # noqa: E402
from gloss.pipeline.mining import FeatureMiner, MiningConfig, iter_batches, mine  # noqa: E402
from gloss.pipeline.sources import load_source  # noqa: E402
from gloss.pipeline.subjects import load_subject  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeat: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """Mine every feature of --sae (default: the hook's neurons) over --tokens tokens into a
    throwaway SQLite, corpus sample included; print the time, RSS before and peak during."""
    from gloss.store import open_store

    subject = load_subject(args.model, device=args.device)
    source = load_source(args.sae or "neurons", subject.hook_width(args.hook))
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as tmp, open_store(f"sqlite:///{tmp}/bench.db") as store:
        before = rss_mib()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        corpus = Corpus(corpus_config(args), subject.encode)
        result = mine(store, subject, source, args.hook, corpus, MiningConfig(), progress=False)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    print(json.dumps({"tokens": result.tokens, "peak_mib": peak[0], "before_mib": before,
                      "seconds": seconds, "features": result.features}))  # fmt: skip


def corpus_config(args) -> CorpusConfig:
    """--corpus whole if given, else a --tokens sample of the default corpus."""
    if args.corpus:
        return CorpusConfig((args.corpus,))
    return CorpusConfig(max_tokens=args.tokens)


def write_corpus(path: Path, subject, tokens: int) -> Path:
    """The default corpus's first lines, up to about `tokens` tokens, as one markdown file
    (cleaned as the default corpus is)."""
    from gloss.pipeline.corpus import default_corpus_files

    lines, count = [], 0
    for file in default_corpus_files():
        for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
            if count >= tokens:
                break
            lines.append(line)
            count += len(subject.encode(line))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_sae(folder: Path, d_in: int, width: int) -> Path:
    """A synthetic ReLU SAE: random unit-norm encoder columns, biases that make it sparse."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(width)
    W = torch.randn(d_in, width, generator=g)
    W /= W.norm(dim=0, keepdim=True)
    b = -torch.rand(width, generator=g) * 4.0  # a sparse spread of densities
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": width}))
    save_file({"W_enc": W.contiguous(), "b_enc": b, "W_dec": W.T.contiguous(),
               "b_dec": torch.zeros(d_in)}, str(folder / "sae_weights.safetensors"))  # fmt: skip
    return folder


def model_work(subject, batches, args, source, config) -> tuple[float, float]:
    """Best-of-repeat seconds of a bare forward to the hook, and of the SAE encode alone
    (gloss's encoder, one matmul and activation per feature chunk) of the real tokens."""
    device = str(subject.device)
    width = source.width
    hidden: list[torch.Tensor] = []

    def forward() -> None:
        hidden.clear()
        for ids, valid, _ in batches:
            out = subject.activations(ids, valid.long(), [args.hook])[args.hook]
            hidden.append(out[valid.to(out.device)])  # real tokens only

    chunks = [torch.arange(start, min(start + config.feature_chunk, width), device=device)
              for start in range(0, width, config.feature_chunk)]  # fmt: skip

    def encode() -> None:
        with torch.inference_mode():
            for h in hidden:
                for chunk in chunks:
                    source.encode(h, None if len(chunk) == width else chunk, hook=args.hook)

    return timed(forward, args.repeat, device), timed(encode, args.repeat, device)


def end_to_end(args) -> None:
    subject = load_subject(args.model, device=args.device)
    config = MiningConfig()
    tmp = tempfile.TemporaryDirectory()
    args.corpus = str(write_corpus(Path(tmp.name) / "corpus.md", subject, args.tokens))
    windows = list(Corpus(corpus_config(args), subject.encode).scan())
    batches = list(iter_batches(subject, windows, config.batch_size))
    tokens = sum(int(valid.sum()) for _, valid, _ in batches)
    device = str(subject.device)
    d_in = subject.hook_width(args.hook)
    print(f"model {args.model} {args.hook} (d {d_in}): {len(windows)} windows, {tokens:,} "
          f"tokens, device {device}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'latents':>8} {'forward':>8} {'encode':>8} {'model work':>10} {'gloss mine':>10} "
          f"{'ratio':>6} {'peak MiB':>9}")  # fmt: skip
    with tmp:
        for width in [int(w) for w in args.widths.split(",")]:
            folder = write_sae(Path(tmp.name) / f"sae{width}", d_in, width)
            source = load_source(str(folder), d_in)
            forward_s, encode_s = model_work(subject, batches, args, source, config)
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--model", args.model, "--hook",
                 args.hook, "--tokens", str(args.tokens), "--device", args.device, "--threads",
                 str(args.threads), "--sae", str(folder), "--corpus", args.corpus],
                capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            r = json.loads(out)
            work = forward_s + encode_s
            print(f"{width:>8,} {forward_s:>7.1f}s {encode_s:>7.1f}s {work:>9.1f}s "
                  f"{r['seconds']:>9.1f}s {r['seconds'] / work:>5.2f}x {r['peak_mib']:>9,.0f}",
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--hook", default="layer.3.mlp")
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-sizes", default="8000,64000")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--memory-only", action="store_true", help="skip the timings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--end-to-end", action="store_true", help="gloss mine vs model work")
    parser.add_argument("--widths", default="512,16384,131072", help="SAE latents (end to end)")
    parser.add_argument("--sae", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    if args.end_to_end:
        if args.hook == "layer.3.mlp":
            args.hook = "layer.3.resid"  # SAEs read the residual stream
        return end_to_end(args)

    if not args.memory_only:
        timings(args)
    for size in [int(s) for s in args.memory_sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--model", args.model, "--hook", args.hook,
             "--tokens", str(size), "--device", args.device, "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        r = json.loads(out)
        print(f"  RSS during a full mine + store writes of {r['tokens']:>7,} tokens: peak "
              f"{r['peak_mib']:6.0f} MiB, {r['peak_mib'] - r['before_mib']:+5.0f} MiB over the "
              f"loaded model ({r['seconds']:.1f} s)")  # fmt: skip


def timings(args) -> None:
    subject = load_subject(args.model, device=args.device)
    source = load_source("neurons", subject.hook_width(args.hook))
    config = MiningConfig()
    windows = list(Corpus(CorpusConfig(max_tokens=args.tokens), subject.encode).scan())
    batches = list(iter_batches(subject, windows, config.batch_size))
    tokens = sum(int(valid.sum()) for _, valid, _ in batches)
    device = subject.device

    def bare() -> None:
        for ids, valid, _ in batches:
            subject.activations(ids, valid.long(), [args.hook])

    def full() -> None:
        with torch.inference_mode():
            for ids, valid, _ in batches:
                wrapped, mask = subject._with_specials(ids.to(device), valid.long())
                subject.model(input_ids=wrapped, attention_mask=mask)

    def mining() -> None:
        miner = FeatureMiner(source.width, 64, config, device)
        seen = 0
        for ids, valid, batch in batches:
            hidden = subject.activations(ids, valid.long(), [args.hook])[args.hook]
            acts = source.encode(hidden, feature_major=True)
            miner.update(
                acts, valid.to(device), torch.arange(seen, seen + len(batch), device=device)
            )
            seen += len(batch)

    times = {"bare": [], "full": [], "mining": []}
    for _ in range(args.repeat):  # interleaved, so background load hits all three alike
        for name, fn in (("bare", bare), ("mining", mining), ("full", full)):
            times[name].append(timed(fn, 1, str(device)))
    bare_s, full_s, mine_s = (min(times[k]) for k in ("bare", "full", "mining"))
    print(f"model {args.model} {args.hook}: {source.width} features, {len(windows)} windows, "
          f"{tokens:,} tokens, device {device}, {torch.get_num_threads()} threads, "
          f"best of {args.repeat}")  # fmt: skip
    print(f"  bare forward to {args.hook}: {bare_s:8.2f} s")
    print(f"  full forward (all layers):  {full_s:8.2f} s  -> stopping early saves "
          f"{100 * (1 - bare_s / full_s):.0f}% ({full_s / bare_s:.2f}x)")  # fmt: skip
    print(f"  mining pass (top-k 20+5, quantiles 10 from a pool of 100, random 5): {mine_s:8.2f} s")
    print(f"  mining / bare forward: {mine_s / bare_s:.3f}  (goal <= 1.15)")
    print(f"  throughput: {tokens / mine_s:,.0f} tokens/s mining, {tokens / bare_s:,.0f} bare")


if __name__ == "__main__":
    main()
