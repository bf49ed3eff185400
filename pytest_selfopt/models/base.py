"""The one small interface every provider implements, and the registry of providers.

Providers know nothing of the loop, specs or cases: they turn a :class:`Request` into a
:class:`Reply` or raise :class:`ProviderError` with a classified ``kind``. Retries, timeouts
policy, isolation and warm-up live in ``runner.py``.

A provider is a factory ``(name, options) -> Provider`` registered under a name that the
suite config uses as ``provider:``. ``options`` is the model's config mapping (minus
``provider``). A client is what isolation is about: ``i0`` keeps one client per process and
spec, ``i1`` opens a fresh one for every call.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import html
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

#: The HTTP header that carries a :class:`Reference` (JSON) to a simulator server.
REFERENCE_HEADER = "X-Selfopt-Reference"
#: The response header in which a simulator server announces its ``--time-scale``.
TIME_SCALE_HEADER = "X-Selfopt-Time-Scale"


@dataclass(frozen=True)
class Reference:
    """What only a simulated provider may see: the case's reference answer and coordinates.

    Never put into a prompt and never sent to a real provider (the runner passes it only when
    ``Provider.simulated`` is true); over HTTP it travels as the ``X-Selfopt-Reference`` header.
    """

    case_id: str
    phase: str
    answer: str  # a reply that passes the case's check
    wrong_answer: str  # a reply that fails it
    difficulty: float  # 0..1, the simulator's per-case difficulty
    run: int
    attempt: int
    variant: str
    spec_id: str
    seed: int = 0
    #: The cycle being measured; part of every simulated draw (fresh data each cycle). 0: no
    #: cycle, the draws of earlier versions.
    cycle: int = 0
    max_words: int | None = None  # restraint limit, so the simulator can ramble past it
    forbidden: tuple[str, ...] = ()  # must_not_contain, so the simulator can say it
    abstain: bool = False  # the case expects an abstention
    position: int | None = None  # the case's index in its cases file: where cold starts hit
    warmed_up: bool = False  # the spec warms the model up first: its measured runs are warm

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["forbidden"] = list(self.forbidden)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        d = dict(data)
        d["forbidden"] = tuple(d.get("forbidden", ()))
        return cls(**d)


@dataclass(frozen=True)
class Request:
    model: str  # the provider-side model name (config ``model:``), not the suite's alias
    prompt: str  # the user message, variant template already applied
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, max_tokens, ...
    timeout_s: float = 60.0  # per attempt
    reference: Reference | None = None  # simulated providers only


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Simulated providers report the latency they simulate (not slept in-process);
    #: ``None`` means "measure the wall clock", which HTTP providers do.
    simulated_latency_s: float | None = None


class ProviderError(Exception):
    """A transport-level failure, classified.

    ``kind``: ``timeout`` (no complete answer within the attempt's timeout), ``connect``
    (could not connect, or the connection was lost before a complete response), ``http_429``,
    ``http_5xx``, ``http_4xx``, ``protocol`` (a complete response that is not what the API
    promises: not JSON, wrong content type, fields missing) and ``config`` (the provider is
    set up wrong, e.g. its API key variable is unset). ``http_4xx`` other than 429 and
    ``config`` are not retried: auth or request errors do not heal.
    Messages must never contain API keys or request headers.
    """

    RETRYABLE = frozenset({"timeout", "connect", "http_429", "http_5xx", "protocol"})

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        simulated_latency_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.simulated_latency_s = simulated_latency_s

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


REDACTED = "[REDACTED]"
#: How much of an error body is read to build its excerpt, and the excerpt's length.
EXCERPT_SCAN_BYTES = 64 * 1024
EXCERPT_CHARS = 300
#: Shorter secrets are matched in their exact encodings only: a base64 fragment of a few
#: characters would match unrelated text.
_B64_FRAGMENT_MIN_BYTES = 8
_B64_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-%")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``[REDACTED]`` in every encoding a server can
    echo it back in: raw, JSON-escaped (``\\/``, ``\\uXXXX``), URL-encoded (either case,
    ``+`` for a space), HTML character references, and base64 (standard or URL-safe) of the
    secret alone or inside a longer value such as ``user:key`` (the whole base64 token goes).
    Redaction by construction: see docs/providers.md, "API keys"."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = _encoded_pattern(secret).sub(REDACTED, text)
        fragments = _base64_fragments(secret)
        if fragments is not None:
            text = _redact_base64(text, fragments)
    return text


def _char_forms(char: str) -> list[str]:
    """Regex alternatives for one character of a secret, in every text encoding."""
    forms = [re.escape(char)]
    code = ord(char)
    if code <= 0xFFFF:  # JSON \uXXXX, hex digits in either case
        forms.append(r"\\u" + "".join(f"[{d.lower()}{d.upper()}]" for d in f"{code:04x}"))
    short = json.dumps(char)[1:-1]
    if short != char and not short.startswith("\\u"):
        forms.append(re.escape(short))  # \" \\ \n ...
    if char == "/":
        forms.append(r"\\/")
    pct = "".join(f"%[{h[0]}][{h[1].lower()}{h[1].upper()}]" for h in (
        f"{b:02X}" for b in char.encode("utf-8")))  # fmt: skip
    forms.append(pct)
    if char == " ":
        forms.append(r"\+")
    forms += [re.escape(f"&#{code};"), f"&#[xX]0*{code:x};", f"&#[xX]0*{code:X};"]
    named = html.escape(char, quote=True)
    if named != char:
        forms.append(re.escape(named))
    return forms


@functools.lru_cache(maxsize=64)
def _encoded_pattern(secret: str) -> re.Pattern[str]:
    return re.compile("".join(f"(?:{'|'.join(_char_forms(c))})" for c in secret))


@functools.lru_cache(maxsize=64)
def _base64_fragments(secret: str) -> re.Pattern[str] | None:
    """The base64 characters that depend only on the secret's bytes, for each of the three
    alignments it can have inside a longer value (``user:key``), in both alphabets; ``+`` and
    ``/`` may themselves be URL- or JSON-escaped."""
    raw = secret.encode("utf-8")
    n = len(raw)
    if n < _B64_FRAGMENT_MIN_BYTES:
        exact = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        return re.compile("|".join(re.escape(e.rstrip("=")) for e in sorted(exact)))
    fragments: set[str] = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            enc = encode(b"\0" * shift + raw).decode()
            fragments.add(enc[math.ceil(8 * shift / 6) : (8 * (shift + n) - 6) // 6 + 1])
    escaped = {"+": r"(?:\+|%2[bB])", "/": r"(?:/|\\/|%2[fF])"}
    alternatives = ("".join(escaped.get(c, re.escape(c)) for c in f) for f in sorted(fragments))
    return re.compile("|".join(alternatives))


def _redact_base64(text: str, fragments: re.Pattern[str]) -> str:
    """Replace every base64 token that contains a fragment, whole (its ends encode the
    neighbouring bytes, which may be part of the secret too)."""
    out: list[str] = []
    pos = 0
    for match in fragments.finditer(text):
        start, end = match.start(), match.end()
        if start < pos:
            continue
        while start > pos and (text[start - 1] in _B64_TOKEN_CHARS or text[start - 1] == "\\"):
            start -= 1
        while end < len(text) and (text[end] in _B64_TOKEN_CHARS or text[end] == "\\"):
            end += 1
        out += [text[pos:start], REDACTED]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def error_excerpt(content: bytes, secrets: Iterable[str | None]) -> str:
    """What may travel of a response body: a bounded, one-line, printable, secret-free excerpt.

    Only the first ``EXCERPT_SCAN_BYTES`` are read. A JSON error object is reduced to its
    ``type: message``; any other body to its text with ``\\/`` unescaped. Secrets are
    redacted (every encoding, see :func:`redact`) before the cut to ``EXCERPT_CHARS``, so a cut
    never leaves part of one."""
    head = content[:EXCERPT_SCAN_BYTES]
    text = head.decode("utf-8", "replace")
    message = _json_error_message(text) if len(content) <= EXCERPT_SCAN_BYTES else None
    text = message if message is not None else text
    text = redact(text.replace("\\/", "/"), secrets)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = redact(text, secrets)  # joining lines must not rebuild what a line break split
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _json_error_message(text: str) -> str | None:
    """``type: message`` of an OpenAI/Anthropic-style error body, else None (any shape,
    any depth: never raises)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, str):
        return error
    if not isinstance(error, dict):
        return None
    message = error.get("message", error.get("detail"))
    if not isinstance(message, str):
        return None
    kind = error.get("type")
    return f"{kind}: {message}" if isinstance(kind, str) and kind else message


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date); None if absent
    or unreadable. Fractional seconds are accepted (the simulator scales its delays)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def display_url(url: str) -> str:
    """``url`` without user info or query, fit for an error message."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@runtime_checkable
class Client(Protocol):
    def complete(self, request: Request) -> Reply: ...

    def close(self) -> None: ...


@runtime_checkable
class Provider(Protocol):
    #: True only for simulators: they receive ``Request.reference``; their latency and
    #: backoff are simulated rather than slept when ``simulated_time`` is true too.
    simulated: bool
    simulated_time: bool
    #: Optional (read with ``getattr``): a simulator server's time scale. Set, the runner
    #: reports measured latency divided by it and sleeps backoff multiplied by it.
    #: Optional too: ``uses_knob(knob) -> bool``, see :func:`provider_uses_knob`.

    def new_client(self) -> Client: ...


def provider_uses_knob(provider: Provider, knob: str) -> bool:
    """Whether ``provider`` can use the declared knob ``knob`` (sends it to the model, or, for
    a simulator, reacts to it), so a config can refuse a knob that no model can use.

    A provider answers with an optional method ``uses_knob(knob) -> bool``: the HTTP providers
    send every knob but the body keys they own, a ``sim`` model only the knobs its
    ``knob_effects`` names. A provider without the method is assumed to read
    ``Request.params`` and so to use every knob."""
    method = getattr(provider, "uses_knob", None)
    return bool(method(knob)) if callable(method) else True


ProviderFactory = Callable[[str, Mapping[str, Any]], Provider]

_REGISTRY: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``provider: NAME`` usable in the suite config (call from conftest or a plugin)."""
    _REGISTRY[name] = factory


def unregister_provider(name: str) -> None:
    """Forget a registered provider (tests; a plugin being unloaded)."""
    _REGISTRY.pop(name, None)


def provider_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create_provider(kind: str, name: str, options: Mapping[str, Any]) -> Provider:
    """Instantiate provider ``kind`` for the suite's model alias ``name``."""
    _load_builtins()
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise LookupError(
            f"model {name!r}: unknown provider {kind!r}; known providers: {known}"
        ) from None
    return factory(name, options)


_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from importlib import import_module

    for kind in ("sim", "openai", "anthropic"):
        _REGISTRY.setdefault(kind, import_module(f"pytest_selfopt.models.{kind}").create)
    from importlib.metadata import entry_points

    for ep in entry_points(group="pytest_selfopt.providers"):
        try:
            factory = ep.load()
        except Exception as exc:  # a broken third-party plugin: say which, do not hide it
            raise LookupError(
                f"provider entry point {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        _REGISTRY.setdefault(ep.name, factory)
