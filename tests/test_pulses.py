"""The pulsed update: each test is one physical claim of docs/model.md sections 3 and 4.

Statistical claims are checked against their standard error (SE) from the test's own samples,
with a fixed seed/key; a tolerance of ``Z`` SE makes a false alarm a ~1e-5 event per check.
The compiled twin is checked bit for bit against the torch reference, so the statistical tests
may run on either; they use the fast one.
"""

from __future__ import annotations

import math

import pytest
import torch
from twin_cases import update_pairs

from rpusim import rng
from rpusim.config import DeviceConfig, UpdateConfig
from rpusim.devices import DeviceArrays, sample_devices
from rpusim.update import (
    pulse_scales,
    pulsed_update,
    pulsed_update_one_by_one,
    pulsed_update_reference,
)

Z = 4.5  # tolerance in standard errors

IDEAL = dict(dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max=None, w_min=None)


def devices(n_out: int, n_in: int, seed: int = 0, **overrides) -> DeviceArrays:
    """Per-device parameters of a constant-step tile (d2d drawn from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return sample_devices(DeviceConfig(**overrides), n_out, n_in, gen)


def numba_update(w, x, d, lr, dev, cfg, dw_min, key):
    pulsed_update(w, x, d, lr, dev, cfg, dw_min, key, backend="numba")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests' tensors are small: torch's thread pool would cost more than it saves (a
    48 x 10 x 48 matmul takes 1 ms instead of 6 us on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Pulse probabilities (section 3.1)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update_management", [True, False])
@pytest.mark.parametrize("bl_management", [True, False])
def test_expected_coincidences_are_lr_x_d_over_dw_min(update_management, bl_management):
    """``bl A B = lr / dw_min`` for every pair; update management balances ``A max|x|`` and
    ``B max|d|``; BL management uses ``ceil(lr max|x| max|d| / dw_min)`` slots, at least 1."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 7, generator=gen)
    d = 0.1 * torch.randn(50, 5, generator=gen)
    x[3], d[4] = 0.0, 0.0
    lr, dw_min = 0.01, 0.001
    cfg = UpdateConfig(bl=31, update_management=update_management, bl_management=bl_management)
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
    active = torch.ones(50, dtype=torch.bool)
    active[[3, 4]] = False
    assert torch.all(a[~active] == 0) and torch.all(b[~active] == 0)
    product = bl[active].double() * a[active].double() * b[active].double()
    torch.testing.assert_close(product, torch.full_like(product, lr / dw_min), rtol=1e-6, atol=0)
    assert torch.all((bl >= 1) & (bl <= cfg.bl))
    if update_management:  # balanced: the largest x and the largest d fire equally often
        p_max = a[active] * x[active].abs().amax(1)
        q_max = b[active] * d[active].abs().amax(1)
        torch.testing.assert_close(p_max, q_max, rtol=1e-5, atol=0)
    if bl_management:
        needed = torch.ceil(lr * x.abs().amax(1).double() * d.abs().amax(1).double() / dw_min)
        assert torch.equal(bl[active], needed[active].clamp(1, cfg.bl).long())


def test_normal_table_is_a_standard_normal():
    """The Gaussian table: symmetric, std 0.99999 (tails cut at 4.32 sigma)."""
    q = rng.normal_table()
    assert q.dtype == torch.float32 and q.numel() == 2**rng.TABLE_BITS
    assert torch.equal(q, -q.flip(0))
    assert abs(rng.normal_table_std() - 1.0) < 2e-5
    assert 4.3 < q.max().item() < 4.35
    # 16 hash bits pick the entries uniformly: the drawn values have the table's moments.
    z = rng.device_normals(key=3, k=0, n_out=256, n_in=256).double()
    assert abs(z.mean().item()) < Z / 256
    assert abs(z.var().item() - 1) < Z * math.sqrt(2) / 256


