"""The keyed payload: error correction, key-derived scrambling, and the hypothesis test that decides.

Layout of the ``n_bits`` message the model carries (default 64): a payload id of ``payload_bits``
(default 16) is Reed-Solomon coded over 4-bit symbols (GF(16), at most 15 symbols: 16 data bits + 44
parity bits correct any 5 wrong symbols), the bits left over are key-derived pilot bits, and the whole
word is permuted and XOR-masked with streams derived from the secret key by HMAC-SHA256. Without the
key the embedded bits look random: a message cannot be read, and one cannot be forged.

**The test.** Decoding proposes payloads (the RS decoder on the word as read, then Chase-style with
the least confident symbols erased); re-encoding one gives the word we expect. Each decoded bit either
agrees with it or not, and carries a weight ``w_i``: its |logit| as a share of the largest, rounded to
an integer 1..64 (``soft_weights``). The score is the weight of the agreeing bits minus that of the
disagreeing ones. Under H0 (the image carries no watermark under this key) the decoded bits are
independent of the key, so after unmasking each one agrees with a fixed codeword by a fair coin,
independent of the weights (they are a function of the image alone): the score is a sum of
``w_i * e_i`` with fair signs ``e_i``, whose exact tail we compute by convolution. The decoder may pick
any of the ``2**payload_bits`` payloads, so the p-value is Bonferroni-corrected over all of them:
``p = min(1, 2**payload_bits * P(sum w_i e_i >= score))``. "Watermarked" is declared at ``p <= fpr``
(default 1e-6). Without confidences every weight is 1 and this is the count test,
``P(Binomial(n, 1/2) >= k)`` (with 64 bits and 16-bit payloads: k >= 58). Weighting changes which
marks pass, not the bound: a mark whose wrong bits are the ones the decoder doubted (what JPEG, WebP
and denoising leave) passes with fewer matching bits, and one whose wrong bits were read confidently
needs more. The bound holds however candidates were proposed, since it covers every payload at once.

**Why the decoder's search needs no further correction.** The decoder tries many readings of the image
(scale, sub-cell phase, rotation, cyclic shift) but keeps the one it is most *confident* in (mean
|logit|), a choice made from the image alone, never from the key. So the bits handed to this test are a
fixed function of the image, and the argument above applies to them unchanged. (Choosing the reading
that best matches the key's codewords would need a Bonferroni factor for every reading tried; we do not
do that.) The same holds for the lattice-synchronised and mirrored views of :mod:`detector.watermark.sync`:
more readings are tried, but the one kept is still the most confident, chosen without the key. What a
wider search does change is the *distribution* of the kept bits (the maximum confidence over more
readings), which the test does not assume anything about beyond their independence from the key.
``experiments/watermark_fpr/`` checks the assumption empirically: the unmasked bits of clean
images against a Binomial(n, 1/2).

**Content binding** (``content_bits = m > 0``, see :mod:`detector.watermark.binding`). The RS data
word then carries the payload *and* an m-bit keyed hash of the marked image's content, and the
detector, given the hash ``h`` of the image it received, makes two claims, each with its own bound:

* ``watermarked`` (the mark belongs to this image): the decoded hash is *accepted* against ``h``
  (it differs in at most ``tolerance`` bits, all among the ``doubtful`` bits of ``h`` closest to
  flipping, see :mod:`detector.watermark.binding`; ``doubtful = m``: any ``tolerance`` bits) and
  ``p = 2**payload_bits * N_t * P(score) <= fpr`` (``P(score)``: the tail above), where ``N_t`` counts
  the accepted hashes, ``sum_{d <= tolerance} C(doubtful, d)``. With ``content_views = v`` received
  hashes (the API's: the image as read and its border-trimmed copy) either may accept and ``N_t`` is
  ``v`` times as large. Which bits are doubtful is a function of the received image (and the key's
  hyperplanes, drawn from a stream independent of the mask's), so under H0 that bounds the claim over
  every (payload, hash) candidate the test could accept: P(watermarked | no mark) <= fpr, as before.
* ``forged`` (a mark of this key is present but was made for other content): the decoded hash is
  not accepted and ``p = 2**(payload_bits + m) * P(score) <= fpr``
  (Bonferroni over every payload and hash). Also <= fpr under H0.

So an unmarked image gets *some* positive claim with probability at most ``2 * fpr`` (``3 * fpr``
with the inverted-mark check of the API), and the ``watermarked`` claim alone keeps ``fpr``.

**Registered payloads** (``registered``: the ids a registry holds for this key, read without looking
at the image). A key's owner registers a few payloads (a generator, a model version), not 65,536, and
a test that only has to cover those needs less agreement. Each claim then spends half its ``fpr`` on
the registered codewords and half on all of them (a weighted Bonferroni bound): a registered payload
gets ``p = 2 * |R| * H * P(score)`` (``H``: the hashes the claim accepts), any payload
``p = 2 * 2**payload_bits * H * P(score)``, the smaller one counts. Under H0 each half is at most
``fpr / 2``, so every claim keeps its ``fpr``; a mark whose payload is missing from the registry is
still found, at one bit more of agreement. With 64 bits, binding v2 and 100 registered payloads the
count test needs 57 bound bits instead of 59 (``threshold(registered=100)``; 54 with one). The set must
not be chosen after looking at the image: registering a photo's best candidate payload, then testing
it again, would spend the registered half on that photo (so registry write access is as sensitive as
the key; docs/security.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets
import string
import warnings
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np

from detector.errors import DetectorError
from detector.watermark.reed_solomon import ErasureDecoder

KEY_HEADER = "detector-watermark-key-v1"
MIN_KEY_BYTES = 16


class KeyFileWarning(UserWarning):
    """A key file is usable but unsafe (readable by other users)."""


class KeyFileError(DetectorError, ValueError):
    """A key file is missing, unreadable or malformed."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class WatermarkKey:
    """A secret key. ``key_id`` (a public fingerprint) tells registries and reports which key was used."""

    secret: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"key-id:" + self.secret).hexdigest()[:16]

    def stream(self, label: str, n_bytes: int) -> bytes:
        """Deterministic pseudo-random bytes for ``label`` (HMAC-SHA256 in counter mode)."""
        out = bytearray()
        counter = 0
        while len(out) < n_bytes:
            out += hmac.new(self.secret, f"{label}:{counter}".encode(), hashlib.sha256).digest()
            counter += 1
        return bytes(out[:n_bytes])

    def __repr__(self) -> str:  # never print the secret
        return f"WatermarkKey(key_id={self.key_id})"


