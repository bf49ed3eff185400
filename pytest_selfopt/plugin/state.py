"""What every process of a session knows about the cycle, kept in ``config.stash``.

The controller builds it from the suite and the committed files; an xdist worker rebuilds it
from ``workerinput`` (docs/architecture.md, "pytest integration"). The ``llm`` fixture and
the worker's hooks read it; nothing looks a plugin up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_selfopt.models.runner import Runner
from pytest_selfopt.plugin.codec import Shipment
from pytest_selfopt.plugin.llm import LLM
from pytest_selfopt.plugin.racing import RaceView
from pytest_selfopt.plugin.shard import Shard
from pytest_selfopt.suite.config import load_config


@dataclass
class SessionState:
    """The cycle as one process sees it. ``shipment`` is None when there is no suite."""

    measuring: bool  # --selfopt or --selfopt-check: llm tests are parametrized over (spec, run)
    check: bool
    config_path: Path | None = None
    shipment: Shipment | None = None
    config_error: str | None = None  # plain runs: every llm test fails with it
    race: RaceView | None = None
    runner: Runner | None = None
    shard: Shard | None = None  # --selfopt-shard K/N: this session runs one share
    done: frozenset[tuple[str, str, str, int]] = frozenset()  # --selfopt-resume: in the journal

    def get_runner(self) -> Runner:
        if self.config_error is not None:
            pytest.fail(self.config_error, pytrace=False)
        if self.runner is None:
            if self.config_path is None or self.shipment is None:
                raise pytest.UsageError(
                    "the llm fixture needs a suite config: create benchmarks/selfopt.yaml or "
                    "set selfopt_config in your pytest ini"
                )
            suite = load_config(self.config_path)
            shipment = self.shipment
            self.runner = Runner(
                suite.models, suite.variants, seed=shipment.seed, cycle=shipment.cycle
            )
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


STATE_KEY = pytest.StashKey[SessionState]()
LLM_KEY = pytest.StashKey[LLM]()
