"""Cases shared by the twin tests: every compiled twin (numba, Triton) is held to the same torch
reference on the same inputs, so the tests draw them the same way."""

from __future__ import annotations

import random

import torch

from rpusim.config import IOConfig, UpdateConfig
from rpusim.devices import MODELS, sample_devices
from rpusim.devices.presets import DEVICE_PRESETS, preset_section
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


#: Nodes of a piecewise-step device whose step changes across the range.
PIECEWISE = {
    "piecewise_up": [1.4, 1.1, 0.8, 0.5, 0.2],
    "piecewise_down": [0.3, 0.6, 0.9, 1.0, 1.5],
}

#: The device sections every update twin is held to the reference on: every model's defaults,
#: every preset, and a few models with a w-dependence their defaults lack.
TWIN_DEVICES = {
    **{f"{kind}-defaults": {"kind": kind} for kind in MODELS},
    **{f"preset-{name}": preset_section(name) for name in DEVICE_PRESETS},
    "linear_step-additive": {
        "kind": "linear_step",
        "gamma_up": 0.3,
        "gamma_down": 0.6,
        "mult_noise": False,
    },
    "pow_step-gamma2-asym": {"kind": "pow_step", "pow_gamma": 2.0, "pow_up_down": 0.3},
    "piecewise_step-5-nodes": {"kind": "piecewise_step", **PIECEWISE},
    "piecewise_step-3-nodes": {
        "kind": "piecewise_step",
        "piecewise_up": [2.0, 0.5, 0.0],
        "piecewise_down": [0.0, 1.0, 1.8],
    },
}

#: Update and BL management, each on and off.
MANAGEMENTS = ("none", "um", "blm", "um+blm")


def device_update_case(
    case: str, management: str, n_out: int = 5, n_in: int = 67, change: dict | None = None
):
    """An update of 8 pairs on the devices ``TWIN_DEVICES[case]`` (drawn with their d2d spread):
    weights inside the bounds and on them, a pair with saturated probabilities (``p = 1``) and
    pairs without pulses, about 10 coincidences per pair for ``|x d| ~ 1/4``.

    ``change``: keys of the device section to set differently. Returns ``(w0, x, d, lr, dev,
    cfg, dw_min)``.
    """
    section = {**TWIN_DEVICES[case], **(change or {})}
    cfg_dev = MODELS[section.get("kind", "constant_step")].Config(**section)
    dev = sample_devices(cfg_dev, n_out, n_in, torch.Generator().manual_seed(len(case)))
    gen = torch.Generator().manual_seed(len(case) + 7)
    x, d = update_pairs(gen, 8, n_out, n_in)
    x[1] *= 100.0  # saturates: p = 1 on most lines
    frac = torch.rand(n_out, n_in, generator=gen)
    w0 = dev.w_min + frac * (dev.w_max - dev.w_min)
    w0.view(-1)[::7] = dev.w_max.reshape(-1)[::7]
    w0.view(-1)[3::11] = dev.w_min.reshape(-1)[3::11]
    cfg = UpdateConfig(
        bl=31, update_management="um" in management, bl_management="blm" in management
    )
    return w0, x, d, 40 * cfg_dev.dw_min, dev, cfg, cfg_dev.dw_min
