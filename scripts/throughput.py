"""Throughput of one cycle against a loopback OpenAI-compatible server with a fixed latency.

    python scripts/throughput.py --prompts 300 --concurrency 10            # pytest-selfopt
    python scripts/throughput.py --prompts 300 --concurrency 50 --mode xdist
    python3 -m venv /tmp/inspect-venv && /tmp/inspect-venv/bin/pip install inspect-ai openai
    python scripts/throughput.py --prompts 300 --concurrency 50 --inspect \
        --inspect-python /tmp/inspect-venv/bin/python                      # Inspect AI, same server

Starts a server on 127.0.0.1 (its own process, its own request counter) that answers every
``POST /v1/chat/completions`` ``--latency-ms`` (50) after the request's first byte (a thread
per connection, so that an answer leaves on time: column ``srv ms`` shows it). Prompt i is "Reply with the word
wNNNN." and the answer is "wNNNN", so every sample passes. In a temporary folder it lays out
a pytest-selfopt suite of N such prompts (one ``provider: openai`` model pointing at the
server, baseline only: no ``search``, ``max_candidates: 0``) and runs one ``pytest --selfopt``
cycle of N prompts x 7 runs as a subprocess, with C calls in flight:

  --mode xdist      ``-n C`` (one worker process per call in flight)
  --mode inprocess  ``--selfopt-concurrency C`` (default when ``pytest --help`` lists it)

With ``--inspect``, the same prompts x 7 epochs run through Inspect AI (``inspect eval
--model openai/fixed --max-connections C -M responses_api=false --display none``,
``OPENAI_BASE_URL`` set to the server) from the venv of ``--inspect-python``; Inspect AI is
not a dependency of this project.

For each run it prints the calls the server served, the wall time, calls/s, the latency-bound
limit (C / latency), the fraction of it reached, the peak memory of the whole process tree
(RSS summed over the root process and its descendants, sampled from /proc every 50 ms) and
the unconsumed calls (server calls - samples recorded, read from the cycle's closing lines
or the Inspect log). Unless ``--prompts 1`` or ``--no-startup``, a 1-prompt x 7 run at the same
concurrency comes first: its wall time is the start-up time. A run is stopped (its process
group killed) past ``--timeout-s`` or ``--max-rss-mb``. Linux only (/proc).

Bytecode: the measured processes write and read their compiled modules under the work folder
(``PYTHONPYCACHEPREFIX``), even when ``PYTHONDONTWRITEBYTECODE`` is set in the environment,
and an unmeasured 1-prompt run comes first (``--no-warmup`` to skip it): an installed package
has its bytecode compiled at install time, and a run that compiles every module of an
editable checkout measures the compiler, not the tool (1-3 s of start-up here).

A shared machine: ``--boost`` gives the measured process tree and the server a scheduling
group of their own at nice -19 (Linux autogroups; needs root), so that the tools rather than
the queue for the CPU are measured while other work keeps the machine busy. Both tools are
measured the same way; say so when reporting figures measured with it.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import re
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Mode = Literal["xdist", "inprocess"]
RUNS = 7
MODEL = "fixed"
ANSWER = re.compile(r"Reply with the word (\w+)")
PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_HEADER_LINES = 100
MAX_LINE_BYTES = 1 << 16
MAX_BODY_BYTES = 1 << 20
IDLE_CONNECTION_S = 120.0


def prompt(i: int) -> str:
    return f"Reply with the word w{i:04d}."


# --------------------------------------------------------------------------------------------
# The server: in a process of its own, so that neither the memory sampler nor the measured
# tree shares its interpreter; a thread per connection, so that each answer leaves on time
# (an asyncio timer wakes up to 1 ms late: epoll counts whole milliseconds). Counters live in
# shared memory.


class IntCell(Protocol):
    value: int


class FloatCell(Protocol):
    value: float


@dataclass
class ServerCounters:
    """Shared-memory cells, written by the server process only (under its own lock)."""

    calls: IntCell
    other: IntCell
    in_flight_peak: IntCell
    first_at: FloatCell
    last_at: FloatCell
    latency_sum: FloatCell  # seconds from each call's first byte to its answer, summed


def _answer(body: Any) -> str:
    """The word the last user message asks for; any other prompt gets "OK"."""
    messages = body.get("messages") if isinstance(body, dict) else None
    text = ""
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # content parts
                    content = " ".join(
                        str(p.get("text", "")) for p in content if isinstance(p, dict)
                    )
                text = str(content)
    match = ANSWER.search(text)
    return match.group(1) if match else "OK"


def _completion(body: Any, n: int, answer: str) -> bytes:
    model = body.get("model", MODEL) if isinstance(body, dict) else MODEL
    usage = {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}
    if isinstance(body, dict) and body.get("stream"):
        head = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        chunks = [
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": answer},
                        "finish_reason": None,
                    }
                ],
            },
            {
                **head,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": usage,
            },
        ]
        return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    doc = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    return json.dumps(doc).encode()


def _read_request(rfile: io.BufferedIOBase) -> tuple[str, str, bool, bytes, float] | None:
    """(method, path, keep_alive, body, first byte's time) of the next request, None at the
    end of the connection."""
    line = rfile.readline(MAX_LINE_BYTES)
    arrived = time.monotonic()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        return None
    method, path, version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = rfile.readline(MAX_LINE_BYTES)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        return None
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        for _ in range(MAX_BODY_BYTES):
            size = int(rfile.readline(MAX_LINE_BYTES).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                rfile.readline(MAX_LINE_BYTES)
                break
            chunks.append(_read_exactly(rfile, size))
            rfile.readline(MAX_LINE_BYTES)
        body = b"".join(chunks)
    elif (length := int(headers.get("content-length", "0") or 0)) > 0:
        body = _read_exactly(rfile, min(length, MAX_BODY_BYTES))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
    return method, path, keep_alive, body, arrived


def _read_exactly(rfile: io.BufferedIOBase, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise ConnectionError("the connection ended inside a request body")
    return data


class _Calls:
    """The server's per-run bookkeeping, shared by its connection threads."""

    def __init__(self, counters: ServerCounters, latency_s: float) -> None:
        self.counters = counters
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.in_flight = 0

    def started(self, arrived: float) -> int:
        c = self.counters
        with self.lock:
            c.calls.value += 1
            if c.first_at.value == 0.0:
                c.first_at.value = time.time() - (time.monotonic() - arrived)
            self.in_flight += 1
            c.in_flight_peak.value = max(c.in_flight_peak.value, self.in_flight)
            return int(c.calls.value)

    def answered(self, arrived: float) -> None:
        c = self.counters
        with self.lock:
            self.in_flight -= 1
            c.last_at.value = time.time()
            c.latency_sum.value += time.monotonic() - arrived


def _handler(calls: _Calls) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = IDLE_CONNECTION_S
        disable_nagle_algorithm = True

        def handle(self) -> None:
            try:
                while (request := _read_request(self.rfile)) is not None:
                    if not self._answer(*request):
                        break
            except (TimeoutError, OSError, ValueError):
                pass

        def _answer(
            self, method: str, path: str, keep_alive: bool, raw: bytes, arrived: float
        ) -> bool:
            call = method == "POST" and path.rstrip("/").endswith("/chat/completions")
            if call:
                n = calls.started(arrived)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                payload = _completion(body, n, _answer(body))
                ctype = (
                    "text/event-stream"
                    if isinstance(body, dict) and body.get("stream")
                    else "application/json"
                )
                status = "200 OK"
                # The latency counts from the request's first byte: parsing it is the server's
                # time, not the client's.
                time.sleep(max(0.0, arrived + calls.latency_s - time.monotonic()))
            else:
                with calls.lock:
                    calls.counters.other.value += 1
                error = {"error": {"message": f"no route {method} {path}"}}
                payload = json.dumps(error).encode()
                ctype, status = "application/json", "404 Not Found"
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(payload)}\r\n"
                f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            )
            self.wfile.write(head.encode() + payload)
            if call:
                calls.answered(arrived)
            return keep_alive

    return Handler


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048
    block_on_close = False


