"""The providers' HTTP transport (models/transport.py) against real servers on 127.0.0.1:
kept ``http.client`` connections (reuse, a connection the server closed, compression, closing
mid-call), httpx only where a proxy variable applies, and HTTPS with a test certificate."""

from __future__ import annotations

import gzip
import json
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _simserver_fixture import (
    VARIANTS,
    Model,
    RecordingSleep,
    make_spec,
)
from test_providers_http import PROMPT

from pytest_selfopt.models import transport
from pytest_selfopt.models.base import (
    ProviderError,
)
from pytest_selfopt.models.runner import Runner
from pytest_selfopt.models.simserver import SimServer

Start = Callable[..., SimServer]


# -- the transport: kept http.client connections, httpx through proxies -----------------------

REPLY = {"choices": [{"message": {"content": "Paris"}}], "usage": {"prompt_tokens": 3}}


class RawServer:
    """A loopback HTTP server whose connection handler each test writes: what the simulator
    server never does (close a kept connection, compress, never answer)."""

    def __init__(self, handle: Callable[[socket.socket, int], None]) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self.connections = 0
        self._handle = handle
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            n = self.connections
            threading.Thread(target=self._handle, args=(conn, n), daemon=True).start()

    def close(self) -> None:
        self._sock.close()


def read_request(conn: socket.socket) -> bytes:
    """One request's bytes (headers and a Content-Length body); b"" at the end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(65536)
    return head


def respond(conn: socket.socket, body: bytes, *headers: str) -> None:
    lines = ["HTTP/1.1 200 OK", "content-type: application/json", f"content-length: {len(body)}"]
    conn.sendall(("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode() + body)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, int], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Callable[[socket.socket, int], None]) -> RawServer:
        servers.append(RawServer(handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def raw_runner(server: RawServer) -> Runner:
    model = Model("lfm", "openai", {"base_url": server.url})
    return Runner({"lfm": model}, VARIANTS, sleep=RecordingSleep(), rng_seed=1)


def test_a_kept_connection_the_server_closed_is_replaced_without_a_failed_attempt(
    raw_server: Callable[[Callable[[socket.socket, int], None]], RawServer],
) -> None:
    """A server may close an idle kept connection (keep-alive timeout): the next call must not
    fail on it, and must not spend a retry on it either."""

    closed = threading.Semaphore(0)

    def one_answer_then_close(conn: socket.socket, n: int) -> None:
        if read_request(conn):
            respond(conn, json.dumps(REPLY).encode())  # says nothing of closing...
        conn.close()  # ...and closes: the client's kept connection is now dead
        closed.release()

    server = raw_server(one_answer_then_close)
    answers = []
    with raw_runner(server) as runner:
        for run in (1, 2, 3):
            answers.append(runner.ask(make_spec("lfm", retries=0), PROMPT, run=run))
            assert closed.acquire(timeout=30)  # the next call starts once the server closed
    assert [a.text for a in answers] == ["Paris"] * 3
    assert [a.attempts for a in answers] == [1, 1, 1]
    assert server.connections == 3


def test_a_kept_connection_is_reused_when_the_server_keeps_it(
    raw_server: Callable[[Callable[[socket.socket, int], None]], RawServer],
) -> None:
    def keep_alive(conn: socket.socket, n: int) -> None:
        while read_request(conn):
            respond(conn, json.dumps(REPLY).encode())
        conn.close()

    server = raw_server(keep_alive)
    with raw_runner(server) as runner:
        answers = [runner.ask(make_spec("lfm"), PROMPT, run=r) for r in range(1, 6)]
    assert [a.text for a in answers] == ["Paris"] * 5
    assert server.connections == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_reply_is_decoded_or_a_protocol_error(
    raw_server: Callable[[Callable[[socket.socket, int], None]], RawServer], encoding: str
) -> None:
    """The client asks for gzip and deflate (as httpx does); anything else is named."""
    raw = json.dumps(REPLY).encode()
    body = {"gzip": gzip.compress(raw), "deflate": zlib.compress(raw), "br": b"\x0b\x00"}

    def compressed(conn: socket.socket, n: int) -> None:
        while read_request(conn):
            respond(conn, body[encoding], f"content-encoding: {encoding}")
        conn.close()

    server = raw_server(compressed)
    with raw_runner(server) as runner:
        answer = runner.ask(make_spec("lfm", retries=0), PROMPT)
    if encoding == "br":
        assert answer.error_kind == "protocol" and "content encoding 'br'" in (
            answer.error_message or ""
        )
    else:
        assert answer.text == "Paris"


def test_closing_the_client_ends_a_call_in_flight_without_waiting_its_timeout(
    raw_server: Callable[[Callable[[socket.socket, int], None]], RawServer],
) -> None:
    """A session that stops (Ctrl-C, -x) closes the runner: a call made ahead and still
    waiting ends as a connect error at once, not as a timeout 60 s later."""
    received = threading.Event()

    def never_answers(conn: socket.socket, n: int) -> None:
        read_request(conn)
        received.set()
        conn.recv(1)  # until the client goes away

    server = raw_server(never_answers)
    client = transport.HttpJsonClient(server.url)
    errors: list[ProviderError] = []

    def call() -> None:
        try:
            client.post_json(f"{server.url}/chat/completions", {"x": 1}, {}, 60.0, [])
        except ProviderError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert received.wait(30)
    client.close()
    thread.join(30)
    assert not thread.is_alive()
    assert [e.kind for e in errors] == ["connect"]


@pytest.mark.parametrize(
    ("env", "url", "proxied"),
    [
        ({}, "https://api.example.com/v1", False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", True),
        ({"ALL_PROXY": "http://proxy:3128"}, "http://api.example.com/v1", True),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", False),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"},
            "https://api.example.com",
            False,
        ),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://127.0.0.1:8000/v1", False),
    ],
)
def test_httpx_carries_the_calls_only_where_a_proxy_variable_applies(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxied: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for spelled in (name, name.lower()):
            monkeypatch.delenv(spelled, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = transport.HttpJsonClient(url)
    try:
        assert (client._http is not None) is proxied
        assert (client._pool is None) is proxied
    finally:
        client.close()


TLS = Path(__file__).parent / "tls"  # a self-signed certificate for 127.0.0.2, valid to 2126


def test_https_verifies_the_certificate_as_httpx_would_and_keeps_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS with httpx's context: an unknown certificate is a `connect` error; one trusted
    through SSL_CERT_FILE (an endpoint off loopback trusts the environment) answers, over one
    kept connection."""
    try:
        listener = socket.create_server(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a local address here")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
    accepted = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            accepted.append(raw)
            threading.Thread(target=answer, args=(raw,), daemon=True).start()

    def answer(raw: socket.socket) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return  # the client refused the certificate
        while read_request(conn):
            respond(conn, json.dumps(REPLY).encode())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"https://127.0.0.2:{listener.getsockname()[1]}/v1"
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        untrusted = transport.HttpJsonClient(url)
        with pytest.raises(ProviderError) as refused:
            untrusted.post_json(f"{url}/chat/completions", {"x": 1}, {}, 10.0, [])
        untrusted.close()
        assert refused.value.kind == "connect" and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "cert.pem"))
        trusted = transport.HttpJsonClient(url)
        replies = [
            trusted.post_json(f"{url}/chat/completions", {"x": i}, {}, 10.0, []) for i in range(3)
        ]
        trusted.close()
    finally:
        listener.close()
    assert replies == [REPLY] * 3
    assert len(accepted) == 2  # the refused one, then one kept for three calls
