"""Search by meaning: label vectors from the bundled MiniLM, kept in sync, searched exactly."""

from __future__ import annotations

import numpy as np
import pytest

from gloss.store import InputError, open_store
from gloss.store import vectors as store_vectors
from gloss.store.models import LabelVector
from tests.seed import LABELS, SOURCE, bulk_features, seed_features


def _vector_count(store) -> int:
    from sqlalchemy import func, select

    with store.session() as s:
        return s.scalar(select(func.count()).select_from(LabelVector))


def test_units_of_measurement_finds_the_conversion_feature(store):
    seed_features(store)
    assert len(store.labels_without_vector()) == 5  # nothing embedded yet
    rows = store.search(like="units of measurement", limit=10)
    assert store.labels_without_vector() == []  # the search embedded them first
    assert rows[0].index == 1 and rows[0].label == LABELS[1][0]
    assert [r.index for r in rows[:2]] == [1, 5]  # then kilograms; apples and 'the' far below
    assert {r.index for r in rows} == {i for i, (label, _) in LABELS.items() if label}
    similarities = [r.similarity for r in rows]
    assert similarities == sorted(similarities, reverse=True)
    assert store.count(like="units of measurement") == 5
    # exact cosine, as the embedder itself gives it
    embedded = store.encoder.vectors(["units of measurement", *(r.label for r in rows)])
    assert similarities == pytest.approx((embedded[1:] @ embedded[0]).tolist(), abs=1e-5)
    # the vectors are float32 in the database, one per current label
    with store.session() as s:
        stored = s.scalars(LabelVector.__table__.select().with_only_columns(LabelVector.vector))
        assert {len(v) for v in stored} == {4 * embedded.shape[1]}
    assert store.search(like="converting distances", limit=1)[0].index == 1


def test_an_edited_label_is_found_by_meaning_at_once_and_its_old_vector_dropped(store):
    seeded = seed_features(store)
    assert store.embed_labels() == 5 and store.embed_labels() == 0
    store.review(seeded.feature_ids[2], "edit", "ana", text="dates of historical battles")
    assert _vector_count(store) == 4  # the superseded label's vector went with it
    assert [e for e, _ in store.labels_without_vector()] == [
        store.current_explanation(seeded.feature_ids[2]).id
    ]
    rows = store.search(like="wars in the past", limit=1)
    assert rows[0].index == 2 and rows[0].label == "dates of historical battles"
    # rejecting a label takes it out of the search at once, in this long-lived store too
    store.review(seeded.feature_ids[2], "reject", "ana")
    assert 2 not in [r.index for r in store.search(like="wars in the past", limit=10)]
    assert _vector_count(store) == 4


def test_a_long_lived_reader_sees_labels_other_processes_write(db_url):
    with open_store(db_url) as writer, open_store(db_url) as reader:
        seeded = seed_features(writer)
        first = reader.search(like="fruit", limit=1)
        assert first[0].index == 0
        writer.review(seeded.feature_ids[3], "edit", "ana", text="bananas and other fruit")
        writer.embed_labels()
        assert [r.index for r in reader.search(like="fruit", limit=2)] in ([0, 3], [3, 0])
        writer.review(seeded.feature_ids[0], "reject", "ana")
        assert [r.index for r in reader.search(like="fruit", limit=1)] == [3]


def test_filters_words_and_paging_combine_with_meaning(store, monkeypatch):
    seeded = seed_features(store)
    bulk_features(store, 230, labeled_fraction=0.8)
    store.review(seeded.feature_ids[1], "accept", "ana")
    everything = store.search(like="a unit of length", limit=1000)
    labeled = [r for r in store.search(limit=1000) if r.label is not None]
    assert len(everything) == store.count(like="a unit of length") == len(labeled) > 150
    assert [r.similarity for r in everything] == sorted(
        (r.similarity for r in everything), reverse=True
    )
    order = [r.feature_id for r in everything]
    for filters in (
        {"source": SOURCE},
        {"min_score": 0.3},
        {"max_score": 0.3, "reviewed": False},
        {"status": "accepted"},
        {"reviewed": True},
        {"query": "unit"},
    ):
        passing = {
            r.feature_id
            for r in store.search(
                filters.get("query", ""), limit=1000, **_without(filters, "query")
            )
        }
        passing &= set(order)
        expected = [f for f in order if f in passing]
        found = store.search(filters.get("query", ""), like="a unit of length", limit=1000,
                             **_without(filters, "query"))  # fmt: skip
        assert [r.feature_id for r in found] == expected, filters
        assert store.count(filters.get("query", ""), like="a unit of length",
                           **_without(filters, "query")) == len(expected)  # fmt: skip
        # the first page alone takes the fast path (best few hundred, then filter)
        head = store.search(filters.get("query", ""), like="a unit of length", limit=3,
                            **_without(filters, "query"))  # fmt: skip
        assert [r.feature_id for r in head] == expected[:3], filters
    paged = []
    for offset in range(0, 200, 17):
        paged += [r.feature_id for r in store.search(like="a unit of length", limit=17,
                                                     offset=offset)]  # fmt: skip
    assert paged == order
    # a deep page past the fast path's reach ranks everything the filters pass
    monkeypatch.setattr("gloss.store.search.np.argpartition", _refuse)
    assert [r.feature_id for r in store.search(like="a unit of length", limit=5, offset=185)] == (
        order[185:190]
    )


