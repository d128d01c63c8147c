"""Two versions of rpusim in one process: training steps interleaved, torch's as the yardstick.

On a shared machine the load changes within seconds, so two runs of ``rpusim bench`` one after
the other differ by more than a 5-10% change to the code (seen: 0.48x to 0.62x for one version
within minutes). Here both versions train side by side in one process: the step of this
checkout's rpusim, the step of another source tree's (``--old``), and torch's ``nn.LSTM`` step,
in blocks of ``--block`` steps, the order reversed every other block. Each version trains its own
model on the benchmark's data (``rpusim bench``: one random sequence, learning rate 1), so both
go through the same phases of training, with the same weights where the versions agree bit for
bit. For each quarter of the run it prints the median step time of each, their ratios to
torch's step and the median of the per-block ratios new / old::

    git worktree add /tmp/old <commit>
    python benchmarks/ab_versions.py --old /tmp/old/src --steps 2000 --block 25

The old tree is copied into a temporary directory as the package ``rpusim_old`` (its imports
rewritten), so that the two versions do not collide; numba compiles the copy's kernels anew
(the first call of each, before the timing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch


def import_old(src: Path, into: Path):
    """``src``'s package ``rpusim`` (``src/rpusim``) imported as ``rpusim_old`` from ``into``."""
    package = src / "rpusim"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"--old: {src} has no rpusim package (give a checkout's src directory)")
    target = into / "rpusim_old"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r"\brpusim(?=[.\s])")
    for path in target.rglob("*.py"):
        text = path.read_text()
        lines = [
            pattern.sub("rpusim_old", line)
            if re.match(r"\s*(from|import) ", line) or "import_module(" in line
            else line
            for line in text.splitlines(keepends=True)
        ]
        path.write_text("".join(lines))
    sys.path.insert(0, str(into))
    import rpusim_old.bench

    return rpusim_old.bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other version's src dir")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--preset", default="rpu_baseline")
    args = parser.parse_args(argv)
    if args.block < 1 or args.steps < 4 * args.block:
        parser.error("--block must be >= 1 and --steps at least 4 blocks")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    import rpusim.bench as new_bench

    with tempfile.TemporaryDirectory() as tmp:
        old_bench = import_old(args.old.resolve(), Path(tmp))
        shape = (args.hidden, 2, args.batch)
        steps = {
            "new": new_bench.rpusim_step(*shape, args.preset),
            "old": old_bench.rpusim_step(*shape, args.preset),
            "torch": new_bench.torch_step(*shape),
        }
        for step in steps.values():
            step()  # compiles, allocates
        times: dict[str, list[float]] = {name: [] for name in steps}
        order = list(steps)
        for b in range(args.steps // args.block):
            for name in order if b % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                for _ in range(args.block):
                    steps[name]()
                times[name].append((time.perf_counter() - t0) / args.block * 1e3)
    old, new, ref = (np.array(times[name]) for name in ("old", "new", "torch"))
    print(
        f"2x{args.hidden} {args.preset}, batch {args.batch}: ms per step (median of blocks of "
        f"{args.block}), ratio to torch (median of per-block ratios), new / old"
    )
    print("| steps | torch | old | new | old / torch | new / torch | new / old |")
    print("|---|---|---|---|---|---|---|")
    quarter = len(old) // 4
    for q in range(4):
        s = slice(q * quarter, (q + 1) * quarter)
        print(
            f"| {q * quarter * args.block}-{(q + 1) * quarter * args.block} "
            f"| {np.median(ref[s]):.2f} | {np.median(old[s]):.2f} | {np.median(new[s]):.2f} "
            f"| {np.median(ref[s] / old[s]):.3f} | {np.median(ref[s] / new[s]):.3f} "
            f"| {np.median(new[s] / old[s]):.3f} |"
        )
    print(
        f"| all | {np.median(ref):.2f} | {np.median(old):.2f} | {np.median(new):.2f} "
        f"| {np.median(ref / old):.3f} | {np.median(ref / new):.3f} | {np.median(new / old):.3f} |"
    )


if __name__ == "__main__":
    main()
