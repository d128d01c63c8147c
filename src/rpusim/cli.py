"""The ``rpusim`` command line: ``train``, ``sample``, ``config``, ``demo``, ``device``
(``sweep``, ``report`` and ``bench`` plug into COMMANDS from their modules).

    rpusim train --config experiments/lstm2-64wp-rpu.yaml --set train.lr=0.5 --out runs/x
    rpusim train --out runs/x --resume                 # continue (config from runs/x)
    rpusim train --set rpu=ideal --set train.max_chars=20000 --out runs/y   # from the defaults
    rpusim sample runs/x --chars 500 --temperature 0.8 --prime "The "
    rpusim demo --out runs/demo --minutes 5
    rpusim config --set rpu.device.up_down=0.02 > run.yaml   # a complete config to edit
    rpusim config --presets                            # device and tile presets, with sources
    rpusim device fit examples/devices/crosssim_ramp1.csv > device.yaml   # a measured device

Every refused input (config, data, run folder, checkpoint) prints one line
``rpusim: error: ...`` on stderr and exits with status 2; a diverged run exits with status 1, as
does a run that fails after it started (a full disk: one line that says which checkpoint is kept).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rpusim.config import ConfigError, RunConfig, add_override_option, add_threads_option
from rpusim.data import DataError
from rpusim.report import add_report_parser
from rpusim.sweep import add_sweep_parser

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with its default, unless the option has none (None, an
    empty list), is a flag (a bool default) or its text already says it ("(default")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or isinstance(default, bool)
            or default == []
            or default is argparse.SUPPRESS
            or "(default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit status 2) and shows every
    option's default in its help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"rpusim: error: {message} (see '{self.prog} --help')\n")


class UsageError(ValueError):
    """A command-line value was refused (one line)."""


def _out_path(text: str) -> Path:
    """An ``--out`` folder; an empty one is refused (``Path("")`` is the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; give a folder path")
    return Path(text)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one run into a run folder",
        description="Train a character LSTM on RPU tiles (or its FP twin).",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="run config YAML (default: OUT/config.yaml with --resume, else all defaults as "
        "'rpusim config' prints them)",
    )
    add_override_option(
        p, "override a config value by dotted key, e.g. rpu.device.up_down=0.02 (repeatable)"
    )
    p.add_argument("--out", type=_out_path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_threads(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from rpusim.train import train

    if args.config is not None:
        cfg = RunConfig.from_yaml(args.config, args.overrides)
    elif args.resume:
        cfg = RunConfig.from_yaml(args.out / "config.yaml", args.overrides)
    else:  # the defaults, as 'rpusim config' prints them
        cfg = RunConfig.from_dict({}, args.overrides)
    _set_threads(args.threads)
    summary = train(cfg, args.out, resume=args.resume, progress=args.progress)
    if summary["status"] != "completed":
        return EXIT_FAILED
    final = summary["final"] or {}
    if final:
        print(
            f"{args.out}: {summary['chars_trained']:,} chars, train {final['train_loss']:.4f}"
            f"  valid {final['valid_loss']:.4f}  test {final['test_loss']:.4f} nats/char"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def _add_config(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print a fully resolved run config, or every config key with its default",
        description="Print the run config that 'rpusim train' would use (YAML, every key: save "
        "it and edit it), or with --keys a table of every dotted key, its type, default and "
        "meaning. Checks the config on the way: an unknown key or bad value fails in one line.",
    )
    p.add_argument("--config", type=Path, help="run config YAML (default: all defaults)")
    add_override_option(p, "override a config value by dotted key (repeatable)")
    p.add_argument("--keys", action="store_true", help="list every key instead (Markdown table)")
    p.add_argument(
        "--presets",
        action="store_true",
        help="list the device presets (published fits) and tile presets instead (Markdown)",
    )
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from rpusim.config import config_keys

    if args.presets:
        print(presets_markdown(), end="")
        return EXIT_OK
    if args.keys:
        print("| key | type | default | meaning |")
        print("|---|---|---|---|")
        for row in config_keys():
            print(f"| `{row['key']}` | {row['type']} | `{row['default']}` | {row['description']} |")
        return EXIT_OK
    if args.config is not None:
        cfg = RunConfig.from_yaml(args.config, args.overrides)
    else:
        cfg = RunConfig.from_dict({}, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return EXIT_OK


#: What each tile preset (``rpu: NAME``, :data:`rpusim.config.PRESETS`) is.
TILE_PRESET_NOTES = {
    "rpu_baseline": "the defaults: the RPU baseline of Gokmen, Rasch & Haensch (2018), a "
    "constant-step device (1,200 states, 30 % d2d and c2c spread) behind 7-bit DAC, 9-bit ADC "
    "and read noise 0.06",
    "rpu_baseline_aihwkit": "the RPU baseline with the reference simulator's (aihwkit 1.2) "
    "conventions where rpusim's differ: update.um_clip d_only, update.pair_order reverse",
    "ideal": "the floating-point twin: exact reads (no converters, no noise, no bounds) and the "
    "exact update W <- W - lr d x^T (update.mode float)",
}


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def device_preset_rows() -> list[dict[str, str]]:
    """One row per device preset: its model, key numbers, source and what is not modelled."""
    from rpusim.devices import MODELS
    from rpusim.devices.base import PulsedDeviceConfig
    from rpusim.devices.presets import DEVICE_PRESETS, NOT_MODELLED, SOURCES

    base = set(PulsedDeviceConfig.model_fields)
    rows = []
    for name, values in DEVICE_PRESETS.items():
        cfg = MODELS[values["kind"]].Config(**values)
        own = [f"{k} {_fmt(v)}" for k, v in values.items() if k not in base and k != "kind"]
        rows.append(
            {
                "preset": name,
                "kind": cfg.kind,
                "dw_min": _fmt(cfg.dw_min),
                "range": f"{_fmt(cfg.w_min)} .. {_fmt(cfg.w_max)}",
                "states": f"{(cfg.w_max - cfg.w_min) / cfg.dw_min:,.0f}",
                "c2c": _fmt(cfg.dw_min_std),
                "up_down": _fmt(cfg.up_down),
                "d2d": f"{_fmt(cfg.dw_min_dtod)} / {_fmt(cfg.w_max_dtod)}",
                "model": ", ".join(own) or "–",
                "source": SOURCES[name],
                "not_modelled": NOT_MODELLED.get(name, "–"),
            }
        )
    return rows


def presets_markdown() -> str:
    """``rpusim config --presets``: the device presets and the tile presets, as Markdown."""
    from rpusim.config import PRESETS

    out = [
        "Device presets (published fits): --set rpu.device.preset=NAME",
        "",
        "| preset | kind | dw_min | w_min .. w_max | states | c2c (dw_min_std) | up_down "
        "| d2d (step / bound) | model parameters | source | not modelled |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in device_preset_rows():
        out.append(
            f"| `{r['preset']}` | {r['kind']} | {r['dw_min']} | {r['range']} | {r['states']} "
            f"| {r['c2c']} | {r['up_down']} | {r['d2d']} | {r['model']} | {r['source']} "
            f"| {r['not_modelled']} |"
        )
    out += [
        "",
        "states: (w_max - w_min) / dw_min. Tile presets: --set rpu=NAME",
        "",
        "| preset | what it is |",
        "|---|---|",
    ]
    for name in PRESETS:
        out.append(f"| `{name}` | {TILE_PRESET_NOTES.get(name, '')} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------------------------


def _add_device(sub) -> None:
    p = sub.add_parser(
        "device",
        help="device tools: fit a piecewise-step device to a measured pulse response",
        description="Tools for device models (docs/model.md section 4).",
    )
    verbs = p.add_subparsers(dest="device_command", metavar="VERB", required=True)
    f = verbs.add_parser(
        "fit",
        help="fit piecewise_step nodes to a measured pulse-response table",
        description="Fit a piecewise-step device (rpu.device) to a pulse-response table: CSV "
        "rows of pulse number, value read after the pulse (conductance, current or weight) "
        "and direction (up/down), optionally under a header such as pulse,value,direction. "
        "Writes the run-config YAML of the fitted device.",
    )
    f.add_argument("table", type=Path, metavar="FILE.csv", help="the pulse-response table")
    f.add_argument("--nodes", type=int, default=8, help="nodes per direction (1 to 64)")
    f.add_argument(
        "--w-min", type=float, default=-1.0, help="weight the smallest measured value maps to"
    )
    f.add_argument(
        "--w-max", type=float, default=1.0, help="weight the largest measured value maps to"
    )
    f.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="write here (else stdout)"
    )
    f.set_defaults(func=_cmd_device_fit)


def _cmd_device_fit(args: argparse.Namespace) -> int:
    from rpusim.devices.fit import FitError, fit_table, read_table, to_yaml

    try:
        table = read_table(args.table)
        fit = fit_table(
            table, n_nodes=args.nodes, w_min=args.w_min, w_max=args.w_max, where=str(args.table)
        )
    except FitError as err:
        raise UsageError(str(err)) from None
    text = to_yaml(fit, args.table.name, args.nodes)
    if args.out is None:
        print(text, end="")
    else:
        from rpusim.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"{args.out}: piecewise_step, {args.nodes} nodes, dw_min {fit.dw_min:.4g}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a run's checkpoint",
        description="Print N characters (bytes) generated by a trained run; the "
        "prime is read first and not echoed.",
    )
    p.add_argument("run_dir", type=Path, metavar="DIR", help="run folder with checkpoint.pt")
    p.add_argument("--chars", type=int, default=500, metavar="N", help="characters to generate")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="softmax temperature (0: always the most likely character)",
    )
    p.add_argument(
        "--prime",
        default=None,
        metavar="TEXT",
        help="text read before generating (default: a newline)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampling draws")
    _add_threads(p)
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from rpusim.train import load_run

    if args.chars < 0:
        raise UsageError(f"--chars {args.chars}: give a number >= 0")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature}: give a number >= 0")
    if not 0 <= args.seed < 2**64:  # torch's generators take 64-bit seeds
        raise UsageError(f"--seed {args.seed}: give a number from 0 to 2**64 - 1")
    _set_threads(args.threads)
    _, model, vocab, _ = load_run(args.run_dir)
    if args.prime is None:
        prime = b"\n" if ord("\n") in vocab.symbols else bytes([vocab.symbols[0]])
    else:
        prime = args.prime.encode("utf-8")
        if not prime:
            raise UsageError("--prime: give at least one character")
        unknown = sorted({b for b in prime if b not in vocab.symbols})
        if unknown:
            raise UsageError(
                f"--prime: byte(s) {bytes(unknown)!r} are not in the run's "
                f"vocabulary of {vocab.size} symbols"
            )
    ids = vocab.encode(prime).tolist()
    gen = torch.Generator().manual_seed(args.seed)
    out = vocab.decode(model.sample(ids, args.chars, args.temperature, generator=gen))
    sys.stdout.buffer.write(out + b"\n")
    sys.stdout.flush()
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------

# LSTM2-64WP as in experiments/lstm2-64wp-{fp,rpu}.yaml; valid/test on their first 20k chars.
DEMO_BASE = {
    "seed": 0,
    "data": {"corpus": "warpeace", "eval_chars": 20_000},
    "model": {"layers": 2, "hidden": 64},
    "train": {"batch_size": 1, "seq_len": 100, "epochs": 10},
}
DEMO_RUNS = {"fp": ("FP (rpu: ideal)", "ideal", 5.0), "rpu": ("RPU baseline", "rpu_baseline", 1.0)}
# Training speed of LSTM2-64 at batch 1 on one core of the 2-core development machine, rounded
# down (measured 76k and 18k chars/s; it varies about 2x with other load).
DEMO_CHARS_PER_S = {"fp": 40_000, "rpu": 12_000}


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train LSTM2-64WP in floating point and on the RPU baseline, compare",
        description="Train the FP twin and the RPU baseline LSTM2-64WP on the same characters of "
        "War and Peace (both for the same number of characters, chosen so that the two runs "
        "take about --minutes in total), print both losses and plot both validation curves.",
    )
    p.add_argument("--out", type=_out_path, default=Path("runs/demo"), help="folder for both runs")
    p.add_argument("--minutes", type=float, default=5.0, help="total training time to aim for")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_threads(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rpusim.train import read_metrics, train

    if not math.isfinite(args.minutes) or args.minutes <= 0:
        raise UsageError(f"--minutes {args.minutes}: give a positive number")
    _set_threads(args.threads)
    t0 = time.perf_counter()
    max_chars = _demo_chars(args.minutes)
    every = max(100, max_chars // 10 // 100 * 100)
    print(
        f"rpusim demo: LSTM2-64WP on War and Peace, {max_chars:,} training characters per "
        f"run (FP, then RPU baseline), seed 0, into {args.out}",
        flush=True,
    )
    summaries, curves = {}, {}
    for key, (label, preset, lr) in DEMO_RUNS.items():
        cfg = RunConfig.from_dict(
            DEMO_BASE,
            [
                f"rpu={preset}",
                f"train.lr={lr}",
                f"train.max_chars={max_chars}",
                f"train.eval_every_chars={every}",
            ],
        )
        print(f"training {label} (lr {lr}) ...", flush=True)
        # A line per evaluation on stderr (and a bar on a terminal), as 'rpusim train' shows.
        summaries[key] = train(cfg, args.out / key, resume=True, progress=args.progress)
        curves[key] = read_metrics(args.out / key / "metrics.csv")

    print()
    print(f"{'run':<18}{'chars':>10}{'train':>9}{'valid':>9}{'test':>9}{'chars/s':>10}")
    for key, (label, _, _) in DEMO_RUNS.items():
        s = summaries[key]
        f = s["final"] or {}
        loss = [f.get(k, math.nan) for k in ("train_loss", "valid_loss", "test_loss")]
        rate = s["chars_per_s"] or math.nan
        print(
            f"{label:<18}{s['chars_trained']:>10,}{loss[0]:>9.4f}{loss[1]:>9.4f}"
            f"{loss[2]:>9.4f}{rate:>10,.0f}"
        )
        if s["status"] != "completed":
            print(f"  {label}: {s['status']}: {s['message']}")
    print("losses: cross-entropy per character in nats (ln 87 = 4.47 for a uniform guess)")
    png = args.out / "validation.png"
    _plot_curves(curves, png)
    print(
        f"figure: {png}; runs: {args.out / 'fp'}, {args.out / 'rpu'} "
        f"({time.perf_counter() - t0:.0f} s in all)"
    )
    return EXIT_OK if all(s["status"] == "completed" for s in summaries.values()) else EXIT_FAILED


def _demo_chars(minutes: float) -> int:
    """Training characters per run so that FP + RPU take about ``minutes`` on a 2-core machine.

    Fixed nominal rates rather than a timing of this machine, so that the demo's numbers are
    the same everywhere (a slower machine takes longer).
    """
    seconds = 0.9 * minutes * 60  # the rest: loading, compiling the kernels, evaluation
    chars = seconds / sum(1.0 / rate for rate in DEMO_CHARS_PER_S.values())
    return max(10_000, int(chars) // 10_000 * 10_000)


def _plot_curves(curves: dict[str, list[dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rpusim.io import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, (label, _, lr) in DEMO_RUNS.items():
        rows = curves[key]
        ax.plot(
            [r["chars"] for r in rows],
            [r["valid_loss"] for r in rows],
            marker="o",
            markersize=3,
            label=f"{label}, lr {lr}",
        )
    ax.set_xlabel("training characters")
    ax.set_ylabel("validation cross-entropy (nats/char)")
    ax.set_title("LSTM2-64WP, War and Peace (valid: first 20k chars)")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def _add_threads(p: argparse.ArgumentParser) -> None:
    add_threads_option(
        p,
        "torch and numba threads (an LSTM at batch 1 gains little from more, and a run's bits "
        "depend on it; as in 'rpusim sweep')",
    )


def _set_threads(threads: int) -> None:
    """Fix the threads of torch and of the pulsed-update kernels (results depend on them)."""
    if threads < 1:
        raise UsageError(f"--threads {threads}: give a number >= 1")
    import torch

    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


# Each verb adds its subparser (and sets ``func``); sweep/report/bench plug in here.
def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="training throughput against torch's own nn.LSTM, measured in one run",
        description="Characters/s of torch nn.LSTM, rpusim's FP twin and the RPU baseline "
        "(2 layers x 64/128/256, batch 1 and 32, sequences of 100) and their ratio to torch.",
    )
    p.add_argument("--quick", action="store_true", help="only the 128-unit rows (under a minute)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write JSON")
    p.add_argument(
        "--device",
        default="cpu",
        metavar="DEV",
        help="cpu or cuda[:N]: where all three implementations run",
    )
    p.add_argument(
        "--devices",
        action="store_true",
        help="also a row per device model (rpu:<kind>: the RPU baseline on that model)",
    )
    p.add_argument(
        "--algorithms",
        action="store_true",
        help="also a row per learning algorithm at 2x128 (alg:<name>: the RPU baseline "
        "learning with rpu.algorithm=<name>)",
    )
    _add_threads(p)
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from rpusim import bench
    from rpusim.train import device_problem

    problem = device_problem(args.device, "--device cpu")
    if problem is not None:
        return _fail(f"--device {problem}")
    _set_threads(args.threads)
    bench.main(
        quick=args.quick,
        json_path=args.json,
        device=args.device,
        devices=args.devices,
        algorithms=args.algorithms,
    )
    return EXIT_OK


COMMANDS: dict[str, Callable] = {
    "train": _add_train,
    "sample": _add_sample,
    "config": _add_config,
    "demo": _add_demo,
    "sweep": add_sweep_parser,
    "report": add_report_parser,
    "bench": _add_bench,
    "device": _add_device,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rpusim",
        description="Train LSTMs on simulated resistive cross-point "
        "arrays (RPU tiles): Gokmen, Rasch & Haensch 2018.",
    )
    from rpusim import __version__

    parser.add_argument("--version", action="version", version=f"rpusim {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 run failed, 2 refused input)."""
    from rpusim.train import RunFailed, TrainError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunFailed as err:  # failed after it started (e.g. a full disk): status 1
        _fail(str(err))
        return EXIT_FAILED
    except (ConfigError, DataError, TrainError, UsageError) as err:
        return _fail(str(err))
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return _fail(f"{where}{err.strerror or type(err).__name__}")
    except KeyboardInterrupt:
        print("rpusim: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"rpusim: error: {line}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
