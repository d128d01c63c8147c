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

An update call runs as one loop (:meth:`TTv2.update`): on the CPU compiled
(:mod:`rpusim.algorithms.fused`), elsewhere (or with ``backend = "torch"``) its plain torch twin,
the same bits. The call's pairs share one update key; its transfers' read noises and uniforms
are drawn when the call starts.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from rpusim import rng
from rpusim.algorithms.base import STREAM_PULSE_COUNTS
from rpusim.algorithms.pulses import apply_pulse_counts, buffer_columns_numba
from rpusim.algorithms.tiki_taka import TikiTaka
from rpusim.periphery import converter_step, quantize
from rpusim.update.plan import pulse_scales, sqrt_counts
from rpusim.update.reference import pulsed_update_reference


class TTv2(TikiTaka):
    name = "ttv2"
    #: The buffer step: ``"numba"`` (compiled, CPU), ``"torch"`` (the reference it is tested
    #: against bit for bit) or ``"auto"`` (numba on the CPU).
    backend = "auto"

    def __init__(self, tile) -> None:
        super().__init__(tile)
        self.H = torch.zeros_like(tile.weights)
        self.x_max = 0.0  # running maxima of auto_scale (0: none seen yet)
        self.d_max = 0.0
        self.pulse_key = self.stream_seed(STREAM_PULSE_COUNTS)  # normals of the pulses to C
        self.n_buffer_writes = 0

    # -- the update call as one loop (compiled on the CPU: rpusim.algorithms.fused) -------------

    def fuses(self) -> bool:
        """The loop of :meth:`update` applies (else the generic loop of Tiki-Taka): a transfer
        read without stochastic rounding or re-reads (bound management)."""
        io = self.tile.cfg.transfer_forward
        rereads = io.bound_management == "iterative" and io.out_bound is not None
        return not io.inp_sto_round and not rereads

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """The pairs in order, each written onto ``A`` (with the choppers of its moment), the
        transfers where the schedule puts them. One update key for the call (pair ``k`` is
        pair ``k`` of it), and the call's read noises and uniforms drawn up front."""
        if not self.fuses():
            super().update(x, d, lr)
            return
        t = self.tile
        x, d = x.contiguous(), d.contiguous()
        n_pairs = x.shape[0]
        fast_lr = self.fast_lr(x, d, lr)
        every, pairs_mode = self.cfg.transfer_every, not self.cfg.units_in_mbatch
        if pairs_mode:
            n_t, due_at_end = (self.schedule.count + n_pairs) // every, False
        else:
            self.schedule.count += 1
            due_at_end = self.schedule.count == every
            if due_at_end:
                self.schedule.count = 0
            n_t = int(due_at_end)
        n_reads = min(self.cfg.n_reads_per_transfer, t.in_size)
        io = t.cfg.transfer_forward
        noise = reset_u = chop_u = None
        if n_t and io.out_noise > 0:
            shape = (n_t, n_reads, t.out_size)
            noise = torch.randn(shape, generator=self.gen_read, device=t.device)
        if n_t and self.cfg.with_reset_prob > 0:
            reset_u = torch.rand(n_t, n_reads, generator=self.gen)
        chop_p = getattr(self.cfg, "in_chop_prob", 0.0)
        if n_t and chop_p > 0 and self.cfg.in_chop_random:
            chop_u = torch.rand(n_t, n_reads, generator=self.gen)
        key = t.next_update_key() if n_pairs else 0
        scales = pulse_scales(x, d, fast_lr, t.cfg.update, t.cfg.device.dw_min)
        drawn = (noise, reset_u, chop_u)
        if self.backend == "numba" or (self.backend == "auto" and t.device.type == "cpu"):
            self._update_numba(x, d, lr, key, scales, due_at_end, n_reads, drawn)
        else:
            self._update_torch(x, d, lr, fast_lr, key, scales, due_at_end, drawn)
        self.sync()

    def _update_torch(self, x, d, lr, fast_lr, key, scales, due_at_end, drawn) -> None:
        """The loop in plain torch (the twin the compiled loop is tested against)."""
        t = self.tile
        chop = getattr(self, "chop", None)
        xc = x.clone()
        n_pairs, done = x.shape[0], 0
        for k in range(n_pairs):
            if chop is not None:
                xc[k] = x[k] * chop
            pulsed_update_reference(
                self.A, xc, d, fast_lr, self.dev_fast, t.cfg.update, t.cfg.device.dw_min, key,
                pairs=range(k, k + 1), scales=scales,
            )  # fmt: skip
            due = k == n_pairs - 1 and due_at_end
            if not self.cfg.units_in_mbatch:
                self.schedule.count += 1
                if self.schedule.count == self.cfg.transfer_every:
                    self.schedule.count, due = 0, True
            if due:
                self._drawn_transfer(lr, done, drawn)
                done += 1
        if n_pairs == 0 and due_at_end:
            self._drawn_transfer(lr, done, drawn)

    def _drawn_transfer(self, lr: float, index: int, drawn) -> None:
        """Transfer ``index`` of the call, with its noise and uniforms drawn up front."""
        noise, reset_u, chop_u = (None if a is None else a[index] for a in drawn)
        cols = self.next_columns()
        io = self.tile.cfg.transfer_forward
        v = self._read_dac() * self.A[:, cols]
        if noise is not None:
            v = v + io.out_noise * noise.t()
        v = quantize(v, io.out_bits, io.out_bound)
        self.write_slow(cols, v, lr)
        if chop_u is not None or hasattr(self, "chop"):
            self.after_read(cols, reset_u, chop_u)
        else:
            self.after_read(cols, reset_u)

    def _read_dac(self) -> torch.Tensor:
        """The DAC's value of the one-hot read's 1 (float32 scalar)."""
        io = self.tile.cfg.transfer_forward
        one = torch.ones(1, dtype=torch.float32, device=self.tile.device)
        return quantize(one, io.inp_bits, io.inp_bound)[0]

    def _update_numba(self, x, d, lr, key, scales, due_at_end, n_reads, drawn) -> None:
        """The loop compiled (:mod:`rpusim.algorithms.fused`), chunk by chunk of pairs."""
        from rpusim.algorithms import fused
        from rpusim.update import numba as unb

        t = self.tile
        n_out, n_in = self.A.shape
        n_pairs = x.shape[0]
        a, b, bl = (s.numpy() for s in scales)
        x_np, d_np = x.numpy(), d.numpy()
        chop = getattr(self, "chop", None)
        xc_np = x.clone().numpy() if chop is not None else x_np
        col_base = rng.stream_base(key, rng.STREAM_COL)
        row_base = rng.stream_base(key, rng.STREAM_ROW)
        c2c_base = rng.stream_base(key, rng.STREAM_C2C)
        col_seed, row_seed = unb._line_seeds(col_base, n_in), unb._line_seeds(row_base, n_out)
        c2c_col_seed = unb._line_seeds(c2c_base, n_in)
        std_sqrt = np.float32(self.dev_fast.dw_min_std) * sqrt_counts().numpy()
        chunk = min(unb.CHUNK, max(n_pairs, 1))
        max_bl = int(bl.max()) if n_pairs else 1
        col_word = np.empty((chunk, n_in), np.uint64)
        row_word = np.empty((chunk, n_out), np.uint64)
        col_mask = np.empty((chunk, max_bl, (n_in + 63) // 64), np.uint64)
        fparams, consts, fw_min, fw_max = self.dev_fast.numpy_args()
        cparams, _, cw_min, cw_max = t.devices.numpy_args()
        io = t.cfg.transfer_forward
        noise, reset_u, chop_u = drawn
        f32 = np.float32
        e3, e2 = np.zeros((1, 1, 1), f32), np.zeros((1, 1), f32)
        agad = hasattr(self, "mean_run")
        cfg = self.cfg
        chop_p = getattr(cfg, "in_chop_prob", 0.0)
        counters = np.array(
            [
                self.schedule.count,
                self.next_col,
                self.n_buffer_writes,
                getattr(self, "n_switches", 0),
                0,
            ],
            np.int64,
        )
        out_step, out_per_step = (
            converter_step(io.out_bits, io.out_bound) if io.out_bits is not None else (1.0, 1.0)
        )
        scale = self.transfer_lr(lr) / (cfg.buffer_granularity * t.cfg.device.dw_min)
        pulse_base = rng.stream_base(self.pulse_key, rng.STREAM_C2C)
        kernel = fused.kernel(t.cfg.device.kind)
        threads = numba.get_num_threads()
        if n_pairs * (n_in + n_out) * max_bl < unb.SERIAL_DRAWS:
            numba.set_num_threads(1)
        try:
            for k0 in range(0, max(n_pairs, 1), chunk):
                k1 = min(n_pairs, k0 + chunk)
                if k1 > k0:
                    unb._pulse_pass(
                        x_np, d_np, a, b, bl, k0, k1, col_base, row_base, col_seed, row_seed,
                        col_word, col_mask, row_word,
                    )  # fmt: skip
                kernel(
                    k0, k1, x_np, xc_np, d_np, row_word, col_word, col_mask,
                    self.A.numpy(), fparams, fw_min, fw_max, self.dev_fast.model.FOLDS,
                    std_sqrt, c2c_base, c2c_col_seed,
                    cfg.transfer_every, not cfg.units_in_mbatch, due_at_end and k1 == n_pairs,
                    n_reads, counters,
                    f32(self._read_dac()), noise is not None, f32(io.out_noise),
                    e3 if noise is None else noise.numpy(),
                    io.out_bound is not None, f32(io.out_bound or 0.0), io.out_bits is not None,
                    f32(out_per_step), f32(out_step),
                    chop is not None, self.chop.numpy() if chop is not None else e2[0],
                    agad, self.mean_run.numpy() if agad else e2,
                    self.mean_ref.numpy() if agad else e2, self.n_run.numpy() if agad else e2[0],
                    self.C.numpy(), self.H.numpy(), f32(scale), f32(cfg.max_pulses),
                    cfg.forget_buffer, f32(cfg.momentum), f32(1.0 - cfg.momentum),
                    cparams, consts, cw_min, cw_max, pulse_base, rng.normal_table_numpy(),
                    f32(cfg.with_reset_prob), e2 if reset_u is None else reset_u.numpy(),
                    f32(chop_p), bool(getattr(cfg, "in_chop_random", False)),
                    max(round(1.0 / chop_p), 2) if chop_p > 0 else 2,
                    e2 if chop_u is None else chop_u.numpy(),
                    self.reads_in_period.numpy() if chop is not None else np.zeros(1, np.int64),
                )  # fmt: skip
        finally:
            numba.set_num_threads(threads)
        self.schedule.count, self.next_col, self.n_buffer_writes = (int(c) for c in counters[:3])
        if chop is not None:
            self.n_switches = int(counters[3])

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
                cfg.momentum, t.devices, self.pulse_key, call,
            )  # fmt: skip
            return
        index = torch.tensor(cols, device=t.device)
        h = self.H[:, index] + scale * b
        limit = float(self.cfg.max_pulses)
        n = torch.trunc(h).clamp(-limit, limit)
        counts = torch.zeros_like(self.C)
        counts[:, index] = n
        apply_pulse_counts(self.C, counts, t.devices, self.pulse_key, call, backend="torch")
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
