"""Experiment sweeps: expand a grid of training runs, run them locally or on Ray, resume the rest.

An experiment file (``experiments/*.yaml``) is YAML::

    name: asymmetry                     # optional; defaults to the file's stem
    base:                               # a run config tree (see config.RunConfig) ...
      model: {layers: 2, hidden: 64}
      rpu: rpu_baseline
    # base_config: path/to/run.yaml     # ... or a run config file (relative to this file)
    grid:                               # axes over dotted run-config keys; the cartesian product
      rpu.device.up_down: [0, 0.005, 0.01, 0.02, 0.05, 0.1]
      # an axis that sets several keys to the same value has a name, keys and values:
      # inp_bits: {keys: [rpu.forward.inp_bits, rpu.backward.inp_bits], values: [3, 5, 7]}
      # a labelled axis gives each value its own overrides (FP and RPU at every grid point):
      # tile: {values: {fp: {rpu: ideal, train.lr: 5.0}, rpu: {train.lr: 1.7}}}
    seeds: [0, 1]                       # every point runs once per seed
    variants:                           # named extra points, crossed with the seeds only
      fp: {rpu: ideal}                  # e.g. the floating-point reference line
    scales:                             # override sets chosen with --scale
      quick: {train.max_chars: 200000}
      paper: {train.epochs: 30, seeds: [0, 1, 2]}   # ``seeds`` here replaces the seed list

Overrides (variants, scales, ``--set``) are dotted keys or nested mappings. An ``rpu`` value that
names a preset (``rpu: ideal`` or ``rpu: {preset: ideal, ...}``) replaces the whole ``rpu``
section; other mappings are merged key by key. The order is: base, scale, ``--set``, then the
point's axis values or variant, then its seed. With an empty grid and some variants, only the
variants run; with neither, the base itself is one point named ``base``.

Each point is one training run in ``OUT/<point>/``, named from its axis values and seed
(``up_down=0.02_seed=0``, ``fp_seed=1``). ``OUT/sweep.yaml`` holds the expanded experiment (every
point's full config) and ``OUT/sweep.csv`` one row per point: its axis values, variant, seed,
status (``finished``, ``diverged``, ``failed`` or ``pending``), final and best losses, and the
error of a failed point. Both are rewritten atomically whenever a point ends.

Rerunning a sweep on the same ``OUT`` skips the finished (and diverged) points and resumes the
others from their checkpoints (``train(..., resume=True)``); a point whose experiment now asks
for more ``train.epochs`` or ``train.max_chars`` is continued; a point whose config changed in
anything else is refused (recorded as failed) rather than mixed. A point that raises is recorded
with its error (traceback in ``OUT/<point>/error.txt``) and the others go on. An exclusive lock
(``fcntl.flock`` on ``OUT/.sweep.lock``) refuses a second sweep on the same ``OUT``, and each run
locks its own folder (``train.py``), so a rerun never trains a point beside a survivor. The pool's
workers die with the sweep, even one killed with SIGKILL (Linux's parent-death signal, and a check
of the parent before each point); SIGTERM stops a sweep through its cleanup (the workers stop, a
local Ray cluster shuts down). Variant and axis names become folder names: they are letters,
digits, ``_ . + -`` (no ``/``, no leading ``.``), so every run folder lies inside ``OUT``.

Every run uses ``--threads`` torch and numba threads (1 by default) whatever the number of
workers, and every random stream is seeded from its config, so the results do not depend on
``--workers`` or on the backend: ``--workers 1`` and ``--workers 8`` give bit-identical runs.
With ``--backend ray --address ADDR`` the points run on a Ray cluster; ``OUT`` must then be a
folder that every node sees at the same path (a shared file system).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import ctypes
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rpusim.config import (
    ConfigError,
    RunConfig,
    add_override_option,
    add_threads_option,
    load_yaml,
    parse_assignment,
    short_repr,
)
from rpusim.io import FolderLock, atomic_write_text, remove_stale_temporaries

STATUSES = ("finished", "diverged", "failed", "pending")
DONE = ("finished", "diverged")  # a rerun skips these: training again would give the same run
# summary.json's status (train.py) -> the sweep's; "running" and "interrupted" are pending.
_TRAIN_STATUS = {"completed": "finished", "diverged": "diverged"}
# Keys a finished run may be continued with (train.RESUMABLE_KEYS): more epochs or characters.
_RESUMABLE = ("train.max_chars", "train.epochs")
LOSS_COLUMNS = (
    "final_train_loss",
    "final_valid_loss",
    "best_valid_loss",
    "final_test_loss",
    "best_test_loss",
)
_TOP_KEYS = {"name", "description", "base", "base_config", "grid", "seeds", "variants", "scales"}


#: Variant and axis names: they become parts of run folder names, so no '/' and no leading '.'.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class SweepError(ValueError):
    """An experiment file, sweep folder or backend was refused; the message is one line."""


# ---------------------------------------------------------------------------------------------
# The experiment and its points
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One grid axis: every key in ``keys`` (dotted run-config names) takes each of ``values``.

    ``name`` labels the axis in point names, ``sweep.csv`` and reports (``up_down``). A labelled
    axis has no keys: its values are labels and ``settings[i]`` the overrides of ``values[i]``.
    """

    name: str
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    settings: tuple[dict[str, Any], ...] = ()

    def changes(self, value: Any) -> dict[str, Any]:
        """The overrides that put a run at ``value`` on this axis."""
        if self.settings:
            return self.settings[self.values.index(value)]
        return {key: value for key in self.keys}


