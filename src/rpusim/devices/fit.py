"""Fit a piecewise-step device to a measured pulse-response table (``rpusim device fit``).

The table has one row per pulse: the pulse number, the value read after the pulse (a
conductance, a read current, or a weight: anything linear in the weight) and the pulse's
direction (``up`` or ``down``), optionally under a header such as ``pulse,value,direction``::

    pulse,value,direction
    1,1.606e-4,up
    2,1.611e-4,up
    ...

How the fit works:

1. The values are mapped linearly onto ``[w_min, w_max]``: the smallest measured value to
   ``w_min``, the largest to ``w_max``.
2. Every row after the first gives one step, ``w[i] - w[i-1]`` (divided by the gap in pulse
   numbers), taken by the direction of row ``i`` at the weight before it, ``w[i-1]``; a step
   that ends on the smallest or largest value is left out (the device saturated there).
3. ``dw_min`` is the mean size of all steps, up and down; the nodes are the piecewise-linear
   step size (in units of ``dw_min``) at ``N`` equally spaced points of the range, fitted by
   least squares to the single steps with the model's own linear interpolation (a faint
   smoothness term keeps nodes without data in line with their neighbours); nodes are at
   least 0.
4. ``dw_min_std`` is the spread of the single steps relative to the fitted mean step at their
   weight (the model's multiplicative cycle-to-cycle noise; it includes the read noise of the
   measurement).

One measured device tells nothing about device-to-device spreads: they are written as 0.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpusim.devices.piecewise_step import MAX_NODES

UP_WORDS = {"up", "+", "+1", "1", "potentiation", "set"}
DOWN_WORDS = {"down", "-", "-1", "depression", "reset"}
#: Header names that mark each column (case-insensitive); other names take the free column.
PULSE_NAMES = {"pulse", "pulses", "n", "pulse_number", "number"}
DIRECTION_NAMES = {"direction", "dir", "sign", "polarity"}


class FitError(ValueError):
    """A table that cannot be fitted (one line that says why)."""


@dataclass
class Table:
    """A pulse-response table: pulse numbers, values and directions (True: up), in pulse order."""

    pulse: np.ndarray
    value: np.ndarray
    up: np.ndarray


@dataclass
class DeviceFit:
    """The fitted device: what ``rpu.device`` needs, and counts for the comment."""

    dw_min: float
    dw_min_std: float
    w_max: float
    w_min: float
    piecewise_up: list[float]
    piecewise_down: list[float]
    n_up: int
    n_down: int
    value_min: float
    value_max: float

    def section(self) -> dict:
        """The ``rpu.device`` section (every key of a piecewise-step device)."""
        return {
            "kind": "piecewise_step",
            "preset": None,
            "dw_min": self.dw_min,
            "dw_min_dtod": 0.0,
            "dw_min_std": self.dw_min_std,
            "up_down": 0.0,
            "up_down_dtod": 0.0,
            "w_max": self.w_max,
            "w_min": self.w_min,
            "w_max_dtod": 0.0,
            "w_min_dtod": 0.0,
            "piecewise_up": self.piecewise_up,
            "piecewise_down": self.piecewise_down,
        }


def read_table(path: str | Path) -> Table:
    """Read a pulse-response CSV (``,``, ``;`` or tab separated; ``#`` comments)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise FitError(f"{path}: is empty; expected rows of pulse,value,direction")
    sample = lines[0][1]
    delimiter = "\t" if "\t" in sample else ";" if ";" in sample and "," not in sample else ","
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delimiter))
    numbers = [n for n, _ in lines]
    rows = [[cell.strip() for cell in row] for row in rows]

    columns = (0, 1, 2)
    if not _is_number(rows[0][0] if rows[0] else ""):
        columns = _columns_from_header(path, rows[0])
        rows, numbers = rows[1:], numbers[1:]
    if not rows:
        raise FitError(f"{path}: has a header but no rows")
    pulse, value, up = [], [], []
    for n, row in zip(numbers, rows, strict=True):
        if len(row) <= max(columns):
            raise FitError(
                f"{path}:{n}: expected 3 columns (pulse, value, direction), got {len(row)}"
            )
        p, v, d = (row[c] for c in columns)
        for name, cell in (("pulse", p), ("value", v)):
            if not _is_number(cell) or not math.isfinite(float(cell)):
                raise FitError(f"{path}:{n}: {name} {cell!r} is not a finite number")
        word = d.lower()
        if word not in UP_WORDS | DOWN_WORDS:
            raise FitError(f"{path}:{n}: direction {d!r} is not up or down")
        pulse.append(float(p))
        value.append(float(v))
        up.append(word in UP_WORDS)
    table = Table(np.array(pulse), np.array(value), np.array(up, dtype=bool))
    if np.any(np.diff(table.pulse) <= 0):
        k = int(np.argmax(np.diff(table.pulse) <= 0)) + 1
        raise FitError(f"{path}:{numbers[k]}: pulse numbers must increase from row to row")
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns_from_header(path: Path, header: list[str]) -> tuple[int, int, int]:
    """(pulse, value, direction) column indices from a header row."""
    names = [h.strip().lower() for h in header]
    if len(names) < 3:
        raise FitError(
            f"{path}: the header {','.join(header)!r} names {len(names)} columns; expected "
            "pulse, value and direction"
        )
    pulse = next((i for i, h in enumerate(names) if h in PULSE_NAMES), None)
    direction = next((i for i, h in enumerate(names) if h in DIRECTION_NAMES), None)
    missing = [n for n, i in (("pulse", pulse), ("direction", direction)) if i is None]
    if missing:
        raise FitError(
            f"{path}: the header {','.join(header)!r} has no {' and no '.join(missing)} column"
        )
    value = next(i for i in range(len(names)) if i not in (pulse, direction))
    return pulse, value, direction


