"""Numba twin of :func:`rpusim.update.pulsed_update_reference`: the same weights, bit for bit.

The reference builds, per pair, dense ``(BL, in)`` and ``(BL, out)`` firing tables and an
``(out, in)`` count matrix. This kernel computes the same numbers but spends its time only where
the array would see coincidences:

* pass 1, parallel over pairs: each line's ``BL`` slot bits are packed into one ``uint64`` word
  (``BL <= 64``), for every column and every row; and for every slot, a bitset of the columns
  that fired in it. The count of device ``ij`` is ``popcount(row_word_j & col_word_i)``.
* pass 2, parallel over blocks of weight rows: a row's devices see the pairs in order
  ``k = 0 .. K-1`` and rows never interact, so blocks need no synchronisation. Per pair, the
  rows that fired in a slot in which some column fired are listed first (most rows do not
  fire, for the small errors of a trained network); for those, the devices with ``n > 0`` are
  the union of the column bitsets of the slots in which the row fired, walked bit by bit. No
  device without a coincidence is visited.

Pairs are processed in chunks of at most ``CHUNK``, so the scratch memory is
``CHUNK * (1.5 (in + out) + BL * in / 64)`` words (the pulse words, the lines' 32-bit firing
thresholds, the slot bitsets) whatever ``K`` (besides the caller's ``x``, ``d`` and ``w``):
never a ``(K, out, in)`` or ``(K, BL, in)`` array.

Exactness: every random number comes from :func:`rpusim.rng.mix32`, the very function the
reference evaluates on tensors, compiled here on int64 scalars with the same masks; ``sqrt(n)``
comes from the same table (:func:`rpusim.update.sqrt_counts`). Float arithmetic is float32 in
the reference's order (``(std * sqrt(n)) * z``, ``n + .``, ``dw * .``, ``w + s * .``, clip), with
``fastmath`` off so that LLVM neither contracts to FMA nor reassociates.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import weakref
from functools import cache
from types import FunctionType

import numba
import numpy as np
import torch
from numba import njit, prange

from rpusim import rng
from rpusim.config import UpdateConfig
from rpusim.devices import MODELS, DeviceArrays, ops
from rpusim.devices.ops import NUMBA, bind
from rpusim.periphery.numba import abs_max
from rpusim.update.plan import check_args, pulse_scales, sqrt_counts

#: Most pairs whose pulse words are held at once (bounds the scratch memory).
CHUNK = 2048
#: Most weight rows per parallel task in pass 2 (a block's weights stay in the core's cache);
#: on one thread pass 2 is one block of all rows.
MAX_ROWS_PER_BLOCK = 64
#: Below this many line draws (pairs x lines x slots) one thread does the call: waking the other
#: threads costs more than it saves, and far more on a busy machine.
SERIAL_DRAWS = 1 << 20

# The reference's own hash, compiled. Numba's on-disk cache does not notice edits to another
# file: after changing rng.py (the hash or its constants), delete update/__pycache__ (the
# bit-for-bit twin tests fail until then).
mix32_compiled = njit(cache=True, nogil=True)(rng.mix32)

_U24 = np.float32(2.0**-24)
_2_24 = np.float32(2.0**24)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)
_GAUSS_SHIFT = 32 - rng.TABLE_BITS


@njit(cache=True, nogil=True)
def _popcount(v):
    """Set bits of a uint64 (SWAR; LLVM lowers it to ``popcnt`` where the CPU has one)."""
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _lowest_bit(v):
    """``(index, v without it)`` of the lowest set bit of a nonzero uint64."""
    low = v & (~v + np.uint64(1))
    return np.int64(_popcount(low - np.uint64(1))), v ^ low


@njit(cache=True, nogil=True)
def _line_seeds(base, n_lines):
    """``mix32(mix32(base ^ LINE_SALT) ^ l)`` for each line ``l``: int64 ``(n_lines,)``."""
    out = np.empty(n_lines, np.int64)
    salted = mix32_compiled(base ^ rng.LINE_SALT)
    for line in range(n_lines):
        out[line] = mix32_compiled(salted ^ line)
    return out


@njit(cache=True, nogil=True, inline="always")
def _mix32_u32(h):
    """:func:`rpusim.rng.mix32` on uint32 (every product wraps mod 2**32: the same bits as the
    masked int64 products), so that a loop of it vectorizes with 32-bit multiplies."""
    h = np.uint32(h ^ (h >> np.uint32(15)))
    h = np.uint32(h * np.uint32(rng.C1))
    h = np.uint32(h ^ (h >> np.uint32(12)))
    h = np.uint32(h * np.uint32(rng.C2))
    return np.uint32(h ^ (h >> np.uint32(15)))


@njit(cache=True, nogil=True)
def _fire_threshold(prob):
    """The integer form of ``u < prob`` for ``u = m 2**-24``, ``m = h >> 8``: ``m < thr``.

    ``m`` is an integer and ``p * 2**24`` exact in float32 for ``p = min(prob, 1)`` (a power of
    two moves only the exponent), so ``u < prob`` exactly when ``m < ceil(p * 2**24)``, at most
    ``2**24`` (``prob >= 1`` fires in every slot); 0 for ``prob <= 0`` or NaN (never fires).
    All in float32 and int32, so that a loop of it vectorizes: with a float64 ``ceil`` and a
    conversion to uint32, as before, it did not on an AVX2 CPU (1.35 -> 0.15 ns per line).
    """
    c = np.ceil(min(prob, _ONE) * _2_24)
    return np.uint32(np.int32(c)) if prob > _ZERO else np.uint32(0)


@njit(cache=True, nogil=True)
def _thresholds(v, scale, k0, k1, out):
    """``out[kk, l] = _fire_threshold(min(1, scale[k] |v[k, l]|))`` for the pairs
    ``k0 <= k < k1`` (``kk = k - k0``): every line's firing threshold, in one loop over each
    pair's lines that vectorizes."""
    n = v.shape[1]
    for kk in range(k1 - k0):
        s = scale[k0 + kk]
        for line in range(n):
            out[kk, line] = _fire_threshold(min(_ONE, s * abs(v[k0 + kk, line])))


