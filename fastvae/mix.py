"""`fastvae mix`: stylize content images with a weighted, optionally masked, mix of styles.

The command's steps as functions: weights checked and normalized, images fitted to the
model's size grid, masks loaded in the content's geometry, colour preservation in Lab,
and one output file per content image.
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import IMAGE_EXTENSIONS, center_crop, list_images, load_image, resize_short_side, \
    save_image
from .metrics import luminance
from .style_stats import lab_to_rgb, rgb_to_lab


def normalize_weights(weights, n_styles: int, masked: bool = False) -> list[float]:
    """`n_styles` non-negative weights (equal when None) scaled to sum 1.

    With masks each weight is the strength of a style inside its own mask, so they are
    scaled to a largest weight of 1 instead: equal weights then apply every style fully
    in its region (summing to 1 would leave each region half in the content's own style).
    """
    if weights is None:
        weights = [1.0] * n_styles
    weights = [float(w) for w in weights]
    if len(weights) != n_styles:
        raise ValueError(f"--weights: got {len(weights)} weights for {n_styles} styles "
                         "(give one per --style)")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights: need non-negative numbers with a positive sum, got "
                         f"{weights}")
    total = max(weights) if masked else sum(weights)
    return [w / total for w in weights]


def fit(image: torch.Tensor, size: int, multiple: int) -> torch.Tensor:
    """(C, H, W) -> short side `size` (aspect kept), centre-cropped so both sides are
    multiples of `multiple` (the model's downsampling factor)."""
    image = resize_short_side(image, size)
    h, w = image.shape[-2:]
    return center_crop(image, (h - h % multiple, w - w % multiple))


def load_mask(path, content_hw: tuple[int, int], size: int, out_hw: tuple[int, int]):
    """A mask image -> (1, 1, *out_hw) in [0, 1] (its luminance).

    A mask with the content file's aspect ratio (content_hw) gets the content's own
    resize (short side `size`) and centre crop, so it stays aligned with what was drawn
    on the content; any other mask is stretched to the output."""
    mask = luminance(_read("--mask", path)[None])[0]             # (1, H, W)
    h, w = mask.shape[-2:]
    if abs(h / w - content_hw[0] / content_hw[1]) < 0.01:
        mask = resize_short_side(mask, size)
        if all(m >= o for m, o in zip(mask.shape[-2:], out_hw)):  # else off by rounding
            mask = center_crop(mask, out_hw)
    if tuple(mask.shape[-2:]) != tuple(out_hw):
        mask = F.interpolate(mask[None], size=out_hw, mode="bilinear", antialias=True,
                             align_corners=False)[0]
    return mask.clamp(0.0, 1.0)[None]


def preserve_color(output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The output's lightness with the content's colour: L from `output`, a and b from
    `content` (CIE Lab), so the style changes texture and tone but not hue."""
    out_lab, content_lab = rgb_to_lab(output), rgb_to_lab(content)
    lab = torch.cat([out_lab[:, :1], content_lab[:, 1:]], dim=1)
    return lab_to_rgb(lab).to(output.dtype).clamp(0.0, 1.0)


@torch.no_grad()
def mix_image(model, content: torch.Tensor, styles: list[torch.Tensor], weights: list[float],
              alpha: float = 1.0, masks: list[torch.Tensor] | None = None,
              keep_color: bool = False) -> torch.Tensor:
    """content (1, 3, H, W), styles [(1, 3, H', W')], masks [(1, 1, H, W)] -> (1, 3, H, W)."""
    out = model.mix(content, styles, weights=weights, alpha=alpha, masks=masks)
    out = out.float().clamp(0.0, 1.0)
    return preserve_color(out, content.float()) if keep_color else out


def _read(flag: str, path, size=None) -> torch.Tensor:
    try:
        return load_image(path, size)
    except OSError as error:  # unreadable, truncated, not an image
        raise ValueError(f"{flag}: cannot read {path}: {error}") from None


def _output_paths(content: Path, out: Path) -> list[tuple[Path, Path]]:
    """(content file, output file) pairs: a folder maps to a folder of PNGs (sub-folders
    kept), a file to `out` itself."""
    if content.is_dir():
        if out.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"-o: CONTENT is a folder, so -o must be a folder, got {out}")
        files = list_images(content)
        if not files:
            raise ValueError(f"CONTENT: no images in folder {content}")
        return [(f, (out / f.relative_to(content)).with_suffix(".png")) for f in files]
    if not content.is_file():
        raise ValueError(f"CONTENT: no such file or folder: {content}")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"-o: give an image file name such as out.png, got {out}")
    return [(content, out)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("content", metavar="CONTENT",
                        help="a content image, or a folder of them (then -o is a folder)")
    parser.add_argument("--checkpoint", required=True,
                        help="a StyleVAE checkpoint file or training run folder")
    parser.add_argument("--style", action="append", required=True, metavar="IMAGE",
                        help="a style image; repeat to mix several")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one weight per --style (default equal); normalized to sum 1, "
                             "or with --mask to a largest weight of 1")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="0 keeps the content's own style, 1 applies the mix (default 1)")
    parser.add_argument("--mask", action="append", metavar="IMAGE",
                        help="a grayscale mask per --style, in order: where each style "
                             "applies (white); the content keeps its own style where no "
                             "mask covers it")
    parser.add_argument("--preserve-color", action="store_true",
                        help="keep the content's colours: lightness from the output, Lab a/b "
                             "from the content")
    parser.add_argument("--size", type=int,
                        help="short side of the output in pixels, aspect kept (default: the "
                             "model's training size); style images get the same short side")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the output image, or folder when CONTENT is a folder")


def run(args, parser: argparse.ArgumentParser, load_model) -> int:
    """Check every argument before the model runs; problems end as parser errors."""
    try:
        if args.mask is not None and len(args.mask) != len(args.style):
            raise ValueError(f"--mask: got {len(args.mask)} masks for {len(args.style)} "
                             "styles (give one per --style, or none)")
        weights = normalize_weights(args.weights, len(args.style), masked=bool(args.mask))
        for flag, paths in (("--style", args.style), ("--mask", args.mask or [])):
            for path in paths:
                if not Path(path).is_file():
                    raise ValueError(f"{flag}: no such file: {path}")
        if not math.isfinite(args.alpha):
            raise ValueError(f"--alpha: must be a finite number, got {args.alpha}")
        jobs = _output_paths(Path(args.content), Path(args.output))
    except ValueError as error:
        parser.error(str(error))
    model = load_model(args.checkpoint, args.device)
    multiple = model.config.content_downsample
    size = args.size or model.config.image_size
    if size < multiple:
        parser.error(f"--size: must be at least {multiple} (the model's downsampling), got "
                     f"{size}")
    device = torch.device(args.device)
    try:
        styles = [fit(_read("--style", p), size, multiple)[None].to(device) for p in args.style]
    except ValueError as error:
        parser.error(str(error))
    for content_path, out_path in jobs:
        try:
            original = _read("CONTENT", content_path)
            content = fit(original, size, multiple)[None].to(device)
            out_hw = tuple(content.shape[-2:])
            masks = None
            if args.mask:
                masks = [load_mask(p, tuple(original.shape[-2:]), size, out_hw).to(device)
                         for p in args.mask]
        except ValueError as error:
            if len(jobs) == 1:
                parser.error(str(error))
            print(f"fastvae mix: skipping {content_path}: {error}", file=sys.stderr)
            continue
        out = mix_image(model, content, styles, weights, alpha=args.alpha, masks=masks,
                        keep_color=args.preserve_color)
        save_image(out, out_path)
        print(out_path)
    return 0
