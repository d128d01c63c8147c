"""Compiled twins of the hot loops; each is tested bit for bit against its torch reference."""

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")


@lru_cache(maxsize=1)
def triton_installed() -> bool:
    """Whether ``triton`` can be imported (looked up, not imported: importing it takes a second,
    and only CUDA tensors use it)."""
    return importlib.util.find_spec("triton") is not None


def cached_by_identity(make: Callable[[Any], T], size: int = 256) -> Callable[[Any], T]:
    """``make(obj)``, remembered per object by identity (for a kernel's plan of a frozen config:
    looked up thousands of times per sequence, where hashing a config would cost more than the
    read). The cache holds each object, so that its id cannot be reused while it is cached, and
    empties itself after ``size`` objects."""
    cache: dict[int, tuple[Any, T]] = {}

    def cached(obj: Any) -> T:
        hit = cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if len(cache) >= size:
            cache.clear()
        value = make(obj)
        cache[id(obj)] = (obj, value)
        return value

    return cached
