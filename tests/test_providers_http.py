"""The HTTP providers through the runner, against the project's simulator server on 127.0.0.1:
real sockets, real timeouts, real faults."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _simserver_fixture import (
    GOOD,
    VARIANTS,
    Case,
    Model,
    RecordingSleep,
    make_spec,
    sim_servers,
)

from pytest_selfopt.models import anthropic, openai
from pytest_selfopt.models.base import ProviderError, Request, parse_retry_after, redact
from pytest_selfopt.models.runner import Answer, Runner
from pytest_selfopt.models.simserver import SimServer

Start = Callable[..., SimServer]


@pytest.fixture
def sim_server() -> Iterator[Start]:
    with sim_servers() as start:
        yield start


PROMPT = "What is the capital of France?"
KEY = "sk-selfopt-TESTSECRET-0123456789abcdef"
TOKEN = "tok-selfopt-OTHERSECRET-42"


def runner_for(
    server: SimServer, *, provider: str = "openai", sleep: Any = None, **options: Any
) -> Runner:
    opts = {"base_url": server.url, "simulated": True, "model": "lfm", **options}
    models = {"lfm": Model("lfm", provider, opts, price=(1.0, 2.0))}
    return Runner(models, VARIANTS, sleep=sleep or RecordingSleep(), rng_seed=1)


def ask(runner: Runner, **knobs: Any) -> Answer:
    knobs.setdefault("timeout_s", 0.5)
    return runner.ask(make_spec("lfm", **knobs), PROMPT, case=Case())


# -- faults -------------------------------------------------------------------------------------

FAULTS = [
    ("latency;delay_s=2", "timeout"),  # no byte within the timeout
    ("trickle;delay_s=3", "timeout"),  # bytes keep coming, but the attempt's deadline passes
    ("429;retry_after=0", "http_429"),
    ("500", "http_5xx"),
    ("503", "http_5xx"),
    ("drop", "connect"),  # connection closed mid-body
    ("malformed", "protocol"),
    ("content_type", "protocol"),
]


@pytest.mark.parametrize(("fault", "kind"), FAULTS, ids=[f.split(";")[0] for f, _ in FAULTS])
def test_each_fault_is_classified_and_retried(sim_server: Start, fault: str, kind: str) -> None:
    server = sim_server({"lfm": GOOD})
    (injected,) = server.set_faults(fault)
    sleep = RecordingSleep()
    with runner_for(server, sleep=sleep) as runner:
        answer = ask(runner, retries=1)
    assert answer.text is None
    assert answer.error_kind == kind
    assert answer.attempts == 2 and injected.struck == 2
    assert server.stats()["requests"] == 2
    assert len(sleep.calls) == 1  # one backoff between the two attempts
    assert answer.cost == 0.0 and answer.input_tokens == 0


def test_half_second_timeout_ends_an_attempt_against_a_five_second_response(
    sim_server: Start,
) -> None:
    server = sim_server({"lfm": GOOD})
    server.set_faults("latency;delay_s=5")
    with runner_for(server) as runner:
        t0 = time.monotonic()
        answer = ask(runner, timeout_s=0.5, retries=0)
        elapsed = time.monotonic() - t0
    assert answer.error_kind == "timeout" and answer.attempts == 1
    assert elapsed < 4.0


def test_transient_503_is_cured_by_a_retry(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    server.set_faults("503;times=1")
    with runner_for(server) as runner:
        answer = ask(runner, retries=1)
    assert answer.text == "Paris" and answer.error_kind is None
    assert answer.attempts == 2
    assert server.stats()["statuses"] == {"503": 1, "200": 1}
    assert answer.total_latency_s >= answer.latency_s


def test_without_retries_the_transient_503_is_the_result(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    server.set_faults("503;times=1")
    with runner_for(server) as runner:
        answer = ask(runner, retries=0)
    assert answer.error_kind == "http_5xx" and answer.attempts == 1
    assert "HTTP 503" in (answer.error_message or "")


@pytest.mark.parametrize("retry_after", ["2", "date"])
def test_retry_after_is_honoured(sim_server: Start, retry_after: str) -> None:
    server = sim_server({"lfm": GOOD})
    value = email.utils.formatdate(time.time() + 4, usegmt=True) if retry_after == "date" else "2"
    server.set_faults({"kind": "status", "status": 429, "retry_after": value, "times": 1})
    sleep = RecordingSleep()
    with runner_for(server, sleep=sleep) as runner:
        answer = ask(runner, retries=1)
    assert answer.text == "Paris" and answer.attempts == 2
    assert len(sleep.calls) == 1 and sleep.calls[0] >= 2.0  # jitter alone is at most 0.5 s
    assert answer.total_latency_s >= 2.0


def test_a_401_is_not_retried(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    server.set_faults("status;status=401")
    sleep = RecordingSleep()
    with runner_for(server, sleep=sleep) as runner:
        answer = ask(runner, retries=3)
    assert answer.error_kind == "http_4xx" and answer.attempts == 1
    assert sleep.calls == [] and server.stats()["requests"] == 1
    assert (answer.error_message or "").startswith(f"HTTP 401 from {server.url}:")


# -- isolation and warm-up ------------------------------------------------------------------------


@pytest.mark.parametrize(("isolation", "connections"), [("i0", 1), ("i1", 10)])
def test_isolation_is_visible_in_the_servers_connection_count(
    sim_server: Start, isolation: str, connections: int
) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server) as runner:
        answers = [
            runner.ask(make_spec("lfm", isolation=isolation), PROMPT, case=Case(), run=r)
            for r in range(1, 11)
        ]
    assert [a.text for a in answers] == ["Paris"] * 10
    stats = server.stats()
    assert stats["requests"] == 10
    assert stats["connections"] == connections


COLD = {**GOOD, "cold_start_calls": 2, "cold_start_latency_s": 100.0}  # 1 s at FAST, > 0.3 s


@pytest.mark.parametrize("warmup", [False, True])
def test_warmup_cures_the_servers_cold_start(sim_server: Start, warmup: bool) -> None:
    server = sim_server({"lfm": COLD})
    with runner_for(server) as runner:
        spec = make_spec("lfm", timeout_s=0.3, retries=0, warmup=warmup)
        answers = [runner.ask(spec, PROMPT, case=Case(), run=r) for r in (1, 2, 3)]
    kinds = [a.error_kind for a in answers]
    if warmup:
        assert kinds == [None, None, None]
        assert runner.warmup_attempts == 3  # two cold pings time out, the third is warm
        assert [a.attempts for a in answers] == [1, 1, 1]  # warm-up is not counted
    else:
        assert kinds == ["timeout", "timeout", None]
        assert runner.warmup_attempts == 0
    assert server.stats()["cold_starts"] == {"lfm": 2}


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_api_key_never_appears_in_errors_even_when_the_server_echoes_it(
    sim_server: Start, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    monkeypatch.setenv("SELFOPT_TEST_KEY", KEY)
    monkeypatch.setenv("SELFOPT_TEST_TOKEN", TOKEN)
    server = sim_server({"lfm": GOOD})
    server.set_faults("echo_headers")
    raw = httpx.post(
        f"{server.url}/chat/completions",
        json={"model": "lfm"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert raw.status_code == 401 and KEY in raw.text  # the server really echoes it
    options = {"api_key_env": "SELFOPT_TEST_KEY", "headers": {"X-Token": "${SELFOPT_TEST_TOKEN}"}}
    with runner_for(server, provider=provider, **options) as runner:
        answer = ask(runner, retries=2)
    assert answer.error_kind == "http_4xx" and answer.attempts == 1
    message = answer.error_message or ""
    assert "HTTP 401" in message and "[REDACTED]" in message
    for secret in (KEY, TOKEN):
        assert secret not in message and secret not in repr(answer)
    create = openai.create if provider == "openai" else anthropic.create
    client = create("lfm", {"base_url": server.url, "model": "lfm", **options}).new_client()
    with pytest.raises(ProviderError) as info:
        client.complete(Request(model="lfm", prompt="hi", timeout_s=2.0))
    client.close()
    for secret in (KEY, TOKEN):
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert all(secret not in str(arg) for arg in info.value.args)


def test_missing_key_variable_is_a_config_error_naming_only_the_variable(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server, api_key_env="SELFOPT_SURELY_UNSET_VAR") as runner:
        answer = ask(runner, retries=3)
    assert answer.error_kind == "config" and answer.attempts == 1
    assert "SELFOPT_SURELY_UNSET_VAR" in (answer.error_message or "")
    assert server.stats()["requests"] == 0


# -- the reference travels only to simulators --------------------------------------------------


def test_reference_header_is_sent_only_when_simulated(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    case = Case()
    real = Runner({"lfm": Model("lfm", "openai", {"base_url": server.url})}, VARIANTS)
    answer = real.ask(make_spec("lfm"), PROMPT, case=case)
    real.close()
    assert answer.error_kind == "http_4xx" and "X-Selfopt-Reference" in (answer.error_message or "")
    assert case.calls == []  # the runner never even built it
    assert server.stats()["with_reference"] == 0 and server.stats()["without_reference"] == 1
    with runner_for(server) as sim:
        assert sim.ask(make_spec("lfm"), PROMPT, case=case).text == "Paris"
    assert server.stats()["with_reference"] == 1 and len(case.calls) == 1
    # even a reference handed to a non-simulated client directly is not sent
    client = openai.create("lfm", {"base_url": server.url}).new_client()
    with pytest.raises(ProviderError) as info:
        client.complete(
            Request(
                model="lfm",
                prompt=PROMPT,
                reference=case.reference(run=1, attempt=1, variant="plain", spec_id="x", seed=0),
            )
        )
    client.close()
    assert info.value.kind == "http_4xx" and info.value.status == 400
    assert server.stats()["with_reference"] == 1


# -- shapes -------------------------------------------------------------------------------------


def test_openai_reply_text_usage_and_cost(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server) as runner:
        answer = runner.ask(make_spec("lfm", variant="atomic"), PROMPT, case=Case())
    assert answer.text == "Paris"
    assert answer.input_tokens == len(("Final answer only.\n\n" + PROMPT).split())
    assert answer.output_tokens == 1
    assert answer.cost == pytest.approx((answer.input_tokens * 1.0 + 1 * 2.0) / 1e6)


def test_anthropic_messages_shape_and_overloaded(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server, provider="anthropic") as runner:
        answer = ask(runner)
        assert answer.text == "Paris"
        assert answer.input_tokens == len(PROMPT.split()) and answer.output_tokens == 1
        server.set_faults("529")
        overloaded = ask(runner, retries=1)
    assert overloaded.error_kind == "http_5xx" and overloaded.attempts == 2
    assert "overloaded_error" in (overloaded.error_message or "")
    assert server.stats()["by_path"] == {"/v1/messages": 3}


def test_anthropic_defaults() -> None:
    provider = anthropic.create("claude", {"model": "claude-haiku-4-5"})
    assert provider.url == "https://api.anthropic.com/v1/messages"
    assert provider.options.api_key_env == "ANTHROPIC_API_KEY" and provider.max_tokens == 1024
    assert provider.simulated is False
    with pytest.raises(ValueError, match="max_tokens"):
        anthropic.create("claude", {"max_tokens": 0})


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({}, "base_url"),
        ({"base_url": "http://x/v1", "api_key_env": "sk-live-abc 123"}, "api_key_env"),
        ({"base_url": "http://x/v1", "params": {"messages": []}}, "params.messages"),
        ({"base_url": "http://x/v1", "headers": {"X-A": 1}}, "headers.X-A"),
        ({"base_url": "http://x/v1", "simulated": "yes"}, "simulated"),
    ],
)
def test_openai_options_are_validated_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        openai.create("lfm", options)
    assert "sk-live-abc" not in str(info.value)  # a key pasted in place of its variable's name


def test_unreachable_server_is_a_connect_error(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    url = server.url
    server.stop()
    runner = Runner(
        {"lfm": Model("lfm", "openai", {"base_url": url, "simulated": True})},
        VARIANTS,
        sleep=RecordingSleep(),
    )
    answer = runner.ask(make_spec("lfm", retries=1), PROMPT, case=Case())
    assert answer.error_kind == "connect" and answer.attempts == 2


def test_retry_after_parsing_and_redaction() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(email.utils.formatdate(1000.0 + 10, usegmt=True), now=1000.0) == 10.0
    assert parse_retry_after(email.utils.formatdate(1000.0, usegmt=True), now=2000.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert redact("Bearer abc and abc", ["abc", None]) == "Bearer [REDACTED] and [REDACTED]"
