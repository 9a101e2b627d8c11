"""The StyleVAE's loss terms: likelihoods, KL schedule and free bits, structure.

Every function returns per-sample values or a scalar in float32, whatever the input
dtype (bf16 autocast included), so the terms can be summed and logged as they are.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import luminance  # BT.601 luma: the structure term works on brightness


def gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """-log N(x; mean, exp(log_scale)^2) summed over all but the batch dim, (N,) nats.

    log_scale broadcasts against x (a per-channel (C, 1, 1) parameter, say).
    """
    x, mean = x.float(), mean.float()
    z = (x - mean) * torch.exp(-log_scale)
    nll = 0.5 * z.square() + log_scale + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(1)


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor,
                             bits: int = 8) -> Tensor:
    """-log P(x) of 8-bit pixels under a Gaussian binned into 2**bits levels on [0, 1].

    x is quantized to the nearest level; the edge bins reach to -inf and +inf, so the
    probabilities of the levels sum to one. Returns (N,) nats, summed over pixels.
    """
    levels = 2**bits - 1
    x = torch.round(x.float().clamp(0, 1) * levels) / levels
    mean = mean.float()
    inv_scale = torch.exp(-log_scale)
    half_bin = 0.5 / levels
    upper = (x + half_bin - mean) * inv_scale
    lower = (x - half_bin - mean) * inv_scale
    # log(Phi(u) - Phi(l)) computed on the side of the mean where it does not cancel
    cdf_u = torch.special.ndtr(upper)
    cdf_l = torch.special.ndtr(lower)
    flip = lower > 0  # both in the upper tail: use the survival functions instead
    mass = torch.where(flip, torch.special.ndtr(-lower) - torch.special.ndtr(-upper), cdf_u - cdf_l)
    mass = torch.where(x >= 1, torch.special.ndtr(-lower), mass)  # top bin: [1 - half, inf)
    mass = torch.where(x <= 0, cdf_u, mass)  # bottom bin: (-inf, half]
    # far in a tail the mass underflows: fall back to the density times the bin width
    log_density = (-0.5 * ((x - mean) * inv_scale).square() - log_scale
                   - 0.5 * math.log(2 * math.pi) + math.log(2 * half_bin))
    log_mass = torch.where(mass > 1e-12, torch.log(mass.clamp_min(1e-12)), log_density)
    return -log_mass.flatten(1).sum(1)


def kl_weight(beta: float, step: int, warmup_steps: int) -> float:
    """beta ramped linearly from 0 over the first warmup_steps (KL annealing)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def free_bits(kl_per_group: Tensor, nats_per_dim: float, dims_per_group: int) -> Tensor:
    """Kingma et al. 2016's free bits: each group's KL counts at least nats_per_dim per dim.

    kl_per_group: (G,) KL of each latent channel, averaged over the batch. The floor
    stops the optimizer from collapsing a channel to the prior (posterior collapse).
    """
    if nats_per_dim <= 0:
        return kl_per_group.sum()
    return kl_per_group.clamp_min(nats_per_dim * dims_per_group).sum()


def _standardized_luma(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) brightness with zero mean, unit std per image."""
    return _restandardize(luminance(x.float()))


def structure_loss(output: Tensor, content: Tensor, scales: int = 3) -> Tensor:
    """(N,) mean squared difference of the standardized brightness at several scales.

    Standardizing each image takes away its global brightness and contrast, which
    belong to the style, and keeps the layout of edges and shapes, which belong to the
    content.
    """
    a, b = _standardized_luma(output), _standardized_luma(content)
    terms = []
    for i in range(scales):
        if i:
            if min(a.shape[-2:]) < 8:
                break
            a, b = _restandardize(F.avg_pool2d(a, 2)), _restandardize(F.avg_pool2d(b, 2))
        terms.append((a - b).square().flatten(1).mean(1))
    return torch.stack(terms).mean(0)


def _restandardize(y: Tensor) -> Tensor:
    return (y - y.mean(dim=(2, 3), keepdim=True)) / (y.std(dim=(2, 3), keepdim=True) + 1e-3)


def latent_distance(a: Tensor, b: Tensor) -> Tensor:
    """(N,) mean squared distance between two latents, float32."""
    return (a.float() - b.float()).square().flatten(1).mean(1)
