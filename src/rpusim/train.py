"""The training loop: one run of a character-level LSTM on RPU tiles, from config to run folder.

:func:`train` reads top to bottom: data, model, (resume), then the loop over epochs and
sequences with its evaluation, checkpoint and log. A run folder holds::

    config.yaml     the fully resolved RunConfig (rpu preset expanded to the full tree)
    metrics.csv     one row per evaluation: epoch, chars, train_loss, valid_loss, test_loss,
                    elapsed_s, chars_per_s, lr (losses: cross-entropy per character in nats;
                    lr: the learning rate of the last update before the evaluation)
    summary.json    status, final and best losses, seed, versions, wall time, throughput
    checkpoint.pt   everything needed to continue bit for bit (see below)

Choices, documented here once:

* Evaluation happens every ``train.eval_every_chars`` training characters, at the end of every
  epoch and when ``train.max_chars`` is reached (a whole sequence batch at a time, so the count
  can overshoot by less than ``seq_len * batch_size``). There is no evaluation at 0 chars.
* ``train_loss`` is the mean of the training batches' losses since the previous evaluation
  (each measured before its own update), weighted by characters.
* ``valid_loss`` / ``test_loss`` read the first ``data.eval_chars`` characters of each split
  (all of it when null), in ``train.eval_batch_size`` parallel streams that each start from the
  zero state and carry it across sequences; only whole sequences are read, so slightly fewer
  characters may count. The analog reads stay noisy, as inference on the array would be.
* Evaluation does not move the training's random streams: the model's state (weights, devices,
  generators) is restored after it. The training trajectory is therefore the same whatever the
  evaluation schedule, and a run stopped by ``max_chars`` continues exactly.
* ``chars_per_s`` is training characters per second of training (evaluation excluded) since the
  previous evaluation; ``elapsed_s`` is wall time since the run began, summed over resumes. The
  kernels are compiled (or loaded from numba's cache) on a throwaway copy of the model before
  the clock starts, so the first row's rate does not include the compilation.
* The learning rate follows ``train.lr_schedule`` (:mod:`rpusim.schedule`): a pure function of
  the characters trained before each update step, so a resumed run stays on its schedule.

The checkpoint (written atomically at every evaluation, read with ``weights_only=True``) holds
the model (every tile's weights, device draws and random-generator states, the dropout
generator), the vocabulary, the data position (epoch, next sequence), the carried hidden state,
the metrics so far and the config. A run continued with ``resume=True`` from it is bit-identical
to one that was never interrupted. On resume only ``train.max_chars`` and ``train.epochs`` may
differ from the checkpoint's config (not even they with ``lr_schedule: cosine``, whose decay
spans the run's length).

A NaN or infinite loss or weight stops the run (status ``diverged``); the last good checkpoint is
kept. A run folder that cannot be written (a full disk) stops the run with :class:`RunFailed`,
keeping the last good checkpoint too. A run locks its folder (``.train.lock``): a second
``train`` on it is refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from rpusim.config import DEVICE_NAME, ConfigError, RunConfig
from rpusim.data import BatchStream, DataError, Vocab, load_corpus, slice_corpus, split
from rpusim.io import FolderLock, atomic_write, atomic_write_text, remove_stale_temporaries
from rpusim.model import CharLSTM
from rpusim.schedule import learning_rate, run_chars

METRICS_COLUMNS = (
    "epoch",
    "chars",
    "train_loss",
    "valid_loss",
    "test_loss",
    "elapsed_s",
    "chars_per_s",
    "lr",  # appended last: the columns before it keep their positions
)
CHECKPOINT_FORMAT = "rpusim-train-checkpoint"
CHECKPOINT_VERSION = 1
RESUMABLE_KEYS = ("train.max_chars", "train.epochs")
RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "checkpoint.pt")
LOCK_FILE = ".train.lock"


class TrainError(RuntimeError):
    """A run folder or checkpoint was refused. The message is one line that says what to do."""


class RunFailed(TrainError):
    """A run failed after it started (its folder could not be written); one line, exit 1."""


def build_model(cfg: RunConfig, vocab_size: int) -> CharLSTM:
    """The run's network; the FP twin is the same network with ``rpu: ideal``."""
    return CharLSTM(
        vocab_size,
        cfg.model.hidden,
        cfg.model.layers,
        cfg.rpu,
        seed=cfg.seed,
        dropout=cfg.model.dropout,
        device=cfg.train.device,
    )


