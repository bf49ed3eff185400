"""loop.cycle, learn, enforce: the seed's three-cycle story, built from synthetic samples."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.evaluate import SampleColumns
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    GateSettings,
    LoopSettings,
    LoopState,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Route,
    Sample,
    SearchSpace,
)

INITIAL = Spec("lfm", "native_api", 60, 1, "i0", False)
SETTINGS = LoopSettings(
    initial=INITIAL,
    search=SearchSpace(
        (
            ("variant", ("native_api", "atomic")),
            ("timeout_s", (60, 120)),
            ("retries", (1, 2)),
            ("isolation", ("i0", "i1")),
        )
    ),
    max_candidates=4,
    gates=GateSettings(),
    fallback_chain=("lfm", "claude-haiku"),
    runs=7,
    seed=42,
    policy="seed",  # the seed's walkthrough, gate for gate
)
CASES = tuple(f"case{i}" for i in range(6))
PHASES = ("atomic", "extended")
HAIKU = INITIAL.with_knob("model", "claude-haiku")
HAIKU_WARM = HAIKU.with_knob("warmup", True)

Outcome = Callable[[str, Spec, int, int, str], tuple[bool, str | None]]


def POLICY_OF(settings: LoopSettings) -> GatePolicy:  # noqa: N802
    return builtin_policies()[settings.policy]


def example_model(cold_calls: Mapping[str, int]) -> Outcome:
    """The example's behaviour. ``cold_calls[worker]``: claude-haiku's first calls in that
    process time out unless warm-up is on (``nth``: the spec's nth call on the worker)."""

    def outcome(
        phase: str, spec: Spec, case: int, nth: int, worker: str = "main"
    ) -> tuple[bool, str | None]:
        if phase == "atomic":
            solved = 5 if spec.variant == "atomic" else 4
            return (True, None) if case < solved else (False, "wrong_answer")
        if spec.model == "claude-haiku":
            if not spec.warmup and nth < cold_calls.get(worker, 0):
                return False, "timeout"
            return True, None
        return False, "wrong_answer"

    return outcome


def run_plans(plans: Mapping[str, PhasePlan], outcome: Outcome, workers: int = 1) -> list[Sample]:
    """Items case-major like pytest's parametrization; with ``workers`` > 1, items alternate
    over workers and gw1 starts 5 time units after gw0 (it was busy elsewhere first)."""
    samples, nth = [], Counter[tuple[str, str]]()
    i = 0
    for phase in sorted(plans):
        for spec in plans[phase].specs:
            for c, case in enumerate(CASES):
                for run in range(1, SETTINGS.runs + 1):
                    worker = "main" if workers == 1 else f"gw{i % workers}"
                    started = float(i) + (5.0 if worker == "gw1" else 0.0)
                    passed, kind = outcome(phase, spec, c, nth[(worker, spec.id)], worker)
                    nth[(worker, spec.id)] += 1
                    samples.append(
                        Sample(
                            phase=phase,
                            spec_id=spec.id,
                            case_id=case,
                            run=run,
                            passed=passed,
                            restraint=None,
                            latency_s=1.0 + c / 10,
                            total_latency_s=1.0,
                            attempts=1,
                            error_kind=kind,
                            started_at=started,
                            worker=worker,
                            model=spec.model,
                        )
                    )
                    i += 1
    return samples


def next_state(history: list[dict[str, Any]], outcome: CycleOutcome) -> LoopState:
    """What the committed files would say, read back through history's JSON round trip."""
    history.append(json.loads(json.dumps(history_entry(outcome))))
    return LoopState(
        baselines={p.phase: p.baseline_after for p in outcome.phases},
        routes={p.phase: p.route_after for p in outcome.phases},
        pending=pending_from_history(history),
        tried=tried_from_history(history),
        last_cycle=outcome.cycle,
    )


def run_example(
    workers: int, cold_calls: Mapping[str, int]
) -> tuple[list[CycleOutcome], list[dict[str, Any]]]:
    state = LoopState(baselines={}, routes={})
    history: list[dict[str, Any]] = []
    outcomes: list[CycleOutcome] = []
    for _ in range(3):
        plans = plan_cycle(state, SETTINGS, PHASES)
        out = close_cycle(
            state,
            SETTINGS,
            plans,
            run_plans(plans, example_model(cold_calls), workers),
            policy=POLICY_OF(SETTINGS),
        )
        outcomes.append(out)
        state = next_state(history, out)
    return outcomes, history


def phase(outcome: CycleOutcome, name: str) -> PhaseOutcome:
    return next(p for p in outcome.phases if p.phase == name)


def verdicts(p: PhaseOutcome) -> dict[str, str]:
    return {d.label: d.verdict for d in p.decisions}


def test_cycle_one_promotes_the_variant_and_recommends_a_route() -> None:
    (c1, _, _), history = run_example(1, {"main": 2})
    assert c1.cycle == 1 and c1.promoted
    atomic = phase(c1, "atomic")
    assert verdicts(atomic) == {
        "variant=atomic": PROMOTE,
        "timeout_s=120": REJECT,
        "retries=2": REJECT,
        "isolation=i1": REJECT,
    }
    reasons = {d.label: d.reason for d in atomic.decisions}
    assert reasons["variant=atomic"] == (
        "PROMOTE: median 0.833 > 0.667, variance 0.0000, restraint n/a"
    )
    assert reasons["retries=2"] == "REJECT: no improvement: median 0.667 = baseline 0.667"
    assert atomic.baseline_after.spec == INITIAL.with_knob("variant", "atomic")
    assert atomic.baseline_after.promoted_in_cycle == 1
    assert atomic.baseline_after.reason.startswith("variant=atomic: PROMOTE")
    assert atomic.route_after.spec.variant == "atomic"

    extended = phase(c1, "extended")
    assert set(verdicts(extended).values()) == {REJECT}
    assert extended.winner is None
    # not beaten, but measured for the first time: committed once (metrics and per-case
    # reference) so that --selfopt-check can guard it; spec and promotion cycle unchanged
    before, after = extended.baseline_before, extended.baseline_after
    assert before.metrics is None and not before.reference
    assert (after.spec, after.promoted_in_cycle, after.reason) == (
        before.spec,
        0,
        before.reason,
    )
    assert after.metrics is not None and after.metrics["median"] == 0.0
    assert after.reference == {f"case{i}": (0, 7) for i in range(6)}
    base_diag = [d for d in extended.diagnoses if d.spec_id == INITIAL.id and d.case_id]
    assert [d.kind for d in base_diag] == ["capability_limit"] * 6
    routes = [r for r in extended.recommendations if r.action == "route_next_model"]
    assert routes and routes[0].value == "claude-haiku" and routes[0].spec_id == INITIAL.id
    assert [(p.phase, p.spec) for p in c1.pending] == [("extended", HAIKU)]
    assert c1.pending[0].proposed_in_cycle == 1

    record = history[0]["phases"]["atomic"]
    assert list(history[0]) == ["cycle", "seed", "runs", "policy", "phases", "pending"]
    assert record["improvement"] == pytest.approx(1 / 6)
    assert record["winner"] == atomic.baseline_after.spec.id
    assert record["measured_baseline"]["median"] == pytest.approx(4 / 6)
    assert record["baseline_before"]["metrics"] is None
    assert record["patterns"][INITIAL.id]["case5"] == "[F,F,F,F,F,F,F]"
    assert history[0]["phases"]["extended"]["improvement"] == 0.0


@pytest.mark.parametrize(
    "workers,cold_calls",
    [
        (1, {"main": 2}),  # -n 0: the first two calls of the process time out
        (2, {"gw0": 1, "gw1": 1}),  # -n 2: each worker's first call times out
        (2, {"gw1": 1}),  # -n 2, gw0 already warm: one case reads [P,P,P,F,P,P,P]
    ],
)
def test_cold_start_is_held_then_verified_with_warmup(
    workers: int, cold_calls: dict[str, int]
) -> None:
    (_, c2, c3), history = run_example(workers, cold_calls)
    extended2 = phase(c2, "extended")
    assert [(c.spec, c.origin) for c in extended2.plan.candidates] == [(HAIKU, "pending")]
    (decision,) = extended2.decisions
    assert decision.verdict == HOLD and decision.reason.startswith("HOLD: unstable: variance")
    haiku_diag = [d for d in extended2.diagnoses if d.spec_id == HAIKU.id]
    assert any(d.kind == "cold_start" and d.case_id is None for d in haiku_diag)
    assert {d.kind for d in haiku_diag if d.case_id} <= {"cold_start", "stable_pass"}
    warm = [r for r in extended2.recommendations if r.action == "enable_warmup"]
    assert [(r.spec_id, r.value) for r in warm] == [(HAIKU.id, True)]
    # the route recommendation of the lfm baseline points at the spec on HOLD: cooling down
    assert [p.spec for p in c2.pending] == [HAIKU_WARM]
    events = [(a.event, a.spec_id) for a in c2.audit if a.phase == "extended"]
    assert ("verify_failed", HAIKU.id) in events and ("recommend", HAIKU_WARM.id) in events
    assert extended2.route_after == extended2.route_before  # nothing unverified reaches routing
    assert extended2.route_after.model == "lfm"
    if workers == 2 and cold_calls == {"gw1": 1}:
        # its one failure sits mid-pattern: only the per-worker reading sees the cold start
        assert ("[P,F,P,P,P,P,P]", "cold_start") in {(d.pattern, d.kind) for d in haiku_diag}

    extended3 = phase(c3, "extended")
    assert [(c.spec, c.origin) for c in extended3.plan.candidates] == [(HAIKU_WARM, "pending")]
    assert verdicts(extended3) == {"model=claude-haiku,warmup=true": PROMOTE}
    assert extended3.baseline_after.spec == HAIKU_WARM
    assert extended3.route_after == Route("extended", HAIKU_WARM, ())
    assert extended3.enforced == (
        "routing extended: model lfm -> claude-haiku, warmup false -> true (verified in cycle 3)",
    )
    assert [a.event for a in c3.audit if a.phase == "extended"] == [
        "decision",
        "promote",
        "enforce",
    ]
    assert c3.pending == ()
    assert history[2]["phases"]["extended"]["improvement"] == pytest.approx(1.0)


def test_same_recommendations_and_baselines_with_zero_or_two_workers() -> None:
    def summary(outcomes: list[CycleOutcome]) -> list[Any]:
        return [
            (
                [(p.phase, p.spec.id, p.recommendation.action) for p in o.pending],
                {p.phase: p.baseline_after.spec.id for p in o.phases},
                {p.phase: [(d.spec_id, d.verdict) for d in p.decisions] for p in o.phases},
            )
            for o in outcomes
        ]

    serial, _ = run_example(1, {"main": 2})
    assert summary(serial) == summary(run_example(2, {"gw0": 1, "gw1": 1})[0])
    assert summary(serial) == summary(run_example(2, {"gw1": 1})[0])


def test_atomic_stays_put_once_nothing_improves() -> None:
    (_, c2, c3), _ = run_example(1, {"main": 2})
    atomic2 = phase(c2, "atomic")
    assert set(verdicts(atomic2).values()) == {REJECT}
    assert atomic2.baseline_after is atomic2.baseline_before
    assert atomic2.enforced == ()  # route unchanged: no "enforce" line
    assert phase(c3, "atomic").plan.candidates == ()  # everything cooling down


def test_plan_cycle_defaults() -> None:
    promoted = PhaseBaseline("atomic", HAIKU, {"median": 1.0}, 4, "why")
    state = LoopState(baselines={"atomic": promoted}, routes={}, last_cycle=4)
    plans = plan_cycle(state, SETTINGS, ["extended", "atomic"])
    assert list(plans) == ["atomic", "extended"]
    assert plans["atomic"].baseline == HAIKU and plans["extended"].baseline == INITIAL


def test_close_cycle_accepts_columns_and_holds_specs_without_samples() -> None:
    state = LoopState(baselines={}, routes={})
    plans = plan_cycle(state, SETTINGS, ["atomic"])
    samples = [
        s
        for s in run_plans(plans, example_model({}))
        if s.spec_id != plans["atomic"].candidates[-1].spec.id
    ]
    from_list = close_cycle(state, SETTINGS, plans, samples, policy=POLICY_OF(SETTINGS))
    from_cols = close_cycle(
        state, SETTINGS, plans, SampleColumns.from_samples(samples), policy=POLICY_OF(SETTINGS)
    )
    assert from_list == from_cols
    last = from_list.phases[0].decisions[-1]
    assert last.verdict == HOLD and last.reason.startswith("could not decide: no samples")
    assert from_list.policy == "seed" and from_list.seed == 42


def test_pending_of_other_phases_and_beyond_the_cap_is_carried_over() -> None:
    state0 = LoopState(baselines={}, routes={})
    plans0 = plan_cycle(state0, SETTINGS, PHASES)
    c1 = close_cycle(
        state0, SETTINGS, plans0, run_plans(plans0, example_model({})), policy=POLICY_OF(SETTINGS)
    )
    narrow = LoopSettings(**{**SETTINGS.__dict__, "max_candidates": 0})
    warm = INITIAL.with_knob("warmup", True)
    rec = Recommendation("atomic", "enable_warmup", "warmup", True, INITIAL.id, "why")
    waiting = (*c1.pending, PendingCandidate("atomic", warm, rec, 1))
    state1 = LoopState(baselines={}, routes={}, pending=waiting, tried=(), last_cycle=1)
    plans = plan_cycle(state1, narrow, ["atomic"])  # extended not planned at all
    assert plans["atomic"].candidates == ()  # no room under the cap
    c2 = close_cycle(
        state1, narrow, plans, run_plans(plans, example_model({})), policy=POLICY_OF(narrow)
    )
    assert [(p.phase, p.spec, p.proposed_in_cycle) for p in c2.pending] == [
        ("atomic", warm, 1),
        ("extended", HAIKU, 1),
    ]
    plans = plan_cycle(state1, narrow, PHASES)
    c2 = close_cycle(
        state1, narrow, plans, run_plans(plans, example_model({})), policy=POLICY_OF(narrow)
    )
    # extended's baseline is re-diagnosed: the same route again, fresh evidence, no duplicate
    assert [(p.phase, p.spec, p.proposed_in_cycle) for p in c2.pending] == [
        ("atomic", warm, 1),
        ("extended", HAIKU, 2),
    ]


def test_history_is_plain_json_in_a_fixed_order() -> None:
    outcomes, history = run_example(1, {"main": 2})
    entry = history_entry(outcomes[1])
    assert json.loads(json.dumps(entry)) == entry
    record = entry["phases"]["extended"]
    assert list(record) == [
        "baseline_before",
        "baseline_after",
        "measured_baseline",
        "improvement",
        "winner",
        "candidates",
        "patterns",
        "diagnoses",
        "recommendations",
        "enforced",
        "next",
    ]
    assert list(record["next"]) == ["planned", "waiting", "cooling_down", "retired"]
    (candidate,) = record["candidates"]
    assert list(candidate) == ["spec_id", "label", "origin", "spec", "metrics", "decision"]
    assert candidate["origin"] == "pending" and candidate["decision"]["verdict"] == HOLD
    assert entry["pending"][0]["spec_id"] == HAIKU_WARM.id
    tried = tried_from_history(history[:2])
    assert ("extended", HAIKU.id, 2, HOLD, "pending") in {
        (t.phase, t.spec_id, t.cycle, t.verdict, t.origin) for t in tried
    }
    assert pending_from_history([]) == ()


def test_decision_log_records_the_numbers() -> None:
    (c1, _, _), _ = run_example(1, {"main": 2})
    by_event: dict[str, list[Any]] = {}
    for a in c1.audit:
        by_event.setdefault(a.event, []).append(a)
    assert len(by_event["decision"]) == 8  # four candidates in each phase
    promoted = [a for a in by_event["decision"] if a.detail["verdict"] == PROMOTE]
    (gates,) = [a.detail["gates"] for a in promoted]
    assert [g["name"] for g in gates] == ["samples", "stability", "improvement", "restraint"]
    assert gates[2]["value"] == pytest.approx(5 / 6)
    (promote,) = by_event["promote"]
    assert promote.label == "variant=atomic" and promote.detail["metrics"]["median"] == (
        pytest.approx(5 / 6)
    )
    # first cycle: both routes are written for the first time
    assert {a.phase for a in by_event["enforce"]} == {"atomic", "extended"}
    (rec,) = by_event["recommend"]
    assert rec.detail["action"] == "route_next_model" and rec.spec_id == HAIKU.id
    assert all(json.loads(json.dumps(a.to_dict())) == a.to_dict() for a in c1.audit)
