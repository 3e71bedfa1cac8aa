"""The decompose page of the review app: over HTTP (TestClient) and in a real browser.

The store holds the real MiniLM and a dictionary shared by its six residual points,
written in the design's format (see tests/test_decompose.py for the stand-in loader).
"""

from __future__ import annotations

import html
import os
import re
from urllib.parse import urlencode

import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from gloss.pipeline import decompose as dec
from gloss.pipeline.sources import load_source
from gloss.review.app import create_app
from gloss.store import InputError, open_store
from tests.test_decompose import (
    D_IN,
    LABELS,
    LAPTOP,
    MINED,
    PIE,
    SPEC,
    register,
    use_dictionary,
    write_dictionary,
)
from tests.test_review_browser import CHROMIUM, browser, serve  # noqa: F401

XSS_LABEL = "<img src=x onerror=alert('decompose')>"


@pytest.fixture(autouse=True)
def fresh_sources():
    dec.clear_cache(subjects=False)
    yield
    dec.clear_cache(subjects=False)


@pytest.fixture
def seeded(store, minilm, tmp_path, monkeypatch):
    d = write_dictionary(tmp_path / "dictionary", [f"layer.{i}.resid" for i in range(6)])
    source = use_dictionary(monkeypatch, d)
    name = register(store, minilm, source, SPEC, mined=MINED, labels=LABELS)
    return store, name


@pytest.fixture
def client(seeded):
    store, _ = seeded
    with TestClient(create_app(store, reviewer="ana", rescorer=None)) as c:
        yield c


def url(**params) -> str:
    return "/decompose?" + urlencode(params)


def rows(page: str, cls: str) -> list[int]:
    return [int(i) for i in re.findall(rf'<tr class="{cls}" data-index="(\d+)"', page)]


def test_form_then_word_buttons_then_features(client, seeded):
    store, name = seeded
    empty = client.get("/decompose")
    assert empty.status_code == 200
    assert 'href="/decompose"' in empty.text and 'id="decompose-form"' in empty.text
    assert 'id="result"' not in empty.text

    typed = client.get(url(text=PIE))
    assert typed.status_code == 200 and 'id="result"' not in typed.text
    buttons = re.findall(
        r'<button form="decompose-form" class="word" name="at" value="(\d+)">(\w+)</button>',
        typed.text,
    )
    assert buttons == [(str(m.start()), m.group()) for m in re.finditer(r"\w+", PIE)]

    clicked = client.get(url(text=PIE, at=PIE.index("apple")))
    assert clicked.status_code == 200
    assert 'class="word selected" name="at" value="13">apple<' in clicked.text
    expected = dec.decompose(store, "apple", [PIE])
    sections = re.findall(r'<section class="panel point" data-hook="([^"]+)">', clicked.text)
    assert sections == expected.hooks == [f"layer.{i}.resid" for i in range(6)]
    shown = rows(clicked.text, "hit")
    assert shown == [h.index for p in expected.contexts[0].points for h in p.features]
    for h in (h for p in expected.contexts[0].points for h in p.features):
        if h.label:
            assert f'<a href="/features/{h.feature_id}">{escape(h.label)}</a>' in clicked.text
    assert "<mark>apple</mark>" in clicked.text and 'class="compared"' not in clicked.text


def test_two_texts_show_what_they_share_and_what_tells_them_apart(client, seeded):
    store, _ = seeded
    page = client.get(url(text=PIE, text2=LAPTOP, at=PIE.index("apple")))
    assert page.status_code == 200
    expected = dec.decompose(store, "apple", [PIE, LAPTOP])
    for hook, contrast in zip(expected.hooks, expected.contrasts, strict=True):
        start = page.text.index(f'data-hook="{hook}"')
        end = page.text.find('<section class="panel point"', start)
        section = page.text[start : end if end > 0 else None]
        assert rows(section, "hit") == [
            h.index
            for c in expected.contexts
            for h in c.points[expected.hooks.index(hook)].features
        ]
        shared = section[
            section.index('<div class="shared">') : section.index('<div class="distinct">')
        ]
        distinct = section[section.index('<div class="distinct">') :]
        assert rows(shared, "compared") == [c.index for c in contrast.shared]
        assert rows(distinct, "compared") == [c.index for c in contrast.distinct]
    assert any(c.distinct for c in expected.contrasts)
    # a word clicked in the second text is looked up in the first
    second = client.get(url(text=PIE, text2=LAPTOP, at2=0))
    assert second.status_code == 200
    assert 'class="word selected" name="at2" value="0">Apple<' in second.text
    assert rows(second.text, "hit") == rows(page.text, "hit")


