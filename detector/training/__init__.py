"""Training engine: configs, detector model and methods, the loop, checkpoints, prediction."""

from detector.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detector.training.config import (
    AugmentConfig,
    CalibrationConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    WandbConfig,
)
from detector.training.engine import TrainingError, TrainResult, train
from detector.training.model import RealFakeModel, finalize, prepare_method
from detector.training.predict import LogitPredictions, predict

__all__ = [
    "AugmentConfig",
    "CalibrationConfig",
    "CheckpointError",
    "DataConfig",
    "RealFakeModel",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "LogitPredictions",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "WandbConfig",
    "finalize",
    "load_checkpoint",
    "predict",
    "prepare_method",
    "save_checkpoint",
    "train",
]
