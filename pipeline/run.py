"""`gloss run`: the nightly job. Mine what is not mined, explain what has no label from
this explainer, score what has no score from this simulator — and nothing else.

Every feature's result is committed as soon as it is done, so a run killed at any
moment loses only the features in flight; the next run picks up the rest.

Each `gloss run` process is a *worker* in the run group of its plan (`plan_key`): on
PostgreSQL, any number of workers, on any machines, join the running group and share
its work through leases in the database (mining units, feature claims) and its budget
(booked before each LLM call). A worker goes round mine, explain and score until
nothing is left that it may take; what another worker holds it leaves, and takes over
if that worker dies. SQLite takes one process at a time: the `run` lock.

The worker's row in `runs` says what it did: stages, counts, failures, tokens, cost,
duration, code version, config; its group's row, what all of them spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gloss.pipeline.config import GlossConfig
from gloss.pipeline.explainers import effects_of, make_explainer
from gloss.pipeline.explainers.baseline import baseline_explain
from gloss.pipeline.labeling import aexplain_features, ascore_features, pending_scores
from gloss.pipeline.liveness import heartbeat, holder_is_dead, holder_name, sweep
from gloss.pipeline.llm import Budget, LLMConfig, UnusableAnswer
from gloss.pipeline.local_llm import endpoints
from gloss.pipeline.scorers import Scorer, make_scorers
from gloss.pipeline.settings import ExplainerConfig, SimulatorConfig
from gloss.store import CANDIDATE, REPLACE_NONE, InputError, LockedError, Store, open_store

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
    effects: int = 0  # features whose ablation and steering effects are to be measured
    explain: int = 0
    score: int = 0
    explain_calls: int = 0
    score_calls: int = 0
    est_prompt_tokens: int = 0
    learn: str | None = None  # the dictionary to learn first, if it is not learned yet

    def lines(self) -> list[str]:
        return ([f"learn:   {self.learn}"] if self.learn else []) + [
            f"mine:    {self.mine} features",
            f"effects: {self.effects} features (forward passes of the subject, no LLM)",
            f"explain: {self.explain} features ({self.explain_calls} explainer calls)",
            f"score:   {self.score} labels ({self.score_calls} simulator calls)",
            f"LLM:     {self.explain_calls + self.score_calls} calls, "
            f"~{self.est_prompt_tokens:,} prompt tokens (estimated)",
        ]


@dataclass
class Report:
    run_id: int | None  # this worker's run
    status: str  # done, partial, interrupted, failed
    counts: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    message: str = ""
    group_id: int | None = None
    group_status: str | None = None  # set by the last worker of the group to end

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_OK, "partial": EXIT_PARTIAL, "interrupted": EXIT_INTERRUPTED}.get(
            self.status, 1
        )

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}: {self.status} in {self.seconds:.1f} s"]
        if self.group_id is not None:
            ended = f", which ended {self.group_status}" if self.group_status else ""
            out[0] += f" (a worker of run group {self.group_id}{ended})"
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
    """SQLite's one-run lock; a lock left by a dead process on this host is taken over at once."""
    try:
        try:
            store.acquire_lock(LOCK, holder, stale_after_s=config.run.lock_stale_s)
        except LockedError:
            lock = store.lock(LOCK)
            if lock is None or not holder_is_dead(lock.holder):
                raise
            log.warning("taking over the run lock of %s, which is no longer running", lock.holder)
            store.release_lock(LOCK, lock.holder)
            store.acquire_lock(LOCK, holder, stale_after_s=config.run.lock_stale_s)
    except LockedError as error:
        raise LockedError(
            f"{error}. SQLite takes one gloss run at a time: for several workers at once, "
            "point them all at one PostgreSQL database (database = "
            '"postgresql+psycopg://user@host/dbname")'
        ) from None


