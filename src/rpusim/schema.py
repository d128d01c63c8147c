"""The base every configuration section derives from, and the error every refusal raises.

Kept apart from :mod:`rpusim.config` so that the modules that own a section (a device model in
:mod:`rpusim.devices`) can define it next to their physics without importing the whole tree.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration value was refused. The message is one line: ``key: what is allowed``."""


class Section(BaseModel):
    """The base of every config section: unknown keys, loose types and non-finite floats
    (``.inf``, ``.nan``: no physical quantity or fraction here is one; ``null`` is how a field
    says "unbounded") are refused in every section, including those added later."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
