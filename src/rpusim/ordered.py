"""Matrix products of few rows summed in input order: one definition, a torch reference and a
compiled twin.

An LSTM layer's split reads (:mod:`rpusim.periphery.split`) do one small product per time step:
``[h; 1]`` against ``[W_h, w_bias]^T`` forward, ``d`` against ``W_h`` backward, one row at
batch 1. Where such a product has at most :data:`ROWS` rows and runs on the CPU, rpusim
defines its sums itself::

    C[b, j] = (...((0 + X[b, 0] M[0, j]) + X[b, 1] M[1, j]) + ...) + X[b, k-1] M[k-1, j]

every product and every sum rounded to float32 (no fused multiply-add), the inputs in order. The
torch reference (:func:`product_reference`) is that line as a loop over the inputs; the compiled
twin (:func:`ordered_rows`) runs the same loop with the outputs innermost, which vectorizes
without reordering any output's sum, four inputs per pass over a row of outputs. They agree bit
for bit (tested).

Why: a compiled time loop needs each step's product to be exactly the reference's. Through the
BLAS (:mod:`rpusim.blas`) that holds only where the BLAS's grouping of the sums is reproduced,
and a call into MKL's ``sgemm`` for one row costs 4-5 us here (129 x 512, 512 x 128); the loop
above takes ~2.8 us, and its sums are the same on every machine. (MKL on the development
machine sums one or two rows in exactly this order, so this definition moved no number there;
with three rows and more it groups otherwise.) Products of more rows, and those over all time
steps at once, keep ``torch.mm``: there the BLAS is the faster, reusing each weight it loads.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import carray, njit

from rpusim.periphery.numba import float32_at

#: Products of at most this many rows (batch rows of one time step) sum in input order. Beyond
#: two rows the BLAS is the faster (it reuses each weight it loads for several rows).
ROWS = 2


def applies(x: torch.Tensor) -> bool:
    """True if the product of ``x`` (B, k) is summed in input order: B <= :data:`ROWS`, on the
    CPU."""
    return x.shape[0] <= ROWS and x.device.type == "cpu"


def product_reference(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` (B, k) times ``m`` (k, n), float32, each output summed in input order (the module
    docstring): the plain torch reference."""
    out = torch.zeros(x.shape[0], m.shape[1], dtype=torch.float32, device=x.device)
    for i in range(x.shape[1]):
        out = out + x[:, i : i + 1] * m[i]
    return out


def product(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x @ m`` as a split read sums it: in input order where :func:`applies`, else
    ``torch.mm``."""
    return product_reference(x, m) if applies(x) else x @ m


@njit(cache=True, nogil=True)
def ordered_rows(x, m, c):
    """:func:`product_reference` compiled: ``c`` (B, n) = ``x`` (B, k) ``m`` (k, n), float32
    arrays (``m`` rows contiguous). Four inputs per pass over a row of ``c``; the additions
    into each output stay in input order (fastmath off: no FMA, no reassociation)."""
    B, k = x.shape
    n = m.shape[1]
    k4 = k - k % 4
    for b in range(B):
        cb = c[b]
        for j in range(n):
            cb[j] = np.float32(0.0)
        for i in range(0, k4, 4):
            x0, x1, x2, x3 = x[b, i], x[b, i + 1], x[b, i + 2], x[b, i + 3]
            m0, m1, m2, m3 = m[i], m[i + 1], m[i + 2], m[i + 3]
            for j in range(n):
                cb[j] = (((cb[j] + x0 * m0[j]) + x1 * m1[j]) + x2 * m2[j]) + x3 * m3[j]
        for i in range(k4, k):
            xi, mi = x[b, i], m[i]
            for j in range(n):
                cb[j] = cb[j] + xi * mi[j]


@njit(cache=True, nogil=True)
def ordered_at(B, n, k, x, ldx, m, c):
    """:func:`ordered_rows` on row-major float32 buffers at addresses: ``x`` (B rows of ``k``,
    stride ``ldx`` floats), ``m`` (k, n) contiguous, ``c`` (B, n) contiguous (the compiled time
    loops' form of the product)."""
    xs = carray(float32_at(x), (B, ldx))[:, :k]
    ordered_rows(xs, carray(float32_at(m), (k, n)), carray(float32_at(c), (B, n)))


def ordered_into(x: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` = :func:`product_reference` ``(x, m)``, compiled (contiguous float32 CPU
    tensors): the Python loops' call."""
    ordered_rows(x.numpy(), m.numpy(), out.numpy())


__all__ = ["ROWS", "applies", "ordered_at", "ordered_into", "ordered_rows", "product"]