@njit(cache=True, nogil=True)
def _fire_words(slot_seed, n_slots, line_seed, thr, words, acc):
    """Pack each line's pulse train into a word: bit ``t`` of ``words[l]`` is set when line
    ``l`` fires in slot ``t``, i.e. when ``u(slot_seed[t], line_seed[l]) < prob[l]``, computed
    as ``hash >> 8 < thr[l]`` (:func:`_fire_threshold`; ``line_seed`` uint32).

    Lines run along the inner loop, which vectorizes. The slots go in blocks of 32, each
    collected in the uint32 scratch ``acc`` (one per line) and then or-ed into the words: with
    every lane 32 bits wide the loop takes twice the lines per vector instruction as with the
    uint64 words (1.6x faster at BL 10). ``prob >= 1`` fires in every slot and ``prob = 0`` in
    none, exactly as in the reference (``0 <= u < 1``).
    """
    n_lines = words.shape[0]
    for line in range(n_lines):
        words[line] = np.uint64(0)
    for t0 in range(0, n_slots, 32):
        for line in range(n_lines):
            acc[line] = np.uint32(0)
        for t in range(t0, min(n_slots, t0 + 32)):
            slot = np.uint32(slot_seed[t])
            bit = np.uint32(1) << np.uint32(t - t0)
            for line in range(n_lines):
                m = _mix32_u32(np.uint32(slot ^ line_seed[line])) >> np.uint32(8)
                acc[line] |= bit if m < thr[line] else np.uint32(0)
        for line in range(n_lines):
            words[line] |= np.uint64(acc[line]) << np.uint64(t0)


