"""From evidence to one answer: the verdict rules and the assembly of a :class:`ProvenanceResult`.

The rules, and why:

* A **found** watermark (p-value <= ``watermark_fpr``) is strong evidence: the verdict is
  ``watermarked``, the generator is the one the watermark registry names, and p_ai moves up by the
  watermark's log-likelihood ratio (see :func:`watermark_log_lr`).
* A **missing** watermark is weak evidence: purification, regeneration or simply a generator that does
  not watermark all remove it. It leaves p_ai exactly where the passive branches put it; it never pushes
  an image towards ``real`` on its own.
* **Content Credentials** (C2PA) that are *valid* (hashes and signature verify, the signer chains to a
  configured trust anchor) and declare the image algorithmically generated are strong evidence: p_ai
  moves up by ``c2pa_log_lr`` and the verdict is ``ai-generated`` (``watermarked`` still wins: it also
  names the generator). A manifest whose signer is not trusted here, or that declares a camera capture,
  changes nothing: anyone can sign with a certificate of their own. An *invalid* manifest (the file was
  altered after signing) is reported as tampered and never trusted. A missing manifest proves nothing:
  re-saving a file drops it.
* A **forged** mark (one of our key made for other content, or inverted by a removal attempt; see
  :mod:`detector.watermark.api`) is never evidence of AI: p_ai stays where the passive branches put it,
  and the verdict is ``forged`` so that the tampering is seen rather than hidden behind ``real``.
* Otherwise the calibrated p_ai decides: ``ai-generated`` above ``threshold + band``, ``real`` below
  ``threshold - band``, ``uncertain`` in between (and when no branch could score the image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from detector.fusion.model import FusionConfig, FusionError, FusionModel, logit, sigmoid, watermark_log_lr
from detector.result import (
    AI_GENERATED,
    C2PA_VALID,
    FORGED,
    REAL,
    UNCERTAIN,
    WATERMARKED,
    AttributionEvidence,
    C2PAEvidence,
    ProvenanceResult,
    WatermarkEvidence,
)


def watermark_found(watermark: WatermarkEvidence | None, config: FusionConfig) -> bool:
    """A watermark counts when its p-value clears the configured FPR (or, without a p-value, its flag)."""
    if watermark is None or watermark.tampered:
        return False
    if watermark.p_value is not None:
        return watermark.p_value <= config.watermark_fpr
    return bool(watermark.detected)


def c2pa_declares_ai(c2pa: C2PAEvidence | None) -> bool:
    """Credentials count as evidence only when valid (trusted signer, intact content) and declaring AI."""
    return c2pa is not None and c2pa.present and c2pa.state == C2PA_VALID and c2pa.ai_declared


def decide(
    p_passive: float | None,
    watermark: WatermarkEvidence | None,
    config: FusionConfig,
    c2pa: C2PAEvidence | None = None,
) -> tuple[float | None, str]:
    """(p_ai, verdict) from the passive fused probability, the watermark and the Content Credentials."""
    credentials = c2pa_declares_ai(c2pa)
    if credentials:
        prior = 0.5 if p_passive is None else p_passive
        p_passive = float(sigmoid(logit(prior) + config.c2pa_log_lr))
    if watermark_found(watermark, config):
        prior = 0.5 if p_passive is None else p_passive
        p_ai = float(sigmoid(logit(prior) + watermark_log_lr(watermark.p_value, config)))
        return p_ai, WATERMARKED
    if credentials:
        return p_passive, AI_GENERATED
    if watermark is not None and watermark.tampered:
        return p_passive, FORGED
    if p_passive is None:
        return None, UNCERTAIN
    if p_passive > config.threshold + config.uncertain_band:
        return p_passive, AI_GENERATED
    if p_passive < config.threshold - config.uncertain_band:
        return p_passive, REAL
    return p_passive, UNCERTAIN


def fuse(
    path: str,
    branches: Mapping[str, float | None],
    fusion: FusionModel | None,
    config: FusionConfig | None = None,
    watermark: WatermarkEvidence | None = None,
    attribution: AttributionEvidence | None = None,
    versions: Mapping[str, str] | None = None,
    c2pa: C2PAEvidence | None = None,
) -> ProvenanceResult:
    """One :class:`ProvenanceResult` from the evidence gathered for one image.

    Without a fitted fusion model a single passive branch is taken as already calibrated (it must be a
    probability); with several branches and no fusion model there is no honest way to combine them, so
    that is an error rather than a guess."""
    config = config or (fusion.config if fusion is not None else FusionConfig())
    present = {k: v for k, v in branches.items() if v is not None}
    if fusion is not None:
        usable = {k: v for k, v in present.items() if k in fusion.branches}
        p_passive = fusion.predict_one(usable) if usable else None
    elif len(present) == 1:
        (value,) = present.values()
        if not 0.0 <= value <= 1.0:
            raise FusionError(
                f"without a fusion model the one branch score must be a probability, got {value}"
            )
        p_passive = float(value)
    elif not present:
        p_passive = None
    else:
        raise FusionError(f"{len(present)} branch scores ({sorted(present)}) need a fitted fusion model")
    if watermark is not None:  # one rule decides what counts as found: the fusion's
        watermark = dataclasses.replace(watermark, detected=watermark_found(watermark, config))
    p_ai, verdict = decide(p_passive, watermark, config, c2pa)
    return ProvenanceResult(
        path=str(path),
        p_ai=p_ai,
        verdict=verdict,
        watermark=watermark,
        attribution=attribution,
        branches=dict(branches),
        versions=dict(versions or {}),
        c2pa=c2pa,
    )
