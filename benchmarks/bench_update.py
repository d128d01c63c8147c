"""Time the pulsed update of one LSTM layer against torch's float GEMM ``d^T x`` of the same shape.

The tile is an LSTM layer of 128 units on a byte vocabulary of 128: ``W`` is ``(4*128, 128 + 128
+ 1)`` = ``(512, 257)``, its input ``x = [one-hot char; h; 1]``. One update is a batch of
``K = 3200`` pairs (e.g. 32 sequences x 100 steps), BL = 10 with update management, the RPU
baseline constant-step device, lr 0.01. The errors ``d`` are what backprop through an LSTM
gives: mostly ``1e-3 .. 1e-2``, a heavy tail, and many entries near zero (saturated gates).

The float reference is what a digital SGD step costs: ``d.T @ x`` (the outer products summed),
the same ``K``, ``out`` and ``in``. Run::

    PYTHONPATH=src python benchmarks/bench_update.py          # full
    PYTHONPATH=src python benchmarks/bench_update.py --quick  # fewer repeats
    PYTHONPATH=src python benchmarks/bench_update.py --small  # K = 100 (one step at batch 1)

``--small`` times the update of one training step at batch 1 (the paper's setting): ``K = 100``
pairs on the same tile, where per-call setup (``pulse_scales``, array conversions, numba
dispatch) weighs more than at ``K = 3200``; it reports microseconds per call.

``--devices`` adds a row per device model (``rpusim.bench.DEVICE_ROWS``: every model with the RPU
baseline's ``dw_min`` and bounds, so that each sees the same coincidences), timed in the same
rounds, with its ratio to the constant-step device: the cost of applying coincidences one at a
time through a ``w``-dependent response.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rpusim.bench import DEVICE_ROWS
from rpusim.config import DeviceConfig, RPUConfig, UpdateConfig
from rpusim.devices import sample_devices
from rpusim.update import pulsed_update

N_PAIRS = 3200
N_UNITS = 128
N_VOCAB = 128
BL = 10
LR = 0.01


def lstm_update_inputs(
    generator: torch.Generator, n_pairs: int = N_PAIRS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(K, 257)`` = [one-hot; h in (-1, 1); 1] and ``d`` ``(K, 512)`` LSTM-like errors."""
    chars = torch.randint(0, N_VOCAB, (n_pairs,), generator=generator)
    one_hot = torch.nn.functional.one_hot(chars, N_VOCAB).to(torch.float32)
    h = torch.tanh(torch.randn(n_pairs, N_UNITS, generator=generator))
    x = torch.cat([one_hot, h, torch.ones(n_pairs, 1)], dim=1)
    # Student-t with 2 degrees of freedom (normal / sqrt(chi2_2 / 2), chi2_2 = -2 log u) at
    # scale 2e-3: most |d| ~ 1e-3 .. 1e-2 with a heavy tail; half of the gates saturated
    # (their errors shrunk by 1e-3, i.e. near zero).
    shape = (n_pairs, 4 * N_UNITS)
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    chi2_over_2 = -torch.log1p(-torch.rand(shape, generator=generator, dtype=torch.float64))
    t = normal / chi2_over_2.sqrt()
    saturated = torch.rand(shape, generator=generator) < 0.5
    d = (2e-3 * t * torch.where(saturated, 1e-3, 1.0)).to(torch.float32)
    return x, d


def main(quick: bool = False, n_pairs: int = N_PAIRS) -> dict:
    """Measure both; return ``{"update_s", "gemm_s", "ratio", ...}`` (medians, seconds).

    The two are timed alternately, repeat by repeat, so that a busy machine slows both alike.
    """
    gen = torch.Generator().manual_seed(0)
    x, d = lstm_update_inputs(gen, n_pairs)
    n_out, n_in = d.shape[1], x.shape[1]
    dev_cfg = DeviceConfig()
    dev = sample_devices(dev_cfg, n_out, n_in, gen)
    cfg = UpdateConfig(bl=BL, update_management=True)
    w = (0.1 * torch.randn(n_out, n_in, generator=gen)).to(torch.float32)
    repeats = 7 if quick else 31
    if n_pairs < N_PAIRS:  # short calls: more repeats for a stable median
        repeats *= 10

    def update(r: int) -> None:
        pulsed_update(w, x, d, LR, dev, cfg, dev_cfg.dw_min, key=1000 + r, backend="numba")

    for r in range(3):  # warm-up: numba compile/load, thread pools, caches
        update(r)
        d.T @ x
    update_times, gemm_times = [], []
    for r in range(repeats):
        start = time.perf_counter()
        update(r)
        middle = time.perf_counter()
        d.T @ x
        update_times.append(middle - start)
        gemm_times.append(time.perf_counter() - middle)
    update_s, gemm_s = statistics.median(update_times), statistics.median(gemm_times)
    return {
        "shape": (n_out, n_in),
        "pairs": n_pairs,
        "bl": BL,
        "threads": torch.get_num_threads(),
        "update_s": update_s,
        "gemm_s": gemm_s,
        "ratio": update_s / gemm_s,
    }


def devices(quick: bool = False, n_pairs: int = N_PAIRS) -> dict[str, float]:
    """Median seconds per update call of each device row, timed round by round (every model
    once per round, so that load hits all alike)."""
    gen = torch.Generator().manual_seed(0)
    x, d = lstm_update_inputs(gen, n_pairs)
    n_out, n_in = d.shape[1], x.shape[1]
    cfg = UpdateConfig(bl=BL, update_management=True)
    tiles = {}
    for name, overrides in DEVICE_ROWS.items():
        dev_cfg = RPUConfig().override(overrides).device
        dev = sample_devices(dev_cfg, n_out, n_in, torch.Generator().manual_seed(1))
        w = (0.1 * torch.randn(n_out, n_in, generator=gen)).clamp(-0.5, 0.5)
        tiles[name] = (w, dev, dev_cfg.dw_min)
    repeats = 5 if quick else 15
    if n_pairs < N_PAIRS:
        repeats *= 10
    times: dict[str, list[float]] = {name: [] for name in tiles}
    for r in range(repeats + 2):
        for name, (w, dev, dw_min) in tiles.items():
            start = time.perf_counter()
            pulsed_update(w, x, d, LR, dev, cfg, dw_min, key=2000 + r, backend="numba")
            if r >= 2:  # the first two: compile or load, caches
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--small", action="store_true", help="K = 100 pairs (batch 1), in us")
    parser.add_argument("--devices", action="store_true", help="a row per device model")
    args = parser.parse_args()
    if args.devices:
        per_model = devices(args.quick, n_pairs=100 if args.small else N_PAIRS)
        base = per_model["constant_step"]
        for name, seconds in per_model.items():
            print(f"{name:>15}: {seconds * 1e6:10.1f} us per call  {seconds / base:5.2f}x constant")
    res = main(args.quick, n_pairs=100 if args.small else N_PAIRS)
    print(
        f"pulsed update  {res['pairs']} pairs on {res['shape'][0]}x{res['shape'][1]}, "
        f"BL {res['bl']}: {res['update_s'] * 1e6:10.1f} us per call"
    )
    gemm_us = res["gemm_s"] * 1e6
    print(f"float GEMM     d.T @ x ({res['threads']} threads): {gemm_us:10.1f} us per call")
    print(f"ratio update / GEMM: {res['ratio']:.2f}")
