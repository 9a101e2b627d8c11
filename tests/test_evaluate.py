"""fastvae.metrics against scikit-image, and fastvae.evaluate on a stand-in model."""
import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fastvae.data import demo_images, pil_to_tensor, resize_short_side
from fastvae.evaluate import evaluate, format_table, select_pairs
from fastvae.metrics import luminance, psnr, ssim
from fastvae.style_stats import color_transfer


def _photos(n=3, size=48):
    images = [pil_to_tensor(im) for _, im in demo_images()[:n]]
    return torch.stack([resize_short_side(t, size)[:, :size, :size] for t in images])


def test_ssim_matches_skimage_on_luminance():
    x = _photos(2, size=40)
    a, b = x[0:1], x[1:2]
    g = torch.Generator().manual_seed(0)
    noisy = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    for other in (b, noisy):
        ya, yb = (luminance(t.double())[0, 0].numpy() for t in (a, other))
        want = structural_similarity(ya, yb, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert ssim(a, other).item() == pytest.approx(want, abs=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, x.flip(0)).shape == (2,)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_psnr_matches_skimage():
    x = _photos(2, size=32)
    got = psnr(x[0], x[1]).item()
    want = peak_signal_noise_ratio(x[0].double().numpy(), x[1].double().numpy(), data_range=1.0)
    assert got == pytest.approx(want, rel=1e-5)
    assert math.isinf(psnr(x, x)[0].item())
    with pytest.raises(ValueError, match="same shape"):
        psnr(x[0], x[1, :, :16])


class StandIn(torch.nn.Module):
    """The StyleVAE evaluation API, faked: reconstruct = slight blur, stylize = a blend."""

    def __init__(self):
        super().__init__()
        self.blend = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = 0

    def reconstruct(self, x):
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1,
                                              count_include_pad=False)

    def elbo(self, x):
        self.calls += 1
        noise = torch.rand(x.shape[0])  # reproducible under evaluate's fixed seed
        return {"bits_per_dim": 3.0 + noise, "recon": torch.tensor(100.0),
                "kl_content": torch.full((x.shape[0],), 20.0), "kl_style": 5.0}

    def stylize(self, content, style, alpha=1.0):
        assert not self.training
        return self.blend * content + (1 - self.blend) * style


def test_evaluate_with_a_stand_in_model(tmp_path):
    images = _photos(4, size=32)
    model = StandIn().train()
    results = evaluate(model, images, batch_size=5)
    assert model.training  # the mode is restored
    assert results["images"] == 4 and results["pairs"] == 12 and results["size"] == [32, 32]
    assert 15 < results["reconstruction"]["psnr"] < 60
    assert 0 < results["reconstruction"]["ssim"] < 1
    assert results["elbo"]["kl_content"] == pytest.approx(20.0)
    assert results["elbo"]["kl_style"] == pytest.approx(5.0)
    assert set(results["elbo"]) == {"bits_per_dim", "recon", "kl_content", "kl_style"}
    s = results["stylize"]
    assert s["content_unchanged"]["content_ssim"] == pytest.approx(1.0)
    # the blend moves toward the style, and colour transfer matches colour moments
    assert s["stylevae"]["style_distance"] < s["content_unchanged"]["style_distance"]
    assert s["lab_transfer"]["style_distance"] < s["content_unchanged"]["style_distance"]
    assert s["stylevae"]["content_ssim"] < 1
    assert evaluate(StandIn(), images, batch_size=5) == results  # deterministic
    rebatched = evaluate(StandIn(), images, batch_size=3)["stylize"]
    for key, scores in s.items():
        assert rebatched[key] == pytest.approx(scores, rel=1e-5)
    json.dumps(results)  # JSON-ready
    table = format_table(results)
    for label in ("PSNR", "bits_per_dim", "StyleVAE", "content unchanged", "Lab colour transfer"):
        assert label in table


def test_evaluate_accepts_a_dataset_and_a_pair_subset():
    photos = _photos(3, size=24)

    class Data:  # what evaluate needs of an ImageDataset
        names = ["a", "b", "c"]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return photos[i]

    results = evaluate(StandIn(), Data(), pairs=2)
    assert results["pairs"] == 2 and results["names"] == ["a", "b", "c"]


def test_select_pairs():
    assert select_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    subset = select_pairs(10, 7)
    assert len(subset) == 7 and subset == select_pairs(10, 7) and all(i != j for i, j in subset)
    assert select_pairs(3, 100) == select_pairs(3)
    assert select_pairs(3, [(2, 0)]) == [(2, 0)]
    with pytest.raises(ValueError, match="out of range"):
        select_pairs(3, [(0, 3)])


def test_lab_transfer_baseline_keeps_structure():
    x = _photos(2, size=32)
    out = color_transfer(x[:1], x[1:])
    assert ssim(out, x[:1]).item() > 0.5
    np.testing.assert_array_less(0, out.std().item())
