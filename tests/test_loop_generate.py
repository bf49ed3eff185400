"""loop.generate: one-factor-at-a-time candidates, pending first, cap, cool-down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.loop.generate import generate
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    Candidate,
    GateSettings,
    LoopSettings,
    PendingCandidate,
    Recommendation,
    SearchSpace,
    TriedSpec,
)

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
SEARCH = SearchSpace(
    (
        ("variant", ("native_api", "atomic")),
        ("timeout_s", (60, 120)),
        ("retries", (1, 2)),
        ("isolation", ("i0", "i1")),
    )
)


def loop_settings(
    max_candidates: int = 4, cooldown: int = 3, search: SearchSpace = SEARCH
) -> LoopSettings:
    return LoopSettings(
        initial=BASE,
        search=search,
        max_candidates=max_candidates,
        gates=GateSettings(cooldown_cycles=cooldown),
        fallback_chain=("lfm", "claude-haiku"),
        runs=7,
        seed=0,
    )


def pending(
    spec: Spec, phase: str = "extended", action: str = "route_next_model"
) -> PendingCandidate:
    rec = Recommendation(phase, action, "model", spec.model, BASE.id, "because")
    return PendingCandidate(phase, spec, rec, 1)


def labels(candidates: Sequence[Candidate]) -> list[str]:
    return [c.spec.label(BASE) for c in candidates]


def test_search_order_is_knob_order_then_value_order() -> None:
    plan = generate("atomic", BASE, loop_settings(max_candidates=10), (), (), 1)
    assert plan.baseline == BASE and plan.phase == "atomic"
    assert labels(plan.candidates) == [
        "variant=atomic",
        "timeout_s=120",
        "retries=2",
        "isolation=i1",
    ]
    assert {c.origin for c in plan.candidates} == {"search"}
    assert plan.specs[0] == BASE


def test_cap() -> None:
    plan = generate("atomic", BASE, loop_settings(max_candidates=2), (), (), 1)
    assert labels(plan.candidates) == ["variant=atomic", "timeout_s=120"]
    assert generate("atomic", BASE, loop_settings(max_candidates=0), (), (), 1).candidates == ()


def test_pending_first_in_given_order_only_for_its_phase() -> None:
    haiku = BASE.with_knob("model", "claude-haiku")
    warm = BASE.with_knob("warmup", True)
    other = pending(BASE.with_knob("model", "gpt"), phase="atomic")
    plan = generate(
        "extended", BASE, loop_settings(), (pending(warm), other, pending(haiku)), (), 1
    )
    assert labels(plan.candidates) == [
        "warmup=true",
        "model=claude-haiku",
        "variant=atomic",
        "timeout_s=120",
    ]
    assert [c.origin for c in plan.candidates] == ["pending", "pending", "search", "search"]
    assert plan.candidates[0].recommendation is not None
    assert plan.candidates[2].recommendation is None


def test_pending_that_equals_baseline_or_a_search_spec_is_not_duplicated() -> None:
    atomic = BASE.with_knob("variant", "atomic")
    plan = generate(
        "extended", BASE, loop_settings(), (pending(BASE), pending(atomic), pending(atomic)), (), 1
    )
    ids = [c.spec.id for c in plan.candidates]
    assert BASE.id not in ids and len(ids) == len(set(ids)) == 4
    assert plan.candidates[0].origin == "pending" and plan.candidates[0].spec == atomic


def tried(spec: Spec, cycle: int, verdict: str = REJECT, phase: str = "atomic") -> TriedSpec:
    return TriedSpec(phase, spec.id, cycle, verdict, "search")


def test_cooldown_window() -> None:
    atomic = BASE.with_knob("variant", "atomic")
    history = (tried(atomic, 1),)
    s = loop_settings(max_candidates=10, cooldown=3)
    in_window = {c.spec.id for c in generate("atomic", BASE, s, (), history, 4).candidates}
    after = {c.spec.id for c in generate("atomic", BASE, s, (), history, 5).candidates}
    assert atomic.id not in in_window  # cycles 1..3 are the window of cycle 4
    assert atomic.id in after  # cycle 5 looks at 2..4 only


def test_cooldown_only_for_reject_and_hold_in_the_same_phase() -> None:
    atomic, retries = BASE.with_knob("variant", "atomic"), BASE.with_knob("retries", 2)
    timeout = BASE.with_knob("timeout_s", 120)
    history = (
        tried(atomic, 1, PROMOTE),
        tried(retries, 1, HOLD),
        tried(timeout, 1, REJECT, phase="extended"),
    )
    ids = {
        c.spec.id for c in generate("atomic", BASE, loop_settings(10), (), history, 2).candidates
    }
    assert atomic.id in ids and timeout.id in ids and retries.id not in ids


def test_cooldown_applies_to_pending_and_frees_room_under_the_cap() -> None:
    haiku = BASE.with_knob("model", "claude-haiku")
    plan = generate(
        "extended",
        BASE,
        loop_settings(max_candidates=2),
        (pending(haiku),),
        (tried(haiku, 1, HOLD, "extended"),),
        2,
    )
    assert labels(plan.candidates) == ["variant=atomic", "timeout_s=120"]


def test_example_cycle_two_extended_plan_is_only_the_pending_route() -> None:
    haiku = BASE.with_knob("model", "claude-haiku")
    search = generate("extended", BASE, loop_settings(), (), (), 1).candidates
    history = tuple(tried(c.spec, 1, REJECT, "extended") for c in search)
    plan = generate("extended", BASE, loop_settings(), (pending(haiku),), history, 2)
    assert [(c.spec, c.origin) for c in plan.candidates] == [(haiku, "pending")]


def test_user_declared_knob() -> None:
    search = SearchSpace((("temperature", (0.0, 0.7)),))
    plan = generate("p", BASE, loop_settings(search=search), (), (), 1)
    assert labels(plan.candidates) == ["temperature=0", "temperature=0.7"]


knob_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["lfm", "claude-haiku", "gpt"]),
    "variant": st.sampled_from(["native_api", "atomic", "cot"]),
    "timeout_s": st.sampled_from([30, 60, 60.0, 120]),
    "retries": st.integers(0, 3),
    "isolation": st.sampled_from(["i0", "i1"]),
    "warmup": st.booleans(),
}


@st.composite
def search_spaces(draw: st.DrawFn) -> SearchSpace:
    knobs = draw(st.lists(st.sampled_from(sorted(knob_values)), unique=True, max_size=6))
    return SearchSpace(tuple((k, tuple(draw(st.lists(knob_values[k], max_size=4)))) for k in knobs))


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    return Spec.from_dict({k: draw(v) for k, v in knob_values.items()})


@settings(max_examples=200, deadline=None)
@given(
    baseline=specs(),
    search=search_spaces(),
    pending_specs=st.lists(specs(), max_size=4),
    tried_specs=st.lists(
        st.tuples(specs(), st.integers(0, 5), st.sampled_from([PROMOTE, HOLD, REJECT])), max_size=4
    ),
    cap=st.integers(0, 6),
    cycle=st.integers(1, 6),
)
def test_generate_is_deterministic_and_never_returns_baseline_or_duplicates(
    baseline: Spec,
    search: SearchSpace,
    pending_specs: list[Spec],
    tried_specs: list[tuple[Spec, int, str]],
    cap: int,
    cycle: int,
) -> None:
    s = loop_settings(max_candidates=cap, search=search)
    pend = tuple(pending(p) for p in pending_specs)
    history = tuple(TriedSpec("extended", sp.id, c, v, "search") for sp, c, v in tried_specs)
    plan = generate("extended", baseline, s, pend, history, cycle)
    again = generate("extended", baseline, s, pend, history, cycle)
    assert plan == again
    ids = [c.spec.id for c in plan.candidates]
    assert baseline.id not in ids
    assert len(ids) == len(set(ids)) <= cap
    blocked = {
        t.spec_id for t in history if t.verdict != PROMOTE and cycle - 3 <= t.cycle <= cycle - 1
    }
    assert not blocked & set(ids)
    for c in plan.candidates:
        if c.origin == "search":
            assert len(c.spec.diff(baseline)) == 1  # one factor at a time
    origins = [c.origin for c in plan.candidates]
    assert origins == sorted(origins, key=lambda o: o != "pending")  # pending first
