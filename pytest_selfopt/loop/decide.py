"""Step 3, decide, after the policy: which promoted candidate wins.

The gates themselves are the policy's (``loop/policies/``): ``cycle.close_cycle`` is given a
policy object and asks it for one decision per candidate. The winner is chosen by the same
policy's own estimate of each gain (``Decision.estimate``: the paired effect under
``paired``, the median difference under ``seed``), not by a second yardstick: under
``paired`` a candidate with the larger median can have the smaller paired effect, and the
gate vouched for the effect (docs/architecture.md, "Gates").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_selfopt.loop.types import PROMOTE, Decision, SpecStats


def pick_winner(
    decisions: Sequence[Decision], stats_by_spec: Mapping[str, SpecStats]
) -> Decision | None:
    """The promoted candidate with the largest estimated gain (a policy that gives no
    estimate: the highest median); ties: lower variance, lower latency p50, then plan
    (decision) order."""

    def gain(d: Decision) -> float:
        return stats_by_spec[d.spec_id].median if d.estimate is None else d.estimate

    ranked = [
        (
            round(-gain(d), 9),
            stats_by_spec[d.spec_id].variance,
            stats_by_spec[d.spec_id].latency_p50_s,
            i,
            d,
        )
        for i, d in enumerate(decisions)
        if d.verdict == PROMOTE
    ]
    if not ranked:
        return None
    return min(ranked, key=lambda r: r[:4])[4]
