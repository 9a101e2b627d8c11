"""fastvae.philox: the contract's noise stream, against Triton itself and against N(0, 1)."""
import math

import pytest
import torch

from fastvae import philox

triton = pytest.importorskip("triton", reason="triton is part of the core install")
import triton.language as tl  # noqa: E402


@triton.jit
def _randn_kernel(out_ptr,  # (n,) float32
                  seed, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.randn(seed, offsets), mask=offsets < n)


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 7, 2**63 - 1, "fresh"])
def test_matches_triton_randn_under_the_interpreter(seed):
    if seed == "fresh":
        seed = int(torch.randint(2**62, ()))
    n = 3000  # 3 programs of 1024, the last one masked
    out = torch.full((n,), float("nan"))
    _randn_kernel[(triton.cdiv(n, 1024),)](out, seed, n, BLOCK=1024)
    torch.testing.assert_close(philox.randn(seed, n), out, rtol=0, atol=2e-6)


def test_large_offsets_use_the_high_counter_word():
    """Elements past 2**32 differ from their low-word twins (counter word c1 is used)."""
    seed = 5
    low = philox.philox4x32(seed, torch.tensor([3]))
    high = philox.philox4x32(seed, torch.tensor([3 + 2**32]))
    assert not torch.equal(low[0], high[0])


def test_normal_statistics():
    seed, n = int(torch.randint(2**62, ())), 200_000
    x = philox.randn(seed, n).double()
    # five standard errors: a false alarm about once in 1.7 million runs
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    stats = pytest.importorskip("scipy.stats")
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-4


def test_distinct_seeds_give_independent_streams():
    a, b = philox.randn(11, 50_000).double(), philox.randn(12, 50_000).double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(50_000)
