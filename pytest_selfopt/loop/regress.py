"""The regression gate of ``--selfopt-check``: is what runs today worse than what was committed?

Pure: the committed champion's per-case evidence (``PhaseBaseline.reference``: passed/runs
per case, committed in baseline.yaml) and this session's measurement of the routed spec in,
a verdict out.

The rule, and why
-----------------
The check is the mirror of the improvement gate (docs/architecture.md, "Gates"): the
``paired`` policy's own one-sided test, stratified by case (``loop.stats.stratified_pvalue``:
an exact within-case permutation test below ``exact_below`` informative cases, the
Cochran-Mantel-Haenszel z with continuity correction above), with the committed counts in the
candidate's place and today's in the baseline's: "the committed measurement passes more often
than today's".

* For every case in both, the drop ``d_i = committed_i/n_i - today_i/m_i`` (a share of runs).
  The phase's drop is their mean ``D`` (accuracy, the unit of the gates); cases added since
  the commit are listed but never count as regressions; cases no longer run are listed and
  ignored (a deleted case cannot regress, but a reviewer should see it went).
* Stratifying by case removes the case-to-case spread (a hard case stays hard), so a
  deterministic case that breaks is a large, certain drop, and a flaky case that wobbles is
  weighed by its own noise.
* **Regressed** when ``p <= level`` (default 0.05) **and** ``D`` is at least the minimum
  effect: one prompt's worth (``1/K``), or ``regression_tolerance`` when that is larger.
  The minimum effect absorbs the winner's curse: the committed measurement is the one that
  won the gates, so it is biased upwards, and fresh data of an unchanged suite fall a little
  below it on average. What the check can detect at a suite's size is in
  docs/statistics.md ("The regression check").

The result carries the effect (today minus committed, negative when worse) with its 90 %
interval (``loop.stats.effect_interval``), and the cases that pass less often, largest drop
first.

A phase whose every measured sample errored (no key, server down) cannot vouch for anything
and counts as regressed, with that reason. A committed champion without per-case evidence
(files written before the reference existed) falls back to the last recorded per-case
patterns of history.json; without either there is nothing to compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from pytest_selfopt.loop.stats import effect_interval, stratified_pvalue
from pytest_selfopt.loop.types import GateSettings, PhaseBaseline, SpecStats

DEFAULT_LEVEL = 0.05
EPSILON = 1e-9

Counts = tuple[int, int]  # (passed, runs)


@dataclass(frozen=True)
class CaseChange:
    """One case that passes less often than in the committed measurement."""

    case_id: str
    committed: Counts
    measured: Counts
    measured_pattern: str  # "[P,F,P,P,P,P,P]", run order

    @property
    def committed_pattern(self) -> str:
        """The committed evidence as text: ``7/7``."""
        return f"{self.committed[0]}/{self.committed[1]}"

    @property
    def committed_rate(self) -> float:
        return self.committed[0] / self.committed[1]

    @property
    def measured_rate(self) -> float:
        return self.measured[0] / self.measured[1]

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
    committed_median: float | None  # None: nothing committed to compare with
    measured_median: float
    tolerance: float  # the minimum effect (accuracy) a regression must reach
    worse_cases: tuple[CaseChange, ...] = ()  # largest drop first
    new_cases: tuple[str, ...] = ()  # measured now, absent from the committed evidence
    missing_cases: tuple[str, ...] = ()  # committed, not measured now (deleted, deselected)
    errored: int = 0
    samples: int = 0
    compared: int = 0  # cases in both the committed evidence and today's measurement
    effect: float | None = None  # mean per-case pass rate, today minus committed
    interval: tuple[float, float] | None = None  # 90 % interval of ``effect``
    p_value: float | None = None  # one-sided, H0: no drop
    level: float = DEFAULT_LEVEL


def pass_counts(pattern: str) -> Counts | None:
    """``"[P,F,P]"`` (or compact ``"PFP"``) -> ``(2, 3)``; None when not a pattern."""
    body = pattern.strip()
    if body.startswith("[") and body.endswith("]"):
        marks = [m.strip() for m in body[1:-1].split(",") if m.strip()]
    else:
        marks = list(body)
    if not marks or any(m not in ("P", "F") for m in marks):
        return None
    return marks.count("P"), len(marks)


def pass_rate(pattern: str) -> float | None:
    """Share of ``P`` in ``"[P,F,P]"``; None when the text is not a pattern."""
    counts = pass_counts(pattern)
    return None if counts is None else counts[0] / counts[1]


def committed_evidence(
    committed: PhaseBaseline, history_patterns: Mapping[str, str] | None = None
) -> dict[str, Counts]:
    """The committed per-case counts: baseline.yaml's ``reference``, else history's patterns."""
    if committed.reference:
        return {case: (int(p), int(n)) for case, (p, n) in committed.reference.items() if n > 0}
    out: dict[str, Counts] = {}
    for case, pattern in (history_patterns or {}).items():
        counts = pass_counts(pattern)
        if counts is not None:
            out[case] = counts
    return out


@dataclass(frozen=True)
class StratifiedDrop:
    """The case-stratified comparison of two measurements (module doc, "The rule")."""

    compared: int
    drop: float  # mean per-case pass-rate drop, committed minus today
    p_value: float  # one-sided, H0: no drop
    interval: tuple[float, float]  # 90 % interval of the effect (today minus committed)
    method: str  # "exact" | "cmh", as gate 3


def stratified_drop(
    before: Mapping[str, Counts], now: Mapping[str, Counts], exact_below: int = 20
) -> StratifiedDrop:
    """Gate 3's test, mirrored: the committed counts play the candidate, today's the
    baseline, over the cases both measured."""
    cases = sorted(set(before) & set(now))
    if not cases:
        return StratifiedDrop(0, 0.0, 1.0, (0.0, 0.0), "exact")
    x = np.array([now[c][0] for c in cases], dtype=np.int64)
    n = np.array([now[c][1] for c in cases], dtype=np.int64)
    y = np.array([before[c][0] for c in cases], dtype=np.int64)
    m = np.array([before[c][1] for c in cases], dtype=np.int64)
    p_value, method = stratified_pvalue(x, n, y, m, exact_below)
    drop, lo, hi = effect_interval(x, n, y, m)  # committed minus today, with its interval
    # + 0.0: no negative zero in a reason ("-0.000")
    return StratifiedDrop(len(cases), drop, p_value, (0.0 - hi + 0.0, 0.0 - lo + 0.0), method)


def worse_cases(
    before: Mapping[str, Counts], measured: SpecStats
) -> tuple[tuple[CaseChange, ...], tuple[str, ...]]:
    """Cases passing less often than committed (largest drop first), and cases new since."""
    changes: list[CaseChange] = []
    new: list[str] = []
    for pattern in measured.patterns:
        counts = before.get(pattern.case_id)
        if counts is None:
            new.append(pattern.case_id)
            continue
        if not pattern.outcomes:
            continue
        now = (sum(pattern.outcomes), len(pattern.outcomes))
        change = CaseChange(pattern.case_id, counts, now, pattern.render())
        if change.drop > EPSILON:
            changes.append(change)
    changes.sort(key=lambda c: (-c.drop, c.case_id))
    return tuple(changes), tuple(sorted(new))


def _committed_median(committed: PhaseBaseline) -> float | None:
    median = (committed.metrics or {}).get("median")
    if isinstance(median, bool) or not isinstance(median, (int, float)):
        return None
    return float(median)


def check_regression(
    phase: str,
    committed: PhaseBaseline,
    measured: SpecStats,
    settings: GateSettings,
    *,
    history_patterns: Mapping[str, str] | None = None,
    level: float = DEFAULT_LEVEL,
) -> RegressionResult:
    """The routed spec's measurement against the committed evidence (rule: module doc)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"check level must be in (0, 1), got {level!r}")
    before = committed_evidence(committed, history_patterns)
    worse, new = worse_cases(before, measured)
    now = measured.reference()
    compared = len(set(before) & set(now))
    min_effect = max(float(settings.regression_tolerance), 1.0 / compared if compared else 0.0)
    result = RegressionResult(
        phase=phase,
        regressed=False,
        reason="",
        committed_spec_id=committed.spec.id,
        measured_spec_id=measured.spec_id,
        committed_median=_committed_median(committed) if before else None,
        measured_median=float(measured.median),
        tolerance=min_effect,
        worse_cases=worse,
        new_cases=new,
        missing_cases=tuple(sorted(set(before) - set(now))),
        errored=measured.errored,
        samples=measured.samples,
        compared=compared,
        level=level,
    )
    spec_note = (
        ""
        if measured.spec_id == committed.spec.id
        else f" (routed spec {measured.spec_id}, committed baseline {committed.spec.id})"
    )
    if measured.samples and measured.errored == measured.samples:
        why = f"could not measure: all {measured.samples} samples errored{spec_note}"
        return replace(result, regressed=True, reason=why)
    if not before:
        why = "no committed evidence yet: run `pytest --selfopt` once to commit a reference"
        return replace(result, reason=why)
    if not compared:
        why = "no case in common with the committed evidence: nothing to compare"
        return replace(result, reason=why + spec_note)
    test = stratified_drop(before, now, settings.exact_below)
    lo, hi = test.interval
    effect = 0.0 - test.drop + 0.0  # never a negative zero
    result = replace(result, effect=effect, interval=test.interval, p_value=test.p_value)
    numbers = (
        f"pass rate {effect:+.3f} [{lo:+.3f}, {hi:+.3f}] over {compared} case(s), "
        f"p={test.p_value:.3f} ({test.method})"
    )
    named = f"; {len(worse)} case(s) pass less often" if worse else ""
    significant = test.p_value <= level
    large = test.drop >= min_effect - EPSILON
    if significant and large:
        why = f"REGRESSED: {numbers} <= {level:g}, drop >= {min_effect:.3f}{named}{spec_note}"
        return replace(result, regressed=True, reason=why)
    if not significant:
        held = f"ok: {numbers} > {level:g} (no significant drop){named}"
    else:
        held = f"ok: {numbers}, but the drop is below the minimum {min_effect:.3f}{named}"
    return replace(result, reason=held + spec_note)
