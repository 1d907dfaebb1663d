"""Baseline check of the offline benchmark: how separable is each family from real on a fixed feature?

Feature: the radially averaged log power spectrum of the luminance (64 rings, from
``detector.corpus.report.radial_spectrum``), standardised, into a logistic regression.

Protocol A (per family / per generator vs real): 5-fold StratifiedGroupKFold over the corpus groups (source
photos for reals and img2img/autoencoder/SR fakes, blocks of 25 for unconditional fakes), so no photo
is on both sides; AUC over the out-of-fold scores.
Protocol B (the manifest's default leave-families-out split): one logistic regression trained on
real vs every fake of the train split (held-out families are absent there), AUC on the test split
for each generator, seen and unseen.

Usage: python experiments/benchmark_baseline/run.py --corpus data/demo --out experiments/benchmark_baseline
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detector.corpus import load_corpus
from detector.corpus.report import radial_spectrum
from detector.evaluation.provenance import provenance
from detector.io import ImageLoadError, atomic_write_text, load_image_array

BINS = 64
#: RESULTS.md from this heading on is written by hand and kept when the tables are rewritten.
NOTES = "## What this says"


def features(corpus) -> tuple[np.ndarray, list]:
    rows, kept = [], []
    for record in corpus.records:
        try:
            image = load_image_array(corpus.resolve(record))
        except ImageLoadError as exc:
            print(f"skipped {exc.path}: {exc.reason}")
            continue
        rows.append(radial_spectrum(image, BINS))
        kept.append(record)
    return np.asarray(rows), kept


def model():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def grouped_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    scores = np.full(len(y), np.nan)
    for train, test in StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0).split(x, y, groups):
        if len(set(y[train])) == 2:  # a fold without one class cannot train (tiny corpora only)
            scores[test] = model().fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    done = ~np.isnan(scores)
    return float(roc_auc_score(y[done], scores[done]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/demo"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    start = time.perf_counter()
    corpus = load_corpus(args.corpus)
    x, records = features(corpus)
    label = np.array([r.target for r in records])
    gens = np.array([r.generator for r in records])
    fams = np.array([r.family for r in records])
    groups = np.array([r.group for r in records])
    splits = np.array([r.split for r in records])
    real = label == 0

    rows = []
    families = sorted(set(fams[~real]))
    for family in families:
        take = real | (fams == family)
        auc_family = grouped_auc(x[take], label[take], groups[take])
        for generator in sorted(set(gens[fams == family])):
            take_g = real | (gens == generator)
            rows.append(
                {
                    "family": family,
                    "generator": generator,
                    "auc_family_cv": round(auc_family, 3),
                    "auc_generator_cv": round(grouped_auc(x[take_g], label[take_g], groups[take_g]), 3),
                }
            )

    train = (splits == "train") & np.isin(label, (0, 1))
    clf = model().fit(x[train], label[train])
    test_real = real & (splits == "test")
    seen = set(fams[train & ~real])
    for row in rows:
        take = test_real | ((gens == row["generator"]) & (splits == "test"))
        if (take & ~real).sum() and (take & real).sum():
            row["auc_lofo_test"] = round(
                float(roc_auc_score(label[take], clf.predict_proba(x[take])[:, 1])), 3
            )
        else:
            row["auc_lofo_test"] = ""
        row["in_train"] = "seen" if row["family"] in seen else "unseen"

    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "results.csv", buffer.getvalue())

    n_test = {
        k: int(v)
        for k, v in zip(("real", "fake"), (test_real.sum(), ((splits == "test") & ~real).sum()), strict=True)
    }
    stamp = provenance(args.corpus)
    lines = [
        "# Baseline: logistic regression on the radial log spectrum, per family vs real",
        "",
        "Command (after `detector corpus build --out data/demo`):",
        "",
        "```bash",
        "python experiments/benchmark_baseline/run.py --corpus data/demo --out experiments/benchmark_baseline",
        "```",
        "",
        f"Corpus: {int(real.sum())} real, {int((~real).sum())} fake images ({args.corpus}, manifest sha256 "
        f"`{stamp['corpus_sha256']}`), run {stamp['date']} at commit `{stamp['commit']}`. Feature: {BINS}-ring "
        "radially averaged log power spectrum of the luminance, standardised; logistic regression (C=1).",
        "",
        "- `auc_family_cv` / `auc_generator_cv`: real vs that family / generator, 5-fold StratifiedGroupKFold over "
        "groups (no source photo on both sides), AUC of the out-of-fold scores.",
        f"- `auc_lofo_test`: one model trained on real vs all train-split fakes of the default "
        f"leave-families-out split (seen: {', '.join(sorted(seen))}), scored on the test split "
        f"({n_test['real']} real, {n_test['fake']} fake test images); unseen families never reach training.",
        "",
        "| family | generator | AUC family (CV) | AUC generator (CV) | AUC leave-families-out (test) | family in train |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['family']} | {row['generator']} | {row['auc_family_cv']:.3f} | {row['auc_generator_cv']:.3f} | "
            f"{row['auc_lofo_test'] if row['auc_lofo_test'] == '' else format(row['auc_lofo_test'], '.3f')} | {row['in_train']} |"
        )
    lines += ["", f"Runtime: {time.perf_counter() - start:.0f} s."]
    text = "\n".join(lines) + "\n"
    previous = args.out / "RESULTS.md"
    if previous.is_file() and NOTES in previous.read_text():  # the hand-written reading of the figures
        text += "\n" + NOTES + previous.read_text().split(NOTES, 1)[1]
    atomic_write_text(args.out / "RESULTS.md", text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
