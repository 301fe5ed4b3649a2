"""Samples at a class boundary: walks from a class-A to a class-B image, and each walk's crossing.

A walk moves the conditions from a class-A training image's to a class-B one's
(`walk_conditions`) with one noise for every point, so along a
walk only the conditions change (`walks`; sample.py --between). A guide
(small classifiers, never the one that scores the result) finds the point s*
of a walk where it reads P(B) = 0.5: a coarse grid, then bisection
(`find_crossings`). The boundary sample is s* itself, or (design v3, the
default) the most ambiguous of the points the search read on that walk
(`POINTS`, `most_ambiguous`); it is kept when every guide member reads it as
ambiguous between A and B and the guide puts most of its mass on A and B
(`trusted`; sample.py --boundary, `trusted_boundary_samples`). The guide is
made as its design says (`GUIDE_DESIGNS`): v1 and v3, three seeds of one
network read as trained (one guide: they differ in their point only); v2,
members of three widths each read through a temperature fitted on training
digits they did not train on (`boundary_guide`, `train_guide`,
`fit_temperature`).
"""
import dataclasses
import os

import numpy as np
import scipy.optimize
import scipy.special
import torch

from plumbing import classifier
import metrics
from conditions import request_conditions
from ddpm import COMPOSE
from generation import DEFAULT_ETA, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, generate
from plumbing.outputs import concatenate_parts, grid_png, take_rows
from plumbing.rundir import Run, RunError


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
    s_col = s.astype(np.float32)[:, None]  # (P, 1): s as a column
    cond = {}
    for name, value in ends.items():
        if value.dtype.kind == "f":
            cond[name] = ((1 - s_col) * value[0] + s_col * value[1]).astype(np.float32)  # (P, d)
        elif name != "label":
            cond[name] = np.full(len(s), value[0], dtype=value.dtype)  # (P,) image A's
        elif label == "soft":
            onehot = np.eye(run.config["unet"]["conditions"][name], dtype=np.float32)[value]  # (2, K)
            cond[name] = (1 - s_col) * onehot[0] + s_col * onehot[1]  # (P, K)
        elif label == "fixed":
            cond[name] = np.full(len(s), row_label, dtype=np.int64)
    if path == "features" and "pos" in cond:
        features = (1 - s_col) * run.space.features[ref_a] + s_col * run.space.features[ref_b]  # (P, D)
        cond["pos"] = run.space.standardize(run.space.transform(features)).astype(np.float32)
    return cond


def rows_per_walk(label: str, conditions: dict) -> int:
    """`walks`' rows per walk: 2 (label A, label B) for label "fixed" on a model with a label, else 1 (without a
    label the two rows would be the same images)."""
    return 2 if label == "fixed" and "label" in conditions else 1


def walks(run: Run, a: int, b: int, points: int, sampler: dict, seed: int, count: int = 1,
          label: str = "fixed", path: str = "line") -> dict:
    """`count` walks from class A to class B, each `points` images at s = 0 .. 1, generated together.

    label "fixed" makes two rows per walk, label A and label B, where the model has a label (`rows_per_walk`);
    "soft" and "none" one. Every image of one walk (both rows) shares its
    starting and per-step noise, so along a walk only the conditions change.
    Returns a part whose walk (N,), s (N,) and endpoints (N, 2) say which walk, point and pair each image is.
    """
    rng = np.random.default_rng(seed)
    s = np.linspace(0, 1, points, dtype=np.float32)
    rows = []  # one walk row: its conditions, label, walk id and endpoints
    row_labels = (a, b)[:rows_per_walk(label, run.config["unet"]["conditions"])]
    for walk in range(count):
        ref_a, ref_b = walk_endpoints(run, a, b, path, rng)
        for row_label in row_labels:
            rows.append((walk_conditions(run, ref_a, ref_b, s, label, row_label, path), row_label, walk,
                         (ref_a, ref_b)))
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




MAX_WALKS_PER_SAMPLE = 8  # --boundary tries up to 8 N walks for N trusted samples


