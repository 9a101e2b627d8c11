"""One command for the day a GPU is at hand: correctness on CUDA, then speed against the roofline.

    FORCE_CUDA=1 pip install --no-build-isolation -e . && python bench/gpu_check.py

1. Correctness: the native test file on CUDA (FASTVAE_TEST_DEVICE=cuda), then every
   available backend of both ops (native, triton) against fastvae.reference on CUDA
   tensors: values and gradients with random upstream gradients, several dtypes, odd sizes.
2. Speed: forward, backward and forward+backward of each backend, CUDA-event timed
   (median), with achieved GB/s (reparam_kl: bytes that must move) or TFLOP/s
   (deconv_block: the transposed convolution's 2*N*H*W*Cin*Cout*16 per pass, backward
   counted as two passes) and the fraction of the device's roofline.
Options: --skip-pytest, --skip-bench. Exits 1 if a correctness check failed.
"""
import argparse
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (memory bandwidth TB/s, dense bf16 TFLOP/s) by device name; others print no fraction.
ROOFLINES = {"H100": (3.35, 989.0), "H200": (4.8, 989.0), "A100": (2.0, 312.0)}
BACKENDS = ("reference", "native", "triton")


def roofline():
    name = torch.cuda.get_device_name()
    for key, value in ROOFLINES.items():
        if key in name:
            return name, value
    return name, (None, None)


def available(backend, op):
    from fastvae.backends import _unavailable_reason
    return _unavailable_reason(backend, op, "cuda") is None


# ------------------------------------------------------------------------- correctness


