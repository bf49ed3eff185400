"""A cycle run while the model server is down (issue 10.3), against the real simulator server.

The suite is the mini suite over HTTP (``provider: openai``). With the server down, the cycle
must say so in one line naming the model, the URL and the error, decide and recommend nothing
from it, and write nothing; the next healthy cycle is then the cycle that would have run.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _simserver_fixture import sim_servers
from suites import CYCLE, EXAMPLE, MINI_CONFIG, decisions, history, mini_suite, recommendations, run

from pytest_selfopt.models.simserver import SimServer, load_sim_models

HTTP = "benchmarks/http"
SCALE = 0.02
#: No retry, so that a refused connection costs no backoff: the test stays fast.
INITIAL = {**MINI_CONFIG["initial"], "retries": 0}


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimServer]]:
    with sim_servers() as start:
        yield start


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def http_config(pytester: pytest.Pytester, base_url: str) -> Path:
    """The mini suite's config with every model served over HTTP at ``base_url``."""
    http = pytester.path / HTTP
    http.mkdir(exist_ok=True)
    for name in ("pytest.ini", "http_atomic.py", "http_extended.py"):  # its own pytest root
        shutil.copy(EXAMPLE / "http" / name, http / name)
    config: dict[str, Any] = {
        **MINI_CONFIG,
        "initial": INITIAL,
        "models": {
            alias: {
                "provider": "openai",
                "base_url": base_url,
                "model": alias,
                "simulated": True,
                "time_scale": SCALE,
            }
            for alias in MINI_CONFIG["models"]
        },
    }
    path = http / "selfopt.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_server_down_one_line_nothing_written_next_cycle_undisturbed(
    pytester: pytest.Pytester, sim_server: Callable[..., SimServer]
) -> None:
    bench = mini_suite(pytester, initial=INITIAL)
    down = f"http://127.0.0.1:{closed_port()}/v1"
    http_config(pytester, down)

    result = run(pytester, "--selfopt", "-p", "no:cacheprovider", HTTP)
    out = result.stdout.str()
    assert result.ret == 1, out
    outage = [line for line in out.splitlines() if line.startswith("outage: model lfm")]
    assert outage, out
    assert f"at {down}" in outage[0] and "failed with connect" in outage[0]
    assert "nothing was decided or recommended" in outage[0]
    assert "nothing written: every phase's baseline was in an outage" in out
    assert "54 of 54 samples failed: 0 their checks, 54 in transport" in out  # not a bad model
    folder = pytester.path / HTTP / "baselines"
    assert not folder.exists() or not list(folder.iterdir())  # the lock's folder at most

    # The server is up again: the next cycle is cycle 1, deciding as the in-process simulator.
    server = sim_server(load_sim_models(bench / "selfopt.yaml"), time_scale=SCALE)
    http_config(pytester, server.url)
    healthy = run(pytester, "--selfopt", "-p", "no:cacheprovider", HTTP)
    assert healthy.ret == 0, healthy.stdout.str()
    assert "outage" not in healthy.stdout.str()
    local = run(pytester, *CYCLE)
    assert local.ret == 0, local.stdout.str()
    got = _history(pytester.path / HTTP / "baselines")
    want = history(pytester)
    assert [e["cycle"] for e in got] == [1]
    assert decisions(got[0]) == decisions(want[0])
    assert recommendations(got[0]) == recommendations(want[0])


def _history(folder: Path) -> list[dict[str, Any]]:
    cycles: list[dict[str, Any]] = json.loads((folder / "history.json").read_text())["cycles"]
    return cycles
