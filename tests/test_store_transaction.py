"""The four committed files as one transaction, under kills, signals and concurrent starts.

A kill is simulated by ``os._exit`` at each step of the commit in a forked child (no
``finally`` runs, as with SIGKILL); the next read must find the folder entirely the old
cycle's or entirely the new one's, with no temporary left, and say in one line what it did.
Long runs with real signals at random moments are ``scripts/faults.py`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from filesdata import BASE, baselines_of, routes_of, snapshot, write

from pytest_selfopt.store import files
from pytest_selfopt.store.files import read_state, repair
from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.store.lock import CycleLock, LockedError
from pytest_selfopt.store.transaction import JOURNAL, TEMP_PREFIX

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills are simulated with fork")

COMMITTED = ["baseline.yaml", "decisions.log", "history.json", "routing.yaml"]
PROMOTED = BASE.with_knob("variant", "atomic")


def _second_cycle(folder: Path, **kw: Any) -> list[Path]:
    """Cycle 2 promotes a new atomic spec: all four files change."""
    return write(
        folder,
        2,
        None,
        expected=read_state(folder),
        baselines=baselines_of(PROMOTED),
        routes=routes_of(PROMOTED),
        **kw,
    )


def _steps(tmp_path: Path) -> tuple[list[str], dict[str, bytes], dict[str, bytes]]:
    """The commit's step names, and the folder before and after an uninterrupted cycle 2."""
    folder = tmp_path / "reference"
    write(folder, 1, None)
    old = snapshot(folder)
    seen: list[str] = []
    _second_cycle(folder, on_step=seen.append)
    return seen, old, snapshot(folder)


