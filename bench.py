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
    raise NotImplementedError  # helper A


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
