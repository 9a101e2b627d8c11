"""Runtime CPU dispatch of the native kernels (csrc/cpu/dispatch.cpp, cpu/capability.h).

The op tests run once per capability this CPU supports (conftest's every_cpu_capability);
these check what is the same across them, the FASTVAE_CPU_CAPABILITY errors, and that code
outside the AVX2/AVX-512 builds holds no instruction a baseline x86-64 CPU lacks.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

import fastvae
from fastvae.backends import CPU_CAPABILITIES, _unavailable_reason, cpu_capability, supported_cpu_capabilities

pytestmark = pytest.mark.skipif(_unavailable_reason("native", "reparam_kl", "cpu") is not None,
                                reason=str(_unavailable_reason("native", "reparam_kl", "cpu")))


def run_each_capability(monkeypatch, fn):
    """capability -> fn() run with that build of the kernels."""
    out = {}
    for cap in supported_cpu_capabilities():
        monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", cap)
        out[cap] = fn()
    return out


def test_noise_is_the_same_stream_on_every_capability(monkeypatch):
    # a 333-wide row: ten full 32-lane blocks in the SIMD Philox and a scalar tail
    mu, logvar = torch.zeros(5, 333), torch.zeros(5, 333)
    z = run_each_capability(monkeypatch, lambda: fastvae.reparam_kl(
        mu, logvar, seed=1234, reduction="none", backend="native")[0])
    want = fastvae.reparam_kl(mu, logvar, seed=1234, reduction="none", backend="reference")[0]
    for cap, got in z.items():  # the same integers; FMA contraction moves the last bits
        torch.testing.assert_close(got, z["default"], rtol=1e-6, atol=1e-6, msg=cap)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6, msg=cap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_deconv_block_agrees_across_capabilities(monkeypatch, dtype):
    x = torch.randn(2, 16, 5, 7, dtype=dtype, requires_grad=True)
    block = fastvae.nn.DeconvBlock(16, 8, norm="group", num_groups=4, activation="silu",
                                   backend="native").to(dtype)

    def fwd_bwd():
        y = block(x)
        return (y, *torch.autograd.grad(y.square().sum(), (x, block.weight)))

    outs = run_each_capability(monkeypatch, fwd_bwd)
    # FMA contraction and vector widths move the last bits of the epilogue, and a weight
    # gradient sums them over pixels: tolerances relative to the largest element
    rtol = {torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for cap, got in outs.items():
        for g, w in zip(got, outs["default"]):
            torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * w.abs().max().item(),
                                       msg=lambda m, cap=cap: f"{cap}: {m}")


def test_unknown_capability_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", "avx9000")
    with pytest.raises(RuntimeError, match="FASTVAE_CPU_CAPABILITY must be auto, default, avx2 or avx512"):
        fastvae.reparam_kl(torch.zeros(2, 3), torch.zeros(2, 3), seed=0, backend="native")


def test_capability_beyond_this_cpu_is_refused(monkeypatch):
    best = cpu_capability(supported=True)
    if best == CPU_CAPABILITIES[-1]:
        monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", "auto")
        assert cpu_capability() == best  # nothing to refuse here: auto takes the best
        return
    beyond = CPU_CAPABILITIES[CPU_CAPABILITIES.index(best) + 1]
    monkeypatch.setenv("FASTVAE_CPU_CAPABILITY", beyond)
    with pytest.raises(RuntimeError, match=f"FASTVAE_CPU_CAPABILITY={beyond}: this CPU"):
        fastvae.reparam_kl(torch.zeros(2, 3), torch.zeros(2, 3), seed=0, backend="native")


def test_auto_is_the_best_supported(monkeypatch):
    monkeypatch.delenv("FASTVAE_CPU_CAPABILITY", raising=False)
    assert cpu_capability() == supported_cpu_capabilities()[-1]


ISA_SYMBOL = re.compile(r"::AVX2::|::AVX512::|cpu4AVX2|cpu6AVX512|vec4AVX2|vec6AVX512")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils' objdump is not installed")
def test_baseline_code_has_no_avx_instructions():
    """Every function outside namespaces AVX2 / AVX512 (ours and ATen's Vectorized) runs on
    any x86-64 CPU: no ymm/zmm register and no VEX/EVEX-encoded (v-prefixed) instruction.
    This is what the link order in setup.py guarantees for the inline functions the
    capability builds share with the baseline ones. Local symbols (static functions and
    GCC's .constprop/.isra clones) are exempt: one is only called from its own translation
    unit, which holds VEX code only if it is a capability build."""
    so = glob.glob(os.path.join(os.path.dirname(fastvae.__file__), "_C*.so"))
    assert so, "fastvae._C is not built in place"
    symbols = subprocess.run(["nm", "-C", "--defined-only", so[0]], capture_output=True,
                             text=True, check=True).stdout
    local = {line[19:] for line in symbols.splitlines() if line[17:19] == "t "}
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so[0]],
                         capture_output=True, text=True, check=True).stdout
    func, offenders, isa_functions = None, {}, 0
    for line in asm.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            func = head.group(1)
            isa_functions += bool(ISA_SYMBOL.search(func))
            continue
        if func is None or "\t" not in line or ISA_SYMBOL.search(func) or func in local:
            continue
        instruction = line.split("\t", 1)[1]
        if re.search(r"%[yz]mm", instruction) or re.match(r"\s*v[a-z]", instruction):
            offenders.setdefault(func, instruction.strip())
    assert isa_functions > 0 or supported_cpu_capabilities() == ["default"]
    assert not offenders, f"{len(offenders)} baseline functions use AVX, e.g. {list(offenders.items())[:3]}"
