"""The store on real databases: every test here runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import re

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from gloss.store import (
    ConflictError,
    ExampleIn,
    ExampleSet,
    InputError,
    LockedError,
    MinedFeature,
    NotFoundError,
    PromptRef,
    WindowIn,
    decode_acts,
    encode_acts,
)
from gloss.store.models import Score
from gloss.store.types import SPLITS

NASTY = [
    '"',
    '""',
    "apple*",
    "*",
    "-apple",
    "apple -",
    "NEAR(apple fruit)",
    "NEAR(",
    "(apple",
    "apple)",
    "apple AND",
    "OR",
    "NOT",
    "a:b",
    "col:apple",
    "^apple",
    "apple & | ! <->",
    "'; DROP TABLE explanations; --",
    "\x00",
    "   ",
    "",
    "🍎 apple",
]


def make_source(store, width=8):
    subject = store.get_or_create_subject("tiny", "/models/tiny", "rev1", "bert")
    return store.get_or_create_source(subject, "layer.0.mlp", "neurons", width, "p0"), subject


def mine(store, source, subject, n_features=3, windows=4):
    window_ids = store.add_windows(
        subject,
        [
            WindowIn("doc", 8 * i, [i, i + 1, i + 2], [f"t{i}", f"t{i + 1}", f"t{i + 2}"])
            for i in range(windows)
        ],
    )
    store.write_mined_features(
        source,
        [
            MinedFeature(
                index=f,
                max_act=float(f),
                mean_act=0.1 * f,
                density=0.05 * f,
                n_tokens=100,
                histogram={"edges": [0.0, 1.0], "counts": [f]},
                examples=[
                    ExampleIn(
                        w,
                        "explain" if k % 2 == 0 else "holdout",
                        "top",
                        k,
                        float(f),
                        encode_acts([0.0, 0.5 * f, float(f)]),
                    )
                    for k, w in enumerate(window_ids)
                ],
            )
            for f in range(n_features)
        ],
    )
    return {f: store.resolve_feature(f"tiny/layer.0.mlp/neurons:{f}") for f in range(n_features)}


def label(store, feature_id, text_, score=None, **kw):
    explanation = store.add_explanation(
        feature_id,
        text_,
        author_kind=kw.pop("author_kind", "model"),
        author_name=kw.pop("author_name", "test-llm"),
        model="test-llm",
        prompt=PromptRef("explain-openai", "1", "abc"),
        **kw,
    )
    if score is not None:
        store.add_score(explanation, "simulation", score, simulator_model="sim")
    return explanation


def test_windows_are_stored_once_and_ids_keep_input_order(store):
    source, subject = make_source(store)
    a = WindowIn("d1", 0, [5, 6, 7], ["a", "b", "c"])
    b = WindowIn("d1", 3, [8, 9, 10], ["d", "e", "f"])
    first = store.add_windows(subject, [a, b, a])
    assert first[0] == first[2] != first[1]
    again = store.add_windows(subject, [b, WindowIn("d2", 0, [5, 6, 7], ["a", "b", "c"])])
    assert again == [first[1], first[0]]
    with store.session() as s:
        assert s.scalar(text("SELECT count(*) FROM windows")) == 2


def test_mining_writes_are_idempotent_and_dead_features_recorded(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    mine(store, source, subject)  # a resumed mine writes the same features again
    with store.session() as s:
        assert s.scalar(text("SELECT sum(count) FROM feature_examples")) == 3 * 4
        assert s.scalar(text("SELECT count(*) FROM features")) == 3
    assert store.feature(ids[0]).status == "dead"
    assert store.feature(ids[2]).status == "mined"
    explain = store.examples(ids[2], split="explain")
    assert {e.split for e in explain} == {"explain"} and len(explain) == 2
    assert explain[0].acts == [0.0, 1.0, 2.0]
    assert explain[0].tokens[0].startswith("t")
    assert store.feature_statuses(source) == {0: "dead", 1: "mined", 2: "mined"}


def test_acts_roundtrip_float16():
    values = [0.0, 1.5, -2.25, 1000.0]
    assert decode_acts(encode_acts(values)) == values


def test_one_current_label_per_feature(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    first = label(store, ids[1], "the word apple", score=0.2)
    second = label(store, ids[1], "apples as fruit", score=0.4)
    history = store.explanations(ids[1])
    assert [e.status for e in history] == ["proposed", "superseded"]
    assert store.current_explanation(ids[1]).id == second
    candidate = label(store, ids[1], "fruit names", status="candidate")
    assert store.current_explanation(ids[1]).id == second
    store.make_current(candidate)
    assert store.current_explanation(ids[1]).id == candidate
    assert {e.id: e.status for e in store.explanations(ids[1])}[first] == "superseded"


def test_best_simulation_score_is_kept_and_nan_refused(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    explanation = label(store, ids[1], "apples", score=0.3)
    store.add_score(explanation, "simulation", 0.1, simulator_model="other")
    store.add_score(explanation, "simulation", None, details={"reason": "constant"})
    store.add_score(explanation, "detection", 0.9)
    assert store.current_explanation(ids[1]).score == pytest.approx(0.3)
    assert len(store.explanation(explanation).scores) == 4
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InputError):
            store.add_score(explanation, "simulation", bad, simulator_model="third")


def test_one_score_per_label_method_simulator_and_prompt(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    explanation = label(store, ids[1], "apples", score=0.3)
    with pytest.raises(ConflictError):
        store.add_score(explanation, "simulation", 0.5, simulator_model="sim")
    prompt = PromptRef("simulate", "2", "h")
    store.add_score(explanation, "simulation", 0.2, simulator_model="sim", prompt=prompt)
    store.add_score(
        explanation, "simulation", 0.25, simulator_model="sim", prompt=prompt, replace=True
    )
    values = sorted(sc.value for sc in store.explanation(explanation).scores)
    assert values == [pytest.approx(0.25), pytest.approx(0.3)]
    # Replacing the best score with a worse one lowers the label's best score.
    store.add_score(explanation, "simulation", 0.1, simulator_model="sim", replace=True)
    assert store.current_explanation(ids[1]).score == pytest.approx(0.25)
    # The database refuses a duplicate even when the store's own check is bypassed.
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(Score(explanation_id=explanation, method="simulation", value=0.9, details={},
                    simulator_model="sim"))  # fmt: skip


def test_current_label_view_in_plain_sql(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    label(store, ids[1], "old label", score=0.1)
    label(store, ids[1], "new label", score=0.5)
    label(store, ids[2], "another", score=0.2)
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT feature_id, label, score, source FROM feature_labels ORDER BY feature_id")
        ).all()
    assert [(r.feature_id, r.label) for r in rows] == [
        (ids[0], None),
        (ids[1], "new label"),
        (ids[2], "another"),
    ]
    assert rows[1].score == pytest.approx(0.5)
    assert rows[1].source == "tiny/layer.0.mlp/neurons"


def test_search_ranks_better_matches_first(store):
    source, subject = make_source(store, width=64)
    window = store.add_windows(subject, [WindowIn("d", 0, [1], ["x"])])[0]
    texts = [
        "unit conversions between metric and imperial units",
        "the word apple as a fruit",
        "Apple the company, apple the fruit, apple pie",
        "repeated phrases",
        "months of the year",
    ]
    store.write_mined_features(
        source,
        [
            MinedFeature(
                i,
                1.0,
                0.1,
                0.1,
                10,
                None,
                [ExampleIn(window, "explain", "top", 0, 1.0, encode_acts([1.0]))],
            )
            for i in range(len(texts))
        ],
    )
    for i, t in enumerate(texts):
        label(store, store.resolve_feature(f"tiny/layer.0.mlp/neurons:{i}"), t, score=0.1 * i)
    hits = store.search("apple")
    assert [h.label for h in hits] == [texts[1], texts[2]]  # the shorter label first
    assert store.search("conversion")[0].label == texts[0]  # stemming
    assert store.search("apple", min_score=0.2)[0].label == texts[2]
    assert store.count("apple") == 2
    assert store.search("zebra") == []
    assert [h.label for h in store.search("", order="score")][0] == texts[4]


def labeled_features(store, hook, texts, scores=None):
    """One mined feature per text on its own source, labeled with it; returns the source name."""
    subject = store.get_or_create_subject("tiny", "/models/tiny", "rev1", "bert")
    source = store.get_or_create_source(subject, hook, "neurons", len(texts), "p0")
    store.write_mined_features(
        source, [MinedFeature(i, 1.0, 0.1, 0.1, 10, None, []) for i in range(len(texts))]
    )
    for i, (feature, text_) in enumerate(zip(store.features(source), texts, strict=True)):
        label(store, feature.id, text_, score=None if scores is None else scores[i])
    return f"tiny/{hook}/neurons"


def test_ranked_search_stays_exact_when_filters_drop_the_best_matches(store):
    """Search ranks a few hundred best matches before joining; filters must not lose rows."""
    rest = labeled_features(
        store, "layer.1.mlp", [f"apple pie and crumble number {i} of many" for i in range(40)]
    )  # written first: only relevance, not ids, can put the others ahead
    best = labeled_features(store, "layer.0.mlp", [f"apple {i}" for i in range(250)])
    labeled_features(store, "layer.2.mlp", [f"pear {i}" for i in range(300)])
    everything = store.search("apple", limit=1000)
    assert len(everything) == 290
    assert {r.source for r in everything[:250]} == {best}  # shorter labels rank first
    wanted = [r for r in everything if r.source == rest]
    assert store.search("apple", source=rest, limit=10) == wanted[:10]
    assert store.search("apple", source=rest, limit=10, offset=35) == wanted[35:]
    pages = [store.search("apple", limit=100, offset=o) for o in (0, 100, 200)]
    assert [r for page in pages for r in page] == everything
    relabeled = everything[0].feature_id
    label(store, relabeled, "no longer about fruit")
    assert relabeled not in {r.feature_id for r in store.search("apple", limit=1000)}
    assert len(store.search("apple", limit=1000)) == 289


def test_search_orders_shortest_label_first_then_best_score(store):
    """Both databases give one order; on SQLite, common and rare words take different plans."""
    rng = random.Random(3)
    fruit = ["kiwi", "plum", "fig", "lime", "pear", "melon", "grape", "mango"]
    texts = [
        " ".join(rng.choices(fruit, weights=[40, 20, 10, 5, 2, 1, 1, 1], k=rng.randint(1, 5)))
        for _ in range(300)
    ]
    scores = [None if rng.random() < 0.2 else round(rng.random(), 1) for _ in texts]
    labeled_features(store, "layer.0.mlp", texts, scores)
    features = [f.id for f in store.features()]
    if store.dialect == "postgresql":  # the label count it plans with comes from analyze
        with store.session() as s:
            s.execute(text("ANALYZE label_search"))

    def expected(*words):
        matching = [i for i, t in enumerate(texts) if set(words) <= set(t.split())]
        unscored = [s is None for s in scores]
        order = sorted(matching, key=lambda i: (len(texts[i]), unscored[i], -(scores[i] or 0), i))
        return [features[i] for i in order]

    def found(*words):
        pages = [store.search(" ".join(words), limit=20, offset=o) for o in range(0, 300, 20)]
        return [r.feature_id for page in pages for r in page]

    for words in (["kiwi"], ["plum", "kiwi"], ["fig"], ["mango"], ["melon", "grape"]):
        assert found(*words) == expected(*words), words
    with store.session() as s:  # the test saw both plans
        walks = [
            store._walk_rank_index(s, store._match_params([w]), 200) for w in ("kiwi", "mango")
        ]
    assert walks == [True, False]
    last = store.search("kiwi", limit=300)[-1]  # a new best score moves it among its peers
    store.add_score(last.explanation_id, "simulation", 0.95, simulator_model="sim")
    scores[features.index(last.feature_id)] = 0.95
    assert found("kiwi") == expected("kiwi") and found("kiwi")[-1] != last.feature_id


def test_search_only_sees_current_labels(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    label(store, ids[1], "bananas")
    label(store, ids[1], "cherries")
    assert store.search("bananas") == []
    assert store.search("cherries")[0].feature_id == ids[1]
    store.review(ids[1], "accept", "ann")
    assert [r.label_status for r in store.search("cherries")] == ["accepted"]
    store.review(ids[1], "edit", "ann", text="sour cherries")
    assert [r.label for r in store.search("cherries")] == ["sour cherries"]
    store.review(ids[1], "reject", "ann")
    assert store.search("cherries") == [] and store.count("cherries") == 0
    index = "explanations_fts_docsize" if store.dialect == "sqlite" else "label_search"
    with store.engine.connect() as conn:  # the search index holds current labels only
        assert conn.execute(text(f"SELECT count(*) FROM {index}")).scalar() == 0


def test_nasty_search_strings_never_raise(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    label(store, ids[1], "apple fruit near the tree")
    for query in NASTY:
        hits = store.search(query)
        assert isinstance(hits, list), query
        words = {w.lower() for w in re.findall(r"\w+", query)}
        if words and words <= {"apple", "fruit", "near", "the", "tree"}:
            assert hits and hits[0].feature_id == ids[1], query
        assert store.count(query) == len(hits)


def test_search_filters(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    label(store, ids[1], "alpha", score=0.9)
    store.review(ids[1], "accept", "ann")
    rows = store.search("", status="unlabeled")
    assert [r.feature_id for r in rows] == [ids[0], ids[2]]
    assert [r.feature_id for r in store.search("", status="accepted")] == [ids[1]]
    assert [r.feature_id for r in store.search("", reviewed=True)] == [ids[1]]
    assert store.count("", reviewed=False) == 2
    assert store.count("", source="nope") == 0
    assert [r.feature_id for r in store.search("", status="dead")] == [ids[0]]


def test_review_actions_are_audited_and_conflicts_detected(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    model_label = label(store, ids[1], "fruit", score=0.3)
    seen = store.current_explanation(ids[1])
    edited = store.review(
        ids[1],
        "edit",
        "ann",
        expected_explanation_id=seen.id,
        expected_version=seen.version,
        text="apples (fruit)",
        note="more precise",
    )
    with pytest.raises(ConflictError):
        store.review(
            ids[1],
            "edit",
            "bob",
            expected_explanation_id=seen.id,
            expected_version=seen.version,
            text="bob's label",
        )
    current = store.current_explanation(ids[1])
    assert current.id == edited and current.text == "apples (fruit)"
    assert (
        current.author_kind == "human"
        and current.parent_id == model_label
        and current.status == "accepted"
    )
    store.review(ids[1], "note", "bob", note="looks right")
    store.review(
        ids[1],
        "reject",
        "bob",
        expected_explanation_id=current.id,
        expected_version=current.version,
    )
    assert store.current_explanation(ids[1]) is None
    actions = [(r.reviewer, r.action) for r in store.reviews(ids[1])]
    assert actions == [("bob", "reject"), ("bob", "note"), ("ann", "edit")]
    edit = store.reviews(ids[1])[-1]
    assert edit.before["text"] == "fruit" and edit.after["text"] == "apples (fruit)"
    with pytest.raises(InputError):
        store.review(ids[1], "accept", "ann")  # nothing current to accept
    with pytest.raises(InputError):
        store.review(ids[1], "frobnicate", "ann")


def test_feature_card(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject)
    label(store, ids[2], "first", score=0.1)
    label(store, ids[2], "second", score=0.2)
    card = store.feature_card("tiny/layer.0.mlp/neurons:2")
    assert card.feature.id == ids[2] and card.feature.histogram == {
        "edges": [0.0, 1.0],
        "counts": [2],
    }
    assert card.current.text == "second" and card.current.scores[0].value == pytest.approx(0.2)
    assert [e.text for e in card.history] == ["second", "first"]
    assert len(card.examples) == 4 and card.source.hook == "layer.0.mlp"
    assert store.feature_card(str(ids[2])).feature.index == 2


def test_bad_feature_references(store):
    with pytest.raises(NotFoundError):
        store.resolve_feature(999)
    with pytest.raises(NotFoundError):
        store.resolve_feature("tiny/layer.0.mlp/neurons:0")
    with pytest.raises(InputError):
        store.resolve_feature("no-index-here")
    with pytest.raises(NotFoundError, match="known sources"):
        store.source("missing")


def test_source_reuse_and_width_mismatch(store):
    source, subject = make_source(store)
    assert store.get_or_create_source(subject, "layer.0.mlp", "neurons", 8, "p0") == source
    with pytest.raises(InputError, match="width 8"):
        store.get_or_create_source(subject, "layer.0.mlp", "neurons", 16, "p0")
    sae = store.get_or_create_source(subject, "layer.0.resid", "sae", 32, "abcdef0123")
    assert store.source(sae).name == "tiny/layer.0.resid/sae-abcdef01"


def test_run_lock(store):
    store.acquire_lock("run", "host:1", run_id=1)
    with pytest.raises(LockedError, match="host:1"):
        store.acquire_lock("run", "host:2")
    store.release_lock("run", "host:2")  # not the holder: nothing happens
    with pytest.raises(LockedError):
        store.acquire_lock("run", "host:2")
    store.acquire_lock("run", "host:3", stale_after_s=-1)  # a stale lock is taken over
    store.release_lock("run", "host:3")
    store.acquire_lock("run", "host:4")


def test_llm_call_cache(store):
    assert store.cached_llm_response("h1") is None
    store.record_llm_call(
        request_hash="h1", role="explainer", model="m", outcome="error", error="429"
    )
    assert store.cached_llm_response("h1") is None
    store.record_llm_call(
        request_hash="h1",
        role="explainer",
        model="m",
        outcome="ok",
        response={"text": "hi"},
        tokens_in=10,
    )
    assert store.cached_llm_response("h1") == {"text": "hi"}
    store.record_llm_call(
        request_hash="h2",
        role="explainer",
        model="m",
        outcome="ok",
        response={"text": "x"},
        cacheable=False,
    )
    assert store.cached_llm_response("h2") is None


def test_runs_are_recorded(store):
    run = store.start_run("mine", {"model": "minilm"}, "abc123")
    store.update_run(run, counts={"features": 3}, tokens_in=10)
    store.finish_run(run, "done", "all good")
    info = store.runs()[0]
    assert (info.id, info.status, info.counts, info.tokens_in, info.message) == (
        run,
        "done",
        {"features": 3},
        10,
        "all good",
    )
    assert info.finished_at is not None


def test_foreign_keys_are_enforced(store):
    with pytest.raises(NotFoundError):
        store.add_explanation(12345, "orphan", author_kind="model", author_name="x")
    with pytest.raises(IntegrityError), store.session() as s:
        s.execute(
            text(
                "INSERT INTO scores (explanation_id, method, details, created_at) VALUES (999, 'x', '{}', '2026-01-01')"
            )
        )


def test_sqlite_settings(sqlite_store):
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_two_writers_at_once_on_sqlite(sqlite_url):
    """Concurrent writers wait on the busy timeout instead of failing."""
    import threading

    from gloss.store import open_store

    stores = [open_store(sqlite_url) for _ in range(4)]
    source, subject = make_source(stores[0])
    ids = mine(stores[0], source, subject)
    errors = []

    def write(s, n):
        try:
            for i in range(10):
                s.add_explanation(
                    ids[1],
                    f"label {n}-{i}",
                    author_kind="model",
                    author_name=f"w{n}",
                    status="candidate",
                )
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].explanations(ids[1])) == 40
    for s in stores:
        s.close()


def test_plain_sql_tools_can_open_the_file(sqlite_store, sqlite_url):
    import sqlite3

    source, subject = make_source(sqlite_store)
    mine(sqlite_store, source, subject)
    path = sqlite_url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM feature_labels").fetchone()[0] == 3
    con.close()
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM features")).scalar() == 3
    engine.dispose()


def test_incremental_work_queries(store):
    source, subject = make_source(store)
    ids = mine(store, source, subject, n_features=5)
    prompt = PromptRef("explain-openai", "1", "abc")
    todo = store.features_to_explain(source, model="test-llm", prompt=prompt)
    assert todo == [ids[1], ids[2], ids[3], ids[4]]  # feature 0 is dead
    label(store, ids[1], "same model and prompt")
    store.add_explanation(
        ids[2],
        "older prompt",
        author_kind="model",
        author_name="x",
        model="test-llm",
        prompt=PromptRef("explain-openai", "0", "old"),
    )
    store.add_explanation(ids[3], "a human wrote this", author_kind="human", author_name="ann")
    store.record_failure(ids[4], "timeout")
    store.record_failure(ids[4], "timeout")
    assert store.features_to_explain(source, model="test-llm", prompt=prompt) == [ids[2], ids[4]]
    assert store.features_to_explain(source, model="test-llm", prompt=prompt, max_failures=2) == [
        ids[2]
    ]
    assert store.features_to_explain(
        source, model="test-llm", prompt=prompt, relabel_human=True
    ) == [ids[2], ids[3], ids[4]]
    assert store.features_to_explain(
        source, model="test-llm", prompt=prompt, limit=1, indices=[4]
    ) == [ids[4]]
    sim = PromptRef("simulate", "1", "h")

    def to_score() -> list[int]:
        labels = store.labels_to_score(source, simulator_model="sim", prompt=sim)
        return [feature_id for feature_id, _, _ in labels]

    assert to_score() == [ids[1], ids[2], ids[3]]
    current = store.current_explanation(ids[1]).id
    store.add_score(current, "simulation", 0.5, simulator_model="sim", prompt=sim)
    store.add_score(
        store.current_explanation(ids[2]).id, "simulation", 0.5, simulator_model="other", prompt=sim
    )
    assert to_score() == [ids[2], ids[3]]
    # each method is owed its own score; a scorer without a model or prompt keys on NULLs
    detection = [f for f, _, _ in store.labels_to_score(
        source, simulator_model="sim", prompt=sim, method="detection")]  # fmt: skip
    assert detection == [ids[1], ids[2], ids[3]]
    store.add_score(current, "embedding", 0.7, simulator_model="all-MiniLM-L6-v2")
    embedding = [f for f, _, _ in store.labels_to_score(
        source, simulator_model="all-MiniLM-L6-v2", prompt=None, method="embedding")]  # fmt: skip
    assert embedding == [ids[2], ids[3]]


def test_large_feature_batches_and_selections(store):
    """Past PostgreSQL's 65,535 bound parameters: ranges and scattered indices alike."""
    source, _ = make_source(store, width=70_000)
    store.write_mined_features(
        source, [MinedFeature(i, 1.0, 0.1, 0.1, 10, None) for i in range(70_000)]
    )
    assert len(store.features(source, indices=range(0, 70_000))) == 70_000
    scattered = list(range(0, 70_000, 3))
    assert len(store.features(source, indices=scattered)) == len(scattered)
    prompt = PromptRef("p", "1", "h")
    assert len(
        store.features_to_explain(source, model="m", prompt=prompt, indices=scattered)
    ) == len(scattered)
    store.write_mined_features(
        source, [MinedFeature(i, 1.0, 0.1, 0.1, 10, None) for i in range(70_000)]
    )


