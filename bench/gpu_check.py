"""One command for the day a GPU is at hand: correctness on CUDA, then speed against the roofline.

    FORCE_CUDA=1 pip install --no-build-isolation -e . && python bench/gpu_check.py
    (bench/gpu_run.sh runs it step by step, with time limits, after building)

1. Correctness: every available backend of both ops (native, triton) against the float64
   fastvae.reference on CUDA tensors: values and gradients with random upstream gradients,
   several dtypes, odd sizes, every norm and geometry, channels_last and strided inputs;
   outputs come from a caching allocator poisoned with NaN, so unwritten elements show.
   Then the native test file on CUDA (FASTVAE_TEST_DEVICE=cuda).
2. Speed: forward+backward, CUDA-event timed (median), of eager PyTorch, torch.compile and
   each backend, on decoder layers of real models, with GB/s (reparam_kl: bytes that must
   move) or TFLOP/s (deconv_block: the transposed convolution's 2*N*H*W*Cin*Cout*16 per
   pass, x3 for fwd+bwd) as a fraction of the copy bandwidth / bf16 GEMM rate measured in
   the same run, and the ratio to eager.
Options: --skip-pytest, --skip-bench, --backends native,triton ("" for none),
--ops reparam_kl,deconv_block, --bench-backends native,triton,auto, --compile-budget S,
--sanitize (the smallest native cases only, for `compute-sanitizer --tool memcheck`). Exits 1 if a correctness check failed.
"""
import argparse
import os
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available(backend, op):
    from fastvae.backends import _unavailable_reason
    return backend == "auto" or _unavailable_reason(backend, op, "cuda") is None


# ------------------------------------------------------------------------- correctness


def run_pytest(skip_argument_errors: bool) -> bool:
    env = dict(os.environ, FASTVAE_TEST_DEVICE="cuda")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "--maxfail=20", "--tb=short",
           "tests/test_reparam_kl_native.py"]
    if skip_argument_errors:  # check_error_paths ran them, each in its own process
        cmd += ["-k", "not argument_errors"]
    print("$ FASTVAE_TEST_DEVICE=cuda " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


def poison_allocator():
    """Fill the CUDA caching allocator's free blocks with NaN: the outputs a kernel then
    allocates start as NaN (from the cache), so an element it never writes shows."""
    blocks = [torch.full((64 << 20,), float("nan"), device="cuda") for _ in range(8)]
    blocks += [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(256)]
    del blocks


def layout(t, how):
    """t as the kernels meet it: "nchw" (contiguous), "cl" (channels_last), "strided"."""
    if how == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if how == "strided":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), device=t.device,
                          dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def max_rel_err(out, ref):
    """Max error over the reference's max magnitude, floored at 0.1: a gradient that is
    zero up to rounding (the conv bias under a norm) is judged on an absolute scale."""
    ref = ref.float()
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(0.1)).item()


def check(name, outs, refs, refs_low, tol_floor):
    """Each output's error against the float64 reference within 2x plain PyTorch's + floor."""
    ok = True
    for i, (o, r, r_low) in enumerate(zip(outs, refs, refs_low)):
        if o is None and r is None:
            continue
        err, base = max_rel_err(o, r), max_rel_err(r_low, r)
        good = err <= 2 * base + tol_floor
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {name} output {i}: rel err {err:.2e} (torch {base:.2e})")
    return ok


