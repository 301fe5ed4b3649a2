"""train.py's command: its flags and their checks, the run in --out (new, resumed or replaced), the config and
the checkpoint it writes, the lock, the processes under torchrun, and its one-line errors.

train.py calls each of these once; the rules of a run directory (belonging, resume, overwrite) are rundir.py's.
"""
import argparse
import contextlib
import io
import math
import os
import sys
import warnings

import torch
import torch.distributed as dist
from PIL import Image

from ddpm import DEFAULT_P_UNCOND, PREDICTIONS, SCHEDULES, Diffusion, beta_schedule, default_p_drop
from features import FeatureSpace, pick_device
from plumbing import commands, data, evaluator, lock, rundir
from plumbing.losslog import plot_loss
from plumbing.precision import PRECISIONS
from plumbing.rundir import CONFIG_FORMAT, RunError
from plumbing.weights import WeightsUnavailableError
from unet import condition_encoder

DESCRIPTION = "Train a conditional DDPM on images and their feature-space positions."
NOT_SETTINGS = ("out", "resume", "overwrite", "eval")  # the command's flags; every other flag is a setting of the run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # flags typed in full, so that parse_args can tell which were typed
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its settings are the defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (only its own files)")
    g = p.add_argument_group("data and condition")
    g.add_argument("--data", default="mnist-sample", help="mnist-sample (embedded), mnist, or an image-folder path")
    g.add_argument("--root", default="data", help="where --data mnist is downloaded and a timm --backbone's features are cached "
                   "(refused where the run uses neither)")
    g.add_argument("--per-class", type=int, default=None, help="training images per class (the report: 1000 from MNIST)")
    g.add_argument("--data-seed", type=int, default=0, help="which images a --per-class subset takes")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    g.add_argument("--channels", type=int, default=None, choices=(1, 3), help="force grey (1) or RGB (3)")
    g.add_argument("--cond", default="label+pos", help="conditions joined by +: label, pos; or none")
    g.add_argument("--backbone", default="pixels",
                   help="pixels, classifier (--weights FILE: a classifier saved by metrics.py --features classifier), or a timm model name "
                   "(the report: swinv2_base_...)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone (offline use)")
    g.add_argument("--pos-dim", type=int, default=20, help="dimension of the UMAP position (the report: 20)")
    g = p.add_argument_group("model and diffusion")
    g.add_argument("--size", default="compact", choices=("compact", "small", "paper"),
                   help="U-Net size (see unet_kwargs): compact (the CPU default), small (the default before "
                        "2026-12-07, the experiment's), paper")
    g.add_argument("--base-channels", type=int, default=None, metavar="C",
                   help="U-Net width: channels of its first level (default: the size's own, compact 16, small 32, "
                        "paper 128)")
    g.add_argument("--dropout", type=float, default=None, help="U-Net dropout (default: the size's own)")
    g.add_argument("--schedule", default="linear", choices=SCHEDULES)
    g.add_argument("--timesteps", type=int, default=1000)
    g.add_argument("--prediction", default="v", choices=PREDICTIONS,
                   help="what the U-Net predicts: the noise eps (Ho et al.) or v (Salimans & Ho)")
    g.add_argument("--min-snr", type=float, default=None, metavar="GAMMA",
                   help="weight the loss by min-SNR-gamma (Hang et al. 2023); default: unweighted")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=800, help="optimizer steps (may be raised on --resume)")
    g.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (per process under torchrun)")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="after the warm-up: constant, or a cosine decay to 0 at the last step")
    g.add_argument("--ema", type=float, default=0.999, help="the EMA's largest decay: the weights used for sampling "
                   "average with decay d = min(EMA, (1 + step) / (10 + step)), which reaches 0.999 only at step 8,990 "
                   "(counting from 0; the default 800 steps end at d = 800/809 = 0.989)")
    g.add_argument("--p-uncond", type=float, default=DEFAULT_P_UNCOND,
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
                   "OUT/samples --references 2 --eval (metrics.json there; see sample.py --eval; no --references "
                   "for --cond none)")
    g.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU)")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """The command line, and the names of the flags the user actually typed."""
    parser = build_parser()
    return parser.parse_args(argv), commands.typed_flags(parser, argv)


def check_settings(s: dict) -> None:
    """Every setting in range, before any work; each error names its flag and the fix."""
    positive = ["steps", "batch_size", "save_every", "timesteps", "pos_dim"]
    positive += [k for k in ("per_class", "image_size", "base_channels") if s.get(k) is not None]
    for key in positive:
        if s[key] < 1:
            raise RunError(f"--{key.replace('_', '-')} must be a positive number, got {s[key]}")
    if s.get("base_channels") == 1:  # the sinusoidal timestep embedding is base_channels wide: cos and sin need 2
        raise RunError("--base-channels must be at least 2, got 1")
    ranges = dict(lr=(0, math.inf, False), grad_clip=(0, math.inf, False), ema=(0, 1, True), p_uncond=(0, 1, True),
                  weight_decay=(0, math.inf, True), warmup=(0, math.inf, True), sample_every=(0, math.inf, True))
    if s["dropout"] is not None:
        ranges["dropout"] = (0, 1, True)
    if s["epochs"] is not None:
        ranges["epochs"] = (0, math.inf, False)
    for key, (low, high, low_ok) in ranges.items():
        if not ((s[key] >= low if low_ok else s[key] > low) and s[key] < high):
            raise RunError(f"--{key.replace('_', '-')} must lie in {'[' if low_ok else '('}{low}, {high}), got {s[key]}")
    commands.check_seed("--seed", s["seed"])
    commands.check_seed("--data-seed", s.get("data_seed", 0))
    check_memory(s)  # before the schedule below is built: --timesteps 10**9 would take 100 GB
    try:
        Diffusion(beta_schedule(s["schedule"], s["timesteps"]))
    except ValueError as error:
        raise RunError(f"--timesteps {s['timesteps']} does not give a valid {s['schedule']} schedule ({error}); "
                       "choose more --timesteps") from error
    names = cond_names(s["cond"])
    if len(set(names)) < len(names):  # label+label: one encoder, the second name silently dropped
        raise RunError(f"--cond {s['cond']} names {', '.join(sorted({n for n in names if names.count(n) > 1}))} more "
                       "than once: give each condition once (e.g. --cond label+pos)")
    for name in names:
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
        raise RunError("--backbone classifier needs --weights FILE, a classifier file written by plumbing/classifier.py "
                       "(python metrics.py REAL GENERATED --features classifier --classifier FILE trains one on "
                       "the labelled images REAL and saves it as FILE)")


# check_memory's estimates, in bytes (measured on the CPU, fp32; bf16 and a GPU take less):
IMAGE_COPIES = 3  # a training pixel: the loaded images, a resized copy, the (N, C, H, W) tensor the loop indexes
PIXEL_FEATURE_BYTES = 8  # and with --backbone pixels and a pos condition: its float32 feature and UMAP's copy
# A batch row, forward and backward: float32 maps of the U-Net's base width. small's and paper's are measured;
# compact's is small's scaled by their maps' sizes (its 7x7 level is 4 base widths wide, small's 2): 7% more.
TRAIN_MAPS = dict(compact=103, small=96, paper=240)
SCHEDULE_BYTES = 256  # a timestep: the schedule's float64 and float32 arrays (ddpm.Diffusion), about 210 bytes at
# the peak of building them (with their float64 temporaries; --timesteps 3e7, 2026-12-07), rounded up
GRID_PER_CLASS, GRID_BATCH = 8, 64  # the progress grid (train.write_grid draws it): images per class, rows per call
MNIST_IMAGES = {"mnist": 60_000, "mnist-sample": 4_000}  # their train splits: 10 classes of 28 x 28 grey digits


def training_data_shape(s: dict) -> tuple[int, int, int, int, int] | None:
    """(images, classes, height, width, channels) that --data, --per-class and --channels will load, at the images'
    own size, from the names and headers of the files alone (None: unknown; loading the data says what is wrong)."""
    if s["data"] in MNIST_IMAGES:
        count, classes, height, width, channels = MNIST_IMAGES[s["data"]], 10, 28, 28, 1
    else:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its note on skipped files comes when the data loads
                paths, _, names = data.list_image_folder(data.split_folder(s["data"], "train"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (data.open_image refuses it)
                with Image.open(paths[0]) as first:  # the header only
                    grey = first.mode in data.GREY_MODES + data.WIDE_GREY_MODES
                    (width, height), channels = first.size, 1 if grey else 3
        except (OSError, ValueError, IndexError, Image.DecompressionBombError):
            return None  # loading the data says what is wrong, in one line
        count, classes = len(paths), len(names)
    if s["per_class"] is not None:
        count = classes * s["per_class"]
    return count, classes, height, width, s["channels"] or channels


def check_memory(s: dict) -> None:
    """The settings' requests against the memory this machine has now (rundir.check_memory), before any work:
    the training images (and the progress grid), a batch's activations, the schedule and the positions.

    Each request is named by the flag that makes it large: a batch by --batch-size or --image-size, whichever is
    the further above its default. On a CUDA device the batch's activations are checked against its free memory.
    """
    shape = training_data_shape(s)
    if shape is None:
        return
    count, classes, own_height, own_width, channels = shape
    height, width = (s["image_size"], s["image_size"]) if s["image_size"] is not None else (own_height, own_width)
    pixels = height * width * channels
    base = unet_kwargs(s["size"], (height, width, channels), None, {}, s.get("base_channels"))["base_channels"]
    pos = "pos" in cond_names(s["cond"])
    default_batch = build_parser().get_default("batch_size")
    images_flag = (f"--image-size {s['image_size']}" if s["image_size"] is not None else
                   f"--per-class {s['per_class']}" if s["per_class"] is not None else f"--data {s['data']}")
    grown = height * width / (own_height * own_width)  # how much --image-size enlarges every map
    batch_flag = images_flag if grown > s["batch_size"] / default_batch else f"--batch-size {s['batch_size']}"
    grid_rows = min(GRID_BATCH, classes * GRID_PER_CLASS)
    host, device = {}, {}
    for requests, flag, size in (
            (host, images_flag, count * pixels * (IMAGE_COPIES + PIXEL_FEATURE_BYTES * (pos and s["backbone"] == "pixels"))),
            (host, images_flag, classes * GRID_PER_CLASS * pixels * commands.IMAGE_COPIES),  # the grid's images
            (device, images_flag, 2 * commands.ACTIVATIONS * base * height * width * 4 * grid_rows),  # and sampling
            (device, batch_flag, s["batch_size"] * TRAIN_MAPS[s["size"]] * base * height * width * 4),
            (host, f"--timesteps {s['timesteps']}", s["timesteps"] * SCHEDULE_BYTES),
            # UMAP's embedding and spectral start (float64), and the pos encoder's first layer: weights, EMA,
            # gradient and AdamW's two moments
            (host, f"--pos-dim {s['pos_dim']}", pos * s["pos_dim"] * (4 * 8 * count + 5 * 4 * 4 * base))):
        requests[flag] = requests.get(flag, 0) + size
    gpu = cuda_memory(s["device"])
    if gpu is None:  # the batch in this machine's memory
        rundir.check_memory({flag: host.get(flag, 0) + device.get(flag, 0) for flag in {**host, **device}})
    else:
        rundir.check_memory(host)
        rundir.check_memory(device, available=gpu, where="the GPU")


def cuda_memory(name: str | None) -> int | None:
    """Bytes free on the CUDA device train.py will train on (under torchrun: LOCAL_RANK's); None: not CUDA."""
    try:
        device = pick_device(name)
        if device.type != "cuda":
            return None
        return torch.cuda.mem_get_info(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0)))[0]
    except (RuntimeError, ValueError, AssertionError):  # AssertionError: a torch built without CUDA
        return None


