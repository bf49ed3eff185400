"""Regenerate tests/hostile/seed/: the four committed files of one real cycle of the example.

Run ``.venv/bin/python tests/hostile/make_seed.py`` after a change to the example or to the
committed formats; test_hostile_input.py checks that the seed still loads cleanly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = Path(__file__).resolve().parent / "seed"
FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="selfopt-seed-") as tmp:
        root = Path(tmp)
        shutil.copytree(
            REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(REPO / "conftest.py", root / "conftest.py")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "benchmarks",
                "--selfopt",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        if not (root / "baselines" / "history.json").exists():
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            return 1
        SEED.mkdir(exist_ok=True)
        for name in FILES:
            shutil.copy(root / "baselines" / name, SEED / name)
    print(f"wrote {', '.join(FILES)} to {SEED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
