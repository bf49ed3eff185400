"""The object behind the ``llm`` fixture: one model call path bound to one item's spec.

It knows nothing of pytest: the plugin builds it, the test calls ``ask``, the case's
``check`` reports restraint through ``cases.CHECK_RECORDER``, and the plugin turns what was
recorded here into the item's :class:`~pytest_selfopt.loop.types.Sample`.

With concurrency the plugin may have made the item's call already (``plugin/prefetch.py``):
the first ``ask`` takes that answer when it asks exactly what was called ahead, and calls the
model itself otherwise; either way the answer is recorded the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import WRONG_ANSWER, Sample
from pytest_selfopt.models.runner import Answer, Runner
from pytest_selfopt.suite.cases import Case, CheckResult


class TransportError(Exception):
    """The model could not be reached or answered garbage after all retries (and fallbacks)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Prefetched(Protocol):
    """A call made ahead for this item (``plugin/prefetch.py``)."""

    def take(self, prompt: str, case: Case | None) -> Answer | None:
        """Its answer when ``prompt`` (of ``case``) is what was called ahead; else None."""
        ...


@dataclass
class LLM:
    """``llm.ask(prompt)`` -> the reply text, under the item's spec."""

    runner: Runner
    spec: Spec
    phase: str
    case: Case | None
    run: int = 1
    fallbacks: Sequence[str] = ()
    answers: list[Answer] = field(default_factory=list)
    check: CheckResult | None = None
    explicit_restraint: float | None = None
    #: The call made ahead for this item, taken by the first ``ask`` if it asks the same.
    prefetched: Prefetched | None = None
    #: What the first ``ask`` asked (prompt, case): how the plugin learns a test's shape.
    first_ask: tuple[str, Case | None] | None = None

    @property
    def model(self) -> str:
        return self.spec.model

    def ask(self, prompt: str | Case) -> str:
        """Send ``prompt`` (or a case's prompt) through the runner; raise on transport failure."""
        case = self.case
        if isinstance(prompt, Case):
            case, prompt = prompt, prompt.prompt
        answer: Answer | None = None
        if self.first_ask is None:
            self.first_ask = (prompt, case)
            ticket, self.prefetched = self.prefetched, None
            if ticket is not None:
                answer = ticket.take(prompt, case)
        if answer is None:
            answer = self.runner.ask(
                self.spec, prompt, case=case, run=self.run, fallbacks=tuple(self.fallbacks)
            )
        self.answers.append(answer)
        if answer.text is None:
            kind = answer.error_kind or "protocol"
            where = f"{case.id}: " if case else ""
            raise TransportError(
                kind,
                f"{where}{answer.model} failed with {kind} after {answer.attempts} attempt(s): "
                f"{answer.error_message or 'no detail'}",
            )
        return answer.text

    def record_restraint(self, value: float) -> None:
        """Record restraint explicitly (0..1) when a test judges it itself."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"restraint must be between 0 and 1, got {value!r}")
        self.explicit_restraint = float(value)

    def on_check(self, case: Case, result: CheckResult) -> None:
        self.check = result

    def sample(self, *, passed: bool, failure: BaseException | None, worker: str) -> Sample | None:
        """The item's sample, or None when the test never asked the model."""
        if not self.answers:
            return None
        case_id = self.case.id if self.case else "-"
        error_kind: str | None = None
        transport = next((a for a in self.answers if a.text is None), None)
        if transport is not None:
            error_kind = transport.error_kind or "protocol"
        elif not passed:
            error_kind = WRONG_ANSWER if isinstance(failure, AssertionError) else "test_error"
        restraint = self.explicit_restraint
        if restraint is None and self.check is not None:
            restraint = self.check.restraint
        costs = [a.cost for a in self.answers if a.cost is not None]
        last = self.answers[-1]
        return Sample(
            phase=self.phase,
            spec_id=self.spec.id,
            case_id=case_id,
            run=self.run,
            passed=passed and transport is None,
            restraint=restraint,
            latency_s=float(last.latency_s),
            total_latency_s=float(sum(a.total_latency_s for a in self.answers)),
            attempts=int(sum(a.attempts for a in self.answers)),
            error_kind=error_kind,
            input_tokens=int(sum(a.input_tokens for a in self.answers)),
            output_tokens=int(sum(a.output_tokens for a in self.answers)),
            started_at=float(self.answers[0].started_at),
            worker=worker,
            model=last.model,
            cost=float(sum(costs)) if costs else None,
        )
