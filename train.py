"""Train a conditional DDPM on images and their feature-space positions.

    python train.py --out runs/quick                      # the quick CPU run (embedded MNIST sample)
    python train.py --data mnist --per-class 1000 --cond label+umap \\
        --backbone swinv2_base_window12to16_192to256.ms_in22k_ft_in1k \\
        --size paper --lr 1e-5 --epochs 500 --out runs/paper   # the report's setting, for a GPU

PAPER.md, Method steps 1-3: every training image gets a position in a
pretrained feature space (features.py: features -> 20-d UMAP, standardised),
and the U-Net (unet.py) learns eps_theta(x_t, t, label, pos) with the DDPM
loss (ddpm.py, Algorithm 1 of Ho et al. 2020). `--cond` picks which of the
two conditions the model sees: the report's three models are `label`,
`label+umap` and `umap`.

Around the algorithm: AdamW with a linear warm-up, gradient clipping, an
exponential moving average (EMA) of the weights that sampling uses,
condition dropout so that classifier-free guidance works, and a run
directory that can be resumed:

    runs/NAME/config.json     every setting, readable
    runs/NAME/checkpoint.pt   model, EMA, optimizer, step (written atomically)
    runs/NAME/space.npz       the fitted feature space (umap conditions only)
    runs/NAME/grids/          a class grid every --sample-every steps

Randomness is derived from (seed, step, rank) at every step, so a run that
is killed and resumed replays exactly the batches, timesteps and noise of
one that never stopped (on the CPU: identical weights).

Multi-GPU: `torchrun --nproc_per_node=N train.py ...` trains with
DistributedDataParallel, --batch-size images per process; rank 0 writes.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from data import load_dataset
from ddpm import SCHEDULES, Diffusion, beta_schedule
from features import FeatureSpace, extract_features
from unet import UNet, count_parameters

CONDITIONS = {"label": ("label",), "umap": ("pos",), "label+umap": ("label", "pos"), "none": ()}
CHECKPOINT_FORMAT = "fpdiff-checkpoint-1"
# Settings that define a run: a resumed run must keep them (--overwrite starts afresh).
IDENTITY = ("data", "per_class", "image_size", "channels", "cond", "backbone", "weights", "umap_dim", "size",
            "schedule", "timesteps", "batch_size", "lr", "weight_decay", "warmup", "ema", "p_uncond",
            "grad_clip", "dropout", "seed")
# What --eval runs at the end (sample.py): DDIM 50 steps with eta = 1 (on short runs much
# cleaner than eta = 0, see README), guidance 3, two references per class, 1,000 samples.
EVAL_ARGS = ["--steps", "50", "--eta", "1", "--guidance", "3", "--references", "2", "--eval", "--n", "1000"]
RUN_FILES = ("config.json", "checkpoint.pt", "space.npz", "grids", "samples", "metrics.json", "classifier.pt")


class RunError(Exception):
    """A problem with the user's settings or files: printed as one line, no traceback."""


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g = p.add_argument_group("data and condition")
    g.add_argument("--data", default="mnist-sample", help="mnist-sample (embedded), mnist, or an image-folder path")
    g.add_argument("--root", default="data", help="where datasets and the feature cache live")
    g.add_argument("--per-class", type=int, default=None, help="images per class (the report: 1000 from MNIST)")
    g.add_argument("--image-size", type=int, default=None, help="resize image folders to this size")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3), help="force grey (1) or RGB (3)")
    g.add_argument("--cond", default="label+umap", choices=tuple(CONDITIONS))
    g.add_argument("--backbone", default="pixels", help="pixels, or a timm model name (the report: swinv2_base_...)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone (offline use)")
    g.add_argument("--umap-dim", type=int, default=20, help="dimension of the UMAP position (the report: 20)")
    g = p.add_argument_group("model and diffusion")
    g.add_argument("--size", default="small", choices=("small", "paper"), help="U-Net size (see unet_kwargs)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--schedule", default="linear", choices=SCHEDULES)
    g.add_argument("--timesteps", type=int, default=1000)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="optimizer steps (may be raised on --resume)")
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
    g.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps")
    g.add_argument("--sample-every", type=int, default=1000, help="class grid every N steps (0: only at the end)")
    g.add_argument("--eval", action="store_true", help="at the end, run sample.py's --eval (grid, references, metrics)")
    g.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU)")
    return p


