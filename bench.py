"""Speed benchmarks: `python bench.py [diffusion|features|metrics ...]`.

Targets live here, not in timed tests (timings on shared machines are noisy:
compare ratios measured in one run). Each section prints what it measured;
the README quotes these numbers and names the machine that made them.
"""
import sys
import time

import numpy as np
import torch


def timed(fn, repeat: int = 1) -> float:
    """Seconds per call of fn(), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


# ---------------------------------------------------------------------------
# Diffusion core (ddpm.py, unet.py)
# ---------------------------------------------------------------------------
def bench_diffusion() -> None:
    raise NotImplementedError  # lead engineer


# ---------------------------------------------------------------------------
# Feature positioning (features.py)
# ---------------------------------------------------------------------------
def bench_features() -> None:
    """UMAP fit on 10,000 x 1,024 features (cold and warm), transform of 20 references, extraction speed."""
    from data import load_dataset
    from features import PAPER_BACKBONE, FeatureSpace, extract_features

    # 10 Gaussian clusters in 1,024-d, 1,000 points each: the shape of 10 classes of SwinV2 features
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (10, 1024))
    features = (centres[np.arange(10_000) % 10] + rng.normal(0.0, 1.0, (10_000, 1024))).astype(np.float32)
    references = features[:20] + 0.1 * rng.normal(0.0, 1.0, (20, 1024)).astype(np.float32)

    start = time.perf_counter()
    space = FeatureSpace.fit(features, n_components=20)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    space = FeatureSpace.fit(features, n_components=20)
    print(f"FeatureSpace.fit 10,000 x 1,024 -> 20-d: first call {cold:.1f} s (numba compilation), "
          f"warm {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    space.transform(references)
    cold = time.perf_counter() - start
    warm = timed(lambda: space.transform(references), 3)
    print(f"transform of 20 references: first call {cold:.2f} s (numba compilation), warm {warm:.2f} s")

    images = load_dataset("mnist-sample")[0]  # (5000, 28, 28, 1)
    seconds = timed(lambda: extract_features(images, "pixels"), 3)
    print(f"extract_features pixels: {len(images) / seconds:,.0f} images/s")
    for backbone, n in (("resnet18", 128), (PAPER_BACKBONE, 16)):  # random weights: speed only
        extract_features(images[:4], backbone, weights="random", cache_dir=None)  # warm-up
        start = time.perf_counter()
        extract_features(images[:n], backbone, weights="random", batch_size=16, cache_dir=None)
        print(f"extract_features {backbone} (random weights), 28x28 MNIST digits: "
              f"{n / (time.perf_counter() - start):.1f} images/s on {'cuda' if torch.cuda.is_available() else 'cpu'}")


# ---------------------------------------------------------------------------
# Metrics (metrics.py)
# ---------------------------------------------------------------------------
def bench_metrics() -> None:
    raise NotImplementedError  # helper B


SECTIONS = {"diffusion": bench_diffusion, "features": bench_features, "metrics": bench_metrics}

if __name__ == "__main__":
    names = sys.argv[1:] or list(SECTIONS)
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"bench.py: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        print(f"== {name} ==", flush=True)
        SECTIONS[name]()
