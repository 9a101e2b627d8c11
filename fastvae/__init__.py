"""fastvae: fused kernels for variational autoencoders, and a style-mixing VAE built on them."""
from . import nn
from .backends import backends
from .fusion import fuse
from .model import StyleVAE
from .ops import deconv_block, reparam_kl

__version__ = "0.1.0"
__all__ = ["reparam_kl", "deconv_block", "fuse", "backends", "nn", "StyleVAE", "__version__"]
