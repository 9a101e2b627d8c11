"""fastvae.fuse: the ConvTranspose2d -> norm -> activation runs of existing models as one
fused deconv_block each, in place.

The modules stay where they are, with their own Parameter and buffer objects (state_dict
keys, requires_grad, optimizer state, sharing and .to() behave as before): only the
nn.Sequential that holds a run changes class, to FusedSequential, whose forward calls
fastvae.deconv_block for the run and reads the modules' tensors at call time (a
torch.nn.utils.parametrize'd weight through its parametrization).
"""
import logging
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _eager_deconv, backends
from .ops import deconv_block
from .reference import memory_format

log = logging.getLogger(__name__)

NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.Identity)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity)


class Unfusable(ValueError):
    """Why a module cannot be part of a fused block."""


class UnfusableType(Unfusable, TypeError):
    """A module of a type fused blocks do not take."""


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "_forward_hooks_with_kwargs", None))


def check_conv(conv: nn.Module) -> None:
    """Raises Unfusable unless deconv_block computes `conv` exactly, reading its weight at
    call time."""
    if parametrize.type_before_parametrizations(conv) is not nn.ConvTranspose2d:
        raise UnfusableType(f"{type(conv).__name__} is not nn.ConvTranspose2d itself")
    if conv.dilation != (1, 1) or conv.groups != 1:
        raise Unfusable(f"dilation {conv.dilation} and groups {conv.groups}: deconv_block "
                        "takes dilation 1, groups 1")
    if conv.padding_mode != "zeros":
        raise Unfusable(f"padding_mode {conv.padding_mode!r}")
    if _hooked(conv):
        raise Unfusable("it has forward hooks (torch.nn.utils.spectral_norm and weight_norm "
                        "work by hooks; their torch.nn.utils.parametrizations versions fuse)")
    if parametrize.is_parametrized(conv) and "bias" in conv.parametrizations:
        raise Unfusable("its bias is parametrized")


def check_norm(norm: Optional[nn.Module]) -> None:
    if norm is None or type(norm) is nn.Identity:
        return
    if type(norm) not in NORMS:
        raise UnfusableType(f"{type(norm).__name__} is not one of BatchNorm2d, GroupNorm, "
                            "InstanceNorm2d, Identity")
    if type(norm) is nn.InstanceNorm2d and norm.track_running_stats:
        raise Unfusable("InstanceNorm2d with track_running_stats=True (running statistics "
                        "per channel in eval: not a deconv_block norm)")
    if _hooked(norm):
        raise Unfusable(f"its {type(norm).__name__} has forward hooks")


def check_activation(act: Optional[nn.Module]) -> None:
    if act is None:
        return
    if type(act) not in ACTIVATIONS:
        raise UnfusableType(f"{type(act).__name__} is not one of "
                            + ", ".join(a.__name__ for a in ACTIVATIONS))
    if _hooked(act):
        raise Unfusable(f"its {type(act).__name__} has forward hooks")


def activation_args(act: Optional[nn.Module]) -> dict:
    """deconv_block's activation arguments for an activation module (None: no activation)."""
    if act is None or type(act) is nn.Identity:
        return {"activation": "none"}
    if type(act) is nn.LeakyReLU:
        return {"activation": "leaky_relu", "negative_slope": act.negative_slope}
    if type(act) is nn.GELU:
        return {"activation": "gelu" if act.approximate == "none" else "gelu_tanh"}
    return {"activation": {nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh",
                           nn.Sigmoid: "sigmoid"}[type(act)]}


