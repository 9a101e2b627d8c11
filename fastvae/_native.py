"""The `native` backend: the compiled extension `fastvae._C` (C++ on CPU, CUDA C++ on GPU).

Each function calls one schema of csrc/ops.cpp; the dispatcher picks the CPU or CUDA
kernel by the tensors' device.
"""
import torch

try:
    from . import _C  # noqa: F401  (registers the fastvae::_* schemas and kernels)
    IMPORT_ERROR = None
except ImportError as e:  # an install without the extension still imports
    IMPORT_ERROR = e

OPS = {
    "reparam_kl": "fastvae::_reparam_kl_fwd",
    "deconv_block": "fastvae::_deconv_block_fwd",
}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the extension holds a kernel of `op` for this device type."""
    if IMPORT_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(OPS[op], key)


def reparam_kl_fwd(mu, logvar, eps, seed):
    return torch.ops.fastvae._reparam_kl_fwd(mu, logvar, eps, seed)


def reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed):
    return torch.ops.fastvae._reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed)


def deconv_block_fwd(x, weight, bias, scale, shift, geometry, groups, activation,
                     negative_slope, eps):
    return torch.ops.fastvae._deconv_block_fwd(
        x, weight, bias, scale, shift, geometry, groups, activation, negative_slope, eps)


def deconv_block_bwd(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
                     geometry, groups, activation, negative_slope, eps):
    return torch.ops.fastvae._deconv_block_bwd(
        grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
        geometry, groups, activation, negative_slope, eps)
