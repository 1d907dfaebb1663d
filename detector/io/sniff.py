"""What kind of image a byte string is, from its first bytes (the service refuses other kinds with 415,
and the Content Credentials reader tells the C2PA library the MIME type from the content, not a name)."""

from __future__ import annotations

#: MIME types we accept as uploads, by signature. AVIF/HEIF are ISO-BMFF with an image brand.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"\xff\x0a", 0, "image/jxl"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "image/jxl"),
)
_BMFF_BRANDS = {b"avif": "image/avif", b"avis": "image/avif", b"heic": "image/heic", b"heix": "image/heic"}
IMAGE_MIME_TYPES = frozenset({mime for _, _, mime in _MAGIC} | {"image/webp"} | set(_BMFF_BRANDS.values()))


def sniff_mime(head: bytes) -> str | None:
    """The image MIME type of data starting with ``head`` (32 bytes suffice), or ``None``."""
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return _BMFF_BRANDS.get(head[8:12])
    return None
