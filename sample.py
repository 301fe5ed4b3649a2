"""Generate images from a trained run: class grids, reference control, class boundaries, metrics.

    python sample.py runs/quick --out runs/quick/grid                    # class grid (Figs 2-4)
    python sample.py runs/quick --out DIR --references 2                 # reference control (Figs 5-6)
    python sample.py runs/quick --out DIR --between 4 9                  # a walk from a 4 to a 9
    python sample.py runs/quick --out DIR --references 2 --eval          # + metrics.json

The method's generation step: take a reference image, compute its
conditions (its class; its position: features, then the fitted UMAP's
`transform`) and sample from the model with them. Every request here is
"a class and a reference image": the class grid draws one training image
per class as the reference (the report's protocol), `--references K` draws
K per class and shows each at the left of its row, `--between A B` walks
the conditions from a class-A training image to a class-B one (the
class-boundary samples that motivate the method; `walks`). A model that does
not take a condition simply ignores it.

The sampler is DPM-Solver++(2M) (Lu et al. 2022) with `--sampling-steps` steps and
`--eta` 1 (its SDE form; 0: the ODE), or DDIM (Song et al. 2021), or
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

import conditions
import metrics
import rundir
from data import choose_per_class, load_dataset, open_image, write_atomically
from ddpm import SAMPLERS, Diffusion
from features import FeatureSpace, WeightsUnavailableError, extract_features, pick_device
from rundir import SAMPLE_FILES, RunError
from unet import UNet

# The sampler a user gets without flags: DPM-Solver++(2M), SDE form (eta 1), 10 steps. `python bench.py sampler`
# compares samplers at guidance 3 on both conditions (not this default guidance, the label alone): there 10 of these
# steps matched DDIM with 25 (docs/SPEED.md).
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_ETA, DEFAULT_GUIDANCE = "dpm++2m", 10, 1.0, 3.0
# ... with that guidance weight on the label alone, given the other conditions (default_guidance; README).


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
    if not all(np.isfinite(w) for w in (weights.values() if isinstance(weights, dict) else [weights])):
        raise argparse.ArgumentTypeError(f"every weight must be a finite number (1: no guidance, 3: the default), got {text!r}")
    return weights


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
             noise_index: np.ndarray | None = None) -> np.ndarray:
    """`count` images for the conditions cond (name -> (count, ...) arrays) -> uint8 (count, H, W, C).

    sampler = dict(name, steps, eta, guidance, batch_size): see ddpm.Diffusion.sample. noise_index (count,):
    rows with the same value share all their noise (the points of one walk); such rows stay in one batch.
    Batches of 64 by default (128 rows with guidance): on a 2-core CPU about twice as fast per image as 500.
    """
    device = run.device
    generator = torch.Generator(device).manual_seed(seed)
    shape = (run.model.image_channels, run.model.image_size, run.model.image_size)
    out = []
    for rows in tqdm(batches(count, sampler.get("batch_size", 64), noise_index), desc=f"sampling {count}",
                     unit="batch", leave=False, disable=None):
        part = {name: torch.as_tensor(value[rows], device=device) for name, value in cond.items()}
        index = None if noise_index is None else torch.as_tensor(np.unique(noise_index[rows], return_inverse=True)[1])
        with autocast(device, run.precision):
            x = run.diffusion.sample(run.model, (len(rows), *shape), cond=part, steps=sampler["steps"],
                                     eta=sampler["eta"], guidance=sampler["guidance"], generator=generator,
                                     device=device, sampler=sampler["name"], noise_index=index)
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
    Integer conditions (label): "fixed" keeps row_label, "soft" mixes the one-hot vectors
    (1 - s) e_A + s e_B (the report's soft-label alternative), "none" drops the label (the model without it).
    """
    refs = np.array([ref_a, ref_b])
    ends = request_conditions(run, run.labels[refs], run.images[refs], refs)  # name -> (2, ...)
    w = s.astype(np.float32)[:, None]  # (P, 1)
    cond = {}
    for name, value in ends.items():
        if value.dtype.kind == "f":
            cond[name] = ((1 - w) * value[0] + w * value[1]).astype(np.float32)  # (P, d)
        elif label == "soft":
            onehot = np.eye(run.config["unet"]["conditions"][name], dtype=np.float32)[value]  # (2, K)
            cond[name] = (1 - w) * onehot[0] + w * onehot[1]  # (P, K)
        elif label == "fixed":
            cond[name] = np.full(len(s), row_label if name == "label" else value[0], dtype=np.int64)
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


