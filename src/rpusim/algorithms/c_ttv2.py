"""``c_ttv2``: chopped TTv2 (Rasch et al. 2024), ``docs/model.md`` section 8.

As :mod:`~rpusim.algorithms.ttv2`, with a chopper ``c_i = +-1`` per column (input line): the
gradient is written onto ``A`` with the inputs ``c_i x_i`` (so column ``i`` of ``A`` integrates
``c_i`` times its gradient), and the read of column ``i`` is multiplied by ``c_i`` again before it
enters the buffer. After each read of column ``i`` its chopper switches with probability
``in_chop_prob`` (``in_chop_random``), or regularly every ``max(round(1 / in_chop_prob), 2)``
reads of that column. A bias of ``A`` (drift towards its devices' symmetry point) then enters the
buffer with alternating signs and averages out; the gradient does not.
"""

from __future__ import annotations

from typing import Any

import torch

from rpusim.algorithms.ttv2 import TTv2


class ChoppedTTv2(TTv2):
    name = "c_ttv2"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.chop = torch.ones(tile.in_size, dtype=torch.float32, device=tile.device)
        self.reads_in_period = torch.zeros(tile.in_size, dtype=torch.int64)
        self.n_switches = 0

    def write_fast(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        super().write_fast((x * self.chop).contiguous(), d, lr)

    def buffer_input(self, cols: list[int], v: torch.Tensor) -> torch.Tensor:
        return v * self.chop[torch.tensor(cols, device=v.device)]

    def after_read(
        self,
        cols: list[int],
        u_reset: torch.Tensor | None = None,
        u_chop: torch.Tensor | None = None,
    ) -> None:
        super().after_read(cols, u_reset)
        p = self.cfg.in_chop_prob
        if p <= 0:
            return
        index = torch.tensor(cols)
        if self.cfg.in_chop_random:
            u = torch.rand(len(cols), generator=self.gen) if u_chop is None else u_chop
            flip = u < p
        else:
            self.reads_in_period[index] += 1
            flip = self.reads_in_period[index] >= max(round(1.0 / p), 2)
        switched = index[flip]
        if switched.numel():
            self.reads_in_period[switched] = 0
            self.chop[switched.to(self.chop.device)] *= -1.0
            self.n_switches += int(switched.numel())
            self.on_switch(switched)

    def on_switch(self, cols: torch.Tensor) -> None:
        """The choppers of ``cols`` just switched."""

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "chop": self.chop.cpu().clone(),
            "reads_in_period": self.reads_in_period.clone(),
            "n_switches": self.n_switches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chop.copy_(state["chop"])
        self.reads_in_period.copy_(state["reads_in_period"])
        self.n_switches = int(state["n_switches"])
        super().load_state_dict(state)