@njit(cache=True, nogil=True, parallel=True)
def _pulse_pass(
    x, d, a, b, bl, k0, k1, col_base, row_base, col_seed, row_seed, col_word, col_mask, row_word
):
    """Pass 1, parallel over the pairs ``k0 <= k < k1`` of a chunk (``kk = k - k0``).

    Writes each column's and each row's packed pulse train, ``col_word[kk, i]`` and
    ``row_word[kk, j]``, and per slot the bitset of the columns that fired in it,
    ``col_mask[kk, t, :]`` (column ``i`` is bit ``i % 64`` of word ``i // 64``).
    """
    n_in, n_out = x.shape[1], d.shape[1]
    n_wd = col_mask.shape[2]
    n_pairs = k1 - k0
    # Every pair's lines' thresholds, in one loop that vectorizes.
    p = np.empty((n_pairs, n_in), np.uint32)
    q = np.empty((n_pairs, n_out), np.uint32)
    _thresholds(x, a, k0, k1, p)
    _thresholds(d, b, k0, k1, q)
    for kk in prange(n_pairs):
        k = k0 + kk
        n_slots = bl[k]
        for t in range(n_slots):
            for wd in range(n_wd):
                col_mask[kk, t, wd] = np.uint64(0)
        ak, bk = a[k], b[k]
        if ak == _ZERO or bk == _ZERO:  # a pair that makes no update fires no line
            col_word[kk, :] = np.uint64(0)
            row_word[kk, :] = np.uint64(0)
            continue
        slot_seed = np.empty(n_slots, np.int64)
        acc = np.empty(max(n_in, n_out), np.uint32)
        for t in range(n_slots):
            slot_seed[t] = mix32_compiled(col_base ^ (k * rng.MAX_BL + t))
        _fire_words(slot_seed, n_slots, col_seed, p[kk], col_word[kk], acc)
        for t in range(n_slots):
            slot_seed[t] = mix32_compiled(row_base ^ (k * rng.MAX_BL + t))
        _fire_words(slot_seed, n_slots, row_seed, q[kk], row_word[kk], acc)
        _slot_bitsets(col_word[kk], n_slots, col_mask[kk])


@njit(cache=True, nogil=True)
def _slot_bitsets(words, n_slots, mask):
    """``mask[t, i // 64]`` bit ``i % 64`` set when column ``i`` fired in slot ``t`` (bit ``t``
    of ``words[i]``), written into ``mask[:n_slots]``, which the caller has zeroed. Two ways to
    the same bits: walk each column's set bits (a few ns per fire: the faster for sparse
    trains), or gather bit ``t`` of 64 columns at a time (~0.5 ns per column and slot,
    branch-free: the faster from about one fire in eleven column-slots, as at the output
    layer)."""
    n_in = words.shape[0]
    fires = 0
    for i in range(n_in):
        fires += _popcount(words[i])
    if fires * 11 < n_in * n_slots:
        for i in range(n_in):
            word = words[i]
            bit = np.uint64(1) << np.uint64(i & 63)
            while word != np.uint64(0):
                t, word = _lowest_bit(word)
                mask[t, i >> 6] |= bit
        return
    for wd in range(mask.shape[1]):
        i0 = wd * 64
        for t in range(n_slots):
            tt = np.uint64(t)
            m = np.uint64(0)
            for i in range(i0, min(n_in, i0 + 64)):
                m |= ((words[i] >> tt) & np.uint64(1)) << np.uint64(i - i0)
            mask[t, wd] = m


@njit(cache=True, nogil=True)
def _positive_bits(x_k, out):
    """``out[i // 64]`` bit ``i % 64`` set when ``x_k[i] > 0`` (``out`` of ``ceil(n / 64)``
    words)."""
    n = x_k.shape[0]
    for wd in range(out.shape[0]):
        i0 = wd * 64
        m = np.uint64(0)
        for i in range(i0, min(n, i0 + 64)):
            m |= np.uint64(x_k[i] > _ZERO) << np.uint64(i - i0)
        out[wd] = m


