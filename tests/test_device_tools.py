"""`rpusim config --presets` and `rpusim device fit`: the preset list, the fit of a known device,
the example table, and one-line errors for bad tables."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rpusim.cli import main, presets_markdown
from rpusim.config import PRESETS, RunConfig
from rpusim.devices import piecewise_step
from rpusim.devices.fit import read_table
from rpusim.devices.ops import TORCH, bind
from rpusim.devices.presets import DEVICE_PRESETS, NOT_MODELLED, SOURCES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "devices" / "crosssim_ramp1.csv"

UP = [1.5, 1.2, 1.0, 0.6, 0.3]
DOWN = [0.4, 0.8, 1.0, 1.1, 1.4]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def piecewise_table(
    path, up=UP, down=DOWN, dw_min=0.01, std=0.0, cycles=1, w_min=-1.0, w_max=1.0, g0=3.0, seed=0
):
    """A pulse-response table of one piecewise-step device (the model's own response, float64,
    clipped at its bounds): from w_min, up pulses until w_max, then down until w_min, ``cycles``
    times; the values are conductances ``1e-4 (w + g0)`` (linear in the weight)."""
    step = bind(piecewise_step.step, TORCH)
    cfg = piecewise_step.Config(
        dw_min=dw_min, w_min=w_min, w_max=w_max, piecewise_up=up, piecewise_down=down
    )
    c = torch.tensor(piecewise_step.consts(cfg), dtype=torch.float64)
    c[0] = std  # the cycle-to-cycle spread
    p = torch.tensor([dw_min, dw_min, 1.0 / (w_max - w_min)], dtype=torch.float64)
    hi, lo = torch.tensor(w_max, dtype=torch.float64), torch.tensor(w_min, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    w = lo.clone()
    rows = [(0, w.item(), "up")]
    for _ in range(cycles):
        for direction, bound in (("up", hi), ("down", lo)):
            is_up = torch.tensor(direction == "up")
            while w.item() != bound.item():
                z = torch.tensor(rng.standard_normal(), dtype=torch.float64)
                w = step(w, is_up, hi, lo, p, c, z).clamp(lo, hi)
                rows.append((len(rows), w.item(), direction))
    lines = ["pulse,conductance_S,direction"]
    lines += [f"{n},{1e-4 * (v + g0)!r},{d}" for n, v, d in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def fitted_device(capsys, table, *extra):
    rc, out, err = run_cli(["device", "fit", table, *extra], capsys)
    assert rc == 0, err
    cfg = RunConfig.from_dict(yaml.safe_load(out))
    return cfg.rpu.device, out


def test_fit_recovers_the_nodes_of_a_noiseless_device(tmp_path, capsys):
    table = piecewise_table(tmp_path / "dev.csv")
    dev, out = fitted_device(capsys, table, "--nodes", 5)
    assert dev.kind == "piecewise_step" and (dev.w_min, dev.w_max) == (-1.0, 1.0)
    # The step sizes (dw_min x node) are the device's; dw_min is the mean step.
    np.testing.assert_allclose(
        np.multiply(dev.piecewise_up, dev.dw_min), np.multiply(UP, 0.01), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.multiply(dev.piecewise_down, dev.dw_min), np.multiply(DOWN, 0.01), rtol=1e-5
    )
    assert dev.dw_min_std < 1e-6
    assert dev.dw_min_dtod == dev.up_down_dtod == dev.w_max_dtod == dev.w_min_dtod == 0.0
    assert "one device measured" in out


def test_fit_measures_the_cycle_to_cycle_spread(tmp_path, capsys):
    table = piecewise_table(tmp_path / "noisy.csv", std=0.2, cycles=6, seed=3)
    dev, _ = fitted_device(capsys, table, "--nodes", 5)
    assert dev.dw_min_std == pytest.approx(0.2, rel=0.15)
    np.testing.assert_allclose(
        np.multiply(dev.piecewise_up, dev.dw_min), np.multiply(UP, 0.01), rtol=0.15
    )


def test_fit_maps_onto_the_given_weight_range_and_writes_out(tmp_path, capsys):
    out_file = tmp_path / "sub" / "device.yaml"
    args = ["device", "fit", EXAMPLE, "--w-min", "-0.6", "--w-max", "0.6", "--out", out_file]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    assert str(out_file) in out
    dev = RunConfig.from_yaml(out_file).rpu.device
    assert (dev.w_min, dev.w_max) == (-0.6, 0.6)
    assert len(dev.piecewise_up) == len(dev.piecewise_down) == 8
    # The example table spans about 170 mean steps.
    assert 100 < (dev.w_max - dev.w_min) / dev.dw_min < 300


def test_example_table_reads_as_one_cycle():
    table = read_table(EXAMPLE)
    assert len(table.pulse) == 340
    assert table.up.sum() == 190 and (~table.up).sum() == 150
    assert table.up[:190].all()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("pulse,value,direction\n", "no rows"),
        ("pulse,value\n1,2\n", "names 2 columns"),
        ("pulse,value,kind\n1,2,up\n", "no direction column"),
        ("n,value,direction\n1,2,up\n2,3\n", ":3: expected 3 columns"),
        ("1,0.5,up\n2,abc,up\n3,0.7,down\n", "value 'abc' is not a finite number"),
        ("1,0.5,up\n2,nan,up\n3,0.7,down\n", "value 'nan' is not a finite number"),
        ("1,0.5,up\n2,0.6,sideways\n", "direction 'sideways' is not up or down"),
        ("1,0.5,up\n2,0.6,up\n3,0.7,up\n", "has no down pulses"),
        ("1,0.7,down\n2,0.6,down\n3,0.5,down\n", "has no up pulses"),
        ("1,0.5,up\n2,0.5,up\n3,0.5,down\n", "a device must move"),
        ("1,0.5,up\n1,0.6,up\n3,0.5,down\n", "pulse numbers must increase"),
    ],
)
def test_bad_tables_are_refused_in_one_line(tmp_path, capsys, content, fragment):
    table = tmp_path / "bad.csv"
    table.write_text(content)
    rc, out, err = run_cli(["device", "fit", table], capsys)
    assert rc == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpusim: error: "), err
    assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nodes", "0"], "--nodes 0: give 1 to 64"),
        (["--w-min", "0.5"], "give w_min < 0 < w_max"),
    ],
)
def test_bad_fit_options_are_refused_in_one_line(capsys, args, fragment):
    rc, _, err = run_cli(["device", "fit", EXAMPLE, *args], capsys)
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_missing_table_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(["device", "fit", tmp_path / "nope.csv"], capsys)
    assert rc == 2 and "nope.csv" in err and len(err.strip().splitlines()) == 1


def test_config_presets_lists_every_preset_with_its_source(capsys):
    rc, out, _ = run_cli(["config", "--presets"], capsys)
    assert rc == 0
    for name, values in DEVICE_PRESETS.items():
        row = next(line for line in out.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {values['kind']} |" in row and SOURCES[name] in row
        assert NOT_MODELLED.get(name, "–") in row
    for name in PRESETS:
        assert f"| `{name}` |" in out
    assert "| 1,481 |" in out  # reram_es: 2 / 0.00135 states
    assert "gamma_up 0.1153" in out  # ecram's model parameters


def test_docs_model_md_holds_the_device_preset_table():
    """docs/model.md's preset table is the one `rpusim config --presets` prints."""
    text = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    rows = [line for line in presets_markdown().splitlines() if line.startswith("| `")]
    assert rows
    missing = [row for row in rows if row not in text]
    assert not missing, f"docs/model.md lacks (rerun rpusim config --presets): {missing}"
