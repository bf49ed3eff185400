"""No configured secret, in any encoding a server can echo, reaches any output or file (issue 12).

tests/test_secrets.py and tests/test_http_cycle.py cover a 401 that quotes the request
headers back. Here the server's error *bodies* carry the secrets themselves, in every encoding
(raw, JSON-escaped with ``\\/``, URL-encoded, base64 of the key and of ``user:key``), in shapes a
provider could send (a JSON error, an HTML page, a deep JSON document, plain text), and the
sessions are the loud ones: a cycle broken by Ctrl-C (its sample journal is a file too), the
resumed cycle that writes the committed files, and a plain run, all with ``--tb=long -l -rA
-vv`` and ``--junitxml``. Every output and every file under the test directory is grepped.
"""

from __future__ import annotations

import base64
import json
import re
import textwrap
import urllib.parse
from collections.abc import Iterator

import pytest
from _simserver_fixture import GOOD, sim_servers
from suites import STOP_AFTER_CONFTEST
from test_providers_http import Start
from test_secrets import SLASH_KEY, SUITE, TEST, leaks

from pytest_selfopt.models.simserver import SimServer

TOKEN = "tok/OTHER+SECRET=99/abcdefgh"
#: tests/test_secrets.py's suite, one request per item (no warm-up ping, no retry), so
#: each error body below reaches an item.
QUIET_SUITE = SUITE.replace("retries: 1", "retries: 0").replace("warmup: true", "warmup: false")
CASES = """
phase: quiz
cases:
""" + "".join(
    f"  - {{id: c{i}, prompt: '{i}+1?', expect: {{number: {i + 1}}}, sim: {{difficulty: 0.1}}}}\n"
    for i in range(4)
)


@pytest.fixture
def sim_server() -> Iterator[Start]:
    with sim_servers() as start:
        yield start


def every_form(secret: str) -> list[str]:
    """The secret as servers write it back."""
    raw = secret.encode()
    return [
        secret,
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(b"selfopt:" + raw).decode(),
        base64.b64encode(b"u:" + raw).decode(),
    ]


def error_bodies(each: int) -> list[dict[str, object]]:
    """Reply faults: status, content type and a body that carries both secrets; they strike
    the first requests of a session, ``each`` requests each."""
    forms = every_form(SLASH_KEY) + every_form(TOKEN)
    as_json = json.dumps(
        {"error": {"type": "invalid_request_error", "message": " ".join(forms), "param": forms}}
    ).replace("/", "\\/")
    deep: object = {"detail": forms}
    for _ in range(200):
        deep = {"detail": forms, "error": deep}
    faults: list[dict[str, object]] = [
        {"kind": "reply", "status": 500, "body": as_json},
        {
            "kind": "reply",
            "status": 502,
            "content_type": "text/html",
            "body": "<html><body><pre>" + "\n".join(forms) + "</pre></body></html>",
        },
        {"kind": "reply", "status": 400, "body": json.dumps(deep)},
        {
            "kind": "reply",
            "status": 403,
            "content_type": "text/plain",
            "body": "denied: " + ", ".join(forms),
        },
    ]
    # The server strikes every matching fault at once and answers with one: one after the
    # other instead.
    return [{**fault, "after": each * i, "times": each} for i, fault in enumerate(faults)]


STOP = STOP_AFTER_CONFTEST


def test_secrets_in_error_bodies_reach_no_output_and_no_file(
    pytester: pytest.Pytester, sim_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFOPT_TEST_KEY", SLASH_KEY)
    monkeypatch.setenv("SELFOPT_TEST_TOKEN", TOKEN)
    server: SimServer = sim_server({"lfm": GOOD})
    bench = pytester.path / "benchmarks"
    bench.mkdir()
    assert "retries: 0" in QUIET_SUITE and "warmup: false" in QUIET_SUITE
    (bench / "selfopt.yaml").write_text(QUIET_SUITE.format(url=server.url))
    (bench / "quiz.yaml").write_text(CASES)
    (bench / "test_quiz.py").write_text(textwrap.dedent(TEST))
    pytester.makeconftest(STOP)
    out = pytester.path / "out"
    loud = ("--tb=long", "-l", "-rA", "-vv")
    outputs: dict[str, str] = {}

    server.set_faults(*error_bodies(1))  # few: the cycle must still decide and write
    monkeypatch.setenv("STOP_AFTER", "5")
    broken = pytester.runpytest(
        "--selfopt", *loud, f"--junitxml={out / 'broken.xml'}", no_reraise_ctrlc=True
    )
    assert broken.ret == pytest.ExitCode.INTERRUPTED, broken.stdout.str()[-3000:]
    journal = pytester.path / ".pytest_cache" / "selfopt" / "journal.jsonl"
    outputs["journal of the broken cycle"] = journal.read_text()
    assert re.search(r'"error_kind": "http_[45]xx"', outputs["journal of the broken cycle"])

    monkeypatch.delenv("STOP_AFTER")
    server.set_faults()
    resumed = pytester.runpytest(
        "--selfopt",
        "--selfopt-resume",
        *loud,
        f"--junitxml={out / 'cycle.xml'}",
        f"--selfopt-json={out / 'cycle.json'}",
        f"--selfopt-report={out / 'report.md'}",
    )
    assert resumed.ret in (0, 1), resumed.stdout.str()[-3000:]

    faults = server.set_faults(*error_bodies(1))
    plain = pytester.runpytest(*loud, f"--junitxml={out / 'plain.xml'}", "benchmarks")
    assert [f.struck for f in faults] == [1, 1, 1, 1]  # one item of the plain run each
    for status in (500, 502, 400, 403):
        assert f"HTTP {status} from" in plain.stdout.str()

    for name, result in (("broken", broken), ("resumed", resumed), ("plain", plain)):
        outputs[f"{name} terminal"] = result.stdout.str() + result.stderr.str()
    written = [path for path in pytester.path.rglob("*") if path.is_file()]
    names = {p.name for p in written}
    assert {"broken.xml", "cycle.xml", "plain.xml", "cycle.json", "report.md"} <= names
    assert {"baseline.yaml", "history.json", "decisions.log"} <= names  # the cycle closed
    for path in written:
        outputs[str(path.relative_to(pytester.path))] = path.read_bytes().decode("utf-8", "replace")
    found = {
        (name, secret[:7], form)
        for name, text in outputs.items()
        if not name.endswith(("selfopt.yaml", "conftest.py"))
        for secret in (SLASH_KEY, TOKEN)
        for form in leaks(text, secret)
    }
    assert found == set()
