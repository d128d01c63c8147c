"""The Triton twins give the torch references' bits, checked without a GPU.

The kernels run on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``), which
executes them in numpy: same indices, same hashes, same float32 operations one by one. What the
interpreter cannot show is what the GPU compiler makes of that arithmetic (FMA contraction,
approximate division, subnormals flushed to zero): the last test compiles the kernels to PTX for
a CUDA target, which needs no GPU, and reads the float instructions. ``scripts/gpu_check.py``
runs the compiled kernels on a GPU.

Triton picks the interpreter when a function is decorated with ``@triton.jit``, i.e. when
``triton.language`` itself and the twins are imported, and for good: one process cannot hold
both kinds. So a plain ``pytest`` run of this file has one test that runs the file again in a
fresh process with the variable set, where the twin tests run (``TRITON_INTERPRET=1 pytest
tests/test_triton.py`` runs them directly); other tests of the session never see an
interpreted Triton.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from twin_cases import (
    MANAGEMENTS,
    TWIN_DEVICES,
    assert_same_reads,
    device_update_case,
    random_io,
    reads_by_both,
    update_pairs,
)

from rpusim.config import DeviceConfig, IOConfig, UpdateConfig
from rpusim.devices import sample_devices
from rpusim.update import pulsed_update, pulsed_update_reference

#: This process runs Triton's interpreter (the variable is read as triton reads it).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes", "y")

pytest.importorskip("triton")

if not INTERPRETED:

    def test_twins_in_the_interpreter():
        """This file again, in a fresh process under ``TRITON_INTERPRET=1``: the twin tests."""
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            args, capture_output=True, text=True, env=env, cwd=root, timeout=600
        )
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed and int(passed[1]) >= 40, result.stdout[-2000:]


def interpreted(test):
    """Collect ``test`` only in the interpreted process (pytest leaves out ``__test__ = False``)."""
    test.__test__ = INTERPRETED
    return test


@pytest.fixture(scope="module")
def twins():
    """The twin modules (kernels interpreted), on one torch thread."""
    from rpusim.periphery import triton as triton_periphery
    from rpusim.update import triton as triton_update

    assert triton_update.interpreted() and triton_periphery.interpreted()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield triton_update, triton_periphery
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# The pulsed update
# ------------------------------------------------------------------------------------------------

NO_UM = {"update_management": False}
UPDATE_CASES = {
    # name: (K, out, in, lr, update cfg kwargs, device overrides, (block_rows, block_cols))
    "tiny": (3, 1, 1, 0.05, {}, {}, None),
    "um_bl10": (7, 5, 3, 0.05, {}, {}, None),
    "no_um_7x5": (12, 7, 5, 0.05, NO_UM, {}, (4, 2)),
    "bl_management_13x11": (20, 13, 11, 0.02, {"bl_management": True, "bl": 31}, {}, (8, 4)),
    "bl_mgmt_no_um": (20, 9, 13, 0.02, {**NO_UM, "bl_management": True}, {}, None),
    "bl_64_two_tiles_wide": (6, 5, 40, 0.05, {"bl": 64}, {}, None),
    "bounds_reached": (20, 11, 9, 2.0, {"bl": 20}, {"dw_min": 0.05}, (4, 4)),
    "capped_probabilities": (10, 8, 6, 5.0, NO_UM, {}, None),
    "no_c2c_noise": (15, 8, 6, 0.1, {}, {"dw_min_std": 0.0}, None),
    "asymmetric_unbounded": (15, 8, 11, 0.1, {"bl": 1}, {"up_down": 0.3, "w_max": None}, None),
}


def _update_case(name: str):
    n_pairs, n_out, n_in, lr, upd, dev_kw, _ = UPDATE_CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    # The default device has device-to-device spread of steps, bounds and asymmetry.
    dev = sample_devices(DeviceConfig(**dev_kw), n_out, n_in, torch.Generator().manual_seed(3))
    x, d = update_pairs(gen, n_pairs, n_out, n_in)
    w0 = (0.5 if name == "bounds_reached" else 0.1) * torch.randn(n_out, n_in, generator=gen)
    return w0, x, d, lr, dev, UpdateConfig(**upd), DeviceConfig(**dev_kw).dw_min


@interpreted
@pytest.mark.parametrize("case", sorted(UPDATE_CASES))
def test_update_twin_matches_reference_bit_for_bit(case, twins):
    update, _ = twins
    w0, x, d, lr, dev, cfg, dw_min = _update_case(case)
    w_ref, w_twin = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=12345)
    tiles = UPDATE_CASES[case][-1]
    if tiles is None:
        pulsed_update(w_twin, x, d, lr, dev, cfg, dw_min, key=12345, backend="triton")
    else:  # several tiles, with partial ones at the edges
        update.pulsed_update_triton(w_twin, x, d, lr, dev, cfg, dw_min, 12345, *tiles)
    assert torch.equal(w_ref, w_twin)
    if w0.numel() > 1:
        assert not torch.equal(w_ref, w0)  # the case did update something
    if case == "bounds_reached":
        assert ((w_ref == dev.w_max) | (w_ref == dev.w_min)).float().mean() > 0.2


@interpreted
def test_update_twin_over_chunks_and_strided_weights(twins, monkeypatch):
    """Pairs split over several chunks, and a transposed view of ``w``: the same bits."""
    update, _ = twins
    w0, x, d, lr, dev, cfg, dw_min = _update_case("bl_management_13x11")
    w_ref = w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=7)
    monkeypatch.setattr(update, "CHUNK", 6)
    w_view = w0.t().contiguous().t()
    update.pulsed_update_triton(w_view, x, d, lr, dev, cfg, dw_min, 7)
    assert not w_view.is_contiguous() and torch.equal(w_ref, w_view)


# ------------------------------------------------------------------------------------------------
# Device models whose step depends on w: one coincidence at a time
# ------------------------------------------------------------------------------------------------


@interpreted
@pytest.mark.parametrize("case", sorted(TWIN_DEVICES))
def test_update_twin_every_device_model(case, twins):
    """Every model and preset (d2d spreads, c2c noise, asymmetry, weights on their bounds,
    saturated and empty pairs): the reference's bits. Each case takes one of the four update
    and BL managements in turn (they change only the counts, which the folded cases above
    cover with every management); one tile of 8 x 128 devices, as the interpreter's time goes by
    the program."""
    update, _ = twins
    management = MANAGEMENTS[sorted(TWIN_DEVICES).index(case) % len(MANAGEMENTS)]
    w0, x, d, lr, dev, cfg, dw_min = device_update_case(case, management)
    w_ref, w_twin = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=4242)
    update.pulsed_update_triton(w_twin, x, d, lr, dev, cfg, dw_min, 4242, 8, 128)
    assert torch.equal(w_ref, w_twin), (w_ref - w_twin).abs().max()
    assert (w_ref != w0).float().mean() > 0.2  # the case did update most devices


W_DEPENDENT_EDGES = {
    # name: (device case, management, device changes, lr factor)
    "exp_step-no-c2c-noise": ("preset-reram_es", "um", {"dw_min_std": 0.0}, 1.0),
    "linear_step-to-its-bounds": ("linear_step-defaults", "none", {"dw_min": 0.05}, 5.0),
    "soft_bounds-asymmetric-additive": (
        "soft_bounds-defaults", "um+blm", {"up_down": 0.4, "mult_noise": False}, 1.0,
    ),
}  # fmt: skip


@interpreted
@pytest.mark.parametrize("name", sorted(W_DEPENDENT_EDGES))
def test_update_twin_one_at_a_time_edges(name, twins):
    """No c2c noise, devices driven onto their bounds, strong asymmetry with additive noise;
    through ``backend="triton"`` (its default tiles, partial at the edges)."""
    case, management, change, lr_factor = W_DEPENDENT_EDGES[name]
    w0, x, d, lr, dev, cfg, dw_min = device_update_case(case, management, 19, 37, change)
    w_ref, w_twin = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, lr * lr_factor, dev, cfg, dw_min, key=99)
    pulsed_update(w_twin, x, d, lr * lr_factor, dev, cfg, dw_min, key=99, backend="triton")
    assert torch.equal(w_ref, w_twin), (w_ref - w_twin).abs().max()
    assert (w_ref != w0).float().mean() > 0.2
    if name.endswith("to-its-bounds"):
        assert ((w_ref == dev.w_max) | (w_ref == dev.w_min)).float().mean() > 0.2


@interpreted
@pytest.mark.parametrize("case", ["piecewise_step-5-nodes", "preset-ecram"])
def test_update_twin_one_at_a_time_over_chunks_tiles_and_strided_weights(case, twins):
    """A w-dependent model with the pairs split over several chunks, several tiles (partial at
    the edges) and a transposed view of ``w``: the same bits."""
    update, _ = twins
    w0, x, d, lr, dev, cfg, dw_min = device_update_case(case, "um+blm", n_out=7, n_in=21)
    w_ref = w0.clone()
    pulsed_update_reference(w_ref, x, d, lr, dev, cfg, dw_min, key=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(update, "CHUNK", 3)
        w_view = w0.t().contiguous().t()
        update.pulsed_update_triton(w_view, x, d, lr, dev, cfg, dw_min, 7, 4, 16)
    assert not w_view.is_contiguous() and torch.equal(w_ref, w_view)


PLUGIN_MODEL = textwrap.dedent(
    '''
    """A device model written for a test: one file, registered, and no edit of any kernel."""
    from typing import ClassVar, Literal

    from rpusim.devices import ops
    from rpusim.devices.base import (
        PulsedDeviceConfig, arrays, draw_pulsed, symmetry_point_by_bisection,
    )

    KIND = "plugin_test"
    PARAMS = ("dw_up", "dw_down", "inv_range", "tilt")
    CONSTS = ("dw_min_std", "n_nodes", "up0", "up1", "up2", "down0", "down1", "down2")
    FOLDS = False


    class Config(PulsedDeviceConfig):
        kind: Literal["plugin_test"] = "plugin_test"
        needs_bounds: ClassVar[bool] = True


    def consts(cfg):
        return (cfg.dw_min_std, 3.0, 1.3, 0.7, 1.1, 0.9, 0.4, 1.2)


    def draw(cfg, shape, gen):
        base = draw_pulsed(cfg, shape, gen)
        inv_range = 1.0 / (base.w_max - base.w_min)
        tilt = 0.1 + 0.05 * base.w_max  # a fourth per-device parameter
        return arrays(KIND, [base.dw_up, base.dw_down, inv_range, tilt], base, consts(cfg))


    def step(w, up, w_max, w_min, p, c, z):
        r = ops.minimum(ops.maximum((w - w_min) * p[2], 0.0), 1.0)
        k = ops.minimum(ops.floor(r * (c[1] - 1.0)), c[1] - 2.0)
        first = ops.where(up, 2.0, 2.0 + c[1]) + k
        node = ops.take(c, first) + (r * (c[1] - 1.0) - k) * (
            ops.take(c, first + 1.0) - ops.take(c, first)
        )
        bend = ops.pow(ops.where(up, 1.0 - r, r) + 0.1, 0.7) * ops.exp(-p[3] * r / 0.3)
        return w + ops.where(up, p[0], -p[1]) * node * bend * (1.0 + c[0] * z)


    def symmetry_point(dev):
        return symmetry_point_by_bisection(dev)
    '''
)


@interpreted
def test_update_twin_runs_a_new_device_file_as_it_is(twins, tmp_path, monkeypatch):
    """The plug-in design: a device model in a new file (every op of ``ops``, a fourth
    parameter, a literal that float32 cannot hold), put in the registry, runs through the
    Triton update with the reference's bits; nothing in ``update/triton.py`` names it."""
    import importlib
    import inspect

    from rpusim.devices import MODELS

    update, _ = twins
    (tmp_path / "plugin_test.py").write_text(PLUGIN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = importlib.import_module("plugin_test")
    monkeypatch.setitem(MODELS, model.KIND, model)
    assert model.KIND not in inspect.getsource(update)
    dev = sample_devices(model.Config(), 6, 23, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    x, d = update_pairs(gen, 8, 6, 23)
    w0 = dev.w_min + torch.rand(6, 23, generator=gen) * (dev.w_max - dev.w_min)
    cfg = UpdateConfig(bl=31)
    w_ref, w_twin = w0.clone(), w0.clone()
    pulsed_update_reference(w_ref, x, d, 0.04, dev, cfg, 0.001, key=5)
    pulsed_update(w_twin, x, d, 0.04, dev, cfg, 0.001, key=5, backend="triton")
    assert torch.equal(w_ref, w_twin), (w_ref - w_twin).abs().max()
    assert (w_ref != w0).float().mean() > 0.2


if INTERPRETED:
    import triton
    import triton.language as tl

    from rpusim.devices import ops_triton

    @triton.jit
    def _ops_kernel(a_ptr, b_ptr, table_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """Each op of the Triton dialect on blocks ``a``, ``b`` (float64), into ``out[op]``."""
        i = tl.arange(0, BLOCK)
        m = i < n
        a = tl.load(a_ptr + i, mask=m, other=0.0)
        b = tl.load(b_ptr + i, mask=m, other=0.0)
        table = (tl.load(table_ptr), tl.load(table_ptr + 1), tl.load(table_ptr + 2))
        tl.store(out_ptr + i, ops_triton.maximum(a, b), mask=m)
        tl.store(out_ptr + n + i, ops_triton.minimum(a, b), mask=m)
        tl.store(out_ptr + 2 * n + i, ops_triton.floor(a), mask=m)
        tl.store(out_ptr + 3 * n + i, ops_triton.exp(a), mask=m)
        tl.store(out_ptr + 4 * n + i, ops_triton.pow(tl.abs(a), b), mask=m)
        tl.store(out_ptr + 5 * n + i, ops_triton.take(table, tl.abs(b)), mask=m)
        tl.store(out_ptr + 6 * n + i, ops_triton.where(a > b, a, 0.1), mask=m)
        tl.store(out_ptr + 7 * n + i, ops_triton.pow(tl.abs(a), 0.7), mask=m)


@interpreted
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_triton_ops_are_the_torch_ops(twins):
    """The Triton dialect's ops against the torch dialect's on the same float64 values: the
    exact ones (selections, floor, take) bit for bit, NaN and subnormals included; ``exp`` and
    ``pow`` (numpy's here, libdevice's compiled) within 2 ulp in float64 and equal once rounded
    to float32 (ops_triton's docstring)."""
    from rpusim.devices.ops import TORCH

    gen = torch.Generator().manual_seed(0)
    special = [float("nan"), -float("inf"), float("inf"), -0.0, 0.0, -5e-324, 5e-324, -2.5, 2.5]
    a = torch.cat([torch.tensor(special), 8 * torch.randn(3000, generator=gen)]).double()
    b_special = [1.0, float("nan"), -3.0, 0.0, 2.0, -0.0, float("inf"), 0.5, float("nan")]
    b = torch.cat([torch.tensor(b_special), 3 * torch.rand(3000, generator=gen)]).double()
    b[-len(special) :] = torch.tensor(special)  # and each special value against itself
    a[-len(special) :] = torch.tensor(special)
    table = torch.tensor([0.25, -1.5, 7.0], dtype=torch.float64)
    n = a.numel()
    out = torch.empty(8 * n, dtype=torch.float64)
    _ops_kernel[(1,)](a, b, table, out, n, BLOCK=triton.next_power_of_2(n))
    got = out.view(8, n)
    exact = {
        "maximum": (0, TORCH.maximum(a, b)),
        "minimum": (1, TORCH.minimum(a, b)),
        "floor": (2, TORCH.floor(a)),
        "take": (5, TORCH.take(table, b.abs().nan_to_num(3.0).clamp(max=2.0))),
        "where": (6, TORCH.where(a > b, a, 0.1)),
    }
    inside = b.abs() < 3  # take's indices inside the table (outside: 0, where torch raises)
    for name, (row, want) in exact.items():
        g, w = (got[row][inside], want[inside]) if name == "take" else (got[row], want)
        assert torch.equal(g.isnan(), w.isnan()), name
        ok = ~w.isnan()
        assert torch.equal(g[ok], w[ok]), name
        # The sign of a zero on a tie (clamp(-0, min=0)) is not torch's choice but its code
        # path's: its vectorized loop and its scalar tail differ. Elsewhere signs are exact.
        ok &= (w != 0) | (name not in ("maximum", "minimum"))
        assert torch.equal(torch.signbit(g[ok]), torch.signbit(w[ok])), name
    for name, row, want in (
        ("exp", 3, TORCH.exp(a)),
        ("pow", 4, TORCH.pow(a.abs(), b)),
        ("pow of a number", 7, TORCH.pow(a.abs(), 0.7)),
    ):
        g, finite = got[row], torch.isfinite(want)
        assert torch.equal(torch.isfinite(g), finite), name
        ulp = torch.nextafter(want.abs(), torch.tensor(math.inf, dtype=torch.float64)) - want.abs()
        assert ((g - want)[finite].abs() <= 2 * ulp[finite]).all(), name
        assert torch.equal(g[finite].float(), want[finite].float()), name


# ------------------------------------------------------------------------------------------------
# The periphery
# ------------------------------------------------------------------------------------------------


def _both(weights, x, io, transposed, seed=11, reads=2):
    return reads_by_both(weights, x, io, transposed, "triton", seed, reads)


@interpreted
@pytest.mark.parametrize("batch", [1, 7])
def test_periphery_twin_over_random_configs(batch, twins, monkeypatch):
    _, periphery = twins
    rereads = []
    read = periphery._read
    monkeypatch.setattr(periphery, "_read", lambda *a: rereads.append(a[6] is not None) or read(*a))
    rng = random.Random(batch)
    gen = torch.Generator().manual_seed(batch)
    for case in range(40):
        io = random_io(rng)
        out_size, in_size = rng.choice([(24, 40), (5, 3), (13, 11), (7, 5)])
        weights = (torch.rand(out_size, in_size, generator=gen) - 0.5) * 1.2
        transposed = case % 2 == 1
        x = torch.randn(batch, out_size if transposed else in_size, generator=gen)
        x *= rng.choice([0.01, 1.0, 30.0])  # some far beyond the DAC range
        if rng.random() < 0.3:
            x[rng.randrange(batch)] = 0.0  # an all-zero row: alpha = 0
        assert_same_reads(*_both(weights, x, io, transposed, seed=case))
    assert sum(rereads) >= 5, "too few cases exercised bound management"


@interpreted
def test_periphery_twin_every_switch_combination(twins):
    """Each on/off combination of bits, stochastic rounding, NM, BM and noise, both directions."""
    gen = torch.Generator().manual_seed(3)
    weights = (torch.rand(6, 9, generator=gen) - 0.5) * 1.2
    for inp_bits, sto, nm, bm, noise, transposed in itertools.product(
        [None, 6], [False, True], ["abs_max", "none"], ["iterative", "none"], [0.0, 0.1], [0, 1]
    ):
        io = IOConfig(
            inp_bits=inp_bits,
            inp_sto_round=sto,
            noise_management=nm,
            bound_management=bm,
            out_noise=noise,
            out_bound=3.0,
        )
        x = torch.randn(4, 6 if transposed else 9, generator=gen) * 5
        x[2] = 0.0
        assert_same_reads(*_both(weights, x, io, bool(transposed), reads=1))


@interpreted
def test_periphery_twin_bound_management_to_its_limit(twins):
    """Rows that still saturate at ``max_bm_factor`` keep their last read, as in the reference."""
    weights = torch.full((6, 20), 0.5)
    x = torch.ones(3, 20)
    x[1] *= 1e-3  # with NM off, this row does not saturate
    for nm, limit in itertools.product(["abs_max", "none"], [1, 2, 8, 1024]):
        io = IOConfig(noise_management=nm, max_bm_factor=limit, out_bound=0.1, inp_bits=None)
        assert_same_reads(*_both(weights, x, io, transposed=False, reads=2))


@interpreted
def test_converter_rounding_is_torch_round(twins):
    """The ADC rounds half to even and keeps the sign of zero: on ties, next to ties, on small
    negatives (``-0.3 -> -0.0``), subnormals and values with few fraction bits."""
    io = IOConfig(
        noise_management="none",
        inp_bits=None,
        inp_bound=None,
        out_noise=0.0,
        out_bound=2.0**23 - 1,
        out_bits=24,  # step 1, and every float32 below 2**23 in range
        bound_management="none",
    )
    ties = torch.arange(-8.0, 8.0) + 0.5
    near = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
    small = torch.tensor([-0.3, -0.5, 0.5, -0.0, 0.0, -1e-40, 1e-40, -0.5 + 2.0**-25, 1.0])
    wide = torch.randn(100, generator=torch.Generator().manual_seed(0)) * 1e6
    x = torch.cat([near, small, wide, -wide])[None, :]
    (ys_ref, _), (ys_twin, _) = _both(torch.eye(x.shape[1]), x, io, False, reads=1)
    assert torch.equal(ys_ref[0], ys_twin[0])
    assert torch.equal(torch.signbit(ys_ref[0]), torch.signbit(ys_twin[0]))


@interpreted
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_periphery_twin_non_finite_inputs(twins):
    """A diverged network's NaN/inf inputs give the reference's NaN/inf, row by row."""
    rng = random.Random(5)
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(9, 6, generator=gen) * 0.3
    x = torch.randn(4, 6, generator=gen)
    x[0, 2], x[1, 0], x[2, 5] = float("nan"), float("inf"), -float("inf")
    for case in range(12):
        assert_same_reads(*_both(weights, x, random_io(rng), False, case), equal_nan=True)


# ------------------------------------------------------------------------------------------------
# What the GPU compiler makes of the arithmetic
# ------------------------------------------------------------------------------------------------

_COMPILE = textwrap.dedent(
    """
    import json, re, types
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from rpusim.devices import MODELS, ops_triton
    from rpusim.devices.ops import bind
    from rpusim.periphery import triton as tp
    from rpusim.update import triton as tu


    @triton.jit
    def exp_stub(a):
        return a


    @triton.jit
    def pow_stub(a, b):
        return a * b


    # Triton's ops with exp and pow (libdevice, whose algorithms use FMA on purpose) replaced by
    # plain arithmetic: what the compiler then emits is the model's own arithmetic.
    STUBBED = types.ModuleType("ops_stubbed")
    STUBBED.__dict__.update({k: v for k, v in vars(ops_triton).items() if not k.startswith("__")})
    STUBBED.exp, STUBBED.pow = exp_stub, pow_stub


    def stubbed_response(kind):
        fn = bind(MODELS[kind].step, STUBBED)
        fn.__globals__["tl"] = tl
        return triton.jit(fn)


    F, I64 = "*fp32", "*i64"
    APPLY = dict(
        w_ptr=F, x_ptr=F, d_ptr=F, col_word_ptr="*u64", row_word_ptr="*u64", dw_up_ptr=F,
        dw_down_ptr=F, w_min_ptr=F, w_max_ptr=F, std_sqrt_ptr=F, table_ptr=F,
        c2c_base_ptr=I64, c2c_col_seed_ptr=I64, k0="i32", k1="i32", n_out="i32", n_in="i32",
        params_ptr=F, consts_ptr="*fp64")
    KERNELS = [
        ("fire_words", tu._fire_words_kernel, dict(BLOCK=128), dict(
            v_ptr=F, scale_ptr=F, bl_ptr="*i32", base_ptr=I64, line_seed_ptr=I64,
            words_ptr="*u64", k0="i32", n_lines="i32")),
    ]
    for kind, model in MODELS.items():
        if model.FOLDS:
            KERNELS.append((f"apply[{kind}]", tu._apply_kernel, dict(
                NOISY=True, BLOCK_J=16, BLOCK_I=32, STEP_N=tu.folded_response(kind)), APPLY))
            continue
        loaders = dict(
            LOAD_PARAMS=tu.param_loader(len(model.PARAMS)),
            LOAD_CONSTS=tu.const_loader(len(model.consts(model.Config()))))
        for name, step in ((kind, tu.response(kind)), (kind + ":stubbed", stubbed_response(kind))):
            KERNELS.append((f"apply_steps[{name}]", tu._apply_steps_kernel, dict(
                BLOCK_J=16, BLOCK_I=32, STEP=step, **loaders), APPLY))
    for reread, sto in ((False, False), (True, True)):
        KERNELS.append((f"input_side[{sto}]", tp.input_side, dict(
            NM=True, REREAD=reread, CLIP=True, QUANT=True, STO=sto, BLOCK=512), dict(
            x_ptr=F, rows_ptr=I64, alpha_ptr=F, u_ptr=F, x_q_ptr=F, n="i32", factor="fp32",
            bound="fp32", per_step="fp32", step="fp32")))
    KERNELS.append(("output_side", tp.output_side, dict(
        NM=True, REREAD=True, NOISE=True, CLIP=True, QUANT=True, BLOCK=512), dict(
        z_ptr=F, rows_ptr=I64, noise_ptr=F, alpha_ptr=F, y_ptr=F, sat_ptr="*i32", m="i32",
        factor="fp32", sigma="fp32", bound="fp32", per_step="fp32", step="fp32")))
    FLOAT_OP = (r"\\b((?:fma|mad|div|add|sub|mul|cvt|abs|max|min|rcp|sqrt|rsqrt|ex2|lg2|sin|cos)"
                r"[.a-z0-9]*f(?:32|64))")
    found = {}
    for name, fn, constexprs, types_ in KERNELS:
        sig = {n: "constexpr" if n in constexprs else types_[n] for n in fn.arg_names}
        src = ASTSource(fn, sig, constexprs=constexprs)
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=tu.IEEE_F32).asm["ptx"]
        found[name] = sorted(set(re.findall(FLOAT_OP, ptx)))
    print(json.dumps(found))
    """
)


def _not_ieee(ops: list[str], widths: tuple[str, ...] = ("f32", "f64")) -> list[str]:
    """The float operations of ``ops`` (PTX mnemonics) of these widths that do not round once,
    to nearest: fused multiply-adds, approximations, flushes to zero, arithmetic without
    ``.rn``."""
    ops = [op for op in ops if op.endswith(widths)]
    bad = [op for op in ops if op.startswith(("fma", "mad", "rcp", "sqrt", "rsqrt", "ex2", "lg2"))]
    bad += [op for op in ops if ".ftz" in op or ".full" in op or ".approx" in op]
    bad += [op for op in ops if op.startswith(("add", "sub", "mul", "div")) and ".rn" not in op]
    return sorted(set(bad))


@pytest.mark.skipif(INTERPRETED, reason="runs in the compiled-mode session")
def test_compiled_kernels_round_as_ieee_float32(tmp_path):
    """Compiled for a CUDA GPU (sm_90; no GPU needed), every float operation of the kernels
    rounds once, to nearest: no fused multiply-add, no approximate division, no flush to zero.
    For every device model: its folded kernel, or its one-at-a-time kernel with the float64
    response and its one rounding to float32 (``cvt.rn.f32.f64``).

    The exception is inside libdevice's ``exp`` and ``pow`` (a model that calls ``ops.exp`` or
    ``ops.pow``): their algorithms use FMA and a first approximate reciprocal on purpose, within
    their documented 1-2 ulp in float64. For those models the same kernel is compiled once more
    with both replaced by plain arithmetic: the model's own arithmetic must then be IEEE too,
    and the float32 arithmetic of the real kernel is IEEE as it stands.
    """
    import inspect

    from rpusim.devices import MODELS

    script = tmp_path / "compile_kernels.py"  # Triton reads a jit function's source from a file
    script.write_text(_COMPILE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    if result.returncode != 0:
        pytest.skip(f"cannot compile for a CUDA target here: {result.stderr[-500:]}")
    found = json.loads(result.stdout.splitlines()[-1])
    libdevice_models = set()
    for kind, model in MODELS.items():
        if model.FOLDS:
            assert f"apply[{kind}]" in found
            continue
        real, stubbed = found[f"apply_steps[{kind}]"], found.pop(f"apply_steps[{kind}:stubbed]")
        assert "cvt.rn.f32.f64" in real, kind  # the response rounded to float32, to nearest
        assert not _not_ieee(stubbed), f"{kind} (exp and pow stubbed): {_not_ieee(stubbed)}"
        source = inspect.getsource(model.step)
        if "ops.exp" in source or "ops.pow" in source:
            libdevice_models.add(kind)
            assert not _not_ieee(real, ("f32",)), f"{kind}: {_not_ieee(real, ('f32',))}"
            assert not [op for op in _not_ieee(real) if op.startswith(("add", "sub", "mul"))]
            found.pop(f"apply_steps[{kind}]")
    for name, ops in found.items():
        assert not _not_ieee(ops), f"{name}: {_not_ieee(ops)}"
    assert libdevice_models >= {"exp_step", "pow_step"}
    assert "div.rn.f32" in found["input_side[False]"]  # noise management divides, exactly
    assert "cvt.rmi.f32.f32" in found["output_side"]  # floor, subnormals kept
    assert "cvt.rmi.f64.f64" in found["apply_steps[piecewise_step]"]  # the nodes' floor
