"""A counter-based random generator that torch and numba evaluate to the same bits.

The pulsed update has a plain torch reference and compiled twins that must agree bit for bit.
A stateful generator (``torch.Generator``, numpy's PCG) cannot give that: the draw order of a
vectorized reference and of a threaded kernel differ. Here every random number is instead a pure
function of *where* it is used: ``(key, stream, pair k, slot t, line)`` for a pulse and
``(key, stream, pair k, row j, column i)`` for a cycle-to-cycle noise. Any code that evaluates the
same function at the same indices, in any order and on any thread, gets the same number.

The hash is the 32-bit integer permutation ``[15 2c1b3c6d 12 297a2d39 15]`` found by Wellons'
hash-prospector (shift-xor, multiply, shift-xor, multiply, shift-xor). Both multipliers are below
``2**31``, so a 32-bit value times a multiplier fits in a non-negative int64: torch has no uint64
arithmetic, and all torch-side values stay int64 in ``[0, 2**32)``. The same Python source
(:func:`mix32`) is run by torch on int64 tensors and compiled by numba on int64 scalars.

Indices are combined so that no two slots, and no two (pair, row) of the noise, share a seed
within a call (the maps below are injective; ``key`` should differ between calls):

* ``base = mix32(key ^ stream)``                               one per call and stream
* ``slot_seed[k, t] = mix32(base ^ (k * 64 + t))``             injective in (k, t) for BL <= 64
* ``line_seed[l] = mix32(mix32(base ^ LINE_SALT) ^ l)``        one per row or column line
* ``bits(k, t, l) = mix32(slot_seed[k, t] ^ line_seed[l])``    one per (pair, slot, line)

Mixing a *hashed* line seed into a hashed slot seed (rather than the raw line index) means that
two slots can only coincide on isolated (line, line') pairs, as independent 32-bit draws would,
never on a whole shifted copy of a slot. The noise of device ``(j, i)`` in pair ``k`` uses
``row_seed[k, j] = mix32(base ^ (k * out + j))`` and ``h = mix32(row_seed[k, j] ^ line_seed[i])``;
a device applied one coincidence at a time uses ``mix32(h ^ m)`` for its ``m``-th coincidence.

Uniforms are ``(h >> 8) * 2**-24`` in ``[0, 1)``: 24 bits, exact in float32.

Gaussians are **not** drawn with ``log``/``cos`` (Box-Muller): torch's vectorized float
transcendentals and libm differ in the last ulp, which would break bit-identity of the twins.
Instead the top 16 bits of a hash index a table of 65,536 standard-normal quantiles,
``Q[m] = Phi^-1((m + 0.5) / 65536)`` (computed in float64 with ``torch.special.ndtri``, stored
as float32). The table is exactly symmetric, its tails are truncated at ``|z| = 4.32`` (the
normal has 1.5e-5 of its mass beyond) and its standard deviation is 0.99999 instead of 1
(:func:`normal_table_std`): a relative error of 1e-5 on the cycle-to-cycle noise, far below
anything a training run resolves.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

#: Multipliers of the hash (both odd, so the hash is a bijection of [0, 2**32); both < 2**31).
C1 = 0x2C1B3C6D
C2 = 0x297A2D39
MASK32 = 0xFFFFFFFF

#: Stream ids: the pulses of the columns, of the rows, and the cycle-to-cycle noise.
STREAM_COL = 0x1B873593
STREAM_ROW = 0x5BD1E995
STREAM_C2C = 0x68E31DA4
#: Separates the line seeds from the slot seeds of one stream.
LINE_SALT = 0x3C6EF372

#: Most slots in a pulse train (``UpdateConfig.bl`` <= 64): slot seeds index ``k * 64 + t``.
MAX_BL = 64

#: Table size of the Gaussian quantiles: 16 bits of a hash pick one.
TABLE_BITS = 16

Device = torch.device | str


def mix32(h):
    """Hash a 32-bit value ``h`` (an int, an int64 tensor, or a numba int64) to 32 bits.

    The same source serves torch (elementwise on int64 tensors) and numba (compiled), so the two
    cannot drift apart. Inputs and outputs are in ``[0, 2**32)``; products stay below ``2**63``.
    """
    h = h ^ (h >> 15)
    h = (h * C1) & MASK32
    h = h ^ (h >> 12)
    h = (h * C2) & MASK32
    h = h ^ (h >> 15)
    return h


def stream_base(key: int, stream: int) -> int:
    """The seed of one stream of one call: ``mix32(key ^ stream)``; ``key`` in ``[0, 2**31)``."""
    if not 0 <= key < 2**31:
        raise ValueError(f"key must be in [0, 2**31), got {key}")
    return mix32(key ^ stream)


def slot_seeds(base: int, k: int, bl: int, device: Device = "cpu") -> torch.Tensor:
    """Seeds of the ``bl`` slots of pair ``k``: ``mix32(base ^ (k * 64 + t))``, int64 ``(bl,)``."""
    t = torch.arange(bl, dtype=torch.int64, device=device)
    return mix32(base ^ (k * MAX_BL + t))


def line_seeds(base: int, n_lines: int, device: Device = "cpu") -> torch.Tensor:
    """Seeds of the lines (rows or columns) of one stream, int64 ``(n_lines,)``."""
    lines = torch.arange(n_lines, dtype=torch.int64, device=device)
    return mix32(mix32(base ^ LINE_SALT) ^ lines)


def to_uniform(h: torch.Tensor) -> torch.Tensor:
    """A uniform in ``[0, 1)`` from the top 24 bits of a 32-bit hash (float32, exact)."""
    return (h >> 8).to(torch.float32) * 2.0**-24


def pulse_uniforms(
    key: int, stream: int, k: int, bl: int, n_lines: int, device: Device = "cpu"
) -> torch.Tensor:
    """Uniforms deciding whether each line fires in each slot of pair ``k``: ``(bl, n_lines)``.

    A line fires in a slot when its uniform is below its firing probability.
    """
    base = stream_base(key, stream)
    slots = slot_seeds(base, k, bl, device)
    return to_uniform(mix32(slots[:, None] ^ line_seeds(base, n_lines, device)[None, :]))


@lru_cache(maxsize=8)
def normal_table(device: Device = "cpu") -> torch.Tensor:
    """The 65,536 standard-normal quantiles ``Q[m] = Phi^-1((m + 0.5) / 65536)``, float32."""
    m = torch.arange(2**TABLE_BITS, dtype=torch.float64)
    return torch.special.ndtri((m + 0.5) / 2**TABLE_BITS).to(torch.float32).to(device)


@lru_cache(maxsize=1)
def normal_table_numpy() -> np.ndarray:
    """:func:`normal_table` as a numpy array (what the numba kernels index)."""
    return normal_table().numpy()


def normal_table_std() -> float:
    """Standard deviation of a table Gaussian (0.99999: the tails beyond 4.32 are cut)."""
    return float(normal_table().double().pow(2).mean().sqrt())


def device_hashes(key: int, k: int, n_out: int, n_in: int, device: Device = "cpu") -> torch.Tensor:
    """One 32-bit hash per device ``(j, i)`` for pair ``k``: int64 ``(n_out, n_in)``."""
    base = stream_base(key, STREAM_C2C)
    rows = torch.arange(n_out, dtype=torch.int64, device=device)
    row_seed = mix32(base ^ (k * n_out + rows))
    return mix32(row_seed[:, None] ^ line_seeds(base, n_in, device)[None, :])


def table_normals(h: torch.Tensor) -> torch.Tensor:
    """The table Gaussians that 32-bit hashes ``h`` pick (float32, the shape of ``h``)."""
    return normal_table(str(h.device))[h >> (32 - TABLE_BITS)]


def device_normals(key: int, k: int, n_out: int, n_in: int, device: Device = "cpu") -> torch.Tensor:
    """One table Gaussian per device ``(j, i)`` for pair ``k``: float32 ``(n_out, n_in)``."""
    return table_normals(device_hashes(key, k, n_out, n_in, device))


def coincidence_hash(h, m):
    """The hash of coincidence ``m`` (0, 1, ...) of a device whose hash in this pair is ``h``:
    ``mix32(h ^ m)``. Devices applied one coincidence at a time draw a fresh normal for each."""
    return mix32(h ^ m)
