"""Cases shared by the twin tests: every compiled twin (numba, Triton) is held to the same torch
reference on the same inputs, so the tests draw them the same way."""

from __future__ import annotations

import random

import torch

from rpusim.config import IOConfig
from rpusim.periphery import analog_mvm


def random_io(rng: random.Random) -> IOConfig:
    """A periphery configuration drawn over every switch (bits, bounds, noise, NM, BM)."""
    inp_bits = rng.choice([None, 3, 5, 7])
    out_bits = rng.choice([None, 4, 9])
    return IOConfig(
        inp_bits=inp_bits,
        out_bits=out_bits,
        inp_bound=rng.choice([1.0, 0.7]) if inp_bits else rng.choice([None, 1.0, 0.7]),
        out_bound=rng.choice([12.0, 2.0, 0.7]) if out_bits else rng.choice([None, 12.0, 2.0]),
        out_noise=rng.choice([0.0, 0.06, 0.5]),
        inp_sto_round=rng.random() < 0.5,
        noise_management=rng.choice(["abs_max", "none"]),
        bound_management=rng.choice(["iterative", "none"]),
        max_bm_factor=rng.choice([1024, 4, 1]),
    )


def reads_by_both(weights, x, io, transposed, twin, seed=11, reads=2):
    """``reads`` reads in a row by the torch reference and by the backend ``twin``, each from
    its own generator seeded alike: ``((ys, generator state), (ys, generator state))``."""
    out = []
    for backend in ("torch", twin):
        gen = torch.Generator().manual_seed(seed)
        ys = [analog_mvm(weights, x, io, gen, transposed, backend=backend) for _ in range(reads)]
        out.append((ys, gen.get_state()))
    return out[0], out[1]


def assert_same_reads(ref, twin, equal_nan=False):
    """The twin's reads equal the reference's bit for bit (NaN in the same places, with
    ``equal_nan``), and it drew the same random numbers."""
    (ys_ref, state_ref), (ys_twin, state_twin) = ref, twin
    for y_ref, y_twin in zip(ys_ref, ys_twin, strict=True):
        assert y_ref.shape == y_twin.shape and y_ref.dtype == y_twin.dtype
        if equal_nan:
            torch.testing.assert_close(y_twin, y_ref, rtol=0, atol=0, equal_nan=True)
        else:
            assert torch.equal(y_ref, y_twin), (y_ref - y_twin).abs().max()
    assert torch.equal(state_ref, state_twin), "the twin drew different random numbers"


def update_pairs(gen: torch.Generator, n_pairs: int, n_out: int, n_in: int):
    """``x`` (K, in) and ``d`` (K, out) of an update test, with zero lines and whole zero pairs
    (no pulses there)."""
    x = torch.randn(n_pairs, n_in, generator=gen)
    d = 0.5 * torch.randn(n_pairs, n_out, generator=gen)
    x[:, :: max(2, n_in // 3)] = 0.0
    d[:, 1::4] = 0.0
    x[n_pairs // 2] = 0.0
    d[-1] = 0.0
    return x, d
