"""Where the pulsed update of a real training step spends its time: pass 1, pass 2, the rest.

The pairs are those a ``CharLSTM`` (2 layers, the RPU baseline, batch 1, sequences of 100)
records in one step after ``--steps`` training steps on the benchmark's data (``rpusim bench``:
one random sequence of the 87-symbol vocabulary, learning rate 1; the longer it trains, the more
lines fire). For each tile (the two LSTM layers and the output layer) it times, in microseconds,
each as the median of ``--repeats`` calls on one numba thread:

* ``pass 1``: the pulse trains (``rpusim.update.numba._pulse_pass``);
* ``pass 2``: the device loop (the device model's ``apply_pass``), from the same weights each
  time;
* ``update``: the whole ``pulsed_update`` (scales, seeds, scratch, both passes);

and the step's totals, with the pairs' firing statistics (lines fired per pair, rows of one
slot, devices hit per pair). Compare two versions of the code by running it with each on
``PYTHONPATH``::

    PYTHONPATH=src python benchmarks/update_parts.py --steps 30 250
    PYTHONPATH=/path/to/old/src python benchmarks/update_parts.py --steps 30 250
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch

from rpusim import rng
from rpusim.config import RPUConfig
from rpusim.model import CharLSTM
from rpusim.update import numba as update_numba
from rpusim.update import pulsed_update

VOCAB, SEQ = 87, 100


def _median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def _bits(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return np.unpackbits(words.view(np.uint8)).reshape(*words.shape, 64).sum(-1)


def recorded_pairs(steps: int, hidden: int = 128) -> list:
    """``(tile, x, d)`` of every tile of a 2 x ``hidden`` model after ``steps`` training steps
    (bench data, lr 1)."""
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (SEQ + 1, 1), generator=gen)
    inputs, targets = seq[:-1], seq[1:]
    model = CharLSTM(VOCAB, hidden, 2, RPUConfig.preset("rpu_baseline"), seed=0)
    state = model.init_state(1)
    for _ in range(steps):
        _, state = model.train_step(inputs, targets, state, 1.0)
    model.forward_backward(inputs, targets, state)
    out = []
    for layer in [*model.lstm.layers, model.decoder]:
        x, d = layer.recorded()
        out.append((layer.tile, x.contiguous(), d.contiguous()))
    return out


def parts(tile, x: torch.Tensor, d: torch.Tensor, repeats: int) -> dict[str, float]:
    """Microseconds of pass 1, pass 2 and the whole update of one tile's pairs, and the pairs'
    firing statistics."""
    cfg, dev = tile.cfg, tile.devices
    w0 = tile.weights.detach().clone()
    x_np, d_np = x.numpy(), d.numpy()
    K, n_in = x_np.shape
    n_out = d_np.shape[1]
    key = 12345
    dw_min = cfg.device.dw_min
    scale_args = update_numba._scale_args(1.0, cfg.update, dw_min)
    prep = update_numba._prepare(x_np, d_np, *scale_args, key)
    _, a, b, bl, col_base, row_base, c2c_base, col_seed, row_seed, c2c_col_seed = prep[:10]
    max_bl = int(bl.max())
    col_word = np.empty((K, n_in), np.uint64)
    row_word = np.empty((K, n_out), np.uint64)
    col_mask = np.empty((K, max_bl, (n_in + 63) // 64), np.uint64)
    pass1_args = (x_np, d_np, a, b, bl, 0, K, col_base, row_base, col_seed, row_seed)
    pass1_args += (col_word, col_mask, row_word)
    out = {"pass 1": _median_us(lambda: update_numba._pulse_pass(*pass1_args), repeats)}

    w = w0.numpy().copy()
    # The devices as the update passes them to pass 2 (numpy views, the model's kernel).
    params, consts, w_min, w_max, apply_pass, folds, c2c_std = update_numba._device_args(dev)
    pass2_args = (
        w, x_np, d_np, 0, K, row_word, col_word, col_mask, params, consts, w_min, w_max, folds,
        c2c_std, update_numba._sqrt_counts(), c2c_base, c2c_col_seed, rng.normal_table_numpy(),
        n_out,
    )  # fmt: skip

    def pass2() -> None:
        w[:] = w0.numpy()
        apply_pass(*pass2_args)

    out["pass 2"] = _median_us(pass2, repeats)
    wt = w0.clone()

    def update() -> None:
        wt.copy_(w0)
        pulsed_update(wt, x, d, 1.0, dev, cfg.update, dw_min, key)

    out["update"] = _median_us(update, repeats)
    rows, cols = _bits(row_word), _bits(col_word)
    out["row fires"] = rows.sum() / K
    out["col fires"] = cols.sum() / K
    out["rows fired"] = (rows > 0).sum() / K
    out["one slot"] = (rows == 1).sum() / max(1, (rows > 0).sum())
    hits = 0
    for k in range(K):
        for j in np.nonzero(row_word[k])[0]:
            hits += int(np.count_nonzero(row_word[k, j] & col_word[k]))
    out["devices hit"] = hits / K
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 250])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=101)
    args = parser.parse_args(argv)
    if min(args.steps) < 0 or args.repeats < 1 or args.hidden < 1:
        parser.error("--steps must be >= 0, --repeats and --hidden >= 1")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    print(
        f"2x{args.hidden} RPU baseline, batch 1: one step's pairs per tile (K = {SEQ}), "
        "us per call (1 numba thread, wall time)"
    )
    head = ["after steps", "tile", "pass 1", "pass 2", "update", "rows fired / pair"]
    head += ["of one slot", "col fires / pair", "devices hit / pair"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for steps in args.steps:
        total = {"pass 1": 0.0, "pass 2": 0.0, "update": 0.0}
        for tile, x, d in recorded_pairs(steps, args.hidden):
            p = parts(tile, x, d, args.repeats)
            for name in total:
                total[name] += p[name]
            shape = "x".join(map(str, tile.weights.shape))
            print(
                f"| {steps} | {shape} | {p['pass 1']:.0f} | {p['pass 2']:.0f} | {p['update']:.0f} "
                f"| {p['rows fired']:.0f} | {p['one slot']:.2f} | {p['col fires']:.0f} "
                f"| {p['devices hit']:.0f} |"
            )
        print(
            f"| {steps} | all | {total['pass 1']:.0f} | {total['pass 2']:.0f} "
            f"| {total['update']:.0f} | | | | |"
        )


if __name__ == "__main__":
    main()
