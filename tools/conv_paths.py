"""Measures deconv_block's native conv paths over real decoder layers and writes the rule.

    .venv/bin/python tools/conv_paths.py [--rounds 7] [--write]
    .venv/bin/python tools/conv_paths.py --small-maps [--rounds 7]

For every layer of bench/bench_shapes.py off the gemm path and both layouts of x, times one
native forward + backward under each path of csrc/cpu/conv_plan.h it can take
(FASTVAE_CONV_PATH = nchw, channels_last, and for the 4x4 stride-2 layers winograd,
winograd_forward, winograd_backward), interleaved, least of --rounds. The rule `auto`
follows: the forward by Winograd where x holds at least Tf pixels (N*H*W) per input channel
and both channel counts are at least Tmf, the backward likewise with (Tb, Tmb), the other
direction in channels_last; with no Winograd (or another geometry), channels_last where x
holds at least Tc pixels (N*H*W) and the fewer of Cin, Cout is at least Tcm, else NCHW.
(Tf, Tmf, Tb, Tmb, Tc, Tcm) is chosen per layout of x, from the measured pixel and channel
counts, to minimise the summed slowdown of auto's choice against the best path over the
layers. --write puts them and the table they came from into csrc/cpu/conv_plan_table.h
(rebuild the extension after). The norm and activation are left out (norm "none"): they
run the same fused epilogue whatever the conv path.

--small-maps times the gemm path against the others on the layers of the sweep with inputs
of 1x1 to 8x8 (DCGAN's first two, the U-Net's innermost, the GN decoder's first): auto takes
gemm on 1x1 inputs and on maps of at most 4 pixels a sample and 512 in all
(kGemmMaxPlane, kGemmMaxPixels in csrc/cpu/conv_plan.cpp), so it prints the ratios that
rule rests on, and the price of oneDNN's bias on a stride-1 transposed
convolution (which the native op adds itself, after the convolution, in NCHW).
"""
import argparse
import itertools
import datetime
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fastvae  # noqa: E402
from bench_shapes import LAYERS  # noqa: E402
from fastvae.backends import cpu_description  # noqa: E402
from roofline import interleaved_seconds  # noqa: E402

PATHS = ("nchw", "channels_last", "winograd", "winograd_forward", "winograd_backward")
TABLE = ROOT / "csrc" / "cpu" / "conv_plan_table.h"


def runner(layer, fmt, path):
    torch.manual_seed(0)
    x = torch.randn(layer.n, layer.cin, layer.h, layer.h).contiguous(memory_format=fmt)
    x.requires_grad_()
    weight = torch.randn(layer.cin, layer.cout, layer.kernel, layer.kernel, requires_grad=True)
    bias = torch.randn(layer.cout, requires_grad=True)
    grad_y = torch.randn(layer.n, layer.cout, layer.out_size, layer.out_size)
    grad_y = grad_y.contiguous(memory_format=fmt)

    def run():
        os.environ["FASTVAE_CONV_PATH"] = path
        y = fastvae.deconv_block(x, weight, bias, stride=layer.stride, padding=layer.padding,
                                 output_padding=layer.output_padding, norm="none",
                                 activation="none", backend="native")
        torch.autograd.grad(y, (x, weight, bias), grad_y)
    return run


def auto_path(layer):
    """The path `auto` takes for an NCHW x of this layer (the rule in csrc/cpu/conv_plan.cpp)."""
    forced = os.environ.pop("FASTVAE_CONV_PATH", None)
    x = torch.empty(layer.n, layer.cin, layer.h, layer.h)
    weight = torch.empty(layer.cin, layer.cout, layer.kernel, layer.kernel)
    geometry = [layer.stride] * 2 + [layer.padding] * 2 + [layer.output_padding] * 2
    path = torch.ops.fastvae._deconv_block_conv_plan(x, weight, geometry)
    if forced is not None:
        os.environ["FASTVAE_CONV_PATH"] = forced
    return path


