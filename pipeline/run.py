"""`gloss run`: the nightly job. Mine what is not mined, explain what has no label from
this explainer, score what has no score from this simulator — and nothing else.

Every feature's result is committed as soon as it is done, so a run killed at any
moment loses only the features in flight; the next run picks up the rest. One run
holds the database's `run` lock at a time. The run's row in `runs` says what
happened: stages, counts, failures, tokens, cost, duration, code version, config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gloss.pipeline.config import GlossConfig
from gloss.pipeline.explainers import make_explainer
from gloss.pipeline.explainers.baseline import baseline_explain
from gloss.pipeline.labeling import aexplain_features, ascore_features, pending_scores
from gloss.pipeline.liveness import heartbeat, holder_is_dead, holder_name, sweep
from gloss.pipeline.llm import Budget, LLMConfig, UnusableAnswer
from gloss.pipeline.local_llm import endpoints
from gloss.pipeline.scorers import Scorer, make_scorers
from gloss.pipeline.settings import ExplainerConfig, SimulatorConfig
from gloss.store import CANDIDATE, REPLACE_NONE, LockedError, Store, open_store

log = logging.getLogger(__name__)

LOCK = "run"
LEARN = "learn"  # [subject] source: the dictionary [learn] describes, learned on first use

# Exit codes: 0 all done; PARTIAL when work is left (budget, limit, failures);
# LockedError.exit_code (75) when another run holds the lock; 130 when interrupted.
EXIT_OK, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 10, 130


@dataclass
class Plan:
    """What a run would do: features per stage and the LLM work that implies."""

    mine: int = 0
    explain: int = 0
    score: int = 0
    explain_calls: int = 0
    score_calls: int = 0
    est_prompt_tokens: int = 0
    learn: str | None = None  # the dictionary to learn first, if it is not learned yet

    def lines(self) -> list[str]:
        return ([f"learn:   {self.learn}"] if self.learn else []) + [
            f"mine:    {self.mine} features",
            f"explain: {self.explain} features ({self.explain_calls} explainer calls)",
            f"score:   {self.score} labels ({self.score_calls} simulator calls)",
            f"LLM:     {self.explain_calls + self.score_calls} calls, "
            f"~{self.est_prompt_tokens:,} prompt tokens (estimated)",
        ]


@dataclass
class Report:
    run_id: int | None
    status: str  # done, partial, interrupted, failed
    counts: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    message: str = ""

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_OK, "partial": EXIT_PARTIAL, "interrupted": EXIT_INTERRUPTED}.get(
            self.status, 1
        )

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}: {self.status} in {self.seconds:.1f} s"]
        for stage, counts in self.counts.items():
            shown = ", ".join(
                f"{k} {v}" for k, v in counts.items() if not isinstance(v, dict | list)
            )
            out.append(f"  {stage}: {shown}")
        out.append(
            f"  LLM tokens {self.tokens_in:,} in / {self.tokens_out:,} out, cost {self.cost:.4f}"
        )
        if self.failures:
            out.append(
                f"  {len(self.failures)} failures, e.g. {self.failures[0].get('error', '')[:160]}"
            )
        if self.message:
            out.append(f"  {self.message}")
        return out


def code_version() -> str:
    """The git commit of the code, or the package version when not in a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gloss")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- the lock


def take_lock(store: Store, config: GlossConfig, holder: str) -> None:
    """The run lock; a lock left by a dead process on this host is taken over at once."""
    try:
        store.acquire_lock(LOCK, holder, stale_after_s=config.run.lock_stale_s)
    except LockedError:
        lock = store.lock(LOCK)
        if lock is None or not holder_is_dead(lock.holder):
            raise
        log.warning("taking over the run lock of %s, which is no longer running", lock.holder)
        store.release_lock(LOCK, lock.holder)
        store.acquire_lock(LOCK, holder, stale_after_s=config.run.lock_stale_s)


# ---------------------------------------------------------------- stages


