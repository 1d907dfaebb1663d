"""Embed and detect on arrays and files: the model, the keyed payload and the registry put together.

``Watermarker(key).embed_file(src, dst, payload)`` writes a watermarked copy in the source's format;
``Watermarker(key).detect_file(path)`` returns a :class:`WatermarkResult` (bits, bit accuracy,
p-value, decision, payload, registry record) that the CLI prints and the fusion consumes.

**Statuses.** ``watermarked``: a mark of this key whose content hash matches the image (binding, see
:mod:`detector.watermark.binding`); ``forged``: a mark of this key made for other content (a copy
attack, or an edit that changed the picture beyond the hash's tolerance, e.g. a small crop);
``inverted``: the *complement* of a valid word was read (bit accuracy near 0), which is what
subtracting an over-estimated mark leaves: someone tried to remove a mark. Only ``watermarked`` is
evidence of a generator; the other two say the mark was tampered with and are never evidence of AI.
``absent``: none of these. Each claim is tested at ``fpr``; see :mod:`detector.watermark.payload`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.errors import DetectorError
from detector.io import ImageLoadError, atomic_writer, file_sha256, load_image_array
from detector.watermark import sync
from detector.watermark.binding import SCHEME as BINDING_SCHEME
from detector.watermark.binding import SCHEMES as BINDING_SCHEMES
from detector.watermark.binding import content_hash, hash_to_int, received_hashes, unrotate
from detector.watermark.model import WatermarkModel
from detector.watermark.payload import PayloadCodec, WatermarkKey, load_key
from detector.watermark.refine import refine_residual
from detector.watermark.registry import PayloadRecord, PayloadRegistry

DEFAULT_FPR = 1e-6
#: Decoder search profiles (see :meth:`Watermarker.search_image`). "full" (the default): plain, mirrored
#: and lattice-synchronised readings (any resize 0.3x-2x, aspect change, rotation, flip), coarse then
#: fine; "exhaustive": the same candidates, each at every sub-cell phase (slower, the reference the
#: full search is measured against); "fast": the native grid, no rotation (misses resized, rotated or
#: mirrored marks). All choose their reading from the image alone, so the keyed test's FPR holds.
SEARCHES = ("full", "exhaustive", "fast")
#: The full search's fine pass reads this many of the coarse pass's most confident candidates.
FINE_CANDIDATES = 2
#: Content-hash bits carried in the mark (0 turns binding off: legacy marks), and the differences still
#: read as the same content: at most CONTENT_TOLERANCE bits, all among the received hash's
#: CONTENT_DOUBTFUL least certain (chosen in experiments/content_binding on the choice set).
CONTENT_BITS = 16
CONTENT_TOLERANCE = 2
CONTENT_DOUBTFUL = 5
#: Each binding scheme's doubtful bits (v1 marks were tested with any 2 of 16 bits).
SCHEME_DOUBTFUL = {"dct-simhash-v1": 16, "dct-simhash-v2": CONTENT_DOUBTFUL}
#: Received hashes the binding test compares with: the image as read and inside its uniform border.
CONTENT_VIEWS = 2
#: Residual rotations (degrees) tried on each synchronised view (the lattice estimate is within ~1).
SYNC_ANGLES = (0.0, -1.5, 1.5)
STATUSES = ("watermarked", "forged", "inverted", "absent")
CHECKPOINT_ENV = "DETECTOR_WATERMARK_CHECKPOINT"
#: Decoding reads a centre window at most this large (native pixels): the decoder pools globally, so a
#: window carries the whole message, and huge images decode in bounded time.
DECODE_WINDOW = 1024
#: Seconds the registered payload ids are kept before the registry is read again (a long-running
#: service sees new registrations; the set read is never a function of the image tested).
REGISTERED_TTL = 60.0
#: Formats written back as they came; lossy ones at a high quality.
_SAVE_OPTIONS = {
    "JPEG": {"quality": 95, "subsampling": 0},
    "WEBP": {"quality": 95},
    "PNG": {},
    "BMP": {},
    "TIFF": {},
}
_EXT_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def default_binding_tag() -> str:
    """The registry's name for the default binding (what ``detector watermark embed`` writes)."""
    return f"{BINDING_SCHEME}/{CONTENT_BITS}/{CONTENT_TOLERANCE}of{CONTENT_DOUBTFUL}"