def test_counter_uniforms_are_uniform_and_independent_per_line_and_slot():
    """Pulse uniforms: mean 1/2, variance 1/12, no correlation between neighbouring lines/slots."""
    u = torch.cat([rng.pulse_uniforms(7, rng.STREAM_ROW, k, 64, 512) for k in range(8)]).double()
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < Z * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < Z * math.sqrt(1 / 180 / n)  # var of (u-1/2)^2 = 1/180
    c = u - 0.5
    for a, b in ((c[:, 1:], c[:, :-1]), (c[1:], c[:-1])):  # next line, next slot
        corr = (a * b).mean().item() * 12
        assert abs(corr) < Z / math.sqrt(a.numel())


# ------------------------------------------------------------------------------------------------
# The compiled twin gives the reference's bits
# ------------------------------------------------------------------------------------------------

NO_UM = {"update_management": False}
TWIN_CASES = {
    # name: (K, out, in, lr, update cfg kwargs, device overrides, initial |w| scale)
    "tiny": (3, 1, 1, 0.05, {}, {}, 0.1),
    "um_bl10": (7, 5, 3, 0.05, {}, {}, 0.1),
    "no_um": (7, 5, 3, 0.05, NO_UM, {}, 0.1),
    "bl_management": (20, 9, 13, 0.02, {"bl_management": True, "bl": 31}, {}, 0.1),
    "bl_mgmt_no_um": (20, 9, 13, 0.02, {**NO_UM, "bl_management": True}, {}, 0.1),
    "wide_over_64_columns": (12, 17, 130, 0.05, {"bl": 64}, {}, 0.1),
    "bounds_reached": (40, 11, 70, 2.0, {"bl": 20}, {"dw_min": 0.05}, 0.5),
    "capped_probabilities": (10, 8, 6, 5.0, NO_UM, {}, 0.1),
    "no_c2c_noise": (15, 8, 6, 0.1, {}, {"dw_min_std": 0.0}, 0.1),
    "asymmetric_unbounded": (15, 8, 66, 0.1, {"bl": 1}, {"up_down": 0.3, "w_max": None}, 0.1),
}


@pytest.mark.parametrize("case", sorted(TWIN_CASES))
def test_numba_twin_matches_reference_bit_for_bit(case):
    """Same key, same weights: the numba kernel is the reference, compiled."""
    n_pairs, n_out, n_in, lr, upd, dev_kw, w_scale = TWIN_CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    dev = devices(n_out, n_in, seed=3, **dev_kw)  # default d2d spread of steps and bounds
    dw_min = DeviceConfig(**dev_kw).dw_min
    x, d = update_pairs(gen, n_pairs, n_out, n_in)
    w0 = w_scale * torch.randn(n_out, n_in, generator=gen)
    cfg = UpdateConfig(**upd)
    w_ref, w_numba = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=12345)
    numba_update(w_numba, x, d, lr, dev, cfg, dw_min, key=12345)
    assert torch.equal(w_ref, w_numba)
    if n_out * n_in > 1:
        assert not torch.equal(w_ref, w0)  # the case did update something
    if case == "bounds_reached":
        at_bound = (w_ref == dev.w_max) | (w_ref == dev.w_min)
        assert at_bound.float().mean() > 0.2


def test_dispatch_auto_and_non_contiguous_weights_give_the_reference():
    """``backend='auto'`` (numba on CPU) and a transposed view of ``w`` give the same bits."""
    gen = torch.Generator().manual_seed(5)
    dev = devices(6, 9, seed=1)
    x, d = torch.randn(8, 9, generator=gen), 0.3 * torch.randn(8, 6, generator=gen)
    w0 = 0.1 * torch.randn(6, 9, generator=gen)
    cfg = UpdateConfig()
    w_ref = w0.clone()
    pulsed_update_reference(w_ref, x, d, 0.05, dev, cfg, 0.001, key=9)
    w_auto = w0.clone()
    pulsed_update(w_auto, x, d, 0.05, dev, cfg, 0.001, key=9)
    w_view = w0.t().contiguous().t()  # non-contiguous (out, in) view
    pulsed_update(w_view, x, d, 0.05, dev, cfg, 0.001, key=9, backend="numba")
    w_torch = w0.clone()
    pulsed_update(w_torch, x, d, 0.05, dev, cfg, 0.001, key=9, backend="torch")
    assert torch.equal(w_ref, w_auto) and torch.equal(w_ref, w_view) and torch.equal(w_ref, w_torch)
    w_other_key = w0.clone()
    pulsed_update(w_other_key, x, d, 0.05, dev, cfg, 0.001, key=10)
    assert not torch.equal(w_ref, w_other_key)


