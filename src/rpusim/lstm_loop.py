"""Compiled twin of an analog LSTM layer's time loop on the CPU: the same numbers, fewer calls.

:class:`rpusim.layers.AnalogLSTMLayer` steps through time with one tile read per step (forward:
``a_t = W z_t``; backward: ``W^T da_t``), each through the periphery, then the digital cell. The
reference loop calls ``tile.forward`` (its checks, the periphery twin's plan and scratch look-ups,
numpy views: ~10 us of Python per read) and then the compiled cell. At batch 1 the arithmetic of
a step is about as small as that overhead, so here a step is three calls:

1. ``torch.mm(x_q, W.T, out=a)`` (``W`` backward): the very matmul of the reference read, on
   buffers of the same shapes, so the same sums;
2. the output noise (if on): the reference's ``normal_`` draw from the tile's generator, or an
   index into draws taken for several reads at once (:class:`_Loop`: only where that gives the
   same numbers);
3. one compiled call, :func:`forward_step` or :func:`backward_step`: the output side of this read
   (output noise, ADC, scale back), the cell of the step, and the input side of the next read
   (noise management, clip, DAC). They call the functions of the periphery twin
   (:func:`~rpusim.periphery.numba.output_side`, ``input_side``) and the cell kernels
   below, so every float32 operation is the reference's, in its order.

Bound management (a saturated row is read again with its input halved) and stochastic rounding
(uniforms drawn before each read) keep the reference's order of draws: the compiled call then
stops after the output side, the re-reads run as in the periphery twin
(:func:`~rpusim.periphery.numba.reread_saturated`), the next read's uniforms are drawn,
and a second call does the cell and the next input side.

The digital cell (:func:`cell_forward`, :func:`cell_backward`) is float64 arithmetic on float32
storage; it equals the layer's vectorised torch cell to float32 rounding (not bit for bit). Its
exp and expm1 are this module's own (:func:`exp`, :func:`expm1`), which let the cell's loop
vectorize: 5x faster at 2x128. (Before, the gates called the C library's ``expf`` on their
float32 argument, so a gate was computed with float32's exp; now it is float64's throughout,
which moves the results of training runs by float rounding: docs/performance.md.)
"""

from __future__ import annotations

import functools
import math
import weakref
from functools import cached_property

import numpy as np
import torch
from numba import carray, njit, types
from numba.extending import intrinsic

from rpusim import blas, ordered
from rpusim.config import IOConfig
from rpusim.periphery import is_ideal
from rpusim.periphery.noise import padded
from rpusim.periphery.numba import (
    abs_max,
    bits_as,
    float32_at,
    input_side,
    output_side,
    reread_saturated,
)
from rpusim.periphery.plan import plan_of

_jit = njit(cache=True, nogil=True, error_model="numpy")

_ONE = np.float32(1.0)

#: ``phase`` of :func:`forward_step` / :func:`backward_step`: the whole step, only the read's
#: output side, or only the cell and the next read's input side.
BOTH, OUTPUT, CELL = 0, 1, 2

#: Most output-noise numbers drawn ahead at once (per direction of one layer).
NOISE_AHEAD = 1 << 16
#: Reads drawn ahead at most once a read of the sequence needed bound management (a re-read
#: takes back the draws after its read and draws those up to it again).
REREAD_AHEAD = 8


# ---------------------------------------------------------------------------------------------
# The digital cell, element by element
# ---------------------------------------------------------------------------------------------


# exp and expm1 in float64, written out so that the cell's loops vectorize (a call to the C
# library's exp stops that): x = k ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, the first
# with trailing zero bits so that k ln2_hi is exact), expm1(r) = r + r^2 (1/2! + r/3! + ... +
# r^11/13!) (the Taylor tail is below 1e-17), then exp(x) = 2^k (1 + expm1(r)) and expm1(x) =
# 2^k expm1(r) + (2^k - 1). Within 1 ulp (exp) and 2 ulp (expm1) of the C library's in float64,
# which a float32 result of the cell sees about once in 2^28 evaluations (none in the 10^5
# random arguments of four scales of tests/test_layers.py). Arguments beyond +-708 are clamped (2^k
# stays a normal number): the sigmoid and tanh below then give the float32 values an overflow
# to inf or 0 would; NaN stays NaN.
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(2, 14))


#: ``k + 1.5 * 2**52`` holds an integer-valued ``|k| < 2**51`` in its mantissa's low bits.
_ROUND_MAGIC = 6755399441055744.0


@_jit
def _exp_parts(x):
    """``(expm1(r), 2^k)`` for ``x = k ln 2 + r`` (x clamped to [-708, 708]).

    ``k`` stays a float64 and ``2^k`` is made from its bits (``|k| <= 1021``: the low 12 bits
    of ``bits(k + 1.5 2^52) + 1023`` are ``k + 1023``), not by a float-to-integer conversion:
    AVX2 has none for float64 vectors, and the gates' loops did not vectorize there (2.6 ->
    1.9 us for the gates of a 128-unit cell step on an AMD EPYC Zen 3). The same numbers."""
    x = 708.0 if x > 708.0 else x
    x = -708.0 if x < -708.0 else x
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    c = _TAYLOR
    q = c[11]
    q = q * r + c[10]
    q = q * r + c[9]
    q = q * r + c[8]
    q = q * r + c[7]
    q = q * r + c[6]
    q = q * r + c[5]
    q = q * r + c[4]
    q = q * r + c[3]
    q = q * r + c[2]
    q = q * r + c[1]
    q = q * r + c[0]
    return r + (r * r) * q, bits_as((bits_as(k + _ROUND_MAGIC, np.int64) + 1023) << 52, np.float64)


@_jit
def exp(x):
    em, scale = _exp_parts(x)
    return scale + scale * em


@_jit
def expm1(x):
    em, scale = _exp_parts(x)
    return scale * em + (scale - 1.0)


@_jit
def sigmoid(x):
    return 1.0 / (1.0 + exp(-x))


@_jit
def tanh(x):
    # expm1 keeps small |x| accurate; libm's tanh is ~4x slower and this loop is the hot one.
    e = expm1(2.0 * x)
    return 1.0 if x > 20.0 else e / (e + 2.0)


