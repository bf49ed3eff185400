"""The closed loop through real processes: ``selfopt loop``, ``selfopt report [--why]``, plain
runs on what the loop routed, fallbacks along the chain, and reproducibility.

Every command is a subprocess with its own working directory, as a user runs it. The loop
runs over the mini suite of tests/suites.py (the example's story on 3 cases a phase and 3
runs), once per module, and is shared (``looped``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from suites import NO_DEV_PLUGINS, write_suite

from pytest_selfopt import load_routing
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.store.parse import parse_history

CLI = (sys.executable, "-m", "pytest_selfopt.cli.main")
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider")

pytestmark = pytest.mark.slow

# Records, per item, what the llm fixture was bound to and who answered (junitxml properties);
# the sample itself reaches junitxml as the plugin's own ``selfopt.*`` properties.
RECORDER = """\
import pytest
from pytest_selfopt.plugin.state import LLM_KEY


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: after the plugin recorded the sample
def pytest_runtest_makereport(item, call):
    outcome = yield
    llm = item.stash.get(LLM_KEY, None)
    if call.when != "call" or llm is None or not llm.answers:
        return
    last = llm.answers[-1]
    # junitxml writes the properties of the teardown report, which copies the item's
    item.user_properties += [
        ("routed.spec_id", llm.spec.id),
        ("routed.model", llm.model),
        ("routed.warmup", llm.spec.warmup),
        ("routed.fallbacks", ",".join(llm.fallbacks)),
        ("answer.model", last.model),
        ("answer.fallbacks_used", ",".join(last.fallbacks_used)),
    ]
"""


def _env() -> dict[str, str]:
    """The caller's environment without what would leak the outer test session inward, and
    without the dev environment's hypothesis plugin in every pytest the loop starts."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS", "PYTEST_SELFOPT"))
    }
    return {**env, "PYTEST_ADDOPTS": " ".join(NO_DEV_PLUGINS)}


def run(command: tuple[str, ...] | list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, env=_env(), timeout=600, check=False
    )


def mini_root(root: Path) -> Path:
    """The mini suite in ``root/benchmarks`` and the recorder in ``root/conftest.py``."""
    write_suite(root / "benchmarks")
    (root / "conftest.py").write_text(RECORDER)
    return root


def cycles(baselines: Path) -> list[dict[str, Any]]:
    """The cycles of history.json as the loop reads them back (either layout on disk)."""
    path = baselines / "history.json"
    return parse_history(path.read_text(encoding="utf-8"), str(path))


def log_records(baselines: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (baselines / "decisions.log").read_text().splitlines()]


def verdicts(entry: dict[str, Any], phase: str) -> dict[str, tuple[str, str]]:
    """label -> (origin, verdict) of a cycle's candidates in one phase."""
    return {
        c["label"]: (c["origin"], c["decision"]["verdict"])
        for c in entry["phases"][phase]["candidates"]
    }


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """testcase name -> {property: value}, plus ``outcome``."""
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        failed = case.find("failure") is not None or case.find("error") is not None
        props["outcome"] = "failed" if failed else "passed"
        out[case.get("name", "")] = props
    return out


