"""Generate images from a trained run: class grids, reference control, class boundaries, metrics.

    python sample.py runs/quick --out runs/quick/grid                    # class grid (Figs 2-4)
    python sample.py runs/quick --out DIR --references 2                 # reference control (Figs 5-6)
    python sample.py runs/quick --out DIR --between 4 9                  # a walk from a 4 to a 9
    python sample.py runs/quick --out DIR --references 2 --eval          # + metrics.json
    python sample.py runs/quick --out DIR --boundary 4 9 --n 16          # digits between a 4 and a 9

The method's generation step: take a reference image, compute its
conditions (its class; its position: features, then the fitted UMAP's
`transform`) and sample from the model with them. Every request here is
"a class and a reference image": the class grid draws one training image
per class as the reference (the report's protocol), `--references K` draws
K per class and shows each at the left of its row, `--between A B` walks
the conditions from a class-A training image to a class-B one (the
class-boundary samples that motivate the method; `walks`); `--boundary A B`
finds on each walk the point where a guide's P(B) = 0.5 (`boundary_samples`). A model that does
not take a condition simply ignores it.

The sampler is DPM-Solver++(2M) (Lu et al. 2022) with `--sampling-steps` steps and
`--eta` 1 (its SDE form; 0: the ODE), or DDIM (Song et al. 2021; `--eta` 0 unless given), or
`--sampler ddpm`, Algorithm 2 of Ho et al. 2020 with all T steps; guidance
`--guidance w` or a weight per condition (`label=3`, the default: the label
guided given the other conditions; ddpm.Diffusion.guided_output). Every call writes, in --out, a PNG per figure, `samples.npz` and
`meta.json` (and `metrics.json`, `eval_samples.npz` with --eval), all at the
end, after every argument has been checked and every image made; meta.json
lists the files this call wrote (an earlier call's outputs it does not remake are removed: they would not match).

`load_run` reads a run directory back (rundir.py's files and rules); the
conditions of a request come from conditions.py, as in training. train.py
imports this file for its progress grids and `--eval`, never the other way round.
"""
import argparse
import dataclasses
import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import classifier
import conditions
import metrics
import rundir
from data import choose_per_class, load_dataset, open_image, write_atomically
from ddpm import COMPOSE, SAMPLER_ETA, SAMPLERS, Diffusion, RowNoise, check_guidance_interval
from features import FeatureSpace, WeightsUnavailableError, extract_features, pick_device
from rundir import SAMPLE_FILES, RunError
from unet import UNet

# The sampler a user gets without flags: DPM-Solver++(2M), SDE form (eta 1), 10 steps. `python -m experiments.bench sampler`
# compares samplers at guidance 3 on both conditions (not this default guidance, the label alone): there 10 of these
# steps matched DDIM with 25 (docs/SPEED.md).
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "dpm++2m", 10, 3.0
DEFAULT_ETA = SAMPLER_ETA[DEFAULT_SAMPLER]  # 1.0; without --eta every sampler takes its own (ddpm.SAMPLER_ETA)
# ... with that guidance weight on the label alone, given the other conditions (default_guidance; README).
# The default --guidance-interval: guidance at every step until experiments/compare.py's guidance curve says otherwise.
DEFAULT_GUIDANCE_INTERVAL = None


