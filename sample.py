"""Generate images from a trained run: class grids, reference control, class boundaries, metrics.

    python sample.py runs/quick --out runs/quick/samples --steps 50              # class grid (Figs 2-4)
    python sample.py runs/quick --out DIR --steps 50 --references 2              # reference control (Figs 5-6)
    python sample.py runs/quick --out DIR --steps 50 --between 3 8               # a walk from a 3 to an 8
    python sample.py runs/quick --out DIR --steps 50 --references 2 --eval       # + metrics.json

PAPER.md, Method step 4: to generate, take a reference image, place it in the
run's feature space (its features, then the fitted UMAP's `transform`) and
condition on its class and that position. The class grid does this with one
randomly drawn reference per class (the report's protocol); `--references K`
draws K per class and shows each reference at the left of its row;
`--between A B` walks the position from a class-A reference to a class-B
reference, generating with label A and with label B: the class-boundary
samples that motivate the method.

`--steps` absent runs the full DDPM sampler (1000 network calls per image);
`--steps 50` runs DDIM with 50 steps. `--guidance w` is classifier-free
guidance. Every call writes, in --out, a PNG per figure, `samples.npz`
(images uint8 N x H x W x C, labels, positions, reference) and `meta.json`.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

from data import open_image
from features import FeatureSpace, extract_features
from train import CONDITIONS, RunError, load_run, load_training_images


# ---------------------------------------------------------------------------
# Conditions and generation
# ---------------------------------------------------------------------------
def reference_positions(space: FeatureSpace, config: dict, reference_images: np.ndarray) -> np.ndarray:
    """Method step 4: (R, H, W, C) uint8 references -> (R, d) standardised positions via UMAP transform."""
    features = extract_features(reference_images, backbone=config["backbone"], weights=config["weights"],
                                cache_dir=os.path.join(config["root"], "cache"))
    return space.standardize(space.transform(features))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(model, diffusion, config: dict, labels: np.ndarray, positions: np.ndarray | None,
             steps: int | None = 50, eta: float = 0.0, guidance: float = 1.0, seed: int = 0,
             batch_size: int = 250) -> np.ndarray:
    """Images for the requested (label, position) pairs, (M,) and (M, d) -> uint8 (M, H, W, C).

    The model sees only the conditions its run was trained with (config["cond"]).
    """
    inputs = CONDITIONS[config["cond"]]
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    shape = (config["image_channels"], config["image_size_model"], config["image_size_model"])
    out = []
    for start in range(0, len(labels), batch_size):
        part = slice(start, start + batch_size)
        cond = {}
        if "label" in inputs:
            cond["label"] = torch.as_tensor(labels[part], dtype=torch.long, device=device)
        if "pos" in inputs:
            cond["pos"] = torch.as_tensor(positions[part], dtype=torch.float32, device=device)
        b = len(labels[part])
        x = diffusion.sample(model, (b, *shape), cond=cond, steps=steps, eta=eta, guidance=guidance,
                             generator=generator, device=device)
        out.append(to_uint8(x))
    return np.concatenate(out)


def draw_references(labels: np.ndarray, per_class: int, seed: int, num_classes: int) -> np.ndarray:
    """Indices of `per_class` training images of every class, drawn at random with `seed`: (K * per_class,)."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) < per_class:
            raise RunError(f"class {k} has {len(members)} training images, fewer than the {per_class} references asked")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.concatenate(picks)


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------
def save_grid(rows: list[np.ndarray], path: str, pad: int = 2) -> None:
    """Tile rows of uint8 (n, H, W, C) images into one PNG (white gaps between images)."""
    h, w, c = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = image
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)


def class_grid(model, diffusion, config, space, images, labels, per_class: int, steps, seed: int, path: str,
               eta: float = 0.0, guidance: float = 1.0) -> dict:
    """The report's Figures 2-4: one row per class. Umap runs use one random reference per class."""
    k = len(config["class_names"])
    want = np.repeat(np.arange(k), per_class)  # (K * per_class,)
    positions, reference = None, np.full(len(want), -1)
    if space is not None:
        refs = draw_references(labels, 1, seed, k)  # (K,) one reference per class
        positions = np.repeat(reference_positions(space, config, images[refs]), per_class, axis=0)
        reference = np.repeat(refs, per_class)
    out = generate(model, diffusion, config, want, positions, steps, eta, guidance, seed)
    save_grid(list(out.reshape(k, per_class, *out.shape[1:])), path)
    return dict(images=out, labels=want, positions=positions, reference=reference)


