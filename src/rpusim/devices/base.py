"""What every pulsed device model shares: its base parameters, their device-to-device draw, and
:class:`DeviceArrays`, the per-device values a tile holds.

The base parameters are those of the pulsed devices of the RPU papers and of the reference
simulator (IBM aihwkit's ``PulsedDevice``): a mean step ``dw_min`` with a device-to-device gain,
an up/down asymmetry, cycle-to-cycle noise, and bounds that vary from device to device. A model
(one module of this package) adds its own parameters and its response to one coincidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from rpusim.schema import Section


class PulsedDeviceConfig(Section):
    """Parameters every pulsed device model has (``docs/model.md`` section 4)."""

    preset: str | None = Field(
        None, description="the published device fit these values started from (null: none)"
    )
    dw_min: float = Field(0.001, gt=0, description="mean weight step per coincidence")
    dw_min_dtod: float = Field(0.3, ge=0, description="device-to-device spread of the step")
    dw_min_std: float = Field(0.3, ge=0, description="cycle-to-cycle spread of each step")
    up_down: float = Field(0.0, gt=-1, lt=1, description="mean up/down asymmetry (fraction)")
    up_down_dtod: float = Field(0.01, ge=0, description="device-to-device spread of asymmetry")
    w_max: float | None = Field(0.6, gt=0, description="upper weight bound (null: unbounded)")
    w_min: float | None = Field(-0.6, lt=0, description="lower weight bound (null: unbounded)")
    w_max_dtod: float = Field(0.3, ge=0, description="device-to-device spread of w_max")
    w_min_dtod: float = Field(0.3, ge=0, description="device-to-device spread of w_min")

    #: A model whose step depends on where ``w`` sits in its range refuses unbounded devices.
    needs_bounds: ClassVar[bool] = False

    @model_validator(mode="after")
    def _bounds_ordered(self) -> PulsedDeviceConfig:
        if self.w_max is not None and self.w_min is not None and self.w_min >= self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must be below w_max ({self.w_max})")
        if self.needs_bounds and (self.w_max is None or self.w_min is None):
            raise ValueError(f"a {self.kind} device needs finite bounds (w_max and w_min)")
        return self


@dataclass
class PulsedDraw:
    """The base parameters of each device, float64 ``(out, in)`` tensors."""

    dw_up: torch.Tensor
    dw_down: torch.Tensor
    w_max: torch.Tensor
    w_min: torch.Tensor


def normal(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Standard normals, float64 ``shape``, from the tile's device-to-device generator."""
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def draw_pulsed(
    cfg: PulsedDeviceConfig, shape: tuple[int, int], generator: torch.Generator
) -> PulsedDraw:
    """Draw the base parameters of ``shape`` devices (in this order: gain, asymmetry, bounds).

    With ``g = 1 + dw_min_dtod * xi`` and ``r = up_down_dtod * xi'`` (``xi, xi' ~ N(0, 1)``)::

        dw_up   = dw_min * (g + r + min(up_down, 0))
        dw_down = dw_min * (g - r - max(up_down, 0))

    so ``up_down > 0`` makes every down step smaller than the up step by ``up_down * dw_min``.
    A drawn step below zero is floored at zero [choice]: that device is stuck in that direction.
    Bounds: ``w_max_ij = |w_max * (1 + w_max_dtod * xi)|`` and ``w_min_ij = -|w_min * (1 +
    w_min_dtod * xi)|``: a draw that crosses zero is reflected (as the reference simulator does),
    so that ``w_min_ij < 0 < w_max_ij`` for every device (a bound of exactly 0 would leave a
    device that cannot move to one side).
    """
    gain = 1.0 + cfg.dw_min_dtod * normal(shape, generator)
    r = cfg.up_down_dtod * normal(shape, generator)
    beta = cfg.up_down
    dw_up = (cfg.dw_min * (gain + r + min(beta, 0.0))).clamp_min(0.0)
    dw_down = (cfg.dw_min * (gain - r - max(beta, 0.0))).clamp_min(0.0)

    # Draw the bound spreads even when unbounded, so that the step draws of one seed do not
    # depend on whether the bounds are finite.
    xi_max, xi_min = normal(shape, generator), normal(shape, generator)
    if cfg.w_max is None:
        w_max = torch.full(shape, float("inf"), dtype=torch.float64)
    else:
        w_max = (cfg.w_max * (1.0 + cfg.w_max_dtod * xi_max)).abs()
    if cfg.w_min is None:
        w_min = torch.full(shape, float("-inf"), dtype=torch.float64)
    else:
        w_min = -(cfg.w_min * (1.0 + cfg.w_min_dtod * xi_min)).abs()
    return PulsedDraw(dw_up, dw_down, w_max, w_min)


