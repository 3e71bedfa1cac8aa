"""The LLM client: the openai SDK (async) against any OpenAI-compatible endpoint.

One `LLMClient` per role (explainer, simulator). Each call:
  1. is hashed; a deterministic request (temperature 0, or a fixed seed) whose answer
     is already in `llm_calls` is served from there, so a rerun never pays twice;
  2. waits for a slot of its endpoint's concurrency limit;
  3. is retried by tenacity on 429 (honouring Retry-After), 5xx, timeouts and
     connection errors, with exponential backoff and jitter, a bounded number of times;
  4. is checked by the caller's `parse` function before it counts as a success, so an
     unusable answer is recorded as such (raw text kept) and never cached; an answer of
     the wrong shape (valid JSON, but not what the API promises) is unusable too, never
     a crash;
  5. lands in `llm_calls` with tokens, latency, cost and outcome, whatever happened (an
     answer too large for the ledger is kept as its head, `LEDGER_MAX_CHARS`).
Failures surface as `LLMError` after being recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from gloss.pipeline.settings import LOCAL, EndpointConfig, LLMConfig
from gloss.store import ConfigError, GlossError, LLMError, Store, StoreWorker

log = logging.getLogger(__name__)

T = TypeVar("T")

LEDGER_MAX_CHARS = 2_000_000  # a response larger than this, as JSON, is stored as a stub
LEDGER_HEAD_CHARS = 10_000
# What a parser raises on an answer of the wrong shape ({"text": 123}, a string where
# a list belongs, ...): the answer is unusable, not the program broken.
_SHAPE_ERRORS = (TypeError, KeyError, IndexError, AttributeError, ValueError, ArithmeticError)


@dataclass
class CallStats:
    """What a client did: HTTP calls made, answers served from the cache, spend."""

    calls: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    def add(self, other: CallStats) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass
class Budget:
    """A run's LLM spending limit, shared by every client of the run.

    A call reserves its worst case before it starts: its prompt tokens, estimated from
    the prompt's length, plus its max_tokens. No call starts whose reservation, on top
    of what is spent and what calls in flight have reserved, would pass the limit, so
    concurrent calls cannot overshoot it together. Once a call is refused,
    `BudgetExhausted` tells the caller to stop cleanly; calls made are always recorded.

    With `group` (store, group run id, worker run id) the limit is the run group's: the
    reservation is booked in the database (`Store.book_budget`), so every worker of the
    group, on any machine, draws on one budget.
    """

    max_tokens: int | None = None
    max_cost: float | None = None
    group: tuple[Store, int, int] | None = None
    tokens: int = 0
    cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    refused: bool = False

    def reserve(self, tokens: int, cost: float) -> None:
        if self.refused:
            raise BudgetExhausted(f"LLM budget reached ({self.describe()})")
        if self.group is not None:
            store, group_id, run_id = self.group
            fits = store.book_budget(group_id, run_id, tokens, cost)
        else:
            fits = not (
                (
                    self.max_tokens is not None
                    and self.tokens + self.reserved_tokens + tokens > self.max_tokens
                )
                or (
                    self.max_cost is not None
                    and self.cost + self.reserved_cost + cost > self.max_cost
                )
            )
        if not fits:
            self.refused = True
            raise BudgetExhausted(f"LLM budget reached ({self.describe()})")
        self.reserved_tokens += tokens
        self.reserved_cost += cost

    def settle(
        self, reserved: tuple[int, float], tokens_in: int, tokens_out: int, cost: float
    ) -> None:
        """A call finished: its reservation becomes what it really spent."""
        if self.group is not None:
            store, group_id, run_id = self.group
            store.settle_budget(group_id, run_id, reserved, tokens_in, tokens_out, cost)
        self.reserved_tokens -= reserved[0]
        self.reserved_cost -= reserved[1]
        self.tokens += tokens_in + tokens_out
        self.cost += cost

    @property
    def exhausted(self) -> bool:
        return (
            self.refused
            or (self.max_tokens is not None and self.tokens >= self.max_tokens)
            or (self.max_cost is not None and self.cost >= self.max_cost)
        )

    def describe(self) -> str:
        parts = []
        spent = "this worker spent " if self.group is not None else ""
        if self.max_tokens is not None:
            parts.append(f"{spent}{self.tokens:,} of {self.max_tokens:,} tokens")
        if self.max_cost is not None:
            parts.append(f"cost {self.cost:.4f} of {self.max_cost:.4f}")
        return ", ".join(parts) or "unlimited"


class BudgetExhausted(GlossError):
    """The run's token or cost budget is spent: stop starting new LLM calls."""


