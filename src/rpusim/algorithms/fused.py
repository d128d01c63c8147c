"""The update call of TTv2 and its chopped variants as one compiled loop (CPU).

With a transfer after every pair (``c_ttv2`` and ``agad`` by default) one update call of ``K``
pairs interleaves ``K`` times "write pair ``k`` onto ``A``" and "read columns of ``A``, add them
to the buffer ``H``, pulse ``C``, switch choppers". :func:`kernel` runs that whole loop for a
chunk of pairs in numba: the pairs' pulse trains come from the pulsed update's pass 1
(:func:`rpusim.update.numba._pulse_pass`, for the chunk at once: the firing does not depend on
the choppers, only the direction does), each pair is applied by the update's own pass 2
(:func:`rpusim.update.numba.block_kernel`) with the chopped inputs of that moment, and each
transfer reads, buffers and pulses in compiled code.

Its plain torch twin is :meth:`rpusim.algorithms.ttv2.TTv2.update` with ``backend="torch"``:
the same loop, pair by pair (:func:`rpusim.update.pulsed_update_reference` with ``pairs``), the
same random numbers (the call's one update key, the read noise and the uniforms drawn up front
for the call's transfers), the same float32 arithmetic; the tests hold them equal bit for bit.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from rpusim.algorithms.pulses import pulses_one

_MASK32 = 0xFFFFFFFF


def _transfer(
    A, C, H, t, n_reads, counters, cols, v, b,
    xq, noisy, sigma, noise, out_clip, out_bound, out_quant, out_per_step, out_step,
    chopped, chop, agad, mean_run, mean_ref, n_run,
    scale, limit, forget, momentum, keep, cparams, consts, cw_min, cw_max, pulse_base, table, p,
    reset_p, reset_u, chop_p, chop_random, chop_period, chop_u, reads_in_period,
):  # fmt: skip
    """Transfer ``t`` of the call: read the next ``n_reads`` columns of ``A``, buffer them, send
    the pulses to ``C``, then reset and chopper switches (the order of the torch twin)."""
    n_out, n_in = A.shape
    next_col = counters[1]
    for c in range(n_reads):
        cols[c] = (next_col + c) % n_in
    counters[1] = (next_col + n_reads) % n_in
    seed = _mix32(pulse_base ^ (counters[2] & _MASK32))
    counters[2] += 1
    for c in range(n_reads):
        i = cols[c]
        # The read of column i through the transfer periphery (one-hot input, DAC value xq).
        for j in range(n_out):
            r = xq * A[j, i]
            if noisy:
                r = r + sigma * noise[t, c, j]
            if out_clip:
                if r > out_bound:
                    r = out_bound
                elif r < -out_bound:
                    r = -out_bound
            if out_quant:
                r = np.rint(r * out_per_step) * out_step
            v[j] = r
        # What the buffer adds up.
        for j in range(n_out):
            if agad:
                b[j] = (v[j] - mean_ref[j, i]) * chop[i]
            elif chopped:
                b[j] = v[j] * chop[i]
            else:
                b[j] = v[j]
        if agad:
            n_run[i] += np.float32(1.0)
            for j in range(n_out):
                m = mean_run[j, i]
                mean_run[j, i] = m + (v[j] - m) / n_run[i]
        # The buffer step (pulses.py, _buffer_columns).
        for j in range(n_out):
            h = H[j, i] + scale * b[j]
            n = min(max(np.float32(np.trunc(h)), -limit), limit)
            if n != 0:
                _pulses_one(C, j, i, n > 0, int(abs(n)), cparams, consts, cw_min, cw_max, seed,
                            table, p)  # fmt: skip
            if forget:
                if n != 0:
                    h = momentum * h
            else:
                h = h - keep * n
            H[j, i] = h
    # After the read: resets of A's columns, then chopper switches.
    for c in range(n_reads):
        if reset_p > 0 and reset_u[t, c] < reset_p:
            i = cols[c]
            for j in range(n_out):
                A[j, i] = np.float32(0.0)
    if chop_p > 0:
        for c in range(n_reads):
            i = cols[c]
            if chop_random:
                flip = chop_u[t, c] < chop_p
            else:
                reads_in_period[i] += 1
                flip = reads_in_period[i] >= chop_period
            if flip:
                reads_in_period[i] = 0
                chop[i] = -chop[i]
                counters[3] += 1
                if agad:
                    for j in range(n_out):
                        mean_ref[j, i] = mean_run[j, i]
                        mean_run[j, i] = np.float32(0.0)
                    n_run[i] = np.float32(0.0)


def _chunk(
    k0, k1, x, xc, d, row_word, col_word, col_mask,
    A, fparams, fw_min, fw_max, folds, std_sqrt, c2c_base, c2c_col_seed,
    every, pairs_mode, due_at_end, n_reads, counters,
    xq, noisy, sigma, noise, out_clip, out_bound, out_quant, out_per_step, out_step,
    chopped, chop, agad, mean_run, mean_ref, n_run,
    C, H, scale, limit, forget, momentum, keep, cparams, consts, cw_min, cw_max, pulse_base, table,
    reset_p, reset_u, chop_p, chop_random, chop_period, chop_u, reads_in_period,
):  # fmt: skip
    """Pairs ``k0 <= k < k1`` of the call (pulse words of the chunk from ``k0``), each written
    onto ``A`` with the chopped inputs of its moment, the transfers where they fall.
    ``counters``: int64 ``[schedule count, next column, buffer writes, switches, transfers
    of this call]``, updated in place."""
    n_out, n_in = A.shape
    cols = np.empty(n_reads, np.int64)
    v = np.empty(n_out, np.float32)
    b = np.empty(n_out, np.float32)
    p = np.empty(cparams.shape[0], np.float64)
    for k in range(k0, k1):
        if chopped:
            for i in range(n_in):
                xc[k, i] = x[k, i] * chop[i]
        kk = k - k0
        apply_block(
            0, n_out, k, k + 1, A, xc, d, row_word[kk:], col_word[kk:], col_mask[kk:],
            fparams, consts, fw_min, fw_max, folds, std_sqrt, c2c_base, c2c_col_seed, table,
        )  # fmt: skip
        due = False
        if pairs_mode:
            counters[0] += 1
            if counters[0] == every:
                counters[0] = 0
                due = True
        if k == k1 - 1 and due_at_end:
            due = True
        if due:
            _transfer_next(
                A, C, H, n_reads, counters, cols, v, b,
                xq, noisy, sigma, noise, out_clip, out_bound, out_quant, out_per_step, out_step,
                chopped, chop, agad, mean_run, mean_ref, n_run,
                scale, limit, forget, momentum, keep, cparams, consts, cw_min, cw_max,
                pulse_base, table, p,
                reset_p, reset_u, chop_p, chop_random, chop_period, chop_u, reads_in_period,
            )  # fmt: skip

    if k1 == k0 and due_at_end:  # a call without pairs that completes a period
        _transfer_next(
            A, C, H, n_reads, counters, cols, v, b,
            xq, noisy, sigma, noise, out_clip, out_bound, out_quant, out_per_step, out_step,
            chopped, chop, agad, mean_run, mean_ref, n_run,
            scale, limit, forget, momentum, keep, cparams, consts, cw_min, cw_max,
            pulse_base, table, p,
            reset_p, reset_u, chop_p, chop_random, chop_period, chop_u, reads_in_period,
        )  # fmt: skip


def _transfer_next(A, C, H, n_reads, counters, *args):
    """The call's next transfer (its index ``t`` counted in ``counters[4]``)."""
    t = counters[4]
    counters[4] += 1
    _transfer(A, C, H, t, n_reads, counters, *args)


