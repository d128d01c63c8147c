"""The update's plan: pulse probabilities, bit lengths and update and BL management (section 3.1).

Computed once per call, in float64 and then rounded to float32, and shared by every twin of the
update (:mod:`rpusim.update.reference`, :mod:`rpusim.update.numba`, :mod:`rpusim.update.triton`),
so that they all see the same probabilities.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from rpusim import rng
from rpusim.config import UpdateConfig
from rpusim.devices import DeviceArrays


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
            ``bl_management``, ``um_clip`` (which side saturates when ``k = lr max|x|
            max|d| / dw_min`` exceeds BL: ``both`` (balanced, the papers' formula) or
            ``d_only`` (x's probabilities kept exact, as the reference simulator does)).
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
        if cfg.um_clip == "d_only":
            # When the wanted count k exceeds BL the update cannot be delivered in full. The
            # reference simulator (aihwkit 1.2) first shrinks d's side by BL / k, so that x's
            # probabilities stay exact (A max|x| = 1) and only d's saturate.
            k = lr * x_max * d_max / dw_min
            safe_d = torch.where(k > cfg.bl, safe_d * (cfg.bl / k), safe_d)
        sqrt_m = torch.sqrt(safe_d / safe_x)
        a, b = scale * sqrt_m, scale / sqrt_m
    else:
        a, b = scale, scale
    a = torch.where(active, a, 0.0).to(torch.float32)
    b = torch.where(active, b, 0.0).to(torch.float32)
    return a, b, bl


def check_args(w: torch.Tensor, x: torch.Tensor, d: torch.Tensor, dev: DeviceArrays, key: int):
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
