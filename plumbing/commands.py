"""sample.py's command line: its flags, their checks, and the memory a request needs.

Not the method: every argument is checked here, before any work (one-line
errors naming the flag and the fix); sample.py calls these in one line each.
"""
import argparse
import os
import re
import sys

import numpy as np

from plumbing import rundir
from boundary import BOUNDARY_GRID, BOUNDARY_METHODS, DEFAULT_BOUNDARY_METHOD, MAX_WALKS_PER_SAMPLE, WALK_LABELS, \
    WALK_PATHS, GUIDE_FILE, check_boundary, rows_per_walk
from plumbing.data import open_image
from ddpm import SAMPLERS, check_guidance_interval
from generation import DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_INTERVAL, DEFAULT_SAMPLER, DEFAULT_STEPS
from plumbing.precision import PRECISIONS
from plumbing.rundir import Run, RunError

DESCRIPTION = "Generate images from a trained run: class grids, reference control, class boundaries, metrics."
DEFAULT_BOUNDARY_N, DEFAULT_EVAL_N = 16, 1000  # --boundary-n and --n without a value
# A seed, in train.py and sample.py alike: what numpy's RandomState takes (UMAP is seeded with train.py's --seed;
# torch's generators and numpy's default_rng take more, and step_seed's products of it stay below 2**64).
SEED_LIMIT = 2**32
# A value that starts with "-" and then a digit, "." or inf/nan ("-1,2", "-.5", "-inf"): a value, never a flag
# (argparse's own rule takes only plain negative numbers, and reads "--guidance-interval -1,2" as a missing value).
MINUS_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def check_seed(flag: str, value: int) -> None:
    """A seed flag (--seed, --data-seed) lies in [0, SEED_LIMIT): else one line naming it."""
    if not 0 <= value < SEED_LIMIT:
        raise RunError(f"{flag} must be a whole number in [0, 2**32) ({SEED_LIMIT - 1:,} at most), got {value}")


def parse_guidance(text: str) -> float | dict[str, float]:
    """--guidance: a bare number (every condition that weight) or a weight per condition, "label=1,pos=3"."""
    try:
        weights = float(text)
    except ValueError:
        try:
            weights = parse_condition_numbers(text)
        except argparse.ArgumentTypeError as error:
            if "more than once" in str(error):  # label=3,label=2: its own message
                raise
            weights = None
    if weights is None or weights == {}:  # "" or "," would mean no guidance at all, unasked; "=3" names no condition
        hint = f"; for one weight on every condition write --guidance {text.strip(' =')}" if text.strip().startswith("=") else ""
        raise argparse.ArgumentTypeError(f"expected a weight W (e.g. 3; 1: no guidance) or NAME=W pairs joined by "
                                         f"commas (e.g. label=3,pos=1), got {text!r}{hint}")
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
        pairs = [(name.strip(), float(value)) for name, value in (item.split("=") for item in text.split(",") if item.strip())]
        if any(name == "" for name, _ in pairs):  # "=3": a number without its condition's name
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER pairs joined by commas (e.g. label=1,pos=3), "
                                         f"got {text!r}") from None
    names = [name for name, _ in pairs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # a dict would keep the last value silently
        raise argparse.ArgumentTypeError(f"{text!r} names {', '.join(twice)} more than once: give each name one value")
    return dict(pairs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # flags typed in full, as in train.py
    p._negative_number_matcher = MINUS_VALUE  # --guidance-interval -1,2 and --guidance -inf reach their checks
    p.add_argument("run", help="a run directory written by train.py")
    p.add_argument("--out", required=True, help="where the PNGs, samples.npz and meta.json go")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                   help="ddim (Song et al.), dpm++2m (DPM-Solver++(2M), Lu et al.: eta 0 or 1) "
                   "or ddpm (Algorithm 2 of Ho et al., all T steps)")
    p.add_argument("--sampling-steps", type=int, default=DEFAULT_STEPS, help="steps of ddim and dpm++2m: network "
                   "calls per sample (with guidance each call has 2x the rows, 3x for e.g. label=3,pos=1)")
    p.add_argument("--eta", type=float, default=None, help="sampling noise: ddim takes [0, 1] "
                   "(0: deterministic, 1: DDPM's variance), dpm++2m 0 (ODE) or 1 (SDE); refused with ddpm "
                   "(default: the sampler's own, ddim 0, dpm++2m 1; meta.json records the value used)")
    p.add_argument("--sampling-batch-size", type=int, default=64, help="images per network call (64: fastest per "
                   "image on a 2-core CPU; raise it on a GPU). The noise is drawn batch by batch, so another size "
                   "gives other images (meta.json records it)")
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
                   help="boundary samples between classes A and B: per walk, of the points read on the way to where a "
                   "guide (not the evaluator) reads P(B) = 0.5, the one its members find most ambiguous; writes "
                   "boundary.png and samples.npz (with s, walk, endpoints, prob)")
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
    p.add_argument("--n", type=int, default=None, help=f"--eval: how many class-balanced samples are scored "
                   f"(default {DEFAULT_EVAL_N})")
    p.add_argument("--boundary-n", type=int, default=None, help="--boundary: how many trusted boundary samples, one "
                   f"per walk (default {DEFAULT_BOUNDARY_N})")
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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """sample.py's command line, and the names (dests) of the flags the user typed: a flag typed at its default
    value is still a request, refused where the mode cannot honour it (check_unused_flags)."""
    parser = build_parser()
    return parser.parse_args(argv), typed_flags(parser, argv)