WALK_FIELDS = dict(walk=(np.int64, -1), s=(np.float32, np.nan), endpoints=(np.int64, -1))  # what no walk has


def concatenate_parts(parts: list[dict]) -> dict:
    """Stack generated parts (images, labels, reference, cond, and the walk fields) into one."""
    out = dict(images=np.concatenate([p["images"] for p in parts]),
               labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
               reference=np.concatenate([p["reference"] for p in parts]).astype(np.int64),
               cond={name: stack_condition([p["cond"].get(name) for p in parts], [len(p["labels"]) for p in parts])
                     for name in dict.fromkeys(name for p in parts for name in p["cond"])})
    for field, (dtype, missing) in WALK_FIELDS.items():
        shape = (2,) if field == "endpoints" else ()
        out[field] = np.concatenate([np.asarray(p[field], dtype) if field in p
                                     else np.full((len(p["labels"]), *shape), missing, dtype) for p in parts])
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
    and endpoints (N, 2) the two training images the walk goes between."""
    part = concatenate_parts([part])  # fills the walk fields of a part without walks
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=part["images"], labels=part["labels"], reference=part["reference"],
                        walk=part["walk"], s=part["s"], endpoints=part["endpoints"],
                        **{f"cond_{name}": value for name, value in part["cond"].items()})
    return buffer.getvalue()


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
                                       device=run.device)
    result = {"n": n, "fid_reference": reference_text,
              "classifier": metrics.evaluate_images(test_images, part["images"], want, net)}
    result["classifier"]["real_is_mean"], result["classifier"]["real_is_std"] = metrics.inception_score(net.logits(test_images))
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory written by train.py")
    p.add_argument("--out", required=True, help="where the PNGs, samples.npz and meta.json go")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                   help="ddim (Song et al.), dpm++2m (DPM-Solver++(2M), Lu et al.: eta 0 or 1) "
                   "or ddpm (Algorithm 2 of Ho et al., all T steps)")
    p.add_argument("--sampling-steps", type=int, default=DEFAULT_STEPS, help="steps of ddim and dpm++2m: network "
                   "calls per sample (with guidance each call has 2x the rows, 3x for e.g. label=3,pos=1)")
    p.add_argument("--eta", type=float, default=DEFAULT_ETA, help="sampling noise: ddim takes [0, 1] "
                   "(0: deterministic, 1: DDPM's variance), dpm++2m 0 (ODE) or 1 (SDE)")
    p.add_argument("--sampling-batch-size", type=int, default=64, help="images per network call (64: fastest per "
                   "image on a 2-core CPU; raise it on a GPU)")
    p.add_argument("--guidance", type=parse_guidance, default=None, metavar="W or NAME=W,...",
                   help="classifier-free guidance w >= 0 (1: none, one network call per step), or a weight per "
                   "condition, e.g. pos=1,label=3 (default: label=3, the label guided given the other conditions; "
                   "3 on all for a model without a label, or for a walk with --walk-label none)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--eval", action="store_true", help="also write metrics.json and eval_samples.npz")
    p.add_argument("--n", type=int, default=1000, help="--eval: number of class-balanced samples")
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
        if value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
    if args.references < 0:
        raise RunError(f"--references must be 0 (none) or a positive count, got {args.references}")
    if not 0 <= args.eta <= 1:
        raise RunError(f"--eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's noise), got {args.eta}")
    weights = [] if args.guidance is None else list(args.guidance.values()) if isinstance(args.guidance, dict) else [args.guidance]
    if not all(np.isfinite(w) and w >= 0 for w in weights):  # NaN passes a bare `< 0` test, and makes black images
        raise RunError(f"--guidance weights must be finite and >= 0 (1: no guidance, 3: the default), got {args.guidance}")
    if args.references and args.reference_images:
        raise RunError("pass either --references K or --reference-images FILES, not both")
    if args.reference_images and (args.reference_labels is None or len(args.reference_labels) != len(args.reference_images)):
        raise RunError("give one --reference-labels value per --reference-images file")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        raise RunError(f"--inception-weights {args.inception_weights}: file not found")
    rundir.check_device(args.device)
    check_out_dir(args.out)


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
    if args.sampler == "dpm++2m" and args.eta not in (0, 1):
        raise RunError(f"--eta must be 0 (ODE) or 1 (SDE) with --sampler dpm++2m, got {args.eta}")
    for flag, classes in (("--between", args.between), ("--reference-labels", args.reference_labels)):
        for c in classes or []:
            if not 0 <= c < k:
                raise RunError(f"{flag} {' '.join(map(str, classes))}: class {c} does not exist; "
                               f"{run.dir} has classes 0..{k - 1}")
    fewest = int(np.bincount(run.labels, minlength=k).min())
    if args.references > fewest:
        raise RunError(f"--references {args.references} is more than the {fewest} training images of the smallest class")


def load_reference_files(run: Run, paths: list[str]) -> np.ndarray:
    """Image files (--reference-images) -> (R, H, W, C) uint8 at the run's image size and channels."""
    size, channels = run.model.image_size, run.model.image_channels
    pictures = [open_image(path).convert("L" if channels == 1 else "RGB").resize((size, size)) for path in paths]
    return np.stack([np.asarray(p).reshape(size, size, channels) for p in pictures])


