"""Issue #15, what an adversarial pass broke: each attack reproduced at a small size, so that it
stays fixed. Hangs run under an alarm, memory blow-ups under an address-space limit."""

import contextlib
import errno
import math
import os
import signal
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import rpusim.sweep as sweep_module
from rpusim.cli import main
from rpusim.config import ConfigError, RunConfig, _Section, config_keys
from rpusim.data import DataError, load_corpus
from rpusim.io import FolderLock
from rpusim.model import CharLSTM
from rpusim.sweep import SweepError, sweep
from rpusim.train import LOCK_FILE, TrainError, load_checkpoint, train

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {
    "seed": 1,
    "data": {"corpus": "warpeace", "max_bytes": 30_000, "eval_chars": 1_000},
    "model": {"layers": 1, "hidden": 8},
    "train": {"lr": 1.0, "seq_len": 50, "max_chars": 1_000, "eval_every_chars": 500},
    "rpu": "ideal",
}

pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def deadline(seconds):
    """Fail (rather than hang the suite) when the block takes longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    saved = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, saved)


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc, err, *fragments, status=2):
    assert rc == status, err
    assert "Traceback" not in err
    # the error is the only line but for a run's progress log ("resuming ...", "epoch ...")
    lines = [x for x in err.strip().splitlines() if not x.startswith(("resuming ", "epoch "))]
    assert len(lines) == 1 and lines[0].startswith("rpusim: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run(tmp_path):
    """A finished tiny run (checkpoint at 1,000 chars) and its config file."""
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    out = tmp_path / "run"
    train(RunConfig.from_yaml(cfg), out, progress=False, verbose=False)
    return out, cfg


# ---------------------------------------------------------------------------------------------
# Silent wrong numbers
# ---------------------------------------------------------------------------------------------


def flip_a_weight_byte(path):
    """Flip one byte in the middle of the largest tensor of a checkpoint (its CRC then fails)."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    assert info.compress_type == zipfile.ZIP_STORED
    blob = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(blob[info.header_offset + k : info.header_offset + k + 2], "little")
        for k in (26, 28)
    )
    start = info.header_offset + 30 + name_len + extra_len
    blob[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    return info.filename


def test_a_flipped_byte_in_a_checkpoint_is_refused_naming_the_entry(run, capsys):
    out, cfg = run
    entry = flip_a_weight_byte(out / "checkpoint.pt")
    with pytest.raises(TrainError, match=f"corrupt checkpoint \\(entry {entry} fails its CRC"):
        load_checkpoint(out / "checkpoint.pt")
    one_line(*cli(["sample", out, "--chars", "5"], capsys)[::2], entry, "restore it")
    args = ["train", "--out", out, "--resume", "--set", "train.max_chars=2000"]
    one_line(*cli(args, capsys)[::2], "corrupt checkpoint")


@pytest.mark.parametrize(
    "setting",
    [
        "rpu.device.dw_min=.inf",
        "rpu.forward.out_noise=.inf",
        "rpu.device.w_max=.nan",
        "data.split=[.nan, 0.5, 0.5]",
        "train.lr=-.inf",
    ],
)
def test_non_finite_floats_are_refused_in_one_line(setting, tmp_path, capsys):
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key}.*give a finite number"):
        RunConfig.from_dict({}, [setting])
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    rc, _, err = cli(["train", "--config", cfg, "--out", tmp_path / "r", "--set", setting], capsys)
    one_line(rc, err, key)
    assert not (tmp_path / "r").exists()


def test_every_float_field_of_every_section_refuses_inf_and_nan():
    floats = [row["key"] for row in config_keys() if "float" in row["type"]]
    assert "rpu.device.dw_min" in floats and "model.dropout" in floats
    for key in floats:
        for bad in (".inf", ".nan"):
            with pytest.raises(ConfigError, match=f"^{key}"):
                RunConfig.from_dict({}, [f"{key}={bad}"])
    assert RunConfig.from_dict({}, ["rpu.device.w_max=null"]).rpu.device.w_max is None

    class NewSection(_Section):  # a section added later inherits the rule
        x: float = 1.0

    with pytest.raises(ValueError, match="finite"):
        NewSection(x=math.inf)