@dataclass
class DeviceArrays:
    """The devices of one tile: per-device parameters and the model's constants.

    ``kind``: the model (a key of :data:`rpusim.devices.MODELS`). ``params``: float32
    ``(P, out, in)``, the model's per-device parameters in the order of its ``PARAMS`` (every
    model starts with ``dw_up``, ``dw_down``: the weight change of one up / down coincidence at
    ``w = 0``). ``w_max`` / ``w_min``: float32 ``(out, in)``, each device's own bounds (``+inf`` /
    ``-inf`` when unbounded). ``consts``: the model's constants in the order of its ``CONSTS``
    (every model starts with ``dw_min_std``, the cycle-to-cycle spread).
    """

    kind: str
    params: torch.Tensor
    w_max: torch.Tensor
    w_min: torch.Tensor
    consts: tuple[float, ...] = field(default=())

    @property
    def model(self):
        """The model's module (its ``step``, ``PARAMS``, ``CONSTS``, ...)."""
        from rpusim.devices import MODELS

        return MODELS[self.kind]

    @property
    def dw_up(self) -> torch.Tensor:
        return self.params[0]

    @property
    def dw_down(self) -> torch.Tensor:
        return self.params[1]

    @property
    def dw_min_std(self) -> float:
        return self.consts[0]

    def numpy_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(params, consts, w_min, w_max)`` as the compiled kernels take them: numpy views of
        the (CPU) tensors, a contiguous copy of one that is not, and ``consts`` as float64."""
        return (
            self.params.detach().contiguous().numpy(),
            np.asarray(self.consts, np.float64),
            self.w_min.detach().contiguous().numpy(),
            self.w_max.detach().contiguous().numpy(),
        )

    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the per-device arrays by name (what a checkpoint stores)."""
        out = {name: self.params[q].clone() for q, name in enumerate(self.model.PARAMS)}
        out["w_max"], out["w_min"] = self.w_max.clone(), self.w_min.clone()
        return out

    def as_dict(self) -> dict[str, torch.Tensor]:
        """:meth:`state` plus ``w_sym``, the symmetry point of each device (the weight at which
        an up and a down step are equal in expectation; NaN where there is none)."""
        out = self.state()
        out["w_sym"] = self.model.symmetry_point(self).to(torch.float32)
        return out

    @classmethod
    def from_state(cls, kind: str, state: dict[str, torch.Tensor], consts: tuple) -> DeviceArrays:
        """The inverse of :meth:`state`, with the model's constants from its config."""
        from rpusim.devices import MODELS

        names = MODELS[kind].PARAMS
        params = torch.stack([state[name].to(torch.float32) for name in names])
        return cls(kind, params, state["w_max"], state["w_min"], tuple(consts))

    def to(self, device: torch.device | str) -> DeviceArrays:
        return DeviceArrays(
            self.kind,
            self.params.to(device),
            self.w_max.to(device),
            self.w_min.to(device),
            self.consts,
        )


def arrays(kind: str, params: list[torch.Tensor], base: PulsedDraw, consts) -> DeviceArrays:
    """Pack float64 draws into float32 :class:`DeviceArrays`."""
    f32 = torch.float32
    stacked = torch.stack([p.to(f32) for p in params]).contiguous()
    return DeviceArrays(kind, stacked, base.w_max.to(f32), base.w_min.to(f32), tuple(consts))


def expected_steps(dev: DeviceArrays, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean up and down step (both >= 0 for a sane device) of every device at weights ``w``
    (float64 ``(out, in)``): the model's response with the noise at zero, in float64."""
    from rpusim.devices.ops import TORCH, bind

    step = bind(dev.model.step, TORCH)
    p = dev.params.double()
    c = torch.tensor(dev.consts, dtype=torch.float64, device=w.device)
    hi, lo = dev.w_max.double(), dev.w_min.double()
    zero = torch.zeros_like(w)
    up = step(w, torch.ones_like(w, dtype=torch.bool), hi, lo, p, c, zero) - w
    down = w - step(w, torch.zeros_like(w, dtype=torch.bool), hi, lo, p, c, zero)
    return up, down


def symmetry_point_by_bisection(dev: DeviceArrays, iterations: int = 60) -> torch.Tensor:
    """The weight where the mean up and down steps are equal, found by bisection over each
    device's range (float64 ``(out, in)``); NaN where they do not cross inside the bounds."""
    lo, hi = dev.w_min.double().clone(), dev.w_max.double().clone()

    def gap(w: torch.Tensor) -> torch.Tensor:
        up, down = expected_steps(dev, w)
        return up - down

    g_lo, g_hi = gap(lo), gap(hi)
    crosses = (g_lo >= 0) & (g_hi <= 0) & torch.isfinite(lo) & torch.isfinite(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = gap(mid) > 0  # up still larger: the crossing lies higher
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return torch.where(crosses, 0.5 * (lo + hi), float("nan"))
