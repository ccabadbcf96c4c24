"""Data sets as in-memory tensors: 2-D toy sets, MNIST-like IDX data and folders of images.

Everything is returned scaled to [−1, 1], the range the diffusion process assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm.config import DataConfig
from ddpm.data.images import IMAGE_SETS
from ddpm.registry import check_name


@dataclass
class Dataset:
    x: torch.Tensor  # (N, 2) points or (N, C, H, W) images in [−1, 1]
    y: torch.Tensor | None  # (N,) labels or None
    num_classes: int | None
    class_names: list[str] | None = None

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4


def _point_sets() -> tuple[str, ...]:
    from ddpm.data import toy

    return (*toy.TOY_DATASETS, *toy.LABELLED_TOY_DATASETS)


def sample_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one sample of the data set ``cfg`` names: (2,) for 2-D points, (C, H, W) for images."""
    points = _point_sets()
    check_name("data set", cfg.name, (*points, *IMAGE_SETS, "folder"))
    return (2,) if cfg.name in points else (cfg.channels, cfg.image_size, cfg.image_size)


def load_dataset(cfg: DataConfig, split: str = "train", progress: bool = True) -> Dataset:
    """Load the data set a config names (fetching MNIST-like sets on first use)."""
    from ddpm.data import toy

    sample_shape(cfg)  # a known name
    if cfg.name in toy.TOY_DATASETS:
        x = toy.make_toy(cfg.name, cfg.n_samples, seed=cfg.data_seed, noise=cfg.noise)
        return Dataset(x, None, None)
    if cfg.name in toy.LABELLED_TOY_DATASETS:
        fn, names = toy.LABELLED_TOY_DATASETS[cfg.name]
        x, y = fn(cfg.n_samples, seed=cfg.data_seed, noise=cfg.noise)
        return Dataset(x, y, len(names), list(names))
    if cfg.name in IMAGE_SETS:
        from ddpm.data import images

        arrays, labels = images.load(cfg.name, split=split, root=cfg.root)
        names = list(images.DATASETS[cfg.name].classes)
        return Dataset(images.to_tensor(arrays), torch.as_tensor(labels, dtype=torch.long), len(names), names)
    from ddpm.data import folder  # "folder"

    if not cfg.root:
        raise ValueError("data.root must name the image folder when data.name is 'folder'")
    x, y, names = folder.load_folder(cfg.root, size=cfg.image_size, channels=cfg.channels, progress=progress)
    return Dataset(x, y, len(names) if names else None, names)
