"""Train a conditional DDPM on images and their feature-space positions.

    python train.py --out runs/quick --eval               # the quick CPU run (embedded MNIST sample)
    python train.py --data mnist --per-class 1000 --cond label+pos \\
        --backbone swinv2_base_window12to16_192to256.ms_in22k_ft_in1k \\
        --size paper --lr 1e-5 --epochs 500 --out runs/paper   # the report's setting, for a GPU

The method (docs/METHOD.md, steps 1-3): every training image gets a position in a
pretrained feature space (features.py: features -> 20-d UMAP, standardised),
and the U-Net (unet.py) learns to denoise with the DDPM loss (ddpm.py,
Algorithm 1 of Ho et al. 2020), predicting v = sqrt(abar) eps - sqrt(1 - abar) x_0
(Salimans & Ho 2022; `--prediction eps` is Ho et al.'s eps_theta). With v the
step departs from Algorithm 1 in its target: since eps - eps_hat = sqrt(abar_t)
(v - v_hat), the v loss is Algorithm 1's eps loss weighted by 1 / abar_t =
1 + 1/SNR_t, more weight on the noisiest steps. `--cond` names the conditions the
model sees, joined by "+": `label` (the class) and `pos` (the position).
The report's three models are `--cond label`, `--cond label+pos` (its
"label+umap") and `--cond pos` (its "umap").

Around the algorithm: AdamW with a linear warm-up, gradient clipping, an
exponential moving average (EMA) of the weights that sampling uses,
condition dropout (all conditions together, --p-uncond, and each on its own,
--p-drop) so that classifier-free guidance works per condition, bf16 autocast
where the hardware runs it natively (fp16 with loss scaling on older GPUs),
a loss log (log.csv, loss.png), and a run directory that can be resumed
(rundir.py: config.json, checkpoint.pt, space.npz, grids/; the rules of
resume, overwrite and belonging). The conditions of the training images come
from conditions.py, the one function sample.py uses for its requests too.
Everything is checked before anything in --out is touched, and one train.py
at a time works on a run (--out/.lock).

Randomness is derived from (seed, step, rank) at every step, so a run that
is killed and resumed replays exactly the batches, timesteps and noise of
one that never stopped (same device and precision: identical weights).

Multi-GPU: `torchrun --nproc_per_node=N train.py ...` trains with
DistributedDataParallel, --batch-size images per process; rank 0 writes.
"""
import argparse
import contextlib
import functools
import math
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from plumbing import commands
import conditions
import generation
from plumbing import lock
from plumbing import rundir
import sample
from plumbing.data import write_atomically
from ddpm import PREDICTIONS, SCHEDULES, Diffusion, beta_schedule
from features import FeatureSpace, pick_device
from plumbing.weights import WeightsUnavailableError
from plumbing.rundir import CHECKPOINT_FORMAT, CONFIG_FORMAT, RunError, save_checkpoint
from plumbing.precision import PRECISIONS, autocast, precision_name, resolve_precision
from plumbing.losslog import LossLog, plot_loss
from unet import condition_encoder, count_parameters

