"""One cycle's I/O around the pure loop: read the committed files, plan, close, write, report.

Kept out of ``plugin.py`` so that the plugin stays a thin layer of hooks and so that this
sequence can be read (and tested) without pytest.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import files, report
from .config import SuiteConfig, load_config
from .loop.cycle import close_cycle, plan_cycle
from .loop.learn import history_entry, pending_from_history, tried_from_history
from .loop.types import (
    CycleOutcome,
    LoopSettings,
    LoopState,
    PhasePlan,
    Route,
    Sample,
)
from .wire import Shipment

#: The phase name a plan is computed under for phases first seen at collection.
ANY_PHASE = "*"

PlanHook = Callable[[str, LoopState, LoopSettings], PhasePlan | None]


@dataclass(frozen=True)
class Prepared:
    """Everything read and planned at the start of a session (controller only)."""

    config: SuiteConfig
    baselines_dir: Path
    committed: files.CommittedState
    state: LoopState
    settings: LoopSettings
    shipment: Shipment


def history_phases(history: Sequence[Mapping[str, Any]]) -> set[str]:
    return {phase for entry in history for phase in entry.get("phases", {})}


def prepare(
    config_path: Path,
    baselines_dir: Path,
    *,
    selfopt: bool,
    runs: int | None = None,
    seed: int | None = None,
    plan_hook: PlanHook | None = None,
) -> Prepared:
    """Read config and committed files, and plan the cycle. Raises ConfigError/FilesError."""
    config = load_config(config_path)
    committed = files.read_state(baselines_dir)
    settings = config.loop_settings()
    if runs is not None or seed is not None:
        from dataclasses import replace

        settings = replace(
            settings,
            runs=runs if runs is not None else settings.runs,
            seed=seed if seed is not None else settings.seed,
        )
    history = committed.history
    state = LoopState(
        baselines=committed.baselines,
        routes=committed.routes,
        pending=pending_from_history(history),
        tried=tried_from_history(history),
        last_cycle=max((int(e.get("cycle", 0)) for e in history), default=0),
    )
    known = sorted(
        set(committed.baselines)
        | set(committed.routes)
        | history_phases(history)
        | {p.phase for p in state.pending}
    )
    plans: dict[str, PhasePlan] = {}
    default_plan: PhasePlan | None = None
    if selfopt:
        plans = dict(plan_cycle(state, settings, known))
        default_plan = plan_cycle(state, settings, [ANY_PHASE])[ANY_PHASE]
        if plan_hook is not None:
            for phase in [*known, ANY_PHASE]:
                custom = plan_hook(phase, state, settings)
                if custom is None:
                    continue
                if phase == ANY_PHASE:
                    default_plan = custom
                else:
                    plans[phase] = custom
    routes: dict[str, Route] = dict(committed.routes)
    for phase, base in committed.baselines.items():
        routes.setdefault(phase, Route(phase, base.spec, fallbacks_after(settings, base.spec.model)))
    default_route = Route(ANY_PHASE, settings.initial, fallbacks_after(settings, settings.initial.model))
    shipment = Shipment(
        selfopt=selfopt,
        runs=settings.runs,
        seed=settings.seed,
        plans=plans,
        default_plan=default_plan,
        routes=routes,
        default_route=default_route,
    )
    return Prepared(config, baselines_dir, committed, state, settings, shipment)


def fallbacks_after(settings: LoopSettings, model: str) -> tuple[str, ...]:
    chain = settings.fallback_chain
    if model in chain:
        return tuple(chain[chain.index(model) + 1 :])
    return tuple(m for m in chain if m != model)


@dataclass
class Collected:
    """Samples and item bookkeeping gathered on the controller from test reports."""

    samples: list[Sample] = field(default_factory=list)
    finished_items: int = 0
    skipped: set[tuple[str, str, str, int]] = field(default_factory=set)  # phase, spec, case, run
    no_sample: list[str] = field(default_factory=list)  # nodeids whose test never asked

    def phases(self) -> list[str]:
        return sorted({s.phase for s in self.samples})


def missing_samples(
    plans: Mapping[str, PhasePlan], collected: Collected, runs: int
) -> list[str]:
    """Every spec of every phase that ran must have a sample per (case, run): else why not."""
    have = {(s.phase, s.spec_id, s.case_id, s.run) for s in collected.samples}
    cases: dict[str, set[str]] = defaultdict(set)
    for s in collected.samples:
        cases[s.phase].add(s.case_id)
    problems: list[str] = []
    for phase in sorted(cases):
        plan = plans[phase]
        missing = [
            (spec.id, case, run)
            for spec in plan.specs
            for case in sorted(cases[phase])
            for run in range(1, runs + 1)
            if (phase, spec.id, case, run) not in have
            and (phase, spec.id, case, run) not in collected.skipped
        ]
        if missing:
            spec_id, case, run = missing[0]
            problems.append(
                f"phase {phase}: {len(missing)} sample(s) missing, e.g. spec {spec_id} "
                f"case {case} run {run}"
            )
    return problems


@dataclass(frozen=True)
class Finished:
    outcome: CycleOutcome
    written: list[str]
    undecided: list[str]  # specs whose every sample errored
    markdown: str


def finish(
    prepared: Prepared,
    plans: Mapping[str, PhasePlan],
    samples: Sequence[Sample],
    *,
    dry_run: bool,
    report_path: Path | None = None,
    json_path: Path | None = None,
) -> Finished:
    """Close the cycle and write its files (unless a dry run). Raises FilesError on refusal."""
    outcome = close_cycle(prepared.state, prepared.settings, plans, list(samples))
    undecided = [
        f"{po.phase}: {d.label}"
        for po in outcome.phases
        for d in po.decisions
        if d.reason.startswith("HOLD: could not decide")
    ]
    baseline_stats = [po.stats.get(po.plan.baseline.id) for po in outcome.phases]
    undecided += [
        f"{st.phase}: baseline" for st in baseline_stats if st and st.samples and st.errored == st.samples
    ]
    written: list[str] = []
    entry = history_entry(outcome)
    if not dry_run:
        changed = files.write_cycle(
            prepared.baselines_dir,
            baselines={**prepared.committed.baselines, **{p.phase: p.baseline_after for p in outcome.phases}},
            routes={**prepared.committed.routes, **{p.phase: p.route_after for p in outcome.phases}},
            history_entry=entry,
            audit=outcome.audit,
            expected_baseline_sha256=prepared.committed.baseline_sha256,
            git_commit=files.git_commit(prepared.baselines_dir),
        )
        written = [relative(p) for p in changed]
    history = [*prepared.committed.history, entry]
    markdown = report.markdown(outcome, history=history, written=written, dry_run=dry_run)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(markdown, encoding="utf-8")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(markdown + "\n")
    if json_path is not None:
        doc = report.json_document(outcome, [s.to_dict() for s in samples])
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Finished(outcome, written, undecided, markdown)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
