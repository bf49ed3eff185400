"""Every malformed input of the corpus (tests/hostile/), put in place of each file the plugin
reads, ends in one named line: no traceback, nothing written, bounded memory (issue 12).

Most entries go through the plugin's own loaders in-process (``orchestrate.prepare`` reads the
suite config and all four committed files exactly as a session does; ``load_cases`` reads the
cases files); every ConfigError/FilesError there is exit 4 in a session. A few pytester
sessions prove that mapping end to end. Each load's CPU time and memory growth are measured
in its child; with ``SELFOPT_HOSTILE_FIGURES=PATH`` they are appended to PATH (JSON lines) for
docs/reliability.md. Whole processes are measured by scripts/hostile_probe.py.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from hostile.corpus import PWNED, TARGETS, Entry, corpus

from pytest_selfopt.plugin.orchestrate import prepare
from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.suite.cases import load_cases
from pytest_selfopt.suite.yamlread import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEED = Path(__file__).resolve().parent / "hostile" / "seed"
#: Refused by the plugin itself, not by a loader (the policy registry is the plugin's).
PLUGIN_LEVEL = {"suite/policy-unknown"}
MAX_GROWTH = 300 * 1024 * 1024  # address space a load may add
HANG_S = 60  # not a timing assertion: only turns a hang (an alias bomb) into a failure


def _valid(target: str) -> bytes:
    path = TARGETS[target].path
    if path.startswith("baselines/"):
        return (SEED / Path(path).name).read_bytes()
    return (REPO / path).read_bytes()


ENTRIES = [e for target in TARGETS for e in corpus(target, _valid(target))]


def _example(root: Path) -> Path:
    shutil.copytree(
        REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(SEED, root / "baselines")
    return root


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.iterdir()):
        out[p.name] = "link" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


def _load(root: Path) -> None:
    """What a session reads before it runs anything: config, committed files, cases."""
    prepare(root / "benchmarks" / "selfopt.yaml", root / "baselines", selfopt=True)
    for name in ("atomic.yaml", "extended.yaml"):
        load_cases(root / "benchmarks" / name)


def _hang(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"still loading after {HANG_S} s")


@pytest.fixture
def no_hang() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_seed_is_one_clean_cycle_of_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus is built from these files: they must load (else: tests/hostile/make_seed.py)."""
    monkeypatch.chdir(_example(tmp_path))
    _load(tmp_path)


def test_the_corpus_has_50_malformed_entries_per_file_each_unlike_the_valid_one() -> None:
    for target in TARGETS:
        mine = [e for e in ENTRIES if e.target == target]
        assert sum(not e.tolerated for e in mine) >= 50, target
        valid = _valid(target)
        same = [e.id for e in mine if not e.special and not e.big and e.data == valid]
        assert same == [], "these mutations no longer change the file"


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in kB (Linux), 0 where unknown."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"{field}:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def _vm_size() -> int:
    """This process's address space in bytes (Linux), 0 where unknown."""
    return _status_kb("VmSize") * 1024


def _load_in_child(root: Path) -> tuple[str, str, dict[str, float]]:
    """``_load`` in a forked child whose address space may grow by MAX_GROWTH at most (an
    allocation beyond fails there, not here) and which may take HANG_S at most.

    Returns ("ok", ""), ("named", message) or ("crash", what escaped), and the child's
    figures: CPU seconds and peak resident memory above what it had at the fork, in MB."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and exits
        code = 0
        try:
            os.close(read)
            rss_at_fork = _status_kb("VmRSS")
            if _vm_size():
                limit = _vm_size() + MAX_GROWTH
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
            signal.signal(signal.SIGALRM, _hang)
            signal.alarm(HANG_S)
            try:
                _load(root)
                out = ["ok", ""]
            except (ConfigError, FilesError) as exc:
                out = ["named", str(exc)]
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                out = ["crash", f"{type(exc).__name__}: {str(exc)[:2000]}"]
            peak = _status_kb("VmHWM")
            out.append(str(max(peak - rss_at_fork, 0) / 1024) if peak and rss_at_fork else "")
            os.write(write, json.dumps(out).encode())
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, _, usage = os.wait4(pid, 0)
    kind, message, *rest = json.loads(data or b'["crash", "the child died without a report"]')
    figures = {"cpu_s": usage.ru_utime + usage.ru_stime}
    if rest and rest[0]:
        figures["rss_growth_mb"] = float(rest[0])
    return kind, message, figures


@pytest.mark.skipif(not hasattr(os, "fork"), reason="each load runs in a forked child")
@pytest.mark.parametrize(
    "entry", [pytest.param(e, id=e.id, marks=[pytest.mark.slow] * e.big) for e in ENTRIES]
)
def test_entry_ends_in_one_named_line_and_nothing_is_written(
    entry: Entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _example(tmp_path)
    monkeypatch.chdir(root)
    entry.install(root)
    before = _snapshot(root / "baselines")
    kind, message, figures = _load_in_child(root)
    if record := os.environ.get("SELFOPT_HOSTILE_FIGURES"):
        with open(record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": entry.id, "kind": kind, **figures}) + "\n")
    assert _snapshot(root / "baselines") == before
    assert not Path(PWNED).exists()
    assert kind != "crash", message
    if kind == "ok":
        assert entry.tolerated or entry.id in PLUGIN_LEVEL, "accepted a malformed file"
        return
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(TARGETS[entry.target].path + ":"), message


SESSIONS = [
    "suite/file-alias-bomb",
    "suite/deep-map-at-key",
    "suite/runs-100000",
    "suite/policy-unknown",
    "cases/regex-redos",
    "cases/deep-list",
    "baseline/file-comment-only",
    "routing/file-null",
    "history/utf16-le-bom",
    "history/duplicate-cycle",
    "log/torn-last-line",
    "log/recursive-alias-at-key",
]


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("entry", [pytest.param(e, id=e.id) for e in ENTRIES if e.id in SESSIONS])
def test_a_session_exits_4_naming_the_file_without_traceback(
    entry: Entry, pytester: pytest.Pytester
) -> None:
    _example(pytester.path)
    entry.install(pytester.path)
    before = _snapshot(pytester.path / "baselines")
    result = pytester.runpytest("benchmarks", "--selfopt", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output[-2000:]
    assert TARGETS[entry.target].path in output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert _snapshot(pytester.path / "baselines") == before


def test_sessions_cover_every_file() -> None:
    assert {s.split("/")[0] for s in SESSIONS} == set(TARGETS)
    assert len([e for e in ENTRIES if e.id in SESSIONS]) == len(SESSIONS)
