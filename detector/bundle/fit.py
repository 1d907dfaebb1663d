"""``detector bundle``: a trained checkpoint + a corpus's train/val splits -> a scoring bundle.

The attribution head is fitted on the *training* split's fake images (features from the checkpoint's own
backbone, so scoring needs one forward), its rejection thresholds and the fusion on the *validation*
split; the test split is never read. The fusion is a logistic regression over the passive branch scores
(the detector head's calibrated P(fake), the distance to the nearest known generator, RIGID's instability
and, given a diffusion model, the inversion branch's score, whose own small regression is fitted on the
training split like the head); a watermark,
when the bundle references a decoder, enters by the verdict rule (its p-value's likelihood ratio), not
through the regression: a found watermark is strong evidence, a missing one weak.

:func:`build_bundle` runs named steps: :func:`load_sources` (checkpoint, corpus), :func:`create_inversion`,
:func:`score_splits` (images read and scored as ``detector score`` reads them), :func:`fit_branches`
(attribution head, inversion regression), :func:`fit_fusion` (+ its report), :func:`watermark_reference`
and :func:`write_bundle`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.attribution import AttributionHead, FeatureSet, HeadConfig
from detector.bundle.detector import (
    ATTRIBUTION_FILE,
    DETECTOR_DIR,
    FORMAT,
    FUSION_FILE,
    MANIFEST,
    BundleError,
    ProvenanceDetector,
    versions_for,
)
from detector.bundle.inversion import INVERSION_FILE, InversionBranch
from detector.corpus import REAL_GENERATOR, load_corpus
from detector.data import batched, decoded_batches
from detector.features.inversion import InversionConfig
from detector.features.rigid import RigidConfig
from detector.fusion import FusionConfig, FusionModel
from detector.io import ImageLoadError, atomic_write_text
from detector.metrics import auc, bootstrap_interval, tpr_at_fpr
from detector.scoring import Batch
from detector.scoring.branches import (
    DETECTOR_BRANCH,
    DISTANCE_BRANCH,
    INVERSION_BRANCH,
    RIGID_BRANCH,
    rigid_branch,
)

CHECKPOINT_FILES = (
    "model.safetensors",
    "config.yaml",
    "calibration.json",
    "model_card.json",
    "MODEL_CARD.md",
)


@dataclass
class BundleConfig:
    """What ``detector bundle`` fits (saved as ``bundle.yaml`` in the bundle)."""

    checkpoint: str = ""
    corpus: str = ""
    train_split: str = "train"
    val_split: str = "val"
    attribution: HeadConfig = field(default_factory=HeadConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    batch_size: int = 32
    #: Optional watermark decoder reference: checkpoint (None = the shipped one), key, registry, fpr.
    watermark_key: str | None = None
    watermark_checkpoint: str | None = None
    watermark_registry: str | None = None
    watermark_search: str = "full"  # the decoder search scoring uses: full | fast (see detector.watermark)
    #: RIGID branch: training-free, ``rigid_config.draws`` extra backbone forwards per batch. Off by
    #: default: on the offline benchmark its direction flips between source photos (see
    #: experiments/fusion/RESULTS.md), so it is a branch to try, not to trust blindly.
    rigid: bool = False
    rigid_config: RigidConfig = field(default_factory=lambda: RigidConfig(draws=2))
    #: Inversion branch: a diffusers model folder or hub id (None: no inversion branch).
    inversion_model: str | None = None
    inversion: InversionConfig = field(default_factory=InversionConfig)


@dataclass
class SplitScores:
    """Branch scores, features and labels of one split (images that failed to load are listed apart)."""

    paths: list[str]
    targets: np.ndarray
    generators: list[str]
    features: np.ndarray
    detector: np.ndarray
    errors: list[tuple[str, str]]
    rigid: np.ndarray | None = None
    inversion_features: np.ndarray | None = None
    groups: list[str] = field(default_factory=list)  # source photo / generator batch per row


def score_split(
    det: ProvenanceDetector,
    corpus,
    split: str,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
    rigid: bool = False,
    inversion: InversionBranch | None = None,
) -> SplitScores:
    """Backbone features and the detector head's calibrated P(fake) for every loadable image of ``split``
    (and RIGID scores / inversion statistics when asked), read and batched as scoring reads them
    (:func:`detector.data.decoded_batches`) and scored by the same branch adapters."""
    records = corpus.subset(split).records if split != "all" else corpus.records
    detector = det.passive_branches()[DETECTOR_BRANCH]
    instability = rigid_branch(det.features, det.rigid) if rigid else None
    paths, targets, gens, groups, feats, scores, errors = [], [], [], [], [], [], []
    rigid_scores, inversion_feats = [], []
    files = [str(corpus.resolve(r)) for r in records]
    for chunk, (chunk_paths, decoded) in zip(
        batched(records, batch_size), decoded_batches(files, batch_size), strict=True
    ):
        good = [i for i, item in enumerate(decoded) if not isinstance(item, ImageLoadError)]
        errors.extend((chunk_paths[i], item.reason) for i, item in enumerate(decoded) if i not in good)
        if good:
            batch = Batch([chunk_paths[i] for i in good], [decoded[i] for i in good])
            kept = [chunk[i] for i in good]
            feats.append(det.features(batch))
            scores.extend(detector(batch))
            if instability is not None:
                rigid_scores.extend(instability(batch))
            if inversion is not None:
                inversion_feats.append(inversion.features(batch.images))
            paths.extend(batch.paths)
            targets.extend(1 if r.is_fake else 0 for r in kept)
            gens.extend(r.generator for r in kept)
            groups.extend(r.group for r in kept)
        if advance:
            advance(len(chunk))
    dim = int(det.model.backbone.feature_dim)
    return SplitScores(
        paths,
        np.asarray(targets, dtype=np.int64),
        gens,
        np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        np.asarray(scores, dtype=np.float64),
        errors,
        np.asarray(rigid_scores, dtype=np.float64) if rigid else None,
        (np.concatenate(inversion_feats) if inversion_feats else np.zeros((0, len(inversion.names))))
        if inversion is not None
        else None,
        groups,
    )


def split_branch_scores(det: ProvenanceDetector, split: SplitScores) -> dict[str, np.ndarray]:
    """Every passive branch's scores on a scored split, by branch name (what the fusion takes)."""
    scores = {DETECTOR_BRANCH: split.detector}
    if det.attribution is not None:
        scores[DISTANCE_BRANCH] = det.attribution.predict(split.features).unknown_score.astype(np.float64)
    if split.rigid is not None:
        scores[RIGID_BRANCH] = split.rigid
    if det.inversion is not None and split.inversion_features is not None:
        scores[INVERSION_BRANCH] = det.inversion.decision(split.inversion_features)
    return scores


