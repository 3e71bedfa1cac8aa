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

Nothing is written to `scores`: a shuffled label's score is not a fact about any label.
The run is recorded in `runs` (kind `eval`) with the table in its counts (`report`), and every
LLM call lands in the ledger (and cache) as always.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gloss.pipeline.labeling import Summary, config_record, stage_run
from gloss.pipeline.llm import LLMClient, make_clients
from gloss.pipeline.scorers import Outcome, Scorer, Windows, make_scorers
from gloss.pipeline.scoring import auc
from gloss.pipeline.settings import LLMConfig, ScoringConfig, SimulatorConfig
from gloss.store import InputError, LLMError, Store, StoreWorker

UNDEFINED = -2.0  # below every score: an undefined score ranks last, as in best-of-n
TELLS = 0.6  # AUC a scorer must reach at every seed to count as telling labels apart
CHANCE = 0.55  # at or below this at any seed it cannot


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
        db = StoreWorker(store)
        judge: LLMClient | None = None
        try:
            if any(m != "embedding" for m in scoring.methods):
                if llm is None:
                    raise InputError("LLM scorers need an endpoint")
                _, judge = make_clients(llm, store, run_id, db)
            endpoint = llm.simulator if llm is not None else None
            scorers = make_scorers(scoring.methods, scoring, endpoint, judge, simulator)
            holdout = {f: Windows.of(store.examples(f, "holdout"), scoring) for f in ids}
            for scorer in scorers:
                report.results.append(
                    await _evaluate(scorer, ids, labels, holdout, list(seeds), scoring.seed)
                )
        finally:
            if judge is not None:
                summary.simulator = judge.stats
                await judge.close()
            db.close()
        store.update_run(run_id, counts={"report": report.as_dict()})
    return report


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
    undefined = failed = calls = tokens = 0
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
            if outcome is None:
                failed += 1
                continue
            calls += outcome.calls
            tokens += outcome.tokens_in + outcome.tokens_out
            truth.append(own)
            if outcome.value is None:
                undefined += 1
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
        undefined=undefined,
        failed=failed,
        calls_per_feature=calls / len(ids),
        tokens_per_feature=tokens / len(ids),
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
