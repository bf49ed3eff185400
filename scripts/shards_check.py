"""By hand: N CI shards + ``selfopt decide`` write the very files of one ``pytest --selfopt``.

    python scripts/shards_check.py                          # every suite, serial and -n 2
    python scripts/shards_check.py --suite noisy --mode serial --keep /tmp/shards-noisy

For each example suite (``main``: ``benchmarks/``; ``http``: ``benchmarks/http`` against the
simulator server; ``noisy``: ``benchmarks/noisy``) and each mode (``serial``; ``n2``: ``-n 2``
in every session), in two fresh copies of the repository's ``benchmarks/`` (committed files
left out, so both start at cycle 1):

- *whole*: one ``pytest SUITE --selfopt`` session (with ``--selfopt-report`` and
  ``--selfopt-json``);
- *shards*: ``pytest SUITE --selfopt --selfopt-shard K/N --selfopt-samples=…`` for K = 1..N one
  after the other, then ``selfopt decide 'samples/*.jsonl' --report=…``;

then compares ``baseline.yaml``, ``routing.yaml``, ``history.json``, ``decisions.log`` and the
report byte for byte, and prints per command its wall time, CPU time (user+sys of the process
tree), samples and the sum of the calls (each sample's ``total_latency_s``: what the calls would
take one at a time; the simulator reports latencies, it does not sleep them, but the HTTP
server sleeps ``--time-scale`` of them). Exit status 0 when every compared pair is identical.

The HTTP suite gets its own simulator server (``selfopt sim-server``, a free port written into
the copy's ``benchmarks/http/selfopt.yaml``) per side: one for the whole session, one shared by
the shards, as shards in CI share the real server. Each command is a fresh process, with
``-p no:randomly -p no:cacheprovider -p no:hypothesispytest`` (the dev plugins; not the
plugin's business). The figures are what docs/ci.md's "Measured on the example" shows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUITES = {"main": "benchmarks", "http": "benchmarks/http", "noisy": "benchmarks/noisy"}
MODES = {"serial": (), "n2": ("-n", "2")}
FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")
PLUGINS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
HTTP_PORT = "127.0.0.1:8765"  # as benchmarks/http/selfopt.yaml gives it


@dataclass(frozen=True)
class Timed:
    """One command's cost: wall and CPU seconds, samples, the sum of their calls' latencies."""

    label: str
    wall_s: float
    cpu_s: float
    samples: int | None = None
    calls_s: float | None = None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, argv: Sequence[str], cwd: Path, log: Path) -> Timed:
    """Run ``argv`` in ``cwd`` (output to ``log``); its cost. Exits the script on failure."""
    cpu, t0 = children_cpu(), time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"{label}: exit status {proc.returncode}; see {log}")
    return Timed(label, wall, cpu)


def with_calls(t: Timed, samples: list[dict[str, object]]) -> Timed:
    total = sum(float(str(s["total_latency_s"])) for s in samples)
    return Timed(t.label, t.wall_s, t.cpu_s, len(samples), total)


def shard_samples(path: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line["sample"] for line in lines if "sample" in line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sim_server(work: Path, log: Path) -> Iterator[None]:
    """A fresh simulator server for the copy in ``work`` (a free port, written into the copy's
    config the first time)."""
    config, chosen = work / "benchmarks" / "http" / "selfopt.yaml", work / "port.txt"
    if chosen.exists():  # the same port every cycle: the config stays the same
        port = int(chosen.read_text(encoding="utf-8"))
    else:
        port = free_port()
        chosen.write_text(str(port), encoding="utf-8")
        text = config.read_text(encoding="utf-8").replace(HTTP_PORT, f"127.0.0.1:{port}")
        config.write_text(text, encoding="utf-8")
    argv = [str(BIN / "selfopt"), "sim-server", "--config", "benchmarks/selfopt.yaml"]
    argv += ["--port", str(port), "--time-scale", "0.02"]
    with log.open("a", encoding="utf-8") as out:
        server = subprocess.Popen(argv, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the simulator server did not start on port {port}; see {log}")
                time.sleep(0.1)
        yield
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def copy(work: Path) -> None:
    """The repository's ``benchmarks/`` in ``work`` (no committed files, caches or samples),
    with a ``pytest.ini`` making ``work`` the main suite's rootdir, as the repository is."""
    ignore = shutil.ignore_patterns("baselines", "__pycache__", ".pytest_cache", "*.jsonl")
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=ignore)
    (work / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")


def committed(work: Path, suite: str) -> Path:
    return work / "baselines" if suite == "main" else work / SUITES[suite] / "baselines"


@contextmanager
def maybe_server(suite: str, work: Path, log: Path) -> Iterator[None]:
    if suite == "http":
        with sim_server(work, log):
            yield
    else:
        yield


def check(suite: str, mode: str, n: int, keep: Path, cycles: int) -> tuple[bool, list[Timed]]:
    """Whole session vs N shards + decide for one suite and mode, ``cycles`` cycles in a row
    (each side from its own files): identical after every cycle?, cycle 1's costs."""
    pytest_cmd = [str(BIN / "python"), "-m", "pytest", SUITES[suite], "--selfopt", "-q"]
    pytest_cmd += [*PLUGINS, *MODES[mode]]
    base = keep / f"{suite}-{mode}"
    shutil.rmtree(base, ignore_errors=True)
    whole, sharded = base / "whole", base / "shards"
    costs: list[Timed] = []
    for work in (whole, sharded):
        copy(work)
    log = base / "log.txt"
    root = sharded if suite == "main" else sharded / SUITES[suite]
    same = True
    for cycle in range(1, cycles + 1):
        report = f"report-{cycle}.md"
        with maybe_server(suite, whole, log):
            t = timed(
                "N = 1: one session",
                [*pytest_cmd, f"--selfopt-report={report}", f"--selfopt-json=whole-{cycle}.json"],
                whole,
                log,
            )
        doc = json.loads((whole / f"whole-{cycle}.json").read_text(encoding="utf-8"))
        costs.append(with_calls(t, doc["samples"]))
        folder = sharded / f"samples-{cycle}"
        with maybe_server(suite, sharded, log):
            for k in range(1, n + 1):
                samples = folder / f"shard-{k}.jsonl"
                t = timed(
                    f"N = {n}: shard {k}/{n}",
                    [*pytest_cmd, f"--selfopt-shard={k}/{n}", f"--selfopt-samples={samples}"],
                    sharded,
                    log,
                )
                costs.append(with_calls(t, shard_samples(samples)))
        costs.append(
            timed(
                f"N = {n}: selfopt decide",
                [
                    str(BIN / "selfopt"),
                    "decide",
                    str(folder / "*.jsonl"),
                    f"--report={sharded / report}",
                    "--rootdir",
                    str(root),
                ],
                sharded,
                log,
            )
        )
        pairs = [(committed(whole, suite) / f, committed(sharded, suite) / f) for f in FILES]
        pairs.append((whole / report, sharded / report))
        for a, b in pairs:
            verdict = compare(a, b)
            same &= verdict == "same"
            where = "" if verdict == "same" else f" ({a} {b})"
            print(f"  cycle {cycle}: {verdict}: {a.name}{where}")
    return same, costs[: n + 2]


#: Measured (wall-clock) latencies: in the files' metrics and the report's tables.
LATENCY = (
    re.compile(r"(\"?latency_p\d+_s\"?\s*:\s*)[-0-9.e+]+"),
    re.compile(r"()(?<![\w.])\d+\.\d+s\b"),
)


def compare(a: Path, b: Path) -> str:
    """ "same", "same but for measured latencies" or "DIFFERS"."""
    if not (a.exists() and b.exists()):
        return "DIFFERS (missing)"
    x, y = a.read_text(encoding="utf-8"), b.read_text(encoding="utf-8")
    if x == y:
        return "same"
    for pattern in LATENCY:
        x, y = pattern.sub(r"\1~", x), pattern.sub(r"\1~", y)
    return "same but for measured latencies" if x == y else "DIFFERS"


def table(costs: Sequence[Timed], n: int) -> None:
    shards = costs[1:-1]
    rows = [*costs]
    rows.append(
        Timed(
            f"N = {n}, sequential (sum)",
            sum(c.wall_s for c in costs[1:]),
            sum(c.cpu_s for c in costs[1:]),
            sum(c.samples or 0 for c in shards),
            sum(c.calls_s or 0.0 for c in shards),
        )
    )
    longest = max(shards, key=lambda c: c.wall_s)
    rows.append(
        Timed(
            f"N = {n}, as a matrix (longest shard + decide)",
            longest.wall_s + costs[-1].wall_s,
            longest.cpu_s + costs[-1].cpu_s,
            None,
            max(c.calls_s or 0.0 for c in shards),
        )
    )
    for r in rows:
        samples = "" if r.samples is None else str(r.samples)
        calls = "" if r.calls_s is None else f"{r.calls_s:.1f} s"
        print(f"  | {r.label} | {r.wall_s:.1f} s | {r.cpu_s:.1f} s | {samples} | {calls} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), action="append")
    parser.add_argument("--mode", choices=sorted(MODES), action="append")
    parser.add_argument("--shards", type=int, default=3, metavar="N")
    parser.add_argument("--cycles", type=int, default=1, metavar="C", help="cycles in a row")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="shards-check-"))
    keep.mkdir(parents=True, exist_ok=True)
    print(f"in {keep}; {os.getloadavg()[0]:.2f} load average at start (uptime's 1 min figure)")
    ok = True
    for suite in args.suite or list(SUITES):
        for mode in args.mode or list(MODES):
            print(f"{suite}, {mode}, N = {args.shards}:")
            same, costs = check(suite, mode, args.shards, keep, args.cycles)
            ok &= same
            table(costs, args.shards)
            print(f"  load average now: {os.getloadavg()[0]:.2f}", flush=True)
    if not args.keep:
        shutil.rmtree(keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