def _hat_basis(s: np.ndarray, n_nodes: int) -> np.ndarray:
    """The piecewise-linear interpolation weights of positions ``s`` (in node units) on
    ``n_nodes`` nodes, as ``piecewise_step.step`` interpolates: ``(len(s), n_nodes)``."""
    basis = np.zeros((len(s), n_nodes))
    if n_nodes == 1:
        basis[:, 0] = 1.0
        return basis
    s = np.clip(s, 0.0, n_nodes - 1.0)
    k = np.minimum(np.floor(s), n_nodes - 2).astype(int)
    t = s - k
    rows = np.arange(len(s))
    basis[rows, k] = 1.0 - t
    basis[rows, k + 1] = t
    return basis


def _fit_nodes(s: np.ndarray, step: np.ndarray, n_nodes: int) -> np.ndarray:
    """Least-squares nodes of the step sizes ``step`` at positions ``s``, with a faint
    second-difference penalty (so that a node without data follows its neighbours)."""
    a = _hat_basis(s, n_nodes)
    b = step
    if n_nodes >= 3:
        scale = 1e-4 * math.sqrt(len(s) / n_nodes)
        d2 = np.zeros((n_nodes - 2, n_nodes))
        for i in range(n_nodes - 2):
            d2[i, i : i + 3] = (1.0, -2.0, 1.0)
        a = np.vstack([a, scale * d2])
        b = np.concatenate([b, np.zeros(n_nodes - 2)])
    nodes, *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.maximum(nodes, 0.0)


