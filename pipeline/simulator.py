"""The simulator: predict a feature's activations from its label, all windows in one call.

Two methods, both "all at once" (one request covers every held-out window):

- `logprobs` (OpenAI's method; needs a completions endpoint with echo + logprobs, e.g.
  llama.cpp, vLLM): every token is listed as `token<TAB>unknown`; the endpoint echoes the
  prompt with the top log-probabilities at each position, and a token's prediction is
  the expected value over the tokens "0".."10" where "unknown" stands. One forward pass,
  no generation, so the answer can never have the wrong number of predictions.
- `integers` (any chat or completions endpoint): the model answers a JSON object with one
  integer 0..10 per token per window.

A position without any digit in its distribution, missing logprobs, a logprob that is
not a number (NaN, +inf, a string), or an answer with the wrong number of predictions
raises `UnusableAnswer`: never a silent zero, and never a NaN that a score would hide.
Tokenizers that split numbers into digits cannot produce a single "10" token; for them
the prediction is the expected value over "0".."9".
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from gloss.pipeline.llm import Answer, LLMClient, UnusableAnswer, answer_text
from gloss.pipeline.prompts import Prompt, neutralize
from gloss.pipeline.settings import SimulatorConfig

PLACEHOLDER = "unknown"
_DIGITS = {str(i): i for i in range(11)}


def render_logprobs_windows(windows: Sequence[Sequence[str]]) -> str:
    blocks = []
    for tokens in windows:
        lines = "".join(f"{neutralize(t)}\t{PLACEHOLDER}\n" for t in tokens)
        blocks.append(f"<start>\n{lines}<end>")
    return "\n".join(blocks) + "\n"


def render_integer_windows(windows: Sequence[Sequence[str]]) -> str:
    blocks = []
    for number, tokens in enumerate(windows, 1):
        lines = "".join(f"{i}\t{neutralize(t)}\n" for i, t in enumerate(tokens, 1))
        blocks.append(f"Document {number} ({len(tokens)} tokens):\n<start>\n{lines}<end>")
    return "\n\n".join(blocks)


def _placeholder_indices(tokens: Sequence[str]) -> list[int]:
    """The index of the echoed token where each `unknown` placeholder's value starts."""
    starts, text = [], ""
    for token in tokens:
        starts.append(len(text))
        text += token
    positions = [m.start() + 1 for m in re.finditer("\t" + PLACEHOLDER, text)]
    return [bisect.bisect_right(starts, p) - 1 for p in positions]


def compact_echo(response: dict[str, Any]) -> dict[str, Any]:
    """The echo response with logprobs kept only where predictions are read (for the cache)."""
    choice = dict(response["choices"][0])
    logprobs = dict(choice["logprobs"])
    keep = set(_placeholder_indices(logprobs["tokens"]))
    logprobs["top_logprobs"] = [
        top if i in keep else None for i, top in enumerate(logprobs["top_logprobs"])
    ]
    logprobs.pop("token_logprobs", None)
    logprobs.pop("text_offset", None)
    choice["logprobs"] = logprobs
    return {**response, "choices": [choice]}