def cond_names(cond: str) -> list[str]:
    """--cond "label+pos" -> ["label", "pos"]; "none" -> []."""
    return [] if cond == "none" else cond.split("+")


def unet_kwargs(size: str, image_shape: tuple, dropout: float | None, conditions: dict[str, int],
                base_channels: int | None = None) -> dict:
    """Every argument of the run's U-Net (stored in config.json: the U-Net is rebuilt from it alone).

    compact: ~0.67M parameters, widths 16, 32, 64 at H, H/2, H/4, the CPU default; small: ~1.2M, widths 32, 64,
    64 (the default before 2026-12-07, and the experiment's); paper: ~40M (improved-diffusion's CIFAR-10 shape),
    for a GPU. compact trains about 1.6x as many images/s as small on a CPU, and at 800 steps is close to small's 600
    in quality (better FID, 0.3 points fewer requested digits over three seeds; docs/SPEED.md): small's costly
    levels, at 28x28 and 14x14, are halved, the cheap 7x7 one kept.
    base_channels (--base-channels): the first level's width instead of the size's own (16, 32, 128); every level
    scales with it.
    """
    height, _, channels = image_shape
    common = dict(image_channels=channels, image_size=height, conditions=conditions)
    if size in ("compact", "small"):
        # attention only in the middle (at H/4): cheap enough for a laptop CPU
        base, mults = (16, [1, 2, 4]) if size == "compact" else (32, [1, 2, 2])
        return dict(common, base_channels=base_channels or base, channel_mults=mults, num_res_blocks=1,
                    attention_resolutions=[], dropout=0.0 if dropout is None else dropout)
    # paper: attention at H/2 and H/4
    half, quarter = (height + 1) // 2, (height + 3) // 4
    return dict(common, base_channels=base_channels or 128, channel_mults=[1, 2, 2, 2], num_res_blocks=2,
                attention_resolutions=[half, quarter], dropout=0.1 if dropout is None else dropout)


