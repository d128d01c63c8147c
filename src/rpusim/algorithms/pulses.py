"""Given signed pulse counts, applied to chosen devices through the device model's response.

The buffered transfer of TTv2 (and its chopped variants) and the mixed-precision transfer decide
digitally how many single pulses each device receives; this module sends them. Each pulse is the
device model's own response (``model.step`` of :mod:`rpusim.devices`), so every device model
works under every algorithm: pulse ``m`` of device ``ij`` (``m < |n_ij|``) moves it up
(``n_ij > 0``) or down with a fresh cycle-to-cycle normal, in float64, then the weight is rounded
to float32 and clipped to the device's bounds, as the pulsed update applies coincidences one by
one (:func:`rpusim.update.pulsed_update_reference`).

Two twins give the same bits:

* :func:`apply_pulse_counts_reference`: plain torch, the devices with a non-zero count at once;
* :func:`apply_pulse_counts_numba`: a compiled loop over the devices calling the model's
  compiled ``step`` (the one the pulsed update's kernel inlines, :func:`rpusim.update.numba.
  response_step`).

Their normals come from the counter-based generator of :mod:`rpusim.rng`: the ``m``-th pulse of
device ``ij`` (flat index ``f = i + j * in``) in call ``call`` of stream ``key`` uses the table
Gaussian of ``mix32(mix32(seed ^ f) ^ m)``, ``seed = mix32(stream_base(key, STREAM_C2C) ^ call)``
(:func:`pulse_seed`): a pure function of where it is used, so both twins draw the same numbers.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from rpusim import rng
from rpusim.devices import DeviceArrays
from rpusim.devices.ops import TORCH, bind

BACKENDS = ("auto", "numba", "torch")


def pulse_seed(key: int, call: int) -> int:
    """The seed of one call (``call``: a counter of the caller's, any int >= 0) of stream
    ``key`` (in ``[0, 2**31)``): ``mix32(stream_base(key, STREAM_C2C) ^ (call mod 2**32))``."""
    return rng.mix32(rng.stream_base(key, rng.STREAM_C2C) ^ (int(call) & rng.MASK32))


def _check(w: torch.Tensor, counts: torch.Tensor) -> None:
    if counts.shape != w.shape or not w.is_contiguous():
        raise ValueError(f"counts {tuple(counts.shape)} must match contiguous w {tuple(w.shape)}")


@torch.no_grad()
def apply_pulse_counts(
    w: torch.Tensor,
    counts: torch.Tensor,
    dev: DeviceArrays,
    key: int,
    call: int = 0,
    backend: str = "auto",
) -> None:
    """Send ``counts`` (float32 ``(out, in)``, whole numbers; > 0 up, < 0 down) single pulses to
    the devices of ``w`` (float32 ``(out, in)``, contiguous, modified in place).

    ``key`` and ``call`` fix the cycle-to-cycle normals (:func:`pulse_seed`); the same pair
    gives the same weights on every backend: ``"numba"`` (CPU tensors), ``"torch"`` (the
    reference, any device) or ``"auto"`` (numba on the CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")
    if backend == "auto":
        backend = "numba" if w.device.type == "cpu" else "torch"
    if backend == "torch":
        apply_pulse_counts_reference(w, counts, dev, key, call)
    else:
        apply_pulse_counts_numba(w, counts, dev, key, call)


@torch.no_grad()
def apply_pulse_counts_reference(
    w: torch.Tensor, counts: torch.Tensor, dev: DeviceArrays, key: int, call: int = 0
) -> None:
    """:func:`apply_pulse_counts` in plain torch. Only the devices with a non-zero count are
    touched, so a few pulses to one column cost a few operations on that column."""
    _check(w, counts)
    flat_counts = counts.reshape(-1)
    idx = torch.nonzero(flat_counts).squeeze(1)
    if idx.numel() == 0:
        return
    n = flat_counts[idx]
    up = n > 0
    left = n.abs()
    flat_w = w.view(-1)
    v = flat_w[idx]
    params = dev.params.reshape(dev.params.shape[0], -1)[:, idx].double()
    w_max, w_min = dev.w_max.reshape(-1)[idx], dev.w_min.reshape(-1)[idx]
    hi, lo = w_max.double(), w_min.double()
    consts = torch.tensor(dev.consts, dtype=torch.float64, device=w.device)
    step = bind(dev.model.step, TORCH)
    h = rng.mix32(pulse_seed(key, call) ^ idx.to(torch.int64))
    for m in range(int(left.max())):
        active = left > m
        z = rng.table_normals(rng.coincidence_hash(h, m)).double()
        new = step(v.double(), up, hi, lo, params, consts, z).to(torch.float32)
        new = torch.clamp(new, w_min, w_max)
        v = torch.where(active, new, v)
    flat_w[idx] = v


def _pulse_counts(w, counts, params, consts, w_min, w_max, seed, table):
    """The compiled loop: every device with a non-zero count, its pulses one at a time
    (``step`` is the model's, bound as a global of this model's copy: :func:`_kernel`)."""
    n_out, n_in = w.shape
    p = np.empty(params.shape[0], np.float64)
    for j in range(n_out):
        for i in range(n_in):
            c = counts[j, i]
            if c == 0:
                continue
            _pulses_one(w, j, i, c > 0, int(abs(c)), params, consts, w_min, w_max, seed, table, p)


def _pulses_one(w, j, i, up, n, params, consts, w_min, w_max, seed, table, p):
    """``n`` single pulses (up or down) to device ``(j, i)`` of ``w``; ``p``: scratch."""
    n_in = w.shape[1]
    for q in range(p.shape[0]):
        p[q] = np.float64(params[q, j, i])
    lo, hi = w_min[j, i], w_max[j, i]
    h = _mix32(seed ^ (j * n_in + i))
    wij = w[j, i]
    for m in range(n):
        z64 = np.float64(table[_mix32(h ^ m) >> _GAUSS_SHIFT])
        w64, hi64, lo64 = np.float64(wij), np.float64(hi), np.float64(lo)
        v_new = np.float32(step(w64, up, hi64, lo64, p, consts, z64))
        wij = min(max(v_new, lo), hi)
    w[j, i] = wij


_GAUSS_SHIFT = 32 - rng.TABLE_BITS
#: Bound per model by :func:`pulses_one` (the response, the compiled hash).
step = _mix32 = None


@cache
def pulses_one(kind: str):
    """:func:`_pulses_one` compiled for the device model ``kind`` (for other kernels too)."""
    from rpusim.update.numba import mix32_compiled, model_tag, njit_as, response_step

    return njit_as(
        f"pulses_one_{model_tag(kind)}",
        _pulses_one,
        step=response_step(kind),
        _mix32=mix32_compiled,
    )


@cache
def _kernel(kind: str):
    from rpusim.update.numba import model_tag, njit_as

    return njit_as(f"pulse_counts_{model_tag(kind)}", _pulse_counts, _pulses_one=pulses_one(kind))


@torch.no_grad()
def apply_pulse_counts_numba(
    w: torch.Tensor, counts: torch.Tensor, dev: DeviceArrays, key: int, call: int = 0
) -> None:
    """:func:`apply_pulse_counts` compiled (CPU tensors): the same weights, bit for bit."""
    _check(w, counts)
    if w.device.type != "cpu":
        raise ValueError("backend 'numba' needs CPU tensors; use backend='torch' or 'auto'")
    _kernel(dev.kind)(
        w.numpy(),
        counts.detach().contiguous().numpy(),
        *dev.numpy_args(),
        pulse_seed(key, call),
        rng.normal_table_numpy(),
    )


def _buffer_columns(C, H, cols, b, scale, limit, forget, momentum, keep, params, consts, w_min,
                    w_max, seed, table):  # fmt: skip
    """The buffer step of TTv2 on the columns ``cols`` (:meth:`rpusim.algorithms.ttv2.TTv2.
    write_slow`), in its float32 order: ``h = H + scale b``, ``n = clip(trunc(h), +-limit)``
    single pulses to ``C`` (as :func:`_pulse_counts`, seed of the call ``seed``), then
    ``H = momentum h`` where ``n != 0`` (``forget``) or ``H = h - keep n`` (``keep``: ``1 -
    momentum`` rounded to float32)."""
    n_out = C.shape[0]
    p = np.empty(params.shape[0], np.float64)
    for c in range(cols.shape[0]):
        i = cols[c]
        for j in range(n_out):
            h = H[j, i] + scale * b[j, c]
            n = min(max(np.float32(np.trunc(h)), -limit), limit)
            if n != 0:
                _pulses_one(C, j, i, n > 0, int(abs(n)), params, consts, w_min, w_max, seed,
                            table, p)  # fmt: skip
            if forget:
                if n != 0:
                    h = momentum * h
            else:
                h = h - keep * n
            H[j, i] = h


@cache
def _buffer_kernel(kind: str):
    from rpusim.update.numba import model_tag, njit_as

    return njit_as(
        f"buffer_columns_{model_tag(kind)}", _buffer_columns, _pulses_one=pulses_one(kind)
    )


def buffer_columns_numba(
    C: torch.Tensor,
    H: torch.Tensor,
    cols: list[int],
    b: torch.Tensor,
    scale: float,
    limit: float,
    forget: bool,
    momentum: float,
    dev: DeviceArrays,
    key: int,
    call: int,
) -> None:
    """:func:`_buffer_columns` on CPU tensors (``b``: float32 ``(out, len(cols))``); the same
    bits as TTv2's torch buffer step with :func:`apply_pulse_counts_reference`."""
    _buffer_kernel(dev.kind)(
        C.numpy(), H.numpy(), np.asarray(cols, np.int64), b.detach().contiguous().numpy(),
        np.float32(scale), np.float32(limit), bool(forget), np.float32(momentum),
        np.float32(1.0 - momentum),
        *dev.numpy_args(), pulse_seed(key, call), rng.normal_table_numpy(),
    )  # fmt: skip
