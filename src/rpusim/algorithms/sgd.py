"""``sgd``: the pulsed update of ``docs/model.md`` section 3 straight onto the one array.

Exactly what the tile did before it had algorithms (the same random keys, the same bits).
"""

from __future__ import annotations

import torch

from rpusim import update as pulses
from rpusim.algorithms.base import Algorithm


class SGD(Algorithm):
    """``W <- W - lr d^T x`` as pulse coincidences (``update.mode: pulsed``) or exactly
    (``float``, then clipped to the devices' bounds)."""

    name = "sgd"

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        t = self.tile
        if t.cfg.update.mode == "float":
            t.weights.sub_(lr * (d.t() @ x))
            torch.maximum(torch.minimum(t.weights, t.devices.w_max), t.devices.w_min, out=t.weights)
            return
        pulses.pulsed_update(
            t.weights, x, d, lr, t.devices, t.cfg.update, t.cfg.device.dw_min, t.next_update_key()
        )
