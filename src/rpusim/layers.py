"""Analog layers: a linear layer and LSTM layers, each ONE tile (``docs/model.md`` section 7).

The matrix-vector products (forward read ``W z``, backward read ``W^T delta``) and the weight
update (pulsed, ``W <- W - lr * delta z^T`` per time step and batch row) happen on the tile;
everything else (gate non-linearities, cell state, dropout) is digital, float32, written out by
hand: there is no autograd graph.

Shapes are time-major, as in ``torch.nn.LSTM``: ``x (T, B, n_in)``, ``h (B, hidden)``.

* :class:`AnalogLinear` ``y = W [x; 1]``, tile ``(out, in + 1)``, the last column the analog bias.
* :class:`AnalogLSTMLayer` one LSTM layer, tile ``(4h, n_in + h + 1)`` holding the gates
  ``i, f, g, o`` (``torch.nn.LSTM``'s order and layout) stacked; input ``z_t = [x_t; h_{t-1}; 1]``.
* :class:`AnalogLSTM` stacked layers with (inverted) dropout on the outputs passed upward.

Every layer records the pairs ``(z, delta)`` of its backward pass, ``delta = dloss/dy`` for the
tile's output ``y``, and :meth:`apply_update` sends them to the tile in the order time steps, then
batch rows. With the ``ideal`` preset (``update.mode: float``) the update is exactly SGD on the
summed gradient ``sum_k delta_k z_k^T`` and the layers compute what ``torch.nn.LSTM`` /
``torch.nn.Linear`` compute: that is the floating-point twin of the analog network.

Speed: at batch 1 (the paper's setting) a step is a chain of tiny operations, so the cost is the
number of calls per step, not arithmetic. Each step makes one tile read and ONE call for the whole
digital cell: a numba-compiled element loop (:func:`_cell_forward`, :func:`_cell_backward`) on
CPU, or a handful of vectorised torch ops (the reference, any device; ``layer.cell_backend``).
On CPU the time loop itself is fused (``layer.fused``, :mod:`rpusim.lstm_loop`): per
step the read's matmul, its output noise draw and one compiled call that finishes the read, runs
the cell and starts the next read; the same numbers, bit for bit, as the loop of ``tile.forward``
/ ``tile.backward`` calls written out below. Buffers for all ``T`` steps are allocated once per
sequence. Tiny ops run fastest on one thread: ``torch.set_num_threads(1)`` for batch-1 training.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rpusim import lstm_loop
from rpusim.config import RPUConfig
from rpusim.periphery import split
from rpusim.tile import AnalogTile, child_seed

# Independent random streams derived from a layer's seed.
STREAM_INIT, STREAM_TILE, STREAM_LAYER, STREAM_DROPOUT = range(4)


def init_uniform(out_size: int, in_size: int, bound: float, seed: int) -> torch.Tensor:
    """``U(-bound, bound)`` weights (out, in) from a generator that only ``seed`` fixes.

    Drawn independently of the tile's configuration, so an RPU model and its floating-point twin
    built with the same seed start from the same weights (the RPU tile then clips them to its
    devices' bounds when they are programmed).
    """
    gen = torch.Generator().manual_seed(child_seed(seed, STREAM_INIT))
    w = torch.empty(out_size, in_size, dtype=torch.float64)
    return w.uniform_(-bound, bound, generator=gen).to(torch.float32)


def check_seed(seed: int, who: str) -> None:
    """Refuse a seed that is not a non-negative int, naming the layer ``who``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{who}: seed must be a non-negative int, got {seed!r}")


class _Recorder:
    """The ``(z, delta)`` pairs of the backward passes since the last update, in time order."""

    def __init__(self) -> None:
        self.z: list[torch.Tensor] = []
        self.delta: list[torch.Tensor] = []

    def add(self, z: torch.Tensor, delta: torch.Tensor) -> None:
        self.z.append(z)
        self.delta.append(delta)

    def flush(self, tile: AnalogTile, lr: float) -> None:
        if self.z:
            z = self.z[0] if len(self.z) == 1 else torch.cat(self.z)
            delta = self.delta[0] if len(self.delta) == 1 else torch.cat(self.delta)
            tile.update(z, delta, lr)
        self.clear()

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.z:
            raise RuntimeError("no recorded pairs: run a backward pass first")
        return torch.cat(self.z), torch.cat(self.delta)

    def clear(self) -> None:
        self.z.clear()
        self.delta.clear()

    def __len__(self) -> int:
        return sum(z.shape[0] for z in self.z)


# ---------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------


class AnalogLinear:
    """``y = W [x; 1]`` on one tile ``(out_features, in_features + 1)``; the last column is the
    analog bias (driven by a constant input 1).

    Initialisation as ``torch.nn.Linear``: weights and bias ``U(-1/sqrt(in), 1/sqrt(in))``.

    Use::

        lin = AnalogLinear(64, 87, RPUConfig.preset("ideal"), seed=0)
        y = lin.forward(h)              # h (T, B, 64) -> y (T, B, 87), one read per row
        dh = lin.backward(dy)           # dy = dloss/dy (T, B, 87) -> dloss/dh (T, B, 64)
        lin.apply_update(lr)            # the T*B pairs ([h; 1], dy), in order t, then b
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rpu_cfg: RPUConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        check_seed(seed, "AnalogLinear")
        self.in_features, self.out_features = in_features, out_features
        self.device = torch.device(device)
        self.tile = AnalogTile(
            out_features,
            in_features + 1,
            rpu_cfg,
            seed=child_seed(seed, STREAM_TILE),
            device=self.device,
        )
        bound = 1.0 / math.sqrt(in_features)
        self.tile.set_weights(init_uniform(out_features, in_features + 1, bound, seed))
        self._z: torch.Tensor | None = None  # [x; 1] of the last forward, (N, in + 1)
        self._pairs = _Recorder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = W [x; 1]``, one forward read per row. x: (..., in) -> y: (..., out).

        Leading dimensions are flattened in row-major order, so ``(T, B, in)`` gives the rows in
        the order time steps, then batch rows (the order of the later update).
        """
        lead = x.shape[:-1]
        z = torch.empty(*lead, self.in_features + 1, dtype=torch.float32, device=self.device)
        z[..., : self.in_features] = x
        z[..., self.in_features] = 1.0
        z = z.view(-1, self.in_features + 1)
        self._z = z
        return self.tile.forward(z).view(*lead, self.out_features)

    def backward(self, grad_y: torch.Tensor) -> torch.Tensor:
        """``dloss/dx`` from ``grad_y = dloss/dy`` (..., out) through the backward read ``W^T``.

        Records the pairs ``([x; 1], grad_y)`` of the last :meth:`forward` for the update.
        Returns (..., in): the bias row of the read is dropped.
        """
        lead = grad_y.shape[:-1]
        delta = grad_y.reshape(-1, self.out_features).to(torch.float32)
        if self._z is None or self._z.shape[0] != delta.shape[0]:
            raise RuntimeError("AnalogLinear.backward: call forward with the same rows first")
        self._pairs.add(self._z, delta.clone())
        self._z = None
        dz = self.tile.backward(delta)
        return dz[:, : self.in_features].reshape(*lead, self.in_features)

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs waiting for the update: ``z`` (K, in + 1) and ``delta`` (K, out), in order.

        ``delta.T @ z`` is the gradient ``dloss/dW`` that the update applies.
        """
        return self._pairs.stacked()

    def n_recorded(self) -> int:
        """How many pairs wait for the update."""
        return len(self._pairs)

    def apply_update(self, lr: float) -> None:
        """Send the recorded pairs to the tile (``W <- W - lr * sum_k delta_k z_k^T``, pulsed)."""
        self._pairs.flush(self.tile, lr)

    def state_dict(self) -> dict[str, Any]:
        """The tile's state (weights, devices, random streams); plain tensors and ints."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "tile": self.tile.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape = (int(state["in_features"]), int(state["out_features"]))
        if shape != (self.in_features, self.out_features):
            raise ValueError(
                f"AnalogLinear state: (in, out) = {shape} does not match this layer "
                f"({self.in_features}, {self.out_features})"
            )
        self.tile.load_state_dict(state["tile"])
        self._z = None
        self._pairs.clear()

    def __repr__(self) -> str:
        return f"AnalogLinear({self.in_features} -> {self.out_features}, {self.tile!r})"


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------


# The digital cell, element by element, compiled by numba (float64 arithmetic, float32 storage;
# equal to the torch ops of AnalogLSTMLayer to float32 rounding): see rpusim.lstm_loop.
_sigmoid, _tanh = lstm_loop.sigmoid, lstm_loop.tanh
_cell_forward, _cell_backward = lstm_loop.cell_forward, lstm_loop.cell_backward


#: How the digital LSTM cell is computed between the reads: ``"torch"`` (a few vectorised torch
#: ops per step: the reference, any device), ``"numba"`` (one compiled call per step, CPU only;
#: equal to the reference to float32 rounding) or ``"auto"`` (numba on CPU, torch elsewhere).
CELL_BACKENDS = ("auto", "numba", "torch")


class AnalogLSTMLayer:
    """One LSTM layer on one tile ``W`` of shape ``(4h, n_in + h + 1)``.

    Per time step, with ``z_t = [x_t; h_{t-1}; 1]`` (n_in + h + 1)::

        a_t = W z_t                                  one forward read: all 4h pre-activations
        i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)       (gate order i, f, g, o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    ``W[:, :n_in]`` is torch's ``weight_ih``, ``W[:, n_in:n_in+h]`` is ``weight_hh`` and the last
    column is the analog bias (``bias_ih + bias_hh`` of torch). Initialisation as
    ``torch.nn.LSTM``: every entry ``U(-1/sqrt(h), 1/sqrt(h))``.

    Backpropagation through time reads the array backwards once per step,
    ``[dx_t; dh_{t-1}; _] = W^T da_t``, and records ``(z_t, da_t)``: ``da_t = dloss/da_t``.
    """

    def __init__(
        self,
        n_in: int,
        hidden: int,
        rpu_cfg: RPUConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        bias: bool = True,
    ) -> None:
        check_seed(seed, "AnalogLSTMLayer")
        self.n_in, self.hidden = n_in, hidden
        #: ``False``: the bias column is driven by 0 instead of 1 (never read, never updated;
        #: the tile keeps its ``n_in + h + 1`` columns, the layout of the compiled loop).
        self.bias = bool(bias)
        self.device = torch.device(device)
        self.tile = AnalogTile(
            4 * hidden,
            n_in + hidden + 1,
            rpu_cfg,
            seed=child_seed(seed, STREAM_TILE),
            device=self.device,
        )
        bound = 1.0 / math.sqrt(hidden)
        w0 = init_uniform(4 * hidden, n_in + hidden + 1, bound, seed)
        if not self.bias:
            w0[:, -1] = 0.0
        self.tile.set_weights(w0)
        #: ``"auto"``, ``"numba"`` or ``"torch"``: see :data:`CELL_BACKENDS`.
        self.cell_backend = "auto"
        #: With the numba cell: run each time loop as one compiled call per step (the read's
        #: periphery, the cell and the next read's input side; ``rpusim.lstm_loop``)
        #: rather than ``tile.forward`` / ``tile.backward`` then the cell. The same bits.
        self.fused = True
        #: Split the reads in time where that is the same read (``docs/model.md`` section 7.1,
        #: :mod:`rpusim.periphery.split`): the input part of every forward read before the
        #: loop, the ``dx`` part of every backward read after it. CPU tiles without a digital
        #: output scale; ``False``: every read reads the whole tile inside the loop.
        self.split_reads = True
        self._cache: tuple[torch.Tensor, ...] | None = None
        self._pairs = _Recorder()
        #: ``(dloss/dh_0, dloss/dc_0)`` (each (B, h)) of the last :meth:`backward_sequence`:
        #: the gradient reaching the initial state (the hidden part of the first backward read).
        self.grad_state: tuple[torch.Tensor, torch.Tensor] | None = None

    def _fused(self) -> bool:
        """The compiled time loop applies: the numba cell, ``fused`` on and no digital output
        scale (``mapping.weight_scaling``; the loop reads the array itself)."""
        return self._use_numba() and self.fused and self.tile.out_scale is None

    def _split(self, direction: str) -> bool:
        """The reads in ``direction`` are split (:attr:`split_reads`)."""
        if not (self.split_reads and self.device.type == "cpu" and self.tile.out_scale is None):
            return False
        _, io, _ = self.tile.read_parts(direction)
        return split.forward_applies(io) if direction == "forward" else split.backward_applies(io)

    def _forward_reads(self, Z: torch.Tensor):
        """``read(t)``: the forward read of step ``t`` from ``Z[t]`` (B, n + h + 1) -> (B, 4h),
        whole (``tile.forward``) or split (:func:`rpusim.periphery.split.forward_read`, the
        input parts of all steps read here, at once)."""
        tile, Zs = self.tile, Z.unbind(0)
        if not self._split("forward"):
            return lambda t: tile.forward(Zs[t])
        T, B, n = Z.shape[0] - 1, Z.shape[1], self.n_in
        W, io, gen = tile.read_parts("forward")
        blocks = split.blocks(W, n)
        x = Z[:T].reshape(T * B, -1)[:, :n]
        alpha, P = split.forward_ahead(blocks, x, io, self.bias)
        alphas, Ps = alpha.view(T, B, 1).unbind(0), P.view(T, B, -1).unbind(0)
        return lambda t: split.forward_read(blocks, Zs[t], io, gen, Ps[t], alphas[t])

    def _use_numba(self) -> bool:
        if self.cell_backend not in CELL_BACKENDS:
            raise ValueError(f"cell_backend {self.cell_backend!r}: choose one of {CELL_BACKENDS}")
        if self.cell_backend == "auto":
            return self.device.type == "cpu"
        if self.cell_backend == "numba" and self.device.type != "cpu":
            raise ValueError("cell_backend 'numba' needs a CPU tile; use 'torch' or 'auto'")
        return self.cell_backend == "numba"

    def forward_sequence(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run ``T`` steps. x: (T, B, n_in); state ``(h0, c0)``, each (B, h).

        Returns ``hs`` (T, B, h), the hidden states h_1..h_T (a view of this call's cache: read
        it, do not write it), and the final ``(hT, cT)``, each (B, h), fresh tensors.
        Keeps what :meth:`backward_sequence` needs (of the last call).
        """
        T, B, n_in = x.shape
        if n_in != self.n_in:
            raise ValueError(f"AnalogLSTMLayer: x has {n_in} features, expected {self.n_in}")
        h, n = self.hidden, self.n_in
        h0, c0 = state
        opts = {"dtype": torch.float32, "device": self.device}
        # Z[t] = z_t = [x_t; h_{t-1}; 1]: each step writes h_t straight into the next input, so Z
        # holds the inputs of every read (the update's x side) and all hidden states.
        Z = torch.empty(T + 1, B, n + h + 1, **opts)
        Z[:T, :, :n] = x
        Z[0, :, n : n + h] = h0
        Z[:, :, n + h] = 1.0 if self.bias else 0.0
        G = torch.empty(T, B, 4 * h, **opts)  # activations i, f, g, o
        C = torch.empty(T + 1, B, h, **opts)  # C[t] = c_{t-1}
        C[0] = c0
        TC = torch.empty(T, B, h, **opts)  # tanh(c_t)
        H = Z[1:, :, n : n + h]  # h_t, a view
        tile = self.tile
        if self._fused():
            # The same loop as below, one compiled call per step (rpusim.lstm_loop).
            parts = tile.read_parts("forward")
            lstm_loop.forward_sequence(*parts, Z, G, C, TC, self._split("forward"), self.bias)
        elif self._use_numba():
            read = self._forward_reads(Z)
            cell = _cell_forward
            Zn, Gn, Cn, TCn = Z.numpy(), G.numpy(), C.numpy(), TC.numpy()
            for t in range(T):
                a = read(t)  # (B, 4h): the one forward read of this step
                cell(a.numpy(), t, n, Gn, Cn, TCn, Zn)
        else:
            # Per-step views made in one call each (indexing in the loop costs ~1 us a view).
            read = self._forward_reads(Z)
            Gs, Cs, TCs, Hs = G.unbind(0), C.unbind(0), TC.unbind(0), H.unbind(0)
            gis, gfs = G[..., :h].unbind(0), G[..., h : 2 * h].unbind(0)
            ggs, gos = G[..., 2 * h : 3 * h].unbind(0), G[..., 3 * h :].unbind(0)
            for t in range(T):
                a = read(t)  # (B, 4h): the one forward read of this step
                torch.sigmoid(a, out=Gs[t])
                torch.tanh(a[:, 2 * h : 3 * h], out=ggs[t])
                c = Cs[t + 1]
                torch.mul(gfs[t], Cs[t], out=c)
                c.addcmul_(gis[t], ggs[t])
                torch.tanh(c, out=TCs[t])
                torch.mul(gos[t], TCs[t], out=Hs[t])
        self._cache = (Z, G, C, TC)
        return H, (H[T - 1].clone(), C[T].clone())

    def backward_sequence(
        self,
        grad_hs: torch.Tensor,
        grad_hT: torch.Tensor | None = None,
        grad_cT: torch.Tensor | None = None,
        input_grad: bool = True,
    ) -> torch.Tensor | None:
        """Backpropagation through time over the last :meth:`forward_sequence`.

        grad_hs: dloss/dh_t for t = 1..T from above (T, B, h); grad_hT, grad_cT: dloss/dh_T and
        dloss/dc_T from beyond the sequence (B, h), ``None`` = 0 (truncated BPTT). Returns
        dloss/dx (T, B, n_in), from one backward read per step (``None`` with ``input_grad``
        False: a split read then skips the ``dx`` outputs), and records the T*B pairs
        ``(z_t, da_t)`` for :meth:`apply_update`. Per step, going back in time::

            dh  = dloss/dh_t (from above) + [W^T da_{t+1}]_h      (the read of step t + 1)
            dc  = dc_{t+1} f_{t+1} + dh o (1 - tanh(c_t)^2)
            da  = [dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c_t) o(1-o)]
            [dx_t; dh_{t-1}; _] = W^T da                           (one backward read)
        """
        if self._cache is None:
            raise RuntimeError("AnalogLSTMLayer.backward_sequence: call forward_sequence first")
        Z, G, C, TC = self._cache
        self._cache = None
        T, B, _ = G.shape
        h, n = self.hidden, self.n_in
        if grad_hs.shape != (T, B, h):
            raise ValueError(
                f"backward_sequence: grad_hs has shape {tuple(grad_hs.shape)}, expected {(T, B, h)}"
            )
        opts = {"dtype": torch.float32, "device": self.device}
        grad_hs = grad_hs.to(**opts).contiguous()
        # The read of the (virtual) step T + 1 brings dloss/dh_T from beyond the sequence.
        dz = torch.zeros(B, n + h + 1, **opts)
        if grad_hT is not None:
            dz[:, n : n + h] = grad_hT
        dc = torch.zeros(B, h, **opts)
        if grad_cT is not None:
            dc.copy_(grad_cT)
        dA = torch.empty_like(G)  # da_t, the update's delta side
        tile = self.tile
        if self._fused():
            # The same loop as below, one compiled call per step (rpusim.lstm_loop);
            # DZ[t] = W^T da_t, DZ[T] = the read of the virtual step T + 1.
            DZ = torch.empty(T + 1, B, n + h + 1, **opts)
            DZ[T] = dz
            parts, split_reads = tile.read_parts("backward"), self._split("backward")
            lstm_loop.backward_sequence(
                *parts, grad_hs, G, C, TC, dc, dA, DZ, split_reads, input_grad
            )
            self._pairs.add(Z[:T].reshape(T * B, n + h + 1), dA.view(T * B, 4 * h))
            self.grad_state = (DZ[0, :, n : n + h], dc)
            return DZ[:T, :, :n] if input_grad else None
        read, dx_after = self._backward_reads(dA)
        if self._use_numba():
            cell = _cell_backward
            ghn, Gn, Cn, TCn, dcn, dAn = (v.numpy() for v in (grad_hs, G, C, TC, dc, dA))
            for t in range(T - 1, -1, -1):
                cell(t, ghn, dz.numpy(), n, Gn, Cn, TCn, dcn, dAn)
                dz = read(t)  # (B, n + h + 1) = W^T da_t: the one backward read
        else:
            # Vectorised over all steps before the loop: each gate's pre-activation derivative
            # is (its partner in the product) x (the non-linearity's slope), so that in the loop
            # da = [dc, dc, dc, dh] * P, P = [g i(1-i), c_{t-1} f(1-f), i (1-g^2), tanh(c) o(1-o)].
            gi, gf, gg, go = G[..., :h], G[..., h : 2 * h], G[..., 2 * h : 3 * h], G[..., 3 * h :]
            P = torch.empty_like(G)
            P4 = P.view(T, B, 4, h)
            sig_slope = G - G * G
            torch.mul(gg, sig_slope[..., :h], out=P4[:, :, 0])
            torch.mul(C[:T], sig_slope[..., h : 2 * h], out=P4[:, :, 1])
            torch.mul(gi, 1.0 - gg * gg, out=P4[:, :, 2])
            torch.mul(TC, sig_slope[..., 3 * h :], out=P4[:, :, 3])
            dc_from_dh = go * (1.0 - TC * TC)  # through h_t = o tanh(c_t)
            dA4 = dA.view(T, B, 4, h)
            ghs, dcdhs, gfs = grad_hs.unbind(0), dc_from_dh.unbind(0), gf.unbind(0)
            P3s, Pos = P4[:, :, :3].unbind(0), P4[:, :, 3].unbind(0)
            dA3s, dAos = dA4[:, :, :3].unbind(0), dA4[:, :, 3].unbind(0)
            dc_next = dc
            for t in range(T - 1, -1, -1):
                dh = ghs[t] + dz[:, n : n + h]
                dc = torch.addcmul(dc_next, dh, dcdhs[t])
                torch.mul(P3s[t], dc.unsqueeze(1), out=dA3s[t])  # da_i, da_f, da_g
                torch.mul(Pos[t], dh, out=dAos[t])  # da_o
                dc_next = dc * gfs[t]
                dz = read(t)  # (B, n + h + 1) = W^T da_t: the one backward read
            dc = dc_next
        self._pairs.add(Z[:T].reshape(T * B, n + h + 1), dA.view(T * B, 4 * h))
        self.grad_state = (dz[:, n : n + h], dc)
        return dx_after() if input_grad else None

    def _backward_reads(self, dA: torch.Tensor):
        """``(read, dx_after)``: ``read(t)``, the backward read of step ``t`` from ``dA[t]``
        (B, 4h) -> (B, n + h + 1), called for t = T-1 .. 0; then ``dx_after()``, the ``dx``
        outputs of every step (T, B, n). Whole reads (``tile.backward``), or split
        (:func:`rpusim.periphery.split.backward_read`: only the ``dh`` outputs in the loop,
        the rest 0; :func:`~rpusim.periphery.split.backward_after`)."""
        tile, dAs = self.tile, dA.unbind(0)
        T, B, n, h = dA.shape[0], dA.shape[1], self.n_in, self.hidden
        dZ: list[torch.Tensor | None] = [None] * T
        if not self._split("backward"):

            def read(t: int) -> torch.Tensor:
                dZ[t] = tile.backward(dAs[t])
                return dZ[t]

            return read, lambda: torch.stack(dZ)[:, :, :n]
        W, io, gen = tile.read_parts("backward")
        blocks = split.blocks(W, n)
        kept: list[tuple] = [()] * T

        def read_split(t: int) -> torch.Tensor:
            dh, kept[t] = split.backward_read(blocks, dAs[t], io, gen)
            dz = torch.zeros(B, n + h + 1, dtype=dA.dtype, device=dA.device)
            dz[:, n : n + h] = dh
            return dz

        def dx_after() -> torch.Tensor:
            d_q, beta, noise_x = (list(v) for v in zip(*kept, strict=True))
            noise = None if noise_x[0] is None else torch.cat(noise_x)
            dx = split.backward_after(blocks, torch.cat(d_q), torch.cat(beta), noise, io)
            return dx.view(T, B, n)

        return read_split, dx_after

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs waiting for the update: ``z`` (K, n_in + h + 1) and ``da`` (K, 4h), K = T*B
        per backward pass, in the order time steps, then batch rows. ``da.T @ z`` = dloss/dW.
        """
        return self._pairs.stacked()

    def n_recorded(self) -> int:
        """How many pairs wait for the update."""
        return len(self._pairs)

    def apply_update(self, lr: float) -> None:
        """Send the recorded pairs to the tile: ``W <- W - lr * sum_k da_k z_k^T``, pulsed, one
        pair per time step and batch row, in that order."""
        self._pairs.flush(self.tile, lr)

    def state_dict(self) -> dict[str, Any]:
        """The tile's state (weights, devices, random streams); plain tensors and ints."""
        return {"n_in": self.n_in, "hidden": self.hidden, "tile": self.tile.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape = (int(state["n_in"]), int(state["hidden"]))
        if shape != (self.n_in, self.hidden):
            raise ValueError(
                f"AnalogLSTMLayer state: (n_in, hidden) = {shape} does not match this layer "
                f"({self.n_in}, {self.hidden})"
            )
        self.tile.load_state_dict(state["tile"])
        self._cache = None
        self._pairs.clear()

    def __repr__(self) -> str:
        return f"AnalogLSTMLayer({self.n_in}, {self.hidden}, {self.tile!r})"


class AnalogLSTM:
    """``layers`` stacked :class:`AnalogLSTMLayer` s, one tile each.

    Dropout (inverted: kept units scaled by ``1/(1 - p)``) acts on the outputs passed upward,
    between layers as in ``torch.nn.LSTM``, and with ``dropout_top=True`` also on the top layer's
    output (as char-rnn, before its output layer); never on the recurrent path ``h_{t-1} -> h_t``.
    Masks are drawn from a seeded generator that is part of :meth:`state_dict`.

    State: ``(h, c)``, each ``(layers, B, hidden)``, as ``torch.nn.LSTM``.
    """

    def __init__(
        self,
        n_in: int,
        hidden: int,
        layers: int,
        rpu_cfg: RPUConfig | None = None,
        seed: int = 0,
        dropout: float = 0.0,
        device: torch.device | str = "cpu",
        dropout_top: bool = False,
        bias: bool = True,
    ) -> None:
        check_seed(seed, "AnalogLSTM")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"AnalogLSTM: layers must be a positive int, got {layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AnalogLSTM: dropout must be in [0, 1), got {dropout!r}")
        self.n_in, self.hidden, self.num_layers = n_in, hidden, layers
        self.dropout, self.dropout_top = float(dropout), bool(dropout_top)
        self.device = torch.device(device)
        self.layers = [
            AnalogLSTMLayer(
                n_in if k == 0 else hidden,
                hidden,
                rpu_cfg,
                seed=child_seed(seed, STREAM_LAYER, k),
                device=self.device,
                bias=bias,
            )
            for k in range(layers)
        ]
        self._gen = torch.Generator().manual_seed(child_seed(seed, STREAM_DROPOUT))
        #: Dropout masks of the last training pass, one per layer output (T, B, h) or ``None``.
        self.masks: list[torch.Tensor | None] = []

    def init_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state ``(h, c)``, each (layers, batch, hidden)."""
        shape = (self.num_layers, batch, self.hidden)
        zeros = torch.zeros(shape, dtype=torch.float32, device=self.device)
        return zeros, zeros.clone()

    def _mask(self, shape: torch.Size) -> torch.Tensor:
        keep = 1.0 - self.dropout
        mask = torch.empty(shape, dtype=torch.float32).bernoulli_(keep, generator=self._gen)
        return mask.div_(keep).to(self.device)

    def forward_sequence(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        train: bool = True,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (T, B, n_in), state ``(h, c)`` each (layers, B, h) -> (hs (T, B, h), new state).

        ``train=False`` switches dropout off. The masks used are kept in :attr:`masks` for
        :meth:`backward_sequence`.
        """
        h0, c0 = state
        masks = self.draw_masks(x.shape[0], x.shape[1], train)
        hT, cT = [], []
        inp = x
        for k, layer in enumerate(self.layers):
            hs, (h_k, c_k) = layer.forward_sequence(inp, (h0[k], c0[k]))
            hT.append(h_k)
            cT.append(c_k)
            if masks[k] is not None:
                hs = hs * masks[k]
            inp = hs
        self.masks = masks
        return inp, (torch.stack(hT), torch.stack(cT))

    def draw_masks(self, T: int, B: int, train: bool = True) -> list[torch.Tensor | None]:
        """The dropout masks of one pass over ``T`` steps of ``B`` sequences: one per layer
        output, (T, B, h), or ``None`` where that output is not dropped (and for all when
        ``train`` is False or there is no dropout). Draws from the dropout generator."""
        drop = train and self.dropout > 0.0
        return [
            self._mask(torch.Size((T, B, self.hidden)))
            if drop and (k < self.num_layers - 1 or self.dropout_top)
            else None
            for k in range(self.num_layers)
        ]

    def backward_sequence(
        self,
        grad_hs: torch.Tensor,
        grad_hT: torch.Tensor | None = None,
        grad_cT: torch.Tensor | None = None,
        input_grad: bool = True,
        lr: float | None = None,
    ) -> torch.Tensor | None:
        """grad_hs: dloss/d(output) (T, B, h); grad_hT, grad_cT: (layers, B, h) or ``None``.

        Returns dloss/dx (T, B, n_in), or ``None`` with ``input_grad`` False (the first layer
        then skips what only dx needs). Each layer records its pairs for :meth:`apply_update`;
        with ``lr``, each layer applies them right after its backward pass (the same update:
        no later read of this pass uses that layer's tile).
        """
        grad = grad_hs
        for k in range(self.num_layers - 1, -1, -1):
            mask = self.masks[k] if k < len(self.masks) else None
            if mask is not None:
                grad = grad * mask
            grad = self.layers[k].backward_sequence(
                grad,
                None if grad_hT is None else grad_hT[k],
                None if grad_cT is None else grad_cT[k],
                input_grad=input_grad or k > 0,
            )
            if lr is not None:
                self.layers[k].apply_update(lr)
        return grad

    def apply_update(self, lr: float) -> None:
        """Every layer's pulsed update with its recorded pairs."""
        for layer in self.layers:
            layer.apply_update(lr)

    def tiles(self) -> list[AnalogTile]:
        return [layer.tile for layer in self.layers]

    def state_dict(self) -> dict[str, Any]:
        """Layers (tiles incl. random streams) and the dropout generator; plain values only."""
        return {
            "n_in": self.n_in,
            "hidden": self.hidden,
            "layers": [layer.state_dict() for layer in self.layers],
            "dropout": self.dropout,
            "dropout_generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["layers"]) != self.num_layers:
            raise ValueError(
                f"AnalogLSTM state: {len(state['layers'])} layers, this model has {self.num_layers}"
            )
        for layer, layer_state in zip(self.layers, state["layers"], strict=True):
            layer.load_state_dict(layer_state)
        self._gen.set_state(state["dropout_generator"])
        self.masks = []

    def __repr__(self) -> str:
        return (
            f"AnalogLSTM({self.n_in}, {self.hidden}, layers={self.num_layers}, "
            f"dropout={self.dropout})"
        )
