"""Build feature databases directly through the store API, for query and review tests.

`seed_features(store)` writes a small, fully known database: one subject, one
neuron source, windows (one holding an XSS payload as a token), examples with
known activations in every split and kind, model labels with scores and one
feature without a label. `bulk_features(url, n)` writes n labeled features with
plain SQL inserts for paging benchmarks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import insert

from gloss.store import ExampleIn, MinedFeature, PromptRef, Store, WindowIn, encode_acts

SOURCE = "toy/layer.0.mlp/neurons"
XSS = "<script>alert('tok')</script>"
LABEL_XSS = "<img src=x onerror=alert('label')>"
PROMPT = PromptRef("explain-v1", "1", "a" * 64)


@dataclass(frozen=True)
class Seeded:
    subject_id: int
    source_id: int
    feature_ids: dict[int, int]  # index -> feature id
    explanation_ids: dict[int, int]  # index -> current explanation id


def _window(doc: int, words: list[str]) -> WindowIn:
    return WindowIn(
        doc_id=f"doc{doc}",
        offset=0,
        token_ids=[hash(w) % 50_000 + i for i, w in enumerate(words)],
        tokens=words,
    )


WINDOWS = [
    ["The", " apple", " pie", " was", " sweet"],
    ["Convert", " 5", " miles", " to", " km"],
    ["She", " ate", " an", " apple", " today"],
    ["A", " kilo", "gram", " is", " heavy"],
    ["x", XSS, " y", " z", "."],
    ["Nothing", " much", " here", " at", " all"],
]

# index -> (label, score); None label means unlabeled.
LABELS: dict[int, tuple[str | None, float | None]] = {
    0: ("apples as a fruit or food", 0.61),
    1: ("unit conversions between miles and kilometers", 0.42),
    2: ("the word 'the' at sentence start", 0.05),
    3: (LABEL_XSS, 0.30),
    4: (None, None),
    5: ("weights and masses in kilograms", None),
}


def seed_features(store: Store) -> Seeded:
    """A known database: six features of one neuron source; see LABELS and WINDOWS."""
    subject_id = store.get_or_create_subject("toy", "/models/toy", "rev1", "bert")
    source_id = store.get_or_create_source(subject_id, "layer.0.mlp", "neurons", 16, "0" * 64)
    window_ids = store.add_windows(subject_id, [_window(i, w) for i, w in enumerate(WINDOWS)])
    rng = random.Random(0)
    mined = []
    for index in LABELS:
        examples = []
        for rank, (w, split, kind) in enumerate(
            [
                (index % 6, "explain", "top"),
                ((index + 1) % 6, "explain", "quantile:5"),
                ((index + 2) % 6, "explain", "random"),
                ((index + 3) % 6, "holdout", "top"),
                ((index + 4) % 6, "holdout", "random"),
            ]
        ):
            acts = [0.0] * 5
            acts[(index + rank) % 5] = 4.0 - rank * 0.5
            acts[(index + rank + 1) % 5] = round(rng.random(), 2)
            examples.append(
                ExampleIn(window_ids[w], split, kind, rank, max(acts), encode_acts(acts))
            )
        edges = [0.0, 1.0, 2.0, 3.0, 4.0]
        mined.append(
            MinedFeature(
                index=index,
                max_act=4.0,
                mean_act=0.2 + index / 10,
                density=0.01 * (index + 1),
                n_tokens=1000,
                histogram={"edges": edges, "counts": [40, 12, 5 + index, 2]},
                examples=examples,
            )
        )
    store.write_mined_features(source_id, mined)
    feature_ids = {f.index: f.id for f in store.features(source_id)}
    explanation_ids = {}
    for index, (label, score) in LABELS.items():
        if label is None:
            continue
        eid = store.add_explanation(
            feature_ids[index],
            label,
            author_kind="model",
            author_name="explainer",
            model="gemma-3-270m",
            prompt=PROMPT,
        )
        if score is not None:
            store.add_score(
                eid, "simulation", score, simulator_model="gemma-3-270m", details={"n": 50}
            )
        explanation_ids[index] = eid
    return Seeded(subject_id, source_id, feature_ids, explanation_ids)


def bulk_features(store: Store, n: int, *, labeled_fraction: float = 0.9) -> int:
    """n features of one source with labels and scores, bulk-inserted; returns the source id."""
    from gloss.store.models import Explanation, Feature

    subject_id = store.get_or_create_subject("bulk", "/models/bulk", "rev1", "gpt2")
    source_id = store.get_or_create_source(subject_id, "h.0.mlp", "neurons", n, "1" * 64)
    rng = random.Random(1)
    words = ["apple", "unit", "number", "city", "verb", "negation", "year", "code", "name", "quote"]
    with store.engine.begin() as conn:
        for start in range(0, n, 10_000):
            stop = min(n, start + 10_000)
            conn.execute(
                insert(Feature),
                [
                    {
                        "source_id": source_id,
                        "index": i,
                        "status": "mined",
                        "max_act": 1 + rng.random(),
                        "mean_act": rng.random(),
                        "density": rng.random() / 100,
                        "n_tokens": 1000,
                        "failures": 0,
                    }
                    for i in range(start, stop)
                ],
            )
        ids = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT id FROM features WHERE source_id = ? ORDER BY id"
                if store.dialect == "sqlite"
                else "SELECT id FROM features WHERE source_id = %s ORDER BY id",
                (source_id,),
            )
        ]
        rows = [
            {
                "feature_id": fid,
                "text": f"{rng.choice(words)} {rng.choice(words)} feature {fid}",
                "author_kind": "model",
                "author_name": "explainer",
                "model": "bulk-model",
                "status": "proposed",
                "score": round(rng.uniform(-0.2, 0.9), 4),
                "version": 1,
                "details": {},
            }
            for fid in ids
            if rng.random() < labeled_fraction
        ]
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(Explanation), rows[start : start + 10_000])
    with store.engine.connect() as conn:
        # Planner statistics, as autovacuum (PostgreSQL) or a long-lived database would have.
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return source_id
