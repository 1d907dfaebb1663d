"""Watermark: keyed payload and its test, key files, registry, model I/O, shipped model round trip, CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.io import ImageLoadError
from detector.watermark import (
    KeyFileError,
    PayloadCodec,
    PayloadRegistry,
    RegistryError,
    Watermarker,
    WatermarkError,
    WatermarkModel,
    WatermarkModelConfig,
    default_checkpoint,
    generate_key,
    load_key,
)
from detector.watermark.binding import hash_to_int
from detector.watermark.distortions import JPEG, RoundTrip, codec_layer, evaluation_grid
from detector.watermark.payload import binomial_pvalue

runner = CliRunner()


@pytest.fixture
def keys(tmp_path):
    return generate_key(tmp_path / "a.key"), generate_key(tmp_path / "b.key")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 256x256 crop of a held-out natural photo (the model was never trained on it)."""
    from detector.corpus.photos import bundled_photos, load_photos

    [(_, image)] = load_photos([p for p in bundled_photos() if p.name == "skimage-astronaut"])
    return np.ascontiguousarray(image[100:356, 150:406])


@pytest.fixture(scope="module")
def shipped():
    path = default_checkpoint()
    assert path.is_file(), f"the shipped watermark checkpoint is missing: {path}"
    return WatermarkModel.load(path)


# -- payload ------------------------------------------------------------------------------------------
def test_binomial_pvalue_exact():
    assert binomial_pvalue(64, 64) == 2.0**-64
    assert binomial_pvalue(0, 64) == 1.0
    assert abs(binomial_pvalue(33, 64) - 0.4503) < 1e-3


def test_payload_round_trip_corrects_errors_and_needs_the_key(keys):
    codec, other = PayloadCodec(keys[0]), PayloadCodec(keys[1])
    assert codec.threshold(1e-6) == 58  # 2**16 * P(Bin(64, 1/2) >= 58) <= 1e-6
    rng = np.random.default_rng(0)
    for payload in (0, 1, 4242, 65535):
        word = codec.encode(payload)
        clean = codec.decode(word)
        assert clean.payload == payload and clean.watermarked and clean.matches == 64
        noisy = word.copy()
        noisy[rng.choice(64, 5, replace=False)] ^= 1
        decoded = codec.decode(noisy)
        assert decoded.payload == payload and decoded.matches == 59 and decoded.watermarked
        assert not other.decode(word).watermarked  # the other key cannot read it
    with pytest.raises(ValueError, match="payload must be"):
        codec.encode(65536)


def test_random_words_are_not_declared_watermarked(keys):
    """Fast FPR check: 400 random words (with random confidences) -> no detection at FPR 1e-6."""
    codec = PayloadCodec(keys[0])
    rng = np.random.default_rng(1)
    hits = sum(codec.decode(rng.integers(0, 2, 64), rng.random(64)).watermarked for _ in range(400))
    assert hits == 0


def test_weighted_tail_is_exact():
    from detector.watermark.payload import _signed_sum_tail

    unit = _signed_sum_tail(np.ones(64, dtype=np.int64))
    for k in (32, 40, 58, 60, 64):  # unit weights: score 2k - n is the binomial count test
        assert unit[(2 * k - 64) + 64] == pytest.approx(binomial_pvalue(k, 64), rel=1e-9)
    weights = np.array([1, 2, 3, 5, 8])  # small enough to enumerate every sign pattern
    signs = np.array(np.meshgrid(*[[-1, 1]] * 5)).reshape(5, -1).T
    sums = signs @ weights
    tail = _signed_sum_tail(weights)
    for s in range(-19, 20):
        assert tail[s + 19] == pytest.approx((sums >= s).mean())


def test_soft_test_credits_doubtful_errors_and_not_confident_ones(keys):
    """Seven wrong bits fail the count test (57 < 58). Where the decoder doubted exactly those bits the
    weighted test declares the mark; where it was sure of them it does not."""
    codec = PayloadCodec(keys[0])
    word = codec.encode(4242)
    wrong = np.random.default_rng(3).choice(64, 7, replace=False)
    noisy = word.copy()
    noisy[wrong] ^= 1
    assert not codec.decode(noisy).watermarked
    doubtful = np.full(64, 4.0)
    doubtful[wrong] = 0.3
    soft = codec.decode(noisy, doubtful)
    assert soft.watermarked and soft.payload == 4242 and soft.matches == 57 and soft.score > 0.9
    sure = np.full(64, 0.3)
    sure[wrong] = 4.0
    assert not codec.decode(noisy, sure).watermarked


