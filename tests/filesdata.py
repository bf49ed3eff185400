"""Committed-file fixtures shared by test_files.py, test_filesformat.py, test_diff_friendly.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route
from pytest_selfopt.store.files import write_cycle

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
METRICS: dict[str, Any] = {
    "runs": 7,
    "median": 0.6667,
    "mean": 0.6429,
    "variance": 0.0051,
    "restraint": 0.95,
    "latency_p50_s": 0.41,
    "latency_p95_s": 1.2,
    "input_tokens": 1200,
    "output_tokens": 340,
    "cost": None,
    "samples": 42,
    "errored": 1,
}


def baselines_of(
    atomic: Spec = BASE, metrics: dict[str, Any] | None = None
) -> dict[str, PhaseBaseline]:
    return {
        "atomic": PhaseBaseline(
            "atomic",
            atomic,
            dict(metrics or METRICS),
            1,
            "variant=atomic: PROMOTE: median 0.833 > 0.667",
        ),
        "extended": PhaseBaseline(
            "extended", BASE.with_knob("model", "claude-haiku"), None, 0, "initial spec"
        ),
    }


def routes_of(atomic: Spec = BASE) -> dict[str, Route]:
    return {
        "atomic": Route("atomic", atomic, ("claude-haiku",)),
        "extended": Route("extended", BASE.with_knob("model", "claude-haiku")),
    }


def audit_of(cycle: int) -> list[AuditRecord]:
    return [
        AuditRecord(
            cycle, "atomic", "decision", BASE.id, "baseline", {"verdict": "HOLD", "median": 2 / 3}
        )
    ]


def entry_of(cycle: int) -> dict[str, Any]:
    return {"cycle": cycle, "seed": 1, "runs": 7, "policy": "seed", "phases": {}, "pending": []}


def write(folder: Path, cycle: int, sha: str | None, **kw: Any) -> list[Path]:
    args: dict[str, Any] = {
        "baselines": baselines_of(),
        "routes": routes_of(),
        "history_entry": entry_of(cycle),
        "audit": audit_of(cycle),
        "expected_baseline_sha256": sha,
    }
    args.update(kw)
    return write_cycle(folder, **args)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}