#: Bound per model by :func:`kernel`.
apply_block = _pulses_one = _mix32 = None


@cache
def kernel(kind: str):
    """:func:`_chunk` compiled for the device model ``kind`` (its pass 2 and single pulses)."""
    from rpusim.update import numba as update_numba

    transfer = update_numba.njit_as(
        f"ttv2_transfer_{update_numba.model_tag(kind)}", _transfer, _pulses_one=pulses_one(kind),
        _mix32=update_numba.mix32_compiled,
    )  # fmt: skip
    transfer_next = update_numba.njit_as(
        f"ttv2_transfer_next_{update_numba.model_tag(kind)}", _transfer_next, _transfer=transfer
    )
    return update_numba.njit_as(
        f"ttv2_chunk_{update_numba.model_tag(kind)}", _chunk,
        apply_block=update_numba.block_kernel(kind),
        _transfer_next=transfer_next,
    )  # fmt: skip


def _mixed_precision(w, chi, x, d, lr, eps, limit, every, counters, params, consts, w_min, w_max,
                     base, table):  # fmt: skip
    """Mixed precision's update call (:class:`rpusim.algorithms.mixed_precision.
    MixedPrecision`): per pair ``chi <- chi - lr (d_j x_i)``; after every ``every`` pairs
    ``n = clip(trunc(chi / eps), +-limit)`` single pulses to ``w`` (the seed of transfer
    ``counters[1]`` from ``base``) and ``chi <- chi - n eps``. ``counters``: int64 ``[pairs
    since the last transfer, transfers]``, updated in place."""
    n_out, n_in = w.shape
    p = np.empty(params.shape[0], np.float64)
    # |chi| below this cannot give trunc(chi / eps) != 0 (the quotient stays below 0.999 + an
    # ulp): such devices skip the division. A device's chi update and its transfer touch only
    # that device, so one pass over chi does both.
    near = eps * np.float32(0.999)
    for k in range(x.shape[0]):
        counters[0] += 1
        due = counters[0] == every
        seed = 0
        if due:
            counters[0] = 0
            seed = _mix32(base ^ (counters[1] & _MASK32))
            counters[1] += 1
        for j in range(n_out):
            dj = d[k, j]
            for i in range(n_in):
                c = chi[j, i] - lr * (dj * x[k, i])
                if due and abs(c) >= near:
                    n = min(max(np.float32(np.trunc(c / eps)), -limit), limit)
                    if n != 0:
                        _pulses_one(w, j, i, n > 0, int(abs(n)), params, consts, w_min, w_max,
                                    seed, table, p)  # fmt: skip
                        c = c - n * eps
                chi[j, i] = c


@cache
def mixed_precision_kernel(kind: str):
    """:func:`_mixed_precision` compiled for the device model ``kind``."""
    from rpusim.update import numba as update_numba

    return update_numba.njit_as(
        f"mixed_precision_{update_numba.model_tag(kind)}", _mixed_precision,
        _pulses_one=pulses_one(kind),
        _mix32=update_numba.mix32_compiled,
    )  # fmt: skip
