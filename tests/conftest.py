"""Shared fixtures: tiny images and tiny corpora written by the tests themselves (offline, fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detector.testing.tinybundle import build_tiny_bundle, write_rgb  # noqa: F401 - shared with experiments


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine (CI has 2 cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def folder_corpus(tmp_path: Path) -> Path:
    """ROOT/real (8 images in 4 groups) + ROOT/fake/gen_a, gen_b (4 each), all 32x32 PNG."""
    root = tmp_path / "corpus"
    for i in range(8):
        write_rgb(root / "real" / f"photo{i // 2}_crop{i % 2}.png", size=(32, 32), seed=i)
    for g, gen in enumerate(["gen_a", "gen_b"]):
        for i in range(4):
            write_rgb(root / "fake" / gen / f"photo{i}_crop{g}.png", size=(32, 32), seed=100 + 10 * g + i)
    return root


def write_tiny_ddpm(folder: Path) -> Path:
    """A randomly initialised 8 x 8 diffusers DDPM pipeline folder (the layout hub models have)."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A 1-epoch linear probe on 3 generators, bundled (shared by the bundle, service and Content
    Credentials tests: built once per session)."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def bundle_with_watermark(bundle: Path, out: Path) -> tuple[Path, Path, Path]:
    """A copy of the tiny bundle that references a watermark key and registry (fast decoder search)."""
    from detector.watermark import generate_key

    shutil.copytree(bundle, out)
    key, registry = out / "wm.key", out / "registry.db"
    generate_key(key)
    meta = json.loads((out / "bundle.json").read_text())
    meta["watermark"] = {"key": "wm.key", "registry": "registry.db", "search": "fast"}
    (out / "bundle.json").write_text(json.dumps(meta))
    return out, key, registry
