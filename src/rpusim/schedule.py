"""Learning-rate schedules: the rate in force as a pure function of the characters trained.

``train.lr_schedule`` picks one; ``c`` is the number of training characters before an update
step (the rate is evaluated once per step, at the characters trained before it), ``lr`` is
``train.lr``, ``gamma`` ``train.lr_gamma``, ``S`` ``train.lr_step_chars``, ``W``
``train.lr_warmup_chars`` and ``T`` the run's length in characters (below)::

    constant      lr                                   (exactly train.lr: runs unchanged)
    step          lr * gamma ** floor(c' / S)
    exponential   lr * gamma ** (c' / S)               (continuous)
    cosine        lr_min + (lr - lr_min) * (1 + cos(pi * min(c' / (T - W), 1))) / 2

with ``c' = c - W``: after a warm-up of ``W`` characters (default 0), during which the rate rises
linearly from 0 at ``c = 0`` to ``lr`` at ``c = W`` (``lr * c / W``), the decay starts from ``lr``.

``T``, the run's length, is the number of characters the run trains: ``min(epochs x
chars_per_epoch, max_chars rounded up to a whole step of seq_len x batch_size)``, where
``chars_per_epoch`` is the whole sequences of the training split (``BatchStream``). The cosine
reaches ``lr_min`` at ``T`` and stays there (``T <= W``: straight to ``lr_min``). Because ``T``
depends on ``train.epochs`` and ``train.max_chars``, a cosine run cannot be resumed with either
changed (the other schedules can).

Because the rate depends only on ``c`` and the config, a run resumed from a checkpoint continues
on the same schedule bit for bit.
"""

from __future__ import annotations

import math

from rpusim.config import TrainConfig

SCHEDULES = ("constant", "step", "exponential", "cosine")


def run_chars(tc: TrainConfig, chars_per_epoch: int) -> int:
    """``T``: the characters a run of ``tc`` trains (epochs, cut by ``max_chars`` at the first
    whole step at or past it)."""
    step = tc.seq_len * tc.batch_size
    total = tc.epochs * chars_per_epoch
    if tc.max_chars is not None:
        total = min(total, -(-tc.max_chars // step) * step)
    return total


def learning_rate(tc: TrainConfig, chars: int, total_chars: int) -> float:
    """The rate of the update step taken after ``chars`` training characters of a run of
    ``total_chars`` characters (:func:`run_chars`); see the module docstring."""
    lr = tc.lr
    warmup = tc.lr_warmup_chars
    if chars < warmup:
        return lr * chars / warmup
    if tc.lr_schedule == "constant":
        return lr
    c = chars - warmup
    if tc.lr_schedule == "step":
        return lr * tc.lr_gamma ** (c // tc.lr_step_chars)
    if tc.lr_schedule == "exponential":
        return lr * tc.lr_gamma ** (c / tc.lr_step_chars)
    if tc.lr_schedule == "cosine":
        span = total_chars - warmup
        progress = 1.0 if span <= 0 else min(c / span, 1.0)
        return tc.lr_min + (lr - tc.lr_min) * (1.0 + math.cos(math.pi * progress)) / 2.0
    raise ValueError(f"train.lr_schedule {tc.lr_schedule!r}: choose one of {SCHEDULES}")
