"""CycleGAN's ResnetGenerator, junyanz/pytorch-CycleGAN-and-pix2pix `models/networks.py`:
a 7x7 stem, two stride-2 Conv2d down, n_blocks ResnetBlocks, two
ConvTranspose2d(k=3, s=2, p=1, output_padding=1) + norm + ReLU up, a 7x7 Conv2d and Tanh, all
in one nn.Sequential. norm_layer BatchNorm2d as the class defaults (convolutions then carry
no bias), or InstanceNorm2d as CycleGAN trains it (with bias)."""
import functools

import torch
from torch import nn


def _uses_bias(norm_layer):
    func = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return func == nn.InstanceNorm2d


class ResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_bias):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, n_blocks=6):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):  # down
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        model += [ResnetBlock(ngf * 4, norm_layer, use_bias) for _ in range(n_blocks)]
        for i in range(2):  # up
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                         output_padding=1, bias=use_bias),
                      norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


def instance_norm():
    """networks.get_norm_layer("instance"): no affine, no running statistics."""
    return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


__all__ = ["ResnetGenerator", "instance_norm", "torch"]