def check_command(args: argparse.Namespace) -> None:
    """What can be checked from the command line alone, before the lock, the data or the UMAP fit."""
    if args.resume and args.overwrite:
        raise RunError("pass either --resume or --overwrite, not both")
    rundir.check_out(args.out)
    rundir.check_device(args.device)


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
            settings["p_drop"] = default_p_drop(names)
    else:
        if world != saved["world_size"]:
            raise RunError(f"{args.out} was trained with {saved['world_size']} processes; resume it with as many")
        now = {key: getattr(args, key) for key in typed - set(NOT_SETTINGS)}
        settings, changes = rundir.resumed_settings(saved["settings"], now, args.out)
    check_settings(settings)
    check_typed(settings, typed, saved is None)
    return settings, changes


# Flags of a new run that act only with a condition: flag -> the condition.
NEEDS_CONDITION = {"backbone": "pos", "weights": "pos", "pos_dim": "pos"}


def check_typed(s: dict, typed: set[str], new: bool) -> None:
    """A flag typed where the run cannot use it is a one-line error naming it and the fix (a resumed run's
    flags that define it are rundir.resumed_settings' to refuse, and what --resume does with --steps open_run's)."""
    if {"steps", "epochs"} <= typed:
        raise RunError("--steps and --epochs both set the run's length (--epochs would win): pass one of them")
    if not new:
        return
    names = cond_names(s["cond"])
    for key, condition in NEEDS_CONDITION.items():
        if key in typed and condition not in names:
            raise RunError(f"--{key.replace('_', '-')} shapes the {condition} condition, and --cond {s['cond']} has "
                           f"none: leave --{key.replace('_', '-')} out, or add {condition} to --cond (e.g. --cond label+pos)")
    if "weights" in typed and s["backbone"] == "pixels":
        raise RunError("--weights is a backbone's weights file, and --backbone pixels takes none (its features are "
                       "the pixels): leave --weights out, or choose a --backbone that takes weights")
    for key in ("p_uncond", "p_drop"):
        if key in typed and not names:
            raise RunError(f"--{key.replace('_', '-')} drops conditions, and --cond none has none: leave it out")
    timm_features = "pos" in names and s["backbone"] not in ("pixels", "classifier")  # cached in ROOT/cache
    if "root" in typed and s["data"] != "mnist" and not timm_features:
        raise RunError(f"--root is where --data mnist is downloaded and a timm --backbone's features are cached, and "
                       f"this run (--data {s['data']}, {'--backbone ' + s['backbone'] if 'pos' in names else 'no pos'}) "
                       "uses neither: leave --root out")
    if "data_seed" in typed and s["per_class"] is None:
        raise RunError("--data-seed chooses which images a --per-class subset takes, and without --per-class every "
                       "image is taken: add --per-class N, or leave --data-seed out")


