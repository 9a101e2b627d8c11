"""Which implementation runs an op: names, availability and the `auto` rule.

`auto`: native if the extension has a kernel for the tensor's device, else triton on
CUDA, else reference. A backend named explicitly is used or refused, never swapped.
"""
import importlib
import importlib.util
import os
import platform
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import _native, reference

NAMES = ("auto", "reference", "native", "triton")
OPS = ("reparam_kl", "deconv_block")
DEVICE_TYPES = ("cpu", "cuda")


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _unavailable_reason(backend: str, op: str, device_type: str):
    """None when `backend` can run `op` on `device_type`, else why not and what to do."""
    if backend == "reference":
        return None
    if backend == "native":
        if _native.IMPORT_ERROR is not None:
            return (f"the extension fastvae._C did not load ({_native.IMPORT_ERROR}); "
                    "reinstall with `pip install --no-build-isolation -e .`")
        if _native.has_kernel(op, device_type):
            return None
        if device_type == "cuda":
            return ("fastvae._C was built without CUDA kernels; rebuild with FORCE_CUDA=1 "
                    "and the CUDA toolkit (see README)")
        return f"fastvae._C has no {device_type} kernel for {op}"
    # triton
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (`pip install triton`)"
    if device_type == "cpu" and not _triton_interpret():
        return "triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec(f"fastvae.kernels.{op}") is None:
        return f"no triton kernel for {op} yet"
    return None


# torch.compile runs these once while tracing and keeps the answer: the dispatcher and
# import-system look-ups behind them cannot be traced.
@torch.compiler.assume_constant_result
def _auto(op: str, device_type: str) -> str:
    if _unavailable_reason("native", op, device_type) is None:
        return "native"
    if device_type == "cuda" and _unavailable_reason("triton", op, device_type) is None:
        return "triton"
    return "reference"


@torch.compiler.assume_constant_result
def _unavailable_reason_traced(backend: str, op: str, device_type: str) -> str:
    return _unavailable_reason(backend, op, device_type) or ""


def resolve(backend: str, op: str, device: torch.device) -> str:
    """The concrete backend that runs `op` for tensors on `device`."""
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {backend!r}")
    if backend == "auto":
        return _auto(op, device.type)
    reason = _unavailable_reason_traced(backend, op, device.type)
    if reason:
        raise RuntimeError(f"backend {backend!r} cannot run {op} on {device.type}: {reason}")
    return backend


def implementation(backend: str):
    """The module holding `<op>_fwd` / `<op>_bwd` for a concrete backend."""
    if backend == "reference":
        return reference
    if backend == "native":
        return _native
    return _TritonOps()


class _TritonOps:
    """fastvae.kernels.<op>, imported on first use so `import fastvae` never loads triton."""

    def __getattr__(self, name):
        op = name.rsplit("_", 1)[0]  # reparam_kl_fwd -> reparam_kl
        return getattr(importlib.import_module(f"fastvae.kernels.{op}"), name)


@dataclass
class BackendStatus:
    backend: str
    device: str
    ops: dict = field(default_factory=dict)  # op -> None (available) or the reason it is not

    @property
    def available(self) -> bool:
        return all(reason is None for reason in self.ops.values())

    def __str__(self):
        lines = [f"{self.backend:<10} {self.device:<5}"]
        for op, reason in self.ops.items():
            lines.append(f"    {op:<13} {'yes' if reason is None else 'no: ' + reason}")
        return "\n".join(lines)


def backends() -> list:
    """Every (backend, device type) pair with, per op, None or why it cannot run."""
    return [BackendStatus(b, d, {op: _unavailable_reason(b, op, d) for op in OPS})
            for b in NAMES[1:] for d in DEVICE_TYPES]


VECTOR_FLAGS = ("sse4_2", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                "avx512_fp16", "amx_bf16")
CPU_CAPABILITIES = ("default", "avx2", "avx512")  # the native CPU kernel builds, lowest first


def cpu_capability(supported: bool = False) -> Optional[str]:
    """The native CPU kernels' capability the next call runs (FASTVAE_CPU_CAPABILITY or the
    best this CPU runs), or with supported=True the best this CPU runs; None without the
    extension."""
    if _unavailable_reason("native", "deconv_block", "cpu") is not None:
        return None
    return torch.ops.fastvae._cpu_capability(supported)


def supported_cpu_capabilities() -> list:
    """Every native CPU kernel build this CPU runs, lowest first (the tests run each)."""
    best = cpu_capability(supported=True)
    return [] if best is None else list(CPU_CAPABILITIES[:CPU_CAPABILITIES.index(best) + 1])


def cpu_description() -> str:
    """The CPU model, the vector instruction sets it has (from /proc/cpuinfo) and the native
    CPU kernels' capability in use: the line benchmarks and `fastvae info` print, as a ratio
    measured on one instruction set can flip on another."""
    model, flags, ids = platform.processor() or "unknown CPU", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("cpu family", "model"):  # "AMD EPYC" is Zen 4 or Zen 5
                    ids.setdefault(key.strip(), value.strip())
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    has = " ".join(f for f in VECTOR_FLAGS if f in flags) or "no SSE4.2"
    if "cpu family" in ids:
        model += f" (family {ids['cpu family']} model {ids.get('model', '?')})"
    try:
        capability = cpu_capability()
    except RuntimeError as e:  # a FASTVAE_CPU_CAPABILITY this CPU cannot run
        capability = f"invalid ({e})"
    else:
        if capability:  # the table of deconv_block's conv path rule (conv_plan_thresholds.h)
            try:
                table = torch.ops.fastvae._deconv_block_conv_plan_class()
                capability += f", conv path table {table}"
            except RuntimeError as e:  # a FASTVAE_CONV_TABLE that names no table
                capability += f", conv path table invalid ({e})"
    return (f"{model}, {os.cpu_count()} CPUs, {has}; native CPU kernels: {capability or 'not built'}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
