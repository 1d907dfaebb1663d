"""Evaluation of trained models: metrics under a perturbation grid, seen vs unseen generators, metric tables."""

from detector.evaluation.evaluate import EvalConfig, evaluate
from detector.evaluation.perturbations import GRID, perturbation
from detector.evaluation.tables import METRIC_COLUMNS, per_generator_table, render_markdown, write_csv

__all__ = [
    "GRID",
    "METRIC_COLUMNS",
    "EvalConfig",
    "evaluate",
    "per_generator_table",
    "perturbation",
    "render_markdown",
    "write_csv",
]
