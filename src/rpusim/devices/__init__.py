"""Device models: the devices researchers bring, each written once.

A device model is one module of this package with:

* ``Config``: its config section (a pydantic model with ``kind: Literal[KIND]``, defaults and a
  one-line description per field), derived from :class:`~rpusim.devices.base.PulsedDeviceConfig`;
* ``draw(cfg, shape, generator)``: the device-to-device draw, giving :class:`DeviceArrays`;
* ``PARAMS`` / ``CONSTS``: the names of its per-device parameters and of its constants;
* ``step(w, up, w_max, w_min, p, c, z)``: its response, the weight after one coincidence
  (before the clip to the device's bounds), written once in plain Python over ``+ - * /`` and
  :mod:`~rpusim.devices.ops`; the torch reference applies it to tensors, the numba update
  kernel compiles it for scalars;
* ``FOLDS``: whether ``n`` coincidences of one pair fold into one step (then ``step_n``);
* ``symmetry_point(dev)``: where an up and a down step are equal.

Adding a device is one new module and one line in :data:`REGISTRY`; the update's reference and
kernels loop over coincidences and call the model.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Annotated, Any, Union

import torch
from pydantic import Discriminator, Tag

from rpusim.devices.base import DeviceArrays, PulsedDeviceConfig

#: The device models: one line per module of this package (the first is the default).
REGISTRY = (
    "constant_step",
    "linear_step",
    "soft_bounds",
    "exp_step",
    "pow_step",
    "piecewise_step",
    "soft_bounds_reference",
)

#: Device models by ``device.kind``.
MODELS: dict[str, ModuleType] = {
    m.KIND: m for m in (import_module(f"rpusim.devices.{name}") for name in REGISTRY)
}
constant_step = MODELS["constant_step"]


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", constant_step.KIND)
    return getattr(value, "kind", constant_step.KIND)


#: The config of any device model, told apart by ``kind`` (default ``constant_step``): the union of
#: every registered model's ``Config``, built from :data:`MODELS`.
AnyDeviceConfig = Annotated[
    Union[tuple(Annotated[m.Config, Tag(kind)] for kind, m in MODELS.items())],  # noqa: UP007
    Discriminator(_kind_of),
]


def sample_devices(
    cfg: PulsedDeviceConfig, out_size: int, in_size: int, generator: torch.Generator
) -> DeviceArrays:
    """Draw the per-device parameters of the model named by ``cfg.kind``."""
    return MODELS[cfg.kind].draw(cfg, (out_size, in_size), generator)


def consts(cfg: PulsedDeviceConfig) -> tuple[float, ...]:
    """The model's constants for ``cfg`` (what a checkpoint does not store)."""
    return MODELS[cfg.kind].consts(cfg)


__all__ = [
    "MODELS",
    "AnyDeviceConfig",
    "DeviceArrays",
    "PulsedDeviceConfig",
    "consts",
    "sample_devices",
]
