"""Method step 4's sampling (docs/METHOD.md): generate images for requests, each a class and a reference
image's conditions.

`generate` samples from a loaded run's EMA model (rundir.load_run) with the
sampler of ddpm.py: batched, guided (classifier-free, ddpm.Diffusion.guided_output),
its noise drawn batch after batch from one generator seeded with `seed` (rows of one walk sharing all
their noise), or per row from the row's own seed (ddpm.RowNoise). The defaults a user gets without flags
are here too.
"""
import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm import SAMPLER_ETA, RowNoise
from plumbing.precision import autocast
from plumbing.rundir import Run


# The sampler a user gets without flags: DPM-Solver++(2M), SDE form (eta 1), 10 steps. `python -m experiments.bench sampler`
# compares samplers at guidance 3 on both conditions (not the default guidance, the label alone): there 10 of these
# steps matched DDIM (eta 1) with 25 (docs/SPEED.md).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 10


DEFAULT_ETA = SAMPLER_ETA[DEFAULT_SAMPLER]  # 1.0; without --eta every sampler takes its own (ddpm.SAMPLER_ETA)


# The guidance weight w a user gets without --guidance: on the label alone, given the other conditions, for a
# model with a label; on every condition for one without (default_guidance). Also --boundary-guidance's default.
DEFAULT_GUIDANCE = 3.0


# The default --guidance-interval, None: guidance at every step. experiments/compare.py's interval curve found no
# interval better at a matched share of requested digits (docs/EXPERIMENT.md, section 1).
DEFAULT_GUIDANCE_INTERVAL = None


def default_guidance(conditions) -> float | dict[str, float]:
    """The guidance without --guidance: w = DEFAULT_GUIDANCE on the label given the other conditions,
    out(others) + w (out(others, label) - out(others)) (ddpm.Diffusion.guided_output); for a model without a
    label, w on every condition. Measured (docs/EXPERIMENT.md, "Why v-prediction and 600 steps"): the main
    command's model of then (--size small, 600 steps) with label-given-position guidance at w = 3 reached 98.7%
    requested digits at FID 5.5,
    against 96.4-97.4% at FID 8.0-11.9 for runs of the same recipe with w = 3 on both conditions; those used
    DDIM with 25 steps, so the sampler changed together with the guidance.
    Without conditions there is nothing to guide: 1 (what meta.json then records)."""
    if not list(conditions):
        return 1.0
    return {"label": DEFAULT_GUIDANCE} if "label" in conditions else DEFAULT_GUIDANCE


def walk_guidance(conditions, label: str, guidance: float | dict | None) -> float | dict:
    """--guidance, or the default for the conditions a walk gives: with --walk-label none there is no
    label to guide, so the default is w on the position (as for a model without a label)."""
    if guidance is not None:
        return guidance
    return default_guidance([name for name in conditions if not (name == "label" and label == "none")])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(run: Run, count: int, cond: dict[str, np.ndarray], sampler: dict, seed: int,
             noise_index: np.ndarray | None = None, row_seeds: np.ndarray | None = None) -> np.ndarray:
    """`count` images for the conditions cond (name -> (count, ...) arrays) -> uint8 (count, H, W, C).

    sampler = dict(name, steps, eta, guidance, batch_size (optional, 64), guidance_interval (optional: None or
    [lo, hi])): see ddpm.Diffusion.sample. noise_index (count,): rows of one batch with the same value share all
    their noise (the points of one walk); `batches` keeps each run of consecutive equal values in one batch
    (a run longer than batch_size is a batch of its own), so give a walk's rows consecutively.
    row_seeds (count,): each row's noise from its own seed instead (ddpm.RowNoise), the same whatever rows
    share its batch (the boundary search).
    Batches of 64 images by default: on a 2-core CPU about 1.7x as fast per image as batches of 512, and as fast
    as batches of 128 (the compact U-Net at guidance 3, 2026-12-07). A batch
    of B images is B network rows per step without guidance (w = 1, or a step outside guidance_interval) and
    (number of condition sets guided_output needs) x B with it: 2B (128) for one weight (a bare w, or the
    default w on the label), 3B (192) for two different weights on two conditions (e.g. label=3,pos=1) or for
    composition ({"compose": w}, at every step, weight 1 too); per-condition weights need at most
    (conditions + 1) x B.
    """
    device = run.device
    generator = torch.Generator(device).manual_seed(seed)
    shape = (run.model.image_channels, run.model.image_size, run.model.image_size)
    out = []
    for rows in tqdm(batches(count, sampler.get("batch_size", 64), noise_index), desc=f"sampling {count}",
                     unit="batch", leave=False, disable=None):
        part = {name: torch.as_tensor(value[rows], device=device) for name, value in cond.items()}
        index = None if noise_index is None else torch.as_tensor(np.unique(noise_index[rows], return_inverse=True)[1])
        noise = generator if row_seeds is None else RowNoise(row_seeds[rows])
        with autocast(device, run.precision):
            x = run.diffusion.sample(run.model, (len(rows), *shape), cond=part, steps=sampler["steps"],
                                     eta=sampler["eta"], guidance=sampler["guidance"], generator=noise,
                                     device=device, sampler=sampler["name"], noise_index=index,
                                     guidance_interval=sampler.get("guidance_interval"))
        out.append(to_uint8(x))
    return np.concatenate(out)


def batches(count: int, size: int, groups: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of each batch: runs of `size` rows, or of whole groups (consecutive equal values) up to `size`
    rows (a group larger than `size` is one batch of its own)."""
    if groups is None:
        return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    out, current = [], []
    for begin, end in zip(starts, np.r_[starts[1:], count]):
        if current and len(current) + end - begin > size:
            out.append(np.array(current))
            current = []
        current += list(range(begin, end))
    return out + ([np.array(current)] if current else [])
