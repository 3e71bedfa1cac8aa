"""Every route of the review app over HTTP (Starlette TestClient on a real SQLite/PostgreSQL store)."""

from __future__ import annotations

import html
import re
import threading
import time

import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from gloss.review.app import SECURITY_HEADERS, create_app, load_tokens, secure_cookies_wanted
from gloss.store import ConfigError, LLMError
from tests.seed import LABEL_XSS, LABELS, SOURCE, XSS, seed_features

ANA = "a" * 20
BO = "b" * 20


@pytest.fixture
def seeded(store):
    return seed_features(store)


@pytest.fixture
def client(store, seeded):
    with TestClient(create_app(store, reviewer="ana")) as c:
        c.get("/")  # receive the CSRF cookie like a browser would
        yield c


def form(client, current, **fields):
    return {
        "csrf": client.cookies.get("gloss_csrf"),
        "expected_explanation_id": current.id if current else "",
        "expected_version": current.version if current else 0,
        **fields,
    }


def test_list_search_filters_and_sorting(client, seeded):
    page = client.get("/")
    assert page.status_code == 200
    assert "6 features" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "apples as a fruit" in client.get("/?q=apple").text
    assert "unit conversions" not in client.get("/?q=apple").text
    low = client.get("/?max_score=0.2").text
    assert "the word" in low and "apples" not in low
    unlabeled = client.get("/?status=unlabeled").text
    assert f'href="/features/{seeded.feature_ids[4]}"' in unlabeled and "1 feature<" in unlabeled
    assert "6 features" in client.get(f"/?source={SOURCE}").text
    assert "0 features" in client.get("/?reviewed=yes").text
    worst = client.get("/?order=-score").text
    assert worst.index("the word") < worst.index("apples as")
    assert client.get("/?min_score=abc").status_code == 400
    assert client.get("/?order=sideways").status_code == 400


def test_list_pages_with_a_cursor(client, store):
    from tests.seed import bulk_features

    bulk_features(store, 120)
    first = client.get("/?order=score")
    assert first.status_code == 200
    next_url = html.unescape(re.search(r'href="([^"]+)" id="next-link"', first.text).group(1))
    assert "after=" in next_url
    second = client.get(next_url)
    ids = lambda text: re.findall(r'<td><a href="/features/(\d+)" class="ref"', text)  # noqa: E731
    assert len(ids(first.text)) == 50 and len(ids(second.text)) == 50
    assert not set(ids(first.text)) & set(ids(second.text))
    ranked = client.get("/?q=apple").text
    if 'id="next-link"' in ranked:
        assert "offset=50" in ranked


def test_feature_page_shows_stats_history_and_escaped_contexts(client, seeded, store):
    fid = seeded.feature_ids[3]
    page = client.get(f"/features/{fid}")
    assert page.status_code == 200
    text = page.text
    # the hostile token and the hostile label appear only escaped
    assert str(escape(XSS)) in text and XSS not in text
    assert str(escape(LABEL_XSS)) in text and LABEL_XSS not in text
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "gemma-3-270m" in text and "explain-v1 v1" in text
    assert "simulation <b>0.300</b>" in text
    assert 'id="density">4%' in text
    assert text.count("<rect ") == 4
    assert "rgba(234, 88, 12, 1.0)" in text  # the max-activation token is fully shaded
    assert client.get("/features/99999").status_code == 404
    eid = seeded.explanation_ids[3]
    store.add_score(eid, "simulation", 0.5, details={"top_only": 0.7, "random_only": 0.1})
    store.add_score(
        eid, "simulation", None, details={"reason": "constant <truth>"}, simulator_model="sim-b"
    )
    text = client.get(f"/features/{fid}").text
    assert "top-only 0.700" in text and "random-only 0.100" in text
    assert "· constant &lt;truth&gt;" in text


