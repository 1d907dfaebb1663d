"""Load benchmark: `detector serve` under N concurrent clients vs `detector score` on the same images.

For each configuration and round: `detector score` scores the image set once (its own timer: decode to
fsynced output, model loading excluded, its first batch included); then `detector serve` (same bundle,
same options, same torch threads; started fresh, 4 warm-up requests not counted) is hammered by N client
threads for a fixed time, each posting one image per request over a kept-alive connection. CLI and
service runs alternate round by round (our machine is shared: the load from others drifts), and the
medians are compared. Every answer is checked against the CLI's line for that image (same verdict, p_ai within
1e-4): "wrong" counts mismatches, "lost" counts requests without a 200 answer. Prints a markdown table
and writes JSON.

    experiments/service_load/make_bundle.sh runs/service-load
    python experiments/service_load/run.py --bundle runs/service-load/bundle --clients 8 --seconds 20 \
        --out experiments/service_load/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detector.corpus.photos import bundled_photos, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.service.process import serve_subprocess  # noqa: E402

CONFIGS = {
    "core (--no-watermark)": ["--no-watermark"],
    "with watermark decoder (--watermark-search fast)": ["--watermark-search", "fast"],
}


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` JPEG crops (``size`` px) of the bundled photos, all different."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [image for _, image in load_photos(bundled_photos()) if min(image.shape[:2]) >= size]
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(np.ascontiguousarray(photo[y : y + size, x : x + size])).save(path, quality=90)
        paths.append(path)
    return paths


def run_cli(
    bundle: Path, folder: Path, options: list[str], env: dict, work: Path, batch: int
) -> tuple[dict, dict]:
    out, summary = work / "cli.jsonl", work / "cli_summary.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "detector",
        "score",
        str(folder),
        "--model",
        str(bundle),
        "--out",
        str(out),
    ]
    command += ["--batch-size", str(batch), "--workers", "2", "--summary", str(summary), *options]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return json.loads(summary.read_text()), {Path(line["path"]).name: line for line in lines}


def run_service(bundle, images, options, env, expected, clients, seconds, batch) -> dict:
    args = [
        "--model",
        str(bundle),
        "--rate-limit",
        "0",
        "--anonymous-rate-limit",
        "0",
        "--batch-size",
        str(batch),
    ]
    args += ["--max-queue", str(max(64, 4 * clients)), "--decode-workers", "2", *options]
    payloads = [(p.name, p.read_bytes()) for p in images]
    latencies: list[float] = []
    counts = {"ok": 0, "wrong": 0, "lost": 0}
    lock = threading.Lock()
    with serve_subprocess(args, env=env) as url:
        with httpx.Client(timeout=120) as warm:  # first requests pay one-off costs (allocations, caches)
            for name, data in payloads[:4]:
                warm.post(url + "/v1/score", files={"file": (name, data)}).raise_for_status()
        before = httpx.get(url + "/v1/health").json()
        stop = time.monotonic() + seconds

        def client(index: int) -> None:
            k = index
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop:
                    name, data = payloads[k % len(payloads)]
                    k += clients
                    start = time.perf_counter()
                    try:
                        response = http.post(url + "/v1/score", files={"file": (name, data)})
                        elapsed = time.perf_counter() - start
                        ok = response.status_code == 200
                        got = response.json()["results"][0] if ok else None
                    except httpx.HTTPError:
                        ok, got, elapsed = False, None, time.perf_counter() - start
                    with lock:
                        if not ok:
                            counts["lost"] += 1
                            continue
                        want = expected[name]
                        right = (
                            got["path"] == name
                            and got["verdict"] == want["verdict"]
                            and abs(got["p_ai"] - want["p_ai"]) <= 1e-4
                        )
                        counts["ok" if right else "wrong"] += 1
                        latencies.append(elapsed)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        after = httpx.get(url + "/v1/health").json()
    batches = after["batches"] - before["batches"]
    done = counts["ok"] + counts["wrong"]
    latencies.sort()
    return {
        **counts,
        "seconds": round(wall, 2),
        "images_per_second": round(done / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
        if latencies
        else None,
        "mean_batch": round((after["images"] - before["images"]) / batches, 2) if batches else None,
        "largest_batch": after["largest_batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS) for both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", choices=list(CONFIGS), action="append", help="default: all")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    report = {"provenance": provenance(), "command": " ".join(sys.argv), "images": args.images, "size": args.size, "clients": args.clients,
              "threads": args.threads, "cpus": os.cpu_count(), "configs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = make_images(work / "images", args.images, args.size)
        for name in args.config or list(CONFIGS):
            options, rounds = CONFIGS[name], []
            for r in range(args.rounds):
                summary, expected = run_cli(args.bundle, work / "images", options, env, work, args.batch_size)
                service = run_service(
                    args.bundle, images, options, env, expected, args.clients, args.seconds, args.batch_size
                )
                rounds.append({"cli_images_per_second": summary["images_per_second"], "service": service})
                print(
                    f"{name} round {r}: CLI {summary['images_per_second']} img/s; service {service}",
                    flush=True,
                )
            cli_rate = statistics.median(x["cli_images_per_second"] for x in rounds)
            median = {
                key: statistics.median(x["service"][key] for x in rounds)
                for key in ("images_per_second", "p50_ms", "p99_ms", "mean_batch")
            }
            total = {key: sum(x["service"][key] for x in rounds) for key in ("ok", "wrong", "lost")}
            report["configs"][name] = {
                "cli_images_per_second": cli_rate,
                "service": {**median, **total},
                "ratio": round(median["images_per_second"] / cli_rate, 2),
                "rounds": rounds,
            }
    print(
        "\n| configuration | `detector score` img/s | service img/s | ratio | p50 ms | p99 ms | mean batch | ok | wrong | lost |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in report["configs"].items():
        s = row["service"]
        print(f"| {name} | {row['cli_images_per_second']} | {s['images_per_second']} | {row['ratio']} | {s['p50_ms']} | "
              f"{s['p99_ms']} | {s['mean_batch']} | {s['ok']} | {s['wrong']} | {s['lost']} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
