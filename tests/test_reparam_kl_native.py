"""The native reparam_kl kernels (csrc/cpu/reparam_kl.cpp, csrc/cuda/reparam_kl.cu).

What the backend-generic tests in test_reparam_kl.py do not pin down: the in-kernel noise
is the Philox stream of fastvae.philox, the KL is deterministic across runs and thread
counts, every output element is written, odd sizes that end inside a SIMD block or a KL
chunk, and the raw ops' own argument checks.

Runs on the CPU; FASTVAE_TEST_DEVICE=cuda runs the same tests on a GPU (bench/gpu_check.py).
"""
import os

import pytest
import torch

import fastvae
from fastvae import philox
from fastvae import reference as ref
from fastvae.backends import _unavailable_reason

from conftest import TOLERANCES, assert_close_to_reference, noncontiguous, poison

DEVICE = os.environ.get("FASTVAE_TEST_DEVICE", "cpu")
pytestmark = [pytest.mark.skipif(_unavailable_reason("native", "reparam_kl", DEVICE) is not None,
                                 reason=str(_unavailable_reason("native", "reparam_kl", DEVICE))),
              pytest.mark.usefixtures("every_cpu_capability")]  # each native CPU build

DTYPES = [torch.float32, torch.bfloat16, torch.float16] + ([torch.float64] if DEVICE == "cpu" else [])
# Odd sizes: tails inside a 32-lane block, rows longer than one 8192-element KL chunk,
# a single element, a 4-D latent.
SHAPES = [(1, 1), (3, 37), (7, 1031), (2, 8192 + 45), (2, 3, 5, 7), (41, 401)]
SEEDS = [0, 1, 12345, 2**32 + 5, 2**62 - 1, 2**63 - 1, -1]
# The in-kernel noise is float32 with its own log/cos: it matches the reference stream to
# float32 rounding, also when the rest of the math is float64.
NOISE_TOL = dict(rtol=1e-5, atol=2e-6)

fwd = torch.ops.fastvae._reparam_kl_fwd
bwd = torch.ops.fastvae._reparam_kl_bwd


def seed_tensor(seed):
    return torch.tensor(seed, dtype=torch.int64)


def randn(shape, dtype=torch.float32):
    return torch.randn(shape, device=DEVICE).to(dtype)


def tolerance(dtype, uses_noise):
    return NOISE_TOL if uses_noise and dtype == torch.float64 else TOLERANCES[dtype]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES + [(50, 31)])
def test_noise_is_the_philox_stream(shape, seed):
    # On the CPU, rows shorter than a 32-lane block (50 x 31) are drawn entirely by the
    # scalar common/philox.h randn that the CUDA kernels run; longer rows by SIMD lanes.
    # mu = 0, logvar = 0 gives z = eps exactly.
    zeros = torch.zeros(shape, device=DEVICE)
    z, _ = fwd(zeros, zeros, None, seed_tensor(seed))
    expected = philox.randn(seed, zeros.numel(), device=DEVICE).view(shape)
    torch.testing.assert_close(z, expected, **NOISE_TOL)


def test_noise_differs_between_seeds_and_elements():
    zeros = torch.zeros(4, 1000, device=DEVICE)
    a, _ = fwd(zeros, zeros, None, seed_tensor(1))
    b, _ = fwd(zeros, zeros, None, seed_tensor(2))
    assert (a != b).float().mean() > 0.99
    assert a.flatten().unique().numel() > 0.99 * a.numel()
    assert abs(a.mean().item()) < 0.1 and abs(a.std().item() - 1) < 0.05


def reference_outputs(mu, logvar, eps, seed, grad_z, grad_kl):
    """(z, kl, grad_mu, grad_logvar) of the reference, in mu's dtype and in float32."""
    low = (*ref.reparam_kl_fwd(mu, logvar, eps, seed),
           *ref.reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed))
    up = (lambda t: None if t is None else t.float()) if mu.dtype != torch.float64 else (lambda t: t)
    high = (*ref.reparam_kl_fwd(up(mu), up(logvar), up(eps), seed),
            *ref.reparam_kl_bwd(up(grad_z), grad_kl, up(mu), up(logvar), up(eps), seed))
    return low, high