def _apply_block(
    j0, j1, k0, k1, w, x, d, row_word, col_word, col_mask,
    params, consts, w_min, w_max, folds, std_sqrt, c2c_base, c2c_col_seed, table,
):  # fmt: skip
    """Apply the pairs ``k0 <= k < k1``, in order, to the weight rows ``j0 <= j < j1``.

    Each device with ``n > 0`` coincidences calls the device model: ``step_n`` once (a model
    that ``folds``, in float32), or ``step`` ``n`` times in float64 with a fresh normal each,
    rounded to float32 and clipped after each, as the reference does. ``step_n`` and ``step``
    are the model's, bound as globals of this model's copy of the kernel (:func:`kernels`).

    A folding model's row that fired in one slot ``t`` only (most rows: a row's train is
    short) meets each column that fired in ``t`` once: those come from a list of slot ``t``'s
    columns (and their noise seeds), made once per pair on first use, instead of from a walk of
    the union bitset.

    Within a row, the devices whose input ``x > 0`` come first, then the others: the direction
    of a step (``up``) is then the same for a run of devices, and the model's branches on it
    are predicted. In input order they follow the sign of a random input, and a mispredicted
    branch per device cost ~30% of the pass at 2x128. Within a pair every device is visited
    once and draws its own noise, so the order does not change a single bit.

    The device indices ``j``, ``i`` are unsigned (the row list, the slot lists): numba wraps a
    negative signed index around, a compare and a select per index of every array access in
    the device loop (~8% of the pass at 2x128).
    """
    n_out = w.shape[0]
    n_wd = col_mask.shape[2]
    n_slots = col_mask.shape[1]
    noisy = std_sqrt[1] != _ZERO
    hit_mask = np.empty(n_wd, np.uint64)
    p = np.empty(params.shape[0], np.float64)  # one device's parameters, in float64
    # Per slot of the current pair: its columns (those with x > 0 first, n_pos of them) and
    # their noise seeds (made on demand).
    fired = np.empty((n_slots, n_wd * 64), np.uint64)
    fired_seed = np.empty((n_slots, n_wd * 64), np.int64)
    n_fired = np.full(n_slots, -1, np.int64)
    n_pos = np.empty(n_slots, np.int64)
    x_pos = np.empty(n_wd, np.uint64)  # the current pair's columns with x > 0, as a bitset
    signs = np.empty(2, np.uint64)  # x_pos ^ signs[half]: the x > 0 half, then the others
    signs[0], signs[1] = np.uint64(0), ~np.uint64(0)
    one_std = std_sqrt[1]
    rows = np.empty(j1 - j0, np.uint64)
    for k in range(k0, k1):
        kk = k - k0
        if folds:
            for t in range(n_slots):
                n_fired[t] = -1
        # The rows that fired in a slot in which some column fired (the others meet no
        # column), listed without a branch per row: a branch per row mispredicts at every
        # fired row of the sparse trains.
        live = np.uint64(0)
        for t in range(n_slots):
            any_col = np.uint64(0)
            for wd in range(n_wd):
                any_col |= col_mask[kk, t, wd]
            if any_col != np.uint64(0):
                live |= np.uint64(1) << np.uint64(t)
        n_rows = 0
        for j in range(j0, j1):
            rows[n_rows] = np.uint64(j)
            n_rows += (row_word[kk, j] & live) != np.uint64(0)
        if n_rows:
            _positive_bits(x[k], x_pos)
        for r in range(n_rows):
            j = rows[r]
            rw = row_word[kk, j]
            if folds and rw & (rw - np.uint64(1)) == np.uint64(0):  # one slot, n = 1 each
                t, _ = _lowest_bit(rw)
                if n_fired[t] < 0:
                    q = 0
                    for half in range(2):
                        if half == 1:
                            n_pos[t] = q
                        for wd in range(n_wd):
                            v = col_mask[kk, t, wd] & (x_pos[wd] ^ signs[half])
                            while v != np.uint64(0):
                                b_i, v = _lowest_bit(v)
                                i = wd * 64 + b_i
                                fired[t, q] = np.uint64(i)
                                fired_seed[t, q] = c2c_col_seed[i]
                                q += 1
                    n_fired[t] = q
                d_pos = d[k, j] > _ZERO
                dev_seed = mix32_compiled(c2c_base ^ (k * n_out + np.int64(j)))
                for q in range(n_fired[t]):
                    i = fired[t, q]
                    up = d_pos != (q < n_pos[t])
                    z = _ZERO
                    if noisy:
                        z = table[mix32_compiled(dev_seed ^ fired_seed[t, q]) >> _GAUSS_SHIFT]
                    v_new = step_n(w[j, i], up, params[0, j, i], params[1, j, i], _ONE,
                                   one_std, z)  # fmt: skip
                    w[j, i] = min(max(v_new, w_min[j, i]), w_max[j, i])
                continue
            # The devices of row j with n > 0 are exactly the columns that fired in a slot
            # where row j fired: the union of those slots' column sets.
            for wd in range(n_wd):
                hit_mask[wd] = np.uint64(0)
            v = rw
            while v != np.uint64(0):
                t, v = _lowest_bit(v)
                for wd in range(n_wd):
                    hit_mask[wd] |= col_mask[kk, t, wd]
            d_pos = d[k, j] > _ZERO
            dev_seed = mix32_compiled(c2c_base ^ (k * n_out + np.int64(j)))
            for half in range(2):
                # s = -sign(d) sign(x) > 0: potentiation (an up step).
                up = d_pos != (half == 0)
                for wd in range(n_wd):
                    v = hit_mask[wd] & (x_pos[wd] ^ signs[half])
                    while v != np.uint64(0):
                        b_i, v = _lowest_bit(v)
                        i = np.uint64(wd * 64 + b_i)
                        c = _popcount(rw & col_word[kk, i])
                        lo, hi = w_min[j, i], w_max[j, i]
                        if folds:
                            z = _ZERO
                            if noisy:
                                z = table[
                                    mix32_compiled(dev_seed ^ c2c_col_seed[i]) >> _GAUSS_SHIFT
                                ]
                            n = np.float32(c)
                            v_new = step_n(w[j, i], up, params[0, j, i], params[1, j, i], n,
                                           std_sqrt[c], z)  # fmt: skip
                            w[j, i] = min(max(v_new, lo), hi)
                            continue
                        for q in range(p.shape[0]):
                            p[q] = np.float64(params[q, j, i])
                        h = mix32_compiled(dev_seed ^ c2c_col_seed[i])
                        wij = w[j, i]
                        for m in range(c):
                            z64 = np.float64(table[mix32_compiled(h ^ m) >> _GAUSS_SHIFT])
                            v_new = np.float32(
                                step(np.float64(wij), up, np.float64(hi), np.float64(lo), p,
                                     consts, z64)
                            )  # fmt: skip
                            wij = min(max(v_new, lo), hi)
                        w[j, i] = wij


