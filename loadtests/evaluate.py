"""Model quality on a family of simulator variants (loadtests/variants.py), against the truth.

    python -m loadtests evaluate [--learners 1500] [--variants default,mixed] [--plot]

Per variant, in process (no database): simulate, split learners 80/20, estimate exercise
priors and fit on the training learners exactly as `skillcoach train` does
(skillcoach.ml.training.fit_best_lr), then on the held-out learners measure
- AUC of each held-out attempt's prediction from its prior evidence, and the oracle's (the
  true probability the attempt was drawn with);
- precision@3 of the three weakest practised skills at the end of the history against the
  true weakest (true mastery), for the model, the counts-only model (what format /1 serves)
  and the Laplace-smoothed per-skill accuracy baseline; the oracle (true mastery) is 1;
- Spearman of estimated vs true mastery per learner (learners with >= 3 skills), averaged;
- recommendations as the service picks them (analysis.candidates and recommend under the
  default policy, 5 per learner, with the learner's own seen-exercise history): the share whose
  TRUE success probability lies in 0.6-0.8 and the mean distance of the true probability to
  the target;
- calibration of predicted success on held-out attempts (10-bin reliability, ECE).
Writes loadtests/results/evaluate-<stamp>.json; --plot also writes its PNGs beside it.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from loadtests.recording import record
from loadtests.variants import VARIANTS, Variant, variant_params
from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml import quality
from skillcoach.ml.analysis import (
    Candidates,
    Recommendation,
    RecommendationPolicy,
    candidates,
    recommend,
)
from skillcoach.ml.features import AttemptLog, expected_success
from skillcoach.ml.model import BestLR
from skillcoach.ml.simulator import (
    Catalog,
    LearnerChunk,
    SimulationParams,
    build_catalog,
    simulate_learners,
    success_probability,
)
from skillcoach.ml.training import Fit, estimate_prior_logits, fit_best_lr

__all__ = [
    "TARGET",
    "World",
    "estimated_mastery",
    "evaluate_variant",
    "final_evidence",
    "fit_on_training",
    "main",
    "markdown",
    "run",
    "simulate",
    "true_mastery",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TARGET = 0.7  # the service's default recommendation target
BAND = (0.6, 0.8)
RECOMMENDATIONS = 5
TEST_FRACTION = 0.2
# The share of recommendations whose true success lies in BAND that every variant must reach.
IN_BAND_TARGET = 0.55
# Attempt times are microseconds since this instant (AttemptLog.answered_at).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class World:
    catalog: Catalog
    log: AttemptLog
    p_true: FloatArray  # per attempt, in log order
    m_learner: IntArray
    m_skill: IntArray
    mastery_final: FloatArray
    ability: FloatArray  # (learners, skills): true final ability, row learner_id - 1


def simulate(params: SimulationParams) -> World:
    catalog = build_catalog(params)
    chunks: list[LearnerChunk] = list(simulate_learners(params, catalog))

    def cat(field: str) -> Any:
        return np.concatenate([getattr(c, field) for c in chunks])

    n = int(sum(c.n_attempts for c in chunks))
    log = AttemptLog(  # already ordered by learner, then time
        attempt_ids=np.arange(1, n + 1, dtype=np.int64),
        learner_ids=cat("attempt_learner_ids"),
        exercise_ids=cat("attempt_exercise_ids"),
        skill_ids=cat("attempt_skill_ids"),
        correct=cat("attempt_correct"),
        answered_at=cat("attempt_answered_at_us"),
    )
    return World(catalog, log, cat("attempt_p_correct"), cat("mastery_learner_ids"),
                  cat("mastery_skill_ids"), cat("mastery_final"),
                  np.concatenate([c.ability for c in chunks]))  # fmt: skip


def final_evidence(test: AttemptLog, prior: FloatArray, span: int) -> dict[str, Any]:
    """Per held-out (learner, skill): what learner_skill_stats holds after the whole history."""
    keys, group = np.unique(test.learner_ids * span + test.skill_ids, return_inverse=True)
    y = test.correct.astype(np.float64)
    p, info = expected_success(prior)
    n = np.bincount(group, minlength=len(keys))
    c = np.bincount(group, weights=y, minlength=len(keys)).astype(np.int64)
    r = np.bincount(group, weights=y - p, minlength=len(keys))
    i = np.bincount(group, weights=info, minlength=len(keys))
    learners, row = np.unique(keys // span, return_inverse=True)

    def total(v: Any) -> Any:
        return np.bincount(row, weights=v, minlength=len(learners))[row]

    return {"keys": keys, "learner": keys // span, "skill": keys % span, "c": c, "i_": n - c,
            "r": r, "info": i, "tc": total(c).astype(np.int64), "ti": total(n - c).astype(np.int64),
            "tr": total(r), "tinfo": total(i)}  # fmt: skip


def estimated_mastery(model: BestLR, ev: dict[str, Any]) -> FloatArray:
    return model.skill_mastery(ev["skill"], ev["c"], ev["i_"], total_correct=ev["tc"],
                               total_incorrect=ev["ti"], skill_residual=ev["r"],
                               skill_information=ev["info"], total_residual=ev["tr"],
                               total_information=ev["tinfo"])  # fmt: skip


def _spearman(groups: IntArray, truth: FloatArray, estimate: FloatArray) -> float | None:
    """Mean over groups with >= 3 items of the Spearman correlation (constant estimates: 0)."""
    values = []
    bounds = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
    for a, b in itertools.pairwise(bounds):
        if b - a < 3:
            continue
        if np.ptp(estimate[a:b]) == 0 or np.ptp(truth[a:b]) == 0:
            values.append(0.0)
            continue
        values.append(float(spearmanr(truth[a:b], estimate[a:b]).statistic))
    return float(np.mean(values)) if values else None


def service_recommendations(
    model: BestLR,
    ev: dict[str, Any],
    catalog: Catalog,
    test: AttemptLog,
    policy: RecommendationPolicy,
) -> Iterator[tuple[int, Candidates, list[Recommendation]]]:
    """What the service answers each held-out learner (analysis.candidates and recommend), with
    the evidence of `final_evidence` and the seen-exercise history the learner_exercise_stats
    rows would hold after `test`: (learner, candidates, recommendations), learner by learner."""

    def exercises_of(skills: IntArray) -> tuple[IntArray, IntArray]:
        mask = np.isin(catalog.exercise_skill_ids, skills)
        return catalog.exercise_ids[mask], catalog.exercise_skill_ids[mask]

    ex_span = int(catalog.exercise_ids.max()) + 1
    h_keys, h_group = np.unique(test.learner_ids * ex_span + test.exercise_ids,
                                return_inverse=True)  # fmt: skip
    h_count = np.bincount(h_group)
    h_last = np.zeros(len(h_keys), dtype=np.int64)
    np.maximum.at(h_last, h_group, test.answered_at)
    h_learner = h_keys // ex_span
    never = datetime(2000, 1, 1, tzinfo=UTC)  # last_answered_at of a skill: not used here
    bounds = np.flatnonzero(np.r_[True, ev["learner"][1:] != ev["learner"][:-1], True])
    for a, b in itertools.pairwise(bounds):
        learner = int(ev["learner"][a])
        rows = slice(a, b)
        evidence = SkillEvidence(
            ev["skill"][rows], ev["c"][rows], ev["i_"][rows], [never] * (b - a),
            sum_residual=ev["r"][rows], sum_information=ev["info"][rows],
        )  # fmt: skip
        pool = candidates(model, evidence, exercises_of, policy)
        lo, hi = np.searchsorted(h_learner, [learner, learner + 1])
        history = ExerciseHistory(
            h_keys[lo:hi] % ex_span,
            h_count[lo:hi],
            [EPOCH + timedelta(microseconds=int(us)) for us in h_last[lo:hi]],
        )
        yield learner, pool, recommend(pool, history, policy)


def _recommendations(
    model: BestLR, ev: dict[str, Any], world: World, params: SimulationParams, test: AttemptLog
) -> dict[str, Any]:
    """The service's own choice per held-out learner (service_recommendations under the
    default policy), scored by the truth."""
    cat = world.catalog
    policy = RecommendationPolicy(target=TARGET, limit=RECOMMENDATIONS)

    def truth(learner: int, skill_ids: IntArray, exercise_ids: IntArray) -> FloatArray:
        # Learner and skill ids are 1..N and 1..S: rows and columns of the ability matrix.
        theta = world.ability[learner - 1, skill_ids - 1]
        difficulty = cat.exercise_difficulty[np.searchsorted(cat.exercise_ids, exercise_ids)]
        out: FloatArray = success_probability(theta, difficulty, guess=params.guess,
                                              slip=params.slip)  # fmt: skip
        return out

    chosen_true: list[FloatArray] = []
    chosen_new: list[npt.NDArray[np.bool_]] = []
    chosen_predicted: list[FloatArray] = []
    oracle_true: list[FloatArray] = []
    learners = widened = on_target = 0
    for learner, pool, recs in service_recommendations(model, ev, cat, test, policy):
        learners += 1
        on_target += sum(r.on_target for r in recs)
        ids = np.array([r.exercise_id for r in recs], dtype=np.int64)
        skills = np.array([r.skill_id for r in recs], dtype=np.int64)
        chosen_true.append(truth(learner, skills, ids))
        chosen_new.append(np.array([r.new_skill for r in recs], dtype=np.bool_))
        chosen_predicted.append(np.array([r.predicted_success for r in recs]))
        # The same candidates picked by their TRUE success: how much of the band the catalog
        # (and the policy's choice of skills) allows at all.
        pool_true = truth(learner, pool.skill_ids, pool.exercise_ids)
        best = np.lexsort((pool.exercise_ids, np.abs(pool_true - TARGET)))[:RECOMMENDATIONS]
        oracle_true.append(pool_true[best])
        widened += len(np.unique(pool.skill_ids)) > policy.skills
    true_p, predicted, oracle = (np.concatenate(x) for x in (chosen_true, chosen_predicted,
                                                              oracle_true))  # fmt: skip
    new = np.concatenate(chosen_new)
    return {
        "oracle_share_in_band": in_band(oracle),
        "n": len(true_p),
        "share_in_band": in_band(true_p),
        "mean_distance": float(np.mean(np.abs(true_p - TARGET))),
        "mean_predicted": float(np.mean(predicted)),
        "mean_true": float(np.mean(true_p)),
        "predicted_vs_true_mae": float(np.mean(np.abs(predicted - true_p))),
        "share_widened": widened / learners,
        "share_on_target": on_target / len(true_p),
        # Picks from a skill the learner had not practised, and how many of them were in band.
        "share_new_skill": float(np.mean(new)),
        "new_skill_share_in_band": in_band(true_p[new]) if new.any() else None,
    }


def in_band(true_success: FloatArray) -> float:
    """Share of recommended exercises whose true success probability lies in BAND."""
    return float(np.mean((true_success >= BAND[0]) & (true_success <= BAND[1])))


def _reliability(y: npt.NDArray[np.bool_], p: FloatArray, bins: int = 10) -> list[dict[str, Any]]:
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append({"bin": b, "n": int(sel.sum()), "predicted": float(p[sel].mean()),
                        "observed": float(y[sel].mean())})  # fmt: skip
    return out


def fit_on_training(
    world: World, is_test: npt.NDArray[np.bool_], *, with_ability: bool = True
) -> tuple[FloatArray, Fit]:
    """Exercise priors from the training learners and the model fitted on them, exactly as
    `skillcoach train` does on the same attempts and split: (prior of every attempt, fit)."""
    log, cat = world.log, world.catalog
    prior = estimate_prior_logits(log.subset(~is_test), cat.skill_ids, cat.exercise_ids,
                                  cat.exercise_skill_ids)  # fmt: skip
    attempt_prior = prior[np.searchsorted(cat.exercise_ids, log.exercise_ids)]
    fit = fit_best_lr(log, is_test, attempt_prior=attempt_prior, skill_ids=cat.skill_ids,
                      exercise_ids=cat.exercise_ids, exercise_skill_ids=cat.exercise_skill_ids,
                      with_ability=with_ability)  # fmt: skip
    return attempt_prior, fit


def true_mastery(world: World, keys: IntArray, span: int) -> FloatArray:
    """The simulator's final mastery of each (learner * span + skill) key (all practised)."""
    m_keys = world.m_learner * span + world.m_skill
    m_order = np.argsort(m_keys)
    out: FloatArray = world.mastery_final[m_order[np.searchsorted(m_keys[m_order], keys)]]
    return out


