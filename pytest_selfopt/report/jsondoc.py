"""The JSON results of a cycle (``--selfopt-json``): every sample and every decision.

Builtins only, so other tools read it with any JSON parser; numbers are not rounded here
(the committed files round, this is the raw record).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.types import PhaseBaseline, Route, SpecStats
from pytest_selfopt.report.common import spec_labels


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} into the JSON report")


def _baseline_doc(base: PhaseBaseline) -> dict[str, Any]:
    return {
        "spec_id": base.spec.id,
        "spec": base.spec.to_dict(),
        "metrics": _plain(base.metrics),
        "promoted_in_cycle": base.promoted_in_cycle,
        "reason": base.reason,
    }


def _route_doc(route: Route | None) -> dict[str, Any] | None:
    if route is None:
        return None
    return {
        "spec_id": route.spec.id,
        "spec": route.spec.to_dict(),
        "fallbacks": list(route.fallbacks),
    }


def _stats_doc(stats: SpecStats) -> dict[str, Any]:
    doc = dict(stats.metrics())
    doc["run_accuracies"] = list(stats.run_accuracies)
    doc["patterns"] = [p.to_dict() for p in stats.patterns]
    return {k: _plain(v) for k, v in doc.items()}


def json_document(
    outcome: CycleOutcome, samples: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Everything the cycle decided and measured, as JSON-able builtins."""
    phases = []
    for phase in outcome.phases:
        labels = spec_labels(phase)
        phases.append(
            {
                "phase": phase.phase,
                "baseline_before": _baseline_doc(phase.baseline_before),
                "baseline_after": _baseline_doc(phase.baseline_after),
                "route_before": _route_doc(phase.route_before),
                "route_after": _route_doc(phase.route_after),
                "candidates": [
                    {
                        "spec_id": c.spec.id,
                        "label": labels.get(c.spec.id, c.spec.id),
                        "origin": c.origin,
                        "spec": c.spec.to_dict(),
                        "recommendation": _plain(c.recommendation),
                    }
                    for c in phase.plan.candidates
                ],
                "stats": {sid: _stats_doc(s) for sid, s in phase.stats.items()},
                "decisions": [d.to_dict() for d in phase.decisions],
                "diagnoses": [d.to_dict() for d in phase.diagnoses],
                "recommendations": [r.to_dict() for r in phase.recommendations],
                "winner": None if phase.winner is None else phase.winner.spec.id,
                "enforced": list(phase.enforced),
            }
        )
    return {
        "cycle": outcome.cycle,
        "seed": outcome.seed,
        "runs": outcome.runs,
        "policy": outcome.policy,
        "promoted": outcome.promoted,
        "phases": phases,
        "pending": [p.to_dict() for p in outcome.pending],
        "audit": [a.to_dict() for a in outcome.audit],
        "samples": [_plain(s) for s in samples],
    }
