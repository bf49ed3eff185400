"""CI shards (``--selfopt-shard K/N`` + ``selfopt decide``) and xdist over ``--tx`` gateways.

N shards closed by ``selfopt decide`` must write the very files, print the very summary and
return the very exit status of one ``pytest --selfopt`` session with the same seed; any set of
shard files that is not exactly one plan's shards 1..N, each whole, is refused with one line
naming the file, and nothing is written (docs/ci.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from suites import copy_example, section
from test_plugin_session import make_suite

from pytest_selfopt.cli import decide as decide_cli
from pytest_selfopt.cli.main import main as selfopt

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
SHARDS_WORKFLOW = WORKFLOWS / "selfopt-shards.yml"
FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")


def committed(root: Path) -> dict[str, bytes]:
    folder = root / "baselines"
    return {n: (folder / n).read_bytes() for n in FILES if (folder / n).exists()}


def run_shards(
    pytester: pytest.Pytester, n: int, *args: str, folder: str = "shards", only: int = 0
) -> list[Path]:
    """Shards 1..N (or shard ``only`` of N), each its own session: their files."""
    paths = []
    for k in [only] if only else range(1, n + 1):
        path = pytester.path / folder / f"shard-{k}.jsonl"
        result = pytester.runpytest(
            "benchmarks", *args, f"--selfopt-shard={k}/{n}", f"--selfopt-samples={path}"
        )
        assert result.ret == 0, result.stdout.str()
        assert f"shard {k}/{n}: " in result.stdout.str()
        assert "nothing written to baselines/" in result.stdout.str()
        paths.append(path)
    return paths


def decide(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str], str]:
    """``selfopt decide ARGS``: (exit status, stdout lines, stderr)."""
    capsys.readouterr()
    status = selfopt(["decide", *map(str, args)])
    out, err = capsys.readouterr()
    return status, [line for line in out.splitlines() if line], err


@pytest.mark.slow  # one shard with xdist workers
def test_three_shards_decide_as_one_session_serially_and_with_xdist(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    make_suite(pytester)
    whole = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-report=whole.md")
    assert whole.ret == 0
    reference, summary = committed(pytester.path), section(whole.stdout.str())
    assert set(reference) == set(FILES)
    shutil.rmtree(pytester.path / "baselines")
    s1, s2, s3 = run_shards(pytester, 3, "--selfopt")
    # The same shard 2 with two xdist workers inside: either file closes the same cycle.
    [s2n] = run_shards(pytester, 3, "--selfopt", "-n", "2", folder="n2", only=2)
    assert not (pytester.path / "baselines").exists()
    for given in ([s1, s2, s3], [s3, s2n, s1]):
        status, lines, err = decide(capsys, *given, "--dry-run")
        assert status == 0 and not (pytester.path / "baselines").exists(), (given, err)
        assert "dry run" in "\n".join(lines)
        status, lines, err = decide(capsys, *given, "--report", "decided.md", "--json=out.json")
        assert status == 0, (given, err)
        assert len(json.loads((pytester.path / "out.json").read_text())["samples"]) == 18
        assert lines[0].startswith("selfopt decide: 3 shard(s) of cycle 1, 18 sample(s)")
        assert lines[1:] == summary, given
        assert committed(pytester.path) == reference, given  # decisions.log too (no git here)
        report = (pytester.path / "decided.md").read_text()
        assert report == (pytester.path / "whole.md").read_text(), given
        if given[0] == s1:
            shutil.rmtree(pytester.path / "baselines")

    # The committed files moved on: the same shards are another plan's now.
    status, lines, err = decide(capsys, "shards/*.jsonl")
    assert status == decide_cli.EXIT_REFUSED and not lines
    [line] = err.splitlines()
    assert "shards/shard-1.jsonl, shards/shard-2.jsonl, shards/shard-3.jsonl" in line
    assert "cycle 1 -> 2" in line and "baselines/history.json changed" in line
    assert line.endswith("nothing written")
    assert committed(pytester.path) == reference


def test_check_shards_decide_as_one_check(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    make_suite(pytester)
    assert pytester.runpytest("benchmarks", "--selfopt").ret == 0
    before = committed(pytester.path)
    whole = pytester.runpytest("benchmarks", "--selfopt-check")
    run_shards(pytester, 2, "--selfopt-check")
    status, lines, err = decide(capsys, *sorted((pytester.path / "shards").iterdir()))
    assert status == whole.ret == 0, err
    assert lines[1:] == section(whole.stdout.str())
    assert any(line.startswith("selfopt check") for line in lines)
    assert committed(pytester.path) == before


def test_refused_shard_sets_name_the_file_and_write_nothing(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    make_suite(pytester)
    s1, s2, s3 = run_shards(pytester, 3, "--selfopt")
    foreign = pytester.path / "shards" / "foreign-3.jsonl"
    result = pytester.runpytest(
        "benchmarks", "--selfopt", "--selfopt-seed=5", "--selfopt-shard=3/3",
        f"--selfopt-samples={foreign}",
    )  # fmt: skip
    assert result.ret == 0
    copy = pytester.path / "copy-of-2.jsonl"
    shutil.copy(s2, copy)
    cut = pytester.path / "cut-2.jsonl"
    cut.write_text("".join(s2.read_text().splitlines(keepends=True)[:-1]))
    half = pytester.path / "half-2.jsonl"
    half.write_bytes(s2.read_bytes()[: s2.stat().st_size // 2])
    lost = pytester.path / "lost-2.jsonl"  # one sample line less, and a matching end line
    lines = s2.read_text().splitlines(keepends=True)
    lost.write_text("".join([*lines[:1], *lines[2:-1], json.dumps({"end": len(lines) - 4}) + "\n"]))
    other = pytester.path / "of-2.jsonl"  # shard 1 of another split
    other.write_text(s1.read_text().replace('"shard": "1/3"', '"shard": "1/2"', 1))

    cases: list[tuple[list[Path | str], str, str]] = [
        ([s1, s3], "shard 2/3: no file", "--selfopt-shard 2/3"),
        ([s1, s2, s3, copy], "copy-of-2.jsonl: shard 2/3 again (also shards/shard-2.jsonl)", ""),
        ([s1, s2, foreign], "shards/foreign-3.jsonl: shard 3/3 belongs to another plan", "seed"),
        ([s1, cut, s3], "cut-2.jsonl: truncated (no end line): shard 2/3", ""),
        ([s1, half, s3], "half-2.jsonl: truncated (no end line)", ""),
        ([s1, s2, s3, other], "of-2.jsonl: shard 1/2, the other files are shards of 3", ""),
        (["shards/none-*.jsonl", s1, s2, s3], "shards/none-*.jsonl: matches no file", ""),
        ([s1, lost, s3], "lost-2.jsonl: shard 2/3: phase facts: 1 sample(s) missing", "case"),
    ]  # fmt: skip
    for paths, said, also in cases:
        status, lines, err = decide(capsys, *paths)
        assert status == decide_cli.EXIT_REFUSED, (paths, lines, err)
        [line] = err.splitlines()
        assert line.startswith("selfopt decide: ") and said in line and also in line, line
        assert line.endswith("; nothing written")
        assert not lines and not (pytester.path / "baselines").exists()

    # A failed shard is re-run alone; its new file takes the old one's place.
    rerun = pytester.path / "rerun" / "shard-2-again.jsonl"
    result = pytester.runpytest(
        "benchmarks", "--selfopt", "--selfopt-shard=2/3", f"--selfopt-samples={rerun}"
    )
    assert result.ret == 0
    status, lines, err = decide(capsys, s1, rerun, s3)
    assert status == 0, err
    assert set(committed(pytester.path)) == set(FILES)


@pytest.mark.slow  # two sessions with xdist workers
@pytest.mark.parametrize("race", [[], ["--selfopt-race-after=2"]], ids=["plain", "racing"])
def test_tx_gateways_elsewhere_write_the_files_of_n2(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, race: list[str]
) -> None:
    """Workers started by ``--tx 2*popen//chdir=DIR`` run from a copy of the rootdir in a
    folder unrelated to it (xdist copies the rsync roots there): everything they need comes
    over xdist's channel (racing included), nothing through a path on the controller's disk."""
    make_suite(pytester)
    assert pytester.runpytest("benchmarks", "--selfopt", "-n", "2", *race).ret == 0
    reference = committed(pytester.path)
    shutil.rmtree(pytester.path / "baselines")
    elsewhere = tmp_path_factory.mktemp("gateways")
    result = pytester.runpytest(
        str(pytester.path / "benchmarks"),  # xdist makes arguments relative to a root it copies
        "--selfopt",
        "--dist=load",
        f"--tx=2*popen//chdir={elsewhere}",
        f"--rsyncdir={pytester.path}",
        "-W", "ignore::DeprecationWarning",
        *race,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    assert (elsewhere / pytester.path.name / "benchmarks" / "test_facts.py").exists()
    assert committed(pytester.path) == reference


def test_a_shard_file_reads_back_whole_with_its_unjudged_functions(tmp_path: Path) -> None:
    """A function is unjudged in a shard file only when none of its samples there judged."""
    from pytest_selfopt.loop.types import Sample
    from pytest_selfopt.plugin.shard import Shard, read_shard, write_shard
    from pytest_selfopt.store.journal import Entry, Identity

    identity = Identity("c", {"baseline.yaml": None}, seed=3, cycle=1, runs=1, plan="p")
    samples = [
        Sample("facts", "s", case, 1, passed, None, 0.5, 0.5, 1, None if passed else "timeout")
        for case, passed in (("a", True), ("b", False))
    ]
    entries = [Entry(samples[0], "t.py::judged", False), Entry(samples[1], "t.py::asks", False)]
    path = tmp_path / "deep" / "s.jsonl"
    write_shard(
        path, identity, Shard(2, 3), entries, skipped=[("facts", "s", "c", 1)],
        unjudged={"t.py::asks": 1}, check=False,
    )  # fmt: skip
    back = read_shard(path)
    assert (back.identity, back.shard, back.check) == (identity, Shard(2, 3), False)
    assert [(e.sample, e.nodeid, e.unjudged) for e in back.entries] == [
        (samples[0], "t.py::judged", False),
        (samples[1], "t.py::asks", True),
    ]
    assert back.skipped == (("facts", "s", "c", 1),)
    assert [p.name for p in path.parent.iterdir()] == ["s.jsonl"]  # no temporary file left


# -- the CI recipe ------------------------------------------------------------------------------


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def test_workflow_files_validate_against_the_github_schema() -> None:
    """The schema ships inside check-jsonschema (vendored): no network needed. One process
    checks every file (each start costs a second); its output names the failing file."""
    pytest.importorskip("check_jsonschema")
    paths = workflow_files()
    assert SHARDS_WORKFLOW in paths
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         *map(str, paths)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def shards_workflow() -> dict[str, Any]:
    data = yaml.safe_load(SHARDS_WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def commands(job: dict[str, Any]) -> list[str]:
    return [str(step["run"]).strip() for step in job["steps"] if "run" in step]


def test_shards_workflow_runs_a_matrix_then_decides_and_proposes() -> None:
    jobs = shards_workflow()["jobs"]
    shard, close = jobs["shard"], jobs["decide"]
    assert close["needs"] == "shard"
    assert shard["strategy"]["fail-fast"] is False
    assert shard["strategy"]["matrix"]["shard"] == [1, 2, 3]
    [run] = [c for c in commands(shard) if c.startswith("pytest ")]
    assert "--selfopt-shard ${{ matrix.shard }}/${{ strategy.job-total }}" in run
    assert "--selfopt-samples=samples/shard-${{ matrix.shard }}.jsonl" in run
    uploads = [s for s in shard["steps"] if str(s.get("uses", "")).startswith("actions/upload")]
    assert uploads and uploads[0]["with"]["path"] == "samples/shard-${{ matrix.shard }}.jsonl"
    used = [str(s.get("uses", "")) for s in close["steps"]]
    assert any(u.startswith("actions/download-artifact@") for u in used)
    assert used[-1].startswith("peter-evans/create-pull-request@")
    assert any(c.startswith("selfopt decide ") for c in commands(close))
    assert close["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert shard["permissions"] == {"contents": "read"}


def test_docs_show_the_shards_workflow_as_it_is() -> None:
    doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:]]
    assert SHARDS_WORKFLOW.read_text(encoding="utf-8") in blocks
    assert "selfopt decide 'samples/*.jsonl'" in doc


@pytest.mark.slow
def test_the_example_in_three_shards_writes_the_files_of_one_session(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's example suite, the matrix size and commands of the shards workflow.

    One session on two xdist workers, then the workflow's N shards: shard 2 with two xdist
    workers inside, the others serially. Closed together they print and write what the xdist
    session did: neither the split nor the worker count changes the cycle (the inline suite
    above shows the same against a serial session)."""
    copy_example(pytester)
    whole = pytester.runpytest("benchmarks", "--selfopt", "-n", "2")
    assert whole.ret == 0
    reference, summary = committed(pytester.path), section(whole.stdout.str())
    assert set(reference) == set(FILES)
    shutil.rmtree(pytester.path / "baselines")
    n = len(shards_workflow()["jobs"]["shard"]["strategy"]["matrix"]["shard"])
    assert n >= 2  # shard 2 is the one with workers
    for k in range(1, n + 1):
        run_shards(pytester, n, "--selfopt", *(["-n", "2"] if k == 2 else []), only=k)
    status, lines, err = decide(capsys, "shards/*.jsonl")
    assert status == 0, err
    assert lines[0].startswith(f"selfopt decide: {n} shard(s) of cycle 1, 420 sample(s)")
    assert lines[1:] == summary
    assert committed(pytester.path) == reference
