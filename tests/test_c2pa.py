"""Content Credentials: sign (through `detector watermark embed --c2pa-cert/--c2pa-key`), score, tamper,
strip; and the verdict rule (valid + AI declared moves the verdict; untrusted, invalid and absent do not)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("c2pa")
from detector.bundle import ProvenanceDetector  # noqa: E402
from detector.cli import app  # noqa: E402
from detector.credentials import (  # noqa: E402
    TRAINED_ALGORITHMIC_MEDIA,
    CredentialsReader,
    CredentialsSigner,
    make_test_certificates,
)
from detector.fusion import FusionConfig  # noqa: E402
from detector.fusion.verdict import decide  # noqa: E402
from detector.result import C2PAEvidence  # noqa: E402
from detector.watermark import Watermarker, generate_key  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from detector.corpus.photos import bundled_photos, load_photos

    [(_, image)] = load_photos([p for p in bundled_photos() if p.name == "skimage-astronaut"])
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.ascontiguousarray(image[100:356, 150:406])).save(path)
    return path


def scorer(bundle: Path, trust: Path | None, key: Path | None = None, registry: Path | None = None):
    detector = ProvenanceDetector.load(bundle, c2pa_trust=trust)
    if key is not None:
        detector.watermarker = Watermarker(key, registry=registry, search="fast")
    return detector


def flip_jpeg_pixel_byte(data: bytes) -> bytes:
    """Flip the low bit of one byte of entropy-coded image data (after the start-of-scan header).

    The segments are walked from SOI: searching for the SOS marker's bytes could land inside the signed
    manifest (APP11), whose signature and hashes differ from run to run."""
    pos = 2
    while data[pos + 1] != 0xDA:
        assert data[pos] == 0xFF, f"not a JPEG marker at {pos}"
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    start = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    out = bytearray(data)
    for i in range(start + (len(data) - start) // 2, len(data) - 2):
        if out[i - 1] != 0xFF and out[i] not in (0x00, 0xFE, 0xFF):
            out[i] ^= 0x01
            return bytes(out)
    raise AssertionError("no byte to flip")


def flip_png_pixel_byte(data: bytes) -> bytes:
    """Change one pixel byte of a PNG (decompress IDAT, flip, recompress, fix the CRC): a valid PNG whose
    pixels differ from the signed ones by one byte."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    raw = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    raw[len(raw) // 2] ^= 0x01
    out, written = [data[:8]], False
    for kind, body in chunks:
        if kind == b"IDAT":
            if written:
                continue
            kind, body, written = b"IDAT", zlib.compress(bytes(raw), 9), True
        out.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_signed_watermarked_image_round_trip(tiny_bundle, certs, photo, tmp_path, suffix):
    key, registry = tmp_path / "wm.key", tmp_path / "registry.db"
    generate_key(key)
    out = tmp_path / f"signed{suffix}"
    embed = runner.invoke(
        app,
        [
            "watermark", "embed", str(photo), str(out), "--key-file", str(key), "--generator", "gen-x",
            "--registry", str(registry), "--c2pa-cert", str(certs["chain"]), "--c2pa-key", str(certs["key"]),
        ],
    )  # fmt: skip
    assert embed.exit_code == 0, embed.output
    assert "with Content Credentials" in embed.output
    detector = scorer(tiny_bundle, certs["root"], key, registry)

    signed = detector.score(out)
    assert signed.ok and signed.c2pa.present and signed.c2pa.state == "valid"
    assert signed.c2pa.digital_source_type == TRAINED_ALGORITHMIC_MEDIA and signed.c2pa.ai_declared
    assert signed.c2pa.signer == "detector test signer" and signed.c2pa.claim_generator.startswith("detector")
    payload = signed.watermark.payload
    assert signed.c2pa.soft_binding.endswith(f":{detector.watermarker.key.key_id}:{payload}")
    assert signed.verdict == "watermarked" and signed.generator == "gen-x"
    # the same file without our root as a trust anchor: intact, but its signer is not trusted here
    assert scorer(tiny_bundle, None).score(out).c2pa.state == "untrusted"

    tampered = tmp_path / f"tampered{suffix}"
    flip = flip_jpeg_pixel_byte if suffix == ".jpg" else flip_png_pixel_byte
    tampered.write_bytes(flip(out.read_bytes()))
    result = detector.score(tampered)
    assert result.ok, result.error
    assert result.c2pa.present and result.c2pa.state == "invalid" and result.c2pa.tampered
    assert any("mismatch" in code for code in result.c2pa.failures)

    resaved = tmp_path / f"resaved{suffix}"
    Image.open(out).save(resaved, quality=95)  # a plain re-save drops the manifest
    stripped = detector.score(resaved)
    assert stripped.c2pa.present is False
    assert stripped.verdict == "watermarked" and stripped.watermark.generator == "gen-x"
    assert stripped.watermark.record["payload_id"] == int(payload)  # durable: the registry record is found


