"""gloss eval: own labels against shuffled ones, per scorer, on the scripted endpoint and
the real MiniLM embedder."""

from __future__ import annotations

import json
import random

import pytest

from gloss.pipeline.cli import main
from gloss.pipeline.evaluate import derangement, evaluate, verdict
from gloss.pipeline.explainers.baseline import baseline_explain
from gloss.pipeline.labeling import explain_features
from gloss.pipeline.settings import ScoringConfig
from gloss.store import InputError, open_store
from tests.mined import token_features

WORDS = ["cat", "dog", "fox", "owl"]
ALL = ("simulation", "detection", "fuzzing", "embedding", "intruder")


def test_derangement_moves_every_label_and_verdicts_follow_the_aucs():
    for seed in range(20):
        order = derangement(5, random.Random(seed))
        assert sorted(order) == list(range(5)) and all(order[i] != i for i in range(5))
    assert verdict([0.9, 0.8]).startswith("tells")
    assert verdict([0.9, 0.5]).startswith("CANNOT")
    assert verdict([0.58, 0.7]).startswith("weak")
    assert verdict([None, 0.9]).startswith("undefined")


@pytest.mark.slow
def test_eval_reports_every_scorer_and_never_hides_one_that_cannot_tell(sqlite_url, server):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, WORDS)
        explain_features(store, ids, server.config(), scoring=ScoringConfig())
        runs = len(store.runs())
        server.themes = set(WORDS)
        scoring = ScoringConfig(methods=ALL, intruder_shown=2, intruder_trials=2)
        report = evaluate(store, ids, server.config(), scoring=scoring, seeds=[0, 1])
        by = {r.method: r for r in report.results}
        assert list(by) == list(ALL) and report.features == 4
        # The scripted judge reads labels perfectly: own labels win every comparison.
        for method in ("simulation", "detection", "fuzzing"):
            assert by[method].aucs == [1.0, 1.0] and by[method].spread == 0.0, method
            assert by[method].verdict.startswith("tells")
            assert by[method].calls_per_feature > 0 and by[method].tokens_per_feature > 0
        assert by["simulation"].own > 0.9 and by["simulation"].shuffled is None  # all undefined
        assert by["detection"].shuffled == pytest.approx(0.5)  # says 0 to every window
        assert by["embedding"].calls_per_feature == 0
        assert by["intruder"].own == 1.0 and by["intruder"].chance == pytest.approx(1 / 3)
        assert "above chance (0.333 + 0.236 over 16 trials)" in by["intruder"].verdict
        # Nothing was stored as a score; the evaluation is a run with its table.
        for feature_id in ids:
            card = store.feature_card(feature_id)
            assert {s.method for s in card.current.scores} == {"simulation"}
            assert card.feature_scores == []
        (run,) = store.runs()[: len(store.runs()) - runs]
        assert run.kind == "eval" and run.status == "done"
        assert [r["method"] for r in run.counts["report"]["results"]] == list(ALL)
        # A judge that says 1 to everything cannot tell labels apart, and says so.
        server.label_override = None
        original = server.answer

        def always_yes(path, body):
            status, text, headers, delay = original(path, body)
            if "whether the feature is active in it" in body.get("prompt", ""):
                payload = json.loads(text)
                n = len(json.loads(payload["choices"][0]["text"]))
                payload["choices"][0]["text"] = " [" + ",".join(["1"] * n) + "]"
                payload["choices"][0]["logprobs"] = None
                text = json.dumps(payload)
            return status, text, headers, delay

        server.answer = always_yes
        blind = evaluate(store, ids, server.config(), seeds=[2, 3],
                         scoring=ScoringConfig(methods=("detection",), primary="detection"))  # fmt: skip
        (result,) = blind.results
        assert result.aucs == [0.5, 0.5] and result.verdict.startswith("CANNOT")
        with pytest.raises(InputError, match="2 or more features with a label"):
            evaluate(store, ids[:1], server.config(), scoring=scoring)


@pytest.mark.slow
def test_gloss_eval_prints_the_table(sqlite_url, server, capsys):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, [*WORDS, "elk"])
        explain_features(store, ids[:4], server.config(), scoring=ScoringConfig())
        baseline_explain(store, ids[4:])  # the fifth has only its baseline label
    args = ["--db", sqlite_url, "eval", "--methods", "embedding", "--seeds", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "embedding" in out and "AUC s0" in out and "4 features" in out
    assert main([*args, "--baseline"]) == 0 and "5 features" in capsys.readouterr().out
    assert main([*args, "--limit", "2"]) == 0 and "2 features" in capsys.readouterr().out
    assert main(["--db", sqlite_url, "eval", "--methods", "embedding", "--seeds", "x"]) == 2
    assert "--seeds 'x'" in capsys.readouterr().err
