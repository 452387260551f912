"""`skillcoach train`: fit Best-LR on the attempts in PostgreSQL and store it in the registry.

The split is by learner, so held-out metrics measure what serving does: predict for a
learner the model has never seen, from that learner's own history only. Where the data came
from the simulator, the same held-out attempts are also scored against the ground truth.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import psycopg2.extensions
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sqlalchemy import Engine

from skillcoach.data.binary_copy import copy_to_columns
from skillcoach.data.model_registry import fetch_promoted, store_model
from skillcoach.ml import quality
from skillcoach.ml.features import (
    AttemptLog,
    CountFeatures,
    expected_success,
    feature_matrix,
    feature_names,
    prior_counts,
)
from skillcoach.ml.model import (
    ABILITY_FEATURES,
    ARTIFACT_FORMAT,
    COUNT_FEATURES,
    ArtifactError,
    BestLR,
)
from skillcoach.ml.promotion import HeldOut

__all__ = [
    "PRIOR_PSEUDO_ATTEMPTS",
    "REGULARIZATION_C",
    "Fit",
    "TrainReport",
    "TrainingError",
    "estimate_prior_logits",
    "fit_best_lr",
    "train_and_store",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# L2 strength: one-hot exercise weights of rarely attempted exercises shrink toward their
# skill's weight instead of fitting a handful of answers.
REGULARIZATION_C = 1.0
MAX_ITER = 2000
# sklearn's predict_proba and BestLR's numpy inference must agree to rounding error:
# a larger gap means the exported artifact is not the fitted model.
EXPORT_TOLERANCE = 1e-9
# Pseudo-attempts pulling a rarely answered exercise's population success rate towards its
# skill's (and a rare skill's towards everyone's).
PRIOR_PSEUDO_ATTEMPTS = 5.0


class TrainingError(RuntimeError):
    """There is nothing (or too little) to train on."""


@dataclass(frozen=True, slots=True)
class TrainReport:
    version: int
    metrics: dict[str, Any]
    seconds: float

    @property
    def held_out(self) -> HeldOut:
        return HeldOut(auc=self.metrics["auc"], log_loss=self.metrics["log_loss"])

    @property
    def live_held_out(self) -> HeldOut | None:
        """The live model's scores on the same held-out attempts (None: no live model)."""
        if self.metrics.get("live_log_loss") is None:
            return None
        return HeldOut(auc=self.metrics["live_auc"], log_loss=self.metrics["live_log_loss"])

    def summary(self) -> str:
        m = self.metrics

        def fmt(key: str) -> str:
            value = m.get(key)
            return "n/a" if value is None else f"{value:.4f}"

        lines = [
            f"stored model version {self.version}"
            f" (trained on {m['n_train']} attempts of {m['n_train_learners']} learners,"
            f" held out {m['n_test']} attempts of {m['n_test_learners']} learners)",
            f"  held-out auc {fmt('auc')}  log_loss {fmt('log_loss')}  ece {fmt('ece')}"
            f"  baseline_auc {fmt('baseline_auc')}",
        ]
        if m.get("oracle_auc") is not None:
            lines.append(
                f"  oracle_auc {fmt('oracle_auc')}  auc_ratio {fmt('auc_ratio')}"
                f"  precision@3 {fmt('precision_at_3')}"
                f"  baseline precision@3 {fmt('baseline_precision_at_3')}"
                f" ({m.get('n_precision_learners')} learners)"
            )
        if m.get("live_version") is not None:
            lines.append(
                f"  live v{m['live_version']} ({m.get('live_kind', 'n/a')}) on the same attempts:"
                f" auc {fmt('live_auc')}"
                f"  log_loss {fmt('live_log_loss')}"
            )
        lines.append(
            f"  fit {m['fit_seconds']:.1f} s, total {self.seconds:.1f} s"
            + ("" if m["converged"] else "  (lbfgs did not converge)")
        )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    log: AttemptLog
    skill_ids: IntArray
    exercise_ids: IntArray
    exercise_skill_ids: IntArray
    exercise_prior_logit: FloatArray  # NaN: not estimated yet (the write path then uses 0)
    truth_attempt_ids: IntArray  # sorted
    truth_p: FloatArray
    mastery_keys: tuple[IntArray, IntArray]  # (learner_id, skill_id), sorted lexicographically
    mastery_final: FloatArray


