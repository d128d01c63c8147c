"""The device models (rpusim.devices): each test is one physical claim of a model's docstring.

Statistical claims are checked against their standard error (SE) from the test's own samples,
with a fixed seed/key; a tolerance of ``Z`` SE makes a false alarm a ~1e-5 event per check.
Expected steps are computed here, independently of the models' code, from the formulas in the
models' docstrings and the per-device parameters that ``device_state()`` reports.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from twin_cases import MANAGEMENTS, PIECEWISE, TWIN_DEVICES, device_update_case

from rpusim.config import ConfigError, RPUConfig, RunConfig, UpdateConfig
from rpusim.devices import MODELS, DeviceArrays, sample_devices
from rpusim.devices.base import expected_steps
from rpusim.devices.presets import DEVICE_PRESETS, preset_section
from rpusim.tile import AnalogTile
from rpusim.update import pulsed_update, pulsed_update_one_by_one, pulsed_update_reference

Z = 4.5  # tolerance in standard errors

#: One config per model whose w-dependence is not trivial (the defaults of linear_step and
#: piecewise_step are a constant step).
SHAPED = {
    "linear_step": {"kind": "linear_step", "gamma_up": 0.5, "gamma_down": 0.4},
    "soft_bounds": {"kind": "soft_bounds"},
    "exp_step": {"kind": "exp_step"},
    "pow_step": {"kind": "pow_step", "pow_gamma": 2.0, "pow_up_down": 0.3},
    "piecewise_step": {"kind": "piecewise_step", **PIECEWISE},
}
W_DEPENDENT = sorted(SHAPED)


def config(section: dict):
    """The device config of ``section`` (a ``kind`` and that model's keys)."""
    return MODELS[section.get("kind", "constant_step")].Config(**section)


def draw(section: dict, n_out: int, n_in: int, seed: int = 0) -> DeviceArrays:
    return sample_devices(config(section), n_out, n_in, torch.Generator().manual_seed(seed))


def without_c2c(dev: DeviceArrays) -> DeviceArrays:
    """The same devices with the cycle-to-cycle noise off (``consts[0]`` is ``dw_min_std``)."""
    return dataclasses.replace(dev, consts=(0.0, *dev.consts[1:]))


def one_coincidence(w: torch.Tensor, dev: DeviceArrays, up: bool, dw_min: float, key: int):
    """Every device gets exactly one coincidence: ``|x| = |d| = 1``, ``lr = dw_min``, BL 1, no
    update management give ``p = q = 1`` in the single slot. Returns the new weights."""
    n_out, n_in = w.shape
    x = torch.ones(1, n_in)
    d = (-1.0 if up else 1.0) * torch.ones(1, n_out)  # s = -sign(d) sign(x)
    out = w.clone()
    cfg = UpdateConfig(bl=1, update_management=False)
    pulsed_update_reference(out, x, d, dw_min, dev, cfg, dw_min, key)
    return out


def formula_step(section: dict, st: dict, w: torch.Tensor, up: bool) -> torch.Tensor:
    """The mean step magnitude (>= 0) of each device at weights ``w`` (float64), written from
    the model's docstring with the device's own parameters ``st`` (``device_state()``)."""
    cfg = config(section)
    s = {k: v.double() for k, v in st.items()}
    dw = s["dw_up"] if up else s["dw_down"]
    w_max, w_min = s["w_max"], s["w_min"]
    kind = cfg.kind
    if kind == "linear_step":  # 1 - gamma w / w_ref, slope = gamma / w_ref
        shape = 1 - (s["slope_up"] if up else s["slope_down"]) * w
    elif kind == "soft_bounds":
        shape = 1 - w / (w_max if up else w_min)
    elif kind == "exp_step":
        z = 2 * cfg.a * w / (w_max - w_min) + cfg.b
        if up:
            shape = (1 - cfg.A_up * torch.exp(cfg.gamma_up * z)).clamp_min(0)
        else:
            shape = (1 - cfg.A_down * torch.exp(-cfg.gamma_down * z)).clamp_min(0)
    elif kind == "pow_step":
        r = w_max - w_min
        shape = ((w_max - w) / r) ** s["gamma_up"] if up else ((w - w_min) / r) ** s["gamma_down"]
    elif kind == "piecewise_step":
        nodes = cfg.piecewise_up if up else cfg.piecewise_down
        pos = (len(nodes) - 1) * (w - w_min) / (w_max - w_min)
        shape = torch.from_numpy(np.interp(pos.numpy(), np.arange(len(nodes)), nodes))
    else:
        raise AssertionError(kind)
    return dw * shape


def ulp(v: torch.Tensor) -> torch.Tensor:
    """The float32 spacing at ``v`` (float64 result)."""
    a = v.abs().to(torch.float32)
    return (torch.nextafter(a, torch.tensor(math.inf)) - a).double()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors: torch's thread pool costs more than it saves on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# 1. The compiled twin gives the reference's bits, for every model
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("management", MANAGEMENTS)
@pytest.mark.parametrize("case", sorted(TWIN_DEVICES))
def test_numba_twin_matches_reference_for_every_model(case, management):
    """Same key, same weights, for every model and preset: weights inside the bounds and on
    them, pairs with saturated probabilities (``p = 1``) and pairs without pulses (two words of
    column bits: 67 columns)."""
    w0, x, d, lr, dev, cfg, dw_min = device_update_case(case, management)
    w_ref, w_numba = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=4242)
    pulsed_update(w_numba, x, d, lr, dev, cfg, dw_min, key=4242, backend="numba")
    assert torch.equal(w_ref, w_numba), (w_ref - w_numba).abs().max()
    assert (w_ref != w0).float().mean() > 0.2  # the case did update most devices
    assert torch.all((w_ref <= dev.w_max) & (w_ref >= dev.w_min))


