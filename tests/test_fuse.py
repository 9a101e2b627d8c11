"""fastvae.fuse on the models of tests/models: fused against the original, every way a user
would notice a difference (outputs, gradients, running statistics, modes, checkpoints,
torch.compile, frozen and parametrized weights)."""
import copy
import logging

import pytest
import torch
from torch import nn

import fastvae
from conftest import backend_params
from fastvae.reference import memory_format
from models import MODELS, dcgan, pix2pix_unet

CPU_BACKENDS = [p for p in backend_params("deconv_block") if p.id in ("reference", "native")]


def pair(name, backend="auto", dtype=torch.float64):
    """(original, fused deep copy) of a fresh random model, and an input batch."""
    make, make_input, _ = MODELS[name]
    torch.manual_seed(torch.seed() % 2**31)
    original = make().to(dtype)
    for m in original.modules():  # random affine parameters: the identity would hide errors
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fused = fastvae.fuse(copy.deepcopy(original), backend=backend)
    return original, fused, make_input(3).to(dtype)


def forward_backward(model, x, grad_seed=0):
    x = x.detach().requires_grad_()
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    grads = torch.autograd.grad(y, [x] + list(model.parameters()), g)
    return y, grads


def assert_grads_close(got, want, names, rtol):
    """Gradients to rtol of the largest of them: a bias ahead of a norm has an exact gradient
    of 0, and what either model computes for it is rounding noise of that scale."""
    atol = rtol * max(w.abs().max().item() for w in want)
    for n, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def fused_count(model):
    return sum(len(m._fastvae_runs) for m in model.modules()
               if isinstance(m, fastvae.fusion.FusedSequential))


@pytest.mark.parametrize("name", list(MODELS))
def test_fuses_the_expected_layers(name):
    original, fused, _ = pair(name)
    assert fused_count(fused) == MODELS[name][2]
    assert fused_count(original) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_float64_outputs_and_gradients_match(name, backend):
    original, fused, x = pair(name, backend)
    y0, g0 = forward_backward(original, x)
    y1, g1 = forward_backward(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-12)
    assert_grads_close(g1, g0, ["x"] + [n for n, _ in original.named_parameters()], 1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_float32_within_the_originals_own_error(name):
    """float32 fused against the float64 original is held to twice the float32 original's own
    error (deep InstanceNorm U-Nets amplify rounding: a fixed tolerance would not say much),
    as L2 norms of the errors (the max over a tensor was a noisy statistic: fused 7.6e-6
    against twice torch's 2.9e-6 in one CI run), plus 1e-6 of the largest gradient's norm:
    a bias ahead of a norm has an exact gradient of 0, and both float32 runs' is noise."""
    original, fused, x = pair(name, dtype=torch.float64)
    y64, g64 = forward_backward(original, x)
    y32, g32 = forward_backward(original.float(), x.float())
    yf, gf = forward_backward(fused.float(), x.float())
    floor = 1e-6 * max(g.norm().item() for g in g64)
    for what, a, own, exact in [("y", yf, y32, y64)] + [
            (f"grad {i}", a, o, e) for i, (a, o, e) in enumerate(zip(gf, g32, g64))]:
        err = (a.double() - exact).norm().item()
        bound = 2 * (own.double() - exact).norm().item() + floor
        assert err <= bound, f"{name} {what}: {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", ["dcgan", "vanilla_vae", "cyclegan_resnet"])
