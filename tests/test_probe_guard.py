"""The probe guard: a picture that carried a copied mark gets no second try at `watermarked`, nor does a
caller past their budget of forged readings; alone and through the service (real marks, real decoder)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detector.fusion import FusionConfig, fuse
from detector.result import FORGED, WATERMARKED, WatermarkEvidence
from detector.service.probes import ProbeGuard, ProbeStateError
from tests.conftest import bundle_with_watermark


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """256 px crops of three bundled photos."""
    from detector.corpus.photos import bundled_photos, load_photos

    names = ("skimage-astronaut", "skimage-coffee", "skimage-chelsea")
    loaded = dict(load_photos([p for p in bundled_photos() if p.name in names]))
    return {name.split("-")[1]: np.ascontiguousarray(loaded[name][60:316, 100:356]) for name in names}


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def evidence(status: str) -> WatermarkEvidence:
    return WatermarkEvidence(detected=status == "watermarked", p_value=1e-12, status=status, payload="7")


def test_the_same_picture_matches_after_benign_edits_and_another_picture_does_not(photos):
    guard = ProbeGuard()
    a = photos["astronaut"]
    guard.remember(guard.fingerprint(a))
    half = np.asarray(Image.fromarray(a).resize((128, 128), Image.Resampling.LANCZOS))
    noise = np.random.default_rng(0).normal(0, 6, a.shape)  # a copied residual at about 32 dB
    for same in (jpeg(a, 50), half, np.clip(a + noise, 0, 255).astype(np.uint8), a[:, ::-1]):
        assert guard.matches(guard.fingerprint(same)) == 1
    for other in (photos["coffee"], photos["chelsea"]):
        assert guard.matches(guard.fingerprint(other)) == 0


def test_review_remembers_forged_pictures_and_contests_a_later_watermarked_reading(photos):
    guard = ProbeGuard()
    a, b = photos["astronaut"], photos["coffee"]
    assert guard.review(a, evidence("watermarked")).status == "watermarked"  # nothing seen yet
    assert guard.review(a, evidence("absent")).status == "absent" and len(guard) == 0
    assert guard.review(jpeg(a, 70), evidence("forged")).status == "forged" and len(guard) == 1
    contested = guard.review(a, evidence("watermarked"))
    assert contested.status == "forged" and not contested.detected and "probe guard" in contested.note
    assert len(guard) == 2  # remembered too: a slow drift of edits stays caught
    result = fuse("a.png", {"clip": 0.3}, None, FusionConfig(), watermark=contested)
    assert result.verdict == FORGED and result.p_ai == pytest.approx(0.3)
    assert guard.review(b, evidence("watermarked")).status == "watermarked"  # another picture


def test_a_caller_past_the_forged_budget_gets_no_mark_taken_as_genuine(photos):
    guard = ProbeGuard(forged_per_day=2)
    a, b, c = photos["astronaut"], photos["coffee"], photos["chelsea"]
    assert guard.review(a, evidence("forged"), caller="key:mallory").status == "forged"
    assert guard.review(c, evidence("watermarked"), caller="key:mallory").status == "watermarked"  # 1 left
    assert guard.review(b, evidence("forged"), caller="key:mallory").status == "forged"  # budget spent
    over = guard.review(c, evidence("watermarked"), caller="key:mallory")
    assert over.status == "forged" and "budget of 2" in over.note
    assert guard.review(c, evidence("watermarked"), caller="key:alice").status == "forged"  # c is seen now
    fresh = photos["astronaut"][::-1].copy()  # another picture (upside down)
    assert guard.review(fresh, evidence("watermarked"), caller="key:alice").status == "watermarked"
    assert guard.review(fresh, evidence("watermarked"), caller=None).status == "watermarked"


def test_capacity_forgets_the_oldest_picture_first(photos):
    guard = ProbeGuard(capacity=2)
    a, b, c = photos["astronaut"], photos["coffee"], photos["chelsea"]
    for image in (a, b, c):
        guard.remember(guard.fingerprint(image))
    assert len(guard) == 2
    assert guard.matches(guard.fingerprint(a)) == 0
    assert guard.matches(guard.fingerprint(b)) == guard.matches(guard.fingerprint(c)) == 1
    with pytest.raises(ValueError, match="capacity"):
        ProbeGuard(capacity=0)


def test_state_file_carries_pictures_and_budgets_across_a_restart_and_a_bad_one_is_refused(photos, tmp_path):
    a, b = photos["astronaut"], photos["coffee"]
    state = tmp_path / "probes.npz"
    first = ProbeGuard(capacity=3, forged_per_day=1)
    first.attach(state)  # nothing there yet
    for image in (photos["chelsea"], b, a, jpeg(a, 80)):  # one more than fits: chelsea is forgotten
        first.review(image, evidence("forged"), caller="key:mallory")
    first.save()
    second = ProbeGuard(capacity=3, forged_per_day=1)
    second.attach(state)
    assert len(second) == 3 and second.describe()["state_file"]
    assert second.matches(second.fingerprint(a)) == 2 and second.matches(second.fingerprint(b)) == 1
    assert second.matches(second.fingerprint(photos["chelsea"])) == 0
    upside_down = photos["chelsea"][::-1].copy()
    assert (
        second.review(upside_down, evidence("watermarked"), caller="key:mallory").status == "forged"
    )  # budget
    assert (
        second.review(upside_down, evidence("watermarked"), caller="key:alice").status == "forged"
    )  # seen now
    small = ProbeGuard(capacity=2)
    small.attach(state)  # the newest that fit
    assert len(small) == 2 and small.matches(small.fingerprint(b)) == 0
    state.write_bytes(b"not an npz")
    with pytest.raises(ProbeStateError, match="not a probe-guard state file"):
        ProbeGuard().attach(state)
    np.savez(
        state,
        scheme=np.array("dct-simhash-v1"),
        memory=np.zeros((1, 2, 15), np.float32),
        callers=np.array([], dtype=str),
        budgets=np.zeros((0, 2)),
    )
    with pytest.raises(ProbeStateError, match="another content hash"):
        ProbeGuard().attach(state)


def test_service_gives_a_copy_attacker_one_try_per_picture(tiny_bundle, tmp_path, photos):
    """Real marks through the real service: a's mark copied onto b reads forged; after that (and a
    restart) the owner's own marked b is contested, an unrelated marked image is not, and a service
    without the guard is the control."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from detector.bundle import ProvenanceDetector
    from detector.service import KeyStore, ServiceConfig, create_app
    from detector.watermark import Watermarker

    bundle, key, registry = bundle_with_watermark(tiny_bundle, tmp_path / "bundle")
    wm = Watermarker(key, registry=registry, search="fast")
    payload = wm.register("studio-gen", "v1").payload_id
    a, b = photos["astronaut"], photos["coffee"]
    marked_a, marked_b = wm.embed_array(a, payload), wm.embed_array(b, payload)
    copied = np.clip(b + (marked_a.astype(np.float32) - a) + 0.5, 0, 255).astype(np.uint8)

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    detector = ProvenanceDetector.load(bundle)

    def verdicts(client, *images):
        out = []
        for name, image in images:
            response = client.post("/v1/score", files=[("file", (name, png(image), "image/png"))])
            assert response.status_code == 200, response.text
            out.append(response.json()["results"][0])
        return out

    uploads = [("copy.png", copied), ("owner.png", marked_b), ("other.png", marked_a)]
    with TestClient(create_app(detector, ServiceConfig(probe_memory=0), KeyStore())) as client:
        control = verdicts(client, *uploads)
        assert client.get("/v1/health").json()["probe_guard"] is None
    assert [r["verdict"] for r in control] == [FORGED, WATERMARKED, WATERMARKED]
    state = str(tmp_path / "probes.npz")
    with TestClient(create_app(detector, ServiceConfig(probe_state=state), KeyStore())) as client:
        (copy,) = verdicts(client, uploads[0])
        assert client.get("/v1/health").json()["probe_guard"] == {"remembered": 1}
        assert client.get("/v1/version").json()["probe_guard"]["forged_per_day"] == 20
    with TestClient(create_app(detector, ServiceConfig(probe_state=state), KeyStore())) as client:
        owner, other = verdicts(client, *uploads[1:])  # after a restart: the copy is remembered
        assert client.get("/v1/health").json()["probe_guard"] == {"remembered": 2}
    assert copy["verdict"] == FORGED and copy["watermark"]["status"] == "forged"
    assert owner["verdict"] == FORGED and "probe guard" in owner["watermark"]["note"]
    assert owner["p_ai"] < control[1]["p_ai"]  # the contested mark no longer pushes p_ai up
    assert other["verdict"] == WATERMARKED and other["watermark"]["generator"] == "studio-gen"


def test_serve_cli_refuses_a_bad_state_file_and_bad_guard_settings(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from detector.cli import app as cli
    from detector.watermark import Watermarker

    bundle, key, registry = bundle_with_watermark(tiny_bundle, tmp_path / "bundle")
    Watermarker(key, registry=registry).register("studio-gen", "v1")  # the bundle's registry must exist
    (tmp_path / "state.npz").write_bytes(b"\x00" * 64)
    runner = CliRunner()
    bad_state = runner.invoke(
        cli, ["serve", "--model", str(bundle), "--probe-state", str(tmp_path / "state.npz")]
    )
    assert bad_state.exit_code == 2 and "not a probe-guard state file" in " ".join(bad_state.output.split())
    assert "Traceback" not in bad_state.output
    bad_similarity = runner.invoke(cli, ["serve", "--model", str(bundle), "--probe-similarity", "1.5"])
    assert bad_similarity.exit_code == 2 and "probe_similarity" in bad_similarity.output
