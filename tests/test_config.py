"""The suite config: a realistic file loads into the documented shapes, and every kind of bad
input is refused with an error naming the file, the key and what was expected."""

from __future__ import annotations

import pickle
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import GateSettings, LoopSettings, SearchSpace
from pytest_selfopt.models import base as models_base
from pytest_selfopt.suite import config as config_mod
from pytest_selfopt.suite.config import ModelConfig, SuiteConfig, find_config, load_config
from pytest_selfopt.suite.yamlread import ConfigError

# Only sim models and options every provider shares, so the example holds whichever real
# provider modules exist yet; real providers are covered with a registered stand-in below.
EXAMPLE = """\
# Example suite: simulated models, as in the README.
seed: 11
runs: 5
policy: seed
models:
  lfm:
    provider: sim
    skill: {atomic: 0.6, extended: 0.0}
    variant_bonus: {atomic: 0.2}
    cold_start_calls: 2
    price: {input_per_mtok: 0.1, output_per_mtok: 0.4}
  big:
    provider: sim
    skill: 0.95
    latency_s: 2.5
    simulated: true
    knob_effects: {temperature: {0.7: {flaky: 0.1}}, style: {terse: {ramble: -0.1}}}
fallback_chain: [lfm, big]
variants:
  native_api: "{prompt}"
  atomic:
    template: "Answer with the final answer only.\\n\\n{prompt}"
    system: You are terse.
knobs:
  temperature: 0.0
  style: plain
initial:
  model: lfm
  variant: native_api
  timeout_s: 60
  retries: 1
  isolation: i0
  warmup: false
  style: plain
search:
  variant: [native_api, atomic]
  timeout_s: [60, 120]
  temperature: [0.0, 0.7]
  warmup: [false, true]
max_candidates: 3
gates: {min_samples: 4, max_variance: 0.01, min_restraint: 0.75}
"""


def write(tmp_path: Path, text: str, name: str = "selfopt.yaml") -> Path:
    path = tmp_path / "benchmarks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def edit(**changes: Any) -> str:
    """EXAMPLE with top-level sections replaced (None drops a section)."""
    import yaml

    doc = yaml.safe_load(EXAMPLE)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return yaml.safe_dump(doc, sort_keys=False)


def test_realistic_example_loads_into_the_documented_shapes(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    cfg = load_config(path)
    assert isinstance(cfg, SuiteConfig)
    assert (cfg.path, cfg.root, cfg.seed, cfg.runs, cfg.policy) == (
        path,
        path.parent,
        11,
        5,
        "seed",
    )
    assert list(cfg.models) == ["lfm", "big"]  # file order
    lfm = cfg.models["lfm"]
    assert lfm == ModelConfig("lfm", "sim", lfm.options)
    assert "provider" not in lfm.options and lfm.options["skill"] == {
        "atomic": 0.6,
        "extended": 0.0,
    }
    assert type(lfm.options["skill"]) is dict  # plain data, not the loader's dict subclass
    assert lfm.price == (0.1, 0.4) and cfg.models["big"].price is None
    assert cfg.fallback_chain == ("lfm", "big")
    atomic = cfg.variants["atomic"]
    assert atomic.system == "You are terse." and cfg.variants["native_api"].system is None
    assert atomic.render("2+2?") == "Answer with the final answer only.\n\n2+2?"
    assert cfg.declared_knobs == {"temperature": 0.0, "style": "plain"}
    assert cfg.initial == Spec("lfm", "native_api", 60.0, 1, "i0", False,
                               extra=(("temperature", 0.0), ("style", "plain")))  # fmt: skip
    assert cfg.search == SearchSpace(
        knobs=(("variant", ("native_api", "atomic")), ("timeout_s", (60.0, 120.0)),
               ("temperature", (0.0, 0.7)), ("warmup", (False, True)))
    )  # fmt: skip
    assert isinstance(cfg.search.values("timeout_s")[0], float)
    assert cfg.max_candidates == 3
    assert cfg.gates == GateSettings(min_samples=4, max_variance=0.01, min_restraint=0.75)
    assert cfg.loop_settings() == LoopSettings(
        initial=cfg.initial, search=cfg.search, max_candidates=3, gates=cfg.gates,
        fallback_chain=("lfm", "big"), runs=5, seed=11, policy="seed",
    )  # fmt: skip


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """\
        models: {m: {provider: sim}}
        variants: {plain: "{prompt}"}
        initial: {model: m, variant: plain, timeout_s: 30, retries: 0, isolation: i1, warmup: true}
        gates:
    """))  # fmt: skip
    assert (cfg.seed, cfg.runs, cfg.policy, cfg.max_candidates) == (0, 7, "paired", 4)
    assert cfg.fallback_chain == () and cfg.search == SearchSpace() and cfg.declared_knobs == {}
    assert cfg.gates == GateSettings()
    assert cfg.initial.isolation == "i1" and cfg.initial.warmup is True


