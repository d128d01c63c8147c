"""Make the figures of docs/model.md: device responses, DAC transfer, pulse trains and diagrams.

    python scripts/model_figures.py [--out docs/figures]

The plots are computed with the simulator itself (AnalogTile, the pulse generator of
``rpusim.rng``), not drawn from formulas; the signal chain of a read and the LSTM-on-a-tile
mapping are schematic diagrams.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

from rpusim import AnalogTile, RPUConfig, rng  # noqa: E402


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


EXAMPLE_TABLE = Path(__file__).resolve().parents[1] / "examples" / "devices" / "crosssim_ramp1.csv"


def _pulse_trace(cfg: RPUConfig, n_devices: int, up: int, down: int, start: float, seed: int):
    """Weights of ``n_devices`` devices (one tile row) after each of ``up`` single coincidences
    up, then ``down`` down (as :func:`device_response` drives them), and the devices' state."""
    tile = AnalogTile(1, n_devices, cfg, seed=seed)
    tile.set_weights(torch.full((1, n_devices), start))
    x = torch.ones(1, n_devices)
    trace = [tile.get_weights()[0]]
    for direction, pulses in ((-1.0, up), (1.0, down)):  # d < 0 moves the weight up
        d = torch.full((1, 1), direction)
        for _ in range(pulses):
            tile.update(x, d, lr=cfg.device.dw_min)
            trace.append(tile.get_weights()[0])
    return torch.stack(trace).numpy(), tile.device_state()


