"""Soft-bounds device: the step falls linearly to zero at each device's own bound.

The linear-step response (:mod:`rpusim.devices.linear_step`) with ``gamma = 1`` relative to the
device's own bounds, no spread of ``gamma``::

    up:   w <- w + dw_up_ij   * (1 - w / w_max_ij) * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * (1 - w / w_min_ij) * (1 + dw_min_std * xi)

Its symmetry point, where an up and a down step are equal, is
``w* = (dw_up - dw_down) / (dw_up / w_max - dw_down / w_min)``: balanced up and down pulses
drive every device there (the ReRAM behaviour the Tiki-Taka algorithms rely on).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from rpusim.devices import linear_step
from rpusim.devices.base import DeviceArrays, PulsedDeviceConfig

KIND = "soft_bounds"
PARAMS = linear_step.PARAMS
CONSTS = linear_step.CONSTS
FOLDS = False


class SoftBoundsConfig(PulsedDeviceConfig):
    """A device whose step shrinks to zero at its own bounds."""

    kind: Literal["soft_bounds"] = Field("soft_bounds", description="the device model")
    mult_noise: bool = Field(
        True, description="[linear_step, soft_bounds] c2c noise scales the step (else additive)"
    )

    needs_bounds: ClassVar[bool] = True  # its step depends on where w sits between them


Config = SoftBoundsConfig


def draw(cfg: SoftBoundsConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """The base draw; slopes ``1 / w_max_ij`` and ``1 / w_min_ij``."""
    return linear_step.draw_slopes(cfg, shape, gen, (1.0, 1.0), (0.0, 0.0), False, False)


consts = linear_step.consts
#: The response is the linear step's, written once there.
step = linear_step.step
symmetry_point = linear_step.symmetry_point