def _apply_pass(
    w, x, d, k0, k1, row_word, col_word, col_mask,
    params, consts, w_min, w_max, folds,
    c2c_std, sqrt_n, c2c_base, c2c_col_seed, table, block_rows,
):  # fmt: skip
    """Pass 2, parallel over blocks of weight rows; each block applies the chunk's pairs in
    order. Rows never interact, so the blocks need no synchronisation."""
    n_out = w.shape[0]
    # std * sqrt(n) for every possible count n, in the reference's float32 arithmetic.
    std_sqrt = np.empty(rng.MAX_BL + 1, np.float32)
    for c in range(rng.MAX_BL + 1):
        std_sqrt[c] = c2c_std * sqrt_n[c]
    n_blocks = (n_out + block_rows - 1) // block_rows
    for blk in prange(n_blocks):
        j0 = blk * block_rows
        j1 = min(n_out, j0 + block_rows)
        apply_block(
            j0, j1, k0, k1, w, x, d, row_word, col_word, col_mask,
            params, consts, w_min, w_max, folds, std_sqrt, c2c_base, c2c_col_seed, table,
        )  # fmt: skip


#: The names the kernels above call; each model's copy of them binds these (:func:`kernels`).
step = step_n = apply_block = None


def _unused_step_n(w, up, dw_up, dw_down, n, std_sqrt_n, z):
    return w


@cache
def kernels(kind: str):
    """This module's pass 2 (:func:`_apply_pass` and :func:`_apply_block`) compiled for the
    device model ``kind``, its response (``step_n``, ``step``) bound as globals, as numba
    compiles a call to a global function: inlined into the device loop.

    Each compiled function is published as an attribute of this module under a name of its own
    (``apply_pass_linear_step_<hash>``, ...), which is the name numba's on-disk cache stores it
    by: the next process loads it instead of compiling it again. The name carries a hash of the
    model's response source (and of the ops), because numba checks only this file's timestamp
    for the kernels: an edited device model then compiles anew instead of running the old one.
    """
    block = block_kernel(kind)
    return njit_as(f"apply_pass_{model_tag(kind)}", _apply_pass, parallel=True, apply_block=block)


