"""loop.diagnose: pattern definitions, per-worker cold start, recommendation rules."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.loop.diagnose import classify, diagnose, next_model, recommend
from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    TRANSPORT_ERROR_KINDS,
    CasePattern,
    Diagnosis,
    GateSettings,
    LoopSettings,
    Sample,
    SearchSpace,
    SpecStats,
)

SPEC = Spec("lfm", "native_api", 60, 1, "i0", False)
SETTINGS = LoopSettings(
    initial=SPEC,
    search=SearchSpace((("timeout_s", (60, 120)), ("retries", (1, 2)))),
    max_candidates=4,
    gates=GateSettings(),
    fallback_chain=("lfm", "claude-haiku"),
    runs=7,
    seed=0,
)


def pattern(
    code: str,
    kinds: Sequence[str | None] | str | None = None,
    *,
    case: str = "c",
    workers: Sequence[str] | None = None,
    started: Sequence[float] | None = None,
) -> CasePattern:
    """``pattern("FFPPPPP", "timeout")``: failures get the given kind (one or per sample)."""
    outcomes = tuple(ch == "P" for ch in code)
    if kinds is None or isinstance(kinds, str):
        ks = tuple(None if ok else (kinds or "wrong_answer") for ok in outcomes)
    else:
        ks = tuple(kinds)
    n = len(code)
    return CasePattern(
        case_id=case,
        runs=tuple(range(1, n + 1)),
        outcomes=outcomes,
        error_kinds=ks,
        workers=tuple(workers or ["main"] * n),
        started_at=tuple(started if started is not None else [float(i) for i in range(n)]),
    )


def kind_of(code: str, kinds: Sequence[str | None] | str | None = None) -> str:
    return classify(pattern(code, kinds), 7)[0]


def spec_stats(patterns: Sequence[CasePattern], spec_id: str = "s") -> SpecStats:
    return SpecStats(
        phase="p",
        spec_id=spec_id,
        runs=7,
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
        samples=sum(len(p.outcomes) for p in patterns),
        errored=0,
        case_ids=tuple(p.case_id for p in patterns),
        run_numbers=tuple(range(1, 8)),
        passes=(),
        patterns=tuple(patterns),
    )


def test_stable_pass() -> None:
    assert classify(pattern("PPPPPPP"), 7) == ("stable_pass", "7/7 passed")


def test_cold_start_first_k_up_to_half() -> None:
    assert kind_of("FPPPPPP", "timeout") == "cold_start"
    assert kind_of("FFFPPPP", "timeout") == "cold_start"  # k = 3 = 7 // 2
    assert kind_of("FFFFPPP", "timeout") == "timeout_bound"  # k = 4 > 7 // 2
    assert kind_of("FFPPPPP", "wrong_answer") == "cold_start"  # by definition, any failure
    assert kind_of("FPPFPPP", "timeout") == "timeout_bound"  # a later failure: not a cold start
    assert classify(pattern("FFPPPPP", "timeout"), 7)[1] == (
        "first 2 of 7 runs failed (timeout), then all passed"
    )


def test_capability_limit_reads_the_answered_runs_only() -> None:
    assert classify(pattern("FFFFFFF"), 7) == (
        "capability_limit",
        "0/7 passed, all wrong (7 wrong answers)",
    )
    # a transport error says nothing about capability: set aside (issue 10.1)
    assert classify(pattern("FFFFFFF", ["wrong_answer"] * 6 + ["http_5xx"]), 7) == (
        "capability_limit",
        "0/7 passed, every answered run wrong (6 wrong answers, 1 transport error set aside)",
    )
    assert kind_of("FFFFFFF", ["wrong_answer"] * 4 + ["timeout"] * 3) == "capability_limit"
    # mostly timeouts: the setting, not the model
    assert kind_of("FFFFFFF", ["wrong_answer"] * 3 + ["timeout"] * 4) == "timeout_bound"
    # nothing answered: nothing known about capability
    assert kind_of("FFFFFFF", "http_5xx") == "flaky"


def test_timeout_bound_is_more_than_half_of_failures() -> None:
    assert kind_of("PPFPFPP", "timeout") == "timeout_bound"
    assert kind_of("FFFFFFF", "timeout") == "timeout_bound"
    half = [None, "timeout", None, "wrong_answer", None, None, None]
    assert kind_of("PFPFPPP", half) == "flaky"  # exactly half is not more than half


def test_flaky_detail_says_what_failed() -> None:
    kind, detail = classify(
        pattern("PPFPFPF", [None, None, "http_5xx", None, "wrong_answer", None, "wrong_answer"]), 7
    )
    assert kind == "flaky"
    assert detail == "3/7 failed: 1 transport errors (http_5xx), 2 wrong answers"
    kind, detail = classify(pattern("PPFPPPF", "wrong_answer"), 7)
    assert (kind, detail) == ("flaky", "2/7 failed: 0 transport errors, 2 wrong answers")


def test_diagnosis_counts_failures_and_transport_failures() -> None:
    (d,) = diagnose(
        spec_stats(
            [pattern("PPFPFPF", [None, None, "http_5xx", None, "timeout", None, "wrong_answer"])]
        ),
        7,
    )
    assert (d.kind, d.failures, d.transport_failures, d.pattern) == (
        "flaky",
        3,
        2,
        "[P,P,F,P,F,P,F]",
    )


def two_worker_stats(extra_transport_on_gw1: bool = False) -> SpecStats:
    """Six cases x 7 runs over two workers; each worker's first sample of the spec timed out.

    gw0 starts with case a run 1 at t=0; gw1 starts later, with case b run 2 at t=10, so case
    b reads [P,F,P,P,P,P,P] in time order.
    """
    patterns = []
    for case in "abcdef":
        outcomes, kinds, workers, started = [], [], [], []
        for run in range(1, 8):
            worker = "gw0" if run % 2 else "gw1"
            t = 10.0 + run * 10 + "abcdef".index(case) if (case, run) != ("b", 2) else 10.0
            if (case, run) == ("b", 1):
                t = 5.0  # b's run 1 ran on gw0 before gw1 started
            if (case, run) == ("a", 1):
                t = 0.0
            failed = (case, run) in {("a", 1), ("b", 2)}
            if extra_transport_on_gw1 and (case, run) == ("e", 6):
                failed = True
            outcomes.append(not failed)
            kinds.append("timeout" if failed else None)
            workers.append(worker)
            started.append(t)
        order = sorted(range(7), key=lambda i: (started[i], i + 1))
        patterns.append(
            CasePattern(
                case_id=case,
                runs=tuple(i + 1 for i in order),
                outcomes=tuple(outcomes[i] for i in order),
                error_kinds=tuple(kinds[i] for i in order),
                workers=tuple(workers[i] for i in order),
                started_at=tuple(started[i] for i in order),
            )
        )
    return spec_stats(patterns)


def test_per_worker_cold_start_under_two_workers() -> None:
    stats = two_worker_stats()
    assert stats.patterns[1].render() == "[P,F,P,P,P,P,P]"
    diagnoses = diagnose(stats, 7)
    by_case = {d.case_id: d.kind for d in diagnoses}
    assert by_case["a"] == "cold_start" and by_case["b"] == "cold_start"
    assert {by_case[c] for c in "cdef"} == {"stable_pass"}
    (spec_level,) = [d for d in diagnoses if d.case_id is None]
    assert spec_level.kind == "cold_start" and spec_level.pattern == ""
    assert "gw0 first 1" in spec_level.detail and "gw1 first 1" in spec_level.detail
    recs = recommend("p", SPEC, diagnoses, SETTINGS, 6)
    assert [(r.action, r.knob, r.value, r.evidence) for r in recs] == [
        ("enable_warmup", "warmup", True, ("a", "b")),
    ]


def test_later_transport_failure_on_the_worker_is_not_a_cold_start() -> None:
    diagnoses = diagnose(two_worker_stats(extra_transport_on_gw1=True), 7)
    by_case = {d.case_id: d.kind for d in diagnoses}
    assert by_case["b"] == "timeout_bound"  # its failure is no longer a cold-start sample
    assert by_case["a"] == "cold_start"  # gw0 is still a clean cold start
    (spec_level,) = [d for d in diagnoses if d.case_id is None]
    assert "gw1" not in spec_level.detail


def test_leading_wrong_answers_are_not_cold_start_samples() -> None:
    stats = spec_stats([pattern("PFPPPPP", "wrong_answer", workers=["gw0"] + ["gw1"] * 6)])
    diagnoses = diagnose(stats, 7)
    assert [d.kind for d in diagnoses] == ["flaky"]


def test_a_worker_that_never_recovers_is_not_a_cold_start() -> None:
    stats = spec_stats([pattern("PPPFFFF", "timeout", workers=["gw0"] * 3 + ["gw1"] * 4)])
    assert [d.kind for d in diagnose(stats, 7)] == ["timeout_bound"]


def test_same_diagnosis_with_one_or_two_workers() -> None:
    # -n 0: everything on one process, the spec's first call timed out
    single = spec_stats([pattern("FPPPPPP", "timeout", case="a"), pattern("PPPPPPP", case="b")])
    one = {d.case_id: d.kind for d in diagnose(single, 7)}
    two = {d.case_id: d.kind for d in diagnose(two_worker_stats(), 7)}
    assert one["a"] == two["a"] == "cold_start"
    recs_one = recommend("p", SPEC, diagnose(single, 7), SETTINGS, 2)
    recs_two = recommend("p", SPEC, diagnose(two_worker_stats(), 7), SETTINGS, 6)
    assert [(r.action, r.value) for r in recs_one] == [(r.action, r.value) for r in recs_two]


def diag(kind: str, case: str | None = "c", transport: int = 0) -> Diagnosis:
    return Diagnosis(
        "p", SPEC.id, case, kind, "", "", failures=max(transport, 1), transport_failures=transport
    )


def test_no_warmup_recommendation_when_warmup_is_on() -> None:
    assert recommend("p", SPEC.with_knob("warmup", True), [diag("cold_start")], SETTINGS, 6) == ()
    (rec,) = recommend("p", SPEC, [diag("cold_start", None)], SETTINGS, 6)
    assert rec.action == "enable_warmup" and rec.evidence == ()


def test_route_needs_the_share_of_capability_limited_cases() -> None:
    three = [diag("capability_limit", c) for c in "abc"]
    (rec,) = recommend("p", SPEC, three, SETTINGS, 6)
    assert (rec.action, rec.knob, rec.value, rec.spec_id) == (
        "route_next_model",
        "model",
        "claude-haiku",
        SPEC.id,
    )
    assert rec.evidence == ("a", "b", "c")
    assert rec.reason == "3/6 cases capability-limited (50% >= 50%): route lfm -> claude-haiku"
    assert recommend("p", SPEC, three[:2], SETTINGS, 6) == ()


def test_route_targets_along_the_chain() -> None:
    assert next_model("lfm", ("lfm", "claude-haiku", "opus")) == "claude-haiku"
    assert next_model("claude-haiku", ("lfm", "claude-haiku", "opus")) == "opus"
    assert next_model("opus", ("lfm", "claude-haiku", "opus")) is None
    assert next_model("gpt", ("gpt", "lfm")) == "lfm"
    assert next_model("other", ("lfm", "claude-haiku")) == "lfm"
    top = SPEC.with_knob("model", "claude-haiku")
    assert recommend("p", top, [diag("capability_limit")], SETTINGS, 1) == ()


def test_raise_timeout_next_search_value_else_double() -> None:
    (rec,) = recommend("p", SPEC, [diag("timeout_bound")], SETTINGS, 6)
    assert (rec.action, rec.knob, rec.value) == ("raise_timeout", "timeout_s", 120.0)
    (rec,) = recommend("p", SPEC.with_knob("timeout_s", 120), [diag("timeout_bound")], SETTINGS, 6)
    assert rec.value == 240.0


def test_raise_retries_only_for_transport_flakiness() -> None:
    (rec,) = recommend("p", SPEC, [diag("flaky", transport=2)], SETTINGS, 6)
    assert (rec.action, rec.knob, rec.value) == ("raise_retries", "retries", 2)
    (rec,) = recommend("p", SPEC.with_knob("retries", 2), [diag("flaky", transport=1)], SETTINGS, 6)
    assert rec.value == 3
    assert recommend("p", SPEC, [diag("flaky", transport=0)], SETTINGS, 6) == ()


def test_stable_pass_recommends_nothing() -> None:
    assert recommend("p", SPEC, [diag("stable_pass")], SETTINGS, 1) == ()


kinds = st.sampled_from(["wrong_answer", *sorted(TRANSPORT_ERROR_KINDS)])


def reference_kind(outcomes: Sequence[bool], error_kinds: Sequence[str | None], r: int) -> str:
    """The module docstring's definitions, written out independently (no cold-start samples
    here: every sample runs on its own worker)."""
    failed = [i for i, ok in enumerate(outcomes) if not ok]
    if not failed:
        return "stable_pass"
    k = len(failed)
    if k < len(outcomes) and failed == list(range(k)) and 1 <= k <= r // 2:
        return "cold_start"
    if sum(error_kinds[i] == "timeout" for i in failed) > k / 2:
        return "timeout_bound"
    answered = [i for i in failed if error_kinds[i] not in TRANSPORT_ERROR_KINDS]
    if k == len(outcomes) and answered and all(error_kinds[i] == "wrong_answer" for i in answered):
        return "capability_limit"
    return "flaky"


def reference_outage(error_kinds: Sequence[str | None]) -> bool:
    """More than half of the samples failed with one transport kind other than timeout."""
    kinds = [k for k in error_kinds if k in TRANSPORT_ERROR_KINDS and k != "timeout"]
    return any(kinds.count(k) * 2 > len(error_kinds) for k in set(kinds))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), kinds), min_size=1, max_size=9))
def test_patterns_are_classified_by_definition(cells: list[tuple[bool, str]]) -> None:
    # one case, every sample on a worker of its own
    check_cells(
        [
            ("c", i + 1, float(i), f"gw{i}", ok, None if ok else kind)
            for i, (ok, kind) in enumerate(cells)
        ]
    )


def reference_cold_samples(
    cells: list[tuple[str, int, float, str, bool, str | None]],
) -> set[tuple[str, int]]:
    """Docstring: per worker, in (started_at, run, case) order, a leading block of transport
    failures followed by at least one pass and no other transport failure; or a worker that ran
    nothing but that block, fewer than half of the spec's samples, while another worker
    passed."""
    cold: set[tuple[str, int]] = set()
    workers = {c[3] for c in cells}
    for worker in workers:
        seq = sorted((c for c in cells if c[3] == worker), key=lambda c: (c[2], c[1], c[0]))
        bad = [not c[4] and c[5] in TRANSPORT_ERROR_KINDS for c in seq]
        m = bad.index(False) if False in bad else len(bad)
        elsewhere = any(c[4] for c in cells if c[3] != worker)
        recovers = any(c[4] for c in seq[m:]) if m < len(seq) else elsewhere
        few = 2 * m < len(cells)  # a worker that never passed: a minority of the samples
        if m and recovers and not any(bad[m:]) and (m < len(seq) or few):
            cold |= {(c[0], c[1]) for c in seq[:m]}
    return cold


@st.composite
def multi_worker_cells(draw: st.DrawFn) -> list[tuple[str, int, float, str, bool, str | None]]:
    cells = []
    for case in ("a", "b", "c")[: draw(st.integers(1, 3))]:
        for run in range(1, draw(st.integers(1, 7)) + 1):
            ok = draw(st.booleans())
            cells.append(
                (
                    case,
                    run,
                    float(draw(st.integers(0, 12))),
                    draw(st.sampled_from(["gw0", "gw1"])),
                    ok,
                    None if ok else draw(kinds),
                )
            )
    return cells


@settings(max_examples=400, deadline=None)
@given(multi_worker_cells())
def test_patterns_over_workers_are_classified_by_definition(
    cells: list[tuple[str, int, float, str, bool, str | None]],
) -> None:
    check_cells(cells)


def check_cells(cells: list[tuple[str, int, float, str, bool, str | None]]) -> None:
    """diagnose() on these (case, run, started_at, worker, passed, error kind) cells agrees with
    the references written from the module docstring."""
    samples = [
        Sample("p", "s", case, run, ok, None, 1.0, 1.0, 1, kind, started_at=t, worker=w)
        for case, run, t, w, ok, kind in cells
    ]
    stats = evaluate(samples)[("p", "s")]
    runs = stats.runs
    by_case = {
        case: sorted((c for c in cells if c[0] == case), key=lambda c: (c[1], c[2]))
        for case in {c[0] for c in cells}
    }
    by_pattern = sum(
        reference_kind([c[4] for c in mine], [c[5] for c in mine], runs) == "cold_start"
        for mine in by_case.values()
    )
    # docstring: two cases that read as cold starts by their patterns: the workers are not read
    cold = reference_cold_samples(cells) if by_pattern < 2 else set()
    got = {d.case_id: d.kind for d in diagnose(stats, runs)}
    if reference_outage([c[5] for c in cells]):
        assert got == {None: "outage"}
        return
    for case in {c[0] for c in cells}:
        mine = sorted((c for c in cells if c[0] == case), key=lambda c: (c[1], c[2]))
        outcomes = [c[4] for c in mine]
        error_kinds = [c[5] for c in mine]
        expected = reference_kind(outcomes, error_kinds, runs)
        failed = [(c[0], c[1]) for c in mine if not c[4]]
        if expected != "stable_pass" and any(outcomes) and set(failed) <= cold:
            expected = "cold_start"
        assert got[case] == expected
    assert (None in got) == bool(cold)


def test_warmup_needs_a_replicated_cold_start() -> None:
    # one case's "first k fail" pattern is too easily a flaky prompt: no warm-up on it alone
    assert recommend("p", SPEC, [diag("cold_start", "a")], SETTINGS, 6) == ()
    (rec,) = recommend("p", SPEC, [diag("cold_start", "a"), diag("cold_start", "b")], SETTINGS, 6)
    assert rec.action == "enable_warmup" and rec.evidence == ("a", "b")
    # ... or once the spec-level (per-worker) cold start backs it up
    (rec,) = recommend("p", SPEC, [diag("cold_start", "a"), diag("cold_start", None)], SETTINGS, 6)
    assert rec.action == "enable_warmup"
    one = LoopSettings(**{**SETTINGS.__dict__, "gates": GateSettings(warmup_min_cases=1)})
    assert [r.action for r in recommend("p", SPEC, [diag("cold_start", "a")], one, 6)] == [
        "enable_warmup"
    ]


def test_flaky_prompt_looks_like_cold_start_at_the_documented_rate() -> None:
    # P(first k fail then all pass, 1 <= k <= 3 of 7) for a prompt passing 80% of runs
    p, runs = 0.8, 7
    expected = sum((1 - p) ** k * p ** (runs - k) for k in range(1, runs // 2 + 1))
    codes = ["".join(c) for c in __import__("itertools").product("PF", repeat=runs)]
    prob = sum(
        p ** c.count("P") * (1 - p) ** c.count("F")
        for c in codes
        if "P" in c and classify(pattern(c, "wrong_answer"), runs)[0] == "cold_start"
    )
    assert abs(prob - expected) < 1e-12 and 0.06 < prob < 0.07
