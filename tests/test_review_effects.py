"""The feature page's Effects section and Intervene form: over HTTP and in a real browser.

Effects are written straight into the store (what `gloss effects` stores); interventions
run a real causal model, a tiny random GPT-2 built here (MiniLM is an encoder: it has no
next token, which the page must say in one line).
"""

from __future__ import annotations

import html
import os
import re

import pytest
import torch
from markupsafe import escape
from starlette.testclient import TestClient

from gloss.pipeline import decompose as dec
from gloss.pipeline.interventions import Edit, compare
from gloss.pipeline.sources import load_source
from gloss.review.app import create_app
from gloss.store import MinedFeature, open_store
from tests.seed import seed_features
from tests.test_review_browser import CHROMIUM, browser, serve  # noqa: F401

HOOK = "layer.1.resid"
INDEX = 3
MAX_ACT = 2.0
PROMPT = "The apple pie was"
HOSTILE = "<b>bold</b>"

ABLATION = {
    "top": 0.21, "random": 0.002, "clean_loss": 3.1, "tokens": 412, "random_tokens": 240,
    "windows": 8, "random_windows": 4, "ablation": "zero",
}  # fmt: skip
OUTPUT = {
    "scale": 4.0, "amount": 8.0, "windows": 8,
    "promoted": [[" the", 1.25], [HOSTILE, 0.5]],
    "suppressed": [["\n", -0.75], ["apple", -0.25]],
    "vocab_up": [[" fruit", 3.5]],
    "vocab_down": [["\t", -2.0]],
}  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_sources():
    dec.clear_cache(subjects=False)
    yield
    dec.clear_cache(subjects=False)


@pytest.fixture(scope="module")
def tiny_gpt2(minilm, tmp_path_factory):
    """A small random GPT-2 with MiniLM's tokenizer: a real causal LM, built in the test."""
    from transformers import GPT2Config, GPT2Model

    from gloss.pipeline.subjects import load_subject

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(minilm.tokenizer), n_embd=32, n_layer=2, n_head=2,
                        n_positions=64)  # fmt: skip
    GPT2Model(config).save_pretrained(folder)
    minilm.tokenizer.save_pretrained(folder)
    return load_subject(str(folder))


def register(store, subject, hook: str) -> int:
    """Register the subject (with its folder, so the app can load it) and one mined neuron
    of `hook`, as mining would; returns the feature id."""
    subject_id = store.get_or_create_subject(**subject.identity())
    source = load_source("neurons", subject.hook_width(hook))
    source_id = store.get_or_create_source(
        subject_id, hook, source.kind, source.width, source.params_hash,
        path=source.path, config=source.config,
    )  # fmt: skip
    store.write_mined_features(source_id, [MinedFeature(INDEX, MAX_ACT, 0.3, 0.05, 1000, None)])
    return store.features(source_id)[0].id


def client_for(store) -> TestClient:
    client = TestClient(create_app(store, reviewer="ana", rescorer=None))
    client.get("/")  # the CSRF cookie, as a browser gets it
    return client


def intervene(client, feature_id: int, **fields):
    data = {"csrf": client.cookies.get("gloss_csrf"), "prompt": PROMPT, "mode": "zero",
            "scale": "4", "tokens": "6", **fields}  # fmt: skip
    return client.post(f"/features/{feature_id}/intervene", data=data)


def section(page: str, id_: str) -> str:
    return page.split(f'id="{id_}"', 1)[1].split("</section>", 1)[0]


def side(page: str, name: str) -> tuple[str, list[str]]:
    """One side of the result: its continuation and its next tokens, unescaped."""
    part = page.split(f'data-side="{name}">', 1)[1].split("</table>", 1)[0]
    continuation = re.search(r"<b>(.*?)</b>", part, re.S).group(1)
    tokens = re.findall(r'<code class="token">(.*?)</code>', part)
    return html.unescape(continuation), [html.unescape(t) for t in tokens]


def error_line(page: str) -> str:
    found = re.search(r'id="intervene-error">([^<]*)<', page)
    assert found, "no error line on the page"
    return html.unescape(found.group(1))


# ---------------------------------------------------------------- the Effects section


