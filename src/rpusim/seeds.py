"""Independent seeds for a tile's random streams: numpy's ``SeedSequence``, its first word.

A tile derives every stream's seed from its own seed and a path of small integers (stream,
update call, ...): ``SeedSequence([seed, *path]).generate_state(1)``, masked to 31 bits. The
pulsed update asks for one per call, and within a training step numpy's ``SeedSequence`` costs
~50 us there (its Python objects are cold after the step's kernels: ~5 us in a loop of them),
~2 % of a 2x128 step at batch 1. :func:`child_seed` computes the same word in one compiled call
where every value fits in 32 bits (always, for rpusim's seeds and paths), and asks numpy
otherwise; the tests compare the two.

The algorithm (Melissa O'Neill's ``seed_seq`` alternative, as numpy implements it, pool of 4
uint32 words, all arithmetic mod 2**32): each entropy word ``v`` is hashed as ``v ^= c;
c *= MULT_A; v *= c; v ^= v >> 16`` with the running constant ``c`` (from ``INIT_A``) into the
pool, the pool's words are mixed pairwise (``mix(x, y) = L x - R y``, then ``^= >> 16``) with
hashes of each other, and the first output word is the pool's first word through the same
kind of hash with ``INIT_B`` / ``MULT_B``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF
_POOL = 4


@njit(cache=True, nogil=True, inline="always")
def _hash(v, c):
    """``(hash of v, next c)``: ``v ^= c; c *= MULT_A; v *= c; v ^= v >> 16`` (mod 2**32)."""
    v ^= c
    c = (c * np.uint64(_MULT_A)) & np.uint64(_M32)
    v = (v * c) & np.uint64(_M32)
    return v ^ (v >> np.uint64(16)), c


@njit(cache=True, nogil=True, inline="always")
def _mix(x, y):
    """``L x - R y`` (mod 2**32), then ``^= >> 16``."""
    r = (np.uint64(_MIX_L) * x - np.uint64(_MIX_R) * y) & np.uint64(_M32)
    return r ^ (r >> np.uint64(16))


@njit(cache=True, nogil=True)
def _first_word(words):
    """The first uint32 word of ``SeedSequence`` of the entropy ``words`` (a tuple of ints in
    ``[0, 2**32)``), as an int. Arithmetic in uint64, masked to 32 bits after every product and
    difference (the same as numpy's uint32 wrap-around)."""
    n = len(words)
    pool = np.zeros(_POOL, np.uint64)
    c = np.uint64(_INIT_A)
    for i in range(_POOL):  # the entropy into the pool (zeros past its end)
        pool[i], c = _hash(np.uint64(words[i]) if i < n else np.uint64(0), c)
    for i_src in range(_POOL):  # every pool word into every other
        for i_dst in range(_POOL):
            if i_src != i_dst:
                h, c = _hash(pool[i_src], c)
                pool[i_dst] = _mix(pool[i_dst], h)
    for i_src in range(_POOL, n):  # entropy beyond the pool into every pool word
        for i_dst in range(_POOL):
            h, c = _hash(np.uint64(words[i_src]), c)
            pool[i_dst] = _mix(pool[i_dst], h)
    v = pool[0] ^ np.uint64(_INIT_B)
    v = (v * ((np.uint64(_INIT_B) * np.uint64(_MULT_B)) & np.uint64(_M32))) & np.uint64(_M32)
    return np.int64(v ^ (v >> np.uint64(16)))


def child_seed(seed: int, *path: int) -> int:
    """An independent non-negative 31-bit seed for ``(seed, *path)``: the first word of numpy's
    ``SeedSequence([seed, *path])``, masked to 31 bits (compiled where every value fits in 32
    bits, numpy's own otherwise, with numpy's errors)."""
    values = (int(seed), *map(int, path))
    if all(0 <= v <= _M32 for v in values):
        return int(_first_word(values)) & 0x7FFFFFFF
    state = np.random.SeedSequence(list(values)).generate_state(1, np.uint32)
    return int(state[0]) & 0x7FFFFFFF


__all__ = ["child_seed"]
