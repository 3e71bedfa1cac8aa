"""Explain features with an LLM, score the labels with the simulator, keep everything.

Entry points (sync wrappers around the async versions):

    explain_features(store, feature_ids, llm=LLMConfig(), explainer=ExplainerConfig(),
                     simulator=SimulatorConfig(), run_id=None, relabel=False,
                     relabel_human=False) -> Summary
    score_features(store, feature_ids, llm=..., simulator=..., run_id=None,
                   rescore=False, baseline=False) -> Summary
    baseline_explain(store, feature_ids, run_id=None) -> Summary

Of the features given, only those the store says are pending are worked on
(`Store.features_to_explain`, `Store.labels_to_score`). Each is claimed in the database
and checked again before its LLM call, so another process never pays for it twice, and
committed as soon as it is done, so an interrupted run resumes where it stopped. Who may
replace a current label is decided by the store when the label is written. Examples for
the explainer come from the `explain` split only; the simulator sees only `holdout`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from gloss.pipeline.liveness import LEASE_S, heartbeat, sweep
from gloss.pipeline.llm import (
    Budget,
    BudgetExhausted,
    CallStats,
    LLMClient,
    LLMConfig,
    UnusableAnswer,
    answer_text,
    make_clients,
)
from gloss.pipeline.prompts import Prompt, neutralize, printable, spell
from gloss.pipeline.scoring import simulation_score
from gloss.pipeline.settings import ExplainerConfig, SimulatorConfig
from gloss.pipeline.simulator import simulate
from gloss.store import (
    CANDIDATE,
    PROPOSED,
    REPLACE_ALL,
    REPLACE_MACHINE,
    REPLACE_NONE,
    ConflictError,
    ExampleOut,
    LLMError,
    Store,
    StoreWorker,
)

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run of explain/score did, for the CLI and the run record."""

    features: int = 0
    explained: int = 0
    scored: int = 0
    skipped: int = 0
    failed: int = 0
    budget_stopped: int = 0  # features left undone because the run's budget ran out
    claimed_elsewhere: int = 0  # skipped: another process was working on them
    wall_s: float = 0.0
    explainer: CallStats = field(default_factory=CallStats)
    simulator: CallStats = field(default_factory=CallStats)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self.explainer.calls + self.simulator.calls

    @property
    def tokens_in(self) -> int:
        return self.explainer.tokens_in + self.simulator.tokens_in

    @property
    def cost(self) -> float:
        return self.explainer.cost + self.simulator.cost

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        worked = max(1, self.features - self.skipped)
        data.update(
            calls=self.calls,
            tokens_in=self.tokens_in,
            tokens_out=self.explainer.tokens_out + self.simulator.tokens_out,
            cost=self.cost,
            calls_per_feature=self.calls / worked,
            prompt_tokens_per_feature=self.tokens_in / worked,
        )
        return data

    def lines(self) -> list[str]:
        d = self.as_dict()
        return [
            f"features {self.features}: explained {self.explained}, scored {self.scored}, "
            f"skipped {self.skipped}, failed {self.failed} ({self.wall_s:.1f}s)",
            f"LLM calls {self.calls} (explainer {self.explainer.calls}, simulator "
            f"{self.simulator.calls}; cached {self.explainer.cached + self.simulator.cached}, "
            f"retries {self.explainer.retries + self.simulator.retries}), "
            f"{d['calls_per_feature']:.2f} calls and {d['prompt_tokens_per_feature']:.0f} "
            "prompt tokens per feature",
            f"tokens in {d['tokens_in']}, out {d['tokens_out']}, cost ${self.cost:.4f}",
        ] + [f"  failed {f['feature_id']}: {f['error']}" for f in self.failures[:20]]


# ---------------------------------------------------------------- prompts


def normalized(acts: Sequence[float], max_act: float) -> list[int]:
    """OpenAI's display scale: floor(10 * relu(a) / max), in 0..10."""
    if max_act <= 0:
        return [0] * len(acts)
    return [min(10, max(0, math.floor(10 * max(0.0, a) / max_act))) for a in acts]


def _cut(example: ExampleOut, limit: int) -> tuple[list[str], list[float]]:
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
    return [_cut(e, config.max_tokens_per_example) for e in active[: config.max_examples]]


