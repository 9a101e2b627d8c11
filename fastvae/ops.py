"""The public ops: `torch.library` custom ops in the `fastvae` namespace.

Each op is one registered forward and one registered backward, both taking the concrete
backend by name; the Python functions at the bottom check arguments, resolve `auto`
and call them. In plain eager PyTorch they call an autograd.Function holding the same
bodies instead (_plain_eager: the custom-op wrapper costs about 0.3 ms a step); under
torch.compile, export, modes and subclasses the registered ops run. The backend modules (reference.py, _native.py, fastvae.kernels.*) share
one interface, documented in reference.py.
"""
from typing import Optional

import torch
from torch import Tensor

from . import _eager_deconv, _validate
from .backends import implementation, resolve
from .reference import BATCH, as_broadcast, compute_dtype, memory_format

SEED_HIGH = 2**62  # seeds drawn by torch are in [0, SEED_HIGH)


def _dense(out: Optional[Tensor], like: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """`out` made dense in memory_format(like, weight) (a no-op when a backend already did)."""
    return out.contiguous(memory_format=memory_format(like, weight))


def _empty_like(t: Tensor) -> Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format(t))


def _absent(like: Tensor) -> Tensor:
    """Stand-in output for a gradient that has no input: custom ops cannot return None."""
    return like.new_empty(0)


def _plain_eager(*tensors: Optional[Tensor]) -> bool:
    """Whether an autograd.Function may stand in for the registered ops: eager PyTorch on
    plain tensors. The custom-op machinery costs about 0.3 ms a forward + backward on this
    CPU (torch's Python autograd wrapper and dispatch of two ops; fastvae.deconv_block on a
    2x8x2x2 input: 0.60 ms against 0.32 ms through the Function, the kernels 0.23 ms),
    as much as a small layer's whole epilogue. Under torch.compile or export, a dispatch
    mode (FakeTensor, FlopCounterMode, functionalization), a torch function mode, a
    functorch transform or a tensor subclass the registered op runs, so they all see it."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    return all(t is None or type(t) is Tensor or type(t) is torch.nn.Parameter
               for t in tensors)


def _function_backward(op, body):
    """What an eager fast-path Function's backward calls: the backward op's body, or under
    create_graph=True (grad mode on in backward) the registered op itself, whose autograd
    formula refuses a second derivative with the error the op path gives."""
    return op if torch.is_grad_enabled() else body


# ----------------------------------------------------------------------------- reparam_kl


@torch.library.custom_op("fastvae::reparam_kl", mutates_args=())
def _reparam_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor,
                backend: str) -> tuple[Tensor, Tensor]:
    return _reparam_kl_run(mu, logvar, eps, seed, backend)


def _reparam_kl_run(mu, logvar, eps, seed, backend):
    """The forward op's body: (z, kl) from the backend."""
    z, kl = implementation(backend).reparam_kl_fwd(mu, logvar, eps, seed)
    return z.contiguous(), kl.contiguous()


@_reparam_kl.register_fake
def _(mu, logvar, eps, seed, backend):
    torch._check(mu.shape == logvar.shape, lambda: "logvar must have the shape of mu")
    torch._check(seed.dim() == 0, lambda: "seed must be a 0-d tensor")
    z = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    return z, mu.new_empty(mu.shape[0], dtype=compute_dtype(mu.dtype))


@torch.library.custom_op("fastvae::reparam_kl_backward", mutates_args=())
def _reparam_kl_backward(grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor,
                         eps: Optional[Tensor], seed: Tensor,
                         backend: str) -> tuple[Tensor, Tensor]:
    return _reparam_kl_backward_run(grad_z, grad_kl, mu, logvar, eps, seed, backend)


def _reparam_kl_backward_run(grad_z, grad_kl, mu, logvar, eps, seed, backend):
    """The backward op's body: (grad_mu, grad_logvar)."""
    grad_mu, grad_logvar = implementation(backend).reparam_kl_bwd(
        grad_z, grad_kl, mu, logvar, eps, seed)
    return grad_mu.contiguous(), grad_logvar.contiguous()


@_reparam_kl_backward.register_fake
def _(grad_z, grad_kl, mu, logvar, eps, seed, backend):
    return (torch.empty(mu.shape, dtype=mu.dtype, device=mu.device),
            torch.empty(mu.shape, dtype=mu.dtype, device=mu.device))


def _reparam_kl_setup_context(ctx, inputs, output):
    mu, logvar, eps, seed, backend = inputs
    ctx.save_for_backward(mu, logvar, eps, seed)
    ctx.backend = backend


def _reparam_kl_grad(ctx, grad_z, grad_kl):
    return _reparam_kl_grads(ctx, grad_z, grad_kl, torch.ops.fastvae.reparam_kl_backward)