# ---------------------------------------------------------------------------------------------
# Output outside the folder the user named
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/abs/path/x", "../../x", ".hidden", "a/b"])
def test_a_sweep_axis_named_like_a_path_is_refused(tmp_path, name, capsys):
    exp = write_yaml(
        tmp_path / "exp.yaml",
        {"base": TINY, "grid": {name: {"keys": ["train.lr"], "values": [0.5]}}},
    )
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(SweepError, match="grid axis name .* names the run folders"):
        sweep(exp, out, workers=1, log=None)
    assert main(["sweep", str(exp), "--out", str(out)]) == 2
    one_line(2, capsys.readouterr().err, "grid axis name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # nothing written at all


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(cfg), "--out", ""])
    assert exc.value.code == 2
    one_line(2, capsys.readouterr().err, "--out")
    with pytest.raises(TrainError, match="--out: is empty"):
        train(RunConfig.from_yaml(cfg), "", progress=False, verbose=False)
    exp = write_yaml(tmp_path / "exp.yaml", {"base": TINY})
    one_line(*cli(["sweep", exp, "--out", ""], capsys)[::2], "--out: is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "run.yaml"]


# ---------------------------------------------------------------------------------------------
# Processes that outlive their parent
# ---------------------------------------------------------------------------------------------


def alive(pid):
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_sweep_kills_its_workers(tmp_path):
    long = {"max_chars": 10**7, "epochs": 1000, "eval_every_chars": 500}  # minutes of training
    base = {**TINY, "train": {**TINY["train"], **long}}
    exp = write_yaml(tmp_path / "exp.yaml", {"base": base, "seeds": [0, 1, 2]})
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpusim", "sweep", str(exp), "--out", str(out), "--workers", "1"],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        lock = out / "base_seed=0" / LOCK_FILE
        end = time.monotonic() + 120
        while worker is None:  # the worker's train writes its pid into the run's lock
            assert proc.poll() is None and time.monotonic() < end, "no worker started"
            with contextlib.suppress(OSError, ValueError, IndexError):
                worker = int(lock.read_text().split()[1])
            time.sleep(0.05)
        assert worker != proc.pid and alive(worker)
        proc.kill()
        proc.wait(timeout=30)
        end = time.monotonic() + 30
        while alive(worker) and time.monotonic() < end:
            time.sleep(0.05)
        assert not alive(worker), "the worker outlived its sweep"
    finally:
        if proc.poll() is None:
            proc.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert not (out / "base_seed=1").exists()  # and it did not go on to the next point


def sigterm_runner(closed):
    """A sweep runner that receives SIGTERM while its points run."""

    def runner(todo, out, workers, threads, address):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises in here
            yield from ()
        finally:
            closed.append(True)

    return runner


def test_sigterm_stops_a_sweep_through_its_cleanup(tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(sweep_module, "_run_local", sigterm_runner(closed))
    exp = write_yaml(tmp_path / "exp.yaml", {"base": TINY})
    before = signal.getsignal(signal.SIGTERM)
    with deadline(20), pytest.raises(SystemExit) as exc:
        sweep(exp, tmp_path / "out", workers=1, log=None)
    assert exc.value.code == 128 + signal.SIGTERM and closed == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the sweep's only


def test_sigterm_during_ray_init_shuts_the_local_cluster_down(tmp_path, monkeypatch):
    # A stand-in for ray: SIGTERM arrives while the local cluster starts.
    calls = []
    fake = types.ModuleType("ray")

    def init(**kwargs):
        calls.append("init")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    fake.init, fake.shutdown = init, lambda: calls.append("shutdown")
    monkeypatch.setitem(sys.modules, "ray", fake)
    exp = write_yaml(tmp_path / "exp.yaml", {"base": TINY})
    with deadline(20), pytest.raises(SystemExit):
        sweep(exp, tmp_path / "out", workers=1, backend="ray", log=None)
    assert calls == ["init", "shutdown"]


def test_a_second_train_on_a_locked_run_folder_is_refused(run, capsys):
    out, _ = run
    before = (out / "checkpoint.pt").read_bytes()
    with FolderLock(out / LOCK_FILE, "busy", "wait", TrainError):
        rc, _, err = cli(
            ["train", "--out", out, "--resume", "--set", "train.max_chars=2000"], capsys
        )
        one_line(rc, err, "another rpusim train is running", f"pid {os.getpid()}")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_a_run_removes_its_stale_temporaries(run, capsys):
    out, _ = run
    stale = [out / ".checkpoint.pt.k1ll3d.tmp", out / ".metrics.csv.x.tmp"]
    for path in stale:
        path.write_bytes(b"torn")
    (out / ".notes.tmp").write_text("not ours")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and (out / ".notes.tmp").exists()


# ---------------------------------------------------------------------------------------------
# Hangs and memory blow-ups from one bad value
# ---------------------------------------------------------------------------------------------


def test_a_fifo_or_device_as_corpus_or_config_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    with deadline(20):
        for corpus in (fifo, "/dev/zero"):
            with pytest.raises(DataError, match="not a regular file"):
                load_corpus(corpus)
        for config in (fifo, "/dev/zero"):
            rc, _, err = cli(["train", "--config", config, "--out", tmp_path / "r"], capsys)
            one_line(rc, err, str(config), "not a regular file")
        rc, _, err = cli(
            ["train", "--config", cfg, "--out", tmp_path / "r", "--set", f"data.corpus={fifo}"],
            capsys,
        )
        one_line(rc, err, "data.corpus", "not a regular file")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (10 * 2**20 + 1))
    one_line(*cli(["config", "--config", big], capsys)[::2], "more than")


def billion_laughs(levels=9):
    """YAML for 9**levels strings in a few hundred bytes: each level is 9 aliases of the last."""
    text = "&a0 [" + ", ".join(["lol"] * 9) + "]"
    for k in range(1, levels):
        text = f"&a{k} [{text}, " + ", ".join([f"*a{k - 1}"] * 8) + "]"
    return text


def test_a_billion_laughs_config_fails_in_one_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"model: {{hidden: {billion_laughs()}}}\n")
    with deadline(20):
        rc, _, err = cli(["config", "--config", path], capsys)
        line = one_line(rc, err, "model.hidden: expected int, got list")
        rc, _, err = cli(["config", "--set", f"data.split={billion_laughs(8)}"], capsys)
        one_line(rc, err, "data")
    assert len(line) < 200
    assert len(err) < 300


