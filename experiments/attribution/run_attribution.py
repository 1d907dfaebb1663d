"""Open-set attribution table: closed-set, open-set (held-out generators as unknowns) and few-shot enrolment.

Input: a feature source with generator labels and train/val/test splits (a ``.npz``, or the folder that
``detector features extract --out DIR`` writes). Every held-out generator is kept out of training and
threshold fitting; at test time it is the unknown class. Thresholds are fitted on val only.

Then each held-out generator is enrolled from n of its *train/val* vectors (n in --shots, several random
draws) and its *test* vectors are attributed: the enrolment curve.

    python experiments/attribution/run_attribution.py FEATURES --holdout gen_x,gen_y --out experiments/attribution
    python experiments/attribution/run_attribution.py data/demo/manifest.csv --corpus --backbone effnet-lite0 \
        --holdout sdedit-t300,sdedit-t600,vqar-p8,vqar-p4 --out experiments/attribution

writes ``results.json``, ``table.md`` (the markdown pasted into RESULTS.md), ``confusion.png`` and
``enrolment.png`` under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from detector.attribution import UNKNOWN_SCORES, load_features, plot_confusion
from detector.attribution.protocol import (
    AttributionFitConfig,
    enrolment_curve,
    evaluate,
    fit_head,
    make_splits,
)
from detector.evaluation.provenance import provenance
from detector.io import atomic_write_bytes, atomic_write_text


def _f(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "features",
        type=Path,
        help="Feature .npz or extraction folder (with splits), or a corpus with --corpus.",
    )
    parser.add_argument(
        "--corpus",
        action="store_true",
        help="FEATURES is a corpus (folder or manifest): extract frozen --backbone features first.",
    )
    parser.add_argument("--backbone", default="effnet-lite0", help="Registry backbone for --corpus.")
    parser.add_argument("--holdout", required=True, help="Comma-separated generators held out as unknowns.")
    parser.add_argument("--shots", default="1,2,5,10,20,50", help="Enrolment sizes.")
    parser.add_argument("--repeats", type=int, default=5, help="Random enrolment draws per size.")
    parser.add_argument("--score", default="mahalanobis", choices=UNKNOWN_SCORES, help="Rejection score.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    args = parser.parse_args(argv)

    holdout = [g.strip() for g in args.holdout.split(",") if g.strip()]
    data = corpus_features(args.features, args.backbone) if args.corpus else load_features(args.features)
    config = AttributionFitConfig(holdout=holdout, seed=args.seed)
    config.head.score = args.score
    splits = make_splits(data, config)
    if splits.test is None:
        raise SystemExit("the feature source needs a test split for this table")
    head = fit_head(splits, config)
    result = evaluate(head, splits.test)

    # Enrolment pool: held-out generators' train/val rows (never their test rows).
    is_pool = np.array(
        [g in holdout and s in ("train", "val") for g, s in zip(data.generators, data.splits, strict=True)]
    )
    pool = data.select(is_pool)
    shots = [int(s) for s in args.shots.split(",")]
    curve = enrolment_curve(head, pool, splits.test, shots, repeats=args.repeats, seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        result["y_true"],
        result["y_pred"],
        args.out / "confusion.png",
        labels=sorted(set(result["y_true"])),
        title=f"test split, held out: {', '.join(holdout)}",
    )
    _plot_curve(curve, args.out / "enrolment.png")

    closed = result["closed"]
    lines = [
        f"Known generators: {', '.join(head.classes)}; held out (unknown at test): {', '.join(holdout)}.",
        f"Train {len(splits.train)}, val {len(splits.val)}, test {closed['n_known']} known + "
        f"{closed['n_unknown']} unknown rows; feature dim {data.dim}.",
        "",
        f"Closed-set (known test rows): accuracy {_f(closed['closed_set_accuracy'])}, "
        f"macro-F1 {_f(closed['macro_f1'])}.",
        "",
        "| unknown score | AUROC | OSCR | CCR@5%FPR | known kept | unknown rejected |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, report in result["scores"].items():
        lines.append(
            f"| {name}{' (decision)' if name == args.score else ''} | {_f(report.get('unknown_auroc'))} | "
            f"{_f(report.get('oscr'))} | {_f(report.get('ccr_at_5fpr'))} | {_f(report.get('known_accepted'))} | "
            f"{_f(report.get('unknown_rejected'))} |"
        )
    lines += [
        "",
        f"Enrolment ({args.repeats} draws per size; accuracy on the new generator's test rows):",
        "",
        "| generator | shots | new-generator accuracy | known accuracy | new rows still rejected |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in curve:
        lines.append(
            f"| {row['generator']} | {row['shots']} | {_f(row['new_accuracy'])} | {_f(row['known_accuracy'])} | "
            f"{_f(row['new_rejected'])} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "table.md", table)
    out = {
        "features": str(args.features),
        "holdout": holdout,
        "classes": head.classes,
        "thresholds": head.thresholds,
        "closed": closed,
        "scores": result["scores"],
        "enrolment": curve,
        "notes": splits.notes,
        "provenance": provenance(args.features if args.corpus else None),
    }
    atomic_write_text(args.out / "results.json", json.dumps(out, indent=2) + "\n")
    print(table)
    return out


def corpus_features(corpus_path: Path, backbone_name: str, batch_size: int = 32):
    """Frozen backbone features of every image of a corpus (splits, generators and families kept)."""
    import torch

    from detector.attribution import FeatureSet
    from detector.backbones import create_backbone
    from detector.corpus import load_corpus
    from detector.io import ImageLoadError, load_image
    from detector.scoring import Batch, backbone_features

    torch.manual_seed(0)
    corpus = load_corpus(corpus_path)
    features = backbone_features(create_backbone(backbone_name))
    records = [r for r in corpus.records if r.split in ("train", "val", "test")]
    rows, kept = [], []
    for start in range(0, len(records), batch_size):
        images, chunk = [], []
        for record in records[start : start + batch_size]:
            try:
                images.append(load_image(corpus.resolve(record)))
                chunk.append(record)
            except ImageLoadError as exc:
                print(f"skipped {exc}", file=sys.stderr)
        if chunk:
            rows.append(features(Batch([r.path for r in chunk], images)))
            kept.extend(chunk)
    return FeatureSet(
        np.concatenate(rows),
        generators=[r.generator for r in kept],
        paths=[r.path for r in kept],
        splits=[r.split for r in kept],
        families=[r.family or r.generator for r in kept],
    )


def _plot_curve(curve: list[dict], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in sorted({row["generator"] for row in curve}):
        rows = [row for row in curve if row["generator"] == name]
        ax.plot([r["shots"] for r in rows], [r["new_accuracy"] for r in rows], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("enrolment images")
    ax.set_ylabel("accuracy on the new generator")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


if __name__ == "__main__":
    main(sys.argv[1:])
