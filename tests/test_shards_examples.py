"""CI shards on the repository's noisy example, and the shard files ``selfopt decide`` refuses.

``tests/test_shards.py`` shows N shards + ``selfopt decide`` writing one session's files on an
inline suite and on ``benchmarks/``; here the same on ``benchmarks/noisy`` (three phases,
transport errors, fallbacks, a declared knob, the ``paired`` policy), in-process and on 3 runs
instead of 7 so that it costs seconds. ``scripts/shards_check.py`` does it by hand on all three
example suites at full size, in fresh processes (docs/ci.md, "Measured on the example").

The refusals complete test_shards.py's list: a shard of another config, of another cycle, a
sample line lost before an intact end line, and a check shard among cycle shards, each named
in one line with nothing written (docs/ci.md, "One cycle over many machines: shards").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from suites import EXAMPLE, FILES, run, section
from test_plugin_session import make_suite

from pytest_selfopt.cli import decide as decide_cli
from pytest_selfopt.cli.main import main as selfopt

NOISY = "noisy"  # the copy's folder: its own pytest root (benchmarks/noisy/pytest.ini)
RUNS = "--selfopt-runs=3"  # the gates' min_samples: the smallest run count that decides


def copy_noisy(pytester: pytest.Pytester) -> Path:
    """``benchmarks/noisy`` without committed files, as ``pytester.path/noisy``."""
    target = pytester.path / NOISY
    ignore = shutil.ignore_patterns("baselines", "__pycache__", ".pytest_cache")
    shutil.copytree(EXAMPLE / "noisy", target, ignore=ignore)
    return target


def committed(pytester: pytest.Pytester) -> dict[str, bytes]:
    folder = pytester.path / NOISY / "baselines"
    return {n: (folder / n).read_bytes() for n in FILES if (folder / n).exists()}


def shard(pytester: pytest.Pytester, k: int, n: int, path: Path, *args: str) -> None:
    """Shard K/N of the noisy suite's cycle, its samples to ``path`` (a fresh process each:
    :func:`suites.run` starts the simulated cold starts over)."""
    result = run(pytester, NOISY, "--selfopt", RUNS, f"--selfopt-shard={k}/{n}",
                 f"--selfopt-samples={path}", *args)  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    assert "nothing written to baselines/" in result.stdout.str()
    # a shard decides nothing: its closing line must not point at decisions
    assert "(data, not errors: `selfopt decide` counts them)" in result.stdout.str()


def decide(
    capsys: pytest.CaptureFixture[str], *args: str | Path, rootdir: str = NOISY
) -> tuple[int, list[str], str]:
    """``selfopt decide ARGS --rootdir DIR``: (exit status, stdout lines, stderr)."""
    capsys.readouterr()
    status = selfopt(["decide", *map(str, args), "--rootdir", rootdir])
    out, err = capsys.readouterr()
    return status, [line for line in out.splitlines() if line], err


def test_noisy_example_in_three_shards_writes_the_files_of_one_session(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two cycles, serially; the second measures ``cloud``, whose simulated cold start a
    session meets once and three shards (three processes) would meet three times if it were
    per process: it is a function of case and run. ``-n 2`` inside each shard is
    test_shards.py's (inline suite, and the main example); scripts/shards_check.py checks
    both modes on this suite at full size over 4 cycles."""
    copy_noisy(pytester)
    folder = pytester.path / NOISY / "baselines"
    before: dict[str, bytes] = {}
    for cycle in (1, 2):
        whole = run(pytester, NOISY, "--selfopt", RUNS, f"--selfopt-report=whole-{cycle}.md")
        assert whole.ret == 0, whole.stdout.str()
        reference, summary = committed(pytester), section(whole.stdout.str())
        assert set(reference) == set(FILES)
        shutil.rmtree(folder)
        if before:
            folder.mkdir()
            for name, data in before.items():
                (folder / name).write_bytes(data)
        paths = [pytester.path / f"samples-{cycle}" / f"shard-{k}.jsonl" for k in (1, 2, 3)]
        for k, path in enumerate(paths, start=1):
            shard(pytester, k, 3, path)
        assert committed(pytester) == before  # a shard writes nothing in baselines/
        status, lines, err = decide(
            capsys, f"samples-{cycle}/*.jsonl", f"--report=decided-{cycle}.md"
        )
        assert status == 0, err
        assert lines[0].startswith(f"selfopt decide: 3 shard(s) of cycle {cycle}, ")
        assert lines[1:] == summary
        assert committed(pytester) == reference
        decided = (pytester.path / f"decided-{cycle}.md").read_text()
        assert decided == (pytester.path / f"whole-{cycle}.md").read_text()
        before = reference
    assert "PROMOTE" in before["decisions.log"].decode()  # cycles that decide something
    assert "model=cloud" in (pytester.path / "decided-2.md").read_text()  # cycle 2 asks cloud
    assert "cold_start" in before["history.json"].decode()  # and meets its cold start