# ------------------------------------------------------------------------------------------------
# 2. The mean step at w is the docstring's formula
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("up", [True, False], ids=["up", "down"])
@pytest.mark.parametrize("kind", W_DEPENDENT)
def test_mean_step_follows_the_formula(kind, up):
    """One coincidence per device at five points of each device's range: without c2c noise the
    change is the formula to float32 rounding of the new weight; with it, the mean residual over
    4096 devices is within Z SE (the SE from the residuals' own spread)."""
    section = {**SHAPED[kind], "w_max_dtod": 0.1, "w_min_dtod": 0.1}  # no bound at 0 (test 8)
    dw_min = config(section).dw_min
    dev = draw(section, 64, 64, seed=11)
    quiet = without_c2c(dev)
    st = dev.as_dict()
    for f_idx, frac in enumerate((0.05, 0.25, 0.5, 0.75, 0.95)):
        w = (dev.w_min + frac * (dev.w_max - dev.w_min)).to(torch.float32)
        expected = formula_step(section, st, w.double(), up)
        sign = 1.0 if up else -1.0

        change = one_coincidence(w, quiet, up, dw_min, key=f_idx).double() - w.double()
        # The new weight is the float64 result rounded once to float32: half an ulp; and the
        # derived parameters (1 / range, slopes) are stored in float32: ~1e-7 of the step.
        err = (change - sign * expected).abs()
        tol = 0.5 * ulp(w.double() + change) + 1e-6 * expected
        assert torch.all(err <= tol), (kind, frac, (err / tol).max())
        moved = expected > 0
        assert moved.float().mean() > 0.99  # and each of those moved exactly once
        assert torch.all((change != 0) == moved)

        change = one_coincidence(w, dev, up, dw_min, key=100 + f_idx).double() - w.double()
        residual = change - sign * expected
        se = residual.std() / math.sqrt(residual.numel())
        assert se < 0.02 * expected.mean()  # the test resolves a 10 % error
        assert abs(residual.mean()) < Z * se, (kind, frac, residual.mean() / se)