def plan_key(config: GlossConfig) -> str:
    """What makes `gloss run` processes workers of one group: the same work (subject,
    source, features, corpus, mining, explainer, simulator, scoring, models) under the
    same limits. Where a worker runs and whom it calls (device, batch size, endpoint
    URLs, keys, concurrency, local server) are its own."""
    record = _config_record(config)
    for section, key in (("subject", "device"), ("mining", "batch_size"), ("learn", "device")):
        record[section].pop(key, None)
    record["llm"] = {role: endpoint["model"] for role, endpoint in record["llm"].items()}
    record["run"] = {
        key: record["run"][key]
        for key in ("limit", "max_llm_tokens", "max_cost", "relabel_human", "baseline")
    }
    del record["database"], record["local_server"]
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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
        effects=_effects_to_do(store, config, subject, source_id, indices, len(to_mine), cap),
        explain=n_explain,
        score=min(len(set(to_score) - set(to_explain)), cap),
        explain_calls=n_explain * explainer.candidates,
    )
    per_label = llm_scorers + ("intruder" in config.scoring.methods)
    out.score_calls = out.score * per_label + (n_explain * llm_scorers if explainer.score else 0)
    out.est_prompt_tokens = _estimate_prompt_tokens(store, config, explainer, to_explain, out)
    return out


def _effects_to_do(
    store: Store, config: GlossConfig, subject: Any, source_id: int, indices, unmined: int, cap
) -> int:
    """Features a run would measure effects of: mined ones that lack them, and the new."""
    from gloss.pipeline.effects import pending

    if not (config.effects.enabled and subject.causal):
        return 0
    model = store.subject_of(source_id)["name"]
    return min(len(pending(store, source_id, model, indices=indices)) + unmined, cap)


def group_status(store: Store, config: GlossConfig) -> dict[str, Any] | None:
    """The newest run group of this config's plan, from any machine: its workers (host,
    pid, device, what each committed, last heartbeat), what it spent, and the work left."""
    from gloss.store.models import utcnow

    groups = store.runs(1, kind="group", plan_key=plan_key(config))
    if not groups:
        return None
    group = groups[0]
    workers = sorted(store.runs(10_000, parent_id=group.id), key=lambda w: w.id)
    output = store.worker_output([w.id for w in workers])
    now = utcnow()
    rows = []
    for w in workers:
        host, _, pid = (w.holder or "").rpartition(":")
        beat = (now - w.heartbeat_at).total_seconds() if w.heartbeat_at else None
        rows.append({"run": w.id, "host": host, "pid": pid, "device": w.device, "status": w.status,
                     **output[w.id], "heartbeat_s_ago": beat})  # fmt: skip
    tokens_in, tokens_out, cost = store.group_spent(group.id)
    return {
        "group": group.id,
        "status": group.status,
        "started_at": group.started_at,
        "finished_at": group.finished_at,
        "tokens": tokens_in + tokens_out,
        "cost": cost,
        "max_tokens": group.max_tokens,
        "max_cost": group.max_cost,
        "message": group.message,
        "workers": rows,
        "left": plan(store, config).__dict__,
    }


def status_lines(status: dict[str, Any]) -> list[str]:
    budget = []
    if status["max_tokens"] is not None:
        budget.append(f"of {status['max_tokens']:,} ")
    out = [
        f"run group {status['group']}: {status['status']}, started "
        f"{status['started_at']:%Y-%m-%d %H:%M:%S} UTC"
        + (f", ended {status['finished_at']:%H:%M:%S}" if status["finished_at"] else ""),
        f"  LLM tokens {status['tokens']:,} {''.join(budget)}spent, cost {status['cost']:.4f}"
        + (f" of {status['max_cost']:.4f}" if status["max_cost"] is not None else ""),
        f"  {'run':>6}  {'host':<20} {'pid':>7}  {'device':<7} {'status':<11} "
        f"{'mined':>6} {'labels':>6} {'scores':>6}  heartbeat",
    ]
    for w in status["workers"]:
        beat = f"{w['heartbeat_s_ago']:.0f}s ago" if w["heartbeat_s_ago"] is not None else "-"
        out.append(
            f"  {w['run']:>6}  {w['host'][:20]:<20} {w['pid']:>7}  {(w['device'] or '-'):<7} "
            f"{w['status']:<11} {w['mined']:>6} {w['labels']:>6} {w['scores']:>6}  {beat}"
        )
    left = status["left"]
    out.append(
        f"  left: mine {left['mine']}, explain {left['explain']}, score {left['score']} features"
    )
    if status["message"]:
        out.append(f"  {status['message']}")
    return out