def check_reparam_kl(backend) -> bool:
    import fastvae
    ok = True
    for shape, how in [((3, 37), "nchw"), ((64, 4099), "nchw"), ((16, 4, 8, 8), "nchw"),
                       ((5, 3, 7, 9), "strided"), ((1, 1), "nchw"), ((2, 1 << 20), "nchw")]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            mu = layout(torch.randn(shape, device="cuda", dtype=dtype), how).requires_grad_()
            lv = layout((0.5 * torch.randn(shape, device="cuda")).to(dtype), how).requires_grad_()
            g_z = torch.randn(shape, device="cuda", dtype=dtype)
            g_kl = torch.randn(shape[0], device="cuda")

            def run(m, l, b):
                poison_allocator()
                z, kl = fastvae.reparam_kl(m, l, seed=1234, reduction="none", backend=b)
                return (z, kl, *torch.autograd.grad((z, kl), (m, l), (g_z, g_kl)))
            outs = run(mu, lv, backend)
            low = run(mu, lv, "reference")
            m64 = mu.detach().double().requires_grad_()
            l64 = lv.detach().double().requires_grad_()
            z, kl = fastvae.reparam_kl(m64, l64, seed=1234, reduction="none", backend="reference")
            refs = (z, kl, *torch.autograd.grad((z, kl), (m64, l64), (g_z.double(), g_kl.double())))
            floor = 1e-5 if dtype == torch.float32 else 1e-2
            ok &= check(f"reparam_kl[{backend}] {tuple(shape)} {how} {dtype}", outs, refs, low,
                        floor)
    # The noise itself: N(0, 1) over 16M draws (z = eps at mu = logvar = 0), and the same
    # draw from a torch.Generator seeded alike.
    zeros = torch.zeros(4096, 4096, device="cuda")
    eps, _ = fastvae.reparam_kl(zeros, zeros, seed=7, backend=backend)
    mean, std = eps.mean().item(), eps.std().item()
    good = abs(mean) < 1e-3 and abs(std - 1) < 1e-3 and eps.isfinite().all().item()
    print(f"  {'ok  ' if good else 'FAIL'} reparam_kl[{backend}] noise over 16M: mean {mean:.2e}, "
          f"std {std:.6f}")
    ok &= good
    g1, g2 = (torch.Generator("cuda").manual_seed(3) for _ in range(2))
    a, _ = fastvae.reparam_kl(zeros[:64], zeros[:64], generator=g1, backend=backend)
    b, _ = fastvae.reparam_kl(zeros[:64], zeros[:64], generator=g2, backend=backend)
    good = torch.equal(a, b)
    print(f"  {'ok  ' if good else 'FAIL'} reparam_kl[{backend}] generator= reproduces its draw")
    return ok & good


def deconv_inputs(n, cin, cout, h, dtype, style, kernel=4, how="nchw"):
    x = layout(torch.randn(n, cin, h, h, device="cuda", dtype=dtype), how).requires_grad_()
    w = (torch.randn(cin, cout, kernel, kernel, device="cuda") / (cin * kernel) ** 0.5
         ).to(dtype).requires_grad_()
    b = torch.randn(cout, device="cuda", dtype=dtype, requires_grad=True)
    kw = {}
    if style:  # AdaIN: per (sample, channel), or per pixel too ("spatial", output size ho)
        shape = (n, cout) if style is True else (n, cout, style, style)
        kw["style_scale"] = (1 + 0.1 * torch.randn(shape, device="cuda")).to(dtype).requires_grad_()
        kw["style_shift"] = (0.1 * torch.randn(shape, device="cuda")).to(dtype).requires_grad_()
    return x, w, b, kw


BN_EVAL = dict(norm="batch", training=False)  # running statistics filled in by the check
# (N, Cin, Cout, H, norm options, AdaIN (False, True, or the output size for a spatial
#  one), (kernel, stride, padding, output_padding), act, x's layout, dtypes)
LOW = (torch.float32, torch.bfloat16)
ALL = (torch.float32, torch.bfloat16, torch.float16)
DECONV_CASES = [
    (2, 8, 16, 5, dict(num_groups=4), False, (4, 2, 1, 0), "leaky_relu", "nchw", ALL),
    (2, 8, 16, 5, dict(num_groups=4), False, (4, 2, 1, 0), "leaky_relu", "cl", LOW),
    (2, 8, 16, 5, dict(num_groups=4), False, (4, 2, 1, 0), "leaky_relu", "strided", LOW),
    (3, 32, 64, 8, dict(num_groups=32), True, (4, 2, 1, 0), "silu", "nchw", LOW),
    (3, 32, 64, 8, dict(norm="instance"), True, (4, 2, 1, 0), "relu", "cl", LOW),  # AdaIN
    (2, 16, 32, 5, dict(num_groups=8), 10, (4, 2, 1, 0), "silu", "nchw", LOW),  # spatial AdaIN
    (4, 16, 32, 6, dict(norm="batch"), False, (3, 2, 1, 1), "gelu", "nchw", LOW),  # VanillaVAE
    (4, 16, 32, 6, BN_EVAL, False, (3, 2, 1, 1), "gelu_tanh", "nchw", LOW),
    (8, 20, 32, 1, dict(norm="batch"), False, (4, 1, 0, 0), "relu", "nchw", LOW),  # DCGAN's 1st
    (2, 8, 3, 9, dict(norm="none"), False, (5, 3, 1, 2), "tanh", "nchw", LOW),  # odd phases
    (2, 12, 3, 7, dict(norm="none"), False, (2, 2, 0, 0), "sigmoid", "cl", LOW),
    # sizes past one tile / one block: many programs per sample and per group
    (8, 256, 128, 16, dict(num_groups=32), False, (4, 2, 1, 0), "silu", "nchw", LOW),
    (4, 128, 64, 32, dict(num_groups=32), True, (4, 2, 1, 0), "leaky_relu", "cl", LOW),
    (2, 64, 3, 33, dict(norm="none"), False, (4, 2, 1, 0), "tanh", "nchw", (torch.float32,)),
    (16, 512, 256, 4, dict(norm="batch"), False, (4, 2, 1, 0), "relu", "cl", LOW),
]


