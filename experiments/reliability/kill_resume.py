"""Kill ``detector score`` with SIGKILL at random moments, resume each time, and count what was lost.

    python experiments/reliability/kill_resume.py --images 2000 --kills 20 --format jsonl
    python experiments/reliability/kill_resume.py --images 2000 --kills 20 --format csv

Writes ``--images`` small PNGs plus the bad-input corpus (:mod:`detector.testing.badinputs`: odd names,
non-UTF-8 bytes, carriage returns, FIFOs, broken files) into a temporary folder, scores it once without
interruption (the reference), then starts again from nothing and kills the run ``--kills`` times at a
random moment (uniform between 0.5 s and the reference run's duration) before letting the last
``--resume`` finish. It reports lost, duplicated and torn lines, and whether every score equals the
reference's. ``--bundle`` scores with a real bundle; by default a tiny one is built (about 10 s).
Prints one JSON object (the numbers RESULTS.md quotes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def read_output(path: Path, fmt: str) -> tuple[list[str], dict[str, tuple], int]:
    """(paths in order, path -> (p_ai, verdict, error), torn lines) of a finished output."""
    from detector.io import path_from_cells

    paths, values, torn = [], {}, 0
    if fmt == "jsonl":
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            paths.append(row["path"])
            values[row["path"]] = (row["p_ai"], row["verdict"], row["error"])
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                if None in row or len(row) != len(reader.fieldnames):
                    torn += 1
                    continue
                name = path_from_cells(row["path"], row["path_bytes"])
                paths.append(name)
                p_ai = float(row["p_ai"]) if row["p_ai"] else None
                values[name] = (p_ai, row["verdict"] or None, row["error"] or None)
    return paths, values, torn


def score_command(folder: Path, bundle: Path, out: Path, fmt: str, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "detector", "score", str(folder), "-m", str(bundle), "-o", str(out)]
    command += ["-f", fmt, "--batch-size", "16"] + (["--resume"] if resume else [])
    return command


def run(command: list[str], env: dict, kill_after: float | None = None) -> bool:
    """Run to the end (True) or SIGKILL it after ``kill_after`` seconds (False when it was killed)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=kill_after)
        return True
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from detector.testing.badinputs import make_bad_inputs
    from detector.testing.tinybundle import build_tiny_bundle, write_rgb

    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or build_tiny_bundle(tmp / "tiny")
        folder = tmp / "inputs"
        for i in range(args.images):
            write_rgb(folder / f"{i // 500:02d}" / f"img{i:05d}.png", size=(40, 36), seed=i)
        bad = make_bad_inputs(folder / "zz-bad")
        expected = args.images + sum(item.expect != "passed" for item in bad)

        ref_out = tmp / f"reference.{args.format}"
        start = time.perf_counter()
        assert run(score_command(folder, bundle, ref_out, args.format, resume=False), env)
        reference_seconds = time.perf_counter() - start
        ref_paths, ref_values, _ = read_output(ref_out, args.format)

        out = tmp / f"killed.{args.format}"
        kills = resumed_to_end = 0
        first = True
        while kills < args.kills:
            delay = rng.uniform(0.5, max(1.0, reference_seconds))
            finished = run(score_command(folder, bundle, out, args.format, resume=not first), env, delay)
            first = False
            if finished:  # the run ended before the kill: start over so every kill lands mid-run
                resumed_to_end += 1
                out.unlink()
                first = True
                continue
            kills += 1
        assert run(score_command(folder, bundle, out, args.format, resume=True), env)
        paths, values, torn = read_output(out, args.format)
        unique = set(paths)
        report = {
            "format": args.format,
            "images": args.images,
            "bad_inputs": len(bad),
            "expected_lines": expected,
            "reference_lines": len(ref_paths),
            "reference_seconds": round(reference_seconds, 1),
            "kills": kills,
            "runs_that_finished_before_their_kill": resumed_to_end,
            "lines": len(paths),
            "lost": len(set(ref_paths) - unique),
            "duplicated": len(paths) - len(unique),
            "torn": torn,
            "scores_differing_from_reference": sum(values.get(p) != v for p, v in ref_values.items()),
        }
    from detector.evaluation.provenance import provenance

    report["provenance"] = provenance()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