def _reparam_kl_grads(ctx, grad_z, grad_kl, backward):
    """The autograd formula, `backward` being the backward op or its body."""
    mu, logvar, eps, seed = ctx.saved_tensors
    grad_mu, grad_logvar = backward(grad_z, grad_kl, mu, logvar, eps, seed, ctx.backend)
    return grad_mu, grad_logvar, None, None, None


_reparam_kl.register_autograd(_reparam_kl_grad, setup_context=_reparam_kl_setup_context)


class _ReparamKLFunction(torch.autograd.Function):
    """The registered reparam_kl and reparam_kl_backward ops' bodies as one Function, for
    eager calls on plain tensors (_plain_eager)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _reparam_kl_run(*inputs)
        _reparam_kl_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        return _reparam_kl_grads(ctx, grad_z, grad_kl, _function_backward(
            torch.ops.fastvae.reparam_kl_backward, _reparam_kl_backward_run))


# --------------------------------------------------------------------------- deconv_block


def _out_size(size: int, k: int, stride: int, padding: int, output_padding: int) -> int:
    """nn.ConvTranspose2d's output size along one dim (dilation 1)."""
    return (size - 1) * stride - 2 * padding + k + output_padding


def _stats_shape(n: int, c: int, groups: int):
    return (1, c) if groups == BATCH else (n, groups)


@torch.library.custom_op("fastvae::deconv_block", mutates_args=())
def _deconv_block(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
                  shift: Optional[Tensor], geometry: list[int], groups: int, activation: str,
                  negative_slope: float, eps: float,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _deconv_block_run(x, weight, bias, scale, shift, geometry, groups, activation,
                             negative_slope, eps, backend)


def _deconv_block_run(x, weight, bias, scale, shift, geometry, groups, activation,
                      negative_slope, eps, backend):
    """The forward op's body: (y, pre_norm, mean, rstd) from the backend."""
    y, pre_norm, mean, rstd = implementation(backend).deconv_block_fwd(
        x, weight, bias, scale, shift, geometry, groups, activation, negative_slope, eps)
    return (_dense(y, x, weight), _dense(pre_norm, x, weight), mean.contiguous(),
            rstd.contiguous())


@_deconv_block.register_fake
def _(x, weight, bias, scale, shift, geometry, groups, activation, negative_slope, eps,
      backend):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "x and weight must be 4-D")
    torch._check(len(geometry) == 6, lambda: "geometry must hold 6 ints")
    n, _, h, w = x.shape
    sh, sw, ph, pw, oh, ow = geometry
    ho = _out_size(h, weight.shape[2], sh, ph, oh)
    wo = _out_size(w, weight.shape[3], sw, pw, ow)
    out = torch.empty((n, weight.shape[1], ho, wo), dtype=x.dtype, device=x.device,
                      memory_format=memory_format(x, weight))
    stats = x.new_empty(_stats_shape(n, weight.shape[1], groups), dtype=compute_dtype(x.dtype))
    return out, torch.empty_like(out), stats, torch.empty_like(stats)


