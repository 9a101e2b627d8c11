"""deconv_block over the layers of real decoders, forward + backward (issue 13).

    pytest bench/bench_shapes.py --benchmark-only [-k dcgan] [-s]

One group per layer: DCGAN's generator (pytorch/examples dcgan/main.py; BatchNorm + ReLU,
the last layer Tanh; batch 16 and 64), pix2pix's UnetGenerator up path (InstanceNorm, the
ReLU sits before the conv; batch 1 and 8), a GroupNorm(32) + SiLU decoder and the three
GroupNorm(32) + LeakyReLU blocks of bench_deconv_block_native.py (batch 8), and the 3x3
stride-2 output_padding-1 up-convolutions of AntixK's VanillaVAE decoder (BatchNorm +
LeakyReLU, batch 64) and CycleGAN's ResnetGenerator (InstanceNorm + ReLU, batch 1). Entries, each
forward + backward with a random upstream gradient:
  native_nchw / native_cl   fastvae.deconv_block(backend="native") on an NCHW / channels_last x
  eager_nchw / eager_cl     the torch.nn modules (ConvTranspose2d, norm, activation)
  compile_nchw              torch.compile of the eager modules, NCHW (channels_last too with
                            FASTVAE_BENCH_COMPILE_CL=1: every compile costs seconds)
  conv_nchw / conv_cl       the bare ConvTranspose2d with bias: the floor
The summary at the end times every entry of a layer interleaved (one call of each per round,
the least of the rounds kept) and prints, per layer, native, eager, compile and the bare
conv each in its faster layout, their ratios, and native in NCHW against eager in NCHW. The
header names the CPU and the instruction sets it has. With FASTVAE_BENCH_JSON=path the
interleaved minimums are also written there as JSON (the input of tools/conv_paths.py).
"""
import json
import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fastvae
from fastvae.backends import _unavailable_reason, cpu_description
from roofline import interleaved_seconds, print_after_module

CL = torch.channels_last


@dataclass(frozen=True)
class Layer:
    model: str
    n: int
    cin: int
    cout: int
    h: int  # input height = width
    norm: str  # "batch", "instance", "group" (32 groups) or "none"
    activation: str  # fastvae's name
    kernel: int = 4
    stride: int = 2
    padding: int = 1
    output_padding: int = 0

    @property
    def name(self):
        geo = "" if self.winograd_geometry else (
            f" k{self.kernel}s{self.stride}p{self.padding}"
            + (f"op{self.output_padding}" if self.output_padding else ""))
        return f"{self.model} {self.cin}->{self.cout}@{self.h} b{self.n}{geo}"

    @property
    def winograd_geometry(self):  # the 4x4 stride-2 padding-1 block of the Winograd paths
        return (self.kernel, self.stride, self.padding, self.output_padding) == (4, 2, 1, 0)

    @property
    def out_size(self):
        return (self.h - 1) * self.stride - 2 * self.padding + self.kernel + self.output_padding

    @property
    def flops(self):  # fwd + grad_x + grad_weight, counted on the input side
        return 3 * 2 * self.n * self.h * self.h * self.cin * self.cout * self.kernel ** 2


def _layers():
    out = []
    for n in (16, 64):
        out.append(Layer("dcgan", n, 100, 512, 1, "batch", "relu", 4, 1, 0))
        for cin, cout, h in ((512, 256, 4), (256, 128, 8), (128, 64, 16)):
            out.append(Layer("dcgan", n, cin, cout, h, "batch", "relu"))
        out.append(Layer("dcgan", n, 64, 3, 32, "none", "tanh"))
    # the four U-Net layers, and pix2pix's 1024->512 at 4x4 and 8x8 (256x256 images)
    for n in (1, 8):
        for cin, cout, h in ((1024, 512, 1), (1024, 512, 2), (1024, 512, 4), (1024, 512, 8),
                             (512, 256, 16), (256, 128, 32)):
            out.append(Layer("unet", n, cin, cout, h, "instance", "none"))
    for cin, cout, h in ((512, 256, 8), (256, 128, 16), (128, 64, 32), (128, 64, 64)):
        out.append(Layer("gn32silu", 8, cin, cout, h, "group", "silu"))
    for cin, cout, h in ((256, 128, 16), (128, 64, 32), (64, 32, 64)):
        out.append(Layer("gn32leaky", 8, cin, cout, h, "group", "leaky_relu"))
    # 3x3 stride-2 output_padding-1 up-convolutions (no Winograd path): AntixK's VanillaVAE
    # decoder at 64x64 and CycleGAN's ResnetGenerator at 128x128
    for cin, cout, h in ((512, 256, 2), (256, 128, 4), (128, 64, 8), (64, 32, 16), (32, 32, 32)):
        out.append(Layer("vae", 64, cin, cout, h, "batch", "leaky_relu", 3, 2, 1, 1))
    for cin, cout, h in ((256, 128, 32), (128, 64, 64)):
        out.append(Layer("cyclegan", 1, cin, cout, h, "instance", "relu", 3, 2, 1, 1))
    return out


LAYERS = {layer.name: layer for layer in _layers()}
ENTRIES = ("native_nchw", "native_cl", "eager_nchw", "eager_cl", "compile_nchw", "conv_nchw",
           "conv_cl") + (("compile_cl",) if os.environ.get("FASTVAE_BENCH_COMPILE_CL") else ())
ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "none": nn.Identity,
                      "leaky_relu": lambda: nn.LeakyReLU(0.2)}
