"""Racing inside a session: give up a candidate that cannot win and skip its remaining items.

Items run run-major (``plugin.py``), so once every item of run ``j`` of a phase has finished,
the controller holds complete runs ``1..j`` of every spec. From run ``race_after`` on, the
``RaceBoard`` asks the policy's ``RaceRule`` whether each candidate can still be promoted;
a candidate that cannot is *raced out*: its remaining items are skipped, never run.

* **Rules** (one per gate policy; a policy without one does not race):

  - ``seed`` -- certain: even if every remaining run of the candidate scored 1.0 and every
    remaining run of the baseline 0.0, the candidate's median could not exceed the
    baseline's. No completion of the data promotes it, so it is checked after every run
    from ``race_after`` on (looking again costs nothing). With 7 runs it can first fire
    after run 4: before that the remaining runs decide the median.
  - ``paired`` -- ``loop.paired.can_still_win``: the optimistic end of a one-sided 99% bound
    of the effect is below the minimum effect. Statistical, so it looks once, after run
    ``race_after``, exactly as the simulation study measured it (docs/statistics.md).
  - a candidate (or baseline) whose samples so far all ended in a transport error is never
    raced out: nothing can be decided from transport failures alone (``loop/decide.py``).

* **Decisions.** A raced-out candidate is REJECTed with the reason "raced out after run j:
  cannot beat the baseline (...)", decided on its runs ``1..j`` only (``decided_samples``).
  Under xdist, items already sent to a worker may run before it sees the board; they are
  kept as samples (``--selfopt-json``) but left out of the decision, so the verdict, its
  reason and the recorded stats do not depend on scheduling: serial and ``-n 2`` agree.
* **Skipped items are not samples.** They leave no sample, so no test counts them as a
  failure; the completeness check expects them (``wire.missing_samples``).
* **Transport.** Under xdist the board sends its whole state over an execnet channel of
  each worker's gateway, made when the node is configured (``workerinput``), whenever a
  candidate is raced out; a ``ChannelRaceReader`` on the worker keeps the last state. Nothing
  travels through a path on the controller's disk, so workers may run on other machines
  (``--tx ssh=...``). Without xdist the board itself answers ``reason_for``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from pytest_selfopt.loop.policies.base import undecidable
from pytest_selfopt.loop.types import (
    REJECT,
    Candidate,
    Cause,
    Decision,
    GateSettings,
    LoopSettings,
    PhasePlan,
    Sample,
    SpecStats,
)

if TYPE_CHECKING:  # numpy-backed: imported where used, so plain pytest runs stay light
    from pytest_selfopt.loop.policies.base import GatePolicy
    from pytest_selfopt.plugin.codec import Shipment

#: Item user property: ``[phase, spec id, run, items of that (phase, spec, run)]``.
#: ``workerinput`` key of the board file's path.
CHANNEL_KEY = "selfopt_race_channel"
#: As ``loop/decide.py``: float noise never makes an equal median look better.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class RacedOut:
    """One candidate given up: after which run, and why (numbers for the decision reason)."""

    phase: str
    spec_id: str
    after_run: int
    detail: str

    @property
    def skip_reason(self) -> str:
        return f"raced out after run {self.after_run}: cannot beat the baseline"

    @property
    def decision_reason(self) -> str:
        return f"{REJECT}: {self.skip_reason} ({self.detail})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "spec_id": self.spec_id,
            "after_run": self.after_run,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RacedOut:
        return cls(
            str(data["phase"]), str(data["spec_id"]), int(data["after_run"]), str(data["detail"])
        )


# -- rules -----------------------------------------------------------------------------------

RuleCheck = Callable[[SpecStats, SpecStats, int, GateSettings], str | None]


@dataclass(frozen=True)
class RaceRule:
    """``check(baseline, candidate, remaining runs, gates)`` -> why it cannot win, or None.
    ``every_run``: look after every run from ``race_after`` on (certain rules), else once."""

    check: RuleCheck
    every_run: bool


def _undecidable(stats: SpecStats) -> bool:
    """The policies' own rule (no sample, or an outage): racing never decides what they
    would not; an errored sample is otherwise a failed one, for racing as for the gates."""
    return undecidable(stats, "") is not None


def seed_cannot_win(
    baseline: SpecStats, candidate: SpecStats, remaining: int, gates: GateSettings
) -> str | None:
    """Seed's improvement gate (median strictly above, 1e-9 tolerance) fails whatever the
    remaining runs bring: best case for the candidate, worst case for the baseline."""
    if _undecidable(baseline) or _undecidable(candidate):
        return None
    best = statistics.median([*candidate.run_accuracies, *[1.0] * remaining])
    worst = statistics.median([*baseline.run_accuracies, *[0.0] * remaining])
    if best - worst > TOLERANCE:
        return None
    return (
        f"its median can reach at most {best:.3f} even if its {remaining} remaining run(s) all "
        f"pass; the baseline's is at least {worst:.3f}"
    )


def paired_cannot_win(
    baseline: SpecStats, candidate: SpecStats, remaining: int, gates: GateSettings
) -> str | None:
    """``can_still_win`` is False: the optimistic (99%) effect is below the minimum effect."""
    from pytest_selfopt.loop import stats as paired

    if _undecidable(baseline) or _undecidable(candidate):
        return None
    if paired.can_still_win(baseline, candidate, remaining, gates):
        return None
    _, x, n, y, m = paired.paired_counts(baseline, candidate)
    est = float(paired.optimistic_effect(x, n, y, m, 0.0))
    bound = float(paired.optimistic_effect(x, n, y, m))
    bar = paired.min_effect(gates, int(x.size))
    return f"effect {est:+.3f}, optimistic 99% bound {bound:+.3f} < minimum effect {bar:+.3f}"


RULES: dict[str, RaceRule] = {
    "seed": RaceRule(seed_cannot_win, every_run=True),
    "paired": RaceRule(paired_cannot_win, every_run=False),
}


# -- the board (controller) and the reader (workers) -----------------------------------------


class RaceView(Protocol):
    """What an item asks before it runs: why its spec was raced out, or None."""

    def reason_for(self, phase: str, spec_id: str) -> str | None: ...


class RaceBoard:
    """Controller side: counts finished items per (phase, spec, run), keeps the samples, and
    after each complete run asks the rule about every candidate still in the race."""

    def __init__(
        self,
        plan_for: Callable[[str], PhasePlan | None],
        runs: int,
        after: int,
        rule: RaceRule,
        gates: GateSettings,
    ) -> None:
        self.plan_for, self.runs, self.after, self.rule, self.gates = (
            plan_for,
            runs,
            after,
            rule,
            gates,
        )
        self.channels: list[Sender] = []
        self.raced: dict[tuple[str, str], RacedOut] = {}
        self._samples: dict[str, list[Sample]] = defaultdict(list)
        self._expected: dict[tuple[str, str, int], int] = {}
        self._finished: dict[tuple[str, str, int], int] = defaultdict(int)
        self._next_run: dict[str, int] = defaultdict(lambda: 1)  # first run not yet complete

    def add_channel(self, channel: Sender) -> None:
        """Publish decisions on ``channel`` too (an execnet channel to one xdist worker)."""
        self.channels.append(channel)
        if self.raced:
            channel.send(self.message())

    def message(self) -> dict[str, Any]:
        """The whole board, so that a message is idempotent and order never matters."""
        return {"raced_out": [r.to_dict() for r in self.raced.values()]}

    def close(self) -> None:
        for channel in self.channels:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - a worker gone already needs nothing more
                pass
        self.channels.clear()

    def add_sample(self, sample: Sample) -> None:
        self._samples[sample.phase].append(sample)

    def item_finished(self, phase: str, spec_id: str, run: int, expected: int) -> list[RacedOut]:
        """An item's teardown arrived; returns the candidates newly raced out."""
        self._expected[(phase, spec_id, run)] = expected
        self._finished[(phase, spec_id, run)] += 1
        plan = self.plan_for(phase)
        if plan is None:
            return []
        new: list[RacedOut] = []
        while self._next_run[phase] < self.runs and self._complete(plan, self._next_run[phase]):
            run = self._next_run[phase]
            self._next_run[phase] = run + 1
            if run == self.after or (run > self.after and self.rule.every_run):
                new += self._race(plan, run)
        if new:
            for channel in self.channels:
                channel.send(self.message())
        return new

    def reason_for(self, phase: str, spec_id: str) -> str | None:
        out = self.raced.get((phase, spec_id))
        return out.skip_reason if out else None

    def summary_lines(self, skipped: Iterable[tuple[str, str, str, int]], total: int) -> list[str]:
        """``racing: 126 of 420 items skipped (model calls saved)``, then per phase who was
        raced out and when (``skipped``: the (phase, spec, case, run) of every skipped item)."""
        count = sum(1 for p in skipped if (p[0], p[1]) in self.raced)
        lines = [f"racing: {count} of {total} items skipped (model calls saved)"]
        by_phase: dict[str, list[str]] = defaultdict(list)
        for r in self.raced.values():
            by_phase[r.phase].append(f"{self._label(r)} after run {r.after_run}")
        lines += [
            f"  {phase}: raced out {', '.join(who)}" for phase, who in sorted(by_phase.items())
        ]
        return lines

    def _label(self, raced: RacedOut) -> str:
        plan = self.plan_for(raced.phase)
        spec = next((s for s in plan.specs if s.id == raced.spec_id), None) if plan else None
        return spec.label(plan.baseline) if spec is not None and plan is not None else raced.spec_id

    def _in_race(self, plan: PhasePlan) -> list[str]:
        return [s.id for s in plan.specs if (plan.phase, s.id) not in self.raced]

    def _complete(self, plan: PhasePlan, run: int) -> bool:
        screened = {c.spec.id for c in plan.candidates if c.runs is not None and run > c.runs}
        for spec_id in self._in_race(plan):
            if spec_id in screened:  # a screened spec has no items past its screening runs
                continue
            key = (plan.phase, spec_id, run)
            if key not in self._expected or self._finished[key] < self._expected[key]:
                return False
        return True

    def _race(self, plan: PhasePlan, run: int) -> list[RacedOut]:
        from pytest_selfopt.loop.evaluate import evaluate

        stats = evaluate([s for s in self._samples[plan.phase] if s.run <= run])
        baseline = stats.get((plan.phase, plan.baseline.id))
        if baseline is None:
            return []
        new = []
        for candidate in plan.candidates:
            key = (plan.phase, candidate.spec.id)
            if key in self.raced or key not in stats:
                continue
            why = self.rule.check(baseline, stats[key], self.runs - run, self.gates)
            if why is not None:
                self.raced[key] = RacedOut(plan.phase, candidate.spec.id, run, why)
                new.append(self.raced[key])
        return new


