"""Each scorer on windows built by hand, against the scripted endpoint (exact values) and,
for embedding, the real MiniLM."""

from __future__ import annotations

import asyncio
import math

import pytest

from gloss.pipeline.llm import LLMClient
from gloss.pipeline.scorers import Outcome, Windows, make_scorers
from gloss.pipeline.scorers.base import window_text
from gloss.pipeline.scoring import auc, balanced_accuracy
from gloss.pipeline.settings import ScoringConfig, SimulatorConfig
from gloss.store import ExampleOut, LLMError
from tests.scripted_llm import Fault, ScriptedLLM

_ids = iter(range(1, 10_000))


def window(words: str, acts: list[float], kind: str | None = None) -> ExampleOut:
    tokens = words.split()
    assert len(tokens) == len(acts)
    peak = max(acts)
    kind = kind or ("top" if peak > 0 else "silent")
    return ExampleOut(
        next(_ids), "holdout", kind, 0, peak, "doc", 0, tokens, [0] * len(tokens), acts
    )


CAT = "the word 'cat'"


def run(llm: ScriptedLLM | None, method: str, label: str | None, windows: list[ExampleOut],
        **config) -> Outcome:  # fmt: skip
    async def go() -> Outcome:
        endpoint = llm.config().simulator if llm else None
        client = LLMClient(endpoint, role="simulator") if endpoint else None
        try:
            (scorer,) = make_scorers((method,), _config(method, **config), endpoint, client)
            return await scorer.score(label, Windows(windows), seed=7)
        finally:
            if client is not None:
                await client.close()

    return asyncio.run(go())


def _config(method: str, **kwargs) -> ScoringConfig:
    primary = "simulation" if method == "intruder" else method
    methods = (method, "simulation") if method == "intruder" else (method,)
    return ScoringConfig(methods=methods, primary=primary, **kwargs)


# ---------------------------------------------------------------- the numbers


def test_balanced_accuracy_and_auc_by_hand():
    truth = [True, True, True, False, False]
    assert balanced_accuracy(truth, [True, True, False, False, True]) == (
        pytest.approx((2 / 3 + 1 / 2) / 2),
        None,
    )
    value, reason = balanced_accuracy([True, True], [True, False])
    assert value is None and "both classes" in reason
    # 6 pairs: 0.9 beats both, 0.5 ties one and beats one, 0.1 loses both -> 3.5 / 6
    assert auc([True, True, True, False, False], [0.9, 0.5, 0.1, 0.5, 0.2]) == (
        pytest.approx(3.5 / 6),
        None,
    )
    with pytest.raises(ValueError, match="finite"):
        auc([True, False], [math.nan, 0.1])


def test_windows_split_active_from_silent_and_text_marks_tokens():
    active, silent = window("a cat here", [0, 2, 0]), window("the train left", [0, 0, 0])
    windows = Windows([active, silent])
    assert windows.active == [active] and windows.silent == [silent]
    assert window_text(active.tokens, [False, True, False]) == "a <<cat>> here"
    assert window_text(["a", "<<x>>", "b"], [False, False, True]) == "a ‹‹x›› <<b>>"


# ---------------------------------------------------------------- simulation


