"""Store benchmark: bulk mining writes and label search, on SQLite and PostgreSQL.

    python bench/store.py [--features 10000] [--labels 100000] [--postgres URL]

Prints seconds and rows/s for writing features x 40 examples x 64 tokens through
`Store.write_mined_features`, next to a raw executemany of the same rows on the
same database (the floor); and p50/p95 of ranked label search over N labels
(1,000 queries of one or two words drawn with the labels' Zipf weights, so the
commonest words are searched most), next to a LIKE scan of the same table. Goals: >= 50,000 example rows/s on
SQLite; search p95 <= 20 ms. Ratios, not absolute times, compare across machines.

Search by meaning over the same N labels: the cost of embedding labels with the bundled
MiniLM (a sample, then the rest filled with random unit vectors, since ranking costs
the same whatever the vectors hold) against the store time a run spends per feature
(its mined examples, label and score); p50/p95 of `search(like=...)` in one long-lived
store (the review app's case), with and without filters, the query's own embedding
included; and the cold start of `gloss search --like` as a fresh process. Goals: p95
<= 50 ms warm; cold CLI <= 2 s; embedding adds <= 10% to a run's store time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, delete, insert, select, text, update
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gloss.store import ExampleIn, MinedFeature, WindowIn, open_store  # noqa: E402
from gloss.store.models import Explanation, LabelVector, LabelVectorTodo  # noqa: E402
from gloss.store.vectors import pack  # noqa: E402

CTX = 64
EXAMPLES = 40


def vocabulary(n: int = 3000, seed: int = 0) -> tuple[list[str], list[float]]:
    """Pseudo-words with Zipf weights: label text is as skewed as real English."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)}
    )
    rng.shuffle(words)
    return words, [1 / (rank + 1) for rank in range(len(words))]