def expected_values_from_echo(
    response: dict[str, Any], lengths: Sequence[int]
) -> list[list[float]]:
    """Read one expected activation per `unknown` placeholder from an echoed prompt."""
    choice = response["choices"][0]
    logprobs = choice.get("logprobs")
    if not logprobs or not logprobs.get("tokens") or logprobs.get("top_logprobs") is None:
        raise UnusableAnswer(
            "the endpoint returned no logprobs for the echoed prompt; use a completions "
            "endpoint with echo + logprobs (llama.cpp, vLLM) or simulator method 'integers'"
        )
    tokens, tops = logprobs["tokens"], logprobs["top_logprobs"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise UnusableAnswer("the echoed logprobs' tokens are not a list of strings")
    if not isinstance(tops, list):
        raise UnusableAnswer("the echoed logprobs' top_logprobs is not a list")
    indices = _placeholder_indices(tokens)
    expected = sum(lengths)
    if len(indices) != expected:
        raise UnusableAnswer(
            f"the echoed prompt has {len(indices)} placeholders where {expected} were sent"
        )
    values: list[float] = []
    for n, index in enumerate(indices):
        top = tops[index] if 0 <= index < len(tops) else None
        if top is not None and not isinstance(top, dict):
            raise UnusableAnswer(f"the top logprobs at prediction {n + 1} are not an object")
        mass = [0.0] * 11
        for candidate, logprob in (top or {}).items():
            digit = _DIGITS.get(candidate.strip())
            if digit is None or logprob is None:
                continue
            if not _is_logprob(logprob):
                raise UnusableAnswer(
                    f"the logprob of {candidate!r} at prediction {n + 1} of {expected} is "
                    f"{logprob!r}, not a log-probability"
                )
            mass[digit] += math.exp(logprob)
        total = sum(mass)
        if total <= 0:
            raise UnusableAnswer(
                f"no digit among the top logprobs at prediction {n + 1} of {expected}; "
                "raise simulator top_logprobs or use method 'integers'"
            )
        values.append(sum(d * p for d, p in enumerate(mass)) / total)
    out, i = [], 0
    for length in lengths:
        out.append(values[i : i + length])
        i += length
    return out


def _is_logprob(value: Any) -> bool:
    """A number in [-inf, 0]: -inf is probability 0; NaN, +inf and positive values
    (beyond rounding) are no probability at all."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isnan(value)
        and value <= 1e-6
    )


def integers_grammar(lengths: Sequence[int]) -> str:
    """A llama.cpp GBNF grammar that admits only the JSON answer with these window lengths.

    Compact JSON, as the prompt's example shows: a space after each comma would be a
    token of its own, and under a grammar every token costs (41% slower on Gemma 270M).
    """
    rules = [
        'root ::= "{" ' + ' "," '.join(f"doc{n}" for n in range(1, len(lengths) + 1)) + ' "}"',
        'v ::= "10" | [0-9]',
    ]
    for n, length in enumerate(lengths, 1):
        values = ' "," '.join(["v"] * length)
        rules.append(f'doc{n} ::= "\\"{n}\\":[" {values} "]"')
    return "\n".join(rules) + "\n"


def integers_from_answer(text: str, lengths: Sequence[int]) -> list[list[float]]:
    """Parse the JSON answer of the integers method, checking every window's length."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise UnusableAnswer(f"the simulator answer has no JSON object: {text[:300]!r}")
    try:
        data = json.loads(text[start : end + 1])
    except ValueError:
        raise UnusableAnswer(f"the simulator answer is not valid JSON: {text[:300]!r}") from None
    if isinstance(data, list):
        data = {str(i): v for i, v in enumerate(data, 1)}
    if not isinstance(data, dict):
        raise UnusableAnswer("the simulator answer is not a JSON object")
    out = []
    for number, length in enumerate(lengths, 1):
        values = data.get(str(number))
        if not isinstance(values, list):
            raise UnusableAnswer(f"the simulator answer has no list for document {number}")
        if len(values) != length:
            raise UnusableAnswer(
                f"the simulator predicted {len(values)} activations for document {number}, "
                f"which has {length} tokens"
            )
        row = []
        for value in values:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise UnusableAnswer(f"non-numeric prediction {value!r} in document {number}")
            row.append(float(min(10, max(0, value))))
        out.append(row)
    return out


async def simulate(
    client: LLMClient,
    explanation: str,
    windows: Sequence[Sequence[str]],
    config: SimulatorConfig,
    template: Prompt | None = None,
) -> tuple[list[list[float]], Answer]:
    """Predicted activations (0..10) for every token of every window, in one call."""
    config = config.for_endpoint(client.endpoint)
    template = template or config.template()
    lengths = [len(w) for w in windows]
    label = neutralize(explanation.strip().rstrip("."))
    if config.method == "logprobs":
        prompt = template.render(explanation=label, windows=render_logprobs_windows(windows))
        answer = await client.complete(
            prompt,
            lambda response: expected_values_from_echo(response, lengths),
            compact=compact_echo,
            max_tokens=1,
            temperature=0,
            echo=True,
            logprobs=config.top_logprobs,
        )
    else:
        prompt = template.render(explanation=label, windows=render_integer_windows(windows))
        extra = {"grammar": integers_grammar(lengths)} if client.endpoint.grammar else {}
        answer = await client.complete(
            prompt,
            lambda response: integers_from_answer(answer_text(response), lengths),
            max_tokens=config.max_answer_tokens or 4 * sum(lengths) + 8 * len(lengths) + 16,
            temperature=0,
            **extra,
        )
    return answer.value, answer