def _estimate_prompt_tokens(
    store: Store, config: GlossConfig, explainer: ExplainerConfig, sample: list[int], p: Plan
) -> int:
    """Prompt tokens from rendering the explain prompt of a few mined features (~4 chars a token)."""
    style = make_explainer(explainer)
    sizes = []
    for feature_id in sample[:5]:
        try:
            effects = effects_of(store.feature_scores(feature_id)) if style.uses_effects else None
            sizes.append(len(style.prompt(store.examples(feature_id, "explain"), effects)) / 4)
        except UnusableAnswer:  # nothing to show: no call will be made
            continue
    per_call = (
        sum(sizes) / len(sizes) if sizes else explainer.max_examples * config.corpus.ctx_len * 3
    )
    return int(per_call * (p.explain_calls + p.score_calls))


def nightly(config: GlossConfig, *, store: Store | None = None) -> Report:
    """Work on the plan as one worker of its run group, until nothing is left to take."""
    own_store = store is None
    store = store or open_store(config.database)
    started = time.perf_counter()
    holder = holder_name()
    alone = store.dialect == "sqlite"
    if alone:
        take_lock(store, config, holder)
    report = Report(None, "failed")
    try:
        sweep(store, config.run.lock_stale_s)
        group_id, run_id = store.join_group(
            plan_key(config), _config_record(config), code_version(), holder=holder,
            device=config.subject.device, max_tokens=config.run.max_llm_tokens,
            max_cost=config.run.max_cost, stale_after_s=config.run.lock_stale_s,
        )  # fmt: skip
        report.run_id, report.group_id = run_id, group_id
        if alone:
            store.set_lock_run(LOCK, holder, run_id)
        limited = config.run.max_llm_tokens is not None or config.run.max_cost is not None
        budget = Budget(
            config.run.max_llm_tokens,
            config.run.max_cost,
            group=(store, group_id, run_id) if limited else None,
        )
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
                report.group_status = store.leave_group(
                    group_id, run_id, report.status, report.message or None
                )
    finally:
        if alone:
            store.release_lock(LOCK, holder)
        if own_store:
            store.close()
    return report


