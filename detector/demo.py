"""``detector demo``: the whole product on the offline benchmark, in minutes on a CPU.

Stages (each reuses what an earlier run left, so a second run is fast):

1. build (or reuse) the demo benchmark: real crops of the photos that ship in packages + fakes from the
   generator zoo, leave-families-out split (``sdedit`` and ``vqar`` never seen in training);
2. train the passive detector (Effort on the offline ImageNet EfficientNet-Lite0, a short schedule);
3. fit the attribution head (train fakes), the inversion branch (train; the zoo's own DDPM as the
   diffusion model) and the fusion (validation; head, distance, RIGID, inversion) into a bundle;
4. measure on the *test* split: each passive branch alone vs. the fused score, attribution with the
   held-out families as unknowns; ROC and confusion PNGs;
5. watermark a few held-out real images (when the watermark decoder is in this build);
6. score a mixed folder (test reals, test fakes incl. held-out families, watermarked copies, a broken
   file) with ``detector score``'s engine and show example verdicts with their evidence.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.io import atomic_write_text

HONEST_NOTE = (
    "What this benchmark is: real crops of photos that ship inside Python, Debian and npm packages and fakes from "
    "twelve small generators trained here on CPU (DDPM, SDEdit img2img, autoencoders, GANs, super-resolution, "
    "a patch autoregressive model), all 128 px, both classes through the same JPEG/PNG mix. "
    "What it is not: Stable Diffusion, Midjourney or any real-world generator; with tens of source photos "
    "the real test split is a few photos, so numbers are noisy and say how methods compare here, "
    "not how they do on GenImage or in the wild."
)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    #: An existing corpus folder/manifest; None = reuse data/demo (if `detector corpus build` made it),
    #: else build (or finish) the quick preset in ``corpus_out``.
    corpus: str | None = None
    corpus_out: str = "data/demo-quick"
    preset: str = "quick"  # quick (default) or small (seconds; for tests and smoke runs)
    n_real: int = 360
    n_fake: int = 30  # per generator
    steps_scale: float = 0.25  # zoo training steps x this
    backbone: str = "effnet-lite0"
    method: str = "effort"
    epochs: int = 2
    max_steps_per_epoch: int | None = None
    batch_size: int = 32
    n_watermarked: int = 4
    #: Fit the inversion branch with the benchmark zoo's DDPM (when the corpus's build cache has it).
    inversion: bool = True
    #: Also fit the (opt-in) RIGID branch.
    rigid: bool = False
    seed: int = 0
    examples: int = 6
    #: The corpus is 128 px: train at its size rather than upsampling to the backbone's 224.
    extra_train: list[str] = field(default_factory=lambda: ["data.image_size=128"])


def small_demo(out: str, corpus_out: str, **overrides) -> DemoConfig:
    """The tiny preset: every stage on a few dozen images with a tiny backbone (tests, smoke runs)."""
    values = dict(
        out=out,
        corpus_out=corpus_out,
        preset="small",
        backbone="timm:test_efficientnet",
        method="linear-probe",
        epochs=1,
        n_watermarked=2,
        extra_train=["data.image_size=32"],
    )
    values.update(overrides)
    return DemoConfig(**values)


def _build_corpus(config: DemoConfig, progress, log) -> Path:
    from detector.corpus.build import BuildConfig, build_corpus, small_config

    if config.corpus:
        return Path(config.corpus)
    standard = Path("data/demo/manifest.csv")  # `detector corpus build` already ran here: reuse it
    if config.preset != "small" and standard.is_file():
        log(f"reusing the built benchmark {standard}")
        return standard
    if config.preset == "small":
        build = small_config(seed=config.seed)
    else:
        build = BuildConfig(
            preset="quick",
            seed=config.seed,
            n_real=config.n_real,
            n_fake_per_generator=config.n_fake,
            train_pool=min(config.n_real, 2000),
            train_steps_scale=config.steps_scale,
        )
    out = Path(config.corpus_out)
    cache = out.parent / "zoo-cache" / build.preset
    result = build_corpus(out, build, cache=cache, progress=progress, log=log)
    return result.manifest


def _train(config: DemoConfig, manifest: Path, run: Path, console) -> None:
    from detector.config import load_config
    from detector.training import TrainConfig, train

    if (run / "model_card.json").is_file():
        return
    overrides = [
        f"data.corpus={manifest}",
        f"out={run}",
        f"method.name={config.method}",
        f"model.backbone={config.backbone}",
        f"optim.epochs={config.epochs}",
        f"data.batch_size={config.batch_size}",
        "optim.patience=0",
        "wandb.mode=disabled",
        f"seed={config.seed}",
        *config.extra_train,
    ]
    if config.max_steps_per_epoch:
        overrides.append(f"optim.max_steps_per_epoch={config.max_steps_per_epoch}")
    train(load_config(TrainConfig, None, overrides), console=console)


def corpus_inversion_model(manifest: Path, log) -> str | None:
    """The zoo DDPM the corpus's build trained (its ``build.json`` names the cache), or None."""
    from detector.corpus.zoo import zoo_ddpm_folder

    info = Path(manifest).parent / "build.json"
    if not info.is_file():
        log(f"inversion: {info} not found (not a `detector corpus build` corpus); no inversion branch")
        return None
    cache = Path(json.loads(info.read_text()).get("cache", ""))
    # a relative cache was relative to where the build ran: usually the corpus's grandparent (data/demo)
    candidates = [cache] if cache.is_absolute() else [cache, info.parent.parent.parent / cache]
    for folder in candidates:
        try:
            return str(zoo_ddpm_folder(folder))
        except FileNotFoundError:
            continue
    log(f"inversion: no trained zoo DDPM in {cache}; no inversion branch")
    return None


