"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch and one numba thread, as ``rpusim train`` and ``rpusim sweep`` use by default.

    Batch-1 LSTM work is a chain of tiny ops: extra threads only spin, and on a loaded 2-core
    machine two thread pools can stall each other (a test file 10x slower). Results do not depend
    on the thread count.
    """
    import numba

    saved = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])
