"""Triton twin of :func:`rpusim.update.pulsed_update_reference`: the same weights, bit for bit.

The GPU counterpart of :mod:`rpusim.update.numba`, in two passes per chunk of pairs:

* pass 1 (:func:`_fire_words_kernel`), parallel over pairs and lines: each line's ``BL`` slot
  bits are packed into one ``uint64`` word (``BL <= 64``), once for the columns (``x``, ``A``)
  and once for the rows (``d``, ``B``). The count of device ``ij`` in pair ``k`` is
  ``popcount(row_word[k, j] & col_word[k, i])``: the slots in which both its lines fired.
* pass 2 (:func:`_apply_kernel`), parallel over tiles of devices: devices are independent and
  each sees the pairs in order ``k = 0 .. K-1``, so a program holds its tile of weights, steps
  and bounds in registers and loops over the chunk's pairs, reading only two words and two
  signs per line and pair. A pair in which no row (or no column) of the tile fired, as for most
  pairs of the small errors of a trained network, costs two loads and two reductions.
  A model that folds (constant step) applies a device's ``n`` coincidences as one step
  (``step_n``); any other model runs :func:`_apply_steps_kernel`, which applies them one at a
  time, ``n`` calls of the model's ``step`` with a fresh normal and a clip after each.

The device physics stays in the device module: the kernels receive the model's response as a
Triton function, compiled from its one source with Triton's ``ops``
(:mod:`rpusim.devices.ops_triton`; :func:`response`, :func:`folded_response`), and its
parameters as tuples (``p[q]`` a float64 block of devices, ``c[q]`` a float64 scalar), loaded by
functions generated from their number (:func:`param_loader`, :func:`const_loader`). Nothing here
is written per model: a new device module runs here as it is.

Pairs are processed in chunks of at most ``CHUNK``, so the scratch memory is
``CHUNK * (in + out)`` words whatever ``K``: never a ``(K, out, in)`` or ``(K, BL, in)`` array.

Exactness, as in the numba twin:

* every random number is :func:`rpusim.rng.mix32` at the reference's indices. Here in
  ``uint32`` arithmetic, which wraps modulo ``2**32`` exactly where the reference masks its
  int64 products with ``& MASK32``, and whose ``>>`` is a logical shift;
* ``sqrt(n)`` comes from the shared table (:func:`rpusim.update.sqrt_counts`), multiplied by the
  spread on the host in the reference's float32 (``std * sqrt(n)`` for every possible ``n``);
* the float32 arithmetic is the reference's, in its order (``(std * sqrt(n)) * z``, ``n + .``,
  ``dw * .``, ``w + s * .``, clip), launched with :data:`IEEE_F32`: by default Triton contracts
  ``a * b + c`` to one FMA, which rounds once instead of twice;
* one coincidence at a time, the response is evaluated in float64 as in the reference (the
  parameters widened from float32, the constants float64), rounded to float32 once, then
  clipped; its ``m``-th normal is the table entry of ``mix32(h ^ m)``
  (:func:`rpusim.rng.coincidence_hash`). ``exp`` and ``pow`` are the one place where the bits
  can differ from torch's: see :mod:`rpusim.devices.ops_triton`.

The kernels are plain Triton: under ``TRITON_INTERPRET=1`` (set before triton is first
imported) they run on CPU tensors through Triton's interpreter, which is how the test suite
checks them on a machine without a GPU.
"""

from __future__ import annotations

import linecache
from functools import cache

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from rpusim import rng
from rpusim.config import UpdateConfig
from rpusim.devices import MODELS, DeviceArrays
from rpusim.devices.ops import bind, triton_dialect
from rpusim.update.plan import check_args, pulse_scales, sqrt_counts


def _ieee_f32() -> dict[str, bool]:
    """Launch options that keep Triton's float32 arithmetic IEEE, one rounding per operation as
    in torch. Both defaults differ: ``a * b + c`` is contracted to one FMA (one rounding instead
    of two), and libdevice functions flush subnormals to zero (``floor(-1e-40)`` would be ``-0``,
    not ``-1``). The interpreter computes in numpy and ignores them.
    """
    options = {"enable_fp_fusion": False}
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - a Triton without its CUDA backend
        return options
    # A launch option the installed Triton does not know is an error: ask before passing it.
    if "enable_reflect_ftz" in CUDAOptions.__dataclass_fields__:
        options["enable_reflect_ftz"] = False
    return options


#: :func:`_ieee_f32`, passed to every launch (``tests/test_triton.py`` reads the PTX it gives).
IEEE_F32 = _ieee_f32()

