"""The labeling core: one stage runner for explaining and scoring, used by `gloss explain`,
`gloss score`, `gloss run` and the review app's re-score.

    explain_features(store, feature_ids, llm, explainer=ExplainerConfig(),
                     simulator=SimulatorConfig(), scoring=ScoringConfig(), run_id=None,
                     relabel=False, relabel_human=False) -> Summary
    score_features(store, feature_ids, llm, simulator=..., scoring=..., run_id=None,
                   rescore=False, baseline=False) -> Summary

Work comes only from the store's pending-work queries (`features_to_explain`,
`pending_scores` over `labels_to_score` and `features_to_judge`): of the features given,
only those are worked on. Each is claimed in the database and checked again once
claimed, so two processes never pay for it twice, and committed as soon as it is done,
so an interrupted run resumes where it stopped. Who may replace a current label is
decided by the store when the label is written.

Splits: the explainer reads `explain` windows only (and, for a style that `uses_effects`,
the feature's effects, measured on its top explain windows); best-of-n chooses among
candidates by the primary scorer on `validation`; reported scores use `holdout` only. The
candidates' validation scores are kept in their details, never in `scores`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from gloss.pipeline.explainers import Explainer, effects_of, make_explainer
from gloss.pipeline.liveness import LEASE_S, heartbeat, sweep
from gloss.pipeline.llm import (
    Budget,
    BudgetExhausted,
    CallStats,
    LLMClient,
    answer_text,
    make_clients,
)
from gloss.pipeline.scorers import Scorer, Windows, make_scorers
from gloss.pipeline.settings import (
    ExplainerConfig,
    LLMConfig,
    ScoringConfig,
    SimulatorConfig,
)
from gloss.store import (
    CANDIDATE,
    PROPOSED,
    REPLACE_ALL,
    REPLACE_MACHINE,
    ConflictError,
    ExampleOut,
    LLMError,
    Store,
    StoreWorker,
)

log = logging.getLogger(__name__)

LLM_METHODS = ("simulation", "detection", "fuzzing", "intruder")
# Explaining a feature and scoring its labels are claimed under one name: a label one
# process has just written and is scoring is not scored by another at the same time.
CLAIM = "label"


@dataclass
class Summary:
    """What a run of explain/score did, for the CLI and the run record."""

    features: int = 0
    explained: int = 0
    scored: int = 0  # labels given at least one score
    skipped: int = 0
    failed: int = 0
    budget_stopped: int = 0  # features left undone because the run's budget ran out
    claimed_elsewhere: int = 0  # skipped: another process was working on them
    wall_s: float = 0.0
    explainer: CallStats = field(default_factory=CallStats)
    simulator: CallStats = field(default_factory=CallStats)  # every LLM scorer's calls
    scores: dict[str, int] = field(default_factory=dict)  # stored, per method
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
        by_method = ", ".join(f"{m} {n}" for m, n in sorted(self.scores.items()))
        return (
            [
                f"features {self.features}: explained {self.explained}, scored {self.scored}, "
                f"skipped {self.skipped}, failed {self.failed} ({self.wall_s:.1f}s)",
                f"LLM calls {self.calls} (explainer {self.explainer.calls}, scorers "
                f"{self.simulator.calls}; cached {self.explainer.cached + self.simulator.cached}, "
                f"retries {self.explainer.retries + self.simulator.retries}), "
                f"{d['calls_per_feature']:.2f} calls and {d['prompt_tokens_per_feature']:.0f} "
                "prompt tokens per feature",
                f"tokens in {d['tokens_in']}, out {d['tokens_out']}, cost ${self.cost:.4f}",
            ]
            + ([f"scores stored: {by_method}"] if by_method else [])
            + [f"  failed {f['feature_id']}: {f['error']}" for f in self.failures[:20]]
        )


# ---------------------------------------------------------------- pending work


@dataclass(frozen=True)
class ScoreJob:
    """One score to compute: a label's (explanation_id set) or the feature's own."""

    feature_id: int
    scorer: Scorer
    explanation_id: int | None = None
    text: str | None = None


def pending_scores(
    store: Store,
    scorers: Sequence[Scorer],
    feature_ids: Sequence[int] | None = None,
    *,
    source_id: int | None = None,
    indices: Sequence[int] | None = None,
    max_failures: int | None = None,
    rescore: bool = False,
    baseline: bool = False,
) -> list[ScoreJob]:
    """Every score these scorers still owe, in feature order: the store's pending queries."""
    jobs = []
    for scorer in scorers:
        prompt = scorer.prompt.ref if scorer.prompt is not None else None
        if scorer.judges == "feature":
            ids = store.features_to_judge(
                source_id, method=scorer.method, model=scorer.model, prompt=prompt,
                max_failures=max_failures, rescore=rescore, indices=indices,
                feature_ids=feature_ids,
            )  # fmt: skip
            jobs += [ScoreJob(i, scorer) for i in ids]
            continue
        labels = store.labels_to_score(
            source_id, simulator_model=scorer.model, prompt=prompt, method=scorer.method,
            max_failures=max_failures, rescore=rescore, baseline=baseline, indices=indices,
            feature_ids=feature_ids,
        )  # fmt: skip
        jobs += [ScoreJob(f, scorer, e, text) for f, e, text in labels]
    order = {f: i for i, f in enumerate(dict.fromkeys(j.feature_id for j in jobs))}
    return sorted(jobs, key=lambda j: order[j.feature_id])


