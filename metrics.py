"""Image metrics, hand-written: FID, KID, IS, conditioning accuracy, controllability, class-boundary
walks, memorisation, intervals over replicates (seeds) and shares, and comparisons at matched accuracy.

    net = load_feature_network("classifier", classifier_path="runs/clf.pt", train_images=x, train_labels=y)
    scores = evaluate_images(real_images, generated_images, generated_labels, net)

or, like pytorch-fid: `python metrics.py REAL GENERATED [--features inception|classifier]` (its flags and
file handling: plumbing/metrics_command.py).
Images are uint8 arrays (N, H, W, C), C = 1 or 3, everywhere. The "inception"
network is timm's inception_v3.tv_in1k (torchvision's weights), so its FID and
IS are close to, not identical with, pytorch-fid's (TensorFlow FID weights) and
the original IS code's (1,008 classes); tests/test_metrics.py checks the
formulas against those tools' own. The "classifier" network is plumbing/classifier.py's
small classifier, trained on the labelled images it is given (load_feature_network's
train_images), not necessarily on the real images the samples are scored against:
sample.py --eval trains it on the run's training images and scores against the
held-out test digits; the command line here trains it on REAL unless --classifier
names a file.
"""
import math
import os
import sys

import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import scipy.stats

from plumbing import classifier
from plumbing.classifier import FeatureNetwork
from features import create_backbone
from plumbing.weights import WeightsUnavailableError

INCEPTION_MODEL = "inception_v3.tv_in1k"
INCEPTION_SIZE = 299


