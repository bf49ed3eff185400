"""Racing inside a session (``racing.py``): the rules, the board and its file, decisions on
raced-out candidates, and in-process sessions with and without xdist on the mini suite."""

from __future__ import annotations

import itertools
import json
import random
import statistics
from dataclasses import replace
from typing import Any

import pytest
from builders import case_name, sample, samples, stats
from suites import CYCLE, XDIST, decisions, history, mini_suite, recommendations, reset, run

from pytest_selfopt.loop import stats as paired
from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.policies.seed import SeedPolicy
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import REJECT, Candidate, GateSettings, PhasePlan, Sample, SpecStats
from pytest_selfopt.plugin import racing

GATES = GateSettings()
BASE = Spec(model="m", variant="plain", timeout_s=60, retries=1, isolation="i0", warmup=False)
SAME = replace(BASE, retries=2)  # a knob that changes nothing
BETTER = replace(BASE, variant="better")
PLAN = PhasePlan("p", BASE, (Candidate("p", SAME, "search"), Candidate("p", BETTER, "search")))


# -- rules -----------------------------------------------------------------------------------


def test_seed_rule_fires_only_when_the_remaining_runs_cannot_lift_the_median() -> None:
    row = [True, True, False]  # 0.667 every run
    base4 = stats(samples(BASE, [row] * 4))
    same4 = stats(samples(SAME, [row] * 4))
    # 7 runs, 4 seen: 3 remaining runs at 1.0 leave the median at the best seen (0.667) and 3 at
    # 0.0 leave the baseline's at its worst seen (0.667): equal is no improvement.
    why = racing.seed_cannot_win(base4, same4, 3, GATES)
    assert why is not None and "at most 0.667" in why and "at least 0.667" in why
    # 3 seen, 4 remaining: the remaining runs alone decide the median; nothing is known yet.
    assert (
        racing.seed_cannot_win(
            stats(samples(BASE, [row] * 3)), stats(samples(SAME, [row] * 3)), 4, GATES
        )
        is None
    )
    better4 = stats(samples(BETTER, [[True, True, True]] * 4))
    assert racing.seed_cannot_win(base4, better4, 3, GATES) is None


def test_seed_rule_is_exact_over_every_completion() -> None:
    """Brute force on small cases: it fires iff no completion of the remaining runs makes the
    candidate's median strictly higher than the baseline's (the seed's improvement gate)."""
    rng = random.Random(5)
    levels = (0.0, 0.5, 1.0)
    for _ in range(150):
        runs, seen = rng.choice([(5, 3), (5, 4), (4, 3), (7, 5)])
        rows_b = [[rng.random() < 0.6 for _ in range(2)] for _ in range(seen)]
        rows_c = [[rng.random() < 0.5 for _ in range(2)] for _ in range(seen)]
        b, c = stats(samples(BASE, rows_b)), stats(samples(SAME, rows_c))
        remaining = runs - seen
        some_win = any(
            statistics.median([*c.run_accuracies, *tail_c])
            - statistics.median([*b.run_accuracies, *tail_b])
            > 1e-9
            for tail_c in itertools.product(levels, repeat=remaining)
            for tail_b in itertools.product(levels, repeat=remaining)
        )
        assert (racing.seed_cannot_win(b, c, remaining, GATES) is None) == some_win, (
            rows_b,
            rows_c,
        )


def test_an_outage_is_never_raced_out_but_a_timeout_is_a_failed_answer() -> None:
    """Racing decides only what the gates would: a candidate whose server did not answer (an
    outage, ``connect``) is undecidable; one that timed out everywhere failed, as the
    application would see it (docs/loop.md), so it cannot win."""
    base = stats(samples(BASE, [[True, True]] * 4))

    def failing(error: str) -> SpecStats:
        rows = [
            sample(SAME, case_name(j), r, False, error=error) for r in range(1, 5) for j in range(2)
        ]
        return stats(rows)

    down = failing("connect")
    assert racing.seed_cannot_win(base, down, 1, GATES) is None
    assert racing.paired_cannot_win(base, down, 1, GATES) is None
    assert racing.seed_cannot_win(base, failing("timeout"), 1, GATES) is not None


