"""Two VAE decoders of the shape diffusion-era autoencoders use, written here (no single
public source): each up step ConvTranspose2d(4, 2, 1) + GroupNorm + activation in one
nn.Sequential, a 3x3 Conv2d to RGB at the end.
  GroupNormLeakyDecoder: GroupNorm(8) + LeakyReLU(0.2)
  GroupNormSiLUDecoder:  GroupNorm(32) + SiLU (the GN32+SiLU decoder of bench_shapes.py)"""
from torch import nn


def _decoder(latent, widths, norm, act):
    layers, cin = [], latent
    for cout in widths:
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), norm(cout), act()]
        cin = cout
    layers += [nn.Conv2d(cin, 3, 3, padding=1)]
    return nn.Sequential(*layers)


class GroupNormLeakyDecoder(nn.Module):
    def __init__(self, latent=16, widths=(256, 128, 64, 32)):
        super().__init__()
        self.net = _decoder(latent, widths, lambda c: nn.GroupNorm(8, c),
                            lambda: nn.LeakyReLU(0.2))

    def forward(self, z):
        return self.net(z)


class GroupNormSiLUDecoder(nn.Module):
    def __init__(self, latent=4, widths=(512, 256, 128)):
        super().__init__()
        self.net = _decoder(latent, widths, lambda c: nn.GroupNorm(32, c), nn.SiLU)

    def forward(self, z):
        return self.net(z)
