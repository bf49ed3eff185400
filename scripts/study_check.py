"""Measure ``--selfopt-check`` after a promotion: false alarms on fresh data, and power.

Issue 11's measurement, on the real code. A noisy suite (the study's flaky model: prompts
pass 90 % or 10 % of runs; ``P`` prompts, 7 runs) whose one candidate is truly 10 points
better goes through the real loop (``pytest_selfopt.study.engine``: real plan, paired
policy, winner choice, ``learn``) until a phase promotes it. What the promotion commits,
``PhaseBaseline.reference`` (the winner's per-case passed/runs of the promoting cycle, so
biased upwards: it won the gates), is then checked by the real ``check_regression``
(``loop/regress.py``) against fresh measurements, exactly as ``--selfopt-check`` does:

* **false alarm**: the promoted spec, unchanged, measured on fresh runs. The first check of
  every promotion is one independent trial (the headline rate); ``--checks`` checks per
  promotion also give the share of promotions that raise an alarm within that many checks.
  The same is measured for phases that promoted nothing, whose committed reference is the
  never-beaten initial spec's first measurement: where the candidate has no effect, and
  where the truly better candidate lost (then the initial's measurement was high).
* **detection**: a spec truly ``d`` points worse than the promoted one (whole prompts break,
  the strongest first, as the study moves prompts), measured on fresh runs, for every ``d`` in
  ``--drops``. The minimum detectable regression is the smallest ``d`` detected in at least
  80 % of the checks.

Each rate comes with its 95 % Wilson interval and its count. ``--markdown FILE`` writes the
tables between ``<!-- check:begin -->`` and ``<!-- check:end -->`` (docs/statistics.md).

    python scripts/study_check.py                      # 300 promotions at 10, 20, 50 prompts
    python scripts/study_check.py --markdown docs/statistics.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pytest_selfopt.loop.regress import DEFAULT_LEVEL, RegressionResult, check_regression
from pytest_selfopt.loop.types import GateSettings, PhaseBaseline
from pytest_selfopt.study.engine import (
    KNOB,
    MODEL,
    PHASES,
    FloatArray,
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
RUNS, GAIN = 7, 0.10
#: The issue's bars (at 20 prompts x 7 runs): at most 5 % false alarms, a 10-point
#: regression detected at least 80 % of the time.
FALSE_ALARM_BOUND, POWER_BOUND, TARGET_PROMPTS, TARGET_DROP = 0.05, 0.80, 20, 10.0


@dataclass
class Row:
    """The check's false alarm and detection at one prompt count."""

    prompts: int
    promotions: int = 0
    cycles: int = 0  # first cycles of fresh repositories run to get them
    first: Rate = field(default_factory=lambda: Rate(0, 0))  # first check of each promotion
    any_within: Rate = field(default_factory=lambda: Rate(0, 0))  # promotions with an alarm
    every: Rate = field(default_factory=lambda: Rate(0, 0))  # all checks (clustered)
    unpromoted: Rate = field(default_factory=lambda: Rate(0, 0))  # reference = initial's
    #: the same, where the candidate has no effect (the initial is rarely beaten)
    unpromoted_null: Rate = field(default_factory=lambda: Rate(0, 0))
    detected: dict[float, Rate] = field(default_factory=dict)
    #: sum over promotions of the committed reference's mean pass rate minus the truth
    inflation: float = 0.0
    example: str = ""  # one false alarm, as the check prints it

    def minimum_detectable(self) -> float | None:
        """The smallest measured drop detected in at least 80 % of the checks."""
        hit = [d for d, r in sorted(self.detected.items()) if r.value >= POWER_BOUND]
        return hit[0] if hit else None


def check(phase: str, committed: PhaseBaseline, rates: FloatArray, rng: np.random.Generator,
          spec_id: str) -> RegressionResult:  # fmt: skip
    """``--selfopt-check`` of one phase: fresh runs of a spec of true ``rates`` against the
    committed champion (its ``reference``: per-case passed/runs), by the real rule."""
    fresh = sample_stats(rates, phase, spec_id, RUNS, rng)
    return check_regression(phase, committed, fresh, GateSettings())


