"""Does Effort generalise to unseen generators better than full fine-tuning and the linear probe?

Trains the four methods (linear probe, full fine-tuning, LoRA, Effort) on the same pretrained backbone
(EfficientNet-Lite0 offline; any registry name, e.g. clip:ViT-L-14 with weights, for users who have
them), several seeds each, on a corpus whose test split holds generator families out of training
(``detector corpus split MANIFEST --holdout fam_a,fam_b``), then scores each checkpoint on the test
split: AUC / accuracy on seen-family fakes vs all reals and on unseen-family fakes vs all reals,
trainable parameters and training seconds per epoch. ``--ablation`` adds Effort variants (each
regulariser on, both on, larger k). Every run is a normal ``detector train`` run folder and is
skipped when already complete, so the script resumes. Writes ``results.json`` and ``RESULTS.md``.

    python experiments/effort_generalisation/run.py --corpus data/demo/manifest.csv --ablation
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detector.config import load_config
from detector.corpus import load_corpus, write_manifest
from detector.evaluation import EvalConfig, evaluate
from detector.evaluation.provenance import provenance
from detector.io import atomic_write_text
from detector.training import TrainConfig, train

HERE = Path(__file__).resolve().parent

#: variant name -> config overrides. The first four are the methods; the rest the Effort ablation.
METHODS = {
    "linear-probe": ["method.name=linear-probe"],
    "full-finetune": ["method.name=full-finetune"],
    "lora": ["method.name=lora"],
    "effort": ["method.name=effort"],
}
ABLATION = {
    "effort+orth": ["method.name=effort", "method.orth_weight=0.1"],
    "effort+ksv": ["method.name=effort", "method.ksv_weight=0.1"],
    "effort+orth+ksv": ["method.name=effort", "method.orth_weight=0.1", "method.ksv_weight=0.1"],
    "effort-k4": ["method.name=effort", "method.rank=4"],
    "effort-k16": ["method.name=effort", "method.rank=16"],
}


def subsample(corpus_path: str, out: Path, limits: dict[str, int], seed: int = 0) -> str:
    """A manifest with at most ``limits[split]`` images per split, drawn per generator in proportion
    (seeded), so a CPU run stays short; splits (and so the group rule) are those of the source."""
    corpus = load_corpus(corpus_path)
    rng = np.random.default_rng(seed)
    keep = []
    for split in ("train", "val", "test"):
        records = [r for r in corpus.records if r.split == split]
        limit = limits.get(split) or len(records)
        by_generator: dict[str, list] = {}
        for record in records:
            by_generator.setdefault(record.generator, []).append(record)
        for generator in sorted(by_generator):
            members = by_generator[generator]
            n = min(len(members), max(1, round(limit * len(members) / max(1, len(records)))))
            keep += [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    for record in keep:
        record.path = str(corpus.resolve(record).resolve())
    path = out / "manifest.csv"
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(keep, path)
    return str(path)


def run_one(args, variant: str, overrides: list[str], seed: int) -> dict:
    out = Path(args.out) / f"{variant}-seed{seed}"
    eval_out = out / "eval-test"
    if not (out / "model_card.json").is_file():
        config = load_config(
            TrainConfig,
            None,
            [
                f"data.corpus={args.corpus}",
                f"model.backbone={args.backbone}",
                f"data.image_size={args.image_size}",
                f"data.batch_size={args.batch_size}",
                f"data.workers={args.workers}",
                f"optim.epochs={args.epochs}",
                f"optim.lr={args.lr}",
                "optim.patience=0",
                "wandb.mode=disabled",
                f"seed={seed}",
                f"out={out}",
                *overrides,
                *args.set,
            ],
        )
        # A method whose LR is poor for it should not lose for that reason alone: full fine-tuning
        # uses a 10x smaller LR (the usual practice); the others train few parameters.
        if config.method.name == "full-finetune":
            config.optim.lr = args.lr / 10
        train(config, resume=True, show_progress=False)
    if not (eval_out / "metrics.csv").is_file():
        evaluate(
            EvalConfig(
                checkpoint=str(out),
                corpus=args.corpus,
                split="test",
                out=str(eval_out),
                perturbations=["clean"],
                batch_size=args.batch_size,
                workers=args.workers,
            )
        )
    card = json.loads((out / "model_card.json").read_text())
    rows = {}
    for line in (eval_out / "metrics.csv").read_text().splitlines()[1:]:
        cells = line.split(",")
        rows[cells[1]] = {"auc": float(cells[4]), "acc": float(cells[6])}
    return {
        "variant": variant,
        "seed": seed,
        "trainable": card["trainable_parameters"],
        "seconds_per_epoch": card["seconds_per_epoch"],
        "val_auc": card["metrics"].get("val_auc"),
        **{
            f"{subset}_{k}": rows.get(subset, {}).get(k, float("nan"))
            for subset in ("seen", "unseen", "all")
            for k in ("auc", "acc")
        },
    }


def summarise(results: list[dict]) -> list[dict]:
    table = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        mine = [r for r in results if r["variant"] == variant]
        row = {"variant": variant, "seeds": len(mine), "trainable": mine[0]["trainable"]}
        for key in ("seen_auc", "unseen_auc", "seen_acc", "unseen_acc", "seconds_per_epoch"):
            values = np.array([r[key] for r in mine], dtype=float)
            row[key] = (float(np.nanmean(values)), float(np.nanstd(values)))
        table.append(row)
    return table


def render(args, table: list[dict], elapsed: float) -> str:
    def ms(pair, digits=3):
        mean, std = pair
        return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    command = "python experiments/effort_generalisation/run.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    lines = [
        "# Effort vs linear probe vs LoRA vs full fine-tuning: seen vs unseen generator families",
        "",
        f"Command: `{command}`",
        "",
        f"Backbone `{args.backbone}` at {args.image_size}px, {args.epochs} epochs, seeds {args.seeds}, "
        f"corpus `{args.source_corpus}`"
        + (
            f" subsampled per generator to at most {args.max_train} / {args.max_val} / {args.max_test} "
            "train / val / test images (0 = all)"
            if args.corpus != args.source_corpus
            else ""
        )
        + " (test split: held-out families are *unseen*). Mean ± std over seeds. "
        f"AUC of each fake subset against all test reals; accuracy at the threshold chosen on validation "
        f"for 5% FPR. CPU, {torch.get_num_threads()} thread(s); this invocation took {elapsed / 60:.1f} min "
        "(runs already complete in --out are reused, not retrained; the training time per epoch is the "
        "last column).",
        "",
        "| variant | trainable params | seen AUC | unseen AUC | seen acc | unseen acc | s / epoch |",
        "| --- | ---: | --- | --- | --- | --- | ---: |",
    ]
    for row in table:
        lines.append(
            f"| {row['variant']} | {row['trainable']:,} | {ms(row['seen_auc'])} | {ms(row['unseen_auc'])} | "
            f"{ms(row['seen_acc'])} | {ms(row['unseen_acc'])} | {row['seconds_per_epoch'][0]:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", required=True, help="manifest with train/val/test and held-out families in test"
    )
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ablation", action="store_true", help="add the Effort regulariser and k variants")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy box)"
    )
    parser.add_argument("--out", default=str(HERE / "runs"))
    parser.add_argument("--results", default=str(HERE))
    parser.add_argument("--set", action="append", default=[], help="extra TrainConfig override, repeatable")
    parser.add_argument("--max-train", type=int, default=0, help="subsample train to N images (0 = all)")
    parser.add_argument("--max-val", type=int, default=0, help="subsample val to N images (0 = all)")
    parser.add_argument("--max-test", type=int, default=0, help="subsample test to N images (0 = all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.source_corpus = args.corpus
    if args.max_train or args.max_val or args.max_test:
        limits = {"train": args.max_train, "val": args.max_val, "test": args.max_test}
        args.corpus = subsample(args.corpus, Path(args.out) / "subsample", limits)
    variants = {name: METHODS[name] for name in args.methods.split(",")}
    if args.ablation:
        variants.update(ABLATION)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results = []
    for variant, overrides in variants.items():
        for seed in seeds:
            result = run_one(args, variant, overrides, seed)
            print(json.dumps(result), flush=True)
            results.append(result)
    table = summarise(results)
    folder = Path(args.results)
    atomic_write_text(
        folder / "results.json",
        json.dumps({"runs": results, "table": table, "provenance": provenance(args.source_corpus)}, indent=2)
        + "\n",
    )
    atomic_write_text(folder / "RESULTS.md", render(args, table, time.perf_counter() - started))
    print((folder / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
