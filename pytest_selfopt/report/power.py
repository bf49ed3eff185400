"""The summary's power lines: the smallest gain each phase could have detected this cycle.

Said only where it means something: under the ``paired`` policy (the minimum detectable
effect is that test's notion; the ``seed`` policy's median rule has none), and only for a
phase that had candidates (with none there was nothing to detect, and no "x 1 candidate").
"""

from __future__ import annotations

from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.stats import minimum_detectable_effect
from pytest_selfopt.loop.types import GateSettings

#: The policy whose gate the minimum detectable effect describes (docs/statistics.md).
PAIRED = "paired"
_TOLERANCE = 1e-9


def power_lines(outcome: CycleOutcome, gates: GateSettings) -> list[str]:
    """``power PHASE: minimum detectable effect +X points (P prompts x R runs x K candidates)``,
    or ``underpowered: ...`` when that exceeds ``gates.effect_of_interest``."""
    if outcome.policy != PAIRED:
        return []
    lines = []
    for po in outcome.phases:
        k = len(po.plan.candidates)
        stats = po.stats.get(po.plan.baseline.id)
        if k == 0 or stats is None or not stats.samples:
            continue
        mde = minimum_detectable_effect(stats, k, gates)
        prompts = len(stats.case_ids) or len(stats.patterns)
        size = f"{prompts} prompts x {stats.runs} runs x {k} candidate{'s' if k != 1 else ''}"
        if mde > gates.effect_of_interest + _TOLERANCE:
            text = (
                f"underpowered: add prompts or runs (minimum detectable effect "
                f"{mde * 100:+.1f} points > effect of interest "
                f"{gates.effect_of_interest * 100:+.1f} with {size})"
            )
        else:
            text = f"minimum detectable effect {mde * 100:+.1f} points ({size})"
        lines.append(f"power {po.phase}: {text}")
    return lines
