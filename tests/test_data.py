"""fastvae.data: every PIL mode to RGB, bad files skipped with a warning, deterministic crops."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastvae.data import (ImageDataset, demo_images, list_images, load_image, make_grid,
                          save_image)

RNG = np.random.RandomState(0)
RGB = (RNG.rand(24, 36, 3) * 255).astype(np.uint8)
GRAY = RGB[..., 0]


def _write(path, image: Image.Image):
    image.save(path)
    return path


@pytest.mark.parametrize("mode,expected", [
    ("RGB", RGB / 255.0),
    ("L", np.repeat(GRAY[..., None], 3, axis=2) / 255.0),
    ("P", None),     # palette: quantized, only the shape and range are known
    ("CMYK", None),  # through PIL's naive conversion
    ("RGBA", RGB / 255.0),
])
def test_load_image_modes(tmp_path, mode, expected):
    base = Image.fromarray(GRAY if mode == "L" else RGB)
    image = base.convert(mode) if mode != "L" else base
    path = _write(tmp_path / f"im.{'jpg' if mode == 'CMYK' else 'png'}", image)
    t = load_image(path)
    assert t.shape == (3, 24, 36) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    if expected is not None:
        torch.testing.assert_close(t, torch.from_numpy(expected).permute(2, 0, 1).float())


def test_load_image_alpha_over_white_and_16_bit(tmp_path):
    la = Image.fromarray(np.stack([GRAY, np.zeros_like(GRAY)], axis=-1), "LA")
    assert torch.all(load_image(_write(tmp_path / "la.png", la)) == 1.0)  # transparent: white
    sixteen = (RNG.rand(24, 36) * 65535).astype(np.uint16)
    t = load_image(_write(tmp_path / "16.png", Image.fromarray(sixteen)))
    torch.testing.assert_close(t[0], torch.from_numpy(sixteen / 65535.0).float())
    assert t.shape == (3, 24, 36)


def test_load_image_size_resizes_short_side_and_centre_crops(tmp_path):
    t = load_image(_write(tmp_path / "a.png", Image.fromarray(RGB)), size=12)
    assert t.shape == (3, 12, 12)
    assert 0.0 <= t.min() and t.max() <= 1.0


def test_list_images_recursive_sorted_skips_others(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.webp", ".hidden/d.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "sub/c.webp"]


def test_dataset_skips_bad_files_with_a_warning(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "good.png")
    Image.fromarray(RGB).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    with pytest.warns(UserWarning) as record:
        ds = ImageDataset(str(tmp_path), size=16)
    messages = " ".join(str(w.message) for w in record)
    assert "truncated.jpg" in messages and "fake.png" in messages
    assert ds.names == ["full.jpg", "good.png"]
    assert ds[0].shape == (3, 16, 16) and len(ds) == 2


def test_dataset_with_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images"):
            ImageDataset(str(tmp_path), size=16)
    with pytest.raises(FileNotFoundError):
        ImageDataset(str(tmp_path / "missing"), size=16)


def test_random_crops_come_from_the_generator_only(tmp_path):
    for i in range(3):
        Image.fromarray(np.roll(RGB, 7 * i, axis=1)).save(tmp_path / f"{i}.png")
    ds = ImageDataset(str(tmp_path), size=8)
    g = torch.Generator().manual_seed(123)
    first = ds.random_crops(5, g)
    state = g.get_state()
    second = ds.random_crops(5, g)
    torch.manual_seed(0)  # the global RNG must not matter
    g2 = torch.Generator().manual_seed(123)
    assert torch.equal(ds.random_crops(5, g2), first)
    g2.set_state(state)  # resuming from a saved state continues the same stream
    assert torch.equal(ds.random_crops(5, g2), second)
    assert first.shape == (5, 3, 8, 8) and 0.0 <= first.min() and first.max() <= 1.0
    assert not torch.equal(first, second)


def test_demo_images_are_rgb():
    images = demo_images()
    names = [name for name, _ in images]
    assert {"astronaut", "coffee", "chelsea", "brick"} <= set(names)
    assert all(image.mode == "RGB" for _, image in images)


def test_grid_and_save_round_trip(tmp_path):
    images = torch.rand(5, 3, 4, 6)
    grid = make_grid(images, nrow=3, padding=2)
    assert grid.shape == (3, 2 * 6 + 2, 3 * 8 + 2)
    torch.testing.assert_close(grid[:, 2:6, 10:16], images[1])
    save_image(images[0], tmp_path / "one.png")
    torch.testing.assert_close(load_image(tmp_path / "one.png"), images[0], atol=0.5 / 255,
                               rtol=0)
    save_image(images * 2 - 0.5, tmp_path / "out" / "grid.png", nrow=3)  # clamped, dirs made
    assert load_image(tmp_path / "out" / "grid.png").shape == grid.shape
