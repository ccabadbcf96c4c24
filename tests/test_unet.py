"""Shape, conditioning, gradient and precision checks of the denoisers (SeriesUNet and UNet)."""

import pytest
import torch

from ddpm.models.series_unet import SeriesUNet
from ddpm.models.unet import AttentionBlock, UNet

torch.set_num_threads(2)

SMALL_UNET = dict(
    model_channels=16,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(7,),
    num_heads=2,
    groups=32,  # reduced to 4 groups of 4 channels: the time bias must survive the norm
    dropout=0.0,
)


def _models(in_channels: int, size: int):
    models = {
        "series": SeriesUNet(in_channels=in_channels),
        "series-time": SeriesUNet(in_channels=in_channels, time_conditioning=True),
        "unet": UNet(in_channels=in_channels, image_size=size, **SMALL_UNET),
        "unet-cond": UNet(
            in_channels=in_channels, image_size=size, num_classes=10, use_scale_shift_norm=True, **SMALL_UNET
        ),
    }
    if size % 2 == 0:  # a patchifying stem: 28×28 → 14×14 (attention at 7×7 of the folded maps)
        kwargs = {**SMALL_UNET, "channel_mult": (1, 2)}
        models["unet-patch"] = UNet(in_channels=in_channels, image_size=size, patch_size=2, **kwargs)
    return models


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move the zero-initialised layers away from zero, so that outputs depend on every input."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(batch: int, channels: int, size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    return x, t


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (1, 27)])
def test_output_shape(in_channels, size):
    x, t = _inputs(2, in_channels, size)
    for name, model in _models(in_channels, size).items():
        out = model(x, t)
        assert out.shape == x.shape, name
        assert torch.isfinite(out).all(), name


def test_unet_default_config_shape():
    model = UNet(model_channels=32, num_classes=10)
    x, t = _inputs(2, 1, 28)
    assert model(x, t, torch.tensor([0, 9])).shape == x.shape


def test_unet_out_channels():
    model = UNet(in_channels=3, out_channels=6, image_size=32, **SMALL_UNET)
    x, t = _inputs(2, 3, 32)
    assert model(x, t).shape == (2, 6, 32, 32)


def test_unet_starts_at_zero():
    x, t = _inputs(2, 1, 28)
    assert torch.count_nonzero(UNet(**SMALL_UNET)(x, t)) == 0


def test_time_dependence():
    x, t = _inputs(3, 1, 28)
    t2 = t + 100
    models = _models(1, 28)
    with torch.no_grad():
        for name in ("series-time", "unet", "unet-cond"):
            model = _perturb(models[name])
            assert not torch.allclose(model(x, t), model(x, t2)), name
        series = models["series"].eval()
        assert torch.equal(series(x, t), series(x, t2))
        assert torch.equal(series(x, t), series(x, None))


def test_integer_and_scalar_timesteps():
    """t may also arrive as a long tensor (``torch.randint``) or as one number for the whole batch."""
    x, t = _inputs(2, 1, 28)
    t = torch.tensor([7.0, 7.0])
    for name, model in _models(1, 28).items():
        model = _perturb(model)
        with torch.no_grad():
            ref = model(x, t)
            torch.testing.assert_close(model(x, t.long()), ref, msg=name)
            torch.testing.assert_close(model(x, torch.tensor(7)), ref, msg=name)


def test_class_conditioning():
    model = _perturb(UNet(num_classes=10, **SMALL_UNET))
    x, t = _inputs(4, 1, 28)
    y = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        out = model(x, t, y)
        assert not torch.allclose(out, model(x, t, (y + 1) % 10))
        null = torch.full((4,), 10, dtype=torch.long)
        torch.testing.assert_close(model(x, t, None), model(x, t, null))
        assert not torch.allclose(model(x, t, None), out)
    for bad in (torch.tensor([0, 1, 11, 2]), torch.tensor([-1, 0, 0, 0])):
        with pytest.raises((ValueError, IndexError)):
            model(x, t, bad)


def test_unconditional_unet_ignores_labels():
    model = _perturb(UNet(**SMALL_UNET))
    x, t = _inputs(2, 1, 28)
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.tensor([1, 2])))


@pytest.mark.parametrize("name", ["series", "series-time", "unet", "unet-cond", "unet-patch"])
def test_gradients_reach_every_parameter(name):
    model = _models(1, 28)[name].train()
    x, t = _inputs(4, 1, 28)
    y = torch.tensor([0, 3, 5, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Zero-initialised layers block gradients at first: step 1 moves the output conv off zero, step 2 the
    # last conv of every residual block; from then on every parameter gets a non-zero gradient.
    for step in range(3):
        opt.zero_grad()
        loss = (model(x, t, y) - torch.randn_like(x)).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        if step < 2:
            opt.step()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["series", "series-time", "unet", "unet-cond", "unet-patch"])
def test_bf16_autocast_and_channels_last(name):
    model = _perturb(_models(1, 28)[name])
    x, t = _inputs(2, 1, 28)
    with torch.no_grad():
        ref = model(x, t)
        out_cl = model(x.contiguous(memory_format=torch.channels_last), t)
        torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)
        model_cl = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model_cl(x.contiguous(memory_format=torch.channels_last), t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.1, rel


def test_attention_matches_reference():
    torch.manual_seed(0)
    block = AttentionBlock(16, num_heads=4, groups=8)
    torch.nn.init.normal_(block.proj.weight, std=0.1)
    x = torch.randn(2, 16, 5, 7)
    B, C, H, W = x.shape
    tok = block.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
    q, k, v = block.qkv(tok).chunk(3, dim=-1)
    split = lambda z: z.view(B, H * W, 4, C // 4).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / (C // 4) ** 0.5, dim=-1)
    a = (w @ v).transpose(1, 2).reshape(B, H * W, C)
    expected = x + block.proj(a).transpose(1, 2).view(B, C, H, W)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        block(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5
    )


def test_series_parameter_counts():
    n = sum(p.numel() for p in SeriesUNet().parameters())
    assert 50_000 <= n <= 60_000, n
    n_time = sum(p.numel() for p in SeriesUNet(time_conditioning=True).parameters())
    assert n_time > n


def test_groups_auto_reduce():
    model = UNet(model_channels=24, channel_mult=(1, 2), attention_resolutions=(14,), num_heads=3, groups=32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    assert all(m.num_channels // m.num_groups >= 4 for m in norms)  # never instance norm
    x, t = _inputs(2, 1, 28)
    assert model(x, t).shape == x.shape


def test_patch_stem_folds_pixels_and_needs_a_divisible_size():
    model = UNet(image_size=28, patch_size=2, **{**SMALL_UNET, "channel_mult": (1, 2)})
    assert model.conv_in.in_channels == 4 and model.out[-1].out_channels == 4
    assert any(isinstance(m, AttentionBlock) for m in model.down.modules())  # 7×7 is the second level now
    with pytest.raises(ValueError, match="patch_size=3 must divide the image size"):
        UNet(image_size=28, patch_size=3, **SMALL_UNET)
