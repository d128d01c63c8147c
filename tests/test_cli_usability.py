"""The command line's rough edges of issue #14: defaults without --config, defaults in every
help, one name per option, the kernel compilation notice, the resume message, sweeps over the
learning-rate schedule."""

import argparse

import pytest
import yaml
from test_cli import TINY, assert_one_line_error, run_cli
from test_train import tiny

import rpusim.train as train_module
from rpusim.cli import build_parser, main
from rpusim.config import RunConfig, config_keys
from rpusim.model import CharLSTM
from rpusim.sweep import expand, load_experiment, sweep
from rpusim.train import load_checkpoint, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SETS = [
    "data.max_bytes=30000",
    "data.eval_chars=1000",
    "model.layers=1",
    "model.hidden=8",
    "train.seq_len=50",
    "train.max_chars=500",
    "rpu=ideal",
]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_train_without_config_starts_from_the_defaults(tmp_path, capsys):
    sets = [w for s in TINY_SETS for w in ("--set", s)]
    rc, out, _ = run_cli(["train", *sets, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert rc == 0 and "500 chars" in out
    assert RunConfig.from_yaml(tmp_path / "run/config.yaml") == RunConfig.from_dict({}, TINY_SETS)
    # --resume without --config still reads OUT/config.yaml, and needs it
    rc, _, err = run_cli(["train", "--out", tmp_path / "none", "--resume"], capsys)
    assert_one_line_error(rc, err, "config.yaml: no such config file")


def test_every_option_with_a_default_shows_it_in_its_help():
    for name, parser in subcommands().items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, [], argparse.SUPPRESS):
                continue
            if isinstance(default, bool):
                continue  # a flag
            helptext = " ".join((action.help or "").split())
            assert "(default" in helptext or f"(default: {default})" in text, (
                f"rpusim {name} {action.option_strings[0]}: no default in its help"
            )
    sample = " ".join(subcommands()["sample"].format_help().split())
    for fragment in ("(default: 500)", "(default: 1.0)", "(default: 0)", "(default: 1)"):
        assert fragment in sample
    assert "(default: 5.0)" in " ".join(subcommands()["demo"].format_help().split())


def test_threads_is_one_option_named_alike_everywhere():
    for name in ("train", "sample", "demo", "sweep", "bench"):
        action = next(a for a in subcommands()[name]._actions if "--threads" in a.option_strings)
        assert (action.metavar, action.default, action.type) == ("N", 1, int), name


def test_report_bits_tolerance_keeps_its_old_name():
    parser = subcommands()["report"]
    assert parser.parse_args(["d", "--bits-tolerance", "0.02"]).tolerance == 0.02
    assert parser.parse_args(["d", "--tolerance", "0.03"]).tolerance == 0.03
    assert "DAC-bits tolerance" in parser.format_help()


def test_max_chars_says_it_is_rounded_up_to_whole_batches():
    row = next(r for r in config_keys() if r["key"] == "train.max_chars")
    assert "rounded up to whole batches" in row["description"]


def test_first_compilation_is_announced_and_kept_off_the_clock(tmp_path, capsys, monkeypatch):
    events = []
    real_warm_up, real_step = train_module._warm_up_kernels, CharLSTM.train_step

    def warm_up(*args):
        events.append("warm-up")
        real_warm_up(*args)

    def step(self, *args):
        events.append("step")
        return real_step(self, *args)

    monkeypatch.setattr(train_module, "_numba_cache_filled", lambda: False)
    monkeypatch.setattr(train_module, "_warm_up_kernels", warm_up)
    monkeypatch.setattr(CharLSTM, "train_step", step)
    train(tiny("rpu_baseline", max_chars=100), tmp_path, progress=False, verbose=True)
    assert events[:2] == ["warm-up", "step"] and events.count("warm-up") == 1
    err = capsys.readouterr().err
    assert err.count("compiling kernels (first run only)") == 1
    assert err.index("compiling kernels") < err.index("chars 100")


def test_numba_cache_check_looks_where_numba_writes(tmp_path, monkeypatch):
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    assert not train_module._numba_cache_filled()
    (tmp_path / "rpusim_update").mkdir()
    (tmp_path / "rpusim_update/numba.apply_pass_constant_step-10.py311.nbi").write_bytes(b"")
    assert train_module._numba_cache_filled()


def test_resume_message_gives_the_epoch_as_a_fraction(tmp_path, capsys):
    cfg = tiny(max_chars=1000)
    train(cfg, tmp_path, progress=False, verbose=False)
    longer = cfg.override(["train.max_chars=1500"])
    train(longer, tmp_path, resume=True, progress=False, verbose=True)
    # 23,950 training chars per epoch (479 sequences of 50)
    assert f"resuming {tmp_path} at epoch 0.04 (1,000 chars, step 20)" in capsys.readouterr().err


def test_a_sweep_grids_over_the_lr_schedule(tmp_path):
    base = {**TINY, "train": {**TINY["train"], "max_chars": 300, "eval_every_chars": 300}}
    path = tmp_path / "schedules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": base,
                "grid": {"train.lr_schedule": ["constant", "step", "cosine"]},
                "seeds": [0],
                "variants": {"warm": {"train.lr_schedule": "cosine", "train.lr_warmup_chars": 100}},
            }
        )
    )
    points = expand(load_experiment(path))
    names = [p.name for p in points]
    assert names == [
        "lr_schedule=constant_seed=0",
        "lr_schedule=step_seed=0",
        "lr_schedule=cosine_seed=0",
        "warm_seed=0",
    ]
    rows = sweep(path, tmp_path / "out", workers=1, log=None)
    assert [r["status"] for r in rows] == ["finished"] * 4
    for point in points:
        cfg = RunConfig.from_yaml(tmp_path / "out" / point.name / "config.yaml")
        assert cfg.to_dict() == point.config
        assert cfg.train.lr_schedule == point.config["train"]["lr_schedule"]
        assert read_metrics(tmp_path / "out" / point.name / "metrics.csv")[-1]["chars"] == 300
    warm = RunConfig.from_yaml(tmp_path / "out/warm_seed=0/config.yaml").train
    assert (warm.lr_schedule, warm.lr_warmup_chars) == ("cosine", 100)
    ckpt = load_checkpoint(tmp_path / "out/lr_schedule=cosine_seed=0/checkpoint.pt")
    assert ckpt["config"]["train"]["lr_schedule"] == "cosine"
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 0  # all done: skipped
