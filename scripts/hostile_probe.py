"""Every cell of the hostile corpus as a whole process, measured: exit, named file, traceback,
writes, wall and CPU time, peak memory.

    nice -n 10 .venv/bin/python scripts/hostile_probe.py [--jobs 2] [--only suite,cases]
        [--limit N] [--match ID-PART] [--json cells.json]

tests/test_hostile_input.py runs every cell in-process through the session's own loaders; this
probe puts each malformed input (tests/hostile/: at least 50 per file) in place of its file in a
copy of the example and starts ``pytest benchmarks --selfopt`` as users do, under a 1 GiB
address-space limit and a 60 s CPU limit (a hang or a memory blow-up shows as a failed cell,
not as a stuck machine). A cell passes when the process exits 4, names the file, prints no
traceback (no ``Traceback``, ``INTERNALERROR`` or ``file.py:N: in`` frame), and leaves
``baselines/`` byte-identical. Tolerated entries (a UTF-8 BOM, CRLF) may be accepted: they run
``--collect-only`` (which reads every file and writes nothing) and must exit 0 or 4.

Peak memory is the child's ``ru_maxrss`` (os.wait4), the whole interpreter included. The dev
environment's hypothesis plugin is disabled (``-p no:hypothesispytest``: it is not the
plugin's and costs ~1.5 s of CPU per process). Sessions import a copy of ``pytest_selfopt``
taken at the start (PYTHONPATH), so edits made meanwhile do not mix in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hostile.corpus import PWNED, TARGETS, Entry, corpus  # noqa: E402

SEED = REPO / "tests" / "hostile" / "seed"
SESSION = ["-m", "pytest", "benchmarks", "--selfopt", "-q", "-p", "no:cacheprovider"]
QUIET = ["-p", "no:hypothesispytest", "-p", "no:randomly"]
ADDRESS_LIMIT = 1 << 30
CPU_LIMIT_S = 60
FRAME = re.compile(r"\.py:\d+: in ")
ENV = dict(os.environ)


def valid(target: str) -> bytes:
    path = TARGETS[target].path
    if path.startswith("baselines/"):
        return (SEED / Path(path).name).read_bytes()
    return (REPO / path).read_bytes()


def snapshot(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        return {}
    return {
        p.name: "link" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
        for p in sorted(folder.iterdir())
    }


def limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def example(work: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cell-", dir=work))
    shutil.copytree(
        REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "conftest.py", root / "conftest.py")
    shutil.copytree(SEED, root / "baselines")
    return root


def run(root: Path, args: list[str]) -> dict[str, Any]:
    out = root / "output.txt"
    start = time.monotonic()
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, *args, *QUIET],
            cwd=root,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            preexec_fn=limits,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "rss_mb": round(usage.ru_maxrss / 1024, 1),
        "output": out.read_bytes().decode("utf-8", "replace"),
    }


def cell(work: Path, entry: Entry) -> dict[str, Any]:
    root = example(work)
    entry.install(root)
    before = snapshot(root / "baselines")
    args = [*SESSION, "--collect-only"] if entry.tolerated else SESSION
    result = run(root, args)
    output = result.pop("output")
    named = TARGETS[entry.target].path in output
    traceback = "Traceback" in output or "INTERNALERROR" in output or bool(FRAME.search(output))
    written = snapshot(root / "baselines") != before
    if entry.tolerated:
        ok = result["exit"] in (0, 4) and not traceback and not written
    else:
        ok = result["exit"] == 4 and named and not traceback and not written
    shutil.rmtree(root, ignore_errors=True)
    return {
        "id": entry.id,
        "tolerated": entry.tolerated,
        "big": entry.big,
        **result,
        "named": named,
        "traceback": traceback,
        "written": written,
        "ok": ok,
        "line": next((ln for ln in output.splitlines() if TARGETS[entry.target].path in ln), "")[
            :300
        ],
        "tail": "" if ok else output[-1500:],
    }


def code_copy(work: Path) -> None:
    src = work / "src"
    shutil.copytree(
        REPO / "pytest_selfopt",
        src / "pytest_selfopt",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), ENV.get("PYTHONPATH", "")) if p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="comma-separated targets (suite,cases,baseline,...)")
    ap.add_argument("--limit", type=int, help="at most N cells per target")
    ap.add_argument("--match", help="only cells whose id (target/name) contains this")
    ap.add_argument("--json", help="write every cell to this file")
    args = ap.parse_args()
    targets = args.only.split(",") if args.only else list(TARGETS)
    entries = [e for t in targets for e in corpus(t, valid(t))[: args.limit]]
    entries = [e for e in entries if not args.match or args.match in e.id]
    began = time.monotonic()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {' '.join(sys.argv)}")
    print(f"{len(entries)} cells over {len(targets)} file(s), {args.jobs} at a time", flush=True)
    Path(PWNED).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="selfopt-hostile-") as tmp:
        work = Path(tmp)
        code_copy(work)
        control = run(example(work), [*SESSION, "--collect-only"])
        if control["exit"] != 0:
            print(f"the valid example does not collect:\n{control['output'][-3000:]}")
            return 2
        print(
            f"control (valid files, --collect-only): {control['wall_s']} s wall, "
            f"{control['cpu_s']} s CPU, {control['rss_mb']} MB",
            flush=True,
        )
        cells: list[dict[str, Any]] = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for i, result in enumerate(pool.map(lambda e: cell(work, e), entries), 1):
                cells.append(result)
                if not result["ok"]:
                    print(f"  FAILED {result['id']}: exit {result['exit']}", flush=True)
                if i % 50 == 0:
                    print(f"  {i}/{len(entries)}", flush=True)
    pwned = Path(PWNED).exists()
    report(cells, pwned)
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=1))
    return 0 if all(c["ok"] for c in cells) and not pwned else 1


def report(cells: list[dict[str, Any]], pwned: bool) -> None:
    print(f"\ncells: {len(cells)} ({sum(c['tolerated'] for c in cells)} tolerated variants)")
    for target in TARGETS:
        rows = [c for c in cells if c["id"].startswith(f"{target}/")]
        if not rows:
            continue
        print(
            f"  {TARGETS[target].path:<26} {len(rows):>3} cells, ok {sum(c['ok'] for c in rows):>3}; "
            f"max wall {max(c['wall_s'] for c in rows):5.2f} s, "
            f"max CPU {max(c['cpu_s'] for c in rows):5.2f} s, "
            f"max RSS {max(c['rss_mb'] for c in rows):6.1f} MB"
        )
    refused = [c for c in cells if not c["tolerated"]]
    print(
        f"  refused cells: {len(refused)}; exit 4: {sum(c['exit'] == 4 for c in refused)}; "
        f"file named: {sum(c['named'] for c in refused)}; traceback: "
        f"{sum(c['traceback'] for c in cells)}; a committed file changed: "
        f"{sum(c['written'] for c in cells)}; payload ran: {int(pwned)}"
    )
    walls = sorted(c["wall_s"] for c in cells)
    cpus = sorted(c["cpu_s"] for c in cells)
    print(
        f"  wall: median {walls[len(walls) // 2]:.2f} s, max {walls[-1]:.2f} s, "
        f"over 5 s: {sum(w > 5 for w in walls)}; CPU: median {cpus[len(cpus) // 2]:.2f} s, "
        f"max {cpus[-1]:.2f} s, over 5 s: {sum(c > 5 for c in cpus)}; "
        f"peak RSS max {max(c['rss_mb'] for c in cells):.1f} MB, "
        f"over 300 MB: {sum(c['rss_mb'] > 300 for c in cells)}"
    )
    slow = sorted(cells, key=lambda c: -c["cpu_s"])[:3]
    print("  slowest (CPU): " + ", ".join(f"{c['id']} {c['cpu_s']} s" for c in slow))
    big = sorted(cells, key=lambda c: -c["rss_mb"])[:3]
    print("  largest (RSS): " + ", ".join(f"{c['id']} {c['rss_mb']} MB" for c in big))


if __name__ == "__main__":
    raise SystemExit(main())