def _watermark(config: DemoConfig, corpus, out: Path, log) -> tuple[list[Path], dict | None]:
    """Watermark a few test-split real images (when the watermark model ships with the package)."""
    from detector.watermark import PayloadRegistry, Watermarker, default_checkpoint, generate_key

    if not default_checkpoint().is_file():
        log(f"watermark: no shipped watermark model at {default_checkpoint()}; skipping the watermark stage")
        return [], None
    key = out / "watermark.key"
    if not key.is_file():
        generate_key(key)
    registry = out / "watermark-registry.sqlite"
    wm = Watermarker(key, registry=PayloadRegistry(registry))
    record = wm.register("demo-generator", model_version="demo")
    reals = [r for r in corpus.subset("test").records if not r.is_fake][: config.n_watermarked]
    folder = out / "watermarked"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r in reals:
        dst = folder / (Path(r.path).stem + ".png")
        wm.embed_file(corpus.resolve(r), dst, record.payload_id, overwrite=True)
        written.append(dst)
    return written, {"key": str(key), "registry": str(registry)}


def run_demo(
    config: DemoConfig, console, progress: Callable, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every stage; returns the report (also written to ``OUT/report.json``)."""
    from detector.attribution import FeatureSet, plot_confusion
    from detector.attribution.protocol import evaluate as evaluate_attribution
    from detector.bundle import BundleConfig, ProvenanceDetector, build_bundle
    from detector.bundle.fit import branch_table, score_split, split_branch_scores
    from detector.config import load_config
    from detector.corpus import load_corpus
    from detector.evaluation.plots import plot_roc

    timings: dict[str, float] = {}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    manifest = _build_corpus(config, progress, log)
    corpus = load_corpus(manifest)
    timings["corpus"] = time.perf_counter() - start

    start = time.perf_counter()
    run = out / "detector"
    _train(config, manifest, run, console)
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    watermarked, wm_ref = _watermark(config, corpus, out, log)
    bundle_dir = out / "bundle"
    overrides = [f"checkpoint={run}", f"corpus={manifest}", f"batch_size={config.batch_size}"]
    if config.preset == "small":
        overrides.append("fusion.min_rows=5")
    if wm_ref:
        overrides += [f"watermark_key={wm_ref['key']}", f"watermark_registry={wm_ref['registry']}"]
    inversion_model = corpus_inversion_model(manifest, log) if config.inversion else None
    if inversion_model:
        overrides.append(f"inversion_model={inversion_model}")
    if config.rigid:
        overrides.append("rigid=true")
    bundle_report = build_bundle(load_config(BundleConfig, None, overrides), bundle_dir, progress, log)
    timings["bundle"] = time.perf_counter() - start

    # --- test split: branches alone vs fused, attribution with held-out families as unknowns
    start = time.perf_counter()
    det = ProvenanceDetector.load(bundle_dir)
    with progress("features test", len(corpus.subset("test").records)) as advance:
        test = score_split(
            det, corpus, "test", config.batch_size, advance, det.rigid is not None, det.inversion
        )
    scores = split_branch_scores(det, test)
    fused = det.fusion.predict_proba({k: v for k, v in scores.items() if k in det.fusion.branches})
    signs = det.fusion.metadata.get("branch_signs", {})  # fixed on validation, not on test
    fusion_table = branch_table(scores, test.targets, fused, signs)
    seen = set(det.card.get("data", {}).get("train_generators", []))
    unseen_rows = np.array(
        [t == 0 or g not in seen for t, g in zip(test.targets, test.generators, strict=True)]
    )
    unseen_table = (
        branch_table(
            {k: v[unseen_rows] for k, v in scores.items()},
            test.targets[unseen_rows],
            fused[unseen_rows],
            signs,
        )
        if test.targets[unseen_rows].sum() > 0 and (test.targets[unseen_rows] == 0).any()
        else None
    )
    curves = {"fused": (test.targets, fused)}
    for name, values in scores.items():
        curves[name] = (test.targets, signs.get(name, 1) * values)
    plot_roc(curves, out / "roc_test.png", title="test split: branches vs fused")
    attribution_report = None
    if det.attribution is not None:
        fake = test.targets == 1
        feats = FeatureSet(test.features[fake], [g for g, f in zip(test.generators, fake, strict=True) if f])
        result = evaluate_attribution(det.attribution, feats)
        plot_confusion(
            result["y_true"], result["y_pred"], out / "confusion_test.png", title="attribution, test"
        )
        attribution_report = {"closed": result["closed"], "scores": result["scores"]}
    timings["evaluate"] = time.perf_counter() - start

    # --- a mixed folder through the scoring engine
    start = time.perf_counter()
    mixed = out / "mixed"
    if mixed.exists():
        shutil.rmtree(mixed)
    mixed.mkdir()
    rng = np.random.default_rng(config.seed)
    test_records = corpus.subset("test").records
    picks = list(
        rng.choice(len(test_records), size=min(config.examples * 2, len(test_records)), replace=False)
    )
    for i in picks:
        r = test_records[i]
        src = corpus.resolve(r)
        shutil.copyfile(src, mixed / f"{r.generator}__{Path(r.path).name}")
    for path in watermarked:
        shutil.copyfile(path, mixed / f"watermarked__{path.name}")
    (mixed / "broken__truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    summary = det.score_files([mixed], out / "mixed_scores.jsonl", batch_size=config.batch_size)
    timings["score_mixed"] = time.perf_counter() - start
    from detector.result import ProvenanceResult

    results = [
        ProvenanceResult.from_json(line) for line in (out / "mixed_scores.jsonl").read_text().splitlines()
    ]
    report = {
        "corpus": str(manifest),
        "bundle": str(bundle_dir),
        "validation_branches": bundle_report["validation_branches"],
        "test_branches": fusion_table,
        "test_branches_unseen": unseen_table,
        "attribution_test": attribution_report,
        "mixed_summary": summary.to_dict(),
        "results": [r.to_dict() for r in results],
        "plots": [str(out / "roc_test.png")]
        + ([str(out / "confusion_test.png")] if attribution_report else []),
        "watermark": bool(wm_ref),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "note": HONEST_NOTE,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