def reference_grid(model, diffusion, config, space, images, labels, per_class: int, per_reference: int, steps,
                   seed: int, path: str, eta: float = 0.0, guidance: float = 1.0, refs: np.ndarray | None = None,
                   ref_images: np.ndarray | None = None, ref_labels: np.ndarray | None = None) -> dict:
    """The report's Figures 5-6: per reference, a row of its image then `per_reference` samples."""
    if ref_images is None:
        refs = draw_references(labels, per_class, seed, len(config["class_names"]))
        ref_images, ref_labels = images[refs], labels[refs]
    ref_pos = reference_positions(space, config, ref_images)  # (R, d)
    want = np.repeat(ref_labels, per_reference)
    positions = np.repeat(ref_pos, per_reference, axis=0)
    out = generate(model, diffusion, config, want, positions, steps, eta, guidance, seed)
    rows = [np.concatenate([ref_images[i:i + 1], out[i * per_reference:(i + 1) * per_reference]])
            for i in range(len(ref_images))]
    save_grid(rows, path)
    reference = np.repeat(refs if refs is not None else -np.ones(len(ref_images), np.int64), per_reference)
    return dict(images=out, labels=want, positions=positions, reference=reference,
                ref_positions=ref_pos, ref_labels=ref_labels)


def between_grid(model, diffusion, config, space, images, labels, a: int, b: int, points: int, steps,
                 seed: int, path: str, eta: float = 0.0, guidance: float = 1.0) -> dict:
    """Class-boundary generation: positions p(s) = (1 - s) p_A + s p_B for s in [0, 1], with label A and with label B.

    Row 1 (label A) and row 2 (label B) start with reference A and end with reference B.
    """
    k = len(config["class_names"])
    for c in (a, b):
        if not 0 <= c < k:
            raise RunError(f"--between classes must lie in 0..{k - 1}, got {c}")
    rng = np.random.default_rng(seed)
    refs = np.array([rng.choice(np.flatnonzero(labels == a)), rng.choice(np.flatnonzero(labels == b))])
    p_a, p_b = reference_positions(space, config, images[refs])
    s = np.linspace(0, 1, points, dtype=np.float32)[:, None]  # (points, 1)
    walk = (1 - s) * p_a + s * p_b  # (points, d)
    row_labels = [a, b] if "label" in CONDITIONS[config["cond"]] else [a]
    want = np.repeat(row_labels, points)
    positions = np.tile(walk, (len(row_labels), 1))
    out = generate(model, diffusion, config, want, positions, steps, eta, guidance, seed)
    rows = [np.concatenate([images[refs[:1]], out[i * points:(i + 1) * points], images[refs[1:]]])
            for i in range(len(row_labels))]
    save_grid(rows, path)
    return dict(images=out, labels=want, positions=positions, reference=np.full(len(want), -1))


