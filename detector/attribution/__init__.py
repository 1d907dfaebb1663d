"""Open-set generator attribution: which known generator made an image, or "unknown"; few-shot enrolment."""

from detector.attribution.features import FeatureFileError, FeatureSet, load_features, save_features
from detector.attribution.head import (
    UNKNOWN,
    UNKNOWN_SCORES,
    Attribution,
    AttributionError,
    AttributionHead,
    HeadConfig,
    Predictions,
)
from detector.attribution.metrics import (
    ccr_at_fpr,
    closed_set_accuracy,
    macro_f1,
    open_set_report,
    oscr,
    oscr_curve,
    plot_confusion,
    unknown_auroc,
)

__all__ = [
    "UNKNOWN",
    "UNKNOWN_SCORES",
    "Attribution",
    "AttributionError",
    "AttributionHead",
    "FeatureFileError",
    "FeatureSet",
    "HeadConfig",
    "Predictions",
    "ccr_at_fpr",
    "closed_set_accuracy",
    "load_features",
    "macro_f1",
    "open_set_report",
    "oscr",
    "oscr_curve",
    "plot_confusion",
    "save_features",
    "unknown_auroc",
]
