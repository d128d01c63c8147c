"""Published device fits, under names a user recognises: ``rpu.device.preset: NAME``.

The numbers are the fits the reference simulator (IBM aihwkit, ``simulator/presets/devices.py``)
publishes, each from the paper named in :data:`SOURCES`. What they include that rpusim does not
model is said in :data:`NOT_MODELLED` (and in ``docs/model.md``).
"""

from __future__ import annotations

from typing import Any

_RANGE_1 = {"w_max": 1.0, "w_min": -1.0}

#: Every key of the device section for each preset (the rest take the model's defaults).
DEVICE_PRESETS: dict[str, dict[str, Any]] = {
    "idealized": {
        "kind": "constant_step",
        "dw_min": 0.0002,
        "dw_min_dtod": 0.3,
        "dw_min_std": 0.3,
        "up_down": 0.0,
        "up_down_dtod": 0.0,
        **_RANGE_1,
        "w_max_dtod": 0.3,
        "w_min_dtod": 0.3,
    },
    "gokmen_vlasov": {
        "kind": "constant_step",
        "dw_min": 0.0016,
        "dw_min_dtod": 0.3,
        "dw_min_std": 0.3,
        "up_down": 0.0,
        "up_down_dtod": 0.01,
        **_RANGE_1,
        "w_max_dtod": 0.3,
        "w_min_dtod": 0.3,
    },
    "reram_es": {
        "kind": "exp_step",
        "dw_min": 0.00135,
        "up_down": 0.259359,
        **_RANGE_1,
        "a": -0.5,
        "b": -0.5,
        "gamma_up": 5.0,
        "gamma_down": 5.0,
        "A_up": -1.18445,
        "A_down": -0.081404,
        "dw_min_dtod": 0.2,
        "up_down_dtod": 0.05,
        "w_max_dtod": 0.3,
        "w_min_dtod": 0.3,
        "dw_min_std": 5.0,
    },
    "reram_sb": {
        "kind": "soft_bounds",
        "dw_min": 0.002,
        "up_down": 0.0,
        "w_max": 1.25,
        "w_min": -0.75,
        "mult_noise": False,
        "dw_min_dtod": 0.3,
        "up_down_dtod": 0.01,
        "w_max_dtod": 0.24,
        "w_min_dtod": 0.4,
        "dw_min_std": 3.75,
    },
    "capacitor": {
        "kind": "linear_step",
        "dw_min": 0.005,
        "up_down": 0.0,
        **_RANGE_1,
        "mult_noise": False,
        "gamma_up": 0.05,
        "gamma_down": 0.05,
        "gamma_up_dtod": 0.01,
        "gamma_down_dtod": 0.01,
        "mean_bound_reference": True,
        "dw_min_dtod": 0.1,
        "up_down_dtod": 0.06,
        "w_max_dtod": 0.07,
        "w_min_dtod": 0.07,
        "dw_min_std": 0.3,
    },
    "ecram": {
        "kind": "linear_step",
        "dw_min": 0.002,
        "up_down": 0.0,
        "w_max": 1.1724,
        "w_min": -0.8276,
        "mult_noise": True,
        "gamma_up": 0.1153,
        "gamma_down": 0.5085,
        "gamma_up_dtod": 0.05,
        "gamma_down_dtod": 0.05,
        "mean_bound_reference": True,
        "dw_min_dtod": 0.1,
        "up_down_dtod": 0.01,
        "w_max_dtod": 0.05,
        "w_min_dtod": 0.05,
        "dw_min_std": 0.3,
    },
    "ecram_mo": {
        "kind": "linear_step",
        "dw_min": 2.8214e-4,
        "up_down": 0.0,
        "w_max": 1.1714,
        "w_min": -0.8286,
        "mult_noise": True,
        "gamma_up": 0.4152,
        "gamma_down": 0.7342,
        "gamma_up_dtod": 0.05,
        "gamma_down_dtod": 0.05,
        "mean_bound_reference": True,
        "dw_min_dtod": 0.1,
        "up_down_dtod": 0.01,
        "w_max_dtod": 0.05,
        "w_min_dtod": 0.05,
        "dw_min_std": 2.0,
    },
}

#: The paper each preset's numbers come from.
SOURCES: dict[str, str] = {
    "idealized": "Gokmen & Vlasov, Front. Neurosci. 10:333 (2016); Rasch, Gokmen & Haensch, "
    "IEEE Design & Test (2019): a symmetric device with about 10,000 states",
    "gokmen_vlasov": "Gokmen & Vlasov, Front. Neurosci. 10:333 (2016): the RPU device "
    "specification, about 1,200 states",
    "reram_es": "Gong et al., Nat. Commun. 9:2102 (2018): ReRAM, exponential-step fit",
    "reram_sb": "Gong et al., Nat. Commun. 9:2102 (2018): ReRAM, soft-bounds fit (symmetry "
    "point assumed calibrated)",
    "capacitor": "Li et al., VLSI Technology Symposium (2018): capacitor-based cell",
    "ecram": "Tang et al., IEDM (2018): Li-ion ECRAM, range shifted to a symmetry point at 0",
    "ecram_mo": "Kim et al., IEDM (2019): metal-oxide ECRAM",
}

#: What a preset's published fit has that rpusim does not simulate (yet).
NOT_MODELLED: dict[str, str] = {
    "reram_es": "write noise (write_noise_std 75 x dw_min on the weight the reads see)",
    "reram_sb": "write noise (write_noise_std 56 x dw_min on the weight the reads see)",
    "capacitor": "leakage (lifetime 1e6 updates, lifetime_dtod 0.3)",
}


def preset_section(name: str) -> dict[str, Any]:
    """The device section of preset ``name`` (with ``preset: name``); KeyError if unknown."""
    return {"preset": name, **DEVICE_PRESETS[name]}