def test_labels_and_texts_are_escaped(client, seeded):
    store, _ = seeded
    text = "<b>An</b> apple <script>alert(1)</script>"
    shown = dec.decompose(store, "apple", [text]).contexts[0].points
    target = next(h for p in shown for h in p.features if h.feature_id is not None)
    store.review(target.feature_id, "edit", "ana", text=XSS_LABEL)
    page = client.get(url(text=text, at=text.index("apple")))
    assert page.status_code == 200
    assert XSS_LABEL not in page.text and str(escape(XSS_LABEL)) in page.text
    assert "<script>alert(1)" not in page.text and "<b>An" not in page.text


BAD_INPUT = [
    (
        {"text": PIE, "text2": "Bananas are yellow.", "at": 13},
        400,
        "'apple' does not occur in context 2",
    ),
    ({"text": PIE, "at": 14}, 400, "no word starts at character 14"),
    ({"text": PIE, "at": "abc"}, 400, "expected a whole number"),
    ({"text": "apple " * 200, "at": 0}, 400, "this page reads at most 1000"),
    ({"text": PIE, "at": 13, "source": "nope"}, 404, "no feature source 'nope'"),
    ({"text": PIE, "word": "pear"}, 400, "'pear' does not occur in context 1"),
    ({"text": "", "text2": PIE, "at2": 13}, 400, "type a text first"),
]


def test_bad_input_is_one_line_on_the_page(client):
    for params, status, message in BAD_INPUT:
        page = client.get(url(**params))
        assert page.status_code == status, params
        found = re.search(r'id="decompose-error">([^<]*)<', page.text)
        assert found, params
        shown = html.unescape(found.group(1))
        assert message in shown and "\n" not in shown, (params, shown)
        assert 'id="decompose-form"' in page.text


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
def test_in_the_browser_type_click_a_word_and_open_a_label(browser, minilm, tmp_path):  # noqa: F811
    """A real `gloss serve`: the server reads the shared dictionary when load_source can;
    until then (the loader is the learn engineer's) one of its points as a plain SAELens SAE."""
    d = write_dictionary(tmp_path / "dictionary", [f"layer.{i}.resid" for i in range(6)])
    try:
        source, hook = load_source(f"sae:{d.folder}", D_IN), SPEC
    except InputError as error:
        if not str(error).startswith(f"missing {d.folder}/cfg.json"):
            raise
        source, hook = load_source(f"sae:{d.folder / 'layer.4.resid'}", D_IN), "layer.4.resid"
    db = f"sqlite:///{tmp_path / 'gloss.db'}"
    with open_store(db) as store:
        register(store, minilm, source, hook, mined=MINED, labels=LABELS)
    proc, base = serve(db, "--reviewer", "ana")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    try:
        page.goto(base + "/")
        page.click("nav >> text=decompose")
        page.wait_for_url("**/decompose")
        page.fill("#text", PIE)
        page.fill("#text2", LAPTOP)
        page.click("#show-words")
        page.wait_for_selector("#words1 button.word")
        assert page.locator("#words1 button.word").all_inner_texts() == re.findall(r"\w+", PIE)
        page.click("#words1 button.word >> text=apple")
        page.wait_for_selector("#result", timeout=60_000)
        assert page.locator("#words1 button.word.selected").inner_text() == "apple"
        points = page.locator("#result section.point").evaluate_all(
            "els => els.map(e => e.dataset.hook)"
        )
        assert points == ([f"layer.{i}.resid" for i in range(6)] if hook == SPEC else [hook])
        assert page.locator("#result .ctx").count() == 2 * len(points)
        assert page.locator("#result tr.hit").count() > 0
        assert page.locator("#result div.distinct tr.compared").count() > 0
        with open_store(db) as store:
            expected = dec.decompose(store, "apple", [PIE, LAPTOP])
        first = expected.contexts[0].points[0].features
        assert page.locator("#result section.point").first.locator(
            ".ctx[data-context='1'] tr.hit"
        ).evaluate_all("els => els.map(e => +e.dataset.index)") == [h.index for h in first]
        labeled = page.locator("#result td.label a:not(.muted)").first
        label = labeled.inner_text()
        labeled.click()
        page.wait_for_url("**/features/*")
        assert page.inner_text("#current-label") == label
        assert dialogs == []
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)