@dataclass(frozen=True)
class Experiment:
    """An experiment file, parsed: a base run config, grid axes, seeds, variants and scales."""

    name: str
    base: dict[str, Any]
    grid: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Point:
    """One training run of a sweep.

    ``axes`` maps axis names to this point's values (empty for a variant), ``variant`` is the
    variant's name (``""`` for a grid point) and ``config`` the full, validated run config tree.
    """

    name: str
    axes: dict[str, Any]
    variant: str
    seed: int
    config: dict[str, Any]


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file (the format is in this module's docstring)."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with base/grid/seeds/variants/scales")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown and not set(map(str, data)) & (_TOP_KEYS - {"name", "description"}):
        raise SweepError(
            f"{path}: is a run config, not an experiment (rpusim train --config {path}); an "
            "experiment file has base or base_config, grid, seeds, variants, scales"
        )
    if unknown:
        raise SweepError(
            f"{path}: unknown key {short_repr(unknown[0])}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    if "base" in data and "base_config" in data:
        raise SweepError(f"{path}: give either base or base_config, not both")
    if "base_config" in data:
        ref = data["base_config"]
        if not isinstance(ref, str):
            raise SweepError(f"{path}: base_config must be a file path, got {short_repr(ref)}")
        base = load_yaml(path.parent / ref if not Path(ref).is_absolute() else Path(ref))
    else:
        base = data.get("base") or {}
    if not isinstance(base, dict):
        raise SweepError(f"{path}: base must be a mapping (a run config tree)")

    seeds = _seeds(data.get("seeds", [base.get("seed", 0)]), f"{path}: seeds")
    variants = data.get("variants") or {}
    if not isinstance(variants, dict):
        raise SweepError(f"{path}: variants must map names to overrides, e.g. fp: {{rpu: ideal}}")
    for name, over in variants.items():
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
            raise SweepError(
                f"{path}: variant name {short_repr(name)} must be letters, digits, '_', '.', "
                "'+' or '-'"
            )
        if not isinstance(over, dict | type(None)):
            raise SweepError(f"{path}: variants.{name} must be a mapping of overrides")
    variants = {k: dict(v or {}) for k, v in variants.items()}
    scales = data.get("scales") or {}
    if not isinstance(scales, dict) or not all(
        isinstance(v, dict | type(None)) for v in scales.values()
    ):
        raise SweepError(f"{path}: scales must map names (quick, paper) to override mappings")
    scales = {str(k): dict(v or {}) for k, v in scales.items()}
    for key in ("name", "description"):
        if not isinstance(data.get(key), str | type(None)):
            raise SweepError(f"{path}: {key} must be text, got {short_repr(data[key])}")
    return Experiment(
        name=str(data.get("name") or path.stem),
        base=base,
        grid=_axes(data.get("grid") or {}, path),
        seeds=seeds,
        variants=variants,
        scales=scales,
        description=str(data.get("description") or ""),
    )


def expand(exp: Experiment, scale: str | None = None, overrides: Sequence[str] = ()) -> list[Point]:
    """Every point of ``exp``: the grid product (then variants), each crossed with the seeds.

    ``scale`` picks one of ``exp.scales`` (required when the file has any); ``overrides`` are
    ``key=value`` run-config assignments (``--set``). Every point's config is validated here, so
    a bad key or value fails before anything runs.
    """
    seeds = exp.seeds
    base = copy.deepcopy(exp.base)
    if exp.scales:
        if scale is None:
            raise SweepError(
                f"experiment {exp.name!r} has scales {', '.join(exp.scales)}; choose one with "
                "--scale"
            )
        if scale not in exp.scales:
            raise SweepError(
                f"--scale {scale!r}: experiment {exp.name!r} has {', '.join(exp.scales)}"
            )
        changes = dict(exp.scales[scale])
        if "seeds" in changes:
            seeds = _seeds(changes.pop("seeds"), f"scales.{scale}.seeds")
        base = merge(base, changes)
    elif scale is not None:
        raise SweepError(f"--scale {scale!r}: experiment {exp.name!r} defines no scales")
    for text in overrides:
        key, value = parse_assignment(text)
        base = merge(base, {key: value})

    cells: list[tuple[dict[str, Any], str, list[dict[str, Any]]]] = []
    if exp.grid or not exp.variants:
        for combo in itertools.product(*(axis.values for axis in exp.grid)):
            axes = {axis.name: value for axis, value in zip(exp.grid, combo, strict=True)}
            changes = [axis.changes(v) for axis, v in zip(exp.grid, combo, strict=True)]
            cells.append((axes, "", changes))
    for name, variant in exp.variants.items():
        cells.append(({}, name, [variant]))

    points: list[Point] = []
    for axes, variant, changes in cells:
        for seed in seeds:
            name = point_name(axes, variant, seed)
            tree = base
            for change in changes:
                tree = merge(tree, change)
            tree = merge(tree, {"seed": seed})
            try:
                cfg = RunConfig.from_dict(tree)
            except ConfigError as err:
                raise SweepError(f"point {name}: {err}") from None
            points.append(Point(name, axes, variant, seed, cfg.to_dict()))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two points are both named {dupes[0]!r}; give axes distinct values")
    return points


def point_name(axes: dict[str, Any], variant: str, seed: int) -> str:
    """A readable, filesystem-safe folder name: ``up_down=0.02_seed=0`` or ``fp_seed=0``."""
    parts = [variant] if variant else []
    parts += [f"{name}={format_value(value)}" for name, value in axes.items()]
    if not parts:
        parts = ["base"]
    return "_".join(parts + [f"seed={seed}"])


def format_value(value: Any) -> str:
    """An axis value as it appears in point names and tables (``true``, ``null``, ``1e-05``)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int | str):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def merge(tree: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of the (partial) run config ``tree`` with ``changes`` applied.

    Keys of ``changes`` may be dotted (``rpu.device.up_down``) or nested mappings. Mappings are
    merged key by key, except that an ``rpu`` value naming a preset (``"ideal"`` or ``{preset:
    ...}``) replaces the whole section. Unknown keys are caught later, by ``RunConfig``.
    """
    out = copy.deepcopy(tree)
    for dotted, value in changes.items():
        if not isinstance(dotted, str) or not dotted:
            raise SweepError(
                f"override key {short_repr(dotted)}: expected a dotted name such as train.lr"
            )
        parts = dotted.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            child = node.get(part)
            if here == "rpu" and isinstance(child, str):
                child = {"preset": child}  # rpu: NAME is short for rpu: {preset: NAME}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise SweepError(f"{here}: is a value, not a section (cannot set {dotted})")
            node[part] = child
            node = child
        _merge_leaf(node, parts[-1], copy.deepcopy(value), dotted)
    return out


def _merge_leaf(node: dict[str, Any], key: str, value: Any, dotted: str) -> None:
    replaces = dotted == "rpu" and (
        isinstance(value, str) or (isinstance(value, dict) and "preset" in value)
    )
    old = node.get(key)
    if isinstance(value, dict) and not replaces and isinstance(old, dict | str):
        if dotted == "rpu" and isinstance(old, str):
            old = {"preset": old}
        node[key] = merge(old, value)
    else:
        node[key] = value


def _axes(grid: Any, path: Path) -> tuple[Axis, ...]:
    if not isinstance(grid, dict):
        raise SweepError(f"{path}: grid must map dotted keys to lists of values")
    axes = []
    for key, spec in grid.items():
        if isinstance(spec, dict) and "keys" not in spec and isinstance(spec.get("values"), dict):
            labels = spec["values"]  # a labelled axis: {values: {label: overrides}}
            if set(spec) != {"values"} or not all(
                isinstance(v, dict) and isinstance(k, str) for k, v in labels.items()
            ):
                raise SweepError(
                    f"{path}: grid.{key}: a labelled axis is {{values: {{label: overrides}}}}"
                )
            axes.append(Axis(str(key), (), tuple(labels), tuple(labels.values())))
        elif isinstance(spec, dict):
            unknown = set(spec) - {"keys", "values"}
            keys, values = spec.get("keys"), spec.get("values")
            if unknown or not isinstance(keys, list) or not keys or not isinstance(values, list):
                raise SweepError(
                    f"{path}: grid.{key}: a named axis is {{keys: [dotted keys], values: [...]}}"
                )
            axes.append(Axis(str(key), tuple(map(str, keys)), tuple(values)))
        elif isinstance(spec, list):
            axes.append(Axis("", (str(key),), tuple(spec)))
        else:
            raise SweepError(
                f"{path}: grid.{key}: expected a list of values, got {short_repr(spec)}"
            )
        if not axes[-1].values:
            raise SweepError(f"{path}: grid.{key}: has no values")
        if not all(_small(v) for v in axes[-1].values):  # values are spelled in folder names
            raise SweepError(f"{path}: grid.{key}: a value holds more than {_SMALL} items")
    # Short names: the last part of the key, longer where two axes would share one.
    named = []
    for i, axis in enumerate(axes):
        if axis.name:
            named.append(axis)
            continue
        parts = axis.keys[0].split(".")
        others = [a.keys[0] for j, a in enumerate(axes) if j != i and not a.name]
        n = 1
        while n < len(parts) and any(o.split(".")[-n:] == parts[-n:] for o in others):
            n += 1
        named.append(Axis(".".join(parts[-n:]), axis.keys, axis.values))
    names = [a.name for a in named]
    for name in names:  # it names run folders: a '/' or '..' would write outside --out
        if not _SAFE_NAME.fullmatch(name):
            raise SweepError(
                f"{path}: grid axis name {short_repr(name)} must be letters, digits, '_', '.', "
                "'+' or '-' (it names the run folders under --out)"
            )
    if len(set(names)) != len(names) or any(n in ("variant", "seed", "point") for n in names):
        raise SweepError(f"{path}: grid axis names {names} must be distinct and not variant/seed")
    return tuple(named)


_SMALL = 1000


def _small(value: Any) -> bool:
    """Whether ``value`` holds at most ``_SMALL`` items, nested ones included, counted without
    building it: YAML aliases make a few lines hold billions (a "billion laughs")."""
    stack, seen = [value], 0
    while stack:
        seen += 1
        if seen > _SMALL:
            return False
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, list | tuple):
            stack += item
    return True


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)
        or len(set(value)) != len(value)
    ):
        raise SweepError(f"{where}: expected a list of distinct non-negative integers, e.g. [0, 1]")
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# Running one point (in a worker process or a Ray task)
# ---------------------------------------------------------------------------------------------


