"""``detector attribute``: fit, evaluate and use the open-set generator-attribution head.

The head works on feature files (``.npz`` with ``features`` and ``generators``, optionally ``splits`` and
``paths``; or a bare ``.npy`` matrix for enrolment and prediction), so attribution can be fitted on any
backbone's features, intermediate layers or inversion features alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from detector.attribution import (
    AttributionError,
    AttributionHead,
    FeatureFileError,
    load_features,
    plot_confusion,
)
from detector.attribution.protocol import AttributionFitConfig, evaluate, fit_head, make_splits
from detector.cli.choices import UnknownScore
from detector.cli.common import console, fail, parse_list, progress_bar, stdout, write_json
from detector.config import ConfigError, load_config, save_config
from detector.io import ImageLoadError, atomic_writer, json_line
from detector.scoring.stream import ScoringError

app = typer.Typer(
    help=(
        "Open-set generator attribution: name the generator that made an image among the known ones, or say "
        "'unknown'; enrol a new generator from a few examples without retraining the backbone."
    ),
    no_args_is_help=True,
)

HEAD_HELP = "Attribution head file (.safetensors) written by `detector attribute fit`."


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + suffix)


def _load_head(path: Path) -> AttributionHead:
    try:
        return AttributionHead.load(path)
    except AttributionError as exc:
        fail(str(exc))


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _build_backbone(name: str, pretrained: str | None):
    from detector.backbones import BackboneError, create_backbone

    try:
        return create_backbone(name, **({"pretrained": pretrained} if pretrained else {}))
    except BackboneError as exc:
        fail(f"cannot build backbone {name!r}: {exc}")


def _backbone_for(head: AttributionHead):
    """The backbone whose features the head was fitted on, as recorded at fit time (checked, not trusted)."""
    if head.metadata.get("backbone") and "features" not in head.metadata:
        # written by `detector bundle`: fitted on the bundle detector's own (possibly fine-tuned) backbone
        # at the checkpoint's input size, which a backbone built by name does not reproduce
        fail(
            "this head belongs to a bundle: its features come from the bundle's detector at its input size; "
            "attribute images with `detector score --model BUNDLE` (each line's attribution)"
        )
    name = head.metadata.get("backbone")
    if not name:
        fail(
            "this head does not record which backbone made its features, so it cannot read images; "
            "give feature files, or refit with `detector attribute fit ... --backbone NAME`"
        )
    backbone = _build_backbone(name, head.metadata.get("pretrained"))
    if backbone.feature_dim != head.dim:
        fail(f"backbone {name!r} gives {backbone.feature_dim}-d features; the head expects {head.dim}")
    recorded = head.metadata.get("weights_id")
    if recorded and backbone.weights_id != recorded:
        fail(f"backbone {name!r} now has weights {backbone.weights_id}, the head was fitted on {recorded}")
    return backbone


def _image_batches(backbone, sources: list[Path], batch_size: int):
    """Yield ``(paths, features, errors)`` per batch of images, read and batched as scoring reads them
    (:func:`detector.data.decoded_batches`); unreadable files and files a folder scan passed by come back
    as errors."""
    from detector.data import decoded_batches
    from detector.scoring import Batch, backbone_features, count_inputs, expand_inputs

    features = backbone_features(backbone)
    passed_by: list[tuple[str, str]] = []  # files a folder scan passes by get an error line

    def note(name: str, reason: str) -> None:
        passed_by.append((name, reason))

    with progress_bar(f"features ({backbone.name})", count_inputs(sources)) as advance:
        for chunk, decoded in decoded_batches(expand_inputs(sources, on_skip=note), batch_size):
            good = [i for i, item in enumerate(decoded) if not isinstance(item, ImageLoadError)]
            errors = passed_by + [(chunk[i], item.reason) for i, item in enumerate(decoded) if i not in good]
            passed_by.clear()
            paths, images = [chunk[i] for i in good], [decoded[i] for i in good]
            feats = (
                features(Batch(paths, images)) if images else np.zeros((0, backbone.feature_dim), np.float32)
            )
            yield paths, feats, errors
            advance(len(paths) + len(errors))
        if passed_by:
            yield [], np.zeros((0, backbone.feature_dim), np.float32), list(passed_by)
            advance(len(passed_by))


def print_evaluation(title: str, result: dict, chosen: str) -> None:
    closed = result["closed"]
    stdout.print(
        f"[bold]{title}[/]: {closed['n_known']} known rows, {closed['n_unknown']} unknown rows; "
        f"closed-set accuracy {_fmt(closed['closed_set_accuracy'])}, macro-F1 {_fmt(closed['macro_f1'])}"
    )
    table = Table(title=f"{title}: unknown scores (decision uses '{chosen}')")
    for column in ("score", "AUROC", "OSCR", "CCR@5%FPR", "known kept", "unknown rejected"):
        table.add_column(column, justify="left" if column == "score" else "right")
    for name, report in result["scores"].items():
        table.add_row(
            name + ("*" if name == chosen else ""),
            *(
                _fmt(report.get(key))
                for key in ("unknown_auroc", "oscr", "ccr_at_5fpr", "known_accepted", "unknown_rejected")
            ),
        )
    stdout.print(table)


@app.command()
def fit(
    features: Path = typer.Argument(
        ..., help="Feature file (.npz with features, generators[, splits, paths])."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Head file to write (.safetensors)."),
    config_path: Path | None = typer.Option(None, "--config", help="YAML config (AttributionFitConfig)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override, e.g. --set head.knn_k=10."),
    holdout: str | None = typer.Option(
        None, help="Generators kept out of training as unknowns, evaluated on the test split: 'gen_a,gen_b'."
    ),
    score: UnknownScore | None = typer.Option(None, help="Unknown score that decides rejection."),
    accept_rate: float | None = typer.Option(
        None, help="Share of known validation rows to accept (e.g. 0.95)."
    ),
    backbone: str | None = typer.Option(
        None,
        help="Backbone that made the features (e.g. effnet-lite0): recorded so enroll/predict can read images.",
    ),
    pretrained: str | None = typer.Option(
        None, help="The backbone's weights, as given to feature extraction."
    ),
) -> None:
    """Fit the head on the train rows, fit rejection thresholds on the val rows, report val and test.

    Writes HEAD, HEAD's config (.config.yaml), the metrics (.report.json) and confusion matrices (.png)."""
    extra = list(overrides)
    if holdout:
        extra.append(f"holdout=[{','.join(parse_list(holdout))}]")
    if score:
        extra.append(f"head.score={score}")
    if accept_rate is not None:
        extra.append(f"head.accept_rate={accept_rate}")
    try:
        config = load_config(AttributionFitConfig, config_path, extra)
        data = load_features(features)
        splits = make_splits(data, config)
        metadata = {"features": str(features), "feature_dim": data.dim}
    except (ConfigError, FeatureFileError, AttributionError) as exc:
        fail(str(exc))
    if backbone:
        metadata.update(backbone=backbone, **({"pretrained": pretrained} if pretrained else {}))
        model = _build_backbone(backbone, pretrained)
        if model.feature_dim != data.dim:
            fail(f"backbone {backbone!r} gives {model.feature_dim}-d features; {features} has {data.dim}")
        metadata["weights_id"] = model.weights_id
    try:
        head = fit_head(splits, config, metadata=metadata)
    except AttributionError as exc:
        fail(str(exc))
    for note in splits.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(
        f"fitted on {len(splits.train)} rows of {len(head.classes)} generators ({', '.join(head.classes)}); "
        f"thresholds on {len(splits.val)} validation rows at accept rate {config.head.accept_rate}"
    )
    report = {
        "config": config_path and str(config_path),
        "classes": head.classes,
        "thresholds": head.thresholds,
    }
    for name, part in (("val", splits.val), ("test", splits.test)):
        if part is None or not len(part):
            continue
        result = evaluate(head, part)
        print_evaluation(name, result, head.config.score)
        report[name] = {"closed": result["closed"], "scores": result["scores"]}
        png = plot_confusion(
            result["y_true"],
            result["y_pred"],
            _sidecar(out, f".confusion-{name}.png"),
            labels=sorted(set(result["y_true"])),
            title=f"attribution, {name} split",
        )
        console.print(f"confusion matrix: {png}")
    head.save(out)
    save_config(config, _sidecar(out, ".config.yaml"))
    write_json(_sidecar(out, ".report.json"), report)
    console.print(f"wrote {out}, {_sidecar(out, '.config.yaml')}, {_sidecar(out, '.report.json')}")


