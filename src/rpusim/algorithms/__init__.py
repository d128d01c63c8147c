"""How a tile learns: ``rpu.algorithm`` picks one of :data:`ALGORITHMS` (``docs/model.md``
section 8).

* ``sgd``: the pulsed update onto the one array (:mod:`~rpusim.algorithms.sgd`);
* ``tiki_taka``: Tiki-Taka v1, fast ``A`` and slow ``C``, ``W = gamma A + C``;
* ``ttv2``: Tiki-Taka v2, a digital buffer ``H`` between ``A`` and ``C``;
* ``c_ttv2``: TTv2 with choppers;
* ``agad``: chopped TTv2 without a reference, the buffer taking reads minus the last period's mean;
* ``mixed_precision``: the gradient accumulated digitally in ``chi``, sent as single pulses.

Each is one module with one class; the tile holds an instance (``tile.algorithm``) that owns its
arrays, buffers and random streams, and :meth:`rpusim.tile.AnalogTile.update` delegates to it.
Every pulse goes through the tile's device model: the pulsed update (:func:`rpusim.update.
pulsed_update`) or, for chosen single pulses, :func:`~rpusim.algorithms.pulses.apply_pulse_counts`.
"""

from __future__ import annotations

from rpusim.algorithms.agad import AGAD
from rpusim.algorithms.base import Algorithm
from rpusim.algorithms.c_ttv2 import ChoppedTTv2
from rpusim.algorithms.mixed_precision import MixedPrecision
from rpusim.algorithms.sgd import SGD
from rpusim.algorithms.tiki_taka import TikiTaka
from rpusim.algorithms.ttv2 import TTv2

#: The algorithms by ``rpu.algorithm``.
ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (SGD, TikiTaka, TTv2, ChoppedTTv2, AGAD, MixedPrecision)
}


def make_algorithm(tile) -> Algorithm:
    """The algorithm object of ``tile`` (by ``tile.cfg.algorithm``)."""
    return ALGORITHMS[tile.cfg.algorithm](tile)


__all__ = ["ALGORITHMS", "Algorithm", "make_algorithm"]
