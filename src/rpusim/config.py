"""One typed configuration tree for rpusim: device, periphery (forward/backward), update, run.

Every section is a frozen pydantic model that rejects unknown keys and wrong types. Values are
addressed by dotted names (``device.up_down``, ``forward.inp_bits``) in overrides, YAML files and
on the command line. Errors are raised as :class:`ConfigError` with one line that names the key and
what is allowed.

Defaults are the "RPU baseline" of ``docs/model.md`` (Gokmen & Haensch 2016 / Gokmen, Rasch &
Haensch 2018, constant-step device, BL 10).
"""

from __future__ import annotations

import difflib
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from rpusim.devices import MODELS, AnyDeviceConfig
from rpusim.devices.constant_step import ConstantStepConfig
from rpusim.devices.presets import DEVICE_PRESETS, preset_section
from rpusim.schema import ConfigError, Section

_Section = Section


# ---------------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------------


#: The constant-step device's config (the paper's device; ``rpu.device`` by default). Every
#: device model's config lives beside its physics in :mod:`rpusim.devices`.
DeviceConfig = ConstantStepConfig


# ---------------------------------------------------------------------------------------------
# Periphery
# ---------------------------------------------------------------------------------------------


class IOConfig(_Section):
    """Periphery of one read direction: noise/bound management, DAC, output noise, ADC."""

    inp_bits: int | None = Field(7, ge=2, le=24, description="DAC bits (null: no quantization)")
    out_bits: int | None = Field(9, ge=2, le=24, description="ADC bits (null: no quantization)")
    inp_bound: float | None = Field(1.0, gt=0, description="DAC input range (null: no clip)")
    out_bound: float | None = Field(12.0, gt=0, description="ADC output range (null: no clip)")
    out_noise: float = Field(0.06, ge=0, description="output noise std, in weight units")
    inp_sto_round: bool = Field(False, description="stochastic rounding in the DAC")
    noise_management: Literal["abs_max", "none"] = Field(
        "abs_max",
        description="scale each input vector by its largest absolute value before the DAC",
    )
    bound_management: Literal["iterative", "none"] = Field(
        "iterative",
        description="read saturated rows again with the input halved, up to max_bm_factor",
    )
    max_bm_factor: int = Field(1024, ge=1, description="largest input down-scaling of bound mgmt")

    @model_validator(mode="after")
    def _converters_need_ranges(self) -> IOConfig:
        if self.inp_bits is not None and self.inp_bound is None:
            raise ValueError("inp_bits needs a finite inp_bound (set inp_bound or inp_bits: null)")
        if self.out_bits is not None and self.out_bound is None:
            raise ValueError("out_bits needs a finite out_bound (set out_bound or out_bits: null)")
        return self


class BackwardIOConfig(IOConfig):
    """Backward periphery. Bound management is off by default here [choice, as aihwkit]."""

    bound_management: Literal["iterative", "none"] = Field(
        "none", description="read saturated rows again with the input halved, up to max_bm_factor"
    )


# ---------------------------------------------------------------------------------------------
# Update
# ---------------------------------------------------------------------------------------------


class UpdateConfig(_Section):
    """How ``W <- W - lr * d^T x`` reaches the devices."""

    mode: Literal["pulsed", "float"] = Field(
        "pulsed", description="pulsed: stochastic pulse coincidences; float: exact SGD step"
    )
    bl: int = Field(10, ge=1, le=64, description="pulse train length (BL_max with bl_management)")
    update_management: bool = Field(
        True, description="balance the pulse probabilities of x and d (same expected update)"
    )
    bl_management: bool = Field(
        False, description="shorten the pulse train of pairs that need few coincidences"
    )
    um_clip: Literal["both", "d_only"] = Field(
        "both",
        description="when lr max(abs x) max(abs d) / dw_min exceeds BL: both trains saturate "
        "(balanced) or only d's (x kept exact, as aihwkit 1.2)",
    )
    pair_order: Literal["time", "reverse"] = Field(
        "time",
        description="order of one update's pairs: time order, or reversed (last pair first, "
        "as aihwkit's autograd stores an LSTM's steps)",
    )


