"""Generate images from a trained run: class grids, reference control, class boundaries, metrics.

    python sample.py runs/quick --out runs/quick/grid                    # class grid (Figs 2-4)
    python sample.py runs/quick --out DIR --references 2                 # reference control (Figs 5-6)
    python sample.py runs/quick --out DIR --between 4 9                  # a walk from a 4 to a 9
    python sample.py runs/quick --out DIR --references 2 --eval          # + metrics.json
    python sample.py runs/quick --out DIR --boundary 4 9 --boundary-n 16 # digits between a 4 and a 9

The method's generation step: take a reference image, compute its
conditions (its class; its position: a training image's fitted UMAP
position, a new image's features placed by the fitted UMAP's `transform`;
conditions.py) and sample from the model with them. Every request here is
"a class and a reference image": the class grid draws one training image
per class as the reference (the report's protocol), `--references K` draws
K per class and shows each at the left of its row, `--between A B` walks
the conditions from a class-A training image to a class-B one (the
class-boundary samples that motivate the method; boundary.walks), and
`--boundary A B` keeps, per walk, the point near the guide's P(B) = 0.5 that
its members find most ambiguous, where the guide trusts it
(boundary.trusted_boundary_samples). A model that does not take a
condition simply ignores it.

The sampler is DPM-Solver++(2M) (Lu et al. 2022) with `--sampling-steps` steps and
`--eta` 1 (its SDE form; 0: the ODE), or DDIM (Song et al. 2021; `--eta` 0 unless given), or
`--sampler ddpm`, Algorithm 2 of Ho et al. 2020 with all T steps; guidance
`--guidance w` or a weight per condition (`label=3`, the default: the label
guided given the other conditions; ddpm.Diffusion.guided_output). Every call writes, in --out, a PNG per figure, `samples.npz` and
`meta.json` (and `metrics.json`, `eval_samples.npz` with --eval), all at the
end, after every argument has been checked and every image made; meta.json
lists the files this call wrote (an earlier call's outputs it does not remake are removed: they would not match).

`load_run` reads a run directory back; the conditions of a request come from
conditions.py, as in training; `generate` (generation.py) samples; walks and
boundary samples are boundary.py's. The flags and their checks
(plumbing/commands.py), meta.json and the files it writes (plumbing/outputs.py)
are one call each.
"""
import json
import os
import sys

import numpy as np

import boundary
from plumbing import commands
import metrics
from plumbing import rundir
from conditions import reference_positions, request_conditions
from plumbing.data import choose_per_class, load_dataset
from ddpm import SAMPLER_ETA
from features import extract_features
from plumbing.weights import WeightsUnavailableError
from generation import default_guidance, generate, walk_guidance
from plumbing import outputs
from plumbing.outputs import concatenate_parts, grid_png, samples_npz
from plumbing.rundir import Run, RunError, load_run


