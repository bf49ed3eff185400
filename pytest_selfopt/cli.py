"""The ``selfopt`` command: ``loop`` (cycles until a plateau), ``report``, ``sim-server``.

Every cycle of ``loop`` is an ordinary ``pytest --selfopt`` session in a subprocess, so each
stays a reviewable step with its own files, exit status and output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

SELFOPT_FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    loop = sub.add_parser("loop", help="run cycles until N cycles or a plateau")
    loop.add_argument("--cycles", type=_positive, default=6, help="at most N cycles (default 6)")
    loop.add_argument(
        "--fresh",
        metavar="DIR",
        help="start from the suite's initial spec, writing the committed files into DIR",
    )
    loop.add_argument("--rootdir", default=".", help="project root (default: .)")

    rep = sub.add_parser("report", help="show the improvement curve and the last cycle")
    rep.add_argument("--baselines", default="baselines", help="folder of the committed files")
    rep.add_argument("--why", metavar="PHASE", help="why is PHASE's routing what it is")

    sim = sub.add_parser("sim-server", help="serve the simulated models over HTTP on 127.0.0.1")
    sim.add_argument("rest", nargs=argparse.REMAINDER)

    args, extra = parser.parse_known_args(argv)
    if args.command == "loop":
        return run_loop(args.cycles, args.fresh, Path(args.rootdir), extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "report":
        return run_report(Path(args.baselines), args.why)
    from .models.simserver import main as sim_main

    return sim_main(list(args.rest))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def run_loop(cycles: int, fresh: str | None, rootdir: Path, pytest_args: Sequence[str]) -> int:
    """Run ``pytest --selfopt`` until ``cycles`` or a plateau; one line per cycle."""
    baselines = rootdir / "baselines"
    options: list[str] = []
    if fresh:
        baselines = Path(fresh).resolve()
        baselines.mkdir(parents=True, exist_ok=True)
        for name in SELFOPT_FILES:
            (baselines / name).unlink(missing_ok=True)
        options = ["-o", f"selfopt_baselines={baselines}"]
    args = list(pytest_args) or ["benchmarks"]
    for number in range(1, cycles + 1):
        command = [sys.executable, "-m", "pytest", "--selfopt", "-q", "-p", "no:cacheprovider"]
        proc = subprocess.run(
            [*command, *options, *args], cwd=rootdir, capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout[-4000:])
            sys.stderr.write(proc.stderr[-4000:])
            print(f"stopped: cycle {number} failed with exit status {proc.returncode}")
            return proc.returncode
        history = read_history(baselines)
        entry = history[-1] if history else {}
        print(cycle_line(entry))
        if plateau(entry, rootdir, baselines, options):
            print(
                f"stopped: plateau after cycle {entry.get('cycle')}: nothing promoted, "
                "no untried candidate or pending recommendation left"
            )
            return 0
    print(f"stopped: {cycles} cycle(s) run (--cycles)")
    return 0


def read_history(baselines: Path) -> list[dict[str, Any]]:
    path = baselines / "history.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    cycles: list[dict[str, Any]] = data.get("cycles", [])
    return cycles


def cycle_line(entry: Mapping[str, Any]) -> str:
    parts = []
    for phase, rec in entry.get("phases", {}).items():
        before = (rec.get("measured_baseline") or {}).get("median")
        after = ((rec.get("baseline_after") or {}).get("metrics") or {}).get("median")
        winner = rec.get("winner")
        if winner:
            label = next(
                (c["label"] for c in rec.get("candidates", []) if c["spec_id"] == winner), winner
            )
            parts.append(f"{phase} {_num(before)} -> {_num(after)} PROMOTE {label}")
        else:
            parts.append(f"{phase} {_num(before)} (=)")
    pending = len(entry.get("pending", []))
    tail = f"; {pending} pending" if pending else ""
    return f"cycle {entry.get('cycle', '?')}: " + ", ".join(parts) + tail


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def plateau(entry: Mapping[str, Any], rootdir: Path, baselines: Path, options: list[str]) -> bool:
    """Nothing promoted this cycle, and the next cycle would have nothing to try."""
    if any(rec.get("winner") for rec in entry.get("phases", {}).values()):
        return False
    if entry.get("pending"):
        return False
    from .config import find_config
    from .orchestrate import prepare

    config = find_config(rootdir.resolve(), None)
    if config is None:
        return True
    prepared = prepare(config, baselines, selfopt=True)
    phases = list(entry.get("phases", {}))
    plans = [prepared.shipment.plan_for(p) for p in phases]
    return all(plan is None or not plan.candidates for plan in plans)


def run_report(baselines: Path, why: str | None) -> int:
    from . import report

    history = read_history(baselines)
    if not history:
        print(f"{baselines}/history.json: no cycle recorded yet; run `pytest --selfopt` first")
        return 1
    if why:
        return explain(baselines, why)
    for line in report.curve_lines(history):
        print(line)
    print(cycle_line(history[-1]))
    return 0


def explain(baselines: Path, phase: str) -> int:
    """Answer "why is the routing what it is" from decisions.log alone."""
    log = baselines / "decisions.log"
    if not log.exists():
        print(f"{log}: not found")
        return 1
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    mine = [r for r in records if r.get("phase") == phase]
    if not mine:
        phases = sorted({r.get("phase") for r in records})
        print(f"{log}: no record for phase {phase!r}; phases: {', '.join(map(str, phases))}")
        return 1
    promotes = [r for r in mine if r.get("event") in ("promote", "enforce")]
    if not promotes:
        print(f"{phase}: still on the suite's initial spec; nothing has passed the gates yet")
    for r in promotes:
        print(_explain_line(r))
    last_fail = [r for r in mine if r.get("event") == "verify_failed"]
    for r in last_fail[-3:]:
        print(_explain_line(r))
    return 0


def _explain_line(record: Mapping[str, Any]) -> str:
    detail = record.get("detail", {})
    reason = detail.get("reason") or detail.get("summary") or ""
    commit = record.get("git_commit")
    at = f" @ {commit[:10]}" if commit else ""
    return (
        f"cycle {record.get('cycle')}{at}: {record.get('event')} {record.get('label')} "
        f"({record.get('spec_id')}) {reason}".rstrip()
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