def device_models(out: Path, n_devices: int = 6, seed: int = 7):
    """One panel per device model: weight against pulse number, up pulses then down pulses,
    one coincidence each, for ``n_devices`` devices of one tile (d2d spread and c2c noise)."""
    from rpusim.devices.fit import fit_table, read_table

    table = read_table(EXAMPLE_TABLE)
    fit = fit_table(table, n_nodes=8)
    measured = fit.w_min + (table.value - fit.value_min) / (fit.value_max - fit.value_min) * (
        fit.w_max - fit.w_min
    )
    fitted = {f"device.{k}": v for k, v in fit.section().items() if k not in ("kind", "preset")}
    fitted |= {"device.dw_min_dtod": 0.1, "device.w_max_dtod": 0.05, "device.w_min_dtod": 0.05}
    single = {"update.bl": 1, "update.update_management": False}
    panels = [
        ("constant_step: RPU baseline (default)", {}, 800, 800, 0.0),
        ("linear_step: preset ecram", {"device.preset": "ecram"}, 1200, 1200, 0.0),
        ("soft_bounds: preset reram_sb", {"device.preset": "reram_sb"}, 1500, 1500, 0.0),
        ("exp_step: preset reram_es", {"device.preset": "reram_es"}, 1500, 1500, 0.0),
        (
            "pow_step: pow_gamma 2, dw_min 0.004",
            {"device.kind": "pow_step", "device.pow_gamma": 2.0, "device.dw_min": 0.004},
            1000,
            1000,
            0.0,
        ),
        (
            "piecewise_step: fit of the example table\n(d2d spread added: step 0.1, bounds 0.05)",
            {"device.kind": "piecewise_step", **fitted},
            int(table.up.sum()) - 1,
            int((~table.up).sum()),
            float(measured[0]),
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.6))
    for ax, (title, changes, up, down, start) in zip(axes.flat, panels, strict=True):
        cfg = RPUConfig().override({**changes, **single})
        w, state = _pulse_trace(cfg, n_devices, up, down, start, seed)
        for i in range(n_devices):
            line = ax.plot(w[:, i], lw=0.8)[0]
            for bound in ("w_max", "w_min"):
                ax.axhline(state[bound][0, i].item(), color=line.get_color(), ls=":", lw=0.7)
        if "piecewise" in title:
            ax.plot(measured, "k", lw=1.2, label="measured (CrossSim example)")
            ax.legend(fontsize=7, loc="lower center")
        ax.axvline(up, color="k", lw=0.5)
        dev = cfg.device
        ax.set_title(
            f"{title}\ndw_min {dev.dw_min:.3g}, c2c {dev.dw_min_std:.3g}, "
            f"{(dev.w_max - dev.w_min) / dev.dw_min:,.0f} states",
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
    for ax in axes[1]:
        ax.set_xlabel("pulse number (up, then down)", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("weight", fontsize=9)
    fig.suptitle(
        f"The device models: {n_devices} devices of one tile each, single coincidences "
        "(bounds dotted)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
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


# Colours of the diagrams: digital logic, converters, the analog array.
DIGITAL, CONVERTER, ANALOG = "#dbe9f6", "#fcefc7", "#f8d5c2"


def _box(ax, x, y, w, h, title, body, color):
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="0.3", lw=1
        )
    )
    ax.text(x + w / 2, y + h - 0.18, title, ha="center", va="top", fontsize=9, weight="bold")
    ax.text(x + w / 2, y + h - 0.5, body, ha="center", va="top", fontsize=8, linespacing=1.5)


def _arrow(ax, start, end, text="", **kw):
    style = {"arrowstyle": "-|>", "mutation_scale": 12, "lw": 1.2, "color": "0.2"} | kw
    ax.add_patch(FancyArrowPatch(start, end, **style))
    if text:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(*mid, text, ha="center", va="bottom", fontsize=8)


def signal_chain(out: Path):
    """The steps of one read (forward ``y = W x``; backward the same with ``W^T`` and ``d``)."""
    steps = [
        (
            "noise management",
            "$\\alpha = \\max\\,|x_i|$\n$\\hat x = x / \\alpha$\nnoise_management",
            DIGITAL,
        ),
        (
            "DAC",
            "clip to $\\pm$inp_bound\n$2^n - 1$ levels, n = inp_bits\nnearest or stochastic\n"
            "rounding (inp_sto_round)",
            CONVERTER,
        ),
        (
            "analog multiply",
            "$z = W \\hat x_q + \\sigma \\xi$\n$\\xi \\sim N(0, 1)$ per output\n"
            "and read, $\\sigma$ = out_noise",
            ANALOG,
        ),
        (
            "ADC",
            "clip to $\\pm$out_bound\n$2^m - 1$ levels,\nm = out_bits",
            CONVERTER,
        ),
        (
            "bound management",
            "any $|z_j| \\geq$ out_bound?\nthen read again with\nthe input halved\n"
            "(up to max_bm_factor)",
            DIGITAL,
        ),
        ("scale back", "$y = \\alpha \\cdot z_q$\n(times the halvings)", DIGITAL),
    ]
    w, h, gap, y0 = 1.75, 1.75, 0.45, 0.75
    x0 = 0.75
    fig, ax = plt.subplots(figsize=(13.2, 3.5))
    for i, (title, body, color) in enumerate(steps):
        _box(ax, x0 + i * (w + gap), y0, w, h, title, body, color)
        if i:
            _arrow(ax, (x0 + i * (w + gap) - gap, y0 + h / 2), (x0 + i * (w + gap), y0 + h / 2))
    _arrow(ax, (0.05, y0 + h / 2), (x0, y0 + h / 2))
    ax.text(0.05, y0 + h / 2 + 0.08, "x", fontsize=11, va="bottom")
    end = x0 + len(steps) * (w + gap) - gap
    _arrow(ax, (end, y0 + h / 2), (end + 0.5, y0 + h / 2))
    ax.text(end + 0.45, y0 + h / 2 + 0.08, "y", fontsize=11, va="bottom", ha="right")
    # The re-read loop: from bound management back to the DAC.
    bm_x = x0 + 4 * (w + gap) + w / 2
    dac_x = x0 + 1 * (w + gap) + w / 2
    _arrow(
        ax,
        (bm_x, y0),
        (dac_x, y0),
        connectionstyle="bar,fraction=-0.12",
        color="tab:red",
    )
    ax.text(
        (bm_x + dac_x) / 2,
        0.12,
        "saturated: $\\hat x \\leftarrow \\hat x / 2$, a new noisy read "
        "(bound_management: iterative)",
        ha="center",
        fontsize=8,
        color="tab:red",
    )
    for i, (label, color) in enumerate(
        (("digital", DIGITAL), ("converter", CONVERTER), ("analog array", ANALOG))
    ):
        ax.add_patch(Rectangle((0.75 + 1.6 * i, 2.85), 0.3, 0.2, fc=color, ec="0.3", lw=0.8))
        ax.text(0.75 + 1.6 * i + 0.4, 2.95, label, va="center", fontsize=8)
    ax.text(
        end,
        2.95,
        "one read, forward (y = W x) or backward (z = W$^T$d), each with its own settings",
        ha="right",
        va="center",
        fontsize=9,
    )
    ax.set_xlim(0, end + 0.6)
    ax.set_ylim(-0.05, 3.2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def pulse_trains(
    out: Path,
    p=(0.8, 0.35),
    q=(0.6, 0.25),
    bl: int = 10,
    key: int = 2018,
    pair: int = 0,
):
    """Pulse trains of two columns and two rows in one update pair, and their coincidences.

    The firing decisions are the simulator's: ``rng.pulse_uniforms`` with the column and row
    streams, as ``pulses.pulsed_update_reference`` draws them; a line fires in a slot when its
    uniform is below its probability (columns ``p_i = min(1, A|x_i|)``, rows ``q_j``).
    """
    col_u = rng.pulse_uniforms(key, rng.STREAM_COL, pair, bl, len(p))
    row_u = rng.pulse_uniforms(key, rng.STREAM_ROW, pair, bl, len(q))
    cols = col_u < torch.tensor(p)  # (bl, columns)
    rows = row_u < torch.tensor(q)  # (bl, rows)
    lanes = []  # (label, fires per slot, colour, right-hand note)
    for i, pi in enumerate(p):
        lanes.append((f"column {i + 1}  (x$_{i + 1}$): p = {pi:.2f}", cols[:, i], "tab:blue", ""))
    for j, qj in enumerate(q):
        lanes.append((f"row {j + 1}  (d$_{j + 1}$): q = {qj:.2f}", rows[:, j], "tab:green", ""))
    for j, qj in enumerate(q):
        for i, pi in enumerate(p):
            both = rows[:, j] & cols[:, i]
            note = f"n = {int(both.sum())}   (mean BL·p·q = {bl * pi * qj:.1f})"
            lanes.append((f"device (row {j + 1}, column {i + 1})", both, "tab:red", note))
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    ys = []
    y = 0.0
    for n, (label, fires, color, note) in enumerate(lanes):
        if n in (len(p), len(p) + len(q)):
            y -= 0.6  # a gap between the columns, the rows and the devices
        ys.append(y)
        ax.plot([0, bl], [y, y], color="0.75", lw=0.8)
        for slot in torch.nonzero(fires).flatten().tolist():
            ax.add_patch(Rectangle((slot + 0.1, y), 0.8, 0.7, fc=color, ec="none"))
        ax.text(-0.2, y + 0.35, label, ha="right", va="center", fontsize=9)
        if note:
            ax.text(bl + 0.2, y + 0.35, note, ha="left", va="center", fontsize=9)
        y -= 1.0
    ax.set_xlim(-0.05, bl + 0.05)
    ax.set_ylim(y + 0.6, 1.0)
    ax.set_xticks([s + 0.5 for s in range(bl)], [str(s + 1) for s in range(bl)])
    ax.set_xlabel(f"time slot of the pulse train (BL = {bl})")
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        "one update pair: each line fires or not in each slot (one draw per line, shared by its"
        " devices);\na device steps once per slot in which its row and its column both fire",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def lstm_tile(out: Path, n_in: int = 87, hidden: int = 64):
    """How one LSTM layer sits on one tile ``(4h, n_in + h + 1)`` (not to scale)."""
    fig, ax = plt.subplots(figsize=(11, 5.6))
    # The tile: columns [x_t | h_{t-1} | 1], rows the gates i, f, g, o (torch's order).
    cols = [("$x_t$", n_in, "#c6dbef"), ("$h_{t-1}$", hidden, "#c7e9c0"), ("1", 1, "#fdd0a2")]
    widths = [2.6, 2.0, 0.35]
    x0, y0, gate_h = 1.2, 0.6, 0.8
    total_w = sum(widths)
    x = x0
    for (label, n, color), w in zip(cols, widths, strict=True):
        ax.add_patch(Rectangle((x, y0), w, 4 * gate_h, fc=color, ec="0.3", lw=1))
        # The input driving these columns, from the top.
        for k in range(3 if w > 1 else 1):
            cx = x + w * (k + 1) / (4 if w > 1 else 2)
            _arrow(ax, (cx, y0 + 4 * gate_h + 0.7), (cx, y0 + 4 * gate_h), lw=0.9)
        if n > 1:
            ax.text(
                x + w / 2, y0 + 4 * gate_h + 0.75, f"{label}\n{n} columns", ha="center", va="bottom"
            )
        else:
            ax.text(
                x + w / 2 + 0.12,
                y0 + 4 * gate_h + 0.45,
                f"{label}: bias column",
                ha="left",
                va="center",
            )
        x += w
    for g, name in enumerate(("i (input)", "f (forget)", "g (cell)", "o (output)")):
        y = y0 + (3 - g) * gate_h
        ax.plot([x0, x0 + total_w], [y, y], color="0.3", lw=0.8)
        ax.text(x0 - 0.1, y + gate_h / 2, f"{name}\n{hidden} rows", ha="right", va="center")
        _arrow(ax, (x0 + total_w, y + gate_h / 2), (x0 + total_w + 0.9, y + gate_h / 2), lw=0.9)
    ax.text(
        x0 + total_w / 2,
        y0 - 0.15,
        f"one tile: {4 * hidden} × {n_in + hidden + 1} devices, W = [W$_x$ | W$_h$ | b]"
        "\n(4 gate matrices stacked; the bias is the last column, driven by a constant 1)",
        ha="center",
        va="top",
        fontsize=9,
    )
    # The digital cell.
    cell_x = x0 + total_w + 1.0
    _box(
        ax,
        cell_x,
        y0 + 0.6,
        3.3,
        2.0,
        "digital cell (float32)",
        "$i, f, o = \\sigma(a_{i,f,o})$,  $g = \\tanh(a_g)$\n"
        "$c_t = f \\odot c_{t-1} + i \\odot g$\n$h_t = o \\odot \\tanh(c_t)$",
        DIGITAL,
    )
    ax.text(
        cell_x + 1.65,
        y0 + 0.45,
        f"one forward read per step, $a_t = W z_t$,\ngives all {4 * hidden} gate pre-activations",
        ha="center",
        va="top",
        fontsize=9,
    )
    # h_t: to the next layer, and back into the h_{t-1} columns at the next step.
    h_out = (cell_x + 3.3, y0 + 1.6)
    _arrow(ax, h_out, (h_out[0] + 0.8, h_out[1]))
    ax.text(h_out[0] + 0.85, h_out[1], "$h_t$: next layer\n(or output tile)", va="center")
    hx = x0 + widths[0] + widths[1] / 2
    _arrow(
        ax,
        (cell_x + 1.65, y0 + 2.6),
        (hx, y0 + 4 * gate_h + 1.5),
        connectionstyle="arc3,rad=0.3",
        color="tab:green",
    )
    ax.text(
        cell_x + 1.85,
        y0 + 2.75,
        "$h_t$ becomes $h_{t-1}$\nof the next step",
        color="tab:green",
        ha="left",
        va="bottom",
        fontsize=9,
    )
    ax.text(
        x0 - 1.1,
        -0.5,
        "Backward (BPTT): per step one read $W^T \\delta_t$ of the same tile gives the error of "
        "$[x_t; h_{t-1}]$.\nUpdate: the T × batch pairs $(z_t, \\delta_t)$, "
        "$z_t = [x_t; h_{t-1}; 1]$, $\\delta_t$ = the error of $a_t$, as pulse trains on the "
        "columns and the rows.",
        ha="left",
        va="top",
        fontsize=9,
    )
    ax.set_xlim(x0 - 1.2, cell_x + 5.4)
    ax.set_ylim(-1.3, y0 + 4 * gate_h + 1.7)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        f"One LSTM layer ({hidden} units, {n_in} inputs) on one analog tile: LSTM2-64WP's first"
        " layer",
        fontsize=10,
    )
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
    device_models(args.out / "device_models.png")
    dac_transfer(args.out / "dac_transfer.png")
    signal_chain(args.out / "signal_chain.png")
    pulse_trains(args.out / "pulse_trains.png")
    lstm_tile(args.out / "lstm_tile.png")
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
