"""The committed files: deterministic, atomic, locked, validated (DESIGN.md §9)."""

from __future__ import annotations

import difflib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_selfopt import files
from pytest_selfopt.files import (
    ConcurrentChangeError,
    FilesError,
    LockedError,
    StaleLockWarning,
    dump_baseline,
    dump_history,
    dump_log_lines,
    dump_routing,
    git_commit,
    load_routing,
    read_state,
    write_cycle,
)
from pytest_selfopt.filesformat import parse_baseline, parse_routing, yaml_float, yaml_str
from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route, Spec

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
METRICS: dict[str, Any] = {
    "runs": 7,
    "median": 0.6667,
    "mean": 0.6429,
    "variance": 0.0051,
    "restraint": 0.95,
    "latency_p50_s": 0.41,
    "latency_p95_s": 1.2,
    "input_tokens": 1200,
    "output_tokens": 340,
    "cost": None,
    "samples": 42,
    "errored": 1,
}


def _baselines(
    atomic: Spec = BASE, metrics: dict[str, Any] | None = None
) -> dict[str, PhaseBaseline]:
    return {
        "atomic": PhaseBaseline(
            "atomic",
            atomic,
            dict(metrics or METRICS),
            1,
            "variant=atomic: PROMOTE: median 0.833 > 0.667",
        ),
        "extended": PhaseBaseline(
            "extended", BASE.with_knob("model", "claude-haiku"), None, 0, "initial spec"
        ),
    }


def _routes(atomic: Spec = BASE) -> dict[str, Route]:
    return {
        "atomic": Route("atomic", atomic, ("claude-haiku",)),
        "extended": Route("extended", BASE.with_knob("model", "claude-haiku")),
    }


def _audit(cycle: int) -> list[AuditRecord]:
    return [
        AuditRecord(
            cycle, "atomic", "decision", BASE.id, "baseline", {"verdict": "HOLD", "median": 2 / 3}
        )
    ]


def _entry(cycle: int) -> dict[str, Any]:
    return {"cycle": cycle, "seed": 1, "runs": 7, "policy": "seed", "phases": {}, "pending": []}


def _write(folder: Path, cycle: int, sha: str | None, **kw: Any) -> list[Path]:
    args: dict[str, Any] = {
        "baselines": _baselines(),
        "routes": _routes(),
        "history_entry": _entry(cycle),
        "audit": _audit(cycle),
        "expected_baseline_sha256": sha,
    }
    args.update(kw)
    return write_cycle(folder, **args)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


# --------------------------------------------------------------------------- round trip


def test_round_trip_write_then_read_gives_the_same_state(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    changed = _write(folder, 1, None, git_commit="a" * 40)
    assert [p.name for p in changed] == [
        "baseline.yaml",
        "routing.yaml",
        "history.json",
        "decisions.log",
    ]
    state = read_state(folder)
    assert state.baselines == _baselines()
    assert state.routes == _routes()
    assert state.history == [_entry(1)]
    assert state.baseline_sha256 == files.sha256_of((folder / "baseline.yaml").read_bytes())


def test_missing_folder_reads_as_empty_state(tmp_path: Path) -> None:
    state = read_state(tmp_path / "nope")
    assert (state.baselines, state.routes, state.history, state.baseline_sha256) == (
        {},
        {},
        [],
        None,
    )


def test_dump_is_byte_identical_and_idempotent_with_fixed_precision() -> None:
    noisy = dict(METRICS, median=0.83333333333, variance=0.001234567)
    first = dump_baseline(_baselines(metrics=noisy))
    assert first == dump_baseline(_baselines(metrics=noisy))
    assert "      median: 0.8333\n" in first and "      variance: 0.0012\n" in first
    again = dump_baseline(parse_baseline(first, "baseline.yaml"))
    assert again == first
    assert first.endswith("\n") and not first.endswith("\n\n")
    assert first.startswith("# pytest-selfopt baseline: written by `pytest --selfopt`")
    assert dump_routing(_routes()) == dump_routing(parse_routing(dump_routing(_routes()), "r"))


def test_baseline_layout_matches_the_documented_shape() -> None:
    text = dump_baseline(_baselines())
    lines = text.splitlines()
    start = lines.index("  atomic:")
    assert lines[start : start + 13] == [
        "  atomic:",
        "    spec:",
        "      model: lfm",
        "      variant: native_api",
        "      timeout_s: 60",
        "      retries: 1",
        "      isolation: i0",
        "      warmup: false",
        f"    spec_id: {BASE.id}",
        "    promoted_in_cycle: 1",
        '    reason: "variant=atomic: PROMOTE: median 0.833 > 0.667"',
        "    metrics:",
        "      runs: 7",
    ]
    assert "    metrics: null" in lines  # the unmeasured initial spec of "extended"
    assert lines.index("  atomic:") < lines.index("  extended:")


def test_one_knob_change_diffs_exactly_that_knob_spec_id_and_metrics() -> None:
    before = dump_baseline(_baselines())
    new_spec = BASE.with_knob("variant", "atomic")
    after = dump_baseline(_baselines(new_spec, dict(METRICS, median=0.8333, variance=0.0)))
    diff = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if not line.startswith(("---", "+++", "@@"))
    ]
    assert diff == [
        "-      variant: native_api",
        "+      variant: atomic",
        f"-    spec_id: {BASE.id}",
        f"+    spec_id: {new_spec.id}",
        "-      median: 0.6667",
        "+      median: 0.8333",
        "-      variance: 0.0051",
        "+      variance: 0.0000",
    ]


