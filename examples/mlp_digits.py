"""The Gokmen-Vlasov MLP on RPU tiles, on scikit-learn's 8x8 digits.

Gokmen & Vlasov (Front. Neurosci. 10:333, 2016) train a 784-256-128-10 perceptron (sigmoid hidden
units, softmax output) on MNIST with plain SGD at batch 1. Here the input is the 64 pixels of the
bundled digits: 64-256-128-10, the same layers on three tiles (bias as an extra column driven
by 1), trained with ``rpusim.optim.AnalogSGD``; FP is the same network of ``torch.nn.Linear``.

    python examples/mlp_digits.py --epochs 10
"""

import torch
from _digits import CONFIGS, arguments, digits, summary, train
from torch import nn

from rpusim.nn import AnalogLinear


def mlp(cfg):
    Linear = nn.Linear if cfg is None else (lambda i, o: AnalogLinear(i, o, rpu_config=cfg))
    return nn.Sequential(
        Linear(64, 256), nn.Sigmoid(), Linear(256, 128), nn.Sigmoid(), Linear(128, 10)
    )


def main():
    args = arguments(__doc__, epochs=10, lr=0.1, batch=1)
    data = digits(args.seed)
    results = {}
    for name in args.configs:
        torch.manual_seed(args.seed)
        results[name] = train(
            mlp(CONFIGS[name]), data, args.epochs, args.lr, args.batch, args.seed, name
        )
    summary(results)


if __name__ == "__main__":
    main()
