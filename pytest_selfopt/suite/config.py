"""Load and validate the suite config (``benchmarks/selfopt.yaml``).

Every error is a :class:`ConfigError` naming the file, the key (dotted, with list indices)
and what was expected, so a bad config fails in one readable line before anything runs.

Reference (every key, with its default)::

    seed: 0                 # int; seeds simulators and any randomized choice
    runs: 7                 # int 1..1000; repetitions of every spec (--selfopt-runs overrides)
    concurrency: 1          # int 1..1000; model calls in flight per process (--selfopt-concurrency overrides)
    policy: paired          # gate policy: paired (default) or seed; plugins may add more
    models:                 # required; alias -> model. Aliases appear in labels and ids.
      lfm:
        provider: openai    # required; sim, openai, anthropic or a registered provider
        base_url: http://127.0.0.1:11434/v1   # provider options, checked by the provider
        model: lfm2
        api_key_env: LFM_KEY                   # NAME of the environment variable holding the key
        price: {input_per_mtok: 0.1, output_per_mtok: 0.4}   # optional, for cost reports
        simulated: false                       # optional bool
        max_concurrency: 8                     # optional int >= 1; this model's calls in flight per process
        rpm: 500                               # optional; requests per minute (per process)
        tpm: 200000                            # optional; input+output tokens per minute (per process)
    fallback_chain: [lfm]   # model aliases; a capability limit routes to the next one. []
    variants:               # required; name -> template with "{prompt}" exactly once
      native_api: "{prompt}"
      atomic: {template: "Answer with the final answer only.\\n\\n{prompt}", system: "Be terse."}
    knobs:                  # optional; your own knobs and their defaults (not core knob names);
      temperature: 0.0      # each must be usable by some model (sim: its knob_effects)
    initial:                # required; the first baseline of every phase
      model: lfm            # a models alias
      variant: native_api   # a variants name
      timeout_s: 60         # number > 0, per attempt
      retries: 1            # int >= 0, extra attempts after a transport failure
      isolation: i0         # i0 (reuse one client) or i1 (fresh client per call)
      warmup: false         # bool; unmeasured warm-up calls before the first measured one
      temperature: 0.0      # declared knobs may be set; missing ones take their default
    search:                 # knob -> non-empty list of values; each candidate changes one knob
      variant: [native_api, atomic]
      timeout_s: [60, 120]
    max_candidates: 4       # int >= 0; candidates per phase and cycle
    gates:                  # optional; defaults are the seed's
      min_samples: 3        # int >= 1 runs
      max_variance: 0.0025  # 0..1, variance of run accuracies
      min_restraint: 0.80   # 0..1
      route_share: 0.5      # (0, 1], share of capability-limited cases that triggers a route
      cooldown_cycles: 3    # int >= 0, cycles before a failed candidate is tried again
      alpha: 0.05           # (0, 1); paired: one-sided level, Holm-corrected over candidates
      min_effect: 0.0       # 0..1; paired: smallest improvement worth promoting ...
      min_effect_prompts: 1 # ... and at least this many prompts' worth
      interval_level: 0.90  # (0, 1); interval recorded with a promoted improvement
      exact_below: 20       # exact permutation test below this many informative prompts
      max_flip_rate: 1.0    # 0..1; paired stability gate on run-to-run flips (1.0: advisory)
      effect_of_interest: 0.05  # (0, 1]; minimum detectable effect above it: "underpowered"
      power: 0.80           # (0, 1); power at which the detectable effect is computed
      warmup_min_cases: 2   # int >= 1; cold-start cases needed to recommend warm-up
      regression_tolerance: 0.0  # 0..1; --selfopt-check: smallest accuracy drop that counts (at least 1/K)
      screen_runs: 0        # int >= 0; 3+ search candidates run only runs 1..N, the leader is
                            # confirmed next cycle on all runs (0: off; docs/statistics.md)

Rules worth knowing:

* API keys are only ever referenced by environment variable name (``api_key_env``, or
  ``${VAR}`` inside ``headers``). A literal key (``api_key:``, ``token:``, ``Authorization:``,
  or anything shaped like ``sk-...``) is refused, and the value is never repeated in the error.
* YAML is read with YAML 1.2 scalars: only ``true``/``false`` are booleans (``yes``, ``no``,
  ``on`` stay strings), ``1:30`` and ``2024-01-01`` stay strings, ``012`` is the string
  ``"012"``. Booleans are refused where numbers are expected. Duplicate keys are an error.
* Unknown keys are errors, with a did-you-mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pytest_selfopt.loop.spec import CORE_KNOBS, ISOLATIONS, Scalar, Spec
from pytest_selfopt.loop.types import GateSettings, LoopSettings, SearchSpace
from pytest_selfopt.models import base as models_base
from pytest_selfopt.suite.credentials import refuse_secrets
from pytest_selfopt.suite.yamlread import (
    ConfigError,
    Reader,
    load_yaml,
    plain,
    show,
)

#: Upper bounds that keep a typo (``runs: 100000``) from collecting millions of test items.
MAX_RUNS = 1000
MAX_SEARCH_VALUES = 1000
#: Values in the whole config file (the example has about 80).
MAX_CONFIG_VALUES = 20_000
#: Test items one session may collect (runs x cases x specs, all phases): see check_item_count.
MAX_ITEMS = 100_000
RUNS_WHY = " (runs per spec; more than 1,000 would collect millions of test items)"

DEFAULT_PATHS: tuple[str, ...] = ("benchmarks/selfopt.yaml", "selfopt.yaml")
BUILTIN_PROVIDERS: tuple[str, ...] = ("sim", "openai", "anthropic")
TOP_KEYS: tuple[str, ...] = ("seed", "runs", "concurrency", "policy", "models", "fallback_chain",
                             "variants", "knobs", "initial", "search", "max_candidates",
                             "gates")  # fmt: skip
#: Per-model limits read by the runner, never passed to the provider.
LIMIT_KEYS = ("max_concurrency", "rpm", "tpm")
MAX_CONCURRENCY = 1000
GATE_KEYS = ("min_samples", "max_variance", "min_restraint", "route_share", "cooldown_cycles",
             "alpha", "min_effect", "min_effect_prompts", "interval_level", "exact_below",
             "max_flip_rate", "effect_of_interest", "power", "warmup_min_cases",
             "regression_tolerance", "screen_runs")  # fmt: skip
POLICY_NAMES = ("paired", "seed")  # built in; plugins add more (pytest_selfopt_register_policies)
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
KNOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- the suite config ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One entry of ``models:``; ``options`` is everything but ``provider``, as plain data."""

    name: str
    provider: str
    options: Mapping[str, Any] = field(hash=False)
    #: this model's calls in flight per process; requests and tokens per minute (per process)
    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None

    @property
    def price(self) -> tuple[float, float] | None:
        """``(input_per_mtok, output_per_mtok)``: currency per million tokens, if configured."""
        price = self.options.get("price")
        if not isinstance(price, Mapping):
            return None
        return float(price["input_per_mtok"]), float(price["output_per_mtok"])


