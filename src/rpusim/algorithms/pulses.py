"""Given signed pulse counts, applied to chosen devices through the device model's response.

The buffered transfer of TTv2 (and its chopped variants) and the mixed-precision transfer decide
digitally how many single pulses each device receives; this module sends them. Each pulse is the
device model's own response (``model.step`` of :mod:`rpusim.devices`, bound to torch), so every
device model works under every algorithm: pulse ``m`` of device ``ij`` (``m < |n_ij|``) moves it
up (``n_ij > 0``) or down with a fresh cycle-to-cycle normal, in float64, then the weight is
rounded to float32 and clipped to the device's bounds, as the torch reference of the pulsed update
applies coincidences one by one (:func:`rpusim.update.pulsed_update_reference`).

Only the devices with a non-zero count are touched (and draw normals), so sending a few pulses to
one column costs a few operations on that column.
"""

from __future__ import annotations

import torch

from rpusim.devices import DeviceArrays
from rpusim.devices.ops import TORCH, bind


@torch.no_grad()
def apply_pulse_counts(
    w: torch.Tensor, counts: torch.Tensor, dev: DeviceArrays, generator: torch.Generator
) -> None:
    """Send ``counts`` (float32 ``(out, in)``, whole numbers; > 0 up, < 0 down) single pulses to
    the devices of ``w`` (float32 ``(out, in)``, contiguous, modified in place).

    The normals come from ``generator``: for pulse ``m``, one standard normal per device that
    still receives a pulse, in row-major device order; the same generator state gives the same
    weights.
    """
    if counts.shape != w.shape or not w.is_contiguous():
        raise ValueError(f"counts {tuple(counts.shape)} must match contiguous w {tuple(w.shape)}")
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
    for m in range(int(left.max())):
        active = left > m
        sel = torch.nonzero(active).squeeze(1)
        z = torch.randn(sel.shape, generator=generator, dtype=torch.float64).to(w.device)
        zz = torch.zeros(v.shape, dtype=torch.float64, device=w.device)
        zz[sel] = z
        new = step(v.double(), up, hi, lo, params, consts, zz).to(torch.float32)
        new = torch.clamp(new, w_min, w_max)
        v = torch.where(active, new, v)
    flat_w[idx] = v
