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
layers, among the settings under which no layer runs more than 3% (NOISE) slower than
eager's own convolution (oneDNN's, in x's layout): the block is never slower than eager.
--write puts them and the table they came from into csrc/cpu/conv_plan_table_<class>.h, the
table of this CPU's class (csrc/cpu/conv_plan_thresholds.h; FASTVAE_CONV_TABLE names another:
rebuild the extension after). The norm and activation are left out (norm "none"): they
run the same fused epilogue whatever the conv path.

The gemm path first: on every layer of the sweep with a 2x2 to 8x8 input (an NCHW x), gemm
against the other paths; auto takes gemm on 1x1 inputs and where Cin >= Tg * N*H*W (oneDNN's
cost on a small map is mostly per-call work on the weight, so it is the pixels per input
channel that decide), Tg minimising the summed slowdown over those layers with the best of
the other paths standing in for the rest of the rule. The layers gemm then takes are left
out of the fit above. --small-maps prints that part alone, and the price of oneDNN's bias
on a stride-1 transposed convolution (which the native op adds itself, after the
convolution, in NCHW).
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
NEVER = 2**40  # a threshold no layer reaches
EAGER = {"nchw": "nchw", "cl": "channels_last"}  # eager's own convolution, per layout of x
NOISE = 0.03  # slower than eager's convolution by less than this is a tie (interleaved mins)


def table_path(name):
    """The generated header of the table class `name` (default, amd_zen5)."""
    return ROOT / "csrc" / "cpu" / f"conv_plan_table_{name}.h"


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


def measure_small_maps(rounds):
    """[(layer, {path: seconds})]: gemm and the other paths on the 2x2-8x8 inputs (NCHW x)."""
    rows = []
    for layer in LAYERS.values():
        if not 1 < layer.h <= 8:
            continue
        paths = ("gemm",) + (PATHS if layer.winograd_geometry else PATHS[:2])
        t = time_paths(layer, torch.contiguous_format, paths, rounds)
        rows.append((layer, t))
        print(f"{layer.name:34s} cin/px {cin_per_pixel(layer):4d} " + " ".join(
            f"{p}={1e3 * v:.2f}" for p, v in t.items())
            + f"  best other / gemm {best_other(t) / t['gemm']:.2f}x", flush=True)
    return rows


def time_paths(layer, fmt, paths, rounds):
    """{path: seconds}: one native forward + backward of `layer` per path forced, least of
    `rounds` interleaved; FASTVAE_CONV_PATH is unset after."""
    times = interleaved_seconds({p: runner(layer, fmt, p) for p in paths}, rounds)
    os.environ.pop("FASTVAE_CONV_PATH", None)
    return {p: min(v) for p, v in times.items()}


def cin_per_pixel(layer):
    """Input channels per pixel (N*H*W), as csrc/cpu/conv_plan.cpp computes them."""
    return layer.cin // pixels(layer)


def best_other(t):
    return min(v for p, v in t.items() if p != "gemm")


def on_gemm(layer, tg):
    return layer.h == 1 or cin_per_pixel(layer) >= tg


def gemm_slowdowns(rows, tg):
    """Per row: the time under Tg (gemm where Cin >= Tg * N*H*W, else the best other path)
    over the best path's."""
    return [(t["gemm"] if on_gemm(layer, tg) else best_other(t)) / min(t.values())
            for layer, t in rows]


def best_gemm_threshold(rows):
    """Tg minimising the summed slowdown over the rows, gemm nowhere more than NOISE slower
    than eager's NCHW convolution; among equal sums the largest (gemm taken in the fewest
    places)."""
    candidates = sorted({cin_per_pixel(layer) for layer, _ in rows} | {1}) + [NEVER]
    safe = [tg for tg in candidates if all(t["gemm"] <= (1 + NOISE) * t["nchw"]
                                           for layer, t in rows if on_gemm(layer, tg))]
    return min(reversed(safe), key=lambda tg: sum(gemm_slowdowns(rows, tg)))


def fit_gemm(rounds):
    """(rows of measure_small_maps, Tg fitted to them), the rule printed."""
    rows = measure_small_maps(rounds)
    tg = best_gemm_threshold(rows)
    print(f"gemm where Cin >= {tg} * N*H*W (and on every 1x1 input); on these layers the "
          f"worst slowdown against the best path {max(gemm_slowdowns(rows, tg)):.2f}x")
    return rows, tg


def small_maps(rounds):
    """The gemm part of the fit alone; oneDNN's stride-1 bias on the 1x1 layers."""
    fit_gemm(rounds)
    for layer in LAYERS.values():
        if layer.h == 1 and layer.stride == 1:
            x = torch.randn(layer.n, layer.cin, 1, 1)
            w = torch.randn(layer.cin, layer.cout, layer.kernel, layer.kernel)
            b = torch.randn(layer.cout)
            conv = torch.nn.functional.conv_transpose2d
            times = interleaved_seconds({
                "with bias": lambda: conv(x, w, b, 1, layer.padding),
                "bias after": lambda: conv(x, w, None, 1, layer.padding).add_(b.view(1, -1, 1, 1)),
            }, rounds)
            print(f"{layer.name:34s} oneDNN forward " + "  ".join(
                f"{k}={1e3 * min(v):.3f} ms" for k, v in times.items()), flush=True)


