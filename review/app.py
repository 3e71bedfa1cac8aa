"""The review web app: browse, search and correct feature labels (`gloss serve`).

Starlette + Jinja2, server-rendered, one small script for keyboard shortcuts.

Who is acting: in local mode one reviewer name for every request; in team mode a
tokens file maps each reviewer's token to a name, and anything else gets 401. Scripts
send `Authorization: Bearer TOKEN`; browsers log in once at /login, which sets a cookie
holding a random session id (never the token) that /logout revokes on the server.
Sessions live in memory and end with the server.

Safety: every POST must echo the per-browser CSRF cookie in a hidden `csrf` field, and
a cross-site or `null` Origin is refused; every response, static files and error pages
included, carries SECURITY_HEADERS (a strict CSP forbids inline script); templates
autoescape everything and the script never builds HTML from data; review forms carry
the label id and version the reviewer saw, so a stale edit gets a 409 conflict page,
never an overwrite. Numbers in a URL or a form must be finite, and whole numbers lie in
0..MAX_INT; text may not hold a NUL character: anything else is a 400 (an id out of
range a 404) before the database sees it.

Re-scoring a label runs the simulator, which takes minutes on the bundled local LLM, so
the button queues a job for one background thread (at most one job per label) and
answers at once; the feature page shows the job's state and reloads itself (a meta
refresh, allowed by the CSP) while the job is queued or running.

The feature page shows the feature's effects (`gloss effects`: the loss its ablation
costs, the tokens its steering pushes) and runs a prompt with and without an edit of the
feature (intervene): the subject loads once through the decompose page's cache, and the
forward passes run on a worker thread, one at a time per model.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import math
import queue
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gloss.store import (
    ConfigError,
    ConflictError,
    GlossError,
    InputError,
    NotFoundError,
    Store,
)
from gloss.store.statuses import CURRENT_STATUSES, UNLABELED, ExplanationStatus, FeatureStatus
from gloss.store.types import EFFECT_METHODS

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CSRF_COOKIE = "gloss_csrf"
SESSION_COOKIE = "gloss_session"
PAGE_SIZE = 50
MAX_INT = 2**63 - 1  # no number a form may carry is larger; the store bounds ids tighter
STATUSES = (*CURRENT_STATUSES, ExplanationStatus.REJECTED, UNLABELED, FeatureStatus.DEAD)
ORDERS = {"score": "best score", "-score": "worst score", "id": "feature id", "rank": "relevance"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

Rescorer = Callable[[Store, int], float | None]


def load_tokens(path: str | Path) -> dict[str, str]:
    """Read a team tokens file: one `TOKEN NAME` per line, `#` comments; returns token -> name."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read tokens file {path}: {error.strerror}") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, _, name = line.partition(" ")
        if not name.strip() or len(token) < 16:
            raise ConfigError(
                f"{path}:{number}: expected 'TOKEN NAME' with a token of 16+ characters "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        tokens[token] = name.strip()
    if not tokens:
        raise ConfigError(f"tokens file {path} has no 'TOKEN NAME' lines")
    return tokens


def default_rescorer(store: Store, explanation_id: int) -> float | None:
    from gloss.pipeline.rescore import rescore

    return rescore(store, explanation_id)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure_cookies_wanted(host: str, *, tls_proxy: bool, explicit: bool | None = None) -> bool:
    """Whether cookies get the Secure flag: `explicit` when given, else only when a TLS proxy
    was declared and the app listens beyond loopback (plain http on loopback must keep working).
    """
    if explicit is not None:
        return explicit
    return tls_proxy and not is_loopback(host)


def create_app(
    store: Store,
    *,
    reviewer: str | None = None,
    tokens: dict[str, str] | None = None,
    rescorer: Rescorer | None = default_rescorer,
    secure_cookies: bool = False,
) -> Starlette:
    """The app over `store`: local mode with `reviewer`, or team mode with `tokens`."""
    if not tokens and not (reviewer and reviewer.strip()):
        raise ConfigError("the review app needs a reviewer name or a tokens file")
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.3g}%"
    env.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M}"
    env.filters["signed"] = lambda v, d=3: "–" if v is None else f"{v:+.{d}f}"
    env.filters["visible"] = _visible
    env.globals["ORDERS"] = ORDERS
    env.globals["STATUSES"] = STATUSES
    jobs = RescoreJobs(store, rescorer) if rescorer is not None else None
    app = _App(store, env, reviewer, tokens, jobs, secure_cookies)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        if jobs is not None:
            jobs.close()

    return Starlette(
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={Exception: _server_error},
        routes=[
            Route("/", app.page(app.feature_list)),
            Route("/features/{feature_id:int}", app.page(app.feature_page)),
            Route("/features/{feature_id:int}/review", app.page(app.do_review), methods=["POST"]),
            Route("/features/{feature_id:int}/rescore", app.page(app.do_rescore), methods=["POST"]),
            Route(
                "/features/{feature_id:int}/intervene", app.page(app.do_intervene), methods=["POST"]
            ),
            Route("/queue", app.page(app.queue)),
            Route("/decompose", app.page(app.decompose_page)),
            Route("/login", app.page(app.login_page, public=True)),
            Route("/login", app.page(app.do_login, public=True), methods=["POST"]),
            Route("/logout", app.page(app.do_logout), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every response (pages, static files, 404s, 405s)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _server_error(_request: Request, _error: Exception) -> Response:
    # Starlette sends this from outside every middleware, so it brings its own headers.
    return PlainTextResponse("Internal Server Error", 500, headers=SECURITY_HEADERS)


# ---------------------------------------------------------------- re-scoring in the background


@dataclass(frozen=True)
class RescoreJob:
    """Where one label's re-score stands, and since when: queued, running, done or failed."""

    state: str
    since: datetime
    score: float | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class RescoreJobs:
    """Runs the rescorer on one background thread, at most one job per label.

    Job states live in memory and end with the server; the scores land in the store.
    Whatever the rescorer raises becomes the job's failed state, never a lost traceback.
    """

    def __init__(self, store: Store, rescorer: Rescorer):
        self._store = store
        self._rescorer = rescorer
        self._lock = threading.Lock()
        self._jobs: dict[int, RescoreJob] = {}
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(self, explanation_id: int) -> bool:
        """Queue a re-score; False when one for this label is already queued or running."""
        with self._lock:
            if self._closed:
                raise GlossError("the server is stopping: re-score again once it is back")
            job = self._jobs.get(explanation_id)
            if job is not None and job.active:
                return False
            self._jobs[explanation_id] = RescoreJob("queued", datetime.now())
            if self._worker is None:
                # A daemon: stopping the server abandons a re-score that may run for
                # minutes rather than waiting for it.
                self._worker = threading.Thread(
                    target=self._work, name="gloss-rescore", daemon=True
                )
                self._worker.start()
            self._queue.put(explanation_id)
        return True

    def get(self, explanation_id: int) -> RescoreJob | None:
        with self._lock:
            return self._jobs.get(explanation_id)

    def close(self) -> None:
        """Stop the worker after its current job; jobs still queued are dropped."""
        with self._lock:
            self._closed = True
            self._queue.put(None)

    def _set(self, explanation_id: int, job: RescoreJob) -> None:
        with self._lock:
            self._jobs[explanation_id] = job

    def _work(self) -> None:
        while (explanation_id := self._queue.get()) is not None and not self._closed:
            self._set(explanation_id, RescoreJob("running", datetime.now()))
            try:
                score = self._rescorer(self._store, explanation_id)
            except Exception as error:
                if not isinstance(error, GlossError):
                    log.exception("re-scoring label #%d failed", explanation_id)
                job = RescoreJob("failed", datetime.now(), error=_one_line(error))
            else:
                job = RescoreJob("done", datetime.now(), score=score)
            self._set(explanation_id, job)


def _one_line(error: Exception) -> str:
    first = next(iter(str(error).strip().splitlines()), "")
    if isinstance(error, GlossError) and first:
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class _App:
    def __init__(
        self,
        store: Store,
        env: Environment,
        reviewer: str | None,
        tokens: dict[str, str] | None,
        jobs: RescoreJobs | None,
        secure_cookies: bool,
    ):
        self.store = store
        self.env = env
        self.reviewer = reviewer.strip() if reviewer else None
        self.tokens = tokens
        self.jobs = jobs
        self.cookie = {"path": "/", "httponly": True, "samesite": "lax", "secure": secure_cookies}
        self.sessions: dict[str, str] = {}  # session id (the login cookie) -> reviewer name
        self.sessions_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing

    def page(
        self, handler: Callable[..., Response], *, public: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a sync handler: identity, CSRF on POST, input checks, errors as pages."""

        async def endpoint(request: Request) -> Response:
            csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
            request.state.csrf = csrf
            request.state.reviewer = self._identify(request)
            form: dict[str, str] = {}
            if request.method == "POST":
                form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
                response = self._check_post(request, form)
            elif request.state.reviewer is None and not public:
                response = self._unauthorized(request)
            else:
                response = None
            if response is None:
                try:
                    _check_input(request, form)
                    response = await run_in_threadpool(handler, request, form)
                except NotFoundError as error:
                    response = self.render(request, "message.html", _msg("Not found", error), 404)
                except InputError as error:
                    response = self.render(request, "message.html", _msg("Bad input", error), 400)
                except GlossError as error:
                    response = self.render(
                        request, "message.html", _msg("Not available", error), 503
                    )
            if CSRF_COOKIE not in request.cookies:
                response.set_cookie(CSRF_COOKIE, csrf, **self.cookie)
            return response

        return endpoint

    def _identify(self, request: Request) -> str | None:
        if self.tokens is None:
            return self.reviewer
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self._token_name(auth[7:].strip())
        with self.sessions_lock:
            return self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))

    def _token_name(self, token: str) -> str | None:
        for known, name in (self.tokens or {}).items():
            if token and hmac.compare_digest(known, token):
                return name
        return None

    def _check_post(self, request: Request, form: dict[str, str]) -> Response | None:
        origin = request.headers.get("origin")
        # "null" comes from sandboxed frames, data: URLs and the like: never our own pages.
        if origin and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host")):
            return self._forbidden(request, "a cross-site form post was refused")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, form.get("csrf", "")):
            return self._forbidden(
                request, "the form's security token is missing or stale: reload the page and retry"
            )
        if request.state.reviewer is None and request.url.path != "/login":
            return self._unauthorized(request)
        return None

    def _forbidden(self, request: Request, why: str) -> Response:
        return self.render(request, "message.html", {"title": "Refused", "message": why}, 403)

    def _unauthorized(self, request: Request) -> Response:
        response = self.render(request, "login.html", {"error": None}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="gloss"'
        return response

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(
            request=request,
            reviewer=request.state.reviewer,
            csrf=request.state.csrf,
            team=self.tokens is not None,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    # ------------------------------------------------------------ pages

    def feature_list(self, request: Request, _form: dict[str, str]) -> Response:
        p = request.query_params
        q = p.get("q", "").strip()
        filters = {
            "min_score": _float(p.get("min_score")),
            "max_score": _float(p.get("max_score")),
            "source": p.get("source") or None,
            "status": p.get("status") or None,
            "reviewed": {"yes": True, "no": False}.get(p.get("reviewed", "")),
        }
        meaning = bool(q) and p.get("match") == "meaning"  # q ranks by meaning, not words
        order = "rank" if meaning else p.get("order") or ("rank" if q else "score")
        if order not in ORDERS:
            raise InputError(f"unknown order {order!r}: use one of {', '.join(ORDERS)}")
        ranked = bool(q) and order == "rank"
        offset = _int(p.get("offset")) or 0
        after = None if ranked else _cursor(p.get("after"))
        words, like = ("", q) if meaning else (q, None)
        rows = self.store.search(
            words,
            like=like,
            order=order,
            limit=PAGE_SIZE + 1,
            offset=offset if ranked else 0,
            after=after,
            **filters,
        )
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        base = {k: v for k, v in p.items() if k not in ("after", "offset") and v}
        next_url = None
        if more:
            step = {"offset": offset + PAGE_SIZE} if ranked else {"after": rows[-1].cursor}
            next_url = "/?" + urlencode({**base, **step})
        prev_url = None
        if ranked and offset > 0:
            prev_url = "/?" + urlencode({**base, "offset": max(0, offset - PAGE_SIZE)})
        elif after:
            prev_url = "/?" + urlencode(base)  # keyset pages go forward; back means start over
        return self.render(
            request,
            "list.html",
            {
                "rows": rows,
                "total": self.store.count(words, like=like, **filters),
                "meaning": meaning,
                "q": q,
                "params": p,
                "order": order,
                "sources": [s.name for s in self.store.sources()],
                "next_url": next_url,
                "prev_url": prev_url,
                "first_page": not (offset or after),
            },
        )

    def feature_page(self, request: Request, _form: dict[str, str]) -> Response:
        card = self.store.feature_card(request.path_params["feature_id"])
        queue = _int(request.query_params.get("queue"))
        return self.render(request, "feature.html", self._feature_context(card, queue))

    def _feature_context(self, card, queue: int | None) -> dict[str, Any]:
        context = _card_context(card, queue)
        if self.jobs is not None and card.current is not None:
            context["job"] = self.jobs.get(card.current.id)
        return context

    def do_intervene(self, request: Request, form: dict[str, str]) -> Response:
        """Run the form's prompt with and without an edit of the feature: the feature page
        with both continuations and next-token distributions side by side, or why not."""
        card = self.store.feature_card(request.path_params["feature_id"])
        context = self._feature_context(card, None)
        asked = {key: form.get(key, default) for key, default in INTERVENE_FORM.items()}
        context["asked"] = asked
        status = 200
        try:
            context["intervention"] = _intervene(self.store, card, asked)
        except InputError as error:
            context["intervene_error"], status = _one_line(error), 400
        except GlossError as error:  # the model or the source's files cannot be loaded
            context["intervene_error"], status = _one_line(error), 503
        return self.render(request, "feature.html", context, status)

    def queue(self, request: Request, _form: dict[str, str]) -> Response:
        skip = _int(request.query_params.get("skip")) or 0
        source = request.query_params.get("source") or None
        head = self.store.next_to_review(source=source, skip=skip)
        if head is None:
            return self.render(
                request,
                "message.html",
                {
                    "title": "Queue empty",
                    "message": "Every labeled feature has been reviewed"
                    + (" (or skipped)." if skip else "."),
                },
            )
        return RedirectResponse(f"/features/{head.feature_id}?queue={skip}", status_code=303)

    def do_review(self, request: Request, form: dict[str, str]) -> Response:
        feature_id = request.path_params["feature_id"]
        action = form.get("action", "")
        queue = _int(form.get("queue"))
        # Version 0 with no id means "I saw no label": a label added since is a conflict.
        expected_id = _int(form.get("expected_explanation_id"))
        expected_version = _int(form.get("expected_version")) or 0
        if action == "note":
            expected_id = expected_version = None  # a note changes nothing; never conflicts
        try:
            self.store.review(
                feature_id,
                action,
                request.state.reviewer,
                expected_explanation_id=expected_id,
                expected_version=expected_version,
                text=form.get("text") or None,
                note=form.get("note") or None,
            )
        except ConflictError as error:
            card = self.store.feature_card(feature_id)
            context = _card_context(card, queue)
            context.update(attempt=form, action=action, error=str(error))
            return self.render(request, "conflict.html", context, 409)
        if queue is not None and action != "note":
            return RedirectResponse(f"/queue?skip={queue}", status_code=303)
        suffix = f"&queue={queue}" if queue is not None else ""
        return RedirectResponse(f"/features/{feature_id}?done={action}{suffix}", status_code=303)

    def do_rescore(self, request: Request, form: dict[str, str]) -> Response:
        """Queue a re-score and answer at once: the feature page shows how it goes."""
        feature_id = request.path_params["feature_id"]
        explanation_id = _int(form.get("explanation_id"))
        if explanation_id is None:
            raise InputError("the form names no label to re-score (explanation_id)")
        explanation = self.store.explanation(explanation_id)
        if explanation.feature_id != feature_id:
            raise InputError("that label belongs to another feature")
        if explanation.status not in CURRENT_STATUSES:
            raise InputError(
                f"label #{explanation.id} is {explanation.status}; only a feature's current "
                "label can be re-scored: reload the page"
            )
        if self.jobs is None:
            raise GlossError("re-scoring is switched off in this server")
        self.jobs.submit(explanation.id)
        return RedirectResponse(f"/features/{feature_id}", status_code=303)

    def login_page(self, request: Request, _form: dict[str, str]) -> Response:
        if self.tokens is None or request.state.reviewer:
            return RedirectResponse("/", status_code=303)
        return self.render(request, "login.html", {"error": None})

    def do_login(self, request: Request, form: dict[str, str]) -> Response:
        if self.tokens is None:
            return RedirectResponse("/", status_code=303)
        name = self._token_name(form.get("token", "").strip())
        if name is None:
            return self.render(request, "login.html", {"error": "unknown token"}, 401)
        session = secrets.token_urlsafe(32)
        with self.sessions_lock:
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            self.sessions[session] = name
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, **self.cookie)
        return response

    def do_logout(self, request: Request, _form: dict[str, str]) -> Response:
        """End the session on the server too, so a copy of the cookie stops working."""
        with self.sessions_lock:
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = RedirectResponse("/login" if self.tokens else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, **self.cookie)
        return response

    def decompose_page(self, request: Request, _form: dict[str, str]) -> Response:
        """Type a text (and a second one), click a word: its features per hook point.

        The word buttons submit the form (GET) with the character where the word starts,
        `at` in the first text or `at2` in the second; `word` names one directly.
        """
        from gloss.pipeline.decompose import PAGE_CHARS, decompose, split_words, word_at

        p = request.query_params
        texts = [p.get("text", "").strip(), p.get("text2", "").strip()]
        source = p.get("source") or None
        context: dict[str, Any] = {
            "texts": texts,
            "source": source,
            "sources": [s.name for s in self.store.sources()],
            "top": 10,
            "words": [split_words(t) if t else [] for t in texts],
            "selected": None,
            "result": None,
            "error": None,
        }
        status = 200
        try:
            for number, text in enumerate(texts, 1):
                if len(text) > PAGE_CHARS:
                    raise InputError(
                        f"text {number} is {len(text)} characters long; this page reads at "
                        f"most {PAGE_CHARS}: shorten it to the sentence around the word"
                    )
            context["top"] = min(_int(p.get("top")) or 10, 50)
            at = [_int(p.get("at")), _int(p.get("at2"))]
            word = p.get("word", "").strip()
            for i, start in enumerate(at):
                if start is not None and not word:
                    word = word_at(texts[i], start)
                    context["selected"] = (i, start)
                else:
                    at[i] = None
            if word:
                if not texts[0]:
                    raise InputError("type a text first, then click a word of it")
                given = [t for t in texts if t]
                context["result"] = decompose(
                    self.store,
                    word,
                    given,
                    source=source,
                    top=context["top"],
                    at=[a for a, t in zip(at, texts, strict=True) if t],
                )
        except (InputError, NotFoundError) as error:
            context["error"] = str(error)
            status = 404 if isinstance(error, NotFoundError) else 400
        return self.render(request, "decompose.html", context, status)


# ---------------------------------------------------------------- interventions

INTERVENE_FORM = {"prompt": "", "mode": "zero", "scale": "4", "tokens": "12"}  # the defaults
INTERVENE_MODES = {"zero": "ablate (zero)", "mean": "ablate (mean)", "steer": "steer"}
MAX_SCALE = 1000.0  # times the feature's peak activation
MAX_NEW_TOKENS = 50


def _intervene(store: Store, card, asked: dict[str, str]) -> dict[str, Any]:
    """`compare` on the feature's subject with the edit the form asks for."""
    from gloss.pipeline.decompose import PAGE_CHARS, loaded
    from gloss.pipeline.interventions import compare, edit_for

    prompt = asked["prompt"]
    if not prompt.strip():
        raise InputError("type a prompt to run with and without the edit")
    if len(prompt) > PAGE_CHARS:
        raise InputError(f"the prompt is {len(prompt)} characters long; at most {PAGE_CHARS}")
    mode = asked["mode"]
    if mode not in INTERVENE_MODES:
        raise InputError(f"unknown edit {mode[:40]!r}: use one of {', '.join(INTERVENE_MODES)}")
    try:
        scale = _float(asked["scale"])
    except InputError as error:
        raise InputError(f"scale: {error}") from None
    try:
        tokens = _int(asked["tokens"])
    except InputError as error:
        raise InputError(f"tokens to generate: {error}") from None
    if scale is not None and abs(scale) > MAX_SCALE:
        raise InputError(
            f"the scale {scale:g} is out of range: use -{MAX_SCALE:g} to {MAX_SCALE:g}"
        )
    tokens = 12 if tokens is None else tokens
    if tokens > MAX_NEW_TOKENS:
        raise InputError(f"generate at most {MAX_NEW_TOKENS} tokens, not {tokens}")
    edit, described = edit_for(card.feature, mode, scale)
    subject, source, lock = loaded(store, card.source)
    with lock:  # the edit's hooks go on the shared model: one pass at a time
        result = compare(subject, source, card.source.hook, edit, prompt, tokens=tokens)
    result["edit"] = described
    return result


# ---------------------------------------------------------------- view helpers


def _card_context(card, queue: int | None) -> dict[str, Any]:
    from gloss.pipeline.terminal import group_examples

    scale = card.feature.max_act or max(
        (max(ex.acts, default=0.0) for ex in card.examples), default=0.0
    )
    groups = [
        (title, [_shaded(ex, scale) for ex in examples])
        for title, examples in group_examples(card.examples)
    ]
    effects = {sc.method: sc for sc in card.feature_scores if sc.method in EFFECT_METHODS}
    return {
        "card": card,
        "measures": [sc for sc in card.feature_scores if sc.method not in EFFECT_METHODS],
        "effects": effects,
        "effect_tokens": _effect_tokens(effects.get("output")),
        "modes": INTERVENE_MODES,
        "asked": INTERVENE_FORM,
        "intervention": None,
        "intervene_error": None,
        "feature": card.feature,
        "current": card.current,
        "groups": groups,
        "bars": _histogram_bars(card.feature.histogram),
        "layers": _layer_bars(card.feature.layers),
        "queue": queue,
        "attempt": None,
        "job": None,
    }


def _effect_tokens(output) -> list[dict[str, Any]]:
    """The output effect's token lists as columns: TokenChange (log-probability deltas when
    steered) and VocabProj (logits of the feature's direction), those it has."""
    if output is None:
        return []
    columns = [
        ("promoted", "promoted", "Δ logprob", True),
        ("suppressed", "suppressed", "Δ logprob", True),
        ("vocab_up", "reads as (VocabProj)", "logit", False),
        ("vocab_down", "reads against", "logit", False),
    ]
    return [
        {"kind": key, "title": title, "unit": unit, "signed": signed, "pairs": pairs}
        for key, title, unit, signed in columns
        if (pairs := output.details.get(key))
    ]


def _visible(token: str) -> str:
    """A token on its own, its spaces and control characters made visible (␣, \\n)."""
    from gloss.pipeline.prompts import printable

    return printable(token).replace(" ", "␣") if token else "∅"


def _shaded(ex, scale: float) -> dict[str, Any]:
    """Tokens with an opacity in 0..1 for their activation relative to the feature's max."""
    from gloss.pipeline.prompts import spell

    tokens = [
        {
            "gap": gap,
            "text": text,
            "act": act,
            "alpha": round(min(1.0, max(0.0, act) / scale), 3) if scale else 0,
        }
        for (gap, text), act in zip(spell(ex.tokens), ex.acts, strict=False)
    ]
    return {"example": ex, "tokens": tokens}


def _layer_bars(layers: dict[str, float] | None) -> list[dict[str, Any]]:
    """A shared dictionary's layer map: per hook point, its value and bar width in 0..100."""
    if not layers:
        return []
    peak = max(layers.values())
    return [
        {
            "point": point,
            "value": value,
            "w": round(100 * value / peak, 2) if peak > 0 else 0,
            "peak": peak > 0 and value == peak,
        }
        for point, value in layers.items()
    ]


def _histogram_bars(histogram: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not histogram or not histogram.get("counts"):
        return []
    counts, edges = histogram["counts"], histogram.get("edges") or []
    peak = max(counts) or 1
    width = 100 / len(counts)
    bars = []
    for i, count in enumerate(counts):
        lo = edges[i] if i < len(edges) else None
        hi = edges[i + 1] if i + 1 < len(edges) else None
        height = 100 * count / peak
        bars.append(
            {
                "x": i * width,
                "w": width * 0.9,
                "y": 100 - height,
                "h": height,
                "count": count,
                "lo": lo,
                "hi": hi,
            }
        )
    return bars


def _msg(title: str, error: Exception) -> dict[str, str]:
    return {"title": title, "message": str(error)}


def _check_input(request: Request, form: dict[str, str]) -> None:
    """Refuse what the database would choke on: ids past MAX_INT, text with a NUL."""
    for name, value in request.path_params.items():
        if isinstance(value, int) and value > MAX_INT:
            raise NotFoundError(f"there is no {name.removesuffix('_id')} #{value}")
    for _, value in [*request.query_params.multi_items(), *form.items()]:
        if "\x00" in value:
            raise InputError("text may not contain a NUL character (\\x00)")


def _int(value: str | None) -> int | None:
    """A whole number in 0..MAX_INT from a query or form field; None when absent."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_INT:
        raise InputError(f"expected a whole number from 0 to {MAX_INT}, got {value[:40]!r}")
    return number


def _float(value: str | None) -> float | None:
    """A finite number from a query or form field; None when absent."""
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"expected a finite number, got {value[:40]!r}")
    return number


def _cursor(value: str | None) -> str | None:
    """A keyset cursor `SCORE:FEATURE_ID` (FeatureRow.cursor), checked before the database sees it."""
    if not value:
        return None
    score, colon, feature_id = value.rpartition(":")
    try:
        _float(score)
        if colon and _int(feature_id) is not None:
            return value
    except InputError:
        pass
    raise InputError(f"bad page cursor {value[:40]!r}: follow the page's own next link")
