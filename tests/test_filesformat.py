"""Formats of the committed files: deterministic dumps, documented layout, round trips."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from filesdata import BASE, METRICS, audit_of, baselines_of, routes_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route
from pytest_selfopt.store.formats import (
    dump_baseline,
    dump_history,
    dump_log_lines,
    dump_routing,
    yaml_float,
    yaml_str,
)
from pytest_selfopt.store.parse import parse_baseline, parse_routing


def test_dump_is_byte_identical_and_idempotent_with_fixed_precision() -> None:
    noisy = dict(METRICS, median=0.83333333333, variance=0.001234567)
    first = dump_baseline(baselines_of(metrics=noisy))
    assert first == dump_baseline(baselines_of(metrics=noisy))
    assert "      median: 0.8333\n" in first and "      variance: 0.0012\n" in first
    again = dump_baseline(parse_baseline(first, "baseline.yaml"))
    assert again == first
    assert first.endswith("\n") and not first.endswith("\n\n")
    assert first.startswith("# pytest-selfopt baseline: written by `pytest --selfopt`")
    assert dump_routing(routes_of()) == dump_routing(parse_routing(dump_routing(routes_of()), "r"))


def test_baseline_layout_matches_the_documented_shape() -> None:
    text = dump_baseline(baselines_of())
    lines = text.splitlines()
    start = lines.index("  atomic:")
    assert lines[start : start + 13] == [
        "  atomic:",
        "    spec:",
        "      model: lfm",
        "      variant: native_api",
        "      timeout_s: 60",
        "      retries: 1",
        "      isolation: i0",
        "      warmup: false",
        f"    spec_id: {BASE.id}",
        "    promoted_in_cycle: 1",
        '    reason: "variant=atomic: PROMOTE: median 0.833 > 0.667"',
        "    metrics:",
        "      runs: 7",
    ]
    assert "    metrics: null" in lines  # the unmeasured initial spec of "extended"
    assert lines.index("  atomic:") < lines.index("  extended:")


def test_routing_shape_has_fallbacks_extras_and_spec_id() -> None:
    spec = BASE.with_knob("temperature", 0.7)
    text = dump_routing({"atomic": Route("atomic", spec, ("claude-haiku", "gpt 4"))})
    assert text.splitlines()[2:] == [
        "phases:",
        "  atomic:",
        "    model: lfm",
        "    fallbacks:",
        "      - claude-haiku",
        '      - "gpt 4"',
        "    variant: native_api",
        "    timeout_s: 60",
        "    retries: 1",
        "    isolation: i0",
        "    warmup: false",
        "    extras:",
        "      temperature: 0.7",
        f"    spec_id: {spec.id}",
    ]


def test_empty_mappings_dump_and_read_back() -> None:
    assert parse_baseline(dump_baseline({}), "b") == {}
    assert parse_routing(dump_routing({}), "r") == {}


def test_history_and_log_formats() -> None:
    text = dump_history(
        [
            {
                "cycle": 1,
                "x": 1 / 3,
                "nested": [{"y": 2 / 3, "z": (1, 2)}],
                "bad": float("nan"),
                "name": "é",
            }
        ]
    )
    assert text.endswith("]}\n")
    doc = json.loads(text)
    assert doc == {
        "version": 2,
        "cycles": [
            {
                "cycle": 1,
                "x": 0.333333,
                "nested": [{"y": 0.666667, "z": [1, 2]}],
                "bad": None,
                "name": "é",
            }
        ],
    }
    # the compact layout (historyform.py): a cycle's scalars on its first line
    assert text.startswith('{"version": 2, "cycles": [\n{"cycle": 1, "x": 0.333333,')
    assert "é" in text
    lines = dump_log_lines(
        audit_of(3) + [AuditRecord(3, "x", "promote", "id", "l\u2028", {"a": 1})], "c0ffee"
    )
    assert lines.count("\n") == 2 and lines.endswith("\n")
    first, second = (json.loads(x) for x in lines.splitlines())
    assert list(first) == ["cycle", "phase", "event", "spec_id", "label", "detail", "git_commit"]
    assert first["detail"] == {"verdict": "HOLD", "median": 0.666667}
    assert second["label"] == "l\u2028" and second["git_commit"] == "c0ffee"
    assert ", " not in lines and ": " not in lines  # compact separators
    assert "git_commit" not in dump_log_lines(audit_of(1), None)


# --------------------------------------------------------------------------- properties

text = st.text(min_size=1, max_size=20)
scalar = st.one_of(
    text,
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
knob_name = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: (
        k not in ("model", "variant", "timeout_s", "retries", "isolation", "warmup", "spec_id")
    )
)
specs = st.builds(
    Spec,
    model=text.filter(lambda s: s.strip() != ""),
    variant=text.filter(lambda s: s.strip() != ""),
    timeout_s=st.floats(min_value=1e-6, max_value=1e6),
    retries=st.integers(0, 10),
    isolation=st.sampled_from(["i0", "i1"]),
    warmup=st.booleans(),
    extra=st.dictionaries(knob_name, scalar, max_size=3).map(lambda d: tuple(d.items())),
)
metric_value = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(0, 10**9))
metrics_st = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"runs": st.integers(0, 100), "median": st.floats(0, 1), "variance": st.floats(0, 1)},
        optional={"restraint": st.one_of(st.none(), st.floats(0, 1)), "cost": metric_value},
    ),
)


#: case id -> (passed, runs): any case id the suite allows (suite/cases.py), any valid count
references = st.dictionaries(
    st.sampled_from(["capital-france", "q1.2", "prime_after_89", "0", "true", "null", "a-"]),
    st.integers(1, 50).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    max_size=4,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        text,
        st.tuples(specs, metrics_st, st.integers(0, 99), st.text(), references),
        max_size=3,
    )
)
def test_random_specs_and_metrics_round_trip(data: dict[str, Any]) -> None:
    baselines = {p: PhaseBaseline(p, s, m, c, r, ref) for p, (s, m, c, r, ref) in data.items()}
    dumped = dump_baseline(baselines)
    back = parse_baseline(dumped, "baseline.yaml")
    assert set(back) == set(baselines)
    for phase, base in baselines.items():
        assert back[phase].spec == base.spec and back[phase].spec.id == base.spec.id
        assert back[phase].reason == base.reason
        assert back[phase].promoted_in_cycle == base.promoted_in_cycle
        assert back[phase].reference == base.reference
        if base.metrics is None:
            assert back[phase].metrics is None
        else:
            for key, value in base.metrics.items():
                got = back[phase].metrics[key]  # type: ignore[index]
                assert (got is None) == (value is None)
                if value is not None:
                    assert math.isclose(got, value, abs_tol=5e-5)
    assert dump_baseline(back) == dumped
    routes = {
        p: Route(p, s, tuple(s.model for _ in range(c % 3))) for p, (s, _, c, _, _) in data.items()
    }
    assert parse_routing(dump_routing(routes), "routing.yaml") == routes


@given(st.text())
def test_any_string_survives_yaml(value: str) -> None:
    assert yaml.safe_load("k: " + yaml_str(value))["k"] == value
    assert "\n" not in yaml_str(value)


@given(st.floats(allow_nan=False))
def test_any_float_survives_yaml(value: float) -> None:
    assert yaml.safe_load("k: " + yaml_float(value))["k"] == value
