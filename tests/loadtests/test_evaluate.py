"""CI smoke of the model-quality evaluation (`python -m loadtests evaluate`): two small
variants in process, every metric computed and sane. The full run is documented in
docs/model.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from loadtests.variants import VARIANTS, variant_params

from loadtests import evaluate, recording

SMALL = {"learners": 400, "skills": 12, "exercises_per_skill": 8, "attempts_per_learner": 60}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    args = argparse.Namespace(variants="default,mixed", plot=False, seeds=0, **SMALL)
    return evaluate.run(args)


def _unit(x: float | None) -> bool:
    return x is not None and 0.0 <= x <= 1.0


def test_every_metric_is_computed_and_in_range(result: dict[str, Any]) -> None:
    assert [v["variant"] for v in result["variants"]] == ["default", "mixed"]
    for v in result["variants"]:
        assert v["n_test_learners"] == 80
        assert _unit(v["oracle_auc"])
        for who in ("model", "counts_only"):
            m = v[who]
            for key in ("auc", "precision_at_3", "ece"):
                assert _unit(m[key]), (v["variant"], who, key, m[key])
            assert -1.0 <= m["spearman"] <= 1.0
            rec = m["recommendations"]
            assert rec["n"] == 80 * evaluate.RECOMMENDATIONS
            assert _unit(rec["share_in_band"]) and _unit(rec["mean_true"])
            assert 0.0 <= rec["mean_distance"] <= 1.0
            assert _unit(rec["share_new_skill"])
            assert sum(b["n"] for b in m["reliability"]) > 0
        assert set(v["targets"]) == {
            "precision_vs_baseline_+0.05", "spearman_vs_baseline_+0.05",
            "auc_>=_0.95_oracle", "recs_in_band_>=_55%",
        }  # fmt: skip


def test_metrics_order_as_the_truth_demands(result: dict[str, Any]) -> None:
    for v in result["variants"]:
        m, b = v["model"], v["baseline"]
        # The oracle ranks with the true mastery: nothing beats it.
        assert v["oracle"]["precision_at_3"] == 1.0
        assert v["oracle"]["precision_at_3"] >= b["precision_at_3"]
        assert v["oracle_auc"] >= m["auc"] - 0.01
        # Both fitted models beat a coin and pool more than the per-skill accuracy does.
        assert m["auc"] > 0.6 and m["auc"] > b["auc"]
        assert m["precision_at_3"] > b["precision_at_3"]
        assert m["spearman"] > b["spearman"]
        # Recommendations aim at the 0.7 target: their mean prediction is near it.
        assert abs(m["recommendations"]["mean_predicted"] - evaluate.TARGET) < 0.1


def test_few_exercises_reaches_new_skills_and_scores_them_by_the_truth() -> None:
    # Three exercises per skill: learners outgrow their own skills, so picks come from skills
    # they never practised, scored by the simulator's ability on those skills.
    args = argparse.Namespace(variants="few_exercises", plot=False, seeds=2, **SMALL)
    result = evaluate.run(args)
    rec = result["variants"][0]["model"]["recommendations"]
    assert rec["share_new_skill"] > 0.1, rec
    assert _unit(rec["new_skill_share_in_band"]) and rec["new_skill_share_in_band"] > 0.2, rec
    # --seeds re-draws the variant: other worlds, each scored, summarised as ranges.
    others = result["variants"][0]["other_seeds"]
    assert [o["seed"] for o in others] == [113 + 1000, 113 + 2000]
    assert len({o["share_in_band"] for o in others} | {rec["share_in_band"]}) == 3
    assert all(_unit(o["share_in_band"]) and 0 <= o["targets_met"] <= 4 for o in others)
    table = evaluate.markdown(result)
    assert "re-drawn 2 more times" in table and "| few_exercises |" in table.split("Other")[1]


def test_variants_are_seeded_and_distinct() -> None:
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names))
    assert len({v.seed for v in VARIANTS}) == len(VARIANTS)
    params = [variant_params(v, **SMALL) for v in VARIANTS]
    assert len({p for p in params}) == len(VARIANTS)  # no two variants are the same world


def test_main_writes_json_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "RESULTS", tmp_path)
    argv = ["--variants", "short_history", "--learners", "150", "--skills", "8",
            "--exercises-per-skill", "4", "--attempts-per-learner", "30", "--plot"]  # fmt: skip
    assert evaluate.main(argv) == 0
    (out,) = tmp_path.glob("evaluate-*.json")
    doc = json.loads(out.read_text())
    assert doc["variants"][0]["variant"] == "short_history"
    assert doc["variants"][0]["params"]["attempts_per_learner"] == 30
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))
    assert "| short_history |" in evaluate.markdown(doc)
