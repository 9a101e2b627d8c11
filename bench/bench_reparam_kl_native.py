"""Native CPU reparam_kl against what users write, forward + backward (issue 7).

    pytest bench/bench_reparam_kl_native.py --benchmark-only

One group per shape: a copy of the same size (the bandwidth the op is measured against),
eager PyTorch drawing eps = torch.randn_like(mu) as users do, torch.compile of that same
function, and the native backend (noise drawn in the kernel). Every entry does forward
and backward with random upstream gradients. A summary at the end of the module times
every entry again, interleaved (each round runs every entry once, so a slow spell of this
shared VM hits all entries alike), and gives each entry's GB/s (bytes that must move /
time), the fraction of the copy bandwidth, and native's speed-up over eager and
torch.compile, by the median and by the minimum (the least disturbed round).

Bytes that must move, forward + backward: read mu, logvar; write z; read grad_z, mu,
logvar; write grad_mu, grad_logvar: 8 tensors of mu's size (the KL vectors are tiny).

The noise alone, per CPU capability this machine runs (FASTVAE_CPU_CAPABILITY): the native
forward on one thread, mu = logvar = 0 and 64k elements (L2-resident), best of 400, in ns
per normal.
"""
import statistics

import pytest
import torch

import fastvae
from fastvae.backends import CPU_CAPABILITIES, _unavailable_reason, supported_cpu_capabilities
from roofline import annotate, interleaved_seconds, print_after_module

SHAPES = {"16M": (256, 65536), "256x512": (256, 512)}
ENTRIES = ("copy", "eager", "compile", "native")  # run in this order: the summary needs all
TENSORS_MOVED = 8

_results = {}  # (shape name, entry) -> (median, min) seconds
_noise_ns = {}  # capability -> best ns per normal
NOISE_ELEMENTS = 1 << 16


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
    print_after_module(request, _results or _noise_ns, write_summary)


def make_run(name, entry):
    """One forward + backward of `entry` on fresh inputs of shape `name`."""
    shape = SHAPES[name]
    if entry == "copy":
        src, dst = torch.randn(shape), torch.empty(shape)
        return lambda: dst.copy_(src)
    mu = torch.randn(shape, requires_grad=True)
    logvar = (0.5 * torch.randn(shape)).requires_grad_()
    grad_z, grad_kl = torch.randn(shape), torch.randn(shape[0])
    fn = {"eager": baseline, "compile": compiled_baseline, "native": native}[entry]
    return lambda: fwd_bwd(fn, mu, logvar, grad_z, grad_kl)


def interleaved(name, entries):
    """entry -> (median, min) seconds over rounds that each run every entry once."""
    rounds = 7 if SHAPES[name][0] * SHAPES[name][1] >= 1 << 20 else 101
    times = interleaved_seconds({entry: make_run(name, entry) for entry in entries}, rounds)
    return {entry: (statistics.median(t), min(t)) for entry, t in times.items()}


def write_summary(line):
    """Median (and min: the least disturbed round) per entry, timed interleaved."""
    for name in SHAPES:
        entries = [e for e in ENTRIES if (name, e) in _results]
        if "copy" in entries:
            for entry, stats in interleaved(name, entries).items():
                _results[(name, entry)] = stats
    line("")
    if _noise_ns:
        line(f"noise, native forward, one thread, {NOISE_ELEMENTS} normals, best of 400: " +
             ", ".join(f"{cap} {ns:.2f} ns/normal" for cap, ns in _noise_ns.items()))
    line("reparam_kl fwd+bwd        median ms   GB/s  of copy BW |   min ms   GB/s  of copy BW")
    for name, shape in SHAPES.items():
        if (name, "copy") not in _results:
            continue
        numel = shape[0] * shape[1]
        copy_gbs = [2 * numel * 4 / t / 1e9 for t in _results[(name, "copy")]]
        for entry in ENTRIES:
            if (name, entry) not in _results:
                continue
            moved = (2 if entry == "copy" else TENSORS_MOVED) * numel * 4
            cells = []
            for t, c in zip(_results[(name, entry)], copy_gbs):
                gbs = moved / t / 1e9
                cells.append(f"{1e3 * t:9.3f} {gbs:6.2f} {gbs / c:8.1%}")
            line(f"  {name:8s} {entry:8s} {cells[0]}    | {cells[1]}")
        if (name, "native") in _results:
            native = _results[(name, "native")]
            for other in ("eager", "compile"):
                if (name, other) in _results:
                    base = _results[(name, other)]
                    line(f"  {name:8s} native vs {other}: {base[0] / native[0]:.2f}x (median), "
                                        f"{base[1] / native[1]:.2f}x (min)")


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_reparam_kl_native(benchmark, copy_bandwidth, name, entry):
    if entry == "native" and _unavailable_reason("native", "reparam_kl", "cpu"):
        pytest.skip(_unavailable_reason("native", "reparam_kl", "cpu"))
    shape = SHAPES[name]
    numel = shape[0] * shape[1]
    benchmark.group = f"reparam_kl fwd+bwd {name} {tuple(shape)}"
    rounds, warmup = (5, 2) if numel >= 1 << 20 else (200, 20)
    run = make_run(name, entry)
    moved = (2 if entry == "copy" else TENSORS_MOVED) * numel * 4
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    _results[(name, entry)] = (benchmark.stats.stats.median, benchmark.stats.stats.min)
    annotate(benchmark, bytes_moved=moved, copy_bandwidth=copy_bandwidth)


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_noise_ns_per_normal(benchmark, monkeypatch, capability):
    if _unavailable_reason("native", "reparam_kl", "cpu"):
        pytest.skip(_unavailable_reason("native", "reparam_kl", "cpu"))
    if capability not in supported_cpu_capabilities():
        pytest.skip(f"this CPU does not run {capability}")
    monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", capability)
    benchmark.group = "reparam_kl noise, one thread"
    mu, logvar = torch.zeros(1, NOISE_ELEMENTS), torch.zeros(1, NOISE_ELEMENTS)
    seed = torch.tensor(7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the backend op itself: no Python between the calls
        benchmark.pedantic(torch.ops.fastvae._reparam_kl_fwd, (mu, logvar, None, seed),
                           rounds=400, iterations=1, warmup_rounds=20)
    finally:
        torch.set_num_threads(threads)
    _noise_ns[capability] = benchmark.stats.stats.min / NOISE_ELEMENTS * 1e9
    benchmark.extra_info["ns_per_normal"] = round(_noise_ns[capability], 3)