@cache
def block_kernel(kind: str):
    """:func:`_apply_block` compiled for the device model ``kind`` (serial; :func:`kernels`
    runs it on blocks of rows in parallel, the fused TTv2 loop on one pair at a time)."""
    model = MODELS[kind]
    step_fn = response_step(kind)
    step_n_py = bind(model.step_n, NUMBA) if model.FOLDS else _unused_step_n
    step_n_fn = njit_as(f"response_{model_tag(kind)}_step_n", step_n_py)
    return njit_as(f"apply_block_{model_tag(kind)}", _apply_block, step=step_fn, step_n=step_n_fn)


@cache
def response_step(kind: str):
    """The device model ``kind``'s response to one coincidence (``model.step``), compiled on
    float64 scalars; shared by every kernel that applies single pulses."""
    return njit_as(f"response_{model_tag(kind)}_step", bind(MODELS[kind].step, NUMBA))


@cache
def model_tag(kind: str) -> str:
    """``kind`` and eight hex digits of its response's source (``step``, ``step_n``) and of the
    ops: the part of a compiled kernel's name that changes when the device model is edited
    (numba's cache checks only the timestamp of the file a kernel is defined in)."""
    model = MODELS[kind]
    digest = hashlib.sha256()
    for obj in (model.step, model.step_n if model.FOLDS else _unused_step_n, ops):
        digest.update(inspect.getsource(obj).encode())
    return f"{kind}_{digest.hexdigest()[:8]}"


def njit_as(name: str, fn, parallel: bool = False, **bound):
    """``fn`` with the globals ``bound``, named ``name`` in this module, compiled (cached)."""
    copy = FunctionType(fn.__code__, {**fn.__globals__, **bound}, name, fn.__defaults__)
    copy.__qualname__, copy.__module__ = name, __name__
    dispatcher = njit(cache=True, nogil=True, parallel=parallel)(copy)
    globals()[name] = dispatcher
    return dispatcher


@njit(cache=True, nogil=True)
def _abs_max_rows(v):
    """``max |v|`` of each row of v (K, n) float32, as float64; NaN if a row is not finite
    (then :func:`scales_of` leaves the plan to the torch code). The maximum is noise
    management's (:func:`rpusim.periphery.numba.abs_max`, an integer maximum of the bit
    patterns, a loop that vectorizes). Equal to ``max(max v, -min v)`` (the sign of a zero
    result aside, which no caller sees: a zero row makes no update)."""
    out = np.empty(v.shape[0], np.float64)
    for k in range(v.shape[0]):
        m = abs_max(v[k], _ZERO)
        out[k] = np.float64(m) if m < _INF else np.nan
    return out


@njit(cache=True, nogil=True)
def _scales(x_max, d_max, lr, bl_max, update_management, bl_management, d_only, dw_min):
    """:func:`rpusim.update.plan.pulse_scales` on float64 scalars: the same operations in the
    same order (IEEE ``*``, ``/``, ``sqrt`` and ``ceil`` are exact-rounded, as in torch)."""
    n = x_max.shape[0]
    a, b = np.empty(n, np.float32), np.empty(n, np.float32)
    bl = np.empty(n, np.int64)
    for k in range(n):
        active = x_max[k] > 0 and d_max[k] > 0 and lr > 0
        if bl_management:
            needed = math.ceil(lr * x_max[k] * d_max[k] / dw_min)
            bl[k] = np.int64(min(max(needed, 1.0), np.float64(bl_max)))
        else:
            bl[k] = bl_max
        scale = math.sqrt(lr / (np.float64(bl[k]) * dw_min))
        ak, bk = scale, scale
        if update_management:
            safe_x = x_max[k] if active else 1.0
            safe_d = d_max[k] if active else 1.0
            if d_only:
                wanted = lr * x_max[k] * d_max[k] / dw_min
                if wanted > bl_max:
                    safe_d = safe_d * (bl_max / wanted)
            sqrt_m = math.sqrt(safe_d / safe_x)
            ak, bk = scale * sqrt_m, scale / sqrt_m
        a[k] = np.float32(ak) if active else _ZERO
        b[k] = np.float32(bk) if active else _ZERO
    return a, b, bl


