"""Sweeps and reports: grid expansion, the sweep folder, failures, resume, locking, determinism
across worker counts (and Ray), and the report's tables and figures."""

import csv
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import yaml

from rpusim.cli import main
from rpusim.config import RunConfig
from rpusim.report import bits_threshold, load_sweep, report
from rpusim.sweep import (
    SweepError,
    _Lock,
    expand,
    load_experiment,
    merge,
    point_name,
    sweep,
)

REPO = Path(__file__).resolve().parent.parent
# Experiment (sweep) files; experiments/ also holds single-run configs for rpusim train.
EXPERIMENTS = sorted(
    p
    for p in (REPO / "experiments").glob("*.yaml")
    if {"base", "base_config", "grid", "variants"} & set(yaml.safe_load(p.read_text()) or {})
)
LOSSES = ("epoch", "chars", "train_loss", "valid_loss", "test_loss")


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_base(corpus):
    """A 1-layer LSTM of 8 units on a 12 kB corpus: each run takes about a second."""
    return {
        "data": {"corpus": str(corpus), "eval_chars": 200},
        "model": {"layers": 1, "hidden": 8},
        "train": {"lr": 0.5, "seq_len": 20, "max_chars": 1200, "eval_every_chars": 400},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    words = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was"]
    text = " ".join(words[(i * 7 + i // 5) % len(words)] for i in range(3000))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def experiment(corpus):
    """Two RPU points, the FP reference and a point whose corpus is missing (it must fail)."""
    return write_yaml(
        corpus.parent / "tiny.yaml",
        {
            "base": tiny_base(corpus),
            "grid": {"rpu.device.up_down": [0, 0.05]},
            "seeds": [0],
            "variants": {
                "fp": {"rpu": "ideal", "train.lr": 1.0},
                "bad": {"data.corpus": str(corpus.parent / "missing.txt")},
            },
        },
    )


@pytest.fixture(scope="module")
def swept(experiment, tmp_path_factory):
    """The experiment swept with two workers: (folder, rows)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    rows = sweep(experiment, out, workers=2, log=None)
    return out, rows


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def losses(run_dir):
    """The deterministic columns of a run's metrics.csv, as text (bit-exact comparison)."""
    return [tuple(r[k] for k in LOSSES) for r in read_csv(run_dir / "metrics.csv")]


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------


def test_grid_product_times_seeds_plus_variants(tmp_path, corpus):
    path = write_yaml(
        tmp_path / "e.yaml",
        {
            "base": {**tiny_base(corpus), "rpu": "rpu_baseline"},
            "grid": {
                "rpu.device.up_down": [0, 0.02, 0.1],
                "bits": {
                    "keys": ["rpu.forward.inp_bits", "rpu.backward.inp_bits"],
                    "values": [3, 5],
                },
            },
            "seeds": [0, 1],
            "variants": {"fp": {"rpu": "ideal"}},
            "scales": {"quick": {"train.max_chars": 800}, "paper": {"seeds": [7]}},
        },
    )
    exp = load_experiment(path)
    points = expand(exp, "quick", ["train.lr=0.25"])
    assert len(points) == 3 * 2 * 2 + 1 * 2
    names = [p.name for p in points]
    assert names[:3] == [
        "up_down=0_bits=3_seed=0",
        "up_down=0_bits=3_seed=1",
        "up_down=0_bits=5_seed=0",
    ]
    assert names[-2:] == ["fp_seed=0", "fp_seed=1"]
    assert all(
        n == point_name(p.axes, p.variant, p.seed) for n, p in zip(names, points, strict=True)
    )
    p = points[names.index("up_down=0.1_bits=5_seed=1")]
    assert p.axes == {"up_down": 0.1, "bits": 5} and p.seed == 1 and p.variant == ""
    cfg = RunConfig.from_dict(p.config)
    assert cfg.rpu.device.up_down == 0.1 and cfg.seed == 1
    assert cfg.rpu.forward.inp_bits == cfg.rpu.backward.inp_bits == 5  # a linked axis
    assert cfg.train.max_chars == 800 and cfg.train.lr == 0.25  # scale, then --set
    fp = RunConfig.from_dict(points[-1].config)
    assert fp.rpu.update.mode == "float" and fp.train.lr == 0.25
    assert [p.name for p in expand(exp, "paper")][-1] == "fp_seed=7"  # a scale's own seeds
    assert all(os.sep not in n and " " not in n for n in names)


def test_labelled_axis_gives_each_value_its_overrides(tmp_path, corpus):
    path = write_yaml(
        tmp_path / "size.yaml",
        {
            "base": {**tiny_base(corpus), "rpu": "rpu_baseline"},
            "grid": {
                "model.hidden": [8, 16],
                "tile": {
                    "values": {
                        "fp": {"rpu": "ideal", "train.lr": 2.0},
                        "rpu": {"rpu": {"preset": "rpu_baseline"}, "train.lr": 0.5},
                    }
                },
            },
        },
    )
    points = expand(load_experiment(path))
    assert [p.name for p in points] == [
        "hidden=8_tile=fp_seed=0", "hidden=8_tile=rpu_seed=0",
        "hidden=16_tile=fp_seed=0", "hidden=16_tile=rpu_seed=0",
    ]  # fmt: skip
    cfgs = [RunConfig.from_dict(p.config) for p in points]
    assert [(c.model.hidden, c.rpu.update.mode, c.train.lr) for c in cfgs] == [
        (8, "float", 2.0), (8, "pulsed", 0.5), (16, "float", 2.0), (16, "pulsed", 0.5),
    ]  # fmt: skip


def test_expansion_refuses_bad_keys_and_missing_scale(tmp_path, corpus):
    good = {"base": tiny_base(corpus), "grid": {"rpu.device.up_down": [0, 0.1]}}
    bad_key = write_yaml(tmp_path / "a.yaml", {**good, "grid": {"rpu.device.up_dwn": [0]}})
    with pytest.raises(SweepError, match=r"up_dwn=0_seed=0: rpu.device.up_dwn: unknown key"):
        expand(load_experiment(bad_key))
    scaled = write_yaml(tmp_path / "b.yaml", {**good, "scales": {"quick": {}, "paper": {}}})
    with pytest.raises(SweepError, match="choose one with --scale"):
        expand(load_experiment(scaled))
    with pytest.raises(SweepError, match="unknown key 'grids'"):
        load_experiment(write_yaml(tmp_path / "c.yaml", {"grids": {}, "seeds": [0]}))
    with pytest.raises(SweepError, match="is a run config, not an experiment"):
        load_experiment(write_yaml(tmp_path / "d.yaml", tiny_base(corpus)))


def test_merge_preset_replaces_rpu_and_dotted_keys_merge():
    base = {"rpu": {"preset": "rpu_baseline", "device": {"up_down": 0.02}}}
    assert merge(base, {"rpu": "ideal"}) == {"rpu": "ideal"}
    assert merge({"rpu": "ideal"}, {"rpu.device.dw_min": 0.01}) == {
        "rpu": {"preset": "ideal", "device": {"dw_min": 0.01}}
    }
    assert merge(base, {"rpu": {"device": {"dw_min": 0.01}}})["rpu"]["device"] == {
        "up_down": 0.02,
        "dw_min": 0.01,
    }


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def test_sweep_csv_rows_statuses_and_failure(swept):
    out, rows = swept
    table = read_csv(out / "sweep.csv")
    assert [r["point"] for r in table] == [
        "up_down=0_seed=0",
        "up_down=0.05_seed=0",
        "fp_seed=0",
        "bad_seed=0",
    ]
    assert list(table[0])[:5] == ["point", "up_down", "variant", "seed", "status"]
    by = {r["point"]: r for r in table}
    assert by["up_down=0.05_seed=0"]["up_down"] == "0.05" and by["fp_seed=0"]["variant"] == "fp"
    for name in ("up_down=0_seed=0", "up_down=0.05_seed=0", "fp_seed=0"):
        r = by[name]
        assert r["status"] == "finished" and r["chars"] == "1200", r
        summary = json.loads((out / name / "summary.json").read_text())
        assert float(r["final_test_loss"]) == summary["final"]["test_loss"]
        assert float(r["best_valid_loss"]) == summary["best"]["valid_loss"]
    bad = by["bad_seed=0"]
    assert bad["status"] == "failed" and "missing.txt" in bad["error"]
    assert "DataError" in (out / "bad_seed=0" / "error.txt").read_text()
    doc = yaml.safe_load((out / "sweep.yaml").read_text())
    assert [p["name"] for p in doc["points"]] == list(by)
    assert doc["grid"][0]["keys"] == ["rpu.device.up_down"]
    assert [r["status"] for r in rows] == ["finished", "finished", "finished", "failed"]


def test_rerun_skips_finished_points(swept, experiment):
    out, _ = swept
    done = ["up_down=0_seed=0", "up_down=0.05_seed=0", "fp_seed=0"]
    before = {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in done}
    log = []

    class Log:
        def write(self, text):
            log.append(text)

        def flush(self):
            pass

    rows = sweep(experiment, out, workers=2, log=Log())
    assert {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in done} == before
    assert "3 done or refused, 1 to run" in "".join(log)  # only the failed point is retried
    assert [r["status"] for r in rows][-1] == "failed"


def test_results_do_not_depend_on_workers_and_resume_continues(swept, experiment, tmp_path):
    out2, _ = swept
    out1 = tmp_path / "one"
    # Interrupted sweep: each point stops at 400 characters; the rerun continues it.
    sweep(experiment, out1, workers=1, overrides=["train.max_chars=400"], log=None)
    assert len(losses(out1 / "fp_seed=0")) == 1
    rows = sweep(experiment, out1, workers=1, log=None)
    assert [r["status"] for r in rows] == ["finished", "finished", "finished", "failed"]
    for name in ("up_down=0_seed=0", "up_down=0.05_seed=0", "fp_seed=0"):
        assert len(losses(out1 / name)) == 3
        assert losses(out1 / name) == losses(out2 / name), name


def test_second_sweep_on_the_same_folder_is_refused(experiment, tmp_path, capsys):
    with _Lock(tmp_path):
        with pytest.raises(SweepError, match="another sweep is running"):
            sweep(experiment, tmp_path, workers=1, log=None)
        assert main(["sweep", str(experiment), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpusim: error: ") and err.count("\n") == 1
    assert f"pid {os.getpid()}" in err
    assert not (tmp_path / "sweep.csv").exists()


def test_changed_point_config_is_refused_not_mixed(swept, experiment, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(swept[0], out)
    rows = sweep(experiment, out, workers=1, overrides=["train.lr=0.7"], log=None)
    assert rows[0]["status"] == "failed" and "train.lr: 0.5 there, 0.7 here" in rows[0]["error"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def is_png(path):
    head = path.read_bytes()[:24]
    return head[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", head[16:24])) > 100


def test_report_writes_markdown_and_figures(swept):
    out, _ = swept
    path = report(out)
    text = path.read_text()
    assert "| up_down=0.05 | 1/1 |" in text and "| bad | 0/1 (failed) |" in text
    assert "test - fp" in text
    for fig in ("curves.png", "final_up_down.png"):
        assert is_png(out / "figures" / fig) and f"(figures/{fig})" in text
    assert text.count(f"figure: `rpusim report {out}`") == 2
    assert "rpusim sweep" in text


def test_bits_threshold_and_train_test_figure(tmp_path, corpus):
    """Synthetic finished runs (no training): the report finds 7 bits, 5 with stochastic
    rounding, within 0.05 of FP."""
    exp = write_yaml(
        tmp_path / "bits.yaml",
        {
            "base": tiny_base(corpus),
            "grid": {
                "inp_bits": {
                    "keys": ["rpu.forward.inp_bits", "rpu.backward.inp_bits"],
                    "values": [3, 5, 7, 9],
                },
                "inp_sto_round": {
                    "keys": ["rpu.forward.inp_sto_round", "rpu.backward.inp_sto_round"],
                    "values": [False, True],
                },
            },
            "seeds": [0, 1],
            "variants": {
                "fp": {"rpu": "ideal"},
                "no_dac": {"rpu.forward.inp_bits": None, "rpu.backward.inp_bits": None},
            },
        },
    )
    out = tmp_path / "out"
    for p in expand(load_experiment(exp)):
        bits, sto = p.axes.get("inp_bits", 24), p.axes.get("inp_sto_round", False)
        enough = 5 if sto else 7
        test = 1.5 + (0.01 if bits >= enough else 0.3) + 0.01 * p.seed
        if p.variant == "no_dac":
            test = 1.2  # far better than any DAC: no bit count comes within 0.05 of it
        fake_run(out / p.name, p.config, test)
    rows = sweep(exp, out, workers=1, log=None)  # everything is finished: nothing runs
    assert {r["status"] for r in rows} == {"finished"}
    thresh = bits_threshold(load_sweep(out), tolerance=0.05)
    assert {t["mode"]: t["bits"] for t in thresh} == {
        "deterministic rounding": 7,
        "stochastic rounding": 5,
    }
    # Against each mode's own finest DAC (9 bits) the answer is the same in this synthetic sweep.
    assert {t["mode"]: (t["finest_bits"], t["bits_vs_finest"]) for t in thresh} == {
        "deterministic rounding": (9, 7),
        "stochastic rounding": (9, 5),
    }
    assert {t["mode"]: (t["nodac_label"], t["bits_vs_nodac"]) for t in thresh} == {
        "deterministic rounding": ("no_dac", None),
        "stochastic rounding": ("no_dac", None),
    }
    text = report(out, tolerance=0.05).read_text()
    assert "| deterministic rounding | 7 |" in text and "| stochastic rounding | 5 |" in text
    assert "smallest bits (vs no DAC)" in text and "`no_dac` (1.5333)" in text  # 1.2 + 1/3
    thresh = bits_threshold(load_sweep(out), tolerance=0.4)  # 0.32 above no DAC from 7 / 5 bits
    assert {t["mode"]: t["bits_vs_nodac"] for t in thresh} == {
        "deterministic rounding": 7,
        "stochastic rounding": 5,
    }
    assert is_png(out / "figures" / "final_inp_bits.png")


def test_train_test_figure_for_variant_sweeps(tmp_path, corpus):
    exp = write_yaml(
        tmp_path / "reg.yaml",
        {"base": tiny_base(corpus), "variants": {"fp": {"rpu": "ideal"}, "rpu": {}}},
    )
    out = tmp_path / "out"
    for p in expand(load_experiment(exp)):
        fake_run(out / p.name, p.config, 2.0)
    sweep(exp, out, workers=1, log=None)
    text = report(out).read_text()
    assert is_png(out / "figures" / "train_test.png") and "(figures/train_test.png)" in text


def fake_run(run_dir, config, test):
    """A run folder as train.py leaves a completed run (config, metrics, summary)."""
    run_dir.mkdir(parents=True)
    RunConfig.from_dict(config).to_yaml(run_dir / "config.yaml")
    rows = [
        {
            "epoch": e / 10,
            "chars": 400 * e,
            "train_loss": test - 0.1 + 1 / e,
            "valid_loss": test + 1 / e,
            "test_loss": test + 1 / e,
            "elapsed_s": e,
            "chars_per_s": 100.0,
        }
        for e in (1, 2, 3)
    ]
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    last = {k: rows[-1][k] for k in LOSSES}
    summary = {
        "status": "completed",
        "final": last,
        "best": last,
        "chars_trained": 1200,
        "wall_time_s": 3.0,
        "vocab_size": 12,
        "chars_per_s": 100.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


# ---------------------------------------------------------------------------------------------
# The experiment files and the Ray backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_files_parse_and_expand(path):
    exp = load_experiment(path)
    assert set(exp.scales) >= {"quick", "paper"}
    grids = {}
    for scale in ("quick", "paper"):
        points = expand(exp, scale)
        assert points
        grids[scale] = {(tuple(p.axes.items()), p.variant) for p in points}
    assert grids["quick"] == grids["paper"]  # the same grid, only the budget differs


def test_experiments_exist():
    names = {p.stem for p in EXPERIMENTS}
    assert {"baseline", "asymmetry", "input_bits", "regularization"} <= names


def test_ray_backend_gives_the_local_results(swept, experiment, tmp_path):
    ray = pytest.importorskip("ray")
    out2, local = swept
    assert [r["status"] for r in local][1:3] == ["finished", "finished"]
    two = write_yaml(
        tmp_path / "two.yaml",
        {
            **yaml.safe_load(experiment.read_text()),
            "variants": {"fp": {"rpu": "ideal", "train.lr": 1.0}},
        },
    )
    two_grid = yaml.safe_load(two.read_text())
    two_grid["grid"] = {"rpu.device.up_down": [0.05]}
    write_yaml(two, two_grid)
    rows = sweep(two, tmp_path / "ray", workers=2, backend="ray", log=None)
    assert not ray.is_initialized()
    assert [r["status"] for r in rows] == ["finished", "finished"]
    for name in ("up_down=0.05_seed=0", "fp_seed=0"):
        assert losses(tmp_path / "ray" / name) == losses(out2 / name)
