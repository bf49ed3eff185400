"""Simulated models: seeded, documented behaviour, no network.

Every outcome is a pure function of ``(seed, cycle, model, spec, case, run, attempt)`` —
hashed, not drawn from a global RNG — so it does not depend on which xdist worker runs an item
or in which order, each cycle sees fresh data, and the same cycle from the same files is
reproduced byte for byte. (``cycle`` 0 means "no cycle" and leaves it out of the hash: the
draws of earlier versions.) The cold start too is a function of the case and run, not of a
process: a serial session, ``-n 2``, three CI shards and a resumed session meet the same cold
samples (docs/loop.md, "Simulated models").

Behaviour of one simulated model (its entry under ``models:`` in ``selfopt.yaml``):

``skill``            per phase (``"*"`` for any other phase), 0..1. A case is answered right
                     when ``skill + variant_bonus >= difficulty`` (the case's ``sim.difficulty``).
``variant_bonus``    per variant name, added to the skill (a prompt template that helps).
``flaky``            probability that a run's outcome flips from the rule above (per spec, case,
                     run).
``transient_errors`` probability that an attempt fails in transport (503, 429 or timeout);
                     a retry is a new attempt with a new draw, so retries cure it.
``latency_s``        median latency of an answer; ``latency_sigma`` the log-normal spread.
                     Latency above the spec's ``timeout_s`` is a timeout.
``cold_start_calls`` N: the model starts every spec's measurement cold. Run 1 of the first N
                     cases of a cases file (in the file's order) takes ``cold_start_latency_s``
                     (default 120 s, above any sane timeout), every attempt of it, so it times
                     out and retries do not cure it. A spec with warm-up on meets it in its
                     first N warm-up pings instead; once a ping answered, its runs are warm.
``ramble``           probability of an unrestrained answer: runs past the case's ``max_words``
                     and says what the case forbids (restraint, not correctness).
``knob_effects``     how declared knobs change the behaviour: ``{knob: {value: {field: delta}}}``
                     with ``field`` one of ``skill`` (every phase), ``flaky``,
                     ``transient_errors``, ``latency_s``, ``ramble``; the delta is added and the
                     result kept in range. E.g. ``{temperature: {0.7: {flaky: 0.2}}}``. The
                     knob's value is read from the request's parameters (in-process) or the
                     request body (the server). A sim model uses only the knobs named here.

In-process, latency is simulated and reported, never slept: a cycle takes seconds and its
files are reproducible. The HTTP simulator server (``selfopt sim-server``) uses the same
behaviour and really sleeps.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

from pytest_selfopt.loop.spec import format_scalar
from pytest_selfopt.models.base import Client, ProviderError, Reference, Reply, Request

_NORMAL = NormalDist()
FILLER = (
    "To elaborate further, there are several considerations worth mentioning here, "
    "including background, caveats and a few related facts that nobody asked about."
)


def draw(*parts: Any) -> float:
    """A uniform number in [0, 1) from a hash of ``parts``: reproducible anywhere."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _float(options: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{key}: expected a number from {lo} to {hi}, got {value!r}")
    return float(value)


def _float_map(options: Mapping[str, Any], key: str, lo: float, hi: float) -> dict[str, float]:
    value = options.get(key, {})
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"*": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a number or a mapping of name to number, got {value!r}")
    out: dict[str, float] = {}
    for name, v in value.items():
        out[str(name)] = _checked(key, name, v, lo, hi)
    return out


