"""OpenAI-compatible chat completions over HTTP: OpenAI, vLLM, Ollama, llama.cpp, LM Studio,
LiteLLM proxy and the project's own simulator server (``selfopt sim-server``).

Options (the model's entry in the suite config, minus ``provider``):

``base_url``     required, ``http(s)://host[:port]/v1``; POST ``{base_url}/chat/completions``.
                 No credentials in it: user info, or a query parameter named like a secret
                 (``key``, ``token``, ...), is refused (use ``api_key_env`` or ``headers``).
``model``        the provider-side model name; default the suite's alias.
``api_key_env``  name of the environment variable holding the API key (read at call time, sent as
                 ``Authorization: Bearer``). The key never appears in an error, repr or log.
``params``       mapping merged into the request body (``temperature``, ``max_tokens``, ...);
                 the spec's declared knobs (``knobs:``) are merged over it, except the body
                 keys the provider owns (:data:`RESERVED_PARAMS`).
``headers``      extra headers; values may reference environment variables as ``${VAR}``.
``simulated``    true only for a simulator server: the case's reference then travels in the
                 ``X-Selfopt-Reference`` header. A real provider never receives it.
``time_scale``   simulator servers only (needs ``simulated: true``): the server's
                 ``--time-scale``. The spec's timeouts, the measured latencies and backoff are then
                 in the simulation's seconds (an attempt's real timeout is ``timeout_s *
                 time_scale``; the runner divides measured latency by it), so a time-compressed
                 run decides like the in-process simulator: a 120 s cold start still outlasts a
                 60 s timeout. The server reports its scale (``X-Selfopt-Time-Scale``); a mismatch
                 is a ``config`` error. Unset: real seconds, no check.

Transport: ``models/transport.py`` (a pool of kept connections per client, shared with
``anthropic.py``).

Error kinds: timeouts and an attempt running past its total deadline (a trickled body)
are ``timeout``; a refused, reset or dropped connection (also mid-response) is ``connect``;
a complete response that is not valid chat-completion JSON (of any shape or depth, or over
``MAX_BODY_BYTES``) is ``protocol``. Messages name the URL actually requested; a 404 adds a
hint about ``base_url``. Error bodies travel only as ``base.error_excerpt`` (status, a
bounded excerpt, every encoding of every secret redacted). The HTTP helpers below are shared
with ``anthropic.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pytest_selfopt.models.base import (
    REFERENCE_HEADER,
    ProviderError,
    Reply,
    Request,
    display_url,
)
from pytest_selfopt.models.transport import HttpJsonClient

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Body keys the provider owns: ``params`` may not set them and knobs of these names are not
#: sent (``model`` is the config's ``model:``, ``stream`` would change the reply's shape).
RESERVED_PARAMS = frozenset({"messages", "stream", "system", "model"})
#: Query parameter and header names that carry credentials: refused as literal values.
_SECRET_NAME = re.compile(
    r"(?:^|[_-])(?:api[_-]?key|key|token|secret|passw(?:or)?d|auth|authorization|sig|signature"
    r"|credentials?|code)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HttpOptions:
    """Validated options common to the HTTP providers (no secret values are held here)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # templates, "${VAR}" unresolved
    simulated: bool = False
    time_scale: float | None = None  # simulator servers only; None: real seconds


def parse_http_options(
    name: str, options: Mapping[str, Any], *, default_base_url: str | None = None
) -> HttpOptions:
    """Validate the shared options; ``ValueError`` names the sub-key, never echoes a secret."""
    base_url = options.get("base_url", default_base_url)
    if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
        shown = display_url(base_url) if isinstance(base_url, str) else repr(base_url)
        raise ValueError(f"base_url: expected an http(s) URL, got {shown!r}")
    model = options.get("model", name)
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected the provider's model name as text, got {model!r}")
    key_env = options.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not _ENV_NAME.match(key_env)):
        raise ValueError(
            "api_key_env: expected the NAME of an environment variable (letters, digits, _), "
            "not the key itself"
        )
    refuse_url_credentials(base_url)
    params = options.get("params", {})
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise ValueError(f"params: expected a mapping of body fields, got {type(params).__name__}")
    for key in params:
        if key in RESERVED_PARAMS:
            raise ValueError(f"params.{key}: set by the provider, cannot be overridden")
    headers = options.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ValueError(
            f"headers: expected a mapping of header to value, got {type(headers).__name__}"
        )
    for hname, hvalue in headers.items():
        if not isinstance(hname, str) or not isinstance(hvalue, str):
            raise ValueError(f"headers.{hname}: expected a text value")  # value not echoed
        literal = _ENV_REF.sub("", hvalue).strip().lower()
        if _SECRET_NAME.search(hname) and literal not in ("", "bearer", "basic", "token"):
            raise ValueError(
                f"headers.{hname}: expected a ${{VAR}} reference to an environment variable, "
                "not a literal credential (value not shown)"
            )
    simulated = options.get("simulated", False)
    if not isinstance(simulated, bool):
        raise ValueError(f"simulated: expected true or false, got {simulated!r}")
    time_scale = options.get("time_scale")
    if time_scale is not None:
        if (
            isinstance(time_scale, bool)
            or not isinstance(time_scale, int | float)
            or not 0 < time_scale <= 1000
        ):
            raise ValueError(
                f"time_scale: expected a number > 0 (at most 1000), got {time_scale!r}"
            )
        if not simulated:
            raise ValueError(
                "time_scale: only for a simulator server; set simulated: true or remove it"
            )
    return HttpOptions(
        base_url=base_url.rstrip("/"),
        model=model,
        api_key_env=key_env,
        params=dict(params),
        headers=dict(headers),
        simulated=simulated,
        time_scale=float(time_scale) if time_scale is not None else None,
    )


