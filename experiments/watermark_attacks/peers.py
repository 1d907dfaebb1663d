"""The attack suite's attacks on the peer watermarks, on the suite's images, beside our figures.

Peers: invisible-watermark (``dwtDct``, ``dwtDctSvd``, ``rivaGan``) and ``blind-watermark``, with the
adapters of ``experiments/watermark_vs_peers`` (``pip install -e ".[peers]"``). Each embeds 32 random
bits (rivaGan's only size) in each image; a peer has no keyed test, so "detected" is the known-message
binomial test at FPR 1e-6 (``P(Bin(32, 1/2) >= k) <= 1e-6``: k >= 30 of 32 bits), the most favourable
reading for them (the verifier knows the message). Decoding is blind, as ours is: the attacked image as
it comes (a resized image is not resized back). Copy attack: the residual of one marked image (same
message), added to a clean photo at the suite's strengths; "spoofed" = that clean photo passes the
test for the copied message. Our rows come from the suite's own ``summary_bound.csv``.

    pip install -e ".[peers]"
    export DETECTOR_PHOTO_STORE=/path/to/photos
    python experiments/watermark_attacks/peers.py --peers dwtDct,dwtDctSvd,blind-watermark
    python experiments/watermark_attacks/peers.py --peers rivaGan --n 10     # slow: seconds a decode
    python experiments/watermark_attacks/peers.py --report-only

Writes ``peers/<peer>.csv`` (one row per image and attack) and ``peers/RESULTS.md`` from every CSV there.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import attacks  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import git_commit  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark.payload import binomial_pvalue  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON, unseen_photos  # noqa: E402

N_BITS = 32
FPR = 1e-6
PEERS = ("dwtDct", "dwtDctSvd", "rivaGan", "blind-watermark")
COPY_ALPHAS = (0.25, 0.5, 1.0, 2.0)
OUT = HERE / "peers"


def peer_adapters():
    """The adapter classes of experiments/watermark_vs_peers/run.py (one definition of each peer)."""
    path = HERE.parent / "watermark_vs_peers" / "run.py"
    spec = importlib.util.spec_from_file_location("watermark_vs_peers_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_peer(name: str):
    module = peer_adapters()
    if name == "blind-watermark":
        return module.BlindWatermark(N_BITS)
    return module.ImWatermark(name, N_BITS)


def detected(bits: np.ndarray, message: np.ndarray) -> tuple[bool, float]:
    k = int((np.asarray(bits)[:N_BITS] == message).sum())
    return binomial_pvalue(k, N_BITS) <= FPR, k / N_BITS


def safe_decode(peer, image: np.ndarray) -> np.ndarray:
    """A decode that raises (an image too small for the method) reads as coin flips: a miss."""
    try:
        bits = np.asarray(peer.decode(image), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - third-party decoders raise anything on odd sizes
        return np.full(N_BITS, 2, np.uint8)  # matches no bit
    return bits if len(bits) >= N_BITS else np.pad(bits, (0, N_BITS - len(bits)), constant_values=2)


def run_peer(name: str, images, attacker_image: np.ndarray, out: Path) -> None:
    peer = make_peer(name)
    rng = np.random.default_rng(0)
    rows = []
    copy_message = rng.integers(0, 2, N_BITS).astype(np.uint8)
    estimate = attacks.residual(peer.embed(attacker_image, copy_message))
    for i, (image_name, clean) in enumerate(images):
        message = rng.integers(0, 2, N_BITS).astype(np.uint8)
        marked = peer.embed(clean, message)
        for attack, fn in attacks.TRANSFORMS.items():
            attacked = fn(marked)
            hit, acc = detected(safe_decode(peer, attacked), message)
            if attack == "none":  # the embedding's own cost
                psnr = attacks.psnr(marked, clean)
            elif attack in ("jpeg50", "webp50", "nlm"):  # the attack's cost, picture in place
                psnr = attacks.psnr(attacked, marked)
            else:
                psnr = None
            rows.append(
                {"attack": attack, "image": image_name, "detected": hit, "bit_accuracy": acc, "psnr": psnr}
            )
        for alpha in COPY_ALPHAS:
            forged = attacks.add_estimate(clean, estimate, alpha)
            hit, acc = detected(safe_decode(peer, forged), copy_message)
            rows.append(
                {
                    "attack": f"copy1 x{alpha:g}",
                    "image": image_name,
                    "detected": hit,
                    "bit_accuracy": acc,
                    "psnr": attacks.psnr(forged, clean),
                }
            )
        print(f"{name}: {i + 1}/{len(images)} {image_name}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    text = [list(rows[0])] + [[r[k] for k in rows[0]] for r in rows]
    with open(out / f"{name}.csv.tmp", "w", newline="") as fh:
        csv.writer(fh).writerows(text)
    (out / f"{name}.csv.tmp").replace(out / f"{name}.csv")


def ours() -> dict[str, dict]:
    path = HERE / "summary_bound.csv"
    with open(path, newline="") as fh:
        return {r["attack"]: r for r in csv.DictReader(fh)}


def report(out: Path, commit: str) -> None:
    tables = {}
    for name in PEERS:
        path = out / f"{name}.csv"
        if path.is_file():
            with open(path, newline="") as fh:
                tables[name] = list(csv.DictReader(fh))
    if not tables:
        raise SystemExit(f"{out}: no peer results yet")
    our = ours()
    attack_names = list(dict.fromkeys(r["attack"] for rows in tables.values() for r in rows))
    lines = [
        "# The attack suite on the peer watermarks",
        "",
        "Commands: `python experiments/watermark_attacks/peers.py --peers dwtDct,dwtDctSvd,blind-watermark`, "
        "`python experiments/watermark_attacks/peers.py --peers rivaGan --n 10` (its decoder takes seconds), "
        "then `python experiments/watermark_attacks/peers.py --report-only`.  ",
        f"Commit: `{commit}`. Images: the suite's crops (384 px) of catalogued photos the checkpoint never "
        "saw (n per column below); peers embed 32 random bits at their default strength; detected = "
        "known-message binomial test at FPR 1e-6 (>= 30 of 32 bits), decoding blind. Ours: the suite's "
        "`summary_bound.csv` (TPR = `watermarked` with the right payload; copy rows: share declared "
        "`watermarked` on clean photos). Spoof rows: clean photos passing the test for a copied mark.",
        "",
        "| attack | ours | " + " | ".join(tables) + " |",
        "| --- | --- | " + " | ".join("---" for _ in tables) + " |",
    ]
    marked_psnr = []
    for name, rows in tables.items():
        values = [float(r["psnr"]) for r in rows if r["attack"] == "none" and r["psnr"] not in ("", "None")]
        marked_psnr.append(f"{name} {np.mean(values):.1f} dB (n={len(values)})")
    for attack in attack_names:
        cells = []
        for rows in tables.values():
            sub = [r for r in rows if r["attack"] == attack]
            cells.append(f"{np.mean([r['detected'] == 'True' for r in sub]):.2f}" if sub else "-")
        mine = our.get(attack)
        ours_cell = (
            "-" if mine is None else (mine.get("watermarked") if attack.startswith("copy") else mine["tpr"])
        )
        lines.append(f"| {attack} | {ours_cell} | " + " | ".join(cells) + " |")
    lines += ["", "Embedding PSNR: ours 41.0 dB (the suite); " + ", ".join(marked_psnr) + "."]
    atomic_write_text(out / "RESULTS.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="dwtDct,dwtDctSvd,blind-watermark")
    parser.add_argument("--n", type=int, default=None, help="images (default: one per unseen photo)")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--commit", default=None, help="the commit the CSVs were measured with (default HEAD)"
    )
    args = parser.parse_args()
    if not args.report_only:
        held = load_photos(unseen_photos())
        trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
        images = crops(held, args.n or len(held), args.size, seed=0)  # the suite's images
        attacker = crops(trained, 1, args.size, seed=1)[0][1]
        for name in args.peers.split(","):
            if name not in PEERS:
                raise SystemExit(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
            run_peer(name, images, attacker, OUT)
    report(OUT, args.commit or git_commit())


if __name__ == "__main__":
    main()