def device_problem(device: str, cpu: str) -> str | None:
    """Why torch cannot put tiles on ``device`` (``cpu``, ``cuda`` or ``cuda:N``), in words that
    end with the fix (``cpu``: how the caller's user asks for the CPU); None when it can."""
    if DEVICE_NAME.fullmatch(device) is None:
        return f"{device!r} is not a device: use cpu, cuda or cuda:N"
    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        return (
            f"{device!r} but torch sees no CUDA GPU (a CPU build of torch, or no driver); use {cpu}"
        )
    count, index = torch.cuda.device_count(), torch.device(device).index
    if index is not None and index >= count:
        return f"{device!r} but torch sees {count} GPU(s); use cuda:0 .. cuda:{count - 1} or {cpu}"
    return None


def memory_needed(cfg: RunConfig, vocab_size: int) -> int:
    """A lower bound on the bytes that building the run's model takes: every tile's float32
    weights, plus the float64 draw of the largest tile's initial weights and its float32 copy
    (made before the tile takes them). Device draws, caches and the like come on top."""
    h = cfg.model.hidden
    tiles = [4 * h * ((vocab_size if k == 0 else h) + h + 1) for k in range(cfg.model.layers)]
    tiles.append(vocab_size * (h + 1))
    return 4 * sum(tiles) + 12 * max(tiles)


def _memory_total(device: str) -> int | None:
    """Bytes of memory on ``device``'s side (RAM for cpu); None when unknown."""
    if device != "cpu":
        try:
            return torch.cuda.get_device_properties(torch.device(device)).total_memory
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: RunConfig, vocab_size: int) -> None:
    """Refuse, in one line and before allocating, a model that cannot fit in the memory of its
    device (``model.hidden=20000`` asks for tens of GB: it would die in the middle of an
    allocation with a traceback, or drive the machine into swap)."""
    need, have = memory_needed(cfg, vocab_size), _memory_total(cfg.train.device)
    if have is not None and need > have:
        where = "RAM" if cfg.train.device == "cpu" else f"memory on {cfg.train.device}"
        raise TrainError(
            f"model: LSTM{cfg.model.layers}-{cfg.model.hidden} needs at least {need / 1e9:,.1f} "
            f"GB for its weights, the machine has {have / 1e9:,.1f} GB of {where}; use a smaller "
            "model.hidden or model.layers"
        )