def scales_of(x_np, d_np, x, d, lr, cfg: UpdateConfig, dw_min):
    """:func:`~rpusim.update.plan.pulse_scales` (``(A, B, bl)`` as numpy arrays), compiled: the
    torch code's ~20 small calls cost ~0.1 ms per update at batch 1. The same numbers (tested);
    inputs with a non-finite entry take the torch code itself."""
    ok, a, b, bl = _checked_scales(x_np, d_np, *_scale_args(lr, cfg, dw_min))
    if not ok:
        a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
        return a.numpy(), b.numpy(), bl.numpy()
    return a, b, bl


def _scale_args(lr, cfg: UpdateConfig, dw_min) -> tuple:
    """The scalar arguments of :func:`_checked_scales` after ``x``, ``d``."""
    d_only = cfg.um_clip == "d_only"
    return float(lr), cfg.bl, cfg.update_management, cfg.bl_management, d_only, float(dw_min)


@njit(cache=True, nogil=True)
def _checked_scales(x, d, lr, bl_max, update_management, bl_management, d_only, dw_min):
    """``(ok, A, B, bl)``: :func:`_scales` of the rows' ``max |x|``, ``max |d|``; ``ok`` False
    (and empty arrays) if ``x`` or ``d`` is not finite."""
    x_max, d_max = _abs_max_rows(x), _abs_max_rows(d)
    if not (np.isfinite(x_max).all() and np.isfinite(d_max).all()):
        return False, np.empty(0, np.float32), np.empty(0, np.float32), np.empty(0, np.int64)
    a, b, bl = _scales(x_max, d_max, lr, bl_max, update_management, bl_management, d_only, dw_min)
    return True, a, b, bl


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


@njit(cache=True, nogil=True)
def _prepare(x, d, lr, bl_max, update_management, bl_management, d_only, dw_min, key):
    """What pass 1 needs besides the pairs, in one compiled call (each of these as a call of its
    own costs a few microseconds of dispatch, an update at batch 1 ~0.1 ms): the pulse scales
    (:func:`_checked_scales`), the streams' bases and line seeds of ``key``, and the longest
    train (``max(bl)``, 1 without pairs)."""
    ok, a, b, bl = _checked_scales(
        x, d, lr, bl_max, update_management, bl_management, d_only, dw_min
    )
    n_in, n_out = x.shape[1], d.shape[1]
    col_base = mix32_compiled(key ^ rng.STREAM_COL)
    row_base = mix32_compiled(key ^ rng.STREAM_ROW)
    c2c_base = mix32_compiled(key ^ rng.STREAM_C2C)
    col_seed = _line_seeds(col_base, n_in).astype(np.uint32)
    row_seed = _line_seeds(row_base, n_out).astype(np.uint32)
    c2c_col_seed = _line_seeds(c2c_base, n_in)
    max_bl = bl.max() if bl.shape[0] else 1
    return ok, a, b, bl, col_base, row_base, c2c_base, col_seed, row_seed, c2c_col_seed, max_bl


@cache
def _sqrt_counts() -> np.ndarray:
    """:func:`~rpusim.update.plan.sqrt_counts` as a numpy array, made once and read-only (every
    call shares it)."""
    table = sqrt_counts().numpy()
    table.flags.writeable = False
    return table


#: :func:`_device_args` of the live device arrays, by ``id(dev)``; an entry goes with its
#: ``DeviceArrays`` (a weak reference's callback), so that it pins no dead tile's memory.
_DEVICE_ARGS: dict[int, tuple] = {}


