"""`fastvae mix`: stylize content images with a weighted, optionally masked, mix of styles.

The command's steps as functions: weights checked and normalized, masks loaded in the
content's geometry, colour preservation in Lab, and one output file per content image.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

from .data import IMAGE_EXTENSIONS, center_crop, list_images, load_image, resize_short_side, \
    save_image
from .metrics import luminance
from .style_stats import lab_to_rgb, rgb_to_lab


def normalize_weights(weights, n_styles: int) -> list[float]:
    """Equal weights when None; otherwise `n_styles` non-negative numbers scaled to sum 1."""
    if weights is None:
        return [1.0 / n_styles] * n_styles
    weights = [float(w) for w in weights]
    if len(weights) != n_styles:
        raise ValueError(f"--weights: got {len(weights)} weights for {n_styles} styles "
                         "(give one per --style)")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights: need non-negative numbers with a positive sum, got "
                         f"{weights}")
    total = sum(weights)
    return [w / total for w in weights]


def load_mask(path, content_hw: tuple[int, int], size: int) -> torch.Tensor:
    """A mask image -> (1, 1, size, size) in [0, 1] (its luminance) over the output.

    A mask with the content's aspect ratio gets the content's own resize and centre crop,
    so it stays aligned with what was drawn on it; any other mask is stretched to the
    output."""
    mask = luminance(_read("--mask", path)[None])[0]             # (1, H, W)
    h, w = mask.shape[-2:]
    if abs(h / w - content_hw[0] / content_hw[1]) < 0.01:
        mask = center_crop(resize_short_side(mask, size), size)
    else:
        mask = torch.nn.functional.interpolate(mask[None], size=(size, size), mode="bilinear",
                                               antialias=True, align_corners=False)[0]
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
    """content (1, 3, S, S), styles [(1, 3, S, S)], masks [(1, 1, S, S)] -> (1, 3, S, S)."""
    out = model.mix(content, styles, weights=weights, alpha=alpha, masks=masks)
    out = out.float().clamp(0.0, 1.0)
    return preserve_color(out, content.float()) if keep_color else out


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
        raise FileNotFoundError(f"CONTENT: no such file or folder: {content}")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"-o: give an image file name such as out.png, got {out}")
    return [(content, out)]


def _read(flag: str, path, size=None) -> torch.Tensor:
    try:
        return load_image(path, size)
    except OSError as error:  # unreadable, truncated, not an image
        raise ValueError(f"{flag}: cannot read {path}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("content", metavar="CONTENT",
                        help="a content image, or a folder of them (then -o is a folder)")
    parser.add_argument("--checkpoint", required=True,
                        help="a StyleVAE checkpoint file or training run folder")
    parser.add_argument("--style", action="append", required=True, metavar="IMAGE",
                        help="a style image; repeat to mix several")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one weight per --style (normalized to sum 1; default equal)")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="0 keeps the content's own style, 1 applies the mix (default 1)")
    parser.add_argument("--mask", action="append", metavar="IMAGE",
                        help="a grayscale mask per --style, in order: where each style applies")
    parser.add_argument("--preserve-color", action="store_true",
                        help="keep the content's colours: lightness from the output, Lab a/b "
                             "from the content")
    parser.add_argument("--size", type=int,
                        help="output side in pixels (short side resized, centre crop; default "
                             "the model's training size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the output image, or folder when CONTENT is a folder")


def run(args, parser: argparse.ArgumentParser, load_model) -> int:
    """Check every argument before the model runs; problems end as parser errors."""
    try:
        weights = normalize_weights(args.weights, len(args.style))
        if args.mask is not None and len(args.mask) != len(args.style):
            raise ValueError(f"--mask: got {len(args.mask)} masks for {len(args.style)} "
                             "styles (give one per --style, or none)")
        for flag, paths in (("--style", args.style), ("--mask", args.mask or [])):
            for path in paths:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"{flag}: no such file: {path}")
        if not math.isfinite(args.alpha):
            raise ValueError(f"--alpha: must be a finite number, got {args.alpha}")
        if args.size is not None and args.size < 8:
            raise ValueError(f"--size: must be at least 8 pixels, got {args.size}")
        jobs = _output_paths(Path(args.content), Path(args.output))
        model = load_model(args.checkpoint, args.device)
        size = args.size or model.config.image_size
        device = torch.device(args.device)
        styles = [_read("--style", p, size)[None].to(device) for p in args.style]
    except (ValueError, OSError) as error:
        parser.error(str(error))
    for content_path, out_path in jobs:
        try:
            original = _read("CONTENT", content_path)
            masks = None
            if args.mask:
                masks = [load_mask(p, tuple(original.shape[-2:]), size).to(device)
                         for p in args.mask]
        except (ValueError, OSError) as error:
            if len(jobs) == 1:
                parser.error(str(error))
            print(f"fastvae mix: skipping {content_path}: {error}", file=sys.stderr)
            continue
        content = center_crop(resize_short_side(original, size), size)[None].to(device)
        out = mix_image(model, content, styles, weights, alpha=args.alpha, masks=masks,
                        keep_color=args.preserve_color)
        save_image(out, out_path)
        print(out_path)
    return 0
