"""The periphery of an analog read: noise/bound management, DAC, output noise, ADC.

One function, :func:`analog_mvm`, computes ``y = W x`` (forward) or ``z = W^T d`` (backward) the
way the array does it (``docs/model.md`` section 2):

1. noise management scales the input by ``alpha = max|x|`` (so the DAC range is used fully);
2. the input is clipped to ``inp_bound`` and quantized by the DAC (nearest or stochastic rounding);
3. the array multiplies and adds output noise ``out_noise * N(0, 1)`` per output per read;
4. the ADC clips to ``out_bound`` and quantizes;
5. bound management: rows whose output saturated are read again with the input halved.

Two implementations give the same bits for the same generator state:

* :func:`analog_mvm_reference`: plain torch, a line-by-line transcription of the list above; any
  device. Its float32 arithmetic is written so that a compiled twin can repeat it exactly (a
  converter multiplies by ``1/step`` rather than dividing by ``step``).
* :mod:`rpusim.periphery.numba`: the CPU twin. At batch 1 a read is a few hundred
  multiply-adds, so the reference's ~20 tiny torch calls cost far more than the arithmetic; the
  twin does each side of the array (input: steps 1-2; output: steps 3-5) in one compiled loop,
  and keeps the array multiply and the random draws as the very same torch calls.
* :mod:`rpusim.periphery.triton`: the GPU twin, the same split with Triton kernels.

:func:`analog_mvm` picks one (``backend``); with an ideal periphery (every setting off) both
reduce to one matrix product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rpusim.config import IOConfig
from rpusim.periphery.noise import output_noise
from rpusim.periphery.plan import converter_step
from rpusim.twins import triton_installed

BACKENDS = ("auto", "numba", "torch", "triton")


def quantize(
    v: torch.Tensor,
    bits: int | None,
    bound: float | None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip ``v`` to ``[-bound, bound]`` and round it onto ``2**bits - 1`` uniform levels.

    The step is ``2 * bound / (2**bits - 2)``, so 0 and both bounds are levels. With
    ``stochastic=True`` the value is rounded up with probability equal to the remainder
    (``step * floor(v / step + u)``, ``u ~ U[0, 1)``): unbiased in expectation.
    """
    if bound is not None:
        v = v.clamp(-bound, bound)
    if bits is None:
        return v
    step, per_step = converter_step(bits, bound)
    scaled = v * per_step  # v / step, as a product (a fixed float32 rounding the twins share)
    if stochastic:
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.floor(scaled + u) * step
    return torch.round(scaled) * step


def is_ideal(io: IOConfig) -> bool:
    """True when the periphery does nothing: the read is exactly ``W x`` (one matmul)."""
    return (
        io.noise_management == "none"
        and io.inp_bound is None
        and io.inp_bits is None
        and io.out_noise == 0
        and io.out_bound is None
        and io.out_bits is None
    )


