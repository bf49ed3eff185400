"""Reading pytest nodes duck-typed: a test's phase, its case and its (spec, run) point.

No pytest import: these read markers and ``callspec`` params, which is all they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_selfopt.plugin.codec import Point
from pytest_selfopt.suite.cases import Case


def phase_of(definition: Any) -> str | None:
    """A test's phase: its ``selfopt_phase`` marker, else the phase of its Case params."""
    name = marker_phase(definition)
    if name is not None:
        return name
    phases: set[str] = set()
    for mark in definition.iter_markers("parametrize"):
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", ())
        for value in values:
            for v in (
                value.values
                if hasattr(value, "values") and not isinstance(value, Case)
                else (value,)
            ):
                items = v if isinstance(v, tuple) else (v,)
                phases.update(x.phase for x in items if isinstance(x, Case))
    if len(phases) > 1:
        raise ValueError(
            f"{definition.nodeid}: cases of several phases ({', '.join(sorted(phases))}) in one "
            "test; split them or mark the test with @pytest.mark.selfopt_phase(NAME)"
        )
    return phases.pop() if phases else None


def marker_phase(node: Any) -> str | None:
    marker = node.get_closest_marker("selfopt_phase")
    return str(marker.args[0]) if marker is not None and marker.args else None


def module_phase(node: Any) -> str:
    """No marker and no Case params: the module name without ``test_``."""
    name = Path(str(node.path)).stem
    return name.removeprefix("test_")


def point_of(item: Any) -> Point | None:
    callspec = getattr(item, "callspec", None)
    point = callspec.params.get("selfopt_point") if callspec is not None else None
    return point if isinstance(point, Point) else None


def case_of(node: Any) -> Case | None:
    callspec = getattr(node, "callspec", None)
    if callspec is None:
        return None
    cases = [v for v in callspec.params.values() if isinstance(v, Case)]
    return cases[0] if len(cases) == 1 else None


CONFIG_ERROR_MARK = "bad input: "


def collection_error(nodeid: str, text: str) -> str:
    """One line for a collection error: a CaseError/ConfigError's own message when that is
    what broke (it names file, key and expectation), else the last line of the report."""
    for line in reversed(text.splitlines()):
        for kind in ("CaseError: ", "ConfigError: "):
            if kind in line:
                return CONFIG_ERROR_MARK + line.split(kind, 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{nodeid}: {lines[-1] if lines else 'failed'}"
