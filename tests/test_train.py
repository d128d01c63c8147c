"""The training loop: run folder contents, exact resume, refused checkpoints, divergence."""

import json
import math

import pytest
import torch

from rpusim.config import ConfigError, RunConfig
from rpusim.model import CharLSTM
from rpusim.train import METRICS_COLUMNS, TrainError, load_checkpoint, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(rpu="ideal", dropout=0.0, **train_kw):
    """A 1-layer LSTM of 8 units on the first 30 kB of War and Peace: fast on one core."""
    train_cfg = {"lr": 1.0, "seq_len": 50, "max_chars": 2000, "eval_every_chars": 500}
    train_cfg.update(train_kw)
    return RunConfig.from_dict(
        {
            "seed": 3,
            "data": {"corpus": "warpeace", "max_bytes": 30_000, "eval_chars": 1_000},
            "model": {"layers": 1, "hidden": 8, "dropout": dropout},
            "train": train_cfg,
            "rpu": rpu,
        }
    )


def assert_same_tree(a, b, where="checkpoint"):
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where


def losses(rows):
    """The deterministic columns of metrics (wall-clock columns are not)."""
    keys = ("epoch", "chars", "train_loss", "valid_loss", "test_loss")
    return [{k: row[k] for k in keys} for row in rows]


def assert_same_run(dir_a, dir_b):
    rows_a, rows_b = read_metrics(dir_a / "metrics.csv"), read_metrics(dir_b / "metrics.csv")
    assert losses(rows_a) == losses(rows_b)
    a, b = load_checkpoint(dir_a / "checkpoint.pt"), load_checkpoint(dir_b / "checkpoint.pt")
    for key in ("model", "state", "epoch", "position", "chars", "step", "vocab", "config"):
        assert_same_tree(a[key], b[key], key)
    assert losses(a["metrics"]) == losses(b["metrics"])


def test_run_folder_holds_config_metrics_summary_checkpoint(tmp_path):
    cfg = tiny()
    summary = train(cfg, tmp_path, progress=False, verbose=False)

    assert RunConfig.from_yaml(tmp_path / "config.yaml") == cfg  # fully resolved tree
    assert (tmp_path / "config.yaml").read_text().count("inp_bits") == 3  # rpu tree, not a name
    # (forward, backward and the transfer read of rpu.transfer_forward)

    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(METRICS_COLUMNS)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["chars"] for r in rows] == [500, 1000, 1500, 2000]
    for row in rows:
        for key in ("train_loss", "valid_loss", "test_loss"):
            assert 0 < row[key] < math.log(87) + 0.5  # nats per char, near or below uniform
        assert row["elapsed_s"] > 0 and row["chars_per_s"] > 0
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]  # it learns something

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert summary["status"] == "completed" and summary["seed"] == 3
    assert summary["chars_trained"] == 2000
    assert summary["final"]["valid_loss"] == rows[-1]["valid_loss"]
    assert summary["best"]["valid_loss"] == min(r["valid_loss"] for r in rows)
    assert set(summary["versions"]) == {"python", "torch", "rpusim"}
    assert summary["wall_time_s"] > 0 and summary["chars_per_s"] > 0

    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", cfg)
    assert ckpt["chars"] == 2000 and ckpt["step"] == 40 and len(ckpt["metrics"]) == 4
    assert ckpt["config"] == cfg.to_dict()


def test_epoch_ends_are_evaluated_and_epochs_counted(tmp_path):
    cfg = tiny(max_chars=None, epochs=2, eval_every_chars=10**9, seq_len=100, batch_size=4)
    train(cfg, tmp_path, progress=False, verbose=False)
    rows = read_metrics(tmp_path / "metrics.csv")
    # 24,000 training chars in 4 streams of 6,000: 59 sequences of 100 per epoch
    assert [r["chars"] for r in rows] == [59 * 400, 2 * 59 * 400]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["position"]) == (1, 59)  # at the end of the last epoch


