"""Long fault runs on copies of the example: kills at random moments, concurrent starts.

    .venv/bin/python scripts/faults.py [--kills 100] [--double-starts 20] [--seed 1]

1. A chain of uninterrupted cycles gives the reference states S0 (no files) .. S4; cycles of
   the example are deterministic (simulated models, fixed seed), so the cycle from S(k) always
   writes exactly S(k+1).
2. Each kill trial copies the example at a random S(k), starts ``pytest benchmarks --selfopt``
   and sends SIGKILL, SIGTERM or SIGINT either at a random moment of the session or within
   20 ms of its first temporary file appearing (inside the write). Then the next start's
   repair runs (``read_state``, what a session calls first) and the folder must be exactly
   S(k) or exactly S(k+1): anything else is a mixed state; any file besides the four is a
   leftover.
3. Each double start launches two sessions on the same S(k) at once: exactly one may write
   (the history grows by one cycle, no cycle number twice), the other must exit non-zero.

Prints the figures docs/reliability.md quotes; ``--json`` keeps every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMMITTED = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
SESSION = [
    sys.executable,
    "-m",
    "pytest",
    "benchmarks",
    "--selfopt",
    "-q",
    "-p",
    "no:cacheprovider",
]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}

State = dict[str, bytes]


def snapshot(folder: Path) -> State:
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def example(work: Path, state: State) -> Path:
    root = Path(tempfile.mkdtemp(prefix="faults-", dir=work))
    shutil.copytree(
        REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "conftest.py", root / "conftest.py")
    (root / "baselines").mkdir()
    for name, data in state.items():
        (root / "baselines" / name).write_bytes(data)
    return root


def session(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        SESSION,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def chain(work: Path, cycles: int) -> tuple[list[State], list[float]]:
    """S0..S(cycles) and each cycle's duration, from uninterrupted sessions."""
    states: list[State] = [{}]
    seconds: list[float] = []
    root = example(work, {})
    for k in range(cycles):
        start = time.monotonic()
        done = subprocess.run(SESSION, cwd=root, capture_output=True, check=False)
        seconds.append(time.monotonic() - start)
        after = snapshot(root / "baselines")
        if done.returncode not in (0, 1) or after == states[-1]:
            sys.exit(f"reference cycle {k + 1} failed:\n{done.stdout.decode()[-3000:]}")
        states.append(after)
    shutil.rmtree(root)
    return states, seconds


def repair(folder: Path) -> tuple[list[str], str]:
    """What the next start does first: repair, then read (the notes it prints)."""
    from pytest_selfopt.store.files import read_state
    from pytest_selfopt.store.formats import FilesError

    try:
        return list(read_state(folder).notes), ""
    except FilesError as exc:
        return [], str(exc)


def kill_trial(
    work: Path, rng: random.Random, states: list[State], seconds: list[float]
) -> dict[str, Any]:
    k = rng.randrange(len(states) - 1)
    name = rng.choice(sorted(SIGNALS))
    mode = rng.choice(["random-moment", "inside-write"])
    root = example(work, states[k])
    folder = root / "baselines"
    proc = session(root)
    start = time.monotonic()
    if mode == "random-moment":
        time.sleep(rng.uniform(0.0, seconds[k] * 1.1))
    else:
        deadline = start + seconds[k] * 3 + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".selfopt-new.") for p in folder.iterdir()):
                time.sleep(rng.uniform(0.0, 0.02))
                break
            time.sleep(0.0005)
    at = time.monotonic() - start
    finished_first = proc.poll() is not None
    if not finished_first:
        try:
            os.killpg(proc.pid, SIGNALS[name])
        except ProcessLookupError:
            pass
    output = proc.communicate()[0].decode("utf-8", "replace")
    temporaries = sorted(p.name for p in folder.iterdir() if p.name not in COMMITTED)
    notes, error = repair(folder)
    after = snapshot(folder)
    leftovers = sorted(set(after) - set(COMMITTED))
    core = {n: d for n, d in after.items() if n in COMMITTED}
    outcome = "old" if core == states[k] else "new" if core == states[k + 1] else "mixed"
    shutil.rmtree(root)
    return {
        "start_state": k,
        "signal": name,
        "mode": mode,
        "at_s": round(at, 3),
        "finished_before_signal": finished_first,
        "exit": proc.returncode,
        "output_tail": output[-600:] if finished_first and proc.returncode != 0 else "",
        "temporaries_before_repair": temporaries,
        "notes": notes,
        "error": error,
        "outcome": outcome,
        "leftovers": leftovers,
    }