def test_routing_shape_has_fallbacks_extras_and_spec_id() -> None:
    spec = BASE.with_knob("temperature", 0.7)
    text = dump_routing({"atomic": Route("atomic", spec, ("claude-haiku", "gpt 4"))})
    assert text.splitlines()[2:] == [
        "phases:",
        "  atomic:",
        "    model: lfm",
        "    fallbacks:",
        "      - claude-haiku",
        '      - "gpt 4"',
        "    variant: native_api",
        "    timeout_s: 60",
        "    retries: 1",
        "    isolation: i0",
        "    warmup: false",
        "    extras:",
        "      temperature: 0.7",
        f"    spec_id: {spec.id}",
    ]


def test_empty_mappings_dump_and_read_back() -> None:
    assert parse_baseline(dump_baseline({}), "b") == {}
    assert parse_routing(dump_routing({}), "r") == {}


def test_history_and_log_formats() -> None:
    text = dump_history(
        [
            {
                "cycle": 1,
                "x": 1 / 3,
                "nested": [{"y": 2 / 3, "z": (1, 2)}],
                "bad": float("nan"),
                "name": "é",
            }
        ]
    )
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert doc == {
        "version": 1,
        "cycles": [
            {
                "cycle": 1,
                "x": 0.333333,
                "nested": [{"y": 0.666667, "z": [1, 2]}],
                "bad": None,
                "name": "é",
            }
        ],
    }
    assert '\n  "cycles": [\n' in text and "é" in text
    lines = dump_log_lines(
        _audit(3) + [AuditRecord(3, "x", "promote", "id", "l\u2028", {"a": 1})], "c0ffee"
    )
    assert lines.count("\n") == 2 and lines.endswith("\n")
    first, second = (json.loads(x) for x in lines.splitlines())
    assert list(first) == ["cycle", "phase", "event", "spec_id", "label", "detail", "git_commit"]
    assert first["detail"] == {"verdict": "HOLD", "median": 0.666667}
    assert second["label"] == "l\u2028" and second["git_commit"] == "c0ffee"
    assert ", " not in lines and ": " not in lines  # compact separators
    assert "git_commit" not in dump_log_lines(_audit(1), None)


# --------------------------------------------------------------------------- writing rules


def test_cycle_without_promotion_leaves_baseline_and_routing_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    _write(folder, 1, None)
    old = 1_000_000_000_000_000_000
    for name in ("baseline.yaml", "routing.yaml"):
        os.utime(folder / name, ns=(old, old))
    before = _snapshot(folder)
    state = read_state(folder)
    changed = _write(folder, 2, state.baseline_sha256)
    assert [p.name for p in changed] == ["history.json", "decisions.log"]
    for name in ("baseline.yaml", "routing.yaml"):
        assert (folder / name).read_bytes() == before[name]
        assert (folder / name).stat().st_mtime_ns == old
    assert [e["cycle"] for e in read_state(folder).history] == [1, 2]
    log = (folder / "decisions.log").read_text().splitlines()
    assert [json.loads(x)["cycle"] for x in log] == [1, 2]


