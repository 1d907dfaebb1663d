"""Metrics and calibration against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.calibration import Calibrator, fit_calibrator, fit_temperature, sigmoid
from detector.evaluation.tables import per_generator_table
from detector.metrics import (
    accuracy_at,
    auc,
    detection_metrics,
    expected_calibration_error,
    threshold_at_fpr,
    tpr_at_fpr,
)


def test_auc_accuracy_and_tpr_by_hand():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.9, 0.4, 0.8, 0.85, 0.95]
    assert auc(y, s) == pytest.approx(13 / 16)  # 13 of 16 (fake, real) pairs ordered right
    assert accuracy_at(y, s, 0.5) == pytest.approx(6 / 8)
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.25)  # only 0.95 scores above the 0.9 real
    assert tpr_at_fpr(y, s, 0.25) == pytest.approx(1.0)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_threshold_at_fpr_respects_the_budget():
    rng = np.random.default_rng(0)
    real = rng.normal(size=1000)
    for fpr in (0.0, 0.01, 0.05, 0.5):
        t = threshold_at_fpr(real, fpr)
        assert (real >= t).mean() <= fpr + 1e-12
        assert (real >= np.nextafter(t, -np.inf) - 1e-9).mean() >= fpr - 1e-3  # and is the tightest
    assert threshold_at_fpr(real, 1.0) == -np.inf


def test_ece_of_perfectly_calibrated_and_overconfident_scores():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p
    assert expected_calibration_error(y, p) < 0.01
    overconfident = np.where(p > 0.5, 1.0, 0.0)
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.25, abs=0.01)


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(scale=2.0, size=20_000)
    y = (rng.uniform(size=true_logit.size) < sigmoid(true_logit)).astype(int)
    overconfident = 4.0 * true_logit
    assert fit_temperature(overconfident, y) == pytest.approx(4.0, rel=0.1)
    cal = fit_calibrator(overconfident, y, "temperature", target_fpr=0.05)
    assert cal.ece_after < cal.ece_before / 3
    probs = cal(overconfident)
    assert (probs[y == 0] >= cal.threshold).mean() <= 0.05
    # Temperature keeps the ranking, so AUC is unchanged.
    assert auc(y, probs) == pytest.approx(auc(y, overconfident))


def test_isotonic_round_trips_through_json():
    rng = np.random.default_rng(2)
    z = rng.normal(size=500)
    y = (rng.uniform(size=500) < sigmoid(2 * z + 1)).astype(int)
    cal = fit_calibrator(z, y, "isotonic", target_fpr=0.1)
    assert cal.ece_after <= cal.ece_before
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again(z), cal(z))
    assert np.all(np.diff(cal(np.sort(z))) >= -1e-12)  # monotone
    with pytest.raises(ValueError, match="both"):
        fit_calibrator(z, np.ones_like(y), "isotonic")


def test_detection_metrics_and_per_generator_rows():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.3, 0.6])
    gens = ["real", "real", "real", "a", "a", "b", "b"]
    m = detection_metrics(y, p, threshold=0.5)
    assert m.n == 7 and m.n_fake == 4 and 0 <= m.ece <= 1
    rows = {r["generator"]: r for r in per_generator_table(y, p, gens, 0.5)}
    assert rows["a"]["auc"] == pytest.approx(1.0)  # both a-fakes above every real
    assert rows["b"]["detection_rate"] == pytest.approx(0.5)
    assert rows["real"]["detection_rate"] == pytest.approx(1 / 3)


def test_bootstrap_interval_brackets_the_metric_and_narrows_with_more_data():
    from detector.metrics import auc, bootstrap_interval

    rng = np.random.default_rng(0)

    def sample(n):
        y = np.repeat([0, 1], n)
        return y, y + rng.normal(0, 1.0, 2 * n)

    y, s = sample(100)
    lo, hi = bootstrap_interval(y, s, auc, n=200)
    assert lo < auc(y, s) < hi
    y_big, s_big = sample(2000)
    lo_big, hi_big = bootstrap_interval(y_big, s_big, auc, n=200)
    assert hi_big - lo_big < (hi - lo) / 2
    assert lo_big < 0.76 < hi_big  # the true AUC of N(1,1) vs N(0,1) is Phi(1/sqrt(2)) = 0.760
    assert np.isnan(bootstrap_interval([1, 1], [0.2, 0.3], auc)[0])
