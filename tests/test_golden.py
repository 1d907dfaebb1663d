"""Golden outputs: fixed bundles score fixed images to the committed numbers, so any change of numbers
(pixels, backbone, heads, calibration, fusion, verdict rule, attribution) fails loudly here.

* the tiny bundle (:mod:`detector.testing.tinybundle`: a seeded 1-epoch linear probe, built per session)
  on four fixed noise pictures, square and not, PNG and JPEG, none of them its input size;
* the shipped bundle (``checkpoints/default``) on one packaged photo (skipped where it is not shipped).

Every field of each :class:`~detector.result.ProvenanceResult` is compared: ``p_ai``, ``verdict``, every
branch score, the attribution (top-k names and probabilities, unknown score, decision, threshold) and
the watermark / Content Credentials evidence; numbers to a relative 1e-4 (absolute 1e-6: what float
round-off between CPUs may move), everything else exactly. ``versions`` holds file hashes of a model
trained in the session, so only its keys are compared for the tiny bundle.

After an *intended* change of numbers, regenerate and commit the files under ``tests/golden/``::

    DETECTOR_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import write_rgb

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DETECTOR_UPDATE_GOLDEN") == "1"
REL, ABS = 1e-4, 1e-6
#: (file name, (width, height), seed): none is the tiny bundle's 32 px input, two are not square
TINY_IMAGES = [
    ("square.png", (32, 32), 900),
    ("wide.png", (48, 40), 901),
    ("tall.jpg", (40, 64), 902),
    ("strip.png", (97, 33), 903),
]


def _differences(got, want, where: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` (numbers within REL / ABS count as equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(got) | set(want))
        return [
            d
            for k in keys
            for d in _differences(got.get(k, "<missing>"), want.get(k, "<missing>"), f"{where}.{k}")
        ]
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [
            d
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for d in _differences(g, w, f"{where}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(want, numbers)
        and isinstance(got, numbers)
        and not isinstance(want, bool)
        and not isinstance(got, bool)
    ):
        if math.isclose(got, want, rel_tol=REL, abs_tol=ABS):
            return []
    elif got == want:
        return []
    return [f"{where}: got {got!r}, golden {want!r}"]


def _check(name: str, results: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"rewrote {path}; review the diff and commit it")
    assert path.is_file(), f"no golden file {path}: run DETECTOR_UPDATE_GOLDEN=1 python -m pytest {__file__}"
    diffs = _differences(results, json.loads(path.read_text()))
    assert not diffs, (
        f"{name}: scores differ from the golden outputs in {path.name} (if intended, regenerate with "
        "DETECTOR_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py):\n  " + "\n  ".join(diffs[:20])
    )


def _as_golden(result, keep_versions: bool) -> dict:
    data = result.to_dict()
    assert data["error"] is None, data["error"]
    data["path"] = Path(data["path"]).name
    data["versions"] = data["versions"] if keep_versions else sorted(data["versions"])
    return data


def test_tiny_bundle_scores_fixed_images_to_the_golden_outputs(tiny_bundle, tmp_path):
    from detector import load_detector

    det = load_detector(tiny_bundle, watermark=False, c2pa=False)
    paths = [write_rgb(tmp_path / name, size=size, seed=seed) for name, size, seed in TINY_IMAGES]
    results = {Path(r.path).name: _as_golden(r, keep_versions=False) for r in det.score_many(paths)}
    assert set(results) == {name for name, _, _ in TINY_IMAGES}
    _check("tiny_bundle", results)


def test_shipped_bundle_scores_a_packaged_photo_to_the_golden_output():
    from detector.bundle.cards import shipped_root

    if not (shipped_root() / "default" / "bundle.json").is_file():
        pytest.skip("no shipped default bundle in this checkout")
    from detector import load_detector
    from detector.corpus.photos import catalogue

    det = load_detector(watermark=False, c2pa=False)
    photo = next(p for p in catalogue() if p.name == "skimage-coffee").locate()  # 600 x 400: resized to 128
    _check("default_bundle", {"skimage-coffee": _as_golden(det.score(photo), keep_versions=True)})