def render_openai(shown: Sequence[tuple[list[str], list[float]]]) -> str:
    top = max((max(acts) for _, acts in shown), default=0.0)
    blocks = []
    for tokens, acts in shown:
        lines = "".join(
            f"{neutralize(t)}\t{v}\n" for t, v in zip(tokens, normalized(acts, top), strict=True)
        )
        blocks.append(f"<start>\n{lines}<end>")
    return "\n".join(blocks)


def render_delphi(shown: Sequence[tuple[list[str], list[float]]]) -> str:
    """Each window as text with its activating tokens (>= 1/10 of the peak) in <<marks>>.

    Tokens are spelled as text (WordPiece pieces glued, words spaced); every `<` and `>`
    of the corpus becomes `‹` `›`, so the only angle brackets in the examples are ours.
    """
    top = max((max(acts) for _, acts in shown), default=0.0)
    lines = []
    for number, (tokens, acts) in enumerate(shown, 1):
        parts, run, inside = [], [], False
        for (gap, token), level in zip(spell(tokens), normalized(acts, top), strict=True):
            active = level >= 1
            if active != inside:
                if run:
                    text = neutralize("".join(run), brackets=True)
                    parts.append(f"<<{text}>>" if inside else text)
                parts.append(gap)  # a WordPiece word's space stays outside the marks
                run, inside = [token], active
            else:
                run.append(gap + token)
        if run:
            text = neutralize("".join(run), brackets=True)
            parts.append(f"<<{text}>>" if inside else text)
        lines.append(f"Example {number}: {''.join(parts)}")
    return "\n".join(lines)


_ACTIVE_SHARE = 0.5  # a word is active where it reaches this share of its window's peak


def _words(tokens: Sequence[str], acts: Sequence[float]) -> list[tuple[str, float]]:
    """A window as (word, activation) pairs: WordPiece `##` pieces and byte-level BPE pieces
    glued into whole words (a word's activation is its strongest piece's), punctuation
    marks kept as words of their own."""
    words: list[tuple[str, float]] = []
    glue = False  # may the next piece join the last word?
    for (gap, token), act in zip(spell(list(tokens)), acts, strict=True):
        text = token.strip()
        if not text:
            glue = False
            continue
        alnum = text[0].isalnum()
        if words and glue and alnum and not gap and not token[:1].isspace():
            word, best = words[-1]
            words[-1] = (word + text, max(best, act))
        else:
            words.append((text, act))
        glue = text[-1].isalnum()
    return words


