"""What the controller ships to xdist workers through ``workerinput``: plain builtins only.

The controller computes the cycle's plans once; every worker rebuilds the same frozen
objects from this, so every worker collects the same ordered items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import Candidate, PhasePlan, Recommendation, Route, Sample


def plain(value: Any) -> Any:
    """Builtins only, exactly: execnet sends ``str`` but not a ``StrEnum`` member."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def plan_to_dict(plan: PhasePlan) -> dict[str, Any]:
    return {
        "phase": plan.phase,
        "baseline": plan.baseline.to_dict(),
        "candidates": [
            {
                "spec": c.spec.to_dict(),
                "origin": c.origin,
                "recommendation": c.recommendation.to_dict() if c.recommendation else None,
                "runs": c.runs,
            }
            for c in plan.candidates
        ],
    }


def plan_from_dict(data: Mapping[str, Any]) -> PhasePlan:
    return PhasePlan(
        phase=data["phase"],
        baseline=Spec.from_dict(data["baseline"]),
        candidates=tuple(
            Candidate(
                phase=data["phase"],
                spec=Spec.from_dict(c["spec"]),
                origin=c["origin"],
                recommendation=(
                    Recommendation.from_dict(c["recommendation"]) if c["recommendation"] else None
                ),
                runs=c.get("runs"),
            )
            for c in data["candidates"]
        ),
    )


def route_to_dict(route: Route) -> dict[str, Any]:
    return {"phase": route.phase, "spec": route.spec.to_dict(), "fallbacks": list(route.fallbacks)}


def route_from_dict(data: Mapping[str, Any]) -> Route:
    return Route(
        phase=data["phase"], spec=Spec.from_dict(data["spec"]), fallbacks=tuple(data["fallbacks"])
    )


