import pytest
import torch

# A 2-D run small enough to train in a second or two: the engine's tests use it.
TINY = [
    "model.kwargs.hidden=16",
    "model.kwargs.layers=2",
    "diffusion.T=20",
    "train.batch_size=64",
    "train.warmup_steps=5",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "data.n_samples=2000",
    "sample.eval_n=200",
]


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
