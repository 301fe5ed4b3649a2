"""Train a conditional DDPM on images and their feature-space positions.

    python train.py --out runs/quick --eval               # the quick CPU run (embedded MNIST sample)
    python train.py --data mnist --per-class 1000 --cond label+pos \\
        --backbone swinv2_base_window12to16_192to256.ms_in22k_ft_in1k \\
        --size paper --lr 1e-5 --epochs 500 --out runs/paper   # the report's setting, for a GPU

The method (README, steps 1-3): every training image gets a position in a
feature space (features.py: features -> UMAP of --pos-dim (20) dimensions, standardised; the features are
the pixels by default, a pretrained network such as the report's SwinV2 with --backbone),
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
(config.json, checkpoint.pt, space.npz, grids/). The conditions of the training
images come from conditions.py, the one function sample.py uses for its requests
too. What is not the algorithm (the flags and their checks, the run in --out and
the rules of resume, overwrite and belonging, the lock, the checkpoint file, the
one-line errors) is plumbing/train_command.py's, one call each here; everything
is checked before anything in --out is touched.

Randomness is derived from the step's number: the batch from (seed, epoch)
(`batch_indices`), the timesteps, noise and dropout from (seed, step, rank)
(`step_seed`), so a run that is killed and resumed replays exactly the batches,
timesteps and noise of one that never stopped; with the weights, the EMA and
AdamW's moments in checkpoint.pt (same device and precision) its weights are
identical.

Multi-GPU: `torchrun --nproc_per_node=N train.py ...` trains with
DistributedDataParallel, --batch-size images per process; rank 0 writes.
"""

import functools
import math
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

import conditions
import generation
import sample
from ddpm import Diffusion
from features import FeatureSpace
from plumbing import rundir, train_command
from plumbing.data import write_atomically
from plumbing.losslog import LossLog, plot_loss
from plumbing.precision import autocast, make_scaler, precision_name, resolve_precision
from plumbing.rundir import CHECKPOINT_FORMAT, RunError
from plumbing.train_command import cond_names
from unet import count_parameters

# The sampler of the progress grids: sample.py's defaults (the guidance, generation.default_guidance, set in write_grid).
GRID_SAMPLER = dict(name=generation.DEFAULT_SAMPLER, steps=generation.DEFAULT_STEPS, eta=generation.DEFAULT_ETA)


# ---------------------------------------------------------------------------
# Setting a run up: the conditions of the training images, the U-Net, its EMA and AdamW
# ---------------------------------------------------------------------------
def prepare(args, typed: set[str], rank: int, world: int) -> dict:
    """Check the run in --out, the settings and the data; compute the conditions; then (rank 0) write the run.

    Returns what the training loop needs. Raises RunError (and the library's
    ValueError / FileNotFoundError / WeightsUnavailableError) before touching --out.
    """
    opened = train_command.open_run(args, typed, world)  # settings, training images, the saved run on --resume
    with train_command.evaluator_beside(args, opened, rank, world) as beside:  # --eval's, on the core UMAP leaves idle
        cond, space = training_conditions(opened["settings"], opened["images"], opened["labels"], opened["space"],
                                          rank, world)
        config = train_command.run_config(opened, conditions.condition_sizes(cond), space, world)
        net, ema, optimizer = build_training_state(args.out, config, opened["checkpoint"])
        if rank == 0:
            train_command.write_run(args.out, config, space, args.overwrite)
            beside.keep(args.out)  # waits for it: the U-Net then trains alone
    checkpoint = opened["checkpoint"] or {}  # --resume: the loop starts at the checkpoint's step, a new run at 0
    return dict(out=args.out, config=config, start=checkpoint.get("step", 0), images=opened["images"],
                labels=opened["labels"], cond=cond, space=space, net=net, ema=ema, optimizer=optimizer,
                scaler=checkpoint.get("scaler"))


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
    """The U-Net (initialised from --seed), its EMA copy and AdamW, from the config's stored arguments; on --resume
    their states from the checkpoint."""
    settings = config["settings"]
    torch.manual_seed(settings["seed"])
    net = rundir.build_unet(config)
    ema = rundir.build_unet(config).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    if checkpoint is not None:
        load_training_state(out, checkpoint, net, ema, optimizer)
    return net, ema, optimizer


