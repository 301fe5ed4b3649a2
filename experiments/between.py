"""The experiment's section between (python -m experiments --sections between).

Samples at a class boundary (boundary.boundary_samples), measured against the case whose answer is known: real
digits that are themselves ambiguous.

Per walk (one noise; only the conditions move from a class-A to a class-B training digit) the point s* where a
guide (classifiers with seeds other than the evaluator's) reads P(B) = 0.5, by a 5-point grid and bisection to
1/64; pairs 4-9, 3-5, 7-1 and the two a classifier confuses most on a validation split of training digits; 20
walks per pair on each of the comparison's three label+pos models; methods soft labels, the position alone and
product composition, each with eta 1 and 0 at w = 1 and the default w, and with guidance over the middle noise
range only. Read at s* by the evaluator and by a second classifier (another seed and width; both trained on the
training digits without the floor's): mean min(P(A), P(B)), the share at 0.2 or more, P(A) + P(B), how often
the second reader agrees that a sample the evaluator finds ambiguous is ambiguous, the transition width, the
crossing share, the nearest-training ratio in the evaluator's features and in pixels.

The real reference (`real_reference`): per pair, the real digits of A and B among the 2,000 that neither reader
trained on (the 1,000 test digits and the floor's 1,000) that the evaluator finds ambiguous, and at least the
REAL_AT_LEAST it finds most ambiguous, with exactly the same measures. The criterion (`boundary_success`) asks
for ambiguity by the evaluator and nearness to the data *as real ambiguous digits are near it*: the samples'
median nearest-training ratio not above the upper end of the real reference's 95% interval.

The filter (`trusted_scores`): for soft labels and the position alone at the default w and eta 1, the sets are made again with
each guide member's reading (boundary.boundary_samples' guide_prob and trusted: what `sample.py --boundary` kept
with design v1, at s*; its default is v3 since 2026-12-07, python -m experiments.guide),
and the evaluator's and the second reader's ambiguous share among the trusted samples is set against all found
points, with the walks tried per trusted sample.

Time from nothing on the 2-core CPU: 15 variants x 5 pairs x 3 seeds x 20 walks x 9 images = 40,500 images,
about 80,000 network rows (1 per image at w = 1, 2 with label or position guidance, 3 with composition), plus 9
guide members and 2 classifiers: 26.4 min measured (2026-12-02; 33 estimated from the counts); the filter's 2
variants add a seventh of that. From the kept sets (rescoring, with the models trained), a few minutes.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/between.py: run python -m experiments --sections between (from the repository root)")
import os

import numpy as np
import scipy.spatial
import scipy.special

from plumbing import classifier
import boundary
import generation
import metrics
from plumbing import outputs
from plumbing import rundir
from experiments.common import (DEFAULT_W, GUIDE_DESIGN, SAMPLER, SEEDS, TABLE_WEIGHTS, VAL_PER_CLASS, Context,
                                confused_pairs, guide_design_key, kept_classifier, kept_json, kept_set, pixels, set_key,
                                soft_confusion, write_figure, write_png)

# The section's settings (tests shrink them)
PAIRS = ((4, 9), (3, 5), (7, 1))  # the boundary walks' class pairs
WALKS, POINTS = 20, 9  # walks per pair and method; points per walk (odd: s = 0.5 is one)
WALK_SEED = 0
POS_GUIDANCE = {"label": 1.0, "pos": 3.0}  # per-condition guidance: out(label) + 3 (out(label, pos) - out(label))


# ---------------------------------------------------------------------------
# 3. Class-boundary samples: each walk's own crossing (boundary.boundary_samples), read by readers that did not choose it
# ---------------------------------------------------------------------------
# The interval of noise levels sigma_t = sqrt((1 - abar_t) / abar_t) where the middle-range variant guides
# (Kynkaanniemi et al. 2024, their EDM interval); sampler key "guidance_interval" of ddpm.Diffusion.sample.
GUIDANCE_INTERVAL = (0.28, 5.42)
BOUNDARY_STEM = "label-pos"  # every method on the label+pos models (position shared; soft label or composition)
CONFUSED_PAIRS = 2  # pairs added to PAIRS: the most confused on a validation split of training digits
# The search, coarser than sample.py's: 5 grid points, 3 halvings to 1/64: 9 images per walk (the budget, below).
BETWEEN_GRID, BETWEEN_TOLERANCE = 5, 1 / 64
SECOND_READER_SEED, SECOND_READER_WIDTH = 7, 32  # the independent second classifier: another seed and width
SECOND_READER_FILE = "second-reader-without-floor.pt"  # (the older second_reader.pt trained on the floor's digits too)
SHOWN_REAL = 6  # most ambiguous real digits (and boundary samples) per pair in the figure
REAL_AT_LEAST = 20  # the real reference: every unseen digit of A or B the evaluator finds ambiguous, at least 20
BOOTSTRAP = 2000  # resamples of the real reference's digits for its intervals (what varies there: which digits)
CURRENT_DEFAULT = f"{boundary.DEFAULT_BOUNDARY_METHOD}, w {DEFAULT_W:g}, eta {generation.DEFAULT_ETA:g}"  # --boundary's
# The filter measured on: --boundary's default method and the position alone (composition, three network rows per
# image, is left out for time: 2 x 15 sets made again take about 12 min on the 2-core CPU)
TRUSTED_VARIANTS = (CURRENT_DEFAULT, f"position, w {DEFAULT_W:g}, eta 1")


def between_methods() -> dict:
    """name -> (boundary method, eta, w, guidance interval): each method with eta 1 and 0 at every TABLE_WEIGHTS w,
    and with guidance over the middle noise range only (eta 1, the default w)."""
    out = {}
    for method in boundary.BOUNDARY_METHODS:
        for w in TABLE_WEIGHTS:
            for eta in (1.0, 0.0):
                out[f"{method}, w {w:g}, eta {eta:g}"] = (method, eta, w, None)
        out[f"{method}, w {DEFAULT_W:g}, eta 1, middle-range guidance"] = (method, 1.0, DEFAULT_W, GUIDANCE_INTERVAL)
    return out


def boundary_success(reader: dict, nn_ratio: float | None, real_high: float | None) -> dict:
    """The criterion for one method and pair, read by the evaluator (not the guide) at each walk's s*: mean
    min(P(A), P(B)) >= 0.25, at least 60% of walks at 0.2 or more, mean P(A) + P(B) >= 0.9, and the samples'
    median nearest-training ratio not above real ambiguous digits' (the upper end of the real reference's 95%
    interval, `real_reference`). reader: metrics.boundary_statistics; nn_ratio: median over the samples."""
    checks = dict(ambiguous=reader["ambiguity"] is not None and reader["ambiguity"] >= 0.25,
                  mostly_ambiguous=reader["ambiguous_share"] is not None and reader["ambiguous_share"] >= 0.6,
                  stays_on_a_and_b=reader["kept_mass"] is not None and reader["kept_mass"] >= 0.9,
                  near_the_data=nn_ratio is not None and real_high is not None and nn_ratio <= real_high)
    return dict(checks, success=all(checks.values()))


CHECKS = ("ambiguous", "mostly_ambiguous", "stays_on_a_and_b", "near_the_data")


def second_reader(ctx: Context) -> classifier.FeatureNetwork:
    """An independent digit classifier: another seed and width, trained on the evaluator's digits (the training
    digits without the floor's), so that neither reader has seen a digit of the real reference."""
    fit = ctx.digits.evaluator_train()
    return kept_classifier(os.path.join(ctx.runs, SECOND_READER_FILE), ctx.digits.images[fit], ctx.digits.labels[fit],
                           seed=SECOND_READER_SEED, width=SECOND_READER_WIDTH)