# A found point is trusted (kept by --boundary) when the guide's members agree that it is ambiguous, each
# reading min(P(A), P(B)) >= metrics.AMBIGUOUS (0.2), and the guide sees A or B, nothing else: the members' mean
# P(A) + P(B) >= TRUST_MASS (a third class there is a wrong boundary). `trusted`. The probabilities are each
# member's softmax(z / T): T = 1 in designs v1 and v3, fitted in v2 (`fit_temperature`); see `trusted`.
TRUST_MASS = 0.9


WIDTH_LEVELS = (0.1, 0.9)  # the transition width: the s range over which P(B) goes from 0.1 to 0.9


# ---------------------------------------------------------------------------
# The guide: which classifiers choose the point, and how far their probabilities are believed
# ---------------------------------------------------------------------------
# Which point of a walk is the boundary sample (POINTS): "crossing", s* where the guide's mean P(B) = 0.5
# (find_crossings); "most ambiguous", of every point the search read on that walk (its grid, its bisection and
# s*), the one whose least ambiguous member is most ambiguous, max over points of min over members of
# min(P(A), P(B)), among the points `trusted` passes where there are any (`most_ambiguous`). The second costs no
# image more, keeps a trusted point on every walk where the first does (s* is one of its points), and on others
# where another point of the walk passes.
POINTS = ("crossing", "most ambiguous")


@dataclasses.dataclass(frozen=True)
class GuideDesign:
    """How a guide is made: one SmallClassifier per entry of `widths` (seeds seed, seed + 1, ..), trained on the
    run's training digits less a class-balanced `calibration_share` of them (`calibration_split`), each member
    read through its temperature fitted on that held-out share (`fit_temperature`; share 0: nothing held out,
    every T = 1); `point`, which point of a walk it keeps (POINTS)."""
    widths: tuple[int, ...]
    calibration_share: float
    point: str = "crossing"


GUIDE_DESIGNS = {
    # v1, the first default: three seeds of the evaluator's own network (width 16) on every training digit, read as
    # trained (T = 1). Its members share architecture, data and training with the evaluator, so its filter may keep
    # what that one kind of classifier finds ambiguous; v2 was made to do better and, measured, did not (below).
    "v1": GuideDesign(widths=(16, 16, 16), calibration_share=0.0),
    # v2: members that differ in capacity (widths 8, 12, 24: half to one and a half times the evaluator's), none of
    # them the width of a reader that scores boundary samples (the evaluator's 16, between.py's second reader's
    # 32), so that "every member finds it ambiguous" is said by three kinds of network, none a reader's sibling;
    # 10% of the digits held out, on which each member's temperature is fitted, so that the members' 0.2 in
    # `trusted` is the same calibrated 0.2 for a sharp wide member and a soft narrow one. Measured on the main
    # command's model (the compact U-Net, seeds 0 and 1, five pairs; python -m experiments.guide, results/guide/,
    # 2026-12-07): readers outside every guide find v2's trusted samples no more ambiguous than v1's (evaluator 65%
    # vs 65%, second reader 51% vs 53%, a pixel perceptron 40% vs 34%, nearest neighbours 44% vs 52%), at 5.0 walks
    # per trusted sample against 3.0 (its fitted T < 1 sharpen the members, so fewer points pass): kept for
    # comparison, not the default.
    "v2": GuideDesign(widths=(8, 12, 24), calibration_share=0.1),
    # v3, the default since 2026-12-07: v1's members (the same trained guide, members_design), but the point kept
    # is the walk's most ambiguous one to all of them (POINTS), not the crossing of their mean: a point where every
    # member is as far from sure as the walk allows, rather than one where the members' mean is balanced while one
    # of them may already be sure. Measured as v2 was, on the same guides and walks as v1: the readers outside
    # find its trusted samples about as ambiguous as v1's (64%, 50%, 38%, 55% against 65%, 53%, 34%, 52%; the
    # intervals overlap widely) at 2.2 walks per trusted sample against 3.0 (3.2 against 4.2 on 2-7, the hardest
    # pair): fewer walks for samples of the same ambiguity, so the default (chosen the day before on the small
    # U-Net, where it read the same: 2.3 walks against 3.5). None of the three generalises as hoped
    # (docs/EXPERIMENT.md, section 3).
    "v3": GuideDesign(widths=(16, 16, 16), calibration_share=0.0, point="most ambiguous"),
}


DEFAULT_GUIDE_DESIGN = "v3"  # sample.py --boundary's guide: chosen by python -m experiments.guide (above)