def check_length(out: str, settings: dict, typed: set[str], changes: dict, start: int, resumed: bool) -> None:
    """The run's length against where it is and what the flags ask of the steps to come, before any write: a
    resume must train (a --steps below the run's step, or one that changes the run's --steps to its step, or a
    change to a run that is done, would record what was never done; the run's own --steps restated is "already
    trained"); --sample-every and --lr-schedule cosine must fall inside the steps."""
    steps, flag = settings["steps"], "--epochs" if "epochs" in typed else "--steps"
    if resumed and ({"steps", "epochs"} & typed) and (steps < start or (steps == start and {"steps", "epochs"} & set(changes))):
        asked = f"--epochs {settings['epochs']:g} ({steps} steps)" if flag == "--epochs" else f"--steps {steps}"
        raise RunError(f"{out} is at step {start}: {asked} would not train it; give {flag} beyond step {start} to "
                       "train longer, or leave it out")
    if resumed and changes and steps <= start:
        raise RunError(f"{out} is already trained to step {start} (its --steps): "
                       f"{', '.join('--' + k.replace('_', '-') for k in changes)} would change nothing; add --steps "
                       f"above {start} to train on with it")
    if steps <= start:
        return  # nothing to train ("already trained"), and nothing changed
    every = settings["sample_every"]
    if "sample_every" in typed and every and (steps - 1) // every <= start // every:
        raise RunError(f"--sample-every {every}: no step between {start} and the last, {steps}, is a multiple of it "
                       "(the last step's grid is always made): give a smaller N, or 0")
    if {"lr_schedule", "warmup", "steps", "epochs"} & typed and settings["lr_schedule"] == "cosine" \
            and settings["warmup"] >= steps:
        raise RunError(f"--lr-schedule cosine decays after the warm-up, and --warmup {settings['warmup']} lasts "
                       f"the run's {steps} steps: give a --warmup below {steps}, or more --steps")
    if resumed and "warmup" in changes and settings["lr_schedule"] == "constant" and max(changes["warmup"]) <= start:
        raise RunError(f"--warmup {settings['warmup']}: {out} is at step {start}, past the warm-up either way, so "
                       "with --lr-schedule constant it would change nothing; leave it out")


