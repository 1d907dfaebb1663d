"""``detector corpus build``: real-photo pool + generator zoo -> a labelled corpus with its manifest.

Stages: (1) cut the real pool, (2) train (or load from the cache) every zoo model the chosen
generators use, (3) generate each generator's fakes, (4) write the manifest with the default
leave-families-out split. Both classes pass through one :class:`EncodingPolicy` at one size, so format
and size carry no label. Everything is seeded; every file is written atomically and skipped when it
exists, and models are cached per (name, seed, steps, training config), so a killed build restarts where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.config import save_config
from detector.corpus.encoding import EncodingPolicy
from detector.corpus.manifest import Record, write_manifest
from detector.corpus.photos import DEFAULT_STORE, load_photos
from detector.corpus.realpool import (
    DEFAULT_SCALES,
    CropSpec,
    plan_crops,
    render_crop,
    render_crops,
    write_pool,
)
from detector.corpus.split import SplitConfig, assign_splits, check_no_group_leak
from detector.io import atomic_write_text

#: Families unseen in train/val by default: one that reuses a trained family's model in a new way
#: (sdedit uses the ddpm UNet on real content) and one unlike anything trained (vqar: no conv net).
DEFAULT_HOLDOUT = ("sdedit", "vqar")
#: Unconditional fakes are grouped in blocks of this many so that splits can spread them.
UNCONDITIONAL_GROUP = 25


@dataclass
class BuildConfig:
    """Everything that decides what a build makes. ``preset`` is informational ("full" or "small")."""

    preset: str = "full"
    seed: int = 0
    size: int = 128
    n_real: int = 4000
    n_fake_per_generator: int = 500
    generators: list[str] | None = None
    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    train_pool: int = 2000
    train_steps_scale: float = 1.0
    batch: int = 50
    jpeg_share: float = 0.5
    jpeg_quality_min: int = 75
    jpeg_quality_max: int = 95
    holdout: list[str] = field(default_factory=lambda: list(DEFAULT_HOLDOUT))
    #: Leave-photos-out: the fractions count source photos (groups), so val and test each hold a fifth
    #: of the photos (>= 10 of each with the full catalogue) and no photo is seen on two sides.
    split_train: float = 0.6
    split_val: float = 0.2
    split_test: float = 0.2
    split_unit: str = "groups"

    def policy(self) -> EncodingPolicy:
        return EncodingPolicy(self.jpeg_share, self.jpeg_quality_min, self.jpeg_quality_max, self.seed)

    def model_steps(self, default_steps: int) -> int:
        return max(1, int(round(default_steps * self.train_steps_scale)))


def small_config(**overrides) -> BuildConfig:
    """The ``--small`` preset: every stage and every generator, in seconds (for tests and smoke runs)."""
    values = dict(
        preset="small", n_real=48, n_fake_per_generator=8, train_pool=48, train_steps_scale=0.01, batch=8
    )
    values.update(overrides)
    return BuildConfig(**values)


@dataclass
class BuildResult:
    out: Path
    manifest: Path
    records: list[Record]
    written: dict[str, int]
    trained: list[str]
    timings: dict[str, float]


def _noop_progress(description: str, total: int | None):
    return contextlib.nullcontext(lambda n=1: None)


def build_corpus(
    out: str | Path,
    config: BuildConfig | None = None,
    cache: str | Path | None = None,
    progress: Callable = _noop_progress,
    log: Callable[[str], None] = lambda message: None,
    photo_store: str | Path | None = None,
) -> BuildResult:
    """Build (or finish building) the corpus in ``out``; returns what was written and how long it took.

    ``cache`` holds the trained zoo models (default ``data/zoo-cache/<preset>``). ``progress(desc,
    total)`` is a context manager yielding ``advance(n)`` (the CLI passes rich bars).
    """
    from detector.corpus.zoo import get_generator, list_generators

    config = config or BuildConfig()
    out = Path(out)
    cache = Path(cache) if cache is not None else Path("data") / "zoo-cache" / config.preset
    specs_g = [get_generator(name) for name in config.generators or list_generators()]
    timings: dict[str, float] = {}
    written: dict[str, int] = {}
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "build.yaml")
    cpu_start = time.process_time()

    start = time.perf_counter()
    photos, crops, real_records, written["real"] = _real_pool(out, config, photo_store, progress, log)
    timings["real_pool"] = time.perf_counter() - start

    start = time.perf_counter()
    folders, trained = _zoo_models(specs_g, config, cache, photos, crops, progress, log)
    timings["train_models"] = time.perf_counter() - start

    fake_records: list[Record] = []
    loaded: dict[str, object] = {}
    for gen_spec in specs_g:
        start = time.perf_counter()
        records, written[gen_spec.name] = _fakes(
            out, gen_spec, config, photos, crops, real_records, folders, loaded, progress, log
        )
        fake_records += records
        timings[f"fake:{gen_spec.name}"] = time.perf_counter() - start

    records = real_records + fake_records
    manifest = _manifest(out, records, config, {g.family for g in specs_g})
    result = BuildResult(out, manifest, records, written, trained, timings)
    _write_build_report(result, config, cache, sorted(dict(photos)), len(real_records), cpu_start)
    return result


def _real_pool(out: Path, config: BuildConfig, photo_store, progress, log):
    """Stage 1: cut the real crops from the source photos; returns (photos, crops, records, written)."""
    log(f"real pool: {config.n_real} crops of {config.size} px")
    photos = load_photos(store=Path(photo_store) if photo_store else DEFAULT_STORE, log=log)
    log(f"real photos: {len(photos)} distinct source photographs")
    crops = plan_crops(photos, config.n_real, config.size, config.scales, config.seed)
    with progress("real pool", len(crops)) as advance:
        records, written = write_pool(out, photos, crops, config.size, config.policy(), advance)
    return photos, crops, records, written


def _zoo_models(specs_g, config: BuildConfig, cache: Path, photos, crops, progress, log):
    """Stage 2: train every zoo model the generators use, once, into the cache; returns (folder per model,
    the names trained this run). The training pool is rendered only if a model needs training."""
    from detector.corpus.zoo import ensure_model, get_model_spec
    from detector.corpus.zoo.base import is_done, model_dir, to_tensor

    pool_cache: dict[str, torch.Tensor] = {}

    def training_pool() -> torch.Tensor:
        if "pool" not in pool_cache:
            order = np.random.default_rng([config.seed, 7]).permutation(len(crops))[: config.train_pool]
            pool_cache["pool"] = to_tensor(
                render_crops(photos, [crops[i] for i in sorted(order)], config.size)
            )
        return pool_cache["pool"]

    folders: dict[str, Path] = {}
    trained: list[str] = []
    for name in dict.fromkeys(g.model for g in specs_g):
        spec = get_model_spec(name)
        steps = config.model_steps(spec.steps)
        folder = model_dir(cache, spec, config.seed, steps)
        if not is_done(folder):
            log(f"training {name} ({steps} steps)")
            with progress(f"train {name}", steps) as advance:
                ensure_model(name, cache, training_pool, config.seed, steps, progress=advance)
            trained.append(name)
            log(f"trained {name} ({steps} steps) into {folder}")
        folders[name] = folder
    return folders, trained


def _fakes(out: Path, gen_spec, config: BuildConfig, photos, crops, reals, folders, loaded, progress, log):
    """Stage 3, one generator: write its missing fakes (a batch at a time) and return the records of all
    of them with how many this run wrote. ``reals[k]`` is the record of ``crops[k]`` (a conditional
    fake's source); ``loaded`` caches models across generators."""
    log(f"fakes: {gen_spec.name}")
    policy = config.policy()
    folder = out / "fake" / gen_spec.name
    keys = [f"{gen_spec.name}_{i:05d}" for i in range(config.n_fake_per_generator)]
    paths = [policy.path_for(folder, key, gen_spec.name, i) for i, key in enumerate(keys)]
    perm = np.random.default_rng([config.seed, len(gen_spec.name), *gen_spec.name.encode()]).permutation(
        len(crops)
    )
    source_index = [int(perm[i % len(crops)]) if gen_spec.conditional else None for i in range(len(keys))]
    sources: list[CropSpec | None] = [None if k is None else crops[k] for k in source_index]
    count = 0
    with progress(f"fake {gen_spec.name}", len(keys)) as advance:
        for b in range(0, len(keys), config.batch):
            batch = range(b, min(b + config.batch, len(keys)))
            missing = [i for i in batch if not paths[i].is_file()]
            if missing:
                images = _generate_batch(gen_spec, config, photos, sources, batch, b, folders, loaded)
                for j, i in enumerate(batch):
                    if i in missing:
                        policy.write(folder, keys[i], images[j], gen_spec.name, i)
                        count += 1
            advance(len(batch))
    log(f"{gen_spec.name}: {count} written, {len(keys) - count} already there")
    return [
        _fake_record(out, gen_spec, config, policy, path, i, sources[i], None if k is None else reals[k].path)
        for i, (path, k) in enumerate(zip(paths, source_index, strict=True))
    ], count


def _generate_batch(gen_spec, config: BuildConfig, photos, sources, batch: range, b: int, folders, loaded):
    """One batch of a generator's images as uint8 arrays (conditional generators get their source crops)."""
    from detector.corpus.zoo import generate, load_model
    from detector.corpus.zoo.base import to_tensor, to_uint8

    if gen_spec.model not in loaded:
        loaded[gen_spec.model] = load_model(gen_spec.model, folders[gen_spec.model])
    src = None
    if gen_spec.conditional:
        by_name = dict(photos)
        src = to_tensor(
            np.stack([render_crop(by_name[sources[i].photo], sources[i], config.size) for i in batch])
        )
    with torch.no_grad():
        return to_uint8(
            generate(
                gen_spec.name,
                loaded[gen_spec.model],
                len(batch),
                src,
                (config.seed, gen_spec.name, b),
                config.size,
            )
        )


def _fake_record(
    out: Path, gen_spec, config: BuildConfig, policy, path: Path, i: int, source, source_path: str | None
) -> Record:
    """A fake's manifest row: grouped with its source photo (and naming its source crop's file), or in
    blocks of UNCONDITIONAL_GROUP."""
    group = source.photo if gen_spec.conditional else f"{gen_spec.name}-b{i // UNCONDITIONAL_GROUP:03d}"
    return Record(
        path.relative_to(out).as_posix(),
        "fake",
        generator=gen_spec.name,
        group=group,
        family=gen_spec.family,
        width=config.size,
        height=config.size,
        format=policy.format_name(path),
        source=source_path or "",
    )


def _manifest(out: Path, records: list[Record], config: BuildConfig, families: set[str]) -> Path:
    """Stage 4: the default leave-families-out split, checked for group leaks, and the manifest."""
    split = SplitConfig(
        seed=config.seed,
        train=config.split_train,
        val=config.split_val,
        test=config.split_test,
        unit=config.split_unit,
        holdout=[f for f in config.holdout if f in families] or None,
    )
    assign_splits(records, split)
    check_no_group_leak(records)
    manifest = write_manifest(records, out / "manifest.csv", root=out)
    save_config(split, out / "manifest.split.yaml")
    return manifest


def _write_build_report(
    result: BuildResult, config: BuildConfig, cache: Path, photos: list[str], n_real: int, cpu_start: float
) -> None:
    """``build.json``: what this run wrote and trained, and how long each stage took."""
    timings = result.timings
    atomic_write_text(
        result.out / "build.json",
        json.dumps(
            {
                "preset": config.preset,
                "images": {"real": n_real, "fake": len(result.records) - n_real},
                "photos": photos,
                "written_this_run": result.written,
                "trained_this_run": result.trained,
                "timings_s": {k: round(v, 2) for k, v in timings.items()},
                "total_s": round(sum(timings.values()), 2),
                "process_cpu_s": round(time.process_time() - cpu_start, 2),
                "cache": str(cache),
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
        + "\n",
    )