def _read_snapshot(engine: Engine) -> _Snapshot:
    raw = engine.raw_connection()
    try:
        dbapi = cast(psycopg2.extensions.connection, raw.driver_connection)
        with dbapi.cursor() as cur:
            # One snapshot for attempts, catalog and truth, however long the reads take.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            a_id, learner, exercise, skill, correct, answered = copy_to_columns(
                cur,
                "SELECT a.id, a.learner_id, a.exercise_id, e.skill_id, a.correct, a.answered_at"
                " FROM attempts a JOIN exercises e ON e.id = a.exercise_id",
                ["int8", "int8", "int4", "int4", "bool", "timestamptz"],
            )
            (skill_ids,) = copy_to_columns(cur, "SELECT id FROM skills ORDER BY id", ["int4"])
            ex_ids, ex_skills, ex_prior = copy_to_columns(
                cur,
                "SELECT id, skill_id, coalesce(prior_logit, 'NaN') FROM exercises ORDER BY id",
                ["int4", "int4", "float8"],
            )
            t_ids, t_p = copy_to_columns(
                cur,
                "SELECT attempt_id, p_correct FROM sim_attempt_truth ORDER BY attempt_id",
                ["int8", "float8"],
            )
            m_learner, m_skill, m_final = copy_to_columns(
                cur,
                "SELECT learner_id, skill_id, mastery_final FROM sim_mastery"
                " ORDER BY learner_id, skill_id",
                ["int8", "int4", "float8"],
            )
    finally:
        raw.rollback()
        raw.close()
    i64 = np.int64
    log = AttemptLog.from_unsorted(
        attempt_ids=a_id.astype(i64),
        learner_ids=learner.astype(i64),
        exercise_ids=exercise.astype(i64),
        skill_ids=skill.astype(i64),
        correct=correct.astype(bool),
        answered_at=answered.astype(i64),
    )
    return _Snapshot(
        log=log,
        skill_ids=skill_ids.astype(i64),
        exercise_ids=ex_ids.astype(i64),
        exercise_skill_ids=ex_skills.astype(i64),
        exercise_prior_logit=ex_prior.astype(np.float64),
        truth_attempt_ids=t_ids.astype(i64),
        truth_p=t_p.astype(np.float64),
        mastery_keys=(m_learner.astype(i64), m_skill.astype(i64)),
        mastery_final=m_final.astype(np.float64),
    )


def _split(learner_ids: IntArray, *, seed: int, test_fraction: float) -> npt.NDArray[np.bool_]:
    learners = np.unique(learner_ids)
    if len(learners) < 2:
        raise TrainingError(
            f"need attempts of at least 2 learners to hold some out, found {len(learners)}"
        )
    n_test = min(max(1, round(test_fraction * len(learners))), len(learners) - 1)
    test = np.random.default_rng(seed).choice(learners, n_test, replace=False)
    return np.isin(learner_ids, test)


