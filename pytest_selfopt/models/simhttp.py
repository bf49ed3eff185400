"""The simulator server's vocabulary: injectable faults, the OpenAI/Anthropic wire shapes and
the state its handler threads share (counters, faults).

Faults (:class:`Fault`) come from ``SimServer.set_faults``, ``POST /_faults`` (JSON: a fault, a
list, or ``{"faults": [...]}``) or a per-request ``X-Selfopt-Fault: kind;key=value;...`` header.
``times=N`` limits a fault to the first N matching requests (a transient fault), ``after=N`` lets
N through first, ``path`` and ``model`` filter. Kinds:

``latency``       ``delay_s`` real seconds added before the answer
``trickle``       the answer's body sent chunked, spread over ``delay_s`` seconds
``status``        an error status: ``status`` (default 503), ``retry_after`` (header value);
                  shorthand ``"429"`` (Retry-After 1), ``"500"``, ``"503"``, ``"529"``...
``drop``          headers promise the whole body, half is sent, the connection is closed
``malformed``     200 with broken JSON
``content_type``  200 with an HTML error page (``text/html``)
``echo_headers``  401 whose message quotes the request headers back (secrets tests), in
                  ``encoding``: ``raw`` (plain JSON), ``json_slash`` (JSON with ``/`` escaped as
                  ``\\/``, as PHP servers write it), ``url`` (percent-encoded), ``base64``,
                  ``basic`` (base64 of ``selfopt:VALUE``, as in Basic auth) or ``all`` (every one
                  of them, in a ``json_slash`` body)
``reply``         a raw response of any shape: ``body`` (text or bytes), ``status`` (default
                  200), ``content_type`` (default ``application/json``) -- hostile-reply tests
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_selfopt.models.sim import SimBehaviour

FAULT_HEADER = "X-Selfopt-Fault"
FAULT_KINDS = frozenset(
    {"latency", "trickle", "status", "drop", "malformed", "content_type", "echo_headers", "reply"}
)
ECHO_ENCODINGS = ("raw", "json_slash", "url", "base64", "basic", "all")
_COUNTS = [
    "connections",
    "requests",
    "with_reference",
    "without_reference",
    "in_flight",
    "max_in_flight",
]
_BREAKDOWNS = ("by_path", "by_model", "statuses", "faults", "cold_starts")
_RESPONSE_KINDS = FAULT_KINDS - {"latency"}
_BORING_HEADERS = frozenset(
    {"host", "accept-encoding", "connection", "user-agent", "content-length"}
)
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class Fault:
    """One injected fault and how often it has struck."""

    kind: str
    times: int | None = None  # strike the first N matching requests only; None: all
    after: int = 0  # let this many matching requests through first
    delay_s: float = 0.0  # latency: added; trickle: the body's duration (real seconds)
    status: int = 503  # status and echo_headers
    retry_after: str | None = None  # Retry-After value for status faults
    path: str | None = None  # only requests to this path
    model: str | None = None  # only requests for this alias
    encoding: str = "raw"  # echo_headers: how the headers are quoted back
    body: str | bytes | None = None  # reply: the raw body
    content_type: str = "application/json"  # reply: its content type
    seen: int = 0
    struck: int = 0

    def __post_init__(self) -> None:
        if self.kind.isdigit():  # "503" is status 503
            self.kind, self.status = "status", int(self.kind)
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"fault kind: expected one of {sorted(FAULT_KINDS)} or a status, got {self.kind!r}"
            )
        if self.kind == "echo_headers" and self.status == 503:
            self.status = 401
        if self.kind == "reply" and self.status == 503:
            self.status = 200
        if self.encoding not in ECHO_ENCODINGS:
            raise ValueError(
                f"fault encoding: expected one of {list(ECHO_ENCODINGS)}, got {self.encoding!r}"
            )
        if self.kind == "status" and self.status == 429 and self.retry_after is None:
            self.retry_after = "1"

    @classmethod
    def parse(cls, spec: Fault | Mapping[str, Any] | str) -> Fault:
        """From a mapping, or text ``kind;key=value;...`` (the header form)."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, Mapping):
            return cls(**{k: v for k, v in spec.items() if k not in ("seen", "struck")})
        kind, *pairs = [p.strip() for p in str(spec).split(";") if p.strip()]
        args: dict[str, Any] = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in ("times", "after", "status"):
                args[key] = int(value)
            elif key == "delay_s":
                args[key] = float(value)
            elif key in ("retry_after", "path", "model", "encoding", "body", "content_type"):
                args[key] = value
            else:
                raise ValueError(f"fault option: unknown key {key!r}")
        return cls(kind, **args)

    def take(self, path: str, model: str | None) -> bool:
        """Whether this fault strikes a request (the caller holds the server's lock)."""
        if (self.path and self.path != path) or (self.model and self.model != model):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.struck >= self.times):
            return False
        self.struck += 1
        return True


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def prompt_of(body: Mapping[str, Any]) -> str:
    """The last user message, in either shape (the simulator ignores the system prompt)."""
    messages = body.get("messages") or []
    users = [
        _text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"
    ]
    return users[-1] if users else ""