def _server_main(
    latency_s: float,
    counters: ServerCounters,
    ready: multiprocessing.connection.Connection,
    stop: multiprocessing.synchronize.Event,
    lifetime_s: float,
    parent_pid: int,
    boost: bool = False,
) -> None:
    if boost:
        os.setsid()
        boost_autogroup()
    server = _ThreadingServer(("127.0.0.1", 0), _handler(_Calls(counters, latency_s)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    ready.send(server.server_address[1])
    deadline = time.monotonic() + lifetime_s
    # Stops by itself: when told, when its lifetime ends, or when the script is gone.
    while not stop.wait(0.1) and time.monotonic() < deadline and os.getppid() == parent_pid:
        pass
    server.shutdown()
    server.server_close()


class FixedLatencyServer:
    """The loopback server, in its own process, with calls counted across runs."""

    def __init__(self, latency_s: float, lifetime_s: float, boost: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.latency_s = latency_s
        self.counters = ServerCounters(
            calls=ctx.RawValue("q", 0),
            other=ctx.RawValue("q", 0),
            in_flight_peak=ctx.RawValue("q", 0),
            first_at=ctx.RawValue("d", 0.0),
            last_at=ctx.RawValue("d", 0.0),
            latency_sum=ctx.RawValue("d", 0.0),
        )
        self._stop = ctx.Event()
        parent_end, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_server_main,
            args=(latency_s, self.counters, child_end, self._stop, lifetime_s, os.getpid(), boost),
            daemon=True,
        )
        self._proc.start()
        if not parent_end.poll(30):
            self._proc.kill()
            raise SystemExit("the loopback server did not start within 30 s")
        self.port: int = parent_end.recv()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        """Zero the per-run figures (the server is idle between runs)."""
        c = self.counters
        c.calls.value = c.other.value = c.in_flight_peak.value = 0
        c.first_at.value = c.last_at.value = c.latency_sum.value = 0.0

    def close(self) -> None:
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


# --------------------------------------------------------------------------------------------
# Memory of the whole process tree.


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss bytes) of every process, from /proc/<pid>/stat."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()  # comm may hold spaces and parens
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * PAGE)
    return table


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS bytes summed over root and its descendants, number of processes)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, count, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
            count += 1
            todo.extend(children.get(pid, []))
    return total, count