DEFAULT_P_DROP = 0.1  # chosen by measurement: docs/EXPERIMENT.md, "Why v-prediction and 600 steps"
NOT_SETTINGS = ("out", "resume", "overwrite", "eval")  # the command's flags; every other flag is a setting of the run
# The sampler of the progress grids: sample.py's defaults (the guidance, generation.default_guidance, set in write_grid).
GRID_SAMPLER = dict(name=generation.DEFAULT_SAMPLER, steps=generation.DEFAULT_STEPS, eta=generation.DEFAULT_ETA)


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
    g.add_argument("--per-class", type=int, default=None, help="training images per class (the report: 1000 from MNIST)")
    g.add_argument("--data-seed", type=int, default=0, help="which images a --per-class subset takes")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3), help="force grey (1) or RGB (3)")
    g.add_argument("--cond", default="label+pos", help="conditions joined by +: label, pos; or none")
    g.add_argument("--backbone", default="pixels",
                   help="pixels, classifier (--weights FILE: a classifier.py classifier), or a timm model name "
                   "(the report: swinv2_base_...)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone (offline use)")
    g.add_argument("--pos-dim", type=int, default=20, help="dimension of the UMAP position (the report: 20)")
    g = p.add_argument_group("model and diffusion")
    g.add_argument("--size", default="small", choices=("small", "paper"), help="U-Net size (see unet_kwargs)")
    g.add_argument("--dropout", type=float, default=None, help="U-Net dropout (default: the size's own)")
    g.add_argument("--schedule", default="linear", choices=SCHEDULES)
    g.add_argument("--timesteps", type=int, default=1000)
    g.add_argument("--prediction", default="v", choices=PREDICTIONS,
                   help="what the U-Net predicts: the noise eps (Ho et al.) or v (Salimans & Ho)")
    g.add_argument("--min-snr", type=float, default=None, metavar="GAMMA",
                   help="weight the loss by min-SNR-gamma (Hang et al. 2023); default: unweighted")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=600, help="optimizer steps (may be raised on --resume)")
    g.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (per process under torchrun)")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="after the warm-up: constant, or a cosine decay to 0 at the last step")
    g.add_argument("--ema", type=float, default=0.999, help="the EMA's largest decay: the weights used for sampling "
                   "average with decay d = min(EMA, (1 + step) / (10 + step)), which reaches 0.999 only at step 8,990 "
                   "(counting from 0; the default 600 steps end at d = 600/609 = 0.985)")
    g.add_argument("--p-uncond", type=float, default=0.1,
                   help="probability that a training image drops all its conditions (classifier-free guidance)")
    g.add_argument("--p-drop", type=commands.parse_condition_numbers, default=None, metavar="NAME=P,...",
                   help="probability that an image drops one condition on its own, e.g. label=0.1,pos=0.1 "
                   "(what per-condition guidance needs; default: 0.1 for each condition of a model with two "
                   "or more, '' for none)")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="seeds the training: the U-Net's initialisation, the UMAP "
                   "fit, the batches, timesteps, noise and condition dropout, the progress grids (--data-seed: which "
                   "images; sample.py's --seed seeds only its sampling noise and reference draws)")
    g = p.add_argument_group("running")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 autocast where the hardware runs it natively (CUDA 8.0+, AVX512-BF16/AMX CPUs), fp16 with "
                   "loss scaling on older CUDA GPUs (7.x), else fp32")
    g.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps")
    g.add_argument("--log-every", type=int, default=50, help="a row of log.csv every N steps")
    g.add_argument("--sample-every", type=int, default=0,
                   help="also a class grid every N steps (0: only the one at the end)")
    g.add_argument("--eval", action="store_true", help="at the end, score the trained run: sample.py OUT --out "
                   "OUT/samples --references 2 --eval (metrics.json there; see sample.py --eval)")
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
                       "choose more --timesteps") from error
    for name in cond_names(s["cond"]):
        try:
            condition_encoder(name, 2, 8)
        except ValueError as error:
            raise RunError(f"--cond {s['cond']}: {error}") from error
    for name, p in (s.get("p_drop") or {}).items():
        if name not in cond_names(s["cond"]):
            raise RunError(f"--p-drop names {name}, which --cond {s['cond']} does not have")
        if not 0 <= p < 1:
            raise RunError(f"--p-drop {name}={p:g}: a probability in [0, 1) is needed")
    if s.get("min_snr") is not None and not s["min_snr"] > 0:
        raise RunError(f"--min-snr must be a positive gamma (Hang et al. use 5), got {s['min_snr']}")
    if s.get("log_every", 1) < 1:
        raise RunError(f"--log-every must be a positive number of steps, got {s['log_every']}")
    if s["weights"] is not None and s["backbone"] != "pixels" and not os.path.isfile(s["weights"]):
        raise RunError(f"--weights {s['weights']}: file not found")
    if s["backbone"] == "classifier" and s["weights"] is None:
        raise RunError("--backbone classifier needs --weights FILE, a classifier file written by classifier.py "
                       "(python metrics.py REAL GENERATED --features classifier --classifier FILE trains one on "
                       "the labelled images REAL and saves it as FILE)")