# ---------------------------------------------------------------------------------------------
# Learning algorithms (``rpu.algorithm``; docs/model.md section 8, rpusim/algorithms/)
# ---------------------------------------------------------------------------------------------


#: The learning algorithms ``rpu.algorithm`` names (each in :mod:`rpusim.algorithms`).
ALGORITHMS = ("sgd", "tiki_taka", "ttv2", "c_ttv2", "agad", "mixed_precision")


class TransferIOConfig(IOConfig):
    """Periphery of the transfer read of a column of ``A`` (one-hot input); as the reference
    simulator's presets: no noise or bound management, the read's converters and noise on."""

    noise_management: Literal["abs_max", "none"] = Field(
        "none", description="scale each input vector by its largest absolute value before the DAC"
    )
    bound_management: Literal["iterative", "none"] = Field(
        "none", description="read saturated rows again with the input halved, up to max_bm_factor"
    )


class TikiTakaConfig(_Section):
    """Tiki-Taka v1 (Gokmen & Haensch 2020): fast array ``A``, slow array ``C``, ``W = gamma A +
    C``; the gradient is written onto ``A``, columns of ``A`` are read and written into ``C``."""

    gamma: float = Field(0.0, ge=0, description="weight of A in every read: W = gamma A + C")
    transfer_every: int = Field(
        1,
        ge=1,
        description="a transfer after every this many pairs (update calls: units_in_mbatch)",
    )
    units_in_mbatch: bool = Field(
        True, description="count transfer_every in update calls (mini-batches), not in pairs"
    )
    n_reads_per_transfer: int = Field(
        1, ge=1, description="columns of A read per transfer, taken in turn (cyclically)"
    )
    transfer_lr: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="learning rate of the transfer into C"
    )
    scale_transfer_lr: bool = Field(
        True, description="multiply transfer_lr by the current learning rate"
    )
    fast_lr: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="learning rate of the gradient write onto A"
    )
    scale_fast_lr: bool = Field(True, description="multiply fast_lr by the current learning rate")
    with_reset_prob: float = Field(
        0.0, ge=0, le=1, description="probability that a column of A is set to 0 after its transfer"
    )


class TTv2Config(TikiTakaConfig):
    """Tiki-Taka v2 (Gokmen 2021): each read column is accumulated in a digital buffer ``H`` (in
    pulses of C); where ``|H| >= 1`` the integer part goes to ``C`` as single pulses."""

    buffer_granularity: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="buffer threshold in units of device.dw_min (one pulse of C per threshold)",
    )
    momentum: float = Field(
        0.1, ge=0, lt=1, description="fraction of the buffer kept after a transfer (momentum)"
    )
    forget_buffer: bool = Field(
        True,
        description="after pulses, H <- momentum H (forget); else H <- H - (1 - momentum) n",
    )
    max_pulses: int = Field(
        1, ge=1, le=64, description="most pulses one buffer entry sends to C per transfer"
    )
    auto_scale: bool = Field(
        False,
        description="fast lr x bl dw_min / (x_max d_max); running maxima of abs(x), abs(d)",
    )
    auto_momentum: float = Field(
        0.99, ge=0, lt=1, description="momentum of the running maxima of auto_scale"
    )


class ChoppedTTv2Config(TTv2Config):
    """Chopped TTv2 (Rasch et al. 2024): TTv2 with a random sign per column (chopper) on the
    gradient written onto ``A``, undone when the column is read."""

    units_in_mbatch: bool = Field(
        False, description="count transfer_every in update calls (mini-batches), not in pairs"
    )
    scale_fast_lr: bool = Field(False, description="multiply fast_lr by the current learning rate")
    momentum: float = Field(
        0.0, ge=0, lt=1, description="fraction of the buffer kept after a transfer (momentum)"
    )
    in_chop_prob: float = Field(
        0.1, ge=0, le=1, description="probability that a column's chopper switches after its read"
    )
    in_chop_random: bool = Field(
        True, description="switch at random; else regularly every 1/in_chop_prob reads (>= 2)"
    )


