"""``detector corpus report``: what the zoo makes, for a person to look at.

Per generator: a sample grid (real crops in the first row, each generator below), the mean log power
spectrum as an image, radially averaged spectra against real, and colour histograms; the numbers go
to ``stats.json``. The spectrum helpers are also the fixed feature of the baseline experiment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.corpus.manifest import Corpus, Record
from detector.io import ImageLoadError, atomic_write_text, load_image_array

HIST_BINS = 32


def log_spectrum(image: np.ndarray) -> np.ndarray:
    """Centred log power spectrum of an H x W x 3 uint8 image's luminance (mean removed, Hann window)."""
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = gray - gray.mean()
    window = np.outer(np.hanning(gray.shape[0]), np.hanning(gray.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray * window))) ** 2
    return np.log(power + 1e-8)


def radial_profile(spectrum: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Average a centred spectrum over rings of equal radius (``bins`` rings up to Nyquist)."""
    h, w = spectrum.shape
    bins = bins or min(h, w) // 2
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h // 2, xx - w // 2) / (min(h, w) / 2) * bins
    ring = np.minimum(radius.astype(int), bins)
    sums = np.bincount(ring.ravel(), spectrum.ravel(), minlength=bins + 1)
    counts = np.bincount(ring.ravel(), minlength=bins + 1)
    return (sums / np.maximum(counts, 1))[:bins]


def radial_spectrum(image: np.ndarray, bins: int | None = None) -> np.ndarray:
    """The baseline's fixed feature: radially averaged log power spectrum of the luminance."""
    return radial_profile(log_spectrum(image), bins)


def _sample(records: list[Record], k: int, rng: np.random.Generator) -> list[Record]:
    if len(records) <= k:
        return [records[i] for i in rng.permutation(len(records))]
    return [records[i] for i in rng.choice(len(records), k, replace=False)]  # random order: mixed photos


def make_report(
    corpus: Corpus,
    out: Path,
    per_generator: int = 8,
    max_stats: int = 200,
    seed: int = 0,
    progress: Callable[[int], None] = lambda n=1: None,
) -> list[Path]:
    """Write the report into ``out``; returns the files written. Unreadable images are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_gen: dict[str, list[Record]] = defaultdict(list)
    for record in corpus.records:
        by_gen[record.generator].append(record)
    names = ["real", *sorted(g for g in by_gen if g != "real")] if "real" in by_gen else sorted(by_gen)
    family = {r.generator: r.family for r in corpus.records}
    rng = np.random.default_rng(seed)
    shown: dict[str, list[np.ndarray]] = {}
    stats: dict[str, dict] = {}
    spectra: dict[str, np.ndarray] = {}
    skipped: list[dict] = []
    for name in names:
        images = []
        for record in _sample(by_gen[name], max(per_generator, max_stats), rng):
            try:
                images.append(load_image_array(corpus.resolve(record)))
            except ImageLoadError as exc:
                skipped.append({"path": exc.path, "reason": exc.reason})
            progress(1)
        if not images:
            continue
        side = min(min(im.shape[:2]) for im in images)
        images = [im[:side, :side] for im in images]
        shown[name] = images[:per_generator]
        stack = np.stack(images[:max_stats]).astype(np.float64)
        spec = np.mean([log_spectrum(im) for im in images[:max_stats]], axis=0)
        spectra[name] = spec
        hist = [
            np.histogram(stack[..., c], bins=HIST_BINS, range=(0, 256), density=True)[0].tolist()
            for c in range(3)
        ]
        stats[name] = {
            "family": family.get(name, name),
            "images_measured": len(stack),
            "mean_rgb": stack.mean(axis=(0, 1, 2)).round(2).tolist(),
            "std_rgb": stack.std(axis=(0, 1, 2)).round(2).tolist(),
            "radial_log_spectrum": radial_profile(spec).round(3).tolist(),
            "colour_histogram": {"bins": HIST_BINS, "r": hist[0], "g": hist[1], "b": hist[2]},
        }
    if "real" in stats:
        real_profile = np.array(stats["real"]["radial_log_spectrum"])
        for name in stats:
            diff = np.array(stats[name]["radial_log_spectrum"]) - real_profile
            half = len(diff) // 2
            stats[name]["log_spectrum_minus_real"] = {
                "low_half": round(float(diff[:half].mean()), 3),
                "high_half": round(float(diff[half:].mean()), 3),
            }
    written = []

    rows, cols = len(shown), max((len(v) for v in shown.values()), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.15), squeeze=False)
    for r, name in enumerate(shown):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(shown[name]):
                ax.imshow(shown[name][c])
        axes[r][0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    written.append(_save(fig, out / "samples.png"))

    cols = 4
    rows = -(-len(spectra) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.3), squeeze=False)
    low = min(s.min() for s in spectra.values())
    high = max(s.max() for s in spectra.values())
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(spectra):
            name = list(spectra)[i]
            ax.imshow(spectra[name], cmap="magma", vmin=low, vmax=high)
            ax.set_title(name, fontsize=8)
    fig.suptitle("mean log power spectrum (luminance)", fontsize=9)
    fig.tight_layout()
    written.append(_save(fig, out / "spectra.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in stats.items():
        profile = np.array(values["radial_log_spectrum"])
        ax.plot(np.linspace(0, 1, len(profile)), profile, lw=2.5 if name == "real" else 1, label=name)
    ax.set_xlabel("frequency / Nyquist")
    ax.set_ylabel("mean log power")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written.append(_save(fig, out / "radial_spectra.png"))

    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 1.8), squeeze=False)
    centres = (np.arange(HIST_BINS) + 0.5) * 256 / HIST_BINS
    for i, ax in enumerate(axes.ravel()):
        if i >= len(stats):
            ax.axis("off")
            continue
        name = list(stats)[i]
        for channel, colour in zip("rgb", ("tab:red", "tab:green", "tab:blue"), strict=True):
            ax.plot(centres, stats[name]["colour_histogram"][channel], color=colour, lw=1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("colour histograms", fontsize=9)
    fig.tight_layout()
    written.append(_save(fig, out / "colour_histograms.png"))

    path = out / "stats.json"
    import json

    atomic_write_text(path, json.dumps({"generators": stats, "skipped": skipped}, indent=1) + "\n")
    written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    from detector.io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
