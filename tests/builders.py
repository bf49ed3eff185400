"""Shared builders for loop-level tests: specs, samples from a pass matrix, their statistics
through the real ``evaluate``, and loop settings with the documented defaults.

A pass matrix is ``rows[run][case]`` (True: the sample passed); cases are named ``c000``,
``c001``, ... so that case order is name order. Use these instead of a copy per test file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import GateSettings, LoopSettings, Sample, SearchSpace, SpecStats

#: The example's initial spec (benchmarks/selfopt.yaml).
BASE = Spec(
    model="lfm", variant="native_api", timeout_s=60, retries=1, isolation="i0", warmup=False
)


def case_name(index: int) -> str:
    return f"c{index:03d}"


def sample(
    spec: Spec = BASE,
    case: str = "c000",
    run: int = 1,
    passed: bool = True,
    *,
    phase: str = "p",
    error: str | None = None,
    **fields: Any,
) -> Sample:
    """One sample; a failed one is a wrong answer unless ``error`` names another kind."""
    values: dict[str, Any] = {
        "restraint": None,
        "latency_s": 0.1,
        "total_latency_s": 0.1,
        "attempts": 1,
        "started_at": float(run),
    }
    values.update(fields)
    return Sample(
        phase=phase,
        spec_id=spec.id,
        case_id=case,
        run=run,
        passed=passed,
        error_kind=None if passed else (error or "wrong_answer"),
        **values,
    )


def samples(
    spec: Spec,
    rows: Sequence[Sequence[bool]],
    *,
    first_run: int = 1,
    phase: str = "p",
    skip: Iterable[tuple[int, int]] = (),
    error: str | None = None,
) -> list[Sample]:
    """The samples of a pass matrix ``rows[run][case]``; ``skip``: (run index, case index)
    cells never sampled. ``started_at`` follows run then case order."""
    skipped = frozenset(skip)
    return [
        sample(
            spec,
            case_name(j),
            first_run + i,
            bool(ok),
            phase=phase,
            error=error,
            started_at=float((first_run + i) * 1000 + j),
        )
        for i, row in enumerate(rows)
        for j, ok in enumerate(row)
        if (i, j) not in skipped
    ]


def marks(table: Mapping[str, str]) -> list[list[bool]]:
    """``{"c000": "PPF", "c001": "PPP"}`` (cases in name order) -> ``rows[run][case]``."""
    columns = [table[name] for name in sorted(table)]
    return [[col[i] == "P" for col in columns] for i in range(len(columns[0]))]


def stats(items: Sequence[Sample]) -> SpecStats:
    """The statistics of samples of exactly one (phase, spec), through ``evaluate``."""
    (only,) = evaluate(list(items)).values()
    return only


def stats_of(spec: Spec, rows: Sequence[Sequence[bool]], **kwargs: Any) -> SpecStats:
    return stats(samples(spec, rows, **kwargs))


def gates(**overrides: Any) -> GateSettings:
    return GateSettings(**overrides)


def settings(
    *,
    initial: Spec = BASE,
    search: Mapping[str, Sequence[Any]] | None = None,
    gate: GateSettings | None = None,
    **overrides: Any,
) -> LoopSettings:
    """Loop settings as a suite config would give them; ``search`` is ``{knob: values}``."""
    knobs = search if search is not None else {"variant": ("native_api", "atomic")}
    values: dict[str, Any] = {
        "max_candidates": 4,
        "fallback_chain": ("lfm", "claude-haiku"),
        "runs": 7,
        "seed": 7,
        "policy": "seed",
    }
    values.update(overrides)
    return LoopSettings(
        initial=initial,
        search=SearchSpace(tuple((k, tuple(v)) for k, v in knobs.items())),
        gates=gate or GateSettings(),
        **values,
    )