def measure(prompts: int, promotions: int, checks: int, drops: Sequence[float], seed: int) -> Row:
    """Fresh repositories' first cycles until ``promotions`` phases promoted the candidate."""
    world = World(prompt_rates(MODEL, prompts), {(KNOB, 61): GAIN})
    settings = settings_for(1, RUNS, "paired", GateSettings())
    row = Row(prompts, detected={d: Rate(0, 0) for d in drops})
    attempt = 0
    while row.promotions < promotions:
        repo = Repository(world, settings)
        rng = np.random.default_rng([seed, 11, prompts, attempt])
        attempt += 1
        outcome = repo.cycle(rng).outcome
        row.cycles += 1
        for po in outcome.phases:
            committed = po.baseline_after
            if not committed.reference:
                raise RuntimeError(f"phase {po.phase}: the loop committed no reference")
            rates = world.rates(committed.spec)
            if po.winner is None:
                if row.unpromoted.n < promotions:  # the initial's first measurement
                    alarm = check(po.phase, committed, rates, rng, committed.spec.id).regressed
                    row.unpromoted += Rate(int(alarm), 1)
                continue
            if row.promotions >= promotions:
                continue
            row.promotions += 1
            reference = committed.reference.values()
            row.inflation += sum(p / n for p, n in reference) / len(reference) - rates.mean()
            alarms = []
            for _ in range(checks):
                result = check(po.phase, committed, rates, rng, committed.spec.id)
                alarms.append(result.regressed)
                if result.regressed and not row.example:
                    row.example = result.reason
            row.first += Rate(int(alarms[0]), 1)
            row.any_within += Rate(int(any(alarms)), 1)
            row.every += Rate(sum(alarms), len(alarms))
            for d in drops:
                worse = shift_rates(rates, -d / 100.0)
                alarm = check(po.phase, committed, worse, rng, committed.spec.id).regressed
                row.detected[d] += Rate(int(alarm), 1)
    row.unpromoted_null = never_beaten(prompts, promotions, seed)
    return row


def never_beaten(prompts: int, checks: int, seed: int) -> Rate:
    """False alarms of phases whose initial was never beaten (its candidate has no effect):
    the committed reference is the initial's first measurement (``learn.first_measurement``)."""
    world = World(prompt_rates(MODEL, prompts))
    settings = settings_for(1, RUNS, "paired", GateSettings())
    out, attempt = Rate(0, 0), 0
    while out.n < checks:
        repo = Repository(world, settings)
        rng = np.random.default_rng([seed, 12, prompts, attempt])
        attempt += 1
        for po in repo.cycle(rng).outcome.phases:
            if po.winner is None and out.n < checks:
                committed = po.baseline_after
                rates = world.rates(committed.spec)
                alarm = check(po.phase, committed, rates, rng, committed.spec.id).regressed
                out += Rate(int(alarm), 1)
    return out


def _at(rows: Sequence[Row], prompts: int) -> Row | None:
    return next((r for r in rows if r.prompts == prompts), None)


def verdicts(rows: Sequence[Row]) -> list[str]:
    """The issue's two bars, met or not, at 20 prompts x 7 runs (when measured)."""
    row = _at(rows, TARGET_PROMPTS)
    if row is None:
        return []
    out = []
    ok = row.first.value <= FALSE_ALARM_BOUND
    out.append(
        f"False alarm after a promotion at {TARGET_PROMPTS} prompts x {RUNS} runs: "
        f"{row.first.text()} of {row.first.n} checks (bar: at most "
        f"{100 * FALSE_ALARM_BOUND:.0f}%): **{'met' if ok else 'missed'}**."
    )
    power = row.detected.get(TARGET_DROP)
    if power is not None:
        ok = power.value >= POWER_BOUND
        out.append(
            f"A true {TARGET_DROP:g}-point regression at {TARGET_PROMPTS} prompts x {RUNS} runs "
            f"detected: {power.text()} of {power.n} (bar: at least {100 * POWER_BOUND:.0f}%): "
            f"**{'met' if ok else 'missed'}**."
        )
    return out