def render_local(
    shown: Sequence[tuple[list[str], list[float]]],
    *,
    max_words: int = 8,
    max_contexts: int = 5,
    context_words: int = 14,
) -> dict[str, str]:
    """The `contexts`, `words` and `top` of the local-model prompt (prompts/explain_local.txt).

    `contexts`: the strongest windows, each cut to `context_words` words around its peak,
    one per line, the active words (half of the window's peak or more) marked <<like this>>.
    `words`: the words active most often, most often first, e.g. "pie, apple, baked"
    (without counts: a small model copies them into its label). `top`: the leading ones,
    those active at least half as often as the first, at most three; the prompt asks for
    a "Label for {top}:", which keeps a small model from repeating the last worked label.
    Corpus text is neutralised as in render_delphi: its `<` and `>` become `‹` `›`.
    """
    counts: dict[str, int] = defaultdict(int)
    weight: dict[str, float] = defaultdict(float)
    spelled: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    lines = []
    for tokens, acts in shown:
        words = _words(tokens, acts)
        peak = max((a for _, a in words), default=0.0)
        if peak <= 0:
            continue
        active = [a >= _ACTIVE_SHARE * peak for _, a in words]
        for (word, act), on in zip(words, active, strict=True):
            if on:
                key = word.lower()
                counts[key] += 1
                weight[key] += act
                spelled[key][word] += 1
        if len(lines) >= max_contexts:
            continue
        top = max(range(len(words)), key=lambda i: words[i][1])
        start = max(0, min(top - context_words // 2, len(words) - context_words))
        parts = []
        for i in range(start, min(len(words), start + context_words)):
            text = neutralize(words[i][0], brackets=True)
            parts.append(f"<<{text}>>" if active[i] else text)
        line = "- " + " ".join(parts)
        if line not in lines:  # a corpus that repeats itself shows each context once
            lines.append(line)
    ranked = sorted(counts, key=lambda k: (-counts[k], -weight[k], k))[:max_words]
    shown_words = []
    for key in ranked:
        word = max(spelled[key].items(), key=lambda kv: (kv[1], kv[0]))[0]
        text = neutralize(word, brackets=True)
        if not any(c.isalnum() for c in text):  # punctuation, quoted: "?" or '"'
            text = f"'{text}'" if '"' in text else f'"{text}"'
        shown_words.append(text)
    return {
        "words": ", ".join(shown_words),
        "top": ", ".join(
            w
            for w, k in zip(shown_words[:3], ranked, strict=False)
            if 2 * counts[k] >= counts[ranked[0]]
        ),
        "contexts": "\n".join(lines),
    }


def explain_prompt(
    template: Prompt, examples: Sequence[ExampleOut], config: ExplainerConfig
) -> str:
    shown = shown_examples(examples, config)
    if not shown:
        raise UnusableAnswer("no active explain-split examples to show the explainer")
    if config.style == "local":
        parts = render_local(shown)
        if not parts["contexts"]:
            raise UnusableAnswer("the explain-split examples hold no words to show the explainer")
        return template.render(**parts)
    render = render_delphi if config.style == "delphi" else render_openai
    return template.render(examples=render(shown))


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


# ---------------------------------------------------------------- the work


@dataclass
class _Context:
    store: Store
    explainer_client: LLMClient | None
    simulator_client: LLMClient
    explainer: ExplainerConfig
    simulator: SimulatorConfig
    run_id: int | None
    summary: Summary
    db: StoreWorker
    holder: str
    explain_template: Prompt | None = None
    simulate_template: Prompt | None = None
    replace: str = REPLACE_MACHINE  # whose current labels a new model label may replace
    rescore: bool = False  # score labels again that already have this simulator's score

    async def fail(self, feature_id: int, stage: str, error: Exception) -> None:
        self.summary.failed += 1
        message = f"{stage}: {error}"
        self.summary.failures.append({"feature_id": feature_id, "error": message})
        await self.db(self.store.record_failure, feature_id, message)


async def _explain_text(ctx: _Context, prompt: str, sample: int | None) -> tuple[str, Any]:
    params: dict[str, Any] = {"max_tokens": ctx.explainer.max_label_tokens, "stop": ["\n"]}
    if sample is None:
        params["temperature"] = 0
    else:
        params.update(temperature=ctx.explainer.candidate_temperature, seed=sample)
    assert ctx.explainer_client is not None and ctx.explain_template is not None
    copies = example_labels(ctx.explain_template)
    answer = await ctx.explainer_client.complete(
        prompt, lambda response: parse_label(answer_text(response), copies), **params
    )
    return answer.value, answer


async def _score_one(
    ctx: _Context, feature_id: int, explanation_id: int, label: str, holdout: list[ExampleOut]
) -> float | None:
    """Simulate the holdout windows under `label` and store the score; None if it failed."""
    kinds = ctx.simulator.kinds
    windows = [e for e in holdout if e.kind.split(":", 1)[0] in kinds]
    template = ctx.simulate_template or ctx.simulator.template()
    model = ctx.simulator_client.endpoint.model
    value: float | None = None
    if not windows:
        details: dict[str, Any] = {"reason": f"no holdout windows of kinds {', '.join(kinds)}"}
    else:
        try:
            predicted, answer = await simulate(
                ctx.simulator_client, label, [e.tokens for e in windows], ctx.simulator, template
            )
        except LLMError as error:
            await ctx.fail(feature_id, "score", error)
            return None
        value, details = simulation_score(
            [e.acts for e in windows], predicted, [e.kind for e in windows]
        )
        details.update(
            method=ctx.simulator.method,
            window_ids=[e.window_id for e in windows],
            cached=answer.cached,
            prompt_tokens=answer.tokens_in,
            llm_call_id=answer.call_id,
        )
    try:
        await ctx.db(
            ctx.store.add_score,
            explanation_id,
            "simulation",
            value,
            details=details,
            simulator_model=model,
            prompt=template.ref,
            run_id=ctx.run_id,
            replace=ctx.rescore,
        )
    except ConflictError:
        log.info("label #%d was scored by another process meanwhile", explanation_id)
        return None
    if windows:
        ctx.summary.scored += 1
    return value


async def _explain_one(ctx: _Context, feature_id: int) -> None:
    examples = await ctx.db.read(ctx.store.examples, feature_id)
    explain_split = [e for e in examples if e.split == "explain"]
    holdout = [e for e in examples if e.split == "holdout"]
    assert ctx.explain_template is not None and ctx.explainer_client is not None
    n = ctx.explainer.candidates
    try:
        prompt = explain_prompt(ctx.explain_template, explain_split, ctx.explainer)
        if n == 1:
            results = [await _explain_text(ctx, prompt, None)]
        else:
            results = await asyncio.gather(
                *(_explain_text(ctx, prompt, i) for i in range(n)), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            results = [r for r in results if not isinstance(r, BaseException)]
            if not results:
                raise errors[0]
    except LLMError as error:
        await ctx.fail(feature_id, "explain", error)
        return
    labels: dict[str, Any] = {}
    for label, answer in results:
        labels.setdefault(label, answer)
    ids = []
    for label, answer in labels.items():
        explanation_id = await ctx.db(
            ctx.store.add_explanation,
            feature_id,
            label,
            author_kind="model",
            author_name=f"gloss-explainer:{ctx.explainer.style}",
            model=ctx.explainer_client.endpoint.model,
            prompt=ctx.explain_template.ref,
            run_id=ctx.run_id,
            details={
                "style": ctx.explainer.style,
                "prompt_tokens": answer.tokens_in,
                "cached": answer.cached,
                "llm_call_id": answer.call_id,
                "candidates": n,
            },
            status=PROPOSED if n == 1 else CANDIDATE,
            replace=ctx.replace,
        )
        ids.append((explanation_id, label))
    ctx.summary.explained += 1
    await ctx.db(ctx.store.clear_failures, feature_id)
    if not ctx.explainer.score and n == 1:
        return
    scores = await asyncio.gather(*(_score_one(ctx, feature_id, i, t, holdout) for i, t in ids))
    if n > 1:
        best = max(range(len(ids)), key=lambda k: -math.inf if scores[k] is None else scores[k])
        await ctx.db(ctx.store.make_current, ids[best][0], replace=ctx.replace)


async def _run_features(
    ctx: _Context,
    feature_ids: Sequence[int],
    stage: str,
    still_pending: Callable[[int], Any],
    work: Callable[[_Context, int, Any], Any],
    budget: Budget | None,
) -> None:
    """Work through features with a few workers; each feature claimed, re-checked, done.

    The claim keeps two processes from paying for the same feature; the re-check,
    made once the claim is held, skips a feature another process finished since the
    list was made. One feature's unexpected error is recorded as its failure and
    never stops the others.
    """
    bar = tqdm(total=len(feature_ids), desc=stage, unit="feature", disable=None, leave=False)
    queue = list(reversed(feature_ids))
    store, summary = ctx.store, ctx.summary

    async def one(feature_id: int) -> None:
        if budget is not None and budget.exhausted:
            summary.budget_stopped += 1
            return
        try:
            # Released in `finally` even when cancelled while claiming: the claim may
            # still land, and the one writer thread runs the release after it.
            claimed = await ctx.db(
                store.claim, feature_id, stage, ctx.holder, run_id=ctx.run_id, lease_s=LEASE_S
            )
            if not claimed:
                summary.skipped += 1
                summary.claimed_elsewhere += 1
                return
            pending = await ctx.db.read(still_pending, feature_id)
            if not pending:
                summary.skipped += 1
                return
            await work(ctx, feature_id, pending)
        except BudgetExhausted:
            summary.budget_stopped += 1
        except Exception as error:  # noqa: BLE001 - recorded as the feature's failure
            log.exception("%s of feature %d failed", stage, feature_id)
            await ctx.fail(feature_id, stage, error)
        finally:
            await ctx.db(store.release, feature_id, stage, ctx.holder)

    async def worker() -> None:
        while queue:
            try:
                await one(queue.pop())
            finally:
                bar.update(1)

    clients = [c for c in (ctx.explainer_client, ctx.simulator_client) if c is not None]
    workers = 2 * max(c.endpoint.concurrency for c in clients)
    try:
        await asyncio.gather(*(worker() for _ in range(min(workers, len(feature_ids)))))
    finally:
        bar.close()


def _open_run(
    store: Store, run_id: int | None, kind: str, config: dict[str, Any], holder: str
) -> tuple[int, bool]:
    if run_id is not None:
        return run_id, False
    sweep(store)
    return store.start_run(kind, config, holder=holder), True


def _close_run(
    store: Store, run_id: int, own: bool, summary: Summary, kind: str, status: str
) -> None:
    run = store.run(run_id)
    counts = dict(run.counts)
    counts[kind] = summary.as_dict()
    values = dict(
        counts=counts,
        failures=list(run.failures) + summary.failures[:200],
        tokens_in=run.tokens_in + summary.tokens_in,
        tokens_out=run.tokens_out + summary.explainer.tokens_out + summary.simulator.tokens_out,
        cost=run.cost + summary.cost,
    )
    if not own:
        store.update_run(run_id, **values)
        return
    if status == "done" and (summary.failed or summary.budget_stopped or summary.claimed_elsewhere):
        status = "partial"
    store.finish_run(run_id, status, "; ".join(summary.lines()[:2]), **values)


def _config_dict(**parts: Any) -> dict[str, Any]:
    out = {}
    for name, part in parts.items():
        data = asdict(part)
        for role in ("explainer", "simulator"):
            if isinstance(data.get(role), dict):
                data[role].pop("api_key", None)
        out[name] = data
    return out


@contextmanager
def _stage_run(
    store: Store, run_id: int | None, kind: str, config: dict[str, Any], summary: Summary
) -> Iterator[tuple[int, str]]:
    """The stage's run (its own, unless inside a nightly run), closed with what happened.

    Yields (run id, holder). A stage that raises is recorded failed, one that is
    cancelled or interrupted is recorded interrupted: never done.
    """
    started = time.perf_counter()
    with heartbeat(store) as holder:
        run_id, own = _open_run(store, run_id, kind, config, holder)
        status = "failed"
        try:
            yield run_id, holder
            status = "done"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status = "interrupted"
            raise
        finally:
            summary.wall_s = time.perf_counter() - started
            _close_run(store, run_id, own, summary, kind, status)


async def aexplain_features(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig,
    explainer: ExplainerConfig | None = None,
    simulator: SimulatorConfig | None = None,
    run_id: int | None = None,
    *,
    relabel: bool = False,
    relabel_human: bool = False,
    budget: Budget | None = None,
) -> Summary:
    """Label (and score) those of `feature_ids` the store says need this explainer's label.

    `relabel` explains again features whose current label this explainer wrote;
    `relabel_human` replaces labels a human wrote or accepted too. Without it such a
    label is never replaced, even when a reviewer writes it while this runs.
    """
    explainer = (explainer or ExplainerConfig()).for_endpoint(llm.explainer)
    simulator = (simulator or SimulatorConfig()).for_endpoint(llm.simulator)
    template = explainer.template()
    summary = Summary(features=len(feature_ids))

    def pending(ids: Sequence[int]) -> list[int]:
        return store.features_to_explain(
            None,
            model=llm.explainer.model,
            prompt=template.ref,
            max_failures=explainer.max_failures,
            relabel=relabel,
            relabel_human=relabel_human,
            feature_ids=ids,
        )

    config = _config_dict(llm=llm, explainer=explainer, simulator=simulator)
    with _stage_run(store, run_id, "explain", config, summary) as (run_id, holder):
        todo = pending(feature_ids)
        summary.skipped += len(feature_ids) - len(todo)
        db = StoreWorker(store)
        explainer_client, simulator_client = make_clients(llm, store, run_id, db, budget)
        ctx = _Context(
            store,
            explainer_client,
            simulator_client,
            explainer,
            simulator,
            run_id,
            summary,
            db,
            holder,
            template,
            simulator.template(),
            replace=REPLACE_ALL if relabel_human else REPLACE_MACHINE,
        )
        try:
            await _run_features(
                ctx,
                todo,
                "explain",
                lambda feature_id: pending([feature_id]),
                lambda ctx, feature_id, _: _explain_one(ctx, feature_id),
                budget,
            )
        finally:
            summary.explainer, summary.simulator = explainer_client.stats, simulator_client.stats
            await explainer_client.close()
            await simulator_client.close()
            db.close()
    return summary


async def ascore_features(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig,
    simulator: SimulatorConfig | None = None,
    run_id: int | None = None,
    *,
    rescore: bool = False,
    baseline: bool = False,
    budget: Budget | None = None,
) -> Summary:
    """Score the labels of `feature_ids` that the store says lack this simulator's score.

    Current labels, and with `baseline` each feature's baseline label too; `rescore`
    scores them again, replacing this simulator's earlier score.
    """
    simulator = (simulator or SimulatorConfig()).for_endpoint(llm.simulator)
    template = simulator.template()
    summary = Summary(features=len(feature_ids))

    def labels(ids: Sequence[int]) -> list[tuple[int, int, str]]:
        return store.labels_to_score(
            None,
            simulator_model=llm.simulator.model,
            prompt=template.ref,
            rescore=rescore,
            baseline=baseline,
            feature_ids=ids,
        )

    async def work(ctx: _Context, feature_id: int, jobs: list[tuple[int, int, str]]) -> None:
        holdout = await ctx.db.read(store.examples, feature_id, "holdout")
        await asyncio.gather(
            *(_score_one(ctx, feature_id, e_id, text, holdout) for _, e_id, text in jobs)
        )

    config = _config_dict(llm=llm, simulator=simulator)
    with _stage_run(store, run_id, "score", config, summary) as (run_id, holder):
        todo = list(dict.fromkeys(feature_id for feature_id, _, _ in labels(feature_ids)))
        summary.skipped += len(feature_ids) - len(todo)
        db = StoreWorker(store)
        _, simulator_client = make_clients(llm, store, run_id, db, budget)
        ctx = _Context(
            store, None, simulator_client, ExplainerConfig(), simulator, run_id, summary, db,
            holder, simulate_template=template, rescore=rescore,
        )  # fmt: skip
        try:
            await _run_features(
                ctx, todo, "score", lambda feature_id: labels([feature_id]), work, budget
            )
        finally:
            summary.simulator = simulator_client.stats
            await simulator_client.close()
            db.close()
    return summary


def explain_features(
    store: Store, feature_ids: Sequence[int], llm: LLMConfig | None = None, **kwargs: Any
) -> Summary:
    """Sync entry point; starts the bundled local LLM server for the run if the config names it."""
    from gloss.pipeline.local_llm import endpoints

    with endpoints(llm or LLMConfig()) as resolved:
        return asyncio.run(aexplain_features(store, feature_ids, resolved, **kwargs))


def score_features(
    store: Store, feature_ids: Sequence[int], llm: LLMConfig | None = None, **kwargs: Any
) -> Summary:
    from gloss.pipeline.local_llm import endpoints

    with endpoints(llm or LLMConfig()) as resolved:
        return asyncio.run(ascore_features(store, feature_ids, resolved, **kwargs))


# ---------------------------------------------------------------- the baseline


def lift_label(examples: Sequence[ExampleOut], top_k: int = 5, min_count: int = 2) -> str | None:
    """The tokens whose mean activation most exceeds the overall mean, as a label."""
    total, count = 0.0, 0
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for example in examples:
        for token, act in zip(example.tokens, example.acts, strict=True):
            key = token.strip().lower()
            act = max(0.0, act)
            total += act
            count += 1
            if key:
                sums[key] += act
                counts[key] += 1
    if count == 0 or total <= 0:
        return None
    overall = total / count
    needed = min_count if any(c >= min_count for c in counts.values()) else 1
    lifts = {t: sums[t] / counts[t] / overall for t in sums if counts[t] >= needed and sums[t] > 0}
    best = sorted(lifts, key=lambda t: (-lifts[t], t))[:top_k]
    if not best:
        return None
    return "tokens " + ", ".join(repr(t) for t in best)


def baseline_explain(
    store: Store, feature_ids: Sequence[int], run_id: int | None = None, top_k: int = 5
) -> Summary:
    """Store a no-LLM label (highest activation lift) per feature.

    It becomes the current label of a feature without one, until an LLM label
    replaces it; beside any other current label it is kept as a candidate.
    """
    started = time.perf_counter()
    summary = Summary(features=len(feature_ids))
    for feature_id in feature_ids:
        if any(e.author_kind == "baseline" for e in store.explanations(feature_id)):
            summary.skipped += 1
            continue
        label = lift_label(store.examples(feature_id, "explain"), top_k)
        if label is None:
            summary.skipped += 1
            continue
        store.add_explanation(
            feature_id,
            label,
            author_kind="baseline",
            author_name="gloss-baseline:lift",
            run_id=run_id,
            details={"method": "activation lift over explain-split tokens", "top_k": top_k},
            replace=REPLACE_NONE,
        )
        summary.explained += 1
    summary.wall_s = time.perf_counter() - started
    return summary


__all__ = [
    "ExplainerConfig",
    "Summary",
    "aexplain_features",
    "ascore_features",
    "baseline_explain",
    "explain_features",
    "explain_prompt",
    "lift_label",
    "parse_label",
    "score_features",
]