def parse_args(argv: list[str] | None) -> dict:
    """Command line -> config dict. On --resume the run's config.json supplies the defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config_path = os.path.join(args.out, "config.json")
    if args.resume and os.path.isfile(config_path):
        saved = read_config(args.out)
        parser.set_defaults(**{k: v for k, v in saved.items() if k in vars(args) and k not in ("resume", "overwrite")})
        args = parser.parse_args(argv)
        changed = [k for k in IDENTITY if vars(args)[k] != saved.get(k)]
        if changed:
            raise RunError(f"{args.out} was trained with --{changed[0].replace('_', '-')} {saved.get(changed[0])}; "
                           "a resumed run keeps its settings (use --overwrite to start a new run)")
    return vars(args)


def read_config(out: str) -> dict:
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise RunError(f"{path} not found: {out} is not a run directory (train one with: python train.py --out {out})")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"cannot read {path} ({error}); is {out} a run directory made by train.py?") from error


def unet_kwargs(size: str, image_size: int) -> dict:
    """The two U-Net sizes. small: ~1.2M parameters, the CPU default; paper: ~40M, for a GPU."""
    if size == "small":
        # attention only in the middle (at H/4): cheap enough for a laptop CPU
        return dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=())
    if size == "paper":
        # improved-diffusion's CIFAR-10 shape: attention at H/2 and H/4
        half, quarter = (image_size + 1) // 2, (image_size + 3) // 4
        return dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(half, quarter), dropout=0.1)
    raise RunError(f"unknown U-Net size {size!r}; choose small or paper")


def pick_device(name: str | None) -> torch.device:
    if name is not None:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------
# Data and positions
# ---------------------------------------------------------------------------
def load_training_images(config: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, H, W, C) uint8 images, (N,) labels and class names, as config says."""
    return load_dataset(config["data"], root=config["root"], per_class=config["per_class"],
                        image_size=config["image_size"], seed=config["seed"], channels=config["channels"])


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) in [0, 255] -> float (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def fit_space(config: dict, images: np.ndarray) -> FeatureSpace:
    """PAPER.md Method steps 1-2: features of every training image -> a fitted 20-d UMAP space."""
    features = extract_features(images, backbone=config["backbone"], weights=config["weights"],
                                cache_dir=os.path.join(config["root"], "cache"))
    return FeatureSpace.fit(features, n_components=config["umap_dim"], seed=config["seed"], backbone=config["backbone"])


def load_space(run_dir: str, config: dict) -> FeatureSpace:
    return FeatureSpace.load(os.path.join(run_dir, "space.npz"), backbone=config["backbone"],
                             n_components=config["umap_dim"])


# ---------------------------------------------------------------------------
# Model and checkpoints
# ---------------------------------------------------------------------------
def build_unet(config: dict) -> UNet:
    """The U-Net a run's config describes (sample.py rebuilds it the same way)."""
    inputs = CONDITIONS[config["cond"]]
    kwargs = dict(config["unet"])
    kwargs["channel_mults"] = tuple(kwargs["channel_mults"])
    kwargs["attention_resolutions"] = tuple(kwargs["attention_resolutions"])
    return UNet(image_channels=config["image_channels"], image_size=config["image_size_model"],
                num_classes=len(config["class_names"]) if "label" in inputs else None,
                pos_dim=config["umap_dim"] if "pos" in inputs else None, **kwargs)


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with weights_only=True (no code runs); anything else is a clear error."""
    if not os.path.isfile(path):
        raise RunError(f"{path} not found: train first (python train.py --out {os.path.dirname(path) or '.'})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle, ... all mean the same to the user
        raise RunError(f"{path} is corrupt or not a checkpoint of this project ({type(error).__name__}); "
                       "retrain, or resume from an intact copy") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a train.py checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return checkpoint


def load_run(run_dir: str, device=None) -> tuple[UNet, Diffusion, dict, FeatureSpace | None]:
    """The EMA model, diffusion, config and feature space of a finished run (for sample.py)."""
    config = read_config(run_dir)
    checkpoint = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    model = build_unet(config)
    try:
        model.load_state_dict(checkpoint["ema"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{run_dir}/checkpoint.pt does not fit the U-Net in its config.json ({error})") from error
    model.to(pick_device(device)).eval()
    space = load_space(run_dir, config) if "pos" in CONDITIONS[config["cond"]] else None
    return model, Diffusion(beta_schedule(config["schedule"], config["timesteps"])), config, space


# ---------------------------------------------------------------------------
# The pieces of one optimizer step
# ---------------------------------------------------------------------------
class TrainingLoss(nn.Module):
    """The diffusion loss as a module, so DistributedDataParallel sees one forward per step
    (with condition dropout, ddpm.Diffusion.loss calls the U-Net twice)."""

    def __init__(self, net: UNet, diffusion: Diffusion, p_uncond: float):
        super().__init__()
        self.net, self.diffusion, self.p_uncond = net, diffusion, p_uncond

    def forward(self, x0, cond, generator):
        return self.diffusion.loss(self.net, x0, cond, self.p_uncond, generator)


def step_seed(seed: int, step: int, rank: int) -> int:
    """All randomness of one step (timesteps, noise, dropout) comes from this number."""
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


def learning_rate(step: int, config: dict) -> float:
    """Linear warm-up to --lr over --warmup steps, then constant (the report: constant 1e-5)."""
    return config["lr"] * min(1.0, (step + 1) / max(1, config["warmup"]))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """theta_ema <- d theta_ema + (1 - d) theta, with d warmed up as min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# ---------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------
def prepare_out_dir(config: dict) -> None:
    """Refuse to mix runs: an --out that holds a run needs --resume or --overwrite."""
    out = config["out"]
    holds_run = os.path.exists(os.path.join(out, "config.json")) or os.path.exists(os.path.join(out, "checkpoint.pt"))
    if config["resume"] and config["overwrite"]:
        raise RunError("pass either --resume or --overwrite, not both")
    if config["resume"] and not os.path.isfile(os.path.join(out, "checkpoint.pt")):
        raise RunError(f"nothing to resume: {out}/checkpoint.pt does not exist (drop --resume to start a run)")
    if holds_run and not (config["resume"] or config["overwrite"]):
        raise RunError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if config["overwrite"]:
        for name in RUN_FILES:  # only what train.py and sample.py write; anything else stays
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)


