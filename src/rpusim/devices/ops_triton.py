"""The Triton dialect of :mod:`rpusim.devices.ops` (imported only where Triton runs).

Each operation is a Triton function that calls ``tl`` by name when it runs, so that the
interpreter (``TRITON_INTERPRET=1``), which patches ``tl`` while a kernel runs, and the compiler
both see their own ``tl.where``.
"""

import triton
import triton.language as tl


@triton.jit
def where(cond, a, b):
    return tl.where(cond, a, b)


#: The float32 one of the folded constant-step response.
ONE = tl.constexpr(1.0)
