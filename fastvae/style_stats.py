"""Style statistics of images: fixed random conv features, their channel means / stds /
Gram matrices, Lab colour moments, and a distance between two images' statistics.

Used by the training loss (with its own seed) and by evaluation (with `EVAL_SEED`), so the
evaluation metric is measured by features the model was never trained against. Random
shallow conv features are known to capture texture well (Ustyuzhaninov et al., 2017) and
need no pretrained download.

Also sRGB <-> CIE Lab conversions and the Reinhard et al. (2001) colour-transfer baseline.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# The seed of the evaluation features. The training loss must use another seed.
EVAL_SEED = 31337

# sRGB (D65) -> CIE XYZ, the matrix scikit-image uses, and the D65 2-degree white point.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0  # CIE Lab's break point of f(t) = t^(1/3)


class RandomFeatures(nn.Module):
    """Fixed random conv features: `len(channels)` scales, each a 3x3 stride-2 conv + ReLU
    followed by a 3x3 conv + ReLU, He-initialised from `seed` (the same weights on every
    machine and device). Maps (N, 3, H, W) in [0, 1] to a list of (N, C_s, H_s, W_s);
    invariant to adding a constant colour to an image.

    He init with ReLU keeps the activations' second moment roughly that of the input at
    every scale, so statistics of different scales have comparable magnitudes.
    The weights are non-persistent buffers: they never train, follow `.to()`, and stay
    out of checkpoints (the seed rebuilds them).
    """

    def __init__(self, seed: int, channels=(16, 32, 64)):
        super().__init__()
        self.seed = seed
        self.channels = tuple(channels)
        generator = torch.Generator().manual_seed(seed)  # CPU: identical on every machine
        shapes = []
        cin = 3
        for cout in self.channels:
            shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)]
            cin = cout
        for i, shape in enumerate(shapes):
            fan_in = shape[1] * shape[2] * shape[3]
            weight = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
            self.register_buffer(f"weight{i}", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Each image's mean colour is removed (x2, the range of [-1, 1]): the features then
        # see structure and contrast, not brightness, which the Lab statistics cover.
        h = 2.0 * (x - x.mean(dim=(2, 3), keepdim=True))
        features = []
        for s in range(len(self.channels)):
            w_down, w_same = getattr(self, f"weight{2 * s}"), getattr(self, f"weight{2 * s + 1}")
            h = F.relu(F.conv2d(h, w_down.to(h.dtype), stride=2, padding=1))
            h = F.relu(F.conv2d(h, w_same.to(h.dtype), padding=1))
            features.append(h)
        return features

    def extra_repr(self) -> str:
        return f"seed={self.seed}, channels={self.channels}"


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    # clamp_min inside pow keeps the unused branch of torch.where free of NaN gradients
    return torch.where(x <= 0.04045, x / 12.92,
                       ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, x * 12.92,
                       1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA ** 3, t.clamp_min(_DELTA ** 3) ** (1.0 / 3.0),
                       t / (3 * _DELTA ** 2) + 4.0 / 29.0)


def _lab_f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0))


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", m, x)  # per-pixel 3x3 colour matrix


def _working(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N, 3, H, W) -> CIE Lab (D65): L in [0, 100], a/b roughly [-128, 127].
    Differentiable; values outside [0, 1] extend the curves rather than being clipped, so
    `lab_to_rgb(rgb_to_lab(x)) == x` everywhere."""
    x = _working(x)
    m = torch.tensor(_RGB_TO_XYZ, dtype=x.dtype, device=x.device)
    white = torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    fx, fy, fz = _lab_f(_apply_matrix(m, _srgb_to_linear(x)) / white).unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) (N, 3, H, W) -> sRGB, not clipped (out-of-gamut colours leave [0, 1])."""
    x = _working(x)
    m_inv = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(x)
    white = torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    L, a, b = x.unbind(1)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    return _linear_to_srgb(_apply_matrix(m_inv, _lab_f_inv(f) * white))


def _mean_std(x: torch.Tensor, eps: float = 1e-8):
    """Per-(sample, channel) mean and (biased) std over space, each (N, C). The eps keeps
    the std's gradient finite on flat regions."""
    mean = x.mean(dim=(2, 3))
    var = x.var(dim=(2, 3), correction=0)
    return mean, (var + eps).sqrt()


def color_transfer(content: torch.Tensor, style: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Reinhard et al. (2001): shift and scale each Lab channel of `content` to the mean and
    std of `style`'s. content (N, 3, H, W), style (N or 1, 3, H', W'); sRGB in [0, 1]."""
    c_lab, s_lab = rgb_to_lab(content), rgb_to_lab(style)
    c_mean, c_std = _mean_std(c_lab, eps=1e-6)
    s_mean, s_std = _mean_std(s_lab, eps=0.0)
    out = (c_lab - c_mean[..., None, None]) * (s_std / c_std)[..., None, None] \
        + s_mean[..., None, None]
    rgb = lab_to_rgb(out).to(content.dtype)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def style_statistics(x: torch.Tensor, features: nn.Module) -> list[torch.Tensor]:
    """The style statistics of images x (N, 3, H, W) in [0, 1], a list of (N, K_i):
    for each feature scale, the channel means, the channel stds and the Gram matrix
    (F F^T / (H W), flattened); then the Lab channel means and stds, divided by 100 so
    they sit on the features' O(1) scale. Spatially pooled: a and b may differ in size."""
    stats = []
    for f in features(x):
        mean, std = _mean_std(f)
        flat = f.flatten(2)                                      # (N, C, HW)
        gram = flat @ flat.transpose(1, 2) / flat.shape[-1]      # (N, C, C)
        stats += [mean, std, gram.flatten(1)]
    lab_mean, lab_std = _mean_std(rgb_to_lab(x) / 100.0)
    return stats + [lab_mean, lab_std]


def style_distance(a: torch.Tensor, b: torch.Tensor, features: nn.Module) -> torch.Tensor:
    """(N,) distance between the style statistics of a (N, 3, H, W) and b (N or 1, ...).

    Normalization: each statistic (a scale's means, stds or Gram; the Lab means or stds)
    contributes its mean squared difference over its entries, and the statistics are
    averaged with equal weight. Features keep roughly the input's magnitude at every scale
    (He init) and Lab is divided by 100, so no single scale or the colour term dominates
    by its units alone. Zero for identical images; differentiable in a and b.
    """
    return statistics_distance(style_statistics(a, features), style_statistics(b, features))


def statistics_distance(stats_a: list[torch.Tensor], stats_b: list[torch.Tensor]) -> torch.Tensor:
    """`style_distance` from precomputed `style_statistics` (reuse a style image's)."""
    terms = [(sa - sb).pow(2).mean(dim=1) for sa, sb in zip(stats_a, stats_b)]
    return torch.stack(terms).mean(dim=0)
