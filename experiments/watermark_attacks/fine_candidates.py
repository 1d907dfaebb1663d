"""What the staged search's fine pass would gain from reading more candidates, and what it would cost.

Replays the attack suite's marked images that the default search missed and the exhaustive one found
(``lost_vs_exhaustive`` in ``results_bound.csv``) with ``FINE_CANDIDATES`` = 2 (the default), 3, 4 and 6,
and times each setting on unmarked crops made like the FPR run's. Writes ``fine_candidates.md``.

    DETECTOR_PHOTO_STORE=/path/to/photos python experiments/watermark_attacks/fine_candidates.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import attacks  # noqa: E402
from run import PAYLOAD, crops, read_csv  # noqa: E402

from detector.corpus.photos import load_photos  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark import Watermarker, WatermarkKey, api, load_model  # noqa: E402
from detector.watermark.train import unseen_photos  # noqa: E402

SETTINGS = (2, 3, 4, 6)


def main() -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("fpr", HERE.parent / "watermark_fpr" / "run.py")
    fpr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fpr)
    lost = [r for r in read_csv(HERE / "results_bound.csv") if r["lost_vs_exhaustive"] == "True"]
    key = WatermarkKey(hashlib.sha256(b"watermark-attack-suite").digest())  # the suite's key
    wm = Watermarker(key, model=load_model())
    held = load_photos(unseen_photos())
    images = dict(crops(held, len(held), 384, seed=0))  # the suite's images
    clean = [c for _, _, c in fpr.crops(held, 40, seed=7)]
    default = api.FINE_CANDIDATES
    lines = [
        "# Fine-pass candidates: recovered misses vs cost",
        "",
        "Command: `python experiments/watermark_attacks/fine_candidates.py` (see its docstring).",
        "",
        f"| fine candidates | recovered of the {len(lost)} suite misses the exhaustive search finds | "
        "seconds per unmarked crop (40 FPR-style crops, 1 thread) |",
        "| --- | --- | --- |",
    ]
    try:
        for k in SETTINGS:
            api.FINE_CANDIDATES = k
            ok = 0
            for r in lost:
                marked = wm.embed_array(images[r["image"]], PAYLOAD)
                res = wm.detect_array(attacks.TRANSFORMS[r["attack"]](marked))
                ok += res.status == "watermarked" and res.payload == PAYLOAD
            start = time.perf_counter()
            for x in clean:
                wm.detect_array(x)
            seconds = (time.perf_counter() - start) / len(clean)
            lines.append(f"| {k}{' (default)' if k == default else ''} | {ok} | {seconds:.3f} |")
            print(lines[-1], flush=True)
    finally:
        api.FINE_CANDIDATES = default
    atomic_write_text(HERE / "fine_candidates.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
