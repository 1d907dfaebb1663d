"""Evaluation of trained detectors: metrics under a perturbation grid, seen vs unseen generators."""

from detector.evaluation.evaluate import EvalConfig, evaluate
from detector.evaluation.perturbations import GRID, perturbation

__all__ = ["GRID", "EvalConfig", "evaluate", "perturbation"]