def typed_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The names (dests) of the flags typed on the command line (argv None: sys.argv), at any value; train.py's too."""
    tokens = {token.split("=")[0] for token in (sys.argv[1:] if argv is None else argv) if token.startswith("--")}
    return {action.dest for action in parser._actions if set(action.option_strings) & tokens}


def check_args(args, typed=frozenset()) -> None:
    """Every argument that can be checked without the run, before any work (typed: the flags typed, parse_args)."""
    counts = dict(sampling_steps=args.sampling_steps, grid_per_class=args.grid_per_class,
                  per_reference=args.per_reference, points=args.points, walks=args.walks, n=args.n, boundary_n=args.boundary_n,
                  sampling_batch_size=args.sampling_batch_size)
    for name, value in counts.items():
        if value is not None and value < 1:
            raise RunError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
    if args.points < 2:  # one point would be image A's conditions alone, s = 0: no walk
        raise RunError(f"--points must be at least 2 (a walk runs from A at s = 0 to B at s = 1), got {args.points}")
    if args.n is not None and args.n < 2:  # FID's covariance of one image is undefined
        raise RunError(f"--n must be at least 2 (FID compares the covariances of two sets of images), got {args.n}")
    if args.references < 0:
        raise RunError(f"--references must be 0 (none) or a positive count, got {args.references}")
    check_seed("--seed", args.seed)
    if args.eta is not None and not 0 <= args.eta <= 1:  # None: the sampler's own (run_command)
        raise RunError(f"--eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's noise), got {args.eta}")
    weights = [] if args.guidance is None else list(args.guidance.values()) if isinstance(args.guidance, dict) else [args.guidance]
    if not all(np.isfinite(w) and w >= 0 for w in weights):  # NaN passes a bare `< 0` test, and makes black images
        raise RunError(f"--guidance weights must be finite and >= 0 (1: no guidance, 3: the default), got {args.guidance}")
    if not (np.isfinite(args.boundary_guidance) and args.boundary_guidance >= 0):
        raise RunError(f"--boundary-guidance must be finite and >= 0 (1: no guidance), got {args.boundary_guidance}")
    check_unused_flags(args, typed)
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
    run, out = os.path.realpath(args.run), os.path.realpath(args.out)
    if out in (run, os.path.join(run, "grids")):  # its files would outlive the model (train.py --overwrite keeps them)
        raise RunError(f"--out {args.out} is the run's own {'folder' if out == run else 'grids/ folder'}, where "
                       f"train.py keeps the model's files: give a folder of its own, e.g. --out "
                       f"{os.path.join(args.run, 'samples')}")
    rundir.check_sample_out(args.out, output_names(args))


