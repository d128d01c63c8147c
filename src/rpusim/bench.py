"""Training throughput against torch's own ``nn.LSTM``, measured in one run on one machine.

``rpusim bench [--quick] [--json FILE]`` times, for 2-layer LSTMs of 64, 128 and 256 units at
batch 1 and 32 (sequences of 100, a vocabulary of 87 one-hot bytes like War and Peace):

- ``torch``: ``nn.LSTM`` + ``nn.Linear`` trained with SGD (the floor);
- ``rpusim-fp``: rpusim's floating-point twin (the ``ideal`` tile preset);
- ``rpusim-rpu``: the RPU baseline (full periphery both ways, pulsed update, BL 10);
- ``rpusim-nn-rpu``: the same tiles through ``rpusim.nn`` (``AnalogLSTM`` + ``AnalogLinear``,
  autograd, ``rpusim.optim.AnalogSGD``): what a torch user of the analog layers pays;

and reports characters per second (forward + backward + update of one sequence batch, median of
interleaved rounds after a warm-up) and the ratio to torch of the same shape. Ratios, not
seconds, are the result: the machines are shared and noisy, and both sides see the same noise.

``--device cuda`` runs all of them on the GPU (torch's ``nn.LSTM`` then uses cuDNN; rpusim's
tiles use the Triton twins where triton is installed, else the torch references); each timed
step ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

VOCAB = 87
SEQ_LEN = 100

#: A row per device model: overrides of the RPU baseline's device, with its ``dw_min`` and
#: bounds for all, so that every model sees the same pulses and coincidences and a row's ratio
#: to ``rpusim-rpu`` is the cost of its response (``benchmarks/bench_update.py --devices``
#: times the update alone).
DEVICE_ROWS: dict[str, dict] = {
    "constant_step": {},
    "linear_step": {"device.kind": "linear_step", "device.gamma_up": 0.1, "device.gamma_down": 0.5},
    "soft_bounds": {"device.kind": "soft_bounds"},
    "exp_step": {"device.kind": "exp_step"},
    "pow_step": {"device.kind": "pow_step"},
    "piecewise_step": {
        "device.kind": "piecewise_step",
        "device.piecewise_up": [1.2, 1.0, 0.6],
        "device.piecewise_down": [0.5, 1.0, 1.3],
    },
}


#: The shape of the per-algorithm rows (``alg:<name>``: the RPU baseline learning with that
#: ``rpu.algorithm``; ``sgd`` is the ``rpusim-rpu`` row).
ALGORITHM_HIDDEN = 128


def algorithm_rows() -> list[str]:
    """The algorithms that get a row of their own (every one but ``sgd``)."""
    from rpusim.config import ALGORITHMS

    return [name for name in ALGORITHMS if name != "sgd"]


def _rate(
    step: Callable[[], None], chars_per_step: int, seconds: float, device: str = "cpu"
) -> float:
    """Characters per second of ``step`` over at least ``seconds`` (at least one step)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while True:
        step()
        sync()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * chars_per_step / elapsed


def _data(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, VOCAB, (SEQ_LEN + 1, batch), generator=gen)
    return seq[:-1], seq[1:]


