"""Moved: the paper's experiment is the package experiments/ (one file per section), run as python -m experiments."""
import sys

print("experiment.py: moved; run python -m experiments [--sections compare control between augment]", file=sys.stderr)
sys.exit(2)
