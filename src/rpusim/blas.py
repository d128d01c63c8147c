"""The matrix product torch's ``torch.mm`` computes on the CPU, callable from compiled loops.

A time loop that runs in compiled code (:mod:`rpusim.lstm_loop`) still needs each step's read,
a small matrix product, to be the very sums of the reference's ``torch.mm``. On the CPU torch
hands a float32 ``mm`` to its BLAS, ``sgemm``; where torch's own library exports that routine
(the x86 builds link Intel MKL and export ``sgemm_``), a compiled loop calls it with the
arguments ``torch.mm`` passes, and the sums are the same. Whether they are is not assumed:
:func:`matches_torch` computes both on random operands of each shape, once, and a caller uses
the compiled product only where they agree bit for bit (else it keeps ``torch.mm``).

Two forms, both on row-major float32 buffers, ``B`` rows of input and output:

* ``X_M``: ``C (B, m) = X (B, k) @ M (k, m)`` (``M`` contiguous);
* ``X_WT``: ``C (B, m) = X (B, k) @ W^T`` for ``W (m, k)`` contiguous (``torch.mm(x, w.t())``).

In the BLAS's column-major view a row-major ``(r, c)`` buffer is its ``(c, r)`` transpose, so
``C^T = M^T X^T`` is ``sgemm('N', 'N', m, B, k, M, m, X, ldx, C, m)`` and ``C^T = W X^T`` is
``sgemm('T', 'N', m, B, k, W, k, X, ldx, C, m)``.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

X_M, X_WT = 0, 1

_N, _T = ord("N"), ord("T")


@functools.cache
def sgemm_address() -> int:
    """The address of the ``sgemm_`` torch's CPU library exports, or 0 where it exports none
    (then every caller keeps ``torch.mm``)."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).sgemm_
    except (OSError, AttributeError):
        return 0
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


@intrinsic
def _call_sgemm(typingctx, fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call the Fortran ``sgemm_`` at address ``fn``; every argument is an address (int64)."""
    sig = types.void(*([types.int64] * 14))

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 13)
        ptr = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(ptr, args[1:])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def gemm(fn, form, B, m, k, x, ldx, w, c, scratch):
    """``C = X @ M`` (``form`` X_M) or ``C = X @ W^T`` (X_WT), all row-major float32 at the
    addresses ``x`` (B rows, stride ``ldx`` floats), ``w`` and ``c`` (B rows of ``m``).

    ``fn``: :func:`sgemm_address`; ``scratch``: int64 (8,) that holds the scalars the Fortran
    interface takes by address."""
    iv = scratch.view(np.int32)
    fv = scratch.view(np.float32)
    cv = scratch.view(np.uint8)
    iv[0], iv[1], iv[2] = m, B, k
    iv[3] = m if form == X_M else k  # the leading dimension of the weights
    iv[4], iv[5] = ldx, m
    fv[6], fv[7] = np.float32(1.0), np.float32(0.0)
    cv[32], cv[33] = (_N if form == X_M else _T), _N
    s = scratch.ctypes.data
    _call_sgemm(
        fn, s + 32, s + 33, s, s + 4, s + 8, s + 24, w, s + 12, x, s + 16, s + 28, c, s + 20
    )


def matches_torch(form: int, B: int, m: int, k: int) -> bool:
    """True if :func:`gemm` gives ``torch.mm``'s bits for this form and shape (checked on
    random operands, three draws, once per shape and torch thread count: a BLAS may split a
    product differently on more threads)."""
    return _matches_torch(form, B, m, k, torch.get_num_threads())


@functools.cache
def _matches_torch(form: int, B: int, m: int, k: int, threads: int) -> bool:
    fn = sgemm_address()
    if not fn:
        return False
    gen = torch.Generator().manual_seed(0)
    scratch = np.zeros(8, np.int64)
    for _ in range(3):
        x = torch.randn(B, k, generator=gen)
        w = torch.randn(k, m, generator=gen) if form == X_M else torch.randn(m, k, generator=gen)
        ref = torch.mm(x, w if form == X_M else w.t())
        out = torch.empty(B, m)
        gemm(fn, form, B, m, k, x.data_ptr(), k, w.data_ptr(), out.data_ptr(), scratch)
        if not torch.equal(ref, out):
            return False
    return True


__all__ = ["X_M", "X_WT", "gemm", "matches_torch", "sgemm_address"]
