"""The split reads of an LSTM layer (``rpusim.periphery.split``) are the whole-tile read.

A split read groups the array's float32 sums otherwise (the input part of every step in one
product before the loop, the ``dx`` outputs in one product after it) and draws the same random
numbers. So:

* where it falls back (the whole input's scale is not the one assumed), it *is* the whole read:
  equal bit for bit;
* elsewhere it has the whole read's distribution: with independent seeds, every output's mean
  over many reads agrees within its standard error (the mean squared z-score of all outputs is
  1 within its own standard error), also when bound management re-reads rows and when the
  scale is not 1; with the same seeds, outputs differ at most by one ADC level, and rarely.

The compiled twin (the fused loop) is held to this reference bit for bit in
``tests/test_layers.py``.
"""

import math

import pytest
import torch

from rpusim import RPUConfig
from rpusim.layers import AnalogLSTMLayer
from rpusim.lstm_loop import one_hot_product
from rpusim.periphery import analog_mvm_reference
from rpusim.periphery import split as split_reads

N_IN, H = 11, 16
BASELINE = RPUConfig.preset("rpu_baseline")


def _weights(seed=0, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(4 * H, N_IN + H + 1, generator=gen)


def _inputs(batch, x_scale=1.0, bias=1.0, seed=1):
    """Forward inputs ``[x; h; bias]`` (batch, n + h + 1) with ``|h| < 1``."""
    gen = torch.Generator().manual_seed(seed)
    x = x_scale * (2 * torch.rand(batch, N_IN, generator=gen) - 1)
    h = 0.99 * torch.tanh(2 * torch.randn(batch, H, generator=gen))
    return torch.cat([x, h, torch.full((batch, 1), bias)], dim=1)


def _split_forward(W, z, io, gen, bias=True):
    tile = split_reads.blocks(W, N_IN)
    alpha, p = split_reads.forward_ahead(tile, z[:, :N_IN], io, bias)
    return split_reads.forward_read(tile, z, io, gen, p, alpha)


def _split_backward(W, d, io, gen):
    tile = split_reads.blocks(W, N_IN)
    dh, (d_q, beta, noise_x) = split_reads.backward_read(tile, d, io, gen)
    return dh, split_reads.backward_after(tile, d_q, beta, noise_x, io)


def _assert_same_distribution(whole, split):
    """``whole``, ``split`` (reads, outputs), drawn with independent seeds: each output's mean
    agrees within its standard error. The z-scores of M outputs are about N(0, 1), so their
    mean square is 1 within sqrt(2 / M) (5 standard errors allowed; constant outputs, zero
    variance both ways, must be equal)."""
    n = whole.shape[0]
    diff = whole.double().mean(0) - split.double().mean(0)
    var = (whole.double().var(0) + split.double().var(0)) / n
    constant = var == 0
    assert torch.equal(diff[constant], torch.zeros_like(diff[constant]))
    z2 = (diff[~constant] ** 2 / var[~constant]).mean().item()
    m = int((~constant).sum())
    assert m > 20
    assert abs(z2 - 1.0) < 5 * math.sqrt(2.0 / m), f"mean squared z-score {z2:.3f} over {m}"


def _reads(fn, reads, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([fn(gen) for _ in range(reads)])


def _adc_step(io):
    return 2 * io.out_bound / (2**io.out_bits - 2)


@pytest.mark.parametrize(
    "case, overrides, x_scale",
    [
        ("baseline, alpha = 1", {}, 1.0),
        ("inputs beyond 1, alpha = max|x| > 1", {}, 1.7),
        ("bound management re-reads", {"forward.out_bound": 2.9}, 1.0),
        ("no noise management", {"forward.noise_management": "none"}, 0.8),
    ],
)
def test_split_forward_read_has_the_whole_reads_distribution(case, overrides, x_scale):
    io = BASELINE.override(overrides).forward
    W, z = _weights(), _inputs(8, x_scale)
    if "bound" in case:  # some rows saturate at the first read (and are read again), some not
        saturates = (z @ W.t()).abs().amax(1) >= io.out_bound - 0.1
        assert bool(saturates.any()) and not bool(saturates.all())
    whole = _reads(lambda g: analog_mvm_reference(W, z, io, g), 3000, seed=5)
    split = _reads(lambda g: _split_forward(W, z, io, g), 3000, seed=6)
    _assert_same_distribution(whole.flatten(1), split.flatten(1))
    # With the same draws the two reads differ only where float32 rounding of the sums moves
    # an output across an ADC level: by one level (times the row's scale), and rarely.
    whole_same = _reads(lambda g: analog_mvm_reference(W, z, io, g), 300, seed=6)
    split_same = split[:300]
    delta = (whole_same - split_same).abs()
    scale = z.abs().amax(1, keepdim=True) if io.noise_management == "abs_max" else 1.0
    level = _adc_step(io) * scale
    if "bound" not in case:  # (a re-read after a flipped saturation differs by more)
        assert bool((delta <= 1.001 * level).all())
    assert delta.ne(0).double().mean() < 0.01


def test_split_forward_read_falls_back_to_the_whole_read():
    """Without the bias input and with ``max|h| > max|x|`` the scale assumed ahead is wrong:
    the read is the whole read, bit for bit, with the same draws."""
    io = BASELINE.forward
    W, z = _weights(), _inputs(3, x_scale=0.1, bias=0.0)
    tile = split_reads.blocks(W, N_IN)
    alpha, p = split_reads.forward_ahead(tile, z[:, :N_IN], io, bias=False)
    assert not torch.equal(alpha, z.abs().amax(1, keepdim=True))  # the assumption fails
    g_whole, g_split = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        y_whole = analog_mvm_reference(W, z, io, g_whole)
        y_split = split_reads.forward_read(tile, z, io, g_split, p, alpha)
        assert torch.equal(y_whole, y_split)
    assert torch.equal(g_whole.get_state(), g_split.get_state())


@pytest.mark.parametrize("overrides", [{}, {"backward.inp_sto_round": True}])
def test_split_backward_read_has_the_whole_reads_distribution(overrides):
    io = BASELINE.override(overrides).backward
    W = _weights()
    d = 0.05 * torch.randn(4, 4 * H, generator=torch.Generator().manual_seed(2))

    def whole(g):
        return analog_mvm_reference(W, d, io, g, transposed=True)[:, : N_IN + H]

    def split(g):
        dh, dx = _split_backward(W, d, io, g)
        return torch.cat([dx, dh], dim=1)

    _assert_same_distribution(_reads(whole, 3000, 5).flatten(1), _reads(split, 3000, 6).flatten(1))
    # The same draws: the generator ends where the whole read leaves it.
    g_whole, g_split = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    whole(g_whole), split(g_split)
    assert torch.equal(g_whole.get_state(), g_split.get_state())


def test_backward_split_needs_bound_management_off():
    assert split_reads.backward_applies(BASELINE.backward)
    io = BASELINE.override({"backward.bound_management": "iterative"}).backward
    assert not split_reads.backward_applies(io)
    io = BASELINE.override({"forward.inp_sto_round": True}).forward
    assert not split_reads.forward_applies(io)
    assert not split_reads.forward_applies(RPUConfig.preset("ideal").forward)


def test_one_hot_product_is_the_matrix_product():
    """The fused loop's column gather for one-hot inputs equals torch's product bit for bit,
    and declines inputs with two nonzeros in a row."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(4 * H, N_IN + H + 1, generator=gen)
    x = torch.zeros(50, N_IN)
    x[torch.arange(50), torch.randint(0, N_IN, (50,), generator=gen)] = 0.984252  # q(1)
    x[7] = 0.0  # a row without input
    p = torch.empty(50, 4 * H)
    assert one_hot_product(x.numpy(), W.numpy(), p.numpy())
    assert torch.equal(p, x @ W[:, :N_IN].t())
    x[3, :2] = 1.0
    assert not one_hot_product(x.numpy(), W.numpy(), p.numpy())


def test_layer_without_bias_falls_back_and_stays_bit_identical():
    """A layer without the bias input, fed small inputs, fails the scale assumption at many
    steps (those read the whole tile); the fused twin still equals the torch reference."""
    from rpusim import lstm_loop

    cfg = BASELINE
    gen = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(12, 2, N_IN, generator=gen)
    state = (0.9 * torch.ones(2, H), torch.ones(2, H))
    grad = 0.1 * torch.randn(12, 2, H, generator=gen)
    flags = []
    original = lstm_loop._Loop

    class Recorded(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            flags.append(self.split_at)

    out = []
    for fused in (True, False):
        layer = AnalogLSTMLayer(N_IN, H, cfg, seed=4, bias=False)
        layer.fused = fused
        lstm_loop._Loop = Recorded
        try:
            hs, (hT, cT) = layer.forward_sequence(x, state)
            dx = layer.backward_sequence(grad)
        finally:
            lstm_loop._Loop = original
        out.append((hs.clone(), hT, cT, dx, layer.recorded()[1], layer.tile.state_dict()))
    forward_flags = flags[0]
    assert 0 < int(forward_flags.sum()) < len(forward_flags)  # both kinds of steps ran
    for a, b in zip(*out, strict=True):
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
        else:
            assert torch.equal(a, b)
