"""Scoring images at scale: the branch pipeline and the streaming, resumable writer behind `detector score`."""

from detector.scoring.branches import (
    attribution_branch,
    backbone_features,
    watermark_branch,
    watermark_evidence,
)
from detector.scoring.pipeline import Batch, BranchError, Pipeline
from detector.scoring.stream import (
    FORMATS,
    ResultWriter,
    ScoreSummary,
    ScoringError,
    count_inputs,
    distributed_shard,
    expand_inputs,
    merge_outputs,
    score_distributed,
    score_stream,
    shard_path,
)

__all__ = [
    "FORMATS",
    "Batch",
    "BranchError",
    "Pipeline",
    "ResultWriter",
    "ScoreSummary",
    "ScoringError",
    "attribution_branch",
    "backbone_features",
    "count_inputs",
    "distributed_shard",
    "expand_inputs",
    "merge_outputs",
    "score_distributed",
    "score_stream",
    "shard_path",
    "watermark_branch",
    "watermark_evidence",
]
