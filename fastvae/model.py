"""StyleVAE: a VAE with a spatial content latent and a vector style latent.

    content encoder: x (N,3,H,W) -> q(zc | x), zc (N, Cc, H/f, W/f)   structure
    style encoder:   x (N,3,H,W) -> q(zs | x), zs (N, S)              global statistics
    decoder:         zc -> conv -> res block -> DeconvBlock x log2(f) -> conv -> sigmoid
                     every DeconvBlock normalizes and takes its AdaIN scale/shift from zs

Both latents are sampled by the fused `fastvae.reparam_kl`; the decoder blocks are the
fused `fastvae.deconv_block`; `backend` goes to every fused op. The training loss
(`forward`) adds, to the ELBO, terms that make the latents mean what they say: the
decoding of (content of A, style of B) must carry B's style statistics, A's structure,
and re-encode to A's content and B's style.

Images in and out are (N, 3, H, W) floats in [0, 1]. The decoder likelihood is a
Gaussian discretized to 8-bit pixels, with a learned per-channel scale (`elbo`).
"""
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses
from .nn import DeconvBlock
from .ops import reparam_kl
from .style_stats import EVAL_SEED, RandomFeatures, statistics_distance, style_statistics

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' clamp: exp() stays finite in float16/32
MODEL_FILE = "model.safetensors"
FORMAT = "fastvae.StyleVAE/1"


