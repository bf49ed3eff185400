"""The ``selfopt`` command: ``loop`` (cycles until a plateau), ``report``, ``decide`` (close a
cycle from CI shards' samples, :mod:`pytest_selfopt.cli.decide`), ``sim-server``, ``simulate``.

Every cycle of ``loop`` is an ordinary ``pytest --selfopt`` session in a subprocess, so each
stays a reviewable step with its own files, exit status and output. Whether anything is
left to try is asked of pytest itself: a ``--collect-only`` session with the probe plugin
(``-p pytest_selfopt.cli.probe``) reports the next cycle's candidates, so ini options, ``-k``,
plan hooks and conftests count exactly as they would in the next cycle. (No name in this module
starts with ``pytest_``: pluggy would take it for a hook wherever the module is a plugin.)

``report`` reads ``history.json`` (the improvement curve; when the suite config is found it
also says whether anything is left to try) and ``report --why [PHASE]`` answers "why is the
routing what it is" from ``decisions.log`` alone. Both find the rootdir, the ini file, its
``testpaths`` and ``selfopt_*`` keys by asking pytest (:mod:`pytest_selfopt.cli.pytestsetup`).

Exit status: 0 done; 1 nothing to show yet (no cycle recorded, no record for the phase) or
a loop that stopped on a failed cycle (its own status); 4 a bad committed file or a pytest
configuration pytest itself refuses (one line naming it); 141 the reader of the output went
away (``selfopt report | head -1``): nothing more is printed.
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

from pytest_selfopt.argtypes import positive_int
from pytest_selfopt.cli import pytestsetup
from pytest_selfopt.cli.probe import PROBE_ENV
from pytest_selfopt.cli.pytestsetup import PytestSetup, SetupError
from pytest_selfopt.cli.read import EXIT_BAD_FILE, ReadError, read_history, read_log
from pytest_selfopt.report.history import (
    NextCycle,
    as_list,
    curve_lines,
    cycle_line,
    next_cycles,
    phases_of,
    plateau_line,
    promoted,
)
from pytest_selfopt.report.why import explain_phase, phases_in

SELFOPT_FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
PYTEST = (sys.executable, "-m", "pytest")


#: Subcommands that own their whole argument list: forwarded untouched, imported only when
#: used (a broken optional module never takes ``loop`` or ``report`` down with it).
FORWARDED = {
    "decide": (
        "pytest_selfopt.cli.decide",
        "close one cycle from the sample files of its CI shards",
    ),
    "sim-server": (
        "pytest_selfopt.models.simserver",
        "serve the simulated models over HTTP on 127.0.0.1",
    ),
    "simulate": (
        "pytest_selfopt.study.simulate",
        "the gate policies' simulation study (docs/statistics.md)",
    ),
}


#: 128 + SIGPIPE: what a shell reports for a command whose reader went away.
EXIT_CLOSED_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: a closed output pipe ends quietly, whatever the subcommand."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at devnull so that flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in FORWARDED:
        from importlib import import_module

        forwarded: int = import_module(FORWARDED[argv[0]][0]).main(argv[1:])
        return forwarded
    parser = argparse.ArgumentParser(
        prog="selfopt",
        description="Run self-optimizing cycles until a plateau, report on them, close a "
        "cycle from CI shards' samples, serve the simulated models over HTTP, simulate the "
        "gate policies.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    loop = sub.add_parser(
        "loop",
        help="run cycles until N cycles or a plateau",
        description="Run `pytest --selfopt` cycles until --cycles or a plateau (a cycle that "
        "promoted nothing, with no untried candidate and no pending recommendation left). "
        "Arguments it does not know go to pytest; put them after `--` when they could be "
        "mistaken for its own. Without any, pytest's own choice (`testpaths` of the ini file "
        "pytest finds, else the folder) when it contains the suite config, else the suite "
        "config's folder (e.g. benchmarks).",
    )
    loop.add_argument("--cycles", type=positive_int, default=6, help="at most N cycles (default 6)")
    loop.add_argument(
        "--fresh",
        metavar="DIR",
        help="start from the suite's initial spec: delete the committed files in DIR first "
        "and write every cycle's files there (for demos and experiments)",
    )
    loop.add_argument("--rootdir", default=".", help="run pytest in this folder (default: .)")

    rep = sub.add_parser(
        "report",
        help="show the improvement curve, or why a routing is",
        description="The improvement curve from history.json, or (--why) why each phase is "
        "routed as it is, from decisions.log alone. Exit status: 0 shown; 1 nothing recorded "
        "yet; 4 a bad file or pytest configuration (one line naming it); 141 output pipe "
        "closed.",
    )
    rep.add_argument(
        "--baselines",
        metavar="DIR",
        help="folder of the committed files (default: the selfopt_baselines ini key of the "
        "ini file pytest finds from here, else baselines/ under the rootdir)",
    )
    rep.add_argument(
        "--why",
        metavar="PHASE",
        nargs="?",
        const="",
        help="why is PHASE's routing what it is (without PHASE: every phase)",
    )

    for name, (_, help_text) in FORWARDED.items():
        sub.add_parser(name, help=help_text + f" (selfopt {name} --help)")

    args, extra = parser.parse_known_args(argv)
    if args.command == "loop":
        if extra[:1] == ["--"]:
            extra = extra[1:]
        return run_loop(args.cycles, args.fresh, Path(args.rootdir), extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_report(None if args.baselines is None else Path(args.baselines), args.why)


def _warn(command: str, lines: Sequence[str]) -> None:
    for line in lines:
        print(f"selfopt {command}: warning: {line}", file=sys.stderr)


# --------------------------------------------------------------------------- loop


def run_loop(cycles: int, fresh: str | None, rootdir: Path, pytest_args: Sequence[str]) -> int:
    """Run ``pytest --selfopt`` until ``cycles`` or a plateau; one line per cycle."""
    rootdir = rootdir.resolve()
    if not rootdir.is_dir():
        print(f"selfopt loop: --rootdir {rootdir}: not a folder", file=sys.stderr)
        return 4
    options: list[str] = []
    try:
        setup = pytestsetup.pytest_setup(rootdir, pytest_args)
    except SetupError as exc:
        print(f"selfopt loop: {exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    _warn("loop", setup.notes())
    args = [*pytest_args, *setup.default_args()]
    if fresh:
        baselines = Path(fresh).resolve()
        baselines.mkdir(parents=True, exist_ok=True)
        for name in SELFOPT_FILES:
            (baselines / name).unlink(missing_ok=True)
        # one argument, "=" form: pytest never mistakes the value for a test path
        options = [f"--override-ini=selfopt_baselines={baselines}"]
    else:
        found = probe(rootdir, options, args)
        if isinstance(found, int):
            return found
        baselines = Path(found["baselines"])
        history = _history_or_none(baselines)
        if history is None:
            return EXIT_BAD_FILE
        if history and at_plateau(history[-1], found):
            print(
                f"stopped: already at a plateau after cycle {history[-1].get('cycle')}: "
                "nothing promoted, no untried candidate and no pending recommendation left"
            )
            return 0
    history = _history_or_none(baselines)
    if history is None:
        return EXIT_BAD_FILE
    seen = len(history)
    for _ in range(cycles):
        command = [*PYTEST, "--selfopt", "-q", "-p", "no:cacheprovider", *options, *args]
        proc = run_pytest(command, rootdir)
        if proc.returncode != 0:
            _echo_failure(proc)
            print(f"stopped: cycle {seen + 1} failed with exit status {proc.returncode}")
            return proc.returncode
        history = _history_or_none(baselines)
        if history is None:
            return EXIT_BAD_FILE
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


def run_pytest(
    command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One pytest session in a subprocess, its output captured."""
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


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
            "-p", "pytest_selfopt.cli.probe", *options, *args,
        ]  # fmt: skip
        env = {**os.environ, PROBE_ENV: str(target)}
        proc = run_pytest(command, rootdir, env)
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


