"""What the payload test costs per image, count test against the confidence-weighted one.

An unmarked image is the costly case (no candidate passes, so every Chase candidate is tried, and the
API decodes twice: as read and inverted). Random words with random confidences stand in for it; the
decoder's search (about 0.3 s per 384 px image, ``experiments/throughput``) is not included.

    python experiments/watermark_attacks/decode_cost.py
"""

from __future__ import annotations

import time

import numpy as np

from detector.watermark.api import CONTENT_BITS, CONTENT_DOUBTFUL, CONTENT_TOLERANCE, CONTENT_VIEWS
from detector.watermark.payload import PayloadCodec, WatermarkKey


def main(n: int = 200) -> None:
    codec = PayloadCodec(
        WatermarkKey(bytes(range(32))),
        64,
        16,
        CONTENT_BITS,
        CONTENT_TOLERANCE,
        CONTENT_VIEWS,
        CONTENT_DOUBTFUL,
    )
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2, (n, 64)).astype(np.uint8)
    confidences = np.abs(rng.standard_normal((n, 64)))
    hashes = rng.integers(0, 2, (n, CONTENT_VIEWS, CONTENT_BITS)).astype(np.uint8)
    margins = np.abs(rng.standard_normal(hashes.shape))
    registry = np.random.default_rng(1).choice(2**16, 100, replace=False)
    for label, weighted, registered in (
        ("count test, plain RS decoding", False, None),
        ("weighted test, Chase decoding", True, None),
        ("weighted test, Chase decoding, 100 registered payloads", True, registry),
    ):
        start = time.perf_counter()
        for word, conf, h, m in zip(words, confidences, hashes, margins, strict=True):
            codec.decode(word, conf if weighted else None, 1e-6, h, m, registered)
        per = (time.perf_counter() - start) / n * 1000
        print(
            f"{label}: {per:.2f} ms per decode ({2 * per:.1f} ms per unmarked image with the inverted check)"
        )


if __name__ == "__main__":
    main()