def members_design(design: str) -> str:
    """The design whose guide `design` reads: the first design of the same members (widths and calibration share).
    A guide is its members: designs that differ only in their point (v1 and v3) share one trained guide, so that
    comparing them compares the points alone."""
    spec = GUIDE_DESIGNS[design]
    return next(name for name, other in GUIDE_DESIGNS.items()
                if (other.widths, other.calibration_share) == (spec.widths, spec.calibration_share))


# Each guide's file in the run directory (so that comparing designs trains each guide once), by the design that
# trained it (members_design): guide.pt holds v1's members, which v3, the default, reads too;
# GUIDE_MEMBERS the default's members (trained with the seeds seed .. seed + GUIDE_MEMBERS - 1); GUIDE_STEPS each
# member's training steps (classifier.train_classifier's default, 300).
GUIDE_FILES = {"v1": "guide.pt", "v2": "guide-v2.pt"}
GUIDE_FILE = GUIDE_FILES[members_design(DEFAULT_GUIDE_DESIGN)]
GUIDE_MEMBERS, GUIDE_STEPS = len(GUIDE_DESIGNS[DEFAULT_GUIDE_DESIGN].widths), 300


CALIBRATION_SEED = 0  # which training digits the calibration split holds out: fixed, the same for every design
# Where fit_temperature searches T. The lower end matters where the held-out digits are all read right: the NLL
# then keeps falling as T -> 0 (sharper is always better on separable data), and 1/4 stops that.
TEMPERATURE_RANGE = (0.25, 20.0)


EVALUATOR_SEED = 0  # train_classifier's default seed: the run's classifier.pt, which scores; never a guide's