# Flags that act only with another flag: given without it (at another value than their default) they would be
# ignored, so they are refused. flag -> (the flags it needs, any of them).
NEEDS = {"boundary_method": ("boundary",), "boundary_guidance": ("boundary",), "points": ("between",),
         "walks": ("between",), "walk_label": ("between",), "walk_path": ("between",), "n": ("eval",),
         "boundary_n": ("boundary",),
         "inception_weights": ("eval",), "per_reference": ("references", "reference_images"),
         "reference_labels": ("reference_images",)}


UNUSED_BY_BOUNDARY = ("guidance", "grid_per_class", "per_reference")  # --boundary makes only its own samples
UNUSED_BY_DDPM = ("sampling_steps", "eta")  # --sampler ddpm takes all T steps of Algorithm 2, with its own noise


def guidance_text(guidance: float | dict) -> str:
    """--guidance as typed: 3 or label=3,pos=1."""
    return ",".join(f"{k}={v:g}" for k, v in guidance.items()) if isinstance(guidance, dict) else f"{guidance:g}"


def check_unused_flags(args, typed=frozenset()) -> None:
    """A flag the chosen mode or sampler cannot honour is a one-line error naming it (checked before --eta takes the
    sampler's own value). A flag counts as given when typed (even at its default) or away from its default."""
    defaults = build_parser()
    def given(name):
        return name in typed or getattr(args, name) != defaults.get_default(name)
    for name, needs in NEEDS.items():
        if given(name) and not any(getattr(args, need) for need in needs):
            hint = "; --boundary's count of trusted samples is --boundary-n" if name == "n" and args.boundary else ""
            raise RunError(f"--{name.replace('_', '-')} acts only with {' or '.join('--' + n.replace('_', '-') for n in needs)}; "
                           f"add it or leave the flag out{hint}")
    if args.boundary:
        for name in UNUSED_BY_BOUNDARY:
            if given(name):
                hint = ("; its weight is --boundary-guidance W" if name == "guidance" else "")
                raise RunError(f"--{name.replace('_', '-')} does not apply to --boundary, which guides and writes "
                               f"only its own samples{hint}")
    if args.sampler == "ddpm":
        for name in UNUSED_BY_DDPM:
            if given(name):
                raise RunError(f"--{name.replace('_', '-')} does not apply to --sampler ddpm (Algorithm 2 of Ho et "
                               "al.: all T steps, its own noise); leave it out, or choose --sampler ddim or dpm++2m")
    if args.between and args.walk_label == "none" and isinstance(args.guidance, dict) and "label" in args.guidance:
        raise RunError(f"--guidance {guidance_text(args.guidance)} weighs the label, which --walk-label none drops "
                       "from the walk (its images would not change with that weight): give the weights without label "
                       "(e.g. pos=3, or a bare 3), or choose --walk-label fixed or soft")
    if given("guidance_interval"):
        weights = ([args.boundary_guidance] if args.boundary else [] if args.guidance is None  # (the default: 3)
                   else list(args.guidance.values()) if isinstance(args.guidance, dict) else [args.guidance])
        if weights and all(w == 1 for w in weights):
            flag = (f"--boundary-guidance {args.boundary_guidance:g}" if args.boundary
                    else f"--guidance {guidance_text(args.guidance)}")
            raise RunError(f"--guidance-interval limits the guidance to some steps, and {flag} guides none (1: no "
                           "guidance): leave --guidance-interval out, or give a weight other than 1")


def recorded(args, run: Run) -> argparse.Namespace:
    """The arguments as meta.json records them: what this call did. A flag of a mode not run is None (a class
    grid made no walk, whatever --points says); --sampler ddpm took all T steps; --eval scored --n or its default."""
    done = argparse.Namespace(**vars(args))
    for name, needs in NEEDS.items():
        if not any(getattr(args, need) for need in needs):
            setattr(done, name, None)
    if args.boundary:
        done.grid_per_class = done.per_reference = None
    if args.sampler == "ddpm":
        done.sampling_steps = run.diffusion.num_timesteps
    if args.eval:
        done.n = args.n or DEFAULT_EVAL_N
    return done


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
    for flag, name in (("--eval", "classifier.pt"), ("--boundary", GUIDE_FILE)):
        if getattr(args, flag[2:]) and not os.path.exists(os.path.join(run.dir, name)):
            rundir.check_run_writable(run.dir, name, flag)
    check_conditions_used(args, run)
    if args.boundary:
        check_boundary(run, *args.boundary, args.boundary_method)
    fewest = int(np.bincount(run.labels, minlength=k).min())
    if args.references > fewest:
        raise RunError(f"--references {args.references} is more than the {fewest} training images of the smallest class")


