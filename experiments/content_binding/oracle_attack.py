"""The copy attack of an attacker who can ask a detector: copy marks from many sources, keep what passes.

The suite's copy attack (``experiments/watermark_attacks``) transplants one marked image's residual
onto each clean photo. An attacker who owns S marked images of different content (one generator's
output) and can query a detector (our service, say) simply tries each on the photo they want to
frame, and keeps the first that reads ``watermarked``. Whether a copied mark passes is the binding's
decision alone (the copied payload is valid): the mark's hash, made for the source, must be accepted
against the photo's received hashes. So this measures it at the hash level, on many sources, for the
v1 binding (15 features, any 2 of 16 bits) and the shipped v2 (63 features, 2 of the 5 least
certain), over several keys:

* per (photo, source) pair, the share accepted (q);
* per photo, the chance that an attacker with S sources frames it, 1 - (1 - q_photo)^S, averaged.

Targets: the suite's 70 crops of the photos the watermark never saw (its test photos: this only
measures, nothing is chosen here). Sources: crops of the nine training photos (the suite's attacker
draws from them) and generated images of the corpus.

    DETECTOR_PHOTO_STORE=/path/to/photos python experiments/content_binding/oracle_attack.py \
        --corpus data/demo/manifest.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "watermark_attacks"))

from capture import generated_rows  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.io import load_image_array  # noqa: E402
from detector.watermark.binding import received_hashes  # noqa: E402
from detector.watermark.payload import PayloadCodec, WatermarkKey  # noqa: E402

#: label -> (hash scheme, doubtful bits): v1 as shipped before, v2 as shipped now.
SCHEMES = {
    "v1 (any 2 of 16 bits, 15 features)": ("dct-simhash-v1", 16),
    "v2 (2 of the 5 least certain, 63 features)": ("dct-simhash-v2", 5),
}
SOURCES = (1, 10, 100, 1000)


def _hashes(images, key, scheme):
    return [received_hashes(x, key, 16, scheme) for x in images]


def accepted_share(codec: PayloadCodec, targets, sources) -> np.ndarray:
    """(targets,) share of sources whose mark hash the binding test accepts on each target."""
    out = np.zeros(len(targets))
    for t, (hashes, margins) in enumerate(targets):
        fixed = codec._certain_bits(hashes, margins)  # the bits that must agree
        src = np.stack([h[0] for h, _ in sources])  # a mark carries the hash of its source as read
        differ = src[:, None, :] != hashes[None, :, :]  # (sources, views, bits)
        ok = (differ.sum(-1) <= codec.tolerance) & ~(differ & fixed[None]).any(-1)
        out[t] = ok.any(-1).mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="a corpus manifest: its generated images as sources")
    parser.add_argument("--generated", type=int, default=1500)
    parser.add_argument("--crops", type=int, default=300, help="crops of the training photos as sources")
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "oracle_attack.json"))
    args = parser.parse_args()
    from detector.watermark.train import CHECKPOINT_TRAINED_ON, unseen_photos

    targets = [x for _, x in crops(load_photos(unseen_photos()), 70, 384, seed=0)]  # the suite's crops
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    sources = [x for _, x in crops(trained, args.crops, 384, seed=9)]
    if args.corpus:
        root = Path(args.corpus).parent
        sources += [load_image_array(root / r["path"]) for r in generated_rows(args.corpus, args.generated)]
    report = {
        "provenance": provenance(args.corpus),
        "targets": len(targets),
        "sources": len(sources),
        "keys": args.keys,
        "schemes": {},
    }
    print(f"{len(targets)} target photos, {len(sources)} sources, {args.keys} keys\n")
    print(
        "| binding | pairs accepted (q) | photos with q > 0 | "
        + " | ".join(f"framed, S={s}" for s in SOURCES)
    )
    print("| --- " * (3 + len(SOURCES)) + "|")
    for name, (scheme, doubtful) in SCHEMES.items():
        shares = []
        for k in range(args.keys):
            key = WatermarkKey(bytes([k + 1]) * 32)
            codec = PayloadCodec(key, 64, 16, 16, 2, 2, doubtful)
            shares.append(accepted_share(codec, _hashes(targets, key, scheme), _hashes(sources, key, scheme)))
        q = np.stack(shares)  # (keys, targets)
        framed = {s: float((1 - (1 - q) ** s).mean()) for s in SOURCES}
        report["schemes"][name] = {
            "pairs_accepted": float(q.mean()),
            "photos_with_any": float((q > 0).mean()),
            "framed": framed,
        }
        print(
            f"| {name} | {q.mean():.4%} | {(q > 0).mean():.2f} | "
            + " | ".join(f"{framed[s]:.3f}" for s in SOURCES)
            + " |"
        )
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
