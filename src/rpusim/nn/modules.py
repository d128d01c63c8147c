"""Analog layers as ``torch.nn.Module`` s: every matrix product is a read of an RPU tile.

* forward: the tile's forward read (``W x`` through the forward periphery: noise and bound
  management, DAC, output noise, ADC);
* backward (autograd): the input's gradient is the tile's **backward read** ``W^T d`` through
  the backward periphery, never a digital transpose, and no digital weight gradient is formed;
  each read records its pair ``(x, d)`` on the module;
* update: :class:`rpusim.optim.AnalogSGD` sends the recorded pairs to the tile as pulsed updates
  (``tile.update``), in the order of the forward calls, then rows (time steps, then batch rows).

Each analog module owns a zero-size ``nn.Parameter`` (``analog_ctx``) that ties it to the
optimizer: ``AnalogSGD(model.parameters(), lr)`` finds the module through it. Checkpoints
(``state_dict``) hold the tiles' weights, device parameters and random streams as plain tensors,
ints and lists (the module's ``_extra_state``): ``torch.load(..., weights_only=True)`` reads them.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rpusim import layers as _layers
from rpusim.config import RPUConfig
from rpusim.tile import AnalogTile, child_seed

_ATTR = "_rpusim_analog_module"


def analog_module_of(param: Any) -> AnalogModule | None:
    """The analog module whose ``analog_ctx`` parameter ``param`` is (``None`` for others)."""
    ref = getattr(param, _ATTR, None)
    return None if ref is None else ref()


def _draw_seed() -> int:
    """A tile seed from torch's global generator (``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