def test_foreign_and_damaged_shards_are_refused_naming_the_file(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """On test_shards.py's one-phase inline suite (18 samples): cheap sessions."""
    make_suite(pytester)
    folder, baselines = pytester.path / "samples", pytester.path / "baselines"

    def inline_shard(k: int, path: Path, *args: str) -> None:
        result = run(pytester, "benchmarks", *args, f"--selfopt-shard={k}/3",
                     f"--selfopt-samples={path}")  # fmt: skip
        assert result.ret == 0, result.stdout.str()

    s1, s2, s3 = (folder / f"shard-{k}.jsonl" for k in (1, 2, 3))
    for k, path in enumerate((s1, s2, s3), start=1):
        inline_shard(k, path, "--selfopt")

    # Shard 3 run on another config (one gate changed), then the config restored.
    config = pytester.path / "benchmarks" / "selfopt.yaml"
    original = config.read_text()
    config.write_text(original.replace("min_restraint: 0.80", "min_restraint: 0.70"))
    other_config = pytester.path / "other-config-3.jsonl"
    inline_shard(3, other_config, "--selfopt")
    all_other = [pytester.path / "all-other" / f"shard-{k}.jsonl" for k in (1, 2)]
    for k, path in enumerate(all_other, start=1):
        inline_shard(k, path, "--selfopt")
    config.write_text(original)

    # Shard 3 of the next cycle: run after one whole cycle, whose files are then dropped.
    assert run(pytester, "benchmarks", "--selfopt").ret == 0
    next_cycle = pytester.path / "next-cycle-3.jsonl"
    inline_shard(3, next_cycle, "--selfopt")
    # Shard 3 of a check of that cycle's files, among cycle shards of cycle 1.
    check = pytester.path / "check-3.jsonl"
    inline_shard(3, check, "--selfopt-check")
    shutil.rmtree(baselines)

    # A sample line lost in the middle, the end line intact: the count gives it away.
    lines = s2.read_text().splitlines(keepends=True)
    assert len(lines) > 4  # header, samples, skipped, end
    holed = pytester.path / "holed-2.jsonl"
    holed.write_text("".join([*lines[:1], *lines[2:]]))

    cases: list[tuple[list[Path], str, str]] = [
        ([s1, s2, other_config], "other-config-3.jsonl: shard 3/3 belongs to another plan",
         "config"),
        ([s1, s2, next_cycle], "next-cycle-3.jsonl: shard 3/3 belongs to another plan",
         "cycle 2 -> 1"),
        ([s1, s2, check], "check-3.jsonl: a check shard among cycle shards", ""),
        ([s1, holed, s3], "holed-2.jsonl: truncated: ", "its end line says"),
    ]  # fmt: skip
    # Every shard of another config: most often another suite's, decided without --rootdir.
    status, out, err = decide(capsys, *all_other, other_config, rootdir=".")
    assert status == decide_cli.EXIT_REFUSED, (out, err)
    [line] = err.splitlines()
    assert "the shards were run with another suite config than benchmarks/selfopt.yaml" in line
    assert "pass its folder as --rootdir" in line

    for paths, said, also in cases:
        status, out, err = decide(capsys, *paths, rootdir=".")
        assert status == decide_cli.EXIT_REFUSED, (paths, out, err)
        [line] = err.splitlines()
        assert line.startswith("selfopt decide: ") and said in line and also in line, line
        assert line.endswith("; nothing written"), line
        assert not out and not baselines.exists()

    # Each refusal above was for the odd file: the right ones close the cycle, in any order.
    status, out, err = decide(capsys, s3, s2, s1, rootdir=".")
    assert status == 0, err
    assert sorted(p.name for p in baselines.iterdir()) == sorted(FILES)
