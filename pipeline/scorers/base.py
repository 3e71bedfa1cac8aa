"""What every scorer takes and returns, and the pieces several of them share.

A scorer judges a label (or, when `judges == "feature"`, the feature itself) on one
split of a feature's windows and returns an `Outcome`: a value (None with a reason when
it is undefined), per-example details, and the LLM calls and tokens it cost. It never
writes to the store: the stage runner (`pipeline.labeling`) stores outcomes. Randomness
(the order windows are shown in, random marks, intruder sets) comes from the `seed`
the runner passes, so an answer asked again is served from the LLM cache.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gloss.pipeline.llm import Answer, LLMClient, UnusableAnswer, answer_logprobs, answer_text
from gloss.pipeline.prompts import Prompt, neutralize, spell
from gloss.pipeline.settings import EndpointConfig, ScoringConfig
from gloss.store import ExampleOut

MARK_SHARE = 0.1  # a token is marked active where it reaches this share of its window's peak


@dataclass(frozen=True)
class Windows:
    """One split of a feature's windows, as scorers see them."""

    all: list[ExampleOut]
    near_misses: bool = False  # the silent ones are near misses, not a uniform sample

    @classmethod
    def of(cls, examples: Sequence[ExampleOut], config: ScoringConfig) -> Windows:
        """A split as `config` says to score on it: with `near_misses` N > 0, only the N
        silent windows closest in meaning to the active ones (MiniLM) stay."""
        windows = cls(list(examples))
        silent = windows.silent
        if config.near_misses < 1 or len(silent) <= config.near_misses or not windows.active:
            return windows
        from gloss.store.embedder import closest

        def text(e: ExampleOut) -> str:
            return window_text(cut(e, config.max_tokens_per_window)[0])

        kept = closest([text(e) for e in windows.active], [text(e) for e in silent],
                       config.near_misses, config.embedding_model)  # fmt: skip
        dropped = {silent[i].window_id for i in range(len(silent)) if i not in kept}
        return cls([e for e in examples if e.window_id not in dropped], near_misses=True)

    @property
    def active(self) -> list[ExampleOut]:
        return [e for e in self.all if e.max_act > 0]

    @property
    def silent(self) -> list[ExampleOut]:
        return [e for e in self.all if e.max_act <= 0]


@dataclass
class Outcome:
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    calls: int = 0  # LLM calls made (answers served from the cache count 0)
    tokens_in: int = 0
    tokens_out: int = 0
    call_ids: list[int] = field(default_factory=list)

    @classmethod
    def undefined(cls, reason: str, **details: Any) -> Outcome:
        return cls(None, {"reason": reason, **details})

    def count(self, answer: Answer) -> None:
        if not answer.cached:
            self.calls += 1
        self.tokens_in += answer.tokens_in
        self.tokens_out += answer.tokens_out
        if answer.call_id is not None:
            self.call_ids.append(answer.call_id)


class Scorer:
    """A scorer: `method` names it in `scores`; `model` and `prompt` key its scores."""

    method: ClassVar[str]
    judges: ClassVar[str] = "label"  # or "feature": no label, stored in feature_scores
    split: ClassVar[str] = "holdout"

    def __init__(
        self,
        config: ScoringConfig,
        endpoint: EndpointConfig | None,
        client: LLMClient | None = None,
    ):
        """`endpoint` keys the scores (its model); `client` makes the calls. Without a
        client a scorer can say what it owes (`pipeline.labeling.pending_scores`) but
        not score."""
        self.config = config
        self.endpoint = endpoint
        self.client = client
        self.prompt: Prompt | None = None

    @property
    def model(self) -> str | None:
        return self.endpoint.model if self.endpoint is not None else None

    @property
    def grammar(self) -> bool:
        """The endpoint takes llama.cpp grammars (the bundled one): answers are constrained."""
        return self.endpoint is not None and self.endpoint.grammar

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        raise NotImplementedError

    async def ask(
        self, outcome: Outcome, prompt: str, parse: Callable[[dict[str, Any]], Any], **params: Any
    ) -> Any:
        """One deterministic LLM call, counted in `outcome`; LLMError when it fails."""
        if self.client is None:
            raise RuntimeError(f"the {self.method} scorer was made without an LLM client")
        answer = await self.client.complete(prompt, parse, temperature=0, **params)
        outcome.count(answer)
        return answer.value


