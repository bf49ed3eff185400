"""``selfopt decide PATH...``: close one cycle from the sample files of its CI shards.

Each ``pytest --selfopt --selfopt-shard K/N --selfopt-samples=PATH`` ran a share of the
cycle's cases and wrote its samples with the plan's identity (plugin/shard.py). This command
refuses any set of files that is not exactly shards 1..N of the plan the suite config and the
committed files give now (one line per file, nothing written), then closes the cycle as one
``pytest --selfopt`` session would: the same ``orchestrate.prepare`` / ``finish`` (or
``check``), the same files, terminal summary, report and exit status (docs/ci.md).

Exit status: as ``pytest --selfopt`` (``--selfopt-check`` for check shards): 0 closed (no
regression); 1 could not decide, the committed files refused the write, or a regression;
5 no sample at all. 4: the shard files or the suite cannot be used: a missing, duplicated,
foreign (another seed, config, cycle or committed files) or truncated shard file, no file
matched, or a bad suite config (one line each on stderr; nothing written).

Not replayed: ``pytest_selfopt_generate_plan`` and ``pytest_selfopt_make_policies`` hooks of
conftests and plugins (a plan from a hook makes the identity differ, so it is refused; a
policy from a hook is named as unknown), and ``pytest_selfopt_cycle_complete``.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_selfopt.argtypes import output_path
from pytest_selfopt.cli.pytestsetup import SetupError, pytest_setup
from pytest_selfopt.plugin.codec import Collected, missing_samples
from pytest_selfopt.plugin.orchestrate import plan_identity
from pytest_selfopt.plugin.shard import (
    ShardError,
    ShardFile,
    identity_problems,
    read_shard,
    set_problems,
    shown,
)
from pytest_selfopt.report.common import sample_failures_line
from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.suite.yamlread import ConfigError

if TYPE_CHECKING:
    from pytest_selfopt.plugin.orchestrate import Prepared

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_NO_SAMPLES = 0, 1, 4, 5
PROG = "selfopt decide"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``decide`` on the ``selfopt`` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decide",
        help="close one cycle from the sample files of its CI shards",
        description="Close one cycle from the files written by `pytest --selfopt "
        "--selfopt-shard K/N --selfopt-samples=PATH` (or --selfopt-check shards): the same "
        "files, summary, report and exit status as one `pytest --selfopt` session. Exit "
        "status: 0 closed; 1 could not decide, write refused or a regression; 5 no sample; "
        "4 missing, duplicated, foreign or truncated shard files, or a bad suite (one line "
        "each; nothing written).",
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="the shards' sample files (globs welcome)"
    )
    parser.add_argument(
        "--rootdir",
        default=".",
        metavar="DIR",
        help="find the rootdir, ini file, suite config and baselines/ as pytest started in "
        "DIR would (default: .)",
    )
    parser.add_argument("--dry-run", action="store_true", help="decide and report, write nothing")
    parser.add_argument(
        "--report", type=output_path, metavar="PATH", help="write the Markdown report"
    )
    parser.add_argument(
        "--json",
        type=output_path,
        metavar="PATH",
        help="write every sample and decision as JSON",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_selfopt.cli.decide``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


def _refuse(lines: Sequence[str]) -> int:
    for line in lines:
        print(f"{PROG}: {line}; nothing written", file=sys.stderr)
    return EXIT_REFUSED


def expand(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files the arguments name (globs expanded, each file once), and the arguments that
    name none."""
    found: dict[Path, Path] = {}
    problems = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                problems.append(f"{pattern}: matches no file")
        else:
            matches = [pattern]
        for match in matches:
            found.setdefault(Path(match).resolve(), Path(match))
    return list(found.values()), problems