class TreeSampler(threading.Thread):
    """Samples the tree's RSS every ``interval_s``; kills the tree past ``limit_bytes``."""

    def __init__(self, root: int, interval_s: float, limit_bytes: int) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s, self.limit_bytes = root, interval_s, limit_bytes
        self.peak_bytes = self.peak_procs = 0
        self.over_limit = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            rss, procs = tree_rss(self.root)
            self.peak_bytes = max(self.peak_bytes, rss)
            self.peak_procs = max(self.peak_procs, procs)
            if rss > self.limit_bytes and not self.over_limit:
                self.over_limit = True
                _kill_group(self.root)
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _kill_group(pid: int) -> None:
    """End the process group this script started for the run (its leader is ``pid``)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# The two harnesses.


SELFOPT_YAML = """\
seed: 0
runs: {runs}
models:
  {model}:
    provider: openai
    base_url: {base_url}
    model: {model}
variants:
  native_api: "{{prompt}}"
initial: {{model: {model}, variant: native_api, timeout_s: 60, retries: 1, isolation: i0,
           warmup: false}}
max_candidates: 0       # baseline only: no search, no candidates
"""

TEST_MODULE = """\
import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("throughput.yaml"))
def test_throughput(case, llm):
    case.check(llm.ask(case.prompt))
