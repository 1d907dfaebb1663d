"""Fusion: complementary branches fuse into a better, calibrated score; verdict rules; the result object."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from detector.fusion import FusionConfig, FusionError, FusionModel, decide, fuse
from detector.result import AttributionEvidence, ProvenanceResult, WatermarkEvidence, csv_columns


def synthetic(n: int, seed: int):
    """Two kinds of fakes: branch 'clip' sees kind A, 'inversion' sees kind B, 'rigid' weakly sees both.
    clip and rigid give probabilities, inversion a raw distance (so both transforms are exercised)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    kind = rng.integers(0, 2, n)  # which kind of fake (only meaningful where y == 1)
    a = (y == 1) & (kind == 0)
    b = (y == 1) & (kind == 1)
    clip = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 3.0 * a - 1)))
    inversion = np.exp(rng.normal(0, 0.5, n) + 1.5 * b)
    rigid = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 0.8 * y)))
    return {"clip": clip, "inversion": inversion, "rigid": rigid}, y


def tpr_at_fpr(y, score, fpr=0.01):
    fprs, tprs, _ = roc_curve(y, score)
    return float(tprs[fprs <= fpr].max())


def test_fused_score_beats_every_branch_on_complementary_signal():
    val, yv = synthetic(2000, seed=0)
    test, yt = synthetic(4000, seed=1)
    model = FusionModel().fit(val, yv)
    fused = model.predict_proba(test)
    fused_auc, fused_tpr = roc_auc_score(yt, fused), tpr_at_fpr(yt, fused)
    for name, scores in test.items():
        assert fused_auc > roc_auc_score(yt, scores) + 0.03, name
        assert fused_tpr > tpr_at_fpr(yt, scores), name
    # Calibrated on held-out data: expected calibration error over 10 bins is small.
    bins = np.minimum((fused * 10).astype(int), 9)
    ece = sum(
        abs(fused[bins == k].mean() - yt[bins == k].mean()) * (bins == k).mean()
        for k in range(10)
        if (bins == k).any()
    )
    assert ece < 0.05
    assert model.transforms == {"clip": "logit", "inversion": "identity", "rigid": "logit"}


def test_missing_branch_uses_the_model_of_the_present_branches(tmp_path):
    val, yv = synthetic(1500, seed=2)
    test, _ = synthetic(300, seed=3)
    full = FusionModel().fit(val, yv)
    without_inversion = FusionModel().fit({k: v for k, v in val.items() if k != "inversion"}, yv)
    test["inversion"] = np.where(np.arange(300) < 100, np.nan, test["inversion"])
    fused = full.predict_proba(test)
    partial = without_inversion.predict_proba({k: v[:100] for k, v in test.items() if k != "inversion"})
    np.testing.assert_allclose(fused[:100], partial, rtol=1e-10)
    assert not np.allclose(
        fused[100:], without_inversion.predict_proba({k: test[k][100:] for k in ("clip", "rigid")})
    )
    # No branch at all: the validation base rate.
    assert full.predict_one({}) == pytest.approx(yv.mean())
    loaded = FusionModel.load(full.save(tmp_path / "fusion.safetensors"))
    np.testing.assert_array_equal(loaded.predict_proba(test), fused)
    assert loaded.branches == ["clip", "inversion", "rigid"] and len(loaded.models) == 7
    with pytest.raises(FusionError, match="unknown branch"):
        full.predict_proba({"nope": [0.5]})


def test_fit_refuses_one_class_and_bad_files(tmp_path):
    with pytest.raises(FusionError, match="both classes"):
        FusionModel().fit({"clip": [0.1, 0.2]}, [1, 1])
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(FusionError, match="x.safetensors"):
        FusionModel.load(tmp_path / "x.safetensors")


CFG = FusionConfig(threshold=0.5, uncertain_band=0.1, watermark_fpr=1e-6)


def test_found_watermark_is_strong_evidence():
    wm = WatermarkEvidence(
        detected=True, p_value=1e-12, bit_accuracy=0.98, payload="ab12", generator="sd-turbo"
    )
    p_ai, verdict = decide(0.1, wm, CFG)
    assert verdict == "watermarked" and p_ai > 0.99
    result = fuse("x.png", {"clip": 0.1}, None, CFG, watermark=wm)
    assert result.verdict == "watermarked" and result.generator == "sd-turbo"
    # A decoder flag alone does not count when the p-value does not clear the fusion's FPR.
    weak = WatermarkEvidence(detected=True, p_value=1e-3)
    assert decide(0.9, weak, CFG) == (0.9, "ai-generated")
    assert fuse("x.png", {"clip": 0.9}, None, CFG, watermark=weak).watermark.detected is False


