"""Evaluate a StyleVAE: reconstruction PSNR/SSIM, the ELBO, and style transfer on
content/style pairs against two baselines (the content unchanged, Lab colour transfer).

Style transfer is scored by the style distance to the style image under the held-out
`EVAL_SEED` features (lower is better) and the SSIM to the content image (higher keeps more
of the content). Neither number alone is a good transfer: the content unchanged has
SSIM 1, and copying the style image would have distance 0.
"""
import itertools

import torch

from .metrics import mean_finite, psnr, ssim
from .style_stats import (EVAL_SEED, RandomFeatures, color_transfer, statistics_distance,
                          style_statistics)

METHODS = {  # result key -> table label
    "stylevae": "StyleVAE",
    "content_unchanged": "content unchanged",
    "lab_transfer": "Lab colour transfer",
}


def _as_batch(images) -> tuple[torch.Tensor, list[str] | None]:
    """An ImageDataset, a (N, 3, H, W) tensor or a sequence of (3, H, W) -> (N, 3, H, W)."""
    names = getattr(images, "names", None)
    if torch.is_tensor(images):
        batch = images
    else:
        batch = torch.stack([images[i] for i in range(len(images))])
    if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[0] < 1:
        raise ValueError(f"evaluate: expected images (N, 3, H, W), got {tuple(batch.shape)}")
    return batch.float(), names


def select_pairs(n: int, pairs=None, seed: int = 0) -> list[tuple[int, int]]:
    """Ordered (content, style) index pairs of distinct images. pairs=None: all n(n-1);
    an int k: a fixed random subset of k (the same for every model, by `seed`); or an
    explicit list of (i, j)."""
    every = [(i, j) for i, j in itertools.permutations(range(n), 2)]
    if pairs is None:
        return every
    if isinstance(pairs, int):
        if pairs < 0:
            raise ValueError(f"pairs must be >= 0, got {pairs}")
        if pairs >= len(every):
            return every
        order = torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))
        return [every[k] for k in sorted(order[:pairs].tolist())]
    chosen = [(int(i), int(j)) for i, j in pairs]
    for i, j in chosen:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) out of range for {n} images")
    return chosen


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def evaluate(model, dataset_or_images, pairs=None, *, batch_size: int = 16,
             seed: int = 0) -> dict:
    """Score `model` on images (see the module doc). Returns a JSON-ready dict:
    images, size, pairs, reconstruction {psnr, ssim}, elbo {what model.elbo returns,
    averaged over images}, stylize {method: {style_distance, content_ssim}}.
    Deterministic: the model runs in eval mode under a fixed torch seed."""
    images, names = _as_batch(dataset_or_images)
    n = images.shape[0]
    device = _device(model)
    images = images.to(device)
    pair_list = select_pairs(n, pairs, seed=seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # any sampling inside elbo/stylize is reproducible
            results = {"images": n, "size": list(images.shape[-2:]), "pairs": len(pair_list)}
            if names is not None:
                results["names"] = list(names)
            results["reconstruction"] = _reconstruction(model, images, batch_size)
            results["elbo"] = _elbo(model, images, batch_size)
            results["stylize"] = _stylize(model, images, pair_list, batch_size)
    finally:
        model.train(was_training)
    return results


def _reconstruction(model, images, batch_size) -> dict:
    psnrs, ssims = [], []
    for x in _batches(images, batch_size):
        out = model.reconstruct(x).float().clamp(0.0, 1.0)
        psnrs.append(psnr(out, x))
        ssims.append(ssim(out, x))
    return {"psnr": mean_finite(torch.cat(psnrs)), "ssim": float(torch.cat(ssims).mean())}


def _elbo(model, images, batch_size) -> dict:
    """Each entry of model.elbo (a scalar batch mean or per-image values) averaged over
    all images, batches weighted by their size."""
    totals: dict[str, float] = {}
    for x in _batches(images, batch_size):
        for key, value in model.elbo(x).items():
            value = torch.as_tensor(value, dtype=torch.float64)
            totals[key] = totals.get(key, 0.0) + float(value.mean()) * x.shape[0]
    return {key: total / images.shape[0] for key, total in totals.items()}


def _stylize(model, images, pair_list, batch_size) -> dict:
    if not pair_list:
        return {}
    features = RandomFeatures(EVAL_SEED).to(images.device)
    image_stats = style_statistics(images, features)  # each style image's, computed once
    methods = {
        "stylevae": lambda c, s: model.stylize(c, s),
        "content_unchanged": lambda c, s: c,
        "lab_transfer": color_transfer,
    }
    scores = {key: {"style_distance": [], "content_ssim": []} for key in methods}
    for chunk in _batches(pair_list, batch_size):
        ci = torch.tensor([i for i, _ in chunk], device=images.device)
        si = torch.tensor([j for _, j in chunk], device=images.device)
        content, style = images[ci], images[si]
        style_stats = [s[si] for s in image_stats]
        for key, method in methods.items():
            out = method(content, style).float().clamp(0.0, 1.0)
            distance = statistics_distance(style_statistics(out, features), style_stats)
            scores[key]["style_distance"].append(distance)
            scores[key]["content_ssim"].append(ssim(out, content))
    return {key: {metric: float(torch.cat(values).mean()) for metric, values in s.items()}
            for key, s in scores.items()}


def format_table(results: dict) -> str:
    """The results of `evaluate` as a plain-text table."""
    h, w = results["size"]
    lines = [f"{results['images']} images at {h}x{w}, {results['pairs']} content/style pairs",
             "",
             f"reconstruction   PSNR {results['reconstruction']['psnr']:.2f} dB   "
             f"SSIM {results['reconstruction']['ssim']:.4f}"]
    elbo = results.get("elbo", {})
    if elbo:
        lines.append("ELBO             " + "   ".join(
            f"{key} {value:.4g}" for key, value in elbo.items()))
    if results.get("stylize"):
        lines += ["", f"{'style transfer':<22}{'style distance (lower)':>24}"
                      f"{'content SSIM (higher)':>24}"]
        for key, scores in results["stylize"].items():
            lines.append(f"  {METHODS.get(key, key):<20}{scores['style_distance']:>24.5f}"
                         f"{scores['content_ssim']:>24.4f}")
    return "\n".join(lines)