def fit_table(
    table: Table, *, n_nodes: int = 8, w_min: float = -1.0, w_max: float = 1.0, where: str = "table"
) -> DeviceFit:
    """Fit a piecewise-step device to ``table`` (see the module docstring)."""
    if not 1 <= n_nodes <= MAX_NODES:
        raise FitError(f"--nodes {n_nodes}: give 1 to {MAX_NODES}")
    if not (math.isfinite(w_min) and math.isfinite(w_max) and w_min < 0 < w_max):
        raise FitError(f"weight range [{w_min}, {w_max}]: give w_min < 0 < w_max")
    lo, hi = float(table.value.min()), float(table.value.max())
    if not hi > lo:
        raise FitError(f"{where}: every value is {lo:g}; a device must move")
    w = w_min + (table.value - lo) / (hi - lo) * (w_max - w_min)
    gap = np.diff(table.pulse)
    before, after, up = w[:-1], w[1:], table.up[1:]
    step = np.where(up, after - before, before - after) / gap
    saturated = (table.value[1:] == lo) | (table.value[1:] == hi)
    s = (before - w_min) / (w_max - w_min) * (n_nodes - 1)
    nodes, used = {}, {}
    for name, mask in (("up", up), ("down", ~up)):
        keep = mask & ~saturated
        if not keep.any():
            raise FitError(f"{where}: has no {name} pulses (a step needs a row before it)")
        used[name] = keep
        nodes[name] = _fit_nodes(s[keep], step[keep], n_nodes)
    keep_all = used["up"] | used["down"]
    dw_min = float(np.mean(step[keep_all]))
    if not dw_min > 0:
        raise FitError(f"{where}: the mean step is {dw_min:g}; up pulses must raise the value")
    # The fitted mean step at each measured step, and the spread of the steps around it.
    relative = []
    for name in ("up", "down"):
        keep = used[name]
        mean = _hat_basis(s[keep], n_nodes) @ nodes[name]
        ok = mean > 1e-12 * dw_min
        relative.append(step[keep][ok] / mean[ok] - 1.0)
    rel = np.concatenate(relative)
    dw_min_std = float(np.sqrt(np.mean(rel**2))) if len(rel) else 0.0
    return DeviceFit(
        dw_min=dw_min,
        dw_min_std=dw_min_std,
        w_max=w_max,
        w_min=w_min,
        piecewise_up=[float(v) / dw_min for v in nodes["up"]],
        piecewise_down=[float(v) / dw_min for v in nodes["down"]],
        n_up=int(used["up"].sum()),
        n_down=int(used["down"].sum()),
        value_min=lo,
        value_max=hi,
    )


def _num(value: float) -> str:
    return f"{value:.6g}"


def to_yaml(fit: DeviceFit, source: str, n_nodes: int) -> str:
    """The fitted ``rpu.device`` as a run-config YAML (with comments saying where it came from)."""
    states = (fit.w_max - fit.w_min) / fit.dw_min
    sec = fit.section()
    lines = [
        f"# rpu.device fitted by 'rpusim device fit' to {source}:",
        f"# {fit.n_up} up and {fit.n_down} down steps; values {_num(fit.value_min)} .. "
        f"{_num(fit.value_max)} mapped linearly onto [{_num(fit.w_min)}, {_num(fit.w_max)}];",
        f"# {n_nodes} nodes; about {states:.0f} states ((w_max - w_min) / dw_min).",
        "# Use it as a run config (rpusim train --config THIS.yaml) or copy its device section.",
        "rpu:",
        "  device:",
        "    kind: piecewise_step",
        "    preset: null",
        f"    dw_min: {_num(sec['dw_min'])}  # mean step of all single steps, up and down",
        "    dw_min_dtod: 0.0  # one device measured: no device-to-device spread known",
        f"    dw_min_std: {_num(sec['dw_min_std'])}  # spread of single steps about the fitted "
        "mean (read noise included)",
        "    up_down: 0.0  # the up/down asymmetry is in the nodes",
        "    up_down_dtod: 0.0  # one device measured: no device-to-device spread known",
        f"    w_max: {_num(sec['w_max'])}",
        f"    w_min: {_num(sec['w_min'])}",
        "    w_max_dtod: 0.0  # one device measured: no device-to-device spread known",
        "    w_min_dtod: 0.0  # one device measured: no device-to-device spread known",
        "    # step / dw_min at equally spaced points of [w_min, w_max]:",
        f"    piecewise_up: [{', '.join(_num(v) for v in sec['piecewise_up'])}]",
        f"    piecewise_down: [{', '.join(_num(v) for v in sec['piecewise_down'])}]",
    ]
    return "\n".join(lines) + "\n"
