"""Diffusion models for inversion, from any source, behind one small interface.

Sources (:func:`load_diffusion_model`):

- a local diffusers folder: a pipeline saved with ``save_pretrained`` (``model_index.json`` with
  ``unet/``, ``scheduler/`` and optionally ``vae/``, ``text_encoder/``, ``tokenizer/``), or a single
  UNet folder (``config.json`` + weights) with ``scheduler_config.json`` beside it. The project's own
  small DDPM from the benchmark zoo is such a folder; it is what runs offline.
- a Hugging Face hub id such as ``runwayml/stable-diffusion-v1-5`` (needs the network): the same
  component-by-component ``from_pretrained`` path, so a Stable Diffusion pipeline works unchanged.
- modules already in memory: ``DiffusionModel(unet=..., scheduler_config=..., vae=...)``.

Pixel-space models (``UNet2DModel``) work on images scaled to [-1, 1]; latent models encode with the
VAE (``AutoencoderKL`` posterior mean or ``AutoencoderTiny``), times its scaling factor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.backbones.base import state_dict_hash
from detector.errors import DetectorError


class InversionError(DetectorError, ValueError):
    """A diffusion model or inversion setting cannot be used: not a diffusers folder, bad mode or steps."""


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class DiffusionModel:
    """A denoiser plus what inversion needs around it (scheduler config, optional VAE and text encoder)."""

    unet: nn.Module
    scheduler_config: dict[str, Any]
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    name: str = "diffusion"
    weights_id: str = ""
    conditioning: Tensor | None = None  # fixed encoder_hidden_states (1 x L x D) for conditional UNets
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unet.eval().requires_grad_(False)
        if self.vae is not None:
            self.vae.eval().requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.eval().requires_grad_(False)
        if not self.weights_id:
            parts = [state_dict_hash(self.unet)] + (
                [state_dict_hash(self.vae)] if self.vae is not None else []
            )
            self.weights_id = "modules:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    # -- description ----------------------------------------------------------------------------------
    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along a side (1 for pixel-space models)."""
        if self.vae is None:
            return 1
        config = self.vae.config
        blocks = getattr(config, "encoder_block_out_channels", None) or config.block_out_channels
        return 2 ** (len(blocks) - 1)

    @property
    def image_size(self) -> int:
        """The pixel resolution the denoiser was built for (what images are resized to)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return int(size) * self.vae_scale

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DiffusionModel:
        kwargs = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        for module in (self.unet, self.vae, self.text_encoder):
            if module is not None:
                module.to(**kwargs)
        if self.conditioning is not None:
            self.conditioning = self.conditioning.to(device=device, dtype=dtype or self.conditioning.dtype)
        return self

    # -- computation ----------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """``[0, 1]`` images -> the space the denoiser works in (latents, or pixels in [-1, 1])."""
        x = images.to(self.device, self.dtype) * 2 - 1
        if self.vae is None:
            return x
        out = self.vae.encode(x)
        if hasattr(out, "latent_dist"):
            z = out.latent_dist.mean
        else:  # AutoencoderTiny
            z = out.latents
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (z - shift) * getattr(config, "scaling_factor", 1.0)

    def decode(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`encode`: back to ``[0, 1]`` images (not clamped: maps may overshoot)."""
        if self.vae is None:
            return (z.float() + 1) / 2
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        x = self.vae.decode(z / getattr(config, "scaling_factor", 1.0) + shift).sample
        return (x.float() + 1) / 2

    def encoder_states(self, batch: int, prompt: str = "") -> Tensor | None:
        """Conditioning for cross-attention UNets: the fixed tensor, the text encoder's embedding of
        ``prompt`` (empty = unconditional), or zeros when the model has neither."""
        dim = getattr(self.unet.config, "cross_attention_dim", None)
        if dim is None or not _takes_encoder_states(self.unet):
            return None
        if self.conditioning is not None:
            states = self.conditioning
        elif self.text_encoder is not None and self.tokenizer is not None:
            tokens = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            states = self.text_encoder(tokens)[0]
        else:
            states = torch.zeros(1, 1, int(dim))
        return states.to(self.device, self.dtype).expand(batch, -1, -1)

    def predict(self, z: Tensor, timestep: int | Tensor, states: Tensor | None) -> Tensor:
        """The denoiser's raw output (epsilon, v or sample, per the scheduler's ``prediction_type``)."""
        t = torch.as_tensor(timestep, device=z.device)
        if states is not None:
            return self.unet(z, t, encoder_hidden_states=states).sample
        return self.unet(z, t).sample


def _takes_encoder_states(unet: nn.Module) -> bool:
    import inspect

    return "encoder_hidden_states" in inspect.signature(unet.forward).parameters


