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

import email.utils
import math
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
    max_words: int | None = None  # restraint limit, so the simulator can ramble past it
    forbidden: tuple[str, ...] = ()  # must_not_contain, so the simulator can say it
    abstain: bool = False  # the case expects an abstention

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


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret replaced, so error bodies can be shown."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "[REDACTED]")
    return text


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
        except (TypeError, ValueError, IndexError):
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

    def new_client(self) -> Client: ...


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
