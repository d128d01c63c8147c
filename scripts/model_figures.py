"""Make the figures of docs/model.md: device response and DAC transfer.

    python scripts/model_figures.py [--out docs/figures]

Every figure is computed with the simulator itself (AnalogTile), not drawn from formulas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from rpusim import AnalogTile, RPUConfig  # noqa: E402


def device_response(out: Path, n_devices: int = 6, pulses: int = 800, up_down: float = 0.0):
    """Weight against pulse number: ``pulses`` up then ``pulses`` down, one coincidence each.

    One coincidence per update: BL = 1 and p = q = 1 (x = d = 1, lr = dw_min, no update
    management scaling), so each ``tile.update`` call is exactly one pulse on every device.
    """
    cfg = RPUConfig().override(
        {"update.bl": 1, "update.update_management": False, "device.up_down": up_down}
    )
    dw_min = cfg.device.dw_min
    tile = AnalogTile(1, n_devices, cfg, seed=7)
    tile.set_weights(torch.zeros(1, n_devices))
    x = torch.ones(1, n_devices)
    trace = [tile.get_weights()[0]]
    for direction in (-1.0, 1.0):  # d < 0 moves the weight up (W <- W - lr d x)
        d = torch.full((1, 1), direction)
        for _ in range(pulses):
            tile.update(x, d, lr=dw_min)
            trace.append(tile.get_weights()[0])
    w = torch.stack(trace).numpy()
    state = tile.device_state()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n_devices):
        line = ax.plot(w[:, i], lw=1)[0]
        ax.axhline(state["w_max"][0, i].item(), color=line.get_color(), ls=":", lw=0.8)
        ax.axhline(state["w_min"][0, i].item(), color=line.get_color(), ls=":", lw=0.8)
    ax.axvline(pulses, color="k", lw=0.5)
    # Zoom on the first pulses of one device: the staircase and its cycle-to-cycle noise.
    inset = ax.inset_axes((0.08, 0.08, 0.36, 0.3))
    inset.plot(range(31), w[:31, 0], ".-", lw=0.8, ms=3)
    inset.plot(range(31), [state["dw_up"][0, 0].item() * k for k in range(31)], "k:", lw=0.8)
    inset.set_title("first 30 pulses of one device (dotted: no c2c noise)", fontsize=7)
    inset.tick_params(labelsize=6)
    ax.set_xlabel("pulse number (one coincidence each; up, then down)")
    ax.set_ylabel("weight (weight units)")
    title = f"constant-step device, RPU baseline, up_down = {up_down:g}"
    ax.set_title(f"{title}\n{n_devices} devices: d2d spread of step and bounds (dotted), c2c noise")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def dac_transfer(out: Path, bits: int = 4, reads: int = 400):
    """Array input against requested input, for nearest and stochastic rounding."""
    x = torch.linspace(-1.2, 1.2, 481)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, sto in zip(axes, (False, True), strict=True):
        cfg = RPUConfig().override(
            {
                "forward.inp_bits": bits,
                "forward.inp_sto_round": sto,
                "forward.out_bits": None,
                "forward.out_noise": 0.0,
                "forward.noise_management": "none",
                "forward.bound_management": "none",
                "device.w_max_dtod": 0.0,
            }
        )
        tile = AnalogTile(1, 1, cfg, seed=0)
        tile.set_weights(torch.full((1, 1), 0.5))
        one = tile.forward(x[:, None])[:, 0] / 0.5
        mean = torch.stack([tile.forward(x[:, None])[:, 0] / 0.5 for _ in range(reads)]).mean(0)
        ax.plot(x, x.clamp(-1, 1), "k:", lw=1, label="ideal (clipped at inp_bound)")
        ax.plot(x, one, lw=1, label="one read")
        if sto:
            ax.plot(x, mean, lw=1.5, label=f"mean of {reads} reads")
        ax.set_title(f"{bits}-bit DAC, {'stochastic' if sto else 'nearest'} rounding")
        ax.set_xlabel("input x (units of inp_bound)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("input reaching the array")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device_response(args.out / "device_response.png", pulses=800)
    device_response(args.out / "device_response_asym.png", pulses=300, up_down=0.2)
    dac_transfer(args.out / "dac_transfer.png")
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
