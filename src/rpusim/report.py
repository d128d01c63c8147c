"""Tables and figures from a finished (or partly finished) sweep folder.

``rpusim report DIR`` reads ``DIR/sweep.yaml``, ``DIR/sweep.csv`` and every point's
``metrics.csv`` and writes ``DIR/report.md`` with figures in ``DIR/figures/``:

* ``curves.png``: validation and test cross-entropy against training characters, one line per
  group of seeds (a grid cell or a variant): the mean over seeds, the band their min-max.
* ``final_<axis>.png`` per numeric grid axis: final test cross-entropy against the axis, mean
  over seeds with min-max bars, the variants (the floating-point reference) as horizontal lines.
* ``train_test.png`` for sweeps of variants only (baseline, regularization): training and test
  cross-entropy of each variant, to show the generalization gap.
* When DAC bits (``rpu.forward.inp_bits``) are swept, the smallest bit count whose final test
  loss lies within ``--bits-tolerance`` nats of the reference, for each rounding mode.

Losses are cross-entropies in nats per character, as ``train.py`` logs them. Points that did
not finish (pending, failed, diverged) are counted in the table and left out of the means.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rpusim.io import atomic_write, atomic_write_text
from rpusim.sweep import format_value

# How each swept key is named on a figure axis: (label with unit, factor applied to values).
AXIS_LABELS: dict[str, tuple[str, float]] = {
    "rpu.device.up_down": ("up/down asymmetry (%)", 100.0),
    "rpu.forward.inp_bits": ("DAC bits", 1.0),
    "rpu.backward.inp_bits": ("DAC bits (backward)", 1.0),
    "rpu.forward.inp_sto_round": ("stochastic rounding of DAC inputs", 1.0),
    "rpu.device.dw_min": ("dw_min: mean weight step per pulse (weight units)", 1.0),
    "rpu.forward.out_noise": ("output noise std (weight units)", 1.0),
    "rpu.backward.out_noise": ("backward output noise std (weight units)", 1.0),
    "rpu.update.bl": ("pulse train length BL", 1.0),
    "model.hidden": ("hidden units per LSTM layer", 1.0),
    "model.layers": ("LSTM layers", 1.0),
    "model.dropout": ("dropout probability", 1.0),
    "train.lr": ("learning rate", 1.0),
}
CE = "cross-entropy (nats/char)"
CHARS = "training characters"
BITS_KEY = "rpu.forward.inp_bits"
ROUND_KEY = "rpu.forward.inp_sto_round"


def axis_label(axis: dict[str, Any]) -> tuple[str, float]:
    """The figure label (with unit) of a sweep.yaml grid axis, and the factor for its values."""
    keys = axis.get("keys") or []
    return AXIS_LABELS.get(keys[0], (axis["name"], 1.0)) if keys else (axis["name"], 1.0)


class ReportError(ValueError):
    """The sweep folder cannot be reported on; the message is one line."""


@dataclass
class Run:
    """One point of the sweep: its sweep.yaml entry, sweep.csv row and metrics.csv columns."""

    name: str
    seed: int
    status: str
    row: dict[str, str]
    metrics: dict[str, list[float]]

    def final(self, column: str) -> float:
        """A final loss from sweep.csv (nan when the run did not finish)."""
        if self.status != "finished":
            return math.nan
        return _float(self.row.get(column, ""))


@dataclass
class Group:
    """The seeds of one grid cell or one variant."""

    label: str
    axes: dict[str, Any]
    variant: str
    runs: list[Run] = field(default_factory=list)

    def finals(self, column: str) -> list[float]:
        """The finished seeds' final values of ``column`` (nan-free)."""
        return [v for r in self.runs if not math.isnan(v := r.final(column))]

    def stat(self, column: str) -> tuple[float, float, float]:
        """Mean, min and max over finished seeds (nan when none finished)."""
        vals = self.finals(column)
        if not vals:
            return math.nan, math.nan, math.nan
        return sum(vals) / len(vals), min(vals), max(vals)