def load_training_state(out: str, checkpoint: dict, net, ema, optimizer) -> None:
    """--resume: the U-Net, its EMA and AdamW's state from checkpoint.pt."""
    try:
        net.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise RunError(f"{out}/checkpoint.pt does not fit the U-Net in its config.json") from error


def save_training_state(out: str, config: dict, step: int, loss: float, net, ema, optimizer, scaler) -> bool:
    """checkpoint.pt: everything --resume needs to continue exactly (the step, the weights, the EMA, AdamW's moments
    and fp16's loss scale; the randomness of a step comes from its number). False: not written (non-finite)."""
    return rundir.save_checkpoint(os.path.join(out, "checkpoint.pt"), dict(
        format=CHECKPOINT_FORMAT, run_id=config["run_id"], step=step, config=config, loss=loss,
        model=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict()))


# ---------------------------------------------------------------------------
# The pieces of one optimizer step
# ---------------------------------------------------------------------------
def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float (B, C, H, W) in [-1, 1] (images stay uint8 on the device until here)."""
    return images.float() / 127.5 - 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """The randomness of one step but its batch (timesteps, noise, condition dropout, U-Net dropout) comes from this
    number; the batch comes from (seed, epoch), `batch_indices`."""
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
    """A class grid from the EMA model (sample.py does the drawing, with its default sampler; a schedule of fewer
    --timesteps than its steps takes one step per timestep)."""
    sampler = dict(GRID_SAMPLER, steps=min(GRID_SAMPLER["steps"], run.diffusion.num_timesteps),
                   guidance=generation.default_guidance(run.config["unet"]["conditions"]))
    _, png = sample.class_grid(run, per_class=train_command.GRID_PER_CLASS, sampler=sampler, seed=run.config["settings"]["seed"])
    write_atomically(rundir.grid_path(run.dir, step), lambda f: f.write(png))


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
        print(train_command.describe(setup, count_parameters(net), device, world, precision_name(precision)), flush=True)
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
            if main_process and saving and save_training_state(out, config, done, mean, net, ema, optimizer,
                                                                scaler):
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
        train_command.finish_stopped_run(grid_run, start, write_grid)  # a Ctrl-C during the last grid
        print(f"{out} is already trained to step {start}; raise --steps to train longer")
    return out


def main(argv: list[str] | None = None, own_interrupt_message: bool = True) -> None:
    """train.py's command line. own_interrupt_message=False: a Ctrl-C is raised on (KeyboardInterrupt(step)) to a
    caller with its own message (python -m experiments); the checkpoint on disk is the same either way."""
    args, typed = train_command.parse_args(argv)
    with train_command.one_line_errors(args.out, own_interrupt_message):
        train_command.check_command(args)
        rank, world, device = train_command.setup_processes(args.device)
        with train_command.writer_lock(args.out, rank):
            setup = prepare(args, typed, rank, world)
            train(setup, rank, world, device)
    if rank == 0 and args.eval:  # score the trained run as sample.py does
        settings = setup["config"]["settings"]
        references = ["--references", "2"] if setup["config"]["unet"]["conditions"] else []  # (--cond none: no control)
        sample.main([args.out, "--out", os.path.join(args.out, "samples"), *references, "--eval",
                     "--precision", settings["precision"], *(["--device", settings["device"]] if settings["device"] else [])],
                    interrupted=f"train.py: interrupted during --eval; the run is trained and saved in {args.out}, and "
                    f"{args.out}/samples is as it was; to score it: python train.py --out {args.out} --resume --eval")


if __name__ == "__main__":
    main()