class AGADConfig(ChoppedTTv2Config):
    """AGAD (Rasch et al. 2024): chopped TTv2 without a reference: the buffer takes each read
    minus the column's mean read over the previous chopper period."""

    in_chop_random: bool = Field(
        False, description="switch at random; else regularly every 1/in_chop_prob reads (>= 2)"
    )


class MixedPrecisionConfig(_Section):
    """Mixed precision (Nandakumar et al. 2020): the gradient is accumulated in a digital matrix
    ``chi``; devices where ``|chi|`` exceeds the granularity get that many pulses."""

    transfer_every: int = Field(
        1, ge=1, description="a transfer (chi to the array) after every this many pairs"
    )
    granularity: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="weight per pulse (0: device.dw_min)"
    )
    max_pulses: int = Field(
        64, ge=1, le=1024, description="most pulses one device receives per transfer"
    )


# ---------------------------------------------------------------------------------------------
# Mapping of a layer's weights onto the devices
# ---------------------------------------------------------------------------------------------


class MappingConfig(_Section):
    """How a layer's weights map onto the device range (``docs/model.md``, weight scaling)."""

    weight_scaling: Literal["none", "tile", "column"] = Field(
        "none",
        description="digital output scale fixed when a layer's weights are first programmed: "
        "none (weights are conductances), one per tile, or one per output column",
    )
    weight_scaling_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="fraction of the device range (min of w_max, -w_min) the initial "
        "largest abs(w) maps to",
    )


# ---------------------------------------------------------------------------------------------
# The tile's configuration
# ---------------------------------------------------------------------------------------------


