"""The evaluation perturbation grid: every entry runs, keeps uint8 RGB, is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from detector.evaluation.perturbations import GRID, perturbation


@pytest.mark.parametrize("name", list(GRID))
def test_grid_entry(name):
    image = np.random.default_rng(0).integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    fn = perturbation(name)
    if name == "clean":
        assert fn is None
        return
    out = fn(image.copy())
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    expected = {"resize0.5": (32, 24), "resize0.75": (48, 36), "crop0.5": (32, 24)}.get(name, (64, 48))
    assert out.shape[:2] == expected
    assert not np.array_equal(out, image)  # it did something
    np.testing.assert_array_equal(perturbation(name)(image.copy()), out)  # and the same thing each time


def test_unknown_perturbation_is_named():
    with pytest.raises(ValueError, match="jpeg101"):
        perturbation("jpeg101")