_results = {}  # layer name -> entry -> interleaved min seconds


def modules(layer: Layer, fmt):
    """ConvTranspose2d -> norm -> activation as the model writes them, in memory format fmt."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                              layer.output_padding)
    norm = {"batch": lambda: nn.BatchNorm2d(layer.cout),
            "instance": lambda: nn.InstanceNorm2d(layer.cout),
            "group": lambda: nn.GroupNorm(32, layer.cout),
            "none": nn.Identity}[layer.norm]()
    return nn.Sequential(conv, norm, ACTIVATION_MODULES[layer.activation]()).to(memory_format=fmt)


def runner(entry: str, layer: Layer):
    """One forward + backward of `entry` on `layer`."""
    kind, layout = entry.rsplit("_", 1)
    fmt = CL if layout == "cl" else torch.contiguous_format
    block = modules(layer, fmt)
    x = torch.randn(layer.n, layer.cin, layer.h, layer.h).contiguous(memory_format=fmt)
    x.requires_grad_()
    grad_y = torch.randn(layer.n, layer.cout, layer.out_size, layer.out_size)
    grad_y = grad_y.contiguous(memory_format=fmt)
    conv, norm = block[0], block[1]
    params = [x] + list(block.parameters())
    if kind == "conv":
        fn = lambda: conv(x)  # noqa: E731
        params = [x, conv.weight, conv.bias]
    elif kind in ("eager", "compile"):
        model = torch.compile(block, dynamic=False) if kind == "compile" else block
        fn = lambda: model(x)  # noqa: E731
    else:
        norm_args = {"norm": layer.norm, "num_groups": 32}
        if layer.norm in ("batch", "group"):
            norm_args.update(norm_weight=norm.weight, norm_bias=norm.bias)
        if layer.norm == "batch":
            norm_args.update(running_mean=norm.running_mean, running_var=norm.running_var)
        fn = lambda: fastvae.deconv_block(  # noqa: E731
            x, conv.weight, conv.bias, stride=layer.stride, padding=layer.padding,
            output_padding=layer.output_padding, activation=layer.activation, backend="native", **norm_args)
    return lambda: torch.autograd.grad(fn(), params, grad_y)


def rounds_for(layer: Layer) -> int:
    """Enough interleaved rounds for a stable minimum, fewer for the heavy layers (over
    20 GFLOP: 50-250 ms a step). Five rounds of GN32 256->128@16 b8 (6.4 GFLOP) left its
    ratio to eager between 1.23x and 1.38x in two runs of the same build on a noisy VM."""
    gflop = layer.flops / 1e9
    return 5 if gflop > 20 else 9 if gflop > 1 else 15


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    print_after_module(request, _results, write_summary)
    path = os.environ.get("FASTVAE_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"cpu": cpu_description(), "layers": {
                name: {"layer": LAYERS[name].__dict__, "seconds": r}
                for name, r in _results.items()}}, f, indent=1)


def ratios(r: dict) -> dict:
    """The summary's numbers of one layer from its entry -> seconds: each kind in its faster
    layout, and native against eager and compile in those, against the bare conv, and in
    NCHW against eager in NCHW (what a model that never asked for channels_last gets)."""
    def best(kind):
        times = [t for e, t in r.items() if e.startswith(kind + "_")]
        return min(times) if times else float("nan")
    native, eager, compile_, conv = best("native"), best("eager"), best("compile"), best("conv")
    return {"native": native, "eager": eager, "compile": compile_, "conv": conv,
            "vs_eager": eager / native, "vs_compile": compile_ / native, "per_conv": native / conv,
            "nchw_vs_eager_nchw": r["eager_nchw"] / r["native_nchw"]}


def write_summary(line):
    line("")
    line(f"deconv_block fwd+bwd over real decoder layers; {cpu_description()}")
    line("interleaved min ms, each kind in its faster layout (NCHW or channels_last); ratios > 1 "
         "mean native is faster; / conv is native over the bare ConvTranspose2d; the last "
         "column sets native in NCHW against eager in NCHW")
    line(f"{'layer':34s} {'native':>8s} {'eager':>8s} {'compile':>8s} {'conv':>8s} "
         f"{'vs eager':>8s} {'vs comp':>8s} {'/ conv':>7s} {'NCHW':>7s}")
    for name, r in _results.items():
        q = ratios(r)
        line(f"{name:34s} {1e3 * q['native']:8.2f} {1e3 * q['eager']:8.2f} "
             f"{1e3 * q['compile']:8.2f} {1e3 * q['conv']:8.2f} {q['vs_eager']:7.2f}x "
             f"{q['vs_compile']:7.2f}x {q['per_conv']:7.2f} {q['nchw_vs_eager_nchw']:6.2f}x")


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer(benchmark, name):
    reason = _unavailable_reason("native", "deconv_block", "cpu")
    if reason:
        pytest.skip(reason)
    layer = LAYERS[name]
    benchmark.group = f"deconv_block fwd+bwd {name}"
    runs = {entry: runner(entry, layer) for entry in ENTRIES}
    times = interleaved_seconds(runs, rounds_for(layer))
    _results[name] = {entry: min(t) for entry, t in times.items()}
    native = runs["native_nchw"]
    benchmark.pedantic(native, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({e: round(1e3 * t, 3) for e, t in _results[name].items()})
    benchmark.extra_info["GFLOP/s native"] = round(layer.flops / ratios(_results[name])["native"] / 1e9, 1)