def bench_writes(store, n_features: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    subject = store.get_or_create_subject("bench", "/bench", uuid.uuid4().hex, "bench")
    source = store.get_or_create_source(subject, "layer.0.mlp", "neurons", n_features, "bench")
    n_windows = max(EXAMPLES * 50, n_features)
    t0 = time.perf_counter()
    window_ids: list[int] = []
    for start in range(0, n_windows, 5000):
        batch = [
            WindowIn(f"doc{i}", 0, rng.integers(0, 30000, CTX).tolist(), ["tok"] * CTX)
            for i in range(start, min(n_windows, start + 5000))
        ]
        window_ids += store.add_windows(subject, batch)
    window_s = time.perf_counter() - t0

    acts = rng.random((EXAMPLES, CTX), dtype=np.float32).astype("<f2")
    blobs = [row.tobytes() for row in acts]
    chunk = 256  # features per write_mined_features call, as mining's write_every
    batches = []  # built before the clock starts: the benchmark times the store, not numpy
    for start in range(0, n_features, chunk):
        features = []
        for index in range(start, min(n_features, start + chunk)):
            picks = rng.permutation(len(window_ids))[:EXAMPLES]
            features.append(
                MinedFeature(
                    index=index,
                    max_act=1.0,
                    mean_act=0.1,
                    density=0.01,
                    n_tokens=100_000,
                    histogram={"edges": [0.0, 1.0], "counts": [10]},
                    examples=[
                        ExampleIn(
                            window_ids[w],
                            "explain" if k < 24 else "holdout",
                            "top",
                            k,
                            1.0,
                            blobs[k],
                        )
                        for k, w in enumerate(picks)
                    ],
                )
            )
        batches.append(features)
    t0 = time.perf_counter()
    for features in batches:
        store.write_mined_features(source, features)
    store_s = time.perf_counter() - t0
    rows = n_features * EXAMPLES

    # Raw floor: the same rows by plain executemany into a table of the same shape and keys.
    blob = "BYTEA" if store.dialect == "postgresql" else "BLOB"
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS raw_examples"))
        conn.execute(
            text(
                "CREATE TABLE raw_examples (id INTEGER PRIMARY KEY, feature_id INTEGER, "
                "window_id INTEGER, split VARCHAR(10), kind VARCHAR(20), rank INTEGER, "
                f"max_act FLOAT, acts {blob}, UNIQUE (feature_id, window_id))"
            )
        )
        conn.execute(text("CREATE INDEX ix_raw_examples_window ON raw_examples (window_id)"))
    raw_insert = text(
        "INSERT INTO raw_examples (id, feature_id, window_id, split, kind, rank, max_act, acts) "
        "VALUES (:id, :feature_id, :window_id, :split, :kind, :rank, :max_act, :acts)"
    )
    t0 = time.perf_counter()
    for start in range(0, n_features, chunk):
        batch = [
            {
                "id": start * EXAMPLES + i * EXAMPLES + k,
                "feature_id": start + i,
                "window_id": window_ids[k],
                "split": "explain",
                "kind": "top",
                "rank": k,
                "max_act": 1.0,
                "acts": blobs[k],
            }
            for i in range(min(chunk, n_features - start))
            for k in range(EXAMPLES)
        ]
        with store.engine.begin() as conn:
            conn.execute(raw_insert, batch)
    raw_s = time.perf_counter() - t0
    return {"windows_s": window_s, "store_s": store_s, "raw_s": raw_s, "rows": rows}


def bench_search(store, n_labels: int, queries: int = 1000) -> dict[str, float]:
    rng = random.Random(0)
    words, weights = vocabulary()
    subject = store.get_or_create_subject("bench-search", "/bench", uuid.uuid4().hex, "bench")
    source = store.get_or_create_source(subject, "layer.1.mlp", "neurons", n_labels, "bench")
    store.write_mined_features(
        source, [MinedFeature(i, 1.0, 0.1, 0.01, 100, None, []) for i in range(n_labels)]
    )
    ids = [f.id for f in store.features(source)]
    t0 = time.perf_counter()
    rows = [
        {
            "feature_id": fid,
            "text": " ".join(rng.choices(words, weights, k=rng.randint(4, 12))),
            "author_kind": "model",
            "author_name": "bench",
            "status": "proposed",
            "details": {},
            "score": rng.random(),
            "version": 1,
        }
        for fid in ids
    ]
    with store.session() as s:
        for start in range(0, len(rows), 10_000):
            s.execute(insert(Explanation), rows[start : start + 10_000])
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    load_s = time.perf_counter() - t0

    def timed(fn, queries: int = queries) -> list[float]:
        """Milliseconds per query; 1,000 queries, since a p95 over 200 moves by +-2 ms."""
        out = []
        for i in range(queries):
            query = " ".join(rng.choices(words, weights, k=1 + i % 2))
            t = time.perf_counter()
            fn(query)
            out.append((time.perf_counter() - t) * 1000)
        return out

    fts = timed(lambda q: store.search(q, limit=20))
    like_sql = text(
        "SELECT id FROM explanations WHERE lower(text) LIKE :pattern ORDER BY score DESC LIMIT 20"
    )

    def like(q: str) -> None:
        with store.engine.connect() as conn:
            conn.execute(like_sql, {"pattern": f"%{q.split()[0]}%"}).all()

    scan = timed(like, 200)  # the baseline: every query costs the same full scan
    return {
        "load_s": load_s,
        "p50": statistics.median(fts),
        "p95": statistics.quantiles(fts, n=20)[18],
        "like_p50": statistics.median(scan),
        "like_p95": statistics.quantiles(scan, n=20)[18],
    }


def bench_meaning(store, url: str, n_labels: int, queries: int = 300) -> dict[str, float]:
    """Search by meaning over the labels `bench_search` left in the store."""
    rng = random.Random(1)
    words, weights = vocabulary()
    sample = min(2_000, n_labels)
    # The sample reads like real labels (English words, so about one token a word).
    english = _english_words()
    with store.session() as s:
        first = s.scalars(select(Explanation.id).order_by(Explanation.id).limit(sample)).all()
        s.execute(
            update(Explanation),
            [
                {"id": e, "text": " ".join(rng.choices(english, k=rng.randint(4, 12)))}
                for e in first
            ],
        )
    store.encoder.vectors(["warm up"])  # load MiniLM before the clock starts
    t0 = time.perf_counter()
    embedded = store.embed_labels(limit=sample)
    embed_ms = (time.perf_counter() - t0) * 1000 / max(embedded, 1)
    rest = store.labels_without_vector()
    vectors = np.random.default_rng(0).standard_normal((len(rest), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with store.session() as s:
        for start in range(0, len(rest), 10_000):
            s.execute(
                insert(LabelVector),
                [
                    {"explanation_id": e, "model": store.encoder.name, "vector": pack(v)}
                    for (e, _), v in zip(
                        rest[start : start + 10_000], vectors[start:], strict=False
                    )
                ],
            )
        s.execute(delete(LabelVectorTodo))  # as `put_vectors` does: nothing left to embed

    # What a run stores per feature besides: one label and one score (mining: bench_writes).
    ids = [f.id for f in store.features(store.sources()[-1].id, indices=list(range(sample)))]
    t0 = time.perf_counter()
    for fid in ids:
        eid = store.add_explanation(fid, "a label " + str(fid), author_kind="model",
                                    author_name="bench", model="bench")  # fmt: skip
        store.add_score(eid, "simulation", 0.5, simulator_model="bench")
    label_ms = (time.perf_counter() - t0) * 1000 / len(ids)
    store.embed_labels()  # the labels just written

    def timed(**filters) -> list[float]:
        out = []
        for i in range(queries):  # each query new: none is served from the query cache
            query = " ".join(rng.choices(words, weights, k=rng.randint(1, 4))) + f" {i}"
            t = time.perf_counter()
            store.search(like=query, limit=20, **filters)
            out.append((time.perf_counter() - t) * 1000)
        return out

    t0 = time.perf_counter()
    store.search(like="first query loads the vectors", limit=20)
    first_ms = (time.perf_counter() - t0) * 1000
    plain = timed()
    filtered = timed(min_score=0.5)
    t = time.perf_counter()
    for _ in range(50):
        store.encoder.vectors([" ".join(rng.choices(words, weights, k=3))])
    query_ms = (time.perf_counter() - t) * 1000 / 50

    cold = []
    for i in range(5):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "gloss.pipeline.cli", "--database", url, "search",
             "--like", f"units of measurement {i}", "--limit", "20"],
            check=True, capture_output=True,
        )  # fmt: skip
        cold.append(time.perf_counter() - t)
    return {
        "embed_ms": embed_ms,
        "label_ms": label_ms,
        "first_ms": first_ms,
        "query_ms": query_ms,
        "p50": statistics.median(plain),
        "p95": statistics.quantiles(plain, n=20)[18],
        "filtered_p50": statistics.median(filtered),
        "filtered_p95": statistics.quantiles(filtered, n=20)[18],
        "cold_s": statistics.median(cold),
        "cold_max_s": max(cold),
        "python_s": _bare_python_s(),
    }


def _english_words() -> list[str]:
    """Whole English words from MiniLM's own vocabulary."""
    from gloss.store.embedder import builtin_minilm

    vocab = (Path(builtin_minilm()) / "vocab.txt").read_text().split()
    return [w for w in vocab[2000:] if w.isalpha() and w.isascii() and len(w) > 2]


def _bare_python_s() -> float:
    """A fresh interpreter that does nothing: the floor under any cold CLI command."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def report(name: str, url: str, n_features: int, n_labels: int) -> None:
    store = open_store(url)
    w = bench_writes(store, n_features)
    print(f"[{name}] windows: {w['windows_s']:.2f}s")
    print(
        f"[{name}] write {n_features:,} features x {EXAMPLES} examples x {CTX} tokens: "
        f"{w['store_s']:.2f}s, {w['rows'] / w['store_s']:,.0f} example rows/s "
        f"(raw executemany floor {w['rows'] / w['raw_s']:,.0f} rows/s; store/raw time ratio "
        f"{w['store_s'] / w['raw_s']:.2f})"
    )
    s = bench_search(store, n_labels)
    print(
        f"[{name}] search over {n_labels:,} labels: p50 {s['p50']:.2f} ms, p95 {s['p95']:.2f} ms "
        f"(LIKE scan p50 {s['like_p50']:.2f} ms, p95 {s['like_p95']:.2f} ms; "
        f"LIKE/FTS p95 ratio {s['like_p95'] / s['p95']:.1f}x); load {s['load_s']:.1f}s"
    )
    m = bench_meaning(store, url, n_labels)
    mined_ms = w["store_s"] * 1000 / n_features
    run_ms = mined_ms + m["label_ms"]
    print(
        f"[{name}] search by meaning over {n_labels:,} labels (warm): p50 {m['p50']:.1f} ms, "
        f"p95 {m['p95']:.1f} ms; with min_score p50 {m['filtered_p50']:.1f} ms, "
        f"p95 {m['filtered_p95']:.1f} ms; of which the query's embedding {m['query_ms']:.1f} ms; "
        f"first search (loads the vectors) {m['first_ms']:.0f} ms"
    )
    print(
        f"[{name}] gloss search --like, cold process: median {m['cold_s']:.2f} s, "
        f"max {m['cold_max_s']:.2f} s (a bare python start: {m['python_s']:.2f} s)"
    )
    print(
        f"[{name}] embedding: {m['embed_ms']:.2f} ms per label; a run's store time per "
        f"feature {run_ms:.2f} ms (mined examples {mined_ms:.2f} + label and score "
        f"{m['label_ms']:.2f}); embedding/store ratio {m['embed_ms'] / run_ms:.2f}"
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("GLOSS_TEST_POSTGRES_URL"),
        help="server URL (a scratch database is created and dropped there)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite", f"sqlite:///{tmp}/bench.db", args.features, args.labels)
    if not args.postgres:
        print("[postgresql] skipped: pass --postgres URL or set GLOSS_TEST_POSTGRES_URL")
        return
    server = make_url(args.postgres).set(drivername="postgresql+psycopg")
    name = f"gloss_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        report(
            "postgresql",
            server.set(database=name).render_as_string(hide_password=False),
            args.features,
            args.labels,
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
