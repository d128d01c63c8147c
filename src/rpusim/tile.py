"""AnalogTile: one crossbar array with its periphery and its devices.

The tile owns the weights ``W`` (out, in), one device per element, and three random streams fixed
by its seed: the device-to-device draw (once, at construction), the read noise of the forward and
backward periphery, and the update pulses. It knows nothing about layers or training.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rpusim.algorithms import make_algorithm
from rpusim.config import RPUConfig
from rpusim.devices import DeviceArrays, consts, sample_devices
from rpusim.periphery import analog_mvm
from rpusim.seeds import child_seed

_STREAM_DEVICES, _STREAM_FORWARD, _STREAM_BACKWARD, _STREAM_UPDATE = range(4)


def _stream_seed(seed: int, stream: int, counter: int = 0) -> int:
    """The seed of one of the tile's streams (``counter``: the update call, for the pulses)."""
    return child_seed(seed, stream, counter)


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(_stream_seed(seed, stream))
    return gen


def _refuse_grad(v: Any, what: str) -> None:
    if torch.is_grad_enabled() and torch.is_tensor(v) and v.requires_grad:
        raise RuntimeError(
            f"AnalogTile.{what}: the input requires grad, but a tile read is not differentiable "
            "(its gradient would be wrong); use rpusim.nn (AnalogLinear, AnalogConv2d, "
            "AnalogLSTM), whose backward is the tile's backward read, or pass x.detach()"
        )


