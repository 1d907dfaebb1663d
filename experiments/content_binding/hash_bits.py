"""More content-hash bits: what they would cost benign edits and save against copied marks.

The one photo a copied mark frames in the suite (`skimage-astronaut`, 512 px) is a hash collision:
its 16-bit hash and the attacker image's differ in 2 of the received hash's 5 least certain bits,
which the binding accepts. More bits make collisions rarer and benign edits more likely to flip a
bit too many. Before changing the mark's format (the bits are carried in the mark), this measures both
sides at the hash level with the shipped rule (at most 2 differing bits, all among the received hash's
5 least certain, two views):

* benign: the share of edited crops whose received hashes still accept the original's hash, on the
  choice set of `experiments/watermark_finetune/heldout.py` (held-out crops of the nine training
  photos; the suite's edits that keep the picture upright, as in `hash_tolerance.py`);
* copies: the share of (photo, source) pairs whose source hash a photo accepts (`oracle_attack.py`'s
  q), the suite's 70 unseen 384 px crops as targets, 300 training-photo crops as sources, 8 keys;
* the suite's own copy pairs (photo i under attacker image i % 8, its key, at 384 and 512 px): which
  photos' hashes accept their attacker's.

Measures only; nothing is chosen on the unseen photos.

    python experiments/content_binding/hash_bits.py        # writes hash_bits.json and hash_bits.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "watermark_attacks"))
sys.path.insert(0, str(HERE.parent / "watermark_finetune"))

import attacks  # noqa: E402
from heldout import crops as choice_crops  # noqa: E402
from oracle_attack import accepted_share  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark.api import CONTENT_DOUBTFUL, CONTENT_TOLERANCE, CONTENT_VIEWS  # noqa: E402
from detector.watermark.binding import received_hashes  # noqa: E402
from detector.watermark.payload import PayloadCodec, WatermarkKey  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON, unseen_photos  # noqa: E402


def codec_for(key: WatermarkKey, bits: int) -> PayloadCodec:
    return PayloadCodec(key, 64, 16, bits, CONTENT_TOLERANCE, CONTENT_VIEWS, CONTENT_DOUBTFUL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 20, 24])
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "hash_bits.json")
    args = parser.parse_args()

    key = WatermarkKey(hashlib.sha256(b"watermark-attack-suite").digest())
    originals = choice_crops(0.3, 192, 6, 7)
    edits = {
        name: fn
        for name, fn in attacks.TRANSFORMS.items()
        if not name.startswith(("rotate", "crop", "chain")) and name != "none"
    }
    edited = {name: [fn(x) for x in originals] for name, fn in edits.items()}
    benign: dict[int, dict[str, float]] = {}
    for bits in args.bits:
        codec = codec_for(key, bits)
        sources = [received_hashes(x, key, bits) for x in originals]
        benign[bits] = {}
        for name, images in edited.items():
            kept = [
                accepted_share(codec, [received_hashes(y, key, bits)], [source])[0]
                for y, source in zip(images, sources, strict=True)
            ]
            benign[bits][name] = float(np.mean(kept))
        print(f"{bits} bits: benign edits kept {np.mean(list(benign[bits].values())):.4f}", file=sys.stderr)

    targets = [x for _, x in crops(load_photos(unseen_photos()), 70, 384, seed=0)]
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    sources = [x for _, x in crops(trained, 300, 384, seed=9)]
    copies: dict[int, dict[str, float]] = {}
    for bits in args.bits:
        q = []
        for k in range(args.keys):
            key_k = WatermarkKey(bytes([k + 1]) * 32)
            q.append(
                accepted_share(
                    codec_for(key_k, bits),
                    [received_hashes(x, key_k, bits) for x in targets],
                    [received_hashes(x, key_k, bits) for x in sources],
                )
            )
        q = np.stack(q)  # (keys, targets)
        copies[bits] = {"pairs_accepted": float(q.mean()), "photos_with_any": float((q > 0).mean())}
        print(f"{bits} bits: copies accepted {q.mean():.5f}", file=sys.stderr)

    suite_pairs: dict[int, dict[str, list[str]]] = {b: {} for b in args.bits}
    for size in (384, 512):
        photos = crops(load_photos(unseen_photos()), 70, size, seed=0)
        attacker = [x for _, x in crops(trained, 8, size, 1)]  # run.py's attacker images
        for bits in args.bits:
            codec = codec_for(key, bits)
            marks = [received_hashes(x, key, bits) for x in attacker]
            suite_pairs[bits][str(size)] = [
                name
                for i, (name, x) in enumerate(photos)
                if accepted_share(codec, [received_hashes(x, key, bits)], [marks[i % len(marks)]])[0]
            ]

    report = {
        "provenance": provenance(None),
        "rule": f"at most {CONTENT_TOLERANCE} of the {CONTENT_DOUBTFUL} least certain bits, {CONTENT_VIEWS} views",
        "choice_crops": len(originals),
        "targets": len(targets),
        "sources": len(sources),
        "keys": args.keys,
        "benign_kept": {str(b): v for b, v in benign.items()},
        "copies": {str(b): v for b, v in copies.items()},
        "suite_copy_pairs_accepted": {str(b): v for b, v in suite_pairs.items()},
    }
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    lines = [
        "# Content-hash bits: benign edits kept against copied marks accepted",
        "",
        f"Command: `python experiments/content_binding/hash_bits.py`; commit `{report['provenance'].get('commit')}`; "
        f"rule: {report['rule']}. Benign: {len(originals)} held-out 192 px crops of the training photos, "
        f"each edit. Copies: {len(targets)} unseen 384 px crops x {len(sources)} training-photo crops, "
        f"{args.keys} keys (q: share of pairs accepted).",
        "",
        "| edit | " + " | ".join(f"{b} bits" for b in args.bits) + " |",
        "| --- |" + " ---: |" * len(args.bits),
    ]
    for name in edits:
        lines.append(f"| {name} | " + " | ".join(f"{benign[b][name]:.3f}" for b in args.bits) + " |")
    lines.append(
        "| **benign edits kept, mean** | "
        + " | ".join(f"**{np.mean(list(benign[b].values())):.4f}**" for b in args.bits)
        + " |"
    )
    lines.append(
        "| **copies accepted (q)** | "
        + " | ".join(f"**{copies[b]['pairs_accepted']:.5f}**" for b in args.bits)
        + " |"
    )
    lines.append(
        "| photos with any copy accepted | "
        + " | ".join(f"{copies[b]['photos_with_any']:.3f}" for b in args.bits)
        + " |"
    )
    for size in ("384", "512"):
        lines.append(
            f"| the suite's copy pairs accepted, {size} px | "
            + " | ".join(", ".join(suite_pairs[b][size]) or "none" for b in args.bits)
            + " |"
        )
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