class RPUConfig(_Section):
    """Configuration of one analog tile: ``device``, ``forward``, ``backward``, ``update``,
    ``mapping``.

    >>> cfg = RPUConfig.preset("rpu_baseline").override({"device.up_down": 0.02})
    """

    device: AnyDeviceConfig = ConstantStepConfig()
    forward: IOConfig = IOConfig()
    backward: BackwardIOConfig = BackwardIOConfig()
    update: UpdateConfig = UpdateConfig()
    algorithm: Literal[ALGORITHMS] = Field(
        "sgd", description="how the tile learns (docs/model.md section 8); sgd: the pulsed update"
    )
    tiki_taka: TikiTakaConfig = TikiTakaConfig()
    ttv2: TTv2Config = TTv2Config()
    c_ttv2: ChoppedTTv2Config = ChoppedTTv2Config()
    agad: AGADConfig = AGADConfig()
    mixed_precision: MixedPrecisionConfig = MixedPrecisionConfig()
    transfer_forward: TransferIOConfig = TransferIOConfig()
    mapping: MappingConfig = MappingConfig()

    @model_validator(mode="after")
    def _algorithm_is_pulsed(self) -> RPUConfig:
        if self.algorithm != "sgd" and self.update.mode != "pulsed":
            raise ValueError(
                f"algorithm {self.algorithm} writes pulses: it needs update.mode pulsed"
            )
        return self

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> RPUConfig:
        """A named configuration: ``rpu_baseline`` (the defaults) or ``ideal`` (a float tile)."""
        if name not in PRESETS:
            raise ConfigError(f"preset {name!r}: unknown; choose one of {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, prefix: str = "") -> RPUConfig:
        """Validate a nested dict; unknown keys and wrong types raise :class:`ConfigError`."""
        return validate(cls, data, prefix=prefix)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RPUConfig:
        """Read a YAML file written by :meth:`to_yaml` (or by hand)."""
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_yaml(self, path: str | Path) -> None:
        dump_yaml(self.to_dict(), path)

    def override(self, changes: dict[str, Any], *, prefix: str = "") -> RPUConfig:
        """A copy with dotted keys replaced, e.g. ``{"forward.inp_bits": 5}``."""
        return type(self).from_dict(apply_overrides(self.to_dict(), changes, prefix), prefix=prefix)


_IDEAL_IO = {
    "inp_bits": None,
    "out_bits": None,
    "inp_bound": None,
    "out_bound": None,
    "out_noise": 0.0,
    "inp_sto_round": False,
    "noise_management": "none",
    "bound_management": "none",
}

PRESETS: dict[str, dict[str, Any]] = {
    "rpu_baseline": {},
    # The RPU baseline with every convention of the reference simulator (aihwkit 1.2) where
    # rpusim's default differs (docs/model.md, "rpusim and aihwkit").
    "rpu_baseline_aihwkit": {"update": {"um_clip": "d_only", "pair_order": "reverse"}},
    "ideal": {
        "device": {
            "dw_min_dtod": 0.0,
            "dw_min_std": 0.0,
            "up_down_dtod": 0.0,
            "w_max": None,
            "w_min": None,
            "w_max_dtod": 0.0,
            "w_min_dtod": 0.0,
        },
        "forward": dict(_IDEAL_IO),
        "backward": dict(_IDEAL_IO),
        "update": {"mode": "float"},
    },
}


# ---------------------------------------------------------------------------------------------
# Helpers shared by every configuration tree
# ---------------------------------------------------------------------------------------------


def validate(model: type[BaseModel], data: Any, *, prefix: str = "") -> Any:
    """``model.model_validate(data)`` with the first error turned into a one-line ConfigError."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_kind(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(model, err, prefix)) from None


def apply_overrides(tree: dict[str, Any], changes: dict[str, Any], prefix: str = "") -> dict:
    """Return a copy of ``tree`` with each dotted key of ``changes`` set (keys must exist)."""
    import copy

    out = copy.deepcopy(tree)
    for dotted, value in changes.items():
        if not isinstance(dotted, str) or not dotted:
            raise ConfigError(
                f"{short_repr(dotted)}: override keys are dotted names such as 'device.dw_min'"
            )
        node = out
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            where = prefix + ".".join(parts[: depth + 1])
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                raise ConfigError(f"{where}: unknown key{_suggest(part, options)}")
            if depth == len(parts) - 1:
                if depth >= 1 and parts[depth - 1] == "device" and part in ("kind", "preset"):
                    # The section as it was (the old kind) decides what the new one keeps.
                    reshaped = reshape_device(dict(node), part, value, where)
                    node.clear()
                    node.update(reshaped)
                else:
                    node[part] = value
            else:
                if not isinstance(node[part], dict):
                    raise ConfigError(f"{where}: is a value, not a section (no '.' after it)")
                node = node[part]
    return out


def reshape_device(section: dict[str, Any], changed: str, value: Any, where: str) -> dict:
    """A device section (as it was) after its ``preset`` or ``kind`` is set to ``value``.

    ``preset: NAME``: the published fit's values replace the whole section (keys set after it
    change them again). ``kind: NAME``: the new model's defaults, with the section's current
    values for the keys both models have; a key only the old model has is dropped where it holds
    its default, and kept (so that validation names it) where it was set.
    """
    if changed == "preset":
        if value is None:
            return {**section, "preset": None}
        if not isinstance(value, str) or value not in DEVICE_PRESETS:
            hint = _suggest(str(value), list(DEVICE_PRESETS))
            raise ConfigError(f"{where}: {value!r} is not a device preset{hint}")
        preset = preset_section(value)
        return {**MODELS[preset["kind"]].Config().model_dump(), **preset}
    if not isinstance(value, str) or value not in MODELS:
        return {**section, "kind": value}  # validation refuses it, naming the allowed kinds
    old = MODELS.get(section.get("kind", "constant_step"))
    old_defaults = old.Config().model_dump() if old is not None else {}
    new = MODELS[value].Config().model_dump()
    for key, current in section.items():
        if key in new or current != old_defaults.get(key, object()):
            new[key] = current
    new["kind"] = value
    if old is not None and value != old.KIND:
        new["preset"] = None  # the values no longer are that fit's
    return new


def _device_keys_first(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with any ``device.preset`` first and ``device.kind`` next: both reshape the
    section, so the other keys of one YAML mapping must land after them."""

    def rank(key: Any) -> int:
        text = str(key)
        return 0 if text.endswith("device.preset") else 1 if text.endswith("device.kind") else 2

    return dict(sorted(changes.items(), key=lambda item: rank(item[0])))


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value``; the value is read as YAML (``5``, ``null``, ``true``)."""
    if "=" not in text:
        raise ConfigError(
            f"--set {short_repr(text)}: expected key=value, e.g. rpu.device.up_down=0.02"
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except _DuplicateKey as err:
        raise ConfigError(f"--set {key.strip()}: {err.problem}") from None
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


#: The largest config or experiment file read (they are a few kB; this refuses a wrong file).
MAX_CONFIG_BYTES = 10 * 2**20


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice (PyYAML would silently keep the last)."""


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping: with the plain loader the
    last one wins silently, so an edit lower in a file can undo one above it unnoticed."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" then overriding a key is what merges are for
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key; construct_mapping refuses it
                    continue
                if duplicate:
                    raise _DuplicateKey(
                        None,
                        None,
                        f"key {short_repr(key)} appears twice in one mapping; keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with the safe loader; errors become one-line ConfigErrors.

    Only a regular file of at most ``MAX_CONFIG_BYTES`` is read (a FIFO would block forever,
    /dev/zero never ends), and a key given twice in one mapping is refused.
    """
    from rpusim.io import read_regular_file

    path = Path(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except ValueError as err:  # not a regular file, too large, or not UTF-8
        why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
        raise ConfigError(f"{path}: cannot read config file ({why}); give a YAML file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.__class__.__name__})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: line {err.problem_mark.line + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    return {} if data is None else data


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as YAML atomically (a kill leaves the old file or the new one)."""
    from rpusim.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to about ``width`` characters, for error messages.

    Built with reprlib, which stops at a few items and levels: the full repr of a YAML "billion
    laughs" value (aliases nested nine deep) would take gigabytes and hours to build.
    """
    text = _REPR.repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    if options:
        return f"; allowed: {', '.join(sorted(map(str, options)))}"
    return ""


def _fields_at(model: type[BaseModel], loc: tuple, device_kind: str | None = None) -> list[str]:
    """Names of the fields of the section that ``loc`` points into (a device section: those of
    ``device_kind``'s model)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        if part == "device" and device_kind in MODELS:
            ann = MODELS[device_kind].Config
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if current is None:
            break
    return list(getattr(current, "model_fields", {}) or [])


def _one_line(model: type[BaseModel], err: ValidationError, prefix: str) -> str:
    first = err.errors()[0]
    raw_loc = [p for p in first["loc"] if isinstance(p, str | int)]
    # A device section's loc names the model as a tag (device.linear_step.gamma_up): drop it.
    device_kind = None
    for i in range(len(raw_loc) - 1, 0, -1):
        if raw_loc[i - 1] == "device" and raw_loc[i] in MODELS:
            device_kind = raw_loc.pop(i)
    loc = tuple(raw_loc)
    key = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "config"
    kind = first["type"]
    value = first.get("input")
    if kind == "union_tag_invalid":  # an unknown device.kind
        tag = (first.get("ctx") or {}).get("tag", value)
        return f"{key}.kind: {tag!r} is not a device model; expected one of {', '.join(MODELS)}"
    if kind == "extra_forbidden":
        options = _fields_at(model, loc[:-1], device_kind)
        return f"{key}: unknown key{_suggest(str(loc[-1]), options)}"
    ctx = first.get("ctx") or {}
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ops = {
            "greater_than": ">",
            "greater_than_equal": ">=",
            "less_than": "<",
            "less_than_equal": "<=",
        }
        bound = next(iter(ctx.values()), "?")
        return f"{key}: {short_repr(value)} is out of range; it must be {ops[kind]} {bound}"
    if kind == "finite_number":
        return f"{key}: {short_repr(value)} is not allowed; give a finite number"
    if kind == "literal_error":
        return f"{key}: {short_repr(value)} is not allowed; expected {ctx.get('expected', '?')}"
    if kind == "value_error":
        msg = str(ctx.get("error", first["msg"]))
        return f"{key}: {msg}" if loc else f"{prefix.rstrip('.') or 'config'}: {msg}"
    if kind.endswith("_type") or kind in ("model_type", "dict_type"):
        want = kind.removesuffix("_type").replace("model", "mapping").replace("dict", "mapping")
        return f"{key}: expected {want}, got {_kind(value)} {short_repr(value)}"
    return f"{key}: {first['msg']}"


# ---------------------------------------------------------------------------------------------
# A training run: data, model, train and the tiles' RPU configuration
# ---------------------------------------------------------------------------------------------


_SPLIT_RULE = "three fractions (train, valid, test), each >= 0, that sum to 1"


class DataConfig(_Section):
    """Which text to model and how it is cut (see ``data.py``)."""

    corpus: str = Field("warpeace", min_length=1, description="shipped corpus name or file path")
    max_bytes: int | None = Field(
        None, ge=1, description="use only the first max_bytes bytes (null: all); vocab from all"
    )
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="contiguous train/valid/test fractions"
    )
    eval_chars: int | None = Field(
        None,
        ge=1,
        description="evaluate on the first eval_chars characters of valid and test (null: all)",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_from_list(cls, data: Any) -> Any:
        # YAML has no tuples: accept a list of three numbers.
        if isinstance(data, dict) and isinstance(data.get("split"), list | tuple):
            if len(data["split"]) != 3:
                raise ValueError(f"split {short_repr(data['split'])} must be {_SPLIT_RULE}")
            data = {**data, "split": tuple(data["split"])}
        return data

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> DataConfig:
        if any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(f"split {list(self.split)} must be {_SPLIT_RULE}")
        if self.split[0] == 0:
            raise ValueError(f"split {list(self.split)}: the train fraction must be above 0")
        return self


class ModelConfig(_Section):
    """The network: ``layers`` stacked LSTM layers of ``hidden`` units (LSTM<layers>-<hidden>)."""

    layers: int = Field(2, ge=1, le=8, description="stacked LSTM layers")
    hidden: int = Field(64, ge=1, description="units per LSTM layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between layers (digital)")


#: The devices ``train.device`` (and ``rpusim bench --device``) names.
DEVICE_NAME = re.compile(r"cpu|cuda(:[0-9]+)?")


class TrainConfig(_Section):
    """Plain SGD with truncated BPTT; the loss is the mean cross-entropy per character."""

    lr: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="SGD learning rate (mean loss per sequence)"
    )
    batch_size: int = Field(1, ge=1, description="parallel sequences per update")
    seq_len: int = Field(100, ge=1, description="BPTT length (time steps per update)")
    epochs: int = Field(1, ge=1, description="passes over the training split")
    max_chars: int | None = Field(
        None,
        ge=1,
        description="stop after this many training characters, rounded up to whole batches of "
        "seq_len x batch_size (null: epochs only)",
    )
    eval_every_chars: int = Field(
        100_000, ge=1, description="evaluate and checkpoint every this many training characters"
    )
    eval_batch_size: int = Field(
        16, ge=1, description="parallel streams when evaluating (batched reads are much faster)"
    )
    device: str = Field(
        "cpu", description="where the tiles live: cpu (numba twins) or cuda[:N] (Triton twins)"
    )
    lr_schedule: Literal["constant", "step", "exponential", "cosine"] = Field(
        "constant",
        description="the rate against characters trained: constant lr; step: x lr_gamma every "
        "lr_step_chars; exponential: the same, continuous; cosine: lr down to lr_min over the run "
        "(see rpusim/schedule.py)",
    )
    lr_gamma: float = Field(
        0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="step/exponential: the rate's factor per lr_step_chars characters",
    )
    lr_step_chars: int = Field(
        1_000_000, ge=1, description="step/exponential: characters per factor of lr_gamma"
    )
    lr_min: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="cosine: the rate at the run's end, 0 <= lr_min <= lr (the run: min(epochs "
        "x chars per epoch, max_chars rounded up to whole batches) characters)",
    )
    lr_warmup_chars: int = Field(
        0,
        ge=0,
        description="the rate rises linearly from 0 to lr over this many characters first; the "
        "schedule's decay starts after it",
    )

    @model_validator(mode="after")
    def _known_device(self) -> TrainConfig:
        if DEVICE_NAME.fullmatch(self.device) is None:
            raise ValueError(
                f"device {short_repr(self.device)} is not a device: use cpu, cuda or cuda:N"
            )
        return self

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainConfig:
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must be at most lr ({self.lr})")
        return self