def test_chase_decoding_finds_words_beyond_plain_correction(keys):
    """Five wrong symbols, more than plain decoding fixes with the bound layout's 7 parity symbols (3),
    are found by erasing the symbols the decoder doubted (Chase decoding: what proposes candidates
    when no content hash is given; with one, every accepted codeword is scored as well)."""
    codec = PayloadCodec(keys[0], content_bits=16)
    h = np.random.default_rng(5).integers(0, 2, 16).astype(np.uint8)
    word = codec._unscramble(codec.encode(777, hash_to_int(h)))
    wrong = [sym * 4 for sym in (0, 3, 6, 9, 12)]  # one bit in each of five symbols
    word[wrong] ^= 1
    noisy = codec._scramble(word)
    assert codec.decode(noisy).payload != 777
    confidence = np.full(64, 3.0)
    confidence[codec.perm[wrong]] = 0.1  # the decoder's doubts, in embedded order
    assert codec.decode(noisy, confidence).payload == 777
    found = codec.decode(noisy, confidence, content_hash=h)
    assert found.payload == 777 and found.watermarked and found.matches == 59


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "malformed"),
        (b"detector-watermark-key-v1\nzz11\n", "hex"),
        (b"detector-watermark-key-v1\n0011\n", "too short"),
        (b"something else\n" + b"00" * 32, "first line"),
        (b"\xff\xfe\x00binary", "binary"),
    ],
)
def test_malformed_key_files_give_clear_errors(tmp_path, content, reason):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=reason):
        load_key(path)


def test_key_file_missing_and_no_overwrite(tmp_path):
    with pytest.raises(KeyFileError, match="no such key file"):
        load_key(tmp_path / "nope.key")
    key = generate_key(tmp_path / "k.key")
    assert load_key(tmp_path / "k.key").secret == key.secret
    assert key.secret.hex() not in repr(key)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(tmp_path / "k.key")


# -- registry -----------------------------------------------------------------------------------------
def test_registry_round_trip(tmp_path):
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    with PayloadRegistry(url) as reg:
        a = reg.register("key1", "sd-1.5", "v1", content_hash="abc")
        b = reg.register("key1", "flux", "2")
        c = reg.register("key2", "sd-1.5")
        assert (a.payload_id, b.payload_id, c.payload_id) == (0, 1, 0)
        with pytest.raises(RegistryError, match="already registered"):
            reg.register("key1", "x", payload_id=1)
    with PayloadRegistry(tmp_path / "reg.db") as reg:  # a plain path works too; data persisted
        assert reg.lookup("key1", 0) == a
        assert reg.lookup("key1", 7) is None
        assert [r.payload_id for r in reg.records("key1")] == [0, 1]
        assert reg.check()


def _writer(args):
    path, worker = args
    with PayloadRegistry(path) as reg:
        return [reg.register("k", f"gen{worker}", str(i)).payload_id for i in range(10)]


def test_registry_concurrent_writers_do_not_collide(tmp_path):
    path = str(tmp_path / "reg.db")
    with mp.get_context("fork").Pool(4) as pool:
        ids = [i for chunk in pool.map(_writer, [(path, w) for w in range(4)]) for i in chunk]
    assert sorted(ids) == list(range(40))
    with PayloadRegistry(path) as reg:
        assert reg.check() and len(reg.records("k")) == 40


def test_registry_rejects_a_non_database(tmp_path):
    bad = tmp_path / "reg.db"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(RegistryError):
        PayloadRegistry(bad)