def generate_key(path: str | os.PathLike, overwrite: bool = False) -> WatermarkKey:
    """Write a new random 256-bit key file (owner-readable only)."""
    from detector.io import atomic_writer

    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyFileError(path, "already exists (refusing to overwrite a key)")
    if path.is_dir():
        raise KeyFileError(path, "is a folder")
    key = WatermarkKey(secrets.token_bytes(32))
    # The temporary file is created 0600 (mkstemp) and keeps that mode: the secret is never in a file
    # anyone else can read, not even for the moment between writing and a chmod.
    with atomic_writer(path, "w", mode_bits=0o600) as handle:
        handle.write(f"{KEY_HEADER}\n{key.secret.hex()}\n")
    return key


def load_key(path: str | os.PathLike) -> WatermarkKey:
    """Read a key file: the header line, then the secret as hex (at least 16 bytes)."""
    path = Path(path)
    if not path.exists():
        raise KeyFileError(path, "no such key file")
    if not path.is_file():
        raise KeyFileError(path, "not a regular file")
    mode = path.stat().st_mode
    if mode & 0o002:
        raise KeyFileError(path, "is world-writable: anyone could replace the key; chmod 600 it")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    if len(raw) > 4096:
        raise KeyFileError(path, "too large to be a key file")
    if not raw.strip():
        raise KeyFileError(path, "empty key file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(path, "not a text key file (binary content)") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != KEY_HEADER:
        raise KeyFileError(path, f"malformed key file (first line must be {KEY_HEADER!r})")
    body = "".join(lines[1:])
    if not body or any(c not in string.hexdigits for c in body) or len(body) % 2:
        raise KeyFileError(path, "malformed key file (the secret must be an even number of hex digits)")
    secret = bytes.fromhex(body)
    if len(secret) < MIN_KEY_BYTES:
        raise KeyFileError(path, f"key too short ({len(secret)} bytes; at least {MIN_KEY_BYTES})")
    if mode & 0o077:
        warnings.warn(
            f"{path}: key file is readable by other users (mode {mode & 0o777:o}); chmod 600 it",
            KeyFileWarning,
            stacklevel=2,
        )
    return WatermarkKey(secret)


@lru_cache(maxsize=512)
def _tail_count(n: int, k: int) -> int:
    return sum(math.comb(n, i) for i in range(k, n + 1))


def binomial_pvalue(matches: int, n: int) -> float:
    """P(Binomial(n, 1/2) >= matches), exact (integer arithmetic)."""
    if matches <= 0:
        return 1.0
    if matches > n:
        return 0.0
    return _tail_count(n, matches) / 2**n


#: The ``watermarked`` test scores every (payload, accepted hash) codeword by brute force when the
#: payload has at most this many bits (2**16 words: one matrix product per decode, ~16 MB of table).
EXHAUSTIVE_PAYLOAD_BITS = 16
#: Chase decoding combines erasures among at most this many of the least confident symbols.
CHASE_POOL = 8
#: The soft test's weights: each bit's |logit| as a share of the largest, rounded to 1 .. SOFT_LEVELS.
SOFT_LEVELS = 64


def soft_weights(confidence: np.ndarray) -> np.ndarray:
    """Integer weights 1 .. ``SOFT_LEVELS`` from per-bit confidences (a function of them alone)."""
    c = np.nan_to_num(np.abs(np.asarray(confidence, dtype=np.float64)), posinf=0.0)
    top = float(c.max()) if c.size else 0.0
    if top <= 0:
        return np.ones(c.size, dtype=np.int64)
    return np.maximum(1, np.rint(c / top * SOFT_LEVELS)).astype(np.int64)


def _signed_sum_tail(weights: np.ndarray) -> np.ndarray:
    """``t[s + W] = P(sum_i w_i e_i >= s)`` for integers ``-W <= s <= W`` (``W = sum w``), the ``e_i``
    independent fair signs: the exact null distribution, by convolving one weight at a time."""
    return _signed_sum_tail_of(tuple(int(w) for w in weights)).copy()


@lru_cache(maxsize=8)
def _signed_sum_tail_of(weights: tuple[int, ...]) -> np.ndarray:
    # Cached: an image's word is tested as read and inverted, with the same weights.
    total = sum(weights)
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for w in weights:  # the support never reaches the ends before the last weight: nothing falls off
        right, left = np.zeros_like(dist), np.zeros_like(dist)
        right[w:], left[: len(dist) - w] = dist[: len(dist) - w], dist[w:]
        dist = 0.5 * (right + left)
    return np.cumsum(dist[::-1])[::-1]


class _WeightedTest:
    """The test for one decoded word: score = the weights of agreeing bits minus those of disagreeing
    ones. Under H0 each bit agrees with a keyed codeword by a fair coin independent of the weights, so
    ``P(score >= s)`` is the tail of a weighted sum of fair signs (unit weights: the binomial count)."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights
        self.total = int(weights.sum())
        self.unit = bool((weights == 1).all())
        self._tail = None if self.unit else _signed_sum_tail(weights)

    def score(self, agree: np.ndarray) -> int:
        return int(np.where(agree, self.weights, -self.weights).sum())

    def tail(self, score: int) -> float:
        if self.unit:  # score = 2k - n for k matching bits: the count test's exact tail
            return binomial_pvalue((score + self.total) // 2, self.total)
        return float(self._tail[min(max(score, -self.total), self.total) + self.total])

    def normalised(self, score: int) -> float:
        return score / self.total if self.total else 0.0


def min_matches(n: int, fpr: float, multiplicity: int = 1) -> int:
    """The smallest k with multiplicity * P(Binomial(n, 1/2) >= k) <= fpr (n + 1 if none)."""
    for k in range(n // 2, n + 1):
        if multiplicity * binomial_pvalue(k, n) <= fpr:
            return k
    return n + 1


@dataclass(frozen=True)
class Decoded:
    """What the payload layer makes of a word of decoded bits."""

    payload: int | None  # None: no codeword found
    matches: int  # bits agreeing with the re-encoded word (0 when no payload)
    n_bits: int
    p_value: float
    watermarked: bool
    expected: np.ndarray | None  # the re-encoded word (embedded order), when a payload was found
    content: int | None = None  # the decoded content hash (binding on), as an integer
    distance: int | None = None  # its Hamming distance to the received image's hash
    forged: bool = False  # a mark of this key whose content hash does not match the image
    score: float | None = None  # the weighted agreement the test used, -1 .. 1 (1: every bit agrees)
    registered: bool = False  # the p-value is the registered payloads' (see "Registered payloads")

    @property
    def bit_accuracy(self) -> float | None:
        return None if self.payload is None else self.matches / self.n_bits


class PayloadCodec:
    """Payload id <-> n-bit keyed word, and the test. One codec per (n_bits, payload_bits, key)."""

    def __init__(
        self,
        key: WatermarkKey,
        n_bits: int = 64,
        payload_bits: int = 16,
        content_bits: int = 0,
        tolerance: int = 2,
        content_views: int = 1,
        doubtful: int | None = None,
    ):
        import reedsolo

        self.symbol_bits = 4 if n_bits <= 64 else 8
        s = self.symbol_bits
        if payload_bits <= 0 or payload_bits % s:
            raise ValueError(f"payload_bits must be a positive multiple of {s}, got {payload_bits}")
        if content_bits < 0 or content_bits % s:
            raise ValueError(f"content_bits must be a non-negative multiple of {s}, got {content_bits}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        if content_views < 1:
            raise ValueError(f"content_views must be >= 1, got {content_views}")
        self.content_bits = content_bits
        #: The hash bits that may differ: the ``doubtful`` least certain of the received hash.
        self.doubtful = content_bits if doubtful is None else min(doubtful, content_bits)
        if self.doubtful < 0:
            raise ValueError(f"doubtful must be >= 0, got {doubtful}")
        self.tolerance = min(tolerance, self.doubtful)
        #: How many received hashes (views of the image) the ``watermarked`` test may compare against.
        self.content_views = content_views
        self.n_symbols = min(2**s - 1, n_bits // s)
        self.data_symbols = (payload_bits + content_bits) // s
        self.parity = self.n_symbols - self.data_symbols
        if self.parity < 2:
            raise ValueError(
                f"{n_bits} bits leave no room for error correction of {payload_bits} payload bits"
                f" and {content_bits} content bits"
            )
        self.key = key
        self.n_bits = n_bits
        self.payload_bits = payload_bits
        self.rs = reedsolo.RSCodec(nsym=self.parity, nsize=self.n_symbols, c_exp=s)
        self.erasure_decoder = ErasureDecoder(
            self.n_symbols, self.parity, s, self.rs.prim, self.rs.generator, self.rs.fcr
        )
        n_code = self.n_symbols * s
        self.pilot = np.unpackbits(np.frombuffer(key.stream("pilot", n_bits), np.uint8))[: n_bits - n_code]
        self.mask = np.unpackbits(np.frombuffer(key.stream("mask", n_bits), np.uint8))[:n_bits]
        order = np.frombuffer(key.stream("perm", 4 * n_bits), dtype=">u4").astype(np.int64)
        self.perm = np.argsort(order, kind="stable")  # word position i goes to embedded position perm[i]

    @property
    def max_payload(self) -> int:
        return 2**self.payload_bits - 1

    def _scramble(self, word: np.ndarray) -> np.ndarray:
        out = np.empty(self.n_bits, dtype=np.uint8)
        out[self.perm] = word
        return out ^ self.mask

    def _unscramble(self, bits: np.ndarray) -> np.ndarray:
        return (bits ^ self.mask)[self.perm]

    def _symbols_to_bits(self, symbols) -> np.ndarray:
        s = self.symbol_bits
        return np.array([(v >> (s - 1 - j)) & 1 for v in symbols for j in range(s)], dtype=np.uint8)

    def _bits_to_symbols(self, bits: np.ndarray) -> bytearray:
        s = self.symbol_bits
        groups = bits[: self.n_symbols * s].reshape(self.n_symbols, s)
        return bytearray(int("".join(map(str, g)), 2) for g in groups)

    def encode(self, payload: int, content: int = 0) -> np.ndarray:
        """The n-bit word to embed for ``payload`` (and the ``content`` hash when binding; uint8 0/1,
        embedded order)."""
        if not isinstance(payload, (int, np.integer)) or not 0 <= int(payload) <= self.max_payload:
            raise ValueError(f"payload must be an integer in 0..{self.max_payload}, got {payload!r}")
        if not 0 <= int(content) < 2**self.content_bits:
            raise ValueError(f"content hash must fit in {self.content_bits} bits, got {content!r}")
        s = self.symbol_bits
        value = (int(payload) << self.content_bits) | int(content)
        data = [(value >> (s * (self.data_symbols - 1 - i))) & (2**s - 1) for i in range(self.data_symbols)]
        codeword = self.rs.encode(bytearray(data))
        word = np.concatenate([self._symbols_to_bits(codeword), self.pilot])
        return self._scramble(word)

    def _payload_of(self, data: bytearray) -> int:
        value = 0
        for v in data:
            value = (value << self.symbol_bits) | int(v)
        return value

    def _candidates(self, word: np.ndarray, confidence: np.ndarray | None):
        """Payloads proposed by RS decoding (Chase-style when confidences are given): the word as read,
        then with the ``e`` least confident symbols erased for every ``e`` up to the parity, then every
        choice of ``k - 3`` or ``k - 2`` erasures among the ``k = min(parity + 1, CHASE_POOL)`` least
        confident (84 tries with the bound layout's 7 parity symbols, however long the parity).
        An erased wrong symbol costs half of what an unlocated error costs, so a word with more wrong
        symbols than plain decoding fixes is still found where the decoder doubted them. How candidates
        are proposed does not touch the test's bound (it covers every codeword)."""
        symbols = self._bits_to_symbols(word)
        tries: list[tuple[int, ...]] = [()]
        if confidence is not None:
            s, parity = self.symbol_bits, self.parity
            per_symbol = confidence[: self.n_symbols * s].reshape(self.n_symbols, s).min(axis=1)
            order = [int(i) for i in np.argsort(per_symbol, kind="stable")]
            tries += [tuple(sorted(order[:e])) for e in range(1, parity + 1)]
            pool = order[: min(parity + 1, CHASE_POOL)]
            sizes = [e for e in (len(pool) - 3, len(pool) - 2) if 0 < e <= parity]
            tries += [tuple(sorted(c)) for e in sizes for c in combinations(pool, e)]
        seen = set()
        decoder = self.erasure_decoder
        syndromes = decoder.syndromes(symbols)  # once: every try decodes the same word
        for erase in dict.fromkeys(tries):
            corrected = decoder.decode(symbols, syndromes, erase)
            if corrected is None:
                continue
            value = self._payload_of(corrected[: self.data_symbols])
            if value not in seen:
                seen.add(value)
                yield value >> self.content_bits, value & (2**self.content_bits - 1)

    def decode(
        self,
        bits: np.ndarray,
        confidence: np.ndarray | None = None,
        fpr: float = 1e-6,
        content_hash: np.ndarray | None = None,
        content_margins: np.ndarray | None = None,
        registered: np.ndarray | None = None,
    ) -> Decoded:
        """Decode raw bits (embedded order; ``confidence`` = |logit| per bit, optional) and test them.

        With confidences the test is the weighted (soft) one of the module docstring, otherwise the
        count of matching bits. With binding on, ``content_hash`` is the received image's hash, or up
        to ``content_views`` of them as rows (views of the image: either may accept), and
        ``content_margins`` how far each of their bits is from flipping (needed unless every bit may
        differ, ``doubtful == content_bits``); without a hash a bound mark can only be tested with the
        any-hash bound and is never declared ``forged``. ``registered``: payload ids registered under
        this key (module docstring, "Registered payloads"); None or empty: every payload alike."""
        bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
        if bits.size != self.n_bits:
            raise ValueError(f"expected {self.n_bits} bits, got {bits.size}")
        conf = None
        if confidence is not None:
            conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
            if conf.size != self.n_bits:
                raise ValueError(f"expected {self.n_bits} confidences, got {conf.size}")
        reg = self._registered(registered)
        test = _WeightedTest(soft_weights(conf) if conf is not None else np.ones(self.n_bits, np.int64))
        received = fixed = None
        if self.content_bits and content_hash is not None:
            from detector.watermark.binding import int_to_hash

            received = np.atleast_2d(np.asarray(content_hash))
            if len(received) > self.content_views:
                raise ValueError(f"{len(received)} received hashes, the test allows {self.content_views}")
            fixed = self._certain_bits(received, content_margins)

        def distance(content: int) -> int | None:
            if received is None:
                return None
            return int((int_to_hash(content, self.content_bits) != received).sum(axis=1).min())

        # (score, payload, content, hash distance, accepted) per codeword proposed
        proposed = []
        word = self._unscramble(bits)
        for payload, content in self._candidates(word, None if conf is None else conf[self.perm]):
            score = test.score(self.encode(payload, content) == bits)
            dist, accepted = None, False
            if received is not None:
                differ = int_to_hash(content, self.content_bits) != received  # (views, bits)
                allowed = (differ.sum(axis=1) <= self.tolerance) & ~(differ & fixed).any(axis=1)
                dist, accepted = int(differ.sum(axis=1).min()), bool(allowed.any())
            proposed.append((score, payload, content, dist, accepted))
        if received is not None or not self.content_bits:
            # Every codeword the `watermarked` test accepts, scored at once: the best may be one that
            # RS and Chase decoding miss (errors spread over more symbols than they can fix).
            searched = [reg] if reg is not None else []
            if self.payload_bits <= EXHAUSTIVE_PAYLOAD_BITS:
                searched.append(None)  # every payload
            for payloads in searched:
                score, payload, content = self._best_accepted(bits, test.weights, received, fixed, payloads)
                proposed.append((score, payload, content, distance(content), True))
        if not proposed:
            return Decoded(None, 0, self.n_bits, 1.0, False, None)

        def tested(candidate, bound: bool) -> Decoded:
            score, payload, content, dist, _ = candidate
            p, from_registered = self._p_value(test.tail(score), payload, bound, reg)
            expected = self.encode(payload, content)
            return Decoded(
                payload,
                int((expected == bits).sum()),
                self.n_bits,
                p,
                False,
                expected,
                content if self.content_bits else None,
                dist,
                score=test.normalised(score),
                registered=from_registered,
            )

        def best(candidates, bound: bool):  # the smallest p-value; at equal p the higher score
            return min(candidates, key=lambda c: (self._p_value(test.tail(c[0]), c[1], bound, reg)[0], -c[0]))

        any_hash = best(proposed, bound=not self.content_bits)
        if received is None:  # unbound, or no hash to check: every candidate counts, never `forged`
            result = tested(any_hash, bound=not self.content_bits)
            return dataclasses.replace(result, watermarked=result.p_value <= fpr)
        accepted = [c for c in proposed if c[4]]
        bound = tested(best(accepted, bound=True), bound=True) if accepted else None
        if bound is not None and bound.p_value <= fpr:
            return dataclasses.replace(bound, watermarked=True)
        other = tested(any_hash, bound=False)
        if not any_hash[4]:
            return dataclasses.replace(other, forged=other.p_value <= fpr)
        return bound or other

    @staticmethod
    def _registered(registered: np.ndarray | None) -> frozenset[int] | None:
        if registered is None:
            return None
        ids = frozenset(int(i) for i in np.asarray(registered).reshape(-1))
        return ids or None

    def _p_value(
        self, tail: float, payload: int, bound: bool, reg: frozenset[int] | None
    ) -> tuple[float, bool]:
        """``(p, from the registered half)`` of one codeword's score tail (module docstring)."""
        full = self.multiplicity(bound) * tail
        if reg is None:
            return min(1.0, full), False
        if payload in reg:
            registered = self.multiplicity(bound, len(reg)) * tail
            if registered <= 2 * full:
                return min(1.0, registered), True
        return min(1.0, 2 * full), False

    @cached_property
    def _linear_code(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(zero, payload basis, hash basis)``: the embedded word is GF(2)-linear in the payload and
        hash bits (RS over GF(2^4) is linear over GF(2); the pilot, the permutation and the mask are
        fixed), so ``encode(p, h) = zero ^ (bits of p) @ P ^ (bits of h) @ H`` (mod 2), LSB first."""
        zero = self.encode(0, 0)
        payload = np.stack([self.encode(1 << j, 0) ^ zero for j in range(self.payload_bits)])
        content = [self.encode(0, 1 << j) ^ zero for j in range(self.content_bits)]
        return zero, payload, np.array(content, dtype=np.uint8).reshape(self.content_bits, self.n_bits)

    @cached_property
    def _payload_signs(self) -> np.ndarray:
        """(2**payload_bits, n_bits) float32: +-1 for each payload's contribution to the word."""
        return self._signs_of(np.arange(2**self.payload_bits, dtype=np.int64))

    def _signs_of(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), n_bits) float32: +-1 for each of these payloads' contribution to the word."""
        _, basis, _ = self._linear_code
        payload_bits = ((ids[:, None] >> np.arange(self.payload_bits)) & 1).astype(np.int32)
        return (1 - 2 * ((payload_bits @ basis.astype(np.int32)) % 2)).astype(np.float32)

    def _accepted_hashes(self, received: np.ndarray | None, fixed: np.ndarray | None) -> np.ndarray:
        """(k, content_bits) uint8: every hash the ``watermarked`` test accepts (duplicates dropped)."""
        if received is None:
            return np.zeros((1, 0), dtype=np.uint8)
        out = []
        for view, certain in zip(received, fixed, strict=True):
            free = np.flatnonzero(~certain)
            for d in range(self.tolerance + 1):
                for flips in combinations(free, d):
                    h = view.astype(np.uint8).copy()
                    h[list(flips)] ^= 1
                    out.append(h)
        return np.unique(np.stack(out), axis=0)

    def _best_accepted(
        self,
        bits: np.ndarray,
        weights: np.ndarray,
        received: np.ndarray | None,
        fixed: np.ndarray | None,
        payloads: frozenset[int] | None = None,
    ) -> tuple[int, int, int]:
        """``(score, payload, hash)`` of the best-scoring codeword among every payload (or those of
        ``payloads``) times every accepted hash: one matrix product (the score is linear in the
        payload's +-1 signs)."""
        zero, _, hash_basis = self._linear_code
        hashes = self._accepted_hashes(received, fixed)
        lsb_first = hashes[:, ::-1].astype(np.int32)  # a hash's first bit is its most significant
        hash_part = (lsb_first @ hash_basis.astype(np.int32)) % 2 ^ zero  # (k, n_bits)
        rest = (weights * (1 - 2 * (bits[None, :] ^ hash_part))).astype(np.float32)  # (k, n_bits)
        ids = None if payloads is None else np.array(sorted(payloads), dtype=np.int64)
        signs = self._payload_signs if ids is None else self._signs_of(ids)
        scores = signs @ rest.T  # (payloads, k): exact, small integers
        row, k = np.unravel_index(int(np.argmax(scores)), scores.shape)
        from detector.watermark.binding import hash_to_int

        content = hash_to_int(hashes[k])
        payload = int(row) if ids is None else int(ids[row])
        return int(round(float(scores[row, k]))), payload, content

    def _certain_bits(self, received: np.ndarray, margins: np.ndarray | None) -> np.ndarray:
        """(views, bits) mask of the received hash bits that must agree: all but the ``doubtful``
        least certain of each view."""
        if self.doubtful >= self.content_bits:
            return np.zeros(received.shape, dtype=bool)
        if margins is None:
            raise ValueError(
                f"the binding test accepts differences only among the {self.doubtful} least certain"
                " hash bits: pass content_margins"
            )
        margins = np.atleast_2d(np.asarray(margins, dtype=np.float64))
        if margins.shape != received.shape:
            raise ValueError(f"content_margins {margins.shape} must match content_hash {received.shape}")
        rank = np.argsort(np.argsort(margins, axis=1, kind="stable"), axis=1, kind="stable")
        return rank >= self.doubtful

    @property
    def bound_candidates(self) -> int:
        """Content hashes the ``watermarked`` test accepts: up to ``tolerance`` of a received view's
        ``doubtful`` least certain bits changed, for any view."""
        return self.content_views * sum(math.comb(self.doubtful, i) for i in range(self.tolerance + 1))

    def multiplicity(self, bound: bool = True, registered: int | None = None) -> int:
        """Codewords the test is corrected for: every payload, times the hashes it may accept.
        ``registered`` (a count): the correction of a registered payload's codewords, twice their
        number (the registered half of the test, module docstring)."""
        hashes = self.bound_candidates if bound else 2**self.content_bits
        return (2 * registered if registered else 2**self.payload_bits) * hashes

    def p_value(self, matches: int, bound: bool = True, registered: int | None = None) -> float:
        """Bonferroni over every codeword the test may accept: ``multiplicity * P(Binomial(n, 1/2) >= k)``
        (without binding: every payload; with it, ``bound=True`` is the ``watermarked`` test's correction,
        ``bound=False`` the any-hash one of ``forged``; ``registered``: a registered payload's, with that
        many registered)."""
        return min(1.0, self.multiplicity(bound, registered) * binomial_pvalue(matches, self.n_bits))

    def threshold(self, fpr: float = 1e-6, bound: bool = True, registered: int | None = None) -> int:
        """Matching bits needed to declare a watermark (``bound=False``: a forged one) at ``fpr``
        (``registered``: for a registered payload, with that many registered)."""
        return min_matches(self.n_bits, fpr, self.multiplicity(bound, registered))
