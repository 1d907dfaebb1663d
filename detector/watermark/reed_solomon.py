"""Reed-Solomon errors-and-erasures decoding of one received word under many erasure sets.

Chase decoding (:meth:`detector.watermark.payload.PayloadCodec._candidates`) decodes the same word
some 90 times, each time erasing a different set of its least confident symbols. A general decoder
recomputes the word's syndromes every time; here they are computed once, and each erasure set costs
only the Forney syndromes, Berlekamp-Massey on what is left, a Chien search over the positions and
Forney's formula for the values, all with small log/antilog tables (about twice as fast per try,
and the syndromes come free). The code is the one ``reedsolo`` encodes (systematic, data symbols
first, generator roots ``alpha ** (fcr + j)``), and a decode returns what ``reedsolo`` returns, try for
try (``tests/test_reed_solomon.py``): the codeword within the bounded distance (``2 * errors +
erasures <= nsym``), or nothing, and like ``reedsolo`` also some codewords beyond it (its check lets
an error locator of up to ``(nsym + erasures) / 2`` roots through; such a codeword is still a valid
candidate, the keyed test decides what it is worth).
"""

from __future__ import annotations

from itertools import zip_longest


class ErasureDecoder:
    """Decoder for an RS code of ``n`` symbols with ``nsym`` parity symbols over GF(2**c_exp)."""

    def __init__(self, n: int, nsym: int, c_exp: int, prim: int, generator: int = 2, fcr: int = 0):
        size = 2**c_exp
        if not 0 < nsym < n < size:
            raise ValueError(f"need 0 < nsym < n < {size}, got n={n}, nsym={nsym}")
        self.n, self.nsym, self.fcr, self.order = n, nsym, fcr, size - 1
        exp, log = [0] * (2 * size), [0] * size
        x = 1
        for i in range(self.order):  # powers of the generator, reduced by the primitive polynomial
            exp[i] = x
            log[x] = i
            x = _carryless_mul(x, generator, prim, size)
        for i in range(self.order, 2 * size):
            exp[i] = exp[i - self.order]
        self.exp, self.log = exp, log
        #: power[i][j]: alpha ** ((fcr + j) * (n - 1 - i)), position i's contribution to syndrome j.
        self.power = [[exp[((fcr + j) * (n - 1 - i)) % self.order] for j in range(nsym)] for i in range(n)]

    def _mul(self, a: int, b: int) -> int:
        return 0 if a == 0 or b == 0 else self.exp[self.log[a] + self.log[b]]

    def _inv(self, a: int) -> int:
        return self.exp[self.order - self.log[a]]

    def _eval(self, poly: list[int], x: int) -> int:
        """poly (lowest degree first) at x."""
        out = 0
        for coef in reversed(poly):
            out = self._mul(out, x) ^ coef
        return out

    def _poly_mul(self, a: list[int], b: list[int]) -> list[int]:
        out = [0] * (len(a) + len(b) - 1)
        for i, x in enumerate(a):
            if x:
                for j, y in enumerate(b):
                    if y:
                        out[i + j] ^= self.exp[self.log[x] + self.log[y]]
        return out

    def syndromes(self, word) -> list[int]:
        """The word's ``nsym`` syndromes (all zero: a codeword)."""
        out = [0] * self.nsym
        for symbol, powers in zip(word, self.power, strict=True):
            if symbol:
                ls = self.log[symbol]
                for j, p in enumerate(powers):
                    out[j] ^= self.exp[ls + self.log[p]]
        return out

    def decode(self, word, synd: list[int], erase: tuple[int, ...] = ()) -> list[int] | None:
        """The corrected word (all ``n`` symbols) with ``erase`` treated as erasures, or None (see the
        module docstring for which codewords are returned). ``synd``: :meth:`syndromes` of ``word``."""
        nsym, e = self.nsym, len(erase)
        if e > nsym:
            return None
        if not any(synd):
            return list(word)
        exp, order, n = self.exp, self.order, self.n
        locs = [exp[n - 1 - i] for i in erase]  # X_i, the erased positions' locators
        # Erasure locator Gamma(x) = prod (1 + X_i x), lowest degree first.
        gamma = [1]
        for x in locs:
            gamma = self._poly_mul(gamma, [1, x])
        # Forney syndromes: (Gamma * S)(x)'s coefficients e .. nsym-1 carry the errors alone.
        product = self._poly_mul(gamma, synd)
        forney = product[e:nsym]
        lam = self._massey(forney)
        nu = len(lam) - 1
        if 2 * (nu - e) + e > nsym:  # reedsolo's acceptance rule, kept so that candidates do not change
            return None
        # Chien search: error positions are where Lambda(X_i ** -1) = 0, erased ones excluded.
        errors = []
        if nu:
            erased = set(erase)
            for i in range(n):
                if i not in erased and self._eval(lam, exp[(order - (n - 1 - i)) % order]) == 0:
                    errors.append(i)
            if len(errors) != nu:
                return None
        positions = list(erase) + errors
        psi = self._poly_mul(gamma, lam) if nu else gamma  # errata locator
        omega = self._poly_mul(synd, psi)[:nsym]  # errata evaluator, S * Psi mod x ** nsym
        dpsi = [psi[k] if k % 2 == 1 else 0 for k in range(1, len(psi))]  # formal derivative
        out = list(word)
        for i in positions:
            x_inv = exp[(order - (n - 1 - i)) % order]
            denominator = self._eval(dpsi, x_inv)
            if denominator == 0:
                return None
            # Forney: e_i = X_i ** (1 - fcr) * Omega(X_i^-1) / Psi'(X_i^-1)
            value = self._mul(self._eval(omega, x_inv), self._inv(denominator))
            value = self._mul(value, exp[((1 - self.fcr) * (n - 1 - i)) % order])
            out[i] ^= value
        if any(self.syndromes(out)):
            return None
        return out

    def _massey(self, synd: list[int]) -> list[int]:
        """Berlekamp-Massey: the shortest LFSR (connection polynomial, lowest degree first) that
        generates ``synd``."""
        lam, prev = [1], [1]
        length, shift, last = 0, 1, 1
        for k, s in enumerate(synd):
            delta = s
            for i in range(1, length + 1):
                if i < len(lam) and lam[i]:
                    delta ^= self._mul(lam[i], synd[k - i])
            if delta == 0:
                shift += 1
                continue
            scale = self._mul(delta, self._inv(last))
            update = [0] * shift + [self._mul(scale, c) for c in prev]
            new = [a ^ b for a, b in zip_longest(lam, update, fillvalue=0)]
            if 2 * length <= k:
                prev, last, length, shift = lam, delta, k + 1 - length, 1
            else:
                shift += 1
            lam = new
        # Degree `length` (padded): a shorter polynomial then has too few roots and the decode fails.
        return (lam + [0] * (length + 1 - len(lam)))[: length + 1]


def _carryless_mul(a: int, b: int, prim: int, size: int) -> int:
    """a * b in GF(size) with the primitive polynomial ``prim`` (bitwise: no tables yet)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a & size:
            a ^= prim
    return out
