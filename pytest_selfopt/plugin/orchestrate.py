"""One cycle's I/O around the pure loop: read the committed files, plan, close, write, report.

Kept out of ``plugin.py`` so that the plugin stays a thin layer of hooks and so that this
sequence can be read (and tested) without pytest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.types import Cause, LoopSettings, LoopState, PhasePlan, Route, Sample
from pytest_selfopt.plugin.codec import Shipment
from pytest_selfopt.plugin.racing import RacedOut, RacedPolicy, decided_samples
from pytest_selfopt.report.jsondoc import json_document
from pytest_selfopt.report.markdown import check_markdown, markdown
from pytest_selfopt.report.power import power_lines
from pytest_selfopt.report.terminal import check_terminal_lines
from pytest_selfopt.store import files
from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.store.journal import Identity, digest, file_digest
from pytest_selfopt.store.lock import CycleLock
from pytest_selfopt.suite.config import SuiteConfig, load_config

#: The committed files, by name (their digests are part of a plan's identity).
COMMITTED_FILES = ("baseline.yaml", "routing.yaml", "history.json", "decisions.log")

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
    lock: CycleLock | None = None  # held from the read to the write of a writing cycle
    notes: tuple[str, ...] = ()  # what the start repaired or found (one line each)


def check_against_config(
    committed: files.CommittedState, config: SuiteConfig, folder: Path
) -> None:
    """Committed specs may only name models and variants the suite config defines: a
    hand-edited or stale file is named here, before anything runs or is overwritten."""
    where = [
        ("baseline.yaml", f"phases.{phase}.spec", base.spec, ())
        for phase, base in sorted(committed.baselines.items())
    ] + [
        ("routing.yaml", f"phases.{phase}", route.spec, route.fallbacks)
        for phase, route in sorted(committed.routes.items())
    ]
    for name, key, spec, fallbacks in where:
        for knob, value, known in (
            ("model", spec.model, config.models),
            ("variant", spec.variant, config.variants),
            *(("fallbacks", model, config.models) for model in fallbacks),
        ):
            if value not in known:
                raise FilesError(
                    f"{relative(folder / name)}: {key}.{knob}: {value!r} is not defined in "
                    f"{config.path.name} (expected one of: {', '.join(known)}); restore the "
                    "file from git or add it to the config"
                )


def history_phases(history: Sequence[Mapping[str, Any]]) -> set[str]:
    return {phase for entry in history for phase in entry.get("phases", {})}


def prepare(
    config_path: Path,
    baselines_dir: Path,
    *,
    selfopt: bool,
    check: bool = False,
    runs: int | None = None,
    seed: int | None = None,
    plan_hook: PlanHook | None = None,
    lock: bool = False,
) -> Prepared:
    """Read config and committed files, and plan the cycle. Raises ConfigError/FilesError.

    ``lock``: a cycle that will write holds the folder's lock from this read to its write, so
    a second cycle started meanwhile is refused in one line and writes nothing."""
    config = load_config(config_path)
    held = CycleLock(baselines_dir) if lock else None
    lock_note = held.acquire() if held is not None else None
    try:
        committed = files.read_state(baselines_dir, lock=held)
        check_against_config(committed, config, baselines_dir)
    except BaseException:
        if held is not None:
            held.release()
        raise
    notes = tuple([lock_note] if lock_note else []) + tuple(committed.notes)
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
    if check:
        # Check mode measures what runs today (the routed spec of each phase), nothing else.
        for phase in known:
            route = committed.routes.get(phase)
            base = committed.baselines.get(phase)
            spec = route.spec if route else base.spec if base else settings.initial
            plans[phase] = PhasePlan(phase, spec)
        default_plan = PhasePlan(ANY_PHASE, settings.initial)
    elif selfopt:
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
        routes.setdefault(
            phase, Route(phase, base.spec, fallbacks_after(settings, base.spec.model))
        )
    default_route = Route(
        ANY_PHASE, settings.initial, fallbacks_after(settings, settings.initial.model)
    )
    shipment = Shipment(
        selfopt=selfopt or check,
        runs=settings.runs,
        seed=settings.seed,
        cycle=state.last_cycle + 1,
        plans=plans,
        default_plan=default_plan,
        routes=routes,
        default_route=default_route,
    )
    return Prepared(
        config, baselines_dir, committed, state, settings, shipment, lock=held, notes=notes
    )


def plan_identity(prepared: Prepared, config_path: Path) -> Identity:
    """The identity of the plan ``prepared`` holds: what the controller records in its journal
    and shards (plugin/controller.py); ``selfopt decide`` recomputes it to compare."""
    shipment = prepared.shipment
    return Identity(
        config=file_digest(config_path),
        committed={n: file_digest(prepared.baselines_dir / n) for n in COMMITTED_FILES},
        seed=shipment.seed,
        cycle=prepared.state.last_cycle + 1,
        runs=shipment.runs,
        plan=digest(json.dumps(shipment.to_dict(), sort_keys=True).encode()),
    )


def fallbacks_after(settings: LoopSettings, model: str) -> tuple[str, ...]:
    chain = settings.fallback_chain
    if model in chain:
        return tuple(chain[chain.index(model) + 1 :])
    return tuple(m for m in chain if m != model)


@dataclass(frozen=True)
class Finished:
    outcome: CycleOutcome
    written: list[str]
    undecided: list[str]  # candidates (and baselines) that had no sample to decide on
    markdown: str
    power: list[str]  # per phase: the minimum detectable effect, and "underpowered" when so
    curve: list[str]  # baseline accuracy over the cycles, this one included
    outages: list[str] = field(default_factory=list)  # one line per model that did not answer
    total_outage: bool = False  # every phase's baseline was in an outage: nothing written

    @property
    def failed(self) -> bool:
        """The cycle could not decide something it was asked to: exit 1 (README, exit codes)."""
        return bool(self.undecided or self.outages)


#: Decisions made for want of data, not from it (``Cause.is_try`` is False for these).
NO_DATA = frozenset({Cause.NO_SAMPLES, Cause.NO_COMMON_CASE})

#: What a person reads for an outage's error kind (``loop.types.OUTAGE_ERROR_KINDS``).
OUTAGE_WORDS = {
    "connect": "could not connect (connection refused, host unreachable or DNS)",
    "http_5xx": "server errors (HTTP 5xx)",
    "http_4xx": "requests refused (HTTP 4xx: a bad key, model name or URL?)",
    "http_429": "rate limited (HTTP 429) on every retry",
    "protocol": "replies that are not the API's (dropped connections or malformed bodies)",
    "config": "a configuration error (a missing API key?)",
}


def endpoint(config: SuiteConfig, model: str) -> str:
    """Where ``model`` is served, fit for a log line: its ``base_url`` without credentials,
    or its provider (``sim``: in-process)."""
    entry = config.models.get(model)
    if entry is None:
        return "an unknown endpoint"
    url = entry.options.get("base_url")
    if isinstance(url, str) and url:
        from pytest_selfopt.models.base import display_url

        return display_url(url)
    return f"provider {entry.provider}"


def outage_lines(outcome: CycleOutcome, config: SuiteConfig) -> list[str]:
    """One line per model and error kind in an outage (docs/loop.md, "Outages"): who, where,
    what, how many, and that nothing was derived from it."""
    totals: dict[tuple[str, str], list[int]] = {}
    for d in outcome.outages:
        count = totals.setdefault((d.model, d.error_kind or "error"), [0, 0, 0])
        count[0] += d.failures
        count[1] += d.samples
        count[2] += 1
    lines = []
    for (model, kind), (failed, samples, specs) in sorted(totals.items()):
        what = OUTAGE_WORDS.get(kind, kind)
        lines.append(
            f"outage: model {model or '?'} at {endpoint(config, model)}: {failed} of {samples} "
            f"samples ({specs} spec(s)) failed with {kind}: {what}; nothing was decided or "
            "recommended from them — check the server and the key, then run the cycle again"
        )
    return lines


def finish(
    prepared: Prepared,
    plans: Mapping[str, PhasePlan],
    samples: Sequence[Sample],
    *,
    dry_run: bool,
    report_path: Path | None = None,
    json_path: Path | None = None,
    policy: GatePolicy,
    raced: Mapping[tuple[str, str], RacedOut] | None = None,
    notes: Sequence[str] = (),
) -> Finished:
    """Close the cycle and write its files (unless a dry run). Raises FilesError on refusal.

    ``raced``: candidates given up by racing, REJECTed on their runs up to the race
    (``racing.py``); every sample still goes to ``json_path``. A cycle in which every
    phase's baseline was in an outage measured the service, not the models: it writes
    nothing (docs/loop.md, "Outages"), so the next healthy cycle is the one that would have
    run."""
    decided = decided_samples(samples, raced) if raced else list(samples)
    if raced:
        policy = RacedPolicy(policy, raced)
    outcome = close_cycle(prepared.state, prepared.settings, plans, decided, policy=policy)
    undecided = [
        f"{po.phase}: {d.label}"
        for po in outcome.phases
        for d in po.decisions
        if d.cause in NO_DATA
    ]
    undecided += [
        f"{po.phase}: baseline"
        for po in outcome.phases
        if po.plan.candidates and not po.stats[po.plan.baseline.id].samples
    ]
    outages = outage_lines(outcome, prepared.config)
    down = {(d.phase, d.spec_id) for d in outcome.outages}
    total_outage = bool(outcome.phases) and all(
        (po.phase, po.plan.baseline.id) in down for po in outcome.phases
    )
    if total_outage and not dry_run:
        outages.append(
            "nothing written: every phase's baseline was in an outage, so the cycle measured "
            "the service, not the models; the next healthy cycle runs this plan again"
        )
    written: list[str] = []
    entry = history_entry(outcome)
    if not dry_run and not total_outage:  # an outage: the next healthy cycle takes its place
        changed = files.write_cycle(
            prepared.baselines_dir,
            baselines={
                **prepared.committed.baselines,
                **{p.phase: p.baseline_after for p in outcome.phases},
            },
            routes={
                **prepared.committed.routes,
                **{p.phase: p.route_after for p in outcome.phases},
            },
            history_entry=entry,
            audit=outcome.audit,
            expected=prepared.committed,
            lock=prepared.lock,
            git_commit=files.git_commit(prepared.baselines_dir),
        )
        written = [relative(p) for p in changed]
    history = [*prepared.committed.history, entry]
    text = markdown(outcome, history=history, written=written, dry_run=dry_run)
    if notes:  # said first: samples were left out of the decisions
        text = "\n".join(f"> **Note:** {n}  " for n in notes) + "\n\n" + text
    if report_path is not None:
        write_report(text, report_path)
    if json_path is not None:
        doc = json_document(outcome, [s.to_dict() for s in samples])
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    from pytest_selfopt.report.history import curve_lines

    curve = ["baseline accuracy (median run accuracy), start -> after each cycle:"]
    curve += [f"  {line}" for line in curve_lines(history)]
    return Finished(
        outcome,
        written,
        undecided,
        text,
        power_lines(outcome, prepared.settings.gates),
        curve,
        outages=outages,
        total_outage=total_outage,
    )


def write_report(text: str, path: Path) -> None:
    """The Markdown report at ``path``, and appended to GitHub's step summary when set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Checked:
    lines: list[str]
    markdown: str
    regressed: bool