def small_maps(rounds):
    """gemm against nchw and channels_last on 1x1-8x8 inputs; oneDNN's stride-1 bias."""
    worst = float("inf")
    for layer in LAYERS.values():
        if layer.h > 8:
            continue
        times = interleaved_seconds(
            {p: runner(layer, torch.contiguous_format, p) for p in ("gemm", "nchw", "channels_last")},
            rounds)
        t = {p: min(v) for p, v in times.items()}
        ratio = min(t["nchw"], t["channels_last"]) / t["gemm"]
        if auto_path(layer) == "gemm":
            worst = min(worst, ratio)
        print(f"{layer.name:34s} " + "  ".join(f"{p}={1e3 * v:8.2f} ms" for p, v in t.items())
              + f"  best other / gemm {ratio:.2f}x", flush=True)
        if layer.stride == 1:
            x = torch.randn(layer.n, layer.cin, 1, 1)
            w = torch.randn(layer.cin, layer.cout, layer.kernel, layer.kernel)
            b = torch.randn(layer.cout)
            conv = torch.nn.functional.conv_transpose2d
            times = interleaved_seconds({
                "with bias": lambda: conv(x, w, b, 1, layer.padding),
                "bias after": lambda: conv(x, w, None, 1, layer.padding).add_(b.view(1, -1, 1, 1)),
            }, rounds)
            print(f"{'':34s} oneDNN forward " + "  ".join(
                f"{k}={1e3 * min(v):.3f} ms" for k, v in times.items()), flush=True)
    os.environ.pop("FASTVAE_CONV_PATH", None)
    print(f"gemm's worst speedup over the best other path where auto takes it: {worst:.2f}x")


def measure(rounds):
    """[(layer, layout, {path: seconds})] for every layer off the gemm path, per layout."""
    rows = []
    for layer in LAYERS.values():
        if auto_path(layer) == "gemm":
            continue  # a small map on the gemm path
        paths = PATHS if layer.winograd_geometry else PATHS[:2]
        for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            times = interleaved_seconds({p: runner(layer, fmt, p) for p in paths}, rounds)
            rows.append((layer, layout, {p: min(t) for p, t in times.items()}))
            print(f"{layer.name:34s} {layout:4s} " + "  ".join(
                f"{p}={1e3 * t:8.2f} ms" for p, t in rows[-1][2].items()), flush=True)
    os.environ.pop("FASTVAE_CONV_PATH", None)
    return rows


def pixels(layer):
    return layer.n * layer.h * layer.h


def per_cin(layer):
    """Pixels (N*H*W) per input channel, as csrc/cpu/conv_plan.cpp computes them."""
    return pixels(layer) // layer.cin


def channels(layer):
    return min(layer.cin, layer.cout)


def choice(layer, thresholds):
    """auto's path for `layer` under (Tf, Tmf, Tb, Tmb, Tc, Tcm), as csrc/cpu/conv_plan.cpp
    decides."""
    tf, tmf, tb, tmb, tc, tcm = thresholds
    ok = layer.winograd_geometry
    fwd = ok and per_cin(layer) >= tf and channels(layer) >= tmf
    bwd = ok and per_cin(layer) >= tb and channels(layer) >= tmb
    if fwd or bwd:
        return "winograd" if fwd and bwd else "winograd_forward" if fwd else "winograd_backward"
    return "channels_last" if pixels(layer) >= tc and channels(layer) >= tcm else "nchw"


def best_thresholds(rows):
    """The (Tf, Tmf, Tb, Tmb, Tc, Tcm) minimising the summed slowdown (auto's choice / the
    best path) over the rows; ties go to the first in the grid's order (the smallest
    thresholds). The rows' slowdowns are summed as matrix products: for each Winograd
    setting (Tf, Tmf, Tb, Tmb), the rows it sends to Winograd plus, for each (Tc, Tcc), the
    others' NCHW or channels_last time (Tc, Tcm)."""
    never = 2**62
    layers = [layer for layer, _, _ in rows]

    def candidates(feature, last=never):
        return sorted({feature(layer) for layer in layers}) + [last]
    slow = [{p: v / min(t.values()) for p, v in t.items()} for _, _, t in rows]
    winograd = list(itertools.product(candidates(per_cin), candidates(channels),
                                      candidates(per_cin), candidates(channels)))
    layout = list(itertools.product(candidates(pixels), candidates(channels)))
    w_cost = np.zeros(len(winograd))  # rows sent to Winograd, per Winograd setting
    w_rest = np.zeros((len(winograd), len(rows)))  # 1 where a row is left to the layout rule
    for i, w in enumerate(winograd):
        for j, layer in enumerate(layers):
            path = choice(layer, w + (never, never))
            if path.startswith("winograd"):
                w_cost[i] += slow[j][path]
            else:
                w_rest[i, j] = 1
    l_cost = np.array([[slow[j][choice(layer, (never,) * 4 + c)] for j, layer in enumerate(layers)]
                       for c in layout])  # (layout settings, rows)
    cost = w_cost[:, None] + w_rest @ l_cost.T
    i, k = np.unravel_index(np.argmin(cost), cost.shape)
    return winograd[i] + layout[k]


