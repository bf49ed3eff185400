"""Many model calls in flight from one process: each ``llm`` item's call is made ahead of the
item, on a thread pool, and the test's ``llm.ask(case.prompt)`` takes its answer.

Why ahead of the item: pytest runs one test at a time, and a model call mostly waits on the
network. Tests keep their shape (docs/performance.md, "Calls in flight"):

* **Learned, never guessed.** A test function's calls are made ahead only once one of its
  items was seen to ask its case's prompt first (``llm.ask(case.prompt)``, or
  ``llm.ask(case)``). Until then, and for functions that ask something else first, the test
  calls the model itself, as without concurrency.
* **No call a test does not consume.** The pool runs calls in item order; calls queued but
  not started are cancelled for free. A call that was made and then not taken (its test asked
  something else first, or skipped, or the session stopped) is *unconsumed*: counted, named in
  the summary, and its function is not called ahead again.
* **Each call is the call the test would make**: ``Runner.ask`` with the item's spec, case,
  run and fallbacks, so latency, timeouts, retries, ``Retry-After``, isolation and warm-up
  keep their meaning per call. Only when it starts changes.
* **What runs next.** In a process without xdist, ``session.items`` from the running item on.
  In an xdist worker, the item pytest was told runs next, then the indices xdist has queued
  for this worker (``WorkerInteractor.torun``: xdist internals, read under its own lock; only
  the next item when they are not there, or under ``--dist worksteal``, whose stealing would
  turn queued calls into unconsumed ones).
* **Racing.** A candidate's item past ``--selfopt-race-after`` is made ahead only once the
  runs before it are complete, so the race has decided whether it runs at all.

Models answered in process with simulated time (``provider: sim``) do not wait: their calls
are never made ahead.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.models.base import create_provider
from pytest_selfopt.models.runner import Answer, Runner
from pytest_selfopt.plugin.codec import Shipment
from pytest_selfopt.plugin.items import case_of, marker_phase, module_phase, point_of
from pytest_selfopt.plugin.llm import LLM
from pytest_selfopt.plugin.racing import RaceView
from pytest_selfopt.suite.cases import Case

#: Items whose calls are queued ahead, per call in flight: while the test thread is busy with
#: one item, the pool already has the next calls to start.
WINDOW_PER_CALL = 2
#: How far past the running item (items per call in flight) the next items are looked at.
SCAN_PER_CALL = 8
#: The ``workeroutput`` key that carries an xdist worker's counts to the controller.
OUTPUT_KEY = "selfopt_prefetch"
#: Markers that may keep an item from running its body: its call is never made ahead.
SKIPPING_MARKERS = ("skip", "skipif", "xfail")


class DirectCause(StrEnum):
    """Why a test function is no longer called ahead (said in the summary)."""

    ASKED_OTHER = "asked_other"  # its first ask was not its case's prompt
    LEFT_UNUSED = "left_unused"  # an item skipped, or asked nothing: its call went unused


DIRECT_WHY = {
    DirectCause.ASKED_OTHER: "its first ask is not its case's prompt",
    DirectCause.LEFT_UNUSED: "an item skipped or asked nothing, and its call went unused",
}


class Learned(StrEnum):
    """What one test function's items were seen to do with the model."""

    UNKNOWN = "unknown"  # no item of it has asked yet
    AHEAD = "ahead"  # its first ask is its case's prompt: calls are made ahead
    DIRECT = "direct"  # it asks something else first, or left a call unconsumed


@dataclass(frozen=True)
class PlannedCall:
    """Exactly what ``LLM.ask(case.prompt)`` would send for one item."""

    spec: Spec
    case: Case
    run: int
    fallbacks: tuple[str, ...]

    def is_for(self, llm: LLM) -> bool:
        return (
            llm.spec == self.spec
            and llm.case is self.case
            and llm.run == self.run
            and tuple(llm.fallbacks) == self.fallbacks
        )