def open_source(
    store: Store, config: GlossConfig, *, run_id: int | None = None, dry_run: bool = False
) -> tuple[Any, Any, int | None]:
    """Load the subject model and feature source, and register them in the store.

    `source = "learn"` is the dictionary that [learn] describes at the subject's hook:
    learned now inside run `run_id` unless it is in the cache already. A dry run
    learns nothing; it returns no source then.
    """
    from gloss.pipeline.mining import mining_points
    from gloss.pipeline.sources import load_source
    from gloss.pipeline.subjects import load_subject

    s = config.subject
    subject = load_subject(s.model, gguf_file=s.gguf_file, device=s.device)
    hook = subject.canonical_hook(s.hook)
    if s.source == LEARN:
        from gloss.pipeline.corpus import Corpus
        from gloss.pipeline.learn import cached, learn

        corpus = Corpus(config.corpus, subject.encode)
        if dry_run and cached(subject, hook, corpus, config.learn) is None:
            return subject, None, None
        result = learn(store, subject, hook, corpus, config.learn, parent_run_id=run_id)
        return subject, result.source, result.source_id
    source = load_source(s.source, subject.hook_width(hook))
    mining_points(subject, source, hook)  # a spec the source cannot mine is refused here
    subject_id = store.get_or_create_subject(**subject.identity())
    source_id = store.get_or_create_source(
        subject_id,
        hook,
        source.kind,
        source.width,
        source.params_hash,
        path=source.path,
        config=source.config,
    )
    return subject, source, source_id


def _unmined(store: Store, source_id: int, width: int, indices: list[int] | None) -> list[int]:
    done = store.feature_statuses(source_id)
    wanted = range(width) if indices is None else [i for i in indices if i < width]
    return [i for i in wanted if done.get(i) not in ("mined", "dead")]


def _templates(config: GlossConfig, llm: LLMConfig) -> tuple[ExplainerConfig, SimulatorConfig]:
    """The explainer and simulator settings as they apply to these endpoints."""
    return config.explainer.for_endpoint(llm.explainer), config.simulator.for_endpoint(
        llm.simulator
    )


def _scorers(config: GlossConfig, llm: LLMConfig, simulator: SimulatorConfig) -> list[Scorer]:
    """The run's scorers, without a client: enough to ask the store what they still owe."""
    return make_scorers(config.scoring.methods, config.scoring, llm.simulator, None, simulator)


def plan(store: Store, config: GlossConfig) -> Plan:
    """The dry run: what `gloss run` would do now, without learning, mining or calling an LLM."""
    subject, source, source_id = open_source(store, config, dry_run=True)
    if source is None:  # the dictionary is learned first: everything after it is to do
        learn = config.learn
        indices = config.subject.indices(width=learn.width)
        out = Plan(mine=len(indices) if indices is not None else learn.width)
        out.learn = (
            f"a dictionary of {learn.width} latents (k={learn.k}) at "
            f"{subject.canonical_hook(config.subject.hook)}, {learn.train_tokens:,} tokens"
        )
        out.explain = min(out.mine, config.run.limit or out.mine)
        explainer = config.explainer.for_endpoint(config.llm.explainer)
        out.explain_calls = out.explain * explainer.candidates
        llm_scorers = sum(1 for m in config.scoring.methods if m != "embedding")
        out.score_calls = out.explain * llm_scorers if explainer.score else 0
        out.est_prompt_tokens = _estimate_prompt_tokens(store, config, explainer, [], out)
        return out
    indices = config.subject.indices(width=source.width)
    to_mine = _unmined(store, source_id, source.width, indices)
    explainer, simulator = _templates(config, config.llm)
    to_explain = store.features_to_explain(
        source_id,
        model=config.llm.explainer.model,
        prompt=explainer.template().ref,
        max_failures=explainer.max_failures,
        relabel_human=config.run.relabel_human,
        indices=indices,
    )
    cap = config.run.limit if config.run.limit is not None else 10**9
    n_explain = min(len(to_explain) + len(to_mine), cap)
    jobs = pending_scores(
        store, _scorers(config, config.llm, simulator), source_id=source_id, indices=indices,
        max_failures=explainer.max_failures,
    )  # fmt: skip
    to_score = list(dict.fromkeys(job.feature_id for job in jobs))
    llm_scorers = sum(1 for m in config.scoring.label_methods if m != "embedding")
    out = Plan(
        mine=len(to_mine),
        explain=n_explain,
        score=min(len(set(to_score) - set(to_explain)), cap),
        explain_calls=n_explain * explainer.candidates,
    )
    per_label = llm_scorers + ("intruder" in config.scoring.methods)
    out.score_calls = out.score * per_label + (n_explain * llm_scorers if explainer.score else 0)
    out.est_prompt_tokens = _estimate_prompt_tokens(store, config, explainer, to_explain, out)
    return out