def measure(rounds, tg):
    """[(layer, layout, {path: seconds})] for every layer off the gemm path, per layout."""
    rows = []
    for layer in LAYERS.values():
        if on_gemm(layer, tg):
            continue  # a small map on the gemm path
        paths = PATHS if layer.winograd_geometry else PATHS[:2]
        for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            rows.append((layer, layout, time_paths(layer, fmt, paths, rounds)))
            print(f"{layer.name:34s} {layout:4s} " + "  ".join(
                f"{p}={1e3 * t:8.2f} ms" for p, t in rows[-1][2].items()), flush=True)
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
    best path) over the rows, among those under which no row runs more than NOISE slower
    than eager's own convolution (oneDNN's in x's layout: the fallback that keeps the block
    never slower than eager); where none is, the one whose worst such ratio is least. Ties
    go to the first in the grid's order (the smallest thresholds). Per Winograd setting
    (Tf, Tmf, Tb, Tmb): the rows it sends to Winograd, plus, per (Tc, Tcm), the others'
    NCHW or channels_last time (sums as matrix products)."""
    never = NEVER
    layers = [layer for layer, _, _ in rows]

    def candidates(feature, last=never):
        return sorted({feature(layer) for layer in layers}) + [last]
    slow = [{p: v / min(t.values()) for p, v in t.items()} for _, _, t in rows]
    vs_eager = [{p: v / t[EAGER[layout]] for p, v in t.items()} for _, layout, t in rows]
    winograd = list(itertools.product(candidates(per_cin), candidates(channels),
                                      candidates(per_cin), candidates(channels)))
    layout = list(itertools.product(candidates(pixels), candidates(channels)))
    w_cost = np.zeros(len(winograd))  # rows sent to Winograd, per Winograd setting
    w_eager = np.zeros((len(winograd), len(rows)))  # their time / eager's conv, else 0
    w_rest = np.zeros((len(winograd), len(rows)))  # 1 where a row is left to the layout rule
    for i, w in enumerate(winograd):
        for j, layer in enumerate(layers):
            path = choice(layer, w + (never, never))
            if path.startswith("winograd"):
                w_cost[i] += slow[j][path]
                w_eager[i, j] = vs_eager[j][path]
            else:
                w_rest[i, j] = 1
    chosen = [[choice(layer, (never,) * 4 + c) for layer in layers] for c in layout]
    l_cost = np.array([[slow[j][p] for j, p in enumerate(ps)] for ps in chosen])
    l_eager = np.array([[vs_eager[j][p] for j, p in enumerate(ps)] for ps in chosen])
    cost = w_cost[:, None] + w_rest @ l_cost.T  # (Winograd settings, layout settings)
    worst = np.stack([(w_eager + w_rest * l_eager[k]).max(axis=1) for k in range(len(layout))],
                     axis=1)
    feasible = worst <= 1 + NOISE
    objective = np.where(feasible, cost, np.inf) if feasible.any() else worst
    i, k = np.unravel_index(np.argmin(objective), objective.shape)
    return winograd[i] + layout[k]


def table_header(name, small_rows, tg, rows, thresholds, rounds):
    lines = [
        f"// Generated by tools/conv_paths.py: the {name} table of csrc/cpu/conv_plan.h's rule",
        "// (conv_plan_thresholds.h) and the measurements it was chosen from. Do not edit; rerun the tool.",
        f"// {datetime.date.today()}, {cpu_description()}",
        f"// native fwd+bwd ms, norm none, least of {rounds} interleaved rounds; * = auto's choice",
        "// The gemm path on 2x2-8x8 inputs (NCHW x) against the best other path:",
        "//   layer                             cin/px     gemm best other",
    ]
    for layer, t in small_rows:
        gemm = on_gemm(layer, tg)
        lines.append(f"//   {layer.name:33s} {cin_per_pixel(layer):7d} {1e3 * t['gemm']:8.2f}"
                     f"{'*' if gemm else ' '} {1e3 * best_other(t):8.2f}{' ' if gemm else '*'}")
    lines += [
        "// The other paths, off the gemm path:",
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
        '#include "cpu/conv_plan_thresholds.h"',
        "",
        "namespace fastvae {",
        "namespace cpu {",
        "namespace plan_table {",
        "",
        "constexpr Table k%s{\"%s\", %d, {%d, %d, %d, %d, %d, %d}, {%d, %d, %d, %d, %d, %d}};"
        % ("".join(w.capitalize() for w in name.split("_")), name, tg, *thresholds["nchw"],
           *thresholds["cl"]),
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
    parser.add_argument("--write", action="store_true",
                        help="write csrc/cpu/conv_plan_table_<class>.h for this CPU's class")
    parser.add_argument("--small-maps", action="store_true",
                        help="time the gemm path on the 1x1-8x8 inputs instead")
    args = parser.parse_args()
    name = torch.ops.fastvae._deconv_block_conv_plan_class()
    print(f"{cpu_description()}; conv path table {name}")
    if args.small_maps:
        small_maps(args.rounds)
        return
    small_rows, tg = fit_gemm(args.rounds)
    rows = measure(args.rounds, tg)
    thresholds = {layout: best_thresholds([r for r in rows if r[1] == layout])
                  for layout in ("nchw", "cl")}
    for layout, th in thresholds.items():
        sel = [r for r in rows if r[1] == layout]
        worst = max(t[choice(layer, th)] / min(t.values()) for layer, _, t in sel)
        print(f"x {layout}: Winograd forward from {th[0]} pixels (N*H*W) per Cin and {th[1]} channels, "
              f"backward from {th[2]} and {th[3]}, else channels_last from {th[4]} pixels "
              f"(N*H*W) and {th[5]} channels; "
              f"auto's worst slowdown against the best path {worst:.2f}x")
    text = table_header(name, small_rows, tg, rows, thresholds, args.rounds)
    if args.write:
        table_path(name).write_text(text)
        print(f"wrote {table_path(name)}")
    else:
        print(text)


if __name__ == "__main__":
    main()
