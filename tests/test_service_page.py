"""The web page in a real headless browser (Debian's Chromium through Playwright) against a real
`detector serve`: upload a signed, watermarked image, wait for the verdict, check the evidence shown."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="no Chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

from detector.credentials import make_test_certificates  # noqa: E402
from detector.service.process import serve_subprocess  # noqa: E402
from detector.watermark import Watermarker  # noqa: E402
from tests.conftest import bundle_with_watermark, write_rgb  # noqa: E402

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def signed_image(tmp_path: Path, key: Path, registry: Path, certs: dict) -> Path:
    from detector.corpus.photos import bundled_photos, load_photos
    from detector.credentials import CredentialsSigner

    [(_, photo)] = load_photos([p for p in bundled_photos() if p.name == "skimage-astronaut"])
    src = tmp_path / "src.png"
    Image.fromarray(np.ascontiguousarray(photo[:384, 64:448])).save(src)
    wm = Watermarker(key, registry=registry, search="fast")
    record = wm.register("studio-gen", "v2")
    out = tmp_path / "made-by-ai.png"
    wm.embed_file(src, out, record.payload_id)
    CredentialsSigner(certs["chain"], certs["key"]).sign_file(
        out, soft_binding=(wm.key.key_id, record.payload_id)
    )
    return out


def test_page_scores_an_uploaded_image_and_shows_its_evidence(tiny_bundle, tmp_path):
    bundle, key, registry = bundle_with_watermark(tiny_bundle, tmp_path / "bundle")
    certs = make_test_certificates(tmp_path / "certs")
    image = signed_image(tmp_path, key, registry, certs)
    plain = write_rgb(tmp_path / "plain.png", size=(64, 48), seed=2)
    args = ["--model", str(bundle), "--c2pa-trust", str(certs["root"])]
    with serve_subprocess(args, env={"OMP_NUM_THREADS": "1"}) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone screen
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")
            assert page.get_by_label("Drop an image here, or choose one").count() == 1  # labelled input
            assert page.locator("#key-row").is_hidden()  # no keys configured: no key field
            page.set_input_files("#file", str(image))
            sync_api.expect(page.locator("#status")).to_have_text("Scored made-by-ai.png.", timeout=60_000)
            assert page.inner_text("#verdict").startswith("Watermarked: AI-generated (studio-gen)")
            assert page.locator("#branches li").count() == 2  # detector, attribution_distance
            assert page.locator("#attribution li").count() == 3
            watermark = page.inner_text("#watermark")
            assert "studio-gen" in watermark and "yes" in watermark
            credentials = page.inner_text("#c2pa")
            assert "valid (trusted signer)" in credentials and "trainedAlgorithmicMedia" in credentials
            assert "detector test signer" in credentials
            # no horizontal scrolling on a phone screen
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            if os.environ.get("DETECTOR_PAGE_SCREENSHOT"):  # docs/img/service-page.png is made this way
                page.set_viewport_size({"width": 760, "height": 1000})
                shot = tmp_path / "page.png"
                page.screenshot(path=str(shot), full_page=True)
                Image.open(shot).convert("RGB").quantize(64).save(
                    os.environ["DETECTOR_PAGE_SCREENSHOT"], optimize=True
                )
            # a second image, chosen with the keyboard-reachable input: the page updates
            page.focus("#file")
            page.set_input_files("#file", str(plain))
            sync_api.expect(page.locator("#status")).to_have_text("Scored plain.png.", timeout=60_000)
            assert "none found" in page.inner_text("#c2pa")
            assert page.inner_text("#file-name") == "plain.png"
        finally:
            browser.close()
