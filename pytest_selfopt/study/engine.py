"""The study's engine: the real loop, cycle after cycle, on simulated samples of known truth.

Nothing of the decision layer is re-implemented here. Each simulated cycle calls what a
``pytest --selfopt`` session calls (docs/architecture.md, "the loop"): ``plan_cycle`` (real
generation, cool-downs, pending candidates, screening of the plan), the real policy object
(``builtin_policies()``), racing through the plugin's own ``RaceBoard`` / ``RacedPolicy`` /
``decided_samples`` fed run by run, ``close_cycle`` (gates, screening's leader and
confirmation, diagnosis, recommendations, winner choice, enforcement) and the history
functions that turn a cycle into the next cycle's state (``history_entry``,
``tried_from_history``, ``pending_from_history``). Only the model calls are simulated: each
(spec, case, run) passes with the spec's true pass rate for that prompt, drawn from a numpy
Generator that moves on with every cycle, so every cycle (and every confirmation) sees fresh
runs, while a given seed reproduces the whole study.

Truth: a :class:`World` gives every spec its prompts' true pass rates: the initial spec's
rates, shifted by the sum of the true effects of the knob values in which the spec differs
from the initial one (values without an effect change nothing: a recommendation such as
warm-up is a null candidate here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.evaluate import SampleColumns, evaluate
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.spec import Scalar, Spec
from pytest_selfopt.loop.types import (
    GateSettings,
    LoopSettings,
    LoopState,
    PhasePlan,
    Sample,
    SearchSpace,
    SpecStats,
)
from pytest_selfopt.models.sim import SimBehaviour
from pytest_selfopt.plugin.racing import RULES, RaceBoard, RacedPolicy, decided_samples

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Two phases per cycle, independent copies of the same world: rates per phase and per cycle.
PHASES: tuple[str, ...] = ("a", "b")
INITIAL = Spec("study", "native_api", 60, 1, "i0", False)
#: The searched knob of the one-cycle rows: candidate j sets ``timeout_s`` to 61 + j.
KNOB = "timeout_s"
MODEL = SimBehaviour(name="study", skill={"*": 0.7}, flaky=0.1)
#: The seed's scenario: 6 prompts, 4 -> 5 right, the same failures every run (no flakiness).
SEED_MODEL = SimBehaviour(name="seed", skill={"*": 0.6}, variant_bonus={"atomic": 0.2})
WRONG = "wrong_answer"
_TRUE_GAIN = 1e-9  # a winner is "better" when its true accuracy is above the baseline's by this


def prompt_rates(model: SimBehaviour, prompts: int, variant: str = "base") -> FloatArray:
    """True pass rates of ``prompts`` prompts of difficulty (i + 0.5) / P."""
    return np.array(
        [model.true_pass_rate("study", variant, (i + 0.5) / prompts) for i in range(prompts)]
    )


def shift_rates(p: FloatArray, delta: float, low: float = 0.1, high: float = 0.9) -> FloatArray:
    """Rates whose mean is exactly ``mean(p) + delta`` (when reachable): whole prompts move,
    the weakest up to ``high`` (then 1) or the strongest down to ``low`` (then 0)."""
    q = p.astype(np.float64).copy()
    need = abs(delta) * len(p)
    up = delta > 0
    order = np.argsort(q, kind="stable") if up else np.argsort(-q, kind="stable")
    for limit in (high, 1.0) if up else (low, 0.0):
        room = np.maximum(limit - q[order], 0.0) if up else np.maximum(q[order] - limit, 0.0)
        before = np.concatenate(([0.0], np.cumsum(room)[:-1]))
        give = np.clip(need - before, 0.0, room)
        q[order] += give if up else -give
        need -= float(give.sum())
        if need <= 1e-12:
            break
    return q


@dataclass
class World:
    """Known truth: every spec's true pass rate per prompt.

    ``effects``: (knob, value) -> the true effect (accuracy fraction) of setting that value,
    or the prompts' rates outright (the seed scenario)."""

    base: FloatArray
    effects: Mapping[tuple[str, Scalar], float | FloatArray] = field(default_factory=dict)
    initial: Spec = INITIAL
    _cache: dict[str, FloatArray] = field(default_factory=dict, repr=False)

    def rates(self, spec: Spec) -> FloatArray:
        found = self._cache.get(spec.id)
        if found is not None:
            return found
        start, shift = self.base, 0.0
        first = self.initial.knobs()
        for knob, value in spec.knobs().items():
            if first.get(knob) == value:
                continue
            effect = self.effects.get((knob, value), 0.0)
            if isinstance(effect, np.ndarray):
                start = effect
            else:
                shift += float(effect)
        rates = shift_rates(start, shift) if shift else start
        self._cache[spec.id] = rates
        return rates

    def accuracy(self, spec: Spec) -> float:
        return float(self.rates(spec).mean())


