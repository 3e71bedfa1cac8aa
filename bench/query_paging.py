"""Paging the feature list at 100,000 features: offset vs keyset, store API and HTTP.

    python bench/query_paging.py [--features 100000] [--database URL]

Builds a SQLite file by bulk insert (90% labeled, random scores), then prints
best-of-3 milliseconds per query and the offset/keyset ratio measured in the
same run. Not a test: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.testclient import TestClient  # noqa: E402

from gloss.review.app import create_app  # noqa: E402
from gloss.store import open_store  # noqa: E402
from tests.seed import bulk_features  # noqa: E402


def best_ms(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--database", help="default: a new SQLite file in a temp folder")
    args = parser.parse_args()
    url = args.database or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    store = open_store(url)
    start = time.perf_counter()
    bulk_features(store, args.features)
    print(
        f"{store.dialect}: {args.features} features bulk-inserted in {time.perf_counter() - start:.1f}s"
    )

    n, page = args.features, 50
    deep = n - 2 * page
    cursor = store.search(order="score", limit=page, offset=deep - page)[-1].cursor
    cursor_mid = store.search(order="-score", limit=page, offset=n // 2 - page)[-1].cursor
    rows = [
        ("score order, first page", lambda: store.search(order="score", limit=page), None),
        (
            f"score order, page at {deep}",
            lambda: store.search(order="score", limit=page, offset=deep),
            lambda: store.search(order="score", limit=page, after=cursor),
        ),
        (
            f"-score order, page at {n // 2}",
            lambda: store.search(order="-score", limit=page, offset=n // 2),
            lambda: store.search(order="-score", limit=page, after=cursor_mid),
        ),
        (
            f"id order, page at {deep}",
            lambda: store.search(order="id", limit=page, offset=deep),
            lambda: store.search(order="id", limit=page, after=f":{deep}"),
        ),
        ("text search 'apple', first page", lambda: store.search("apple", limit=page), None),
        ("count(all)", lambda: store.count(), None),
        ("review queue head", lambda: store.next_to_review(), None),
    ]
    print(f"{'query':<36} {'offset ms':>10} {'keyset ms':>10} {'ratio':>7}")
    for name, offset_fn, keyset_fn in rows:
        a = best_ms(offset_fn)
        if keyset_fn is None:
            print(f"{name:<36} {a:>10.1f}")
            continue
        b = best_ms(keyset_fn)
        print(f"{name:<36} {a:>10.1f} {b:>10.1f} {a / b:>6.1f}x")

    client = TestClient(create_app(store, reviewer="bench"))
    first = client.get("/?order=score")
    after = store.search(order="score", limit=page, offset=deep - page)[-1].cursor
    http = [
        ("GET / (first page + count)", "/?order=score"),
        (f"GET / keyset page at {deep}", f"/?order=score&after={after}"),
        ("GET /?q=apple", "/?q=apple"),
        ("GET /features/ID", f"/features/{store.search(limit=1)[0].feature_id}"),
    ]
    assert first.status_code == 200
    for name, path in http:
        print(f"{name:<36} {best_ms(lambda p=path: client.get(p)):>10.1f} ms")
    export_start = time.perf_counter()
    exported = sum(1 for _ in store.export())
    print(f"export: {exported} rows in {time.perf_counter() - export_start:.1f}s")


if __name__ == "__main__":
    main()