def check_conditions_used(args, run: Run) -> None:
    """A request the run's conditions cannot act on is refused: guidance, or a reference, for a model without
    conditions; a walk along which no condition moves (every point the same image); a --guidance-interval
    that holds none of the sampled steps' noise levels."""
    names = list(run.config["unet"]["conditions"])
    if not names:
        for flag, given in (("--guidance", args.guidance is not None),
                            ("--guidance-interval", args.guidance_interval is not None),
                            ("--references", args.references), ("--reference-images", args.reference_images),
                            ("--between", args.between)):
            if given:
                raise RunError(f"{flag}: {run.dir} was trained without conditions (--cond none), so nothing "
                               "guides or steers its samples; leave the flag out")
    if args.between:
        moving = [n for n in names if n != "label"] + (["label"] if args.walk_label == "soft" else [])
        if not moving:  # only the label, held fixed or dropped: every point of a walk has the same conditions
            raise RunError(f"--between on {run.dir} (conditions: {', '.join(names)}) moves no condition with "
                           f"--walk-label {args.walk_label}: every point would be the same image; use --walk-label soft")
    if args.guidance_interval is not None:
        diffusion = run.diffusion
        sigmas = [diffusion.sigma(t) for t in diffusion.sampler_timesteps(args.sampler, args.sampling_steps)]
        lo, hi = args.guidance_interval
        if not any(lo < sigma <= hi for sigma in sigmas):
            raise RunError(f"--guidance-interval {lo:g},{hi:g} holds none of the sampled steps' noise levels (sigma "
                           f"{min(sigmas):.3g} to {max(sigmas):.3g} with --sampler {args.sampler}), so no step would "
                           "be guided: choose LO,HI around them, or leave the flag out")


def load_reference_files(run: Run, paths: list[str]) -> np.ndarray:
    """Image files (--reference-images) -> (R, H, W, C) uint8 at the run's image size and channels."""
    size, channels = run.model.image_size, run.model.image_channels
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path in paths:
        picture = open_image(path)
        changes = [f"converted from {picture.mode} to {'grey' if channels == 1 else 'RGB'}"] if picture.mode != mode else []
        changes += [f"resized from {picture.width}x{picture.height} to {size}x{size}"] if picture.size != (size, size) else []
        if changes:  # (what the model is shown is not the file as it is: said, once per file)
            print(f"note: --reference-images {path}: {', '.join(changes)}, as the run's images are", file=sys.stderr)
        images.append(np.asarray(picture.convert(mode).resize((size, size))).reshape(size, size, channels))
    return np.stack(images)


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
    walk_rows = rows_per_walk(args.walk_label, unet["conditions"]) * args.walks if args.between else 0
    counts = {f"--grid-per-class {args.grid_per_class}": k * args.grid_per_class,  # flag -> images held at once
              (f"--per-reference {args.per_reference}" if args.per_reference > refs else refs_flag):
                  refs * args.per_reference,
              (f"--points {args.points}" if args.points > walk_rows else f"--walks {args.walks}"):
                  walk_rows * args.points,
              # --boundary: a grid per walk, up to MAX_WALKS_PER_SAMPLE walks per sample in one round
              f"--n {args.n}": args.n or 0,
              f"--boundary-n {args.boundary_n}": (args.boundary_n or 0) * MAX_WALKS_PER_SAMPLE * BOUNDARY_GRID}
    requests = {flag: count * image for flag, count in counts.items()}
    batch = min(args.sampling_batch_size, max(counts.values()))  # a batch never holds more rows than the request
    requests[f"--sampling-batch-size {args.sampling_batch_size}"] = 2 * ACTIVATIONS * unet["base_channels"] * h * w * 4 * batch
    rundir.check_memory(requests)