# ---------------------------------------------------------------- windows as text


def cut(example: ExampleOut, limit: int) -> tuple[list[str], list[float]]:
    """The window, cut to `limit` tokens around its peak."""
    tokens, acts = list(example.tokens), list(example.acts)
    if len(tokens) <= limit:
        return tokens, acts
    peak = max(range(len(acts)), key=acts.__getitem__)
    start = min(max(0, peak - limit // 2), len(tokens) - limit)
    return tokens[start : start + limit], acts[start : start + limit]


def active_marks(acts: Sequence[float]) -> list[bool]:
    """Where a window's feature is active: positive and at least MARK_SHARE of its peak."""
    peak = max(acts, default=0.0)
    return [a > 0 and a >= MARK_SHARE * peak for a in acts]


def window_text(tokens: Sequence[str], marks: Sequence[bool] | None = None) -> str:
    """A window as readable text, the marked tokens in <<marks>>, corpus brackets made inert."""
    parts: list[str] = []
    inside = False
    for i, (gap, token) in enumerate(spell(list(tokens))):
        marked = bool(marks[i]) if marks is not None else False
        if marked != inside:
            parts.append(">>" if inside else "")
            parts.append(gap)
            parts.append("<<" if marked else "")
            inside = marked
        else:
            parts.append(gap)
        parts.append(neutralize(token, brackets=True))
    if inside:
        parts.append(">>")
    return "".join(parts).strip()


def numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"Example {n}: {text}" for n, text in enumerate(texts, 1))


def label_text(label: str) -> str:
    return neutralize(label.strip().rstrip("."))


# ---------------------------------------------------------------- answers


def list_grammar(n: int, item: str) -> str:
    """A llama.cpp GBNF grammar for a compact JSON list of exactly `n` items."""
    values = ' "," '.join(["v"] * n)
    return f'root ::= "[" {values} "]"\nv ::= {item}\n'


def parse_list(response: dict[str, Any], n: int, allowed: set[int]) -> list[int]:
    """The first JSON list in the answer: `n` whole numbers, each in `allowed`."""
    text = answer_text(response)
    match = re.search(r"\[[^\[\]]*\]", text)
    if match is None:
        raise UnusableAnswer(f"the answer holds no JSON list: {text[:200]!r}")
    try:
        values = json.loads(match.group())
    except json.JSONDecodeError:
        raise UnusableAnswer(f"the answer's list is not JSON: {match.group()[:200]!r}") from None
    if len(values) != n:
        raise UnusableAnswer(f"the answer lists {len(values)} values for {n} examples")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            raise UnusableAnswer(f"the answer holds {value!r}, not one of {sorted(allowed)}")
        out.append(value)
    return out


def yes_probabilities(response: dict[str, Any], n: int) -> list[float] | None:
    """P(1) for each of the `n` 0/1 digits of the answer, from the endpoint's logprobs.

    The digits are the generated tokens that are "0" or "1"; each one's probability of
    1 is renormalised over the two. None when the endpoint sent no logprobs or the
    digits cannot be lined up with the answer.
    """
    probabilities = []
    for token, tops in answer_logprobs(response):
        if token.strip() not in ("0", "1"):
            continue
        by_digit: dict[str, float] = {}
        for alt, logprob in tops.items():
            key = alt.strip()
            if key in ("0", "1") and math.isfinite(logprob):
                by_digit[key] = max(by_digit.get(key, -math.inf), logprob)
        yes, no = by_digit.get("1", -math.inf), by_digit.get("0", -math.inf)
        if yes == -math.inf and no == -math.inf:
            return None
        top = max(yes, no)
        p_yes, p_no = math.exp(yes - top), math.exp(no - top)
        probabilities.append(p_yes / (p_yes + p_no))
    return probabilities if len(probabilities) == n else None
