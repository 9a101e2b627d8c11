"""Shared test helpers: one tolerance rule, random inputs, poisoned outputs.

TRITON_INTERPRET=1 is set before anything imports triton, so the triton backend runs on
CPU tensors in the tests (slowly: keep its grids small).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastvae  # noqa: E402
from fastvae.backends import _unavailable_reason, cpu_capability, supported_cpu_capabilities  # noqa: E402
from fastvae.reference import (BATCH, _grouped, _ungrouped, conv_transpose, group_stats,  # noqa: E402
                               normalize)

# Float32 and float64 compare straight against the reference; float16/bfloat16 by the
# flash-attention rule (see assert_close_to_reference).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}
LOW_PRECISION_FLOOR = {torch.float16: 2**-11, torch.bfloat16: 2**-8,  # one ulp at 1.0
                       torch.float32: 2**-24}
BACKENDS = ("reference", "native", "triton")


def backend_params(op: str, device: str = "cpu"):
    """pytest params of every backend; one not built on this machine is skipped, with why."""
    params = []
    for backend in BACKENDS:
        reason = _unavailable_reason(backend, op, device)
        marks = pytest.mark.skipif(reason is not None, reason=reason or "available")
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill a preallocated output with NaN so elements a kernel never writes show."""
    return t.fill_(float("nan"))


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t` through a strided view (every other element of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    poison(wide) if t.is_floating_point() else None
    view = wide[..., ::2]
    view.copy_(t)
    assert t.numel() <= 1 or not view.is_contiguous()  # one element is always contiguous
    return view


def assert_close_to_reference(out, ref_low, ref_high, dtype, name="output", floor=0.0):
    """`out` against the reference; an error of at most `floor` always passes (the rounding
    a gradient has where a norm's backward cancels: see norm_grad_rounding).

    float32/float64: torch.testing.assert_close with TOLERANCES. float16/bfloat16: the
    kernel's max error against the higher-precision reference is at most twice a correct
    implementation's in that dtype (flash-attention's rule). That error is plain PyTorch's
    (ref_low) plus a floor of 2 ulps at the output's scale: torch's max error over a handful
    of values is one draw, and a lucky one is small. Measured on the geometry tests (400
    draws each, bf16/fp16, BatchNorm + SiLU): torch's own max error ranged 0.2 to 6 ulps of
    the output scale while native's RMS error stayed 0.7-1.2x torch's; twice torch's error
    plus 1 ulp failed 45 of 48000 checks, this bound none (worst 0.86 of it).
    float32 given a float64 ref_high: a long reduction (a weight gradient over a thousand
    pixels) can leave TOLERANCES with either side's rounding; then that rule decides, and
    where the max error passes it by up to 2x more, the RMS error within twice torch's: the
    max over a few dozen values is one noisy draw (the gemm path's InstanceNorm grad_weight
    read 2.09x torch's max error once in 1600 draws, and 1.37x its RMS at most).
    """
    if ref_high.dtype == torch.float64 and dtype != torch.float64:
        if (out.double() - ref_high).abs().max().item() <= floor:
            return
    if dtype in (torch.float32, torch.float64):
        try:
            torch.testing.assert_close(out, ref_low, **TOLERANCES[dtype], msg=lambda m: f"{name}: {m}")
            return
        except AssertionError:
            if dtype == torch.float64 or ref_high.dtype != torch.float64:
                raise
    ref = ref_high.to(torch.float64 if ref_high.dtype == torch.float64 else torch.float32)
    err = (out.to(ref.dtype) - ref).abs().max().item()
    base = (ref_low.to(ref.dtype) - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    bound = 2 * (base + 2 * LOW_PRECISION_FLOOR[dtype] * scale)
    if dtype == torch.float32 and err > bound:  # the RMS decides, with the max held to 2x more
        rms = lambda t: (t.to(ref.dtype) - ref).pow(2).mean().sqrt().item()  # noqa: E731
        rms_bound = 2 * (rms(ref_low) + LOW_PRECISION_FLOOR[dtype] * scale)
        assert rms(out) <= rms_bound and err <= 2 * bound, (
            f"{name}: {dtype} error {err:.3g} (RMS {rms(out):.3g}) > bound {bound:.3g} (RMS "
            f"{rms_bound:.3g}; torch's own {base:.3g})")
        return
    assert err <= bound, f"{name}: {dtype} error {err:.3g} > bound {bound:.3g} (torch's own {base:.3g})"
    assert torch.isfinite(out).all() == torch.isfinite(ref_high).all(), f"{name}: non-finite mismatch"


def norm_grad_rounding(x, weight, bias, geometry, grad_y, **block):
    """Absolute bounds on the float32 rounding of a normalized block's gradients, where the
    norm's backward cancels: {"grad_bias": ..., "grad_x": ..., "grad_weight": ...}.

    The gradient of the pre-norm, grad_pre, is a difference of terms that cancel (its
    per-channel sum, the bias's gradient, is zero), rstd (g_n - mean g_n - n mean(g_n n)) with
    g_n the gradient of the normalized n. Its float32 rounding is of the order of the unit
    roundoff u times the terms' magnitude, however the sums are ordered, and the forward's
    rounding of n (u times kappa = rstd (|conv terms| + |mean|), large where a statistic's
    spread is small against its values: a bias, 16 values a plane) comes through them too:
    e = |grad_pre| + (1 + kappa) rstd (|g_n| + |mean g_n| + |n mean(g_n n)| + |grad_y|)
    (_norm_backward_terms; |grad_y| for the activation's second derivative). The bounds are
    8 u times the largest per-channel sum of e (grad_bias) and the largest element of e
    carried through the convolution's backward in absolute values (|W|^T e for grad_x,
    |x| * e for grad_weight). Measured in CI (2026-12-05): the gemm path's InstanceNorm + SiLU
    grad_bias 8.96 u times the |grad_pre| sum; on its 4x4 planes a grad_x 1.5x twice torch's
    own RMS error (one draw; 1 run in 150 of the float32 cases). The sums come from float64:
    the block's epilogue (`block`: deconv_block's norm, affine and activation keywords)
    applied to the pre-norm through an identity 1x1 convolution.
    geometry: [sh, sw, ph, pw, oh, ow]."""
    x, weight, bias = (t.detach().double() for t in (x, weight, bias))
    pre = conv_transpose(x, weight, bias, geometry).requires_grad_()
    eye = torch.eye(pre.shape[1], dtype=torch.float64)[:, :, None, None]
    block = {k: v.detach().double().clone() if isinstance(v, torch.Tensor) else v
             for k, v in block.items()}
    y = fastvae.deconv_block(pre, eye, None, stride=1, padding=0, output_padding=0,
                             backend="reference", **block)
    grad_pre, = torch.autograd.grad(y, pre, grad_y.double())
    magnitude = conv_transpose(x.abs(), weight.abs(), bias.abs(), geometry)  # pre's terms
    e = grad_pre.abs() + _norm_backward_terms(pre.detach(), magnitude, grad_y.double(), block)
    u8 = 8 * 2**-24
    xa, wa = x.abs().requires_grad_(), weight.abs().requires_grad_()
    through_x, through_w = torch.autograd.grad(conv_transpose(xa, wa, None, geometry), (xa, wa), e)
    return {"grad_bias": u8 * e.sum((0, 2, 3)).max().item(),
            "grad_x": u8 * through_x.max().item(), "grad_weight": u8 * through_w.max().item()}


def bias_grad_rounding(x, weight, bias, geometry, grad_y, **block):
    """norm_grad_rounding's bound for grad_bias alone."""
    return norm_grad_rounding(x, weight, bias, geometry, grad_y, **block)["grad_bias"]


def _norm_backward_terms(pre, magnitude, grad_y, block):
    """Per element of the pre-norm, (1 + kappa) rstd (|g_n| + |mean(g_n)| + |n mean(g_n n)| +
    |grad_y|), kappa = rstd (magnitude + |mean|) at its largest over the statistic
    (norm_grad_rounding); zeros for a block without batch statistics to normalize by.
    Statistics and grouping are the reference's own (fastvae/reference.py)."""
    norm = block.get("norm", "group")
    if norm not in ("group", "instance", "batch") or block.get("training") is False:
        return torch.zeros_like(pre)
    c = pre.shape[1]
    groups = {"batch": BATCH, "instance": c}.get(norm, block.get("num_groups", 32))
    mean, rstd = group_stats(pre, groups, block.get("eps", 1e-5))
    n = normalize(pre, mean, rstd, groups).requires_grad_()
    rest = {k: v for k, v in block.items()
            if k in ("norm_weight", "norm_bias", "style_scale", "style_shift", "activation",
                     "negative_slope")}
    eye = torch.eye(c, dtype=torch.float64)[:, :, None, None]
    y = fastvae.deconv_block(n, eye, None, stride=1, padding=0, output_padding=0,
                             norm="none", backend="reference", **rest)
    g_n, = torch.autograd.grad(y, n, grad_y)
    gn, nn_ = _grouped(g_n, groups), _grouped(n.detach(), groups)
    kappa = rstd[..., None] * (_grouped(magnitude, groups).amax(-1, keepdim=True)
                               + mean[..., None].abs())
    terms = (1 + kappa) * rstd[..., None] * (
        gn.abs() + gn.mean(-1, keepdim=True).abs()
        + (nn_ * (gn * nn_).mean(-1, keepdim=True)).abs() + _grouped(grad_y, groups).abs())
    return _ungrouped(terms, groups, pre.shape)


@pytest.fixture(params=supported_cpu_capabilities() or ["default"])
def every_cpu_capability(request, monkeypatch):
    """Runs a test once per native CPU kernel build this CPU supports (csrc/cpu/capability.h),
    chosen through FASTVAE_CPU_CAPABILITY: `pytestmark = pytest.mark.usefixtures(...)`."""
    monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", request.param)
    if cpu_capability() is not None:
        assert cpu_capability() == request.param
    return request.param
