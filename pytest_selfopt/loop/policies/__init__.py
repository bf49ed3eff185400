"""The built-in gate policies, as fresh objects: the caller owns them (no registry)."""

from __future__ import annotations

from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.policies.paired import PairedPolicy
from pytest_selfopt.loop.policies.seed import SeedPolicy


def builtin_policies() -> dict[str, GatePolicy]:
    """``{"paired": PairedPolicy(), "seed": SeedPolicy()}``, a new dict on every call: add to
    it or wrap its values freely (the plugin adds those of ``pytest_selfopt_make_policies``)."""
    return {"paired": PairedPolicy(), "seed": SeedPolicy()}