#: Most pairs whose pulse words are held at once (bounds the scratch memory: 8 bytes per pair
#: and line, 25 MB for 4096 pairs of a 512 x 257 array).
CHUNK = 4096
#: Lines per program of pass 1.
BLOCK_LINES = 128
#: Device tile of pass 2 (rows x columns). Smaller tiles give more programs (a 512 x 257 array
#: has 288 tiles of 16 x 32, about two per SM of an H100/H200) but re-read each pair's words
#: more often; ``scripts/gpu_check.py`` times alternatives.
BLOCK_ROWS = 16
BLOCK_COLS = 32


@triton.jit
def _mix32(h):
    """:func:`rpusim.rng.mix32` on ``uint32`` values (multiplication wraps modulo ``2**32``)."""
    h = h ^ (h >> 15)
    h = h * 0x2C1B3C6D
    h = h ^ (h >> 12)
    h = h * 0x297A2D39
    h = h ^ (h >> 15)
    return h


@triton.jit
def _popcount64(v):
    """Set bits of each ``uint64`` (SWAR, without the 64-bit multiply of the usual last step)."""
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    v = v + (v >> 32)
    return v & 0x7F


@triton.jit
def _tile(n_out, n_in, BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr):
    """This program's tile of devices: its rows and columns, which of them exist, the devices'
    offsets in an (out, in) array and the mask of the existing ones."""
    rows = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_in, col_in = rows < n_out, cols < n_in
    at = rows[:, None].to(tl.int64) * n_in + cols[None, :]
    return rows, cols, row_in, col_in, at, row_in[:, None] & col_in[None, :]


@triton.jit
def _device_hash(c2c_base, k, n_out, rows, c2c_col_seed):
    """The cycle-to-cycle hash of each device of the tile in pair ``k`` (the reference's
    ``mix32(mix32(base ^ (k * out + i)) ^ col_seed_j)``)."""
    dev_seed = _mix32(c2c_base ^ (tl.cast(k, tl.uint32) * n_out + rows.to(tl.uint32)))
    return _mix32(dev_seed[:, None] ^ c2c_col_seed[None, :])