@dataclass(frozen=True)
class Shipment:
    """Everything a worker needs to collect and run exactly what the controller planned."""

    selfopt: bool
    runs: int
    seed: int
    plans: Mapping[str, PhasePlan]  # known phases
    default_plan: PhasePlan | None  # for a phase first seen at collection (phase name "*")
    routes: Mapping[str, Route]  # plain runs: the routed spec of each phase
    default_route: Route | None  # phase name "*": the suite's initial spec
    cycle: int = 1  # simulated models draw fresh data every cycle (docs/providers.md)

    def plan_for(self, phase: str) -> PhasePlan | None:
        if phase in self.plans:
            return self.plans[phase]
        if self.default_plan is None:
            return None
        base = self.default_plan
        return PhasePlan(
            phase=phase,
            baseline=base.baseline,
            candidates=tuple(replace(c, phase=phase) for c in base.candidates),
        )

    def route_for(self, phase: str) -> Route | None:
        if phase in self.routes:
            return self.routes[phase]
        if self.default_route is None:
            return None
        return Route(phase, self.default_route.spec, self.default_route.fallbacks)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = plain(self._fields())
        return doc

    def _fields(self) -> dict[str, Any]:
        return {
            "selfopt": self.selfopt,
            "runs": self.runs,
            "seed": self.seed,
            "cycle": self.cycle,
            "plans": {k: plan_to_dict(v) for k, v in self.plans.items()},
            "default_plan": plan_to_dict(self.default_plan) if self.default_plan else None,
            "routes": {k: route_to_dict(v) for k, v in self.routes.items()},
            "default_route": route_to_dict(self.default_route) if self.default_route else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shipment:
        return cls(
            selfopt=bool(data["selfopt"]),
            runs=int(data["runs"]),
            seed=int(data["seed"]),
            cycle=int(data["cycle"]),
            plans={k: plan_from_dict(v) for k, v in data["plans"].items()},
            default_plan=plan_from_dict(data["default_plan"]) if data["default_plan"] else None,
            routes={k: route_from_dict(v) for k, v in data["routes"].items()},
            default_route=(
                route_from_dict(data["default_route"]) if data["default_route"] else None
            ),
        )


class Point:
    """One (spec, run) of a phase: the parameter every ``llm`` item gets under --selfopt."""

    def __init__(self, phase: str, spec: Spec, label: str, run: int, index: int) -> None:
        self.phase, self.spec, self.label, self.run, self.index = phase, spec, label, run, index

    @property
    def id(self) -> str:
        return f"{self.label}-r{self.run}"

    def __repr__(self) -> str:
        return f"Point({self.phase}, {self.id})"


def spec_runs(plan: PhasePlan, runs: int) -> list[tuple[Spec, int]]:
    """Each spec of the plan with the runs it takes: all ``runs``, fewer when screened
    (``Candidate.runs``: runs 1..k only, loop/screen.py)."""
    limits = [None] + [c.runs for c in plan.candidates]
    return [
        (spec, runs if limit is None else min(limit, runs))
        for spec, limit in zip(plan.specs, limits)
    ]


def points(plan: PhasePlan, runs: int) -> list[Point]:
    """Run-major, specs interleaved within a run; a screened spec stops after its runs."""
    return [
        Point(plan.phase, spec, spec.label(plan.baseline), run, index)
        for run in range(1, runs + 1)
        for index, (spec, last) in enumerate(spec_runs(plan, runs))
        if run <= last
    ]


@dataclass
class Collected:
    """Samples and item bookkeeping gathered on the controller from test reports."""

    samples: list[Sample] = field(default_factory=list)
    finished_items: int = 0
    skipped: set[tuple[str, str, str, int]] = field(default_factory=set)  # phase, spec, case, run
    raced: set[tuple[str, str, str, int]] = field(default_factory=set)  # skipped by racing
    no_sample: list[str] = field(default_factory=list)  # nodeids whose test never asked
    test_bugs: list[TestBug] = field(default_factory=list)
    judged: dict[str, bool] = field(default_factory=dict)  # test function -> judged any reply
    function_of: dict[tuple[str, str, str, int], str] = field(default_factory=dict)

    def add_sample(self, sample: Sample, nodeid: str, unjudged: bool) -> None:
        function = nodeid.split("[", 1)[0]
        self.samples.append(sample)
        self.function_of[(sample.phase, sample.spec_id, sample.case_id, sample.run)] = function
        if not sample.transport_error:  # nothing to judge: no reply came back
            self.judged[function] = self.judged.get(function, False) or not unjudged

    def function_of_sample(self, sample: Sample) -> str:
        return self.function_of.get((sample.phase, sample.spec_id, sample.case_id, sample.run), "")

    def unjudged_functions(self) -> dict[str, int]:
        """Test functions that asked the model and never judged a reply: their sample counts."""
        counts: dict[str, int] = {}
        for function in self.function_of.values():
            if not self.judged.get(function, True):
                counts[function] = counts.get(function, 0) + 1
        return dict(sorted(counts.items()))

    def judged_samples(self) -> list[Sample]:
        """The samples a cycle may decide on: those of test functions that judge replies."""
        return [
            s
            for s in self.samples
            if self.judged.get(
                self.function_of.get((s.phase, s.spec_id, s.case_id, s.run), ""), True
            )
        ]

    def phases(self) -> list[str]:
        return sorted({s.phase for s in self.samples})

    def plans(self, shipment: Shipment) -> dict[str, PhasePlan]:
        """The plan of every phase that produced a sample."""
        plans = {p: shipment.plan_for(p) for p in self.phases()}
        return {p: plan for p, plan in plans.items() if plan is not None}

    def uneven_skips(self) -> list[str]:
        """A case skipped under one spec and run under another makes an incomplete comparison
        (a fixture that skips a model's hard cases would get it promoted): name them."""
        ran = {(s.phase, s.case_id): s.spec_id for s in self.samples}
        problems = []
        for phase, spec_id, case_id, run in sorted(self.skipped - self.raced):
            other = ran.get((phase, case_id))
            if other is not None and other != spec_id:
                problems.append(
                    f"phase {phase}: case {case_id} was skipped under spec {spec_id} (run {run}) "
                    f"but ran under spec {other}: an incomplete comparison; skip a case for "
                    "every spec or for none"
                )
        return problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else [])

    def problems(self, collected_items: int, shipment: Shipment | None) -> list[str]:
        """Why these reports cannot make a cycle: unfinished items, tests that never asked,
        test bugs, uneven skips, missing samples (raced-out items are expected). Empty: they can."""
        problems: list[str] = []
        if self.test_bugs:
            problems += [f"test bug: {bug.line()}" for bug in self.test_bugs[:5]]
            if len(self.test_bugs) > 5:
                problems.append(f"... and {len(self.test_bugs) - 5} more test bug(s)")
        if self.finished_items < collected_items:
            problems.append(
                f"{collected_items - self.finished_items} of {collected_items} items did not finish"
            )
        if self.no_sample:
            problems.append(
                f"{len(self.no_sample)} test(s) used llm but never called llm.ask, "
                f"e.g. {self.no_sample[0]}"
            )
        problems += self.uneven_skips()
        if not problems and shipment is not None:
            problems += missing_samples(self.plans(shipment), self, shipment.runs)
        return problems