def test_review_actions_land_in_the_audit_trail(client, seeded, store):
    fid = seeded.feature_ids[0]
    current = store.current_explanation(fid)
    r = client.post(
        f"/features/{fid}/review",
        data=form(client, current, action="accept"),
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/features/{fid}?done=accept"
    assert store.current_explanation(fid).status == "accepted"
    current = store.current_explanation(fid)
    client.post(
        f"/features/{fid}/review",
        data=form(client, current, action="edit", text="apples <b>really</b>", note="tighter"),
    )
    edited = store.current_explanation(fid)
    assert edited.text == "apples <b>really</b>" and edited.parent_id == current.id
    assert edited.author_kind == "human" and edited.author_name == "ana"
    client.post(f"/features/{fid}/review", data=form(client, None, action="note", note="checked"))
    reviews = store.reviews(fid)
    assert [(r.reviewer, r.action) for r in reviews] == [
        ("ana", "note"),
        ("ana", "edit"),
        ("ana", "accept"),
    ]
    page = client.get(f"/features/{fid}").text
    assert "apples &lt;b&gt;really&lt;/b&gt;" in page and "— checked" in page
    current = store.current_explanation(fid)
    client.post(f"/features/{fid}/review", data=form(client, current, action="reject"))
    assert store.current_explanation(fid) is None
    # a label on a feature that had none
    bare = seeded.feature_ids[4]
    client.post(f"/features/{bare}/review", data=form(client, None, action="edit", text="vowels"))
    assert store.current_explanation(bare).text == "vowels"
    bad = client.post(f"/features/{bare}/review", data=form(client, None, action="dance"))
    assert bad.status_code == 400


def test_csrf_is_required_on_every_post(client, seeded, store):
    fid = seeded.feature_ids[0]
    current = store.current_explanation(fid)
    for data in (
        {k: v for k, v in form(client, current, action="accept").items() if k != "csrf"},
        {**form(client, current, action="accept"), "csrf": "forged"},
    ):
        assert client.post(f"/features/{fid}/review", data=data).status_code == 403
    cross = client.post(
        f"/features/{fid}/review",
        data=form(client, current, action="accept"),
        headers={"origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    sandboxed = client.post(
        f"/features/{fid}/review",
        data=form(client, current, action="accept"),
        headers={"origin": "null"},
    )
    assert sandboxed.status_code == 403
    rescore = client.post(f"/features/{fid}/rescore", data={"explanation_id": current.id})
    assert rescore.status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    assert store.reviews(fid) == [] and store.current_explanation(fid).status == "proposed"
    same_site = client.post(
        f"/features/{fid}/review",
        data=form(client, current, action="accept"),
        headers={"origin": "http://testserver"},
        follow_redirects=False,
    )
    assert same_site.status_code == 303


def test_stale_edit_gets_a_conflict_page(client, seeded, store):
    fid = seeded.feature_ids[1]
    seen = store.current_explanation(fid)
    store.review(
        fid,
        "edit",
        "bo",
        text="miles to km <i>only</i>",
        expected_explanation_id=seen.id,
        expected_version=seen.version,
    )
    r = client.post(
        f"/features/{fid}/review", data=form(client, seen, action="edit", text="my late text")
    )
    assert r.status_code == 409
    assert "Somebody changed this label first" in r.text
    assert "miles to km &lt;i&gt;only&lt;/i&gt;" in r.text and "my late text" in r.text
    assert store.current_explanation(fid).text == "miles to km <i>only</i>"
    # a stale accept conflicts too; a label added to an unlabeled feature conflicts with "none"
    assert (
        client.post(f"/features/{fid}/review", data=form(client, seen, action="accept")).status_code
        == 409
    )
    bare = seeded.feature_ids[4]
    store.review(bare, "edit", "bo", text="first!")
    late = client.post(f"/features/{bare}/review", data=form(client, None, action="edit", text="x"))
    assert late.status_code == 409 and store.current_explanation(bare).text == "first!"


def test_review_queue_walks_lowest_score_first(client, seeded, store):
    r = client.get("/queue", follow_redirects=False)
    assert r.headers["location"] == f"/features/{seeded.feature_ids[2]}?queue=0"
    page = client.get(r.headers["location"]).text
    assert 'href="/queue?skip=1"' in page and "Review queue" in page
    skip = client.get("/queue?skip=1", follow_redirects=False)
    assert skip.headers["location"] == f"/features/{seeded.feature_ids[3]}?queue=1"
    current = store.current_explanation(seeded.feature_ids[2])
    done = client.post(
        f"/features/{seeded.feature_ids[2]}/review",
        data=form(client, current, action="accept", queue=0),
        follow_redirects=False,
    )
    assert done.headers["location"] == "/queue?skip=0"
    nxt = client.get("/queue", follow_redirects=False)
    assert nxt.headers["location"] == f"/features/{seeded.feature_ids[3]}?queue=0"
    for index in (3, 1, 0, 5):
        store.review(seeded.feature_ids[index], "accept", "ana")
    empty = client.get("/queue")
    assert empty.status_code == 200 and "Queue empty" in empty.text


def wait_for_job(client, url: str, state: str) -> str:
    """Poll the feature page until the re-score job shows `state`; returns the page."""
    for _ in range(600):
        page = client.get(url).text
        if f'class="job {state}"' in page:
            return page
        time.sleep(0.05)
    raise AssertionError(f"the re-score job never reached {state!r}: {page}")


def test_rescore_runs_in_the_background_once_per_label(store, seeded):
    calls = []
    started, release = threading.Event(), threading.Event()

    def rescorer(s, explanation_id):
        calls.append(explanation_id)
        started.set()
        assert release.wait(30), "the test never released the rescorer"
        s.add_score(explanation_id, "simulation", 0.77, simulator_model="sim")
        return 0.77

    fid, other = seeded.feature_ids[0], seeded.feature_ids[1]
    new_id = store.review(fid, "edit", "ana", text="apple fruit")
    other_id = store.review(other, "edit", "ana", text="miles")
    with TestClient(create_app(store, reviewer="ana", rescorer=rescorer)) as c:
        c.get("/")
        csrf = c.cookies.get("gloss_csrf")
        data = {"csrf": csrf, "explanation_id": new_id}
        r = c.post(f"/features/{fid}/rescore", data=data, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/features/{fid}"
        assert not release.is_set() and started.wait(10)
        page = c.get(f"/features/{fid}").text
        assert re.search(r'class="job running"[^>]*>re-score running since \d\d:\d\d:\d\d', page)
        assert '<meta http-equiv="refresh" content="5">' in page
        assert re.search(r'id="rescore"[^>]*disabled', page)
        again = c.post(f"/features/{fid}/rescore", data=data, follow_redirects=False)
        assert again.status_code == 303
        assert 'class="job running"' in c.get(f"/features/{fid}").text
        c.post(f"/features/{other}/rescore", data={"csrf": csrf, "explanation_id": other_id})
        assert 'class="job queued"' in c.get(f"/features/{other}").text
        release.set()
        page = wait_for_job(c, f"/features/{fid}", "done")
        assert "score <b>0.770</b>" in page and "http-equiv" not in page
        wait_for_job(c, f"/features/{other}", "done")
        assert calls == [new_id, other_id]  # one worker, in order: a duplicate would sit between
        assert store.explanation(new_id).score == pytest.approx(0.77)


def test_rescore_failures_show_on_the_page_and_bad_requests_get_4xx(store, seeded):
    def broken(s, explanation_id):
        if s.explanation(explanation_id).text == "apple fruit":
            raise LLMError("the simulator answered nothing usable\nsecond line of detail")
        raise RuntimeError("boom")

    fid, other = seeded.feature_ids[0], seeded.feature_ids[1]
    first = store.review(fid, "edit", "ana", text="apple fruit")
    second = store.review(other, "edit", "ana", text="miles")
    with TestClient(create_app(store, reviewer="ana", rescorer=broken)) as c:
        c.get("/")
        csrf = c.cookies.get("gloss_csrf")
        c.post(f"/features/{fid}/rescore", data={"csrf": csrf, "explanation_id": first})
        page = wait_for_job(c, f"/features/{fid}", "failed")
        assert "the simulator answered nothing usable" in page and "second line" not in page
        c.post(f"/features/{other}/rescore", data={"csrf": csrf, "explanation_id": second})
        assert "RuntimeError: boom" in wait_for_job(c, f"/features/{other}", "failed")
        wrong = c.post(f"/features/{fid}/rescore", data={"csrf": csrf, "explanation_id": second})
        assert wrong.status_code == 400
        superseded = seeded.explanation_ids[0]
        stale = c.post(
            f"/features/{fid}/rescore", data={"csrf": csrf, "explanation_id": superseded}
        )
        assert stale.status_code == 400 and "only a feature&#39;s current label" in stale.text
        assert c.post(f"/features/{fid}/rescore", data={"csrf": csrf}).status_code == 400
    with TestClient(create_app(store, reviewer="ana", rescorer=None)) as c:
        c.get("/")
        off = c.post(
            f"/features/{fid}/rescore",
            data={"csrf": c.cookies.get("gloss_csrf"), "explanation_id": first},
        )
        assert off.status_code == 503 and "switched off" in off.text


def test_team_mode_needs_a_token_and_records_its_name(store, seeded, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# team\n{ANA} Ana Lee\n{BO} Bo\n")
    tokens = load_tokens(tokens_file)
    assert tokens == {ANA: "Ana Lee", BO: "Bo"}
    fid = seeded.feature_ids[0]
    with TestClient(create_app(store, tokens=tokens)) as c:
        for path in ("/", f"/features/{fid}", "/queue"):
            r = c.get(path)
            assert r.status_code == 401 and 'name="token"' in r.text, path
        assert c.get("/", headers={"authorization": "Bearer wrong-token-123456"}).status_code == 401
        assert c.get("/", headers={"authorization": f"Bearer {BO}"}).status_code == 200
        csrf = c.cookies.get("gloss_csrf")
        current = store.current_explanation(fid)
        data = {
            "csrf": csrf,
            "action": "accept",
            "expected_explanation_id": current.id,
            "expected_version": current.version,
        }
        assert c.post(f"/features/{fid}/review", data=data).status_code == 401
        assert c.post("/login", data={"csrf": csrf, "token": "nope"}).status_code == 401
        assert c.post("/login", data={"token": ANA}).status_code == 403
        ok = c.post("/login", data={"csrf": csrf, "token": ANA}, follow_redirects=False)
        assert ok.status_code == 303 and ANA not in ok.headers["set-cookie"]
        assert "Ana Lee" in c.get("/").text
        c.post(f"/features/{fid}/review", data=data)
        assert store.reviews(fid)[0].reviewer == "Ana Lee"
        c.post("/logout", data={"csrf": csrf})
        assert c.get("/").status_code == 401
    (tmp_path / "bad").write_text("short Bo\n")
    with pytest.raises(ConfigError, match="16"):
        load_tokens(tmp_path / "bad")
    with pytest.raises(ConfigError, match="reviewer"):
        create_app(store)


def test_static_files_and_login_in_local_mode(client):
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "innerHTML" not in js.text
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/login", follow_redirects=False).status_code == 303
    assert LABELS[0][0] in client.get("/").text


def test_logout_revokes_a_copied_session_cookie(store, seeded):
    app = create_app(store, tokens={ANA: "Ana Lee"})
    with TestClient(app) as c, TestClient(app) as thief:
        c.get("/")
        csrf = c.cookies.get("gloss_csrf")
        c.post("/login", data={"csrf": csrf, "token": ANA})
        copied = c.cookies.get("gloss_session")
        assert copied and copied != ANA
        thief.cookies.set("gloss_session", copied)
        assert "Ana Lee" in thief.get("/").text
        out = c.post("/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 303 and 'gloss_session=""' in out.headers["set-cookie"]
        assert thief.get("/").status_code == 401
        assert c.get("/", headers={"authorization": f"Bearer {ANA}"}).status_code == 200


def test_secure_cookies_mark_every_cookie_secure(store, seeded):
    app = create_app(store, tokens={ANA: "Ana Lee"}, secure_cookies=True)
    with TestClient(app, base_url="https://testserver") as c:
        first = c.get("/")
        csrf = c.cookies.get("gloss_csrf")
        login = c.post("/login", data={"csrf": csrf, "token": ANA}, follow_redirects=False)
        assert login.status_code == 303
        logout = c.post("/logout", data={"csrf": csrf}, follow_redirects=False)
        assert logout.status_code == 303
        for response in (first, login, logout):
            cookies = response.headers.get_list("set-cookie")
            assert cookies
            for cookie in cookies:
                attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
                assert {"secure", "httponly", "path=/", "samesite=lax"} <= attributes, cookie
    with TestClient(create_app(store, tokens={ANA: "Ana Lee"})) as c:
        assert "secure" not in c.get("/").headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("argv", "secure"),
    [
        ([], False),
        (["--tls-proxy"], False),
        (["--host", "0.0.0.0"], False),
        (["--host", "0.0.0.0", "--tls-proxy"], True),
        (["--host", "gloss.example.org", "--tls-proxy"], True),
        (["--host", "::1", "--tls-proxy"], False),
        (["--host", "127.0.0.2", "--tls-proxy"], False),
        (["--host", "0.0.0.0", "--tls-proxy", "--no-secure-cookies"], False),
        (["--secure-cookies"], True),
    ],
)
def test_gloss_serve_marks_cookies_secure_behind_a_tls_proxy(argv, secure):
    from gloss.pipeline.cli import build_parser

    args = build_parser().parse_args(["serve", *argv])
    wanted = secure_cookies_wanted(
        args.host, tls_proxy=args.tls_proxy, explicit=args.secure_cookies
    )
    assert wanted is secure


def test_every_response_carries_the_security_headers(client, store, monkeypatch):
    responses = {
        "static file": client.get("/static/app.css"),
        "unknown page": client.get("/no-such-page"),
        "not an id": client.get("/features/abc"),
        "wrong method": client.post("/", data={}),
        "refused post": client.post("/logout", data={}),
    }

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "count", broken)
    with TestClient(client.app, raise_server_exceptions=False) as fresh:
        responses["server error"] = fresh.get("/")
    assert [r.status_code for r in responses.values()] == [200, 404, 404, 405, 403, 500]
    for what, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (what, header)


BIG = "99999999999999999999999"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/features/{BIG}", 404),
        ("/features/1?queue=" + BIG, 400),
        ("/features/1?queue=-1", 400),
        ("/queue?skip=" + BIG, 400),
        ("/queue?skip=-1", 400),
        ("/queue?skip=1e3", 400),
        ("/?q=apple&offset=-1", 400),
        ("/?q=apple&offset=" + BIG, 400),
        ("/?after=1e999:5", 400),
        ("/?after=nan:5", 400),
        ("/?after=-inf:5", 400),
        ("/?after=0.5:" + BIG, 400),
        ("/?after=0.5:-1", 400),
        ("/?order=id&after=:" + BIG, 400),
        ("/?after=0.5", 400),
        ("/?min_score=nan", 400),
        ("/?max_score=1e999", 400),
        ("/?min_score=-0.5", 200),
        ("/?after=0.5:3", 200),
        ("/?order=id&after=:3", 200),
    ],
)
def test_numbers_the_database_cannot_take_are_refused(client, path, status):
    assert client.get(path, follow_redirects=False).status_code == status


def test_form_numbers_out_of_range_are_refused(client, seeded, store):
    fid = seeded.feature_ids[0]
    current = store.current_explanation(fid)
    for field, value in [
        ("expected_explanation_id", BIG),
        ("expected_explanation_id", "-3"),
        ("expected_version", BIG),
        ("expected_version", "-1"),
        ("queue", BIG),
    ]:
        data = {**form(client, current, action="accept"), field: value}
        assert client.post(f"/features/{fid}/review", data=data).status_code == 400, field
    for value in (BIG, "-1", "1.5"):
        data = {"csrf": client.cookies.get("gloss_csrf"), "explanation_id": value}
        assert client.post(f"/features/{fid}/rescore", data=data).status_code == 400, value
    assert client.post(f"/features/{BIG}/review", data=form(client, None)).status_code == 404
    assert store.reviews(fid) == []


def test_text_with_a_nul_character_is_refused(client, seeded, store):
    fid = seeded.feature_ids[0]
    current = store.current_explanation(fid)
    edit = form(client, current, action="edit", text="apples\x00pears")
    assert client.post(f"/features/{fid}/review", data=edit).status_code == 400
    note = form(client, None, action="note", note="see\x00here")
    assert client.post(f"/features/{fid}/review", data=note).status_code == 400
    assert client.get("/?source=a%00b").status_code == 400
    assert client.get("/queue?source=a%00b").status_code == 400
    assert store.reviews(fid) == [] and store.current_explanation(fid).text == current.text


@pytest.mark.parametrize(
    ("path", "answers"),
    [
        (f"/features/{2**63 - 1}", {404}),
        (f"/features/{2**31}", {404}),
        (f"/queue?skip={2**63 - 1}", {200, 400}),
        (f"/?after=0.5:{2**63 - 1}", {200, 400}),
        (f"/?order=id&after=:{2**63 - 1}", {200, 400}),
        (f"/features/1?queue={2**63 - 1}", {200}),
    ],
)
def test_the_largest_numbers_the_app_lets_through_reach_the_store_safely(client, path, answers):
    """The app passes 0..2**63-1 on; past 32 bits the store must refuse or answer, not overflow."""
    assert client.get(path, follow_redirects=False).status_code in answers


def test_reviewers_racing_over_http_get_one_winner_and_409s(store, seeded):
    """Eight reviewers post on one label version at once, through a real server: one
    action lands, the others get the conflict page, none a 500; the trail agrees."""
    import socket

    import httpx
    import uvicorn

    from tests.test_integrity import race

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(store, reviewer="ana"), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    clients = [httpx.Client(base_url=base) for _ in range(8)]
    try:
        for client in clients:
            client.get("/")
        for round_ in range(10):
            fid = seeded.feature_ids[round_ % 4]
            store.review(fid, "edit", "setup", text=f"round {round_}")
            current = store.current_explanation(fid)

            def post(i: int, fid=fid, current=current) -> int:
                action = ("accept", "reject", "edit")[i % 3]
                data = {
                    "csrf": clients[i].cookies.get("gloss_csrf"),
                    "action": action,
                    "expected_explanation_id": current.id,
                    "expected_version": current.version,
                    "text": f"edit {i}",
                }
                return clients[i].post(f"/features/{fid}/review", data=data).status_code

            codes = race(*(lambda i=i: post(i) for i in range(8)))
            assert sorted(codes).count(303) == 1 and set(codes) == {303, 409}, codes
            trail = [r for r in store.reviews(fid) if r.reviewer == "ana"]
            after = store.current_explanation(fid)
            landed = trail[0]
            assert (
                len([r for r in trail if r.before and r.before["text"] == f"round {round_}"]) == 1
            )
            if landed.action == "reject":
                assert after is None
            else:
                assert after.id == landed.explanation_id and after.status == "accepted"
    finally:
        for client in clients:
            client.close()
        server.should_exit = True
        thread.join(10)


def test_feature_page_shows_every_method_and_the_features_own_measures(client, store, seeded):
    explanation_id = seeded.explanation_ids[0]
    feature_id = seeded.feature_ids[0]
    store.add_score(explanation_id, "detection", 0.875, simulator_model="judge-llm",
                    details={"auc": 0.93}, calls=2, tokens_in=900, tokens_out=30)  # fmt: skip
    store.add_score(explanation_id, "embedding", None, simulator_model="all-MiniLM-L6-v2",
                    details={"reason": "needs both classes, got 3 positive and 0 negative"})  # fmt: skip
    store.add_feature_score(feature_id, "intruder", 0.75, model="judge-llm",
                            details={"chance": 0.2})  # fmt: skip
    page = client.get(f"/features/{feature_id}").text
    table = page.split('id="current-scores"', 1)[1].split("</table>", 1)[0]
    assert "detection" in table and "0.875" in table and "auc 0.930" in table
    assert "2 calls, 930 tokens" in table
    assert "embedding" in table and "needs both classes" in table
    measures = page.split('id="feature-scores"', 1)[1].split("</section>", 1)[0]
    assert "intruder" in measures and "0.750" in measures and "chance 0.200" in measures


def test_search_by_meaning_finds_a_label_edited_in_the_app_at_once(client, seeded, store):
    page = client.get("/?q=units+of+measurement&match=meaning").text
    assert "5 features, closest in meaning to “units of measurement” first" in page
    assert page.index("unit conversions between miles") < page.index("apples as a fruit")
    assert 'class="num similarity"' in page and '<option value="meaning" selected>' in page
    fid = seeded.feature_ids[4]  # unlabeled until a reviewer writes one
    client.post(
        f"/features/{fid}/review", data=form(client, None, action="edit", text="vowels in names")
    )
    page = client.get("/?q=letters+a+e+i+o+u&match=meaning").text
    rows = re.findall(r'href="/features/(\d+)" class="ref"', page)
    assert rows[0] == str(fid)
    # filters and paging by offset combine with it; an order is ignored (similarity ranks)
    page = client.get("/?q=fruit&match=meaning&min_score=0.3&order=id").text
    assert "3 features, closest in meaning" in page and "the word" not in page
    first = re.findall(r'href="/features/(\d+)" class="ref"', page)
    assert first[0] == str(seeded.feature_ids[0])