def fit_attribution(train: SplitScores, val: SplitScores, config: HeadConfig) -> AttributionHead | None:
    """The head on the training fakes, thresholds on the validation fakes; None with < 2 generators."""
    fakes = [g != REAL_GENERATOR for g in train.generators]
    if len({g for g, f in zip(train.generators, fakes, strict=True) if f}) < 2:
        return None
    tr = FeatureSet(train.features, train.generators).select(np.array(fakes))
    head = AttributionHead(HeadConfig(**asdict(config)))
    head.fit(tr.features, tr.generators)
    val_fake = np.array([g in head.classes for g in val.generators])
    if not val_fake.any():
        raise BundleError("no validation fakes of a known generator to fit the attribution thresholds on")
    head.fit_thresholds(
        val.features[val_fake], [g for g, k in zip(val.generators, val_fake, strict=True) if k]
    )
    return head


def branch_signs(scores: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, int]:
    """+1 where a branch's higher values mean fake on these (validation) rows, -1 where they mean real."""
    signs = {}
    for name, values in scores.items():
        ok = np.isfinite(values)
        signs[name] = 1 if auc(targets[ok], values[ok]) >= 0.5 else -1
    return signs


def branch_table(
    scores: dict[str, np.ndarray],
    targets: np.ndarray,
    fused: np.ndarray | None,
    signs: dict[str, int] | None = None,
    bootstrap: int = 0,
) -> dict:
    """AUC / TPR at 1% FPR of every branch alone and of the fusion (with 95% bootstrap intervals
    ``auc_ci`` / ``tpr_fpr1_ci`` when ``bootstrap`` > 0 resamples). Each branch is oriented by ``signs``
    (fixed on validation: pass the bundle's, never choose them on the rows being evaluated); without
    ``signs`` the rows themselves decide (only for the validation table)."""
    signs = signs or branch_signs(scores, targets)
    out = {}
    for name, values in scores.items():
        ok = np.isfinite(values)
        out[name] = _metrics(targets[ok], signs.get(name, 1) * values[ok], bootstrap)
    if fused is not None:
        out["fused"] = _metrics(targets, fused, bootstrap)
    return out


