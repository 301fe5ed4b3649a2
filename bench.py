"""Speed and recipe benchmarks: `python bench.py [diffusion|recipe|sampler|walks|boundary|features|metrics|quality|gpu ...]`.

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
# Diffusion core (ddpm.py, unet.py): every speed as a ratio measured in this run
# ---------------------------------------------------------------------------
def matmul_gflops(dtype: torch.dtype, device: str = "cpu", n: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of a large matmul in `dtype`: the machine's practical peak (2 n^3 flops per product)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, repeat) / 1e9


def unet_setup(size: str = "small", batch: int = 64, device: str = "cpu"):
    """A U-Net of train.py's --size (label+pos, 28x28), its diffusion, AdamW and a random batch of `batch`."""
    from ddpm import Diffusion, beta_schedule
    from train import unet_kwargs
    from unet import UNet

    torch.manual_seed(0)
    net = UNet(**unet_kwargs(size, (28, 28, 1), None, {"label": 10, "pos": 20})).to(device)
    diffusion = Diffusion(beta_schedule("linear", 1000)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 1, 28, 28, device=device)  # (B, 1, 28, 28)
    cond = {"label": torch.randint(0, 10, (batch,), device=device), "pos": torch.randn(batch, 20, device=device)}
    return net, diffusion, opt, x0, cond


def bench_diffusion() -> None:
    """The small CPU U-Net at batch 64 on 28x28, label+pos conditions, fp32 and bf16 autocast.

    Targets: the training step reaches at least 25% of the large-matmul rate in
    fp32 (printed for bf16 too: AMX's bf16 matmul is out of a small U-Net's reach); on hardware with native bf16 (sample.native_bf16), bf16
    trains and samples at least 1.3x as fast as fp32; guidance batched into one
    call is at least as fast as its two calls made one after the other.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from sample import autocast, native_bf16
    from unet import count_parameters

    net, diffusion, opt, x0, cond = unet_setup()
    cpu = torch.device("cpu")

    def train_step():
        opt.zero_grad(set_to_none=True)
        diffusion.loss(net, x0, cond, p_uncond=0.1).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        diffusion.loss(net, x0, cond).backward()
    flops = counter.get_total_flops()  # one forward + backward of a batch of 64
    t = torch.full((64,), 500)
    print(f"threads {torch.get_num_threads()} | small U-Net {count_parameters(net) / 1e6:.2f}M params, "
          f"{flops / 64 / 1e9:.2f} GFLOP per training image | native bf16 on this CPU: {native_bf16(cpu)}")
    rates = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        peak = matmul_gflops(dtype or torch.float32)
        with autocast(cpu, dtype):
            step_s = timed(train_step, repeat=10)
            with torch.no_grad():
                call_s = timed(lambda: diffusion.guided_output(net, x0, t, cond, 1.0), repeat=10)
                batched_s = timed(lambda: diffusion.guided_output(net, x0, t, cond, 3.0), repeat=10)
                two_s = timed(lambda: (net(x0, t, cond), net(x0, t, {})), repeat=10)
        rates[name] = (64 / step_s, 64 / call_s)
        achieved = flops / step_s / 1e9
        print(f"{name}: large matmul {peak:7.1f} GFLOP/s | training (batch 64) {64 / step_s:6.1f} images/s = "
              f"{achieved:5.1f} GFLOP/s = {100 * achieved / peak:3.0f}% of the {name} matmul (target >= 25% in fp32)")
        print(f"{name}: sampling (batch 64) {64 / call_s:6.1f} image-steps/s at guidance 1; at guidance 3 "
              f"{64 / batched_s:6.1f} image-steps/s batched vs {64 / two_s:6.1f} in two calls "
              f"= {two_s / batched_s:.2f}x (target >= 1.0x)")
    print(f"bf16 / fp32: training {rates['bf16'][0] / rates['fp32'][0]:.2f}x, sampling "
          f"{rates['bf16'][1] / rates['fp32'][1]:.2f}x (target >= 1.3x where bf16 is native)")


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
    import sample
    from train import to_model_range

    run = sample.load_run(run_dir, precision="fp32")
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(run.images), (2000,), generator=g).numpy()
    x0 = to_model_range(torch.from_numpy(run.images[idx]).permute(0, 3, 1, 2))
    t = torch.randint(0, run.diffusion.num_timesteps, (2000,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = run.diffusion.q_sample(x0, t, noise)
    cond = {name: torch.as_tensor(value) for name, value in
            sample.request_conditions(run, run.labels[idx], run.images[idx], idx).items()}
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
    """A quick look before experiment.py's full measurement: `walks` walks from class a to b per method of
    WALK_METHODS on each run (by default the two 600-step recipe runs of `bench.py recipe`, without and with
    --p-drop), scored by each run's evaluator: mean P(b) along the walk, where it crosses 0.5, the mass on a + b."""
    import os

    import metrics
    import sample

    run_dirs = run_dirs or [os.path.join("runs", "bench-recipe", name) for name in
                            ("v-600-steps-s0", "v-p-drop-0-1-each-600-steps-s0")]
    s = np.linspace(0, 1, points)
    print(f"{a} -> {b}, {walks} walks of {points} points | run | walk label | path | guidance | mean P({b}) | crossing | mass")
    for run_dir in run_dirs:
        run = sample.load_run(run_dir)
        net = metrics.load_feature_network("classifier", classifier_path=os.path.join(run.dir, "classifier.pt"),
                                           train_images=run.images, train_labels=run.labels, device=run.device)
        for label, path, guidance in WALK_METHODS:
            sampler = dict(name=sample.DEFAULT_SAMPLER, steps=sample.DEFAULT_STEPS, eta=sample.DEFAULT_ETA,
                           guidance=guidance)
            part = sample.walks(run, a, b, points, sampler, seed=0, count=walks, label=label, path=path)
            rows = part["labels"] == a  # the rows with label a (every row when the label is dropped)
            p = torch.softmax(torch.as_tensor(net.logits(part["images"][rows])), 1).numpy()
            stats = metrics.walk_statistics(p[:, a].reshape(-1, points), p[:, b].reshape(-1, points), s)
            crossing = "never" if stats["crossing"] is None else f"{stats['crossing']:.2f}"
            print(f"{os.path.basename(run_dir)} | {label} | {path} | {guidance} | "
                  f"{' '.join(f'{v:.2f}' for v in stats['mean_b'])} | {crossing} | {stats['kept_mass']:.2f}", flush=True)