def reply_body(alias: str, text: str, tin: int, tout: int, anthropic: bool) -> dict[str, Any]:
    if anthropic:
        return {
            "id": "msg_sim",
            "type": "message",
            "role": "assistant",
            "model": alias,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": tin, "output_tokens": tout},
        }
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
    }


def response_kind(faults: list[Fault]) -> Fault | None:
    """The fault that shapes the response (latency faults only delay it)."""
    return next((f for f in faults if f.kind in _RESPONSE_KINDS), None)


def error_body(status: int, message: str, anthropic: bool) -> dict[str, Any]:
    """An error in the shape of the API that was called."""
    if anthropic:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


def echo_body(headers: Iterable[tuple[str, str]], encoding: str = "raw") -> bytes:
    """A 401 body quoting the request headers back, as careless servers quote a bad key: the
    client's own headers first, so they land in a client's short error excerpt."""

    def order(kv: tuple[str, str]) -> int:  # credentials first, then the client's own
        name = kv[0].lower()
        return 0 if name in _CREDENTIAL_HEADERS else 2 if name in _BORING_HEADERS else 1

    echoed = sorted(headers, key=order)
    wanted = ECHO_ENCODINGS[:-1] if encoding == "all" else (encoding,)
    quoted = "; ".join(f"{k}: {' | '.join(_encode(v, e) for e in wanted)}" for k, v in echoed)
    message = f"invalid credentials; request headers: {quoted}"
    text = json.dumps({"error": {"message": message, "type": "authentication_error"}})
    if encoding in ("json_slash", "all"):
        text = text.replace("/", "\\/")
    return text.encode()


def _encode(value: str, encoding: str) -> str:
    raw = value.encode("utf-8")
    if encoding == "url":
        return urllib.parse.quote(value, safe="")
    if encoding == "base64":
        return base64.b64encode(raw).decode()
    if encoding == "basic":
        return base64.b64encode(b"selfopt:" + raw).decode()
    return value  # raw, json_slash (escaped with the whole body)


class ServerState:
    """Everything the handler threads share; counters under one lock."""

    def __init__(self, behaviours: dict[str, SimBehaviour], time_scale: float) -> None:
        self.behaviours = behaviours
        self.time_scale = time_scale
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.faults: list[Fault] = []
        self.sockets: set[socket.socket] = set()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.counters: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
            self.counters.update({key: {} for key in _BREAKDOWNS})

    def bump(self, key: str, sub: str | None = None, n: int = 1) -> None:
        with self.lock:
            if sub is None:
                self.counters[key] += n
            else:
                self.counters[key][sub] = self.counters[key].get(sub, 0) + n
            if key == "in_flight":
                self.counters["max_in_flight"] = max(
                    self.counters["max_in_flight"], self.counters["in_flight"]
                )

    def strike(self, path: str, model: str | None) -> list[Fault]:
        with self.lock:
            return [f for f in self.faults if f.take(path, model)]

    def sleep(self, seconds: float) -> None:
        """Sleep, unless the server stops: then the request is abandoned, unanswered."""
        if self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set():
            raise ConnectionAbortedError("simulator server stopping")