def test_an_example_set_packs_dense_or_sparse_and_reads_back_exactly():
    import numpy as np

    rng = np.random.default_rng(0)
    sparse = np.zeros((6, 40), dtype=np.float16)
    sparse[rng.integers(0, 6, 9), rng.integers(0, 40, 9)] = rng.normal(size=9)
    dense = rng.normal(size=(6, 40)).astype(np.float16)
    kinds = ["top", "random", "silent", "quantile:1", "quantile:12", "top"]
    for acts in (sparse, dense):
        examples = [
            ExampleIn(100 + i, SPLITS[i % 3], kinds[i], i // 2, float(a.max()),
                      encode_acts(a[: 40 - i].tolist()))
            for i, a in enumerate(acts)
        ]  # fmt: skip
        data = ExampleSet.of(examples).pack()
        rows = ExampleSet.unpack(data).rows()
        assert rows == [
            (e.window_id, e.split, e.kind, e.rank, pytest.approx(e.max_act),
             acts[i, : 40 - i].astype(float).tolist())
            for i, e in enumerate(examples)
        ]  # fmt: skip
        tokens = sum(40 - i for i in range(6))
        assert (len(data) < tokens) if acts is sparse else (len(data) > 2 * tokens)
    assert ExampleSet.unpack(ExampleSet.of([]).pack()).rows() == []
    with pytest.raises(ValueError, match="format 9"):
        ExampleSet.unpack(bytes([9]) + data[1:])
