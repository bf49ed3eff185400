"""study: the simulation's decision rules match the real policies; the command runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_paired import CAND, decide, stats_from

from pytest_selfopt.loop import stats as paired
from pytest_selfopt.loop.policies.seed import SeedPolicy
from pytest_selfopt.loop.types import PROMOTE, Candidate, GateSettings
from pytest_selfopt.study import simulate as study

GATES = GateSettings()


@pytest.mark.parametrize("delta", [-0.16, -0.05, 0.0, 0.05, 0.1, 0.16])
@pytest.mark.parametrize("prompts", [6, 20, 100])
def test_shift_rates_moves_the_mean_exactly(prompts: int, delta: float) -> None:
    p = study.prompt_rates(study.MODEL, prompts)
    q = study.shift_rates(p, delta)
    assert q.mean() - p.mean() == pytest.approx(delta, abs=1e-12)
    assert ((q >= 0) & (q <= 1)).all()
    assert (np.sign(q - p) * np.sign(delta) >= 0).all()  # every prompt moves the same way


def test_seed_scenario_rates_come_from_the_simulator() -> None:
    assert study.prompt_rates(study.SEED_MODEL, 6).tolist() == [1, 1, 1, 1, 0, 0]
    assert study.prompt_rates(study.SEED_MODEL, 6, "atomic").tolist() == [1, 1, 1, 1, 1, 0]
    scenario = study.seed_scenario(study.StudyConfig(), reps=20)
    assert scenario["paired"] == scenario["seed"] == 1.0
    assert scenario["baseline"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("prompts,k", [(6, 3), (30, 2)])
def test_vectorised_rules_match_the_real_policies(prompts: int, k: int) -> None:
    rng = np.random.default_rng(prompts)
    reps, runs = 25, 7
    p = study.prompt_rates(study.MODEL, prompts)
    q = np.stack([study.shift_rates(p, d) for d in (0.0, 0.1, 0.2)[:k]])
    base = study.draw(rng, np.broadcast_to(p, (reps, prompts)), runs)
    cand = study.draw(rng, np.broadcast_to(q, (reps, k, prompts)), runs)
    x, y = base.sum(axis=1), cand.sum(axis=2)
    pv = study.pvalues(x, y, runs, runs, GATES)
    vec_paired, _ = study.paired_decide(x, y, pv, runs, runs, GATES)
    vec_seed, _, _ = study.seed_decide(base, cand, GATES)
    dropped = study.race_out(base, cand, 3, GATES)
    for r in range(reps):
        b = stats_from(base[r])
        cs = [stats_from(cand[r, j], CAND) for j in range(k)]
        real = [v == PROMOTE for v, _ in decide(b, cs)]
        assert real == vec_paired[r].tolist()
        seed = SeedPolicy().decide(
            "p", b, [(Candidate("p", CAND, "search"), c) for c in cs], GATES, {}
        )
        assert [d.verdict == PROMOTE for d in seed] == vec_seed[r].tolist()
        for j in range(k):
            still = paired.can_still_win(
                stats_from(base[r, :3]), stats_from(cand[r, j, :3], CAND), runs - 3, GATES
            )
            assert still == (not dropped[r, j])


def test_quick_study_prints_the_table_and_writes_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "statistics.md"
    doc.write_text("# Title\n\n<!-- study:begin -->\nold\n<!-- study:end -->\n\nAfter.\n")
    assert study.main(["--quick", "--reps", "30", "--campaign-reps", "4",
                       "--markdown", str(doc)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("Produced by `selfopt simulate --quick --reps 30 --campaign-reps 4`")
    assert "| 100 | 10 | +16 |" in out and "### Campaign" in out
    assert "paired can be the default:" in out
    text = doc.read_text()
    assert text.startswith("# Title\n\n<!-- study:begin -->\nProduced by") and "old" not in text
    assert text.endswith("<!-- study:end -->\n\nAfter.\n")
    again = study.main(["--quick", "--reps", "30", "--campaign-reps", "4", "--markdown",
                        str(doc)])  # fmt: skip
    assert again == 0 and doc.read_text() == text  # same seed, same table


def test_bad_arguments() -> None:
    assert study.main(["--reps", "0"]) == 2


def test_default_rule() -> None:
    row = study.Row(6, 1, 0.0, {"paired": 0.06}, {}, 0.1)
    assert not study.paired_can_be_default([row], {"paired": 1.0})
    row.rate["paired"] = 0.04
    assert study.paired_can_be_default([row], {"paired": 1.0})
    assert not study.paired_can_be_default([row], {"paired": 0.99})
