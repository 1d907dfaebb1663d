"""From an HTTP request to decoded images: size-capped body, in-memory multipart, per-file checks.

Nothing is decoded before its limits pass: the body is read up to ``max_request_bytes`` (413 beyond),
the multipart parts stay in memory, each file's type is sniffed from its first bytes (415 for anything
but an image), its header's pixel count is checked against the budget (413), and only then is it decoded
(400 with the reason when it cannot be). Each accepted file is also written to a private temporary file,
which the Content Credentials reader reads and the caller removes once the file is scored.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from PIL import Image

from detector.data import decode
from detector.errors import DetectorError
from detector.io import ImageLoadError
from detector.io.sniff import sniff_mime

_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/jxl": ".jxl",
}


class ServiceError(DetectorError):
    """An HTTP error answered as JSON: ``{"error": code, "detail": message, "files": [...]}``."""

    def __init__(
        self, status: int, code: str, detail: str, files: list | None = None, headers: dict | None = None
    ):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.files = files or []
        self.headers = headers or {}

    def body(self) -> dict:
        data = {"error": self.code, "detail": self.detail}
        if self.files:
            data["files"] = self.files
        return data


@dataclass
class Upload:
    """One accepted image: its client-side name, decoded pixels and the temporary copy of its bytes."""

    name: str
    image: Image.Image
    temp_path: str

    def remove(self) -> None:
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass


async def read_body(request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ServiceError(
                    413, "too_large", f"request body of {int(declared):,} bytes exceeds {limit:,}"
                )
        except ValueError:
            raise ServiceError(400, "bad_request", "invalid Content-Length header") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServiceError(413, "too_large", f"request body exceeds {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_files(request, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file part of a multipart/form-data body, parsed in memory."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ServiceError(
            415,
            "unsupported_media_type",
            "send images as multipart/form-data file fields (e.g. curl -F file=@x.jpg)",
        )

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=16)
    parser.spool_max_size = len(body) + 1  # keep every part in memory: uploads never touch the disk here
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        status = 413 if "Too many files" in str(exc) else 400
        raise ServiceError(status, "too_many_files" if status == 413 else "bad_request", str(exc)) from None
    files = []
    for _, value in form.multi_items():
        if isinstance(value, str):
            continue
        data = await value.read()
        await value.close()
        files.append((_safe_name(value.filename, len(files)), data))
    if not files:
        raise ServiceError(400, "no_files", "no image file in the request (multipart file field expected)")
    return files


def _safe_name(name: str | None, index: int) -> str:
    """The client's file name without any directory part (it is echoed back, never used as a path)."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    return base[:255] or f"upload-{index}"


def check_type(name: str, data: bytes) -> str:
    """The sniffed MIME type, or 415 naming the file."""
    mime = sniff_mime(data[:32])
    if mime is None:
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"{name}: not a supported image type",
            files=[
                {
                    "file": name,
                    "reason": "not an image (JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, HEIC, JPEG XL)",
                }
            ],
        )
    return mime


def decode_upload(name: str, data: bytes, max_pixels: int, temp_dir: str) -> Upload:
    """Type check, pixel budget, decode, temporary copy; a :class:`ServiceError` says what is wrong."""
    mime = check_type(name, data)
    try:
        image = decode(data, max_pixels=max_pixels)  # as every scorer reads a file (detector.data)
    except ImageLoadError as exc:
        too_large = exc.reason.startswith("too large")
        raise ServiceError(
            413 if too_large else 400,
            "too_many_pixels" if too_large else "bad_image",
            f"{name}: {exc.reason}",
            files=[{"file": name, "reason": exc.reason}],
        ) from None
    fd, temp_path = tempfile.mkstemp(suffix=_EXTENSIONS.get(mime, ""), dir=temp_dir)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return Upload(name, image, temp_path)