def write_run(out: str, config: dict, space: FeatureSpace | None, overwrite: bool) -> None:
    """Everything is checked: now, and only now, --out changes (rank 0, holding --out's lock)."""
    if overwrite:
        rundir.remove_run_files(out)
    rundir.remove_stale_tmp(out)
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    if space is not None and space.run_id != config["run_id"]:  # fitted by this call (a loaded one carries the id)
        space.save(os.path.join(out, rundir.SPACE_FILE), run_id=config["run_id"])
    rundir.write_config(out, config)


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

def open_run(args: argparse.Namespace, typed: set[str], world: int) -> dict:
    """Everything train.py needs before the conditions, checked before --out is touched: the run in --out (its
    config and checkpoint on --resume), the settings, the training images and the run's identity."""
    saved, checkpoint = existing_run(args.out, args.resume, args.overwrite)
    settings, changes = run_settings(args, typed, saved, world)
    images, labels, class_names = rundir.load_training_images(settings)
    digest = rundir.data_digest(images, labels, class_names)
    if saved is not None:
        rundir.check_data(args.out, saved, digest)
    if settings["epochs"] is not None:
        settings["steps"] = math.ceil(settings["epochs"] * len(images) / (settings["batch_size"] * world))
        if saved is not None and settings["steps"] != saved["settings"]["steps"]:  # the steps --epochs gives: a change
            changes["steps"] = [saved["settings"]["steps"], settings["steps"]]
    start = checkpoint["step"] if checkpoint is not None else 0
    check_length(args.out, settings, typed, changes, start, saved is not None)
    run_id = saved["run_id"] if saved is not None else rundir.make_run_id(settings, digest)  # fixed at the start
    space = rundir.load_space(args.out, saved) if checkpoint is not None else None
    return dict(saved=saved, checkpoint=checkpoint, settings=settings, changes=changes, images=images, labels=labels,
                class_names=class_names, digest=digest, run_id=run_id, space=space, start=start)