def test_effects_show_the_loss_and_the_tokens_escaped_and_visible(store):
    seeded = seed_features(store)
    fid = seeded.feature_ids[0]
    store.add_feature_score(fid, "ablation", 0.21, details=ABLATION, model="tiny-lm")
    store.add_feature_score(fid, "output", 1.25, details=OUTPUT, model="tiny-lm")
    store.add_feature_score(fid, "intruder", 0.75, model="judge", details={"chance": 0.2})
    with client_for(store) as client:
        page = client.get(f"/features/{fid}").text
        effects = section(page, "effects")
        assert (
            "without it: <b>+0.210</b> nats/token where it fires (+0.002 on random windows); "
            "clean loss 3.10" in effects
        )
        assert "ablated to zero on 8 top windows (412 tokens) and 4 random ones" in effects
        assert (
            "steered by 4 × its peak (+8.000): the most promoted token gains <b>+1.250</b>"
            in effects
        )
        kinds = re.findall(r'<table class="tokens" data-kind="(\w+)">', effects)
        assert kinds == ["promoted", "suppressed", "vocab_up", "vocab_down"]
        shown = [html.unescape(t) for t in re.findall(r'<code class="token">(.*?)</code>', effects)]
        assert shown == ["␣the", HOSTILE, "\\n", "apple", "␣fruit", "\\t"]
        assert str(escape(HOSTILE)) in effects and HOSTILE not in page
        assert "+1.250" in effects and "-0.750" in effects and "3.500" in effects
        # the effects are not listed again among the feature's other measures
        measures = section(page, "feature-scores")
        assert "intruder" in measures and "ablation" not in measures and "output" not in measures
        # a feature without effects shows no Effects box at all
        other = client.get(f"/features/{seeded.feature_ids[1]}").text
        assert 'id="effects"' not in other and 'id="feature-scores"' not in other
        assert 'id="intervene-form"' in other


def test_effects_without_a_value_say_why(store):
    seeded = seed_features(store)
    fid = seeded.feature_ids[2]
    reason = "the feature never fired in the mined corpus: nothing to ablate or steer"
    store.add_feature_score(fid, "ablation", None, details={"reason": reason}, model="m")
    store.add_feature_score(
        fid, "output", None, details={"reason": reason, "vocab_up": [["<i>", 1.0]]}, model="m"
    )
    with client_for(store) as client:
        effects = section(client.get(f"/features/{fid}").text, "effects")
    assert f'ablation: <span class="muted">{reason}</span>' in effects
    assert f'steering: <span class="muted">{reason}</span>' in effects
    assert "nats/token" not in effects and "&lt;i&gt;" in effects and "<i>" not in effects


# ---------------------------------------------------------------- the Intervene form


def test_intervene_refuses_bad_input_in_one_line(store):
    seeded = seed_features(store)
    fid = seeded.feature_ids[0]
    with client_for(store) as client:
        page = client.get(f"/features/{fid}").text
        form = section(page, "intervene")
        assert f'action="/features/{fid}/intervene#intervene"' in form
        assert 'name="csrf"' in form and 'value="4"' in form and 'value="12"' in form
        refused = client.post(f"/features/{fid}/intervene", data={"prompt": PROMPT})
        assert refused.status_code == 403  # no CSRF token
        bad = [
            ({"prompt": "   "}, 400, "type a prompt to run"),
            ({"mode": "steer", "scale": "abc"}, 400, "scale: expected a finite number, got 'abc'"),
            ({"mode": "steer", "scale": ""}, 400, "give the steering scale"),
            ({"mode": "steer", "scale": "1e9"}, 400, "out of range"),
            ({"tokens": "500"}, 400, "at most 50 tokens"),
            ({"tokens": "-1"}, 400, "tokens to generate: expected a whole number"),
            ({"mode": "<boost>"}, 400, "unknown edit '<boost>'"),
            ({"prompt": "x" * 1001}, 400, "at most 1000"),
            # the seeded subject's folder does not exist: the model cannot load
            ({}, 503, "no model '/models/toy'"),
        ]
        for fields, status, message in bad:
            answer = intervene(client, fid, **fields)
            assert answer.status_code == status, fields
            line = error_line(answer.text)
            assert message in line and "\n" not in line, (fields, line)
            assert 'id="intervention"' not in answer.text and "Traceback" not in answer.text
            assert 'id="intervene-form"' in answer.text  # the form stays, with what was typed
        kept = intervene(client, fid, prompt="<i>kept</i>", mode="steer", scale="abc").text
        assert "&lt;i&gt;kept&lt;/i&gt;</textarea>" in kept
        assert '<option value="steer" selected>' in kept


