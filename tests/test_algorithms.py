"""Learning algorithms (``rpu.algorithm``, docs/model.md section 8): each test one claim.

Statistical claims are checked against the standard error (SE) of the test's own samples with a
fixed seed; a tolerance of ``Z`` SE makes a false alarm a ~1e-5 event per check.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from rpusim import AnalogTile, RPUConfig
from rpusim.algorithms import ALGORITHMS
from rpusim.algorithms.pulses import apply_pulse_counts
from rpusim.config import ALGORITHMS as ALGORITHM_NAMES
from rpusim.devices import MODELS
from rpusim.schema import ConfigError
from rpusim.tile import child_seed
from rpusim.update import pulsed_update

Z = 4.5  # tolerance in standard errors
DW = 0.001

#: A symmetric device without noise or bounds: every coincidence moves the weight by dw_min.
IDEAL_DEVICE = {
    "device.dw_min": DW,
    "device.dw_min_dtod": 0.0,
    "device.dw_min_std": 0.0,
    "device.up_down_dtod": 0.0,
    "device.w_max": None,
    "device.w_min": None,
}
#: A transfer read that is exactly the column of A.
IDEAL_TRANSFER_READ = {
    "transfer_forward.inp_bits": None,
    "transfer_forward.out_bits": None,
    "transfer_forward.inp_bound": None,
    "transfer_forward.out_bound": None,
    "transfer_forward.out_noise": 0.0,
}


def config(algorithm: str, **section) -> RPUConfig:
    changes = {"algorithm": algorithm, **IDEAL_DEVICE, **IDEAL_TRANSFER_READ}
    changes.update({f"{algorithm}.{k}": v for k, v in section.items()})
    return RPUConfig().override(changes)


def assert_mean_zero(samples: torch.Tensor, what: str) -> None:
    """The mean of ``samples`` (independent) is zero within Z standard errors."""
    s = samples.double().reshape(-1)
    se = s.std().item() / math.sqrt(s.numel())
    assert se > 0, f"{what}: no spread to judge by"
    assert abs(s.mean().item()) < Z * se, f"{what}: mean {s.mean().item():.3g}, SE {se:.3g}"


def test_config_names_every_algorithm_and_refuses_the_float_update():
    assert tuple(ALGORITHMS) == ALGORITHM_NAMES
    assert RPUConfig().algorithm == "sgd"
    with pytest.raises(ConfigError, match="needs update.mode pulsed"):
        RPUConfig.preset("ideal").override({"algorithm": "ttv2"})


def test_sgd_is_the_plain_pulsed_update_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    x, d = torch.randn(2, 9, 7, generator=gen), 0.1 * torch.randn(2, 9, 5, generator=gen)
    w0 = 0.1 * torch.randn(5, 7, generator=gen)
    tile = AnalogTile(5, 7, RPUConfig().override({"algorithm": "sgd"}), seed=4)
    tile.set_weights(w0)
    w = tile.get_weights()
    dev = tile._dev
    for call in range(2):
        tile.update(x[call], d[call], lr=0.1)
        key = child_seed(4, 3, call)  # the tile's update stream, one key per call
        pulsed_update(w, x[call], d[call], 0.1, dev, RPUConfig().update, DW, key)
    assert torch.equal(tile.get_weights(), w)
    assert "algorithm" not in tile.state_dict()  # sgd checkpoints are as before


def test_a_transfer_moves_the_read_column_of_A_into_C():
    """TTv1, one transfer reading every column once: C changes by A in expectation (the pulsed
    write is stochastic); per column the residual summed over rows is one independent sample."""
    n_out, n_in, seeds = 12, 8, 60
    cfg = config("tiki_taka", n_reads_per_transfer=n_in, transfer_lr=1.0, scale_transfer_lr=False)
    gen = torch.Generator().manual_seed(1)
    residuals = []
    for seed in range(seeds):
        tile = AnalogTile(n_out, n_in, cfg, seed=seed)
        algo = tile.algorithm
        c0 = 0.05 * torch.randn(n_out, n_in, generator=gen)
        tile.set_weights(c0)
        algo.A.copy_(torch.empty(n_out, n_in).uniform_(-0.006, 0.006, generator=gen))
        a = algo.A.clone()
        algo.transfer(lr=1.0)
        algo.sync()
        state = tile.device_state()
        assert torch.equal(state["A"], a)  # the read does not disturb A (no reset)
        assert torch.equal(tile.get_weights(), state["C"])  # gamma = 0: W = C
        residuals.append((state["C"] - c0 - a).sum(dim=0))
    assert_mean_zero(torch.cat(residuals), "C - C0 - A")


def test_transfers_take_the_columns_in_turn_on_the_configured_schedule():
    cfg = config("tiki_taka", n_reads_per_transfer=2, transfer_every=3, units_in_mbatch=False)
    tile = AnalogTile(3, 5, cfg, seed=0)
    algo = tile.algorithm
    algo.A.fill_(0.004)
    x, d = torch.zeros(7, 5), torch.zeros(7, 3)  # no gradient: only transfers move C
    tile.update(x, d, lr=1.0)  # 7 pairs: transfers after pairs 3 and 6 -> columns 0-3
    moved = (tile.device_state()["C"] != 0).any(dim=0)
    assert moved.tolist() == [True, True, True, True, False]
    assert algo.schedule.count == 1 and algo.next_col == 4


def test_the_buffer_emits_trunc_H_pulses_and_keeps_the_rest():
    """TTv2 without noise: the read column adds A / dw_min to H; trunc(H) single pulses go to C
    (each exactly dw_min here) and H keeps the remainder (momentum 0, no forgetting); with
    forget_buffer H keeps momentum x H where pulses were sent."""
    n_out, n_in = 6, 4
    gen = torch.Generator().manual_seed(2)
    for forget in (False, True):
        cfg = config(
            "ttv2",
            n_reads_per_transfer=n_in,
            transfer_lr=1.0,
            scale_transfer_lr=False,
            forget_buffer=forget,
            momentum=0.1 if forget else 0.0,
            max_pulses=64,
        )
        tile = AnalogTile(n_out, n_in, cfg, seed=0)
        algo = tile.algorithm
        algo.A.copy_(DW * 6 * torch.rand(n_out, n_in, generator=gen) - 3 * DW)
        algo.H.copy_(4 * torch.rand(n_out, n_in, generator=gen) - 2)
        h = algo.H + algo.A / DW
        algo.transfer(lr=1.0)
        n = torch.trunc(h)
        assert n.abs().max() >= 2 and (n == 0).any()  # several pulses, and none, both occur
        torch.testing.assert_close(algo.C, n * DW, rtol=0, atol=1e-7)
        kept = torch.where(n != 0, 0.1 * h, h) if forget else h - n
        torch.testing.assert_close(algo.H, kept, rtol=0, atol=1e-5)


def test_mixed_precision_sends_trunc_chi_pulses_and_keeps_the_remainder():
    tile = AnalogTile(5, 4, config("mixed_precision", transfer_every=2), seed=0)
    gen = torch.Generator().manual_seed(3)
    x, d = torch.randn(2, 4, generator=gen), torch.randn(2, 5, generator=gen)
    lr = 3 * DW
    tile.update(x[:1], d[:1], lr)  # one pair: accumulated, no transfer yet
    chi1 = -lr * torch.outer(d[0], x[0])
    torch.testing.assert_close(tile.device_state()["chi"], chi1)
    assert torch.equal(tile.get_weights(), torch.zeros(5, 4))
    tile.update(x[1:], d[1:], lr)  # the second pair completes the period: transfer
    chi = chi1 - lr * torch.outer(d[1], x[1])
    n = torch.trunc(chi / DW)
    assert n.abs().max() >= 2
    torch.testing.assert_close(tile.get_weights(), n * DW, rtol=0, atol=1e-7)
    torch.testing.assert_close(tile.device_state()["chi"], chi - n * DW, rtol=0, atol=1e-6)


def test_single_pulses_go_through_any_device_model():
    """apply_pulse_counts uses the model's own response: a soft-bounds device's n up pulses
    (no noise) are n applications of its step, each smaller as w rises."""
    cfg = RPUConfig().override(
        {"device.kind": "soft_bounds", "device.dw_min_std": 0.0, "device.dw_min_dtod": 0.0}
    )
    tile = AnalogTile(2, 3, cfg, seed=0)
    dev, w = tile._dev, torch.zeros(2, 3)
    counts = torch.tensor([[3.0, 0.0, -2.0], [1.0, 5.0, 0.0]])
    apply_pulse_counts(w, counts, dev, key=0)
    from rpusim.devices.base import expected_steps

    expect = torch.zeros(2, 3, dtype=torch.float64)
    for m in range(5):
        up, down = expected_steps(dev, expect)
        step = torch.where(counts > 0, up, -down)
        expect = torch.where(counts.abs() > m, (expect + step).float().double(), expect)
    torch.testing.assert_close(w.double(), expect, rtol=0, atol=1e-7)
    assert w[1, 1] < 5 * dev.dw_up[1, 1]  # soft bounds: later pulses are smaller


def test_choppers_switch_with_the_configured_probability():
    n_in, calls, p = 50, 30, 0.3
    tile = AnalogTile(
        3,
        n_in,
        config("c_ttv2", in_chop_prob=p, n_reads_per_transfer=n_in, units_in_mbatch=True),
        seed=0,
    )
    zeros_x, zeros_d = torch.zeros(1, n_in), torch.zeros(1, 3)
    signs = []
    for _ in range(calls):
        tile.update(zeros_x, zeros_d, lr=1.0)  # one transfer: every column read once
        signs.append(tile.algorithm.chop.clone())
    flips = torch.stack(signs).diff(dim=0).ne(0).double().reshape(-1)
    n = flips.numel()
    assert abs(flips.mean().item() - p) < Z * math.sqrt(p * (1 - p) / n)
    # AGAD switches regularly: every round(1 / p) = 4 reads of a column.
    tile = AnalogTile(
        3,
        n_in,
        config("agad", in_chop_prob=0.25, n_reads_per_transfer=n_in, units_in_mbatch=True),
        seed=0,
    )
    for _ in range(12):
        tile.update(zeros_x, zeros_d, lr=1.0)
    assert tile.algorithm.n_switches == 3 * n_in
    assert torch.equal(tile.algorithm.chop, -torch.ones(n_in))  # switched an odd number of times


def test_the_dechopped_read_recovers_the_unchopped_gradient():
    """c_ttv2: with chopper c the pair writes -lr d (c x)^T onto A; the read times c is the
    un-chopped -lr d x^T in expectation."""
    n_out, n_in, seeds, lr = 4, 6, 150, 4 * DW
    cfg = config("c_ttv2", fast_lr=lr, in_chop_prob=0.0)
    gen = torch.Generator().manual_seed(5)
    sign = lambda n: torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)  # noqa: E731
    x = sign(n_in) * (0.5 + 0.5 * torch.rand(n_in, generator=gen))
    d = sign(n_out) * (0.5 + 0.5 * torch.rand(n_out, generator=gen))
    chop = sign(n_in)
    cols = list(range(n_in))
    raw, dechopped = [], []
    for seed in range(seeds):
        tile = AnalogTile(n_out, n_in, cfg, seed=seed)
        algo = tile.algorithm
        algo.chop.copy_(chop)
        algo.write_fast(x[None], d[None], lr)
        v = algo.read_columns(cols)
        raw.append(v)
        dechopped.append(algo.buffer_input(cols, v))
    grad = -lr * torch.outer(d, x)
    raw, dechopped = torch.stack(raw), torch.stack(dechopped)
    for got, want, what in ((raw, grad * chop, "chopped A"), (dechopped, grad, "de-chopped")):
        mean, se = got.double().mean(0), got.double().std(0) / math.sqrt(seeds)
        assert (se > 0).all()
        assert ((mean - want).abs() < Z * se).all(), what
    assert ((chop < 0) & (raw.mean(0) * grad > 0)).sum() == 0  # flipped columns really flip


def test_tiki_taka_follows_sgd_in_expectation_on_an_ideal_device():
    """TTv1 with W = A + C (gamma 1), every column transferred after each update call with
    transfer_lr 1 and A's column reset after its transfer: the transfer moves A into C without
    changing W in expectation, so E[W] is the SGD trajectory W0 - lr sum d x^T."""
    n_out, n_in, seeds, lr = 5, 4, 120, 1.0 * DW
    cfg = config(
        "tiki_taka",
        gamma=1.0,
        n_reads_per_transfer=n_in,
        transfer_lr=1.0,
        scale_transfer_lr=False,
        with_reset_prob=1.0,
    )
    gen = torch.Generator().manual_seed(6)
    w0 = 0.05 * torch.randn(n_out, n_in, generator=gen)
    xs = torch.rand(4, 3, n_in, generator=gen) * 2 - 1
    ds = torch.rand(4, 3, n_out, generator=gen) * 2 - 1
    sgd = w0.double() - lr * torch.einsum("tko,tki->oi", ds.double(), xs.double())
    finals = []
    for seed in range(seeds):
        tile = AnalogTile(n_out, n_in, cfg, seed=seed)
        tile.set_weights(w0)
        for t in range(4):
            tile.update(xs[t], ds[t], lr)
            state = tile.device_state()
            torch.testing.assert_close(tile.get_weights(), state["A"] + state["C"])
        assert torch.equal(state["A"], torch.zeros(n_out, n_in))  # reset after the transfer
        finals.append(tile.get_weights())
    got = torch.stack(finals).double()
    mean, se = got.mean(0), got.std(0) / math.sqrt(seeds)
    assert (se > 0).all()
    assert ((mean - sgd).abs() < Z * se).all()


def _run(tile: AnalogTile, calls: int, gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for _ in range(calls):
        x, d = (
            torch.randn(7, tile.in_size, generator=gen),
            torch.randn(7, tile.out_size, generator=gen),
        )
        tile.update(x, 0.3 * d, lr=0.05)
        out.append(tile.forward(x))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_exact_resume_from_a_checkpoint(algorithm):
    """state_dict (through torch.save) into a fresh tile: the same results afterwards, bit for
    bit (noisy devices and reads; transfers every 3 pairs, so a checkpoint falls mid-period)."""
    changes = {"algorithm": algorithm}
    if algorithm not in ("sgd", "mixed_precision"):
        changes.update({f"{algorithm}.transfer_every": 3, f"{algorithm}.units_in_mbatch": False})
        changes[f"{algorithm}.n_reads_per_transfer"] = 2
    if algorithm in ("ttv2", "c_ttv2", "agad"):
        changes[f"{algorithm}.auto_scale"] = True
    if algorithm in ("c_ttv2", "agad"):
        changes[f"{algorithm}.in_chop_prob"] = 0.5
    cfg = RPUConfig().override(changes)
    tile = AnalogTile(6, 5, cfg, seed=3)
    tile.set_weights(0.1 * torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(1)
    _run(tile, 3, gen)
    buf = io.BytesIO()
    torch.save(tile.state_dict(), buf)
    buf.seek(0)
    resumed = AnalogTile(6, 5, cfg, seed=3)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    state = gen.get_state()
    a = _run(tile, 3, gen)
    gen.set_state(state)
    b = _run(resumed, 3, gen)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for key, value in tile.device_state().items():
        assert torch.equal(value.nan_to_num(), resumed.device_state()[key].nan_to_num()), key
    if algorithm != "sgd":
        assert tile.state_dict()["algorithm"]["name"] == algorithm
        with pytest.raises(ValueError, match="written by algorithm"):
            AnalogTile(6, 5, RPUConfig(), seed=3).load_state_dict(tile.state_dict())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_device_model_learns_under_every_algorithm(kind):
    gen = torch.Generator().manual_seed(7)
    x, d = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    for algorithm in ALGORITHM_NAMES:
        cfg = RPUConfig().override({"device.kind": kind, "algorithm": algorithm})
        tile = AnalogTile(2, 3, cfg, seed=0)
        tile.set_weights(torch.full((2, 3), 0.1))
        for _ in range(3):
            tile.update(x, d, lr=0.5)
        state = tile.device_state()
        moved = state.get("A", tile.get_weights()) - (0 if "A" in state else 0.1)
        assert torch.isfinite(tile.get_weights()).all(), (kind, algorithm)
        assert (moved != 0).any(), (kind, algorithm)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_single_pulses_numba_twin_is_the_torch_reference_bit_for_bit(kind):
    """apply_pulse_counts compiled and in plain torch: the same counter-based normals, the same
    weights (devices near their bounds, counts of both signs, several pulses per device)."""
    cfg = RPUConfig().override({"device.kind": kind})
    dev = AnalogTile(11, 70, cfg, seed=4)._dev
    gen = torch.Generator().manual_seed(8)
    w0 = torch.clamp(0.4 * torch.randn(11, 70, generator=gen), dev.w_min, dev.w_max)
    counts = torch.randint(-6, 7, (11, 70), generator=gen).float()
    counts *= torch.rand(11, 70, generator=gen) < 0.5
    outs = []
    for backend in ("torch", "numba"):
        for call in (0, 1):
            w = w0.clone()
            apply_pulse_counts(w, counts, dev, key=5, call=call, backend=backend)
            outs.append(w)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert not torch.equal(outs[0], outs[1])  # another call draws other normals
    untouched = counts == 0
    assert torch.equal(outs[0][untouched], w0[untouched]) and (outs[0] != w0).any()


@pytest.mark.parametrize(
    ("algorithm", "kind", "section"),
    [
        ("ttv2", "constant_step", {}),
        (
            "ttv2",
            "pow_step",
            {
                "units_in_mbatch": False,
                "transfer_every": 2,
                "n_reads_per_transfer": 3,
                "with_reset_prob": 0.3,
                "forget_buffer": False,
                "momentum": 0.3,
                "max_pulses": 3,
            },
        ),
        ("c_ttv2", "constant_step", {}),
        ("c_ttv2", "soft_bounds", {"n_reads_per_transfer": 2, "in_chop_prob": 0.4}),
        ("agad", "soft_bounds", {"n_reads_per_transfer": 2, "in_chop_prob": 0.5}),
        ("agad", "piecewise_step", {"max_pulses": 2, "in_chop_prob": 0.3}),
    ],
)
def test_the_compiled_update_loop_is_the_torch_one_bit_for_bit(algorithm, kind, section):
    """TTv2's update call (pairs onto A, reads, buffer, pulses to C, choppers) compiled
    (rpusim.algorithms.fused) and in plain torch: the same arrays, buffers and counters."""
    changes = {"algorithm": algorithm, "device.kind": kind, "device.dw_min": 0.01}
    changes.update({f"{algorithm}.{k}": v for k, v in section.items()})
    cfg = RPUConfig().override(changes)
    finals = []
    for backend in ("torch", "numba"):
        tile = AnalogTile(6, 5, cfg, seed=2)
        tile.algorithm.backend = backend
        gen = torch.Generator().manual_seed(9)
        for k in (7, 0, 7, 3, 7):
            tile.update(torch.randn(k, 5, generator=gen), torch.randn(k, 6, generator=gen), 1.0)
        algo = tile.algorithm
        counters = (algo.schedule.count, algo.next_col, algo.n_buffer_writes)
        finals.append((tile.device_state(), counters, getattr(algo, "n_switches", None)))
    (first, *rest), (second, *rest2) = finals
    assert (first["C"] != 0).any() and (first["A"] != 0).any()  # pulses reached A and C
    assert rest == rest2
    if algorithm != "ttv2":
        assert rest[1] > 0 or section == {}  # the choppers switched
    for name, value in first.items():
        assert torch.equal(value, second[name]) or value.isnan().all(), name


@pytest.mark.parametrize(("kind", "every"), [("constant_step", 1), ("exp_step", 3)])
def test_the_compiled_mixed_precision_loop_is_the_torch_one_bit_for_bit(kind, every):
    cfg = RPUConfig().override(
        {
            "algorithm": "mixed_precision",
            "device.kind": kind,
            "mixed_precision.transfer_every": every,
            "mixed_precision.max_pulses": 4,
        }
    )
    finals = []
    for backend in ("torch", "numba"):
        tile = AnalogTile(6, 5, cfg, seed=2)
        tile.algorithm.backend = backend
        gen = torch.Generator().manual_seed(9)
        for k in (7, 0, 5, 2):
            tile.update(torch.randn(k, 5, generator=gen), torch.randn(k, 6, generator=gen), 0.01)
        algo = tile.algorithm
        finals.append((tile.get_weights(), algo.chi.clone(), algo.schedule.count, algo.n_transfers))
    assert (finals[0][0] != 0).any()  # pulses reached the array
    assert torch.equal(finals[0][0], finals[1][0]) and torch.equal(finals[0][1], finals[1][1])
    assert finals[0][2:] == finals[1][2:]
