"""Corpus format: folder and manifest round-trips, validation, group-safe seeded splits, summary, Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_rgb
from torch.utils.data import DataLoader

from detector.corpus import (
    Corpus,
    CorpusError,
    Record,
    SplitConfig,
    assign_splits,
    check_no_group_leak,
    load_corpus,
    read_manifest,
    summarize,
    validate_corpus,
    write_manifest,
)
from detector.corpus.dataset import CorpusDataset, collate_skip_errors
from detector.data import resize_transform


def test_folder_layout_labels_and_generators(folder_corpus):
    corpus = load_corpus(folder_corpus)
    assert len(corpus) == 16
    assert corpus.generators == ["gen_a", "gen_b"]
    assert sum(r.is_fake for r in corpus) == 8
    assert {r.generator for r in corpus if not r.is_fake} == {"real"}


def test_group_regex_ties_crops(folder_corpus):
    corpus = load_corpus(folder_corpus, group_regex=r"^(photo\d+)_crop")
    assert len({r.group for r in corpus}) == 4


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_round_trip(folder_corpus, tmp_path, suffix):
    corpus = validate_corpus(load_corpus(folder_corpus))
    out = folder_corpus / f"manifest{suffix}"
    write_manifest(corpus.records, out, root=corpus.root)
    again = read_manifest(out)
    assert [r.path for r in again] == [r.path for r in corpus]
    assert all(again.resolve(r).is_file() for r in again)
    assert again.records[0].width == 32 and again.records[0].format == "PNG"


def test_manifest_errors_name_the_line(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label\na.png,maybe\n")
    with pytest.raises(CorpusError, match=r"m.csv:2"):
        read_manifest(bad)
    bad_json = tmp_path / "m.jsonl"
    bad_json.write_text('{"path": "a.png", "label": "fake"}\n')
    with pytest.raises(CorpusError, match="generator"):
        read_manifest(bad_json)


def test_validation_reports_every_bad_file(folder_corpus):
    (folder_corpus / "real" / "empty.png").write_bytes(b"")
    (folder_corpus / "real" / "text.png").write_text("hello")
    good = (folder_corpus / "real" / "photo0_crop0.png").read_bytes()
    (folder_corpus / "fake" / "gen_a" / "cut.png").write_bytes(good[: len(good) // 3])
    write_rgb(folder_corpus / "fake" / "gen_a" / "tiny.png", size=(4, 4))
    corpus = validate_corpus(load_corpus(folder_corpus), min_side=16)
    reasons = dict(corpus.skipped)
    assert len(corpus) == 16
    assert "empty" in reasons["real/empty.png"]
    assert "not an image" in reasons["real/text.png"]
    assert "fake/gen_a/cut.png" in reasons
    assert "too small" in reasons["fake/gen_a/tiny.png"]
    assert any("skipped" in w for w in summarize(corpus).warnings)


def _many_records(n_groups=40, per_group=5, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for g in range(n_groups):
        for i in range(per_group):
            fake = rng.random() < 0.6
            gen = f"gen_{rng.integers(0, 4)}" if fake else "real"
            records.append(Record(f"g{g}_{i}.png", "fake" if fake else "real", generator=gen, group=f"g{g}"))
    return records


def test_split_never_leaks_a_group_and_is_seeded():
    first = [r.split for r in assign_splits(_many_records(), SplitConfig(seed=3))]
    second = [r.split for r in assign_splits(_many_records(), SplitConfig(seed=3))]
    other = [r.split for r in assign_splits(_many_records(), SplitConfig(seed=4))]
    assert first == second
    assert first != other
    records = assign_splits(_many_records(), SplitConfig(seed=3))
    check_no_group_leak(records)
    groups = {}
    for r in records:
        groups.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in groups.values())
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_leak_check_catches_a_crossing():
    records = [
        Record("a.png", "real", group="g", split="train"),
        Record("b.png", "real", group="g", split="test"),
    ]
    with pytest.raises(CorpusError, match="both"):
        check_no_group_leak(records)


def test_holdout_generators_only_in_test():
    records = assign_splits(_many_records(), SplitConfig(seed=1, holdout=["gen_0"]))
    check_no_group_leak(records)
    held = [r for r in records if r.generator == "gen_0"]
    assert held and {r.split for r in held} <= {"test", "excluded"}
    assert any(r.split == "test" for r in held)
    assert not any(r.generator == "gen_0" and r.split in ("train", "val") for r in records)
    with pytest.raises(CorpusError, match="not in the corpus"):
        assign_splits(_many_records(), SplitConfig(holdout=["nope"]))


def test_holdout_by_family():
    records = [
        Record(f"{i}.png", "fake", generator=f"gan-{v}", family="gan", group=f"g{i}")
        for i, v in enumerate("abab")
    ] + [Record(f"r{i}.png", "real", group=f"h{i}") for i in range(8)]
    assign_splits(records, SplitConfig(seed=0, holdout=["gan"]))
    assert all(r.split in ("test", "excluded") for r in records if r.family == "gan")


def test_summary_warns_on_format_and_size_shortcut():
    records = [Record(f"r{i}.jpg", "real", width=512, height=512, format="JPEG") for i in range(10)]
    records += [
        Record(f"f{i}.png", "fake", generator="g", width=256, height=256, format="PNG") for i in range(10)
    ]
    summary = summarize(Corpus(records, root=__import__("pathlib").Path(".")))
    text = " ".join(summary.warnings)
    assert "file format" in text and "image size" in text
    assert json.loads(json.dumps(summary.to_dict()))["by_label"] == {"real": 10, "fake": 10}


def test_summary_quiet_when_classes_match():
    records = [Record(f"r{i}.png", "real", width=128, height=128, format="PNG") for i in range(10)]
    records += [
        Record(f"f{i}.png", "fake", generator="g", width=128, height=128, format="PNG") for i in range(10)
    ]
    assert summarize(Corpus(records, root=__import__("pathlib").Path("."))).warnings == []


def test_dataset_reads_transforms_and_skips_bad_files(folder_corpus):
    (folder_corpus / "fake" / "gen_b" / "broken.png").write_text("nope")
    write_rgb(folder_corpus / "real" / "wide.png", size=(64, 40))
    corpus = load_corpus(folder_corpus)
    dataset = CorpusDataset(corpus, transform=resize_transform(24))
    loader = DataLoader(dataset, batch_size=6, collate_fn=collate_skip_errors)
    images, errors = 0, []
    for batch in loader:
        errors += batch["errors"]
        if "image" in batch:
            assert batch["image"].shape[1:] == (3, 24, 24)
            assert batch["image"].dtype == torch.float32 and float(batch["image"].max()) <= 1.0
            images += len(batch["image"])
    assert images == len(corpus) - 1
    assert len(errors) == 1 and "broken.png" in errors[0][1]