@dataclass
class PrefetchStats:
    """What calling ahead did in one process (summed over xdist workers by the controller)."""

    concurrency: int = 1
    made: int = 0  # calls started ahead of their items
    consumed: int = 0  # ... and taken by their test
    unconsumed: int = 0  # ... and never taken: paid for, unused
    peak_in_flight: int = 0  # calls made ahead at once, at most (waiting for a rate limit too)
    #: test function -> calls its test did not take (it asked otherwise, skipped, asked nothing)
    unconsumed_by: dict[str, int] = field(default_factory=dict)
    #: test function -> calls still unused when the session stopped (-x, Ctrl-C, a test bug)
    stopped_by: dict[str, int] = field(default_factory=dict)
    direct: dict[str, DirectCause] = field(default_factory=dict)  # no longer called ahead
    notes: list[str] = field(default_factory=list)  # the runner's (429 slow-downs)
    simulated: bool = False  # a call was not made ahead: its model answers in simulated time
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "made": self.made,
            "consumed": self.consumed,
            "unconsumed": self.unconsumed,
            "peak_in_flight": self.peak_in_flight,
            "unconsumed_by": dict(self.unconsumed_by),
            "stopped_by": dict(self.stopped_by),
            "direct": {f: str(cause) for f, cause in self.direct.items()},
            "notes": list(self.notes),
            "simulated": self.simulated,
            "processes": self.processes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrefetchStats:
        return cls(
            concurrency=int(data.get("concurrency", 1)),
            made=int(data.get("made", 0)),
            consumed=int(data.get("consumed", 0)),
            unconsumed=int(data.get("unconsumed", 0)),
            peak_in_flight=int(data.get("peak_in_flight", 0)),
            unconsumed_by={str(k): int(v) for k, v in data.get("unconsumed_by", {}).items()},
            stopped_by={str(k): int(v) for k, v in data.get("stopped_by", {}).items()},
            direct={str(f): DirectCause(c) for f, c in data.get("direct", {}).items()},
            notes=[str(n) for n in data.get("notes", [])],
            simulated=bool(data.get("simulated", False)),
            processes=int(data.get("processes", 1)),
        )

    @classmethod
    def merged(cls, parts: Iterable[tuple[str, PrefetchStats]]) -> PrefetchStats:
        """The counts of several processes (xdist workers, by name) as one; each worker's
        notes are said with its name."""
        out = cls(processes=0)
        for worker, p in parts:
            out.concurrency = max(out.concurrency, p.concurrency)
            out.made += p.made
            out.consumed += p.consumed
            out.unconsumed += p.unconsumed
            out.peak_in_flight += p.peak_in_flight
            for name, n in p.unconsumed_by.items():
                out.unconsumed_by[name] = out.unconsumed_by.get(name, 0) + n
            for name, n in p.stopped_by.items():
                out.stopped_by[name] = out.stopped_by.get(name, 0) + n
            for name, cause in p.direct.items():
                out.direct.setdefault(name, cause)
            out.notes += [f"{worker}: {n}" for n in p.notes]
            out.simulated = out.simulated or p.simulated
            out.processes += p.processes
        return out

    def lines(self) -> list[str]:
        """The session summary's lines; none when nothing ran concurrently or was noted."""
        if self.concurrency <= 1 and not self.made:
            return list(self.notes)  # one call at a time: only what the rate limits did
        per = f" per process x {self.processes} processes" if self.processes > 1 else ""
        head = f"concurrency {self.concurrency}{per}: "
        if self.made:
            head += (
                f"{self.made} call(s) made ahead of their tests, at most "
                f"{self.peak_in_flight} at once (waiting for a rate limit included)"
            )
        elif self.simulated:
            head += "no call made ahead (simulated models answer at once: nothing to wait for)"
        else:
            head += "no call made ahead"
        lines = [f"{head}; {self.unconsumed} unconsumed call(s)"]
        if self.unconsumed_by:
            named = ", ".join(f"{f} ({n})" for f, n in sorted(self.unconsumed_by.items()))
            lines.append(
                f"  unconsumed: made ahead and never used by their test (a real call costs "
                f"money): {named}; these tests are now called directly"
            )
        if self.stopped_by:
            named = ", ".join(f"{f} ({n})" for f, n in sorted(self.stopped_by.items()))
            lines.append(
                f"  unconsumed: made ahead, still unused when the session stopped: {named}"
            )
        if self.direct:
            named = "; ".join(f"{f} ({DIRECT_WHY[c]})" for f, c in sorted(self.direct.items()))
            lines.append(f"  called directly: {named}")
            if DirectCause.ASKED_OTHER in self.direct.values():
                lines.append(
                    "  to be called ahead, a test asks its case's prompt first "
                    "(llm.ask(case.prompt))"
                )
        lines += [f"  {note}" for note in self.notes]
        return lines