def settings_for(
    candidates: int,
    runs: int,
    policy: str,
    gates: GateSettings,
    search: SearchSpace | None = None,
) -> LoopSettings:
    """A suite with ``candidates`` search candidates per cycle (``timeout_s`` 61, 62, ...)."""
    space = search or SearchSpace(((KNOB, tuple(61 + j for j in range(candidates))),))
    return LoopSettings(
        initial=INITIAL,
        search=space,
        max_candidates=max(candidates, 1),
        gates=gates,
        fallback_chain=(),
        runs=runs,
        seed=0,
        policy=policy,
    )


def _case_ids(prompts: int) -> tuple[str, ...]:
    width = len(str(prompts - 1))
    return tuple(f"p{i:0{width}d}" for i in range(prompts))


def _spec_runs(plan: PhasePlan, runs: int) -> list[tuple[Spec, int]]:
    limits = {c.spec.id: c.runs for c in plan.candidates if c.runs is not None}
    return [(spec, limits.get(spec.id) or runs) for spec in plan.specs]


def _columns(cells: Sequence[tuple[str, str, BoolArray]], prompts: int) -> SampleColumns:
    """The samples of every (phase, spec): ``passed`` is (runs, prompts), run-major time."""
    phases = tuple(sorted({c[0] for c in cells}))
    spec_ids = tuple(sorted({c[1] for c in cells}))
    cases = _case_ids(prompts)
    parts_phase, parts_spec, parts_case, parts_run, parts_passed = [], [], [], [], []
    for phase, spec_id, passed in cells:
        runs = passed.shape[0]
        n = runs * prompts
        parts_phase.append(np.full(n, phases.index(phase), dtype=np.int64))
        parts_spec.append(np.full(n, spec_ids.index(spec_id), dtype=np.int64))
        parts_case.append(np.tile(np.arange(prompts, dtype=np.int64), runs))
        parts_run.append(np.repeat(np.arange(1, runs + 1, dtype=np.int64), prompts))
        parts_passed.append(passed.reshape(-1))
    run = np.concatenate(parts_run)
    case = np.concatenate(parts_case)
    passed_all = np.concatenate(parts_passed)
    total = len(run)
    return SampleColumns(
        phase=np.concatenate(parts_phase),
        phases=phases,
        spec=np.concatenate(parts_spec),
        spec_ids=spec_ids,
        case=case,
        case_ids=cases,
        worker=np.zeros(total, dtype=np.int64),
        workers=("main",),
        error=np.where(passed_all, 0, 1).astype(np.int64),
        error_kinds=(None, WRONG),
        run=run,
        passed=passed_all,
        restraint=np.full(total, np.nan),
        latency_s=np.full(total, 0.1),
        input_tokens=np.zeros(total, dtype=np.int64),
        output_tokens=np.zeros(total, dtype=np.int64),
        cost=np.full(total, np.nan),
        started_at=(run * (prompts + 1) + case).astype(np.float64),  # run-major time order
    )


def sample_stats(
    rates: FloatArray, phase: str, spec_id: str, runs: int, rng: np.random.Generator
) -> SpecStats:
    """One spec measured on ``runs`` fresh runs of every prompt, as the loop evaluates it."""
    passed = rng.random((runs, len(rates))) < rates
    return evaluate(_columns([(phase, spec_id, passed)], len(rates)))[(phase, spec_id)]