def test_valid_ai_manifest_moves_the_verdict_untrusted_and_invalid_do_not(tiny_bundle, certs, tmp_path):
    buffer = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
    plain = tmp_path / "plain.png"
    plain.write_bytes(buffer.getvalue())
    signed = tmp_path / "signed.png"
    signed.write_bytes(CredentialsSigner(certs["chain"], certs["key"]).sign_bytes(buffer.getvalue(), "x"))

    base = scorer(tiny_bundle, None).score(plain)
    untrusted = scorer(tiny_bundle, None).score(signed)
    trusted = scorer(tiny_bundle, certs["root"]).score(signed)
    assert base.c2pa.present is False and untrusted.c2pa.state == "untrusted"
    assert (untrusted.verdict, untrusted.p_ai) == (base.verdict, pytest.approx(base.p_ai, abs=1e-6))
    assert trusted.verdict == "ai-generated" and trusted.p_ai > 0.999 > base.p_ai

    config = FusionConfig()
    ai = {"present": True, "ai_declared": True, "digital_source_type": TRAINED_ALGORITHMIC_MEDIA}
    assert decide(0.1, None, config, C2PAEvidence(state="invalid", **ai)) == (0.1, "real")
    assert decide(0.1, None, config, C2PAEvidence(present=False)) == (0.1, "real")
    p, verdict = decide(None, None, config, C2PAEvidence(state="valid", **ai))
    assert verdict == "ai-generated" and p > 0.999
    camera = C2PAEvidence(
        present=True,
        state="valid",
        digital_source_type="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture",
    )
    assert decide(0.8, None, config, camera) == (0.8, "ai-generated")  # a camera claim proves nothing either


def test_c2pa_cli_reads_and_makes_certs_and_result_round_trips(certs, tmp_path):
    made = runner.invoke(app, ["c2pa", "make-test-certs", str(tmp_path / "c")])
    assert made.exit_code == 0 and (tmp_path / "c" / "key.pem").stat().st_mode & 0o077 == 0
    again = runner.invoke(app, ["c2pa", "make-test-certs", str(tmp_path / "c")])
    assert again.exit_code == 2 and "already exists" in again.output
    image = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    image.write_bytes(CredentialsSigner(certs["chain"], certs["key"]).sign_bytes(image.read_bytes(), "x"))
    read = runner.invoke(app, ["c2pa", "read", str(image), "--trust", str(certs["root"])])
    assert read.exit_code == 0, read.output
    line = json.loads(read.stdout)
    assert line["state"] == "valid" and line["ai_declared"] is True
    broken = CredentialsReader().read_bytes(b"GIF89a" + b"\0" * 20)
    assert broken is None or (broken.present is False and broken.error)
    bad = runner.invoke(app, ["watermark", "embed", str(image), str(tmp_path / "o.jpg"), "-k", "k", "-p", "1",
                              "--c2pa-cert", str(certs["chain"])])  # fmt: skip
    assert bad.exit_code == 2 and "go together" in bad.output
