"""The collector in a process that runs a selfopt session (plugin/heap.py): what is alive after
collection is frozen, and everything at the interpreter's exit; never in a session that runs in
another program's process (pytester here)."""

from __future__ import annotations

import gc
import json

import pytest
from suites import mini_suite, run, run_subprocess

#: Registered when pytest imports the conftest, before the session starts and so before the
#: plugin's own exit handler: atexit runs it after the plugin's (last in, first out).
CONFTEST = """
import atexit, gc, json

KEPT = []
SEEN = {}
ROLE = ["main"]

def pytest_configure(config):
    # not PYTEST_XDIST_WORKER: a test run under xdist passes it on to this subprocess
    if hasattr(config, "workerinput"):
        ROLE[0] = config.workerinput["workerid"]

def pytest_sessionfinish(session):
    SEEN["sessionfinish"] = gc.get_freeze_count()
    KEPT.extend([i] for i in range(20000))  # alive until the exit, tracked by the collector

def _exit():
    SEEN["exit"] = gc.get_freeze_count()
    with open(f"freeze-{ROLE[0]}.json", "w") as f:
        json.dump(SEEN, f)

atexit.register(_exit)
"""


@pytest.mark.parametrize("xdist", [False, True])
def test_a_selfopt_process_freezes_after_collection_and_at_exit(
    pytester: pytest.Pytester, xdist: bool
) -> None:
    mini_suite(pytester)
    pytester.makeconftest(CONFTEST)
    result = run_subprocess(
        pytester, "--selfopt", "-p", "no:cacheprovider", *(["-n", "2"] if xdist else [])
    )
    assert result.ret == 0, result.stdout.str()
    seen = {
        path.stem.removeprefix("freeze-"): json.loads(path.read_text())
        for path in pytester.path.glob("freeze-*.json")
    }
    items_here = ["gw0", "gw1"] if xdist else ["main"]
    assert sorted(seen) == sorted({"main", *items_here})
    for role in items_here:  # frozen once the items were collected
        assert seen[role]["sessionfinish"] > 0, role
    for role, counts in seen.items():  # ... and at the exit, the 20,000 lists made after it
        assert counts["exit"] >= counts["sessionfinish"] + 20000, role


def test_a_session_in_another_programs_process_leaves_the_collector_alone(
    pytester: pytest.Pytester,
) -> None:
    mini_suite(pytester)
    assert gc.get_freeze_count() == 0
    result = run(pytester, "--selfopt", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert gc.get_freeze_count() == 0