# ---------------------------------------------------------------------------
# 1. Frechet Inception Distance (Heusel et al. 2017)
# ---------------------------------------------------------------------------
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean mu (D,) and unbiased covariance S (D, D), in float64, of features (N, D)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature statistics need a 2-d array (N, D) of at least two samples, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def sqrt_eigenvalues(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Square roots (complex) of the eigenvalues of S1 S2: tr sqrt(S1 S2) is their sum.

    S1 S2 is not symmetric, but it has the eigenvalues of a symmetric PSD matrix M:
        S1 = L L^T (Cholesky): S1 S2 = L (L^T S2 L) L^-1 is similar to  M = L^T S2 L
        S1 singular:           AB and BA share eigenvalues (A = S1^1/2, B = S1^1/2 S2):  M = S1^1/2 S2 S1^1/2
    so symmetric eigensolvers suffice (several times faster than scipy.linalg.sqrtm:
    python -m experiments.bench metrics). Returns (roots of M's eigenvalues, roots of S1's when it is
    singular, else none): an imaginary part in either means an input is not a covariance.
    """
    try:
        lower = scipy.linalg.cholesky(sigma1, lower=True)
        m, s1_roots = lower.T @ sigma2 @ lower, np.zeros(0)
    except np.linalg.LinAlgError:  # singular S1: fewer samples than dimensions
        w1, v1 = scipy.linalg.eigh(sigma1)
        root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^1/2
        m, s1_roots = root1 @ sigma2 @ root1, np.sqrt(w1.astype(complex))
    return np.sqrt(scipy.linalg.eigvalsh((m + m.T) / 2).astype(complex)), s1_roots


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64.

    pytorch-fid's safeguards: a square root that is not finite is retried with
    eps added to both diagonals; a non-negligible imaginary part (above 1e-3
    times max(1, the largest root's size): relative for large roots, so that
    scaling the features by c scales FID by c^2, absolute below 1) is an error, because the inputs are then not covariances.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))  # (D,)
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))  # (D, D)
    d = len(mu1)
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"need means (D,) and covariances (D, D) of one D, got shapes {mu1.shape}, "
                         f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("the means or covariances contain NaN or infinite values")
    for offset in (0.0, eps):  # as pytorch-fid: once more with eps on the diagonals if the root is not finite
        shift = offset * np.eye(d)
        try:
            roots, s1_roots = sqrt_eigenvalues(sigma1 + shift, sigma2 + shift)
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(roots).all() and np.isfinite(s1_roots).all():
            break
    else:
        raise ValueError(f"the matrix square root is not finite even with {eps} added to the diagonals; "
                         "the covariances are badly conditioned")
    imaginary = np.abs(np.concatenate([roots, s1_roots]).imag).max(initial=0.0)
    if imaginary > 1e-3 * max(1.0, np.abs(roots).max(initial=0.0)):
        raise ValueError(f"the matrix square root has an imaginary part of {imaginary:.3g}: "
                         "the inputs are not covariance matrices (not positive semi-definite)")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * roots.real.sum())


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)


# ---------------------------------------------------------------------------
# 2. Inception Score (Salimans et al. 2016)
# ---------------------------------------------------------------------------
def inception_score(logits, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, sec. 4) per split: (mean, population std) over
    splits.

    logits (N, K). p(y) is each split's marginal. The rows are shuffled with
    `seed` first, as torch-fidelity does, so that a class-sorted set does not
    give one-class splits; all in float64 from log-softmax, so confident
    (one-hot) predictions give no NaN.
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"logits must be a 2-d array (N, K), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or infinite values")
    n, splits = x.shape[0], int(splits)
    if not 1 <= splits <= n:
        raise ValueError(f"the inception score needs 1 to N splits (at least one sample per split), "
                         f"got {splits} splits of {n} samples")
    log_p = scipy.special.log_softmax(x[np.random.RandomState(seed).permutation(n)], axis=1)  # log p(y|x)
    scores = []
    for part in np.array_split(log_p, splits):
        log_py = scipy.special.logsumexp(part, axis=0) - math.log(len(part))  # log p(y), (K,)
        kl = (np.exp(part) * (part - log_py)).sum(axis=1)  # KL(p(y|x) || p(y)), (n_split,)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# A split's IS is at most its size n and at most the number of classes K: with x uniform over the split's n
# images and y ~ p(y|x), E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x)) = I(x; y), so IS = exp I(x; y)
# (Barratt & Sharma 2018, "A Note on the Inception Score"), and I(x; y) <= H(x) = log n, I(x; y) <= H(y) <= log K.
# (p(y)'s own entropy is not bounded by log n: one image with a uniform p(y|x) has H(p(y)) = log K.) A split
# of one image scores exactly 1 (its p(y) is its p(y|x)). Every IS here takes splits of at least this many
# images (is_splits), fewer splits if need be (one split of all n below 40): 20 lies above MNIST's K = 10, so
# there n is not the binding cap.
MIN_IMAGES_PER_SPLIT = 20


def is_splits(n: int, splits: int = 10) -> int:
    """The splits an IS of n images uses: `splits`, or fewer so that each holds MIN_IMAGES_PER_SPLIT (at least 1)."""
    return max(1, min(int(splits), n // MIN_IMAGES_PER_SPLIT))


# ---------------------------------------------------------------------------
# 3. Conditioning, control and walks between classes
# ---------------------------------------------------------------------------
def conditioning_accuracy(logits, requested_labels) -> float:
    """Share of images whose predicted class, argmax of logits (N, K), is the requested one (N,)."""
    x, y = np.asarray(logits), np.asarray(requested_labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"requested labels must be integers that lie in [0, {x.shape[1]}), "
                         f"got {y.dtype} {y.min()}..{y.max()}")
    return float(np.mean(np.argmax(x, axis=1) == y))


def controllability(positions, reference, labels, reference_positions, reference_labels) -> dict:
    """How closely generated images follow the reference image they were generated from.

    positions (N, d): the generated images' feature positions; reference (N,):
    index of each image's own reference in reference_positions (R, d);
    labels (N,): each image's class (None: its reference's); reference_labels (R,).

    mean_dist_own: mean distance to the own reference; mean_dist_other_same_class:
    to the other references of the same class; own_reference_rate: share of
    images strictly closer to their own reference than to every other one of
    their class (chance 0.5 with two per class); retrieval_top1: share whose
    nearest reference of all is their own. Images whose class has no other
    reference are left out of the two same-class numbers (NaN if none is left).
    """
    pos, rpos = np.asarray(positions, np.float64), np.asarray(reference_positions, np.float64)  # (N, d), (R, d)
    ref, rlab = np.asarray(reference), np.asarray(reference_labels)  # (N,), (R,)
    n, r = len(pos), len(rpos)
    if pos.ndim != 2 or rpos.ndim != 2 or pos.shape[1] != rpos.shape[1] or 0 in (n, r) or rlab.shape != (r,):
        raise ValueError(f"positions (N, d) and reference_positions (R, d) must share d, with R reference_labels; "
                         f"got {pos.shape}, {rpos.shape} and {rlab.shape}")
    if ref.shape != (n,) or not np.issubdtype(ref.dtype, np.integer) or ref.min() < 0 or ref.max() >= r:
        raise ValueError(f"reference must hold ({n},) integers that lie in [0, {r}), got {ref.dtype} {ref.shape}")
    lab = rlab[ref] if labels is None else np.asarray(labels)
    if lab.shape != (n,) or (lab != rlab[ref]).any():
        raise ValueError(f"labels must be ({n},), and no generated image may have a class other than their reference's")

    dist = scipy.spatial.distance.cdist(pos, rpos)  # (N, R)
    own = dist[np.arange(n), ref]  # (N,)
    rivals = lab[:, None] == rlab[None, :]  # (N, R): same class ...
    rivals[np.arange(n), ref] = False  # ... but not the own reference
    compared = rivals.any(axis=1)  # (N,)
    rival_dist = np.where(rivals, dist, np.nan)[compared]  # (n_compared, R)
    nan = float("nan")
    return {
        "mean_dist_own": float(own.mean()),
        "mean_dist_other_same_class": float(np.nanmean(rival_dist, axis=1).mean()) if compared.any() else nan,
        "own_reference_rate": float(np.mean(own[compared] < np.nanmin(rival_dist, axis=1))) if compared.any() else nan,
        "retrieval_top1": float(np.mean(np.argmin(dist, axis=1) == ref)),
        "n_images": int(n),
        "n_compared": int(compared.sum()),
    }


def walk_statistics(prob_a, prob_b, s) -> dict:
    """How an evaluator sees walks from class A to class B: prob_a, prob_b (W, P) are its P(A) and
    P(B) at P points of each of W walks, at positions s (P,), increasing (e.g. 0 = A, 1 = B).

    mean_a, mean_b (P,): the mean over walks at each point; crossing: the first s
    at which mean_b rises from below 0.5 to 0.5 or above, interpolated linearly
    between the two points (None if it never does); monotonic: mean_b never
    falls from one point to the next; kept_mass: min over points of
    mean(P(A) + P(B)), how much of the evaluator's belief stays on A and B (1:
    all of it; low: the walk passes through other classes). How ambiguous the
    walks are where each switches is boundary_statistics' question (at each
    walk's own crossing s*, not at the mean curve's: walks switch at different s).
    """
    a, b, s = np.asarray(prob_a, np.float64), np.asarray(prob_b, np.float64), np.asarray(s, np.float64)
    if a.ndim != 2 or a.shape != b.shape or s.shape != (a.shape[1],) or a.size == 0:
        raise ValueError(f"need prob_a and prob_b of one shape (W, P) and s of shape (P,), "
                         f"got {a.shape}, {b.shape} and {s.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError("prob_a, prob_b and s must be finite")
    if (a < 0).any() or (b < 0).any() or (a + b > 1 + 1e-6).any():
        raise ValueError("prob_a and prob_b must be probabilities of two classes: >= 0, with P(A) + P(B) <= 1")
    if (np.diff(s) <= 0).any():
        raise ValueError("the positions s must increase along the walk")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)  # (P,)
    rises = np.flatnonzero((mean_b[:-1] < 0.5) & (mean_b[1:] >= 0.5))  # i: the crossing lies in [s_i, s_i+1]
    crossing = None
    if len(rises):
        i = rises[0]
        crossing = float(s[i] + (0.5 - mean_b[i]) / (mean_b[i + 1] - mean_b[i]) * (s[i + 1] - s[i]))
    return {"mean_a": mean_a.tolist(), "mean_b": mean_b.tolist(), "crossing": crossing,
            "monotonic": bool((np.diff(mean_b) >= 0).all()), "kept_mass": float((mean_a + mean_b).min()),
            "n_walks": int(a.shape[0])}


AMBIGUOUS = 0.2  # min(P(A), P(B)) from which a digit counts as ambiguous between A and B


def boundary_statistics(prob_a, prob_b, crossed, width=None) -> dict:
    """How a reader sees boundary samples, one per walk that crossed, each at its own s* (boundary.boundary_samples):
    prob_a, prob_b (N,) the reader's P(A), P(B) of the N samples; crossed (W,) bool for every walk tried;
    width (N,) each walk's transition width (NaN: P(B) does not reach a level).

    ambiguity: mean min(P(A), P(B)) (0.5 at most: both equally likely); ambiguous_share: the share of samples
    with min(P(A), P(B)) >= AMBIGUOUS; kept_mass: mean P(A) + P(B) (1: the reader sees A or B, nothing else);
    crossing_share: the share of walks that crossed; width_median over the finite widths. None where N = 0.
    """
    a, b = np.asarray(prob_a, np.float64), np.asarray(prob_b, np.float64)
    crossed = np.asarray(crossed, bool)
    if a.shape != b.shape or a.ndim != 1 or crossed.ndim != 1 or int(crossed.sum()) != len(a):
        raise ValueError(f"need prob_a and prob_b of shape (N,) with N the crossed walks ({int(crossed.sum())}), "
                         f"got {a.shape} and {b.shape}")
    if (a < 0).any() or (b < 0).any() or (a + b > 1 + 1e-6).any():
        raise ValueError("prob_a and prob_b must be probabilities of two classes: >= 0, with P(A) + P(B) <= 1")
    low = np.minimum(a, b)  # (N,)
    widths = np.asarray([] if width is None else width, np.float64)
    finite = widths[np.isfinite(widths)]
    some = len(a) > 0
    return {"ambiguity": float(low.mean()) if some else None,
            "ambiguous_share": float((low >= AMBIGUOUS).mean()) if some else None,
            "kept_mass": float((a + b).mean()) if some else None,
            "crossing_share": float(crossed.mean()) if len(crossed) else None,
            "width_median": float(np.median(finite)) if len(finite) else None,
            "n_samples": int(len(a)), "n_walks": int(len(crossed))}


# ---------------------------------------------------------------------------
# 4. Memorisation: are generated samples copies of training items?
# ---------------------------------------------------------------------------
def nearest_distance(x: np.ndarray, train: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """min_j |x_i - t_j| (euclidean) for each row of x (M, D) over train (N, D): (M,), in row chunks."""
    return np.concatenate([scipy.spatial.distance.cdist(x[lo:lo + chunk], train).min(axis=1)
                           for lo in range(0, len(x), chunk)])


def memorisation(generated, train, test, own_reference=None, near_copy_percentile: float = 1.0) -> dict:
    """Copying of training items, on feature arrays (N, D): pixels (data / 255) or an evaluator's features.

    The real-data baseline is how near held-out real items lie to the training set:
        d_test(k) = min_j |x_k - t_j|   over the test items x (T, D) and training items t (N, D)
        d_gen(i)  = min_j |g_i - t_j|   the same for the generated samples g (G, D)
    median_ratio = median(d_gen) / median(d_test): about 1 for samples as new as
    held-out data, near 0 for copies. A near-copy is a sample closer to a
    training item than all but near_copy_percentile % of the test items are:
        d_gen(i) <= tau,  tau = the near_copy_percentile-th percentile of d_test
    so near_copy_share is about 0.01 (the default 1 %) for fresh samples and 1
    for copies. own_reference (G, D), if given, holds each sample's own
    reference (the image it was generated from): the same two numbers for
    d_own(i) = |g_i - r_i|, against the same baseline (own_median_ratio,
    own_near_copy_share), so that copying the reference shows as copying.
    """
    g, t, x = (np.asarray(v, np.float64) for v in (generated, train, test))
    if not (g.ndim == t.ndim == x.ndim == 2 and g.shape[1] == t.shape[1] == x.shape[1] and min(len(g), len(t), len(x))):
        raise ValueError(f"generated, train and test must be non-empty (N, D) arrays of one D, "
                         f"got {g.shape}, {t.shape} and {x.shape}")
    if not 0 <= near_copy_percentile <= 100:
        raise ValueError(f"near_copy_percentile must lie in [0, 100], got {near_copy_percentile}")
    d_test, d_gen = nearest_distance(x, t), nearest_distance(g, t)  # (T,), (G,)
    baseline = float(np.median(d_test))
    if baseline == 0:
        raise ValueError("half the test items or more lie on training items (zero distance): "
                         "pass held-out items as test")
    tau = float(np.percentile(d_test, near_copy_percentile))
    out = {"median_ratio": float(np.median(d_gen)) / baseline, "near_copy_share": float(np.mean(d_gen <= tau)),
           "median_nearest_test": baseline, "near_copy_threshold": tau, "n_generated": int(len(g))}
    if own_reference is not None:
        r = np.asarray(own_reference, np.float64)
        if r.shape != g.shape:
            raise ValueError(f"own_reference must have the shape of generated, {g.shape}, got {r.shape}")
        d_own = np.linalg.norm(g - r, axis=1)  # (G,)
        out.update(own_median_ratio=float(np.median(d_own)) / baseline,
                   own_near_copy_share=float(np.mean(d_own <= tau)))
    return out


# ---------------------------------------------------------------------------
# 5. Intervals over replicates (seeds); also KID, comparisons at a matched share, diversity, calibration
# ---------------------------------------------------------------------------
def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student t interval of the mean of n >= 2 replicates,
        mean +- t_{(1 + level) / 2, n - 1} * s / sqrt(n),   s the sample standard deviation (ddof 1)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all():
        raise ValueError(f"a t interval needs at least two finite replicates (n,), got shape {v.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    mean = float(v.mean())
    half = float(scipy.stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def log_ratio_t_interval(values_a, values_b, level: float = 0.95) -> tuple[float, float, float]:
    """(ratio, low, high): a t-interval on the per-seed log-ratios, back on the ratio scale.

    values_a, values_b (n,): one number per seed (e.g. FID of model A and of model B, seed r with seed r),
    n >= 2. With l_r = log(a_r / b_r), mean m and sample standard deviation s (ddof 1),
        ratio = exp(m)  (the geometric mean of the per-seed ratios),
        [low, high] = exp(m -+ t_{(1 + level) / 2, n - 1} s / sqrt(n)).
    The seeds are the replicates: the interval holds the seed-to-seed spread with the small-sample t
    (t_{0.975, 2} = 4.30 for three seeds), which a bootstrap over three replicates lacks.
    """
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two arrays (n,) of one n >= 2 (one value per seed), got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or (a <= 0).any() or (b <= 0).any():
        raise ValueError("a log-ratio needs finite, positive values on both sides")
    mean, low, high = t_interval(np.log(a / b), level)
    return math.exp(mean), math.exp(low), math.exp(high)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(share, low, high): the Wilson score interval of a share k / n (Wilson 1927), inside [0, 1]:
        (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),  z = Phi^-1((1 + level) / 2)."""
    k, n = int(successes), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a share needs 0 <= successes <= n and n >= 1, got {k} of {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    z, p = float(scipy.stats.norm.ppf((1 + level) / 2)), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def logit_t_interval(successes, n, level: float = 0.95) -> tuple[float, float, float]:
    """(share, low, high) of a share over seeds, inside (0, 1): a t-interval on the per-seed empirical
    logits l_r = log((k_r + 1/2) / (n_r - k_r + 1/2)) (Cox 1970; finite at k = 0 and k = n), mapped back
    with the logistic function. share: the interval's centre, the logistic of the mean logit (within a few
    tenths of a percent of the pooled k / n at n = 1,000). successes, n (seeds,), >= 2 seeds.

    Departure from the plain t-interval: its half-width is at least the binomial one, z sqrt(v / r) with
    v = mean_r [1 / (k_r + 1/2) + 1 / (n_r - k_r + 1/2)], the empirical logits' known sampling variance (Cox 1970)
    and z the normal quantile (a known variance needs no t): seeds that happen to agree have no spread, but each
    seed's share still has its binomial one. Without it, two seeds of 15 of 20 gave an interval of zero width
    ([74%, 74%]) that missed their 75%; with it, [59%, 85%]."""
    k, m = np.asarray(successes, np.float64), np.asarray(n, np.float64)
    if k.ndim != 1 or k.shape != m.shape or len(k) < 2 or (m < 1).any() or (k < 0).any() or (k > m).any():
        raise ValueError(f"need successes and n (seeds,), >= 2 seeds, 0 <= successes <= n, got {k} of {m}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    logits = np.log((k + 0.5) / (m - k + 0.5))  # (seeds,)
    centre, _, high = t_interval(logits, level)
    variance = float(np.mean(1 / (k + 0.5) + 1 / (m - k + 0.5)))  # each seed's logit's binomial variance, averaged
    half = max(high - centre, float(scipy.stats.norm.ppf((1 + level) / 2)) * math.sqrt(variance / len(k)))
    return tuple(float(scipy.special.expit(v)) for v in (centre, centre - half, centre + half))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x . y / d + 1)^3 (Binkowski et al. 2018, sec. 3): (N, d), (M, d) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(features_x, features_y) -> float:
    """The unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with KID's polynomial kernel:
        sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
        - 2 sum_{i, j} k(x_i, y_j) / (n m).
    Unbiased, so it can be slightly negative for two samples of one distribution."""
    x, y = np.asarray(features_x, np.float64), np.asarray(features_y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need features (N, D) and (M, D) of one D with N, M >= 2, got {x.shape} and {y.shape}")
    n, m = len(x), len(y)
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * polynomial_kernel(x, y).sum() / (n * m))


def kid(features_x, features_y, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity and clean-fid compute it: the
    mean over `subsets` draws of mmd2_unbiased between min(subset_size, N, M) rows of each set, drawn
    without replacement. Returns {"kid": mean, "std": standard deviation over the subsets (ddof 0, as
    torch-fidelity; 0 where a subset is the whole of both sets), "subset_size", "subsets"}. The std is the subsets' spread, not an interval over seeds:
    compare models with t_interval over per-seed KIDs."""
    x, y = np.asarray(features_x, np.float64), np.asarray(features_y, np.float64)
    size = min(int(subset_size), len(x), len(y))
    if int(subsets) < 1 or size < 2:
        raise ValueError(f"KID needs subsets >= 1 and at least two rows per subset, got {subsets} and {size}")
    if size == len(x) == len(y):  # every subset is the whole of both sets: one value (MMD^2 ignores row order)
        return {"kid": mmd2_unbiased(x, y), "std": 0.0, "subset_size": size, "subsets": int(subsets)}
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(x[rng.choice(len(x), size, replace=False)],
                                     y[rng.choice(len(y), size, replace=False)]) for _ in range(int(subsets))])
    return {"kid": float(values.mean()), "std": float(values.std()), "subset_size": size, "subsets": int(subsets)}


def at_matched_share(shares, values, target: float) -> float | None:
    """The value (e.g. FID) a guidance curve has where its share of requested digits reaches `target`,
    interpolated linearly between the two points of the curve on either side of it.

    shares, values (P,): the curve's points in the order of increasing guidance w. The first segment
    [s_i, s_i+1] that holds target (s_i <= target <= s_i+1, or the other way if the curve falls there)
    gives v_i + (target - s_i) / (s_i+1 - s_i) (v_i+1 - v_i). None where the curve never reaches target
    (no extrapolation). Not monotone in w: the first crossing is taken.
    """
    s, v = np.asarray(shares, np.float64), np.asarray(values, np.float64)
    if s.ndim != 1 or s.shape != v.shape or len(s) < 1 or not (np.isfinite(s).all() and np.isfinite(v).all()):
        raise ValueError(f"need finite shares and values of one shape (P,), got {s.shape} and {v.shape}")
    for i in range(len(s)):
        if s[i] == target:
            return float(v[i])
        if i + 1 < len(s) and min(s[i], s[i + 1]) < target < max(s[i], s[i + 1]):
            return float(v[i] + (target - s[i]) / (s[i + 1] - s[i]) * (v[i + 1] - v[i]))
    return None


def diversity_by_class(features, classes) -> float:
    """Mean pairwise distance (features (N, D)) between two images of one class, averaged over the classes
    with at least two images. `classes` (N,): pass the class the evaluator reads (argmax of its logits),
    not the requested one, so that wrong-class samples do not add spread to the class they were asked for.
    NaN if no class has two images."""
    f, c = np.asarray(features, np.float64), np.asarray(classes)
    if f.ndim != 2 or c.shape != (len(f),):
        raise ValueError(f"need features (N, D) and classes (N,), got {f.shape} and {c.shape}")
    per_class = [scipy.spatial.distance.pdist(f[c == k]).mean() for k in np.unique(c) if (c == k).sum() > 1]
    return float(np.mean(per_class)) if per_class else float("nan")


def paired_t_interval(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the paired differences d_i = a_i - b_i (the same draw i in both arms): the
    Student t interval of `t_interval` on d, which removes the draw-to-draw spread the two arms share."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return t_interval(a - b, level)


def expected_calibration_error(prob, labels, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, eq. 3): sum_m |B_m| / n |acc(B_m) - conf(B_m)| over `bins` equal-width
    confidence bins (0, 1/M], (1/M, 2/M], ...; the confidence of a row is max_k p_k (N, K), its
    prediction argmax_k p_k, acc and conf the bin's mean correctness and mean confidence."""
    p, y = np.asarray(prob, np.float64), np.asarray(labels)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"prob must be (N, K) and labels (N,) with N > 0, got {p.shape} and {y.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)  # (N,), (N,)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin m holds ((m) / M, (m + 1) / M]
    ece = 0.0
    for m in range(bins):
        inside = which == m
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


# ---------------------------------------------------------------------------
# 6. Feature networks: Inception v3, or the small classifier trained on the data (plumbing/classifier.py)
# ---------------------------------------------------------------------------
def inception_network(weights=None) -> FeatureNetwork:
    """timm's Inception v3 with its ImageNet weights: 2,048-d pool features, 1,000 logits.

    weights: None (the hub), a local file (timm's model.safetensors or
    torchvision's inception_v3_google-*.pth), or "random" (tests only).
    """
    try:  # torchvision's file also holds the auxiliary classifier, which timm's model lacks
        model = create_backbone(INCEPTION_MODEL, None if weights is None else str(weights), keep_head=True,
                                ignore_prefixes=("AuxLogits.",))
    except WeightsUnavailableError as error:  # features.py's advice names train.py's flags; ours differ
        advice = str(error).replace("--weights PATH", "--inception-weights PATH")
        raise WeightsUnavailableError(advice.replace("--backbone pixels", "--features classifier")) from None
    cfg = model.pretrained_cfg
    return FeatureNetwork("inception", model, INCEPTION_SIZE, cfg["mean"], cfg["std"], batch_size=32)


def load_feature_network(name: str, weights=None, classifier_path=None, train_images=None,
                         train_labels=None, num_classes=None, device=None, run_id=None) -> FeatureNetwork:
    """"inception" (weights: see inception_network) or "classifier", on `device` (e.g. the
    user's --device; None: the best available, classifier.choose_device).

    The classifier is read from classifier_path if that file exists; otherwise
    it is trained (on `device`) on train_images and train_labels and saved to
    classifier_path. A file trained by an older recipe (without the intensity
    augmentation) is still used, with a one-line note on stderr. run_id: the
    training run the classifier belongs to (sample.py --eval's run), stored in
    the file it trains; a file of another run, or of none, is refused.
    """
    device = classifier.choose_device(device)  # an unavailable --device is an error before any work
    if name == "inception":
        return inception_network(weights).to(device)
    if name != "classifier":
        raise ValueError(f"unknown feature network {name!r}; choose from inception, classifier")
    if classifier_path is not None and os.path.exists(classifier_path):
        net = classifier.load_classifier(classifier_path, device, fix=(  # run_id: sample.py --eval's, else metrics.py's
            "move it away, and sample.py --eval trains this run's own" if run_id is not None else
            "pass another --classifier FILE, or move this one away and metrics.py trains a new one there"))
        if run_id is not None and net.model.run_id != run_id:
            raise ValueError(f"{classifier_path} belongs to another run (run id {net.model.run_id or 'none'}, this "
                             f"run is {run_id}), and it would score this run's samples: move it away, and "
                             "sample.py --eval trains this run's own")
        if num_classes is not None and net.num_classes != num_classes:
            raise ValueError(f"{classifier_path} was trained for {net.num_classes} classes, not {num_classes}; "
                             "delete it to train a new one")
        if net.model.recipe != classifier.RECIPE:
            print(f"note: {classifier_path} was trained with {net.model.recipe} augmentation only, not "
                  f"{classifier.RECIPE}: it may misread grey backgrounds; delete it to train a new one",
                  file=sys.stderr)
        return net
    if train_images is None or train_labels is None:
        where = f" ({classifier_path} does not exist)" if classifier_path is not None else ""
        raise ValueError(f"the classifier needs a classifier file{where} or train_images and train_labels")
    net = classifier.train_classifier(train_images, train_labels, num_classes, device=device)
    if classifier_path is not None:
        classifier.save_classifier(net, classifier_path, run_id or "")
    return net


def evaluate_images(real_images, generated_images, generated_labels, net: FeatureNetwork,
                    splits: int = 10) -> dict:
    """FID (real vs generated), IS of the generated images in is_splits(N, splits) splits (is_note says why,
    when fewer than asked) and, for the classifier, the conditioning accuracy of the labelled images (labels >= 0)."""
    real_features, _ = net.features_and_logits(real_images)
    features, logits = net.features_and_logits(generated_images)
    used = is_splits(len(logits), splits)
    out = {"fid": fid_from_features(real_features, features)}
    out["is_mean"], out["is_std"] = inception_score(logits, used)
    out.update(is_splits=used, n_real=len(real_features), n_generated=len(features))
    if used < splits:
        out["is_note"] = (f"{used} split{'s' * (used > 1)} of {len(logits)} images, not {splits}: a split needs "
                          f"{MIN_IMAGES_PER_SPLIT} images (one image alone scores 1)")
    if generated_labels is not None and net.name == "classifier":  # ImageNet classes are not ours
        y = np.asarray(generated_labels)
        if y.shape != (len(logits),):
            raise ValueError(f"generated_labels must have shape ({len(logits)},), got {y.shape}")
        if (y >= 0).any():
            out["conditioning_accuracy"] = conditioning_accuracy(logits[y >= 0], y[y >= 0])
    return out


if __name__ == "__main__":  # the command line (flags, image sets, output) is plumbing/metrics_command.py's
    from plumbing import metrics_command
    sys.exit(metrics_command.main())
