"""A fixed assignment of items to xdist workers under ``--selfopt``, so that two runs with
the same worker count give the same files.

xdist's default ``load`` scheduler hands items out as workers ask for them, so which worker
runs which sample depends on timing. The loop reads samples in run order, never in completion
order, so patterns and decisions do not depend on it — except where a *per-process* effect is
real: a cold start is the first calls of a model in a process, so which samples a worker runs
first decides which samples the cold start hits. With :class:`StaticScheduling` worker ``k``
of ``N`` (ordered by gateway id: ``gw0``, ``gw1``, …) runs items ``k, k + N, k + 2N, …`` of
the collection, in collection order, so the same worker count reproduces every sample,
cold starts included (docs/architecture.md, "pytest integration").

It is used only when the user left xdist's distribution mode at its default (``load``);
``--dist loadscope`` and the like are respected. The cost is xdist's dynamic balancing: a
worker that finishes early does not take over another's items. Items of one cycle are of
similar cost (same prompts, specs of one phase), and calls in flight inside a worker
(``concurrency``) are what balance waiting on the network.
"""

from __future__ import annotations

import re
from typing import Any

from xdist.scheduler import LoadScheduling


def _gateway_order(node: Any) -> tuple[int, str]:
    """``gw2`` before ``gw10``."""
    gateway_id = str(node.gateway.id)
    match = re.search(r"(\d+)$", gateway_id)
    return (int(match.group(1)) if match else -1, gateway_id)


class StaticScheduling(LoadScheduling):  # type: ignore[misc]
    """xdist's load scheduler with every item's worker fixed (module doc).

    Each worker's share is sent a chunk at a time, as ``load`` does, so that ``-x``, a test
    bug or Ctrl-C stop a worker after its queued chunk rather than after its whole share; the
    chunk is the size of ``load``'s first one (a quarter of a worker's items, at least 2), so
    calls in flight inside a worker (``concurrency``) see as far ahead as under ``load``. A
    worker that crashes leaves its unsent share to whichever worker asks next, and a
    replacement worker takes it, as under ``load``."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self.shares: dict[Any, list[int]] = {}  # each worker's unsent items, set by schedule()
        self.chunk = 2

    def schedule(self) -> None:
        assert self.collection_is_completed
        collection: list[str] | None = self.collection  # type: ignore[has-type]
        if collection is not None:  # a replacement worker: serve what is left
            for node in self.nodes:
                self.check_schedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        collection = self.collection = next(iter(self.node2collection.values()))
        if not collection:
            return
        if self.maxschedchunk is None:  # type: ignore[has-type]  # as LoadScheduling.schedule
            self.maxschedchunk = len(collection)
        nodes = sorted(self.nodes, key=_gateway_order)
        self.shares = {
            node: list(range(k, len(collection), len(nodes))) for k, node in enumerate(nodes)
        }
        self.chunk = max(2, min(len(collection) // len(nodes) // 4, self.maxschedchunk))
        self.pending[:] = []  # only a crashed worker's unsent share goes here
        for node in nodes:
            self.check_schedule(node)

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        if node.shutting_down:
            return
        share = self.shares.get(node) or self.pending
        queued = self.node2pending[node]
        if share and len(queued) < max(2, self.chunk // 2):
            batch = share[: self.chunk - len(queued)]
            del share[: len(batch)]
            queued.extend(batch)
            node.send_runtest_some(batch)
        if not share and not self.pending:
            node.shutdown()

    def remove_node(self, node: Any) -> str | None:
        """A crashed worker's unsent share joins xdist's pending list (module doc)."""
        unsent = self.shares.pop(node, [])
        crashed: str | None = super().remove_node(node)  # its queued items first, in order
        self.pending.extend(unsent)
        return crashed

    @property
    def tests_finished(self) -> bool:
        if any(self.shares.values()):
            return False
        finished: bool = LoadScheduling.tests_finished.fget(self)
        return finished

    @property
    def has_pending(self) -> bool:
        if any(self.shares.values()):
            return True
        pending: bool = LoadScheduling.has_pending.fget(self)
        return pending


def wants_static(config: Any) -> bool:
    """Whether ``config``'s xdist distribution is the default ``load`` (module doc)."""
    return getattr(config.option, "dist", None) == "load"
