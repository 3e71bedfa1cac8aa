"""The review app in a real browser: Chromium (playwright) against a real `gloss serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gloss.store import open_store
from tests.seed import LABEL_XSS, SOURCE, XSS, seed_features

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(url: str, *options: str):
    """Start `gloss serve` on a free loopback port; returns (process, base URL) once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gloss.pipeline.cli",
            "--database",
            url,
            "serve",
            "--port",
            str(port),
        ]
        + list(options),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            pytest.fail(f"gloss serve exited: {proc.stderr.read().decode()}")
        try:
            urllib.request.urlopen(base + "/static/app.css", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    pytest.fail("gloss serve did not answer within 30 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A seeded SQLite file and `gloss serve` in local mode, for the whole module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'gloss.db'}"
    with open_store(url) as store:
        seeded = seed_features(store)
    proc, base = serve(url, "--reviewer", "ana")
    yield base, url, seeded
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    context.close()


def test_search_open_edit_and_see_it_everywhere(server, page):
    base, url, seeded = server
    page.goto(base + "/")
    page.fill("#q", "kilometers")
    page.press("#q", "Enter")
    page.wait_for_url("**/?q=kilometers**")
    assert page.locator("#total").inner_text().startswith("1 feature")
    page.click("td.label a")
    page.wait_for_url(f"**/features/{seeded.feature_ids[1]}")
    page.fill("#edit-text", "miles <-> km conversions")
    page.fill("form.edit input[name=note]", "narrower")
    page.click("#save-edit")
    page.wait_for_url("**done=edit**")
    assert page.inner_text("#current-label") == "miles <-> km conversions"
    history = page.inner_text("#history")
    assert "miles <-> km conversions" in history and "unit conversions between" in history
    assert "superseded" in history and "human ana" in history
    assert "ana edit" in page.inner_text("#reviews")
    with open_store(url) as store:
        current = store.current_explanation(seeded.feature_ids[1])
    assert current.text == "miles <-> km conversions" and current.author_name == "ana"
    assert current.parent_id == seeded.explanation_ids[1]
    assert page.dialogs == []


def test_hostile_tokens_and_labels_render_inert(server, page):
    base, _, seeded = server
    fid = seeded.feature_ids[3]
    page.goto(f"{base}/features/{fid}")
    assert page.inner_text("#current-label") == LABEL_XSS
    windows = page.locator(".window").all_inner_texts()
    assert any(XSS in w for w in windows)
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    # a reviewer can type markup too: it is stored and shown as text
    page.fill("#edit-text", "<script>alert('edit')</script>")
    page.click("#save-edit")
    page.wait_for_url("**done=edit**")
    assert page.inner_text("#current-label") == "<script>alert('edit')</script>"
    page.goto(f"{base}/?q=alert")
    assert "<script>alert('edit')</script>" in page.inner_text("table.features")
    page.wait_for_timeout(300)
    assert page.dialogs == []


def test_concurrent_edit_gets_the_conflict(server, browser):
    base, url, seeded = server
    fid = seeded.feature_ids[5]
    first, second = browser.new_context(), browser.new_context()
    try:
        a, b = first.new_page(), second.new_page()
        a.goto(f"{base}/features/{fid}")
        b.goto(f"{base}/features/{fid}")
        a.fill("#edit-text", "masses, kilograms and grams")
        a.click("#save-edit")
        a.wait_for_url("**done=edit**")
        b.fill("#edit-text", "heavy things")
        with b.expect_response(lambda r: r.url.endswith("/review")) as response:
            b.click("#save-edit")
        assert response.value.status == 409
        assert "Somebody changed this label first" in b.inner_text("h1")
        assert b.inner_text("#current-label") == "masses, kilograms and grams"
        assert b.input_value("#edit-text") == "heavy things"
        with open_store(url) as store:
            assert store.current_explanation(fid).text == "masses, kilograms and grams"
    finally:
        first.close()
        second.close()


def test_keyboard_review_queue(server, page):
    base, url, seeded = server
    page.goto(base + "/queue")
    with open_store(url) as store:
        head = store.next_to_review()
    page.wait_for_url(f"**/features/{head.feature_id}?queue=0")
    page.keyboard.press("n")
    page.wait_for_url("**/features/*?queue=1")
    skipped_to = page.url
    second = int(skipped_to.split("/features/")[1].split("?")[0])
    page.keyboard.press("a")
    page.wait_for_url(lambda u: u != skipped_to)
    with open_store(url) as store:
        accepted = [r for r in store.reviews() if r.action == "accept"]
        assert [(r.feature_id, r.reviewer) for r in accepted] == [(second, "ana")]
        following = store.next_to_review(skip=1)
    if following is None:
        assert page.inner_text("h1") == "Queue empty"
    else:
        assert page.url.endswith(f"/features/{following.feature_id}?queue=1")
        assert store.next_to_review().feature_id == head.feature_id  # skipped, still queued
    page.goto(f"{base}/features/{head.feature_id}?queue=0")
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "edit-text"


def test_screenshot_of_the_feature_page(server, page, tmp_path):
    base, _, seeded = server
    page.goto(f"{base}/features/{seeded.feature_ids[1]}")
    out = tmp_path / "feature-page.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    assert page.inner_text("#current-label") == "miles <-> km conversions"
    assert SOURCE in page.inner_text("h1")


def test_team_mode_login_and_named_review(tmp_path, page):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    with open_store(url) as store:
        seeded = seed_features(store)
    token = "t" * 24
    (tmp_path / "tokens").write_text(f"{token} Ana Lee\n")
    proc, base = serve(url, "--tokens-file", str(tmp_path / "tokens"))
    try:
        response = page.goto(f"{base}/features/{seeded.feature_ids[0]}")
        assert response.status == 401
        page.fill("input[name=token]", "wrong-token-0000000")
        page.click("#login")
        assert "unknown token" in page.inner_text("main")
        page.fill("input[name=token]", token)
        page.click("#login")
        page.wait_for_url(base + "/")
        assert "Ana Lee" in page.inner_text("header")
        page.goto(f"{base}/features/{seeded.feature_ids[0]}")
        page.click("#accept")
        page.wait_for_url("**done=accept**")
        with open_store(url) as store:
            assert [(r.reviewer, r.action) for r in store.reviews()] == [("Ana Lee", "accept")]
        page.click("#logout")
        page.wait_for_url("**/login")
        assert page.locator("input[name=token]").count() == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rescore_runs_in_the_background_and_the_page_follows_it(tmp_path, page):
    from tests.mined import token_features
    from tests.scripted_llm import ScriptedLLM

    url = f"sqlite:///{tmp_path / 'rescore.db'}"
    with open_store(url) as store:
        _, (cat,) = token_features(store, ["cat"])
        store.review(cat, "edit", "ana", text="the token 'cat'")
    with ScriptedLLM() as llm:
        proc, base = serve(
            url,
            "--reviewer",
            "ana",
            "--simulator-base-url",
            llm.base_url,
            "--simulator-model",
            "scripted",
        )
        try:
            page.goto(f"{base}/features/{cat}")
            with llm.lock:  # the simulator cannot answer until the page has shown the job
                page.click("#rescore")
                job = page.wait_for_selector("#rescore-job").inner_text()
                assert job.startswith("re-score queued") or "running since" in job, job
                assert page.locator('meta[http-equiv="refresh"]').count() == 1
                assert page.locator("#rescore").is_disabled()
            page.wait_for_selector("#rescore-job.done", timeout=60_000)  # its own refresh
            assert "score 0.9" in page.inner_text("#rescore-job")
            assert page.inner_text("#current-score").startswith("0.9")
            assert page.locator('meta[http-equiv="refresh"]').count() == 0
        finally:
            proc.terminate()
            proc.wait(timeout=10)
