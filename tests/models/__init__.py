"""Generators and decoders people already have, re-typed from their public sources (each
file's docstring cites the repository and path), with width arguments so tests run small.
MODELS maps a name to (constructor of a small model, input of a batch, how many of its
ConvTranspose2d fastvae.fuse is expected to fuse)."""
import torch

from . import cyclegan_resnet, dcgan, gn_decoders, pix2pix_unet, vanilla_vae

MODELS = {
    "dcgan": (lambda: dcgan.Generator(nz=7, ngf=4, nc=3),
              lambda n: torch.randn(n, 7, 1, 1), 5),
    "vanilla_vae": (lambda: vanilla_vae.VanillaVAEDecoder(latent_dim=6, hidden_dims=[4, 6, 8, 10, 12]),
                    lambda n: torch.randn(n, 6), 5),
    "cyclegan_resnet": (lambda: cyclegan_resnet.ResnetGenerator(3, 3, ngf=4, n_blocks=2),
                        lambda n: torch.randn(n, 3, 16, 16), 2),
    "pix2pix_unet": (lambda: pix2pix_unet.UnetGenerator(3, 3, num_downs=5, ngf=4),
                     lambda n: torch.randn(n, 3, 32, 32), 5),
    "gn8_leaky_decoder": (lambda: gn_decoders.GroupNormLeakyDecoder(latent=8, widths=(16, 16, 8)),
                          lambda n: torch.randn(n, 8, 4, 4), 3),
    "gn32_silu_decoder": (lambda: gn_decoders.GroupNormSiLUDecoder(latent=4, widths=(64, 32, 32)),
                          lambda n: torch.randn(n, 4, 4, 4), 3),
}
