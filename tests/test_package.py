"""Packaging and backend selection: imports need no hardware, backends say why not."""
import subprocess
import sys

import pytest
import torch

import fastvae
from fastvae.backends import OPS, _unavailable_reason, resolve


def test_kernels_ship_inside_the_package_not_top_level(tmp_path):
    code = ("import importlib.util, fastvae.kernels; "
            "print(fastvae.kernels.__name__, importlib.util.find_spec('kernels') is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)  # away from the source tree's kernels/
    assert out.stdout.split() == ["fastvae.kernels", "True"]


def test_import_does_not_load_the_triton_kernels():
    """(torch itself may import triton; our kernels load on first use of the backend.)"""
    code = "import sys, fastvae; print(any(m.startswith('fastvae.kernels') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backends_report_every_pair_with_reasons():
    rows = fastvae.backends()
    assert {(r.backend, r.device) for r in rows} == {
        (b, d) for b in ("reference", "native", "triton") for d in ("cpu", "cuda")}
    for row in rows:
        assert set(row.ops) == {"reparam_kl", "deconv_block"}
        for reason in row.ops.values():
            assert reason is None or (isinstance(reason, str) and reason)
    assert all(r.available for r in rows if r.backend == "reference")


def test_auto_prefers_native_then_reference_on_cpu():
    for op in OPS:
        expected = "native" if _unavailable_reason("native", op, "cpu") is None else "reference"
        assert resolve("auto", op, torch.device("cpu")) == expected


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "fastvae", "info"], capture_output=True,
                         text=True, check=True)
    assert "backends" in out.stdout and "reference" in out.stdout
    assert "backend='auto' runs" in out.stdout


def test_cli_info_says_auto_runs_eager_ops_for_deconv_block_on_cuda(monkeypatch):
    from fastvae.cli import auto_choice
    # as on a machine with every backend built (fastvae.backends is the function there)
    monkeypatch.setattr(sys.modules["fastvae.backends"], "resolve", lambda *args: "native")
    assert auto_choice("deconv_block", "cuda").startswith("eager PyTorch ops (native's")
    assert auto_choice("deconv_block", "cpu") == "native"
    assert auto_choice("reparam_kl", "cuda") == "native"