def _device_args(dev: DeviceArrays) -> tuple:
    """``(params, consts, w_min, w_max, apply_pass, folds, c2c_std)``: the devices as pass 2
    takes them (numpy views of the tensors, the model's compiled pass 2), made once per set of
    contiguous CPU tensors and reused while ``dev`` holds those very tensors at the same
    addresses (views share their memory, so a change in place is seen). Made anew each call
    otherwise (a copy would not follow the tensors). Within a training step the ~10 Python
    operations cost ~20 us."""
    tensors = (dev.params, dev.w_min, dev.w_max)
    state = (dev.kind, dev.consts, tuple(t.data_ptr() for t in tensors))
    hit = _DEVICE_ARGS.get(id(dev))
    if (
        hit is not None
        and hit[0]() is dev
        and all(a is b for a, b in zip(hit[1], tensors, strict=True))
        and hit[2] == state
    ):
        return hit[3]
    args = (*dev.numpy_args(), kernels(dev.kind), dev.model.FOLDS, np.float32(dev.dw_min_std))
    if all(t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        key = id(dev)
        gone = weakref.ref(dev, lambda _, key=key: _DEVICE_ARGS.pop(key, None))
        _DEVICE_ARGS[key] = (gone, tensors, state, args)
    return args


def pulsed_update_numba(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
) -> None:
    """Same contract and same result as :func:`rpusim.update.pulsed_update_reference`.

    ``w`` ``(out, in)``, ``x`` ``(K, in)``, ``d`` ``(K, out)``: float32 CPU tensors; ``w`` is
    updated in place. Scratch memory: ``O(min(K, CHUNK) * (in + out))``.
    """
    check_args(w, x, d, dev, key)
    n_out, n_in = w.shape
    n_pairs = x.shape[0]
    x_np, d_np = _as_numpy(x), _as_numpy(d)
    prepared = _prepare(x_np, d_np, *_scale_args(lr, cfg, dw_min), key)
    ok, a_np, b_np, bl_np, col_base, row_base, c2c_base, col_seed, row_seed, c2c_col_seed = (
        prepared[:10]
    )
    max_bl = int(prepared[10])
    if not ok:  # a non-finite x or d: the torch code's scales (and its errors)
        a_np, b_np, bl_np = scales_of(x_np, d_np, x, d, lr, cfg, dw_min)
        max_bl = int(bl_np.max()) if n_pairs else 1
    w_np = w.detach().numpy() if w.is_contiguous() else w.detach().contiguous().numpy()
    params, consts, w_min, w_max, apply_pass, folds, c2c_std = _device_args(dev)
    table = rng.normal_table_numpy()
    sqrt_n = _sqrt_counts()

    chunk = min(CHUNK, max(n_pairs, 1))
    n_wd = (n_in + 63) // 64
    col_word = np.empty((chunk, n_in), np.uint64)
    row_word = np.empty((chunk, n_out), np.uint64)
    col_mask = np.empty((chunk, max_bl, n_wd), np.uint64)
    threads = numba.get_num_threads()
    serial = n_pairs * (n_in + n_out) * max_bl < SERIAL_DRAWS
    if serial and threads != 1:
        numba.set_num_threads(1)
    try:
        n_threads = 1 if serial else threads
        if n_threads == 1:
            # One thread: one block of all rows. Each block reads the whole chunk's pulse
            # words again, so smaller blocks only add traffic (25-35% slower at K = 3200).
            block_rows = max(n_out, 1)
        else:
            # About four blocks per thread, so that uneven rows still keep every thread busy.
            per_block = -(-n_out // (4 * n_threads))
            block_rows = max(8, min(MAX_ROWS_PER_BLOCK, per_block))
        for k0 in range(0, n_pairs, chunk):
            k1 = min(n_pairs, k0 + chunk)
            _pulse_pass(
                x_np, d_np, a_np, b_np, bl_np, k0, k1, col_base, row_base, col_seed, row_seed,
                col_word, col_mask, row_word,
            )  # fmt: skip
            apply_pass(
                w_np, x_np, d_np, k0, k1, row_word, col_word, col_mask,
                params, consts, w_min, w_max, folds,
                c2c_std, sqrt_n, c2c_base, c2c_col_seed, table, block_rows,
            )  # fmt: skip
    finally:
        if serial and threads != 1:
            numba.set_num_threads(threads)
    if not w.is_contiguous():
        w.copy_(torch.from_numpy(w_np))


__all__ = ["pulsed_update_numba"]
