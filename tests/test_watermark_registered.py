"""The registered-payload test: a registry's few payloads need less agreement, and the FPR still holds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.watermark import PayloadCodec, Watermarker, WatermarkKey, WatermarkModel, default_checkpoint
from detector.watermark.binding import hash_to_int
from detector.watermark.payload import binomial_pvalue
from detector.watermark.registry import PayloadRegistry

KEY = WatermarkKey(bytes(range(32)))


def _bound_codec() -> PayloadCodec:
    return PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2, content_views=2, doubtful=5)


def _flip(word: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    out = word.copy()
    out[np.random.default_rng(seed).choice(out.size, n, replace=False)] ^= 1
    return out


def test_the_registered_half_corrects_for_twice_the_registered_codewords():
    codec = _bound_codec()
    hashes = codec.bound_candidates  # 2 views x (1 + 5 + 10)
    assert codec.multiplicity(True, registered=100) == 2 * 100 * hashes
    assert codec.multiplicity(False, registered=100) == 2 * 100 * 2**16
    assert codec.p_value(57, registered=100) == pytest.approx(200 * hashes * binomial_pvalue(57, 64))
    # 100 registered payloads instead of 65,536: two fewer matching bits at FPR 1e-6, five with one.
    assert codec.threshold(1e-6) == 59
    assert codec.threshold(1e-6, registered=100) == 57
    assert codec.threshold(1e-6, registered=1) == 54


def test_a_registered_mark_with_more_errors_than_the_any_payload_test_allows_is_found():
    codec = _bound_codec()
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2, 16).astype(np.uint8)
    margins = rng.uniform(0.5, 2.0, 16)
    word = codec.encode(4242, hash_to_int(h))
    weak = _flip(word, 7)  # 57 of 64: below the any-payload threshold (59), at the registered one (57)
    registry = np.array([4242, *rng.choice(2**16, 99, replace=False)])
    plain = codec.decode(weak, fpr=1e-6, content_hash=h, content_margins=margins)
    assert not plain.watermarked and not plain.registered
    found = codec.decode(weak, fpr=1e-6, content_hash=h, content_margins=margins, registered=registry)
    assert found.watermarked and found.registered and found.payload == 4242 and found.matches == 57
    assert found.p_value == pytest.approx(
        2 * len(registry) * codec.bound_candidates * binomial_pvalue(57, 64)
    )
    # The same word when its payload is not registered: the other half, at twice the any-payload p.
    others = registry[1:]
    unregistered = codec.decode(weak, fpr=1e-6, content_hash=h, content_margins=margins, registered=others)
    assert not unregistered.watermarked and not unregistered.registered
    assert unregistered.p_value == pytest.approx(min(1.0, 2 * plain.p_value))
    # An unregistered mark is still found, one bit of agreement later.
    strong = codec.decode(
        _flip(word, 4), fpr=1e-6, content_hash=h, content_margins=margins, registered=others
    )
    assert strong.watermarked and not strong.registered and strong.payload == 4242


def test_the_registered_half_rejects_unmarked_words_at_its_share_of_the_rate():
    """H0 in simulation: fair-coin words, random confidences, one registered payload, no binding. The
    registered half claims a word at level a with probability a / (2 * views): not less (the bound is
    tight for one codeword), not more (it holds)."""
    codec = PayloadCodec(KEY, 64, 16)
    rng = np.random.default_rng(11)
    level, n = 0.2, 800  # 4 sd = 0.04: a correction off by 2x either way (0.05 or 0.2) fails
    hits = 0
    for _ in range(n):
        bits = rng.integers(0, 2, 64).astype(np.uint8)
        decoded = codec.decode(bits, rng.uniform(0.1, 3.0, 64), fpr=level, registered=np.array([7]))
        hits += decoded.registered and decoded.p_value <= level
    expected = level / (2 * codec.content_views)
    assert abs(hits / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_watermarker_reads_the_registry_and_sees_new_registrations(tmp_path):
    from detector.corpus.photos import bundled_photos, load_photos

    ((_, photo),) = load_photos([p for p in bundled_photos() if p.name == "skimage-coffee"])
    image = np.ascontiguousarray(photo[:256, :256])
    registry = PayloadRegistry(tmp_path / "registry.db")
    wm = Watermarker(KEY, model=WatermarkModel.load(default_checkpoint()), registry=registry)
    marked = wm.embed_array(image, 12)
    before = wm.detect_array(marked)
    assert before.status == "watermarked" and "registered_payloads" not in before.extra
    record = wm.register("gen-a", payload_id=12)
    after = wm.detect_array(marked)
    assert after.status == "watermarked" and after.record == record.to_dict()
    assert after.extra["registered_payloads"] == 1 and after.extra["registered_test"] is True
    assert after.p_value < before.p_value
    # The mark subtracted twice reads inverted; the flag describes the inverted word's test.
    removed = np.clip(2 * image.astype(int) - marked.astype(int), 0, 255).astype(np.uint8)
    inverted = wm.detect_array(removed)
    assert inverted.status == "inverted" and inverted.extra["registered_test"] is True


def test_scoring_evidence_never_carries_the_candidate_payload_a_registry_writer_would_need():
    """The attack the registered half opens to someone who can write the registry: read a real photo's
    best candidate payload and register it, so the photo's chance agreement is tested against one
    registered payload (docs/security.md: about 1 real photo in 100 would then pass). The candidate
    takes the key to find: the key holder's `detector watermark detect` prints it, the evidence that
    `detector score` and the service return must not."""
    from dataclasses import asdict

    from detector.corpus.photos import bundled_photos, load_photos
    from detector.scoring.branches import watermark_evidence

    wm = Watermarker(KEY, model=WatermarkModel.load(default_checkpoint()))
    for _, photo in load_photos(bundled_photos()[:3]):
        result = wm.detect_array(np.ascontiguousarray(photo[:192, :192]))
        assert result.status == "absent" and result.extra.get("candidate_payload") is not None
        evidence = asdict(watermark_evidence(result))
        assert evidence["payload"] is None and evidence["record"] is None
        assert "candidate" not in str(evidence)