def evaluator_beside(args: argparse.Namespace, run: dict, rank: int, world: int) -> evaluator.Beside:
    """--eval's evaluator, trained in a second process while the UMAP fit runs where that saves time
    (plumbing/evaluator.py)."""
    fits_umap = "pos" in cond_names(run["settings"]["cond"]) and run["space"] is None
    return evaluator.start(args.eval and rank == 0, fits_umap, run["images"], run["labels"], len(run["class_names"]),
                           run["run_id"], pick_device(args.device).type, world)


def run_config(run: dict, condition_sizes: dict[str, int], space: FeatureSpace | None, world: int) -> dict:
    """config.json: the settings, the data, the U-Net's arguments (a resumed run keeps its own) and the changes."""
    settings, saved, images = run["settings"], run["saved"], run["images"]
    data = dict(class_names=run["class_names"], num_images=len(images), image_shape=list(images.shape[1:]),
                digest=run["digest"])
    unet = saved["unet"] if saved is not None else unet_kwargs(settings["size"], images.shape[1:], settings["dropout"],
                                                                 condition_sizes, settings.get("base_channels"))
    changes = [dict(step=run["start"], **run["changes"])] if run["changes"] else []
    history = saved["changes"] + changes if saved is not None else []
    return dict(format=CONFIG_FORMAT, run_id=run["run_id"], settings=settings, data=data, unet=unet,
                space_file=rundir.SPACE_FILE if space is not None else None, world_size=world, changes=history)


def describe(setup: dict, parameters: int, device: torch.device, world: int, precision_name: str) -> str:
    """The line a run starts with."""
    settings = setup["config"]["settings"]
    return (f"{settings['data']}: {len(setup['images'])} images {tuple(setup['images'].shape[1:])}, "
            f"{len(setup['config']['data']['class_names'])} classes | cond {settings['cond']} | U-Net {settings['size']} "
            f"{parameters / 1e6:.2f}M params | {device} x{world} {precision_name} | "
            f"steps {setup['start']}->{settings['steps']}")


def writer_lock(out: str, rank: int):
    """One train.py at a time works on a run: --out/.lock, held by rank 0."""
    return lock.writer_lock(out) if rank == 0 else contextlib.nullcontext()


@contextlib.contextmanager
def one_line_errors(out: str, own_interrupt_message: bool = True):
    """Every expected failure as one line, `train.py: ...`; a Ctrl-C says where the run stopped and how to go on
    (own_interrupt_message=False: raised on, as KeyboardInterrupt(step), to a caller with its own message)."""
    try:
        yield
    except (RunError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        sys.exit(f"train.py: {' '.join(str(error).split())}")
    except KeyboardInterrupt as stop:  # train() passes the step it was at
        if not own_interrupt_message:
            raise
        sys.exit(f"train.py: {rundir.interrupted_message(out, stop.args[0] if stop.args else None)}")
    except OSError as error:  # a write that failed: a full disk, a folder made read-only meanwhile, ...
        sys.exit(f"train.py: cannot write {error.filename or out}: {error.strerror or error}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def finish_stopped_run(run: rundir.Run, step: int, write_grid) -> None:
    """A run resumed at its last step: what a Ctrl-C after the last checkpoint kept it from writing (loss.png, the
    last step's grid, drawn by train.py's write_grid) is written now, and said."""
    missing = []
    if not os.path.isfile(os.path.join(run.dir, "loss.png")):
        plot_loss(run.dir)
        missing.append("loss.png")
    if not os.path.isfile(rundir.grid_path(run.dir, step)):
        write_grid(run, step)
        missing.append(f"grids/step{step:07d}.png")
    if missing:
        print(f"{run.dir}: wrote {' and '.join(missing)}, which the run stopped before writing")
