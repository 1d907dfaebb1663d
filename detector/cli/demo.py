"""``detector demo``: build (or reuse) the demo benchmark, train, bundle, evaluate, score a mixed folder."""

from __future__ import annotations

from pathlib import Path

import typer

from detector.cli.bundle import print_branch_table
from detector.cli.common import console, fail, progress_bar, stdout
from detector.errors import DetectorError


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where the run, bundle and plots go."),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="Use this built corpus (folder or manifest) instead of building the demo one."
    ),
    corpus_out: Path = typer.Option(
        Path("data/demo-quick"), "--corpus-out", help="Where the demo benchmark is built (reused if there)."
    ),
    small: bool = typer.Option(False, "--small", help="Tiny preset (tiny backbone, a few dozen images)."),
    epochs: int | None = typer.Option(None, help="Training epochs (default 2; 1 with --small)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    no_inversion: bool = typer.Option(
        False, "--no-inversion", help="Fit the bundle without the diffusion-inversion branch."
    ),
    rigid: bool = typer.Option(False, "--rigid", help="Also fit the (opt-in) RIGID branch."),
) -> None:
    """The whole product on the offline benchmark: build or reuse it, train the detector (Effort on
    EfficientNet-Lite0), fit attribution, RIGID, inversion (the zoo's DDPM) and the fusion into a bundle, watermark a few held-out images, score
    a mixed folder and print the report. Reruns reuse every finished stage."""
    import torch

    from detector.demo import DemoConfig, run_demo, small_demo

    if threads:
        torch.set_num_threads(threads)
    config = (
        small_demo(str(out), str(corpus_out))
        if small
        else DemoConfig(out=str(out), corpus_out=str(corpus_out))
    )
    if corpus is not None:
        config.corpus = str(corpus)
    if epochs is not None:
        config.epochs = epochs
    config.inversion = not no_inversion
    config.rigid = rigid
    try:
        report = run_demo(config, console, progress_bar, log=console.print)
    except DetectorError as exc:
        fail(str(exc))
    print_report(report)


def print_report(report: dict) -> None:
    from rich.table import Table

    stdout.print(f"[bold]detector demo[/] - corpus {report['corpus']}, bundle {report['bundle']}")
    print_branch_table(report["test_branches"], "test split: each passive branch alone vs the fused p_ai")
    if report.get("test_branches_unseen"):
        print_branch_table(
            report["test_branches_unseen"],
            "test split, fakes of families never seen in training (vs all test reals)",
        )
    att = report.get("attribution_test")
    if att:
        closed = att["closed"]
        table = Table(title="attribution on test fakes (held-out families = unknown)")
        for column in ("unknown score", "AUROC", "OSCR", "CCR@5%FPR"):
            table.add_column(column)
        for name, r in att["scores"].items():
            table.add_row(*(name, *(_f(r.get(k)) for k in ("unknown_auroc", "oscr", "ccr_at_5fpr"))))
        stdout.print(table)
        stdout.print(
            f"closed-set accuracy {_f(closed['closed_set_accuracy'])}, macro-F1 {_f(closed['macro_f1'])} "
            f"({closed['n_known']} known, {closed['n_unknown']} unknown test fakes)"
        )
    table = Table(title="example verdicts (mixed folder)")
    for column in ("file (true source__name)", "verdict", "p_ai", "generator", "evidence"):
        table.add_column(column, overflow="fold")
    for r in report["results"]:
        if r["error"]:
            table.add_row(Path(r["path"]).name, "-", "-", "-", f"error: {r['error']}")
            continue
        short = {"detector": "det", "attribution_distance": "dist", "inversion": "inv"}
        evidence = " ".join(f"{short.get(k, k)}={_f(v)}" for k, v in sorted(r["branches"].items()))
        wm = r.get("watermark")
        if wm and wm.get("p_value") is not None:
            evidence += f" wm_p={wm['p_value']:.1e}"
        at = r.get("attribution")
        if at and at.get("top_k"):
            evidence += " top: " + ", ".join(f"{g} {p:.2f}" for g, p in at["top_k"][:2])
        if r["verdict"] == "watermarked":
            generator = (wm or {}).get("generator")
        elif at and at.get("is_unknown"):
            generator = "unknown"
        else:
            generator = (at or {}).get("top_k", [[None]])[0][0]
        table.add_row(Path(r["path"]).name, r["verdict"], _f(r["p_ai"]), str(generator or "-"), evidence)
    stdout.print(table)
    if not report["watermark"]:
        stdout.print("watermark stage skipped: the watermark decoder is not in this build")
    stdout.print(f"plots: {', '.join(report['plots'])}")
    stdout.print(f"timings (s): {report['timings_s']}")
    stdout.print(f"[italic]{report['note']}[/]")
    stdout.print(
        f"next: detector score YOUR_IMAGES --model {report['bundle']} --out scores.jsonl  "
        f"(or in Python: load_detector('{report['bundle']}').score('img.png'))"
    )


def _f(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