@triton.jit
def _fire_words_kernel(
    v_ptr, scale_ptr, bl_ptr, base_ptr, line_seed_ptr, words_ptr, k0, n_lines,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Pass 1: the packed pulse trains of one pair and a block of lines.

    Program ``(kk, blk)`` handles pair ``k = k0 + kk`` and lines ``blk * BLOCK ..``: bit ``t``
    of ``words[kk, l]`` is set when ``u(slot_seed[k, t], line_seed[l]) < min(1, scale[k]
    |v[k, l]|)``, for ``t < bl[k]``. v: (K, n_lines) float32 (``x`` or ``d``); scale (K,)
    float32 (``A`` or ``B``); bl (K,) int32; base: (1,) int64, the stream's seed; line_seed:
    (n_lines,) int64; words: (chunk, n_lines) uint64, written.
    """
    kk = tl.program_id(0)
    k = k0 + kk
    lines = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = lines < n_lines
    scale = tl.load(scale_ptr + k)
    n_slots = tl.load(bl_ptr + k)
    base = tl.load(base_ptr).to(tl.uint32)
    v = tl.load(v_ptr + k.to(tl.int64) * n_lines + lines, mask=inside, other=0.0)
    p = scale * tl.abs(v)
    p = tl.where(p > 1.0, 1.0, p)  # the reference's clamp(max=1); NaN stays NaN (never fires)
    line_seed = tl.load(line_seed_ptr + lines, mask=inside, other=0).to(tl.uint32)
    word = tl.zeros((BLOCK,), tl.uint64)
    one = tl.full((BLOCK,), 1, tl.uint64)
    for t in range(n_slots):
        slot_seed = _mix32(base ^ (k.to(tl.uint32) * 64 + tl.cast(t, tl.uint32)))
        # The top 24 bits times 2**-24: a uniform in [0, 1), exact in float32.
        u = (_mix32(slot_seed ^ line_seed) >> 8).to(tl.float32) * 5.9604644775390625e-08
        word = word | tl.where(u < p, one << tl.cast(t, tl.uint64), 0)
    tl.store(words_ptr + kk.to(tl.int64) * n_lines + lines, word, mask=inside)


@triton.jit
def _apply_kernel(
    w_ptr, x_ptr, d_ptr, col_word_ptr, row_word_ptr,
    dw_up_ptr, dw_down_ptr, w_min_ptr, w_max_ptr,
    std_sqrt_ptr, table_ptr, c2c_base_ptr, c2c_col_seed_ptr,
    k0, k1, n_out, n_in,
    NOISY: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr, STEP_N: tl.constexpr,
):  # fmt: skip
    """Pass 2: apply the pairs ``k0 <= k < k1``, in order, to one tile of devices.

    w, dw_up, dw_down, w_min, w_max: (out, in) float32, contiguous (``w`` updated in place);
    x: (K, in), d: (K, out) float32; col_word: (chunk, in), row_word: (chunk, out) uint64 from
    pass 1; std_sqrt: (65,) float32, ``std * sqrt(n)``; table: the normal table;
    c2c_base: (1,) int64; c2c_col_seed: (in,) int64. ``NOISY``: cycle-to-cycle noise on.
    ``STEP_N``: the device model's folded response (``step_n``), compiled for Triton.
    """
    rows, cols, row_in, col_in, at, inside = _tile(n_out, n_in, BLOCK_J, BLOCK_I)
    w = tl.load(w_ptr + at, mask=inside, other=0.0)
    dw_up = tl.load(dw_up_ptr + at, mask=inside, other=0.0)
    dw_down = tl.load(dw_down_ptr + at, mask=inside, other=0.0)
    w_min = tl.load(w_min_ptr + at, mask=inside, other=0.0)
    w_max = tl.load(w_max_ptr + at, mask=inside, other=0.0)
    c2c_base = tl.load(c2c_base_ptr).to(tl.uint32)
    c2c_col_seed = tl.load(c2c_col_seed_ptr + cols, mask=col_in, other=0).to(tl.uint32)
    for k in range(k0, k1):
        kk = k - k0
        row_word = tl.load(row_word_ptr + kk * n_out + rows, mask=row_in, other=0)
        col_word = tl.load(col_word_ptr + kk * n_in + cols, mask=col_in, other=0)
        # Skip the pair when no row or no column of the tile fired (no device has n > 0).
        if (tl.max(row_word, axis=0) != 0) & (tl.max(col_word, axis=0) != 0):
            d_k = tl.load(d_ptr + tl.cast(k, tl.int64) * n_out + rows, mask=row_in, other=0.0)
            x_k = tl.load(x_ptr + tl.cast(k, tl.int64) * n_in + cols, mask=col_in, other=0.0)
            count = _popcount64(row_word[:, None] & col_word[None, :])
            hit = count != 0
            n = count.to(tl.float32)
            if NOISY:
                h = _device_hash(c2c_base, k, n_out, rows, c2c_col_seed)
                z = tl.load(table_ptr + (h >> 16), mask=hit, other=0.0)
                std_sqrt = tl.load(std_sqrt_ptr + count, mask=hit, other=0.0)
            else:
                z = tl.zeros_like(n)  # n + (0 * sqrt(n)) * 0 is exactly n
                std_sqrt = tl.zeros_like(n)
            # s = -sign(d) sign(x) > 0: potentiation. Both signs are nonzero wherever n > 0 (a
            # zero x or d never fires). The device model folds the n coincidences into one step.
            up = (d_k > 0.0)[:, None] != (x_k > 0.0)[None, :]
            v = STEP_N(w, up, dw_up, dw_down, n, std_sqrt, z)
            v = tl.where(w_min > v, w_min, v)
            v = tl.where(w_max < v, w_max, v)
            # A device without a coincidence received no pulse pair: it is not touched.
            w = tl.where(hit, v, w)
    tl.store(w_ptr + at, w, mask=inside)


@triton.jit
def _apply_steps_kernel(
    w_ptr, x_ptr, d_ptr, col_word_ptr, row_word_ptr,
    params_ptr, consts_ptr, w_min_ptr, w_max_ptr,
    table_ptr, c2c_base_ptr, c2c_col_seed_ptr,
    k0, k1, n_out, n_in,
    BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr,
    LOAD_PARAMS: tl.constexpr, LOAD_CONSTS: tl.constexpr, STEP: tl.constexpr,
):  # fmt: skip
    """Pass 2 for a model that does not fold: the pairs ``k0 <= k < k1``, in order, one
    coincidence at a time, to one tile of devices.

    As :func:`_apply_kernel`, but device ``ij`` with ``n`` coincidences in pair ``k`` takes ``n``
    steps: the ``m``-th (``m = 0 .. n-1``) is the model's response ``STEP`` in float64 with its
    own normal (the table entry of ``mix32(h ^ m)``, ``h`` the device's hash in this pair),
    rounded to float32 and clipped to the device's bounds. params: ``(P, out, in)`` float32,
    the model's ``PARAMS``; consts: ``(C,)`` float64, its ``CONSTS``. ``LOAD_PARAMS`` /
    ``LOAD_CONSTS`` (:func:`param_loader`, :func:`const_loader`) load them as tuples of float64
    blocks / scalars, once per program; ``STEP`` is :func:`response`.
    """
    rows, cols, row_in, col_in, at, inside = _tile(n_out, n_in, BLOCK_J, BLOCK_I)
    w = tl.load(w_ptr + at, mask=inside, other=0.0)
    w_min = tl.load(w_min_ptr + at, mask=inside, other=0.0)
    w_max = tl.load(w_max_ptr + at, mask=inside, other=0.0)
    lo, hi = w_min.to(tl.float64), w_max.to(tl.float64)
    p = LOAD_PARAMS(params_ptr, at, inside, n_out.to(tl.int64) * n_in)
    c = LOAD_CONSTS(consts_ptr)
    c2c_base = tl.load(c2c_base_ptr).to(tl.uint32)
    c2c_col_seed = tl.load(c2c_col_seed_ptr + cols, mask=col_in, other=0).to(tl.uint32)
    for k in range(k0, k1):
        kk = k - k0
        row_word = tl.load(row_word_ptr + kk * n_out + rows, mask=row_in, other=0)
        col_word = tl.load(col_word_ptr + kk * n_in + cols, mask=col_in, other=0)
        if (tl.max(row_word, axis=0) != 0) & (tl.max(col_word, axis=0) != 0):
            d_k = tl.load(d_ptr + tl.cast(k, tl.int64) * n_out + rows, mask=row_in, other=0.0)
            x_k = tl.load(x_ptr + tl.cast(k, tl.int64) * n_in + cols, mask=col_in, other=0.0)
            count = _popcount64(row_word[:, None] & col_word[None, :]).to(tl.int32)
            up = (d_k > 0.0)[:, None] != (x_k > 0.0)[None, :]
            h = _device_hash(c2c_base, k, n_out, rows, c2c_col_seed)
            for m in range(0, tl.max(tl.max(count, axis=1), axis=0)):
                hit = count > m
                g = _mix32(h ^ tl.cast(m, tl.uint32))
                z = tl.load(table_ptr + (g >> 16), mask=hit, other=0.0).to(tl.float64)
                v = STEP(w.to(tl.float64), up, hi, lo, p, c, z).to(tl.float32)
                v = tl.where(w_min > v, w_min, v)
                v = tl.where(w_max < v, w_max, v)
                w = tl.where(hit, v, w)
    tl.store(w_ptr + at, w, mask=inside)


def _generated(name: str, source: str):
    """The Triton function ``name`` of ``source`` (Triton compiles from a function's source, so
    the text is registered with :mod:`linecache` under a file name of its own)."""
    filename = f"<rpusim.update.triton {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {"tl": tl}
    exec(compile(source, filename, "exec"), scope)
    return triton.jit(scope[name])


@cache
def param_loader(n_params: int):
    """A Triton function ``(ptr, at, mask, plane) -> p``: the tuple of the ``n_params`` per-device
    parameters of a block of devices, ``p[q]`` the float64 block ``params[q]`` at offsets ``at``
    (``plane``: elements per parameter). Generated from the count: one per length of a model's
    ``PARAMS``, none written per model."""
    name = f"load_params_{n_params}"
    loads = "".join(
        f"        tl.load(ptr + ({q} * plane + at), mask=mask, other=0.0).to(tl.float64),\n"
        for q in range(n_params)
    )
    return _generated(name, f"def {name}(ptr, at, mask, plane):\n    return (\n{loads}    )\n")


@cache
def const_loader(n_consts: int):
    """A Triton function ``ptr -> c``: the tuple of the ``n_consts`` float64 constants at ``ptr``
    (a model's ``CONSTS``; their number may depend on the config, as the nodes of the
    piecewise step do)."""
    name = f"load_consts_{n_consts}"
    loads = "".join(f"        tl.load(ptr + {q}),\n" for q in range(n_consts))
    return _generated(name, f"def {name}(ptr):\n    return (\n{loads}    )\n")


@cache
def response(kind: str):
    """The model's ``step`` with Triton's ``ops``, as a Triton function (one per model)."""
    fn = bind(MODELS[kind].step, triton_dialect())
    fn.__globals__["tl"] = tl  # Triton looks for its language among a function's globals
    return triton.jit(fn)


@cache
def folded_response(kind: str):
    """The model's ``step_n`` with Triton's ``ops``, as a Triton function (one per model)."""
    fn = bind(MODELS[kind].step_n, triton_dialect())
    fn.__globals__["tl"] = tl  # Triton looks for its language among a function's globals
    return triton.jit(fn)


def interpreted() -> bool:
    """True when the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    return isinstance(_apply_kernel, InterpretedFunction)


@torch.no_grad()
def pulsed_update_triton(
    w: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dev: DeviceArrays,
    cfg: UpdateConfig,
    dw_min: float,
    key: int,
    block_rows: int = BLOCK_ROWS,
    block_cols: int = BLOCK_COLS,
) -> None:
    """Same contract and same result as :func:`rpusim.update.pulsed_update_reference`.

    ``w`` ``(out, in)``, ``x`` ``(K, in)``, ``d`` ``(K, out)``: float32 CUDA tensors (CPU tensors
    under the interpreter); ``w`` is updated in place. ``block_rows`` x ``block_cols``: the
    device tile of pass 2 (powers of 2); the result does not depend on it.
    """
    check_args(w, x, d, dev, key)
    on = w.device
    if on.type == "cpu" and not interpreted():
        raise ValueError("the Triton update needs CUDA tensors (or TRITON_INTERPRET=1)")
    n_out, n_in = w.shape
    n_pairs = x.shape[0]
    if n_pairs == 0:
        return
    a, b, bl = pulse_scales(x, d, lr, cfg, dw_min)
    a, b, bl = a.to(on), b.to(on), bl.to(on, torch.int32)
    x_c, d_c = x.detach().contiguous(), d.detach().contiguous()
    w_c = w if w.is_contiguous() else w.contiguous()
    w_min, w_max = dev.w_min.contiguous(), dev.w_max.contiguous()

    col_base = rng.stream_base(key, rng.STREAM_COL)
    row_base = rng.stream_base(key, rng.STREAM_ROW)
    c2c_base = rng.stream_base(key, rng.STREAM_C2C)
    bases = torch.tensor([col_base, row_base, c2c_base], dtype=torch.int64, device=on)
    col_seed = rng.line_seeds(col_base, n_in, on)
    row_seed = rng.line_seeds(row_base, n_out, on)
    c2c_col_seed = rng.line_seeds(c2c_base, n_in, on)
    table = rng.normal_table(str(on))
    folds = dev.model.FOLDS
    if folds:
        dw_up, dw_down = dev.dw_up.contiguous(), dev.dw_down.contiguous()
        # std * sqrt(n) for every possible count, the reference's float32 product (on the host).
        c2c_std = torch.tensor(dev.dw_min_std, dtype=torch.float32)
        std_sqrt = (c2c_std * sqrt_counts()).to(on)
        noisy = dev.dw_min_std != 0.0
    else:
        # What the reference's one-at-a-time path passes to the response (float64 constants).
        params = dev.params.contiguous()
        consts = torch.tensor(dev.consts, dtype=torch.float64, device=on)
        loaders = dict(
            LOAD_PARAMS=param_loader(params.shape[0]), LOAD_CONSTS=const_loader(len(dev.consts))
        )

    chunk = min(CHUNK, n_pairs)
    col_word = torch.empty((chunk, n_in), dtype=torch.uint64, device=on)
    row_word = torch.empty((chunk, n_out), dtype=torch.uint64, device=on)
    tiles = (triton.cdiv(n_out, block_rows), triton.cdiv(n_in, block_cols))
    for k0 in range(0, n_pairs, chunk):
        k1 = min(n_pairs, k0 + chunk)
        for v, scale, base, seed, words in (
            (x_c, a, bases[0:1], col_seed, col_word),
            (d_c, b, bases[1:2], row_seed, row_word),
        ):
            grid = (k1 - k0, triton.cdiv(v.shape[1], BLOCK_LINES))
            _fire_words_kernel[grid](
                v, scale, bl, base, seed, words, k0, v.shape[1],
                BLOCK=BLOCK_LINES, **IEEE_F32,
            )  # fmt: skip
        if folds:
            _apply_kernel[tiles](
                w_c, x_c, d_c, col_word, row_word, dw_up, dw_down, w_min, w_max,
                std_sqrt, table, bases[2:3], c2c_col_seed, k0, k1, n_out, n_in,
                NOISY=noisy, BLOCK_J=block_rows, BLOCK_I=block_cols,
                STEP_N=folded_response(dev.kind), **IEEE_F32,
            )  # fmt: skip
        else:
            _apply_steps_kernel[tiles](
                w_c, x_c, d_c, col_word, row_word, params, consts, w_min, w_max,
                table, bases[2:3], c2c_col_seed, k0, k1, n_out, n_in,
                BLOCK_J=block_rows, BLOCK_I=block_cols, STEP=response(dev.kind),
                **loaders, **IEEE_F32,
            )  # fmt: skip
    if w_c is not w:
        w.copy_(w_c)


__all__ = ["interpreted", "pulsed_update_triton"]
