"""The forward/backward periphery: DAC, stochastic rounding, output noise, ADC, bound management.

Statistical claims use a fixed seed and a tolerance of a few standard errors of the measured
statistic (4 SE: a false alarm rate of about 6e-5 per check).
"""

import math

import pytest
import torch

from rpusim import AnalogTile, RPUConfig
from rpusim.periphery import quantize

Z = 4.0  # tolerance in standard errors

# A device without spread, so that programmed weights are exact.
EXACT_DEVICE = {
    "device.dw_min_dtod": 0.0,
    "device.up_down_dtod": 0.0,
    "device.w_max_dtod": 0.0,
    "device.w_min_dtod": 0.0,
}


def _tile(out_size, in_size, seed=0, **changes):
    cfg = RPUConfig().override({**EXACT_DEVICE, **changes})
    return AnalogTile(out_size, in_size, cfg, seed=seed)


def test_ideal_tile_reads_are_exact_products():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(7, 5, generator=gen)
    x = torch.randn(11, 5, generator=gen) * 30
    d = torch.randn(11, 7, generator=gen) * 30
    tile = AnalogTile(7, 5, RPUConfig.preset("ideal"), seed=3)
    tile.set_weights(w)
    torch.testing.assert_close(tile.forward(x), x @ w.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tile.backward(d), d @ w, rtol=1e-6, atol=1e-6)


def test_ideal_tile_float_update_is_exact_sgd():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, generator=gen)
    x, d = torch.randn(9, 4, generator=gen), torch.randn(9, 6, generator=gen)
    tile = AnalogTile(6, 4, RPUConfig.preset("ideal"), seed=0)
    tile.set_weights(w)
    tile.update(x, d, lr=0.1)
    assert torch.equal(tile.get_weights(), w - 0.1 * (d.T @ x))


def test_dac_has_at_most_2n_minus_1_levels_reaching_the_array():
    # Read an identity array: the output is alpha * (quantized input), so the levels are visible.
    n = 32
    for bits in (3, 5, 7):
        tile = _tile(
            n,
            n,
            **{
                "forward.inp_bits": bits,
                "forward.out_bits": None,
                "forward.out_noise": 0.0,
                "forward.bound_management": "none",
            },
        )
        tile.set_weights(0.5 * torch.eye(n))
        x = torch.linspace(-1, 1, 4000).reshape(-1, n)
        x[:, 0] = 1.0  # alpha = max|x| = 1 in every row
        levels = torch.unique(tile.forward(x) / 0.5)
        assert len(levels) == 2**bits - 1
        step = 2.0 / (2**bits - 2)
        torch.testing.assert_close(levels, torch.round(levels / step) * step)


def test_stochastic_rounding_is_unbiased_and_nearest_rounding_is_not():
    bits, n_reads = 5, 40000
    step = 2.0 / (2**bits - 2)
    x0 = 3.3 * step  # 0.3 of a step above a level
    x = torch.tensor([[1.0, x0]]).repeat(n_reads, 1)  # first input fixes alpha = 1
    w = torch.tensor([[0.0, 0.5]])
    exact = 0.5 * x0
    for sto in (True, False):
        tile = _tile(
            1,
            2,
            **{
                "forward.inp_bits": bits,
                "forward.inp_sto_round": sto,
                "forward.out_bits": None,
                "forward.out_noise": 0.06,
            },
        )
        tile.set_weights(w)
        y = tile.forward(x)[:, 0].double()
        se = y.std().item() / math.sqrt(n_reads)
        bias = y.mean().item() - exact
        if sto:
            assert abs(bias) < Z * se
        else:
            # Nearest rounding maps x0 to 3 steps: a bias of -0.3 step * w, far beyond the noise.
            assert abs(bias - 0.5 * (-0.3 * step)) < Z * se
            assert abs(bias) > 20 * se


def test_output_noise_has_the_configured_std():
    sigma, n_reads = 0.06, 20000
    tile = _tile(4, 3, **{"forward.out_noise": sigma, "forward.out_bits": None})
    tile.set_weights(torch.zeros(4, 3))
    y = tile.forward(torch.ones(n_reads, 3)).flatten().double()  # alpha = 1, W x = 0
    se_std = sigma / math.sqrt(2 * y.numel())
    assert abs(y.std().item() - sigma) < Z * se_std
    assert abs(y.mean().item()) < Z * sigma / math.sqrt(y.numel())


def test_adc_clips_at_out_bound_and_quantizes():
    bits, bound = 5, 2.0
    tile = _tile(
        3,
        8,
        **{
            "forward.out_bits": bits,
            "forward.out_bound": bound,
            "forward.out_noise": 0.0,
            "forward.bound_management": "none",
        },
    )
    tile.set_weights(torch.tensor([[0.5] * 8, [0.11] * 8, [-0.5] * 8]))
    y = tile.forward(torch.ones(1, 8))[0]  # products 4.0, 0.88, -4.0 with alpha = 1
    step = 2 * bound / (2**bits - 2)
    assert y[0].item() == bound and y[2].item() == -bound
    # 0.88 is 6.6 ADC steps: it reads as 7 steps.
    assert y[1].item() == pytest.approx(7 * step, rel=1e-6)


def test_bound_management_recovers_a_product_far_above_out_bound():
    n = 64
    w = torch.full((2, n), 0.5)
    x = torch.ones(200, n)  # W x = 32, far above out_bound = 12
    sigma = 0.06
    for bm in ("iterative", "none"):
        # No DAC quantization here: halving 1.0 would land between DAC levels and bias the product.
        tile = _tile(2, n, **{"forward.bound_management": bm, "forward.inp_bits": None})
        tile.set_weights(w)
        y = tile.forward(x).double()
        if bm == "none":
            assert torch.all(y == 12.0)
        else:
            # Two halvings bring 32 down to 8 < 12; the read is scaled back by 4, so the noise and
            # half an ADC step are scaled by 4 too.
            step = 24.0 / (2**9 - 2)
            se = 4 * sigma / math.sqrt(y.numel())
            assert abs(y.mean().item() - 32.0) < Z * se + 4 * step / 2
            assert y.std().item() < 4 * (sigma + step)


def test_noise_management_zero_input_gives_exact_zero():
    tile = _tile(3, 4)
    tile.set_weights(torch.full((3, 4), 0.3))
    assert torch.equal(tile.forward(torch.zeros(5, 4)), torch.zeros(5, 3))


def test_quantize_levels_and_bounds():
    v = torch.linspace(-3, 3, 1001)
    q = quantize(v, 3, 1.0)
    assert q.min() == -1.0 and q.max() == 1.0
    assert len(torch.unique(q)) == 7
