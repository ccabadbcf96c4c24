"""A trained LeNet-5 to judge generated digits: its accuracy, predictions and 84-d features.

The Fréchet LeNet Distance compares the F6 features of samples and of real digits, so every run must use the
same classifier, trained on the same data. :func:`load_lenet` therefore keeps one trained LeNet-5 per dataset
in ``<cache>/lenet/<dataset>-<checksum>.safetensors``, where the checksum (:func:`data_checksum`) is taken
over the SHA-256 digests recorded for the dataset's four files. The file's metadata repeats the checksum, the
test accuracy and how it was trained; a file that disagrees with the data or cannot be read is retrained.

Training (:func:`train_lenet`) is plain supervised learning: cross-entropy, Adam with decoupled weight decay
(AdamW, Loshchilov & Hutter 2019) and a one-cycle learning rate (Smith & Topin 2019). The accuracy and time
of the defaults are measured in ``docs/results.md``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ddpm.data.images import SPLITS, data_root, dataset_info, load, to_tensor
from ddpm.fileio import atomic_path
from ddpm.models.lenet import LeNet5
from ddpm.progress import progress_bar

EPOCHS = 6
BATCH_SIZE = 128
LR = 3e-3
WEIGHT_DECAY = 1e-4


@dataclass
class LeNetResult:
    """A classifier and where it came from; ``seconds`` is the time this call spent training or loading."""

    model: LeNet5
    dataset: str
    test_accuracy: float
    path: Path
    data_sha256: str
    trained: bool
    seconds: float


def data_checksum(dataset: str) -> str:
    """One SHA-256 over the dataset's four recorded file digests (train then test; images then labels)."""
    info = dataset_info(dataset)
    digest = hashlib.sha256()
    for names in SPLITS.values():
        for name in names:
            digest.update(f"{name}:{info.sha256[name]}\n".encode())
    return digest.hexdigest()


