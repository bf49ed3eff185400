"""The committed files: deterministic, atomic, locked, validated (docs/architecture.md,
"Committed files"). The transaction under faults is tests/test_store_transaction.py."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from filesdata import BASE, baselines_of, entry_of, routes_of, snapshot, write

from pytest_selfopt.store.disk import sha256_of
from pytest_selfopt.store.files import git_commit, load_routing, read_state
from pytest_selfopt.store.formats import FilesError, dump_baseline, dump_routing
from pytest_selfopt.store.lock import CycleLock, LockedError
from pytest_selfopt.store.parse import parse_baseline
from pytest_selfopt.store.transaction import ConcurrentChangeError

# --------------------------------------------------------------------------- round trip


def test_round_trip_write_then_read_gives_the_same_state(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    changed = write(folder, 1, None, git_commit="a" * 40)
    assert [p.name for p in changed] == [
        "baseline.yaml",
        "routing.yaml",
        "history.json",
        "decisions.log",
    ]
    state = read_state(folder)
    assert state.baselines == baselines_of()
    assert state.routes == routes_of()
    assert state.history == [entry_of(1)]
    assert state.baseline_sha256 == sha256_of((folder / "baseline.yaml").read_bytes())
    assert set(state.sha256) == {"baseline.yaml", "routing.yaml", "history.json", "decisions.log"}
    assert state.log_records == 1 and state.notes == ()


def test_missing_folder_reads_as_empty_state(tmp_path: Path) -> None:
    state = read_state(tmp_path / "nope")
    assert (state.baselines, state.routes, state.history, state.baseline_sha256) == (
        {},
        {},
        [],
        None,
    )


# --------------------------------------------------------------------------- writing rules


def test_cycle_without_promotion_leaves_baseline_and_routing_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    old = 1_000_000_000_000_000_000
    for name in ("baseline.yaml", "routing.yaml"):
        os.utime(folder / name, ns=(old, old))
    before = snapshot(folder)
    state = read_state(folder)
    changed = write(folder, 2, state.baseline_sha256)
    assert [p.name for p in changed] == ["history.json", "decisions.log"]
    for name in ("baseline.yaml", "routing.yaml"):
        assert (folder / name).read_bytes() == before[name]
        assert (folder / name).stat().st_mtime_ns == old
    assert [e["cycle"] for e in read_state(folder).history] == [1, 2]
    assert read_state(folder).log_records == 2


def test_promotion_rewrites_baseline_and_routing(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    new = BASE.with_knob("variant", "atomic")
    changed = write(
        folder,
        2,
        read_state(folder).baseline_sha256,
        baselines=baselines_of(new),
        routes=routes_of(new),
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
        write(folder, 1, None)
        sha = read_state(folder).baseline_sha256
        if case == "modified":
            (folder / "baseline.yaml").write_text(dump_baseline({}))
        else:
            (folder / "baseline.yaml").unlink()
    before = snapshot(folder)
    with pytest.raises(ConcurrentChangeError) as err:
        write(folder, 2, sha, baselines=baselines_of(BASE.with_knob("retries", 3)))
    assert "baseline.yaml" in str(err.value) and "nothing was written" in str(err.value)
    assert ("was " + case) in str(err.value)
    assert snapshot(folder) == before


@pytest.mark.parametrize("name", ["routing.yaml", "history.json", "decisions.log"])
def test_a_hand_edit_of_any_committed_file_is_never_overwritten(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    state = read_state(folder)
    path = folder / name
    path.write_bytes(path.read_bytes() + b"\n" if name != "decisions.log" else path.read_bytes())
    if name == "decisions.log":
        path.write_bytes(path.read_bytes().replace(b'"HOLD"', b'"hold"'))
    before = snapshot(folder)
    with pytest.raises(ConcurrentChangeError) as err:
        write(folder, 2, None, expected=state, expected_baseline_sha256=None)
    assert str(err.value).startswith(str(path)) and "was modified" in str(err.value)
    assert snapshot(folder) == before


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
        before = snapshot(folder)
        with pytest.raises(LockedError) as err:
            write(folder, 1, None)
        assert str(err.value) == (
            f"baselines/ is locked by PID {owner.pid} (another selfopt cycle is running); "
            "nothing was written; wait for it to finish, or delete baselines/.selfopt.lock if "
            "that process is gone"
        )
        assert snapshot(folder) == before
    finally:
        owner.kill()
        owner.wait()


def test_lock_of_a_dead_process_is_broken_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (folder / ".selfopt.lock").write_text(f"{gone.pid}\n")
    lock = CycleLock(folder)
    note = lock.acquire()
    assert note is not None and f"broke a stale lock of PID {gone.pid}" in note
    assert len(write(folder, 1, None, lock=lock)) == 4
    lock.release()
    assert not (folder / ".selfopt.lock").exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    """A PID now running another process (its start time differs) does not hold the lock."""
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / ".selfopt.lock").write_text(f"{os.getpid()} 1\n")  # our PID, another start
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("process start times are read from /proc")
    assert "broke a stale lock" in (CycleLock(folder).acquire() or "")


def test_lock_without_pid_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / ".selfopt.lock").write_text("garbage")
    with pytest.raises(LockedError, match="holds no PID"):
        write(folder, 1, None)


def test_lock_is_held_during_the_write_and_released_after(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    seen: list[str] = []

    def spy(step: str) -> None:
        seen.append((folder / ".selfopt.lock").read_text().split()[0])

    write(folder, 1, None, on_step=spy)
    assert len(seen) > 4 and set(seen) == {str(os.getpid())}
    assert not (folder / ".selfopt.lock").exists()


def test_a_failed_write_leaves_the_old_files_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    assert sorted(p.name for p in folder.iterdir()) == [
        "baseline.yaml",
        "decisions.log",
        "history.json",
        "routing.yaml",
    ]
    before = snapshot(folder)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(FilesError, match="No space left on device.*nothing was changed"):
        write(
            folder,
            2,
            read_state(folder).baseline_sha256,
            baselines=baselines_of(BASE.with_knob("retries", 2)),
        )
    assert snapshot(folder) == before  # old content intact, temporaries removed, lock released


def test_written_files_keep_ordinary_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    assert (folder / "baseline.yaml").stat().st_mode & 0o777 == 0o644


def test_a_cut_off_log_is_refused_before_anything_is_appended(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "decisions.log").write_text('{"cycle":1,"phase":"a","event":"decision"}\n{"cyc')
    before = snapshot(folder)
    with pytest.raises(FilesError, match=r"decisions.log: line 2: cut short"):
        write(folder, 1, None)
    assert snapshot(folder) == before


# --------------------------------------------------------------------------- validation

GOOD = dump_baseline(baselines_of())


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
        (  # what to do about it: restore the file, or keep the edit
            lambda t: t.replace("variant: native_api", "variant: atomic", 1),
            "restore the file with `git checkout -- ",
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
    before = snapshot(folder)
    with pytest.raises(FilesError) as err:
        read_state(folder)
    assert message in str(err.value)
    assert str(err.value).startswith(str(folder / "baseline.yaml"))
    assert snapshot(folder) == before


def test_missing_spec_id_is_accepted_and_recomputed() -> None:
    text = GOOD.replace(f"    spec_id: {BASE.id}\n", "", 1)
    assert parse_baseline(text, "b") == baselines_of()
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
    (tmp_path / "routing.yaml").write_text(edit(dump_routing(routes_of())))
    with pytest.raises(FilesError, match="routing.yaml: ") as err:
        read_state(tmp_path)
    assert message in str(err.value)


def test_malformed_history_refuses_the_write_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    (folder / "history.json").write_text('{"version": 1, "cycles": [1]}')
    before = snapshot(folder)
    with pytest.raises(FilesError, match=r"history.json: cycles\[0\]: expected an object"):
        read_state(folder)
    with pytest.raises(FilesError, match="history.json"):
        write(
            folder,
            2,
            sha256_of(before["baseline.yaml"]),
            baselines=baselines_of(BASE.with_knob("retries", 5)),
        )
    assert snapshot(folder) == before
    (folder / "history.json").write_text("{nope")
    with pytest.raises(FilesError, match="history.json: not valid JSON") as raised:
        read_state(folder)
    assert "restore it with `git checkout -- " in str(raised.value)


def test_non_utf8_file_is_a_files_error(tmp_path: Path) -> None:
    (tmp_path / "baseline.yaml").write_bytes(b"version: 1\nphases: {\xff}\n")
    with pytest.raises(FilesError, match="baseline.yaml: not UTF-8"):
        read_state(tmp_path)


# --------------------------------------------------------------------------- applications


def test_load_routing_from_folder_or_file(tmp_path: Path) -> None:
    write(tmp_path, 1, None)
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


def test_warnings_do_not_leak_from_clean_writes(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write(tmp_path, 1, None)