# ------------------------------------------------------------------------------------------------
# 3. Soft bounds: the weight approaches each device's bound, the step vanishes there
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("up", [True, False], ids=["up", "down"])
def test_soft_bounds_approach_their_own_bounds(up):
    """From w = 0, 1000 up (down) coincidences bring every device to within 1e-3 of its own
    ``w_max_ij`` (``w_min_ij``), never past it; the step at 0.5 % of the range below the bound
    is under 1 % of the step at 0."""
    section = {"kind": "soft_bounds", "dw_min": 0.01, "dw_min_dtod": 0.1, "w_max_dtod": 0.2}
    section["w_min_dtod"] = 0.2
    dev = draw(section, 16, 16, seed=3)
    bound = dev.w_max if up else dev.w_min
    assert bound.std() > 0.05  # the bounds differ from device to device
    bl, n_pairs = 50, 2
    cfg = UpdateConfig(bl=bl, update_management=False)  # lr = bl dw_min: p = q = 1, n = bl
    x = torch.ones(n_pairs, 16)
    d = (-1.0 if up else 1.0) * torch.ones(n_pairs, 16)
    w = torch.zeros(16, 16)
    for call in range(10):
        pulsed_update(w, x, d, bl * 0.01, dev, cfg, 0.01, key=call, backend="numba")
        assert torch.all(w <= dev.w_max) and torch.all(w >= dev.w_min)
    assert torch.all((bound - w).abs() <= 1e-3 * bound.abs())

    quiet = without_c2c(dev)
    near = (0.995 * bound).to(torch.float32)
    step_near = (one_coincidence(near, quiet, up, 0.01, key=1) - near).abs()
    zero = torch.zeros(16, 16)
    step_zero = (one_coincidence(zero, quiet, up, 0.01, key=1) - zero).abs()
    assert torch.all(step_zero > 0)
    assert torch.all(step_near < 0.01 * step_zero), (step_near / step_zero).max()


# ------------------------------------------------------------------------------------------------
# 4. The symmetry point
# ------------------------------------------------------------------------------------------------


def test_soft_bounds_w_sym_is_the_docstring_formula():
    """``w* = (dw_up - dw_down) / (dw_up / w_max - dw_down / w_min)`` for every device."""
    st = draw({"kind": "soft_bounds", "up_down": 0.3, "w_max_dtod": 0.1}, 50, 40).as_dict()
    s = {k: v.double() for k, v in st.items()}
    w_sym = (s["dw_up"] - s["dw_down"]) / (s["dw_up"] / s["w_max"] - s["dw_down"] / s["w_min"])
    # Strictly inside the range (by more than float rounding): w_sym is the formula. (A device
    # whose down step was floored at 0 has w* = w_max: on the bound, NaN or w_max by rounding.)
    margin = 1e-9 * (s["w_max"] - s["w_min"])
    inside = (w_sym > s["w_min"] + margin) & (w_sym < s["w_max"] - margin)
    assert inside.float().mean() > 0.95
    torch.testing.assert_close(st["w_sym"].double()[inside], w_sym[inside], rtol=1e-6, atol=1e-9)
    outside = (w_sym < s["w_min"] - margin) | (w_sym > s["w_max"] + margin) | w_sym.isnan()
    assert st["w_sym"][outside].isnan().all()


def alternate_pulses(w, dev, dw_min, burn_in, cycles):
    """Alternate one up and one down coincidence on every device of the square tile ``w`` (in
    place) for ``burn_in + cycles`` cycles; the sums over the last ``cycles`` of the weight before
    each up step (``a``) and before each down step (``b``), float64."""
    n = w.shape[1]
    cfg = UpdateConfig(bl=1, update_management=False)
    x = torch.tensor([[1.0] * n, [-1.0] * n])  # pair 0 up, pair 1 down (d = -1)
    d = -torch.ones(2, w.shape[0])
    sum_a = torch.zeros(w.shape, dtype=torch.float64)
    sum_b = torch.zeros_like(sum_a)
    for c in range(burn_in + cycles):
        if c >= burn_in:
            sum_a += w.double()
        pulsed_update(w, x[:1], d[:1], dw_min, dev, cfg, dw_min, key=2 * c, backend="numba")
        if c >= burn_in:
            sum_b += w.double()
        pulsed_update(w, x[1:], d[1:], dw_min, dev, cfg, dw_min, key=2 * c + 1, backend="numba")
    return sum_a, sum_b


