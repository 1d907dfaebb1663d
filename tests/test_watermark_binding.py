"""Watermark content binding (copy attack -> forged), inverted marks, geometric synchronisation, verdict."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.fusion import FusionConfig, fuse
from detector.result import FORGED, WATERMARKED, ProvenanceResult, WatermarkEvidence
from detector.watermark import PayloadCodec, Watermarker, WatermarkKey, WatermarkModel, default_checkpoint
from detector.watermark.api import WatermarkError
from detector.watermark.binding import content_hash, hash_to_int

KEY = WatermarkKey(bytes(range(32)))


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    """Two 256x256 crops of held-out photos (the model never saw them)."""
    from detector.corpus.photos import bundled_photos, load_photos

    loaded = dict(
        load_photos([p for p in bundled_photos() if p.name in ("skimage-astronaut", "skimage-coffee")])
    )
    a = np.ascontiguousarray(loaded["skimage-astronaut"][100:356, 150:406])
    b = np.ascontiguousarray(loaded["skimage-coffee"][100:356, 200:456])
    return a, b


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker(KEY, model=WatermarkModel.load(default_checkpoint()))


def _noisy(word: np.ndarray, flips: int, seed: int = 0) -> np.ndarray:
    out = word.copy()
    out[np.random.default_rng(seed).choice(out.size, flips, replace=False)] ^= 1
    return out


def test_bound_codec_reads_payload_and_hash_and_separates_watermarked_from_forged():
    codec = PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2)
    h = np.random.default_rng(1).integers(0, 2, 16).astype(np.uint8)
    word = codec.encode(513, hash_to_int(h))
    own = codec.decode(_noisy(word, 2), fpr=1e-6, content_hash=h)
    assert own.watermarked and not own.forged and own.payload == 513 and own.distance == 0
    near = h.copy()
    near[:2] ^= 1  # within the tolerance: still this image (a benign edit moved two hash bits)
    assert codec.decode(word, fpr=1e-6, content_hash=near).watermarked
    other = 1 - h  # a mark made for other content
    moved = codec.decode(word, fpr=1e-6, content_hash=other)
    assert moved.forged and not moved.watermarked and moved.distance == 16
    # The corrections: every payload times the hashes each claim may accept.
    assert codec.threshold(1e-6, bound=True) == 60 and codec.threshold(1e-6, bound=False) == 62
    assert codec.p_value(62, bound=False) == pytest.approx(
        2**32 * sum(__import__("math").comb(64, i) for i in range(62, 65)) / 2**64
    )
    # A weak forged mark (61 matches) is below the any-hash threshold: neither claim is made.
    weak = codec.decode(_noisy(word, 3, seed=2), fpr=1e-6, content_hash=other)
    assert not weak.watermarked and not weak.forged


def test_only_the_received_hashs_doubtful_bits_may_differ():
    """With ``doubtful=5`` a mark's hash is accepted where it differs from the received hash in at most
    2 of the received hash's 5 least certain bits: a 1-bit difference where the received hash was sure
    is other content (a copied mark), and the test's correction counts 2 * 16 hashes, not 2 * 137."""
    codec = PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2, content_views=2, doubtful=5)
    assert codec.bound_candidates == 2 * (1 + 5 + 10)
    assert codec.multiplicity() * 137 == PayloadCodec(KEY, 64, 16, 16, 2, 2).multiplicity() * 16
    rng = np.random.default_rng(4)
    h = rng.integers(0, 2, 16).astype(np.uint8)
    margins = rng.uniform(0.5, 2.0, 16)
    unsure = np.argsort(margins)[:5]
    word = codec.encode(321, hash_to_int(h))
    near = h.copy()
    near[unsure[[0, 3]]] ^= 1  # an edit flipped two bits the received hash was unsure of
    found = codec.decode(word, fpr=1e-6, content_hash=near, content_margins=margins)
    assert found.watermarked and found.payload == 321 and found.distance == 2
    sure = h.copy()
    sure[np.argmax(margins)] ^= 1  # one bit the received hash is certain of: another picture
    copied = codec.decode(word, fpr=1e-6, content_hash=sure, content_margins=margins)
    assert copied.forged and not copied.watermarked and copied.distance == 1
    views = codec.decode(
        word, content_hash=np.stack([sure, near]), content_margins=np.stack([margins, margins])
    )
    assert views.watermarked  # either view may accept
    with pytest.raises(ValueError, match="content_margins"):
        codec.decode(word, content_hash=near)


