"""Benchmark helpers: the machine's copy bandwidth and roofline annotations.

Run: pytest bench/ --benchmark-only  (the test run skips benchmarks with --benchmark-skip).
"""
import time

import pytest
import torch


def _median_seconds(fn, repeat=15):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def interleaved_seconds(runs: dict, rounds: int) -> dict:
    """name -> the seconds of each of `rounds` rounds that run every entry of `runs` once,
    in turn (after one untimed call each), so a slow spell of a shared machine hits every
    entry alike rather than whichever was being timed alone. A run that returns a number
    is timed by it (seconds it measured itself, such as a profiled part of its work).

    What a run returns (its gradients, say) is freed inside its own timing, as a training
    step frees them. (Kept until the next entry's call, it was freed inside the next entry's
    timing: eager reparam_kl's 128 MB of gradients, unmapped page by page, added 10 ms to
    the native entry after it.)"""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            own = run()
            own = own if isinstance(own, float) else None  # frees the outputs, timed
            elapsed = time.perf_counter() - start
            times[name].append(own if own is not None else elapsed)
    return times


@pytest.fixture(scope="session")
def copy_bandwidth():
    """Bytes read + written per second by `dst.copy_(src)` on 64 MiB: the memory roofline."""
    src = torch.randn(16 * 2**20)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _median_seconds(lambda: dst.copy_(src))


def annotate(benchmark, *, bytes_moved=None, flops=None, copy_bandwidth=None):
    """Write GB/s (and the fraction of copy bandwidth) or GFLOP/s beside the time."""
    mean = benchmark.stats.stats.mean
    if bytes_moved is not None:
        benchmark.extra_info["GB/s"] = round(bytes_moved / mean / 1e9, 2)
        if copy_bandwidth:
            benchmark.extra_info["roofline"] = round(bytes_moved / mean / copy_bandwidth, 3)
    if flops is not None:
        benchmark.extra_info["GFLOP/s"] = round(flops / mean / 1e9, 1)


def print_after_module(request, results, write):
    """For a module-scoped fixture, after the module's tests: write(line) for the module's
    summary through pytest's terminal (capture off), when any test left `results`."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not results:
        return
    with capture.global_and_fixture_disabled():
        write(reporter.write_line)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