def check_deconv_block(backend) -> bool:
    import fastvae
    ok = True
    for (n, cin, cout, h, norm, style, (k, st, pad, opad), act, how, dtypes) in DECONV_CASES:
        opts = dict(norm, stride=st, padding=pad, output_padding=opad, activation=act)
        if norm is BN_EVAL:
            opts["running_mean"] = 0.3 * torch.randn(cout, device="cuda")
            opts["running_var"] = 0.5 + torch.rand(cout, device="cuda")
        for dtype in dtypes:
            x, w, b, kw = deconv_inputs(n, cin, cout, h, dtype, style, k, how)
            leaves = [x, w, b, *kw.values()]
            ho = (h - 1) * st - 2 * pad + k + opad
            g_y = torch.randn(n, cout, ho, ho, device="cuda", dtype=dtype)

            def run(ls, bk):
                poison_allocator()
                y = fastvae.deconv_block(ls[0], ls[1], ls[2], backend=bk, **opts,
                                         **dict(zip(kw, ls[3:])))
                return (y, *torch.autograd.grad(y, ls, g_y))
            outs = run(leaves, backend)
            low = run(leaves, "reference")
            l64 = [t.detach().double().requires_grad_() for t in leaves]
            opts64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
            y = fastvae.deconv_block(l64[0], l64[1], l64[2], backend="reference", **opts64,
                                     **dict(zip(kw, l64[3:])))
            refs = (y, *torch.autograd.grad(y, l64, g_y.double()))
            floor = 1e-4 if dtype == torch.float32 else 2e-2
            name = (f"deconv_block[{backend}] N{n} {cin}->{cout} {h}x{h} k{k}s{st}p{pad}op{opad} "
                    f"{norm.get('norm', 'group')} {act} {how} {str(dtype)[6:]}")
            ok &= check(name, outs, refs, low, floor)
            if outs[0].is_contiguous() != y.is_contiguous() and how != "strided":
                print(f"  FAIL {name}: y's memory format differs from the reference's")
                ok = False
    return ok


def check_auto_is_eager(device="cuda", layers=None) -> bool:
    """backend="auto" on CUDA runs deconv_block as the eager ops it replaces
    (fastvae/_eager_deconv.py): the same output as the nn modules bit for bit, gradients
    to cuDNN's run-to-run rounding, the same running statistics."""
    ok = True
    for (name, n, cin, cout, h, norm, act) in layers or MODEL_LAYERS:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            block = eager_layer(cin, cout, norm, act, device).to(dtype)
            fused = fused_layer(block, "auto")
            twin = eager_layer(cin, cout, norm, act, device).to(dtype)
            twin.load_state_dict(block.state_dict())
            x = torch.randn(n, cin, h, h, device=device, dtype=dtype)
            g_y = torch.randn(n, cout, 2 * h, 2 * h, device=device, dtype=dtype)
            y_eager = twin(x)
            grads_eager = torch.autograd.grad(y_eager, list(twin.parameters()), g_y)
            y_auto = fused(x)
            grads_auto = torch.autograd.grad(y_auto, list(block.parameters()), g_y)
            good = torch.equal(y_auto, y_eager) and all(
                torch.allclose(a, b, rtol=1e-2 if dtype != torch.float32 else 1e-4, atol=1e-3)
                for a, b in zip(grads_auto, grads_eager)) and all(
                torch.equal(a, b) for a, b in zip(block.buffers(), twin.buffers()))
            print(f"  {'ok  ' if good else 'FAIL'} deconv_block[auto] {name} {str(dtype)[6:]}: "
                  "the eager modules' output, gradients and buffers", flush=True)
            ok &= good
    return ok


