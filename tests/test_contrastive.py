"""The contrastive explainer: near misses chosen by embedding, shown apart from the marked
examples, and a label through the whole stage (scripted endpoint, real MiniLM)."""

from __future__ import annotations

import pytest

from gloss.pipeline.explainers import make_explainer
from gloss.pipeline.explainers.contrastive import near_misses
from gloss.pipeline.labeling import explain_features
from gloss.pipeline.settings import ExplainerConfig
from tests.mined import token_features
from tests.test_scorers import window

pytestmark = pytest.mark.slow


def test_near_misses_are_the_silent_windows_closest_to_the_active_ones():
    shown = [
        ("my cat purred on the sofa".split(), [0, 3, 0, 0, 0, 0]),
        ("a kitten chased the cat".split(), [0, 0, 0, 0, 2]),
    ]
    silent = [
        window("interest rates rose again", [0, 0, 0, 0]),
        window("the dog barked at the mailman", [0, 0, 0, 0, 0, 0]),
        window("stock prices fell sharply", [0, 0, 0, 0]),
    ]
    assert near_misses(shown, silent, 1, 32) == ["the dog barked at the mailman"]
    assert len(near_misses(shown, silent, 5, 32)) == 3 and near_misses(shown, [], 5, 32) == []


def test_contrastive_prompt_and_label(sqlite_store, server):
    _, ids = token_features(sqlite_store, ["cat"], random_windows=3)
    examples = sqlite_store.examples(ids[0])
    silent = [e for e in examples if e.split == "explain" and e.max_act <= 0]
    assert silent, "the fixture's explain split holds silent windows"
    prompt = make_explainer(ExplainerConfig(style="contrastive", near_misses=2)).prompt(
        [e for e in examples if e.split == "explain"]
    )
    tail = prompt.rsplit("Feature 2", 1)[1]
    assert tail.count("Near miss ") == min(2, len(silent)) and "<<" in tail
    near = [line for line in tail.splitlines() if line.startswith("Near miss")]
    assert all("<<" not in line for line in near), "near misses carry no marks"
    held_out = {e.window_id for e in examples if e.split != "explain"}
    texts = {" ".join(t.strip() for t in e.tokens) for e in examples if e.window_id in held_out}
    assert not any(line.split(": ", 1)[1] in texts for line in near), "explain split only"
    summary = explain_features(
        sqlite_store, ids, server.config(), explainer=ExplainerConfig(style="contrastive")
    )
    assert summary.explained == 1
    current = sqlite_store.current_explanation(ids[0])
    assert (
        current.text.startswith("the token 'cat") and current.prompt_name == "explain-contrastive"
    )
    assert current.details["style"] == "contrastive"


def test_scoring_on_near_misses_keeps_the_closest_silent_windows():
    from gloss.pipeline.scorers import Windows
    from gloss.pipeline.settings import ScoringConfig

    examples = [
        window("my cat purred on the sofa", [0, 3, 0, 0, 0, 0]),
        window("a kitten chased the cat", [0, 0, 0, 0, 2]),
        window("interest rates rose again", [0, 0, 0, 0]),
        window("the dog barked at the mailman", [0, 0, 0, 0, 0, 0]),
        window("stock prices fell sharply", [0, 0, 0, 0]),
    ]
    uniform = Windows.of(examples, ScoringConfig())
    assert uniform.all == examples and not uniform.near_misses
    near = Windows.of(examples, ScoringConfig(near_misses=1))
    assert near.near_misses and near.active == examples[:2] and near.silent == [examples[3]]
    assert Windows.of(examples, ScoringConfig(near_misses=3)).all == examples  # no pool to cut
