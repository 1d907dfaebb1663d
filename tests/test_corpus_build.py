"""The offline benchmark end to end at the --small preset: real pool, zoo, build, resume, report."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector.cli import app
from detector.corpus import check_no_group_leak, load_corpus, read_manifest, summarize
from detector.corpus.build import build_corpus, small_config
from detector.corpus.encoding import EncodingPolicy
from detector.corpus.realpool import allocate, plan_crops
from detector.corpus.zoo import GENERATORS, ensure_model, generate, list_families, load_model, load_zoo_ddpm
from detector.io import load_image_array

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """One --small build through the CLI, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("bench")
    out, cache = root / "demo", root / "cache"
    result = runner.invoke(app, ["corpus", "build", "--small", "--out", str(out), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    return out, cache


def test_zoo_has_six_families_of_two_or_more():
    families = Counter(g.family for g in GENERATORS.values())
    assert len(list_families()) >= 6 and len(families) >= 6
    assert all(count >= 2 for count in families.values()), families


def test_small_build_has_every_generator_and_a_clean_split(built):
    out, _ = built
    corpus = read_manifest(out / "manifest.csv")
    config = small_config()
    assert Counter(r.label for r in corpus.records) == {
        "real": config.n_real,
        "fake": config.n_fake_per_generator * len(GENERATORS),
    }
    assert set(corpus.generators) == set(GENERATORS)
    assert {r.family for r in corpus.records if r.is_fake} == set(list_families())
    for record in corpus.records:
        assert corpus.resolve(record).is_file()
    check_no_group_leak(corpus.records)
    splits_of_group: dict[str, set] = {}
    for record in corpus.records:
        if record.split in ("train", "val", "test"):
            splits_of_group.setdefault(record.group, set()).add(record.split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    # conditional fakes share their source photo's group; held-out families never reach train/val
    real_groups = {r.group for r in corpus.records if not r.is_fake}
    assert {r.group for r in corpus.records if r.family == "sdedit"} <= real_groups
    assert not [r for r in corpus.records if r.family in config.holdout and r.split in ("train", "val")]
    assert {r.split for r in corpus.records if not r.is_fake} >= {"train", "test"}
    # every content-preserving fake names the real crop it was made from, of its own photo
    by_path = {r.path: r for r in corpus.records}
    for record in corpus.records:
        conditional = GENERATORS[record.generator].conditional if record.is_fake else False
        assert bool(record.source) == conditional, record
        if conditional:
            assert by_path[record.source].label == "real" and by_path[record.source].group == record.group


def test_real_and_fake_share_format_and_size(built):
    out, _ = built
    corpus = load_corpus(out)
    summary = summarize(corpus)
    assert summary.warnings == []
    on_disk = Counter()
    for record in corpus.records:
        path = corpus.resolve(record)
        with open(path, "rb") as handle:
            magic = handle.read(4)
        on_disk[(record.label, "PNG" if magic.startswith(b"\x89PNG") else "JPEG")] += 1
        assert record.format == ("PNG" if magic.startswith(b"\x89PNG") else "JPEG")
    share = {
        label: on_disk[(label, "JPEG")] / sum(v for (lb, _), v in on_disk.items() if lb == label)
        for label in ("real", "fake")
    }
    assert abs(share["real"] - share["fake"]) < 0.05, share
    assert {(r.width, r.height) for r in corpus.records} == {(128, 128)}
    from PIL import Image

    sizes = {Image.open(corpus.resolve(r)).size for r in corpus.records[::7]}
    assert sizes == {(128, 128)}


def test_rebuild_regenerates_nothing_and_resumes_a_killed_build(built):
    out, cache = built
    manifest_before = (out / "manifest.csv").read_text()
    result = build_corpus(out, small_config(), cache=cache)
    assert sum(result.written.values()) == 0 and result.trained == []
    assert (out / "manifest.csv").read_text() == manifest_before
    # a "killed" build: some fakes and reals missing, a temporary file left behind
    victims = sorted((out / "fake" / "gan-tconv").iterdir())[:3] + sorted((out / "real").rglob("*.*"))[:2]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in victims}
    for path in victims:
        path.unlink()
    (out / "fake" / "gan-tconv" / ".gan-tconv_00000.png.x.tmp").write_bytes(b"half")
    result = build_corpus(out, small_config(), cache=cache)
    assert result.written["real"] == 2 and result.written["gan-tconv"] == 3
    assert sum(result.written.values()) == 5 and result.trained == []
    # what is rewritten is bit-identical to what was lost: generation is seeded per batch
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in victims} == digests


def test_zoo_model_is_deterministic_given_its_seed(tmp_path):
    pool = torch.rand(4, 3, 32, 32) * 2 - 1
    folders = [
        ensure_model("gan-tconv", tmp_path / name, pool, seed=seed, steps=2)[0]
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    data = [(f / "model.safetensors").read_bytes() for f in folders]
    assert data[0] == data[1] and data[0] != data[2]
    images = [
        generate("gan-tconv", load_model("gan-tconv", f), 2, None, (0, "x", 0), 64) for f in folders[:2]
    ]
    assert torch.equal(images[0], images[1]) and images[0].shape == (2, 3, 64, 64)


def test_every_generator_made_real_pictures(built):
    out, _ = built
    corpus = read_manifest(out / "manifest.csv")
    for name in GENERATORS:
        record = next(r for r in corpus.records if r.generator == name)
        image = load_image_array(corpus.resolve(record))
        assert image.shape == (128, 128, 3) and image.std() > 1.0, name


def test_load_zoo_ddpm_gives_a_diffusers_unet_and_scheduler(built):
    _, cache = built
    unet, scheduler = load_zoo_ddpm(cache)
    assert type(unet).__name__ == "UNet2DModel" and type(scheduler).__name__ == "DDPMScheduler"
    with torch.no_grad():
        eps = unet(torch.zeros(1, 3, 32, 32), torch.tensor([10])).sample
    assert eps.shape == (1, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="corpus build"):
        load_zoo_ddpm(cache / "nowhere")


def test_report_writes_pngs_and_stats(built, tmp_path):
    out, _ = built
    result = runner.invoke(
        app,
        [
            "corpus",
            "report",
            str(out),
            "--out",
            str(tmp_path / "rep"),
            "--per-generator",
            "2",
            "--max-stats",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("samples.png", "spectra.png", "radial_spectra.png", "colour_histograms.png", "stats.json"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    import json

    stats = json.loads((tmp_path / "rep" / "stats.json").read_text())["generators"]
    assert set(stats) == {"real", *GENERATORS}


def test_real_pool_cli_groups_by_photo(tmp_path):
    result = runner.invoke(app, ["corpus", "real-pool", "--out", str(tmp_path / "pool"), "--n", "30"])
    assert result.exit_code == 0, result.output
    corpus = read_manifest(tmp_path / "pool" / "manifest.csv")
    assert len(corpus) == 30 and all(r.group == Path(r.path).parent.name for r in corpus.records)
    check_no_group_leak(corpus.records)


def test_crop_plan_is_seeded_and_proportional():
    photos = [("big", np.zeros((600, 800, 3), np.uint8)), ("small", np.zeros((200, 200, 3), np.uint8))]
    assert plan_crops(photos, 50, 128, seed=3) == plan_crops(photos, 50, 128, seed=3)
    assert plan_crops(photos, 50, 128, seed=3) != plan_crops(photos, 50, 128, seed=4)
    assert sum(allocate([100.0, 400.0, 0.5], 37)) == 37
    specs = plan_crops(photos, 50, 128)
    assert all(s.side >= 128 and s.x + s.side <= (800 if s.photo == "big" else 200) for s in specs)
    with pytest.raises(ValueError, match="no photo"):
        plan_crops([("tiny", np.zeros((50, 50, 3), np.uint8))], 5, 128)


def test_encoding_policy_balances_formats_within_a_stream():
    policy = EncodingPolicy(jpeg_share=0.5, seed=0)
    for stream in ("real", "gen-a", "gen-b"):
        exts = [policy.choose(stream, i)[0] for i in range(40)]
        assert abs(exts.count("jpg") - 20) <= 2
    qualities = [q for q in (policy.choose("real", i)[1] for i in range(200)) if q]
    assert min(qualities) >= 75 and max(qualities) <= 95 and len(set(qualities)) > 5


def test_build_commands_have_help_and_refuse_unknown_generators(tmp_path):
    for command in ("real-pool", "build", "report"):
        result = runner.invoke(app, ["corpus", command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(
        app, ["corpus", "build", "--small", "--out", str(tmp_path), "--generators", "nope"]
    )
    assert result.exit_code == 2 and "unknown generator" in result.output
