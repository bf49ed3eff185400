"""pytest hooks: options, parametrization, samples from workers, the cycle at session end.

The only pytest-aware module, and kept thin: planning and closing a cycle live in
``orchestrate.py`` and the pure ``loop/``; this file moves data between pytest and them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .orchestrate import Prepared

from .cases import CHECK_RECORDER, Case
from .config import ConfigError, find_config, load_config
from .files import FilesError
from .llm import LLM, sample_property
from .loop.types import PhasePlan, Sample
from .runner import Runner
from .wire import Collected, Point, Shipment, missing_samples, points

SHIPMENT_KEY = "selfopt_shipment"
PLUGIN_NAME = "selfopt_controller"
LLM_KEY = pytest.StashKey[LLM]()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
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
        "--selfopt-check",
        action="store_true",
        help="measure the routed spec of every phase against the committed baseline; "
        "write nothing; exit 1 on a regression",
    )
    group.addoption(
        "--selfopt-runs", type=positive_int, metavar="N", help="runs per spec (default: config)"
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
        if self.controller.shipment is not None:
            node.workerinput[SHIPMENT_KEY] = self.controller.shipment.to_dict()
            node.workerinput["selfopt_config_path"] = str(self.controller.config_path)


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
        if self.is_worker:
            data = config.workerinput.get(SHIPMENT_KEY)  # type: ignore[attr-defined]
            if data is not None:
                self.shipment = Shipment.from_dict(data)
                self.config_path = Path(config.workerinput["selfopt_config_path"])  # type: ignore[attr-defined]
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
            raise pytest.UsageError(str(exc)) from None
        self.shipment = self.prepared.shipment
        from .loop.decide import POLICIES

        config.hook.pytest_selfopt_register_policies(policies=POLICIES)
        if self.prepared.settings.policy not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise pytest.UsageError(
                f"{self.config_path}: policy: unknown policy "
                f"{self.prepared.settings.policy!r}; expected one of: {known}"
            )

    def _plan_hook(self, phase: str, state: Any, settings: Any) -> PhasePlan | None:
        result: PhasePlan | None = self.config.hook.pytest_selfopt_generate_plan(
            phase=phase, state=state, settings=settings
        )
        return result

    def get_runner(self) -> Runner:
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
        phase = _phase_of(metafunc.definition) or _module_phase(metafunc.definition)
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
            point = _point_of(item)
            if point is not None:
                case = _case_of(item)
                key_ = [point.phase, point.spec.id, case.id if case else "-", point.run]
                item.user_properties.append(("selfopt_point", key_))

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
            position, item = pair
            point = _point_of(item)
            if point is None:
                return (0, 0, 0, position)
            group = groups.setdefault(item.nodeid.replace(f"-{point.id}]", "]"), len(groups))
            return (point.run, group, point.index, position)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

    # -- running -------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Iterator[None]:
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
        # Flat, readable properties for --junitxml and other report consumers.
        for name in ("passed", "error_kind", "latency_s", "attempts", "restraint", "model"):
            report.user_properties.append((f"selfopt.{name}", getattr(sample, name)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or not self.measuring:
            return
        for name, value in report.user_properties:
            if name == "selfopt_sample" and report.when == "call":
                self.collected.samples.append(Sample.from_dict(value))
            elif name == "selfopt_no_sample":
                self.collected.no_sample.append(value)
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
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        if not self.collected.samples:
            self.summary = ["no sample recorded: no test used the llm fixture; nothing written"]
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
            return
        assert self.shipment is not None
        plans = {p: self.shipment.plan_for(p) for p in self.collected.phases()}
        plans_ = {p: plan for p, plan in plans.items() if plan is not None}
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
        self.config.hook.pytest_selfopt_cycle_complete(
            outcome=finished.outcome, written=finished.written
        )
        session.exitstatus = pytest.ExitCode.OK
        if finished.undecided:
            self.summary.append("could not decide (every sample errored): " + "; ".join(finished.undecided))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

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
            problems += missing_samples(
                {k: v for k, v in plans.items() if v is not None}, self.collected, self.shipment.runs
            )
        return problems

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary:
            terminalreporter.write_sep("=", "selfopt")
            for line in self.summary:
                terminalreporter.write_line(line)


def _phase_of(definition: Any) -> str | None:
    """A test's phase: its ``selfopt_phase`` marker, else the phase of its Case params."""
    name = _marker_phase(definition)
    if name is not None:
        return name
    phases = set()
    for mark in definition.iter_markers("parametrize"):
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", ())
        for value in values:
            for v in value.values if hasattr(value, "values") and not isinstance(value, Case) else (value,):
                items = v if isinstance(v, tuple) else (v,)
                phases.update(x.phase for x in items if isinstance(x, Case))
    if len(phases) > 1:
        raise pytest.UsageError(
            f"{definition.nodeid}: cases of several phases ({', '.join(sorted(phases))}) in one "
            "test; split them or mark the test with @pytest.mark.selfopt_phase(NAME)"
        )
    return phases.pop() if phases else None


def _marker_phase(node: Any) -> str | None:
    marker = node.get_closest_marker("selfopt_phase")
    return str(marker.args[0]) if marker is not None and marker.args else None


def _module_phase(node: Any) -> str:
    """No marker and no Case params: the module name without ``test_``."""
    name = Path(str(node.path)).stem
    return name.removeprefix("test_")


def _point_of(item: Any) -> Point | None:
    callspec = getattr(item, "callspec", None)
    point = callspec.params.get("selfopt_point") if callspec is not None else None
    return point if isinstance(point, Point) else None


def _case_of(node: Any) -> Case | None:
    callspec = getattr(node, "callspec", None)
    if callspec is None:
        return None
    cases = [v for v in callspec.params.values() if isinstance(v, Case)]
    return cases[0] if len(cases) == 1 else None


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
    controller: Controller = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    runner = controller.get_runner()
    node = request.node
    case = _case_of(node)
    if selfopt_point is not None:
        obj = LLM(runner, selfopt_point.spec, selfopt_point.phase, case, selfopt_point.run)
    else:
        phase = (case.phase if case else None) or _marker_phase(node) or _module_phase(node)
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
