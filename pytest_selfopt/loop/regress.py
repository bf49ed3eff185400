"""The regression gate of ``--selfopt-check``: is what runs today worse than what was committed?

Pure: the committed baseline (``baseline.yaml``), its last recorded per-case patterns
(``history.json``) and this session's measurement of the routed spec in, a verdict out.

The rule, and why
-----------------
A phase has **regressed** when

1. its measured median run accuracy is *strictly below* the committed median by more than
   ``tolerance`` (default 0.0; a float epsilon absorbs rounding of the committed 4-decimal
   metrics), **and**
2. when the committed per-case patterns are known, at least one committed case now passes
   less often than it did.

(1) mirrors gate 3 (docs/architecture.md, "Gates"): a candidate is promoted only when its median is strictly
above the baseline's, so the symmetric failure is a median strictly below it. The committed
baseline passed the stability gate (run-accuracy variance <= 0.0025, a standard deviation of
at most 0.05), so its median does not wander by a whole prompt (1/P of accuracy for P <= 20
prompts) between measurements of an unchanged suite; a drop of that size is a change, not
noise. Suites on noisy real models can widen it: ``GateSettings.regression_tolerance`` (when
the settings carry it) or the ``tolerance`` argument, e.g. one prompt's worth ``1/P``.

(2) keeps a pull request that *adds* a hard case from reading as a regression: the median
then falls although nothing that used to pass got worse. Without recorded patterns (a
baseline committed by hand) the median alone decides. Cases that pass less often while the
median holds are still listed, with ``regressed`` False, so a reviewer sees them.

A phase whose every measured sample errored (no key, server down) cannot vouch for anything
and counts as regressed, with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pytest_selfopt.loop.types import GateSettings, PhaseBaseline, SpecStats

#: Rounding slack: committed metrics are written with 4 decimals.
EPSILON = 1e-4 / 2 + 1e-9
DEFAULT_TOLERANCE = 0.0


@dataclass(frozen=True)
class CaseChange:
    """One case that passes less often than it did when the baseline was last measured."""

    case_id: str
    committed_pattern: str  # "[P,P,P,P,P,P,P]"
    committed_rate: float
    measured_pattern: str
    measured_rate: float

    @property
    def drop(self) -> float:
        return self.committed_rate - self.measured_rate


@dataclass(frozen=True)
class RegressionResult:
    """The gate's verdict on one phase, with the numbers a reviewer needs to check it."""

    phase: str
    regressed: bool
    reason: str  # one line
    committed_spec_id: str
    measured_spec_id: str
    committed_median: float | None  # None: no measured baseline committed
    measured_median: float
    tolerance: float
    worse_cases: tuple[CaseChange, ...] = ()  # largest drop first
    new_cases: tuple[str, ...] = ()  # measured now, absent from the committed patterns
    errored: int = 0
    samples: int = 0


def pass_rate(pattern: str) -> float | None:
    """Share of ``P`` in ``"[P,F,P]"``; None when the text is not a pattern."""
    body = pattern.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return None
    marks = [m.strip() for m in body[1:-1].split(",") if m.strip()]
    if not marks or any(m not in ("P", "F") for m in marks):
        return None
    return marks.count("P") / len(marks)


def _tolerance(settings: GateSettings, tolerance: float | None) -> float:
    if tolerance is None:
        tolerance = getattr(settings, "regression_tolerance", DEFAULT_TOLERANCE)
    value = float(tolerance if tolerance is not None else DEFAULT_TOLERANCE)
    if not value >= 0.0:
        raise ValueError(f"regression tolerance must be >= 0, got {tolerance!r}")
    return value


def _committed_median(committed: PhaseBaseline) -> float | None:
    median = (committed.metrics or {}).get("median")
    if isinstance(median, bool) or not isinstance(median, (int, float)):
        return None
    return float(median)


def worse_cases(
    committed_patterns: Mapping[str, str], measured: SpecStats
) -> tuple[tuple[CaseChange, ...], tuple[str, ...]]:
    """Cases passing less often than committed (largest drop first), and cases new since."""
    changes: list[CaseChange] = []
    new: list[str] = []
    for pattern in measured.patterns:
        before = committed_patterns.get(pattern.case_id)
        if before is None:
            new.append(pattern.case_id)
            continue
        rate_before = pass_rate(before)
        if rate_before is None or not pattern.outcomes:
            continue
        now = pattern.render()
        rate_now = sum(pattern.outcomes) / len(pattern.outcomes)
        if rate_now < rate_before - 1e-9:
            changes.append(CaseChange(pattern.case_id, before, rate_before, now, rate_now))
    changes.sort(key=lambda c: (-c.drop, c.case_id))
    return tuple(changes), tuple(sorted(new))


def check_regression(
    phase: str,
    committed: PhaseBaseline,
    measured: SpecStats,
    committed_patterns: Mapping[str, str] | None,
    settings: GateSettings,
    *,
    tolerance: float | None = None,
) -> RegressionResult:
    """The routed spec's measurement against the committed baseline (rule: module doc)."""
    tol = _tolerance(settings, tolerance)
    base_median = _committed_median(committed)
    worse, new = worse_cases(committed_patterns or {}, measured)
    result = RegressionResult(
        phase=phase,
        regressed=False,
        reason="",
        committed_spec_id=committed.spec.id,
        measured_spec_id=measured.spec_id,
        committed_median=base_median,
        measured_median=float(measured.median),
        tolerance=tol,
        worse_cases=worse,
        new_cases=new,
        errored=measured.errored,
        samples=measured.samples,
    )
    spec_note = (
        ""
        if measured.spec_id == committed.spec.id
        else f" (routed spec {measured.spec_id}, committed baseline {committed.spec.id})"
    )
    if measured.samples and measured.errored == measured.samples:
        why = f"could not measure: all {measured.samples} samples errored{spec_note}"
        return replace(result, regressed=True, reason=why)
    if base_median is None:
        return replace(result, reason="no measured baseline committed yet: nothing to compare")
    now = f"median {measured.median:.3f} vs committed {base_median:.3f}"
    dropped = measured.median < base_median - tol - EPSILON
    named = f"{len(worse)} case(s) pass less often" if worse else "no committed case got worse"
    if not dropped:
        held = "within tolerance" if measured.median < base_median - EPSILON else "held"
        why = f"ok: {now} ({held})" + (f"; {named}" if worse else "")
        return replace(result, reason=why + spec_note)
    if committed_patterns and not worse:
        extra = f"; new cases: {', '.join(new)}" if new else ""
        return replace(result, reason=f"ok: {now} fell, but {named}{extra}{spec_note}")
    margin = f" by more than {tol:.3f}" if tol > 0 else ""
    cases = f"; {named}" if committed_patterns else "; no recorded patterns to name cases"
    why = f"REGRESSED: {now} (below{margin}){cases}{spec_note}"
    return replace(result, regressed=True, reason=why)
