"""Suites inside a pytester directory, and one way to run a session on them.

Plugin tests run in-process (``pytester.runpytest``) on :func:`mini_suite`, a small inline copy
of the example's scenarios (54 items instead of 420, no interpreter start); only a few
end-to-end tests copy the real example (:func:`copy_example`) and start a subprocess.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_selfopt.store.parse import parse_history

EXAMPLE = Path(__file__).resolve().parents[1] / "benchmarks"
FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
#: One optimization cycle of the suite in ``benchmarks/``.
CYCLE = ("--selfopt", "-p", "no:cacheprovider", "benchmarks")
#: A regression check of the suite in ``benchmarks/``.
CHECK = ("--selfopt-check", "-p", "no:cacheprovider", "benchmarks")
#: Plain runs (no cycle).
PLAIN = ("-p", "no:cacheprovider", "benchmarks")
XDIST = ("-n", "2")
#: Plugins of the dev environment that the sessions under test never use: hypothesis's imports
#: hypothesis at the end of every session (~1.5 s of CPU per process: every subprocess and xdist
#: worker), anyio's and pytest-benchmark's cost a few tenths more. tests/conftest.py puts them
#: in ``PYTEST_ADDOPTS`` for every pytester session (in-process, subprocess, xdist workers);
#: for other subprocesses: ``PYTEST_ADDOPTS=" ".join(NO_DEV_PLUGINS)``.
NO_DEV_PLUGINS = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:benchmark")

#: The example's scenarios on 3 cases a phase and 3 runs (docs/loop.md walks the same story):
#: cycle 1 promotes variant=atomic in ``atomic`` (0.333 -> 0.667, ``timeout_s=120`` is no
#: improvement) and finds ``extended`` capability-limited (route to claude-haiku); cycle 2
#: measures claude-haiku, whose first 4 calls of a process are cold: HOLD, enable warm-up.
MINI_CONFIG: dict[str, Any] = {
    "seed": 7,
    "runs": 3,
    "policy": "seed",
    "models": {
        "lfm": {
            "provider": "sim",
            "skill": {"atomic": 0.5, "extended": 0.1},
            "variant_bonus": {"atomic": 0.15},
            "latency_s": 0.6,
        },
        "claude-haiku": {
            "provider": "sim",
            "skill": {"atomic": 0.95, "extended": 0.95},
            "latency_s": 1.1,
            "cold_start_calls": 4,
        },
    },
    "fallback_chain": ["lfm", "claude-haiku"],
    "variants": {
        "native_api": "{prompt}",
        "atomic": "Answer with the final answer only.\n\n{prompt}",
    },
    "initial": {
        "model": "lfm",
        "variant": "native_api",
        "timeout_s": 60,
        "retries": 1,
        "isolation": "i0",
        "warmup": False,
    },
    "search": {"variant": ["native_api", "atomic"], "timeout_s": [60, 120]},
    "max_candidates": 2,
    "gates": {"min_samples": 3, "max_variance": 0.0025, "min_restraint": 0.80},
}

MINI_CASES = {
    "atomic": """\
phase: atomic
cases:
  - id: capital-france
    prompt: What is the capital of France?
    expect: {equals: Paris}
    restraint: {max_words: 5}
    sim: {difficulty: 0.1}
  - id: prime-after-89
    prompt: What is the smallest prime number greater than 89?
    expect: {number: 97}
    restraint: {max_words: 5}
    sim: {difficulty: 0.6}
  - id: iso-date
    prompt: Write the date 4 July 1776 in ISO 8601 format.
    expect: {regex: '\\b1776-07-04\\b'}
    answer: 1776-07-04
    restraint: {max_words: 4}
    sim: {difficulty: 0.9}
""",
    "extended": """\
phase: extended
cases:
  - id: train-meeting
    prompt: Two trains 300 km apart drive toward each other at 60 and 40 km/h. After how many hours do they meet?
    expect: {number: 3}
    sim: {difficulty: 0.3}
  - id: apples-left
    prompt: I had 12 apples, gave away 5 and ate none. How many are left?
    expect: {number: 7}
    sim: {difficulty: 0.5}
  - id: percent-change
    prompt: A price goes from 80 to 100. By what percent did it rise?
    expect: {number: 25}
    sim: {difficulty: 0.7}
""",
}

TEST_FILE = """\
import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("{phase}.yaml"))
def test_{phase}(case, llm):
    case.check(llm.ask(case.prompt))
