"""The review web app: browse, search and correct feature labels (`gloss serve`).

Starlette + Jinja2, server-rendered, one small script for keyboard shortcuts.

Who is acting: in local mode one reviewer name for every request; in team mode
each request carries a token (cookie set by /login, or `Authorization: Bearer`)
that a tokens file maps to a name, and anything else gets 401.

Safety: every POST must echo the per-browser CSRF cookie in a hidden `csrf`
field (and a cross-site Origin is refused); templates autoescape everything and
the script never builds HTML from data; review forms carry the label id and
version the reviewer saw, so a stale edit gets a 409 conflict page, never an
overwrite.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from store import (
    ConfigError,
    ConflictError,
    GlossError,
    InputError,
    NotFoundError,
    Store,
)

HERE = Path(__file__).resolve().parent
CSRF_COOKIE = "gloss_csrf"
TOKEN_COOKIE = "gloss_token"
PAGE_SIZE = 50
STATUSES = ("proposed", "accepted", "rejected", "unlabeled", "dead")
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
    from pipeline.rescore import rescore

    return rescore(store, explanation_id)


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
    env.globals["ORDERS"] = ORDERS
    env.globals["STATUSES"] = STATUSES
    app = _App(store, env, reviewer, tokens, rescorer, secure_cookies)
    return Starlette(
        routes=[
            Route("/", app.page(app.feature_list)),
            Route("/features/{feature_id:int}", app.page(app.feature_page)),
            Route("/features/{feature_id:int}/review", app.page(app.do_review), methods=["POST"]),
            Route("/features/{feature_id:int}/rescore", app.page(app.do_rescore), methods=["POST"]),
            Route("/queue", app.page(app.queue)),
            Route("/login", app.page(app.login_page, public=True)),
            Route("/login", app.page(app.do_login, public=True), methods=["POST"]),
            Route("/logout", app.page(app.do_logout), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )


class _App:
    def __init__(
        self,
        store: Store,
        env: Environment,
        reviewer: str | None,
        tokens: dict[str, str] | None,
        rescorer: Rescorer | None,
        secure_cookies: bool,
    ):
        self.store = store
        self.env = env
        self.reviewer = reviewer.strip() if reviewer else None
        self.tokens = tokens
        self.rescorer = rescorer
        self.secure = secure_cookies

    # ------------------------------------------------------------ plumbing

    def page(
        self, handler: Callable[..., Response], *, public: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a sync handler: identity, CSRF on POST, errors as pages, security headers."""

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
                response.set_cookie(
                    CSRF_COOKIE, csrf, httponly=True, samesite="lax", secure=self.secure
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    def _identify(self, request: Request) -> str | None:
        if self.tokens is None:
            return self.reviewer
        token = request.cookies.get(TOKEN_COOKIE, "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        for known, name in self.tokens.items():
            if token and hmac.compare_digest(known, token):
                return name
        return None

    def _check_post(self, request: Request, form: dict[str, str]) -> Response | None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
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
        order = p.get("order") or ("rank" if q else "score")
        if order not in ORDERS:
            raise InputError(f"unknown order {order!r}: use one of {', '.join(ORDERS)}")
        ranked = bool(q) and order == "rank"
        offset = _int(p.get("offset")) or 0
        after = None if ranked else (p.get("after") or None)
        rows = self.store.search(
            q,
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
                "total": self.store.count(q, **filters),
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
        return self.render(request, "feature.html", _card_context(card, queue))

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
            context = _card_context(card, _int(form.get("queue")))
            context.update(attempt=form, action=action, error=str(error))
            return self.render(request, "conflict.html", context, 409)
        queue = _int(form.get("queue"))
        if queue is not None and action != "note":
            return RedirectResponse(f"/queue?skip={queue}", status_code=303)
        suffix = f"&queue={queue}" if queue is not None else ""
        return RedirectResponse(f"/features/{feature_id}?done={action}{suffix}", status_code=303)

    def do_rescore(self, request: Request, form: dict[str, str]) -> Response:
        feature_id = request.path_params["feature_id"]
        explanation_id = _int(form.get("explanation_id"))
        explanation = self.store.explanation(explanation_id or 0)
        if explanation.feature_id != feature_id:
            raise InputError("that label belongs to another feature")
        if self.rescorer is None:
            raise GlossError("re-scoring is switched off in this server")
        self.rescorer(self.store, explanation.id)
        return RedirectResponse(f"/features/{feature_id}?done=rescore", status_code=303)

    def login_page(self, request: Request, _form: dict[str, str]) -> Response:
        if self.tokens is None or request.state.reviewer:
            return RedirectResponse("/", status_code=303)
        return self.render(request, "login.html", {"error": None})

    def do_login(self, request: Request, form: dict[str, str]) -> Response:
        if self.tokens is None:
            return RedirectResponse("/", status_code=303)
        token = form.get("token", "").strip()
        if not any(hmac.compare_digest(known, token) for known in self.tokens):
            return self.render(request, "login.html", {"error": "unknown token"}, 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="lax", secure=self.secure)
        return response

    def do_logout(self, request: Request, _form: dict[str, str]) -> Response:
        response = RedirectResponse("/login" if self.tokens else "/", status_code=303)
        response.delete_cookie(TOKEN_COOKIE)
        return response


# ---------------------------------------------------------------- view helpers


def _card_context(card, queue: int | None) -> dict[str, Any]:
    from pipeline.terminal import group_examples

    scale = card.feature.max_act or max(
        (max(ex.acts, default=0.0) for ex in card.examples), default=0.0
    )
    groups = [
        (title, [_shaded(ex, scale) for ex in examples])
        for title, examples in group_examples(card.examples)
    ]
    return {
        "card": card,
        "feature": card.feature,
        "current": card.current,
        "groups": groups,
        "bars": _histogram_bars(card.feature.histogram),
        "queue": queue,
        "attempt": None,
    }


def _shaded(ex, scale: float) -> dict[str, Any]:
    """Tokens with an opacity in 0..1 for their activation relative to the feature's max."""
    from pipeline.prompts import spell

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


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"expected a whole number, got {value!r}") from None


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"expected a number, got {value!r}") from None
