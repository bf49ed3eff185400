"""pytest hooks: options, parametrization, samples from workers, the cycle at session end.

The only pytest-aware module, and kept thin: planning and closing a cycle live in
``orchestrate.py`` and the pure ``loop/``; this file moves data between pytest and them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .orchestrate import Prepared

from . import racing
from .argtypes import non_negative_int, positive_int, whole_number
from .cases import CHECK_RECORDER, Case
from .config import ConfigError, find_config, load_config
from .files import FilesError
from .llm import LLM, sample_property
from .loop.types import PhasePlan, Sample
from .nodes import (
    CONFIG_ERROR_MARK,
    case_of,
    collection_error,
    marker_phase,
    module_phase,
    phase_of,
    point_of,
)
from .runner import Runner
from .wire import Collected, Point, Shipment, points

SHIPMENT_KEY = "selfopt_shipment"
PLUGIN_NAME = "selfopt_controller"
LLM_KEY = pytest.StashKey[LLM]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import newhooks

    pluginmanager.add_hookspecs(newhooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("selfopt", "pytest-selfopt: self-optimizing LLM benchmarks")
    group.addoption("--selfopt", action="store_true", help="run one optimization cycle")
    group.addoption(
        "--selfopt-check",
        action="store_true",
        help="measure the routed spec of every phase against the committed baseline; "
        "write nothing; exit 1 on a regression",
    )
    group.addoption(
        "--selfopt-runs", type=positive_int, metavar="N", help="runs per spec (default: config)"
    )
    group.addoption(
        "--selfopt-race-after",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="racing: from run N on, skip the remaining items of a candidate that cannot beat "
        "the baseline any more (0: off, the default)",
    )
    group.addoption("--selfopt-seed", type=whole_number, metavar="N", help="override the seed")
    group.addoption("--selfopt-dry-run", action="store_true", help="whole cycle, write nothing")
    group.addoption("--selfopt-report", metavar="PATH", help="write a Markdown report")
    group.addoption("--selfopt-json", metavar="PATH", help="write every sample and decision as JSON")
    parser.addini("selfopt_config", "suite config, relative to rootdir", default="")
    parser.addini("selfopt_baselines", "folder of the committed files", default="baselines")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "selfopt_phase(name): the phase of a test that uses the llm fixture"
    )
    if config.getoption("selfopt") and config.getoption("selfopt_check"):
        raise pytest.UsageError("--selfopt and --selfopt-check exclude each other: pick one")
    controller = Controller(config)
    config.pluginmanager.register(controller, PLUGIN_NAME)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(controller), "selfopt_xdist")
    if controller.measuring and not controller.is_worker:
        # A failing prompt is data here: the decision matrix says what failed and how, and
        # hundreds of tracebacks would bury it. Explicit --tb / -r choices are kept.
        if config.getoption("tbstyle", "auto") == "auto":
            config.option.tbstyle = "no"
        if config.getoption("reportchars", "fE") == "fE":
            config.option.reportchars = "N"


class XdistHooks:
    """Registered only when xdist is present (pytest-randomly's pattern)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def pytest_configure_node(self, node: Any) -> None:
        if self.controller.config_error is not None:
            node.workerinput["selfopt_config_error"] = self.controller.config_error
        if self.controller.shipment is not None:
            node.workerinput[SHIPMENT_KEY] = self.controller.shipment.to_dict()
            node.workerinput["selfopt_config_path"] = str(self.controller.config_path)
        if self.controller.board is not None:
            path = self.controller.board.temp_file(self.controller.config.add_cleanup)
            node.workerinput[racing.FILE_KEY] = str(path)


class Controller:
    """Per-process plugin state; on the controller it also collects samples and closes the cycle."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.check = bool(config.getoption("selfopt_check"))
        self.measuring = bool(config.getoption("selfopt")) or self.check
        self.config_path: Path | None = None
        self.prepared: Prepared | None = None
        self.shipment: Shipment | None = None
        self.collected = Collected()
        self.runner: Runner | None = None
        self.summary: list[str] = []
        self.board: racing.RaceBoard | None = None  # controller, racing on
        self.race: racing.RaceView | None = None  # the board, or a worker's reader of its file
        self.race_note: str | None = None
        self.config_error: str | None = None  # plain runs: reported by the llm fixture
        self.collection_errors: list[str] = []  # a broken cases file must stop the cycle
        if self.is_worker:
            self.config_error = config.workerinput.get("selfopt_config_error")  # type: ignore[attr-defined]
            data = config.workerinput.get(SHIPMENT_KEY)  # type: ignore[attr-defined]
            if data is not None:
                self.shipment = Shipment.from_dict(data)
                self.config_path = Path(config.workerinput["selfopt_config_path"])  # type: ignore[attr-defined]
            race_file = config.workerinput.get(racing.FILE_KEY)  # type: ignore[attr-defined]
            self.race = racing.RaceReader(Path(race_file)) if race_file else None
        else:
            self.prepare()

    def prepare(self) -> None:
        config = self.config
        self.config_path = find_config(config.rootpath, config.getini("selfopt_config") or None)
        if self.config_path is None:
            if self.measuring:
                raise pytest.UsageError(
                    "pytest-selfopt: no suite config found; create benchmarks/selfopt.yaml or "
                    "set selfopt_config in your pytest ini"
                )
            return
        from . import orchestrate  # lazily: numpy and friends only when a suite exists

        try:
            self.prepared = orchestrate.prepare(
                self.config_path,
                config.rootpath / config.getini("selfopt_baselines"),
                selfopt=bool(config.getoption("selfopt")),
                check=self.check,
                runs=config.getoption("selfopt_runs"),
                seed=config.getoption("selfopt_seed"),
                plan_hook=self._plan_hook,
            )
        except (ConfigError, FilesError) as exc:
            if self.measuring:
                raise pytest.UsageError(str(exc)) from None
            # A plain run: a broken suite must not break unrelated tests; every llm test
            # fails with this message instead (see get_runner).
            self.config_error = str(exc)
            return
        self.shipment = self.prepared.shipment
        from .loop.decide import POLICIES

        config.hook.pytest_selfopt_register_policies(policies=POLICIES)
        if self.prepared.settings.policy not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise pytest.UsageError(
                f"{self.config_path}: policy: unknown policy "
                f"{self.prepared.settings.policy!r}; expected one of: {known}"
            )
        if config.getoption("selfopt"):
            after, settings = config.getoption("selfopt_race_after"), self.prepared.settings
            self.board, self.race_note = racing.board_for(self.shipment, settings, after)
            self.race = self.board

    def _plan_hook(self, phase: str, state: Any, settings: Any) -> PhasePlan | None:
        result: PhasePlan | None = self.config.hook.pytest_selfopt_generate_plan(
            phase=phase, state=state, settings=settings
        )
        return result

    def get_runner(self) -> Runner:
        if self.config_error is not None:
            pytest.fail(self.config_error, pytrace=False)
        if self.runner is None:
            if self.config_path is None or self.shipment is None:
                raise pytest.UsageError(
                    "the llm fixture needs a suite config: create benchmarks/selfopt.yaml or "
                    "set selfopt_config in your pytest ini"
                )
            suite = self.prepared.config if self.prepared else load_config(self.config_path)
            self.runner = Runner(suite.models, suite.variants, seed=self.shipment.seed)
        return self.runner

    # -- collection ----------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "llm" not in metafunc.fixturenames or not self.measuring or self.shipment is None:
            return
        try:
            phase = phase_of(metafunc.definition) or module_phase(metafunc.definition)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        plan = self.shipment.plan_for(phase)
        if plan is not None:
            params = points(plan, self.shipment.runs)
            metafunc.parametrize("selfopt_point", params, ids=[p.id for p in params])

    def pytest_make_parametrize_id(self, config: pytest.Config, val: object) -> str | None:
        return val.id if isinstance(val, Case) else None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Run-major, specs interleaved: drift over the session hits every spec alike."""
        if not self.measuring:
            return
        groups: dict[str, int] = {}
        for item in items:
            point = point_of(item)
            if point is not None:
                case = case_of(item)
                key_ = [point.phase, point.spec.id, case.id if case else "-", point.run]
                item.user_properties.append(("selfopt_point", key_))

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
        if self.race is None:
            return
        points_ = {item: p for item in session.items if (p := point_of(item))}
        keys = {item: (p.phase, p.spec.id, p.run) for item, p in points_.items()}
        counts = Counter(keys.values())
        for item, key_ in keys.items():
            item.user_properties.append((racing.ITEMS_KEY, [*key_, counts[key_]]))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and not self.is_worker:
            self.collection_errors.append(collection_error(report.nodeid, str(report.longrepr)))

    # -- running -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """A raced-out candidate's item is skipped before any fixture or model call."""
        point = point_of(item) if self.race is not None else None
        if point and self.race and (why := self.race.reason_for(point.phase, point.spec.id)):
            pytest.skip(why)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        llm = item.stash.get(LLM_KEY, None)
        if call.when != "call" or llm is None:
            return
        report = outcome.get_result()
        failure = call.excinfo.value if call.excinfo is not None else None
        sample = llm.sample(passed=report.passed, failure=failure, worker=_worker_id())
        if sample is None:
            report.user_properties.append(("selfopt_no_sample", item.nodeid))
            return
        report.user_properties.append(sample_property(sample))
        # Flat, readable properties for --junitxml: junitxml writes the *teardown* report's
        # properties, which come from item.user_properties (the call report's list is a copy).
        for name in ("phase", "spec_id", "case_id", "run", "passed", "error_kind", "latency_s",
                     "total_latency_s", "attempts", "restraint", "input_tokens",
                     "output_tokens", "model", "worker"):  # fmt: skip
            item.user_properties.append((f"selfopt.{name}", getattr(sample, name)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or not self.measuring:
            return
        for name, value in report.user_properties:
            if name == "selfopt_sample" and report.when == "call":
                self.collected.samples.append(Sample.from_dict(value))  # type: ignore[arg-type]
                if self.board is not None:
                    self.board.add_sample(self.collected.samples[-1])
            elif name == racing.ITEMS_KEY and report.when == "teardown" and self.board:
                self.board.item_finished(*value)  # type: ignore[misc]
            elif name == "selfopt_no_sample":
                self.collected.no_sample.append(str(value))
            elif name == "selfopt_point" and report.when == "setup" and report.skipped:
                self.collected.skipped.add(tuple(value))  # type: ignore[arg-type]
        if report.when == "teardown":
            self.collected.finished_items += 1

    # -- end -----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.is_worker or not self.measuring or self.prepared is None:
            return
        if self.config.getoption("collectonly"):
            return
        problems = self.broken(session, exitstatus)
        if problems:
            self.summary = ["incomplete session, nothing written:", *(f"  {p}" for p in problems)]
            if any(e.startswith(CONFIG_ERROR_MARK) for e in self.collection_errors):
                session.exitstatus = pytest.ExitCode.USAGE_ERROR  # a bad cases file: bad input
            elif session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        if not self.collected.samples:
            self.summary = ["no sample recorded: no test used the llm fixture; nothing written"]
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
            return
        assert self.shipment is not None
        plans_ = self.collected.plans(self.shipment)
        option = self.config.getoption
        report_path = _path(option("selfopt_report"))
        from . import orchestrate

        if self.check:
            checked = orchestrate.check(
                self.prepared, plans_, self.collected.samples, report_path=report_path
            )
            self.summary = checked.lines
            session.exitstatus = (
                pytest.ExitCode.TESTS_FAILED if checked.regressed else pytest.ExitCode.OK
            )
            return
        dry_run = bool(option("selfopt_dry_run"))
        try:
            finished = orchestrate.finish(
                self.prepared,
                plans_,
                self.collected.samples,
                dry_run=dry_run,
                report_path=report_path,
                json_path=_path(option("selfopt_json")),
                raced=self.board.raced if self.board else None,
            )
        except FilesError as exc:
            self.summary = [f"nothing written: {exc}"]
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        from . import report

        width = max(self.config.get_terminal_writer().fullwidth, 80)
        self.summary = report.terminal_lines(
            finished.outcome, written=finished.written, dry_run=dry_run, width=width
        )
        if self.board is not None:
            self.summary += self.board.summary_lines(self.collected.skipped, session.testscollected)
        self.summary += [self.race_note] if self.race_note else []
        self.summary += finished.power + finished.curve
        self.config.hook.pytest_selfopt_cycle_complete(
            outcome=finished.outcome, written=finished.written
        )
        session.exitstatus = pytest.ExitCode.OK
        if finished.undecided:
            self.summary.append("could not decide (every sample errored): " + "; ".join(finished.undecided))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

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
        # Missing samples are only worth naming when the session itself ran to its end.
        shipment = None if problems else self.shipment
        return problems + self.collected.problems(session.testscollected, shipment)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary:
            terminalreporter.write_sep("=", "selfopt")
            for line in self.summary:
                terminalreporter.write_line(line)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture
def selfopt_point() -> Point | None:
    """Overridden by direct parametrization under --selfopt; None in plain runs."""
    return None


@pytest.fixture
def llm(request: pytest.FixtureRequest, selfopt_point: Point | None) -> Iterator[LLM]:
    """A model bound to this item's spec: (spec, run) under --selfopt, else the routed spec."""
    controller = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    assert isinstance(controller, Controller)
    runner = controller.get_runner()
    node = request.node
    case = case_of(node)
    if selfopt_point is not None:
        obj = LLM(runner, selfopt_point.spec, selfopt_point.phase, case, selfopt_point.run)
    else:
        phase = (case.phase if case else None) or marker_phase(node) or module_phase(node)
        route = controller.shipment.route_for(phase) if controller.shipment else None
        if route is None:
            raise pytest.UsageError(f"{node.nodeid}: no routed spec for phase {phase!r}")
        obj = LLM(runner, route.spec, phase, case, 1, route.fallbacks)
    node.stash[LLM_KEY] = obj
    token = CHECK_RECORDER.set(obj.on_check)
    try:
        yield obj
    finally:
        CHECK_RECORDER.reset(token)
