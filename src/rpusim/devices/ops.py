"""The few operations a device response needs besides arithmetic, in each dialect.

A device's response (``step`` in each model's module) is written once, as plain Python over
``+ - * /`` and the names below (``ops.where``, ``ops.exp``, ...). :func:`bind` gives the same
function with ``ops`` bound to one dialect:

* :data:`TORCH`: element-wise on tensors (the torch reference applies the response to a whole
  tile at once);
* :data:`NUMBA`: on scalars, compiled by numba inside the update kernel's device loop;
* :func:`triton_dialect`: on blocks of devices inside the Triton update kernels (``p`` and ``c``
  are tuples there, of float64 blocks and scalars; ``take`` selects from a tuple).

``ops.ONE`` is the float32 one of the folded constant-step response (:func:`~rpusim.devices.
constant_step.step_n`), which stays in float32 as it always was.

All three evaluate the response in float64 and the caller rounds the new weight to float32
once, so they agree bit for bit as long as ``exp``/``pow`` agree in float64 (torch's, the C
library's, numpy's and CUDA's libdevice are within an ulp or two of each other in float64; such a
difference reaches the float32 result only if it straddles a float32 rounding boundary, about
one evaluation in 2**28).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import numpy as np
import torch
from numba import njit


def _namespace(name: str, **functions: Callable) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, fn in functions.items():
        setattr(module, key, fn)
    return module


def _take_torch(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return table[index.long()]


#: Element-wise on tensors (``where`` takes a boolean tensor).
TORCH = _namespace(
    "rpusim.devices.ops.torch",
    ONE=1.0,
    where=torch.where,
    exp=torch.exp,
    pow=torch.pow,
    floor=torch.floor,
    maximum=lambda a, b: torch.clamp(a, min=b),
    minimum=lambda a, b: torch.clamp(a, max=b),
    take=_take_torch,
)


@njit(cache=True, nogil=True)
def _where(cond, a, b):
    return a if cond else b


@njit(cache=True, nogil=True)
def _maximum(a, b):
    return a if a > b else b


@njit(cache=True, nogil=True)
def _minimum(a, b):
    return a if a < b else b


@njit(cache=True, nogil=True)
def _floor(a):
    return np.floor(a)


@njit(cache=True, nogil=True)
def _take(table, index):
    return table[int(index)]


#: On float64 scalars, compiled by numba.
NUMBA = _namespace(
    "rpusim.devices.ops.numba",
    ONE=np.float32(1.0),
    where=_where,
    exp=math.exp,
    pow=math.pow,
    floor=_floor,
    maximum=_maximum,
    minimum=_minimum,
    take=_take,
)


def triton_dialect() -> types.ModuleType:
    """On Triton tensors (blocks of devices), inside the Triton update kernel
    (:mod:`rpusim.devices.ops_triton`; imported on first use: only CUDA runs and the
    interpreter tests need Triton)."""
    from rpusim.devices import ops_triton

    return ops_triton


def bind(fn: Callable, dialect: types.ModuleType) -> Callable:
    """``fn`` with its global ``ops`` bound to ``dialect`` (same code, other namespace)."""
    scope = {**fn.__globals__, "ops": dialect}
    bound = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    bound.__qualname__ = f"{fn.__qualname__}[{dialect.__name__.rsplit('.', 1)[-1]}]"
    bound.__module__ = fn.__module__
    bound.__doc__ = fn.__doc__
    return bound
