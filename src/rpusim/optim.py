"""``AnalogSGD``: plain SGD whose step on an analog layer is the tile's pulsed update.

>>> opt = AnalogSGD(model.parameters(), lr=0.1)   # rpusim.nn layers and digital parameters
>>> opt.zero_grad(); loss.backward(); opt.step()

Every :class:`rpusim.nn.AnalogModule` owns a zero-size parameter (``analog_ctx``) through which
the optimizer finds it; ``step()`` sends the pairs ``(x, d)`` its backward reads recorded to the
tiles (``tile.update(x, d, lr)``, in the order of the forward calls, then rows), and applies
``p <- p - lr * p.grad`` to every other parameter. The learning rate is read from
``param_groups`` at each step, so ``torch.optim.lr_scheduler`` schedules work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from rpusim.nn.modules import AnalogModule, analog_module_of


class AnalogSGD(torch.optim.Optimizer):
    """Stochastic gradient descent on analog tiles (pulsed updates) and digital parameters."""

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"AnalogSGD: lr must be > 0, got {lr!r}")
        super().__init__(params, {"lr": float(lr)})

    def analog_modules(self) -> list[tuple[AnalogModule, dict]]:
        """The analog modules of the parameter groups, each with its group."""
        found = []
        for group in self.param_groups:
            for p in group["params"]:
                module = analog_module_of(p)
                if module is not None:
                    found.append((module, group))
        return found

    def regroup_param_groups(self, model: torch.nn.Module) -> None:
        """aihwkit's spelling: make sure every analog module of ``model`` is in a group (those
        given through ``model.parameters()`` already are)."""
        known = {id(m) for m, _ in self.analog_modules()}
        missing = [
            m.analog_ctx
            for m in model.modules()
            if isinstance(m, AnalogModule) and id(m) not in known
        ]
        if missing:
            self.add_param_group({"params": missing})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Every analog module's pulsed update with its recorded pairs; SGD on the rest."""
        from rpusim.model import numba_threads_capped

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with numba_threads_capped(torch.get_num_threads()):
            for group in self.param_groups:
                lr = group["lr"]
                for p in group["params"]:
                    module = analog_module_of(p)
                    if module is not None:
                        module.apply_update(lr)
                    elif p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of digital parameters and the analog modules' recorded pairs."""
        super().zero_grad(set_to_none=set_to_none)
        for module, _ in self.analog_modules():
            module.clear_recorded()