def _lookup(keys: IntArray, sorted_keys: IntArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Positions of keys in sorted_keys, and which keys are present at all."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos.astype(np.int64), sorted_keys[pos] == keys


def train_and_store(engine: Engine, *, seed: int, test_fraction: float) -> TrainReport:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    started = time.perf_counter()
    snap = _read_snapshot(engine)
    log = snap.log
    if len(log) == 0:
        raise TrainingError("no attempts in the database: seed or record some first")
    is_test = _split(log.learner_ids, seed=seed, test_fraction=test_fraction)
    if log.correct[~is_test].all() or not log.correct[~is_test].any():
        raise TrainingError("the training attempts are all correct or all incorrect")

    prior = snap.exercise_prior_logit.copy()
    missing = np.isnan(prior)
    if missing.any():
        estimate = estimate_prior_logits(
            log.subset(~is_test), snap.skill_ids, snap.exercise_ids, snap.exercise_skill_ids
        )
        prior[missing] = estimate[missing]
        _store_priors(engine, snap.exercise_ids[missing], prior[missing])
    attempt_prior = prior[np.searchsorted(snap.exercise_ids, log.exercise_ids)]
    fit = fit_best_lr(
        log,
        is_test,
        attempt_prior=attempt_prior,
        skill_ids=snap.skill_ids,
        exercise_ids=snap.exercise_ids,
        exercise_skill_ids=snap.exercise_skill_ids,
    )
    model, counts, p_model = fit.model, fit.counts, fit.p_test
    n_skills, n_exercises = len(snap.skill_ids), len(snap.exercise_ids)
    fit_seconds, converged, gap = fit.fit_seconds, fit.converged, fit.export_gap
    test = log.subset(is_test)
    test_counts = counts.subset(is_test)
    metrics: dict[str, Any] = {
        "n_train": int((~is_test).sum()),
        "n_test": len(test),
        "n_train_learners": len(np.unique(log.learner_ids[~is_test])),
        "n_test_learners": len(np.unique(test.learner_ids)),
        "auc": quality.auc_or_none(test.correct, p_model),
        "log_loss": float(log_loss(test.correct, p_model, labels=[False, True])),
        "ece": quality.expected_calibration_error(test.correct, p_model),
        "baseline_auc": quality.auc_or_none(
            test.correct,
            quality.laplace_accuracy(test_counts.skill_correct, test_counts.skill_incorrect),
        ),
        "export_max_abs_diff": gap,
        "converged": converged,
        "fit_seconds": fit_seconds,
        "C": REGULARIZATION_C,
    }
    metrics["new_exercise_priors"] = int(missing.sum())
    metrics.update(_truth_metrics(snap, test, model, p_model, attempt_prior[is_test]))
    metrics.update(_live_metrics(engine, test, test_counts))
    schema = {
        "artifact_format": ARTIFACT_FORMAT,
        "feature_names": feature_names(snap.skill_ids, snap.exercise_ids),
        "n_skills": n_skills,
        "n_exercises": n_exercises,
        "count_features": list(COUNT_FEATURES),
        "count_transform": "log1p",
        "ability_features": list(ABILITY_FEATURES),
        "ability_prior": model.ability_prior,
        "exercise_prior": "exercises.prior_logit, set once from training attempts",
        "prior_counts": "strictly earlier attempts of the learner, by (answered_at, id)",
        "estimator": {"type": "LogisticRegression", "solver": "lbfgs", "penalty": "l2",
                      "C": REGULARIZATION_C, "max_iter": MAX_ITER},
        "split": {"by": "learner", "test_fraction": test_fraction, "seed": seed},
    }  # fmt: skip
    with engine.begin() as conn:
        version = store_model(
            conn,
            artifact=model.to_artifact(),
            trained_at=datetime.now(UTC),
            metrics=metrics,
            feature_schema=schema,
        )
    return TrainReport(version=version, metrics=metrics, seconds=time.perf_counter() - started)


def _live_metrics(engine: Engine, test: AttemptLog, test_counts: CountFeatures) -> dict[str, Any]:
    """The promoted model scored on this run's held-out attempts, for the promotion gate."""
    out: dict[str, Any] = {"live_version": None, "live_auc": None, "live_log_loss": None}
    with engine.connect() as conn:
        record = fetch_promoted(conn)
    if record is None or record.artifact is None:
        return out
    try:
        live = BestLR.from_artifact(record.artifact, sha256=record.sha256)
    except ArtifactError:
        return out  # an unreadable live model cannot block a good one
    p_live = quality.bestlr_success(live, test.exercise_ids, test.skill_ids, test_counts)
    out.update(
        live_version=record.version,
        # A format /1 live model ignores the residual sums: it is scored as it serves.
        live_kind="difficulty-aware" if live.uses_ability else "counts only",
        live_auc=quality.auc_or_none(test.correct, p_live),
        live_log_loss=float(log_loss(test.correct, p_live, labels=[False, True])),
    )
    return out


def _truth_metrics(
    snap: _Snapshot, test: AttemptLog, model: BestLR, p_model: FloatArray, test_prior: FloatArray
) -> dict[str, Any]:
    """Oracle AUC and weakest-skill precision where the simulator's ground truth exists."""
    out: dict[str, Any] = {"oracle_auc": None, "auc_ratio": None, "truth_coverage": 0.0}
    pos, known = _lookup(test.attempt_ids, snap.truth_attempt_ids)
    if known.any():
        # Attempts recorded after the seed have no truth: compare on the common subset only.
        oracle = quality.auc_or_none(test.correct[known], snap.truth_p[pos[known]])
        same = quality.auc_or_none(test.correct[known], p_model[known])
        out["oracle_auc"] = oracle
        out["auc_ratio"] = None if oracle is None or same is None else same / oracle
        out["truth_coverage"] = float(known.mean())

    # Final per-(learner, skill) counts of the held-out learners: the model's view at the end.
    span = int(max(test.skill_ids.max(initial=0), snap.mastery_keys[1].max(initial=0))) + 1
    pair_keys, group = np.unique(test.learner_ids * span + test.skill_ids, return_inverse=True)
    pair_learner, pair_skill = pair_keys // span, pair_keys % span
    n_total = np.bincount(group, minlength=len(pair_keys))
    n_correct_i = np.bincount(group, weights=test.correct, minlength=len(pair_keys)).astype(
        np.int64
    )
    n_incorrect_i = (n_total - n_correct_i).astype(np.int64)
    p_prior, info = expected_success(test_prior)
    residual = np.bincount(group, weights=test.correct - p_prior, minlength=len(pair_keys))
    information = np.bincount(group, weights=info, minlength=len(pair_keys))
    m_pos, m_known = _lookup(pair_keys, snap.mastery_keys[0] * span + snap.mastery_keys[1])
    out.update(precision_at_3=None, baseline_precision_at_3=None, n_precision_learners=0)
    if not m_known.any():
        return out
    learner_rows = np.searchsorted(np.unique(test.learner_ids), pair_learner)
    total_correct = np.bincount(learner_rows, weights=n_correct_i).astype(np.int64)
    total_incorrect = np.bincount(learner_rows, weights=n_incorrect_i).astype(np.int64)
    total_residual = np.bincount(learner_rows, weights=residual)
    total_information = np.bincount(learner_rows, weights=information)
    sel = m_known
    rows = learner_rows[sel]
    estimate = model.skill_mastery(
        pair_skill[sel],
        n_correct_i[sel],
        n_incorrect_i[sel],
        total_correct=total_correct[rows],
        total_incorrect=total_incorrect[rows],
        skill_residual=residual[sel],
        skill_information=information[sel],
        total_residual=total_residual[rows],
        total_information=total_information[rows],
    )
    truth = snap.mastery_final[m_pos[sel]]
    p_at_3, n_learners = quality.precision_at_k(pair_learner[sel], pair_skill[sel], truth, estimate)
    base_at_3, _ = quality.precision_at_k(
        pair_learner[sel],
        pair_skill[sel],
        truth,
        quality.laplace_accuracy(n_correct_i[sel], n_incorrect_i[sel]),
    )
    out.update(
        precision_at_3=p_at_3, baseline_precision_at_3=base_at_3, n_precision_learners=n_learners
    )
    return out


@dataclass(frozen=True, slots=True)
class Fit:
    model: BestLR
    counts: CountFeatures  # prior evidence of every attempt of the log
    p_test: FloatArray  # the model's P(success) of the held-out attempts
    fit_seconds: float
    converged: bool
    export_gap: float


def estimate_prior_logits(
    train: AttemptLog, skill_ids: IntArray, exercise_ids: IntArray, exercise_skill_ids: IntArray
) -> FloatArray:
    """Population success logit of every catalog exercise from the training attempts, shrunk
    towards its skill's (and a skill's towards everyone's) by PRIOR_PSEUDO_ATTEMPTS: the
    exercise difficulty the residuals are measured against, estimated from data only."""
    m = PRIOR_PSEUDO_ATTEMPTS
    y = train.correct.astype(np.float64)
    overall = (y.sum() + 1.0) / (len(y) + 2.0)
    s_rows = np.searchsorted(skill_ids, train.skill_ids)
    s_n = np.bincount(s_rows, minlength=len(skill_ids))
    s_c = np.bincount(s_rows, weights=y, minlength=len(skill_ids))
    p_skill = (s_c + m * overall) / (s_n + m)
    e_rows = np.searchsorted(exercise_ids, train.exercise_ids)
    e_n = np.bincount(e_rows, minlength=len(exercise_ids))
    e_c = np.bincount(e_rows, weights=y, minlength=len(exercise_ids))
    p_ex = (e_c + m * p_skill[np.searchsorted(skill_ids, exercise_skill_ids)]) / (e_n + m)
    out: FloatArray = np.log(p_ex) - np.log1p(-p_ex)
    return out


def fit_best_lr(
    log: AttemptLog,
    is_test: npt.NDArray[np.bool_],
    *,
    attempt_prior: FloatArray,
    skill_ids: IntArray,
    exercise_ids: IntArray,
    exercise_skill_ids: IntArray,
    with_ability: bool = True,
) -> Fit:
    """Fit on the attempts outside is_test and export; pure (no I/O), shared with evaluation.
    with_ability=False fits the counts-only model (format /1's features) for comparison."""
    counts = prior_counts(log, attempt_prior)
    if not with_ability:
        zero = np.zeros(len(log))
        counts = dataclasses.replace(
            counts,
            skill_residual=zero,
            skill_information=zero,
            total_residual=zero,
            total_information=zero,
        )
    n_skills, n_exercises = len(skill_ids), len(exercise_ids)
    x = feature_matrix(
        np.searchsorted(skill_ids, log.skill_ids),
        np.searchsorted(exercise_ids, log.exercise_ids),
        counts,
        n_skills=n_skills,
        n_exercises=n_exercises,
    )
    estimator = LogisticRegression(C=REGULARIZATION_C, solver="lbfgs", max_iter=MAX_ITER)
    fit_started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(x[~is_test], log.correct[~is_test])
    fit_seconds = time.perf_counter() - fit_started
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef = np.asarray(estimator.coef_[0], dtype=np.float64)
    n_counts = len(COUNT_FEATURES)
    model = BestLR.from_coefficients(
        intercept=float(estimator.intercept_[0]),
        skill_ids=skill_ids,
        skill_weights=coef[:n_skills],
        exercise_ids=exercise_ids,
        exercise_skill_ids=exercise_skill_ids,
        exercise_weights=coef[n_skills : n_skills + n_exercises],
        count_weights=coef[n_skills + n_exercises : n_skills + n_exercises + n_counts],
        ability_weights=coef[n_skills + n_exercises + n_counts :],
        exercise_attempts=np.bincount(
            np.searchsorted(exercise_ids, log.exercise_ids[~is_test]), minlength=n_exercises
        ),
    )
    test = log.subset(is_test)
    p_model = quality.bestlr_success(
        model, test.exercise_ids, test.skill_ids, counts.subset(is_test)
    )
    gap = 0.0
    if is_test.any():
        p_sklearn = np.asarray(estimator.predict_proba(x[is_test])[:, 1], dtype=np.float64)
        gap = float(np.abs(p_sklearn - p_model).max(initial=0.0))
    if not gap < EXPORT_TOLERANCE:
        raise AssertionError(f"exported coefficients disagree with sklearn by {gap:.3g}")
    return Fit(model, counts, p_model, fit_seconds, converged, gap)


def _store_priors(engine: Engine, exercise_ids: IntArray, prior_logit: FloatArray) -> None:
    """Give a prior to the exercises that have none (never changed once set, so the residual sums
    the write path accumulates stay comparable) and recompute the learners' residual sums
    against them, so the statistics equal what the write path would have summed."""
    with engine.begin() as conn:
        # Writers wait for the recompute (they take ROW EXCLUSIVE); reads go on. Without the
        # lock a batch committed during the UPDATE would be overwritten by the older snapshot.
        conn.exec_driver_sql("LOCK TABLE learner_skill_stats IN SHARE ROW EXCLUSIVE MODE")
        conn.exec_driver_sql(
            "UPDATE exercises e SET prior_logit = v.q"
            " FROM unnest(%(ids)s::int[], %(q)s::float8[]) AS v(id, q)"
            " WHERE e.id = v.id AND e.prior_logit IS NULL",
            {"ids": exercise_ids.tolist(), "q": prior_logit.tolist()},
        )
        conn.exec_driver_sql(
            "UPDATE learner_skill_stats s SET sum_residual = a.r, sum_information = a.i"
            " FROM (SELECT a.learner_id, e.skill_id,"
            "        sum(a.correct::int - 1 / (1 + exp(-coalesce(e.prior_logit, 0)))) AS r,"
            "        sum(1 / (1 + exp(-coalesce(e.prior_logit, 0)))"
            "            * (1 - 1 / (1 + exp(-coalesce(e.prior_logit, 0))))) AS i"
            "      FROM attempts a JOIN exercises e ON e.id = a.exercise_id"
            "      GROUP BY a.learner_id, e.skill_id) a"
            " WHERE s.learner_id = a.learner_id AND s.skill_id = a.skill_id"
        )
