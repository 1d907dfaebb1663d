"""detector: image provenance (AI-generated or not, watermark, source generator)."""

from __future__ import annotations

__version__ = "0.1.0"


def load_detector(path, device: str = "cpu", watermark: bool = True):
    """Load a scoring bundle (``detector bundle`` / ``detector demo`` write one):
    ``det = load_detector("runs/demo/bundle"); det.score("img.png")`` -> ``ProvenanceResult``.

    Imported lazily so that ``import detector`` stays cheap (no torch until a model is loaded)."""
    from detector.bundle import ProvenanceDetector

    return ProvenanceDetector.load(path, device=device, watermark=watermark)


__all__ = ["__version__", "load_detector"]
