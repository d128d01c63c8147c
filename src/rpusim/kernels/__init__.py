"""Compiled twins of the hot loops; each is tested bit for bit against its torch reference."""

import importlib.util
from functools import lru_cache


@lru_cache(maxsize=1)
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up, not imported: importing it takes a second,
    and only CUDA tensors use it)."""
    return importlib.util.find_spec("triton") is not None
