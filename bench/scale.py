"""Benchmark: 1, 2, 4 and 8 `gloss run` workers on one PostgreSQL database.

    python bench/scale.py [--workers 1,2,4,8] [--per-worker 40] [--latency 1.0]
                          [--concurrency 4] [--server postgresql+psycopg://postgres@127.0.0.1/postgres]

Each worker is a real `gloss run` process; the LLM endpoint is the scripted server
(tests/scripted_llm.py, in its own process) answering every request after `latency`
seconds. The features are mined once beforehand, so the runs measure the labeling
stages: each feature is one explain call and one simulation call. With W workers of
concurrency C the ideal rate is W x C / (latency x 2) features per second; the
ratio measured / ideal shows what claims, budgets, the store and the workers' loops
cost (goal >= 0.8 at 8 workers). "steady" is measured from the first call to the
last score; "end to end" from launching the processes to the last one exiting (it
includes each process loading torch and the subject model). The database's own
time per feature comes from pg_stat_database.active_time; CPU is this machine's
busy share during the run, to show the latency keeps it below saturation.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scripted_llm import ScriptedLLM  # noqa: E402

CALLS_PER_FEATURE = 2  # explain + simulation


def serve(latency: float, urls: multiprocessing.Queue) -> None:
    with ScriptedLLM(latency_s=latency) as server:
        urls.put(server.base_url)
        while True:
            time.sleep(3600)


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def write_config(path: Path, database: str, base_url: str, args, features: int) -> Path:
    endpoint = (
        f'model = "scripted"\nbase_url = "{base_url}"\nconcurrency = {args.concurrency}\n'
        "timeout_s = 60\n"
    )
    path.write_text(
        f'database = "{database}"\n'
        f'[subject]\nmodel = "minilm"\nhook = "layer.1.mlp"\nfeatures = "0:{features}"\n'
        "[corpus]\nctx_len = 32\nmax_tokens = 20000\n"
        '[explainer]\nstyle = "openai"\nmax_examples = 8\n'
        '[simulator]\nmethod = "logprobs"\n'
        f"[llm.explainer]\n{endpoint}[llm.simulator]\n{endpoint}"
        "[run]\nbaseline = false\npoll_s = 0.5\n",
        encoding="utf-8",
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--per-worker", type=int, default=40, help="features per worker")
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--server",
        default=os.environ.get(
            "GLOSS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server URL; the bench creates and drops its own database",
    )
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    admin = create_engine(make_url(args.server), isolation_level="AUTOCOMMIT")
    name = f"gloss_bench_scale_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.server).set(database=name).render_as_string(hide_password=False)
    urls: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.latency, urls), daemon=True)
    server.start()
    base_url = urls.get(timeout=30)
    engine = create_engine(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            most = args.per_worker * max(counts)
            config = write_config(Path(tmp) / "gloss.toml", url, base_url, args, most)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "gloss.pipeline.cli", "mine", "--config", str(config),
                 "--json"], cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            print(f"setup: mined {most} MiniLM layer.1.mlp neurons in "
                  f"{time.perf_counter() - started:.1f}s")  # fmt: skip
            print(
                f"latency {args.latency}s, concurrency {args.concurrency} per worker, "
                f"{args.per_worker} features per worker, {os.cpu_count()} cores"
            )
            print(
                f"{'workers':>7} {'features':>8} {'ideal f/s':>9} {'steady f/s':>10} "
                f"{'ratio':>6} {'e2e f/s':>8} {'ratio':>6} {'DB ms/f':>8} {'CPU':>5}"
            )
            for workers in counts:
                with engine.begin() as conn:
                    for table in ("scores", "feature_scores", "explanations", "llm_calls",
                                  "claims"):  # fmt: skip
                        conn.execute(text(f"DELETE FROM {table}"))
                    conn.execute(text("DELETE FROM runs WHERE kind IN ('run', 'group')"))
                    conn.execute(text("UPDATE features SET failures = 0, last_error = NULL"))
                n = args.per_worker * workers
                run_config = write_config(
                    Path(tmp) / f"gloss{workers}.toml", url, base_url, args, n
                )
                active = _active_ms(engine, name)
                busy0, total0 = cpu_times()
                launched = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "gloss.pipeline.cli",
                            "run",
                            "--config",
                            str(run_config),
                        ],
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    )  # fmt: skip
                    for _ in range(workers)
                ]
                for proc in procs:
                    _, err = proc.communicate()
                    if proc.returncode != 0:
                        raise SystemExit(f"a worker failed ({proc.returncode}): {err[-2000:]}")
                wall = time.perf_counter() - launched
                busy1, total1 = cpu_times()
                db_ms = _active_ms(engine, name) - active
                with engine.connect() as conn:
                    first_label, last_score, done = conn.execute(
                        text(
                            "SELECT min(e.created_at), max(s.created_at), count(DISTINCT e.id) "
                            "FROM explanations e JOIN scores s ON s.explanation_id = e.id "
                            "WHERE e.author_kind = 'model'"
                        )
                    ).one()
                live = done
                span = (last_score - first_label).total_seconds() + args.latency
                ideal = workers * args.concurrency / (args.latency * CALLS_PER_FEATURE)
                steady = live / span
                e2e = live / wall
                print(
                    f"{workers:>7} {live:>8} {ideal:>9.2f} {steady:>10.2f} {steady / ideal:>6.2f} "
                    f"{e2e:>8.2f} {e2e / ideal:>6.2f} {db_ms / max(live, 1):>8.1f} "
                    f"{(busy1 - busy0) / max(total1 - total0, 1):>5.0%}"
                )
    finally:
        server.terminate()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _active_ms(engine, name: str) -> float:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return float(
            conn.execute(
                text("SELECT active_time FROM pg_stat_database WHERE datname = :n"), {"n": name}
            ).scalar()
            or 0.0
        )


if __name__ == "__main__":
    main()
