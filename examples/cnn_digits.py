"""A small CNN on RPU tiles (``AnalogConv2d``: the kernel is one tile, every output position one
read and one update pair; Gokmen, Onen & Haensch, Front. Neurosci. 11:538, 2017), on the 8x8
digits: conv 3x3 (1 -> 8, pad 1) - tanh - max-pool 2 - conv 3x3 (8 -> 16, pad 1) - tanh -
max-pool 2 - linear 64 -> 10. Pooling and tanh are digital.

    python examples/cnn_digits.py --epochs 8
"""

import torch
from _digits import CONFIGS, arguments, digits, summary, train
from torch import nn

from rpusim.nn import AnalogConv2d, AnalogLinear


def cnn(cfg):
    if cfg is None:
        Conv, Linear = nn.Conv2d, nn.Linear
    else:

        def Conv(i, o, k, padding):
            return AnalogConv2d(i, o, k, padding=padding, rpu_config=cfg)

        def Linear(i, o):
            return AnalogLinear(i, o, rpu_config=cfg)

    return nn.Sequential(
        Conv(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        Conv(8, 16, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        Linear(64, 10),
    )


def main():
    args = arguments(__doc__, epochs=8, lr=0.05, batch=4)
    data = digits(args.seed, images=True)
    results = {}
    for name in args.configs:
        torch.manual_seed(args.seed)
        results[name] = train(
            cnn(CONFIGS[name]), data, args.epochs, args.lr, args.batch, args.seed, name
        )
    summary(results)


if __name__ == "__main__":
    main()
