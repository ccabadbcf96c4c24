"""Samplers: the ancestral sampler is Algorithm 2 step by step, for every parameterisation."""

import pytest
import torch

from ddpm import diffusion
from ddpm.samplers import ddpm_sample, full_timesteps, make_denoiser
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