def cond_names(cond: str) -> list[str]:
    """--cond "label+pos" -> ["label", "pos"]; "none" -> []."""
    return [] if cond == "none" else cond.split("+")


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


# ---------------------------------------------------------------------------
# Setting a run up: every check first, then the writes (the rules: rundir.py)
# ---------------------------------------------------------------------------
def check_command(args: argparse.Namespace) -> None:
    """What can be checked from the command line alone, before the lock, the data or the UMAP fit."""
    if args.resume and args.overwrite:
        raise RunError("pass either --resume or --overwrite, not both")
    rundir.check_out(args.out)
    rundir.check_device(args.device)


def prepare(args: argparse.Namespace, typed: set[str], rank: int, world: int) -> dict:
    """Check the run in --out, the settings and the data; compute the conditions; then (rank 0) write.

    Returns what the training loop needs. Raises RunError (and the library's
    ValueError / FileNotFoundError / WeightsUnavailableError) before touching --out.
    """
    saved, checkpoint = existing_run(args.out, args.resume, args.overwrite)
    settings, changes = run_settings(args, typed, saved, world)
    images, labels, class_names = rundir.load_training_images(settings)
    digest = rundir.data_digest(images, labels, class_names)
    if saved is not None:
        rundir.check_data(args.out, saved, digest)
    if settings["epochs"] is not None:
        settings["steps"] = math.ceil(settings["epochs"] * len(images) / (settings["batch_size"] * world))
    run_id = saved["run_id"] if saved is not None else rundir.make_run_id(settings, digest)  # fixed at the start
    space = rundir.load_space(args.out, saved) if checkpoint is not None else None
    cond, space = training_conditions(settings, images, labels, space, rank, world)

    start = checkpoint["step"] if checkpoint is not None else 0
    data = dict(class_names=class_names, num_images=len(images), image_shape=list(images.shape[1:]), digest=digest)
    unet = saved["unet"] if saved is not None else unet_kwargs(
        settings["size"], images.shape[1:], settings["dropout"], conditions.condition_sizes(cond))
    history = (saved["changes"] + ([dict(step=start, **changes)] if changes else [])) if saved is not None else []
    config = dict(format=CONFIG_FORMAT, run_id=run_id, settings=settings, data=data, unet=unet,
                  space_file=rundir.SPACE_FILE if space is not None else None, world_size=world, changes=history)
    net, ema, optimizer = build_training_state(args.out, config, checkpoint)
    if rank == 0:
        write_run(args.out, config, space, args.overwrite)
    return dict(out=args.out, config=config, start=start, images=images, labels=labels, cond=cond, space=space,
                net=net, ema=ema, optimizer=optimizer, scaler=checkpoint.get("scaler") if checkpoint is not None else None)


def existing_run(out: str, resume: bool, overwrite: bool) -> tuple[dict | None, dict | None]:
    """The run already in --out as this command may use it: (config, checkpoint or None) to resume, else (None, None)."""
    if not rundir.holds_run(out):
        if resume:
            raise RunError(f"nothing to resume in {out} (no config.json or checkpoint.pt): drop --resume to start a run")
        rundir.check_new_run_out(out)  # a file of the user's with one of the run's names is never replaced
        return None, None
    if resume:
        return rundir.read_run(out)
    rundir.check_ours(out)  # a folder of somebody else's is never taken for a run, nor emptied
    if not overwrite:
        raise RunError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    return None, None  # to be replaced, never loaded (a damaged run may be replaced too)


def run_settings(args: argparse.Namespace, typed: set[str], saved: dict | None, world: int) -> tuple[dict, dict]:
    """(settings, changes): the flags of a new run, or a resumed run's saved settings with the flags typed now."""
    if saved is None:
        settings, changes = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}, {}
        if settings["p_drop"] is None:  # the default: each condition of a multi-condition model on its own
            names = cond_names(settings["cond"])
            settings["p_drop"] = {name: DEFAULT_P_DROP for name in names} if len(names) > 1 else {}
    else:
        if world != saved["world_size"]:
            raise RunError(f"{args.out} was trained with {saved['world_size']} processes; resume it with as many")
        now = {key: getattr(args, key) for key in typed - set(NOT_SETTINGS)}
        settings, changes = rundir.resumed_settings(saved["settings"], now, args.out)
    check_settings(settings)
    return settings, changes


