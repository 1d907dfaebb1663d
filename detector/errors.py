"""The project's one base error: every user-facing failure is a :class:`DetectorError`.

A caller (the CLI, the service, a script scoring a million files) catches ``DetectorError`` to report a
bad input, bundle, key or manifest in one line and go on, and lets anything else (a bug) surface as a
traceback. Each module keeps its own subclass (``ImageLoadError``, ``BundleError``, ``CorpusError``...)
so the message says which part refused what; the subclasses also keep their historical builtin base
(``ValueError``, ``RuntimeError``) so existing ``except ValueError`` code still catches them.

The subclasses, by area (each in the module that raises it):

- inputs and corpora: ``ImageLoadError`` (io.images), ``CorpusError`` (corpus.manifest) and its
  ``UnknownGeneratorError`` (corpus.zoo.registry), ``FeatureFileError`` (attribution.features),
  ``CacheError`` (features.cache);
- configuration and devices: ``ConfigError`` (config), ``DeviceError`` (devices);
- models: ``BackboneError`` / ``BackboneWeightsError`` (backbones.checkpoint), ``EffortError``
  (effort.residual), ``InversionError`` (features.inversion.models), ``TrainingError`` (training.engine),
  ``CheckpointError`` (training.checkpoint), ``CalibrationError`` (calibration);
- evaluation: ``MetricsError`` (metrics), ``EvaluationError`` (evaluation.perturbations);
- bundles and scoring: ``BundleError`` (bundle.detector), ``BranchFitError`` (bundle.inversion),
  ``AttributionError`` (attribution.head), ``FusionError`` (fusion.model), ``ScoringError``
  (scoring.stream);
- watermark, credentials, service: ``WatermarkError`` (watermark.api), ``WatermarkTrainError``
  (watermark.train), ``RegistryError``
  (watermark.registry), ``KeyFileError`` (watermark.payload), ``CredentialsError`` (credentials.write),
  ``ApiKeyFileError`` (service.auth), ``ServiceError`` (service.uploads: an HTTP error answer).
"""

from __future__ import annotations


class DetectorError(Exception):
    """A clear, user-facing refusal: bad input, bad bundle, bad key, bad manifest, bad output path."""


__all__ = ["DetectorError"]