# -- model and distortions ----------------------------------------------------------------------------
def test_model_any_size_psnr_and_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = WatermarkModel(WatermarkModelConfig(n_bits=16, feature_channels=2, decode_width=8)).eval()
    bits = torch.randint(0, 2, (1, 16))
    for h, w in ((37, 53), (64, 64), (9, 130)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            y = model.embedder(x, bits, 40.0)
            assert y.shape == x.shape
            assert model.decoder(y).shape == (1, 16)
            psnr = -10 * torch.log10(((y - x) ** 2).mean())
        assert 39.0 < float(psnr) < 41.5  # clamping can only lower the residual
    model.save(tmp_path / "m.safetensors", extra={"note": "test"})
    loaded = WatermarkModel.load(tmp_path / "m.safetensors")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.decoder(x), loaded.decoder(x))
    assert WatermarkModel.read_extra(tmp_path / "m.safetensors") == {"note": "test"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="safetensors"):
        WatermarkModel.load(tmp_path / "bad.safetensors")


def test_distortions_shapes_and_straight_through_jpeg():
    x = torch.rand(2, 3, 64, 80)
    for name, attack in evaluation_grid().items():
        y = attack(x, random.Random(0))
        assert y.shape[:2] == (2, 3) and y.min() >= 0 and y.max() <= 1, name
    x.requires_grad_(True)
    JPEG((50, 50))(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_luma_share_puts_that_share_of_the_energy_in_grey_and_keeps_the_psnr(share):
    torch.manual_seed(0)
    model = WatermarkModel(WatermarkModelConfig(n_bits=16, luma_share=share)).eval()
    x, bits = torch.rand(2, 3, 96, 80), torch.randint(0, 2, (2, 16))
    with torch.no_grad():
        r = model.embedder.residual(x, bits, 40.0)
    grey = r.mean(dim=1, keepdim=True).expand_as(r)
    energy = r.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(grey.pow(2).mean(dim=(1, 2, 3)) / energy, torch.full((2,), share), atol=1e-4)
    assert torch.allclose(
        (r - grey).pow(2).mean(dim=(1, 2, 3)) / energy, torch.full((2,), 1 - share), atol=1e-4
    )
    assert torch.allclose(-10 * torch.log10(energy), torch.full((2,), 40.0), atol=1e-3)
    # the default (0) leaves the carriers free: a random model's residual is mostly not grey
    with torch.no_grad():
        free = WatermarkModel(WatermarkModelConfig(n_bits=16)).embedder.residual(x, bits, 40.0)
    assert float(free.mean(dim=1).pow(2).mean() / free.pow(2).mean()) < 0.6


def test_roundtrip_keeps_the_size_loses_detail_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 80, requires_grad=True)
    y = RoundTrip(JPEG((50, 50)), factor=(0.5, 0.5))(x, random.Random(0))
    assert y.shape == x.shape
    assert float((y - x).detach().abs().mean()) > 0.05  # noise does not survive a 0.5x resize and JPEG 50
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_codec_layer_ramps_its_codecs_and_is_unchanged_at_full_strength():
    def qualities(layer):
        return [getattr(c, "quality", None) for c in layer.choices]

    full, weak = codec_layer(), codec_layer(progress=0.0)
    assert (30, 90) in qualities(full) and (90, 90) in qualities(weak)
    assert sum(full.weights) == 13.5  # the decoder fine-tuning's layer (ft1) is what it was
    with_roundtrip = codec_layer(roundtrip=3.0)
    assert sum(isinstance(c, RoundTrip) for c in with_roundtrip.choices) == 2
    assert sum(with_roundtrip.weights) == 16.5


# -- the shipped model, end to end --------------------------------------------------------------------
def test_shipped_model_round_trip_clean_and_other_key(shipped, keys, photo):
    wm = Watermarker(keys[0], model=shipped)
    marked = wm.embed_array(photo, 31337)
    psnr = 10 * np.log10(255.0**2 / np.mean((marked.astype(float) - photo) ** 2))
    assert psnr > 39.5
    found = wm.detect_array(marked)
    assert found.watermarked and found.payload == 31337 and found.p_value <= 1e-6
    assert found.bit_accuracy >= 58 / 64
    assert set(found.to_dict()) >= {"bits", "bit_accuracy", "p_value", "watermarked", "payload", "record"}
    assert not wm.detect_array(photo).watermarked  # clean image
    other = Watermarker(keys[1], model=shipped).embed_array(photo, 31337)
    result = wm.detect_array(other)  # marked with another key
    assert not result.watermarked and result.payload is None


