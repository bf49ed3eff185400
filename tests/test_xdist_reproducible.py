"""Two ``-n 2`` cycles of the same suite write byte-identical files (issue 11.4), with a cold
model from the first cycle on. The simulated cold start is a function of case and run, but the
per-worker cold-start reading (loop/diagnose.py) and a real per-process effect depend on which
worker runs which item: under ``--selfopt`` the plugin fixes that assignment
(plugin/schedule.py)."""

from __future__ import annotations

import pytest
from suites import CYCLE, MINI_CONFIG, XDIST, mini_suite, reset, run, snapshot

from pytest_selfopt.plugin.schedule import StaticScheduling, wants_static

#: The cold model from the first cycle on, with transport noise from its cold calls.
COLD_FIRST = {**MINI_CONFIG["initial"], "model": "claude-haiku"}


def test_two_xdist_cycles_write_identical_files(pytester: pytest.Pytester) -> None:
    mini_suite(pytester, initial=COLD_FIRST)
    first = run(pytester, *CYCLE, *XDIST)
    assert first.ret == 0, first.stdout.str()
    files = snapshot(pytester)
    assert len(files) == 4
    assert b"cold_start" in files["history.json"]  # the per-process effect is in the data
    reset(pytester)
    second = run(pytester, *CYCLE, *XDIST)
    assert second.ret == 0, second.stdout.str()
    assert snapshot(pytester) == files


def test_the_static_assignment_is_only_for_the_default_distribution(
    pytester: pytest.Pytester,
) -> None:
    # (-n 2 becomes --dist load --tx 2*popen in xdist's cmdline hook, which parseconfig skips)
    assert wants_static(pytester.parseconfig("--dist", "load", "--tx", "2*popen"))
    assert not wants_static(pytester.parseconfig("--dist", "loadscope", "--tx", "2*popen"))


class FakeNode:
    """What the scheduler uses of xdist's WorkerController."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway = type("Gateway", (), {"id": gateway_id})()
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices

    def shutdown(self) -> None:
        self.shutting_down = True


def test_worker_k_of_n_runs_items_k_k_plus_n_whatever_order_they_came_up(
    pytester: pytest.Pytester,
) -> None:
    scheduler = StaticScheduling(pytester.parseconfig("--dist", "load", "--tx", "3*popen"))
    nodes = [FakeNode("gw2"), FakeNode("gw10"), FakeNode("gw0")]  # the order they came up
    collection = [f"test_x.py::test[{i}]" for i in range(8)]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    gw2, gw10, gw0 = nodes
    # a chunk at a time (here 2), so that -x or a test bug stops a worker soon
    assert (gw0.sent, gw2.sent, gw10.sent) == ([0, 3], [1, 4], [2, 5])
    assert gw10.shutting_down and not gw0.shutting_down  # gw10's share is all sent
    scheduler.mark_test_complete(gw0, 0)
    assert gw0.sent == [0, 3, 6] and gw0.shutting_down
    for node, done in ((gw0, [3, 6]), (gw2, [1, 4]), (gw10, [2, 5])):
        for index in done:
            scheduler.mark_test_complete(node, index)
    assert gw2.sent == [1, 4, 7]
    scheduler.mark_test_complete(gw2, 7)
    assert scheduler.tests_finished and not scheduler.has_pending


def test_a_crashed_workers_unsent_share_goes_to_the_next_that_asks(
    pytester: pytest.Pytester,
) -> None:
    scheduler = StaticScheduling(pytester.parseconfig("--dist", "load", "--tx", "2*popen"))
    gw0, gw1 = FakeNode("gw0"), FakeNode("gw1")
    collection = [f"test_x.py::test[{i}]" for i in range(12)]
    for node in (gw0, gw1):
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    assert gw1.sent == [1, 3]
    assert scheduler.remove_node(gw1) == collection[1]  # crashed while running item 1
    replacement = FakeNode("gw2")
    scheduler.add_node(replacement)
    scheduler.add_node_collection(replacement, collection)
    scheduler.schedule()
    assert replacement.sent == [3, 5]  # the crashed worker's items, in its order, a chunk
    assert gw0.sent == [0, 2]  # the healthy worker keeps its own share
