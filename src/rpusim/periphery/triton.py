"""Triton twin of :func:`rpusim.periphery.analog_mvm_reference`: the same read, bit for bit.

The GPU counterpart of :mod:`rpusim.periphery.numba`, with the same split. On a GPU the
reference's ~20 elementwise torch calls per read are ~20 kernel launches and as many passes
over memory; the twin does the read in five calls:

1. the uniforms of stochastic rounding (if on): the reference's ``torch.rand`` call itself;
2. :func:`input_side` (Triton): noise management, input clip, DAC, one program per row;
3. ``x_q @ W.T`` (``x_q @ W`` backward): the very torch call of the reference, so the same sums;
4. the output noise (if on): the reference's ``torch.randn`` call itself;
5. :func:`output_side` (Triton): noise, saturation flags, ADC, the scale ``alpha`` back.

Bound management re-reads the saturated rows the same way (steps 1-5 on those rows, input
halved once more), drawing the same tensors in the same order as the reference; as in the
reference, each round asks the host whether any row still saturates.

Exactness: the float32 operations are the reference's, one by one and in its order (``x /
alpha``, ``/ factor``, clip, ``* (1/step)``, round half to even or ``floor(. + u)``, ``* step``;
``z + sigma * noise``, ``|z| >= out_bound``, clip, quantize, ``(alpha * factor) * z_q``), with
every constant a float32 (as torch casts a Python scalar to the tensor's dtype). Three Triton
defaults would break that and are avoided: ``a / b`` on float32 compiles to an approximate
division (``tl.div_rn`` is the IEEE one); ``a * b + c`` is contracted to one FMA and ``floor``
flushes subnormals to zero, unless the kernel is launched with
:data:`~rpusim.update.triton.IEEE_F32`. Triton has no round-half-to-even outside
libdevice (which the interpreter cannot run), so :func:`_rint` builds it from ``floor``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from rpusim.config import IOConfig
from rpusim.periphery.noise import output_noise
from rpusim.periphery.plan import plan_of
from rpusim.update.triton import IEEE_F32

#: Columns per block of the row loops (a read of up to this many columns is one block).
BLOCK = 512


@triton.jit
def _rint(s):
    """Round half to even, as ``torch.round`` (and ``np.rint``), keeping the sign of a zero.

    ``frac = s - floor(s)`` is exact except for ``-0.5 < s < 0``, where ``s + 1`` rounds, but
    never below 0.5: with ``floor(s) = -1`` odd, ``s`` still goes up to ``-0``, as it should.
    From ``|s| >= 2**23`` on, ``s`` is an integer (``frac = 0``); below, ``r + 1`` is exact.
    """
    r = tl.floor(s)
    frac = s - r
    half = r * 0.5
    odd = tl.floor(half) != half
    r = tl.where((frac > 0.5) | ((frac == 0.5) & odd), r + 1.0, r)
    return tl.where(r == 0.0, s * 0.0, r)  # -0.3 -> -0.0, as rint


@triton.jit
def _clip(v, bound):
    """``v`` clipped to ``[-bound, bound]``; NaN stays NaN (as ``torch.clamp``)."""
    v = tl.where(v > bound, bound, v)
    return tl.where(v < -bound, -bound, v)


@triton.jit
def input_side(
    x_ptr, rows_ptr, alpha_ptr, u_ptr, x_q_ptr, n, factor,
    bound, per_step, step,
    NM: tl.constexpr, REREAD: tl.constexpr, CLIP: tl.constexpr, QUANT: tl.constexpr,
    STO: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Noise management, clip and DAC of one row read: ``x_q[i] = DAC(clip(x[r] / alpha / f))``.

    Program ``i``. First read (``REREAD`` off): row ``r = i``, and ``alpha[r] = max|x[r]|`` is
    computed here (if ``NM``). Bound-management re-read: ``r = rows[i]``, ``alpha`` as computed
    before, and the input divided by ``factor`` (a power of 2) as well. x: (B, n) float32
    contiguous; rows: (k,) int64; alpha: (B,) float32; u: (k, n), the uniforms of stochastic
    rounding (``STO``); x_q: (k, n), written.
    """
    i = tl.program_id(0)
    r = tl.load(rows_ptr + i) if REREAD else i.to(tl.int64)
    x_row = x_ptr + r * n
    out_row = i.to(tl.int64) * n
    if NM:
        if not REREAD:
            big = tl.zeros((BLOCK,), tl.float32)
            nans = tl.zeros((BLOCK,), tl.float32)
            for c0 in range(0, n, BLOCK):
                cols = c0 + tl.arange(0, BLOCK)
                m = tl.abs(tl.load(x_row + cols, mask=cols < n, other=0.0))
                big = tl.maximum(big, m)
                nans = nans + tl.where(m != m, m, 0.0)
            # A NaN wins, as in torch's amax: tl.max drops NaNs on the GPU (max.f32), but their
            # sum is NaN; without one, the sum is +0 and adding it changes nothing.
            tl.store(alpha_ptr + r, tl.max(big, axis=0) + tl.sum(nans, axis=0))
        a = tl.load(alpha_ptr + r)
        divisor = tl.where(a > 0.0, a, 1.0)
    for c0 in range(0, n, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        inside = cols < n
        v = tl.load(x_row + cols, mask=inside, other=0.0)
        if NM:
            v = tl.div_rn(v, divisor)
        if REREAD:
            v = tl.div_rn(v, factor)
        if CLIP:
            v = _clip(v, bound)
        if QUANT:
            s = v * per_step
            if STO:
                v = tl.floor(s + tl.load(u_ptr + out_row + cols, mask=inside, other=0.0)) * step
            else:
                v = _rint(s) * step
        tl.store(x_q_ptr + out_row + cols, v, mask=inside)


@triton.jit
def output_side(
    z_ptr, rows_ptr, noise_ptr, alpha_ptr, y_ptr, sat_ptr, m, factor,
    sigma, bound, per_step, step,
    NM: tl.constexpr, REREAD: tl.constexpr, NOISE: tl.constexpr, CLIP: tl.constexpr,
    QUANT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Output noise, saturation, ADC and the scale back of one row read:
    ``y[r] = (alpha[r] f) ADC(z[i] + sigma noise[i])``.

    Program ``i``; ``r = i``, or ``rows[i]`` in a re-read. z, noise: (k, m) float32; y: (B, m),
    written at row ``r`` (may be ``z`` itself in a first read); sat: (k,) int32, written (if
    ``CLIP``): 1 where the row's output reached ``|z| >= bound``.
    """
    i = tl.program_id(0)
    r = tl.load(rows_ptr + i) if REREAD else i.to(tl.int64)
    scale = tl.load(alpha_ptr + r) * factor if NM else factor
    in_row = i.to(tl.int64) * m
    saturated = tl.zeros((BLOCK,), tl.int32)
    for c0 in range(0, m, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        inside = cols < m
        v = tl.load(z_ptr + in_row + cols, mask=inside, other=0.0)
        if NOISE:
            v = v + sigma * tl.load(noise_ptr + in_row + cols, mask=inside, other=0.0)
        if CLIP:
            saturated = saturated | (inside & (tl.abs(v) >= bound)).to(tl.int32)
            v = _clip(v, bound)
        if QUANT:
            v = _rint(v * per_step) * step
        tl.store(y_ptr + r * m + cols, scale * v, mask=inside)
    if CLIP:
        tl.store(sat_ptr + i, tl.max(saturated, axis=0))


def interpreted() -> bool:
    """True when the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    return isinstance(input_side, InterpretedFunction)


@torch.no_grad()
def analog_mvm_triton(
    weights: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    transposed: bool = False,
) -> torch.Tensor:
    """:func:`rpusim.periphery.analog_mvm` on the GPU: float32 CUDA tensors (CPU tensors under
    the interpreter), ``x`` (batch, n). Same result, bit for bit, as the reference, and the same
    draws from ``generator``.
    """
    if x.device.type == "cpu" and not interpreted():
        raise ValueError("the Triton periphery needs CUDA tensors (or TRITON_INTERPRET=1)")
    p = plan_of(io)
    matrix = weights if transposed else weights.t()
    x_c = x.contiguous()  # what the kernels read
    alpha = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    y, sat = _read(x, x_c, matrix, p, generator, alpha, None, 1, None)
    if p.bm:
        # The reference's loop: while a row saturates and the factor allows, read the
        # saturated rows again (ascending, as ``nonzero`` lists them) with the input halved.
        rows = sat.nonzero(as_tuple=True)[0]
        factor = 1
        while rows.numel() and factor < p.max_bm_factor:
            factor *= 2
            _, sat = _read(x, x_c, matrix, p, generator, alpha, rows, factor, y)
            rows = rows[sat.bool()]
    return y


def _read(x, x_c, matrix, p, generator, alpha, rows, factor, y):
    """One read of ``rows`` of ``x_c`` (None: all rows, the first read), with the reference's
    draws in its order. Writes ``y`` (batch, m) at the rows read (None: a first read, whose
    output is written over the array's sums and returned). Returns ``(y, sat)``: ``sat`` (k,)
    int32, 1 for each row read that saturated (None without an output bound).
    """
    batch, n_in = x_c.shape
    k = batch if rows is None else rows.numel()
    reread = rows is not None
    u = None
    if p.sto:
        u = torch.rand((k, n_in), generator=generator, dtype=x_c.dtype, device=x_c.device)
    if p.identity_input and not reread:
        x_q = x  # the reference reads x itself here
    else:
        x_q = torch.empty((k, n_in), dtype=torch.float32, device=x_c.device)
    if x_q is not x and k:
        input_side[(k,)](
            x_c, rows, alpha, u, x_q, n_in, float(factor),
            p.dac.bound, p.dac.per_step, p.dac.step,
            NM=p.nm, REREAD=reread, CLIP=p.dac.clip, QUANT=p.dac.quantize, STO=p.sto,
            BLOCK=min(BLOCK, triton.next_power_of_2(n_in)), **IEEE_F32,
        )  # fmt: skip
    z = x_q @ matrix
    noise = None
    if p.noise:
        noise = output_noise(tuple(z.shape), generator, z.dtype, z.device)
    m = z.shape[1]
    sat = torch.empty(k, dtype=torch.int32, device=z.device) if p.adc.clip else None
    out = z if y is None else y
    if k:
        output_side[(k,)](
            z, rows, noise, alpha, out, sat, m, float(factor),
            p.out_noise, p.adc.bound, p.adc.per_step, p.adc.step,
            NM=p.nm, REREAD=reread, NOISE=p.noise, CLIP=p.adc.clip, QUANT=p.adc.quantize,
            BLOCK=min(BLOCK, triton.next_power_of_2(m)), **IEEE_F32,
        )  # fmt: skip
    return out, sat


__all__ = ["analog_mvm_triton", "interpreted"]
