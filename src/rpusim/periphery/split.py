"""An LSTM layer's reads split in time: the input part before the loop, ``dx`` after it.

An LSTM layer reads its whole tile at every step, ``a_t = W [x_t; h_{t-1}; 1]`` forward and
``W^T d_t`` backward (``docs/model.md`` section 7). Only part of each read depends on the
recurrence; the rest can be done for all ``T`` steps at once, as one matrix product, and the read
stays the same read (``docs/model.md`` section 7.1 says when, and why):

* **forward**: the DAC quantizes every input element on its own, once the scale ``alpha`` of
  noise management is known. With the bias input 1 on the array and ``|h| <= 1`` (always:
  ``h = o tanh(c)``), ``alpha_t = max(max|x_t|, 1)`` is known before the loop. So
  ``P_t = q(x_t / alpha_t) W_x^T`` for every step is one product before the loop, and step
  ``t`` sums ``P_t + q([h_{t-1}; 1] / alpha_t) [W_h, w_bias]^T``, then output noise, ADC and
  bound management as in a whole read. If the scale of the whole input differs from the one
  assumed (no bias input and ``max|h| > max|x|``, a non-finite input), the step reads the whole
  tile instead; so does every bound-management re-read.
* **backward**: the loop needs only ``dh_{t-1} = [W^T q(d_t / beta_t)]_h``. The ``dx`` part,
  ``[W^T q(d_t / beta_t)]_x``, is one product after the loop, with each step's own scale
  ``beta_t``, DAC output and output-noise draws, then the ADC element by element. The bias
  output of the read is never used. This needs bound management off (the default backward):
  with it on, a saturated ``dx`` element would trigger a re-read inside the loop.

Random draws are unchanged: each read draws its stochastic-rounding uniforms and its output noise
from the tile's generator as a whole read does, in the same order and the same shapes. Only the
float32 sums of the array are grouped differently (by parts of the tile, and for all steps at
once), so a split read and a whole read differ by float32 rounding before the ADC. A step's
product of few rows (the batch, at most ``rpusim.ordered.ROWS``) sums in input order
(:func:`rpusim.ordered.product`), not in the BLAS's grouping.

This module is the plain torch reference of the split reads; the CPU twin is the fused time loop
(:mod:`rpusim.lstm_loop`), held to it bit for bit. Shapes: ``n`` inputs, ``h`` units, the tile
``W`` (4h, n + h + 1); ``B`` batch rows; ``N = T * B`` rows of all steps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rpusim import ordered
from rpusim.config import IOConfig
from rpusim.periphery import analog_mvm_reference, is_ideal, noise_managed, quantize
from rpusim.periphery.noise import output_noise


def forward_applies(io: IOConfig) -> bool:
    """The forward read may be split: a periphery that does something, and nearest rounding in
    the DAC (stochastic rounding draws each read's uniforms just before it: the input part
    cannot be converted ahead)."""
    return not is_ideal(io) and not (io.inp_bits is not None and io.inp_sto_round)


def backward_applies(io: IOConfig) -> bool:
    """The backward read may be split: a periphery that does something, and no bound
    management (which needs every output of a read, ``dx`` included, inside the loop)."""
    return not is_ideal(io) and not (
        io.bound_management == "iterative" and io.out_bound is not None
    )


class SplitTile(NamedTuple):
    """The blocks of an LSTM layer's tile ``W`` (4h, n + h + 1) that the split reads use.

    Made once per sequence (the weights change only in the update). The blocks read in the
    loop are contiguous copies, laid out so that a step's product runs along rows (the
    matrix-vector product takes about half the time of one over a strided block of ``W``); both
    twins read these very layouts, so their products sum alike.
    """

    weights: torch.Tensor  #: W (4h, n + h + 1), for the whole reads
    n: int  #: the inputs x_t of the layer
    w_x: torch.Tensor  #: W_x (4h, n), a view: the input part, forward and backward
    w_hb_t: torch.Tensor  #: [W_h, w_bias]^T (h + 1, 4h), a copy: the forward read of [h; 1]
    w_h: torch.Tensor  #: W_h (4h, h), a copy: the backward read's dh outputs


def blocks(weights: torch.Tensor, n: int) -> SplitTile:
    """The :class:`SplitTile` of ``weights`` (4h, n + h + 1) for a layer of ``n`` inputs."""
    w_hb_t = weights[:, n:].t().contiguous()
    return SplitTile(weights, n, weights[:, :n], w_hb_t, weights[:, n:-1].contiguous())


def input_scale(x: torch.Tensor, io: IOConfig, bias: bool) -> torch.Tensor:
    """The noise-management scale a step's whole input will have, from its input part alone.

    x (N, n) -> alpha (N, 1): ``max(max|x|, 1)`` with the bias input 1, ``max|x|`` without
    (input 0). That is the whole input's ``max|[x; h; 1]|`` when ``max|h|`` is not larger,
    as always with the bias input 1 (``|h| <= 1``). 1 with ``noise_management: none``.
    """
    if io.noise_management != "abs_max":
        return torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
    alpha = x.abs().amax(dim=1, keepdim=True)
    return torch.maximum(alpha, torch.ones_like(alpha)) if bias else alpha


def forward_ahead(
    tile: SplitTile, x: torch.Tensor, io: IOConfig, bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input part of every step's forward read: ``(alpha, P)``.

    x (N, n): the inputs ``x_t`` of all steps, rows in the order time steps, then batch rows;
    ``bias``: the bias input is 1 (else 0). alpha (N, 1): :func:`input_scale`; P (N, 4h) =
    ``q(x / alpha) W_x^T``, the DAC exactly as a whole read converts these elements, then one
    product.
    """
    alpha = input_scale(x, io, bias)
    x_hat = x
    if io.noise_management == "abs_max":
        x_hat = x / torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    x_q = quantize(x_hat, io.inp_bits, io.inp_bound)
    return alpha, x_q @ tile.w_x.t()


