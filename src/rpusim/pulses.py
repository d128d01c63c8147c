"""The pulsed update: ``W <- W - lr * d^T x`` by coincidences of stochastic pulse trains.

This module is the readable reference of ``docs/model.md`` section 3 (the update) with the
constant-step device response of section 4. For each pair ``(x_k, d_k)`` (one time step of one
sequence; pairs are applied in order):

1. every column line ``i`` fires in each of ``BL`` slots with probability ``p_ki = A_k |x_ki|``,
   every row line ``j`` with ``q_kj = B_k |d_kj|`` (both capped at 1; :func:`pulse_scales`);
2. one draw per *line* and slot, shared by all devices on that line: the coincidence count of
   device ``ij`` is ``n_ij = sum_t row_j(t) & col_i(t)``, so devices on one line are correlated;
3. all coincidences of one pair move device ``ij`` the same way, ``s = -sign(d_kj) sign(x_ki)``;
4. the constant-step device applies its ``n`` steps as one: ``dw_s * (n + dw_min_std sqrt(n) z)``
   (``dw_s`` = ``dw_up`` if ``s > 0`` else ``dw_down``; ``sqrt(n) z`` is the sum of the ``n``
   cycle-to-cycle noises), then clips to the device's own ``[w_min_ij, w_max_ij]``.

Three implementations share :func:`pulse_scales`:

* :func:`pulsed_update_reference`: plain torch, one pair at a time, random numbers from the
  counter-based generator of :mod:`rpusim.rng`. Its float32 arithmetic is written in one fixed
  order that the compiled twin (:mod:`rpusim.kernels.numba_update`) copies exactly: given the
  same ``key`` the two give the same weights bit for bit.
* :func:`pulsed_update_one_by_one`: slow, literal section 3.4 (one coincidence at a time, fresh
  noise and a clip after each); the tests show the aggregated step matches it statistically.
* :func:`pulsed_update`: the dispatcher used by tiles (numba on CPU, Triton on CUDA where it is
  installed (:mod:`rpusim.kernels.triton_update`), the reference elsewhere).

Aggregating ``n`` coincidences into one step is exact in distribution for the constant-step
device as long as no single noisy step changes sign (``dw_min_std * xi < -1``, probability
4e-4 at ``dw_min_std = 0.3``): with all steps of one sign, clipping after each step or once at
the end gives the same weight.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from rpusim import rng
from rpusim.config import UpdateConfig
from rpusim.devices import DeviceArrays
from rpusim.kernels import triton_installed

BACKENDS = ("auto", "numba", "torch", "triton")


@lru_cache(maxsize=1)
def sqrt_counts() -> torch.Tensor:
    """``sqrt(n)`` for the possible coincidence counts ``n = 0 .. 64``, float32 ``(65,)``.

    Looked up rather than computed: torch's vectorized float32 ``sqrt`` is not always correctly
    rounded (``sqrt(19)`` comes out one ulp low), so the twins share this correctly rounded table
    (``math.sqrt`` in double, then one rounding to float32).
    """
    return torch.tensor([math.sqrt(n) for n in range(rng.MAX_BL + 1)], dtype=torch.float32)


def pulse_scales(
    x: torch.Tensor, d: torch.Tensor, lr: float, cfg: UpdateConfig, dw_min: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pulse-probability scales and bit lengths of each pair (``docs/model.md`` section 3.1).

    Args:
        x: ``(K, in)`` inputs of the K pairs (columns of the array).
        d: ``(K, out)`` errors of the K pairs (rows of the array).
        lr: learning rate ``eta``.
        cfg: ``bl`` (BL, or BL_max with ``bl_management``), ``update_management``,
            ``bl_management``.
        dw_min: the nominal step of the device model (not the per-device steps).

    Returns:
        ``A`` float32 ``(K,)``, ``B`` float32 ``(K,)``, ``bl`` int64 ``(K,)``, such that column
        ``i`` fires with ``p = min(1, A_k |x_ki|)`` and row ``j`` with ``q = min(1, B_k |d_kj|)``
        in each of ``bl_k`` slots. The expected coincidence count ``bl A B |x_i d_j|`` is then
        ``lr |x_i d_j| / dw_min`` (while no probability is capped). A pair whose ``x`` or ``d``
        is all zero makes no update: ``A = B = 0``.

    Computed once in float64 (then rounded to float32) and shared by every twin, so that they
    all see the same probabilities.
    """
    # max |.| per pair, from the largest and the smallest entry (no abs() copy of x and d).
    x_max = torch.maximum(x.detach().amax(dim=1), -x.detach().amin(dim=1)).double().cpu()
    d_max = torch.maximum(d.detach().amax(dim=1), -d.detach().amin(dim=1)).double().cpu()
    active = (x_max > 0) & (d_max > 0) & (lr > 0)
    if cfg.bl_management:
        # Fewer slots when the largest expected count is small: the pulse trains are shorter,
        # the probabilities larger, the expected update the same.
        needed = torch.ceil(lr * x_max * d_max / dw_min)
        bl = needed.clamp(1, cfg.bl).to(torch.int64)
    else:
        bl = torch.full(x_max.shape, cfg.bl, dtype=torch.int64)
    scale = torch.sqrt(lr / (bl.double() * dw_min))
    if cfg.update_management:
        # Balance the two trains so neither saturates first: A max|x| = B max|d|.
        safe_x = torch.where(active, x_max, 1.0)
        safe_d = torch.where(active, d_max, 1.0)
        sqrt_m = torch.sqrt(safe_d / safe_x)
        a, b = scale * sqrt_m, scale / sqrt_m
    else:
        a, b = scale, scale
    a = torch.where(active, a, 0.0).to(torch.float32)
    b = torch.where(active, b, 0.0).to(torch.float32)
    return a, b, bl


