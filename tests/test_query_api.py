"""The query side of the store API on SQLite and PostgreSQL: search, paging, export, queue."""

from __future__ import annotations

import pytest

from gloss.store import EXPORT_FIELDS, ConflictError, InputError, NotFoundError
from tests.seed import LABEL_XSS, LABELS, SOURCE, XSS, bulk_features, seed_features


def test_search_ranks_and_filters(store):
    seeded = seed_features(store)
    rows = store.search("apple")
    assert [r.index for r in rows] == [0]
    assert rows[0].label == LABELS[0][0] and rows[0].score == pytest.approx(0.61)
    assert [r.index for r in store.search("miles kilometers")] == [1]
    assert store.search("kilometers kilograms") == []  # every word must match
    assert {r.index for r in store.search(min_score=0.3)} == {0, 1, 3}
    assert {r.index for r in store.search(max_score=0.3)} == {2, 3}
    assert [r.index for r in store.search(status="unlabeled")] == [4]
    assert store.search(source="no/such/source") == []
    assert len(store.search(source=SOURCE, limit=100)) == 6
    # best score first, unscored last; -score is the reverse with unscored still last
    assert [r.index for r in store.search(order="score", limit=100)][:4] == [0, 1, 3, 2]
    assert [r.index for r in store.search(order="-score", limit=100)][:4] == [2, 3, 1, 0]
    assert store.count() == 6 and store.count("apple") == 1
    store.review(seeded.feature_ids[2], "accept", "ana")
    assert [r.index for r in store.search(reviewed=True)] == [2]
    assert store.count(reviewed=False) == 5
    assert [r.index for r in store.search(status="accepted")] == [2]
    # hostile query strings reach FTS as plain words
    assert store.search('"); DROP TABLE features; --') == []
    assert [r.index for r in store.search("apple*) ^ (-")] == [0] and store.count() == 6
    with pytest.raises(InputError, match="unknown order"):
        store.search(order="sideways")
    # a mistyped status is an error, not an empty list that reads as "none of those"
    with pytest.raises(InputError, match="unknown status 'acepted'.*unlabeled"):
        store.search(status="acepted")


def test_keyset_paging_matches_offset_paging(store):
    seed_features(store)
    bulk_features(store, 230, labeled_fraction=0.8)
    for order in ("score", "-score", "id"):
        by_offset = [r.feature_id for r in store.search(order=order, limit=1000)]
        assert len(by_offset) == 236
        by_cursor, after = [], None
        while True:
            page = store.search(order=order, limit=17, after=after)
            if not page:
                break
            by_cursor += [r.feature_id for r in page]
            after = page[-1].cursor
        assert by_cursor == by_offset, order
    # a short page read from the score index equals the head of the full, sorted list
    for filters in ({}, {"source": SOURCE}, {"reviewed": False}, {"status": "proposed"}):
        for order in ("score", "-score"):
            full = store.search(order=order, limit=1000, **filters)
            assert store.search(order=order, limit=5, **filters) == full[:5], (order, filters)
            page = store.search(order=order, limit=5, offset=3, **filters)
            assert page == full[3:8], (order, filters)
    # filters combine with the cursor
    page = store.search(min_score=0.5, order="score", limit=5)
    rest = store.search(min_score=0.5, order="score", limit=1000, after=page[-1].cursor)
    assert all(r.score >= 0.5 for r in rest)
    assert len(page) + len(rest) == store.count(min_score=0.5)
    with pytest.raises(InputError, match="cursor"):
        store.search(order="id", after="not-a-cursor")
    with pytest.raises(InputError, match="offset"):
        store.search("apple", after=page[-1].cursor)


def test_review_queue_is_lowest_score_first_and_unreviewed(store):
    seeded = seed_features(store)
    head = store.next_to_review()
    assert head.index == 2  # score 0.05
    assert store.next_to_review(skip=1).index == 3
    store.review(head.feature_id, "reject", "ana")
    assert store.next_to_review().index == 3
    # unscored labels come last; unlabeled features never
    for index in (3, 1, 0):
        store.review(seeded.feature_ids[index], "note", "ana", note="looked")
    assert store.next_to_review().index == 5
    store.review(seeded.feature_ids[5], "accept", "ana")
    assert store.next_to_review() is None


def test_export_streams_every_feature_with_provenance(store):
    seeded = seed_features(store)
    eid = seeded.explanation_ids[1]
    store.add_score(eid, "detection", 0.7)
    store.add_score(eid, "simulation", 0.2)  # lower: best stays 0.42
    store.review(seeded.feature_ids[1], "note", "ana", note="fine")
    rows = list(store.export(batch_size=4))
    assert [r["index"] for r in rows] == sorted(LABELS)
    assert all(tuple(r) == EXPORT_FIELDS for r in rows)
    one = rows[1]
    assert one["label"] == LABELS[1][0] and one["score"] == pytest.approx(0.42)
    assert one["scores"] == {"simulation": pytest.approx(0.2), "detection": pytest.approx(0.7)}
    assert one["model"] == "gemma-3-270m" and one["prompt_name"] == "explain-v1"
    assert one["reviewed"] is True and rows[0]["reviewed"] is False
    assert rows[4]["label"] is None and rows[4]["scores"] == {}
    assert rows[3]["label"] == LABEL_XSS
    assert list(store.export(source="other")) == []


def test_feature_card_and_edit_conflict(store):
    seeded = seed_features(store)
    card = store.feature_card(f"{SOURCE}:4")
    assert card.current is None and len(card.examples) == 5
    assert any(XSS in ex.tokens for ex in card.examples)
    fid = seeded.feature_ids[0]
    current = store.current_explanation(fid)
    new_id = store.review(
        fid,
        "edit",
        "ana",
        text="apples, the fruit",
        expected_explanation_id=current.id,
        expected_version=current.version,
    )
    with pytest.raises(ConflictError, match="apples, the fruit"):
        store.review(
            fid,
            "edit",
            "bo",
            text="late edit",
            expected_explanation_id=current.id,
            expected_version=current.version,
        )
    card = store.feature_card(fid)
    assert card.current.id == new_id and card.current.parent_id == current.id
    assert [r.reviewer for r in card.reviews] == ["ana"]
    with pytest.raises(NotFoundError):
        store.feature_card("toy/layer.0.mlp/neurons:99")


def test_current_labels_by_index(store):
    seeded = seed_features(store)
    labels = store.current_labels(seeded.source_id)
    assert sorted(labels) == [0, 1, 2, 3, 5]
    assert labels[1].label == LABELS[1][0] and labels[1].max_act == 4.0
    store.review(seeded.feature_ids[1], "reject", "ana")
    assert 1 not in store.current_labels(seeded.source_id)


def test_count_agrees_with_search_for_every_filter(store):
    seeded = seed_features(store)
    store.review(seeded.feature_ids[2], "accept", "ana")
    for filters in (
        {},
        {"source": SOURCE},
        {"source": "nope"},
        {"reviewed": True},
        {"reviewed": False, "source": SOURCE},
        {"status": "unlabeled"},
        {"min_score": 0.3},
        {"query": "apple"},  # counted from the search index alone
        {"query": "apple", "source": SOURCE},
    ):
        query = filters.pop("query", "")
        assert store.count(query, **filters) == len(store.search(query, limit=100, **filters))
