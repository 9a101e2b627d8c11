"""Image quality metrics on (N, 3, H, W) images in [0, 1]: PSNR and SSIM, one value per image."""
import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, the "Y" SSIM is usually reported on (Wang et al. 2004; SR papers).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _pair(a: torch.Tensor, b: torch.Tensor):
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 3, H, W) or (3, H, W) images, got {tuple(a.shape)}")
    return a.double(), b.double()  # float64: small differences of near-equal images


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (N,) (inf where the images are equal)."""
    a, b = _pair(a, b)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(data_range ** 2 / mse)).float()


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) BT.601 luma; one-channel images pass through."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity on luminance per image, (N,). Gaussian window (11, sigma 1.5),
    K1 = 0.01, K2 = 0.03, population (co)variances, and the mean over the windows that fit
    inside the image: what `skimage.metrics.structural_similarity(..., gaussian_weights=
    True, use_sample_covariance=False)` computes."""
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got "
                         f"{tuple(a.shape[-2:])}")
    x, y = luminance(a), luminance(b)
    g = _gaussian_window(win_size, sigma, x)

    def blur(t):  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) *
                                                     (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).float()


def mean_finite(values: torch.Tensor) -> float:
    """The mean of a metric over images, ignoring infinities (PSNR of an exact copy)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.inf
