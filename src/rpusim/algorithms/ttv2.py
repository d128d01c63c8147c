"""``ttv2``: Tiki-Taka v2 (Gokmen 2021), ``docs/model.md`` section 8.

As :mod:`~rpusim.algorithms.tiki_taka`, but each read column ``v_i`` of ``A`` goes into a digital
buffer ``H`` (float32 ``(out, in)``, in units of pulses of ``C``) first::

    H_i <- H_i + lr_T / (buffer_granularity dw_min) * v_i
    n_i  = clip(trunc(H_i), -max_pulses, max_pulses)      # single pulses to column i of C
    H_i <- momentum H_i                 where n_i != 0   (forget_buffer)
    H_i <- H_i - (1 - momentum) n_i                      (otherwise)

``n > 0`` are up pulses. With ``auto_scale`` the fast learning rate is
``lr_A update.bl dw_min / (x_max d_max)`` with running maxima (momentum ``auto_momentum``) of
``max |x|`` and ``max |d|`` of each update call, so that the largest pair makes about ``bl``
coincidences whatever the gradient's magnitude (the reference simulator's ``auto_scale``).
"""

from __future__ import annotations

from typing import Any

import torch

from rpusim.algorithms.base import STREAM_PULSE_COUNTS
from rpusim.algorithms.pulses import apply_pulse_counts, buffer_columns_numba
from rpusim.algorithms.tiki_taka import TikiTaka


class TTv2(TikiTaka):
    name = "ttv2"
    #: The buffer step: ``"numba"`` (compiled, CPU), ``"torch"`` (the reference it is tested
    #: against bit for bit) or ``"auto"`` (numba on the CPU).
    backend = "auto"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.H = torch.zeros_like(tile._w)
        self.x_max = 0.0  # running maxima of auto_scale (0: none seen yet)
        self.d_max = 0.0
        self.pulse_key = self.stream_seed(STREAM_PULSE_COUNTS)  # normals of the pulses to C
        self.n_buffer_writes = 0

    def fast_lr(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> float:
        base = super().fast_lr(x, d, lr)
        if not self.cfg.auto_scale:
            return base
        xm, dm = float(x.abs().max()), float(d.abs().max())
        if self.x_max == 0.0:
            self.x_max, self.d_max = xm, dm
        else:
            mom = self.cfg.auto_momentum
            self.x_max = mom * self.x_max + (1.0 - mom) * xm
            self.d_max = mom * self.d_max + (1.0 - mom) * dm
        if self.x_max <= 0 or self.d_max <= 0:
            return base
        bl, dw_min = self.tile.cfg.update.bl, self.tile.cfg.device.dw_min
        return base * bl * dw_min / (self.x_max * self.d_max)

    def buffer_input(self, cols: list[int], v: torch.Tensor) -> torch.Tensor:
        """What the buffer adds up for the read columns (``(out, n)``): the read itself."""
        return v

    def write_slow(self, cols: list[int], v: torch.Tensor, lr: float) -> None:
        t = self.tile
        scale = self.transfer_lr(lr) / (self.cfg.buffer_granularity * t.cfg.device.dw_min)
        b = self.buffer_input(cols, v)
        call = self.n_buffer_writes
        self.n_buffer_writes += 1
        if self.backend == "numba" or (self.backend == "auto" and self.C.device.type == "cpu"):
            cfg = self.cfg
            buffer_columns_numba(
                self.C, self.H, cols, b, scale, float(cfg.max_pulses), cfg.forget_buffer,
                cfg.momentum, t._dev, self.pulse_key, call,
            )  # fmt: skip
            return
        index = torch.tensor(cols, device=t.device)
        h = self.H[:, index] + scale * b
        limit = float(self.cfg.max_pulses)
        n = torch.trunc(h).clamp(-limit, limit)
        counts = torch.zeros_like(self.C)
        counts[:, index] = n
        apply_pulse_counts(self.C, counts, t._dev, self.pulse_key, call, backend="torch")
        if self.cfg.forget_buffer:
            h = torch.where(n != 0, self.cfg.momentum * h, h)
        else:
            h = h - (1.0 - self.cfg.momentum) * n
        self.H[:, index] = h

    def arrays(self) -> dict[str, torch.Tensor]:
        return {**super().arrays(), "H": self.H.clone()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "H": self.H.cpu().clone(),
            "x_max": self.x_max,
            "d_max": self.d_max,
            "n_buffer_writes": self.n_buffer_writes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.H.copy_(state["H"])
        self.x_max, self.d_max = float(state["x_max"]), float(state["d_max"])
        self.n_buffer_writes = int(state.get("n_buffer_writes", 0))
        super().load_state_dict(state)
