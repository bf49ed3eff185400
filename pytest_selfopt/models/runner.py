"""One model call under a spec (docs/providers.md): the variant's template, warm-up, isolation,
per-attempt timeout, retries with backoff, fallbacks, and the measurements of a sample.

The runner never judges an answer: a wrong answer is returned, never retried (retrying it
would turn accuracy into pass@k). Only transport failures (:class:`ProviderError`) are.

Timing: for providers with ``simulated_time`` (the in-process simulator) the latency the
provider reports and the backoff are *added up*, never slept, so a simulated cycle takes
seconds and its numbers are reproducible. For every other provider the wall clock is
measured and backoff really sleeps (through ``sleep``); a provider with a ``time_scale`` (an
HTTP simulator server on a compressed clock) has its measured latency divided by the scale,
``Retry-After`` (real seconds) converted likewise, and backoff slept times the scale, so its
numbers are in the simulation's seconds like the in-process simulator's. Backoff jitter for simulated providers
(which get the case's reference) is a hash of the reference, so it does not depend on call
order; otherwise it comes from ``random.Random(rng_seed)``.

Latency is the call's: under ``i1`` the fresh client is built before the clock starts and
closed after it stops, so ``latency_s`` never includes client construction (a new
connection's handshake happens inside the call, which is what ``i1`` measures).

``Retry-After`` is honoured up to ``RETRY_AFTER_CAP_S`` (30 s) per wait; when the cap applies
the answer says so in ``notes`` (and in ``error_message`` when every attempt failed).

Declared knobs (the spec's ``extra``) travel as ``Request.params``; providers merge them over
the model's own ``params`` (docs/providers.md, "Knobs"). ``cycle`` (with ``seed``) goes into
every reference a simulated provider gets, so each cycle draws fresh simulated data.

Fallbacks are tried after the primary model gives up with any transport failure,
non-retryable ones (``http_4xx``, ``config``) included: each model gets the spec's knobs.

An endpoint that refuses connections (a server that is down) is not hammered
(``models/breaker.py``): after ``BREAKER_THRESHOLD`` consecutive ``connect`` failures on one
endpoint (provider and URL) with no answer in between, its circuit opens; further attempts on it
fail at once as ``connect``, with no backoff sleep and latency 0, and one real attempt is let
through every ``BREAKER_RETRY_S`` of wall time; an answer (or any reply from the server) closes
it. Per process, thread-safe. Samples stay ``connect``, so the loop's outage diagnosis reads
them as before; a down server's cycle takes seconds instead of every sample's backoff
(docs/performance.md). Not for simulated time.

Many threads may call ``ask`` at once (docs/performance.md, "Calls in flight"): every attempt
and warm-up ping of a model that really waits first takes a permit from the model's
:class:`~pytest_selfopt.models.ratelimit.Limiter` (``max_concurrency``, ``rpm``, ``tpm``, and
slowing down on HTTP 429), before its clock starts, so waiting for a permit is never latency.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.models.base import (
    Client,
    Provider,
    ProviderError,
    Reference,
    Reply,
    Request,
    create_provider,
    display_url,
)
from pytest_selfopt.models.breaker import Breaker
from pytest_selfopt.models.ratelimit import Limiter, Limits, Permit
from pytest_selfopt.models.sim import draw

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 30.0
WARMUP_BUDGET = 5
WARMUP_PROMPT = "ping"
#: Why an attempt after :meth:`Runner.close` was not sent.
CLOSED = "not sent: the session ended (the runner was closed)"


class ModelLike(Protocol):
    """A model entry of the suite config (``config.ModelConfig``)."""

    @property
    def name(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def options(self) -> Mapping[str, Any]: ...
    @property
    def price(self) -> tuple[float, float] | None: ...  # USD per million tokens, in and out


class VariantLike(Protocol):
    """A prompt variant (``config.VariantConfig``)."""

    @property
    def name(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def system(self) -> str | None: ...
    def render(self, prompt: str) -> str: ...


class CaseLike(Protocol):
    """A case that can produce the reference a simulated provider needs."""

    def reference(
        self, *, run: int, attempt: int, variant: str, spec_id: str, seed: int
    ) -> Reference: ...


@dataclass(frozen=True)
class Answer:
    """What one ``ask`` measured. ``text`` is None when every attempt failed in transport."""

    text: str | None
    error_kind: str | None  # the last transport failure's kind; None when answered
    error_message: str | None  # secret-free
    attempts: int  # all attempts, fallbacks included (warm-up excluded)
    latency_s: float  # the answering (or last) attempt
    total_latency_s: float  # all attempts plus backoff
    input_tokens: int
    output_tokens: int
    model: str  # the alias that answered or was tried last
    cost: float | None  # USD, from the answering model's price; None without a price
    started_at: float  # time.time() at the first measured attempt
    fallbacks_used: tuple[str, ...] = ()
    #: What the runner adjusted on the way, for reports (e.g. a capped Retry-After).
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.text is not None


class Runner:
    """Calls models under specs; one per process (providers and i0 clients are cached here)."""

    def __init__(
        self,
        models: Mapping[str, ModelLike],
        variants: Mapping[str, VariantLike],
        *,
        seed: int = 0,
        cycle: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
        rng_seed: int | None = None,
    ) -> None:
        self.models = dict(models)
        self.variants = dict(variants)
        self.seed = seed
        #: The cycle being measured (``len(history) + 1``); part of every simulated draw, so
        #: each cycle sees fresh data. 0: no cycle (direct use), the draws of earlier versions.
        self.cycle = cycle
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(rng_seed)
        self._lock = threading.Lock()
        self._providers: dict[str, Provider] = {}
        #: i0 clients by (spec, alias): a spec hashes by its knobs, like its id but cheaper.
        self._clients: dict[tuple[Spec, str], Client] = {}
        self._warm: dict[tuple[str, str], threading.Lock] = {}  # (spec id, alias) warming up
        self._warmed: set[tuple[str, str]] = set()  # (spec id, alias) whose warm-up answered
        self._closed = False
        self._limiters: dict[str, Limiter] = {}  # alias -> its limits in this process
        self._breakers: dict[str, Breaker] = {}  # endpoint -> its circuit in this process
        self.warmup_attempts = 0  # unmeasured warm-up requests sent, for reports and tests

    # -- public ------------------------------------------------------------------------------

    def ask(
        self,
        spec: Spec,
        prompt: str,
        *,
        case: CaseLike | None = None,
        run: int = 1,
        fallbacks: Sequence[str] = (),
    ) -> Answer:
        """Ask ``spec.model`` (then ``fallbacks`` in order) and measure; never raises for a
        transport failure — that is returned as ``error_kind``."""
        if spec.isolation not in ("i0", "i1"):
            raise ValueError(f"isolation: expected i0 or i1, got {spec.isolation!r}")
        variant = self.variants.get(spec.variant)
        if variant is None:
            raise LookupError(
                f"variant {spec.variant!r} is not defined; known: {sorted(self.variants)}"
            )
        text = variant.render(prompt)
        chain = [spec.model] + [m for m in dict.fromkeys(fallbacks) if m != spec.model]
        tally = _Tally()
        used: list[str] = []
        for alias in chain:
            if alias != spec.model:
                used.append(alias)
            provider = self._provider(alias)
            if provider.simulated and case is None:
                raise ValueError(f"model {alias!r} is simulated and needs the case (its reference)")
            if spec.warmup:
                self._warm_up(spec, alias, provider, case, variant.system)
            reply = self._attempts(spec, alias, provider, text, variant.system, case, run, tally)
            if reply is not None:
                return tally.answer(reply.text, alias, self._cost(alias, tally), tuple(used))
        return tally.answer(None, chain[-1], self._cost(chain[-1], tally), tuple(used))

    def limit_notes(self) -> list[str]:
        """What the rate limits did (429 slow-downs, long waits), for the session summary."""
        with self._lock:
            limiters = list(self._limiters.values())
        return [note for limiter in limiters for note in limiter.notes()]

    def close(self) -> None:
        """Close every kept (i0) client; no request is sent after this (a call in flight
        ends at once and is not retried)."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- attempts ----------------------------------------------------------------------------

    def _attempts(
        self,
        spec: Spec,
        alias: str,
        provider: Provider,
        text: str,
        system: str | None,
        case: CaseLike | None,
        run: int,
        tally: _Tally,
    ) -> Reply | None:
        """Up to ``1 + spec.retries`` attempts on one model; the reply, or None."""
        simulated_time = bool(provider.simulated_time)
        scale = _time_scale(provider)
        breaker = None if simulated_time else self.breaker(provider, alias)
        for k in range(spec.retries + 1):
            if self._closed:  # the session ended: no new request, not even a retry
                tally.failed(0.0, ProviderError("connect", CLOSED))
                return None
            if breaker is not None and not breaker.allow():  # the endpoint is down: no wait
                if tally.started_at is None:
                    tally.started_at = time.time()
                tally.attempts += 1
                tally.failed(0.0, breaker.refusal())
                return None
            ref = self._reference(provider, case, run, k + 1, spec, alias)
            request = Request(
                model=self._provider_model(alias),
                prompt=text,
                system=system,
                params=dict(spec.extra),
                timeout_s=spec.timeout_s,
                reference=ref,
            )
            with self._permit(alias, provider, text) as permit:  # before the clock starts
                client = self._client(spec, alias, provider)  # so is the client
                if tally.started_at is None:
                    tally.started_at = time.time()
                tally.attempts += 1
                t0 = self._clock()
                try:
                    reply = self._complete(spec, client, request)
                except ProviderError as exc:
                    measured = (self._clock() - t0) / scale
                    permit.throttled = exc.kind == "http_429"
                    failure: ProviderError | None = exc
                else:
                    measured = (self._clock() - t0) / scale
                    permit.answered(reply.input_tokens, reply.output_tokens)
                    failure = None
            if failure is not None:
                latency = (
                    failure.simulated_latency_s
                    if simulated_time and failure.simulated_latency_s is not None
                    else measured
                )
                tally.failed(latency, failure)
                if breaker is not None:
                    breaker.record(failure.kind)
                if not failure.retryable or k == spec.retries:
                    return None
                if (breaker is not None and breaker.open) or self._closed:
                    return None  # further attempts would be refused at once: no backoff
                wait = self._backoff(k, _scaled_retry_after(failure, scale), ref, alias, tally)
                if not simulated_time:
                    self._sleep(wait * scale)
                tally.total += wait
                continue
            latency = (
                reply.simulated_latency_s
                if simulated_time and reply.simulated_latency_s is not None
                else measured
            )
            tally.answered(latency, reply)
            if breaker is not None:
                breaker.record(None)
            return reply
        return None

    def breaker(self, provider: Provider, alias: str) -> Breaker:
        """The circuit of the endpoint ``provider`` sends to (its URL; the alias when it has
        none), shared by every model that points there."""
        options = getattr(provider, "options", None)
        url = getattr(provider, "url", None) or getattr(options, "base_url", None)
        key = f"{type(provider).__name__} {url}" if isinstance(url, str) else f"alias {alias}"
        with self._lock:
            found = self._breakers.get(key)
            if found is None:
                where = display_url(url) if isinstance(url, str) else alias
                found = self._breakers[key] = Breaker(where)
            return found

    def _client(self, spec: Spec, alias: str, provider: Provider) -> Client:
        """``i1``: a fresh client for this call; ``i0``: the kept one."""
        if spec.isolation == "i1":
            return provider.new_client()
        return self._kept_client(spec, alias, provider)

    def _complete(self, spec: Spec, client: Client, request: Request) -> Reply:
        """One call; an ``i1`` client is closed after it (outside the caller's clock)."""
        try:
            return client.complete(request)
        finally:
            if spec.isolation == "i1":
                client.close()

    def _kept_client(self, spec: Spec, alias: str, provider: Provider) -> Client:
        with self._lock:
            client = self._clients.get((spec, alias))
            if client is None:
                client = self._clients[(spec, alias)] = provider.new_client()
            return client

    def _warm_up(
        self, spec: Spec, alias: str, provider: Provider, case: CaseLike | None, system: str | None
    ) -> None:
        """Unmeasured pings before the first measured call of (spec, model) in this process,
        until one succeeds or the budget is spent. Concurrent callers wait for the first."""
        with self._lock:
            gate = self._warm.get((spec.id, alias))
            first = gate is None
            if gate is None:
                gate = self._warm[(spec.id, alias)] = threading.Lock()
                gate.acquire()
        if not first:
            with gate:  # wait until the first caller finished warming up
                return
        try:
            for i in range(WARMUP_BUDGET):
                if self._closed:
                    return  # the session ended: no ping
                ref = self._reference(provider, case, 0, i, spec, alias)
                request = Request(
                    model=self._provider_model(alias),
                    prompt=WARMUP_PROMPT,
                    system=system,
                    params=dict(spec.extra),
                    timeout_s=spec.timeout_s,
                    reference=ref,
                )
                self.warmup_attempts += 1
                try:
                    with self._permit(alias, provider, WARMUP_PROMPT) as permit:
                        client = self._client(spec, alias, provider)
                        try:
                            reply = self._complete(spec, client, request)
                        except ProviderError as exc:
                            permit.throttled = exc.kind == "http_429"
                            raise
                        permit.answered(reply.input_tokens, reply.output_tokens)
                    with self._lock:
                        self._warmed.add((spec.id, alias))
                    return
                except ProviderError as exc:
                    if not exc.retryable:
                        return
                    if not provider.simulated_time and i + 1 < WARMUP_BUDGET:
                        scale = _time_scale(provider)
                        retry_after = _scaled_retry_after(exc, scale)
                        self._sleep(self._backoff(i, retry_after, ref, alias, None) * scale)
        finally:
            gate.release()

    # -- helpers -----------------------------------------------------------------------------

    @contextmanager
    def _permit(self, alias: str, provider: Provider, text: str) -> Iterator[Permit]:
        """A slot under the model's limits; simulated time has no limits to keep."""
        if provider.simulated_time:
            yield Permit(0)
            return
        with self._lock:
            limiter = self._limiters.get(alias)
            if limiter is None:
                model = self.models[alias]
                limits = Limits(
                    max_concurrency=getattr(model, "max_concurrency", None),
                    rpm=getattr(model, "rpm", None),
                    tpm=getattr(model, "tpm", None),
                )
                limiter = self._limiters[alias] = Limiter(
                    alias, limits, scale=_time_scale(provider)
                )
        with limiter.permit(text) as permit:
            yield permit

    def _provider(self, alias: str) -> Provider:
        with self._lock:
            provider = self._providers.get(alias)
            if provider is None:
                model = self.models.get(alias)
                if model is None:
                    raise LookupError(
                        f"model {alias!r} is not defined; known: {sorted(self.models)}"
                    )
                provider = self._providers[alias] = create_provider(
                    model.provider, model.name, model.options
                )
            return provider

    def _provider_model(self, alias: str) -> str:
        name = self.models[alias].options.get("model")
        return name if isinstance(name, str) and name else alias

    def _reference(
        self,
        provider: Provider,
        case: CaseLike | None,
        run: int,
        attempt: int,
        spec: Spec,
        alias: str,
    ) -> Reference | None:
        """Only simulated providers ever get the case's reference (with whether this spec's
        warm-up of the model answered: a simulated cold start is then behind it)."""
        if not provider.simulated or case is None:
            return None
        ref = case.reference(
            run=run, attempt=attempt, variant=spec.variant, spec_id=spec.id, seed=self.seed
        )
        with self._lock:
            warmed_up = (spec.id, alias) in self._warmed
        return replace(ref, cycle=self.cycle, warmed_up=warmed_up)

    def _backoff(
        self,
        k: int,
        retry_after_s: float | None,
        ref: Reference | None,
        alias: str,
        tally: _Tally | None,
    ) -> float:
        """Full jitter over ``0.5 s * 2^k`` (capped at 8 s); at least Retry-After, up to
        ``RETRY_AFTER_CAP_S`` (a longer one is noted on ``tally``)."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**k)
        if ref is not None:  # simulated: reproducible whatever the call order
            coords = (ref.seed, ref.spec_id, ref.case_id, ref.run, ref.attempt, alias)
            cycle = (ref.cycle,) if ref.cycle else ()  # 0: the draws of earlier versions
            u = draw(*coords[:1], *cycle, *coords[1:], "backoff")
        else:
            with self._lock:
                u = self._rng.random()
        wait = u * ceiling
        if retry_after_s is not None:
            if retry_after_s > RETRY_AFTER_CAP_S and tally is not None:
                tally.note(
                    f"Retry-After {retry_after_s:g} s capped at {RETRY_AFTER_CAP_S:g} s "
                    "(RETRY_AFTER_CAP_S)"
                )
            wait = max(wait, min(retry_after_s, RETRY_AFTER_CAP_S))
        return wait

    def _cost(self, alias: str, tally: _Tally) -> float | None:
        price = self.models[alias].price
        if price is None:
            return None
        return (tally.input_tokens * price[0] + tally.output_tokens * price[1]) / 1e6


def _time_scale(provider: Provider) -> float:
    """A simulator server's clock scale (``time_scale`` option), else 1."""
    scale = getattr(provider, "time_scale", None)
    return float(scale) if isinstance(scale, int | float) and scale > 0 else 1.0


