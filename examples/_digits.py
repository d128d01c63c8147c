"""Shared by the digits examples: scikit-learn's bundled 8x8 digits, a training loop, configs.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn (``pip install
rpusim[examples]``). 1797 images, 8x8 pixels 0..16 scaled to [0, 1]; the first 80 % (shuffled
with a fixed seed) train, the rest test.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rpusim import RPUConfig
from rpusim.optim import AnalogSGD


def digits(seed: int = 0, images: bool = False):
    """``(x_train, y_train, x_test, y_test)``: x (N, 64) or (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    if images:
        x = x.view(-1, 1, 8, 8)
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


#: The three settings each example compares: floating point (torch's own layers and SGD), the
#: RPU baseline (constant-step device, full periphery, BL 10) and the same periphery on the
#: ECRAM device fit (``rpu.device.preset: ecram``).
CONFIGS = {
    "fp": None,
    "rpu_baseline": RPUConfig.preset("rpu_baseline"),
    "ecram": RPUConfig.preset("rpu_baseline").override({"device.preset": "ecram"}),
}


def arguments(doc: str, epochs: int, lr: float, batch: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    return args


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy in % (analog reads stay noisy, as inference on the array is)."""
    model.eval()
    correct = sum(
        int((model(x[i : i + 256]).argmax(1) == y[i : i + 256]).sum())
        for i in range(0, len(y), 256)
    )
    model.train()
    return 100.0 * correct / len(y)


def train(model, data, epochs: int, lr: float, batch: int, seed: int, name: str) -> list[float]:
    """Plain SGD (``AnalogSGD``: pulsed updates on the tiles, SGD on digital parameters) on the
    mean cross-entropy of each mini-batch; prints and returns the test accuracy per epoch."""
    x_train, y_train, x_test, y_test = data
    opt = AnalogSGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    accs = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        accs.append(accuracy(model, x_test, y_test))
        print(
            f"{name:>13}  epoch {epoch + 1:>2}  train loss {total / len(order):.4f}  "
            f"test acc {accs[-1]:5.1f} %  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return accs


def summary(results: dict[str, list[float]]) -> None:
    print("\n| setting | final test accuracy (%) | best (%) |\n|---|---|---|")
    for name, accs in results.items():
        print(f"| {name} | {accs[-1]:.1f} | {max(accs):.1f} |")