# ---------------------------------------------------------------------------
# A run, loaded: its EMA model, diffusion, space and training images
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """Everything sampling needs: the (EMA) model, its diffusion, the run's config, space and training data."""
    dir: str
    config: dict
    model: UNet
    diffusion: Diffusion
    space: FeatureSpace | None
    images: np.ndarray  # (N, H, W, C) uint8 training images
    labels: np.ndarray  # (N,) int64
    precision: torch.dtype | None = None  # autocast dtype of the network, None: fp32

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(run_dir: str, device: str | None = None, precision: str = "auto") -> Run:
    """The EMA model, diffusion, config, feature space and training data of a run (no UMAP refit).

    device: cuda, mps, cpu (None: the best available); precision: auto, bf16, fp16 or fp32 (see resolve_precision).
    """
    rundir.check_device(device)
    config = rundir.read_config(run_dir)
    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = rundir.load_checkpoint(path)
    rundir.check_belongs(path, checkpoint.get("run_id", ""), config["run_id"])
    model = rundir.build_unet(config)
    try:
        model.load_state_dict(checkpoint["ema"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{path} does not fit the U-Net in its config.json") from error
    space = rundir.load_space(run_dir, config)
    images, labels, class_names = rundir.load_training_images(config["settings"])
    rundir.check_data(run_dir, config, rundir.data_digest(images, labels, class_names))
    device = pick_device(device)
    model.to(device).eval()
    diffusion = rundir.make_diffusion(config["settings"]).to(device)
    return Run(run_dir, config, model, diffusion, space, images, labels, resolve_precision(precision, device))


# ---------------------------------------------------------------------------
# Running the network: mixed precision where the hardware has it
# ---------------------------------------------------------------------------
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 matrix maths natively? (A CUDA GPU of compute capability 8.0 or newer, whose
    bf16 is not emulated; a CPU with AVX512-BF16 or AMX.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """--precision -> the autocast dtype (None: plain fp32).

    auto: bf16 where native_bf16; else fp16 on a CUDA GPU with tensor cores (compute capability 7.0+,
    e.g. V100, T4: training then scales the loss, train.py's GradScaler); else fp32.
    """
    if name not in PRECISIONS:
        raise RunError(f"unknown --precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "auto":
        if native_bf16(device):
            return torch.bfloat16
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7:
            return torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 or fp16 autocast for the network's matrix maths; weights, loss and sampler stay fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def default_guidance(conditions) -> float | dict[str, float]:
    """The guidance without --guidance: w = DEFAULT_GUIDANCE on the label given the other conditions,
    out(others) + w (out(others, label) - out(others)) (ddpm.Diffusion.guided_output); for a model without a
    label, w on every condition. Measured on the main command's model, label-given-position guidance at w = 3
    reaches the requested digit more often and with a lower FID than w = 3 on both conditions (README)."""
    return {"label": DEFAULT_GUIDANCE} if "label" in conditions else DEFAULT_GUIDANCE


def walk_guidance(conditions, label: str, guidance: float | dict | None) -> float | dict:
    """--guidance, or the default for the conditions a walk gives: with --walk-label none there is no
    label to guide, so the default is w on the position (as for a model without a label)."""
    if guidance is not None:
        return guidance
    return default_guidance([name for name in conditions if not (name == "label" and label == "none")])


def parse_guidance(text: str) -> float | dict[str, float]:
    """--guidance: a bare number (every condition that weight) or a weight per condition, "label=1,pos=3"."""
    try:
        weights = float(text)
    except ValueError:
        weights = parse_condition_numbers(text)
    if weights == {}:  # "" or "," would mean no guidance at all, unasked
        raise argparse.ArgumentTypeError(f"expected a weight W (e.g. 3; 1: no guidance) or NAME=W pairs joined by "
                                         f"commas (e.g. label=3,pos=1), got {text!r}")
    if not all(np.isfinite(w) for w in (weights.values() if isinstance(weights, dict) else [weights])):
        raise argparse.ArgumentTypeError(f"every weight must be a finite number (1: no guidance, 3: the default), got {text!r}")
    return weights


def parse_guidance_interval(text: str) -> tuple[float, float]:
    """--guidance-interval: "LO,HI", the sigma range (LO, HI] of the guided steps (HI may be inf)."""
    try:
        interval = tuple(float(v) for v in text.split(","))
    except ValueError:
        interval = ()
    if len(interval) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI (e.g. 0.3,5), got {text!r}")
    try:
        check_guidance_interval(interval)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return interval


def parse_condition_numbers(text: str) -> dict[str, float]:
    """A number per condition, as flags take it: "label=1,pos=3" -> {"label": 1.0, "pos": 3.0} (in that order)."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER pairs joined by commas (e.g. label=1,pos=3), "
                                         f"got {text!r}") from None


# ---------------------------------------------------------------------------
# Conditions and generation
# ---------------------------------------------------------------------------
def reference_positions(run: Run, reference_images: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Method step 4: (R, H, W, C) uint8 references -> (R, d) standardised positions (conditions.positions).

    reference (R,): each image's index in the training data (its fitted position), -1 or None: a new image (UMAP transform).
    """
    return conditions.positions(reference_images, run.space, run.config["settings"], reference, run.device)


def request_conditions(run: Run, labels: np.ndarray, reference_images: np.ndarray,
                       reference: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The conditions of M requests (a class and a reference image each): (M,), (M, H, W, C) -> name -> (M, ...).

    Only the conditions the run's U-Net takes, computed by conditions.image_conditions as in training;
    reference (M,): each reference's index in the training data, -1 or None for a new image.
    """
    return conditions.image_conditions(list(run.config["unet"]["conditions"]), reference_images, labels, run.space,
                                       run.config["settings"], train_index=reference, device=run.device)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(run: Run, count: int, cond: dict[str, np.ndarray], sampler: dict, seed: int,
             noise_index: np.ndarray | None = None, row_seeds: np.ndarray | None = None) -> np.ndarray:
    """`count` images for the conditions cond (name -> (count, ...) arrays) -> uint8 (count, H, W, C).

    sampler = dict(name, steps, eta, guidance, batch_size, guidance_interval (optional: None or [lo, hi])):
    see ddpm.Diffusion.sample. noise_index (count,):
    rows with the same value share all their noise (the points of one walk); such rows stay in one batch.
    row_seeds (count,): each row's noise from its own seed instead (ddpm.RowNoise), the same whatever rows
    share its batch (the boundary search). Batches of 64 by default (128 rows with guidance): on a 2-core CPU about twice as fast per image as 500.
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
    """Row indices of each batch: runs of `size` rows, or of whole groups (consecutive equal values) up to `size`."""
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


def reference_of_each(labels: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random training image of each requested class: (M,) classes -> (M,) indices into the training data."""
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in classes])


def draw_references(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` random training images of every class, class by class: (K * per_class,)."""
    picks = choose_per_class(labels, per_class, seed, [str(k) for k in range(int(labels.max()) + 1)])
    return picks[np.argsort(labels[picks], kind="stable")]


def make_part(run: Run, labels: np.ndarray, ref_images: np.ndarray, reference: np.ndarray, sampler: dict,
              seed: int) -> dict:
    """Generate one sample per (label, reference image) request; keep what samples.npz stores."""
    cond = request_conditions(run, labels, ref_images, reference)
    return dict(images=generate(run, len(labels), cond, sampler, seed), labels=np.asarray(labels, np.int64),
                reference=np.asarray(reference, np.int64), cond=cond)


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------
def grid_png(rows: list[np.ndarray], pad: int = 2) -> bytes:
    """Tile rows of uint8 (n, H, W, C) images into one PNG (white gaps between images)."""
    h, w, c = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = image
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buffer, format="png")
    return buffer.getvalue()


def class_grid(run: Run, per_class: int, sampler: dict, seed: int) -> tuple[dict, bytes]:
    """The report's Figures 2-4: one row per class, all conditioned on one random reference of that class."""
    k = len(run.config["data"]["class_names"])
    refs = np.repeat(draw_references(run.labels, 1, seed), per_class)  # (K * per_class,)
    part = make_part(run, run.labels[refs], run.images[refs], refs, sampler, seed)
    return part, grid_png(list(part["images"].reshape(k, per_class, *part["images"].shape[1:])))


def reference_grid(run: Run, ref_images: np.ndarray, ref_labels: np.ndarray, refs: np.ndarray, per_reference: int,
                   sampler: dict, seed: int) -> tuple[dict, bytes]:
    """The report's Figures 5-6: per reference, a row of its image then `per_reference` samples."""
    part = make_part(run, np.repeat(ref_labels, per_reference), np.repeat(ref_images, per_reference, axis=0),
                     np.repeat(refs, per_reference), sampler, seed)
    rows = [np.concatenate([ref_images[i:i + 1], part["images"][i * per_reference:(i + 1) * per_reference]])
            for i in range(len(ref_images))]
    return part, grid_png(rows)


# ---------------------------------------------------------------------------
# Walks between two classes: the class-boundary samples that motivate the method
# ---------------------------------------------------------------------------
WALK_LABELS = ("fixed", "soft", "none")
WALK_PATHS = ("line", "features")


def walk_endpoints(run: Run, a: int, b: int, path: str, rng: np.random.Generator) -> tuple[int, int]:
    """Training images (indices) a walk goes between: a random class-A image and
    - path "line": a random class-B image (the straight line in UMAP space mostly runs off the data);
    - path "features": the class-B image nearest to it in the backbone's feature space (a pair across the boundary).
    """
    ref_a = int(rng.choice(np.flatnonzero(run.labels == a)))
    candidates = np.flatnonzero(run.labels == b)
    if path == "line":
        return ref_a, int(rng.choice(candidates))
    features = run.space.features  # (N, D) the training images' features, in training order
    distances = ((features[candidates] - features[ref_a]) ** 2).sum(axis=1)
    return ref_a, int(candidates[np.argmin(distances)])


def walk_conditions(run: Run, ref_a: int, ref_b: int, s: np.ndarray, label: str, row_label: int,
                    path: str) -> dict[str, np.ndarray]:
    """The conditions at the points s (P,) of a walk from training image ref_a to ref_b: name -> (P, ...).

    Float conditions (pos, a fork's own) move as c(s) = (1 - s) c_A + s c_B; with path "features" the
    position is instead UMAP's transform of the interpolated features (1 - s) f_A + s f_B, which lands
    among the training positions (transform places a point by its neighbours in the training data).
    The label: "fixed" keeps row_label, "soft" mixes the one-hot vectors (1 - s) e_A + s e_B (the report's
    soft-label alternative), "none" drops the label (the model without it). Any other integer condition (a
    fork's own) is not the label: it keeps image A's value in every mode.
    """
    refs = np.array([ref_a, ref_b])
    ends = request_conditions(run, run.labels[refs], run.images[refs], refs)  # name -> (2, ...)
    w = s.astype(np.float32)[:, None]  # (P, 1)
    cond = {}
    for name, value in ends.items():
        if value.dtype.kind == "f":
            cond[name] = ((1 - w) * value[0] + w * value[1]).astype(np.float32)  # (P, d)
        elif name != "label":
            cond[name] = np.full(len(s), value[0], dtype=value.dtype)  # (P,) image A's
        elif label == "soft":
            onehot = np.eye(run.config["unet"]["conditions"][name], dtype=np.float32)[value]  # (2, K)
            cond[name] = (1 - w) * onehot[0] + w * onehot[1]  # (P, K)
        elif label == "fixed":
            cond[name] = np.full(len(s), row_label, dtype=np.int64)
    if path == "features" and "pos" in cond:
        features = (1 - w) * run.space.features[ref_a] + w * run.space.features[ref_b]  # (P, D)
        cond["pos"] = run.space.standardize(run.space.transform(features)).astype(np.float32)
    return cond


def walks(run: Run, a: int, b: int, points: int, sampler: dict, seed: int, count: int = 1,
          label: str = "fixed", path: str = "line") -> dict:
    """`count` walks from class A to class B, each `points` images at s = 0 .. 1, generated together.

    label "fixed" makes two rows per walk, label A and label B; "soft" and "none" one. Every image of
    one walk (both rows) shares its starting and per-step noise, so along a walk only the conditions change.
    Returns a part whose walk (N,), s (N,) and endpoints (N, 2) say which walk, point and pair each image is.
    """
    rng = np.random.default_rng(seed)
    s = np.linspace(0, 1, points, dtype=np.float32)
    rows = []  # one walk row: its conditions, label, walk id and endpoints
    for walk in range(count):
        ref_a, ref_b = walk_endpoints(run, a, b, path, rng)
        for row_label in ((a, b) if label == "fixed" else (a,)):
            rows.append((walk_conditions(run, ref_a, ref_b, s, label, row_label, path), row_label, walk, (ref_a, ref_b)))
    cond = {name: np.concatenate([row[0][name] for row in rows]) for name in rows[0][0]}  # name -> (rows * P, ...)
    walk_of = np.repeat([row[2] for row in rows], points)
    return dict(images=generate(run, len(walk_of), cond, sampler, seed, noise_index=walk_of),
                labels=np.repeat([row[1] for row in rows], points).astype(np.int64),
                reference=np.full(len(walk_of), -1, np.int64), cond=cond, walk=walk_of, s=np.tile(s, len(rows)),
                endpoints=np.repeat(np.array([row[3] for row in rows], np.int64), points, axis=0))


def between_grid(run: Run, a: int, b: int, points: int, sampler: dict, seed: int, count: int = 1,
                 label: str = "fixed", path: str = "line") -> tuple[dict, bytes]:
    """`walks` drawn as a grid: a row per walk (and label), starting with image A and ending with image B."""
    part = walks(run, a, b, points, sampler, seed, count, label, path)
    rows = []
    for start in range(0, len(part["labels"]), points):
        ref_a, ref_b = part["endpoints"][start]
        rows.append(np.concatenate([run.images[[ref_a]], part["images"][start:start + points], run.images[[ref_b]]]))
    return part, grid_png(rows)


# What no walk has (dtype, value, shape of a row); prob and width: boundary samples only (boundary_samples).
WALK_FIELDS = dict(walk=(np.int64, -1, ()), s=(np.float32, np.nan, ()), endpoints=(np.int64, -1, (2,)),
                   prob=(np.float32, np.nan, (2,)), width=(np.float32, np.nan, ()))
BOUNDARY_FIELDS = ("guide_prob", "trusted")  # boundary samples only: each guide member's reading, the filter


def concatenate_parts(parts: list[dict]) -> dict:
    """Stack generated parts (images, labels, reference, cond, and the walk fields) into one."""
    out = dict(images=np.concatenate([p["images"] for p in parts]),
               labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
               reference=np.concatenate([p["reference"] for p in parts]).astype(np.int64),
               cond={name: stack_condition([p["cond"].get(name) for p in parts], [len(p["labels"]) for p in parts])
                     for name in dict.fromkeys(name for p in parts for name in p["cond"])})
    for field, (dtype, missing, shape) in WALK_FIELDS.items():
        out[field] = np.concatenate([np.asarray(p[field], dtype) if field in p
                                     else np.full((len(p["labels"]), *shape), missing, dtype) for p in parts])
    for field in BOUNDARY_FIELDS:  # kept where every part is a boundary part
        if all(field in p for p in parts):
            out[field] = np.concatenate([p[field] for p in parts])
    return out


def take_rows(part: dict, rows: np.ndarray) -> dict:
    """The images `rows` of a part, with every per-image array and condition (not `crossed`, which is per walk)."""
    out = {k: v[rows] for k, v in part.items() if isinstance(v, np.ndarray) and k != "crossed"}
    out["cond"] = {name: value[rows] for name, value in part["cond"].items()}
    return out


def stack_condition(values: list[np.ndarray | None], counts: list[int]) -> np.ndarray:
    """Concatenate one condition's values over parts of `counts` rows. A part without the condition (a walk
    that dropped the label) gets -1 (integers) or NaN (floats); where soft labels (M, K) meet class indices
    (N,), the indices become one-hot rows, so a call with a soft-label walk stores every label as a mix."""
    given = [v for v in values if v is not None]
    widths = {v.shape[1] for v in given if v.ndim == 2 and v.dtype.kind == "f"}
    if widths and any(v.ndim == 1 for v in given):
        given = [np.eye(max(widths), dtype=np.float32)[v] if v.ndim == 1 else v for v in given]
    like = given[0]
    missing = -1 if like.dtype.kind in "iu" else np.nan
    filled = iter(given)
    return np.concatenate([next(filled) if v is not None else np.full((n, *like.shape[1:]), missing, like.dtype)
                           for v, n in zip(values, counts)])


def samples_npz(part: dict) -> bytes:
    """samples.npz: images uint8 (N, H, W, C), labels (N,) the class each stands for, reference (N,)
    the training image whose conditions were asked for (-1: none or a user's file), cond_<name>
    for every condition the model saw (e.g. cond_label (N,), or (N, K) soft labels, cond_pos (N, 20); -1 or
    NaN where an image was made without it),
    and for walks: walk (N,) the walk each image is on (-1: none), s (N,) its place along it (0: A, 1: B)
    and endpoints (N, 2) the two training images the walk goes between; for boundary samples prob (N, 2) the
    guide's (P(A), P(B)) at s = s* and width (N,) the walk's transition width (NaN for other images); and, in
    a file of boundary samples only, guide_prob (N, M, 2) each guide member's (P(A), P(B)) at s* and trusted (N,)
    whether the sample passed `trusted`."""
    part = concatenate_parts([part])  # fills the walk fields of a part without walks
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=part["images"], labels=part["labels"], reference=part["reference"],
                        walk=part["walk"], s=part["s"], endpoints=part["endpoints"], prob=part["prob"],
                        width=part["width"], **{field: part[field] for field in BOUNDARY_FIELDS if field in part},
                        **{f"cond_{name}": value for name, value in part["cond"].items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Boundary samples: each walk's own crossing of the class boundary, found by a guide
# ---------------------------------------------------------------------------
# How a walk's conditions move (walk_conditions' label mode) and how it is guided, per method:
# "soft": soft labels (1 - s) e_A + s e_B, the label guided at w given the position;
# "position": the position alone (label dropped), guided at w; "compose": product composition of A and B
# (ddpm.Diffusion.composed_output), out(none) + w ((1 - s)(out(A) - out(none)) + s (out(B) - out(none))).
BOUNDARY_METHODS = ("soft", "position", "compose")
DEFAULT_BOUNDARY_METHOD = "soft"
BOUNDARY_LABEL_MODE = dict(soft="soft", position="none", compose="soft")
BOUNDARY_NEEDS = dict(soft="label", position="pos", compose="label")  # the condition each method moves
# The search: a coarse grid of BOUNDARY_GRID points (steps of 1/8), then bisection inside the first bracket
# where the guide's P(B) rises to 0.5, until |s* - crossing| <= tolerance: 4 halvings leave a bracket
# 1/8 / 2^4 = 1/128 wide, whose midpoint s* is within 1/256 of the crossing.
# Cost per walk that crosses: 9 + 4 + 1 (the image at s*) = 14 images; 9 for one that does not.
BOUNDARY_GRID, BOUNDARY_TOLERANCE = 9, 1 / 256
DEFAULT_BOUNDARY_N, DEFAULT_EVAL_N = 16, 1000  # --n without a value: --boundary, --eval
MAX_WALKS_PER_SAMPLE = 8  # --boundary tries up to 8 N walks for N trusted samples
# A found point is trusted (kept by --boundary) when the guide's members agree that it is ambiguous, each
# reading min(P(A), P(B)) >= metrics.AMBIGUOUS, and the guide sees A or B, nothing else: the members' mean
# P(A) + P(B) >= TRUST_MASS (a third class there is a wrong boundary). `trusted`.
TRUST_MASS = 0.9
WIDTH_LEVELS = (0.1, 0.9)  # the transition width: the s range over which P(B) goes from 0.1 to 0.9
GUIDE_FILE, GUIDE_SEEDS, GUIDE_STEPS = "guide.pt", 3, 300  # members, each train_classifier's default steps
EVALUATOR_SEED = 0  # train_classifier's default seed: the run's classifier.pt, which scores; never a guide's


def boundary_guide(run: Run, seed: int = 1, members: int = GUIDE_SEEDS, steps: int | None = None):
    """The guide of boundary_samples: `members` small classifiers (classifier.train_ensemble) trained on the
    run's training digits with seeds seed .. seed + members - 1 (never the evaluator's 0), mean softmax.

    steps: each member's training steps (None: GUIDE_STEPS). Kept in the run directory as guide.pt (atomically;
    reloaded with weights_only) for this run, seeds and steps.
    """
    seeds, steps = list(range(seed, seed + members)), GUIDE_STEPS if steps is None else steps
    if EVALUATOR_SEED in seeds or members < 1:
        raise ValueError(f"the guide's seeds {seeds} must not include the evaluator's seed {EVALUATOR_SEED}: "
                         "use seed >= 1")
    tag = f"{run.config['run_id']} steps={steps}"
    path = os.path.join(run.dir, GUIDE_FILE)
    if os.path.exists(path):
        try:
            guide = classifier.load_ensemble(path, run.device)
            if guide.seeds == seeds and guide.tag == tag:
                return guide
        except ValueError:
            pass  # a damaged guide.pt (ours: RUN_FILES) is trained again and replaced
    guide = classifier.train_ensemble(run.images, run.labels, seeds, len(run.config["data"]["class_names"]),
                                      steps=steps, device=run.device, tag=tag)
    classifier.save_ensemble(guide, path)
    return guide


def check_guide(guide, evaluators: list) -> None:
    """The guide must not be (or contain) a network that scores its samples: same weights is an error."""
    for evaluator in evaluators:
        if any(classifier.same_weights(member, evaluator) for member in getattr(guide, "members", [])):
            raise ValueError("the boundary guide holds the evaluator's weights: a point chosen by the classifier "
                             "that scores it says nothing; train the guide with other seeds (boundary_guide)")


def run_evaluator(run: Run) -> list:
    """The run's classifier.pt (what sample.py --eval scores with), where there is one."""
    path = os.path.join(run.dir, "classifier.pt")
    return [classifier.load_classifier(path, run.device)] if os.path.exists(path) else []


def check_boundary(run: Run, a: int, b: int, method: str) -> None:
    """--boundary A B and --boundary-method against the run: two different classes, a method it can run."""
    k = len(run.config["data"]["class_names"])
    for c in (a, b):
        if not 0 <= c < k:
            raise RunError(f"--boundary {a} {b}: class {c} does not exist; {run.dir} has classes 0..{k - 1}")
    if a == b:
        raise RunError(f"--boundary {a} {b}: a boundary lies between two different classes; give two")
    if method not in BOUNDARY_METHODS:
        raise RunError(f"--boundary-method {method}: unknown; choose one of {', '.join(BOUNDARY_METHODS)}")
    names = run.config["unet"]["conditions"]
    if BOUNDARY_NEEDS[method] not in names:
        others = [m for m in BOUNDARY_METHODS if BOUNDARY_NEEDS[m] in names]
        raise RunError(f"--boundary-method {method} moves the {BOUNDARY_NEEDS[method]} condition, and {run.dir} "
                       f"was trained without it (its conditions: {', '.join(names) or 'none'}); "
                       + (f"use --boundary-method {others[0]}" if others else "no method can walk this run"))


def method_guidance(method: str, guidance: float | dict | None) -> float | dict:
    """A method's guidance: None -> w = DEFAULT_GUIDANCE; a number w -> the method's form at weight w
    (soft: {"label": w}, position: {"pos": w}, compose: {"compose": w}); a dict is used as given."""
    if isinstance(guidance, dict):
        return guidance
    w = DEFAULT_GUIDANCE if guidance is None else float(guidance)
    return {dict(soft="label", position="pos", compose=COMPOSE)[method]: w}


def walk_seed(seed: int, walk: int) -> int:
    """The noise seed of walk `walk` of a call with `seed`: the same walk, the same noise, in any batch."""
    return int(np.random.SeedSequence([seed, walk]).generate_state(1)[0])


def boundary_endpoints(run: Run, a: int, b: int, seed: int, walk_ids: np.ndarray) -> np.ndarray:
    """(W, 2) training images walk i goes between: the i-th draw of walk_endpoints from rng(seed), path "line"."""
    rng = np.random.default_rng(seed)
    drawn = [walk_endpoints(run, a, b, "line", rng) for _ in range(int(walk_ids.max()) + 1)]
    return np.array(drawn, np.int64)[walk_ids]


@torch.no_grad()
def walk_images(run: Run, endpoints: np.ndarray, walk: np.ndarray, s: np.ndarray, method: str, a: int,
                sampler: dict, seed: int) -> tuple[np.ndarray, dict]:
    """Images at points s (M,) of walks walk (M,) (endpoints (W, 2) by walk id): uint8 (M, H, W, C), cond.

    Each row's noise comes from walk_seed(seed, its walk) (ddpm.RowNoise): a walk's image is a function of s
    alone, whichever other rows share its batch."""
    cond = {}
    for w in np.unique(walk):
        rows = np.flatnonzero(walk == w)
        part = walk_conditions(run, *endpoints[w], s[rows], BOUNDARY_LABEL_MODE[method], a, "line")
        for name, value in part.items():
            cond.setdefault(name, np.zeros((len(s), *value.shape[1:]), value.dtype))[rows] = value
    row_seeds = np.array([walk_seed(seed, int(w)) for w in walk], np.int64)  # (M,)
    return generate(run, len(s), cond, sampler, seed, row_seeds=row_seeds), cond


def find_crossings(prob_b, walks: int, grid: int = BOUNDARY_GRID, tolerance: float = BOUNDARY_TOLERANCE) -> dict:
    """Each walk's s* where P(B) first rises to 0.5 on the grid, for prob_b(walk (M,), s (M,)) -> (M,), batched
    across walks.

    A coarse grid s = 0, 1/(grid-1), .. 1 (one call, walks * grid rows), then bisection inside each walk's
    first bracket [s_i, s_i+1] with P(B)(s_i) < 0.5 <= P(B)(s_i+1) (one call per halving, one row per walk),
    keeping P(B)(lo) < 0.5 <= P(B)(hi), until the bracket is at most 2 tolerance wide; s* = its midpoint, so
    |s* - crossing| <= tolerance. A walk without such a bracket on the grid (P(B) below 0.5 at every grid point,
    at or above it at every one, or only falling through it) is not crossed (s* NaN); one at or above 0.5 at
    s = 0 that falls below and rises again is crossed where it rises.
    Returns s (W,), crossed (W,) bool, and points: per walk the (s, P(B)) pairs evaluated, for the width.
    """
    s_grid = np.linspace(0, 1, grid)
    p = np.asarray(prob_b(np.repeat(np.arange(walks), grid), np.tile(s_grid, walks)), np.float64).reshape(walks, grid)
    points = [list(zip(s_grid, p[w])) for w in range(walks)]
    up = (p[:, :-1] < 0.5) & (p[:, 1:] >= 0.5)  # (W, grid - 1): brackets of an upward crossing
    crossed = up.any(1)
    first = up.argmax(1)
    lo, hi = s_grid[first], s_grid[first + 1]  # (W,)
    live = np.flatnonzero(crossed)
    halvings = max(0, int(np.ceil(np.log2(1 / (grid - 1) / (2 * tolerance) - 1e-12))))
    for _ in range(halvings if len(live) else 0):
        mid = (lo[live] + hi[live]) / 2
        pm = np.asarray(prob_b(live, mid), np.float64)
        for w, sm, pw in zip(live, mid, pm):
            points[w].append((sm, pw))
        hi[live], lo[live] = np.where(pm >= 0.5, mid, hi[live]), np.where(pm >= 0.5, lo[live], mid)
    return dict(s=np.where(crossed, (lo + hi) / 2, np.nan), crossed=crossed, points=points)


def transition_width(points: list[tuple[float, float]], s_star: float, levels=WIDTH_LEVELS) -> float:
    """The s range over which P(B) goes from levels[0] to levels[1] around s*, by linear interpolation between
    the evaluated points: from the last point before s* at or below 0.1 to the first after it at or above 0.9.
    NaN where P(B) does not reach a level on its side (a walk that ends below 0.9)."""
    s, p = (np.array(v, np.float64) for v in zip(*sorted(points)))
    low = np.flatnonzero((s <= s_star) & (p <= levels[0]))
    high = np.flatnonzero((s >= s_star) & (p >= levels[1]))
    if not len(low) or not len(high):
        return float("nan")
    i, j = low[-1], high[0]
    s_low = s[i] + (levels[0] - p[i]) * (s[i + 1] - s[i]) / (p[i + 1] - p[i]) if p[i + 1] != p[i] else s[i]
    s_high = s[j - 1] + (levels[1] - p[j - 1]) * (s[j] - s[j - 1]) / (p[j] - p[j - 1]) if p[j] != p[j - 1] else s[j]
    return float(s_high - s_low)


def trusted(guide_prob: np.ndarray) -> np.ndarray:
    """guide_prob (N, M, 2): each guide member's (P(A), P(B)) at a found point -> (N,) bool: every member reads it
    as ambiguous (min(P(A), P(B)) >= metrics.AMBIGUOUS) and the members' mean P(A) + P(B) >= TRUST_MASS."""
    members_agree = guide_prob.min(axis=2).min(axis=1) >= metrics.AMBIGUOUS  # (N,)
    on_a_and_b = guide_prob.sum(axis=2).mean(axis=1) >= TRUST_MASS  # (N,)
    return members_agree & on_a_and_b


def boundary_samples(run: Run, a: int, b: int, walks: int, method: str = DEFAULT_BOUNDARY_METHOD, seed: int = 0,
                     guide=None, sampler: dict | None = None, tolerance: float = BOUNDARY_TOLERANCE,
                     first_walk: int = 0, evaluators: list | None = None, grid: int = BOUNDARY_GRID) -> dict:
    """Samples on the boundary between classes a and b: `walks` walks (ids first_walk ..) from a class-a to a
    class-b training image, each with one noise; for each, find_crossings' s* where the guide's P(b) = 0.5.

    guide: an object with .prob(images) -> (N, K) and .member_prob(images) -> (M, N, K) (classifier.Ensemble;
    None: boundary_guide(run)); never one of `evaluators` (None: the run's classifier.pt), which score the
    result. sampler: as generate's, guidance None or a number w for the method's own form (method_guidance).
    Returns a part with ONE row per walk that crossed: images, labels (= a), reference -1, cond at s*, walk,
    s (= s*), endpoints (N, 2), prob (N, 2) the guide's (P(a), P(b)) at s*, guide_prob (N, M, 2) each member's,
    trusted (N,) bool (`trusted`: what --boundary keeps), width (N,) (transition_width); and crossed (walks,)
    bool for every walk tried.
    """
    check_boundary(run, a, b, method)
    if walks < 1 or first_walk < 0:
        raise ValueError(f"boundary_samples needs walks >= 1 and first_walk >= 0, got {walks} and {first_walk}")
    guide = boundary_guide(run) if guide is None else guide
    check_guide(guide, run_evaluator(run) if evaluators is None else evaluators)
    sampler = {**dict(name=DEFAULT_SAMPLER, steps=DEFAULT_STEPS, eta=DEFAULT_ETA, guidance=None), **(sampler or {})}
    sampler["guidance"] = method_guidance(method, sampler["guidance"])
    ids = np.arange(first_walk, first_walk + walks)
    endpoints = np.zeros((ids[-1] + 1, 2), np.int64)
    endpoints[ids] = boundary_endpoints(run, a, b, seed, ids)

    def prob_b(walk, s):  # walk (M,) local index, s (M,) -> the guide's P(b) (M,)
        images, _ = walk_images(run, endpoints, ids[walk], np.asarray(s, np.float32), method, a, sampler, seed)
        return guide.prob(images)[:, b]

    found = find_crossings(prob_b, walks, grid, tolerance)
    live = np.flatnonzero(found["crossed"])
    s_star = found["s"][live].astype(np.float32)
    if len(live):
        images, cond = walk_images(run, endpoints, ids[live], s_star, method, a, sampler, seed)
        readings = guide.member_prob(images)  # (M, N, K)
        prob = readings.mean(axis=0)[:, [a, b]].astype(np.float32)  # (N, 2), = guide.prob
        guide_prob = readings[:, :, [a, b]].transpose(1, 0, 2).astype(np.float32)  # (N, M, 2)
    else:
        images, prob = np.zeros((0, *run.images.shape[1:]), np.uint8), np.zeros((0, 2), np.float32)
        guide_prob = np.zeros((0, len(getattr(guide, "members", [guide])), 2), np.float32)
        cond = walk_conditions(run, *endpoints[ids[0]], np.zeros(0, np.float32), BOUNDARY_LABEL_MODE[method], a,
                               "line")
    width = np.array([transition_width(found["points"][w] + [(s, p)], s) for w, s, p in
                      zip(live, s_star, prob[:, 1])], np.float32).reshape(-1)
    return dict(images=images, labels=np.full(len(live), a, np.int64), reference=np.full(len(live), -1, np.int64),
                cond=cond, walk=ids[live].astype(np.int64), s=s_star, endpoints=endpoints[ids[live]], prob=prob,
                guide_prob=guide_prob, trusted=trusted(guide_prob), width=width, crossed=found["crossed"],
                method=method, guidance=sampler["guidance"])


def boundary_grid(run: Run, part: dict) -> bytes:
    """boundary.png: a row per sample: image A, the found sample, image B."""
    rows = [np.stack([run.images[ref_a], image, run.images[ref_b]])
            for image, (ref_a, ref_b) in zip(part["images"], part["endpoints"])]
    return grid_png(rows)


# ---------------------------------------------------------------------------
# Metrics (metrics.py)
# ---------------------------------------------------------------------------
def held_out_images(run: Run) -> tuple[np.ndarray, str]:
    """The real images metrics compare against: the dataset's test split, never trained on (mnist-sample: its
    1,000 test digits; mnist: t10k; a folder: its test/ sub-folder). Without one, the training images, said so."""
    settings = run.config["settings"]
    try:
        images, _, _ = load_dataset(settings["data"], root=settings["root"], image_size=settings["image_size"],
                                    channels=settings["channels"], split="test")
        return images, f"the test split of {settings['data']} ({len(images)} images no model or evaluator trained on)"
    except ValueError as error:  # a folder without test/
        return run.images, f"the training images ({' '.join(str(error).split())}): not held out"


def evaluate(run: Run, n: int, sampler: dict, seed: int, references: dict | None,
             inception_weights: str | None) -> tuple[dict, dict]:
    """FID / IS / conditioning accuracy of n class-balanced samples (+ control of the reference samples).

    Each sample's request takes a different random training image of the
    requested class as its reference (a draw from p(conditions | class)).
    FID is against the held-out test images (`held_out_images`); the evaluating
    classifier trains on the run's training images only. Beside it: the noise
    floor (as many real training images scored the same way) and the
    memorisation check (each sample's distance to its nearest training image
    against the test images' own, in the classifier's features and in pixels).
    Returns (metrics, the evaluated samples).
    """
    k = len(run.config["data"]["class_names"])
    want = np.arange(n) % k  # class-balanced
    rng = np.random.default_rng(seed + 1)
    refs = reference_of_each(run.labels, want, rng)
    part = make_part(run, want, run.images[refs], refs, sampler, seed + 1)
    test_images, reference_text = held_out_images(run)

    net = metrics.load_feature_network("classifier", classifier_path=os.path.join(run.dir, "classifier.pt"),
                                       train_images=run.images, train_labels=run.labels, num_classes=k,
                                       device=run.device, run_id=run.config["run_id"])
    result = {"n": n, "fid_reference": reference_text,
              "classifier": metrics.evaluate_images(test_images, part["images"], want, net)}
    real_logits = net.logits(test_images)
    result["classifier"]["real_is_mean"], result["classifier"]["real_is_std"] = metrics.inception_score(
        real_logits, metrics.is_splits(len(real_logits)))
    floor = np.random.default_rng(seed + 2).choice(len(run.images), min(len(test_images), len(run.images)), replace=False)
    result["classifier"]["noise_floor_fid"] = metrics.evaluate_images(test_images, run.images[floor], None, net)["fid"]
    if test_images is not run.images:  # (without held-out images there is no baseline to compare with)
        result["memorisation"] = memorisation_check(run, part["images"], test_images, net)
    try:
        inception = metrics.load_feature_network("inception", weights=inception_weights, device=run.device)
        result["inception"] = metrics.evaluate_images(test_images, part["images"], None, inception)
    except WeightsUnavailableError as error:
        result["inception"] = f"skipped: {error}"
    if references is not None and run.space is not None:
        result["controllability"] = control(run, references)
    return result, part


def memorisation_check(run: Run, generated: np.ndarray, test_images: np.ndarray, net) -> dict:
    """metrics.memorisation in the evaluator's features and in pixels (scaled to [0, 1])."""
    pixels = lambda x: x.reshape(len(x), -1) / 255.0  # noqa: E731
    features = lambda x: net.features_and_logits(x)[0]  # noqa: E731
    return {space: metrics.memorisation(f(generated), f(run.images), f(test_images))
            for space, f in (("classifier_features", features), ("pixels", pixels))}


def control(run: Run, references: dict) -> dict:
    """Place the reference samples in the run's feature space and compare them with their references."""
    settings = run.config["settings"]
    gen_features = extract_features(references["images"], backbone=settings["backbone"], weights=settings["weights"],
                                    device=str(run.device), cache_dir=None)
    gen_pos = run.space.standardize(run.space.transform(gen_features))  # (M, d): new images, placed by transform
    per_reference = len(references["images"]) // len(references["ref_images"])
    ref_index = references["reference"][::per_reference]  # (R,) training indices (-1: the user's file)
    ref_pos = reference_positions(run, references["ref_images"], ref_index)  # (R, d): the positions asked for
    own = np.repeat(np.arange(len(ref_pos)), per_reference)
    return metrics.controllability(gen_pos, own, references["labels"], ref_pos, references["ref_labels"])


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # flags typed in full, as in train.py
    p.add_argument("run", help="a run directory written by train.py")
    p.add_argument("--out", required=True, help="where the PNGs, samples.npz and meta.json go")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                   help="ddim (Song et al.), dpm++2m (DPM-Solver++(2M), Lu et al.: eta 0 or 1) "
                   "or ddpm (Algorithm 2 of Ho et al., all T steps)")
    p.add_argument("--sampling-steps", type=int, default=DEFAULT_STEPS, help="steps of ddim and dpm++2m: network "
                   "calls per sample (with guidance each call has 2x the rows, 3x for e.g. label=3,pos=1)")
    p.add_argument("--eta", type=float, default=None, help="sampling noise: ddim takes [0, 1] "
                   "(0: deterministic, 1: DDPM's variance), dpm++2m 0 (ODE) or 1 (SDE); ddpm ignores it "
                   "(default: the sampler's own, ddim 0, dpm++2m 1; meta.json records the value used)")
    p.add_argument("--sampling-batch-size", type=int, default=64, help="images per network call (64: fastest per "
                   "image on a 2-core CPU; raise it on a GPU)")
    p.add_argument("--guidance", type=parse_guidance, default=None, metavar="W or NAME=W,...",
                   help="classifier-free guidance w >= 0 (1: none, one network call per step), or a weight per "
                   "condition, e.g. pos=1,label=3 (default: label=3, the label guided given the other conditions; "
                   "3 on all for a model without a label, or for a walk with --walk-label none)")
    p.add_argument("--guidance-interval", type=parse_guidance_interval, default=DEFAULT_GUIDANCE_INTERVAL,
                   metavar="LO,HI", help="guide only the steps whose noise level sigma_t = sqrt((1 - abar_t) / "
                   "abar_t) lies in (LO, HI] (Kynkaanniemi et al. 2024), the plain conditional model elsewhere; "
                   "HI may be inf (default: every step)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling noise and the draws of reference "
                   "images and walk endpoints (train.py's --seed seeds the training: initialisation, batches, noise)")
    p.add_argument("--grid-per-class", type=int, default=10, help="class grid: images per class")
    p.add_argument("--references", type=int, default=0, help="K reference images per class from the training data")
    p.add_argument("--reference-images", nargs="+", default=None, help="your own reference image files")
    p.add_argument("--reference-labels", nargs="+", type=int, default=None, help="their class indices")
    p.add_argument("--per-reference", type=int, default=10, help="images generated per reference")
    p.add_argument("--between", nargs=2, type=int, metavar=("A", "B"), help="walk from a class-A to a class-B reference")
    p.add_argument("--points", type=int, default=8, help="positions along the --between walk")
    p.add_argument("--walks", type=int, default=1, help="--between: how many walks (rows), each with its own pair")
    p.add_argument("--walk-label", default="fixed", choices=WALK_LABELS,
                   help="--between: the label along the walk: fixed (a row with label A, one with B), "
                   "soft (mixed from A to B, the report's alternative) or none (dropped: the position alone)")
    p.add_argument("--walk-path", default="line", choices=WALK_PATHS,
                   help="--between: line (a straight line between two random positions) or features "
                   "(nearest cross-class pair, features interpolated, placed by UMAP's transform)")
    p.add_argument("--boundary", nargs=2, type=int, metavar=("A", "B"),
                   help="boundary samples between classes A and B: per walk the point where a guide (not the "
                   "evaluator) reads P(B) = 0.5; writes boundary.png and samples.npz (with s*, walk, endpoints, prob)")
    p.add_argument("--boundary-method", default=DEFAULT_BOUNDARY_METHOD, metavar="|".join(BOUNDARY_METHODS),
                   help="--boundary: soft (soft labels), position (the position alone) or compose (product "
                   f"composition of A and B); default {DEFAULT_BOUNDARY_METHOD}")
    p.add_argument("--boundary-guidance", type=float, default=DEFAULT_GUIDANCE, metavar="W",
                   help="--boundary: the weight of the method's own guidance (soft: the label given the position; "
                   "position: the position; compose: the composition of A and B); --guidance does not apply there. "
                   f"Default {DEFAULT_GUIDANCE:g}")
    p.add_argument("--eval", action="store_true", help="also score --n class-balanced samples: metrics.json (FID, "
                   "IS, conditioning accuracy; control with --references) and eval_samples.npz (train.py --eval "
                   "runs this, with --references 2, at the end of training)")
    p.add_argument("--n", type=int, default=None, help=f"--eval: number of class-balanced samples (default "
                   f"{DEFAULT_EVAL_N}); --boundary: boundary samples, one per walk (default {DEFAULT_BOUNDARY_N})")
    p.add_argument("--inception-weights", default=None,
                   help="--eval: local Inception weights file for Inception FID/IS (else from the hub, or skipped)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 where the hardware runs it natively, fp16 on older CUDA GPUs, else fp32")
    for old, new in RENAMED.items():
        p.add_argument(old, action=Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


# Flags renamed so that a flag means one thing in every script (train.py's --steps and --per-class count
# optimizer steps and training images): the old spelling is a one-line error naming the new one.
RENAMED = {"--steps": "--sampling-steps", "--per-class": "--grid-per-class"}


class Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new, **kwargs):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        raise RunError(f"{option_string} is now {self.new} in sample.py (in train.py {option_string} means "
                       f"{'optimizer steps' if option_string == '--steps' else 'training images per class'})")


def check_args(args) -> None:
    """Every argument that can be checked without the run, before any work."""
    counts = dict(sampling_steps=args.sampling_steps, grid_per_class=args.grid_per_class,
                  per_reference=args.per_reference, points=args.points, walks=args.walks, n=args.n,
                  sampling_batch_size=args.sampling_batch_size)
    for name, value in counts.items():
        if value is not None and value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
    if args.references < 0:
        raise RunError(f"--references must be 0 (none) or a positive count, got {args.references}")
    if args.eta is not None and not 0 <= args.eta <= 1:  # None: the sampler's own (run_command)
        raise RunError(f"--eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's noise), got {args.eta}")
    weights = [] if args.guidance is None else list(args.guidance.values()) if isinstance(args.guidance, dict) else [args.guidance]
    if not all(np.isfinite(w) and w >= 0 for w in weights):  # NaN passes a bare `< 0` test, and makes black images
        raise RunError(f"--guidance weights must be finite and >= 0 (1: no guidance, 3: the default), got {args.guidance}")
    if not (np.isfinite(args.boundary_guidance) and args.boundary_guidance >= 0):
        raise RunError(f"--boundary-guidance must be finite and >= 0 (1: no guidance), got {args.boundary_guidance}")
    check_unused_flags(args)
    if args.references and args.reference_images:
        raise RunError("pass either --references K or --reference-images FILES, not both")
    if args.reference_images and (args.reference_labels is None or len(args.reference_labels) != len(args.reference_images)):
        raise RunError("give one --reference-labels value per --reference-images file")
    if args.boundary:
        others = [flag for flag, given in (("--between", args.between), ("--references", args.references),
                                           ("--reference-images", args.reference_images), ("--eval", args.eval)) if given]
        if others:
            raise RunError(f"--boundary writes its own samples.npz: run it without {', '.join(others)}")
    if args.boundary_method not in BOUNDARY_METHODS:
        raise RunError(f"--boundary-method {args.boundary_method}: unknown; choose one of {', '.join(BOUNDARY_METHODS)}")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        raise RunError(f"--inception-weights {args.inception_weights}: file not found")
    rundir.check_device(args.device)
    rundir.check_sample_out(args.out, output_names(args))


# Flags that act only with another flag: given without it (at another value than their default) they would be
# ignored, so they are refused. flag -> (the flags it needs, any of them).
NEEDS = {"boundary_method": ("boundary",), "boundary_guidance": ("boundary",), "points": ("between",),
         "walks": ("between",), "walk_label": ("between",), "walk_path": ("between",), "n": ("eval", "boundary"),
         "inception_weights": ("eval",), "per_reference": ("references", "reference_images"),
         "reference_labels": ("reference_images",)}
UNUSED_BY_BOUNDARY = ("guidance", "grid_per_class", "per_reference")  # --boundary makes only its own samples


def check_unused_flags(args) -> None:
    """A flag the chosen mode cannot honour is a one-line error naming it, never silently ignored."""
    defaults = build_parser()
    def given(name):
        return getattr(args, name) != defaults.get_default(name)
    for name, needs in NEEDS.items():
        if given(name) and not any(getattr(args, need) for need in needs):
            raise RunError(f"--{name.replace('_', '-')} acts only with {' or '.join('--' + n.replace('_', '-') for n in needs)}; "
                           "add it or leave the flag out")
    if args.boundary:
        for name in UNUSED_BY_BOUNDARY:
            if given(name):
                hint = ("; its weight is --boundary-guidance W" if name == "guidance" else "")
                raise RunError(f"--{name.replace('_', '-')} does not apply to --boundary, which guides and writes "
                               f"only its own samples{hint}")


def check_against_run(args, run: Run) -> None:
    """The arguments that depend on the run: classes, reference counts, steps."""
    k = len(run.config["data"]["class_names"])
    T = run.diffusion.num_timesteps
    if args.sampler != "ddpm" and args.sampling_steps > T:
        raise RunError(f"--sampling-steps must be at most the run's {T} timesteps, got {args.sampling_steps}")
    unknown = sorted(set(args.guidance) - set(run.config["unet"]["conditions"])) if isinstance(args.guidance, dict) else []
    if unknown:
        raise RunError(f"--guidance names {', '.join(unknown)}, which {run.dir} was not trained with "
                       f"(its conditions: {', '.join(run.config['unet']['conditions']) or 'none'})")
    if args.between and args.walk_path == "features" and run.space is None:
        raise RunError(f"--walk-path features walks through the run's feature space, and {run.dir} has none "
                       "(trained without pos): use --walk-path line")
    if args.between and args.walk_label != "fixed" and "label" not in run.config["unet"]["conditions"]:
        raise RunError(f"--walk-label {args.walk_label} changes the label along a walk, and {run.dir} was trained "
                       "without one: leave --walk-label at fixed")
    if args.sampler == "dpm++2m" and args.eta not in (0, 1, None):
        raise RunError(f"--eta must be 0 (ODE) or 1 (SDE) with --sampler dpm++2m, got {args.eta}")
    for flag, classes in (("--between", args.between), ("--reference-labels", args.reference_labels)):
        for c in classes or []:
            if not 0 <= c < k:
                raise RunError(f"{flag} {' '.join(map(str, classes))}: class {c} does not exist; "
                               f"{run.dir} has classes 0..{k - 1}")
    check_memory(args, run)
    if args.boundary:
        check_boundary(run, *args.boundary, args.boundary_method)
    fewest = int(np.bincount(run.labels, minlength=k).min())
    if args.references > fewest:
        raise RunError(f"--references {args.references} is more than the {fewest} training images of the smallest class")


def load_reference_files(run: Run, paths: list[str]) -> np.ndarray:
    """Image files (--reference-images) -> (R, H, W, C) uint8 at the run's image size and channels."""
    size, channels = run.model.image_size, run.model.image_channels
    pictures = [open_image(path).convert("L" if channels == 1 else "RGB").resize((size, size)) for path in paths]
    return np.stack([np.asarray(p).reshape(size, size, channels) for p in pictures])


IMAGE_COPIES, ACTIVATIONS = 4, 16  # check_memory's estimate of the bytes an image and a batch row cost


def output_names(args) -> list[str]:
    """The files this call writes in --out (meta.json lists them; rundir.check_sample_out checks them first)."""
    if args.boundary:
        return ["boundary.png", "meta.json", "samples.npz"]
    figures = ["class_grid.png"] + (["references.png"] if args.references or args.reference_images else [])
    figures += ["between.png"] if args.between else []
    return sorted([*figures, "samples.npz", "meta.json", *(["metrics.json", "eval_samples.npz"] if args.eval else [])])


def check_memory(args, run: Run) -> None:
    """Each count-like request against the memory this machine has now (rundir.check_memory), before any work.

    An image held costs about IMAGE_COPIES copies of its uint8 pixels (the
    images, their concatenation, samples.npz, metrics' batches) and its
    conditions; a row in a network batch about ACTIVATIONS float32 maps of the
    U-Net's width (twice, with guidance).
    """
    k, unet = len(run.config["data"]["class_names"]), run.config["unet"]
    h = w = unet["image_size"]
    image = IMAGE_COPIES * h * w * unet["image_channels"] + 8 * sum(max(1, int(size)) for size in unet["conditions"].values()) + 64
    refs = k * args.references + len(args.reference_images or [])
    refs_flag = f"--references {args.references}" if args.references else "--reference-images"
    walk_rows = (2 if args.walk_label == "fixed" else 1) * args.walks if args.between else 0
    counts = {f"--grid-per-class {args.grid_per_class}": k * args.grid_per_class,  # flag -> images held at once
              (f"--per-reference {args.per_reference}" if args.per_reference > refs else refs_flag):
                  refs * args.per_reference,
              (f"--points {args.points}" if args.points > walk_rows else f"--walks {args.walks}"):
                  walk_rows * args.points,
              # --boundary: a grid per walk, up to MAX_WALKS_PER_SAMPLE walks per sample in one round
              f"--n {args.n}": (args.n or 0) * (MAX_WALKS_PER_SAMPLE * BOUNDARY_GRID if args.boundary else 1)}
    requests = {flag: count * image for flag, count in counts.items()}
    batch = min(args.sampling_batch_size, max(counts.values()))  # a batch never holds more rows than the request
    requests[f"--sampling-batch-size {args.sampling_batch_size}"] = 2 * ACTIVATIONS * unet["base_channels"] * h * w * 4 * batch
    rundir.check_memory(requests)


def run_command(args) -> dict:
    args.eta = SAMPLER_ETA[args.sampler] if args.eta is None else args.eta  # no --eta: the sampler's own
    check_args(args)
    run = load_run(args.run, args.device, args.precision)
    check_against_run(args, run)
    if args.boundary:
        return boundary_command(args, run)
    ref_images = load_reference_files(run, args.reference_images) if args.reference_images else None
    names = run.config["unet"]["conditions"]
    guidance = default_guidance(names) if args.guidance is None else args.guidance
    sampler = dict(name=args.sampler, steps=args.sampling_steps, eta=args.eta, guidance=guidance,
                   batch_size=args.sampling_batch_size, guidance_interval=args.guidance_interval)
    walk_sampler = dict(sampler, guidance=walk_guidance(names, args.walk_label, args.guidance))  # --between

    # Every image first, in memory; the files at the end.
    part, png = class_grid(run, args.grid_per_class, sampler, args.seed)
    parts, files, references = [part], {"class_grid.png": png}, None
    if args.references or args.reference_images:
        if ref_images is None:
            refs = draw_references(run.labels, args.references, args.seed)
            ref_images, ref_labels = run.images[refs], run.labels[refs]
        else:
            refs, ref_labels = np.full(len(ref_images), -1), np.asarray(args.reference_labels, np.int64)
        part, files["references.png"] = reference_grid(run, ref_images, ref_labels, refs, args.per_reference,
                                                       sampler, args.seed)
        parts.append(part)
        references = dict(part, ref_images=ref_images, ref_labels=ref_labels)
    if args.between:
        part, files["between.png"] = between_grid(run, *args.between, args.points, walk_sampler, args.seed,
                                                  args.walks, args.walk_label, args.walk_path)
        parts.append(part)
    files["samples.npz"] = samples_npz(concatenate_parts(parts))
    written = sorted([*files, "meta.json", *(["metrics.json", "eval_samples.npz"] if args.eval else [])])
    meta = dict(vars(args), guidance=guidance, walk_guidance=walk_sampler["guidance"] if args.between else None,
                written_by="sample.py", files=written, conditions=sorted(names),
                class_names=run.config["data"]["class_names"], run_id=run.config["run_id"])
    files["meta.json"] = json.dumps(meta, indent=2).encode()

    result = {}
    if args.eval:
        result, evaluated = evaluate(run, args.n or DEFAULT_EVAL_N, sampler, args.seed, references, args.inception_weights)
        result["settings"] = meta
        files["metrics.json"] = json.dumps(result, indent=2).encode()
        files["eval_samples.npz"] = samples_npz(evaluated)
    rundir.write_all_or_none(args.out, files)
    if args.eval:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return result


def walks_to_try(wanted: int, kept: int, tried: int) -> int:
    """The next round's walks for `wanted` more trusted samples: as many as the rate so far says (at first one
    per sample), never more than MAX_WALKS_PER_SAMPLE per sample."""
    rate = max(kept / tried, 1 / MAX_WALKS_PER_SAMPLE) if tried else 1.0
    return int(np.ceil(wanted / rate))


def trusted_boundary_samples(run: Run, a: int, b: int, n: int, method: str = DEFAULT_BOUNDARY_METHOD,
                             seed: int = 0, guide=None, sampler: dict | None = None) -> tuple[dict, dict]:
    """Up to n trusted boundary samples (`trusted`), from rounds of boundary_samples' walks (ids 0, 1, ..), at
    most MAX_WALKS_PER_SAMPLE * n walks. Returns the part of the first n trusted samples and the counts:
    tried (walks), crossed (walks whose guide crossed), trusted (found points that passed), guidance (used)."""
    guide = boundary_guide(run) if guide is None else guide
    parts, tried, kept, budget = [], 0, 0, MAX_WALKS_PER_SAMPLE * n
    while kept < n and tried < budget:
        walks = min(budget - tried, walks_to_try(n - kept, kept, tried))
        parts.append(boundary_samples(run, a, b, walks, method, seed, guide, sampler, first_walk=tried))
        tried, kept = tried + walks, kept + int(parts[-1]["trusted"].sum())
    found = concatenate_parts([p for p in parts if len(p["walk"])] or parts[:1])
    counts = dict(tried=tried, crossed=len(found["walk"]), trusted=kept, guidance=parts[0]["guidance"])
    return take_rows(found, np.flatnonzero(found["trusted"])[:n]), counts


def boundary_command(args, run: Run) -> dict:
    """--boundary A B: --n trusted boundary samples (trusted_boundary_samples); boundary.png, samples.npz and
    meta.json. Fewer than --n is a note; none is an error."""
    a, b = args.boundary
    n = args.n or DEFAULT_BOUNDARY_N
    sampler = dict(name=args.sampler, steps=args.sampling_steps, eta=args.eta, guidance=args.boundary_guidance,
                   batch_size=args.sampling_batch_size, guidance_interval=args.guidance_interval)
    guide = boundary_guide(run)
    part, counts = trusted_boundary_samples(run, a, b, n, args.boundary_method, args.seed, guide, sampler)
    tried, crossed, kept = counts["tried"], counts["crossed"], counts["trusted"]
    if not kept:
        raise RunError(f"--boundary {a} {b}: none of {tried} walks gave a trusted sample ({crossed} crossed the "
                       f"guide's P({b}) = 0.5, none where all its members read it as ambiguous and as {a} or {b}); "
                       "try another --boundary-method or --boundary-guidance")
    if kept < n:
        print(f"note: {kept} trusted boundary samples in {tried} walks ({crossed} crossed), not {n}", file=sys.stderr)
    files = {"boundary.png": boundary_grid(run, part), "samples.npz": samples_npz(part)}
    meta = dict(vars(args), n=n, guidance=counts["guidance"], boundary_method=args.boundary_method,
                boundary=dict(tried=tried, crossed=crossed, trusted=kept, written=len(part["images"]),
                              grid=BOUNDARY_GRID, tolerance=BOUNDARY_TOLERANCE, guide_seeds=guide.seeds,
                              trust=dict(member_min=metrics.AMBIGUOUS, mass=TRUST_MASS)),
                written_by="sample.py", files=sorted([*files, "meta.json"]),
                conditions=sorted(run.config["unet"]["conditions"]), class_names=run.config["data"]["class_names"],
                run_id=run.config["run_id"])
    files["meta.json"] = json.dumps(meta, indent=2).encode()
    rundir.write_all_or_none(args.out, files)
    return meta


def main(argv: list[str] | None = None) -> dict:
    try:
        return run_command(build_parser().parse_args(argv))
    except (RunError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        sys.exit(f"sample.py: {' '.join(str(error).split())}")
    except KeyboardInterrupt:
        sys.exit("sample.py: interrupted; --out is as it was (sample.py writes its files only at the end)")


if __name__ == "__main__":
    main()
