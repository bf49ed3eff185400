"""API keys and other secrets: never in a message, a report or a file, in any encoding a server
can echo them in, and never literal in a model's config (issue 12.5; docs/providers.md, "API
keys"). The providers run through the runner against the project's simulator server, as in
tests/test_providers_http.py; tests/test_secrets_everywhere.py greps whole sessions.
"""

from __future__ import annotations

import base64
import json
import textwrap
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _simserver_fixture import GOOD, sim_servers
from test_providers_http import Start, ask, runner_for

from pytest_selfopt.models import anthropic, openai
from pytest_selfopt.models.base import ProviderError, Request, error_excerpt, redact


@pytest.fixture
def sim_server() -> Iterator[Start]:
    with sim_servers() as start:
        yield start


KEY = "sk-selfopt-TESTSECRET-0123456789abcdef"
TOKEN = "tok-selfopt-OTHERSECRET-42"
#: A key with the characters encodings change: ``/`` (JSON ``\\/``, ``%2F``), ``+`` and ``=``.
SLASH_KEY = "sk-proj/SLASHSECRET+k3y=zz/0123456789"


def encodings(secret: str) -> dict[str, str]:
    """Every form a server can echo ``secret`` in (what must never reach an output). Base64
    forms are given by their core: the characters that encode the secret's bytes only, for
    each of the three alignments the secret can have in ``user:key`` -- any base64 of a value
    containing the secret contains one of them."""
    raw = secret.encode()
    json_escaped = json.dumps(secret)[1:-1]
    forms = {
        "raw": secret,
        "json": json_escaped,
        "json_slash": json_escaped.replace("/", "\\/"),
        "url": urllib.parse.quote(secret, safe=""),
        "url_plus": urllib.parse.quote_plus(secret),
    }
    for shift in range(3):
        for alphabet, encode in (("std", base64.b64encode), ("urlsafe", base64.urlsafe_b64encode)):
            enc = encode(b"\0" * shift + raw).decode()
            core = enc[-(-8 * shift // 6) : (8 * (shift + len(raw)) - 6) // 6 + 1]
            forms[f"base64_{alphabet}_{shift}"] = core
            forms[f"base64_{alphabet}_{shift}_json_slash"] = core.replace("/", "\\/")
    return forms


def leaks(text: str, secret: str) -> list[str]:
    """The encodings of ``secret`` found in ``text``."""
    return [name for name, form in encodings(secret).items() if form in text]


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


@pytest.mark.parametrize("encoding", ["raw", "json_slash", "url", "base64", "basic", "all"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_echoed_in_any_encoding_is_redacted(
    sim_server: Start, monkeypatch: pytest.MonkeyPatch, provider: str, encoding: str
) -> None:
    """A key containing ``/``, echoed by a 401 JSON-escaped (``\\/``), URL-encoded, as
    base64 or inside a Basic ``user:key`` token: no encoding of it survives in the message."""
    monkeypatch.setenv("SELFOPT_TEST_KEY", SLASH_KEY)
    server = sim_server({"lfm": GOOD})
    server.set_faults({"kind": "echo_headers", "encoding": encoding})
    raw = httpx.post(
        f"{server.url}/chat/completions",
        json={"model": "lfm"},
        headers={"Authorization": f"Bearer {SLASH_KEY}"},
    )
    assert raw.status_code == 401 and leaks(raw.text, SLASH_KEY)  # the server really echoes it
    with runner_for(server, provider=provider, api_key_env="SELFOPT_TEST_KEY") as runner:
        answer = ask(runner, retries=2)
    assert answer.error_kind == "http_4xx" and answer.attempts == 1
    message = answer.error_message or ""
    assert message.startswith("HTTP 401 from") and "[REDACTED]" in message
    assert leaks(message, SLASH_KEY) == [] and leaks(repr(answer), SLASH_KEY) == []
    assert "SLASHSECRET" not in message


def test_redact_and_the_error_excerpt_cover_every_encoding() -> None:
    for name, form in encodings(SLASH_KEY).items():
        text = f"key={form}; end"
        assert leaks(redact(text, [SLASH_KEY]), SLASH_KEY) == [], name
        assert redact(text, [SLASH_KEY]).endswith("; end"), name
    for user in ("u", "us", "usr", "selfopt"):  # Basic tokens: user:key, every alignment
        token = base64.b64encode(f"{user}:{SLASH_KEY}".encode()).decode()
        assert redact(f"Basic {token}.", [SLASH_KEY]) == "Basic [REDACTED].", user
    assert redact("x%2fy", ["x/y"]) == "[REDACTED]"  # lower-case percent escapes too
    assert redact("\\u0061bc/d", ["abc/d"]) == "[REDACTED]"  # \\uXXXX escapes
    # the excerpt is bounded, one printable line, reduced to the error's type and message
    body = json.dumps(
        {"error": {"type": "authentication_error", "message": f"bad key {SLASH_KEY}\n\x1b[31m"}}
    ).replace("/", "\\/")
    excerpt = error_excerpt(body.encode(), [SLASH_KEY])
    assert excerpt == "authentication_error: bad key [REDACTED] [31m"
    assert len(error_excerpt(b"x" * 100_000, [])) == 300
    cut = error_excerpt(("a" * 290 + SLASH_KEY).encode(), [SLASH_KEY])
    assert "sk-proj" not in cut  # redacted before the cut: no prefix of a key is left


SUITE = """
seed: 3
runs: 2
models:
  lfm:
    provider: openai
    base_url: {url}
    model: lfm
    simulated: true
    api_key_env: SELFOPT_TEST_KEY
    headers: {{X-Team-Auth: "Basic ${{SELFOPT_TEST_TOKEN}}"}}
variants: {{plain: "{{prompt}}", terse: "Answer only. {{prompt}}"}}
initial: {{model: lfm, variant: plain, timeout_s: 5, retries: 1, isolation: i0, warmup: true}}
search: {{variant: [plain, terse]}}
max_candidates: 1
"""
CASES = """
phase: quiz
cases:
  - {id: one, prompt: "1+1?", expect: {number: 2}, sim: {difficulty: 0.1}}
  - {id: two, prompt: "2+2?", expect: {number: 4}, sim: {difficulty: 0.2}}
"""
TEST = """
import pytest
from pytest_selfopt import load_cases

@pytest.mark.parametrize("case", load_cases("quiz.yaml"))
def test_quiz(case, llm):
    secret_local = llm.ask(case.prompt)
    case.check(secret_local)
"""


def test_no_encoding_of_a_key_reaches_any_output_or_file(
    pytester: pytest.Pytester, sim_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first calls meet a 401 that echoes the request headers in every encoding (JSON with
    ``\\/``, URL-encoded, base64, Basic ``user:key``), later ones are answered (so the cycle
    has judged samples and writes its files); a cycle and a plain run with
    ``--tb=long -l -rA``, ``--junitxml``, ``--selfopt-json`` and ``--selfopt-report``: no
    encoding of either secret in the terminal or in any file written."""
    token = "tok/OTHER+SECRET=99/abcdefgh"
    monkeypatch.setenv("SELFOPT_TEST_KEY", SLASH_KEY)
    monkeypatch.setenv("SELFOPT_TEST_TOKEN", token)
    server = sim_server({"lfm": GOOD})
    (echo,) = server.set_faults({"kind": "echo_headers", "encoding": "all", "times": 5})
    bench = pytester.path / "benchmarks"
    bench.mkdir()
    (bench / "selfopt.yaml").write_text(SUITE.format(url=server.url))
    (bench / "quiz.yaml").write_text(CASES)
    (bench / "test_quiz.py").write_text(textwrap.dedent(TEST))
    out = pytester.path / "out"
    loud = ("--tb=long", "-l", "-rA", "-vv", "-p", "no:cacheprovider")
    cycle = pytester.runpytest(
        "--selfopt",
        *loud,
        f"--junitxml={out / 'cycle.xml'}",
        f"--selfopt-json={out / 'cycle.json'}",
        f"--selfopt-report={out / 'report.md'}",
    )
    echo.struck = 0  # the plain run meets the echo too
    plain = pytester.runpytest(*loud, f"--junitxml={out / 'plain.xml'}", "benchmarks")
    samples = json.loads((out / "cycle.json").read_text())["samples"]
    assert "http_4xx" in {s["error_kind"] for s in samples}
    assert echo.struck == 3  # the plain run: warm-up and both cases met the echo
    assert "[REDACTED]" in plain.stdout.str() and "HTTP 401" in plain.stdout.str()
    outputs = {
        "cycle terminal": cycle.stdout.str() + cycle.stderr.str(),
        "plain terminal": plain.stdout.str() + plain.stderr.str(),
    }
    written = [path for path in pytester.path.rglob("*") if path.is_file()]
    assert {"cycle.xml", "plain.xml", "cycle.json", "report.md"} <= {p.name for p in written}
    assert any(path.parent.name == "baselines" for path in written), "the cycle wrote its files"
    for path in written:
        outputs[str(path.relative_to(pytester.path))] = path.read_bytes().decode("utf-8", "replace")
    found = {
        (name, secret[:7], form)
        for name, text in outputs.items()
        for secret in (SLASH_KEY, token)
        for form in leaks(text, secret)
    }
    assert found == set()


# -- credentials in the config of a model -----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"base_url": "https://user:hunter2-secret@api.example.com/v1"}, "base_url"),
        ({"base_url": "https://api.example.com/v1?api_key=hunter2-secret"}, "base_url"),
        ({"base_url": "https://api.example.com/v1?key=hunter2-secret&x=1"}, "base_url"),
        ({"base_url": "http://x/v1", "headers": {"Authorization": "hunter2-secret"}}, "headers"),
        ({"base_url": "http://x/v1", "headers": {"X-Api-Key": "hunter2-secret"}}, "headers"),
    ],
)
def test_literal_credentials_in_url_or_secret_headers_are_refused(
    options: dict[str, Any], key: str
) -> None:
    for create in (openai.create, anthropic.create):
        with pytest.raises(ValueError, match=f"^{key}") as info:
            create("lfm", options)
        assert "hunter2" not in str(info.value)


def test_references_to_variables_and_harmless_queries_are_accepted() -> None:
    openai.create("lfm", {"base_url": "https://x.example/v1?api-version=2024-06-01"})
    openai.create(
        "lfm",
        {"base_url": "http://x/v1", "headers": {"Authorization": "Bearer ${K}", "X-Team": "blue"}},
    )


def test_a_key_that_is_not_ascii_is_a_config_error_that_never_shows_it(
    sim_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFOPT_TEST_KEY", "sk-clé-secrète")
    server = sim_server({"lfm": GOOD})
    with runner_for(server, api_key_env="SELFOPT_TEST_KEY") as runner:
        answer = ask(runner, retries=2)
    assert answer.error_kind == "config" and answer.attempts == 1
    assert "not ASCII" in (answer.error_message or "") and "secr" not in repr(answer)
    assert server.stats()["requests"] == 0


def test_missing_key_variable_is_a_config_error_naming_only_the_variable(sim_server: Start) -> None:
    server = sim_server({"lfm": GOOD})
    with runner_for(server, api_key_env="SELFOPT_SURELY_UNSET_VAR") as runner:
        answer = ask(runner, retries=3)
    assert answer.error_kind == "config" and answer.attempts == 1
    assert "SELFOPT_SURELY_UNSET_VAR" in (answer.error_message or "")
    assert server.stats()["requests"] == 0