# ---------------------------------------------------------------------------
# Metrics (metrics.py)
# ---------------------------------------------------------------------------
def evaluate(model, diffusion, config, space, images, labels, run_dir: str, n: int, steps, seed: int,
             eta: float, guidance: float, references: dict | None) -> dict:
    """FID / IS / conditioning accuracy of n class-balanced samples, plus controllability of the reference samples.

    Umap runs condition each of the n samples on the position of a different
    random training image of the requested class (a draw from p(pos | class)).
    """
    import metrics

    k = len(config["class_names"])
    want = np.arange(n) % k  # class-balanced
    rng = np.random.default_rng(seed + 1)
    refs = np.array([rng.choice(np.flatnonzero(labels == c)) for c in want])
    positions = reference_positions(space, config, images[refs]) if space is not None else None
    generated = generate(model, diffusion, config, want, positions, steps, eta, guidance, seed + 1)

    classifier = metrics.load_feature_network("classifier", classifier_path=os.path.join(run_dir, "classifier.pt"),
                                              train_images=images, train_labels=labels, num_classes=k)
    result = {"n": n, "classifier": metrics.evaluate_images(images, generated, want, classifier)}
    real_logits = classifier.logits(images)
    result["classifier"]["real_is_mean"], result["classifier"]["real_is_std"] = metrics.inception_score(real_logits)
    try:
        inception = metrics.load_feature_network("inception")
        result["inception"] = metrics.evaluate_images(images, generated, None, inception)
    except metrics.WeightsUnavailableError as error:
        result["inception"] = f"skipped: {error}"
    if references is not None:
        gen_features = extract_features(references["images"], backbone=config["backbone"], weights=config["weights"],
                                        cache_dir=None)
        gen_pos = space.standardize(space.transform(gen_features))
        ref_index = np.repeat(np.arange(len(references["ref_positions"])),
                              len(references["images"]) // len(references["ref_positions"]))
        result["controllability"] = metrics.controllability(gen_pos, ref_index, references["labels"],
                                                            references["ref_positions"], references["ref_labels"])
    return result


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory written by train.py")
    p.add_argument("--out", required=True, help="where the PNGs, samples.npz and meta.json go")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (absent: the full DDPM sampler)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale w (1: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=10, help="class grid: images per class")
    p.add_argument("--references", type=int, default=0, help="K reference images per class from the training data")
    p.add_argument("--reference-images", nargs="+", default=None, help="your own reference image files")
    p.add_argument("--reference-labels", nargs="+", type=int, default=None, help="their class indices")
    p.add_argument("--per-reference", type=int, default=10, help="images generated per reference")
    p.add_argument("--between", nargs=2, type=int, metavar=("A", "B"), help="walk from a class-A to a class-B reference")
    p.add_argument("--points", type=int, default=8, help="positions along the --between walk")
    p.add_argument("--eval", action="store_true", help="also write metrics.json (FID, IS, accuracy, control)")
    p.add_argument("--n", type=int, default=1000, help="--eval: number of class-balanced samples")
    p.add_argument("--device", default=None)
    return p


def load_reference_files(args, config) -> tuple[np.ndarray, np.ndarray]:
    """--reference-images / --reference-labels -> (R, H, W, C) uint8 at the run's size, (R,) labels."""
    if args.reference_labels is None or len(args.reference_labels) != len(args.reference_images):
        raise RunError("give one --reference-labels value per --reference-images file")
    size, grey = config["image_size_model"], config["image_channels"] == 1
    pictures = [open_image(path).convert("L" if grey else "RGB").resize((size, size)) for path in args.reference_images]
    images = np.stack([np.asarray(p).reshape(size, size, config["image_channels"]) for p in pictures])
    return images, np.asarray(args.reference_labels, dtype=np.int64)


def run(args) -> dict:
    model, diffusion, config, space = load_run(args.run, args.device)
    images, labels, _ = load_training_images(config)
    os.makedirs(args.out, exist_ok=True)
    common = dict(steps=args.steps, seed=args.seed, eta=args.eta, guidance=args.guidance)
    if (args.references or args.reference_images or args.between) and space is None:
        raise RunError(f"{args.run} was trained with --cond {config['cond']}: references need a umap condition")

    parts = [class_grid(model, diffusion, config, space, images, labels, args.per_class,
                        path=os.path.join(args.out, "class_grid.png"), **common)]
    references = None
    if args.references or args.reference_images:
        ref_images, ref_labels = load_reference_files(args, config) if args.reference_images else (None, None)
        references = reference_grid(model, diffusion, config, space, images, labels, args.references,
                                    args.per_reference, path=os.path.join(args.out, "references.png"),
                                    ref_images=ref_images, ref_labels=ref_labels, **common)
        parts.append(references)
    if args.between:
        parts.append(between_grid(model, diffusion, config, space, images, labels, *args.between, args.points,
                                  path=os.path.join(args.out, "between.png"), **common))

    arrays = dict(images=np.concatenate([p["images"] for p in parts]),
                  labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
                  reference=np.concatenate([p["reference"] for p in parts]).astype(np.int64))
    if space is not None:  # every part of a umap run is conditioned on positions
        arrays["positions"] = np.concatenate([p["positions"] for p in parts]).astype(np.float32)
    np.savez(os.path.join(args.out, "samples.npz"), **arrays)
    meta = {k: v for k, v in vars(args).items()}
    meta["cond"], meta["class_names"] = config["cond"], config["class_names"]
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)

    if args.eval:
        result = evaluate(model, diffusion, config, space, images, labels, args.run, args.n,
                          references=references, **common)
        result["settings"] = meta
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
        return result
    return {}


def main(argv: list[str] | None = None) -> dict:
    try:
        return run(build_parser().parse_args(argv))
    except (RunError, ValueError, FileNotFoundError) as error:
        sys.exit(f"sample.py: {error}")


if __name__ == "__main__":
    main()