@dataclass
class _Worker:
    """One worker's state across its rounds of mine, explain and score."""

    store: Store
    config: GlossConfig
    run_id: int
    budget: Budget
    subject: Any
    source: Any
    source_id: int
    indices: list[int] | None
    did: int = 0  # features this round mined, explained or scored (or failed)
    elsewhere: int = 0  # features this round left because another worker held them
    limited: bool = False  # a stage was cut by [run] limit: no further rounds
    failed: set[int] = field(default_factory=set)  # tried once per run, retried by the next
    used: dict[str, int] = field(default_factory=dict)  # features given to each stage so far
    reasons: list[str] = field(default_factory=list)
    causal: bool | None = None  # the subject predicts next tokens: effects apply

    def mine(self) -> None:
        from gloss.pipeline.corpus import Corpus
        from gloss.pipeline.mining import mine, mined_otherwise

        store, config = self.store, self.config
        to_mine = _unmined(store, self.source_id, self.width, self.indices)
        if to_mine and self.subject is None:  # a dead worker's units, after this one let go
            self.subject, self.source, _ = open_source(store, config, run_id=self.run_id)
        counts = dict(store.run(self.run_id).counts.get("mine", {}))
        if to_mine:
            corpus = Corpus(config.corpus, self.subject.encode)
            result = mine(
                store, self.subject, self.source, config.subject.hook, corpus, config.mining,
                to_mine, parent_run_id=self.run_id,
            )  # fmt: skip
            self.did += result.features + result.dead
            self.elsewhere += result.elsewhere
            for key in ("features", "dead", "tokens"):
                counts[key] = counts.get(key, 0) + getattr(result, key)
        if "stale" not in counts:
            stale = mined_otherwise(
                store, self.source_id, self.indices, config.corpus, config.mining
            )
            counts["stale"] = len(stale)
        store.update_run(self.run_id, counts={**store.run(self.run_id).counts, "mine": counts})

    def effects(self) -> None:
        """Measure the effects of mined features that lack them (causal subjects, when
        [effects] enabled), then let the subject model go if nothing is left to mine."""
        try:
            if self.config.effects.enabled and self.causal is not False:
                self._effects()
        finally:
            if not _unmined(self.store, self.source_id, self.width, self.indices):
                self.subject = self.source = None  # the model is not needed past this

    def _effects(self) -> None:
        from gloss.pipeline.effects import compute_effects, pending

        store = self.store
        model = store.subject_of(self.source_id)["name"]
        todo = [
            f for f in pending(store, self.source_id, model, indices=self.indices)
            if f not in self.failed
        ]  # fmt: skip
        if not todo:
            return
        if self.subject is None:
            self.subject, self.source, _ = open_source(store, self.config, run_id=self.run_id)
        self.causal = bool(self.subject.causal)
        if not self.causal:
            return
        todo = self._cut(todo, "effects", "limit {limit} left {n} features without effects")
        counts = dict(store.run(self.run_id).counts.get("effects", {}))
        try:
            done = compute_effects(
                store, self.subject, self.source, store.source(self.source_id),
                self.config.effects, run_id=self.run_id, feature_ids=todo,
            )  # fmt: skip
        except InputError as error:  # a source gloss cannot intervene on (a transcoder)
            self.causal = False
            counts["note"] = str(error)
        else:
            self.did += done["measured"]
            for key, value in done.items():
                counts[key] = counts.get(key, 0) + value
        store.update_run(self.run_id, counts={**store.run(self.run_id).counts, "effects": counts})

    @property
    def width(self) -> int:
        return self.store.source(self.source_id).width

    def label(self, llm: LLMConfig) -> None:
        store, config, budget = self.store, self.config, self.budget
        mined_ids = [
            f.id for f in store.features(self.source_id, status="mined", indices=self.indices)
        ]
        if config.run.baseline:
            baseline_explain(store, mined_ids, self.run_id)
        explainer, simulator = _templates(config, llm)
        to_explain = store.features_to_explain(
            self.source_id,
            model=llm.explainer.model,
            prompt=explainer.template().ref,
            max_failures=explainer.max_failures,
            relabel_human=config.run.relabel_human,
            indices=self.indices,
        )
        to_explain = self._cut(
            [f for f in to_explain if f not in self.failed],
            "explain",
            "limit {limit} left {n} features for later runs to explain",
        )
        if to_explain:
            summary = asyncio.run(
                aexplain_features(
                    store, to_explain, llm, explainer, simulator, self.run_id,
                    scoring=config.scoring, relabel_human=config.run.relabel_human,
                    budget=budget,
                )
            )  # fmt: skip
            self._took(summary, "features")
            if summary.failed and llm.explainer.grammar:
                self.reasons.append(
                    "the bundled model's answers were refused for those (features.last_error "
                    "says why): they keep their baseline label, and a stronger model labels "
                    "them, see 'LLM endpoints' in the README"
                )
        if config.run.baseline:
            promoted = _promote_baselines(store, self.source_id, mined_ids)
            counts = store.run(self.run_id).counts
            before = counts.get("baseline", {}).get("promoted", 0)
            store.update_run(
                self.run_id, counts={**counts, "baseline": {"promoted": before + promoted}}
            )
        # The round's new labels are embedded for search by meaning while scoring waits on
        # the LLM, so the embedding costs the run CPU but little time.
        with ThreadPoolExecutor(1, thread_name_prefix="embed") as embedding:
            embedded = embedding.submit(store.embed_labels)
            self.score(llm, simulator, explainer)
        labels = _label_counts(store, self.source_id, mined_ids)
        counts = store.run(self.run_id).counts
        vectors = counts.get("search", {}).get("embedded", 0) + embedded.result()
        store.update_run(
            self.run_id, counts={**counts, "labels": labels, "search": {"embedded": vectors}}
        )

    def score(self, llm: LLMConfig, simulator: SimulatorConfig, explainer: ExplainerConfig) -> None:
        store, config, budget = self.store, self.config, self.budget
        to_score: list[int] = []
        if not budget.exhausted:
            jobs = pending_scores(
                store, _scorers(config, llm, simulator), source_id=self.source_id,
                indices=self.indices, max_failures=explainer.max_failures,
            )  # fmt: skip
            to_score = [
                f for f in dict.fromkeys(job.feature_id for job in jobs) if f not in self.failed
            ]
        to_score = self._cut(to_score, "score", "limit {limit} left {n} labels unscored")
        if to_score:
            summary = asyncio.run(
                ascore_features(
                    store, to_score, llm, simulator, self.run_id, scoring=config.scoring,
                    budget=budget,
                )
            )  # fmt: skip
            self._took(summary, "labels")

    def _cut(self, todo: list[int], stage: str, left: str) -> list[int]:
        """At most [run] limit features per stage over all of this run's rounds."""
        limit = self.config.run.limit
        if limit is None:
            return todo
        allowed = max(0, limit - self.used.get(stage, 0))
        if len(todo) > allowed:
            self.limited = True
            self.reasons.append(left.format(limit=limit, n=len(todo) - allowed))
            todo = todo[:allowed]
        self.used[stage] = self.used.get(stage, 0) + len(todo)
        return todo

    def _took(self, summary: Any, what: str) -> None:
        self.did += summary.explained + summary.scored + summary.failed
        self.elsewhere += summary.claimed_elsewhere
        self.failed |= {f["feature_id"] for f in summary.failures}
        if summary.failed:
            self.reasons.append(f"{summary.failed} {what} failed (retried by the next run)")


