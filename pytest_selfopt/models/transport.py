"""The HTTP transport of the providers: JSON over a pool of kept connections per client.

A pool of the standard library's ``http.client`` connections per kept client, with as many
connections as calls in flight; through ``httpx`` instead when a proxy variable
(``HTTPS_PROXY``, ``ALL_PROXY``, ... and ``NO_PROXY``) applies to the endpoint. Why not httpx
always: with many calls in flight its per-call CPU (about 1 ms, and more under contention for
the interpreter lock) was the largest cost of a cycle after pytest's own (docs/performance.md).
TLS uses httpx's context either way (same certificates, ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

Error kinds: timeouts and an attempt running past its total deadline (a trickled body) are
``timeout``; a refused, reset or dropped connection (also mid-response) is ``connect``; a body
over ``MAX_BODY_BYTES`` or not JSON is ``protocol``; a non-2xx status is classified by
:func:`raise_for_status`. Messages name the URL actually requested. Providers (``openai.py``,
``anthropic.py``) build the requests and read the replies; this module only moves bytes.
"""

from __future__ import annotations

import http.client
import json
import math
import select
import socket
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pytest_selfopt.models.base import (
    EXCERPT_CHARS,
    TIME_SCALE_HEADER,
    ProviderError,
    display_url,
    error_excerpt,
    parse_retry_after,
    redact,
)

MAX_BODY_BYTES = 16 * 1024 * 1024

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
USER_AGENT = "pytest-selfopt"
READ_CHUNK = 65536


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


def _proxy_applies(scheme: str, host: str) -> bool:
    """Whether httpx (``trust_env``) would send a request to ``host`` through a proxy: a
    proxy variable for the scheme (or ``ALL_PROXY``) is set and ``NO_PROXY`` does not exempt
    the host. Loopback endpoints never use one (docs/performance.md)."""
    if _is_loopback(host):
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)  # NO_PROXY, as the variables say