@pytest.mark.parametrize("density", [0.01, 0.5])
def test_slot_bitsets_walk_and_gather_give_each_slots_columns(density):
    """Pass 1's per-slot column sets, walked (sparse trains) or gathered (dense ones), are
    exactly the columns whose train has that slot's bit (an independent loop here)."""
    import numpy as np

    from rpusim.update.numba import _slot_bitsets

    rs = np.random.RandomState(0)
    n_in, n_slots = 129, 10
    fired = rs.random_sample((n_in, n_slots)) < density
    words = (fired * (1 << np.arange(n_slots))).sum(1).astype(np.uint64)
    mask = np.full((n_slots + 2, 3), 7, np.uint64)
    mask[:n_slots] = 0
    _slot_bitsets(words, n_slots, mask)
    for t in range(n_slots):
        cols = [wd * 64 + b for wd in range(3) for b in range(64) if int(mask[t, wd]) >> b & 1]
        assert cols == list(np.nonzero(fired[:, t])[0])
    assert (mask[n_slots:] == 7).all()  # the slots past the train untouched


def test_fire_thresholds_are_ceil_of_prob_times_2_24():
    """Pass 1's integer thresholds, computed in float32 so that their loop vectorizes, are the
    float64 definition ``ceil(min(1, s |v|) 2**24)`` (0 where ``v = 0``): for 2M random float32
    bit patterns in [0, 1], the values just around the 2**-24 grid, and the edges."""
    import numpy as np

    from rpusim.update.numba import _thresholds

    rs = np.random.RandomState(0)
    grid = np.arange(1, 2**12, dtype=np.float64) * 2.0**-24
    near = np.concatenate([grid, np.nextafter(grid, 0), np.nextafter(grid, 1)])
    edges = [0.0, -0.0, 1.0, np.nextafter(1.0, 0.0), 1.5, np.inf, -1.0, 2.0**-149, 2.0**-126]
    v = np.concatenate(
        [rs.randint(0, 0x3F800001, 2_000_000).astype(np.uint32).view(np.float32), near, edges]
    ).astype(np.float32)
    v = np.stack([v, -v])  # two pairs: the sign of a line does not matter
    scale = np.ones(2, np.float32)
    out = np.empty(v.shape, np.uint32)
    _thresholds(v, scale, 0, 2, out)
    prob = np.minimum(np.abs(v).astype(np.float64), 1.0)
    expected = np.where(prob > 0, np.ceil(prob * 2.0**24), 0).astype(np.uint32)
    assert np.array_equal(out, expected)
    assert out.max() == 2**24 and (out[:, -3] == 2**24).all()  # |v| >= 1 fires in every slot


def test_numba_twin_follows_device_arrays_changed_between_calls():
    """The compiled update keeps numpy views of a tile's device arrays between calls: a step
    size changed in place, and a bound tensor replaced by another, are what the next call
    applies (the reference's bits), as is a non-contiguous step tensor."""
    gen = torch.Generator().manual_seed(7)
    dev = devices(6, 9, seed=2)
    x, d = torch.randn(8, 9, generator=gen), 0.3 * torch.randn(8, 6, generator=gen)
    w0 = 0.3 * torch.randn(6, 9, generator=gen)
    cfg = UpdateConfig()

    def both_equal(key, dev):
        w_ref, w_numba = w0.clone(), w0.clone()
        pulsed_update_reference(w_ref, x, d, 0.5, dev, cfg, 0.001, key=key)
        numba_update(w_numba, x, d, 0.5, dev, cfg, 0.001, key=key)
        return torch.equal(w_ref, w_numba), w_numba

    same, first = both_equal(1, dev)
    assert same
    dev.params[0].mul_(3.0)  # in place: the cached views see it
    same, bigger = both_equal(1, dev)
    assert same and not torch.equal(bigger, first)
    dev.w_max = torch.full_like(dev.w_max, 0.05)  # replaced: new views
    same, clipped = both_equal(1, dev)
    assert same and clipped.max() <= 0.05
    dev.params = dev.params.transpose(1, 2).contiguous().transpose(1, 2)  # not contiguous
    dev.params[1].mul_(0.5)
    same, _ = both_equal(2, dev)
    assert same
    # What is kept goes with the devices: it pins no dead tile's memory.
    from rpusim.update import numba as update_numba

    key = id(dev)
    dev.params = dev.params.contiguous()
    both_equal(3, dev)
    assert key in update_numba._DEVICE_ARGS
    del dev
    assert key not in update_numba._DEVICE_ARGS


