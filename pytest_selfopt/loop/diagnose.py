"""Step 4, diagnose: per-case patterns -> diagnoses -> recommendations.

Diagnoses (one per case of a spec; ``R`` = the number of runs). A case's samples are read in
run order (run number, then start time within a run; never completion order). A
*transport-errored* sample (``TRANSPORT_ERROR_KINDS``) says nothing about what the model can
answer: it is set aside when capability is read, and counted for the transport diagnoses.
The first matching definition wins:

``stable_pass``
    every sample passed.
``cold_start``
    at least one sample passed, and either the first ``k`` samples failed and every later
    one passed, with ``1 <= k <= R // 2``; or every failure of the case is a *cold-start
    sample* (below).
``timeout_bound``
    more than half of the failures have error kind ``timeout``.
``capability_limit``
    no sample passed, at least one was answered, and every answered sample was a wrong
    answer (transport-errored samples set aside): the model cannot answer it.
``flaky``
    anything else; the detail counts failures that were transport errors and failures that
    were wrong answers.

An **outage** replaces all of a spec's case diagnoses: when more than half of the spec's
samples ended in one transport error kind of ``OUTAGE_ERROR_KINDS`` (connection refused, 5xx,
4xx such as a bad key, 429, protocol, config; not ``timeout``, which is a cost of
``timeout_s``), the spec gets one spec-level ``outage`` diagnosis naming the model, the error
kind and the count, and nothing is recommended from it: its patterns describe the service,
not the spec.

Cold-start samples. A real cold start is per process: the first calls of a model in a
worker fail (typically time out). Under ``pytest -n 2`` a case's runs are spread over
workers, so its one cold-start failure can sit in the middle: ``[P,F,P,P,P,P,P]``. So each
worker is also read on its own: the spec's samples on that worker, all cases together, in
the order that worker ran them (``started_at``, then run, then case id). When that sequence
starts with ``m >= 1`` transport failures, and after them has at least one pass and no other
transport failure, those ``m`` samples are cold-start samples; so are they when they are all
the worker ran of the spec, fewer than half of the spec's samples, and the spec passed on
another worker (a worker that received only a few items never got past its cold start; one
that held most of them and never passed did not recover). Any worker with cold-start
samples adds one spec-level diagnosis (``case_id=None``, kind ``cold_start``) naming workers
and counts. With this, ``-n 0`` and ``-n 2`` runs of the same suite diagnose the same cold
start; which worker ran which sample is a per-process effect that the worker count changes.
The worker reading is a fallback for what the patterns cannot show: when at least
``gates.warmup_min_cases`` cases already read as cold starts by their own patterns (first
``k`` runs failed), the patterns tell the story and the workers are not read. A serial
session, ``-n 2``, CI shards and a resumed session, which split the samples over other
workers, then write the same diagnoses.

Recommendations (per phase and spec, in this order; none from a spec in an outage):

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

from collections import Counter, defaultdict
from collections.abc import Sequence

from pytest_selfopt.loop.spec import Scalar, Spec, format_scalar
from pytest_selfopt.loop.types import (
    OUTAGE_ERROR_KINDS,
    TRANSPORT_ERROR_KINDS,
    WRONG_ANSWER,
    Action,
    CasePattern,
    Diagnosis,
    DiagnosisKind,
    LoopSettings,
    Recommendation,
    SpecStats,
)

KINDS: tuple[DiagnosisKind, ...] = tuple(DiagnosisKind)


def cold_start_samples(patterns: Sequence[CasePattern]) -> dict[str, list[tuple[str, int]]]:
    """Per worker, its cold-start samples as ``(case_id, index in the case's pattern)``."""
    if not any(k in TRANSPORT_ERROR_KINDS for p in patterns for k in p.error_kinds):
        return {}  # no transport failure at all: nothing to order (a healthy cycle's close)
    by_worker: dict[str, list[tuple[float, int, str, int, bool, str | None]]] = defaultdict(list)
    for p in patterns:
        started = p.started_at or (0.0,) * len(p.outcomes)
        for i, (ok, kind, worker) in enumerate(zip(p.outcomes, p.error_kinds, p.workers)):
            by_worker[worker].append((started[i], p.runs[i], p.case_id, i, ok, kind))
    recovered = {w for w, seq in by_worker.items() if any(s[4] for s in seq)}
    total = sum(len(seq) for seq in by_worker.values())
    out: dict[str, list[tuple[str, int]]] = {}
    for worker in sorted(by_worker):
        seq = sorted(by_worker[worker], key=lambda s: s[:3])
        m = 0
        while m < len(seq) and not seq[m][4] and seq[m][5] in TRANSPORT_ERROR_KINDS:
            m += 1
        rest = seq[m:]
        passes = any(s[4] for s in rest) if rest else 2 * m < total and bool(recovered - {worker})
        if m and passes and not any(s[5] in TRANSPORT_ERROR_KINDS for s in rest):
            out[worker] = [(s[2], s[3]) for s in seq[:m]]
    return out


def _leading_failures(outcomes: Sequence[bool]) -> int:
    k = 0
    while k < len(outcomes) and not outcomes[k]:
        k += 1
    return k


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def classify(
    pattern: CasePattern, runs: int, cold: frozenset[int] = frozenset()
) -> tuple[DiagnosisKind, str]:
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
        return DiagnosisKind.STABLE_PASS, f"{n}/{n} passed"
    k = _leading_failures(outcomes)
    if len(failed) < n:
        if k == len(failed) and 1 <= k <= r // 2:
            return DiagnosisKind.COLD_START, (
                f"first {k} of {n} runs failed ({kinds_seen}), then all passed"
            )
        if all(i in cold for i in failed):
            return DiagnosisKind.COLD_START, (
                f"{len(failed)} of {n} runs failed, all cold-start samples of their worker "
                f"({kinds_seen})"
            )
    if timeouts * 2 > len(failed):
        return DiagnosisKind.TIMEOUT_BOUND, f"{timeouts} of {len(failed)} failures are timeouts"
    answered = n - transport
    if len(failed) == n and answered > 0 and wrong == answered:
        aside = f", {_plural(transport, 'transport error')} set aside" if transport else ""
        return DiagnosisKind.CAPABILITY_LIMIT, (
            f"0/{n} passed, {'all' if not transport else 'every answered run'} "
            f"wrong ({_plural(wrong, 'wrong answer')}{aside})"
        )
    transport_kinds = sorted({str(kinds[i]) for i in failed if kinds[i] in TRANSPORT_ERROR_KINDS})
    which = f" ({', '.join(transport_kinds)})" if transport_kinds else ""
    other = len(failed) - transport - wrong
    return DiagnosisKind.FLAKY, (
        f"{len(failed)}/{n} failed: {transport} transport errors{which}, {wrong} wrong answers"
        + (f", {other} other" if other else "")
    )


def error_counts(stats: SpecStats) -> Counter[str]:
    """How many of the spec's samples ended in each error kind (passed samples: none)."""
    return Counter(
        str(kind)
        for p in stats.patterns
        for ok, kind in zip(p.outcomes, p.error_kinds)
        if not ok and kind is not None
    )


def outage(stats: SpecStats) -> tuple[str, int] | None:
    """``(error kind, count)`` when more than half of the spec's samples failed in transport
    with one kind of ``OUTAGE_ERROR_KINDS``; else None. Ties: the kind first by name."""
    counts = error_counts(stats)
    found = sorted(
        ((kind, c) for kind, c in counts.items() if kind in OUTAGE_ERROR_KINDS),
        key=lambda kc: (-kc[1], kc[0]),
    )
    if found and found[0][1] * 2 > stats.samples:
        return found[0]
    return None


def outage_diagnosis(stats: SpecStats, model: str = "") -> Diagnosis | None:
    """The spec's ``outage`` diagnosis (module doc), or None."""
    found = outage(stats)
    if found is None:
        return None
    kind, count = found
    who = f"model {model}" if model else "the model"
    return Diagnosis(
        stats.phase,
        stats.spec_id,
        None,
        DiagnosisKind.OUTAGE,
        "",
        f"outage: {who} failed {count} of {stats.samples} samples with {kind}; "
        "nothing is recommended from them",
        count,
        stats.errored,
        model=model,
        error_kind=kind,
        samples=stats.samples,
    )


def diagnose(
    stats: SpecStats, runs: int, model: str = "", min_cases: int = 2
) -> tuple[Diagnosis, ...]:
    """One diagnosis per case (in case order), then the spec-level cold start if any; or,
    for a spec in an outage, its one ``outage`` diagnosis (``model``: the spec's model;
    ``min_cases``: ``gates.warmup_min_cases``, past which the workers are not read)."""
    down = outage_diagnosis(stats, model)
    if down is not None:
        return (down,)
    by_pattern = sum(1 for p in stats.patterns if classify(p, runs)[0] is DiagnosisKind.COLD_START)
    cold_by_worker = cold_start_samples(stats.patterns) if by_pattern < min_cases else {}
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
                DiagnosisKind.COLD_START,
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
    """Turn one spec's diagnoses into knob changes to verify next cycle (rules: module doc);
    nothing from a spec in an outage."""
    if any(d.kind == DiagnosisKind.OUTAGE for d in diagnoses):
        return ()

    def cases(kind: DiagnosisKind) -> tuple[str, ...]:
        return tuple(d.case_id for d in diagnoses if d.kind == kind and d.case_id is not None)

    out: list[Recommendation] = []
    limited = cases(DiagnosisKind.CAPABILITY_LIMIT)
    share = len(limited) / case_count if case_count else 0.0
    if limited and share >= settings.gates.route_share:
        target = next_model(spec.model, settings.fallback_chain)
        if target is not None:
            out.append(
                Recommendation(
                    phase,
                    Action.ROUTE_NEXT_MODEL,
                    "model",
                    target,
                    spec.id,
                    f"{len(limited)}/{case_count} cases capability-limited ({share:.0%} >= "
                    f"{settings.gates.route_share:.0%}): route {spec.model} -> {target}",
                    limited,
                )
            )
    cold = cases(DiagnosisKind.COLD_START)
    spec_level = [d for d in diagnoses if d.kind == DiagnosisKind.COLD_START and d.case_id is None]
    replicated = bool(spec_level) or len(cold) >= settings.gates.warmup_min_cases
    if replicated and not spec.warmup:
        samples = f", {spec_level[0].failures} cold-start samples" if spec_level else ""
        where = f"{len(cold)}/{case_count} cases{samples}"
        out.append(
            Recommendation(
                phase,
                Action.ENABLE_WARMUP,
                "warmup",
                True,
                spec.id,
                f"cold start ({where}): enable warm-up",
                cold,
            )
        )
    bound = cases(DiagnosisKind.TIMEOUT_BOUND)
    if bound:
        current = float(spec.timeout_s)
        target_t = _next_above(settings.search.values("timeout_s"), current) or current * 2
        out.append(
            Recommendation(
                phase,
                Action.RAISE_TIMEOUT,
                "timeout_s",
                target_t,
                spec.id,
                f"{len(bound)}/{case_count} cases timeout-bound: timeout_s "
                f"{format_scalar(current)} -> {format_scalar(target_t)}",
                bound,
            )
        )
    flaky = [d for d in diagnoses if d.kind == DiagnosisKind.FLAKY and d.transport_failures > 0]
    if flaky:
        current_r = int(spec.retries)
        above = _next_above(settings.search.values("retries"), current_r)
        target_r = int(above) if above is not None else current_r + 1
        failures = sum(d.failures for d in flaky)
        transport = sum(d.transport_failures for d in flaky)
        out.append(
            Recommendation(
                phase,
                Action.RAISE_RETRIES,
                "retries",
                target_r,
                spec.id,
                f"{len(flaky)}/{case_count} cases flaky with transport failures ({transport} of "
                f"{failures} failures): retries {current_r} -> {target_r}",
                tuple(d.case_id for d in flaky if d.case_id is not None),
            )
        )
    return tuple(out)