def _check_device(device: str) -> None:
    """Refuse a device that torch cannot use, before any data is read or written."""
    problem = device_problem(device, "train.device=cpu")
    if problem is not None:
        raise TrainError(f"train.device: {problem}")


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into the run folder ``out_dir``; return the summary (also summary.json).

    Args:
        cfg: the resolved run configuration.
        out_dir: the run folder; created if missing. Without ``resume`` it must not hold a run.
        resume: continue from ``out_dir/checkpoint.pt`` (a fresh start when there is none).
        progress: show a tqdm bar (only when stderr is a terminal).
        verbose: print one line per evaluation to stderr.

    Raises:
        DataError, TrainError: one-line messages, before any training starts (also when
            another process trains in ``out_dir``: the folder is locked for the run).
        RunFailed: one line, when the run folder cannot be written after training started.
    """
    t_begin = time.perf_counter()
    if str(out_dir) == "":  # Path("") is ".": it would train into the current folder
        raise TrainError("--out: is empty; give the run folder's path")
    out = Path(out_dir)
    _check_out_dir(out, resume)
    _check_device(cfg.train.device)
    created = not out.exists()
    with FolderLock(
        out / LOCK_FILE,
        "another rpusim train is running in this run folder",
        "wait for it to end or use another --out",
        TrainError,
    ):
        try:
            _check_out_dir(out, resume)  # again, locked: another run may have written it since
            remove_stale_temporaries(out, RUN_FILES)  # of a killed run; no live writer owns them
            return _train(cfg, out, resume, progress, verbose, t_begin)
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                # refused before writing anything: leave no empty folder behind
                with contextlib.suppress(OSError):
                    (out / LOCK_FILE).unlink()
                    out.rmdir()
            raise


def _train(
    cfg: RunConfig, out: Path, resume: bool, progress: bool, verbose: bool, t_begin: float
) -> dict[str, Any]:
    """The body of :func:`train`, in its locked run folder."""
    ckpt_path = out / "checkpoint.pt"

    # -- data: byte vocabulary of the whole corpus, contiguous split of the (sliced) text --------
    data = load_corpus(cfg.data.corpus)
    vocab = Vocab.from_data(data)
    train_ids, valid_ids, test_ids = split(
        vocab.encode(slice_corpus(data, cfg.data.max_bytes)), cfg.data.split
    )
    tc = cfg.train
    stream = BatchStream(train_ids, tc.seq_len, tc.batch_size, name="train")
    chars_per_step = tc.seq_len * tc.batch_size
    chars_per_epoch = stream.chars_per_epoch
    valid_stream = _eval_stream(valid_ids, cfg, "valid")
    test_stream = _eval_stream(test_ids, cfg, "test")

    # -- model: the FP twin is the same network with rpu: ideal -----------------------------------
    check_memory(cfg, vocab.size)
    model = build_model(cfg, vocab.size)

    # -- where we are: a fresh start or the checkpoint's position -------------------------------
    total_chars = run_chars(tc, chars_per_epoch)  # the run's length (the cosine schedule's span)
    epoch, chars, step, elapsed_before = 0, 0, 0, 0.0
    saved_chars = None  # the characters of the last checkpoint written (None: none yet)
    metrics: list[dict[str, float]] = []
    state = model.init_state(tc.batch_size)
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, cfg)
        if ckpt["vocab"] != vocab.to_list():
            raise TrainError(
                f"{ckpt_path}: its vocabulary differs from that of data.corpus "
                f"{cfg.data.corpus!r} (the corpus changed); start a new run"
            )
        try:
            model.load_state_dict(ckpt["model"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise TrainError(f"{ckpt_path}: model state does not fit the config ({err})") from None
        epoch, chars, step = int(ckpt["epoch"]), int(ckpt["chars"]), int(ckpt["step"])
        stream = BatchStream(
            train_ids, tc.seq_len, tc.batch_size, position=int(ckpt["position"]), name="train"
        )
        if any(tuple(t.shape) != tuple(s.shape) for t, s in zip(ckpt["state"], state, strict=True)):
            raise TrainError(
                f"{ckpt_path}: its hidden state has the wrong shape for the config; restore the "
                "checkpoint or start a new run"
            )
        state = (ckpt["state"][0].to(model.device), ckpt["state"][1].to(model.device))
        saved_chars = chars
        metrics = [dict(row) for row in ckpt["metrics"]]
        elapsed_before = float(ckpt["elapsed_s"])
        for row in metrics:  # rows of an rpusim from before the lr column
            row.setdefault("lr", learning_rate(tc, row["chars"] - chars_per_step, total_chars))
        _log(
            verbose,
            f"resuming {out} at epoch {chars / chars_per_epoch:.2f} ({chars:,} chars, step {step})",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")
        _write_metrics(out / "metrics.csv", metrics)  # drops rows written after the checkpoint
    except OSError as err:
        raise TrainError(f"--out {out}: cannot write the run folder ({_why(err)})") from None

    # -- the loop ---------------------------------------------------------------------------------
    _warm_up_kernels(cfg, vocab.size, verbose)
    bar = _progress_bar(progress, total_chars, chars)
    run = {
        "out": out,
        "cfg": cfg,
        "vocab": vocab,
        "metrics": metrics,
        "t_begin": t_begin,
        "elapsed_before": elapsed_before,
        "chars_per_epoch": chars_per_epoch,
    }
    loss_sum, loss_chars, train_time = 0.0, 0, 0.0
    last_eval_chars = chars
    status, message = "completed", ""
    done = tc.max_chars is not None and chars >= tc.max_chars
    try:
        while epoch < tc.epochs and not done:
            if stream.position == 0:
                state = model.init_state(tc.batch_size)  # each epoch starts from the zero state
            for inputs, targets in stream:
                lr = learning_rate(tc, chars, total_chars)
                t0 = time.perf_counter()
                loss, state = model.train_step(inputs, targets, state, lr)
                train_time += time.perf_counter() - t0
                step += 1
                chars += chars_per_step
                if not math.isfinite(loss):
                    status = "diverged"
                    message = (
                        f"diverged at step {step} (epoch {epoch}, {chars:,} chars): "
                        f"training loss is {loss}"
                    )
                    break
                loss_sum += loss * chars_per_step
                loss_chars += chars_per_step
                if bar is not None:
                    bar.update(chars_per_step)
                    bar.set_postfix(loss=f"{loss_sum / loss_chars:.3f}", refresh=False)

                done = tc.max_chars is not None and chars >= tc.max_chars
                epoch_end = stream.position == len(stream)
                due = chars // tc.eval_every_chars > last_eval_chars // tc.eval_every_chars
                if not (done or epoch_end or due):
                    continue

                # evaluate, then checkpoint (only a model with finite weights and losses)
                bad = _first_nonfinite_tile(model)
                valid_loss = test_loss = math.nan
                if bad is None:
                    valid_loss, test_loss = _evaluate(model, valid_stream, test_stream)
                if bad is not None or not (math.isfinite(valid_loss) and math.isfinite(test_loss)):
                    status = "diverged"
                    what = (
                        f"tile {bad} has a non-finite weight"
                        if bad is not None
                        else (f"valid/test loss is {valid_loss}/{test_loss}")
                    )
                    message = f"diverged at step {step} (epoch {epoch}, {chars:,} chars): {what}"
                    break
                row = {
                    "epoch": round(chars / chars_per_epoch, 6),
                    "chars": chars,
                    "train_loss": loss_sum / loss_chars,
                    "valid_loss": valid_loss,
                    "test_loss": test_loss,
                    "elapsed_s": round(elapsed_before + time.perf_counter() - t_begin, 3),
                    "chars_per_s": round(loss_chars / max(train_time, 1e-9), 1),
                    "lr": lr,
                }
                metrics.append(row)
                try:
                    _save_checkpoint(run, model, epoch, stream.position, chars, step, state)
                except (OSError, RuntimeError) as err:  # torch.save: a RuntimeError (disk full)
                    metrics.pop()
                    raise _fail_writing(
                        run, "checkpoint.pt", err, chars, saved_chars, bar
                    ) from None
                saved_chars = chars
                try:
                    _write_metrics(out / "metrics.csv", metrics)
                    _write_summary(run, "running", "", chars)
                except OSError as err:
                    raise _fail_writing(run, "metrics.csv", err, chars, chars, bar) from None
                _log(
                    verbose,
                    f"epoch {row['epoch']:.3f}  chars {chars:,}  train "
                    f"{row['train_loss']:.4f}  valid {valid_loss:.4f}  test {test_loss:.4f}  "
                    f"{row['chars_per_s']:,.0f} chars/s",
                    bar,
                )
                loss_sum, loss_chars, train_time = 0.0, 0, 0.0
                last_eval_chars = chars
                if done:
                    break
            if status == "diverged":
                break
            if not done:
                epoch += 1
    except KeyboardInterrupt:
        _close(bar)
        with contextlib.suppress(OSError):
            _write_summary(run, "interrupted", "interrupted; continue with --resume", chars)
        raise
    _close(bar)
    if status == "diverged":
        if saved_chars is None:
            message += "; no checkpoint exists yet (it diverged before the first evaluation)"
        else:
            message += f"; the last good checkpoint is kept (at {saved_chars:,} chars)"
        _log(True, f"rpusim: {message}")
    try:
        return _write_summary(run, status, message, chars)
    except OSError as err:
        raise _fail_writing(run, "summary.json", err, chars, saved_chars, None) from None


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _eval_stream(ids: torch.Tensor, cfg: RunConfig, name: str) -> BatchStream:
    """Batches over the first ``data.eval_chars`` characters of a valid/test split."""
    if cfg.data.eval_chars is not None:
        ids = ids[: cfg.data.eval_chars + 1]
    seq_len = cfg.train.seq_len
    # Fewer streams when the split is short, so that each stream holds a whole sequence.
    batch = max(1, min(cfg.train.eval_batch_size, ids.numel() // (seq_len + 1)))
    stream = BatchStream(ids, seq_len, batch, name=name)
    if len(stream) == 0:
        raise DataError(
            f"data: the {name} split ({ids.numel()} characters) holds no full sequence; use a "
            "longer corpus, a larger data.eval_chars or a smaller train.seq_len"
        )
    return stream


@torch.no_grad()
def _evaluate(model: CharLSTM, *streams: BatchStream) -> list[float]:
    """Mean cross-entropy (nats/char) on each stream; the model's random streams are restored."""
    snapshot = model.state_dict()
    losses = []
    for stream in streams:
        state = model.init_state(stream.batch_size)
        total, n = 0.0, 0
        for inputs, targets in stream:
            loss_sum, n_chars, state = model.evaluate(inputs, targets, state)
            total += loss_sum
            n += n_chars
        losses.append(total / n)
    model.load_state_dict(snapshot)
    return losses