def _folder_weights_id(folder: Path) -> str:
    """Hash of every weight and config file in a diffusers folder (names, sizes and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix in _WEIGHT_SUFFIXES or path.suffix == ".json":
            digest.update(path.relative_to(folder).as_posix().encode())
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return "folder:" + digest.hexdigest()[:16]


def _model_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        import transformers

        cls = getattr(transformers, name, None)
    if cls is None:
        raise InversionError(f"unknown component class {name!r}")
    return cls


def load_diffusion_model(
    source: str | Path | DiffusionModel,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    vae: str | Path | nn.Module | None = None,
    revision: str | None = None,
) -> DiffusionModel:
    """Load a diffusion model from a local diffusers folder or a hub id (see the module docstring).

    ``vae`` swaps in another autoencoder (e.g. a TAESD ``AutoencoderTiny`` folder for speed).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(source, DiffusionModel):
        model = source
    else:
        model = _load(str(source), revision)
    if vae is not None:
        if isinstance(vae, nn.Module):
            model.vae = vae.eval().requires_grad_(False)
        else:
            model.vae = _load_autoencoder(str(vae), revision)
        model.weights_id += (
            "+vae:"
            + (
                _folder_weights_id(Path(vae))
                if isinstance(vae, (str, Path)) and Path(vae).is_dir()
                else str(vae)
            )[:40]
        )
    return model.to(device=device, dtype=dtype)


def _load_autoencoder(source: str, revision: str | None) -> nn.Module:
    import diffusers

    config = diffusers.AutoencoderKL.load_config(source, revision=revision)
    cls = _model_class(config.get("_class_name", "AutoencoderKL"))
    return cls.from_pretrained(source, revision=revision).eval().requires_grad_(False)


def _load(source: str, revision: str | None) -> DiffusionModel:
    import diffusers

    folder = Path(source)
    local = folder.is_dir()
    if local and not (folder / "model_index.json").exists() and (folder / "unet" / "config.json").exists():
        return _load_component_folders(folder)
    if local and not (folder / "model_index.json").exists():
        if not (folder / "config.json").exists():
            raise InversionError(
                f"{folder}: not a diffusers folder (no model_index.json, no unet/config.json, "
                "and no config.json of a UNet)"
            )
        config = json.loads((folder / "config.json").read_text())
        unet = _model_class(config.get("_class_name", "UNet2DModel")).from_pretrained(folder)
        scheduler_path = folder / "scheduler_config.json"
        if not scheduler_path.exists():
            raise InversionError(f"{folder}: a UNet folder needs scheduler_config.json beside config.json")
        scheduler = json.loads(scheduler_path.read_text())
        return DiffusionModel(unet, scheduler, name=folder.name, weights_id=_folder_weights_id(folder))
    if not local and Path(source).suffix in _WEIGHT_SUFFIXES:
        raise InversionError(f"{source}: not found (expected a diffusers folder or a hub id)")
    try:
        index = diffusers.DiffusionPipeline.load_config(source, revision=revision)
    except Exception as exc:  # hub errors, missing files: one clear message
        raise InversionError(
            f"{source}: cannot read model_index.json ({type(exc).__name__}: {exc}); expected a local diffusers "
            "folder or a hub id reachable over the network"
        ) from None
    if "unet" not in index:
        raise InversionError(f"{source}: the pipeline has no unet component (components: {sorted(index)})")

    def component(name: str):
        entry = index.get(name)
        if not entry or entry[1] is None:
            return None
        cls = _model_class(entry[1])
        return cls.from_pretrained(source, subfolder=name, revision=revision)

    unet = component("unet")
    scheduler = dict(diffusers.DDIMScheduler.load_config(source, subfolder="scheduler", revision=revision))
    vae = component("vae")
    text_encoder = component("text_encoder")
    tokenizer = component("tokenizer")
    weights_id = _folder_weights_id(folder) if local else f"hub:{source}@{revision or 'main'}"
    name = folder.name if local else source
    return DiffusionModel(unet, scheduler, vae, text_encoder, tokenizer, name=name, weights_id=weights_id)


def _load_component_folders(folder: Path) -> DiffusionModel:
    """``unet/`` and ``scheduler/`` (and optionally ``vae/``) saved one by one with ``save_pretrained``,
    without a pipeline's ``model_index.json`` (the benchmark zoo's DDPM layout)."""

    def load(name: str):
        config = json.loads((folder / name / "config.json").read_text())
        return _model_class(config["_class_name"]).from_pretrained(folder / name)

    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_path.exists():
        raise InversionError(f"{folder}: unet/ found but no scheduler/scheduler_config.json")
    vae = load("vae") if (folder / "vae" / "config.json").exists() else None
    return DiffusionModel(
        load("unet"),
        json.loads(scheduler_path.read_text()),
        vae=vae,
        name=folder.name,
        weights_id=_folder_weights_id(folder),
    )
