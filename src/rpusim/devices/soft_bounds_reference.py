"""Soft-bounds device read against a reference: its symmetry point moved to zero.

A soft-bounds device (:mod:`rpusim.devices.soft_bounds`) whose conductance ``u`` is read as the
difference to a reference ``ref_ij`` (a second device or a fixed current programmed once):
the weight is ``w = u - ref_ij``. The device itself moves as a soft-bounds device in ``u``::

    up:   u <- u + dw_up_ij   * (1 - u / b_max_ij) * (1 + dw_min_std * xi)
    down: u <- u - dw_down_ij * (1 - u / b_min_ij) * (1 + dw_min_std * xi)

(``mult_noise: false``: ``dw * (1 - u / b + dw_min_std * xi)``), clipped to ``[b_min_ij,
b_max_ij]``, so ``w`` is bounded by ``[b_min_ij - ref_ij, b_max_ij - ref_ij]``. The reference is
``ref_ij = reference_mean + reference_std * xi``, plus, with ``subtract_symmetry_point``, the
device's own symmetry point ``u*_ij = (dw_up - dw_down) / (dw_up / b_max - dw_down / b_min)``:
the calibration the Tiki-Taka papers assume, after which balanced up and down pulses drive every
weight to ``w = 0`` instead of to ``u*_ij``. As the reference simulator's
``SoftBoundsReferenceDevice``; a reference is kept strictly inside ``(0.99 b_min_ij, 0.99
b_max_ij)`` [choice], so that ``w_min_ij < 0 < w_max_ij`` still holds for every device.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from rpusim.devices import ops
from rpusim.devices.base import DeviceArrays, PulsedDeviceConfig, arrays, draw_pulsed, normal

KIND = "soft_bounds_reference"
PARAMS = ("dw_up", "dw_down", "ref", "inv_b_max", "inv_b_min")
CONSTS = ("dw_min_std", "mult_noise")
FOLDS = False


class SoftBoundsReferenceConfig(PulsedDeviceConfig):
    """A soft-bounds device read against a reference (its symmetry point subtracted)."""

    kind: Literal["soft_bounds_reference"] = Field(
        "soft_bounds_reference", description="the device model"
    )
    mult_noise: bool = Field(
        False, description="[soft_bounds_reference] c2c noise scales the step (else additive)"
    )
    reference_mean: float = Field(
        0.0, description="[soft_bounds_reference] mean of the reference subtracted from u"
    )
    reference_std: float = Field(
        0.0, ge=0, description="[soft_bounds_reference] device-to-device spread of the reference"
    )
    subtract_symmetry_point: bool = Field(
        True,
        description="[soft_bounds_reference] add each device's symmetry point to its reference",
    )

    needs_bounds: ClassVar[bool] = True  # its step depends on where w sits between them


Config = SoftBoundsReferenceConfig


def draw(cfg: SoftBoundsReferenceConfig, shape: tuple[int, int], gen: torch.Generator):
    """The base draw (the device's own bounds ``b_max``, ``b_min`` in ``u``), then the reference;
    the weight's bounds are ``b - ref``."""
    base = draw_pulsed(cfg, shape, gen)
    b_max, b_min = base.w_max, base.w_min
    ref = cfg.reference_mean + cfg.reference_std * normal(shape, gen)
    if cfg.subtract_symmetry_point:
        u_sym = (base.dw_up - base.dw_down) / (base.dw_up / b_max - base.dw_down / b_min)
        ref = ref + torch.where(torch.isfinite(u_sym), u_sym, 0.0)
    ref = torch.minimum(torch.maximum(ref, 0.99 * b_min), 0.99 * b_max)
    base.w_max, base.w_min = b_max - ref, b_min - ref
    params = [base.dw_up, base.dw_down, ref, 1.0 / b_max, 1.0 / b_min]
    return arrays(KIND, params, base, consts(cfg))


def consts(cfg: SoftBoundsReferenceConfig) -> tuple[float, ...]:
    return (cfg.dw_min_std, 1.0 if cfg.mult_noise else 0.0)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip); ``p``, ``c``: ``PARAMS``, ``CONSTS``."""
    u = w + p[2]  # what the device holds
    shape = ops.where(up, 1.0 - u * p[3], 1.0 - u * p[4])
    signed = ops.where(up, p[0], -p[1])
    noise = c[0] * z * (c[1] * shape + (1.0 - c[1]))
    return w + signed * (shape + noise)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    """Where the steps in ``u`` are equal, as a weight (``u* - ref``; 0 for a device whose
    symmetry point was subtracted); NaN where it lies outside the bounds."""
    p = dev.params.double()
    den = p[0] * p[3] - p[1] * p[4]
    w_sym = (p[0] - p[1]) / den - p[2]
    inside = (den != 0) & (w_sym >= dev.w_min.double()) & (w_sym <= dev.w_max.double())
    return torch.where(inside, w_sym, float("nan"))
