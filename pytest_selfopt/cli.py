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

from .argtypes import positive_int
from .historyview import ceiling_line, curve_lines, cycle_line, promoted
from .why import explain

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
    loop.add_argument("--cycles", type=positive_int, default=6, help="at most N cycles (default 6)")
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


# --------------------------------------------------------------------------- why


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
