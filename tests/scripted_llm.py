"""A scripted OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It is a real socket server (stdlib http.server in a thread) that answers
/v1/completions and /v1/chat/completions like a tiny, deterministic model:

- an explain prompt gets the label "the token 'X'", X being the token shown with the
  highest activation most often (or `label_override`);
- a simulation prompt (echo + logprobs) gets, at each `unknown`, a digit distribution
  that puts 10 on the labeled token and 0 elsewhere; the integers method gets JSON;
- a detection prompt gets 1 for each example holding the labeled word (with logprobs
  for the digits when asked: P(1) = 0.8 for a 1, 0.3 for a 0); a fuzzing prompt gets 1
  for each example whose every marked span holds the labeled word; an intruder prompt
  gets, per set, the first example without the set's theme (one of `themes` if the test
  names them, else the word most of the set's examples share).

`faults` is a queue of scripted misbehaviours consumed one per request: a status with
headers (429 + Retry-After, 500), a delay past the client's timeout, a raw body
(malformed JSON), or a replacement body (missing logprobs, empty answer, ...).
Every request body is kept in `requests`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: str | None = None  # sent as-is (e.g. malformed JSON)
    body: dict[str, Any] | None = None  # sent instead of the normal answer
    when: str | None = None  # "explain", "simulate", "detect", "fuzz", "intruder": only those


class ScriptedLLM:
    def __init__(self, latency_s: float = 0.0):
        self.latency_s = latency_s
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.label_override: str | None = None
        self.themes: set[str] = set()  # words the intruder judge knows to be themes
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for
            # the client's delayed ACK (~40 ms per call), which real servers never add.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "scripted"}]}), {})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, text, headers, delay = server.answer(self.path, body)
                if delay:
                    time.sleep(delay)
                self._send(status, text, headers)

            def _send(self, status: int, text: str, headers: dict[str, str]) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops a burst of 16+ new connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def config(self, api: str = "completions", **endpoint: Any):
        """Explainer and simulator both on this server, with fast retries."""
        from gloss.pipeline.llm import EndpointConfig, LLMConfig

        settings = {"backoff_s": 0.01, "max_backoff_s": 0.05, **endpoint}
        role = EndpointConfig(
            model="scripted", base_url=self.base_url, api_key="test", api=api, **settings
        )
        return LLMConfig(explainer=role, simulator=role)

    def __enter__(self) -> ScriptedLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ answers

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, str, dict[str, str], float]:
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        kind = _kind(prompt)
        with self.lock:
            self.requests.append({"path": path, "kind": kind, **body})
            fault = next((f for f in self.faults if f.when in (None, kind)), None)
            if fault is not None:
                self.faults.remove(fault)
        delay = self.latency_s + (fault.delay_s if fault else 0.0)
        if fault is not None and (fault.status != 200 or fault.raw is not None):
            text = (
                fault.raw
                if fault.raw is not None
                else json.dumps({"error": {"message": "scripted"}})
            )
            return fault.status, text, fault.headers, delay
        if fault is not None and fault.body is not None:
            return 200, json.dumps(fault.body), fault.headers, delay
        if kind == "explain":
            label = self.label_override or explain_answer(prompt)
            return 200, json.dumps(_response(chat, " " + label, prompt)), {}, delay
        if kind in ("detect", "fuzz", "intruder"):
            if kind == "intruder":
                said = intruder_answer(prompt, self.themes)
            else:
                said = detect_answer(prompt) if kind == "detect" else fuzz_answer(prompt)
            response = _response(chat, " " + json.dumps(said, separators=(",", ":")), prompt)
            if body.get("logprobs") and kind == "detect":
                _add_digit_logprobs(response, said, chat)
            return 200, json.dumps(response), {}, delay
        label = simulated_label(prompt)
        if body.get("echo"):
            return 200, json.dumps(echo_answer(prompt, label)), {}, delay
        return 200, json.dumps(_response(chat, integers_answer(prompt, label), prompt)), {}, delay


def _kind(prompt: str) -> str:
    if "whether the feature is active in it" in prompt:
        return "detect"
    if "whether the marked tokens fit" in prompt:
        return "fuzz"
    if "does not belong" in prompt:
        return "intruder"
    return "simulate" if ("unknown" in prompt or "Document 1" in prompt) else "explain"


def _examples(block: str) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", block, re.MULTILINE)


def _judged_label(prompt: str) -> str | None:
    found = re.findall(r"^Explanation: (.*)$", prompt, re.MULTILINE)
    match = re.search(r"'(.+)'", found[-1]) if found else None
    return match.group(1) if match else None


def detect_answer(prompt: str) -> list[int]:
    label = _judged_label(prompt)
    examples = _examples(prompt.rsplit("<start>", 1)[-1])
    return [int(label is not None and label in text.split()) for text in examples]


def fuzz_answer(prompt: str) -> list[int]:
    label = _judged_label(prompt)
    out = []
    for text in _examples(prompt.rsplit("<start>", 1)[-1]):
        marked = [m.strip() for m in re.findall(r"<<(.+?)>>", text)]
        out.append(int(bool(marked) and all(label in m.split() for m in marked)))
    return out


def intruder_answer(prompt: str, themes: set[str] = frozenset()) -> list[int]:
    """Per set, the first example without the set's theme: one of `themes` that most
    examples hold, else the word most examples hold (1 when every example holds it)."""
    out = []
    for block in re.split(r"^Set \d+:$", prompt.rsplit("<start>", 1)[-1], flags=re.MULTILINE)[1:]:
        examples = [set(text.split()) for text in _examples(block)]
        counts = Counter(word for words in examples for word in words)
        known = [w for w in counts if w in themes]
        common = max(known or counts, key=lambda w: (counts[w], w))
        out.append(next((i for i, words in enumerate(examples, 1) if common not in words), 1))
    return out


def _add_digit_logprobs(response: dict[str, Any], said: list[int], chat: bool) -> None:
    """Logprobs for the answer's tokens: P(1) = 0.8 where it said 1, 0.3 where it said 0."""
    pieces = (
        [" ["] + [p for i, d in enumerate(said) for p in ([","] if i else []) + [str(d)]] + ["]"]
    )
    tops = []
    for piece in pieces:
        if piece in ("0", "1"):
            p1 = 0.8 if piece == "1" else 0.3
            tops.append({"1": math.log(p1), "0": math.log(1 - p1)})
        else:
            tops.append({piece: 0.0})
    choice = response["choices"][0]
    if chat:
        choice["logprobs"] = {
            "content": [
                {
                    "token": piece,
                    "logprob": top.get(piece, 0.0),
                    "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()],
                }
                for piece, top in zip(pieces, tops, strict=True)
            ]
        }
    else:
        choice["logprobs"] = {
            "tokens": pieces,
            "top_logprobs": tops,
            "token_logprobs": [top.get(p, 0.0) for p, top in zip(pieces, tops, strict=True)],
            "text_offset": [],
        }


