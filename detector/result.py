"""The one typed answer for a scored image, returned by the CLI, the library API and the service alike.

A :class:`ProvenanceResult` carries the calibrated probability that the image is AI-generated, the
verdict, and the evidence behind it: the watermark test, the generator attribution, the passive score
of every branch, and the version of every model used. A file that could not be scored still gets a
result, with ``error`` set and no verdict, so a batch over a million files has one line per file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REAL = "real"
AI_GENERATED = "ai-generated"
WATERMARKED = "watermarked"
UNCERTAIN = "uncertain"
#: A mark of our key that does not belong to the image (copied from another image, or inverted by a
#: removal attempt): it says someone tampered with a mark, never that the image is AI-generated.
FORGED = "forged"
VERDICTS = (REAL, AI_GENERATED, WATERMARKED, UNCERTAIN, FORGED)


def _clean_float(value: Any) -> float | None:
    """JSON has no NaN: missing or non-finite numbers become ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class WatermarkEvidence:
    """What the watermark decoder found. ``p_value`` = P(a random image matches this well)."""

    detected: bool
    p_value: float | None = None
    bit_accuracy: float | None = None  # share of payload bits matching the registered payload
    bits: str | None = None  # the decoded bits as a "0101..." string
    payload: str | None = None  # the decoded payload (hex) or message
    generator: str | None = None  # the generator the registry record names
    record: dict[str, Any] | None = None  # the registry record itself (key id, date, ...)
    status: str | None = None  # decoder's status: watermarked, forged, inverted, absent (None: not given)
    note: str | None = None  # a sentence saying what the status means for this image

    @property
    def tampered(self) -> bool:
        """A mark of our key that was moved onto other content or inverted: never evidence of AI."""
        return self.status in ("forged", "inverted")


@dataclass
class AttributionEvidence:
    """Which known generator the image most resembles, and how unlike every known generator it is."""

    top_k: list[tuple[str, float]]
    unknown_score: float | None = None
    is_unknown: bool = False
    score_name: str | None = None  # which unknown score (mahalanobis, knn, msp, energy)
    threshold: float | None = None

    @property
    def generator(self) -> str | None:
        if self.is_unknown:
            return "unknown"
        return self.top_k[0][0] if self.top_k else None


@dataclass
class ProvenanceResult:
    """Everything we can say about one image."""

    path: str
    p_ai: float | None = None  # calibrated P(AI-generated | evidence)
    verdict: str | None = None  # one of VERDICTS; None when the file could not be scored
    watermark: WatermarkEvidence | None = None
    attribution: AttributionEvidence | None = None
    branches: dict[str, float | None] = field(default_factory=dict)  # passive score per branch
    versions: dict[str, str] = field(default_factory=dict)  # model name -> version/weights id
    error: str | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        self.p_ai = _clean_float(self.p_ai)
        self.branches = {str(k): _clean_float(v) for k, v in self.branches.items()}

    @classmethod
    def failed(cls, path: str, error: str, versions: dict[str, str] | None = None) -> ProvenanceResult:
        """The result for a file that could not be read or scored."""
        return cls(path=str(path), error=str(error), versions=dict(versions or {}))

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def generator(self) -> str | None:
        """The generator we would name: the watermark registry's if a watermark was found, else attribution's."""
        if self.verdict == WATERMARKED and self.watermark is not None and self.watermark.generator:
            return self.watermark.generator
        if self.attribution is not None:
            return self.attribution.generator
        return None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.attribution is not None:
            data["attribution"]["top_k"] = [[g, float(p)] for g, p in self.attribution.top_k]
        return data

    def to_json(self) -> str:
        """One line of JSON (for JSONL output)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProvenanceResult:
        data = dict(data)
        watermark = data.pop("watermark", None)
        attribution = data.pop("attribution", None)
        if attribution is not None:
            attribution = dict(attribution)
            attribution["top_k"] = [(str(g), float(p)) for g, p in attribution.get("top_k", [])]
            attribution = AttributionEvidence(**attribution)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ProvenanceResult field(s) {unknown}")
        return cls(
            watermark=WatermarkEvidence(**watermark) if watermark is not None else None,
            attribution=attribution,
            **data,
        )

    @classmethod
    def from_json(cls, line: str) -> ProvenanceResult:
        return cls.from_dict(json.loads(line))

    def to_row(self) -> dict[str, Any]:
        """A flat mapping for CSV: nested evidence becomes dotted columns, the top-k list a ``g:p;..`` cell."""
        wm, at = self.watermark, self.attribution
        row: dict[str, Any] = {
            "path": self.path,
            "p_ai": self.p_ai,
            "verdict": self.verdict,
            "generator": self.generator,
            "error": self.error,
            "watermark.detected": wm.detected if wm else None,
            "watermark.p_value": wm.p_value if wm else None,
            "watermark.bit_accuracy": wm.bit_accuracy if wm else None,
            "watermark.payload": wm.payload if wm else None,
            "watermark.generator": wm.generator if wm else None,
            "watermark.status": wm.status if wm else None,
            "attribution.top1": at.top_k[0][0] if at and at.top_k else None,
            "attribution.top1_prob": at.top_k[0][1] if at and at.top_k else None,
            "attribution.top_k": ";".join(f"{g}:{p:.4f}" for g, p in at.top_k) if at else None,
            "attribution.unknown_score": at.unknown_score if at else None,
            "attribution.is_unknown": at.is_unknown if at else None,
        }
        for name, value in sorted(self.branches.items()):
            row[f"branch.{name}"] = value
        for name, value in sorted(self.versions.items()):
            row[f"version.{name}"] = value
        return row


def csv_columns(branches: Iterable[str] = (), versions: Iterable[str] = ()) -> list[str]:
    """CSV header for results whose branches and model versions are known in advance (a streaming writer
    fixes its header from the pipeline before the first image)."""
    fixed = list(ProvenanceResult(path="").to_row())
    return fixed + [f"branch.{b}" for b in sorted(branches)] + [f"version.{v}" for v in sorted(versions)]