def between_pairs(ctx: Context) -> list[tuple[int, int]]:
    """PAIRS and the CONFUSED_PAIRS pairs a classifier trained on the other training digits confuses most on a
    validation split (VAL_PER_CLASS per class) of the training digits. Chosen once and kept in
    between/pairs.json: the classifier's training is not bit-reproducible across CPUs, and the pairs name the kept
    sets, so a rescoring on another machine reads the same pairs instead of choosing again."""
    def choose():
        val = ctx.digits.per_class(ctx.digits.train, VAL_PER_CLASS, WALK_SEED)
        rest = np.setdiff1d(ctx.digits.train, val)
        net = kept_classifier(os.path.join(ctx.runs, "pairs_classifier.pt"), ctx.digits.images[rest],
                              ctx.digits.labels[rest], seed=0)
        prob = scipy.special.softmax(net.logits(ctx.digits.images[val]), axis=1)
        taken = {tuple(sorted(p)) for p in PAIRS}
        extra = [p for p in confused_pairs(soft_confusion(prob, ctx.digits.labels[val]), 45) if p not in taken]
        return [list(p) for p in PAIRS] + [[int(c) for c in p] for p in extra[:CONFUSED_PAIRS]]
    key = dict(pairs=[list(p) for p in PAIRS], confused=CONFUSED_PAIRS, val_per_class=VAL_PER_CLASS, seed=WALK_SEED)
    return [tuple(p) for p in kept_json(os.path.join(ctx.out, "between", "pairs.json"), key, choose)]


