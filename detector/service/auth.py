"""API keys and per-caller rate limits.

Keys are random 256-bit tokens; only their SHA-256 is kept (a key file or ``$DETECTOR_API_KEYS``, entries
``name:sha256hex``), so a leaked key file grants nothing. A fast hash is enough for keys this long (no
dictionary to guess from); comparison is constant-time. ``detector serve-key FILE --name NAME`` makes one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

from detector.errors import DetectorError

KEYS_ENV = "DETECTOR_API_KEYS"
KEY_PREFIX = "dk_"


class ApiKeyFileError(DetectorError, ValueError):
    """A key file or key entry is malformed."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _parse(entries: list[str], origin: str) -> dict[str, str]:
    """``{hash: name}`` from ``name:hash`` entries (blank lines and ``#`` comments skipped)."""
    keys: dict[str, str] = {}
    for n, raw in enumerate(entries, 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, digest = entry.rpartition(":")
        digest = digest.strip().lower()
        if (
            not sep
            or not name.strip()
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise ApiKeyFileError(f"{origin}:{n}: expected 'name:sha256hex', got {entry[:40]!r}")
        keys[digest] = name.strip()
    return keys


class KeyStore:
    """The hashed API keys the service accepts."""

    def __init__(self, hashes: dict[str, str] | None = None):
        self.hashes = dict(hashes or {})

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, env: str | None = None) -> KeyStore:
        hashes: dict[str, str] = {}
        if path is not None:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ApiKeyFileError(f"cannot read key file {path} ({exc.strerror or exc})") from None
            hashes.update(_parse(text.splitlines(), str(path)))
        env = os.environ.get(KEYS_ENV) if env is None else env
        if env:
            hashes.update(_parse(env.replace(",", "\n").split(), f"${KEYS_ENV}"))
        return cls(hashes)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def identify(self, key: str | None) -> str | None:
        """The key's name, or ``None`` for a missing or unknown key."""
        if not key:
            return None
        digest = hash_key(key)
        for known, name in self.hashes.items():
            if hmac.compare_digest(known, digest):
                return name
        return None


def add_key(path: str | os.PathLike, name: str) -> str:
    """Make a key, append its hash to ``path`` (created readable by the owner only); returns the key,
    which is shown once and stored nowhere."""
    if not name or ":" in name or "#" in name or any(c.isspace() for c in name):
        raise ApiKeyFileError(f"a key name must be non-empty, without ':', '#' or spaces; got {name!r}")
    path = Path(path)
    existing = _parse(path.read_text().splitlines(), str(path)) if path.exists() else {}
    if name in existing.values():
        raise ApiKeyFileError(f"{path}: a key named {name!r} already exists")
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"{name}:{hash_key(key)}\n")
    return key


class RateLimiter:
    """A token bucket per caller: ``per_minute`` tokens a minute, bursts up to ``burst`` (by default the
    same number). Requests spend them (``allow``); the probe guard also spends one per forged reading."""

    def __init__(self, max_callers: int = 100_000):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.max_callers = max_callers

    def _level(self, caller: str, per_minute: float, burst: float, now: float) -> float:
        tokens, last = self._buckets.get(caller, (burst, now))
        return min(burst, tokens + (now - last) * per_minute / 60.0)

    def tokens(self, caller: str, per_minute: float, burst: float | None = None) -> float:
        """The caller's tokens now, spending none."""
        burst = per_minute if burst is None else burst
        with self._lock:
            return self._level(caller, per_minute, burst, time.monotonic())

    def allow(self, caller: str, per_minute: float, burst: float | None = None) -> float:
        """0 when the request may go ahead (a token is spent), else the seconds to wait for one."""
        burst = per_minute if burst is None else burst
        now = time.monotonic()
        with self._lock:
            tokens = self._level(caller, per_minute, burst, now)
            spent = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if spent else tokens, now)
            if len(self._buckets) > self.max_callers:  # forget the oldest callers (bounded memory)
                for old in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: self.max_callers // 10]:
                    del self._buckets[old]
        return 0.0 if spent else (1.0 - tokens) * 60.0 / per_minute

    def snapshot(self) -> dict[str, tuple[float, float]]:
        """caller -> (tokens, wall-clock time of their last update): what :meth:`restore` takes back."""
        offset = time.time() - time.monotonic()
        with self._lock:
            return {caller: (tokens, last + offset) for caller, (tokens, last) in self._buckets.items()}

    def restore(self, buckets: dict[str, tuple[float, float]]) -> None:
        offset = time.time() - time.monotonic()
        with self._lock:
            self._buckets = {caller: (tokens, last - offset) for caller, (tokens, last) in buckets.items()}