def batch_norm_args(bn: nn.Module) -> dict:
    """deconv_block's running_mean/running_var/momentum/training for a BatchNorm2d (or a
    DeconvBlock with norm="batch", which keeps the same attributes), with BatchNorm2d.
    forward's bookkeeping: in training, one more counted batch, and momentum None meaning
    the cumulative average 1/num_batches_tracked."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_running = not bn.training or bn.track_running_stats
    return {"momentum": momentum,
            "training": bn.training or (bn.running_mean is None and bn.running_var is None),
            "running_mean": bn.running_mean if use_running else None,
            "running_var": bn.running_var if use_running else None}


def norm_args(norm: Optional[nn.Module]) -> dict:
    """deconv_block's norm arguments, read from the norm module now (its current tensors,
    mode and, for BatchNorm in training, one more counted batch)."""
    if norm is None or type(norm) is nn.Identity:
        return {"norm": "none"}
    args = {"eps": norm.eps, "norm_weight": norm.weight, "norm_bias": norm.bias}
    if type(norm) is nn.GroupNorm:
        return {**args, "norm": "group", "num_groups": norm.num_groups}
    if type(norm) is nn.InstanceNorm2d:
        return {**args, "norm": "instance"}
    return {**args, "norm": "batch", **batch_norm_args(norm)}


def fused_forward(x: Tensor, conv: nn.ConvTranspose2d, norm: Optional[nn.Module],
                  act: Optional[nn.Module], backend: str) -> Tensor:
    """act(norm(conv(x))) as one deconv_block call on the modules' current tensors."""
    if x.dim() == 3 and type(norm) not in (nn.BatchNorm2d, nn.GroupNorm):
        # an unbatched (C, H, W) map, which ConvTranspose2d, InstanceNorm2d and the
        # activations take (BatchNorm2d refuses it, GroupNorm reads C as the batch)
        return fused_forward(x.unsqueeze(0), conv, norm, act, backend).squeeze(0)
    tensors = {"x": x, "weight": conv.weight, "bias": conv.bias}
    kwargs = norm_args(norm)
    if torch.is_autocast_enabled(x.device.type):  # custom ops are not autocast: cast here
        dtype = torch.get_autocast_dtype(x.device.type)
        tensors = {k: None if t is None else t.to(dtype) for k, t in tensors.items()}
        for k in ("norm_weight", "norm_bias"):
            if kwargs.get(k) is not None:
                kwargs[k] = kwargs[k].to(dtype)
    return deconv_block(tensors["x"], tensors["weight"], tensors["bias"], stride=conv.stride,
                        padding=conv.padding, output_padding=conv.output_padding,
                        backend=backend, **kwargs, **activation_args(act))


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose fused runs (positions in `_fastvae_runs`: (start, norm, act,
    stop), norm/act -1 when absent) run as one deconv_block each; the other children as
    before.

    A chain of runs back to back (DCGAN's whole generator) runs channels_last on the native
    CPU kernels: its input is made channels_last once, each run's output feeds the next in
    that layout, and the chain's output is put back in the layout eager's would have. The
    kernels convolve channels_last, so an NCHW model otherwise pays layout copies into and
    out of every fused layer (csrc/cpu/conv_plan_table_default.h, each layer's best path from either
    layout: channels_last at most 10% slower on small maps, DCGAN's 512->256@4 b16, and up
    to 1.6x faster on maps of 32x32 and more)."""

    _fastvae_runs: tuple = ()
    _fastvae_backend: str = "auto"

    def forward(self, input):
        modules = list(self._modules.values())
        runs = {run[0]: run for run in self._fastvae_runs}
        exit_format = None  # while a chain runs channels_last: eager's layout at its end
        i = 0
        while i < len(modules):
            if i not in runs:
                input = modules[i](input)
                i += 1
                continue
            start, norm, act, stop = runs[i]
            conv = modules[start]
            if exit_format is None and stop in runs and _channels_last_pays(
                    input, self._fastvae_backend):
                exit_format = memory_format(input)
            if exit_format is not None:
                # eager's convolution output is channels_last once its input or weight is
                if memory_format(_weight_layout(conv)) == torch.channels_last:
                    exit_format = torch.channels_last
                input = input.contiguous(memory_format=torch.channels_last)
            input = fused_forward(input, conv, modules[norm] if norm >= 0 else None,
                                  modules[act] if act >= 0 else None, self._fastvae_backend)
            if exit_format is not None and stop not in runs:
                input = input.contiguous(memory_format=exit_format)
                exit_format = None
            i = stop
        return input


def _channels_last_pays(x: Tensor, backend: str) -> bool:
    """Whether a chain of fused runs on x runs channels_last: a batch (N, C, H, W) on the
    native CPU kernels in float32/float64, the dtypes of their channels_last Winograd paths."""
    if (x.dim() != 4 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or torch.is_autocast_enabled("cpu")):
        return False
    concrete = backends.resolve(backend, "deconv_block", x.device)
    return concrete == "native" and not _eager_deconv.uses_eager(backend, concrete, x)


def _weight_layout(conv: nn.Module) -> Tensor:
    """A tensor with the layout of conv's weight, read without running a parametrization
    (spectral_norm's power iteration must run once a call, as in the original)."""
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight


def _plan(seq: nn.Sequential, prefix: str, report: list) -> tuple:
    """The runs of `seq` (named `prefix` in the model) that fuse, as
    FusedSequential._fastvae_runs; a line of `report` per ConvTranspose2d."""
    modules = list(seq._modules.values())
    names = list(seq._modules.keys())
    runs, i = [], 0
    while i < len(modules):
        if not isinstance(modules[i], nn.ConvTranspose2d):
            i += 1
            continue
        where = f"{prefix}.{names[i]}" if prefix else names[i]
        try:
            check_conv(modules[i])
        except Unfusable as e:
            report.append(f"{where}: left unfused: {e}")
            i += 1
            continue
        norm = act = -1
        j = i + 1
        if j < len(modules) and isinstance(modules[j], NORMS):
            try:
                check_norm(modules[j])
                norm, j = j, j + 1
            except Unfusable as e:
                report.append(f"{where}: left unfused: {e}")
                i = j + 1
                continue
        if j < len(modules) and type(modules[j]) in ACTIVATIONS and not _hooked(modules[j]):
            act, j = j, j + 1
        if all(k < 0 or type(modules[k]) is nn.Identity for k in (norm, act)):
            report.append(f"{where}: left unfused: no norm or activation follows it (the bare "
                          "convolution is eager's own)")
            i += 1
            continue
        parts = [type(modules[k]).__name__ for k in range(i, j)]
        report.append(f"{where}: fused {' -> '.join(parts)}")
        runs.append((i, norm, act, j))
        i = j
    for chain in _chains(runs):
        if len(chain) > 1:
            where = (f"{prefix}.{names[run[0]]}" if prefix else names[run[0]] for run in chain)
            report.append(f"{', '.join(where)}: back to back, channels_last between them on "
                          "the native CPU kernels")
    return tuple(runs)


def _chains(runs) -> list:
    """`runs` (FusedSequential._fastvae_runs) grouped into chains of runs back to back, each
    starting where the one before stops (a run alone is a chain of one)."""
    chains = []
    for k, run in enumerate(runs):
        if not chains or run[0] != runs[k - 1][3]:
            chains.append([])
        chains[-1].append(run)
    return chains


def fuse(model: nn.Module, *, backend: str = "auto", verbose: bool = False) -> nn.Module:
    """Fuses every ConvTranspose2d -> [norm] -> [activation] run of consecutive children of an
    nn.Sequential in `model` (any depth) in place, and returns `model`.

    The modules, their Parameters and buffers stay where they are (state_dict keys and
    objects unchanged); a run that cannot fuse (hooks, a parametrized bias, dilation or
    groups, InstanceNorm2d with running statistics) is left as it is. verbose=True prints,
    for every ConvTranspose2d, fused or not and why (the lines are also logged at INFO).
    """
    report = []
    for prefix, module in model.named_modules():
        if type(module) in (nn.Sequential, FusedSequential):
            runs = _plan(module, prefix, report)
            if runs:
                module.__class__ = FusedSequential
                module._fastvae_runs = runs
                module._fastvae_backend = backend
            elif type(module) is FusedSequential:
                module.__class__ = nn.Sequential
    in_sequential = {id(child) for s in model.modules() if isinstance(s, nn.Sequential)
                     for child in s.children()}
    for name, module in model.named_modules():
        if isinstance(module, nn.ConvTranspose2d) and id(module) not in in_sequential:
            report.append(f"{name or type(module).__name__}: left unfused: not a child of an "
                          "nn.Sequential (fuse looks at runs of consecutive children)")
    if _unchained_nchw_on_cpu(model):
        report.append(_CHANNELS_LAST_HINT)
    for line in report:
        log.info(line)
        if verbose:
            print(f"fastvae.fuse: {line}")
    return model


_CHANNELS_LAST_HINT = (
    "hint: on the CPU, fused layers not back to back with another fused run have NCHW "
    "weights; the native kernels run channels_last, so each of them copies its activations "
    "into and out of that layout (runs back to back pass channels_last between them). "
    "model.to(memory_format=torch.channels_last) removes the copies (README: Fuse a model "
    "you already have)")


def _unchained_nchw_on_cpu(model: nn.Module) -> bool:
    """Whether a fused ConvTranspose2d of `model` outside a chain of runs has an NCHW weight
    on the CPU."""
    for seq in model.modules():
        if type(seq) is FusedSequential:
            modules = list(seq._modules.values())
            for chain in _chains(seq._fastvae_runs):
                if len(chain) > 1:
                    continue
                w = _weight_layout(modules[chain[0][0]])
                if w.device.type == "cpu" and memory_format(w) != torch.channels_last:
                    return True
    return False
