"""Parity with the reference simulator (IBM aihwkit 1.2): the same LSTM trained by both.

The setting (the one the parity study of docs/results.md uses): LSTM2-64WP on War and Peace,
batch 1, BPTT 100, 600k training characters, then the validation loss on the first 100k
validation characters at batch 1 from a zero state, with noisy reads. Each variant is trained
with rpusim for every seed and, when ``aihwkit`` can be imported, with aihwkit for as many runs;
the script prints the final validation losses side by side, mean +- standard deviation over the
runs (the noise band a difference has to clear).

    python benchmarks/parity_aihwkit.py --out runs/parity                   # every variant
    python benchmarks/parity_aihwkit.py --out runs/parity --variants rpu --seeds 0 1 2

rpusim's runs are ordinary run folders (``OUT/rpusim/<variant>_<rule>_seed=<s>``): an interrupted
script resumes them. aihwkit is optional and never needed by the tests or CI. To build aihwkit
1.2 on a CPU-only Linux machine (about 20-40 minutes on 2 cores)::

    apt-get install -y cmake g++ libopenblas-dev
    pip install "pybind11>=2.6" scikit-build "cmake>=3.18"
    pip install --no-binary aihwkit "aihwkit==1.2.0"

The aihwkit side maps the variants onto ``SingleRPUConfig(device=ConstantStepDevice())`` with
BL 10 and update management (aihwkit's own saturation rule, which is rpusim's ``um_clip:
d_only``); its model is two ``AnalogLSTM`` layers and an ``AnalogLinear`` read-out trained with
``AnalogSGD``. That side was written from aihwkit's documented API and has not been run in this
repository's CI (aihwkit is not installed there).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

TRAIN_CHARS = 600_000
EVAL_CHARS = 100_000

#: Variant name -> (overrides of the run config, the rpusim learning rate).
VARIANTS: dict[str, tuple[dict, float]] = {
    "fp": ({"rpu": "ideal"}, 5.0),
    "rpu": ({"rpu": "rpu_baseline"}, 1.667),
    # 5-bit DAC both ways, as the paper's input-bits finding (experiments/input_bits.yaml).
    "dac5": (
        {
            "rpu": {
                "preset": "rpu_baseline",
                "forward": {"inp_bits": 5},
                "backward": {"inp_bits": 5},
            }
        },
        1.667,
    ),
    "symmetric": ({"rpu": {"preset": "rpu_baseline", "device": {"up_down_dtod": 0.0}}}, 1.667),
}
RULES = ("both", "d_only")


def rpusim_config(variant: str, rule: str, seed: int, train_chars: int, eval_chars: int):
    """The rpusim run config of one point."""
    from rpusim.config import RunConfig

    overrides, lr = VARIANTS[variant]
    base = {
        "seed": seed,
        "data": {"corpus": "warpeace", "eval_chars": eval_chars},
        "model": {"layers": 2, "hidden": 64},
        "train": {
            "lr": lr,
            "batch_size": 1,
            "seq_len": 100,
            "max_chars": train_chars,
            "eval_every_chars": train_chars,
            "eval_batch_size": 1,  # from a zero state, one stream: as aihwkit evaluates
        },
        **overrides,
    }
    cfg = RunConfig.from_dict(base)
    if variant != "fp":
        cfg = cfg.override([f"rpu.update.um_clip={rule}"])
    return cfg


def run_rpusim(variant: str, rule: str, seed: int, out: Path, args) -> float:
    """Train (or finish) one rpusim point; its final validation loss."""
    from rpusim.train import read_metrics, train

    cfg = rpusim_config(variant, rule, seed, args.chars, args.eval_chars)
    folder = out / "rpusim" / f"{variant}_{rule}_seed={seed}"
    summary_file = folder / "summary.json"
    if not summary_file.exists():
        train(cfg, folder, resume=True, progress=False)  # a fresh start when there is none
    return float(read_metrics(folder / "metrics.csv")[-1]["valid_loss"])


def run_aihwkit(variant: str, seed: int, args) -> float:  # pragma: no cover - optional tool
    """Train one point with aihwkit 1.2; its final validation loss (nats per character)."""
    import torch
    from aihwkit.nn import AnalogLinear, AnalogLSTM
    from aihwkit.optim import AnalogSGD
    from aihwkit.simulator.configs import FloatingPointRPUConfig, SingleRPUConfig
    from aihwkit.simulator.configs.devices import ConstantStepDevice

    from rpusim.data import Vocab, load_corpus, split

    torch.manual_seed(seed)
    text = load_corpus("warpeace")
    symbols = Vocab.from_data(text)
    train_text, valid_text, _ = split(text)
    train_ids, valid_ids = symbols.encode(train_text), symbols.encode(valid_text)
    vocab = len(symbols.symbols)
    if variant == "fp":
        rpu = FloatingPointRPUConfig()
    else:
        device = ConstantStepDevice()
        if variant == "symmetric":
            device.up_down_dtod = 0.0
        rpu = SingleRPUConfig(device=device)
        rpu.update.desired_bl = 10
        rpu.update.update_bl_management = False
        rpu.update.update_management = True
        if variant == "dac5":
            rpu.forward.inp_res = rpu.backward.inp_res = 1 / (2**5 - 2)
    lstm = AnalogLSTM(vocab, 64, num_layers=2, rpu_config=rpu)
    head = AnalogLinear(64, vocab, rpu_config=rpu)
    model = torch.nn.ModuleList([lstm, head])
    lr = VARIANTS[variant][1]
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)
    eye = torch.eye(vocab)
    state = None
    seq = 100
    for start in range(0, min(args.chars, len(train_ids) - 1) - seq, seq):
        x = eye[train_ids[start : start + seq]].unsqueeze(1)
        y = torch.as_tensor(train_ids[start + 1 : start + seq + 1])
        out, state = lstm(x, state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(head(out[:, 0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        ids = valid_ids[: args.eval_chars + 1]
        for start in range(0, len(ids) - 1, seq):
            chunk = ids[start : start + seq + 1]
            x = eye[chunk[:-1]].unsqueeze(1)
            out, state = lstm(x, state)
            logits = head(out[:, 0])
            target = torch.as_tensor(chunk[1:])
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            total += float(loss)
            count += len(chunk) - 1
    return total / count


def band(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.3f} +- {sd:.3f} (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--chars", type=int, default=TRAIN_CHARS, help="training characters")
    parser.add_argument("--eval-chars", type=int, default=EVAL_CHARS, help="validation chars")
    parser.add_argument("--no-aihwkit", action="store_true", help="rpusim only")
    args = parser.parse_args(argv)

    try:
        import aihwkit  # noqa: F401

        have_aihwkit = not args.no_aihwkit
    except ImportError:
        have_aihwkit = False
        print("aihwkit is not importable: rpusim only", file=sys.stderr)

    print("| variant | um_clip | rpusim final valid | aihwkit 1.2 final valid |")
    print("|---|---|---|---|")
    for variant in args.variants:
        theirs = [run_aihwkit(variant, s, args) for s in args.seeds] if have_aihwkit else []
        rules = ["-"] if variant == "fp" else args.rules
        for rule in rules:
            ours = [run_rpusim(variant, rule, s, args.out, args) for s in args.seeds]
            shown = band(theirs) if rule in ("-", "d_only") else ""
            print(f"| {variant} | {rule} | {band(ours)} | {shown} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