def _estimate_prompt_tokens(
    store: Store, config: GlossConfig, explainer: ExplainerConfig, sample: list[int], p: Plan
) -> int:
    """Prompt tokens from rendering the explain prompt of a few mined features (~4 chars a token)."""
    style = make_explainer(explainer)
    sizes = []
    for feature_id in sample[:5]:
        try:
            sizes.append(len(style.prompt(store.examples(feature_id, "explain"))) / 4)
        except UnusableAnswer:  # nothing to show: no call will be made
            continue
    per_call = (
        sum(sizes) / len(sizes) if sizes else explainer.max_examples * config.corpus.ctx_len * 3
    )
    return int(per_call * (p.explain_calls + p.score_calls))


def nightly(config: GlossConfig, *, store: Store | None = None) -> Report:
    """Run every stage once, incrementally, under the run lock and the budget."""
    own_store = store is None
    store = store or open_store(config.database)
    started = time.perf_counter()
    holder = holder_name()
    take_lock(store, config, holder)
    report = Report(None, "failed")
    try:
        sweep(store, config.run.lock_stale_s)
        run_id = report.run_id = store.start_run(
            "run", _config_record(config), code_version(), holder=holder
        )
        store.set_lock_run(LOCK, holder, run_id)
        budget = Budget(config.run.max_llm_tokens, config.run.max_cost)
        with heartbeat(store, holder):
            try:
                report.status = _stages(store, config, run_id, report, budget)
            except KeyboardInterrupt:
                report.status = "interrupted"
                report.message = "interrupted; the next run finishes the rest"
            except Exception as error:
                report.message = str(error)[:2000] or type(error).__name__
                raise
            finally:
                report.seconds = time.perf_counter() - started
                run = store.run(run_id)
                report.counts = dict(run.counts)
                report.failures = list(run.failures)
                report.tokens_in, report.tokens_out = run.tokens_in, run.tokens_out
                report.cost = run.cost
                store.finish_run(run_id, report.status, report.message or None)
    finally:
        store.release_lock(LOCK, holder)
        if own_store:
            store.close()
    return report


