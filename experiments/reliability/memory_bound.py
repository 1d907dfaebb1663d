"""Peak memory of the entry points on images whose cost is set by their shape, not their file size.

    python experiments/reliability/memory_bound.py --large 20

Writes (into a temporary folder) ``--large`` copies of one valid 8000 x 8000 PNG (64 MP each, a few
hundred kB: a smooth gradient), a 1 x 150,000 PNG, a 1 x 1,000,000 PNG and a corrupt 7999 x 7999 JPEG
that decodes mostly grey, builds the tiny test bundle, and runs in fresh processes ``detector score`` (batch 16) over the 64 MP
folder and over the hostile shapes. Reports each process's peak resident memory (``ru_maxrss``), time
and the lines it wrote, as one JSON object. (``attribute predict`` and ``watermark detect`` read images
through the same loader and limits; tests/test_badinputs.py runs them over the same shapes.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def peak_mb(command: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit code) of ``command`` run in a fresh child process."""
    code = (
        "import resource, subprocess, sys, json; "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode]))"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *command], env=env, capture_output=True, text=True)
    kb, returncode = json.loads(out.stdout)
    return kb / 1024, time.perf_counter() - start, returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", type=int, default=20)
    args = parser.parse_args()
    from detector.testing.tinybundle import build_tiny_bundle

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = build_tiny_bundle(tmp / "tiny")
        large = tmp / "large"
        large.mkdir()
        ramp = np.linspace(0, 255, 8000, dtype=np.float32)
        array = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
        Image.fromarray(array).save(large / "big00.png", compress_level=9)
        del array
        for i in range(1, args.large):
            shutil.copy(large / "big00.png", large / f"big{i:02d}.png")
        shapes = tmp / "shapes"
        shapes.mkdir()
        Image.new("RGB", (1, 150_000), (100, 110, 120)).save(shapes / "thin.png")
        Image.new("RGB", (1, 1_000_000), (100, 110, 120)).save(shapes / "thinner.png")
        grey = np.full((7999, 7999, 3), 90, np.uint8)
        grey[:400] = np.random.default_rng(0).integers(0, 256, (400, 7999, 3))
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
        del grey
        data = buffer.getvalue()
        (shapes / "greyfill.jpg").write_bytes(data[: len(data) // 20] + b"\xff\xd9")
        report["large_file_mb"] = round(os.path.getsize(large / "big00.png") / 2**20, 2)
        small = tmp / "small"
        small.mkdir()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(small / "one.png")

        detector = [sys.executable, "-m", "detector"]
        runs = {
            "score_one_64px_image (baseline)": [*detector, "score", str(small), "-m", str(bundle)],
            f"score_64mp_x{args.large}_batch16": [*detector, "score", str(large), "-m", str(bundle)],
            "score_hostile_shapes": [*detector, "score", str(shapes), "-m", str(bundle)],
        }
        for name, command in runs.items():
            out = tmp / f"{name}.jsonl"
            mb, seconds, code = peak_mb([*command, "-o", str(out)], env)
            lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            report[name] = {
                "peak_mb": round(mb),
                "seconds": round(seconds, 1),
                "exit_code": code,
                "lines": len(lines),
                "errors": {Path(r["path"]).name: r["error"] for r in lines if r["error"]},
            }
    from detector.evaluation.provenance import provenance

    report["provenance"] = provenance()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