# ---------------------------------------------------------------------------
# Boundary samples: the time of `python sample.py RUN --boundary A B --n 100` (target: within 3 minutes on 2 CPU cores)
# ---------------------------------------------------------------------------
def bench_boundary(run_dir: str = "runs/quick", a: int = 4, b: int = 9, n: int = 100,
                   methods: tuple[str, ...] | None = None) -> None:
    """Seconds for n boundary samples per method on a trained run (the guide trained first, once, not timed), with
    the share of walks that crossed and the images generated (sample.BOUNDARY_GRID + halvings + 1 per walk)."""
    import sample

    run = sample.load_run(run_dir)
    guide = sample.boundary_guide(run)  # kept as guide.pt: later calls only load it
    print(f"{run_dir}, {a} -> {b}, {n} walks | method | seconds | crossed | guide mean P({b}) at s*")
    for method in methods or sample.BOUNDARY_METHODS:
        if sample.BOUNDARY_NEEDS[method] not in run.config["unet"]["conditions"]:
            continue
        start = time.perf_counter()
        part = sample.boundary_samples(run, a, b, n, method, seed=0, guide=guide)
        seconds = time.perf_counter() - start
        prob = f"{part['prob'][:, 1].mean():.2f}" if len(part["prob"]) else "-"
        print(f"{method} | {seconds:.1f} | {part['crossed'].mean():.2f} | {prob}", flush=True)


# ---------------------------------------------------------------------------
# The GPU check: one command for a session that has a GPU machine (CI has none)
# ---------------------------------------------------------------------------
def bench_gpu() -> None:
    """The paper-size U-Net on a CUDA GPU (bf16, with and without torch.compile), sampling speed, peak
    memory, then 300 training steps of the quick run on the GPU with a grid. Under 5 minutes on an H100."""
    import os
    import subprocess

    from sample import autocast
    from unet import count_parameters

    if not torch.cuda.is_available():
        sys.exit("bench.py gpu: no CUDA device here (this check is for a GPU machine)")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    print(f"bf16 matmul 8192^2: {matmul_gflops(torch.bfloat16, 'cuda', 8192, 20) / 1e3:.0f} TFLOP/s")
    batch = 256
    for compiled in (False, True):
        net, diffusion, opt, x0, cond = unet_setup("paper", batch, device)
        model = torch.compile(net) if compiled else net

        def train_step():
            opt.zero_grad(set_to_none=True)
            with autocast(device, torch.bfloat16):
                loss = diffusion.loss(model, x0, cond, p_uncond=0.1)
            loss.backward()
            opt.step()

        def synced(fn):
            return lambda: (fn(), torch.cuda.synchronize())

        start = time.perf_counter()
        train_step()  # includes compilation
        first = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats()
        step_s = timed(synced(train_step), repeat=20)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        t = torch.full((batch,), 500, device=device)
        with torch.no_grad(), autocast(device, torch.bfloat16):
            guided_s = timed(synced(lambda: diffusion.guided_output(model, x0, t, cond, 3.0)), repeat=20)
        print(f"paper U-Net {count_parameters(net) / 1e6:.1f}M, bf16, compile={compiled}: first step {first:.1f} s | "
              f"training {batch / step_s:8.0f} images/s (batch {batch}) | sampling {batch / guided_s:8.0f} "
              f"image-steps/s at guidance 3 | peak memory {peak:.2f} GiB")
    out = os.path.join("runs", "gpu-check")
    for argv in (["train.py", "--out", out, "--overwrite", "--steps", "300", "--sample-every", "0"],
                 ["sample.py", out, "--out", os.path.join(out, "samples"), "--references", "2"]):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=True)
        print(f"{' '.join(argv)}: {time.perf_counter() - start:.1f} s")
    print(f"grids: {out}/grids/step0000300.png, {out}/samples/class_grid.png, {out}/samples/references.png")