def _without(filters: dict, key: str) -> dict:
    return {k: v for k, v in filters.items() if k != key}


def _refuse(*_args, **_kwargs):
    raise AssertionError("the fast path was taken")


def test_bad_searches_by_meaning_are_one_line_errors(store, monkeypatch):
    seed_features(store)
    with pytest.raises(InputError, match="ranked by similarity"):
        store.search(like="fruit", order="score")
    with pytest.raises(InputError, match="ranked by similarity"):
        store.search(like="fruit", after="0.5:3")
    with pytest.raises(InputError, match="needs some text"):
        store.search(like="   ")
    monkeypatch.setattr(store_vectors, "EMBED_AT_SEARCH", 3)
    with pytest.raises(InputError, match="5 current labels have no vector yet: run gloss embed"):
        store.search(like="fruit")
    assert _vector_count(store) == 0  # nothing half-done
    monkeypatch.undo()
    store.embed_labels()

    class Other:
        name = "another-embedder"

        def vectors(self, texts):
            return np.ones((len(texts), 384), dtype=np.float32) / np.sqrt(384)

    store.encoder = Other()
    with pytest.raises(InputError, match="embedded by all-MiniLM-L6-v2, not another-embedder"):
        store.search(like="fruit")
    assert store.drop_label_vectors() == 5 and store.embed_labels() == 5
    assert store.search(like="fruit", limit=1)[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_a_vector_for_a_label_that_changed_meanwhile_is_not_stored(store):
    seeded = seed_features(store)
    stale = store.labels_without_vector()
    store.review(seeded.feature_ids[0], "edit", "ana", text="pears")
    written = store_vectors.put_vectors(store, stale)
    assert written == 4  # every label but the one edited while it was being embedded
    assert [text for _, text in store.labels_without_vector()] == ["pears"]


def test_an_empty_store_finds_nothing(store):
    assert store.search(like="fruit") == [] and store.count(like="fruit") == 0


def test_the_numpy_embedder_equals_transformers_bert_with_mean_pooling():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from gloss.store.embedder import MAX_TOKENS, builtin_minilm, embedder

    texts = [
        "units of measurement",
        "unit conversions between miles and kilometers",
        "a",
        "word " * 400,  # cut at MAX_TOKENS, like the reference
        "Ünïcode — dashes, 'quotes' and -3.5e2",
    ]
    tokenizer = AutoTokenizer.from_pretrained(builtin_minilm())
    model = AutoModel.from_pretrained(builtin_minilm()).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                          return_tensors="pt")  # fmt: skip
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    mine = embedder("minilm").vectors(texts)
    assert mine.dtype == np.float32 and mine.shape == (5, 384)
    assert np.abs(mine - reference.numpy()).max() < 1e-5
    assert embedder("minilm").vectors([]).shape == (0, 384)


def test_cli_search_like_and_embed(db_url, capsys):
    import json

    from gloss.pipeline.cli import main

    with open_store(db_url) as store:
        seed_features(store)
    assert main(["--database", db_url, "embed"]) == 0
    assert "embedded 5 labels with all-MiniLM-L6-v2" in capsys.readouterr().out
    assert main(["--database", db_url, "search", "--like", "units of measurement", "--json",
                 "--limit", "2"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in rows] == [1, 5] and rows[0]["similarity"] > rows[1]["similarity"]
    assert main(["--database", db_url, "search", "--like", "units of measurement",
                 "--min-score", "0.3", "--offset", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["like", "id"]
    assert "apples" in out and "kilometers" not in out and "2 of 3 shown" in out
    assert main(["--database", db_url, "embed", "--again"]) == 0
    assert "embedded 5 labels" in capsys.readouterr().out
    assert main(["--database", db_url, "search", "--like", "x", "--order", "score"]) == 2
    assert "ranked by similarity" in capsys.readouterr().err


def test_sqlite_looks_the_candidate_labels_up_by_id(sqlite_store):
    """Without statistics SQLite would rather walk the status index over every current
    label than look up the best candidates by id: 50x slower at 100,000 labels."""
    seed_features(sqlite_store)
    stmt = sqlite_store._feature_rows([], ids=list(range(1, 201)))  # 4 pages: 200
    with sqlite_store.session() as s:
        sql = str(stmt.compile(s.bind, compile_kwargs={"literal_binds": True}))
        plan = [row[3] for row in s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert any("explanations USING INTEGER PRIMARY KEY" in step for step in plan), plan
