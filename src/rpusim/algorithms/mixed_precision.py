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

import numpy as np
import torch

from rpusim import rng
from rpusim.algorithms.base import STREAM_ALGORITHM, Algorithm, TransferSchedule
from rpusim.algorithms.pulses import apply_pulse_counts


class MixedPrecision(Algorithm):
    name = "mixed_precision"
    #: ``"numba"`` (the update call compiled, CPU), ``"torch"`` (its twin) or ``"auto"``.
    backend = "auto"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.cfg = tile.cfg.mixed_precision
        self.chi = torch.zeros_like(tile.weights)
        self.schedule = TransferSchedule(self.cfg.transfer_every, False)
        self.key = self.stream_seed(STREAM_ALGORITHM)  # the pulses' normals (counter-based)
        self.n_transfers = 0

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """Pair by pair: ``chi <- chi - lr d_k^T x_k``, a transfer where the schedule puts one
        (compiled on the CPU, :func:`rpusim.algorithms.fused.mixed_precision_kernel`; the
        torch loop below is its twin, bit for bit)."""
        t = self.tile
        if self.backend == "numba" or (self.backend == "auto" and t.device.type == "cpu"):
            from rpusim.algorithms.fused import mixed_precision_kernel

            counters = np.array([self.schedule.count, self.n_transfers], np.int64)
            mixed_precision_kernel(t.cfg.device.kind)(
                t.weights.numpy(), self.chi.numpy(), x.contiguous().numpy(), d.contiguous().numpy(),
                np.float32(lr), np.float32(self.eps()), np.float32(self.cfg.max_pulses),
                self.cfg.transfer_every, counters, *t.devices.numpy_args(),
                rng.stream_base(self.key, rng.STREAM_C2C), rng.normal_table_numpy(),
            )  # fmt: skip
            self.schedule.count, self.n_transfers = int(counters[0]), int(counters[1])
            return
        for k in range(x.shape[0]):
            self.chi.sub_(lr * torch.outer(d[k], x[k]))
            self.schedule.count += 1
            if self.schedule.count == self.cfg.transfer_every:
                self.schedule.count = 0
                self.transfer()

    def eps(self) -> float:
        """The weight of one pulse."""
        return self.cfg.granularity or self.tile.cfg.device.dw_min

    def transfer(self) -> None:
        t = self.tile
        eps = self.eps()
        limit = float(self.cfg.max_pulses)
        n = torch.trunc(self.chi / eps).clamp(-limit, limit)
        apply_pulse_counts(t.weights, n, t.devices, self.key, self.n_transfers, backend="torch")
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