@dataclass
class StyleVAEConfig:
    image_size: int = 64          # training resolution (64..256); any multiple of the
                                  # downsampling factor works at inference
    base_channels: int = 16       # width at full resolution, doubled per halving (max 8x)
    content_channels: int = 16    # channels of the spatial content latent
    content_downsample: int = 4   # content latent at 1/4 resolution: keeps the structure
    style_dim: int = 32           # size of the style vector
    beta_content: float = 0.02    # KL weight of the content latent (low: it must carry detail)
    beta_style: float = 1.0       # KL weight of the style latent
    kl_warmup_steps: int = 200    # both betas ramp from 0 over these steps
    free_bits: float = 0.0        # nats per latent dim each channel may use for free (0: off)
    recon_scale: float = 0.1      # the Gaussian sigma the training loss assumes: MSE / (2 s^2)
    style_weight: float = 100.0   # swapped decoding vs the style image's statistics
    structure_weight: float = 1.0  # swapped decoding vs the content image's structure
    latent_weight: float = 1.0    # swapped decoding re-encodes to (content A, style B)
    style_features_seed: int = 0  # RandomFeatures seed of the style loss (never the eval seed)
    backend: str = "auto"         # backend of every fused op

    def __post_init__(self):
        f = self.content_downsample
        if f < 2 or f & (f - 1):
            raise ValueError(f"content_downsample must be a power of two >= 2, got {f}")
        if not 16 <= self.image_size <= 512 or self.image_size % f:
            raise ValueError(f"image_size must be in [16, 512] and divisible by "
                             f"content_downsample={f}, got {self.image_size}")
        if self.style_features_seed == EVAL_SEED:
            raise ValueError(f"style_features_seed must differ from style_stats.EVAL_SEED="
                             f"{EVAL_SEED}: the evaluation's features are held out from the loss")
        for name in ("base_channels", "content_channels", "style_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.content_downsample))

    def channels(self, level: int) -> int:
        """Width at resolution 1 / 2**level."""
        return self.base_channels * min(2**level, 8)


def _conv(cin, cout, k=3, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 if stride == 1 else 1)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.InstanceNorm2d(channels, affine=True), nn.LeakyReLU(0.2), _conv(channels, channels),
            nn.InstanceNorm2d(channels, affine=True), nn.LeakyReLU(0.2), _conv(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ContentEncoder(nn.Module):
    """Strided convs with instance norm (which strips per-channel style statistics)."""

    def __init__(self, c: StyleVAEConfig):
        super().__init__()
        layers = [_conv(3, c.channels(0)), nn.InstanceNorm2d(c.channels(0), affine=True),
                  nn.LeakyReLU(0.2)]
        for i in range(1, c.levels + 1):
            layers += [_conv(c.channels(i - 1), c.channels(i), 4, 2),
                       nn.InstanceNorm2d(c.channels(i), affine=True), nn.LeakyReLU(0.2)]
        layers += [_ResBlock(c.channels(c.levels)), nn.LeakyReLU(0.2),
                   nn.Conv2d(c.channels(c.levels), 2 * c.content_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (N,3,H,W) -> mu, logvar (N, Cc, H/f, W/f)
        return self.net(x).chunk(2, dim=1)


def _mean_std(h: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 2C): per-channel mean and std, the statistics AdaIN transfers."""
    h = h.float().flatten(2)
    return torch.cat([h.mean(2), (h.var(2, unbiased=False) + 1e-5).sqrt()], dim=1)


class StyleEncoder(nn.Module):
    """Convs whose channel means and stds (not positions) feed an MLP: style is global."""

    def __init__(self, c: StyleVAEConfig):
        super().__init__()
        widths = [c.channels(min(i, 2)) for i in range(3)]
        self.convs = nn.ModuleList([
            _conv(3, widths[0]), _conv(widths[0], widths[1], 4, 2), _conv(widths[1], widths[2], 4, 2)])
        hidden = max(4 * c.style_dim, 64)
        self.head = nn.Sequential(nn.Linear(2 * (3 + sum(widths)), hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, 2 * c.style_dim))

    def forward(self, x):  # (N,3,H,W) -> mu, logvar (N, S)
        stats, h = [_mean_std(x)], x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            stats.append(_mean_std(h))
        return self.head(torch.cat(stats, dim=1).to(x.dtype)).chunk(2, dim=1)


class Decoder(nn.Module):
    def __init__(self, c: StyleVAEConfig):
        super().__init__()
        low = c.channels(c.levels)
        self.stem = nn.Sequential(_conv(c.content_channels, low), nn.LeakyReLU(0.2), _ResBlock(low))
        self.blocks = nn.ModuleList([
            DeconvBlock(c.channels(i), c.channels(i - 1), norm="instance",
                        style_dim=c.style_dim, backend=c.backend)
            for i in range(c.levels, 0, -1)])
        self.out = _conv(c.channels(0), 3)

    def adain(self, zs: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per block (scale, shift), each (N, Cout): 1 + linear(zs) and linear(zs)."""
        params = []
        for block in self.blocks:
            scale, shift = block.style(zs).chunk(2, dim=1)
            params.append((scale + 1, shift))
        return params

    def forward(self, zc: Tensor, params: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        h = self.stem(zc)
        for block, (scale, shift) in zip(self.blocks, params):
            h = block.apply_block(h, scale, shift)
        return torch.sigmoid(self.out(h))


class StyleVAE(nn.Module):
    def __init__(self, config: Optional[StyleVAEConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = StyleVAEConfig(**overrides)
        elif overrides:
            config = StyleVAEConfig(**{**asdict(config), **overrides})
        self.config = config
        self.content_encoder = ContentEncoder(config)
        self.style_encoder = StyleEncoder(config)
        self.decoder = Decoder(config)
        # per-channel log sigma of the decoder likelihood; fitted to the detached
        # reconstruction, so it calibrates bits/dim without reweighting the training loss
        self.log_scale = nn.Parameter(torch.full((3, 1, 1), math.log(0.1)))
        # the style loss's fixed random features: non-persistent buffers, so they follow
        # .to() but stay out of the saved file (the seed in the config rebuilds them)
        self.style_features = RandomFeatures(seed=config.style_features_seed)

    # ------------------------------------------------------------------ latents

    def encode(self, x: Tensor) -> dict:
        """Posterior parameters: content_mu/content_logvar (N, Cc, H/f, W/f), style_mu/style_logvar (N, S)."""
        self._check_images("x", x)
        c_mu, c_logvar = self.content_encoder(x)
        s_mu, s_logvar = self.style_encoder(x)
        return {"content_mu": c_mu, "content_logvar": c_logvar.clamp(LOGVAR_MIN, LOGVAR_MAX),
                "style_mu": s_mu, "style_logvar": s_logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)}

    def _sample(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """z ~ q (z = mu in eval mode) and the KL of each latent channel summed over the batch.

        The fused op sums its KL over every dim but the first, so the channel dim goes
        first: the per-channel KL is what free bits needs. The noise seed comes from
        torch's generator, so torch.manual_seed (and a restored RNG state) governs it.
        """
        mu_t, logvar_t = mu.transpose(0, 1), logvar.transpose(0, 1)  # (C, N, ...)
        eps = None if self.training else torch.zeros_like(mu_t)
        z, kl = reparam_kl(mu_t, logvar_t, eps, reduction="none", backend=self.config.backend)
        return z.transpose(0, 1), kl

    def decode(self, content_z: Tensor, style_z: Tensor) -> Tensor:
        """(N, Cc, h, w) content and (N, S) style latents -> images (N, 3, h*f, w*f)."""
        if content_z.dim() != 4 or content_z.shape[1] != self.config.content_channels:
            raise ValueError(f"content_z must be (N, {self.config.content_channels}, h, w), "
                             f"got {tuple(content_z.shape)}")
        if style_z.dim() != 2 or style_z.shape[1] != self.config.style_dim:
            raise ValueError(f"style_z must be (N, {self.config.style_dim}), got {tuple(style_z.shape)}")
        if style_z.shape[0] != content_z.shape[0]:
            raise ValueError(f"content_z has batch {content_z.shape[0]} but style_z has {style_z.shape[0]}")
        return self.decoder(content_z, self.decoder.adain(style_z))

    # ------------------------------------------------------------------ training loss

    def forward(self, x: Tensor, step: int = 0) -> dict:
        """Scalar loss terms of a batch; "loss" is the total to minimize.

        kl_* are nats per image; recon, style, structure and the latent terms are means.
        The swap pairs each image A with B = the batch rolled by one.
        """
        c = self.config
        post = self.encode(x)
        n, dims = x.shape[0], x[0].numel()
        zc, kl_c = self._sample(post["content_mu"], post["content_logvar"])  # kl: (Cc,)
        zs, kl_s = self._sample(post["style_mu"], post["style_logvar"])      # kl: (S,)
        # one decoder pass for the reconstruction (A, A) and the swap (content A, style B)
        out = self.decode(torch.cat([zc, zc]), torch.cat([zs, zs.roll(1, 0)]))
        recon, swap = out[:n], out[n:]

        mse = (recon.float() - x.float()).square().mean()
        kl_c_img, kl_s_img = kl_c.sum() / n, kl_s.sum() / n
        kl_c_fb = losses.free_bits(kl_c / n, c.free_bits, zc[0, 0].numel())
        kl_s_fb = losses.free_bits(kl_s / n, c.free_bits, 1)
        elbo_term = (mse / (2 * c.recon_scale**2)
                     + (losses.kl_weight(c.beta_content, step, c.kl_warmup_steps) * kl_c_fb
                        + losses.kl_weight(c.beta_style, step, c.kl_warmup_steps) * kl_s_fb) / dims)
        # the likelihood's scale follows the (detached) reconstruction error
        scale_nll = losses.gaussian_nll(x, recon.detach(), self.log_scale).mean() / dims

        target_stats = [s.roll(1, 0).detach() for s in style_statistics(x.float(), self.style_features)]
        style = statistics_distance(style_statistics(swap.float(), self.style_features), target_stats).mean()
        structure = losses.structure_loss(swap, x).mean()
        swap_post = self.encode(swap)
        content_cycle = losses.latent_distance(swap_post["content_mu"], post["content_mu"].detach()).mean()
        style_cycle = losses.latent_distance(swap_post["style_mu"], post["style_mu"].roll(1, 0).detach()).mean()

        loss = (elbo_term + scale_nll + c.style_weight * style + c.structure_weight * structure
                + c.latent_weight * (content_cycle + style_cycle))
        return {"loss": loss, "recon": mse, "kl_content": kl_c_img, "kl_style": kl_s_img,
                "style": style, "structure": structure, "content_cycle": content_cycle,
                "style_cycle": style_cycle, "scale_nll": scale_nll}

    # ------------------------------------------------------------------ inference

    def _check_images(self, name: str, x) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of images (N, 3, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be images (N, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch")
        f = self.config.content_downsample
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"{name}: height and width must be multiples of {f} "
                             f"(content_downsample), got {tuple(x.shape[2:])}")

    def _style_latent(self, name: str, style, n: int) -> Tensor:
        """Images (N or 1, 3, H, W) -> their posterior mean; latents (N or 1, S) pass through."""
        if isinstance(style, Tensor) and style.dim() == 2:
            if style.shape[1] != self.config.style_dim:
                raise ValueError(f"{name}: a style latent must be (N, {self.config.style_dim}), "
                                 f"got {tuple(style.shape)}")
            zs = style
        else:
            self._check_images(name, style)
            zs = self.style_encoder(style)[0]
        if zs.shape[0] not in (1, n):
            raise ValueError(f"{name} has batch {zs.shape[0]}; it must be 1 or {n} (the content's)")
        return zs.expand(n, -1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoding of the posterior means."""
        post = self.encode(x)
        return self.decode(post["content_mu"], post["style_mu"])

    @torch.no_grad()
    def stylize(self, content: Tensor, style, alpha: float = 1.0) -> Tensor:
        """content's structure in style's style; alpha=0 is the reconstruction of content.

        style: images (N or 1, 3, H', W') of any size, or style latents (N or 1, S).
        alpha blends the content's own style latent (0) with the target's (1).
        """
        return self.mix(content, [style], None, alpha)

    @torch.no_grad()
    def mix(self, content: Tensor, styles: Sequence, weights: Optional[Sequence[float]] = None,
            alpha: float = 1.0, masks: Optional[Sequence[Tensor]] = None) -> Tensor:
        """Several styles on one content.

        Without masks: the style latents averaged with `weights` (normalized to sum 1).
        With masks (one soft mask (N or 1, 1, H, W) per style, any resolution): each
        style rules its own region. Every decoder block gets spatial AdaIN parameters,
        the per-style ones blended by the masks resized to the block's resolution;
        where the masks (times weights) sum to less than one the content keeps its own
        style for the rest. alpha then blends with the content's own style everywhere.
        """
        self._check_images("content", content)
        if isinstance(styles, Tensor) or not isinstance(styles, (list, tuple)) or not styles:
            raise TypeError("styles must be a non-empty list of style images or latents")
        n = content.shape[0]
        zs = [self._style_latent(f"styles[{i}]", s, n) for i, s in enumerate(styles)]
        w = self._weights(weights, len(styles), masks is None)
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        c_mu = self.content_encoder(content)[0]
        own = self.style_encoder(content)[0]
        if masks is None:
            target = sum(wi * z for wi, z in zip(w, zs))
            return self.decode(c_mu, (1 - alpha) * own + alpha * target)
        masks = self._masks(masks, len(styles), content)  # (K, N, 1, H, W), weighted
        masks = masks * torch.tensor(w, dtype=masks.dtype, device=masks.device).view(-1, 1, 1, 1, 1)
        covered = masks.sum(0, keepdim=True)
        rest = (1 - covered).clamp_min(0)  # the content's own style fills what masks leave
        masks = torch.cat([masks, rest]) / (covered + rest).clamp_min(1e-8)
        per_style = [self.decoder.adain(z) for z in zs + [own]]  # K+1 lists of (scale, shift)
        own_params = per_style[-1]
        h = self.decoder.stem(c_mu)
        for b, block in enumerate(self.decoder.blocks):
            size = (2 * h.shape[2], 2 * h.shape[3])
            m = F.interpolate(masks.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
            m = m.view(len(per_style), n, 1, *size)
            scale = sum(m[k] * p[b][0][:, :, None, None] for k, p in enumerate(per_style))
            shift = sum(m[k] * p[b][1][:, :, None, None] for k, p in enumerate(per_style))
            scale = (1 - alpha) * own_params[b][0][:, :, None, None] + alpha * scale
            shift = (1 - alpha) * own_params[b][1][:, :, None, None] + alpha * shift
            h = block.apply_block(h, scale, shift)  # spatial AdaIN: (N, Cout, 2h, 2w)
        return torch.sigmoid(self.decoder.out(h))

    @staticmethod
    def _weights(weights, k: int, normalize: bool) -> list[float]:
        if weights is None:
            return [1.0 / k] * k if normalize else [1.0] * k
        weights = [float(v) for v in weights]
        if len(weights) != k:
            raise ValueError(f"weights has {len(weights)} entries but there are {k} styles")
        if any(v < 0 or not math.isfinite(v) for v in weights):
            raise ValueError(f"weights must be finite and >= 0, got {weights}")
        total = sum(weights)
        if normalize:
            if total <= 0:
                raise ValueError("weights must not all be zero")
            return [v / total for v in weights]
        return weights

    @staticmethod
    def _masks(masks, k: int, content: Tensor) -> Tensor:
        if isinstance(masks, Tensor) or len(masks) != k:
            raise ValueError(f"masks must be a list of {k} tensors (one per style)")
        n, out = content.shape[0], []
        for i, m in enumerate(masks):
            if not isinstance(m, Tensor) or m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, n):
                shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"masks[{i}] must be (N or 1, 1, H, W) with N={n}, got {shape}")
            m = m.to(device=content.device, dtype=torch.float32).clamp(0, 1)
            m = F.interpolate(m, size=content.shape[2:], mode="bilinear", align_corners=False)
            out.append(m.expand(n, -1, -1, -1))
        return torch.stack(out)

    @torch.no_grad()
    def sample(self, n: int, content: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """n images with styles from the prior; content from the prior too unless given."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        c = self.config
        p = next(self.parameters())
        zs = torch.randn(n, c.style_dim, generator=generator, device=p.device, dtype=p.dtype)
        if content is None:
            side = c.image_size // c.content_downsample
            zc = torch.randn(n, c.content_channels, side, side, generator=generator,
                             device=p.device, dtype=p.dtype)
        else:
            self._check_images("content", content)
            if content.shape[0] not in (1, n):
                raise ValueError(f"content has batch {content.shape[0]}; it must be 1 or n={n}")
            zc = self.content_encoder(content)[0].expand(n, -1, -1, -1)
        return self.decode(zc, zs)

    @torch.no_grad()
    def interpolate(self, content: Tensor, style_a, style_b, steps: int = 5) -> Tensor:
        """(steps, N, 3, H, W): content stylized along the line from style_a to style_b."""
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        self._check_images("content", content)
        n = content.shape[0]
        za, zb = self._style_latent("style_a", style_a, n), self._style_latent("style_b", style_b, n)
        c_mu = self.content_encoder(content)[0]
        return torch.stack([self.decode(c_mu, za + (zb - za) * (i / (steps - 1)))
                            for i in range(steps)])

    @torch.no_grad()
    def elbo(self, x: Tensor, samples: int = 1) -> dict:
        """Per-image (N,) negative ELBO terms of 8-bit images, from `samples` posterior draws.

        recon: -log p(x | z) in nats under the discretized Gaussian (8-bit bins, learned
        per-channel scale); kl_content, kl_style in nats; bits_per_dim the sum over
        3*H*W dims in bits. z is drawn from q whatever the train/eval mode.
        """
        post = self.encode(x)
        recon = x.new_zeros(x.shape[0], dtype=torch.float32)
        for _ in range(samples):
            zc, kl_c = reparam_kl(post["content_mu"], post["content_logvar"],
                                  reduction="none", backend=self.config.backend)
            zs, kl_s = reparam_kl(post["style_mu"], post["style_logvar"],
                                  reduction="none", backend=self.config.backend)
            recon += losses.discretized_gaussian_nll(x, self.decode(zc, zs), self.log_scale.float())
        recon /= samples
        dims = x[0].numel()
        bpd = (recon + kl_c.float() + kl_s.float()) / (dims * math.log(2))
        return {"bits_per_dim": bpd, "recon": recon, "kl_content": kl_c.float(), "kl_style": kl_s.float()}

    # ------------------------------------------------------------------ files

    def save(self, path: str) -> None:
        """One .safetensors file (written atomically): weights, config JSON in its metadata."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, path, {"format": FORMAT, "config": json.dumps(asdict(self.config))})

    @classmethod
    def load(cls, path: str, backend: Optional[str] = None, map_location="cpu") -> "StyleVAE":
        """A model saved by `save`, or RUN_DIR/model.safetensors of a training run."""
        from safetensors import safe_open
        if os.path.isdir(path):
            path = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no StyleVAE file at {path}")
        with safe_open(path, framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            if "config" not in meta:
                raise ValueError(f"{path} has no StyleVAE config in its metadata")
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = config_from_json(meta["config"])
        if backend is not None:
            config.backend = backend
        model = cls(config)
        model.load_state_dict(state)
        return model


def config_from_json(text: str) -> StyleVAEConfig:
    """The config of a saved model; keys this version does not know are ignored."""
    known = {f.name for f in fields(StyleVAEConfig)}
    return StyleVAEConfig(**{k: v for k, v in json.loads(text).items() if k in known})


def save_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors file written to a temp file in the same folder, fsynced, then renamed.

    A crash mid-write leaves the previous file whole: os.replace is atomic.
    """
    from safetensors.torch import save
    data = save(tensors, metadata=metadata)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
