"""``selfopt simulate``: how often each gate policy promotes, and at what cost in model calls.

Known truth makes the gates checkable: every prompt's true pass rate comes from the
simulator (``SimBehaviour.true_pass_rate``), a candidate's true effect is chosen, and pass
matrices are drawn directly as Bernoulli(rate) with a seeded numpy Generator (no runner, no
network: thousands of cycles per second). Both policies see the *same* draws.

The suite: ``P`` prompts of evenly spread difficulty answered by a model of skill 0.7 whose
outcome flips with probability 0.1 (``flaky``): prompts it gets right pass 90% of runs, the
others 10%. A candidate with true effect ``d`` points moves whole prompts (the weakest up to
90%, or the strongest down to 10%), the last one partly, so that its mean true pass rate is
exactly the baseline's + ``d``.

Policies compared: ``seed`` (median/variance gates), ``paired`` (loop/paired.py), ``race``
(paired, and after ``race_after`` runs a candidate that ``can_still_win`` rules out skips
its remaining items) and ``screen`` (with 3+ candidates: screen all on ``screen_runs`` runs,
confirm only the leader on fresh runs, uncorrected since selection and confirmation never
share data).

The per-cycle decision rules here are vectorised copies of the policies' gates (restraint
and transport errors aside); tests/test_study.py checks them against the real policies.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pytest_selfopt.loop.decide import TOLERANCE
from pytest_selfopt.loop.stats import (
    holm,
    mde_from_rates,
    min_effect,
    optimistic_effect,
    stratified_pvalue,
)
from pytest_selfopt.loop.types import GateSettings
from pytest_selfopt.models.sim import SimBehaviour

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MODEL = SimBehaviour(name="study", skill={"*": 0.7}, flaky=0.1)
#: The seed's scenario: 6 prompts, 4 -> 5 right, the same failures every run (no flakiness).
SEED_MODEL = SimBehaviour(name="seed", skill={"*": 0.6}, variant_bonus={"atomic": 0.2})
POLICY_NAMES: tuple[str, ...] = ("seed", "paired", "race", "screen")
#: Campaign: each candidate's true effect (points) and its probability: mostly slightly harmful.
CAMPAIGN_MIX: tuple[tuple[float, float], ...] = ((-2.0, 0.8), (0.0, 0.1), (5.0, 0.1))


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


def seed_decide(base: BoolArray, cand: BoolArray, gates: GateSettings) -> tuple[BoolArray, ...]:
    """Seed gates: ``(promoted, median, variance)`` per (rep, candidate). ``base`` is
    (reps, R, P), ``cand`` (reps, K, R, P)."""
    b_med = np.median(base.mean(axis=-1), axis=-1)
    acc = cand.mean(axis=-1)
    med, var = np.median(acc, axis=-1), acc.var(axis=-1)
    ok = (acc.shape[-1] >= gates.min_samples) & (var <= gates.max_variance)
    return ok & (med - b_med[:, None] > TOLERANCE), med, var


def pvalues(x: IntArray, y: IntArray, runs_b: int, runs_c: int, gates: GateSettings) -> FloatArray:
    """Raw one-sided p per (rep, candidate), by ``stratified_pvalue`` itself (x: reps x P,
    y: reps x K x P)."""
    reps, k, prompts = y.shape
    n = np.full(prompts, runs_b, dtype=np.int64)
    m = np.full(prompts, runs_c, dtype=np.int64)
    out = np.empty((reps, k))
    for r in range(reps):
        for j in range(k):
            out[r, j] = stratified_pvalue(x[r], n, y[r, j], m, gates.exact_below)[0]
    return out


def holm_rows(p: FloatArray) -> FloatArray:
    return np.array([holm(row.tolist()) for row in p]) if p.size else p


def paired_decide(
    x: IntArray, y: IntArray, p: FloatArray, runs_b: int, runs_c: int, gates: GateSettings
) -> tuple[BoolArray, FloatArray]:
    """Paired improvement gate: ``(promoted, estimate)`` per (rep, candidate)."""
    est = (y / runs_c - x[:, None, :] / runs_b).mean(axis=-1)
    bar = min_effect(gates, x.shape[-1])
    promoted = (holm_rows(p) <= gates.alpha) & (est >= bar - TOLERANCE)
    return promoted, est


def race_out(base: BoolArray, cand: BoolArray, after: int, gates: GateSettings) -> BoolArray:
    """Candidates ``can_still_win`` gives up after ``after`` runs, per (rep, candidate)."""
    if after >= base.shape[1]:
        return np.zeros(cand.shape[:2], dtype=np.bool_)
    x = base[:, :after].sum(axis=1)[:, None, :]
    y = cand[:, :, :after].sum(axis=2)
    n = np.full_like(y, after)
    bound = optimistic_effect(np.broadcast_to(x, y.shape), n, y, n)
    return np.asarray(bound < min_effect(gates, base.shape[-1]) - TOLERANCE)


def draw(rng: np.random.Generator, rates: FloatArray, runs: int) -> BoolArray:
    """Pass matrices (..., runs, P) for rates (..., P)."""
    shape = rates.shape[:-1] + (runs, rates.shape[-1])
    return np.asarray(rng.random(shape) < rates[..., None, :])


@dataclass
class CycleResult:
    promoted: dict[str, BoolArray]  # per policy: (reps,) the cycle promoted something
    winner: dict[str, IntArray]  # per policy: (reps,) candidate index, -1: none
    calls: dict[str, FloatArray]  # per policy: (reps,) model calls used


def one_cycle(
    rng: np.random.Generator,
    p: FloatArray,
    q: FloatArray,
    runs: int,
    gates: GateSettings,
    race_after: int = 3,
    screen_runs: int = 3,
) -> CycleResult:
    """One cycle for every policy on the same draws. ``p``: (reps, P) baseline rates,
    ``q``: (reps, K, P) candidate rates."""
    reps, k, prompts = q.shape
    base, cand = draw(rng, p, runs), draw(rng, q, runs)
    x, y = base.sum(axis=1), cand.sum(axis=2)
    full = float((k + 1) * prompts * runs)
    promoted: dict[str, BoolArray] = {}
    score: dict[str, FloatArray] = {}
    calls: dict[str, FloatArray] = {}
    seed_ok, med, var = seed_decide(base, cand, gates)
    promoted["seed"], score["seed"] = seed_ok, med - 1e-6 * var
    pv = pvalues(x, y, runs, runs, gates)
    promoted["paired"], _ = paired_decide(x, y, pv, runs, runs, gates)
    score["paired"] = score["race"] = med - 1e-6 * var  # pick_winner: median, then variance
    dropped = race_out(base, cand, race_after, gates)
    promoted["race"], _ = paired_decide(x, y, np.where(dropped, 1.0, pv), runs, runs, gates)
    promoted["race"] &= ~dropped
    calls["seed"] = calls["paired"] = np.full(reps, full)
    calls["race"] = full - dropped.sum(axis=1) * float((runs - race_after) * prompts)
    if k >= 3:  # screen on the first runs, confirm the leader alone on fresh runs
        leader = np.argmax(cand[:, :, :screen_runs].sum(axis=(2, 3)), axis=1)
        fresh = draw(rng, q[np.arange(reps), leader][:, None, :], runs)
        yc = fresh.sum(axis=2)
        ok, _ = paired_decide(x, yc, pvalues(x, yc, runs, runs, gates), runs, runs, gates)
        screened = np.zeros((reps, k), dtype=np.bool_)
        screened[np.arange(reps), leader] = ok[:, 0]
        promoted["screen"], score["screen"] = screened, screened.astype(np.float64)
        calls["screen"] = np.full(reps, float(prompts * (2 * runs + k * screen_runs)))
    else:
        promoted["screen"], score["screen"], calls["screen"] = (
            promoted["paired"],
            score["paired"],
            calls["paired"],
        )
    winner = {}
    for name, ok in promoted.items():
        masked = np.where(ok, score[name], -np.inf)
        winner[name] = np.where(ok.any(axis=1), np.argmax(masked, axis=1), -1)
    any_promoted = {n: np.asarray(v.any(axis=1), dtype=np.bool_) for n, v in promoted.items()}
    return CycleResult(any_promoted, winner, calls)


@dataclass
class StudyConfig:
    prompts: tuple[int, ...] = (6, 20, 100)
    candidates: tuple[int, ...] = (1, 3, 10)
    effects: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0, 16.0)  # points
    runs: int = 7
    reps: int = 2000
    campaign_reps: int = 200
    cycles: int = 10
    seed: int = 0
    gates: GateSettings = field(default_factory=GateSettings)


@dataclass
class Row:
    prompts: int
    candidates: int
    effect: float
    rate: dict[str, float]
    calls: dict[str, float]
    mde: float


@dataclass
class CampaignRow:
    prompts: int
    candidates: int
    below: dict[str, float]  # share of campaigns ending below the start
    change: dict[str, float]  # mean final change, points
    calls: dict[str, float]  # mean calls per cycle


def _rng(config: StudyConfig, *parts: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *parts])


def cycle_table(config: StudyConfig) -> list[Row]:
    rows = []
    for prompts in config.prompts:
        p0 = prompt_rates(MODEL, prompts)
        for k in config.candidates:
            mde = mde_from_rates(p0.tolist(), config.runs, k, config.gates)
            for effect in config.effects:
                q0 = shift_rates(p0, effect / 100.0)
                p = np.broadcast_to(p0, (config.reps, prompts))
                q = np.broadcast_to(q0, (config.reps, k, prompts))
                rng = _rng(config, 1, prompts, k, round(effect * 10) + 1000)
                res = one_cycle(rng, p, q, config.runs, config.gates)
                rows.append(
                    Row(
                        prompts, k, effect,
                        {n: float(res.promoted[n].mean()) for n in POLICY_NAMES},
                        {n: float(res.calls[n].mean()) for n in POLICY_NAMES},
                        mde,
                    )
                )  # fmt: skip
    return rows


def campaign_table(config: StudyConfig) -> list[CampaignRow]:
    """10 cycles; each candidate's effect drawn from ``CAMPAIGN_MIX``; a promoted winner's
    true rates become the baseline's."""
    effects = np.array([e for e, _ in CAMPAIGN_MIX]) / 100.0
    weights = np.array([w for _, w in CAMPAIGN_MIX])
    rows = []
    for prompts in config.prompts:
        p0 = prompt_rates(MODEL, prompts)
        for k in config.candidates:
            below, change, calls = {}, {}, {}
            for i, name in enumerate(POLICY_NAMES):
                rng = _rng(config, 2, prompts, k, i)
                p = np.tile(p0, (config.campaign_reps, 1))
                used = 0.0
                for _ in range(config.cycles):
                    d = rng.choice(effects, size=(config.campaign_reps, k), p=weights)
                    q = np.array([[shift_rates(p[r], d[r, j]) for j in range(k)]
                                  for r in range(config.campaign_reps)])  # fmt: skip
                    res = one_cycle(rng, p, q, config.runs, config.gates)
                    w = res.winner[name]
                    won = w >= 0
                    p[won] = q[np.flatnonzero(won), w[won]]
                    used += float(res.calls[name].mean())
                delta = p.mean(axis=1) - p0.mean()
                below[name] = float((delta < -1e-9).mean())
                change[name] = float(delta.mean() * 100.0)
                calls[name] = used / config.cycles
            rows.append(CampaignRow(prompts, k, below, change, calls))
    return rows


