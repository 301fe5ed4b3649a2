"""Generate images from a trained run: class grids, reference control, class boundaries, metrics.

    python sample.py runs/quick --out runs/quick/grid                    # class grid (Figs 2-4)
    python sample.py runs/quick --out DIR --references 2                 # reference control (Figs 5-6)
    python sample.py runs/quick --out DIR --between 4 9                  # a walk from a 4 to a 9
    python sample.py runs/quick --out DIR --references 2 --eval          # + metrics.json

PAPER.md, Method step 4: to generate, take a reference image, compute its
conditions (its class; its position: features, then the fitted UMAP's
`transform`) and sample from the model with them. Every request here is
"a class and a reference image": the class grid draws one training image
per class as the reference (the report's protocol), `--references K` draws
K per class and shows each at the left of its row, `--between A B` walks
the conditions from a class-A reference to a class-B reference, generating
with label A and with label B (the class-boundary samples that motivate
the method). A model that does not take a condition simply ignores it.

The sampler is DDIM (Song et al. 2021) with `--steps` steps, `--eta` noise
(1 matches DDPM's posterior variance; 0 is deterministic) and classifier-free
guidance `--guidance w`; `--sampler ddpm` is Algorithm 2 of Ho et al. 2020 with
all T steps. Every call writes, in --out, a PNG per figure, `samples.npz` and
`meta.json` (and `metrics.json`, `eval_samples.npz` with --eval), all at the
end, after every argument has been checked and every image made.

This file also reads a run directory back (`load_run`); train.py imports it
for its progress grids and `--eval`, never the other way round.
"""
import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import metrics
from data import choose_per_class, load_dataset, open_image, write_atomically
from ddpm import Diffusion, beta_schedule
from features import FeatureSpace, WeightsUnavailableError, extract_features, pick_device
from unet import UNet

CONFIG_FORMAT = "fpdiff-run-2"
CHECKPOINT_FORMAT = "fpdiff-checkpoint-2"
# Everything a sample.py call may write into --out (and the only files it ever replaces there).
SAMPLE_FILES = ("class_grid.png", "references.png", "between.png", "samples.npz", "meta.json",
                "metrics.json", "eval_samples.npz")
# The sampler a user gets without flags: DDIM 25 steps, eta 1, guidance 3
# (the best digits within two minutes for 1,000 samples on a 2-core CPU; README).
DEFAULT_STEPS, DEFAULT_ETA, DEFAULT_GUIDANCE = 25, 1.0, 3.0


class RunError(Exception):
    """A problem with the user's settings or files: printed as one line, no traceback."""


# ---------------------------------------------------------------------------
# A run on disk: config.json, checkpoint.pt, space.npz
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


def read_config(run_dir: str) -> dict:
    """config.json of a run written by train.py; anything else is a one-line error."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise RunError(f"{path} not found: {run_dir} is not a run directory (train one: python train.py --out {run_dir})")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"cannot read {path} ({type(error).__name__}); is {run_dir} a run made by train.py?") from error
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise RunError(f"{path} was not written by this version of train.py (format {CONFIG_FORMAT} expected)")
    return config


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with weights_only=True (no code runs); anything else is a one-line error."""
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


def check_belongs(path: str, run_id: str, expected: str) -> None:
    """A checkpoint or space carries its run's id: one from another run is refused, naming the file."""
    if run_id != expected:
        raise RunError(f"{path} belongs to another run (run id {run_id or 'none'}, this run is {expected}); "
                       "copy back this run's own file, or start afresh with --overwrite")


def build_unet(config: dict) -> UNet:
    """The U-Net of a run, from the arguments stored in its config alone."""
    return UNet(**config["unet"])