# Calls of the raw native ops that must raise RuntimeError naming the argument, each in
# its own process: a crash (a signal) there is reported instead of ending the whole check.
ERROR_CALLS = {
    "cpu reparam_kl logvar shape": "fwd(r((2, 3), 'cpu'), r((2, 4), 'cpu'), None, seed)",
    "cuda reparam_kl logvar shape": "fwd(r((2, 3)), r((2, 4)), None, seed)",
    "cuda reparam_kl float64 mu": "fwd(r((2, 3)).double(), r((2, 3)).double(), None, seed)",
    "cuda deconv_block weight on cpu": "torch.ops.fastvae._deconv_block_fwd(r((1, 2, 3, 3)), "
                                       "r((2, 4, 4, 4), 'cpu'), None, None, None, "
                                       "[2, 2, 1, 1, 0, 0], 0, 'relu', 0.0, 1e-5)",
}
ERROR_PRELUDE = ("import torch, fastvae\n"
                 "fwd = torch.ops.fastvae._reparam_kl_fwd\n"
                 "seed = torch.tensor(0)\n"
                 "def r(shape, device='cuda'): return torch.randn(shape, device=device)\n"
                 "try:\n    {call}\nexcept RuntimeError as e:\n    print('raised:', str(e).splitlines()[0])\n"
                 "else:\n    print('DID NOT RAISE')\n")


def check_error_paths() -> bool:
    ok = True
    for name, call in ERROR_CALLS.items():
        proc = subprocess.run([sys.executable, "-c", ERROR_PRELUDE.format(call=call)], cwd=ROOT,
                              capture_output=True, text=True)
        out = (proc.stdout + proc.stderr).strip().splitlines()
        good = proc.returncode == 0 and bool(out) and out[-1].startswith("raised:")
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {name}: rc {proc.returncode}: "
              f"{out[-1] if out else '(no output)'}", flush=True)
    return ok


# ------------------------------------------------------------------------------- speed


def cuda_time(fn, warmup=5, reps=30) -> float:
    """Median seconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    """Measured device-to-device copy, bytes read + written per second (the bytes roofline)."""
    a = torch.empty(1 << 28, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / cuda_time(lambda: b.copy_(a))


def gemm_rate() -> float:
    """Measured bf16 GEMM FLOP/s on 8192^3 (the FLOP roofline)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / cuda_time(lambda: a @ a, reps=10)


class Budget:
    """torch.compile baselines only while compile time is left (each costs seconds)."""

    def __init__(self, seconds):
        self.deadline = time.time() + seconds

    def left(self):
        return time.time() < self.deadline


def report(tag, times, amount, unit, peak):
    """One line per impl: time, rate, fraction of the measured roofline, ratio to eager."""
    base = times.get("eager")
    for impl, t in times.items():
        rate = amount / t
        ratio = f"{base / t:6.2f}x eager" if base else ""
        print(f"  {tag:44s} {impl:9s} {1e3 * t:9.3f} ms {rate / 1e12 if unit == 'TFLOP/s' else rate / 1e9:8.1f} "
              f"{unit:7s} {rate / peak:6.1%} of roofline {ratio}", flush=True)


def eager_reparam(mu, logvar):
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar))
    return z, kl.flatten(1).sum(1)


