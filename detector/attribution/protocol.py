"""The attribution protocol on a feature file: which rows train, calibrate and test, and what is measured.

Held-out generators (``holdout``) never reach training or threshold fitting: they are the unknowns of
the test split, which is how open-set numbers are honest. Thresholds are fitted on the validation split
only, never on test. Enrolment curves add each held-out generator from n of its vectors and measure how
well the head then names it on other vectors of that generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.attribution.features import FeatureFileError, FeatureSet
from detector.attribution.head import UNKNOWN_SCORES, AttributionHead, HeadConfig
from detector.attribution.metrics import open_set_report
from detector.corpus import REAL_GENERATOR


@dataclass
class AttributionFitConfig:
    """What ``detector attribute fit`` ran with (saved beside the head as YAML)."""

    head: HeadConfig = field(default_factory=HeadConfig)
    holdout: list[str] = field(default_factory=list)  # generators kept out as unknowns
    include_real: bool = False  # attribute "real" as if it were one more generator
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.2  # carved from the rows, per generator, when the file has no splits
    seed: int = 0


@dataclass
class ProtocolSplits:
    train: FeatureSet
    val: FeatureSet
    test: FeatureSet | None
    notes: list[str] = field(default_factory=list)


def _keep(
    features: FeatureSet, generators: set[str] | None = None, drop: set[str] | None = None
) -> FeatureSet:
    gens = features.generators
    mask = np.ones(len(features), bool)
    if generators is not None:
        mask &= np.array([g in generators for g in gens], bool)
    if drop:
        mask &= np.array([g not in drop for g in gens], bool)
    return features.select(mask)


def make_splits(features: FeatureSet, config: AttributionFitConfig) -> ProtocolSplits:
    """Train / validation / test rows for attribution, following the file's split column when it has one."""
    generators = features.require_generators("attribution fit")
    missing = sorted(set(config.holdout) - set(generators))
    if missing:
        raise FeatureFileError(f"held-out generator(s) {missing} do not occur in the feature file")
    drop = set() if config.include_real else {REAL_GENERATOR}
    held = set(config.holdout)
    notes = []
    if features.splits:
        train = _keep(features.split(config.train_split), drop=drop | held)
        val = _keep(features.split(config.val_split), drop=drop | held)
        test = _keep(features.split(config.test_split), drop=drop)
        test = test if len(test) else None
    else:
        rng = np.random.default_rng(config.seed)
        is_val = np.zeros(len(features), bool)
        for name in sorted(set(generators)):
            rows = np.flatnonzero(np.array(generators) == name)
            n_val = int(round(len(rows) * config.val_fraction))
            is_val[rng.choice(rows, n_val, replace=False)] = True
        train = _keep(features.select(~is_val), drop=drop | held)
        val = _keep(features.select(is_val), drop=drop | held)
        test = None
        notes.append(
            f"no split column: validation is a seeded {config.val_fraction:.0%} per generator; no test"
        )
    if len(set(train.generators)) < 2:
        raise FeatureFileError(f"training rows cover {sorted(set(train.generators))}: need two generators")
    if len(val) == 0:
        raise FeatureFileError(f"no validation rows (split {config.val_split!r}) to fit the thresholds on")
    return ProtocolSplits(train, val, test, notes)


def fit_head(
    splits: ProtocolSplits, config: AttributionFitConfig, metadata: dict | None = None
) -> AttributionHead:
    head = AttributionHead(config.head, metadata)
    head.fit(splits.train.features, splits.train.generators)
    head.fit_thresholds(splits.val.features, splits.val.generators)
    return head


def evaluate(head: AttributionHead, features: FeatureSet) -> dict[str, Any]:
    """Closed-set metrics on known rows and open-set metrics for every unknown score.

    Returns ``{"closed": {...}, "scores": {name: {...}}, "y_true", "y_pred"}``; a generator the head does
    not know counts as unknown."""
    y_true = features.require_generators("attribution evaluation")
    preds = head.predict(features.features)
    per_score = {}
    for name in UNKNOWN_SCORES:
        threshold = head.thresholds.get(name)
        rejected = preds.scores[name] > threshold if threshold is not None else None
        per_score[name] = open_set_report(y_true, preds.top1, preds.scores[name], head.classes, rejected)
    first = per_score[UNKNOWN_SCORES[0]]
    closed = {k: first[k] for k in ("n_known", "n_unknown", "closed_set_accuracy", "macro_f1")}
    for report in per_score.values():
        for key in closed:
            report.pop(key, None)
    return {"closed": closed, "scores": per_score, "y_true": list(y_true), "y_pred": preds.labels}


def enrolment_curve(
    head: AttributionHead,
    pool: FeatureSet,
    test: FeatureSet,
    shots: list[int],
    repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy on a new generator vs. the number of enrolment vectors.

    For every generator of ``pool`` that the head does not know, and every n in ``shots``: enrol it from n
    random pool rows, score ``test`` rows (that generator and the known ones), record the accuracy on the
    new generator, on the known ones, and how many of the new generator's rows the head still rejects;
    then remove it again. Averages over ``repeats`` draws."""
    rng = np.random.default_rng(seed)
    rows = []
    state = head.state()
    for name in sorted(set(pool.require_generators("enrolment pool")) - set(head.classes)):
        own = np.flatnonzero(np.array(pool.generators) == name)
        test_gens = np.array(test.require_generators("enrolment test"))
        new_rows = test_gens == name
        known_rows = np.isin(test_gens, head.classes)
        if not new_rows.any():
            continue
        for n in shots:
            if n > len(own):
                continue
            accs, known_accs, rejected = [], [], []
            for _ in range(repeats):
                pick = rng.choice(own, n, replace=False)
                head.enroll(name, pool.features[pick])
                preds = head.predict(test.features)
                top1 = np.array(preds.top1)
                accs.append(float((top1[new_rows] == name).mean()))
                if known_rows.any():
                    known_accs.append(float((top1[known_rows] == test_gens[known_rows]).mean()))
                rejected.append(float(preds.is_unknown[new_rows].mean()))
                head.remove(name)
            rows.append(
                {
                    "generator": name,
                    "shots": n,
                    "new_accuracy": float(np.mean(accs)),
                    "known_accuracy": float(np.mean(known_accs)) if known_accs else float("nan"),
                    "new_rejected": float(np.mean(rejected)),
                    "repeats": repeats,
                }
            )
    _restore(head, state)
    return rows


def _restore(head: AttributionHead, state: tuple[dict, dict]) -> None:
    """Put the head back exactly as it was (enrol + remove refits the linear layer on the same bank, but
    floating-point order can differ; restoring the arrays makes the curve side-effect free)."""
    arrays, meta = state
    for name, value in arrays.items():
        setattr(head, name, value)
    head.classes = list(meta["classes"])
    head.enrolled = list(meta["enrolled"])
