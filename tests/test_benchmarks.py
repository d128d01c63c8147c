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