@_jit
def _gates(a, s, h):
    """``s`` (4h,) float64 = (sigmoid, sigmoid, tanh, sigmoid) of the blocks of ``a`` (4h,):
    i, f, g, o. One loop per block, each over two contiguous arrays, so each vectorizes."""
    for j in range(2 * h):
        s[j] = sigmoid(a[j])
    for j in range(2 * h, 3 * h):
        s[j] = tanh(a[j])
    for j in range(3 * h, 4 * h):
        s[j] = sigmoid(a[j])


@_jit
def cell_forward(a, t, n, G, C, TC, Z):
    """One LSTM step after the read ``a`` (B, 4h): writes G[t] (i, f, g, o), C[t + 1] = c_t,
    TC[t] = tanh(c_t), and h_t into Z[t + 1, :, n:n + h]. The gates enter ``c_t`` in float64
    (as computed, not as stored)."""
    B, h = a.shape[0], C.shape[2]
    s = np.empty(4 * h)
    c, tc = np.empty(h), np.empty(h)  # c_t and tanh(c_t) in float64
    for b in range(B):
        _gates(a[b], s, h)
        g_t = G[t, b]
        for j in range(4 * h):
            g_t[j] = s[j]
        c_prev, c_new, tc_t, z_new = C[t, b], C[t + 1, b], TC[t, b], Z[t + 1, b, n : n + h]
        # Three loops of few arrays each, so that each vectorizes (one loop over all of them
        # did not: 1.4 us of a 3.3 us cell step at 128 units on an AVX2 CPU).
        for j in range(h):
            c[j] = s[h + j] * c_prev[j] + s[j] * s[2 * h + j]
        for j in range(h):
            tc[j] = tanh(c[j])
        for j in range(h):
            c_new[j] = c[j]
            tc_t[j] = tc[j]
            z_new[j] = s[3 * h + j] * tc[j]


@_jit
def cell_backward(t, gh, dz, n, G, C, TC, dc, dA):
    """One BPTT step. ``gh`` (T, B, h): dloss/dh_t from above; ``dz`` (B, n + h + 1): the
    backward read of step t + 1, whose ``[n:n + h]`` is dloss/dh_t through the recurrence; ``dc``
    (B, h): dloss/dc_t in, dloss/dc_{t-1} out. Writes da_t into dA[t]."""
    B, h = dc.shape
    for b in range(B):
        for j in range(h):
            dh = gh[t, b, j] + dz[b, n + j]
            i, f = G[t, b, j], G[t, b, h + j]
            g, o = G[t, b, 2 * h + j], G[t, b, 3 * h + j]
            tc = TC[t, b, j]
            dcj = dc[b, j] + dh * o * (1.0 - tc * tc)
            dA[t, b, j] = dcj * g * i * (1.0 - i)
            dA[t, b, h + j] = dcj * C[t, b, j] * f * (1.0 - f)
            dA[t, b, 2 * h + j] = dcj * i * (1.0 - g * g)
            dA[t, b, 3 * h + j] = dh * tc * o * (1.0 - o)
            dc[b, j] = dcj * f


# ---------------------------------------------------------------------------------------------
# One step: output side of a read, the cell, input side of the next read
# ---------------------------------------------------------------------------------------------

# A step kernel takes two small tables, made once per sequence by _Loop: ``ptr`` (int64), the
# addresses of the loop's contiguous CPU buffers (passing 10-odd arrays would cost ~1.5 us per
# call in unboxing, a read's worth of arithmetic at batch 1), and ``dim`` (int64), sizes and the
# loop's mode; and the periphery's settings, ``rec``: the read's one settings type
# (:class:`rpusim.periphery.plan.ReadPlan`) as its record array, ``p = rec[0]``. The slots:
P_OUT, P_NOISE, P_ALPHA, P_SAT, P_U, P_XQ = range(6)  # the read's buffers
P_G, P_C, P_TC, P_Z = range(6, 10)  # forward: the layer's buffers
P_GH, P_DC, P_DA, P_DZ = range(10, 14)  # backward: the layer's buffers (and P_G, P_C, P_TC)
# Split reads (rpusim.periphery.split). Forward: the input parts' sums of every step (T, B, 4h),
# their assumed scales (T, B), and per step whether the read is split (T,) int64. Backward: the
# DAC outputs (T, B, 4h) and scales (T, B) of every step, kept for the dx outputs.
P_AHEAD, P_ALPHA_AHEAD, P_SPLIT, P_XH = range(14, 18)  # P_XH: forward, q([h; 1]) (B, h + 1)
D_T, D_B, D_N, D_H, D_AHEAD = range(5)  # T, B, n_in of the layer, hidden, noise rows held
D_OUT_SIDE, D_IN_SIDE, D_NOISE, D_STO, D_BM = range(5, 10)  # the loop's mode (plan and tile)
D_SPLIT, D_XQ_STRIDE = 10, 11  # the reads are split; backward split: floats per step of XQ
D_NOISE_STRIDE = 12  # floats per read in NOISE: B * n_out rounded up (rpusim.periphery.noise)


@_jit
def _noise_of(ptr, dim, rows, k, n_out):
    """Read ``k``'s output noise (B, n_out) in NOISE, which holds ``rows`` reads' draws."""
    B, stride = dim[D_B], dim[D_NOISE_STRIDE]
    return carray(float32_at(ptr[P_NOISE]), (rows, stride))[k, : B * n_out].reshape((B, n_out))


@intrinsic
def _int64_at(typingctx, address):
    """The int64 ``address`` (a CPU array's data pointer) as an int64 pointer."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.int64)(types.int64), codegen


@_jit
def _output(z, noise, p, alpha, y, sat_rows, has_noise):
    """The first read's output side (:func:`output_side`, all rows, factor 1) into ``y``;
    ``noise`` (B, n_out): the read's output noise."""
    if has_noise:
        return output_side(z, None, noise, p, alpha, _ONE, y, sat_rows)
    return output_side(z, None, None, p, alpha, _ONE, y, sat_rows)