def _killed_at(folder: Path, step: str) -> int:
    """Run cycle 2 in a forked child that dies (os._exit, no cleanup) right after ``step``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:

            def kill(name: str) -> None:
                if name == step:
                    os._exit(137)

            _second_cycle(folder, on_step=kill)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_commit_has_the_documented_steps(tmp_path: Path) -> None:
    steps, old, new = _steps(tmp_path)
    assert steps == [
        "checked",
        *(f"temp:{n}" for n in ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")),
        "journal-written",
        "committed",
        *(
            f"replaced:{n}"
            for n in ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
        ),
        "done",
    ]
    assert all(old[n] != new[n] for n in COMMITTED)


def test_a_kill_at_every_step_leaves_old_or_new_never_mixed_and_no_leftovers(
    tmp_path: Path,
) -> None:
    steps, old, new = _steps(tmp_path)
    for step in steps:
        folder = tmp_path / step.replace(":", "-")
        write(folder, 1, None)
        assert _killed_at(folder, step) == 137
        committed = steps.index(step) >= steps.index("committed")
        if step != "done":
            assert any(p.name.startswith(".selfopt") for p in folder.iterdir()), step
        state = read_state(folder)  # the next start repairs, then reads
        after = snapshot(folder)
        assert sorted(after) == COMMITTED, step  # no temporary, no journal, no lock
        assert after == (new if committed else old), step
        (note,) = state.notes
        assert "broke a stale lock of PID" in note and "\n" not in note
        if step in ("checked", "done"):
            assert ";" not in note  # the commit had not begun, or had finished
        elif committed:
            assert "completed the write of cycle 2" in note
        else:
            assert "removed" in note and "previous cycle's, unchanged" in note
        assert [e["cycle"] for e in state.history] == ([1, 2] if committed else [1])


def test_interrupt_signals_are_held_until_the_commit_is_done(tmp_path: Path) -> None:
    """A Ctrl-C (or SIGTERM) landing mid-commit takes effect after it, never inside."""
    steps, _, new = _steps(tmp_path)
    for sig in (signal.SIGINT, signal.SIGTERM):
        folder = tmp_path / sig.name
        write(folder, 1, None)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            seen: list[str] = []
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                # another thread the kernel may hand the signal to (numpy, a thread pool)
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start()

                def interrupt(name: str) -> None:
                    seen.append(name)
                    if name == "temp:routing.yaml":
                        os.kill(os.getpid(), sig)

                _second_cycle(folder, on_step=interrupt)
            except KeyboardInterrupt:
                code = 0 if seen == steps else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, sig.name
        assert snapshot(folder) == new


def test_a_partial_temporary_without_journal_is_rolled_back(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    old = snapshot(folder)
    (folder / (TEMP_PREFIX + "baseline.yaml")).write_bytes(b"version: 1\nphas")
    (folder / ".baseline.yaml.k3j2l1.tmp").write_bytes(b"from an older version")
    state = read_state(folder)
    assert state.notes == (
        f"{folder}/: removed 2 temporary file(s) of a write that was interrupted before it "
        "committed; the committed files are the previous cycle's, unchanged",
    )
    assert snapshot(folder) == old


def test_a_journal_whose_new_file_is_gone_is_refused_not_guessed(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    journal = {
        "version": 1,
        "cycle": 2,
        "files": [{"name": "baseline.yaml", "old": "x", "new": "y"}],
    }
    (folder / JOURNAL).write_text(json.dumps(journal))
    with pytest.raises(FilesError, match="baseline.yaml: an interrupted write cannot be completed"):
        read_state(folder)
    (folder / JOURNAL).write_text("{not json")
    with pytest.raises(FilesError, match="not a journal this plugin wrote"):
        read_state(folder)


def test_a_reader_waits_for_a_live_writer_and_never_repairs_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    (folder / (TEMP_PREFIX + "history.json")).write_text("{}")
    monkeypatch.setattr(files, "RECOVERY_WAIT_S", 0.2)
    with CycleLock(folder):  # a live writer (this process) in the middle of its commit
        with pytest.raises(LockedError, match="is locked by PID"):
            repair(folder)
        assert (folder / (TEMP_PREFIX + "history.json")).exists()
    assert repair(folder) is not None
    assert sorted(snapshot(folder)) == COMMITTED


def test_a_cycle_holding_the_lock_repairs_under_it(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    (folder / (TEMP_PREFIX + "history.json")).write_text("{}")
    with CycleLock(folder) as lock:
        state = read_state(folder, lock=lock)
        assert len(state.notes) == 1
        assert len(_second_cycle(folder, lock=lock)) == 4
        assert (folder / ".selfopt.lock").exists()
    assert sorted(snapshot(folder)) == COMMITTED


CONTENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from filesdata import write
    from pytest_selfopt.store.files import read_state
    from pytest_selfopt.store.lock import CycleLock, LockedError

    folder, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    lock = CycleLock(folder)
    try:
        lock.acquire()
    except LockedError as exc:
        print(exc)
        sys.exit(4)
    try:
        state = read_state(folder, lock=lock)
        time.sleep(0.3)  # the cycle's model calls
        cycle = len(state.history) + 1
        write(folder, cycle, None, expected=state, lock=lock)
    finally:
        lock.release()
    """
)


def test_two_concurrent_cycles_exactly_one_writes(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    script = tmp_path / "contender.py"
    script.write_text(CONTENDER.format(tests=str(Path(__file__).parent)))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(folder), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 4], results
    loser = next(out for code, out, _ in results if code == 4)
    assert loser.count("\n") == 1 and "is locked by PID" in loser
    state = read_state(folder)
    assert [e["cycle"] for e in state.history] == [1, 2]
    assert state.log_records == 2
    assert sorted(snapshot(folder)) == COMMITTED


def test_a_copy_of_a_repaired_folder_is_stable(tmp_path: Path) -> None:
    """Repairing twice changes nothing the second time (idempotent, no note)."""
    steps, _, new = _steps(tmp_path)
    folder = tmp_path / "b"
    write(folder, 1, None)
    _killed_at(folder, "replaced:routing.yaml")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert read_state(copy).notes and read_state(copy).notes == ()
    assert snapshot(copy) == new


def test_a_cycle_number_already_recorded_is_refused_even_without_expected_state(
    tmp_path: Path,
) -> None:
    """Callers that compare baseline.yaml only still cannot write a cycle twice."""
    folder = tmp_path / "baselines"
    write(folder, 1, None)
    before = snapshot(folder)
    sha = read_state(folder).baseline_sha256
    with pytest.raises(FilesError, match=r"history.json: cycle 1 is already recorded"):
        write(folder, 1, sha)
    assert snapshot(folder) == before