def _tpr_fpr1(targets, scores) -> float:
    return tpr_at_fpr(targets, scores, 0.01)


def _metrics(targets: np.ndarray, scores: np.ndarray, bootstrap: int = 0) -> dict:
    out = {"n": int(len(targets)), "auc": float(auc(targets, scores)), "tpr_fpr1": _tpr_fpr1(targets, scores)}
    if bootstrap:
        out["auc_ci"] = bootstrap_interval(targets, scores, auc, n=bootstrap)
        out["tpr_fpr1_ci"] = bootstrap_interval(targets, scores, _tpr_fpr1, n=bootstrap)
    return out


def load_sources(config: BundleConfig):
    """Step 1: the trained checkpoint and the corpus, checked to have both splits the bundle fits on."""
    from detector.training.checkpoint import CheckpointError, load_checkpoint

    try:
        model, _, calibrator, card = load_checkpoint(Path(config.checkpoint))
    except CheckpointError as exc:
        raise BundleError(str(exc)) from None
    corpus = load_corpus(config.corpus)
    for split in (config.train_split, config.val_split):
        if not corpus.subset(split).records:
            raise BundleError(f"{config.corpus}: no images in split {split!r}")
    return model, calibrator, card, corpus


def create_inversion(config: BundleConfig, device) -> InversionBranch | None:
    """Step 2: the (not yet fitted) inversion branch, when the config names a diffusion model."""
    if not config.inversion_model:
        return None
    try:
        return InversionBranch.create(config.inversion_model, config.inversion, device)
    except (OSError, ValueError) as exc:
        raise BundleError(f"inversion model {config.inversion_model!r}: {exc}") from None


def score_splits(
    det: ProvenanceDetector,
    corpus,
    config: BundleConfig,
    inversion: InversionBranch | None,
    progress: Callable | None = None,
) -> tuple[SplitScores, SplitScores]:
    """Step 3: branch scores and features of the training and validation splits. RIGID is training-free:
    only the validation split (where the fusion is fitted) needs its scores."""

    def run(split: str, with_rigid: bool) -> SplitScores:
        kwargs = dict(rigid=with_rigid, inversion=inversion)
        if progress is None:
            return score_split(det, corpus, split, config.batch_size, **kwargs)
        with progress(f"features {split}", len(corpus.subset(split).records)) as advance:
            return score_split(det, corpus, split, config.batch_size, advance, **kwargs)

    train, val = run(config.train_split, False), run(config.val_split, det.rigid is not None)
    if len(np.unique(val.targets)) < 2:
        raise BundleError(f"split {config.val_split!r} needs real and fake images to fit the fusion")
    return train, val


def fit_branches(
    det: ProvenanceDetector,
    train: SplitScores,
    val: SplitScores,
    config: BundleConfig,
    inversion: InversionBranch | None,
    log: Callable[[str], None],
) -> None:
    """Step 4: the attribution head (training fakes; thresholds on validation) and the inversion branch's
    regression (training split), set on ``det``."""
    head = fit_attribution(train, val, config.attribution)
    if head is None:
        log("fewer than two fake generators in the training split: no attribution head")
    if inversion is not None:
        inversion.fit(train.inversion_features, train.targets)
    det.attribution, det.inversion = head, inversion


def fit_fusion(
    det: ProvenanceDetector, train: SplitScores, val: SplitScores, config: BundleConfig
) -> tuple[FusionModel, dict[str, Any]]:
    """Step 5: the fusion over every passive branch's validation scores, and the fit report (what it was
    fitted on, each branch alone and fused on validation, the branch orientations)."""
    scores = split_branch_scores(det, val)
    fusion = FusionModel(config.fusion).fit(scores, val.targets, groups=val.groups)
    signs = branch_signs(scores, val.targets)
    report = {
        "fitted_on": {
            "corpus": str(config.corpus),
            "attribution": f"{config.train_split} fakes (thresholds: {config.val_split})",
            "fusion": config.val_split,
            "train_images": len(train.paths),
            "val_images": len(val.paths),
            "skipped": len(train.errors) + len(val.errors),
        },
        "validation_branches": branch_table(scores, val.targets, fusion.predict_proba(scores), signs),
        "branch_signs": signs,
        "fusion": fusion.describe(),
        "attribution_classes": det.attribution.classes if det.attribution is not None else [],
    }
    fusion.metadata = {"fitted_on": report["fitted_on"], "branch_signs": signs}
    return fusion, report


