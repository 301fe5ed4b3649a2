"""The experiment's section augment (python -m experiments --sections augment).

At an equal number of added images, do boundary samples with soft
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
boundary samples (boundary.boundary_samples at each walk's own
crossing s*), each with hard labels and with soft labels from a
labeller trained on the scarce real digits only; the soft arms
also at AUGMENT_SWEEP images. Test accuracy, accuracy on the
confused pairs' classes, ECE; paired gains over real only and
boundary minus ordinary with 95% t-intervals over draws; the
distribution of s*; what each generated set carries
(`set_mechanism`: label noise, soft labels' error, diversity,
copies of the scarce digits). Runs on its own (no need of `between`).
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/augment.py: run python -m experiments --sections augment (from the repository root)")
import io
import json
import os
import sys

import numpy as np
import scipy.special

from plumbing import classifier
import metrics
import boundary
import conditions
import generation
from plumbing import outputs
from plumbing import rundir
import sample
from plumbing.data import MNIST_SAMPLE_TEST_PER_CLASS, write_atomically
from experiments.between import BETWEEN_GRID, BETWEEN_TOLERANCE
from experiments.common import (EVALUATOR_FILE, GUIDE_DESIGN, SAMPLER, SEEDS, SETS_VERSION, VAL_PER_CLASS, Context,
                                Scorer, cell, confused_pairs, diversity, guidance_at, guide_design_key, kept_json,
                                load_part, sampler, seed_rows, set_key, soft_confusion, spread, trained, write_figure)

# The section's settings (tests shrink them)
SCARCE = (10, 20)  # real training digits per class in the augmentation experiment
AUGMENT_REPLICATES = tuple((d, d) for d in range(5))  # (data seed: which scarce digits, seed: generation and classifier)
N_PAIRS = 3  # confused class pairs that get boundary samples (and mixup)
N_AUGMENT = 500  # images added in every arm
AUGMENT_SWEEP = (200,)  # further numbers added, for the arms of the question (ordinary / boundary, soft labels)
ORDINARY_W = 1.5  # the ordinary samples' guidance: not the narrowest w of the guidance curve
AUGMENT_STEPS, AUGMENT_BATCH, REAL_SHARE = 300, 64, 0.5  # every arm: 300 steps, half of each batch real digits
LABELLER_SEED = 100  # the soft-label classifier: the scarce real digits only, a seed no arm's classifier has
GENERATORS = ("scarce", "full")  # (i) label+pos trained on the scarce digits, (ii) compare's on all 4,000
BOUNDARY_ROUNDS = 3  # rounds of walks asked for until a boundary set has its count of crossed walks


# ---------------------------------------------------------------------------
# 4. Does generated data help a scarce-data classifier?
# ---------------------------------------------------------------------------
def scarce_method(method: str) -> str:
    """The boundary search's method name for the augmentation arms (boundary.BOUNDARY_METHODS), checked."""
    if method not in boundary.BOUNDARY_METHODS:
        sys.exit(f"python -m experiments: {method} is not a boundary method; use one of {', '.join(boundary.BOUNDARY_METHODS)}")
    return method



