"""Answers the endpoint gives but gloss cannot use: NaN and infinities, valid JSON of the
wrong shape, huge answers, labels with control characters (issue 11, items 4, 8 and 14).

Each one must end as a recorded failure (`llm_calls` outcome "unusable", the feature's
`last_error`), never as a label or a score, and never as a crash of the whole run.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest
from sqlalchemy import select

from gloss.pipeline.explainers import parse_label
from gloss.pipeline.labeling import explain_features
from gloss.pipeline.llm import EndpointConfig, LLMClient, UnusableAnswer, answer_text
from gloss.pipeline.scoring import pearson, simulation_score
from gloss.pipeline.simulator import (
    SimulatorConfig,
    expected_values_from_echo,
    integers_from_answer,
)
from gloss.store.models import LLMCall, Score
from tests.mined import token_features
from tests.scripted_llm import Fault, ScriptedLLM

WORDS = ["cat", "bridge", "violin"]


def calls(store, outcome=None):
    with store.session() as s:
        rows = s.scalars(select(LLMCall).order_by(LLMCall.id)).all()
        return [r for r in rows if outcome is None or r.outcome == outcome]


def score_rows(store) -> int:
    with store.session() as s:
        return len(s.scalars(select(Score)).all())


def corrupt_first(server: ScriptedLLM, kind: str, change) -> None:
    """Answer the first request of `kind` with `change(answer)`: the answer the scripted
    model would give, decoded, changed, and sent as JSON text (NaN and Infinity included)."""
    original = server.answer
    done = []

    def answer(path, body):
        status, text, headers, delay = original(path, body)
        if server.requests[-1]["kind"] == kind and not done:
            done.append(path)
            data = json.loads(text)
            text = json.dumps(change(data) or data)
        return status, text, headers, delay

    server.answer = answer


def assert_one_scoring_failure(store, ids, summary) -> None:
    """Every feature got its label; exactly one got no score but a recorded failure."""
    assert summary.explained == len(ids) and summary.failed == 1
    assert summary.scored == len(ids) - 1
    failed = [f for f in ids if not store.current_explanation(f).scores]
    assert len(failed) == 1
    info = store.feature(failed[0])
    assert info.failures == 1 and info.last_error.startswith("score:")
    assert score_rows(store) == len(ids) - 1
    (unusable,) = calls(store, "unusable")
    assert unusable.role == "simulator" and unusable.response is not None


# ---------------------------------------------------------------- NaN and infinities (item 4)


def test_nan_logprob_is_a_recorded_failure_not_a_perfect_score(store, server):
    _, ids = token_features(store, WORDS)

    def nan_at_one_position(data):
        tops = data["choices"][0]["logprobs"]["top_logprobs"]
        next(t for t in tops if t)["0"] = math.nan

    corrupt_first(server, "simulate", nan_at_one_position)
    summary = explain_features(store, ids, server.config(concurrency=1))
    assert_one_scoring_failure(store, ids, summary)
    (unusable,) = calls(store, "unusable")
    assert "nan" in unusable.error and "not a log-probability" in unusable.error


def test_infinite_integer_prediction_is_a_recorded_failure(store, server):
    _, ids = token_features(store, WORDS)

    def infinity_first(data):
        message = data["choices"][0]["message"]
        message["content"] = re.sub(r"\[\d+", "[Infinity", message["content"], count=1)
        assert "Infinity" in message["content"]

    corrupt_first(server, "simulate", infinity_first)
    sim = SimulatorConfig(method="integers")
    summary = explain_features(store, ids, server.config(api="chat", concurrency=1), simulator=sim)
    assert_one_scoring_failure(store, ids, summary)
    assert "non-numeric prediction inf" in calls(store, "unusable")[0].error


def test_echo_parsing_refuses_non_finite_and_non_numeric_logprobs():
    def echo(top):
        tops = [None, None, top]
        return {"choices": [{"logprobs": {"tokens": ["x", "\t", "unknown"], "top_logprobs": tops}}]}

    for bad in (math.nan, math.inf, "-0.1", True, [0.0], 5.0):
        with pytest.raises(UnusableAnswer, match="not a log-probability"):
            expected_values_from_echo(echo({"3": -0.1, "7": bad}), [1])
    # -inf is probability 0, a legitimate logprob.
    assert expected_values_from_echo(echo({"3": -0.1, "7": -math.inf}), [1]) == [[pytest.approx(3)]]


def test_integer_parsing_refuses_infinity_and_nan():
    for bad in ("Infinity", "-Infinity", "NaN", "1e999"):
        with pytest.raises(UnusableAnswer, match="non-numeric prediction"):
            integers_from_answer(f'{{"1": [0, {bad}, 1]}}', [3])


def test_scores_refuse_non_finite_activations():
    with pytest.raises(ValueError, match="nan"):
        pearson([3, 2, 1, 0], [0, 1, 2, math.nan])
    with pytest.raises(ValueError, match="inf"):
        pearson([3, 2, 1, math.inf], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="-inf"):
        simulation_score([[0, 4, 0]], [[0, -math.inf, 0]], ["top"])
    value, reason = pearson([1e200, 0, 1], [1, 2, 3])
    assert value is None and "too large" in reason


# ---------------------------------------------------------------- wrong shapes (item 8)

EXPLAIN_SHAPES = {
    "text is a number": {"choices": [{"index": 0, "text": 123}]},
    "choices is a string": {"choices": "oops"},
    "choice is null": {"choices": [None]},
    "choice is a number": {"choices": [7]},
    "text is a list": {"choices": [{"text": ["the token 'x'"]}]},
}
CHAT_SHAPES = {
    "message is a string": {"choices": [{"message": "x"}]},
    "content is an object": {"choices": [{"message": {"content": {"text": "x"}}}]},
    "choices is an object": {"choices": {"0": {"message": {"content": "x"}}}},
}


def _explain_shape_cases():
    for name, body in EXPLAIN_SHAPES.items():
        yield pytest.param("completions", body, id=f"completions-{name}")
    for name, body in CHAT_SHAPES.items():
        yield pytest.param("chat", body, id=f"chat-{name}")


@pytest.mark.parametrize(("api", "body"), list(_explain_shape_cases()))
def test_explain_answer_of_the_wrong_shape_is_a_recorded_failure(sqlite_store, server, api, body):
    store = sqlite_store
    _, ids = token_features(store, WORDS)
    server.faults = [Fault(body=body, when="explain")]
    sim = SimulatorConfig(method="integers") if api == "chat" else None
    summary = explain_features(store, ids, server.config(api=api, concurrency=1), simulator=sim)
    assert summary.failed == 1 and summary.explained == 2 and summary.scored == 2
    unlabeled = [f for f in ids if store.current_explanation(f) is None]
    assert len(unlabeled) == 1 and store.explanations(unlabeled[0]) == []
    assert store.feature(unlabeled[0]).last_error.startswith("explain:")
    (unusable,) = calls(store, "unusable")
    assert unusable.role == "explainer" and unusable.response == body
    assert "\n" not in unusable.error


def test_json_nested_too_deep_is_a_recorded_failure(sqlite_store, server):
    _, ids = token_features(sqlite_store, WORDS)
    server.faults = [Fault(raw="[" * 100_000, when="explain")]
    summary = explain_features(sqlite_store, ids, server.config(concurrency=1))
    assert summary.failed == 1 and summary.explained == 2
    (error,) = calls(sqlite_store, "error")
    assert "malformed JSON" in error.error


def _replace(value):
    return lambda data: value


def _set_logprobs(key, make):
    def change(data):
        logprobs = data["choices"][0]["logprobs"]
        logprobs[key] = make(logprobs)

    return change


def _string_logprob(data):
    tops = data["choices"][0]["logprobs"]["top_logprobs"]
    next(t for t in tops if t)["0"] = "-0.5"


SIMULATE_SHAPES = {
    "choices is a string": _replace({"choices": "oops"}),
    "choice is null": _replace({"choices": [None]}),
    "logprobs is a string": _replace({"choices": [{"text": "x", "logprobs": "x"}]}),
    "top_logprobs is a string": _set_logprobs("top_logprobs", lambda lp: "x"),
    "top_logprobs are strings": _set_logprobs(
        "top_logprobs", lambda lp: ["x"] * len(lp["top_logprobs"])
    ),
    "tokens are numbers": _set_logprobs("tokens", lambda lp: list(range(len(lp["tokens"])))),
    "a logprob is a string": _string_logprob,
}


@pytest.mark.parametrize("change", SIMULATE_SHAPES.values(), ids=SIMULATE_SHAPES.keys())
def test_simulation_answer_of_the_wrong_shape_is_a_recorded_failure(sqlite_store, server, change):
    store = sqlite_store
    _, ids = token_features(store, WORDS)
    corrupt_first(server, "simulate", change)
    summary = explain_features(store, ids, server.config(concurrency=1))
    assert_one_scoring_failure(store, ids, summary)


@pytest.mark.parametrize(
    "body",
    [{"choices": [{"message": "x"}]}, {"choices": [{"message": {"content": 5}}]}],
    ids=["message is a string", "content is a number"],
)
def test_integers_answer_of_the_wrong_shape_is_a_recorded_failure(sqlite_store, server, body):
    store = sqlite_store
    _, ids = token_features(store, WORDS)
    server.faults = [Fault(body=body, when="simulate")]
    sim = SimulatorConfig(method="integers")
    summary = explain_features(store, ids, server.config(api="chat", concurrency=1), simulator=sim)
    assert_one_scoring_failure(store, ids, summary)


def test_answer_text_takes_only_strings():
    assert answer_text({"choices": [{"text": " x"}]}) == " x"
    assert answer_text({"choices": [{"message": {"content": None}}]}) == ""
    for choice in ({"text": 1}, {"message": "x"}, {"message": {"content": ["x"]}}):
        with pytest.raises(UnusableAnswer, match="not a"):
            answer_text({"choices": [choice]})


# ---------------------------------------------------------------- huge answers (item 8)


def ask(store, server, prompt: str):
    """One deterministic explainer call through a client that caches in `store`."""
    endpoint = EndpointConfig(model="scripted", base_url=server.base_url, api_key="t")

    async def go():
        client = LLMClient(endpoint, role="explainer", store=store)
        try:
            return await client.complete(
                prompt, lambda r: parse_label(answer_text(r)), temperature=0
            )
        finally:
            await client.close()
            client.db.close()

    return asyncio.run(go())


def test_a_huge_answer_is_kept_as_a_stub_and_never_served_from_the_cache(sqlite_store, server):
    store = sqlite_store
    tail = "x" * 20_000_000
    server.faults = [
        Fault(body={"choices": [{"text": " " + tail}]}),
        Fault(body={"choices": [{"text": " the token 'cat'\n" + tail}]}),
    ]
    with pytest.raises(UnusableAnswer, match="too long"):
        ask(store, server, "first prompt")
    assert ask(store, server, "second prompt").value == "the token 'cat'"
    recorded = calls(store)
    assert [c.outcome for c in recorded] == ["unusable", "ok"]
    for call in recorded:
        assert call.response["truncated"] is True and call.response["chars"] > 20_000_000
        assert len(json.dumps(call.response)) < 20_000
        assert call.response["head"].startswith('{"choices": [{"text": " ')
    # The stub holds no answer: asking again goes to the endpoint instead of crashing.
    server.label_override = "the token 'dog'"
    again = ask(store, server, "second prompt")
    assert again.value == "the token 'dog'" and not again.cached
    assert len(server.requests) == 3
    assert ask(store, server, "second prompt").cached, "a normal answer is cached as before"


# ---------------------------------------------------------------- labels (item 14)


@pytest.mark.parametrize("label", ["cats \x1b]0;pwned\x07 and dogs", "cats\x00dogs", "cats \x9b2J"])
def test_a_label_with_control_characters_is_a_recorded_failure(store, server, label):
    _, ids = token_features(store, WORDS[:1])
    server.label_override = label
    summary = explain_features(store, ids, server.config())
    assert summary.failed == 1 and summary.explained == 0
    assert store.explanations(ids[0]) == []
    assert "control characters" in store.feature(ids[0]).last_error
    assert len(calls(store, "unusable")) == 1