def _stages(store: Store, config: GlossConfig, run_id: int, report: Report, budget: Budget) -> str:
    from gloss.pipeline.corpus import Corpus
    from gloss.pipeline.mining import mine, mined_otherwise

    reasons: list[str] = []
    subject, source, source_id = open_source(store, config, run_id=run_id)
    indices = config.subject.indices(width=source.width)
    to_mine = _unmined(store, source_id, source.width, indices)
    if to_mine:
        corpus = Corpus(config.corpus, subject.encode)
        result = mine(
            store, subject, source, config.subject.hook, corpus, config.mining, to_mine,
            parent_run_id=run_id,
        )  # fmt: skip
        mined = {"features": result.features, "dead": result.dead, "tokens": result.tokens}
    else:
        mined = {"features": 0, "dead": 0, "tokens": 0}
    stale = mined_otherwise(store, source_id, indices, config.corpus, config.mining)
    store.update_run(run_id, counts={"mine": {**mined, "stale": len(stale)}})
    del subject, source  # the subject model is not needed past mining
    mined_ids = [f.id for f in store.features(source_id, status="mined", indices=indices)]
    if config.run.baseline:
        baseline_explain(store, mined_ids, run_id)

    limit = config.run.limit
    with endpoints(config.llm, config.local_server) as llm:
        explainer, simulator = _templates(config, llm)
        to_explain = store.features_to_explain(
            source_id,
            model=llm.explainer.model,
            prompt=explainer.template().ref,
            max_failures=explainer.max_failures,
            relabel_human=config.run.relabel_human,
            indices=indices,
        )
        if limit is not None and len(to_explain) > limit:
            reasons.append(
                f"limit {limit} left {len(to_explain) - limit} features for later runs to explain"
            )
            to_explain = to_explain[:limit]
        if to_explain:
            summary = asyncio.run(
                aexplain_features(
                    store, to_explain, llm, explainer, simulator, run_id,
                    scoring=config.scoring, relabel_human=config.run.relabel_human,
                    budget=budget,
                )
            )  # fmt: skip
            reasons += _left_undone(summary, "features")
            if summary.failed and llm.explainer.grammar:
                reasons.append(
                    "the bundled model's answers were refused for those (features.last_error "
                    "says why): they keep their baseline label, and a stronger model labels "
                    "them, see 'LLM endpoints' in the README"
                )
        if config.run.baseline:
            promoted = _promote_baselines(store, mined_ids)
            counts = store.run(run_id).counts
            store.update_run(run_id, counts={**counts, "baseline": {"promoted": promoted}})
        to_score = []
        if not budget.exhausted:
            jobs = pending_scores(
                store, _scorers(config, llm, simulator), source_id=source_id, indices=indices,
                max_failures=explainer.max_failures,
            )  # fmt: skip
            to_score = list(dict.fromkeys(job.feature_id for job in jobs))
        if limit is not None and len(to_score) > limit:
            reasons.append(f"limit {limit} left {len(to_score) - limit} labels unscored")
            to_score = to_score[:limit]
        if to_score:
            summary = asyncio.run(
                ascore_features(
                    store, to_score, llm, simulator, run_id, scoring=config.scoring, budget=budget
                )
            )
            reasons += _left_undone(summary, "labels")
        labels = _label_counts(store, source_id, mined_ids)
        store.update_run(run_id, counts={**store.run(run_id).counts, "labels": labels})
    if budget.exhausted:
        reasons.insert(0, f"budget reached ({budget.describe()}): stopped cleanly")
    report.message = "; ".join(reasons)
    return "partial" if reasons else "done"


def _label_counts(store: Store, source_id: int, feature_ids: list[int]) -> dict[str, int]:
    """Who wrote the current labels of these features: the report a first run ends with."""
    current = {row.feature_id: row.author_kind for row in store.current_labels(source_id).values()}
    kinds = [current.get(feature_id) for feature_id in feature_ids]
    return {
        "llm": kinds.count("model"),
        "baseline": kinds.count("baseline"),
        "human": kinds.count("human"),
        "none": kinds.count(None),
    }


def _left_undone(summary: Any, what: str) -> list[str]:
    reasons = []
    if summary.failed:
        reasons.append(f"{summary.failed} {what} failed (retried by the next run)")
    if summary.claimed_elsewhere:
        reasons.append(f"{summary.claimed_elsewhere} {what} were in another process's hands")
    return reasons


def _promote_baselines(store: Store, feature_ids: list[int]) -> int:
    """A feature with no current label gets its baseline label until an LLM label succeeds."""
    promoted = 0
    for feature_id in feature_ids:
        if store.current_explanation(feature_id) is not None:
            continue
        baseline = next(
            (e for e in store.explanations(feature_id) if e.author_kind == "baseline"), None
        )
        if baseline is not None and baseline.status == CANDIDATE:
            promoted += store.make_current(baseline.id, replace=REPLACE_NONE)
    return promoted


def _config_record(config: GlossConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    for role in ("explainer", "simulator"):
        data["llm"][role].pop("api_key", None)
    return data
