"""AnalogTile: determinism, weight programming, device draws (d2d spread), checkpoint state."""

import math

import pytest
import torch

from rpusim import AnalogTile, RPUConfig

Z = 4.0


def _run(seed):
    tile = AnalogTile(16, 12, RPUConfig(), seed=seed)
    gen = torch.Generator().manual_seed(0)
    tile.set_weights(0.2 * torch.randn(16, 12, generator=gen))
    x, d = torch.randn(30, 12, generator=gen), 0.1 * torch.randn(30, 16, generator=gen)
    ys = [tile.forward(x), tile.backward(d)]
    tile.update(x, d, lr=0.05)
    return ys + [tile.get_weights()]


def test_child_seed_is_the_first_word_of_numpys_seed_sequence():
    """The compiled seed derivation (rpusim.seeds) gives numpy's SeedSequence word for entropy
    of 1 to 7 words (inside and beyond the pool of 4), edge values included, and beyond 32 bits
    falls back to numpy itself (and its error for a negative value)."""
    import random

    import numpy as np

    from rpusim.seeds import child_seed

    def numpys(*values):
        state = np.random.SeedSequence(list(values)).generate_state(1, np.uint32)
        return int(state[0]) & 0x7FFFFFFF

    rnd = random.Random(0)
    cases = [(0,), (0, 0), (2**32 - 1, 3), (5, 2**32 - 1, 0), (2**40, 3), (7, 1, 2, 3, 4, 5, 6)]
    for _ in range(500):
        pick = [lambda: rnd.randint(0, 9), lambda: rnd.randint(0, 2**32 - 1)]
        cases.append(tuple(rnd.choice(pick)() for _ in range(rnd.randint(1, 7))))
    assert [child_seed(*c) for c in cases] == [numpys(*c) for c in cases]
    with pytest.raises(ValueError, match="non-negative"):
        child_seed(-1, 2)


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    a, b, c = _run(5), _run(5), _run(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not any(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_set_weights_clips_to_each_devices_own_bounds():
    tile = AnalogTile(20, 30, RPUConfig(), seed=1)
    tile.set_weights(torch.full((20, 30), 10.0))
    state = tile.device_state()
    assert torch.equal(tile.get_weights(), state["w_max"])
    tile.set_weights(torch.full((20, 30), -10.0))
    assert torch.equal(tile.get_weights(), state["w_min"])
    assert set(state) == {"dw_up", "dw_down", "w_max", "w_min", "w_sym"}
    assert all(v.shape == (20, 30) for v in state.values())


def test_get_weights_is_a_copy():
    tile = AnalogTile(2, 2, RPUConfig.preset("ideal"))
    w = tile.get_weights()
    w += 1
    assert torch.equal(tile.get_weights(), torch.zeros(2, 2))


def _sample_std_ok(values, mean, std):
    n = values.numel()
    v = values.double()
    assert abs(v.mean().item() - mean) < Z * std / math.sqrt(n)
    assert abs(v.std().item() - std) < Z * std / math.sqrt(2 * (n - 1))


def test_device_to_device_spreads_match_the_config():
    cfg = RPUConfig().override({"device.up_down": 0.0})
    state = AnalogTile(300, 300, cfg, seed=2).device_state()
    dw, dtod, ud_dtod = 0.001, 0.3, 0.01
    # dw_up = dw_min (g + r): mean dw_min, std dw_min sqrt(dtod^2 + ud_dtod^2).
    _sample_std_ok(state["dw_up"], dw, dw * math.hypot(dtod, ud_dtod))
    _sample_std_ok(state["dw_down"], dw, dw * math.hypot(dtod, ud_dtod))
    _sample_std_ok(state["w_max"], 0.6, 0.6 * 0.3)
    _sample_std_ok(state["w_min"], -0.6, 0.6 * 0.3)
    # Up and down steps share the gain g: their difference is 2 r, spread 2 * ud_dtod * dw_min.
    _sample_std_ok(state["dw_up"] - state["dw_down"], 0.0, 2 * ud_dtod * dw)
    assert torch.all(state["dw_up"] >= 0) and torch.all(state["w_min"] <= 0)


@pytest.mark.parametrize("beta", [0.05, -0.05])
def test_mean_asymmetry_shifts_up_and_down_steps(beta):
    cfg = RPUConfig().override(
        {"device.up_down": beta, "device.dw_min_dtod": 0.0, "device.up_down_dtod": 0.0}
    )
    state = AnalogTile(4, 4, cfg).device_state()
    up, down = state["dw_up"][0, 0].item(), state["dw_down"][0, 0].item()
    assert up / down == pytest.approx(1 / (1 - beta) if beta > 0 else 1 + beta, rel=1e-5)


def test_state_dict_round_trip_continues_bit_identically():
    cfg = RPUConfig()
    a = AnalogTile(8, 6, cfg, seed=3)
    a.set_weights(0.1 * torch.ones(8, 6))
    x, d = torch.randn(10, 6), 0.1 * torch.randn(10, 8)
    a.update(x, d, 0.1)
    a.forward(x)
    b = AnalogTile(8, 6, cfg, seed=99)
    b.load_state_dict(a.state_dict())
    for t in (a, b):
        t.update(x, d, 0.1)
    assert torch.equal(a.forward(x), b.forward(x))
    assert torch.equal(a.get_weights(), b.get_weights())


def test_bad_shapes_are_refused():
    tile = AnalogTile(3, 2, RPUConfig())
    with pytest.raises(ValueError, match=r"forward: expected shape \(\.\.\., 2\)"):
        tile.forward(torch.ones(4, 3))
    with pytest.raises(ValueError, match="set_weights: expected shape"):
        tile.set_weights(torch.ones(2, 3))
    with pytest.raises(ValueError, match="update: x has 4 rows but d has 5"):
        tile.update(torch.ones(4, 2), torch.ones(5, 3), 0.1)
