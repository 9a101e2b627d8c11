"""pix2pix's UnetGenerator, junyanz/pytorch-CycleGAN-and-pix2pix `models/networks.py`: nested
UnetSkipConnectionBlocks, each an nn.Sequential `model` of a down path, the inner block and
an up path [ReLU, ConvTranspose2d(4, 2, 1), norm] (the outermost [ReLU, ConvTranspose2d, Tanh]),
concatenated with its input. norm_layer InstanceNorm2d (no affine, no running statistics) as
the issue's pix2pix runs use it, or BatchNorm2d as the class defaults."""
import torch
from torch import nn

from .cyclegan_resnet import _uses_bias, instance_norm


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = _uses_bias(norm_layer)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        if outermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh()]
            model = [downconv, submodule] + up
        elif innermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=use_bias),
                  norm_layer(outer_nc)]
            model = [nn.LeakyReLU(0.2, True), downconv] + up
        else:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=use_bias),
                  norm_layer(outer_nc)]
            model = [nn.LeakyReLU(0.2, True), downconv, norm_layer(inner_nc), submodule] + up
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=None, use_dropout=False):
        super().__init__()
        norm_layer = norm_layer or instance_norm()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block,
                                            norm_layer=norm_layer, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block,
                                            norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True, norm_layer=norm_layer)

    def forward(self, x):
        return self.model(x)
