"""Any torch model on RPU tiles: ``rpusim.nn.convert_to_analog`` on a plain torch network.

The network (a conv layer whose output rows are read by an LSTM, then a linear classifier) is
written with ``torch.nn`` only. Part 1 trains it in floating point and converts the trained model
to each RPU setting for inference (noisy, quantized reads of the same weights). Part 2 converts
the untrained model (the same initial weights) and trains each copy on its tiles.

    python examples/convert_digits.py --epochs 6
"""

import torch
from _digits import CONFIGS, accuracy, arguments, digits, summary, train
from torch import nn

from rpusim.nn import convert_to_analog


class ConvLSTM(nn.Module):
    """conv 3x3 (1 -> 8, stride 2, pad 1) -> tanh -> the 4 rows of the 4x4x8 map as a sequence
    of 4 steps of 32 features into an LSTM of 32 units -> linear 32 -> 10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.rnn = nn.LSTM(32, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        f = torch.tanh(self.conv(x))  # (B, 8, 4, 4)
        seq = f.permute(0, 2, 1, 3).flatten(2)  # (B, 4 rows, 8 x 4)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])


def main():
    args = arguments(__doc__, epochs=6, lr=0.2, batch=4)
    data = digits(args.seed, images=True)
    torch.manual_seed(args.seed)
    init = ConvLSTM()
    fp = None
    print("Part 2: train each setting from the same initial weights")
    results = {}
    for name in args.configs:
        cfg = CONFIGS[name]
        model = ConvLSTM() if cfg is None else convert_to_analog(init, cfg, seed=args.seed)
        if cfg is None:
            model.load_state_dict(init.state_dict())
        results[name] = train(model, data, args.epochs, args.lr, args.batch, args.seed, name)
        if cfg is None:
            fp = model
    print("\nPart 1: the FP-trained model converted for inference")
    print("| setting | test accuracy (%) |\n|---|---|")
    settings = {name: CONFIGS[name] for name in args.configs}
    if "rpu_baseline" in settings:  # the same tiles with the weights mapped onto the range
        mapped = CONFIGS["rpu_baseline"].override({"mapping.weight_scaling": "column"})
        settings["rpu_baseline, weight_scaling column"] = mapped
    for name, cfg in settings.items():
        if fp is None:
            break
        model = fp if cfg is None else convert_to_analog(fp, cfg, seed=args.seed)
        print(f"| {name} | {accuracy(model, data[2], data[3]):.1f} |")
    print("\nPart 2:")
    summary(results)


if __name__ == "__main__":
    main()
