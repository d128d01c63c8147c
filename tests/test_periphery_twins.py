"""The compiled periphery twin reads exactly what the torch reference reads, bit for bit.

For one generator state the two must return equal tensors (``torch.equal``) and leave the
generator in the same state (the same draws, in the same order). Configurations are drawn at
random over every switch of the periphery, with inputs that saturate the ADC (so that bound
management re-reads rows), all-zero rows, and values on rounding ties.
"""

import functools
import itertools
import random

import pytest
import torch
from twin_cases import assert_same_reads, random_io, reads_by_both

from rpusim import RPUConfig, tile
from rpusim.config import IOConfig
from rpusim.model import CharLSTM
from rpusim.periphery import analog_mvm, is_ideal
from rpusim.periphery import numba as numba_periphery


def _inputs(rng: random.Random, gen: torch.Generator, batch: int, n: int) -> torch.Tensor:
    """Inputs of mixed scales (some far beyond the DAC range), with all-zero rows."""
    x = torch.randn(batch, n, generator=gen) * rng.choice([0.01, 1.0, 30.0])
    if batch > 1:
        x[1] = 0.0
    if rng.random() < 0.3:
        x[0] = 0.0
    return x


def _both(weights, x, io, transposed, seed=11, reads=2):
    return reads_by_both(weights, x, io, transposed, "numba", seed, reads)


@pytest.mark.parametrize("batch", [1, 7])
def test_twin_equals_reference_over_random_configs(batch, monkeypatch):
    # Count the twin's output-side passes: more than one per read means a bound-management re-read.
    passes = []
    kernel = numba_periphery._output_side_at
    monkeypatch.setattr(
        numba_periphery, "_output_side_at", lambda *args: passes.append(1) or kernel(*args)
    )
    rng = random.Random(batch)
    gen = torch.Generator().manual_seed(batch)
    n_reads = 0
    for case in range(60):
        io = random_io(rng)
        out_size, in_size = rng.choice([(24, 40), (5, 3), (64, 33), (256, 152)])
        weights = (torch.rand(out_size, in_size, generator=gen) - 0.5) * 1.2
        transposed = case % 2 == 1
        x = _inputs(rng, gen, batch, out_size if transposed else in_size)
        ref, twin = _both(weights, x, io, transposed, seed=case)
        assert_same_reads(ref, twin)
        n_reads += 2
    assert len(passes) - n_reads >= 10, "too few cases exercised bound management"


def test_every_switch_combination_forward_and_backward():
    """Each on/off combination of bits, stochastic rounding, NM, BM and noise, both directions."""
    gen = torch.Generator().manual_seed(3)
    weights = (torch.rand(20, 30, generator=gen) - 0.5) * 1.2
    switches = itertools.product(
        [None, 6],
        [False, True],
        ["abs_max", "none"],
        ["iterative", "none"],
        [0.0, 0.1],
        [False, True],
    )
    for inp_bits, sto, nm, bm, noise, transposed in switches:
        io = IOConfig(
            inp_bits=inp_bits,
            inp_sto_round=sto,
            noise_management=nm,
            bound_management=bm,
            out_noise=noise,
            out_bound=3.0,
        )
        x = torch.randn(4, 20 if transposed else 30, generator=gen) * 5
        x[2] = 0.0
        assert_same_reads(*_both(weights, x, io, transposed))


def test_bound_management_to_its_limit():
    """Rows that still saturate at ``max_bm_factor`` keep their last read, as in the reference."""
    weights = torch.full((6, 50), 0.5)
    x = torch.ones(3, 50)
    x[1] *= 1e-3  # with NM off, this row does not saturate
    for nm, limit in itertools.product(["abs_max", "none"], [1, 2, 8, 1024]):
        io = IOConfig(noise_management=nm, max_bm_factor=limit, out_bound=0.1, inp_bits=None)
        assert_same_reads(*_both(weights, x, io, transposed=False, reads=3))


def test_rounding_ties_go_to_even():
    # ADC step 1 (out_bound 15, 5 bits) and products on half integers: every output is a tie.
    io = IOConfig(
        noise_management="none",
        inp_bits=None,
        inp_bound=None,
        out_noise=0.0,
        out_bound=15.0,
        out_bits=5,
        bound_management="none",
    )
    weights = 0.5 * torch.eye(8)
    x = torch.arange(-8.0, 8.0).reshape(2, 8)
    ref, twin = _both(weights, x, io, transposed=False)
    assert_same_reads(ref, twin)
    assert torch.equal(ref[0][0], torch.round(x * 0.5))  # half to even: 0.5 -> 0, 1.5 -> 2


