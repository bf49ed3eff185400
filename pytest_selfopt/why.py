"""``selfopt report --why PHASE``: why a phase's routing is what it is, from decisions.log alone."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def explain(baselines: Path, phase: str) -> int:
    """Answer "why is the routing what it is" from decisions.log alone."""
    log = baselines / "decisions.log" if baselines.is_dir() or not baselines.exists() else baselines
    if not log.exists():
        print(f"{log}: not found; run `pytest --selfopt` first")
        return 1
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            print(f"{log}:{number}: not a JSON line; skipped")
    mine = [r for r in records if r.get("phase") == phase]
    if not mine:
        phases = sorted({str(r.get("phase")) for r in records})
        print(f"{log}: no record for phase {phase!r}; phases: {', '.join(phases) or 'none'}")
        return 1
    routes = [r for r in mine if r.get("event") == "enforce"]
    print(f"why {phase} is routed as it is (from {log}):")
    if routes:
        last = routes[-1]
        after = (last.get("detail") or {}).get("after") or {}
        print(f"  now: {_route_text(after)}  [spec {after.get('spec_id', '?')}, set in cycle "
              f"{last.get('cycle')}{_at(last)}]")  # fmt: skip
    else:
        print("  now: no routing recorded yet")
    print("  how it got there:")
    for line in why_lines(mine):
        print(f"    {line}")
    return 0


def why_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One phase's audit records, cycle by cycle, as sentences; routine rejections grouped."""
    promoted_ids = {
        (r.get("cycle"), r.get("spec_id")) for r in records if r.get("event") == "promote"
    }
    lines: list[str] = []
    cycles = list(dict.fromkeys(r.get("cycle") for r in records))
    for cycle in cycles:
        here = [r for r in records if r.get("cycle") == cycle]
        prefix = f"cycle {cycle}{_at(here[0])}: "
        routine = [
            r
            for r in here
            if r.get("event") == "decision"
            and (r.get("detail") or {}).get("origin") != "pending"
            and (r.get("detail") or {}).get("verdict") != "PROMOTE"
        ]
        if routine:
            reasons = list(
                dict.fromkeys(
                    _strip_verdict((r.get("detail") or {}).get("reason")).split(":")[0]
                    for r in routine
                )
            )
            verdicts = "/".join(
                dict.fromkeys(str((r.get("detail") or {}).get("verdict")) for r in routine)
            )
            labels = ", ".join(str(r.get("label")) for r in routine)
            lines.append(
                f"{prefix}{verdicts} {len(routine)} searched candidate(s) ({labels}): "
                f"{'; '.join(reasons)}"
            )
        for r in here:
            if r in routine:
                continue
            text = _why_line(r, (cycle, r.get("spec_id")) in promoted_ids)
            if text:
                lines.append(prefix + text)
    return lines


def _at(record: Mapping[str, Any]) -> str:
    commit = record.get("git_commit")
    return f" @{str(commit)[:10]}" if commit else ""


def _route_text(route: Mapping[str, Any]) -> str:
    spec = route.get("spec") or {}
    knobs = ", ".join(f"{k} {_scalar(v)}" for k, v in spec.items())
    fallbacks = route.get("fallbacks") or []
    return f"{knobs}; fallbacks: {', '.join(fallbacks) if fallbacks else 'none'}"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _gates(detail: Mapping[str, Any]) -> str:
    gates = detail.get("gates") or []
    return "; ".join(
        f"{g.get('name')} {'ok' if g.get('passed') else 'FAILED'}: {g.get('detail')}" for g in gates
    )


def _why_line(record: Mapping[str, Any], verified_here: bool = False) -> str | None:
    event = record.get("event")
    detail = record.get("detail") or {}
    label = record.get("label")
    if event == "decision":
        # PROMOTE: the promote record says it, with its metrics; a failed pending candidate:
        # the verify_failed record says it, with the recommendation behind it.
        return None
    if event == "promote":
        decision = _strip_verdict(str(detail.get("reason", "")).split(": ", 1)[-1])
        return f"PROMOTE {label}: {decision} -> new baseline"
    if event == "verify_failed":
        return (
            f"not verified: {label} ({detail.get('action')}) {detail.get('verdict')}: "
            f"{_strip_verdict(detail.get('reason'))}; not enforced, not re-proposed while "
            "cooling down"
        )
    if event == "recommend":
        return (
            f"recommended {label} ({detail.get('action')}): {detail.get('reason')}; "
            "pending verification next cycle"
        )
    if event == "enforce":
        before, after = detail.get("before"), detail.get("after") or {}
        why = (
            "verified: passed the gates this cycle"
            if verified_here
            else "the phase's current baseline; nothing passed the gates"
        )
        if before is None:
            return f"routing set: {_route_text(after)} ({why})"
        changes = [
            f"{k} {_scalar((before.get('spec') or {}).get(k))} -> {_scalar(v)}"
            for k, v in (after.get("spec") or {}).items()
            if (before.get("spec") or {}).get(k) != v
        ]
        if before.get("fallbacks") != after.get("fallbacks"):
            changes.append(
                f"fallbacks [{', '.join(before.get('fallbacks') or [])}] -> "
                f"[{', '.join(after.get('fallbacks') or [])}]"
            )
        return f"routing changed: {', '.join(changes) or 'no knob'} ({why})"
    return f"{event} {label}"


def _strip_verdict(reason: Any) -> str:
    text = str(reason or "")
    for verdict in ("PROMOTE: ", "HOLD: ", "REJECT: "):
        if text.startswith(verdict):
            return text[len(verdict) :]
    return text