def test_simulation_right_and_wrong_labels_exact():
    windows = [window("a cat here", [0, 2, 0]), window("the train left", [0, 0, 0], "random")]

    async def go(label: str, **fault) -> Outcome:
        endpoint = llm.config().simulator
        client = LLMClient(endpoint, role="simulator")
        try:
            (scorer,) = make_scorers(("simulation",), ScoringConfig(), endpoint, client,
                                     SimulatorConfig(method="integers"))  # fmt: skip
            return await scorer.score(label, Windows(windows), seed=0)
        finally:
            await client.close()

    with ScriptedLLM() as llm:
        # predicted 10 exactly where 'cat' is: pooled over both windows, r = 1
        right = asyncio.run(go("the token 'cat'"))
        assert right.value == pytest.approx(1.0) and right.calls == 1
        assert right.details["top_only"] == pytest.approx(1.0)
        # predicted 10 on 'train' only: true (0,2,0,0,0,0) vs (0,0,0,0,10,0) -> r = -0.2
        wrong = asyncio.run(go("the token 'train'"))
        assert wrong.value == pytest.approx(-0.2)
        # a label that predicts nothing is undefined, with its reason: never 0 or NaN
        nothing = asyncio.run(go("the token 'zebra'"))
        assert nothing.value is None and "predicted activations are constant" in nothing.details[
            "reason"]  # fmt: skip
        llm.faults.append(Fault(body=_plain("not json")))
        with pytest.raises(LLMError):
            asyncio.run(go("the token 'owl'"))
        windows[:] = [window("the train left", [0, 0, 0], "silent")]
        assert asyncio.run(go("the token 'cat'")).value is None  # no top or random windows


# ---------------------------------------------------------------- detection


DETECTION = [
    window("a cat here", [0, 2, 0]),
    window("my cat ran", [0, 1, 0]),
    window("one dog barked", [0, 0.5, 0]),  # active, but without the labeled word
    window("the train left", [0, 0, 0]),
    window("the cat slept", [0, 0, 0]),  # silent, but with it
    window("blue sky", [0, 0]),
]


def test_detection_right_and_wrong_labels_exact():
    with ScriptedLLM() as llm:
        right = run(llm, "detection", CAT, DETECTION, windows_per_call=4)
        # said 1 on both 'cat' actives and on the silent 'cat': TPR 2/3, TNR 2/3
        assert right.value == pytest.approx(2 / 3)
        # P(1) 0.8 where it said 1, 0.3 where 0: actives .8 .8 .3 vs silents .3 .8 .3
        # -> (2.5 + 2.5 + 1) / 9
        assert right.details["auc"] == pytest.approx(6 / 9)
        assert right.calls == 2 and len(llm.requests) == 2  # 6 windows, 4 per call
        assert right.tokens_in > 0
        said = {e["window_id"]: e["said"] for e in right.details["examples"]}
        assert [said[w.window_id] for w in DETECTION] == [1, 1, 0, 0, 1, 0]
        wrong = run(llm, "detection", "the word 'train'", DETECTION, windows_per_call=4)
        assert wrong.value == pytest.approx((0 + 2 / 3) / 2)
        # P(1): actives .3 .3 .3 vs silents .8 .3 .3: each active ties two, loses one
        assert wrong.details["auc"] == pytest.approx(3 / 9)


def test_detection_without_logprobs_reports_no_auc_and_garbage_is_a_failure():
    with ScriptedLLM() as llm:
        llm.faults.append(Fault(body=_plain(" [1,1,0,0,1,0]")))
        outcome = run(llm, "detection", CAT, DETECTION, windows_per_call=6)
        assert outcome.value == pytest.approx(2 / 3) and outcome.details["auc"] is None
        assert "no logprobs" in outcome.details["auc_reason"]
        for garbage in (" maybe", " [1,0]", " [1,1,0,0,1,2]", ' ["1",1,0,0,1,0]'):
            llm.faults.append(Fault(body=_plain(garbage)))
            with pytest.raises(LLMError):
                run(llm, "detection", "the word 'x'", DETECTION, windows_per_call=6)


def test_detection_with_too_few_windows_is_undefined_not_a_guess():
    with ScriptedLLM() as llm:
        outcome = run(llm, "detection", CAT, DETECTION[:3])
        assert outcome.value is None and "active and silent" in outcome.details["reason"]
        assert llm.requests == []


# ---------------------------------------------------------------- fuzzing


FUZZ = [
    window("a cat here", [0, 2, 0]),
    window("my cat ran", [0, 1, 0]),
    window("the cat and dog", [0, 3, 0, 0]),
    window("big cat now", [0, 1, 0]),
    window("the train left", [0, 0, 0]),  # silent: not shown
]


