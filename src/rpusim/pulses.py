"""The pulsed update's old import path; it lives in :mod:`rpusim.update` now."""

from rpusim.update import (  # noqa: F401
    BACKENDS,
    pulse_scales,
    pulsed_update,
    pulsed_update_one_by_one,
    pulsed_update_reference,
    sqrt_counts,
)