def test_paired_rule_is_can_still_win_and_looks_once() -> None:
    prompts = 40
    base = stats(samples(BASE, [[True] * prompts] * 3))
    worse = stats(samples(SAME, [[j % 4 == 0 for j in range(prompts)]] * 3))
    assert not paired.can_still_win(base, worse, 4, GATES)
    why = racing.paired_cannot_win(base, worse, 4, GATES)
    assert why is not None and "< minimum effect" in why
    assert (
        racing.paired_cannot_win(base, stats(samples(SAME, [[True] * prompts] * 3)), 4, GATES)
        is None
    )
    assert racing.RULES["paired"].every_run is False and racing.RULES["seed"].every_run is True


# -- the board and its file ------------------------------------------------------------------


def feed(board: racing.RaceBoard, items: list[Sample], per_run: int) -> list[racing.RacedOut]:
    new = []
    for s in items:
        board.add_sample(s)
        new += board.item_finished(s.phase, s.spec_id, s.run, per_run)
    return new


def seed_board(runs: int = 5, after: int = 3) -> racing.RaceBoard:
    return racing.RaceBoard({"p": PLAN}.get, runs, after, racing.RULES["seed"], GATES)


def one_run(spec: Spec, row: list[bool], run: int) -> list[Sample]:
    return samples(spec, [row], first_run=run)


def run_of(run: int) -> list[Sample]:
    """One run of the plan: baseline and SAME at 0.5, BETTER at 1.0."""
    return [
        *one_run(BASE, [True, False], run),
        *one_run(SAME, [True, False], run),
        *one_run(BETTER, [True, True], run),
    ]


class FakeChannel:
    """An execnet channel's two ends in one object: the board sends, the reader's callback
    receives (as execnet calls it in its receiver thread)."""

    def __init__(self) -> None:
        self.callback: Any = None
        self.sent: list[Any] = []

    def setcallback(self, callback: Any, endmarker: Any = None) -> None:
        self.callback, self.endmarker = callback, endmarker

    def send(self, item: Any) -> None:
        self.sent.append(item)
        self.callback(item)

    def close(self) -> None:
        self.callback(self.endmarker)


def test_board_races_out_after_a_complete_run_and_never_earlier() -> None:
    board = seed_board()
    channel = FakeChannel()
    reader = racing.ChannelRaceReader(channel)
    board.add_channel(channel)
    assert feed(board, run_of(1) + run_of(2), per_run=2) == []
    third = run_of(3)
    assert feed(board, third[:-1], per_run=2) == []  # run 3 not complete: one item missing
    assert reader.reason_for("p", SAME.id) is None and channel.sent == []
    (out,) = feed(board, third[-1:], per_run=2)
    assert (out.spec_id, out.after_run) == (SAME.id, 3)
    expected = "raced out after run 3: cannot beat the baseline"
    assert board.reason_for("p", SAME.id) == expected == reader.reason_for("p", SAME.id)
    assert board.reason_for("p", BETTER.id) is None and reader.reason_for("p", BETTER.id) is None
    assert out.decision_reason.startswith(f"{REJECT}: {expected} (")
    board.close()  # the end marker keeps what the reader knew
    assert reader.reason_for("p", SAME.id) == expected


def test_paired_board_looks_only_after_run_k() -> None:
    prompts = 40
    plan = PhasePlan("p", BASE, (Candidate("p", SAME, "search"),))
    board = racing.RaceBoard({"p": plan}.get, 7, 3, racing.RULES["paired"], GATES)
    base_row, worse_row = [True] * prompts, [j % 4 == 0 for j in range(prompts)]
    # Runs 1..3 look equal: the one look (after run 3) keeps the candidate ...
    for n in (1, 2, 3):
        assert feed(board, one_run(BASE, base_row, n) + one_run(SAME, base_row, n), prompts) == []
    # ... and a clear deficit later is not looked at again (the study's single look).
    for n in (4, 5, 6):
        assert feed(board, one_run(BASE, base_row, n) + one_run(SAME, worse_row, n), prompts) == []
    assert board.raced == {}


