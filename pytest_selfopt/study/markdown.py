"""Rendering of the simulation study (``selfopt simulate``) as Markdown, and the default rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_selfopt.study.simulate import (
    CAMPAIGN_MIX,
    POLICY_NAMES,
    CampaignRow,
    Row,
    StudyConfig,
    paired_can_be_default,
)


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _saving(calls: float, full: float) -> str:
    return f"{calls:,.0f} ({100.0 * (1.0 - calls / full):.0f}% fewer)" if full else "-"


def render(
    config: StudyConfig,
    rows: Sequence[Row],
    campaign: Sequence[CampaignRow],
    scenario: dict[str, float],
    command: str,
) -> str:
    """The results as Markdown (also readable as plain text)."""
    out = [
        (
            f"Produced by `{command}` (seed {config.seed}, {config.runs} runs per spec, "
            f"{config.reps} simulated cycles per row, {config.campaign_reps} campaigns per "
            f"row, alpha {config.gates.alpha:g})."
        ),
        "",
        f"Seed scenario ({scenario['baseline']:.3f} -> {scenario['candidate']:.3f} on 6 "
        f"prompts, same failures every run): promoted by "
        + ", ".join(f"{n} {_pct(scenario[n])}" for n in POLICY_NAMES)
        + ".",
        "",
        "### One cycle: share of cycles that promote a candidate",
        "",
        (
            "All K candidates have the same true effect; for effect <= 0 every promotion is a "
            "false promotion. MDE: the paired gate's minimum detectable effect (80% power), "
            "points."
        ),
        "",
        "| P | K | effect | MDE | seed | paired | race | screen | calls | race calls | screen calls |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        full = r.calls["paired"]
        out.append(
            f"| {r.prompts} | {r.candidates} | {r.effect:+g} | {100 * r.mde:.1f} | "
            + " | ".join(_pct(r.rate[n]) for n in POLICY_NAMES)
            + f" | {full:,.0f} | {_saving(r.calls['race'], full)} | "
            + (_saving(r.calls["screen"], full) if r.candidates >= 3 else "-")
            + " |"
        )
    worst = {n: max((r.rate[n] for r in rows if r.effect <= 0), default=0.0) for n in POLICY_NAMES}
    out += [
        "",
        "Worst false-promotion rate per cycle (effect <= 0, any P and K): "
        + ", ".join(f"{n} {_pct(worst[n])}" for n in POLICY_NAMES)
        + ".",
    ]
    if campaign:
        mix = ", ".join(f"{e:+g} points w.p. {w:g}" for e, w in CAMPAIGN_MIX)
        out += [
            "",
            f"### Campaign: {config.cycles} cycles, each candidate's true effect {mix}",
            "",
            (
                "below: share of campaigns whose final baseline is truly worse than the start; "
                "change: mean final change of true accuracy (points); calls: per cycle."
            ),
            "",
            "| P | K | "
            + " | ".join(f"{n} below" for n in POLICY_NAMES)
            + " | "
            + " | ".join(f"{n} change" for n in POLICY_NAMES)
            + " | "
            + " | ".join(f"{n} calls" for n in POLICY_NAMES)
            + " |",
            "|--:|--:|" + "--:|" * (3 * len(POLICY_NAMES)),
        ]
        for c in campaign:
            out.append(
                f"| {c.prompts} | {c.candidates} | "
                + " | ".join(_pct(c.below[n]) for n in POLICY_NAMES) + " | "
                + " | ".join(f"{c.change[n]:+.2f}" for n in POLICY_NAMES) + " | "
                + " | ".join(f"{c.calls[n]:,.0f}" for n in POLICY_NAMES) + " |"
            )  # fmt: skip
    verdict = paired_can_be_default(rows, scenario)
    out += [
        "",
        (
            f"**paired can be the default: {'yes' if verdict else 'no'}** (false promotion "
            f"<= 5% per cycle for every P and K: worst {_pct(worst['paired'])}; seed scenario "
            f"promoted: {_pct(scenario['paired'])})."
        ),
    ]
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


def write_markdown(path: Path, table: str) -> None:
    """Replace the text between the study markers of ``path`` (or append it)."""
    block = f"{BEGIN}\n{table}{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (text + "\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
