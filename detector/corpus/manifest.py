"""The corpus format: one record per image, read from a folder tree or a CSV/JSONL manifest.

Folder layout::

    ROOT/real/**/*               label "real", generator "real"
    ROOT/fake/<generator>/**/*   label "fake", generator "<generator>"

Manifest columns: ``path, label, generator, group, split`` (and optionally ``family``, ``width``,
``height``, ``format``). ``group`` ties images that share source content (crops of one photo, fakes
made from one real) so that splits keep a group whole. Paths in a manifest are relative to the
manifest's folder, so a corpus can be moved or copied as one tree.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from detector.io import atomic_write_text, iter_image_files

LABELS = ("real", "fake")
SPLITS = ("train", "val", "test")
#: Split value for images a leave-generators-out protocol had to drop to keep groups whole.
EXCLUDED = "excluded"
REAL_GENERATOR = "real"
MANIFEST_FIELDS = ("path", "label", "generator", "group", "split", "family", "width", "height", "format")


class CorpusError(ValueError):
    """A corpus or manifest is malformed; the message says where."""


@dataclass
class Record:
    """One image of a corpus."""

    path: str
    label: str
    generator: str = REAL_GENERATOR
    group: str = ""
    split: str = ""
    family: str = ""
    width: int = 0
    height: int = 0
    format: str = ""

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise CorpusError(f"{self.path}: label must be one of {LABELS}, got {self.label!r}")
        if self.label == "real":
            self.generator = self.generator or REAL_GENERATOR
        elif not self.generator or self.generator == REAL_GENERATOR:
            raise CorpusError(f"{self.path}: a fake image needs a generator name")
        self.family = self.family or self.generator
        self.group = self.group or Path(self.path).stem
        if self.split not in ("", *SPLITS, EXCLUDED):
            raise CorpusError(f"{self.path}: split must be empty or one of {SPLITS + (EXCLUDED,)}")
        self.width, self.height = int(self.width or 0), int(self.height or 0)

    @property
    def is_fake(self) -> bool:
        return self.label == "fake"

    @property
    def target(self) -> int:
        """Binary target: 1 for fake (the positive class), 0 for real."""
        return int(self.is_fake)


@dataclass
class Corpus:
    """A list of records plus where relative paths are resolved from."""

    records: list[Record]
    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def resolve(self, record: Record) -> Path:
        path = Path(record.path)
        return path if path.is_absolute() else self.root / path

    def subset(self, split: str | Iterable[str]) -> Corpus:
        wanted = {split} if isinstance(split, str) else set(split)
        return Corpus([r for r in self.records if r.split in wanted], self.root)

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.records if r.is_fake})

    @property
    def families(self) -> list[str]:
        return sorted({r.family for r in self.records if r.is_fake})


def records_from_folder(root: str | Path, group_regex: str | None = None) -> list[Record]:
    """Records for the folder layout. ``group_regex``'s first capture group, searched in the file
    name, names the group (e.g. ``^(.+?)_crop`` ties the crops of one photo); else each file is its
    own group."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} is not a folder")
    if not (root / "real").is_dir() and not (root / "fake").is_dir():
        raise CorpusError(
            f"{root} has neither real/ nor fake/: expected ROOT/real/** and ROOT/fake/<generator>/**"
        )
    pattern = re.compile(group_regex) if group_regex else None

    def group_of(path: Path) -> str:
        if pattern:
            match = pattern.search(path.name)
            if match:
                return match.group(1) if match.groups() else match.group(0)
        return path.relative_to(root).with_suffix("").as_posix()

    records = []
    if (root / "real").is_dir():
        for path in iter_image_files(root / "real"):
            records.append(Record(path.relative_to(root).as_posix(), "real", group=group_of(path)))
    if (root / "fake").is_dir():
        for gen_dir in sorted(
            p for p in (root / "fake").iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for path in iter_image_files(gen_dir):
                records.append(
                    Record(
                        path.relative_to(root).as_posix(),
                        "fake",
                        generator=gen_dir.name,
                        group=group_of(path),
                    )
                )
    return records


def _record_from_row(row: dict, where: str) -> Record:
    names = {f.name for f in dataclasses.fields(Record)}
    clean = {
        k.strip(): (v.strip() if isinstance(v, str) else v)
        for k, v in row.items()
        if k and k.strip() in names
    }
    if not clean.get("path"):
        raise CorpusError(f"{where}: missing 'path'")
    if not clean.get("label"):
        raise CorpusError(f"{where}: missing 'label'")
    try:
        return Record(**{k: v for k, v in clean.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise CorpusError(f"{where}: {exc}") from None


def read_manifest(path: str | Path) -> Corpus:
    """Read a CSV or JSONL manifest (by extension). Paths resolve relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"manifest {path} not found")
    records = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            records.append(_record_from_row(row, f"{path}:{number}"))
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise CorpusError(f"{path}: CSV needs a header with at least 'path' and 'label'")
            for number, row in enumerate(reader, 2):
                records.append(_record_from_row(row, f"{path}:{number}"))
    else:
        raise CorpusError(f"{path}: manifest must be .csv or .jsonl")
    return Corpus(records, path.parent.resolve())


def write_manifest(records: Iterable[Record], path: str | Path, root: str | Path | None = None) -> Path:
    """Write records atomically as CSV or JSONL (by extension); paths made relative to the
    manifest's folder when they lie under it."""
    path = Path(path)
    base = path.parent.resolve()
    root = Path(root).resolve() if root is not None else base
    rows = []
    for record in records:
        row = dataclasses.asdict(record)
        absolute = Path(record.path) if Path(record.path).is_absolute() else root / record.path
        try:
            row["path"] = absolute.resolve().relative_to(base).as_posix()
        except ValueError:
            row["path"] = os.path.abspath(absolute)
        rows.append(row)
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        raise CorpusError(f"{path}: manifest must be .csv or .jsonl")
    atomic_write_text(path, text)
    return path


def load_corpus(source: str | Path, group_regex: str | None = None) -> Corpus:
    """A corpus from a folder (folder layout; uses ``ROOT/manifest.csv`` or ``.jsonl`` if present),
    a sharded corpus folder (``corpus.json``, see :mod:`detector.corpus.shards`) or a manifest file."""
    source = Path(source)
    if source.is_dir() and (source / "corpus.json").is_file():
        from detector.corpus.shards import load_sharded

        return load_sharded(source)
    if source.is_dir():
        for name in ("manifest.csv", "manifest.jsonl"):
            if (source / name).is_file() and group_regex is None:
                return read_manifest(source / name)
        return Corpus(records_from_folder(source, group_regex), source.resolve())
    return read_manifest(source)
