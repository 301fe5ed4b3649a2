"""Train a conditional DDPM on images and their feature-space positions.

    python train.py --out runs/quick --eval               # the quick CPU run (embedded MNIST sample)
    python train.py --data mnist --per-class 1000 --cond label+pos \\
        --backbone swinv2_base_window12to16_192to256.ms_in22k_ft_in1k \\
        --size paper --lr 1e-5 --epochs 500 --out runs/paper   # the report's setting, for a GPU

PAPER.md, Method steps 1-3: every training image gets a position in a
pretrained feature space (features.py: features -> 20-d UMAP, standardised),
and the U-Net (unet.py) learns eps_theta(x_t, t, cond) with the DDPM loss
(ddpm.py, Algorithm 1 of Ho et al. 2020). `--cond` names the conditions the
model sees, joined by "+": `label` (the class) and `pos` (the position).
The report's three models are `--cond label`, `--cond label+pos` (its
"label+umap") and `--cond pos` (its "umap").

Around the algorithm: AdamW with a linear warm-up, gradient clipping, an
exponential moving average (EMA) of the weights that sampling uses,
condition dropout so that classifier-free guidance works, bf16 autocast
where the hardware runs it natively, and a run directory that can be resumed:

    runs/NAME/config.json     every setting, the U-Net's arguments, the data's digest, the run id
    runs/NAME/checkpoint.pt   model, EMA, optimizer, step, config (written atomically)
    runs/NAME/space.npz       the fitted feature space (when a condition needs one)
    runs/NAME/grids/          the class grid at the end (and every --sample-every steps)

The three files carry the same run id (a digest of the settings that define
the run and of the training images), so parts of different runs are never
mixed. Everything is checked before anything in --out is touched.

Randomness is derived from (seed, step, rank) at every step, so a run that
is killed and resumed replays exactly the batches, timesteps and noise of
one that never stopped (same device and precision: identical weights).

Multi-GPU: `torchrun --nproc_per_node=N train.py ...` trains with
DistributedDataParallel, --batch-size images per process; rank 0 writes.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

import sample
from data import write_atomically
from ddpm import SCHEDULES, Diffusion, beta_schedule
from features import FeatureSpace, WeightsUnavailableError, extract_features, pick_device
from sample import CHECKPOINT_FORMAT, CONFIG_FORMAT, PRECISIONS, RunError, autocast, check_belongs
from unet import condition_embedding_module, count_parameters

# Settings that define a run: a resumed run keeps them (--overwrite starts afresh).
IDENTITY = ("data", "per_class", "image_size", "channels", "cond", "backbone", "weights", "pos_dim", "size",
            "dropout", "schedule", "timesteps", "batch_size", "weight_decay", "p_uncond", "seed")
# Every other setting (steps, lr, grad_clip, warmup, ema, save_every, sample_every, device, precision, ...)
# may change on --resume; config.json's "changes" records each change and the step it took effect.
NOT_SETTINGS = ("out", "resume", "overwrite", "eval")
RUN_FILES = ("config.json", "checkpoint.pt", "space.npz", "classifier.pt")  # + grids/stepNNNNNNN.png, samples/
GRID_NAME = re.compile(r"step\d{7}\.png")
# The sampler of the progress grids: sample.py's defaults.
GRID_SAMPLER = dict(steps=sample.DEFAULT_STEPS, eta=sample.DEFAULT_ETA, guidance=sample.DEFAULT_GUIDANCE, ddpm=False)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # flags typed in full, so that parse_args can tell which were typed
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its settings are the defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (only its own files)")
    g = p.add_argument_group("data and condition")
    g.add_argument("--data", default="mnist-sample", help="mnist-sample (embedded), mnist, or an image-folder path")
    g.add_argument("--root", default="data", help="where datasets and the feature cache live")
    g.add_argument("--per-class", type=int, default=None, help="images per class (the report: 1000 from MNIST)")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3), help="force grey (1) or RGB (3)")
    g.add_argument("--cond", default="label+pos", help="conditions joined by +: label, pos; or none")
    g.add_argument("--backbone", default="pixels",
                   help="pixels, classifier (--weights FILE: a metrics.py classifier), or a timm model name "
                   "(the report: swinv2_base_...)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone (offline use)")
    g.add_argument("--pos-dim", type=int, default=20, help="dimension of the UMAP position (the report: 20)")
    g = p.add_argument_group("model and diffusion")
    g.add_argument("--size", default="small", choices=("small", "paper"), help="U-Net size (see unet_kwargs)")
    g.add_argument("--dropout", type=float, default=None, help="U-Net dropout (default: the size's own)")
    g.add_argument("--schedule", default="linear", choices=SCHEDULES)
    g.add_argument("--timesteps", type=int, default=1000)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=2000, help="optimizer steps (may be raised on --resume)")
    g.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (per process under torchrun)")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights used for sampling")
    g.add_argument("--p-uncond", type=float, default=0.1, help="condition dropout for classifier-free guidance")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("running")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 autocast where the hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs), else fp32")
    g.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps")
    g.add_argument("--sample-every", type=int, default=0,
                   help="also a class grid every N steps (0: only the one at the end)")
    g.add_argument("--eval", action="store_true", help="at the end, run sample.py --references 2 --eval")
    g.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU)")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """The command line, and the names of the flags the user actually typed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tokens = [token.split("=")[0] for token in (sys.argv[1:] if argv is None else argv)]
    typed = {action.dest for action in parser._actions if set(action.option_strings) & set(tokens)}
    return args, typed


