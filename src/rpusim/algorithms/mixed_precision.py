"""``mixed_precision``: mixed-precision training (Nandakumar et al. 2020), ``docs/model.md``
section 8.

The gradient is accumulated digitally, ``chi <- chi - lr d^T x`` (float32 ``(out, in)``); after
every ``transfer_every`` pairs every device gets ``n = clip(trunc(chi / eps), -max_pulses,
max_pulses)`` single pulses (``n > 0`` up; through the device model,
:func:`~rpusim.algorithms.pulses.apply_pulse_counts`) and ``chi <- chi - n eps`` keeps the
remainder. ``eps`` is ``granularity``, or the device's nominal step ``device.dw_min``. The tile's
one array is the analog ``W``.
"""

from __future__ import annotations

from typing import Any

import torch

from rpusim.algorithms.base import STREAM_ALGORITHM, Algorithm, TransferSchedule
from rpusim.algorithms.pulses import apply_pulse_counts


class MixedPrecision(Algorithm):
    name = "mixed_precision"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.cfg = tile.cfg.mixed_precision
        self.chi = torch.zeros_like(tile._w)
        self.schedule = TransferSchedule(self.cfg.transfer_every, False)
        self.key = self.stream_seed(STREAM_ALGORITHM)  # the pulses' normals (counter-based)
        self.n_transfers = 0

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        for start, stop, due in self.schedule.chunks(x.shape[0]):
            if stop > start:
                self.chi.sub_(lr * (d[start:stop].t() @ x[start:stop]))
            if due:
                self.transfer()

    def transfer(self) -> None:
        t = self.tile
        eps = self.cfg.granularity or t.cfg.device.dw_min
        limit = float(self.cfg.max_pulses)
        n = torch.trunc(self.chi / eps).clamp(-limit, limit)
        apply_pulse_counts(t._w, n, t._dev, self.key, self.n_transfers)
        self.n_transfers += 1
        self.chi.sub_(n * eps)

    def set_weights(self) -> None:
        self.chi.zero_()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"chi": self.chi.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "chi": self.chi.cpu().clone(),
            "schedule_count": self.schedule.count,
            "n_transfers": self.n_transfers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chi.copy_(state["chi"])
        self.schedule.count = int(state["schedule_count"])
        self.n_transfers = int(state.get("n_transfers", 0))
