"""The payload registry: which generator (and model version) embedded a payload id under a key.

An embedded SQLite file is the default (``sqlite:///path/to/registry.db`` or a plain path); a
``postgresql://`` URL uses PostgreSQL through ``psycopg`` (installed separately). Ids are allocated
inside one write transaction (SQLite ``BEGIN IMMEDIATE`` in WAL mode; PostgreSQL retries on a unique
violation), so concurrent writers, in threads or processes, never hand out one id twice nor corrupt
the file. Records are keyed by ``(key_id, payload_id)``: several keys can share one registry.

A record also names the content-binding scheme its marks carry (``binding``, e.g.
``dct-simhash-v2/16/2of5``: hash scheme, content bits, tolerated bits of the doubtful ones): with the key and the model, that is all a
verifier needs to tell a bound mark (``watermarked``) from a transplanted one (``forged``). Older
registries get the column added on open.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from detector.errors import DetectorError

SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
    key_id TEXT NOT NULL,
    payload_id INTEGER NOT NULL,
    generator TEXT NOT NULL,
    model_version TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    content_hash TEXT,
    binding TEXT,
    PRIMARY KEY (key_id, payload_id)
)
"""
COLUMNS = "key_id, payload_id, generator, model_version, created_at, content_hash, binding"


class RegistryError(DetectorError, RuntimeError):
    """The registry cannot be opened, is full, or a record conflicts."""


@dataclass(frozen=True)
class PayloadRecord:
    key_id: str
    payload_id: int
    generator: str
    model_version: str
    created_at: str
    content_hash: str | None = None
    binding: str | None = None  # the content-binding scheme of its marks (None: unbound/legacy)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch a SQLite database to WAL mode, retrying while another process holds the lock.

    Changing the journal mode needs an exclusive lock and SQLite answers "database is locked" at once
    (without its busy handler) when several processes open a new registry together, so we retry with a
    short backoff until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


#: Longest generator name / model version a record may hold (they are printed, and written to CSV).
MAX_NAME_CHARS = 128