def _history_or_none(baselines: Path) -> list[dict[str, Any]] | None:
    """The recorded cycles, or None after saying in one line why they cannot be read."""
    try:
        return read_history(baselines)
    except ReadError as exc:
        print(f"stopped: {exc}")
        return None


# --------------------------------------------------------------------------- report


def run_report(baselines: Path | None, why: str | None) -> int:
    """``selfopt report [--why [PHASE]]`` (exit status: module doc)."""
    setup: PytestSetup | None = None
    if baselines is None or why is None:  # --why with --baselines needs nothing of pytest
        try:
            setup = pytestsetup.pytest_setup(Path.cwd())
        except SetupError as exc:
            if baselines is None:
                print(f"selfopt report: {exc}", file=sys.stderr)
                return EXIT_BAD_FILE
        if setup is not None and baselines is None:
            _warn("report", setup.notes(suite=False))  # no ini file: say which folder is read
            baselines = setup.baselines
    assert baselines is not None
    try:
        if why is not None:
            return _report_why(baselines, why)
        history = read_history(baselines)
    except ReadError as exc:
        print(f"selfopt report: {exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    if not history:
        print(f"{baselines / 'history.json'}: no cycle recorded yet; run `pytest --selfopt` first")
        return 1
    print("baseline accuracy (median run accuracy), start -> after each cycle:")
    for line in curve_lines(history):
        print(f"  {line}")
    print(plateau_line(history, _next_cycle(setup, baselines, history)))
    print("last " + cycle_line(history[-1]))
    return 0


def _report_why(baselines: Path, phase: str) -> int:
    try:
        log = read_log(baselines)
    except FileNotFoundError as exc:
        print(f"{exc.args[0]}: not found; run `pytest --selfopt` first")
        return 1
    note = log.skipped_line()
    if note:
        print(f"selfopt report: warning: {note}", file=sys.stderr)
    known = phases_in(log.records)
    if phase and phase not in known:
        print(f"{log.path}: no record for phase {phase!r}; phases: {', '.join(known) or 'none'}")
        return 1
    for i, name in enumerate([phase] if phase else known):
        if i:
            print()
        for line in explain_phase(log.records, name, str(log.path)):
            print(line)
    return 0


def _next_cycle(
    setup: PytestSetup | None, baselines: Path, history: Sequence[Mapping[str, Any]]
) -> dict[str, NextCycle] | None:
    """Per phase, the next cycle's candidates (untried, again) and those held back: as the
    last cycle recorded them, else (an older history) planned now from the suite config;
    None when neither is known (the report then says what history alone shows)."""
    recorded = next_cycles(history[-1])
    if recorded is not None:
        return recorded
    if setup is None or setup.suite_config is None:
        return None
    try:
        from pytest_selfopt.loop.generate import cooling_down
        from pytest_selfopt.plugin.orchestrate import prepare

        prepared = prepare(setup.suite_config, baselines, selfopt=True)
    except Exception:  # noqa: BLE001 - a report never fails over this optional extra
        return None
    tried = prepared.state.tried
    labels = {
        (phase, str(c.get("spec_id"))): str(c.get("label"))
        for entry in history
        for phase, rec in phases_of(entry).items()
        for c in as_list(rec.get("candidates"))
        if isinstance(c, Mapping)
    }
    next_cycle = prepared.state.last_cycle + 1
    cooldown = prepared.settings.gates.cooldown_cycles
    out: dict[str, NextCycle] = {}
    for phase, plan in sorted(prepared.shipment.plans.items()):
        decided = {t.spec_id for t in tried if t.phase == phase}
        untried: list[str] = []
        again: list[str] = []
        for c in plan.candidates:
            label = c.spec.label(plan.baseline)
            (again if c.spec.id in decided else untried).append(label)
        cooling = []
        for spec_id in sorted(cooling_down(phase, tried, next_cycle, cooldown)):
            last = max(t.cycle for t in tried if t.phase == phase and t.spec_id == spec_id)
            cooling.append((labels.get((phase, spec_id), spec_id), last + cooldown + 1))
        out[phase] = NextCycle(tuple(untried), tuple(again), tuple(cooling))
    return out


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
