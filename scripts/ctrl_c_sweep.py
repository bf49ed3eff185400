"""Ctrl-C at random moments of a whole ``pytest --selfopt`` session: what does the user see?

    python scripts/ctrl_c_sweep.py [--trials 120] [--seed 8] [--max-s 2.2] [-- PYTEST_ARGS]

On a copy of the example (``benchmarks/``) whose cycle 1 is committed first, each trial starts
``pytest benchmarks --selfopt -q`` (cycle 2) in a process group of its own, as a terminal
would, sends SIGINT to the group after a random time in [0, --max-s] s, and classifies the end:
exit status, whether a traceback (``Traceback`` or ``Exception ignored``) or a
``PluggyTeardownRaisedWarning`` was printed. The committed files are put back before every
trial. Prints the counts and the output of every trial that was not a clean exit 0 or 2
(docs/reliability.md, "Ctrl-C").
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--max-s", type=float, default=2.2, help="latest moment of the SIGINT")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (-n 2)")
    args = ap.parse_args()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    command = [sys.executable, "-m", "pytest", "benchmarks", "--selfopt", "-q", *args.pytest_args]
    with tempfile.TemporaryDirectory(prefix="selfopt-sweep-") as tmp:
        root = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "baselines", ".pytest_cache")
        shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=ignore)
        subprocess.run([*command[:-1], "-p", "no:cacheprovider"], cwd=root, check=True,
                       capture_output=True)  # fmt: skip
        committed = {p.name: p.read_bytes() for p in (root / "baselines").iterdir()}
        counts: collections.Counter[str] = collections.Counter()
        for trial in range(args.trials):
            shutil.rmtree(root / "baselines")
            shutil.rmtree(root / ".pytest_cache", ignore_errors=True)
            (root / "baselines").mkdir()
            for name, data in committed.items():
                (root / "baselines" / name).write_bytes(data)
            at = rng.uniform(0.0, args.max_s)
            proc = subprocess.Popen(
                command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
            time.sleep(at)
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            text = proc.communicate()[0].decode("utf-8", "replace")
            traceback = "Traceback" in text or "Exception ignored" in text
            warning = "PluggyTeardownRaisedWarning" in text
            kind = f"exit {proc.returncode}" + (", traceback" if traceback else "")
            kind += ", pluggy warning" if warning else ""
            counts[kind] += 1
            if proc.returncode not in (0, 2) or traceback or warning:
                print(f"--- trial {trial}, SIGINT at {at:.3f} s: {kind}\n{text[-1500:]}")
    print(f"{args.trials} trials, SIGINT at 0..{args.max_s:g} s: " + ", ".join(
        f"{kind}: {n}" for kind, n in sorted(counts.items())))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
