"""How well does each diffusion-inversion statistic separate real photos from each *seen* family?

The bundle's inversion branch fits one logistic regression on every training fake against the reals.
This script asks, on validation photos only (held-out families never enter), which statistics carry
the signal family by family: the per-statistic AUC (0.5 = none; far below 0.5 = the statistic is
*lower* for fakes), and the 5-fold cross-validated AUC of one regression over all families, as the
bundle fits it. Modes: ``lare`` (the bundle's default, one noising step) and ``dire`` (DDIM inversion
and reconstruction, ``--steps`` each way).

    python experiments/inversion_families/run.py --bundle runs/unseen_photos/lora-traces/bundle \\
        --corpus data/demo/manifest.csv --images 700 --out experiments/inversion_families
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from detector.evaluation.provenance import corpus_hash, git_commit


def features(model_dir: Path, mode: str, steps: int, images, records) -> tuple[np.ndarray, list[str], float]:
    from detector.bundle.inversion import InversionBranch
    from detector.data import decode
    from detector.features.inversion import InversionConfig

    branch = InversionBranch.create(str(model_dir), InversionConfig(mode=mode, num_steps=steps))
    start, rows = time.perf_counter(), []
    for i in range(0, len(records), 50):
        rows.append(branch.features([decode(images.resolve(r)) for r in records[i : i + 50]]))
    return np.concatenate(rows), list(branch.names), (time.perf_counter() - start) / len(records)


def family_table(feats: np.ndarray, names: list[str], families: np.ndarray, fake: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    z = (feats - feats.mean(0)) / np.where(feats.std(0) > 1e-12, feats.std(0), 1.0)
    pooled = cross_val_predict(LogisticRegression(max_iter=2000), z, fake, cv=5, method="decision_function")
    table = {}
    for family in sorted(set(families) - {"real"}):
        m = (families == "real") | (families == family)
        table[family] = {
            "pooled_regression_cv_auc": float(roc_auc_score(fake[m], pooled[m])),
            **{name: float(roc_auc_score(fake[m], feats[m, j])) for j, name in enumerate(names)},
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with an inversion branch")
    parser.add_argument("--corpus", type=Path, default=Path("data/demo/manifest.csv"))
    parser.add_argument("--images", type=int, default=700, help="validation images (a seeded sample)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps each way for dire")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    from detector.corpus import read_manifest

    torch.set_num_threads(1)
    corpus = read_manifest(args.corpus)
    val = [r for r in corpus.records if r.split == "val"]
    val = [val[i] for i in np.random.default_rng(0).permutation(len(val))[: args.images]]
    families = np.array([r.family for r in val])
    fake = np.array([r.is_fake for r in val], dtype=int)
    model_dir = args.bundle / "inversion-model"
    report = {"modes": {}, "n": len(val), "counts": {f: int((families == f).sum()) for f in set(families)}}
    lines = []
    for mode in ("lare", "dire"):
        feats, names, seconds = features(model_dir, mode, args.steps, corpus, val)
        table = family_table(feats, names, families, fake)
        report["modes"][mode] = {"seconds_per_image": seconds, "families": table}
        lines += [f"### {mode} ({seconds * 1000:.0f} ms per image, 1 thread)", ""]
        lines += ["| family | pooled regression (cv) | " + " | ".join(names) + " |"]
        lines += ["| --- " * (len(names) + 2) + "|"]
        for family, row in table.items():
            cells = [f"{row['pooled_regression_cv_auc']:.3f}", *(f"{row[n]:.2f}" for n in names)]
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
        lines.append("")
    report["provenance"] = {
        "commit": git_commit(),
        "corpus": str(args.corpus),
        "corpus_sha256": corpus_hash(args.corpus),
        "bundle": str(args.bundle),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    header = [
        "# Diffusion-inversion statistics by seen family (validation photos)",
        "",
        f"Command: `python experiments/inversion_families/run.py --bundle {args.bundle} --corpus {args.corpus} "
        f"--images {args.images} --steps {args.steps}`  ",
        f"Commit: `{report['provenance']['commit']}`; corpus `{args.corpus}` (manifest sha256 "
        f"`{report['provenance']['corpus_sha256']}`); {len(val)} validation images "
        f"({', '.join(f'{k} {v}' for k, v in sorted(report['counts'].items()))}).",
        "",
        "AUC of each statistic for real vs the family (below 0.5: lower for fakes); the pooled column is the "
        "5-fold cross-validated AUC of one logistic regression over every family, as the bundle fits it.",
        "",
    ]
    (args.out / "RESULTS.md").write_text("\n".join(header + lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
