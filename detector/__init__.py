"""detector: image provenance (AI-generated or not, watermark, source generator)."""

from __future__ import annotations

__version__ = "0.1.0"


def load_detector(model=None, **options):
    """Load a scoring bundle: ``load_detector()`` is the shipped default detector, ``load_detector("name")``
    a named model (``detector models list``), ``load_detector("runs/demo/bundle")`` a bundle folder;
    then ``det.score("img.png")`` -> ``ProvenanceResult``. ``options`` are those of
    :meth:`detector.bundle.ProvenanceDetector.load` (device, watermark, rigid, inversion, watermark_search).

    Imported lazily so that ``import detector`` stays cheap (no torch until a model is loaded)."""
    from detector.bundle import ProvenanceDetector, resolve_model

    return ProvenanceDetector.load(resolve_model(model), **options)


__all__ = ["__version__", "load_detector"]
