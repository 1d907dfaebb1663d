"""Family ``vqar``: a patch tokenizer plus an autoregressive token sampler (no neural decoder).

Unlike every other family, nothing here is a convolutional network. A codebook of ``p`` x ``p``
colour patches is learnt by k-means on the pool; each crop becomes a grid of tokens; an
autoregressive model P(token | left token, upper token) is estimated by counting (with back-off to
P(token | left) and the unigram), and images are sampled token by token in raster order, then
decoded by pasting codebook patches. The trace is a patch grid and a limited palette of patches:
``vqar-p8`` (8 px patches, 64 codes) and ``vqar-p4`` (4 px patches, 128 codes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from detector.corpus.zoo.base import GeneratorSpec, ModelSpec, torch_generator

FAMILY = "vqar"
MODELS = [
    ModelSpec("vqar-p8", FAMILY, {"patch": 8, "codes": 64, "iters": 12, "samples": 20000}, steps=12),
    ModelSpec("vqar-p4", FAMILY, {"patch": 4, "codes": 128, "iters": 12, "samples": 30000}, steps=12),
]
GENERATORS = [
    GeneratorSpec("vqar-p8", FAMILY, "vqar-p8", conditional=False, description="8 px patch tokens, 64 codes"),
    GeneratorSpec(
        "vqar-p4", FAMILY, "vqar-p4", conditional=False, description="4 px patch tokens, 128 codes"
    ),
]


def _tokens_grid(images: torch.Tensor, patch: int) -> torch.Tensor:
    """N x 3 x H x W -> N x (H/p) x (W/p) x (3 p p) patch vectors."""
    n, c, h, w = images.shape
    x = images[:, :, : h - h % patch, : w - w % patch]
    x = x.unfold(2, patch, patch).unfold(3, patch, patch)  # N, C, gh, gw, p, p
    return x.permute(0, 2, 3, 1, 4, 5).reshape(n, x.shape[2], x.shape[3], c * patch * patch)


def _assign(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(vectors, codebook).argmin(dim=1)


def train(spec: ModelSpec, pool: torch.Tensor, seed: int, steps: int, folder: Path, progress=None) -> None:
    """k-means (``steps`` Lloyd iterations) for the codebook, then count-based context statistics."""
    cfg = spec.config
    patch, k = cfg["patch"], cfg["codes"]
    gen = torch_generator(seed, spec.name, "data")
    grids = _tokens_grid(pool, patch)
    vectors = grids.reshape(-1, grids.shape[-1])
    sample = vectors[torch.randperm(vectors.shape[0], generator=gen)[: cfg["samples"]]]
    codebook = sample[torch.randperm(sample.shape[0], generator=gen)[:k]].clone()
    for _ in range(steps):
        assign = _assign(sample, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        empty = counts.squeeze(1) == 0
        codebook = torch.where(empty.unsqueeze(1), codebook, sums / counts.clamp(min=1))
        if progress:
            progress(1)
    tokens = torch.cat([_assign(chunk, codebook) for chunk in vectors.split(65536)]).reshape(grids.shape[:3])
    border = k
    left = torch.cat([torch.full_like(tokens[:, :, :1], border), tokens[:, :, :-1]], dim=2)
    top = torch.cat([torch.full_like(tokens[:, :1, :], border), tokens[:, :-1, :]], dim=1)
    table = torch.zeros((k + 1) * (k + 1) * k)
    table.index_add_(0, ((left * (k + 1) + top) * k + tokens).flatten(), torch.ones(tokens.numel()))
    table = table.reshape(k + 1, k + 1, k)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"codebook": codebook.contiguous(), "counts": table.contiguous()}, str(folder / "model.safetensors")
    )
    (folder / "card.json").write_text(json.dumps({"config": dict(cfg)}) + "\n")


def load(spec: ModelSpec, folder: Path) -> dict:
    tensors = load_file(str(folder / "model.safetensors"))
    counts = tensors["counts"]
    unigram = (counts.sum(dim=(0, 1)) + 1) / (counts.sum() + counts.shape[-1])
    left = counts.sum(dim=1)
    p_left = (left + unigram) / (left.sum(dim=1, keepdim=True) + 1)
    probs = (counts + 2.0 * p_left[:, None, :]) / (counts.sum(dim=2, keepdim=True) + 2.0)
    return {"codebook": tensors["codebook"], "probs": probs, "patch": spec.config["patch"]}


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources, seed_parts: tuple, size: int) -> torch.Tensor:
    gen = torch_generator(*seed_parts)
    patch, codebook, probs = model["patch"], model["codebook"], model["probs"]
    k = codebook.shape[0]
    side = -(-size // patch)
    tokens = torch.full((n, side + 1, side + 1), k, dtype=torch.long)  # row/col 0: the border token
    for r in range(1, side + 1):
        for c in range(1, side + 1):
            p = probs[tokens[:, r, c - 1], tokens[:, r - 1, c]]
            tokens[:, r, c] = torch.multinomial(p, 1, generator=gen).squeeze(1)
    patches = codebook[tokens[:, 1:, 1:]].reshape(n, side, side, 3, patch, patch)
    images = patches.permute(0, 3, 1, 4, 2, 5).reshape(n, 3, side * patch, side * patch)
    return images[..., :size, :size].clamp(-1, 1)