def double_start(work: Path, rng: random.Random, states: list[State]) -> dict[str, Any]:
    k = rng.randrange(len(states) - 1)
    root = example(work, states[k])
    procs = [session(root), session(root)]
    outputs = [p.communicate()[0].decode("utf-8", "replace") for p in procs]
    codes = [p.returncode for p in procs]
    notes, error = repair(root / "baselines")
    after = snapshot(root / "baselines")
    history = json.loads(after.get("history.json", b'{"cycles": []}'))["cycles"]
    numbers = [e["cycle"] for e in history]
    grew = len(numbers) - k
    losers = [out for code, out in zip(codes, outputs, strict=True) if code != 0]
    lines = [
        next(
            (
                ln
                for ln in out.splitlines()
                if any(w in ln for w in ("locked", "already recorded", "since this cycle read"))
            ),
            out.strip().splitlines()[-1] if out.strip() else "",
        )
        for out in losers
    ]
    shutil.rmtree(root)
    return {
        "start_state": k,
        "exits": codes,
        "cycles_added": grew,
        "duplicate_cycle_numbers": len(numbers) != len(set(numbers)),
        "state": "old" if after == states[k] else "new" if after == states[k + 1] else "other",
        "loser_lines": lines,
        "error": error,
        "notes": notes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--double-starts", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=4, help="reference chain length")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every trial to this file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="selfopt-faults-") as tmp:
        work = Path(tmp)
        states, seconds = chain(work, args.cycles)
        print(f"reference chain: {args.cycles} cycles, {', '.join(f'{s:.1f}' for s in seconds)} s")
        kills = []
        for i in range(args.kills):
            kills.append(kill_trial(work, rng, states, seconds))
            if (i + 1) % 10 == 0:
                print(f"  kills: {i + 1}/{args.kills}", flush=True)
        doubles = []
        for i in range(args.double_starts):
            doubles.append(double_start(work, rng, states))
            print(f"  double starts: {i + 1}/{args.double_starts}", flush=True)
    report(kills, doubles)
    if args.json:
        Path(args.json).write_text(json.dumps({"kills": kills, "double_starts": doubles}, indent=1))
    bad = sum(
        t["outcome"] == "mixed" or bool(t["leftovers"]) or bool(t["error"]) for t in kills
    ) + sum(d["cycles_added"] != 1 or d["duplicate_cycle_numbers"] for d in doubles)
    return 1 if bad else 0


def report(kills: list[dict[str, Any]], doubles: list[dict[str, Any]]) -> None:
    def count(rows: list[dict[str, Any]], **match: Any) -> int:
        return sum(all(r[k] == v for k, v in match.items()) for r in rows)

    live = [t for t in kills if not t["finished_before_signal"]]
    print(f"\nkills: {len(kills)} ({len(live)} landed while the session was running)")
    for name in sorted(SIGNALS):
        for mode in ("random-moment", "inside-write"):
            rows = [t for t in kills if t["signal"] == name and t["mode"] == mode]
            print(
                f"  {name:<8} {mode:<14} {len(rows):>3}: old {count(rows, outcome='old'):>3}, "
                f"new {count(rows, outcome='new'):>3}, mixed {count(rows, outcome='mixed')}"
            )
    interrupted = [t for t in kills if t["temporaries_before_repair"]]
    print(
        f"  interrupted writes (temporaries or journal found): {len(interrupted)}; "
        f"completed by the next start: {sum('completed' in ' '.join(t['notes']) for t in kills)}, "
        f"rolled back: {sum('removed' in ' '.join(t['notes']) for t in kills)}"
    )
    print(
        f"  mixed states: {count(kills, outcome='mixed')}; leftovers after the next start: "
        f"{sum(bool(t['leftovers']) for t in kills)}; repair errors: "
        f"{sum(bool(t['error']) for t in kills)}"
    )
    print(f"double starts: {len(doubles)}")
    print(
        f"  exactly one writer: {sum(d['cycles_added'] == 1 for d in doubles)}; "
        f"duplicate cycle numbers: {sum(d['duplicate_cycle_numbers'] for d in doubles)}; "
        f"end state = one clean cycle: {sum(d['state'] == 'new' for d in doubles)}"
    )
    lines = sorted({ln for d in doubles for ln in d["loser_lines"]})
    for line in lines[:3]:
        print(f"  loser said: {line[:160]}")


if __name__ == "__main__":
    raise SystemExit(main())