@pytest.mark.parametrize("hidden", ["20000", "1e9"])
def test_a_model_too_large_for_the_machine_is_refused_before_allocating(hidden, tmp_path):
    # Under an address-space limit of 3 GB: an attempt to allocate would fail with MemoryError.
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    script = (
        "import resource, sys; from rpusim.cli import main; "
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY)); "
        f"sys.exit(main(['train', '--config', {str(cfg)!r}, '--out', {str(tmp_path / 'r')!r}, "
        f"'--set', 'model.hidden={hidden}']))"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_line(res.returncode, res.stderr, "model: LSTM1-", "needs at least", "GB of RAM")
    assert "model.hidden" in line and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# Tracebacks where one line is promised
# ---------------------------------------------------------------------------------------------


def test_yaml_nested_100k_deep_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("model: {hidden: " + "[" * 100_000 + "]" * 100_000 + "}\n")
    with deadline(60):
        one_line(*cli(["config", "--config", path], capsys)[::2], "nested too deeply")
        deep = "[" * 100_000 + "]" * 100_000
        one_line(*cli(["config", "--set", f"model.hidden={deep}"], capsys)[::2], "model.hidden")


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("file write failed\n at")],
)
def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(run, capsys, monkeypatch, failure):
    out, _ = run
    good = (out / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a part of the file is written, then the disk is full
        raise failure

    monkeypatch.setattr(torch, "save", save_then_fail)
    args = ["train", "--out", out, "--resume", "--no-progress", "--set", "train.max_chars=2000"]
    rc, _, err = cli(args, capsys)
    one_line(
        rc,
        err,
        "cannot write checkpoint.pt at 1,500 chars",
        "last good checkpoint is kept (at 1,000 chars)",
        status=1,
    )
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_before_the_first_checkpoint_says_none_exists(tmp_path, capsys, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    cfg = write_yaml(tmp_path / "run.yaml", TINY)
    rc, _, err = cli(["train", "--config", cfg, "--out", tmp_path / "r", "--no-progress"], capsys)
    one_line(rc, err, "No space left on device", "no checkpoint exists yet", status=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("epoch", "abc"), ("state", None), ("position", -1), ("metrics", [None]), ("vocab", "ab")],
)
def test_a_checkpoint_with_wrong_field_types_is_one_line(run, capsys, field, value):
    out, _ = run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt[field] = value
    torch.save(ckpt, out / "checkpoint.pt")
    args = ["train", "--out", out, "--resume", "--set", "train.max_chars=2000"]
    one_line(*cli(args, capsys)[::2], f"checkpoint field {field}")
    one_line(*cli(["sample", out, "--chars", "5"], capsys)[::2], field)


def test_a_hidden_state_of_the_wrong_shape_is_one_line(run, capsys):
    out, _ = run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["state"] = [torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)]
    torch.save(ckpt, out / "checkpoint.pt")
    args = ["train", "--out", out, "--resume", "--set", "train.max_chars=2000"]
    one_line(*cli(args, capsys)[::2], "hidden state has the wrong shape")


