"""One data path: training, evaluation, bundle fitting, scoring and feature extraction feed the backbone
the very same tensor for the same file (:mod:`detector.data`).

The tensors are captured where they enter a backbone (a global forward pre-hook), so the test checks what
each real code path does, not what a helper says it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.backbones.base import Backbone
from detector.data import decode, decoded_batches, image_batch, resize_transform

SIZE = 128  # the shipped bundle's input side


@pytest.fixture
def captured():
    """Every ``B x 3 x H x W`` tensor any backbone is called on while the fixture is active, by row."""
    rows: list[torch.Tensor] = []

    def hook(module, args):
        if isinstance(module, Backbone) and args and isinstance(args[0], torch.Tensor):
            rows.extend(args[0].detach().float().cpu().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield rows
    handle.remove()


def _photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth-plus-noise picture (resizing it is not trivial), saved in the extension's format."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    array = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=92) if path.suffix == ".jpg" else Image.fromarray(array).save(
        path
    )
    return path


def _corpus(root: Path) -> tuple[Path, list[Path]]:
    """A split corpus of 10 small images; the two watched files are non-square and not 128 px: a 200 x
    150 JPEG (downscaled) and a 90 x 140 PNG (upscaled on one side), both in the training split."""
    from detector.corpus import records_from_folder, write_manifest

    watched = [
        _photo(root / "real" / "wide_0.jpg", 200, 150, 1),
        _photo(root / "fake/gen_a/tall_0.png", 90, 140, 2),
    ]
    for i in range(1, 4):
        _photo(root / "real" / f"wide_{i}.jpg", 160 + 8 * i, 130, 10 + i)
        _photo(root / "fake/gen_a" / f"tall_{i}.png", 130, 150 + 4 * i, 20 + i)
    for i in range(2):
        _photo(root / "fake/gen_b" / f"sq_{i}.png", 128, 128, 30 + i)
    records = records_from_folder(root)
    for record in records:  # even-numbered files train, odd ones validate
        record.split = "train" if int(Path(record.path).stem.rsplit("_", 1)[1]) % 2 == 0 else "val"
    return write_manifest(records, root / "manifest.csv", root), watched


def _contains(rows: list[torch.Tensor], expected: torch.Tensor) -> bool:
    return any(row.shape == expected.shape and torch.equal(row, expected) for row in rows)


def test_train_eval_bundle_and_score_feed_the_backbone_identical_pixels(tmp_path, captured):
    from detector import load_detector
    from detector.bundle import BundleConfig, build_bundle
    from detector.config import load_config
    from detector.evaluation.evaluate import EvalConfig, evaluate
    from detector.training import TrainConfig, train

    manifest, watched = _corpus(tmp_path / "corpus")
    expected = {path: image_batch([decode(path)], SIZE)[0] for path in watched}
    assert all(t.shape == (3, SIZE, SIZE) for t in expected.values())

    overrides = [
        f"data.corpus={manifest}",
        f"out={tmp_path / 'run'}",
        "method.name=linear-probe",
        "model.backbone=timm:test_efficientnet",
        f"data.image_size={SIZE}",
        "data.batch_size=8",  # one batch: no ragged last batch for the loader to drop
        "data.augment.enabled=false",  # augmentation is random by design; its first step is this resize
        "optim.epochs=1",
        "wandb.mode=disabled",
    ]
    train(load_config(TrainConfig, None, overrides), show_progress=False)
    seen = {"train": list(captured)}
    captured.clear()
    evaluate(
        EvalConfig(
            checkpoint=str(tmp_path / "run"),
            corpus=str(manifest),
            split="all",
            out=str(tmp_path / "eval"),
            perturbations=["clean"],
            device="cpu",
        )
    )
    seen["eval"] = list(captured)
    captured.clear()
    bundle_config = [
        f"checkpoint={tmp_path / 'run'}",
        f"corpus={manifest}",
        "fusion.min_rows=2",
        "rigid=false",
    ]
    build_bundle(load_config(BundleConfig, None, bundle_config), tmp_path / "bundle")
    seen["bundle"] = list(captured)
    captured.clear()

    det = load_detector(tmp_path / "bundle", watermark=False, c2pa=False)
    for path in watched:
        assert det.score(path).ok
    seen["score"] = list(captured)
    captured.clear()
    det.score_files([str(p) for p in watched], tmp_path / "scores.jsonl", batch_size=2)
    seen["score_files"] = list(captured)
    captured.clear()
    assert all(r.ok for r in det.score_many([tmp_path / "corpus"], batch_size=3))
    seen["score_many"] = list(captured)

    for where, rows in seen.items():
        for path, tensor in expected.items():
            assert _contains(rows, tensor), f"{where} did not see {path.name} as the canonical tensor"
    # and the score path saw exactly those two tensors, one forward per image
    assert len(seen["score"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen["score"], expected.values(), strict=True))


@pytest.mark.slow  # decoding and reducing a 12.8 MP picture twice takes seconds
def test_a_photo_above_the_kept_pixels_is_reduced_alike_for_training_and_scoring(tmp_path):
    """Scoring reduces a decoded picture above KEEP_PIXELS (bounded batch memory); training and
    evaluation read the corpus through the same decode, so they see the same reduced picture."""
    from detector.corpus import load_corpus
    from detector.corpus.dataset import CorpusDataset
    from detector.io import KEEP_PIXELS
    from detector.training.augment import eval_transform

    x, y = np.arange(4000, dtype=np.uint8)[None, :], np.arange(3200, dtype=np.uint8)[:, None]
    (tmp_path / "real").mkdir()
    Image.fromarray(np.stack(np.broadcast_arrays(x, y, x ^ y), axis=-1)).save(tmp_path / "real" / "big.jpg")
    assert 4000 * 3200 > KEEP_PIXELS
    picture = decode(tmp_path / "real" / "big.jpg")
    assert picture.size[0] * picture.size[1] <= KEEP_PIXELS
    train_side = CorpusDataset(load_corpus(tmp_path), eval_transform(SIZE))[0]["image"]
    assert torch.equal(train_side, image_batch([picture], SIZE)[0])


def test_feature_extraction_and_attribution_use_the_same_rule_at_the_backbones_size(tmp_path, captured):
    from detector.backbones import create_backbone
    from detector.features import extract_features
    from detector.scoring import Batch, backbone_features

    manifest, watched = _corpus(tmp_path / "corpus")
    backbone = create_backbone("timm:test_efficientnet")
    size = backbone.preprocess.image_size
    expected = [image_batch([decode(path)], size)[0] for path in watched]
    extract_features(manifest, backbone, tmp_path / "cache", batch_size=4)
    extracted = list(captured)
    captured.clear()
    backbone_features(backbone)(Batch([str(p) for p in watched], [decode(p) for p in watched]))
    for tensor in expected:
        assert _contains(extracted, tensor) and _contains(captured, tensor)


def test_the_resize_rule_is_shorter_side_area_then_centre_crop():
    """Pinned by hand so that no change to the one rule goes unnoticed (cache keys name it)."""
    import cv2

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    resized = cv2.resize(array, (171, 128), interpolation=cv2.INTER_AREA)  # 200 * 128 / 150 = 170.7
    left = (171 - 128) // 2
    np.testing.assert_array_equal(resize_transform(128)(image=array)["image"], resized[:, left : left + 128])
    from detector.backbones import create_backbone

    key = create_backbone("timm:test_efficientnet").preprocess.key
    assert key.startswith("shortest-side-resize+center-crop/v1;size=") and key.endswith(";interp=area")


def test_decoded_batches_keep_order_and_report_errors_in_place(tmp_path):
    good = [_photo(tmp_path / f"{i}.png", 20, 18, i) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [str(p) for p in good[:2]] + [str(tmp_path / "bad.png")] + [str(p) for p in good[2:]]
    for workers in (0, 2):
        batches = list(decoded_batches(paths, 4, workers=workers))
        assert [len(chunk) for chunk, _ in batches] == [4, 2]
        flat = [item for _, decoded in batches for item in decoded]
        assert [chunk_path for chunk, _ in batches for chunk_path in chunk] == paths
        assert [type(item).__name__ for item in flat].count("ImageLoadError") == 1
        assert flat[2].path == paths[2] and "not an image" in flat[2].reason
        assert np.array_equal(np.asarray(flat[0]), np.asarray(decode(paths[0])))


def test_service_uploads_are_decoded_like_files(tmp_path):
    from detector.service.uploads import ServiceError, decode_upload

    photo = _photo(tmp_path / "a.jpg", 200, 150, 3)
    upload = decode_upload("a.jpg", photo.read_bytes(), 64_000_000, str(tmp_path))
    assert np.array_equal(np.asarray(upload.image), np.asarray(decode(photo)))
    tiny = _photo(tmp_path / "t.png", 12, 10, 4)  # below the 16 px a scorer needs: refused, as by the CLI
    with pytest.raises(ServiceError, match="too small"):
        decode_upload("t.png", tiny.read_bytes(), 64_000_000, str(tmp_path))