@app.command("evaluate")
def evaluate_cmd(
    head_path: Path = typer.Argument(..., help=HEAD_HELP),
    features: Path = typer.Argument(..., help="Feature file with a generators column."),
    split: str | None = typer.Option(None, help="Only rows of this split (e.g. test)."),
    report: Path | None = typer.Option(None, help="Write the metrics as JSON here."),
    confusion: Path | None = typer.Option(None, help="Write the confusion matrix PNG here."),
) -> None:
    """Closed-set and open-set metrics of a head on a feature file (unknown generators count as unknowns)."""
    head = _load_head(head_path)
    try:
        data = load_features(features)
        data = data.split(split) if split else data
        result = evaluate(head, data)
    except (FeatureFileError, AttributionError, ScoringError) as exc:
        fail(str(exc))
    print_evaluation(split or "all rows", result, head.config.score)
    if report:
        write_json(report, {"closed": result["closed"], "scores": result["scores"]})
    if confusion:
        plot_confusion(result["y_true"], result["y_pred"], confusion, labels=sorted(set(result["y_true"])))
        console.print(f"confusion matrix: {confusion}")


@app.command()
def enroll(
    head_path: Path = typer.Argument(..., help=HEAD_HELP),
    name: str = typer.Option(..., "--name", help="Name of the new generator."),
    images: Path | None = typer.Option(
        None, "--images", help="Folder (or glob, or manifest) of its images; read with the head's backbone."
    ),
    features: Path | None = typer.Option(
        None,
        "--features",
        help="Or its feature vectors: a .npy, or a .npz whose rows labelled NAME are used.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the enlarged head here (default: in place)."
    ),
    batch_size: int = typer.Option(16, min=1, help="Images per backbone forward."),
) -> None:
    """Add a generator from a few (5-50) images or feature vectors, without retraining the backbone.

    The generator gets its own prototype, the shared covariance is recomputed, and the linear layer is
    refitted on the head's memory (seconds). Unreadable images are listed and skipped."""
    if (images is None) == (features is None):
        fail("give exactly one of --images DIR or --features FILE")
    head = _load_head(head_path)
    try:
        if images is not None:
            backbone = _backbone_for(head)
            rows, skipped = [], []
            for _, feats, errors in _image_batches(backbone, [images], batch_size):
                rows.append(feats)
                skipped += errors
            for path, reason in skipped:
                console.print(f"[yellow]skipped[/] {path}: {reason}")
            matrix = np.concatenate(rows) if rows else np.zeros((0, head.dim), np.float32)
            if not len(matrix):
                fail(f"no readable image under {images}")
        else:
            data = load_features(features)
            if data.generators:
                data = data.select(np.array([g == name for g in data.generators]))
                if not len(data):
                    fail(f"{features} has no rows labelled {name!r}")
            matrix = data.features
        if len(matrix) < 5:
            console.print(
                f"[yellow]warning:[/] only {len(matrix)} example(s); 5-50 make a reliable prototype"
            )
        head.enroll(name, matrix)
    except (FeatureFileError, AttributionError, ScoringError) as exc:
        fail(str(exc))
    head.save(out or head_path)
    console.print(
        f"enrolled {name!r} from {len(matrix)} examples; {len(head.classes)} generators in {out or head_path}"
    )