"""

INSPECT_TASK = '''\
"""Inspect AI side of scripts/throughput.py: the same N prompts as the pytest-selfopt suite."""

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import exact
from inspect_ai.solver import generate


@task
def throughput(prompts: int = 1) -> Task:
    samples = [
        Sample(id=f"p{i:04d}", input=f"Reply with the word w{i:04d}.", target=f"w{i:04d}")
        for i in range(int(prompts))
    ]
    return Task(dataset=MemoryDataset(samples), solver=generate(), scorer=exact())
'''


def write_suite(root: Path, prompts: int, base_url: str) -> None:
    """A pytest-selfopt suite of ``prompts`` cases under ``root`` (its own pytest rootdir)."""
    bench = root / "benchmarks"
    bench.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (bench / "selfopt.yaml").write_text(
        SELFOPT_YAML.format(runs=RUNS, model=MODEL, base_url=base_url)
    )
    lines = ["phase: throughput", "cases:"]
    for i in range(prompts):
        lines += [
            f"  - id: p{i:04d}",
            f"    prompt: {prompt(i)}",
            f"    expect: {{equals: w{i:04d}}}",
        ]
    (bench / "throughput.yaml").write_text("\n".join(lines) + "\n")
    (bench / "test_throughput.py").write_text(TEST_MODULE)


@dataclass
class Result:
    label: str
    prompts: int
    concurrency: int
    calls: int  # chat completions the server answered during the run
    other_requests: int
    samples: int | None  # samples the harness recorded; None: no report to read
    passed: int | None
    window_s: float  # first to last call at the server
    in_flight_peak: int
    server_latency_s: float  # mean, first byte of a call to its answer, at the server
    tree: TreeRun

    def limit(self, latency_s: float) -> float:
        return self.concurrency / latency_s


@dataclass
class TreeRun:
    """What one run of a process tree cost."""

    wall_s: float
    returncode: int
    peak_bytes: int
    peak_procs: int
    aborted: str  # why the run was stopped, "" when it ended by itself
    load: float  # 1-minute load average when it started (other work on the machine)


def measured_env(work: Path) -> dict[str, str]:
    """The environment of a measured run: compiled modules kept under ``work`` (see the module
    docstring, "Bytecode"), whatever ``PYTHONDONTWRITEBYTECODE`` says here."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def boost_autogroup() -> None:
    """In a new session (its own autogroup): give the group nice -19. Silent when not
    allowed (not root); the run is then measured at the machine's normal priority."""
    try:
        Path("/proc/self/autogroup").write_text("-19")
    except OSError:
        pass


def run_tree(
    argv: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    timeout_s: float,
    limit_bytes: int,
    boost: bool = False,
) -> TreeRun:
    """Run ``argv`` in a process group of its own, sampling its tree's memory every 50 ms;
    with ``boost``, in a scheduling group at nice -19 (see ``--boost``)."""
    load = os.getloadavg()[0]
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=boost_autogroup if boost else None,
        )
        sampler = TreeSampler(proc.pid, 0.05, limit_bytes)
        sampler.start()
        aborted = ""
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            aborted = f"over {timeout_s:g} s"
            _kill_group(proc.pid)
            proc.wait()
        wall = time.perf_counter() - start
        sampler.stop()
        _kill_group(proc.pid)  # leftovers of the run (xdist workers), if any
    if sampler.over_limit:
        aborted = f"over {limit_bytes / 2**20:.0f} MB"
    return TreeRun(wall, proc.returncode, sampler.peak_bytes, sampler.peak_procs, aborted, load)


def selfopt_mode(python: str, suite: Path) -> Mode:
    """inprocess when this plugin has ``--selfopt-concurrency``, else xdist."""
    out = subprocess.run(
        [python, "-m", "pytest", "--help"], cwd=suite, capture_output=True, text=True, timeout=120
    ).stdout
    return "inprocess" if "--selfopt-concurrency" in out else "xdist"


def run_selfopt(
    server: FixedLatencyServer,
    work: Path,
    prompts: int,
    concurrency: int,
    mode: Mode,
    python: str,
    timeout_s: float,
    limit_bytes: int,
    boost: bool = False,
) -> Result:
    suite = work / f"selfopt-{prompts}"
    if not suite.exists():
        write_suite(suite, prompts, server.base_url)
    shutil.rmtree(suite / "baselines", ignore_errors=True)  # every run is a first cycle
    parallel = (
        ["-n", str(concurrency)] if mode == "xdist" else ["--selfopt-concurrency", str(concurrency)]
    )
    argv = [
        python,
        "-m",
        "pytest",
        "benchmarks",
        "--selfopt",
        "--selfopt-runs",
        str(RUNS),
        "-q",
        "-p",
        "no:cacheprovider",
        *parallel,
    ]
    env = measured_env(work)
    server.reset()
    log = suite / "pytest.log"
    tree = run_tree(argv, suite, env, log, timeout_s, limit_bytes, boost)
    samples, passed = selfopt_counts(log.read_text(errors="replace"))
    if tree.returncode != 0 and not tree.aborted:
        tail = log.read_text(errors="replace")[-3000:]
        print(f"pytest exited {tree.returncode}:\n{tail}", file=sys.stderr)
    return _result(f"selfopt {mode}", server, prompts, concurrency, samples, passed, tree)


