"""What serves the method rather than states it: run directories and their rules, flags and checks, output
files, locks, precision, pretrained weights and caches, the loss log, data loading, the small classifier the
evaluator and the guide are made of, and metrics.py's command line. A learner need not open it."""
