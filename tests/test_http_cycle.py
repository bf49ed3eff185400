"""The HTTP path end to end: pytest sessions (in-process, tests/suites.py) running a suite
over HTTP (``provider: openai``, the example's ``benchmarks/http`` test files and pytest.ini)
against the simulator server on 127.0.0.1, plus the ``selfopt sim-server`` command itself.

The suite is the mini suite; its HTTP variant in ``benchmarks/http`` asks the same cases of
the same simulated models, served by a :class:`SimServer` each test starts (port 0, a
compressed clock). A server's cold start is per server and model (in-process it is per
process), so tests that look at cold starts start a fresh server per session.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _simserver_fixture import sim_servers
from suites import (
    CYCLE,
    EXAMPLE,
    MINI_CONFIG,
    XDIST,
    decisions,
    history,
    mini_suite,
    recommendations,
    run,
)

from pytest_selfopt.models.simserver import SimServer, load_sim_models
from pytest_selfopt.store.parse import parse_history

HTTP = "benchmarks/http"
RUN = ("--selfopt", "-p", "no:cacheprovider")
#: The HTTP example's clock: the server sleeps 2% of every simulated latency; the models'
#: ``time_scale: 0.02`` makes the client count in simulated seconds too.
SCALE = 0.02
SECRET = "sk-test-SECRET123"
KEY_ENV = "SELFOPT_TEST_KEY"


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimServer]]:
    with sim_servers() as start:
        yield start


def mini_server(start: Callable[..., SimServer], pytester: pytest.Pytester) -> SimServer:
    """The mini suite in ``benchmarks/``, and a server with its simulated models."""
    bench = mini_suite(pytester)
    return start(load_sim_models(bench / "selfopt.yaml"), time_scale=SCALE)


def http_suite(pytester: pytest.Pytester, server: SimServer, **overrides: Any) -> Path:
    """The mini suite in ``benchmarks/`` and its HTTP variant in ``benchmarks/http`` (the
    example's test files and pytest.ini): every model an openai model of ``server``, top-level
    keys overridden (models too: then given whole)."""
    if not (pytester.path / "benchmarks").exists():
        mini_suite(pytester)
    http = pytester.path / HTTP
    http.mkdir()
    for name in ("pytest.ini", "http_atomic.py", "http_extended.py"):
        shutil.copy(EXAMPLE / "http" / name, http / name)
    config = {
        **MINI_CONFIG,
        "models": {
            alias: {"provider": "openai", "model": alias, "simulated": True, "time_scale": SCALE}
            for alias in MINI_CONFIG["models"]
        },
        **overrides,
    }
    for model in config["models"].values():
        if model.get("provider") == "openai":
            model["base_url"] = server.url
    path = http / "selfopt.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def http_history(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    """The cycles of the HTTP suite's history.json as the loop reads them back."""
    path = pytester.path / HTTP / "baselines" / "history.json"
    return parse_history(path.read_text(encoding="utf-8"), str(path))


def kinds(entry: dict[str, Any], phase: str) -> set[str]:
    return {d["kind"] for d in entry["phases"][phase]["diagnoses"]}


# -- the suite over HTTP ----------------------------------------------------------------------


def test_plain_run_of_one_case_over_http_passes_once(
    pytester: pytest.Pytester, sim_server: Callable[..., SimServer]
) -> None:
    server = mini_server(sim_server, pytester)
    http_suite(pytester, server)
    result = run(pytester, "-p", "no:cacheprovider", HTTP, "-k", "capital-france", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*http_atomic.py::test_atomic[[]capital-france[]] PASSED*"])
    stats = server.stats()
    assert stats["by_model"] == {"lfm": 1} and stats["with_reference"] == 1
    assert not (pytester.path / HTTP / "baselines").exists()
    assert not (pytester.path / "baselines").exists()


@pytest.mark.slow  # two sessions with xdist workers
def test_http_cycles_with_xdist_decide_like_the_in_process_simulator(
    pytester: pytest.Pytester, sim_server: Callable[..., SimServer]
) -> None:
    """Two cycles: in-process simulator (serially; tests/test_plugin_cycle.py shows -n 2
    decides the same) versus HTTP with -n 2, same seed. Cycle 1 uses lfm only; cycle 2 measures
    claude-haiku, cold (``cold_start_calls: 4``) on run 1 of each of extended's 3 cases, both
    attempts (``retries: 1``), in-process and over HTTP alike."""
    server = mini_server(sim_server, pytester)
    http_suite(pytester, server)
    for cycle in (1, 2):
        local = run(pytester, *CYCLE)
        assert local.ret == 0, local.stdout.str()
        remote = run(pytester, *RUN, HTTP, *XDIST)
        assert remote.ret == 0, remote.stdout.str() + remote.stderr.str()
        want, got = history(pytester)[-1], http_history(pytester)[-1]
        assert got["cycle"] == want["cycle"] == cycle
        assert decisions(got) == decisions(want), f"cycle {cycle}"
        assert recommendations(got) == recommendations(want), f"cycle {cycle}"
        for phase, rec in want["phases"].items():
            assert kinds(got, phase) == kinds(want, phase), f"cycle {cycle} {phase}"
            assert (
                got["phases"][phase]["measured_baseline"]["median"]
                == rec["measured_baseline"]["median"]
            )
    first, second = http_history(pytester)
    assert decisions(first)[("atomic", "variant=atomic")] == "PROMOTE"
    assert ("extended", "route_next_model", "claude-haiku") in recommendations(first)
    assert decisions(second)[("extended", "model=claude-haiku")] == "HOLD"
    assert ("extended", "enable_warmup", "True") in recommendations(second)
    assert "cold_start" in kinds(second, "extended")
    stats = server.stats()
    assert stats["cold_starts"] == {"claude-haiku": 3 * 2}
    assert stats["without_reference"] == 0 and stats["requests"] == stats["with_reference"]


# -- warm-up cures the server's cold start --------------------------------------------------


def cold_suite(pytester: pytest.Pytester, server: SimServer, *, warmup: bool) -> None:
    model = {"provider": "openai", "model": "haiku", "simulated": True, "time_scale": SCALE}
    http_suite(
        pytester,
        server,
        runs=3,
        models={"haiku": model},
        fallback_chain=[],
        initial={
            "model": "haiku",
            "variant": "native_api",
            "timeout_s": 60,
            "retries": 0,
            "isolation": "i0",
            "warmup": warmup,
        },
        search={},
        max_candidates=0,
    )


@pytest.mark.parametrize("warmup", [False, True], ids=["warmup-off", "warmup-on"])
def test_warmup_cures_the_servers_cold_start(
    pytester: pytest.Pytester, sim_server: Callable[..., SimServer], warmup: bool
) -> None:
    # Its first 2 calls take 120 simulated s (2.4 s real): past the 60 s (1.2 s real) timeout.
    server = sim_server(
        {"haiku": {"skill": 0.95, "latency_s": 0.5, "cold_start_calls": 2}}, time_scale=SCALE
    )
    cold_suite(pytester, server, warmup=warmup)
    result = run(pytester, *RUN, f"{HTTP}/http_atomic.py")
    assert result.ret == 0, result.stdout.str()
    entry = http_history(pytester)[0]
    atomic = entry["phases"]["atomic"]
    patterns = next(iter(atomic["patterns"].values()))
    assert server.stats()["cold_starts"] == {"haiku": 2}  # the server was cold either way
    if not warmup:
        assert "cold_start" in kinds(entry, "atomic")
        assert ("atomic", "enable_warmup", "True") in recommendations(entry)
        assert patterns["capital-france"] == "[F,P,P]"  # run 1 of the first two cases timed out
        assert patterns["prime-after-89"] == "[F,P,P]"
        assert "cold start" in result.stdout.str()
    else:
        assert "cold_start" not in kinds(entry, "atomic")
        assert not {r for r in recommendations(entry) if r[1] == "enable_warmup"}
        assert set(patterns.values()) == {"[P,P,P]"}
        assert server.stats()["requests"] > 9  # the 9 measured calls plus warm-up pings


# -- API keys stay secret ---------------------------------------------------------------------


def test_api_key_never_written_shown_or_reported(
    pytester: pytest.Pytester,
    sim_server: Callable[..., SimServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server answers every call with a 401 quoting the request headers back (key
    included); the key is in the environment only. Grep every output for it."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = sim_server({"lfm": {"skill": 0.9}})
    server.set_faults({"kind": "echo_headers"})
    model = {"provider": "openai", "model": "lfm", "simulated": True, "api_key_env": KEY_ENV,
             "headers": {"X-Team-Auth": "Bearer ${" + KEY_ENV + "}"}}  # fmt: skip
    http_suite(
        pytester,
        server,
        runs=3,
        models={"lfm": model},
        fallback_chain=[],
        initial={
            "model": "lfm",
            "variant": "native_api",
            "timeout_s": 5,
            "retries": 1,
            "isolation": "i0",
            "warmup": True,
        },
        search={"variant": ["native_api", "atomic"]},
        max_candidates=1,
    )
    report, doc = pytester.path / "out" / "report.md", pytester.path / "out" / "cycle.json"
    cycle = run(
        pytester, *RUN, HTTP, "-rA", "--tb=long", f"--selfopt-report={report}",
        f"--selfopt-json={doc}",
    )  # fmt: skip
    plain = run(
        pytester, "-p", "no:cacheprovider", HTTP, "-k", "capital-france", "--tb=long", "-l",
        "-vv", "-rA",
    )  # fmt: skip
    plain.assert_outcomes(failed=1)
    # The runs really met the echo: a 401, not retried, its message quoting redacted headers.
    samples = json.loads(doc.read_text())["samples"]
    assert samples and {s["error_kind"] for s in samples} == {"http_4xx"}
    assert {s["attempts"] for s in samples} == {1}
    assert server.stats()["statuses"] == {"401": server.stats()["requests"]}
    assert "[REDACTED]" in plain.stdout.str() and "HTTP 401" in plain.stdout.str()
    assert "x-selfopt-reference" in plain.stdout.str().lower()  # the echo did quote headers
    outputs = {
        "cycle stdout": cycle.stdout.str(),
        "cycle stderr": cycle.stderr.str(),
        "plain stdout": plain.stdout.str(),
        "plain stderr": plain.stderr.str(),
    }
    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert report in written and doc in written
    # Every call refused: an outage of every baseline, so baselines/ stays unwritten (as for a
    # server that is down, tests/test_outage.py); the outage lines quote the URL and the error.
    assert "nothing written: every phase's baseline was in an outage" in cycle.stdout.str()
    assert not any(p.parent.name == "baselines" for p in written)
    for path in written:
        outputs[str(path.relative_to(pytester.path))] = path.read_bytes().decode("utf-8", "replace")
    leaked = [name for name, text in outputs.items() if SECRET in text or "SECRET123" in text]
    assert leaked == []


# -- the sim-server command -----------------------------------------------------------------


def _serve(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``argv`` and wait (10 s at most) for its "serving ... at URL" line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=10)
    except queue.Empty:
        proc.kill()
        raise AssertionError("sim-server printed nothing within 10 s") from None
    if " at http" not in line:
        proc.kill()
        raise AssertionError(f"sim-server did not start: {line!r} {proc.communicate()[1]!r}")
    return proc, line.rsplit(" at ", 1)[1].strip()


ARGS = ["--config", str(EXAMPLE / "selfopt.yaml"), "--port", "0", "--time-scale", "0.01"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["sim-server", *ARGS], id="documented"),
        pytest.param(["sim-server", "--", *ARGS], id="after-double-dash"),
    ],
)
def test_sim_server_command_serves_the_example_models(argv: list[str]) -> None:
    proc, url = _serve([sys.executable, "-m", "pytest_selfopt.cli.main", *argv])
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with httpx.Client(trust_env=False, timeout=5) as client:
            models = client.get(f"{url}/models").json()
            # A real-provider config (no reference header) is refused, not answered.
            refused = client.post(
                f"{url}/chat/completions",
                json={"model": "lfm", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert {m["id"] for m in models["data"]} == {"lfm", "claude-haiku"}
        assert refused.status_code == 400 and "X-Selfopt-Reference" in refused.text
        assert refused.headers["X-Selfopt-Time-Scale"] == "0.01"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# -- time_scale: the client on the simulator server's clock ----------------------------------


def test_time_scale_puts_timeouts_and_latency_in_simulated_seconds(
    sim_server: Callable[..., SimServer],
) -> None:
    from _simserver_fixture import VARIANTS, Case, Model, make_spec

    from pytest_selfopt.models.runner import Runner

    server = sim_server(
        {"lfm": {"skill": 0.9, "latency_s": 5.0, "latency_sigma": 0.0, "cold_start_calls": 1}},
        time_scale=SCALE,
    )
    options = {"base_url": server.url, "simulated": True}
    scaled = Model("lfm", "openai", {**options, "time_scale": SCALE})
    wrong = Model("lfm", "openai", {**options, "time_scale": 0.05})
    with Runner({"lfm": scaled}, VARIANTS) as runner:
        spec = make_spec("lfm", timeout_s=60.0, retries=0)
        cold = runner.ask(spec, "q", case=Case())  # 120 simulated s: past 60 s (1.2 s real)
        warm = runner.ask(spec, "q", case=Case(), run=2)  # 5 simulated s (0.1 s real)
    assert cold.error_kind == "timeout" and "60 s (1.2 s real)" in (cold.error_message or "")
    assert 55 < cold.latency_s < 90
    assert warm.text == "Paris" and 4.5 < warm.latency_s < 10
    with Runner({"lfm": wrong}, VARIANTS) as runner:
        mismatch = runner.ask(make_spec("lfm", retries=2), "q", case=Case(), run=2)
    assert mismatch.error_kind == "config" and mismatch.attempts == 1
    assert "--time-scale 0.05" in (mismatch.error_message or "")


def test_time_scale_is_for_simulator_servers_only() -> None:
    from pytest_selfopt.models.base import create_provider

    with pytest.raises(ValueError, match="time_scale: only for a simulator server"):
        create_provider(
            "openai", "gpt", {"base_url": "https://api.openai.com/v1", "time_scale": 0.1}
        )
    with pytest.raises(ValueError, match="time_scale: expected a number > 0"):
        create_provider(
            "openai", "x", {"base_url": "http://h/v1", "simulated": True, "time_scale": 0}
        )
