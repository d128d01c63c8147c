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
            t._w.sub_(lr * (d.t() @ x))
            torch.maximum(torch.minimum(t._w, t._dev.w_max), t._dev.w_min, out=t._w)
            return
        pulses.pulsed_update(
            t._w, x, d, lr, t._dev, t.cfg.update, t.cfg.device.dw_min, t.next_update_key()
        )
