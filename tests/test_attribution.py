"""Open-set attribution on synthetic Gaussian clusters: classification, unknown scores, enrolment, storage."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from detector.attribution import (
    UNKNOWN_SCORES,
    AttributionError,
    AttributionHead,
    FeatureFileError,
    FeatureSet,
    HeadConfig,
    ccr_at_fpr,
    load_features,
    macro_f1,
    open_set_report,
    oscr,
    oscr_curve,
    plot_confusion,
    save_features,
    unknown_auroc,
)

DIM = 24


def clusters(n_per: int, names: list[str], seed: int, spread: float = 1.0):
    """Gaussian clusters whose centres are fixed by the name (the same generator gives the same cluster)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for name in names:
        centre = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 1.6, DIM)
        feats.append(centre + rng.normal(0, spread, (n_per, DIM)))
        labels += [name] * n_per
    return np.concatenate(feats).astype(np.float32), labels


KNOWN = ["gen_a", "gen_b", "gen_c", "gen_d"]


@pytest.fixture(scope="module")
def head() -> AttributionHead:
    x, y = clusters(60, KNOWN, seed=1)
    model = AttributionHead(HeadConfig()).fit(x, y)
    xv, yv = clusters(30, KNOWN, seed=2)
    model.fit_thresholds(xv, yv)
    return model


def test_closed_set_classification(head):
    x, y = clusters(40, KNOWN, seed=3)
    preds = head.predict(x)
    assert np.mean(np.array(preds.top1) == np.array(y)) > 0.95
    assert np.allclose(preds.probs.sum(axis=1), 1.0, atol=1e-5)
    item = preds.item(0, k=2)
    assert len(item.top_k) == 2 and item.top_k[0][1] >= item.top_k[1][1]


def test_thresholds_accept_the_target_share_of_known_validation(head):
    xv, yv = clusters(30, KNOWN, seed=2)
    preds = head.predict(xv)
    for name in UNKNOWN_SCORES:
        accepted = (preds.scores[name] <= head.thresholds[name]).mean()
        assert 0.94 <= accepted <= 1.0, (name, accepted)


def test_held_out_cluster_scores_higher_as_unknown(head):
    xk, yk = clusters(40, KNOWN, seed=4)
    xu, yu = clusters(40, ["held_out"], seed=5)
    preds = head.predict(np.concatenate([xk, xu]))
    is_unknown = np.r_[np.zeros(len(xk), bool), np.ones(len(xu), bool)]
    for name in ("mahalanobis", "knn"):
        assert unknown_auroc(preds.scores[name], is_unknown) > 0.95, name
    for name in UNKNOWN_SCORES:  # every score is oriented: unknowns higher on average
        assert preds.scores[name][is_unknown].mean() > preds.scores[name][~is_unknown].mean(), name
    # The Mahalanobis decision rejects most of the held-out cluster and keeps most known samples.
    assert preds.is_unknown[is_unknown].mean() > 0.8
    assert preds.is_unknown[~is_unknown].mean() < 0.15
    assert set(preds.labels[len(xk) :]) >= {"unknown"}
    report = open_set_report(yk + yu, preds.top1, preds.unknown_score, head.classes, preds.is_unknown)
    assert report["oscr"] > 0.85 and report["closed_set_accuracy"] > 0.95
    assert report["unknown_rejected"] > 0.8


def test_enrolment_from_ten_samples_then_remove(head, tmp_path):
    model = AttributionHead.load(head.save(tmp_path / "h.safetensors"))
    x_new, _ = clusters(10, ["gen_new"], seed=6)
    before = model.predict(clusters(40, ["gen_new"], seed=7)[0])
    assert before.is_unknown.mean() > 0.8  # not known yet: rejected
    model.enroll("gen_new", x_new)
    assert model.classes[-1] == "gen_new" and model.enrolled == ["gen_new"]
    x_test, _ = clusters(40, ["gen_new"], seed=7)
    after = model.predict(x_test)
    assert np.mean(np.array(after.top1) == "gen_new") > 0.9
    assert after.is_unknown.mean() < 0.3
    # The old generators are still recognised.
    xk, yk = clusters(20, KNOWN, seed=8)
    assert np.mean(np.array(model.predict(xk).top1) == np.array(yk)) > 0.9
    with pytest.raises(AttributionError, match="already known"):
        model.enroll("gen_new", x_new)
    model.remove("gen_new")
    assert model.classes == KNOWN and model.enrolled == []
    assert "gen_new" not in model.predict(x_test).top1 and model.predict(x_test).is_unknown.mean() > 0.8
    with pytest.raises(AttributionError, match="no generator named"):
        model.remove("gen_new")


def test_save_load_round_trip_keeps_every_decision(head, tmp_path):
    """The classifier round-trips exactly; the distances, whose statistics are stored in half precision,
    within 1e-2 relative, and no top-1 or unknown decision changes."""
    head.metadata["backbone"] = "effnet-lite0"
    path = head.save(tmp_path / "head.safetensors")
    loaded = AttributionHead.load(path)
    x, _ = clusters(10, KNOWN + ["other"], seed=9)
    a, b = head.predict(x), loaded.predict(x)
    assert loaded.classes == head.classes and loaded.thresholds == head.thresholds
    assert loaded.metadata["backbone"] == "effnet-lite0"
    np.testing.assert_array_equal(a.probs, b.probs)
    for name in UNKNOWN_SCORES:
        np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=1e-2, atol=1e-3)
    assert list(a.top1) == list(b.top1) and (a.is_unknown == b.is_unknown).all()
    assert AttributionHead.load(loaded.save(tmp_path / "again.safetensors")).bank.dtype == np.float32
    from safetensors.numpy import load_file

    assert set(load_file(path)) >= {"coef", "prototypes", "precision", "bank"}  # plain safetensors, no pickle
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(AttributionError, match="bad.safetensors"):
        AttributionHead.load(tmp_path / "bad.safetensors")


