"""The ``selfopt`` command: ``loop`` (cycles until a plateau), ``report``, ``sim-server``, ``simulate``.

Every cycle of ``loop`` is an ordinary ``pytest --selfopt`` session in a subprocess, so each
stays a reviewable step with its own files, exit status and output. Whether anything is
left to try is asked of pytest itself: a ``--collect-only`` session with this module loaded
as a plugin (``-p pytest_selfopt.cli``) reports the next cycle's candidates, so ini options,
``-k``, plan hooks and conftests count exactly as they would in the next cycle.

``report`` reads ``history.json`` (the improvement curve; when a suite config is found in the
working directory it also says whether anything is left to try) and ``report --why PHASE``
answers "why is the routing what it is" from ``decisions.log`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SELFOPT_FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
#: Environment variable naming the file a probe session writes its findings to.
PROBE_ENV = "PYTEST_SELFOPT_PROBE"
PYTEST = (sys.executable, "-m", "pytest")


#: Subcommands that own their whole argument list: forwarded untouched.
FORWARDED = {
    "sim-server": ("pytest_selfopt.models.simserver", "serve the simulated models over HTTP on 127.0.0.1"),
    "simulate": ("pytest_selfopt.study", "the gate policies' simulation study (docs/statistics.md)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in FORWARDED:
        from importlib import import_module

        forwarded: int = import_module(FORWARDED[argv[0]][0]).main(argv[1:])
        return forwarded
    parser = argparse.ArgumentParser(
        prog="selfopt",
        description="Run self-optimizing cycles until a plateau, report on them, serve the "
        "simulated models over HTTP, simulate the gate policies.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    loop = sub.add_parser(
        "loop",
        help="run cycles until N cycles or a plateau",
        description="Run `pytest --selfopt` cycles until --cycles or a plateau (a cycle that "
        "promoted nothing, with no untried candidate and no pending recommendation left). "
        "Arguments it does not know go to pytest (default: benchmarks); put them after `--` "
        "when they could be mistaken for its own.",
    )
    loop.add_argument("--cycles", type=_positive, default=6, help="at most N cycles (default 6)")
    loop.add_argument(
        "--fresh",
        metavar="DIR",
        help="start from the suite's initial spec: delete the committed files in DIR first "
        "and write every cycle's files there (for demos and experiments)",
    )
    loop.add_argument("--rootdir", default=".", help="run pytest in this folder (default: .)")

    rep = sub.add_parser("report", help="show the improvement curve, or why a routing is")
    rep.add_argument("--baselines", default="baselines", help="folder of the committed files")
    rep.add_argument("--why", metavar="PHASE", help="why is PHASE's routing what it is")

    for name, (_, help_text) in FORWARDED.items():
        sub.add_parser(name, help=help_text + f" (selfopt {name} --help)")

    args, extra = parser.parse_known_args(argv)
    if args.command == "loop":
        if extra[:1] == ["--"]:
            extra = extra[1:]
        return run_loop(args.cycles, args.fresh, Path(args.rootdir), extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_report(Path(args.baselines), args.why)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# --------------------------------------------------------------------------- loop


def run_loop(cycles: int, fresh: str | None, rootdir: Path, pytest_args: Sequence[str]) -> int:
    """Run ``pytest --selfopt`` until ``cycles`` or a plateau; one line per cycle."""
    rootdir = rootdir.resolve()
    if not rootdir.is_dir():
        print(f"selfopt loop: --rootdir {rootdir}: not a folder", file=sys.stderr)
        return 4
    options: list[str] = []
    args = list(pytest_args) or ["benchmarks"]
    if fresh:
        baselines = Path(fresh).resolve()
        baselines.mkdir(parents=True, exist_ok=True)
        for name in SELFOPT_FILES:
            (baselines / name).unlink(missing_ok=True)
        options = ["-o", f"selfopt_baselines={baselines}"]
    else:
        found = probe(rootdir, options, args)
        if isinstance(found, int):
            return found
        baselines = Path(found["baselines"])
        history = read_history(baselines)
        if history and at_plateau(history[-1], found):
            print(
                f"stopped: already at a plateau after cycle {history[-1].get('cycle')}: "
                "nothing promoted, no untried candidate and no pending recommendation left"
            )
            return 0
    seen = len(read_history(baselines))
    for number in range(1, cycles + 1):
        command = [*PYTEST, "--selfopt", "-q", "-p", "no:cacheprovider", *options, *args]
        proc = subprocess.run(command, cwd=rootdir, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            _echo_failure(proc)
            print(f"stopped: cycle {seen + 1} failed with exit status {proc.returncode}")
            return proc.returncode
        history = read_history(baselines)
        if len(history) <= seen:
            _echo_failure(proc)
            print(
                f"stopped: the cycle recorded nothing in {baselines / 'history.json'} "
                "(--selfopt-dry-run or --selfopt-check among the pytest arguments?)"
            )
            return 1
        seen = len(history)
        entry = history[-1]
        print(cycle_line(entry), flush=True)
        if promoted(entry) or entry.get("pending"):
            continue
        found = probe(rootdir, options, args)
        if isinstance(found, int):
            return found
        if at_plateau(entry, found):
            print(
                f"stopped: plateau after cycle {entry.get('cycle')}: nothing promoted, "
                "no untried candidate and no pending recommendation left"
            )
            return 0
    print(f"stopped: {cycles} cycle(s) run (--cycles {cycles}); the next cycle has work left")
    return 0


def at_plateau(entry: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """The cycle promoted nothing, left nothing pending, and the next has no candidate."""
    if promoted(entry) or entry.get("pending"):
        return False
    return not any(labels for labels in found.get("candidates", {}).values())


def _echo_failure(proc: subprocess.CompletedProcess[str]) -> None:
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-4000:])


def probe(rootdir: Path, options: Sequence[str], args: Sequence[str]) -> dict[str, Any] | int:
    """What the next cycle would evaluate, asked of pytest (``--collect-only``, no model call).

    Returns ``{"baselines": folder, "candidates": {phase: [labels]}}``, or pytest's exit status
    when the probe session failed (its output is echoed)."""
    fd, name = tempfile.mkstemp(prefix="selfopt-probe-", suffix=".json")
    os.close(fd)
    target = Path(name)
    try:
        command = [
            *PYTEST, "--selfopt", "--collect-only", "-q", "-p", "no:cacheprovider",
            "-p", "pytest_selfopt.cli", *options, *args,
        ]  # fmt: skip
        env = {**os.environ, PROBE_ENV: str(target)}
        proc = subprocess.run(
            command, cwd=rootdir, capture_output=True, text=True, env=env, check=False
        )
        text = target.read_text(encoding="utf-8")
        if proc.returncode not in (0, 5) or not text:
            _echo_failure(proc)
            status = proc.returncode or 1
            print(f"stopped: pytest could not collect the next cycle (exit status {status})")
            return status
        found: dict[str, Any] = json.loads(text)
        return found
    finally:
        target.unlink(missing_ok=True)


def pytest_collection_finish(session: Any) -> None:
    """Probe hook (active only with ``-p pytest_selfopt.cli`` and ``PYTEST_SELFOPT_PROBE``):
    write the baselines folder and the candidates every phase would evaluate."""
    target = os.environ.get(PROBE_ENV)
    config = session.config
    if not target or hasattr(config, "workerinput"):
        return
    controller = config.pluginmanager.get_plugin("selfopt_controller")
    prepared = getattr(controller, "prepared", None)
    shipment = getattr(controller, "shipment", None)
    if prepared is None or shipment is None:
        return
    candidates: dict[str, set[str]] = {}
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        point = callspec.params.get("selfopt_point") if callspec is not None else None
        spec = getattr(point, "spec", None)
        phase = getattr(point, "phase", None)
        if spec is None or phase is None:
            continue
        plan = shipment.plan_for(phase)
        labels = candidates.setdefault(phase, set())
        if plan is not None and spec.id != plan.baseline.id:
            labels.add(str(getattr(point, "label", spec.id)))
    doc = {
        "baselines": str(Path(prepared.baselines_dir).resolve()),
        "candidates": {phase: sorted(labels) for phase, labels in sorted(candidates.items())},
    }
    Path(target).write_text(json.dumps(doc), encoding="utf-8")


def read_history(baselines: Path) -> list[dict[str, Any]]:
    path = baselines / "history.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    cycles: list[dict[str, Any]] = data.get("cycles", [])
    return cycles


def promoted(entry: Mapping[str, Any]) -> bool:
    return any(rec.get("winner") for rec in entry.get("phases", {}).values())


def _median(metrics: Any) -> float | None:
    if isinstance(metrics, Mapping) and isinstance(metrics.get("median"), int | float):
        return float(metrics["median"])
    return None


def phase_scores(rec: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(median of the baseline as re-measured this cycle, committed baseline median after)."""
    before = _median(rec.get("measured_baseline"))
    after = _median((rec.get("baseline_after") or {}).get("metrics"))
    if after is None and not rec.get("winner"):
        after = before  # the suite's initial spec: committed without metrics, measured here
    return before, after


