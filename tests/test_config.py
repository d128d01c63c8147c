"""The configuration tree: presets, dotted overrides, YAML round trips, one-line errors."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rpusim.config import ConfigError, RPUConfig


def test_baseline_defaults_are_the_rpu_model():
    cfg = RPUConfig.preset("rpu_baseline")
    d = cfg.device
    assert (d.dw_min, d.dw_min_dtod, d.dw_min_std, d.up_down, d.up_down_dtod) == (
        0.001,
        0.3,
        0.3,
        0.0,
        0.01,
    )
    assert (d.w_max, d.w_min, d.w_max_dtod, d.w_min_dtod) == (0.6, -0.6, 0.3, 0.3)
    f = cfg.forward
    assert (f.inp_bits, f.out_bits, f.inp_bound, f.out_bound, f.out_noise) == (
        7,
        9,
        1.0,
        12.0,
        0.06,
    )
    assert f.noise_management == "abs_max" and f.bound_management == "iterative"
    assert cfg.update.mode == "pulsed" and cfg.update.bl == 10 and cfg.update.update_management
    assert cfg == RPUConfig()


def test_ideal_preset_is_a_float_tile():
    cfg = RPUConfig.preset("ideal")
    assert cfg.update.mode == "float"
    assert cfg.device.w_max is None and cfg.device.w_min is None
    for io in (cfg.forward, cfg.backward):
        assert io.inp_bits is None and io.out_bits is None and io.out_noise == 0
        assert io.noise_management == "none" and io.bound_management == "none"


def test_override_by_dotted_key_returns_a_new_config():
    base = RPUConfig.preset("rpu_baseline")
    cfg = base.override({"device.up_down": 0.02, "forward.inp_bits": 5})
    assert cfg.device.up_down == 0.02 and cfg.forward.inp_bits == 5
    assert base.device.up_down == 0.0  # the original is untouched


@pytest.mark.parametrize("name", ["rpu_baseline", "ideal"])
def test_yaml_round_trip_is_exact(tmp_path, name):
    cfg = RPUConfig.preset(name).override({"backward.inp_sto_round": True})
    path = tmp_path / "rpu.yaml"
    cfg.to_yaml(path)
    assert RPUConfig.from_yaml(path) == cfg
    assert RPUConfig.from_yaml(path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"device.dw_mn": 0.1}, "device.dw_mn: unknown key; did you mean 'dw_min'?"),
        ({"device.dw_min": -1.0}, "device.dw_min: -1.0 is out of range"),
        ({"forward.out_noise": -0.1}, "forward.out_noise: -0.1 is out of range"),
        ({"forward.inp_bits": 0}, "forward.inp_bits: 0 is out of range"),
        ({"forward.inp_bits": "5"}, "forward.inp_bits: expected int"),
        ({"update.mode": "pulse"}, "update.mode: 'pulse' is not allowed"),
        ({"update.bl": 1.5}, "update.bl: expected int"),
        ({"device.w_min": 0.0}, "device.w_min: 0.0 is out of range; it must be < 0"),
        ({"device.w_max": 0.0}, "device.w_max: 0.0 is out of range; it must be > 0"),
        ({"forward.inp_bound": None}, "inp_bits needs a finite inp_bound"),
        ({"forward": 3}, "forward: expected mapping"),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_key(changes, expected):
    with pytest.raises(ConfigError) as info:
        RPUConfig().override(changes)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_section_and_key_in_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("devic:\n  dw_min: 0.1\n")
    with pytest.raises(ConfigError, match=r"^devic: unknown key; did you mean 'device'\?$"):
        RPUConfig.from_yaml(path)
    path.write_text("device: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RPUConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="no such config file"):
        RPUConfig.from_yaml(tmp_path / "missing.yaml")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset 'idael': unknown"):
        RPUConfig.preset("idael")


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
_keys = st.sampled_from(
    [
        f"{s}.{k}"
        for s, model in [
            ("device", RPUConfig().device),
            ("forward", RPUConfig().forward),
            ("backward", RPUConfig().backward),
            ("update", RPUConfig().update),
        ]
        for k in type(model).model_fields
    ]
    + ["device.nope", "forward", "x.y.z", "update.bl.x"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=4))
def test_fuzzed_overrides_either_validate_or_fail_in_one_line(changes):
    try:
        cfg = RPUConfig().override(changes)
    except ConfigError as err:
        msg = str(err)
        assert msg and "\n" not in msg and ":" in msg
        return
    # Whatever was accepted survives a YAML round trip unchanged.
    assert RPUConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


# -- the run config loader, fuzzed through YAML text -----------------------------------------------

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=6)
)
_run_keys = st.sampled_from(
    [
        "seed",
        "data",
        "model",
        "train",
        "rpu",
        "corpus",
        "hidden",
        "lr",
        "layers",
        "dropout",
        "device",
        "forward",
        "preset",
        "epochs",
        "batch_size",
        "split",
        "max_chars",
        "dw_min",
    ]
)
_trees = st.recursive(
    _leaf,
    lambda inner: st.dictionaries(_run_keys, inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_trees, st.lists(st.tuples(_run_keys, _run_keys, _leaf), max_size=2))
def test_fuzzed_run_configs_load_or_fail_in_one_line(tmp_path_factory, tree, sets):
    from rpusim.config import RunConfig

    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    overrides = [f"{a}.{b}={yaml.safe_dump(v).splitlines()[0]}" for a, b, v in sets]
    try:
        cfg = RunConfig.from_yaml(path, overrides)
    except ConfigError as err:
        msg = str(err)
        assert msg and "\n" not in msg
        return
    again = tmp_path_factory.mktemp("fuzz") / "again.yaml"
    cfg.to_yaml(again)
    assert RunConfig.from_yaml(again) == cfg