# ---------------------------------------------------------------------------
# Feature positioning (features.py)
# ---------------------------------------------------------------------------
def bench_features() -> None:
    """UMAP fit on 10,000 x 1,024 features (cold and warm); saving and loading that space, transform after
    loading (in a fresh process, as sample.py runs, and warm); agreement of FeatureSpace.transform with
    umap-learn's own UMAP.transform where umap searches approximate (NN-descent) neighbours; extraction speed."""
    import os
    import subprocess
    import tempfile

    from data import load_mnist_sample
    from features import PAPER_BACKBONE, FeatureSpace, extract_features, nearest_neighbours

    def agreement(space: FeatureSpace, x: np.ndarray, what: str, labels=None, train_labels=None) -> None:
        """FeatureSpace.transform (exact neighbours) vs the fitted umap.UMAP.transform (NN-descent neighbours),
        next to the transform's own seed-to-seed spread (transform_seed 42 vs 43, both exact)."""
        k = space.params["n_neighbors"]
        exact = nearest_neighbours(x, space.features, k)[0]
        approximate = space.umap._knn_search_index.query(x, k, epsilon=0.12)[0]  # what umap.transform searches
        differ = np.mean([set(a) != set(b) for a, b in zip(exact, approximate)])
        ours, theirs = space.transform(x), space.umap.transform(x)  # (M, d) each
        reseeded = FeatureSpace(space.features, space.positions, dict(space.params, transform_seed=43),
                                space.backbone).transform(x)
        diff = np.abs(ours - theirs)  # UMAP units
        print(f"  {what}: {len(x)} points, umap's neighbour set differs from the exact one for {100 * differ:.1f}%")
        print(f"    |ours - umap| max {diff.max():.3g}, mean {diff.mean():.3g} UMAP units (positions' std "
              f"{space.std.mean():.3g}); standardised (what the U-Net sees): max {(diff / space.std).max():.3g}, "
              f"mean {(diff / space.std).mean():.3g}; identical rows {100 * np.mean((diff == 0).all(axis=1)):.1f}%")
        rng = np.random.default_rng(1)
        pairs = rng.integers(0, len(space.positions), (2, 2000))
        z_train = space.standardize(space.positions)
        typical = np.median(np.linalg.norm(z_train[pairs[0]] - z_train[pairs[1]], axis=1))
        for name, other in (("ours vs umap", theirs), ("ours, transform_seed 42 vs 43", reseeded)):
            gap = np.linalg.norm(space.standardize(ours) - space.standardize(other), axis=1)  # (M,), 20-d
            print(f"    {name}: distance between the two positions (standardised) median {np.median(gap):.3g}, "
                  f"95th pct {np.percentile(gap, 95):.3g}, max {gap.max():.3g}, > 1 for {100 * np.mean(gap > 1):.1f}% "
                  f"(two random training positions: median {typical:.3g})")
        if labels is not None:  # is the position among training images of the same digit?
            def nearest_label(u):
                return train_labels[nearest_neighbours(u, space.positions, 1)[0][:, 0]]
            print(f"    label of the nearest training position = the digit's label: ours "
                  f"{100 * np.mean(nearest_label(ours) == labels):.1f}%, umap {100 * np.mean(nearest_label(theirs) == labels):.1f}%")

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

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "space.npz")
        np.save(os.path.join(tmp, "references.npy"), references)
        start = time.perf_counter()
        space.save(path, run_id="bench")
        saved = time.perf_counter() - start
        start = time.perf_counter()
        loaded = FeatureSpace.load(path)
        print(f"save {saved:.2f} s ({os.path.getsize(path) / 1e6:.0f} MB), load {time.perf_counter() - start:.2f} s "
              "(no refit)")
        # sample.py's situation: a fresh process loads the space and places references (numba compiles once)
        script = (
            "import sys, time; sys.path.insert(0, sys.argv[3]); import numpy as np; start = time.perf_counter(); "
            "from features import FeatureSpace; space = FeatureSpace.load(sys.argv[1]); "
            "loaded = time.perf_counter() - start; x = np.load(sys.argv[2]); start = time.perf_counter(); "
            "space.transform(x); first = time.perf_counter() - start; start = time.perf_counter(); "
            "space.transform(x); print(f'{loaded:.2f} {first:.2f} {time.perf_counter() - start:.2f}')"
        )
        out = subprocess.run([sys.executable, "-c", script, path, os.path.join(tmp, "references.npy"),
                              os.path.dirname(os.path.abspath(__file__))],
                             capture_output=True, text=True, check=True).stdout.split()
        print(f"fresh process: import + load {out[0]} s, first transform of 20 references {out[1]} s "
              f"(numba compilation), second {out[2]} s")
    same = np.array_equal(loaded.transform(references), space.transform(references))
    warm = timed(lambda: loaded.transform(references), 3)
    print(f"transform of 20 references after loading, warm: {warm:.2f} s; equal to the fitted space's: {same}")

    print("agreement with umap-learn's UMAP.transform, which searches approximate neighbours above 4,095 points:")
    agreement(space, references, "10,000 Gaussian features, references = training points + noise")
    images, labels = load_mnist_sample()  # (5000, 28, 28, 1), (5000,): all 5,000, so the space (4,500) is above
    # umap's exact-search limit of 4,096 points and its transform searches approximate neighbours
    pixels = extract_features(images, "pixels")
    held_out = np.arange(len(images)) % 10 == 0  # 50 digits of each class (the sample is sorted by class)
    train = ~held_out
    mnist = FeatureSpace.fit(pixels[train], n_components=20, backbone="pixels")
    agreement(mnist, pixels[held_out], "MNIST pixels, space of 4,500 digits, the 500 held-out digits",
              labels[held_out], labels[train])
    agreement(mnist, pixels[train][::9], "MNIST pixels, space of 4,500 digits, 500 of its training digits",
              labels[train][::9], labels[train])

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
    """FID on 10,000 x 2,048 features (and pytorch-fid's sqrtm formula, for scale), IS on
    10,000 x 1,000 logits, feature-network speed."""
    import scipy.linalg

    from features import pick_device
    from classifier import train_classifier
    from metrics import feature_statistics, frechet_distance, inception_network, inception_score

    rng = np.random.default_rng(0)
    real = rng.normal(0.0, 1.0, (10_000, 2048)).astype(np.float32)
    fake = (0.9 * rng.normal(0.0, 1.0, (10_000, 2048)) + 0.1).astype(np.float32)
    start = time.perf_counter()
    mu1, sigma1, mu2, sigma2 = feature_statistics(real) + feature_statistics(fake)
    t_stats = time.perf_counter() - start
    start = time.perf_counter()
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)
    t_fid = time.perf_counter() - start
    print(f"FID 10,000 x 2,048: statistics of both sets {t_stats:.2f} s + frechet_distance {t_fid:.2f} s "
          f"= {t_stats + t_fid:.2f} s  (FID {fid:.4f})")
    start = time.perf_counter()  # one call: sqrtm takes tens of seconds on a CPU
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean  # older SciPy: (root, error)
    other = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real
    print(f"  pytorch-fid's scipy.linalg.sqrtm formula: {time.perf_counter() - start:.2f} s  "
          f"(differs by {abs(other - fid):.1e})")

    logits = rng.normal(0.0, 3.0, (10_000, 1000))
    print(f"IS 10,000 x 1,000 logits, 10 splits: {timed(lambda: inception_score(logits), 3):.2f} s")

    # The feature networks, for scale: they, not the maths, are the cost of an evaluation.
    device = pick_device()
    digits = rng.integers(0, 256, (512, 28, 28, 1), dtype=np.uint8)
    clf = train_classifier(digits[:64], np.arange(64) % 10, 10, steps=1, device=device)
    seconds = timed(lambda: clf.features_and_logits(digits), 3)
    print(f"classifier features+logits, 28x28 grey: {len(digits) / seconds:,.0f} images/s on {device}")
    net = inception_network("random").to(device)  # speed only
    n = 128 if device.type == "cuda" else 16
    seconds = timed(lambda: net.features_and_logits(digits[:n]), 1)
    print(f"inception features+logits at 299 px (random weights, speed only): "
          f"{n / seconds:,.1f} images/s on {device}")


SECTIONS = {"diffusion": bench_diffusion, "features": bench_features, "metrics": bench_metrics,
            "quality": bench_quality, "recipe": bench_recipe, "sampler": bench_sampler, "walks": bench_walks, "boundary": bench_boundary,
            "gpu": bench_gpu}

if __name__ == "__main__":
    names = sys.argv[1:] or ["diffusion", "features", "metrics"]  # quality, recipe, sampler, walks, boundary and gpu only when asked for
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"bench.py: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        print(f"== {name} ==", flush=True)
        SECTIONS[name]()