@dataclass(frozen=True)
class VariantConfig:
    """A named prompt template; ``{prompt}`` is replaced literally, so braces stay safe."""

    name: str
    template: str
    system: str | None = None

    def render(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)


@dataclass(frozen=True)
class SuiteConfig:
    """The validated suite config; ``root`` is the config file's folder (paths resolve there)."""

    path: Path
    root: Path
    seed: int
    runs: int
    policy: str
    models: Mapping[str, ModelConfig] = field(hash=False)
    fallback_chain: tuple[str, ...]
    variants: Mapping[str, VariantConfig] = field(hash=False)
    initial: Spec
    declared_knobs: Mapping[str, Scalar] = field(hash=False)
    search: SearchSpace
    max_candidates: int
    gates: GateSettings
    #: model calls in flight per process; not part of the plan (never changes a decision)
    concurrency: int = 1

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            initial=self.initial, search=self.search, max_candidates=self.max_candidates,
            gates=self.gates, fallback_chain=self.fallback_chain, runs=self.runs,
            seed=self.seed, policy=self.policy,
        )  # fmt: skip


def check_item_count(config_path: Path, items: int, runs: int) -> None:
    """Refuse a session that would collect more than MAX_ITEMS test items, before it does.

    Called by the plugin with the running total (runs x cases x specs, every phase) as it
    parametrizes, so ``runs: 100000`` or a huge cases file fails in one line instead of
    eating gigabytes while collecting (docs/reliability.md)."""
    if items > MAX_ITEMS:
        raise ConfigError(config_path, "runs", f"at most {MAX_ITEMS:,} test items", message=(
            f"this session would collect more than {MAX_ITEMS:,} test items (runs x specs x "
            f"cases, at {runs} runs per spec); lower runs (or --selfopt-runs), max_candidates "
            "or the number of cases, or split the suite"))  # fmt: skip


def find_config(rootdir: Path, configured: str | None) -> Path | None:
    """The configured path (relative to ``rootdir``), else the first default that exists."""
    if configured:
        return Path(rootdir) / configured  # an absolute ``configured`` wins the join
    return next((Path(rootdir) / p for p in DEFAULT_PATHS if (Path(rootdir) / p).is_file()), None)


