"""Constant-step device: every coincidence moves the weight by the device's own fixed step.

The "RPU baseline" of Gokmen & Vlasov (2016) and of the LSTM paper (Gokmen, Rasch & Haensch
2018)::

    up:   w <- w + dw_up_ij   * (1 + dw_min_std * xi)
    down: w <- w - dw_down_ij * (1 + dw_min_std * xi)

then clipped to ``[w_min_ij, w_max_ij]``; ``xi ~ N(0, 1)`` fresh for each coincidence. Because the
step does not depend on ``w``, the ``n`` coincidences of one pair fold into one step (``FOLDS``):
``n`` steps of one sign, summed, are ``dw (n + dw_min_std sqrt(n) z)`` with one ``z ~ N(0, 1)``,
and clipping once at the end gives the weight that clipping after each step gives (exact in
distribution while no single noisy step changes sign, ``dw_min_std * xi < -1``: probability 4e-4
at ``dw_min_std = 0.3``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rpusim.devices import ops
from rpusim.devices.base import DeviceArrays, PulsedDeviceConfig, arrays, draw_pulsed

KIND = "constant_step"
#: Per-device parameters (``DeviceArrays.params``) and the model's constants, in order.
PARAMS = ("dw_up", "dw_down")
CONSTS = ("dw_min_std",)
#: The ``n`` coincidences of one pair are applied as one step (:func:`step_n`).
FOLDS = True


class ConstantStepConfig(PulsedDeviceConfig):
    """A device whose step does not depend on its weight (the paper's device)."""

    kind: Literal["constant_step"] = Field("constant_step", description="the device model")


Config = ConstantStepConfig


def draw(cfg: ConstantStepConfig, shape: tuple[int, int], gen: torch.Generator) -> DeviceArrays:
    """The devices of a tile: the base draw (:func:`~rpusim.devices.base.draw_pulsed`) only."""
    base = draw_pulsed(cfg, shape, gen)
    return arrays(KIND, [base.dw_up, base.dw_down], base, consts(cfg))


def consts(cfg: ConstantStepConfig) -> tuple[float, ...]:
    return (cfg.dw_min_std,)


def step(w, up, w_max, w_min, p, c, z):
    """The weight after one coincidence (before the clip): ``w +- dw (1 + dw_min_std z)``.

    ``up``: potentiation; ``p``: this device's ``PARAMS``; ``c``: ``CONSTS``; ``z``: a fresh
    standard normal. (What :func:`step_n` folds; the one-by-one reference applies this.)
    """
    return w + ops.where(up, p[0], -p[1]) * (1.0 + c[0] * z)


def step_n(w, up, dw_up, dw_down, n, std_sqrt_n, z):
    """The weight after ``n`` coincidences of one sign, folded (float32, before the clip).

    ``std_sqrt_n``: ``dw_min_std * sqrt(n)``, so that ``std_sqrt_n * z`` is the sum of the
    ``n`` cycle-to-cycle noises. The float32 operations, in this order, are what every twin
    computes: ``(std sqrt(n)) * z``, ``n + .``, ``dw * .``, ``w + s * .``.
    """
    e = n + std_sqrt_n * z
    return w + ops.where(up, ops.ONE, -ops.ONE) * (ops.where(up, dw_up, dw_down) * e)


def symmetry_point(dev: DeviceArrays) -> torch.Tensor:
    """None exists (the steps do not depend on ``w``): NaN for every device."""
    return torch.full_like(dev.w_max, float("nan"))
