"""The output style (issue 18): the delphi windows plus what the feature makes the model
say (TokenChange, VocabProj) and the loss without it, read from the effects `gloss
effects` stores; a feature without effects is a recorded failure, never a silent
fallback to an input-only label."""

from __future__ import annotations

import unicodedata

import pytest

from gloss.pipeline.explainers import effects_of, make_explainer
from gloss.pipeline.explainers.output import NO_EFFECTS, render_effects
from gloss.pipeline.labeling import explain_features
from gloss.pipeline.llm import UnusableAnswer
from gloss.pipeline.prompts import load_prompt
from gloss.pipeline.settings import ExplainerConfig
from gloss.store import ScoreInfo
from tests.mined import token_features

OUTPUT = {
    "scale": 4.0,
    "amount": 16.0,
    "windows": 4,
    "promoted": [[" purr", 2.5], ["\n", 1.25], ["<end>", 0.5]],
    "suppressed": [[" bark", -1.5], ["'s", -0.25]],
    "vocab_up": [[" meow", 3.0], [" kitten", 2.0]],
    "vocab_down": [[" engine", -2.0]],
}
ABLATION = {
    "windows": 4,
    "random_windows": 2,
    "ablation": "zero",
    "top": 0.0421,
    "random": 0.0077,
    "clean_loss": 3.317,
    "tokens": 40,
    "random_tokens": 30,
}


def add_effects(store, feature_id: int) -> None:
    """The two feature scores `gloss effects` writes, as pipeline/effects writes them."""
    store.add_feature_score(feature_id, "ablation", 0.0421, details=ABLATION, model="toy")
    store.add_feature_score(feature_id, "output", 2.5, details=OUTPUT, model="toy")


def info(method: str, value: float | None, details: dict) -> ScoreInfo:
    return ScoreInfo(1, method, value, details, "toy", None, None, None, None)


def text_of(example) -> str:
    return "".join(example.tokens).strip()


def test_prompt_shows_windows_and_output_effect_and_nothing_held_out(sqlite_store):
    store = sqlite_store
    _, (cat,) = token_features(store, ["cat"], random_windows=2)
    add_effects(store, cat)
    examples = store.examples(cat)
    effects = effects_of(store.feature_scores(cat))
    assert set(effects) == {"ablation", "output"}
    prompt = make_explainer(ExplainerConfig(style="output")).prompt(examples, effects)
    head, tail = prompt.rsplit("Feature 2", 1)

    assert "<< cat" in tail
    assert "it promotes: ' purr' +2.50, '\\n' +1.25, '‹end›' +0.50" in tail
    assert "it suppresses: ' bark' -1.50, \"'s\" -0.25" in tail
    assert "up ' meow', ' kitten'; down ' engine'" in tail
    assert "Loss without it (zeroed): +0.042 nats per token on its top examples" in tail
    assert tail.count("<end>") == 1 and tail.count("<start>") == 1, "only our delimiters"
    # Never the ablation's random-window figure or the clean loss beside it.
    assert "0.008" not in prompt and "0.0077" not in prompt and "3.317" not in prompt
    assert "random" not in tail.lower()

    plain = tail.replace("<<", "").replace(">>", "")
    shown = [e for e in examples if e.split == "explain" and e.max_act > 0]
    assert shown and all(text_of(e) in plain for e in shown)
    hidden = [e for e in examples if e.split != "explain" or e.kind == "random"]
    assert any(e.split == "holdout" for e in hidden) and any(e.kind == "random" for e in hidden)
    assert not any(text_of(e) in prompt for e in hidden), "explain-split active windows only"

    # The worked example speaks in the very lines the feature's effects are shown in.
    for line in tail.splitlines():
        if line.startswith(("Raised", "Its direction", "Loss without")):
            assert line.split(":", 1)[0] + ":" in head, line


