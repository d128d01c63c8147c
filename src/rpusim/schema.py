"""The base every configuration section derives from, and the error every refusal raises.

Kept apart from :mod:`rpusim.config` so that the modules that own a section (a device model in
:mod:`rpusim.devices`) can define it next to their physics without importing the whole tree.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration value was refused. The message is one line: ``key: what is allowed``."""


class Section(BaseModel):
    """A frozen, strict config section: unknown keys and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
