"""The probe guard: the service must not be the oracle a copy attacker needs to frame a photo.

The attack (``experiments/content_binding/oracle_attack.py``): the attacker owns many marked images of
other content, copies each one's mark onto the photo they want to frame, submits it, and keeps the
first that reads ``watermarked``. Each try passes the content binding with a small probability
(about 0.1% per pair on our photos), but tries are cheap: with 1,000 sources the attack frames 42% of
photos. Every failed try reads ``forged``. So the guard contests (reports ``forged``) a
``watermarked`` reading when either

* **the picture** was submitted before carrying a mark made for other content: the guard remembers
  the coarse content (the binding's own features, :func:`detector.watermark.binding.content_features`,
  of the image as read and inside any uniform border) of the last ``capacity`` images whose mark read
  ``forged`` (or was contested), and two images whose features lie within cosine ``similarity`` are
  the same picture. The attacker gets one try per picture; more tries need edits that move the
  picture's coarse content (a crop or a turn of a few degrees does: measured in
  ``experiments/content_binding/probe_guard.py``), and so,
* **the caller** has spent their budget of ``forged_per_day`` forged readings (a token bucket: the
  budget refills over a day). Honest callers rarely see ``forged``; an attacker who edits the photo
  before every try still gets about ``forged_per_day`` tries a day per API key.

What it costs: an honest marked image whose picture was earlier submitted with a copied mark, or
scored by a caller over budget, reads ``forged`` too; its note says why. State lives in the process;
with a state file (``detector serve --probe-state``) it is saved atomically at most once a minute and
at shutdown, and read back at start, so a restart does not hand the attacker fresh tries.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path

import numpy as np

from detector.errors import DetectorError
from detector.io import atomic_write_bytes
from detector.result import WatermarkEvidence
from detector.service.auth import RateLimiter
from detector.watermark.binding import SCHEME, content_features, trim_border

#: Cosine between content features at and above which two images are the same picture. Chosen on the
#: choice set (experiments/content_binding/probe_guard.py): the lowest threshold at which pairs of
#: different photos match at most once in 10^5 (there: none of 435,000 pairs of photo crops or crops and
#: generated images, 7 of 1.1 million pairs of generated images, all smooth wallpapers).
SIMILARITY = 0.98
#: Pictures remembered (oldest forgotten first). With the memory full of unrelated pictures, about 1.6%
#: of honest marked images would be contested (measured on the unseen photos): kept small on purpose.
CAPACITY = 1_000
#: Forged readings a caller may cause a day before their `watermarked` readings are contested. A
#: judgement, not a fit: honest traffic reads `forged` only for marked images changed beyond the
#: binding's tolerance (a crop to 10% of the area, say); a caller who scans many such raises it.
FORGED_PER_DAY = 20
SEEN_NOTE = (
    "this picture was submitted before carrying {n} mark(s) made for other content: a copy attacker "
    "tries marks until one passes, so a mark that passes now is taken as a copy too (probe guard)"
)
OVER_BUDGET_NOTE = (
    "this caller's submissions carried more marks made for other content than the daily budget of "
    "{budget}: a copy attacker tries marks until one passes, so no mark is taken as genuine for this "
    "caller until the budget refills (probe guard)"
)


#: Seconds between two saves of the state file while readings come in.
SAVE_EVERY_S = 60.0


class ProbeStateError(DetectorError, ValueError):
    """A probe-guard state file that cannot be read back (the guard would start blind)."""


class ProbeGuard:
    """Remembers pictures and callers that carried ``forged`` marks; contests ``watermarked`` readings on
    them. Thread-safe (the service's workers share one)."""

    def __init__(
        self,
        capacity: int = CAPACITY,
        similarity: float = SIMILARITY,
        forged_per_day: float = FORGED_PER_DAY,
        scheme: str = SCHEME,
    ):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0.0 < similarity <= 1.0:
            raise ValueError("similarity must be in (0, 1]")
        if forged_per_day < 0:
            raise ValueError("forged_per_day must be >= 0 (0: no caller budget)")
        self.capacity, self.similarity, self.forged_per_day = capacity, similarity, forged_per_day
        self.scheme = scheme
        width = len(content_features(np.zeros((8, 8, 3), np.uint8), scheme))
        self._memory = np.zeros((capacity, 2, width), np.float32)
        self._size = 0
        self._next = 0
        self._lock = threading.Lock()  # the memory's arrays
        self._decide = threading.Lock()  # one review's check-and-remember at a time
        self.budgets = RateLimiter()
        self.state_path: Path | None = None
        self._saved_at = 0.0

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

    def _over_budget(self, caller: str | None, spend: bool) -> bool:
        if caller is None or not self.forged_per_day:
            return False
        per_minute, burst = self.forged_per_day / 1440.0, self.forged_per_day
        if spend:
            return self.budgets.allow(caller, per_minute, burst) > 0
        return self.budgets.tokens(caller, per_minute, burst) < 1.0

    @staticmethod
    def concerns(evidence: WatermarkEvidence | None) -> bool:
        """Whether :meth:`review` looks at this evidence (a mark of our key was read at all)."""
        return evidence is not None and evidence.status in ("forged", "watermarked")

    def review(
        self, image: np.ndarray, evidence: WatermarkEvidence | None, caller: str | None = None
    ) -> WatermarkEvidence | None:
        """The evidence as the guard lets it stand. ``forged`` readings are remembered and spend the
        caller's budget; a ``watermarked`` reading on a remembered picture, or for a caller without
        budget, becomes ``forged`` (and counts as one)."""
        if not self.concerns(evidence):
            return evidence
        fingerprint = self.fingerprint(image)
        with self._decide:  # check and remember at once: concurrent tries on a picture get one between them
            if evidence.status == "watermarked":
                seen = self.matches(fingerprint)
                if seen:
                    note = SEEN_NOTE.format(n=seen)
                elif self._over_budget(caller, spend=False):
                    note = OVER_BUDGET_NOTE.format(budget=f"{self.forged_per_day:g}")
                else:
                    return evidence
                evidence = dataclasses.replace(evidence, detected=False, status="forged", note=note)
            self.remember(fingerprint)
            self._over_budget(caller, spend=True)
        if self.state_path is not None and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()
        return evidence

    # ------------------------------------------------------------------ state file
    def save(self, path: str | Path | None = None) -> None:
        """Write the remembered pictures (oldest first) and the callers' budgets, atomically."""
        path = Path(path or self.state_path)
        with self._lock:  # a full ring's oldest entry is the next to be overwritten
            full = self._size == self.capacity
            memory = np.roll(self._memory, -self._next, axis=0) if full else self._memory[: self._size].copy()
        buckets = self.budgets.snapshot()
        buffer = io.BytesIO()
        np.savez(
            buffer,
            scheme=np.array(self.scheme),
            memory=memory,
            callers=np.array(list(buckets), dtype=str),
            budgets=np.array(list(buckets.values()), dtype=np.float64).reshape(-1, 2),
        )
        atomic_write_bytes(path, buffer.getvalue())
        self._saved_at = time.monotonic()

    def attach(self, path: str | Path) -> None:
        """Use ``path`` as the state file: read it back if it exists, save to it from now on."""
        path = Path(path)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as data:
                    scheme, memory = str(data["scheme"]), np.asarray(data["memory"], np.float32)
                    callers, budgets = [str(c) for c in data["callers"]], np.asarray(data["budgets"], float)
            except (OSError, ValueError, KeyError) as exc:
                raise ProbeStateError(f"{path}: not a probe-guard state file ({exc})") from exc
            if scheme != self.scheme or memory.shape[1:] != self._memory.shape[1:]:
                raise ProbeStateError(f"{path}: saved for another content hash ({scheme}, {memory.shape})")
            if budgets.shape != (len(callers), 2):
                raise ProbeStateError(f"{path}: malformed caller budgets")
            memory = memory[-self.capacity :]
            with self._lock:
                self._memory[: len(memory)] = memory
                self._size, self._next = len(memory), len(memory) % self.capacity
            self.budgets.restore(
                {c: (float(t), float(w)) for c, (t, w) in zip(callers, budgets, strict=True)}
            )
        self.state_path = path
        self._saved_at = time.monotonic()

    def describe(self) -> dict:
        return {
            "capacity": self.capacity,
            "similarity": self.similarity,
            "forged_per_day": self.forged_per_day,
            "remembered": len(self),
            "state_file": self.state_path is not None,
        }
