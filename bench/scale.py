"""Benchmark: 1, 2, 4 and 8 `gloss run` workers on one PostgreSQL database.

    python bench/scale.py [--workers 1,2,4,8] [--per-worker 40] [--latency 1.0]
                          [--concurrency 4] [--server postgresql+psycopg://postgres@127.0.0.1/postgres]

Each worker is a real `gloss run` process; the LLM endpoint is the scripted server
(tests/scripted_llm.py, in its own process) answering every request after `latency`
seconds. The features are mined once beforehand, so the runs measure the labeling
stages: each feature is one explain call and one simulation call. With W workers of
concurrency C the ideal rate is W x C / (latency x 2) features per second; the
ratio measured / ideal shows what claims, budgets, the store and the workers' loops
cost (goal >= 0.8 at 8 workers). "busy" is the rate while every worker is labeling:
from the last worker's first call to the first worker's last label. "e2e" runs from
launching the processes to the last one exiting, and "start" is how long the last
worker took to make its first call: importing torch and transformers and loading the
subject model, all workers at once on this machine's cores. The database's own
time per feature comes from pg_stat_database.active_time; CPU is this machine's
busy share in that window, to show the latency keeps it below saturation.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
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


class CpuSampler(threading.Thread):
    """The machine's busy share over time, from /proc/stat every half second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            idle = fields[3] + fields[4]
            self.samples.append((time.time(), sum(fields) - idle, sum(fields)))

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def share(self, begin: float, end: float) -> float:
        inside = [s for s in self.samples if begin <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / max(inside[-1][2] - inside[0][2], 1)


def _cpu_seconds(server_pid: int) -> tuple[float, float, float]:
    """CPU seconds used so far by (this process's finished children: the workers, the
    scripted endpoint, PostgreSQL: its live processes and the backends it has reaped)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: str) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return [text[text.index("(") + 1 : text.rindex(")")], *text[text.rindex(")") + 2 :].split()]

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    endpoint = sum(float(x) for x in stat(str(server_pid))[12:14]) / tick
    pg = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat(entry.name)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if fields[0] == "postgres":
            pg += sum(float(x) for x in fields[12:16]) / tick  # own time and reaped children's
    return children.ru_utime + children.ru_stime, endpoint, pg


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


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
                f"{'workers':>7} {'features':>8} {'ideal f/s':>9} {'busy f/s':>8} {'ratio':>6} "
                f"{'window':>7} {'e2e f/s':>8} {'start s':>7} {'DB ms/f':>8} {'CPU':>5}"
            )
            breakdown = [f"{'workers':>7} {'workers ms/f':>12} {'endpoint ms/f':>12} "
                         f"{'PG ms/f':>12}   (CPU time per feature)"]  # fmt: skip
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
                spent = _cpu_seconds(server.pid)
                cpu = CpuSampler()
                cpu.start()
                launched = time.time()
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
                wall = time.time() - launched
                cpu.stop()
                by = [b - a for a, b in zip(spent, _cpu_seconds(server.pid), strict=True)]
                db_ms = _active_ms(engine, name) - active
                with engine.connect() as conn:
                    done = [_epoch(t) for (t,) in conn.execute(text(
                        "SELECT s.created_at FROM scores s JOIN explanations e "
                        "ON e.id = s.explanation_id WHERE e.author_kind = 'model'"
                    ))]  # fmt: skip
                    spans = [(_epoch(a), _epoch(b)) for a, b in conn.execute(text(
                        "SELECT min(created_at), max(created_at) FROM explanations "
                        "WHERE author_kind = 'model' GROUP BY run_id"
                    ))]  # fmt: skip
                # All workers busy: from the last worker's first label back by one call
                # (its first request) to the first worker's last label.
                begin = max(a for a, _ in spans) - args.latency
                end = min(b for _, b in spans)
                inside = sum(begin <= t <= end for t in done)
                ideal = workers * args.concurrency / (args.latency * CALLS_PER_FEATURE)
                busy = inside / (end - begin) if end > begin else float("nan")
                if len(spans) < workers:
                    busy = float("nan")  # a worker labeled nothing: no window with all busy
                e2e = len(done) / wall
                print(
                    f"{workers:>7} {len(done):>8} {ideal:>9.2f} {busy:>8.2f} {busy / ideal:>6.2f} "
                    f"{end - begin:>6.1f}s {e2e:>8.2f} {begin - launched:>7.1f} "
                    f"{db_ms / max(len(done), 1):>8.1f} {cpu.share(begin, end):>5.0%}"
                )
                per = [1000 * x / max(len(done), 1) for x in by]
                breakdown.append(f"{workers:>7} {per[0]:>12.0f} {per[1]:>12.0f} {per[2]:>12.0f}")
            print("\n".join(breakdown))
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
