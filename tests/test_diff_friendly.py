"""Diff-friendly committed files, proven: a one-knob promotion is a handful of changed lines.

Unit level: ``dump_baseline``/``dump_routing`` of states differing in one knob. End to end:
two ``pytest --selfopt`` cycles (in-process, the mini suite of tests/suites.py) under git,
where the second one promotes ``variant=terse`` over an already promoted, measured baseline,
and ``git diff`` of ``baselines/`` is asserted line by line (history.json: a few dozen
appended lines, one changed).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from filesdata import BASE, METRICS, baselines_of, routes_of
from hypothesis import given
from hypothesis import strategies as st
from suites import CYCLE, MINI_CASES, MINI_CONFIG, mini_suite, run, set_config

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import PhaseBaseline
from pytest_selfopt.store.formats import dump_baseline, dump_routing
from pytest_selfopt.store.parse import parse_baseline, parse_history


def changed_lines(before: str, after: str) -> list[str]:
    """``-old`` / ``+new`` lines of a zero-context unified diff, as ``git diff -U0`` shows."""
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if not line.startswith(("---", "+++", "@@"))
    ]


def keys(text: str) -> list[str]:
    """Each line's indentation and key: the skeleton that must never move."""
    return [re.sub(r":.*", ":", line) for line in text.splitlines()]


# --------------------------------------------------------------------------- unit level


def test_one_knob_change_diffs_exactly_that_knob_spec_id_and_metrics() -> None:
    before = dump_baseline(baselines_of())
    new_spec = BASE.with_knob("variant", "atomic")
    after = dump_baseline(baselines_of(new_spec, dict(METRICS, median=0.8333, variance=0.0)))
    assert changed_lines(before, after) == [
        "-      variant: native_api",
        "+      variant: atomic",
        f"-    spec_id: {BASE.id}",
        f"+    spec_id: {new_spec.id}",
        "-      median: 0.6667",
        "+      median: 0.8333",
        "-      variance: 0.0051",
        "+      variance: 0.0000",
    ]
    assert keys(before) == keys(after)


def test_one_user_knob_change_in_routing_is_two_lines() -> None:
    spec = BASE.with_knob("temperature", 0.2)
    before = dump_routing(routes_of(spec))
    after = dump_routing(routes_of(spec.with_knob("temperature", 0.7)))
    assert changed_lines(before, after) == [
        "-      temperature: 0.2",
        f"-    spec_id: {spec.id}",
        "+      temperature: 0.7",
        f"+    spec_id: {spec.with_knob('temperature', 0.7).id}",
    ]


KNOB_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["lfm", "claude-haiku", "gpt-4o mini", "no"]),
    "variant": st.sampled_from(["native_api", "atomic", "x: y"]),
    "timeout_s": st.floats(0.01, 1e4),
    "retries": st.integers(0, 9),
    "isolation": st.sampled_from(["i0", "i1"]),
    "warmup": st.booleans(),
}
metric_values = st.one_of(st.none(), st.floats(0, 1e4), st.integers(0, 10**6))


@given(st.data())
def test_any_one_knob_change_moves_only_its_lines(data: st.DataObject) -> None:
    """Whatever knob and metrics change, the key skeleton stays and only those lines differ."""
    knob = data.draw(st.sampled_from(sorted(KNOB_VALUES)))
    new = BASE.with_knob(knob, data.draw(KNOB_VALUES[knob]))
    metrics = {k: data.draw(metric_values) if k != "runs" else 7 for k in METRICS}
    for k in ("input_tokens", "output_tokens", "samples", "errored"):
        metrics[k] = data.draw(st.integers(0, 10**6))
    before = dump_baseline(baselines_of())
    after = dump_baseline(
        {**baselines_of(), "atomic": PhaseBaseline("atomic", new, metrics, 2, "why: x")}
    )
    assert keys(before) == keys(after)
    allowed = {f"      {knob}:", "    spec_id:", "    promoted_in_cycle:", "    reason:"}
    allowed |= {f"      {m}:" for m in METRICS}
    assert {re.sub(r":.*", ":", line[1:]) for line in changed_lines(before, after)} <= allowed


# --------------------------------------------------------------------------- real cycles


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def metric_text(key: str, value: Any) -> str:
    """The documented number format: whole numbers for counts, 4 decimals otherwise."""
    if value is None:
        return "null"
    if key in ("runs", "input_tokens", "output_tokens", "samples", "errored"):
        return str(int(value))
    return f"{value:.4f}"