@torch.library.custom_op("fastvae::deconv_block_backward", mutates_args=())
def _deconv_block_backward(grad_y: Tensor, x: Tensor, weight: Tensor, pre_norm: Tensor,
                           mean: Tensor, rstd: Tensor, scale: Optional[Tensor],
                           shift: Optional[Tensor], has_bias: bool, geometry: list[int],
                           groups: int, activation: str, negative_slope: float, eps: float,
                           backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _deconv_block_backward_run(grad_y, x, weight, pre_norm, mean, rstd, scale, shift,
                                      has_bias, geometry, groups, activation, negative_slope,
                                      eps, backend)


def _deconv_block_backward_run(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
                               geometry, groups, activation, negative_slope, eps, backend):
    """The backward op's body: (grad_x, grad_weight, grad_bias, grad_scale, grad_shift)."""
    grads = implementation(backend).deconv_block_bwd(
        grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
        geometry, groups, activation, negative_slope, eps)
    grad_x, grad_weight, grad_bias, grad_scale, grad_shift = grads
    return (_dense(grad_x, x), _dense(grad_weight, weight),
            grad_bias.contiguous() if has_bias else _absent(x),
            _absent(x) if scale is None else _dense(grad_scale, scale),
            _absent(x) if shift is None else _dense(grad_shift, shift))


@_deconv_block_backward.register_fake
def _(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias, geometry, groups,
      activation, negative_slope, eps, backend):
    grad_bias = x.new_empty(weight.shape[1]) if has_bias else _absent(x)
    return (_empty_like(x), _empty_like(weight), grad_bias,
            _absent(x) if scale is None else _empty_like(scale),
            _absent(x) if shift is None else _empty_like(shift))


def _deconv_block_setup_context(ctx, inputs, output):
    (x, weight, bias, scale, shift, geometry, groups, activation, negative_slope, eps,
     backend) = inputs
    _, pre_norm, mean, rstd = output
    ctx.save_for_backward(x, weight, pre_norm, mean, rstd, scale, shift)
    ctx.has_bias = bias is not None
    ctx.args = (geometry, groups, activation, negative_slope, eps, backend)
    # pre_norm, mean and rstd are saved for backward, never differentiated: without this,
    # autograd fills an output-sized tensor of zeros for pre_norm's gradient every step
    ctx.set_materialize_grads(False)


def _deconv_block_grad(ctx, grad_y, _grad_pre_norm, _grad_mean, _grad_rstd):
    return _deconv_block_grads(ctx, grad_y, torch.ops.fastvae.deconv_block_backward)


def _deconv_block_grads(ctx, grad_y, backward):
    """The autograd formula, `backward` being the backward op or its body."""
    x, weight, pre_norm, mean, rstd, scale, shift = ctx.saved_tensors
    if grad_y is None:  # only reachable by differentiating the raw op's internal outputs
        grad_y = torch.zeros_like(pre_norm)
    grad_x, grad_weight, grad_bias, grad_scale, grad_shift = backward(
        grad_y, x, weight, pre_norm, mean, rstd, scale, shift, ctx.has_bias, *ctx.args)
    return (grad_x, grad_weight, grad_bias if ctx.has_bias else None,
            None if scale is None else grad_scale, None if shift is None else grad_shift,
            None, None, None, None, None, None)


_deconv_block.register_autograd(_deconv_block_grad, setup_context=_deconv_block_setup_context)


class _DeconvBlockFunction(torch.autograd.Function):
    """The registered deconv_block and deconv_block_backward ops' bodies, as one Function:
    same backends, same saved tensors, same gradients. Returns (y, mean, rstd)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _deconv_block_run(*inputs)
        _deconv_block_setup_context(ctx, inputs, output)
        y, _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        return _deconv_block_grads(ctx, grad_y, _function_backward(
            torch.ops.fastvae.deconv_block_backward, _deconv_block_backward_run))


# ------------------------------------------------------------------ no second derivative


def _refuse_double_backward(op: str):
    """An autograd formula for a backward op that says a second derivative is not supported
    (without one, torch's error names the internal op and not why)."""
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"fastvae.{op} supports first-order gradients only: a second "
                           f"derivative (double backward, create_graph=True) of {op} is "
                           "not implemented")
    return backward, setup_context


for _op, _name in ((_reparam_kl_backward, "reparam_kl"), (_deconv_block_backward, "deconv_block")):
    _backward, _setup = _refuse_double_backward(_name)
    _op.register_autograd(_backward, setup_context=_setup)


# ------------------------------------------------------------------------ public functions


def reparam_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None, *,
               seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
               reduction: str = "mean", backend: str = "auto") -> tuple[Tensor, Tensor]:
    """z = mu + exp(logvar / 2) * eps and KL(N(mu, exp(logvar)) || N(0, 1)) per sample.

    With eps=None the noise is Triton's `tl.randn(seed, i)` stream, drawn in the kernel
    and regenerated in backward; seed=None draws one from `generator`, else from torch's
    default generator of mu's device. Returns (z, kl): z has mu's dtype; kl is float32
    (float64 for float64 input), shape (B,) for reduction="none", else a scalar.
    """
    _validate.reparam_kl(mu, logvar, eps, seed, generator, reduction)
    concrete = resolve(backend, "reparam_kl", mu.device)
    if seed is None:
        device = mu.device if generator is None else generator.device
        seed_t = torch.randint(SEED_HIGH, (), dtype=torch.int64, device=device,
                               generator=generator).to(mu.device)
    else:
        seed_t = torch.tensor(seed, dtype=torch.int64)
    if eps is not None:
        eps = eps.detach()
    if _plain_eager(mu, logvar, eps):
        z, kl = _ReparamKLFunction.apply(mu, logvar, eps, seed_t, concrete)
    else:
        z, kl = torch.ops.fastvae.reparam_kl(mu, logvar, eps, seed_t, concrete)
    if reduction == "mean":
        kl = kl.mean()
    elif reduction == "sum":
        kl = kl.sum()
    return z, kl


def backend_norm_args(norm, num_groups, out_channels, norm_weight, norm_bias, style_scale,
                      style_shift):
    """The public norm arguments as the backends take them: (groups, scale, shift), groups
    0 for no norm, scale/shift broadcastable to the output (AdaIN's when given)."""
    groups = {"group": num_groups, "instance": out_channels, "none": 0, "batch": BATCH}[norm]
    if style_scale is not None or style_shift is not None:
        return groups, as_broadcast(style_scale, False), as_broadcast(style_shift, False)
    return groups, as_broadcast(norm_weight, True), as_broadcast(norm_bias, True)