def torch_step(
    hidden: int, layers: int, batch: int, lr: float = 1.0, device: str = "cpu"
) -> Callable[[], None]:
    """One SGD step of ``nn.LSTM`` + ``nn.Linear`` on a one-hot sequence batch."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(VOCAB, hidden, layers).to(device)
    head = torch.nn.Linear(hidden, VOCAB).to(device)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr)
    inputs, targets = (t.to(device) for t in _data(batch))
    x = torch.nn.functional.one_hot(inputs, VOCAB).float()
    state = None

    def step() -> None:
        nonlocal state
        out, (h, c) = lstm(x, state)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = (h.detach(), c.detach())

    return step


def rpusim_step(
    hidden: int,
    layers: int,
    batch: int,
    preset: str,
    lr: float = 1.0,
    device: str = "cpu",
    overrides: dict | None = None,
) -> Callable[[], None]:
    """One training step of rpusim's CharLSTM with every tile on ``preset`` (with
    ``overrides``, dotted keys of the tile config)."""
    from rpusim.config import RPUConfig
    from rpusim.model import CharLSTM

    cfg = RPUConfig.preset(preset).override(overrides or {})
    model = CharLSTM(VOCAB, hidden, layers, cfg, seed=0, device=device)
    inputs, targets = _data(batch)
    state = model.init_state(batch)

    def step() -> None:
        nonlocal state
        _, state = model.train_step(inputs, targets, state, lr)

    return step


def nn_step(
    hidden: int, layers: int, batch: int, preset: str, lr: float = 1.0, device: str = "cpu"
) -> Callable[[], None]:
    """One training step of ``rpusim.nn.AnalogLSTM`` + ``AnalogLinear`` with ``AnalogSGD``
    (autograd through the tiles' backward reads; the CharLSTM's tiles and seeds)."""
    from rpusim.config import RPUConfig
    from rpusim.nn import char_lstm_modules
    from rpusim.optim import AnalogSGD

    lstm, head = char_lstm_modules(VOCAB, hidden, layers, RPUConfig.preset(preset), seed=0)
    lstm, head = lstm.to(device), head.to(device)
    opt = AnalogSGD([*lstm.parameters(), *head.parameters()], lr=lr)
    inputs, targets = (t.to(device) for t in _data(batch))
    x = torch.nn.functional.one_hot(inputs, VOCAB).float()
    state = None

    def step() -> None:
        nonlocal state
        opt.zero_grad()
        out, (h, c) = lstm(x, state)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        opt.step()
        state = (h.detach(), c.detach())

    return step


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows: the
    ratios to torch differ between CPUs of one architecture (docs/performance.md compares an
    Intel and an AMD machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    import numba

    from rpusim import __version__

    gpu = {"device": device}
    if device.startswith("cuda"):
        gpu["gpu"] = torch.cuda.get_device_name(torch.device(device))
        gpu["cuda"] = torch.version.cuda
    return {
        **gpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numba": numba.__version__,
        "rpusim": __version__,
    }


def run(
    quick: bool = False,
    seconds: float = 3.0,
    rounds: int = 7,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    devices: bool = False,
    algorithms: bool = False,
) -> dict:
    """Measure every row; returns ``{"machine": {...}, "rows": [...]}``.

    The implementations of one shape are timed back to back in each of ``rounds`` rounds
    (after one warm-up step each); a row reports the median rate and the median of the per-round
    ratios to torch, so that a change of load on a shared machine hits both sides of a ratio.
    ``devices``: also a row per device model (:data:`DEVICE_ROWS`, ``rpu:<kind>``).
    ``algorithms``: also a row per learning algorithm at 2 x :data:`ALGORITHM_HIDDEN`
    (``alg:<name>``, :func:`algorithm_rows`).
    """
    hiddens = (128,) if quick else (64, 128, 256)
    rows = []
    for hidden in hiddens:
        for batch in (1, 32):
            chars = SEQ_LEN * batch
            steps = {
                "torch": torch_step(hidden, 2, batch, device=device),
                "rpusim-fp": rpusim_step(hidden, 2, batch, "ideal", device=device),
                "rpusim-rpu": rpusim_step(hidden, 2, batch, "rpu_baseline", device=device),
                "rpusim-nn-rpu": nn_step(hidden, 2, batch, "rpu_baseline", device=device),
            }
            if devices:  # the RPU baseline on each other device model
                for kind, overrides in DEVICE_ROWS.items():
                    if overrides:
                        steps[f"rpu:{kind}"] = rpusim_step(
                            hidden, 2, batch, "rpu_baseline", device=device, overrides=overrides
                        )
            if algorithms and hidden == ALGORITHM_HIDDEN:  # the RPU baseline, other learning
                for name in algorithm_rows():
                    steps[f"alg:{name}"] = rpusim_step(
                        hidden, 2, batch, "rpu_baseline", device=device,
                        overrides={"algorithm": name},
                    )  # fmt: skip
            for step in steps.values():
                step()  # warm-up: numba compilation, allocator
            rates: dict[str, list[float]] = {impl: [] for impl in steps}
            for _ in range(rounds):
                for impl, step in steps.items():
                    rates[impl].append(_rate(step, chars, seconds / rounds, device))
            for impl in steps:
                ratio = statistics.median(
                    r / t for r, t in zip(rates[impl], rates["torch"], strict=True)
                )
                rate = statistics.median(rates[impl])
                row = {
                    "impl": impl,
                    "layers": 2,
                    "hidden": hidden,
                    "batch": batch,
                    "chars_per_s": round(rate, 1),
                    "ratio_to_torch": round(ratio, 4),
                }
                rows.append(row)
                log(
                    f"{impl:>19}  2x{hidden:<4} batch {batch:>2}  {rate:>10,.0f} chars/s  "
                    f"{ratio:6.3f}x torch"
                )
    return {"machine": machine(device), "rows": rows}


def markdown_table(result: dict) -> str:
    """The rows as a Markdown table (for docs/performance.md)."""
    lines = [
        "| impl | layers × hidden | batch | chars/s | ratio to torch |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['impl']} | {r['layers']}×{r['hidden']} | {r['batch']} | "
            f"{r['chars_per_s']:,.0f} | {r['ratio_to_torch']:.3f} |"
        )
    return "\n".join(lines)


def main(
    quick: bool = False,
    json_path: str | Path | None = None,
    device: str = "cpu",
    devices: bool = False,
    algorithms: bool = False,
) -> dict:
    from rpusim.train import device_problem

    problem = device_problem(device, "device='cpu'")
    if problem is not None:
        raise ValueError(f"device {problem}")
    result = run(
        quick=quick,
        seconds=2.5 if quick else 5.0,
        device=device,
        devices=devices,
        algorithms=algorithms,
    )
    print()
    print(f"CPU: {result['machine']['cpu']}, torch threads {result['machine']['torch_threads']}")
    print(markdown_table(result))
    if json_path is not None:
        from rpusim.io import atomic_write_text

        atomic_write_text(Path(json_path), json.dumps(result, indent=2) + "\n")
    return result