def _response(chat: bool, text: str, prompt: str) -> dict[str, Any]:
    usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": max(1, len(text) // 4)}
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [choice],
            "usage": usage,
        }
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "scripted",
        "choices": [choice],
        "usage": usage,
    }


def explain_answer(prompt: str) -> str:
    """'the token X' for the token most often shown at activation 10 in the last listing."""
    listing = prompt.rsplit("Activations:", 1)[-1]
    tops = Counter(m.group(1).strip() for m in re.finditer(r"^(.*)\t10$", listing, re.MULTILINE))
    marked = Counter(m.strip() for m in re.findall(r"<<(.+?)>>", prompt.rsplit("Feature 2", 1)[-1]))
    counts = tops or marked
    if not counts:
        return "nothing in particular"
    return f"the token '{counts.most_common(1)[0][0]}'"


def simulated_label(prompt: str) -> str | None:
    found = re.findall(r"does is find (.*)", prompt)
    match = re.search(r"'(.+)'", found[-1]) if found else None
    return match.group(1) if match else None


def echo_answer(prompt: str, label: str | None) -> dict[str, Any]:
    """Echo the prompt as tokens, with a digit distribution at every `unknown`."""
    pieces = re.split(r"(unknown)", prompt)
    tokens, tops = [], []
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        if piece == "unknown" and i > 0 and pieces[i - 1].endswith("\t"):
            line = pieces[i - 1].rsplit("\n", 1)[-1][:-1]
            hit = label is not None and line.strip() == label
            probs = {"10": 0.9, "0": 0.1} if hit else {"0": 0.95, "1": 0.05}
            tops.append({k: math.log(v) for k, v in probs.items()})
        else:
            tops.append(None)
        tokens.append(piece)
    tops[0] = None
    choice = {
        "index": 0,
        "text": prompt + "\n",
        "logprobs": {
            "tokens": tokens,
            "top_logprobs": tops,
            "token_logprobs": [None] * len(tokens),
            "text_offset": [],
        },
        "finish_reason": "length",
    }
    usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1}
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "scripted",
        "choices": [choice],
        "usage": usage,
    }


def integers_answer(prompt: str, label: str | None) -> str:
    answer = {}
    for number, block in re.findall(
        r"Document (\d+) \(\d+ tokens\):\n<start>\n(.*?)<end>", prompt, re.DOTALL
    ):
        tokens = [line.split("\t", 1)[1] for line in block.splitlines() if "\t" in line]
        answer[number] = [10 if label is not None and t.strip() == label else 0 for t in tokens]
    return json.dumps(answer)
