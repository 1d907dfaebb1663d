"""The probe guard against the oracle copy attack: what it stops, what it costs, how an attacker evades it.

The service's probe guard (``detector.scoring.probes``) remembers the coarse content of every upload
whose mark read ``forged`` and contests a later ``watermarked`` reading of the same picture (content
features within cosine ``--similarity``). This script measures, with the shipped binding (v2):

1. **Choice set** (crops of the watermark's nine training photos, generated images of the corpus):
   how often two different pictures match (crops of different photos; generated images of different
   source photos; generated images against crops), and how far the suite's benign edits move a
   picture (cosine to the unedited crop). This is where the threshold was chosen.
2. **Test** (the suite's 70 crops of photos the watermark never saw; measured, nothing chosen):
   * copies: each photo plus the real mark residual of marked training crops, at 1x, 2x, 3x (down to
     about 31 dB): the share that match the photo, i.e. whose second try the guard contests;
   * false contests: how often two different test photos match, or a test photo matches a choice-set
     image (what a memory full of other pictures costs an honest marked image);
   * evasion: an attacker who edits the photo before each try so that no try matches an earlier one.
     Edits considered (all keep the picture recognisable): rotation up to 30 degrees (steps of 2),
     crops keeping 50-100% of the area (centre and corners), and both; variants taken greedily, least
     edited first, while they match no variant already taken (a lower bound on what a cleverer packing
     finds). Each kept variant gets one try with a fresh source; its chance to pass is its measured
     acceptance share against the sources (as in ``oracle_attack.py``, ``--keys`` keys), so the attack
     frames the photo with 1 - prod(1 - q_v) over the first min(S, variants) variants.

    DETECTOR_PHOTO_STORE=/path/to/photos python experiments/content_binding/probe_guard.py \
        --corpus data/demo/manifest.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "watermark_attacks"))

import attacks  # noqa: E402
from capture import generated_rows  # noqa: E402
from oracle_attack import accepted_share  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.io import load_image_array  # noqa: E402
from detector.service.probes import SIMILARITY, ProbeGuard  # noqa: E402
from detector.watermark.api import CONTENT_DOUBTFUL, Watermarker  # noqa: E402
from detector.watermark.binding import received_hashes  # noqa: E402
from detector.watermark.payload import PayloadCodec, WatermarkKey  # noqa: E402

THRESHOLDS = (0.95, 0.96, 0.97, 0.98, 0.99)
SOURCES = (1, 10, 20, 100, 1000)  # 20: what the default budget allows one key a day
ANGLES = [a for step in range(0, 31, 2) for a in ((step, -step) if step else (0,))]
AREAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
FAMILIES = {
    "rotation <= 30 deg": lambda angle, area: area == 1.0,
    "crop >= 50% area": lambda angle, area: angle == 0,
    "rotation and crop": lambda angle, area: True,
}
GUARD = ProbeGuard(capacity=1)


def fingerprints(images) -> np.ndarray:
    return np.stack([GUARD.fingerprint(x) for x in images]).astype(np.float64)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) max cosine over the two views of each."""
    return np.einsum("avf,bwf->abvw", a, b).reshape(len(a), len(b), -1).max(-1)


def match_rates(cos: np.ndarray) -> dict[str, float]:
    return {f"{t:.2f}": float((cos >= t).mean()) for t in THRESHOLDS}