class RunConfig(_Section):
    """Everything one training run depends on; ``config.yaml`` in a run folder is one of these.

    In YAML, ``rpu`` is a preset name (``rpu: ideal``), or a mapping with an optional
    ``preset: NAME`` and section overrides (``rpu: {preset: rpu_baseline, device: {up_down:
    0.02}}``), or a full tree. The resolved config always holds the full tree.

    >>> cfg = RunConfig.from_yaml("experiments/lstm2-64wp-rpu.yaml", ["train.lr=0.5"])
    """

    seed: int = Field(0, ge=0, description="seeds the tiles, the devices and every random stream")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    rpu: RPUConfig = RPUConfig()

    @classmethod
    def from_dict(cls, data: Any, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """Validate a (partial) nested dict, then apply ``key=value`` overrides in order.

        Missing keys take their defaults; unknown keys and wrong types raise a one-line
        :class:`ConfigError` that names the dotted key (and suggests the closest known one).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping of keys to values, got {_kind(data)}")
        tree = cls().to_dict()
        raw = dict(data)
        if "rpu" in raw:
            tree["rpu"] = _resolve_rpu(raw.pop("rpu"))
        tree = apply_overrides(tree, _numbers(_device_keys_first(dict(_flatten(raw, tree))), tree))
        for text in overrides:
            key, value = parse_assignment(text)
            if key == "rpu" or key == "rpu.preset":
                tree["rpu"] = _resolve_rpu(value if key == "rpu" else {"preset": value})
            else:
                tree = apply_overrides(tree, _numbers({key: value}, tree))
        return validate(cls, tree)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """Read a run config from YAML and apply ``--set key=value`` overrides."""
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values, got {_kind(data)}")
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The full tree as plain YAML/JSON types (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path) -> None:
        """Write the fully resolved tree (atomically)."""
        dump_yaml(self.to_dict(), path)

    def override(self, changes: list[str] | tuple[str, ...]) -> RunConfig:
        """A copy with ``key=value`` overrides applied (``["train.lr=0.5"]``)."""
        return type(self).from_dict(self.to_dict(), changes)


def add_override_option(parser: Any, help_text: str) -> None:
    """The ``--set KEY=VALUE`` option (repeatable) of an argparse ``parser``: dotted overrides
    of a run config, collected in order as ``args.overrides`` for :meth:`RunConfig.from_dict`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def add_threads_option(parser: Any, help_text: str) -> None:
    """The ``--threads N`` option (default 1) of every command that trains or runs a model."""
    parser.add_argument("--threads", type=int, default=1, metavar="N", help=help_text)


def config_keys(section: type[BaseModel] | None = None, prefix: str = "") -> list[dict[str, str]]:
    """Every leaf of a config tree (default: :class:`RunConfig`) with its dotted ``key``, its
    ``type`` (choices for a fixed set), its ``default`` (as YAML writes it) and ``description``.

    The ``rpu`` defaults are those of the ``rpu_baseline`` preset.
    """
    section = RunConfig if section is None else section
    rows = []
    for name, field in section.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += config_keys(kind, f"{prefix}{name}.")
            continue
        if name == "device" and section is RPUConfig:
            rows += _device_keys(f"{prefix}{name}.")
            continue
        text = kind.__name__ if isinstance(kind, type) else str(kind)
        if getattr(kind, "__origin__", None) is Literal:
            text = "one of " + ", ".join(map(str, kind.__args__))
        text = text.replace(" | None", " or null").replace("typing.", "")
        default = yaml.safe_dump(field.default, default_flow_style=True).strip()
        default = default.removesuffix("...").strip()
        rows.append(
            {
                "key": prefix + name,
                "type": text,
                "default": default,
                "description": field.description or "",
            }
        )
    return rows


def _device_keys(prefix: str) -> list[dict[str, str]]:
    """The device section's keys: every model's, each once (a model's own keys say which
    models have them, and show that model's default)."""
    rows, seen = [], set()
    for model in MODELS.values():
        for row in config_keys(model.Config, prefix):
            if row["key"] in seen:
                continue
            seen.add(row["key"])
            if row["key"] == prefix + "kind":
                row["type"] = "one of " + ", ".join(MODELS)
            if row["key"] == prefix + "preset":
                row["type"] = "null or one of " + ", ".join(DEVICE_PRESETS)
            rows.append(row)
    return rows


def _resolve_rpu(value: Any) -> dict[str, Any]:
    """The full ``rpu`` tree from a preset name, ``{preset: NAME, ...overrides}`` or a tree."""
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"rpu: expected a preset name ({', '.join(sorted(PRESETS))}) or a mapping, "
            f"got {_kind(value)} {short_repr(value)}"
        )
    value = dict(value)
    name = value.pop("preset", "rpu_baseline")
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"rpu.preset: {short_repr(name)} is unknown{_suggest(str(name)[:80], list(PRESETS))}"
        )
    base = RPUConfig.preset(name).to_dict()
    changes = _device_keys_first(dict(_flatten(value, base, "")))
    return apply_overrides(base, _numbers(changes, base), prefix="rpu.")