def test_batch_norm_running_statistics_after_training_steps(name):
    original, fused, x = pair(name)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (original, fused)]
    for step in range(3):
        for model, opt in zip((original, fused), opts):
            opt.zero_grad()
            y = model(x + step)
            y.square().mean().backward()
            opt.step()
    for (n, a), (_, b) in zip(original.state_dict().items(), fused.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")
    tracked = [b for n, b in fused.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(int(t) == 3 for t in tracked)
    original.eval(), fused.eval()
    torch.testing.assert_close(fused(x), original(x), rtol=1e-9, atol=1e-12)


def test_batch_norm_momentum_none_is_a_cumulative_average():
    original, fused, x = pair("dcgan")
    for model in (original, fused):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        for step in range(3):
            model(x * (step + 1))
    for (n, a), (_, b) in zip(original.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")


def test_batch_norm_without_running_statistics():
    original, fused, x = pair("dcgan")
    for model in (original, fused):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
        model.eval()  # batch statistics still: there are no running ones
    torch.testing.assert_close(fused(x), original(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_keys_and_objects_unchanged(name):
    original, fused, x = pair(name)
    before = copy.deepcopy(original)
    params = {n: p for n, p in before.named_parameters()}
    fastvae.fuse(before)
    assert {n: p for n, p in before.named_parameters()} == params  # the same objects
    assert list(fused.state_dict()) == list(original.state_dict())
    fused.load_state_dict(original.state_dict(), strict=True)  # an original checkpoint loads
    original.load_state_dict(fused.state_dict(), strict=True)  # and the other way
    original.eval(), fused.eval()
    torch.testing.assert_close(fused(x), original(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_fullgraph(name):
    _, fused, x = pair(name, dtype=torch.float32)
    compiled = torch.compile(fused, fullgraph=True)
    reference = copy.deepcopy(fused)
    y, grads = forward_backward(compiled, x)
    y_eager, grads_eager = forward_backward(reference, x)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-5)
    assert_grads_close(grads, grads_eager, [f"grad {i}" for i in range(len(grads))], 1e-4)


def test_frozen_conv_stays_frozen():
    original, fused, x = pair("dcgan")
    conv = fused.main[3]
    conv.weight.requires_grad_(False)
    fused(x).sum().backward()
    assert conv.weight.grad is None and fused.main[0].weight.grad is not None


def test_parametrized_spectral_norm_is_honoured():
    """torch.nn.utils.parametrizations.spectral_norm: the weight is read through it on
    every call, so the fused model computes what the original does."""
    original, _, x = pair("dcgan")
    for m in original.modules():
        if isinstance(m, nn.ConvTranspose2d):
            torch.nn.utils.parametrizations.spectral_norm(m, dim=1)
    original.eval()  # power iteration frozen: both models see the same weights
    fused = fastvae.fuse(copy.deepcopy(original))
    assert fused_count(fused) == 5
    y0, g0 = forward_backward(original, x)
    y1, g1 = forward_backward(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-12)
    assert_grads_close(g1, g0, [f"grad {i}" for i in range(len(g1))], 1e-9)
    assert list(fused.state_dict()) == list(original.state_dict())


def test_hooked_spectral_norm_is_left_unfused_with_the_reason(capsys, caplog):
    model = dcgan.Generator(nz=7, ngf=4).double()
    torch.nn.utils.spectral_norm(model.main[3])
    with caplog.at_level(logging.INFO, logger="fastvae.fusion"):
        fastvae.fuse(model, verbose=True)
    printed = capsys.readouterr().out
    assert fused_count(model) == 4
    assert "main.3: left unfused: it has forward hooks" in printed
    assert "main.0: fused ConvTranspose2d -> BatchNorm2d -> ReLU" in printed
    assert "main.12: fused ConvTranspose2d -> Tanh" in printed
    lines = printed.splitlines()
    assert sum(": fused " in l or ": left unfused:" in l for l in lines) == 5  # one a conv
    assert ("fastvae.fuse: main.6, main.9, main.12: back to back, channels_last between them"
            in printed)  # the chain after the hooked conv
    assert lines[-1].startswith("fastvae.fuse: hint: on the CPU, fused layers not back to "
                                "back")  # and the layout hint (main.0 is apart now), last
    assert len(lines) == 7
    assert any("left unfused" in r.message for r in caplog.records)


def test_channels_last_hint_only_for_unchained_nchw_cpu_weights(capsys):
    """The report's closing hint names the layout copies a fused layer of an NCHW model pays
    on CPU outside a chain, and goes once the model is channels_last, when every run is
    chained (they run channels_last among themselves) or when nothing fused."""
    model = pix2pix_unet.UnetGenerator(3, 3, num_downs=5, ngf=4)  # runs apart: a ReLU between
    fastvae.fuse(model, verbose=True)
    assert "hint:" in capsys.readouterr().out
    fastvae.fuse(model.to(memory_format=torch.channels_last), verbose=True)
    assert "hint:" not in capsys.readouterr().out
    fastvae.fuse(dcgan.Generator(nz=7, ngf=4), verbose=True)
    assert "hint:" not in capsys.readouterr().out
    fastvae.fuse(nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1)), verbose=True)
    assert "hint:" not in capsys.readouterr().out


def record_block_inputs(monkeypatch):
    """The memory format of x at every deconv_block call fused models make from now on."""
    formats = []
    call = fastvae.fusion.deconv_block

    def recording(x, *args, **kwargs):
        formats.append(memory_format(x))
        return call(x, *args, **kwargs)
    monkeypatch.setattr(fastvae.fusion, "deconv_block", recording)
    return formats


NCHW, CL = torch.contiguous_format, torch.channels_last


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_chained_runs_pass_channels_last_between_them(monkeypatch, backend, layout):
    """DCGAN's five runs back to back run channels_last on the native CPU kernels (the first
    takes the 1x1 latent, either layout): after the chain the output, and the input's
    gradient, have the original's layout, values and gradients as before (float64 to 1e-9).
    The reference backend gets the layouts the model has."""
    original, fused, x = pair("dcgan", backend)
    if layout == "channels_last":
        original.to(memory_format=CL), fused.to(memory_format=CL)
    formats = record_block_inputs(monkeypatch)
    y0, g0 = forward_backward(original, x)
    y1, g1 = forward_backward(fused, x)
    chained = backend == "native" or layout == "channels_last"
    assert formats == [NCHW] + [CL if chained else NCHW] * 4
    assert memory_format(y1) == memory_format(y0) == (CL if layout == "channels_last" else NCHW)
    assert y1.stride() == y0.stride() and memory_format(g1[0]) == memory_format(g0[0])
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-12)
    assert_grads_close(g1, g0, ["x"] + [n for n, _ in original.named_parameters()], 1e-9)


def test_chains_stay_in_the_models_layout_where_they_would_not_pay(monkeypatch):
    """Under CPU autocast (bfloat16: no Winograd) and on the reference backend a chain keeps
    the model's NCHW layout."""
    original, fused, x = pair("dcgan", dtype=torch.float32)
    formats = record_block_inputs(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused(x)
    assert formats == [NCHW] * 5


def test_chain_exit_after_a_parametrized_weight_in_training():
    """spectral_norm in training runs its power iteration once a call, chain or not: the fused
    model's second output (after both models' u vectors moved once) is still the original's."""
    original, _, x = pair("dcgan")
    for m in original.modules():
        if isinstance(m, nn.ConvTranspose2d):
            torch.nn.utils.parametrizations.spectral_norm(m, dim=1)
    fused = fastvae.fuse(copy.deepcopy(original))
    for _ in range(2):
        y0, y1 = original(x), fused(x)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-12)


def test_unfusable_runs_are_left_alone():
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 4, 4, 2, 1, dilation=2), nn.ReLU(),        # dilation
        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2), nn.ReLU(),          # groups
        nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.InstanceNorm2d(4, track_running_stats=True),
        nn.ConvTranspose2d(4, 4, 3, 1, 1),                               # nothing to fuse
        nn.ConvTranspose2d(4, 4, 3, 1, 1), nn.PReLU())                   # PReLU: not ours
    fastvae.fuse(model)
    assert fused_count(model) == 0 and type(model) is nn.Sequential


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unbatched_input_as_the_original(backend):
    """ConvTranspose2d, InstanceNorm2d and activations take an unbatched (C, H, W) map, so the
    fused runs do too (two back to back: the chain is for batches only)."""
    original = nn.Sequential(nn.ConvTranspose2d(5, 6, 4, 2, 1), nn.InstanceNorm2d(6), nn.ReLU(),
                             nn.ConvTranspose2d(6, 3, 3, 2, 1, 1), nn.Tanh()).double()
    fused = fastvae.fuse(copy.deepcopy(original), backend=backend)
    assert fused_count(fused) == 2
    x = torch.randn(5, 7, 9, dtype=torch.float64)
    y0, g0 = forward_backward(original, x)
    y1, g1 = forward_backward(fused, x)
    assert y1.shape == y0.shape == (3, 28, 36)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-12)
    assert_grads_close(g1, g0, ["x"] + [n for n, _ in original.named_parameters()], 1e-9)