# ---------------------------------------------------------------- the work


@dataclass
class _Context:
    store: Store
    db: StoreWorker
    holder: str
    run_id: int | None
    summary: Summary
    scoring: ScoringConfig
    scorers: list[Scorer]  # label scorers run on every new label; all of them in `score`
    explainer: Explainer | None = None
    explainer_client: LLMClient | None = None
    replace: str = REPLACE_MACHINE  # whose current labels a new model label may replace
    rescore: bool = False  # replace a scorer's earlier score instead of skipping it
    score_new: bool = True  # score each new label right away

    async def fail(self, feature_id: int, stage: str, error: Exception | str) -> None:
        self.summary.failed += 1
        message = f"{stage}: {error}"
        self.summary.failures.append({"feature_id": feature_id, "error": message})
        await self.db(self.store.record_failure, feature_id, message)

    def seed(self, feature_id: int) -> int:
        """A scorer's sample of one feature: the same for every label of the feature, so
        labels are judged on the same windows in the same order (and answers cached)."""
        return self.scoring.seed * 1_000_003 + feature_id

    @property
    def primary(self) -> Scorer:
        return next(s for s in self.scorers if s.method == self.scoring.primary)


async def _score(ctx: _Context, job: ScoreJob, windows: Windows) -> bool:
    """Run one scorer and store its outcome; False when it failed (recorded) or lost a race."""
    scorer, store = job.scorer, ctx.store
    try:
        outcome = await scorer.score(job.text, windows, ctx.seed(job.feature_id))
    except LLMError as error:
        await ctx.fail(job.feature_id, "score", f"{scorer.method}: {error}")
        return False
    details = outcome.details | ({"llm_call_ids": outcome.call_ids} if outcome.call_ids else {})
    if windows.near_misses:
        details["silent_windows"] = f"the {ctx.scoring.near_misses} nearest misses"
    stored = dict(
        details=details, prompt=scorer.prompt.ref if scorer.prompt is not None else None,
        run_id=ctx.run_id, replace=ctx.rescore, calls=outcome.calls,
        tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
    )  # fmt: skip
    try:
        if job.explanation_id is None:
            await ctx.db(store.add_feature_score, job.feature_id, scorer.method, outcome.value,
                         model=scorer.model, **stored)  # fmt: skip
        else:
            await ctx.db(store.add_score, job.explanation_id, scorer.method, outcome.value,
                         simulator_model=scorer.model, **stored)  # fmt: skip
    except ConflictError:
        log.info("%s of feature %d was stored by another process", scorer.method, job.feature_id)
        return False
    ctx.summary.scores[scorer.method] = ctx.summary.scores.get(scorer.method, 0) + 1
    return True


async def _score_jobs(ctx: _Context, jobs: Sequence[ScoreJob], holdout: Windows) -> None:
    stored = await asyncio.gather(*(_score(ctx, job, holdout) for job in jobs))
    labels = {j.explanation_id for j, ok in zip(jobs, stored, strict=True) if ok}
    ctx.summary.scored += len(labels - {None})