def _warm_up_kernels(cfg: RunConfig, vocab_size: int, verbose: bool) -> None:
    """Compile the kernels (or load them from numba's cache) before the clock starts: one update
    step and one evaluation of a throwaway copy of the model on two characters (the run's own
    model and random streams are not touched). The first compilation takes ~20 s: say so."""
    if verbose and cfg.train.device == "cpu" and not _numba_cache_filled():
        _log(True, "rpusim: compiling kernels (first run only) ...")
    model = build_model(cfg, vocab_size)
    tc = cfg.train
    for batch in (tc.batch_size, tc.eval_batch_size):
        ids = torch.zeros((2, batch), dtype=torch.long)
        if batch == tc.batch_size:
            model.forward_backward(ids, ids, model.init_state(batch))
            model.apply_update(tc.lr)
        model.evaluate(ids, ids, model.init_state(batch))


def _numba_cache_filled() -> bool:
    """Whether numba's on-disk cache holds the compiled update kernel: ``NUMBA_CACHE_DIR`` when
    set, else ``update/__pycache__`` (where numba puts it when it may write there)."""
    import numba

    from rpusim import update

    place = Path(numba.config.CACHE_DIR or Path(update.__file__).parent / "__pycache__")
    return place.is_dir() and next(place.rglob("numba*apply_pass*.nbi"), None) is not None