def test_balanced_pulses_drive_soft_bounds_devices_to_their_w_sym():
    """Alternating single up and down coincidences (3400 cycles) bring each device, from either
    end of its range, to its own ``w_sym``.

    At stationarity the expected up step, taken at the weight ``a`` before it, equals the
    expected down step, taken at ``b`` after it. Both are linear in ``w``, so ``w_sym =
    (up' E[a] + down' E[b]) / (up' + down')`` exactly (``up' = dw_up / w_max``, ``down' =
    dw_down / |w_min|``); the run's averages of ``a`` and ``b`` estimate it. Checked: the mean
    error over devices within Z SE, every device within Z sigma of the devices' error spread, and
    that spread far below the spread of ``w_sym`` itself (each device finds its own point).
    """
    n, dw_min = 16, 0.002
    section = {"kind": "soft_bounds", "dw_min": dw_min, "up_down": 0.3, "dw_min_dtod": 0.1}
    section.update(w_max_dtod=0.2, w_min_dtod=0.2)  # no bound floored at 0 (test 8)
    dev = draw(section, n, n, seed=5)
    st = dev.as_dict()
    w_sym = st["w_sym"].double()
    assert torch.isfinite(w_sym).all()
    w = torch.where(torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < 0.5, 0.8, -0.8)
    w = torch.where(w > 0, w * dev.w_max, -w * dev.w_min).to(torch.float32)
    cycles = 2000
    sum_a, sum_b = alternate_pulses(w, dev, dw_min, burn_in=1400, cycles=cycles)
    up_rate = st["dw_up"].double() / st["w_max"].double()
    down_rate = st["dw_down"].double() / -st["w_min"].double()
    estimate = (up_rate * sum_a + down_rate * sum_b) / (cycles * (up_rate + down_rate))
    err = (estimate - w_sym).flatten()
    spread = err.std()
    assert abs(err.mean()) < Z * spread / math.sqrt(err.numel()), err.mean() / spread
    assert err.abs().max() < Z * spread
    assert w_sym.std() > 5 * spread  # devices go to their own points, not to a common one


@pytest.mark.parametrize(
    "section",
    [
        {"kind": "linear_step", "up_down": 0.2, "gamma_up": 0.5, "gamma_down": 0.1},
        {"kind": "soft_bounds", "up_down": -0.2, "w_max_dtod": 0.1, "w_min_dtod": 0.1},
        {"kind": "exp_step"},
        {"kind": "pow_step", "pow_gamma": 2.0, "pow_up_down": 0.3, "up_down": 0.1},
        {"kind": "piecewise_step", **PIECEWISE},
    ],
    ids=lambda s: s["kind"],
)
def test_w_sym_has_equal_expected_up_and_down_steps(section):
    """At ``device_state()["w_sym"]`` (float32) the expected up and down steps cross: the gap
    ``up - down`` is >= 0 one float32 below and <= 0 one float32 above. NaN only where the gap
    has one sign over the whole range."""
    dev = draw(section, 30, 30, seed=2)
    w_sym = dev.as_dict()["w_sym"]
    # A device whose up and down steps were both floored at 0 never moves: any w is "its" w*.
    found = torch.isfinite(w_sym) & ((dev.dw_up > 0) | (dev.dw_down > 0))
    assert found.float().mean() > 0.9

    def gap(w32: torch.Tensor) -> torch.Tensor:
        up, down = expected_steps(dev, w32.double())
        return up - down

    at = torch.where(found, w_sym, 0.0)
    below = torch.maximum(torch.nextafter(at, torch.tensor(-math.inf)), dev.w_min)
    above = torch.minimum(torch.nextafter(at, torch.tensor(math.inf)), dev.w_max)
    ok = (gap(below) >= 0) & (gap(above) <= 0)
    assert torch.all(ok | ~found), (~ok & found).sum()
    g_lo, g_hi = gap(dev.w_min), gap(dev.w_max)
    assert torch.all(((g_lo > 0) == (g_hi > 0))[~found])


# ------------------------------------------------------------------------------------------------
# 5. Device-to-device spreads
# ------------------------------------------------------------------------------------------------


def assert_mean_std(sample: torch.Tensor, mean: float, std: float, what: str):
    """Sample mean and std of ``sample`` against ``mean``, ``std`` within Z SE (a normal
    sample: SE of the mean ``s / sqrt(N)``, of the std ``s / sqrt(2 N)``)."""
    v = sample.double().flatten()
    n, s = v.numel(), v.std().item()
    assert abs(v.mean().item() - mean) < Z * s / math.sqrt(n), (what, v.mean().item(), mean)
    assert abs(s - std) < Z * s / math.sqrt(2 * n), (what, s, std)