def deconv_block(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                 stride=2, padding=None, output_padding=None,
                 norm: str = "group", num_groups: int = 32,
                 norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                 running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                 momentum: Optional[float] = 0.1, training: bool = True,
                 style_scale: Optional[Tensor] = None, style_shift: Optional[Tensor] = None,
                 activation: str = "leaky_relu", negative_slope: float = 0.2,
                 eps: float = 1e-5, backend: str = "auto") -> Tensor:
    """act(affine(norm(conv_transpose2d(x, weight, bias, stride, padding, output_padding)))).

    x: (N, Cin, H, W); weight: (Cin, Cout, kH, kW), nn.ConvTranspose2d's layout and output
    size. padding=None is 1 for a 4x4 kernel, else (k - stride) // 2; output_padding=None
    makes the output exactly stride x the input where that exists, else 0. The affine is
    AdaIN with style_scale/style_shift of shape (N, Cout) or (N, Cout, Ho, Wo), else
    norm_weight/norm_bias of shape (Cout,). norm="batch" is F.batch_norm: batch statistics
    in training (running_mean/running_var updated in place when given), the running
    statistics folded into the affine otherwise.
    """
    geometry = _validate.geometry(x, weight, stride, padding, output_padding)
    out_hw = tuple(_out_size(x.shape[2 + d], weight.shape[2 + d], geometry[d], geometry[2 + d],
                             geometry[4 + d]) for d in (0, 1))
    _validate.deconv_block(x, weight, bias, out_hw, norm, num_groups, norm_weight, norm_bias,
                           running_mean, running_var, momentum, training, style_scale,
                           style_shift, activation, eps)
    concrete = resolve(backend, "deconv_block", x.device)
    if _eager_deconv.uses_eager(backend, concrete, x, running_mean):
        return _eager_deconv.deconv_block(
            x, weight, bias, geometry, norm, num_groups, norm_weight, norm_bias, running_mean,
            running_var, momentum, training, style_scale, style_shift, activation,
            negative_slope, eps)
    batch_stats = norm == "batch" and (training or running_mean is None)
    if norm == "batch" and not batch_stats:  # eval: the running statistics are an affine
        groups, scale, shift = _folded_batch_norm(weight.shape[1], norm_weight, norm_bias,
                                                  running_mean, running_var, style_scale,
                                                  style_shift, eps)
    else:
        groups, scale, shift = backend_norm_args(norm, num_groups, weight.shape[1],
                                                 norm_weight, norm_bias, style_scale,
                                                 style_shift)
    args = (x, weight, bias, scale, shift, geometry, groups, activation, float(negative_slope),
            float(eps), concrete)
    if _plain_eager(x, weight, bias, scale, shift):
        y, mean, rstd = _DeconvBlockFunction.apply(*args)
    else:
        y, _, mean, rstd = torch.ops.fastvae.deconv_block(*args)
    if batch_stats and training and running_mean is not None:
        count = x.shape[0] * out_hw[0] * out_hw[1]
        _update_running_stats(running_mean, running_var, mean, rstd, count, momentum, eps)
    return y


def _folded_batch_norm(channels, norm_weight, norm_bias, running_mean, running_var,
                       style_scale, style_shift, eps):
    """BatchNorm in eval as the epilogue's affine: n * s + t with n = h * r - mean * r,
    r = 1 / sqrt(running_var + eps); (groups=0, scale, shift). Differentiable in the affine
    parameters; the running statistics get no gradient, as in F.batch_norm."""
    groups, scale, shift = backend_norm_args("none", 1, channels, norm_weight, norm_bias,
                                             style_scale, style_shift)
    acc = compute_dtype(running_var.dtype)
    r = torch.rsqrt(running_var.detach().to(acc) + eps).view(1, -1, 1, 1)
    m = running_mean.detach().to(acc).view(1, -1, 1, 1)
    dtype = running_var.dtype if scale is None else scale.dtype
    eff_scale = r if scale is None else r * scale.to(acc)
    eff_shift = -m * eff_scale
    if shift is not None:
        eff_shift = eff_shift + shift.to(acc)
    return groups, eff_scale.to(dtype), eff_shift.to(dtype)


def _update_running_stats(running_mean, running_var, mean, rstd, count, momentum, eps):
    """F.batch_norm's in-place update from the batch's (1, C) mean and rstd: the unbiased
    variance, momentum None meaning the caller already turned it into 1/num_batches."""
    with torch.no_grad():
        var = (rstd.reshape(-1).double().pow(-2) - eps) * (count / (count - 1))
        running_mean.lerp_(mean.reshape(-1).to(running_mean.dtype), momentum)
        running_var.lerp_(var.to(running_var.dtype), momentum)
