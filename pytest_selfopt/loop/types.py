"""Plain frozen data that flows through the loop.

Everything here is builtins-only on the outside (``to_dict``/``from_dict`` give JSON-able
dicts), so samples can cross xdist's execnet channel and records can be written to the
committed files without any conversion layer. No pytest, no network, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pytest_selfopt.loop.spec import Scalar, Spec

PROMOTE = "PROMOTE"
HOLD = "HOLD"
REJECT = "REJECT"
VERDICTS: tuple[str, ...] = (PROMOTE, HOLD, REJECT)

# Error kinds a sample can carry (``None`` when it passed).
WRONG_ANSWER = "wrong_answer"
TRANSPORT_ERROR_KINDS: frozenset[str] = frozenset(
    {"timeout", "connect", "http_429", "http_5xx", "http_4xx", "protocol", "config"}
)


@dataclass(frozen=True)
class Sample:
    """Result of one (spec, case, run). Crosses the xdist channel as ``to_dict()``."""

    phase: str
    spec_id: str
    case_id: str
    run: int  # 1-based
    passed: bool
    restraint: float | None  # fraction of the case's constraints kept; None: case has none
    latency_s: float  # the answering (last) attempt
    total_latency_s: float  # all attempts, backoff included
    attempts: int
    error_kind: str | None  # None when passed; "wrong_answer", "timeout", "http_5xx", ...
    input_tokens: int = 0
    output_tokens: int = 0
    started_at: float = 0.0  # wall clock (time.time()) when the measured call started
    worker: str = "main"  # xdist worker id, "main" without xdist
    model: str = ""  # the model that answered (differs from the spec's on fallback)
    cost: float | None = None

    @property
    def transport_error(self) -> bool:
        return self.error_kind in TRANSPORT_ERROR_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class GateSettings:
    """Thresholds of the seed's four gates (DESIGN.md §8) and of diagnosis aggregation."""

    min_samples: int = 3
    max_variance: float = 0.0025
    min_restraint: float = 0.80
    #: share of a phase's cases that must be capability-limited before a route is recommended
    route_share: float = 0.5
    #: cycles a failed candidate (rejected spec or unverified recommendation) is not re-proposed
    cooldown_cycles: int = 3
    # --- the ``paired`` policy (loop/paired.py, docs/statistics.md) ---
    #: one-sided significance level of the improvement gate, Holm-corrected over candidates
    alpha: float = 0.05
    #: smallest improvement (accuracy fraction) worth promoting ...
    min_effect: float = 0.0
    #: ... and at least this many prompts' worth (1 prompt of P = 1/P of accuracy)
    min_effect_prompts: float = 1.0
    #: two-sided level of the interval recorded with the improvement
    interval_level: float = 0.90
    #: exact permutation test below this many informative prompts, CMH z from it on
    exact_below: int = 20
    #: stability gate: mean per-case run-to-run flip rate at most this (1.0: advisory)
    max_flip_rate: float = 1.0
    #: the improvement the suite should be able to detect; larger MDE: "underpowered"
    effect_of_interest: float = 0.05
    #: power at which the minimum detectable effect is computed
    power: float = 0.80
    #: cases with a cold-start pattern needed to recommend warm-up without a spec-level
    #: (per-worker) cold start: one case's pattern is too easily a flaky prompt
    warmup_min_cases: int = 2
    #: --selfopt-check: how far the routed spec's median may fall below the committed one
    regression_tolerance: float = 0.0
    #: screen -> confirm: with 3+ search candidates, screen them on this many runs (0: off)
    screen_runs: int = 0


@dataclass(frozen=True)
class SearchSpace:
    """Per knob, the values generation may try, in the order they are tried."""

    knobs: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    def values(self, knob: str) -> tuple[Scalar, ...]:
        return dict(self.knobs).get(knob, ())


@dataclass(frozen=True)
class CasePattern:
    """One case's R outcomes under one spec, in time order of their start."""

    case_id: str
    runs: tuple[int, ...]  # run numbers, in time order
    outcomes: tuple[bool, ...]  # passed, in time order
    error_kinds: tuple[str | None, ...]  # in time order
    workers: tuple[str, ...]  # in time order
    started_at: tuple[float, ...] = ()  # in time order

    def render(self) -> str:
        """``[F,F,P,P,P,P,P]``"""
        return "[" + ",".join("P" if ok else "F" for ok in self.outcomes) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "pattern": self.render(),
            "runs": list(self.runs),
            "error_kinds": list(self.error_kinds),
            "workers": list(self.workers),
        }


@dataclass(frozen=True)
class SpecStats:
    """Aggregates of one spec in one phase (output of ``loop.evaluate``)."""

    phase: str
    spec_id: str
    runs: int  # R: number of distinct runs seen
    run_accuracies: tuple[float, ...]  # by run number ascending
    median: float
    mean: float
    variance: float  # population variance (ddof=0) of the run accuracies, as the seed
    latency_p50_s: float
    latency_p95_s: float
    restraint: float | None  # mean over samples with constraints; None when no case has any
    input_tokens: int
    output_tokens: int
    cost: float | None
    samples: int
    errored: int  # samples that ended in a transport error
    case_ids: tuple[str, ...]  # columns of ``passes``, sorted
    run_numbers: tuple[int, ...]  # rows of ``passes``, ascending
    passes: tuple[tuple[bool, ...], ...]  # runs x cases raw pass matrix (paired tests)
    patterns: tuple[CasePattern, ...]  # one per case, same order as case_ids

    def metrics(self) -> dict[str, Any]:
        """The summary written to baseline.yaml and history (no raw matrix)."""
        return {
            "runs": self.runs,
            "median": self.median,
            "mean": self.mean,
            "variance": self.variance,
            "restraint": self.restraint,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "samples": self.samples,
            "errored": self.errored,
        }


