"""The runner with the in-process simulator and a small registered provider: simulated time,
retries and backoff, fallbacks, warm-up, isolation, variants, measurements."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from _simserver_fixture import VARIANTS, Case, Model, RecordingSleep, make_spec

from pytest_selfopt.models.base import (
    ProviderError,
    Reference,
    Reply,
    Request,
    create_provider,
    provider_uses_knob,
    register_provider,
    unregister_provider,
)
from pytest_selfopt.models.runner import BACKOFF_CAP_S, RETRY_AFTER_CAP_S, Runner
from pytest_selfopt.models.sim import draw

_names = itertools.count()
PROMPT = "What is the capital of France?"


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"the runner slept {seconds} s for a simulated provider")


def sim(**options: Any) -> Model:
    """A sim model with a fresh name: cold starts are counted per process and model name."""
    return Model(f"sim-{next(_names)}", "sim", {"skill": 0.9, "latency_sigma": 0.0, **options})


def runner(*models: Model, **kwargs: Any) -> Runner:
    kwargs.setdefault("sleep", never_sleep)
    return Runner({m.name: m for m in models}, VARIANTS, **kwargs)


# -- a small provider that echoes what it is sent (also exercises the registry) ---------------


class EchoProvider:
    """Replies ``system|prompt``; fails the first ``fail`` calls with ``kind``; counts clients."""

    simulated = False
    simulated_time = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self.fail = int(options.get("fail", 0))
        self.kind = str(options.get("kind", "http_5xx"))
        self.retry_after = options.get("retry_after")
        self.calls = 0
        self.clients: list[EchoClient] = []
        self.requests: list[Request] = []

    def new_client(self) -> EchoClient:
        client = EchoClient(self)
        self.clients.append(client)
        clock = self.options.get("clock")
        if clock is not None:  # building a client takes 10 s of the fake clock
            clock.advance(10.0)
        return client


class EchoClient:
    def __init__(self, provider: EchoProvider) -> None:
        self.provider = provider
        self.closed = False

    def complete(self, request: Request) -> Reply:
        assert not self.closed
        p = self.provider
        p.calls += 1
        p.requests.append(request)
        clock = p.options.get("clock")
        if clock is not None:  # a call takes 1 s of the fake clock
            clock.advance(1.0)
        if p.calls <= p.fail:
            raise ProviderError(p.kind, f"echo failure {p.calls}", retry_after_s=p.retry_after)
        return Reply(f"{request.system}|{request.prompt}", input_tokens=10, output_tokens=4)

    def close(self) -> None:
        self.closed = True


PROVIDERS: dict[str, EchoProvider] = {}


def _echo_factory(name: str, options: Mapping[str, Any]) -> EchoProvider:
    PROVIDERS[name] = EchoProvider(options)
    return PROVIDERS[name]


@pytest.fixture(autouse=True)
def _echo_registered() -> Iterator[None]:
    """Register the echo provider for these tests only: the registry is process-wide."""
    register_provider("echo-test", _echo_factory)
    yield
    unregister_provider("echo-test")


def echo(**options: Any) -> Model:
    return Model(f"echo-{next(_names)}", "echo-test", options, price=(3.0, 15.0))


class NoReferenceCase(Case):
    def reference(self, **kwargs: Any) -> Any:
        raise AssertionError("a real provider must never be given the reference")


# -- simulated time ---------------------------------------------------------------------------


def test_simulated_latency_is_reported_not_slept() -> None:
    model = sim(latency_s=2.0)
    before = time.time()
    answer = runner(model).ask(make_spec(model.name), PROMPT, case=Case())
    assert answer.text == "Paris" and answer.error_kind is None
    assert answer.latency_s == 2.0 and answer.total_latency_s == 2.0
    assert answer.attempts == 1 and answer.output_tokens == 1
    assert answer.input_tokens == len(PROMPT.split())
    assert before <= answer.started_at <= time.time()


def test_simulated_backoff_is_added_not_slept_and_reproducible() -> None:
    model = sim(transient_errors=1.0, latency_s=0.2)
    spec = make_spec(model.name, retries=3)
    first = runner(model).ask(spec, PROMPT, case=Case())
    again = runner(model).ask(spec, PROMPT, case=Case())
    assert first.text is None and first.error_kind in ("http_5xx", "http_429")
    assert first.attempts == 4
    assert first.total_latency_s > 4 * first.latency_s  # backoff (or Retry-After) was added
    assert (first.total_latency_s, first.error_kind) == (again.total_latency_s, again.error_kind)


def test_simulated_timeout_reports_the_timeout_as_latency() -> None:
    model = sim(latency_s=5.0)
    answer = runner(model).ask(make_spec(model.name, timeout_s=1.0, retries=1), PROMPT, case=Case())
    assert answer.error_kind == "timeout" and answer.attempts == 2
    assert answer.latency_s == 1.0 and answer.total_latency_s > 2.0


def test_a_wrong_answer_is_never_retried() -> None:
    model = sim(skill=0.0)
    answer = runner(model).ask(make_spec(model.name, retries=3), PROMPT, case=Case(difficulty=0.9))
    assert answer.text == "Lyon" and answer.error_kind is None and answer.attempts == 1


# -- fallbacks ----------------------------------------------------------------------------------


def test_fallback_along_the_chain_when_the_primary_always_fails() -> None:
    bad, worse, good = sim(transient_errors=1.0), sim(transient_errors=1.0), sim(latency_s=0.3)
    r = runner(bad, worse, good)
    answer = r.ask(
        make_spec(bad.name, retries=1), PROMPT, case=Case(), fallbacks=[worse.name, good.name]
    )
    assert answer.text == "Paris" and answer.model == good.name
    assert answer.fallbacks_used == (worse.name, good.name)
    assert answer.attempts == 2 + 2 + 1
    assert answer.latency_s == 0.3


def test_every_model_failing_reports_the_last_one() -> None:
    bad, worse = sim(transient_errors=1.0), sim(latency_s=9.0)
    answer = runner(bad, worse).ask(
        make_spec(bad.name, timeout_s=1.0), PROMPT, case=Case(), fallbacks=[bad.name, worse.name]
    )
    assert answer.text is None and answer.model == worse.name
    assert answer.error_kind == "timeout" and answer.fallbacks_used == (worse.name,)
    assert answer.attempts == 2


# -- warm-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [False, True])
def test_warmup_absorbs_cold_starts(warmup: bool) -> None:
    """Run 1 of the first 2 cases of a file is cold (120 s > 60 s), every attempt of it."""
    model = sim(cold_start_calls=2, latency_s=0.5)
    r = runner(model)
    spec = make_spec(model.name, timeout_s=60.0, warmup=warmup, retries=2)
    asked = [(0, 1), (1, 1), (2, 1), (0, 2), (None, 1)]  # (position in the file, run)
    answers = [r.ask(spec, PROMPT, case=Case(position=p), run=run) for p, run in asked]
    kinds = [a.error_kind for a in answers]
    if warmup:
        assert kinds == [None] * 5 and r.warmup_attempts == 3  # 2 cold pings, then warm
    else:
        assert kinds == ["timeout", "timeout", None, None, None] and r.warmup_attempts == 0
        assert [a.attempts for a in answers[:2]] == [3, 3]  # retries do not cure it


def test_a_simulated_cold_start_is_the_same_in_any_process() -> None:
    """Two runners (two processes' worth) asking in opposite orders meet the same cold runs."""
    model = sim(cold_start_calls=1, latency_s=0.5)
    spec = make_spec(model.name, timeout_s=60.0)
    asked = [(p, run) for p in (0, 1) for run in (1, 2)]
    forward, backward = runner(model), runner(model)
    first = {a: forward.ask(spec, PROMPT, case=Case(position=a[0]), run=a[1]).error_kind
             for a in asked}  # fmt: skip
    second = {a: backward.ask(spec, PROMPT, case=Case(position=a[0]), run=a[1]).error_kind
              for a in reversed(asked)}  # fmt: skip
    assert first == second == {(0, 1): "timeout", (0, 2): None, (1, 1): None, (1, 2): None}


def test_warmup_runs_once_per_spec_and_model_and_spends_at_most_its_budget() -> None:
    model = sim(cold_start_calls=50, latency_s=0.5)
    r = runner(model)
    spec = make_spec(model.name, warmup=True)
    case = Case()
    r.ask(spec, PROMPT, case=case)
    r.ask(spec, PROMPT, case=case, run=2)
    assert r.warmup_attempts == 5
    warm_refs = [c for c in case.calls if c["run"] == 0]
    assert [c["attempt"] for c in warm_refs] == [0, 1, 2, 3, 4]
    r.ask(make_spec(model.name, warmup=True, retries=1), PROMPT, case=case)  # another spec
    assert r.warmup_attempts == 10


# -- isolation, variants, the reference ------------------------------------------------------


@pytest.mark.parametrize(("isolation", "clients"), [("i0", 1), ("i1", 3)])
def test_isolation_decides_how_many_clients_are_opened(isolation: str, clients: int) -> None:
    model = echo()
    r = runner(model)
    for run in (1, 2, 3):
        r.ask(make_spec(model.name, isolation=isolation), PROMPT, case=NoReferenceCase(), run=run)
    provider = PROVIDERS[model.name]
    assert len(provider.clients) == clients
    assert [c.closed for c in provider.clients] == [isolation == "i1"] * clients
    r.close()
    assert all(c.closed for c in provider.clients)


def test_variant_template_and_system_prompt_are_applied_and_no_reference_is_sent() -> None:
    model = echo()
    answer = runner(model).ask(
        make_spec(model.name, variant="atomic"), PROMPT, case=NoReferenceCase()
    )
    assert answer.text == f"Be brief.|Final answer only.\n\n{PROMPT}"
    (request,) = PROVIDERS[model.name].requests
    assert request.reference is None and request.timeout_s == 5.0 and request.model == model.name
    assert answer.cost == pytest.approx((10 * 3.0 + 4 * 15.0) / 1e6)


def test_provider_side_model_name_is_sent() -> None:
    model = Model("alias", "echo-test", {"model": "vendor/model-7b"})
    runner(model).ask(make_spec("alias"), PROMPT)
    assert PROVIDERS["alias"].requests[0].model == "vendor/model-7b"


# -- declared knobs ---------------------------------------------------------------------------


def test_declared_knobs_travel_as_request_parameters_warm_up_included() -> None:
    model = echo()
    spec = make_spec(model.name, warmup=True, extra=(("temperature", 0.7), ("top_k", 5)))
    runner(model).ask(spec, PROMPT, case=NoReferenceCase())
    warm, measured = PROVIDERS[model.name].requests
    assert dict(measured.params) == {"temperature": 0.7, "top_k": 5}
    assert dict(warm.params) == dict(measured.params)


KNOBBED = {"knob_effects": {"temperature": {0.7: {"skill": -0.8, "latency_s": 1.5}}}}


def test_the_simulator_reacts_to_a_knob_value_through_knob_effects() -> None:
    model = sim(latency_s=0.5, **KNOBBED)
    r = runner(model)
    answers = {
        t: r.ask(make_spec(model.name, extra=(("temperature", t),)), PROMPT, case=Case())
        for t in (0.0, 0.7)
    }
    assert (answers[0.0].text, answers[0.0].latency_s) == ("Paris", 0.5)
    assert (answers[0.7].text, answers[0.7].latency_s) == ("Lyon", 2.0)  # 0.9 - 0.8 < 0.3
    other = r.ask(make_spec(model.name, extra=(("top_p", 0.7),)), PROMPT, case=Case())
    assert other.text == "Paris"  # a knob the model has no effect for changes nothing


def test_which_providers_can_use_a_knob() -> None:
    simulated = create_provider("sim", "s", KNOBBED)
    plain_sim = create_provider("sim", "p", {})
    http = create_provider("openai", "o", {"base_url": "http://127.0.0.1:9/v1"})
    custom = create_provider("echo-test", "e", {})
    assert provider_uses_knob(simulated, "temperature")
    assert not provider_uses_knob(simulated, "top_p") and not provider_uses_knob(plain_sim, "x")
    assert provider_uses_knob(http, "temperature") and provider_uses_knob(http, "top_k")
    assert not provider_uses_knob(http, "stream") and not provider_uses_knob(http, "messages")
    assert provider_uses_knob(custom, "anything")  # no uses_knob: assumed to read params


@pytest.mark.parametrize(
    ("effects", "key"),
    [
        ([1], "knob_effects"),
        ({"temperature": 0.7}, "knob_effects.temperature"),
        ({"temperature": {0.7: {"colour": 1}}}, "knob_effects.temperature.0.7.colour"),
        ({"temperature": {0.7: {"flaky": 3}}}, "knob_effects.temperature.0.7.flaky"),
    ],
)
def test_knob_effects_are_validated_naming_the_key(effects: Any, key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        create_provider("sim", "s", {"knob_effects": effects})


# -- fresh simulated data every cycle -----------------------------------------------------------


def _pattern(r: Runner, model: Model, spec: Any) -> list[str | None]:
    return [
        r.ask(spec, PROMPT, case=Case(case_id=f"c{i}"), run=run).text
        for i in range(20)
        for run in (1, 2, 3)
    ]


def test_each_cycle_draws_fresh_data_and_a_cycle_is_reproducible() -> None:
    model = sim(flaky=0.5)
    spec = make_spec(model.name)
    cycles = {c: _pattern(runner(model, cycle=c), model, spec) for c in (1, 2, 3)}
    assert cycles[1] == _pattern(runner(model, cycle=1), model, spec)  # same cycle, same data
    assert cycles[1] != cycles[2] and cycles[2] != cycles[3] and cycles[1] != cycles[3]
    assert set(cycles[1]) == {"Paris", "Lyon"}


class RecordingSimulator:
    """A simulated provider that records the references it is given."""

    simulated = True
    simulated_time = True

    def __init__(self) -> None:
        self.references: list[Reference | None] = []

    def new_client(self) -> RecordingSimulator:
        return self

    def complete(self, request: Request) -> Reply:
        self.references.append(request.reference)
        return Reply("Paris", simulated_latency_s=0.1)

    def close(self) -> None:
        pass


def test_the_cycle_reaches_every_reference_and_zero_keeps_the_earlier_draws() -> None:
    recorder = RecordingSimulator()
    register_provider("recording-sim", lambda name, options: recorder)
    try:
        model = Model("rec", "recording-sim")
        runner(model, seed=7, cycle=4).ask(make_spec("rec", warmup=True), PROMPT, case=Case())
    finally:
        unregister_provider("recording-sim")
    assert [(r.seed, r.cycle) for r in recorder.references if r] == [(7, 4), (7, 4)]
    # cycle 0 ("no cycle") leaves the hash as it was: the flaky flip is draw(seed, model, ...)
    flaky = sim(flaky=0.5)
    spec = make_spec(flaky.name)
    got = _pattern(runner(flaky, seed=7), flaky, spec)
    flips = [
        draw(7, flaky.name, spec.id, f"c{i}", run, "flaky") < 0.5
        for i in range(20)
        for run in (1, 2, 3)
    ]
    assert got == ["Lyon" if flip else "Paris" for flip in flips]


# -- backoff for real (slept) providers -----------------------------------------------------------


def test_real_backoff_is_slept_with_seeded_full_jitter_and_capped() -> None:
    waits = []
    for _ in range(2):
        model = echo(fail=7)
        sleep = RecordingSleep()
        answer = runner(model, sleep=sleep, rng_seed=42).ask(
            make_spec(model.name, retries=7), PROMPT
        )
        assert answer.text is not None and answer.attempts == 8
        waits.append(sleep.calls)
    assert waits[0] == waits[1]  # same rng_seed, same jitter
    assert len(waits[0]) == 7
    for k, wait in enumerate(waits[0]):
        assert 0.0 <= wait <= min(BACKOFF_CAP_S, 0.5 * 2**k)


def test_retry_after_is_honoured_and_capped_and_the_cap_is_named() -> None:
    model = echo(fail=2, kind="http_429", retry_after=100.0)
    sleep = RecordingSleep()
    answer = runner(model, sleep=sleep).ask(make_spec(model.name, retries=2), PROMPT)
    assert sleep.calls == [RETRY_AFTER_CAP_S, RETRY_AFTER_CAP_S]
    assert answer.total_latency_s >= 2 * RETRY_AFTER_CAP_S
    assert answer.text is not None
    assert answer.notes == ("Retry-After 100 s capped at 30 s (RETRY_AFTER_CAP_S)",)
    failed = echo(fail=9, kind="http_429", retry_after=45.0)
    gave_up = runner(failed, sleep=RecordingSleep()).ask(make_spec(failed.name, retries=1), PROMPT)
    assert gave_up.error_message == (
        "echo failure 2 (Retry-After 45 s capped at 30 s (RETRY_AFTER_CAP_S))"
    )
    short = echo(fail=1, kind="http_429", retry_after=2.0)
    honoured = runner(short, sleep=RecordingSleep()).ask(make_spec(short.name, retries=1), PROMPT)
    assert honoured.notes == ()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("isolation", ["i0", "i1"])
def test_latency_is_the_calls_not_the_clients_construction(isolation: str) -> None:
    """Building a client takes 10 s, the call 1 s: the sample's latency is 1 s under i0 and
    i1 alike (an i1 client is built before the clock starts and closed after it stops)."""
    clock = FakeClock()
    model = echo(clock=clock)
    r = runner(model, clock=clock)
    spec = make_spec(model.name, isolation=isolation)
    answers = [r.ask(spec, PROMPT, run=run) for run in (1, 2)]
    assert [a.latency_s for a in answers] == [1.0, 1.0]
    assert [a.total_latency_s for a in answers] == [1.0, 1.0]
    assert len(PROVIDERS[model.name].clients) == (2 if isolation == "i1" else 1)


def test_non_retryable_errors_are_not_retried() -> None:
    model = echo(fail=1, kind="http_4xx")
    sleep = RecordingSleep()
    answer = runner(model, sleep=sleep).ask(make_spec(model.name, retries=3), PROMPT)
    assert answer.error_kind == "http_4xx" and answer.attempts == 1 and sleep.calls == []
    assert answer.error_message == "echo failure 1" and answer.cost == 0.0


# -- misuse -----------------------------------------------------------------------------------


def test_misuse_is_reported_clearly() -> None:
    model = sim()
    r = runner(model)
    with pytest.raises(LookupError, match="variant 'nope'"):
        r.ask(make_spec(model.name, variant="nope"), PROMPT, case=Case())
    with pytest.raises(LookupError, match="model 'ghost'"):
        r.ask(make_spec("ghost"), PROMPT, case=Case())
    with pytest.raises(ValueError, match="needs the case"):
        r.ask(make_spec(model.name), PROMPT)
    with pytest.raises(ValueError, match="isolation"):
        r.ask(make_spec(model.name, isolation="i9"), PROMPT, case=Case())