def training_conditions(settings: dict, images: np.ndarray, labels: np.ndarray, space: FeatureSpace | None,
                        rank: int, world: int) -> tuple[dict[str, torch.Tensor], FeatureSpace | None]:
    """Every condition of every training image, name -> (N, ...) tensor, and the run's feature space.

    conditions.image_conditions computes them (the training images' positions
    are the fitted ones). `space` is the run's saved space on --resume, else
    None: fitted here when a condition needs one. Rank 0 computes; under
    torchrun it sends the conditions to the other processes.
    """
    cond = None
    if rank == 0:
        names = cond_names(settings["cond"])
        if "pos" in names and space is None:
            space = conditions.fit_space(images, settings)
        values = conditions.image_conditions(names, images, labels, space, settings, train_index=np.arange(len(images)))
        cond = {name: torch.from_numpy(value) for name, value in values.items()}
    if world > 1:
        shared = [cond]
        dist.broadcast_object_list(shared, src=0)
        cond = shared[0]
    return cond, space


def build_training_state(out: str, config: dict, checkpoint: dict | None) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The U-Net, its EMA copy and AdamW, from the config's stored arguments (and the checkpoint on --resume)."""
    settings = config["settings"]
    torch.manual_seed(settings["seed"])
    net = rundir.build_unet(config)
    ema = rundir.build_unet(config).requires_grad_(False)
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


def write_run(out: str, config: dict, space: FeatureSpace | None, overwrite: bool) -> None:
    """Everything is checked: now, and only now, --out changes (rank 0, holding --out's lock)."""
    if overwrite:
        rundir.remove_run_files(out)
    rundir.remove_stale_tmp(out)
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    if space is not None and space.run_id != config["run_id"]:  # fitted by this call (a loaded one carries the id)
        space.save(os.path.join(out, rundir.SPACE_FILE), run_id=config["run_id"])
    rundir.write_config(out, config)


# ---------------------------------------------------------------------------
# The pieces of one optimizer step
# ---------------------------------------------------------------------------
def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float (B, C, H, W) in [-1, 1] (images stay uint8 on the device until here)."""
    return images.float() / 127.5 - 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """All randomness of one step (timesteps, noise, condition dropout, U-Net dropout) comes from this number."""
    return (seed * 1_000_003 + step) * 1009 + rank


@functools.lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The order of one epoch, a permutation of 0..n-1: drawn on the CPU once per epoch, then kept on the device."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(device)


def batch_indices(step: int, n: int, batch: int, seed: int, rank: int, world: int,
                  device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """The images of one step: a slice of the stream of per-epoch permutations of 0..n-1.

    Step s of rank r takes stream positions [s*G + r*B, s*G + (r+1)*B), G = B * world: the ranks'
    batches of one step are disjoint slices, and every image comes once per epoch.
    """
    start = step * batch * world + rank * batch
    first, last = start // n, (start + batch - 1) // n  # the epochs this batch spans
    if first == last:
        offset = start - first * n
        return epoch_permutation(n, seed, first, device)[offset:offset + batch]
    stream = torch.cat([epoch_permutation(n, seed, epoch, device) for epoch in range(first, last + 1)])
    return stream[start - first * n:start - first * n + batch]


def learning_rate(step: int, settings: dict) -> float:
    """Linear warm-up to --lr over --warmup steps, then constant (the report: constant 1e-5) or, with
    --lr-schedule cosine, lr (1 + cos(pi p)) / 2 with p the share of the steps after the warm-up done."""
    lr = settings["lr"] * min(1.0, (step + 1) / max(1, settings["warmup"]))
    if settings.get("lr_schedule") == "cosine" and step >= settings["warmup"]:
        done = (step - settings["warmup"]) / max(1, settings["steps"] - settings["warmup"])
        lr = settings["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return lr


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """theta_ema <- d theta_ema + (1 - d) theta, with d warmed up as min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def write_grid(run: rundir.Run, step: int) -> None:
    """A class grid from the EMA model (sample.py does the drawing, with its default sampler)."""
    sampler = dict(GRID_SAMPLER, guidance=generation.default_guidance(run.config["unet"]["conditions"]))
    _, png = sample.class_grid(run, per_class=8, sampler=sampler, seed=run.config["settings"]["seed"])
    write_atomically(os.path.join(run.dir, "grids", f"step{step:07d}.png"), lambda f: f.write(png))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def distributed(net: nn.Module, world: int, compile_net: bool) -> nn.Module:
    """The module the loop calls: DDP around the U-Net under torchrun, and torch.compile around that
    (the order PyTorch documents, so that DDP's gradient buckets overlap the compiled backward)."""
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net  # one forward per step: no unused parameters
    return torch.compile(model) if compile_net else model