def _check(w: torch.Tensor, x: torch.Tensor, d: torch.Tensor, dev: DeviceArrays, key: int):
    n_out, n_in = w.shape
    if x.dim() != 2 or d.dim() != 2 or x.shape[1] != n_in or d.shape[1] != n_out:
        raise ValueError(
            f"shapes: w {tuple(w.shape)} needs x (K, {n_in}) and d (K, {n_out}); "
            f"got x {tuple(x.shape)}, d {tuple(d.shape)}"
        )
    if x.shape[0] != d.shape[0]:
        raise ValueError(f"x and d hold different numbers of pairs: {x.shape[0]}, {d.shape[0]}")
    for name, t in (("w", w), ("x", x), ("d", d), ("dw_up", dev.dw_up)):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    if dev.dw_up.shape != w.shape:
        raise ValueError(f"device arrays {tuple(dev.dw_up.shape)} do not match w {tuple(w.shape)}")
    if not 0 <= key < 2**31:
        raise ValueError(f"key must be in [0, 2**31), got {key}")
    # The counter RNG indexes slots by k*64 + t and devices by k*out + j in 32 bits.
    if x.shape[0] * max(rng.MAX_BL, n_out) >= 2**32:
        raise ValueError(f"too many pairs in one update ({x.shape[0]}); split the batch")


@torch.no_grad()
def pulsed_update_reference(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
) -> None:
    """Apply ``W <- W - lr d^T x`` as pulse coincidences, pair by pair (plain torch).

    Args:
        w: ``(out, in)`` float32 weights, modified in place.
        x: ``(K, in)`` float32 inputs; row ``k`` is the k-th pair in time order.
        d: ``(K, out)`` float32 errors.
        lr: learning rate.
        dev: per-device steps ``dw_up``/``dw_down``, bounds ``w_min``/``w_max`` (all
            ``(out, in)``) and the cycle-to-cycle spread ``dw_min_std``.
        cfg: bit length and update/BL management.
        dw_min: nominal step, used for the pulse probabilities.
        key: in ``[0, 2**31)``; fixes every random number of the call.
    """
    _check(w, x, d, dev, key)
    n_out, n_in = w.shape
    on = w.device
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
    p = torch.clamp(a.to(on)[:, None] * x.abs(), max=1.0)  # (K, in) column firing probabilities
    q = torch.clamp(b.to(on)[:, None] * d.abs(), max=1.0)  # (K, out) row firing probabilities
    c2c_std = torch.tensor(dev.dw_min_std, dtype=torch.float32, device=on)
    sqrt_n = sqrt_counts().to(on)

    for k in range(x.shape[0]):
        if a[k] == 0:
            continue
        n_slots = int(bl[k])
        col_u = rng.pulse_uniforms(key, rng.STREAM_COL, k, n_slots, n_in, on)  # (BL, in)
        row_u = rng.pulse_uniforms(key, rng.STREAM_ROW, k, n_slots, n_out, on)  # (BL, out)
        col_fires, row_fires = col_u < p[k], row_u < q[k]
        # Coincidences: slots in which both lines of a device fired (exact small integers).
        n = row_fires.T.to(torch.float32) @ col_fires.to(torch.float32)  # (out, in)

        s = -(torch.sign(d[k])[:, None] * torch.sign(x[k])[None, :])  # (out, in) direction
        dw = torch.where(s > 0, dev.dw_up, dev.dw_down)
        z = rng.device_normals(key, k, n_out, n_in, on)  # (out, in) one table Gaussian each
        # The n steps dw (1 + std xi) of one device, summed: dw (n + std sqrt(n) z), one
        # Gaussian for the sum of n noises. The twin computes (std * sqrt(n)) * z, then n + .,
        # then dw * ., then w + s * ., in float32 in this order.
        step = dw * (n + (c2c_std * sqrt_n[n.long()]) * z)
        w_new = torch.clamp(w + s * step, dev.w_min, dev.w_max)
        # A device without a coincidence received no pulse pair: it is not touched.
        w.copy_(torch.where(n > 0, w_new, w))


