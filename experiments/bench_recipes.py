"""Recipe benchmarks on trained runs (python -m experiments.bench quality|recipe|sampler|walks): bf16 against
fp32, the training recipe, the samplers at equal network calls, walks across a class boundary. Each trains or
samples with train.py and sample.py and prints a table of docs/SPEED.md or the README.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/bench_recipes.py: run python -m experiments.bench [SECTION ...] (from the repository root)")
import sys
import time

import numpy as np
import torch


# ---------------------------------------------------------------------------
# Precision: does bf16 cost quality?
# ---------------------------------------------------------------------------
def bench_quality() -> None:
    """Does bf16 cost quality? The quick run (train.py's defaults) trained and
    evaluated (sample.py --eval, 1,000 samples, its default sampler) in fp32 and in bf16 autocast, seeds 0 and 1:
    about 20 minutes on a 2-core CPU. Finished runs under runs/precision/ are reused (a second call only prints
    the table). Also the denoising error itself: eps-MSE of each EMA model on 2,000 fixed (image, t, noise)."""
    import json
    import os
    import subprocess

    rows = {}
    for precision in ("fp32", "bf16"):
        for seed in (0, 1):
            out = os.path.join("runs", "precision", f"{precision}-seed{seed}")
            metrics = os.path.join(out, "samples", "metrics.json")
            if not os.path.exists(metrics):
                start = time.perf_counter()
                flags = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
                subprocess.run([sys.executable, "train.py", "--out", out, "--seed", str(seed), "--precision", precision,
                                "--sample-every", "0", *flags], check=True)
                trained = time.perf_counter() - start
                subprocess.run([sys.executable, "sample.py", out, "--out", os.path.join(out, "samples"), "--eval",
                                "--precision", precision, "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
                print(f"{precision} seed {seed}: trained in {trained:.0f} s, evaluated in "
                      f"{time.perf_counter() - start - trained:.0f} s", flush=True)
            with open(metrics) as f:
                scores = json.load(f)["classifier"]
            rows.setdefault(precision, []).append((scores["conditioning_accuracy"], scores["fid"], eps_mse(out)))
    print("precision | conditioning accuracy (seed 0, seed 1) | classifier-FID (seed 0, seed 1) | eps-MSE (seed 0, seed 1)")
    for precision, ((a0, f0, e0), (a1, f1, e1)) in rows.items():
        print(f"{precision:9} | {a0:.3f}, {a1:.3f} | {f0:.1f}, {f1:.1f} | {e0:.5f}, {e1:.5f}")


def eps_mse(run_dir: str) -> float:
    """Mean || eps - eps_theta(x_t, t, cond) ||^2 of a run's EMA model (in fp32) on 2,000 fixed training
    (image, t, noise) triples, eps_theta converted from v for a v-model (ddpm.model_output_to_x0_eps): the
    denoising error in one parameterisation for every recipe, free of any sampler or classifier."""
    import conditions
    from plumbing import rundir
    from train import to_model_range

    run = rundir.load_run(run_dir, precision="fp32")
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(run.images), (2000,), generator=g).numpy()
    x0 = to_model_range(torch.from_numpy(run.images[idx]).permute(0, 3, 1, 2))
    t = torch.randint(0, run.diffusion.num_timesteps, (2000,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = run.diffusion.q_sample(x0, t, noise)
    cond = {name: torch.as_tensor(value) for name, value in
            conditions.request_conditions(run, run.labels[idx], run.images[idx], idx).items()}
    with torch.no_grad():
        out = torch.cat([run.model(x_t[i:i + 250], t[i:i + 250], {k: v[i:i + 250] for k, v in cond.items()})
                         for i in range(0, 2000, 250)])
    _, eps = run.diffusion.model_output_to_x0_eps(x_t, t, out)  # the U-Net may predict v
    return float(((eps - noise) ** 2).mean())


# ---------------------------------------------------------------------------
# The training recipe: which one gets the 2,000-step samples in half the steps?
# ---------------------------------------------------------------------------
# name -> train.py flags; everything else is train.py's defaults at the time of the call.
RECIPES = {
    "eps, 2000 steps (the previous recipe)": ["--prediction", "eps", "--steps", "2000", "--p-drop", ""],
    "eps, 1000 steps": ["--prediction", "eps", "--steps", "1000", "--p-drop", ""],
    "v, 1000 steps": ["--prediction", "v", "--steps", "1000", "--p-drop", ""],
    "v + min-SNR-5, 1000 steps": ["--prediction", "v", "--min-snr", "5", "--steps", "1000", "--p-drop", ""],
    "v + p-drop 0.1 each, 1000 steps": ["--prediction", "v", "--steps", "1000", "--p-drop", "label=0.1,pos=0.1"],
    "v, 600 steps": ["--prediction", "v", "--steps", "600", "--p-drop", ""],
    "v + p-drop 0.1 each, 600 steps": ["--prediction", "v", "--steps", "600", "--p-drop", "label=0.1,pos=0.1"],
    "v + p-drop 0.1 each + cosine lr, 600 steps": ["--prediction", "v", "--steps", "600", "--p-drop",
                                                   "label=0.1,pos=0.1", "--lr-schedule", "cosine"],
}


# The sampler every recipe is scored with (sample.py's default when the recipes were compared, kept fixed).
RECIPE_SAMPLER = ["--sampler", "ddim", "--sampling-steps", "25", "--eta", "1", "--guidance", "3"]


def grey_background_share(images: np.ndarray, level: int = 40) -> float:
    """The share of samples whose 3-pixel frame (its corners counted twice) averages above `level` (MNIST's backgrounds are black, 0):
    the failure of short runs, measured without any classifier."""
    frame = np.concatenate([images[:, :3].reshape(len(images), -1), images[:, -3:].reshape(len(images), -1),
                            images[:, :, :3].reshape(len(images), -1), images[:, :, -3:].reshape(len(images), -1)], 1)
    return float((frame.mean(axis=1) > level).mean())


def bench_recipe(names: list[str] | None = None, seeds=(0, 1), n: int = 500) -> None:
    """Each RECIPES entry trained on the quick run's data at seeds 0 and 1 (runs/bench-recipe/, reused when
    finished) and scored the same way: sample.py --eval with RECIPE_SAMPLER, n class-balanced samples,
    the requested-digit share and classifier-FID against the held-out test digits, and the share of grey
    backgrounds. About 6 minutes per 1,000 steps plus 1 minute of scoring on a 2-core CPU."""
    import json
    import os
    import re
    import subprocess

    print("recipe | seed | train s | requested digit | classifier-FID | grey backgrounds | final loss")
    for name in names or RECIPES:
        for seed in seeds:
            out = os.path.join("runs", "bench-recipe", re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + f"-s{seed}")
            scores = os.path.join(out, "samples", "metrics.json")
            trained = float("nan")
            if not os.path.exists(scores):
                start = time.perf_counter()
                resume = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
                subprocess.run([sys.executable, "train.py", "--out", out, "--seed", str(seed), *RECIPES[name], *resume],
                               check=True, stdout=subprocess.DEVNULL)
                trained = time.perf_counter() - start
                subprocess.run([sys.executable, "sample.py", out, "--out", os.path.join(out, "samples"), "--eval",
                                "--n", str(n), "--seed", str(seed), *RECIPE_SAMPLER], check=True, stdout=subprocess.DEVNULL)
            with open(scores) as f:
                m = json.load(f)["classifier"]
            with np.load(os.path.join(out, "samples", "eval_samples.npz")) as z:
                grey = grey_background_share(z["images"][..., 0])
            loss = np.genfromtxt(os.path.join(out, "log.csv"), delimiter=",", names=True)["loss"][-1]
            print(f"{name} | {seed} | {trained:.0f} | {m['conditioning_accuracy']:.3f} | {m['fid']:.2f} | {grey:.3f} | "
                  f"{loss:.4f}", flush=True)


# ---------------------------------------------------------------------------
# Samplers: DDIM against DPM-Solver++(2M) at equal network calls, on one trained run
# ---------------------------------------------------------------------------
SAMPLER_GRID = [("ddim", 25, 1.0), ("ddim", 15, 1.0), ("ddim", 10, 1.0), ("dpm++2m", 25, 1.0), ("dpm++2m", 15, 1.0),
                ("dpm++2m", 10, 1.0), ("dpm++2m", 15, 0.0), ("dpm++2m", 10, 0.0)]


def bench_sampler(run_dir: str = "runs/quick", n: int = 500) -> None:
    """Quality (requested digit, classifier-FID vs the test digits, grey backgrounds) and the time of n guided
    samples for each sampler, steps and eta of SAMPLER_GRID, on a trained run (the main command's, by default)."""
    import json
    import os
    import subprocess

    print(f"{run_dir}, {n} samples each | sampler | steps | eta | requested digit | classifier-FID | grey | seconds")
    for name, steps, eta in SAMPLER_GRID:
        out = os.path.join(run_dir, "bench-sampler", f"{name}-{steps}-{eta:g}")
        start = time.perf_counter()
        subprocess.run([sys.executable, "sample.py", run_dir, "--out", out, "--eval", "--n", str(n), "--sampler", name,
                        "--sampling-steps", str(steps), "--eta", str(eta), "--grid-per-class", "1",
                        "--guidance", "3"],  # w = 3 on both conditions, as the README's sampler table
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)["classifier"]
        with np.load(os.path.join(out, "eval_samples.npz")) as z:
            grey = grey_background_share(z["images"][..., 0])
        print(f"{name} | {steps} | {eta:g} | {m['conditioning_accuracy']:.3f} | {m['fid']:.2f} | {grey:.3f} | "
              f"{seconds:.0f} (with scoring)", flush=True)


# ---------------------------------------------------------------------------
# Walks across a class boundary: does per-condition dropout let the position move the class?
# ---------------------------------------------------------------------------
WALK_METHODS = [("fixed", "line", 3.0), ("none", "line", 3.0), ("none", "features", 3.0),
                ("fixed", "features", {"label": 1.0, "pos": 3.0})]  # (walk label, walk path, guidance)


def bench_walks(run_dirs: list[str] | None = None, a: int = 4, b: int = 9, walks: int = 8, points: int = 6) -> None:
    """A quick look before the experiment's full measurement (experiments/between.py): `walks` walks from class
    a to b per method of WALK_METHODS on each run (by default the two 600-step recipe runs of
    `python -m experiments.bench recipe`, without and with --p-drop), scored by each run's evaluator: mean P(b)
    along the walk, where it crosses 0.5, the mass on a + b."""
    import os

    import boundary
    import generation
    import metrics
    from plumbing import rundir
    run_dirs = run_dirs or [os.path.join("runs", "bench-recipe", name) for name in
                            ("v-600-steps-s0", "v-p-drop-0-1-each-600-steps-s0")]
    s = np.linspace(0, 1, points)
    print(f"{a} -> {b}, {walks} walks of {points} points | run | walk label | path | guidance | mean P({b}) | crossing | mass")
    for run_dir in run_dirs:
        run = rundir.load_run(run_dir)
        net = metrics.load_feature_network("classifier", classifier_path=os.path.join(run.dir, "classifier.pt"),
                                           train_images=run.images, train_labels=run.labels, device=run.device)
        for label, path, guidance in WALK_METHODS:
            sampler = dict(name=generation.DEFAULT_SAMPLER, steps=generation.DEFAULT_STEPS, eta=generation.DEFAULT_ETA,
                           guidance=guidance)
            part = boundary.walks(run, a, b, points, sampler, seed=0, count=walks, label=label, path=path)
            rows = part["labels"] == a  # the rows with label a (every row when the label is dropped)
            p = torch.softmax(torch.as_tensor(net.logits(part["images"][rows])), 1).numpy()
            stats = metrics.walk_statistics(p[:, a].reshape(-1, points), p[:, b].reshape(-1, points), s)
            crossing = "never" if stats["crossing"] is None else f"{stats['crossing']:.2f}"
            print(f"{os.path.basename(run_dir)} | {label} | {path} | {guidance} | "
                  f"{' '.join(f'{v:.2f}' for v in stats['mean_b'])} | {crossing} | {stats['kept_mass']:.2f}", flush=True)