def check(
    prepared: Prepared,
    plans: Mapping[str, PhasePlan],
    samples: Sequence[Sample],
    *,
    report_path: Path | None = None,
) -> Checked:
    """``--selfopt-check``: the routed spec of each phase against the committed baseline."""
    from pytest_selfopt.loop.evaluate import evaluate
    from pytest_selfopt.loop.regress import check_regression

    stats = evaluate(list(samples))
    history = prepared.committed.history
    results = []
    notes: list[str] = []
    for phase, plan in sorted(plans.items()):
        measured = stats.get((phase, plan.baseline.id))
        committed = prepared.committed.baselines.get(phase)
        if measured is None:
            continue
        if committed is None:
            notes.append(f"{phase}: no baseline committed yet; run `pytest --selfopt` first")
            continue
        history_patterns: Mapping[str, str] = {}
        if not committed.reference:  # files from before baseline.yaml carried the reference
            for entry in reversed(history):
                rec = entry.get("phases", {}).get(phase)
                if rec and committed.spec.id in rec.get("patterns", {}):
                    history_patterns = rec["patterns"][committed.spec.id]
                    break
        result = check_regression(
            phase,
            committed,
            measured,
            prepared.settings.gates,
            history_patterns=history_patterns,
        )
        if result.effect is None and not result.regressed:
            notes.append(f"{phase}: {result.reason}")
            continue
        results.append(result)
    lines = check_terminal_lines(results, notes=notes)
    text = check_markdown(results, notes=notes)
    if report_path is not None:
        write_report(text, report_path)
    return Checked(lines, text, any(r.regressed for r in results))
