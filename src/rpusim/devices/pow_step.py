"""Power-step device: the step scales as a power of the distance to the bound it approaches.

The reference simulator's ``PowStepDevice`` (after Fusi & Abbott 2007; Frascaroli et al. 2018).
With ``R = w_max_ij - w_min_ij``::

    up:   w <- w + dw_up_ij   * ((w_max_ij - w) / R) ** gamma_up_ij   * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * ((w - w_min_ij) / R) ** gamma_down_ij * (1 + dw_min_std * xi)

The exponents vary from device to device: ``g = 1 + pow_gamma_dtod * xi``, ``r =
pow_up_down_dtod * xi'``, ``gamma_up_ij = |pow_gamma (g + r + min(pow_up_down, 0))|``,
``gamma_down_ij = |pow_gamma (g - r - max(pow_up_down, 0))|`` (the convention of ``up_down``).
``pow_gamma = 1`` is a soft-bounds device over the full range.
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
    normal,
    symmetry_point_by_bisection,
)

KIND = "pow_step"
PARAMS = ("dw_up", "dw_down", "gamma_up", "gamma_down", "inv_range")
CONSTS = ("dw_min_std",)
FOLDS = False


class PowStepConfig(PulsedDeviceConfig):
    """A device whose step is a power of the distance to its bound."""

    kind: Literal["pow_step"] = Field("pow_step", description="the device model")
    pow_gamma: float = Field(1.0, ge=0, description="[pow_step] exponent of the step")
    pow_gamma_dtod: float = Field(
        0.1, ge=0, description="[pow_step] device-to-device spread of the exponent (relative)"
    )
    pow_up_down: float = Field(
        0.0, gt=-1, lt=1, description="[pow_step] up/down asymmetry of the exponent"
    )
    pow_up_down_dtod: float = Field(
        0.0, ge=0, description="[pow_step] device-to-device spread of that asymmetry"
    )

    needs_bounds: ClassVar[bool] = True  # its step depends on where w sits between them


Config = PowStepConfig


def draw(cfg: PowStepConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """The base draw, then each device's two exponents."""
    base = draw_pulsed(cfg, shape, gen)
    g = 1.0 + cfg.pow_gamma_dtod * normal(shape, gen)
    r = cfg.pow_up_down_dtod * normal(shape, gen)
    beta = cfg.pow_up_down
    gamma_up = (cfg.pow_gamma * (g + r + min(beta, 0.0))).abs()
    gamma_down = (cfg.pow_gamma * (g - r - max(beta, 0.0))).abs()
    inv_range = 1.0 / (base.w_max - base.w_min)
    params = [base.dw_up, base.dw_down, gamma_up, gamma_down, inv_range]
    return arrays(KIND, params, base, consts(cfg))


def consts(cfg: PowStepConfig) -> tuple[float, ...]:
    return (cfg.dw_min_std,)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip); ``p``, ``c``: ``PARAMS``, ``CONSTS``."""
    distance = ops.where(up, w_max - w, w - w_min) * p[4]
    shape = ops.pow(distance, ops.where(up, p[2], p[3]))
    return w + ops.where(up, p[0], -p[1]) * shape * (1.0 + c[0] * z)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    return symmetry_point_by_bisection(dev)