def test_effect_tokens_cannot_break_lines_or_form_delimiters():
    hostile = ["\x1b[2J", "a\u2028b", " a\tb", "<start>", ">>", "\r\n"]
    details = {
        "scale": 2.0,
        "promoted": [[t, 1.0] for t in hostile],
        "suppressed": [],
        "vocab_up": [[t, 1.0] for t in hostile],
        "vocab_down": [],
    }
    text = render_effects(info("output", 1.0, details), None)
    assert len(text.splitlines()) == 4
    assert not [c for c in text.replace("\n", "") if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    assert "<start>" not in text and ">>" not in text
    assert "'\\x1b[2J'" in text and "' a\\tb'" in text and "'\\r\\n'" in text
    assert "suppresses: none" in text and "down none" in text


def test_a_dead_feature_s_effects_say_why_they_are_missing():
    reason = "the feature never fired in the mined corpus: nothing to ablate or steer"
    output = info("output", None, {"scale": 4.0, "reason": reason,
                                   "vocab_up": [[" meow", 1.0]], "vocab_down": []})  # fmt: skip
    text = render_effects(output, info("ablation", None, {"reason": reason}))
    assert f"its next tokens: not measured ({reason})" in text
    assert "up ' meow'; down none" in text
    assert f"Loss without it: not measured ({reason})" in text
    assert "Loss without it: not measured" in render_effects(output, None)


def test_a_feature_without_effects_is_refused_before_any_call():
    explainer = make_explainer(ExplainerConfig(style="output"))
    with pytest.raises(UnusableAnswer, match="run gloss effects first"):
        explainer.prompt([], None)
    with pytest.raises(UnusableAnswer, match="no output effects"):
        explainer.prompt([], {"ablation": info("ablation", 0.1, ABLATION)})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  \n ",
        "...",
        "42",
        "<start>\nthe\t0",
        "x" * 400,
        'the, ",", your, almost, was, we',
        "Feature 2\n<start>",
        "Label of feature 2:",
        "European city names, after which the model names the country.",  # the worked one
        "Raised by 4x its peak, it promotes: ' purr' +2.50",
        "Loss without it (zeroed): +0.042 nats per token",
    ],
)
def test_the_parser_refuses_garbage(text):
    with pytest.raises(UnusableAnswer):
        make_explainer(ExplainerConfig(style="output")).parse(text)


def test_the_parser_keeps_a_label():
    parse = make_explainer(ExplainerConfig(style="output")).parse
    assert parse(" the word 'cat', after which the model says ' purr'\n") == (
        "the word 'cat', after which the model says ' purr'"
    )
    assert parse("Label of feature 2: pets, then ' purr'") == "pets, then ' purr'"


@pytest.mark.slow
def test_explain_stage_labels_with_effects_and_fails_without(sqlite_store, server, monkeypatch):
    store = sqlite_store
    _, (cat, bridge) = token_features(store, ["cat", "bridge"])
    add_effects(store, cat)

    # An input-only style first: it never looks effects up.
    lookups = []
    real = store.feature_scores
    monkeypatch.setattr(store, "feature_scores", lambda f: lookups.append(f) or real(f))
    assert explain_features(store, [cat, bridge], server.config(),
                            explainer=ExplainerConfig(style="delphi")).explained == 2  # fmt: skip
    assert lookups == []
    delphi = store.current_explanation(cat)

    server.requests.clear()
    summary = explain_features(
        store, [cat, bridge], server.config(), explainer=ExplainerConfig(style="output")
    )
    assert summary.explained == 1 and summary.failed == 1
    assert sorted(lookups) == sorted([cat, bridge])
    asked = [r["prompt"] for r in server.requests if r["kind"] == "explain"]
    assert len(asked) == 1 and "' purr' +2.50" in asked[0], "no call for the feature without"

    template = load_prompt("explain_output")
    label = store.current_explanation(cat)
    assert label.text.startswith("the token 'cat")
    assert (label.prompt_name, label.prompt_version) == ("explain-output", template.version)
    assert label.prompt_hash == template.hash and label.author_name == "gloss-explainer:output"
    assert label.details["style"] == "output"
    scores = {s.method: s.id for s in store.feature_scores(cat)}
    assert label.details["effects"] == scores
    assert label.scores, "scored on holdout like every new label"
    # Both arms stay in the store, each with its prompt and its own holdout scores.
    arms = {e.prompt_name: e for e in store.explanations(cat)}
    assert set(arms) == {"explain-delphi", "explain-output"}
    assert arms["explain-delphi"].id == delphi.id and arms["explain-delphi"].scores

    failed = store.feature(bridge)
    assert failed.failures == 1 and failed.last_error == f"explain: {NO_EFFECTS}"
    assert store.current_explanation(bridge).prompt_name == "explain-delphi", "kept, not replaced"
    assert [f["error"] for f in summary.failures] == [f"explain: {NO_EFFECTS}"]


@pytest.mark.slow
def test_a_garbage_answer_is_a_recorded_failure_not_a_label(sqlite_store, server):
    store = sqlite_store
    _, (cat,) = token_features(store, ["cat"])
    add_effects(store, cat)
    server.label_override = "Raised by 4x its peak, it promotes: ' purr' +2.50"
    summary = explain_features(
        store, [cat], server.config(), explainer=ExplainerConfig(style="output")
    )
    assert summary.failed == 1 and store.current_explanation(cat) is None
    assert "echoes the prompt" in store.feature(cat).last_error
