"""Rendering of the simulation study (``selfopt simulate``) as Markdown (plain-text readable).

Every rate is printed with its 95 % Wilson interval; every table says its repetition counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_selfopt.study.engine import PHASES
from pytest_selfopt.study.rates import Rate
from pytest_selfopt.study.simulate import (
    DEFAULT_POLICY,
    FALSE_PROMOTION_BOUND,
    RACE_AFTER,
    SCREEN_RUNS,
    Cell,
    StudyConfig,
    paired_can_be_default,
    worst_false,
)

_WHAT = {
    "seed": "seed",
    "paired": "paired",
    "race": f"paired + racing after run {RACE_AFTER}",
    "screen": f"paired + screen {SCREEN_RUNS} runs -> confirm (2 cycles)",
}


def _cell(cells: Sequence[Cell], prompts: int, k: int, effect: float, mode: str) -> Cell | None:
    return next(
        (
            c
            for c in cells
            if (c.prompts, c.candidates, c.effect, c.mode) == (prompts, k, effect, mode)
        ),
        None,
    )


def _rows(cells: Sequence[Cell], keep: bool) -> list[tuple[int, int, float]]:
    keys = [(c.prompts, c.candidates, c.effect) for c in cells if (c.effect <= 0) == keep]
    return list(dict.fromkeys(keys))


def _modes(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.mode for c in cells))


def _fewer(calls: float, full: float) -> str:
    saved = 100.0 * (1.0 - calls / full) if full else 0.0
    word = "fewer" if saved >= 0 else "more"
    return f"{calls:,.0f} ({abs(saved):.0f}% {word})"


def render(
    config: StudyConfig, cells: Sequence[Cell], scenario: dict[str, Rate], command: str
) -> str:
    """The results as Markdown."""
    modes = _modes(cells)
    phases = len(PHASES)
    out = [
        f"Produced by `{command}` (seed {config.seed}, {config.runs} runs per spec, "
        f"{config.reps} repositories per row with effect <= 0 and {config.power_reps} per row "
        f"with effect > 0, {phases} phases each; alpha {config.gates.alpha:g}). Every decision "
        "below was made by the real loop (plans, policy, racing, screening and confirmation, "
        "winner choice, history), on simulated samples that are fresh in every cycle. Rates: "
        "95% Wilson interval in brackets.",
        "",
        "Modes: " + "; ".join(f"`{m}` = {_WHAT[m]}" for m in modes) + ".",
        "",
        "Seed scenario (0.667 -> 0.833 on 6 prompts, the same failures every run), promoted: "
        + ", ".join(f"{m} {r.text()} of {r.n}" for m, r in scenario.items())
        + ".",
        "",
        "### False promotion: true effect <= 0",
        "",
        f"Per phase: share of phase-cycles (screen: screening episodes of 2 cycles) whose "
        f"winner is not truly better; n = repositories x {phases} phases. Per cycle: share of "
        f"cycles (episodes) in which any of the {phases} phases promoted falsely.",
        "",
        "| P | K | effect | n | "
        + " | ".join(f"{m} per phase" for m in modes)
        + " | "
        + " | ".join(f"{m} per cycle" for m in modes)
        + " |",
        "|--:|--:|--:|--:|" + "--:|" * (2 * len(modes)),
    ]
    for prompts, k, effect in _rows(cells, keep=True):
        here = [_cell(cells, prompts, k, effect, m) for m in modes]
        n = next(c.false_phase.n for c in here if c is not None)
        out.append(
            f"| {prompts} | {k} | {effect:+g} | {n} | "
            + " | ".join("-" if c is None else c.false_phase.text() for c in here)
            + " | "
            + " | ".join("-" if c is None else c.false_cycle.text() for c in here)
            + " |"
        )
    out += [
        "",
        "### Power: true effect > 0",
        "",
        "Per phase: share of phase-cycles (screen: episodes) that promoted a truly better "
        "candidate. MDE: the paired gate's minimum detectable effect at 80% power (points), "
        "from the baseline's true rates.",
        "",
        "| P | K | effect | MDE | n | " + " | ".join(modes) + " |",
        "|--:|--:|--:|--:|--:|" + "--:|" * len(modes),
    ]
    for prompts, k, effect in _rows(cells, keep=False):
        here = [_cell(cells, prompts, k, effect, m) for m in modes]
        first = next(c for c in here if c is not None)
        out.append(
            f"| {prompts} | {k} | {effect:+g} | {first.mde:.1f} | {first.better_phase.n} | "
            + " | ".join("-" if c is None else c.better_phase.text() for c in here)
            + " |"
        )
    out += _coverage(config, cells)
    out += [
        "",
        "### Model calls per phase and cycle",
        "",
        "paired: every candidate on every run. race: items skipped by racing, at each true "
        "effect. screen: per episode, the screening cycle plus the confirmation cycle (in "
        "brackets: the confirmation cycle's part: the baseline re-measured, the leader on all "
        "runs if one led, and whatever else the real plan held, e.g. a recommended warm-up), "
        "at each true effect, against one paired cycle.",
        "",
    ]
    effects = list(dict.fromkeys(c.effect for c in cells))
    header = ["P", "K", "paired"]
    header += [f"race at {e:+g}" for e in effects if "race" in modes]
    header += [f"screen at {e:+g}" for e in effects if "screen" in modes]
    out += ["| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
    for prompts, k in dict.fromkeys((c.prompts, c.candidates) for c in cells):
        full_cell = _cell(cells, prompts, k, effects[0], "paired")
        if full_cell is None:
            continue
        full = full_cell.calls
        row = [str(prompts), str(k), f"{full:,.0f}"]
        for e in effects if "race" in modes else []:
            raced = _cell(cells, prompts, k, e, "race")
            row.append("-" if raced is None else _fewer(raced.calls, full))
        for e in effects if "screen" in modes else []:
            screened = _cell(cells, prompts, k, e, "screen")
            row.append(
                "-"
                if screened is None
                else f"{_fewer(screened.calls, full)} [{screened.calls_confirm:,.0f}]"
            )
        out.append("| " + " | ".join(row) + " |")
    out += ["", "### Summary", ""]
    for m in modes:
        worst = worst_false(cells, m)
        if worst is None:
            continue
        per_cycle = max((c for c in cells if c.mode == m), key=lambda c: c.false_cycle.value)
        out.append(
            f"- `{m}`: worst false promotion per phase {worst.false_phase.text()} "
            f"(P={worst.prompts}, K={worst.candidates}, effect {worst.effect:+g}, "
            f"n={worst.false_phase.n}); per cycle over {phases} phases "
            f"{per_cycle.false_cycle.text()} (P={per_cycle.prompts}, K={per_cycle.candidates}, "
            f"n={per_cycle.false_cycle.n})."
        )
    verdict = paired_can_be_default(cells, scenario)
    worst = worst_false(cells, DEFAULT_POLICY)
    figure = "-" if worst is None else worst.false_phase.text()
    out += [
        "",
        f"**{DEFAULT_POLICY} can be the default: {'yes' if verdict else 'no'}** (false "
        f"promotion <= {100 * FALSE_PROMOTION_BOUND:.0f}% per phase and cycle at every P and K: "
        f"worst {figure}; seed scenario promoted {scenario[DEFAULT_POLICY].text()}). "
        "tests/test_study.py checks the same bound at fewer repetitions on every test run.",
    ]
    return "\n".join(out) + "\n"


def _coverage(config: StudyConfig, cells: Sequence[Cell]) -> list[str]:
    """How often the interval a paired decision records covers the true effect."""
    mine = [c for c in cells if c.mode == "paired" and c.covered.n]
    if not mine:
        return []
    level = f"{100 * config.gates.interval_level:.0f}%"
    out = [
        "",
        f"### Coverage of the recorded {level} interval",
        "",
        f"Share of paired decisions whose recorded interval (`effect +e [{level} lo, hi]`) "
        "contains the candidate's true effect, pooled over the true effects of the rows above "
        "(every candidate the plan held, recommendations included); and over the winners "
        "(promoted, then chosen for the largest estimate) only.",
        "",
        "| P | K | every candidate | n | winners | n |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    total, total_winner = Rate(0, 0), Rate(0, 0)
    for prompts, k in dict.fromkeys((c.prompts, c.candidates) for c in mine):
        here = [c for c in mine if (c.prompts, c.candidates) == (prompts, k)]
        every = sum((c.covered for c in here), Rate(0, 0))
        winners = sum((c.covered_winner for c in here), Rate(0, 0))
        total, total_winner = total + every, total_winner + winners
        won = winners.text() if winners.n else "-"
        out.append(f"| {prompts} | {k} | {every.text()} | {every.n} | {won} | {winners.n} |")
    won = total_winner.text() if total_winner.n else "-"
    out.append(f"| all | all | {total.text()} | {total.n} | {won} | {total_winner.n} |")
    return out


BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


def write_markdown(path: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers of ``path`` (or append it)."""
    block = f"{begin}\n{table}{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text + "\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
