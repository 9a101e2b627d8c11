"""Compile every Triton kernel ahead of time for sm_80 and sm_90, without a GPU.

    python -m fastvae.kernels.compile_check [--arch 80 90] [--only reparam_kl deconv_block]

Runs each op's launchers on small CPU tensors (the bench shapes' divisibility, plus odd
shapes) for float32/float16/bfloat16 and every conv tile config of each architecture,
with the kernels swapped for recorders, so the launches checked are exactly the ones the
launchers make (same arguments, constexprs and Triton specializations: 16-byte alignment,
ints equal to 1). Each unique launch is compiled with `triton.compile` for each target,
its cubin read with the cuobjdump bundled in triton's wheel (registers, stack, shared
memory) and its PTX with the bundled `ptxas -v` (spill stores + loads, bytes), and a
table printed. Exit status 1 if any kernel fails to compile or spills.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # real compilation, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from fastvae.kernels import deconv_block, reparam_kl  # noqa: E402

ARCHS = (80, 90)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CUOBJDUMP = os.path.join(BIN, "cuobjdump")
PTXAS = os.path.join(BIN, "ptxas")


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kw)` records the call."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.calls.append((self.kernel, args, kwargs))
        return record


def _record(module, run):
    """Every (kernel, args, kwargs) launch `run()` makes through `module`'s kernels."""
    calls = []
    names = [n for n in vars(module) if n.startswith("_") and n.endswith("_kernel")]
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, _Recorder(saved[n], calls))
        run()
    finally:
        for n, k in saved.items():
            setattr(module, n, k)
    return calls


REPARAM_SHAPES = [(16, 4, 64, 64), (256, 512), (3, 37)]  # the bench shapes, then odd


def reparam_kl_launches():
    calls = []
    for dtype in DTYPES:
        for shape in REPARAM_SHAPES:
            mu = torch.zeros(shape, dtype=dtype)
            seed = torch.tensor(1, dtype=torch.int64)
            for eps in (None, mu):
                calls += _record(reparam_kl, lambda: reparam_kl.reparam_kl_fwd(mu, mu, eps, seed))
                calls += _record(reparam_kl, lambda: reparam_kl.reparam_kl_bwd(
                    mu, torch.zeros(shape[0]), mu, mu, eps, seed))
    return calls


K4S2P1_KERNEL = (4, 2, 1, 0)  # (kernel, stride, padding, output_padding)
# (x shape, Cout, groups, affine, activation, geometry): the bench layers' divisibility,
# the other geometries, BatchNorm (groups -1) and activations of real models, then odd.
DECONV_CASES = [
    ((2, 64, 16, 16), 32, 32, "spatial", "silu", K4S2P1_KERNEL),  # every elementwise feature on
    ((2, 64, 16, 16), 32, 8, "channel", "leaky_relu", K4S2P1_KERNEL),  # per-channel sums
    ((2, 64, 16, 16), 32, 0, None, "relu", K4S2P1_KERNEL),  # no statistics
    ((2, 64, 16, 16), 32, -1, "channel", "gelu", (3, 2, 1, 1)),  # VanillaVAE / CycleGAN
    ((4, 100, 1, 1), 64, -1, "channel", "relu", (4, 1, 0, 0)),  # DCGAN's first layer
    ((2, 32, 16, 16), 16, 8, None, "gelu_tanh", (2, 2, 0, 0)),
    ((2, 16, 32, 32), 3, 0, None, "tanh", K4S2P1_KERNEL),  # DCGAN's last layer
    ((1, 3, 5, 7), 6, 3, "sample", "sigmoid", (5, 3, 1, 2)),  # odd: no specialization
]


def deconv_block_launches(arch):
    calls = []
    for dtype in DTYPES:
        configs = deconv_block.conv_configs(arch, dtype)
        for i, (x_shape, cout, groups, affine, act, (k, st, pad, opad)) in enumerate(DECONV_CASES):
            n, cin, h, w = x_shape
            geometry = [st, st, pad, pad, opad, opad]
            out_shape = (n, cout, deconv_block.out_size(h, k, st, pad, opad),
                         deconv_block.out_size(w, k, st, pad, opad))
            x = torch.zeros(x_shape, dtype=dtype)
            weight = torch.zeros(cin, cout, k, k, dtype=dtype)
            bias = torch.zeros(cout, dtype=dtype)
            scale = shift = None
            if affine == "spatial":
                scale, shift = torch.zeros(out_shape, dtype=dtype), torch.zeros(out_shape, dtype=dtype)
            elif affine == "channel":
                scale = torch.zeros(1, cout, 1, 1, dtype=dtype)
            elif affine == "sample":
                shift = torch.zeros(n, cout, 1, 1, dtype=dtype)
            # every tile config for the first and the odd case; the others the first one
            for cfg in configs if i in (0, len(DECONV_CASES) - 1) else configs[:1]:
                deconv_block.conv_config, saved = (lambda *_, cfg=cfg: cfg), deconv_block.conv_config
                try:
                    calls += _record(deconv_block, lambda: deconv_block.deconv_block_fwd(
                        x, weight, bias, scale, shift, geometry, groups, act, 0.2, 1e-5))
                finally:
                    deconv_block.conv_config = saved
            stats = deconv_block._stats_shape(n, cout, groups)
            y, pre, mean, rstd = (torch.zeros(out_shape, dtype=dtype), torch.zeros(out_shape, dtype=dtype),
                                  torch.zeros(stats), torch.zeros(stats))
            calls += _record(deconv_block, lambda: deconv_block.deconv_block_bwd(
                y, x, weight, pre, mean, rstd, scale, shift, True, geometry, groups, act, 0.2,
                1e-5))
    return calls


