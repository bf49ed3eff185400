"""The ``selfopt`` command finds the rootdir, the ini file, ``testpaths`` and the ``selfopt_*``
ini keys exactly as pytest does (issue 15.1): it asks pytest, it does not guess."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_selfopt.cli import main as cli
from pytest_selfopt.cli import probe
from pytest_selfopt.cli.pytestsetup import pytest_setup
from pytest_selfopt.store.formats import dump_history

SUITE = "initial: {}\n"  # only its location matters here; nothing loads it


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer session's PYTEST_ADDOPTS must not reach the Config built in-process."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


def _history(folder: Path, cycles: Sequence[int], median: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "cycle": c,
            "phases": {
                "atomic": {
                    "measured_baseline": {"median": median},
                    "baseline_after": {"spec_id": "b", "spec": {}, "metrics": {"median": median}},
                    "winner": None,
                    "candidates": [],
                }
            },
            "pending": [],
        }
        for c in cycles
    ]
    (folder / "history.json").write_text(dump_history(entries), encoding="utf-8")


def _pyproject(root: Path, **keys: str) -> None:
    lines = ["[tool.pytest.ini_options]", *(f"{k} = {v}" for k, v in keys.items())]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- report


def test_report_reads_the_folder_the_ini_configures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _pyproject(tmp_path, selfopt_baselines='"out2/baselines"')
    _history(tmp_path / "out2" / "baselines", [1, 2, 3], 0.75)
    _history(tmp_path / "baselines", [1], 0.25)  # another folder's history: never shown
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # pytest finds the ini upward; so must the command
    assert cli.main(["report"]) == 0
    out, err = capsys.readouterr()
    assert "0.750 -> 0.750 -> 0.750 -> 0.750" in out
    assert "0.250" not in out
    assert "last cycle 3:" in out
    assert err == ""  # an ini file was found: nothing to warn about


def test_report_without_an_ini_file_warns_which_folder_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _history(tmp_path / "baselines", [1], 0.5)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report"]) == 0
    out, err = capsys.readouterr()
    assert "last cycle 1:" in out
    (warning,) = err.splitlines()
    assert warning.startswith("selfopt report: warning: no pytest ini file found from ")
    assert f"committed files in {tmp_path.resolve() / 'baselines'}" in warning


def test_report_why_uses_the_ini_folder_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nselfopt_baselines = audit\n")
    (tmp_path / "audit").mkdir()
    record = '{"cycle": 1, "phase": "atomic", "event": "recommend", "label": "x", "detail": {}}'
    (tmp_path / "audit" / "decisions.log").write_text(record + "\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--why", "atomic"]) == 0
    out = capsys.readouterr().out
    assert f"(from {tmp_path.resolve() / 'audit' / 'decisions.log'})" in out


def test_a_broken_ini_is_one_line_and_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options\nbroken")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report"]) == 4
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"selfopt report: pytest could not read its configuration in {tmp_path}")
    assert "pyproject.toml" in line


# --------------------------------------------------------------------------- loop


def _fake_pytest(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the pytest commands ``selfopt loop`` starts; each one "fails" with status 3."""
    seen: list[list[str]] = []

    def run(command: Sequence[str], cwd: Path, env: Any = None) -> subprocess.CompletedProcess[str]:
        seen.append(list(command))
        return subprocess.CompletedProcess(command, 3, "", "")

    monkeypatch.setattr(cli, "run_pytest", run)
    return seen


def test_loop_leaves_testpaths_to_pytest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _pyproject(tmp_path, testpaths='["evals"]', selfopt_config='"evals/selfopt.yaml"')
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "selfopt.yaml").write_text(SUITE)
    seen = _fake_pytest(monkeypatch)
    assert cli.main(["loop", "--fresh", str(tmp_path / "out"), "--rootdir", str(tmp_path)]) == 3
    (command,) = seen
    assert "benchmarks" not in command  # the old default: "file or directory not found"
    out = tmp_path.resolve() / "out"
    assert command[-1] == f"--override-ini=selfopt_baselines={out}"  # no path: testpaths
    assert "stopped: cycle 1 failed with exit status 3" in capsys.readouterr().out