@pytest.mark.parametrize("up_down", [-0.2, 0.2])
def test_d2d_spread_of_steps_and_bounds(up_down):
    """``dw_up = dw_min (1 + dtod xi + ud_dtod xi' + min(up_down, 0))`` (and the down step),
    ``w_max_ij = w_max (1 + w_max_dtod xi)``: means and spreads on 200 x 200 devices."""
    cfg = dict(dw_min=0.002, dw_min_dtod=0.2, up_down=up_down, up_down_dtod=0.05)
    cfg.update(w_max=0.8, w_min=-0.5, w_max_dtod=0.15, w_min_dtod=0.1)
    st = draw({"kind": "soft_bounds", **cfg}, 200, 200, seed=9).as_dict()
    step_std = 0.002 * math.hypot(0.2, 0.05)
    assert_mean_std(st["dw_up"], 0.002 * (1 + min(up_down, 0)), step_std, "dw_up")
    assert_mean_std(st["dw_down"], 0.002 * (1 - max(up_down, 0)), step_std, "dw_down")
    assert_mean_std(st["w_max"], 0.8, 0.8 * 0.15, "w_max")
    assert_mean_std(st["w_min"], -0.5, 0.5 * 0.1, "w_min")
    # The asymmetry spread is its own draw: dw_up - dw_down has std 2 dw_min ud_dtod.
    diff = st["dw_up"] - st["dw_down"]
    assert_mean_std(diff, 0.002 * up_down, 2 * 0.002 * 0.05, "dw_up - dw_down")


@pytest.mark.parametrize("mean_bound_reference", [True, False])
def test_d2d_spread_of_linear_step_gamma(mean_bound_reference):
    """``gamma_ij = gamma + gamma_dtod xi`` (absolute spread); the slope is ``gamma_ij / w_ref``
    with ``w_ref`` the mean bound or the device's own."""
    section = {"kind": "linear_step", "gamma_up": 0.4, "gamma_down": 0.3}
    section.update(gamma_up_dtod=0.05, gamma_down_dtod=0.08, w_max=0.7, w_min=-0.5)
    section.update(w_max_dtod=0.1, w_min_dtod=0.1)  # no bound floored at 0 (test 8)
    section["mean_bound_reference"] = mean_bound_reference
    st = draw(section, 200, 200, seed=4).as_dict()
    ref_up = 0.7 if mean_bound_reference else st["w_max"]
    ref_down = -0.5 if mean_bound_reference else st["w_min"]
    assert_mean_std(st["slope_up"] * ref_up, 0.4, 0.05, "gamma_up")
    assert_mean_std(st["slope_down"] * ref_down, 0.3, 0.08, "gamma_down")


def test_d2d_spread_of_pow_step_exponent():
    """``gamma_up_ij = pow_gamma (1 + dtod xi + ud_dtod xi')``, the down exponent smaller by
    ``pow_gamma pow_up_down``: spread ``pow_gamma sqrt(dtod^2 + ud_dtod^2)``."""
    section = {"kind": "pow_step", "pow_gamma": 2.0, "pow_gamma_dtod": 0.1}
    section.update(pow_up_down=0.3, pow_up_down_dtod=0.04)
    st = draw(section, 200, 200, seed=8).as_dict()
    std = 2.0 * math.hypot(0.1, 0.04)
    assert_mean_std(st["gamma_up"], 2.0, std, "gamma_up")
    assert_mean_std(st["gamma_down"], 2.0 * 0.7, std, "gamma_down")


# ------------------------------------------------------------------------------------------------
# 6. Cycle-to-cycle spread of one coincidence
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [*W_DEPENDENT, "linear_step-additive"], ids=lambda k: k.replace("_", "-")
)
def test_c2c_spread_of_one_coincidence(kind):
    """Identical devices (no d2d spread), one coincidence each at 90 % (up) or 10 % (down) of
    the range, where every model's step differs from ``dw``:
    the changes' std is ``dw_min_std`` times the mean step (multiplicative noise), or
    ``dw_min_std dw`` (additive, linear_step ``mult_noise: false``); SE ``sigma / sqrt(2 N)``."""
    additive = kind.endswith("additive")
    section = dict(SHAPED[kind.removesuffix("-additive")])
    if additive:
        section["mult_noise"] = False
    std = 0.4
    section.update(dw_min_std=std, dw_min_dtod=0.0, up_down_dtod=0.0, w_max_dtod=0.0)
    section["w_min_dtod"] = 0.0
    if "pow_gamma_dtod" in type(config(section)).model_fields:
        section["pow_gamma_dtod"] = 0.0
    if "gamma_up_dtod" in type(config(section)).model_fields:
        section.update(gamma_up_dtod=0.0, gamma_down_dtod=0.0)
    cfg = config(section)
    dev = draw(section, 80, 80, seed=1)
    assert torch.all(dev.params == dev.params[:, :1, :1])  # identical devices
    for up in (True, False):
        w = (dev.w_min + (0.9 if up else 0.1) * (dev.w_max - dev.w_min)).to(torch.float32)
        mean_step = formula_step(section, dev.as_dict(), w.double(), up)[0, 0].item()
        dw = (dev.dw_up if up else dev.dw_down)[0, 0].item()
        assert abs(mean_step - dw) > 0.1 * dw  # multiplicative and additive differ here
        change = one_coincidence(w, dev, up, cfg.dw_min, key=3 + up).double() - w.double()
        n, s = change.numel(), change.std().item()
        sigma = std * (dw if additive else mean_step)
        assert abs(s - sigma) < Z * s / math.sqrt(2 * n), (kind, up, s / sigma)