def render(rows: Sequence[Row], checks: int, seed: int, command: str) -> str:
    drops = sorted({d for r in rows for d in r.detected})
    cycles = sum(r.cycles for r in rows)
    lines = [
        f"Produced by `{command}` (seed {seed}; {RUNS} runs per spec; check level "
        f"{DEFAULT_LEVEL:g}, minimum effect one prompt's worth). At each prompt count, fresh "
        f"repositories ({cycles} first cycles in all, {len(PHASES)} phases each) ran the real "
        f"loop until that many phases had promoted a candidate truly {100 * GAIN:+.0f} points "
        "better; each promotion's committed reference was then checked by the real "
        "`check_regression` against fresh runs. 95% Wilson intervals; n = checks.",
        "",
        "**False alarms** (nothing changed):",
        "",
        "| P | reference minus truth | after a promotion: first check | n | any of "
        f"{checks} checks | n | every check (correlated) | n | never beaten, candidate of no "
        "effect | n | never beaten, the +10 candidate lost | n |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.prompts} | {100 * r.inflation / max(r.promotions, 1):+.1f} points | "
            f"{r.first.text()} | {r.first.n} | {r.any_within.text()} | "
            f"{r.any_within.n} | {r.every.text()} | {r.every.n} | {r.unpromoted_null.text()} | "
            f"{r.unpromoted_null.n} | {r.unpromoted.text()} | {r.unpromoted.n} |"
        )
    lines += [
        "",
        "Reference minus truth: the committed reference's mean pass rate minus the promoted "
        "spec's true accuracy, averaged over promotions (the winner's curse). "
        "Never beaten: phases that promoted nothing, whose committed reference is the initial "
        "spec's first measurement (`learn.first_measurement`), checked once on fresh runs; "
        "a truly better candidate loses mostly when that measurement was lucky (high).",
        "",
        "**Detection** of a spec truly d points worse than the promoted one (one check each; "
        "n = promotions); minimum detectable regression: the smallest d measured that is "
        f"detected in at least {100 * POWER_BOUND:.0f}% of the checks:",
        "",
        "| P | " + " | ".join(f"d = {d:g}" for d in drops) + " | n | minimum detectable |",
        "|--:|" + "--:|" * (len(drops) + 2),
    ]
    for r in rows:
        mdr = r.minimum_detectable()
        cells = [r.detected[d].text() if d in r.detected else "-" for d in drops]
        worst = f"{mdr:g} points" if mdr is not None else f"> {max(drops):g} points"
        lines.append(f"| {r.prompts} | " + " | ".join(cells) + f" | {r.promotions} | {worst} |")
    lines += ["", *(f"- {v}" for v in verdicts(rows))]
    example = next((r.example for r in rows if r.example), "")
    if example:
        lines += ["", f"A false alarm reads: `{example}`"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--promotions", type=int, default=300, help="per prompt count")
    ap.add_argument("--checks", type=int, default=5, help="fresh checks per promotion")
    ap.add_argument(
        "--drops", type=float, nargs="+", default=[5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0]
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if args.promotions < 1 or args.checks < 1 or min(args.prompts) < 2:
        print("study_check: --promotions and --checks must be >= 1, --prompts >= 2",
              file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()
    rows = []
    for prompts in args.prompts:
        rows.append(measure(prompts, args.promotions, args.checks, args.drops, args.seed))
        took = time.perf_counter() - started
        print(f"  P={prompts} done ({took:.0f} s)", file=sys.stderr, flush=True)
    command = (
        f"python scripts/study_check.py --prompts {' '.join(map(str, args.prompts))} "
        f"--promotions {args.promotions} --checks {args.checks} "
        f"--drops {' '.join(f'{d:g}' for d in args.drops)}"
        + (f" --seed {args.seed}" if args.seed else "")
    )
    text = render(rows, args.checks, args.seed, command)
    print(text, end="")
    if args.markdown is not None:
        write_markdown(args.markdown, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
