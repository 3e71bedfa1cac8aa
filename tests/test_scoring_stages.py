"""Every scorer through the stage runner: stored once per label (or feature), with their
calls and tokens, shown by show, export and the feature page, ranked by the primary."""

from __future__ import annotations

import json

import pytest

from gloss.pipeline.cli import main
from gloss.pipeline.labeling import explain_features, score_features
from gloss.pipeline.settings import ScoringConfig
from gloss.pipeline.terminal import format_card
from gloss.store import open_store
from tests.mined import token_features

ALL = ("simulation", "detection", "fuzzing", "embedding", "intruder")
LABEL_METHODS = ALL[:-1]


def scoring(**kwargs) -> ScoringConfig:
    return ScoringConfig(methods=ALL, intruder_shown=2, intruder_trials=2, **kwargs)


@pytest.mark.slow
def test_every_method_is_stored_once_for_every_new_label(store, server):
    _, ids = token_features(store, ["cat", "dog", "fox"])
    server.themes = {"cat", "dog", "fox"}
    summary = explain_features(store, ids, server.config(), scoring=scoring())
    assert summary.explained == 3 and summary.failed == 0
    assert summary.scores == {m: 3 for m in LABEL_METHODS}  # intruder is the score stage's
    for feature_id in ids:
        current = store.explanation(store.current_explanation(feature_id).id)
        by_method = {s.method: s for s in current.scores}
        assert set(by_method) == set(LABEL_METHODS)
        for method in ("simulation", "detection", "fuzzing"):
            sc = by_method[method]
            assert sc.value is not None and sc.value > 0.9, (method, sc.details)
            assert sc.calls >= 1 and sc.tokens_in > 0 and sc.simulator_model == "scripted"
        assert by_method["detection"].details["auc"] == pytest.approx(1.0)
        assert by_method["embedding"].calls == 0
        assert by_method["embedding"].simulator_model == "all-MiniLM-L6-v2"
        windows = {e.window_id: e.split for e in store.examples(feature_id)}
        for sc in current.scores:  # reported scores see held-out windows only
            seen = sc.details.get("window_ids") or [
                e["window_id"] for e in sc.details.get("examples", [])
            ]
            assert seen and {windows[w] for w in seen} == {"holdout"}, sc.method
    # The score stage adds what is missing (the feature measure) and nothing else.
    summary = score_features(store, ids, server.config(), scoring=scoring())
    assert summary.scores == {"intruder": 3}
    for feature_id in ids:
        (measure,) = store.feature_scores(feature_id)
        assert measure.method == "intruder" and measure.value == 1.0 and measure.calls == 1
    again = score_features(store, ids, server.config(), scoring=scoring())
    assert again.skipped == 3 and again.scores == {} and again.calls == 0


@pytest.mark.slow
def test_the_primary_method_ranks_and_every_method_is_shown(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, ["cat", "dog"])
        server.themes = {"cat", "dog"}
        explain_features(store, ids, server.config(), scoring=scoring())
        score_features(store, ids, server.config(), scoring=scoring())
        card = store.feature_card(ids[0])
        simulation = next(s.value for s in card.current.scores if s.method == "simulation")
        assert card.current.score == pytest.approx(simulation)
        # Switching the primary recomputes every label's ranking score from stored scores.
        score_features(store, ids, server.config(), scoring=scoring(primary="embedding"))
        assert store.primary_score_method() == "embedding"
        card = store.feature_card(ids[0])
        embedding = next(s.value for s in card.current.scores if s.method == "embedding")
        assert card.current.score == pytest.approx(embedding)
        assert store.search(order="score")[0].score == pytest.approx(
            max(store.feature_card(i).current.score for i in ids)
        )
        text = format_card(card, color=False)
        for method in ALL:
            assert method in text
        assert "a measure of the feature" in text
        row = next(r for r in store.export() if r["feature_id"] == ids[0])
        assert set(row["scores"]) == set(LABEL_METHODS)
        assert row["feature_scores"] == {"intruder": 1.0}
    assert main(["--db", sqlite_url, "show", str(ids[0]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {s["method"] for s in shown["current"]["scores"]} == set(LABEL_METHODS)
    assert [s["method"] for s in shown["feature_scores"]] == ["intruder"]


@pytest.mark.slow
def test_gloss_score_with_only_embedding_needs_no_llm(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, ["cat", "dog"])
        explain_features(
            store,
            ids,
            server.config(),
            scoring=ScoringConfig(),
        )
    requests = len(server.requests)
    # No endpoint given, and none needed: the bundled LLM server is not started.
    assert main(["--db", sqlite_url, "score", "--methods", "embedding"]) == 0
    assert "embedding 2" in capsys.readouterr().out
    assert len(server.requests) == requests
    with open_store(sqlite_url) as store:
        for feature_id in ids:
            methods = [s.method for s in store.explanation(
                store.current_explanation(feature_id).id).scores]  # fmt: skip
            assert sorted(methods) == ["embedding", "simulation"]
        # --methods without --primary: the first of them ranks
        assert store.primary_score_method() == "embedding"
    assert main(["--db", sqlite_url, "score", "--methods", "bogus"]) == 2
    assert "scoring methods bogus unknown" in capsys.readouterr().err