class AnalogModule(nn.Module):
    """What every analog layer shares: its tiles, the recorded pairs, checkpoints, devices."""

    def __init__(self, rpu_config: RPUConfig | None) -> None:
        super().__init__()
        self.rpu_config = rpu_config if rpu_config is not None else RPUConfig()
        #: Zero-size, ties the module to :class:`rpusim.optim.AnalogSGD` (never holds values).
        self.analog_ctx = nn.Parameter(torch.empty(0))
        self._tag()
        # (call index, tile index, x rows, d rows) of the backward reads since the last update.
        self._records: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        self._calls = 0
        self._clip_warned = False

    # -- tiles -----------------------------------------------------------------------------------

    def analog_tiles(self) -> list[AnalogTile]:
        """The module's tiles (one per layer)."""
        raise NotImplementedError

    def _tag(self) -> None:
        object.__setattr__(self.analog_ctx, _ATTR, weakref.ref(self))

    def _next_call(self) -> int:
        self._calls += 1
        return self._calls

    def _record(self, call: int, tile: int, x: torch.Tensor, d: torch.Tensor) -> None:
        self._records.append((call, tile, x, d))

    def recorded(self, tile: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs waiting for tile ``tile``'s update, in update order: ``x`` (K, in) and
        ``d`` (K, out); ``d.T @ x`` is the gradient the update applies."""
        pairs = self._pairs_of(tile)
        if not pairs:
            raise RuntimeError("no recorded pairs: run a backward pass first")
        return _cat([x for x, _ in pairs]), _cat([d for _, d in pairs])

    def n_recorded(self) -> int:
        """How many pairs (rows) wait for the update, all tiles together."""
        return sum(x.shape[0] for _, _, x, _ in self._records)

    def _pairs_of(self, tile: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = sorted((r for r in self._records if r[1] == tile), key=lambda r: r[0])
        return [(x, d) for _, _, x, d in rows]

    @torch.no_grad()
    def apply_update(self, lr: float) -> None:
        """Every tile's pulsed update with its recorded pairs (forward-call order, then rows),
        ``W <- W - lr * sum_k d_k x_k^T``; then the records are cleared."""
        for k, tile in enumerate(self.analog_tiles()):
            pairs = self._pairs_of(k)
            if pairs:
                tile.update(_cat([x for x, _ in pairs]), _cat([d for _, d in pairs]), lr)
        self.clear_recorded()

    def clear_recorded(self) -> None:
        """Drop the recorded pairs (``AnalogSGD.zero_grad`` does this)."""
        self._records.clear()

    def _program(self, tile: AnalogTile, weights: torch.Tensor) -> None:
        """``tile.set_weights`` with the mapping fixed from these weights; warns once when more
        than 1 % of the values were clipped to the devices' bounds."""
        clipped = tile.set_weights(weights, remap=True)
        if clipped > 0.01 * weights.numel() and not self._clip_warned:
            self._clip_warned = True
            warnings.warn(
                f"{type(self).__name__}.set_weights: {clipped} of {weights.numel()} weights "
                f"({100 * clipped / weights.numel():.1f} %) clipped to the device bounds; "
                "consider rpu.mapping.weight_scaling (tile or column)",
                stacklevel=3,
            )

    # -- torch.nn.Module plumbing ----------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"tiles": [tile.state_dict() for tile in self.analog_tiles()]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        tiles = self.analog_tiles()
        if len(state["tiles"]) != len(tiles):
            raise ValueError(
                f"{type(self).__name__} state: {len(state['tiles'])} tiles, this module has "
                f"{len(tiles)}"
            )
        for tile, tile_state in zip(tiles, state["tiles"], strict=True):
            tile.load_state_dict(tile_state)
        self.clear_recorded()

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's signature
        out = super()._apply(fn, recurse)
        self._tag()
        device = self.analog_ctx.device
        if not _same_device(device, self.analog_tiles()[0].device):
            self._move_tiles(device)
        return out

    def _move_tiles(self, device: torch.device) -> None:
        raise NotImplementedError

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tag()


def _same_device(a: torch.device, b: torch.device) -> bool:
    index = {None: 0}
    return a.type == b.type and index.get(a.index, a.index) == index.get(b.index, b.index)


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def _moved(tile: AnalogTile, device: torch.device) -> AnalogTile:
    """``tile`` on ``device``: weights, devices, output scale and update counter carried over;
    the read generators restart from the seed (a CPU and a CUDA generator differ in kind)."""
    new = AnalogTile(tile.out_size, tile.in_size, tile.cfg, seed=tile.seed, device=device)
    state = tile.state_dict()
    state["gen_forward"] = new._gen_forward.get_state()
    state["gen_backward"] = new._gen_backward.get_state()
    new.load_state_dict(state)
    return new


class _TileRead(torch.autograd.Function):
    """``y = tile.forward(x)``; backward: ``dx = tile.backward(d)`` (the backward read) and the
    pair ``(x, d)`` recorded on the module. ``x`` (N, in) rows, ``ctx_param`` the module's
    ``analog_ctx`` (so that the read is part of the graph even when ``x`` needs no gradient)."""

    @staticmethod
    def forward(ctx, x, ctx_param, module, tile_index):  # noqa: ANN001
        x = x.detach().to(torch.float32).contiguous()
        ctx.module, ctx.tile_index = module, tile_index
        ctx.call = module._next_call()
        ctx.save_for_backward(x)
        return module.analog_tiles()[tile_index].forward(x)

    @staticmethod
    def backward(ctx, d):  # noqa: ANN001
        (x,) = ctx.saved_tensors
        module = ctx.module
        d = d.detach().to(torch.float32).contiguous()
        module._record(ctx.call, ctx.tile_index, x, d)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = module.analog_tiles()[ctx.tile_index].backward(d)
        return dx, None, None, None


def _read(module: AnalogModule, rows: torch.Tensor, tile_index: int = 0) -> torch.Tensor:
    """One forward read of ``rows`` (N, in): through autograd when a gradient is wanted."""
    if torch.is_grad_enabled():
        module._tag()
        return _TileRead.apply(rows, module.analog_ctx, module, tile_index)
    return module.analog_tiles()[tile_index].forward(rows.detach())


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """``[x; 1]`` along the last dimension, float32."""
    ones = torch.ones(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    return torch.cat([x.to(torch.float32), ones], dim=-1)


# ---------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------


class _SingleTileModule(AnalogModule):
    """A layer on one tile of ``out x (fan_in + bias)`` (bias as a column driven by 1)."""

    use_bias: bool

    def _new_tile(
        self, out_size: int, fan_in: int, seed: int | None, device: torch.device | str
    ) -> AnalogTile:
        """The layer's tile, programmed with torch's default ``U(-1/sqrt(fan_in), ...)``: from
        torch's global generator (``seed`` None, as ``nn.Linear``) or from ``seed`` alone."""
        cols = fan_in + int(self.use_bias)
        bound = 1.0 / math.sqrt(fan_in)
        if seed is None:
            w0 = torch.empty(out_size, cols).uniform_(-bound, bound)
            tile_seed = _draw_seed()
        else:
            _layers.check_seed(seed, type(self).__name__)
            w0 = _layers.init_uniform(out_size, cols, bound, seed)
            tile_seed = child_seed(seed, _layers.STREAM_TILE)
        tile = AnalogTile(out_size, cols, self.rpu_config, seed=tile_seed, device=device)
        tile.set_weights(w0, remap=True)
        self.analog_ctx.data = self.analog_ctx.data.to(device)
        return tile

    def analog_tiles(self) -> list[AnalogTile]:
        return [self.tile]

    def _move_tiles(self, device: torch.device) -> None:
        self.tile = _moved(self.tile, device)

    def _set_matrix(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Program ``weight`` (out, ...; flattened per output) and ``bias`` (out,) as the bias
        column (``None``: zero bias; refused on a layer without one)."""
        w = torch.as_tensor(weight, dtype=torch.float32).detach().cpu()
        w = w.reshape(self.tile.out_size, -1)
        if self.use_bias:
            b = torch.zeros(self.tile.out_size) if bias is None else torch.as_tensor(bias)
            w = torch.cat([w, b.detach().cpu().to(torch.float32).view(-1, 1)], dim=1)
        elif bias is not None:
            raise ValueError(f"{type(self).__name__}.set_weights: this layer has no bias")
        self._program(self.tile, w)


class AnalogLinear(_SingleTileModule):
    """``torch.nn.Linear`` on one tile ``(out_features, in_features + 1)``: the last column is the
    bias, driven by a constant input 1 (``(out, in)`` without bias).

    Initialisation as ``torch.nn.Linear`` (``U(-1/sqrt(in), 1/sqrt(in))``) from torch's global
    generator, which also draws the tile's seed; ``seed=`` (keyword) instead fixes both as
    :class:`rpusim.layers.AnalogLinear` of that seed does (the shipped character model's layer).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rpu_config: RPUConfig | None = None,
        *,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(rpu_config)
        self.in_features, self.out_features, self.use_bias = in_features, out_features, bool(bias)
        self.tile = self._new_tile(out_features, in_features, seed, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out): one forward read per row."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"AnalogLinear: input has {x.shape[-1]} features, expected {self.in_features}"
            )
        z = _with_ones(x) if self.use_bias else x.to(torch.float32)
        y = _read(self, z.reshape(-1, z.shape[-1]))
        return y.view(*x.shape[:-1], self.out_features)

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight (out, in), bias (out,) or None)``: the values the array holds."""
        w = self.tile.get_weights()
        if self.use_bias:
            return w[:, :-1].contiguous(), w[:, -1].contiguous()
        return w, None

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Program ``weight`` (out, in) and ``bias`` (out,) (``None``: zero bias)."""
        self._set_matrix(weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}, tile={self.tile!r}"
        )


# ---------------------------------------------------------------------------------------------
# Conv2d
# ---------------------------------------------------------------------------------------------


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class AnalogConv2d(_SingleTileModule):
    """``torch.nn.Conv2d`` on one tile ``(out_channels, in_channels * kh * kw + 1)`` (the CNN
    mapping of Gokmen, Onen & Haensch 2017): the kernel is the array, the image is cut into its
    patches (im2col, ``F.unfold``) and every output position is one forward read (and one
    backward read and one update pair), in the order batch, then positions row by row.
    The last column is the bias, driven by 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        rpu_config: RPUConfig | None = None,
        *,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(rpu_config)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.use_bias = _pair(padding), bool(bias)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.tile = self._new_tile(out_channels, fan_in, seed, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) (or (C, H, W)) -> (B, out_channels, H', W')."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AnalogConv2d: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        B, _, H, W = x.shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw) = self.stride, self.padding
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        cols = F.unfold(
            x.to(torch.float32), self.kernel_size, padding=self.padding, stride=self.stride
        )
        patches = cols.transpose(1, 2)  # (B, L, C kh kw): one row per output position
        z = _with_ones(patches) if self.use_bias else patches
        y = _read(self, z.reshape(-1, z.shape[-1]))  # (B L, out)
        y = y.view(B, Ho * Wo, self.out_channels).transpose(1, 2).reshape(B, -1, Ho, Wo)
        return y[0] if unbatched else y

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight (out, in, kh, kw), bias (out,) or None)``: the values the array holds."""
        w = self.tile.get_weights()
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        if self.use_bias:
            return w[:, :-1].reshape(shape).contiguous(), w[:, -1].contiguous()
        return w.reshape(shape), None

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Program ``weight`` (out, in, kh, kw) and ``bias`` (out,) (``None``: zero bias)."""
        self._set_matrix(weight, bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.use_bias}, "
            f"tile={self.tile!r}"
        )


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------


class _LSTMSequence(torch.autograd.Function):
    """The stacked analog LSTM over a sequence: forward reads per step, and backpropagation
    through time with one backward read per step (``rpusim.layers.AnalogLSTM``). The layers'
    caches of this call are kept in ``ctx`` (so several calls may precede one backward)."""

    @staticmethod
    def forward(ctx, x, h0, c0, ctx_param, module):  # noqa: ANN001
        ctx.set_materialize_grads(False)
        lstm = module.lstm
        x = x.detach().to(torch.float32).contiguous()
        state = (h0.detach().to(torch.float32), c0.detach().to(torch.float32))
        hs, (hT, cT) = lstm.forward_sequence(x, state, train=module.training)
        ctx.module, ctx.call = module, module._next_call()
        ctx.caches = [layer._cache for layer in lstm.layers]
        ctx.masks = lstm.masks
        ctx.shape = x.shape
        return hs.clone(), hT, cT

    @staticmethod
    def backward(ctx, grad_hs, grad_hT, grad_cT):  # noqa: ANN001
        module, lstm = ctx.module, ctx.module.lstm
        T, B, _ = ctx.shape
        L, h = lstm.num_layers, lstm.hidden
        if ctx.caches is None:
            raise RuntimeError("AnalogLSTM: backward through the same call twice")
        for layer, cache in zip(lstm.layers, ctx.caches, strict=True):
            layer._cache = cache
        ctx.caches = None
        lstm.masks = ctx.masks
        if grad_hs is None:
            grad_hs = torch.zeros(T, B, h, dtype=torch.float32, device=lstm.device)
        dx = lstm.backward_sequence(
            grad_hs.detach().to(torch.float32).contiguous(),
            None if grad_hT is None else grad_hT.detach().to(torch.float32),
            None if grad_cT is None else grad_cT.detach().to(torch.float32),
            input_grad=ctx.needs_input_grad[0],
        )
        for k, layer in enumerate(lstm.layers):
            pairs = layer._pairs
            for z, delta in zip(pairs.z, pairs.delta, strict=True):
                module._record(ctx.call, k, z, delta)
            pairs.clear()
        dh0 = dc0 = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dh0 = torch.stack([layer.grad_state[0] for layer in lstm.layers])
            dc0 = torch.stack([layer.grad_state[1] for layer in lstm.layers])
        assert dh0 is None or dh0.shape == (L, B, h)
        return dx, dh0, dc0, None, None


class AnalogLSTM(AnalogModule):
    """``torch.nn.LSTM`` on RPU tiles: one tile ``(4h, n_in + h + 1)`` per layer holding the
    gates ``i, f, g, o`` (torch's order) for ``[x_t; h_{t-1}; 1]``, the last column the bias
    (``bias_ih + bias_hh`` of torch). Each step is one forward read per layer; backpropagation
    through time one backward read per step (:class:`rpusim.layers.AnalogLSTMLayer`).

    ``output, (h_n, c_n) = lstm(input, (h_0, c_0))`` with ``nn.LSTM``'s shapes (``batch_first``,
    unbatched input). ``dropout``: inverted dropout on the outputs of every layer but the last
    (``dropout_top=True``: also the last), masks from a seeded generator kept in the checkpoint.
    ``bias=False``: the bias column is driven by 0 (never read, never updated).

    Initialisation: every entry ``U(-1/sqrt(h), 1/sqrt(h))`` as ``nn.LSTM``, fixed by ``seed``
    (keyword; as :class:`rpusim.layers.AnalogLSTM`) or, by default, by a seed drawn from torch's
    global generator.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        rpu_config: RPUConfig | None = None,
        *,
        seed: int | None = None,
        dropout_top: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(rpu_config)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.use_bias, self.batch_first = bool(bias), bool(batch_first)
        self.dropout, self.dropout_top = float(dropout), bool(dropout_top)
        self.lstm = _layers.AnalogLSTM(
            input_size,
            hidden_size,
            num_layers,
            self.rpu_config,
            seed=_draw_seed() if seed is None else seed,
            dropout=dropout,
            device=device,
            dropout_top=dropout_top,
            bias=bias,
        )
        self.analog_ctx.data = self.analog_ctx.data.to(device)

    def analog_tiles(self) -> list[AnalogTile]:
        return self.lstm.tiles()

    def _move_tiles(self, device: torch.device) -> None:
        for layer in self.lstm.layers:
            layer.tile = _moved(layer.tile, device)
            layer.device = device
        self.lstm.device = device

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = input
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"AnalogLSTM: expected input (T, B, {self.input_size}), got {tuple(input.shape)}"
            )
        B = x.shape[1]
        if hx is None:
            h0, c0 = self.lstm.init_state(B)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if torch.is_grad_enabled():
            self._tag()
            out, hT, cT = _LSTMSequence.apply(x, h0, c0, self.analog_ctx, self)
        else:
            state = (h0.to(torch.float32), c0.to(torch.float32))
            xs = x.to(torch.float32).contiguous()
            out, (hT, cT) = self.lstm.forward_sequence(xs, state, train=self.training)
            out = out.clone()
        if unbatched:
            return out[:, 0], (hT[:, 0], cT[:, 0])
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (hT, cT)

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The values the arrays hold under ``nn.LSTM``'s parameter names: ``weight_ih_l{k}``,
        ``weight_hh_l{k}`` and, with bias, ``bias_ih_l{k}`` (the tile's one bias column) and
        ``bias_hh_l{k}`` (zeros): ``nn.LSTM.load_state_dict`` takes it."""
        out = {}
        for k, layer in enumerate(self.lstm.layers):
            W, n, h = layer.tile.get_weights(), layer.n_in, layer.hidden
            out[f"weight_ih_l{k}"] = W[:, :n].contiguous()
            out[f"weight_hh_l{k}"] = W[:, n : n + h].contiguous()
            if self.use_bias:
                out[f"bias_ih_l{k}"] = W[:, n + h].contiguous()
                out[f"bias_hh_l{k}"] = torch.zeros_like(W[:, n + h])
        return out

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Program ``nn.LSTM``-named weights (its ``state_dict()``); ``bias_ih + bias_hh`` goes
        to the bias column."""
        for k, layer in enumerate(self.lstm.layers):
            n, h = layer.n_in, layer.hidden
            parts = [weights[f"weight_ih_l{k}"], weights[f"weight_hh_l{k}"]]
            if self.use_bias:
                bias = weights[f"bias_ih_l{k}"] + weights.get(f"bias_hh_l{k}", 0.0)
            else:
                bias = torch.zeros(4 * h)
            parts.append(torch.as_tensor(bias).view(-1, 1))
            W = torch.cat([torch.as_tensor(p).detach().cpu().to(torch.float32) for p in parts], 1)
            if W.shape != (4 * h, n + h + 1):
                raise ValueError(f"AnalogLSTM.set_weights: layer {k} has shape {tuple(W.shape)}")
            self._program(layer.tile, W)

    def get_extra_state(self) -> dict[str, Any]:
        return {"lstm": self.lstm.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.lstm.load_state_dict(state["lstm"])
        self.clear_recorded()

    def extra_repr(self) -> str:
        tile = self.lstm.layers[0].tile
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.use_bias}, batch_first={self.batch_first}, dropout={self.dropout}, "
            f"tile={tile!r}"
        )


def char_lstm_modules(
    vocab_size: int,
    hidden: int,
    layers: int,
    rpu_config: RPUConfig | None = None,
    seed: int = 0,
    dropout: float = 0.0,
    device: torch.device | str = "cpu",
) -> tuple[AnalogLSTM, AnalogLinear]:
    """``(AnalogLSTM, AnalogLinear)`` with the tiles (seeds, devices, initial weights) of
    ``rpusim.model.CharLSTM(vocab_size, hidden, layers, rpu_config, seed, dropout)``: its
    LSTM stack (dropout also before the output layer, as char-rnn) and its output layer."""
    from rpusim import model as _model

    lstm = AnalogLSTM(
        vocab_size,
        hidden,
        layers,
        dropout=dropout,
        rpu_config=rpu_config,
        seed=child_seed(seed, _model.STREAM_LSTM),
        dropout_top=True,
        device=device,
    )
    head = AnalogLinear(
        hidden,
        vocab_size,
        rpu_config=rpu_config,
        seed=child_seed(seed, _model.STREAM_DECODER),
        device=device,
    )
    return lstm, head
