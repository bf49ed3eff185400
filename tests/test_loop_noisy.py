"""The pure loop on noisy data (issue 10 points 1, 3, 4, 5, 7; issue 11 point 4).

Each test drives ``plan_cycle``/``close_cycle`` (or one step) on samples written for it, with
the transport noise, outages and slow answers of a real suite, and fails on the loop as it
was before these points were fixed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.decide import pick_winner
from pytest_selfopt.loop.diagnose import diagnose
from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.generate import candidate_status, retired
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.stats import flip_rate
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    Action,
    CandidateStatus,
    Cause,
    Decision,
    DiagnosisKind,
    GateSettings,
    LoopSettings,
    LoopState,
    PhasePlan,
    Sample,
    SearchSpace,
    SpecStats,
    TriedSpec,
)

INITIAL = Spec("small", "plain", 30, 0, "i0", False)
CASES = tuple(f"c{i}" for i in range(8))
RUNS = 7

#: (phase, spec, case index, run) -> (passed, error kind)
Model = Callable[[str, Spec, int, int], tuple[bool, str | None]]


def settings(
    policy: str = "paired",
    search: tuple[tuple[str, tuple[Any, ...]], ...] = (),
    chain: tuple[str, ...] = ("small", "big"),
    **gates: Any,
) -> LoopSettings:
    return LoopSettings(
        initial=INITIAL,
        search=SearchSpace(search),
        max_candidates=4,
        gates=GateSettings(**gates),
        fallback_chain=chain,
        runs=RUNS,
        seed=1,
        policy=policy,
    )


def samples_of(plans: dict[str, PhasePlan], model: Model) -> list[Sample]:
    """Every planned (spec, case, run), run-major as the plugin orders items."""
    out = []
    t = 0.0
    for run in range(1, RUNS + 1):
        for phase in sorted(plans):
            for spec in plans[phase].specs:
                for c, case in enumerate(CASES):
                    passed, kind = model(phase, spec, c, run)
                    out.append(
                        Sample(
                            phase,
                            spec.id,
                            case,
                            run,
                            passed,
                            None,
                            1.0,
                            1.0,
                            1,
                            None if passed else kind,
                            started_at=t,
                            model=spec.model,
                        )  # fmt: skip
                    )
                    t += 1.0
    return out


def run_cycles(
    cfg: LoopSettings, model: Model, cycles: int, phases: Sequence[str] = ("p",)
) -> tuple[list[CycleOutcome], list[dict[str, Any]]]:
    """``cycles`` cycles, each reading the previous ones back through history's JSON."""
    state = LoopState(baselines={}, routes={})
    history: list[dict[str, Any]] = []
    outcomes = []
    for _ in range(cycles):
        plans = plan_cycle(state, cfg, phases)
        out = close_cycle(
            state, cfg, plans, samples_of(plans, model), policy=builtin_policies()[cfg.policy]
        )
        outcomes.append(out)
        history.append(json.loads(json.dumps(history_entry(out))))
        state = LoopState(
            baselines={p.phase: p.baseline_after for p in out.phases},
            routes={p.phase: p.route_after for p in out.phases},
            pending=pending_from_history(history),
            tried=tried_from_history(history),
            last_cycle=out.cycle,
        )
    return outcomes, history


def only(outcome: CycleOutcome) -> PhaseOutcome:
    (p,) = outcome.phases
    return p


def noise(spec: Spec, case: int, run: int, share: int = 7) -> bool:
    """A transport error on about one sample in ``share``, fixed per (spec, case, run)."""
    return random.Random(f"{spec.id}/{case}/{run}").randrange(share) == 0


# -- 10.1: transport errors are set aside when reading capability ----------------------------