def test_variant_render_keeps_braces_in_prompts_literal(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, EXAMPLE))
    prompt = 'Format {"a": 1} and {prompt} and {0}'
    assert cfg.variants["native_api"].render(prompt) == prompt


BAD: list[tuple[str, str, str]] = [
    # (yaml text, key, substring of the message after the key)
    # a boolean is echoed as YAML spells it, not as Python does
    (edit(max_candidates=True), "max_candidates", "expected a whole number >= 0, got true"),
    (
        edit(gates={"max_variance": "abc"}),
        "gates.max_variance",
        "expected a number from 0 to 1, got 'abc'",
    ),
    (
        edit(gates={"route_share": 0}),
        "gates.route_share",
        "expected a number above 0 and at most 1, got 0",
    ),
    (edit(gates={"min_samples": 0}), "gates.min_samples", "expected a whole number >= 1, got 0"),
    (EXAMPLE + "gatez: {}\n", "gatez", "unknown key; expected one of: seed, runs"),
    (edit(runs=True), "runs", "expected a whole number from 1 to 1,000 (runs per spec;"),
    (
        edit(runs=100_000),
        "runs",
        "more than 1,000 would collect millions of test items), got 100000",
    ),
    (edit(max_candidates=-1), "max_candidates", "expected a whole number >= 0, got -1"),
    (edit(models=None), "models", "missing; expected a mapping of model alias"),
    (edit(models={}), "models", "expected at least one model, got {}"),
    (
        edit(models={"lfm": {"skill": 0.5}}),
        "models.lfm.provider",
        "missing; expected one of: anthropic, openai, sim",
    ),
    (
        edit(models={"lfm": {"provider": "opena"}}),
        "models.lfm.provider",
        "got 'opena'; did you mean 'openai'?",
    ),
    (
        edit(models={"lfm": {"provider": "sim", "skill": {"atomic": 5}}}),
        "models.lfm.skill.atomic",
        "expected a number from 0.0 to 1.0, got 5",
    ),
    (
        edit(models={"lfm": {"provider": "sim", "skil": 0.5}}),
        "models.lfm.skil",
        "unknown key; expected one of:",
    ),
    (
        edit(models={"lfm": {"provider": "sim", "price": {"input_per_mtok": 1}}}),
        "models.lfm.price.output_per_mtok",
        "missing; expected a number >= 0",
    ),
    (
        edit(fallback_chain=["lfm", "bigg"]),
        "fallback_chain[1]",
        "expected a model alias (one of: lfm, big), got 'bigg'",
    ),
    (
        edit(variants={"native_api": "{prompt}", "atomic": "Answer only."}),
        "variants.atomic",
        'expected a template containing "{prompt}" exactly once, found it 0 times',
    ),
    (
        edit(variants={"native_api": "{prompt}", "atomic": {"template": "{prompt} {prompt}"}}),
        "variants.atomic.template",
        "found it 2 times",
    ),
    (edit(knobs={"model": "x"}), "knobs.model", "'model' is a core knob"),
    (
        EXAMPLE.replace("  model: lfm\n  variant", "  model: lfn\n  variant"),
        "initial.model",
        "expected a model alias (one of: lfm, big), got 'lfn'; did you mean 'lfm'?",
    ),
    (
        EXAMPLE.replace("  warmup: false\n  style", "  style"),
        "initial.warmup",
        "missing; expected true or false",
    ),
    (
        EXAMPLE.replace("warmup: false", "warmup: yes"),
        "initial.warmup",
        "expected true or false, got 'yes'",
    ),
    (EXAMPLE.replace("isolation: i0", "isolation: i2"), "initial.isolation", "got 'i2'"),
    (
        EXAMPLE.replace("timeout_s: 60\n", "timeout_s: 0\n"),
        "initial.timeout_s",
        "expected a number above 0, got 0",
    ),
    (
        EXAMPLE.replace("  style: plain\nsearch", "  colour: red\nsearch"),
        "initial.colour",
        "unknown key; expected one of: model, variant, timeout_s, retries, isolation, warmup, temperature, style",
    ),
    (
        EXAMPLE.replace("warmup: [false, true]", "retries: []"),
        "search.retries",
        "expected a non-empty list",
    ),
    (
        EXAMPLE.replace("[native_api, atomic]", "[native_api, atomc]"),
        "search.variant[1]",
        "did you mean 'atomic'?",
    ),
    (EXAMPLE.replace("[60, 120]", "[60, 60.0]"), "search.timeout_s[1]", "listed twice"),
    (
        EXAMPLE.replace("temperature: [0.0, 0.7]", "temperature: [0.0, hot]"),
        "search.temperature[1]",
        "expected a number, got 'hot'",
    ),
    (EXAMPLE.replace("warmup: [false, true]", "colour: [red]"), "search.colour", "unknown key"),
    (
        EXAMPLE + "runs: 3\n",
        "",
        "not valid YAML (line 42, column 1): duplicate key 'runs' (first on line 3)",
    ),
    ("models: {lfm: {provider: sim}\nvariants: x\n", "", "not valid YAML (line 2"),
    ("", "", "the file is empty"),
    ("- a\n- b\n", "", "expected a mapping (indented `name: value` lines), got ['a', 'b']"),
]