def write_config(config: dict) -> None:
    path = os.path.join(config["out"], "config.json")
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)


def write_grid(run_dir: str, model: UNet, config: dict, space, images, labels, step: int) -> None:
    """A class grid from the EMA model (sample.py does the drawing)."""
    import sample  # imported here, not at the top: sample.py imports this file

    path = os.path.join(run_dir, "grids", f"step{step:07d}.png")
    sample.class_grid(model, Diffusion(beta_schedule(config["schedule"], config["timesteps"])), config, space,
                      images, labels, per_class=8, steps=50, eta=1.0, seed=config["seed"], path=path)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(config: dict) -> str:
    """Run (or resume) the training that config describes; returns the run directory."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(config["device"])
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out, main_process = config["out"], rank == 0
    if main_process:
        prepare_out_dir(config)

    images, labels, class_names = load_training_images(config)
    n = len(images)
    if config["epochs"] is not None:
        config["steps"] = math.ceil(config["epochs"] * n / (config["batch_size"] * world))
    unet = unet_kwargs(config["size"], images.shape[1])
    unet["dropout"] = config["dropout"] or unet.get("dropout", 0.0)  # --dropout 0 keeps the size's own
    config.update(class_names=class_names, image_channels=images.shape[3], image_size_model=images.shape[1],
                  num_images=n, world_size=world, unet=unet)

    # Method steps 1-2: positions of the training images (rank 0 fits, the others receive them)
    inputs = CONDITIONS[config["cond"]]
    space, positions = None, None
    if "pos" in inputs:
        if main_process:
            space = load_space(out, config) if config["resume"] else fit_space(config, images)
            if not config["resume"]:
                space.save(os.path.join(out, "space.npz"))
            positions = torch.from_numpy(space.standardize(space.positions))  # (N, umap_dim)
        else:
            positions = torch.empty(n, config["umap_dim"])
        if world > 1:
            positions = positions.to(device) if device.type == "cuda" else positions
            dist.broadcast(positions, 0)
        positions = positions.to(device)
    if main_process:
        write_config(config)

    x_all = to_model_range(images).to(device)  # (N, C, H, W) in [-1, 1]
    y_all = torch.from_numpy(labels).to(device)  # (N,)

    torch.manual_seed(config["seed"])
    net = build_unet(config).to(device)
    ema = build_unet(config).to(device).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    diffusion = Diffusion(beta_schedule(config["schedule"], config["timesteps"]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    start = 0
    if config["resume"]:
        checkpoint = load_checkpoint(os.path.join(out, "checkpoint.pt"))
        net.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"]

    loss_module = TrainingLoss(torch.compile(net) if config["compile"] else net, diffusion, config["p_uncond"])
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module, find_unused_parameters=True)

    def checkpoint_now(step):
        save_checkpoint(os.path.join(out, "checkpoint.pt"), {
            "format": CHECKPOINT_FORMAT, "step": step, "config": config, "model": net.state_dict(),
            "ema": ema.state_dict(), "optimizer": optimizer.state_dict()})

    if main_process:
        print(f"{config['data']}: {n} images {tuple(images.shape[1:])}, {len(class_names)} classes | cond "
              f"{config['cond']} | U-Net {config['size']} {count_parameters(net) / 1e6:.2f}M params | "
              f"{device} x{world} | steps {start}->{config['steps']}", flush=True)
    bar = tqdm(range(start, config["steps"]), initial=start, total=config["steps"], disable=not main_process,
               desc="train", dynamic_ncols=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    tick, images_seen = time.perf_counter(), 0
    for step in bar:
        seed = step_seed(config["seed"], step, rank)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(device).manual_seed(seed)  # timesteps, noise, condition dropout
        idx = batch_indices(step, n, config["batch_size"], config["seed"], rank, world).to(device)
        cond = {"label": y_all[idx], "pos": positions[idx] if positions is not None else None}
        cond = {k: v for k, v in cond.items() if k in inputs}

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        with autocast:
            loss = loss_module(x_all[idx], cond, generator)
        reported = loss.detach().float().clone()
        if world > 1:
            dist.all_reduce(reported)
            reported /= world
        if not torch.isfinite(reported):
            raise RunError(f"the loss became {reported.item()} at step {step}; the last good checkpoint "
                           f"({out}/checkpoint.pt) is kept. Lower --lr or --grad-clip and --resume")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), config["grad_clip"])
        optimizer.step()
        update_ema(ema, net, config["ema"], step)

        images_seen += config["batch_size"] * world
        done = step + 1
        if main_process:
            if done % 10 == 0:
                rate = images_seen / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{reported.item():.4f}", img_s=f"{rate:.0f}")
            if done % config["save_every"] == 0 or done == config["steps"]:
                checkpoint_now(done)
            if (config["sample_every"] and done % config["sample_every"] == 0) or done == config["steps"]:
                write_grid(out, ema, config, space, images, labels, done)
    bar.close()
    if main_process and start >= config["steps"]:
        print(f"{out} is already trained to step {start}; raise --steps to train longer")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if main_process and config["eval"]:
        import sample  # see write_grid

        sample.main([out, "--out", os.path.join(out, "samples"), *EVAL_ARGS])
    return out


def main(argv: list[str] | None = None) -> None:
    try:
        train(parse_args(argv))
    except RunError as error:
        sys.exit(f"train.py: {error}")


if __name__ == "__main__":
    main()
