"""Whole models, forward + backward: the original eager, the original under torch.compile,
and fastvae.fuse(original) (issue 14).

    pytest bench/bench_models.py --benchmark-only [-k dcgan] [-s]

The six models of tests/models at the sizes they are used at (DCGAN batch 64 at 64x64,
pix2pix's 128x128 U-Net, ...), float32, NCHW as their code leaves them (DCGAN also channels_last), in training mode
(BatchNorm on batch statistics). Every entry of a model runs interleaved with the others
(one call each per round, the least of the rounds kept); the summary prints the ratios,
and the header the CPU model and instruction sets.
"""
import copy
import os
import sys

import pytest
import torch

import fastvae
from fastvae.backends import cpu_description
from roofline import interleaved_seconds, print_after_module

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from models import cyclegan_resnet, dcgan, gn_decoders, pix2pix_unet, vanilla_vae  # noqa: E402

MODELS = {  # name -> (model constructor, input of one batch, rounds)
    "dcgan b64 64x64": (lambda: dcgan.Generator(nz=100, ngf=64, nc=3),
                        lambda: torch.randn(64, 100, 1, 1), 5),
    # PyTorch's CPU recipe, model.to(memory_format=channels_last): every layer's output is
    # channels_last from the 1x1 latent on, eager and fused alike
    "dcgan b64 64x64 channels_last": (
        lambda: dcgan.Generator(nz=100, ngf=64, nc=3).to(memory_format=torch.channels_last),
        lambda: torch.randn(64, 100, 1, 1), 5),
    "vanilla_vae b64 64x64": (lambda: vanilla_vae.VanillaVAEDecoder(latent_dim=128),
                              lambda: torch.randn(64, 128), 5),
    "cyclegan_resnet b1 128x128": (
        lambda: cyclegan_resnet.ResnetGenerator(3, 3, ngf=64, n_blocks=6,
                                                norm_layer=cyclegan_resnet.instance_norm()),
        lambda: torch.randn(1, 3, 128, 128), 5),
    "pix2pix_unet b1 128x128": (lambda: pix2pix_unet.UnetGenerator(3, 3, num_downs=7, ngf=64),
                                lambda: torch.randn(1, 3, 128, 128), 5),
    "gn8_leaky b8 16->256": (lambda: gn_decoders.GroupNormLeakyDecoder(latent=16),
                             lambda: torch.randn(8, 16, 16, 16), 3),
    "gn32_silu b8 8->64": (lambda: gn_decoders.GroupNormSiLUDecoder(latent=4),
                           lambda: torch.randn(8, 4, 8, 8), 5),
}
ENTRIES = ("eager", "compile", "fused")
_results = {}


def runner(entry, model, x):
    model = copy.deepcopy(model)
    if entry == "compile":
        model = torch.compile(model, dynamic=False)
    elif entry == "fused":
        fastvae.fuse(model)
    params = [p for p in model.parameters() if p.requires_grad]
    grad = None

    def run():
        nonlocal grad
        y = model(x)
        if grad is None:
            grad = torch.randn_like(y)
        torch.autograd.grad(y, params, grad)
    return run


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    print_after_module(request, _results, write_summary)


def write_summary(line):
    line("")
    line(f"whole models fwd+bwd, float32 NCHW unless named, training mode; {cpu_description()}")
    line(f"{'model':30s} {'eager ms':>9s} {'compile':>9s} {'fused':>9s} "
         f"{'vs eager':>9s} {'vs compile':>10s}")
    for name, r in _results.items():
        line(f"{name:30s} {1e3 * r['eager']:9.1f} {1e3 * r['compile']:9.1f} "
             f"{1e3 * r['fused']:9.1f} {r['eager'] / r['fused']:8.2f}x "
             f"{r['compile'] / r['fused']:9.2f}x")


@pytest.mark.parametrize("name", list(MODELS))
def test_model(benchmark, name):
    make, make_input, rounds = MODELS[name]
    torch.manual_seed(0)
    model, x = make(), make_input()
    runs = {entry: runner(entry, model, x) for entry in ENTRIES}
    times = interleaved_seconds(runs, rounds)
    _results[name] = {entry: min(t) for entry, t in times.items()}
    benchmark.group = f"model fwd+bwd {name}"
    benchmark.pedantic(runs["fused"], rounds=2, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({e: round(1e3 * t, 2) for e, t in _results[name].items()})
