"""Typed configs of ``detector train`` (YAML + ``--set a.b=c`` overrides via :mod:`detector.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MethodName = Literal["linear-probe", "full-finetune", "lora", "effort"]
METHODS: tuple[str, ...] = ("linear-probe", "full-finetune", "lora", "effort")


@dataclass
class ModelConfig:
    backbone: str = "effnet-lite0"
    #: None = the registry's default (the offline ImageNet weights for effnet-lite*, random elsewhere);
    #: "none" forces random init; otherwise an open_clip/timm tag or a local checkpoint file.
    pretrained: str | None = None
    #: Train a generator-classification head jointly (needs generator labels: >= 2 classes in train).
    generator_head: bool = True


@dataclass
class MethodConfig:
    name: MethodName = "effort"
    #: Effort/LoRA targets: preset names (attention, pointwise, mlp, linear), module-name regexes, or
    #: "auto" (attention projections if the backbone has any, else pointwise 1x1 convolutions).
    targets: list[str] = field(default_factory=lambda: ["auto"])
    #: Effort residual rank k (trainable trailing singular triplets per matrix; 1 as published).
    rank: int = 1
    #: Weights of Effort's regularisers (0 = off, as in the authors' public code).
    orth_weight: float = 0.0
    ksv_weight: float = 0.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0


@dataclass
class AugmentConfig:
    """Training augmentations, applied identically to both classes (so none becomes a label shortcut)."""

    enabled: bool = True
    jpeg_p: float = 0.5
    jpeg_quality_min: int = 30
    jpeg_quality_max: int = 100
    #: Resampling augmentations (random *resized* crop, down-and-up resize). Off by default: resampling
    #: smears the high-frequency traces generators leave and pushes a model to content cues; without it
    #: the unseen-family AUC rose from 0.733 to 0.851 and resized test images scored better too
    #: (experiments/unseen_photos). Off, the crop is a plain random crop at the input size.
    resample: bool = False
    #: With ``resample``: smallest crop as a share of the area, and the down-up resize's odds and scale.
    crop_scale_min: float = 0.5
    resize_p: float = 0.3
    resize_scale_min: float = 0.5
    blur_p: float = 0.1
    flip_p: float = 0.5
    color_jitter_p: float = 0.3
    noise_p: float = 0.1


@dataclass
class DataConfig:
    corpus: str = ""
    train_split: str = "train"
    val_split: str = "val"
    #: Input side; None = the backbone's own ``preprocess.image_size``.
    image_size: int | None = None
    batch_size: int = 32
    workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Batch each content-preserving fake with the real crop it was made from (the manifest's
    #: ``source`` column; :mod:`detector.training.pairing`).
    paired: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 10
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    #: Mixed precision (bfloat16 autocast) on GPU; ignored on CPU.
    amp: bool = True
    #: Stop after this many epochs without a better validation AUC (0 = never stop early).
    patience: int = 3
    generator_loss_weight: float = 0.5
    #: Weight of the pair ranking loss (each fake must score above its own source crop; needs
    #: ``data.paired``). 0 = off.
    pair_loss_weight: float = 0.0
    #: Cap on optimizer steps per epoch (None = the whole training split); for smoke runs and tests.
    max_steps_per_epoch: int | None = None


@dataclass
class CalibrationConfig:
    method: Literal["temperature", "isotonic", "none"] = "temperature"
    #: The decision threshold is chosen on validation so that this share of real images is flagged.
    target_fpr: float = 0.05


@dataclass
class WandbConfig:
    #: offline (default: logs under OUT/wandb, sync later if you like), online, or disabled.
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "detector"
    log_images: int = 8


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    out: str = "runs/train"
    seed: int = 0
    #: auto = CUDA (the local rank's GPU) when available, else CPU.
    device: str = "auto"
