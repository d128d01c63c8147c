"""The command line: exit status 2 with one line for every refused input, sample, kill + resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rpusim.cli import main
from rpusim.config import RunConfig
from rpusim.train import _flat, load_checkpoint, read_metrics

SRC = str(Path(__file__).resolve().parents[1] / "src")

TINY = {
    "seed": 1,
    "data": {"corpus": "warpeace", "max_bytes": 30_000, "eval_chars": 1_000},
    "model": {"layers": 1, "hidden": 8},
    "train": {"lr": 1.0, "seq_len": 50, "max_chars": 1_000, "eval_every_chars": 500},
    "rpu": "ideal",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(path, **sections):
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rpusim: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_python_m_rpusim_help():
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run(
        [sys.executable, "-m", "rpusim", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0
    for verb in ("train", "sample", "demo"):
        assert verb in res.stdout


def test_train_then_sample_prints_n_chars(tmp_path, capsysbinary):
    cfg = write_config(tmp_path / "run.yaml")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert [r["chars"] for r in read_metrics(tmp_path / "run/metrics.csv")] == [500, 1000]
    capsysbinary.readouterr()

    sample = ["sample", str(tmp_path / "run"), "--chars", "37", "--temperature", "0.8"]
    sample += ["--prime", "The ", "--seed", "5"]
    assert main(sample) == 0
    out = capsysbinary.readouterr().out
    assert out.endswith(b"\n") and len(out) == 37 + 1
    assert main(sample) == 0
    assert capsysbinary.readouterr().out == out  # same seed, same text


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "train.lrr=0.5"], ["train.lrr: unknown key", "did you mean 'lr'?"]),
        (["--set", "rpu.device.up_dwn=0.02"], ["rpu.device.up_dwn", "did you mean 'up_down'?"]),
        (["--set", "train.batch_size=two"], ["train.batch_size: expected int, got str"]),
        (["--set", "train.seq_len=1.5"], ["train.seq_len: expected int, got float"]),
        (["--set", "rpu=idael"], ["rpu.preset: 'idael' is unknown", "did you mean 'ideal'?"]),
        (["--set", "train.lr"], ["expected key=value"]),
        (["--set", "data.corpus=warpiece"], ["data.corpus", "did you mean 'warpeace'?"]),
        (["--set", "data.corpus=no/such/file.txt"], ["data.corpus: no such file"]),
    ],
)
def test_train_refuses_bad_config_in_one_line(tmp_path, capsys, args, fragments):
    cfg = write_config(tmp_path / "run.yaml")
    rc, _, err = run_cli(["train", "--config", cfg, "--out", tmp_path / "run", *args], capsys)
    assert_one_line_error(rc, err, *fragments)


def test_train_refuses_unknown_key_in_yaml(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", train={"eval_evry_chars": 10})
    rc, _, err = run_cli(["train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, "train.eval_evry_chars", "did you mean 'eval_every_chars'?")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["is empty"]),
        (b"too short for a sequence of fifty characters\n", ["split has", "characters"]),
    ],
)
def test_train_refuses_empty_or_short_corpus(tmp_path, capsys, content, fragments):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    cfg = write_config(tmp_path / "run.yaml", data={"corpus": str(corpus), "max_bytes": None})
    rc, _, err = run_cli(["train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(rc, err, "data", *fragments)


def test_train_refuses_missing_config_and_unwritable_out(tmp_path, capsys):
    rc, _, err = run_cli(
        ["train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "r"], capsys
    )
    assert_one_line_error(rc, err, "no such config file")

    cfg = write_config(tmp_path / "run.yaml")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, _, err = run_cli(["train", "--config", cfg, "--out", blocker / "run"], capsys)
    assert_one_line_error(rc, err, "--out", "not a folder")

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        rc, _, err = run_cli(["train", "--config", cfg, "--out", locked / "run"], capsys)
        assert_one_line_error(rc, err, "--out", "cannot write")


def test_bad_checkpoint_and_missing_run_folder_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    rc, _, err = run_cli(["sample", run, "--chars", "5"], capsys)
    assert_one_line_error(rc, err, "checkpoint", "corrupt")
    rc, _, err = run_cli(["sample", tmp_path / "nope", "--chars", "5"], capsys)
    assert_one_line_error(rc, err, "no such run folder")

    cfg = write_config(tmp_path / "run.yaml")
    rc, _, err = run_cli(["train", "--config", cfg, "--out", run, "--resume"], capsys)
    assert_one_line_error(rc, err, "checkpoint", "corrupt")


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    rc, _, err = run_cli(["train", "--out", "no/such/run", "--resume"], capsys)  # no config.yaml
    assert_one_line_error(rc, err, "no such config file")


@pytest.mark.parametrize(
    ("device", "fragment"), [("gpu", "use cpu, cuda or cuda:N"), ("cuda", "no CUDA GPU")]
)
def test_bench_refuses_a_device_it_cannot_use(capsys, device, fragment):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    rc, _, err = run_cli(["bench", "--quick", "--device", device], capsys)
    assert_one_line_error(rc, err, "--device", fragment)


def test_killed_run_resumes_bit_identically(tmp_path, capsys):
    """SIGKILL mid-run, then ``--resume``: the same metrics and weights as an unbroken run."""
    # Two epochs of 23,950 chars, cut at 40,000: the resumed run crosses an epoch boundary.
    cfg = write_config(
        tmp_path / "run.yaml", train={"epochs": 2, "max_chars": 40_000, "eval_every_chars": 2_000}
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpusim", "train", "--config", str(cfg), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(killed / "checkpoint.pt")["chars"]
    assert stopped_at < 40_000

    assert main(["train", "--out", str(killed), "--resume", "--no-progress"]) == 0
    assert (
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "whole"), "--no-progress"])
        == 0
    )
    capsys.readouterr()

    def deterministic(rows):
        return [
            {k: r[k] for k in ("epoch", "chars", "train_loss", "valid_loss", "test_loss")}
            for r in rows
        ]

    a = read_metrics(killed / "metrics.csv")
    b = read_metrics(tmp_path / "whole/metrics.csv")
    assert deterministic(a) == deterministic(b)
    assert b[-1]["chars"] == 40_000 and 1.0 in [r["epoch"] for r in b]
    ca = load_checkpoint(killed / "checkpoint.pt")
    cb = load_checkpoint(tmp_path / "whole/checkpoint.pt")
    for key in ("model", "state", "epoch", "position", "chars", "step"):
        assert_equal_tree(ca[key], cb[key], key)


def assert_equal_tree(a, b, where):
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    elif hasattr(a, "equal"):
        assert a.dtype == b.dtype and a.equal(b), f"{where} differs"
    else:
        assert a == b, where


def test_demo_prints_both_runs_and_plots_their_curves(tmp_path, capsys):
    rc, out, err = run_cli(["demo", "--out", tmp_path, "--minutes", "0.02"], capsys)
    assert rc == 0
    assert err.count("chars 10,000  train") == 2  # progress: a line per evaluation of each run
    assert "FP (rpu: ideal)" in out and "RPU baseline" in out and "nats" in out
    assert (tmp_path / "validation.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("fp", "rpu"):
        rows = read_metrics(tmp_path / run / "metrics.csv")
        assert rows[-1]["chars"] == 10_000
    assert_one_line_error(*run_cli(["demo", "--minutes", "-1"], capsys)[::2], "--minutes")


def test_config_prints_a_resolved_config_that_trains_as_given(tmp_path, capsys):
    rc, out, _ = run_cli(["config", "--set", "rpu=ideal", "--set", "train.lr=5"], capsys)
    assert rc == 0
    path = tmp_path / "run.yaml"
    path.write_text(out)
    cfg = RunConfig.from_yaml(path)
    assert cfg == RunConfig.from_dict({"rpu": "ideal", "train": {"lr": 5.0}})
    rc, again, _ = run_cli(["config", "--config", str(path)], capsys)
    assert (rc, again) == (0, out)
    rc, _, err = run_cli(["config", "--set", "train.lrr=3"], capsys)
    assert_one_line_error(rc, err, "train.lrr: unknown key; did you mean 'lr'?")


def test_config_keys_lists_every_leaf_and_docs_config_md_is_its_table(capsys):
    rc, out, _ = run_cli(["config", "--keys"], capsys)
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    keys = [row.split("`")[1] for row in rows]
    assert len(keys) == len(set(keys)) and {"train.device", "rpu.device.dw_min"} <= set(keys)
    # Every leaf of the default config, in its order; the device section also lists the other
    # device models' own keys, right after its own.
    from rpusim.devices import MODELS

    leaves = list(_flat(RunConfig().to_dict()))
    device_keys = {f"rpu.device.{name}" for m in MODELS.values() for name in m.Config.model_fields}
    assert [k for k in keys if k in leaves] == leaves
    assert set(keys) - set(leaves) == device_keys - set(leaves)
    extra = [i for i, k in enumerate(keys) if k not in leaves]
    assert extra == list(range(extra[0], extra[0] + len(extra)))
    assert keys[extra[0] - 1] == leaves[leaves.index("rpu.forward.inp_bits") - 1]
    assert all(row.count("|") == 5 for row in rows)  # no stray pipes in a cell
    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert out.strip() in doc, "docs/config.md is stale: regenerate it with rpusim config --keys"