@dataclass
class Sweep:
    """A sweep folder, read."""

    out: Path
    doc: dict[str, Any]
    axes: list[dict[str, Any]]
    groups: list[Group]
    vocab_size: int | None = None

    @property
    def uniform(self) -> float | None:
        """ln V: the cross-entropy of a uniform guess over the vocabulary (None if unknown)."""
        return math.log(self.vocab_size) if self.vocab_size else None

    @property
    def grid_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.variant]

    @property
    def variant_groups(self) -> list[Group]:
        return [g for g in self.groups if g.variant]

    def reference(self) -> Group | None:
        """The floating-point reference: the variant ``fp``, else the first float-update one."""
        variants = self.variant_groups
        for g in variants:
            if g.variant == "fp":
                return g
        for g in variants:
            cfg = self.config_of(g)
            if cfg.get("rpu", {}).get("update", {}).get("mode") == "float":
                return g
        return variants[0] if variants else None

    def no_dac(self) -> Group | None:
        """The RPU reference without input quantization: a variant with the pulsed update and
        no DAC (``inp_bits: null``) in both directions, if the sweep has one."""
        for g in self.variant_groups:
            rpu = self.config_of(g).get("rpu", {})
            if (
                rpu.get("update", {}).get("mode") == "pulsed"
                and rpu.get("forward", {}).get("inp_bits", 0) is None
                and rpu.get("backward", {}).get("inp_bits", 0) is None
            ):
                return g
        return None

    def config_of(self, group: Group) -> dict[str, Any]:
        names = {r.name for r in group.runs}
        for p in self.doc.get("points", []):
            if p["name"] in names:
                return p.get("config") or {}
        return {}


def load_sweep(out: str | Path) -> Sweep:
    """Read ``out/sweep.yaml``, ``out/sweep.csv`` and each point's ``metrics.csv``."""
    out = Path(out)
    try:
        doc = yaml.safe_load((out / "sweep.yaml").read_text(encoding="utf-8"))
        with open(out / "sweep.csv", newline="", encoding="utf-8") as fh:
            rows = {r["point"]: r for r in csv.DictReader(fh)}
    except FileNotFoundError as err:
        raise ReportError(
            f"{out}: no {Path(err.filename).name}; run rpusim sweep FILE --out {out} first"
        ) from None
    except (OSError, yaml.YAMLError, csv.Error, KeyError) as err:
        raise ReportError(f"{out}: cannot read the sweep ({type(err).__name__}: {err})") from None
    axes = doc.get("grid") or []
    groups: dict[tuple, Group] = {}
    for p in doc.get("points") or []:
        key = (p["variant"], tuple(format_value(v) for v in p["axes"].values()))
        if key not in groups:
            groups[key] = Group(_group_label(p["variant"], p["axes"]), p["axes"], p["variant"])
        row = rows.get(p["name"], {})
        groups[key].runs.append(
            Run(
                p["name"],
                p["seed"],
                row.get("status", "pending"),
                row,
                _read_metrics(out / p["name"] / "metrics.csv"),
            )
        )
    if not groups:
        raise ReportError(f"{out}/sweep.yaml: has no points")
    vocab = None
    for p in doc.get("points") or []:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            summary = json.loads((out / p["name"] / "summary.json").read_text(encoding="utf-8"))
            vocab = int(summary["vocab_size"])
            break
    return Sweep(out, doc, axes, list(groups.values()), vocab)