# ------------------------------------------------------------------------------------------------
# 7. The counter-RNG reference against the literal one-coincidence-at-a-time reference
# ------------------------------------------------------------------------------------------------


def test_soft_bounds_reference_matches_one_by_one_statistically():
    """``pulsed_update_reference`` (counter RNG) and ``pulsed_update_one_by_one`` (torch
    Generator): per-device mean and variance of the final weight agree within Z SE. Devices on
    the diagonal (no common line) are the independent samples."""
    n, n_pairs, n_runs, dw_min = 32, 8, 60, 0.02
    section = {"kind": "soft_bounds", "dw_min": dw_min, "dw_min_std": 0.6, "up_down": 0.2}
    section.update(w_max=0.3, w_min=-0.2, w_max_dtod=0.1, w_min_dtod=0.1)
    dev = draw(section, n, n, seed=6)
    cfg = UpdateConfig(bl=10)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n_pairs, n, generator=gen) + 0.2
    d = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0])[:, None].expand(n_pairs, n)
    d = d.contiguous()
    lr = 0.1
    w_start = (0.6 * dev.w_max).to(torch.float32)
    diag = torch.arange(n)

    def finals(update):
        out = torch.empty(n_runs, n, dtype=torch.float64)
        for r in range(n_runs):
            w = w_start.clone()
            update(w, x, d, lr, dev, cfg, dw_min, 3000 + r)
            out[r] = w[diag, diag].double()
        return out

    ref, seq = finals(pulsed_update_reference), finals(pulsed_update_one_by_one)
    assert (ref.mean(0) - w_start[diag, diag]).abs().mean() > 0.02  # the weights moved
    mean_diff = (ref.mean(0) - seq.mean(0)).mean().item()
    se_mean = math.sqrt((ref.var(0) + seq.var(0)).sum().item() / n_runs) / n

    def var_and_se(s):
        c = s - s.mean(0)
        var, m4 = (c**2).mean(0), (c**4).mean(0)
        return var, (m4 - var**2) / n_runs

    (vr, sr), (vs, ss) = var_and_se(ref), var_and_se(seq)
    var_diff = (vr - vs).mean().item()
    se_var = math.sqrt((sr + ss).sum().item()) / n
    assert abs(mean_diff) < Z * se_mean, mean_diff / se_mean
    assert abs(var_diff) < Z * se_var, var_diff / se_var


# ------------------------------------------------------------------------------------------------
# 8. Bounds straddle zero
# ------------------------------------------------------------------------------------------------

BOUND_CASES = {
    **{f"{kind}-defaults": {"kind": kind} for kind in MODELS},
    **{f"preset-{name}": preset_section(name) for name in DEVICE_PRESETS},
}


@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_every_device_has_bounds_strictly_around_zero(name):
    """``w_min_ij < 0 < w_max_ij`` for every device of a 200 x 200 tile: with a spread of 0.3,
    ``1 + dtod xi < 0`` for about 20 of its 40,000 bounds per side (P = Phi(-1/dtod)), and those
    draws are reflected, not floored at 0."""
    cfg = config(BOUND_CASES[name])
    if max(cfg.w_max_dtod, cfg.w_min_dtod) >= 0.2:  # the case the reflection is for
        gen = torch.Generator().manual_seed(0)
        assert (1 + cfg.w_max_dtod * torch.randn(200, 200, generator=gen) < 0).any()
    dev = draw(BOUND_CASES[name], 200, 200, seed=0)
    assert torch.all(dev.w_min < 0), (dev.w_min >= 0).sum()
    assert torch.all(dev.w_max > 0), (dev.w_max <= 0).sum()