class Sender(Protocol):
    """The part of an execnet channel the board uses."""

    def send(self, item: Any) -> None: ...
    def close(self) -> None: ...


class ChannelRaceReader:
    """Worker side: the board as last sent over xdist's channel (execnet calls ``receive``
    in its own thread; swapping the dict is atomic). Until a message arrives nothing is
    raced out: at worst an item runs and becomes a sample, which is harmless."""

    def __init__(self, channel: Any) -> None:
        self._out: dict[tuple[str, str], RacedOut] = {}
        channel.setcallback(self.receive, endmarker=None)

    def receive(self, message: Any) -> None:
        if not isinstance(message, dict):
            return  # the end marker: the controller closed the channel
        raced = (RacedOut.from_dict(r) for r in message.get("raced_out", []))
        self._out = {(r.phase, r.spec_id): r for r in raced}

    def reason_for(self, phase: str, spec_id: str) -> str | None:
        out = self._out.get((phase, spec_id))
        return out.skip_reason if out else None


# -- deciding with racing ---------------------------------------------------------------------


def decided_samples(
    samples: Sequence[Sample], raced: Mapping[tuple[str, str], RacedOut]
) -> list[Sample]:
    """The samples decisions are made on: a raced-out spec keeps its runs up to the race only,
    so late arrivals (xdist dispatch) never change its verdict or stats."""
    return [
        s for s in samples if (r := raced.get((s.phase, s.spec_id))) is None or s.run <= r.after_run
    ]


