"""Benchmark: label and score N features against a scripted endpoint with fixed latency.

    python bench/llm.py [--features 200] [--concurrency 16] [--latency 0.2]

The endpoint (tests/scripted_llm.py, in its own process) answers every request after
`latency` seconds, so the ideal wall time is calls x latency / concurrency; the ratio
wall / ideal shows what the client, the store and the orchestration add (goal <= 1.3).
A second, forced run shows the cache: it should make no HTTP calls at all.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gloss.pipeline.labeling import explain_features  # noqa: E402
from gloss.pipeline.llm import EndpointConfig, LLMClient, LLMConfig  # noqa: E402
from gloss.store import open_store  # noqa: E402
from tests.mined import token_features  # noqa: E402
from tests.scripted_llm import ScriptedLLM  # noqa: E402


def serve(latency: float, urls: multiprocessing.Queue) -> None:
    with ScriptedLLM(latency_s=latency) as server:
        urls.put(server.base_url)
        while True:
            time.sleep(3600)


async def raw_calls(base_url: str, calls: int, concurrency: int) -> float:
    """The same number of calls straight through the client: no store, no prompts."""
    endpoint = EndpointConfig(
        model="scripted", base_url=base_url, api_key="x", concurrency=concurrency
    )
    client = LLMClient(endpoint, role="bench")
    started = time.perf_counter()
    await asyncio.gather(
        *(client.complete(f"does is find {i}", lambda r: r, temperature=0) for i in range(calls))
    )
    await client.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--ctx", type=int, default=64)
    args = parser.parse_args()

    urls: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.latency, urls), daemon=True)
    server.start()
    base_url = urls.get(timeout=30)
    try:
        with tempfile.TemporaryDirectory() as tmp, open_store(f"sqlite:///{tmp}/bench.db") as store:
            words = [f"w{i}" for i in range(args.features)]
            started = time.perf_counter()
            _, ids = token_features(store, words, ctx=args.ctx)
            print(f"setup: {len(ids)} features written in {time.perf_counter() - started:.1f}s")
            endpoint = EndpointConfig(
                model="scripted", base_url=base_url, api_key="x", concurrency=args.concurrency
            )
            llm = LLMConfig(explainer=endpoint, simulator=endpoint)

            summary = explain_features(store, ids, llm)
            ideal = summary.calls * args.latency / args.concurrency
            per = summary.as_dict()
            print(
                f"explain+score {summary.features} features: wall {summary.wall_s:.2f}s, "
                f"ideal {ideal:.2f}s (calls {summary.calls} x {args.latency}s / "
                f"{args.concurrency}), ratio {summary.wall_s / ideal:.2f} (goal <= 1.3)"
            )
            print(
                f"  explained {summary.explained}, scored {summary.scored}, "
                f"failed {summary.failed}; {per['calls_per_feature']:.2f} calls and "
                f"{per['prompt_tokens_per_feature']:.0f} prompt tokens per feature"
            )
            raw = asyncio.run(raw_calls(base_url, summary.calls, args.concurrency))
            print(
                f"baseline: the same {summary.calls} calls through LLMClient alone: {raw:.2f}s, "
                f"ratio {raw / ideal:.2f}; the pipeline adds {summary.wall_s / raw:.2f}x"
            )
            again = explain_features(store, ids, llm, relabel=True)
            print(
                f"forced rerun: wall {again.wall_s:.2f}s, HTTP calls {again.calls}, "
                f"served from cache {again.explainer.cached + again.simulator.cached}"
            )
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