def seed_scenario(config: StudyConfig, reps: int = 200) -> dict[str, float]:
    """Promotion rate of the seed's own scenario (0.667 -> 0.833 on 6 prompts)."""
    p = np.broadcast_to(prompt_rates(SEED_MODEL, 6), (reps, 6))
    q = np.broadcast_to(prompt_rates(SEED_MODEL, 6, "atomic"), (reps, 1, 6))
    res = one_cycle(_rng(config, 3), p, q, config.runs, config.gates)
    return {"baseline": float(p[0].mean()), "candidate": float(q[0, 0].mean())} | {
        n: float(res.promoted[n].mean()) for n in POLICY_NAMES
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="selfopt simulate",
        description="Simulation study of the gate policies (docs/statistics.md).",
    )
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    ap.add_argument("--reps", type=int, help="simulated cycles per row (default 2000)")
    ap.add_argument("--campaign-reps", type=int, help="campaigns per row (default 200)")
    ap.add_argument("--runs", type=int, default=7, help="runs per spec (default 7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-campaign", action="store_true", help="skip the 10-cycle campaigns")
    ap.add_argument("--markdown", type=Path, help="write the table into this file (markers)")
    return ap.parse_args(list(argv) if argv is not None else None)


def main(argv: list[str] | None = None) -> int:
    """Run the study, print the table, optionally write it into a Markdown file."""
    from pytest_selfopt.study.markdown import render, write_markdown

    args = parse(argv)
    reps = args.reps if args.reps is not None else (60 if args.quick else 2000)
    campaign_reps = (
        args.campaign_reps if args.campaign_reps is not None else (20 if args.quick else 200)
    )
    if reps < 1 or campaign_reps < 1 or args.runs < 1:
        print("selfopt simulate: --reps, --campaign-reps and --runs must be >= 1", file=sys.stderr)
        return 2
    config = StudyConfig(runs=args.runs, reps=reps, campaign_reps=campaign_reps, seed=args.seed)
    words = ["selfopt simulate"] + (["--quick"] if args.quick else [])
    words += [f"--reps {args.reps}"] if args.reps is not None else []
    words += [f"--campaign-reps {args.campaign_reps}"] if args.campaign_reps is not None else []
    words += [f"--runs {args.runs}"] if args.runs != 7 else []
    words += [f"--seed {args.seed}"] if args.seed else []
    words += ["--no-campaign"] if args.no_campaign else []
    started = time.perf_counter()
    rows = cycle_table(config)
    campaign = [] if args.no_campaign else campaign_table(config)
    scenario = seed_scenario(config)
    table = render(config, rows, campaign, scenario, " ".join(words))
    print(table, end="")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.markdown is not None:
        write_markdown(args.markdown, table)
    return 0


def paired_can_be_default(rows: Sequence[Row], scenario: dict[str, float]) -> bool:
    """The issue's rule: false promotion <= 5% per cycle for every K, seed scenario promoted."""
    false_ok = all(r.rate["paired"] <= 0.05 for r in rows if r.effect <= 0)
    return false_ok and scenario["paired"] >= 1.0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
