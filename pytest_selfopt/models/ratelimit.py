"""Rate limits as users meet them, per model and per process: calls in flight
(``max_concurrency``), requests per minute (``rpm``) and tokens per minute (``tpm``), LiteLLM's
names; and on HTTP 429 the process slows down by itself.

Why here and not in the plugin: a test that asks several things in turn, a call made ahead
and a warm-up ping all go through ``Runner`` and must all count against the same limits.

* **Calls in flight** are bounded by ``max_concurrency`` (unbounded when unset: the process's
  own concurrency bounds them). On a 429 the bound drops to half the calls then in flight
  (at least 1), and grows back by one after as many answered calls in a row as the bound,
  up to ``max_concurrency`` (additive increase, multiplicative decrease, as TCP and Inspect
  AI's adaptive connections do). The 429'd attempt itself is retried by the runner as before
  (backoff, at least ``Retry-After``): this only changes how many calls start meanwhile.
* **Requests and tokens per minute** are token buckets refilled continuously (``rpm / 60``
  requests and ``tpm / 60`` tokens a second), each holding at most one second's worth, so a
  limit per minute is never spent in a burst at the start of the minute. A call's tokens are
  not known before it answers: it takes an estimate (its text's characters / 4, plus the
  model's mean output so far) and the difference is settled when it answers (the bucket may
  go below zero: the next calls wait).
* **Time.** Waiting for a permit happens before an attempt's clock starts: a sample's latency
  is its own call's, never its wait in the queue. For a simulator server on a compressed
  clock (``time_scale``), minutes are the simulation's minutes, like its latencies.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: Characters per token when estimating a prompt's tokens before it is sent.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Limits:
    """One model's configured limits; None: no limit of that kind."""

    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None


