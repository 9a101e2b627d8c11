"""Native CPU reparam_kl against what users write, forward + backward (issue 7).

    pytest bench/bench_reparam_kl_native.py --benchmark-only

One group per shape: a copy of the same size (the bandwidth the op is measured against),
eager PyTorch drawing eps = torch.randn_like(mu) as users do, torch.compile of that same
function, and the native backend (noise drawn in the kernel). Every entry does forward
and backward with random upstream gradients. A summary at the end of the module gives
each entry's GB/s (bytes that must move / time), the fraction of the copy bandwidth, and
native's speed-up over eager and torch.compile.

Bytes that must move, forward + backward: read mu, logvar; write z; read grad_z, mu,
logvar; write grad_mu, grad_logvar: 8 tensors of mu's size (the KL vectors are tiny).
"""
import pytest
import torch

import fastvae
from fastvae.backends import _unavailable_reason

SHAPES = {"16M": (256, 65536), "256x512": (256, 512)}
ENTRIES = ("copy", "eager", "compile", "native")  # run in this order: the summary needs all
TENSORS_MOVED = 8

_results = {}  # (shape name, entry) -> median seconds


def baseline(mu, logvar):
    """reparam + KL as written in plain PyTorch, noise from torch's generator."""
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar)).sum(1)
    return z, kl


compiled_baseline = torch.compile(baseline)


def native(mu, logvar):
    return fastvae.reparam_kl(mu, logvar, reduction="none", backend="native")


def fwd_bwd(fn, mu, logvar, grad_z, grad_kl):
    z, kl = fn(mu, logvar)
    return torch.autograd.grad((z, kl), (mu, logvar), (grad_z, grad_kl))


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not _results:
        return
    with capture.global_and_fixture_disabled():
        write_summary(reporter)


def write_summary(reporter):
    reporter.write_line("")
    reporter.write_line("reparam_kl fwd+bwd (median)      ms      GB/s   of copy BW")
    for name, shape in SHAPES.items():
        if (name, "copy") not in _results:
            continue
        numel = shape[0] * shape[1]
        copy_gbs = 2 * numel * 4 / _results[(name, "copy")] / 1e9
        for entry in ENTRIES:
            if (name, entry) not in _results:
                continue
            t = _results[(name, entry)]
            moved = (2 if entry == "copy" else TENSORS_MOVED) * numel * 4
            gbs = moved / t / 1e9
            reporter.write_line(f"  {name:8s} {entry:8s}        {1e3 * t:9.3f} {gbs:8.2f}   {gbs / copy_gbs:6.1%}")
        if (name, "native") in _results:
            t = _results[(name, "native")]
            for other in ("eager", "compile"):
                if (name, other) in _results:
                    reporter.write_line(f"  {name:8s} native vs {other}: {_results[(name, other)] / t:.2f}x")


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_reparam_kl_native(benchmark, name, entry):
    if entry == "native" and _unavailable_reason("native", "reparam_kl", "cpu"):
        pytest.skip(_unavailable_reason("native", "reparam_kl", "cpu"))
    shape = SHAPES[name]
    numel = shape[0] * shape[1]
    benchmark.group = f"reparam_kl fwd+bwd {name} {tuple(shape)}"
    mu = torch.randn(shape, requires_grad=True)
    logvar = (0.5 * torch.randn(shape)).requires_grad_()
    grad_z, grad_kl = torch.randn(shape), torch.randn(shape[0])
    big = numel >= 1 << 20
    rounds, warmup = (5, 2) if big else (200, 20)
    if entry == "copy":
        src, dst = torch.randn(shape), torch.empty(shape)
        run = lambda: dst.copy_(src)  # noqa: E731
        moved = 2 * numel * 4
    else:
        fn = {"eager": baseline, "compile": compiled_baseline, "native": native}[entry]
        run = lambda: fwd_bwd(fn, mu, logvar, grad_z, grad_kl)  # noqa: E731
        moved = TENSORS_MOVED * numel * 4
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    median = benchmark.stats.stats.median
    _results[(name, entry)] = median
    benchmark.extra_info["GB/s"] = round(moved / median / 1e9, 2)