def _first_nonfinite_tile(model: CharLSTM) -> int | None:
    for k, tile in enumerate(model.tiles()):
        if not bool(torch.isfinite(tile.get_weights()).all()):
            return k
    return None


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _save_checkpoint(
    run: dict,
    model: CharLSTM,
    epoch: int,
    position: int,
    chars: int,
    step: int,
    state: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Write checkpoint.pt atomically (a kill or a full disk leaves the old one or the new)."""
    out: Path = run["out"]
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "rpusim_version": _rpusim_version(),
        "config": run["cfg"].to_dict(),
        "vocab": run["vocab"].to_list(),
        "model": model.state_dict(),
        "epoch": epoch,
        "position": position,
        "chars": chars,
        "step": step,
        "state": [state[0].detach().cpu().clone(), state[1].detach().cpu().clone()],
        "metrics": [dict(row) for row in run["metrics"]],
        "elapsed_s": run["elapsed_before"] + time.perf_counter() - run["t_begin"],
    }
    atomic_write(out / "checkpoint.pt", lambda tmp: torch.save(ckpt, tmp))


def _fail_writing(
    run: dict, name: str, err: BaseException, chars: int, saved: int | None, bar
) -> RunFailed:
    """The :class:`RunFailed` that stops a run whose folder cannot be written (a full disk, say):
    one line that says which checkpoint is kept (an atomic write keeps the old file). The
    summary records it when it still can be written."""
    _close(bar)
    if isinstance(err, OSError):
        why = err.strerror or type(err).__name__
    else:  # torch's RuntimeError spans lines; its first words are enough
        why = f"{type(err).__name__}: {' '.join(str(err).split())[:100]}"
    kept = (
        f"the last good checkpoint is kept (at {saved:,} chars)"
        if saved is not None
        else "no checkpoint exists yet"
    )
    message = (
        f"--out {run['out']}: cannot write {name} at {chars:,} chars ({why}); {kept}; "
        "free space and continue with --resume"
    )
    with contextlib.suppress(OSError):  # on a full disk this may fail too
        _write_summary(run, "failed", message, chars)
    return RunFailed(message)


def load_checkpoint(path: str | Path, cfg: RunConfig | None = None) -> dict[str, Any]:
    """Read a run's checkpoint (``weights_only=True``); with ``cfg``, check it may continue it.

    Raises :class:`TrainError` (one line) for a missing, truncated, corrupt or foreign file and
    for a config that differs from the checkpoint's in anything but ``RESUMABLE_KEYS``.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint; train a run into this folder first")
    _check_crc(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a torn or foreign file
        raise TrainError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(err).__name__}); "
            "restore it or start a new run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not an rpusim training checkpoint")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise TrainError(
            f"{path}: checkpoint format {ckpt.get('format_version')!r}, this rpusim reads "
            f"{CHECKPOINT_VERSION}; use the rpusim version that wrote it"
        )
    missing = [
        k
        for k in (
            "config",
            "vocab",
            "model",
            "epoch",
            "position",
            "chars",
            "step",
            "state",
            "metrics",
            "elapsed_s",
        )
        if k not in ckpt
    ]
    if missing:
        raise TrainError(f"{path}: checkpoint lacks {', '.join(missing)}; start a new run")
    bad = _bad_field(ckpt)
    if bad:
        raise TrainError(f"{path}: checkpoint field {bad} (damaged); restore it or start a new run")
    if cfg is not None:
        theirs, mine = _flat(_with_defaults(ckpt["config"])), _flat(cfg.to_dict())
        # The cosine schedule spans the run's length: it fixes max_chars and epochs too.
        cosine = cfg.train.lr_schedule == "cosine"
        resumable = () if cosine else RESUMABLE_KEYS
        for key in sorted(set(theirs) | set(mine)):
            if key in resumable or theirs.get(key) == mine.get(key):
                continue
            allowed = (
                "nothing may change: lr_schedule cosine spans the run's length"
                if cosine
                else f"only {' and '.join(RESUMABLE_KEYS)} may change"
            )
            raise TrainError(
                f"{path}: written with {key}={theirs.get(key)!r}, the config gives "
                f"{mine.get(key)!r}; resume with the run's own config ({allowed})"
            )
    return ckpt


