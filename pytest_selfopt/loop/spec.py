"""The spec: one full configuration, immutable, identified by a hash of its canonical knobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

Scalar = str | int | float | bool

#: The six knobs every spec has, in canonical order. User-declared knobs follow, sorted.
CORE_KNOBS: tuple[str, ...] = ("model", "variant", "timeout_s", "retries", "isolation", "warmup")
ISOLATIONS: tuple[str, ...] = ("i0", "i1")


def _canonical_scalar(knob: str, value: Any) -> Scalar:
    """One spelling per value, so the same spec always hashes the same."""
    if knob == "timeout_s":
        return float(value)
    if knob == "retries":
        return int(value)
    if knob == "warmup":
        return bool(value)
    if knob in ("model", "variant", "isolation"):
        return str(value)
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(value)
    raise TypeError(
        f"knob {knob!r}: expected a string, number or boolean, got {type(value).__name__}"
    )


@dataclass(frozen=True)
class Spec:
    """One full configuration. Immutable; identified by a hash of its canonical knobs."""

    model: str
    variant: str
    timeout_s: float
    retries: int
    isolation: str
    warmup: bool
    extra: tuple[tuple[str, Scalar], ...] = ()

    def __post_init__(self) -> None:
        for knob in CORE_KNOBS:
            object.__setattr__(self, knob, _canonical_scalar(knob, getattr(self, knob)))
        extra = tuple(sorted((str(k), _canonical_scalar(str(k), v)) for k, v in self.extra))
        object.__setattr__(self, "extra", extra)

    def knobs(self) -> dict[str, Scalar]:
        """Canonical knob mapping: the six core knobs in order, then extras sorted by name."""
        out: dict[str, Scalar] = {k: getattr(self, k) for k in CORE_KNOBS}
        out.update(self.extra)
        return out

    @property
    def id(self) -> str:
        """Short stable hash of the canonical form (10 hex digits)."""
        blob = json.dumps(self.knobs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def get(self, knob: str) -> Scalar:
        knobs = self.knobs()
        if knob not in knobs:
            raise KeyError(knob)
        return knobs[knob]

    def with_knob(self, knob: str, value: Scalar) -> Spec:
        """The same spec with one knob changed (core or user-declared)."""
        if knob in CORE_KNOBS:
            return replace(self, **{knob: value})  # type: ignore[arg-type]
        extra = dict(self.extra)
        extra[knob] = value
        return replace(self, extra=tuple(extra.items()))

    def diff(self, other: Spec) -> dict[str, tuple[Scalar | None, Scalar | None]]:
        """Knobs whose value differs, as ``{knob: (other's value, self's value)}``."""
        mine, theirs = self.knobs(), other.knobs()
        out: dict[str, tuple[Scalar | None, Scalar | None]] = {}
        for knob in list(theirs) + [k for k in mine if k not in theirs]:
            if mine.get(knob) != theirs.get(knob):
                out[knob] = (theirs.get(knob), mine.get(knob))
        return out

    def label(self, baseline: Spec) -> str:
        """What differs from ``baseline``: ``variant=atomic``; ``baseline`` when nothing does."""
        changes = self.diff(baseline)
        if not changes:
            return "baseline"
        return ",".join(f"{k}={format_scalar(new)}" for k, (_, new) in changes.items())

    def to_dict(self) -> dict[str, Scalar]:
        return self.knobs()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        core = {k: data[k] for k in CORE_KNOBS}
        extra = tuple((k, v) for k, v in data.items() if k not in CORE_KNOBS and k != "spec_id")
        return cls(**core, extra=extra)


def format_scalar(value: Scalar | None) -> str:
    """Human spelling used in labels and ids: ``60`` not ``60.0``, ``true`` not ``True``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
