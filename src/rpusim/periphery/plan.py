"""The periphery's settings as every implementation of a read takes them: one type.

A periphery config (:class:`rpusim.config.IOConfig`) says what the converters and the
management do in the user's terms (bits, bounds, ``noise_management: abs_max``). The read's
implementations need the same settings turned into flags and float32 constants: is there a clip,
what is ``1 / step``, is output noise drawn. :class:`ReadPlan` is that, made once per config
(:func:`plan_of`) and taken by all of them:

* the torch reference reads the config itself (it is the transcription of ``docs/model.md``);
* the Triton twin (:mod:`rpusim.periphery.triton`) passes the plan's fields as kernel arguments;
* the numba twin (:mod:`rpusim.periphery.numba`) and the fused LSTM loop
  (:mod:`rpusim.lstm_loop`) take :attr:`ReadPlan.record`: the same fields, by the same names, as
  one numpy record that compiled code reads (``p.dac.per_step``). A record array is unboxed by a
  compiled call as cheaply as any array (a Python tuple of 15 values, or a named tuple, costs
  several microseconds per call: a batch-1 read's worth of arithmetic).

Floats are the float32 values torch uses when it multiplies a float32 tensor by the config's
Python float: Python floats already rounded to float32 here, float32 in the record.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass

import numpy as np

from rpusim.config import IOConfig
from rpusim.twins import cached_by_identity


def converter_step(bits: int, bound: float) -> tuple[float, float]:
    """``(step, 1 / step)`` of an n-bit converter: ``2**bits - 1`` levels over ``[-bound, bound]``.

    ``step = 2 * bound / (2**bits - 2)``; both are applied as float32 constants.
    """
    levels = 2**bits - 2
    return 2.0 * bound / levels, levels / (2.0 * bound)


def f32(v: float) -> float:
    """``v`` rounded to float32, as a Python float."""
    return float(np.float32(v))


@dataclass(frozen=True)
class Converter:
    """A DAC or ADC: clip to ``[-bound, bound]``, then round onto the levels ``step * k``."""

    clip: bool  # clip to [-bound, bound]
    bound: float  # the bound (1.0 when there is none: then unused)
    quantize: bool  # round onto the levels
    per_step: float  # 1 / step (a converter multiplies by it rather than dividing by step)
    step: float  # the distance between levels (1.0 when there are none: then unused)

    @classmethod
    def of(cls, bits: int | None, bound: float | None) -> Converter:
        step, per_step = converter_step(bits, bound) if bits is not None else (1.0, 1.0)
        return cls(bound is not None, f32(bound or 1.0), bits is not None, f32(per_step), f32(step))


@dataclass(frozen=True)
class ReadPlan:
    """One direction's periphery (forward or backward read) as the implementations take it."""

    nm: bool  # noise management (abs_max): the input scaled by alpha = max|x|
    dac: Converter  # the input side's converter
    adc: Converter  # the output side's converter
    sto: bool  # stochastic rounding: draw u ~ U[0, 1) for each input of each read
    noise: bool  # output noise: draw N(0, 1) for each output of each read
    out_noise: float  # its standard deviation
    identity_input: bool  # no NM, no clip, no DAC: the array sees x itself (as the reference)
    bm: bool  # iterative bound management
    max_bm_factor: int  # the largest factor it divides an input by

    @classmethod
    def of(cls, io: IOConfig) -> ReadPlan:
        nm = io.noise_management == "abs_max"
        return cls(
            nm=nm,
            dac=Converter.of(io.inp_bits, io.inp_bound),
            adc=Converter.of(io.out_bits, io.out_bound),
            sto=io.inp_bits is not None and io.inp_sto_round,
            noise=io.out_noise > 0,
            out_noise=f32(io.out_noise),
            identity_input=not nm and io.inp_bound is None and io.inp_bits is None,
            bm=io.bound_management == "iterative" and io.out_bound is not None,
            max_bm_factor=io.max_bm_factor,
        )

    @functools.cached_property
    def record(self) -> np.ndarray:
        """The plan as a numpy record array of one element (dtype :data:`RECORD`) for compiled
        code: ``p = record[0]`` there, then ``p.nm``, ``p.dac.step``, ... as here."""
        out = np.zeros(1, RECORD)
        out[0] = _values(self)
        return out


_KINDS = {"bool": np.bool_, "float": np.float32, "int": np.int64}


def _dtype(cls: type) -> np.dtype:
    """The record dtype of a settings dataclass: its fields, in order, by name; ``bool`` ->
    bool, ``float`` -> float32, ``int`` -> int64, a nested settings class -> its record."""
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        fields.append(
            (field.name, _dtype(kind) if dataclasses.is_dataclass(kind) else _KINDS[kind.__name__])
        )
    return np.dtype(fields, align=True)


def _values(obj) -> tuple:
    """A settings dataclass's values as the nested tuple a record of its dtype is set from."""
    return tuple(
        _values(v) if dataclasses.is_dataclass(v) else v
        for v in (getattr(obj, f.name) for f in dataclasses.fields(obj))
    )


#: The numpy record dtype of :class:`ReadPlan` (fields by the same names, nested converters).
RECORD = _dtype(ReadPlan)

#: The plan of a periphery config (a config object is read thousands of times).
plan_of = cached_by_identity(ReadPlan.of)

__all__ = ["RECORD", "Converter", "ReadPlan", "converter_step", "plan_of"]
