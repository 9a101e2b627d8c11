"""The native epilogue's activations over their whole float range, through a 1x1 stride-1
identity convolution: every value of x reaches the activation unchanged."""
import pytest
import torch

import fastvae
from conftest import assert_close_to_reference, backend_params

pytestmark = [p.marks[0] for p in backend_params("deconv_block") if p.id == "native"]

ACTIVATIONS = ("silu", "sigmoid", "tanh", "gelu", "gelu_tanh", "leaky_relu", "relu")


def identity_block(values, activation, backend, dtype):
    """act(values) and its gradient by deconv_block with norm none and an identity 1x1 conv."""
    x = values.to(dtype).view(1, 1, 1, -1).requires_grad_()
    weight = torch.ones(1, 1, 1, 1, dtype=dtype)
    y = fastvae.deconv_block(x, weight, stride=1, padding=0, norm="none",
                             activation=activation, backend=backend)
    grad, = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.flatten(), grad.flatten()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_over_the_float_range(activation, dtype):
    finite = torch.cat([torch.linspace(-120, 120, 24001), torch.randn(4000) * 3,
                        torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.0, -87.3, -88.5, -104.0])])
    y, g = identity_block(finite, activation, "native", dtype)
    y_low, g_low = identity_block(finite, activation, "reference", dtype)
    y_ref, g_ref = identity_block(finite.double(), activation, "reference", torch.float64)
    assert_close_to_reference(y, y_low, y_ref, dtype, "y")
    assert_close_to_reference(g, g_low, g_ref, dtype, "grad")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_of_non_finite_values_as_the_reference(activation):
    special = torch.tensor([float("inf"), -float("inf"), float("nan")])
    y, g = identity_block(special, activation, "native", torch.float32)
    # the reference in float64: torch's float32 gelu kernel gives NaN at +inf (2.14: F.gelu of
    # a float32 inf is nan, of a float64 inf is inf)
    y_ref, g_ref = identity_block(special, activation, "reference", torch.float64)
    torch.testing.assert_close(y, y_ref.float(), equal_nan=True)
    torch.testing.assert_close(g, g_ref.float(), equal_nan=True)
