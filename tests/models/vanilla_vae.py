"""The decoder of AntixK/PyTorch-VAE's VanillaVAE, `models/vanilla_vae.py`: a linear layer to
(hidden_dims[-1], 2, 2), then per hidden width a ConvTranspose2d(k=3, s=2, p=1,
output_padding=1) + BatchNorm2d + LeakyReLU in `decoder`, and `final_layer`: one more such
block, a 3x3 Conv2d to 3 channels and Tanh. With the default widths: 64x64 images."""
from torch import nn


class VanillaVAEDecoder(nn.Module):
    def __init__(self, latent_dim=128, hidden_dims=(32, 64, 128, 256, 512)):
        super().__init__()
        dims = list(reversed(hidden_dims))
        self.first = dims[0]
        self.decoder_input = nn.Linear(latent_dim, dims[0] * 4)

        def up(cin, cout):
            return [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1,
                                       output_padding=1),
                    nn.BatchNorm2d(cout), nn.LeakyReLU()]
        self.decoder = nn.Sequential(
            *[nn.Sequential(*up(dims[i], dims[i + 1])) for i in range(len(dims) - 1)])
        self.final_layer = nn.Sequential(
            *up(dims[-1], dims[-1]),
            nn.Conv2d(dims[-1], 3, kernel_size=3, padding=1),
            nn.Tanh())

    def forward(self, z):
        h = self.decoder_input(z).view(-1, self.first, 2, 2)
        return self.final_layer(self.decoder(h))