class _Response:
    """What :meth:`HttpJsonClient.post_json` needs of a complete response."""

    __slots__ = ("content", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names (httpx's: case-insensitive)
        self.content = content


class _ConnectionPool:
    """Kept ``http.client`` connections to one origin, reused last-in first-out, as many as
    calls in flight (none is closed between calls). Thread-safe; connections are not shared
    while in use. :meth:`close` also shuts down the sockets of calls in flight, so a session
    that stops (Ctrl-C, ``-x``) does not wait for their timeouts."""

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        self._https = scheme == "https"
        self._host = host
        self._port = port
        self._context: ssl.SSLContext | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self, timeout_s: float) -> http.client.HTTPConnection:
        """An idle connection that the server has not closed, else a new (unconnected) one."""
        while True:
            with self._lock:
                if self._closed:
                    raise ProviderError("connect", "the client was closed (the session ended)")
                conn = self._idle.pop() if self._idle else None
                if conn is None:
                    conn = self._new(timeout_s)
                self._busy.add(conn)
            sock = conn.sock
            if sock is not None and _readable(sock):  # closed by the server, or stray bytes
                self.discard(conn)
                continue
            conn.timeout = timeout_s
            if sock is not None:
                sock.settimeout(timeout_s)
            return conn

    def release(self, conn: http.client.HTTPConnection) -> None:
        """A connection whose response was read to its end, kept for the next call."""
        with self._lock:
            self._busy.discard(conn)
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def discard(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._busy.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:  # wakes a thread blocked in recv; it then sees an error
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _new(self, timeout_s: float) -> http.client.HTTPConnection:
        if not self._https:
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        if self._context is None:
            self._context = _tls_context(trust_env=not _is_loopback(self._host))
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=timeout_s, context=self._context
        )


def _tls_context(*, trust_env: bool) -> ssl.SSLContext:
    """The TLS context httpx would use: the same certificates (certifi, or ``SSL_CERT_FILE``
    and ``SSL_CERT_DIR`` when the environment is trusted)."""
    import httpx

    make: Callable[..., ssl.SSLContext] | None = getattr(httpx, "create_ssl_context", None)
    if make is None:  # httpx 0.27: not public yet
        from httpx._config import create_ssl_context

        make = create_ssl_context
    return make(trust_env=trust_env)


def _readable(sock: socket.socket) -> bool:
    """An idle kept connection is readable only when the server closed it (or misbehaved).
    ``poll`` where there is one: ``select`` refuses descriptors past 1023."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _decode(content: bytes, encoding: str, where: str) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate (we ask for them, as httpx
    does), bounded like any body."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return content
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ProviderError(
            "protocol", f"undecodable response from {where}: content encoding {encoding[:40]!r}"
        )
    wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header
    try:
        try:
            decoder = zlib.decompressobj(wbits)
            out = decoder.decompress(content, MAX_BODY_BYTES + 1)
        except zlib.error:
            if encoding != "deflate":
                raise
            decoder = zlib.decompressobj(-15)  # raw deflate, as some servers send it
            out = decoder.decompress(content, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise ProviderError(
            "protocol", f"undecodable response from {where}: DecodingError"
        ) from None
    if len(out) > MAX_BODY_BYTES:
        raise ProviderError("protocol", f"response from {where} over {MAX_BODY_BYTES} bytes")
    return out


class HttpJsonClient:
    """One kept connection pool (so a kept client really reuses its connections) posting JSON.

    Every failure comes out as a classified :class:`ProviderError`. The attempt's timeout is both
    the per-operation timeout (connect, send, each read) and a total deadline checked while the
    body streams in, so a body trickled slower than the timeout still ends the attempt. The
    transport is ``http.client`` (lean per call) unless a proxy variable applies to the
    endpoint; then httpx, which implements proxies.
    """

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._origin = (parts.scheme, parts.hostname or "", parts.port)
        self._pool: _ConnectionPool | None = None
        self._http: Any = None  # httpx.Client when proxied
        host = parts.hostname or ""
        if _proxy_applies(parts.scheme, host):
            import httpx

            self._http = httpx.Client(
                follow_redirects=False,
                trust_env=True,
                # As many kept connections as calls in flight (the process's concurrency
                # bounds them): none is closed and reopened between calls.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
        else:
            try:
                port = parts.port
            except ValueError:
                port = None
            self._pool = _ConnectionPool(parts.scheme, host, port)

    def post_json(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        secrets: list[str],
        time_scale: float | None = None,
        not_found_hint: Callable[[], str] | None = None,
    ) -> Mapping[str, Any]:
        """POST ``body`` to ``url`` (named in every error, without user info or query);
        ``timeout_s`` is in simulated seconds when ``time_scale`` is set (a simulator server's
        clock), and the server's announced scale must then match it. ``not_found_hint`` is
        added to a 404's message (how ``base_url`` is probably wrong)."""
        where = display_url(url)
        real_s = timeout_s * (time_scale or 1.0)
        shown = f"{timeout_s:g} s" + (f" ({real_s:g} s real)" if time_scale else "")
        deadline = time.monotonic() + real_s
        if self._http is not None:
            resp = self._send_httpx(url, body, headers, real_s, deadline, where, shown, secrets)
        else:
            resp = self._send(url, body, headers, real_s, deadline, where, shown, secrets)
        status, resp_headers, content = resp.status, resp.headers, resp.content
        if time_scale is not None:
            check_time_scale(resp_headers.get(TIME_SCALE_HEADER.lower()), time_scale, where)
        if time.monotonic() > deadline:
            raise ProviderError("timeout", f"response from {where} not complete within {shown}")
        raise_for_status(status, resp_headers, content, where, secrets, not_found_hint)
        ctype = redact(resp_headers.get("content-type", "") or "", secrets)[:80]
        if "json" not in ctype.lower():
            excerpt = error_excerpt(content, secrets)
            raise ProviderError(
                "protocol",
                f"expected JSON from {where}, got content type {ctype!r}: {excerpt}",
                status=status,
            )
        try:
            data = json.loads(content)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past any sense
            what = "nested too deeply" if isinstance(exc, RecursionError) else "malformed"
            raise ProviderError(
                "protocol",
                f"{what} JSON from {where}: {error_excerpt(content, secrets)}",
                status=status,
            ) from None
        if not isinstance(data, dict):
            raise ProviderError(
                "protocol",
                f"expected a JSON object from {where}, got {type(data).__name__}",
                status=status,
            )
        return data

    def _send(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        real_s: float,
        deadline: float,
        where: str,
        shown: str,
        secrets: list[str],
    ) -> _Response:
        """One request over a kept ``http.client`` connection; the connection goes back to the
        pool only after a complete response that keeps it alive."""
        assert self._pool is not None
        parts = urlsplit(url)
        if (parts.scheme, parts.hostname or "", _port(parts)) != self._origin:
            raise ProviderError("config", f"cannot send the request to {where}: not {self._base}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # As httpx encodes ``json=``: compact, UTF-8, no NaN.
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        data = payload.encode("utf-8")
        send = {
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            "user-agent": USER_AGENT,
            "content-type": "application/json",
        }
        send.update({name.lower(): value for name, value in headers.items()})
        send["content-length"] = str(len(data))
        try:
            for name, value in send.items():
                name.encode("ascii")
                value.encode("ascii")  # a non-ASCII value (perhaps a key) is never sent
        except UnicodeError:
            raise ProviderError(
                "config",
                f"cannot send the request to {where}: a header value is not ASCII text (value "
                "not shown); check the api_key_env variable and the headers' ${VAR} values",
            ) from None
        stage = "Connect"
        try:
            conn = self._pool.acquire(real_s)
        except (http.client.InvalidURL, ValueError):
            raise ProviderError("config", f"cannot send the request to {where}") from None
        kept = False
        try:
            if conn.sock is None:
                conn.connect()
            stage = "Write"
            conn.request("POST", target, body=data, headers=send)
            stage = "Read"
            response = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProviderError(
                        "protocol", f"response from {where} over {MAX_BODY_BYTES} bytes"
                    )
                if time.monotonic() > deadline:
                    raise ProviderError(
                        "timeout", f"response from {where} not complete within {shown}"
                    )
            if response.length:  # the server closed before Content-Length bytes came
                raise ProviderError(
                    "connect",
                    f"IncompleteRead talking to {where}: the connection closed after {size} "
                    f"bytes of the body, {response.length} more expected",
                )
            response.close()  # read to its end: the connection may take the next request
            content = b"".join(chunks)
            resp_headers = {name.lower(): value for name, value in response.getheaders()}
            status = response.status
            kept = not response.will_close
        except TimeoutError:
            raise ProviderError(
                "timeout", f"{stage}Timeout: no answer from {where} within {shown}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, dropped, TLS
            detail = redact(str(exc), secrets)[:EXCERPT_CHARS]
            raise ProviderError(
                "connect", f"{type(exc).__name__} talking to {where}: {detail}"
            ) from None
        except ValueError:  # a header http.client refuses (a newline in a value): not shown
            raise ProviderError(
                "config", f"cannot send the request to {where}: an invalid header value"
            ) from None
        finally:
            if kept:
                self._pool.release(conn)
            else:
                self._pool.discard(conn)
        encoding = resp_headers.get("content-encoding")
        if encoding:
            content = _decode(content, encoding, where)
        return _Response(status, resp_headers, content)

    @property
    def _base(self) -> str:
        scheme, host, port = self._origin
        return display_url(f"{scheme}://{host}" + (f":{port}" if port else ""))

    def _send_httpx(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        real_s: float,
        deadline: float,
        where: str,
        shown: str,
        secrets: list[str],
    ) -> _Response:
        """One request through httpx (a proxy applies), streamed under the same deadline."""
        import httpx

        try:
            with self._http.stream(
                "POST", url, json=body, headers=dict(headers), timeout=httpx.Timeout(real_s)
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ProviderError(
                            "protocol", f"response from {where} over {MAX_BODY_BYTES} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise ProviderError(
                            "timeout", f"response from {where} not complete within {shown}"
                        )
                return _Response(resp.status_code, resp.headers, b"".join(chunks))
        except httpx.TimeoutException as exc:
            raise ProviderError(
                "timeout", f"{type(exc).__name__}: no answer from {where} within {shown}"
            ) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            detail = redact(str(exc), secrets)[:EXCERPT_CHARS]
            raise ProviderError(
                "connect", f"{type(exc).__name__} talking to {where}: {detail}"
            ) from None
        except httpx.DecodingError as exc:
            raise ProviderError(
                "protocol", f"undecodable response from {where}: {type(exc).__name__}"
            ) from None
        except (
            httpx.HTTPError,
            httpx.InvalidURL,
        ) as exc:  # LocalProtocolError, UnsupportedProtocol...
            raise ProviderError(
                "config", f"{type(exc).__name__}: cannot send the request to {where}"
            ) from None
        except UnicodeError:  # a header value (perhaps a key) that is not ASCII: never shown
            raise ProviderError(
                "config",
                f"cannot send the request to {where}: a header value is not ASCII text (value "
                "not shown); check the api_key_env variable and the headers' ${VAR} values",
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._http is not None:
            self._http.close()


def _port(parts: Any) -> int | None:
    try:
        port: int | None = parts.port
    except ValueError:
        port = None
    return port


def check_time_scale(announced: str | None, expected: float, where: str) -> None:
    """A simulator server's announced ``--time-scale`` must equal the model's ``time_scale``."""
    if announced is None:
        return
    try:
        value = float(announced)
    except ValueError:
        return
    if not math.isclose(value, expected, rel_tol=1e-6):
        raise ProviderError(
            "config",
            f"the simulator server at {where} runs at time scale {value:g} but the model's "
            f"time_scale is {expected:g}; start it with --time-scale {expected:g} or change "
            "time_scale",
        )


def raise_for_status(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    where: str,
    secrets: list[str],
    not_found_hint: Callable[[], str] | None = None,
) -> None:
    """Classify a non-2xx status: 429, 5xx (529 included) and 4xx, with Retry-After parsed.
    The message carries the status and a bounded, redacted excerpt of the body, never more."""
    if 200 <= status < 300:
        return
    if status == 429:
        kind = "http_429"
    elif status >= 500:
        kind = "http_5xx"
    elif status >= 400:
        kind = "http_4xx"
    else:
        kind = "protocol"
    hint = f"; {not_found_hint()}" if status == 404 and not_found_hint is not None else ""
    raise ProviderError(
        kind,
        f"HTTP {status} from {where}: {error_excerpt(content, secrets)}{hint}",
        status=status,
        retry_after_s=parse_retry_after(headers.get("retry-after")),
    )