def test_loop_runs_the_suite_folder_when_testpaths_are_unit_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pyproject(tmp_path, testpaths='["tests"]', selfopt_config='"bench/selfopt.yaml"')
    (tmp_path / "tests").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "selfopt.yaml").write_text(SUITE)
    seen = _fake_pytest(monkeypatch)
    assert cli.main(["loop", "--fresh", str(tmp_path / "out"), "--rootdir", str(tmp_path)]) == 3
    assert seen[0][-1] == "bench"


def test_loop_passes_the_users_arguments_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evals").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "selfopt.yaml").write_text(SUITE)
    seen = _fake_pytest(monkeypatch)
    code = cli.main(["loop", "--fresh", str(tmp_path / "o"), "--rootdir", str(tmp_path), "--",
                     "-k", "atomic", "evals"])  # fmt: skip
    assert code == 3
    assert seen[0][-3:] == ["-k", "atomic", "evals"]  # a folder named: nothing added


def test_loop_with_options_only_still_runs_the_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "selfopt.yaml").write_text(SUITE)
    seen = _fake_pytest(monkeypatch)
    code = cli.main(["loop", "--fresh", str(tmp_path / "o"), "--rootdir", str(tmp_path), "--",
                     "-n", "2"])  # fmt: skip
    assert code == 3
    assert seen[0][-3:] == ["-n", "2", "benchmarks"]


@pytest.mark.parametrize(
    ("ini", "config", "expected"),
    [
        ("testpaths = tests", "benchmarks/selfopt.yaml", ["benchmarks"]),  # like this repo
        ("testpaths = evals", "selfopt.yaml", []),  # config in the rootdir: testpaths apply
        ("testpaths = evals\nselfopt_config = evals/s.yaml", "evals/s.yaml", []),
        ("", "benchmarks/selfopt.yaml", ["benchmarks"]),  # no testpaths: not the whole folder
        (None, "benchmarks/selfopt.yaml", ["benchmarks"]),  # no ini file at all
        ("testpaths = evals", None, []),  # no suite config: pytest's choice, and a note
    ],
)
def test_default_pytest_arguments(
    tmp_path: Path, ini: str | None, config: str | None, expected: list[str]
) -> None:
    if ini is not None:
        (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    if config is not None:
        (tmp_path / config).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / config).write_text(SUITE)
    for folder in ("tests", "evals"):
        (tmp_path / folder).mkdir(exist_ok=True)
    setup = pytest_setup(tmp_path)
    assert setup.rootdir == tmp_path.resolve()
    assert setup.default_args() == expected
    assert (setup.suite_config is None) == (config is None)
    notes = setup.notes()
    assert any("no pytest ini file" in n for n in notes) == (ini is None)
    assert any("no suite config found" in n for n in notes) == (config is None)


def test_setup_matches_pytest_from_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / "tox.ini").write_text("[pytest]\nselfopt_baselines = committed\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    setup = pytest_setup(tmp_path / "a" / "b")
    assert setup.rootdir == tmp_path.resolve()
    assert setup.inifile == (tmp_path / "tox.ini").resolve()
    assert setup.baselines == tmp_path.resolve() / "committed"
    assert not setup.from_testpaths  # pytest ignores testpaths outside the rootdir


@pytest.mark.parametrize("module", [cli, probe])
def test_the_cli_modules_are_valid_pytest_plugins(module: ModuleType) -> None:
    """``selfopt loop`` loads its probe with ``-p``; a module-level name starting with
    ``pytest_`` that is no hook (an imported ``pytest_setup``) made that session fail."""
    manager = pytest.PytestPluginManager()
    manager.register(module)
    manager.check_pending()