def boundary_set(run: rundir.Run, method: str, pairs: list, count: int, seed: int) -> dict:
    """`count` boundary samples (boundary.boundary_samples: one per walk that crossed, at the walk's own crossing s*
    of the guide's P(B) = 0.5), the pairs' two directions in turn, each labelled with its walk's start class A.
    Walks that never cross are asked for again (BOUNDARY_ROUNDS rounds at most) and counted in `crossed`."""
    directions = [d for a, b in pairs for d in ((a, b), (b, a))]
    members = len(boundary.GUIDE_DESIGNS[GUIDE_DESIGN].widths)  # seeds 1 + seed * members ..: never 0 (the evaluator's)
    guide = boundary.boundary_guide(run, seed=1 + seed * members, design=GUIDE_DESIGN)
    parts, crossed, have = [], [], 0
    for round_ in range(BOUNDARY_ROUNDS):
        walks = -(-(count - have) // len(directions))  # walks per direction still wanted, rounded up
        for i, (a, b) in enumerate(directions):
            part = boundary.boundary_samples(run, a, b, walks, method=method, seed=seed + 1000 * round_ + i,
                                           guide=guide, sampler=SAMPLER, grid=BETWEEN_GRID, tolerance=BETWEEN_TOLERANCE,
                                           point=boundary.GUIDE_DESIGNS[GUIDE_DESIGN].point)
            crossed.append(np.asarray(part.pop("crossed"), bool))
            parts.append(part)
            have += len(part["labels"])
        if have >= count:
            break
    if have < count:
        sys.exit(f"python -m experiments: only {have} of {count} boundary walks crossed on {run.dir}; raise BOUNDARY_ROUNDS")
    fields = ("images", "labels", "reference", "walk", "s", "endpoints", "prob", "width")
    out = {k: np.concatenate([p[k] for p in parts]) for k in fields}
    out["cond"] = {name: np.concatenate([p["cond"][name] for p in parts]) for name in parts[0]["cond"]}
    keep = np.random.default_rng(seed).permutation(have)[:count]  # every direction in about equal shares
    out = {k: (v[keep] if k != "cond" else {n: c[keep] for n, c in v.items()}) for k, v in out.items()}
    out["crossed_share"] = float(np.concatenate(crossed).mean())
    return out


def label_mode_set(run: rundir.Run, want: np.ndarray, seed: int, w: float = ORDINARY_W) -> dict:
    """Ordinary samples of the classes `want` from a label+pos model, each with a fresh reference: a random
    training digit of its class (sample.reference_of_each over the generator's own training digits), at w."""
    want = np.asarray(want, np.int64)
    reference = sample.reference_of_each(run.labels, want, np.random.default_rng(seed))
    cond = conditions.request_conditions(run, want, run.images[reference], reference)
    return dict(images=generation.generate(run, len(want), cond, sampler(guidance_at(list(cond), w)), seed), labels=want,
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
    with np.load(io.BytesIO(outputs.samples_npz(part)), allow_pickle=False) as f:
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
        sys.exit(f"python -m experiments: {run.dir} was not trained on the scarce set it is named after; move it away")
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
            run, method=method, pairs=pairs, n=largest, seed=seed, sampler=SAMPLER, labeller=LABELLER_SEED,
            **guide_design_key()),
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
    boundary search's (None: boundary.DEFAULT_BOUNDARY_METHOD)."""
    method = scarce_method(boundary.DEFAULT_BOUNDARY_METHOD if method is None else method)
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
        mechanism = [augment_mechanism(ctx, per_class, d, s) for d, s in AUGMENT_REPLICATES]
        result["sizes"][str(per_class)] = size_summary(replicates, mechanism, max((N_AUGMENT, *AUGMENT_SWEEP)))
    augment_figure(ctx, result)
    return result


def tested(replicate: dict, measure: str) -> int:
    """How many test digits a draw's test measure is a share of: all of them ("all"), or those of its confused
    pairs' classes ("confused_pairs"); data.MNIST_SAMPLE_TEST_PER_CLASS of each class."""
    classes = 10 if measure == "all" else len({c for p in replicate["pairs"] for c in p})
    return classes * MNIST_SAMPLE_TEST_PER_CLASS


MECHANISM_SHARES = ("read_as_label", "near_copy_share")  # set_mechanism's shares of the set's images
MECHANISM_BOUNDED = ("soft_distance",)  # a total variation: in [0, 1], no count


def size_summary(replicates: dict, mechanism: list[dict], set_size: int) -> dict:
    """One scarce size over its draws, from the per-draw results: each arm's test measures (accuracies: shares
    of the test digits; ECE: in [0, 1], no count), paired gains, set_mechanism's measures (`spread` each; shares
    of the set_size images of a set), the crossings' quantiles. A pure function of them (augment_summaries)."""
    reps = list(replicates.values())
    arms = list(reps[0]["accuracy"])
    return dict(
        replicates=replicates,
        summary={arm: {m: spread([r["accuracy"][arm][m] for r in reps],
                                 None if m == "ece" else [tested(r, m) for r in reps], share=True)
                       for m in ("all", "confused_pairs", "ece")} for arm in arms},
        gain_over_real={arm: paired(replicates, arm, "real only") for arm in arms[1:]},
        gain_over_real_confused={arm: paired(replicates, arm, "real only", "confused_pairs") for arm in arms[1:]},
        boundary_over_ordinary={name: paired(replicates, name.replace(" ordinary", " boundary"), name)
                                for name in arms if " ordinary soft" in name},
        mechanism={name: {m: spread([d[name][m] for d in mechanism], set_size if m in MECHANISM_SHARES else None,
                                    m in MECHANISM_SHARES + MECHANISM_BOUNDED) for m in measures}
                   for name, measures in mechanism[0].items()},
        crossing={gen: dict(zip(("q10", "q50", "q90"), np.quantile(
            np.concatenate([r["crossing"][gen] for r in reps]), [0.1, 0.5, 0.9]).tolist())) for gen in GENERATORS})


def augment_summaries(a: dict) -> dict:
    """size_summary of every scarce size again, from what results.json keeps of it (the per-draw results, and
    set_mechanism's per-draw values inside its spreads): what a results.json read back gets (its intervals as made now)."""
    set_size = max(a["n"], *a["sweep"])
    for size, m in a["sizes"].items():
        rows = {name: seed_rows(spreads) for name, spreads in m["mechanism"].items()}
        mechanism = [{name: rows[name][i] for name in rows} for i in range(len(m["replicates"]))]
        a["sizes"][size] = size_summary(m["replicates"], mechanism, set_size)
    return a


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
# The section's table (tables.md)
# ---------------------------------------------------------------------------
def augment_tables(a: dict) -> list[str]:
    def interval(m: dict) -> str:
        return f"{100 * m['mean']:+.1f} pts [{100 * m['low']:+.1f}, {100 * m['high']:+.1f}]"

    text = [f"Every arm adds {a['n']} images (the question's arms also {', '.join(map(str, a['sweep']))}) and makes the "
            f"same passes over the real digits ({AUGMENT_STEPS} steps, {100 * REAL_SHARE:.0f}% of each batch real). "
            f"Boundary samples: {a['method']}, at each walk's own crossing; ordinary samples: label+pos with fresh "
            f"references at w = {a['ordinary_w']:g}; soft labels: a classifier of the real digits alone (seed "
            f"{LABELLER_SEED}). Generators: scarce (trained on the scarce digits), full (on all 4,000). Mean ± std over "
            f"{len(AUGMENT_REPLICATES)} draws [95% interval: accuracies and ECE, a t-interval on the per-draw logits, "
            f"inside [0, 1]]; gains: paired differences with 95% t-intervals over draws.", "",
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
    text += ["", f"What the added sets carry (set_mechanism; mean ± std [95% t-interval] over the draws; on the per-draw logits, inside [0, 1], for the shares and the soft-label distance): read as its "
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
