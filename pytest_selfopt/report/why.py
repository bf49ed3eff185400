"""``selfopt report --why [PHASE]``: why a phase's routing is what it is, from decisions.log alone.

Pure functions over the log's records (plain dicts); reading the file is the CLI's job. Every
value inside a record is read defensively: a hand-edited or foreign record shows as ``?``,
never as a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_selfopt.report.history import as_list, as_map

PROMOTE = "PROMOTE"


def phases_in(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The phases the log mentions, sorted."""
    return sorted({str(r.get("phase")) for r in records if r.get("phase") is not None})


def explain_phase(records: Sequence[Mapping[str, Any]], phase: str, source: str) -> list[str]:
    """The answer for one phase: where it is routed now, then how it got there."""
    mine = [r for r in records if r.get("phase") == phase]
    routes = [r for r in mine if r.get("event") == "enforce"]
    lines = [f"why {phase} is routed as it is (from {source}):"]
    if routes:
        last = routes[-1]
        after = as_map(_detail(last).get("after"))
        lines.append(
            f"  now: {_route_text(after)}  [spec {after.get('spec_id', '?')}, set in cycle "
            f"{last.get('cycle')}{_at(last)}]"
        )
    else:
        lines.append("  now: no routing recorded yet")
    lines.append("  how it got there:")
    lines += [f"    {line}" for line in why_lines(mine)]
    return lines


def _detail(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_map(record.get("detail"))


def _routine(record: Mapping[str, Any]) -> bool:
    """A searched candidate that did not pass the gates: grouped, not told one by one."""
    detail = _detail(record)
    return (
        record.get("event") == "decision"
        and detail.get("origin") != "pending"
        and detail.get("verdict") != PROMOTE
    )


def why_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One phase's audit records, cycle by cycle, as sentences; routine rejections grouped."""
    promoted_ids = {_key(r) for r in records if r.get("event") == "promote"}
    lines: list[str] = []
    cycles = list(dict.fromkeys(str(r.get("cycle")) for r in records))
    for cycle in cycles:
        here = [r for r in records if str(r.get("cycle")) == cycle]
        prefix = f"cycle {cycle}{_at(here[0])}: "
        routine = [r for r in here if _routine(r)]
        if routine:
            reasons = list(
                dict.fromkeys(
                    _strip_verdict(_detail(r).get("reason")).split(":")[0] for r in routine
                )
            )
            verdicts = "/".join(dict.fromkeys(str(_detail(r).get("verdict")) for r in routine))
            labels = ", ".join(str(r.get("label")) for r in routine)
            lines.append(
                f"{prefix}{verdicts} {len(routine)} searched candidate(s) ({labels}): "
                f"{'; '.join(reasons)}"
            )
        winners = [str(r.get("label")) for r in here if r.get("event") == "promote"]
        for r in here:
            if _routine(r):
                continue
            won = _key(r) in promoted_ids
            text = _why_line(r, won, winners)
            if text:
                lines.append(prefix + text)
    return lines


def _key(record: Mapping[str, Any]) -> tuple[str, str]:
    """(cycle, spec id) as text: any JSON value, hashable."""
    return str(record.get("cycle")), str(record.get("spec_id"))


def _at(record: Mapping[str, Any]) -> str:
    commit = record.get("git_commit")
    return f" @{str(commit)[:10]}" if commit else ""


def _route_text(route: Mapping[str, Any]) -> str:
    spec = as_map(route.get("spec"))
    knobs = ", ".join(f"{k} {_scalar(v)}" for k, v in spec.items())
    fallbacks = [str(f) for f in as_list(route.get("fallbacks"))]
    return f"{knobs}; fallbacks: {', '.join(fallbacks) if fallbacks else 'none'}"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _why_line(record: Mapping[str, Any], won: bool, winners: Sequence[str]) -> str | None:
    event = record.get("event")
    detail = _detail(record)
    label = record.get("label")
    if event == "decision":
        if detail.get("verdict") != PROMOTE or won:
            # the winner: its promote record says it, with the metrics; a failed pending
            # candidate: its verify_failed record says it, with the recommendation behind it.
            return None
        chosen = f"{', '.join(winners)} gained more" if winners else "no winner recorded"
        return (
            f"PROMOTE {label} passed the gates but was not chosen ({chosen}): "
            f"{_strip_verdict(detail.get('reason'))}"
        )
    if event == "promote":
        decision = _strip_verdict(str(detail.get("reason", "")).split(": ", 1)[-1])
        return f"PROMOTE {label}: {decision} -> new baseline"
    if event == "verify_failed":
        then = detail.get("after_failure")  # "retired: ..." / "cooling down: ..." when recorded
        then = then if isinstance(then, str) and then else "not re-proposed while cooling down"
        return (
            f"not verified: {label} ({detail.get('action')}) {detail.get('verdict')}: "
            f"{_strip_verdict(detail.get('reason'))}; not enforced, {then}"
        )
    if event == "recommend":
        return (
            f"recommended {label} ({detail.get('action')}): {detail.get('reason')}; "
            "pending verification next cycle"
        )
    if event == "enforce":
        return _enforce_line(detail, won)
    return f"{event} {label}"


def _enforce_line(detail: Mapping[str, Any], verified_here: bool) -> str:
    before, after = detail.get("before"), as_map(detail.get("after"))
    why = (
        "verified: passed the gates this cycle"
        if verified_here
        else "the phase's current baseline; nothing passed the gates"
    )
    if not isinstance(before, Mapping):
        return f"routing set: {_route_text(after)} ({why})"
    old_spec, new_spec = as_map(before.get("spec")), as_map(after.get("spec"))
    changes = [
        f"{k} {_scalar(old_spec.get(k))} -> {_scalar(v)}"
        for k, v in new_spec.items()
        if old_spec.get(k) != v
    ]
    old_fb = [str(f) for f in as_list(before.get("fallbacks"))]
    new_fb = [str(f) for f in as_list(after.get("fallbacks"))]
    if old_fb != new_fb:
        changes.append(f"fallbacks [{', '.join(old_fb)}] -> [{', '.join(new_fb)}]")
    return f"routing changed: {', '.join(changes) or 'no knob'} ({why})"


def _strip_verdict(reason: Any) -> str:
    text = str(reason or "")
    for verdict in ("PROMOTE: ", "HOLD: ", "REJECT: "):
        if text.startswith(verdict):
            return text[len(verdict) :]
    return text