@dataclass(frozen=True)
class Looped:
    root: Path
    baselines: Path
    stdout: str


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> Looped:
    """``selfopt loop --fresh baselines --cycles 6`` over the mini suite."""
    root = mini_root(tmp_path_factory.mktemp("loop"))
    baselines = root / "baselines"
    done = run([*CLI, "loop", "--fresh", str(baselines), "--cycles", "6"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    return Looped(root, baselines, done.stdout)


# --------------------------------------------------------------------------- done-when 1


def test_loop_climbs_and_stops_at_a_plateau_by_itself(looped: Looped) -> None:
    lines = looped.stdout.splitlines()
    entries = cycles(looped.baselines)
    n = len(entries)
    assert 2 <= n < 6, looped.stdout  # it stopped by itself, before --cycles
    # one line per cycle, then why it stopped
    assert [line.split(":")[0] for line in lines[:n]] == [f"cycle {i}" for i in range(1, n + 1)]
    assert lines[n] == (
        f"stopped: plateau after cycle {n}: nothing promoted, no untried candidate and no "
        "pending recommendation left"
    )
    assert len(lines) == n + 1

    first = entries[0]["phases"]["atomic"]
    assert verdicts(entries[0], "atomic")["variant=atomic"] == ("search", "PROMOTE")
    assert first["measured_baseline"]["median"] == pytest.approx(0.333, abs=1e-3)
    assert first["baseline_after"]["metrics"]["median"] == pytest.approx(0.667, abs=1e-3)
    assert lines[0].startswith("cycle 1: atomic 0.333 -> 0.667 PROMOTE variant=atomic")

    # cycle 1: extended at 0% is a capability limit -> route to claude-haiku is only pending
    ext1 = entries[0]["phases"]["extended"]
    assert {d["kind"] for d in ext1["diagnoses"] if d["case_id"]} == {"capability_limit"}
    assert [(p["phase"], p["spec"]["model"]) for p in entries[0]["pending"]] == [
        ("extended", "claude-haiku")
    ]
    assert "next: extended model=claude-haiku (route_next_model)" in lines[0]

    # cycle 2: the route is verified and HELD (claude-haiku cold-starts); warm-up recommended
    ext2 = entries[1]["phases"]["extended"]
    assert verdicts(entries[1], "extended")["model=claude-haiku"] == ("pending", "HOLD")
    assert ext2["winner"] is None
    assert "cold_start" in {d["kind"] for d in ext2["diagnoses"]}
    assert [(p["spec"]["model"], p["spec"]["warmup"]) for p in entries[1]["pending"]] == [
        ("claude-haiku", True)
    ]
    assert "not verified: model=claude-haiku (HOLD)" in lines[1]

    # cycle 3: model=claude-haiku,warmup=true verified through the gates and promoted
    ext3 = entries[2]["phases"]["extended"]
    label = "model=claude-haiku,warmup=true"
    assert verdicts(entries[2], "extended")[label] == ("pending", "PROMOTE")
    assert ext3["baseline_after"]["spec"]["model"] == "claude-haiku"
    assert ext3["baseline_after"]["spec"]["warmup"] is True
    assert any("routing extended: model lfm -> claude-haiku" in e for e in ext3["enforced"])
    assert f"extended 0.000 -> 1.000 PROMOTE {label}" in lines[2]

    # extended is routed to claude-haiku only from the cycle that verified it
    routed = [e["phases"]["extended"]["baseline_after"]["spec"]["model"] for e in entries]
    assert routed[:2] == ["lfm", "lfm"] and set(routed[2:]) == {"claude-haiku"}
    enforce = [
        r
        for r in log_records(looped.baselines)
        if r["event"] == "enforce" and r["phase"] == "extended"
    ]
    assert [(r["cycle"], r["detail"]["after"]["spec"]["model"]) for r in enforce] == [
        (1, "lfm"),
        (3, "claude-haiku"),
    ]

    # the last cycle promotes nothing and leaves nothing pending; the curve never goes down
    assert all(rec["winner"] is None for rec in entries[-1]["phases"].values())
    assert entries[-1]["pending"] == []
    for phase in ("atomic", "extended"):
        curve = [  # at the committed precision: baseline.yaml keeps 4 decimals, history 6
            round(e["phases"][phase]["baseline_after"]["metrics"]["median"], 4)
            for e in entries
            if e["phases"][phase]["baseline_after"]["metrics"]
        ]
        assert curve == sorted(curve), (phase, curve)


def test_routing_yaml_is_what_the_loop_verified(looped: Looped) -> None:
    table = load_routing(looped.baselines)
    assert table.phases == ("atomic", "extended")
    extended = table.for_phase("extended")
    assert (extended.model, extended.spec.warmup, extended.fallbacks) == ("claude-haiku", True, ())
    atomic = table.for_phase("atomic")
    assert (atomic.model, atomic.spec.variant, atomic.fallbacks) == (
        "lfm",
        "atomic",
        ("claude-haiku",),
    )


def test_report_shows_the_curve_and_the_ceiling(looped: Looped) -> None:
    done = run([*CLI, "report", "--baselines", "baselines"], looped.root)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    n = len(cycles(looped.baselines))
    atomic = next(line for line in out.splitlines() if line.strip().startswith("atomic"))
    extended = next(line for line in out.splitlines() if line.strip().startswith("extended"))
    assert atomic.split()[1:3] == ["0.333", "->"]
    assert atomic.count("0.667") == n  # after every cycle
    assert "0.000 -> 0.000 -> 0.000 -> 1.000" in extended
    assert "ceiling: perfect score since cycle 3" in extended
    assert (
        f"plateau reached: cycle {n} promoted nothing, no untried candidate and no pending "
        "recommendation left"
    ) in out


def test_report_why_answers_from_the_decisions_log_alone(looped: Looped, tmp_path: Path) -> None:
    only_log = tmp_path / "audit"
    only_log.mkdir()
    shutil.copy(looped.baselines / "decisions.log", only_log / "decisions.log")
    done = run([*CLI, "report", "--baselines", str(only_log), "--why", "extended"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "now: model claude-haiku, variant native_api" in out
    assert "warmup true; fallbacks: none" in out and "set in cycle 3" in out
    steps = [line.strip() for line in out.splitlines() if line.strip().startswith("cycle ")]
    want = [
        "cycle 1: routing set: model lfm",
        "cycle 1: recommended model=claude-haiku (route_next_model): 3/3 cases capability-limited",
        "cycle 2: not verified: model=claude-haiku (route_next_model) HOLD: unstable",
        "cycle 2: recommended model=claude-haiku,warmup=true (enable_warmup): cold start",
        "cycle 3: PROMOTE model=claude-haiku,warmup=true: median 1.000 > 0.000",
        "cycle 3: routing changed: model lfm -> claude-haiku, warmup false -> true",
    ]
    found = [next(i for i, s in enumerate(steps) if s.startswith(w)) for w in want]
    assert found == sorted(found), out  # in the order it happened
    assert "(verified: passed the gates this cycle)" in steps[found[-1]]

    missing = run([*CLI, "report", "--baselines", str(only_log), "--why", "nope"], tmp_path)
    assert missing.returncode == 1
    assert "no record for phase 'nope'; phases: atomic, extended" in missing.stdout


# --------------------------------------------------------------------------- done-when 3


def test_plain_run_after_the_loop_uses_the_routing(looped: Looped) -> None:
    xml = looped.root / "plain.xml"
    done = run(
        [*PYTEST, "benchmarks", "-k", "train-meeting or capital-france", "-v", f"--junitxml={xml}"],
        looped.root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_extended[train-meeting] PASSED" in done.stdout
    props = junit_properties(xml)
    extended = props["test_extended[train-meeting]"]
    assert extended["outcome"] == "passed"
    assert extended["routed.model"] == "claude-haiku" == extended["answer.model"]
    assert extended["routed.warmup"] == "True"
    assert extended["selfopt.model"] == "claude-haiku" and extended["selfopt.passed"] == "True"
    assert (
        extended["routed.spec_id"] == load_routing(looped.baselines).for_phase("extended").spec.id
    )
    atomic = props["test_atomic[capital-france]"]
    assert (atomic["routed.model"], atomic["routed.fallbacks"]) == ("lfm", "claude-haiku")


def small_suite(root: Path, models: dict[str, Any], chain: list[str], initial_model: str) -> Path:
    """One phase ``hard`` of three cases, nothing to search: only recommendations move it."""
    config = {
        "seed": 3,
        "runs": 3,
        "policy": "seed",  # the four gates (docs/architecture.md, "Gates"): "no improvement" REJECTs
        "models": models,
        "fallback_chain": chain,
        "variants": {"plain": "{prompt}"},
        "initial": {
            "model": initial_model, "variant": "plain", "timeout_s": 60, "retries": 1,
            "isolation": "i0", "warmup": False,
        },
        "search": {},
        "max_candidates": 2,
        "gates": {"cooldown_cycles": 3},
    }  # fmt: skip
    cases = [
        {"id": name, "prompt": f"{name}?", "expect": {"equals": str(i)}, "sim": {"difficulty": d}}
        for i, (name, d) in enumerate([("one", 0.6), ("two", 0.7), ("three", 0.8)], 1)
    ]
    hard = yaml.safe_dump({"phase": "hard", "cases": cases})
    write_suite(root / "benchmarks", config=config, cases={"hard": hard})
    (root / "conftest.py").write_text(RECORDER)
    return root


def test_primary_answering_503_falls_back_along_the_chain(tmp_path: Path) -> None:
    models = {
        "down": {"provider": "sim", "skill": 0.95, "transient_errors": 1.0},  # 503 / 429 always
        "good": {"provider": "sim", "skill": 0.95},
    }
    root = small_suite(tmp_path, models, ["down", "good"], "good")
    spec = {"variant": "plain", "timeout_s": 60, "retries": 1, "isolation": "i0", "warmup": False}
    folder = root / "baselines"
    folder.mkdir()
    for fallbacks, name in ((["good"], "with"), ([], "without")):
        routing = {
            "version": 1,
            "phases": {"hard": {"model": "down", "fallbacks": fallbacks, **spec}},
        }
        (folder / "routing.yaml").write_text(yaml.safe_dump(routing, sort_keys=False))
        xml = root / f"{name}.xml"
        done = run([*PYTEST, "benchmarks", f"--junitxml={xml}"], root)
        props = junit_properties(xml)
        assert len(props) == 3
        if name == "with":
            assert done.returncode == 0, done.stdout + done.stderr
            for item in props.values():
                assert item["outcome"] == "passed"
                assert item["routed.model"] == "down"  # the routing was applied ...
                assert item["answer.model"] == "good" == item["selfopt.model"]  # ... then fell back
                assert item["answer.fallbacks_used"] == "good"
                assert item["selfopt.attempts"] == "3"  # 1 + retries on down, then good
                assert (item["selfopt.passed"], item["selfopt.error_kind"]) == ("True", "None")
        else:
            assert done.returncode == 1
            for item in props.values():
                assert item["outcome"] == "failed"
                assert item["selfopt.error_kind"] in ("http_5xx", "http_429")
                assert item["answer.model"] == "down"
    assert not (folder / "history.json").exists()  # plain runs write nothing


# --------------------------------------------------------------------------- done-when 2


def test_failed_verification_is_not_enforced_nor_reproposed(tmp_path: Path) -> None:
    models = {
        "small": {"provider": "sim", "skill": 0.1},
        "medium": {"provider": "sim", "skill": 0.2},
    }
    root = small_suite(tmp_path, models, ["small", "medium"], "small")
    done = run([*CLI, "loop", "--fresh", "baselines", "--cycles", "5"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        "cycle 1: hard 0.000 (=); next: hard model=medium (route_next_model)",
        "cycle 2: hard 0.000 (=), not verified: model=medium (REJECT)",
        (
            "stopped: plateau after cycle 2: nothing promoted, no untried candidate and no "
            "pending recommendation left"
        ),
    ]
    folder = root / "baselines"
    first, second = cycles(folder)
    assert [p["spec"]["model"] for p in first["pending"]] == ["medium"]
    assert verdicts(second, "hard") == {"model=medium": ("pending", "REJECT")}
    assert second["pending"] == []  # the same route is diagnosed again, but cooling down
    assert ("hard", "route_next_model", "medium") in {
        (r["phase"], r["action"], r["value"]) for r in second["phases"]["hard"]["recommendations"]
    }
    route = load_routing(folder).for_phase("hard")
    assert route.model == "small"
    assert route.spec == Spec.from_dict(first["phases"]["hard"]["baseline_before"]["spec"])
    assert "model: medium" not in (folder / "routing.yaml").read_text()
    assert "model: medium" not in (folder / "baseline.yaml").read_text()
    records = log_records(folder)
    assert [(r["cycle"], r["event"]) for r in records if r["label"] == "model=medium"] == [
        (1, "recommend"),
        (2, "decision"),
        (2, "verify_failed"),
    ]

    # One more cycle by hand: the failed candidate is still not proposed (cool-down).
    third = run([*PYTEST, "--selfopt", "benchmarks"], root)
    assert third.returncode == 0, third.stdout + third.stderr
    assert cycles(folder)[2]["phases"]["hard"]["candidates"] == []
    assert load_routing(folder).for_phase("hard").model == "small"


# --------------------------------------------------------------------------- done-when 5


def test_deleting_baselines_and_rerunning_reproduces_the_files(
    looped: Looped, tmp_path: Path
) -> None:
    root = tmp_path / "again"
    shutil.copytree(looped.root, root, ignore=shutil.ignore_patterns("__pycache__", "*.xml"))
    names = ("baseline.yaml", "routing.yaml")
    first = {n: (looped.baselines / n).read_bytes() for n in names}
    shutil.rmtree(root / "baselines")
    done = run([*CLI, "loop", "--cycles", "6"], root)  # not --fresh: the default baselines/
    assert done.returncode == 0, done.stdout + done.stderr
    assert {n: (root / "baselines" / n).read_bytes() for n in names} == first
    assert done.stdout == looped.stdout
    # the whole history too: simulated time makes every number reproducible
    assert cycles(root / "baselines") == cycles(looped.baselines)


# --------------------------------------------------------------------------- audit trail


def test_decisions_log_carries_the_git_commit(tmp_path: Path) -> None:
    root = mini_root(tmp_path / "repo")
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "suite"]):
        assert run([*git, *command], root).returncode == 0
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    done = run([*CLI, "loop", "--cycles", "1"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("stopped: 1 cycle(s) run (--cycles 1)")
    records = log_records(root / "baselines")
    assert records and all(r["git_commit"] == head for r in records)
    why = run([*CLI, "report", "--why", "atomic"], root)
    assert f"cycle 1 @{head[:10]}: PROMOTE variant=atomic" in why.stdout


def test_loop_reports_a_broken_cycle_and_its_exit_status(tmp_path: Path) -> None:
    root = mini_root(tmp_path / "bad")
    config = root / "benchmarks" / "selfopt.yaml"
    config.write_text(config.read_text().replace("runs: 3", "runs: zero"))
    done = run([*CLI, "loop", "--cycles", "2"], root)
    assert done.returncode not in (0, None)
    assert "stopped: pytest could not collect the next cycle" in done.stdout
    assert "runs" in done.stdout + done.stderr
    assert not (root / "baselines").exists()