@_jit
def _input(x, alpha, u, p, x_q, sto):
    """The first read's input side (:func:`input_side`, all rows, factor 1) into ``x_q``."""
    if sto:
        input_side(x, None, alpha, _ONE, u, p, x_q)
    else:
        input_side(x, None, alpha, _ONE, None, p, x_q)


@_jit
def forward_step(t, phase, k, ptr, dim, rec):
    """Forward step ``t``: output side of read ``t`` (``a`` in place), the cell of step ``t``
    (:func:`cell_forward`), input side of read ``t + 1`` (``Z[t + 1]`` -> ``x_q``).

    ``t = -1`` does only the input side of read 0. A side of the periphery that does nothing
    (``dim[D_OUT_SIDE]``, ``dim[D_IN_SIDE]``) is skipped; the matmul then reads ``Z[t]`` itself,
    as the reference does. ``noise[k]`` (B, 4h): this read's output noise; ``u`` (B, n + h + 1):
    the next read's uniforms (stochastic rounding).

    Returns the number of saturated rows, listed in ``sat_rows``, when bound management must read
    them again: then the step stopped after the output side (call again with ``phase=CELL`` after
    the re-reads). Else 0.
    """
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    out_side, in_side, has_noise = dim[D_OUT_SIDE] != 0, dim[D_IN_SIDE] != 0, dim[D_NOISE] != 0
    sto, bm, split = dim[D_STO] != 0, dim[D_BM] != 0, dim[D_SPLIT] != 0
    p = rec[0]
    m, w = 4 * h, n + h + 1
    a = carray(float32_at(ptr[P_OUT]), (B, m))
    alpha = carray(float32_at(ptr[P_ALPHA]), B)
    G = carray(float32_at(ptr[P_G]), (T, B, m))
    C = carray(float32_at(ptr[P_C]), (T + 1, B, h))
    TC = carray(float32_at(ptr[P_TC]), (T, B, h))
    Z = carray(float32_at(ptr[P_Z]), (T + 1, B, w))
    split_at = carray(_int64_at(ptr[P_SPLIT]), T)
    if t >= 0 and phase != CELL and out_side:
        if split and split_at[t] != 0:  # the array's sums: the input part's ahead + the rest's
            ahead = carray(float32_at(ptr[P_AHEAD]), (T, B, m))[t]
            for b in range(B):
                for j in range(m):
                    a[b, j] = ahead[b, j] + a[b, j]
        noise = _noise_of(ptr, dim, dim[D_AHEAD], k, m)
        sat_rows = carray(_int64_at(ptr[P_SAT]), B)
        n_sat = _output(a, noise, p, alpha, a, sat_rows, has_noise)
        if bm and n_sat > 0:
            return n_sat
    if phase == OUTPUT:
        return 0
    if t >= 0:
        cell_forward(a, t, n, G, C, TC, Z)
    if t + 1 >= T:
        return 0
    x_q = Z[t + 1]  # the matmul reads z_t itself if the input side does nothing
    if in_side:
        u = carray(float32_at(ptr[P_U]), (B, w))
        x_q = carray(float32_at(ptr[P_XQ]), (B, w))
        _input(Z[t + 1], alpha, u, p, x_q, sto)
    if split:
        if p.nm:  # split only if the whole input's scale is the one assumed
            alpha_ahead = carray(float32_at(ptr[P_ALPHA_AHEAD]), (T, B))[t + 1]
            split_at[t + 1] = 1
            for b in range(B):
                if alpha[b] != alpha_ahead[b]:
                    split_at[t + 1] = 0
        x_h = carray(float32_at(ptr[P_XH]), (B, h + 1))  # the step's product's input, q([h; 1])
        for b in range(B):
            for j in range(h + 1):
                x_h[b, j] = x_q[b, n + j]
    return 0


@_jit
def backward_step(t, phase, k, ptr, dim, rec):
    """Backward step ``t`` (going back in time): output side of read ``t + 1`` (``z``, the
    array's sums, -> ``DZ[t + 1] = W^T da_{t+1}``), the cell of step ``t``
    (:func:`cell_backward`, which reads ``DZ[t + 1]``), input side of read ``t`` (``dA[t]`` ->
    ``x_q``).

    The first call (``t = T - 1``) has no read to finish (``DZ[T]`` holds dloss/dh_T from beyond
    the sequence); ``t = -1`` finishes read 0 only. The rest as :func:`forward_step`.
    """
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    out_side, has_noise = dim[D_OUT_SIDE] != 0, dim[D_NOISE] != 0
    bm, split = dim[D_BM] != 0, dim[D_SPLIT] != 0
    p = rec[0]
    w = n + h + 1
    DZ = carray(float32_at(ptr[P_DZ]), (T + 1, B, w))
    if split:
        return _backward_split_step(t, phase, k, ptr, dim, p, DZ)
    alpha = carray(float32_at(ptr[P_ALPHA]), B)
    if t + 1 < T and phase != CELL:
        z = carray(float32_at(ptr[P_OUT]), (B, w))
        if out_side:
            noise = _noise_of(ptr, dim, dim[D_AHEAD], k, w)
            sat_rows = carray(_int64_at(ptr[P_SAT]), B)
            n_sat = _output(z, noise, p, alpha, DZ[t + 1], sat_rows, has_noise)
            if bm and n_sat > 0:
                return n_sat
        else:
            DZ[t + 1] = z
    if phase == OUTPUT or t < 0:
        return 0
    _cell_backward_step(t, ptr, dim, p, DZ, alpha, ptr[P_XQ])
    return 0