def analog_mvm(
    weights: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    transposed: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """One analog read of the array through the periphery.

    ``weights``: (out, in). ``x``: (batch, in) for the forward read, or (batch, out) with
    ``transposed=True`` for the backward read. Returns (batch, out) or (batch, in).

    ``backend``: ``"torch"`` (:func:`analog_mvm_reference`, any device), ``"numba"`` (the compiled
    CPU twin; contiguous float32 CPU tensors, no autograd), ``"triton"`` (the compiled GPU twin;
    float32 CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``, no autograd) or
    ``"auto"`` (one matmul if the periphery is ideal, else the twin where it applies: numba on
    the CPU, triton on CUDA when triton is installed; the reference elsewhere). All give the
    same result, bit for bit, and leave ``generator`` in the same state.
    """
    if backend == "auto":
        if is_ideal(io):
            return x @ (weights if transposed else weights.t())
        if _twin_applies(weights, x):
            backend = "numba"
        elif _triton_applies(weights, x) and x.is_cuda and triton_installed():
            backend = "triton"
        else:
            backend = "torch"
    elif backend == "numba" and not _twin_applies(weights, x):
        raise ValueError(
            "backend 'numba' needs contiguous float32 CPU tensors without autograd; "
            "use backend='torch' or 'auto'"
        )
    elif backend == "triton" and not _triton_applies(weights, x):
        raise ValueError(
            "backend 'triton' needs float32 tensors on one device without autograd; "
            "use backend='torch' or 'auto'"
        )
    if backend == "numba":
        return _numba_twin()(weights, x, io, generator, transposed)
    if backend == "triton":
        from rpusim.periphery.triton import analog_mvm_triton

        return analog_mvm_triton(weights, x, io, generator, transposed)
    if backend == "torch":
        return analog_mvm_reference(weights, x, io, generator, transposed)
    raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")


def analog_mvm_reference(
    weights: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    transposed: bool = False,
    array: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`analog_mvm` in plain torch (the reference the twins are tested against).

    ``array``: the first read's array sums from the DAC's output, ``array(x_q)``, instead of
    ``x_q @ W^T`` (the same sums grouped otherwise: :mod:`rpusim.periphery.split`); the
    bound-management re-reads read the whole array.
    """
    alpha, x_hat = noise_managed(x, io)
    matrix = weights if transposed else weights.t()

    out = _read(matrix, x_hat, io, generator, array)
    if io.bound_management == "iterative" and io.out_bound is not None:
        scale = torch.ones_like(alpha)
        saturated = out[1]
        factor = 1
        while bool(saturated.any()) and factor < io.max_bm_factor:
            factor *= 2
            rows = saturated.nonzero(as_tuple=True)[0]
            # A new, noisy read of the saturated rows only, with their input halved once more.
            z_rows, sat_rows = _read(matrix, x_hat[rows] / factor, io, generator)
            out[0][rows] = z_rows
            scale[rows] = factor
            saturated = torch.zeros_like(saturated)
            saturated[rows] = sat_rows
        alpha = alpha * scale
    return alpha * out[0]


def noise_managed(x: torch.Tensor, io: IOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise management of the inputs x (B, n): ``(alpha (B, 1), x / alpha)``; alpha = 1
    without it."""
    if io.noise_management == "abs_max":
        alpha = x.abs().amax(dim=1, keepdim=True)
        # alpha == 0: the input is all zeros and the output is exactly zero (no read happens);
        # scaling by 0 at the end gives that, and dividing by 1 avoids 0/0.
        return alpha, x / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x


def _read(
    matrix: torch.Tensor,
    x_hat: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    array: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DAC -> array -> noise -> ADC for inputs already scaled. Returns (z_q, row saturated)."""
    x_q = quantize(x_hat, io.inp_bits, io.inp_bound, io.inp_sto_round, generator)
    z = x_q @ matrix if array is None else array(x_q)
    if io.out_noise > 0:
        noise = output_noise(tuple(z.shape), generator, z.dtype, z.device)
        z = z + io.out_noise * noise
    if io.out_bound is None:
        saturated = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    else:
        saturated = (z.abs() >= io.out_bound).any(dim=1)
    return quantize(z, io.out_bits, io.out_bound), saturated


def _twin_applies(weights: torch.Tensor, x: torch.Tensor) -> bool:
    """The compiled twin reads float32 CPU memory directly: it needs such tensors, x contiguous,
    and no autograd graph through them."""
    return (
        x.is_cpu
        and weights.is_cpu
        and x.dtype == torch.float32
        and weights.dtype == torch.float32
        and x.is_contiguous()
        and not (x.requires_grad or weights.requires_grad)
    )


def _triton_applies(weights: torch.Tensor, x: torch.Tensor) -> bool:
    """The Triton twin reads float32 memory (any layout of ``x``) on the weights' device and
    makes no autograd graph."""
    return (
        x.device == weights.device
        and x.dtype == torch.float32
        and weights.dtype == torch.float32
        and not (x.requires_grad or weights.requires_grad)
    )


_twin = None


def _numba_twin():
    """The compiled twin, imported on first use (numba compiles, or loads its cache, then)."""
    global _twin
    if _twin is None:
        from rpusim.periphery.numba import analog_mvm_numba

        _twin = analog_mvm_numba
    return _twin
