"""Anthropic Messages API over httpx (``POST {base_url}/v1/messages``).

Options: those of ``openai.py`` (``base_url``, ``model``, ``api_key_env``, ``params``, ``headers``,
``simulated``, ``time_scale``) plus ``anthropic_version`` (default ``2023-06-01``) and ``max_tokens`` (default
1024; the API requires it). ``base_url`` defaults to ``https://api.anthropic.com``; a base URL
ending in ``/v1`` (as the simulator server prints) is accepted without doubling it. With the
default base URL, ``api_key_env`` defaults to ``ANTHROPIC_API_KEY``; the key is sent as
``x-api-key`` and never appears in an error.

Error classification is the OpenAI provider's; Anthropic's 529 ``overloaded_error`` is
``http_5xx`` like any 5xx, so it is retried. Declared knobs go into the body over ``params``
as there (``RESERVED_PARAMS`` excepted); a 404 hints at ``base_url``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pytest_selfopt.models.base import REFERENCE_HEADER, ProviderError, Reply, Request, display_url
from pytest_selfopt.models.openai import (
    HttpOptions,
    api_key,
    http_uses_knob,
    parse_http_options,
    request_params,
    resolve_headers,
    token_count,
)
from pytest_selfopt.models.transport import HttpJsonClient

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"


class AnthropicClient:
    """Messages through one kept :class:`HttpJsonClient` (models/transport.py)."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self._provider = provider
        self._http = HttpJsonClient(provider.options.base_url)

    def complete(self, request: Request) -> Reply:
        p = self._provider
        opts = p.options
        headers, secrets = resolve_headers(opts.headers)
        headers.setdefault("accept", "application/json")
        headers["anthropic-version"] = p.version
        if opts.api_key_env:
            key = api_key(opts.api_key_env)
            secrets.append(key)
            headers["x-api-key"] = key
        if opts.simulated and request.reference is not None:
            headers[REFERENCE_HEADER] = json.dumps(request.reference.to_dict())
        body: dict[str, Any] = {
            "max_tokens": p.max_tokens,
            **opts.params,
            **request_params(request),
        }
        body["model"] = request.model or opts.model
        body["messages"] = [{"role": "user", "content": request.prompt}]
        if request.system:
            body["system"] = request.system
        data = self._http.post_json(
            p.url,
            body,
            headers,
            request.timeout_s,
            secrets,
            time_scale=opts.time_scale,
            not_found_hint=lambda: anthropic_404_hint(opts.base_url),
        )
        content = data.get("content")
        if not isinstance(content, list):
            raise ProviderError(
                "protocol", f"no content list in the reply from {display_url(p.url)}"
            )
        if not all(isinstance(block, dict) for block in content):
            raise ProviderError(
                "protocol", f"a content block that is not an object from {display_url(p.url)}"
            )
        texts = [block.get("text") for block in content if block.get("type") == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise ProviderError("protocol", f"a text block without text from {display_url(p.url)}")
        usage = data.get("usage")
        return Reply(
            text="".join(t for t in texts if isinstance(t, str)),
            input_tokens=token_count(usage, "input_tokens"),
            output_tokens=token_count(usage, "output_tokens"),
        )

    def close(self) -> None:
        self._http.close()


def anthropic_404_hint(base_url: str) -> str:
    """What is probably wrong with ``base_url`` when ``.../v1/messages`` is 404."""
    shown = display_url(base_url)
    if shown.rstrip("/").endswith("/messages"):
        return (
            "base_url should not include /messages (the provider appends /v1/messages): try "
            f"base_url: {shown.rstrip('/').removesuffix('/messages').removesuffix('/v1')}"
        )
    return (
        f"base_url should be the server's root or end at /v1 (the provider posts to "
        f"{{base_url}}/v1/messages); check base_url ({shown}) and that the server serves "
        "the model"
    )


class AnthropicProvider:
    simulated_time = False

    def __init__(self, name: str, options: HttpOptions, *, version: str, max_tokens: int) -> None:
        self.name = name
        self.options = options
        self.simulated = options.simulated
        self.time_scale = options.time_scale  # read by the runner (latency, backoff)
        self.version = version
        self.max_tokens = max_tokens
        base = options.base_url.removesuffix("/v1")
        self.url = f"{base}/v1/messages"

    def new_client(self) -> AnthropicClient:
        return AnthropicClient(self)

    def uses_knob(self, knob: str) -> bool:
        """Declared knobs go into the request body (see ``openai.http_uses_knob``)."""
        return http_uses_knob(knob)

    def __repr__(self) -> str:
        return f"AnthropicProvider({self.name!r}, url={display_url(self.url)!r})"


def create(name: str, options: Mapping[str, Any]) -> AnthropicProvider:
    """Registry factory for ``provider: anthropic``."""
    opts = dict(options)
    if "base_url" not in opts and "api_key_env" not in opts:
        opts["api_key_env"] = DEFAULT_KEY_ENV
    http = parse_http_options(name, opts, default_base_url=DEFAULT_BASE_URL)
    version = opts.get("anthropic_version", DEFAULT_VERSION)
    if not isinstance(version, str) or not version:
        raise ValueError(
            f"anthropic_version: expected a date like {DEFAULT_VERSION!r}, got {version!r}"
        )
    max_tokens = opts.get("max_tokens", 1024)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected a whole number >= 1, got {max_tokens!r}")
    return AnthropicProvider(name, http, version=version, max_tokens=max_tokens)
