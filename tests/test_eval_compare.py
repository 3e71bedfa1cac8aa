"""gloss eval, two prompts: their labels of the same features compete on the same windows,
on the real MiniLM embedder (no LLM) and the scripted endpoint's detection judge."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from gloss.pipeline.evaluate import bootstrap_ci, compare_prompts, compare_verdict
from gloss.pipeline.settings import ScoringConfig
from gloss.store import InputError, PromptRef, open_store
from tests.mined import token_features

INPUT = PromptRef("explain-v1", "1", "a" * 64)
OUTPUT = PromptRef("explain-output", "1", "b" * 64)
PROMPTS = (INPUT.name, OUTPUT.name)
WORDS = ["cat", "dog", "fox", "owl", "pizza", "guitar", "rocket", "doctor"]
UNRELATED = [
    "interest rates and stock markets",
    "legal contracts and court rulings",
    "tax returns and accounting",
    "chemical reactions in a laboratory",
    "election campaigns and voting",
    "software licenses and compliance",
    "weather forecasts and rainfall",
    "grammar of subordinate clauses",
]
EMBEDDING = ScoringConfig(methods=("embedding",), primary="embedding")


def _label(store, feature_id: int, text: str, prompt: PromptRef, **kwargs) -> int:
    return store.add_explanation(feature_id, text, author_kind="model", author_name="explainer",
                                 model="m", prompt=prompt, **kwargs)  # fmt: skip


def _features(store, extra: tuple[str, ...] = ()) -> list[int]:
    _, ids = token_features(store, [*WORDS, *extra], holdout_top=4, random_windows=4)
    return ids


def test_bootstrap_interval_and_verdicts():
    low, high = bootstrap_ci([0.3, 0.4, 0.5, 0.35], random.Random(0))
    assert 0.3 <= low < high <= 0.5
    assert bootstrap_ci([0.0, 0.0, 0.0], random.Random(0)) == [0.0, 0.0]
    assert compare_verdict([0.1, 0.3], 8).startswith("B better")
    assert compare_verdict([-0.3, -0.1], 8).startswith("A better")
    assert compare_verdict([-0.1, 0.3], 8) == "no difference detectable on 8 features"
    assert compare_verdict(None, 1).startswith("undefined")


@pytest.mark.slow
def test_labels_that_say_what_fires_beat_unrelated_ones(sqlite_url):
    with open_store(sqlite_url) as store:
        ids = _features(store, ("elk", "bee"))
        for i, (feature_id, word) in enumerate(zip(ids, WORDS, strict=False)):
            _label(store, feature_id, UNRELATED[i], INPUT)
            if i == 0:  # relabeled: the newest label of a prompt competes
                _label(store, feature_id, UNRELATED[1], OUTPUT)
            _label(store, feature_id, f"the word {word}", OUTPUT)
            if i == 1:  # a newer label someone rejected does not
                _label(store, feature_id, UNRELATED[2], OUTPUT, status="rejected")
        _label(store, ids[8], "elk", INPUT)  # only one prompt's label: left out
        _label(store, ids[9], "bee", OUTPUT)
        runs = len(store.runs())
        methods = ScoringConfig(methods=("embedding", "intruder"), primary="embedding")
        report = compare_prompts(store, ids, PROMPTS, scoring=methods, seeds=[0, 1])
        assert report.features == 8 and report.prompts == list(PROMPTS)
        assert report.left_out == {"only A": 1, "only B": 1}
        assert report.skipped == ["intruder"]  # judges the feature: no LLM started for it
        (r,) = report.results
        assert r.method == "embedding" and r.features == r.paired == 8
        assert r.b > r.a and r.difference == pytest.approx(r.b - r.a)
        assert r.ci[0] > 0 and r.verdict == "B better: the interval excludes 0 (8 features)"
        assert r.win_rate > 0.8 and r.calls_per_feature == 0 and r.undefined == r.failed == 0
        text = "\n".join(report.lines())
        assert "A = explain-v1, B = explain-output" in text and "2 with only one" in text
        assert "B better" in text and "intruder" in text
        # The run holds the table; nothing was stored as a score.
        (run,) = store.runs()[: len(store.runs()) - runs]
        assert run.kind == "eval" and run.status == "done"
        assert run.counts["compare"]["results"][0]["verdict"] == r.verdict
        assert all(not e.scores for f in ids for e in store.explanations(f))
        # The other way round: A better, the same difference negated; --limit counts pairs.
        swapped = compare_prompts(store, ids, PROMPTS[::-1], scoring=EMBEDDING, seeds=[0])
        (s,) = swapped.results
        assert s.verdict.startswith("A better") and s.difference == pytest.approx(-r.difference)
        assert compare_prompts(store, ids, PROMPTS, scoring=EMBEDDING, limit=3).features == 3


@pytest.mark.slow
def test_a_method_that_cannot_tell_is_reported_not_dropped(sqlite_url):
    with open_store(sqlite_url) as store:
        ids = _features(store)[:5]
        for feature_id, word in zip(ids, WORDS, strict=False):
            _label(store, feature_id, f"the word {word}", INPUT)
            _label(store, feature_id, f"the word {word}", OUTPUT)
        report = compare_prompts(store, ids, PROMPTS, scoring=EMBEDDING, seeds=[0, 1])
        (r,) = report.results
        assert r.a == r.b and r.difference == 0.0 and r.ci == [0.0, 0.0]
        assert r.win_rate == 0.5 and r.verdict == "no difference detectable on 5 features"
        assert "no difference detectable on 5 features" in report.lines()[-1]


def test_too_few_features_with_both_labels_is_a_one_line_error(sqlite_url):
    with open_store(sqlite_url) as store:
        _, ids = token_features(store, ["cat", "dog", "fox"])
        _label(store, ids[0], "cats", INPUT)
        _label(store, ids[0], "cats, then meows", OUTPUT)
        _label(store, ids[1], "dogs", INPUT)  # no output-aware label
        _label(store, ids[2], "foxes", OUTPUT, status="rejected")
        with pytest.raises(InputError) as error:
            compare_prompts(store, ids, PROMPTS, scoring=EMBEDDING)
        message = str(error.value)
        assert "\n" not in message and "found 1" in message
        assert "'explain-v1'" in message and "'explain-output'" in message
        assert "gloss explain --style output --relabel" in message
        with pytest.raises(InputError, match="two different prompt names"):
            compare_prompts(store, ids, (INPUT.name, INPUT.name), scoring=EMBEDDING)
        _label(store, ids[1], "dogs, then barks", OUTPUT)
        intruder = ScoringConfig(methods=("intruder",))
        with pytest.raises(InputError, match="needs a scorer that judges labels"):
            compare_prompts(store, ids, PROMPTS, scoring=intruder)


@pytest.mark.slow
def test_an_llm_judge_compares_both_labels_on_the_same_windows(sqlite_url, server):
    with open_store(sqlite_url) as store:
        ids = _features(store)[:4]
        for feature_id, word in zip(ids, WORDS, strict=False):
            _label(store, feature_id, "the token 'elk'", INPUT)  # in no window: says 0 to all
            _label(store, feature_id, f"the token '{word}'", OUTPUT)
        detection = ScoringConfig(methods=("detection",), primary="detection")
        report = compare_prompts(store, ids, PROMPTS, server.config(), scoring=detection,
                                 seeds=[0])  # fmt: skip
        (r,) = report.results
        assert (r.a, r.b, r.ci) == (0.5, 1.0, [0.5, 0.5]) and r.verdict.startswith("B better")
        assert r.calls_per_feature > 0 and r.tokens_per_feature > 0 and r.failed == 0
        # One call per label, and a feature's two calls show the same windows in the same
        # order: the prompts differ only in the label.
        prompts = [b["prompt"] for b in server.requests if b["kind"] == "detect"]
        shown = Counter(re.sub(r"Explanation: [^\n]*", "", p) for p in prompts)
        assert len(prompts) == 2 * len(ids) and sorted(shown.values()) == [2] * len(ids)
