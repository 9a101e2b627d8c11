"""deconv_block on decoder shapes: eager PyTorch modules, torch.compile, every backend.

Eager: nn.ConvTranspose2d + nn.GroupNorm + nn.LeakyReLU in its fastest memory format
(channels_last on this CPU). FLOPs are the convolution's, counted on the input side:
2 * N * H * W * Cin * Cout * 16 forward, twice that for the backward.
"""
import pytest
import torch
from torch import nn

import fastvae
from roofline import annotate
from fastvae.backends import _unavailable_reason

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# name: (N, Cin, H, W, Cout); the decoder of a 128 px VAE, batch 8
SHAPES = {"256to128_16px": (8, 256, 16, 16, 128), "128to64_32px": (8, 128, 32, 32, 64),
          "64to32_64px": (8, 64, 64, 64, 32)}
GROUPS = 32
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    _unavailable_reason(b, "deconv_block", DEVICE.type) is not None,
    reason=str(_unavailable_reason(b, "deconv_block", DEVICE.type))))
    for b in ("reference", "native", "triton")]


def eager_block(cin, cout):
    block = nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.GroupNorm(GROUPS, cout),
                          nn.LeakyReLU(0.2)).to(DEVICE)
    return block.to(memory_format=torch.channels_last)


def flops(n, cin, h, w, cout, backward):
    fwd = 2 * n * h * w * cin * cout * 16
    return fwd * (3 if backward else 1)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile"] + BACKENDS)
def test_deconv_block(benchmark, impl, shape_name, backward):
    n, cin, h, w, cout = SHAPES[shape_name]
    torch.manual_seed(0)
    block = eager_block(cin, cout)
    x = torch.randn(n, cin, h, w, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    if impl == "eager":
        fn = block
    elif impl == "compile":
        fn = torch.compile(block)
    else:
        fn = fastvae.nn.DeconvBlock.from_modules(block[0], block[1], block[2], backend=impl)
    grad_y = torch.randn(n, cout, 2 * h, 2 * w, device=DEVICE).contiguous(
        memory_format=torch.channels_last)

    def run():
        y = fn(x)
        if backward:
            y.backward(grad_y)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"deconv_block {shape_name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(run)
    annotate(benchmark, flops=flops(n, cin, h, w, cout, backward))
