"""Check the Triton twins on a CUDA GPU: the torch references' bits, and their speed.

The test suite runs the kernels through Triton's interpreter on the CPU (``tests/test_triton.py``);
this script runs them compiled, on the GPU, at the shapes of a training run (the 512 x 257 gate
array of a 128-unit LSTM layer), which the suite cannot do: the folded constant-step update,
every w-dependent device model one coincidence at a time, and the reads. It is not part of the
suite.

    python scripts/gpu_check.py            # exit status 1 if any twin differs from its reference

Prints one row per check: whether the twin's result equals the reference's (``torch.equal``;
for reads, also the generator state after) and the time per call of the reference, the twin and,
for the update, the float GEMM ``d.T @ x`` of the same pairs (what an ideal update costs).
"""

from __future__ import annotations

import sys
import time

import torch

from rpusim.config import BackwardIOConfig, DeviceConfig, IOConfig, UpdateConfig
from rpusim.devices import MODELS, sample_devices
from rpusim.devices.presets import DEVICE_PRESETS, preset_section
from rpusim.periphery import analog_mvm_reference
from rpusim.periphery.triton import analog_mvm_triton
from rpusim.update import pulsed_update_reference
from rpusim.update.triton import pulsed_update_triton

OUT, IN = 512, 257  # 4 gates x 128 units; 128 inputs + 128 recurrent + bias
LR, DW_MIN = 0.01, DeviceConfig().dw_min