def bench_reparam_kl(bw, budget, backends):
    import fastvae
    print(f"reparam_kl fwd+bwd (measured copy bandwidth {bw / 1e9:.0f} GB/s; bytes: mu, logvar, "
          "z forward; grad_z, mu, logvar, grad_mu, grad_logvar backward)")
    compiled = torch.compile(eager_reparam)
    for shape in [(256, 65536), (16, 4, 64, 64), (256, 512)]:
        for dtype in (torch.float32, torch.bfloat16):
            mu = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            lv = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            g_z, g_kl = torch.randn_like(mu), torch.randn(shape[0], device="cuda")
            impls = {"eager": eager_reparam}
            if budget.left():
                impls["compile"] = compiled
            for backend in backends:
                if available(backend, "reparam_kl"):
                    impls[backend] = (lambda b: lambda m, l: fastvae.reparam_kl(
                        m, l, seed=1, reduction="none", backend=b))(backend)
            times = {}
            for impl, f in impls.items():
                times[impl] = cuda_time(lambda: torch.autograd.grad(f(mu, lv), (mu, lv), (g_z, g_kl)))
            report(f"{tuple(shape)} {str(dtype)[6:]}", times, 8 * mu.numel() * mu.element_size(),
                   "GB/s", bw)


# Decoder layers of real models (name, N, Cin, Cout, H, norm module, activation module)
MODEL_LAYERS = [
    ("gn32 silu 256->128 @32 b16", 16, 256, 128, 32, "group", "silu"),
    ("gn32 silu 128->64 @64 b16", 16, 128, 64, 64, "group", "silu"),
    ("gn32 silu 512->256 @16 b16", 16, 512, 256, 16, "group", "silu"),
    ("dcgan 64->3 @32 b64", 64, 64, 3, 32, None, "tanh"),
    ("unet 1024->512 @2 b8 in", 8, 1024, 512, 2, "instance", "relu"),
    ("dcgan 512->256 @4 b64", 64, 512, 256, 4, "batch", "relu"),
    ("dcgan 128->64 @16 b64", 64, 128, 64, 16, "batch", "relu"),
]


def eager_layer(cin, cout, norm, act, device="cuda"):
    from torch import nn
    mods = [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
    if norm is not None:
        mods.append({"batch": nn.BatchNorm2d, "group": lambda c: nn.GroupNorm(32, c),
                     "instance": lambda c: nn.InstanceNorm2d(c, affine=True)}[norm](cout))
    mods.append({"relu": nn.ReLU(), "silu": nn.SiLU(), "tanh": nn.Tanh()}[act])
    return nn.Sequential(*mods).to(device)


def fused_layer(block, backend):
    """eager_layer's modules as one fastvae.nn.DeconvBlock (sharing their parameters)."""
    import fastvae
    if len(block) == 3:
        return fastvae.nn.DeconvBlock.from_modules(*block, backend=backend)
    return fastvae.nn.DeconvBlock.from_modules(block[0], None, block[1], backend=backend)


def bench_deconv_block(gemm, budget, backends):
    print(f"deconv_block fwd+bwd, bf16, 4x4 stride 2 (measured bf16 GEMM {gemm / 1e12:.0f} TFLOP/s; "
          "FLOPs: the transposed convolution's 2*N*H*W*Cin*Cout*16, x3 for fwd+bwd)")
    for (name, n, cin, cout, h, norm, act) in MODEL_LAYERS:
        for fmt in (torch.contiguous_format, torch.channels_last):
            block = eager_layer(cin, cout, norm, act).to(dtype=torch.bfloat16, memory_format=fmt)
            x = torch.randn(n, cin, h, h, device="cuda", dtype=torch.bfloat16).contiguous(
                memory_format=fmt).requires_grad_()
            g_y = torch.randn(n, cout, 2 * h, 2 * h, device="cuda", dtype=torch.bfloat16
                              ).contiguous(memory_format=fmt)
            impls = {"eager": block}
            if budget.left():
                impls["compile"] = torch.compile(block)
            for backend in backends:
                if available(backend, "deconv_block"):
                    impls[backend] = fused_layer(block, backend)
            times = {}
            for impl, f in impls.items():
                params = [x] + list(block.parameters())
                times[impl] = cuda_time(lambda: torch.autograd.grad(f(x), params, g_y))
            tag = f"{name} {'CL' if fmt is torch.channels_last else 'NCHW'}"
            report(tag, times, 3 * 2 * n * h * h * cin * cout * 16, "TFLOP/s", gemm)


def profile_deconv_block():
    """Where a fused layer's time goes on the GPU: torch.profiler over 5 fwd+bwd of eager and
    native on a small (launch-bound) and a large layer, channels_last bf16."""
    import fastvae
    from torch.profiler import ProfilerActivity, profile
    for (name, n, cin, cout, h, norm, act) in (MODEL_LAYERS[5], MODEL_LAYERS[0]):
        block = eager_layer(cin, cout, norm, act).to(dtype=torch.bfloat16,
                                                     memory_format=torch.channels_last)
        fused = fastvae.nn.DeconvBlock.from_modules(*block, backend="native")
        x = torch.randn(n, cin, h, h, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        g_y = torch.randn(n, cout, 2 * h, 2 * h, device="cuda", dtype=torch.bfloat16
                          ).contiguous(memory_format=torch.channels_last)
        params = [x] + list(block.parameters())
        for impl, f in (("eager", block), ("native", fused)):
            for _ in range(3):
                torch.autograd.grad(f(x), params, g_y)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    torch.autograd.grad(f(x), params, g_y)
                torch.cuda.synchronize()
            print(f"--- profile: {name} CL {impl}, 5 x fwd+bwd")
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=14,
                                            max_name_column_width=60))


