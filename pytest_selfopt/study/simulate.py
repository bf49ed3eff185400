"""``selfopt simulate``: how often the real loop promotes, and at what cost in model calls.

Known truth makes the gates checkable: every prompt's true pass rate comes from the
simulator (``SimBehaviour.true_pass_rate``), a candidate's true effect is chosen, and the loop
that decides is the real one (:mod:`pytest_selfopt.study.engine`: real plans, policies,
racing, screening and confirmation, winner choice, history), fed simulated samples that are
fresh every cycle.

The suite: ``P`` prompts of evenly spread difficulty answered by a model of skill 0.7 whose
outcome flips with probability 0.1 (prompts it gets right pass 90 % of runs, the others
10 %); two phases per cycle, independent copies of it. The ``K`` candidates of a phase each
change ``timeout_s``; all have the same true effect ``d`` points (whole prompts move, the
weakest up to 90 % or the strongest down to 10 %, the last partly, so the true mean moves by
exactly ``d``). Recommendations the real diagnosis makes on the way (e.g. warm-up after a
chance cold-start pattern) are candidates too, of no effect.

Modes: ``seed`` and ``paired`` (the policies), ``race`` (paired, racing after run 3, as
``--selfopt-race-after 3``), ``screen`` (paired with ``gates.screen_runs: 3``, 3+ candidates:
an episode is the screening cycle and the confirmation cycle, whose calls are counted).

A promotion is *false* when the winner's true accuracy is not above the baseline it replaced.
Rates are per phase (per cycle, or per screening episode) and per cycle over both phases,
each with its 95 % Wilson interval and its repetition count. In ``paired`` rows the study also
counts how often the interval a decision records covers the candidate's true effect (every
candidate, and the chosen winner). ``--jobs N`` measures rows in N processes; every row has
its own seeded draws, so the tables are the same for any N.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pytest_selfopt.loop.outcome import PhaseOutcome
from pytest_selfopt.loop.stats import effect_interval, mde_from_rates, paired_counts
from pytest_selfopt.loop.types import GateSettings, LoopSettings, SearchSpace
from pytest_selfopt.study.engine import (
    KNOB,
    MODEL,
    PHASES,
    SEED_MODEL,
    Repository,
    World,
    better,
    prompt_rates,
    settings_for,
)
from pytest_selfopt.study.rates import Rate

MODES: tuple[str, ...] = ("seed", "paired", "race", "screen")
#: The policy a new suite gets, whose false promotion the test suite bounds.
DEFAULT_POLICY = "paired"
RACE_AFTER = 3
SCREEN_RUNS = 3
#: The bound the default policy must keep, per phase and cycle, at every P and K.
FALSE_PROMOTION_BOUND = 0.05


@dataclass(frozen=True)
class StudyConfig:
    prompts: tuple[int, ...] = (6, 20, 100)
    candidates: tuple[int, ...] = (1, 3, 10)
    effects: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0)  # points
    runs: int = 7
    reps: int = 300  # repositories per row with effect <= 0 (two phases each)
    power_reps: int = 100  # repositories per row with effect > 0
    race_prompts: tuple[int, ...] = (6, 20)  # racing is slower: these prompt counts only
    modes: tuple[str, ...] = MODES
    seed: int = 0
    gates: GateSettings = field(default_factory=GateSettings)


@dataclass(frozen=True)
class Cell:
    """One row of the one-cycle table for one mode."""

    prompts: int
    candidates: int
    effect: float  # points
    mode: str
    reps: int
    false_phase: Rate  # false promotions, per phase and cycle (screen: per episode)
    false_cycle: Rate  # cycles (episodes) in which some phase promoted falsely
    better_phase: Rate  # promotions of a truly better candidate, per phase
    calls: float  # model calls per phase and cycle (screen: screening + confirmation cycle)
    mde: float  # the paired gate's minimum detectable effect, points
    #: paired mode only: the recorded interval (``interval_level``) covers the true effect,
    #: over every decided candidate, and over promoted winners only (chosen as the best)
    covered: Rate = field(default_factory=lambda: Rate(0, 0))
    covered_winner: Rate = field(default_factory=lambda: Rate(0, 0))
    #: screen only: of ``calls``, the confirmation cycle's (the baseline re-measured, the
    #: leader, and anything else the real plan holds that cycle, e.g. a recommendation)
    calls_confirm: float = 0.0


def mode_settings(
    mode: str, candidates: int, runs: int, gates: GateSettings, search: SearchSpace | None = None
) -> tuple[LoopSettings, int]:
    """``(settings, race_after)`` of a study mode."""
    policy = "seed" if mode == "seed" else "paired"
    if mode == "screen":
        gates = replace(gates, screen_runs=SCREEN_RUNS)
    race_after = RACE_AFTER if mode == "race" else 0
    return settings_for(candidates, runs, policy, gates, search), race_after


def applies(mode: str, prompts: int, candidates: int, config: StudyConfig) -> bool:
    if mode == "screen":
        return candidates >= 3  # screening needs 3+ search candidates (loop/screen.py)
    if mode == "race":
        return prompts in config.race_prompts
    return True


def coverage(po: PhaseOutcome, world: World, gates: GateSettings) -> tuple[Rate, Rate]:
    """Does the improvement gate's interval (the one the decision records: ``paired_counts``
    and ``effect_interval`` at ``interval_level``, as the paired policy computes it) cover
    the candidate's true effect? Over every candidate, and over the winner (promoted and
    chosen by ``pick_winner`` for the largest estimate)."""
    base = po.stats[po.plan.baseline.id]
    truth_base = world.accuracy(po.plan.baseline)
    chosen = po.winner.spec.id if po.winner is not None else None
    every = winners = Rate(0, 0)
    for c in po.plan.candidates:
        _, x, n, y, m = paired_counts(base, po.stats[c.spec.id])
        if x.size == 0:
            continue
        _, low, high = effect_interval(x, n, y, m, gates.interval_level)
        truth = world.accuracy(c.spec) - truth_base
        hit = Rate(int(low - 1e-12 <= truth <= high + 1e-12), 1)
        every += hit
        if c.spec.id == chosen:
            winners += hit
    return every, winners


def measure(
    config: StudyConfig, prompts: int, candidates: int, effect: float, mode: str, reps: int
) -> Cell:
    """Run ``reps`` fresh repositories of one row through the real loop."""
    base = prompt_rates(MODEL, prompts)
    world = World(base, {(KNOB, 61 + j): effect / 100.0 for j in range(candidates)})
    settings, race_after = mode_settings(mode, candidates, config.runs, config.gates)
    cycles = 2 if mode == "screen" else 1
    false_phase = false_cycle = better_phase = 0
    calls = calls_confirm = 0
    covered = covered_winner = Rate(0, 0)
    for rep in range(reps):
        repo = Repository(world, settings, race_after)
        # the same draws for every mode of a row (common random numbers): racing sees
        # exactly the samples the plain paired cycle sees, so the two can be compared
        rng = np.random.default_rng(
            [config.seed, prompts, candidates, round(effect * 10) + 1000, rep]
        )
        wrong = {phase: False for phase in PHASES}
        right = {phase: False for phase in PHASES}
        for cycle in range(cycles):
            run = repo.cycle(rng)
            calls += run.calls
            calls_confirm += run.calls if cycle else 0
            if mode == "paired":
                for po in run.outcome.phases:
                    every, winners = coverage(po, world, config.gates)
                    covered, covered_winner = covered + every, covered_winner + winners
            for phase in PHASES:
                gain = repo.true_gain(run.outcome, phase)
                if gain is None:
                    continue
                if better(gain):
                    right[phase] = True
                else:
                    wrong[phase] = True
        false_phase += sum(wrong.values())
        false_cycle += any(wrong.values())
        better_phase += sum(right.values())
    n = reps * len(PHASES)
    mde = mde_from_rates(base.tolist(), config.runs, candidates, config.gates)
    return Cell(
        prompts, candidates, effect, mode, reps,
        Rate(false_phase, n), Rate(false_cycle, reps), Rate(better_phase, n),
        calls / n, 100.0 * mde, covered, covered_winner, calls_confirm / n,
    )  # fmt: skip


def _measure_row(args: tuple[StudyConfig, int, int, float, str, int]) -> Cell:
    return measure(*args)


def cycle_table(config: StudyConfig, progress: bool = False, jobs: int = 1) -> list[Cell]:
    """Every row of every mode; ``jobs`` > 1 measures rows in that many processes (each row
    has its own seeded draws, so the tables do not depend on ``jobs``)."""
    if jobs > 1:
        rows = [
            (config, prompts, k, effect, mode, config.reps if effect <= 0 else config.power_reps)
            for prompts in config.prompts
            for k in config.candidates
            for effect in config.effects
            for mode in config.modes
            if applies(mode, prompts, k, config)
        ]
        # the costliest rows first, so that no process is left with a long tail
        order = sorted(range(len(rows)), key=lambda i: -rows[i][1] * rows[i][2] * rows[i][5])
        out: dict[int, Cell] = {}
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_measure_row, rows[i]): i for i in order}
            for done, future in enumerate(as_completed(futures), 1):
                out[futures[future]] = future.result()
                if progress:
                    print(f"  {done} of {len(rows)} rows", file=sys.stderr, flush=True)
        return [out[i] for i in range(len(rows))]
    cells = []
    started = time.perf_counter()
    for prompts in config.prompts:
        for k in config.candidates:
            for effect in config.effects:
                reps = config.reps if effect <= 0 else config.power_reps
                for mode in config.modes:
                    if applies(mode, prompts, k, config):
                        cells.append(measure(config, prompts, k, effect, mode, reps))
            if progress:
                took = time.perf_counter() - started
                print(f"  P={prompts} K={k} done ({took:.0f} s)", file=sys.stderr, flush=True)
    return cells


def seed_scenario(config: StudyConfig, reps: int = 50) -> dict[str, Rate]:
    """Per policy, how often the seed's own scenario (0.667 -> 0.833 on 6 prompts, the same
    failures every run) is promoted, through the real loop."""
    atomic = prompt_rates(SEED_MODEL, 6, "atomic")
    world = World(prompt_rates(SEED_MODEL, 6), {("variant", "atomic"): atomic})
    search = SearchSpace((("variant", ("atomic",)),))
    out = {}
    for mode in ("seed", "paired"):
        settings, _ = mode_settings(mode, 1, config.runs, config.gates, search)
        hits = 0
        for rep in range(reps):
            repo = Repository(world, settings)
            run = repo.cycle(np.random.default_rng([config.seed, 3, rep]))
            hits += sum(better(repo.true_gain(run.outcome, phase)) for phase in PHASES)
        out[mode] = Rate(hits, reps * len(PHASES))
    return out


def worst_false(cells: Sequence[Cell], mode: str) -> Cell | None:
    """The row with the highest per-phase false-promotion rate of ``mode``."""
    mine = [c for c in cells if c.mode == mode]
    return max(mine, key=lambda c: c.false_phase.value, default=None)


def paired_can_be_default(cells: Sequence[Cell], scenario: dict[str, Rate]) -> bool:
    """False promotion <= 5 % per phase and cycle at every P and K, seed scenario promoted."""
    worst = worst_false(cells, DEFAULT_POLICY)
    false_ok = worst is None or worst.false_phase.value <= FALSE_PROMOTION_BOUND
    return false_ok and scenario[DEFAULT_POLICY].value >= 1.0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="selfopt simulate",
        description="Simulation study of the real loop's decisions (docs/statistics.md).",
    )
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    ap.add_argument("--reps", type=int, help="repositories per row with effect <= 0 (300)")
    ap.add_argument("--power-reps", type=int, help="repositories per row with effect > 0 (100)")
    ap.add_argument("--runs", type=int, default=7, help="runs per spec (default 7)")
    ap.add_argument("--prompts", type=int, nargs="+", help="prompt counts (default 6 20 100)")
    ap.add_argument("--candidates", type=int, nargs="+", help="candidate counts (default 1 3 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="processes (the tables do not change)")
    ap.add_argument("--markdown", type=Path, help="write the tables into this file (markers)")
    return ap.parse_args(list(argv) if argv is not None else None)


def main(argv: list[str] | None = None) -> int:
    """Run the study, print the tables, optionally write them into a Markdown file."""
    from pytest_selfopt.study.markdown import render, write_markdown

    args = parse(argv)
    reps = args.reps if args.reps is not None else (20 if args.quick else 300)
    power_reps = args.power_reps if args.power_reps is not None else (10 if args.quick else 100)
    if reps < 1 or power_reps < 1 or args.runs < 1:
        print("selfopt simulate: --reps, --power-reps and --runs must be >= 1", file=sys.stderr)
        return 2
    config = StudyConfig(runs=args.runs, reps=reps, power_reps=power_reps, seed=args.seed)
    if args.quick:
        config = replace(config, prompts=(6, 20), effects=(0.0, 10.0))
    if args.prompts:
        config = replace(config, prompts=tuple(args.prompts))
    if args.candidates:
        config = replace(config, candidates=tuple(args.candidates))
    if min((*config.prompts, *config.candidates)) < 1:
        print("selfopt simulate: --prompts and --candidates must be >= 1", file=sys.stderr)
        return 2
    words = ["selfopt simulate"] + (["--quick"] if args.quick else [])
    words += [f"--reps {args.reps}"] if args.reps is not None else []
    words += [f"--power-reps {args.power_reps}"] if args.power_reps is not None else []
    words += [f"--runs {args.runs}"] if args.runs != 7 else []
    words += ["--prompts " + " ".join(map(str, args.prompts))] if args.prompts else []
    words += ["--candidates " + " ".join(map(str, args.candidates))] if args.candidates else []
    words += [f"--seed {args.seed}"] if args.seed else []
    started = time.perf_counter()
    cells = cycle_table(config, progress=not args.quick, jobs=max(args.jobs, 1))
    scenario = seed_scenario(config, reps=10 if args.quick else 50)
    table = render(config, cells, scenario, " ".join(words))
    print(table, end="")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