#: The mini suite's extended phase out of reach of every variant here: it never moves.
HARD_EXTENDED = (
    MINI_CASES["extended"]
    .replace("difficulty: 0.3", "difficulty: 0.6")
    .replace("difficulty: 0.5", "difficulty: 0.65")
)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_diff_of_a_promoting_cycle_is_the_knob_and_its_metrics(
    pytester: pytest.Pytester,
) -> None:
    # Cycle 1 promotes variant=atomic (0.333 -> 0.667), so atomic starts cycle 2 from a
    # measured, promoted baseline with metrics.
    mini_suite(pytester, cases={**MINI_CASES, "extended": HARD_EXTENDED})
    assert run(pytester, *CYCLE).ret == 0
    folder = pytester.path / "baselines"
    first = yaml.safe_load((folder / "baseline.yaml").read_text())["phases"]["atomic"]
    assert (first["spec"]["variant"], first["promoted_in_cycle"]) == ("atomic", 1)
    git(pytester.path, "init", "-q")
    git(pytester.path, "add", "baselines")
    git(pytester.path, "commit", "-q", "-m", "cycle 1")

    # Cycle 2: a new variant, terse, lifts atomic 0.667 -> 1.000 (extended stays out of reach).
    set_config(
        pytester,
        models={"lfm": {"variant_bonus": {"atomic": 0.15, "terse": 0.41}}},
        variants={**MINI_CONFIG["variants"], "terse": "Be terse.\n\n{prompt}"},
        search={"variant": ["native_api", "atomic", "terse"]},
    )
    result = run(pytester, *CYCLE)
    assert result.ret == 0, result.stdout.str()
    changed = git(pytester.path, "diff", "--name-only", "--", "baselines").split()
    assert changed == [
        f"baselines/{n}" for n in ("baseline.yaml", "decisions.log", "history.json", "routing.yaml")
    ]

    old_spec = Spec("lfm", "atomic", 60, 1, "i0", False)
    new_spec = old_spec.with_knob("variant", "terse")
    entries = parse_history((folder / "history.json").read_text(), "history.json")
    before, after = (e["phases"]["atomic"]["baseline_after"] for e in entries)
    assert (before["spec_id"], after["spec_id"]) == (old_spec.id, new_spec.id)
    metric_lines = []
    for key, old in before["metrics"].items():  # in the order baseline.yaml writes them
        new = after["metrics"][key]
        if metric_text(key, old) != metric_text(key, new):
            metric_lines.append(
                (f"-      {key}: {metric_text(key, old)}", f"+      {key}: {metric_text(key, new)}")
            )
    reason = (
        'reason: "variant=terse: PROMOTE: median 1.000 > 0.667, variance 0.0000, restraint 1.00"'
    )

    diff = [
        line
        for line in git(pytester.path, "diff", "-U0", "--", "baselines/baseline.yaml").splitlines()
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    ]
    assert diff[:8] == [
        "-      variant: atomic",
        "+      variant: terse",
        f"-    spec_id: {old_spec.id}",
        "-    promoted_in_cycle: 1",
        '-    reason: "variant=atomic: PROMOTE: median 0.667 > 0.333, variance 0.0000, restraint 1.00"',
        f"+    spec_id: {new_spec.id}",
        "+    promoted_in_cycle: 2",
        f"+    {reason}",
    ]
    # then the metric lines and the per-case reference lines that changed, each in place
    committed_ref = parse_baseline(git(pytester.path, "show", "HEAD:baselines/baseline.yaml"), "b")
    now_ref = parse_baseline((folder / "baseline.yaml").read_text(), "b")
    old_ref, new_ref = committed_ref["atomic"].reference, now_ref["atomic"].reference
    assert old_ref and set(old_ref) == set(new_ref)
    ref_lines = [
        (f"-      {case}: {old_ref[case][0]}/{old_ref[case][1]}",
         f"+      {case}: {new_ref[case][0]}/{new_ref[case][1]}")
        for case in sorted(old_ref) if old_ref[case] != new_ref[case]
    ]  # fmt: skip
    assert ref_lines  # terse passes cases atomic failed
    rest = diff[8:]
    changes = metric_lines + ref_lines  # the order baseline.yaml writes them
    assert sorted(rest) == sorted(line for pair in changes for line in pair)
    assert [l for l in rest if l.startswith("-")] == [p[0] for p in changes]
    assert [l for l in rest if l.startswith("+")] == [p[1] for p in changes]
    assert ("-      median: 0.6667", "+      median: 1.0000") in metric_lines
    # nothing else moved: same skeleton, and the extended phase is byte for byte the same
    committed = git(pytester.path, "show", "HEAD:baselines/baseline.yaml")
    now = (folder / "baseline.yaml").read_text()
    assert keys(committed) == keys(now)
    assert committed.split("  extended:")[1] == now.split("  extended:")[1]

    # history.json: the new cycle is appended as a few dozen lines; one line changes (the
    # previous cycle's last line gains its comma)
    history = [
        line
        for line in git(pytester.path, "diff", "-U0", "--", "baselines/history.json").splitlines()
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    ]
    removed = [line for line in history if line.startswith("-")]
    added = [line for line in history if line.startswith("+")]
    assert len(removed) == 1 and added[0] == removed[0].replace("-", "+", 1) + ","
    assert added[1].startswith('+{"cycle": 2, ') and len(added) <= 50, len(added)
    assert any(line.startswith('+    {"label": "variant=terse", "decision": {"verdict": "PROMOTE"')
               for line in added)  # fmt: skip

    routing = [
        line
        for line in git(pytester.path, "diff", "-U0", "--", "baselines/routing.yaml").splitlines()
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    ]
    assert routing == [
        "-    variant: atomic",
        "+    variant: terse",
        f"-    spec_id: {old_spec.id}",
        f"+    spec_id: {new_spec.id}",
    ]
