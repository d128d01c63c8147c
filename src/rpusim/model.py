"""CharLSTM: the character-level language model of the RPU LSTM paper, on analog tiles.

One-hot bytes ``x_t`` (V) -> ``layers`` LSTM layers of ``hidden`` units (one tile
``(4h, n_in + h + 1)`` each) -> output layer (one tile ``(V, h + 1)``) -> softmax over the next
byte. Everything but the tiles' reads and updates is digital float32 (``docs/model.md`` §7).

Loss and learning rate: :meth:`CharLSTM.train_step` returns, and differentiates, the MEAN
cross-entropy per predicted character, ``L = (1 / (T B)) sum_{t,b} -log p(y_tb)`` in nats, and the
tiles receive ``W <- W - lr * dL/dW`` (as pairs: each pair's error is ``(softmax - onehot) / (T B)``
at the output). The RPU LSTM paper trains with plain SGD at batch 1 on 100-character sequences,
with a learning rate of order 5 for the loss averaged over the sequence's 100 steps; at batch 1
our mean is that average, so the same ``lr`` means the same step. At batch ``B`` each of the
``T B`` pulsed updates carries ``1/B`` of the batch-1 per-pair step (the total step is the mean
gradient of the batch).

The floating-point twin (every tile ``ideal`` with the float update) trains through torch's own
fused LSTM and autograd (``model.torch_lstm``, on by default): the same steps as the explicit
path to float32 rounding, as fast as ``torch.nn.LSTM``. :meth:`CharLSTM.forward_backward` and
every other configuration take the explicit path, one tile read per step.

Use::

    model = CharLSTM(vocab_size=87, hidden=64, layers=2,
                     rpu_cfg=RPUConfig.preset("rpu_baseline"), seed=0, dropout=0.0)
    state = model.init_state(batch=1)
    loss, state = model.train_step(inputs, targets, state, lr=5.0)   # (T, B) long each
    loss_sum, n_chars, state = model.evaluate(inputs, targets, state)
    ids = model.sample([3, 14, 15], n=200, temperature=0.8, generator=gen)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from rpusim.config import RPUConfig
from rpusim.layers import AnalogLinear, AnalogLSTM, child_seed
from rpusim.periphery import is_ideal
from rpusim.tile import AnalogTile

State = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def numba_threads_capped(n: int) -> Iterator[None]:
    """Run the block with numba's thread count at most ``n`` (then restore it).

    numba's default is one thread per core, whatever torch was told. The pulsed update's kernel
    goes parallel for large batches of pairs (it stays on one thread below ~10^6 line draws), and
    its idle worker threads spin for a while after each call: on a machine whose cores are
    shared, or busy with torch's own threads, extra workers steal the core the main thread needs
    (2 shared, busy cores: the batch-32 update of a 2x128 model took 1.3x to 2.4x longer with 2
    numba threads than with 1). Capping numba at torch's thread count makes
    ``torch.set_num_threads`` (the ``--threads`` of the command line) the one knob for the step.
    """
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(before, n)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


STREAM_LSTM, STREAM_DECODER = range(2)


class CharLSTM:
    """Character LSTM: :class:`~rpusim.layers.AnalogLSTM` + :class:`~rpusim.layers.AnalogLinear`.

    Args:
        vocab_size: V, the number of symbols (input and output width).
        hidden: h, units per LSTM layer.
        layers: number of stacked LSTM layers.
        rpu_cfg: the configuration of every tile (``RPUConfig.preset("ideal")`` is the
            floating-point twin).
        seed: fixes the initial weights (the same for every ``rpu_cfg``), the tiles' random
            streams and the dropout masks.
        dropout: inverted dropout on every non-recurrent connection between layers and before
            the output layer (char-rnn's placement), training only.
        device: where the tiles live.

    State: ``(h, c)``, each ``(layers, batch, hidden)``.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        layers: int,
        rpu_cfg: RPUConfig | None = None,
        seed: int = 0,
        dropout: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> None:
        for key, value in (("vocab_size", vocab_size), ("hidden", hidden), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CharLSTM: {key} must be a positive int, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"CharLSTM: seed must be a non-negative int, got {seed!r}")
        self.vocab_size, self.hidden, self.num_layers = vocab_size, hidden, layers
        self.seed, self.dropout = seed, float(dropout)
        self.rpu_cfg = rpu_cfg if rpu_cfg is not None else RPUConfig()
        self.device = torch.device(device)
        self.lstm = AnalogLSTM(
            vocab_size,
            hidden,
            layers,
            self.rpu_cfg,
            seed=child_seed(seed, STREAM_LSTM),
            dropout=dropout,
            device=self.device,
            dropout_top=True,
        )
        self.decoder = AnalogLinear(
            hidden,
            vocab_size,
            self.rpu_cfg,
            seed=child_seed(seed, STREAM_DECODER),
            device=self.device,
        )
        #: :meth:`train_step` of a float model (the ``ideal`` preset) through torch's fused LSTM
        #: and autograd (``False``: always the explicit path, which :meth:`forward_backward` is).
        self.torch_lstm = True

    # -- state -----------------------------------------------------------------------------------

    def init_state(self, batch: int) -> State:
        """Zero hidden and cell state ``(h, c)``, each (layers, batch, hidden)."""
        return self.lstm.init_state(batch)

    def _one_hot(self, inputs: torch.Tensor) -> torch.Tensor:
        """(T, B) long -> (T, B, V) float32 one-hot."""
        x = torch.zeros(*inputs.shape, self.vocab_size, dtype=torch.float32, device=self.device)
        return x.scatter_(-1, inputs.to(self.device).unsqueeze(-1), 1.0)

    @torch.no_grad()
    def logits(
        self, inputs: torch.Tensor, state: State, train: bool = False
    ) -> tuple[torch.Tensor, State]:
        """Next-symbol logits (T, B, V) for inputs (T, B) long, and the new state.

        ``train=True`` applies dropout and keeps what a backward pass needs.
        """
        x = self._one_hot(inputs)
        hs, new_state = self.lstm.forward_sequence(x, state, train=train)
        return self.decoder.forward(hs), new_state  # (T, B, V)

    # -- training and evaluation -----------------------------------------------------------------

    @torch.no_grad()
    def train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State, lr: float
    ) -> tuple[float, State]:
        """One truncated-BPTT step on a batch of sequences, then every tile's pulsed update.

        inputs, targets: (T, B) long symbol ids (targets = inputs shifted by one). ``state`` is
        carried in (no gradient flows into it) and the new state comes out.

        Returns the mean cross-entropy per character of this batch (nats, before the update) and
        the new state. The gradient is that of this mean (see the module docstring for the
        learning-rate scale); the ``T B`` pairs of each tile are applied in the order time
        steps, then batch rows. Same as :meth:`forward_backward` then :meth:`apply_update` (for
        a float model through torch's LSTM, :meth:`_train_step_torch`: the same to rounding);
        each tile is updated right after its backward read, while its pairs and weights are in
        the caches (no later read of the step uses that tile, and each tile's update reads only
        its own pairs, weights and random stream, so the order changes nothing).
        """
        if self.torch_lstm and self._is_float() and not self._pending():
            return self._train_step_torch(inputs, targets, state, lr)
        return self.forward_backward(inputs, targets, state, lr=lr)

    def _is_float(self) -> bool:
        """True when every tile is exactly floating point: an ideal periphery both ways (a read
        is ``W x``, ``W^T d``) and the float update (``W <- W - lr * grad``, clipped)."""
        return all(
            is_ideal(t.cfg.forward) and is_ideal(t.cfg.backward) and t.cfg.update.mode == "float"
            for t in self.tiles()
        )

    def _pending(self) -> bool:
        """True when pairs of an earlier :meth:`forward_backward` wait for the update."""
        return any(ly.n_recorded() for ly in [*self.lstm.layers, self.decoder])

    def _train_step_torch(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State, lr: float
    ) -> tuple[float, State]:
        """:meth:`train_step` of a float model (:meth:`_is_float`) through torch's own LSTM.

        The explicit path computes, by hand, what ``torch.nn.LSTM`` + ``Linear`` compute; with
        float tiles the same numbers come (to float32 rounding) from torch's fused LSTM kernel
        and autograd, many times faster at batch 1. The tiles' weights are the parameters
        (``W[:, :n]`` = ``weight_ih``, ``W[:, n:n + h]`` = ``weight_hh``, the last column the
        bias; ``bias_hh`` = 0); the dropout masks are drawn as :meth:`AnalogLSTM.forward_sequence`
        draws them; each tile then takes the float update's step, ``W - lr * dL/dW`` clipped to
        its devices' bounds (what ``tile.update`` does with the summed pairs).
        """
        T, B = inputs.shape
        L, H, V = self.num_layers, self.hidden, self.vocab_size
        x = self._one_hot(inputs)
        masks = self.lstm.draw_masks(T, B, train=True)
        self.lstm.masks = masks
        tiles = self.tiles()
        weights = [tile.get_weights() for tile in tiles]  # copies, updated below
        # The parameters: column blocks of the weights, each its own autograd leaf sharing the
        # copy's memory (views of one leaf would cost a full-size gradient per block).
        blocks = [
            [W[:, : ly.n_in], W[:, ly.n_in : ly.n_in + H], W[:, ly.n_in + H]]
            for W, ly in zip(weights[:-1], self.lstm.layers, strict=True)
        ]
        blocks.append([weights[-1][:, :H], weights[-1][:, H]])
        params = [[p.detach().requires_grad_() for p in ps] for ps in blocks]
        leaves = [p for ps in params for p in ps]
        no_bias_hh = torch.zeros(4 * H, dtype=torch.float32, device=self.device)

        h0, c0 = state
        with torch.enable_grad():
            if all(m is None for m in masks[:-1]):  # all layers in one call, as nn.LSTM
                flat = [p for ps in params[:L] for p in (*ps, no_bias_hh)]
                out, hT, cT = torch._VF.lstm(x, (h0, c0), flat, True, L, 0.0, True, False, False)
            else:  # dropout between layers: one call per layer, our masks in between
                out, hs, cs = x, [], []
                for k in range(L):
                    hx = (h0[k : k + 1], c0[k : k + 1])
                    flat = [*params[k], no_bias_hh]
                    out, h_k, c_k = torch._VF.lstm(out, hx, flat, True, 1, 0.0, True, False, False)
                    hs.append(h_k)
                    cs.append(c_k)
                    if k < L - 1:
                        out = out * masks[k]
                hT, cT = torch.cat(hs), torch.cat(cs)
            if masks[-1] is not None:
                out = out * masks[-1]
            logits = torch.nn.functional.linear(out, *params[-1])
            tgt = targets.to(self.device).reshape(-1)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt)
            grads = torch.autograd.grad(loss, leaves)
        # W <- W - lr * dL/dW (the blocks of the copies), then each tile clips to its bounds.
        torch._foreach_add_([p.detach() for p in leaves], grads, alpha=-lr)
        for tile, W in zip(tiles, weights, strict=True):
            tile.set_weights(W)
        return float(loss), (hT.detach(), cT.detach())

    @torch.no_grad()
    def forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State, lr: float | None = None
    ) -> tuple[float, State]:
        """Forward and backward pass of :meth:`train_step` without the update: every layer
        records its pairs ``(z, dloss/dy)`` (see ``recorded()`` of the layers). With ``lr``,
        each tile's update (:meth:`apply_update`'s, on as many threads) follows its backward read
        at once.

        Returns ``(mean loss per character in nats, new state)``.
        """
        T, B = inputs.shape
        n = T * B
        logits, new_state = self.logits(inputs, state, train=True)
        logp = torch.log_softmax(logits.view(n, self.vocab_size), dim=1)
        tgt = targets.to(self.device).reshape(n, 1)
        loss = -logp.gather(1, tgt).sum() / n
        # dL/dlogits of the mean cross-entropy: (softmax - onehot) / n.
        grad = logp.exp_()
        grad.scatter_add_(1, tgt, torch.full((n, 1), -1.0, device=self.device))
        grad.div_(n)
        # With lr, the updates run on at most torch's threads, as in apply_update.
        capped = (
            contextlib.nullcontext()
            if lr is None
            else numba_threads_capped(torch.get_num_threads())
        )
        with capped:
            grad_hs = self.decoder.backward(grad.view(T, B, self.vocab_size))
            if lr is not None:
                self.decoder.apply_update(lr)
            # No gradient into the one-hot inputs.
            self.lstm.backward_sequence(grad_hs, input_grad=False, lr=lr)
        return float(loss), new_state

    def apply_update(self, lr: float) -> None:
        """Every tile's pulsed update with the pairs recorded since the last one.

        Threads: the compiled update runs on at most ``torch.get_num_threads()`` threads (see
        :func:`numba_threads_capped`), so that one setting, ``torch.set_num_threads``, bounds
        the whole training step.
        """
        with numba_threads_capped(torch.get_num_threads()):
            self.decoder.apply_update(lr)
            self.lstm.apply_update(lr)

    @torch.no_grad()
    def evaluate(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State
    ) -> tuple[float, int, State]:
        """Cross-entropy of a batch without update and without dropout.

        inputs, targets: (T, B) long. Returns ``(loss_sum, n_chars, new_state)``: the summed
        loss in nats over the ``n_chars = T B`` predicted characters, and the carried state.
        (The analog reads are still noisy, as they are in inference on the array.)
        """
        T, B = inputs.shape
        logits, new_state = self.logits(inputs, state, train=False)
        logp = torch.log_softmax(logits.view(T * B, self.vocab_size), dim=1)
        loss_sum = -logp.gather(1, targets.to(self.device).reshape(-1, 1)).sum()
        return float(loss_sum), T * B, new_state

    @torch.no_grad()
    def sample(
        self,
        prime: list[int] | torch.Tensor,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Generate ``n`` symbol ids after reading ``prime`` (symbol ids, at least one).

        Each next symbol is drawn from ``softmax(logits / temperature)`` with ``generator`` (a
        CPU ``torch.Generator``; ``None``: torch's global one); ``temperature == 0`` takes the
        most likely symbol. Starts from the zero state, batch 1, no dropout. Returns the ``n``
        new ids (not the prime).
        """
        prime_ids = torch.as_tensor(list(prime) if not torch.is_tensor(prime) else prime)
        if prime_ids.numel() < 1:
            raise ValueError("sample: prime must hold at least one symbol id")
        if temperature < 0:
            raise ValueError(f"sample: temperature must be >= 0, got {temperature!r}")
        if prime_ids.min() < 0 or prime_ids.max() >= self.vocab_size:
            raise ValueError(f"sample: prime ids must lie in 0..{self.vocab_size - 1}")
        state = self.init_state(1)
        logits, state = self.logits(prime_ids.long().view(-1, 1), state, train=False)
        last = logits[-1, 0]
        out: list[int] = []
        for _ in range(n):
            if temperature == 0:
                ix = int(last.argmax())
            else:
                probs = torch.softmax(last.double().cpu() / temperature, dim=0)
                ix = int(torch.multinomial(probs, 1, generator=generator))
            out.append(ix)
            logits, state = self.logits(torch.tensor([[ix]]), state, train=False)
            last = logits[-1, 0]
        return out

    # -- tiles and checkpoints -------------------------------------------------------------------

    def tiles(self) -> list[AnalogTile]:
        """Every tile of the model: the LSTM layers' (bottom to top), then the output layer's."""
        return self.lstm.tiles() + [self.decoder.tile]

    def state_dict(self) -> dict[str, Any]:
        """Sizes, every tile (weights, devices, random streams) and the dropout generator.

        Plain tensors, ints, floats and lists only: ``torch.load(..., weights_only=True)`` reads it.
        """
        return {
            "vocab_size": self.vocab_size,
            "hidden": self.hidden,
            "layers": self.num_layers,
            "seed": self.seed,
            "dropout": self.dropout,
            "lstm": self.lstm.state_dict(),
            "decoder": self.decoder.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; sizes must match this model's."""
        mine = (self.vocab_size, self.hidden, self.num_layers)
        theirs = (int(state["vocab_size"]), int(state["hidden"]), int(state["layers"]))
        if mine != theirs:
            raise ValueError(
                f"CharLSTM state: (vocab_size, hidden, layers) = {theirs} does not match this "
                f"model {mine}"
            )
        self.lstm.load_state_dict(state["lstm"])
        self.decoder.load_state_dict(state["decoder"])

    def __repr__(self) -> str:
        return (
            f"CharLSTM(vocab_size={self.vocab_size}, hidden={self.hidden}, "
            f"layers={self.num_layers}, dropout={self.dropout}, seed={self.seed})"
        )
