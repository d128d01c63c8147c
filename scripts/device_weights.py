"""Where a trained network's weights sit on their devices: bounds, symmetry points, spread.

For each run folder (its last checkpoint) and each tile, prints the fraction of devices within
2 % of their range from a bound, the mean distance of the weights from each device's symmetry
point (in units of its range; where the model has one), and the weights' spread against the
device range. A device model that fails to train shows why here: weights piled on the bounds
(too few states, or asymmetric steps that drift them there), or weights pulled to the symmetry
points (a soft-bounds-like response under many small updates of both signs).

    python scripts/device_weights.py runs/devices/device=ecram_seed=0 ...
    python scripts/device_weights.py --sweep runs/devices        # every run of a sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rpusim.train import load_run


def tile_stats(tile) -> dict[str, float]:
    """Summary numbers of one tile (see the module docstring)."""
    w = tile.get_weights().double()
    state = tile.device_state()
    hi, lo = state["w_max"].double(), state["w_min"].double()
    span = hi - lo
    near = ((hi - w) < 0.02 * span) | ((w - lo) < 0.02 * span)
    sym = state["w_sym"].double()
    has_sym = torch.isfinite(sym)
    from_sym = ((w - sym).abs() / span)[has_sym]
    return {
        "devices": w.numel(),
        "at_bound": float(near.double().mean()),
        "from_w_sym": float(from_sym.mean()) if from_sym.numel() else float("nan"),
        "w_std_over_range": float(w.std() / span.mean()),
        "w_absmax": float(w.abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders")
    parser.add_argument("--sweep", type=Path, help="every run folder of a sweep folder")
    args = parser.parse_args(argv)
    runs = list(args.runs)
    if args.sweep is not None:
        runs += sorted(p.parent for p in args.sweep.glob("*/checkpoint.pt"))
    print("| run | tile | devices | near a bound | mean abs(w - w_sym) / range | std(w) / range |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        _, model, _, _ = load_run(run)
        for k, tile in enumerate(model.tiles()):
            s = tile_stats(tile)
            print(
                f"| {run.name} | {k} | {s['devices']} | {s['at_bound']:.1%} | "
                f"{s['from_w_sym']:.3f} | {s['w_std_over_range']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
