"""Safe file I/O: the one image loader every module uses, and atomic writers."""

from detector.io.atomic import atomic_write_bytes, atomic_write_text, atomic_writer
from detector.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    KEEP_PIXELS,
    MAX_ASPECT,
    MIN_SCORE_SIDE,
    ImageInfo,
    ImageLoadError,
    file_sha256,
    iter_image_files,
    load_image,
    load_image_array,
    probe_image,
)
from detector.io.paths import (
    canonical_path,
    csv_cell,
    csv_text,
    json_line,
    path_from_cells,
    path_hex,
    printable,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "KEEP_PIXELS",
    "MAX_ASPECT",
    "MIN_SCORE_SIDE",
    "canonical_path",
    "csv_cell",
    "csv_text",
    "json_line",
    "path_from_cells",
    "path_hex",
    "printable",
    "ImageInfo",
    "ImageLoadError",
    "file_sha256",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_writer",
    "iter_image_files",
    "load_image",
    "load_image_array",
    "probe_image",
]
