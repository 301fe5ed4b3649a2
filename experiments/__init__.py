"""The paper's experiment (python -m experiments) and the benchmarks (python -m experiments.bench)."""