@pytest.mark.parametrize("degrees", [5.0, -3.5])
def test_rotated_watermark_is_detected_and_a_rotated_clean_image_is_not(shipped, keys, photo, degrees):
    from detector.watermark.distortions import Quantize, Rotate, from_uint8, to_uint8

    wm = Watermarker(keys[0], model=shipped)
    rotate = Rotate((abs(degrees), abs(degrees)), random_sign=False)

    def turn(image):
        image = image if degrees > 0 else np.ascontiguousarray(image[:, ::-1])
        out = to_uint8(Quantize()(rotate(from_uint8(image).unsqueeze(0)))[0])
        return out if degrees > 0 else np.ascontiguousarray(out[:, ::-1])  # mirrored: the other sign

    found = wm.detect_array(turn(wm.embed_array(photo, 4242)))
    assert found.watermarked and found.payload == 4242
    assert not wm.detect_array(turn(photo)).watermarked


def test_rotation_search_is_key_independent_and_early_stop_keeps_the_answer(shipped, keys, photo):
    """The search picks its hypothesis from the image alone (so the keyed test needs no correction for
    it), and stopping at a decisive candidate gives the bits the full search gives on a marked image."""
    a, b = Watermarker(keys[0], model=shipped), Watermarker(keys[1], model=shipped)
    marked = a.embed_array(photo, 99)
    assert np.array_equal(a.decode_logits(marked), b.decode_logits(marked))
    assert np.array_equal(a.decode_logits(photo), b.decode_logits(photo))
    x = torch.from_numpy(marked).permute(2, 0, 1).float().div(255).unsqueeze(0)
    dec = shipped.decoder
    with torch.no_grad():
        full = dec(x, shipped.search_factors, angles=shipped.search_angles)
        early = dec(x, shipped.search_factors, angles=shipped.search_angles, stop_confidence=4.0)
        plain = dec(x, shipped.search_factors)
    assert torch.equal(full > 0, early > 0) and torch.equal(full > 0, plain > 0)
    assert 0.0 in shipped.search_angles and max(shipped.search_angles) >= 5.0


def test_rotate_map_is_a_rotation():
    from detector.watermark.model import rotate_map

    feats = torch.zeros(1, 1, 33, 49)
    feats[0, 0, 16, 34] = 1.0  # 10 cells right of the centre
    turned = rotate_map(feats, [90.0, 0.0])
    assert turned.shape == (2, 1, 33, 49)
    assert torch.allclose(turned[1], feats[0], atol=1e-5)
    y, x = divmod(int(turned[0, 0].argmax()), 49)
    assert abs(x - 24) <= 1 and abs(abs(y - 16) - 10) <= 1  # moved onto the vertical through the centre


def test_corrupt_image_and_overwrite(shipped, keys, tmp_path, photo):
    wm = Watermarker(keys[0], model=shipped)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageLoadError):
        wm.detect_file(bad)
    src = tmp_path / "in.png"
    Image.fromarray(photo).save(src)
    out = wm.embed_file(src, tmp_path / "out.png", 7)
    with pytest.raises(WatermarkError, match="already exists"):
        wm.embed_file(src, out, 7)
    wm.embed_file(src, out, 8, overwrite=True)
    assert wm.detect_file(out).payload == 8


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_keygen_embed_detect(tmp_path, photo):
    key = tmp_path / "k.key"
    assert runner.invoke(app, ["watermark", "keygen", str(key)]).exit_code == 0
    assert runner.invoke(app, ["watermark", "keygen", str(key)]).exit_code == 2  # refuses to overwrite
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo).save(src / "a.jpg", quality=95)
    Image.fromarray(photo[:200, :180]).save(src / "b.png")
    (src / "broken.png").write_bytes(b"garbage")
    reg = tmp_path / "reg.db"
    res = runner.invoke(
        app,
        [
            "watermark",
            "embed",
            str(src),
            str(tmp_path / "out"),
            "-k",
            str(key),
            "--generator",
            "gen-x",
            "--model-version",
            "3",
            "--registry",
            str(reg),
        ],
    )
    assert res.exit_code == 1, res.output  # the broken file is skipped, named, and fails the exit code
    assert "broken.png" in res.output
    assert (tmp_path / "out" / "a.jpg").is_file() and (tmp_path / "out" / "b.png").is_file()
    again = runner.invoke(
        app,
        [
            "watermark",
            "embed",
            str(src / "a.jpg"),
            str(tmp_path / "out" / "a.jpg"),
            "-k",
            str(key),
            "-p",
            "5",
        ],
    )
    assert again.exit_code == 2 and "already exists" in again.output
    res = runner.invoke(
        app,
        [
            "watermark",
            "detect",
            str(tmp_path / "out"),
            str(src / "a.jpg"),
            "-k",
            str(key),
            "--registry",
            str(reg),
        ],
    )
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    by_name = {
        line["path"].split("/")[-1] + ("@out" if "/out/" in line["path"] else ""): line for line in lines
    }
    assert by_name["a.jpg@out"]["watermarked"] and by_name["a.jpg@out"]["payload"] == 0
    assert by_name["a.jpg@out"]["record"]["generator"] == "gen-x"
    assert by_name["b.png@out"]["watermarked"]
    assert not by_name["a.jpg"]["watermarked"]


