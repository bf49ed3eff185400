"""Shared pieces of the runner/provider/server tests: tiny stand-ins for the config's model and
variant entries and for a case, a recording sleep, and a fixture that starts real simulator
servers on 127.0.0.1 (free ports) and stops them after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.models.base import Reference
from pytest_selfopt.models.simserver import SimServer

FAST = 0.01  # time_scale: a 0.5 s simulated latency is slept as 5 ms


@dataclass(frozen=True)
class Model:
    name: str
    provider: str
    options: Mapping[str, Any] = field(default_factory=dict)
    price: tuple[float, float] | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    template: str = "{prompt}"
    system: str | None = None

    def render(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)


@dataclass
class Case:
    """A case whose reference says ``answer`` passes; records every reference handed out."""

    case_id: str = "capital-france"
    phase: str = "atomic"
    answer: str = "Paris"
    wrong_answer: str = "Lyon"
    difficulty: float = 0.3
    position: int | None = 0  # its index in a cases file: the simulated cold start hits it
    calls: list[dict[str, Any]] = field(default_factory=list)

    def reference(
        self, *, run: int, attempt: int, variant: str, spec_id: str, seed: int
    ) -> Reference:
        self.calls.append({"run": run, "attempt": attempt, "variant": variant, "spec_id": spec_id})
        return Reference(
            case_id=self.case_id,
            phase=self.phase,
            answer=self.answer,
            wrong_answer=self.wrong_answer,
            difficulty=self.difficulty,
            run=run,
            attempt=attempt,
            variant=variant,
            spec_id=spec_id,
            seed=seed,
            position=self.position,
        )


class RecordingSleep:
    """A ``sleep`` for the runner that records waits instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_spec(model: str, **knobs: Any) -> Spec:
    base: dict[str, Any] = dict(
        variant="plain", timeout_s=5.0, retries=0, isolation="i0", warmup=False
    )
    base.update(knobs)
    return Spec(model=model, **base)


VARIANTS = {
    "plain": Variant("plain"),
    "atomic": Variant("atomic", "Final answer only.\n\n{prompt}", "Be brief."),
}

#: A model that answers right (skill 0.9 > difficulty 0.3) after 5 ms at ``FAST``.
GOOD = {"skill": 0.9, "latency_s": 0.5, "latency_sigma": 0.0}


@contextmanager
def sim_servers() -> Iterator[Callable[..., SimServer]]:
    """``start({"lfm": GOOD}, time_scale=...)`` starts a server; all are stopped at the end.
    Test modules wrap it in their own ``sim_server`` fixture."""
    servers: list[SimServer] = []

    def start(models: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> SimServer:
        kwargs.setdefault("time_scale", FAST)
        server = SimServer(models, **kwargs).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