def calibration_split(labels: np.ndarray, share: float, seed: int = CALIBRATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The guide's calibration split of a run's training digits (labels (N,)): indices (fit, held), each sorted.

    held: the same number of digits of every class, round(share x the smallest class's count) and at least one,
    drawn without replacement with rng(seed); fit: all the others, on which the members train. share 0: nothing
    held out (fit = every digit). A class must keep at least one digit to train on."""
    labels = np.asarray(labels)
    if share == 0:
        return np.arange(len(labels)), np.zeros(0, np.int64)
    if not 0 < share < 1:
        raise ValueError(f"the guide's calibration share must lie in [0, 1), got {share}")
    classes, counts = np.unique(labels, return_counts=True)
    per_class = max(1, int(round(share * counts.min())))
    if counts.min() <= per_class:
        raise ValueError(f"the guide's calibration split holds out {per_class} digit(s) of every class, and class "
                         f"{classes[np.argmin(counts)]} has only {counts.min()}: it needs at least {per_class + 1}")
    rng = np.random.default_rng(seed)
    held = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                                   for k in classes]))
    return np.setdiff1d(np.arange(len(labels)), held), held


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of labels (N,) under softmax(logits / T), logits (N, K):

        NLL(T) = mean_i [ log sum_k exp(z_ik / T) - z_iy_i / T ]"""
    z = np.asarray(logits, np.float64) / temperature  # (N, K)
    return float(np.mean(scipy.special.logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 4.2): the T that
    minimises NLL(T) of held-out digits' logits (N, K) and labels (N,), one number per network.

    A bounded 1-d search over log T within TEMPERATURE_RANGE (scipy.optimize.minimize_scalar); NLL is convex in
    1 / T, so it has one minimum there. T > 1: the network was overconfident on digits it did not train on, and
    its probabilities are softened; T < 1: underconfident, sharpened; the argmax (its accuracy) is unchanged."""
    low, high = np.log(TEMPERATURE_RANGE)
    found = scipy.optimize.minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                                           bounds=(low, high), method="bounded", options=dict(xatol=1e-4))
    return float(np.exp(found.x))


def train_guide(images: np.ndarray, labels: np.ndarray, num_classes: int, design: GuideDesign, seeds: list[int],
                steps: int, device=None, tag: str = "") -> classifier.Ensemble:
    """A guide of `design` for uint8 images (N, H, W, C) and labels (N,): member i a SmallClassifier of
    design.widths[i] and seeds[i], trained on the digits outside the calibration split; then each member's
    temperature fitted on the held-out digits (fit_temperature), which no member trained on."""
    fit, held = calibration_split(labels, design.calibration_share)
    guide = classifier.train_ensemble(images[fit], labels[fit], seeds, num_classes, steps=steps, device=device,
                                      tag=tag, widths=list(design.widths))
    if len(held):
        guide.temperatures = [fit_temperature(member.logits(images[held]), labels[held]) for member in guide.members]
    return guide


def guide_tag(run: Run, design: str, steps: int) -> str:
    """What a kept guide was made for: the run, its members' steps and the design that trains them in full
    (members_design; a design edited in place is trained again). Not the point (which point of a walk is kept):
    the caller chooses it (trusted_boundary_samples' `point`, else the design's in GUIDE_DESIGNS)."""
    design = members_design(design)
    spec = GUIDE_DESIGNS[design]
    return (f"{run.config['run_id']} steps={steps} design={design} widths={','.join(map(str, spec.widths))} "
            f"calibration={spec.calibration_share:g} split_seed={CALIBRATION_SEED}")


def boundary_guide(run: Run, seed: int = 1, steps: int | None = None, design: str = DEFAULT_GUIDE_DESIGN,
                   report=None):
    """The guide of boundary_samples, made as GUIDE_DESIGNS[design] says (`train_guide`) from the run's training
    digits, its members' seeds seed, seed + 1, .. (never the evaluator's 0): a classifier.Ensemble whose prob is
    the mean of its members' softmax(z / T) (T = 1 in v1 and v3; fitted in v2).

    steps: each member's training steps (None: GUIDE_STEPS). Kept in the run directory as the file of the design
    that trains these members, GUIDE_FILES[members_design(design)] (v3 reads v1's guide.pt; atomically; reloaded
    with weights_only) for this run, seeds, steps and members; a file of another run, other seeds, steps or members,
    or of an older format (classifier.ENSEMBLE_VERSION), is trained again and replaced. report(line), if given, is
    told before a guide is trained (it takes a while).
    """
    if design not in GUIDE_DESIGNS:
        raise ValueError(f"unknown guide design {design!r}; choose one of {', '.join(GUIDE_DESIGNS)}")
    seeds, steps = list(range(seed, seed + len(GUIDE_DESIGNS[design].widths))), GUIDE_STEPS if steps is None else steps
    if EVALUATOR_SEED in seeds:
        raise ValueError(f"the guide's seeds {seeds} must not include the evaluator's seed {EVALUATOR_SEED}: "
                         "use seed >= 1")
    tag = guide_tag(run, design, steps)
    path = os.path.join(run.dir, GUIDE_FILES[members_design(design)])
    if os.path.exists(path):
        try:
            guide = classifier.load_ensemble(path, run.device)
            if guide.seeds == seeds and guide.tag == tag:
                return guide
        except ValueError:
            pass  # a damaged or older guide file (ours: RUN_FILES) is trained again and replaced
    if report:
        report(f"training the guide: {len(seeds)} classifiers on the run's {len(run.images)} training digits "
               f"(kept as {path} for later calls)")
    guide = train_guide(run.images, run.labels, len(run.config["data"]["class_names"]), GUIDE_DESIGNS[design], seeds,
                        steps, run.device, tag)
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
    fix = "move it away, and sample.py --eval trains this run's own"
    return [classifier.load_classifier(path, run.device, fix)] if os.path.exists(path) else []


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


def search_sampler(method: str, sampler: dict | None) -> dict:
    """The sampler a boundary search draws its walks with: generate's defaults (sample.py's) updated by `sampler`,
    its guidance in the method's form (method_guidance)."""
    sampler = {**dict(name=DEFAULT_SAMPLER, steps=DEFAULT_STEPS, eta=DEFAULT_ETA, guidance=None), **(sampler or {})}
    return dict(sampler, guidance=method_guidance(method, sampler["guidance"]))


def walk_seed(seed: int, walk: int) -> int:
    """The noise seed of walk `walk` of a call with `seed`: the same walk, the same noise, in any batch."""
    return int(np.random.SeedSequence([seed, walk]).generate_state(1)[0])


def boundary_endpoints(run: Run, a: int, b: int, seed: int, walk_ids: np.ndarray) -> np.ndarray:
    """(W, 2) training images walk i goes between: the i-th draw of walk_endpoints from rng(seed), path "line"."""
    rng = np.random.default_rng(seed)
    drawn = [walk_endpoints(run, a, b, "line", rng) for _ in range(int(walk_ids.max()) + 1)]
    return np.array(drawn, np.int64)[walk_ids]


def walk_points_conditions(run: Run, endpoints: np.ndarray, walk: np.ndarray, s: np.ndarray, method: str,
                           a: int) -> dict:
    """The conditions at points s (M,) of walks walk (M,) (endpoints (W, 2) by walk id): name -> (M, ...)."""
    cond = {}
    for w in np.unique(walk):
        rows = np.flatnonzero(walk == w)
        part = walk_conditions(run, *endpoints[w], s[rows], BOUNDARY_LABEL_MODE[method], a, "line")
        for name, value in part.items():
            cond.setdefault(name, np.zeros((len(s), *value.shape[1:]), value.dtype))[rows] = value
    return cond


@torch.no_grad()
def walk_images(run: Run, endpoints: np.ndarray, walk: np.ndarray, s: np.ndarray, method: str, a: int,
                sampler: dict, seed: int) -> tuple[np.ndarray, dict]:
    """Images at points s (M,) of walks walk (M,) (endpoints (W, 2) by walk id): uint8 (M, H, W, C), cond.

    Each row's noise comes from walk_seed(seed, its walk) (ddpm.RowNoise): a walk's image is a function of s
    alone, whichever other rows share its batch."""
    cond = walk_points_conditions(run, endpoints, walk, s, method, a)
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


def guide_readings(guide, images: np.ndarray, a: int, b: int) -> np.ndarray:
    """Each guide member's (P(a), P(b)) of uint8 images (N, H, W, C): (N, M, 2), from guide.member_prob (for a
    classifier.Ensemble, each member's softmax(z / T), T = 1 in v1 and v3): what `trusted` reads."""
    return guide.member_prob(images)[:, :, [a, b]].transpose(1, 0, 2)  # (M, N, K) -> (N, M, 2)


def trusted(guide_prob: np.ndarray) -> np.ndarray:
    """guide_prob (N, M, 2): each guide member's (P(A), P(B)) at a found point -> (N,) bool: every member reads it
    as ambiguous (min(P(A), P(B)) >= metrics.AMBIGUOUS) and the members' mean P(A) + P(B) >= TRUST_MASS.

    The readings are each member's softmax(z / T) (`guide_readings`): T = 1 in v1 and v3 (the default); in v2 the
    temperature fitted on digits the member did not train on, which gives the threshold its meaning: of the
    held-out digits a calibrated member reads at P(A) = 0.2, about one in five is an A, whatever the member's
    width. So "every member gives each of A and B at least 0.2" asks the same odds of every member; read as
    trained, it would ask most of the sharpest member (a more confident network reads lower probabilities off the
    same evidence), and members that differ differ in sharpness. The mass rule reads the same probabilities."""
    members_agree = guide_prob.min(axis=2).min(axis=1) >= metrics.AMBIGUOUS  # (N,)
    on_a_and_b = guide_prob.sum(axis=2).mean(axis=1) >= TRUST_MASS  # (N,)
    return members_agree & on_a_and_b


def most_ambiguous(readings: np.ndarray) -> int:
    """Of the points one walk's search read, the one its guide members find most ambiguous (POINTS): readings
    (P, M, 2), each point's members' (P(A), P(B)) -> the index of the point of largest min_m min(P(A), P(B)) among
    those `trusted` passes, or among all where it passes none."""
    ambiguity = readings.min(axis=2).min(axis=1)  # (P,), at most 0.5: + 1 ranks every trusted point first
    return int(np.argmax(np.where(trusted(readings), ambiguity + 1, ambiguity)))


def boundary_samples(run: Run, a: int, b: int, walks: int, method: str = DEFAULT_BOUNDARY_METHOD, seed: int = 0,
                     guide=None, sampler: dict | None = None, tolerance: float = BOUNDARY_TOLERANCE,
                     first_walk: int = 0, evaluators: list | None = None, grid: int = BOUNDARY_GRID,
                     point: str | None = None) -> dict:
    """Samples on the boundary between classes a and b: `walks` walks (ids first_walk ..) from a class-a to a
    class-b training image, each with one noise; for each, find_crossings' s* where the guide's P(b) = 0.5.

    guide: an object with .prob(images) -> (N, K) and .member_prob(images) -> (M, N, K) (classifier.Ensemble;
    None: boundary_guide(run)); never one of `evaluators` (None: the run's classifier.pt), which score the
    result. sampler: as generate's, guidance None or a number w for the method's own form, or a dict used as
    given (method_guidance).
    point: which point of a walk that crossed is its sample (POINTS; None: the default design's): s* itself, or
    the most ambiguous of the points its search read, grid, bisection and s* (`most_ambiguous`, on the members'
    readings there: a walk whose s* is trusted keeps a trusted point), at no image more.
    Returns a part with ONE row per walk that crossed: images, labels (= a), reference -1, cond at the point, walk,
    s (the point: s* for "crossing"), endpoints (N, 2), prob (N, 2) the guide's (P(a), P(b)) there, guide_prob
    (N, M, 2) each member's, trusted (N,) bool (`trusted`: what --boundary keeps), width (N,) (transition_width,
    around s*); crossed (walks,) bool for every walk tried; method and guidance (the guidance used,
    method_guidance's form).
    """
    check_boundary(run, a, b, method)
    point = GUIDE_DESIGNS[DEFAULT_GUIDE_DESIGN].point if point is None else point
    if point not in POINTS:
        raise ValueError(f"unknown boundary point {point!r}; choose one of {', '.join(POINTS)}")
    if walks < 1 or first_walk < 0:
        raise ValueError(f"boundary_samples needs walks >= 1 and first_walk >= 0, got {walks} and {first_walk}")
    guide = boundary_guide(run) if guide is None else guide
    check_guide(guide, run_evaluator(run) if evaluators is None else evaluators)
    sampler = search_sampler(method, sampler)
    ids = np.arange(first_walk, first_walk + walks)
    endpoints = np.zeros((ids[-1] + 1, 2), np.int64)
    endpoints[ids] = boundary_endpoints(run, a, b, seed, ids)

    read = {w: [] for w in range(walks)}  # "most ambiguous": walk -> every (s, image, members' readings) read

    def prob_b(walk, s):  # walk (M,) local index, s (M,) -> the guide's P(b) (M,)
        s = np.asarray(s, np.float32)
        images, _ = walk_images(run, endpoints, ids[walk], s, method, a, sampler, seed)
        if point == "most ambiguous":
            for w, s_w, image, r in zip(walk, s, images, guide_readings(guide, images, a, b)):  # r: (members, 2)
                read[int(w)].append((s_w, image, r))
        return guide.prob(images)[:, b]

    found = find_crossings(prob_b, walks, grid, tolerance)
    live = np.flatnonzero(found["crossed"])
    s_star = chosen = found["s"][live].astype(np.float32)
    if len(live):
        images, cond = walk_images(run, endpoints, ids[live], s_star, method, a, sampler, seed)  # (N, H, W, C) at s*
        readings = guide_readings(guide, images, a, b)  # (N, M, 2)
        p_star = readings.mean(axis=1).astype(np.float32)[:, 1]  # the guide's P(b) at s* (N,), for the width
        if point == "most ambiguous":  # of each walk's read points and s*, the most ambiguous (trusted ones first)
            candidates = [read[w] + [(s_star[i], images[i], readings[i])] for i, w in enumerate(live.tolist())]
            picked = [c[most_ambiguous(np.stack([r for _, _, r in c]))] for c in candidates]
            chosen = np.array([s for s, _, _ in picked], np.float32)
            images, readings = np.stack([x for _, x, _ in picked]), np.stack([r for _, _, r in picked])
            cond = walk_points_conditions(run, endpoints, ids[live], chosen, method, a)
        prob = readings.mean(axis=1).astype(np.float32)  # (N, 2), = guide.prob's (P(a), P(b))
        guide_prob = readings.astype(np.float32)
    else:
        images, prob, p_star = np.zeros((0, *run.images.shape[1:]), np.uint8), np.zeros((0, 2), np.float32), []
        guide_prob = np.zeros((0, len(getattr(guide, "members", [guide])), 2), np.float32)
        cond = walk_conditions(run, *endpoints[ids[0]], np.zeros(0, np.float32), BOUNDARY_LABEL_MODE[method], a,
                               "line")
    width = np.array([transition_width(found["points"][w] + [(s, p)], s) for w, s, p in zip(live, s_star, p_star)],
                     np.float32).reshape(-1)
    return dict(images=images, labels=np.full(len(live), a, np.int64), reference=np.full(len(live), -1, np.int64),
                cond=cond, walk=ids[live].astype(np.int64), s=chosen, endpoints=endpoints[ids[live]], prob=prob,
                guide_prob=guide_prob, trusted=trusted(guide_prob), width=width, crossed=found["crossed"],
                method=method, guidance=sampler["guidance"])


def boundary_grid(run: Run, part: dict) -> bytes:
    """boundary.png: a row per sample: image A, the found sample, image B."""
    rows = [np.stack([run.images[ref_a], image, run.images[ref_b]])
            for image, (ref_a, ref_b) in zip(part["images"], part["endpoints"])]
    return grid_png(rows)


def walks_to_try(wanted: int, kept: int, tried: int) -> int:
    """The next round's walks for `wanted` more trusted samples: at first one per sample; then as many as the rate
    so far says (at least 1 in MAX_WALKS_PER_SAMPLE), but no more than all the rounds before it together, so that
    a small unlucky first round does not send the next one to the whole budget (the rate is measured again on
    twice the walks). Walk i is the same walk, endpoints and noise, in any round; only the float rounding of
    another batch size (and so, at a near tie, the point kept) can differ."""
    if not tried:
        return wanted
    rate = max(kept / tried, 1 / MAX_WALKS_PER_SAMPLE)
    return min(int(np.ceil(wanted / rate)), tried)


def trusted_boundary_samples(run: Run, a: int, b: int, n: int, method: str = DEFAULT_BOUNDARY_METHOD,
                             seed: int = 0, guide=None, sampler: dict | None = None, report=None,
                             point: str | None = None) -> tuple[dict, dict]:
    """Up to n trusted boundary samples (`trusted`), from rounds of boundary_samples' walks (ids 0, 1, ..), at
    most MAX_WALKS_PER_SAMPLE * n walks. Returns the part of the first n trusted samples and the counts:
    tried (walks), crossed (walks whose guide crossed), trusted (found points that passed), guidance (used).
    report: None, or a function called with one line of progress after each round (sample.py prints it).
    point: which point of a walk is its sample (boundary_samples; None: the default design's)."""
    guide = boundary_guide(run) if guide is None else guide
    parts, tried, kept, budget = [], 0, 0, MAX_WALKS_PER_SAMPLE * n
    while kept < n and tried < budget:
        walks = min(budget - tried, walks_to_try(n - kept, kept, tried))
        parts.append(boundary_samples(run, a, b, walks, method, seed, guide, sampler, first_walk=tried, point=point))
        tried, kept = tried + walks, kept + int(parts[-1]["trusted"].sum())
        if report is not None:
            crossed = sum(len(part["walk"]) for part in parts)
            report(f"--boundary {a} {b}: round {len(parts)}: {walks} walks; so far {tried} walks (at most {budget}), "
                   f"{crossed} crossed, {kept} of {n} trusted")
    found = concatenate_parts([p for p in parts if len(p["walk"])] or parts[:1])
    counts = dict(tried=tried, crossed=len(found["walk"]), trusted=kept, guidance=parts[0]["guidance"])
    return take_rows(found, np.flatnonzero(found["trusted"])[:n]), counts


def search_settings(guide) -> dict:
    """What meta.json records of the search: the grid, the bisection's tolerance, the guide's members (seeds, what
    they were made for, each one's width and temperature where it has them) and the trust rule."""
    return dict(grid=BOUNDARY_GRID, tolerance=BOUNDARY_TOLERANCE, guide_seeds=guide.seeds,
                guide_tag=getattr(guide, "tag", ""),
                guide_widths=[m.model.config.get("width") for m in getattr(guide, "members", [])],
                guide_temperatures=list(getattr(guide, "temperatures", [])),
                trust=dict(member_min=metrics.AMBIGUOUS, mass=TRUST_MASS))