def _check_crc(path: Path) -> None:
    """Refuse a checkpoint whose zip entries fail their CRC-32 (a flipped bit on disk).

    torch.load does not check the CRCs that torch.save writes, so a damaged weight would load
    silently and a resumed run would train on from different weights. Reading every entry costs
    about as much as loading it; a file that is no zip is left to torch.load to refuse.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return
    except (OSError, EOFError, zlib.error) as err:
        damaged = f"? ({type(err).__name__})"
    if damaged is not None:
        raise TrainError(
            f"{path}: corrupt checkpoint (entry {damaged} fails its CRC check: the file changed "
            "on disk); restore it from a copy or start a new run"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_field(ckpt: dict[str, Any]) -> str | None:
    """The first field of a loaded checkpoint with the wrong type, in words (None: all fit)."""
    for key in ("epoch", "position", "chars", "step"):
        if not _is_int(ckpt[key]):
            return f"{key} is {_kind(ckpt[key])}, not a count"
    checks = {
        "config": isinstance(ckpt["config"], dict),
        "model": isinstance(ckpt["model"], dict),
        "vocab": isinstance(ckpt["vocab"], list) and all(map(_is_int, ckpt["vocab"])),
        "state": isinstance(ckpt["state"], list | tuple)
        and len(ckpt["state"]) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in ckpt["state"]),
        "metrics": isinstance(ckpt["metrics"], list)
        and all(
            isinstance(row, dict)
            # "lr" may be missing: checkpoints from before schedules lack it (filled on resume)
            and all(isinstance(row.get(c), int | float) for c in METRICS_COLUMNS if c != "lr")
            and isinstance(row.get("lr", 0.0), int | float)
            for row in ckpt["metrics"]
        ),
        "elapsed_s": isinstance(ckpt["elapsed_s"], int | float)
        and not isinstance(ckpt["elapsed_s"], bool),
    }
    for key, ok in checks.items():
        if not ok:
            return f"{key} is not what rpusim writes there ({_kind(ckpt[key])})"
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _with_defaults(config: Any) -> Any:
    """A checkpoint's config with the keys added since it was written at their defaults (a
    checkpoint of an older rpusim then compares equal to its config read today)."""
    try:
        return RunConfig.from_dict(config).to_dict()
    except ConfigError:
        return config  # compared as written: the first differing key is reported


def load_run(run_dir: str | Path) -> tuple[RunConfig, CharLSTM, Vocab, dict[str, Any]]:
    """The config, the model (at its last checkpoint) and the vocabulary of a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"{run_dir}: no such run folder")
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = RunConfig.from_dict(ckpt["config"])
    vocab = Vocab.from_list(ckpt["vocab"])
    _check_device(cfg.train.device)  # the tiles' random streams belong to their device
    check_memory(cfg, vocab.size)
    model = build_model(cfg, vocab.size)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise TrainError(f"{run_dir}/checkpoint.pt: model state is damaged ({err})") from None
    return cfg, model, vocab, ckpt


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def _check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a folder; choose another --out")
    if not resume and (out / "checkpoint.pt").exists():
        raise TrainError(
            f"--out {out}: already holds a run (checkpoint.pt); continue it with --resume or "
            "choose another --out"
        )
    # The nearest existing ancestor must be a writable folder (checked before the data loads).
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TrainError(f"--out {out}: {probe} is not a folder; choose another --out")
    try:
        import tempfile

        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise TrainError(f"--out {out}: cannot write in {probe} ({_why(err)})") from None


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in METRICS_COLUMNS])
    atomic_write_text(path, buf.getvalue())


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (``chars`` as int)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: int(v) if k == "chars" else float(v) for k, v in row.items()} for row in rows]