def test_a_late_channel_gets_the_whole_board_and_messages_are_idempotent() -> None:
    board = seed_board()
    board.raced[("p", "a")] = racing.RacedOut("p", "a", 3, "x")
    channel = FakeChannel()
    reader = racing.ChannelRaceReader(channel)
    board.add_channel(channel)  # a worker configured after a race: gets the board at once
    assert reader.reason_for("p", "a") == "raced out after run 3: cannot beat the baseline"
    board.raced[("p", "bb")] = racing.RacedOut("p", "bb", 4, "y")
    channel.send(board.message())
    channel.send(board.message())
    assert reader.reason_for("p", "bb") == "raced out after run 4: cannot beat the baseline"
    assert reader.reason_for("p", "a") is not None


def test_board_for_says_why_racing_is_off() -> None:
    from pytest_selfopt.plugin.codec import Shipment

    ship = Shipment(True, 7, 1, {"p": PLAN}, None, {}, None)
    settings: Any = type("S", (), {"policy": "seed", "gates": GATES})()
    assert racing.board_for(ship, settings, 0) == (None, None)
    assert isinstance(racing.board_for(ship, settings, 3)[0], racing.RaceBoard)
    board, note = racing.board_for(ship, settings, 7)
    assert board is None and note is not None and "leaves none of 7 runs" in note
    settings.policy = "custom"
    board, note = racing.board_for(ship, settings, 3)
    assert board is None and note == "racing off: policy 'custom' has no racing rule"


# -- decisions -------------------------------------------------------------------------------


def test_a_raced_out_item_never_counts_as_a_failure() -> None:
    """Runs 1..4 all 0.667; run 5 arrived for 1 of 3 cases before the workers saw the board
    (the other two were skipped). Decided on runs 1..4: no skipped cell reads as a failure."""
    row = [True, True, False]
    taken = samples(SAME, [row] * 4) + [sample(SAME, "c000", 5, False, started_at=5000.0)]
    raced = {("p", SAME.id): racing.RacedOut("p", SAME.id, 4, "x")}
    kept = racing.decided_samples(taken + samples(BASE, [row] * 5), raced)
    assert len(kept) == 12 + 15
    st = evaluate(kept)[("p", SAME.id)]
    assert st.run_accuracies == pytest.approx([2 / 3] * 4)
    assert paired.case_counts(st) == {"c000": (4, 4), "c001": (4, 4), "c002": (0, 4)}
    # Without the cut the partial run 5 would read 0/3: skipped cells counted as failures.
    assert evaluate(taken)[("p", SAME.id)].run_accuracies[-1] == 0.0


def test_raced_policy_rejects_with_the_race_reason_and_is_restored() -> None:
    row = [True, False]
    base, same, better = (stats(samples(s, [row] * 3)) for s in (BASE, SAME, BETTER))
    out = racing.RacedOut("p", SAME.id, 3, "numbers")
    raced = {("p", SAME.id): out}
    labels = {SAME.id: "retries=2", BETTER.id: "variant=better"}
    cands = [(PLAN.candidates[0], same), (PLAN.candidates[1], better)]
    plain = SeedPolicy().decide("p", base, cands, GATES, labels)
    inner = SeedPolicy()
    policy = racing.RacedPolicy(inner, raced)
    assert policy.name == "seed" and policy.inner is inner  # wrapped, nothing replaced
    got = policy.decide("p", base, cands, GATES, labels)
    assert got[0].verdict == REJECT and got[0].reason == out.decision_reason
    assert got[0].gates == plain[0].gates  # the policy's own numbers are kept
    assert got[1] == plain[1]


# -- real sessions ---------------------------------------------------------------------------
# In-process sessions on the mini suite with 7 runs (tests/suites.py): 2 phases x 3 cases x
# 3 specs x 7 runs = 126 items. Racing from run 3: the three candidates equal to their baseline
# (atomic timeout_s=120, extended variant=atomic and timeout_s=120) cannot win after run 4,
# so their 3 cases x 3 remaining runs are skipped: 27 items.

RACE = ("--selfopt-race-after", "3")
TOTAL = 126
RACED = 27


