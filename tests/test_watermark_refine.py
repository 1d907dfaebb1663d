"""Attack-aware embedding: same PSNR, same decoder and test, a mark that survives JPEG on a grey photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.watermark import Watermarker, WatermarkKey, WatermarkModel, default_checkpoint
from detector.watermark.refine import jpeg_proxy, refine_residual

KEY = WatermarkKey(bytes(range(32)))


@pytest.fixture(scope="module")
def grey_photo() -> np.ndarray:
    """A 192x192 crop of a photo the checkpoint never saw, made grey: all of its mark must be luma."""
    from detector.corpus.photos import bundled_photos, load_photos

    (_, image), *_ = load_photos([p for p in bundled_photos() if p.name == "skimage-coffee"])
    crop = Image.fromarray(np.ascontiguousarray(image[100:292, 200:392]))
    return np.asarray(crop.convert("L").convert("RGB"))


@pytest.fixture(scope="module")
def model() -> WatermarkModel:
    return WatermarkModel.load(default_checkpoint())


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_jpeg_proxy_is_close_to_the_real_codec(grey_photo):
    real = _jpeg(grey_photo, 50).astype(np.float32)
    x = torch.from_numpy(grey_photo.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    proxy = jpeg_proxy(x, 50)[0].permute(1, 2, 0).numpy() * 255
    moved = np.sqrt(np.mean((real - grey_photo) ** 2))
    assert moved > 1.0  # the codec did change the picture
    assert np.sqrt(np.mean((proxy - real) ** 2)) < 0.5 * moved


def test_zero_steps_is_the_embedders_plain_mark(model, grey_photo):
    x = torch.from_numpy(grey_photo.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    bits = torch.randint(0, 2, (1, model.cfg.n_bits))
    plain = model.embedder.residual(x, bits)
    assert torch.equal(refine_residual(model, x, bits, steps=0), plain)


def test_refined_mark_keeps_psnr_and_payload_and_survives_jpeg_better(model, grey_photo):
    plain_wm = Watermarker(KEY, model=model)  # the default: the plain mark
    refined_wm = Watermarker(KEY, model=model, refine_steps=30)  # 15 (chosen) gets 1.6x confidence here
    assert plain_wm.refine_steps == 0
    plain = plain_wm.embed_array(grey_photo, 4242)
    refined = refined_wm.embed_array(grey_photo, 4242)
    assert abs(_psnr(refined, grey_photo) - _psnr(plain, grey_photo)) < 0.2  # the same strength
    assert not np.array_equal(refined, plain)
    found = refined_wm.detect_array(refined)
    assert found.status == "watermarked" and found.payload == 4242
    # The unchanged decoder reads the refined mark more confidently after a real JPEG 50.
    confidence = [float(np.abs(plain_wm.decode_logits(_jpeg(m, 50))).mean()) for m in (plain, refined)]
    assert confidence[1] > 1.3 * confidence[0]
    assert plain_wm.detect_array(_jpeg(plain, 50)).status != "watermarked"
    assert refined_wm.detect_array(_jpeg(refined, 50)).payload == 4242


def test_negative_steps_are_refused(model):
    from detector.watermark.api import WatermarkError

    with pytest.raises(WatermarkError, match="refine_steps"):
        Watermarker(KEY, model=model, refine_steps=-1)


def test_cli_embeds_a_refined_mark_that_detects(tmp_path, grey_photo):
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    key = tmp_path / "k.key"
    assert runner.invoke(app, ["watermark", "keygen", str(key)]).exit_code == 0
    Image.fromarray(grey_photo).save(tmp_path / "in.png")
    outputs = {}
    for steps in ("0", "15"):
        out = tmp_path / f"out{steps}.png"
        args = ["watermark", "embed", str(tmp_path / "in.png"), str(out), "-k", str(key), "-p", "77"]
        res = runner.invoke(app, [*args, "--refine-steps", steps])
        assert res.exit_code == 0, res.output
        outputs[steps] = np.asarray(Image.open(out).convert("RGB"))
        found = runner.invoke(app, ["watermark", "detect", str(out), "-k", str(key)])
        assert found.exit_code == 0 and '"payload":77,' in found.output, found.output
    assert not np.array_equal(outputs["0"], outputs["15"])
    bad = runner.invoke(
        app,
        [
            "watermark",
            "embed",
            str(tmp_path / "in.png"),
            str(tmp_path / "x.png"),
            "-k",
            str(key),
            "-p",
            "1",
            "--refine-steps",
            "-3",
        ],
    )
    assert bad.exit_code == 2
