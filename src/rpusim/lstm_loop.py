"""Compiled twin of an analog LSTM layer's time loop on the CPU: the same numbers, fewer calls.

:class:`rpusim.layers.AnalogLSTMLayer` steps through time with one tile read per step (forward:
``a_t = W z_t``; backward: ``W^T da_t``), each through the periphery, then the digital cell. The
reference loop calls ``tile.forward`` (its checks, the periphery twin's plan and scratch look-ups,
numpy views: ~10 us of Python per read) and then the compiled cell. At batch 1 the arithmetic of
a step is about as small as that overhead, so here a step is three calls:

1. ``torch.mm(x_q, W.T, out=a)`` (``W`` backward): the very matmul of the reference read, on
   buffers of the same shapes, so the same sums;
2. the output noise (if on): the reference's ``normal_`` draw from the tile's generator, or an
   index into draws taken for several reads at once (:class:`_Loop`: only where that gives the
   same numbers);
3. one compiled call, :func:`forward_step` or :func:`backward_step`: the output side of this read
   (output noise, ADC, scale back), the cell of the step, and the input side of the next read
   (noise management, clip, DAC). They call the functions of the periphery twin
   (:func:`~rpusim.periphery.numba.output_side`, ``input_side``) and the cell kernels
   below, so every float32 operation is the reference's, in its order.

Bound management (a saturated row is read again with its input halved) and stochastic rounding
(uniforms drawn before each read) keep the reference's order of draws: the compiled call then
stops after the output side, the re-reads run as in the periphery twin
(:func:`~rpusim.periphery.numba.reread_saturated`), the next read's uniforms are drawn,
and a second call does the cell and the next input side.

The digital cell (:func:`cell_forward`, :func:`cell_backward`) is float64 arithmetic on float32
storage; it equals the layer's vectorised torch cell to float32 rounding (not bit for bit).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import carray, njit, types
from numba.extending import intrinsic

from rpusim.config import IOConfig
from rpusim.periphery import is_ideal
from rpusim.periphery.numba import (
    float32_at,
    input_side,
    output_side,
    plan_of,
    reread_saturated,
)

_jit = njit(cache=True, nogil=True, error_model="numpy")

_ONE = np.float32(1.0)

#: ``phase`` of :func:`forward_step` / :func:`backward_step`: the whole step, only the read's
#: output side, or only the cell and the next read's input side.
BOTH, OUTPUT, CELL = 0, 1, 2

#: Most output-noise numbers drawn ahead at once (per direction of one layer).
NOISE_AHEAD = 1 << 16


# ---------------------------------------------------------------------------------------------
# The digital cell, element by element
# ---------------------------------------------------------------------------------------------


@_jit
def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@_jit
def tanh(x):
    # expm1 keeps small |x| accurate; libm's tanh is ~4x slower and this loop is the hot one.
    if x > 20.0:
        return 1.0
    e = math.expm1(2.0 * x)
    return e / (e + 2.0)


@_jit
def cell_forward(a, t, n, G, C, TC, Z):
    """One LSTM step after the read ``a`` (B, 4h): writes G[t] (i, f, g, o), C[t + 1] = c_t,
    TC[t] = tanh(c_t), and h_t into Z[t + 1, :, n:n + h]."""
    B, h = a.shape[0], C.shape[2]
    for b in range(B):
        for j in range(h):
            i = sigmoid(a[b, j])
            f = sigmoid(a[b, h + j])
            g = tanh(a[b, 2 * h + j])
            o = sigmoid(a[b, 3 * h + j])
            G[t, b, j], G[t, b, h + j], G[t, b, 2 * h + j], G[t, b, 3 * h + j] = i, f, g, o
            c = f * C[t, b, j] + i * g
            tc = tanh(c)
            C[t + 1, b, j] = c
            TC[t, b, j] = tc
            Z[t + 1, b, n + j] = o * tc


@_jit
def cell_backward(t, gh, dz, n, G, C, TC, dc, dA):
    """One BPTT step. ``gh`` (T, B, h): dloss/dh_t from above; ``dz`` (B, n + h + 1): the
    backward read of step t + 1, whose ``[n:n + h]`` is dloss/dh_t through the recurrence; ``dc``
    (B, h): dloss/dc_t in, dloss/dc_{t-1} out. Writes da_t into dA[t]."""
    B, h = dc.shape
    for b in range(B):
        for j in range(h):
            dh = gh[t, b, j] + dz[b, n + j]
            i, f = G[t, b, j], G[t, b, h + j]
            g, o = G[t, b, 2 * h + j], G[t, b, 3 * h + j]
            tc = TC[t, b, j]
            dcj = dc[b, j] + dh * o * (1.0 - tc * tc)
            dA[t, b, j] = dcj * g * i * (1.0 - i)
            dA[t, b, h + j] = dcj * C[t, b, j] * f * (1.0 - f)
            dA[t, b, 2 * h + j] = dcj * i * (1.0 - g * g)
            dA[t, b, 3 * h + j] = dh * tc * o * (1.0 - o)
            dc[b, j] = dcj * f


# ---------------------------------------------------------------------------------------------
# One step: output side of a read, the cell, input side of the next read
# ---------------------------------------------------------------------------------------------

# A step kernel takes three small tables, made once per sequence by _Loop: ``ptr`` (int64), the
# addresses of the loop's contiguous CPU buffers (passing 10-odd arrays would cost ~1.5 us per
# call in unboxing, a read's worth of arithmetic at batch 1); ``dim`` (int64), sizes and flags;
# ``con`` (float32), the converters' constants. The slots:
P_OUT, P_NOISE, P_ALPHA, P_SAT, P_U, P_XQ = range(6)  # the read's buffers
P_G, P_C, P_TC, P_Z = range(6, 10)  # forward: the layer's buffers
P_GH, P_DC, P_DA, P_DZ = range(10, 14)  # backward: the layer's buffers (and P_G, P_C, P_TC)
D_T, D_B, D_N, D_H, D_AHEAD = range(5)  # T, B, n_in of the layer, hidden, noise rows held
D_OUT_SIDE, D_IN_SIDE, D_NOISE, D_STO, D_BM = range(5, 10)  # the read's mode
D_DAC, D_ADC = 10, 13  # (nm, clip, quantize) of each side; con: the plan's float32 constants


@intrinsic
def _int64_at(typingctx, address):
    """The int64 ``address`` (a CPU array's data pointer) as an int64 pointer."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.int64)(types.int64), codegen


@_jit
def _plans(dim, con):
    """The plan tuples of :mod:`~rpusim.periphery.numba` (``dac``, ``adc``) again."""
    dac = (dim[D_DAC] != 0, dim[D_DAC + 1] != 0, con[0], dim[D_DAC + 2] != 0, con[1], con[2])
    adc = (
        dim[D_ADC] != 0, con[3], dim[D_ADC + 1] != 0, con[4], dim[D_ADC + 2] != 0, con[5], con[6],
    )  # fmt: skip
    return dac, adc


@_jit
def _output(z, noise, k, adc, alpha, y, sat_rows, has_noise):
    """The first read's output side (:func:`output_side`, all rows, factor 1) into ``y``."""
    if has_noise:
        return output_side(z, None, noise[k], adc, alpha, _ONE, y, sat_rows)
    return output_side(z, None, None, adc, alpha, _ONE, y, sat_rows)


@_jit
def _input(x, alpha, u, dac, x_q, sto):
    """The first read's input side (:func:`input_side`, all rows, factor 1) into ``x_q``."""
    if sto:
        input_side(x, None, alpha, _ONE, u, dac, x_q)
    else:
        input_side(x, None, alpha, _ONE, None, dac, x_q)


@_jit
def forward_step(t, phase, k, ptr, dim, con):
    """Forward step ``t``: output side of read ``t`` (``a`` in place), the cell of step ``t``
    (:func:`cell_forward`), input side of read ``t + 1`` (``Z[t + 1]`` -> ``x_q``).

    ``t = -1`` does only the input side of read 0. A side of the periphery that does nothing
    (``dim[D_OUT_SIDE]``, ``dim[D_IN_SIDE]``) is skipped; the matmul then reads ``Z[t]`` itself,
    as the reference does. ``noise[k]`` (B, 4h): this read's output noise; ``u`` (B, n + h + 1):
    the next read's uniforms (stochastic rounding).

    Returns the number of saturated rows, listed in ``sat_rows``, when bound management must read
    them again: then the step stopped after the output side (call again with ``phase=CELL`` after
    the re-reads). Else 0.
    """
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    out_side, in_side, has_noise = dim[D_OUT_SIDE] != 0, dim[D_IN_SIDE] != 0, dim[D_NOISE] != 0
    sto, bm = dim[D_STO] != 0, dim[D_BM] != 0
    dac, adc = _plans(dim, con)
    m, w = 4 * h, n + h + 1
    a = carray(float32_at(ptr[P_OUT]), (B, m))
    alpha = carray(float32_at(ptr[P_ALPHA]), B)
    G = carray(float32_at(ptr[P_G]), (T, B, m))
    C = carray(float32_at(ptr[P_C]), (T + 1, B, h))
    TC = carray(float32_at(ptr[P_TC]), (T, B, h))
    Z = carray(float32_at(ptr[P_Z]), (T + 1, B, w))
    if t >= 0 and phase != CELL and out_side:
        noise = carray(float32_at(ptr[P_NOISE]), (dim[D_AHEAD], B, m))
        sat_rows = carray(_int64_at(ptr[P_SAT]), B)
        n_sat = _output(a, noise, k, adc, alpha, a, sat_rows, has_noise)
        if bm and n_sat > 0:
            return n_sat
    if phase == OUTPUT:
        return 0
    if t >= 0:
        cell_forward(a, t, n, G, C, TC, Z)
    if in_side and t + 1 < T:
        u = carray(float32_at(ptr[P_U]), (B, w))
        x_q = carray(float32_at(ptr[P_XQ]), (B, w))
        _input(Z[t + 1], alpha, u, dac, x_q, sto)
    return 0


@_jit
def backward_step(t, phase, k, ptr, dim, con):
    """Backward step ``t`` (going back in time): output side of read ``t + 1`` (``z``, the
    array's sums, -> ``DZ[t + 1] = W^T da_{t+1}``), the cell of step ``t``
    (:func:`cell_backward`, which reads ``DZ[t + 1]``), input side of read ``t`` (``dA[t]`` ->
    ``x_q``).

    The first call (``t = T - 1``) has no read to finish (``DZ[T]`` holds dloss/dh_T from beyond
    the sequence); ``t = -1`` finishes read 0 only. The rest as :func:`forward_step`.
    """
    T, B, n, h = dim[D_T], dim[D_B], dim[D_N], dim[D_H]
    out_side, in_side, has_noise = dim[D_OUT_SIDE] != 0, dim[D_IN_SIDE] != 0, dim[D_NOISE] != 0
    sto, bm = dim[D_STO] != 0, dim[D_BM] != 0
    dac, adc = _plans(dim, con)
    m, w = 4 * h, n + h + 1
    alpha = carray(float32_at(ptr[P_ALPHA]), B)
    DZ = carray(float32_at(ptr[P_DZ]), (T + 1, B, w))
    if t + 1 < T and phase != CELL:
        z = carray(float32_at(ptr[P_OUT]), (B, w))
        if out_side:
            noise = carray(float32_at(ptr[P_NOISE]), (dim[D_AHEAD], B, w))
            sat_rows = carray(_int64_at(ptr[P_SAT]), B)
            n_sat = _output(z, noise, k, adc, alpha, DZ[t + 1], sat_rows, has_noise)
            if bm and n_sat > 0:
                return n_sat
        else:
            DZ[t + 1] = z
    if phase == OUTPUT or t < 0:
        return 0
    gh = carray(float32_at(ptr[P_GH]), (T, B, h))
    G = carray(float32_at(ptr[P_G]), (T, B, m))
    C = carray(float32_at(ptr[P_C]), (T + 1, B, h))
    TC = carray(float32_at(ptr[P_TC]), (T, B, h))
    dc = carray(float32_at(ptr[P_DC]), (B, h))
    dA = carray(float32_at(ptr[P_DA]), (T, B, m))
    cell_backward(t, gh, DZ[t + 1], n, G, C, TC, dc, dA)
    if in_side:
        u = carray(float32_at(ptr[P_U]), (B, m))
        x_q = carray(float32_at(ptr[P_XQ]), (B, m))
        _input(dA[t], alpha, u, dac, x_q, sto)
    return 0


# ---------------------------------------------------------------------------------------------
# The time loops
# ---------------------------------------------------------------------------------------------


@functools.cache
def _normal_draws_split(numel: int) -> bool:
    """True if one ``normal_`` draw of ``r * numel`` numbers gives the numbers of ``r`` draws of
    ``numel``, one after another (and leaves the generator where they do).

    torch fills a float32 tensor of at least 16 numbers with uniforms in order, then turns each
    block of 16 into normals (Box-Muller), and redraws the last 16 when the size is not a
    multiple of 16: so it holds for multiples of 16. Checked here, once per size, rather than
    assumed of the torch installed.
    """
    if numel < 16 or numel % 16:
        return False
    whole, parts = torch.empty(3, numel), torch.empty(3, numel)
    g_whole, g_parts = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    whole.normal_(generator=g_whole)
    for r in range(3):
        parts[r].normal_(generator=g_parts)
    return torch.equal(whole, parts) and torch.equal(g_whole.get_state(), g_parts.get_state())


class _Loop:
    """One layer's ``T`` reads in one direction: the periphery's mode, the read's buffers, the
    random draws, and the tables (``ptr``, ``dim``, ``con``) that the step kernels take.

    Reads are counted ``k = 0 .. T-1`` in the order they happen. ``n_in`` / ``n_out`` are the
    sizes of a read's input and output rows (forward ``n + h + 1`` / ``4h``, backward the
    reverse).

    Output noise: the reference draws ``normal_`` of ``(B, n_out)`` from the tile's generator
    after each read's matmul. Where ``B * n_out`` is a multiple of 16 (and nothing else is drawn
    between reads: no stochastic rounding) the draws of up to :data:`NOISE_AHEAD` numbers' worth
    of reads are taken in one call: the same numbers. A bound-management re-read draws between
    two reads: the generator is then put back to before the draw ahead, and the draws up to this
    read are taken again (the same numbers), so that the re-read draws what the reference does.
    """

    def __init__(
        self,
        io: IOConfig,
        generator: torch.Generator | None,
        T: int,
        B: int,
        n: int,
        h: int,
        forward: bool,
    ) -> None:
        n_in, n_out = (n + h + 1, 4 * h) if forward else (4 * h, n + h + 1)
        p = plan_of(io)
        ideal = is_ideal(io)  # the reference does one matmul and nothing else
        self.plan, self.generator, self.T = p, generator, T
        self.in_side = not (ideal or p.identity_input)  # else the matmul reads x itself
        self.noise_on = p.noise and not ideal
        self.sto = p.sto and not ideal
        self.ahead = 1  # reads whose output noise is drawn at once
        numel = B * n_out
        if self.noise_on and not self.sto and generator is not None and _normal_draws_split(numel):
            self.ahead = max(1, min(T, NOISE_AHEAD // numel))
        self.out_t = torch.empty(B, n_out)  # the matmul's output
        self.x_q_t = torch.empty(B, n_in)  # the DAC's output, the matmul's input
        self.u_t = torch.empty(B, n_in)  # stochastic rounding's uniforms
        self.noise_t = torch.empty(self.ahead, B, n_out)
        self.alpha = np.empty(B, np.float32)
        self.sat_rows = np.empty(B, np.int64)
        self.k0 = self.k1 = 0  # the noise of reads k0 <= k < k1 is in noise_t[0 .. k1 - k0)
        self.state: torch.Tensor | None = None  # the generator before that draw

        self.ptr = np.zeros(14, np.int64)
        self.hold({P_OUT: self.out_t, P_NOISE: self.noise_t, P_U: self.u_t, P_XQ: self.x_q_t})
        self.ptr[P_ALPHA], self.ptr[P_SAT] = self.alpha.ctypes.data, self.sat_rows.ctypes.data
        bm = p.bm and p.max_bm_factor > 1 and not ideal
        mode = (not ideal, self.in_side, self.noise_on, self.sto, bm)
        flags = (p.dac[0], p.dac[1], p.dac[3], p.adc[0], p.adc[2], p.adc[4])
        self.dim = np.array([T, B, n, h, self.ahead, *mode, *flags], np.int64)
        self.con = np.array([*p.dac[2:3], *p.dac[4:], p.adc[1], p.adc[3], *p.adc[5:]], np.float32)

    def hold(self, tensors: dict[int, torch.Tensor]) -> None:
        """Put the addresses of contiguous float32 CPU tensors into their ``ptr`` slots
        (``{P_G: G, ...}``). The caller keeps them alive while the kernels run."""
        for slot, tensor in tensors.items():
            if not (tensor.is_cpu and tensor.dtype == torch.float32 and tensor.is_contiguous()):
                raise ValueError(
                    f"ptr slot {slot}: the step kernels need a contiguous float32 CPU tensor"
                )
            self.ptr[slot] = tensor.data_ptr()

    def draw_uniforms(self) -> None:
        """Stochastic rounding: the next read's ``u ~ U[0, 1)``, as the reference draws them."""
        self.u_t.uniform_(generator=self.generator)

    def draw_noise(self, k: int) -> None:
        """The output noise of read ``k`` (and, drawing ahead, of the reads after it)."""
        n = min(self.ahead, self.T - k)
        if self.ahead > 1:
            self.state = self.generator.get_state()
        (self.noise_t if n == self.ahead else self.noise_t[:n]).normal_(generator=self.generator)
        self.k0, self.k1 = k, k + n

    def reread(self, k: int, x: torch.Tensor, matrix: torch.Tensor, y: np.ndarray, n: int):
        """Bound management of read ``k``: its ``n`` saturated rows (``sat_rows``) read again
        from its input ``x`` (B, n_in), the results written into ``y`` (B, n_out)."""
        if k + 1 < self.k1:  # later reads' noise was drawn ahead: take those draws back
            self.generator.set_state(self.state)
            self.noise_t[: k + 1 - self.k0].normal_(generator=self.generator)
            self.k1 = k + 1
        reread_saturated(x, matrix, self.plan, self.generator, self.alpha, self.sat_rows, n, y)


def forward_sequence(
    weights: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    Z: torch.Tensor,
    G: torch.Tensor,
    C: torch.Tensor,
    TC: torch.Tensor,
) -> None:
    """The forward time loop of :class:`~rpusim.layers.AnalogLSTMLayer`, bit for bit.

    weights (4h, n + h + 1), read through the periphery ``io`` with ``generator`` (the tile's).
    Z (T + 1, B, n + h + 1) holds ``x_t``, ``h_0`` and the constant 1 (the rest is written:
    ``Z[t + 1, :, n:n + h] = h_t``); C[0] = c_0; writes G (T, B, 4h), C[1:], TC (T, B, h).
    """
    T, B, m = G.shape
    h = C.shape[2]
    loop = _Loop(io, generator, T, B, Z.shape[2] - h - 1, h, forward=True)
    loop.hold({P_G: G, P_C: C, P_TC: TC, P_Z: Z})
    ptr, dim, con, sto, noise_on = loop.ptr, loop.dim, loop.con, loop.sto, loop.noise_on
    matrix, a_t, x_q_t = weights.t(), loop.out_t, loop.x_q_t
    Zs = None if loop.in_side else Z.unbind(0)  # the matmul reads z_t itself
    step, mm, phase = forward_step, torch.mm, OUTPUT if sto else BOTH
    if sto:
        loop.draw_uniforms()
    step(-1, CELL, 0, ptr, dim, con)  # the input side of read 0
    for t in range(T):
        mm(x_q_t if Zs is None else Zs[t], matrix, out=a_t)
        if noise_on and t >= loop.k1:
            loop.draw_noise(t)
        k = t - loop.k0
        n_sat = step(t, phase, k, ptr, dim, con)
        if n_sat or sto:
            if n_sat:
                loop.reread(t, Z[t], matrix, a_t.numpy(), n_sat)
            if sto and t + 1 < T:
                loop.draw_uniforms()
            step(t, CELL, k, ptr, dim, con)


def backward_sequence(
    weights: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    grad_hs: torch.Tensor,
    G: torch.Tensor,
    C: torch.Tensor,
    TC: torch.Tensor,
    dc: torch.Tensor,
    dA: torch.Tensor,
    DZ: torch.Tensor,
) -> None:
    """The backward time loop of :class:`~rpusim.layers.AnalogLSTMLayer`, bit for bit.

    grad_hs (T, B, h): dloss/dh_t from above; G, C, TC: the forward's; dc (B, h): dloss/dc_T in
    (updated in place); DZ (T + 1, B, n + h + 1): ``DZ[T]`` holds dloss/dh_T from beyond the
    sequence in ``[:, n:n + h]`` (zeros elsewhere). Writes dA[t] = da_t and DZ[t] = W^T da_t (the
    backward read of step t) for t < T, reading back through ``io`` with ``generator``.
    """
    T, B, m = G.shape
    h = dc.shape[1]
    loop = _Loop(io, generator, T, B, DZ.shape[2] - h - 1, h, forward=False)
    loop.hold({P_GH: grad_hs, P_G: G, P_C: C, P_TC: TC, P_DC: dc, P_DA: dA, P_DZ: DZ})
    ptr, dim, con, sto, noise_on = loop.ptr, loop.dim, loop.con, loop.sto, loop.noise_on
    matrix, z_t, x_q_t = weights, loop.out_t, loop.x_q_t
    dAs = None if loop.in_side else dA.unbind(0)  # the matmul reads da_t itself
    step, mm, phase = backward_step, torch.mm, OUTPUT if sto else BOTH
    k = 0  # where the last read's output noise is in the noise buffer
    for t in range(T - 1, -1, -1):
        # Finish read t + 1 (the (T - 2 - t)-th read), the cell of step t, start read t.
        n_sat = step(t, phase, k, ptr, dim, con)
        if n_sat or sto:
            if n_sat:
                loop.reread(T - 2 - t, dA[t + 1], matrix, DZ[t + 1].numpy(), n_sat)
            if sto:
                loop.draw_uniforms()
            step(t, CELL, k, ptr, dim, con)
        mm(x_q_t if dAs is None else dAs[t], matrix, out=z_t)
        if noise_on and T - 1 - t >= loop.k1:
            loop.draw_noise(T - 1 - t)
        k = T - 1 - t - loop.k0
    n_sat = step(-1, OUTPUT, k, ptr, dim, con)  # finish read 0
    if n_sat:
        loop.reread(T - 1, dA[0], matrix, DZ[0].numpy(), n_sat)


__all__ = ["backward_sequence", "cell_backward", "cell_forward", "forward_sequence"]