def test_missing_watermark_is_weak_evidence():
    missing = WatermarkEvidence(detected=False, p_value=0.4, bit_accuracy=0.52)
    for p in (0.05, 0.5, 0.95):
        assert decide(p, missing, CFG) == decide(p, None, CFG)  # p_ai and verdict untouched
    assert decide(0.95, missing, CFG) == (0.95, "ai-generated")
    assert decide(0.45, missing, CFG) == (0.45, "uncertain")
    assert decide(0.35, missing, CFG) == (0.35, "real")
    assert decide(None, missing, CFG) == (None, "uncertain")


def test_fuse_without_model_takes_one_calibrated_branch_only():
    assert fuse("a.png", {"effort": 0.8}, None, CFG).p_ai == pytest.approx(0.8)
    with pytest.raises(ValueError, match="need a fitted fusion model"):
        fuse("a.png", {"effort": 0.8, "rigid": 0.3}, None, CFG)


def test_result_round_trip_and_csv_row():
    result = ProvenanceResult(
        path="img/1.png",
        p_ai=0.93,
        verdict="ai-generated",
        watermark=WatermarkEvidence(detected=False, p_value=0.5, bit_accuracy=0.5, bits="0101"),
        attribution=AttributionEvidence(
            top_k=[("sd", 0.7), ("gan", 0.2)], unknown_score=3.2, score_name="knn"
        ),
        branches={"effort": 0.95, "rigid": float("nan")},
        versions={"effort": "abc123"},
    )
    line = result.to_json()
    assert "\n" not in line and json.loads(line)["branches"]["rigid"] is None
    again = ProvenanceResult.from_json(line)
    assert again == result and again.attribution.top_k[0] == ("sd", 0.7)
    row = result.to_row()
    assert (
        row["attribution.top1"] == "sd" and row["branch.effort"] == 0.95 and row["version.effort"] == "abc123"
    )
    assert list(row) == csv_columns(["effort", "rigid"], ["effort"])
    bad = ProvenanceResult.failed("broken.jpg", "truncated file")
    assert (
        not bad.ok
        and ProvenanceResult.from_dict(bad.to_dict()) == bad
        and bad.to_row()["error"] == "truncated file"
    )
    with pytest.raises(ValueError, match="verdict"):
        ProvenanceResult(path="a", verdict="fake")


def test_grouped_cross_validation_drops_a_branch_that_does_not_transfer_across_photos(tmp_path):
    """'leaky' separates the classes inside each source photo, but in opposite directions on different
    photos (like a score that depends on content): pooled, it looks useful; on a held-out photo it misleads.
    With the rows' groups the fusion scores every branch subset on held-out groups and keeps 'good' alone."""
    rng = np.random.default_rng(0)
    n = 1200
    group = rng.integers(0, 10, n)
    y = rng.integers(0, 2, n)
    direction = np.where(group < 6, 1.0, -1.0)
    scores = {
        "good": y + rng.normal(0, 1, n),
        "leaky": direction * (2 * y - 1) + rng.normal(0, 0.5, n),
    }
    pooled = FusionModel().fit(scores, y)
    grouped = FusionModel().fit(scores, y, groups=[f"photo{g}" for g in group])
    assert pooled.describe()["used_with_every_branch"] == "good+leaky"
    assert grouped.describe()["used_with_every_branch"] == "good"
    assert grouped.cv_loss["good"] < grouped.cv_loss["good+leaky"] < grouped.cv_loss["leaky"]
    # on new photos where the leaky direction is reversed, the chosen model is the better one
    test_group = rng.integers(0, 10, n)
    yt = rng.integers(0, 2, n)
    test = {
        "good": yt + rng.normal(0, 1, n),
        "leaky": np.where(test_group < 6, -1.0, 1.0) * (2 * yt - 1) + rng.normal(0, 0.5, n),
    }
    assert (
        roc_auc_score(yt, grouped.predict_proba(test)) > roc_auc_score(yt, pooled.predict_proba(test)) + 0.02
    )
    # the choice survives a save/load round trip
    loaded = FusionModel.load(grouped.save(tmp_path / "f.safetensors"))
    np.testing.assert_array_equal(loaded.predict_proba(test), grouped.predict_proba(test))


def test_target_fpr_moves_the_threshold_to_that_share_of_validation_reals(tmp_path):
    """The decision threshold is chosen on validation reals at the asked FPR, and survives save/load."""
    val, yv = synthetic(3000, seed=4)
    test, yt = synthetic(6000, seed=5)
    model = FusionModel(FusionConfig(target_fpr=0.02)).fit(val, yv)
    t = model.config.threshold
    assert t != 0.5
    assert abs((model.predict_proba(val)[yv == 0] > t).mean() - 0.02) < 0.005
    assert abs((model.predict_proba(test)[yt == 0] > t).mean() - 0.02) < 0.015  # same distribution
    model.save(tmp_path / "f.safetensors")
    assert FusionModel.load(tmp_path / "f.safetensors").config.threshold == t
    with pytest.raises(FusionError):
        FusionConfig(target_fpr=1.5)
