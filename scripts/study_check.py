"""Measure ``--selfopt-check`` after a promotion: false alarms on fresh data, and power.

Issue 11's measurement, on the real code: a noisy suite (the study's flaky model, 20 prompts,
7 runs) whose one candidate is truly 10 points better goes through the real loop
(``pytest_selfopt.study.engine``) until it is promoted; what a promotion commits (the new
baseline, its metrics, its per-case record in history) is then checked by the real
``loop/regress.py`` against fresh measurements:

* **false alarm**: the promoted spec, unchanged, measured on fresh runs. The first check of
  every promotion is one independent trial (the headline rate); ``--checks`` checks per
  promotion also give the share of promotions that raise an alarm within that many checks.
* **power**: a spec truly ``d`` points worse than the promoted one (whole prompts move, as in
  the study), measured on fresh runs, for d in ``--drops`` (10 points is the issue's bar).

Each rate comes with its 95 % Wilson interval and its count. ``--markdown FILE`` writes the
table between ``<!-- check:begin -->`` and ``<!-- check:end -->`` (docs/statistics.md).

    python scripts/study_check.py                      # 250 promotions, about a minute
    python scripts/study_check.py --markdown docs/statistics.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_selfopt.loop.outcome import PhaseOutcome
from pytest_selfopt.loop.regress import RegressionResult, check_regression
from pytest_selfopt.loop.types import GateSettings, SpecStats
from pytest_selfopt.study.engine import (
    KNOB,
    MODEL,
    PHASES,
    Repository,
    World,
    prompt_rates,
    sample_stats,
    settings_for,
    shift_rates,
)
from pytest_selfopt.study.markdown import write_markdown
from pytest_selfopt.study.rates import Rate

BEGIN, END = "<!-- check:begin -->", "<!-- check:end -->"
PROMPTS, RUNS, GAIN = 20, 7, 0.10


@dataclass
class Measured:
    promotions: int = 0
    cycles: int = 0  # cycles run to get them
    first: Rate = field(default_factory=lambda: Rate(0, 0))  # first check of each promotion
    any_within: Rate = field(default_factory=lambda: Rate(0, 0))  # promotions with an alarm
    every: Rate = field(default_factory=lambda: Rate(0, 0))  # all checks (clustered)
    power: dict[float, Rate] = field(default_factory=dict)
    example: str = ""  # one reason line, as the check prints it


def committed_record(repo: Repository, phase: str) -> Mapping[str, Any]:
    """The phase's record of the promoting cycle, as history.json holds it."""
    record: Mapping[str, Any] = repo.history[-1]["phases"][phase]
    return record


def check(po: PhaseOutcome, record: Mapping[str, Any], measured: SpecStats) -> RegressionResult:
    """``--selfopt-check`` of one phase, from what the promotion committed (the same lookup
    as the plugin's check: the committed baseline and its spec's recorded patterns)."""
    committed = po.baseline_after
    patterns = record.get("patterns", {}).get(committed.spec.id) or None
    return check_regression(po.phase, committed, measured, patterns, GateSettings())


def run(promotions: int, checks: int, drops: Sequence[float], seed: int) -> Measured:
    base = prompt_rates(MODEL, PROMPTS)
    world = World(base, {(KNOB, 61): GAIN})
    settings = settings_for(1, RUNS, "paired", GateSettings())
    out = Measured(power={d: Rate(0, 0) for d in drops})
    attempt = 0
    while out.promotions < promotions:
        repo = Repository(world, settings)
        rng = np.random.default_rng([seed, 11, attempt])
        attempt += 1
        outcome = repo.cycle(rng).outcome
        out.cycles += 1
        for po in outcome.phases:
            if po.winner is None or out.promotions >= promotions:
                continue
            out.promotions += 1
            record = committed_record(repo, po.phase)
            rates = world.rates(po.winner.spec)
            alarms = []
            for _ in range(checks):
                fresh = sample_stats(rates, po.phase, po.winner.spec.id, RUNS, rng)
                result = check(po, record, fresh)
                alarms.append(result.regressed)
                out.example = out.example or (result.reason if result.regressed else "")
            out.first += Rate(int(alarms[0]), 1)
            out.any_within += Rate(int(any(alarms)), 1)
            out.every += Rate(sum(alarms), len(alarms))
            for d in drops:
                worse = shift_rates(rates, -d / 100.0)
                fresh = sample_stats(worse, po.phase, po.winner.spec.id, RUNS, rng)
                out.power[d] += Rate(int(check(po, record, fresh).regressed), 1)
    return out


def render(m: Measured, checks: int, seed: int, command: str) -> str:
    lines = [
        f"Produced by `{command}` (seed {seed}): {m.promotions} promotions of a candidate truly "
        f"{100 * GAIN:+.0f} points better, on {PROMPTS} prompts x {RUNS} runs of the study's "
        f"flaky model ({m.cycles} repositories' first cycles, {len(PHASES)} phases each), each "
        "checked by the real `loop/regress.py` against fresh runs. 95% Wilson intervals.",
        "",
        "| measured | rate | n |",
        "|---|--:|--:|",
        f"| false alarm: unchanged promoted spec, first check | {m.first.text()} | {m.first.n} |",
        f"| false alarm: any of {checks} checks of the same promotion | {m.any_within.text()} | "
        f"{m.any_within.n} |",
        f"| false alarm: every check (correlated within a promotion) | {m.every.text()} | "
        f"{m.every.n} |",
    ]
    for d, rate in m.power.items():
        lines.append(f"| detected: spec truly {d:g} points worse | {rate.text()} | {rate.n} |")
    if m.example:
        lines += ["", f"A false alarm reads: `{m.example}`"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--promotions", type=int, default=250)
    ap.add_argument("--checks", type=int, default=5, help="fresh checks per promotion")
    ap.add_argument("--drops", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if args.promotions < 1 or args.checks < 1:
        print("study_check: --promotions and --checks must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    measured = run(args.promotions, args.checks, args.drops, args.seed)
    drops = " ".join(f"{d:g}" for d in args.drops)
    command = (
        f"python scripts/study_check.py --promotions {args.promotions} --checks {args.checks} "
        f"--drops {drops}" + (f" --seed {args.seed}" if args.seed else "")
    )
    text = render(measured, args.checks, args.seed, command)
    print(text, end="")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