def test_intervene_on_an_encoder_says_so_in_one_line(sqlite_store, minilm):
    fid = register(sqlite_store, minilm, "layer.3.mlp")
    with client_for(sqlite_store) as client:
        answer = intervene(client, fid)
    assert answer.status_code == 400
    assert "is an encoder (BertModel), not a causal LM" in error_line(answer.text)


def test_intervene_runs_the_model_with_and_without_the_edit(sqlite_store, tiny_gpt2):
    fid = register(sqlite_store, tiny_gpt2, HOOK)
    source = load_source("neurons", tiny_gpt2.hook_width(HOOK))
    with client_for(sqlite_store) as client:
        ablated = intervene(client, fid, mode="zero")
        steered = intervene(client, fid, mode="steer", scale="100")
    assert ablated.status_code == 200 and steered.status_code == 200
    expected = compare(tiny_gpt2, source, HOOK, Edit.of(INDEX, "zero"), PROMPT, tokens=6)
    clean, clean_next = side(ablated.text, "clean")
    assert clean == expected["clean"]["continuation"] and clean.strip()
    assert clean_next[0] == expected["clean"]["next"][0][0].replace(" ", "␣")
    assert len(clean_next) == 10
    edited, _ = side(ablated.text, "edited")
    assert edited == expected["edited"]["continuation"]
    assert "<h3>ablated to 0</h3>" in ablated.text
    # steering by 100 x its peak moves the next-token distribution and what follows
    assert "<h3>steered +100 × its peak (+200.000)</h3>" in steered.text
    assert side(steered.text, "clean") == (clean, clean_next)
    steered_text, steered_next = side(steered.text, "edited")
    assert steered_next != clean_next
    kl = float(re.search(r"KL\(edited ‖ clean\) ([\d.]+) nats", steered.text).group(1))
    assert kl > 0
    shift = section(steered.text, "intervene")
    assert re.findall(r'<table class="tokens" data-kind="(\w+)">', shift)[-2:] == [
        "promoted",
        "suppressed",
    ]
    strong = compare(tiny_gpt2, source, HOOK, Edit.of(INDEX, "steer", amount=200.0), PROMPT,
                     tokens=6)  # fmt: skip
    assert steered_text == strong["edited"]["continuation"]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
def test_in_the_browser_steer_a_feature_and_see_both_sides(browser, tiny_gpt2, tmp_path):  # noqa: F811
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    with open_store(db) as store:
        fid = register(store, tiny_gpt2, HOOK)
    proc, base = serve(db, "--reviewer", "ana")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    try:
        page.goto(f"{base}/features/{fid}")
        assert page.locator("#effects").count() == 0
        page.fill("#prompt", PROMPT)
        page.select_option("#mode", "steer")
        page.fill("#scale", "100")
        page.fill("#tokens", "5")
        page.click("#run-intervention")
        page.wait_for_selector("#intervention", timeout=60_000)
        assert page.url.endswith(f"/features/{fid}/intervene#intervene")
        sides = page.locator("#intervention .side")
        assert sides.count() == 2
        assert sides.locator("h3").all_inner_texts() == [
            "clean",
            "steered +100 × its peak (+200.000)",
        ]
        clean = sides.nth(0).locator(".continuation b").inner_text()
        edited = sides.nth(1).locator(".continuation b").inner_text()
        assert clean.strip() and edited.strip()
        first = [sides.nth(i).locator("table.next tbody tr").count() for i in range(2)]
        assert first == [10, 10]
        assert (
            sides.nth(0).locator("table.next").inner_text()
            != sides.nth(1).locator("table.next").inner_text()
        )
        # what was asked stays in the form, ready to run again
        assert page.input_value("#prompt") == PROMPT
        assert page.input_value("#mode") == "steer" and page.input_value("#scale") == "100"
        assert page.locator("#run-intervention").is_enabled()
        assert page.locator("#intervene-error").count() == 0 and dialogs == []
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)
