"""The simulator as an HTTP server on 127.0.0.1, speaking both OpenAI and Anthropic shapes.

Providers talk to it exactly as to a real server, so the HTTP path — timeouts, retries,
keep-alive, faults — is tested for real. Routes:

``POST /v1/chat/completions``, ``/chat/completions``  OpenAI chat completions
``POST /v1/messages``, ``/v1/v1/messages``          Anthropic Messages (the second: the official
                                                    Anthropic SDK given the printed ``.../v1``
                                                    URL appends ``/v1/messages`` itself)
``GET  /v1/models``                                 the served aliases
``GET  /stats``                                     counters (see :meth:`SimServer.stats`)
``GET/POST/DELETE /_faults``                        read, replace, clear injected faults
``POST /_reset``                                    zero the counters

Answers follow ``models/sim.py`` (``simulate``) with the case's reference taken from the
``X-Selfopt-Reference`` header (400 without it: a real-provider config must not reach it).
Streaming is not simulated: ``"stream": true`` is refused with a 400 that says so, in the
shape of the API called, rather than answered with an empty stream.
Cold starts follow the same rule as in-process (a function of case and run, counted in
``/stats``); latency is really slept, times ``time_scale``,
which every response announces in ``X-Selfopt-Time-Scale`` (clients configured with the same
``time_scale`` check it and count time in the simulation's seconds).
Fault delays are real seconds, never scaled, so a test can outlast a client timeout.

Faults to inject and the wire shapes are in ``simhttp.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from pytest_selfopt.models.base import REFERENCE_HEADER, TIME_SCALE_HEADER, Reference
from pytest_selfopt.models.sim import SimBehaviour, cold_start, simulate
from pytest_selfopt.models.sim import create as create_sim
from pytest_selfopt.models.simhttp import (
    FAULT_HEADER,
    Fault,
    ServerState,
    echo_body,
    error_body,
    prompt_of,
    reply_body,
    response_kind,
)

__all__ = ["FAULT_HEADER", "Fault", "SimServer", "load_sim_models", "main"]

OPENAI_ROUTES = frozenset({"/v1/chat/completions", "/chat/completions"})
ANTHROPIC_ROUTES = frozenset({"/v1/messages", "/v1/v1/messages"})


class _Reject(Exception):
    """An error answer, in the shape of the API that was called."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable
    timeout = 300  # an idle keep-alive connection is dropped after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stats instead
        pass

    def do_GET(self) -> None:
        st = self.server.state
        route = self.path.split("?")[0]
        if route == "/stats":
            self._json(200, self.server.owner.stats())
        elif route in ("/v1/models", "/models"):
            data = [{"id": a, "object": "model", "owned_by": "selfopt-sim"} for a in st.behaviours]
            self._json(200, {"object": "list", "data": data})
        elif route == "/_faults":
            with st.lock:
                faults = [asdict(f) for f in st.faults]
            self._json(200, {"faults": faults})
        else:
            self._json(404, {"error": {"message": f"no route {route}", "type": "not_found"}})

    def do_DELETE(self) -> None:
        self._body()
        self.server.owner.set_faults()
        self._json(200, {"faults": []})

    def do_POST(self) -> None:
        route = self.path.split("?")[0]
        raw = self._body()
        if route == "/_faults":
            try:
                data = json.loads(raw or b"[]")
                items = (
                    data.get("faults", [data] if "kind" in data else [])
                    if isinstance(data, dict)
                    else data
                )
                self.server.owner.set_faults(*items)
            except (ValueError, TypeError) as exc:
                self._json(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            self._json(200, {"faults": len(items)})
        elif route == "/_reset":
            self.server.state.reset()
            self._json(200, {"reset": True})
        elif route in OPENAI_ROUTES or route in ANTHROPIC_ROUTES:
            st = self.server.state
            st.bump("requests")
            st.bump("by_path", route)
            st.bump("in_flight")
            self._counted = True
            anthropic = route in ANTHROPIC_ROUTES
            try:
                self._api(route, raw, anthropic=anthropic)
            except _Reject as rej:
                self._error(rej.status, rej.message, anthropic, rej.headers)
            except OSError:  # the client went away (timed out): nothing to answer
                self.close_connection = True
            finally:
                self._uncount()
        else:
            self._json(404, {"error": {"message": f"no route {route}", "type": "not_found"}})

    # -- the API -----------------------------------------------------------------------------

    def _api(self, route: str, raw: bytes, *, anthropic: bool) -> None:
        st = self.server.state
        try:
            body = json.loads(raw)
            alias = body.get("model") if isinstance(body, dict) else None
            behaviour = st.behaviours.get(alias) if isinstance(alias, str) else None
        except ValueError:
            raise _Reject(400, "request body: expected JSON with a model") from None
        if isinstance(body, dict) and body.get("stream"):
            raise _Reject(
                400,
                '"stream": true is not supported: the selfopt simulator server does not '
                'simulate streaming; send "stream": false (or leave it out)',
            )
        if behaviour is None or not isinstance(alias, str):
            raise _Reject(404, f"model {alias!r} not served; serving {sorted(st.behaviours)}")
        st.bump("by_model", alias)
        ref_text = self.headers.get(REFERENCE_HEADER)
        st.bump("with_reference" if ref_text else "without_reference")
        faults = st.strike(route, alias)
        if self.headers.get(FAULT_HEADER):
            try:
                faults.append(Fault.parse(self.headers[FAULT_HEADER]))
            except (ValueError, TypeError) as exc:
                raise _Reject(400, f"{FAULT_HEADER}: {exc}") from None
        for f in faults:
            st.bump("faults", f.kind if f.kind != "status" else str(f.status))
        st.sleep(sum(f.delay_s for f in faults if f.kind == "latency"))
        fault = response_kind(faults)
        if fault is not None and fault.kind == "status":
            ra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            raise _Reject(fault.status, f"injected HTTP {fault.status}", ra)
        if fault is not None and fault.kind == "echo_headers":
            return self._send(fault.status, echo_body(self.headers.items(), fault.encoding))
        if fault is not None and fault.kind == "reply":
            raw = fault.body if isinstance(fault.body, bytes) else (fault.body or "").encode()
            return self._send(fault.status, raw, fault.content_type)
        if not ref_text:
            raise _Reject(
                400,
                f"missing {REFERENCE_HEADER} header: a simulated model needs the "
                "case's reference; set simulated: true on the model",
            )
        try:
            ref = Reference.from_dict(json.loads(ref_text))
        except (ValueError, TypeError) as exc:
            raise _Reject(400, f"{REFERENCE_HEADER}: unreadable ({type(exc).__name__})") from None
        knobs = body if isinstance(body, dict) else {}  # knob values travel as body fields
        behaviour = behaviour.under(knobs)
        if cold_start(behaviour, ref):
            st.bump("cold_starts", alias)
        outcome = simulate(behaviour, ref, prompt_of(body), math.inf)
        st.sleep(outcome.latency_s * st.time_scale)
        if outcome.error_kind == "http_429":  # transient errors the behaviour asked for
            raise _Reject(429, "simulated rate limit", {"Retry-After": f"{st.time_scale:g}"})
        if outcome.text is None:
            raise _Reject(529 if anthropic else 503, "simulated overload")
        tin, tout = outcome.input_tokens, outcome.output_tokens
        payload = json.dumps(reply_body(alias, outcome.text, tin, tout, anthropic)).encode()
        if fault is None:
            self._send(200, payload)
        elif fault.kind == "malformed":
            self._send(200, payload[: len(payload) // 2] + b"<<not json")
        elif fault.kind == "content_type":
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        elif fault.kind == "drop":  # a promised body cut in half, then the connection closed
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header(TIME_SCALE_HEADER, f"{st.time_scale:g}")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._trickle(payload, fault.delay_s)

    def _trickle(self, payload: bytes, seconds: float, pieces: int = 20) -> None:
        st = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header(TIME_SCALE_HEADER, f"{st.time_scale:g}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = max(1, math.ceil(len(payload) / pieces))
        for i in range(0, len(payload), step):
            piece = payload[i : i + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            st.sleep(seconds / pieces)
        self.wfile.write(b"0\r\n\r\n")
        st.bump("statuses", "200")

    # -- plumbing ------------------------------------------------------------------------------

    #: This request is counted in ``in_flight`` until its answer starts (see :meth:`end_headers`).
    _counted = False

    def end_headers(self) -> None:
        """The answer starts: the request leaves ``in_flight`` first. Counted after the answer
        was written, a client fast enough to send its next call (on another connection) the
        moment an answer is complete saw two calls in flight where it makes one at a time."""
        self._uncount()
        super().end_headers()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.server.state.bump("in_flight", n=-1)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        payload: bytes,
        ctype: str = "application/json",
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header(TIME_SCALE_HEADER, f"{self.server.state.time_scale:g}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)
        self.server.state.bump("statuses", str(status))

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str).encode())

    def _error(
        self, status: int, message: str, anthropic: bool, extra: Mapping[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(error_body(status, message, anthropic)).encode(), extra=extra)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 50+ clients connecting at once must not overflow the backlog

    def __init__(self, address: tuple[str, int], state: ServerState, owner: SimServer) -> None:
        self.state = state
        self.owner = owner
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:
            self.state.counters["connections"] += 1  # counted by the server: proof of reuse
            self.state.sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.state.lock:
            self.state.sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class SimServer:
    """``SimServer({"lfm": {"skill": 0.6}}, time_scale=0.01)``, as a context manager or with
    ``start()``/``stop()``. ``seed`` is informational: outcomes are a pure function of the
    reference (which carries the run's seed), so HTTP and in-process simulators agree."""

    def __init__(
        self,
        models: Mapping[str, Mapping[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        time_scale: float = 1.0,
    ) -> None:
        behaviours: dict[str, SimBehaviour] = {}
        for alias, options in models.items():
            try:
                behaviours[alias] = create_sim(alias, options).behaviour
            except ValueError as exc:
                raise ValueError(f"models.{alias}.{exc}") from None
        if not (isinstance(time_scale, int | float) and time_scale >= 0):
            raise ValueError(f"time_scale: expected a number >= 0, got {time_scale!r}")
        self.seed = seed
        self._address = (host, port)
        self._state = ServerState(behaviours, float(time_scale))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimServer:
        if self._server is None:
            self._server = _Server(self._address, self._state, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="selfopt-sim-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and cut open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        server.server_close()
        with self._state.lock:
            open_sockets = list(self._state.sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SimServer is not running")
        return int(self._server.server_address[1])

    @property
    def root(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL for every client: ``.../v1``. The ``openai`` and ``anthropic``
        providers and the official OpenAI SDK use it as is; the official Anthropic SDK, which
        appends ``/v1/messages`` itself, reaches ``/v1/v1/messages``, which is served too."""
        return f"{self.root}/v1"

    def stats(self) -> dict[str, Any]:
        """Counters: connections (TCP, accepted by the server), requests (API calls), with/without
        reference, in_flight and max_in_flight, by_path, by_model, statuses, faults, cold_starts."""
        with self._state.lock:
            out = json.loads(json.dumps(self._state.counters))
            out["open_connections"] = len(self._state.sockets)
            return dict(out)

    def reset(self) -> None:
        """Zero the counters (faults stay)."""
        self._state.reset()

    def set_faults(self, *faults: Fault | Mapping[str, Any] | str) -> list[Fault]:
        """Replace the injected faults (none: clear them); returns them, to read ``struck``."""
        parsed = [Fault.parse(f) for f in faults]
        with self._state.lock:
            self._state.faults = parsed
        return parsed


def load_sim_models(path: Path) -> dict[str, dict[str, Any]]:
    """``models:`` entries with ``provider: sim`` from a suite config, options minus provider."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: models: expected a mapping of alias to model")
    return {
        str(alias): {k: v for k, v in entry.items() if k != "provider"}
        for alias, entry in models.items()
        if isinstance(entry, dict) and entry.get("provider") == "sim"
    }


def main(argv: list[str] | None = None) -> int:
    """``selfopt sim-server``: serve the suite's simulated models until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="selfopt sim-server", description=main.__doc__)
    parser.add_argument("--config", type=Path, default=Path("benchmarks/selfopt.yaml"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    try:
        models = load_sim_models(args.config)
        if not models:
            raise ValueError(f"{args.config}: models: no entry has provider: sim")
        server = SimServer(
            models, host=args.host, port=args.port, seed=args.seed, time_scale=args.time_scale
        ).start()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        where = "" if str(exc).startswith(str(args.config)) else f"{args.config}: "
        print(f"selfopt sim-server: {where}{exc}", file=sys.stderr)
        return 2
    print(f"selfopt sim-server: serving {', '.join(sorted(models))} at {server.url}", flush=True)
    print(
        f"  use {server.url} as base_url for the openai and anthropic providers and for both "
        f"official SDKs ({server.root} works for the Anthropic SDK too); streaming is not "
        "simulated (stream: true gets a 400)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
