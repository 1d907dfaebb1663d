"""Fused provenance score vs. each branch alone, on a bundle's *test* split, clean and attacked.

The bundle (``detector bundle`` / ``detector demo``) was fitted on train (attribution) and val (fusion);
this script reads only the test split. For every perturbation (clean, JPEG, crop, ...) it scores all
test images and reports AUC and TPR at 1% FPR of each passive branch alone (oriented so that higher =
fake), of the fused passive score, and, when the bundle references a watermark decoder, of the full
``p_ai`` on a test set where the fakes were watermarked (as a cooperating generator would) *before*
the attack: there the watermark evidence enters through the verdict rule.

    python experiments/fusion/run_fusion.py --bundle runs/demo/bundle --corpus data/demo-quick/manifest.csv \
        --out experiments/fusion

writes ``results.json`` and ``table.md`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from detector.bundle import ProvenanceDetector
from detector.bundle.fit import branch_table
from detector.cli.common import progress_bar
from detector.corpus import load_corpus
from detector.evaluation.perturbations import GRID, perturbation
from detector.evaluation.provenance import provenance
from detector.fusion.verdict import decide
from detector.io import ImageLoadError, atomic_write_text, load_image_array
from detector.scoring import Batch, watermark_branch


def score_arrays(
    det: ProvenanceDetector, arrays: list[np.ndarray], batch_size: int, full: bool, advance=None
) -> dict:
    """Every passive branch's scores and the fused passive p for decoded images; with ``full`` also the
    watermark evidence (``-log10 p``) and the final p_ai, by the same verdict rule the pipeline applies."""
    branches = det.passive_branches()
    extra = {"fused": [], "fused_without_rigid": [], "watermark": [], "p_ai": []}
    out: dict[str, list[float]] = {name: [] for name in branches} | extra
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start : start + batch_size]
        batch = Batch([f"img{start + i}" for i in range(len(chunk))], [Image.fromarray(a) for a in chunk])
        scores = {name: fn(batch) for name, fn in branches.items()}
        for name, values in scores.items():
            out[name].extend(values)
        fused = det.fusion.predict_proba({k: v for k, v in scores.items() if k in det.fusion.branches})
        out["fused"].extend(fused)
        if "rigid" in scores:  # the same fusion model, scored as `detector score --no-rigid` would
            rest = {k: v for k, v in scores.items() if k in det.fusion.branches and k != "rigid"}
            out["fused_without_rigid"].extend(det.fusion.predict_proba(rest))
        if full:
            for p, evidence in zip(fused, watermark_branch(det.watermarker)(batch), strict=True):
                p_ai, _ = decide(float(p), evidence, det.fusion_config)
                out["p_ai"].append(p_ai)
                out["watermark"].append(-np.log10(max(evidence.p_value, 1e-300)))
        if advance:
            advance(len(chunk))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items() if v}


def _row(name: str, m: dict) -> str:
    def cell(key: str) -> str:
        ci = m.get(f"{key}_ci")
        return f"{m[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    return f"| {name} | {m['n']} | {cell('auc')} | {cell('tpr_fpr1')} |"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument(
        "--corpus", required=True, help="The corpus the bundle was fitted on (its test split)."
    )
    parser.add_argument("--perturbations", default="clean,jpeg75,jpeg50,crop0.5,resize0.5,blur")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bootstrap", type=int, default=200, help="Resamples for the 95%% intervals (0: no intervals)."
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    names = [p.strip() for p in args.perturbations.split(",") if p.strip()]
    for name in names:
        perturbation(name)
    det = ProvenanceDetector.load(args.bundle)
    signs = det.fusion.metadata.get("branch_signs", {})  # each branch's direction, fixed on validation
    corpus = load_corpus(args.corpus)
    records = corpus.subset("test").records
    arrays, targets, generators = [], [], []
    for r in records:
        try:
            arrays.append(load_image_array(corpus.resolve(r)))
            targets.append(1 if r.is_fake else 0)
            generators.append(r.generator)
        except ImageLoadError as exc:
            print(f"skipped {exc}", file=sys.stderr)
    targets = np.asarray(targets)
    seen = set(det.card.get("data", {}).get("train_generators", []))
    # fakes of generators the detector never trained on, against every real
    unseen = np.array([t == 0 or g not in seen for t, g in zip(targets, generators, strict=True)])
    if not seen or unseen.all() or not targets[unseen].any():
        unseen = None
    marked = None
    if det.watermarker is not None:
        wm = det.watermarker
        payload = wm.register("fusion-experiment", model_version="fusion").payload_id if wm.registry else 1
        marked = [wm.embed_array(a, payload) if t == 1 else a for a, t in zip(arrays, targets, strict=True)]

    results: dict = {
        "bundle": str(args.bundle),
        "corpus": args.corpus,
        "n_test": int(len(targets)),
        "rows": {},
    }
    lines = [
        f"Test split of `{args.corpus}`: {int(targets.sum())} fakes, {int((targets == 0).sum())} reals. "
        "Each branch alone is oriented (higher = fake) as it was on the validation split, where the fusion "
        "was fitted; nothing is chosen on test. Brackets: 95% bootstrap intervals (reals and fakes "
        "resampled apart).",
        "",
    ]

    def tables(scores: dict, rows: np.ndarray | None = None) -> dict:
        rows = np.ones(len(targets), bool) if rows is None else rows
        derived = ("fused", "fused_without_rigid", "p_ai")
        branches = {k: v[rows] for k, v in scores.items() if k not in derived}
        table = branch_table(branches, targets[rows], scores["fused"][rows], signs, args.bootstrap)
        if "fused_without_rigid" in scores:
            table["fused without rigid"] = branch_table(
                {}, targets[rows], scores["fused_without_rigid"][rows], bootstrap=args.bootstrap
            )["fused"]
        if "p_ai" in scores:
            p_ai = branch_table({}, targets[rows], scores["p_ai"][rows], bootstrap=args.bootstrap)["fused"]
            table["p_ai (fused + watermark)"] = p_ai
        return table

    for name in names:
        attack = perturbation(name)
        with progress_bar(f"{name}: score", len(arrays) * (1 if marked is None else 2)) as advance:
            s = score_arrays(
                det, [attack(a) if attack else a for a in arrays], args.batch_size, False, advance
            )
            w = (
                score_arrays(
                    det, [attack(a) if attack else a for a in marked], args.batch_size, True, advance
                )
                if marked is not None
                else None
            )
        entry = {"passive": tables(s)}
        if unseen is not None:
            entry["passive_unseen"] = tables(s, unseen)
        if w is not None:
            entry["watermarked_fakes"] = tables(w)
        lines += [
            f"**{name}** ({GRID[name][0]})",
            "",
            "| rows | score | n | AUC | TPR@1%FPR |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        labels = {
            "passive": "all test",
            "passive_unseen": "unseen families",
            "watermarked_fakes": f"fakes watermarked, then {name}",
        }
        for key, table in entry.items():
            lines += [_row(f"{labels[key]} | {k}", m) for k, m in table.items()]
        results["rows"][name] = entry
        lines.append("")
    if marked is None:
        lines.append(
            "No watermark decoder in this bundle/build: the watermarked-then-attacked rows are not measured."
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "table.md", "\n".join(lines) + "\n")
    results["provenance"] = provenance(args.corpus)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