def table_header(rows, thresholds, rounds):
    lines = [
        "// Generated by tools/conv_paths.py: the thresholds of csrc/cpu/conv_plan.h's rule and",
        "// the measurements they were chosen from. Do not edit; rerun the tool.",
        f"// {datetime.date.today()}, {cpu_description()}",
        f"// native fwd+bwd ms, norm none, least of {rounds} interleaved rounds; * = auto's choice",
        "//   layer                             x    px/cin    nchw channels_last winograd  w_fwd  w_bwd",
    ]
    for row in rows:
        layer, layout, t = row
        chosen = choice(layer, thresholds[layout])
        cells = [f"{1e3 * t[p]:7.2f}{'*' if p == chosen else ' '}" if p in t else f"{'-':>7s} "
                 for p in PATHS]
        lines.append(f"//   {layer.name:33s} {layout:4s} {per_cin(layer):7d} " + " ".join(cells))
    lines += [
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace fastvae {",
        "namespace cpu {",
        "namespace plan_table {",
        "",
        "// The Winograd forward where N*H*W of x is at least forward_min_pixels_per_cin times Cin",
        "// and Cin and Cout at least forward_min_channels, the Winograd backward likewise;",
        "// channels_last for the other direction. Without Winograd (or on another geometry),",
        "// both convolutions in channels_last where N*H*W is at least channels_last_min_pixels",
        "// and the fewer of Cin and Cout at least channels_last_min_channels; else NCHW.",
        "struct Thresholds {",
        "  int64_t forward_min_pixels_per_cin;",
        "  int64_t forward_min_channels;",
        "  int64_t backward_min_pixels_per_cin;",
        "  int64_t backward_min_channels;",
        "  int64_t channels_last_min_pixels;",
        "  int64_t channels_last_min_channels;",
        "};",
        "constexpr Thresholds kNchwInput{%d, %d, %d, %d, %d, %d};" % thresholds["nchw"],
        "constexpr Thresholds kChannelsLastInput{%d, %d, %d, %d, %d, %d};" % thresholds["cl"],
        "",
        "}  // namespace plan_table",
        "}  // namespace cpu",
        "}  // namespace fastvae",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help=f"write {TABLE.relative_to(ROOT)}")
    parser.add_argument("--small-maps", action="store_true",
                        help="time the gemm path on the 1x1-8x8 inputs instead")
    args = parser.parse_args()
    print(cpu_description())
    if args.small_maps:
        small_maps(args.rounds)
        return
    rows = measure(args.rounds)
    thresholds = {layout: best_thresholds([r for r in rows if r[1] == layout])
                  for layout in ("nchw", "cl")}
    for layout, th in thresholds.items():
        sel = [r for r in rows if r[1] == layout]
        worst = max(t[choice(layer, th)] / min(t.values()) for layer, _, t in sel)
        print(f"x {layout}: Winograd forward from {th[0]} pixels (N*H*W) per Cin and {th[1]} channels, "
              f"backward from {th[2]} and {th[3]}, else channels_last from {th[4]} pixels "
              f"(N*H*W) and {th[5]} channels; "
              f"auto's worst slowdown against the best path {worst:.2f}x")
    text = table_header(rows, thresholds, args.rounds)
    if args.write:
        TABLE.write_text(text)
        print(f"wrote {TABLE}")
    else:
        print(text)


if __name__ == "__main__":
    main()