def _label(spec: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    from .loop.types import Spec

    try:
        mine = Spec.from_dict(spec)
        return mine.label(Spec.from_dict(base)) if base else mine.id
    except (KeyError, TypeError, ValueError):
        return str(spec.get("spec_id", "?"))


def cycle_line(entry: Mapping[str, Any]) -> str:
    """``cycle 2: atomic 0.833 (=); extended 0.000 (=), not verified: ...; next: ...``"""
    parts = []
    phases = entry.get("phases", {})
    for phase, rec in phases.items():
        before, after = phase_scores(rec)
        winner = rec.get("winner")
        cands = rec.get("candidates", [])
        if winner:
            label = next((c["label"] for c in cands if c["spec_id"] == winner), winner)
            text = f"{phase} {_num(before)} -> {_num(after)} PROMOTE {label}"
        else:
            text = f"{phase} {_num(before)} (=)"
        failed = [
            f"{c['label']} ({(c.get('decision') or {}).get('verdict', '?')})"
            for c in cands
            if c.get("origin") == "pending"
            and (c.get("decision") or {}).get("verdict") != "PROMOTE"
        ]
        if failed:
            text += ", not verified: " + ", ".join(failed)
        parts.append(text)
    pending = []
    for p in entry.get("pending", []):
        base = ((phases.get(p.get("phase")) or {}).get("baseline_after") or {}).get("spec")
        action = (p.get("recommendation") or {}).get("action", "?")
        pending.append(f"{p.get('phase')} {_label(p.get('spec', {}), base)} ({action})")
    tail = f"; next: {', '.join(pending)}" if pending else ""
    return f"cycle {entry.get('cycle', '?')}: " + "; ".join(parts) + tail


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


# --------------------------------------------------------------------------- report


def run_report(baselines: Path, why: str | None) -> int:
    if why:
        return explain(baselines, why)
    try:
        history = read_history(baselines)
    except (OSError, ValueError) as exc:
        print(f"{baselines / 'history.json'}: unreadable: {exc}")
        return 1
    if not history:
        print(f"{baselines / 'history.json'}: no cycle recorded yet; run `pytest --selfopt` first")
        return 1
    print("baseline accuracy (median run accuracy), start -> after each cycle:")
    for line in curve_lines(history):
        print(f"  {line}")
    print(ceiling_line(history, _left_to_try(baselines)))
    print("last " + cycle_line(history[-1]))
    return 0


def curve(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per phase: the measured start, then the committed baseline median after each cycle."""
    out: dict[str, list[float | None]] = {}
    for entry in history:
        for phase, rec in entry.get("phases", {}).items():
            before, after = phase_scores(rec)
            if phase not in out:
                out[phase] = [before]
            out[phase].append(after)
    return out


def curve_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``atomic    0.667 -> 0.833 -> 0.833  (ceiling: no promotion since cycle 1)``"""
    points = curve(history)
    width = max((len(p) for p in points), default=0)
    lines = []
    for phase in sorted(points):
        values = points[phase]
        path = " -> ".join(_num(v) for v in values)
        lines.append(f"{phase.ljust(width)}  {path}  ({_phase_note(history, phase)})")
    return lines


def _phase_note(history: Sequence[Mapping[str, Any]], phase: str) -> str:
    entries = [e for e in history if phase in e.get("phases", {})]
    last = entries[-1]
    wins = [int(e["cycle"]) for e in entries if e["phases"][phase].get("winner")]
    pending = [p for p in last.get("pending", []) if p.get("phase") == phase]
    since = f"cycle {wins[-1]}" if wins else "the start"
    _, score = phase_scores(last["phases"][phase])
    if wins and wins[-1] == last.get("cycle"):
        return f"climbing: promoted in cycle {wins[-1]}"
    if pending:
        return f"verifying {len(pending)} pending recommendation(s); no promotion since {since}"
    if score is not None and score >= 1.0:
        return f"ceiling: perfect score since {since}"
    return f"flat: no promotion since {since}"


def _left_to_try(baselines: Path) -> dict[str, list[str]] | None:
    """The next cycle's candidates per phase when a suite config is found here, else None."""
    try:
        from .config import find_config
        from .orchestrate import prepare

        config = find_config(Path.cwd(), None)
        if config is None:
            return None
        shipment = prepare(config, baselines, selfopt=True).shipment
    except Exception:  # noqa: BLE001 - a report never fails over this optional extra
        return None
    return {
        phase: [c.spec.label(plan.baseline) for c in plan.candidates]
        for phase, plan in sorted(shipment.plans.items())
    }


def ceiling_line(
    history: Sequence[Mapping[str, Any]], left: Mapping[str, Sequence[str]] | None
) -> str:
    last = history[-1]
    cycle = last.get("cycle")
    if promoted(last):
        return f"still climbing: cycle {cycle} promoted; run another cycle"
    if last.get("pending"):
        return f"not at the ceiling yet: cycle {cycle} left recommendations to verify"
    if left is None:
        return (
            f"ceiling reached unless an untried candidate is left: cycle {cycle} promoted nothing "
            "and no recommendation is pending (`selfopt loop` checks the rest)"
        )
    open_ = {p: labels for p, labels in left.items() if labels}
    if open_:
        what = "; ".join(f"{p}: {', '.join(labels)}" for p, labels in open_.items())
        return f"not at the ceiling yet: untried candidates left ({what})"
    return (
        f"ceiling reached: cycle {cycle} promoted nothing, no untried candidate and "
        "no pending recommendation left"
    )


# --------------------------------------------------------------------------- why


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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
