"""Long fault runs on copies of the example: kills at random moments, concurrent starts.

    nice -n 10 .venv/bin/python scripts/faults.py [--kills 100] [--double-starts 20]
        [--resumes 20] [--seed 1] [--json trials.json]

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
4. Each resume trial starts a cycle on S(k) and sends SIGINT once the sample journal holds a
   random number of samples (1 .. all but one); the broken session must write nothing and
   say how many samples it kept; ``--selfopt-resume`` must then run exactly the items missing
   from the journal (a probe plugin records every item that ran) and leave exactly S(k+1),
   the uninterrupted cycle's files, byte for byte. (The example's simulated cold start is a
   function of case and run, so the resumed process meets the same cold samples.)

The sessions run a copy of ``pytest_selfopt`` taken when the script starts (``PYTHONPATH``
ahead of the editable install), so edits made to the working tree during a long run do not
mix into it.

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
JOURNAL = Path(".pytest_cache") / "selfopt" / "journal.jsonl"
#: A plugin (``-p faults_probe``) that records the node id of every item that ran its call.
PROBE = """
import os


def pytest_runtest_logreport(report):
    if report.when == "call" and os.environ.get("FAULTS_RAN"):
        with open(os.environ["FAULTS_RAN"], "a", encoding="utf-8") as fh:
            fh.write(report.nodeid + "\\n")