def run_point(config: dict[str, Any], run_dir: str, threads: int = 1) -> dict[str, Any]:
    """Train (or resume) one point; never raises. Returns ``{"status", "summary", "error"}``.

    Runs in a worker process (or Ray task) with ``threads`` torch threads, so that results do
    not depend on how many runs share the machine. The run's log goes to ``run_dir/train.log``;
    the traceback of a failure to ``run_dir/error.txt``.
    """
    _exit_if_orphaned()  # a queued point of a sweep that died is not started
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(ImportError, ValueError):  # the pulsed-update kernels' threads
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    out = Path(run_dir)
    start = time.monotonic()
    try:
        from rpusim.train import train

        cfg = RunConfig.from_dict(config)
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").unlink(missing_ok=True)
        with (
            open(out / "train.log", "a", encoding="utf-8") as log,
            contextlib.redirect_stderr(log),
        ):
            summary = train(cfg, out, resume=True, progress=False, verbose=True)
        return {"status": _TRAIN_STATUS.get(summary.get("status"), "pending"), "summary": summary}
    except Exception as err:  # a failing point is recorded; the sweep goes on
        with contextlib.suppress(OSError):
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "error.txt", traceback.format_exc())
        message = " ".join(f"{type(err).__name__}: {err}".split())
        return {"status": "failed", "error": message, "elapsed_s": time.monotonic() - start}


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's ``summary.json``, or None when it has none (yet) or it cannot be read."""
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


