"""The HTTP providers through the runner, against the project's simulator server on 127.0.0.1:
real sockets, real timeouts, real faults. (Secrets: tests/test_secrets.py.)"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

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
from pytest_selfopt.models.base import (
    ProviderError,
    Request,
    parse_retry_after,
    redact,
)
from pytest_selfopt.models.breaker import Breaker
from pytest_selfopt.models.runner import Answer, Runner
from pytest_selfopt.models.simserver import SimServer

Start = Callable[..., SimServer]


@pytest.fixture
def sim_server() -> Iterator[Start]:
    with sim_servers() as start:
        yield start


PROMPT = "What is the capital of France?"


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
    assert (answer.error_message or "").startswith(f"HTTP 401 from {server.url}/chat/completions:")


DEEP = 100_000  # far past Python's recursion limit
HOSTILE_REPLIES = {
    "deep_list": (200, "[" * DEEP + "]" * DEEP),
    "deep_object": (200, '{"a":' * DEEP + "1" + "}" * DEEP),
    "deep_in_choices": (200, '{"choices": ' + "[" * DEEP + "]" * DEEP + "}"),
    "null": (200, "null"),
    "list": (200, "[1, 2, 3]"),
    "string": (200, '"Paris"'),
    "empty": (200, ""),
    "nulls": (200, '{"choices": null, "content": null, "usage": null}'),
    "null_choice": (200, '{"choices": [null], "content": [null]}'),
    "object_content": (
        200,
        '{"choices": [{"message": {"content": {"a": 1}}}], "content": [{"type": "text", '
        '"text": {"a": 1}}]}',
    ),
    "huge_numbers": (200, '{"choices": [{"message": {"content": 1e999}}], "usage": 1e999}'),
    "not_utf8": (200, b'{"choices": [{"message": {"content": "\xff\xfe"}}]}'),
    "bad_utf8_error": (500, b"\xff\xfe\x00 upstream \x1b[2J failure"),
    "deep_error": (401, '{"error": ' * DEEP + "1" + "}" * DEEP),
    "error_of_lists": (400, '{"error": [[[null]]], "message": {"x": []}}'),
    "huge": (200, "[" + "1," * (9 * 1024 * 1024) + "1]"),  # 18 MB, over MAX_BODY_BYTES
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_REPLIES))
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_replies_of_any_shape_become_classified_samples(
    sim_server: Start, provider: str, shape: str
) -> None:
    """Deeply nested, wrongly typed, null, huge or non-UTF-8 replies (answers and error
    bodies): a classified failure with a bounded, printable message, never an exception."""
    status, body = HOSTILE_REPLIES[shape]
    server = sim_server({"lfm": GOOD})
    server.set_faults({"kind": "reply", "status": status, "body": body})
    with runner_for(server, provider=provider) as runner:
        answer = ask(runner, retries=0, timeout_s=30.0)
    expected = {200: "protocol", 400: "http_4xx", 401: "http_4xx", 500: "http_5xx"}[status]
    assert answer.text is None and answer.error_kind == expected, answer.error_message
    message = answer.error_message or ""
    assert len(message) < 600 and message.isprintable()
    assert server.url in message


@pytest.mark.parametrize(
    ("provider", "suffix", "requested", "hint"),
    [
        (
            "openai",
            "/v1/chat/completions",
            "/v1/chat/completions/chat/completions",
            "base_url should not include /chat/completions (the provider appends it): "
            "try base_url: {root}/v1",
        ),
        ("openai", "/api", "/api/chat/completions", "base_url should usually end at /v1"),
        (
            "anthropic",
            "/v1/messages",
            "/v1/messages/v1/messages",
            "base_url should not include /messages (the provider appends /v1/messages): "
            "try base_url: {root}",
        ),
    ],
)
def test_http_errors_name_the_url_requested_and_a_404_hints_at_base_url(
    sim_server: Start, provider: str, suffix: str, requested: str, hint: str
) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server, provider=provider, base_url=server.root + suffix) as runner:
        answer = ask(runner)
    assert answer.error_kind == "http_4xx"
    message = answer.error_message or ""
    assert message.startswith(f"HTTP 404 from {server.root}{requested}: ")
    assert hint.format(root=server.root) in message


def test_connection_errors_name_the_url_requested(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    url = server.url
    server.stop()
    model = Model("lfm", "openai", {"base_url": url, "simulated": True})
    with Runner({"lfm": model}, VARIANTS, sleep=RecordingSleep()) as runner:
        answer = ask(runner)
    assert answer.error_kind == "connect"
    assert f"{url}/chat/completions" in (answer.error_message or "")


# -- declared knobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_knob_is_sent_over_the_models_params_and_the_server_reacts(
    sim_server: Start, provider: str
) -> None:
    """``params: {temperature: 0}`` and the knob ``temperature: 0.7``: the body carries 0.7 (the
    server's ``knob_effects`` for 0.7 make the model wrong); a knob named like a body key the
    provider owns (``stream``) is not sent (the server would refuse it)."""
    effects = {"temperature": {0.7: {"skill": -0.8}}, "stream": {True: {"skill": -0.8}}}
    server = sim_server({"lfm": {**GOOD, "knob_effects": effects}})
    params = {"temperature": 0.0}
    with runner_for(server, provider=provider, params=params) as runner:
        cold = ask(runner, extra=(("temperature", 0.0),))
        hot = ask(runner, extra=(("temperature", 0.7),))
        default = ask(runner)
        streamed = ask(runner, extra=(("stream", True),))
    assert (cold.text, hot.text, default.text) == ("Paris", "Lyon", "Paris")
    assert streamed.text == "Paris", streamed.error_message


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
        # run 1 of the first three cases of a file: the first two are cold (cold_start_calls)
        answers = [runner.ask(spec, PROMPT, case=Case(position=p), run=1) for p in (0, 1, 2)]
    kinds = [a.error_kind for a in answers]
    if warmup:
        assert kinds == [None, None, None]
        assert runner.warmup_attempts == 3  # two cold pings time out, the third is warm
        assert [a.attempts for a in answers] == [1, 1, 1]  # warm-up is not counted
    else:
        assert kinds == ["timeout", "timeout", None]
        assert runner.warmup_attempts == 0
    assert server.stats()["cold_starts"] == {"lfm": 2}


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
    for hostile in ("nan", "inf", "1e400", "9" * 400, "Wed, 21 Oct 99999999999 07:28:00 GMT"):
        assert parse_retry_after(hostile) is None, hostile  # never raises
    assert redact("Bearer abc and abc", ["abc", None]) == "Bearer [REDACTED] and [REDACTED]"


# -- a server that is down: the circuit breaker -----------------------------------------------


def closed_port() -> str:
    """A loopback URL nothing listens on (bound, then closed: refused at once)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def test_a_down_server_opens_the_circuit_and_later_calls_fail_at_once_without_backoff() -> None:
    url = closed_port()
    sleep = RecordingSleep()
    model = Model("lfm", "openai", {"base_url": url})
    with Runner({"lfm": model}, VARIANTS, sleep=sleep, rng_seed=1) as runner:
        answers = [runner.ask(make_spec("lfm", retries=2), PROMPT, run=r) for r in range(1, 9)]
        breaker = runner.breaker(runner._provider("lfm"), "lfm")
    assert {a.error_kind for a in answers} == {"connect"}
    # Two asks of 3 real attempts (6 failures: open after the 5th), then no real attempt.
    assert [a.attempts for a in answers] == [3, 2, 1, 1, 1, 1, 1, 1]
    assert len(sleep.calls) == 3  # backoff only between real attempts, before it opened
    refused = [a.error_message or "" for a in answers[2:]]
    assert all(m.startswith("not tried: 5 consecutive connection failures to ") for m in refused)
    assert f"{url}/chat/completions" not in refused[0] and url in refused[0]
    assert all(a.latency_s == 0.0 for a in answers[2:])
    assert breaker.open and breaker.short_circuited == 6


def test_a_server_stopped_mid_run_opens_the_circuit_of_its_endpoint_only(sim_server: Start) -> None:
    up, down = sim_server({"lfm": GOOD}), sim_server({"lfm": GOOD})
    models = {
        "up": Model("up", "openai", {"base_url": up.url, "simulated": True, "model": "lfm"}),
        "down": Model("down", "openai", {"base_url": down.url, "simulated": True, "model": "lfm"}),
    }
    with Runner(models, VARIANTS, sleep=RecordingSleep(), rng_seed=1) as runner:
        assert runner.ask(make_spec("down"), PROMPT, case=Case()).text == "Paris"
        down.stop()
        lost = [runner.ask(make_spec("down", retries=0), PROMPT, case=Case()) for _ in range(7)]
        other = runner.ask(make_spec("up", retries=0), PROMPT, case=Case())
    assert [a.error_kind for a in lost] == ["connect"] * 7
    assert ["not tried" in (a.error_message or "") for a in lost] == [False] * 5 + [True] * 2
    assert other.text == "Paris"  # another endpoint's circuit is its own


def test_the_circuit_lets_one_trial_through_per_interval_and_any_reply_closes_it() -> None:
    now = [100.0]
    breaker = Breaker("http://x/v1", threshold=2, retry_s=2.0, clock=lambda: now[0])
    assert breaker.allow()
    breaker.record("connect")
    breaker.record("timeout")  # the server is there, just slow: not a connection failure
    breaker.record("connect")
    assert not breaker.open and breaker.allow()
    breaker.record("connect")
    assert breaker.open and not breaker.allow()
    now[0] += 2.0
    assert breaker.allow()  # the half-open trial...
    assert not breaker.allow()  # ...only one at a time
    breaker.record("connect")  # the trial failed: wait another interval
    now[0] += 1.0
    assert not breaker.allow()
    now[0] += 1.0
    assert breaker.allow()
    breaker.record("http_5xx")  # any reply: the endpoint is back
    assert not breaker.open and breaker.allow() and breaker.allow()
