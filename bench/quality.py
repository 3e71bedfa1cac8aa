"""Benchmark: do the scores mean anything? `gloss eval` over labeled features.

    python bench/quality.py [--db URL] [--methods simulation,detection,fuzzing,embedding,intruder]
                            [--seeds 0,1] [--base-url URL --llm-model NAME]

With --db, it evaluates the labeled features of that database. Without it, it first
makes one the way a new user does: `gloss run` with the `gloss init` template (a
dictionary learned on the bundled MiniLM, 8 features labeled by the bundled Gemma 3
270M, about 6 minutes on 2 cores), in a temporary folder. Then, per scorer, every
feature's own label and another feature's label are scored on the same held-out windows
(pipeline/evaluate.py): the table shows the mean own and shuffled scores, AUC(own >
shuffled) per seed, its spread, calls and tokens per feature, and a verdict. The
judge is the [llm.simulator] endpoint (the bundled model unless --base-url says
otherwise); the table in the README came from this script.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL = "simulation,detection,fuzzing,embedding,intruder"


def first_run(folder: Path) -> str:
    """A database labeled the way a new user's first `gloss run` labels it."""
    url = f"sqlite:///{folder / 'gloss.db'}"
    env = {**os.environ, "GLOSS_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "gloss.pipeline.cli", "init", "gloss.toml"],
                   cwd=folder, env=env, check=True)  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gloss.pipeline.cli", "run"], cwd=folder, env=env)
    print(f"first run: exit {done.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a labeled database (default: make one with gloss run)")
    parser.add_argument("--methods", default=ALL)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--base-url", help="judge endpoint (default: the bundled model)")
    parser.add_argument("--llm-model", help="judge model at --base-url")
    parser.add_argument("--keep", help="make the database in this folder and keep it")
    parser.add_argument(
        "--config", help="the settings the labels were made with (default: the folder's gloss.toml)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        url = args.db or first_run(folder)
        command = [sys.executable, "-m", "gloss.pipeline.cli", "--db", url, "eval",
                   "--methods", args.methods, "--seeds", args.seeds]  # fmt: skip
        if args.config:  # the run's own settings: its answers are then served from the cache
            command += ["--config", str(Path(args.config).resolve())]
        if args.base_url:
            command += ["--base-url", args.base_url]
        if args.llm_model:
            command += ["--llm-model", args.llm_model]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder)
        print(f"eval: {time.perf_counter() - started:.0f} s", flush=True)
        return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
