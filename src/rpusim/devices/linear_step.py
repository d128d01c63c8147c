"""Linear-step device: the step shrinks (or grows) linearly with the weight.

The ECRAM and capacitor fits of the reference simulator (IBM aihwkit's ``LinearStepDevice``)::

    up:   w <- w + dw_up_ij   * (1 - gamma_up_ij   * w / w_ref_up)   * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * (1 - gamma_down_ij * w / w_ref_down) * (1 + dw_min_std * xi)

then clipped to ``[w_min_ij, w_max_ij]``. ``w_ref_up`` / ``w_ref_down`` are the mean bounds
(``mean_bound_reference``) or each device's own; ``gamma_*_ij = gamma_* + gamma_*_dtod * xi``
(absolute device-to-device spread, reflected to ``|.|`` unless ``allow_increasing``). With
``mult_noise: false`` the cycle-to-cycle noise is additive: ``dw * (1 - gamma w / w_ref +
dw_min_std * xi)``. ``gamma = 1`` with each device's own bounds is the soft-bounds device
(:mod:`rpusim.devices.soft_bounds`).

The step depends on ``w``, so the ``n`` coincidences of a pair are applied one at a time.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from rpusim.devices import ops
from rpusim.devices.base import DeviceArrays, PulsedDeviceConfig, arrays, draw_pulsed, normal

KIND = "linear_step"
PARAMS = ("dw_up", "dw_down", "slope_up", "slope_down")
CONSTS = ("dw_min_std", "mult_noise")
FOLDS = False


class LinearStepConfig(PulsedDeviceConfig):
    """A device whose step changes linearly with its weight."""

    kind: Literal["linear_step"] = Field("linear_step", description="the device model")
    gamma_up: float = Field(
        0.0, description="[linear_step] relative decrease of the up step from w = 0 to w_max"
    )
    gamma_down: float = Field(
        0.0, description="[linear_step] relative decrease of the down step from w = 0 to w_min"
    )
    gamma_up_dtod: float = Field(
        0.05, ge=0, description="[linear_step] device-to-device spread of gamma_up (absolute)"
    )
    gamma_down_dtod: float = Field(
        0.05, ge=0, description="[linear_step] device-to-device spread of gamma_down (absolute)"
    )
    allow_increasing: bool = Field(
        False, description="[linear_step] let a drawn gamma be negative (a step that grows)"
    )
    mean_bound_reference: bool = Field(
        True, description="[linear_step] gamma relative to the mean bounds (not each device's)"
    )
    mult_noise: bool = Field(
        True, description="[linear_step, soft_bounds] c2c noise scales the step (else additive)"
    )

    needs_bounds: ClassVar[bool] = True  # its step depends on where w sits between them


Config = LinearStepConfig


def draw_slopes(
    cfg: PulsedDeviceConfig,
    shape: tuple[int, int],
    gen: torch.Generator,
    gamma: tuple[float, float],
    gamma_dtod: tuple[float, float],
    allow_increasing: bool,
    mean_bound_reference: bool,
) -> DeviceArrays:
    """The base draw, then each device's slopes ``gamma / w_ref`` (up, then down)."""
    base = draw_pulsed(cfg, shape, gen)
    slopes = []
    for g, g_dtod, mean_ref, own_ref in (
        (gamma[0], gamma_dtod[0], cfg.w_max, base.w_max),
        (gamma[1], gamma_dtod[1], cfg.w_min, base.w_min),
    ):
        g_ij = g + g_dtod * normal(shape, gen)
        if not allow_increasing:
            g_ij = g_ij.abs()
        ref = torch.full(shape, mean_ref, dtype=torch.float64) if mean_bound_reference else own_ref
        slopes.append(torch.where(ref != 0, g_ij / ref, 0.0))
    return arrays(cfg.kind, [base.dw_up, base.dw_down, *slopes], base, consts(cfg))


def draw(cfg: LinearStepConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """Base draw, then ``gamma_up_ij``, ``gamma_down_ij``."""
    return draw_slopes(
        cfg,
        shape,
        gen,
        (cfg.gamma_up, cfg.gamma_down),
        (cfg.gamma_up_dtod, cfg.gamma_down_dtod),
        cfg.allow_increasing,
        cfg.mean_bound_reference,
    )


def consts(cfg: LinearStepConfig) -> tuple[float, ...]:
    return (cfg.dw_min_std, 1.0 if cfg.mult_noise else 0.0)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip).

    ``p = (dw_up, dw_down, slope_up, slope_down)`` with ``slope = gamma / w_ref``; ``c =
    (dw_min_std, mult_noise)``; ``z`` a fresh standard normal.
    """
    shape = ops.where(up, 1.0 - p[2] * w, 1.0 - p[3] * w)  # the step's w-dependence
    signed = ops.where(up, p[0], -p[1])
    # Multiplicative noise: signed * shape * (1 + std z); additive: signed * (shape + std z).
    noise = c[0] * z * (c[1] * shape + (1.0 - c[1]))
    return w + signed * (shape + noise)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    """``dw_up (1 - s_up w) = dw_down (1 - s_down w)``: ``w* = (dw_up - dw_down) / (dw_up s_up -
    dw_down s_down)``; NaN where the two steps never meet inside the bounds."""
    p = dev.params.double()
    den = p[0] * p[2] - p[1] * p[3]
    w_sym = (p[0] - p[1]) / den
    inside = (den != 0) & (w_sym >= dev.w_min.double()) & (w_sym <= dev.w_max.double())
    return torch.where(inside, w_sym, float("nan"))