@pytest.mark.parametrize(
    ("text", "key", "message"), BAD, ids=[f"{i}-{b[1] or 'file'}" for i, b in enumerate(BAD)]
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   text: str, key: str, message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.key) == (str(Path("benchmarks/selfopt.yaml")), key)
    prefix = f"benchmarks/selfopt.yaml: {key}: " if key else "benchmarks/selfopt.yaml: "
    assert str(err).startswith(prefix), str(err)
    assert message in str(err)
    assert err.expected  # always says what was wanted


def test_unknown_top_level_key_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gatez: unknown key; .*did you mean 'gates'\?"):
        load_config(write(tmp_path, EXAMPLE + "gatez: {}\n"))


def test_missing_file_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "benchmarks" / "selfopt.yaml")
    assert str(info.value) == (
        "benchmarks/selfopt.yaml: file not found; create it or set selfopt_config in your pytest ini"
    )


SECRET = "sk-ant-api03-VERYSECRETVALUE0123456789abcdef"


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"provider": "sim", "api_key": SECRET}, "models.lfm.api_key"),
        ({"provider": "sim", "token": "hunter2-plain-token"}, "models.lfm.token"),
        (
            {"provider": "sim", "headers": {"Authorization": f"Bearer {SECRET}"}},
            "models.lfm.headers.Authorization",
        ),
        ({"provider": "sim", "model": f"https://api.example.com/?k={SECRET}"}, "models.lfm.model"),
        ({"provider": "sim", "api_key_env": SECRET}, "models.lfm.api_key_env"),
    ],
)
def test_literal_secret_is_refused_without_echoing_it(
    tmp_path: Path, model: Mapping[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, edit(models={"lfm": model, "big": {"provider": "sim"}})))
    err = info.value
    assert err.key == key
    assert "api_key_env" in str(err)  # tells them what to do instead
    for leaked in (SECRET, "VERYSECRET", "hunter2"):
        assert leaked not in str(err) and leaked not in repr(err) and leaked not in (err.got or "")


def test_api_key_env_must_be_a_variable_name_and_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, edit(models={"lfm": {"provider": "sim", "api_key_env": "my key 123"},
                                                 "big": {"provider": "sim"}})))  # fmt: skip
    assert info.value.key == "models.lfm.api_key_env"
    assert "NAME of an environment variable" in str(info.value) and "my key" not in str(info.value)


def test_api_key_env_name_is_accepted_and_kept(tmp_path: Path) -> None:
    effects = {"temperature": {0.7: {"flaky": 0.1}}, "style": {"terse": {"ramble": -0.1}}}
    big = {"provider": "sim", "knob_effects": effects}
    models = {"lfm": {"provider": "sim", "api_key_env": "LFM_KEY"}, "big": big}
    cfg = load_config(write(tmp_path, edit(models=models)))
    assert cfg.models["lfm"].options["api_key_env"] == "LFM_KEY"


