"""``convert_to_analog``: any torch model with its Linear, Conv2d and LSTM layers on RPU tiles."""

from __future__ import annotations

import copy

import torch
from torch import nn

from rpusim.config import RPUConfig
from rpusim.nn.modules import AnalogConv2d, AnalogLinear, AnalogLSTM
from rpusim.tile import child_seed


def convert_to_analog(
    module: nn.Module, rpu_config: RPUConfig | None = None, seed: int | None = None
) -> nn.Module:
    """A deep copy of ``module`` with every ``nn.Linear``, ``nn.Conv2d`` and ``nn.LSTM`` replaced
    by :class:`AnalogLinear`, :class:`AnalogConv2d`, :class:`AnalogLSTM` on ``rpu_config``
    tiles holding the same weights (clipped to the devices' bounds, or mapped onto them with
    ``rpu.mapping.weight_scaling``). The original is not changed.

    ``seed`` fixes the tiles' random streams (the k-th replaced layer, in ``named_modules``
    order, gets ``child_seed(seed, k)``); ``None`` draws them from torch's global generator.
    Conv2d needs ``groups=1``, ``dilation=1``, zero padding given as numbers; LSTM needs
    ``proj_size=0`` and one direction: anything else is refused.
    """
    rpu_config = rpu_config if rpu_config is not None else RPUConfig()
    if isinstance(module, nn.Linear | nn.Conv2d | nn.LSTM):
        return _analog(module, rpu_config, None if seed is None else child_seed(seed, 0))
    out = copy.deepcopy(module)
    count = 0
    for name, child in list(out.named_modules()):
        if not isinstance(child, nn.Linear | nn.Conv2d | nn.LSTM):
            continue
        tile_seed = None if seed is None else child_seed(seed, count)
        count += 1
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, _analog(child, rpu_config, tile_seed))
    return out


def _analog(child: nn.Module, cfg: RPUConfig, seed: int | None) -> nn.Module:
    params = list(child.parameters())
    device = params[0].device if params else torch.device("cpu")
    if isinstance(child, nn.Linear):
        new = AnalogLinear(
            child.in_features,
            child.out_features,
            bias=child.bias is not None,
            rpu_config=cfg,
            seed=seed,
        )
        new.set_weights(child.weight.detach(), None if child.bias is None else child.bias.detach())
    elif isinstance(child, nn.Conv2d):
        if (
            child.groups != 1
            or tuple(child.dilation) != (1, 1)
            or child.padding_mode != "zeros"
            or isinstance(child.padding, str)
        ):
            raise ValueError(
                f"convert_to_analog: {child!r}: only groups=1, dilation=1 and numeric zero "
                "padding map onto one tile"
            )
        new = AnalogConv2d(
            child.in_channels,
            child.out_channels,
            child.kernel_size,
            stride=child.stride,
            padding=child.padding,
            bias=child.bias is not None,
            rpu_config=cfg,
            seed=seed,
        )
        new.set_weights(child.weight.detach(), None if child.bias is None else child.bias.detach())
    else:
        if child.bidirectional or child.proj_size:
            raise ValueError(
                f"convert_to_analog: {child!r}: bidirectional or projected LSTMs are not supported"
            )
        new = AnalogLSTM(
            child.input_size,
            child.hidden_size,
            child.num_layers,
            bias=child.bias,
            batch_first=child.batch_first,
            dropout=child.dropout,
            rpu_config=cfg,
            seed=seed,
        )
        new.set_weights({k: v.detach() for k, v in child.named_parameters()})
    new.train(child.training)
    return new.to(device)