def test_marks_made_with_the_v1_hash_still_verify_with_its_scheme(wm, photos, tmp_path):
    """A v1 mark reads `watermarked` with ``scheme="dct-simhash-v1"`` (library and CLI), not with v2."""
    import json

    from typer.testing import CliRunner

    from detector.cli import app
    from detector.watermark.payload import KEY_HEADER

    a, _ = photos
    old = Watermarker(KEY, model=wm.model, scheme="dct-simhash-v1")
    assert old.codec.doubtful == 16 and old.binding_tag == "dct-simhash-v1/16/2of16"
    marked = old.embed_array(a, 55)
    assert old.detect_array(marked).status == "watermarked"
    assert wm.detect_array(marked).status != "watermarked" and wm.binding["scheme"] == "dct-simhash-v2"
    with pytest.raises(WatermarkError, match="unknown binding scheme"):
        Watermarker(KEY, model=wm.model, scheme="md5")
    key = tmp_path / "wm.key"
    key.write_text(f"{KEY_HEADER}\n{KEY.secret.hex()}\n")
    key.chmod(0o600)
    Image.fromarray(marked).save(tmp_path / "old.png")
    runner = CliRunner()
    base = ["watermark", "detect", str(tmp_path / "old.png"), "-k", str(key)]
    v1 = runner.invoke(app, [*base, "--binding-scheme", "dct-simhash-v1"])
    assert v1.exit_code == 0, v1.output
    line = json.loads(next(x for x in v1.stdout.splitlines() if x.startswith("{")))
    assert line["status"] == "watermarked" and line["payload"] == 55
    bad = runner.invoke(app, [*base, "--binding-scheme", "md5"])
    assert bad.exit_code != 0 and "unknown binding scheme" in bad.output


def test_bound_test_finds_the_best_accepted_codeword_where_rs_and_chase_decoding_cannot():
    """Five wrong bits in five different symbols, read confidently: more than RS (3 symbols) or Chase
    (erasing the least confident) can fix, yet the word agrees with its codeword on 59 of 64 bits. The
    `watermarked` test scores every payload x accepted hash, so it finds it; the words are linear in
    the payload and hash bits, which is what lets one matrix product score them all."""
    codec = PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2, content_views=2, doubtful=5)
    zero, payload_basis, hash_basis = codec._linear_code
    rng = np.random.default_rng(5)
    for _ in range(20):
        p, h = int(rng.integers(0, 2**16)), int(rng.integers(0, 2**16))
        pb, hb = (np.array([(v >> j) & 1 for j in range(16)]) for v in (p, h))
        assert np.array_equal(codec.encode(p, h), zero ^ (pb @ payload_basis) % 2 ^ (hb @ hash_basis) % 2)
    h = rng.integers(0, 2, 16).astype(np.uint8)
    margins = rng.uniform(0.5, 2.0, 16)
    word = codec.encode(4242, hash_to_int(h))
    embedded_symbol = np.empty(64, int)
    embedded_symbol[codec.perm] = np.arange(64) // 4  # the RS symbol each embedded bit belongs to
    wrong = [int(np.flatnonzero(embedded_symbol == s)[0]) for s in range(10, 15)]  # never erased first
    noisy = word.copy()
    noisy[wrong] ^= 1
    confidence = np.ones(64)
    assert (noisy == word).sum() == 59
    assert codec.decode(noisy, confidence, 1e-6, None).payload != 4242  # the any-hash (Chase) decoding
    found = codec.decode(noisy, confidence, 1e-6, np.stack([h, h]), np.stack([margins, margins]))
    assert found.watermarked and found.payload == 4242 and found.distance == 0 and found.matches == 59


def test_random_words_never_make_either_claim():
    codec = PayloadCodec(KEY, 64, 16, content_bits=16)
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2, 16).astype(np.uint8)
    for _ in range(200):
        d = codec.decode(rng.integers(0, 2, 64).astype(np.uint8), fpr=1e-6, content_hash=h)
        assert not d.watermarked and not d.forged


def test_content_hash_survives_benign_edits_and_separates_photos(photos):
    a, b = photos
    ha = content_hash(a, KEY, 16)
    small = np.asarray(Image.fromarray(a).resize((160, 120), Image.Resampling.LANCZOS))
    for edited in (np.ascontiguousarray(a[:, ::-1]), small, np.clip(a * 1.2, 0, 255).astype(np.uint8)):
        assert int((content_hash(edited, KEY, 16) != ha).sum()) <= 2
    assert int((content_hash(b, KEY, 16) != ha).sum()) > 2
    assert not np.array_equal(content_hash(a, WatermarkKey(b"\x01" * 32), 16), ha)  # keyed


def test_copied_mark_is_forged_subtracted_mark_is_inverted(wm, photos):
    a, b = photos
    marked = wm.embed_array(a, 777)
    assert wm.detect_array(marked).status == "watermarked"
    mark = marked.astype(np.float32) - a.astype(np.float32)  # the attacker's best possible estimate
    forged = np.clip(b + mark + 0.5, 0, 255).astype(np.uint8)
    result = wm.detect_array(forged)
    assert result.status == "forged" and not result.watermarked and result.content_distance > 2
    removed = np.clip(marked - 2.5 * mark + 0.5, 0, 255).astype(np.uint8)
    result = wm.detect_array(removed)
    assert result.status == "inverted" and not result.watermarked and result.bit_accuracy < 0.1
    assert wm.detect_array(b).status == "absent"