def test_registered_provider_errors_become_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def factory(name: str, options: Mapping[str, Any]) -> Any:
        seen.append((name, dict(options)))
        if not str(options.get("base_url", "")).startswith("http"):
            raise ValueError(f"base_url: expected an http(s) URL, got {options.get('base_url')!r}")
        return object()

    models_base.provider_names()  # load the builtins before adding ours
    monkeypatch.setitem(models_base._REGISTRY, "myhttp", factory)
    good = {"provider": "myhttp", "base_url": "http://127.0.0.1:8000/v1", "model": "x"}
    cfg = load_config(write(tmp_path, edit(models={"lfm": good, "big": {"provider": "sim"}})))
    assert cfg.models["lfm"].provider == "myhttp"
    assert seen == [("lfm", {"base_url": "http://127.0.0.1:8000/v1", "model": "x"})]
    bad = {"provider": "myhttp", "base_url": "ftp://x"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, edit(models={"lfm": bad, "big": {"provider": "sim"}})))
    assert info.value.key == "models.lfm.base_url"
    assert str(info.value).endswith("models.lfm.base_url: expected an http(s) URL, got 'ftp://x'")


def test_builtin_provider_whose_module_is_missing_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(kind: str, name: str, options: Mapping[str, Any]) -> Any:
        raise LookupError(f"model {name!r}: unknown provider {kind!r}")

    monkeypatch.setattr(config_mod.models_base, "provider_names", lambda: ["sim"])
    monkeypatch.setattr(config_mod.models_base, "create_provider", missing)
    text = edit(models={"lfm": {"provider": "openai", "base_url": "http://x/v1", "model": "m",
                                "api_key_env": "OPENAI_API_KEY"},
                        "big": {"provider": "anthropic", "model": "claude-haiku-4-5"}})  # fmt: skip
    cfg = load_config(write(tmp_path, text))
    assert [m.provider for m in cfg.models.values()] == ["openai", "anthropic"]
    with pytest.raises(ConfigError, match="models.lfm.provider: expected a provider"):
        load_config(
            write(tmp_path, edit(models={"lfm": {"provider": "vllm"}, "big": {"provider": "sim"}}))
        )


def test_yaml_12_scalars_keep_yes_no_and_times_as_strings(tmp_path: Path) -> None:
    import yaml

    models = yaml.safe_load(EXAMPLE)["models"]
    models["big"]["knob_effects"].update(
        {"mode": {"z": {"flaky": 0.1}}, "at": {"z": {"flaky": 0.1}}}
    )
    text = edit(knobs={"temperature": 0.0, "style": "plain", "mode": "x", "at": "y"}, models=models)
    cfg = load_config(
        write(tmp_path, text.replace("mode: x", "mode: no").replace("at: y", "at: 1:30"))
    )
    assert cfg.declared_knobs["mode"] == "no" and cfg.declared_knobs["at"] == "1:30"


def test_config_error_survives_pickling() -> None:
    err = ConfigError(
        "benchmarks/selfopt.yaml", "gates.max_variance", "a number from 0 to 1", "'abc'"
    )
    copy = pickle.loads(pickle.dumps(err))
    assert (
        str(copy)
        == str(err)
        == "benchmarks/selfopt.yaml: gates.max_variance: expected a number from 0 to 1, got 'abc'"
    )
    assert (copy.path, copy.key, copy.expected) == (err.path, err.key, err.expected)


def test_find_config_prefers_configured_then_defaults(tmp_path: Path) -> None:
    assert find_config(tmp_path, None) is None
    (tmp_path / "selfopt.yaml").write_text("x: 1\n")
    assert find_config(tmp_path, None) == tmp_path / "selfopt.yaml"
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "selfopt.yaml").write_text("x: 1\n")
    assert find_config(tmp_path, None) == tmp_path / "benchmarks" / "selfopt.yaml"
    assert (
        find_config(tmp_path, "conf/suite.yaml") == tmp_path / "conf" / "suite.yaml"
    )  # even if missing
    assert find_config(tmp_path, str(tmp_path / "abs.yaml")) == tmp_path / "abs.yaml"
    assert find_config(tmp_path, "") == tmp_path / "benchmarks" / "selfopt.yaml"


def test_config_module_does_not_import_pytest() -> None:
    source = Path(config_mod.__file__).read_text()
    assert "import pytest" not in source and "from pytest " not in source


