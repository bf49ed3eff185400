"""Rate limits per model and process (models/ratelimit.py): calls in flight, requests and
tokens per minute, and slowing down on HTTP 429. A fake clock moves only when a limiter
waits, so every wait is counted, never slept."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from _simserver_fixture import FAST, GOOD, VARIANTS, Case, make_spec, sim_servers

from pytest_selfopt.models.base import Reply, Request, register_provider, unregister_provider
from pytest_selfopt.models.ratelimit import Limiter, Limits
from pytest_selfopt.models.runner import Runner
from pytest_selfopt.models.simserver import SimServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, cond: threading.Condition, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def limiter(limits: Limits, clock: FakeClock, scale: float = 1.0) -> Limiter:
    return Limiter("m", limits, scale=scale, clock=clock, pause=clock.pause)


def test_no_limits_never_wait() -> None:
    clock = FakeClock()
    lim = limiter(Limits(), clock)
    with ExitStack() as stack:
        for _ in range(100):
            stack.enter_context(lim.permit("hello"))
        assert lim.in_flight == 100
    assert clock.waits == [] and lim.in_flight == 0 and lim.notes() == []


def test_rpm_spaces_requests_one_second_worth_at_a_time() -> None:
    clock = FakeClock()
    lim = limiter(Limits(rpm=120), clock)  # 2 a second; the bucket holds 2
    for _ in range(6):
        with lim.permit("x") as permit:
            permit.answered(1, 1)
    assert clock.now == pytest.approx(2.0)  # 2 at once, then 4 more at 2 a second


def test_rpm_counts_minutes_of_the_providers_clock() -> None:
    clock = FakeClock()
    lim = limiter(Limits(rpm=60), clock, scale=0.01)  # a simulated minute is 0.6 s real
    for _ in range(3):
        with lim.permit("x"):
            pass
    assert clock.now == pytest.approx(0.02)


def test_tpm_settles_the_estimate_with_the_tokens_used() -> None:
    clock = FakeClock()
    lim = limiter(Limits(tpm=600), clock)  # 10 tokens a second, holds 10
    text = "x" * 40  # estimated 10 tokens
    with lim.permit(text) as permit:
        permit.answered(10, 20)  # 30 used: 20 more than taken
    assert clock.now == 0.0
    with lim.permit(text) as permit:  # the estimate now includes the mean output (20): 30
        permit.answered(10, 20)
    # Debt of 20 and a request of 30 (more than the bucket holds: waits for a full one).
    assert clock.now == pytest.approx(3.0)


def test_max_concurrency_bounds_calls_in_flight_across_threads() -> None:
    lim = Limiter("m", Limits(max_concurrency=2))
    release = threading.Event()
    peak: list[int] = []

    def call() -> None:
        with lim.permit("x") as permit:
            peak.append(lim.in_flight)
            release.wait(5)
            permit.answered(1, 1)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    while len(peak) < 2:
        threading.Event().wait(0.001)
    assert lim.in_flight == 2  # the other three wait for a slot
    release.set()
    for t in threads:
        t.join(5)
    assert max(peak) == 2 and len(peak) == 5 and lim.in_flight == 0


def test_a_429_halves_calls_in_flight_and_answers_bring_them_back() -> None:
    clock = FakeClock()
    lim = limiter(Limits(max_concurrency=8), clock)
    with ExitStack() as stack:
        permits = [stack.enter_context(lim.permit("x")) for _ in range(8)]
        permits[-1].throttled = True  # released first, with 8 in flight
    assert lim.bound == 4 and lim.throttled == 1  # 8 in flight at the 429, halved
    for _ in range(4 + 5 + 6 + 7):  # bound answers in a row: one more
        with lim.permit("x") as permit:
            permit.answered(1, 1)
    assert lim.bound == 8
    note = " ".join(lim.notes())
    assert "429" in note and "slowed down to 4" in note and "8 at the end" in note


def test_a_429_with_one_call_at_a_time_is_not_called_a_slow_down() -> None:
    lim = limiter(Limits(max_concurrency=3), FakeClock())
    for throttled in (True, False, True):
        with lim.permit("x") as permit:
            permit.throttled = throttled
            if not throttled:
                permit.answered(1, 1)
    note = " ".join(lim.notes())
    assert "429 (rate limited) 2 time(s), one call at a time" in note
    assert "slowed down" not in note


def test_without_max_concurrency_a_429_still_slows_down_then_lifts_the_bound() -> None:
    clock = FakeClock()
    lim = limiter(Limits(), clock)
    with ExitStack() as stack:
        permits = [stack.enter_context(lim.permit("x")) for _ in range(6)]
        permits[-1].throttled = True
    assert lim.bound == 3
    for _ in range(3 + 4 + 5 + 6):
        with lim.permit("x") as permit:
            permit.answered(1, 1)
    assert lim.bound is None  # back up to the peak: no bound of its own any more
    assert "no limit at the end" in " ".join(lim.notes())


# -- through the runner, over HTTP against the simulator server ----------------------------


@dataclass(frozen=True)
class LimitedModel:
    """A model entry of the suite config with its limits (``config.ModelConfig``)."""

    name: str
    provider: str
    options: Mapping[str, Any] = field(default_factory=dict)
    price: tuple[float, float] | None = None
    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimServer]]:
    with sim_servers() as start:
        yield start


def http_runner(server: SimServer, **limits: Any) -> Runner:
    options = {"base_url": server.url, "model": "lfm", "simulated": True, "time_scale": FAST}
    model = LimitedModel("lfm", "openai", options, **limits)
    return Runner({"lfm": model}, VARIANTS, seed=1)


def ask_many(runner: Runner, n: int, threads: int, **knobs: Any) -> list[Any]:
    spec = make_spec("lfm", **{"timeout_s": 60.0, **knobs})  # 0.6 s real: a loaded machine
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: runner.ask(spec, "Q?", case=Case(f"c{i}"), run=1), range(n)))


def test_max_concurrency_holds_over_http(sim_server: Callable[..., SimServer]) -> None:
    server = sim_server({"lfm": {**GOOD, "latency_s": 2.0}})  # 20 ms each
    with http_runner(server, max_concurrency=2) as runner:
        answers = ask_many(runner, 24, threads=8)
    assert all(a.ok for a in answers)
    assert server.stats()["max_in_flight"] == 2  # the server's own count: never more
    assert not any("429" in note for note in runner.limit_notes())


def test_a_429_slows_calls_down_and_the_summary_says_so(
    sim_server: Callable[..., SimServer],
) -> None:
    server = sim_server({"lfm": {**GOOD, "latency_s": 2.0}})
    server.set_faults({"kind": "429", "times": 6, "retry_after": "0"})
    with http_runner(server) as runner:
        answers = ask_many(runner, 40, threads=8, retries=3)
    assert all(a.ok for a in answers)  # retried, as ever
    notes = runner.limit_notes()
    assert len(notes) == 1 and "lfm: HTTP 429 (rate limited) 6 time(s)" in notes[0]
    assert "slowed down to" in notes[0]


class OneSecondCalls:
    """A provider whose every call takes exactly one second of a fake clock (and no real
    time), so a latency that included waiting for a permit would read more than 1."""

    simulated = False
    simulated_time = False

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def new_client(self) -> OneSecondCalls:
        return self

    def complete(self, request: Request) -> Reply:
        with self.lock:
            self.now += 1.0
        return Reply("Paris", 1, 1)

    def close(self) -> None:
        pass


def test_waiting_for_a_permit_is_not_latency() -> None:
    provider = OneSecondCalls()
    register_provider("one-second", lambda name, options: provider)
    try:
        model = LimitedModel("m", "one-second", max_concurrency=1)
        runner = Runner({"m": model}, VARIANTS, clock=provider.clock)
        spec = make_spec("m")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: runner.ask(spec, "Q?"), range(12)))
    finally:
        unregister_provider("one-second")
    assert provider.now == 12.0
    assert [a.latency_s for a in answers] == [1.0] * 12


def test_a_call_in_flight_when_the_runner_closes_is_not_retried(
    sim_server: Callable[..., SimServer],
) -> None:
    """The session stopped (Ctrl-C, -x, a test bug) while a call was in flight: closing the
    runner ends it at once, and no retry is sent after (a real call costs money)."""
    server = sim_server({"lfm": {**GOOD, "latency_s": 1000.0}})  # 10 s real: still in flight
    runner = http_runner(server)
    spec = make_spec("lfm", timeout_s=5000.0, retries=3)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: runner.ask(spec, "Q?", case=Case("c0"), run=1))
        while server.stats()["requests"] < 1:
            threading.Event().wait(0.005)
        runner.close()
        result = answer.result(timeout=30)
    assert not result.ok and result.error_kind == "connect"
    assert server.stats()["requests"] == 1  # the first attempt only
    assert runner.ask(spec, "Q?", case=Case("c1"), run=1).error_kind == "connect"
    assert server.stats()["requests"] == 1  # nor anything asked after the close