def timed(fn, reps: int = 5) -> float:
    """Seconds per call of ``fn`` (after one warm-up call, which also compiles)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def row(what: str, same: bool, ref: float, twin: float, gemm: float | None = None) -> bool:
    gemm_ms = f"{gemm * 1e3:9.3f}" if gemm is not None else " " * 9
    verdict = "equal" if same else "DIFFERENT"
    print(f"{what:<34} {verdict:>9} {ref * 1e3:10.2f} {twin * 1e3:9.3f} {gemm_ms}")
    return same


def check_update(n_pairs: int, cfg: UpdateConfig, tiles: list[tuple[int, int]]) -> bool:
    gen = torch.Generator().manual_seed(n_pairs)
    dev = sample_devices(DeviceConfig(), OUT, IN, gen).to("cuda")
    x = (2 * torch.rand(n_pairs, IN, generator=gen) - 1).cuda()  # LSTM inputs: tanh-like
    d = (0.01 * torch.randn(n_pairs, OUT, generator=gen)).cuda()  # small gate errors
    w0 = (0.1 * torch.randn(OUT, IN, generator=gen)).cuda()
    w_ref = w0.clone()
    ref = timed(lambda: pulsed_update_reference(w_ref.copy_(w0), x, d, LR, dev, cfg, DW_MIN, 1), 1)
    gemm = timed(lambda: d.T @ x)
    ok = not torch.equal(w_ref, w0)
    for rows, cols in tiles:
        w = w0.clone()
        pulsed_update_triton(w, x, d, LR, dev, cfg, DW_MIN, 1, rows, cols)
        same = torch.equal(w_ref, w)
        twin = timed(lambda: pulsed_update_triton(w, x, d, LR, dev, cfg, DW_MIN, 2, rows, cols))  # noqa: B023
        ok &= row(f"update K={n_pairs} BL={cfg.bl} tile {rows}x{cols}", same, ref, twin, gemm)
    return ok


#: The device sections of the one-at-a-time check: every model whose step depends on w (with a
#: w-dependence its defaults lack) and every preset of such a model.
W_DEPENDENT = {
    "linear_step": {"kind": "linear_step", "gamma_up": 0.5, "gamma_down": 0.4},
    "soft_bounds": {"kind": "soft_bounds"},
    "exp_step": {"kind": "exp_step"},
    "pow_step": {"kind": "pow_step", "pow_gamma": 2.0, "pow_up_down": 0.3},
    "piecewise_step": {
        "kind": "piecewise_step",
        "piecewise_up": [1.4, 1.1, 0.8, 0.5, 0.2],
        "piecewise_down": [0.3, 0.6, 0.9, 1.0, 1.5],
    },
    "soft_bounds_reference": {"kind": "soft_bounds_reference"},
    **{
        name: preset_section(name)
        for name, v in DEVICE_PRESETS.items()
        if v["kind"] != "constant_step"
    },
}


def check_device_model(name: str, n_pairs: int) -> bool:
    """One coincidence at a time: the Triton twin against the torch reference on the GPU (the
    verdict), and the number of weights in which it differs from the reference on the CPU (where
    exp and pow are the C library's, not libdevice's: expected 0, or a few 1-ulp weights)."""
    section = W_DEPENDENT[name]
    cfg_dev = MODELS[section["kind"]].Config(**section)
    gen = torch.Generator().manual_seed(n_pairs)
    dev_cpu = sample_devices(cfg_dev, OUT, IN, gen)
    dev = dev_cpu.to("cuda")
    x = 2 * torch.rand(n_pairs, IN, generator=gen) - 1
    d = 0.1 * torch.randn(n_pairs, OUT, generator=gen)
    w0 = dev_cpu.w_min + torch.rand(OUT, IN, generator=gen) * (dev_cpu.w_max - dev_cpu.w_min)
    cfg, lr, dw_min = UpdateConfig(bl_management=True, bl=31), 40 * cfg_dev.dw_min, cfg_dev.dw_min
    w_cpu = w0.clone()
    pulsed_update_reference(w_cpu, x, d, lr, dev_cpu, cfg, dw_min, 1)
    x, d, w0 = x.cuda(), d.cuda(), w0.cuda()
    w_ref, w = w0.clone(), w0.clone()
    ref = timed(lambda: pulsed_update_reference(w_ref.copy_(w0), x, d, lr, dev, cfg, dw_min, 1), 1)
    twin = timed(lambda: pulsed_update_triton(w.copy_(w0), x, d, lr, dev, cfg, dw_min, 1), 3)
    moved = not torch.equal(w_ref, w0)
    ok = row(f"update {name} K={n_pairs}", moved and torch.equal(w_ref, w), ref, twin)
    off_cpu = int((w.cpu() != w_cpu).sum())
    print(f"  {name}: {off_cpu} of {w.numel()} weights differ from the CPU reference")
    return ok


def check_read(io: IOConfig, batch: int, transposed: bool) -> bool:
    gen = torch.Generator().manual_seed(batch)
    weights = (0.3 * torch.randn(OUT, IN, generator=gen)).cuda()
    x = (2 * torch.randn(batch, OUT if transposed else IN, generator=gen)).cuda()
    results = []
    for read in (analog_mvm_reference, analog_mvm_triton):
        g = torch.Generator("cuda").manual_seed(7)
        y = read(weights, x, io, g, transposed)
        state = g.get_state()
        results.append((y, state, timed(lambda r=read, g=g: r(weights, x, io, g, transposed))))
    (y_ref, s_ref, t_ref), (y_twin, s_twin, t_twin) = results
    same = torch.equal(y_ref, y_twin) and torch.equal(s_ref, s_twin)
    kind = "backward" if transposed else "forward"
    sto = " sto" if io.inp_sto_round else ""
    return row(f"read {kind} B={batch} bm={io.bound_management}{sto}", same, t_ref, t_twin)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the test suite covers the interpreter)")
        return 0
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print(f"{'check':<34} {'result':>9} {'ref ms':>10} {'twin ms':>9} {'gemm ms':>9}")
    ok = True
    tiles = [(16, 32), (32, 32), (8, 64), (32, 64)]
    for n_pairs in (100, 3200):
        ok &= check_update(n_pairs, UpdateConfig(), tiles)
    ok &= check_update(3200, UpdateConfig(bl=64, bl_management=True), tiles[:1])
    for name in W_DEPENDENT:
        ok &= check_device_model(name, 100)
    ok &= check_device_model("ecram", 3200)
    for batch in (1, 64):
        ok &= check_read(IOConfig(), batch, transposed=False)
        ok &= check_read(BackwardIOConfig(), batch, transposed=True)
    # Saturating outputs: bound management re-reads rows; stochastic rounding draws uniforms.
    io = IOConfig(out_bound=2.0, inp_sto_round=True)
    ok &= check_read(io, 64, transposed=False)
    print("all equal" if ok else "SOME TWIN DIFFERS FROM ITS REFERENCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
