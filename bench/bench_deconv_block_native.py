"""Native CPU deconv_block against its floor and what users write, forward + backward (issue 6).

    pytest bench/bench_deconv_block_native.py --benchmark-only

One group per decoder shape (batch 8), every entry forward + backward with a random
upstream gradient, in channels_last (oneDNN's fast layout here) unless it says _nchw:
  conv        bare conv_transpose2d with bias: the floor the block is held to (<= 1.10x)
  eager       ConvTranspose2d + GroupNorm(32) + LeakyReLU(0.2)
  compile     torch.compile of that eager block
  native      fastvae.deconv_block(backend="native"), same math
  epi_eager   the epilogue alone in eager PyTorch: bias add + group_norm + leaky_relu
  copy        a copy of the output's size (the memory roofline)
  <entry>_nchw: native, conv, eager, compile and epi_eager in NCHW. The block's ratios
              set channels_last native against each baseline's faster layout (which one
              wins depends on the shape); the epilogue's compare like layouts
The summary at the end times every entry again, interleaved (one call of each per round,
the least disturbed of 21 rounds kept: on a shared 2-core machine a slow spell then hits
all entries alike instead of one test) and gives ratios and the peak RSS growth of one
forward + backward (VmHWM after resetting it through /proc/self/clear_refs). Two more
interleaved entries, native_epi and native_epi_nchw, are the native epilogue alone, timed
by torch.profiler: the self time of the two native kernels in a native forward + backward,
which excludes the convolutions (ATen's forward, the Winograd backward's own profiler
range) and the layout copies (their own range); their GB/s count the bytes the epilogue
must move (3 output-sized passes forward, 5 backward) and are set against the copy's.
"""
import contextlib
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastvae
from fastvae.backends import _unavailable_reason
from roofline import interleaved_seconds, print_after_module

SHAPES = {  # name -> (N, Cin, H, W, Cout); output (N, Cout, 2H, 2W)
    "256->128@16": (8, 256, 16, 16, 128),
    "128->64@32": (8, 128, 32, 32, 64),
    "64->32@64": (8, 64, 64, 64, 32),
}
BASELINES = ("conv", "eager", "compile", "epi_eager")  # each also as <name>_nchw
ENTRIES = ("copy", "native") + BASELINES + tuple(b + "_nchw" for b in ("native",) + BASELINES)
GROUPS = 32
EPILOGUE_PASSES = 8  # native: fwd stats read, normalize read+write; bwd 2 x (read gy, h) + write

CL = torch.channels_last
_results = {}  # (shape, entry) -> median seconds
_peak = {}     # (shape, entry) -> peak RSS growth in bytes


def make(name):
    n, cin, h, w, cout = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(n, cin, h, w).contiguous(memory_format=CL).requires_grad_()
    conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1).to(memory_format=CL)
    grad_y = torch.randn(n, cout, 2 * h, 2 * w).contiguous(memory_format=CL)
    return x, conv, grad_y


def runner(entry, x, conv, grad_y):
    """One forward + backward of `entry` (for "copy", a copy of grad_y's size)."""
    fmt = CL
    if entry.endswith("_nchw"):
        entry, fmt = entry[:-len("_nchw")], torch.contiguous_format
        x = x.detach().contiguous().requires_grad_()
        conv = copy.deepcopy(conv).to(memory_format=fmt)  # .to() would change the shared one
        grad_y = grad_y.contiguous()
    if entry == "copy":
        src, dst = torch.randn_like(grad_y), torch.empty_like(grad_y)
        return lambda: dst.copy_(src)
    params = [x, conv.weight, conv.bias]
    if entry == "conv":
        fn = lambda: conv(x)  # noqa: E731
    elif entry in ("eager", "compile"):
        block = nn.Sequential(conv, nn.GroupNorm(GROUPS, conv.out_channels), nn.LeakyReLU(0.2))
        block = block.to(memory_format=fmt)
        params += list(block[1].parameters())
        model = torch.compile(block) if entry == "compile" else block
        fn = lambda: model(x)  # noqa: E731
    elif entry == "native":
        gw = torch.ones(conv.out_channels, requires_grad=True)
        gb = torch.zeros(conv.out_channels, requires_grad=True)
        params += [gw, gb]
        fn = lambda: fastvae.deconv_block(x, conv.weight, conv.bias, num_groups=GROUPS,  # noqa: E731
                                          norm_weight=gw, norm_bias=gb, backend="native")
    elif entry == "epi_eager":
        pre = conv(x).detach().requires_grad_()
        gw = torch.ones(conv.out_channels, requires_grad=True)
        bias = conv.bias.detach().clone().requires_grad_()
        params = [pre, bias, gw, conv.bias]
        fn = lambda: F.leaky_relu(F.group_norm(pre + bias[:, None, None], GROUPS, gw,  # noqa: E731
                                               conv.bias), 0.2)
    return lambda: torch.autograd.grad(fn(), params, grad_y)


