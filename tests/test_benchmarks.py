"""The benchmark scripts run (smoke tests at tiny sizes; no timing is asserted)."""

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_splits_a_step_and_bounds_an_ensemble(capsys):
    profile_step = load("profile_step")
    parts = profile_step.profile(hidden=8, batch=2, replicas=3, repeats=1)
    assert set(parts) == {"step", "torch", "update", "matmuls", "rest", "bmm_per_replica"}
    assert all(math.isfinite(v) for v in parts.values())
    assert all(parts[k] > 0 for k in ("step", "torch", "update", "matmuls", "bmm_per_replica"))
    assert parts["rest"] == pytest.approx(parts["step"] - parts["update"] - parts["matmuls"])
    profile_step.main(["--hidden", "8", "--batch", "1", "--ensemble", "2", "--repeats", "1"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x8 ")]
    assert len(table) == 1 and table[0].count("|") == 9


def test_rpusim_bench_algorithms_adds_a_row_per_algorithm(monkeypatch):
    from rpusim import bench

    made = []

    def fake_step(hidden, layers, batch, preset="", lr=1.0, device="cpu", overrides=None):
        made.append((hidden, batch, (overrides or {}).get("algorithm")))
        return lambda: None

    monkeypatch.setattr(bench, "torch_step", fake_step)
    monkeypatch.setattr(bench, "rpusim_step", fake_step)
    result = bench.run(quick=True, seconds=0.001, rounds=1, log=lambda s: None, algorithms=True)
    rows = {(r["impl"], r["batch"]) for r in result["rows"]}
    for name in bench.algorithm_rows():
        assert (f"alg:{name}", 1) in rows and (f"alg:{name}", 32) in rows
    assert "sgd" not in bench.algorithm_rows() and "c_ttv2" in bench.algorithm_rows()
    assert {(128, 1, "agad"), (128, 32, "mixed_precision")} <= set(made)


def test_update_parts_times_each_tile_of_a_real_step(capsys):
    update_parts = load("update_parts")
    tiles = update_parts.recorded_pairs(steps=1, hidden=8)
    assert [tuple(t.weights.shape) for t, _, _ in tiles] == [(32, 96), (32, 17), (87, 9)]
    tile, x, d = tiles[0]
    p = update_parts.parts(tile, x, d, repeats=1)
    assert all(p[k] > 0 for k in ("pass 1", "pass 2", "update"))
    assert p["rows fired"] <= d.shape[1] and 0 <= p["one slot"] <= 1
    update_parts.main(["--steps", "1", "--hidden", "8", "--repeats", "1"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert len(table) == 4 and all(line.count("|") == 10 for line in table)


def test_bench_records_the_cpu_model(monkeypatch, tmp_path):
    from rpusim import bench

    cpu = bench.machine()["cpu"]
    assert isinstance(cpu, str) and cpu and "\n" not in cpu
    # Read from /proc/cpuinfo's "model name" where there is one.
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000 @ 3.0GHz\nflags\t\t: fpu\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k),
    )
    assert bench.cpu_model() == "Some CPU 9000 @ 3.0GHz"


def test_ab_versions_runs_another_source_tree_beside_this_one(capsys, tmp_path, monkeypatch):
    """The A/B script imports a second copy of rpusim as ``rpusim_old`` (every import of it,
    the device registry's too, from the copy) and prints a row per quarter of the run."""
    import sys

    ab = load("ab_versions")
    monkeypatch.setattr(sys, "path", list(sys.path))
    old_bench = ab.import_old(ROOT / "src", tmp_path)
    from rpusim_old import devices as old_devices

    assert Path(old_bench.__file__).is_relative_to(tmp_path)
    model = old_devices.MODELS["constant_step"]
    assert model.__name__.startswith("rpusim_old.")
    assert Path(model.__file__).is_relative_to(tmp_path)
    with pytest.raises(SystemExit, match="--old"):
        ab.import_old(tmp_path / "nowhere", tmp_path / "x")
    argv = ["--old", str(ROOT / "src"), "--steps", "4", "--block", "1", "--hidden", "8"]
    ab.main([*argv, "--preset", "ideal"])  # float tiles: none of the copy's kernels to compile
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4 + 1 and rows[-1].startswith("| all |")