def check_name(value: str, what: str, required: bool = True) -> str:
    """A generator name or model version: bounded length, no control or format characters."""
    if not isinstance(value, str):
        raise RegistryError(f"{what} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise RegistryError(f"a registry record needs a {what}")
    if len(value) > MAX_NAME_CHARS:
        raise RegistryError(f"{what} is {len(value)} characters long; at most {MAX_NAME_CHARS}")
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise RegistryError(f"{what} {value!r} holds control or invisible characters ({bad[0]!r})")
    return value


class PayloadRegistry:
    """Open with a URL or path; use as a context manager or call :meth:`close`.

    ``create=False`` (what detection uses) opens an existing registry only: a mistyped path is an error,
    never a new folder and an empty database."""

    def __init__(self, url: str | os.PathLike, timeout: float = 60.0, create: bool = True):
        text = str(url)
        self.url = text
        if text.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError as exc:
                raise RegistryError(
                    "a postgresql:// registry needs the 'psycopg' package (pip install psycopg)"
                ) from exc
            self.kind = "postgresql"
            self._param = "%s"
            self._integrity = psycopg.errors.UniqueViolation
            self.conn = psycopg.connect(text, autocommit=True)
        else:
            path = Path(text[len("sqlite:///") :] if text.startswith("sqlite:///") else text)
            if path.is_dir():
                raise RegistryError(f"{path}: is a folder, not a registry file")
            if not create and not path.is_file():
                raise RegistryError(f"{path}: no such registry (a read never creates one; check the path)")
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.kind = "sqlite"
            self._param = "?"
            self._integrity = sqlite3.IntegrityError
            try:
                # check_same_thread=False: a registry opened at load time is read by the scoring threads of
                # `detector serve` (Python's sqlite3 module serialises access to one connection).
                if create:
                    self.conn = sqlite3.connect(
                        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
                    )
                else:  # mode=rw: opens an existing file, never creates one
                    uri = f"file:{quote(str(path.resolve()))}?mode=rw"
                    self.conn = sqlite3.connect(
                        uri, timeout=timeout, isolation_level=None, uri=True, check_same_thread=False
                    )
                self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                _enable_wal(self.conn, timeout)
            except sqlite3.DatabaseError as exc:
                raise RegistryError(f"{path}: not a usable SQLite registry ({exc})") from exc
        try:
            if create:
                self._execute(SCHEMA)
            else:
                self._execute("SELECT key_id, payload_id, generator FROM payloads LIMIT 1")
            self._add_binding_column()
        except Exception as exc:
            self.close()
            action = "create the registry table" if create else "read it as a registry"
            raise RegistryError(f"{self.url}: cannot {action} ({exc})") from exc

    def _add_binding_column(self) -> None:
        """Registries made before content binding lack the ``binding`` column: add it (idempotent)."""
        if self.kind == "sqlite":
            names = {row[1] for row in self._execute("PRAGMA table_info(payloads)").fetchall()}
            if "binding" not in names:
                self._execute("ALTER TABLE payloads ADD COLUMN binding TEXT")
        else:
            self._execute("ALTER TABLE payloads ADD COLUMN IF NOT EXISTS binding TEXT")

    def __enter__(self) -> PayloadRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None

    def _sql(self, query: str) -> str:
        return query.replace("?", self._param)

    def _execute(self, query: str, params: tuple = ()):
        cur = self.conn.cursor()
        cur.execute(self._sql(query), params)
        return cur

    def _begin(self) -> None:
        self._execute("BEGIN IMMEDIATE" if self.kind == "sqlite" else "BEGIN")

    def register(
        self,
        key_id: str,
        generator: str,
        model_version: str = "",
        content_hash: str | None = None,
        payload_id: int | None = None,
        max_payload: int = 2**16 - 1,
        binding: str | None = None,
    ) -> PayloadRecord:
        """Add a record; with ``payload_id=None`` the next free id is allocated atomically."""
        check_name(generator, "generator name")
        check_name(model_version, "model version", required=False)
        for _attempt in range(20):
            self._begin()
            try:
                if payload_id is None:
                    row = self._execute(
                        "SELECT COALESCE(MAX(payload_id), -1) FROM payloads WHERE key_id = ?", (key_id,)
                    ).fetchone()
                    new_id = int(row[0]) + 1
                    if new_id > max_payload:
                        raise RegistryError(
                            f"registry full for key {key_id}: all ids 0..{max_payload} are used"
                        )
                else:
                    new_id = int(payload_id)
                    if not 0 <= new_id <= max_payload:
                        raise RegistryError(f"payload id {new_id} is outside 0..{max_payload}")
                record = PayloadRecord(
                    key_id, new_id, generator, model_version, _now(), content_hash, binding
                )
                self._execute(
                    f"INSERT INTO payloads ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key_id, new_id, generator, model_version, record.created_at, content_hash, binding),
                )
                self._execute("COMMIT")
                return record
            except self._integrity as exc:
                self._execute("ROLLBACK")
                if payload_id is not None:
                    raise RegistryError(
                        f"payload id {payload_id} is already registered for key {key_id}"
                    ) from exc
                continue  # another writer took the id between our read and write (PostgreSQL): retry
            except BaseException:
                self._execute("ROLLBACK")
                raise
        raise RegistryError("could not allocate a payload id after 20 attempts (heavy contention)")

    def lookup(self, key_id: str, payload_id: int) -> PayloadRecord | None:
        row = self._execute(
            f"SELECT {COLUMNS} FROM payloads WHERE key_id = ? AND payload_id = ?",
            (key_id, int(payload_id)),
        ).fetchone()
        return None if row is None else PayloadRecord(*row)

    def records(self, key_id: str | None = None) -> list[PayloadRecord]:
        query = f"SELECT {COLUMNS} FROM payloads"
        params: tuple = ()
        if key_id is not None:
            query += " WHERE key_id = ?"
            params = (key_id,)
        rows = self._execute(query + " ORDER BY key_id, payload_id", params).fetchall()
        return [PayloadRecord(*row) for row in rows]

    def check(self) -> bool:
        """Run the database's own integrity check (SQLite); True when healthy."""
        if self.kind != "sqlite":
            return True
        return self._execute("PRAGMA integrity_check").fetchone()[0] == "ok"