def test_sample_refuses_a_seed_beyond_64_bits(run, capsysbinary):
    out, _ = run
    assert main(["sample", str(out), "--seed", str(2**70)]) == 2
    err = capsysbinary.readouterr().err.decode()
    one_line(2, err, "--seed", "2**64 - 1")
    assert main(["sample", str(out), "--seed", str(2**64 - 1), "--chars", "3"]) == 0


def test_duplicate_yaml_keys_are_refused_naming_the_key(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0\n  seq_len: 50\n  lr: 2.0\n")
    one_line(*cli(["config", "--config", path], capsys)[::2], "line 4", "'lr' appears twice")
    exp = tmp_path / "exp.yaml"
    exp.write_text("base: {}\nseeds: [0]\nseeds: [1]\n")
    one_line(*cli(["sweep", exp, "--out", tmp_path / "o"], capsys)[::2], "'seeds' appears twice")
    one_line(*cli(["config", "--set", "train={lr: 1, lr: 2}"], capsys)[::2], "'lr' appears twice")
    path.write_text("base: &b {lr: 1.0}\ntrain:\n  <<: *b\n  lr: 2.0\n")  # a merge may override
    with pytest.raises(ConfigError, match="base: unknown key"):
        RunConfig.from_yaml(path)


def test_a_run_diverging_before_its_first_checkpoint_says_none_exists(tmp_path, monkeypatch):
    real_step = CharLSTM.train_step

    def nan_at_3(self, inputs, targets, state, lr):
        loss, state = real_step(self, inputs, targets, state, lr)
        return math.nan, state

    monkeypatch.setattr(CharLSTM, "train_step", nan_at_3)
    summary = train(RunConfig.from_dict(TINY), tmp_path, progress=False, verbose=False)
    assert summary["status"] == "diverged"
    assert "no checkpoint exists yet" in summary["message"]
    assert "last good checkpoint" not in summary["message"]


def test_a_billion_laughs_in_an_experiment_fails_in_one_short_line(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    bomb = billion_laughs()
    for text in (
        f"base: {{}}\ngrid: {{train.lr: [{bomb}]}}\n",
        f"name: {bomb}\nbase: {{}}\n",
        f"base_config: {bomb}\n",
        f"base: {{}}\nvariants: {{fp: {{train.lr: {bomb}}}}}\n",
    ):
        exp.write_text(text)
        with deadline(20):
            rc, _, err = cli(["sweep", exp, "--out", tmp_path / "o"], capsys)
        one_line(rc, err)
        assert len(err) < 400
