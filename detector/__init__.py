"""detector: image provenance (AI-generated or not, watermark, source generator).

The public API, importable from here (the heavy ones lazily, so ``import detector`` stays cheap):

* :func:`load_detector` -> :class:`ProvenanceDetector`, whose ``score(image)`` returns a
  :class:`ProvenanceResult` (the one result type of the CLI, the library and the service);
* :func:`create_backbone` / :func:`list_backbones`: the backbone registry;
* :class:`DetectorError`: the base class of every error a user can meet.
"""

from __future__ import annotations

from detector.errors import DetectorError

__version__ = "0.1.0"

#: Public names resolved on first access (PEP 562), so that ``import detector`` imports no torch.
_LAZY = {
    "ProvenanceDetector": "detector.bundle",
    "ProvenanceResult": "detector.result",
    "create_backbone": "detector.backbones",
    "list_backbones": "detector.backbones",
}


def load_detector(model=None, **options):
    """Load a scoring bundle: ``load_detector()`` is the shipped default detector, ``load_detector("name")``
    a named model (``detector models list``), ``load_detector("runs/demo/bundle")`` a bundle folder;
    then ``det.score("img.png")`` -> ``ProvenanceResult``. ``options`` are those of
    :meth:`detector.bundle.ProvenanceDetector.load` (device, watermark, rigid, inversion, watermark_search,
    c2pa, c2pa_trust, allow_external)."""
    from detector.bundle import ProvenanceDetector, resolve_model

    return ProvenanceDetector.load(resolve_model(model), **options)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")


__all__ = ["DetectorError", "__version__", "load_detector", *_LAZY]
