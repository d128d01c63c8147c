"""What every learning algorithm of a tile shares: the interface the tile delegates to, the
random streams it may draw from, and the schedule of transfers between its update pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rpusim.devices import DeviceArrays, consts, sample_devices

if TYPE_CHECKING:
    from rpusim.tile import AnalogTile

# The tile's streams 0-3 are its own (devices, forward, backward, update pulses; rpusim.tile).
STREAM_FAST_DEVICES, STREAM_TRANSFER_UPDATE, STREAM_ALGORITHM, STREAM_TRANSFER_READ = 4, 5, 6, 7
# The key of the counter-based normals of the single pulses the buffer of TTv2 (and its chopped
# variants) sends to C (rpusim.algorithms.pulses; one call per buffer write).
STREAM_PULSE_COUNTS = 8


class Algorithm:
    """How a tile learns. The tile holds one; :meth:`rpusim.tile.AnalogTile.update` delegates
    to :meth:`update`. The tile's ``_w`` is what every read sees; an algorithm that owns other
    arrays keeps ``_w`` equal to the weight they make (e.g. ``gamma A + C``)."""

    name = "base"

    def __init__(self, tile: AnalogTile) -> None:
        self.tile = tile

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        raise NotImplementedError

    def set_weights(self) -> None:
        """The tile's ``_w`` was just programmed (clipped to its devices' bounds)."""

    def arrays(self) -> dict[str, torch.Tensor]:
        """The algorithm's arrays by name (copies), each ``(out, in)``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- helpers shared by the algorithms ---------------------------------------------------------

    def stream_seed(self, stream: int, counter: int = 0) -> int:
        from rpusim.tile import child_seed

        return child_seed(self.tile.seed, stream, counter)

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator of one of the algorithm's streams (its state goes in checkpoints)."""
        return torch.Generator().manual_seed(self.stream_seed(stream))

    def draw_fast_devices(self) -> DeviceArrays:
        """A second array of the tile's device model, from its own device-to-device stream."""
        t = self.tile
        gen = torch.Generator().manual_seed(self.stream_seed(STREAM_FAST_DEVICES))
        return sample_devices(t.cfg.device, t.out_size, t.in_size, gen).to(t.device)

    def devices_from_state(self, state: dict[str, torch.Tensor]) -> DeviceArrays:
        cfg = self.tile.cfg.device
        return DeviceArrays.from_state(cfg.kind, state, consts(cfg)).to(self.tile.device)


class TransferSchedule:
    """When transfers fall between the pairs of successive update calls.

    ``every`` pairs (``in_calls=False``: the pairs of all calls counted together; a transfer
    comes right after the pair that completes a period), or ``every`` update calls
    (``in_calls=True``: a transfer after the last pair of every ``every``-th call).
    """

    def __init__(self, every: int, in_calls: bool) -> None:
        self.every, self.in_calls = every, in_calls
        self.count = 0  # pairs (or calls) since the last transfer

    def chunks(self, k: int):
        """Yield ``(start, stop, transfer_after)`` covering the ``k`` pairs of one call."""
        if self.in_calls:
            self.count += 1
            due = self.count == self.every
            if due:
                self.count = 0
            yield 0, k, due
            return
        start = 0
        while start < k:
            stop = min(k, start + self.every - self.count)
            self.count += stop - start
            due = self.count == self.every
            if due:
                self.count = 0
            yield start, stop, due
            start = stop
