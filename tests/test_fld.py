"""The class statistics and references behind ``ddpm eval`` (the features and the classifier are faked)."""

import math

import numpy as np
import pytest
import torch

from ddpm.metrics import fld
from ddpm.metrics.frechet import gaussian_statistics


def test_entropy_is_ln_k_for_uniform_classes_and_zero_for_one_class():
    assert fld.class_entropy(np.arange(1000) % 10, 10) == pytest.approx(math.log(10))
    assert fld.class_entropy(np.full(50, 7), 10) == 0.0
    two = fld.class_entropy(np.array([1, 1, 2, 2]), 10)
    assert two == pytest.approx(math.log(2))


def test_histogram_sums_to_one_and_counts_each_class():
    h = fld.class_histogram(np.array([0, 0, 3, 9]), 10)
    assert h.tolist() == [0.5, 0, 0, 0.25, 0, 0, 0, 0, 0, 0.25]


def test_precision_and_per_class_recall():
    requested = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    precision, recall = fld.precision_recall(requested, predicted, 4)
    assert precision == pytest.approx(3 / 6)
    assert recall == [0.5, 1.0, 0.0, None]  # class 3 was never asked for
    with pytest.raises(ValueError):
        fld.precision_recall(requested, predicted[:-1], 4)


def test_fld_is_zero_for_the_reference_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6))
    reference = gaussian_statistics(features)
    assert fld.fld(features, reference) == pytest.approx(0.0, abs=1e-8)
    assert fld.fld(features + 2.0, reference) == pytest.approx(6 * 4.0, rel=1e-6)


def test_references_are_seeded_and_shaped():
    noise = fld.uniform_noise_images(5, (1, 4, 4), seed=3)
    assert noise.shape == (5, 1, 4, 4) and noise.min() >= -1 and noise.max() <= 1
    assert torch.equal(noise, fld.uniform_noise_images(5, (1, 4, 4), seed=3))
    images = torch.arange(20.0).reshape(20, 1, 1, 1)
    subset = fld.random_subset(images, 8, seed=1)
    assert len(set(subset.flatten().tolist())) == 8  # without replacement
    assert torch.equal(subset, fld.random_subset(images, 8, seed=1))
    with pytest.raises(ValueError):
        fld.random_subset(images, 21)