class _Lock(FolderLock):
    """An exclusive ``flock`` on ``OUT/.sweep.lock`` for the life of a sweep."""

    def __init__(self, out: Path) -> None:
        super().__init__(
            out / ".sweep.lock",
            "another sweep is running on this folder",
            "wait for it to end or use another --out",
            SweepError,
        )


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def sweep(
    experiment: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    scale: str | None = None,
    overrides: Sequence[str] = (),
    threads: int = 1,
    command: str | None = None,
    log: Any = sys.stderr,
) -> list[dict[str, Any]]:
    """Expand ``experiment``, run its unfinished points into ``out`` and return the table rows.

    ``workers`` processes (or Ray tasks) run at once, each with ``threads`` torch threads.
    Writes ``out/sweep.yaml`` and ``out/sweep.csv``; see the module docstring.
    """
    if backend not in ("local", "ray"):
        raise SweepError(f"--backend {backend!r}: choose local or ray")
    if address is not None and backend != "ray":
        raise SweepError("--address is for --backend ray")
    workers = default_workers() if workers is None else workers
    if workers < 1 or threads < 1:
        raise SweepError("--workers and --threads must be at least 1")
    if str(out) == "":  # Path("") is ".": the runs would land in the current folder
        raise SweepError("--out: is empty; give the sweep folder's path")
    exp = load_experiment(experiment)
    points = expand(exp, scale, overrides)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: exists and is not a folder")
    for p in points:  # every run folder is a child of --out, whatever the names hold
        if Path(p.name).name != p.name or p.name in (".", ".."):
            raise SweepError(f"point {short_repr(p.name)}: not a folder name; rename its axis")

    with _Lock(out):
        remove_stale_temporaries(out, ("sweep.csv", "sweep.yaml"))  # of a killed sweep
        rows = {p.name: _row(p, out) for p in points}
        todo = []
        for p in points:
            clash, same = _compare_config(p, out)
            if clash:
                rows[p.name].update(status="failed", error=clash)
            elif not (same and rows[p.name]["status"] in DONE):
                rows[p.name]["status"] = "pending"  # e.g. more epochs for a finished run
                todo.append(p)
        _write_sweep_yaml(out, exp, points, scale, overrides, command, experiment)
        skipped = len(points) - len(todo)
        _say(
            log,
            f"sweep {exp.name}: {len(points)} points, {skipped} done or refused, "
            f"{len(todo)} to run with {min(workers, max(len(todo), 1))} {backend} workers",
        )
        _write_csv(out, exp, points, rows)
        runner = _run_local if backend == "local" else _run_ray
        t0 = time.monotonic()
        results = contextlib.closing(runner(todo, out, workers, threads, address))
        with _sigterm_raises(), results as ran:
            for n, (point, result) in enumerate(ran, 1):
                rows[point.name] = _row(point, out, result)
                _write_csv(out, exp, points, rows)
                row = rows[point.name]
                loss = row.get("final_test_loss")
                loss_text = f"test {loss:.4f}" if isinstance(loss, float) else row.get("error", "")
                _say(
                    log,
                    f"[{n}/{len(todo)}] {point.name}: {row['status']} {loss_text} "
                    f"({time.monotonic() - t0:.0f} s)",
                )
    return [rows[p.name] for p in points]