def _read_metrics(path: Path) -> dict[str, list[float]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    if not rows:
        return {}
    return {col: [_float(r.get(col, "")) for r in rows] for col in rows[0]}


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _group_label(variant: str, axes: dict[str, Any]) -> str:
    if variant:
        return variant
    return ", ".join(f"{name}={format_value(v)}" for name, v in axes.items()) or "base"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _plt().close(fig)


def _mean_curve(
    runs: list[Run], column: str, x: str = "chars"
) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, mean, min, max of ``column`` over the runs, at the character counts all of them logged.

    Runs that did not finish still contribute the part of their curve they logged."""
    curves = []
    for r in runs:
        xs, ys = r.metrics.get(x, []), r.metrics.get(column, [])
        pts = {x: y for x, y in zip(xs, ys, strict=False) if not math.isnan(x)}
        if pts:
            curves.append(pts)
    if not curves:
        return [], [], [], []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    xs, mean, lo, hi = [], [], [], []
    for x in common:
        vals = [c[x] for c in curves]
        if any(not math.isfinite(v) for v in vals):
            continue
        xs.append(x)
        mean.append(sum(vals) / len(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return xs, mean, lo, hi


def _colors(n: int) -> list[Any]:
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


_VARIANT_STYLES = [("black", "--"), ("tab:red", "-."), ("tab:gray", ":"), ("tab:brown", "--")]


def _variant_style(i: int) -> tuple[str, str]:
    return _VARIANT_STYLES[i % len(_VARIANT_STYLES)]


def plot_curves(sw: Sweep, path: Path) -> None:
    """Validation (left) and test (right) cross-entropy vs training characters for every group.

    With two or more grid axes, one row of panels per value of the second axis."""
    plt = _plt()
    grid = sw.grid_groups
    panel_axis = sw.axes[1]["name"] if len(sw.axes) >= 2 else None
    panel_values = (
        list(dict.fromkeys(format_value(g.axes[panel_axis]) for g in grid))
        if panel_axis
        else [None]
    )
    nrows = len(panel_values)
    fig, axs = plt.subplots(nrows, 2, figsize=(11, 3.6 * nrows), squeeze=False, sharex=True)
    for row, pval in enumerate(panel_values):
        members = [g for g in grid if pval is None or format_value(g.axes[panel_axis]) == pval]
        for col, (column, title) in enumerate(
            (("valid_loss", "validation"), ("test_loss", "test"))
        ):
            ax = axs[row][col]
            for g, color in zip(members, _colors(len(members)), strict=True):
                _band(ax, g.runs, column, color, "-", _short_label(g, panel_axis))
            for i, g in enumerate(sw.variant_groups):
                # Next to a grid the variants are reference lines; alone, they are the curves.
                color, style = _variant_style(i) if grid else (_plt().get_cmap("tab10")(i), "-")
                _band(ax, g.runs, column, color, style, g.label)
            where = f" ({panel_axis}={pval})" if pval is not None else ""
            ax.set_title(f"{title}{where}")
            if sw.uniform is not None and ax.get_ylim()[1] > sw.uniform + 0.5:
                ax.set_ylim(top=sw.uniform + 0.5)  # worse than a uniform guess: off the chart
            ax.set_ylabel(f"{title} {CE}")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(_eng())
            if row == nrows - 1:
                ax.set_xlabel(CHARS)
            if col == 1:
                ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def _eng() -> Any:
    from matplotlib.ticker import EngFormatter

    return EngFormatter(sep="")  # 200k, 1.5M


def _short_label(g: Group, panel_axis: str | None) -> str:
    parts = [f"{n}={format_value(v)}" for n, v in g.axes.items() if n != panel_axis]
    return ", ".join(parts) or g.label


def _band(
    ax: Any, runs: list[Run], column: str, color: Any, style: str, label: str, x: str = "chars"
) -> None:
    xs, mean, lo, hi = _mean_curve(runs, column, x)
    if not xs:
        return
    n = len(runs)
    ax.plot(xs, mean, style, color=color, lw=1.5, label=f"{label} (n={n})" if n > 1 else label)
    if n > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def plot_final(
    sw: Sweep, axis: dict[str, Any], path: Path, column: str = "final_test_loss"
) -> None:
    """``column`` (mean over seeds, min-max bars) against one grid axis, one line per value of
    the other axes; each variant as a horizontal line with its seed band."""
    plt = _plt()
    name = axis["name"]
    label, factor = axis_label(axis)
    others = [a["name"] for a in sw.axes if a["name"] != name]
    lines: dict[str, list[Group]] = {}
    for g in sw.grid_groups:
        key = ", ".join(f"{o}={format_value(g.axes[o])}" for o in others)
        lines.setdefault(key, []).append(g)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (key, members), color in zip(lines.items(), _colors(len(lines)), strict=True):
        xs, ys, lo, hi = [], [], [], []
        for g in members:
            mean, mn, mx = g.stat(column)
            if math.isnan(mean):
                continue
            xs.append(_numeric(g.axes[name]) * factor)
            ys.append(mean)
            lo.append(mean - mn)
            hi.append(mx - mean)
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                fmt="o-",
                color=color,
                capsize=3,
                label=_pretty_other(key, sw) or "RPU",
            )
        failed = [_numeric(g.axes[name]) * factor for g in members if not g.finals(column)]
        if failed:
            ax.plot(
                failed,
                [0.98] * len(failed),
                "x",
                color=color,
                ms=9,
                transform=ax.get_xaxis_transform(),
                label="did not finish" if not xs else None,
            )
    for i, g in enumerate(sw.variant_groups):
        mean, mn, mx = g.stat(column)
        if math.isnan(mean):
            continue
        c, style = _variant_style(i)
        ax.axhline(mean, color=c, ls=style, lw=1.2, label=f"{g.label} (reference)")
        if mx > mn:
            ax.axhspan(mn, mx, color=c, alpha=0.1, lw=0)
    values = [_numeric(v) * factor for v in axis["values"]]
    if all(v > 0 for v in values) and max(values) / min(values) >= 8:
        ax.set_xscale("log")  # sizes, step sizes: values that double
        ax.minorticks_off()
    if len(values) <= 12:
        ax.set_xticks(values, [f"{v:g}" for v in values])
    _cap(ax, sw)
    ax.set_xlabel(label)
    ax.set_ylabel(f"final {_what(column)} {CE}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _cap(ax: Any, sw: Sweep) -> list[Any]:
    """Cut the y axis just above ln V (a uniform guess): a run that ends worse than guessing is
    drawn as a triangle at the top edge, labelled with its value (its mean over seeds).

    Labels hang below their triangle; where triangles crowd, a label moves down a row, and one
    with no free place within a few rows is left out (``place_labels``). Returns the labels drawn.
    """
    if sw.uniform is None:
        return []
    cap = sw.uniform + 0.5
    ax.axhline(sw.uniform, color="gray", ls=":", lw=1, label=f"uniform guess, ln {sw.vocab_size}")
    lo, hi = ax.get_ylim()
    if hi <= cap:
        return []
    ax.set_ylim(lo, cap)
    from matplotlib.container import ErrorbarContainer

    # Only the data lines: not an error bar's caps (the seeds' min and max, not a result) nor
    # lines drawn in axes coordinates (axhline, the "did not finish" crosses).
    caps = {id(c) for cont in ax.containers if isinstance(cont, ErrorbarContainer) for c in cont[1]}
    above = [
        (x, y, line.get_color())
        for line in list(ax.get_lines())
        if id(line) not in caps and line.get_transform() is ax.transData
        for x, y in zip(*line.get_data(), strict=True)
        if isinstance(y, int | float) and y > cap
    ]
    labels = []
    for x, y, color in above:
        ax.plot([x], [cap], "^", color=color, ms=8, clip_on=False)
        labels.append(
            ax.annotate(
                f"{y:.1f}",
                (x, cap),
                textcoords="offset points",
                xytext=(0, -LABEL_GAP_PT),
                ha="center",
                va="top",
                fontsize=8,
                color=color,
                # Over the error bar that runs up to the triangle: readable, not crossed out.
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            )
        )
    if not labels:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    anchors = [tuple(ax.transData.transform((x, cap))) for x, _, _ in above]
    sizes = []
    for label in labels:
        box = label.get_window_extent(renderer)
        sizes.append((box.width, box.height))
    places = place_labels(anchors, sizes, gap=LABEL_GAP_PT * px_per_pt)
    kept = []
    for label, anchor, size, place in zip(labels, anchors, sizes, places, strict=True):
        if place is None:
            label.remove()
            continue
        top = place[1] + size[1] / 2  # the label's top centre, as an offset from its triangle
        label.xyann = (0.0, (top - anchor[1]) / px_per_pt)
        kept.append(label)
    return kept


LABEL_GAP_PT = 8.0  # points between a triangle at the top edge and its label


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    gap: float = 2.0,
    rows: int = 4,
) -> list[tuple[float, float] | None]:
    """Centres of text boxes hanging below their anchor points, no two boxes overlapping.

    ``anchors`` are points and ``sizes`` the (width, height) of each point's label box, both in
    display units (pixels) with y upwards, as matplotlib's ``transData.transform`` and
    ``Text.get_window_extent`` give them. Each label is centred under its anchor, its top
    ``gap`` below it; if that box overlaps a label placed before it (in the order given), it moves
    down by one box height plus ``gap``, up to ``rows`` places; a label with no free place is left
    out (None). Boxes that only touch do not overlap.
    """
    placed: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1
    out: list[tuple[float, float] | None] = []
    for (x, y), (w, h) in zip(anchors, sizes, strict=True):
        where = None
        for row in range(rows):
            top = y - gap - row * (h + gap)
            box = (x - w / 2, top - h, x + w / 2, top)
            if not any(_overlap(box, other) for other in placed):
                placed.append(box)
                where = (x, top - h / 2)
                break
        out.append(where)
    return out


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share an area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _pretty_other(key: str, sw: Sweep) -> str:
    for a in sw.axes:
        if ROUND_KEY in a["keys"]:
            key = key.replace(f"{a['name']}=true", "stochastic rounding")
            key = key.replace(f"{a['name']}=false", "deterministic rounding")
    return key


def _what(column: str) -> str:
    return {
        "final_test_loss": "test",
        "final_valid_loss": "validation",
        "final_train_loss": "training",
    }.get(column, column)


def _numeric(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def plot_train_test(sw: Sweep, path: Path) -> None:
    """Training (dashed) and test (solid) cross-entropy vs epochs, one color per group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab10")
    for i, g in enumerate(sw.groups):
        _band(ax, g.runs, "test_loss", colors(i % 10), "-", f"{g.label}: test", x="epoch")
        _band(ax, g.runs, "train_loss", colors(i % 10), "--", f"{g.label}: train", x="epoch")
    ax.set_xlabel("training epochs (passes over the training split)")
    ax.set_ylabel(CE)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The bits threshold
# ---------------------------------------------------------------------------------------------


def bits_threshold(sw: Sweep, tolerance: float) -> list[dict[str, Any]] | None:
    """For each rounding mode, the smallest DAC bit count whose mean final test loss is within
    ``tolerance`` of the reference's mean; None when no bits axis or reference exists."""
    bits = next((a for a in sw.axes if BITS_KEY in a["keys"]), None)
    ref = sw.reference()
    if bits is None or ref is None or math.isnan(ref.stat("final_test_loss")[0]):
        return None
    ref_loss = ref.stat("final_test_loss")[0]
    rnd = next((a for a in sw.axes if ROUND_KEY in a["keys"]), None)
    no_dac = sw.no_dac()
    nodac_loss = no_dac.stat("final_test_loss")[0] if no_dac is not None else math.nan
    others = [a["name"] for a in sw.axes if a is not bits]
    modes: dict[str, list[Group]] = {}
    for g in sw.grid_groups:
        key = ", ".join(f"{o}={format_value(g.axes[o])}" for o in others)
        modes.setdefault(key, []).append(g)
    out = []
    for key, members in modes.items():
        ordered = sorted(members, key=lambda g: g.axes[bits["name"]])
        means = [(g.axes[bits["name"]], g.stat("final_test_loss")[0]) for g in ordered]
        means = [(b, m) for b, m in means if not math.isnan(m)]
        within = [(b, m) for b, m in means if m - ref_loss <= tolerance]
        # The same question against this mode's own finest DAC: where does resolution stop
        # mattering on this device, whatever the device's own gap to floating point?
        finest = means[-1] if means else (None, math.nan)
        near_finest = [(b, m) for b, m in means if m - finest[1] <= tolerance]
        # And against the same device read without any DAC (the "ideal" input), if swept.
        near_nodac = [(b, m) for b, m in means if m - nodac_loss <= tolerance]
        mode = _pretty_other(key, sw) if rnd is not None else "as configured"
        out.append(
            {
                "mode": mode or "all",
                "bits": within[0][0] if within else None,
                "loss": within[0][1] if within else math.nan,
                "reference": ref_loss,
                "ref_label": ref.label,
                "finest_bits": finest[0],
                "finest_loss": finest[1],
                "bits_vs_finest": near_finest[0][0] if near_finest else None,
                "loss_vs_finest": near_finest[0][1] if near_finest else math.nan,
                "nodac_label": no_dac.label if no_dac is not None else None,
                "nodac_loss": nodac_loss,
                "bits_vs_nodac": near_nodac[0][0] if near_nodac else None,
                "loss_vs_nodac": near_nodac[0][1] if near_nodac else math.nan,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------


def report(out: str | Path, tolerance: float = 0.05) -> Path:
    """Write ``out/report.md`` and ``out/figures/*.png``; returns the report's path."""
    sw = load_sweep(out)
    out = Path(out)
    figs = out / "figures"
    data_cmd = sw.doc.get("command") or f"rpusim sweep ... --out {out}"
    fig_cmd = shlex.join(
        ["rpusim", "report", str(out)]
        + (["--bits-tolerance", f"{tolerance:g}"] if tolerance != 0.05 else [])
    )
    made = f"Data: `{data_cmd}`; figure: `{fig_cmd}`."
    md: list[str] = [f"# Sweep report: {sw.doc.get('name', out.name)}", ""]
    if sw.doc.get("description"):
        md += [str(sw.doc["description"]).strip(), ""]
    seeds = sw.doc.get("seeds") or sorted({r.seed for g in sw.groups for r in g.runs})
    counts: dict[str, int] = {}
    for g in sw.groups:
        for r in g.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
    md += [
        f"Made by `{fig_cmd}` from the runs of `{data_cmd}`"
        + (f" (scale `{sw.doc['scale']}`)" if sw.doc.get("scale") else "")
        + ".",
        f"Seeds: {', '.join(map(str, seeds))}. Points: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ". Losses are "
        "cross-entropies in nats per character; means are over the finished seeds, spreads "
        "[in brackets] are min-max. *final*: the last evaluation; *best test*: the test loss at "
        "the evaluation with the lowest validation loss; *final train*: the mean loss of the "
        "training batches since the previous evaluation (each before its update).",
        "",
        "## Final losses",
        "",
    ]
    md += _table(sw)
    n = 0

    def figure(name: str, caption: str) -> None:
        nonlocal n
        n += 1
        md.extend([f"![{caption}](figures/{name})", "", f"*Figure {n}. {caption} {made}*", ""])

    md += ["## Figures", ""]
    plot_curves(sw, figs / "curves.png")
    figure(
        "curves.png",
        "Validation and test cross-entropy vs training characters; lines are "
        "the mean over seeds, bands the min-max.",
    )
    for axis in sw.axes:
        values = axis["values"]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if not numeric or len(values) < 2:
            continue
        name = f"final_{_safe(axis['name'])}.png"
        plot_final(sw, axis, figs / name)
        label = axis_label(axis)[0]
        refs = [g.label for g in sw.variant_groups if g.finals("final_test_loss")]
        ref = f" Horizontal lines: {', '.join(refs)} (mean; band: min-max)." if refs else ""
        figure(name, f"Final test cross-entropy vs {label}: mean over seeds, bars min-max." + ref)
    if not sw.axes:
        plot_train_test(sw, figs / "train_test.png")
        figure(
            "train_test.png",
            "Training (dashed) and test (solid) cross-entropy vs training epochs per "
            "variant: the gap between them measures overfitting.",
        )
    thresh = bits_threshold(sw, tolerance)
    if thresh is not None:
        has_nodac = thresh[0]["nodac_label"] is not None
        nodac_text = (
            f" The last two: above `{thresh[0]['nodac_label']}` "
            f"({thresh[0]['nodac_loss']:.4f}), the same device read without a DAC."
            if has_nodac
            else ""
        )
        md += [
            "## Smallest DAC bit count within tolerance",
            "",
            f"Tolerance: final test loss at most {tolerance:g} nats/char above the reference "
            f"`{thresh[0]['ref_label']}` ({thresh[0]['reference']:.4f}); in the two columns "
            "after, above the same rounding mode's finest DAC (the largest bit count swept): "
            f"where resolution stops mattering on this device.{nodac_text} "
            f"Computed by `{fig_cmd}`.",
            "",
            "| rounding | smallest bits (vs reference) | its test loss | finest DAC: bits, "
            "test loss | smallest bits (vs finest) | its test loss |"
            + (" smallest bits (vs no DAC) | its test loss |" if has_nodac else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if has_nodac else ""),
        ]
        for t in thresh:
            bits = "none within tolerance" if t["bits"] is None else str(t["bits"])
            near = "-" if t["bits_vs_finest"] is None else str(t["bits_vs_finest"])
            line = (
                f"| {t['mode']} | {bits} | {_num(t['loss'])} | {t['finest_bits']}, "
                f"{_num(t['finest_loss'])} | {near} | {_num(t['loss_vs_finest'])} |"
            )
            if has_nodac:
                nodac = "none" if t["bits_vs_nodac"] is None else str(t["bits_vs_nodac"])
                line += f" {nodac} | {_num(t['loss_vs_nodac'])} |"
            md.append(line)
        md.append("")
    failed = [
        (r.name, r.row.get("error", "")) for g in sw.groups for r in g.runs if r.status == "failed"
    ]
    if failed:
        md += ["## Failed points", ""] + [f"- `{n}`: {e}" for n, e in failed] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _table(sw: Sweep) -> list[str]:
    ref = sw.reference()
    ref_mean = ref.stat("final_test_loss")[0] if ref is not None else math.nan
    head = [
        "group",
        "finished",
        "final test",
        "best test",
        "final valid",
        "final train",
        "test - train",
    ]
    if not math.isnan(ref_mean):
        head.append(f"test - {ref.label}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in sw.groups:
        test = g.stat("final_test_loss")
        gap = [
            t - tr
            for r in g.runs
            if not math.isnan(t := r.final("final_test_loss"))
            and not math.isnan(tr := r.final("final_train_loss"))
        ]
        statuses = sorted({r.status for r in g.runs} - {"finished"})
        done = f"{len(g.finals('final_test_loss'))}/{len(g.runs)}"
        if statuses:
            done += f" ({', '.join(statuses)})"
        cells = [
            g.label,
            done,
            _spread(test),
            _spread(g.stat("best_test_loss")),
            _spread(g.stat("final_valid_loss")),
            _spread(g.stat("final_train_loss")),
            _spread((sum(gap) / len(gap), min(gap), max(gap)) if gap else (math.nan,) * 3),
        ]
        if not math.isnan(ref_mean):
            cells.append(_num(test[0] - ref_mean, signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _spread(stat: tuple[float, float, float]) -> str:
    mean, lo, hi = stat
    if math.isnan(mean):
        return "-"
    if hi - lo < 5e-5:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def _num(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rpusim report`` on an ``argparse`` subparsers object; returns the parser."""
    p = subparsers.add_parser(
        "report",
        help="write DIR/report.md and figures from a sweep folder",
        description="Tables and figures (DIR/report.md, DIR/figures/*.png) from rpusim sweep's "
        "output folder; works on a partly finished sweep too.",
    )
    p.add_argument("dir", help="the sweep folder (rpusim sweep ... --out DIR)")
    p.add_argument(
        "--bits-tolerance",
        "--tolerance",  # its first name, still accepted
        dest="tolerance",
        type=float,
        default=0.05,
        metavar="NATS",
        help="DAC-bits tolerance: the final test loss (nats/char) above the reference within "
        "which a DAC bit count counts as enough (--tolerance is the same option)",
    )
    p.set_defaults(func=report_main)
    return p


def report_main(args: argparse.Namespace) -> int:
    """``rpusim report``: 0 on success, 2 when the folder is not a sweep."""
    try:
        path = report(args.dir, tolerance=args.tolerance)
    except ReportError as err:
        print(f"rpusim: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rpusim.report DIR``."""
    parser = argparse.ArgumentParser(prog="rpusim")
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