def check_settings(s: dict) -> None:
    """Every setting in range, before any work; each error names its flag and the fix."""
    positive = ["steps", "batch_size", "save_every", "timesteps", "pos_dim"]
    positive += [k for k in ("per_class", "image_size") if s[k] is not None]
    for key in positive:
        if s[key] < 1:
            raise RunError(f"--{key.replace('_', '-')} must be a positive number, got {s[key]}")
    ranges = dict(lr=(0, math.inf, False), grad_clip=(0, math.inf, False), ema=(0, 1, True), p_uncond=(0, 1, True),
                  weight_decay=(0, math.inf, True), warmup=(0, math.inf, True), sample_every=(0, math.inf, True))
    if s["dropout"] is not None:
        ranges["dropout"] = (0, 1, True)
    if s["epochs"] is not None:
        ranges["epochs"] = (0, math.inf, False)
    for key, (low, high, low_ok) in ranges.items():
        if not ((s[key] >= low if low_ok else s[key] > low) and s[key] < high):
            raise RunError(f"--{key.replace('_', '-')} must lie in {'[' if low_ok else '('}{low}, {high}), got {s[key]}")
    try:
        Diffusion(beta_schedule(s["schedule"], s["timesteps"]))
    except ValueError as error:
        raise RunError(f"--timesteps {s['timesteps']} does not give a valid {s['schedule']} schedule ({error}); "
                       "use at least 100") from error
    for name in cond_names(s["cond"]):
        try:
            condition_embedding_module(name, 2, 8)
        except ValueError as error:
            raise RunError(f"--cond {s['cond']}: {error}") from error
    if s["weights"] is not None and s["backbone"] != "pixels" and not os.path.isfile(s["weights"]):
        raise RunError(f"--weights {s['weights']}: file not found")
    if s["backbone"] == "classifier" and s["weights"] is None:
        raise RunError("--backbone classifier needs --weights FILE, a classifier saved by metrics.py "
                       "(metrics.py ... --features classifier --classifier FILE)")


def cond_names(cond: str) -> list[str]:
    """--cond "label+pos" -> ["label", "pos"]; "none" -> []."""
    return [] if cond == "none" else cond.split("+")


def resumed_settings(saved: dict, args: argparse.Namespace, typed: set[str], out: str) -> tuple[dict, dict]:
    """The run's saved settings with what the user typed on --resume; (settings, changes).

    A setting that defines the run may not change; any other may, and the change is returned.
    """
    settings, changes = dict(saved), {}
    for key in typed - set(NOT_SETTINGS):
        new = getattr(args, key)
        if new == saved.get(key):
            continue
        if key in IDENTITY:
            raise RunError(f"{out} was trained with --{key.replace('_', '-')} {saved.get(key)}; a resumed run "
                           f"keeps the settings that define it (use --overwrite, or another --out, to start a new run)")
        settings[key], changes[key] = new, [saved.get(key), new]
    if "steps" in typed:
        settings["epochs"] = None  # --steps on resume wins over a saved --epochs
    return settings, changes


def unet_kwargs(size: str, image_shape: tuple, dropout: float | None, conditions: dict[str, int]) -> dict:
    """Every argument of the run's U-Net (stored in config.json: the U-Net is rebuilt from it alone).

    small: ~1.2M parameters, the CPU default; paper: ~40M (improved-diffusion's CIFAR-10 shape), for a GPU.
    """
    height, _, channels = image_shape
    common = dict(image_channels=channels, image_size=height, conditions=conditions)
    if size == "small":
        # attention only in the middle (at H/4): cheap enough for a laptop CPU
        return dict(common, base_channels=32, channel_mults=[1, 2, 2], num_res_blocks=1, attention_resolutions=[],
                    dropout=0.0 if dropout is None else dropout)
    # paper: attention at H/2 and H/4
    half, quarter = (height + 1) // 2, (height + 3) // 4
    return dict(common, base_channels=128, channel_mults=[1, 2, 2, 2], num_res_blocks=2,
                attention_resolutions=[half, quarter], dropout=0.1 if dropout is None else dropout)


