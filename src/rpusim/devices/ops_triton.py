"""The Triton dialect of :mod:`rpusim.devices.ops` (imported only where Triton runs).

Each operation is a Triton function that calls ``tl`` by name when it runs, so that the
interpreter (``TRITON_INTERPRET=1``), which patches ``tl`` while a kernel runs, and the compiler
both see their own ``tl.where``. Inside the update kernel a response sees blocks of devices:
``w``, ``w_max``, ``w_min``, ``z`` and each ``p[q]`` a float64 block, ``up`` a boolean block,
each ``c[q]`` a float64 scalar (``p`` and ``c`` are tuples, so ``p[q]`` with a literal ``q`` is
an element of a tuple, as it is a row of a tensor in torch).

Each operation has torch's float semantics (the reference evaluates the response with these
torch functions, in float64):

* ``where``, ``maximum``, ``minimum``, ``floor``, ``take``: exact operations (selections and a
  rounding to an integer), the same bits on every backend. ``maximum(a, b)`` is
  ``torch.clamp(a, min=b)``: NaN where either is NaN, ``a`` on a tie.
* ``exp``, ``pow``: not correctly rounded anywhere. Compiled, they are libdevice's float64
  ``__nv_exp`` and ``__nv_pow`` (1 and 2 ulp, in double); in the interpreter numpy's ``exp`` and
  ``power``; torch on the CPU has its own. All three agree in float64 to an ulp or two, and the
  response is rounded to float32 after them: such a difference changes the float32 weight only
  when it straddles a float32 rounding boundary (about one evaluation in 2**28), as between the
  torch reference and the numba kernel (which calls the C library's).
"""

import numpy as np
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def where(cond, a, b):
    return tl.where(cond, a, b)


#: The kernels run in Triton's interpreter (numpy) rather than compiled for a GPU.
INTERPRETED = isinstance(where, InterpretedFunction)


@triton.jit
def maximum(a, b):
    # torch.clamp(a, min=b): NaN if either is; a on a tie (the sign of a zero is a's).
    return tl.where(b != b, b, tl.where(a < b, b, a))


@triton.jit
def minimum(a, b):
    return tl.where(b != b, b, tl.where(a > b, b, a))


@triton.jit
def floor(a):
    return tl.floor(a)


@triton.jit
def exp(a):
    # float64: libdevice's __nv_exp when compiled (no approximate ex2), numpy's exp interpreted.
    return tl.exp(a)


@triton.jit
def take(table, index):
    """``table[index]`` for a tuple ``table`` and a block of indices (float, truncated to an
    integer as torch's ``.long()`` does): a chain of selections over the table's entries, since
    a block cannot index a tuple. An index outside the table gives 0 (torch raises)."""
    i = index.to(tl.int64)
    out = tl.zeros(index.shape, table[0].dtype)
    for q in tl.static_range(len(table)):
        out = tl.where(i == q, table[q], out)
    return out


if INTERPRETED:
    from triton.runtime.interpreter import TensorHandle

    def pow(a, b):  # noqa: A001 - the name every dialect of ops uses
        """numpy's ``power`` on the interpreter's blocks: libdevice, which has ``pow``, has no
        interpreted form, and ``tl`` has no power."""
        a, b = tl.broadcast(a, tl.zeros_like(a) + b)
        data = np.power(a.handle.data, b.handle.data)
        return tl.tensor(TensorHandle(data, a.dtype.scalar), a.type)

else:

    @triton.jit
    def pow(a, b):  # noqa: A001 - the name every dialect of ops uses
        """``a ** b`` for a tensor ``a`` (float64) and a tensor or a number ``b`` (taken in
        ``a``'s type, exactly: ``0 + b``), as ``torch.pow``."""
        return libdevice.pow(a, tl.zeros_like(a) + b)


#: The float32 one of the folded constant-step response.
ONE = tl.constexpr(1.0)
