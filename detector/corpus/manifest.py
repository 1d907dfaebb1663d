"""The corpus format: one record per image, read from a folder tree or a CSV/JSONL manifest.

Folder layout::

    ROOT/real/**/*               label "real", generator "real"
    ROOT/fake/<generator>/**/*   label "fake", generator "<generator>"

Manifest columns: ``path, label, generator, group, split`` (and optionally ``family``, ``width``,
``height``, ``format``). ``group`` ties images that share source content (crops of one photo, fakes
made from one real) so that splits keep a group whole. Paths in a manifest are relative to the
manifest's folder, so a corpus can be moved or copied as one tree.

A CSV manifest escapes text cells a spreadsheet would run as formulas and records a file name that is
not UTF-8 in an extra ``path_bytes`` column (hex); a JSONL manifest keeps such a name as ``\\udcXX``
escapes (see :mod:`detector.io.paths`). Either way every path reads back exactly. ``confine=True``
refuses a manifest whose paths lead outside its folder (an untrusted manifest must not make us read
``/etc/...`` or ``../../``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from detector.errors import DetectorError
from detector.io import atomic_write_text, canonical_path, csv_cell, csv_text, iter_image_files, path_hex
from detector.io.paths import csv_text_value

LABELS = ("real", "fake")
SPLITS = ("train", "val", "test")
#: Split value for images a leave-generators-out protocol had to drop to keep groups whole.
EXCLUDED = "excluded"
REAL_GENERATOR = "real"
MANIFEST_FIELDS = (
    "path",
    "label",
    "generator",
    "group",
    "split",
    "family",
    "width",
    "height",
    "format",
    "source",
)


class CorpusError(DetectorError, ValueError):
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
    #: A content-preserving fake's source: the manifest path of the real crop it was made from ("" for
    #: reals and unconditional fakes). Paired training puts the two in one batch.
    source: str = ""

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

    def check_duplicates(self) -> int:
        """Refuse one file listed twice with different labels or generators (training on it would
        teach both answers); returns how many records repeat an earlier one exactly."""
        seen: dict[str, Record] = {}
        repeats = 0
        for record in self.records:
            key = canonical_path(self.resolve(record))
            first = seen.setdefault(key, record)
            if first is record:
                continue
            if (first.label, first.generator) != (record.label, record.generator):
                raise CorpusError(
                    f"{record.path}: listed twice with conflicting labels "
                    f"({first.label}/{first.generator} and {record.label}/{record.generator})"
                )
            repeats += 1
        return repeats

    def subset(self, split: str | Iterable[str]) -> Corpus:
        wanted = {split} if isinstance(split, str) else set(split)
        return Corpus([r for r in self.records if r.split in wanted], self.root)

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.records if r.is_fake})

    @property
    def families(self) -> list[str]:
        return sorted({r.family for r in self.records if r.is_fake})


def records_from_folder(
    root: str | Path, group_regex: str | None = None, skipped: list[tuple[str, str]] | None = None
) -> list[Record]:
    """Records for the folder layout. ``group_regex``'s first capture group, searched in the file
    name, names the group (e.g. ``^(.+?)_crop`` ties the crops of one photo); else each file is its
    own group. Files the scan passes by (hidden, not image extensions, symlinked folders) are appended
    to ``skipped`` as ``(relative path, reason)``."""
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

    def on_skip(path: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((path.relative_to(root).as_posix(), reason))

    records = []
    if (root / "real").is_dir():
        for path in iter_image_files(root / "real", on_skip=on_skip):
            records.append(Record(path.relative_to(root).as_posix(), "real", group=group_of(path)))
    if (root / "fake").is_dir():
        for gen_dir in sorted(
            p for p in (root / "fake").iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for path in iter_image_files(gen_dir, on_skip=on_skip):
                records.append(
                    Record(
                        path.relative_to(root).as_posix(),
                        "fake",
                        generator=gen_dir.name,
                        group=group_of(path),
                    )
                )
    return records


def _record_from_row(row: dict, where: str, from_csv: bool = False) -> Record:
    names = {f.name for f in dataclasses.fields(Record)}
    clean = {
        k.strip(): (v.strip() if isinstance(v, str) and k.strip() != "path" else v)
        for k, v in row.items()
        if k and k.strip() in names
    }
    if from_csv:  # undo the formula neutralisation; the exact name from path_bytes when there is one
        clean = {k: csv_text_value(v) if isinstance(v, str) else v for k, v in clean.items()}
        if row.get("path_bytes"):
            try:
                clean["path"] = os.fsdecode(bytes.fromhex(row["path_bytes"]))
            except ValueError:
                raise CorpusError(f"{where}: path_bytes is not hex") from None
    if not clean.get("path"):
        raise CorpusError(f"{where}: missing 'path'")
    if not clean.get("label"):
        raise CorpusError(f"{where}: missing 'label'")
    try:
        return Record(**{k: v for k, v in clean.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise CorpusError(f"{where}: {exc}") from None


def read_manifest(path: str | Path, confine: bool = False) -> Corpus:
    """Read a CSV or JSONL manifest (by extension). Paths resolve relative to its folder; with
    ``confine`` a path that leads outside that folder (absolute, ``..``, a symbolic link out) is refused."""
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
            for row in reader:
                records.append(_record_from_row(row, f"{path}:{reader.line_num}", from_csv=True))
    else:
        raise CorpusError(f"{path}: manifest must be .csv or .jsonl")
    corpus = Corpus(records, path.parent.resolve())
    if confine:
        root = canonical_path(corpus.root)
        for record in records:
            target = canonical_path(corpus.resolve(record))
            if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
                raise CorpusError(f"{path}: {record.path!r} leads outside the manifest's folder (--confine)")
    return corpus


def write_manifest(records: Iterable[Record], path: str | Path, root: str | Path | None = None) -> Path:
    """Write records atomically as CSV or JSONL (by extension); paths made relative to the
    manifest's folder when they lie under it."""
    path = Path(path)
    base = path.parent.resolve()
    root = Path(root).resolve() if root is not None else base

    def relative(name: str) -> str:
        absolute = Path(name) if Path(name).is_absolute() else root / name
        try:
            return absolute.resolve().relative_to(base).as_posix()
        except ValueError:
            return os.path.abspath(absolute)

    rows = []
    for record in records:
        row = dataclasses.asdict(record)
        row["path"] = relative(record.path)
        if record.source:
            row["source"] = relative(record.source)
        rows.append(row)
    if path.suffix.lower() == ".csv":
        fields = list(MANIFEST_FIELDS)
        if any(path_hex(row["path"]) for row in rows):
            fields.append("path_bytes")  # exact bytes of the names that are not UTF-8
            for row in rows:
                row["path_bytes"] = path_hex(row["path"]) or ""
        text = csv_text([fields, *([csv_cell(row.get(f)) for f in fields] for row in rows)])
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        text = "".join(json.dumps(row) + "\n" for row in rows)  # ASCII: non-UTF-8 bytes as \udcXX
    else:
        raise CorpusError(f"{path}: manifest must be .csv or .jsonl")
    atomic_write_text(path, text)
    return path


def load_corpus(source: str | Path, group_regex: str | None = None, confine: bool = False) -> Corpus:
    """A corpus from a folder (folder layout; uses ``ROOT/manifest.csv`` or ``.jsonl`` if present), a
    sharded corpus folder (``corpus.json``, see :mod:`detector.corpus.shards`) or a manifest file
    (``confine``: its paths must stay inside its folder). Files a folder scan passes by are listed in
    ``skipped``."""
    source = Path(source)
    if source.is_dir() and (source / "corpus.json").is_file():
        from detector.corpus.shards import load_sharded

        return load_sharded(source)
    if source.is_dir():
        for name in ("manifest.csv", "manifest.jsonl"):
            if (source / name).is_file() and group_regex is None:
                return read_manifest(source / name, confine=confine)
        skipped: list[tuple[str, str]] = []
        records = records_from_folder(source, group_regex, skipped)
        return Corpus(records, source.resolve(), skipped)
    return read_manifest(source, confine=confine)