def check_out_dir(out: str) -> None:
    """--out must be a writable folder (or one that can be made) holding no file of ours that sample.py did not write."""
    rundir.check_out(out)
    clashes = [name for name in SAMPLE_FILES if os.path.lexists(os.path.join(out, name))]
    if clashes and not rundir.holds_sample_outputs(out):
        raise RunError(f"--out {out} holds {clashes[0]}, which sample.py did not write; choose another --out")


def write_outputs(out: str, files: dict[str, bytes]) -> None:
    """Write this call's files, each atomically, then remove the earlier call's outputs this one does not remake.

    Only files an earlier sample.py call listed in its meta.json are removed (an old between.png would not match
    the new samples.npz); anything else in --out stays. A full disk is a one-line RunError, and a folder this
    call made is removed again with what it wrote there.
    """
    made = not os.path.isdir(out)
    stale = [name for name in earlier_outputs(out) if name not in files and name in SAMPLE_FILES]
    os.makedirs(out, exist_ok=True)
    written = []
    try:
        for name, content in files.items():
            write_atomically(os.path.join(out, name), lambda f: f.write(content))
            written.append(name)
    except OSError as error:
        if made:
            for name in written:
                os.remove(os.path.join(out, name))
            try:
                os.rmdir(out)
            except OSError:  # something else appeared in it meanwhile: it stays
                pass
        if not rundir.disk_full(error):
            raise
        raise RunError(f"the disk is full: --out {out} could not be written ({len(written)} of {len(files)} files "
                       f"done{'; the folder is removed again' if made else ''}); free some space and run it again") from None
    for name in stale:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def earlier_outputs(out: str) -> list[str]:
    """The files an earlier sample.py call wrote in --out, as its meta.json lists them ([] if none or unreadable)."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return []
    files = meta.get("files") if isinstance(meta, dict) and meta.get("written_by") == "sample.py" else None
    return [name for name in files if isinstance(name, str)] if isinstance(files, list) else []


def run_command(args) -> dict:
    check_args(args)
    run = load_run(args.run, args.device, args.precision)
    check_against_run(args, run)
    ref_images = load_reference_files(run, args.reference_images) if args.reference_images else None
    names = run.config["unet"]["conditions"]
    guidance = default_guidance(names) if args.guidance is None else args.guidance
    sampler = dict(name=args.sampler, steps=args.sampling_steps, eta=args.eta, guidance=guidance,
                   batch_size=args.sampling_batch_size)
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
        result, evaluated = evaluate(run, args.n, sampler, args.seed, references, args.inception_weights)
        result["settings"] = meta
        files["metrics.json"] = json.dumps(result, indent=2).encode()
        files["eval_samples.npz"] = samples_npz(evaluated)
    write_outputs(args.out, files)
    if args.eval:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    try:
        return run_command(build_parser().parse_args(argv))
    except (RunError, ValueError, FileNotFoundError, WeightsUnavailableError) as error:
        sys.exit(f"sample.py: {' '.join(str(error).split())}")
    except KeyboardInterrupt:
        sys.exit("sample.py: interrupted; --out is as it was (sample.py writes its files only at the end)")


if __name__ == "__main__":
    main()