"""


def mini_suite(
    pytester: pytest.Pytester,
    *,
    config: dict[str, Any] | None = None,
    cases: dict[str, str] | None = None,
    **overrides: Any,
) -> Path:
    """A suite in ``pytester.path/benchmarks``: ``config`` (default :data:`MINI_CONFIG`) with
    top-level keys overridden, and per phase its cases file and a test file (default: the mini
    suite's phases)."""
    return write_suite(pytester.path / "benchmarks", config=config, cases=cases, **overrides)


def write_suite(
    bench: Path,
    *,
    config: dict[str, Any] | None = None,
    cases: dict[str, str] | None = None,
    **overrides: Any,
) -> Path:
    """:func:`mini_suite` into any folder ``bench`` (for tests that run commands themselves)."""
    bench.mkdir(parents=True)
    data = {**(config or MINI_CONFIG), **overrides}
    (bench / "selfopt.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for phase, text in (cases or MINI_CASES).items():
        (bench / f"{phase}.yaml").write_text(text)
        (bench / f"test_{phase}.py").write_text(TEST_FILE.replace("{phase}", phase))
    return bench


def run(pytester: pytest.Pytester, *args: str, **kwargs: Any) -> pytest.RunResult:
    """One in-process session."""
    return pytester.runpytest(*args, **kwargs)


def run_subprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """One session in its own interpreter, as users start it (for end-to-end tests)."""
    return pytester.runpytest_subprocess(*args)


def run_as_from_a_terminal(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` with SIGINT as a terminal leaves it (a background job of a
    shell without job control starts with SIGINT ignored), for tests that send a Ctrl-C."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        check=False,
    )


def copy_example(pytester: pytest.Pytester, **overrides: Any) -> Path:
    """The repository's example suite in ``pytester.path/benchmarks``; config keys overridden."""
    target = pytester.path / "benchmarks"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    if overrides:
        path = target / "selfopt.yaml"
        config = yaml.safe_load(path.read_text())
        config.update(overrides)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def set_config(pytester: pytest.Pytester, **changes: Any) -> None:
    """Update ``benchmarks/selfopt.yaml``; ``models``/``initial`` entries are merged key by key."""
    path = pytester.path / "benchmarks" / "selfopt.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key in ("models", "initial"):
            for name, entry in value.items():
                if isinstance(entry, dict):
                    config[key].setdefault(name, {}).update(entry)
                else:
                    config[key][name] = entry
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def snapshot(pytester: pytest.Pytester) -> dict[str, bytes]:
    folder = pytester.path / "baselines"
    return {n: (folder / n).read_bytes() for n in FILES if (folder / n).exists()}


def reset(pytester: pytest.Pytester) -> None:
    """Forget every committed file: the next cycle starts from the config's initial spec."""
    shutil.rmtree(pytester.path / "baselines", ignore_errors=True)


def history(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    """The cycles of history.json as the loop reads them back (either layout on disk)."""
    path = pytester.path / "baselines" / "history.json"
    return parse_history(path.read_text(encoding="utf-8"), str(path))


def decisions(entry: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(phase, label) -> verdict, for comparing cycles."""
    return {
        (phase, c["label"]): c["decision"]["verdict"]
        for phase, rec in entry["phases"].items()
        for c in rec["candidates"]
    }


def recommendations(entry: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (phase, r["action"], str(r["value"]))
        for phase, rec in entry["phases"].items()
        for r in rec["recommendations"]
    }


def diagnosis_kinds(entry: dict[str, Any], phase: str, *, cases_only: bool = False) -> set[str]:
    return {
        d["kind"] for d in entry["phases"][phase]["diagnoses"] if d["case_id"] or not cases_only
    }


def section(text: str) -> list[str]:
    """The lines pytest printed under its ``selfopt`` separator, up to the next separator
    (a late warnings summary) or the closing line."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if re.fullmatch(r"=+ selfopt =+", line))
    out = []
    for line in lines[start + 1 : -1]:
        if re.fullmatch(r"=+ .* =+", line):
            break
        out += [line] if line else []
    return out


#: A conftest that raises KeyboardInterrupt after the ``STOP_AFTER``-th item (a Ctrl-C).
STOP_AFTER_CONFTEST = """
import os

seen = 0


def pytest_runtest_teardown(item):
    global seen
    seen += 1
    if os.environ.get("STOP_AFTER") and seen == int(os.environ["STOP_AFTER"]):
        raise KeyboardInterrupt
"""