def _unique(calls, target):
    """(kernel, ASTSource, options) per distinct compilation these calls need on target."""
    backend = make_backend(target)
    seen, out = set(), []
    for kernel, args, kwargs in calls:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, opts = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, dict(kwargs), bound, spec, opts)
        key = (kernel.__name__, str(signature), str(sorted(constexprs.items(), key=str)), str(attrs),
               options.num_warps, options.num_stages)
        if key not in seen:
            seen.add(key)
            out.append((kernel, ASTSource(kernel, signature, constexprs, attrs), options, constexprs))
    return out


def _resource_usage(cubin: bytes):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    usage = {}
    for line in text.splitlines():
        if "REG:" in line:
            for field in line.split():
                if ":" in field:
                    k, v = field.split(":", 1)
                    if v.isdigit():
                        usage[k] = int(v)
    return usage


def _spill_bytes(ptx: str, arch: int) -> int:
    """Spill stores + loads that ptxas reports for this PTX.

    cuobjdump's STACK alone cannot tell spills from a stack frame: tl.randn's cosine keeps
    libdevice's large-argument reduction (a local array, never taken for Box-Muller's
    angles in [0, 2pi)), which shows as STACK:32 with no spills.
    """
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        text = subprocess.run([PTXAS, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(d, "k.o")],
                              check=True, capture_output=True, text=True).stderr
    total = 0
    for line in text.splitlines():
        if "spill" in line:
            for part in line.split(","):
                words = part.split()
                if "spill" in part and words and words[0].isdigit():
                    total += int(words[0])
    return total


def _describe(constexprs, kernel):
    names = [p.name for p in kernel.params]
    parts = []
    for path, v in constexprs.items():
        name = names[path[0]]
        if name.isupper() and not name.startswith("BLOCK"):
            v = getattr(v, "name", v)
            parts.append(f"{name}={int(v) if isinstance(v, bool) else v}")
    return " ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--only", nargs="+", choices=("reparam_kl", "deconv_block"),
                        default=["reparam_kl", "deconv_block"])
    parser.add_argument("--dtype", nargs="+", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--cases", type=int, default=None,
                        help="check only the first N shape cases of each op (quick check)")
    args = parser.parse_args(argv)
    global DTYPES, DECONV_CASES, REPARAM_SHAPES
    if args.cases:
        DECONV_CASES, REPARAM_SHAPES = DECONV_CASES[:args.cases], REPARAM_SHAPES[:args.cases]
    if args.dtype:
        DTYPES = tuple({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[d]
                       for d in args.dtype)
    failures, rows = 0, []
    start = time.time()
    header = (f"{'sm':>3} {'kernel':<24} {'dtype':<5} {'warps':>5} {'stages':>6} {'tile':<10} "
              f"{'REG':>4} {'STACK':>5} {'SPILL':>5} {'SHARED':>7} {'ok':<4} flags")
    print(header)
    for arch in args.arch:
        target = GPUTarget("cuda", arch, 32)
        calls = []
        if "reparam_kl" in args.only:
            calls += reparam_kl_launches()
        if "deconv_block" in args.only:
            calls += deconv_block_launches(arch)
        for kernel, src, options, constexprs in _unique(calls, target):
            names = [p.name for p in kernel.params]
            ptr_types = [t for t in src.signature.values() if t.startswith("*")]
            dtype = ptr_types[0][1:] if ptr_types else "-"
            blocks = {names[p[0]]: v for p, v in constexprs.items() if names[p[0]].startswith("BLOCK")}
            tile = "x".join(str(v) for v in blocks.values())
            try:
                compiled = triton.compile(src, target=target, options=options.__dict__)
                usage = _resource_usage(compiled.asm["cubin"])
                spills = _spill_bytes(compiled.asm["ptx"], arch)
                ok = "SPILL" if spills else "ok"
                failures += bool(spills)
                row = (f"{arch:>3} {kernel.__name__:<24} {dtype:<5} {options.num_warps:>5} "
                       f"{options.num_stages:>6} {tile:<10} {usage.get('REG', -1):>4} "
                       f"{usage.get('STACK', -1):>5} {spills:>5} "
                       f"{compiled.metadata.shared:>7} {ok:<4} {_describe(constexprs, kernel)}")
            except Exception as e:  # a compile failure is a result to report, not a crash
                failures += 1
                row = f"{arch:>3} {kernel.__name__:<24} {dtype:<5} FAILED: {type(e).__name__}: {e}"
            print(row, flush=True)
            rows.append(row)
    print(f"{len(rows)} compilations, {failures} failed or spilled, {time.time() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