# ------------------------------------------------------------------------------------------------
# 9. Config: kind and preset
# ------------------------------------------------------------------------------------------------


def test_kind_switch_keeps_shared_values_and_adds_the_models_defaults():
    """``device.kind`` keeps the values both models have and adds the new model's defaults; a
    key only the old model has, set to a value of its own, is refused naming it."""
    cfg = RPUConfig().override({"device.up_down": 0.2, "device.w_max": 0.9})
    soft = cfg.override({"device.kind": "soft_bounds"}).device
    assert soft.kind == "soft_bounds" and soft.up_down == 0.2 and soft.w_max == 0.9
    assert soft.mult_noise is True and soft.dw_min_std == 0.3
    lin = cfg.override({"device.kind": "linear_step"}).device
    assert lin.up_down == 0.2 and lin.gamma_up == 0.0 and lin.gamma_up_dtod == 0.05
    changed = RPUConfig().override({"device.kind": "linear_step", "device.gamma_up": 0.3})
    with pytest.raises(ConfigError, match=r"^rpu\.device\.gamma_up: unknown key"):
        changed.override({"device.kind": "constant_step"}, prefix="rpu.")


def test_kind_switch_back_drops_the_old_models_defaults():
    """soft_bounds -> constant_step, every soft_bounds key at its default: the default device."""
    soft = RPUConfig().override({"device.kind": "soft_bounds"})
    assert soft.override({"device.kind": "constant_step"}).device == RPUConfig().device


def test_kind_switch_after_a_preset_clears_the_preset():
    """The values no longer are the published fit's: ``preset`` becomes null."""
    sb = RPUConfig().override({"device.preset": "reram_sb"})
    assert sb.device.preset == "reram_sb"
    assert sb.override({"device.kind": "linear_step"}).device.preset is None


def test_device_preset_fills_the_published_values():
    for name, values in DEVICE_PRESETS.items():
        dev = RPUConfig().override({"device.preset": name}).device
        assert dev.preset == name
        dumped = dev.model_dump()
        assert {k: dumped[k] for k in values} == values, name
    assert RPUConfig().override({"device.preset": "ecram"}).device.gamma_up == 0.1153
    assert RPUConfig().override({"device.preset": "reram_es"}).device.A_up == -1.18445
    assert RPUConfig().override({"device.preset": "idealized"}).device.dw_min == 2e-4
    # In one YAML mapping the preset lands first, whatever the order of the keys.
    run = RunConfig.from_dict({"rpu": {"device": {"dw_min": 0.001, "preset": "ecram"}}})
    assert run.rpu.device.dw_min == 0.001 and run.rpu.device.gamma_up == 0.1153


@pytest.mark.parametrize(
    "change, key",
    [
        ({"device.kind": "magnetic"}, "rpu.device.kind"),
        ({"device.preset": "unobtainium"}, "rpu.device.preset"),
        ({"device.gamma_up": 0.3}, "rpu.device.gamma_up"),  # a linear_step key
        ({"device.kind": "pow_step", "device.gamma_up": 0.3}, "rpu.device.gamma_up"),
    ],
)
def test_bad_device_config_is_a_one_line_error_naming_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        RPUConfig().override(change, prefix="rpu.")
    message = str(err.value)
    assert message.startswith(key + ":") and "\n" not in message, message
    run_args = [f"rpu.{k}={v}" for k, v in change.items()]
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({}, run_args)
    assert str(err.value).startswith(key + ":"), str(err.value)


# ------------------------------------------------------------------------------------------------
# 10. Checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", W_DEPENDENT)
def test_checkpoint_round_trip_continues_bit_identically(kind):
    """``state_dict`` -> a new tile (another seed) ``load_state_dict``: same weights, same
    devices, and the same weights after a further update."""
    cfg = RPUConfig().override({f"device.{k}": v for k, v in SHAPED[kind].items()})
    gen = torch.Generator().manual_seed(0)
    x, d = torch.randn(6, 9, generator=gen), 0.5 * torch.randn(6, 7, generator=gen)
    tile = AnalogTile(7, 9, cfg, seed=1)
    tile.set_weights(0.2 * torch.randn(7, 9, generator=gen))
    tile.update(x, d, lr=0.05)
    other = AnalogTile(7, 9, cfg, seed=2)
    assert not torch.equal(other.device_state()["dw_up"], tile.device_state()["dw_up"])
    other.load_state_dict(tile.state_dict())
    assert torch.equal(other.get_weights(), tile.get_weights())
    a, b = tile.device_state(), other.device_state()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, equal_nan=True)
    w_before = tile.get_weights()
    tile.update(x.flip(0), d, lr=0.05)
    other.update(x.flip(0), d, lr=0.05)
    assert not torch.equal(tile.get_weights(), w_before)
    assert torch.equal(tile.get_weights(), other.get_weights())