def run(args: argparse.Namespace) -> int:
    """Check the shard files, then close the cycle (or the check) on their samples."""
    paths, problems = expand(args.paths)
    shards: list[ShardFile] = []
    for path in paths:
        try:
            shards.append(read_shard(path))
        except ShardError as exc:
            problems.append(str(exc))
    if problems:
        return _refuse(problems)
    problems = set_problems(shards)
    if problems:
        return _refuse(problems)
    first = shards[0]
    check = first.check
    try:
        setup = pytest_setup(Path(args.rootdir))
    except SetupError as exc:
        return _refuse([str(exc)])
    if setup.suite_config is None:
        return _refuse(setup.notes())
    from pytest_selfopt.plugin import orchestrate

    try:
        prepared = orchestrate.prepare(
            setup.suite_config,
            setup.baselines,
            selfopt=not check,
            check=check,
            runs=first.identity.runs,
            seed=first.identity.seed,
        )
    except (ConfigError, FilesError) as exc:
        return _refuse([str(exc)])
    current = plan_identity(prepared, setup.suite_config)
    problems = identity_problems(shards, current, shown(setup.suite_config))
    if problems:
        return _refuse(problems)

    # A case runs on one shard only (select_items), so each file must be whole on its own:
    # checked per file, a gap names the file that has it.
    problems = [
        f"{shard.shown}: shard {shard.shard}: {problem}"
        for shard in shards
        for problem in incomplete(collect([shard]), prepared)
    ]
    collected = collect(shards)
    problems = problems or incomplete(collected, prepared)
    if problems:
        return _refuse(problems)
    lines, status = close(prepared, collected, check=check, args=args)
    print(
        f"{PROG}: {len(shards)} shard(s) of cycle {first.identity.cycle}, "
        f"{len(collected.samples)} sample(s): {', '.join(s.shown for s in shards)}"
    )
    for line in lines:
        print(line)
    return status


def collect(shards: Sequence[ShardFile]) -> Collected:
    """The shards' samples as the controller would have gathered them from reports."""
    collected = Collected()
    for shard in shards:
        for entry in shard.entries:
            collected.add_sample(entry.sample, entry.nodeid, entry.unjudged)
        collected.skipped.update(shard.skipped)
    return collected


def incomplete(collected: Collected, prepared: Prepared) -> list[str]:
    """Why these samples are not a whole comparison (codec.Collected.problems' last checks)."""
    shipment = prepared.shipment
    plans = collected.plans(shipment)
    return collected.uneven_skips() + missing_samples(plans, collected, shipment.runs)


def close(
    prepared: Prepared, collected: Collected, *, check: bool, args: argparse.Namespace
) -> tuple[list[str], int]:
    """The summary lines and exit status of closing the cycle: the controller's own sequence
    (plugin/controller.py ``Controller.close``), without a session."""
    from pytest_selfopt.loop.policies import builtin_policies
    from pytest_selfopt.plugin import orchestrate
    from pytest_selfopt.report.terminal import terminal_lines

    unjudged = collected.unjudged_functions()
    notes = [
        f"not judged, left out of the decisions: {function}: {count} sample(s) asked the "
        "model and never judged the reply; call case.check(reply) (or "
        "llm.record_restraint) in the test"
        for function, count in unjudged.items()
    ]
    samples = collected.judged_samples()
    if not samples:
        if not unjudged:
            return [
                *notes,
                "no sample recorded: no test used the llm fixture; nothing written",
            ], EXIT_NO_SAMPLES
        return [*notes, "no judged sample: nothing decided, nothing written"], EXIT_FAILED
    plans = collected.plans(prepared.shipment)
    report_path = Path(args.report) if args.report else None
    if check:
        checked = orchestrate.check(prepared, plans, samples, report_path=report_path)
        return [*notes, *checked.lines], EXIT_FAILED if checked.regressed else EXIT_OK
    policies = builtin_policies()
    name = prepared.settings.policy
    if name not in policies:
        return [
            f"{shown(prepared.config.path)}: policy: {name!r} is not a built-in policy "
            f"({', '.join(sorted(policies))}); {PROG} cannot run a plugin's policy: close "
            "this cycle with one `pytest --selfopt` session; nothing written"
        ], EXIT_REFUSED
    try:
        finished = orchestrate.finish(
            prepared,
            plans,
            samples,
            policy=policies[name],
            dry_run=bool(args.dry_run),
            report_path=report_path,
            json_path=Path(args.json) if args.json else None,
            notes=notes,
        )
    except FilesError as exc:
        return [f"nothing written: {exc}"], EXIT_FAILED
    width = max(shutil.get_terminal_size((80, 24)).columns, 80)
    lines = [
        *notes,
        *terminal_lines(
            finished.outcome, written=finished.written, dry_run=bool(args.dry_run), width=width
        ),
        *finished.power,
        *finished.curve,
    ]
    status = EXIT_FAILED if finished.failed else EXIT_OK
    if finished.undecided:
        lines.append("could not decide (no samples): " + "; ".join(finished.undecided))
    lines = [*finished.outages, *lines, *finished.outages]  # first and last: read in a hurry
    failures = sample_failures_line(collected.samples)
    if failures:
        lines.append(failures)
    return lines, status


if __name__ == "__main__":
    sys.exit(main())
