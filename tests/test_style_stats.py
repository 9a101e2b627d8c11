"""fastvae.style_stats: Lab conversions, Reinhard colour transfer, random features, distance."""
import numpy as np
import pytest
import torch
from skimage import color

from fastvae.style_stats import (EVAL_SEED, RandomFeatures, color_transfer, lab_to_rgb,
                                 rgb_to_lab, style_distance, style_statistics)


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, 3, size // 4, size // 4, generator=g)
    # smooth colour fields plus texture, like photographs rather than white noise
    up = torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear")
    return (0.8 * up + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _lab_moments(x):
    lab = rgb_to_lab(x.double())
    return lab.mean(dim=(2, 3)), lab.std(dim=(2, 3), correction=0)


def test_rgb_to_lab_matches_skimage_and_round_trips():
    x = _images(2).double()
    ref = color.rgb2lab(x.permute(0, 2, 3, 1).numpy())
    lab = rgb_to_lab(x)
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).numpy(), ref, atol=1e-3)
    torch.testing.assert_close(lab_to_rgb(lab), x, rtol=0, atol=1e-10)
    x32 = _images(2, seed=1)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x32)), x32, rtol=0, atol=1e-5)
    # out-of-gamut values extend the curves rather than clipping, so they round-trip too
    wide = torch.linspace(-0.2, 1.2, 3 * 16, dtype=torch.float64).view(1, 3, 4, 4)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(wide)), wide, rtol=0, atol=1e-10)


def test_lab_gradients_are_finite_at_black_and_white():
    x = torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1).repeat(1, 1, 2, 2).requires_grad_()
    rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    lab = torch.tensor([0.0, 0.0, 0.0]).view(1, 3, 1, 1).requires_grad_()
    lab_to_rgb(lab).sum().backward()
    assert torch.isfinite(lab.grad).all()


def test_color_transfer_matches_style_lab_moments():
    content, style = _images(1, seed=2), _images(1, seed=3) * 0.5 + torch.tensor(
        [0.4, 0.2, 0.1]).view(1, 3, 1, 1)
    out = color_transfer(content, style, clamp=False)
    for got, want in zip(_lab_moments(out), _lab_moments(style)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-2)
    clamped = color_transfer(content, style)
    assert clamped.shape == content.shape and 0 <= clamped.min() and clamped.max() <= 1
    # a batch of contents against one style broadcasts
    assert color_transfer(_images(3), style).shape == (3, 3, 32, 32)


def test_random_features_are_fixed_by_seed_and_never_train():
    a, b, c = RandomFeatures(EVAL_SEED), RandomFeatures(EVAL_SEED), RandomFeatures(EVAL_SEED + 1)
    x = _images(2)
    fa, fb, fc = a(x), b(x), c(x)
    assert [f.shape[1:] for f in fa] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert all(torch.equal(u, v) for u, v in zip(fa, fb))
    assert not any(torch.allclose(u, v) for u, v in zip(fa, fc))
    assert list(a.parameters()) == [] and a.state_dict() == {}  # rebuilt from the seed
    assert not any(t.requires_grad for t in a.buffers())


def test_style_distance_zero_for_identical_and_positive_otherwise():
    features = RandomFeatures(EVAL_SEED)
    x, y = _images(3, seed=4), _images(3, seed=5)
    torch.testing.assert_close(style_distance(x, x, features), torch.zeros(3))
    d = style_distance(x, y, features)
    assert d.shape == (3,) and torch.all(d > 1e-4)
    # spatially pooled: sizes may differ; a single style broadcasts over the batch
    assert style_distance(x, _images(1, size=48), features).shape == (3,)
    # a shifted crop of the same texture is closer than a different image
    big = _images(1, size=64, seed=6)
    other = _images(1, size=32, seed=7)
    near = style_distance(big[..., :32, :32], big[..., 32:, 32:], features)
    assert near < style_distance(big[..., :32, :32], other, features)


def test_style_statistics_shapes_and_gradient():
    features = RandomFeatures(0, channels=(4, 8))
    x = _images(2).requires_grad_()
    stats = style_statistics(x, features)
    assert [s.shape[1] for s in stats] == [4, 4, 16, 8, 8, 64, 3, 3]
    style_distance(x, _images(2, seed=9), features).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        rgb_to_lab(torch.rand(3, 8, 8))
