"""Numba twin of :func:`rpusim.periphery.analog_mvm_reference`: the same read, bit for bit.

At batch 1 a read is a few hundred multiply-adds; the reference's ~20 tiny torch calls (abs,
amax, where, div, clamp, round, mul, randn, add, ge, any, a ``bool()``, ...) cost ~60 us, far
more than the arithmetic. The twin does the same read in five calls:

1. the uniforms of stochastic rounding (if on): the reference's ``torch.rand`` draw, same shape,
   same generator (``uniform_`` into a reused buffer: the same numbers, without the allocation);
2. :func:`input_side` (compiled): noise management, input clip, DAC, one loop per row;
3. ``x_q @ W.T`` (``x_q @ W`` backward): the very torch call of the reference, so the same sums;
4. the output noise (if on): the reference's ``torch.randn`` draw (``normal_``, likewise);
5. :func:`output_side` (compiled): noise, saturation flags, ADC, the scale ``alpha`` back.

Bound management re-reads the saturated rows the same way (steps 1-5 on those rows, input
halved once more), drawing the same tensors in the same order as the reference.

Exactness: the float32 operations are the reference's, one by one and in its order (``x /
alpha``, ``/ factor``, clip, ``* (1/step)``, ``rint`` or ``floor(. + u)``, ``* step``; ``z +
sigma * noise``, ``|z| >= out_bound``, clip, quantize, ``(alpha * factor) * z_q``), with every
constant a float32 (as torch casts a Python scalar to the tensor's dtype) and ``fastmath`` off
(no FMA contraction, no reassociation). ``np.rint`` rounds half to even like ``torch.round``.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from numba import carray, njit, types
from numba.extending import intrinsic

from rpusim.config import IOConfig
from rpusim.periphery.noise import padded
from rpusim.periphery.plan import ReadPlan, plan_of

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


class _Scratch(threading.local):
    """Per-thread float32 buffers that live only within one read: the DAC's output ``x_q`` and
    the draws ``u`` and ``noise`` (allocated by torch, so aligned as the reference's tensors)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, int, int], tuple[torch.Tensor, np.ndarray]] = {}

    def get(
        self, name: str, rows: int, cols: int, pad: bool = False
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The buffer ``name`` of ``(rows, cols)``: a tensor and its numpy view. ``pad``: the
        tensor is the whole draw of :func:`~rpusim.periphery.noise.output_noise` (its size
        rounded up to a multiple of 16), the view its first ``rows * cols`` numbers."""
        buf = self.buffers.get((name, rows, cols))
        if buf is None:
            if len(self.buffers) >= 64:
                self.buffers.clear()
            if pad:
                t = torch.empty(padded(rows * cols), dtype=torch.float32)
                view = t[: rows * cols].view(rows, cols).numpy()
            else:
                t = torch.empty((rows, cols), dtype=torch.float32)
                view = t.numpy()
            buf = self.buffers[(name, rows, cols)] = (t, view)
        return buf


_SCRATCH = _Scratch()


@intrinsic
def float32_at(typingctx, address):
    """The int64 ``address`` (a CPU tensor's ``data_ptr()``) as a float32 pointer.

    Handing the kernels addresses rather than ``tensor.numpy()`` views saves ~1 us per tensor
    and per read (a tenth of a batch-1 read); the tensors are contiguous and alive meanwhile.
    """

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.float32)(types.int64), codegen


@intrinsic
def bits_as(typingctx, value, to):
    """``value``'s bit pattern read as the scalar type ``to`` of the same width (``np.float32``,
    ``np.int64``, ...): the bits, not the value."""
    target = getattr(to, "instance_type", None)
    if getattr(target, "bitwidth", None) != getattr(value, "bitwidth", -1):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(value, to), codegen


@njit(cache=True, nogil=True, inline="always")
def abs_max(row, start):
    """``max(start, max |row|)`` of a float32 row, NaN if one is NaN (``start`` >= 0, not NaN):
    torch's ``amax`` of ``|x|``, as noise management takes it.

    On the bit patterns: without the sign bit, a finite float32's bits order as its magnitude
    does, and inf and NaN lie above them all, so the maximum is an integer maximum, a loop that
    vectorizes (~0.1 ns an element; the float loop with its NaN test, ~1 ns). Of several NaNs
    it keeps the one with the largest payload: the same value for every later operation."""
    bits = row.view(np.uint32)
    m = np.uint32(0)
    for j in range(bits.shape[0]):
        m = max(m, bits[j] & np.uint32(0x7FFFFFFF))
    a = bits_as(np.uint32(m), np.float32)
    return a if a != a or a > start else start


@njit(cache=True, nogil=True, inline="always")
def _clip(v, bound):
    """``v`` clipped to ``[-bound, bound]``; NaN stays NaN (as ``torch.clamp``)."""
    if v > bound:
        return bound
    if v < -bound:
        return -bound
    return v


@njit(cache=True, nogil=True)
def input_side(x, rows, alpha, factor, u, p, x_q):
    """Noise management, clip and DAC of the rows read: ``x_q[i] = DAC(clip(x[r] / alpha / f))``.

    First read (``rows`` None): every row ``r = i``, and ``alpha[r] = max|x[r]|`` is computed
    here. Bound-management re-read: ``r = rows[i]``, ``alpha`` as computed before, the input
    divided by ``factor`` (a power of 2) as well. ``u`` (same shape as ``x_q``) or None: the
    uniforms of stochastic rounding. x: (B, n) float32, x_q: (len(rows) or B, n), written.
    ``p``: the read's settings (a :data:`~rpusim.periphery.plan.RECORD`).
    """
    nm, dac = p.nm, p.dac
    clip, bound, quant, per_step, step = dac.clip, dac.bound, dac.quantize, dac.per_step, dac.step
    n = x.shape[1]
    for i in range(x_q.shape[0]):
        if rows is None:
            r = i
            if nm:
                alpha[r] = abs_max(x[r], _ZERO)  # a NaN wins, as in torch's amax
        else:
            r = rows[i]
        # Without noise management the divisor is 1 and without a clip the bound inf: the
        # same values (x / 1 = x, NaN too), and a loop without a branch per setting vectorizes.
        divisor = _ONE
        if nm and alpha[r] > _ZERO:
            divisor = alpha[r]
        b = bound if clip else _INF
        if quant:
            for j in range(n):
                v = x[r, j] / divisor
                if rows is not None:
                    v = v / factor
                s = _clip(v, b) * per_step
                x_q[i, j] = np.rint(s) * step if u is None else np.floor(s + u[i, j]) * step
        else:
            for j in range(n):
                v = x[r, j] / divisor
                if rows is not None:
                    v = v / factor
                x_q[i, j] = _clip(v, b)


@njit(cache=True, nogil=True)
def output_side(z, rows, noise, p, alpha, factor, y, sat_rows):
    """Output noise, saturation, ADC and the scale back: ``y[r] = alpha[r] f ADC(z[i] + s n[i])``.

    z: (k, m), the array's sums of the rows read (``r = i``, or ``r = rows[i]`` in a re-read);
    ``noise`` (k, m) or None; y: (B, m), written at the rows read (may be ``z`` itself). With
    ``sat_rows`` (B,) int64 (bound management on), the rows whose output reached ``|z| >=
    bound`` are listed there. Returns how many. ``p``: the read's settings (a
    :data:`~rpusim.periphery.plan.RECORD`).
    """
    nm, sigma, adc = p.nm, p.out_noise, p.adc
    clip, bound, quant, per_step, step = adc.clip, adc.bound, adc.quantize, adc.per_step, adc.step
    n_sat = 0
    for i in range(z.shape[0]):
        r = i if rows is None else rows[i]
        scale = alpha[r] * factor if nm else factor
        saturated = False
        for j in range(z.shape[1]):
            v = z[i, j]
            if noise is not None:
                v = v + sigma * noise[i, j]
            if clip:
                if abs(v) >= bound:
                    saturated = True
                v = _clip(v, bound)
            if quant:
                v = np.rint(v * per_step) * step
            y[r, j] = scale * v
        if saturated and sat_rows is not None:
            sat_rows[n_sat] = r
            n_sat += 1
    return n_sat


@njit(cache=True, nogil=True)
def _input_side_at(x_address, batch, n, rows, alpha, factor, u, plan, x_q):
    """:func:`input_side` with ``x`` given as the address of a contiguous (batch, n) tensor and
    the settings as their record array (:attr:`~rpusim.periphery.plan.ReadPlan.record`)."""
    input_side(carray(float32_at(x_address), (batch, n)), rows, alpha, factor, u, plan[0], x_q)


@njit(cache=True, nogil=True)
def _output_side_at(z_address, k, m, rows, noise, plan, alpha, factor, y, sat_rows):
    """:func:`output_side` with ``z`` given as the address of a contiguous (k, m) tensor, and
    written in place where ``y`` is None; ``plan`` as in :func:`_input_side_at`."""
    z = carray(float32_at(z_address), (k, m))
    y = z if y is None else y
    return output_side(z, rows, noise, plan[0], alpha, factor, y, sat_rows)


def analog_mvm_numba(
    weights: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    transposed: bool = False,
) -> torch.Tensor:
    """:func:`rpusim.periphery.analog_mvm` on the CPU: float32 tensors, ``x`` (batch, n).

    Same result, bit for bit, as the reference, and the same draws from ``generator``.
    """
    p = plan_of(io)
    matrix = weights if transposed else weights.t()
    x_c = x.contiguous()  # what the kernels read (x itself, unless it is strided)
    alpha = np.empty(x.shape[0], np.float32)
    sat_rows = np.empty(x.shape[0], np.int64) if p.bm else None
    y, n_sat = _read(x_c, matrix, p, generator, alpha, sat_rows, None, _ONE, None)
    if n_sat:
        reread_saturated(x_c, matrix, p, generator, alpha, sat_rows, n_sat, y.numpy())
    return y


def _read(x_c, matrix, p, generator, alpha, sat_rows, rows, factor, y_np):
    """One read of ``rows`` of ``x_c`` (None: all), with the reference's draws in its order,
    into scratch buffers of its shapes (``uniform_``/``normal_`` = ``torch.rand``/``randn``).

    Returns the array's output (written in place where ``y_np`` is None, else into ``y_np`` at
    the rows read) and the number of rows that saturated (listed in ``sat_rows``).
    """
    batch, n_in = x_c.shape
    k = batch if rows is None else len(rows)
    u = None
    if p.sto:
        u_t, u = _SCRATCH.get("u", k, n_in)
        u_t.uniform_(generator=generator)
    if p.identity_input and rows is None:
        x_q = x_c  # the reference reads x itself here
    else:
        x_q, x_q_np = _SCRATCH.get("x_q", k, n_in)
        _input_side_at(x_c.data_ptr(), batch, n_in, rows, alpha, factor, u, p.record, x_q_np)
    z = x_q @ matrix
    noise = None
    if p.noise:
        noise_t, noise = _SCRATCH.get("noise", k, z.shape[1], pad=True)
        noise_t.normal_(generator=generator)
    n_sat = _output_side_at(
        z.data_ptr(), k, z.shape[1], rows, noise, p.record, alpha, factor, y_np, sat_rows
    )
    return z, n_sat


def reread_saturated(
    x_c: torch.Tensor,
    matrix: torch.Tensor,
    p: ReadPlan,
    generator: torch.Generator | None,
    alpha: np.ndarray,
    sat_rows: np.ndarray | None,
    n_sat: int,
    y_np: np.ndarray,
) -> None:
    """Bound management after a first read: the ``n_sat`` rows listed in ``sat_rows`` are read
    again, their input halved once more each time, until none saturates or the factor reaches
    ``max_bm_factor``. Writes the new outputs into ``y_np`` (batch, m) at those rows.

    ``x_c`` (batch, n) contiguous: the read's input; ``alpha``: its noise-management scales
    from the first read; ``matrix``: as in the first read (``W.T`` forward, ``W`` backward).
    """
    factor = 1
    while n_sat and factor < p.max_bm_factor:
        factor *= 2
        rows = sat_rows[:n_sat].copy()
        _, n_sat = _read(x_c, matrix, p, generator, alpha, sat_rows, rows, np.float32(factor), y_np)
