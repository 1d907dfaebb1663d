"""A tiny trained bundle (1-epoch linear probe on ``timm:test_efficientnet``, 32 px) built offline in
about 10 s: what the tests and the reliability experiments score with when the real bundle is not at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_rgb(path: Path, size=(32, 24), seed=0, fmt=None) -> Path:
    """A random-noise RGB picture of ``size`` (width, height), saved in ``fmt`` (default: by extension)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def build_tiny_bundle(root: Path) -> Path:
    """A corpus of 3 generators, a 1-epoch linear probe on timm:test_efficientnet, and its bundle."""
    import torch

    from detector.bundle import BundleConfig, build_bundle
    from detector.config import load_config
    from detector.corpus import SplitConfig, assign_splits, records_from_folder, write_manifest
    from detector.training import TrainConfig, train

    corpus = root / "corpus"
    for i in range(16):
        write_rgb(corpus / "real" / f"photo{i // 2}_crop{i % 2}.png", size=(32, 32), seed=i)
    for g, gen in enumerate(["gen_a", "gen_b", "gen_c"]):
        for i in range(8):
            write_rgb(corpus / "fake" / gen / f"{gen}{i}.png", size=(32, 32), seed=100 + 10 * g + i)
    records = records_from_folder(corpus, group_regex=r"^(.+?)_crop")
    assign_splits(records, SplitConfig(seed=0, train=0.5, val=0.3, test=0.2))
    manifest = write_manifest(records, corpus / "manifest.csv", corpus)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    overrides = [
        f"data.corpus={manifest}",
        f"out={root / 'run'}",
        "method.name=linear-probe",
        "model.backbone=timm:test_efficientnet",
        "data.image_size=32",
        "data.batch_size=8",
        "optim.epochs=1",
        "wandb.mode=disabled",
    ]
    train(load_config(TrainConfig, None, overrides))
    config = load_config(
        BundleConfig,
        None,
        [f"checkpoint={root / 'run'}", f"corpus={manifest}", "fusion.min_rows=5", "rigid=false"],
    )
    build_bundle(config, root / "bundle")
    torch.set_num_threads(before)
    return root / "bundle"
