"""``agad``: AGAD (Rasch et al. 2024), ``docs/model.md`` section 8.

As :mod:`~rpusim.algorithms.c_ttv2` without a reference for ``A``: the buffer adds up, for each
read ``r_i`` of column ``i``, ``c_i (r_i - p_i)``, where ``p_i`` is the mean of the column's reads
over its previous chopper period (frozen when its chopper switched; zero before the first
switch). The running mean ``m_i`` of the current period is kept digitally (float32 ``(out, in)``)
and becomes ``p_i`` at the next switch. The choppers switch regularly by default.
"""

from __future__ import annotations

from typing import Any

import torch

from rpusim.algorithms.c_ttv2 import ChoppedTTv2


class AGAD(ChoppedTTv2):
    name = "agad"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.mean_run = torch.zeros_like(tile.weights)  # mean read of the current chopper period
        self.mean_ref = torch.zeros_like(tile.weights)  # ... of the previous one (the reference)
        self.n_run = torch.zeros(tile.in_size, dtype=torch.float32, device=tile.device)

    def buffer_input(self, cols: list[int], v: torch.Tensor) -> torch.Tensor:
        index = torch.tensor(cols, device=v.device)
        out = (v - self.mean_ref[:, index]) * self.chop[index]
        self.n_run[index] += 1.0
        m = self.mean_run[:, index]
        self.mean_run[:, index] = m + (v - m) / self.n_run[index]
        return out

    def on_switch(self, cols: torch.Tensor) -> None:
        cols = cols.to(self.mean_run.device)
        self.mean_ref[:, cols] = self.mean_run[:, cols]
        self.mean_run[:, cols] = 0.0
        self.n_run[cols] = 0.0

    def arrays(self) -> dict[str, torch.Tensor]:
        return {**super().arrays(), "mean_ref": self.mean_ref.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "mean_run": self.mean_run.cpu().clone(),
            "mean_ref": self.mean_ref.cpu().clone(),
            "n_run": self.n_run.cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_run.copy_(state["mean_run"])
        self.mean_ref.copy_(state["mean_ref"])
        self.n_run.copy_(state["n_run"])
        super().load_state_dict(state)
