"""The controller side of a session: plans the cycle before collection, gathers samples from
reports, and closes the cycle at the end (decide, write, report).

Registered only in the main process (never in an xdist worker); the I/O around the pure loop
is ``orchestrate``'s (docs/architecture.md, "pytest integration").
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_selfopt.plugin import interrupts, racing
from pytest_selfopt.plugin.codec import Collected, payload_of
from pytest_selfopt.plugin.items import CONFIG_ERROR_MARK, collection_error
from pytest_selfopt.plugin.prefetch import OUTPUT_KEY as PREFETCH_OUTPUT_KEY
from pytest_selfopt.plugin.prefetch import PrefetchStats, lost_counts_line, requested_concurrency
from pytest_selfopt.plugin.state import SessionState
from pytest_selfopt.report.common import sample_failures_line
from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.store.journal import (
    Entry,
    Identity,
    Journal,
    JournalError,
    file_digest,
    journal_path,
    journal_samples,
    read_journal,
)
from pytest_selfopt.suite.config import find_config
from pytest_selfopt.suite.yamlread import ConfigError

if TYPE_CHECKING:
    from pytest_selfopt.loop.policies.base import GatePolicy
    from pytest_selfopt.loop.types import PhasePlan
    from pytest_selfopt.plugin.orchestrate import Prepared

#: Keys of ``workerinput`` (plain builtins over xdist's channel).
SHIPMENT_KEY = "selfopt_shipment"
DONE_KEY = "selfopt_done"
CONFIG_PATH_KEY = "selfopt_config_path"
CONFIG_ERROR_KEY = "selfopt_config_error"
#: The name the controller is registered under (the ``selfopt loop`` probe reads ``prepared``).
CONTROLLER_NAME = "selfopt_controller"
BROKEN = "incomplete session, nothing written:"
#: The one line of a Ctrl-C before any item ran (docs/reliability.md, "... Ctrl-C is one line").
INTERRUPTED_EARLY = "interrupted before any test ran: nothing was run or written"


class Controller:
    def __init__(self, config: pytest.Config, state: SessionState) -> None:
        self.config = config
        self.state = state
        self.prepared: Prepared | None = None
        self.policy: GatePolicy | None = None
        self.collected = Collected()
        self.summary: list[str] = []
        self.board: racing.RaceBoard | None = None
        self.race_note: str | None = None
        self.collection_errors: list[str] = []
        self.journal: Journal | None = None
        self.resumed = 0
        self.replacing = 0  # samples of an earlier journal this session replaces (no resume)
        self.identity: Identity | None = None
        self.start_notes: list[str] = []
        self.prefetch_parts: list[tuple[str, PrefetchStats]] = []  # (xdist worker, its counts)
        self.workers_started = 0  # xdist workers configured (each sends its counts at its end)
        self.started = False  # pytest_sessionstart ran (pytest calls sessionfinish)
        self.session: pytest.Session | None = None
        self.interrupted = False  # a KeyboardInterrupt ended the session
        self.written: list[str] = []  # the committed files this session wrote
        self.shown = False  # the summary was printed (pytest_terminal_summary)

    @property
    def shipment(self) -> Any:
        return self.state.shipment

    def prepare(self) -> None:
        """Read the suite and the committed files and plan the cycle (before collection)."""
        config, state = self.config, self.state
        state.config_path = find_config(config.rootpath, config.getini("selfopt_config") or None)
        if state.config_path is None:
            if state.measuring:
                raise pytest.UsageError(
                    "pytest-selfopt: no suite config found; create benchmarks/selfopt.yaml or "
                    "set selfopt_config in your pytest ini"
                )
            return
        from pytest_selfopt.plugin import orchestrate

        try:
            self.prepared = orchestrate.prepare(
                state.config_path,
                config.rootpath / config.getini("selfopt_baselines"),
                selfopt=bool(config.getoption("selfopt")),
                check=state.check,
                runs=config.getoption("selfopt_runs"),
                seed=config.getoption("selfopt_seed"),
                plan_hook=self._plan_hook,
                lock=bool(config.getoption("selfopt"))
                and not config.getoption("selfopt_dry_run")
                and not config.getoption("collectonly")
                and self.state.shard is None,
            )
        except (ConfigError, FilesError) as exc:
            if state.measuring:
                raise pytest.UsageError(str(exc)) from None
            # A plain run: a broken suite must not break unrelated tests; every llm test
            # fails with this message instead (SessionState.get_runner).
            state.config_error = str(exc)
            return
        state.shipment = self.prepared.shipment
        self.start_notes = list(self.prepared.notes)
        self.policy = self._policy(self.prepared.settings.policy)
        self.identity = self._identity(self.prepared)
        if self.state.shard is not None and config.getoption("selfopt_race_after"):
            raise pytest.UsageError(
                "--selfopt-shard and --selfopt-race-after exclude each other: racing decides "
                "on all of a phase's cases, and a shard holds only some of them"
            )
        if self.state.shard is not None and not config.getoption("selfopt_samples"):
            raise pytest.UsageError(
                "--selfopt-shard needs --selfopt-samples=PATH: where this shard's samples go"
            )
        if config.getoption("selfopt"):
            self._start_journal()
        if config.getoption("selfopt"):
            after, settings = config.getoption("selfopt_race_after"), self.prepared.settings
            self.board, self.race_note = racing.board_for(state.shipment, settings, after)
            state.race = self.board

    def _identity(self, prepared: Prepared) -> Identity:
        """What makes two sessions the same cycle (the journal's and the shards' key)."""
        from pytest_selfopt.plugin.orchestrate import plan_identity

        assert self.state.config_path is not None
        return plan_identity(prepared, self.state.config_path)

    def _start_journal(self) -> None:
        """Every sample goes to the journal as it arrives; ``--selfopt-resume`` starts from
        the journal of the same plan (store/journal.py)."""
        identity = self.identity
        assert identity is not None
        shard = self.state.shard
        path = journal_path(self.config.rootpath, f"{shard.index}of{shard.count}" if shard else "")
        kept: list[Entry] = []
        if self.config.getoption("selfopt_resume"):
            try:
                kept = read_journal(path, identity)
            except JournalError as exc:
                raise pytest.UsageError(str(exc)) from None
            for entry in kept:
                self.collected.add_sample(entry.sample, entry.nodeid, entry.unjudged)
                if self.board is not None:
                    self.board.add_sample(entry.sample)
            self.state.done = frozenset(
                (e.sample.phase, e.sample.spec_id, e.sample.case_id, e.sample.run) for e in kept
            )
            self.resumed = len(kept)
        if self.config.getoption("selfopt_dry_run"):
            return  # writes nothing, the journal included: a broken cycle's stays for its resume
        if not kept:
            self.replacing = journal_samples(path)
        self.journal = Journal(path, identity)
        if kept:
            self.journal.start(kept)

    def _policy(self, name: str) -> GatePolicy:
        """The suite's gate policy: a built-in one, or one a plugin's hook returned."""
        from pytest_selfopt.loop.policies import builtin_policies

        policies = builtin_policies()
        extra: list[Mapping[str, GatePolicy] | None] = (
            self.config.hook.pytest_selfopt_make_policies(config=self.config)
        )
        for found in extra:
            policies.update(found or {})
        if name not in policies:
            assert self.state.config_path is not None
            raise pytest.UsageError(
                f"{self.state.config_path}: policy: unknown policy {name!r}; expected one of: "
                f"{', '.join(sorted(policies))} (plugins add policies with the "
                "pytest_selfopt_make_policies hook)"
            )
        return policies[name]

    def _plan_hook(self, phase: str, state: Any, settings: Any) -> PhasePlan | None:
        result: PhasePlan | None = self.config.hook.pytest_selfopt_generate_plan(
            phase=phase, state=state, settings=settings
        )
        return result

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.started = True
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_keyboard_interrupt(
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> Generator[None, None, None]:
        """A Ctrl-C under selfopt ends in the selfopt summary's lines, without pytest's
        "KeyboardInterrupt" banner and source location (``--full-trace`` keeps them): the
        summary says what was kept and how to resume. Before the session started pytest
        prints nothing at all, so this says it in one line.

        First, before pytest's terminal reporter renders the traceback: a Ctrl-C can land in
        a frame whose line CPython does not know (generated code such as a dataclass's
        ``replace``, "line -1"), and rendering that entry raises TypeError inside pytest,
        which then ends with a 200-line traceback and status 1. Such entries are dropped."""
        if self.state.measuring:
            excinfo.traceback = excinfo.traceback.filter(interrupts.renderable)
        yield
        self._drop_banner(excinfo)

    def _drop_banner(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if not isinstance(excinfo.value, KeyboardInterrupt) or not self.state.measuring:
            return
        if isinstance(excinfo.value, pytest.Session.Interrupted):
            return  # pytest's own stop (collection errors), not a Ctrl-C
        self.interrupted = True
        if self.config.getoption("fulltrace", False):
            return
        # pytest's banner has no public switch: its terminal reporter prints it from the memo
        # at unconfigure (before the session started) or at sessionfinish. Either private
        # name missing (another pytest): the banner stays, nothing breaks.
        reporter: Any = self.config.pluginmanager.get_plugin("terminalreporter")
        if not self.started and hasattr(reporter, "_keyboardinterrupt_memo"):
            reporter._keyboardinterrupt_memo = None
        elif self.started and hasattr(reporter, "_report_keyboardinterrupt"):
            reporter._report_keyboardinterrupt = lambda: None
        if not self.started:
            sys.stderr.write(f"selfopt: {INTERRUPTED_EARLY}\n")
            sys.stderr.flush()

    # -- reports -------------------------------------------------------------------------
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors.append(collection_error(report.nodeid, str(report.longrepr)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.state.measuring:
            return
        payload = payload_of(report)
        if payload is not None:
            if payload.sample is not None:
                sample = payload.sample
                self.collected.add_sample(sample, report.nodeid, payload.unjudged)
                if self.journal is not None:
                    self.journal.append(Entry(sample, report.nodeid, payload.unjudged))
                if self.board is not None:
                    self.board.add_sample(sample)
            if payload.test_bug is not None:
                self.collected.test_bugs.append(payload.test_bug)
                self._stop_for_test_bug(report.nodeid)
            if payload.no_sample:
                self.collected.no_sample.append(report.nodeid)
            if payload.skipped is not None:
                key = payload.skipped
                as_tuple = (key.phase, key.spec_id, key.case_id, key.run)
                self.collected.skipped.add(as_tuple)
                if payload.raced:
                    self.collected.raced.add(as_tuple)
            if payload.race_items is not None and self.board is not None:
                self.board.item_finished(*payload.race_items)
        if report.when == "teardown":
            self.collected.finished_items += 1

    def _stop_for_test_bug(self, nodeid: str) -> None:
        """A test bug makes the cycle's samples worthless: stop sending model calls (each costs
        money) as ``-x`` would, serially and under xdist; the summary names the bug."""
        why = f"a test bug in {nodeid}: the cycle cannot be closed"
        if self.session is not None and not self.session.shouldfail:
            self.session.shouldfail = why  # as -x: pytest stops after this item, exit 1
        dsession = self.config.pluginmanager.getplugin("dsession")
        if dsession is not None and not getattr(dsession, "shouldstop", False):
            dsession.shouldstop = why

    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
    ) -> tuple[str, str, str] | None:
        """Samples are counted as samples, not as passed or failed tests."""
        if not self.state.measuring or report.when != "call":
            return None
        payload = payload_of(report)
        if payload is None or payload.sample is None:
            return None
        if payload.sample.passed:
            return "samples", ".", "SAMPLE ok"
        return "samples", "f", f"SAMPLE {payload.sample.error_kind or 'failed'}"

    # -- end -----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.state.measuring or self.prepared is None:
            return
        if self.config.getoption("collectonly"):
            return
        with interrupts.held_until_written(self.config, self._interrupted_line, self._before_exit):
            self._finish(session, exitstatus)

    def _interrupted_line(self) -> str:
        """What a Ctrl-C after the cycle was closed (or given up) says, in one line."""
        if self.written:
            return "interrupted after the cycle was closed; its files are complete"
        if self.journal is not None and self.journal.count and self.summary[:1] == [BROKEN]:
            return (
                f"interrupted; nothing written; {self.journal.count} sample(s) kept in "
                f"{_shown(self.journal.path)} (--selfopt-resume finishes the cycle)"
            )
        return "interrupted; nothing written"

    def _before_exit(self) -> None:
        """Before the process ends at once: the summary shown (a Ctrl-C during xdist's
        teardown comes before pytest's terminal summary), the journal flushed, the lock
        given back."""
        if not self.shown and self.summary:
            try:
                sys.stdout.write("".join(f"{line}\n" for line in self.summary))
                sys.stdout.flush()
            except (OSError, RuntimeError, ValueError):
                pass
        if self.journal is not None:
            self.journal.close()
        if self.prepared is not None and self.prepared.lock is not None:
            self.prepared.lock.release()

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        closed = self.close(session, exitstatus)
        if self.journal is not None:
            if self.summary and self.summary[0].startswith(BROKEN):
                self.journal.close()
                if self.journal.count:
                    args = _resume_args(self.config.invocation_params.args)
                    command = shlex.join(["pytest", *args, "--selfopt-resume"])
                    self.summary.append(
                        f"kept {self.journal.count} sample(s) in {_shown(self.journal.path)}; "
                        f"finish this cycle without repeating them: {command}"
                    )
            else:
                self.journal.discard()
        nothing_ran = not self.collected.samples and not self.collected.finished_items
        if self.interrupted and nothing_ran and not self.resumed:
            self.summary = [INTERRUPTED_EARLY]  # while collecting: the rest would be noise
        if self.resumed:
            self.summary.insert(
                0, f"resumed: {self.resumed} sample(s) from the journal, not run again"
            )
        if self.replacing and self.journal is not None and self.journal.count:
            self.summary.insert(
                0,
                f"started afresh: the journal of a broken session ({self.replacing} sample(s)) "
                "was replaced (--selfopt-resume would have reused them)",
            )
        shard = self.state.shard is not None
        failures = sample_failures_line(self.collected.samples, shard) if closed else None
        if failures:
            self.summary.append(failures)

    def pytest_unconfigure(self) -> None:
        if self.board is not None:
            self.board.close()
        if self.prepared is not None and self.prepared.lock is not None:
            self.prepared.lock.release()
        interrupts.unanswered_from_here()

    def close(self, session: pytest.Session, exitstatus: int) -> bool:
        """Close the cycle; False when nothing was decided."""
        prepared = self.prepared
        assert prepared is not None
        problems = self.broken(session, exitstatus)
        if problems:
            self.summary = [BROKEN, *(f"  {p}" for p in problems)]
            if any(e.startswith(CONFIG_ERROR_MARK) for e in self.collection_errors):
                session.exitstatus = pytest.ExitCode.USAGE_ERROR  # a bad cases file: bad input
            elif session.exitstatus == pytest.ExitCode.OK or self.collected.test_bugs:
                # a test bug stops the session (pytest says "Interrupted"), yet it is a
                # failed test, not a Ctrl-C: exit 1 (README, exit codes)
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return False
        unjudged = self.collected.unjudged_functions()
        notes = [
            f"not judged, left out of the decisions: {function}: {count} sample(s) asked the "
            "model and never judged the reply; call case.check(reply) (or "
            "llm.record_restraint) in the test"
            for function, count in unjudged.items()
        ]
        samples = self.collected.judged_samples()
        if not samples and exitstatus == pytest.ExitCode.USAGE_ERROR:
            # e.g. a test path that does not exist: pytest says so; "no test used the llm
            # fixture" would send the user looking in the wrong place
            self.summary = ["nothing ran: pytest refused the command line; nothing written"]
            return False
        if not samples:
            self.summary = [
                *notes,
                "no sample recorded: no test used the llm fixture; nothing written"
                if not unjudged
                else "no judged sample: nothing decided, nothing written",
            ]
            session.exitstatus = (
                pytest.ExitCode.NO_TESTS_COLLECTED if not unjudged else pytest.ExitCode.TESTS_FAILED
            )
            return False
        assert self.state.shipment is not None and self.policy is not None
        plans = self.collected.plans(self.state.shipment)
        option = self.config.getoption
        report_path = _path(option("selfopt_report"))
        from pytest_selfopt.plugin import orchestrate

        if self.state.shard is not None:  # one share of the cycle: `selfopt decide` closes it
            from pytest_selfopt.plugin.shard import write_shard

            assert self.identity is not None
            target = Path(option("selfopt_samples"))
            entries = [
                Entry(s, self.collected.function_of_sample(s), False)
                for s in self.collected.samples
            ]
            write_shard(
                target,
                self.identity,
                self.state.shard,
                entries,
                skipped=sorted(self.collected.skipped),
                unjudged=self.collected.unjudged_functions(),
                check=self.state.check,
            )
            self.summary = [
                *notes,
                f"shard {self.state.shard}: {len(entries)} sample(s) written to {_shown(target)}; "
                "nothing written to baselines/ (close the cycle with `selfopt decide`)",
            ]
            session.exitstatus = (
                pytest.ExitCode.TESTS_FAILED if session.testsfailed else pytest.ExitCode.OK
            )
            return True
        if self.state.check:
            checked = orchestrate.check(prepared, plans, samples, report_path=report_path)
            self.summary = [*notes, *checked.lines]
            regressed = checked.regressed or session.testsfailed
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if regressed else pytest.ExitCode.OK
            return False
        dry_run = bool(option("selfopt_dry_run"))
        try:
            # Ctrl-C is held meanwhile (pytest_sessionfinish, quiet_interrupt).
            finished = orchestrate.finish(
                prepared,
                plans,
                samples,
                policy=self.policy,
                dry_run=dry_run,
                report_path=report_path,
                json_path=_path(option("selfopt_json")),
                raced=self.board.raced if self.board else None,
                notes=notes,
            )
        except FilesError as exc:
            self.summary = [f"nothing written: {exc}"]
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return False
        self.written = list(finished.written)
        from pytest_selfopt.report.terminal import terminal_lines

        width = max(self.config.get_terminal_writer().fullwidth, 80)
        self.summary = [
            *notes,
            *terminal_lines(
                finished.outcome, written=finished.written, dry_run=dry_run, width=width
            ),
        ]
        if self.board is not None:
            self.summary += self.board.summary_lines(self.collected.skipped, session.testscollected)
        self.summary += [self.race_note] if self.race_note else []
        self.summary += finished.power + finished.curve
        self.config.hook.pytest_selfopt_cycle_complete(
            outcome=finished.outcome, written=finished.written
        )
        # Ordinary tests keep their meaning: one that failed fails the session.
        session.exitstatus = (
            pytest.ExitCode.TESTS_FAILED if session.testsfailed else pytest.ExitCode.OK
        )
        if finished.undecided:
            self.summary.append("could not decide (no samples): " + "; ".join(finished.undecided))
        if finished.outages:  # said first, so a person in a hurry reads it
            self.summary = [*finished.outages, *self.summary, *finished.outages]
        if finished.failed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return True

    def broken(self, session: pytest.Session, exitstatus: int) -> list[str]:
        """Why this session's samples cannot make a cycle (empty: they can)."""
        if self.collection_errors:  # each worker reports the same error: say it once
            return [f"collection error: {e}" for e in dict.fromkeys(self.collection_errors)]
        problems: list[str] = []
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
            problems.append(f"session ended with {pytest.ExitCode(exitstatus).name}")
        dsession = self.config.pluginmanager.getplugin("dsession")
        stop = session.shouldstop or session.shouldfail or getattr(dsession, "shouldstop", False)
        if stop:
            problems.append(f"session stopped early: {stop}")
        if self.collected.test_bugs:  # named even when the session stopped early (-x)
            problems = []
        # Missing samples are only worth naming when the session itself ran to its end.
        shipment = None if problems else self.state.shipment
        return problems + self.collected.problems(session.testscollected, shipment)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.shown = True
        self.summary = [*self.start_notes, *self.summary]
        if self.summary:
            terminalreporter.write_sep("=", "selfopt")
            for line in self.summary:
                terminalreporter.write_line(line)
        lines = PrefetchStats.merged(self.prefetch_parts).lines() if self.prefetch_parts else []
        lines += self._lost_counts()
        if lines and not self.summary:
            terminalreporter.write_sep("=", "selfopt")
        for line in lines:
            terminalreporter.write_line(line)

    def _lost_counts(self) -> list[str]:
        """A Ctrl-C stops xdist workers before they send their counts of calls made ahead:
        say so rather than print nothing (the counts are not known here)."""
        lost = self.workers_started - len(self.prefetch_parts)
        if not (self.interrupted and lost > 0 and self.prepared is not None):
            return []
        suite = self.prepared.config
        concurrency = requested_concurrency(self.config, lambda: suite.concurrency)
        return [lost_counts_line(concurrency, lost)] if concurrency > 1 else []


class ControllerXdist:
    """xdist-only hooks, registered only when xdist is present (pytest-randomly's pattern)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Each worker's calls made ahead and unconsumed calls (plugin/prefetch.py)."""
        data = getattr(node, "workeroutput", {}).get(PREFETCH_OUTPUT_KEY)
        if data is not None:
            worker = str(getattr(getattr(node, "gateway", None), "id", "worker"))
            self.controller.prefetch_parts.append((worker, PrefetchStats.from_dict(data)))

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Under a cycle or a check, xdist's default ``load`` mode becomes a fixed assignment
        (plugin/schedule.py); any other ``--dist`` is the user's choice and kept."""
        from pytest_selfopt.plugin.schedule import StaticScheduling, wants_static

        state = self.controller.state  # a plain run has a shipment too (the routes)
        if not state.measuring or state.shipment is None or not wants_static(config):
            return None
        return StaticScheduling(config, log)

    def pytest_configure_node(self, node: Any) -> None:
        self.controller.workers_started += 1
        state = self.controller.state
        if state.config_error is not None:
            node.workerinput[CONFIG_ERROR_KEY] = state.config_error
        if state.shipment is not None:
            node.workerinput[SHIPMENT_KEY] = state.shipment.to_dict()
            node.workerinput[DONE_KEY] = [list(key) for key in sorted(state.done)]
            # Relative to the rootdir, with its digest: a worker elsewhere (--tx ssh=...)
            # reads its own checkout's copy, and refuses one that differs.
            assert state.config_path is not None
            rel = os.path.relpath(state.config_path, self.controller.config.rootpath)
            node.workerinput[CONFIG_PATH_KEY] = [rel, file_digest(state.config_path)]
        if self.controller.board is not None:
            # Racing decisions reach the worker over xdist's own channel, never through a
            # path on this machine: a worker may run elsewhere (--tx ssh=...).
            channel = node.gateway.newchannel()
            node.workerinput[racing.CHANNEL_KEY] = channel
            self.controller.board.add_channel(channel)


#: Options that select items (with their value): a resume needs every item of the plan, so
#: the command it suggests drops them, or it could never close the cycle.
SELECTING = ("-k", "-m", "--deselect")


def _resume_args(args: Sequence[str]) -> list[str]:
    """The session's arguments for its resume command: without ``--selfopt-resume`` (added
    once) and without item selection."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in SELECTING:
            skip = True
        elif arg == "--selfopt-resume" or arg.startswith(("-k", "-m", "--deselect=")):
            continue
        else:
            out.append(arg)
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
