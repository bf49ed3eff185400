"""Hooks pytest-selfopt adds, for ``conftest.py`` files and plugins.

Pattern borrowed from pytest-benchmark: a ``firstresult`` ``generate_*`` hook replaces a
built-in behaviour; plain hooks extend registries or observe results.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .loop.types import CycleOutcome, LoopSettings, LoopState, PhasePlan


@pytest.hookspec(firstresult=True)
def pytest_selfopt_generate_plan(
    phase: str, state: LoopState, settings: LoopSettings
) -> PhasePlan | None:
    """Return the phase's plan (baseline + candidates) to replace candidate generation.

    Called on the controller only, once per known phase, in ``pytest_configure``.
    Return ``None`` to keep the built-in one-factor-at-a-time generation.
    """


@pytest.hookspec
def pytest_selfopt_register_policies(policies: MutableMapping[str, Any]) -> None:
    """Add gate policies: ``policies["mine"] = MyPolicy()``; select with ``policy: mine``.

    A policy has ``name`` and ``decide(phase, baseline, candidates, settings, labels)``
    returning one ``Decision`` per candidate (see ``pytest_selfopt.loop.decide``).
    """


@pytest.hookspec
def pytest_selfopt_cycle_complete(outcome: CycleOutcome, written: list[str]) -> None:
    """Called on the controller after a cycle was decided (and written, unless a dry run)."""
