"""What every explainer is: a prompt built from a feature's explain-split windows, and a
parser that turns the answer into a label or refuses it.

An explainer never calls the LLM or writes to the store: the stage runner
(`pipeline.labeling`) asks, parses with `Explainer.parse` and stores. A refused answer
(`UnusableAnswer`: empty, an echo of the prompt, a copy of a worked example, a list of
tokens) is recorded as the feature's failure, never stored as a label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from gloss.pipeline.llm import UnusableAnswer
from gloss.pipeline.prompts import Prompt, printable
from gloss.pipeline.settings import ExplainerConfig
from gloss.store import ExampleOut, ScoreInfo
from gloss.store.types import EFFECT_METHODS

Shown = list[tuple[list[str], list[float]]]  # (tokens, activations) of each window shown
Effects = Mapping[str, ScoreInfo]  # a feature's effect scores (pipeline/effects) by method


class Explainer:
    """One prompt style: `render` turns the windows shown into the template's values.

    A style with `uses_effects` also reads the feature's effects (the `ablation` and
    `output` feature scores); the stage runner looks them up only for such a style."""

    style: ClassVar[str]
    uses_effects: ClassVar[bool] = False

    def __init__(self, config: ExplainerConfig):
        self.config = config
        self.template = config.template()
        self.copies = example_labels(self.template)

    def prompt(self, examples: Sequence[ExampleOut], effects: Effects | None = None) -> str:
        """The prompt for a feature's examples; UnusableAnswer when there is nothing to show."""
        return self.template.render(**self.render(self.shown(examples), examples))

    def shown(self, examples: Sequence[ExampleOut]) -> Shown:
        """The windows to show; UnusableAnswer when none is active."""
        shown = shown_examples(examples, self.config)
        if not shown:
            raise UnusableAnswer("no active explain-split examples to show the explainer")
        return shown

    def render(self, shown: Shown, examples: Sequence[ExampleOut]) -> dict[str, str]:
        raise NotImplementedError

    def parse(self, text: str) -> str:
        return parse_label(text, self.copies)


def effects_of(scores: Iterable[ScoreInfo]) -> dict[str, ScoreInfo]:
    """A feature's effects by method, from its feature scores (the newest of each)."""
    return {s.method: s for s in scores if s.method in EFFECT_METHODS}


def normalized(acts: Sequence[float], max_act: float) -> list[int]:
    """OpenAI's display scale: floor(10 * relu(a) / max), in 0..10."""
    if max_act <= 0:
        return [0] * len(acts)
    return [min(10, max(0, math.floor(10 * max(0.0, a) / max_act))) for a in acts]


def cut(example: ExampleOut, limit: int) -> tuple[list[str], list[float]]:
    """The window, cut to `limit` tokens around its peak."""
    tokens, acts = example.tokens, example.acts
    if len(tokens) <= limit:
        return list(tokens), list(acts)
    peak = max(range(len(acts)), key=acts.__getitem__)
    start = min(max(0, peak - limit // 2), len(tokens) - limit)
    return list(tokens[start : start + limit]), list(acts[start : start + limit])


def shown_examples(
    examples: Sequence[ExampleOut], config: ExplainerConfig
) -> list[tuple[list[str], list[float]]]:
    """The explain-split windows the explainer sees: active ones, strongest first."""
    active = [e for e in examples if e.split == "explain" and e.max_act > 0]
    active.sort(key=lambda e: (-e.max_act, e.window_id))
    return [cut(e, config.max_tokens_per_example) for e in active[: config.max_examples]]


# ---------------------------------------------------------------- label parsing

_PREFIXES = re.compile(
    r"^(?:explanation(?: of (?:neuron|feature) \d+(?: behavio(?:u)?r)?)?\s*:\s*|"
    r"the main thing this (?:neuron|feature) does is (?:to )?find\s*:?\s*|"
    r"this (?:neuron|feature) (?:finds|detects|looks for)\s*:?\s*)",
    re.IGNORECASE,
)
_ECHOES = ("<start>", "<end>", "Activations:", "Neuron 2", "Feature 2", "\t")


def example_labels(template: Prompt) -> set[str]:
    """The labels of a template's worked examples: an answer repeating one is a copy.

    A worked label follows "... does is find" (openai, delphi) or "Label ...:" at the
    start of a line (local); the answer slot, with nothing after it, is not a label."""
    found = re.findall(r"does is find (.+)$", template.text, re.MULTILINE)
    found += re.findall(r"^Label\b[^:\n]*:[ \t]*(\S.*)$", template.text, re.MULTILINE)
    return {label.rstrip(" .").lower() for label in found if label.strip()}


def parse_label(text: str, copies: set[str] = frozenset()) -> str:
    """The label in an explainer answer, or UnusableAnswer: never store junk as a label."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise UnusableAnswer("the explainer answered nothing")
    label = lines[0].replace("**", "").strip()
    label = _PREFIXES.sub("", _PREFIXES.sub("", label).strip()).strip()
    label = re.split(r"(?<=[\w)\]\"'”])\.\s+(?=[A-Z])", label, maxsplit=1)[0]
    label = label.rstrip(" .;:,").strip()
    if len(label) > 1 and label[0] + label[-1] in ('""', "''", "``", "“”"):
        label = label[1:-1].strip()
    label = label.rstrip(" .;:,").strip()
    if any(echo in label for echo in _ECHOES):
        raise UnusableAnswer(f"the explainer answer echoes the prompt, not a label: {text[:300]!r}")
    if printable(label) != label:
        raise UnusableAnswer(f"the explainer's label holds control characters: {label[:300]!r}")
    if len(label) > 300:
        raise UnusableAnswer(f"the explainer answer is too long for a label: {text[:300]!r}")
    if len(re.findall(r"[^\W\d_]", label)) < 2:
        raise UnusableAnswer(f"the explainer answer has no label: {text[:300]!r}")
    if _copied(label, copies):
        raise UnusableAnswer(f"the explainer copied the prompt's worked example: {label!r}")
    if _token_list(label):
        raise UnusableAnswer(f"the explainer listed tokens instead of a label: {label!r}")
    return label


def _token_list(label: str) -> bool:
    """'the, ",", your, almost, was' says nothing a baseline does not: mostly single
    tokens between commas, not a phrase about them."""
    parts = [p.strip(" '\"") for p in label.split(",")]
    singles = sum(1 for p in parts if " " not in p)
    return len(parts) >= 3 and " " not in parts[0] and singles >= 0.75 * len(parts)


# Words a label's frame is made of: two labels that share only these ("the word "X" in
# sentences about Y" filled in with another X and Y) say different things.
_FRAME_WORDS = frozenset(
    "a an the of in on at to for from and or as such like that about with by is are "
    "word words sentence sentences text texts meaning means".split()
)


def _copied(label: str, copies: set[str]) -> bool:
    """A label is a copy when most of its words are a worked example's (a word dropped or
    swapped) and it keeps one of that example's own words, not only the shared frame; or
    when it repeats most of the own words of a longer example ("pets, the words 'cat' and
    'kitten' are used to describe the same thing")."""
    words = set(re.findall(r"\w+", label.lower()))
    for copy in copies:
        theirs = set(re.findall(r"\w+", copy.lower()))
        content = theirs - _FRAME_WORDS
        if len(content) >= 3 and len(words & content) >= 0.6 * len(content):
            return True
        if not words or len(words & theirs) / len(words | theirs) < 0.6:
            continue
        if not content or words & content or not words - _FRAME_WORDS:
            return True
    return False
