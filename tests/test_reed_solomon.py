"""The erasure decoder behind Chase decoding returns what reedsolo returns, try for try."""

from __future__ import annotations

import random

import pytest
import reedsolo

from detector.watermark.reed_solomon import ErasureDecoder


def _reference(rs, word, erase):
    try:
        return list(rs.decode(bytearray(word), erase_pos=list(erase) or None)[1])
    except reedsolo.ReedSolomonError:
        return None


@pytest.mark.parametrize("n, nsym, c_exp", [(15, 7, 4), (15, 6, 4), (15, 3, 4), (40, 12, 8)])
def test_every_decode_matches_reedsolo_including_beyond_its_guarantee(n, nsym, c_exp):
    """Codewords with 0 .. nsym + 1 wrong symbols and random erasure sets (within the bounded distance,
    beyond it, and garbage): the same corrected word, or the same failure, as reedsolo. Beyond the
    bounded distance reedsolo still returns some codewords (its locator check counts erasures twice);
    Chase decoding's candidates, and so the test's reported best codeword, depend on those too."""
    rs = reedsolo.RSCodec(nsym=nsym, nsize=n, c_exp=c_exp)
    decoder = ErasureDecoder(n, nsym, c_exp, rs.prim, rs.generator, rs.fcr)
    rng = random.Random(n * 100 + nsym)
    size = 2**c_exp
    outcomes = {"corrected": 0, "failed": 0, "beyond": 0}
    for _ in range(1500):
        code = list(rs.encode(bytearray(rng.randrange(size) for _ in range(n - nsym))))
        word = code[:]
        wrong = rng.sample(range(n), n if rng.random() < 0.2 else rng.randrange(nsym + 2))
        for pos in wrong:
            word[pos] ^= rng.randrange(1, size)
        erase = tuple(sorted(rng.sample(range(n), rng.randrange(nsym + 1))))
        ours = decoder.decode(word, decoder.syndromes(word), erase)
        assert ours == _reference(rs, word, erase), (word, erase)
        if ours is None:
            outcomes["failed"] += 1
        else:
            errors = sum(a != b for i, (a, b) in enumerate(zip(ours, word, strict=True)) if i not in erase)
            outcomes["beyond" if 2 * errors + len(erase) > nsym else "corrected"] += 1
            assert not any(decoder.syndromes(ours))  # always a codeword
    assert min(outcomes.values()) > 0, outcomes  # every kind of case was exercised


def test_decoding_corrects_up_to_the_bounded_distance_and_keeps_data_first():
    rs = reedsolo.RSCodec(nsym=7, nsize=15, c_exp=4)
    decoder = ErasureDecoder(15, 7, 4, rs.prim, rs.generator, rs.fcr)
    data = [3, 1, 4, 1, 5, 9, 2, 6]
    code = list(rs.encode(bytearray(data)))
    assert code[:8] == data
    word = code[:]
    for pos in (0, 5, 14):  # three errors: the most 7 parity symbols fix without erasures
        word[pos] ^= 7
    assert decoder.decode(word, decoder.syndromes(word)) == code
    for pos in (2, 3, 8, 9):  # + four erased symbols would exceed it, unless the errors are erased too
        word[pos] = 0
    assert decoder.decode(word, decoder.syndromes(word), (0, 5, 14, 2, 3, 8, 9)) == code
    assert decoder.decode(code, decoder.syndromes(code)) == code


def test_bad_code_parameters_are_refused():
    with pytest.raises(ValueError, match="nsym"):
        ErasureDecoder(15, 15, 4, 19)
    with pytest.raises(ValueError, match="nsym"):
        ErasureDecoder(16, 7, 4, 19)
