"""Training the watermark on crops of the bundled real photos, on CPU, resumably.

Every step: random crops of the training photos (random rescale, flip), random messages, embed at the
curriculum's PSNR, pass through the curriculum's distortion layer, decode, binary cross-entropy on the
bits. Imperceptibility is enforced by construction (the embedder rescales its residual to the target
PSNR), so the only loss is message recovery. Photos named in ``holdout`` are never seen: they are the
evaluation set of the benchmark. ``run_dir/state.pt`` (weights + optimiser, loaded with
``weights_only=True``) makes the run resumable; ``run_dir/log.jsonl`` and wandb (offline by default)
record it; the final model is written as safetensors.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.watermark.distortions import JPEG, Crop, Quantize, codec_layer, training_layer
from detector.watermark.model import WatermarkModel, WatermarkModelConfig


class WatermarkTrainError(DetectorError, ValueError):
    """Watermark training cannot start or resume as configured (no photos, another run's state)."""


#: Photos kept out of training: the watermark benchmark and the FPR check evaluate on these.
DEFAULT_HOLDOUT = (
    "skimage-astronaut",
    "skimage-coffee",
    "sklearn-china",
    "matplotlib-grace_hopper",
    "libjxl-cvo9xd_keong_macan",
)
#: The photos the shipped checkpoint was trained on (the 14 photos the package bundled then, less
#: ``DEFAULT_HOLDOUT``; see its model card). Every other catalogued photo is unseen by it.
CHECKPOINT_TRAINED_ON = (
    "skimage-chelsea",
    "skimage-rocket",
    "skimage-stereo_motorcycle",
    "skimage-hubble_deep_field",
    "sklearn-flower",
    "libjxl-flower",
    "libjxl-hdr_room",
    "libjxl-tmshre_riaphotographs",
    "libjxl-u76c0g_bliznaca",
)


@dataclass
class WatermarkTrainConfig:
    model: WatermarkModelConfig = field(default_factory=WatermarkModelConfig)
    steps: int = 1800
    batch_size: int = 16
    patch: int = 192
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    holdout: list[str] = field(default_factory=lambda: list(DEFAULT_HOLDOUT))
    psnr_start: float = 37.0  # curriculum: train at low PSNR first, reach model.target_psnr at psnr_ramp
    psnr_ramp: float = 0.3
    distortion_start: float = 0.06  # fraction of steps with only quantisation, then ramp to full strength
    distortion_ramp: float = 0.55
    eval_every: int = 100
    save_every: int = 100
    threads: int = 1
    init: str = ""  # start from these weights (a state.pt or model.safetensors), e.g. a shorter run's
    wandb: bool = True
    # Decoder fine-tuning (needs ``init``): the embedder's weights stay bit-identical, so marks already
    # made with the ``init`` checkpoint still decode. Marks are made at ``model.target_psnr`` and the
    # distortion layer is at full strength from the first step (no curriculum: the decoder is trained),
    # unless ``decoder_curriculum`` keeps the curriculum (PSNR and distortion ramps, aligned start) for a
    # decoder learning new carriers.
    freeze_embedder: bool = False
    decoder_curriculum: bool = False
    photos: list[str] = field(default_factory=list)  # train on these photos only ([]: all but holdout)
    val_band: float = 0.0  # >0: the right band of each photo (this fraction of its width) is held out
    grey: float = 0.0  # probability that a training crop is turned greyscale (luma in all channels)
    codecs: bool = False  # add real WebP / JPEG 30-90 / non-local means to the layer (codec_layer)
    resample: float = 0.0  # with codecs: weight of the sync's resampling of resized images (of 13.5)
    roundtrip: float = 0.0  # with codecs: weight of resize + JPEG/WebP + mapping back (RoundTrip)


class PhotoCrops:
    """Random square crops from a few photos at several scales (pyramid precomputed once)."""

    def __init__(self, photos: list[tuple[str, np.ndarray]], patch: int, seed: int, grey: float = 0.0):
        from PIL import Image

        self.patch = patch
        self.grey = grey
        self.rng = np.random.default_rng(seed)
        self.levels: list[np.ndarray] = []
        for _, image in photos:
            h, w = image.shape[:2]
            for s in (1.0, 0.75, 0.55, 0.4):
                nh, nw = int(h * s), int(w * s)
                if min(nh, nw) < patch:
                    continue
                self.levels.append(np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC)))
        if not self.levels:
            raise WatermarkTrainError(f"no training photo is at least {patch}px on its short side")

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.patch, self.patch, 3), dtype=np.uint8)
        for i in range(n):
            image = self.levels[self.rng.integers(len(self.levels))]
            h, w = image.shape[:2]
            top = self.rng.integers(0, h - self.patch + 1)
            left = self.rng.integers(0, w - self.patch + 1)
            crop = image[top : top + self.patch, left : left + self.patch]
            out[i] = crop[:, ::-1] if self.rng.random() < 0.5 else crop
            if self.grey and self.rng.random() < self.grey:
                out[i] = greyscale(out[i])
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def greyscale(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> the same picture in grey (ITU-R 601 luma in all three channels)."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((luma + 0.5).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def band_split(
    photos: list[tuple[str, np.ndarray]], band: float, min_side: int
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """Each photo cut in two at a column: the left part for training, the right band (``band`` of the
    width, at least ``min_side`` px) for validation, so validation crops share no pixel with training."""
    train, val = [], []
    for name, image in photos:
        w = image.shape[1]
        cut = w - max(min_side, round(band * w))
        if cut < min_side:
            raise WatermarkTrainError(f"{name}: {w}px wide, too narrow to split off a {min_side}px band")
        train.append((name, np.ascontiguousarray(image[:, :cut])))
        val.append((name, np.ascontiguousarray(image[:, cut:])))
    return train, val


def _ramp(step: int, total: int, start: float, length: float) -> float:
    frac = step / max(1, total)
    return min(1.0, max(0.0, (frac - start) / max(1e-9, length)))


def unseen_photos() -> list:
    """The catalogued photos on this machine that the shipped checkpoint never saw (evaluation photos)."""
    from detector.corpus.photos import available_photos

    return [p for p in available_photos() if p.name not in CHECKPOINT_TRAINED_ON]


def split_photos(holdout: list[str], only: list[str] | None = None) -> tuple[list, list]:
    """(training photos, held-out photos); ``only`` restricts training to those names."""
    from detector.corpus.photos import catalogue, load_photos

    photos = load_photos([p for p in catalogue() if p.name in only] if only else None)
    if only:
        missing = set(only) - {name for name, _ in photos}
        if missing:
            raise WatermarkTrainError(f"training photos not on this machine: {sorted(missing)}")
    train = [p for p in photos if p[0] not in holdout]
    held = [p for p in photos if p[0] in holdout]
    return train, held


@torch.no_grad()
def quick_eval(model: WatermarkModel, images: torch.Tensor, psnr: float, seed: int = 123) -> dict[str, float]:
    """Bit accuracy on fixed held-out crops: clean (8-bit), JPEG 50, centre crop to area 0.25."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (images.shape[0], model.cfg.n_bits), generator=gen)
    marked = Quantize()(model.embedder(images, bits, psnr))
    mse = F.mse_loss(marked, images, reduction="none").mean(dim=(1, 2, 3))
    out = {"psnr": float((-10 * torch.log10(mse.clamp_min(1e-12))).mean())}
    rng = random.Random(seed)
    for name, attack in (("none", None), ("jpeg50", JPEG((50, 50))), ("crop0.25", Crop((0.25, 0.25)))):
        attacked = marked if attack is None else attack(marked, rng)
        logits = model.decoder(attacked, model.search_factors)
        out[f"acc_{name}"] = float(((logits > 0).long() == bits).float().mean())
    return out


def train(cfg: WatermarkTrainConfig, run_dir: Path, resume: bool = True, log=print) -> WatermarkModel:
    """Train (or resume) into ``run_dir``; returns the model and writes ``run_dir/model.safetensors``."""
    if cfg.freeze_embedder and not cfg.init:
        raise WatermarkTrainError("freeze_embedder needs init=CHECKPOINT (--init-from: the embedder to keep)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    train_photos, held = split_photos(cfg.holdout, cfg.photos)
    if not train_photos:
        raise WatermarkTrainError("no training photos left after the holdout")
    if cfg.val_band:
        train_photos, held = band_split(train_photos, cfg.val_band, cfg.patch)
    data = PhotoCrops(train_photos, cfg.patch, cfg.seed, cfg.grey)
    val_source = PhotoCrops(held or train_photos, min(256, cfg.patch) if cfg.val_band else 256, cfg.seed + 1)
    val_images = val_source.batch(8)

    model = WatermarkModel(cfg.model)
    if cfg.init:
        if cfg.init.endswith(".safetensors"):
            model.load_state_dict(WatermarkModel.load(cfg.init).state_dict())
        else:
            model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True)["model"])
        log(f"initialised from {cfg.init}")
    if cfg.freeze_embedder:
        model.embedder.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    step = 0
    state_path = run_dir / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if int(state["sched"].get("total_steps", cfg.steps)) != cfg.steps:
            raise WatermarkTrainError(
                f"{state_path} was trained for {state['sched'].get('total_steps')} steps, not {cfg.steps}: "
                "resume with the same steps, or start over (--fresh / init=...)"
            )
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        data.rng = np.random.default_rng(cfg.seed + step)
        log(f"resumed at step {step}")
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    wb = None
    if cfg.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        try:
            import wandb

            wb = wandb.init(
                project="detector-watermark",
                dir=str(run_dir),
                config=asdict(cfg),
                resume="allow",
                id=run_dir.name.replace("/", "_"),
            )
        except Exception as exc:  # logging must never stop training
            log(f"wandb disabled: {exc}")
            wb = None

    rng = random.Random(cfg.seed + step)
    log_file = (run_dir / "log.jsonl").open("a")
    model.train()
    t0, seen = time.time(), 0
    running = []
    while step < cfg.steps:
        psnr_progress = _ramp(step, cfg.steps, 0.0, cfg.psnr_ramp)
        psnr = cfg.psnr_start + (cfg.model.target_psnr - cfg.psnr_start) * psnr_progress
        dist_progress = _ramp(step, cfg.steps, cfg.distortion_start, cfg.distortion_ramp)
        aligned = step < cfg.distortion_start * cfg.steps  # no crops yet: the tile origin is known
        if cfg.freeze_embedder and not cfg.decoder_curriculum:  # a trained decoder: the init's strength,
            psnr, dist_progress, aligned = cfg.model.target_psnr, 1.0, False  # full attacks at once
        if cfg.codecs and not aligned:
            layer = codec_layer(cfg.resample, dist_progress, cfg.roundtrip)
        else:
            layer = training_layer(dist_progress) if not aligned else Quantize()
        x = data.batch(cfg.batch_size)
        bits = torch.randint(0, 2, (cfg.batch_size, cfg.model.n_bits))
        with torch.set_grad_enabled(not cfg.freeze_embedder):
            marked = model.embedder(x, bits, psnr)
        attacked = layer(marked, rng)
        logits = model.decoder(attacked, aligned=aligned)
        loss = F.binary_cross_entropy_with_logits(logits, bits.float())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optim.step()
        sched.step()
        step += 1
        seen += 1
        running.append((loss.item(), ((logits > 0).long() == bits).float().mean().item()))
        if step % cfg.save_every == 0 or step == cfg.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optim": optim.state_dict(),
                    "sched": sched.state_dict(),
                    "step": step,
                },
                tmp,
            )
            os.replace(tmp, state_path)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            metrics = quick_eval(model, val_images, cfg.model.target_psnr)
            model.train()
            losses, accs = zip(*running, strict=True)
            record = {
                "step": step,
                "loss": float(np.mean(losses)),
                "train_acc": float(np.mean(accs)),
                "psnr_train": psnr,
                "distortion": dist_progress,
                "lr": sched.get_last_lr()[0],
                "s_per_step": (time.time() - t0) / max(1, seen),
                **{f"val_{k}": v for k, v in metrics.items()},
            }
            running = []
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if wb is not None:
                wb.log(record, step=step)
    log_file.close()
    model.eval()
    final = quick_eval(model, val_images, cfg.model.target_psnr)
    model.save(
        run_dir / "model.safetensors", extra={"steps": step, "holdout": cfg.holdout, "quick_eval": final}
    )
    if wb is not None:
        wb.finish()
    return model