class AnalogTile:
    """A crossbar of ``out_size x in_size`` resistive devices and its periphery.

    >>> tile = AnalogTile(4, 3, RPUConfig.preset("rpu_baseline"), seed=0)
    >>> y = tile.forward(torch.ones(2, 3))            # (batch, in) -> (batch, out)
    >>> z = tile.backward(torch.ones(2, 4))           # (batch, out) -> (batch, in)
    >>> tile.update(torch.ones(5, 3), torch.ones(5, 4), lr=0.01)   # K = 5 rank-1 updates

    The same seed gives bit-identical results; all randomness comes from generators it fixes.

    Leading dimensions are kept: ``(..., in) -> (..., out)``, flattened row-major into reads.
    The tile is not differentiable: an input that requires grad is refused (``rpusim.nn``'s
    layers take the gradient through the backward read). With ``mapping.weight_scaling`` the
    tile holds a fixed digital output scale ``s`` (one per tile or per output): the weights a
    layer sees are ``s * W`` (``get_weights`` / ``set_weights``), the forward read's output is
    multiplied by ``s`` after the ADC, the backward read's input ``d`` by ``s`` before the DAC, and
    the update's ``d`` is divided by ``s`` (see ``docs/model.md``).
    """

    def __init__(
        self,
        out_size: int,
        in_size: int,
        cfg: RPUConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not (isinstance(out_size, int) and isinstance(in_size, int)):
            raise TypeError("AnalogTile: out_size and in_size must be ints")
        if out_size < 1 or in_size < 1:
            raise ValueError(f"AnalogTile: shape ({out_size}, {in_size}) must be positive")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"AnalogTile: seed must be a non-negative int, got {seed!r}")
        self.cfg = cfg if cfg is not None else RPUConfig()
        self.out_size, self.in_size, self.seed = out_size, in_size, seed
        self.device = torch.device(device)

        d2d = torch.Generator().manual_seed(_stream_seed(seed, _STREAM_DEVICES))
        self._dev: DeviceArrays = sample_devices(self.cfg.device, out_size, in_size, d2d).to(
            self.device
        )
        self._w = torch.zeros(out_size, in_size, dtype=torch.float32, device=self.device)
        self._gen_forward = _generator(seed, _STREAM_FORWARD, self.device)
        self._gen_backward = _generator(seed, _STREAM_BACKWARD, self.device)
        self._update_count = 0
        #: How the tile learns (``rpu.algorithm``); owns any further arrays (rpusim.algorithms).
        self.algorithm = make_algorithm(self)
        #: The digital output scale (out,) of ``mapping.weight_scaling``; ``None``: none.
        self._out_scale: torch.Tensor | None = None
        self._warned_float64 = False

    # -- weights ---------------------------------------------------------------------------------

    def set_weights(self, weights: torch.Tensor, remap: bool = False) -> int:
        """Program ``weights`` (out, in); each value is clipped to its device's bounds.

        With ``mapping.weight_scaling`` (``tile`` or ``column``) the values are divided by the
        digital output scale first; ``remap=True`` (or the first call) fixes that scale from
        these weights: their largest ``|w|`` (of the tile, or of each output) maps to
        ``mapping.weight_scaling_fraction`` of the device range ``min(w_max, -w_min)``.
        Returns how many values were clipped.
        """
        w = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        if w.shape != (self.out_size, self.in_size):
            raise ValueError(
                f"set_weights: expected shape ({self.out_size}, {self.in_size}), "
                f"got {tuple(w.shape)}"
            )
        if remap or (self._out_scale is None and self.cfg.mapping.weight_scaling != "none"):
            self._out_scale = self._mapping_scale(w)
        if self._out_scale is not None:
            w = w / self._out_scale.unsqueeze(1)
        clipped = torch.maximum(torch.minimum(w, self._dev.w_max), self._dev.w_min)
        self._w.copy_(clipped)
        self.algorithm.set_weights()
        return int((clipped != w).sum())

    def get_weights(self) -> torch.Tensor:
        """A copy of the weights, (out, in) float32 (times the output scale, if any)."""
        if self._out_scale is not None:
            return self._w * self._out_scale.unsqueeze(1)
        return self._w.clone()

    @property
    def weights(self) -> torch.Tensor:
        """The array itself, (out, in) float32 (not a copy; what the reads and updates use)."""
        return self._w

    @property
    def devices(self) -> DeviceArrays:
        """The devices of the array (per-device parameters, bounds, the model's constants)."""
        return self._dev

    @property
    def out_scale(self) -> torch.Tensor | None:
        """The digital output scale (out,) of ``mapping.weight_scaling``, or ``None``."""
        return None if self._out_scale is None else self._out_scale.clone()

    def _mapping_scale(self, w: torch.Tensor) -> torch.Tensor | None:
        """The output scale that maps ``w``'s range onto the devices' (``None``: no mapping,
        or devices without bounds)."""
        mapping, dev = self.cfg.mapping, self.cfg.device
        w_max, w_min = getattr(dev, "w_max", None), getattr(dev, "w_min", None)
        if mapping.weight_scaling == "none" or w_max is None or w_min is None:
            return None
        target = mapping.weight_scaling_fraction * min(float(w_max), -float(w_min))
        if mapping.weight_scaling == "tile":
            peak = w.abs().amax().expand(self.out_size)
        else:
            peak = w.abs().amax(dim=1)
        scale = peak / target
        return torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)

    def device_state(self) -> dict[str, torch.Tensor]:
        """Per-device parameters, each (out, in): ``dw_up``, ``dw_down``, ``w_max``, ``w_min``,
        the model's own (e.g. ``slope_up``) and ``w_sym``, the symmetry point (NaN where none).

        With an algorithm other than ``sgd`` also its arrays (copies, each (out, in)): ``A``,
        ``C`` and the fast array's devices (``A.dw_up``, ...) for the Tiki-Taka family, ``H``
        (the buffer) from ``ttv2`` on, ``chi`` for ``mixed_precision``; the devices above are
        then those of ``C`` (the array the weights are programmed into)."""
        return {**self._dev.as_dict(), **self.algorithm.arrays()}

    def read_parts(self, direction: str) -> tuple[torch.Tensor, Any, torch.Generator]:
        """What a read in ``direction`` ("forward" or "backward") uses: the weights (not a copy),
        that direction's periphery config and its random generator. For compiled callers (the
        fused LSTM loop) that do the read themselves, bit-identically to :meth:`forward`."""
        if direction == "forward":
            return self._w, self.cfg.forward, self._gen_forward
        if direction == "backward":
            return self._w, self.cfg.backward, self._gen_backward
        raise ValueError(f"read_parts: direction is 'forward' or 'backward', not {direction!r}")

    # -- the three cycles ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = W x`` through the forward periphery. x: (..., in) -> y: (..., out)."""
        _refuse_grad(x, "forward")
        x2, lead = self._rows(x, self.in_size, "forward")
        y = analog_mvm(self._w, x2, self.cfg.forward, self._gen_forward)
        if self._out_scale is not None:
            y = y * self._out_scale
        return y.reshape(*lead, self.out_size)

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """``z = W^T d`` through the backward periphery. d: (..., out) -> z: (..., in)."""
        _refuse_grad(d, "backward")
        d2, lead = self._rows(d, self.out_size, "backward")
        if self._out_scale is not None:
            d2 = d2 * self._out_scale
        z = analog_mvm(self._w, d2, self.cfg.backward, self._gen_backward, transposed=True)
        return z.reshape(*lead, self.in_size)

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Apply the K rank-1 updates ``W <- W - lr * d_k x_k^T`` in order k = 0..K-1.

        x: (K, in), d: (K, out). With ``update.mode: pulsed`` each pair becomes stochastic pulse
        trains whose coincidences step the devices (in expectation the SGD step); with ``float``
        the step is exact (then clipped to the device bounds). ``rpu.algorithm`` other than
        ``sgd`` (``tile.algorithm``) writes the pairs its own way (``docs/model.md`` section 8).
        """
        x2 = self._as_batch(x, self.in_size, "update x")
        d2 = self._as_batch(d, self.out_size, "update d")
        if x2.shape[0] != d2.shape[0]:
            raise ValueError(f"update: x has {x2.shape[0]} rows but d has {d2.shape[0]}")
        if self._out_scale is not None:
            d2 = d2 / self._out_scale
        if self.cfg.update.pair_order == "reverse":
            x2, d2 = x2.flip(0), d2.flip(0)
        self.algorithm.update(x2, d2, float(lr))

    def next_update_key(self) -> int:
        """The key of the next pulsed update of the gradient (one per call, in order)."""
        key = _stream_seed(self.seed, _STREAM_UPDATE, self._update_count)
        self._update_count += 1
        return key

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: weights, devices, random streams, and
        (``rpu.algorithm`` other than ``sgd``) the algorithm's arrays, buffers and streams."""
        state = {
            "shape": [self.out_size, self.in_size],
            "seed": self.seed,
            "weights": self._w.cpu().clone(),
            "devices": self._dev.to("cpu").state(),
            "gen_forward": self._gen_forward.get_state(),
            "gen_backward": self._gen_backward.get_state(),
            "update_count": self._update_count,
        }
        if self.cfg.algorithm != "sgd":
            state["algorithm"] = {"name": self.cfg.algorithm, **self.algorithm.state_dict()}
        if self._out_scale is not None:
            state["out_scale"] = self._out_scale.cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["shape"]) != [self.out_size, self.in_size]:
            raise ValueError(
                f"tile state: shape {list(state['shape'])} does not match this tile "
                f"({self.out_size}, {self.in_size})"
            )
        self.seed = int(state["seed"])
        self._w.copy_(state["weights"])
        dev_cfg = self.cfg.device
        devs = DeviceArrays.from_state(dev_cfg.kind, state["devices"], consts(dev_cfg))
        self._dev = devs.to(self.device)
        self._gen_forward.set_state(state["gen_forward"])
        self._gen_backward.set_state(state["gen_backward"])
        self._update_count = int(state["update_count"])
        algo = state.get("algorithm", {"name": "sgd"})
        if algo["name"] != self.cfg.algorithm:
            raise ValueError(
                f"tile state: written by algorithm {algo['name']}, but this tile uses "
                f"{self.cfg.algorithm}"
            )
        self.algorithm.load_state_dict(algo)
        scale = state.get("out_scale")
        self._out_scale = None if scale is None else scale.to(self.device, torch.float32).clone()

    # -- helpers ---------------------------------------------------------------------------------

    def _rows(self, v: torch.Tensor, size: int, what: str) -> tuple[torch.Tensor, tuple]:
        """``v`` (..., size) as rows (N, size) float32, and its leading shape."""
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[-1] == size:
            lead = tuple(v.shape[:-1])
            if v.dim() != 2:
                v = v.reshape(-1, size)
            return self._as_batch(v, size, what), lead
        if torch.is_tensor(v):
            raise ValueError(f"{what}: expected shape (..., {size}), got {tuple(v.shape)}")
        v2 = self._as_batch(v, size, what)
        return v2, (v2.shape[0],)

    def _as_batch(self, v: torch.Tensor, size: int, what: str) -> torch.Tensor:
        if torch.is_tensor(v):
            if v.dtype == torch.float64 and not self._warned_float64:
                self._warned_float64 = True
                warnings.warn(
                    f"AnalogTile.{what.split()[0]}: float64 input cast to float32 (the tile "
                    "computes in float32; this warning is shown once per tile)",
                    stacklevel=3,
                )
            v = v.detach()
        v = torch.as_tensor(v, dtype=torch.float32, device=self.device)
        if v.dim() == 1:
            v = v.unsqueeze(0)
        if v.dim() != 2 or v.shape[1] != size:
            raise ValueError(f"{what}: expected shape (batch, {size}), got {tuple(v.shape)}")
        return v

    def __repr__(self) -> str:
        algo = "" if self.cfg.algorithm == "sgd" else f", algorithm={self.cfg.algorithm}"
        scaling = self.cfg.mapping.weight_scaling
        return (
            f"AnalogTile({self.out_size}, {self.in_size}, device={self.cfg.device.kind}, "
            f"update={self.cfg.update.mode}{algo}, seed={self.seed}"
            + (f", weight_scaling={scaling})" if scaling != "none" else ")")
        )