def session(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = run(pytester, *CYCLE, "--selfopt-json=out.json", *args)
    assert result.ret == 0, result.stdout.str()
    doc: dict[str, Any] = json.loads((pytester.path / "out.json").read_text())
    return result, doc


def raced_reasons(entry: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (phase, c["label"]): c["decision"]["reason"]
        for phase, rec in entry["phases"].items()
        for c in rec["candidates"]
        if "raced out" in c["decision"]["reason"]
    }


def failed_line(doc: dict[str, Any]) -> str:
    """The summary's count of failed samples: skipped items are neither samples nor failures."""
    failed = sum(1 for s in doc["samples"] if not s["passed"])
    return f"{failed} of {len(doc['samples'])} samples failed their checks*"


def test_racing_skips_items_and_keeps_the_decisions_of_two_cycles(
    pytester: pytest.Pytester,
) -> None:
    mini_suite(pytester, runs=7)
    for items in (TOTAL, None):  # cycle 2 has other candidates: the pending route among them
        result, doc = session(pytester)
        outcomes = result.parseoutcomes()
        assert "skipped" not in outcomes
        assert outcomes["samples"] == len(doc["samples"])  # samples, not passed/failed tests
        assert items in (None, outcomes["samples"])
    off = [(decisions(e), recommendations(e)) for e in history(pytester)]
    reset(pytester)
    result, doc = session(pytester, *RACE)
    outcomes = result.parseoutcomes()
    assert outcomes["skipped"] == RACED
    assert outcomes["samples"] + outcomes["skipped"] == TOTAL
    assert len(doc["samples"]) == TOTAL - RACED
    result.stdout.fnmatch_lines([failed_line(doc)])
    result.stdout.fnmatch_lines(
        [
            f"racing: {RACED} of {TOTAL} items skipped (model calls saved)",
            "  atomic: raced out *after run 4*",
        ]
    )
    first = history(pytester)[0]
    reasons = raced_reasons(first)
    assert set(reasons) == {
        ("atomic", "timeout_s=120"),
        ("extended", "variant=atomic"),
        ("extended", "timeout_s=120"),
    }
    assert all(
        r.startswith("REJECT: raced out after run 4: cannot beat the baseline (")
        for r in reasons.values()
    )
    session(pytester, *RACE)  # second cycle: the cold-start HOLD must survive racing
    on = [(decisions(e), recommendations(e)) for e in history(pytester)]
    assert on == off
    assert on[1][0][("extended", "model=claude-haiku")] == "HOLD"


def test_racing_under_xdist_decides_like_serial(pytester: pytest.Pytester) -> None:
    mini_suite(pytester, runs=7)
    session(pytester, *RACE)
    serial = history(pytester)[0]
    reset(pytester)
    result, doc = session(pytester, *RACE, *XDIST)
    outcomes = result.parseoutcomes()
    skipped = outcomes.get("skipped", 0)
    # Items already sent to a worker may run before it reads the board: fewer skips than
    # serially is fine, and they become samples; the sum always adds up.
    assert 0 < skipped <= RACED
    assert len(doc["samples"]) == outcomes["samples"] == TOTAL - skipped
    result.stdout.fnmatch_lines([failed_line(doc)])
    parallel = history(pytester)[0]
    assert decisions(parallel) == decisions(serial)
    assert raced_reasons(parallel) == raced_reasons(serial)

    # Raced-out candidates are decided on their runs up to the race: same numbers either way.
    def metrics(entry: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
        return {
            (phase, c["label"]): (
                c["metrics"]["runs"],
                c["metrics"]["samples"],
                c["metrics"]["median"],
            )
            for phase, rec in entry["phases"].items()
            for c in rec["candidates"]
        }

    assert metrics(parallel) == metrics(serial)


def test_paired_policy_on_three_prompts_races_nothing(pytester: pytest.Pytester) -> None:
    """The paired rule is cautious: on 3 prompts after 3 runs no bound is tight enough."""
    mini_suite(pytester, runs=7, policy="paired")
    result, doc = session(pytester, *RACE)
    assert result.parseoutcomes().get("skipped", 0) == 0 and len(doc["samples"]) == TOTAL
    result.stdout.fnmatch_lines([f"racing: 0 of {TOTAL} items skipped (model calls saved)"])


@pytest.mark.parametrize("value", ["-1", "three"])
def test_race_after_must_be_a_whole_number_at_least_zero(
    pytester: pytest.Pytester, value: str
) -> None:
    mini_suite(pytester)
    result = run(pytester, *CYCLE, "--selfopt-race-after", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"expected a whole number >= 0, got {value!r}" in result.stderr.str()
