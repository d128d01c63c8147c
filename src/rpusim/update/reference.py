"""The pulsed update in plain torch: the references its compiled twins are tested against.

* :func:`pulsed_update_reference`: one pair at a time, every random number from the
  counter-based generator of :mod:`rpusim.rng`, float arithmetic in one fixed order that the
  twins copy exactly: given the same ``key`` they give the same weights bit for bit.
* :func:`pulsed_update_one_by_one`: slow, literal section 3.4 (one coincidence at a time, fresh
  noise and a clip after each), random numbers from a ``torch.Generator``; the tests show the
  references match it statistically.
"""

from __future__ import annotations

import torch

from rpusim import rng
from rpusim.config import UpdateConfig
from rpusim.devices import DeviceArrays
from rpusim.devices.ops import TORCH, bind
from rpusim.update.plan import check_args, pulse_scales, sqrt_counts


def _pair_pulses(a, b, bl, p, q, key, k, n_in, n_out, on):
    """The coincidence counts ``n`` (float32 ``(out, in)``) of pair ``k``: one draw per line and
    slot (:mod:`rpusim.rng`), shared by every device on the line."""
    n_slots = int(bl[k])
    col_u = rng.pulse_uniforms(key, rng.STREAM_COL, k, n_slots, n_in, on)  # (BL, in)
    row_u = rng.pulse_uniforms(key, rng.STREAM_ROW, k, n_slots, n_out, on)  # (BL, out)
    col_fires, row_fires = col_u < p[k], row_u < q[k]
    # Coincidences: slots in which both lines of a device fired (exact small integers).
    return row_fires.T.to(torch.float32) @ col_fires.to(torch.float32)


@torch.no_grad()
def pulsed_update_reference(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
    pairs: range | None = None,
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Apply ``W <- W - lr d^T x`` as pulse coincidences, pair by pair (plain torch).

    Args:
        w: ``(out, in)`` float32 weights, modified in place.
        x: ``(K, in)`` float32 inputs; row ``k`` is the k-th pair in time order.
        d: ``(K, out)`` float32 errors.
        lr: learning rate.
        dev: the tile's devices (model, per-device parameters, bounds, constants).
        cfg: bit length and update and BL management.
        dw_min: nominal step, used for the pulse probabilities.
        key: in ``[0, 2**31)``; fixes every random number of the call.
        pairs: apply only these pairs (``k`` indexes the call's pairs as without it, so the
            pairs of one call may be applied in pieces with other work in between).
        scales: :func:`pulse_scales` of the call, if already computed.

    A model that folds (constant step) applies the ``n`` coincidences of a device in one step,
    ``model.step_n``, in float32. Any other model applies them one at a time: ``model.step`` in
    float64 with the ``m``-th coincidence's own normal, the result rounded to float32 and clipped
    to the device's bounds after each.
    """
    check_args(w, x, d, dev, key)
    n_out, n_in = w.shape
    on = w.device
    model = dev.model
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min) if scales is None else scales
    p = torch.clamp(a.to(on)[:, None] * x.abs(), max=1.0)  # (K, in) column firing probabilities
    q = torch.clamp(b.to(on)[:, None] * d.abs(), max=1.0)  # (K, out) row firing probabilities
    if model.FOLDS:
        step_n = bind(model.step_n, TORCH)
        c2c_std = torch.tensor(dev.dw_min_std, dtype=torch.float32, device=on)
        sqrt_n = sqrt_counts().to(on)
    else:
        step = bind(model.step, TORCH)
        params = dev.params.double()
        consts = torch.tensor(dev.consts, dtype=torch.float64, device=on)
        w_max, w_min = dev.w_max.double(), dev.w_min.double()

    for k in range(x.shape[0]) if pairs is None else pairs:
        if a[k] == 0:
            continue
        n = _pair_pulses(a, b, bl, p, q, key, k, n_in, n_out, on)
        # Direction: s = -sign(d) sign(x) > 0 is potentiation (an up step).
        up = (d[k] > 0)[:, None] != (x[k] > 0)[None, :]
        h = rng.device_hashes(key, k, n_out, n_in, on)
        if model.FOLDS:
            # The n steps dw (1 + std xi) of one device, summed: one Gaussian for the sum.
            z = rng.table_normals(h)
            w_new = step_n(w, up, dev.dw_up, dev.dw_down, n, c2c_std * sqrt_n[n.long()], z)
            w_new = torch.clamp(w_new, dev.w_min, dev.w_max)
            # A device without a coincidence received no pulse pair: it is not touched.
            w.copy_(torch.where(n > 0, w_new, w))
            continue
        for m in range(int(n.max())):
            z = rng.table_normals(rng.coincidence_hash(h, m)).double()
            w_new = step(w.double(), up, w_max, w_min, params, consts, z).to(torch.float32)
            w_new = torch.clamp(w_new, dev.w_min, dev.w_max)
            w.copy_(torch.where(n > m, w_new, w))


@torch.no_grad()
def pulsed_update_one_by_one(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
) -> None:
    """Section 3.4 literally: each coincidence is its own noisy step, clipped after each.

    Same arguments as :func:`pulsed_update_reference`. Randomness comes from a
    ``torch.Generator`` seeded with ``key``: this reference is compared with the aggregated one
    statistically, not bit for bit. Slow (a loop over pairs and coincidences); for tests.
    """
    check_args(w, x, d, dev, key)
    n_out, n_in = w.shape
    gen = torch.Generator().manual_seed(key)
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
    p = torch.clamp(a.to(w.device)[:, None] * x.abs(), max=1.0)
    q = torch.clamp(b.to(w.device)[:, None] * d.abs(), max=1.0)
    step = bind(dev.model.step, TORCH)
    params = dev.params.double()
    consts = torch.tensor(dev.consts, dtype=torch.float64, device=w.device)
    w_max, w_min = dev.w_max.double(), dev.w_min.double()

    for k in range(x.shape[0]):
        if a[k] == 0:
            continue
        n_slots = int(bl[k])
        col_fires = torch.rand((n_slots, n_in), generator=gen).to(w.device) < p[k]
        row_fires = torch.rand((n_slots, n_out), generator=gen).to(w.device) < q[k]
        n = row_fires.T.to(torch.float32) @ col_fires.to(torch.float32)
        up = (d[k] > 0)[:, None] != (x[k] > 0)[None, :]
        for c in range(1, n_slots + 1):
            hit = n >= c
            if not hit.any():
                break
            xi = torch.randn((n_out, n_in), generator=gen, dtype=torch.float64).to(w.device)
            w_new = step(w.double(), up, w_max, w_min, params, consts, xi).to(torch.float32)
            w.copy_(torch.where(hit, torch.clamp(w_new, dev.w_min, dev.w_max), w))