"""
ENV = dict(os.environ)
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
    (root / "faults_probe.py").write_text(PROBE, encoding="utf-8")
    (root / "baselines").mkdir()
    for name, data in state.items():
        (root / "baselines" / name).write_bytes(data)
    return root


def session(
    root: Path, *extra: str, ran: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = dict(env or ENV)
    if ran is not None:
        env["FAULTS_RAN"] = str(ran)
    return subprocess.Popen(
        [*SESSION, *extra],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )


def code_copy(work: Path) -> str:
    """A copy of the plugin's code as it is now; the sessions import it first."""
    src = work / "src"
    shutil.copytree(
        REPO / "pytest_selfopt",
        src / "pytest_selfopt",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    ENV["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.path.insert(0, str(src))
    head = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %cs"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--short", "--", "pytest_selfopt"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    changed = sum(bool(line.strip()) for line in dirty)
    return f"code: commit {head}, {changed} file(s) of pytest_selfopt/ changed in the working tree"


def chain(work: Path, cycles: int) -> tuple[list[State], list[float], list[list[str]]]:
    """S0..S(cycles), each cycle's duration and the items it ran, from uninterrupted
    sessions."""
    states: list[State] = [{}]
    seconds: list[float] = []
    items: list[list[str]] = []
    root = example(work, {})
    for k in range(cycles):
        ran = root / f"ran-{k}.txt"
        start = time.monotonic()
        proc = session(root, "-p", "faults_probe", ran=ran)
        output = proc.communicate()[0].decode("utf-8", "replace")
        seconds.append(time.monotonic() - start)
        after = snapshot(root / "baselines")
        if proc.returncode not in (0, 1) or after == states[-1]:
            sys.exit(f"reference cycle {k + 1} failed:\n{output[-3000:]}")
        states.append(after)
        items.append(ran.read_text(encoding="utf-8").split())
    shutil.rmtree(root)
    return states, seconds, items


def repair(folder: Path) -> tuple[list[str], str]:
    """What the next start does first: repair, then read (the notes it prints)."""
    from pytest_selfopt.store.files import read_state  # the copy (code_copy)
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


def journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def resume_trial(
    work: Path, rng: random.Random, states: list[State], items: list[list[str]]
) -> dict[str, Any]:
    """Interrupt a cycle after a random number of samples, then resume it."""
    k = rng.randrange(len(states) - 1)
    total = len(items[k])
    root = example(work, states[k])
    journal = root / JOURNAL
    attempts: list[dict[str, Any]] = []
    kept_line = ""
    while len(attempts) < 3:
        target = rng.randint(1, total - 1)
        proc = session(root)
        while proc.poll() is None and journal_lines(journal) - 1 < target:
            time.sleep(0.002)
        at_lines = journal_lines(journal) - 1
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        output = proc.communicate()[0].decode("utf-8", "replace")
        kept_line = next((ln for ln in output.splitlines() if ln.startswith("kept ")), "")
        attempt = {"target": target, "journal_at_signal": at_lines, "exit": proc.returncode}
        attempts.append(attempt)
        if kept_line:
            break  # interrupted with samples kept: the trial proper
        if snapshot(root / "baselines") == states[k + 1]:
            # The signal landed after the last sample: the cycle closed and was written, as an
            # uninterrupted one; what the session said then is kept, and a new copy tried.
            attempt["after_the_cycle_was_written"] = output.strip().splitlines()[-1:]
            shutil.rmtree(root)
            root = example(work, states[k])
            journal = root / JOURNAL
            continue
        shutil.rmtree(root / ".pytest_cache", ignore_errors=True)
    broken_wrote = snapshot(root / "baselines") != states[k]
    kept = int(kept_line.split()[1]) if kept_line else 0
    journal_ids: list[str] = []
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines()[1:]:
            if line.strip():
                journal_ids.append(json.loads(line)["nodeid"])
    ran = root / "resumed-ran.txt"
    proc = session(root, "--selfopt-resume", "-p", "faults_probe", ran=ran)
    output = proc.communicate()[0].decode("utf-8", "replace")
    resumed_ids = ran.read_text(encoding="utf-8").split() if ran.exists() else []
    after = snapshot(root / "baselines")
    said = next((ln for ln in output.splitlines() if ln.startswith("resumed: ")), "")
    journal_left = journal.exists()
    shutil.rmtree(root)
    reference = set(items[k])
    only_missing = (
        bool(kept_line)
        and not set(journal_ids) & set(resumed_ids)
        and len(resumed_ids) == len(set(resumed_ids))
        and set(journal_ids) | set(resumed_ids) == reference
        and len(journal_ids) + len(resumed_ids) == total
    )
    return {
        "start_state": k,
        "items": total,
        "attempts": attempts,
        "broken_session_wrote": broken_wrote,
        "kept": kept,
        "journal_samples": len(journal_ids),
        "resume_exit": proc.returncode,
        "resume_said": said,
        "resumed_ran": len(resumed_ids),
        "ran_only_missing": only_missing,
        "identical_to_uninterrupted": after == states[k + 1],
        "journal_left": journal_left,
        "output_tail": "" if only_missing and after == states[k + 1] else output[-800:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--double-starts", type=int, default=20)
    ap.add_argument("--resumes", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=4, help="reference chain length")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every trial to this file")
    args = ap.parse_args()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control: SIGINT is ignored, and
        # the sessions would inherit that and never see the Ctrl-C this script sends them.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    began = time.monotonic()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="selfopt-faults-") as tmp:
        work = Path(tmp)
        print(code_copy(work), flush=True)
        states, seconds, items = chain(work, args.cycles)
        print(
            f"reference chain: {args.cycles} cycles, {', '.join(f'{s:.1f}' for s in seconds)} s; "
            f"items per cycle: {', '.join(str(len(i)) for i in items)}",
            flush=True,
        )
        kills = []
        for i in range(args.kills):
            kills.append(kill_trial(work, rng, states, seconds))
            if (i + 1) % 10 == 0:
                print(f"  kills: {i + 1}/{args.kills}", flush=True)
        doubles = []
        for i in range(args.double_starts):
            doubles.append(double_start(work, rng, states))
            print(f"  double starts: {i + 1}/{args.double_starts}", flush=True)
        resumes = []
        for i in range(args.resumes):
            resumes.append(resume_trial(work, rng, states, items))
            print(f"  resumes: {i + 1}/{args.resumes}", flush=True)
    report(kills, doubles, resumes)
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"kills": kills, "double_starts": doubles, "resumes": resumes}, indent=1)
        )
    bad = (
        sum(t["outcome"] == "mixed" or bool(t["leftovers"]) or bool(t["error"]) for t in kills)
        + sum(
            d["cycles_added"] != 1 or d["duplicate_cycle_numbers"] or d["state"] != "new"
            for d in doubles
        )
        + sum(
            not (r["ran_only_missing"] and r["identical_to_uninterrupted"])
            or r["broken_session_wrote"]
            or r["journal_left"]
            for r in resumes
        )
    )
    return 1 if bad else 0


def report(
    kills: list[dict[str, Any]], doubles: list[dict[str, Any]], resumes: list[dict[str, Any]]
) -> None:
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
    print(f"resumes: {len(resumes)}")
    if resumes:
        kept = [r["kept"] for r in resumes]
        print(
            f"  interrupted after {min(kept)} .. {max(kept)} samples kept (of "
            f"{min(r['items'] for r in resumes)} .. {max(r['items'] for r in resumes)} items); "
            f"extra attempts (signal landed too late): "
            f"{sum(len(r['attempts']) - 1 for r in resumes)}"
        )
        late = [a for r in resumes for a in r["attempts"] if "after_the_cycle_was_written" in a]
        if late:
            said = sorted({ln for a in late for ln in a["after_the_cycle_was_written"]})
            print(f"  signal after the last sample (cycle written, trial retried): {len(late)}")
            for line in said[:2]:
                print(f"    it said: {line[:160]}")
        print(
            f"  broken session wrote nothing: {sum(not r['broken_session_wrote'] for r in resumes)}; "
            f"resumed session ran only the missing items: "
            f"{sum(r['ran_only_missing'] for r in resumes)}; "
            f"files identical to the uninterrupted cycle: "
            f"{sum(r['identical_to_uninterrupted'] for r in resumes)}; "
            f"journal removed after the cycle closed: {sum(not r['journal_left'] for r in resumes)}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