@_jit
def _backward_split_step(t, phase, k, ptr, dim, p, DZ):
    """:func:`backward_step` of split reads (:mod:`rpusim.periphery.split`; no bound
    management): read ``t + 1`` is finished for its ``dh`` outputs only (``z`` (B, h), the
    array's sums of ``W[:, n:n + h]``, -> ``DZ[t + 1, :, n:n + h]``), and the input side of read
    ``t`` keeps its DAC output and scale in ``XQ[t]``, ``ALPHA[t]`` for :func:`dx_outputs`."""
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    has_noise = dim[D_NOISE] != 0
    w = n + h + 1
    alpha_all = carray(float32_at(ptr[P_ALPHA]), (T, B))
    if t + 1 < T and phase != CELL:
        z = carray(float32_at(ptr[P_OUT]), (B, h))
        y = DZ[t + 1, :, n : n + h]
        if has_noise:
            noise = _noise_of(ptr, dim, T, k, w)[:, n : n + h]
            output_side(z, None, noise, p, alpha_all[t + 1], _ONE, y, None)
        else:
            output_side(z, None, None, p, alpha_all[t + 1], _ONE, y, None)
    if phase == OUTPUT or t < 0:
        return 0
    _cell_backward_step(t, ptr, dim, p, DZ, alpha_all[t], ptr[P_XQ] + 4 * dim[D_XQ_STRIDE] * t)
    return 0


@_jit
def _cell_backward_step(t, ptr, dim, p, DZ, alpha, x_q_address):
    """The cell of backward step ``t`` (:func:`cell_backward`, reading ``DZ[t + 1]``) and, if the
    read has an input side, the input side of read ``t`` (``dA[t]`` -> the DAC output at
    ``x_q_address``, scale ``alpha``): the common tail of both backward steps."""
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    m = 4 * h
    gh = carray(float32_at(ptr[P_GH]), (T, B, h))
    G = carray(float32_at(ptr[P_G]), (T, B, m))
    C = carray(float32_at(ptr[P_C]), (T + 1, B, h))
    TC = carray(float32_at(ptr[P_TC]), (T, B, h))
    dc = carray(float32_at(ptr[P_DC]), (B, h))
    dA = carray(float32_at(ptr[P_DA]), (T, B, m))
    cell_backward(t, gh, DZ[t + 1], n, G, C, TC, dc, dA)
    if dim[D_IN_SIDE] != 0:
        u = carray(float32_at(ptr[P_U]), (B, m))
        x_q = carray(float32_at(x_q_address), (B, m))
        _input(dA[t], alpha, u, p, x_q, dim[D_STO] != 0)


@_jit
def dx_outputs(s, noise, alpha, rec, dz, n):
    """The ``dx`` outputs of every step's split backward read, after the loop.

    s (T, B, n): the array's sums ``q(d_t / beta_t) W[:, :n]`` of all steps (one product);
    ``noise`` (T, B, n + h + 1) or None: each read's output noise, in the order of the reads
    (read ``k`` is step ``T - 1 - k``); alpha (T, B): each step's scale. Writes ``dz[t, :, :n]``
    (dz (T + 1, B, n + h + 1)) through the output side, element by element.
    """
    T, p = s.shape[0], rec[0]
    for t in range(T):
        y = dz[t, :, :n]
        if noise is None:
            output_side(s[t], None, None, p, alpha[t], _ONE, y, None)
        else:
            output_side(s[t], None, noise[T - 1 - t, :, :n], p, alpha[t], _ONE, y, None)


@_jit
def one_hot_product(x, weights, p):
    """``p = x W[:, :n]^T`` (N, 4h) for x (N, n) whose rows have at most one nonzero (one-hot
    inputs): a column of ``W`` times it, the value any order of the product's sums gives (the
    other terms are exact zeros). Returns False, with ``p`` unwritten, if a row has more."""
    N, n = x.shape
    col = np.empty(N, np.int64)
    for r in range(N):
        col[r] = -1
        for i in range(n):
            if x[r, i] != 0:
                if col[r] >= 0:
                    return False
                col[r] = i
    for r in range(N):
        c = col[r]
        for j in range(p.shape[1]):
            p[r, j] = np.float32(0.0) if c < 0 else x[r, c] * weights[j, c]
    return True


@_jit
def input_ahead(x, bias, alpha, rec, x_q):
    """The DAC of the input parts of every step's forward read, before the loop.

    x (N, n): the inputs ``x_t`` of all steps; writes alpha (N,), with noise management, the
    scale :func:`rpusim.periphery.split.input_scale` assumes (``max(max|x|, 1)`` with the bias
    input 1, ``bias`` True, else ``max|x|``; a NaN wins), and x_q (N, n) = DAC(clip(x / alpha))
    as :func:`~rpusim.periphery.numba.input_side` converts these elements in a whole read.
    """
    N, n = x.shape
    p = rec[0]
    if p.nm:
        start = _ONE if bias else np.float32(0.0)
        for r in range(N):
            alpha[r] = abs_max(x[r], start)
    rows = np.arange(N)
    input_side(x, rows, alpha, _ONE, None, p, x_q)


# Runs of steps with their products (the reads' sums through torch's own BLAS, blas.gemm)
# ``prod``: int64 [fn, B, m, c, k_split, x_split, w_split, k, x, x_step, w], the product's
# routine (blas.sgemm_address), the rows and outputs of a product, the output's address, and for
# the split and the whole read the inner size, the input's address (+ x_step bytes per step) and
# the weights' (forward: split [W_h, w_bias]^T as X_M, whole W as X_WT; backward: X_M only).
R_FN, R_B, R_M, R_C, R_KS, R_XS, R_WS, R_K, R_X, R_XSTEP, R_W = range(11)
R_ORDERED = 11  # the split's step product sums in input order (rpusim.ordered), not by sgemm


@_jit
def forward_run(t0, t1, k0, ptr, dim, rec, prod, scratch):
    """Forward steps ``t0 <= t < t1`` as the Python loop of :func:`forward_sequence` does
    them (without stochastic rounding): each read's product, then :func:`forward_step`.

    Returns ``(t, n_sat)``: ``(t1, 0)``, or the step whose read saturated and its count (the
    caller re-reads, finishes the step with ``phase=CELL`` and goes on at ``t + 1``)."""
    split = dim[D_SPLIT] != 0
    split_at = carray(_int64_at(ptr[P_SPLIT]), dim[D_T])
    fn, B, m, c = prod[R_FN], prod[R_B], prod[R_M], prod[R_C]
    for t in range(t0, t1):
        if split and split_at[t] != 0:
            ks = prod[R_KS]
            if prod[R_ORDERED] != 0:
                ordered.ordered_at(B, m, ks, prod[R_XS], ks, prod[R_WS], c)
            else:
                blas.gemm(fn, blas.X_M, B, m, ks, prod[R_XS], ks, prod[R_WS], c, scratch)
        else:
            x = prod[R_X] + t * prod[R_XSTEP]
            blas.gemm(fn, blas.X_WT, B, m, prod[R_K], x, prod[R_K], prod[R_W], c, scratch)
        n_sat = forward_step(t, BOTH, t - k0, ptr, dim, rec)
        if n_sat > 0:
            return t, n_sat
    return t1, 0