class WatermarkError(DetectorError, RuntimeError):
    """A watermarking operation cannot be done (model missing, output exists, bad payload...)."""


def default_checkpoint() -> Path:
    """The shipped model: ``$DETECTOR_WATERMARK_CHECKPOINT``, else the package's ``checkpoints/watermark/``."""
    from importlib import resources

    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        return Path(env)
    return Path(str(resources.files("detector").joinpath("checkpoints", "watermark", "model.safetensors")))


def load_model(checkpoint: str | os.PathLike | None = None) -> WatermarkModel:
    path = Path(checkpoint) if checkpoint else default_checkpoint()
    if not path.is_file():
        raise WatermarkError(
            f"watermark checkpoint not found: {path} (pass --checkpoint, or set ${CHECKPOINT_ENV}; the shipped "
            "model lives in checkpoints/watermark/ of the source checkout)"
        )
    try:
        return WatermarkModel.load(path)
    except (ValueError, OSError) as exc:
        raise WatermarkError(str(exc)) from exc


@dataclass
class WatermarkResult:
    """One image's watermark verdict. ``bits`` are the raw decoded bits (embedded order)."""

    path: str | None
    watermarked: bool
    p_value: float
    fpr: float
    payload: int | None
    bit_accuracy: float | None  # agreement with the re-encoded word of the decoded payload
    matches: int
    n_bits: int
    bits: str
    key_id: str
    record: dict | None = None
    model: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)
    status: str = "absent"  # one of STATUSES
    content_distance: int | None = None  # decoded vs. recomputed content hash (binding on), in bits
    score: float | None = None  # the test's confidence-weighted agreement, -1 .. 1 (see payload.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


