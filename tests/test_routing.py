"""The loader API applications use: ``load_routing(path).for_phase(name)`` (docs/routing.md)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import pytest_selfopt
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import Route
from pytest_selfopt.store import files
from pytest_selfopt.store.files import RoutingTable, UnknownPhaseError
from pytest_selfopt.store.formats import FilesError, dump_routing

ROOT = Path(__file__).resolve().parents[1]
HAIKU = Spec("claude-haiku", "native_api", 60, 1, "i0", True)
LFM = Spec("lfm", "atomic", 60, 1, "i0", False, extra=(("temperature", 0.2),))

# What an application finds in baselines/routing.yaml, written as a person would read it.
ROUTING = f"""\
version: 1
phases:
  atomic:
    model: lfm
    fallbacks:
      - claude-haiku
    variant: atomic
    timeout_s: 60
    retries: 1
    isolation: i0
    warmup: false
    extras:
      temperature: 0.2
    spec_id: {LFM.id}
  extended:
    model: claude-haiku
    fallbacks: []
    variant: native_api
    timeout_s: 60
    retries: 1
    isolation: i0
    warmup: true
    extras: {{}}
    spec_id: {HAIKU.id}
"""


@pytest.fixture
def baselines(tmp_path: Path) -> Path:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    return folder


def test_public_loader_is_the_files_loader() -> None:
    assert pytest_selfopt.load_routing is files.load_routing
    assert "load_routing" in pytest_selfopt.__all__


@pytest.mark.parametrize("how", ["folder", "file", "str"])
def test_load_routing_from_a_folder_or_a_file(baselines: Path, how: str) -> None:
    path: Any = {
        "folder": baselines,
        "file": baselines / "routing.yaml",
        "str": str(baselines / "routing.yaml"),
    }[how]
    table = pytest_selfopt.load_routing(path)
    assert isinstance(table, RoutingTable)
    assert table.phases == ("atomic", "extended")
    assert table.source.endswith("routing.yaml")

    route = table.for_phase("extended")
    assert isinstance(route, Route)
    assert route.phase == "extended"
    assert route.model == "claude-haiku" == route.spec.model
    assert route.fallbacks == ()
    assert route.spec == HAIKU and route.spec.id == HAIKU.id
    assert (route.spec.variant, route.spec.timeout_s, route.spec.retries) == ("native_api", 60.0, 1)
    assert (route.spec.isolation, route.spec.warmup) == ("i0", True)

    atomic = table.for_phase("atomic")
    assert atomic.fallbacks == ("claude-haiku",)
    assert atomic.spec.get("temperature") == 0.2
    assert list(atomic.spec.knobs()) == [
        "model", "variant", "timeout_s", "retries", "isolation", "warmup", "temperature",
    ]  # fmt: skip


def test_what_the_loop_writes_is_what_the_loader_reads(tmp_path: Path) -> None:
    routes = {
        "atomic": Route("atomic", LFM, ("claude-haiku",)),
        "extended": Route("extended", HAIKU, ()),
    }
    (tmp_path / "routing.yaml").write_text(dump_routing(routes), encoding="utf-8")
    table = pytest_selfopt.load_routing(tmp_path)
    assert dict(table.routes) == routes
    assert (tmp_path / "routing.yaml").read_text() == dump_routing(table.routes)


def test_unknown_phase_names_the_file_and_the_known_phases(baselines: Path) -> None:
    table = pytest_selfopt.load_routing(baselines)
    with pytest.raises(KeyError) as err:
        table.for_phase("summarize")
    assert isinstance(err.value, UnknownPhaseError)
    message = str(err.value)
    assert message.endswith(
        "routing.yaml has no route for phase 'summarize'; phases: atomic, extended"
    )
    assert "baselines" in message
    empty = RoutingTable({}, "r.yaml")
    with pytest.raises(UnknownPhaseError, match="r.yaml has no route for phase 'x'; phases: none"):
        empty.for_phase("x")


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(FilesError, match=r"routing.yaml: not found; run `pytest --selfopt`"):
        pytest_selfopt.load_routing(tmp_path)
    with pytest.raises(FilesError, match=r"nope.yaml: not found"):
        pytest_selfopt.load_routing(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    retries: 1\n    isolation: i0\n    warmup: true",
         "    retries: -1\n    isolation: i0\n    warmup: true",
         "phases.extended.retries: expected a whole number >= 0, got -1"),
        ("    fallbacks: []", "    fallbacks: claude-haiku",
         "phases.extended.fallbacks: expected a list of model names"),
        ("    model: claude-haiku\n", "    modle: claude-haiku\n",
         "phases.extended.modle: unknown key"),
        ("    timeout_s: 60\n    retries: 1\n    isolation: i0\n    warmup: true",
         "    timeout_s: 0\n    retries: 1\n    isolation: i0\n    warmup: true",
         "phases.extended.timeout_s: expected a number of seconds > 0, got 0"),
        ("    variant: native_api", "    variant: atomic",
         "phases.extended.spec_id: spec_id does not match the spec"),
        ("version: 1", "version: 2", "version: expected 1, got 2"),
    ],
)  # fmt: skip
def test_malformed_file_names_the_file_and_the_key(
    baselines: Path, old: str, new: str, message: str
) -> None:
    path = baselines / "routing.yaml"
    assert old in ROUTING
    path.write_text(ROUTING.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(FilesError) as err:
        pytest_selfopt.load_routing(baselines)
    text = str(err.value)
    assert re.match(r"^\S*baselines/routing\.yaml: ", text), text
    assert message in text


def test_missing_knob_names_what_every_spec_needs(baselines: Path) -> None:
    path = baselines / "routing.yaml"
    path.write_text(ROUTING.replace("    warmup: true\n", "", 1), encoding="utf-8")
    with pytest.raises(FilesError, match=r"routing.yaml: phases.extended.warmup: missing"):
        pytest_selfopt.load_routing(path)


def test_routing_doc_snippets_run(
    tmp_path: Path, baselines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/routing.md's loader and request-building snippets, run against the example suite."""
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(
        r"```python\n(.*?)```", (ROOT / "docs" / "routing.md").read_text(), re.DOTALL
    )
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {}
    for block in blocks[:2]:
        exec(compile(block, "docs/routing.md", "exec"), namespace)  # noqa: S102
    assert namespace["route"].model == "claude-haiku"
    plan = namespace["plan"]
    assert [r["model"] for r in plan] == ["claude-haiku"]
    assert plan[0]["messages"] == [
        {"role": "user", "content": "How many seconds are in 2.5 hours?"}
    ]
    assert plan[0]["timeout"] == 60.0 and namespace["attempts_per_model"] == 2