def load_config(path: str | Path) -> SuiteConfig:
    """Read and validate a suite config; raises :class:`ConfigError` on the first problem."""
    path = Path(path)
    r = Reader(path)
    doc = load_yaml(
        path,
        ConfigError,
        "file not found; create it or set selfopt_config in your pytest ini",
        max_values=MAX_CONFIG_VALUES,
    )
    if doc is None:
        r.fail(
            "",
            "settings",
            message="the file is empty; expected at least models, variants and initial",
        )
    top = r.mapping(doc, "")
    refuse_secrets(r, top, "")
    r.mapping(top, "", TOP_KEYS)
    for name, want in (("models", "a mapping of model alias to {provider: ..., ...}"),
                       ("variants", 'a mapping of variant name to a template with "{prompt}"'),
                       ("initial", "the first spec: " + ", ".join(CORE_KNOBS))):  # fmt: skip
        if name not in top:
            r.missing(name, want)
    (models, providers), variants = _models(r, top["models"]), _variants(r, top["variants"])
    declared = _declared(r, _section(top, "knobs"))
    _usable_knobs(r, declared, providers)
    knobs = _Knobs(r, list(models), list(variants), declared)
    chain = r.items(top.get("fallback_chain", []), "fallback_chain", "a list of model aliases")
    for i, alias in enumerate(chain):
        r.choice(alias, f"fallback_chain[{i}]", list(models), "a model alias")
        if alias in chain[:i]:
            r.fail(f"fallback_chain[{i}]", "each model once", message=f"{alias!r} is listed twice")
    return SuiteConfig(
        path=path, root=path.parent, seed=r.integer(top.get("seed", 0), "seed"),
        runs=r.integer(top.get("runs", 7), "runs", lo=1, hi=MAX_RUNS, why=RUNS_WHY),
        policy=r.string(top.get("policy", "paired"), "policy", what="a policy name"),
        models=models, fallback_chain=tuple(chain), variants=variants,
        initial=knobs.initial(top["initial"]), declared_knobs=knobs.declared,
        search=knobs.search(_section(top, "search")),
        max_candidates=r.integer(top.get("max_candidates", 4), "max_candidates", lo=0),
        gates=_gates(r, _section(top, "gates")),
        concurrency=r.integer(top.get("concurrency", 1), "concurrency", lo=1, hi=MAX_CONCURRENCY,
                              why=" (at most 1,000 calls in flight per process)"),
    )  # fmt: skip


def _section(top: Mapping[str, Any], key: str) -> Any:
    """An optional section; left empty (``gates:`` and nothing under it) means defaults."""
    return {} if top.get(key) is None else top[key]


def _usable_knobs(r: Reader, declared: Mapping[str, Scalar], providers: list[Any]) -> None:
    """A declared knob no model can use would be searched for nothing: refuse it."""
    for knob in declared:
        if providers and not any(models_base.provider_uses_knob(p, knob) for p in providers):
            r.fail(f"knobs.{knob}", "a knob some model can use", message=(
                f"no model can use knob {knob!r}: sim models react only to knobs in their "
                "knob_effects; openai/anthropic send every knob except messages, stream, "
                "system, model"))  # fmt: skip


def _limits(r: Reader, options: dict[str, Any], key: str) -> dict[str, Any]:
    """Pop and check the runner's per-model limits (they are not provider options)."""
    out: dict[str, Any] = {}
    if "max_concurrency" in options:
        out["max_concurrency"] = r.integer(
            options.pop("max_concurrency"), f"{key}.max_concurrency", lo=1
        )
    for part in ("rpm", "tpm"):  # requests / input+output tokens per minute
        if part in options:
            out[part] = r.number(options.pop(part), f"{key}.{part}", lo=0, lo_open=True)
    return out