def evaluate_variant(variant: Variant, params: SimulationParams) -> dict[str, Any]:
    started = time.perf_counter()
    world = simulate(params)
    log, cat = world.log, world.catalog
    learners = np.unique(log.learner_ids)
    n_test = max(1, round(TEST_FRACTION * len(learners)))
    held = np.random.default_rng([variant.seed, 9]).choice(learners, n_test, replace=False)
    is_test = np.isin(log.learner_ids, held)
    attempt_prior, model_fit = fit_on_training(world, is_test)
    counts_only = fit_on_training(world, is_test, with_ability=False)[1]
    fits = {"model": model_fit, "counts_only": counts_only}
    test = log.subset(is_test)
    y = test.correct
    test_counts = fits["model"].counts.subset(is_test)
    oracle_auc = quality.auc_or_none(y, world.p_true[is_test])
    span = int(cat.skill_ids.max()) + 1
    ev = final_evidence(test, attempt_prior[is_test], span)
    truth = true_mastery(world, ev["keys"], span)
    laplace = quality.laplace_accuracy(ev["c"], ev["i_"])
    out: dict[str, Any] = {
        "variant": variant.name,
        "description": variant.description,
        "params": params.to_dict(),
        "n_attempts": len(log),
        "n_test_learners": int(n_test),
        "oracle_auc": oracle_auc,
        "baseline": {
            "auc": quality.auc_or_none(y, quality.laplace_accuracy(
                test_counts.skill_correct, test_counts.skill_incorrect)),
            "precision_at_3": quality.precision_at_k(ev["learner"], ev["skill"], truth, laplace)[0],
            "spearman": _spearman(ev["learner"], truth, laplace),
        },
        "oracle": {"precision_at_3": quality.precision_at_k(ev["learner"], ev["skill"], truth,
                                                            truth)[0]},
    }  # fmt: skip
    for name, fit in fits.items():
        mastery = estimated_mastery(fit.model, ev)
        auc = quality.auc_or_none(y, fit.p_test)
        out[name] = {
            "auc": auc,
            "auc_ratio": None if auc is None or not oracle_auc else auc / oracle_auc,
            "precision_at_3": quality.precision_at_k(ev["learner"], ev["skill"], truth,
                                                     mastery)[0],
            "spearman": _spearman(ev["learner"], truth, mastery),
            "ece": quality.expected_calibration_error(y, fit.p_test),
            "reliability": _reliability(y, fit.p_test),
            "recommendations": _recommendations(fit.model, ev, world, params, test),
            "ability_weights": fit.model.ability_weights.tolist(),
        }  # fmt: skip
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def targets(v: dict[str, Any]) -> dict[str, bool]:
    """The issue's "done when", per variant."""
    m, b = v["model"], v["baseline"]

    def ge(a: float | None, ref: float | None, margin: float) -> bool:
        return a is not None and ref is not None and a >= ref + margin

    return {
        "precision_vs_baseline_+0.05": ge(m["precision_at_3"], b["precision_at_3"], 0.05),
        "spearman_vs_baseline_+0.05": ge(m["spearman"], b["spearman"], 0.05),
        "auc_>=_0.95_oracle": m["auc_ratio"] is not None and m["auc_ratio"] >= 0.95,
        "recs_in_band_>=_55%": m["recommendations"]["share_in_band"] >= IN_BAND_TARGET,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [v for v in VARIANTS if not args.variants or v.name in args.variants.split(",")]
    if not chosen:
        raise SystemExit(f"no such variant; known: {', '.join(v.name for v in VARIANTS)}")
    results = []
    for v in chosen:
        params = variant_params(v, learners=args.learners, skills=args.skills,
                                exercises_per_skill=args.exercises_per_skill,
                                attempts_per_learner=args.attempts_per_learner)  # fmt: skip
        r = evaluate_variant(v, params)
        r["targets"] = targets(r)
        r["other_seeds"] = [_reseeded(v, params, k) for k in range(1, args.seeds + 1)]
        results.append(r)
        print(f"{v.name}: {r['seconds']} s", flush=True)
    return {"kind": "evaluate", "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": vars(args), "variants": results}  # fmt: skip


# Seeds of the extra draws of a variant: its own seed plus multiples of this.
SEED_STEP = 1000


def _reseeded(variant: Variant, params: SimulationParams, k: int) -> dict[str, Any]:
    """The variant's k-th other draw (another world from the same generator): its target
    margins, to tell a target met by one lucky seed from one that holds."""
    seed = variant.seed + SEED_STEP * k
    r = evaluate_variant(replace(variant, seed=seed), replace(params, seed=seed))
    m, b = r["model"], r["baseline"]
    return {
        "seed": seed,
        "share_in_band": m["recommendations"]["share_in_band"],
        "precision_margin": m["precision_at_3"] - b["precision_at_3"],
        "spearman_margin": m["spearman"] - b["spearman"],
        "auc_ratio": m["auc_ratio"],
        "targets_met": sum(targets(r).values()),
    }


def _seeds_table(result: dict[str, Any]) -> list[str]:
    """Per variant, the range of each target's measure over its other seeds."""
    rows = [v for v in result["variants"] if v.get("other_seeds")]
    if not rows:
        return []
    lines = ["", f"Other seeds (each variant re-drawn {len(rows[0]['other_seeds'])} more times):",
             "", "| variant | recs in 0.6-0.8 | P@3 - Laplace | Spearman - Laplace"
             " | AUC / oracle | seeds meeting all 4 |", "|" + "---|" * 6]  # fmt: skip
    for v in rows:
        o = v["other_seeds"]
        spans = " | ".join(_span(o, key) for key in ("share_in_band", "precision_margin",
                                                     "spearman_margin", "auc_ratio"))  # fmt: skip
        full = sum(x["targets_met"] == len(v["targets"]) for x in o)
        lines.append(f"| {v['variant']} | {spans} | {full}/{len(o)} |")
    return lines


def _span(draws: list[dict[str, Any]], key: str) -> str:
    vals = [x[key] for x in draws if x[key] is not None]
    return f"{min(vals):.3f}-{max(vals):.3f}" if vals else "n/a"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(result: dict[str, Any]) -> str:
    head = ("| variant | AUC model / counts-only / oracle | P@3 model / counts-only / Laplace"
            " | Spearman model / counts-only / Laplace | recs in 0.6-0.8 model / counts-only"
            " / oracle | mean dist to 0.7 | ECE | targets met |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for v in result["variants"]:
        m, c, b = v["model"], v["counts_only"], v["baseline"]
        met = sum(v["targets"].values())
        lines.append(
            f"| {v['variant']} | {_f(m['auc'])} / {_f(c['auc'])} / {_f(v['oracle_auc'])}"
            f" | {_f(m['precision_at_3'])} / {_f(c['precision_at_3'])} / {_f(b['precision_at_3'])}"
            f" | {_f(m['spearman'])} / {_f(c['spearman'])} / {_f(b['spearman'])}"
            f" | {_f(m['recommendations']['share_in_band'])}"
            f" / {_f(c['recommendations']['share_in_band'])}"
            f" / {_f(m['recommendations']['oracle_share_in_band'])}"
            f" | {_f(m['recommendations']['mean_distance'])} | {_f(m['ece'])}"
            f" | {met}/{len(v['targets'])} |"
        )
    return "\n".join(lines + _seeds_table(result))


def plot(result: dict[str, Any], base: Path) -> list[Path]:
    """<base>-metrics.png (per-variant bars) and <base>-reliability.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = result["variants"]
    names = [v["variant"] for v in vs]
    x = np.arange(len(vs))
    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    panels = [
        ("precision_at_3", "precision@3"),
        ("spearman", "Spearman"),
        ("recs", "recs in 0.6-0.8"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for k, (who, color) in enumerate((("model", "#2ca02c"), ("counts_only", "#1f77b4"),
                                          ("baseline", "#7f7f7f"))):  # fmt: skip
            if key == "recs":
                if who == "baseline":
                    continue
                vals = [v[who]["recommendations"]["share_in_band"] for v in vs]
            else:
                vals = [v[who][key] or 0.0 for v in vs]
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=who, color=color)
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
    axes[-1].axhline(IN_BAND_TARGET, color="#d62728", lw=1, ls="--", label="target")
    axes[-1].legend(loc="lower right", fontsize=8)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xticks(x, names, rotation=35, ha="right")
    fig.tight_layout()
    out = [base.with_name(base.stem + "-metrics.png")]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="#aaaaaa", lw=1)
    for v in vs:
        rel = v["model"]["reliability"]
        ax.plot([r["predicted"] for r in rel], [r["observed"] for r in rel], marker=".", lw=1,
                label=v["variant"])  # fmt: skip
    ax.set_xlabel("predicted success (held-out attempts)")
    ax.set_ylabel("observed success rate")
    ax.legend(fontsize=6)
    fig.tight_layout()
    out.append(base.with_name(base.stem + "-reliability.png"))
    fig.savefig(out[1], dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests evaluate")
    p.add_argument("--learners", type=int, default=1500)
    p.add_argument("--skills", type=int, default=30)
    p.add_argument("--exercises-per-skill", type=int, default=15)
    p.add_argument("--attempts-per-learner", type=int, default=100)
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    p.add_argument("--plot", action="store_true", help="also write PNGs beside the JSON")
    p.add_argument("--seeds", type=int, default=0,
                   help="also re-draw each variant with this many other seeds (its targets'"
                   " range)")  # fmt: skip
    args = p.parse_args(argv)
    result = run(args)
    path = record("evaluate", result, markdown)
    if args.plot:
        for png in plot(result, path):
            print(f"written to {png}")
    return 0