@_jit
def backward_run(t0, k0, k1, ptr, dim, rec, prod, scratch):
    """Backward steps ``t = t0, t0 - 1, ..., 0`` as the Python loop of
    :func:`backward_sequence` does them (without stochastic rounding): :func:`backward_step`
    ``t`` (which finishes read ``t + 1``, the ``(T - 2 - t)``-th), then read ``t``'s product.

    Returns ``(t, n_sat)``: ``(-1, 0)`` when every step is done; ``(t, 0)`` before step ``t``
    when the noise of the read it finishes is not drawn yet (``T - 2 - t >= k1``: the caller
    draws it and calls again); ``(t, n_sat)`` when step ``t`` saturated (the caller re-reads,
    finishes the step with ``phase=CELL`` and does its product)."""
    T = dim[D_T]
    fn, B, m, c, kk = prod[R_FN], prod[R_B], prod[R_M], prod[R_C], prod[R_K]
    for t in range(t0, -1, -1):
        k = 0
        if t < T - 1:
            if T - 2 - t >= k1:
                return t, 0
            k = T - 2 - t - k0
        n_sat = backward_step(t, BOTH, k, ptr, dim, rec)
        if n_sat > 0:
            return t, n_sat
        x = prod[R_X] + t * prod[R_XSTEP]
        if prod[R_ORDERED] != 0:
            ordered.ordered_at(B, m, kk, x, kk, prod[R_W], c)
        else:
            blas.gemm(fn, blas.X_M, B, m, kk, x, kk, prod[R_W], c, scratch)
    return -1, 0


def _product_table(B, m, out, k, x, x_step, w, split=(0, 0, 0), in_order=False) -> np.ndarray:
    """The ``prod`` table of :func:`forward_run` / :func:`backward_run` (see ``R_*``): the
    product ``out (B, m) = x_t (B, k) @ w`` with ``x_t`` at ``x`` + ``x_step`` bytes per step;
    ``split``: ``(k, x address, w address)`` of the forward split's product, or zeros;
    ``in_order``: the split's product (forward) or the step's (backward split) sums in input
    order (:mod:`rpusim.ordered`)."""
    ks, xs, ws = split
    fn = blas.sgemm_address()
    row = [fn, B, m, out.data_ptr(), ks, xs, ws, k, x.data_ptr(), x_step, w.data_ptr()]
    row.append(int(in_order))
    return np.array(row, np.int64)


