"""torch.compile(fullgraph=True) traces through both ops and gives eager's loss and grads."""
import pytest
import torch
from torch import nn

import fastvae
from conftest import backend_params


class TinyVAEDecoder(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.to_stats = nn.Linear(12, 2 * 8 * 2 * 2)
        self.reparam = fastvae.nn.ReparamKL(backend=backend)
        self.up1 = fastvae.nn.DeconvBlock(8, 8, num_groups=4, style_dim=3, backend=backend)
        self.up2 = fastvae.nn.DeconvBlock(8, 4, norm="none", activation="silu", backend=backend)
        self.backend = backend

    def forward(self, x, style, seed):
        mu, logvar = self.to_stats(x).view(-1, 16, 2, 2).chunk(2, dim=1)
        z, kl = fastvae.reparam_kl(mu, logvar, seed=seed, backend=self.backend)
        y = self.up2(self.up1(z, style))
        return y.square().mean() + 0.1 * kl


@pytest.mark.parametrize("backend", backend_params("deconv_block"))
def test_model_compiles_fullgraph_with_eager_loss_and_grads(backend):
    torch.manual_seed(0)
    model = TinyVAEDecoder(backend)
    nn.init.normal_(model.up1.style.weight, std=0.1)
    x, style = torch.randn(3, 12), torch.randn(3, 3)
    seed = int(torch.randint(2**62, ()))
    eager = model(x, style, seed)
    grads_eager = torch.autograd.grad(eager, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)(x, style, seed)
    grads_compiled = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grads_compiled, grads_eager)