def data_digest(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> str:
    """A fingerprint of the training data: the run's images, labels and class names."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(images.shape), class_names]).encode())
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()[:16]


def load_training_images(settings: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, H, W, C) uint8 images, (N,) labels and class names, as a run's settings say."""
    return load_dataset(settings["data"], root=settings["root"], per_class=settings["per_class"],
                        image_size=settings["image_size"], seed=settings["seed"], channels=settings["channels"])


def load_run(run_dir: str, device: str | None = None, precision: str = "auto") -> Run:
    """The EMA model, diffusion, config, feature space and training data of a run (no UMAP refit)."""
    config = read_config(run_dir)
    checkpoint = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    check_belongs(os.path.join(run_dir, "checkpoint.pt"), checkpoint.get("run_id", ""), config["run_id"])
    model = build_unet(config)
    try:
        model.load_state_dict(checkpoint["ema"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{run_dir}/checkpoint.pt does not fit the U-Net in its config.json") from error
    space = None
    if config["space"]:  # the run fitted a feature space (its conditions need one)
        space_path = os.path.join(run_dir, config["space"])
        space = FeatureSpace.load(space_path)
        check_belongs(space_path, space.run_id, config["run_id"])
    images, labels, class_names = load_training_images(config["settings"])
    if data_digest(images, labels, class_names) != config["data"]["digest"]:
        raise RunError(f"the training data of {run_dir} ({config['settings']['data']}) changed since it was trained; "
                       "sampling needs the same images (references and metrics come from them)")
    device = pick_device(device)
    model.to(device).eval()
    diffusion = Diffusion(beta_schedule(config["settings"]["schedule"], config["settings"]["timesteps"]))
    return Run(run_dir, config, model, diffusion, space, images, labels, resolve_precision(precision, device))


# ---------------------------------------------------------------------------
# Running the network: mixed precision where the hardware has it
# ---------------------------------------------------------------------------
PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 matrix maths natively? (CUDA with bf16; a CPU with AVX512-BF16 or AMX.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """--precision -> the autocast dtype (None: plain fp32). auto: bf16 where native_bf16, else fp32."""
    if name not in PRECISIONS:
        raise RunError(f"unknown --precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast for the network's matrix maths; weights, loss and sampler stay fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# ---------------------------------------------------------------------------
# Conditions and generation
# ---------------------------------------------------------------------------
def reference_positions(run: Run, reference_images: np.ndarray) -> np.ndarray:
    """Method step 4: (R, H, W, C) uint8 references -> (R, d) standardised positions via UMAP transform."""
    settings = run.config["settings"]
    features = extract_features(reference_images, backbone=settings["backbone"], weights=settings["weights"],
                                cache_dir=os.path.join(settings["root"], "cache"))
    return run.space.standardize(run.space.transform(features))


def request_conditions(run: Run, labels: np.ndarray, reference_images: np.ndarray) -> dict[str, np.ndarray]:
    """The conditions of M requests (a class and a reference image each): (M,), (M, H, W, C) -> name -> (M, ...).

    Only the conditions the run's U-Net takes. A new condition is computed here
    for sampling, the way train.training_conditions computes it for training.
    """
    names = run.config["unet"]["conditions"]
    cond = {}
    if "label" in names:
        cond["label"] = np.asarray(labels, dtype=np.int64)  # (M,)
    if "pos" in names:
        cond["pos"] = reference_positions(run, reference_images)  # (M, d)
    return cond


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(run: Run, count: int, cond: dict[str, np.ndarray], sampler: dict, seed: int,
             batch_size: int = 64) -> np.ndarray:
    """`count` images for the conditions cond (name -> (count, ...) arrays); sampler = dict(steps, eta, guidance,
    ddpm) -> uint8 (count, H, W, C). Batches of 64 (128 rows with guidance): on a 2-core CPU they run about
    twice as fast per image as batches of 500."""
    device = run.device
    generator = torch.Generator(device).manual_seed(seed)
    shape = (run.model.image_channels, run.model.image_size, run.model.image_size)
    out = []
    for start in tqdm(range(0, count, batch_size), desc=f"sampling {count}", unit="batch", leave=False):
        part = {name: torch.as_tensor(value[start:start + batch_size], device=device) for name, value in cond.items()}
        b = min(batch_size, count - start)
        with autocast(device, run.precision):
            x = run.diffusion.sample(run.model, (b, *shape), cond=part, steps=None if sampler["ddpm"] else sampler["steps"],
                                     eta=sampler["eta"], guidance=sampler["guidance"], generator=generator, device=device)
        out.append(to_uint8(x))
    return np.concatenate(out)


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
    cond = request_conditions(run, labels, ref_images)
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


def between_grid(run: Run, a: int, b: int, points: int, sampler: dict, seed: int) -> tuple[dict, bytes]:
    """Class-boundary generation: every float condition walks c(s) = (1 - s) c_A + s c_B, s in [0, 1],
    from a class-A reference to a class-B reference; one row with label A, one with label B.

    Each row starts with reference A and ends with reference B.
    """
    rng = np.random.default_rng(seed)
    refs = reference_of_each(run.labels, np.array([a, b]), rng)  # (2,)
    s = np.linspace(0, 1, points, dtype=np.float32)[:, None]  # (points, 1)
    rows, parts = [], []
    for row_label in (a, b):
        c_a, c_b = (request_conditions(run, np.array([row_label]), run.images[[r]]) for r in refs)
        cond = {name: ((1 - s) * c_a[name] + s * c_b[name]).astype(np.float32) if c_a[name].dtype.kind == "f"
                else np.repeat(c_a[name], points) for name in c_a}  # (points, ...)
        images = generate(run, points, cond, sampler, seed)
        parts.append(dict(images=images, labels=np.full(points, row_label), reference=np.full(points, -1), cond=cond))
        rows.append(np.concatenate([run.images[refs[:1]], images, run.images[refs[1:]]]))
    return concatenate_parts(parts), grid_png(rows)


def concatenate_parts(parts: list[dict]) -> dict:
    """Stack generated parts (images, labels, reference, cond) into one."""
    return dict(images=np.concatenate([p["images"] for p in parts]),
                labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
                reference=np.concatenate([p["reference"] for p in parts]).astype(np.int64),
                cond={name: np.concatenate([p["cond"][name] for p in parts]) for name in parts[0]["cond"]})


def samples_npz(part: dict) -> bytes:
    """samples.npz: images uint8 (N, H, W, C), labels (N,) the class each stands for, reference (N,)
    the training image whose conditions were asked for (-1: none or a user's file), and cond_<name>
    for every condition the model saw (e.g. cond_label (N,), cond_pos (N, 20))."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=part["images"], labels=part["labels"], reference=part["reference"],
                        **{f"cond_{name}": value for name, value in part["cond"].items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Metrics (metrics.py)
# ---------------------------------------------------------------------------
def evaluate(run: Run, n: int, sampler: dict, seed: int, references: dict | None,
             inception_weights: str | None) -> tuple[dict, dict]:
    """FID / IS / conditioning accuracy of n class-balanced samples (+ control of the reference samples).

    Each sample's request takes a different random training image of the
    requested class as its reference (a draw from p(conditions | class)).
    Returns (metrics, the evaluated samples).
    """
    k = len(run.config["data"]["class_names"])
    want = np.arange(n) % k  # class-balanced
    rng = np.random.default_rng(seed + 1)
    refs = reference_of_each(run.labels, want, rng)
    part = make_part(run, want, run.images[refs], refs, sampler, seed + 1)

    classifier = metrics.load_feature_network("classifier", classifier_path=os.path.join(run.dir, "classifier.pt"),
                                              train_images=run.images, train_labels=run.labels, num_classes=k)
    result = {"n": n, "classifier": metrics.evaluate_images(run.images, part["images"], want, classifier)}
    result["classifier"]["real_is_mean"], result["classifier"]["real_is_std"] = \
        metrics.inception_score(classifier.logits(run.images))
    try:
        inception = metrics.load_feature_network("inception", weights=inception_weights)
        result["inception"] = metrics.evaluate_images(run.images, part["images"], None, inception)
    except WeightsUnavailableError as error:
        result["inception"] = f"skipped: {error}"
    if references is not None and run.space is not None:
        result["controllability"] = control(run, references)
    return result, part


def control(run: Run, references: dict) -> dict:
    """Place the reference samples in the run's feature space and compare them with their references."""
    settings = run.config["settings"]
    gen_features = extract_features(references["images"], backbone=settings["backbone"], weights=settings["weights"],
                                    cache_dir=None)
    gen_pos = run.space.standardize(run.space.transform(gen_features))  # (M, d)
    ref_pos = reference_positions(run, references["ref_images"])  # (R, d)
    per_reference = len(references["images"]) // len(ref_pos)
    own = np.repeat(np.arange(len(ref_pos)), per_reference)
    return metrics.controllability(gen_pos, own, references["labels"], ref_pos, references["ref_labels"])


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory written by train.py")
    p.add_argument("--out", required=True, help="where the PNGs, samples.npz and meta.json go")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"),
                   help="ddim (--steps, --eta) or ddpm (Algorithm 2, all T steps)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps")
    p.add_argument("--eta", type=float, default=DEFAULT_ETA, help="DDIM eta in [0, 1] (0: deterministic)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance w >= 0 (1: none, one network call per step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=10, help="class grid: images per class")
    p.add_argument("--references", type=int, default=0, help="K reference images per class from the training data")
    p.add_argument("--reference-images", nargs="+", default=None, help="your own reference image files")
    p.add_argument("--reference-labels", nargs="+", type=int, default=None, help="their class indices")
    p.add_argument("--per-reference", type=int, default=10, help="images generated per reference")
    p.add_argument("--between", nargs=2, type=int, metavar=("A", "B"), help="walk from a class-A to a class-B reference")
    p.add_argument("--points", type=int, default=8, help="positions along the --between walk")
    p.add_argument("--eval", action="store_true", help="also write metrics.json and eval_samples.npz")
    p.add_argument("--n", type=int, default=1000, help="--eval: number of class-balanced samples")
    p.add_argument("--inception-weights", default=None,
                   help="--eval: local Inception weights file for Inception FID/IS (else from the hub, or skipped)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 where the hardware runs it natively, else fp32")
    return p


def check_args(args) -> None:
    """Every argument that can be checked without the run, before any work."""
    counts = dict(steps=args.steps, per_class=args.per_class, per_reference=args.per_reference,
                  points=args.points, n=args.n)
    for name, value in counts.items():
        if value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
    if args.references < 0:
        raise RunError(f"--references must be 0 (none) or a positive count, got {args.references}")
    if not 0 <= args.eta <= 1:
        raise RunError(f"--eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's noise), got {args.eta}")
    if args.guidance < 0:
        raise RunError(f"--guidance must be >= 0 (1: no guidance, 3: the default), got {args.guidance}")
    if args.references and args.reference_images:
        raise RunError("pass either --references K or --reference-images FILES, not both")
    if args.reference_images and (args.reference_labels is None or len(args.reference_labels) != len(args.reference_images)):
        raise RunError("give one --reference-labels value per --reference-images file")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        raise RunError(f"--inception-weights {args.inception_weights}: file not found")
    check_out_dir(args.out)


def check_against_run(args, run: Run) -> None:
    """The arguments that depend on the run: classes, reference counts, steps."""
    k = len(run.config["data"]["class_names"])
    T = run.diffusion.num_timesteps
    if args.sampler == "ddim" and args.steps > T:
        raise RunError(f"--steps must be at most the run's {T} timesteps, got {args.steps}")
    for c in (args.between or []) + (args.reference_labels or []):
        if not 0 <= c < k:
            raise RunError(f"class {c} does not exist: {run.dir} has classes 0..{k - 1}")
    fewest = int(np.bincount(run.labels, minlength=k).min())
    if args.references > fewest:
        raise RunError(f"--references {args.references} is more than the {fewest} training images of the smallest class")


def load_reference_files(args, run: Run) -> np.ndarray:
    """--reference-images -> (R, H, W, C) uint8 at the run's image size and channels."""
    size, channels = run.model.image_size, run.model.image_channels
    pictures = [open_image(path).convert("L" if channels == 1 else "RGB").resize((size, size))
                for path in args.reference_images]
    return np.stack([np.asarray(p).reshape(size, size, channels) for p in pictures])


def holds_sample_outputs(folder: str) -> bool:
    """Was `folder` written by sample.py? (Its meta.json says so.) Only then are its SAMPLE_FILES ours to replace."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        return isinstance(meta, dict) and meta.get("written_by") == "sample.py"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def check_out_dir(out: str) -> None:
    """--out must be a directory (or not exist yet) holding no file of ours that sample.py did not write."""
    if os.path.isfile(out):
        raise RunError(f"--out {out} is a file; give a directory")
    clashes = [name for name in SAMPLE_FILES if os.path.exists(os.path.join(out, name))]
    if clashes and not holds_sample_outputs(out):
        raise RunError(f"--out {out} holds {clashes[0]}, which sample.py did not write; choose another --out")


def write_outputs(out: str, files: dict[str, bytes]) -> None:
    """Write this call's files (each atomically) and remove the ones an earlier call left that this one does not make."""
    os.makedirs(out, exist_ok=True)
    for name, content in files.items():
        write_atomically(os.path.join(out, name), lambda f: f.write(content))
    for name in SAMPLE_FILES:
        if name not in files and os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))  # stale output of an earlier sample.py call


def run_command(args) -> dict:
    check_args(args)
    run = load_run(args.run, args.device, args.precision)
    check_against_run(args, run)
    ref_images = load_reference_files(args, run) if args.reference_images else None
    sampler = dict(steps=args.steps, eta=args.eta, guidance=args.guidance, ddpm=args.sampler == "ddpm")

    # Every image first, in memory; the files at the end.
    part, png = class_grid(run, args.per_class, sampler, args.seed)
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
        part, files["between.png"] = between_grid(run, *args.between, args.points, sampler, args.seed)
        parts.append(part)
    files["samples.npz"] = samples_npz(concatenate_parts(parts))
    meta = dict(vars(args), written_by="sample.py", conditions=sorted(run.config["unet"]["conditions"]),
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


if __name__ == "__main__":
    main()