@pytest.mark.parametrize("edit", ["hflip", "resize1.3", "resize1.4", "rotate15"])
def test_synchronised_search_reads_resized_rotated_and_mirrored_marks(wm, photos, edit):
    a, _ = photos
    marked = Image.fromarray(wm.embed_array(a, 4321))
    attacked = {
        "hflip": marked.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "resize1.3": marked.resize((333, 333), Image.Resampling.LANCZOS),
        "resize1.4": marked.resize((358, 358), Image.Resampling.LANCZOS),  # the sync once took a harmonic
        "rotate15": marked.rotate(15, resample=Image.Resampling.BICUBIC),
    }[edit]
    result = wm.detect_array(np.asarray(attacked))
    assert result.status == "watermarked" and result.payload == 4321


def test_weighted_test_reads_a_jpeg_50_mark_plain_decoding_misses(wm, photos):
    """After JPEG 50 the wrong bits are the doubtful ones and spread over more RS symbols than plain
    decoding fixes: the confidence-weighted test over every accepted codeword declares the mark with
    far stronger evidence than a count of matching bits, and plain RS decoding finds no payload. (The
    embedder's plain mark: a refined one, the default, comes through JPEG 50 with no wrong bit here.)"""
    import io

    from detector.watermark.binding import received_hashes

    _, b = photos
    buffer = io.BytesIO()
    Image.fromarray(wm.embed_array(b, 4321, refine_steps=0)).save(buffer, format="JPEG", quality=50)
    attacked = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    result = wm.detect_array(attacked)
    assert result.status == "watermarked" and result.payload == 4321 and result.matches < 60
    logits, seen = wm.decode(attacked)
    bits = (logits > 0).astype(np.uint8)
    hashes, margins = received_hashes(seen, KEY, 16)
    counted = wm.codec.decode(bits, None, wm.fpr, hashes, margins)
    assert counted.payload == 4321 and counted.p_value > 100 * result.p_value
    assert wm.codec.decode(bits, None, wm.fpr).payload is None  # RS decoding of the word as read


def test_forged_mark_is_never_evidence_of_ai():
    cfg = FusionConfig()
    forged = WatermarkEvidence(detected=True, p_value=1e-9, bit_accuracy=1.0, status="forged")
    result = fuse("x.png", {"clip": 0.2}, None, cfg, watermark=forged)
    assert result.verdict == FORGED and result.p_ai == pytest.approx(0.2) and not result.watermark.detected
    inverted = WatermarkEvidence(detected=False, p_value=1e-9, bit_accuracy=0.0, status="inverted")
    assert fuse("x.png", {"clip": 0.9}, None, cfg, watermark=inverted).verdict == FORGED
    bound = WatermarkEvidence(detected=True, p_value=1e-9, bit_accuracy=1.0, status="watermarked")
    assert fuse("x.png", {"clip": 0.2}, None, cfg, watermark=bound).verdict == WATERMARKED
    back = ProvenanceResult.from_json(result.to_json())
    assert back.verdict == FORGED and back.watermark.status == "forged"
    assert result.to_row()["watermark.status"] == "forged"


def test_registry_records_the_binding_and_upgrades_an_old_registry(tmp_path, wm):
    import sqlite3

    from detector.watermark import PayloadRegistry

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a registry made before content binding
        conn.execute(
            "CREATE TABLE payloads (key_id TEXT NOT NULL, payload_id INTEGER NOT NULL, generator TEXT NOT NULL,"
            " model_version TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, content_hash TEXT,"
            " PRIMARY KEY (key_id, payload_id))"
        )
        conn.execute("INSERT INTO payloads VALUES ('k', 0, 'old-gen', '', '2024-01-01', NULL)")
    with PayloadRegistry(path) as reg:
        assert reg.lookup("k", 0).binding is None
        bound = Watermarker(KEY, model=wm.model, registry=reg)
        record = bound.register("new-gen")
        assert record.binding == "dct-simhash-v2/16/2of5" == reg.lookup(KEY.key_id, record.payload_id).binding


def test_large_image_is_hashed_whole_not_by_its_decoding_window(wm, photos):
    a, _ = photos
    big = np.asarray(Image.fromarray(a).resize((1100, 1100), Image.Resampling.BILINEAR))
    marked = wm.embed_array(big, 99)
    result = wm.detect_array(marked)
    assert result.status == "watermarked" and result.content_distance == 0
