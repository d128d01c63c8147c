"""Device models: per-device parameters drawn once (device-to-device variation, "d2d").

A device model turns a :class:`~rpusim.config.DeviceConfig` into :class:`DeviceArrays`: one value
per cross-point for each parameter the pulsed update needs. The update itself (what happens on
``n`` coincidences) lives in ``pulses.py`` and its compiled twins, so that a device model stays a
few lines of physics a reader can check against ``docs/model.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpusim.config import DeviceConfig


@dataclass
class DeviceArrays:
    """Per-device parameters of a tile, each an ``(out, in)`` float32 tensor.

    ``dw_up`` / ``dw_down``: the (positive) weight change of one up / down coincidence.
    ``w_max`` / ``w_min``: each device's own bounds (``+inf`` / ``-inf`` when unbounded).
    ``dw_min_std``: cycle-to-cycle spread, relative to the step (a scalar, shared by all devices).
    """

    dw_up: torch.Tensor
    dw_down: torch.Tensor
    w_max: torch.Tensor
    w_min: torch.Tensor
    dw_min_std: float

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            "dw_up": self.dw_up.clone(),
            "dw_down": self.dw_down.clone(),
            "w_max": self.w_max.clone(),
            "w_min": self.w_min.clone(),
        }

    def to(self, device: torch.device | str) -> DeviceArrays:
        return DeviceArrays(
            self.dw_up.to(device),
            self.dw_down.to(device),
            self.w_max.to(device),
            self.w_min.to(device),
            self.dw_min_std,
        )


def constant_step(
    cfg: DeviceConfig, out_size: int, in_size: int, generator: torch.Generator
) -> DeviceArrays:
    """Draw a constant-step device for each of the ``out_size x in_size`` cross-points.

    With ``g = 1 + dw_min_dtod * xi`` and ``r = up_down_dtod * xi'`` (``xi, xi' ~ N(0, 1)``)::

        dw_up   = dw_min * (g + r + min(up_down, 0))
        dw_down = dw_min * (g - r - max(up_down, 0))

    so ``up_down > 0`` makes every down step smaller than the up step by ``up_down * dw_min``.
    A drawn step below zero is floored at zero [choice]: that device is stuck in that direction.
    Bounds: ``w_max_ij = w_max * (1 + w_max_dtod * xi)``, floored at 0, and the same for ``w_min``
    (capped at 0), so that ``w_min_ij <= 0 <= w_max_ij`` always.
    """
    shape = (out_size, in_size)

    def normal() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    gain = 1.0 + cfg.dw_min_dtod * normal()
    r = cfg.up_down_dtod * normal()
    beta = cfg.up_down
    dw_up = (cfg.dw_min * (gain + r + min(beta, 0.0))).clamp_min(0.0)
    dw_down = (cfg.dw_min * (gain - r - max(beta, 0.0))).clamp_min(0.0)

    # Draw the bound spreads even when unbounded, so that the step draws of one seed do not
    # depend on whether the bounds are finite.
    xi_max, xi_min = normal(), normal()
    if cfg.w_max is None:
        w_max = torch.full(shape, float("inf"), dtype=torch.float64)
    else:
        w_max = (cfg.w_max * (1.0 + cfg.w_max_dtod * xi_max)).clamp_min(0.0)
    if cfg.w_min is None:
        w_min = torch.full(shape, float("-inf"), dtype=torch.float64)
    else:
        w_min = (cfg.w_min * (1.0 + cfg.w_min_dtod * xi_min)).clamp_max(0.0)

    f32 = torch.float32
    return DeviceArrays(
        dw_up.to(f32), dw_down.to(f32), w_max.to(f32), w_min.to(f32), cfg.dw_min_std
    )


#: Device models by ``device.kind``. A new model is a function with the signature of
#: :func:`constant_step` registered here (and, if its response to a coincidence differs, a branch
#: in ``pulses.py``).
DEVICE_MODELS = {"constant_step": constant_step}


def sample_devices(
    cfg: DeviceConfig, out_size: int, in_size: int, generator: torch.Generator
) -> DeviceArrays:
    """Draw the per-device parameters of the model named by ``cfg.kind``."""
    return DEVICE_MODELS[cfg.kind](cfg, out_size, in_size, generator)
