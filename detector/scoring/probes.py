"""The probe guard: one try per picture for an attacker who copies marks and asks us which one passes.

A detector that answers ``watermarked`` is an oracle for the copy attack. The attacker owns many marked
images of other content, copies each one's mark onto the photo they want to frame, submits it, and
keeps the first that reads ``watermarked``. Each try passes the content binding with a small
probability (0.06-0.10% per pair on our choice set), but tries are cheap: with 1,000 sources the
attack frames 42% of photos (``experiments/content_binding/oracle_attack.py``). Every failed try reads
``forged``, and every try is the same picture.

So the guard remembers the coarse content (the binding's own features,
:func:`detector.watermark.binding.content_features`, of the image as read and inside any uniform
border) of every image whose mark read ``forged``; a later ``watermarked`` reading on a picture whose
features lie within ``similarity`` (cosine) of one remembered is reported ``forged`` as well, and is
remembered in turn (so a slow drift of small edits stays caught). The attacker gets one try per
picture, and every further try needs an edit that moves the picture's coarse content beyond the
threshold (``experiments/content_binding/probe_guard.py`` measures how far that is).

What it costs: an honest marked image whose picture was earlier submitted carrying a mark made for
other content reads ``forged`` too; the note says why. The memory lives in the process, holds the
``capacity`` most recent pictures (oldest forgotten first) and is lost on restart.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from detector.result import WatermarkEvidence
from detector.watermark.binding import SCHEME, content_features, trim_border

#: Cosine between content features above which two images are the same picture. Chosen on the choice
#: set (experiments/content_binding/probe_guard.py): every benign edit the binding survives stays above
#: it, and no two crops of different training photos, nor a generated image and a crop, reach it.
SIMILARITY = 0.98
CAPACITY = 10_000
CONTESTED_NOTE = (
    "a mark of this key read as belonging to this picture, but this picture was submitted before "
    "carrying {n} mark(s) made for other content: a copy attacker tries marks until one passes, so "
    "this one is taken as a copy too (probe guard)"
)


class ProbeGuard:
    """Remembers the pictures that carried a ``forged`` mark; contests ``watermarked`` readings on them.

    Thread-safe: the service's scoring workers share one guard."""

    def __init__(self, capacity: int = CAPACITY, similarity: float = SIMILARITY, scheme: str = SCHEME):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0.0 < similarity <= 1.0:
            raise ValueError("similarity must be in (0, 1]")
        self.capacity, self.similarity, self.scheme = capacity, similarity, scheme
        width = len(content_features(np.zeros((8, 8, 3), np.uint8), scheme))
        self._memory = np.zeros((capacity, 2, width), np.float32)
        self._size = 0
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def fingerprint(self, image: np.ndarray) -> np.ndarray:
        """(2, F) unit content features of the image as read and of the picture inside its border."""
        rgb = np.asarray(image, dtype=np.uint8)[..., :3]
        return np.stack([content_features(view, self.scheme) for view in (rgb, trim_border(rgb))])

    def matches(self, fingerprint: np.ndarray) -> int:
        """How many remembered pictures are the same picture as ``fingerprint`` (any view against any)."""
        with self._lock:
            stored = self._memory[: self._size]
            if not len(stored):
                return 0
            cosines = np.einsum("nvf,wf->nvw", stored, fingerprint.astype(np.float32))
            return int((cosines.reshape(len(stored), -1).max(axis=1) >= self.similarity).sum())

    def remember(self, fingerprint: np.ndarray) -> None:
        with self._lock:
            self._memory[self._next] = fingerprint
            self._next = (self._next + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def review(self, image: np.ndarray, evidence: WatermarkEvidence | None) -> WatermarkEvidence | None:
        """The evidence as the guard lets it stand: ``forged`` readings are remembered, and a
        ``watermarked`` reading on a remembered picture becomes ``forged`` (and is remembered)."""
        if evidence is None or evidence.status not in ("forged", "watermarked"):
            return evidence
        fingerprint = self.fingerprint(image)
        if evidence.status == "watermarked":
            seen = self.matches(fingerprint)
            if not seen:
                return evidence
            evidence = dataclasses.replace(
                evidence, detected=False, status="forged", note=CONTESTED_NOTE.format(n=seen)
            )
        self.remember(fingerprint)
        return evidence

    def guard(self, branch):
        """A watermark branch (``batch -> evidence per image``) whose evidence passes :meth:`review`."""

        def guarded(batch) -> Sequence[WatermarkEvidence | None]:
            evidence = branch(batch)
            return [
                self.review(np.asarray(image), item) for image, item in zip(batch.images, evidence, strict=True)
            ]

        return guarded