def _write_summary(run: dict, status: str, message: str, chars: int) -> dict[str, Any]:
    cfg: RunConfig = run["cfg"]
    metrics = run["metrics"]
    wall = run["elapsed_before"] + time.perf_counter() - run["t_begin"]
    final = metrics[-1] if metrics else None
    best = min(metrics, key=lambda r: r["valid_loss"]) if metrics else None
    trained = final["chars"] if final else 0
    # Throughput over the whole run: the per-interval rates weighted by their characters.
    train_s = 0.0
    prev = 0
    for row in metrics:
        train_s += (row["chars"] - prev) / row["chars_per_s"] if row["chars_per_s"] else 0.0
        prev = row["chars"]
    summary = {
        "status": status,
        "message": message,
        "seed": cfg.seed,
        "chars_trained": trained,
        "epochs_trained": final["epoch"] if final else 0.0,
        "final": _pick(final, ("epoch", "chars", "train_loss", "valid_loss", "test_loss")),
        "best": _pick(best, ("epoch", "chars", "train_loss", "valid_loss", "test_loss")),
        "wall_time_s": round(wall, 3),
        "chars_per_s": round(trained / train_s, 1) if train_s > 0 else None,
        "vocab_size": run["vocab"].size,
        "loss_unit": "cross-entropy per character, nats",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "rpusim": _rpusim_version(),
        },
    }
    if status == "diverged":
        summary["diverged_after_chars"] = chars
    atomic_write_text(run["out"] / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pick(row: dict | None, keys: tuple[str, ...]) -> dict | None:
    return None if row is None else {k: row[k] for k in keys}


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _rpusim_version() -> str:
    from rpusim import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# Progress and log
# ---------------------------------------------------------------------------------------------


def _progress_bar(progress: bool, total: float, initial: int):
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(
        total=None if math.isinf(total) else int(total),
        initial=initial,
        unit="char",
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
    )


def _log(verbose: bool, text: str, bar=None) -> None:
    if not verbose:
        return
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def _close(bar) -> None:
    if bar is not None:
        bar.close()
