"""One endpoint's circuit breaker: a server that is down costs one connection failure per
attempt until ``BREAKER_THRESHOLD`` in a row, then fails at once (docs/providers.md, "A server
that is down"). The runner keeps one per endpoint (provider and URL) in each process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pytest_selfopt.models.base import ProviderError

#: Consecutive connection failures on one endpoint that open its circuit.
BREAKER_THRESHOLD = 5
#: While open, one real attempt is let through this often (wall seconds).
BREAKER_RETRY_S = 2.0


class Breaker:
    """One endpoint's circuit: closed while it answers; open after ``threshold`` consecutive
    ``connect`` failures; then one trial attempt per ``retry_s`` (half-open), closed again by
    any reply. Thread-safe: calls made ahead share it."""

    def __init__(
        self,
        where: str,
        *,
        threshold: int = BREAKER_THRESHOLD,
        retry_s: float = BREAKER_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self.threshold = threshold
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._last_try = 0.0
        self._trial = False  # a half-open trial attempt is out
        self.short_circuited = 0  # attempts failed at once, for tests and reports

    @property
    def open(self) -> bool:
        with self._lock:
            return self._failures >= self.threshold

    def allow(self) -> bool:
        """Whether an attempt may go to the endpoint now (closed, or this is the trial)."""
        with self._lock:
            if self._failures < self.threshold:
                return True
            now = self._clock()
            if not self._trial and now - self._last_try >= self.retry_s:
                self._trial = True
                self._last_try = now
                return True
            self.short_circuited += 1
            return False

    def record(self, kind: str | None) -> None:
        """An attempt's outcome: ``connect`` counts, anything else (an answer, any reply, a
        timeout) shows the endpoint is there and closes the circuit."""
        with self._lock:
            self._trial = False
            if kind == "connect":
                self._failures += 1
                if self._failures == self.threshold:
                    self._last_try = self._clock()
            else:
                self._failures = 0

    def refusal(self) -> ProviderError:
        return ProviderError(
            "connect",
            f"not tried: {self.threshold} consecutive connection failures to {self.where}; "
            f"the circuit re-tries every {self.retry_s:g} s",
        )