class Ticket:
    """One call made ahead for one item; the item's ``llm`` takes it (``LLM.prefetched``)."""

    def __init__(self, owner: Prefetcher, nodeid: str, function: str, call: PlannedCall) -> None:
        self.owner = owner
        self.nodeid = nodeid
        self.function = function
        self.call = call
        self.future: Future[Answer] | None = None
        self.done = False  # taken or released

    def take(self, prompt: str, case: Case | None) -> Answer | None:
        """The answer when the test asks what was called ahead; else None (the test calls the
        model itself, and this call is released: cancelled, or counted as unconsumed)."""
        if prompt != self.call.case.prompt or case is not self.call.case:
            self.owner.release(self, why=DirectCause.ASKED_OTHER)
            return None
        assert self.future is not None
        try:
            answer = self.future.result()
        except CancelledError:  # shut down under us: ask directly
            self.owner.forget(self)
            return None
        finally:
            if not self.future.cancelled():
                self.owner.consumed(self)  # an exception is the test's to see, as if direct
        return answer


class Prefetcher:
    """The pool, the tickets in flight, what each test function was learned to do, and the
    counts. pytest-facing methods: :meth:`before` (each item's protocol), :meth:`attach` (the
    ``llm`` fixture's value), :meth:`after` (each item's end), :meth:`close`."""

    def __init__(
        self,
        runner: Runner,
        concurrency: int,
        shipment: Shipment | None,
        *,
        measuring: bool,
        race: RaceView | None = None,
        race_after: int = 0,
        queue: WorkerQueue | None = None,
    ) -> None:
        self.runner = runner
        self.concurrency = concurrency
        self.shipment = shipment
        self.measuring = measuring
        self.race = race
        self.race_after = race_after
        self.queue = queue
        self.window = WINDOW_PER_CALL * concurrency
        self.stats = PrefetchStats(concurrency=concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="selfopt")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._tickets: dict[str, Ticket] = {}  # nodeid -> ticket not yet taken or released
        self._learned: dict[str, Learned] = {}
        self._waits: dict[str, bool] = {}  # model alias -> its calls wait on the network
        self._positions: dict[int, int] | None = None  # id(item) -> index in session.items
        self._cursor = 0  # session.items before it were considered (main process)
        self._run = 0  # the running item's run (racing)
        self._closed = False

    # -- pytest-facing -----------------------------------------------------------------------

    def before(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Keep the next items' calls queued, from ``item`` on, up to the window."""
        if self._closed:
            return
        point = point_of(item)
        if point is not None and point.run != self._run:
            self._run = point.run
            if self.race is not None:
                self._cursor = 0  # later runs' candidates may be called ahead now
        for upcoming in self._upcoming(item, nextitem):
            if upcoming is not item and len(self._tickets) >= self.window:
                break  # the running item's own call is never held back by later ones
            if upcoming.nodeid in self._tickets:
                continue
            call = self._plan(upcoming)
            if call is not None:
                self._submit(upcoming, call)

    def attach(self, item: pytest.Item, llm: LLM) -> None:
        """Hand the item's ticket to its ``llm``; a ticket for another call is released."""
        ticket = self._tickets.get(item.nodeid)
        if ticket is None:
            return
        if ticket.call.is_for(llm):
            llm.prefetched = ticket
        else:
            self.release(ticket, why=DirectCause.ASKED_OTHER)

    def after(self, item: pytest.Item, llm: LLM | None) -> None:
        """At the item's end: an untaken ticket is released, and the function is learned."""
        ticket = self._tickets.get(item.nodeid)
        if ticket is not None:
            self.release(ticket, why=DirectCause.LEFT_UNUSED)
        if llm is None or llm.first_ask is None:
            return
        function = function_of(item)
        if self._learned.get(function, Learned.UNKNOWN) is not Learned.UNKNOWN:
            return
        prompt, case = llm.first_ask
        own = case_of(item)
        if own is not None and case is own and prompt == own.prompt:
            self._learned[function] = Learned.AHEAD
            self._cursor = 0  # its later items may be called ahead now
        else:
            self._refuse(function, DirectCause.ASKED_OTHER)

    def close(self) -> PrefetchStats:
        """Cancel queued calls and count the running ones never taken. Does not wait for
        them: closing the runner's clients next ends them (Ctrl-C must not wait a timeout)."""
        self._closed = True
        for ticket in list(self._tickets.values()):
            self.release(ticket, why=None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.stats

    # -- tickets -----------------------------------------------------------------------------

    def release(self, ticket: Ticket, *, why: DirectCause | None) -> None:
        """Not taken: free when the call has not started, else an unconsumed call (``why``
        None: the session stopped, which says nothing of the test)."""
        if ticket.done:
            return
        ticket.done = True
        self._tickets.pop(ticket.nodeid, None)
        assert ticket.future is not None
        if ticket.future.cancel():
            return
        with self._lock:
            self.stats.unconsumed += 1
            by = self.stats.unconsumed_by if why is not None else self.stats.stopped_by
            by[ticket.function] = by.get(ticket.function, 0) + 1
        if why is not None:
            self._refuse(ticket.function, why)

    def consumed(self, ticket: Ticket) -> None:
        ticket.done = True
        self._tickets.pop(ticket.nodeid, None)
        with self._lock:
            self.stats.consumed += 1

    def forget(self, ticket: Ticket) -> None:
        ticket.done = True
        self._tickets.pop(ticket.nodeid, None)

    def _submit(self, item: pytest.Item, call: PlannedCall) -> None:
        ticket = Ticket(self, item.nodeid, function_of(item), call)
        ticket.future = self._pool.submit(self._call, call)
        self._tickets[item.nodeid] = ticket

    def _call(self, call: PlannedCall) -> Answer:
        with self._lock:
            self.stats.made += 1
            self._in_flight += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
        try:
            return self.runner.ask(
                call.spec, call.case.prompt, case=call.case, run=call.run, fallbacks=call.fallbacks
            )
        finally:
            with self._lock:
                self._in_flight -= 1

    def _refuse(self, function: str, cause: DirectCause) -> None:
        """Stop calling ``function`` ahead; its queued calls are cancelled (free)."""
        if self._learned.get(function) is Learned.DIRECT:
            return
        self._learned[function] = Learned.DIRECT
        self.stats.direct.setdefault(function, cause)
        for ticket in [t for t in self._tickets.values() if t.function == function]:
            assert ticket.future is not None
            if ticket.future.cancel():
                ticket.done = True
                self._tickets.pop(ticket.nodeid, None)

    # -- which items, which calls ------------------------------------------------------------

    def _upcoming(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[pytest.Item]:
        """The items that run from ``item`` on, in order, as far as this process knows."""
        if self.queue is not None:  # an xdist worker
            yield item
            if nextitem is not None:
                yield nextitem
                yield from self.queue.pending(item.session, SCAN_PER_CALL * self.concurrency)
            return
        items = item.session.items
        if self._positions is None:
            self._positions = {id(it): i for i, it in enumerate(items)}
        here = self._positions.get(id(item))
        if here is None or here >= len(items) or items[here] is not item:
            yield item  # not where pytest's list says (a rerun plugin): this one only
            return
        start = max(here, self._cursor)
        if start > here:
            yield item
        # Never further than a few windows ahead: each item's scan is bounded, even while no
        # test function is known yet.
        for i in range(start, min(len(items), here + 1 + SCAN_PER_CALL * self.concurrency)):
            self._cursor = i
            yield items[i]

    def _plan(self, item: pytest.Item) -> PlannedCall | None:
        """The call ``item``'s test will make, when it may be made ahead; else None."""
        if "llm" not in getattr(item, "fixturenames", ()):
            return None
        if self._learned.get(function_of(item), Learned.UNKNOWN) is not Learned.AHEAD:
            return None
        case = case_of(item)
        if case is None or any(item.get_closest_marker(m) for m in SKIPPING_MARKERS):
            return None
        point = point_of(item)
        if point is not None:
            if self.race is not None and not self._may_race_ahead(
                point.phase, point.spec, point.run
            ):
                return None
            call = PlannedCall(point.spec, case, point.run, ())
        elif self.measuring or self.shipment is None:
            return None
        else:  # a plain run: the routed spec of the item's phase, as the llm fixture does
            phase = case.phase or marker_phase(item) or module_phase(item)
            route = self.shipment.route_for(phase)
            if route is None:
                return None
            call = PlannedCall(route.spec, case, 1, tuple(route.fallbacks))
        if self._waits_on_network(call.spec.model):
            return call
        self.stats.simulated = True
        return None

    def _may_race_ahead(self, phase: str, spec: Spec, run: int) -> bool:
        """A raced-out candidate's item never runs; one past ``race_after`` may yet be raced
        out, until the runs before it are complete (then the board has decided)."""
        assert self.race is not None
        if self.race.reason_for(phase, spec.id):
            return False
        plan = self.shipment.plan_for(phase) if self.shipment else None
        if plan is not None and plan.baseline.id == spec.id:
            return True
        if run <= max(self.race_after, 1):
            return True
        return self.queue is None and run <= self._run

    def _waits_on_network(self, alias: str) -> bool:
        """Simulated time (the in-process simulator) answers at once: nothing to gain."""
        waits = self._waits.get(alias)
        if waits is None:
            model = self.runner.models.get(alias)
            if model is None:
                waits = False
            else:
                try:
                    provider = create_provider(model.provider, alias, model.options)
                except (LookupError, ValueError, TypeError):
                    waits = False  # the test's own call will say what is wrong
                else:
                    waits = not getattr(provider, "simulated_time", False)
            self._waits[alias] = waits
        return waits


def requested_concurrency(config: pytest.Config, suite: Callable[[], int]) -> int:
    """Calls in flight per process: ``--selfopt-concurrency``, else ``suite()`` (the suite
    config's ``concurrency``, read only when the option is not given)."""
    chosen: int | None = config.getoption("selfopt_concurrency", None)
    return chosen if chosen is not None else suite()


def lost_counts_line(concurrency: int, workers: int) -> str:
    """What the summary says when xdist workers stopped before sending their counts."""
    return (
        f"concurrency {concurrency} per process: {workers} xdist worker(s) stopped by the "
        "interrupt before sending their counts of calls made ahead; the calls they had in "
        "flight were made and not used, and are not counted"
    )


def function_of(item: pytest.Item) -> str:
    """The test function an item belongs to, as its node id without parameters."""
    parent = item.parent.nodeid if item.parent is not None else ""
    name = getattr(item, "originalname", item.name)
    return f"{parent}::{name}" if parent else name


class WorkerQueue:
    """The items xdist has queued for this worker, read from its ``WorkerInteractor``."""

    def __init__(self, interactor: Any) -> None:
        self._queue = interactor.torun

    @classmethod
    def find(cls, config: pytest.Config) -> WorkerQueue | None:
        """None when xdist's internals are not as this reads them (then only ``nextitem`` is
        known), or under ``--dist worksteal`` (a queued item may be taken away)."""
        if config.getoption("dist", "no") == "worksteal":
            return None
        for plugin in config.pluginmanager.get_plugins():
            queue = getattr(plugin, "torun", None)
            if type(plugin).__name__ == "WorkerInteractor" and callable(
                getattr(queue, "lock", None)
            ):
                return cls(plugin)
        return None

    def pending(self, session: pytest.Session, limit: int) -> Sequence[pytest.Item]:
        try:
            with self._queue.lock() as queued:
                indices = list(itertools.islice(queued, limit))
        except (AttributeError, TypeError):
            return ()
        items = session.items
        return [items[i] for i in indices if isinstance(i, int) and 0 <= i < len(items)]