def test_a_phase_at_zero_with_transport_noise_is_routed() -> None:
    def model(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
        if noise(spec, case, run, 4):
            return False, "http_5xx"
        return (True, None) if spec.model == "big" else (False, "wrong_answer")

    (c1, c2), _ = run_cycles(settings(), model, 2)
    base = [d for d in only(c1).diagnoses if d.spec_id == INITIAL.id]
    mixed = [d for d in base if d.transport_failures]
    assert mixed, "the test needs cases with transport errors mixed in"
    assert {d.kind for d in base} == {DiagnosisKind.CAPABILITY_LIMIT}
    assert "set aside" in mixed[0].detail
    (route,) = [r for r in only(c1).recommendations if r.action == Action.ROUTE_NEXT_MODEL]
    assert route.value == "big" and len(route.evidence) == len(CASES)
    # and the route is verified by the gates next cycle
    assert only(c2).baseline_after.spec.model == "big"


# -- 10.3: an outage is one diagnosis, recommends nothing, costs nothing ---------------------


def test_an_outage_is_one_diagnosis_with_the_numbers_and_recommends_nothing() -> None:
    cfg = settings(search=(("retries", (0, 1, 2)), ("timeout_s", (30, 60))))

    def down(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
        return (False, "wrong_answer") if noise(spec, case, run, 10) else (False, "connect")

    state = LoopState(baselines={}, routes={})
    plans = plan_cycle(state, cfg, ["p"])
    out = close_cycle(
        state, cfg, plans, samples_of(plans, down), policy=builtin_policies()["paired"]
    )
    p = only(out)
    assert p.recommendations == () and out.pending == ()
    assert len(p.outages) == len(p.plan.specs)  # one per spec, no per-case diagnosis
    assert all(d.case_id is None for d in p.diagnoses)
    d = next(d for d in p.outages if d.spec_id == INITIAL.id)
    assert (d.kind, d.model, d.error_kind, d.samples) == ("outage", "small", "connect", 56)
    assert d.failures > 28 and f"{d.failures} of 56 samples with connect" in d.detail
    assert {(x.verdict, x.cause) for x in p.decisions} == {(HOLD, Cause.OUTAGE)}
    assert out.outages == p.outages
    # the next healthy cycle plans exactly the same candidates: no cool-down from no data
    entry = json.loads(json.dumps(history_entry(out)))
    after = LoopState(
        baselines={"p": p.baseline_after},
        routes={"p": p.route_after},
        pending=pending_from_history([entry]),
        tried=tried_from_history([entry]),
        last_cycle=1,
    )
    assert plan_cycle(after, cfg, ["p"])["p"].candidates == plans["p"].candidates
    assert entry["phases"]["p"]["next"]["cooling_down"] == []


def test_pending_candidates_survive_an_outage_cycle() -> None:
    def healthy(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
        return (True, None) if spec.model == "big" else (False, "wrong_answer")

    cfg = settings()
    (c1,), history = run_cycles(cfg, healthy, 1)
    assert [p.recommendation.action for p in c1.pending] == [Action.ROUTE_NEXT_MODEL]
    state = LoopState(
        baselines={"p": only(c1).baseline_after},
        routes={"p": only(c1).route_after},
        pending=pending_from_history(history),
        tried=tried_from_history(history),
        last_cycle=1,
    )
    plans = plan_cycle(state, cfg, ["p"])
    c2 = close_cycle(
        state, cfg, plans, samples_of(plans, lambda *a: (False, "connect")),
        policy=builtin_policies()["paired"],
    )  # fmt: skip
    assert [p.spec for p in c2.pending] == [p.spec for p in c1.pending]  # kept, not lost
    assert not [a for a in c2.audit if a.event == "verify_failed"]
    assert any(line.startswith("not decided: model=big") for line in only(c2).enforced)


def test_two_diagnoses_leading_to_one_spec_are_one_candidate() -> None:
    # the screened leader retries=1 and the baseline's own raise_retries both name retries=1
    cfg = settings(
        search=(("retries", (0, 1)), ("variant", ("plain", "terse")), ("isolation", ("i0", "i1"))),
        screen_runs=3,
    )

    def model(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
        if spec.retries == 0 and noise(spec, case, run, 3):
            return False, "http_5xx"
        return (True, None) if case < 5 else (False, "wrong_answer")

    (c1,), _ = run_cycles(cfg, model, 1)
    p = only(c1)
    retry = INITIAL.with_knob("retries", 1)
    leading = [r for r in p.recommendations if r.action == Action.CONFIRM_SCREENED]
    assert leading and leading[0].spec_id == retry.id
    targets = [
        next(s for s in p.plan.specs if s.id == r.spec_id).with_knob(r.knob, r.value).id
        for r in p.recommendations
    ]
    assert len(targets) == len(set(targets)) and retry.id in targets
    pending_ids = [x.spec.id for x in c1.pending]
    assert len(pending_ids) == len(set(pending_ids))


# -- 10.4: an errored sample is a failed sample in the gates ---------------------------------


@pytest.mark.parametrize("policy", ["paired", "seed"])
def test_a_baseline_that_always_times_out_is_beaten_by_a_longer_timeout(policy: str) -> None:
    initial = Spec("small", "plain", 10, 0, "i0", False)
    cfg = replace(settings(policy, search=(("timeout_s", (10, 60)),)), initial=initial)

    def slow(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
        return (True, None) if spec.timeout_s >= 30 else (False, "timeout")

    (c1,), _ = run_cycles(cfg, slow, 1)
    p = only(c1)
    assert p.baseline_after.spec.timeout_s == 60
    (d,) = p.decisions
    assert (d.label, d.verdict, d.cause) == ("timeout_s=60", PROMOTE, Cause.PASSED)
    # the distinction is kept in the diagnosis, not in the arithmetic
    base = [x for x in p.diagnoses if x.spec_id == initial.id]
    assert {x.kind for x in base} == {DiagnosisKind.TIMEOUT_BOUND}
    assert p.outages == ()


# -- 10.5: a recommendation rejected twice is retired; the loop reaches a plateau --------------


def stubborn(phase: str, spec: Spec, case: int, run: int) -> tuple[bool, str | None]:
    """Transport noise that retries never cure: raise_retries is recommended every cycle and
    rejected every time it is measured."""
    if noise(INITIAL, case, run, 4):
        return False, "http_5xx"
    return (True, None) if case < 6 else (False, "wrong_answer")


def test_a_recommendation_rejected_twice_is_retired_and_the_loop_plateaus() -> None:
    cfg = settings(chain=("small",))
    outcomes, history = run_cycles(cfg, stubborn, 12)
    retry = INITIAL.with_knob("retries", 1)
    measured = [o.cycle for o in outcomes if any(c.spec == retry for c in only(o).plan.candidates)]
    assert measured == [2, 6]  # cool-down 3 cycles, then retired
    for o in outcomes:
        if o.cycle in measured:
            assert [d.verdict for d in only(o).decisions] == [REJECT]
    assert "retired: rejected twice" in " ".join(only(outcomes[5]).enforced)
    # from cycle 7 on: nothing pending, nothing planned, nothing cooling down
    for o, entry in zip(outcomes[6:], history[6:]):
        nxt = entry["phases"]["p"]["next"]
        assert o.pending == () and nxt["planned"] == [] and nxt["cooling_down"] == []
        assert [x["spec_id"] for x in nxt["retired"]] == [retry.id]
    tried = tried_from_history(history)
    assert retired("p", tried, INITIAL.id) == {retry.id}
    assert retired("p", tried, "another-baseline") == frozenset()  # back when it changes


def test_the_outlook_says_cooling_down_or_untried_as_data() -> None:
    cfg = settings(chain=("small",))
    outcomes, history = run_cycles(cfg, stubborn, 3)
    retry = INITIAL.with_knob("retries", 1)
    nxt = history[1]["phases"]["p"]["next"]  # after the first rejection, in cycle 2
    (cooling,) = nxt["cooling_down"]
    assert (cooling["spec_id"], cooling["status"]) == (retry.id, "cooling_down")
    assert (cooling["since_cycle"], cooling["free_in_cycle"]) == (2, 6)
    outlook = only(outcomes[0]).outlook
    assert outlook is not None
    assert [(c.spec, outlook.status[c.spec.id]) for c in outlook.plan.candidates] == [
        (retry, CandidateStatus.UNTRIED)
    ]
    tried = tried_from_history(history)
    assert candidate_status("p", retry.id, tried, 4, 3, INITIAL.id) == "cooling_down"
    assert candidate_status("p", "never-seen", tried, 4, 3, INITIAL.id) == "untried"


def test_no_data_neither_cools_down_nor_retires() -> None:
    tried = [
        TriedSpec("p", "x", cycle, REJECT, "search", is_try=False, baseline_id="b")
        for cycle in (1, 2, 3)
    ]
    assert candidate_status("p", "x", tried, 4, 3, "b") == CandidateStatus.UNTRIED


# -- 10.7: the winner is the policy's own estimate --------------------------------------------


def test_the_winner_is_the_largest_paired_effect_not_the_largest_median() -> None:
    steady = INITIAL.with_knob("variant", "steady")
    bursty = INITIAL.with_knob("variant", "bursty")
    cfg = settings(search=(("variant", ("plain", "steady", "bursty")),))
    cases = tuple(f"c{i}" for i in range(10))

    def passed(spec: Spec, case: int, run: int) -> bool:
        if spec == steady:
            return case < 6  # 0.6 every run
        if spec == bursty:
            return case < 5 or run > 4  # 0.5 on runs 1-4, 1.0 on runs 5-7: median 0.5
        return case < 3  # the baseline: 0.3

    plans = plan_cycle(LoopState({}, {}), cfg, ["p"])
    samples = [
        Sample(
            "p",
            s.id,
            case,
            run,
            passed(s, c, run),
            None,
            1.0,
            1.0,
            1,
            None if passed(s, c, run) else "wrong_answer",
            started_at=float(run),
        )  # fmt: skip
        for s in plans["p"].specs
        for c, case in enumerate(cases)
        for run in range(1, RUNS + 1)
    ]
    out = close_cycle(LoopState({}, {}), cfg, plans, samples, policy=builtin_policies()["paired"])
    p = only(out)
    by = {d.label: d for d in p.decisions}
    assert by["variant=steady"].verdict == by["variant=bursty"].verdict == PROMOTE
    assert p.stats[steady.id].median > p.stats[bursty.id].median
    assert p.winner is not None and p.winner.spec == bursty
    assert by["variant=bursty"].estimate == pytest.approx((2 + 5 * 3 / 7) / 10)
    assert by["variant=steady"].estimate == pytest.approx(0.3)


def test_pick_winner_ranks_by_estimate_then_by_median_without_one() -> None:
    def stats(median: float) -> SpecStats:
        return SpecStats(
            "p", "x", 7, (), median, median, 0.0, 1.0, 1.0, None, 0, 0, None, 42, 0, (), (), (), ()
        )

    a = Decision("p", "a", "a", PROMOTE, "", (), estimate=0.2)
    b = Decision("p", "b", "b", PROMOTE, "", (), estimate=0.164)
    table = {"a": stats(0.5), "b": stats(0.9)}
    assert pick_winner([b, a], table) is a
    c = Decision("p", "a", "a", PROMOTE, "", ())
    d = Decision("p", "b", "b", PROMOTE, "", ())
    assert pick_winner([c, d], table) is d


# -- 11.4: run order, never completion order ---------------------------------------------------


def test_patterns_flip_rates_and_diagnoses_do_not_depend_on_completion_order() -> None:
    spec = INITIAL
    base = [
        Sample("p", spec.id, case, run, ok, None, 1.0, 1.0, 1, None if ok else "wrong_answer")
        for case, codes in (("a", "PFPPPPP"), ("b", "FFPPPPP"), ("c", "PPPFPPF"))
        for run, ok in enumerate((ch == "P" for ch in codes), start=1)
    ]
    rng = random.Random(3)
    views = []
    for _ in range(5):
        # two workers finishing in an arbitrary interleaving: start times shuffled
        times = list(range(len(base)))
        rng.shuffle(times)
        shuffled = [
            Sample(**{**s.to_dict(), "started_at": float(t), "worker": f"gw{t % 2}"})
            for s, t in zip(base, times)
        ]
        rng.shuffle(shuffled)
        st = evaluate(shuffled)[("p", spec.id)]
        kinds = [(d.case_id, d.kind) for d in diagnose(st, RUNS) if d.case_id]
        views.append(([p.render() for p in st.patterns], flip_rate(st), kinds))
    assert views[0][0] == ["[P,F,P,P,P,P,P]", "[F,F,P,P,P,P,P]", "[P,P,P,F,P,P,F]"]
    assert all(v == views[0] for v in views)


def test_a_worker_that_ran_only_its_cold_start_is_read_as_one() -> None:
    # under -n 2 a worker got two items of the spec, both cold; the other worker recovered:
    # in run order the cold failure sits mid-pattern, the per-worker reading still sees it
    def smp(case: str, run: int, ok: bool, worker: str, t: float) -> Sample:
        return Sample("p", "s", case, run, ok, None, 1.0, 1.0, 1,
                      None if ok else "timeout", started_at=t, worker=worker)  # fmt: skip

    samples = [
        smp("a", 1, False, "gw0", 0), smp("b", 1, False, "gw0", 1), smp("a", 2, True, "gw0", 2),
        smp("b", 2, True, "gw0", 3), smp("a", 3, True, "gw0", 4),
        smp("b", 3, False, "gw1", 0.5),
    ]  # fmt: skip
    kinds = {d.case_id: d.kind for d in diagnose(evaluate(samples)[("p", "s")], 3)}
    assert kinds == {"a": "cold_start", "b": "cold_start", None: "cold_start"}
