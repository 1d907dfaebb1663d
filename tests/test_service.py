"""The HTTP service on the tiny bundle: every status code, the same result schema as `detector score`,
micro-batched concurrent requests, hashed keys, no upload left on disk."""

from __future__ import annotations

import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from detector.bundle import ProvenanceDetector  # noqa: E402
from detector.cli import app as cli  # noqa: E402
from detector.result import ProvenanceResult  # noqa: E402
from detector.service import KeyStore, ServiceConfig, add_key, create_app, hash_key  # noqa: E402
from tests.conftest import write_rgb  # noqa: E402


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return ProvenanceDetector.load(tiny_bundle)


def png_bytes(seed: int = 0, size=(40, 36)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def client_for(detector, **settings) -> TestClient:
    keys = settings.pop("keys", KeyStore())
    return TestClient(create_app(detector, ServiceConfig(**settings), keys), raise_server_exceptions=True)


def post(client, *files, headers=None):
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/v1/score", files=parts, headers=headers or {})


def test_score_returns_the_same_result_as_the_cli(detector, tiny_bundle, tmp_path):
    image = write_rgb(tmp_path / "same.png", size=(48, 40), seed=11)
    out = tmp_path / "cli.jsonl"
    run = CliRunner().invoke(cli, ["score", str(image), "--model", str(tiny_bundle), "--out", str(out)])
    assert run.exit_code == 0, run.output
    expected = json.loads(out.read_text())
    with client_for(detector) as client:
        response = post(client, ("same.png", image.read_bytes()))
    assert response.status_code == 200, response.text
    body = response.json()
    [got] = body["results"]
    assert set(got) == set(expected) and got["path"] == "same.png"
    assert ProvenanceResult.from_dict(got).to_json()  # it parses as the one result type
    for key in ("verdict", "versions", "error", "watermark", "c2pa"):
        assert got[key] == expected[key], key
    assert got["c2pa"] == {**expected["c2pa"], "present": False}  # read, and no manifest in a plain PNG
    assert got["p_ai"] == pytest.approx(expected["p_ai"], abs=1e-6)
    assert got["branches"] == pytest.approx(expected["branches"], abs=1e-6)
    assert got["attribution"]["top_k"][0][0] == expected["attribution"]["top_k"][0][0]
    # one bar per passive branch: each branch's own calibrated P(AI)
    assert set(body["branch_p_ai"][0]) == set(got["branches"])
    assert all(0.0 <= p <= 1.0 for p in body["branch_p_ai"][0].values())


def test_health_version_docs_and_page(detector, tiny_bundle):
    with client_for(detector) as client:
        health = client.get("/v1/health").json()
        assert health["status"] == "ok" and health["in_flight"] == 0
        version = client.get("/v1/version").json()
        meta = json.loads((tiny_bundle / "bundle.json").read_text())
        assert version["bundle"]["versions"] == meta["versions"] and version["detector"]
        assert version["fusion"]["threshold"] == detector.fusion_config.threshold
        assert "/v1/score" in client.get("/openapi.json").json()["paths"]
        page = client.get("/")
        assert page.status_code == 200 and "<main>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'for="file"' in page.text and 'aria-live="polite"' in page.text  # labelled, announced
        script = client.get("/static/app.js")
        assert script.status_code == 200 and "/v1/score" in script.text
        assert "innerHTML" not in script.text  # untrusted text (names, manifest fields) never parsed as HTML
        assert "http" not in client.get("/static/style.css").text  # nothing loaded from elsewhere
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_bad_inputs_get_clear_json_errors(detector, tmp_path):
    with client_for(detector, max_request_bytes=200_000, max_pixels=100 * 100) as client:
        bad = post(client, ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"))
        assert bad.status_code == 400 and bad.json()["error"] == "bad_image"
        assert bad.json()["files"][0]["file"] == "broken.jpg" and bad.json()["files"][0]["reason"]
        text = post(client, ("notes.txt", b"hello, not an image"))
        assert text.status_code == 415 and "notes.txt" in text.json()["detail"]
        not_multipart = client.post("/v1/score", content=png_bytes(), headers={"content-type": "image/png"})
        assert not_multipart.status_code == 415
        big = post(client, ("big.png", os.urandom(300_000)))
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        pixels = post(client, ("wide.png", png_bytes(size=(200, 100))))
        assert pixels.status_code == 413 and "refused before decoding" in pixels.json()["detail"]
        empty = client.post("/v1/score", data={"note": "x"}, files={"other": ("", b"", "text/plain")})
        assert empty.status_code in (400, 415)
        # a request with one good and one bad file is refused whole, naming the bad one
        mixed = post(client, ("good.png", png_bytes(1)), ("broken.jpg", b"\xff\xd8\xff garbage"))
        assert mixed.status_code == 400 and [f["file"] for f in mixed.json()["files"]] == ["broken.jpg"]
        too_many = post(client, *[(f"{i}.png", png_bytes(i)) for i in range(17)])
        assert too_many.status_code == 413


def test_api_keys_are_hashed_and_checked_and_rate_limited(detector, tmp_path):
    keys_file = tmp_path / "keys.txt"
    key = add_key(keys_file, "alice")
    assert key not in keys_file.read_text() and hash_key(key) in keys_file.read_text()
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    store = KeyStore.load(keys_file, env="")
    with client_for(detector, keys=store, rate_limit=2) as client:
        assert post(client, ("a.png", png_bytes())).status_code == 401
        wrong = post(client, ("a.png", png_bytes()), headers={"X-API-Key": "dk_wrong"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        ok = post(client, ("a.png", png_bytes()), headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert post(client, ("a.png", png_bytes()), headers={"X-API-Key": key}).status_code == 200
        limited = post(client, ("a.png", png_bytes()), headers={"X-API-Key": key})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert client.get("/v1/health").status_code == 200  # health and the page stay open
    # an open page: anonymous requests pass (their own, per-address limit); unknown keys still do not
    with client_for(detector, keys=store, page="open", anonymous_rate_limit=1) as client:
        assert post(client, ("a.png", png_bytes())).status_code == 200
        assert post(client, ("a.png", png_bytes())).status_code == 429
        assert post(client, ("a.png", png_bytes()), headers={"X-API-Key": "dk_x"}).status_code == 401
    env_store = KeyStore.load(None, env=f"bob:{hash_key('dk_bob')}")
    assert env_store.identify("dk_bob") == "bob" and env_store.identify("dk_alice") is None


def test_saturation_gives_503_and_slow_scoring_504(detector):
    release = threading.Event()
    real = detector.pipeline.score_batch

    def blocked(batch):
        release.wait(10)
        return real(batch)

    with client_for(detector, max_queue=1, timeout_s=1.5) as client:
        client.app.state.service.batcher.score_batch = blocked
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, ("a.png", png_bytes(1)))
            second = pool.submit(post, client, ("b.png", png_bytes(2)))
            codes = sorted([first.result().status_code, second.result().status_code])
        release.set()
        assert codes == [503, 504]  # one admitted then timed out; the other refused while it was in flight
        client.app.state.service.batcher.score_batch = real
        assert post(client, ("c.png", png_bytes(3))).status_code == 200  # recovers
        assert os.listdir(client.app.state.service.temp_dir) == []  # the timed-out upload was removed too


def test_concurrent_requests_are_micro_batched_and_each_gets_its_own_answer(detector):
    images = {f"img{i}.png": png_bytes(100 + i) for i in range(8)}
    expected = {
        name: detector.score(Image.open(io.BytesIO(data)), path=name) for name, data in images.items()
    }
    with client_for(detector, batch_wait_ms=500, batch_size=8) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda item: post(client, item), images.items()))
        service = client.app.state.service
        assert all(r.status_code == 200 for r in responses)
        for (name, _), response in zip(images.items(), responses, strict=True):
            [got] = response.json()["results"]
            assert got["path"] == name
            assert got["p_ai"] == pytest.approx(expected[name].p_ai, abs=1e-5)
        assert service.batcher.largest_batch > 1 and service.batcher.images == 8
        assert service.in_flight == 0 and os.listdir(service.temp_dir) == []  # no upload left behind
        many = post(client, *list(images.items())[:3])
        assert [r["path"] for r in many.json()["results"]] == ["img0.png", "img1.png", "img2.png"]
    assert not Path(service.temp_dir).exists()
    with client_for(detector, score_workers=2, batch_size=2) as client:  # two model threads at once
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda item: post(client, item), images.items()))
        for (name, _), response in zip(images.items(), responses, strict=True):
            assert response.json()["results"][0]["p_ai"] == pytest.approx(expected[name].p_ai, abs=1e-5)


def test_serve_cli_refuses_bad_settings_and_serve_key_prints_a_key_once(tiny_bundle, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["serve", "--model", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a detector bundle" in " ".join(missing.output.split())
    bad_page = runner.invoke(cli, ["serve", "--model", str(tiny_bundle), "--page", "public"])
    assert bad_page.exit_code == 2 and "'keyed'" in bad_page.output and "'open'" in bad_page.output
    made = runner.invoke(cli, ["serve-key", str(tmp_path / "keys.txt"), "--name", "ci"])
    assert made.exit_code == 0
    key = made.stdout.strip()
    assert key.startswith("dk_") and KeyStore.load(tmp_path / "keys.txt", env="").identify(key) == "ci"
    again = runner.invoke(cli, ["serve-key", str(tmp_path / "keys.txt"), "--name", "ci"])
    assert again.exit_code == 2 and "already exists" in again.output
    (tmp_path / "bad.txt").write_text("ci:not-a-hash\n")
    broken = runner.invoke(cli, ["serve", "--model", str(tiny_bundle), "--keys", str(tmp_path / "bad.txt")])
    assert broken.exit_code == 2 and "expected 'name:sha256hex'" in broken.output
