"""Run an example suite's loop and compare its story with the one its README promises.

    python scripts/check_story.py benchmarks/noisy [-- -n 2]

The README's first fenced block that starts with ``cycle 1:`` is the expected story: the
``cycle N: ...`` lines and the ``stopped: ...`` line that ``selfopt loop`` prints. The loop
runs from scratch (``--fresh`` in a temporary folder) with ``--cycles 10``; any difference is
printed as a diff and the exit status is 1. CI runs it (``.ci/run``) so that an example's
README never drifts from what the code does.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STORY_LINE = re.compile(r"^(cycle \d+: |stopped: )")


def expected_story(readme: Path) -> list[str]:
    """The story block of ``readme``: the lines of the first fence that begins ``cycle 1:``."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    for block in blocks:
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("cycle 1:"):
            return [line for line in lines if STORY_LINE.match(line)]
    raise SystemExit(f"{readme}: no fenced block starting with 'cycle 1:' (the expected story)")


def actual_story(suite: Path, extra: list[str], cycles: int) -> list[str]:
    selfopt = Path(sys.executable).with_name("selfopt")
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(selfopt), "loop", "--fresh", str(Path(tmp) / "run"), "--cycles"]
        command += [str(cycles), "--", str(suite), *extra]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"selfopt loop exited {done.returncode}")
    return [line for line in done.stdout.splitlines() if STORY_LINE.match(line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path, help="the example's folder (holds README.md)")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    want = expected_story(args.suite / "README.md")
    got = actual_story(args.suite, args.pytest_args, args.cycles)
    if got == want:
        print(f"{args.suite}: the story of its README, {len(got)} lines, exactly")
        return 0
    sys.stdout.writelines(
        line + "\n" for line in difflib.unified_diff(want, got, "README.md", "selfopt loop", n=0)
    )
    print(f"{args.suite}: the loop's story differs from its README (diff above)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