def test_real_http_providers_load_and_their_errors_name_the_key(tmp_path: Path) -> None:
    if not {"openai", "anthropic"} <= set(models_base.provider_names()):
        pytest.skip("HTTP provider modules not present")
    models = {
        "lfm": {"provider": "openai", "base_url": "http://127.0.0.1:11434/v1", "model": "lfm2",
                "headers": {"Authorization": "Bearer ${LFM_TOKEN}"}},
        "big": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
    }  # fmt: skip
    cfg = load_config(write(tmp_path, edit(models=models)))
    assert cfg.models["lfm"].options["headers"] == {"Authorization": "Bearer ${LFM_TOKEN}"}
    assert cfg.models["big"].provider == "anthropic"
    models["lfm"]["base_url"] = "localhost:11434"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, edit(models=models)))
    assert info.value.key == "models.lfm.base_url" and "expected an http(s) URL" in str(info.value)


# --------------------------------------------------------------------------- bounds


def test_search_lists_and_the_whole_file_are_bounded(tmp_path: Path) -> None:
    values = list(range(1, config_mod.MAX_SEARCH_VALUES + 2))
    with pytest.raises(ConfigError, match=r"search.timeout_s: 1,001 values to try, above the"):
        load_config(write(tmp_path, edit(search={"timeout_s": values})))
    many = list(range(1, config_mod.MAX_CONFIG_VALUES + 1))
    with pytest.raises(ConfigError, match=r"selfopt.yaml: line \d+: more than 20,000 values"):
        load_config(write(tmp_path, edit(search={"timeout_s": many})))


def test_item_count_is_checked_against_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config_mod.check_item_count(path, config_mod.MAX_ITEMS, 7)
    with pytest.raises(ConfigError) as err:
        config_mod.check_item_count(path, config_mod.MAX_ITEMS + 1, 7)
    assert str(err.value).startswith(f"{path}: runs: this session would collect more than")
    assert "lower runs (or --selfopt-runs), max_candidates or the number of cases" in str(err.value)


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(
        ConfigError, match=r"selfopt.yaml: line 5: more than 20,000 values once its aliases"
    ):
        load_config(write(tmp_path, bomb))


# --------------------------------------------------------------------------- concurrency, limits


def test_concurrency_and_per_model_limits_are_fields_not_provider_options(tmp_path: Path) -> None:
    import yaml

    models = yaml.safe_load(EXAMPLE)["models"]
    models["lfm"].update({"max_concurrency": 8, "rpm": 500, "tpm": 200000.5})
    cfg = load_config(write(tmp_path, edit(models=models, concurrency=16)))
    assert cfg.concurrency == 16
    lfm = cfg.models["lfm"]
    assert (lfm.max_concurrency, lfm.rpm, lfm.tpm) == (8, 500.0, 200000.5)
    assert not {"max_concurrency", "rpm", "tpm"} & set(lfm.options)
    big = cfg.models["big"]
    assert (big.max_concurrency, big.rpm, big.tpm) == (None, None, None)
    assert load_config(write(tmp_path, EXAMPLE)).concurrency == 1


@pytest.mark.parametrize("bad", [0, -1, True, "ten"])
@pytest.mark.parametrize("key", ["concurrency", "max_concurrency", "rpm", "tpm"])
def test_concurrency_and_limits_refuse_bad_values_naming_the_key(
    tmp_path: Path, key: str, bad: Any
) -> None:
    import yaml

    if key == "concurrency":
        text, dotted = edit(concurrency=bad), "concurrency"
    else:
        models = yaml.safe_load(EXAMPLE)["models"]
        models["lfm"][key] = bad
        text, dotted = edit(models=models), f"models.lfm.{key}"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert f"selfopt.yaml: {dotted}: expected" in str(err.value)


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at most 1,000 calls in flight per process"):
        load_config(write(tmp_path, edit(concurrency=1001)))


def test_a_declared_knob_no_model_can_use_is_refused(tmp_path: Path) -> None:
    import yaml

    models = yaml.safe_load(EXAMPLE)["models"]
    del models["big"]["knob_effects"]["style"]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, edit(models=models)))
    assert str(err.value).endswith(
        "selfopt.yaml: knobs.style: no model can use knob 'style': sim models react only to "
        "knobs in their knob_effects; openai/anthropic send every knob except messages, "
        "stream, system, model"
    )