def check_against_reference(mu, logvar, eps, seed, grad_z, grad_kl):
    dtype = mu.dtype
    outs = (*fwd(mu, logvar, eps, seed), *bwd(grad_z, grad_kl, mu, logvar, eps, seed))
    ref_eps = eps
    if eps is None and dtype == torch.float64:
        # The in-kernel noise is float32 (matched to the Philox stream by
        # test_noise_is_the_philox_stream); scaled by std * grad_z its rounding exceeds any
        # fixed float64 tolerance. The rest of the math is checked at float64 tolerances
        # against the reference given that same noise (z = eps at mu = logvar = 0).
        zeros = torch.zeros_like(mu)
        ref_eps = fwd(zeros, zeros, None, seed)[0]
    low, high = reference_outputs(mu, logvar, ref_eps, seed, grad_z, grad_kl)
    names = ("z", "kl", "grad_mu", "grad_logvar")
    uses_noise = (True, False, False, True)
    for name, noisy, out, r_low, r_high in zip(names, uses_noise, outs, low, high):
        assert out.shape == r_low.shape and out.dtype == r_low.dtype, name
        assert out.is_contiguous(), name
        if dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(out, r_low, **tolerance(dtype, noisy and ref_eps is None),
                                       msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert_close_to_reference(out, r_low, r_high, dtype, name)


@pytest.mark.parametrize("given_eps", [False, True], ids=["philox", "eps"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_grads_match_reference(shape, dtype, given_eps):
    mu, logvar = randn(shape, dtype), randn(shape, dtype)
    eps = randn(shape, dtype) if given_eps else None
    grad_z, grad_kl = randn(shape, dtype), torch.randn(shape[0], device=DEVICE,
                                                       dtype=ref.compute_dtype(dtype))
    seed = seed_tensor(torch.randint(2**62, ()).item())
    check_against_reference(mu, logvar, eps, seed, grad_z, grad_kl)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous_inputs(dtype):
    shape = (6, 203)
    mu, logvar, eps, grad_z = (noncontiguous(randn(shape, dtype)) for _ in range(4))
    grad_kl = torch.randn(12, device=DEVICE, dtype=ref.compute_dtype(dtype))[::2]
    seed = seed_tensor(99)
    check_against_reference(mu, logvar, None, seed, grad_z, grad_kl)
    check_against_reference(mu, logvar, eps, seed, grad_z, grad_kl)
    # A transposed latent: noise element i is the i-th element of the logical row-major order.
    mu_t, logvar_t = randn((203, 6), dtype).t(), randn((203, 6), dtype).t()
    z, _ = fwd(mu_t, logvar_t, None, seed)
    z_ref, _ = ref.reparam_kl_fwd(mu_t, logvar_t, None, seed)
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(z, z_ref, **tolerance(dtype, True))
    # grad_z with stride 0 (what autograd hands in for z.sum()).
    expanded = torch.ones((), device=DEVICE, dtype=dtype).expand(shape)
    check_against_reference(mu, logvar, None, seed, expanded, grad_kl)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_public_op_grads_with_random_upstream(reduction):
    mu = randn((5, 77)).requires_grad_()
    logvar = randn((5, 77)).requires_grad_()
    z, kl = fastvae.reparam_kl(mu, logvar, seed=2024, reduction=reduction, backend="native")
    g_z, g_kl = torch.randn_like(z), torch.randn_like(kl)
    grads = torch.autograd.grad((z, kl), (mu, logvar), (g_z, g_kl))
    m, lv = mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()
    z_r, kl_r = fastvae.reparam_kl(m, lv, seed=2024, reduction=reduction, backend="reference")
    torch.testing.assert_close(z, z_r, **NOISE_TOL)
    torch.testing.assert_close(kl, kl_r, **TOLERANCES[torch.float32])
    grads_r = torch.autograd.grad((z_r, kl_r), (m, lv), (g_z, g_kl))
    for g, g_r in zip(grads, grads_r):
        torch.testing.assert_close(g, g_r, **NOISE_TOL)


@pytest.mark.skipif(DEVICE != "cpu", reason="float64 is a CPU-only dtype")
@pytest.mark.parametrize("given_eps", [False, True], ids=["philox", "eps"])
def test_gradcheck_float64(given_eps):
    mu = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    logvar = (0.3 * torch.randn(3, 11, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(3, 11, dtype=torch.float64) if given_eps else None
    def f(m, lv):
        return fastvae.reparam_kl(m, lv, eps, seed=31337, reduction="none", backend="native")
    assert torch.autograd.gradcheck(f, (mu, logvar))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("given_eps", [False, True], ids=["philox", "eps"])
def test_opcheck(given_eps, requires_grad):
    mu = randn((4, 33)).requires_grad_(requires_grad)
    logvar = randn((4, 33)).requires_grad_(requires_grad)
    eps = randn((4, 33)) if given_eps else None
    torch.library.opcheck(torch.ops.fastvae.reparam_kl.default,
                          (mu, logvar, eps, seed_tensor(5), "native"))


@pytest.mark.skipif(DEVICE != "cpu", reason="at::parallel_for threads are a CPU matter")
def test_kl_deterministic_across_runs_and_threads():
    mu, logvar = randn((9, 3 * 8192 + 17)), randn((9, 3 * 8192 + 17))
    seed = seed_tensor(7)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            z, kl = fwd(mu, logvar, None, seed)
            results.append((z, kl, *bwd(z, kl, mu, logvar, None, seed)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(9, 4001), (64, 300), (2, 8192 + 45)])
def test_every_output_element_is_written(shape, dtype):
    # Fill and free blocks of the outputs' size first, so the allocator is likely to hand
    # the NaN-filled memory back to the kernel: an element it skips stays NaN.
    for _ in range(3):
        poison(torch.empty(shape, dtype=dtype, device=DEVICE))
        poison(torch.empty(shape[0], dtype=ref.compute_dtype(dtype), device=DEVICE))
    mu, logvar = randn(shape, dtype), randn(shape, dtype)
    grad_kl = torch.randn(shape[0], device=DEVICE, dtype=ref.compute_dtype(dtype))
    for given_eps in (None, randn(shape, dtype)):
        z, kl = fwd(mu, logvar, given_eps, seed_tensor(3))
        grad_mu, grad_logvar = bwd(randn(shape, dtype), grad_kl, mu, logvar, given_eps, seed_tensor(3))
        for t in (z, kl, grad_mu, grad_logvar):
            assert torch.isfinite(t).all()


def test_std_is_exp_of_half_logvar_to_an_ulp_over_float32s_range():
    """std = exp(logvar / 2) (on the CPU exp_f, common/reparam_kl.h) over float32's whole
    exp range: subnormal results, 0 below it, +inf above it, NaN for NaN."""
    if DEVICE != "cpu":
        pytest.skip("the CPU kernels' exp_f; the CUDA kernels take CUDA's expf")
    edges = [88.72283172607421875, 88.72283935546875, -87.33654, -103.97, -104.0, -150.0,
             float("inf"), float("-inf"), float("nan")]
    half = torch.cat([torch.linspace(-110, 90, 20001), torch.tensor(edges)])
    logvar = (2 * half).view(1, -1)  # half of it is `half` exactly
    mu, eps = torch.zeros_like(logvar), torch.ones_like(logvar)
    z, _ = fwd(mu, logvar, eps, seed_tensor(0))  # z = std * 1
    expected = torch.exp(half.double()).float().view(1, -1)
    torch.testing.assert_close(z, expected, rtol=2.5e-7, atol=1.5e-45, equal_nan=True)


@pytest.mark.parametrize("given_eps", [False, True], ids=["philox", "eps"])
def test_nonfinite_inputs_propagate_like_reference(given_eps):
    shape = (4, 50)
    mu, logvar = randn(shape), randn(shape)
    mu[0, 3], mu[1, 7] = float("nan"), float("inf")
    logvar[2, 5], logvar[2, 9], logvar[3, 1] = float("inf"), float("-inf"), float("nan")
    eps = randn(shape) if given_eps else None
    grad_z, grad_kl = randn(shape), torch.randn(4, device=DEVICE)
    seed = seed_tensor(11)
    outs = (*fwd(mu, logvar, eps, seed), *bwd(grad_z, grad_kl, mu, logvar, eps, seed))
    refs = (*ref.reparam_kl_fwd(mu, logvar, eps, seed),
            *ref.reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed))
    for out, r in zip(outs, refs):
        assert torch.equal(torch.isnan(out), torch.isnan(r))
        assert torch.equal(torch.isinf(out), torch.isinf(r))
        torch.testing.assert_close(out, r, **NOISE_TOL, equal_nan=True)


def test_raw_op_argument_errors_name_the_argument():
    mu, logvar, seed = randn((2, 3)), randn((2, 3)), seed_tensor(0)
    with pytest.raises(RuntimeError, match="logvar"):
        fwd(mu, randn((2, 4)), None, seed)
    with pytest.raises(RuntimeError, match="logvar"):
        fwd(mu, randn((2, 3), torch.float64 if DEVICE == "cpu" else torch.float16), None, seed)
    with pytest.raises(RuntimeError, match="eps"):
        fwd(mu, logvar, randn((3, 2)), seed)
    with pytest.raises(RuntimeError, match="mu"):
        fwd(torch.zeros((2, 3), dtype=torch.int32, device=DEVICE), logvar, None, seed)
    with pytest.raises(RuntimeError, match="mu"):
        fwd(randn((0, 3)), randn((0, 3)), None, seed)
    with pytest.raises(RuntimeError, match="seed"):
        fwd(mu, logvar, None, torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="seed"):
        fwd(mu, logvar, None, torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="grad_z"):
        bwd(randn((2, 2)), torch.zeros(2, device=DEVICE), mu, logvar, None, seed)
    with pytest.raises(RuntimeError, match="grad_kl"):
        bwd(randn((2, 3)), torch.zeros(3, device=DEVICE), mu, logvar, None, seed)


def test_kl_accurate_on_long_rows():
    # A row of 2**21 terms with a non-zero mean: float32 accumulation must stay as close
    # to the float64 sum as torch's own float32 sum (within 2x plus a floor).
    mu, logvar = randn((2, 1 << 21)) + 0.5, 0.3 * randn((2, 1 << 21))
    _, kl = fwd(mu, logvar, None, seed_tensor(1))
    m, lv = mu.double(), logvar.double()
    exact = (-0.5 * (1 + lv - m * m - lv.exp())).sum(1)
    torch_err = ((ref.reparam_kl_fwd(mu, logvar, None, seed_tensor(1))[1] - exact) / exact).abs().max()
    err = ((kl.double() - exact) / exact).abs().max()
    assert err <= 2 * torch_err + 1e-6, f"kl relative error {err:.2e}, torch's {torch_err:.2e}"


@pytest.mark.skipif(DEVICE != "cpu", reason="the block cache is the CPU allocator's")
def test_large_outputs_reuse_freed_blocks_never_live_ones(monkeypatch):
    # Outputs of 4 MiB and more come from csrc/cpu/huge_page_empty.h: a freed block of the
    # same size is handed out again (no page faults, no kernel zeroing), a live one never,
    # every element of a reused block is written again, and FASTVAE_CPU_CACHE_MB bounds it.
    cache_bytes = torch.ops.fastvae._cpu_cache_bytes
    shape = (4, 1 << 20)  # 16 MiB of float32
    mu, logvar = randn(shape), randn(shape)
    monkeypatch.setenv("FASTVAE_CPU_CACHE_MB", "0")  # a free now empties the cache
    z, _ = fwd(mu, logvar, None, seed_tensor(0))
    del z
    assert cache_bytes() == 0
    monkeypatch.setenv("FASTVAE_CPU_CACHE_MB", "40")  # room for two blocks, not three
    z1, _ = fwd(mu, logvar, None, seed_tensor(1))
    z2, _ = fwd(mu, logvar, None, seed_tensor(2))
    z3, _ = fwd(mu, logvar, None, seed_tensor(3))
    assert len({z1.data_ptr(), z2.data_ptr(), z3.data_ptr()}) == 3
    expected, reused = z1.clone(), z2.data_ptr()
    z2.fill_(float("nan"))
    del z2
    assert cache_bytes() == 16 << 20
    z4, _ = fwd(mu, logvar, None, seed_tensor(1))  # takes z2's poisoned block
    assert z4.data_ptr() == reused and cache_bytes() == 0
    torch.testing.assert_close(z4, expected, rtol=0, atol=0)
    del z1, z3, z4  # 48 MiB freed into a 40 MiB cache: the oldest goes
    assert cache_bytes() == 32 << 20
    big_mu = randn((4, 4 << 20))
    big, _ = fwd(big_mu, big_mu, None, seed_tensor(5))
    del big  # 64 MiB: larger than the whole cache, not kept, and evicts nothing
    assert cache_bytes() == 32 << 20
    monkeypatch.setenv("FASTVAE_CPU_CACHE_MB", "0")
    z, _ = fwd(mu, logvar, None, seed_tensor(0))
    del z
    assert cache_bytes() == 0