def missing_samples(plans: Mapping[str, PhasePlan], collected: Collected, runs: int) -> list[str]:
    """Every spec of every phase that ran must have a sample per (case, run) of its runs
    (screened specs: runs 1..k): else why not."""
    have = {(s.phase, s.spec_id, s.case_id, s.run) for s in collected.samples}
    cases: dict[str, set[str]] = defaultdict(set)
    for s in collected.samples:
        cases[s.phase].add(s.case_id)
    problems: list[str] = []
    for phase in sorted(cases):
        plan = plans[phase]
        missing = [
            (spec.id, case, run)
            for spec, last in spec_runs(plan, runs)
            for case in sorted(cases[phase])
            for run in range(1, last + 1)
            if (phase, spec.id, case, run) not in have
            and (phase, spec.id, case, run) not in collected.skipped
        ]
        if missing:
            spec_id, case, run = missing[0]
            problems.append(
                f"phase {phase}: {len(missing)} sample(s) missing, e.g. spec {spec_id} "
                f"case {case} run {run}"
            )
    return problems


# -- data on test reports ---------------------------------------------------------------------
#
# Everything the worker tells the controller about an item rides on the report as one
# attribute of plain builtins. pytest copies a report's extra attributes when xdist serializes
# it, and ``--junitxml`` never sees them: only the ``selfopt.*`` user properties meant for
# people reach it (docs/architecture.md, "Data on reports").

PAYLOAD_ATTR = "selfopt"


@dataclass(frozen=True)
class ItemKey:
    """Which (phase, spec, case, run) an item measures."""

    phase: str
    spec_id: str
    case_id: str
    run: int

    def to_list(self) -> list[Any]:
        return [self.phase, self.spec_id, self.case_id, self.run]

    @classmethod
    def from_list(cls, data: Any) -> ItemKey:
        phase, spec_id, case_id, run = data
        return cls(str(phase), str(spec_id), str(case_id), int(run))


@dataclass(frozen=True)
class TestBug:
    """An exception other than a failed reply check in a test that uses ``llm``."""

    __test__ = False  # not a test class, whatever pytest's collection rules say

    nodeid: str
    exception: str  # "AttributeError: 'str' object has no attribute 'lowercase'"
    where: str  # "benchmarks/test_x.py:12"

    def line(self) -> str:
        return f"{self.nodeid}: {self.exception} ({self.where})"


@dataclass(frozen=True)
class ReportPayload:
    """What one report carries for the controller; every field optional."""

    sample: Sample | None = None
    unjudged: bool = False  # the case has an expectation, and nothing judged the reply
    no_sample: bool = False  # the test used llm and never asked
    test_bug: TestBug | None = None
    skipped: ItemKey | None = None  # setup skipped this item
    raced: bool = False  # ... because racing gave its spec up
    race_items: tuple[str, str, int, int] | None = None  # racing: phase, spec, run, item count

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sample is not None:
            out["sample"] = self.sample.to_dict()
        if self.unjudged:
            out["unjudged"] = True
        if self.no_sample:
            out["no_sample"] = True
        if self.test_bug is not None:
            bug = self.test_bug
            out["test_bug"] = [bug.nodeid, bug.exception, bug.where]
        if self.skipped is not None:
            out["skipped"] = self.skipped.to_list()
            out["raced"] = self.raced
        if self.race_items is not None:
            out["race_items"] = list(self.race_items)
        doc: dict[str, Any] = plain(out)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportPayload:
        bug = data.get("test_bug")
        items = data.get("race_items")
        return cls(
            sample=Sample.from_dict(data["sample"]) if "sample" in data else None,
            unjudged=bool(data.get("unjudged", False)),
            no_sample=bool(data.get("no_sample", False)),
            test_bug=TestBug(*bug) if bug else None,
            skipped=ItemKey.from_list(data["skipped"]) if "skipped" in data else None,
            raced=bool(data.get("raced", False)),
            race_items=(str(items[0]), str(items[1]), int(items[2]), int(items[3]))
            if items
            else None,
        )


def attach(report: Any, payload: ReportPayload) -> None:
    """Put ``payload`` on ``report`` (merged with what is there)."""
    old = getattr(report, PAYLOAD_ATTR, None) or {}
    setattr(report, PAYLOAD_ATTR, {**old, **payload.to_dict()})


def payload_of(report: Any) -> ReportPayload | None:
    data = getattr(report, PAYLOAD_ATTR, None)
    return ReportPayload.from_dict(data) if isinstance(data, dict) and data else None