class Bucket:
    """A token bucket: ``rate`` units a second, holding at most ``capacity``; may go below
    zero when a debt is settled (then takers wait until it is paid back)."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0: now); an amount over the capacity waits
        for a full bucket and then leaves it in debt."""
        self.refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class Limiter:
    """The limits of one model in one process, shared by every thread that calls it."""

    def __init__(
        self,
        alias: str,
        limits: Limits,
        *,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[threading.Condition, float], object] | None = None,
    ) -> None:
        self.alias = alias
        self.limits = limits
        self._clock = clock
        #: Waits (with the lock released) for a rate limit: ``Condition.wait``; tests pass a
        #: fake that moves their clock instead.
        self._pause = pause or (lambda cond, seconds: cond.wait(seconds))
        self._cond = threading.Condition()
        now = clock()
        per_s = 1.0 / (60.0 * scale)  # per minute of the provider's clock, in real seconds
        self._requests = (
            Bucket(limits.rpm * per_s, max(1.0, limits.rpm / 60.0), now) if limits.rpm else None
        )
        self._tokens = (
            Bucket(limits.tpm * per_s, max(1.0, limits.tpm / 60.0), now) if limits.tpm else None
        )
        self.bound: int | None = limits.max_concurrency  # calls in flight allowed now
        self.in_flight = 0
        self.peak = 0  # calls in flight at once, at most
        self._streak = 0  # answered calls in a row since the bound last changed
        self._output_mean = 0.0
        self._answered = 0
        # What happened, for the summary.
        self.throttled = 0  # 429s seen
        self.lowest: int | None = None  # the lowest bound a 429 brought
        self.waited_s = 0.0  # real seconds spent waiting for rpm/tpm

    # -- taking and giving back a permit --------------------------------------------------------

    def estimate(self, text: str) -> int:
        """A call's tokens before it is sent: its text / 4, plus the mean output so far."""
        return math.ceil(len(text) / CHARS_PER_TOKEN) + round(self._output_mean)

    @contextmanager
    def permit(self, text: str) -> Iterator[Permit]:
        """Wait until one more call of this model may start; hold the slot for the call."""
        estimate = self.estimate(text) if self._tokens is not None else 0
        with self._cond:
            started = self._clock()
            while True:
                if self.bound is not None and self.in_flight >= self.bound:
                    self._cond.wait()
                    continue
                now = self._clock()
                wait = 0.0
                if self._requests is not None:
                    wait = max(wait, self._requests.wait_for(1, now))
                if self._tokens is not None:
                    wait = max(wait, self._tokens.wait_for(estimate, now))
                if wait <= 0:
                    break
                self._pause(self._cond, wait)
            self.waited_s += self._clock() - started
            if self._requests is not None:
                self._requests.take(1)
            if self._tokens is not None:
                self._tokens.take(estimate)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        permit = Permit(estimate)
        try:
            yield permit
        finally:
            self._release(permit)

    def _release(self, permit: Permit) -> None:
        with self._cond:
            self.in_flight -= 1
            if self._tokens is not None and permit.tokens is not None:
                self._tokens.take(permit.tokens - permit.estimate)  # settle the estimate
            if permit.tokens is not None and permit.output_tokens is not None:
                self._answered += 1
                self._output_mean += (permit.output_tokens - self._output_mean) / self._answered
            if permit.throttled:
                self._slow_down()
            elif permit.tokens is not None:
                self._speed_up()
            self._cond.notify_all()

    # -- adapting ---------------------------------------------------------------------------

    def _slow_down(self) -> None:
        """A 429: half the calls in flight (this one included), at least 1."""
        self.throttled += 1
        self.bound = max(1, (self.in_flight + 1) // 2)
        self.lowest = self.bound if self.lowest is None else min(self.lowest, self.bound)
        self._streak = 0

    def _speed_up(self) -> None:
        """An answered call: one more in flight after ``bound`` answers in a row."""
        if self.lowest is None or self.bound is None:
            return  # never throttled: the configured bound (or none) stands
        self._streak += 1
        if self._streak >= self.bound:
            self._streak = 0
            ceiling = self.limits.max_concurrency
            if ceiling is None and self.bound >= self.peak:
                self.bound = None  # back to as many as the process has in flight
            else:
                self.bound = self.bound + 1 if ceiling is None else min(ceiling, self.bound + 1)

    def notes(self) -> list[str]:
        """One line for the session summary when the model was throttled or limited."""
        out: list[str] = []
        if self.throttled and self.peak <= 1:  # one call at a time: nothing to slow down
            out.append(
                f"{self.alias}: HTTP 429 (rate limited) {self.throttled} time(s), one call at a "
                f"time (each retried after its backoff); set rpm or tpm for {self.alias} in the "
                "suite config to stay under the provider's limits"
            )
        elif self.throttled:
            now = "no limit" if self.bound is None else f"{self.bound}"
            configured = self.limits.max_concurrency
            cap = f" (max_concurrency {configured})" if configured else ""
            out.append(
                f"{self.alias}: HTTP 429 (rate limited) {self.throttled} time(s): calls in "
                f"flight slowed down to {self.lowest}, {now} at the end{cap}; set "
                f"max_concurrency, rpm or tpm for {self.alias} in the suite config to stay "
                "under the provider's limits"
            )
        limited = self.limits.rpm or self.limits.tpm or self.limits.max_concurrency
        if limited and self.waited_s >= 1.0:
            out.append(
                f"{self.alias}: calls waited {self.waited_s:.1f} s in all for its limits "
                "(max_concurrency, rpm, tpm)"
            )
        return out


@dataclass
class Permit:
    """One call's slot; the runner fills in what came back."""

    estimate: int
    tokens: int | None = None  # input + output tokens, once answered
    output_tokens: int | None = None
    throttled: bool = False  # the attempt got HTTP 429

    def answered(self, input_tokens: int | None, output_tokens: int | None) -> None:
        self.output_tokens = output_tokens
        self.tokens = (input_tokens or 0) + (output_tokens or 0)