def test_promotion_rewrites_baseline_and_routing(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    _write(folder, 1, None)
    new = BASE.with_knob("variant", "atomic")
    changed = _write(
        folder,
        2,
        read_state(folder).baseline_sha256,
        baselines=_baselines(new),
        routes=_routes(new),
        audit=[],
    )
    assert [p.name for p in changed] == ["baseline.yaml", "routing.yaml", "history.json"]
    assert read_state(folder).baselines["atomic"].spec == new


@pytest.mark.parametrize("case", ["modified", "deleted", "created"])
def test_compare_before_write_refuses_and_writes_nothing(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "baselines"
    if case == "created":
        sha = None
        folder.mkdir()
        (folder / "baseline.yaml").write_text(dump_baseline({}))
    else:
        _write(folder, 1, None)
        sha = read_state(folder).baseline_sha256
        if case == "modified":
            (folder / "baseline.yaml").write_text(dump_baseline({}))
        else:
            (folder / "baseline.yaml").unlink()
    before = _snapshot(folder)
    with pytest.raises(ConcurrentChangeError) as err:
        _write(folder, 2, sha, baselines=_baselines(BASE.with_knob("retries", 3)))
    assert "baseline.yaml" in str(err.value) and "nothing was written" in str(err.value)
    assert ("was " + case) in str(err.value)
    assert _snapshot(folder) == before


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_live_lock_is_refused_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = Path("baselines")
    folder.mkdir()
    owner = _sleeper()
    try:
        (folder / ".selfopt.lock").write_text(f"{owner.pid}\n")
        before = _snapshot(folder)
        with pytest.raises(LockedError) as err:
            _write(folder, 1, None)
        assert str(err.value) == (
            f"baselines/ is locked by PID {owner.pid} (another selfopt run?); wait for it or "
            "delete baselines/.selfopt.lock if that process is gone"
        )
        assert _snapshot(folder) == before
    finally:
        owner.kill()
        owner.wait()


def test_lock_of_a_dead_process_is_broken_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (folder / ".selfopt.lock").write_text(f"{gone.pid}\n")
    with pytest.warns(StaleLockWarning, match=f"PID {gone.pid}"):
        changed = _write(folder, 1, None)
    assert len(changed) == 4
    assert not (folder / ".selfopt.lock").exists()


def test_lock_without_pid_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / ".selfopt.lock").write_text("garbage")
    with pytest.raises(LockedError, match="holds no PID"):
        _write(folder, 1, None)


def test_lock_is_held_during_the_write_and_released_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "baselines"
    seen: list[str] = []
    real = files.atomic_write

    def spy(path: Path, data: bytes) -> None:
        seen.append((folder / ".selfopt.lock").read_text().strip())
        real(path, data)

    monkeypatch.setattr(files, "atomic_write", spy)
    _write(folder, 1, None)
    assert seen and set(seen) == {str(os.getpid())}
    assert not (folder / ".selfopt.lock").exists()


def test_no_temporary_files_are_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "baselines"
    _write(folder, 1, None)
    assert sorted(p.name for p in folder.iterdir()) == [
        "baseline.yaml",
        "decisions.log",
        "history.json",
        "routing.yaml",
    ]
    before = _snapshot(folder)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _write(
            folder,
            2,
            read_state(folder).baseline_sha256,
            baselines=_baselines(BASE.with_knob("retries", 2)),
        )
    assert _snapshot(folder) == before  # old content intact, temp file removed, lock released


def test_written_files_keep_ordinary_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    _write(folder, 1, None)
    assert (folder / "baseline.yaml").stat().st_mode & 0o777 == 0o644


def test_torn_last_log_line_is_closed_before_appending(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "decisions.log").write_text('{"cycle":0')
    _write(folder, 1, None)
    lines = (folder / "decisions.log").read_text().splitlines()
    assert lines[0] == '{"cycle":0' and json.loads(lines[1])["cycle"] == 1


# --------------------------------------------------------------------------- validation

GOOD = dump_baseline(_baselines())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("retries: 1", "retries: two", 1),
            "baseline.yaml: phases.atomic.spec.retries: expected a whole number >= 0, got 'two'",
        ),
        (
            lambda t: t.replace("isolation: i0", "isolation: i2", 1),
            "phases.atomic.spec.isolation: expected one of i0, i1, got 'i2'",
        ),
        (
            lambda t: t.replace("timeout_s: 60", "timeout_s: -1", 1),
            "phases.atomic.spec.timeout_s: expected a number of seconds > 0, got -1",
        ),
        (
            lambda t: t.replace("warmup: false", "warmup: maybe", 1),
            "phases.atomic.spec.warmup: expected true or false, got 'maybe'",
        ),
        (
            lambda t: t.replace("model: lfm", 'model: ""', 1),
            "phases.atomic.spec.model: expected a non-empty string, got ''",
        ),
        (
            lambda t: t.replace("      variant: native_api\n", "", 1),
            "phases.atomic.spec.variant: missing",
        ),
        (
            lambda t: t.replace(
                "    promoted_in_cycle: 1", "    promoted_in_cycle: 1\n    colour: red", 1
            ),
            "phases.atomic.colour: unknown key",
        ),
        (
            lambda t: t.replace("variant: native_api", "variant: atomic", 1),
            "phases.atomic.spec_id: spec_id does not match the spec",
        ),
        (
            lambda t: t.replace("      runs: 7", "      runs: 7.5", 1),
            "phases.atomic.metrics.runs: expected a whole number >= 0, got 7.5",
        ),
        (lambda t: t.replace("version: 1", "version: 2"), "version: expected 1, got 2"),
        (lambda t: t + "  atomic: {}\n", "duplicate key 'atomic'"),
        (lambda t: t.replace("phases:", "phases: [", 1), "baseline.yaml: not valid YAML"),
        (lambda t: "- a list\n", "baseline.yaml: (top level): expected a mapping, got a list"),
    ],
)
def test_malformed_baseline_names_file_and_key_and_nothing_is_written(
    tmp_path: Path, edit: Any, message: str
) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "baseline.yaml").write_text(edit(GOOD))
    before = _snapshot(folder)
    with pytest.raises(FilesError) as err:
        read_state(folder)
    assert message in str(err.value)
    assert str(err.value).startswith(str(folder / "baseline.yaml"))
    assert _snapshot(folder) == before


