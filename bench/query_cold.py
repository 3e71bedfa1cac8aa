"""Cold start of the query commands: `gloss search` and `gloss runs` from a fresh process.

    python bench/query_cold.py [--repeat 5]

Writes a small database and a gloss.toml beside it (a settings file is what made the
query commands load every stage, torch included), then times each command from a new
Python process, best of `--repeat`, against a bare `python -c pass` and against
`import torch` measured in the same run. Goal (issue 13): search and runs within 0.8 s
on a 2-core machine. Not a test: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gloss.store import open_store  # noqa: E402
from tests.seed import seed_features  # noqa: E402


def best_s(argv: list[str], cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'gloss.db'}"
        with open_store(url) as store:
            seed_features(store)
            store.finish_run(store.start_run("run", {}), "done")
        (folder / "gloss.toml").write_text(f'database = "{url}"\n', encoding="utf-8")
        gloss = [sys.executable, "-m", "gloss.pipeline.cli"]  # reads ./gloss.toml, as users do
        bare = best_s([sys.executable, "-c", "pass"], folder, args.repeat)
        torch = best_s([sys.executable, "-c", "import torch"], folder, args.repeat)
        print(f"python -c pass: {bare:.2f} s; import torch: {torch:.2f} s")
        for command in (["search", "--limit", "20"], ["runs"], ["show", "1"]):
            seconds = best_s([*gloss, *command], folder, args.repeat)
            print(
                f"gloss {' '.join(command):<18} {seconds:.2f} s  "
                f"({seconds / bare:.1f}x python, {seconds / torch:.2f}x import torch; goal <= 0.8 s)"
            )


if __name__ == "__main__":
    main()
