"""The pytest entry point: options, the two plugin objects, and the ``llm`` fixture.

``pytest_configure`` builds the session's :class:`SessionState`, registers the
:class:`Controller` in the main process and the :class:`Worker` wherever items run (each
xdist worker, or the main process without xdist), and xdist-only hooks only when xdist is
present (docs/architecture.md, "pytest integration").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# First of the plugin's own imports: a Ctrl-C from here on is one line (plugin/startup.py).
from pytest_selfopt.plugin import startup  # isort: skip
from pytest_selfopt.argtypes import (
    concurrency,
    non_negative_int,
    output_path,
    run_count,
    whole_number,
)
from pytest_selfopt.plugin import heap
from pytest_selfopt.plugin.codec import Point, Shipment
from pytest_selfopt.plugin.controller import (
    CONFIG_ERROR_KEY,
    CONFIG_PATH_KEY,
    CONTROLLER_NAME,
    DONE_KEY,
    SHIPMENT_KEY,
    Controller,
    ControllerXdist,
)
from pytest_selfopt.plugin.items import case_of, marker_phase, module_phase
from pytest_selfopt.plugin.llm import LLM
from pytest_selfopt.plugin.racing import CHANNEL_KEY, ChannelRaceReader
from pytest_selfopt.plugin.shard import parse_shard
from pytest_selfopt.plugin.state import LLM_KEY, STATE_KEY, SessionState
from pytest_selfopt.plugin.worker import Worker, running_item
from pytest_selfopt.store.journal import file_digest
from pytest_selfopt.suite.cases import CHECK_RECORDER

#: Options whose value is a path: pytest reads a separate value as a test path while it looks
#: for the rootdir, before any plugin's options are known (see pytest_load_initial_conftests).
PATH_OPTIONS = ("--selfopt-report", "--selfopt-json", "--selfopt-samples")
#: Options that mean nothing without a cycle or a check: (dest, flag). Refused rather than
#: ignored, so that a plain run is never taken for a shard or a resume.
CYCLE_ONLY = (
    ("selfopt_resume", "--selfopt-resume"),
    ("selfopt_shard", "--selfopt-shard"),
    ("selfopt_samples", "--selfopt-samples"),
    ("selfopt_dry_run", "--selfopt-dry-run"),
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_selfopt.plugin import newhooks

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
        "--selfopt-runs", type=run_count, metavar="N", help="runs per spec (default: config)"
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
    group.addoption(
        "--selfopt-resume",
        action="store_true",
        help="finish a broken cycle: run only the items whose sample is not in the journal "
        "(.pytest_cache/selfopt/journal.jsonl) and close the cycle on all of them",
    )
    group.addoption(
        "--selfopt-report", type=output_path, metavar="PATH", help="write a Markdown report"
    )
    group.addoption(
        "--selfopt-json",
        type=output_path,
        metavar="PATH",
        help="write every sample and decision as JSON",
    )
    group.addoption(
        "--selfopt-concurrency",
        type=concurrency,
        metavar="N",
        help="model calls in flight per process (default: `concurrency` in the suite config, 1)",
    )
    group.addoption(
        "--selfopt-shard",
        type=parse_shard,
        metavar="K/N",
        help="run shard K of N of the cycle's items (every spec of a case on the same shard) "
        "and write its samples to --selfopt-samples; close the cycle with `selfopt decide`",
    )
    group.addoption(
        "--selfopt-samples",
        type=output_path,
        metavar="PATH",
        help="with --selfopt-shard: where to write this shard's samples (JSON lines)",
    )
    parser.addini("selfopt_config", "suite config, relative to rootdir", default="")
    parser.addini("selfopt_baselines", "folder of the committed files", default="baselines")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, args: list[str]) -> None:
    """``--selfopt-json /tmp/x.json`` (a space, not ``=``): pytest looks for the rootdir and
    the ini file before any plugin's options are known, so it took an existing ``/tmp/x.json``
    for a test path, and the rootdir became ``/``. Nothing can be repaired that late; say it
    plainly instead of failing later with "no suite config found"."""
    for i, arg in enumerate(args[:-1]):
        value = args[i + 1]
        if arg in PATH_OPTIONS and Path(value).exists():
            raise pytest.UsageError(
                f"{arg} {value}: write {arg}={value} (with '='): pytest reads a path given "
                "after a space as a test path while it looks for the rootdir, before plugin "
                "options are known, and then finds no suite"
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "selfopt_phase(name): the phase of a test that uses the llm fixture"
    )
    if config.getoption("selfopt") and config.getoption("selfopt_check"):
        raise pytest.UsageError("--selfopt and --selfopt-check exclude each other: pick one")
    if not (config.getoption("selfopt") or config.getoption("selfopt_check")):
        for dest, flag in CYCLE_ONLY:
            if config.getoption(dest):
                raise pytest.UsageError(
                    f"{flag} is for a cycle: add --selfopt (or --selfopt-check), or drop {flag}"
                )
    if config.getoption("selfopt_samples") and not config.getoption("selfopt_shard"):
        raise pytest.UsageError(
            "--selfopt-samples is where a shard writes its samples: add --selfopt-shard K/N, "
            "or drop --selfopt-samples to run the whole cycle"
        )
    check = bool(config.getoption("selfopt_check"))
    state = SessionState(
        measuring=bool(config.getoption("selfopt")) or check,
        check=check,
        shard=config.getoption("selfopt_shard"),
    )
    config.stash[STATE_KEY] = state
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        state.config_error = workerinput.get(CONFIG_ERROR_KEY)
        if (data := workerinput.get(SHIPMENT_KEY)) is not None:
            state.shipment = Shipment.from_dict(data)
            state.config_path, state.config_error = _worker_config(config, workerinput)
        state.done = frozenset(tuple(key) for key in workerinput.get(DONE_KEY, ()))
        if (channel := workerinput.get(CHANNEL_KEY)) is not None:
            state.race = ChannelRaceReader(channel)
        config.pluginmanager.register(Worker(state), "selfopt_worker")
        if state.measuring:  # an xdist worker exists for the session
            config.pluginmanager.register(heap.Freezer(), heap.NAME)
        return
    if startup.owns_process():
        config.pluginmanager.register(heap.Freezer(), heap.NAME)
    controller = Controller(config, state)
    config.pluginmanager.register(controller, CONTROLLER_NAME)
    startup.release()  # the controller handles a Ctrl-C from here on (pytest_keyboard_interrupt)
    controller.prepare()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(ControllerXdist(controller), "selfopt_xdist")
    if not _distributing(config):
        config.pluginmanager.register(Worker(state), "selfopt_worker")


def _worker_config(config: pytest.Config, workerinput: dict[str, Any]) -> tuple[Path, str | None]:
    """The suite config in this worker's checkout, and an error when it is not the one the
    controller planned with (workers may run on other machines)."""
    rel, expected = workerinput[CONFIG_PATH_KEY]
    path = config.rootpath / rel
    # xdist may run a worker from a copy of the rootdir (--tx ...//chdir=DIR --rsyncdir=...):
    # look above its test paths too.
    roots = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    above = [parent / rel for root in roots for parent in [root, *root.parents]]
    for candidate in [path, *above]:
        if file_digest(candidate) == expected:
            return candidate, workerinput.get(CONFIG_ERROR_KEY)
    return path, (
        f"{path}: this xdist worker's suite config is missing or differs from the "
        "controller's; run the workers on the same checkout (rsync it, or check out the "
        "same commit)"
    )


def _distributing(config: pytest.Config) -> bool:
    """Whether xdist runs the items elsewhere (its own test, ``xdist.plugin``)."""
    if not config.pluginmanager.hasplugin("xdist") or config.getoption("collectonly"):
        return False
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


@pytest.fixture
def selfopt_point() -> Point | None:
    """Overridden by direct parametrization under --selfopt; None in plain runs."""
    return None


@pytest.fixture
def llm(selfopt_point: Point | None) -> Iterator[LLM]:
    """A model bound to this item's spec: (spec, run) under --selfopt, else the routed spec.

    The item comes from the worker (``running_item``), not from ``request``: asking for
    ``request`` costs a new fixture definition per item (plugin/worker.py)."""
    node = running_item()
    if node is None:  # the Worker plugin records every item it sets up; never expected
        raise RuntimeError("the llm fixture was set up outside a test item")
    state = node.config.stash[STATE_KEY]
    runner = state.get_runner()
    case = case_of(node)
    if selfopt_point is not None:
        obj = LLM(runner, selfopt_point.spec, selfopt_point.phase, case, selfopt_point.run)
    else:
        phase = (case.phase if case else None) or marker_phase(node) or module_phase(node)
        route = state.shipment.route_for(phase) if state.shipment else None
        if route is None:
            raise pytest.UsageError(f"{node.nodeid}: no routed spec for phase {phase!r}")
        obj = LLM(runner, route.spec, phase, case, 1, route.fallbacks)
    node.stash[LLM_KEY] = obj
    token = CHECK_RECORDER.set(obj.on_check)
    try:
        yield obj
    finally:
        CHECK_RECORDER.reset(token)