def run_pytest() -> bool:
    env = dict(os.environ, FASTVAE_TEST_DEVICE="cuda")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "tests/test_reparam_kl_native.py"]
    print("$ FASTVAE_TEST_DEVICE=cuda " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


def max_rel_err(out, ref):
    ref = ref.float()
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def check(name, outs, refs, refs_low, tol_floor):
    """Each output's error against the float32 reference within 2x plain PyTorch's + floor."""
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
    for shape in [(3, 37), (64, 4099), (16, 4, 8, 8)]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            mu = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            lv = (0.5 * torch.randn(shape, device="cuda")).to(dtype).requires_grad_()
            g_z = torch.randn(shape, device="cuda", dtype=dtype)
            g_kl = torch.randn(shape[0], device="cuda")

            def run(m, l, b):
                z, kl = fastvae.reparam_kl(m, l, seed=1234, reduction="none", backend=b)
                return (z, kl, *torch.autograd.grad((z, kl), (m, l), (g_z, g_kl)))
            outs = run(mu, lv, backend)
            low = run(mu, lv, "reference")
            m32 = mu.detach().float().requires_grad_()
            l32 = lv.detach().float().requires_grad_()
            z, kl = fastvae.reparam_kl(m32, l32, seed=1234, reduction="none", backend="reference")
            refs = (z, kl, *torch.autograd.grad((z, kl), (m32, l32), (g_z.float(), g_kl)))
            floor = 1e-5 if dtype == torch.float32 else 1e-2
            ok &= check(f"reparam_kl[{backend}] {tuple(shape)} {dtype}", outs, refs, low, floor)
    return ok


def deconv_inputs(n, cin, cout, h, dtype, style, kernel=4):
    x = torch.randn(n, cin, h, h, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(cin, cout, kernel, kernel, device="cuda") / (cin * kernel) ** 0.5
         ).to(dtype).requires_grad_()
    b = torch.randn(cout, device="cuda", dtype=dtype, requires_grad=True)
    kw = {}
    if style:
        kw["style_scale"] = (1 + 0.1 * torch.randn(n, cout, device="cuda")).to(dtype).requires_grad_()
        kw["style_shift"] = (0.1 * torch.randn(n, cout, device="cuda")).to(dtype).requires_grad_()
    return x, w, b, kw


def check_deconv_block(backend) -> bool:
    import fastvae
    ok = True
    # (N, Cin, Cout, H, norm options, AdaIN, (kernel, stride, padding, output_padding), act)
    cases = [(2, 8, 16, 5, dict(num_groups=4), False, (4, 2, 1, 0), "leaky_relu"),
             (3, 32, 64, 8, dict(num_groups=32), True, (4, 2, 1, 0), "silu"),
             (4, 16, 32, 6, dict(norm="batch"), False, (3, 2, 1, 1), "gelu"),  # VanillaVAE
             (8, 20, 32, 1, dict(norm="batch"), False, (4, 1, 0, 0), "relu"),  # DCGAN's first
             (2, 8, 3, 9, dict(norm="none"), False, (5, 3, 1, 2), "tanh")]  # odd phases
    for (n, cin, cout, h, norm, style, (k, st, pad, opad), act) in cases:
        opts = dict(norm, stride=st, padding=pad, output_padding=opad, activation=act)
        for dtype in (torch.float32, torch.bfloat16):
            x, w, b, kw = deconv_inputs(n, cin, cout, h, dtype, style, k)
            leaves = [x, w, b, *kw.values()]
            ho = (h - 1) * st - 2 * pad + k + opad
            g_y = torch.randn(n, cout, ho, ho, device="cuda", dtype=dtype)

            def run(ls, bk):
                y = fastvae.deconv_block(ls[0], ls[1], ls[2], backend=bk, **opts,
                                         **dict(zip(kw, ls[3:])))
                return (y, *torch.autograd.grad(y, ls, g_y))
            outs = run(leaves, backend)
            low = run(leaves, "reference")
            l32 = [t.detach().float().requires_grad_() for t in leaves]
            y = fastvae.deconv_block(l32[0], l32[1], l32[2], backend="reference", **opts,
                                     **dict(zip(kw, l32[3:])))
            refs = (y, *torch.autograd.grad(y, l32, g_y.float()))
            floor = 1e-4 if dtype == torch.float32 else 2e-2
            ok &= check(f"deconv_block[{backend}] N{n} {cin}->{cout} {h}x{h} k{k}s{st}p{pad}op{opad} "
                        f"{norm} {act} {dtype}", outs, refs, low, floor)
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


def row(what, seconds, amount, unit, peak):
    rate = amount / seconds / 1e12 if unit == "TFLOP/s" else amount / seconds / 1e9
    frac = "" if peak is None else f"{rate / (peak * (1 if unit == 'TFLOP/s' else 1e3)):7.1%}"
    print(f"  {what:52s} {1e3 * seconds:9.3f} ms {rate:9.1f} {unit:8s} {frac}")


def bench_reparam_kl(bw_peak):
    import fastvae
    print("reparam_kl (eps drawn in the kernel; eager reference draws it with Philox ops)")
    for shape in [(256, 65536), (256, 512)]:
        for dtype in (torch.float32, torch.bfloat16):
            mu = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            lv = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
            g_z, g_kl = torch.randn_like(mu), torch.randn(shape[0], device="cuda")
            size = mu.numel() * mu.element_size()
            for backend in BACKENDS:
                if not available(backend, "reparam_kl"):
                    continue
                f = lambda: fastvae.reparam_kl(mu, lv, seed=1, reduction="none", backend=backend)  # noqa: E731
                z, kl = f()
                b = lambda: torch.autograd.grad((z, kl), (mu, lv), (g_z, g_kl), retain_graph=True)  # noqa: E731
                fb = lambda: torch.autograd.grad(f(), (mu, lv), (g_z, g_kl))  # noqa: E731
                tag = f"{backend:9s} {tuple(shape)} {str(dtype)[6:]}"
                row(f"{tag} fwd", cuda_time(f), 3 * size, "GB/s", bw_peak)
                row(f"{tag} bwd", cuda_time(b), 5 * size, "GB/s", bw_peak)
                row(f"{tag} fwd+bwd", cuda_time(fb), 8 * size, "GB/s", bw_peak)


def bench_deconv_block(flop_peak):
    import fastvae
    print("deconv_block (GroupNorm 32 + AdaIN + leaky_relu, bf16)")
    for (n, cin, cout, h) in [(16, 512, 256, 16), (16, 256, 128, 32), (16, 128, 64, 64)]:
        x, w, b, kw = deconv_inputs(n, cin, cout, h, torch.bfloat16, True)
        leaves = [x, w, b, *kw.values()]
        g_y = torch.randn(n, cout, 2 * h, 2 * h, device="cuda", dtype=torch.bfloat16)
        flops = 2 * n * h * h * cin * cout * 16
        for backend in BACKENDS:
            if not available(backend, "deconv_block"):
                continue
            f = lambda: fastvae.deconv_block(x, w, b, backend=backend, **kw)  # noqa: E731
            y = f()
            bw = lambda: torch.autograd.grad(y, leaves, g_y, retain_graph=True)  # noqa: E731
            fb = lambda: torch.autograd.grad(f(), leaves, g_y)  # noqa: E731
            tag = f"{backend:9s} N{n} {cin}->{cout} {h}x{h}"
            row(f"{tag} fwd", cuda_time(f), flops, "TFLOP/s", flop_peak)
            row(f"{tag} bwd", cuda_time(bw), 2 * flops, "TFLOP/s", flop_peak)
            row(f"{tag} fwd+bwd", cuda_time(fb), 3 * flops, "TFLOP/s", flop_peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this on a machine with a GPU, "
              "after `FORCE_CUDA=1 pip install --no-build-isolation -e .`)")
        return 0
    os.environ.pop("TRITON_INTERPRET", None)
    import fastvae
    name, (bw_peak, flop_peak) = roofline()
    print(f"device: {name}; roofline: {bw_peak or '?'} TB/s, {flop_peak or '?'} bf16 TFLOP/s")
    print(fastvae.backends())
    ok = True
    if not args.skip_pytest:
        ok &= run_pytest()
    for backend in ("native", "triton"):
        for op, checker in (("reparam_kl", check_reparam_kl), ("deconv_block", check_deconv_block)):
            if available(backend, op):
                print(f"{op} [{backend}] against the reference on CUDA")
                ok &= checker(backend)
            else:
                print(f"{op} [{backend}]: not available on CUDA")
    if not args.skip_bench:
        bench_reparam_kl(bw_peak)
        bench_deconv_block(flop_peak)
    print("all correctness checks passed" if ok else "SOME CORRECTNESS CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