@app.command("list")
def list_cmd(head_path: Path = typer.Argument(..., help=HEAD_HELP)) -> None:
    """The generators a head knows, where each came from, and the rejection thresholds."""
    head = _load_head(head_path)
    table = Table(title=f"{head_path.name}: {len(head.classes)} generators")
    for column in ("generator", "origin", "samples", "bank rows"):
        table.add_column(column)
    for row in head.describe():
        table.add_row(row["generator"], row["origin"], str(row["samples"]), str(row["bank_rows"]))
    stdout.print(table)
    chosen = head.config.score
    thresholds = ", ".join(f"{k}{'*' if k == chosen else ''}={v:.4g}" for k, v in head.thresholds.items())
    stdout.print(f"thresholds (accept rate {head.config.accept_rate}): {thresholds or 'not fitted'}")


@app.command()
def remove(
    head_path: Path = typer.Argument(..., help=HEAD_HELP),
    name: str = typer.Option(..., "--name", help="Generator to forget."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the head here (default: in place)."),
) -> None:
    """Forget a generator (fitted or enrolled); the linear layer is refitted on the remaining memory."""
    head = _load_head(head_path)
    try:
        head.remove(name)
    except AttributionError as exc:
        fail(str(exc))
    head.save(out or head_path)
    console.print(f"removed {name!r}; {len(head.classes)} generators left in {out or head_path}")


def _prediction_line(path: str | None, row: int, item) -> str:
    return json_line(
        {
            "path": path,
            "row": row,
            "generator": item.generator,
            "top_k": [[g, round(p, 6)] for g, p in item.top_k],
            "unknown_score": item.unknown_score,
            "is_unknown": item.is_unknown,
            "score_name": item.score_name,
            "scores": item.scores,
            "error": None,
        },
        allow_nan=True,
    )


@app.command()
def predict(
    head_path: Path = typer.Argument(..., help=HEAD_HELP),
    paths: list[Path] = typer.Argument(None, help="Images, folders, globs or manifests to attribute."),
    features: Path | None = typer.Option(
        None, "--features", help="Or a feature file (.npz/.npy) to attribute."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="JSONL output (default: stdout)."),
    top_k: int = typer.Option(3, min=1, help="How many generators to list per row."),
    batch_size: int = typer.Option(16, min=1, help="Images per backbone forward."),
) -> None:
    """Attribute images (read with the head's backbone) or feature rows: top-k generators with
    probabilities, the unknown score and the decision; one JSON line per input, errors included."""
    if bool(paths) == (features is not None):
        fail("give image PATHS or --features FILE (one of the two)")
    head = _load_head(head_path)

    def lines():
        if features is not None:
            data = load_features(features)
            preds = head.predict(data.features)
            for i in range(len(data)):
                yield (
                    _prediction_line(data.paths[i] if data.paths else None, i, preds.item(i, k=top_k)),
                    False,
                )
            return
        backbone = _backbone_for(head)
        row = 0
        for batch_paths, feats, errors in _image_batches(backbone, list(paths), batch_size):
            for path, reason in errors:
                yield json_line({"path": path, "row": None, "error": reason}), False
            preds = head.predict(feats)
            for i, path in enumerate(batch_paths):
                item = preds.item(i, k=top_k)
                yield _prediction_line(path, row, item), item.is_unknown
                row += 1

    written = rejected = 0
    try:
        if out:
            with atomic_writer(out) as handle:
                for line, unknown in lines():
                    handle.write(line + "\n")
                    written, rejected = written + 1, rejected + unknown
            console.print(f"wrote {written} lines to {out} ({rejected} attributed to an unknown generator)")
        else:
            for line, _ in lines():
                stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    except (FeatureFileError, AttributionError, ScoringError) as exc:
        fail(str(exc))
