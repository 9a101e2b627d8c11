"""The native CPU deconv_block's conv paths (csrc/cpu/conv_plan.h): each against the
reference, and the `auto` rule taking every one of them somewhere."""
import itertools
from pathlib import Path

import pytest
import torch

import fastvae
from conftest import assert_close_to_reference, backend_params, norm_grad_rounding
from fastvae.reference import K4S2P1

pytestmark = [*(p.marks[0] for p in backend_params("deconv_block") if p.id == "native"),
              pytest.mark.usefixtures("every_cpu_capability")]  # each native CPU build

PATHS = ("nchw", "channels_last", "winograd", "winograd_forward", "winograd_backward", "gemm")
LAYOUTS = ("contiguous", "channels_last", "strided")


def plan(x, cout=8, geometry=K4S2P1, kernel=4):
    weight = torch.empty(x.shape[1], cout, kernel, kernel, dtype=x.dtype)
    return torch.ops.fastvae._deconv_block_conv_plan(x, weight, geometry)


def layout_of(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


@pytest.mark.parametrize("path", PATHS)
def test_forced_paths_are_named(path, monkeypatch):
    monkeypatch.setenv("FASTVAE_CONV_PATH", path)
    for layout in LAYOUTS:
        assert plan(layout_of(torch.randn(2, 6, 5, 3), layout)) == path
    # Winograd is for 4x4 stride-2 padding-1 float32/float64 blocks only
    expected = "channels_last" if path.startswith("winograd") else path
    assert plan(torch.randn(2, 6, 5, 3), kernel=3, geometry=[2, 2, 1, 1, 1, 1]) == expected


def test_unknown_forced_path_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTVAE_CONV_PATH", "fastest")
    with pytest.raises(RuntimeError, match="FASTVAE_CONV_PATH"):
        plan(torch.randn(2, 6, 5, 3))


TABLES = ("default", "amd_zen5")  # csrc/cpu/conv_plan_thresholds.h
NEVER = 2**40  # tools/conv_paths.py's threshold no layer reaches


def reachable_paths(table):
    """The paths a table's thresholds let auto take: both Winograd directions where neither
    channel minimum is NEVER, one alone where its thresholds are below the other's or the
    other's is NEVER."""
    reachable = {"nchw", "channels_last", "gemm"}
    for t in (table[1:7], table[7:13]):  # an NCHW x, a channels_last x
        fwd, bwd = t[0:2], t[2:4]
        if fwd[1] < NEVER and bwd[1] < NEVER:
            reachable.add("winograd")
        for alone, mine, other in (("winograd_forward", fwd, bwd), ("winograd_backward", bwd, fwd)):
            if mine[1] < NEVER and (other[1] >= NEVER or mine[0] < other[0] or mine[1] < other[1]):
                reachable.add(alone)
    return reachable


@pytest.mark.parametrize("table", TABLES)
def test_auto_takes_every_path(table, monkeypatch):
    """Over the layers of real decoders (bench/bench_shapes.py's range of sizes) the rule
    chooses, under each CPU class's table, each path that table can reach somewhere: one it
    never takes would be dead code or a wrong table. One Winograd direction alone is
    reachable only where its thresholds are below the other's (the fitted table may have the
    forward's at or below the backward's), both only where neither is NEVER."""
    monkeypatch.delenv("FASTVAE_CONV_PATH", raising=False)
    monkeypatch.setenv("FASTVAE_CONV_TABLE", table)
    assert torch.ops.fastvae._deconv_block_conv_plan_class() == table
    reachable = reachable_paths(torch.ops.fastvae._deconv_block_conv_plan_table())
    taken = set()
    for n, c, hw, fmt in itertools.product((1, 8, 64), (3, 64, 512), (1, 2, 4, 8, 16, 32, 64),
                                           (torch.contiguous_format, torch.channels_last)):
        x = torch.empty(n, c, hw, hw, memory_format=fmt)  # the rule reads sizes and layout
        taken.add(plan(x, cout=c))
        taken.add(plan(x, cout=c, kernel=3, geometry=[2, 2, 1, 1, 1, 1]))  # no Winograd
        if hw == 1:
            assert plan(x, cout=c) == "gemm"  # a 1x1 input: one product
    assert taken == reachable


def cpuinfo():
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo")
def test_the_cpu_class_picks_the_table(monkeypatch):
    """Without FASTVAE_CONV_TABLE the rule reads its CPU class's table: amd_zen5 on AMD from
    family 26 (Zen 5) with AVX-512, else default (csrc/cpu/conv_plan_thresholds.h); read here
    from /proc/cpuinfo, apart from the cpuid the extension reads."""
    monkeypatch.delenv("FASTVAE_CONV_TABLE", raising=False)
    info = cpuinfo()
    zen5 = (info.get("vendor_id") == "AuthenticAMD" and int(info.get("cpu family", 0)) >= 26
            and "avx512f" in info.get("flags", "").split())
    assert torch.ops.fastvae._deconv_block_conv_plan_class() == ("amd_zen5" if zen5 else "default")


def test_the_tables_differ_where_they_were_measured_to(monkeypatch):
    """DCGAN 512->256@4 b16 with a channels_last x (tools/conv_paths.py, fwd+bwd, norm none):
    Winograd on the family-25 EPYC (20.55 ms, oneDNN's NCHW convolution 20.37: a tie the fit
    resolved by its other layers), oneDNN's NCHW convolution on the family-26 one (12.24
    against Winograd's 14.53)."""
    monkeypatch.delenv("FASTVAE_CONV_PATH", raising=False)
    x = torch.empty(16, 512, 4, 4, memory_format=torch.channels_last)
    for table, path in (("default", "winograd"), ("amd_zen5", "nchw")):
        monkeypatch.setenv("FASTVAE_CONV_TABLE", table)
        assert plan(x, cout=256) == path


def test_unknown_table_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTVAE_CONV_TABLE", "fastest")
    with pytest.raises(RuntimeError, match="FASTVAE_CONV_TABLE"):
        plan(torch.randn(2, 6, 5, 3))


K3S2P1OP1 = [2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("n, cin, cout, hw, kernel, geometry, gemm", [
    (1, 1024, 512, 4, 4, K4S2P1, True),      # pix2pix 1024->512@4 b1: 2.5x oneDNN's NCHW
    (8, 1024, 512, 2, 4, K4S2P1, True),      # its 2x2 layer at b8: 2.2x
    (16, 512, 256, 2, 3, K3S2P1OP1, True),   # VanillaVAE's first layer at b16: 1.4x
    (64, 512, 256, 2, 3, K3S2P1OP1, False),  # ... at b64: 0.9x
    (16, 512, 256, 4, 4, K4S2P1, False),     # DCGAN 512->256@4 b16: 0.8x
    (8, 512, 256, 8, 4, K4S2P1, False),      # GN32 decoder 512->256@8 b8: 0.7x
])
def test_gemm_where_the_pixels_are_few_for_the_weight(n, cin, cout, hw, kernel, geometry, gemm,
                                                      monkeypatch):
    """auto's gemm rule (Cin >= Tg * N*H*W) on layers it was fitted to (tools/conv_paths.py;
    fwd+bwd of the gemm path against the best other path on the family-25 AVX-512 EPYC)."""
    monkeypatch.delenv("FASTVAE_CONV_PATH", raising=False)
    monkeypatch.setenv("FASTVAE_CONV_TABLE", "default")
    x = torch.empty(n, cin, hw, hw)
    assert (plan(x, cout=cout, geometry=geometry, kernel=kernel) == "gemm") == gemm


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_path_matches_the_reference(path, layout, dtype, monkeypatch):
    monkeypatch.setenv("FASTVAE_CONV_PATH", path)
    torch.manual_seed(torch.seed() % 2**31)  # fresh inputs each run
    x = layout_of(torch.randn(3, 7, 5, 6, dtype=torch.float64), layout)
    weight = torch.randn(7, 8, 4, 4, dtype=torch.float64) / 6
    bias = torch.randn(8, dtype=torch.float64)
    grad_y = torch.randn(3, 8, 10, 12, dtype=torch.float64)
    outs = {}
    for backend, dt in (("native", dtype), ("reference", dtype), ("reference", torch.float64)):
        leaves = [t.to(dt).requires_grad_() for t in (x, weight, bias)]
        y = fastvae.deconv_block(*leaves, num_groups=4, activation="silu", backend=backend)
        outs[backend, dt] = [y, *torch.autograd.grad(y, leaves, grad_y.to(dt))]
    tol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for name, got, ref in zip(("y", "grad_x", "grad_weight", "grad_bias"),
                              outs["native", dtype], outs["reference", torch.float64]):
        scale = ref.abs().max().item() + 1
        err = (got.double() - ref).abs().max().item()
        low = (outs["reference", dtype][("y", "grad_x", "grad_weight", "grad_bias").index(name)]
               .double() - ref).abs().max().item()
        assert err <= max(tol * scale, 2 * low), f"{path} {name}: error {err:.3g}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hw, kernel, geometry, norm, cout", [
    ((1, 1), 4, [1, 1, 0, 0, 0, 0], "batch", 8),     # DCGAN's first layer: one product
    ((1, 1), 2, [2, 2, 0, 0, 0, 0], "group", 8),     # one product
    ((1, 1), 4, [2, 2, 1, 1, 0, 0], "instance", 8),  # a U-Net's innermost: col2im crops
    ((1, 1), 5, [1, 2, 2, 1, 0, 0], "none", 8),      # a 1x3 output: its own padding per axis
    ((1, 1), 3, [2, 2, 1, 1, 1, 1], "group", 8),     # output_padding
    ((2, 2), 4, [2, 2, 1, 1, 0, 0], "instance", 8),  # the U-Net's next: col2im
    ((3, 5), 3, [2, 2, 1, 1, 1, 1], "batch", 8),
    ((4, 1), 4, [1, 2, 0, 1, 0, 0], "none", 8),
    # wide_gemm (AVX-512): 45 rows (3 blocks of 12 and 9), 27 columns (a vector + 11 masked)
    ((3, 5), 3, [2, 2, 1, 1, 1, 1], "none", 3),
])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
def test_gemm_path_matches_the_reference(hw, kernel, geometry, norm, cout, dtype, layout,
                                         weight_layout, monkeypatch):
    """The gemm path on small maps, values and every gradient, against the reference; a
    channels_last weight (taken without a copy on 1x1 maps) gives a channels_last output and
    grad_weight, as eager's convolution does."""
    if hw != (1, 1):  # auto takes it on every 1x1 map, on larger ones with many channels
        monkeypatch.setenv("FASTVAE_CONV_PATH", "gemm")
    assert plan(torch.empty(3, 7, *hw), kernel=kernel, geometry=geometry) == "gemm"
    torch.manual_seed(torch.seed() % 2**31)
    x = layout_of(torch.randn(3, 7, *hw, dtype=torch.float64), layout)
    weight = layout_of(torch.randn(7, cout, kernel, kernel, dtype=torch.float64) / 3,
                       weight_layout)
    bias = torch.randn(cout, dtype=torch.float64)
    ho, wo = ((hw[d] - 1) * geometry[d] - 2 * geometry[2 + d] + kernel + geometry[4 + d]
              for d in (0, 1))
    grad_y = torch.randn(3, cout, ho, wo, dtype=torch.float64)
    outs = {}
    for backend, dt in (("native", dtype), ("reference", dtype), ("reference", torch.float64)):
        leaves = [t.to(dt).requires_grad_() for t in (x, weight, bias)]
        y = fastvae.deconv_block(*leaves, stride=geometry[:2], padding=geometry[2:4],
                                 output_padding=geometry[4:], norm=norm, num_groups=4, activation="silu",
                                 backend=backend)
        outs[backend, dt] = [y, *torch.autograd.grad(y, leaves, grad_y.to(dt))]
    y, _, grad_weight, _ = outs["native", dtype]
    assert grad_weight.stride() == weight.stride()
    if weight_layout == "channels_last" and kernel > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    floors = {} if norm == "none" else norm_grad_rounding(  # where the norm's backward cancels
        x, weight, bias, geometry, grad_y, norm=norm, num_groups=4, activation="silu")
    for name, got, low, high in zip(("y", "grad_x", "grad_weight", "grad_bias"),
                                    outs["native", dtype], outs["reference", dtype],
                                    outs["reference", torch.float64]):
        assert_close_to_reference(got, low, high, dtype, name, floors.get(name, 0.0))
