"""Exponential-step device: the response fitted to measured ReRAM (Gong et al. 2018).

The reference simulator's ``ExpStepDevice``. With ``z = 2 a w / (w_max_ij - w_min_ij) + b``::

    up:   w <- w + dw_up_ij   * max(1 - A_up   * exp( gamma_up   * z), 0) * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * max(1 - A_down * exp(-gamma_down * z), 0) * (1 + dw_min_std * xi)

then clipped. ``A_*``, ``gamma_*``, ``a``, ``b`` are the model's (no device-to-device spread);
the defaults are the reference simulator's. Steps depend on ``w``: applied one at a time.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from rpusim.devices import ops
from rpusim.devices.base import (
    DeviceArrays,
    PulsedDeviceConfig,
    arrays,
    draw_pulsed,
    symmetry_point_by_bisection,
)

KIND = "exp_step"
PARAMS = ("dw_up", "dw_down", "inv_range")
CONSTS = ("dw_min_std", "A_up", "A_down", "gamma_up", "gamma_down", "a", "b")
FOLDS = False


class ExpStepConfig(PulsedDeviceConfig):
    """A device whose step changes exponentially across its range."""

    kind: Literal["exp_step"] = Field("exp_step", description="the device model")
    A_up: float = Field(0.00081, description="[exp_step] amplitude of the up step's decrease")
    A_down: float = Field(0.36833, description="[exp_step] amplitude of the down step's decrease")
    gamma_up: float = Field(12.44625, description="[exp_step] exponent of the up step's decrease")
    gamma_down: float = Field(
        12.78785, description="[exp_step] exponent of the down step's decrease"
    )
    a: float = Field(0.244, description="[exp_step] slope of z in w / (w_max - w_min)")
    b: float = Field(0.2425, description="[exp_step] offset of z")

    needs_bounds: ClassVar[bool] = True  # its step depends on where w sits between them


Config = ExpStepConfig


def draw(cfg: ExpStepConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """The base draw; ``1 / (w_max_ij - w_min_ij)`` per device."""
    base = draw_pulsed(cfg, shape, gen)
    inv_range = 1.0 / (base.w_max - base.w_min)
    return arrays(KIND, [base.dw_up, base.dw_down, inv_range], base, consts(cfg))


def consts(cfg: ExpStepConfig) -> tuple[float, ...]:
    return (cfg.dw_min_std, cfg.A_up, cfg.A_down, cfg.gamma_up, cfg.gamma_down, cfg.a, cfg.b)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip); ``p``, ``c``: ``PARAMS``, ``CONSTS``."""
    zz = 2.0 * c[5] * w * p[2] + c[6]
    decrease = ops.where(up, c[1], c[2]) * ops.exp(ops.where(up, c[3] * zz, -c[4] * zz))
    shape = ops.maximum(1.0 - decrease, 0.0)
    return w + ops.where(up, p[0], -p[1]) * shape * (1.0 + c[0] * z)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    return symmetry_point_by_bisection(dev)
