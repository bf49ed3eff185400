"""The simulator server on its own: routes, shapes, fault switches, keep-alive, concurrency,
agreement with the in-process simulator, and the ``selfopt sim-server`` entry point."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from _simserver_fixture import GOOD, Case, sim_servers

from pytest_selfopt.models.base import REFERENCE_HEADER
from pytest_selfopt.models.sim import SimBehaviour, simulate
from pytest_selfopt.models.simhttp import Fault
from pytest_selfopt.models.simserver import SimServer, main

Start = Callable[..., SimServer]


@pytest.fixture
def sim_server() -> Iterator[Start]:
    with sim_servers() as start:
        yield start


def ref_header(case: Case | None = None, warmed_up: bool = False, **kw: Any) -> dict[str, str]:
    coords = {"run": 1, "attempt": 1, "variant": "plain", "spec_id": "s1", "seed": 0, **kw}
    ref = replace((case or Case()).reference(**coords), warmed_up=warmed_up)
    return {REFERENCE_HEADER: json.dumps(ref.to_dict())}


def chat(
    client: httpx.Client,
    server: SimServer,
    model: str = "lfm",
    *,
    headers: dict[str, str] | None = None,
    prompt: str = "capital of France?",
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return client.post(
        f"{server.url}/chat/completions",
        json=body,
        headers=headers if headers is not None else ref_header(),
    )


def test_openai_shape_models_and_stats_routes(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD, "big": GOOD})
    with httpx.Client() as client:
        reply = chat(client, server)
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        data = reply.json()
        assert data["choices"][0]["message"] == {"role": "assistant", "content": "Paris"}
        assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        # the route without /v1 works as well (some clients are configured without it)
        assert (
            client.post(
                f"{server.root}/chat/completions", json={"model": "lfm"}, headers=ref_header()
            ).status_code
            == 200
        )
        models = client.get(f"{server.url}/models").json()
        assert sorted(m["id"] for m in models["data"]) == ["big", "lfm"]
        stats = client.get(f"{server.root}/stats").json()
    assert stats["requests"] == 2 and stats["by_model"] == {"lfm": 2}
    assert stats["connections"] >= 1 and stats["statuses"]["200"] >= 2


def test_errors_unknown_model_missing_or_broken_reference(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with httpx.Client() as client:
        unknown = chat(client, server, model="nope")
        missing = chat(client, server, headers={})
        broken = chat(client, server, headers={REFERENCE_HEADER: "{not json"})
        anthropic = client.post(f"{server.root}/v1/messages", json={"model": "lfm"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    assert missing.status_code == 400 and REFERENCE_HEADER in missing.json()["error"]["message"]
    assert broken.status_code == 400
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_shape(sim_server: Start) -> None:
    server = sim_server({"claude": GOOD})
    body = {
        "model": "claude",
        "max_tokens": 10,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "capital of France?"}]}],
    }
    reply = httpx.post(f"{server.root}/v1/messages", json=body, headers=ref_header())
    data = reply.json()
    assert data["type"] == "message" and data["content"] == [{"type": "text", "text": "Paris"}]
    assert data["usage"] == {"input_tokens": 3, "output_tokens": 1}


@pytest.mark.parametrize(
    ("path", "anthropic"),
    [("/v1/chat/completions", False), ("/chat/completions", False), ("/v1/messages", True)],
)
def test_streaming_is_refused_with_a_400_that_says_so(
    sim_server: Start, path: str, anthropic: bool
) -> None:
    """The official SDKs with ``stream=True`` get an error they show, not an empty stream."""
    server = sim_server({"lfm": GOOD})
    body = {"model": "lfm", "stream": True, "max_tokens": 5, "messages": [{"role": "user",
            "content": "capital of France?"}]}  # fmt: skip
    reply = httpx.post(f"{server.root}{path}", json=body, headers=ref_header())
    assert reply.status_code == 400 and reply.headers["content-type"] == "application/json"
    data = reply.json()
    error = data["error"]
    assert "does not simulate streaming" in error["message"]
    if anthropic:
        assert data["type"] == "error" and error["type"] == "invalid_request_error"
    body["stream"] = False
    assert httpx.post(f"{server.root}{path}", json=body, headers=ref_header()).status_code == 200


def test_the_printed_url_works_as_base_url_for_both_official_sdks(sim_server: Start) -> None:
    """The OpenAI SDK posts to ``{base_url}/chat/completions``; the Anthropic SDK to
    ``{base_url}/v1/messages``, so given the same ``.../v1`` it reaches ``/v1/v1/messages``."""
    server = sim_server({"lfm": GOOD})
    openai_sdk = httpx.post(
        f"{server.url}/chat/completions",
        json={"model": "lfm", "messages": [{"role": "user", "content": "q"}]},
        headers=ref_header(),
    )
    assert openai_sdk.json()["choices"][0]["message"]["content"] == "Paris"
    for base_url in (server.url, server.root):
        anthropic_sdk = httpx.post(
            f"{base_url}/v1/messages",
            json={"model": "lfm", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]},
            headers=ref_header(),
        )
        assert anthropic_sdk.json()["content"] == [{"type": "text", "text": "Paris"}], base_url
    assert server.stats()["by_path"] == {
        "/v1/chat/completions": 1,
        "/v1/v1/messages": 1,
        "/v1/messages": 1,
    }


@pytest.mark.parametrize("cycle", [0, 3])
def test_answers_agree_with_the_in_process_simulator(sim_server: Start, cycle: int) -> None:
    options = {"skill": 0.5, "flaky": 0.3, "ramble": 0.3, "latency_s": 0.2}
    server = sim_server({"m": options})
    behaviour = SimBehaviour.from_options("m", options)
    texts = []
    with httpx.Client() as client:
        for run in range(1, 13):
            case = Case(case_id=f"c{run}", difficulty=run / 13)
            ref = case.reference(run=run, attempt=1, variant="plain", spec_id="s", seed=7)
            ref = replace(ref, cycle=cycle)
            got = client.post(
                f"{server.url}/chat/completions",
                headers={REFERENCE_HEADER: json.dumps(ref.to_dict())},
                json={"model": "m", "messages": [{"role": "user", "content": "q q"}]},
            ).json()
            expected = simulate(behaviour, ref, "q q", float("inf"))
            assert got["choices"][0]["message"]["content"] == expected.text
            texts.append(expected.text)
            other = simulate(behaviour, replace(ref, cycle=cycle + 1), "q q", 1e9)
            texts.append(other.text)
    assert texts[0::2] != texts[1::2]  # another cycle, other draws


def test_faults_by_api_with_times_and_after(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with httpx.Client() as client:
        assert (
            client.post(
                f"{server.root}/_faults",
                json={
                    "faults": [
                        {"kind": "503", "times": 2},
                        {"kind": "malformed", "after": 3, "times": 1},
                    ]
                },
            ).status_code
            == 200
        )
        listed = client.get(f"{server.root}/_faults").json()["faults"]
        replies = [chat(client, server) for _ in range(5)]
        assert client.delete(f"{server.root}/_faults").status_code == 200
        assert chat(client, server).status_code == 200
        bad = client.post(f"{server.root}/_faults", json={"kind": "volcano"})
    assert [f["kind"] for f in listed] == ["status", "malformed"]
    assert [r.status_code for r in replies] == [503, 503, 200, 200, 200]
    assert [_is_json(r) for r in replies] == [True, True, True, False, True]  # after=3, times=1
    assert bad.status_code == 400 and "volcano" in bad.text
    assert server.stats()["faults"] == {"503": 2, "malformed": 1}


def _is_json(reply: httpx.Response) -> bool:
    try:
        reply.json()
    except ValueError:
        return False
    return True


def test_per_request_fault_header(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with httpx.Client() as client:
        limited = chat(
            client, server, headers={**ref_header(), "X-Selfopt-Fault": "429;retry_after=7"}
        )
        html = chat(client, server, headers={**ref_header(), "X-Selfopt-Fault": "content_type"})
        bogus = chat(client, server, headers={**ref_header(), "X-Selfopt-Fault": "503;colour=red"})
        fine = chat(client, server)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert html.status_code == 200 and html.headers["content-type"] == "text/html"
    assert bogus.status_code == 400 and "colour" in bogus.text
    assert fine.status_code == 200


def test_fault_parsing() -> None:
    assert Fault.parse("503") == Fault("status", status=503)
    assert Fault.parse("429").retry_after == "1"
    assert Fault.parse("echo_headers").status == 401
    trickle = Fault.parse("trickle;delay_s=1.5;times=2;path=/v1/messages")
    assert (trickle.kind, trickle.delay_s, trickle.times, trickle.path) == (
        "trickle",
        1.5,
        2,
        "/v1/messages",
    )
    with pytest.raises(ValueError, match="kind"):
        Fault.parse("volcano")


def test_keep_alive_reuses_one_connection_and_fresh_clients_do_not(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with httpx.Client() as client:
        assert all(chat(client, server).status_code == 200 for _ in range(5))
    assert server.stats()["connections"] == 1
    for _ in range(5):
        with httpx.Client() as client:
            chat(client, server)
    assert server.stats()["connections"] == 6


def test_sixty_concurrent_requests_all_answered(sim_server: Start) -> None:
    # 3 s of real latency (6 s simulated at time_scale 0.5) keeps every request in flight
    # together, even on a machine busy enough that 60 threads take a second to start sending
    server = sim_server({"lfm": {**GOOD, "latency_s": 6.0}}, time_scale=0.5)
    barrier = threading.Barrier(60)

    def one(i: int) -> str:
        case = Case(case_id=f"c{i}", answer=f"answer-{i}")
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            reply = chat(client, server, headers=ref_header(case))
            return str(reply.json()["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(max_workers=60) as pool:
        texts = list(pool.map(one, range(60)))
    assert texts == [f"answer-{i}" for i in range(60)]
    stats = server.stats()
    assert stats["requests"] == 60 and stats["connections"] == 60
    assert stats["max_in_flight"] >= 50


def test_cold_starts_follow_case_and_run_on_every_server_and_are_really_slept(
    sim_server: Start,
) -> None:
    """Run 1 of the first case of a file is cold on any server, however often it is asked."""
    cold = {**GOOD, "cold_start_calls": 1, "cold_start_latency_s": 100.0}  # 1 s at FAST
    first, second = sim_server({"lfm": cold}), sim_server({"lfm": cold})
    for server in (first, second):
        with httpx.Client(timeout=0.3) as client:
            for _ in range(2):
                with pytest.raises(httpx.ReadTimeout):  # the cold call really takes longer
                    chat(client, server)
            assert chat(client, server, headers=ref_header(run=2)).status_code == 200
            assert chat(client, server, headers=ref_header(Case(position=1))).status_code == 200
            warm = ref_header(warmed_up=True)  # the spec's warm-up answered first
            assert chat(client, server, headers=warm).status_code == 200
        assert server.stats()["cold_starts"] == {"lfm": 2}
    first.reset()
    assert first.stats()["requests"] == 0 and first.stats()["cold_starts"] == {}


def test_stop_cuts_sleeping_requests_and_idle_connections(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    server.set_faults("latency;delay_s=60")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=60) as client:
                chat(client, server)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while server.stats()["in_flight"] == 0:
        threading.Event().wait(0.01)
    server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive() and len(errors) == 1
    server.stop()  # idempotent


def test_invalid_models_are_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"models\.lfm\.skill"):
        SimServer({"lfm": {"skill": 7}})


def test_main_serves_the_configs_sim_models_until_interrupted(tmp_path: Path) -> None:
    config = tmp_path / "selfopt.yaml"
    config.write_text(
        "models:\n"
        "  lfm: {provider: sim, skill: 0.9, latency_s: 0.5}\n"
        "  remote: {provider: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pytest_selfopt.models.simserver import main; "
            "sys.exit(main(sys.argv[1:]))",
            "--config",
            str(config),
            "--port",
            "0",
            "--time-scale",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        line = lines.get(timeout=10)
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        usage = lines.get(timeout=10)
        assert f"use {url} as base_url" in usage and "both official SDKs" in usage
        assert "streaming is not simulated" in usage
        models = httpx.get(f"{url}/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["lfm"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "selfopt.yaml"
    config.write_text("models:\n  lfm: {provider: sim, flaky: 2}\n")
    assert main(["--config", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "models.lfm.flaky" in err
    assert main(["--config", str(tmp_path / "missing.yaml"), "--port", "0"]) == 2


def test_a_request_leaves_in_flight_before_its_answer_reaches_the_client(
    sim_server: Start,
) -> None:
    """Serial calls must read as one in flight even when the next goes out on another
    connection the moment an answer is complete (another spec's kept client does that)."""
    server = sim_server({"lfm": GOOD})
    seen = []
    with httpx.Client() as first, httpx.Client() as second:
        for i in range(20):
            assert chat(first if i % 2 else second, server).status_code == 200
            seen.append(server.stats()["in_flight"])
    assert seen == [0] * 20
    assert server.stats()["max_in_flight"] == 1