def test_missing_spec_id_is_accepted_and_recomputed() -> None:
    text = GOOD.replace(f"    spec_id: {BASE.id}\n", "", 1)
    assert parse_baseline(text, "b") == _baselines()
    assert dump_baseline(parse_baseline(text, "b")) == GOOD


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("      - claude-haiku", "      - 3", 1),
            "phases.atomic.fallbacks: expected a list of model names",
        ),
        (lambda t: t.replace("extras: {}", "extras: [1]", 1), "extras: expected a mapping"),
        (
            lambda t: t.replace("    retries: 1", "    retries: -1", 1),
            "phases.atomic.retries: expected a whole number >= 0, got -1",
        ),
        (lambda t: t.replace("    model: lfm", "    model: gpt", 1), "spec_id does not match"),
    ],
)
def test_malformed_routing_names_file_and_key(tmp_path: Path, edit: Any, message: str) -> None:
    (tmp_path / "routing.yaml").write_text(edit(dump_routing(_routes())))
    with pytest.raises(FilesError, match="routing.yaml: ") as err:
        read_state(tmp_path)
    assert message in str(err.value)


def test_malformed_history_refuses_the_write_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    _write(folder, 1, None)
    (folder / "history.json").write_text('{"version": 1, "cycles": [1]}')
    before = _snapshot(folder)
    with pytest.raises(FilesError, match=r"history.json: cycles\[0\]: expected an object"):
        read_state(folder)
    with pytest.raises(FilesError, match="history.json"):
        _write(
            folder,
            2,
            files.sha256_of(before["baseline.yaml"]),
            baselines=_baselines(BASE.with_knob("retries", 5)),
        )
    assert _snapshot(folder) == before
    (folder / "history.json").write_text("{nope")
    with pytest.raises(FilesError, match="history.json: not valid JSON"):
        read_state(folder)


