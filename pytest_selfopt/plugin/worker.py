"""The worker side of a session: collects the ``llm`` items over (spec, run), orders them,
skips raced-out ones, keeps the next items' calls in flight with concurrency
(``prefetch.Prefetcher``), and puts each item's sample on its report.

Registered in every process that runs items: each xdist worker, and the main process of a
session without xdist (docs/architecture.md, "pytest integration"). It never decides
anything: the controller does, from the reports.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from collections.abc import Generator
from contextvars import ContextVar
from typing import Any

import pytest

from pytest_selfopt.plugin.codec import ItemKey, ReportPayload, TestBug, attach, points
from pytest_selfopt.plugin.controller import CONTROLLER_NAME
from pytest_selfopt.plugin.items import case_of, module_phase, phase_of, point_of
from pytest_selfopt.plugin.llm import LLM, TransportError
from pytest_selfopt.plugin.prefetch import (
    OUTPUT_KEY,
    Prefetcher,
    PrefetchStats,
    WorkerQueue,
    requested_concurrency,
)
from pytest_selfopt.plugin.shard import select_items
from pytest_selfopt.plugin.state import LLM_KEY, SessionState
from pytest_selfopt.suite.cases import Case
from pytest_selfopt.suite.config import check_item_count, load_config
from pytest_selfopt.suite.yamlread import ConfigError

#: Fields of a sample shown as ``--junitxml`` properties, for people reading CI results.
JUNIT_FIELDS = (
    "phase", "spec_id", "case_id", "run", "passed", "error_kind", "latency_s",
    "total_latency_s", "attempts", "restraint", "input_tokens", "output_tokens", "model",
    "worker",
)  # fmt: skip

RACE_COUNT_KEY = pytest.StashKey[tuple[str, str, int, int]]()
RACED_KEY = pytest.StashKey[bool]()
#: The item being set up or run in this process: the ``llm`` fixture reads it here rather than
#: asking for ``request`` (pytest builds a new request fixture definition for every fixture
#: that asks for one: about 12 % of a test's time at high concurrency, perf's measurement).
_RUNNING: ContextVar[pytest.Item | None] = ContextVar("selfopt_running_item", default=None)


def running_item() -> pytest.Item | None:
    return _RUNNING.get()


def _variants(definition: Any) -> int:
    """How many items one function's own ``parametrize`` marks make (their product)."""
    count = 1
    for mark in definition.iter_markers("parametrize"):
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", ())
        try:
            count *= max(len(values), 1)
        except TypeError:  # an iterator: pytest counts it itself
            pass
    return count


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class Worker:
    def __init__(self, state: SessionState) -> None:
        self.state = state
        self.prefetcher: Prefetcher | None = None
        self.prefetch_checked = False  # whether this process calls ahead was settled
        self.prefetch_stats: PrefetchStats | None = None
        self.planned_items = 0  # llm items parametrized so far in this process

    # -- collection ----------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        shipment = self.state.shipment
        if "llm" not in metafunc.fixturenames or not self.state.measuring or shipment is None:
            return
        try:
            phase = phase_of(metafunc.definition) or module_phase(metafunc.definition)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        plan = shipment.plan_for(phase)
        if plan is not None:
            params = points(plan, shipment.runs)
            # Bounded before pytest makes the items: runs x specs x cases can be millions
            # (docs/reliability.md, "Limits"); the error is this module's collection error.
            self.planned_items += _variants(metafunc.definition) * len(params)
            if self.state.config_path is not None:
                check_item_count(self.state.config_path, self.planned_items, shipment.runs)
            metafunc.parametrize("selfopt_point", params, ids=[p.id for p in params])

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        """A bad cases file (or too many items) is one line naming the file and the key,
        not a traceback through the loader: the message already says all there is."""
        report = yield
        call = getattr(report, "call", None)
        excinfo = getattr(call, "excinfo", None)
        if (
            report.failed
            and excinfo is not None
            and isinstance(excinfo.value, ConfigError)
            and not collector.config.getoption("fulltrace", False)
        ):
            report.longrepr = f"{type(excinfo.value).__name__}: {excinfo.value}"
        return report

    def pytest_make_parametrize_id(self, config: pytest.Config, val: object) -> str | None:
        return val.id if isinstance(val, Case) else None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Run-major, specs interleaved: drift over the session hits every spec alike."""
        if not self.state.measuring:
            return
        if self.state.shard is not None:  # --selfopt-shard: keep this shard's cases only
            mine = select_items(items, self.state.shard)
            if len(mine) < len(items):
                chosen = set(map(id, mine))
                items[0].config.hook.pytest_deselected(
                    items=[i for i in items if id(i) not in chosen]
                )
                items[:] = mine
        if self.state.done:  # --selfopt-resume: the journal has these samples already
            keep: list[pytest.Item] = []
            done: list[pytest.Item] = []
            for item in items:
                (done if _item_key(item) in self.state.done else keep).append(item)
            if done:
                items[0].config.hook.pytest_deselected(items=done)
                items[:] = keep
        groups: dict[str, int] = {}

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
            position, item = pair
            point = point_of(item)
            if point is None:
                return (0, 0, 0, position)
            group = groups.setdefault(item.nodeid.replace(f"-{point.id}]", "]"), len(groups))
            return (point.run, group, point.index, position)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Racing: each item says how many items its (phase, spec, run) has (after -k
        deselection), so the controller knows when a run is complete, even under xdist."""
        if self.state.race is None:
            return
        keys = {
            item: (p.phase, p.spec.id, p.run) for item in session.items if (p := point_of(item))
        }
        counts = Counter(keys.values())
        for item, (phase, spec_id, run) in keys.items():
            item.stash[RACE_COUNT_KEY] = (phase, spec_id, run, counts[(phase, spec_id, run)])

    # -- running -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Concurrency: the next items' model calls are made ahead, in item order."""
        if not self.prefetch_checked and "llm" in getattr(item, "fixturenames", ()):
            self.prefetch_checked = True
            self.prefetcher = self._make_prefetcher(item.config)
        if self.prefetcher is not None:
            self.prefetcher.before(item, nextitem)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        value = yield
        if self.prefetcher is not None and fixturedef.argname == "llm" and isinstance(value, LLM):
            self.prefetcher.attach(request.node, value)
        return value

    def _make_prefetcher(self, config: pytest.Config) -> Prefetcher | None:
        """A pool of N calls in flight, when N > 1 (``--selfopt-concurrency``, else the
        suite's ``concurrency``) and there is a suite to call."""
        state = self.state
        if state.config_error is not None or state.config_path is None or state.shipment is None:
            return None
        path = state.config_path
        try:
            concurrency = requested_concurrency(config, lambda: load_config(path).concurrency)
        except ConfigError:
            return None  # the llm fixture reports it
        if concurrency <= 1:
            return None
        workerinput = getattr(config, "workerinput", None)
        return Prefetcher(
            state.get_runner(),
            concurrency,
            state.shipment,
            measuring=state.measuring,
            race=state.race,
            race_after=int(config.getoption("selfopt_race_after", 0) or 0),
            queue=WorkerQueue.find(config) if workerinput is not None else None,
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """A raced-out candidate's item is skipped before any fixture or model call."""
        _RUNNING.set(item)  # before any fixture of the item is set up
        race = self.state.race
        point = point_of(item) if race is not None else None
        if point and race and (why := race.reason_for(point.phase, point.spec.id)):
            item.stash[RACED_KEY] = True
            pytest.skip(why)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> pytest.TestReport | None:
        """A failed reply check under --selfopt is data: build its report without pytest's
        long traceback (most of a cycle's CPU went into rendering it, only to be dropped).
        Test bugs and ordinary tests keep pytest's own report."""
        failure = call.excinfo.value if call.excinfo is not None else None
        if (
            call.when != "call"
            or not self.state.measuring
            or LLM_KEY not in item.stash
            or not isinstance(failure, AssertionError | TransportError)
        ):
            return None
        sections = [(f"Captured {key} {when}", text) for when, key, text in item._report_sections]
        return pytest.TestReport(
            item.nodeid,
            item.location,
            {x: 1 for x in item.keywords},
            "failed",
            f"{type(failure).__name__}: {failure}"[:500],
            "call",
            sections,
            call.duration,
            call.start,
            call.stop,
            user_properties=item.user_properties,
        )

    @pytest.hookimpl(wrapper=True, specname="pytest_runtest_makereport")
    def pytest_runtest_makereport_payload(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A new-style wrapper: a Ctrl-C landing in it ends the session as anywhere else
        (an old-style one made pluggy print a PluggyTeardownRaisedWarning about it)."""
        report = yield
        point = point_of(item)
        if call.when in ("setup", "call") and report.skipped and point is not None:
            case = case_of(item)
            key = ItemKey(point.phase, point.spec.id, case.id if case else "-", point.run)
            attach(report, ReportPayload(skipped=key, raced=item.stash.get(RACED_KEY, False)))
        if call.when == "teardown" and RACE_COUNT_KEY in item.stash:
            attach(report, ReportPayload(race_items=item.stash[RACE_COUNT_KEY]))
        llm = item.stash.get(LLM_KEY, None)
        if call.when == "call" and llm is not None:
            self._sample(item, call, report, llm)
        if call.when == "teardown" and self.prefetcher is not None:
            self.prefetcher.after(item, llm)
        return report

    def _sample(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport, llm: LLM
    ) -> None:
        failure = call.excinfo.value if call.excinfo is not None else None
        if failure is not None and not isinstance(failure, AssertionError | TransportError):
            if isinstance(failure, pytest.skip.Exception | pytest.xfail.Exception):
                return
            # A bug in the test, not a property of the model: the cycle must not score it.
            attach(report, ReportPayload(test_bug=_test_bug(item, call)))
            return
        sample = llm.sample(passed=report.passed, failure=failure, worker=worker_id())
        if sample is None:
            attach(report, ReportPayload(no_sample=True))
            return
        judged = llm.check is not None or llm.explicit_restraint is not None
        judged = judged or isinstance(failure, AssertionError)
        attach(report, ReportPayload(sample=sample, unjudged=not judged))
        if self.state.measuring:
            # Under --selfopt a failed reply check is data, not a broken test: the report
            # passes (pytest's closing line and --junitxml count tests, not samples) and the
            # controller's summary says how many samples failed (docs/architecture.md).
            report.outcome = "passed"
            report.longrepr = None
        # junitxml writes the *teardown* report's properties, copied from the item's.
        for name in JUNIT_FIELDS:
            item.user_properties.append((f"selfopt.{name}", getattr(sample, name)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        stats = self.prefetcher.close() if self.prefetcher is not None else None
        self.prefetcher = None
        runner = self.state.runner
        notes = runner.limit_notes() if runner is not None else []
        if notes:  # 429 slow-downs are said with or without concurrency
            stats = stats or PrefetchStats()
            stats.notes = notes
        self.state.close()
        self.prefetch_stats = stats
        workeroutput = getattr(session.config, "workeroutput", None)
        if stats is not None and isinstance(workeroutput, dict):  # the controller sums them
            workeroutput[OUTPUT_KEY] = stats.to_dict()

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Calls made ahead and unconsumed calls, after the controller's lines."""
        lines = self.prefetch_stats.lines() if self.prefetch_stats is not None else []
        if not lines:
            return
        controller = terminalreporter.config.pluginmanager.get_plugin(CONTROLLER_NAME)
        if not getattr(controller, "summary", None):
            terminalreporter.write_sep("=", "selfopt")
        for line in lines:
            terminalreporter.write_line(line)


def _item_key(item: pytest.Item) -> tuple[str, str, str, int] | None:
    point, case = point_of(item), case_of(item)
    if point is None:
        return None
    return (point.phase, point.spec.id, case.id if case else "-", point.run)


def _test_bug(item: pytest.Item, call: pytest.CallInfo[None]) -> TestBug:
    assert call.excinfo is not None
    exc = call.excinfo.value
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    frames = traceback.extract_tb(call.excinfo.tb)
    path = str(item.path)
    mine = [f for f in frames if f.filename == path] or frames
    where = f"{os.path.relpath(mine[-1].filename)}:{mine[-1].lineno}" if mine else item.nodeid
    return TestBug(item.nodeid, text, where)