# ------------------------------------------------------------------------------------------------
# soft_bounds_reference: the symmetry point subtracted
# ------------------------------------------------------------------------------------------------

REFERENCED = {"kind": "soft_bounds_reference", "up_down": 0.3, "dw_min_dtod": 0.1}


def test_reference_moves_each_devices_symmetry_point_to_zero():
    """With ``subtract_symmetry_point`` the reference is the device's own ``u*``: every device
    whose reference was not clamped has ``w_sym = 0`` (to float rounding), its bounds shifted
    by the reference and still straddling zero; without it the device is a soft-bounds device."""
    dev = draw(REFERENCED, 60, 60, seed=3)
    st = dev.as_dict()
    b_max, b_min = st["w_max"] + st["ref"], st["w_min"] + st["ref"]
    clamped = (st["ref"] >= 0.99 * b_max - 1e-6) | (st["ref"] <= 0.99 * b_min + 1e-6)
    assert clamped.float().mean() < 0.02
    assert torch.all(st["w_sym"][~clamped].abs() < 1e-5)
    assert torch.all(st["w_min"] < 0) and torch.all(st["w_max"] > 0)
    plain = draw({**REFERENCED, "subtract_symmetry_point": False}, 60, 60, seed=3).as_dict()
    soft = draw({**REFERENCED, "kind": "soft_bounds"}, 60, 60, seed=3).as_dict()
    assert torch.all(plain["ref"] == 0)
    for key in ("dw_up", "dw_down", "w_max", "w_min"):
        assert torch.equal(plain[key], soft[key])
    torch.testing.assert_close(plain["w_sym"], soft["w_sym"], equal_nan=True)


def test_balanced_pulses_drive_referenced_devices_to_zero():
    """Alternating up and down coincidences bring a referenced device to ``w = 0`` from either
    end, where a plain soft-bounds device of the same draw goes to its own, spread ``w_sym``.

    The stationary point is estimated as in the soft-bounds test above: ``(up' E[a] + down'
    E[b]) / (up' + down')`` with ``a`` the weight before each up step, ``b`` before each down
    step and the rates ``up' = dw_up / b_max``, ``down' = dw_down / |b_min|`` (steps linear in
    ``w``). Checked: the mean over devices within Z SE of 0, every device within Z sigma of the
    devices' spread, and that spread far below the plain devices' spread of ``w_sym``."""
    n, dw_min = 16, 0.002
    section = {**REFERENCED, "dw_min": dw_min, "w_max_dtod": 0.2, "w_min_dtod": 0.2}
    dev = draw(section, n, n, seed=5)
    st = dev.as_dict()
    usable = torch.isfinite(st["w_sym"]) & (st["w_sym"].abs() < 1e-5)
    w = torch.where(torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < 0.5, 0.8, -0.8)
    w = torch.where(w > 0, w * dev.w_max, -w * dev.w_min).to(torch.float32)
    cycles = 2000
    sum_a, sum_b = alternate_pulses(w, dev, dw_min, burn_in=1400, cycles=cycles)
    b_max = st["w_max"].double() + st["ref"].double()
    b_min = st["w_min"].double() + st["ref"].double()
    up_rate, down_rate = st["dw_up"].double() / b_max, st["dw_down"].double() / -b_min
    estimate = (up_rate * sum_a + down_rate * sum_b) / (cycles * (up_rate + down_rate))
    err = estimate[usable]
    spread = err.std()
    assert abs(err.mean()) < Z * spread / math.sqrt(err.numel()), err.mean() / spread
    assert err.abs().max() < Z * spread
    plain = draw({**section, "kind": "soft_bounds"}, n, n, seed=5).as_dict()["w_sym"]
    assert plain[torch.isfinite(plain)].std() > 5 * spread