class Watermarker:
    """The keyed watermark: one model, one key, an optional registry."""

    def __init__(
        self,
        key: WatermarkKey | str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        model: WatermarkModel | None = None,
        payload_bits: int = 16,
        registry: PayloadRegistry | str | os.PathLike | None = None,
        fpr: float = DEFAULT_FPR,
        search: str = "full",
        content_bits: int = CONTENT_BITS,
        tolerance: int = CONTENT_TOLERANCE,
        doubtful: int | None = None,
        scheme: str = BINDING_SCHEME,
        refine_steps: int = 0,
    ):
        self.key = key if isinstance(key, WatermarkKey) else load_key(key)
        self.model = model if model is not None else load_model(checkpoint)
        self.model.eval()
        self.model_name = str(checkpoint or (default_checkpoint() if model is None else "in-memory"))
        if scheme not in BINDING_SCHEMES:
            raise WatermarkError(f"unknown binding scheme {scheme!r} (known: {sorted(BINDING_SCHEMES)})")
        #: The content hash's scheme: the default for new marks; "dct-simhash-v1" verifies marks made
        #: before v2 (``doubtful`` defaults to the scheme's own).
        self.scheme = scheme
        doubtful = SCHEME_DOUBTFUL[scheme] if doubtful is None else doubtful
        try:
            self.codec = PayloadCodec(
                self.key,
                self.model.cfg.n_bits,
                payload_bits,
                content_bits,
                tolerance,
                CONTENT_VIEWS,
                doubtful,
            )
        except ValueError as exc:
            raise WatermarkError(str(exc)) from exc
        if registry is not None and not isinstance(registry, PayloadRegistry):
            registry = PayloadRegistry(registry)
        self.registry = registry
        self._registered: tuple[float, np.ndarray | None] | None = None  # (read at, ids)
        if not 0 < fpr < 1:
            raise WatermarkError(f"fpr must be in (0, 1), got {fpr}")
        self.fpr = fpr
        if search not in SEARCHES:
            raise WatermarkError(f"search must be one of {SEARCHES}, got {search!r}")
        self.search = search
        if refine_steps < 0:
            raise WatermarkError(f"refine_steps must be >= 0, got {refine_steps}")
        #: Embedding: optimisation steps per image (0, the default: the embedder's plain mark; 15 was
        #: chosen on the choice set). Opt-in until the attack suite has measured it whole: see
        #: experiments/watermark_refine/RESULTS.md (a copied refined mark framed one more photo).
        self.refine_steps = refine_steps

    # -- arrays ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_array(
        self,
        image: np.ndarray,
        payload: int,
        target_psnr: float | None = None,
        refine_steps: int | None = None,
    ) -> np.ndarray:
        """HxWx3 uint8 -> watermarked HxWx3 uint8 carrying ``payload`` under this key.

        ``refine_steps`` (default ``self.refine_steps``) optimises the mark for this image so that it
        survives JPEG, blur and downscaling (:mod:`.refine`); 0 is the embedder's plain mark."""
        bits = torch.from_numpy(
            self.codec.encode(payload, self.content_of(image)).astype(np.int64)
        ).unsqueeze(0)
        x = _to_tensor(image)
        steps = self.refine_steps if refine_steps is None else refine_steps
        residual = refine_residual(self.model, x, bits, target_psnr, steps)
        return _to_uint8((x + residual).clamp(0, 1))

    def content_of(self, image: np.ndarray) -> int:
        """The keyed content hash the mark carries for ``image`` (0 when binding is off)."""
        if not self.codec.content_bits:
            return 0
        return hash_to_int(content_hash(image, self.key, self.codec.content_bits, self.scheme))

    @property
    def binding(self) -> dict:
        """What a verifier needs besides the key and the model: the hash scheme and its parameters."""
        return {
            "scheme": self.scheme if self.codec.content_bits else "none",
            "content_bits": self.codec.content_bits,
            "tolerance": self.codec.tolerance,
            "doubtful": self.codec.doubtful,  # the tolerated bits are among the received hash's least certain
            # received hashes compared (as read, inside a uniform border): the test's correction counts them
            "views": self.codec.content_views if self.codec.content_bits else 0,
        }

    def decode_logits(self, image: np.ndarray) -> np.ndarray:
        """The decoder's logits (embedded bit order) for the most confident reading."""
        return self.decode(image)[0]

    @property
    def binding_tag(self) -> str | None:
        """The binding as the registry records it: ``scheme/content_bits/{tolerance}of{doubtful}`` (None
        when unbound)."""
        b = self.binding
        return (
            f"{b['scheme']}/{b['content_bits']}/{b['tolerance']}of{b['doubtful']}"
            if b["content_bits"]
            else None
        )

    @property
    def registered(self) -> np.ndarray | None:
        """Payload ids the registry holds for this key (None without a registry or with none): the test
        spends half its ``fpr`` on these (:mod:`.payload`, "Registered payloads"). Read at most every
        ``REGISTERED_TTL`` seconds; records of another binding are left out (their marks do not
        decode under this one)."""
        if self.registry is None:
            return None
        now = time.monotonic()
        if self._registered is None or now - self._registered[0] > REGISTERED_TTL:
            tag = self.binding_tag
            ids = sorted(
                {r.payload_id for r in self.registry.records(self.key.key_id) if r.binding in (None, tag)}
            )
            self._registered = (now, np.array(ids, dtype=np.int64) if ids else None)
        return self._registered[1]

    @torch.no_grad()
    def decode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of the most confident reading, and the image as that reading saw it (geometry undone,
        for the content hash). See :meth:`search_image`."""
        logits, seen, _ = self.search_image(image)
        return logits, seen

    @torch.no_grad()
    def search_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
        """``(logits, seen, coarse confidence)``: the most confident reading, the image as it saw it, and
        the best confidence of the coarse pass (None where there is none).

        Why not a pre-check that stops at a low coarse confidence: marks weakened by JPEG 50 or
        denoising read with confidences (1.5-2) inside the range of unmarked photos (1-3), so any cut
        that saves time loses them (measured in experiments/watermark_attacks/RESULTS.md).

        Candidates: the plain reading (1x and 0.5x grids, rotations to 6 degrees), the image mirrored,
        and the lattice-synchronised views of :mod:`.sync` (any resize 0.3x-2x, aspect change, rotation
        to 45 degrees), each also mirrored. "full": a coarse pass reads every candidate at sub-cell phase
        0 (but the plain reading's native grid at every phase), stopping at the first confident one, then
        a fine pass reads the ``FINE_CANDIDATES`` most confident at every phase; "exhaustive": every
        candidate at every phase (about 2.5x the work on an unmarked image); "fast": the native grid
        only. The most confident reading wins, a choice from the image alone, so the keyed test's FPR
        holds whatever is searched."""
        whole = image  # what the content hash is taken on: the whole image, never the decoding window
        h, w = image.shape[:2]
        if max(h, w) > DECODE_WINDOW:  # the decoder reads a centre window anyway: skip converting the rest
            top, left = max(0, (h - DECODE_WINDOW) // 2), max(0, (w - DECODE_WINDOW) // 2)
            image = image[top : top + DECODE_WINDOW, left : left + DECODE_WINDOW]
        model = self.model
        stop, native = model.cfg.stop_confidence, float(model.cfg.scale)
        if self.search == "fast":
            logits, _, _ = self._read(image, (native,), (0.0,))
            return logits, whole, None
        coarse = self.search == "full"
        own: dict = {}  # the decoder's feature maps of `image` itself, shared by its readings and the sync

        def candidates():
            # The plain reading's native grid at every phase even in the coarse pass: a crop shifts
            # the phase, and crops are the commonest edit (the other grids and views: phase 0 first).
            yield image, (lambda: whole), (native,), model.search_angles, False
            halves = tuple(f for f in model.search_factors if f != native)
            if halves:
                yield image, (lambda: whole), halves, model.search_angles, coarse
            yield _mirror(image), (lambda: _mirror(whole)), (native,), SYNC_ANGLES, coarse
            for view, m in sync.canonical_views(image, model.decoder, model.cfg.scale, cache=own):
                seen = (lambda m=m: sync.view_of(whole, m)) if whole is not image else (lambda v=view: v)
                yield view, seen, (native,), SYNC_ANGLES, coarse
                yield _mirror(view), (lambda s=seen: _mirror(s())), (native,), SYNC_ANGLES, coarse

        read = []  # (confidence, logits, seen, angle, view, factor, angles, coarsely read) per reading
        for view, seen, factors, angles, rough in candidates():
            logits, factor, angle = self._read(view, factors, angles, rough, own if view is image else None)
            read.append((float(np.abs(logits).mean()), logits, seen, angle, view, factor, angles, rough))
            if read[-1][0] >= stop:
                break
        first = max(r[0] for r in read)
        if coarse and first < stop:
            ranked = sorted(read, key=lambda r: -r[0])[:FINE_CANDIDATES]
            for _, _, seen, _, view, factor, angles, rough in ranked:
                if rough:  # read at phase 0 only so far
                    logits, _, angle = self._read(
                        view, (factor,), angles, cache=own if view is image else None
                    )
                    read.append(
                        (float(np.abs(logits).mean()), logits, seen, angle, view, factor, angles, False)
                    )
        conf, logits, seen, angle = max(read, key=lambda r: r[0])[:4]
        return logits, unrotate(seen(), angle), first if coarse else None

    def _read(
        self, image: np.ndarray, factors, angles, coarse: bool = False, cache: dict | None = None
    ) -> tuple[np.ndarray, float, float]:
        """The decoder's most confident reading: ``(logits, grid factor, angle)`` (``cache``: see
        ``Decoder.forward``)."""
        logits, choice = self.model.decoder(
            _to_tensor(image),
            factors,
            angles=angles,
            stop_confidence=self.model.cfg.stop_confidence,
            return_choice=True,
            phases=not coarse,
            cache=cache,
        )
        return logits[0].detach().numpy(), choice[0][0], choice[0][1]

    def detect_array(self, image: np.ndarray, path: str | None = None) -> WatermarkResult:
        logits, seen, first = self.search_image(image)
        extra = {"binding": self.binding} | ({} if first is None else {"coarse_confidence": round(first, 4)})
        return self._result(logits, seen, path, extra)

    def _result(self, logits, seen, path, extra: dict) -> WatermarkResult:
        bits = (logits > 0).astype(np.uint8)
        received = margins = None
        if self.codec.content_bits:  # hashed as the decoder saw it: the geometry it found undone
            received, margins = received_hashes(seen, self.key, self.codec.content_bits, self.scheme)
        registered = self.registered
        if registered is not None:
            extra["registered_payloads"] = len(registered)
        decoded = self.codec.decode(bits, np.abs(logits), self.fpr, received, margins, registered)
        status = "watermarked" if decoded.watermarked else "forged" if decoded.forged else "absent"
        if status == "absent":
            # Subtracting an over-estimated mark flips its bits: the complement of a valid word reads then.
            flipped = self.codec.decode(1 - bits, np.abs(logits), self.fpr, received, margins, registered)
            if flipped.watermarked or flipped.forged:
                status = "inverted"
                decoded = dataclasses.replace(
                    flipped,
                    matches=self.codec.n_bits - flipped.matches,
                    score=None if flipped.score is None else -flipped.score,
                    watermarked=False,
                    forged=False,
                )
        if registered is not None:  # which half of the test the reported p-value is from
            extra["registered_test"] = decoded.registered
        record = None
        if status != "absent" and self.registry is not None:
            found = self.registry.lookup(self.key.key_id, decoded.payload)
            record = found.to_dict() if found else None
        if record and record.get("binding") not in (None, self.binding_tag):
            extra["binding_mismatch"] = f"the registry says this payload's marks carry {record['binding']}"
        shown = status in ("watermarked", "forged", "inverted")
        return WatermarkResult(
            path=path,
            watermarked=decoded.watermarked,
            p_value=decoded.p_value,
            fpr=self.fpr,
            payload=decoded.payload if shown else None,
            bit_accuracy=decoded.bit_accuracy,
            matches=decoded.matches,
            n_bits=decoded.n_bits,
            bits="".join(map(str, bits)),
            key_id=self.key.key_id,
            record=record,
            model=self.model_name,
            extra=extra
            | ({} if shown or decoded.payload is None else {"candidate_payload": decoded.payload}),
            status=status,
            content_distance=decoded.distance,
            score=None if decoded.score is None else round(decoded.score, 4),
        )

    # -- files ----------------------------------------------------------------------------------------
    def detect_file(self, path: str | os.PathLike) -> WatermarkResult:
        """Detect in one file; an unreadable image raises :class:`ImageLoadError` (path and reason)."""
        return self.detect_array(load_image_array(path), path=str(path))

    def embed_file(
        self,
        src: str | os.PathLike,
        dst: str | os.PathLike,
        payload: int,
        overwrite: bool = False,
        target_psnr: float | None = None,
    ) -> Path:
        """Write a watermarked copy of ``src`` to ``dst`` in ``dst``'s format (atomically)."""
        from PIL import Image

        dst = Path(dst)
        if dst.exists() and not overwrite:
            raise WatermarkError(f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)")
        if Path(src).resolve() == dst.resolve() and not overwrite:
            raise WatermarkError(f"{dst}: output is the input")
        image = load_image_array(src)
        marked = self.embed_array(image, payload, target_psnr)
        fmt = _EXT_FORMAT.get(dst.suffix.lower())
        if fmt is None:
            raise WatermarkError(
                f"{dst}: unsupported output format {dst.suffix!r} (use one of {sorted(_EXT_FORMAT)})"
            )
        with atomic_writer(dst, "wb") as handle:
            Image.fromarray(marked).save(handle, format=fmt, **_SAVE_OPTIONS[fmt])
        return dst

    def register(
        self,
        generator: str,
        model_version: str = "",
        content_hash: str | None = None,
        payload_id: int | None = None,
    ) -> PayloadRecord:
        if self.registry is None:
            raise WatermarkError("no registry configured (pass --registry URL)")
        self._registered = None  # the next detection reads the registry again
        return self.registry.register(
            self.key.key_id,
            generator,
            model_version,
            content_hash,
            payload_id,
            max_payload=self.codec.max_payload,
            binding=self.binding_tag,
        )


def hash_file(path: str | os.PathLike) -> str:
    return file_sha256(path)


__all__ = [
    "DEFAULT_FPR",
    "SEARCHES",
    "STATUSES",
    "ImageLoadError",
    "WatermarkError",
    "WatermarkResult",
    "Watermarker",
    "default_checkpoint",
    "load_model",
]