# ------------------------------------------------------------------------------------------------
# Statistics of the update
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update_management", [True, False])
@pytest.mark.parametrize("bl_management", [True, False])
@pytest.mark.parametrize("device_noise", [False, True])
def test_mean_change_is_the_sgd_step(update_management, bl_management, device_noise):
    """E[dW] = -lr d^T x, scaled by each device's own step (dw_up or dw_down) / dw_min."""
    x = torch.tensor([1.0, -0.5, 0.25, 0.8])
    d = torch.tensor([0.6, -1.0, 0.3])
    lr, dw_min, n_pairs, n_calls = 0.005, 0.001, 20, 300
    overrides = {"w_max": None, "w_min": None}
    if not device_noise:
        overrides = IDEAL
    dev = devices(3, 4, seed=2, dw_min=dw_min, **overrides)
    cfg = UpdateConfig(update_management=update_management, bl_management=bl_management)
    xs, ds = x.expand(n_pairs, 4).contiguous(), d.expand(n_pairs, 3).contiguous()

    changes = torch.empty(n_calls, 3, 4, dtype=torch.float64)
    for r in range(n_calls):
        w = torch.zeros(3, 4)
        numba_update(w, xs, ds, lr, dev, cfg, dw_min, key=1000 + r)
        changes[r] = w.double()

    sgd = -lr * torch.outer(d, x).double()
    step = torch.where(sgd > 0, dev.dw_up, dev.dw_down).double() / dw_min
    expected = n_pairs * sgd * step
    mean = changes.mean(0)
    se = changes.std(0) / math.sqrt(n_calls)
    assert torch.all(se < 0.05 * expected.abs())  # the test would see a 25 % bias
    # (+ float32 rounding of the sums: with p = q = 1 a device's count is not random at all)
    float_slack = 1e-5 * expected.abs()
    assert torch.all((mean - expected).abs() < Z * se + float_slack), (mean - expected) / se


def test_devices_on_one_line_share_its_pulses():
    """With p = q = 1/2, two devices on one line have count correlation 1/3, not 0.

    The counts of ``(j1, i)`` and ``(j2, i)`` share column ``i``'s pulses: per slot,
    ``cov(r1 c, r2 c) = 1/8 - 1/16``, ``var = 1/4 - 1/16``, so ``corr = 1/3``. Independent
    binomial counts (a different model) would give 0; devices on no common line do give 0.
    """
    m = 500  # independent samples: device groups on disjoint lines
    n = 2 * m
    bl, dw = 4, 0.25  # A = B = sqrt(lr / (bl dw)) = 1/2 with lr = 1/4 and |x| = |d| = 1
    cfg = UpdateConfig(bl=bl, update_management=False)
    dev = devices(n, n, dw_min=dw, **IDEAL)
    x, d = torch.ones(4, n), torch.ones(4, n)
    w = torch.zeros(n, n)
    numba_update(w, x, d, 0.25, dev, cfg, dw, key=77)
    counts = (-w / dw).double()  # s = -1 everywhere; exact integers
    assert torch.equal(counts, counts.round())
    even = torch.arange(0, n, 2)
    anchor = counts[even, even]  # device (2m, 2m)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    se_third = (1 - 1 / 9) / math.sqrt(m)  # Fisher's SE of a correlation estimate
    assert abs(corr(anchor, counts[even + 1, even]) - 1 / 3) < Z * se_third  # same column
    assert abs(corr(anchor, counts[even, even + 1]) - 1 / 3) < Z * se_third  # same row
    assert abs(corr(anchor, counts[even + 1, even + 1])) < Z / math.sqrt(m)  # no common line
    # And the mean count is BL p q = 1 per pair.
    assert abs(counts.mean().item() - 4.0) < Z * counts[even, even].std().item() / math.sqrt(m)


