"""Phase 2, evaluate: samples -> per-spec statistics (docs/architecture.md, "Data flow of a cycle").

Samples are held as columns (``SampleColumns``: numpy arrays plus small string
vocabularies), not as a list of objects, so that a million of them fit in tens of megabytes
and are grouped by one sort instead of a Python loop per sample. The only per-sample Python
work left is building the columns and the per-case patterns, which *are* per-sample output.

Definitions (per phase and spec):

* run accuracy: the fraction of the spec's cases (distinct case ids seen for it) that passed
  in that run; a (run, case) cell without a sample counts as not passed, a cell with several
  samples passes when any of them passed;
* median, mean, population variance (``ddof=0``, as the seed) of the run accuracies;
* latency p50/p95 of ``latency_s`` (linear interpolation);
* restraint: mean of the samples that have one, ``None`` when none has;
* errored: samples whose error kind is a transport kind (``TRANSPORT_ERROR_KINDS``);
* patterns: per case, its samples in run order: by run number, then by ``started_at``
  within a run (a test that asks several times). Never completion order, which depends on
  the worker count and on scheduling: the same samples give the same patterns, flip rates
  and diagnoses under ``-n 0`` and ``-n 2`` (docs/architecture.md, "Data flow of a cycle").

Nothing is rounded here; the file writers round. Output holds builtins only.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pytest_selfopt.loop.types import TRANSPORT_ERROR_KINDS, CasePattern, Sample, SpecStats

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_NAN = float("nan")
# (column, default) of the per-sample fields, as named on ``Sample``.
_CODED = ("phase", "spec_id", "case_id", "worker", "error_kind")
_INTS = (("run", 0), ("input_tokens", 0), ("output_tokens", 0))
_FLOATS = (("latency_s", 0.0), ("started_at", 0.0))
_OPTIONAL_FLOATS = ("restraint", "cost")


def _sort_key(value: str | None) -> tuple[bool, str]:
    return (value is not None, value or "")


def _sorted_vocab(codes: IntArray, vocab: Sequence[Any]) -> tuple[IntArray, tuple[Any, ...]]:
    """Renumber codes so that code order is the vocabulary's sort order (None first)."""
    order = sorted(range(len(vocab)), key=lambda i: _sort_key(vocab[i]))
    remap = np.empty(len(vocab), dtype=np.int64)
    remap[order] = np.arange(len(vocab), dtype=np.int64)
    new_codes = remap[codes] if len(vocab) else codes
    return new_codes.astype(np.int64, copy=False), tuple(vocab[i] for i in order)


@dataclass(frozen=True, eq=False)
class SampleColumns:
    """Samples as columns. String fields are codes into sorted vocabularies.

    ``restraint`` and ``cost`` hold NaN where the sample had ``None``.
    """

    phase: IntArray
    phases: tuple[str, ...]
    spec: IntArray
    spec_ids: tuple[str, ...]
    case: IntArray
    case_ids: tuple[str, ...]
    worker: IntArray
    workers: tuple[str, ...]
    error: IntArray
    error_kinds: tuple[str | None, ...]
    run: IntArray
    passed: BoolArray
    restraint: FloatArray
    latency_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    cost: FloatArray
    started_at: FloatArray

    def __len__(self) -> int:
        return int(self.run.shape[0])

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> SampleColumns:
        rows = samples if isinstance(samples, Sequence) else list(samples)
        return cls._build(rows, lambda row, name, default: getattr(row, name))

    @classmethod
    def from_dicts(cls, rows: Iterable[Mapping[str, Any]]) -> SampleColumns:
        """From ``Sample.to_dict()`` records (what crosses the xdist channel)."""
        seq = rows if isinstance(rows, Sequence) else list(rows)
        return cls._build(seq, lambda row, name, default: row.get(name, default))

    @classmethod
    def _build(cls, rows: Sequence[Any], get: Callable[[Any, str, Any], Any]) -> SampleColumns:
        """Column by column: one C-level pass per field instead of one Python call per cell."""
        n = len(rows)
        coded: dict[str, tuple[IntArray, tuple[Any, ...]]] = {}
        for name in _CODED:
            default = None if name == "error_kind" else "main" if name == "worker" else ""
            index: dict[Any, int] = {}
            codes = np.fromiter(
                (index.setdefault(get(r, name, default), len(index)) for r in rows),
                dtype=np.int64,
                count=n,
            )
            coded[name] = _sorted_vocab(codes, list(index))
        ints = {
            name: np.fromiter((get(r, name, d) for r in rows), dtype=np.int64, count=n)
            for name, d in _INTS
        }
        floats = {
            name: np.fromiter((get(r, name, d) for r in rows), dtype=np.float64, count=n)
            for name, d in _FLOATS
        }
        for name in _OPTIONAL_FLOATS:
            floats[name] = np.fromiter(
                (_NAN if (v := get(r, name, None)) is None else v for r in rows),
                dtype=np.float64,
                count=n,
            )
        passed = np.fromiter((bool(get(r, "passed", False)) for r in rows), dtype=np.bool_, count=n)
        return cls(
            phase=coded["phase"][0],
            phases=coded["phase"][1],
            spec=coded["spec_id"][0],
            spec_ids=coded["spec_id"][1],
            case=coded["case_id"][0],
            case_ids=coded["case_id"][1],
            worker=coded["worker"][0],
            workers=coded["worker"][1],
            error=coded["error_kind"][0],
            error_kinds=coded["error_kind"][1],
            run=ints["run"],
            passed=passed,
            restraint=floats["restraint"],
            latency_s=floats["latency_s"],
            input_tokens=ints["input_tokens"],
            output_tokens=ints["output_tokens"],
            cost=floats["cost"],
            started_at=floats["started_at"],
        )

    @classmethod
    def concat(cls, parts: Sequence[SampleColumns]) -> SampleColumns:
        """Merge column sets (e.g. CI shards) into one, re-coding the vocabularies."""
        merged: dict[str, Any] = {}
        for codes_name, vocab_name in (
            ("phase", "phases"),
            ("spec", "spec_ids"),
            ("case", "case_ids"),
            ("worker", "workers"),
            ("error", "error_kinds"),
        ):
            index: dict[Any, int] = {}
            chunks = []
            for part in parts:
                vocab = getattr(part, vocab_name)
                lut = np.array([index.setdefault(v, len(index)) for v in vocab], dtype=np.int64)
                codes = getattr(part, codes_name)
                chunks.append(lut[codes] if len(vocab) else codes)
            all_codes = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
            merged[codes_name], merged[vocab_name] = _sorted_vocab(all_codes, list(index))
        for name in (
            "run",
            "passed",
            "restraint",
            "latency_s",
            "input_tokens",
            "output_tokens",
            "cost",
            "started_at",
        ):
            arrays = [getattr(p, name) for p in parts]
            merged[name] = np.concatenate(arrays) if arrays else np.zeros(0)
        return cls(**merged)