def _run_local(
    todo: list[Point], out: Path, workers: int, threads: int, address: str | None
) -> Iterator[tuple[Point, dict[str, Any]]]:
    """Run points in a pool of fresh (spawned) processes; yield each as it ends."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    ended = False
    try:
        futures = {pool.submit(run_point, p.config, str(out / p.name), threads): p for p in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: todo.index(futures[f])):
                try:
                    result = fut.result()
                except Exception as err:  # the worker process died (killed, out of memory)
                    result = {"status": "failed", "error": f"worker died: {type(err).__name__}"}
                yield futures[fut], result
        ended = True
    finally:
        if not ended:  # stopped early (an error, SIGTERM, Ctrl-C): the running points stop too
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(OSError, ValueError):
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


# The sweep process of a pool worker (set in the worker by _die_with_parent).
_POOL_PARENT: int | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: end this worker when the sweep that started it dies.

    A sweep killed with SIGKILL runs no cleanup; without this its workers would go on training
    the queued points beside a rerun, then block forever on the dead sweep's queue. On Linux the
    kernel sends the worker SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere,
    and in case the parent died before the prctl, :func:`run_point` checks the parent first.
    """
    global _POOL_PARENT
    _POOL_PARENT = parent
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _exit_if_orphaned()


def _exit_if_orphaned() -> None:
    """In a pool worker whose sweep has died: exit at once, training nothing more."""
    if _POOL_PARENT is not None and os.getppid() != _POOL_PARENT:
        os._exit(1)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into SystemExit for the block, so that the cleanup of
    ``finally`` runs (the pool's workers stop, a local Ray cluster shuts down) instead of the
    process vanishing. SIGINT already raises KeyboardInterrupt. Only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run_ray(
    todo: list[Point], out: Path, workers: int, threads: int, address: str | None
) -> Iterator[tuple[Point, dict[str, Any]]]:
    """Run points as Ray tasks (one CPU per torch thread); ``out`` must be visible to all nodes."""
    try:
        import ray
    except ImportError:
        raise SweepError(
            "--backend ray: Ray is not installed; install it with pip install 'ray>=2.9'"
        ) from None
    if not todo:
        return
    # Workers import rpusim from wherever this process found it (an installed package or src/).
    src = str(Path(__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    try:  # ray.init inside: a SIGTERM while the local cluster starts still shuts it down
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers * threads,
                include_dashboard=False,
                runtime_env={"env_vars": env},
                log_to_driver=False,
                _node_ip_address="127.0.0.1",  # a private local instance: loopback only
            )
        task = ray.remote(num_cpus=threads, max_retries=0)(run_point)
        refs = {task.remote(p.config, str((out / p.name).resolve()), threads): p for p in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as err:  # the task's process died
                    message = " ".join(str(err).split())[:300]
                    result = {"status": "failed", "error": f"ray task failed: {message}"}
                yield refs[ref], result
    finally:
        ray.shutdown()


def _compare_config(point: Point, out: Path) -> tuple[str, bool]:
    """``(clash, same)`` for the run already in ``out/<point>``, if any.

    ``clash`` says why it cannot be continued ("" when it can: no run yet, or a config that
    differs at most in train.max_chars/train.epochs); ``same`` is True when its config equals
    the point's.
    """
    path = out / point.name / "config.yaml"
    if not path.exists():
        return "", False
    try:
        old = RunConfig.from_yaml(path).to_dict()
    except ConfigError as err:
        return f"{path}: unreadable ({err})", False
    if old == point.config:
        return "", True
    trimmed = [copy.deepcopy(c) for c in (old, point.config)]
    for tree in trimmed:
        for key in _RESUMABLE:
            section, name = key.split(".")
            tree[section].pop(name, None)
    if trimmed[0] == trimmed[1]:
        return "", False
    diff = _first_difference(*trimmed)
    return (
        f"{path} differs from this sweep's point ({diff}): the experiment, --scale or --set "
        f"changed; remove {out / point.name} or use another --out"
    ), False


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {short_repr(a)} there, {short_repr(b)} here"


def _row(point: Point, out: Path, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep.csv row of a point, from a fresh result or else from its summary.json.

    ``final_*`` are the losses of the last evaluation; ``best_*`` those of the evaluation with
    the lowest validation loss (early stopping on validation, never on test).
    """
    row: dict[str, Any] = {
        "point": point.name,
        **point.axes,
        "variant": point.variant,
        "seed": point.seed,
        "status": "pending",
        "error": "",
    }
    summary = read_summary(out / point.name) or {}
    if result is not None:
        row["status"] = result["status"]
        row["error"] = result.get("error", "")
        summary = result.get("summary") or summary
    else:
        row["status"] = _TRAIN_STATUS.get(summary.get("status"), "pending")
    final, best = summary.get("final") or {}, summary.get("best") or {}
    for split in ("train", "valid", "test"):
        row[f"final_{split}_loss"] = _number(final.get(f"{split}_loss"))
        if split != "train":
            row[f"best_{split}_loss"] = _number(best.get(f"{split}_loss"))
    row["chars"] = _number(summary.get("chars_trained"))
    row["chars_per_s"] = _number(summary.get("chars_per_s"))
    row["elapsed_s"] = _number(summary.get("wall_time_s", result and result.get("elapsed_s")))
    if not row["error"] and row["status"] == "diverged":
        row["error"] = str(summary.get("message", ""))
    return row


def _number(value: Any) -> float | int | str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return ""


def csv_columns(axis_names: Sequence[str]) -> list[str]:
    """sweep.csv's header for a sweep with these axes."""
    return [
        "point",
        *axis_names,
        "variant",
        "seed",
        "status",
        *LOSS_COLUMNS,
        "chars",
        "chars_per_s",
        "elapsed_s",
        "error",
    ]


def _write_csv(out: Path, exp: Experiment, points: list[Point], rows: dict) -> None:
    columns = csv_columns([a.name for a in exp.grid])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for p in points:
        row = dict(rows[p.name])
        for axis in exp.grid:
            if axis.name in row:
                row[axis.name] = format_value(row[axis.name])
        writer.writerow({c: row.get(c, "") for c in columns})
    atomic_write_text(out / "sweep.csv", buf.getvalue())


def _write_sweep_yaml(
    out: Path,
    exp: Experiment,
    points: list[Point],
    scale: str | None,
    overrides: Sequence[str],
    command: str | None,
    experiment: str | Path,
) -> None:
    doc = {
        "name": exp.name,
        "description": exp.description,
        "experiment": str(experiment),
        "command": command or _command(experiment, out, scale, overrides),
        "scale": scale,
        "set": list(overrides),
        "grid": [
            {"name": a.name, "keys": list(a.keys), "values": list(a.values)}
            | ({"settings": list(a.settings)} if a.settings else {})
            for a in exp.grid
        ],
        "variants": exp.variants,
        "seeds": sorted({p.seed for p in points}),
        "points": [
            {
                "name": p.name,
                "axes": p.axes,
                "variant": p.variant,
                "seed": p.seed,
                "config": p.config,
            }
            for p in points
        ],
    }
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(doc, sort_keys=False))


def _command(experiment: str | Path, out: Path, scale: str | None, overrides: Sequence[str]) -> str:
    words = ["rpusim", "sweep", str(experiment), "--out", str(out)]
    if scale:
        words += ["--scale", scale]
    for text in overrides:
        words += ["--set", text]
    return shlex.join(words)


def _say(log: Any, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rpusim sweep`` on an ``argparse`` subparsers object; returns the parser."""
    p = subparsers.add_parser(
        "sweep",
        help="run every point of an experiment file (grid x seeds + variants), resumably",
        description=(
            "Expand an experiment file (experiments/*.yaml) and train every point into "
            "OUT/<point>/, skipping finished points and resuming interrupted ones. Writes "
            "OUT/sweep.csv and OUT/sweep.yaml."
        ),
    )
    p.add_argument("experiment", help="the experiment file, e.g. experiments/asymmetry.yaml")
    p.add_argument("--out", required=True, help="the sweep folder (one sub-folder per point)")
    p.add_argument("--scale", help="the file's override set to use: quick or paper")
    add_override_option(
        p, "override a run config key in every point, e.g. --set train.max_chars=20000"
    )
    p.add_argument("--workers", type=int, metavar="N", help="runs at once (default: the CPU cores)")
    add_threads_option(
        p, "torch and numba threads per run (fixed so that results do not depend on --workers)"
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool on this machine; ray: Ray tasks",
    )
    p.add_argument("--address", help="with --backend ray: the cluster to join (else a local one)")
    p.set_defaults(func=sweep_main)
    return p


def sweep_main(args: argparse.Namespace) -> int:
    """``rpusim sweep``: run it; 0 when every point finished or diverged, 1 otherwise."""
    try:
        rows = sweep(
            args.experiment,
            args.out,
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            scale=args.scale,
            overrides=args.overrides,
            threads=args.threads,
        )
    except (SweepError, ConfigError) as err:
        print(f"rpusim: error: {err}", file=sys.stderr)
        return 2
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(
        f"{args.out}/sweep.csv: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        file=sys.stderr,
    )
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rpusim.sweep ...``: the sweep command on its own."""
    parser = argparse.ArgumentParser(prog="rpusim")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sweep_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
