"""Plot validation and test cross-entropy per epoch of finished runs side by side.

    python scripts/plot_runs.py RUN_DIR [RUN_DIR ...] --out docs/figures/lstm2-64wp.png

Each RUN_DIR is a folder written by ``rpusim train`` (its ``metrics.csv`` and ``config.yaml``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: Path) -> dict[str, list[float]]:
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--title", default="LSTM2-64WP, batch 1, seq 100, seed 0: FP twin vs RPU baseline"
    )
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in args.runs:
        m = read_metrics(run)
        line = ax.plot(m["epoch"], m["valid_loss"], lw=1.5, label=f"{run.name}: validation")[0]
        ax.plot(
            m["epoch"],
            m["test_loss"],
            lw=1,
            ls="--",
            color=line.get_color(),
            label=f"{run.name}: test",
        )
    ax.set_xlabel("epoch (passes over the 80 % training split)")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
