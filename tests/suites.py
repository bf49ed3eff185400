"""Helpers to lay out a benchmark suite inside a pytester directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "benchmarks"
FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")


def copy_example(pytester: pytest.Pytester, **overrides: Any) -> Path:
    """The repository's example suite in ``pytester.path/benchmarks``; config keys overridden."""
    target = pytester.path / "benchmarks"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    if overrides:
        path = target / "selfopt.yaml"
        config = yaml.safe_load(path.read_text())
        config.update(overrides)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def snapshot(pytester: pytest.Pytester) -> dict[str, bytes]:
    folder = pytester.path / "baselines"
    return {n: (folder / n).read_bytes() for n in FILES if (folder / n).exists()}


def history(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    data = json.loads((pytester.path / "baselines" / "history.json").read_text())
    cycles: list[dict[str, Any]] = data["cycles"]
    return cycles


def decisions(entry: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(phase, label) -> verdict, for comparing cycles."""
    return {
        (phase, c["label"]): c["decision"]["verdict"]
        for phase, rec in entry["phases"].items()
        for c in rec["candidates"]
    }


def recommendations(entry: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (phase, r["action"], str(r["value"]))
        for phase, rec in entry["phases"].items()
        for r in rec["recommendations"]
    }