def forward_read(
    tile: SplitTile,
    z: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
    p: torch.Tensor,
    alpha_ahead: torch.Tensor,
) -> torch.Tensor:
    """One step's forward read ``y = W z`` (B, 4h) from ``z = [x; h; 1]`` (B, n + h + 1) and the
    step's rows of :func:`forward_ahead` (``p`` (B, 4h), ``alpha_ahead`` (B, 1)).

    The array's sums are ``p + q([h; 1] / alpha) [W_h, w_bias]^T`` when the whole input's scale
    is the one assumed ahead (every row); else, and in every bound-management re-read, the
    whole tile.
    """
    alpha, _ = noise_managed(z, io)
    if not torch.equal(alpha, alpha_ahead):
        return analog_mvm_reference(tile.weights, z, io, generator)
    n, w_hb_t = tile.n, tile.w_hb_t

    def array(x_q: torch.Tensor) -> torch.Tensor:
        return p + ordered.product(x_q[:, n:].contiguous(), w_hb_t)

    return analog_mvm_reference(tile.weights, z, io, generator, array=array)


def backward_read(
    tile: SplitTile,
    d: torch.Tensor,
    io: IOConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """One step's backward read, its ``dh`` part: ``[W^T d]_h`` (B, h) from ``d`` (B, 4h).

    The read as a whole read does it (noise management, clip, DAC, the output noise of every
    output drawn), the array's sums and the ADC for the ``h`` outputs only. Also returns what
    :func:`backward_after` needs for the ``dx`` outputs: the DAC's output (B, 4h), the scale
    ``beta`` (B, 1) and this read's output noise of the ``dx`` outputs (B, n), or None.
    """
    n, h = tile.n, tile.w_h.shape[1]
    beta, d_hat = noise_managed(d, io)
    d_q = quantize(d_hat, io.inp_bits, io.inp_bound, io.inp_sto_round, generator)
    s = ordered.product(d_q, tile.w_h)
    noise_x = None
    if io.out_noise > 0:
        shape = (d.shape[0], tile.weights.shape[1])
        noise = output_noise(shape, generator, s.dtype, s.device)
        s = s + io.out_noise * noise[:, n : n + h]
        noise_x = noise[:, :n]
    return beta * quantize(s, io.out_bits, io.out_bound), (d_q, beta, noise_x)


def backward_after(
    tile: SplitTile,
    d_q: torch.Tensor,
    beta: torch.Tensor,
    noise_x: torch.Tensor | None,
    io: IOConfig,
) -> torch.Tensor:
    """The ``dx`` outputs of every step's backward read at once: ``[W^T d]_x`` (N, n).

    d_q (N, 4h), beta (N, 1), noise_x (N, n) or None: :func:`backward_read`'s of each step,
    stacked (a new tensor). One product, then each element's own output noise and ADC, and
    its row's scale.
    """
    s = d_q @ tile.w_x
    if noise_x is not None:
        s = s + io.out_noise * noise_x
    return beta * quantize(s, io.out_bits, io.out_bound)