#: pytest's closing line under --selfopt ("2100 samples in 11.58s": every sample, passed or
#: not) and the plugin's line on failed samples ("3 of 2100 samples failed ...").
SAMPLES_LINE = re.compile(r"\b(\d+) samples? in [\d.]+s")
FAILED_LINE = re.compile(r"^(\d+) of \d+ samples failed", re.MULTILINE)


def selfopt_counts(output: str) -> tuple[int | None, int | None]:
    """(samples recorded, passed) from a cycle's terminal output; None when it has no count.
    Read from the output rather than from ``--selfopt-json``, which would add writing a report
    of every sample to the measured run (a user's cycle does not write one)."""
    found = SAMPLES_LINE.findall(output)
    if not found:
        return None, None
    samples = int(found[-1])
    failed = FAILED_LINE.findall(output)
    return samples, samples - (int(failed[-1]) if failed else 0)


INSPECT_LOG_READER = """
import json, pathlib, sys
from inspect_ai.log import read_eval_log
logs = sorted(pathlib.Path(sys.argv[1]).glob("*.eval"), key=lambda p: p.stat().st_mtime)
log = read_eval_log(str(logs[-1]), header_only=True) if logs else None
res = log.results if log else None
acc = [m.value for s in res.scores for k, m in s.metrics.items() if k == "accuracy"] if res else []
done = res.completed_samples if res else None
print(json.dumps({"samples": done, "passed": round(acc[0] * done) if acc and done else None}))
"""