@dataclass(frozen=True)
class GateResult:
    name: str  # "samples" | "stability" | "improvement" | "restraint"
    passed: bool
    value: float | None
    threshold: float | None
    detail: str  # "median 0.833 > 0.667"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Decision:
    phase: str
    spec_id: str
    label: str
    verdict: str  # PROMOTE | HOLD | REJECT
    reason: str  # one line
    gates: tuple[GateResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "spec_id": self.spec_id,
            "label": self.label,
            "verdict": self.verdict,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class Diagnosis:
    phase: str
    spec_id: str
    case_id: str | None  # None: a spec-level diagnosis
    kind: str  # stable_pass | cold_start | capability_limit | timeout_bound | flaky
    pattern: str  # "[F,F,P,P,P,P,P]" ("" for spec-level)
    detail: str
    failures: int = 0  # failed samples behind the diagnosis
    transport_failures: int = 0  # of which ended in a transport error (retries may cure them)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Recommendation:
    """A change to try: ``knob=value`` applied to the spec it was diagnosed on."""

    phase: str
    action: str  # enable_warmup | route_next_model | raise_timeout | raise_retries
    knob: str
    value: Scalar
    spec_id: str  # the spec the diagnosis was made on
    reason: str
    evidence: tuple[str, ...] = ()  # case ids

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["evidence"] = list(self.evidence)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        d = dict(data)
        d["evidence"] = tuple(d.get("evidence", ()))
        return cls(**d)


@dataclass(frozen=True)
class PendingCandidate:
    """A recommendation turned into a spec, waiting for the next cycle to verify it."""

    phase: str
    spec: Spec
    recommendation: Recommendation
    proposed_in_cycle: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "spec": self.spec.to_dict(),
            "spec_id": self.spec.id,
            "recommendation": self.recommendation.to_dict(),
            "proposed_in_cycle": self.proposed_in_cycle,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingCandidate:
        return cls(
            phase=data["phase"],
            spec=Spec.from_dict(data["spec"]),
            recommendation=Recommendation.from_dict(data["recommendation"]),
            proposed_in_cycle=int(data["proposed_in_cycle"]),
        )


@dataclass(frozen=True)
class PhaseBaseline:
    """One phase's champion as committed in baseline.yaml."""

    phase: str
    spec: Spec
    metrics: Mapping[str, Any] | None  # SpecStats.metrics() when measured; None for `initial`
    promoted_in_cycle: int  # 0: the suite's initial spec, never measured through the gates
    reason: str


@dataclass(frozen=True)
class Route:
    """What to run for one phase (routing.yaml): the baseline's knobs plus fallbacks."""

    phase: str
    spec: Spec
    fallbacks: tuple[str, ...] = ()  # models to try, in order, after a transport failure

    @property
    def model(self) -> str:
        return self.spec.model


@dataclass(frozen=True)
class Candidate:
    """A spec to evaluate this cycle in one phase, and why it is there."""

    phase: str
    spec: Spec
    origin: str  # "baseline" | "search" | "pending" | "screen" (loop/screen.py)
    recommendation: Recommendation | None = None
    runs: int | None = None  # runs 1..runs only (screened); None: all runs


@dataclass(frozen=True)
class PhasePlan:
    """Ordered specs of one phase for this cycle: the baseline first, then candidates."""

    phase: str
    baseline: Spec
    candidates: tuple[Candidate, ...] = ()

    @property
    def specs(self) -> tuple[Spec, ...]:
        return (self.baseline,) + tuple(c.spec for c in self.candidates)


@dataclass(frozen=True)
class AuditRecord:
    """One line of decisions.log."""

    cycle: int
    phase: str
    event: str  # decision | promote | enforce | recommend | verify_failed | route
    spec_id: str
    label: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycle": self.cycle,
            "phase": self.phase,
            "event": self.event,
            "spec_id": self.spec_id,
            "label": self.label,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class TriedSpec:
    """A spec evaluated in an earlier cycle, read back from history (for cool-downs)."""

    phase: str
    spec_id: str
    cycle: int
    verdict: str
    origin: str  # "search" | "pending" | "screen"


@dataclass(frozen=True)
class LoopState:
    """What the committed files say at the start of a cycle, as loop inputs."""

    baselines: Mapping[str, PhaseBaseline]  # by phase; phases absent use the suite's initial
    routes: Mapping[str, Route]  # by phase
    pending: tuple[PendingCandidate, ...] = ()
    tried: tuple[TriedSpec, ...] = ()
    last_cycle: int = 0  # number of the last recorded cycle; this one is last_cycle + 1


@dataclass(frozen=True)
class LoopSettings:
    """The suite config's loop knobs, as loop inputs (config.py builds it)."""

    initial: Spec
    search: SearchSpace
    max_candidates: int
    gates: GateSettings
    fallback_chain: tuple[str, ...]
    runs: int
    seed: int
    policy: str = "paired"


def spec_index(specs: Sequence[Spec]) -> dict[str, Spec]:
    return {s.id: s for s in specs}
