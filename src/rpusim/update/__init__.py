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
  order that the compiled twin (:mod:`rpusim.update.numba`) copies exactly: given the
  same ``key`` the two give the same weights bit for bit.
* :func:`pulsed_update_one_by_one`: slow, literal section 3.4 (one coincidence at a time, fresh
  noise and a clip after each); the tests show the aggregated step matches it statistically.
* :func:`pulsed_update`: the dispatcher used by tiles (numba on CPU, Triton on CUDA where it is
  installed (:mod:`rpusim.update.triton`), the reference elsewhere).

Aggregating ``n`` coincidences into one step is exact in distribution for the constant-step
device as long as no single noisy step changes sign (``dw_min_std * xi < -1``, probability
4e-4 at ``dw_min_std = 0.3``): with all steps of one sign, clipping after each step or once at
the end gives the same weight.
"""

from __future__ import annotations

import torch

from rpusim.config import UpdateConfig
from rpusim.devices import DeviceArrays
from rpusim.twins import triton_installed
from rpusim.update.plan import check_args, pulse_scales, sqrt_counts
from rpusim.update.reference import pulsed_update_one_by_one, pulsed_update_reference

BACKENDS = ("auto", "numba", "torch", "triton")


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
            compiled = w.device.type == "cuda" and triton_installed()
            backend = "triton" if compiled else "torch"
    if backend == "torch":
        pulsed_update_reference(w, x, d, lr, dev, cfg, dw_min, key)
        return
    if backend == "triton":
        from rpusim.update.triton import pulsed_update_triton

        pulsed_update_triton(w, x, d, lr, dev, cfg, dw_min, key)
        return
    if w.device.type != "cpu":
        raise ValueError("backend 'numba' needs CPU tensors; use backend='torch' or 'auto'")
    from rpusim.update.numba import pulsed_update_numba

    pulsed_update_numba(w, x, d, lr, dev, cfg, dw_min, key)


__all__ = [
    "BACKENDS",
    "check_args",
    "pulse_scales",
    "pulsed_update",
    "pulsed_update_one_by_one",
    "pulsed_update_reference",
    "sqrt_counts",
]
