"""The products of few rows summed in input order (rpusim.ordered): the definition, the twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpusim import ordered


def _operands(B: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, k, generator=gen)
    x[x.abs() < 0.3] = 0.0  # zeros and signed zeros, as DAC outputs have them
    x[0, 0] = -0.0
    return x, torch.randn(k, n, generator=gen) * 0.1


def _in_order(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The definition, written independently: float32 scalars, one input after another."""
    B, k = x.shape
    out = np.zeros((B, m.shape[1]), np.float32)
    for b in range(B):
        for j in range(m.shape[1]):
            acc = np.float32(0.0)
            for i in range(k):
                acc = np.float32(acc + np.float32(x[b, i] * m[i, j]))
            out[b, j] = acc
    return out


@pytest.mark.parametrize("B,k,n", [(1, 1, 3), (1, 7, 5), (2, 13, 9), (3, 6, 16)])
def test_reference_sums_in_input_order(B, k, n):
    x, m = _operands(B, k, n, seed=k)
    got = ordered.product_reference(x, m)
    assert np.array_equal(got.numpy(), _in_order(x.numpy(), m.numpy()))


def test_the_order_shows_in_the_bits():
    # Otherwise the definition would be vacuous: summed the other way round, long sums differ.
    x, m = _operands(1, 129, 512, seed=0)
    forward = ordered.product_reference(x, m)
    backward = ordered.product_reference(x.flip(1), m.flip(0))
    assert not torch.equal(forward, backward)
    assert torch.allclose(forward, backward, atol=1e-5)


@pytest.mark.parametrize(
    "B,k,n", [(1, 129, 512), (1, 512, 128), (1, 257, 512), (3, 65, 24), (8, 5, 7), (2, 1, 4)]
)
def test_compiled_twin_equals_reference(B, k, n):
    x, m = _operands(B, k, n, seed=B * 1000 + k)
    ref = ordered.product_reference(x, m)
    out = torch.full((B, n), float("nan"))
    ordered.ordered_into(x, m, out)
    assert torch.equal(out, ref)
    # The address form of the compiled loops, with input rows longer than the product's k.
    wide = torch.randn(B, k + 3)
    wide[:, :k] = x
    out2 = torch.full((B, n), float("nan"))
    ldx = k + 3
    ordered.ordered_at(B, n, k, wide.data_ptr(), ldx, m.data_ptr(), out2.data_ptr())
    assert torch.equal(out2, ref)


def test_applies_to_few_rows_on_the_cpu_only():
    m = torch.randn(4, 3)
    assert ordered.applies(torch.zeros(ordered.ROWS, 4))
    assert not ordered.applies(torch.zeros(ordered.ROWS + 1, 4))
    many = torch.randn(ordered.ROWS + 1, 4)
    assert torch.equal(ordered.product(many, m), many @ m)
    few = torch.randn(2, 4)
    assert torch.equal(ordered.product(few, m), ordered.product_reference(few, m))
