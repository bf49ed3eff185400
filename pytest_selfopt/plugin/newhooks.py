"""Hooks pytest-selfopt adds, for ``conftest.py`` files and plugins.

Pattern borrowed from pytest-benchmark: a ``firstresult`` ``generate_*`` hook replaces a
built-in behaviour; plain hooks return additions (policies) or observe results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_selfopt.loop.outcome import CycleOutcome
    from pytest_selfopt.loop.policies.base import GatePolicy
    from pytest_selfopt.loop.types import LoopSettings, LoopState, PhasePlan


@pytest.hookspec(firstresult=True)
def pytest_selfopt_generate_plan(
    phase: str, state: LoopState, settings: LoopSettings
) -> PhasePlan | None:
    """Return the phase's plan (baseline + candidates) to replace candidate generation.

    Called on the controller only, once per known phase, in ``pytest_configure``.
    Return ``None`` to keep the built-in one-factor-at-a-time generation.
    """


@pytest.hookspec
def pytest_selfopt_make_policies(config: pytest.Config) -> Mapping[str, GatePolicy] | None:
    """Return extra gate policies by name, e.g. ``{"strict": StrictPolicy()}``; select one
    with ``policy: strict`` in the suite config.

    Like xdist's ``pytest_xdist_make_scheduler``, the hook returns the objects: nothing is
    registered globally. A policy implements ``pytest_selfopt.loop.policies.GatePolicy``.
    """


@pytest.hookspec
def pytest_selfopt_cycle_complete(outcome: CycleOutcome, written: list[str]) -> None:
    """Called on the controller after a cycle was decided (and written, unless a dry run)."""
