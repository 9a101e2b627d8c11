"""The DCGAN generator of pytorch/examples, `dcgan/main.py` (class Generator / _netG):
ConvTranspose2d(nz, 8 ngf, 4, 1, 0) on the 1x1 latent, then three 4/2/1 up-convolutions,
each without bias and followed by BatchNorm2d and ReLU, and a last 4/2/1 to nc channels with
Tanh: 64x64 images from a (N, nz, 1, 1) latent."""
from torch import nn


class Generator(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()

        def up(cin, cout, stride=2, padding=1):
            return [nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.main = nn.Sequential(
            *up(nz, ngf * 8, stride=1, padding=0),  # 4 x 4
            *up(ngf * 8, ngf * 4),                 # 8 x 8
            *up(ngf * 4, ngf * 2),                 # 16 x 16
            *up(ngf * 2, ngf),                     # 32 x 32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),                             # 64 x 64
        )

    def forward(self, z):
        return self.main(z)


def weights_init(m):
    """The example's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