@torch.no_grad()
def pulsed_update_one_by_one(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
) -> None:
    """Section 3.4 literally: each coincidence is its own noisy step, clipped after each.

    Same arguments as :func:`pulsed_update_reference`. Randomness comes from a
    ``torch.Generator`` seeded with ``key``: this reference is compared with the aggregated one
    statistically, not bit for bit. Slow (a loop over pairs and coincidences); for tests.
    """
    _check(w, x, d, dev, key)
    n_out, n_in = w.shape
    gen = torch.Generator().manual_seed(key)
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
    p = torch.clamp(a.to(w.device)[:, None] * x.abs(), max=1.0)
    q = torch.clamp(b.to(w.device)[:, None] * d.abs(), max=1.0)

    for k in range(x.shape[0]):
        if a[k] == 0:
            continue
        n_slots = int(bl[k])
        col_fires = torch.rand((n_slots, n_in), generator=gen).to(w.device) < p[k]
        row_fires = torch.rand((n_slots, n_out), generator=gen).to(w.device) < q[k]
        n = row_fires.T.to(torch.float32) @ col_fires.to(torch.float32)
        s = -(torch.sign(d[k])[:, None] * torch.sign(x[k])[None, :])
        dw = torch.where(s > 0, dev.dw_up, dev.dw_down)
        for c in range(1, n_slots + 1):
            hit = n >= c
            if not hit.any():
                break
            xi = torch.randn((n_out, n_in), generator=gen).to(w.device)
            w_new = torch.clamp(w + s * dw * (1.0 + dev.dw_min_std * xi), dev.w_min, dev.w_max)
            w.copy_(torch.where(hit, w_new, w))


def pulsed_update(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
    backend: str = "auto",
) -> None:
    """The pulsed update, on the fastest implementation that gives the reference's bits.

    Same arguments as :func:`pulsed_update_reference`, plus ``backend``: ``"numba"`` (compiled
    CPU twin), ``"triton"`` (compiled GPU twin; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``), ``"torch"`` (the reference) or ``"auto"`` (numba for CPU tensors,
    triton for CUDA tensors when triton is installed, torch otherwise). Every backend gives the
    same result for the same ``key``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")
    if backend == "auto":
        if w.device.type == "cpu":
            backend = "numba"
        else:
            backend = "triton" if w.device.type == "cuda" and triton_installed() else "torch"
    if backend == "torch":
        pulsed_update_reference(w, x, d, lr, dev, cfg, dw_min, key)
        return
    if backend == "triton":
        from rpusim.kernels.triton_update import pulsed_update_triton

        pulsed_update_triton(w, x, d, lr, dev, cfg, dw_min, key)
        return
    if w.device.type != "cpu":
        raise ValueError("backend 'numba' needs CPU tensors; use backend='torch' or 'auto'")
    from rpusim.kernels.numba_update import pulsed_update_numba

    pulsed_update_numba(w, x, d, lr, dev, cfg, dw_min, key)