def test_weights_stop_at_each_devices_own_bounds():
    """Driven long enough in one direction, every weight sits exactly on its own bound."""
    dw_min, bl = 0.01, 10
    dev = devices(16, 12, seed=4, dw_min=dw_min, dw_min_dtod=0.1)
    assert dev.w_max.std() > 0.05  # bounds differ from device to device
    assert dev.dw_down.min() > 0.5 * dw_min and dev.dw_up.min() > 0.5 * dw_min
    # p = q = 1: every device gets bl coincidences per pair.
    cfg = UpdateConfig(bl=bl, update_management=False)
    lr = 4 * bl * dw_min
    span = float((dev.w_max - dev.w_min).max())
    n_pairs = math.ceil(2 * span / (bl * 0.5 * dw_min))
    x = torch.ones(n_pairs, 12)
    w = torch.zeros(16, 12)
    numba_update(w, x, -torch.ones(n_pairs, 16), lr, dev, cfg, dw_min, key=1)  # s = +1: up
    assert torch.equal(w, dev.w_max)
    numba_update(w, x, torch.ones(n_pairs, 16), lr, dev, cfg, dw_min, key=2)  # down
    assert torch.equal(w, dev.w_min)


def test_cycle_to_cycle_noise_has_the_configured_spread():
    """With n = BL fixed, dw = dw_min (n + std sqrt(n) z): var = dw_min^2 std^2 n per pair,
    independent between pairs and between devices."""
    dw_min, std, bl, n_pairs = 0.001, 0.3, 10, 4
    dev = devices(64, 64, dw_min=dw_min, **{**IDEAL, "dw_min_std": std})
    cfg = UpdateConfig(bl=bl, update_management=False)
    x, d = torch.ones(n_pairs, 64), -torch.ones(n_pairs, 64)  # p = q = 1, up
    samples = []
    for r in range(5):
        w = torch.zeros(64, 64)
        numba_update(w, x, d, 4 * bl * dw_min, dev, cfg, dw_min, key=r)
        samples.append(w.double() / dw_min - n_pairs * bl)
    noise = torch.stack(samples)  # (5, 64, 64): sum of the pairs' noises, in units of dw_min
    n = noise.numel()
    var_expected = n_pairs * bl * (std * rng.normal_table_std()) ** 2
    assert abs(noise.mean().item()) < Z * math.sqrt(var_expected / n)
    assert abs(noise.var().item() / var_expected - 1) < Z * math.sqrt(2 / (n - 1))
    # Neighbours on one row (sharing the row's pulses) have independent noise.
    a, b = noise[..., 1:].flatten(), noise[..., :-1].flatten()
    corr = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
    assert abs(corr) < Z / math.sqrt(a.numel())


