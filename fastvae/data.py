"""Images in and out: the demo images, loading any file as RGB in [0, 1], saving, grids,
and `ImageDataset` with random crops drawn from one `torch.Generator` (resumable)."""
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pnm"}

# Photographs and textures bundled in scikit-image's wheel (no download). Callables so one
# missing from an older or newer version is skipped rather than failing the list.
_DEMO_IMAGES = {
    "astronaut": lambda d: d.astronaut(),
    "coffee": lambda d: d.coffee(),
    "chelsea": lambda d: d.chelsea(),
    "rocket": lambda d: d.rocket(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],
    "hubble_deep_field": lambda d: d.hubble_deep_field(),
    "immunohistochemistry": lambda d: d.immunohistochemistry(),
    "retina": lambda d: d.retina(),
    "camera": lambda d: d.camera(),
    "coins": lambda d: d.coins(),
    "moon": lambda d: d.moon(),
    "brick": lambda d: d.brick(),
    "grass": lambda d: d.grass(),
    "gravel": lambda d: d.gravel(),
}


def demo_images() -> list[tuple[str, Image.Image]]:
    """(name, RGB PIL image) for each scikit-image photograph/texture that loads offline."""
    import skimage.data

    images = []
    for name, load in _DEMO_IMAGES.items():
        try:
            array = load(skimage.data)
        except Exception:  # not shipped in this version, or needs a download (pooch)
            continue
        images.append((name, Image.fromarray(array).convert("RGB")))
    if not images:
        raise RuntimeError("no scikit-image demo images could be loaded; is scikit-image "
                           "installed (pip install scikit-image)?")
    return images


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL mode -> (3, H, W) float32 in [0, 1]. Transparency is composited over white;
    16-bit and float modes keep their precision instead of PIL's clipping to 8 bits."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            array = array / 65535.0
        elif mode == "F":
            array = array if array.max(initial=0.0) <= 1.0 else array / 255.0
        else:  # "I" (int32): PNG 16-bit grayscale opens as "I" in Pillow
            array = array / (65535.0 if array.max(initial=0.0) > 255 else 255.0)
        gray = torch.from_numpy(np.clip(array, 0.0, 1.0)).float()
        return gray.expand(3, *gray.shape).contiguous()
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, H', W') with min(H', W') == size, aspect kept (antialiased)."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) == (h, w):
        return image
    out = F.interpolate(image[None], size=(new_h, new_w), mode="bicubic", antialias=True,
                        align_corners=False)[0]
    return out.clamp_(0.0, 1.0)  # bicubic overshoots at edges


def center_crop(image: torch.Tensor, size) -> torch.Tensor:
    """The central size x size (or size = (height, width)) region of (..., H, W)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[-2:]
    top, left = (h - out_h) // 2, (w - out_w) // 2
    return image[..., top:top + out_h, left:left + out_w]


def load_image(path, size: int | None = None) -> torch.Tensor:
    """An image file -> (3, H, W) float32 in [0, 1]; with `size`, the short side is resized
    to `size` and the centre cropped to size x size. EXIF rotation is applied."""
    with Image.open(path) as image:
        image.load()  # raises OSError here for truncated files, not later
        image = ImageOps.exif_transpose(image)
        tensor = pil_to_tensor(image)
    if size is not None:
        tensor = center_crop(resize_short_side(tensor, size), size)
    return tensor


def list_images(folder) -> list[Path]:
    """Image files under `folder` (recursive, sorted, hidden files and folders skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, 3, H, W) or a list of (3, H, W) -> one (3, H', W') image, `nrow` images a row,
    `padding` pixels of `pad_value` around and between them."""
    images = torch.stack(list(images)) if not torch.is_tensor(images) else images
    if images.dim() == 3:
        images = images[None]
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = images.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding),
                           pad_value)
    for i in range(n):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def save_image(t: torch.Tensor, path, nrow: int = 8) -> None:
    """Save (3, H, W) or (N, 3, H, W) in [0, 1] (clamped; a grid when N > 1). One-channel
    images are saved as gray. The format follows the file extension."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0] if t.shape[0] == 1 else make_grid(t, nrow=nrow)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"save_image: expected (3, H, W) or (N, 3, H, W), got {tuple(t.shape)}")
    array = (t.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory (uint8) for training crops and evaluation.

    root: a folder of images (recursive), one image file, or None for `demo_images()`.
    size: the side of every crop. Images larger than `max_side_factor * size` on their
    short side are downscaled once at load: crops then cost little and still cover a
    range of scales.
    Unreadable files are skipped with a warning naming them.
    """

    def __init__(self, root: str | None, size: int, *, scale=(0.25, 1.0),
                 max_side_factor: int = 4):
        self.size = size
        self.scale = scale  # the crop side as a fraction of the short side (random crops)
        self.names: list[str] = []
        self.images: list[torch.Tensor] = []  # (3, H, W) uint8
        max_side = max_side_factor * size
        for name, load in self._sources(root):
            try:
                image = load()
            except Exception as error:  # corrupt, truncated, not an image at all
                warnings.warn(f"ImageDataset: skipping {name}: {type(error).__name__}: {error}",
                              stacklevel=2)
                continue
            if min(image.shape[-2:]) > max_side:
                image = resize_short_side(image, max_side)
            self.names.append(name)
            self.images.append((image * 255.0).round().to(torch.uint8))
        if not self.images:
            raise ValueError(f"ImageDataset: no readable images in {root}")

    @staticmethod
    def _sources(root):
        """(name, loader) pairs, so each file fails (and is reported) on its own."""
        if root is None:
            return [(name, lambda image=image: pil_to_tensor(image))
                    for name, image in demo_images()]
        root = Path(root)
        if root.is_file():
            return [(str(root), lambda: load_image(root))]
        if not root.exists():
            raise FileNotFoundError(f"ImageDataset: no such file or folder: {root}")
        return [(str(p.relative_to(root)), lambda p=p: load_image(p)) for p in list_images(root)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        """The centre size x size crop of image `index`, (3, size, size) float in [0, 1]."""
        image = self.images[index].float() / 255.0
        return center_crop(resize_short_side(image, self.size), self.size)

    def all(self) -> torch.Tensor:
        """Every centre crop, (N, 3, size, size)."""
        return torch.stack([self[i] for i in range(len(self))])

    def random_crops(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3, size, size) float in [0, 1]: a random image, crop scale, position and
        horizontal flip per crop. Every draw comes from `generator`, in a fixed order, so
        the same generator state gives the same crops (a resumed run continues exactly)."""
        crops = torch.empty(n, 3, self.size, self.size)
        lo, hi = self.scale
        for k in range(n):
            image = self.images[int(torch.randint(len(self.images), (), generator=generator))]
            h, w = image.shape[-2:]
            short = min(h, w)
            fraction = lo + (hi - lo) * float(torch.rand((), generator=generator))
            side = min(short, max(round(short * fraction), min(self.size, short)))
            top = int(torch.randint(h - side + 1, (), generator=generator))
            left = int(torch.randint(w - side + 1, (), generator=generator))
            flip = bool(torch.rand((), generator=generator) < 0.5)
            crop = image[:, top:top + side, left:left + side].float()[None] / 255.0
            crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear",
                                 antialias=True, align_corners=False)[0]
            crops[k] = crop.flip(-1) if flip else crop
        return crops.clamp_(0.0, 1.0)