def _mm_into(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    torch.mm(x, w, out=out)


def _product_of(in_order: bool):
    """The Python loops' product ``f(x, w, out)``: in input order (:mod:`rpusim.ordered`, the
    split reads' steps of few rows) or ``torch.mm``."""
    return ordered.ordered_into if in_order else _mm_into


def _products(*shapes: tuple[int, int, int, int]) -> bool:
    """True if torch's BLAS can be called from the compiled runs for every product
    ``(form, B, m, k)`` with ``torch.mm``'s bits (:func:`rpusim.blas.matches_torch`; False
    where torch exports no ``sgemm_``)."""
    return all(blas.matches_torch(*s) for s in shapes)


# ---------------------------------------------------------------------------------------------
# The time loops
# ---------------------------------------------------------------------------------------------


def _address(a: np.ndarray) -> int:
    """The address of a numpy array's data (``a.ctypes.data`` costs ~10 times more)."""
    return a.__array_interface__["data"][0]


@functools.cache
def _normal_draws_split(numel: int) -> bool:
    """True if one ``normal_`` draw of ``r * numel`` numbers gives the numbers of ``r`` draws of
    ``numel``, one after another (and leaves the generator where they do).

    torch fills a float32 tensor of at least 16 numbers with uniforms in order, then turns each
    block of 16 into normals (Box-Muller), and redraws the last 16 when the size is not a
    multiple of 16: so it holds for multiples of 16. Checked here, once per size, rather than
    assumed of the torch installed.
    """
    if numel < 16 or numel % 16:
        return False
    whole, parts = torch.empty(3, numel), torch.empty(3, numel)
    g_whole, g_parts = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    whole.normal_(generator=g_whole)
    for r in range(3):
        parts[r].normal_(generator=g_parts)
    return torch.equal(whole, parts) and torch.equal(g_whole.get_state(), g_parts.get_state())


class _Loop:
    """One layer's ``T`` reads in one direction: the periphery's mode, the read's buffers, the
    random draws, and the tables (``ptr``, ``dim``, the plan's ``record``) the step kernels take.

    Reads are counted ``k = 0 .. T-1`` in the order they happen. ``n_in`` / ``n_out`` are the
    sizes of a read's input and output rows (forward ``n + h + 1`` / ``4h``, backward the
    reverse).

    Output noise: the reference draws ``B * n_out`` normals rounded up to a multiple of 16 from
    the tile's generator after each read's matmul (:func:`rpusim.periphery.noise.output_noise`),
    so (when nothing else is drawn between reads: no stochastic rounding) the draws of up to
    :data:`NOISE_AHEAD` numbers' worth of reads are taken in one call: the same numbers.
    ``noise_t`` holds a read's draw per row. A bound-management re-read draws between
    two reads: the generator is then put back to before the draw ahead, and the draws up to this
    read are taken again (the same numbers), so that the re-read draws what the reference does.

    ``split`` (:mod:`rpusim.periphery.split`): forward, the per-step flags and the input parts'
    buffers; backward, every read's DAC output, scale and output noise are kept (``noise_t``
    then holds all ``T`` reads, read ``k`` at ``k``) for the ``dx`` outputs after the loop.
    """

    def __init__(
        self,
        io: IOConfig,
        generator: torch.Generator | None,
        T: int,
        B: int,
        n: int,
        h: int,
        forward: bool,
        split: bool = False,
    ) -> None:
        n_in, n_out = (n + h + 1, 4 * h) if forward else (4 * h, n + h + 1)
        p = plan_of(io)
        ideal = is_ideal(io)  # the reference does one matmul and nothing else
        self.plan, self.T, self.B, self.n_in = p, T, B, n_in
        self.io = io  # loop_for compares it by identity
        # Weakly: the loops are kept per generator (loop_for), which must not keep it alive.
        self._generator = None if generator is None else weakref.ref(generator)
        self.in_side = not (ideal or p.identity_input)  # else the matmul reads x itself
        self.noise_on = p.noise and not ideal
        self.sto = p.sto and not ideal
        self.keep = split and not forward  # the backward split keeps every read's draws
        self.ahead = 1  # reads whose output noise is drawn at once
        # Each read's draw: B * n_out numbers rounded up to a multiple of 16 (as the reference
        # draws them, rpusim.periphery.noise), so that draws ahead are the same numbers.
        self.noise_stride = stride = padded(B * n_out)
        if self.noise_on and not self.sto and generator is not None and _normal_draws_split(stride):
            self.ahead = max(1, min(T, NOISE_AHEAD // stride))
        self.ahead_first = self.ahead  # reset by reset() (a re-read lowers ahead)
        kept = T if self.keep else 1
        # The matmul's output: the backward split's sums of the dh outputs only.
        self.out_t = torch.empty(B, h if self.keep else n_out)
        # The DAC's output, the matmul's input; kept for every step, each step's rows start on
        # a 64-byte boundary (as a tensor of their own would: the product's speed, and with
        # some BLAS its rounding, depend on it).
        self.xq_stride = -(-B * n_in // 16) * 16 if self.keep else B * n_in
        self.x_q_t = torch.empty(kept, self.xq_stride)
        self.x_h = torch.empty(B, h + 1)  # forward split: q([h_{t-1}; 1]), the step's input
        self.u_t = torch.empty(B, n_in)  # stochastic rounding's uniforms
        self.noise_t = torch.empty(T if self.keep else self.ahead, stride)
        self.alpha = np.ones((kept, B), np.float32)
        self.sat_rows = np.empty(B, np.int64)
        self.split_at = np.ones(T, np.int64)  # forward: read t is split
        self.k0 = self.k1 = 0  # the noise of reads k0 <= k < k1 is in noise_t[0 .. k1 - k0)
        self.state: torch.Tensor | None = None  # the generator before that draw

        self._kept: dict[str, torch.Tensor] = {}
        self.ptr = np.zeros(18, np.int64)
        self.hold({P_OUT: self.out_t, P_NOISE: self.noise_t, P_U: self.u_t, P_XQ: self.x_q_t})
        self.hold({P_XH: self.x_h})
        self.ptr[P_ALPHA], self.ptr[P_SAT] = _address(self.alpha), _address(self.sat_rows)
        self.ptr[P_SPLIT] = _address(self.split_at)
        bm = p.bm and p.max_bm_factor > 1 and not ideal
        mode = (not ideal, self.in_side, self.noise_on, self.sto, bm)
        self.dim = np.array(
            [T, B, n, h, self.ahead, *mode, split, self.xq_stride, stride], np.int64
        )

    @property
    def generator(self) -> torch.Generator | None:
        return None if self._generator is None else self._generator()

    def reset(self) -> None:
        """Back to the state of a new loop (for the next sequence): no noise drawn, the first
        draw-ahead size, every read's scale 1 and every forward read split."""
        self.k0 = self.k1 = 0
        self.state = None
        self.ahead = self.ahead_first
        self.alpha.fill(1.0)
        self.split_at.fill(1)

    def kept(self, name: str, *shape: int) -> torch.Tensor:
        """A float32 buffer of ``shape`` that this loop keeps from call to call (its contents
        are the last call's: the caller writes it before reading it)."""
        buf = self._kept.get(name)
        if buf is None or buf.shape != shape:
            buf = self._kept[name] = torch.empty(shape)
        return buf

    def x_q(self, t: int) -> torch.Tensor:
        """The DAC's output of step ``t`` (B, n_in), a view (the one buffer unless every step's
        is kept)."""
        row = self.x_q_t[t if self.keep else 0]
        return row[: self.B * self.n_in].view(self.B, self.n_in)

    @cached_property
    def noise_rows(self) -> tuple[torch.Tensor, ...] | None:
        """Each read's row of ``noise_t`` when the backward split draws one read at a time."""
        return self.noise_t.unbind(0) if self.keep and self.ahead == 1 else None

    def hold(self, tensors: dict[int, torch.Tensor]) -> None:
        """Put the addresses of contiguous float32 CPU tensors into their ``ptr`` slots
        (``{P_G: G, ...}``). The caller keeps them alive while the kernels run."""
        for slot, tensor in tensors.items():
            if not (tensor.is_cpu and tensor.dtype == torch.float32 and tensor.is_contiguous()):
                raise ValueError(
                    f"ptr slot {slot}: the step kernels need a contiguous float32 CPU tensor"
                )
            self.ptr[slot] = tensor.data_ptr()

    def draw_uniforms(self) -> None:
        """Stochastic rounding: the next read's ``u ~ U[0, 1)``, as the reference draws them."""
        self.u_t.uniform_(generator=self.generator)

    def draw_noise(self, k: int) -> None:
        """The output noise of read ``k`` (and, drawing ahead, of the reads after it)."""
        n = min(self.ahead, self.T - k)
        if self.ahead > 1:
            self.state = self.generator.get_state()
        if self.noise_rows is not None:  # one read's: into its row of all T
            rows = self.noise_rows[k]
        elif self.keep:
            rows = self.noise_t[k : k + n]
        else:
            rows = self.noise_t if n == self.noise_t.shape[0] else self.noise_t[:n]
        rows.normal_(generator=self.generator)
        self.k0, self.k1 = 0 if self.keep else k, k + n

    def reread(self, k: int, x: torch.Tensor, matrix: torch.Tensor, y: np.ndarray, n: int):
        """Bound management of read ``k``: its ``n`` saturated rows (``sat_rows``) read again
        from its input ``x`` (B, n_in), the results written into ``y`` (B, n_out)."""
        if k + 1 < self.k1:  # later reads' noise was drawn ahead: take those draws back
            self.generator.set_state(self.state)
            self.noise_t[: k + 1 - self.k0].normal_(generator=self.generator)
            self.k1 = k + 1
            # Where one read saturates, more tend to: draw fewer reads ahead from now on, so
            # that the next take-back redraws at most REREAD_AHEAD reads (the same numbers).
            self.ahead = min(self.ahead, REREAD_AHEAD)
        alpha = self.alpha[0]
        reread_saturated(x, matrix, self.plan, self.generator, alpha, self.sat_rows, n, y)


#: Each generator's loops, kept between sequences: making one (buffers, tables) costs ~50 us
#: within a training step (its memory is cold there), ~0.2 ms of a 2x128 step at batch 1.
_LOOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loop_for(
    io: IOConfig,
    generator: torch.Generator | None,
    T: int,
    B: int,
    n: int,
    h: int,
    forward: bool,
    split: bool = False,
) -> _Loop:
    """A :class:`_Loop` of these arguments in its initial state: the one this ``generator``
    (the tile's) used last time for them, reset, or a new one. The loops of a generator go
    with it; ``io`` is compared by identity (a frozen config)."""
    if generator is None:
        return _Loop(io, generator, T, B, n, h, forward, split)
    loops = _LOOPS.setdefault(generator, {})
    key = (id(io), T, B, n, h, forward, split)
    loop = loops.get(key)
    if loop is None or loop.io is not io:
        loop = loops[key] = _Loop(io, generator, T, B, n, h, forward, split)
    else:
        loop.reset()
    return loop


def forward_sequence(
    weights: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    Z: torch.Tensor,
    G: torch.Tensor,
    C: torch.Tensor,
    TC: torch.Tensor,
    split: bool = False,
    bias: bool = True,
) -> None:
    """The forward time loop of :class:`~rpusim.layers.AnalogLSTMLayer`, bit for bit.

    weights (4h, n + h + 1), read through the periphery ``io`` with ``generator`` (the tile's).
    Z (T + 1, B, n + h + 1) holds ``x_t``, ``h_0`` and the constant 1 (the rest is written:
    ``Z[t + 1, :, n:n + h] = h_t``); C[0] = c_0; writes G (T, B, 4h), C[1:], TC (T, B, h).
    ``split``: the reads of :func:`rpusim.periphery.split.forward_read`, the input parts of all
    steps (``x_t``; ``bias``: the bias input is 1, not 0) read before the loop.
    """
    T, B, m = G.shape
    h = C.shape[2]
    n = Z.shape[2] - h - 1
    loop = loop_for(io, generator, T, B, n, h, forward=True, split=split)
    loop.hold({P_G: G, P_C: C, P_TC: TC, P_Z: Z})
    ptr, dim, rec, sto, noise_on = loop.ptr, loop.dim, loop.plan.record, loop.sto, loop.noise_on
    matrix, a_t, x_q_t = weights.t(), loop.out_t, loop.x_q(0)
    Zs = None if loop.in_side else Z.unbind(0)  # the matmul reads z_t itself
    split_at, x_h = loop.split_at, loop.x_h
    if split:
        # The input parts of all steps, converted and read at once (one product).
        x = Z[:T].view(T * B, n + h + 1)[:, :n]
        if loop.in_side:
            x_q = loop.kept("x_q_ahead", T * B, n)
            alpha = loop.kept("alpha_ahead", T * B).fill_(1.0)
            input_ahead(x.numpy(), bias, alpha.numpy(), rec, x_q.numpy())
            loop.hold({P_ALPHA_AHEAD: alpha})
        else:
            x_q = x
        ahead = loop.kept("ahead", T * B, m)
        if not one_hot_product(x_q.numpy(), weights.numpy(), ahead.numpy()):
            torch.mm(x_q, weights[:, :n].t(), out=ahead)
        loop.hold({P_AHEAD: ahead})
        # [W_h, w_bias]^T (blocks); numpy's transposing copy takes half the time of torch's
        w_hb_t = loop.kept("w_hb_t", h + 1, m)
        np.copyto(w_hb_t.numpy(), weights[:, n:].numpy().T)
    step, mm, phase = forward_step, torch.mm, OUTPUT if sto else BOTH
    if sto:
        loop.draw_uniforms()
    step(-1, CELL, 0, ptr, dim, rec)  # the input side of read 0
    n_in = n + h + 1
    in_order = split and ordered.applies(x_h)  # the split's step product (rpusim.ordered)
    split_mm = _product_of(in_order)
    compiled = (
        not sto
        and weights.is_contiguous()
        and _products(
            (blas.X_WT, B, m, n_in), *([(blas.X_M, B, m, h + 1)] if split and not in_order else [])
        )
    )
    if compiled:  # the same steps, the products called from compiled code
        x_t, x_step = (x_q_t, 0) if Zs is None else (Z, 4 * B * n_in)
        split_product = (h + 1, x_h.data_ptr(), w_hb_t.data_ptr()) if split else (0, 0, 0)
        prod = _product_table(B, m, a_t, n_in, x_t, x_step, weights, split_product, in_order)
        scratch = np.zeros(8, np.int64)
        t = 0
        while t < T:
            if noise_on and t >= loop.k1:
                loop.draw_noise(t)
            t, n_sat = forward_run(
                t, loop.k1 if noise_on else T, loop.k0, ptr, dim, rec, prod, scratch
            )
            if n_sat:
                loop.reread(t, Z[t], matrix, a_t.numpy(), n_sat)
                step(t, CELL, t - loop.k0, ptr, dim, rec)
                t += 1
        return
    for t in range(T):
        if split and split_at[t]:
            split_mm(x_h, w_hb_t, a_t)
        else:
            mm(x_q_t if Zs is None else Zs[t], matrix, out=a_t)
        if noise_on and t >= loop.k1:
            loop.draw_noise(t)
        k = t - loop.k0
        n_sat = step(t, phase, k, ptr, dim, rec)
        if n_sat or sto:
            if n_sat:
                loop.reread(t, Z[t], matrix, a_t.numpy(), n_sat)
            if sto and t + 1 < T:
                loop.draw_uniforms()
            step(t, CELL, k, ptr, dim, rec)


def backward_sequence(
    weights: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    grad_hs: torch.Tensor,
    G: torch.Tensor,
    C: torch.Tensor,
    TC: torch.Tensor,
    dc: torch.Tensor,
    dA: torch.Tensor,
    DZ: torch.Tensor,
    split: bool = False,
    input_grad: bool = True,
) -> None:
    """The backward time loop of :class:`~rpusim.layers.AnalogLSTMLayer`, bit for bit.

    grad_hs (T, B, h): dloss/dh_t from above; G, C, TC: the forward's; dc (B, h): dloss/dc_T in
    (updated in place); DZ (T + 1, B, n + h + 1): ``DZ[T]`` holds dloss/dh_T from beyond the
    sequence in ``[:, n:n + h]`` (zeros elsewhere). Writes dA[t] = da_t and DZ[t] = W^T da_t (the
    backward read of step t) for t < T, reading back through ``io`` with ``generator``.
    ``split``: the reads of :func:`rpusim.periphery.split.backward_read` (only ``DZ[t, :, n:]``'s
    ``dh`` part inside the loop) and, with ``input_grad``, the ``dx`` parts ``DZ[:T, :, :n]``
    after it (:func:`~rpusim.periphery.split.backward_after`); the bias output is not written.
    """
    T, B, m = G.shape
    h = dc.shape[1]
    n = DZ.shape[2] - h - 1
    loop = loop_for(io, generator, T, B, n, h, forward=False, split=split)
    loop.hold({P_GH: grad_hs, P_G: G, P_C: C, P_TC: TC, P_DC: dc, P_DA: dA, P_DZ: DZ})
    ptr, dim, rec, sto, noise_on = loop.ptr, loop.dim, loop.plan.record, loop.sto, loop.noise_on
    # The split's steps read W_h (4h, h), a contiguous copy (kept: the loop's buffer).
    matrix = loop.kept("w_h", *weights[:, n:-1].shape).copy_(weights[:, n:-1]) if split else weights
    z_t = loop.out_t
    dAs = None if loop.in_side else dA.unbind(0)  # the matmul reads da_t itself
    step, phase = backward_step, OUTPUT if sto else BOTH
    n_out = z_t.shape[1]
    in_order = split and ordered.applies(z_t)  # the step's product of W_h (rpusim.ordered)
    step_mm = _product_of(in_order)
    compiled = (
        not sto and matrix.is_contiguous() and (in_order or _products((blas.X_M, B, n_out, m)))
    )
    if compiled:  # each step with its read's product in one compiled call
        if dAs is None:  # the DAC's outputs: kept per step (split) or one buffer
            x_t, x_step = loop.x_q(0), 4 * loop.xq_stride if split else 0
        else:
            x_t, x_step = dA, 4 * B * m
        prod = _product_table(B, n_out, z_t, m, x_t, x_step, matrix, in_order=in_order)
        scratch = np.zeros(8, np.int64)
    k = 0  # where the last read's output noise is in the noise buffer
    if compiled:  # the same steps, in runs of compiled steps (backward_run)
        t = T - 1
        while t >= 0:
            if noise_on and t < T - 1 and loop.k1 <= T - 2 - t:
                loop.draw_noise(T - 2 - t)  # the read step t finishes
            k1 = loop.k1 if noise_on else T
            t, n_sat = backward_run(t, loop.k0, k1, ptr, dim, rec, prod, scratch)
            if n_sat:  # step t's read (t + 1) saturated: as in the loop below
                k = T - 2 - t - loop.k0
                loop.reread(T - 2 - t, dA[t + 1], matrix, DZ[t + 1].numpy(), n_sat)
                step(t, CELL, k, ptr, dim, rec)
                step_mm(loop.x_q(t) if dAs is None else dAs[t], matrix, z_t)
                t -= 1
        if noise_on and loop.k1 < T:
            loop.draw_noise(T - 1)
        k = T - 1 - loop.k0
    else:
        for t in range(T - 1, -1, -1):
            # Finish read t + 1 (the (T - 2 - t)-th read), the cell of step t, start read t.
            n_sat = step(t, phase, k, ptr, dim, rec)
            if n_sat or sto:
                if n_sat:
                    loop.reread(T - 2 - t, dA[t + 1], matrix, DZ[t + 1].numpy(), n_sat)
                if sto:
                    loop.draw_uniforms()
                step(t, CELL, k, ptr, dim, rec)
            step_mm(loop.x_q(t) if dAs is None else dAs[t], matrix, z_t)
            if noise_on and T - 1 - t >= loop.k1:
                loop.draw_noise(T - 1 - t)
            k = T - 1 - t - loop.k0
    n_sat = step(-1, OUTPUT, k, ptr, dim, rec)  # finish read 0
    if n_sat:
        loop.reread(T - 1, dA[0], matrix, DZ[0].numpy(), n_sat)
    if split and input_grad:
        # The dx outputs of every read: one product, then each element's noise and ADC.
        d_q = loop.x_q_t[:, : B * m].reshape(T * B, m) if dAs is None else dA.view(T * B, m)
        s = torch.mm(d_q, weights[:, :n]).view(T, B, n)
        w = n + h + 1
        noise = loop.noise_t[:, : B * w].view(T, B, w).numpy() if noise_on else None
        dx_outputs(s.numpy(), noise, loop.alpha, rec, DZ.numpy(), n)


__all__ = ["backward_sequence", "cell_backward", "cell_forward", "forward_sequence"]