def guarded(what, fn, *args) -> bool:
    """fn(*args), an exception reported as a failed check so the remaining checks still run."""
    try:
        return fn(*args)
    except Exception:
        print(f"FAIL {what} raised:\n{traceback.format_exc()}", flush=True)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--compile-budget", type=float, default=240,
                        help="seconds after which the torch.compile baselines are skipped")
    parser.add_argument("--backends", default="native,triton",
                        help="comma-separated backends to check against the reference")
    parser.add_argument("--ops", default="deconv_block,reparam_kl",
                        help="comma-separated ops to check and time")
    parser.add_argument("--bench-backends", default="native,triton,auto",
                        help="comma-separated backends to time beside eager and torch.compile")
    parser.add_argument("--profile", action="store_true",
                        help="after the speed table, torch.profiler tables of two layers")
    parser.add_argument("--error-paths", action="store_true",
                        help="first, the raw native ops' argument errors, one process each")
    parser.add_argument("--sanitize", action="store_true",
                        help="only the smallest native cases, for compute-sanitizer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this on a machine with a GPU, "
              "after `FORCE_CUDA=1 pip install --no-build-isolation -e .`)")
        return 0
    os.environ.pop("TRITON_INTERPRET", None)
    import fastvae
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(fastvae.backends(), flush=True)
    ops = args.ops.split(",")
    ok = True
    if args.sanitize:  # memcheck is slow: the first few cases of each op, native only
        global DECONV_CASES
        DECONV_CASES = [c[:9] + ((torch.float32,),) for c in DECONV_CASES[:10]]
        if "reparam_kl" in ops:
            ok &= guarded("reparam_kl", check_reparam_kl, "native")
        if "deconv_block" in ops:
            ok &= guarded("deconv_block", check_deconv_block, "native")
        print("sanitize run done" if ok else "SOME CORRECTNESS CHECKS FAILED")
        return 0 if ok else 1
    if args.error_paths:
        print("native ops' argument errors, one process each", flush=True)
        ok &= check_error_paths()
    for backend in args.backends.split(",") if args.backends else ():
        for op, checker in (("deconv_block", check_deconv_block), ("reparam_kl", check_reparam_kl)):
            if op not in ops:
                continue
            if backend == "auto" and op == "deconv_block":  # eager's own ops, see above
                print(f"{op} [auto] against the eager modules on CUDA", flush=True)
                ok &= guarded(f"{op} [auto]", check_auto_is_eager)
            elif available(backend, op):
                print(f"{op} [{backend}] against the reference on CUDA", flush=True)
                ok &= guarded(f"{op} [{backend}]", checker, backend)
            else:
                print(f"{op} [{backend}]: not available on CUDA")
    if not args.skip_pytest:  # last: the value checks above matter more when time is short
        ok &= run_pytest(args.error_paths)
    if not args.skip_bench:
        budget = Budget(args.compile_budget)
        backends = [b for b in args.bench_backends.split(",") if b]
        if "reparam_kl" in ops:
            guarded("bench reparam_kl", bench_reparam_kl, copy_bandwidth(), budget, backends)
        if "deconv_block" in ops:
            guarded("bench deconv_block", bench_deconv_block, gemm_rate(), budget, backends)
        if args.profile and "deconv_block" in ops:
            guarded("profile deconv_block", profile_deconv_block)
    print("all correctness checks passed" if ok else "SOME CORRECTNESS CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
