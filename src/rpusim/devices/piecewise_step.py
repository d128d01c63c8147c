"""Piecewise-step device: the response as measured, given as nodes and linearly interpolated.

The device a researcher measures: ``piecewise_up`` / ``piecewise_down`` are the up and down step
sizes (relative to ``dw_min``) at ``N`` equally spaced points of each device's own range
``[w_min_ij, w_max_ij]``. With ``s = (N - 1) (w - w_min_ij) / (w_max_ij - w_min_ij)`` (at least
0), ``k = min(floor(s), N - 2)`` and ``t = min(s - k, 1)``::

    up:   w <- w + dw_up_ij   * ((1 - t) up[k]   + t up[k + 1])   * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * ((1 - t) down[k] + t down[k + 1]) * (1 + dw_min_std * xi)

as the reference simulator's ``PiecewiseStepDevice``. ``rpusim device fit`` makes the nodes from
a measured pulse-response table.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from rpusim.devices import ops
from rpusim.devices.base import (
    DeviceArrays,
    PulsedDeviceConfig,
    arrays,
    draw_pulsed,
    symmetry_point_by_bisection,
)

KIND = "piecewise_step"
PARAMS = ("dw_up", "dw_down", "inv_range")
#: Then ``N``, the ``N`` up nodes and the ``N`` down nodes.
CONSTS = ("dw_min_std", "n_nodes")
FOLDS = False
#: Most nodes per direction.
MAX_NODES = 64


class PiecewiseStepConfig(PulsedDeviceConfig):
    """A device whose step is interpolated between measured nodes."""

    kind: Literal["piecewise_step"] = Field("piecewise_step", description="the device model")
    needs_bounds: ClassVar[bool] = True  # its nodes are spread over the range
    piecewise_up: list[float] = Field(
        [1.0], description="[piecewise_step] up step / dw_min at equally spaced points of the range"
    )
    piecewise_down: list[float] = Field(
        [1.0], description="[piecewise_step] down step / dw_min at the same points"
    )

    @model_validator(mode="after")
    def _nodes(self) -> PiecewiseStepConfig:
        up, down = self.piecewise_up, self.piecewise_down
        if len(up) != len(down) or not 1 <= len(up) <= MAX_NODES:
            raise ValueError(
                f"piecewise_up and piecewise_down need the same number of nodes, 1 to "
                f"{MAX_NODES} (got {len(up)} and {len(down)})"
            )
        if any(not math.isfinite(v) or v < 0 for v in up + down):
            raise ValueError("piecewise nodes are step sizes: finite and >= 0")
        return self


Config = PiecewiseStepConfig


def draw(cfg: PiecewiseStepConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """The base draw; ``1 / (w_max_ij - w_min_ij)`` per device."""
    base = draw_pulsed(cfg, shape, gen)
    inv_range = 1.0 / (base.w_max - base.w_min)
    return arrays(KIND, [base.dw_up, base.dw_down, inv_range], base, consts(cfg))


def consts(cfg: PiecewiseStepConfig) -> tuple[float, ...]:
    """``(dw_min_std, N, up..., down...)``; one node stands for a constant step (two equal)."""
    up, down = list(cfg.piecewise_up), list(cfg.piecewise_down)
    if len(up) == 1:
        up, down = up * 2, down * 2
    return (cfg.dw_min_std, float(len(up)), *up, *down)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip); ``p``, ``c``: ``PARAMS``, ``CONSTS``."""
    n = c[1]
    s = ops.maximum((w - w_min) * p[2] * (n - 1.0), 0.0)
    k = ops.minimum(ops.floor(s), n - 2.0)
    t = ops.minimum(s - k, 1.0)
    first = ops.where(up, 2.0, 2.0 + n) + k  # index of node k of this direction in c
    shape = (1.0 - t) * ops.take(c, first) + t * ops.take(c, first + 1.0)
    return w + ops.where(up, p[0], -p[1]) * shape * (1.0 + c[0] * z)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    return symmetry_point_by_bisection(dev)
