"""The output noise's random numbers: one draw of standard normals from the tile's generator per
read, of the read's size rounded up to a multiple of 16 (the first ``numel`` are used).

Why rounded: torch's CPU ``normal_`` turns each block of 16 uniforms into 16 normals and, for a
size that is not a multiple of 16, draws the last block again; so the draws of consecutive reads
are one draw of all their numbers exactly when each read's size is a multiple of 16. With the
padding that holds for every shape, and the compiled time loop (:mod:`rpusim.lstm_loop`) takes
the noise of many reads, backward as forward, in one call: the same numbers as one draw per
read. (A backward read of an LSTM layer has ``n + h + 1`` outputs, rarely a multiple of 16.)
"""

from __future__ import annotations

import math

import torch

#: torch's CPU normal_ makes its normals in blocks of this many.
BLOCK = 16


def padded(numel: int) -> int:
    """``numel`` rounded up to a multiple of :data:`BLOCK`: the size of one read's draw."""
    return -(-numel // BLOCK) * BLOCK


def output_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One read's output noise of ``shape``: standard normals, the first ``prod(shape)`` of a
    draw of :func:`padded` of that many."""
    numel = math.prod(shape)
    draw = torch.randn(padded(numel), generator=generator, dtype=dtype, device=device)
    return draw[:numel].view(shape)


__all__ = ["BLOCK", "output_noise", "padded"]
