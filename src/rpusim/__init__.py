"""rpusim: training neural networks on resistive cross-point device arrays (RPU tiles)."""

from rpusim.config import ConfigError, RPUConfig
from rpusim.tile import AnalogTile

__version__ = "0.1.0"

__all__ = ["AnalogTile", "ConfigError", "RPUConfig", "__version__"]
