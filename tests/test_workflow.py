"""The example GitHub Actions workflow: valid, real actions, the documented commands, no leaks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "selfopt.yml"

#: The commands the README, docs/ci.md and the workflow must all spell exactly like this.
COMMANDS = (
    "pip install -e .",
    "pytest benchmarks --selfopt -n auto --selfopt-report=selfopt-report.md",
    "pytest benchmarks --selfopt-check -n auto --selfopt-report=selfopt-check.md",
)
#: Widely used actions, pinned to a major version that exists.
KNOWN_ACTIONS = {
    "actions/checkout@v4",
    "actions/setup-python@v5",
    "peter-evans/create-pull-request@v7",
}
KEYS = {"ANTHROPIC_API_KEY", "OPENAI_API_KEY"}


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the key `on` as True; GitHub reads it as "on".
    on = workflow.get("on", workflow.get(True))
    assert isinstance(on, dict)
    return on


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return list(workflow["jobs"][job]["steps"])


def run_lines(workflow: dict[str, Any]) -> list[str]:
    return [
        line.strip()
        for job in workflow["jobs"]
        for step in steps(workflow, job)
        for line in str(step.get("run", "")).splitlines()
        if line.strip()
    ]


def test_triggers_and_jobs(workflow: dict[str, Any]) -> None:
    on = triggers(workflow)
    assert set(on) == {"schedule", "workflow_dispatch", "pull_request"}
    [cron] = on["schedule"]
    assert re.fullmatch(r"\S+ \S+ \S+ \S+ \S+", cron["cron"])
    jobs = workflow["jobs"]
    assert jobs["cycle"]["if"] == "github.event_name != 'pull_request'"
    assert jobs["check"]["if"] == "github.event_name == 'pull_request'"
    assert all(job["runs-on"] == "ubuntu-latest" for job in jobs.values())


def test_only_real_actions_pinned_to_a_major_version(workflow: dict[str, Any]) -> None:
    used = {s["uses"] for job in workflow["jobs"] for s in steps(workflow, job) if "uses" in s}
    assert used == KNOWN_ACTIONS
    for job in workflow["jobs"]:
        first = [s.get("uses") for s in steps(workflow, job)][:2]
        assert first == ["actions/checkout@v4", "actions/setup-python@v5"]


def test_commands_are_exactly_the_documented_ones(workflow: dict[str, Any]) -> None:
    commands = [line for line in run_lines(workflow) if line.startswith(("pip ", "pytest "))]
    assert sorted(set(commands)) == sorted(COMMANDS)
    cycle = [s.get("run") for s in steps(workflow, "cycle")]
    check = [s.get("run") for s in steps(workflow, "check")]
    assert COMMANDS[1] in cycle and COMMANDS[1] not in check
    assert COMMANDS[2] in check and COMMANDS[2] not in cycle


def test_the_pull_request_body_is_the_cycle_report(workflow: dict[str, Any]) -> None:
    cycle = steps(workflow, "cycle")
    [pr] = [s for s in cycle if s.get("uses", "").startswith("peter-evans/create-pull-request")]
    report = COMMANDS[1].split("--selfopt-report=")[1]
    assert pr["with"]["body-path"] == report
    assert pr["with"]["add-paths"] == "baselines/"
    names = [s.get("uses") or s.get("run") for s in cycle]
    assert names.index(COMMANDS[1]) < names.index(pr["uses"])


def test_permissions_are_least_privilege(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert jobs["cycle"]["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert jobs["check"]["permissions"] == {"contents": "read"}


def test_secrets_only_reach_the_environment_and_are_never_printed(
    workflow: dict[str, Any],
) -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    for job in workflow["jobs"].values():
        env = job["env"]
        assert set(env) == KEYS
        assert all(env[k] == f"${{{{ secrets.{k} }}}}" for k in KEYS)
    referenced = set(re.findall(r"secrets\.(\w+)", text))
    assert referenced == KEYS  # GITHUB_TOKEN is the action's default, never spelled out
    for line in run_lines(workflow):
        assert "secrets." not in line and not re.search(r"\b(echo|printenv|env)\b.*KEY", line)
        assert not re.fullmatch(r"(printenv|env|set)( .*)?", line)


def test_docs_show_the_same_workflow_and_commands() -> None:
    doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert command in doc
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == WORKFLOW.read_text(encoding="utf-8")
    for key in (*KEYS, "GITHUB_TOKEN", "contents: write", "pull-requests: write"):
        assert key in doc


def test_readme_names_the_same_commands() -> None:
    """The README is the lead's: it must carry these commands verbatim (see docs/ci.md)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [c for c in COMMANDS if c not in readme]
    assert not missing, f"README.md lacks: {missing}"
    assert "docs/ci.md" in readme
