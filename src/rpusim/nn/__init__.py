"""Analog layers in torch: ``nn.Module`` s whose matrix products are reads of RPU tiles.

>>> from rpusim.nn import AnalogLinear, AnalogConv2d, AnalogLSTM, convert_to_analog
>>> from rpusim.optim import AnalogSGD
>>> model = torch.nn.Sequential(AnalogLinear(64, 32, rpu_config=cfg), torch.nn.ReLU(),
...                             AnalogLinear(32, 10, rpu_config=cfg))
>>> opt = AnalogSGD(model.parameters(), lr=0.1)
>>> loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()

Forward: the tile's forward read; backward (autograd): the tile's backward read, recording the
pairs ``(x, d)``; ``AnalogSGD.step()``: the pulsed updates. See :mod:`rpusim.nn.modules`.
"""

from rpusim.nn.convert import convert_to_analog
from rpusim.nn.modules import (
    AnalogConv2d,
    AnalogLinear,
    AnalogLSTM,
    AnalogModule,
    analog_module_of,
    char_lstm_modules,
)

__all__ = [
    "AnalogConv2d",
    "AnalogLSTM",
    "AnalogLinear",
    "AnalogModule",
    "analog_module_of",
    "char_lstm_modules",
    "convert_to_analog",
]
