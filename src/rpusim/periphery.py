"""The periphery of an analog read: noise/bound management, DAC, output noise, ADC.

One function, :func:`analog_mvm`, computes ``y = W x`` (forward) or ``z = W^T d`` (backward) the
way the array does it (``docs/model.md`` section 2):

1. noise management scales the input by ``alpha = max|x|`` (so the DAC range is used fully);
2. the input is clipped to ``inp_bound`` and quantized by the DAC (nearest or stochastic rounding);
3. the array multiplies and adds output noise ``out_noise * N(0, 1)`` per output per read;
4. the ADC clips to ``out_bound`` and quantizes;
5. bound management: rows whose output saturated are read again with the input halved.
"""

from __future__ import annotations

import torch

from rpusim.config import IOConfig


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
    step = 2.0 * bound / (2**bits - 2)
    scaled = v / step
    if stochastic:
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.floor(scaled + u) * step
    return torch.round(scaled) * step


def analog_mvm(
    weights: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    transposed: bool = False,
) -> torch.Tensor:
    """One analog read of the array through the periphery.

    ``weights``: (out, in). ``x``: (batch, in) for the forward read, or (batch, out) with
    ``transposed=True`` for the backward read. Returns (batch, out) or (batch, in).
    """
    if io.noise_management == "abs_max":
        alpha = x.abs().amax(dim=1, keepdim=True)
        # alpha == 0: the input is all zeros and the output is exactly zero (no read happens);
        # scaling by 0 at the end gives that, and dividing by 1 avoids 0/0.
        x_hat = x / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    else:
        alpha = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        x_hat = x
    matrix = weights if transposed else weights.t()

    out = _read(matrix, x_hat, io, generator)
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


def _read(
    matrix: torch.Tensor, x_hat: torch.Tensor, io: IOConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DAC -> array -> noise -> ADC for inputs already scaled. Returns (z_q, row saturated)."""
    x_q = quantize(x_hat, io.inp_bits, io.inp_bound, io.inp_sto_round, generator)
    z = x_q @ matrix
    if io.out_noise > 0:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        z = z + io.out_noise * noise
    if io.out_bound is None:
        saturated = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    else:
        saturated = (z.abs() >= io.out_bound).any(dim=1)
    return quantize(z, io.out_bits, io.out_bound), saturated