def _sample(phase: str, spec_id: str, case_id: str, run: int, ok: bool, t: float) -> Sample:
    return Sample(phase, spec_id, case_id, run, ok, None, 0.1, 0.1, 1, None if ok else WRONG,
                  started_at=t)  # fmt: skip


@dataclass(frozen=True)
class CycleRun:
    """One simulated cycle: the real outcome, and the model calls it made."""

    outcome: CycleOutcome
    calls: int


@dataclass
class Repository:
    """One simulated repository: its committed state and history, cycle after cycle.

    ``race_after`` > 0: racing as ``--selfopt-race-after`` (the policy's racing rule)."""

    world: World
    settings: LoopSettings
    race_after: int = 0
    policies: Mapping[str, GatePolicy] = field(default_factory=builtin_policies)
    state: LoopState = field(default_factory=lambda: LoopState({}, {}))
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def policy(self) -> GatePolicy:
        return self.policies[self.settings.policy]

    def cycle(self, rng: np.random.Generator) -> CycleRun:
        """Plan, sample (fresh draws), close and commit one cycle of every phase."""
        plans = plan_cycle(self.state, self.settings, PHASES)
        draws = {
            (phase, spec.id): rng.random((runs, len(self.world.base))) < self.world.rates(spec)
            for phase, plan in plans.items()
            for spec, runs in _spec_runs(plan, self.settings.runs)
        }
        if self.race_after:
            outcome, calls = self._raced(plans, draws)
        else:
            cells = [(phase, spec_id, passed) for (phase, spec_id), passed in draws.items()]
            samples = _columns(cells, len(self.world.base))
            outcome = close_cycle(self.state, self.settings, plans, samples, policy=self.policy)
            calls = len(samples)
        self._commit(outcome)
        return CycleRun(outcome, calls)

    def _raced(
        self, plans: Mapping[str, PhasePlan], draws: Mapping[tuple[str, str], BoolArray]
    ) -> tuple[CycleOutcome, int]:
        """Items run run-major, as the plugin orders them; the board races after each run."""
        rule = RULES.get(self.settings.policy)
        if rule is None:
            raise ValueError(f"policy {self.settings.policy!r} has no racing rule")
        runs, gates = self.settings.runs, self.settings.gates
        board = RaceBoard(plans.get, runs, self.race_after, rule, gates)
        cases = _case_ids(len(self.world.base))
        samples: list[Sample] = []
        for run in range(1, runs + 1):
            for phase, plan in plans.items():
                for spec, limit in _spec_runs(plan, runs):
                    if run > limit or board.reason_for(phase, spec.id) is not None:
                        continue
                    row = draws[(phase, spec.id)][run - 1]
                    for j, case in enumerate(cases):
                        sample = _sample(phase, spec.id, case, run, bool(row[j]), run * 1e4 + j)
                        samples.append(sample)
                        board.add_sample(sample)
                    # the run's items of this spec, finished: one unit (expected 1), which the
                    # board counts exactly as it counts P items of a real session
                    board.item_finished(phase, spec.id, run, 1)
        decided = decided_samples(samples, board.raced)
        policy = RacedPolicy(self.policy, board.raced)
        return close_cycle(self.state, self.settings, plans, decided, policy=policy), len(samples)

    def _commit(self, outcome: CycleOutcome) -> None:
        """What the committed files would say next: the next cycle's state, from history."""
        self.history.append(history_entry(outcome))
        self.state = LoopState(
            baselines={
                **self.state.baselines,
                **{p.phase: p.baseline_after for p in outcome.phases},
            },
            routes={**self.state.routes, **{p.phase: p.route_after for p in outcome.phases}},
            pending=pending_from_history(self.history),
            tried=tried_from_history(self.history),
            last_cycle=outcome.cycle,
        )

    def true_gain(self, outcome: CycleOutcome, phase: str) -> float | None:
        """The promoted winner's true gain over the baseline it replaced; None: no winner."""
        po = next(p for p in outcome.phases if p.phase == phase)
        if po.winner is None:
            return None
        return self.world.accuracy(po.winner.spec) - self.world.accuracy(po.baseline_before.spec)


def better(gain: float | None) -> bool:
    return gain is not None and gain > _TRUE_GAIN