def say(line: str) -> None:
    """What the command is doing, a line per stage, on stderr (also when it is not a terminal; stdout keeps
    --eval's metrics and --boundary's last line)."""
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Requests: a class and a reference image each
# ---------------------------------------------------------------------------


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
    say(f"--eval: sampling {n} class-balanced images")
    part = make_part(run, want, run.images[refs], refs, sampler, seed + 1)
    test_images, reference_text = held_out_images(run)

    say(f"--eval: scoring them against {reference_text}, with the evaluator {run.dir}/classifier.pt (trained "
        "first if missing)")
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
    except WeightsUnavailableError as error:  # (metrics.py's advice: its --features flag is not sample.py's)
        advice = str(error).replace(", or use --features classifier", " (sample.py --eval --inception-weights PATH; "
                                    "the classifier's scores need none)")
        result["inception"] = f"skipped: {advice}"
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
# The command: every argument checked (plumbing/commands.py), every image made, then the files
# ---------------------------------------------------------------------------
def run_command(args, typed=frozenset()) -> dict:
    commands.check_args(args, typed)
    args.eta = SAMPLER_ETA[args.sampler] if args.eta is None else args.eta  # no --eta: the sampler's own
    run = load_run(args.run, args.device, args.precision)
    commands.check_against_run(args, run)
    if args.boundary:
        return boundary_command(args, run)
    ref_images = commands.load_reference_files(run, args.reference_images) if args.reference_images else None
    names = run.config["unet"]["conditions"]
    guidance = default_guidance(names) if args.guidance is None else args.guidance
    sampler = dict(name=args.sampler, steps=args.sampling_steps, eta=args.eta, guidance=guidance,
                   batch_size=args.sampling_batch_size, guidance_interval=args.guidance_interval)
    walk_sampler = dict(sampler, guidance=walk_guidance(names, args.walk_label, args.guidance))  # --between

    # Every image first, in memory; the files at the end.
    say(f"sampling the class grid: {len(run.config['data']['class_names'])} classes x {args.grid_per_class} "
        f"({args.sampler}, {'all T' if args.sampler == 'ddpm' else args.sampling_steps} steps)")
    part, png = class_grid(run, args.grid_per_class, sampler, args.seed)
    parts, files, references = [part], {"class_grid.png": png}, None
    if args.references or args.reference_images:
        if ref_images is None:
            refs = draw_references(run.labels, args.references, args.seed)
            ref_images, ref_labels = run.images[refs], run.labels[refs]
        else:
            refs, ref_labels = np.full(len(ref_images), -1), np.asarray(args.reference_labels, np.int64)
        say(f"sampling the reference grid: {len(ref_images)} references x {args.per_reference}")
        part, files["references.png"] = reference_grid(run, ref_images, ref_labels, refs, args.per_reference,
                                                       sampler, args.seed)
        parts.append(part)
        references = dict(part, ref_images=ref_images, ref_labels=ref_labels)
    if args.between:
        say(f"walking from {args.between[0]} to {args.between[1]}: {args.walks} walks of {args.points} points")
        part, files["between.png"] = boundary.between_grid(run, *args.between, args.points, walk_sampler, args.seed,
                                                  args.walks, args.walk_label, args.walk_path)
        parts.append(part)
    files["samples.npz"] = samples_npz(concatenate_parts(parts))
    meta = outputs.sample_meta(commands.recorded(args, run), run, guidance, walk_sampler["guidance"] if args.between else None,
                               [*files, "meta.json", *(["metrics.json", "eval_samples.npz"] if args.eval else [])])
    files["meta.json"] = json.dumps(meta, indent=2).encode()

    result = {}
    if args.eval:
        result, evaluated = evaluate(run, args.n or commands.DEFAULT_EVAL_N, sampler, args.seed, references, args.inception_weights)
        result["settings"] = meta
        files["metrics.json"] = json.dumps(result, indent=2).encode()
        files["eval_samples.npz"] = samples_npz(evaluated)
    rundir.write_all_or_none(args.out, files)
    say(f"wrote {', '.join(sorted(files))} in {args.out}")
    if args.eval:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return result


def boundary_command(args, run: Run) -> dict:
    """--boundary A B: --boundary-n trusted boundary samples (boundary.trusted_boundary_samples); boundary.png, samples.npz and
    meta.json. Fewer than --boundary-n is a note; none is an error."""
    a, b = args.boundary
    n = args.boundary_n or commands.DEFAULT_BOUNDARY_N
    sampler = dict(name=args.sampler, steps=args.sampling_steps, eta=args.eta, guidance=args.boundary_guidance,
                   batch_size=args.sampling_batch_size, guidance_interval=args.guidance_interval)
    guide = boundary.boundary_guide(run, report=say)
    part, counts = boundary.trusted_boundary_samples(run, a, b, n, args.boundary_method, args.seed, guide, sampler,
                                                     report=say)  # a line per round of walks
    tried, crossed, kept = counts["tried"], counts["crossed"], counts["trusted"]
    if not kept:
        raise RunError(f"--boundary {a} {b}: none of {tried} walks gave a trusted sample ({crossed} crossed the "
                       f"guide's P({b}) = 0.5, none where all its members read it as ambiguous and as {a} or {b}); "
                       "try another --boundary-method or --boundary-guidance")
    if kept < n:
        print(f"note: {kept} trusted boundary samples in {tried} walks ({crossed} crossed), not {n}: at most "
              f"{boundary.MAX_WALKS_PER_SAMPLE} walks per sample are tried", file=sys.stderr)
    files = {"boundary.png": boundary.boundary_grid(run, part), "samples.npz": samples_npz(part)}
    meta = outputs.boundary_meta(commands.recorded(args, run), run, n, counts, len(part["images"]), boundary.search_settings(guide),
                                 [*files, "meta.json"])
    files["meta.json"] = json.dumps(meta, indent=2).encode()
    rundir.write_all_or_none(args.out, files)
    print(f"kept {len(part['images'])} trusted boundary samples between {a} and {b} from {tried} walks ({crossed} "
          f"crossed the guide's P({b}) = 0.5); wrote {', '.join(sorted(files))} in {args.out}")
    return meta


def main(argv: list[str] | None = None, interrupted: str | None = None) -> dict:
    """sample.py's command line; interrupted: the message of a Ctrl-C, for a caller that knows more (train.py --eval)."""
    try:
        return run_command(*commands.parse_args(argv))
    except (RunError, ValueError, OSError, WeightsUnavailableError) as error:  # OSError: an unreadable file, ...
        sys.exit(f"sample.py: {' '.join(str(error).split())}")
    except KeyboardInterrupt:
        sys.exit(interrupted or "sample.py: interrupted; --out is as it was (sample.py writes its files only at the end)")


if __name__ == "__main__":
    main()
