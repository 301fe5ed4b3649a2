"""Moved: the benchmarks are experiments/bench.py, run as python -m experiments.bench."""
import sys

print("bench.py: moved; run python -m experiments.bench [diffusion|recipe|sampler|walks|boundary|features|metrics|"
      "quality|gpu ...]", file=sys.stderr)
sys.exit(2)