def peak_rss_growth(run):
    """Peak resident bytes above the starting RSS during run() (Linux VmHWM)."""
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    start = status("VmRSS:")
    run()
    return status("VmHWM:") - start


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    print_after_module(request, _results, write_summary)


def interleaved_min(name, rounds=21):
    """entry -> least seconds of one fwd+bwd over `rounds` rounds that each run every entry."""
    x, conv, grad_y = make(name)
    runs = {e: runner(e, x, conv, grad_y) for e in ENTRIES if (name, e) in _results}
    for layout in ("", "_nchw"):
        if "native" + layout in runs:
            runs["native_epi" + layout] = profiled_epilogue(runs["native" + layout])
    return {entry: min(t) for entry, t in interleaved_seconds(runs, rounds).items()}


def write_summary(line):
    line("")
    line("deconv_block fwd+bwd, batch 8 (interleaved min ms; peak RSS growth MiB)")
    for name, (n, cin, h, w, cout) in SHAPES.items():
        r = {e: t for e, t in interleaved_min(name).items()}
        out_bytes = n * cout * 4 * h * w * 4
        flops = 3 * 2 * n * h * w * cin * cout * 16  # fwd + grad_x + grad_weight
        cells = [f"{e}={1e3 * r[e]:.2f}" + (f" ({_peak[(name, e)] / 2**20:.0f} MiB)"
                 if _peak.get((name, e)) is not None else "") for e in ENTRIES if e in r]
        line(f"  {name:12s} " + "  ".join(cells))
        best = {b: min(r[e] for e in (b, b + "_nchw") if e in r)  # the faster layout of each
                for b in ("conv", "eager", "compile") if b in r or b + "_nchw" in r}
        if "conv" in best:
            line(f"  {name:12s} conv {flops / best['conv'] / 1e9:.1f} GFLOP/s (faster layout)")
        if "native" in r and "conv" in best:
            t = r["native"]
            line(f"  {name:12s} native / conv = {t / best['conv']:.3f} (target <= 1.10; "
                 "channels_last native, baselines in their faster layout)")
            for other in ("eager", "compile"):
                if other in best:
                    line(f"  {name:12s} native vs {other}: {best[other] / t:.2f}x")
        if "native_nchw" in r and "eager_nchw" in r:
            line(f"  {name:12s} in NCHW: native {1e3 * r['native_nchw']:.2f} ms, "
                 f"{r['eager_nchw'] / r['native_nchw']:.2f}x eager NCHW")
        for layout in ("", "_nchw"):  # the epilogue against eager's in the same layout
            epi = r.get("native_epi" + layout)
            if "copy" not in r or not epi:
                continue
            copy_bw = 2 * out_bytes / r["copy"]
            bw = EPILOGUE_PASSES * out_bytes / epi
            text = (f"  {name:12s} native epilogue{layout or ' (channels_last)'} {1e3 * epi:.2f} ms, "
                    f"{bw / 1e9:.1f} GB/s = {bw / copy_bw:.0%} of copy ({copy_bw / 1e9:.1f} GB/s)")
            if "epi_eager" + layout in r:
                text += f", {r['epi_eager' + layout] / epi:.2f}x eager's"
            line(text)


@contextlib.contextmanager
def stderr_silenced():
    """Sends file descriptor 2 to /dev/null: kineto logs every profiler start and stop there."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profiled_epilogue(run_native):
    """A run that returns the self seconds of the native kernels in one run_native()."""
    from torch.profiler import profile
    kernels = ("fastvae::_deconv_block_fwd", "fastvae::_deconv_block_bwd")

    def run():
        with stderr_silenced(), profile() as prof:
            run_native()
        return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in kernels) / 1e6
    return run


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_deconv_block_native(benchmark, name, entry):
    if entry.startswith("native") and _unavailable_reason("native", "deconv_block", "cpu"):
        pytest.skip(_unavailable_reason("native", "deconv_block", "cpu"))
    benchmark.group = f"deconv_block fwd+bwd {name}"
    run = runner(entry, *make(name))
    run()
    run()  # compile and first-touch out of the way
    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    _results[(name, entry)] = benchmark.stats.stats.median
    _peak[(name, entry)] = None if entry == "copy" else peak_rss_growth(run)
    if _peak[(name, entry)] is not None:
        benchmark.extra_info["peak_rss_MiB"] = round(_peak[(name, entry)] / 2**20, 1)