def _checked(key: str, name: Any, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ValueError(f"{key}.{name}: expected a number from {lo} to {hi}, got {v!r}")
    return float(v)


SIM_KEYS = frozenset(
    {
        "skill",
        "variant_bonus",
        "flaky",
        "transient_errors",
        "latency_s",
        "latency_sigma",
        "cold_start_calls",
        "cold_start_latency_s",
        "ramble",
        "knob_effects",
    }
)
#: The behaviour fields a knob value can shift, with the range the result is kept in.
KNOB_EFFECT_FIELDS: dict[str, tuple[float, float]] = {
    "skill": (0.0, 1.0),
    "flaky": (0.0, 1.0),
    "transient_errors": (0.0, 1.0),
    "latency_s": (0.0, 3600.0),
    "ramble": (0.0, 1.0),
}
KnobEffects = Mapping[str, Mapping[str, Mapping[str, float]]]


def knob_value_key(value: Any) -> str:
    """One spelling per knob value (``0.7``, ``1`` for 1.0, ``true``), so a value written as a
    YAML key matches the spec's value and the value a JSON body carries."""
    return format_scalar(value) if isinstance(value, str | int | float | bool) else repr(value)


def _knob_effects(options: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    raw = options.get("knob_effects", {})
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"knob_effects: expected a mapping of knob to {{value: {{field: delta}}}}, got {raw!r}"
        )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for knob, by_value in raw.items():
        if not isinstance(by_value, Mapping):
            raise ValueError(f"knob_effects.{knob}: expected a mapping of value to effects")
        out[str(knob)] = {}
        for value, effect in by_value.items():
            where = f"knob_effects.{knob}.{knob_value_key(value)}"
            if not isinstance(effect, Mapping):
                raise ValueError(f"{where}: expected a mapping of field to delta, got {effect!r}")
            deltas: dict[str, float] = {}
            for name, delta in effect.items():
                if name not in KNOB_EFFECT_FIELDS:
                    raise ValueError(
                        f"{where}.{name}: expected one of {', '.join(KNOB_EFFECT_FIELDS)}"
                    )
                lo, hi = KNOB_EFFECT_FIELDS[name]
                deltas[name] = _checked(where, name, delta, lo - hi, hi - lo)
            out[str(knob)][knob_value_key(value)] = deltas
    return out


@dataclass(frozen=True)
class SimBehaviour:
    """One simulated model's behaviour (see the module docstring)."""

    name: str
    skill: Mapping[str, float] = field(default_factory=lambda: {"*": 0.5})
    variant_bonus: Mapping[str, float] = field(default_factory=dict)
    flaky: float = 0.0
    transient_errors: float = 0.0
    latency_s: float = 0.8
    latency_sigma: float = 0.25
    cold_start_calls: int = 0
    cold_start_latency_s: float = 120.0
    ramble: float = 0.0
    knob_effects: KnobEffects = field(default_factory=dict)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> SimBehaviour:
        """Validate a model's config; ``ValueError`` names the key and what was expected."""
        cold = options.get("cold_start_calls", 0)
        if isinstance(cold, bool) or not isinstance(cold, int) or cold < 0:
            raise ValueError(f"cold_start_calls: expected a whole number >= 0, got {cold!r}")
        return cls(
            name=name,
            skill=_float_map(options, "skill", 0.0, 1.0) or {"*": 0.5},
            variant_bonus=_float_map(options, "variant_bonus", -1.0, 1.0),
            flaky=_float(options, "flaky", 0.0, 0.0, 1.0),
            transient_errors=_float(options, "transient_errors", 0.0, 0.0, 1.0),
            latency_s=_float(options, "latency_s", 0.8, 0.0, 3600.0),
            latency_sigma=_float(options, "latency_sigma", 0.25, 0.0, 5.0),
            cold_start_calls=cold,
            cold_start_latency_s=_float(options, "cold_start_latency_s", 120.0, 0.0, 36000.0),
            ramble=_float(options, "ramble", 0.0, 0.0, 1.0),
            knob_effects=_knob_effects(options),
        )

    def under(self, knobs: Mapping[str, Any]) -> SimBehaviour:
        """This behaviour shifted by the ``knob_effects`` of the knob values in ``knobs``."""
        deltas: dict[str, float] = {}
        for knob, by_value in self.knob_effects.items():
            if knob in knobs:
                for name, delta in by_value.get(knob_value_key(knobs[knob]), {}).items():
                    deltas[name] = deltas.get(name, 0.0) + delta
        if not deltas:
            return self

        def shift(name: str, value: float) -> float:
            lo, hi = KNOB_EFFECT_FIELDS[name]
            return min(hi, max(lo, value + deltas.get(name, 0.0)))

        return replace(
            self,
            skill={phase: shift("skill", v) for phase, v in self.skill.items()},
            flaky=shift("flaky", self.flaky),
            transient_errors=shift("transient_errors", self.transient_errors),
            latency_s=shift("latency_s", self.latency_s),
            ramble=shift("ramble", self.ramble),
        )

    def skill_for(self, phase: str) -> float:
        return self.skill.get(phase, self.skill.get("*", 0.5))

    def true_pass_rate(self, phase: str, variant: str, difficulty: float) -> float:
        """The probability a run passes, before transport errors: for studies and tests."""
        right = self.skill_for(phase) + self.variant_bonus.get(variant, 0.0) >= difficulty
        return 1.0 - self.flaky if right else self.flaky


@dataclass(frozen=True)
class SimOutcome:
    """What the simulator decided for one attempt, before any clock is involved."""

    text: str | None  # None: a transport failure of ``error_kind``
    error_kind: str | None
    latency_s: float
    input_tokens: int
    output_tokens: int


def cold_start(behaviour: SimBehaviour, ref: Reference) -> bool:
    """Whether this attempt meets the model cold: pure, so any process split of a cycle meets
    the same cold samples. Run 0 is a warm-up ping: the first N of them are cold."""
    if behaviour.cold_start_calls <= 0:
        return False
    if ref.run == 0:
        return ref.attempt < behaviour.cold_start_calls
    return (
        not ref.warmed_up
        and ref.run == 1
        and ref.position is not None
        and ref.position < behaviour.cold_start_calls
    )


def simulate(
    behaviour: SimBehaviour,
    ref: Reference,
    prompt: str,
    timeout_s: float,
) -> SimOutcome:
    """Decide one attempt: a pure function of its arguments."""
    cycle = (ref.cycle,) if ref.cycle else ()  # 0: no cycle, the draws of earlier versions
    key = (ref.seed, *cycle, behaviour.name, ref.spec_id, ref.case_id, ref.run)
    input_tokens = len(prompt.split())
    if cold_start(behaviour, ref):
        latency = behaviour.cold_start_latency_s
    else:
        z = _NORMAL.inv_cdf(min(max(draw(*key, ref.attempt, "latency"), 1e-9), 1 - 1e-9))
        latency = behaviour.latency_s * math.exp(behaviour.latency_sigma * z)
    if latency > timeout_s:
        return SimOutcome(None, "timeout", timeout_s, input_tokens, 0)
    if draw(*key, ref.attempt, "transient") < behaviour.transient_errors:
        kind = "http_5xx" if draw(*key, ref.attempt, "kind") < 0.7 else "http_429"
        return SimOutcome(None, kind, min(latency, 0.05), input_tokens, 0)
    right = (
        behaviour.skill_for(ref.phase) + behaviour.variant_bonus.get(ref.variant, 0.0)
        >= ref.difficulty
    )
    if draw(*key, "flaky") < behaviour.flaky:
        right = not right
    text = ref.answer if right else ref.wrong_answer
    if draw(*key, "ramble") < behaviour.ramble:
        extra = FILLER
        if ref.forbidden:
            extra += f" Also, {ref.forbidden[0]}."
        words = ref.max_words or 0
        while len((text + " " + extra).split()) <= words:
            extra += " " + FILLER
        text = f"{text} {extra}"
    return SimOutcome(text, None, latency, input_tokens, len(text.split()))


class SimClient:
    """In-process client: answers at once and reports the simulated latency."""

    def __init__(self, provider: SimProvider) -> None:
        self._provider = provider

    def complete(self, request: Request) -> Reply:
        ref = request.reference
        if ref is None:
            raise ProviderError(
                "protocol",
                f"simulated model {self._provider.behaviour.name!r} needs the case's reference "
                "answer; run it through the selfopt runner",
            )
        behaviour = self._provider.behaviour.under(request.params)
        outcome = simulate(behaviour, ref, request.prompt, request.timeout_s)
        if outcome.text is None:
            status = {"http_5xx": 503, "http_429": 429}.get(outcome.error_kind or "")
            raise ProviderError(
                outcome.error_kind or "protocol",
                f"simulated {outcome.error_kind} from {behaviour.name!r}",
                status=status,
                retry_after_s=1.0 if status == 429 else None,
                simulated_latency_s=outcome.latency_s,
            )
        return Reply(
            text=outcome.text,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            simulated_latency_s=outcome.latency_s,
        )

    def close(self) -> None:
        pass


class SimProvider:
    simulated = True
    simulated_time = True

    def __init__(self, behaviour: SimBehaviour) -> None:
        self.behaviour = behaviour

    def new_client(self) -> Client:
        return SimClient(self)

    def uses_knob(self, knob: str) -> bool:
        """A simulated model reacts only to the knobs its ``knob_effects`` names."""
        return knob in self.behaviour.knob_effects


def create(name: str, options: Mapping[str, Any]) -> SimProvider:
    sim_options = {k: v for k, v in options.items() if k in SIM_KEYS}
    return SimProvider(SimBehaviour.from_options(name, sim_options))
