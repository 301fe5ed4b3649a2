"""What serves the method rather than states it; a learner need not open it.

    rundir.py           run directories: config.json, checkpoint.pt, space.npz, the rules of resume, overwrite and
                        belonging, loading a run back (load_run), all-or-none writes, memory checks
    train_command.py    train.py's flags and checks, the run in --out, config.json, the lock, one-line errors
    commands.py         sample.py's flags and checks
    metrics_command.py  metrics.py's command line and the image sets it reads
    outputs.py          meta.json, samples.npz and the PNG grids
    data.py             datasets (the embedded MNIST sample, MNIST, image folders) and atomic writes
    classifier.py       the small CNN the evaluator and the boundary guide are made of
    weights.py          pretrained weights (hub, offline, local files read without code) and the feature cache
    precision.py        bf16 / fp16 autocast and fp16's loss scaler
    lock.py, losslog.py, errors.py   one writer per run; log.csv and loss.png; the error types
"""