def test_fit_refuses_bad_input():
    x, _ = clusters(5, ["a"], seed=0)
    with pytest.raises(AttributionError, match="two generators"):
        AttributionHead().fit(x, ["a"] * 5)
    with pytest.raises(AttributionError, match="reserved"):
        AttributionHead().fit(x, ["a", "b", "unknown", "a", "b"])
    model = AttributionHead().fit(x, ["a", "b", "a", "b", "a"])
    with pytest.raises(AttributionError, match="expected N x 24"):
        model.predict(np.zeros((2, 3)))


def test_oscr_matches_hand_computed_example():
    # knowns: scores 0.1 (correct), 0.2 (wrong), 0.4 (correct); unknowns: 0.3, 0.5.
    # Accepting by increasing score: (0, 1/3) -> (0, 1/3) -> (0.5, 1/3) -> (0.5, 2/3) -> (1, 2/3).
    scores = [0.1, 0.2, 0.4, 0.3, 0.5]
    unknown = [False, False, False, True, True]
    correct = [True, False, True, False, False]
    fpr, ccr = oscr_curve(scores, unknown, correct)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(ccr, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert oscr(scores, unknown, correct) == pytest.approx(0.5 * 1 / 3 + 0.5 * 2 / 3)
    assert ccr_at_fpr(scores, unknown, correct, 0.05) == pytest.approx(1 / 3)
    # Perfect separation scores the closed-set accuracy; reversed scores score 0.
    assert oscr([0, 0, 0, 1, 1], unknown, correct) == pytest.approx(2 / 3)
    assert oscr([2, 2, 2, 1, 1], unknown, correct) == pytest.approx(0.0)
    # A tie between a known-correct and an unknown sample is a straight segment.
    assert oscr([0.5, 0.5], [False, True], [True, False]) == pytest.approx(0.5)


def test_closed_set_metrics_and_confusion_png(tmp_path):
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "b", "b", "b"]
    assert macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 0.8) / 2)
    report = open_set_report(y_true + ["z"], y_pred + ["a"], [0.1, 0.2, 0.3, 0.4, 0.9], ["a", "b"])
    assert report["closed_set_accuracy"] == pytest.approx(0.75)
    assert report["unknown_auroc"] == pytest.approx(1.0)
    png = plot_confusion(y_true + ["z"], y_pred + ["unknown"], tmp_path / "cm.png", labels=["a", "b", "z"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feature_files_round_trip_without_pickle(tmp_path):
    x, y = clusters(3, ["a", "b"], seed=0)
    fs = FeatureSet(x, generators=y, splits=["train"] * 4 + ["val"] * 2, paths=[f"{i}.png" for i in range(6)])
    loaded = load_features(save_features(fs, tmp_path / "f.npz"))
    np.testing.assert_array_equal(loaded.features, fs.features)
    assert loaded.generators == y and loaded.split("val").paths == ["4.png", "5.png"]
    np.save(tmp_path / "only.npy", x)
    assert load_features(tmp_path / "only.npy").generators == []
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match="obj.npy"):
        load_features(tmp_path / "obj.npy")
    folder = tmp_path / "extracted"  # the layout `detector features extract --out` writes
    folder.mkdir()
    np.save(folder / "features.npy", x)
    rows = "".join(f"{i},{i},{i}.png,fake,{g},train\n" for i, g in enumerate(y))
    (folder / "records.csv").write_text("row,index,path,label,generator,split\n" + rows)
    from_folder = load_features(folder)
    assert (
        from_folder.generators == y and from_folder.paths[1] == "1.png" and from_folder.splits[0] == "train"
    )
    with pytest.raises(FeatureFileError, match="2 entries for 6"):
        FeatureSet(x, generators=["a", "b"])


def test_protocol_holdout_and_enrolment_curve(head):
    from detector.attribution.protocol import AttributionFitConfig, enrolment_curve, evaluate, make_splits

    x, y = clusters(30, KNOWN + ["held_out", "real"], seed=10)
    fs = FeatureSet(x, generators=y)  # no split column: a seeded validation share is carved
    splits = make_splits(fs, AttributionFitConfig(holdout=["held_out"]))
    assert set(splits.train.generators) == set(KNOWN) and splits.test is None and splits.notes
    assert len(splits.val) == 4 * 6  # 20% of 30 per known generator; real and held_out dropped

    pool = FeatureSet(*clusters(30, ["held_out"], seed=11))
    test = FeatureSet(*clusters(20, KNOWN + ["held_out"], seed=12))
    before = head.predict(test.features).probs.copy()
    rows = enrolment_curve(head, pool, test, shots=[1, 10], repeats=2)
    assert [(r["generator"], r["shots"]) for r in rows] == [("held_out", 1), ("held_out", 10)]
    assert rows[1]["new_accuracy"] > 0.9 and rows[1]["known_accuracy"] > 0.9
    assert rows[1]["new_rejected"] <= rows[0]["new_rejected"] + 0.05
    np.testing.assert_array_equal(head.predict(test.features).probs, before)  # the head is left as it was
    result = evaluate(head, test)
    assert result["closed"]["n_unknown"] == 20 and result["scores"]["mahalanobis"]["unknown_auroc"] > 0.9