async def _sample_labels(ctx: _Context, prompt: str) -> dict[str, Any]:
    """The explainer's answers: one at temperature 0, or `candidates` seeded samples."""
    assert ctx.explainer is not None and ctx.explainer_client is not None
    config = ctx.explainer.config
    params: dict[str, Any] = {"max_tokens": config.max_label_tokens, "stop": ["\n"]}

    async def one(sample: int | None) -> Any:
        extra = {"temperature": 0} if sample is None else {
            "temperature": config.candidate_temperature, "seed": sample}  # fmt: skip
        assert ctx.explainer_client is not None and ctx.explainer is not None
        parse = ctx.explainer.parse
        return await ctx.explainer_client.complete(
            prompt, lambda response: parse(answer_text(response)), **params, **extra
        )

    if config.candidates == 1:
        answers = [await one(None)]
    else:
        results = await asyncio.gather(
            *(one(i) for i in range(config.candidates)), return_exceptions=True
        )
        answers = [r for r in results if not isinstance(r, BaseException)]
        if not answers:
            raise next(r for r in results if isinstance(r, BaseException))
    labels: dict[str, Any] = {}
    for answer in answers:
        labels.setdefault(answer.value, answer)
    return labels


async def _choose(
    ctx: _Context, feature_id: int, labels: Sequence[str], validation: Windows
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The best of several labels by the primary scorer on the validation split.

    Each label's validation score goes back for its details; nothing is stored in
    `scores`, which hold holdout scores only. Undefined or failed scores rank last;
    ties keep the earlier sample.
    """
    scorer = ctx.primary
    outcomes = await asyncio.gather(
        *(scorer.score(label, validation, ctx.seed(feature_id)) for label in labels),
        return_exceptions=True,
    )
    values: list[float] = []
    notes: dict[str, dict[str, Any]] = {}
    for label, outcome in zip(labels, outcomes, strict=True):
        if isinstance(outcome, LLMError):
            notes[label] = {"method": scorer.method, "value": None, "reason": str(outcome)}
            values.append(-math.inf)
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        note = {"method": scorer.method, "value": outcome.value}
        if outcome.value is None:
            note["reason"] = outcome.details.get("reason", "undefined")
        notes[label] = note
        values.append(-math.inf if outcome.value is None else outcome.value)
    best = max(range(len(labels)), key=lambda i: (values[i], -i))
    return labels[best], notes


async def _explain_one(ctx: _Context, feature_id: int) -> None:
    assert ctx.explainer is not None and ctx.explainer_client is not None
    examples = await ctx.db.read(ctx.store.examples, feature_id)
    split: dict[str, list[ExampleOut]] = {"explain": [], "validation": [], "holdout": []}
    for example in examples:
        split.setdefault(example.split, []).append(example)
    config = ctx.explainer.config
    effects = None
    if ctx.explainer.uses_effects:  # only a style that reads them costs the query
        effects = effects_of(await ctx.db.read(ctx.store.feature_scores, feature_id))
    try:
        labels = await _sample_labels(ctx, ctx.explainer.prompt(split["explain"], effects))
    except LLMError as error:
        await ctx.fail(feature_id, "explain", error)
        return
    texts = list(labels)
    chosen, validation = texts[0], {}
    if len(texts) > 1:
        validation_windows = await asyncio.to_thread(Windows.of, split["validation"], ctx.scoring)
        chosen, validation = await _choose(ctx, feature_id, texts, validation_windows)
    chosen_id = None
    for text, answer in labels.items():
        details = {
            "style": ctx.explainer.style,
            "prompt_tokens": answer.tokens_in,
            "cached": answer.cached,
            "llm_call_id": answer.call_id,
            "candidates": config.candidates,
        } | ({"validation": validation[text]} if text in validation else {})
        if effects:  # which measurements the label was made from
            details["effects"] = {method: score.id for method, score in effects.items()}
        explanation_id = await ctx.db(
            ctx.store.add_explanation, feature_id, text, author_kind="model",
            author_name=f"gloss-explainer:{ctx.explainer.style}",
            model=ctx.explainer_client.endpoint.model, prompt=ctx.explainer.template.ref,
            run_id=ctx.run_id, details=details,
            status=PROPOSED if text == chosen else CANDIDATE, replace=ctx.replace,
        )  # fmt: skip
        if text == chosen:
            chosen_id = explanation_id
    ctx.summary.explained += 1
    await ctx.db(ctx.store.clear_failures, feature_id)
    if ctx.score_new and chosen_id is not None:
        jobs = [ScoreJob(feature_id, s, chosen_id, chosen) for s in ctx.scorers
                if s.judges == "label"]  # fmt: skip
        holdout = await asyncio.to_thread(Windows.of, split["holdout"], ctx.scoring)
        await _score_jobs(ctx, jobs, holdout)


async def _run_features(
    ctx: _Context,
    feature_ids: Sequence[int],
    stage: str,
    still_pending: Callable[[int], Any],
    work: Callable[[_Context, int, Any], Any],
    budget: Budget | None,
    clients: Sequence[LLMClient],
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
                store.claim, feature_id, CLAIM, ctx.holder, run_id=ctx.run_id, lease_s=LEASE_S
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
            await ctx.db(store.release, feature_id, CLAIM, ctx.holder)

    async def worker() -> None:
        while queue:
            try:
                await one(queue.pop())
            finally:
                bar.update(1)

    workers = 2 * max((c.endpoint.concurrency for c in clients), default=2)
    try:
        await asyncio.gather(*(worker() for _ in range(min(workers, len(feature_ids)))))
    finally:
        bar.close()


# ---------------------------------------------------------------- runs


def _close_run(
    store: Store, run_id: int, own: bool, summary: Summary, kind: str, status: str
) -> None:
    run = store.run(run_id)
    counts = dict(run.counts)
    counts[kind] = _added(counts.get(kind), summary.as_dict())
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


def _added(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """A stage's counts over the rounds of one run (`gloss run` goes round until done):
    numbers add up, failures are kept, per-feature ratios are worked out again."""
    if not before:
        return now
    out = dict(now)
    for key, value in now.items():
        old = before.get(key)
        if old is None or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = old + value
        elif isinstance(value, dict):
            out[key] = _added(old, value)
        elif isinstance(value, list):
            out[key] = (old + value)[:200]
    if "calls_per_feature" in out:
        worked = max(1, out["features"] - out["skipped"])
        out["calls_per_feature"] = out["calls"] / worked
        out["prompt_tokens_per_feature"] = out["tokens_in"] / worked
    return out


def config_record(**parts: Any) -> dict[str, Any]:
    out = {}
    for name, part in parts.items():
        data = asdict(part)
        for role in ("explainer", "simulator"):
            if isinstance(data.get(role), dict):
                data[role].pop("api_key", None)
        out[name] = data
    return out


@contextmanager
def stage_run(
    store: Store, run_id: int | None, kind: str, config: dict[str, Any], summary: Summary
) -> Iterator[tuple[int, str]]:
    """The stage's run (its own, unless inside a nightly run), closed with what happened.

    Yields (run id, holder). A stage that raises is recorded failed, one that is
    cancelled or interrupted is recorded interrupted: never done. However it ends, the
    claims its holder still has are dropped: each feature's release is queued as its work
    unwinds, and one lost to a cancellation would otherwise hold the feature until its
    lease ran out.
    """
    started = time.perf_counter()
    with heartbeat(store) as holder:
        own = run_id is None
        if own:
            sweep(store)
            run_id = store.start_run(kind, config, holder=holder)
        assert run_id is not None
        status = "failed"
        try:
            yield run_id, holder
            status = "done"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status = "interrupted"
            raise
        finally:
            summary.wall_s = time.perf_counter() - started
            store.drop_claims(holder)
            _close_run(store, run_id, own, summary, kind, status)


def use_primary(store: Store, scoring: ScoringConfig) -> None:
    """Make the config's primary method the one labels are ranked by (recomputed if changed)."""
    if store.primary_score_method() != scoring.primary:
        changed = store.set_primary_score_method(scoring.primary)
        log.info("labels now rank by %s scores (%d labels updated)", scoring.primary, changed)


def _needs_llm(methods: Sequence[str]) -> bool:
    return any(m in LLM_METHODS for m in methods)


# ---------------------------------------------------------------- the stages


async def aexplain_features(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig,
    explainer: ExplainerConfig | None = None,
    simulator: SimulatorConfig | None = None,
    run_id: int | None = None,
    *,
    scoring: ScoringConfig | None = None,
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
    scoring = scoring or ScoringConfig()
    style = make_explainer(explainer)
    summary = Summary(features=len(feature_ids))
    use_primary(store, scoring)

    def pending(ids: Sequence[int]) -> list[int]:
        return store.features_to_explain(
            None, model=llm.explainer.model, prompt=style.template.ref,
            max_failures=explainer.max_failures, relabel=relabel, relabel_human=relabel_human,
            feature_ids=ids,
        )  # fmt: skip

    config = config_record(llm=llm, explainer=explainer, simulator=simulator, scoring=scoring)
    with stage_run(store, run_id, "explain", config, summary) as (run_id, holder):
        todo = pending(feature_ids)
        summary.skipped += len(feature_ids) - len(todo)
        db = StoreWorker(store)
        explainer_client, judge = make_clients(llm, store, run_id, db, budget)
        label_methods = scoring.label_methods  # the primary is one of them
        ctx = _Context(
            store, db, holder, run_id, summary, scoring,
            make_scorers(label_methods, scoring, llm.simulator, judge, simulator), style,
            explainer_client,
            replace=REPLACE_ALL if relabel_human else REPLACE_MACHINE, score_new=explainer.score,
        )  # fmt: skip
        try:
            await _run_features(
                ctx, todo, "explain", lambda feature_id: pending([feature_id]),
                lambda ctx, feature_id, _: _explain_one(ctx, feature_id), budget,
                [explainer_client, judge],
            )  # fmt: skip
        finally:
            summary.explainer, summary.simulator = explainer_client.stats, judge.stats
            await explainer_client.close()
            await judge.close()
            db.close()
    return summary


async def ascore_features(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig | None,
    simulator: SimulatorConfig | None = None,
    run_id: int | None = None,
    *,
    scoring: ScoringConfig | None = None,
    rescore: bool = False,
    baseline: bool = False,
    budget: Budget | None = None,
) -> Summary:
    """Give the labels of `feature_ids` (and the features) every score they still lack.

    Current labels, and with `baseline` each feature's baseline label too; `rescore`
    scores them again, replacing each scorer's earlier score.
    """
    scoring = scoring or ScoringConfig()
    summary = Summary(features=len(feature_ids))
    use_primary(store, scoring)
    config = config_record(scoring=scoring, **({"llm": llm} if llm is not None else {}))
    with stage_run(store, run_id, "score", config, summary) as (run_id, holder):
        db = StoreWorker(store)
        judge = None
        if _needs_llm(scoring.methods):
            assert llm is not None, "LLM scorers need an LLMConfig"
            _, judge = make_clients(llm, store, run_id, db, budget)
        endpoint = llm.simulator if llm is not None else None
        scorers = make_scorers(scoring.methods, scoring, endpoint, judge, simulator)
        ctx = _Context(store, db, holder, run_id, summary, scoring, scorers, rescore=rescore)

        def jobs(ids: Sequence[int]) -> list[ScoreJob]:
            return pending_scores(store, scorers, ids, rescore=rescore, baseline=baseline)

        async def work(ctx: _Context, feature_id: int, todo: list[ScoreJob]) -> None:
            examples = await ctx.db.read(store.examples, feature_id, "holdout")
            holdout = await asyncio.to_thread(Windows.of, examples, ctx.scoring)
            await _score_jobs(ctx, todo, holdout)

        todo = list(dict.fromkeys(job.feature_id for job in jobs(feature_ids)))
        summary.skipped += len(feature_ids) - len(todo)
        try:
            await _run_features(
                ctx, todo, "score", lambda feature_id: jobs([feature_id]), work, budget,
                [judge] if judge is not None else [],
            )  # fmt: skip
        finally:
            if judge is not None:
                summary.simulator = judge.stats
                await judge.close()
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
    """Sync entry point; the local LLM server is started only when an LLM scorer needs it."""
    from gloss.pipeline.local_llm import endpoints

    scoring = kwargs.get("scoring") or ScoringConfig()
    if not _needs_llm(scoring.methods):
        return asyncio.run(ascore_features(store, feature_ids, None, **kwargs))
    with endpoints(llm or LLMConfig()) as resolved:
        return asyncio.run(ascore_features(store, feature_ids, resolved, **kwargs))


__all__ = [
    "ScoreJob",
    "Summary",
    "aexplain_features",
    "ascore_features",
    "explain_features",
    "pending_scores",
    "score_features",
    "use_primary",
]
