"""Samplers: the ancestral sampler is Algorithm 2 step by step, for every parameterisation."""

import pytest
import torch

from ddpm import diffusion
from ddpm.samplers import classifier_free_guidance, ddpm_sample, full_timesteps, make_denoiser
from ddpm.schedules import make_schedule


def fake_model(x, t):
    """Any smooth function of (x, t) will do: the sampler must not care what the network is."""
    return torch.tanh(x * 0.7 + 0.01 * t[:, None])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_sampler_equals_algorithm_2(prediction, variance, clip):
    schedule = make_schedule("linear", 50)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    denoise = make_denoiser(fake_model, schedule, prediction, clip)
    got = ddpm_sample(denoise, x_T, schedule, variance=variance, generator=torch.Generator().manual_seed(1))

    g = torch.Generator().manual_seed(1)
    x = x_T
    for t in full_timesteps(schedule):
        tt = torch.full((8,), t, dtype=torch.long)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if t > 0 else torch.zeros_like(x)
        x, _ = diffusion.p_sample_step(
            fake_model(x, tt.float()), x, tt, schedule, noise, prediction, variance, clip
        )
    assert torch.allclose(got, x, atol=1e-10)


def test_callback_sees_every_step():
    schedule = make_schedule("cosine", 30)
    seen = []
    denoise = make_denoiser(fake_model, schedule)
    ddpm_sample(denoise, torch.randn(4, 2), schedule, callback=lambda i, t, x, x0: seen.append(t))
    assert seen == list(range(29, -1, -1))


def test_subset_of_steps_runs_and_ends_deterministic():
    schedule = make_schedule("linear", 100)
    denoise = make_denoiser(fake_model, schedule, "eps", 1.0)
    x = ddpm_sample(
        denoise, torch.randn(16, 2), schedule, [99, 66, 33, 0], generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (16, 2) and torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-6


def conditional_model(x, t, y):
    """A fake class-conditional network; label 3 is the "no label" index."""
    return torch.tanh(x * 0.5 + 0.1 * y[:, None].float() - 0.01 * t[:, None])


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_classifier_free_guidance_is_eq_6_in_one_forward_pass(w):
    calls = []

    def counted(x, t, y):
        calls.append(len(x))
        return conditional_model(x, t, y)

    x, t = torch.randn(6, 2), torch.full((6,), 7.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = classifier_free_guidance(counted, y, 3, w)(x, t)
    cond, uncond = conditional_model(x, t, y), conditional_model(x, t, torch.full_like(y, 3))
    assert torch.allclose(got, (1 + w) * cond - w * uncond, atol=1e-6)
    assert calls == [12]  # conditional and unconditional halves batched together
    if w == 0:
        assert torch.allclose(got, cond)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guiding_the_raw_output_guides_eps(prediction):
    """ε̂ is affine in the network output with weights summing to one, so eq. 6 may act on x0 or v too."""
    schedule = make_schedule("cosine", 40)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 17, dtype=torch.long)
    y, w = torch.tensor([0, 1, 2, 1, 0]), 2.0
    guided = make_denoiser(classifier_free_guidance(conditional_model, y, 3, w), schedule, prediction)
    _, eps = guided(x, t)
    _, eps_c = make_denoiser(lambda a, b: conditional_model(a, b, y), schedule, prediction)(x, t)
    null = torch.full_like(y, 3)
    _, eps_u = make_denoiser(lambda a, b: conditional_model(a, b, null), schedule, prediction)(x, t)
    assert torch.allclose(eps, (1 + w) * eps_c - w * eps_u, atol=1e-9)