def test_cli_bad_key_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    res = runner.invoke(app, ["watermark", "detect", str(img), "-k", str(bad)])
    assert res.exit_code == 2 and "malformed key file" in res.output and "Traceback" not in res.output


@pytest.mark.slow  # a training run (14 s): the fast tier keeps its 2-minute budget
def test_cli_train_tiny_run_resumes_and_exports(tmp_path):
    run = tmp_path / "run"
    args = [
        "watermark",
        "train",
        str(run),
        "--set",
        "steps=2",
        "--set",
        "patch=64",
        "--set",
        "batch_size=2",
        "--set",
        "wandb=false",
        "--set",
        "eval_every=2",
        "--set",
        "save_every=1",
        "--set",
        "model.decode_width=8",
        "--export",
        str(tmp_path / "exp"),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    model = WatermarkModel.load(tmp_path / "exp" / "model.safetensors")
    assert model.cfg.decode_width == 8
    assert (run / "log.jsonl").read_text().count("\n") == 1
    res = runner.invoke(app, args[:-2])  # resumes from state.pt: already at its last step
    assert res.exit_code == 0 and "resumed at step 2" in res.output


def test_fast_search_reads_a_plain_mark_and_refuses_unknown_profiles(keys, photo, shipped):
    """The fast profile (native grid, no rotation) still finds an unattacked mark and keeps a clean image
    clean; an unknown profile is a clear error."""
    from detector.watermark.api import WatermarkError

    fast = Watermarker(keys[0], model=shipped, search="fast")
    marked = fast.embed_array(photo, 1234)
    found = fast.detect_array(marked)
    assert found.watermarked and found.payload == 1234
    assert not fast.detect_array(photo).watermarked
    with pytest.raises(WatermarkError, match="search"):
        Watermarker(keys[0], model=shipped, search="quick")


def test_cli_decoder_only_run_keeps_the_embedder_bit_identical(tmp_path):
    """--freeze-embedder trains the decoder alone (real codecs, grey crops, a held-out band): every
    embedder weight of the exported model equals the init's bit for bit, and the decoder did move."""
    init = tmp_path / "init.safetensors"
    WatermarkModel(WatermarkModelConfig(decode_width=8)).save(init)
    args = ["watermark", "train", str(tmp_path / "run"), "--init-from", str(init), "--freeze-embedder"]
    for override in (
        "steps=2",
        "patch=64",
        "batch_size=2",
        "wandb=false",
        "eval_every=2",
        "model.decode_width=8",
        "codecs=true",
        "grey=0.5",
        "val_band=0.3",
        "photos=[skimage-chelsea]",
    ):
        args += ["--set", override]
    res = runner.invoke(app, [*args, "--export", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    before = WatermarkModel.load(init).state_dict()
    after = WatermarkModel.load(tmp_path / "exp" / "model.safetensors").state_dict()
    embedder = [k for k in before if k.startswith("embedder.")]
    assert embedder and all(torch.equal(before[k], after[k]) for k in embedder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    res = runner.invoke(app, ["watermark", "train", str(tmp_path / "bad"), "--freeze-embedder"])
    assert res.exit_code != 0 and "init" in res.output
