"""The denoising networks. Models know nothing of diffusion: each maps (x_t, t, y) to a tensor shaped
like x_t, and the diffusion code decides what that tensor means (ε, x_0 or v)."""

from importlib import import_module

from torch import nn

# name → "module:Class"; imported lazily so that a 2-D run never imports the UNets.
MODELS = {
    "mlp": "ddpm.models.mlp:MLPDenoiser",
    "series_unet": "ddpm.models.series_unet:SeriesUNet",
    "unet": "ddpm.models.unet:UNet",
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered under ``name`` with keyword arguments from the config."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(import_module(module), cls)(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