def test_positive_up_down_makes_balanced_updates_drift_up():
    """Alternating equal +/- updates: with up_down = beta > 0 the down step is smaller by
    beta dw_min, so the mean drift per +/- cycle is E[n] beta dw_min > 0."""
    beta, dw_min, bl, n_pairs, n_calls = 0.05, 0.001, 4, 200, 40
    dev = devices(32, 32, dw_min=dw_min, **{**IDEAL, "dw_min_std": 0.3, "up_down": beta})
    cfg = UpdateConfig(bl=bl, update_management=False)
    lr = bl * dw_min / 4  # p = q = 1/2: E[n] = bl / 4 = 1 per pair
    sign = torch.tensor([1.0, -1.0]).repeat(n_pairs // 2)
    x = sign[:, None].expand(n_pairs, 32).contiguous()
    d = -torch.ones(n_pairs, 32)  # pair k moves up for x = +1, down for x = -1
    drift = torch.empty(n_calls, dtype=torch.float64)
    for r in range(n_calls):
        w = torch.zeros(32, 32)
        numba_update(w, x, d, lr, dev, cfg, dw_min, key=500 + r)
        drift[r] = w.double().mean()  # tile means are independent between calls
    predicted = (n_pairs // 2) * (bl / 4) * beta * dw_min
    mean, se = drift.mean().item(), drift.std().item() / math.sqrt(n_calls)
    assert mean > 10 * se
    assert abs(mean - predicted) < Z * se


def test_aggregated_step_matches_one_by_one_near_a_bound():
    """Applying n coincidences as one step (then one clip) has the same distribution as n
    noisy steps with a clip after each (section 3.4), here with devices starting at their
    just below their upper bound, so that the clip matters."""
    n, n_pairs, n_runs, dw_min = 48, 8, 60, 0.02
    dev = devices(n, n, seed=6, dw_min=dw_min, w_max=0.1, w_min=-0.1)
    cfg = UpdateConfig(bl=10)
    x = torch.ones(n_pairs, n)
    # down, up, down, ..., up, each with E[n] = lr |x d| / dw_min = 4 coincidences
    d = torch.tensor([1.0, -1.0]).repeat(n_pairs // 2)[:, None].expand(n_pairs, n).contiguous()
    lr = 0.08
    w_start = (dev.w_max - 1.5 * dev.dw_down).clamp_min(dev.w_min)
    diag = torch.arange(n)  # devices on disjoint lines: independent samples

    def finals(update):
        out = torch.empty(n_runs, n, dtype=torch.float64)
        for r in range(n_runs):
            w = w_start.clone()
            update(w, x, d, lr, dev, cfg, dw_min, 2000 + r)
            out[r] = w[diag, diag].double()
        return out

    agg, seq = finals(pulsed_update_reference), finals(pulsed_update_one_by_one)
    at_bound = (agg == dev.w_max[diag, diag].double()).double().mean().item()
    assert 0.1 < at_bound < 0.9  # the bound is hit, and left again

    # Stratified by device (the d2d spread makes devices differ): means and variances.
    mean_diff = (agg.mean(0) - seq.mean(0)).mean().item()
    se_mean = math.sqrt((agg.var(0) + seq.var(0)).sum().item() / n_runs) / n

    def var_and_se(s):
        c = s - s.mean(0)
        var, m4 = (c**2).mean(0), (c**4).mean(0)
        return var, (m4 - var**2) / n_runs

    (va, sa), (vs, ss) = var_and_se(agg), var_and_se(seq)
    var_diff = (va - vs).mean().item()
    se_var = math.sqrt((sa + ss).sum().item()) / n
    assert abs(mean_diff) < Z * se_mean, mean_diff / se_mean
    assert abs(var_diff) < Z * se_var, var_diff / se_var


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def test_numba_kernel_memory_is_linear_in_pairs_not_devices_times_pairs():
    """Peak extra memory of one update of K = 12,000 pairs on a 512 x 256 tile stays far below
    one float per (pair, slot, column), let alone per (pair, device) (6 GB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
    except OSError:
        pytest.skip("cannot reset the peak RSS counter (/proc/self/clear_refs)")
    n_pairs, n_out, n_in, bl = 12_000, 512, 256, 10
    gen = torch.Generator().manual_seed(0)
    dev = devices(n_out, n_in)
    x = torch.rand(n_pairs, n_in, generator=gen) - 0.5
    d = torch.rand(n_pairs, n_out, generator=gen) - 0.5
    w = torch.zeros(n_out, n_in)
    cfg = UpdateConfig(bl=bl)
    numba_update(w, x[:5], d[:5], 1e-4, dev, cfg, 0.001, key=0)  # threads, compiled code
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    numba_update(w, x, d, 1e-4, dev, cfg, 0.001, key=1)
    growth = (_rss_kib("VmHWM") - before) * 1024
    per_pair_slot_column = 4 * n_pairs * bl * n_in  # 123 MB: a (K, BL, in) float32 array
    assert growth < 48 * 2**20 < per_pair_slot_column, growth


# ------------------------------------------------------------------------------------------------
# Update management's saturation rule (um_clip) and the pairs' order
# ------------------------------------------------------------------------------------------------


def test_um_clip_d_only_keeps_x_exact_and_saturates_only_d():
    """Below BL both rules are the balanced formula; above it, ``both`` clips both trains equally
    (``A max|x| = B max|d| = sqrt(k / BL)``) while ``d_only`` keeps ``A max|x| = 1`` and lets
    ``B max|d| = k / BL``. Either way ``bl A B = lr / dw_min``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(40, 9, generator=gen) + 0.1
    d = torch.rand(40, 6, generator=gen) * torch.logspace(-3, 0, 40)[:, None]
    lr, dw_min, bl = 0.1, 0.001, 10
    x_max, d_max = x.abs().amax(1).double(), d.abs().amax(1).double()
    k = lr * x_max * d_max / dw_min
    above = k > bl
    assert above.any() and (~above).any()
    both = pulse_scales(x, d, lr, UpdateConfig(bl=bl, um_clip="both"), dw_min)
    d_only = pulse_scales(x, d, lr, UpdateConfig(bl=bl, um_clip="d_only"), dw_min)
    for a, b, n in (both, d_only):
        torch.testing.assert_close(
            n.double() * a.double() * b.double(), torch.full_like(k, lr / dw_min), rtol=1e-6, atol=0
        )
    assert torch.equal(both[0][~above], d_only[0][~above])
    assert torch.equal(both[1][~above], d_only[1][~above])
    p_both, q_both = both[0].double() * x_max, both[1].double() * d_max
    torch.testing.assert_close(p_both, q_both, rtol=1e-6, atol=0)
    p, q = d_only[0].double() * x_max, d_only[1].double() * d_max
    torch.testing.assert_close(p[above], torch.ones_like(p[above]), rtol=1e-6, atol=0)
    torch.testing.assert_close(q[above], k[above] / bl, rtol=1e-6, atol=0)


@pytest.mark.parametrize("um_clip", ["both", "d_only"])
def test_twins_agree_under_either_um_clip(um_clip):
    gen = torch.Generator().manual_seed(4)
    dev = devices(11, 13, seed=2)
    x = torch.randn(30, 13, generator=gen)
    d = torch.randn(30, 11, generator=gen)  # large errors: most pairs saturate
    cfg = UpdateConfig(bl=10, um_clip=um_clip)
    w_ref, w_twin = torch.zeros(11, 13), torch.zeros(11, 13)
    pulsed_update_reference(w_ref, x, d, 0.5, dev, cfg, 0.001, key=9)
    numba_update(w_twin, x, d, 0.5, dev, cfg, 0.001, key=9)
    assert torch.equal(w_ref, w_twin)


def test_pair_order_reverse_applies_the_last_pair_first():
    from rpusim import AnalogTile, RPUConfig

    gen = torch.Generator().manual_seed(5)
    x, d = torch.randn(20, 7, generator=gen), 0.3 * torch.randn(20, 5, generator=gen)
    reverse = RPUConfig().override({"update.pair_order": "reverse"})
    a, b = AnalogTile(5, 7, reverse, seed=1), AnalogTile(5, 7, RPUConfig(), seed=1)
    a.update(x, d, lr=0.2)
    b.update(x.flip(0), d.flip(0), lr=0.2)
    assert torch.equal(a.get_weights(), b.get_weights())
    c = AnalogTile(5, 7, RPUConfig(), seed=1)
    c.update(x, d, lr=0.2)
    assert not torch.equal(a.get_weights(), c.get_weights())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"update_management": False},
        {"bl_management": True},
        {"um_clip": "d_only"},
        {"bl_management": True, "um_clip": "d_only", "bl": 31},
    ],
)
def test_compiled_plan_equals_the_torch_plan(overrides):
    """The numba kernel's pulse scales and bit lengths are pulse_scales' own, bit for bit:
    small and large updates (saturating ones for d_only), all-zero pairs, lr 0."""
    from rpusim.update.numba import scales_of
    from rpusim.update.plan import pulse_scales

    cfg = UpdateConfig(**overrides)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(60, 9, generator=gen) * torch.logspace(-3, 1, 60)[:, None]
    d = torch.randn(60, 7, generator=gen) * torch.logspace(1, -4, 60)[:, None]
    x[5], d[9] = 0.0, 0.0
    for lr in (0.0, 0.01, 3.0):
        want = pulse_scales(x, d, lr, cfg, 0.001)
        got = scales_of(x.numpy(), d.numpy(), x, d, lr, cfg, 0.001)
        for u, v in zip(want, got, strict=True):
            assert torch.equal(u, torch.from_numpy(v))
