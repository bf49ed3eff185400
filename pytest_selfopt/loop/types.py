"""Plain frozen data that flows through the loop.

Everything here is builtins-only on the outside (``to_dict``/``from_dict`` give JSON-able
dicts), so samples can cross xdist's execnet channel and records can be written to the
committed files without any conversion layer. No pytest, no network, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from pytest_selfopt.loop.spec import Scalar, Spec


class Verdict(StrEnum):
    """What the gates say about one candidate."""

    PROMOTE = "PROMOTE"
    HOLD = "HOLD"
    REJECT = "REJECT"


PROMOTE = Verdict.PROMOTE
HOLD = Verdict.HOLD
REJECT = Verdict.REJECT
VERDICTS: tuple[Verdict, ...] = tuple(Verdict)


class Cause(StrEnum):
    """Why a decision is what it is, as data (docs/architecture.md, "Gates"): the first
    failing gate, or why nothing could be decided, or what screening or racing did."""

    PASSED = "passed"  # every gate passed: PROMOTE
    SAMPLES = "samples"  # gate 1 failed: HOLD
    STABILITY = "stability"  # gate 2 failed: HOLD
    IMPROVEMENT = "improvement"  # gate 3 failed: REJECT
    RESTRAINT = "restraint"  # gate 4 failed: REJECT
    NO_SAMPLES = "no_samples"  # the candidate or the baseline has no sample: HOLD
    NO_COMMON_CASE = "no_common_case"  # no case sampled by both (paired): HOLD
    OUTAGE = "outage"  # the candidate or the baseline is in an outage: HOLD
    SCREENED_LEAD = "screened_lead"  # led the screening, confirmed next cycle: HOLD
    SCREENED_OUT = "screened_out"  # screened out: REJECT
    RACED = "raced"  # given up by racing: REJECT

    @property
    def is_try(self) -> bool:
        """Whether the decision measured the candidate: only then does it cool down or count
        towards retirement. No data (no samples, an outage) and a screened lead do not."""
        return self not in _NOT_A_TRY


_NOT_A_TRY = frozenset({Cause.NO_SAMPLES, Cause.NO_COMMON_CASE, Cause.OUTAGE, Cause.SCREENED_LEAD})
#: The cause of a verdict from its first failing gate (by gate name).
GATE_CAUSES: Mapping[str, Cause] = {
    "samples": Cause.SAMPLES,
    "stability": Cause.STABILITY,
    "improvement": Cause.IMPROVEMENT,
    "restraint": Cause.RESTRAINT,
}


class DiagnosisKind(StrEnum):
    """What a case's run pattern (or a spec's samples) says (loop/diagnose.py)."""

    STABLE_PASS = "stable_pass"
    COLD_START = "cold_start"
    CAPABILITY_LIMIT = "capability_limit"
    TIMEOUT_BOUND = "timeout_bound"
    FLAKY = "flaky"
    OUTAGE = "outage"


class Action(StrEnum):
    """What a recommendation does (loop/diagnose.py, loop/screen.py)."""

    ROUTE_NEXT_MODEL = "route_next_model"
    ENABLE_WARMUP = "enable_warmup"
    RAISE_TIMEOUT = "raise_timeout"
    RAISE_RETRIES = "raise_retries"
    CONFIRM_SCREENED = "confirm_screened"


class Origin(StrEnum):
    """Why a candidate is in a plan."""

    BASELINE = "baseline"
    SEARCH = "search"  # one knob of the search space
    PENDING = "pending"  # a recommendation (or a screened leader) being verified
    SCREEN = "screen"  # a search candidate limited to runs 1..k (loop/screen.py)


class CandidateStatus(StrEnum):
    """Where a spec stands for the next cycle of its phase (loop/generate.py)."""

    UNTRIED = "untried"  # never measured against this baseline
    RETRY = "retry"  # measured before, free again after its cool-down
    COOLING_DOWN = "cooling_down"  # failed recently; free again in a later cycle
    RETIRED = "retired"  # rejected twice against this baseline: back only when it changes


# Error kinds a sample can carry (``None`` when it passed).
WRONG_ANSWER = "wrong_answer"
TRANSPORT_ERROR_KINDS: frozenset[str] = frozenset(
    {"timeout", "connect", "http_429", "http_5xx", "http_4xx", "protocol", "config"}
)
#: Transport kinds that, when most of a spec's samples end in one of them, are an outage:
#: the service did not answer at all. A timeout is not: it is a cost of ``timeout_s``
#: (diagnosed ``timeout_bound``), and a candidate that answers must be able to beat it.
OUTAGE_ERROR_KINDS: frozenset[str] = TRANSPORT_ERROR_KINDS - {"timeout"}


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
    """Thresholds of the seed's four gates (docs/architecture.md, "Gates") and of diagnosis aggregation."""

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
    """One case's R outcomes under one spec, in run order (run number, then start time
    within a run): never completion order, so any worker count reads the same pattern."""

    case_id: str
    runs: tuple[int, ...]  # run numbers, ascending
    outcomes: tuple[bool, ...]  # passed, in run order
    error_kinds: tuple[str | None, ...]  # in run order
    workers: tuple[str, ...]  # in run order
    started_at: tuple[float, ...] = ()  # in run order

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

    def reference(self) -> dict[str, tuple[int, int]]:
        """Per case ``(passed, runs)``: the compact evidence baseline.yaml commits."""
        return {p.case_id: (sum(p.outcomes), len(p.outcomes)) for p in self.patterns}


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
    """One candidate's verdict, why (``cause``, as data; ``reason``, one line for people) and
    the policy's estimate of its gain over the baseline, which picks the winner."""

    phase: str
    spec_id: str
    label: str
    verdict: Verdict
    reason: str  # one line
    gates: tuple[GateResult, ...]
    #: None: derived from the verdict and the first failing gate
    cause: Cause | None = None
    #: the policy's estimate of the gain (paired: the effect; seed: the median difference)
    estimate: float | None = None

    def __post_init__(self) -> None:
        verdict = Verdict(self.verdict)
        object.__setattr__(self, "verdict", verdict)
        cause = self.cause
        if cause is not None and (cause == Cause.PASSED) != (verdict == PROMOTE):
            cause = None  # a verdict replaced without its cause (``dataclasses.replace``)
        if cause is None and verdict == PROMOTE:
            cause = Cause.PASSED
        elif cause is None:
            failed = next((g for g in self.gates if not g.passed), None)
            fallback = Cause.IMPROVEMENT if verdict == REJECT else Cause.SAMPLES
            cause = GATE_CAUSES.get(failed.name, fallback) if failed else fallback
        object.__setattr__(self, "cause", Cause(cause))

    @property
    def is_try(self) -> bool:
        """Whether this decision measured the candidate (``Cause.is_try``)."""
        return self.cause is None or self.cause.is_try

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "spec_id": self.spec_id,
            "label": self.label,
            "verdict": str(self.verdict),
            "cause": str(self.cause),
            "estimate": self.estimate,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class Diagnosis:
    """What one case's pattern says, or (``case_id`` None) one spec's samples together: a
    per-worker cold start, or an outage (then ``model``, ``error_kind`` and ``samples`` say
    which model failed how, in ``failures`` of ``samples``)."""

    phase: str
    spec_id: str
    case_id: str | None  # None: a spec-level diagnosis
    kind: DiagnosisKind
    pattern: str  # "[F,F,P,P,P,P,P]" ("" for spec-level)
    detail: str
    failures: int = 0  # failed samples behind the diagnosis
    transport_failures: int = 0  # of which ended in a transport error (retries may cure them)
    model: str = ""  # outage: the spec's model alias
    error_kind: str | None = None  # outage: the error kind most samples ended in
    samples: int = 0  # outage: the spec's samples

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DiagnosisKind(self.kind))

    def to_dict(self) -> dict[str, Any]:
        """Every field; the outage-only ones only when set (history stays compact)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "error_kind", "samples") and value == f.default:
                continue
            out[f.name] = str(value) if f.name == "kind" else value
        return out


@dataclass(frozen=True)
class Recommendation:
    """A change to try: ``knob=value`` applied to the spec it was diagnosed on."""

    phase: str
    action: Action
    knob: str
    value: Scalar
    spec_id: str  # the spec the diagnosis was made on
    reason: str
    evidence: tuple[str, ...] = ()  # case ids

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["action"] = str(self.action)
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
    metrics: Mapping[str, Any] | None  # SpecStats.metrics(); None until the phase is measured
    promoted_in_cycle: int  # 0: the suite's initial spec, never measured through the gates
    reason: str
    #: The champion's per-case evidence, ``case_id -> (passed, runs)`` (an errored run is a
    #: failed run): what ``--selfopt-check`` compares today's counts with. Empty until the
    #: phase is measured; set when the phase is first measured and when the champion changes.
    reference: Mapping[str, tuple[int, int]] = field(default_factory=dict)


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
    origin: Origin
    recommendation: Recommendation | None = None
    runs: int | None = None  # runs 1..runs only (screened); None: all runs

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", Origin(self.origin))


@dataclass(frozen=True)
class PhasePlan:
    """Ordered specs of one phase for this cycle: the baseline first, then candidates."""

    phase: str
    baseline: Spec
    candidates: tuple[Candidate, ...] = ()

    #: specs generation would have offered but did not (cooling down, retired, no room)
    held_back: tuple[HeldBack, ...] = ()

    @property
    def specs(self) -> tuple[Spec, ...]:
        return (self.baseline,) + tuple(c.spec for c in self.candidates)


@dataclass(frozen=True)
class HeldBack:
    """A spec that generation would have offered a phase but did not, and why: data for
    reports ("cooling down until cycle 6", "retired", "untried: no room")."""

    spec: Spec
    origin: Origin  # search or pending
    status: CandidateStatus  # COOLING_DOWN, RETIRED, or UNTRIED / RETRY (over max_candidates)
    #: COOLING_DOWN: the first cycle it may run again; otherwise None
    free_in_cycle: int | None = None
    #: COOLING_DOWN / RETIRED: the cycle of the decision that holds it back; otherwise None
    since_cycle: int | None = None

    def to_dict(self, baseline: Spec) -> dict[str, Any]:
        return {
            "spec_id": self.spec.id,
            "label": self.spec.label(baseline),
            "origin": str(self.origin),
            "status": str(self.status),
            "free_in_cycle": self.free_in_cycle,
            "since_cycle": self.since_cycle,
        }


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
    """A spec decided in an earlier cycle, read back from history (cool-downs, retirement)."""

    phase: str
    spec_id: str
    cycle: int
    verdict: Verdict
    origin: Origin
    #: the decision measured the candidate (``Decision.is_try``): no data is no try
    is_try: bool = True
    #: the phase's baseline spec id in that cycle ("" when unknown: counts for any baseline)
    baseline_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))
        object.__setattr__(self, "origin", Origin(self.origin))


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
