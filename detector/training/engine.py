"""The training loop behind ``detector train``.

One loop for every method: AdamW on the parameters the method leaves trainable, linear warm-up then
cosine decay, gradient clipping, bfloat16 autocast on GPU, validation AUC after every epoch with early
stopping, the training state saved atomically after every epoch (``--resume`` picks it up), then the
best epoch is calibrated on validation, merged into plain weights and written as a checkpoint.
Runs under torchrun (DistributedDataParallel + DistributedSampler) or as a single process.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from detector import __version__
from detector.calibration import Calibrator, fit_calibrator, sigmoid
from detector.config import save_config, to_dict
from detector.corpus import Corpus, load_corpus
from detector.corpus.dataset import CorpusDataset
from detector.errors import DetectorError
from detector.metrics import average_precision, detection_metrics
from detector.training import distributed
from detector.training.augment import eval_transform, train_transform
from detector.training.checkpoint import (
    CheckpointError,
    load_train_state,
    save_checkpoint,
    save_train_state,
    tensors_of,
)
from detector.training.config import TrainConfig
from detector.training.model import (
    MethodState,
    RealFakeModel,
    create_backbone,
    finalize,
    method_regularisers,
    prepare_method,
    set_train_mode,
)
from detector.training.pairing import PairedSampler, pair_ranking_loss
from detector.training.predict import LogitPredictions, autocast, make_loader, predict


@dataclass
class TrainResult:
    """The model card written with the checkpoint, and the trained (merged) model in memory."""

    card: dict[str, Any]
    model: RealFakeModel


class TrainingError(DetectorError, ValueError):
    """The data or config cannot train a detector; the message says why."""


@dataclass
class TrainData:
    corpus: Corpus
    train: Corpus
    val: Corpus
    generators: list[str]


def load_data(config: TrainConfig) -> TrainData:
    if config.optim.pair_loss_weight > 0 and not config.data.paired:
        raise TrainingError(
            "optim.pair_loss_weight needs data.paired=true (the pairs come from paired batches)"
        )
    if not config.data.corpus:
        raise TrainingError("no corpus given: set data.corpus (a folder or a manifest with splits)")
    corpus = load_corpus(config.data.corpus)
    corpus.check_duplicates()  # one file with two labels would teach both answers
    train = corpus.subset(config.data.train_split)
    val = corpus.subset(config.data.val_split)
    if not train.records:
        raise TrainingError(
            f"{config.data.corpus}: no images in split {config.data.train_split!r}; "
            "run `detector corpus split MANIFEST` first"
        )
    labels = {r.label for r in train.records}
    if labels != {"real", "fake"}:
        raise TrainingError(f"the training split needs real and fake images, it has only {sorted(labels)}")
    if not val.records:
        raise TrainingError(f"{config.data.corpus}: no images in split {config.data.val_split!r}")
    return TrainData(corpus, train, val, ["real", *train.generators])


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up to the base LR over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _wandb_run(config: TrainConfig, out: Path, console: Console):
    if config.wandb.mode == "disabled":
        return None
    try:
        import wandb

        return wandb.init(
            project=config.wandb.project,
            mode=config.wandb.mode,
            dir=str(out),
            config=to_dict(config),
            name=out.name,
            reinit=True,
        )
    except Exception as exc:  # wandb is a convenience, never a requirement
        console.print(f"[yellow]wandb disabled: {exc}[/]")
        return None


def _val_score(pred: LogitPredictions) -> tuple[float, dict[str, float]]:
    """(early-stopping score, metrics): validation AUC, or minus the loss when AUC is undefined."""
    probs = sigmoid(pred.logits)
    metrics = detection_metrics(pred.targets, probs).as_dict()
    loss = float(
        F.binary_cross_entropy_with_logits(
            torch.from_numpy(pred.logits), torch.from_numpy(pred.targets).double()
        )
    )
    metrics["loss"] = loss
    score = metrics["auc"] if not math.isnan(metrics["auc"]) else -loss
    return score, metrics


def _compatible(saved: dict, current: dict) -> list[str]:
    keys = ("model", "method")
    return [k for k in keys if saved.get(k) != current.get(k)] + (
        ["data.corpus"]
        if saved.get("data", {}).get("corpus") != current.get("data", {}).get("corpus")
        else []
    )


def train(
    config: TrainConfig, resume: bool = False, console: Console | None = None, show_progress: bool = True
):
    """Train, calibrate and save a detector as configured (rank 0 writes the checkpoint)."""
    console = console or Console(stderr=True)
    info, device = distributed.setup(config.device)
    try:
        return _train(config, resume, console, show_progress and info.is_main, info, device)
    finally:
        distributed.teardown(info)


@dataclass
class _Run:
    """What the training steps share: the config, the process, the model, its optimiser and its data."""

    config: TrainConfig
    out: Path
    info: Any
    device: torch.device
    console: Console
    show_progress: bool
    data: TrainData
    classifier: RealFakeModel
    state: MethodState
    size: int
    sampler: Any = None
    train_loader: Any = None
    val_loader: Any = None
    steps_per_epoch: int = 0
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    model: Any = None  # the classifier, wrapped in DistributedDataParallel under torchrun
    run: Any = None  # the wandb run, if any
    amp: bool = False


def _train(config, resume, console, show_progress, info, device):
    """Build the model and its data, resume if asked, train epoch by epoch, then calibrate and save."""
    r = _setup(config, console, show_progress, info, device)
    saved = _resume_state(r, resume)
    if info.is_main:
        r.out.mkdir(parents=True, exist_ok=True)
        save_config(config, r.out / "config.yaml")
    _make_loaders(r)
    _make_optimizer(r)
    progress: dict[str, Any] = {
        "epoch": 0,
        "best_score": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "history": [],
    }
    best: dict[str, torch.Tensor] | None = None
    if saved is not None:
        r.classifier.load_state_dict(saved["model"])
        r.optimizer.load_state_dict(saved["optimizer"])
        r.scheduler.load_state_dict(saved["scheduler"])
        progress, best = saved["progress"], saved["best"]
        if info.is_main:
            console.print(f"resuming {r.out} after epoch {progress['epoch']}")
    _start(r)
    for epoch in range(progress["epoch"], config.optim.epochs):
        if progress["bad_epochs"] >= config.optim.patience > 0:
            break
        losses, seen, skipped, epoch_time = _train_epoch(r, epoch, first=epoch == progress["epoch"])
        best = _validate_epoch(r, epoch, progress, best, losses, seen, skipped, epoch_time)
        distributed.barrier(info)
    return _finish(r, progress, best)


def _setup(config, console, show_progress, info, device) -> _Run:
    """Seed, then build the model (backbone, heads, the method's trainable parts) on ``device``."""
    data = load_data(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    backbone = create_backbone(config.model)
    generators = data.generators if config.model.generator_head else []
    classifier = RealFakeModel(backbone, generators)
    state: MethodState = prepare_method(classifier, config.method)
    classifier.to(device)
    size = int(config.data.image_size or backbone.preprocess.image_size)
    return _Run(config, Path(config.out), info, device, console, show_progress, data, classifier, state, size)


def _resume_state(r: _Run, resume: bool) -> dict | None:
    """The saved training state to continue from (None: start fresh); refuses a changed config."""
    saved = load_train_state(r.out) if resume else None
    if resume and saved is None and r.info.is_main:
        r.console.print(f"[yellow]--resume: no training state in {r.out}; starting from scratch[/]")
    if saved is not None and (r.out / "config.yaml").is_file():
        import yaml

        mismatch = _compatible(yaml.safe_load((r.out / "config.yaml").read_text()) or {}, to_dict(r.config))
        if mismatch:
            raise CheckpointError(f"cannot resume {r.out}: the config differs in {mismatch}")
    return saved


def _make_loaders(r: _Run) -> None:
    """Augmented, rank-sharded training batches and plain validation batches."""
    config, data = r.config, r.data
    augment = train_transform(config.data.augment, r.size, seed=config.seed * 1000 + r.info.rank)
    train_ds = CorpusDataset(data.train, augment, data.generators)
    val_ds = CorpusDataset(data.val, eval_transform(r.size), data.generators)
    if config.data.paired:
        r.sampler = PairedSampler(data.train.records, r.info.world_size, r.info.rank, config.seed)
    else:
        r.sampler = DistributedSampler(
            train_ds, num_replicas=r.info.world_size, rank=r.info.rank, shuffle=True, seed=config.seed
        )
    # A ragged last batch of one image breaks BatchNorm in training mode: drop it when there is more.
    drop_last = len(r.sampler) > config.data.batch_size
    r.train_loader = make_loader(
        train_ds, config.data.batch_size, config.data.workers, sampler=r.sampler, drop_last=drop_last
    )
    r.val_loader = make_loader(val_ds, config.data.batch_size, config.data.workers)
    r.steps_per_epoch = len(r.train_loader)
    if config.optim.max_steps_per_epoch:
        r.steps_per_epoch = min(r.steps_per_epoch, config.optim.max_steps_per_epoch)


def _make_optimizer(r: _Run) -> None:
    """AdamW over the trainable parameters with linear warm-up and cosine decay."""
    optim = r.config.optim
    total_steps = max(1, r.steps_per_epoch * optim.epochs)
    warmup = max(1, int(round(optim.warmup_epochs * r.steps_per_epoch)))
    r.params = [p for p in r.classifier.parameters() if p.requires_grad]
    r.optimizer = torch.optim.AdamW(r.params, lr=optim.lr, weight_decay=optim.weight_decay)
    r.scheduler = torch.optim.lr_scheduler.LambdaLR(r.optimizer, lr_lambda(total_steps, warmup))


def _start(r: _Run) -> None:
    """Wrap the model for DDP, open the wandb run and say what is trained on what."""
    config, info, device = r.config, r.info, r.device
    r.model = r.classifier
    if info.enabled:
        r.model = DistributedDataParallel(
            r.classifier,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    r.run = _wandb_run(config, r.out, r.console) if info.is_main else None
    r.amp = config.optim.amp and device.type == "cuda"
    if info.is_main:
        r.console.print(
            f"[bold]{config.method.name}[/] on {config.model.backbone} ({r.size}px, {device}, world {info.world_size}): "
            f"{r.state.trainable:,} trainable of {r.state.total:,} parameters; "
            f"train {len(r.data.train)} / val {len(r.data.val)} images"
        )


def _train_epoch(r: _Run, epoch: int, first: bool):
    """One pass over the training batches; returns (losses, images seen, skipped files, seconds)."""
    config, info, device = r.config, r.info, r.device
    r.sampler.set_epoch(epoch)
    set_train_mode(r.classifier, config.method.name)
    started = time.perf_counter()
    losses, seen, skipped = [], 0, []
    bar = _progress(r.console, r.show_progress)
    with bar:
        task = bar.add_task(f"epoch {epoch + 1}/{config.optim.epochs}", total=r.steps_per_epoch)
        for step, batch in enumerate(r.train_loader):
            if step >= r.steps_per_epoch:
                break
            skipped.extend(batch["errors"])
            has_data = torch.tensor(1.0 if "image" in batch else 0.0)
            if info.enabled:  # every rank must take the same steps, or DDP would hang
                dist.all_reduce(has_data, op=dist.ReduceOp.MIN)
            if has_data.item() == 0:
                bar.advance(task)
                continue
            images = batch["image"].to(device, non_blocking=True)
            loss = _step(r, images, batch)
            losses.append(float(loss.detach()))
            seen += len(images)
            if r.run is not None and first and step == 0 and config.wandb.log_images:
                _log_images(r.run, batch, config.wandb.log_images, r.data.generators)
            bar.advance(task)
    return losses, seen, skipped, time.perf_counter() - started


def _step(r: _Run, images: torch.Tensor, batch: dict) -> torch.Tensor:
    """One optimiser step: real/fake loss, the generator loss and the method's regularisers."""
    config, device = r.config, r.device
    target = batch["target"].to(device).float()
    with autocast(device, r.amp):
        outputs = r.model(images)
    loss = F.binary_cross_entropy_with_logits(outputs["logit"].float(), target)
    if "generator_logits" in outputs and config.optim.generator_loss_weight > 0:
        gen_loss = F.cross_entropy(
            outputs["generator_logits"].float(), batch["generator"].to(device), ignore_index=-1
        )
        loss = loss + config.optim.generator_loss_weight * gen_loss
    if config.optim.pair_loss_weight > 0:
        pair_loss = pair_ranking_loss(outputs["logit"].float(), batch["index"], r.sampler.sources)
        if pair_loss is not None:
            loss = loss + config.optim.pair_loss_weight * pair_loss
    reg = method_regularisers(r.state, config.method.orth_weight, config.method.ksv_weight)
    if reg is not None:
        loss = loss + reg
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(r.params, config.optim.grad_clip)
    r.optimizer.step()
    r.scheduler.step()
    return loss


def _validate_epoch(r: _Run, epoch, progress, best, losses, seen, skipped, epoch_time):
    """Score validation, keep the best weights, record the epoch, save the resumable state (rank 0).
    Returns the best weights so far."""
    pred = predict(r.classifier, r.val_loader, r.device, r.amp)
    score, val_metrics = _val_score(pred)
    improved = progress["best_score"] is None or score > progress["best_score"]
    if improved:
        progress.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        best = tensors_of(r.classifier)
    else:
        progress["bad_epochs"] += 1
    record = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "train_images": seen,
        "epoch_seconds": epoch_time,
        "lr": r.scheduler.get_last_lr()[0],
        **{f"val_{k}": v for k, v in val_metrics.items() if k in ("auc", "ap", "loss", "acc_05", "ece")},
    }
    progress["history"].append(record)
    progress["epoch"] = epoch + 1
    if r.info.is_main:
        for _index, reason in skipped[:5]:
            r.console.print(f"[yellow]skipped[/] {reason}")
        r.console.print(
            f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, val AUC {record['val_auc']:.4f}, "
            f"val loss {record['val_loss']:.4f}, {epoch_time:.1f}s"
            + (" [green](best)[/]" if improved else "")
        )
        save_train_state(r.out, r.classifier, r.optimizer, r.scheduler, progress, best if improved else None)
        if r.run is not None:
            r.run.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
    return best


def _finish(r: _Run, progress: dict, best) -> TrainResult:
    """Load the best weights, calibrate on validation, merge the method's parts and save the checkpoint."""
    config, info, console, classifier = r.config, r.info, r.console, r.classifier
    if best is not None:
        classifier.load_state_dict(best)
    pred = predict(classifier, r.val_loader, r.device, r.amp)
    calibrator = _calibrate(config, pred, console if info.is_main else None)
    finalize(classifier, r.state)
    probs = calibrator(pred.logits)
    val_metrics = detection_metrics(pred.targets, probs, calibrator.threshold).as_dict()
    val_metrics["ap"] = average_precision(pred.targets, probs)
    val_metrics.update(ece_before=calibrator.ece_before, ece_after=calibrator.ece_after)
    # The card says how many validation images the metrics stand on, and which could not be read.
    val_metrics["images_scored"] = int(len(pred.targets))
    val_metrics["images_unreadable"] = len(pred.errors)
    if pred.errors and info.is_main:
        console.print(
            f"[yellow]warning:[/] {len(pred.errors)} validation image(s) unreadable; metrics on "
            f"{len(pred.targets)} of {len(r.data.val)}: "
            + "; ".join(reason for _i, reason in pred.errors[:5])
        )
    card = _card(config, classifier, r.state, r.data, r.size, progress, val_metrics, calibrator)
    if info.is_main:
        save_checkpoint(r.out, classifier, config, calibrator, card)
        console.print(
            f"[bold green]saved[/] {r.out}: val AUC {val_metrics['auc']:.4f}, ECE {calibrator.ece_before:.4f} -> "
            f"{calibrator.ece_after:.4f} ({calibrator.method}), threshold {calibrator.threshold:.4g} "
            f"at target FPR {calibrator.target_fpr}"
        )
        if r.run is not None:
            r.run.summary.update({f"final/{k}": v for k, v in val_metrics.items() if isinstance(v, float)})
            r.run.finish()
    distributed.barrier(info)
    return TrainResult(card, classifier)


def _calibrate(config: TrainConfig, pred: LogitPredictions, console: Console | None) -> Calibrator:
    method = config.calibration.method
    both = len(set(pred.targets.tolist())) == 2
    if method == "isotonic" and not both:
        method = "temperature"
        if console:
            console.print(
                "[yellow]isotonic calibration needs both classes in validation; using temperature[/]"
            )
    target_fpr = config.calibration.target_fpr if (pred.targets == 0).any() else None
    return fit_calibrator(pred.logits, pred.targets, method, target_fpr)


def _card(
    config, model: RealFakeModel, state, data: TrainData, size, progress, metrics, calibrator
) -> dict[str, Any]:
    history = progress["history"]
    return {
        "detector_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": config.model.backbone,
        "weights_id": getattr(model.backbone, "weights_id", None),
        "method": config.method.name,
        "targets": state.targets,
        "effort_rank": config.method.rank if config.method.name == "effort" else None,
        "regularisers": {"orth": config.method.orth_weight, "ksv": config.method.ksv_weight},
        "trainable_parameters": state.trainable,
        "total_parameters": state.total,
        "image_size": size,
        # The generator head's classes (empty without one); the checkpoint loader rebuilds the head from it.
        "generators": list(model.generators),
        "data": {
            "corpus": config.data.corpus,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "train_generators": data.train.generators,
        },
        "epochs_run": progress["epoch"],
        "best_epoch": progress["best_epoch"],
        "seconds_per_epoch": float(np.mean([h["epoch_seconds"] for h in history])) if history else None,
        "calibration": {
            "method": calibrator.method,
            "threshold": calibrator.threshold,
            "target_fpr": calibrator.target_fpr,
        },
        "metrics": {f"val_{k}": v for k, v in metrics.items()},
        "history": history,
    }


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _log_images(run, batch, count: int, generators: list[str]) -> None:
    try:
        import wandb

        images = batch["image"][:count]
        run.log(
            {
                "samples": [
                    wandb.Image(img.permute(1, 2, 0).numpy(), caption=generators[int(g)] if g >= 0 else "?")
                    for img, g in zip(images, batch["generator"][:count], strict=True)
                ]
            },
            step=0,
        )
    except Exception as exc:  # a logging failure must not stop training, but it is said
        warnings.warn(f"wandb: could not log sample images ({exc})", RuntimeWarning, stacklevel=2)