def make_run_id(settings: dict, digest: str) -> str:
    """A digest of what defines the run: the identity settings and the training data."""
    identity = json.dumps({key: settings[key] for key in IDENTITY}, sort_keys=True)
    return hashlib.sha256(f"{identity}|{digest}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Conditions of the training images
# ---------------------------------------------------------------------------
def fit_space(settings: dict, images: np.ndarray) -> FeatureSpace:
    """PAPER.md Method steps 1-2: features of every training image -> a fitted 20-d UMAP space."""
    features = extract_features(images, backbone=settings["backbone"], weights=settings["weights"],
                                cache_dir=os.path.join(settings["root"], "cache"))
    return FeatureSpace.fit(features, n_components=settings["pos_dim"], seed=settings["seed"],
                            backbone=settings["backbone"])


def training_conditions(names: list[str], settings: dict, images: np.ndarray, labels: np.ndarray,
                        space: FeatureSpace | None) -> tuple[dict[str, torch.Tensor], FeatureSpace | None]:
    """Every condition of every training image, name -> (N, ...), and the feature space if one was needed.

    A new condition is computed here for training, the way
    sample.request_conditions computes it for a sampling request.
    `space` is the run's saved space on --resume, else None (fitted here if needed).
    """
    cond = {}
    if "label" in names:
        cond["label"] = torch.from_numpy(labels)  # (N,) class index
    if "pos" in names:
        space = space or fit_space(settings, images)
        cond["pos"] = torch.from_numpy(space.standardize(space.positions))  # (N, pos_dim)
    return cond, space


def condition_sizes(cond: dict[str, torch.Tensor]) -> dict[str, int]:
    """The U-Net's `conditions`: an integer condition (N,) has max + 1 categories; a float one (N, d) has width d."""
    return {name: int(value.max()) + 1 if not value.is_floating_point() else value.shape[1]
            for name, value in cond.items()}


# ---------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------
def read_run_dir(out: str) -> tuple[dict | None, dict | None]:
    """(config.json, checkpoint.pt) of --out, each None when absent; files that are not ours are errors."""
    config = sample.read_config(out) if os.path.exists(os.path.join(out, "config.json")) else None
    path = os.path.join(out, "checkpoint.pt")
    checkpoint = sample.load_checkpoint(path) if os.path.exists(path) else None
    if config is not None and checkpoint is not None:
        check_belongs(path, checkpoint.get("run_id", ""), config["run_id"])
    return config, checkpoint


def our_grid_files(out: str) -> list[str]:
    grids = os.path.join(out, "grids")
    return [os.path.join(grids, f) for f in os.listdir(grids) if GRID_NAME.fullmatch(f)] if os.path.isdir(grids) else []


def remove_run_files(out: str) -> None:
    """--overwrite: remove only what train.py and sample.py wrote; anything else of the user's stays."""
    paths = [os.path.join(out, name) for name in RUN_FILES] + our_grid_files(out)
    samples = os.path.join(out, "samples")
    if sample.holds_sample_outputs(samples):
        paths += [os.path.join(samples, name) for name in sample.SAMPLE_FILES]
    for path in paths:
        if os.path.isfile(path):
            os.remove(path)
    for folder in (os.path.join(out, "grids"), samples):
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def write_config(out: str, config: dict) -> None:
    write_atomically(os.path.join(out, "config.json"), lambda f: f.write(json.dumps(config, indent=2).encode()))


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """torch.save to path.tmp, then an atomic rename: a kill never leaves half a checkpoint."""
    write_atomically(path, lambda f: torch.save(checkpoint, f))


# ---------------------------------------------------------------------------
# Setting a run up: every check first, then the writes
# ---------------------------------------------------------------------------
def prepare(args: argparse.Namespace, typed: set[str], rank: int, world: int) -> dict:
    """Validate the command, the run directory and the data; fit what is needed; then (rank 0) write.

    Returns what the training loop needs. Raises RunError (and the library's
    ValueError / FileNotFoundError / WeightsUnavailableError) before touching --out.
    """
    out = args.out
    if args.resume and args.overwrite:
        raise RunError("pass either --resume or --overwrite, not both")
    if os.path.isfile(out):
        raise RunError(f"--out {out} is a file; give a directory")
    saved, checkpoint = read_run_dir(out) if os.path.isdir(out) else (None, None)
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    changes = {}
    if args.resume:
        if saved is None and checkpoint is None:
            raise RunError(f"nothing to resume in {out} (no config.json or checkpoint.pt): drop --resume to start a run")
        saved = saved or checkpoint["config"]  # config.json lost: the checkpoint holds a copy
        settings, changes = resumed_settings(saved["settings"], args, typed, out)
    elif saved is not None or checkpoint is not None:
        if not args.overwrite:
            raise RunError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        checkpoint = None  # to be replaced, never loaded
    check_settings(settings)

    images, labels, class_names = sample.load_training_images(settings)
    digest = sample.data_digest(images, labels, class_names)
    run_id = make_run_id(settings, digest)
    if args.resume and digest != saved["data"]["digest"]:
        raise RunError(f"the training data ({settings['data']}) changed since {out} was trained; "
                       "resume needs the same images (or start a new run with --overwrite)")
    space = None
    if args.resume and checkpoint is not None and saved["space"]:
        space_path = os.path.join(out, saved["space"])
        space = FeatureSpace.load(space_path)
        check_belongs(space_path, space.run_id, run_id)

    n = len(images)
    if settings["epochs"] is not None:
        settings["steps"] = math.ceil(settings["epochs"] * n / (settings["batch_size"] * world))
    cond, space = training_conditions(cond_names(settings["cond"]), settings, images, labels, space) \
        if rank == 0 else (None, None)
    if world > 1:
        shared = [cond]
        dist.broadcast_object_list(shared, src=0)  # rank 0 computed (and fitted) the conditions
        cond = shared[0]

    config = dict(format=CONFIG_FORMAT, run_id=run_id, settings=settings,
                  data=dict(class_names=class_names, num_images=n, image_shape=list(images.shape[1:]), digest=digest),
                  unet=saved["unet"] if args.resume else unet_kwargs(settings["size"], images.shape[1:],
                                                                       settings["dropout"], condition_sizes(cond)),
                  space="space.npz" if space is not None else None, world_size=world,
                  changes=(saved.get("changes", []) if args.resume else []))
    if args.resume and world != saved["world_size"]:
        raise RunError(f"{out} was trained with {saved['world_size']} processes; resume it with as many")
    start = checkpoint["step"] if checkpoint is not None else 0
    if changes:
        config["changes"] = config["changes"] + [dict(step=start, **changes)]
    net, ema, optimizer = build_training_state(out, config, checkpoint)

    if rank == 0:  # everything is checked: now, and only now, --out changes
        if args.overwrite:
            remove_run_files(out)
        os.makedirs(os.path.join(out, "grids"), exist_ok=True)
        if space is not None and checkpoint is None:
            space.save(os.path.join(out, "space.npz"), run_id=run_id)
        write_config(out, config)
    return dict(out=out, config=config, start=start, images=images, labels=labels, cond=cond, space=space,
                net=net, ema=ema, optimizer=optimizer)


def build_training_state(out: str, config: dict, checkpoint: dict | None) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The U-Net, its EMA copy and AdamW, from the config's stored arguments (and the checkpoint on --resume)."""
    settings = config["settings"]
    torch.manual_seed(settings["seed"])
    net = sample.build_unet(config)
    ema = sample.build_unet(config).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    if checkpoint is not None:
        try:
            net.load_state_dict(checkpoint["model"])
            ema.load_state_dict(checkpoint["ema"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise RunError(f"{out}/checkpoint.pt does not fit the U-Net in its config.json") from error
    return net, ema, optimizer


# ---------------------------------------------------------------------------
# The pieces of one optimizer step
# ---------------------------------------------------------------------------
def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) in [0, 255] -> float (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """All randomness of one step (timesteps, noise, condition dropout, U-Net dropout) comes from this number."""
    return (seed * 1_000_003 + step) * 1009 + rank


def batch_indices(step: int, n: int, batch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """The images of one step: a slice of the stream of per-epoch permutations of 0..n-1.

    Step s of rank r takes stream positions [s*G + r*B, s*G + (r+1)*B), G = B * world.
    """
    start = step * batch * world + rank * batch
    positions = torch.arange(start, start + batch)
    epochs = positions // n
    out = torch.empty(batch, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % n]
    return out


def learning_rate(step: int, settings: dict) -> float:
    """Linear warm-up to --lr over --warmup steps, then constant (the report: constant 1e-5)."""
    return settings["lr"] * min(1.0, (step + 1) / max(1, settings["warmup"]))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """theta_ema <- d theta_ema + (1 - d) theta, with d warmed up as min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def write_grid(run: sample.Run, step: int) -> None:
    """A class grid from the EMA model (sample.py does the drawing)."""
    _, png = sample.class_grid(run, per_class=8, sampler=GRID_SAMPLER, seed=run.config["settings"]["seed"])
    write_atomically(os.path.join(run.dir, "grids", f"step{step:07d}.png"), lambda f: f.write(png))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(run: dict, rank: int, world: int, device: torch.device) -> str:
    """Run the training that `prepare` set up; returns the run directory."""
    config, settings = run["config"], run["config"]["settings"]
    out, main_process, n = run["out"], rank == 0, len(run["images"])
    x_all = to_model_range(run["images"]).to(device)  # (N, C, H, W) in [-1, 1]
    cond_all = {name: value.to(device) for name, value in run["cond"].items()}  # name -> (N, ...)
    net, ema, optimizer = run["net"].to(device), run["ema"].to(device), run["optimizer"]
    optimizer.load_state_dict(optimizer.state_dict())  # moves the optimizer state to the parameters' device
    diffusion = Diffusion(beta_schedule(settings["schedule"], settings["timesteps"]))
    model = torch.compile(net) if settings["compile"] else net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)  # one forward per step: no unused parameters
    precision = sample.resolve_precision(settings["precision"], device)
    grid_run = sample.Run(out, config, ema, diffusion, run["space"], run["images"], run["labels"], precision)

    start, last_saved = run["start"], run["start"] or None
    if main_process:
        print(f"{settings['data']}: {n} images {tuple(run['images'].shape[1:])}, "
              f"{len(config['data']['class_names'])} classes | cond {settings['cond']} | U-Net {settings['size']} "
              f"{count_parameters(net) / 1e6:.2f}M params | {device} x{world} "
              f"{'bf16' if precision else 'fp32'} | steps {start}->{settings['steps']}", flush=True)
    bar = tqdm(range(start, settings["steps"]), initial=start, total=settings["steps"], disable=not main_process,
               desc="train", dynamic_ncols=True)
    tick, images_seen = time.perf_counter(), 0
    for step in bar:
        seed = step_seed(settings["seed"], step, rank)
        torch.manual_seed(seed)  # U-Net dropout
        generator = torch.Generator(device).manual_seed(seed)  # timesteps, noise, condition dropout
        idx = batch_indices(step, n, settings["batch_size"], settings["seed"], rank, world).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        with autocast(device, precision):
            loss = diffusion.loss(model, x_all[idx], {k: v[idx] for k, v in cond_all.items()},
                                  settings["p_uncond"], generator)
        reported = loss.detach().clone()
        if world > 1:
            dist.all_reduce(reported)
            reported /= world
        if not torch.isfinite(reported):
            kept = f"{out}/checkpoint.pt (step {last_saved}) is kept" if last_saved else "no checkpoint was written yet"
            raise RunError(f"the loss became {reported.item()} at step {step}; {kept}. Continue with a lower "
                           f"learning rate: python train.py --out {out} --resume --lr {settings['lr'] / 4:g}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), settings["grad_clip"])
        optimizer.step()
        update_ema(ema, net, settings["ema"], step)

        images_seen += settings["batch_size"] * world
        done = step + 1
        if main_process:
            if done % 10 == 0:
                rate = images_seen / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{reported.item():.4f}", img_s=f"{rate:.0f}")
            if done % settings["save_every"] == 0 or done == settings["steps"]:
                save_checkpoint(os.path.join(out, "checkpoint.pt"), dict(
                    format=CHECKPOINT_FORMAT, run_id=config["run_id"], step=done, config=config,
                    model=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict()))
                last_saved = done
            if (settings["sample_every"] and done % settings["sample_every"] == 0) or done == settings["steps"]:
                write_grid(grid_run, done)
    bar.close()
    if main_process and start >= settings["steps"]:
        print(f"{out} is already trained to step {start}; raise --steps to train longer")
    return out


def setup_processes(device_name: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, join the process group."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def main(argv: list[str] | None = None) -> None:
    args, typed = parse_args(argv)
    try:
        rank, world, device = setup_processes(args.device)
        run = prepare(args, typed, rank, world)
        train(run, rank, world, device)
    except (RunError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        sys.exit(f"train.py: {' '.join(str(error).split())}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0 and args.eval:
        settings = run["config"]["settings"]
        sample.main([args.out, "--out", os.path.join(args.out, "samples"), "--references", "2", "--eval",
                     "--precision", settings["precision"], *(["--device", settings["device"]] if settings["device"] else [])])


if __name__ == "__main__":
    main()