def _models(r: Reader, raw: Any) -> tuple[dict[str, ModelConfig], list[Any]]:
    """The models, and the provider objects built to check them (None where unbuildable)."""
    entries = r.mapping(raw, "models")
    if not entries:
        r.fail("models", "at least one model", raw)
    registered = models_base.provider_names()
    known = sorted(set(registered) | set(BUILTIN_PROVIDERS))
    out: dict[str, ModelConfig] = {}
    providers: list[Any] = []
    for alias, entry in entries.items():
        key = f"models.{alias}"
        r.string(alias, key, NAME, "a model alias of letters, digits and ._:/@+-")
        e = r.mapping(entry, key)
        if "provider" not in e:
            r.missing(f"{key}.provider", f"one of: {', '.join(known)}")
        kind = r.choice(e["provider"], f"{key}.provider", known, "a provider")
        options: dict[str, Any] = {k: plain(v) for k, v in e.items() if k != "provider"}
        limits = _limits(r, options, key)
        if "api_key_env" in options and not ENV_NAME.fullmatch(str(options["api_key_env"])):
            r.fail(f"{key}.api_key_env", "an environment variable NAME", message=(
                "expected the NAME of an environment variable holding the key, like OPENAI_API_KEY "
                "(capitals, digits, underscores); the value is not shown in case it is the key"))  # fmt: skip
        if "price" in options:
            price = r.mapping(
                options["price"], f"{key}.price", ["input_per_mtok", "output_per_mtok"]
            )
            for part in ("input_per_mtok", "output_per_mtok"):
                if part not in price:
                    r.missing(f"{key}.price.{part}", "a number >= 0 (currency per million tokens)")
                r.number(price[part], f"{key}.price.{part}", lo=0)
        r.boolean(options.get("simulated", False), f"{key}.simulated")
        if kind == "sim":  # the simulator ignores other keys, so a typo would pass silently
            from pytest_selfopt.models.sim import SIM_KEYS

            r.mapping(e, key, sorted(SIM_KEYS | {"provider", "model", "api_key_env", "price",
                                                 "simulated", "description", *LIMIT_KEYS}))  # fmt: skip
        try:
            providers.append(models_base.create_provider(kind, alias, options))
        except (
            LookupError
        ) as exc:  # a builtin whose module is not there: only its own refusal counts
            if kind in registered:
                _provider_error(r, key, exc)
        except (ValueError, TypeError) as exc:
            _provider_error(r, key, exc)
        out[alias] = ModelConfig(name=alias, provider=kind, options=options, **limits)
    return out, providers


def _provider_error(r: Reader, key: str, exc: Exception) -> NoReturn:
    """Providers say ``"skill.atomic: expected ..."``; fold that sub-key into ours."""
    text = str(exc)
    found = re.match(r"([\w.\[\]-]+): (.*)", text, re.DOTALL)
    if found:
        key, text = f"{key}.{found[1]}", found[2]
    r.fail(key, text.removeprefix("expected ").split(", got ")[0], message=text)


def _variants(r: Reader, raw: Any) -> dict[str, VariantConfig]:
    entries = r.mapping(raw, "variants")
    if not entries:
        r.fail("variants", 'at least one variant, e.g. native_api: "{prompt}"', raw)
    out: dict[str, VariantConfig] = {}
    for name, value in entries.items():
        key, system = f"variants.{name}", None
        r.string(name, key, NAME, "a variant name of letters, digits and ._:/@+-")
        if isinstance(value, Mapping):
            r.mapping(value, key, ["template", "system"])
            if "template" not in value:
                r.missing(f"{key}.template", 'a template containing "{prompt}"')
            template, key = value["template"], f"{key}.template"
            if value.get("system") is not None:
                system = r.string(
                    value["system"], f"variants.{name}.system", what="a system prompt"
                )
        elif isinstance(value, str):
            template = value
        else:
            r.fail(key, 'a template string with "{prompt}", or {template: ..., system: ...}', value)
        count = template.count("{prompt}") if isinstance(template, str) else 0
        if count != 1:
            r.fail(key, 'a template containing "{prompt}" exactly once', template, message=(
                f'expected a template containing "{{prompt}}" exactly once, found it {count} '
                f"times in {show(template)}"))  # fmt: skip
        out[name] = VariantConfig(name=name, template=template, system=system)
    return out


def _declared(r: Reader, raw: Any) -> dict[str, Scalar]:
    """User knobs and their defaults; core knob names are taken."""
    out: dict[str, Scalar] = {}
    for name, default in r.mapping(raw, "knobs").items():
        key = f"knobs.{name}"
        if name in CORE_KNOBS or name == "spec_id":
            r.fail(key, "a knob of your own", message=(
                f"{name!r} is a core knob; set it under initial: and search:, not knobs:"))  # fmt: skip
        r.string(name, key, KNOB_NAME, "a knob name of letters, digits and _")
        if not isinstance(default, str | int | float) or not math.isfinite(
            default if isinstance(default, int | float) else 0
        ):
            r.fail(key, "a default value: a string, number or true/false", default)
        out[name] = default
    return out


