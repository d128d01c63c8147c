"""Training throughput of rpusim's LSTMs against torch's own ``nn.LSTM``, with fixed threads.

A thin wrapper around :func:`rpusim.bench.main` (``rpusim bench``: chars/s of torch ``nn.LSTM``
+ ``Linear`` + SGD, the floating-point twin and the RPU baseline, 2 layers of 64/128/256 units,
batch 1 and 32) that first sets the thread counts of torch and numba, both to ``--threads``
(default 1). Left at their defaults, each library starts one thread per core; on a machine whose
cores are shared, a parallel region then waits for a thread that is not running, and both sides
of the ratio become noise (2 shared cores: torch's own batch-1 step of a 2x64 LSTM took 2x longer
with 2 threads than with 1 on a quiet machine, and up to 1000x longer with the other core busy).
With one thread each, the ratio compares the work done, which is what it is meant to show::

    PYTHONPATH=src python benchmarks/bench_lstm.py --quick              # 2x128 only
    PYTHONPATH=src python benchmarks/bench_lstm.py --json bench.json    # every row, saved
"""

from __future__ import annotations

import argparse

import numba
import torch

from rpusim import bench


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2x128 only, shorter timings")
    parser.add_argument("--json", default=None, help="write the result to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    return bench.main(quick=args.quick, json_path=args.json)


if __name__ == "__main__":
    main()
