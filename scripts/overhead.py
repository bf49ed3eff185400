"""Whole-process overhead of the plugin against bare pytest on the same number of items.

    python scripts/overhead.py [--repeat 5]

Lays out, in a temporary folder, the example suite (420 items under --selfopt: 7 runs x
5 specs x 12 cases) and a bare module with 420 trivial parametrized tests, then times whole
pytest processes (median of --repeat runs):

  bare        pytest -p no:selfopt on the 420 trivial tests (what pytest itself costs)
  plugin-idle the same, with the plugin loaded but unused
  plain       the example suite without --selfopt (12 items, simulated calls)
  cycle       pytest --selfopt on the example suite: 420 items, the whole cycle, files written
  cycle -n 2  the same over two xdist workers

Each row's first run is not measured: it compiles the modules into the work folder
(``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` is dropped for the measured processes),
as an installed package's are compiled at install time (scripts/throughput.py, "Bytecode").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = """
import pytest

@pytest.mark.parametrize("i", range(420))
def test_bare(i):
    assert i >= 0
"""


def timed(args: list[str], cwd: Path, repeat: int, reset: Path | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cwd / "pycache")
    times = []
    for _ in range(repeat + 1):  # the first compiles (see the module docstring)
        if reset is not None:
            shutil.rmtree(reset, ignore_errors=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
        )
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"pytest {' '.join(args)} failed:\n{proc.stdout[-2000:]}")
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "benchmarks", work / "benchmarks")
        (work / "bare").mkdir()
        (work / "bare" / "test_bare.py").write_text(BARE)
        rows = [
            ("bare (420 trivial items)", timed(["-p", "no:selfopt", "bare"], work, args.repeat)),
            ("plugin-idle (same items)", timed(["bare"], work, args.repeat)),
            ("plain example (12 items)", timed(["benchmarks"], work, args.repeat)),
            (
                "cycle (420 items)",
                timed(["--selfopt", "benchmarks"], work, args.repeat, work / "baselines"),
            ),
            (
                "cycle -n 2 (420 items)",
                timed(
                    ["--selfopt", "-n", "2", "benchmarks"], work, args.repeat, work / "baselines"
                ),
            ),
        ]
    base = rows[0][1]
    print(f"{'run':28} {'median s':>9} {'vs bare':>8}")
    for name, seconds in rows:
        print(f"{name:28} {seconds:9.2f} {seconds - base:+8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
