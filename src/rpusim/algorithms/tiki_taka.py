"""``tiki_taka``: Tiki-Taka v1 (Gokmen & Haensch 2020), ``docs/model.md`` section 8.

Two arrays of the tile's device model: the fast ``A`` (its own device-to-device draw) and the
slow ``C`` (the tile's devices). Every read of the tile sees ``W = gamma A + C``.

* update: the pairs are written onto ``A`` as the pulsed update, ``A <- A - lr_A d^T x``;
* transfer (every ``transfer_every`` pairs, or update calls with ``units_in_mbatch``): the next
  ``n_reads_per_transfer`` columns ``i`` of ``A`` (in turn, cyclically) are read with one-hot
  inputs ``e_i`` through the transfer periphery (``rpu.transfer_forward``), ``v_i = A e_i`` (+
  read noise), and written into ``C`` as a pulsed update ``C <- C + lr_T v_i e_i^T``; with
  ``with_reset_prob`` a transferred column of ``A`` is then set to zero.

``lr_A = fast_lr (x lr with scale_fast_lr)``, ``lr_T = transfer_lr (x lr with
scale_transfer_lr)``, as in the reference simulator (IBM aihwkit, ``TransferCompound``).
Programming the tile's weights programs ``C`` and sets ``A`` to zero.
"""

from __future__ import annotations

from typing import Any

import torch

from rpusim import update as pulses
from rpusim.algorithms.base import (
    STREAM_ALGORITHM,
    STREAM_TRANSFER_READ,
    STREAM_TRANSFER_UPDATE,
    Algorithm,
    TransferSchedule,
)
from rpusim.periphery import analog_mvm


class TikiTaka(Algorithm):
    name = "tiki_taka"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.cfg = getattr(tile.cfg, self.name)
        self.dev_fast = self.draw_fast_devices()
        self.A = torch.zeros_like(tile.weights)
        self.C = tile.weights.clone()
        self.schedule = TransferSchedule(self.cfg.transfer_every, self.cfg.units_in_mbatch)
        self.next_col = 0
        self.n_transfers = 0
        self.gen = self.generator(STREAM_ALGORITHM)
        self.gen_read = torch.Generator(device=tile.device)
        self.gen_read.manual_seed(self.stream_seed(STREAM_TRANSFER_READ))

    # -- the update ------------------------------------------------------------------------------

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        fast_lr = self.fast_lr(x, d, lr)
        for start, stop, due in self.schedule.chunks(x.shape[0]):
            if stop > start:
                self.write_fast(x[start:stop], d[start:stop], fast_lr)
            if due:
                self.transfer(lr)
        self.sync()

    def fast_lr(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> float:
        return self.cfg.fast_lr * lr if self.cfg.scale_fast_lr else self.cfg.fast_lr

    def transfer_lr(self, lr: float) -> float:
        return self.cfg.transfer_lr * lr if self.cfg.scale_transfer_lr else self.cfg.transfer_lr

    def write_fast(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """The pairs' pulsed update onto ``A``."""
        t = self.tile
        key = t.next_update_key()
        pulses.pulsed_update(
            self.A, x, d, lr, self.dev_fast, t.cfg.update, t.cfg.device.dw_min, key
        )

    def next_columns(self) -> list[int]:
        n_in = self.tile.in_size
        n = min(self.cfg.n_reads_per_transfer, n_in)
        cols = [(self.next_col + j) % n_in for j in range(n)]
        self.next_col = (self.next_col + n) % n_in
        return cols

    def read_columns(self, cols: list[int]) -> torch.Tensor:
        """Columns ``cols`` of ``A`` through the transfer periphery: ``(out, len(cols))``."""
        t = self.tile
        onehot = torch.zeros(len(cols), t.in_size, dtype=torch.float32, device=t.device)
        onehot[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
        return analog_mvm(self.A, onehot, t.cfg.transfer_forward, self.gen_read).t()

    def transfer(self, lr: float) -> None:
        cols = self.next_columns()
        self.write_slow(cols, self.read_columns(cols), lr)
        self.after_read(cols)

    def write_slow(self, cols: list[int], v: torch.Tensor, lr: float) -> None:
        """``C <- C + lr_T v_i e_i^T`` for the read columns, one pulsed update (pairs ``e_i``,
        ``-v_i``)."""
        t = self.tile
        onehot = torch.zeros(len(cols), t.in_size, dtype=torch.float32, device=t.device)
        onehot[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
        key = self.stream_seed(STREAM_TRANSFER_UPDATE, self.n_transfers)
        self.n_transfers += 1
        d = (-v.t()).contiguous()
        lr_t, upd = self.transfer_lr(lr), t.cfg.update
        pulses.pulsed_update(self.C, onehot, d, lr_t, t.devices, upd, t.cfg.device.dw_min, key)

    def after_read(self, cols: list[int], u_reset: torch.Tensor | None = None) -> None:
        """After the read of ``cols``: each column of ``A`` is set to zero with probability
        ``with_reset_prob`` (``u_reset``: the uniforms, if drawn already)."""
        p = self.cfg.with_reset_prob
        if p > 0:
            u = torch.rand(len(cols), generator=self.gen) if u_reset is None else u_reset
            hit = u < p
            for col, h in zip(cols, hit.tolist(), strict=True):
                if h:
                    self.A[:, col] = 0.0

    # -- the weights the tile reads --------------------------------------------------------------

    def sync(self) -> None:
        """The tile's read weights: ``W = gamma A + C``."""
        if self.cfg.gamma == 0:
            self.tile.weights.copy_(self.C)
        else:
            torch.add(self.C, self.A, alpha=self.cfg.gamma, out=self.tile.weights)

    def set_weights(self) -> None:
        self.C.copy_(self.tile.weights)
        self.A.zero_()
        self.sync()

    def arrays(self) -> dict[str, torch.Tensor]:
        out = {"A": self.A.clone(), "C": self.C.clone()}
        for name, value in self.dev_fast.state().items():
            out[f"A.{name}"] = value
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "A": self.A.cpu().clone(),
            "C": self.C.cpu().clone(),
            "fast_devices": self.dev_fast.to("cpu").state(),
            "schedule_count": self.schedule.count,
            "next_col": self.next_col,
            "n_transfers": self.n_transfers,
            "gen": self.gen.get_state(),
            "gen_read": self.gen_read.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.A.copy_(state["A"])
        self.C.copy_(state["C"])
        self.dev_fast = self.devices_from_state(state["fast_devices"])
        self.schedule.count = int(state["schedule_count"])
        self.next_col = int(state["next_col"])
        self.n_transfers = int(state["n_transfers"])
        self.gen.set_state(state["gen"])
        self.gen_read.set_state(state["gen_read"])
        self.sync()