def test_non_utf8_file_is_a_files_error(tmp_path: Path) -> None:
    (tmp_path / "baseline.yaml").write_bytes(b"version: 1\nphases: {\xff}\n")
    with pytest.raises(FilesError, match="baseline.yaml: not UTF-8"):
        read_state(tmp_path)


# --------------------------------------------------------------------------- applications


def test_load_routing_from_folder_or_file(tmp_path: Path) -> None:
    _write(tmp_path, 1, None)
    for path in (tmp_path, tmp_path / "routing.yaml", str(tmp_path)):
        table = load_routing(path)
        assert table.phases == ("atomic", "extended")
        assert table.for_phase("atomic").fallbacks == ("claude-haiku",)
        assert table.for_phase("extended").model == "claude-haiku"
    with pytest.raises(KeyError) as err:
        load_routing(tmp_path).for_phase("nope")
    assert "no route for phase 'nope'; phases: atomic, extended" in str(err.value)
    with pytest.raises(FilesError, match="not found"):
        load_routing(tmp_path / "missing")


def test_git_commit_outside_a_repository_is_none(tmp_path: Path) -> None:
    try:
        probe = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, check=False
        )
    except OSError:
        probe = subprocess.CompletedProcess([], 1)
    if probe.returncode == 0:
        pytest.skip("the temporary folder is inside a git repository")
    assert git_commit(tmp_path / "not" / "there") is None


def test_git_commit_inside_a_repository(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
        subprocess.run(
            ["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
            check=True,
            env=env,
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert git_commit(tmp_path / "baselines") == head


# --------------------------------------------------------------------------- properties

text = st.text(min_size=1, max_size=20)
scalar = st.one_of(
    text,
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
knob_name = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: (
        k not in ("model", "variant", "timeout_s", "retries", "isolation", "warmup", "spec_id")
    )
)
specs = st.builds(
    Spec,
    model=text.filter(lambda s: s.strip() != ""),
    variant=text.filter(lambda s: s.strip() != ""),
    timeout_s=st.floats(min_value=1e-6, max_value=1e6),
    retries=st.integers(0, 10),
    isolation=st.sampled_from(["i0", "i1"]),
    warmup=st.booleans(),
    extra=st.dictionaries(knob_name, scalar, max_size=3).map(lambda d: tuple(d.items())),
)
metric_value = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(0, 10**9))
metrics_st = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"runs": st.integers(0, 100), "median": st.floats(0, 1), "variance": st.floats(0, 1)},
        optional={"restraint": st.one_of(st.none(), st.floats(0, 1)), "cost": metric_value},
    ),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(text, st.tuples(specs, metrics_st, st.integers(0, 99), st.text()), max_size=3)
)
def test_random_specs_and_metrics_round_trip(data: dict[str, Any]) -> None:
    baselines = {p: PhaseBaseline(p, s, m, c, r) for p, (s, m, c, r) in data.items()}
    dumped = dump_baseline(baselines)
    back = parse_baseline(dumped, "baseline.yaml")
    assert set(back) == set(baselines)
    for phase, base in baselines.items():
        assert back[phase].spec == base.spec and back[phase].spec.id == base.spec.id
        assert back[phase].reason == base.reason
        assert back[phase].promoted_in_cycle == base.promoted_in_cycle
        if base.metrics is None:
            assert back[phase].metrics is None
        else:
            for key, value in base.metrics.items():
                got = back[phase].metrics[key]  # type: ignore[index]
                assert (got is None) == (value is None)
                if value is not None:
                    assert math.isclose(got, value, abs_tol=5e-5)
    assert dump_baseline(back) == dumped
    routes = {
        p: Route(p, s, tuple(s.model for _ in range(c % 3))) for p, (s, _, c, _) in data.items()
    }
    assert parse_routing(dump_routing(routes), "routing.yaml") == routes


@given(st.text())
def test_any_string_survives_yaml(value: str) -> None:
    assert yaml.safe_load("k: " + yaml_str(value))["k"] == value
    assert "\n" not in yaml_str(value)


@given(st.floats(allow_nan=False))
def test_any_float_survives_yaml(value: float) -> None:
    assert yaml.safe_load("k: " + yaml_float(value))["k"] == value


def test_warnings_do_not_leak_from_clean_writes(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _write(tmp_path, 1, None)