def variants(photo: np.ndarray):
    """(angle, area, image) for every rotation x crop, least edited first."""
    side = photo.shape[0]
    out = []
    for angle in ANGLES:
        turned = np.asarray(Image.fromarray(photo).rotate(angle, resample=Image.Resampling.BILINEAR))
        for area in AREAS:
            keep = int(round(side * math.sqrt(area)))
            spots = [((side - keep) // 2,) * 2]
            if area < 1.0:
                spots += [(0, 0), (0, side - keep), (side - keep, 0), (side - keep, side - keep)]
            for top, left in spots:
                out.append((angle, area, turned[top : top + keep, left : left + keep]))
    out.sort(key=lambda v: abs(v[0]) / 30 + (1 - v[1]) / 0.5)
    return out


def greedy_distinct(fps: np.ndarray, threshold: float) -> list[int]:
    """Indices taken in order while each matches none taken before."""
    taken: list[int] = []
    for i in range(len(fps)):
        if not taken or similarity(fps[i : i + 1], fps[taken]).max() < threshold:
            taken.append(i)
    return taken


def choice_set(trained, generated: list[np.ndarray], groups: list[str]) -> dict:
    """Threshold table on the choice set (``groups``: the photo each generated image was made from)."""
    marked = crops(trained, 45, 384, seed=5)
    clean = fingerprints([x for _, x in marked])
    transforms = attacks.TRANSFORMS | attacks.BENIGN_EXTRA
    edits = {}
    for name, fn in transforms.items():
        edited = fingerprints([fn(x) for _, x in marked])
        cos = np.einsum("nvf,nwf->nvw", clean, edited).reshape(len(clean), -1).max(-1)
        edits[name] = {"min": float(cos.min()), "p05": float(np.percentile(cos, 5))}
    extra = crops(trained, 270, 384, seed=6)
    photo = np.array([n.split("#")[0] for n, _ in extra])
    cf = fingerprints([x for _, x in extra])
    cc = similarity(cf, cf)
    different = np.triu(photo[:, None] != photo[None, :], 1)
    gf = fingerprints(generated)
    group = np.array(groups)
    gg = similarity(gf, gf)
    other_group = np.triu(group[:, None] != group[None, :], 1)
    same_group = np.triu(group[:, None] == group[None, :], 1)
    other_photo = group[:, None] != photo[None, :]  # a generated image made from another photo
    return {
        "benign_edits_cosine_to_unedited": edits,
        "crops_of_different_photos": {"pairs": int(different.sum()), **match_rates(cc[different])},
        "generated_of_different_photos": {"pairs": int(other_group.sum()), **match_rates(gg[other_group])},
        "generated_of_the_same_photo": {"pairs": int(same_group.sum()), **match_rates(gg[same_group])},
        "generated_vs_crops_of_other_photos": {
            "pairs": int(other_photo.sum()),
            **match_rates(similarity(gf, cf)[other_photo]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a corpus manifest: its generated images")
    parser.add_argument("--generated", type=int, default=1500)
    parser.add_argument("--crops", type=int, default=300, help="crops of the training photos as sources")
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--similarity", type=float, default=SIMILARITY)
    parser.add_argument("--out", default=str(HERE / "probe_guard.json"))
    args = parser.parse_args()
    import torch

    from detector.watermark.train import CHECKPOINT_TRAINED_ON, unseen_photos

    torch.set_num_threads(1)
    t = args.similarity
    root = Path(args.corpus).parent
    rows = generated_rows(args.corpus, args.generated)
    generated = [load_image_array(root / r["path"]) for r in rows]
    groups = [r["group"] for r in rows]
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    report = {"provenance": provenance(args.corpus), "similarity": t, "choice_set": None, "test": {}}

    print("1. choice set", flush=True)
    report["choice_set"] = choice_set(trained, generated, groups)
    for name, rates in report["choice_set"].items():
        if name != "benign_edits_cosine_to_unedited":
            print(f"  {name}: {rates}")

    print("2. test: the suite's 70 unseen crops", flush=True)
    named = crops(load_photos(unseen_photos()), 70, 384, seed=0)
    targets = [x for _, x in named]
    tf = fingerprints(targets)
    # copies: real mark residuals of marked training crops
    wm = Watermarker(WatermarkKey(hashlib.sha256(b"probe-guard-sources").digest()))
    residuals = []
    for _, src in crops(trained, 10, 384, seed=11):
        residuals.append(wm.embed_array(src, 1234).astype(np.float32) - src)
    copies, psnr = {}, {}
    for strength in (1.0, 2.0, 3.0):
        matched, worst = [], []
        for x, f in zip(targets, tf, strict=True):
            forged = [np.clip(x + strength * r + 0.5, 0, 255).astype(np.uint8) for r in residuals]
            matched.append(similarity(f[None], fingerprints(forged))[0] >= t)
            mse = [np.mean((y.astype(np.float64) - x) ** 2) for y in forged]
            worst.append(10 * np.log10(255**2 / max(mse)))
        copies[f"{strength:g}x"] = float(np.mean(matched))
        psnr[f"{strength:g}x"] = float(np.min(worst))
    report["test"]["copies_matched"] = copies
    report["test"]["copies_min_psnr_db"] = psnr
    print(f"  copies matching their photo: {copies} (lowest PSNR {psnr})", flush=True)

    source_crops = crops(trained, args.crops, 384, seed=9)
    sources = [x for _, x in source_crops] + generated
    sf = fingerprints(sources)
    tt = similarity(tf, tf)[np.triu_indices(len(tf), 1)]
    # a generated image of the corpus made from the same photo is the same picture, not a false match
    source_photo = np.array([n.split("#")[0] for n, _ in source_crops] + groups)
    target_photo = np.array([n.split("#")[0] for n, _ in named])
    other = target_photo[:, None] != source_photo[None, :]
    report["test"]["false_contests"] = {
        "test_photo_pairs": {"pairs": len(tt), **match_rates(tt)},
        "test_vs_choice_set_other_photos": {
            "pairs": int(other.sum()),
            **match_rates(similarity(tf, sf)[other]),
        },
        "test_vs_generated_of_the_same_photo": {
            "pairs": int((~other).sum()),
            **match_rates(similarity(tf, sf)[~other]),
        },
    }
    print(f"  false contests: {report['test']['false_contests']}", flush=True)

    keys = [WatermarkKey(bytes([k + 1]) * 32) for k in range(args.keys)]
    codecs = [PayloadCodec(k, 64, 16, 16, 2, 2, CONTENT_DOUBTFUL) for k in keys]
    source_hashes = [[received_hashes(x, k, 16) for x in sources] for k in keys]

    def shares(images) -> np.ndarray:
        """(images,) acceptance share against the sources, averaged over keys."""
        return np.mean(
            [
                accepted_share(c, [received_hashes(x, k, 16) for x in images], sh)
                for c, k, sh in zip(codecs, keys, source_hashes, strict=True)
            ],
            axis=0,
        )

    q_plain = shares(targets)
    framed = {f: {s: [] for s in SOURCES} for f in ["no guard", *FAMILIES]}
    distinct = {f: [] for f in FAMILIES}
    for i, photo in enumerate(targets):
        cands = variants(photo)
        fps = fingerprints([v[2] for v in cands])
        for s in SOURCES:
            framed["no guard"][s].append(1 - (1 - q_plain[i]) ** s)
        for family, allowed in FAMILIES.items():
            idx = [j for j, (angle, area, _) in enumerate(cands) if allowed(angle, area)]
            taken = [idx[j] for j in greedy_distinct(fps[idx], t)]
            distinct[family].append(len(taken))
            q = shares([cands[j][2] for j in taken[: max(SOURCES)]])
            for s in SOURCES:
                framed[family][s].append(1 - float(np.prod(1 - q[:s])))
        print(
            f"  photo {i + 1}/{len(targets)}: distinct variants "
            + ", ".join(f"{f} {distinct[f][-1]}" for f in FAMILIES),
            flush=True,
        )
    report["test"]["pairs_accepted_unedited"] = float(q_plain.mean())
    report["test"]["distinct_variants"] = {
        f: {"median": float(np.median(v)), "min": int(min(v)), "max": int(max(v))}
        for f, v in distinct.items()
    }
    report["test"]["framed"] = {
        f: {str(s): float(np.mean(v)) for s, v in d.items()} for f, d in framed.items()
    }
    print(
        "\n| attacker | distinct tries per photo (median, min-max) | " + " | ".join(f"S={s}" for s in SOURCES)
    )
    print("| --- " * (2 + len(SOURCES)) + "|")
    for f, d in report["test"]["framed"].items():
        tries = (
            "unlimited (no guard)"
            if f == "no guard"
            else "{median:g} ({min}-{max})".format(**report["test"]["distinct_variants"][f])
        )
        label = "copies onto the photo as it is" if f == "no guard" else f"with the guard, edits: {f}"
        print(f"| {label} | {tries} | " + " | ".join(f"{d[str(s)]:.3f}" for s in SOURCES) + " |")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