# ---------------------------------------------------------------------------
# Nearness to the data, and the real digits that are themselves ambiguous
# ---------------------------------------------------------------------------
class Nearness:
    """Nearest-training ratios against the models' training digits: an image's distance to its nearest training
    digit over the test digits' median distance to theirs (1: as near as a held-out real digit), in the
    evaluator's features and in pixels."""

    def __init__(self, ctx: Context, train_images: np.ndarray):
        self.ctx, self.train_images = ctx, train_images
        self.train = (ctx.scorer.training_features(train_images), pixels(train_images))  # (n, 128), (n, H*W*C)
        tests = (ctx.scorer.test_features, pixels(ctx.scorer.test_images))
        self.baseline = [float(np.median(metrics.nearest_distance(t, x))) for t, x in zip(tests, self.train)]

    def ratios(self, images: np.ndarray, own_rows: np.ndarray | None = None,
               features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(features (N,), pixels (N,)). own_rows (N,): the image's own row among the training digits (-1: none),
        left out of its search (a floor digit is one of the diffusion models' training digits). features: the
        images' evaluator features (N, 128) where the caller has them (`read`), else computed here."""
        features = self.ctx.scorer.features(images)[0] if features is None else features
        out = []
        for x, train, base in zip((features, pixels(images)), self.train, self.baseline):
            d = scipy.spatial.distance.cdist(x, train)  # (N, n)
            if own_rows is not None:
                mine = np.flatnonzero(own_rows >= 0)
                d[mine, own_rows[mine]] = np.inf
            out.append(d.min(axis=1) / base)
        return out[0], out[1]


def read(ctx: Context, second, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two readers on uint8 images (N, H, W, C): the evaluator's features (N, 128) and probabilities (N, 10),
    the second reader's probabilities (N, 10); empty arrays for no image."""
    if not len(images):
        return np.zeros((0, 0)), np.zeros((0, 10)), np.zeros((0, 10))
    features, prob = ctx.scorer.features(images)
    return features, prob, scipy.special.softmax(second.logits(images), axis=1)


def unseen_real(ctx: Context) -> np.ndarray:
    """The real digits neither reader trained on: the test digits and the floor's (indices into the 5,000)."""
    return np.concatenate([ctx.digits.test, ctx.digits.floor()])


def agreement(low_first: np.ndarray, low_second: np.ndarray) -> dict:
    """Of the digits the first reader finds ambiguous (min(P(A), P(B)) >= 0.2), how many the second does too."""
    first = low_first >= metrics.AMBIGUOUS
    both = int((first & (low_second >= metrics.AMBIGUOUS)).sum())
    return dict(n=int(first.sum()), both=both, share=both / int(first.sum()) if first.any() else None)


def bootstrap_median(values: np.ndarray, seed: int = 0) -> list[float]:
    """95% percentile interval of the median over BOOTSTRAP resamples of the values (the digits)."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, (BOOTSTRAP, len(values))), axis=1)
    return np.percentile(medians, [2.5, 97.5]).tolist()


def real_reference(ctx: Context, near: Nearness, second, guide, a: int, b: int) -> dict:
    """The real digits of A and B (of the 2,000 neither reader trained on) the evaluator finds ambiguous, and at
    least REAL_AT_LEAST of them, the most ambiguous first, measured exactly as boundary samples are: both readers'
    boundary_statistics, their agreement, the nearest-training ratios (each median with a bootstrap interval over
    the digits); and the share of them, among the test digits (the guide trained on the floor's), that the
    filter `boundary.trusted` keeps."""
    rows = unseen_real(ctx)
    rows = rows[np.isin(ctx.digits.labels[rows], [a, b])]
    images = ctx.digits.images[rows]
    features, prob, prob2 = read(ctx, second, images)  # (n, 128), (n, 10), (n, 10)
    low, low2 = np.minimum(prob[:, a], prob[:, b]), np.minimum(prob2[:, a], prob2[:, b])
    n_ambiguous = int((low >= metrics.AMBIGUOUS).sum())
    take = np.argsort(-low, kind="stable")[:max(REAL_AT_LEAST, n_ambiguous)]
    where = {int(d): i for i, d in enumerate(ctx.digits.train)}  # a floor digit's row among the training digits
    own = np.array([where.get(int(d), -1) for d in rows[take]])
    nn, nn_pixels = near.ratios(images[take], own, features[take])
    every = np.ones(len(take), bool)
    test = np.isin(rows[take], ctx.digits.test)
    readings = guide.member_prob(images[take][test])[:, :, [a, b]].transpose(1, 0, 2)  # (n_test, M, 2)
    return dict(n_unseen=int(len(rows)), n_ambiguous=n_ambiguous, share=n_ambiguous / len(rows), n=int(len(take)),
                digits=rows[take].tolist(), min_evaluator=low[take].round(4).tolist(),
                evaluator=metrics.boundary_statistics(prob[take, a], prob[take, b], every),
                second=metrics.boundary_statistics(prob2[take, a], prob2[take, b], every),
                agreement=agreement(low[take], low2[take]),
                nn_ratio_median=float(np.median(nn)), nn_ratio_interval=bootstrap_median(nn),
                nn_ratio_pixels_median=float(np.median(nn_pixels)), nn_ratio_pixels_interval=bootstrap_median(nn_pixels),
                trusted_share=float(boundary.trusted(readings).mean()) if len(readings) else None,
                n_trusted_checked=int(len(readings)))


# ---------------------------------------------------------------------------
# One method: the readers at each walk's s*, pooled over the seeds
# ---------------------------------------------------------------------------
def walk_scores(ctx: Context, near: Nearness, part: dict, a: int, b: int, second) -> dict:
    """One method, pair and seed: the evaluator's and the second reader's boundary_statistics at each walk's s*,
    the guide's, and each sample's nearest-training ratios (evaluator features and pixels, over the test digits')."""
    crossed = np.isin(np.arange(WALKS), part["walk"])
    some = len(part["images"]) > 0
    features, prob, second_prob = read(ctx, second, part["images"])  # (N, 128), (N, 10), (N, 10)
    out = dict(evaluator=metrics.boundary_statistics(prob[:, a], prob[:, b], crossed),
               second=metrics.boundary_statistics(second_prob[:, a], second_prob[:, b], crossed),
               # the width is the guide's: the s range of ITS P(B) from 0.1 to 0.9 (boundary.transition_width)
               guide=metrics.boundary_statistics(part["prob"][:, 0], part["prob"][:, 1], crossed, part.get("width")),
               s_median=float(np.median(part["s"])) if some else None, nn_ratio=[], nn_ratio_pixels=[])
    if some:
        nn, nn_pixels = near.ratios(part["images"], features=features)
        out["nn_ratio"], out["nn_ratio_pixels"] = nn.round(3).tolist(), nn_pixels.round(3).tolist()
    out["min_evaluator"] = np.minimum(prob[:, a], prob[:, b]).round(4).tolist()
    out["min_second"] = np.minimum(second_prob[:, a], second_prob[:, b]).round(4).tolist()
    return out


def pooled(per_seed: list[dict], crossed_total: int, walks_total: int) -> dict:
    """The seeds' samples together: means weighted by samples, shares over all walks, the readers' agreement,
    the median nearest-training ratios (and a t-interval over the seeds' medians)."""
    def mean(reader, key):
        pairs = [(r[reader][key], r[reader]["n_samples"]) for r in per_seed if r[reader][key] is not None]
        n = sum(k for _, k in pairs)
        return float(sum(v * k for v, k in pairs) / n) if n else None
    out = {reader: {key: mean(reader, key) for key in ("ambiguity", "ambiguous_share", "kept_mass", "width_median")}
           for reader in ("evaluator", "second", "guide")}
    for reader in out:
        out[reader]["crossing_share"] = crossed_total / walks_total
        out[reader].update(seed_intervals([r[reader] for r in per_seed]))
    out["agreement"] = agreement(*(np.array([v for r in per_seed for v in r[key]]) for key in ("min_evaluator", "min_second")))
    for key in ("nn_ratio", "nn_ratio_pixels"):
        ratios = [v for r in per_seed for v in r[key]]
        out[f"{key}_median"] = float(np.median(ratios)) if ratios else None
        medians = [float(np.median(r[key])) for r in per_seed if r[key]]
        out[f"{key}_interval"] = list(metrics.t_interval(medians)[1:]) if len(medians) == len(per_seed) > 1 else None
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


# ---------------------------------------------------------------------------
# The filter of sample.py --boundary: what the trusted samples are worth, and what they cost
# ---------------------------------------------------------------------------
def trusted_scores(ctx: Context, near: Nearness, part: dict, a: int, b: int, second) -> dict:
    """One set made with the guide members' readings: found points and the trusted ones among them, each read by
    the evaluator and the second reader (ambiguous: min(P(A), P(B)) >= 0.2), the trusted ones' nearness."""
    keep = part["trusted"].astype(bool)
    features, prob, prob2 = read(ctx, second, part["images"])  # (N, 128), (N, 10), (N, 10)
    out = dict(walks=WALKS, found=int(len(keep)), trusted=int(keep.sum()))
    for reader, p in (("evaluator", prob), ("second", prob2)):
        ambiguous = np.minimum(p[:, a], p[:, b]) >= metrics.AMBIGUOUS
        out[reader] = dict(found=int(ambiguous.sum()), trusted=int(ambiguous[keep].sum()))
    out["nn_ratio_trusted"] = (near.ratios(part["images"][keep], features=features[keep])[0].round(3).tolist()
                               if keep.any() else [])
    return out


def trusted_pooled(per_seed: list[dict]) -> dict:
    """The seeds together: found, trusted, walks per trusted sample, each reader's ambiguous share among the found
    points and among the trusted ones (95% logit t-intervals over the seeds where every seed has some)."""
    total = {k: sum(r[k] for r in per_seed) for k in ("walks", "found", "trusted")}
    out = dict(total, walks_per_trusted=total["walks"] / total["trusted"] if total["trusted"] else None)
    if len(per_seed) > 1:
        out["trusted_share_interval"] = list(metrics.logit_t_interval([r["trusted"] for r in per_seed],
                                                                      [r["walks"] for r in per_seed])[1:])
    for reader in ("evaluator", "second"):
        m = out[reader] = {}
        for among in ("found", "trusted"):
            n = total[among]
            m[among] = sum(r[reader][among] for r in per_seed) / n if n else None
            if len(per_seed) > 1 and all(r[among] for r in per_seed):
                m[f"{among}_interval"] = list(metrics.logit_t_interval([r[reader][among] for r in per_seed],
                                                                       [r[among] for r in per_seed])[1:])
    ratios = [v for r in per_seed for v in r["nn_ratio_trusted"]]
    out["nn_ratio_trusted_median"] = float(np.median(ratios)) if ratios else None
    return out


# ---------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------
def boundary_set(ctx: Context, run: rundir.Run, name: str, a: int, b: int, seed: int, guide, second,
                 readings: bool = False) -> dict:
    """The kept set of method NAME on pair (a, b) and model seed (readings: made again with the guide members'
    readings, which the first sets lack)."""
    method, eta, w, interval = between_methods()[name]
    chosen = dict(SAMPLER, eta=eta, guidance=w, guidance_interval=interval)
    what = dict(readings="guide members", **guide_design_key()) if readings else guide_design_key()
    key = set_key(run, method=method, sampler=chosen, pair=[a, b], walks=WALKS, grid=BETWEEN_GRID,
                  tolerance=BETWEEN_TOLERANCE, seed=WALK_SEED, guide=guide.seeds, **what)
    folder = f"{slug(name)}-{a}-{b}-s{seed}" + ("-members" if readings else "")
    return kept_set(os.path.join(ctx.out, "between", folder), key,
                    lambda: boundary.boundary_samples(run, a, b, WALKS, method, WALK_SEED, guide, chosen,
                                                    BETWEEN_TOLERANCE, grid=BETWEEN_GRID,
                                                    evaluators=[ctx.scorer.net, second],
                                                    point=boundary.GUIDE_DESIGNS[GUIDE_DESIGN].point))


def between(ctx: Context) -> dict:
    second = second_reader(ctx)
    pairs, methods = between_pairs(ctx), between_methods()
    runs = {seed: ctx.model(BOUNDARY_STEM, seed) for seed in SEEDS}
    guides = {seed: boundary.boundary_guide(run, design=GUIDE_DESIGN) for seed, run in runs.items()}
    near = Nearness(ctx, runs[SEEDS[0]].images)  # every seed's model trains on the same digits
    if any(not np.array_equal(run.images, near.train_images) for run in runs.values()):
        raise ValueError("between: the label+pos models of the seeds must train on the same digits")
    result = {"pairs": [f"{a}-{b}" for a, b in pairs], "methods": {}, "real": {}, "trusted": {},
              "grid": BETWEEN_GRID, "tolerance": BETWEEN_TOLERANCE}
    for a, b in pairs:
        result["real"][f"{a}-{b}"] = real_reference(ctx, near, second, guides[SEEDS[0]], a, b)
    kept_parts = {}
    for name in methods:
        result["methods"][name] = {}
        for a, b in pairs:
            per_seed, found = [], 0
            for seed in SEEDS:
                part = boundary_set(ctx, runs[seed], name, a, b, seed, guides[seed], second)
                per_seed.append(walk_scores(ctx, near, part, a, b, second))
                found += len(part["walk"])
                kept_parts[name, a, b, seed] = part
            both = pooled(per_seed, found, WALKS * len(SEEDS))
            real_high = result["real"][f"{a}-{b}"]["nn_ratio_interval"][1]
            verdict = boundary_success(both["evaluator"], both["nn_ratio_median"], real_high)
            result["methods"][name][f"{a}-{b}"] = dict(both, seeds=per_seed, **verdict)
            print(name, f"{a}-{b}", "success" if verdict["success"] else "no", flush=True)
    for name in TRUSTED_VARIANTS:
        result["trusted"][name] = {
            f"{a}-{b}": trusted_pooled([trusted_scores(ctx, near, boundary_set(ctx, runs[seed], name, a, b, seed,
                                                                               guides[seed], second, readings=True),
                                                       a, b, second) for seed in SEEDS]) for a, b in pairs}
    result["works_on_pairs"] = {m: sum(p["success"] for p in ps.values()) for m, ps in result["methods"].items()}
    result["best"] = best_method(result["methods"])
    result["best_boundary_method"] = methods[result["best"]][0]
    result["default"] = default_from_evidence(result["methods"], result["best"])
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


def seed_score(methods: dict, name: str) -> list[float]:
    """Per seed, the evaluator's ambiguous share of the method's samples, averaged over the pairs."""
    pairs = list(methods[name].values())
    return [float(np.mean([p["seeds"][s]["evaluator"]["ambiguous_share"] or 0.0 for p in pairs]))
            for s in range(len(pairs[0]["seeds"]))]


def default_from_evidence(methods: dict, best: str) -> dict:
    """Is the best method's lead over --boundary's current default outside the intervals? The per-seed scores
    (seed_score) of the two, paired by seed (the same model), and a 95% t-interval of their difference: the
    default is to change only when that interval lies above 0."""
    if best == CURRENT_DEFAULT or CURRENT_DEFAULT not in methods:
        return dict(current=CURRENT_DEFAULT, best=best, change=False, difference=None)
    diff = np.subtract(seed_score(methods, best), seed_score(methods, CURRENT_DEFAULT))
    interval = list(metrics.t_interval(diff)[1:]) if len(diff) > 1 else None
    return dict(current=CURRENT_DEFAULT, best=best, difference=float(diff.mean()), interval=interval,
                change=interval is not None and interval[0] > 0)


def walk_figure(ctx: Context, result: dict, parts: dict, pairs: list) -> None:
    """between/boundary_vs_real.png: per pair a row of the real reference's most ambiguous digits, then the best
    method's boundary samples (seed 0) the evaluator reads as most ambiguous; between/ambiguity.png: per pair and
    method, the second reader's ambiguous share and the nearest-training ratio, the real reference beside them."""
    from matplotlib.figure import Figure
    rows = []
    for a, b in pairs:
        real = ctx.digits.images[result["real"][f"{a}-{b}"]["digits"][:SHOWN_REAL]]
        part = parts[result["best"], a, b, SEEDS[0]]
        low = np.array(result["methods"][result["best"]][f"{a}-{b}"]["seeds"][0]["min_evaluator"])
        found = part["images"][np.argsort(-low)[:SHOWN_REAL]] if len(low) else real[:0]
        rows.append(np.concatenate([real, found]))
    write_png(os.path.join(ctx.out, "between", "boundary_vs_real.png"), outputs.grid_png(rows))
    names = list(result["methods"])
    figure = Figure(figsize=(1.2 * len(names) + 3, 6.4))
    top, bottom = figure.subplots(2, 1, sharex=True)
    for a, b in pairs:
        pair, real = f"{a}-{b}", result["real"][f"{a}-{b}"]
        line, = top.plot(range(len(names)), [result["methods"][m][pair]["second"]["ambiguous_share"] or 0.0
                                             for m in names], "o-", ms=3, lw=1, label=pair)
        top.axhline(real["second"]["ambiguous_share"], color=line.get_color(), ls="--", lw=0.8)
        bottom.plot(range(len(names)), [result["methods"][m][pair]["nn_ratio_median"] or np.nan for m in names],
                    "o-", ms=3, lw=1, color=line.get_color())
        bottom.axhspan(*real["nn_ratio_interval"], color=line.get_color(), alpha=0.12)
    top.set(ylabel="second reader: share ambiguous\n(dashed: real reference)")
    bottom.set(ylabel="nearest-training ratio\n(band: real reference, 95%)")
    bottom.set_xticks(range(len(names)), names, rotation=75, fontsize=6)
    top.legend(fontsize=6)
    write_figure(os.path.join(ctx.out, "between", "ambiguity.png"), figure)


# ---------------------------------------------------------------------------
# The section's tables (tables.md)
# ---------------------------------------------------------------------------
def between_tables(b: dict) -> list[str]:
    def cell(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    def with_interval(m, key, digits=2):
        interval = m.get(f"{key}_interval")
        return cell(m[key], digits) + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")

    def agree(m):
        return "-" if m["share"] is None else f"{m['share']:.2f} ({m['both']}/{m['n']})"
    text = ["Boundary samples: per walk (one noise; only the conditions move from a class-A to a class-B training "
            f"digit) the point s* where the guide (an ensemble of classifiers with seeds other than the evaluator's) "
            f"reads P(B) = 0.5: a {b['grid']}-point grid, then bisection to |s* - crossing| <= {b['tolerance']:.4f}. "
            f"{WALKS} walks per pair and seed, seeds {', '.join(map(str, SEEDS))} pooled. Read at s* by the evaluator "
            "and by a second independent classifier: mean min(P(A), P(B)), share of walks at 0.2 or more (each "
            "with its 95% interval over the seeds: t on the per-seed means, t on the per-seed logits), mean "
            "P(A) + P(B); agrees: of the samples the evaluator finds ambiguous, the share the second reader does too; "
            "crossed: share of walks the guide saw cross; width: median s range of the guide's P(B) from "
            "0.1 to 0.9; nearest-training ratio: median over the samples of the distance to the nearest training digit "
            "over the test digits' median (evaluator features [t-interval over the seeds' medians]; pixels). "
            "**real**: the real reference, per pair the digits of A and B among the 2,000 neither reader trained on "
            "that the evaluator finds ambiguous, at least the 20 most (a floor digit's own copy left out of its "
            "nearest-training search), measured the same way [bootstrap intervals over the digits]. "
            "Success: evaluator mean min >= 0.25, share >= 60%, P(A) + P(B) >= 0.9, and nearest-training ratio (features) "
            "not above the real reference's upper 95% bound.", "",
            "| method | pair | crossed | evaluator min | evaluator share >= 0.2 | evaluator P(A)+P(B) | second min | "
            "second share | second P(A)+P(B) | second agrees | width | nearest-training ratio | ratio (pixels) | success |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, r in b["real"].items():
        e, s2 = r["evaluator"], r["second"]
        text.append(f"| real ({r['n']} digits, {r['n_ambiguous']} ambiguous) | {pair} | - | {cell(e['ambiguity'])} | "
                    f"{cell(e['ambiguous_share'])} | {cell(e['kept_mass'])} | {cell(s2['ambiguity'])} | "
                    f"{cell(s2['ambiguous_share'])} | {cell(s2['kept_mass'])} | {agree(r['agreement'])} | - | "
                    f"{cell(r['nn_ratio_median'])} [{r['nn_ratio_interval'][0]:.2f}, {r['nn_ratio_interval'][1]:.2f}] | "
                    f"{cell(r['nn_ratio_pixels_median'])} [{r['nn_ratio_pixels_interval'][0]:.2f}, "
                    f"{r['nn_ratio_pixels_interval'][1]:.2f}] | - |")
    for method, pairs in b["methods"].items():
        for pair, p in pairs.items():
            e, s2 = p["evaluator"], p["second"]
            nn = cell(p["nn_ratio_median"]) + (f" [{p['nn_ratio_interval'][0]:.2f}, {p['nn_ratio_interval'][1]:.2f}]"
                                               if p.get("nn_ratio_interval") else "")
            text.append(f"| {method} | {pair} | {cell(e['crossing_share'])} | {with_interval(e, 'ambiguity')} | "
                        f"{with_interval(e, 'ambiguous_share')} | {cell(e['kept_mass'])} | {cell(s2['ambiguity'])} | "
                        f"{cell(s2['ambiguous_share'])} | {cell(s2['kept_mass'])} | {agree(p['agreement'])} | "
                        f"{cell(p['guide']['width_median'], 3)} | {nn} | {cell(p['nn_ratio_pixels_median'])} | "
                        f"{'yes' if p['success'] else 'no'} |")
    d = b["default"]
    text += ["", "Works (the criterion on at least three pairs): " + ", ".join(
        f"{m} {'yes' if n >= 3 else 'no'} ({n} of {len(b['pairs'])})" for m, n in b["works_on_pairs"].items()),
        f"Best method: {b['best']} (sample.py --boundary-method {b['best_boundary_method']})",
        f"The default (--boundary's {d['current']}): " + (
            "the best method already." if d["difference"] is None else
            f"the best's evaluator ambiguous share (mean over pairs, paired by seed) minus the default's: "
            f"{d['difference']:+.3f}" + (f" [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]" if d["interval"] else "")
            + (": outside the interval, change it." if d["change"] else ": inside the interval, keep it.")), ""]
    text += ["The filter of sample.py --boundary (`boundary.trusted`: every guide member reads min(P(A), P(B)) >= 0.2 and "
             "the guide's P(A) + P(B) >= 0.9), on sets made again with the members' readings: walks, found points "
             "(walks that crossed), trusted ones, walks tried per trusted sample, each reader's ambiguous share among "
             "all found points and among the trusted ones [95% logit t-intervals over the seeds], the trusted ones' "
             "nearest-training ratio (features). Real reference, test digits only (the guide trained on the floor's): "
             "the share the filter keeps.", "",
             "| method | pair | walks | found | trusted | walks per trusted | evaluator: found -> trusted | "
             "second: found -> trusted | ratio (trusted) | real kept by the filter |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, pairs in b["trusted"].items():
        for pair, t in pairs.items():
            real = b["real"][pair]
            shares = [f"{with_interval(t[r], 'found')} -> {with_interval(t[r], 'trusted')}" for r in ("evaluator", "second")]
            text.append(f"| {method} | {pair} | {t['walks']} | {t['found']} | {t['trusted']} | "
                        f"{cell(t['walks_per_trusted'], 1)} | {shares[0]} | {shares[1]} | "
                        f"{cell(t['nn_ratio_trusted_median'])} | {cell(real['trusted_share'])} of {real['n_trusted_checked']} |")
    return text + [""]
