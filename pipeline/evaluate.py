"""`gloss eval`: do the scores mean anything?

A scorer is worth reporting only if it gives a feature's own label a better score than
the label of another feature. Over a set of labeled features, each scorer scores every
feature's own current label and, on the same windows, the label of another feature
(a random derangement: no feature keeps its own). Per scorer it reports the mean own
and shuffled scores, AUC(own > shuffled) for each of two seeds (the derangement and
the scorer's own sampling both change) and their spread, and the calls and tokens it
spent per feature. A scorer that cannot tell the labels apart is reported as such,
never dropped. Intruder detection needs no label: its mean accuracy is shown against
chance instead. An undefined score (a label that predicts no activation at all, too
few windows) ranks below every defined one in the AUC, as it does in best-of-n, and
is left out of the means.

With two prompt names (`compare_prompts`, `gloss eval --compare A,B`) labels compete
instead: on every feature that has a label written with each prompt (the newest of each,
rejected ones ignored), every scorer that judges labels scores both on the same windows
with the same seed. Per scorer it reports the mean score of each prompt's labels, the mean
paired difference B - A with a 95% bootstrap confidence interval over features, how often
B wins (ties half, undefined ranking last as above), and a verdict: one prompt is better
only where the interval excludes 0.

Nothing is written to `scores`: a shuffled label's score is not a fact about any label.
The run is recorded in `runs` (kind `eval`) with the table in its counts (`report`, or
`compare`), and every LLM call lands in the ledger (and cache) as always.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from gloss.pipeline.labeling import Summary, config_record, stage_run
from gloss.pipeline.llm import LLMClient, make_clients
from gloss.pipeline.scorers import SCORERS, Outcome, Scorer, Windows, make_scorers
from gloss.pipeline.scoring import auc
from gloss.pipeline.settings import LLMConfig, ScoringConfig, SimulatorConfig
from gloss.store import InputError, LLMError, Store, StoreWorker

UNDEFINED = -2.0  # below every score: an undefined score ranks last, as in best-of-n
TELLS = 0.6  # AUC a scorer must reach at every seed to count as telling labels apart
CHANCE = 0.55  # at or below this at any seed it cannot
RESAMPLES = 2000  # bootstrap resamples of the features for a comparison's confidence interval


@dataclass
class MethodResult:
    method: str
    features: int
    own: float | None  # mean over features and seeds (defined scores only)
    shuffled: float | None
    aucs: list[float | None]  # AUC(own > shuffled), one per seed
    spread: float | None  # max - min of the AUCs
    undefined: int  # scores that came out undefined (too few windows, ...)
    failed: int  # LLM calls that failed for good
    calls_per_feature: float
    tokens_per_feature: float
    chance: float | None = None  # intruder: the accuracy of guessing
    verdict: str = ""


@dataclass
class EvalReport:
    features: int
    seeds: list[int]
    results: list[MethodResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        head = (
            f"{'method':<11} {'own':>6} {'shuffled':>8} "
            + " ".join(f"{'AUC s' + str(s):>7}" for s in self.seeds)
            + f" {'spread':>6} {'calls/f':>7} {'tokens/f':>8}  verdict"
        )
        out = [f"{self.features} features, seeds {', '.join(map(str, self.seeds))}", head]
        for r in self.results:
            aucs = " ".join(f"{_num(a):>7}" for a in r.aucs) if r.chance is None else " ".join(
                f"{'':>7}" for _ in self.seeds)  # fmt: skip
            out.append(
                f"{r.method:<11} {_num(r.own):>6} {_num(r.shuffled):>8} {aucs} "
                f"{_num(r.spread):>6} {r.calls_per_feature:>7.2f} {r.tokens_per_feature:>8.0f}"
                f"  {r.verdict}"
            )
        return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def derangement(n: int, rng: random.Random) -> list[int]:
    """A random permutation with no fixed point (Sattolo's algorithm: one n-cycle)."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


async def aevaluate(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig | None,
    simulator: SimulatorConfig | None = None,
    scoring: ScoringConfig | None = None,
    seeds: Sequence[int] = (0, 1),
    baseline: bool = False,
    limit: int | None = None,
) -> EvalReport:
    """Score own and shuffled labels of `feature_ids` with every scorer of `scoring`.

    The features are those of `feature_ids` whose current label an LLM or a person wrote
    (with `baseline`, baseline labels too), the first `limit` of them.
    """
    scoring = scoring or ScoringConfig()
    labels = {}
    for feature_id in feature_ids:
        current = store.current_explanation(feature_id)
        if current is not None and (baseline or current.author_kind != "baseline"):
            labels[feature_id] = current.text
        if limit is not None and len(labels) >= limit:
            break
    ids = list(labels)
    if len(ids) < 2:
        raise InputError(
            f"gloss eval needs 2 or more features with a label an LLM or a person wrote, "
            f"found {len(ids)}: run gloss explain (or gloss run) first"
            + ("" if baseline else ", or pass --baseline to judge baseline labels")
        )
    report = EvalReport(features=len(ids), seeds=list(seeds))
    summary = Summary(features=len(ids))
    config = config_record(scoring=scoring, **({"llm": llm} if llm is not None else {}))
    with stage_run(store, None, "eval", config, summary) as (run_id, _holder):
        async with _scorers(store, run_id, llm, scoring.methods, scoring, simulator,
                            summary) as scorers:  # fmt: skip
            holdout = {f: Windows.of(store.examples(f, "holdout"), scoring) for f in ids}
            for scorer in scorers:
                report.results.append(
                    await _evaluate(scorer, ids, labels, holdout, list(seeds), scoring.seed)
                )
        store.update_run(run_id, counts={"report": report.as_dict()})
    return report


@asynccontextmanager
async def _scorers(
    store: Store,
    run_id: int,
    llm: LLMConfig | None,
    methods: tuple[str, ...],
    scoring: ScoringConfig,
    simulator: SimulatorConfig | None,
    summary: Summary,
) -> AsyncIterator[list[Scorer]]:
    """The scorers of `methods`, LLM ones judging through one client for the run's ledger;
    the client's calls end up in `summary`."""
    db = StoreWorker(store)
    judge: LLMClient | None = None
    try:
        if any(m != "embedding" for m in methods):
            if llm is None:
                raise InputError("LLM scorers need an endpoint")
            _, judge = make_clients(llm, store, run_id, db)
        endpoint = llm.simulator if llm is not None else None
        yield make_scorers(methods, scoring, endpoint, judge, simulator)
    finally:
        if judge is not None:
            summary.simulator = judge.stats
            await judge.close()
        db.close()


async def _evaluate(
    scorer: Scorer,
    ids: list[int],
    labels: dict[int, str],
    holdout: dict[int, Windows],
    seeds: list[int],
    base_seed: int,
) -> MethodResult:
    own_values: list[float] = []
    shuffled_values: list[float] = []
    aucs: list[float | None] = []
    tally = _Tally()
    for seed in seeds:
        other = derangement(len(ids), random.Random(base_seed * 7919 + seed))
        pairs = [(f, labels[f], True) for f in ids]
        if scorer.judges == "label":
            pairs += [(f, labels[ids[other[i]]], False) for i, f in enumerate(ids)]
        outcomes = await asyncio.gather(
            *(_outcome(scorer, label, holdout[f], seed * 1_000_003 + f) for f, label, _ in pairs)
        )
        truth, values = [], []
        for (_, _, own), outcome in zip(pairs, outcomes, strict=True):
            tally.count(outcome)
            if outcome is None:
                continue
            truth.append(own)
            if outcome.value is None:
                values.append(UNDEFINED)
                continue
            values.append(outcome.value)
            (own_values if own else shuffled_values).append(outcome.value)
        if scorer.judges == "label":
            aucs.append(auc(truth, values)[0])
    defined = [a for a in aucs if a is not None]
    result = MethodResult(
        method=scorer.method,
        features=len(ids),
        own=_mean(own_values),
        shuffled=_mean(shuffled_values),
        aucs=aucs,
        spread=max(defined) - min(defined) if len(defined) == len(aucs) and defined else None,
        undefined=tally.undefined,
        failed=tally.failed,
        calls_per_feature=tally.calls / len(ids),
        tokens_per_feature=tally.tokens / len(ids),
    )
    if scorer.judges == "feature":
        chance = result.chance = 1 / (scorer.config.intruder_shown + 1)
        trials = len(own_values) * scorer.config.intruder_trials
        margin = 2 * math.sqrt(chance * (1 - chance) / trials) if trials else math.inf
        above = result.own is not None and result.own > chance + margin
        result.verdict = (
            "a measure of the features (no label): "
            + ("above chance" if above else "not distinguishable from chance")
            + f" ({_num(chance)} + {_num(margin)} over {trials} trials)"
        )
    else:
        result.verdict = verdict(aucs)
    return result


@dataclass
class _Tally:
    """What a scorer's outcomes cost and how many came out undefined or failed."""

    undefined: int = 0
    failed: int = 0
    calls: int = 0
    tokens: int = 0

    def count(self, outcome: Outcome | None) -> None:
        """Count one outcome: None is a call that failed for good."""
        if outcome is None:
            self.failed += 1
            return
        self.calls += outcome.calls
        self.tokens += outcome.tokens_in + outcome.tokens_out
        self.undefined += outcome.value is None


async def _outcome(scorer: Scorer, label: str, windows: Windows, seed: int) -> Outcome | None:
    try:
        return await scorer.score(label, windows, seed)
    except LLMError:
        return None


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def verdict(aucs: Sequence[float | None]) -> str:
    """What the AUCs of one scorer say, in words the README table uses."""
    if not aucs or any(a is None for a in aucs):
        return "undefined on these features (too few windows or answers)"
    worst = min(a for a in aucs if a is not None)
    if worst >= TELLS:
        return "tells a feature's label from another's"
    if worst <= CHANCE:
        return "CANNOT tell a feature's label from another's"
    return "weak: barely tells labels apart"


def evaluate(
    store: Store, feature_ids: Sequence[int], llm: LLMConfig | None = None, **kwargs: Any
) -> EvalReport:
    """Sync entry point; starts the bundled local LLM server only if an LLM scorer needs it."""
    from gloss.pipeline.local_llm import endpoints

    scoring = kwargs.get("scoring") or ScoringConfig()
    if all(m == "embedding" for m in scoring.methods):
        return asyncio.run(aevaluate(store, feature_ids, None, **kwargs))
    with endpoints(llm or LLMConfig()) as resolved:
        return asyncio.run(aevaluate(store, feature_ids, resolved, **kwargs))


# ---------------------------------------------------------------- two prompts' labels


@dataclass
class CompareResult:
    method: str
    features: int
    a: float | None  # mean score of A's labels over features and seeds (defined scores only)
    b: float | None
    difference: float | None  # mean over features of B - A (each the mean over its seeds)
    ci: list[float] | None  # 95% bootstrap interval of `difference`, resampling features
    paired: int  # features with B - A defined at one seed or more: what the interval is over
    win_rate: float | None  # share of (feature, seed) pairs B wins; ties half, undefined last
    undefined: int
    failed: int
    calls_per_feature: float
    tokens_per_feature: float
    verdict: str = ""


@dataclass
class CompareReport:
    prompts: list[str]  # [A, B]
    features: int  # features with a label from both
    seeds: list[int]
    left_out: dict[str, int]  # features looked at with only A's label, only B's
    skipped: list[str]  # methods that judge the feature, not a label: nothing to compare
    results: list[CompareResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        a, b = self.prompts
        left = sum(self.left_out.values())
        out = [
            f"{self.features} features with labels of both prompts (A = {a}, B = {b}), "
            f"seeds {', '.join(map(str, self.seeds))}"
            + (f"; {left} with only one of them left out" if left else ""),
            f"{'method':<11} {'A':>6} {'B':>6} {'B-A':>7} {'95% CI':>17} {'B wins':>6} "
            f"{'calls/f':>7} {'tokens/f':>8}  verdict",
        ]
        for r in self.results:
            ci = f"[{_signed(r.ci[0])}, {_signed(r.ci[1])}]" if r.ci is not None else "-"
            wins = _num(r.win_rate)
            out.append(
                f"{r.method:<11} {_num(r.a):>6} {_num(r.b):>6} {_signed(r.difference):>7} "
                f"{ci:>17} {wins:>6} {r.calls_per_feature:>7.2f} {r.tokens_per_feature:>8.0f}"
                f"  {r.verdict}"
            )
        for method in self.skipped:
            out.append(f"{method:<11} judges the feature, not its label: nothing to compare")
        return out


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def prompt_labels(
    store: Store, feature_ids: Sequence[int], prompts: tuple[str, str], limit: int | None = None
) -> tuple[dict[int, tuple[str, str]], dict[str, int]]:
    """Per feature with a label of both prompts (the first `limit`), the newest label of
    each that nobody rejected, (A's, B's); and how many features had only A's, only B's."""
    labels: dict[int, tuple[str, str]] = {}
    left_out = {"only A": 0, "only B": 0}
    for feature_id in feature_ids:
        newest: dict[str, str] = {}
        for info in store.explanations(feature_id):  # newest first
            if info.status != "rejected" and info.prompt_name in prompts:
                newest.setdefault(info.prompt_name, info.text)
        if len(newest) == 2:
            labels[feature_id] = (newest[prompts[0]], newest[prompts[1]])
            if limit is not None and len(labels) >= limit:
                break
        elif newest:
            left_out["only A" if prompts[0] in newest else "only B"] += 1
    return labels, left_out


async def acompare(
    store: Store,
    feature_ids: Sequence[int],
    llm: LLMConfig | None,
    prompts: tuple[str, str],
    simulator: SimulatorConfig | None = None,
    scoring: ScoringConfig | None = None,
    seeds: Sequence[int] = (0, 1),
    limit: int | None = None,
) -> CompareReport:
    """Score the labels two prompts (A, B) wrote for the same features with every scorer of
    `scoring` that judges labels, on the same windows with the same seeds; see the module."""
    scoring = scoring or ScoringConfig()
    a, b = prompts
    if a == b:
        raise InputError(f"gloss eval --compare needs two different prompt names, got {a!r} twice")
    labels, left_out = prompt_labels(store, feature_ids, prompts, limit)
    ids = list(labels)
    if len(ids) < 2:
        raise InputError(
            f"gloss eval --compare needs 2 or more features with a label of prompt {a!r} and "
            f"one of prompt {b!r}, found {len(ids)}: label the same features with both, e.g. "
            f"gloss explain --style output --relabel after an input-only gloss explain"
        )
    methods = tuple(m for m in scoring.methods if SCORERS[m].judges == "label")
    skipped = [m for m in scoring.methods if m not in methods]
    if not methods:
        raise InputError(
            f"gloss eval --compare needs a scorer that judges labels; {', '.join(skipped)} "
            f"judges the feature: pass e.g. --methods embedding"
        )
    report = CompareReport([a, b], len(ids), list(seeds), left_out, skipped)
    summary = Summary(features=len(ids))
    config = config_record(scoring=scoring, **({"llm": llm} if llm is not None else {}))
    with stage_run(store, None, "eval", {**config, "compare": [a, b]}, summary) as (run_id, _):
        async with _scorers(store, run_id, llm, methods, scoring, simulator, summary) as scorers:
            holdout = {f: Windows.of(store.examples(f, "holdout"), scoring) for f in ids}
            for scorer in scorers:
                report.results.append(
                    await _compare(scorer, ids, labels, holdout, list(seeds), scoring.seed)
                )
        store.update_run(run_id, counts={"compare": report.as_dict()})
    return report


async def _compare(
    scorer: Scorer,
    ids: list[int],
    labels: dict[int, tuple[str, str]],
    holdout: dict[int, Windows],
    seeds: list[int],
    base_seed: int,
) -> CompareResult:
    values: tuple[list[float], list[float]] = ([], [])  # defined scores of A's, B's labels
    differences: dict[int, list[float]] = {f: [] for f in ids}  # B - A per seed, both defined
    wins: list[float] = []
    tally = _Tally()
    for seed in seeds:
        # Both labels of a feature on its same windows, with the same seed.
        outcomes = await asyncio.gather(
            *(
                _outcome(scorer, label, holdout[f], seed * 1_000_003 + f)
                for f in ids
                for label in labels[f]
            )
        )
        for i, f in enumerate(ids):
            outcome_a, outcome_b = outcomes[2 * i], outcomes[2 * i + 1]
            tally.count(outcome_a)
            tally.count(outcome_b)
            if outcome_a is None or outcome_b is None:
                continue  # a call failed for good: no comparison at this seed
            score_a, score_b = outcome_a.value, outcome_b.value
            for side, score in enumerate((score_a, score_b)):
                if score is not None:
                    values[side].append(score)
            if score_a is not None and score_b is not None:
                differences[f].append(score_b - score_a)
            rank_a = UNDEFINED if score_a is None else score_a
            rank_b = UNDEFINED if score_b is None else score_b
            wins.append(1.0 if rank_b > rank_a else 0.5 if rank_b == rank_a else 0.0)
    paired = [math.fsum(d) / len(d) for d in differences.values() if d]
    ci = bootstrap_ci(paired, random.Random(base_seed)) if len(paired) >= 2 else None
    return CompareResult(
        method=scorer.method,
        features=len(ids),
        a=_mean(values[0]),
        b=_mean(values[1]),
        difference=_mean(paired),
        ci=ci,
        paired=len(paired),
        win_rate=_mean(wins),
        undefined=tally.undefined,
        failed=tally.failed,
        calls_per_feature=tally.calls / len(ids),
        tokens_per_feature=tally.tokens / len(ids),
        verdict=compare_verdict(ci, len(paired)),
    )


def bootstrap_ci(
    values: Sequence[float], rng: random.Random, resamples: int = RESAMPLES
) -> list[float]:
    """The 95% percentile bootstrap interval of the mean of `values`."""
    means = sorted(math.fsum(rng.choices(values, k=len(values))) / len(values)
                   for _ in range(resamples))  # fmt: skip
    return [means[int(0.025 * resamples)], means[math.ceil(0.975 * resamples) - 1]]


def compare_verdict(ci: Sequence[float] | None, paired: int) -> str:
    """What a comparison's interval says, in words: a prompt is better only if it excludes 0."""
    if ci is None:
        return f"undefined on these features (B - A defined on {paired} of them, 2 needed)"
    if ci[0] > 0:
        return f"B better: the interval excludes 0 ({paired} features)"
    if ci[1] < 0:
        return f"A better: the interval excludes 0 ({paired} features)"
    return f"no difference detectable on {paired} features"


def compare_prompts(
    store: Store,
    feature_ids: Sequence[int],
    prompts: tuple[str, str],
    llm: LLMConfig | None = None,
    **kwargs: Any,
) -> CompareReport:
    """Sync entry point of `acompare`; starts the bundled local LLM server only if a scorer
    of labels other than embedding needs it."""
    from gloss.pipeline.local_llm import endpoints

    scoring = kwargs.get("scoring") or ScoringConfig()
    if all(m == "embedding" or SCORERS[m].judges != "label" for m in scoring.methods):
        return asyncio.run(acompare(store, feature_ids, None, prompts, **kwargs))
    with endpoints(llm or LLMConfig()) as resolved:
        return asyncio.run(acompare(store, feature_ids, resolved, prompts, **kwargs))
