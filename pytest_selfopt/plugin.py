"""pytest hooks: options, parametrization, samples from workers, the cycle at session end.

The only pytest-aware module, and kept thin: planning and closing a cycle live in
``orchestrate.py`` and the pure ``loop/``; this file moves data between pytest and them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from . import orchestrate
from .cases import CHECK_RECORDER, Case
from .config import ConfigError, find_config, load_config
from .files import FilesError
from .llm import LLM, sample_property
from .loop.types import PhasePlan, Sample, Spec
from .orchestrate import Collected, Prepared
from .runner import Runner
from .wire import Shipment

SHIPMENT_KEY = "selfopt_shipment"
PLUGIN_NAME = "selfopt_controller"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import newhooks

    pluginmanager.add_hookspecs(newhooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("selfopt", "pytest-selfopt: self-optimizing LLM benchmarks")
    group.addoption("--selfopt", action="store_true", help="run one optimization cycle")
    group.addoption(
        "--selfopt-runs", type=positive_int, metavar="N", help="runs per spec (default: config runs)"
    )
    group.addoption("--selfopt-seed", type=whole_number, metavar="N", help="override the seed")
    group.addoption(
        "--selfopt-dry-run", action="store_true", help="run the whole cycle, write nothing"
    )
    group.addoption("--selfopt-report", metavar="PATH", help="write the cycle's Markdown report")
    group.addoption("--selfopt-json", metavar="PATH", help="write every sample and decision as JSON")
    parser.addini("selfopt_config", "suite config, relative to rootdir", default="")
    parser.addini("selfopt_baselines", "folder of the committed files", default="baselines")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "selfopt_phase(name): the phase of a test that uses the llm fixture"
    )
    controller = Controller(config)
    config.pluginmanager.register(controller, PLUGIN_NAME)
    if controller.selfopt and not controller.is_worker:
        # Under --selfopt a failing prompt is data: the decision matrix says what failed and
        # how; hundreds of tracebacks would bury it. Explicit --tb / -r choices are kept.
        if config.getoption("tbstyle", "auto") == "auto":
            config.option.tbstyle = "no"
        if config.getoption("reportchars", "fE") == "fE":
            config.option.reportchars = "N"
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(controller), "selfopt_xdist")


class XdistHooks:
    """Registered only when xdist is present (pytest-randomly's pattern)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def pytest_configure_node(self, node: Any) -> None:
        shipment = self.controller.shipment
        if shipment is not None:
            node.workerinput[SHIPMENT_KEY] = shipment.to_dict()
            node.workerinput["selfopt_config_path"] = str(self.controller.config_path)


def _phase_of(definition: Any) -> str | None:
    """The phase of a test: its ``selfopt_phase`` marker, else the phase of its Case params."""
    marker = definition.get_closest_marker("selfopt_phase")
    if marker is not None and marker.args:
        return str(marker.args[0])
    phases = set()
    for mark in definition.iter_markers("parametrize"):
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", ())
        for value in values:
            for v in getattr(value, "values", (value,)) if not isinstance(value, Case) else (value,):
                items = v if isinstance(v, tuple) else (v,)
                phases.update(x.phase for x in items if isinstance(x, Case))
    if len(phases) == 1:
        return phases.pop()
    if len(phases) > 1:
        raise pytest.UsageError(
            f"{definition.nodeid}: cases of several phases ({', '.join(sorted(phases))}) in one "
            "test; split them or mark the test with @pytest.mark.selfopt_phase(NAME)"
        )
    return None


class Point:
    """One (spec, run) of a phase: the parameter every ``llm`` item gets under --selfopt."""

    def __init__(self, phase: str, spec: Spec, label: str, run: int, index: int) -> None:
        self.phase, self.spec, self.label, self.run, self.index = phase, spec, label, run, index

    @property
    def id(self) -> str:
        return f"{self.label}-r{self.run}"

    def __repr__(self) -> str:
        return f"Point({self.phase}, {self.id})"


class Controller:
    """Per-process plugin state. On the controller it also collects samples and closes the cycle."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.selfopt = bool(config.getoption("selfopt"))
        self.config_path: Path | None = None
        self.prepared: Prepared | None = None
        self.shipment: Shipment | None = None
        self.collected = Collected()
        self.runner: Runner | None = None
        self.summary: list[str] = []
        self.setup()

    # -- start -------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        if self.is_worker:
            data = config.workerinput.get(SHIPMENT_KEY)  # type: ignore[attr-defined]
            if data is not None:
                self.shipment = Shipment.from_dict(data)
                self.config_path = Path(config.workerinput["selfopt_config_path"])  # type: ignore[attr-defined]
            return
        configured = config.getini("selfopt_config") or None
        self.config_path = find_config(config.rootpath, configured)
        if self.config_path is None:
            if self.selfopt:
                raise pytest.UsageError(
                    "--selfopt: no suite config found; create benchmarks/selfopt.yaml or set "
                    "selfopt_config in your pytest ini"
                )
            return
        baselines = config.rootpath / config.getini("selfopt_baselines")
        try:
            self.prepared = orchestrate.prepare(
                self.config_path,
                baselines,
                selfopt=self.selfopt,
                runs=config.getoption("selfopt_runs"),
                seed=config.getoption("selfopt_seed"),
                plan_hook=self._plan_hook,
            )
        except (ConfigError, FilesError) as exc:
            raise pytest.UsageError(str(exc)) from None
        self.shipment = self.prepared.shipment

    def _plan_hook(self, phase: str, state: Any, settings: Any) -> PhasePlan | None:
        result: PhasePlan | None = self.config.hook.pytest_selfopt_generate_plan(
            phase=phase, state=state, settings=settings
        )
        return result

    def get_runner(self) -> Runner:
        if self.runner is None:
            if self.config_path is None or self.shipment is None:
                raise pytest.UsageError(
                    "the llm fixture needs a suite config: create benchmarks/selfopt.yaml or set "
                    "selfopt_config in your pytest ini"
                )
            suite = self.prepared.config if self.prepared else load_config(self.config_path)
            self.runner = Runner(suite.models, suite.variants, seed=self.shipment.seed)
        return self.runner

    # -- collection ----------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "llm" not in metafunc.fixturenames or not self.selfopt or self.shipment is None:
            return
        phase = _phase_of(metafunc.definition) or _default_phase(metafunc)
        plan = self.shipment.plan_for(phase)
        if plan is None:
            return
        points = [
            Point(phase, spec, spec.label(plan.baseline), run, index)
            for run in range(1, self.shipment.runs + 1)
            for index, spec in enumerate(plan.specs)
        ]
        metafunc.parametrize("selfopt_point", points, ids=[p.id for p in points])

    def pytest_make_parametrize_id(self, config: pytest.Config, val: object, argname: str) -> str | None:
        if isinstance(val, Case):
            return val.id
        return None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Run-major, specs interleaved: drift over the session hits every spec alike."""
        if not self.selfopt:
            return
        for item in items:
            point = _point_of(item)
            if point is not None:
                case = _case_of_item(item)
                key_ = [point.phase, point.spec.id, case.id if case else "-", point.run]
                item.user_properties.append(("selfopt_point", key_))
        groups: dict[str, int] = {}

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
            position, item = pair
            point = _point_of(item)
            if point is None:
                return (0, 0, 0, position)
            group = item.nodeid.replace(f"-{point.id}]", "]")
            index = groups.setdefault(group, len(groups))
            return (point.run, index, point.index, position)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

    # -- running -------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        outcome = yield
        if call.when != "call":
            return
        llm = item.stash.get(LLM_KEY, None)
        if llm is None:
            return
        report = outcome.get_result()
        failure = call.excinfo.value if call.excinfo is not None else None
        sample = llm.sample(passed=report.passed, failure=failure, worker=_worker_id())
        if sample is None:
            report.user_properties.append(("selfopt_no_sample", item.nodeid))
        else:
            report.user_properties.append(sample_property(sample))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or not self.selfopt:
            return
        for name, value in report.user_properties:
            if name == "selfopt_sample":
                self.collected.samples.append(Sample.from_dict(value))
            elif name == "selfopt_no_sample":
                self.collected.no_sample.append(value)
            elif name == "selfopt_point" and report.when == "setup" and report.skipped:
                self.collected.skipped.add(tuple(value))
        if report.when == "teardown":
            self.collected.finished_items += 1

    # -- end -----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.is_worker or not self.selfopt or self.prepared is None:
            return
        problems = self.broken(session, exitstatus)
        if problems:
            self.summary = ["cycle incomplete, nothing written:", *(f"  {p}" for p in problems)]
            if session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        if not self.collected.samples:
            self.summary = ["no sample recorded: no test used the llm fixture; nothing written"]
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
            return
        plans = {p: self.shipment.plan_for(p) for p in self.collected.phases()}  # type: ignore[union-attr]
        option = self.config.getoption
        try:
            finished = orchestrate.finish(
                self.prepared,
                {p: plan for p, plan in plans.items() if plan is not None},
                self.collected.samples,
                dry_run=bool(option("selfopt_dry_run")),
                report_path=_path(option("selfopt_report")),
                json_path=_path(option("selfopt_json")),
            )
        except FilesError as exc:
            self.summary = [f"nothing written: {exc}"]
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        from . import report

        width = self.config.get_terminal_writer().fullwidth
        self.summary = report.terminal_lines(
            finished.outcome,
            written=finished.written,
            dry_run=bool(option("selfopt_dry_run")),
            width=max(width, 80),
        )
        self.config.hook.pytest_selfopt_cycle_complete(
            outcome=finished.outcome, written=finished.written
        )
        if finished.undecided:
            self.summary.append(
                "could not decide (every sample errored): " + "; ".join(finished.undecided)
            )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            session.exitstatus = pytest.ExitCode.OK

    def broken(self, session: pytest.Session, exitstatus: int) -> list[str]:
        """Why this session's samples cannot make a cycle (empty: they can)."""
        problems: list[str] = []
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
            problems.append(f"session ended with {pytest.ExitCode(exitstatus).name}")
        dsession = self.config.pluginmanager.getplugin("dsession")
        stop = session.shouldstop or session.shouldfail or getattr(dsession, "shouldstop", False)
        if stop:
            problems.append(f"session stopped early: {stop}")
        if self.collected.finished_items < session.testscollected:
            problems.append(
                f"{session.testscollected - self.collected.finished_items} of "
                f"{session.testscollected} items did not finish (crashed worker?)"
            )
        if self.collected.no_sample:
            problems.append(
                f"{len(self.collected.no_sample)} test(s) used llm but never called llm.ask, "
                f"e.g. {self.collected.no_sample[0]}"
            )
        if not problems and self.shipment is not None:
            plans = {p: self.shipment.plan_for(p) for p in self.collected.phases()}
            problems += orchestrate.missing_samples(
                {k: v for k, v in plans.items() if v is not None}, self.collected, self.shipment.runs
            )
        return problems

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.summary:
            return
        terminalreporter.write_sep("=", "selfopt")
        for line in self.summary:
            terminalreporter.write_line(line)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _default_phase(metafunc: pytest.Metafunc) -> str:
    """No marker and no Case params: the module name without ``test_``."""
    name = Path(str(metafunc.definition.path)).stem
    return name[5:] if name.startswith("test_") else name


def _point_of(item: pytest.Item) -> Point | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    point = callspec.params.get("selfopt_point")
    return point if isinstance(point, Point) else None


LLM_KEY = pytest.StashKey[LLM]()


@pytest.fixture
def selfopt_point() -> Point | None:
    """Overridden by direct parametrization under --selfopt; None in plain runs."""
    return None


@pytest.fixture
def llm(request: pytest.FixtureRequest, selfopt_point: Point | None) -> Iterator[LLM]:
    """A model bound to this item's spec: the routed spec in plain runs, (spec, run) under --selfopt."""
    controller: Controller = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    runner = controller.get_runner()
    case = _case_of(request)
    node = request.node
    if selfopt_point is not None:
        obj = LLM(runner, selfopt_point.spec, selfopt_point.phase, case, selfopt_point.run)
    else:
        phase = (case.phase if case else None) or _marker_phase(node) or _module_phase(node)
        route = controller.shipment.route_for(phase)  # type: ignore[union-attr]
        assert route is not None
        obj = LLM(runner, route.spec, phase, case, 1, route.fallbacks)
    node.stash[LLM_KEY] = obj
    token = CHECK_RECORDER.set(obj.on_check)
    try:
        yield obj
    finally:
        CHECK_RECORDER.reset(token)


def _case_of(request: pytest.FixtureRequest) -> Case | None:
    return _case_of_item(request.node)


def _case_of_item(node: Any) -> Case | None:
    callspec = getattr(node, "callspec", None)
    if callspec is None:
        return None
    cases: Sequence[Case] = [v for v in callspec.params.values() if isinstance(v, Case)]
    return cases[0] if len(cases) == 1 else None


def _marker_phase(node: Any) -> str | None:
    marker = node.get_closest_marker("selfopt_phase")
    return str(marker.args[0]) if marker is not None and marker.args else None


def _module_phase(node: Any) -> str:
    name = Path(str(node.path)).stem
    return name[5:] if name.startswith("test_") else name