def test_fuse_is_idempotent_and_keeps_working():
    original, fused, x = pair("pix2pix_unet")
    fastvae.fuse(fused)
    assert fused_count(fused) == MODELS["pix2pix_unet"][2]
    torch.testing.assert_close(fused(x), original(x), rtol=1e-9, atol=1e-12)


def test_autocast_bfloat16():
    original, fused, x = pair("gn8_leaky_decoder", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, y1 = original(x), fused(x)
    assert y1.dtype == y0.dtype == torch.bfloat16
    torch.testing.assert_close(y1.float(), y0.float(), rtol=0.05, atol=0.05)


# ----------------------------------------------------------- the ops' other extensions


def test_reparam_kl_generator_reproduces_the_stream():
    mu, logvar = torch.randn(4, 9), torch.randn(4, 9)
    z1, _ = fastvae.reparam_kl(mu, logvar, generator=torch.Generator().manual_seed(5))
    z2, _ = fastvae.reparam_kl(mu, logvar, generator=torch.Generator().manual_seed(5))
    z3, _ = fastvae.reparam_kl(mu, logvar, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    assert not torch.equal(z1, z3)
    with pytest.raises(ValueError, match="seed or generator"):
        fastvae.reparam_kl(mu, logvar, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        fastvae.reparam_kl(mu, logvar, generator=5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_second_derivatives_are_refused_by_name(backend):
    mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z, kl = fastvae.reparam_kl(mu, torch.zeros_like(mu), backend=backend)
    g, = torch.autograd.grad(z.sum() + kl, mu, create_graph=True)
    with pytest.raises(RuntimeError, match="reparam_kl supports first-order gradients only"):
        g.sum().backward()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = fastvae.deconv_block(x, torch.randn(4, 4, 4, 4, dtype=torch.float64), num_groups=2,
                             backend=backend)
    g, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="deconv_block supports first-order gradients only"):
        g.sum().backward()