@dataclass(frozen=True)
class Answer:
    """One parsed LLM answer plus where it came from."""

    value: Any
    response: dict[str, Any]
    tokens_in: int
    tokens_out: int
    cached: bool
    call_id: int | None


class UnusableAnswer(LLMError):
    """The endpoint answered, but the answer cannot be used (no label, no logprobs, ...).

    `response` is the decoded answer when the check that refused it ran before the caller
    saw it (the envelope check), so the ledger can still keep it.
    """

    def __init__(self, message: str, response: dict[str, Any] | None = None):
        super().__init__(message)
        self.response = response


class _Transient(Exception):
    """A failure worth retrying (429, 5xx, timeout, connection)."""

    def __init__(self, error: Exception, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def request_hash(api: str, request: dict[str, Any]) -> str:
    """The cache key: the API kind and the full request, canonically serialised."""
    payload = json.dumps({"api": api, **request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def is_deterministic(request: dict[str, Any]) -> bool:
    return request.get("temperature", 1.0) == 0 or request.get("seed") is not None


class LLMClient:
    """Calls one endpoint for one role, with caching, retries, a concurrency limit and a ledger."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        role: str,
        store: Store | None = None,
        run_id: int | None = None,
        semaphore: asyncio.Semaphore | None = None,
        db: StoreWorker | None = None,
        budget: Budget | None = None,
    ):
        self.endpoint = endpoint
        self.budget = budget
        self.role = role
        self.store = store
        self.db = db or (StoreWorker(store) if store is not None else None)
        self.run_id = run_id
        self.base_url = endpoint.resolved_url()
        if self.base_url == LOCAL:
            raise ConfigError(
                "the local LLM endpoint is not running: wrap the work in "
                "pipeline.local_llm.endpoints(config) or run `gloss llm serve`"
            )
        self.semaphore = semaphore or asyncio.Semaphore(endpoint.concurrency)
        self.stats = CallStats()
        self._tokens_per_char: float | None = None  # for budget reservations; learnt
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=endpoint.resolved_key(),
            timeout=endpoint.timeout_s,
            max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    def build_request(self, prompt: str, **params: Any) -> dict[str, Any]:
        """The request body for this endpoint's API; chat wraps the prompt as one user turn."""
        if self.endpoint.api == "chat":
            if params.pop("echo", False):
                raise ConfigError(
                    "echo (prompt logprobs) needs the completions API: set the simulator's "
                    "api = 'completions' or method = 'integers'"
                )
            if "logprobs" in params:
                top = params.pop("logprobs")
                params["logprobs"] = True
                params["top_logprobs"] = top
            return {
                "model": self.endpoint.model,
                "messages": [{"role": "user", "content": prompt}],
                **params,
            }
        return {"model": self.endpoint.model, "prompt": prompt, **params}

    async def complete(
        self,
        prompt: str,
        parse: Callable[[dict[str, Any]], T],
        *,
        compact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        **params: Any,
    ) -> Answer:
        """Send `prompt`, return `Answer(value=parse(response))`; raise LLMError when that fails.

        `compact` may shrink a parsed response before it is stored (it must still parse
        to the same value): echoed prompts with logprobs are large.
        """
        request = self.build_request(prompt, **params)
        key = request_hash(self.endpoint.api, request)
        cacheable = is_deterministic(request)
        if cacheable and self.store is not None and self.db is not None:
            cached = await self.db.read(self.store.cached_llm_response, key)
            if cached is not None:
                try:
                    value = self._checked(parse, cached, "answer")
                except LLMError:
                    log.info("cached answer %s no longer parses; asking again", key[:12])
                else:
                    self.stats.cached += 1
                    return Answer(value, cached, 0, 0, True, None)

        started = time.perf_counter()
        response: dict[str, Any] | None = None
        sent: list[bool] = []  # appended to once a request leaves for the endpoint
        try:
            response = await self._send(request, sent)
            value = self._checked(parse, response, "answer")
            stored = self._checked(compact, response, "answer, compacted,") if compact else response
        except LLMError as error:
            self.stats.failures += 1
            if response is None and isinstance(error, UnusableAnswer):
                response = error.response
            outcome = "unusable" if response is not None else "error"
            await self._record(key, request, response, cacheable, outcome, started, str(error))
            raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Stopped mid-call (Ctrl-C, SIGTERM): the ledger still says it was asked. A call
            # still queued for a concurrency slot was never asked: nothing to record.
            if sent:
                await asyncio.shield(
                    self._record(
                        key, request, None, cacheable, "interrupted", started, "interrupted"
                    )
                )
            raise
        tokens_in, tokens_out = _usage(response)
        call_id = await self._record(key, request, stored, cacheable, "ok", started, None)
        return Answer(value, response, tokens_in, tokens_out, False, call_id)

    def _checked(self, fn: Callable[[dict[str, Any]], T], response: dict[str, Any], what: str) -> T:
        """`fn(response)`, with an answer of the wrong shape turned into `UnusableAnswer`."""
        try:
            return fn(response)
        except _SHAPE_ERRORS as error:
            raise UnusableAnswer(
                f"the {self.role}'s {what} has the wrong shape "
                f"({type(error).__name__}: {_short(str(error), 200)})"
            ) from None

    async def _send(self, request: dict[str, Any], sent: list[bool]) -> dict[str, Any]:
        endpoint = self.endpoint
        retrying = AsyncRetrying(
            stop=stop_after_attempt(endpoint.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(request, sent)
        except _Transient as error:
            raise LLMError(
                f"{self.role} call to {self.base_url} failed after {endpoint.max_attempts} "
                f"attempts: {error}; check the endpoint, or raise max_attempts/timeout_s"
            ) from None
        raise AssertionError("unreachable")

    async def _post(self, request: dict[str, Any], sent: list[bool]) -> dict[str, Any]:
        """One HTTP attempt through the SDK; transient failures become `_Transient`."""
        create = (
            self._client.chat.completions.with_raw_response.create
            if self.endpoint.api == "chat"
            else self._client.completions.with_raw_response.create
        )
        body = dict(request)
        standard = _STANDARD_PARAMS[self.endpoint.api]
        extra = {k: body.pop(k) for k in list(body) if k not in standard}
        async with self.semaphore:
            sent.append(True)
            reservation = await self._reserve(request)
            self.stats.calls += 1
            data: dict[str, Any] | None = None
            try:
                raw = await create(**body, extra_body=extra or None)
                data = self._body(raw.http_response.text)
                return data
            except UnusableAnswer as error:
                data = error.response
                raise
            except openai.RateLimitError as error:
                raise _Transient(error, _retry_after(error.response)) from None
            except openai.InternalServerError as error:
                raise _Transient(error, _retry_after(error.response)) from None
            except openai.APIStatusError as error:
                if error.status_code in (408, 409):
                    raise _Transient(error) from None
                raise LLMError(
                    f"{self.role} endpoint {self.base_url} refused the request "
                    f"(HTTP {error.status_code}): {_short(error.message)}"
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                raise _Transient(error) from None
            finally:
                await self._settle(reservation, data)

    def _body(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to decode
            raise UnusableAnswer(
                f"{self.role} endpoint returned malformed JSON: {_short(text)}"
            ) from None
        if not isinstance(data, dict):
            raise UnusableAnswer(f"{self.role} endpoint returned no choices: {_short(text)}")
        choices = data.get("choices")
        if not choices:
            raise UnusableAnswer(f"{self.role} endpoint returned no choices: {_short(text)}", data)
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UnusableAnswer(
                f"{self.role} endpoint returned choices that are not a list of objects: "
                f"{_short(text)}",
                data,
            )
        return data

    async def _reserve(self, request: dict[str, Any]) -> tuple[int, float, int]:
        """Book this call's worst case against the budget (raises BudgetExhausted).

        Prompt tokens are estimated from the prompt's length at the highest tokens per
        character seen on this endpoint so far (1 per 2 characters before the first answer).
        A run group's budget is booked in the database, off the event loop.
        """
        prompt = request.get("prompt") or json.dumps(request.get("messages", ""))
        if self.budget is None:
            return (0, 0.0, len(prompt))
        tokens_in = math.ceil(len(prompt) * (self._tokens_per_char or 0.5))
        tokens_out = request.get("max_tokens") or request.get("max_completion_tokens") or 1024
        cost = self._cost(tokens_in, tokens_out)
        await self._on_budget(self.budget.reserve, tokens_in + tokens_out, cost)
        return (tokens_in + tokens_out, cost, len(prompt))

    async def _settle(self, reservation: tuple[int, float, int], response: dict | None) -> None:
        """Turn the reservation into the usage the answer reports (none if there is none)."""
        tokens_in, tokens_out = _usage(response)
        if tokens_in and reservation[2]:
            self._tokens_per_char = max(self._tokens_per_char or 0.0, tokens_in / reservation[2])
        if self.budget is not None:
            await self._on_budget(
                self.budget.settle,
                reservation[:2], tokens_in, tokens_out, self._cost(tokens_in, tokens_out),
            )  # fmt: skip

    async def _on_budget(self, method: Callable[..., None], *args: Any) -> None:
        if self.budget is not None and self.budget.group is not None and self.db is not None:
            await self.db(method, *args)
        else:
            method(*args)

    def _cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.endpoint.price_in + tokens_out * self.endpoint.price_out) / 1e6

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Transient) and error.retry_after is not None:
            return min(error.retry_after, self.endpoint.max_backoff_s)
        base = self.endpoint.backoff_s * 2 ** (state.attempt_number - 1)
        jitter = random.uniform(0, self.endpoint.backoff_s)
        return min(base + jitter, self.endpoint.max_backoff_s)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        error = state.outcome.exception() if state.outcome else None
        log.warning("%s call failed (%s); retry %d", self.role, error, state.attempt_number)

    async def _record(
        self,
        key: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
        cacheable: bool,
        outcome: str,
        started: float,
        error: str | None,
    ) -> int | None:
        tokens_in, tokens_out = _usage(response)
        cost = self._cost(tokens_in, tokens_out)
        self.stats.tokens_in += tokens_in
        self.stats.tokens_out += tokens_out
        self.stats.cost += cost
        if self.store is None or self.db is None:
            return None
        if response is not None:
            response = _for_ledger(response)
        return await self.db(
            self.store.record_llm_call,
            request_hash=key,
            role=self.role,
            model=self.endpoint.model,
            endpoint=self.base_url,
            cacheable=cacheable,
            outcome=outcome,
            error=error,
            request=request,
            response=response,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=cost,
            latency_s=time.perf_counter() - started,
            run_id=self.run_id,
        )


_STANDARD_PARAMS = {
    "completions": {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "logprobs",
        "echo",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    },
    "chat": {
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "logprobs",
        "top_logprobs",
        "seed",
        "response_format",
    },
}


def make_clients(
    config: LLMConfig,
    store: Store | None = None,
    run_id: int | None = None,
    db: StoreWorker | None = None,
    budget: Budget | None = None,
) -> tuple[LLMClient, LLMClient]:
    """Explainer and simulator clients; roles on the same endpoint share one concurrency limit."""
    explainer, simulator = config.explainer, config.simulator
    shared = explainer.resolved_url() == simulator.resolved_url()
    limit = min(explainer.concurrency, simulator.concurrency) if shared else None
    first = asyncio.Semaphore(limit or explainer.concurrency)
    second = first if shared else asyncio.Semaphore(simulator.concurrency)
    return (
        LLMClient(
            explainer,
            role="explainer",
            store=store,
            run_id=run_id,
            semaphore=first,
            db=db,
            budget=budget,
        ),
        LLMClient(
            simulator,
            role="simulator",
            store=store,
            run_id=run_id,
            semaphore=second,
            db=db,
            budget=budget,
        ),
    )


def answer_text(response: dict[str, Any]) -> str:
    """The generated text of the first choice, for either API ("" when there is none)."""
    choice = response["choices"][0]
    if "message" in choice:
        message = choice["message"]
        if message is not None and not isinstance(message, dict):
            raise UnusableAnswer(
                f"the answer's message is a {type(message).__name__}, not an object"
            )
        text = (message or {}).get("content")
    else:
        text = choice.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise UnusableAnswer(f"the answer's text is a {type(text).__name__}, not a string")
    return text


def answer_logprobs(response: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """Each generated token with its top alternatives' logprobs, for either API; [] when
    the endpoint sent none. Echoed prompt tokens are not included (no echo requested)."""
    choice = response["choices"][0]
    logprobs = choice.get("logprobs") or {}
    if "content" in logprobs:  # chat
        out = []
        for item in logprobs["content"] or []:
            tops = {alt["token"]: float(alt["logprob"]) for alt in item.get("top_logprobs") or []}
            tops.setdefault(item["token"], float(item["logprob"]))
            out.append((item["token"], tops))
        return out
    tokens = logprobs.get("tokens") or []
    tops_list = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        (token, {k: float(v) for k, v in (tops or {}).items()})
        for token, tops in zip(tokens, tops_list, strict=False)
    ]


def _for_ledger(response: dict[str, Any]) -> dict[str, Any]:
    """The response, or a stub with its head when it is over LEDGER_MAX_CHARS as JSON.

    A stub has no `choices`, so a cache lookup that finds it fails to parse and asks again.
    """
    text = json.dumps(response)
    if len(text) <= LEDGER_MAX_CHARS:
        return response
    return {"truncated": True, "chars": len(text), "head": text[:LEDGER_HEAD_CHARS]}


def _usage(response: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens as the answer reports them; 0 where it does not say."""
    usage = (response or {}).get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name)
        counts.append(value if isinstance(value, int) and value > 0 else 0)
    return counts[0], counts[1]


def _retry_after(response: Any) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"
