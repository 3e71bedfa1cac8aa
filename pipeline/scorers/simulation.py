"""Simulation: can an LLM predict the feature's activation on every token from the label?

The LLM reads the label and the held-out windows of `SimulatorConfig.kinds` (top and
random by default) and predicts an activation from 0 to 10 per token, by logprobs (the
expected value over the digits) or as grammar-constrained integers; the score is the
correlation with the true activations, pooled over all tokens (Bills et al. 2023,
"top-and-random"). See `pipeline.simulator` for the call and `pipeline.scoring`
for the number.
"""

from __future__ import annotations

from gloss.pipeline.scorers.base import Outcome, Scorer, Windows
from gloss.pipeline.scoring import simulation_score
from gloss.pipeline.settings import SimulatorConfig
from gloss.pipeline.simulator import simulate


class Simulation(Scorer):
    method = "simulation"

    def __init__(self, config, endpoint, client=None, simulator: SimulatorConfig | None = None):
        super().__init__(config, endpoint, client)
        assert endpoint is not None, "simulation needs the simulator endpoint"
        self.simulator = (simulator or SimulatorConfig()).for_endpoint(endpoint)
        self.prompt = self.simulator.template()

    async def score(self, label: str | None, windows: Windows, seed: int) -> Outcome:
        assert label is not None
        if self.client is None:
            raise RuntimeError("the simulation scorer was made without an LLM client")
        kinds = self.simulator.kinds
        shown = [e for e in windows.all if e.kind.split(":", 1)[0] in kinds]
        if not shown:
            return Outcome.undefined(f"no windows of kinds {', '.join(kinds)}")
        predicted, answer = await simulate(
            self.client, label, [e.tokens for e in shown], self.simulator, self.prompt
        )
        outcome = Outcome(None)
        outcome.count(answer)
        outcome.value, outcome.details = simulation_score(
            [e.acts for e in shown], predicted, [e.kind for e in shown]
        )
        outcome.details.update(
            method=self.simulator.method,
            window_ids=[e.window_id for e in shown],
            cached=answer.cached,
            prompt_tokens=answer.tokens_in,
            llm_call_id=answer.call_id,
        )
        return outcome
