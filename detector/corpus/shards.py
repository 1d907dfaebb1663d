"""A sharded corpus: Parquet files that carry the image bytes with their records, for corpora too large
(or too remote) for a tree of small files.

Layout of ``DIR``::

    corpus.json          format, shard list with row counts, files skipped when writing (and why)
    shard-00000.parquet  columns key, image (the file's bytes, untouched), sha256, and the record fields
    shard-00001.parquet  (label, generator, group, split, family, width, height, format)

Each image is addressed as ``DIR/shard-00000.parquet::<key>`` (``key``: its path in the source
manifest). The one image loader (:func:`detector.io.load_image`) reads such a *member path* like a file,
so everything that takes a corpus or image paths (train, eval, features, score, both engines) reads a
sharded corpus as it reads a folder or a manifest. Shards are written whole and atomically and
``corpus.json`` last: a directory without it is an unfinished write and is not read.

Reading is by row group (``row_group_size`` images, default 64): sequential readers (scoring, feature
extraction) read every row group once; shuffled training reads a row group per sample, so keep
``row_group_size`` small or shuffle within shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from detector.corpus.manifest import Corpus, CorpusError, Record, load_corpus
from detector.io import atomic_write_text

FORMAT = "detector.shards/1"
INDEX = "corpus.json"
#: What separates a shard file from an image key in a member path.
MEMBER_MARK = ".parquet::"
RECORD_COLUMNS = ("label", "generator", "group", "split", "family", "width", "height", "format", "source")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise CorpusError('sharded corpora need pyarrow: pip install "detector[ray]"') from None
    return pyarrow


def is_sharded_corpus(path: str | os.PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(shard file, key)`` for a member path, None for an ordinary path."""
    text = os.fspath(path)
    cut = text.find(MEMBER_MARK)
    if cut < 0:
        return None
    end = cut + len(MEMBER_MARK)
    return text[: end - 2], text[end:]


def _read_index(folder: Path) -> dict:
    try:
        meta = json.loads((folder / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(f"{folder / INDEX}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CorpusError(f"{folder / INDEX}: unsupported format {meta.get('format')!r} (want {FORMAT})")
    return meta


def load_sharded(folder: str | os.PathLike) -> Corpus:
    """The records of a sharded corpus (image bytes are not read); paths are member paths."""
    pa = _pyarrow()
    folder = Path(folder)
    meta = _read_index(folder)
    records = []
    member: dict[str, str] = {}
    for shard in meta["shards"]:
        try:
            names = pa.parquet.read_schema(folder / shard["file"]).names  # "source" came later
            columns = ["key", *(c for c in RECORD_COLUMNS if c in names)]
            table = pa.parquet.read_table(folder / shard["file"], columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise CorpusError(f"{folder / shard['file']}: unreadable shard ({exc})") from None
        for row in table.to_pylist():
            key = row.pop("key")
            member[key] = f"{shard['file']}::{key}"
            records.append(Record(path=member[key], **row))
    for record in records:  # a source is stored as its key; it may live in another shard
        record.source = member.get(record.source, "") if record.source else ""
    return Corpus(records, folder.resolve())


def shard_member_paths(folder: str | os.PathLike) -> Iterator[str]:
    corpus = load_sharded(folder)
    for record in corpus.records:
        yield str(corpus.resolve(record))


class _ShardReader:
    """Member bytes by (shard, key), with a small LRU of row groups: one thread-safe reader per process."""

    def __init__(self, max_groups: int = 8, max_shards: int = 64):
        self._lock = threading.Lock()
        self._index: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._groups: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self.max_groups, self.max_shards = max_groups, max_shards

    def _locate(self, shard: str, key: str) -> tuple[int, int]:
        index = self._index.get(shard)
        if index is None:
            pa = _pyarrow()
            handle = pa.parquet.ParquetFile(shard)
            index = {}
            for group in range(handle.num_row_groups):
                keys = handle.read_row_group(group, columns=["key"]).column("key").to_pylist()
                index.update({k: (group, offset) for offset, k in enumerate(keys)})
            self._index[shard] = index
            while len(self._index) > self.max_shards:
                self._index.popitem(last=False)
        self._index.move_to_end(shard)
        if key not in index:
            raise KeyError(key)
        return index[key]

    def read(self, shard: str, key: str) -> bytes:
        with self._lock:
            group, offset = self._locate(shard, key)
            images = self._groups.get((shard, group))
            if images is None:
                pa = _pyarrow()
                table = pa.parquet.ParquetFile(shard).read_row_group(group, columns=["image"])
                images = table.column("image").to_pylist()
                self._groups[(shard, group)] = images
                while len(self._groups) > self.max_groups:
                    self._groups.popitem(last=False)
            self._groups.move_to_end((shard, group))
            return images[offset]


_READER = _ShardReader()


def read_member(path: str | os.PathLike) -> bytes:
    """The stored bytes of a member path. KeyError: no such key in the shard; OSError: shard unreadable."""
    parts = split_member(path)
    if parts is None:
        raise KeyError(os.fspath(path))
    shard, key = parts
    if not Path(shard).is_file():
        raise FileNotFoundError(shard)
    try:
        return _READER.read(shard, key)
    except KeyError:
        raise
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise OSError(f"unreadable shard {shard} ({exc})") from None


def write_shards(
    source: str | os.PathLike | Corpus,
    out: str | os.PathLike,
    images_per_shard: int = 1000,
    row_group_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write ``source`` (a folder, manifest or Corpus) as a sharded corpus in ``out``; returns the index.

    Files that cannot be read are skipped and listed in the index with the reason; the bytes of every
    other file are stored as they are (a corrupt image fails at decode time, as the original would)."""
    pa = _pyarrow()
    corpus = source if isinstance(source, Corpus) else load_corpus(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CorpusError(f"{out} exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if images_per_shard < 1 or row_group_size < 1:
        raise CorpusError("images_per_shard and row_group_size must be at least 1")
    shards: list[dict] = []
    skipped: list[list[str]] = []
    seen: set[str] = set()
    rows: list[dict] = []

    def flush() -> None:
        if not rows:
            return
        name = f"shard-{len(shards):05d}.parquet"
        columns = {c: [r[c] for r in rows] for c in ("key", "image", "sha256", *RECORD_COLUMNS)}
        columns["image"] = pa.array(columns["image"], type=pa.binary())
        temp = out / (name + ".tmp")
        pa.parquet.write_table(pa.table(columns), temp, row_group_size=row_group_size, compression="none")
        os.replace(temp, out / name)
        shards.append({"file": name, "rows": len(rows)})
        rows.clear()

    for record in corpus.records:
        path = corpus.resolve(record)
        key = Path(record.path).as_posix().lstrip("/")
        try:
            if key in seen:
                raise OSError("listed twice in the corpus")
            data = path.read_bytes()
            if not data:
                raise OSError("empty file (0 bytes)")
        except FileNotFoundError:
            skipped.append([str(path), "file not found"])
        except OSError as exc:
            skipped.append([str(path), exc.strerror or str(exc)])
        else:
            seen.add(key)
            fields = {c: getattr(record, c) for c in RECORD_COLUMNS}
            fields["source"] = Path(record.source).as_posix().lstrip("/") if record.source else ""
            rows.append({"key": key, "image": data, "sha256": hashlib.sha256(data).hexdigest(), **fields})
            if len(rows) == images_per_shard:
                flush()
        if progress:
            progress(1)
    flush()
    index = {
        "format": FORMAT,
        "records": sum(s["rows"] for s in shards),
        "shards": shards,
        "row_group_size": row_group_size,
        "skipped": skipped,
    }
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    return index
