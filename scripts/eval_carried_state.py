"""Cross-entropy of a run's last checkpoint on the start of its validation split, at batch 1,
from the zero state (as every evaluation of ``rpusim train`` starts its streams) and from the
hidden state the training carried to its end (the validation split follows the training split
in the text), with the largest cell state of the carried one.

    python scripts/eval_carried_state.py RUN_DIR [RUN_DIR ...] [--chars 20000]

The model's random streams are put back after each pass, so both passes see the same reads.
"""

from __future__ import annotations

import argparse

import torch

from rpusim.data import load_corpus, slice_corpus, split
from rpusim.train import load_run


def losses(run_dir: str, chars: int) -> tuple[float, float, float]:
    """``(from the zero state, from the carried state, max |c| of the carried state)``."""
    cfg, model, vocab, ckpt = load_run(run_dir)
    data = load_corpus(cfg.data.corpus)
    _, valid, _ = split(vocab.encode(slice_corpus(data, cfg.data.max_bytes)), cfg.data.split)
    ids, T = valid[: chars + 1], cfg.train.seq_len

    def mean_loss(state) -> float:
        snapshot, total, n = model.state_dict(), 0.0, 0
        with torch.no_grad():
            for s0 in range(0, ids.numel() - T, T):
                x, y = ids[s0 : s0 + T].view(T, 1), ids[s0 + 1 : s0 + T + 1].view(T, 1)
                loss_sum, n_chars, state = model.evaluate(x, y, state)
                total, n = total + loss_sum, n + n_chars
        model.load_state_dict(snapshot)
        return total / n

    h, c = ckpt["state"]
    carried = mean_loss((h.clone(), c.clone()))
    return mean_loss(model.init_state(1)), carried, float(c.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--chars", type=int, default=20000)
    args = parser.parse_args()
    print("| run | from the zero state | from the carried state | carried max abs c |")
    print("|---|---|---|---|")
    for run in args.runs:
        zero, carried, c_max = losses(run, args.chars)
        print(f"| {run} | {zero:.3f} | {carried:.3f} | {c_max:,.1f} |")


if __name__ == "__main__":
    main()