def _stages(store: Store, config: GlossConfig, run_id: int, report: Report, budget: Budget) -> str:
    """Rounds of mine, explain and score until nothing is left that this worker may take.

    A round leaves what other workers hold (mining units, feature claims). While any is
    held, the worker goes round again, after `poll_s` when its round did nothing: the
    holder finishes that work, or dies and this worker takes it over (`sweep`, leases).
    """
    subject, source, source_id = open_source(store, config, run_id=run_id)
    indices = config.subject.indices(width=source.width)
    worker = _Worker(store, config, run_id, budget, subject, source, source_id, indices)
    del subject, source
    worker.mine()  # before the local LLM server starts: mining has the machine to itself
    worker.effects()
    with endpoints(config.llm, config.local_server) as llm:
        first = True
        while True:
            if not first:
                sweep(store, config.run.lock_stale_s)
                worker.mine()
                worker.effects()
            first = False
            worker.label(llm)
            if budget.exhausted or worker.limited or not worker.elsewhere:
                break
            if not worker.did:
                time.sleep(config.run.poll_s)
            worker.did = worker.elsewhere = 0
    reasons = list(dict.fromkeys(worker.reasons))
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


def _promote_baselines(store: Store, source_id: int, feature_ids: list[int]) -> int:
    """A feature with no current label gets its baseline label until an LLM label succeeds."""
    current = {row.feature_id for row in store.current_labels(source_id).values()}
    waiting = [f for f in feature_ids if f not in current]
    promoted = 0
    for labels in store.label_statuses(waiting, "baseline").values():
        label_id, status = labels[0]
        if status == CANDIDATE:
            promoted += store.make_current(label_id, replace=REPLACE_NONE)
    return promoted


def _config_record(config: GlossConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    for role in ("explainer", "simulator"):
        data["llm"][role].pop("api_key", None)
    return data