def refuse_url_credentials(base_url: str) -> None:
    """A key in ``base_url`` would be sent, logged and shown: refuse user info and query
    parameters named like a secret, without echoing them."""
    parts = urlsplit(base_url)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "base_url: expected a URL without user info (user:password@); put the key in an "
            "environment variable named by api_key_env (value not shown)"
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_NAME.search(name):
            raise ValueError(
                f"base_url: expected no credentials in the query, found {name!r} (value not "
                "shown); use api_key_env or a headers value with ${VAR}"
            )


def resolve_headers(templates: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Header values with ``${VAR}`` filled in from the environment, and those values (secrets)."""
    out: dict[str, str] = {}
    secrets: list[str] = []

    def fill(match: re.Match[str]) -> str:
        var = match.group(1)
        value = os.environ.get(var)
        if not value:
            raise ProviderError(
                "config", f"environment variable {var} (used in headers) is not set"
            )
        secrets.append(value)
        return value

    for hname, template in templates.items():
        out[hname] = _ENV_REF.sub(fill, template)
    return out, secrets


def api_key(env_name: str) -> str:
    """The key from the environment at call time; a missing one is a non-retryable config error."""
    value = os.environ.get(env_name, "").strip()
    if not value:
        raise ProviderError("config", f"environment variable {env_name} (api_key_env) is not set")
    return value


def token_count(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class OpenAIClient:
    """Chat completions through one kept :class:`HttpJsonClient`."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self._options = provider.options
        self._http = HttpJsonClient(provider.options.base_url)

    def complete(self, request: Request) -> Reply:
        opts = self._options
        headers, secrets = resolve_headers(opts.headers)
        headers.setdefault("accept", "application/json")
        if opts.api_key_env:
            key = api_key(opts.api_key_env)
            secrets.append(key)
            headers["authorization"] = f"Bearer {key}"
        if opts.simulated and request.reference is not None:
            headers[REFERENCE_HEADER] = json.dumps(request.reference.to_dict())
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body = {
            **opts.params,
            **request_params(request),
            "model": request.model or opts.model,
            "messages": messages,
        }
        url = f"{opts.base_url}/chat/completions"
        data = self._http.post_json(
            url,
            body,
            headers,
            request.timeout_s,
            secrets,
            time_scale=opts.time_scale,
            not_found_hint=lambda: openai_404_hint(opts.base_url),
        )
        where = display_url(url)
        choices = data.get("choices")
        message = (
            choices[0].get("message")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict)
            else None
        )
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts, as some servers send
            parts = [
                p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"
            ]
            content = "".join(p for p in parts if isinstance(p, str)) if parts else None
        if not isinstance(content, str):
            raise ProviderError(
                "protocol", f"no choices[0].message.content in the reply from {where}"
            )
        usage = data.get("usage")
        return Reply(
            text=content,
            input_tokens=token_count(usage, "prompt_tokens"),
            output_tokens=token_count(usage, "completion_tokens"),
        )

    def close(self) -> None:
        self._http.close()


def request_params(request: Request) -> dict[str, Any]:
    """The request's parameters (the spec's knobs) that may go into a body: all but the keys
    the provider owns (:data:`RESERVED_PARAMS`)."""
    return {k: v for k, v in request.params.items() if k not in RESERVED_PARAMS}


def http_uses_knob(knob: str) -> bool:
    """An HTTP provider sends every declared knob as a body field, but for reserved keys."""
    return knob not in RESERVED_PARAMS


def openai_404_hint(base_url: str) -> str:
    """What is probably wrong with ``base_url`` when ``{base_url}/chat/completions`` is 404."""
    shown = display_url(base_url)
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith("/chat/completions"):
        fixed = shown.removesuffix("/chat/completions")
        return (
            f"base_url should not include /chat/completions (the provider appends it): "
            f"try base_url: {fixed}"
        )
    if not path.endswith("/v1"):
        return (
            "OpenAI-compatible servers serve under /v1: base_url should usually end at /v1, "
            f"e.g. {shown}/v1; or the model name is not served"
        )
    return f"check base_url ({shown}) and that the server serves the model"


class OpenAIProvider:
    simulated_time = False

    def __init__(self, name: str, options: HttpOptions) -> None:
        self.name = name
        self.options = options
        self.simulated = options.simulated
        self.time_scale = options.time_scale  # read by the runner (latency, backoff)

    def new_client(self) -> OpenAIClient:
        return OpenAIClient(self)

    def uses_knob(self, knob: str) -> bool:
        """Declared knobs go into the request body (see :func:`http_uses_knob`)."""
        return http_uses_knob(knob)

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.name!r}, base_url={display_url(self.options.base_url)!r})"


def create(name: str, options: Mapping[str, Any]) -> OpenAIProvider:
    """Registry factory for ``provider: openai``; unknown keys are left to the config's checks."""
    return OpenAIProvider(name, parse_http_options(name, options))
