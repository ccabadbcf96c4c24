"""LeNet-5 and its cached, checksummed classifier (ddpm.models.lenet, ddpm.metrics.lenet).

Training runs on a real MNIST subset for two short epochs: enough to tell a network that learns (about 94 %)
from one that does not (10 %), in a few seconds on one thread.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpm.data.images import DATASETS, fetch, load, to_tensor
from ddpm.metrics import lenet as lenet_mod
from ddpm.metrics.lenet import (
    data_checksum,
    lenet_features,
    lenet_path,
    lenet_predict,
    load_lenet,
    train_lenet,
)
from ddpm.models import count_parameters
from ddpm.models.lenet import LeNet5

DATA = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
N_TRAIN, N_TEST = 6000, 2000


@pytest.fixture(scope="module")
def mnist():
    """A real MNIST subset as tensors: (x_train, y_train, x_test, y_test)."""
    fetch("mnist", root=DATA, progress=False)
    x_train, y_train = load("mnist", "train", root=DATA)
    x_test, y_test = load("mnist", "test", root=DATA)
    return (
        to_tensor(x_train[:N_TRAIN]),
        torch.from_numpy(y_train[:N_TRAIN]),
        to_tensor(x_test[:N_TEST]),
        torch.from_numpy(y_test[:N_TEST]),
    )


@pytest.fixture(scope="module")
def trained(mnist):
    """Two short epochs on the subset: (model, test accuracy, loss history)."""
    history = []
    model, accuracy = train_lenet(*mnist, epochs=2, batch_size=64, progress=False, history=history)
    return model, accuracy, history


def _train_on_a_subset(monkeypatch, n_train: int, n_test: int, epochs: int) -> None:
    """Make load_lenet train ``epochs`` epochs on the first ``n_train`` training, ``n_test`` test digits."""

    def subset(name, split="train", root=None, **kwargs):
        x, y = load(name, split, root=root, **kwargs)
        n = n_train if split == "train" else n_test
        return x[:n], y[:n]

    fetch("mnist", root=DATA, progress=False)
    monkeypatch.setattr(lenet_mod, "load", subset)
    monkeypatch.setattr(lenet_mod, "EPOCHS", epochs)
    monkeypatch.setattr(lenet_mod, "BATCH_SIZE", 32)


@pytest.fixture
def small_cache(monkeypatch):
    """Make load_lenet train two epochs on the first 3,000 training and 1,000 test digits (about 92 %)."""
    _train_on_a_subset(monkeypatch, 3000, 1000, epochs=2)


@pytest.fixture
def tiny_cache(monkeypatch):
    """For tests that only check that a LeNet is (re)trained, not how well: one epoch on 500 training and
    200 test digits."""
    _train_on_a_subset(monkeypatch, 500, 200, epochs=1)


def test_shapes_and_parameter_count():
    model = LeNet5()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10)
    features = model.features(x)
    assert features.shape == (3, 84)
    assert (features >= 0).all()  # taken after the ReLU
    assert torch.equal(model.fc3(features), model(x))
    # conv1 156 + conv2 2,416 + fc1 48,120 + fc2 10,164 + fc3 850: the classic LeNet-5's ~61.7k.
    assert count_parameters(model) == 61_706


def test_training_learns_mnist(trained):
    model, accuracy, history = trained
    assert not model.training
    assert accuracy > 0.90, accuracy  # a network that does not learn scores about 0.10
    assert [h[0] for h in history] == list(range(1, len(history) + 1))
    assert np.mean([h[1] for h in history[-10:]]) < 0.5 * np.mean([h[1] for h in history[:10]])


def test_training_is_seeded(mnist):
    x_train, y_train, x_test, y_test = mnist
    small = (x_train[:512], y_train[:512], x_test[:256], y_test[:256])
    a, acc_a = train_lenet(*small, epochs=1, batch_size=64, progress=False)
    b, acc_b = train_lenet(*small, epochs=1, batch_size=64, progress=False)
    c, _ = train_lenet(*small, epochs=1, batch_size=64, seed=1, progress=False)
    assert acc_a == acc_b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_features_and_predictions(trained, mnist):
    model, accuracy, _ = trained
    x_test, y_test = mnist[2], mnist[3]
    features = lenet_features(model, x_test, batch_size=300)
    assert features.dtype == np.float64 and features.shape == (N_TEST, 84)
    # fp32 convolutions may add in another order for another batch size (seen on an AVX-512 CPU: 1e-5
    # relative, 1e-6 absolute), so the batched features agree to float32 rounding, not bit for bit
    direct = model.features(x_test[:5]).detach().double().numpy()
    np.testing.assert_allclose(features[:5], direct, rtol=1e-5, atol=1e-5)
    predicted = lenet_predict(model, x_test, batch_size=700)
    assert predicted.dtype == np.int64 and predicted.shape == (N_TEST,)
    assert np.mean(predicted == y_test.numpy()) == pytest.approx(accuracy)
    assert lenet_features(model, x_test[:0]).shape == (0, 84)
    assert lenet_predict(model, x_test[:0]).shape == (0,)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(4, 28, 28),
        torch.zeros(4, 3, 28, 28),
        torch.zeros(4, 1, 32, 32),
        torch.zeros(4, 1, 28, 28).byte(),
    ],
)
def test_wrong_images_are_refused(bad):
    model = LeNet5()
    for fn in (lenet_features, lenet_predict):
        with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)") as info:
            fn(model, bad)
        assert "\n" not in str(info.value)


def test_checksum_and_path(tmp_path):
    checksum = data_checksum("mnist")
    assert len(checksum) == 64 and int(checksum, 16) >= 0
    assert data_checksum("MNIST") == checksum != data_checksum("fashion-mnist")
    path = lenet_path("mnist", tmp_path)
    assert path == tmp_path / "lenet" / f"mnist-{checksum[:12]}.safetensors"
    # Changing any recorded file digest changes the checksum.
    info = DATASETS["mnist"]
    digests = dict(info.sha256)
    first = next(iter(digests))
    digests[first] = "0" * 64
    original = info.sha256
    object.__setattr__(info, "sha256", digests)
    try:
        assert data_checksum("mnist") != checksum
    finally:
        object.__setattr__(info, "sha256", original)


def test_cache_round_trip(tmp_path, small_cache):
    lines = []
    first = load_lenet("mnist", root=DATA, cache_dir=tmp_path, progress=False, log=lines.append)
    assert first.trained and first.path.is_file() and first.path == lenet_path("mnist", tmp_path)
    assert first.test_accuracy > 0.85 and first.data_sha256 == data_checksum("mnist")
    assert not list(first.path.parent.glob(".*"))  # no temporary file left behind
    with safe_open(str(first.path), framework="pt") as f:
        meta = f.metadata()
    assert meta["dataset"] == "mnist" and meta["data_sha256"] == first.data_sha256
    assert meta["epochs"] == "2" and meta["seed"] == "0" and meta["torch"] == torch.__version__
    assert float(meta["test_accuracy"]) == first.test_accuracy

    again = load_lenet("mnist", root=DATA, cache_dir=tmp_path, progress=False, log=lines.append)
    assert not again.trained and again.test_accuracy == first.test_accuracy
    x = to_tensor(load("mnist", "test", root=DATA)[0][:500])
    np.testing.assert_array_equal(lenet_predict(again.model, x), lenet_predict(first.model, x))
    np.testing.assert_array_equal(lenet_features(again.model, x), lenet_features(first.model, x))
    assert len(lines) == 2  # "training …" and "test accuracy … saved …", nothing on the cached load

    lines.clear()
    assert load_lenet(
        "mnist", root=DATA, cache_dir=tmp_path, retrain=True, progress=False, log=lines.append
    ).trained


def test_cache_with_wrong_checksum_is_retrained(tmp_path, tiny_cache):
    path = lenet_path("mnist", tmp_path)
    path.parent.mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in LeNet5().state_dict().items()}
    save_file(
        weights, str(path), metadata={"dataset": "mnist", "data_sha256": "0" * 64, "test_accuracy": "0.99"}
    )
    lines = []
    result = load_lenet("mnist", root=DATA, cache_dir=tmp_path, progress=False, log=lines.append)
    assert result.trained and result.test_accuracy != 0.99
    assert "trained on other data" in lines[0] and "retraining" in lines[0]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["data_sha256"] == data_checksum("mnist")


def test_unreadable_cache_is_retrained(tmp_path, tiny_cache):
    path = lenet_path("mnist", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    lines = []
    result = load_lenet("mnist", root=DATA, cache_dir=tmp_path, progress=False, log=lines.append)
    assert result.trained
    assert lines[0].startswith("lenet: cannot read") and "retraining" in lines[0] and "\n" not in lines[0]
