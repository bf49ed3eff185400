"""pytest-selfopt: LLM benchmarks as tests, and a harness that optimizes itself.

Public API for test files and applications: ``load_cases`` (parametrize tests with a cases
file) and ``load_routing`` (read what the benchmark learned: ``baselines/routing.yaml``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Case", "load_cases", "load_routing"]


def __getattr__(name: str) -> Any:
    # Lazy, so that loading the pytest plugin does not import what a session may not use.
    if name in ("Case", "load_cases"):
        from pytest_selfopt.suite import cases

        return getattr(cases, name)
    if name == "load_routing":
        from pytest_selfopt.store.files import load_routing

        return load_routing
    raise AttributeError(name)