def training_step(diffusion: Diffusion, model: nn.Module, net: nn.Module, ema: nn.Module,
                  optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, settings: dict, step: int,
                  x0: torch.Tensor, cond: dict, generator: torch.Generator, p_drop: dict,
                  precision: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1 (Ho et al. 2020; with --prediction v its target is v, not eps: the eps loss
    weighted by 1 / abar_t, ddpm.Diffusion.losses): the loss, its gradient, clipping, AdamW, the EMA.

    x0: (B, C, H, W) in [-1, 1]; cond: name -> (B, ...). `model` is `net` as called
    (DDP / compiled); the forward pass runs in `precision` (autocast), and
    `scaler` is a no-op outside fp16. Returns the per-example
    loss (B,) and the timesteps t (B,). Everything else (batches, precision,
    logging, checkpoints) is the caller's, `train`.
    """
    with autocast(x0.device, precision):
        per_example, t = diffusion.losses(model, x0, cond, settings["p_uncond"], generator, p_drop)  # (B,), (B,)
    loss = per_example.mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
    nn.utils.clip_grad_norm_(net.parameters(), settings["grad_clip"])
    scaler.step(optimizer)  # skipped when fp16 gradients overflowed
    scaler.update()
    update_ema(ema, net, settings["ema"], step)
    return per_example.detach(), t


def make_scaler(device: torch.device, precision: torch.dtype, state: dict | None) -> torch.amp.GradScaler:
    """fp16's loss scaler (disabled in other precisions), continuing from a checkpoint's `scaler` state on --resume.

    The scale and its growth tracker decide which fp16 steps are skipped, so a
    resume that restarted them would not replay the run that never stopped.
    """
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
    return scaler


def train(setup: dict, rank: int, world: int, device: torch.device) -> str:
    """Run the training that `prepare` set up (`setup`: its dict of data, conditions, models); returns the run directory."""
    config, settings = setup["config"], setup["config"]["settings"]
    out, main_process, n = setup["out"], rank == 0, len(setup["images"])
    images = torch.from_numpy(setup["images"]).permute(0, 3, 1, 2).contiguous().to(device)  # (N, C, H, W) uint8
    cond_all = {name: value.to(device) for name, value in setup["cond"].items()}  # name -> (N, ...)
    net, ema, optimizer = setup["net"].to(device).train(), setup["ema"].to(device).eval(), setup["optimizer"]
    optimizer.load_state_dict(optimizer.state_dict())  # moves the optimizer state to the parameters' device
    diffusion = rundir.make_diffusion(settings).to(device)
    model = distributed(net, world, settings["compile"])
    precision = resolve_precision(settings["precision"], device)
    scaler = make_scaler(device, precision, setup.get("scaler"))  # fp16 needs loss scaling
    grid_run = rundir.Run(out, config, ema, diffusion, setup["space"], setup["images"], setup["labels"], precision)
    p_drop = settings.get("p_drop") or {}
    log_every = settings.get("log_every", 50)

    start, last_saved = setup["start"], setup["start"] or None
    log = LossLog(out, start, diffusion.num_timesteps, device, world, main_process)
    if main_process:
        print(f"{settings['data']}: {n} images {tuple(setup['images'].shape[1:])}, "
              f"{len(config['data']['class_names'])} classes | cond {settings['cond']} | U-Net {settings['size']} "
              f"{count_parameters(net) / 1e6:.2f}M params | {device} x{world} "
              f"{precision_name(precision)} | steps {start}->{settings['steps']}", flush=True)
    terminal = sys.stderr.isatty()  # a bar on a terminal; a line per log row in a file (nohup, a scheduler)
    bar = tqdm(range(start, settings["steps"]), initial=start, total=settings["steps"],
               disable=not (main_process and terminal), desc="train", dynamic_ncols=True)
    step = start
    try:
        for step in bar:
            seed = step_seed(settings["seed"], step, rank)
            torch.manual_seed(seed)  # U-Net dropout
            generator = torch.Generator(device).manual_seed(seed)  # timesteps, noise, condition dropout
            idx = batch_indices(step, n, settings["batch_size"], settings["seed"], rank, world, device)  # (B,)
            lr = learning_rate(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            per_example, t = training_step(diffusion, model, net, ema, optimizer, scaler, settings, step,
                                           to_model_range(images[idx]), {k: v[idx] for k, v in cond_all.items()},
                                           generator, p_drop, precision)  # (B,), (B,)
            log.add(step, per_example, t, settings["batch_size"] * world)

            done = step + 1
            saving = done % settings["save_every"] == 0 or done == settings["steps"]
            if done % log_every == 0 or saving:  # log.csv's row: the only steps that read values from the device
                mean, rate = log.row(done, lr)
                if not math.isfinite(mean):
                    raise RunError(rundir.nan_message(out, int(log.first_bad), last_saved, settings["lr"]))
                if main_process:
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")
                    if not terminal:
                        print(f"step {done}/{settings['steps']} loss {mean:.4f} lr {lr:.3g} {rate:.0f} img/s", flush=True)
            if main_process and saving and save_checkpoint(os.path.join(out, "checkpoint.pt"), dict(
                    format=CHECKPOINT_FORMAT, run_id=config["run_id"], step=done, config=config, loss=mean,
                    model=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict())):
                last_saved = done  # (a checkpoint with non-finite weights is never written)
            if main_process and ((settings["sample_every"] and done % settings["sample_every"] == 0)
                                 or done == settings["steps"]):
                write_grid(grid_run, done)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(step) from None  # main's message says where it stopped
    bar.close()
    if main_process and start < settings["steps"]:
        plot_loss(out)
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


def main(argv: list[str] | None = None, own_interrupt_message: bool = True) -> None:
    """train.py's command line. own_interrupt_message=False: a Ctrl-C is raised on (KeyboardInterrupt(step)) to a
    caller with its own message (python -m experiments); the checkpoint on disk is the same either way."""
    args, typed = parse_args(argv)
    try:
        check_command(args)
        rank, world, device = setup_processes(args.device)
        with lock.writer_lock(args.out) if rank == 0 else contextlib.nullcontext():  # one train.py per run
            setup = prepare(args, typed, rank, world)
            train(setup, rank, world, device)
    except (RunError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        sys.exit(f"train.py: {' '.join(str(error).split())}")
    except KeyboardInterrupt as stop:  # train() passes the step it was at
        if not own_interrupt_message:
            raise
        sys.exit(f"train.py: {rundir.interrupted_message(args.out, stop.args[0] if stop.args else None)}")
    except OSError as error:  # a write that failed: a full disk, a folder made read-only meanwhile, ...
        sys.exit(f"train.py: cannot write {error.filename or args.out}: {error.strerror or error}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0 and args.eval:
        settings = setup["config"]["settings"]
        sample.main([args.out, "--out", os.path.join(args.out, "samples"), "--references", "2", "--eval",
                     "--precision", settings["precision"], *(["--device", settings["device"]] if settings["device"] else [])])


if __name__ == "__main__":
    main()