def _scaled_retry_after(exc: ProviderError, scale: float) -> float | None:
    """``Retry-After`` (real seconds) in the provider's seconds."""
    return exc.retry_after_s / scale if exc.retry_after_s is not None else None


class _Tally:
    """Running measurements of one ``ask``."""

    def __init__(self) -> None:
        self.attempts = 0
        self.latency = 0.0
        self.total = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.started_at: float | None = None
        self.error: ProviderError | None = None
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def failed(self, latency: float, exc: ProviderError) -> None:
        self.latency = latency
        self.total += latency
        self.error = exc

    def answered(self, latency: float, reply: Reply) -> None:
        self.latency = latency
        self.total += latency
        self.input_tokens += reply.input_tokens or 0
        self.output_tokens += reply.output_tokens or 0
        self.error = None

    def answer(
        self, text: str | None, model: str, cost: float | None, used: tuple[str, ...]
    ) -> Answer:
        err = self.error if text is None else None
        message = str(err) if err else None
        if message is not None and self.notes:
            message = f"{message} ({'; '.join(self.notes)})"
        return Answer(
            text=text,
            error_kind=err.kind if err else None,
            error_message=message,
            attempts=self.attempts,
            latency_s=self.latency,
            total_latency_s=self.total,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            model=model,
            cost=cost,
            started_at=self.started_at if self.started_at is not None else time.time(),
            fallbacks_used=used,
            notes=tuple(self.notes),
        )