@dataclass(frozen=True)
class _Knobs:
    """Checks knob values (in ``initial`` and ``search``) against models, variants and knobs."""

    r: Reader
    models: list[str]
    variants: list[str]
    declared: Mapping[str, Scalar]

    def value(self, knob: str, value: Any, key: str) -> Scalar:
        """One knob value, checked, in its canonical type (``timeout_s`` is a float)."""
        r = self.r
        if knob in ("model", "variant", "isolation"):
            choices = {
                "model": self.models,
                "variant": self.variants,
                "isolation": list(ISOLATIONS),
            }
            what = {
                "model": "a model alias",
                "variant": "a variant name",
                "isolation": "an isolation level",
            }
            return r.choice(value, key, choices[knob], what[knob])
        if knob == "timeout_s":
            return r.number(value, key, lo=0, lo_open=True)
        if knob == "retries":
            return r.integer(value, key, lo=0)
        default = self.declared.get(knob, False)  # warmup is a bool
        if isinstance(default, bool):
            return r.boolean(value, key)
        if isinstance(default, int | float):
            r.number(value, key)
            return float(value) if isinstance(value, float) else int(value)
        return r.string(value, key, what="a string (like the knob's default)")

    def _mapping(self, raw: Any, key: str) -> Mapping[str, Any]:
        hint = " (declare your own knobs under knobs: first)"
        return self.r.mapping(raw, key, [*CORE_KNOBS, *self.declared], hint)

    def initial(self, raw: Any) -> Spec:
        m = self._mapping(raw, "initial")
        for knob in CORE_KNOBS:
            if knob not in m:
                self.r.missing(f"initial.{knob}", _KNOB_HELP[knob])
        core = {k: self.value(k, m[k], f"initial.{k}") for k in CORE_KNOBS}
        extra = tuple((k, self.value(k, m[k], f"initial.{k}") if k in m else d)
                      for k, d in self.declared.items())  # fmt: skip
        return Spec(**core, extra=extra)  # type: ignore[arg-type]

    def search(self, raw: Any) -> SearchSpace:
        knobs: list[tuple[str, tuple[Scalar, ...]]] = []
        for knob, values in self._mapping(raw, "search").items():
            key = f"search.{knob}"
            if not isinstance(values, list) or not values:
                self.r.fail(key, "a non-empty list of values to try", values)
            if len(values) > MAX_SEARCH_VALUES:
                self.r.fail(key, f"at most {MAX_SEARCH_VALUES} values", message=(
                    f"{len(values):,} values to try, above the limit of {MAX_SEARCH_VALUES}; "
                    "each cycle tries only max_candidates of them"))  # fmt: skip
            seen: list[Scalar] = []
            known: set[Scalar] = set()  # == like the list it replaces: 1, 1.0 and True meet
            for i, value in enumerate(values):
                v = self.value(knob, value, f"{key}[{i}]")
                if v in known:
                    self.r.fail(
                        f"{key}[{i}]", "each value once", message=f"{show(value)} is listed twice"
                    )
                known.add(v)
                seen.append(v)
            knobs.append((knob, tuple(seen)))
        return SearchSpace(knobs=tuple(knobs))


_KNOB_HELP = {"model": "a model alias from models:", "variant": "a variant name from variants:",
              "timeout_s": "a number of seconds above 0", "retries": "a whole number >= 0",
              "isolation": "i0 or i1", "warmup": "true or false"}  # fmt: skip


def _gates(r: Reader, raw: Any) -> GateSettings:
    g, d = r.mapping(raw, "gates", GATE_KEYS), GateSettings()

    def number(key: str, lo: float, hi: float, open_lo: bool = False) -> float:
        value = r.number(g.get(key, getattr(d, key)), f"gates.{key}", lo, hi, open_lo)
        if key in ("alpha", "interval_level", "power") and value >= 1:
            r.fail(f"gates.{key}", "a number between 0 and 1 (exclusive)", value)
        return value

    def whole(key: str, lo: int) -> int:
        return r.integer(g.get(key, getattr(d, key)), f"gates.{key}", lo)

    return GateSettings(
        min_samples=whole("min_samples", 1),
        max_variance=number("max_variance", 0, 1),
        min_restraint=number("min_restraint", 0, 1),
        route_share=number("route_share", 0, 1, True),
        cooldown_cycles=whole("cooldown_cycles", 0),
        alpha=number("alpha", 0, 1, True),
        min_effect=number("min_effect", 0, 1),
        min_effect_prompts=number("min_effect_prompts", 0, 1000),
        interval_level=number("interval_level", 0, 1, True),
        exact_below=whole("exact_below", 0),
        max_flip_rate=number("max_flip_rate", 0, 1),
        effect_of_interest=number("effect_of_interest", 0, 1, True),
        power=number("power", 0, 1, True),
        warmup_min_cases=whole("warmup_min_cases", 1),
        regression_tolerance=number("regression_tolerance", 0, 1),
        screen_runs=whole("screen_runs", 0),
    )