def test_fuzzing_right_label_tells_true_marks_from_random_ones():
    with ScriptedLLM() as llm:
        right = run(llm, "fuzzing", CAT, FUZZ, windows_per_call=10)
        assert right.value == 1.0 and right.calls == 1
        examples = right.details["examples"]
        assert len(examples) == 4 and sum(e["marks_right"] for e in examples) == 2
        shown = llm.requests[0]["prompt"].rsplit("<start>", 1)[-1]
        assert shown.count("<<") == 4 and shown.count("<<cat>>") == 2  # random marks miss it
        # a label about nothing there: it says 0 to every marking, chance
        assert run(llm, "fuzzing", "the word 'zebra'", FUZZ).value == 0.5
        llm.faults.append(Fault(body=_plain(" [1,0,1]")))
        with pytest.raises(LLMError, match="3 values for 4"):
            run(llm, "fuzzing", "the word 'y'", FUZZ)
        assert run(llm, "fuzzing", CAT, FUZZ[:1]).value is None


# ---------------------------------------------------------------- intruder


INTRUDER = [
    window("a cat here", [0, 2, 0]),
    window("my cat ran", [0, 1, 0]),
    window("big cat now", [0, 1, 0]),
    window("the cat sat", [0, 1, 0]),
    window("the train left", [0, 0, 0]),
]


def test_intruder_finds_the_silent_window_and_needs_no_label():
    with ScriptedLLM() as llm:
        outcome = run(llm, "intruder", None, INTRUDER, intruder_shown=3, intruder_trials=3)
        assert outcome.value == 1.0 and outcome.calls == 1
        assert outcome.details["chance"] == 0.25
        trials = outcome.details["trials"]
        silent = INTRUDER[-1].window_id
        assert all(t["window_ids"][t["intruder"] - 1] == silent for t in trials)
        assert "Explanation" not in llm.requests[0]["prompt"].split("<start>", 2)[-1]
        # an answer naming the wrong examples scores what it got right: here none
        wrong = [1 if t["intruder"] != 1 else 2 for t in trials]
        llm.faults.append(Fault(body=_plain(" " + str(wrong).replace(" ", ""))))
        outcome = run(llm, "intruder", None, INTRUDER[:4] + [window("x y z", [0, 0, 0])],
                      intruder_shown=3, intruder_trials=3)  # fmt: skip
        assert outcome.value == 0.0
        llm.faults.append(Fault(body=_plain(" [9,1,1]")))
        with pytest.raises(LLMError, match="not one of"):
            run(llm, "intruder", None, INTRUDER[:4] + [window("q r s", [0, 0, 0])],
                intruder_shown=3, intruder_trials=3)  # fmt: skip
        assert (
            run(llm, "intruder", None, INTRUDER[:2] + INTRUDER[-1:], intruder_shown=3).value is None
        )


# ---------------------------------------------------------------- embedding, real MiniLM


@pytest.mark.slow
def test_embedding_on_minilm_ranks_the_own_label_over_another():
    windows = [
        window("the cat purred on the sofa", [0, 2, 0, 0, 0, 0]),
        window("a kitten chased the cat", [0, 1, 0, 0, 2]),
        window("my cat sleeps all day", [0, 3, 0, 0, 0]),
        window("the bank raised interest rates", [0, 0, 0, 0, 0]),
        window("stock prices fell sharply today", [0, 0, 0, 0, 0]),
        window("the committee approved the budget", [0, 0, 0, 0, 0]),
    ]
    own = run(None, "embedding", "cats and kittens", windows)
    other = run(None, "embedding", "interest rates and stock markets", windows)
    assert own.value == 1.0 and other.value < 0.5  # the finance label prefers finance windows
    assert own.calls == 0 and own.details["n_active"] == 3
    sims = [e["similarity"] for e in own.details["examples"]]
    assert all(-1 <= s <= 1 for s in sims)


def _plain(text: str) -> dict:
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3},
    }
