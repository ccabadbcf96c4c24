"""Measuring generated digits with a classifier: the Fréchet LeNet Distance and class statistics.

FLD is FID (Heusel et al. 2017) computed on the 84-d penultimate features of a LeNet5 trained on the
data set, as in the series "DDPM from first principles", part 2. A Fréchet distance estimated from N
samples is biased upwards by a term that shrinks with N, so an FLD means little alone: it is always
reported next to two references at the same N, the *floor* (N real training images against the test
set) and the *noise* reference (N uniform-noise images against the test set).

Everything here takes features or predicted labels, never a model: the caller extracts them.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.metrics.frechet import frechet_distance, gaussian_statistics


def uniform_noise_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``n`` images of i.i.d. uniform pixels in [−1, 1]: the FLD noise reference."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=generator) * 2 - 1


def random_subset(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn without replacement (the floor uses as many real images as were generated)."""
    if n > len(images):
        raise ValueError(f"asked for {n} images from a set of {len(images)}")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index]


def fld(features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between the Gaussian fitted to ``features`` and ``reference = (μ, Σ)``."""
    mu, sigma = gaussian_statistics(features)
    return frechet_distance(mu, sigma, *reference)


def class_histogram(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """The fraction of samples the classifier puts in each class."""
    predicted = np.asarray(predicted)
    return np.bincount(predicted, minlength=num_classes)[:num_classes] / max(len(predicted), 1)


def class_entropy(predicted: np.ndarray, num_classes: int) -> float:
    """Entropy, in nats, of the predicted-class histogram: ln(num_classes) when every class is equally
    frequent (ln 10 ≈ 2.303), 0 when the model draws a single class (mode collapse)."""
    p = class_histogram(predicted, num_classes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def precision_recall(requested: np.ndarray, predicted: np.ndarray, num_classes: int) -> tuple[float, list]:
    """How well a conditional model draws the class it is asked for, judged by the classifier.

    ``precision``: the fraction of samples the classifier assigns to the requested label.
    ``recall[c]``: of the samples requested as class c, the fraction classified as c (None if none asked).
    """
    requested, predicted = np.asarray(requested), np.asarray(predicted)
    if requested.shape != predicted.shape:
        raise ValueError(f"{requested.shape[0]} requested labels but {predicted.shape[0]} predictions")
    hits = requested == predicted
    asked = [requested == c for c in range(num_classes)]
    recall = [float(hits[mask].mean()) if mask.any() else None for mask in asked]
    return float(hits.mean()), recall