def _inspect_log_counts(inspect_python: str, log_dir: Path) -> tuple[int | None, int | None]:
    """(samples completed, samples scored correct) of the newest Inspect log in ``log_dir``,
    read by Inspect's own reader (its logs are zstd-compressed zips)."""
    out = subprocess.run(
        [inspect_python, "-c", INSPECT_LOG_READER, str(log_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        print(f"cannot read the Inspect log in {log_dir}:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None, None
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return doc["samples"], doc["passed"]


def run_inspect(
    server: FixedLatencyServer,
    work: Path,
    prompts: int,
    concurrency: int,
    inspect_python: str,
    task_file: Path,
    extra: Sequence[str],
    timeout_s: float,
    limit_bytes: int,
    boost: bool = False,
) -> Result:
    """``extra``: further ``inspect eval`` arguments (display, logging)."""
    run_dir = work / f"inspect-{prompts}-{concurrency}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    inspect_bin = Path(inspect_python).parent / "inspect"
    shutil.copy(task_file, run_dir / "inspect_task.py")  # Inspect wants a relative task path
    argv = [
        str(inspect_bin),
        "eval",
        "inspect_task.py",
        "--model",
        f"openai/{MODEL}",
        "--epochs",
        str(RUNS),
        "--max-connections",
        str(concurrency),
        "-T",
        f"prompts={prompts}",
        "--log-dir",
        str(run_dir / "logs"),
        "-M",
        "responses_api=false",  # chat completions, the endpoint pytest-selfopt calls
        *extra,
    ]
    env = {
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "dummy-key",
        "NO_PROXY": "127.0.0.1",
        **measured_env(work),
    }
    server.reset()
    tree = run_tree(argv, run_dir, env, run_dir / "inspect.log", timeout_s, limit_bytes, boost)
    samples, passed = _inspect_log_counts(inspect_python, run_dir / "logs")
    if tree.returncode != 0 and not tree.aborted:
        tail = (run_dir / "inspect.log").read_text(errors="replace")[-3000:]
        print(f"inspect exited {tree.returncode}:\n{tail}", file=sys.stderr)
    return _result("inspect", server, prompts, concurrency, samples, passed, tree)


def _result(
    label: str,
    server: FixedLatencyServer,
    prompts: int,
    concurrency: int,
    samples: int | None,
    passed: int | None,
    tree: TreeRun,
) -> Result:
    c = server.counters
    window = c.last_at.value - c.first_at.value if c.first_at.value else 0.0
    return Result(
        label=label,
        prompts=prompts,
        concurrency=concurrency,
        calls=c.calls.value,
        other_requests=c.other.value,
        samples=samples,
        passed=passed,
        window_s=window,
        in_flight_peak=c.in_flight_peak.value,
        server_latency_s=c.latency_sum.value / c.calls.value if c.calls.value else 0.0,
        tree=tree,
    )


# --------------------------------------------------------------------------------------------
# Output.

HEADER = (
    f"{'run':34} {'calls':>6} {'samples':>7} {'unused':>6} {'wall s':>7} {'calls/s':>8} "
    f"{'limit/s':>7} {'of lim':>6} {'win c/s':>8} {'srv ms':>6} {'inflt':>5} {'peak MB':>8} "
    f"{'procs':>5} "
    f"{'load':>5}"
)


def row(r: Result, latency_s: float, kind: str) -> str:
    name = f"{r.label} {kind} {r.prompts}x{RUNS} C={r.concurrency}"
    t = r.tree
    rate = r.calls / t.wall_s if t.wall_s else 0.0
    limit = r.limit(latency_s)
    win = r.calls / r.window_s if r.window_s > 0 else 0.0
    unused = "-" if r.samples is None else str(r.calls - r.samples)
    samples = "-" if r.samples is None else str(r.samples)
    line = (
        f"{name:34} {r.calls:6d} {samples:>7} {unused:>6} {t.wall_s:7.2f} {rate:8.1f} "
        f"{limit:7.0f} {rate / limit:6.1%} {win:8.1f} {r.server_latency_s * 1000:6.2f} "
        f"{r.in_flight_peak:5d} "
        f"{t.peak_bytes / 2**20:8.0f} {t.peak_procs:5d} {t.load:5.1f}"
    )
    notes = []
    if t.aborted:
        notes.append(f"ABORTED ({t.aborted})")
    elif t.returncode != 0:
        notes.append(f"exit {t.returncode}")
    if r.passed is not None and r.samples is not None and r.passed != r.samples:
        notes.append(f"{r.samples - r.passed} samples failed")
    if r.other_requests:
        notes.append(f"{r.other_requests} requests to other paths")
    return line + ("  " + "; ".join(notes) if notes else "")


def _spread(values: Sequence[float], fmt: str) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompts", type=int, default=300, help="N prompts (default 300)")
    parser.add_argument("--concurrency", "-c", type=int, default=10, help="C calls in flight")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency (50)")
    parser.add_argument(
        "--mode",
        choices=["xdist", "inprocess"],
        default=None,
        help="how C is reached (default: inprocess if supported, else xdist)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the Python whose pytest runs the suite (default: this one)",
    )
    parser.add_argument("--inspect", action="store_true", help="run Inspect AI instead")
    parser.add_argument("--inspect-python", default=None, help="python of the Inspect AI venv")
    parser.add_argument(
        "--inspect-task",
        type=Path,
        default=None,
        help="Inspect task file (default: the one this script writes)",
    )
    parser.add_argument(
        "--inspect-display",
        default="none",
        help="Inspect --display (default none; pytest runs with -q)",
    )
    parser.add_argument(
        "--inspect-extra",
        action="append",
        default=[],
        metavar="ARG",
        help="one more inspect eval argument (repeatable): --inspect-extra=--no-log-realtime",
    )
    parser.add_argument("--repeat", type=int, default=1, help="measure each run this many times")
    parser.add_argument("--no-startup", action="store_true", help="skip the 1-prompt run")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the unmeasured 1-prompt run that compiles the modules first",
    )
    parser.add_argument(
        "--boost",
        action="store_true",
        help="measured tree and server at autogroup nice -19 (shared machine; needs root)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="abort a run after this long (default 600)"
    )
    parser.add_argument(
        "--max-rss-mb",
        type=float,
        default=6144.0,
        help="abort a run whose tree exceeds this RSS (default 6144)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the generated suites and logs here (default: a temp dir)",
    )
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.concurrency < 1 or args.latency_ms <= 0 or args.repeat < 1:
        parser.error("--prompts, --concurrency, --repeat must be >= 1 and --latency-ms > 0")
    if args.inspect and not args.inspect_python:
        parser.error("--inspect needs --inspect-python PATH (the python of a venv with inspect-ai)")
    # The runs start in their own folders: a relative interpreter path is this folder's.
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)
    if args.inspect_python and os.sep in args.inspect_python:
        args.inspect_python = os.path.abspath(args.inspect_python)
    latency_s = args.latency_ms / 1000
    limit_bytes = int(args.max_rss_mb * 2**20)
    sizes = [args.prompts] if args.prompts == 1 or args.no_startup else [1, args.prompts]
    lifetime = (args.timeout_s + 60) * (len(sizes) * args.repeat + 1) + 120
    server = FixedLatencyServer(latency_s, lifetime, boost=args.boost)
    try:
        with workdir(args.workdir) as work:
            if args.inspect:
                task_file = args.inspect_task
                if task_file is None:
                    task_file = work / "inspect_task.py"
                    task_file.write_text(INSPECT_TASK)
                what = f"Inspect AI via {args.inspect_python}"
            else:
                mode: Mode = args.mode
                if mode is None:
                    write_suite(work / "selfopt-1", 1, server.base_url)
                    mode = selfopt_mode(args.python, work / "selfopt-1")
                what = f"pytest-selfopt ({mode}) via {args.python}"
            print(f"server {server.base_url}, latency {args.latency_ms:g} ms; {what}")
            print(HEADER, flush=True)
            results: dict[int, list[Result]] = {n: [] for n in sizes}
            warmup = [] if args.no_warmup else [(1, "warm-up")]
            plan = warmup + [
                (n, "start-up" if n == 1 and len(sizes) > 1 else "run")
                for _ in range(args.repeat)
                for n in sizes
            ]
            for n, kind in plan:
                if args.inspect:
                    r = run_inspect(
                        server,
                        work,
                        n,
                        args.concurrency,
                        args.inspect_python,
                        task_file,
                        ["--display", args.inspect_display, *args.inspect_extra],
                        args.timeout_s,
                        limit_bytes,
                        args.boost,
                    )
                else:
                    r = run_selfopt(
                        server,
                        work,
                        n,
                        args.concurrency,
                        mode,
                        args.python,
                        args.timeout_s,
                        limit_bytes,
                        args.boost,
                    )
                if kind != "warm-up":
                    results[n].append(r)
                print(row(r, latency_s, kind), flush=True)
            if args.repeat > 1:
                print("over repeats (min / median / max):")
                for n, rs in results.items():
                    walls = [r.tree.wall_s for r in rs]
                    rates = [r.calls / r.tree.wall_s for r in rs if r.tree.wall_s]
                    mbs = [r.tree.peak_bytes / 2**20 for r in rs]
                    print(
                        f"  {n}x{RUNS}: wall {_spread(walls, '.2f')} s, "
                        f"{_spread(rates, '.0f')} calls/s, peak {_spread(mbs, '.0f')} MB"
                    )
                if len(sizes) > 1 and results[1] and results[args.prompts]:
                    startup = statistics.median(r.tree.wall_s for r in results[1])
                    after = [
                        r.calls / (r.tree.wall_s - startup)
                        for r in results[args.prompts]
                        if r.tree.wall_s > startup
                    ]
                    wins = [r.calls / r.window_s for r in results[args.prompts] if r.window_s]
                    print(
                        f"  {args.prompts}x{RUNS} after the median start-up ({startup:.2f} s): "
                        f"{_spread(after, '.0f')} calls/s; first to last call: "
                        f"{_spread(wins, '.0f')} calls/s"
                    )
    finally:
        server.close()
    print(
        "columns: unused = server calls - samples recorded; limit/s = C / latency; "
        "win c/s = calls / (last - first call at the server); srv ms = mean time from a "
        "call's first byte to its answer at the server; inflt = peak calls in flight "
        "at the server; peak MB = peak RSS summed over the process tree; load = 1-min load "
        "average at the start of the run (it still holds the tail of the previous run)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