class SampleColumnsBuilder:
    """Collects samples one at a time in compact typed buffers (bounded memory while a session
    streams results in), then ``build()``\\ s the columns."""

    def __init__(self) -> None:
        self._index: dict[str, dict[Any, int]] = {name: {} for name in _CODED}
        self._codes: dict[str, array[int]] = {name: array("q") for name in _CODED}
        self._ints: dict[str, array[int]] = {name: array("q") for name, _ in _INTS}
        self._floats: dict[str, array[float]] = {
            name: array("d") for name in (*(n for n, _ in _FLOATS), *_OPTIONAL_FLOATS)
        }
        self._passed = array("b")

    def __len__(self) -> int:
        return len(self._passed)

    def add(self, sample: Sample | Mapping[str, Any]) -> None:
        row = sample.to_dict() if isinstance(sample, Sample) else sample
        for name in _CODED:
            default = None if name == "error_kind" else "main" if name == "worker" else ""
            index = self._index[name]
            self._codes[name].append(index.setdefault(row.get(name, default), len(index)))
        for name, idefault in _INTS:
            self._ints[name].append(int(row.get(name, idefault)))
        for name, fdefault in _FLOATS:
            self._floats[name].append(float(row.get(name, fdefault)))
        for name in _OPTIONAL_FLOATS:
            value = row.get(name)
            self._floats[name].append(_NAN if value is None else float(value))
        self._passed.append(1 if row.get("passed") else 0)

    def build(self) -> SampleColumns:
        coded = {
            name: _sorted_vocab(
                np.frombuffer(self._codes[name], dtype=np.int64).copy()
                if len(self._codes[name])
                else np.zeros(0, dtype=np.int64),
                list(self._index[name]),
            )
            for name in _CODED
        }

        def ints(name: str) -> IntArray:
            return np.array(self._ints[name], dtype=np.int64)

        def floats(name: str) -> FloatArray:
            return np.array(self._floats[name], dtype=np.float64)

        return SampleColumns(
            phase=coded["phase"][0],
            phases=coded["phase"][1],
            spec=coded["spec_id"][0],
            spec_ids=coded["spec_id"][1],
            case=coded["case_id"][0],
            case_ids=coded["case_id"][1],
            worker=coded["worker"][0],
            workers=coded["worker"][1],
            error=coded["error_kind"][0],
            error_kinds=coded["error_kind"][1],
            run=ints("run"),
            passed=np.array(self._passed, dtype=np.bool_),
            restraint=floats("restraint"),
            latency_s=floats("latency_s"),
            input_tokens=ints("input_tokens"),
            output_tokens=ints("output_tokens"),
            cost=floats("cost"),
            started_at=floats("started_at"),
        )


def as_columns(samples: Sequence[Sample] | SampleColumns) -> SampleColumns:
    return samples if isinstance(samples, SampleColumns) else SampleColumns.from_samples(samples)