@pytest.mark.parametrize(("rpu", "dropout"), [("ideal", 0.3), ("rpu_baseline", 0.0)])
def test_resume_after_max_chars_is_bit_identical(tmp_path, rpu, dropout):
    # Stopped by max_chars at an evaluation, then continued: the same run as never stopped.
    cfg = tiny(rpu, dropout, max_chars=1000)
    train(cfg, tmp_path / "a", progress=False, verbose=False)
    longer = cfg.override(["train.max_chars=2000"])
    summary = train(longer, tmp_path / "a", resume=True, progress=False, verbose=False)
    assert summary["status"] == "completed" and summary["chars_trained"] == 2000
    train(longer, tmp_path / "b", progress=False, verbose=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_evaluation_does_not_move_the_training_random_streams(tmp_path):
    # Evaluating twice as often reads the noisy tiles twice as often; the weights are the same.
    cfg = tiny("rpu_baseline", max_chars=500)
    train(cfg, tmp_path / "a", progress=False, verbose=False)
    train(
        cfg.override(["train.eval_every_chars=250"]), tmp_path / "b", progress=False, verbose=False
    )
    a = load_checkpoint(tmp_path / "a/checkpoint.pt")
    b = load_checkpoint(tmp_path / "b/checkpoint.pt")
    assert_same_tree(a["model"], b["model"])
    assert len(b["metrics"]) == 2 * len(a["metrics"])


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    cfg = tiny(max_chars=1000)
    first = train(cfg, tmp_path, progress=False, verbose=False)
    again = train(cfg, tmp_path, resume=True, progress=False, verbose=False)
    assert again["final"] == first["final"]
    assert len(read_metrics(tmp_path / "metrics.csv")) == 2


def test_a_run_folder_is_not_overwritten_without_resume(tmp_path):
    train(tiny(max_chars=500), tmp_path, progress=False, verbose=False)
    with pytest.raises(TrainError, match="already holds a run.*--resume"):
        train(tiny(max_chars=500), tmp_path, progress=False, verbose=False)


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = tiny(max_chars=500)
    train(cfg, tmp_path, progress=False, verbose=False)
    with pytest.raises(TrainError, match=r"train\.lr=1\.0, the config gives 0\.5") as err:
        train(cfg.override(["train.lr=0.5"]), tmp_path, resume=True, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(TrainError, match=r"model\.hidden"):
        train(cfg.override(["model.hidden=9"]), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage):
    cfg = tiny(max_chars=500)
    train(cfg, tmp_path, progress=False, verbose=False)
    path = tmp_path / "checkpoint.pt"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(TrainError) as err:
        train(cfg.override(["train.max_chars=1000"]), tmp_path, resume=True, progress=False)
    assert "checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_a_diverging_run_stops_with_status_diverged(tmp_path, capsys):
    # A float tile with an absurd learning rate overflows float32 at once.
    cfg = tiny(lr=3e38, max_chars=2000, eval_every_chars=50)
    summary = train(cfg, tmp_path, progress=False, verbose=False)
    assert summary["status"] == "diverged"
    assert summary["message"].startswith("diverged at step 1 (epoch 0, 50 chars)")
    assert "rpusim: diverged at step 1 " in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    assert read_metrics(tmp_path / "metrics.csv") == []
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing good to keep


def test_a_nan_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = CharLSTM.train_step
    calls = []

    def step_that_fails_at_15(self, inputs, targets, state, lr):
        calls.append(1)
        loss, state = real_step(self, inputs, targets, state, lr)
        return (math.nan if len(calls) == 15 else loss), state

    monkeypatch.setattr(CharLSTM, "train_step", step_that_fails_at_15)
    summary = train(tiny(max_chars=2000), tmp_path, progress=False, verbose=False)
    assert summary["status"] == "diverged"
    assert summary["message"].startswith("diverged at step 15 (epoch 0, 750 chars)")
    assert "last good checkpoint is kept" in summary["message"]
    assert [r["chars"] for r in read_metrics(tmp_path / "metrics.csv")] == [500]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["chars"] == 500
    assert summary["final"]["chars"] == 500


def test_run_config_from_yaml_with_presets_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rpu: {preset: ideal, device: {dw_min: 0.01}}\ntrain: {lr: 1e-1}\n")
    cfg = RunConfig.from_yaml(
        path, ["rpu.forward.out_noise=0.1", "model.hidden=32", "train.max_chars=2e5"]
    )
    assert cfg.train.max_chars == 200_000  # YAML 1.1 reads 2e5 as a string; a number belongs
    assert cfg.rpu.update.mode == "float" and cfg.rpu.device.dw_min == 0.01
    assert cfg.rpu.forward.out_noise == 0.1 and cfg.model.hidden == 32 and cfg.train.lr == 0.1
    assert RunConfig.from_dict({"rpu": "rpu_baseline"}).rpu == RunConfig().rpu
    cfg.to_yaml(tmp_path / "out.yaml")
    assert RunConfig.from_yaml(tmp_path / "out.yaml") == cfg
    assert RunConfig.from_dict({}, ["rpu=ideal"]).rpu.update.mode == "float"


@pytest.mark.parametrize(
    ("data", "overrides", "expected"),
    [
        ({"trian": {}}, [], "trian: unknown key; did you mean 'train'?"),
        ({}, ["train.lrr=1"], "train.lrr: unknown key; did you mean 'lr'?"),
        ({"rpu": {"devcie": {}}}, [], "rpu.devcie: unknown key; did you mean 'device'?"),
        ({}, ["rpu.device.up_dwn=0.1"], "rpu.device.up_dwn: unknown key; did you mean 'up_down'"),
        ({"rpu": "idael"}, [], "rpu.preset: 'idael' is unknown; did you mean 'ideal'?"),
        ({}, ["train.batch_size=1.5"], "train.batch_size: expected int, got float 1.5"),
        ({"train": {"lr": "fast"}}, [], "train.lr: expected float, got str 'fast'"),
        ({"train": {"lr": 0}}, [], "train.lr: 0 is out of range"),
        ({"data": {"split": [0.5, 0.5, 0.5]}}, [], "data: split [0.5, 0.5, 0.5] must be"),
        ({"model": 3}, [], "model: expected mapping"),
        ({}, ["train.device=gpu"], "train: device 'gpu' is not a device: use cpu, cuda or cuda:N"),
    ],
)
def test_run_config_errors_are_one_line_naming_the_key(data, overrides, expected):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data, overrides)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_train_device_names_cpu_or_a_cuda_device():
    assert RunConfig().train.device == "cpu"
    for device in ("cpu", "cuda", "cuda:1"):
        assert RunConfig.from_dict({}, [f"train.device={device}"]).train.device == device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_cuda_run_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TrainError, match=r"^train\.device: 'cuda' but torch sees no CUDA GPU"):
        train(tiny(device="cuda"), tmp_path / "run", progress=False, verbose=False)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_a_new_config_key_resumes(tmp_path):
    # Keys added to the config later (here train.device) take their defaults when an older
    # checkpoint is compared with the config: the run continues, bit-identically.
    cfg = tiny("rpu_baseline", max_chars=1000)
    train(cfg, tmp_path / "a", progress=False, verbose=False)
    path = tmp_path / "a/checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["train"]["device"]
    torch.save(ckpt, path)
    longer = cfg.override(["train.max_chars=2000"])
    train(longer, tmp_path / "a", resume=True, progress=False, verbose=False)
    train(longer, tmp_path / "b", progress=False, verbose=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")
