"""Recipe benchmarks on trained runs (python -m experiments.bench quality|recipe|sampler|walks): bf16 against
fp32, the training recipe, the samplers at equal network calls, walks across a class boundary. Each trains or
samples with train.py and sample.py and prints a table of docs/SPEED.md or the README.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/bench_recipes.py: run python -m experiments.bench [SECTION ...] (from the repository root)")
import os
import subprocess
import sys
import time

import numpy as np
import torch

# ---------------------------------------------------------------------------
# What the sections train, sample and score: the README's and SPEED.md's tables are made with these values
# (tests make them tiny, here, where each section reads them)
# ---------------------------------------------------------------------------
QUICK_RUN = os.path.join("runs", "quick")  # the main command's run: sampler's and boundary's default
QUALITY_SEEDS, QUALITY_N, EPS_MSE_N = (0, 1), 1000, 2000  # quality: seeds, samples scored, denoising triples
RECIPE_SEEDS, RECIPE_N = (0, 1), 500  # recipe: seeds of each RECIPES entry, samples scored
SAMPLER_N = 500  # sampler: samples scored per SAMPLER_GRID entry
SAMPLER_RESULTS = os.path.join("results", "sampler")  # sampler: every scored set and the table, to rescore
SAMPLER_GUIDANCE = 3  # sampler: sample.py --guidance W, on both conditions
WALKS, WALK_POINTS, WALK_STEPS = 8, 6, None  # walks: walks per method, points per walk, steps (None: sample.py's)
WALK_RUNS = [os.path.join("runs", "bench-recipe", name) for name in  # walks: recipe's two 600-step runs, without
             ("v-600-steps-s0", "v-p-drop-0-1-each-600-steps-s0")]  # and with --p-drop
# Flags added after each train.py / sample.py call's own (a later flag wins): none for the tables
TRAIN_FLAGS: tuple[str, ...] = ()
SAMPLE_FLAGS: tuple[str, ...] = ()


def python(*argv: str, quiet: bool = False, capture: bool = False) -> str:
    """`python ARGV...` (train.py, sample.py, -c CODE) in a fresh process, as a user runs it; a failure stops the
    benchmark (check=True). quiet: its stdout dropped; capture: its stdout returned (else shown). Tests replace
    it with an in-process call."""
    out = subprocess.run([sys.executable, *argv], check=True, text=True,
                         stdout=subprocess.PIPE if capture else subprocess.DEVNULL if quiet else None).stdout
    return out or ""


# ---------------------------------------------------------------------------
# Precision: does bf16 cost quality?
# ---------------------------------------------------------------------------
def bench_quality() -> None:
    """Does bf16 cost quality? The quick run (train.py's defaults) trained and
    evaluated (sample.py --eval, QUALITY_N = 1,000 samples, its default sampler) in fp32 and in bf16 autocast,
    QUALITY_SEEDS 0 and 1:
    about 20 minutes on a 2-core CPU. Finished runs under runs/precision/ are reused (a second call only prints
    the table). Also the denoising error itself: eps-MSE of each EMA model on 2,000 fixed (image, t, noise)."""
    import json

    rows = {}
    for precision in ("fp32", "bf16"):
        for seed in QUALITY_SEEDS:
            out = os.path.join("runs", "precision", f"{precision}-seed{seed}")
            metrics = os.path.join(out, "samples", "metrics.json")
            if not os.path.exists(metrics):
                start = time.perf_counter()
                flags = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
                python("train.py", "--out", out, "--seed", str(seed), "--precision", precision, "--sample-every", "0",
                       *flags, *TRAIN_FLAGS)
                trained = time.perf_counter() - start
                python("sample.py", out, "--out", os.path.join(out, "samples"), "--eval", "--n", str(QUALITY_N),
                       "--precision", precision, "--seed", str(seed), *SAMPLE_FLAGS, quiet=True)
                print(f"{precision} seed {seed}: trained in {trained:.0f} s, evaluated in "
                      f"{time.perf_counter() - start - trained:.0f} s", flush=True)
            with open(metrics) as f:
                scores = json.load(f)["classifier"]
            rows.setdefault(precision, []).append((scores["conditioning_accuracy"], scores["fid"], eps_mse(out)))
    seeds = ", ".join(f"seed {seed}" for seed in QUALITY_SEEDS)
    print(f"precision | conditioning accuracy ({seeds}) | classifier-FID ({seeds}) | eps-MSE ({seeds})")
    for precision, scores in rows.items():
        accuracy, fid, mse = zip(*scores)
        print(f"{precision:9} | {', '.join(f'{a:.3f}' for a in accuracy)} | {', '.join(f'{f:.1f}' for f in fid)} | "
              f"{', '.join(f'{e:.5f}' for e in mse)}")


def eps_mse(run_dir: str) -> float:
    """Mean || eps - eps_theta(x_t, t, cond) ||^2 of a run's EMA model (in fp32) on EPS_MSE_N (2,000) fixed training
    (image, t, noise) triples, eps_theta converted from v for a v-model (ddpm.model_output_to_x0_eps): the
    denoising error in one parameterisation for every recipe, free of any sampler or classifier."""
    import conditions
    from plumbing import rundir
    from train import to_model_range

    run = rundir.load_run(run_dir, precision="fp32")
    g, n = torch.Generator().manual_seed(0), EPS_MSE_N
    idx = torch.randint(0, len(run.images), (n,), generator=g).numpy()
    x0 = to_model_range(torch.from_numpy(run.images[idx]).permute(0, 3, 1, 2))
    t = torch.randint(0, run.diffusion.num_timesteps, (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = run.diffusion.q_sample(x0, t, noise)
    cond = {name: torch.as_tensor(value) for name, value in
            conditions.request_conditions(run, run.labels[idx], run.images[idx], idx).items()}
    with torch.no_grad():
        out = torch.cat([run.model(x_t[i:i + 250], t[i:i + 250], {k: v[i:i + 250] for k, v in cond.items()})
                         for i in range(0, n, 250)])
    _, eps = run.diffusion.model_output_to_x0_eps(x_t, t, out)  # the U-Net may predict v
    return float(((eps - noise) ** 2).mean())


# ---------------------------------------------------------------------------
# The training recipe: which one gets the 2,000-step samples in half the steps?
# ---------------------------------------------------------------------------
# name -> train.py flags, after RECIPE_SIZE; everything else is train.py's defaults at the time of the call.
RECIPE_SIZE = ("--size", "small")  # the U-Net the table was made with (train.py's default until 2026-12-07)
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


def bench_recipe(names: list[str] | None = None, seeds=None, n: int | None = None) -> None:
    """Each RECIPES entry trained on the quick run's data at seeds 0 and 1 (None: RECIPE_SEEDS; runs/bench-recipe/,
    reused when finished) and scored the same way: sample.py --eval with RECIPE_SAMPLER, n (None: RECIPE_N = 500)
    class-balanced samples,
    the requested-digit share and classifier-FID against the held-out test digits, and the share of grey
    backgrounds. About 6 minutes per 1,000 steps plus 1 minute of scoring on a 2-core CPU."""
    import json
    import re

    seeds, n = seeds or RECIPE_SEEDS, n or RECIPE_N
    print("recipe | seed | train s | requested digit | classifier-FID | grey backgrounds | final loss")
    for name in names or RECIPES:
        for seed in seeds:
            out = os.path.join("runs", "bench-recipe", re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + f"-s{seed}")
            scores = os.path.join(out, "samples", "metrics.json")
            trained = None  # seconds, where this call trained the run ("-": reused, trained by an earlier call)
            if not os.path.exists(scores):
                start = time.perf_counter()
                resume = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
                python("train.py", "--out", out, "--seed", str(seed), *RECIPE_SIZE, *RECIPES[name], *resume,
                       *TRAIN_FLAGS, quiet=True)
                trained = time.perf_counter() - start
                python("sample.py", out, "--out", os.path.join(out, "samples"), "--eval", "--n", str(n), "--seed",
                       str(seed), *RECIPE_SAMPLER, *SAMPLE_FLAGS, quiet=True)
            with open(scores) as f:
                m = json.load(f)["classifier"]
            with np.load(os.path.join(out, "samples", "eval_samples.npz")) as z:
                grey = grey_background_share(z["images"][..., 0])
            loss = np.atleast_1d(np.genfromtxt(os.path.join(out, "log.csv"), delimiter=",", names=True)["loss"])[-1]
            seconds = "-" if trained is None else f"{trained:.0f}"
            print(f"{name} | {seed} | {seconds} | {m['conditioning_accuracy']:.3f} | {m['fid']:.2f} | {grey:.3f} | "
                  f"{loss:.4f}", flush=True)


# ---------------------------------------------------------------------------
# Samplers: DDIM against DPM-Solver++(2M) at equal network calls, on one trained run
# ---------------------------------------------------------------------------
SAMPLER_GRID = [("ddim", 25, 1.0), ("ddim", 15, 1.0), ("ddim", 10, 1.0), ("dpm++2m", 25, 1.0), ("dpm++2m", 15, 1.0),
                ("dpm++2m", 10, 1.0), ("dpm++2m", 15, 0.0), ("dpm++2m", 10, 0.0)]


def bench_sampler(run_dir: str | None = None, n: int | None = None) -> None:
    """Quality (requested digit, classifier-FID vs the test digits, grey backgrounds) and the time of n (None:
    SAMPLER_N) guided samples for each sampler, steps and eta of SAMPLER_GRID, on a trained run (None: the main
    command's, QUICK_RUN)."""
    import json
    import shutil

    from plumbing.data import write_atomically

    run_dir, n = run_dir or QUICK_RUN, n or SAMPLER_N
    table, scored = [], []  # the rows; each row's scored set
    print(f"{run_dir}, {n} samples each | sampler | steps | eta | requested digit | classifier-FID | grey | seconds")
    for name, steps, eta in SAMPLER_GRID:
        stem = f"{name}-{steps}-{eta:g}"
        out = os.path.join(run_dir, "bench-sampler", stem)
        start = time.perf_counter()
        python("sample.py", run_dir, "--out", out, "--eval", "--n", str(n), "--sampler", name, "--sampling-steps",
               str(steps), "--eta", str(eta), "--grid-per-class", "1",
               "--guidance", str(SAMPLER_GUIDANCE),  # on both conditions, as docs/SPEED.md's sampler table
               *SAMPLE_FLAGS, quiet=True)
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)["classifier"]
        with np.load(os.path.join(out, "eval_samples.npz")) as z:
            grey = grey_background_share(z["images"][..., 0])
        table.append(dict(sampler=name, steps=steps, eta=eta, accuracy=m["conditioning_accuracy"], fid=m["fid"],
                          grey=grey, seconds=round(seconds, 1), samples=f"{stem}.npz"))
        scored.append(os.path.join(out, "eval_samples.npz"))
        print(f"{name} | {steps} | {eta:g} | {m['conditioning_accuracy']:.3f} | {m['fid']:.2f} | {grey:.3f} | "
              f"{seconds:.0f} (with scoring)", flush=True)
    # every scored set and the table into results/ together, once all are made (an interrupted call changes none)
    os.makedirs(SAMPLER_RESULTS, exist_ok=True)
    for row, path in zip(table, scored):
        shutil.copyfile(path, os.path.join(SAMPLER_RESULTS, row["samples"]))
    text = json.dumps(dict(run=run_dir, n=n, guidance=SAMPLER_GUIDANCE, scored_by="the run's own evaluator "
                           "(sample.py --eval), against the dataset's test digits", rows=table), indent=2)
    write_atomically(os.path.join(SAMPLER_RESULTS, "sampler.json"), lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------
# Walks across a class boundary: does per-condition dropout let the position move the class?
# ---------------------------------------------------------------------------
WALK_METHODS = [("fixed", "line", 3.0), ("none", "line", 3.0), ("none", "features", 3.0),
                ("fixed", "features", {"label": 1.0, "pos": 3.0})]  # (walk label, walk path, guidance)


def bench_walks(run_dirs: list[str] | None = None, a: int = 4, b: int = 9, walks: int | None = None,
                points: int | None = None) -> None:
    """A quick look before the experiment's full measurement (experiments/between.py): `walks` (None: WALKS) walks
    of `points` (None: WALK_POINTS) points from class
    a to b per method of WALK_METHODS on each run (by default the two 600-step recipe runs of
    `python -m experiments.bench recipe`, without and with --p-drop), scored by each run's evaluator: mean P(b)
    along the walk, where it crosses 0.5, the mass on a + b. run_dirs None: WALK_RUNS."""
    import boundary
    import generation
    import metrics
    from plumbing import rundir
    walks, points = walks or WALKS, points or WALK_POINTS
    run_dirs = run_dirs or WALK_RUNS
    s = np.linspace(0, 1, points)
    print(f"{a} -> {b}, {walks} walks of {points} points | run | walk label | path | guidance | mean P({b}) | crossing | mass")
    for run_dir in run_dirs:
        run = rundir.load_run(run_dir)
        net = metrics.load_feature_network("classifier", classifier_path=os.path.join(run.dir, "classifier.pt"),
                                           train_images=run.images, train_labels=run.labels, device=run.device)
        for label, path, guidance in WALK_METHODS:
            sampler = dict(name=generation.DEFAULT_SAMPLER, steps=WALK_STEPS or generation.DEFAULT_STEPS,
                           eta=generation.DEFAULT_ETA, guidance=guidance)
            part = boundary.walks(run, a, b, points, sampler, seed=0, count=walks, label=label, path=path)
            rows = part["labels"] == a  # the rows with label a (every row when the label is dropped)
            p = torch.softmax(torch.as_tensor(net.logits(part["images"][rows])), 1).numpy()
            stats = metrics.walk_statistics(p[:, a].reshape(-1, points), p[:, b].reshape(-1, points), s)
            crossing = "never" if stats["crossing"] is None else f"{stats['crossing']:.2f}"
            print(f"{os.path.basename(run_dir)} | {label} | {path} | {guidance} | "
                  f"{' '.join(f'{v:.2f}' for v in stats['mean_b'])} | {crossing} | {stats['kept_mass']:.2f}", flush=True)


# ---------------------------------------------------------------------------
# The main command in fewer seconds: which recipe keeps its quality? (docs/SPEED.md)
# ---------------------------------------------------------------------------
# name -> train.py flags; everything else is train.py's defaults at the time of the call ("default": [] is them).
QUICK_RECIPES = {
    "default": [],  # --size compact, 800 steps, since 2026-12-07
    "compact, 600 steps": ["--size", "compact", "--steps", "600"],
    "compact, 700 steps": ["--steps", "700"],  # between 600 and the default's 800: the quality those steps buy
    "compact, 650 steps, lr 0.003": ["--steps", "650", "--lr", "0.003"],
    "small, 600 steps": ["--size", "small", "--steps", "600"],  # the default until 2026-12-07
    "small, 400 steps, warm-up 25": ["--size", "small", "--steps", "400", "--warmup", "25"],
    "small, 400 steps, warm-up 25, min-SNR 5": ["--size", "small", "--steps", "400", "--warmup", "25", "--min-snr", "5"],
    # small at half and three quarters of its width (widths 16-32-32, 24-48-48)
    "small, base width 16": ["--size", "small", "--base-channels", "16", "--steps", "600"],
    "small, base width 16, 800 steps": ["--size", "small", "--base-channels", "16", "--steps", "800"],
    "small, base width 16, cosine": ["--size", "small", "--base-channels", "16", "--steps", "600", "--lr-schedule",
                                     "cosine"],
    "small, base width 24": ["--size", "small", "--base-channels", "24", "--steps", "600"],
    # larger batches, fewer steps: train.py takes 15-38 s less, but the second reader (and at fewer images the
    # evaluator) reads fewer samples right than with the default (docs/SPEED.md, 2026-12-07)
    "compact, batch 256, 200 steps": ["--batch-size", "256", "--steps", "200", "--lr", "0.004", "--warmup", "25"],
    "compact, batch 256, 250 steps": ["--batch-size", "256", "--steps", "250", "--lr", "0.004", "--warmup", "25"],
    "compact, batch 128, 400 steps": ["--batch-size", "128", "--steps", "400", "--lr", "0.003", "--warmup", "50"],
    "compact, batch 128, 450 steps": ["--batch-size", "128", "--steps", "450", "--lr", "0.003", "--warmup", "50"],
    "compact, batch 128, 400 steps, lr 0.002": ["--batch-size", "128", "--steps", "400", "--warmup", "50"],
}
QUICK_SEEDS = (0, 1)  # seed S: the training (U-Net, UMAP, batches) and sample.py --eval's noise and references
QUICK_RUNS = os.path.join("runs", "bench-quick")
QUICK_RESULTS = os.path.join("results", "quick-recipe")  # every scored set and the table, to rescore
QUICK_EVAL_FLAGS: tuple[str, ...] = ()  # added to sample.py --eval's flags: none (tests score fewer samples)


def quick_readers():
    """The experiment's evaluator and second reader (experiments/common.py, between.py; trained once, on the
    training digits without the noise floor's, kept in QUICK_RUNS): the same two readers score every recipe,
    so recipes are compared without each run's own retrained evaluator."""
    from experiments import between, common

    digits = common.Digits.load()
    scorer = common.Scorer(QUICK_RUNS, digits, None)
    fit = digits.evaluator_train()
    second = common.kept_classifier(os.path.join(QUICK_RUNS, between.SECOND_READER_FILE), digits.images[fit],
                                    digits.labels[fit], seed=between.SECOND_READER_SEED,
                                    width=between.SECOND_READER_WIDTH)
    return scorer, second


def bench_quick(names: list[str] | None = None, seeds=None) -> None:
    """Each QUICK_RECIPES entry run as the main command runs it (train.py --seed S, then sample.py --references 2
    --eval --seed S: 1,000 class-balanced samples scored against the 1,000 test digits), seeds QUICK_SEEDS, under
    QUICK_RUNS (reused when finished); every scored set read by the same two readers (`quick_readers`) and kept in
    QUICK_RESULTS with the table (quick.json, which keeps the rows of recipes and seeds not run in this call). Per run: the training steps, the evaluator's requested-digit share
    and classifier-FID, the second reader's requested-digit share, and control (metrics.json's own-reference
    rate). About 2.5 minutes per default (compact, 800-step) run on a 2-core CPU, 4 for small at 600 steps."""
    import json
    import math
    import re

    import metrics
    from experiments import common
    from plumbing.data import write_atomically

    seeds = seeds or QUICK_SEEDS
    scorer, second = quick_readers()
    os.makedirs(QUICK_RESULTS, exist_ok=True)
    kept = os.path.join(QUICK_RESULTS, "quick.json")
    table = []  # this call's rows, then the kept rows of other recipes and seeds
    print("recipe | seed | steps | train s | evaluator: requested digit | classifier-FID | second reader: "
          "requested digit | control")
    for name in names or QUICK_RECIPES:
        for seed in seeds:
            stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + f"-s{seed}"
            out = os.path.join(QUICK_RUNS, stem)
            scored = os.path.join(out, "samples", "eval_samples.npz")
            trained = None  # seconds, where this call trained the run (a reused run: those kept in quick.json)
            argv = ["--out", out, "--seed", str(seed), *QUICK_RECIPES[name], *TRAIN_FLAGS]
            differs = os.path.exists(os.path.join(out, "config.json")) and common.settings_differ(out, argv)
            if differs:
                raise SystemExit(f"python -m experiments.bench quick: {differs} (recipe {name!r}); move it away and "
                                 "run again")
            if not os.path.exists(os.path.join(out, "samples", "metrics.json")):
                start = time.perf_counter()
                resume = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
                python("train.py", *argv, *resume, quiet=True)
                trained = time.perf_counter() - start
                python("sample.py", out, "--out", os.path.join(out, "samples"), "--references", "2", "--eval",
                       "--seed", str(seed), *SAMPLE_FLAGS, *QUICK_EVAL_FLAGS, quiet=True)
            with open(os.path.join(out, "samples", "metrics.json")) as f:
                control = json.load(f)["controllability"]["own_reference_rate"]
            with open(os.path.join(out, "config.json")) as f:
                steps = json.load(f)["settings"]["steps"]
            with np.load(scored) as z:
                images, requested = z["images"], z["labels"]
            score = scorer.score(images, requested, None)[0]
            row = dict(recipe=name, seed=seed, steps=steps, train_seconds=trained, accuracy=score["accuracy"],
                       fid=score["fid"], second_accuracy=metrics.conditioning_accuracy(second.logits(images), requested),
                       control=control, samples=f"{stem}.npz")
            table.append(row)
            write_atomically(os.path.join(QUICK_RESULTS, f"{stem}.npz"),
                             lambda f: np.savez_compressed(f, images=images, labels=requested))
            seconds = "-" if trained is None else f"{trained:.0f}"
            print(f"{name} | {seed} | {steps} | {seconds} | {row['accuracy']:.3f} | {row['fid']:.2f} | "
                  f"{row['second_accuracy']:.3f} | {control:.3f}", flush=True)
    if os.path.exists(kept):
        with open(kept) as f:
            earlier = {(row["recipe"], row["seed"]): row for row in json.load(f)["rows"]}
        for row in table:  # a reused run keeps the training seconds measured when it was trained
            if row["train_seconds"] is None and (row["recipe"], row["seed"]) in earlier:
                seconds = earlier[(row["recipe"], row["seed"])]["train_seconds"]  # (NaN in files before null)
                row["train_seconds"] = seconds if seconds is not None and math.isfinite(seconds) else None
        done = {(row["recipe"], row["seed"]) for row in table}
        table += [row for key, row in earlier.items() if key not in done]
    write_atomically(kept,
                     lambda f: f.write(json.dumps(dict(readers="the experiment's evaluator and second reader, "
                                                               "kept in runs/bench-quick/", rows=table),
                                                  indent=2).encode()))