def evaluate(samples: Sequence[Sample] | SampleColumns) -> dict[tuple[str, str], SpecStats]:
    """Per (phase, spec id), the statistics the gates and diagnosis read."""
    cols = as_columns(samples)
    if len(cols) == 0:
        return {}
    key = cols.phase * max(len(cols.spec_ids), 1) + cols.spec
    # One sort: by group, then case, then run, then time: each case's pattern is contiguous
    # and in run order (np.lexsort: the last key is the primary one).
    order = np.lexsort((cols.started_at, cols.run, cols.case, key))
    key_s = key[order]
    bounds = np.flatnonzero(np.diff(key_s)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(key_s)]))
    transport = np.array([k in TRANSPORT_ERROR_KINDS for k in cols.error_kinds], dtype=np.bool_)
    error_obj = np.array(cols.error_kinds, dtype=object)
    worker_obj = np.array(cols.workers, dtype=object)
    out: dict[tuple[str, str], SpecStats] = {}
    for a, b in zip(starts.tolist(), ends.tolist()):
        idx = order[a:b]
        phase = cols.phases[int(cols.phase[idx[0]])]
        spec_id = cols.spec_ids[int(cols.spec[idx[0]])]
        out[(phase, spec_id)] = _spec_stats(
            cols, idx, phase, spec_id, transport, error_obj, worker_obj
        )
    return out


def _spec_stats(
    cols: SampleColumns,
    idx: IntArray,
    phase: str,
    spec_id: str,
    transport: BoolArray,
    error_obj: npt.NDArray[np.object_],
    worker_obj: npt.NDArray[np.object_],
) -> SpecStats:
    """Statistics of one group; ``idx`` is sorted by case, run, started_at."""
    case = cols.case[idx]
    run = cols.run[idx]
    passed = cols.passed[idx]
    n = len(idx)
    case_starts = np.concatenate(([0], np.flatnonzero(np.diff(case)) + 1))
    case_ends = np.concatenate((case_starts[1:], [n]))
    n_cases = len(case_starts)
    case_pos = np.repeat(np.arange(n_cases), case_ends - case_starts)
    run_numbers, run_pos = np.unique(run, return_inverse=True)
    n_runs = len(run_numbers)
    cell = (
        np.bincount(
            run_pos.ravel() * n_cases + case_pos,
            weights=passed.astype(np.float64),
            minlength=n_runs * n_cases,
        ).reshape(n_runs, n_cases)
        > 0
    )
    accuracies = cell.sum(axis=1) / n_cases
    latency = cols.latency_s[idx]
    p50, p95 = np.percentile(latency, [50, 95])
    restraint = cols.restraint[idx]
    restraint = restraint[~np.isnan(restraint)]
    cost = cols.cost[idx]
    cost = cost[~np.isnan(cost)]
    error = cols.error[idx]
    case_ids = tuple(cols.case_ids[c] for c in case[case_starts].tolist())
    passed_l = passed.tolist()
    runs_l = run.tolist()
    errors_l = error_obj[error].tolist() if n else []
    workers_l = worker_obj[cols.worker[idx]].tolist() if n else []
    started_l = cols.started_at[idx].tolist()
    patterns = tuple(
        CasePattern(
            case_id=cid,
            runs=tuple(runs_l[s:e]),
            outcomes=tuple(passed_l[s:e]),
            error_kinds=tuple(errors_l[s:e]),
            workers=tuple(workers_l[s:e]),
            started_at=tuple(started_l[s:e]),
        )
        for cid, s, e in zip(case_ids, case_starts.tolist(), case_ends.tolist())
    )
    return SpecStats(
        phase=phase,
        spec_id=spec_id,
        runs=n_runs,
        run_accuracies=tuple(float(x) for x in accuracies.tolist()),
        median=float(np.median(accuracies)),
        mean=float(np.mean(accuracies)),
        variance=float(np.var(accuracies)),
        latency_p50_s=float(p50),
        latency_p95_s=float(p95),
        restraint=float(np.mean(restraint)) if restraint.size else None,
        input_tokens=int(cols.input_tokens[idx].sum()),
        output_tokens=int(cols.output_tokens[idx].sum()),
        cost=float(cost.sum()) if cost.size else None,
        samples=n,
        errored=int(transport[error].sum()),
        case_ids=case_ids,
        run_numbers=tuple(int(r) for r in run_numbers.tolist()),
        passes=tuple(tuple(row) for row in cell.tolist()),
        patterns=patterns,
    )


def empty_stats(phase: str, spec_id: str) -> SpecStats:
    """Stats of a planned spec that produced no sample: zero runs, so the gates HOLD it."""
    return SpecStats(
        phase=phase,
        spec_id=spec_id,
        runs=0,
        run_accuracies=(),
        median=0.0,
        mean=0.0,
        variance=0.0,
        latency_p50_s=0.0,
        latency_p95_s=0.0,
        restraint=None,
        input_tokens=0,
        output_tokens=0,
        cost=None,
        samples=0,
        errored=0,
        case_ids=(),
        run_numbers=(),
        passes=(),
        patterns=(),
    )
