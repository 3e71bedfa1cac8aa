"""Scorers: one module each behind `Scorer` (base.py); adding a scorer is adding a file.

    simulation  the LLM predicts per-token activations; correlation
    detection   the LLM says which windows the feature is active in; balanced accuracy
    fuzzing     the LLM says whether marked tokens fit the label; balanced accuracy
    embedding   no LLM: label-to-window similarity, active vs silent; AUC
    intruder    no label: the LLM finds the silent window among active ones; accuracy

`make_scorers` builds the ones a `ScoringConfig` names. LLM scorers share the
simulator role's client (the judge), so its endpoint, cache and budget apply.
"""

from __future__ import annotations

from gloss.pipeline.llm import LLMClient
from gloss.pipeline.scorers.base import Outcome, Scorer, Windows
from gloss.pipeline.scorers.detection import Detection
from gloss.pipeline.scorers.embedding import Embedding
from gloss.pipeline.scorers.fuzzing import Fuzzing
from gloss.pipeline.scorers.intruder import Intruder
from gloss.pipeline.scorers.simulation import Simulation
from gloss.pipeline.settings import EndpointConfig, ScoringConfig, SimulatorConfig

SCORERS: dict[str, type[Scorer]] = {
    cls.method: cls for cls in (Simulation, Detection, Fuzzing, Embedding, Intruder)
}


def make_scorers(
    methods: tuple[str, ...],
    config: ScoringConfig,
    endpoint: EndpointConfig | None,
    client: LLMClient | None = None,
    simulator: SimulatorConfig | None = None,
) -> list[Scorer]:
    """The scorers of `methods`, judging on `endpoint` (the simulator role) through `client`."""
    scorers: list[Scorer] = []
    for method in methods:
        if method == "simulation":
            scorers.append(Simulation(config, endpoint, client, simulator))
        else:
            scorers.append(SCORERS[method](config, endpoint, client))
    return scorers


__all__ = ["SCORERS", "Outcome", "Scorer", "Windows", "make_scorers"]
