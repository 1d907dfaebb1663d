"""Effort: SVD-orthogonal residual adaptation of a pretrained backbone.

Each target weight W = U S V^T is split into a frozen principal part (the top ``rank(W) - k`` triplets)
and a trainable rank-``k`` residual initialised from the trailing triplets, so fine-tuning moves the
weight only in directions the pretrained model uses least. ``merge_effort`` folds the residual back.
"""

from detector.effort.apply import (
    PRESETS,
    EffortTarget,
    apply_effort,
    count_trainable,
    effort_regularisers,
    effort_targets,
    merge_effort,
    select_targets,
)
from detector.effort.residual import EffortResidual, SVDResidual, trailing_svd

__all__ = [
    "PRESETS",
    "EffortResidual",
    "EffortTarget",
    "SVDResidual",
    "apply_effort",
    "count_trainable",
    "effort_regularisers",
    "effort_targets",
    "merge_effort",
    "select_targets",
    "trailing_svd",
]
