"""Screen -> confirm (loop/screen.py): screened candidates run runs 1..k only, the leader is
never promoted in the cycle that chose it and is confirmed next cycle on all runs."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from suites import copy_example, decisions, history
from suites import run as run_session

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.generate import cooling_down
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.screen import CONFIRM_ACTION, SCREEN, screen, screen_plan
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    Candidate,
    GateSettings,
    LoopSettings,
    LoopState,
    PendingCandidate,
    PhasePlan,
    Recommendation,
    Sample,
    SearchSpace,
    TriedSpec,
)
from pytest_selfopt.plugin.codec import (
    Collected,
    Shipment,
    missing_samples,
    plan_from_dict,
    plan_to_dict,
)
from pytest_selfopt.plugin.codec import points as wire_points
from pytest_selfopt.suite.config import load_config
from pytest_selfopt.suite.yamlread import ConfigError

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
SEARCH = SearchSpace(
    (
        ("variant", ("native_api", "atomic")),
        ("timeout_s", (60, 120)),
        ("retries", (1, 2)),
        ("isolation", ("i0", "i1")),
    )
)
CASES = tuple(f"case{i}" for i in range(6))
ITEM = re.compile(r"^\S+\[\S+-(baseline|[a-z_]+=[^-\]]+)-r(\d+)\] SAMPLE")
ATOMIC = BASE.with_knob("variant", "atomic")
HAIKU = BASE.with_knob("model", "claude-haiku")


def POLICY_OF(settings: LoopSettings) -> GatePolicy:  # noqa: N802
    return builtin_policies()[settings.policy]


def settings(screen_runs: int = 3, policy: str = "seed", **kw: Any) -> LoopSettings:
    return LoopSettings(
        initial=BASE,
        search=SEARCH,
        max_candidates=kw.pop("max_candidates", 4),
        gates=GateSettings(screen_runs=screen_runs, **kw),
        fallback_chain=("lfm", "claude-haiku"),
        runs=7,
        seed=1,
        policy=policy,
    )


def solved(spec: Spec) -> int:
    """Cases the spec solves, every run: the variant helps (5 of 6), nothing else does (4)."""
    return 5 if spec.variant == "atomic" else 4


def run(plans: dict[str, PhasePlan], runs: int = 7) -> list[Sample]:
    """One sample per item the plugin would collect (``wire.points``), deterministic."""
    out = []
    for plan in plans.values():
        for p in wire_points(plan, runs):
            for c, case in enumerate(CASES):
                ok = c < solved(p.spec)
                out.append(
                    Sample(plan.phase, p.spec.id, case, p.run, ok, None, 1.0, 1.0, 1,
                           None if ok else "wrong_answer", started_at=float(len(out)))
                )  # fmt: skip
    return out


def advance(state: LoopState, outcome: CycleOutcome, entries: list[dict[str, Any]]) -> LoopState:
    entries.append(json.loads(json.dumps(history_entry(outcome))))
    return LoopState(
        baselines={p.phase: p.baseline_after for p in outcome.phases},
        routes={p.phase: p.route_after for p in outcome.phases},
        pending=pending_from_history(entries),
        tried=tried_from_history(entries),
        last_cycle=outcome.cycle,
    )


# -- planning ---------------------------------------------------------------------------------


def test_off_by_default_and_below_three_search_candidates() -> None:
    plan = plan_cycle(LoopState({}, {}), settings(0), ["atomic"])["atomic"]
    assert [c.origin for c in plan.candidates] == ["search"] * 4
    assert all(c.runs is None for c in plan.candidates)
    two = plan_cycle(LoopState({}, {}), settings(3, max_candidates=2), ["atomic"])["atomic"]
    assert [(c.origin, c.runs) for c in two.candidates] == [("search", None)] * 2
    # screening on as many runs as there are saves nothing: off
    assert screen_plan(plan, 7, 7) is plan


def test_search_candidates_are_screened_pending_ones_are_not() -> None:
    rec = Recommendation("atomic", "route_next_model", "model", "claude-haiku", BASE.id, "why")
    state = LoopState({}, {}, pending=(PendingCandidate("atomic", HAIKU, rec, 1),), last_cycle=1)
    plan = plan_cycle(state, settings(3, max_candidates=4), ["atomic"])["atomic"]
    assert [(c.origin, c.runs) for c in plan.candidates] == [("pending", None)] + [(SCREEN, 3)] * 3


def test_points_and_completeness_expect_only_the_screened_runs() -> None:
    plan = plan_cycle(LoopState({}, {}), settings(3), ["atomic"])["atomic"]
    pts = wire_points(plan, 7)
    by_spec = {s.id: sorted({p.run for p in pts if p.spec.id == s.id}) for s in plan.specs}
    assert by_spec[BASE.id] == list(range(1, 8))
    assert all(by_spec[c.spec.id] == [1, 2, 3] for c in plan.candidates)
    assert len(pts) == 7 + 4 * 3
    shipment = Shipment(True, 7, 1, {"atomic": plan}, None, {}, None)
    collected = Collected(samples=run({"atomic": plan}), finished_items=len(pts) * len(CASES))
    assert collected.problems(len(pts) * len(CASES), shipment) == []
    # the screened runs are still required
    collected.samples = [
        s for s in collected.samples if not (s.spec_id == ATOMIC.id and s.run == 3)
    ]
    (problem,) = missing_samples({"atomic": plan}, collected, 7)
    assert f"spec {ATOMIC.id}" in problem and "run 3" in problem


def test_shipment_round_trip_keeps_the_screened_runs() -> None:
    plan = plan_cycle(LoopState({}, {}), settings(3), ["atomic"])["atomic"]
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
    default = replace(
        plan, phase="*", candidates=tuple(replace(c, phase="*") for c in plan.candidates)
    )
    shipment = Shipment.from_dict(Shipment(True, 7, 1, {}, default, {}, None).to_dict())
    found = shipment.plan_for("new")
    assert found is not None and [(c.phase, c.runs) for c in found.candidates] == [("new", 3)] * 4


# -- deciding ---------------------------------------------------------------------------------


def test_the_leader_is_held_the_others_screened_out_and_nothing_promoted() -> None:
    plans = plan_cycle(LoopState({}, {}), settings(3), ["atomic"])
    out = close_cycle(
        LoopState({}, {}), settings(3), plans, run(plans), policy=POLICY_OF(settings(3))
    )
    (atomic,) = out.phases
    verdicts = {d.label: (d.verdict, d.reason) for d in atomic.decisions}
    assert verdicts["variant=atomic"] == (
        HOLD,
        (
            "HOLD: screened: leads on runs 1..3, confirmed next cycle on fresh runs "
            "(15 passes vs the baseline's 12)"
        ),
    )
    for label in ("timeout_s=120", "retries=2", "isolation=i1"):
        assert verdicts[label][0] == REJECT
        assert verdicts[label][1].startswith("REJECT: screened out: 12 passes on runs 1..3")
    assert not out.promoted and atomic.winner is None
    # the champion is unchanged; only its first measurement is committed (learn.py)
    after, before = atomic.baseline_after, atomic.baseline_before
    assert (after.spec, after.promoted_in_cycle) == (before.spec, before.promoted_in_cycle)
    assert after.reference == atomic.stats[BASE.id].reference()
    assert atomic.stats[ATOMIC.id].runs == 3 and atomic.stats[BASE.id].runs == 7
    assert atomic.enforced[0] == "screened 4 candidates on 3 of 7 runs: 96 items saved"
    (pending,) = out.pending
    assert pending.spec == ATOMIC and pending.recommendation.action == CONFIRM_ACTION
    assert (pending.recommendation.knob, pending.recommendation.value) == ("variant", "atomic")


def test_the_leader_is_confirmed_next_cycle_on_all_runs_and_promoted() -> None:
    entries: list[dict[str, Any]] = []
    state = LoopState({}, {})
    for _ in range(2):
        plans = plan_cycle(state, settings(3), ["atomic"])
        out = close_cycle(state, settings(3), plans, run(plans), policy=POLICY_OF(settings(3)))
        state = advance(state, out, entries)
    (atomic,) = out.phases
    # the screened-out ones cool down; the leader is a pending candidate, not screened
    assert [(c.spec, c.origin, c.runs) for c in atomic.plan.candidates] == [
        (ATOMIC, "pending", None)
    ]
    assert [(d.label, d.verdict) for d in atomic.decisions] == [("variant=atomic", PROMOTE)]
    assert atomic.stats[ATOMIC.id].runs == 7
    assert out.promoted and atomic.baseline_after.spec == ATOMIC
    assert [c["origin"] for c in entries[0]["phases"]["atomic"]["candidates"]] == [SCREEN] * 4


def test_nobody_leads_without_beating_the_baseline() -> None:
    plans = plan_cycle(LoopState({}, {}), settings(3), ["atomic"])
    samples = [s if s.spec_id == BASE.id else replace(s, passed=False) for s in run(plans)]
    out = close_cycle(LoopState({}, {}), settings(3), plans, samples, policy=POLICY_OF(settings(3)))
    assert {d.verdict for d in out.phases[0].decisions} == {REJECT}
    assert all("nobody beat the baseline" in d.reason for d in out.phases[0].decisions)
    assert out.pending == ()


def test_ties_go_to_plan_order_and_only_runs_1_to_k_count() -> None:
    plan = screen_plan(
        PhasePlan("a", BASE, tuple(Candidate("a", BASE.with_knob("retries", r), "search")
                                   for r in (2, 3, 4))),
        7,
        2,
    )  # fmt: skip
    base = [Sample("a", BASE.id, c, r, c == "x", None, 1.0, 1.0, 1, None)
            for c in ("x", "y") for r in range(1, 8)]  # fmt: skip
    cand = [Sample("a", s.id, c, r, True, None, 1.0, 1.0, 1, None)
            for s in plan.specs[1:] for c in ("x", "y") for r in (1, 2)]  # fmt: skip
    # a late run never counts for the screening (a sample past run k would be ignored)
    cand.append(Sample("a", plan.specs[3].id, "y", 5, True, None, 1.0, 1.0, 1, None))
    from pytest_selfopt.loop.evaluate import evaluate
    from pytest_selfopt.loop.policies import builtin_policies

    stats = {sid: s for (_, sid), s in evaluate([*base, *cand]).items()}
    labels = {c.spec.id: c.spec.label(BASE) for c in plan.candidates}
    pairs = [(c, stats[c.spec.id]) for c in plan.candidates]
    decided = builtin_policies()["seed"].decide("a", stats[BASE.id], pairs, GateSettings(), labels)
    result = screen(plan, stats, decided, 7)
    assert [d.verdict for d in result.decisions] == [HOLD, REJECT, REJECT]
    assert result.leader is not None and result.leader.spec == plan.specs[1]
    assert result.line == "screened 3 candidates on 2 of 7 runs: 30 items saved"


def test_a_screened_hold_does_not_cool_down_a_screened_reject_does() -> None:
    tried = [
        TriedSpec("a", "lead", 1, HOLD, SCREEN),
        TriedSpec("a", "out", 1, REJECT, SCREEN),
        TriedSpec("a", "held", 1, HOLD, "search"),
    ]
    assert cooling_down("a", tried, 2, 3) == {"out", "held"}


def test_screened_candidates_do_not_widen_the_pending_ones_holm_family() -> None:
    rec = Recommendation("atomic", "route_next_model", "model", "claude-haiku", BASE.id, "why")
    state = LoopState({}, {}, pending=(PendingCandidate("atomic", HAIKU, rec, 1),), last_cycle=1)
    s = settings(3, policy="paired", max_candidates=4)
    plans = plan_cycle(state, s, ["atomic"])
    out = close_cycle(state, s, plans, run(plans), policy=POLICY_OF(s))
    first = out.phases[0].decisions[0]
    assert first.label == "model=claude-haiku"
    assert "holm over 1:" in next(g.detail for g in first.gates if g.name == "improvement")


def test_config_key_is_validated(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1] / "benchmarks" / "selfopt.yaml"
    doc = yaml.safe_load(source.read_text())
    path = tmp_path / "selfopt.yaml"
    doc["gates"]["screen_runs"] = 3
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).loop_settings().gates.screen_runs == 3
    doc["gates"]["screen_runs"] = -1
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="gates.screen_runs"):
        load_config(path)


# -- a real session -----------------------------------------------------------------------------


def test_example_screens_then_confirms_variant_in_a_real_session(
    pytester: pytest.Pytester,
) -> None:
    gates = {"min_samples": 3, "max_variance": 0.0025, "min_restraint": 0.8, "screen_runs": 3}
    copy_example(pytester, gates=gates, max_candidates=4)
    args = ("--selfopt", "-p", "no:cacheprovider", "-v", "benchmarks")
    first = run_session(pytester, *args)
    assert first.ret == 0, first.stdout.str()
    out = first.stdout.str()
    # items: baselines 7 runs, the 4 search candidates of each phase only r1..r3
    runs_of: dict[str, set[int]] = {}  # label -> runs collected, both phases
    for line in first.outlines:
        if found := ITEM.search(line):
            runs_of.setdefault(found[1], set()).add(int(found[2]))
    assert runs_of["baseline"] == set(range(1, 8))
    for label in ("variant=atomic", "timeout_s=120", "retries=2", "isolation=i1"):
        assert runs_of[label] == {1, 2, 3}, label
    assert "screened 4 candidates on 3 of 7 runs: 96 items saved" in out
    one = history(pytester)[0]
    assert one["phases"]["atomic"]["winner"] is None
    assert all(p["winner"] is None for p in one["phases"].values())
    assert decisions(one)[("atomic", "variant=atomic")] == HOLD
    assert one["pending"][0]["recommendation"]["action"] == CONFIRM_ACTION
    assert one["pending"][0]["spec_id"] == ATOMIC.id
    enforced = one["phases"]["atomic"]["enforced"]
    assert "screened 4 candidates on 3 of 7 runs: 96 items saved" in enforced

    second = run_session(pytester, *args)
    assert second.ret == 0, second.stdout.str()
    two = history(pytester)[1]
    atomic = two["phases"]["atomic"]
    first_candidate = atomic["candidates"][0]
    assert (first_candidate["label"], first_candidate["origin"]) == ("variant=atomic", "pending")
    assert decisions(two)[("atomic", "variant=atomic")] == PROMOTE
    assert atomic["candidates"][0]["metrics"]["runs"] == 7
    assert atomic["winner"] == ATOMIC.id
    baseline = (pytester.path / "baselines" / "baseline.yaml").read_text()
    assert "promoted_in_cycle: 2" in baseline.split("  atomic:")[1].split("  extended:")[0]