def test_non_finite_inputs_read_the_same():
    """A diverged network's NaN/inf inputs give the reference's NaN/inf, row by row."""
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(9, 6, generator=gen) * 0.3
    x = torch.randn(4, 6, generator=gen)
    x[0, 2], x[1, 0], x[2, 5] = float("nan"), float("inf"), -float("inf")
    for case in range(20):
        io = random_io(rng)
        (ys_ref, state_ref), (ys_twin, state_twin) = _both(weights, x, io, False, case)
        for y_ref, y_twin in zip(ys_ref, ys_twin, strict=True):
            torch.testing.assert_close(y_twin, y_ref, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(state_ref, state_twin)


def test_ideal_periphery_is_one_matmul_for_every_backend():
    io = RPUConfig.preset("ideal").forward
    assert is_ideal(io) and not is_ideal(RPUConfig().forward)
    gen = torch.Generator().manual_seed(0)
    weights, x, d = torch.randn(7, 5), torch.randn(3, 5), torch.randn(3, 7)
    for backend in ("auto", "numba", "torch"):
        assert torch.equal(analog_mvm(weights, x, io, gen, backend=backend), x @ weights.t())
        assert torch.equal(analog_mvm(weights, d, io, gen, True, backend=backend), d @ weights)


def test_auto_uses_the_reference_where_the_twin_does_not_apply():
    io = RPUConfig().forward
    weights = torch.randn(6, 4, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    y = analog_mvm(weights, x, io, torch.Generator().manual_seed(1))
    assert y.dtype == torch.float64
    assert torch.equal(
        y, analog_mvm(weights, x, io, torch.Generator().manual_seed(1), backend="torch")
    )
    # A strided input: the reference, which reads it as it is.
    w32, xt = weights.float(), torch.randn(4, 2).t()
    y = analog_mvm(w32, xt, io, torch.Generator().manual_seed(1))
    assert torch.equal(
        y, analog_mvm(w32, xt, io, torch.Generator().manual_seed(1), backend="torch")
    )
    with pytest.raises(ValueError, match="backend"):
        analog_mvm(w32, xt, io, None, backend="cuda")
    for w_bad, x_bad in ((weights, x), (w32, xt)):  # float64; strided
        with pytest.raises(ValueError, match="numba"):
            analog_mvm(w_bad, x_bad, io, None, backend="numba")


def test_charlstm_training_is_bit_identical_with_either_backend(monkeypatch):
    """Tiles dispatch to the twin: a training step (views as inputs, many reads) is unchanged."""

    def run():
        model = CharLSTM(11, 8, 2, RPUConfig.preset("rpu_baseline"), seed=0)
        ids = torch.randint(0, 11, (21, 2), generator=torch.Generator().manual_seed(0))
        state = model.init_state(2)
        losses = []
        for _ in range(2):
            loss, state = model.train_step(ids[:-1], ids[1:], state, lr=1.0)
            losses.append(loss)
        return losses, [t.get_weights() for t in model.tiles()]

    losses_twin, weights_twin = run()
    monkeypatch.setattr(tile, "analog_mvm", functools.partial(analog_mvm, backend="torch"))
    losses_ref, weights_ref = run()
    assert losses_twin == losses_ref
    assert all(torch.equal(a, b) for a, b in zip(weights_twin, weights_ref, strict=True))


def test_the_plan_record_holds_the_plan_by_name():
    """The compiled code reads the settings from the record (``p.dac.step``): every field of the
    plan, nested converters included, must arrive there with the plan's value (float32)."""
    import dataclasses

    import numpy as np

    from rpusim.periphery.plan import plan_of

    rng = random.Random(5)
    for _ in range(20):
        io = random_io(rng)
        plan = plan_of(io)
        assert plan_of(io) is plan  # made once per config object
        rec = plan.record[0]
        for f in dataclasses.fields(plan):
            value = getattr(plan, f.name)
            if dataclasses.is_dataclass(value):
                for g in dataclasses.fields(value):
                    assert rec[f.name][g.name] == getattr(value, g.name), (f.name, g.name)
            elif isinstance(value, float):
                assert rec[f.name] == np.float32(value), f.name
            else:
                assert rec[f.name] == value, f.name
        if io.inp_bits is not None:
            levels = 2**io.inp_bits - 2
            assert rec["dac"]["step"] == np.float32(2 * io.inp_bound / levels)