class RacedPolicy:
    """Wraps a policy: raced-out candidates are REJECTed with the race's reason (the wrapped
    policy's gates on their runs are kept); every other decision is the policy's own."""

    def __init__(self, inner: GatePolicy, raced: Mapping[tuple[str, str], RacedOut]) -> None:
        self.inner, self.raced, self.name = inner, raced, inner.name

    def decide(
        self,
        phase: str,
        baseline: SpecStats,
        candidates: Sequence[tuple[Candidate, SpecStats]],
        settings: GateSettings,
        labels: Mapping[str, str],
    ) -> tuple[Decision, ...]:
        decisions = self.inner.decide(phase, baseline, candidates, settings, labels)
        return tuple(
            replace(d, verdict=REJECT, cause=Cause.RACED, reason=r.decision_reason)
            if (r := self.raced.get((phase, d.spec_id))) is not None
            else d
            for d in decisions
        )


def board_for(
    shipment: Shipment | None, settings: LoopSettings, after: int
) -> tuple[RaceBoard | None, str | None]:
    """``(board, note)``: a board when racing is asked for (``after`` > 0) and the policy has
    a rule; else None, with a note saying why racing is off when it was asked for."""
    if not after or shipment is None:
        return None, None
    rule = RULES.get(settings.policy)
    if rule is None:
        return None, f"racing off: policy {settings.policy!r} has no racing rule"
    if after >= shipment.runs:
        return None, f"racing off: --selfopt-race-after {after} leaves none of {shipment.runs} runs"
    return RaceBoard(shipment.plan_for, shipment.runs, after, rule, settings.gates), None
