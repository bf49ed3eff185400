"""Phase 4, diagnose: per-case patterns -> diagnoses -> recommendations.

Diagnoses (one per case of a spec; ``R`` = the number of runs). A case's samples are read in
time order: by ``started_at``, ties by run number. The first matching definition wins:

``stable_pass``
    every sample passed.
``cold_start``
    at least one sample passed, and either the first ``k`` samples failed and every later
    one passed, with ``1 <= k <= R // 2``; or every failure of the case is a *cold-start
    sample* (below).
``capability_limit``
    every sample failed, all with error kind ``wrong_answer`` (0%, zero variance, no
    transport errors: the model cannot answer it).
``timeout_bound``
    more than half of the failures have error kind ``timeout``.
``flaky``
    anything else (including "every sample failed, with mixed error kinds"); the detail
    counts failures that were transport errors and failures that were wrong answers.

Cold-start samples. A real cold start is per process: the first calls of a model in a
worker fail (typically time out). Under ``pytest -n 2`` a case's runs are spread over
workers, so its one cold-start failure can sit in the middle: ``[P,F,P,P,P,P,P]``. So each
worker is also read on its own: the spec's samples on that worker, all cases together, in
time order (``started_at``, then run, then case id). When that sequence starts with
``m >= 1`` transport failures, and after them has at least one pass and no other transport
failure, those ``m`` samples are cold-start samples. Any worker with cold-start samples adds
one spec-level diagnosis (``case_id=None``, kind ``cold_start``) naming workers and counts.
With this, ``-n 0`` and ``-n 2`` runs of the same suite diagnose the same cold start.

Recommendations (per phase and spec, in this order):

``route_next_model`` (knob ``model``)
    capability-limited cases / cases >= ``gates.route_share``: the model after the spec's in
    ``fallback_chain`` (spec's model not in the chain: the chain's first other model; no
    model left: no recommendation).
``enable_warmup`` (knob ``warmup`` = true)
    the spec has warm-up off and the cold start is *replicated*: a spec-level (per-worker)
    cold start, or at least ``gates.warmup_min_cases`` (2) cases with a cold-start pattern.
    One case alone is not enough: a genuinely flaky prompt (pass rate p, R runs) shows
    "first k fail, then all pass" with probability sum_{k=1..R//2} (1-p)^k p^(R-k), up to
    about 7% per prompt at R = 7 (p near 0.8); needing two cases squares that per pair of
    prompts (docs/statistics.md).
``raise_timeout`` (knob ``timeout_s``)
    any ``timeout_bound`` case (one is enough: a timeout is a cost of the setting, not of
    the model, and the gates verify the change): the next search value of ``timeout_s``
    above the current one, else double it.
``raise_retries`` (knob ``retries``)
    any ``flaky`` case with transport failures: the next search value of ``retries`` above
    the current one, else current + 1. Flaky cases with only wrong answers are reported,
    never retried (a retry on a wrong answer would turn accuracy into pass@k).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pytest_selfopt.loop.spec import Scalar, Spec, format_scalar
from pytest_selfopt.loop.types import (
    TRANSPORT_ERROR_KINDS,
    WRONG_ANSWER,
    CasePattern,
    Diagnosis,
    LoopSettings,
    Recommendation,
    SpecStats,
)

KINDS: tuple[str, ...] = ("stable_pass", "cold_start", "capability_limit", "timeout_bound", "flaky")


def cold_start_samples(patterns: Sequence[CasePattern]) -> dict[str, list[tuple[str, int]]]:
    """Per worker, its cold-start samples as ``(case_id, index in the case's pattern)``."""
    by_worker: dict[str, list[tuple[float, int, str, int, bool, str | None]]] = defaultdict(list)
    for p in patterns:
        started = p.started_at or (0.0,) * len(p.outcomes)
        for i, (ok, kind, worker) in enumerate(zip(p.outcomes, p.error_kinds, p.workers)):
            by_worker[worker].append((started[i], p.runs[i], p.case_id, i, ok, kind))
    out: dict[str, list[tuple[str, int]]] = {}
    for worker in sorted(by_worker):
        seq = sorted(by_worker[worker], key=lambda s: s[:3])
        m = 0
        while m < len(seq) and not seq[m][4] and seq[m][5] in TRANSPORT_ERROR_KINDS:
            m += 1
        rest = seq[m:]
        if m and any(s[4] for s in rest) and not any(s[5] in TRANSPORT_ERROR_KINDS for s in rest):
            out[worker] = [(s[2], s[3]) for s in seq[:m]]
    return out


def _leading_failures(outcomes: Sequence[bool]) -> int:
    k = 0
    while k < len(outcomes) and not outcomes[k]:
        k += 1
    return k


def classify(
    pattern: CasePattern, runs: int, cold: frozenset[int] = frozenset()
) -> tuple[str, str]:
    """(kind, detail) of one case; ``cold``: indexes of its cold-start samples."""
    outcomes, kinds = pattern.outcomes, pattern.error_kinds
    n = len(outcomes)
    r = runs if runs > 0 else n
    failed = [i for i in range(n) if not outcomes[i]]
    transport = sum(1 for i in failed if kinds[i] in TRANSPORT_ERROR_KINDS)
    wrong = sum(1 for i in failed if kinds[i] == WRONG_ANSWER)
    timeouts = sum(1 for i in failed if kinds[i] == "timeout")
    kinds_seen = ", ".join(sorted({str(kinds[i]) for i in failed}))
    if not failed:
        return "stable_pass", f"{n}/{n} passed"
    k = _leading_failures(outcomes)
    if len(failed) < n:
        if k == len(failed) and 1 <= k <= r // 2:
            return "cold_start", f"first {k} of {n} runs failed ({kinds_seen}), then all passed"
        if all(i in cold for i in failed):
            return "cold_start", (
                f"{len(failed)} of {n} runs failed, all cold-start samples of their worker "
                f"({kinds_seen})"
            )
    if len(failed) == n and wrong == n:
        return "capability_limit", f"0/{n} passed, all wrong answers"
    if timeouts * 2 > len(failed):
        return "timeout_bound", f"{timeouts} of {len(failed)} failures are timeouts"
    transport_kinds = sorted({str(kinds[i]) for i in failed if kinds[i] in TRANSPORT_ERROR_KINDS})
    which = f" ({', '.join(transport_kinds)})" if transport_kinds else ""
    other = len(failed) - transport - wrong
    return "flaky", (
        f"{len(failed)}/{n} failed: {transport} transport errors{which}, {wrong} wrong answers"
        + (f", {other} other" if other else "")
    )


def diagnose(stats: SpecStats, runs: int) -> tuple[Diagnosis, ...]:
    """One diagnosis per case (in case order), then the spec-level cold start if any."""
    cold_by_worker = cold_start_samples(stats.patterns)
    cold: dict[str, set[int]] = defaultdict(set)
    for samples in cold_by_worker.values():
        for case_id, index in samples:
            cold[case_id].add(index)
    out = []
    for p in stats.patterns:
        kind, detail = classify(p, runs, frozenset(cold.get(p.case_id, ())))
        failures = sum(1 for ok in p.outcomes if not ok)
        transport = sum(
            1 for ok, k in zip(p.outcomes, p.error_kinds) if not ok and k in TRANSPORT_ERROR_KINDS
        )
        out.append(
            Diagnosis(
                stats.phase, stats.spec_id, p.case_id, kind, p.render(), detail, failures, transport
            )
        )
    if cold_by_worker:
        total = sum(len(v) for v in cold_by_worker.values())
        parts = ", ".join(
            f"{w} first {len(v)} sample{'s' if len(v) > 1 else ''}"
            for w, v in cold_by_worker.items()
        )
        out.append(
            Diagnosis(
                stats.phase,
                stats.spec_id,
                None,
                "cold_start",
                "",
                f"cold start: {parts} failed in transport, none later on the same worker "
                f"({total} samples)",
                total,
                total,
            )
        )
    return tuple(out)


def _next_above(values: Sequence[Scalar], current: float) -> float | None:
    above = sorted(
        float(v) for v in values if not isinstance(v, (bool, str)) and float(v) > current
    )
    return above[0] if above else None


def next_model(model: str, chain: Sequence[str]) -> str | None:
    """The model after ``model`` in the chain; not in it: the chain's first other model."""
    if model in chain:
        i = list(chain).index(model)
        return chain[i + 1] if i + 1 < len(chain) else None
    return next((m for m in chain if m != model), None)


def recommend(
    phase: str,
    spec: Spec,
    diagnoses: Sequence[Diagnosis],
    settings: LoopSettings,
    case_count: int,
) -> tuple[Recommendation, ...]:
    """Turn one spec's diagnoses into knob changes to verify next cycle (rules: module doc)."""

    def cases(kind: str) -> tuple[str, ...]:
        return tuple(d.case_id for d in diagnoses if d.kind == kind and d.case_id is not None)

    out: list[Recommendation] = []
    limited = cases("capability_limit")
    share = len(limited) / case_count if case_count else 0.0
    if limited and share >= settings.gates.route_share:
        target = next_model(spec.model, settings.fallback_chain)
        if target is not None:
            out.append(
                Recommendation(
                    phase,
                    "route_next_model",
                    "model",
                    target,
                    spec.id,
                    f"{len(limited)}/{case_count} cases capability-limited ({share:.0%} >= "
                    f"{settings.gates.route_share:.0%}): route {spec.model} -> {target}",
                    limited,
                )
            )
    cold = cases("cold_start")
    spec_level = [d for d in diagnoses if d.kind == "cold_start" and d.case_id is None]
    replicated = bool(spec_level) or len(cold) >= settings.gates.warmup_min_cases
    if replicated and not spec.warmup:
        samples = f", {spec_level[0].failures} cold-start samples" if spec_level else ""
        where = f"{len(cold)}/{case_count} cases{samples}"
        out.append(
            Recommendation(
                phase,
                "enable_warmup",
                "warmup",
                True,
                spec.id,
                f"cold start ({where}): enable warm-up",
                cold,
            )
        )
    bound = cases("timeout_bound")
    if bound:
        current = float(spec.timeout_s)
        target_t = _next_above(settings.search.values("timeout_s"), current) or current * 2
        out.append(
            Recommendation(
                phase,
                "raise_timeout",
                "timeout_s",
                target_t,
                spec.id,
                f"{len(bound)}/{case_count} cases timeout-bound: timeout_s "
                f"{format_scalar(current)} -> {format_scalar(target_t)}",
                bound,
            )
        )
    flaky = [d for d in diagnoses if d.kind == "flaky" and d.transport_failures > 0]
    if flaky:
        current_r = int(spec.retries)
        above = _next_above(settings.search.values("retries"), current_r)
        target_r = int(above) if above is not None else current_r + 1
        failures = sum(d.failures for d in flaky)
        transport = sum(d.transport_failures for d in flaky)
        out.append(
            Recommendation(
                phase,
                "raise_retries",
                "retries",
                target_r,
                spec.id,
                f"{len(flaky)}/{case_count} cases flaky with transport failures ({transport} of "
                f"{failures} failures): retries {current_r} -> {target_r}",
                tuple(d.case_id for d in flaky if d.case_id is not None),
            )
        )
    return tuple(out)