def _flatten(raw: dict[str, Any], defaults: dict[str, Any], prefix: str = ""):
    """Yield ``(dotted_key, value)`` for the leaves of ``raw``, following the sections of
    ``defaults`` (a mapping given where a value belongs stays one leaf, and is refused later)."""
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            yield from _flatten(value, defaults[key], dotted + ".")
        else:
            yield dotted, value


def _exponent_number(text: str) -> float | None:
    """``float(text)`` for exponent notation such as ``1e-3`` or ``5E5``; otherwise None."""
    t = text.strip().lower()
    if "e" not in t or not t or set(t) - set("0123456789.+-e"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _numbers(changes: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """Read ``1e-3`` as a number where a number (or null) belongs.

    YAML 1.1 (PyYAML) reads exponent notation without a dot (``1e-3``, ``5e5``) as a string;
    where the current value is a number or null, such a string is the number it spells.
    """
    out = {}
    for key, value in changes.items():
        number = _exponent_number(value) if isinstance(value, str) else None
        if number is not None:
            node: Any = tree
            for part in str(key).split("."):
                node = node.get(part, "") if isinstance(node, dict) else ""
            if node is None or (isinstance(node, int | float) and not isinstance(node, bool)):
                # An int where an int or null belongs (strict float fields accept ints too).
                whole = number.is_integer() and not isinstance(node, float)
                value = int(number) if whole else number
        out[key] = value
    return out