def lenet_path(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir or the data root>/lenet/<dataset>-<checksum[:12]>.safetensors``."""
    info = dataset_info(dataset)
    base = Path(cache_dir).expanduser() if cache_dir is not None else data_root(None)
    return base / "lenet" / f"{info.name}-{data_checksum(info.name)[:12]}.safetensors"


def train_lenet(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    seed: int = 0,
    progress: bool = True,
    history: list | None = None,
) -> tuple[LeNet5, float]:
    """Train a LeNet-5 on images (N, 1, 28, 28) in [-1, 1] with integer labels; return it (in eval mode) and
    its accuracy on the test set.

    Seeded: the same data, arguments and seed give the same weights on the CPU. ``history``, when given,
    receives ``(step, loss, batch accuracy)`` after every step.
    """
    _check_images(x_train)
    _check_images(x_test)
    y_train = torch.as_tensor(y_train, dtype=torch.long, device=x_train.device)
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
        torch.manual_seed(seed)
        model = LeNet5().to(x_train.device)
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(x_train) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    with progress_bar(
        total=epochs * steps_per_epoch, desc="LeNet-5", disable=not progress, leave=False
    ) as bar:
        for step in range(epochs * steps_per_epoch):
            if step % steps_per_epoch == 0:
                perm = torch.randperm(len(x_train), generator=order).to(x_train.device)
            idx = perm[(step % steps_per_epoch) * batch_size :][:batch_size]
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if history is not None:
                accuracy = (logits.argmax(1) == y_train[idx]).float().mean()
                history.append((step + 1, loss.item(), accuracy.item()))
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model, accuracy_of(model, x_test, y_test)


def accuracy_of(model: LeNet5, images: torch.Tensor, labels) -> float:
    """The fraction of ``images`` that ``model`` classifies as ``labels``."""
    return float(np.mean(lenet_predict(model, images) == np.asarray(torch.as_tensor(labels).cpu())))


def load_lenet(
    dataset: str = "mnist",
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> LeNetResult:
    """The cached LeNet-5 of ``dataset``, training (and caching) it first if needed.

    The data come from :func:`ddpm.data.images.load` under ``root``; the cache is ``cache_dir``, by default
    that data root. A cache file is used when its metadata names this data's checksum and its tensors load
    into a LeNet-5; otherwise (or with ``retrain``) the classifier is trained with the module's defaults and
    written atomically.
    """
    name = dataset_info(dataset).name
    checksum = data_checksum(name)
    path = lenet_path(name, cache_dir if cache_dir is not None else data_root(root))
    start = time.perf_counter()
    if path.is_file() and not retrain:
        try:
            model, meta = _read(path, checksum)
            seconds = time.perf_counter() - start
            return LeNetResult(model, name, float(meta["test_accuracy"]), path, checksum, False, seconds)
        except ValueError as exc:
            log(f"lenet: {exc}; retraining")
    x_train, y_train = load(name, "train", root=root)
    x_test, y_test = load(name, "test", root=root)
    log(f"lenet: training LeNet-5 on {name} ({len(x_train):,} images, {EPOCHS} epochs)")
    model, accuracy = train_lenet(
        to_tensor(x_train),
        torch.from_numpy(y_train),
        to_tensor(x_test),
        torch.from_numpy(y_test),
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    meta = {
        "dataset": name,
        "data_sha256": checksum,
        "test_accuracy": repr(accuracy),
        "epochs": str(EPOCHS),
        "batch_size": str(BATCH_SIZE),
        "lr": repr(LR),
        "weight_decay": repr(WEIGHT_DECAY),
        "seed": "0",
        "train_images": str(len(x_train)),
        "train_seconds": f"{seconds:.1f}",
        "torch": torch.__version__,
    }
    _write(path, model, meta)
    log(f"lenet: test accuracy {100 * accuracy:.2f} % after {seconds:.0f} s; saved {path}")
    return LeNetResult(model, name, accuracy, path, checksum, True, seconds)


@torch.no_grad()
def lenet_features(
    model: LeNet5, images: torch.Tensor, batch_size: int = 1000, progress: bool = False
) -> np.ndarray:
    """F6 activations of ``images`` (N, 1, 28, 28) in [-1, 1], as float64 (N, 84): what the FLD compares."""
    return _batched(model.features, model, images, batch_size, torch.float64, progress)


@torch.no_grad()
def lenet_predict(model: LeNet5, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes of ``images`` (N, 1, 28, 28) in [-1, 1], as int64 (N,)."""
    return _batched(lambda x: model(x).argmax(1), model, images, batch_size, torch.int64)


def _batched(
    fn, model: LeNet5, images: torch.Tensor, batch_size: int, dtype: torch.dtype, progress: bool = False
) -> np.ndarray:
    """Apply ``fn`` to ``images`` in batches on the model's device; concatenate on the CPU as ``dtype``."""
    _check_images(images)
    param = next(model.parameters())
    starts = range(0, max(len(images), 1), batch_size)  # one (maybe empty) batch at least: right shape
    bar = progress_bar(
        iterable=starts, desc="LeNet features", unit="batch", disable=not progress, leave=False
    )
    outs = [fn(images[i : i + batch_size].to(param.device, param.dtype)).to("cpu", dtype) for i in bar]
    return torch.cat(outs).numpy()


def _check_images(images) -> None:
    if (
        not isinstance(images, torch.Tensor)
        or not images.is_floating_point()
        or images.shape[1:] != (1, 28, 28)
    ):
        got = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"expected a float tensor of images (N, 1, 28, 28) in [-1, 1], got {got}")


def _read(path: Path, checksum: str) -> tuple[LeNet5, dict]:
    """Load a cached classifier; ValueError (one line) if it is unreadable or was trained on other data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read {path} ({' '.join(str(exc).split())})") from None
    if meta.get("data_sha256") != checksum:
        found = str(meta.get("data_sha256"))[:12]
        raise ValueError(f"{path} was trained on other data (checksum {found}…, expected {checksum[:12]}…)")
    model = LeNet5()
    try:
        model.load_state_dict(tensors)
        float(meta["test_accuracy"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} does not hold a LeNet-5 ({' '.join(str(exc).split())[:200]})") from None
    return model.eval(), meta


def _write(path: Path, model: LeNet5, meta: dict[str, str]) -> None:
    """Write the weights and metadata atomically (:func:`ddpm.fileio.atomic_path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