def watermark_reference(config: BundleConfig) -> dict[str, Any] | None:
    """The bundle's reference to a watermark decoder (absolute paths; the key stays where its owner keeps
    it), checked to load now rather than at scoring time."""
    if not config.watermark_key:
        return None

    def absolute(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value else None

    reference = {
        "key": absolute(config.watermark_key),
        "checkpoint": absolute(config.watermark_checkpoint),
        "registry": absolute(config.watermark_registry),
        "fpr": config.fusion.watermark_fpr,
        "search": config.watermark_search,
    }
    from detector.bundle.detector import load_watermarker

    load_watermarker(reference)
    return reference


def write_bundle(
    out: Path,
    config: BundleConfig,
    det: ProvenanceDetector,
    fusion: FusionModel,
    report: dict[str, Any],
    watermark: dict[str, Any] | None,
) -> None:
    """Step 6: copy the checkpoint, write every fitted part, the versions and the manifest (last: a
    ``bundle.json`` marks a finished bundle)."""
    from detector.config import save_config

    checkpoint, card, head, inversion, rigid = (
        Path(config.checkpoint),
        det.card,
        det.attribution,
        det.inversion,
        det.rigid,
    )
    (out / DETECTOR_DIR).mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / DETECTOR_DIR / name)
    fusion.save(out / FUSION_FILE)
    if head is not None:
        head.metadata = {
            "backbone": card.get("backbone"),
            "weights_id": card.get("weights_id"),
            "method": card.get("method"),  # a fine-tuned backbone: only the bundle reproduces its features
            "image_size": det.image_size,
        }
        head.save(out / ATTRIBUTION_FILE)
    if inversion is not None:
        inversion.save(out)
    parts = {
        "attribution": ATTRIBUTION_FILE if head is not None else None,
        "fusion": FUSION_FILE,
        "inversion": INVERSION_FILE if inversion is not None else None,
    }
    versions = versions_for(out, card, parts)
    if rigid is not None:
        versions["rigid"] = f"lambda={rigid.noise_level:g};draws={rigid.draws};seed={rigid.seed}"
    if inversion is not None:
        versions["inversion_model"] = inversion.version
    if watermark is not None:
        from detector.io import file_sha256

        wm_model = watermark["checkpoint"]
        if wm_model is None:
            from detector.watermark.api import default_checkpoint

            wm_model = str(default_checkpoint())
        versions["watermark"] = "sha256:" + file_sha256(wm_model)[:16]
    meta = {
        "format": FORMAT,
        "detector": DETECTOR_DIR,
        "attribution": parts["attribution"],
        "fusion": FUSION_FILE,
        "watermark": watermark,
        "rigid": asdict(rigid) if rigid is not None else None,
        "inversion": parts["inversion"],
        "branches": sorted(fusion.branches),
        "versions": versions,
    }
    save_config(config, out / "bundle.yaml")
    atomic_write_text(out / "fusion_report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / MANIFEST, json.dumps(meta, indent=2) + "\n")  # last: marks a finished bundle


def build_bundle(
    config: BundleConfig,
    out: str | Path,
    progress: Callable | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Copy the checkpoint into ``out``, fit attribution + fusion, write the bundle; returns its report."""
    model, calibrator, card, corpus = load_sources(config)
    det = ProvenanceDetector(model, calibrator, card, rigid=config.rigid_config if config.rigid else None)
    inversion = create_inversion(config, det.device)
    train, val = score_splits(det, corpus, config, inversion, progress)
    for path, reason in train.errors + val.errors:
        log(f"skipped {path}: {reason}")
    fit_branches(det, train, val, config, inversion, log)
    fusion, report = fit_fusion(det, train, val, config)
    watermark = watermark_reference(config)
    write_bundle(Path(out), config, det, fusion, report, watermark)
    return report
