"""`fastvae mix` and `fastvae eval` end to end on a tiny StyleVAE, their argument errors,
and the mixing helpers (weights, masks, colour preservation)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastvae.cli import main
from fastvae.data import load_image
from fastvae.mix import load_mask, normalize_weights, preserve_color
from fastvae.style_stats import rgb_to_lab


def test_normalize_weights():
    assert normalize_weights(None, 4) == [0.25] * 4
    assert normalize_weights([1, 3], 2) == [0.25, 0.75]
    assert normalize_weights(None, 2, masked=True) == [1.0, 1.0]
    assert normalize_weights([1, 3], 2, masked=True) == [1 / 3, 1.0]
    with pytest.raises(ValueError, match="--weights: got 3 weights for 2 styles"):
        normalize_weights([1, 1, 1], 2)
    with pytest.raises(ValueError, match="--weights: need non-negative"):
        normalize_weights([1, -1], 2)
    with pytest.raises(ValueError, match="--weights"):
        normalize_weights([0, 0], 2)


def test_preserve_color_keeps_lightness_of_output_and_colour_of_content():
    g = torch.Generator().manual_seed(0)
    # muted colours and mid-grey lightness: the swapped colours stay in the sRGB gamut
    content = 0.45 + 0.1 * torch.rand(1, 3, 16, 16, generator=g)
    output = (0.3 + 0.4 * torch.rand(1, 1, 16, 16, generator=g)).expand(1, 3, 16, 16)
    lab = rgb_to_lab(preserve_color(output, content))
    torch.testing.assert_close(lab[:, 0], rgb_to_lab(output)[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(lab[:, 1:], rgb_to_lab(content)[:, 1:], atol=1e-3, rtol=0)


def test_load_mask_follows_the_content_geometry(tmp_path):
    left_half = np.zeros((20, 40), np.uint8)
    left_half[:, :20] = 255
    Image.fromarray(left_half).save(tmp_path / "same_aspect.png")
    mask = load_mask(tmp_path / "same_aspect.png", (10, 20), 8, (8, 8))  # content 10x20
    assert mask.shape == (1, 1, 8, 8)
    # the centre crop of a left/right split: left half white, right half black
    assert mask[..., :, :3].min() > 0.9 and mask[..., :, 5:].max() < 0.1
    Image.fromarray(left_half).convert("RGB").save(tmp_path / "other_aspect.png")
    stretched = load_mask(tmp_path / "other_aspect.png", (30, 30), 8, (8, 8))
    assert stretched[..., :, :3].min() > 0.9 and stretched[..., :, 5:].max() < 0.1
