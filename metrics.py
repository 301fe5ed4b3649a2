"""Image metrics, hand-written: FID, IS, conditioning accuracy, controllability.

    net = load_feature_network("classifier", classifier_path="runs/clf.pt", train_images=x, train_labels=y)
    scores = evaluate_images(real_images, generated_images, generated_labels, net)

or, like pytorch-fid: `python metrics.py REAL GENERATED [--features inception|classifier]`.
Images are uint8 arrays (N, H, W, C), C = 1 or 3, everywhere. The "inception"
network is timm's inception_v3.tv_in1k (torchvision's weights), so its FID and
IS are close to, not identical with, pytorch-fid's (TensorFlow FID weights) and
the original IS code's (1,008 classes); tests/test_metrics.py checks the
formulas against those tools' own.
"""
import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import data
from features import WeightsUnavailableError, create_backbone, pick_device

INCEPTION_MODEL = "inception_v3.tv_in1k"
INCEPTION_SIZE = 299
CLASSIFIER_FORMAT, CLASSIFIER_VERSION = "metrics.SmallClassifier", 1


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
    bench.py metrics). Returns (roots of M's eigenvalues, roots of S1's when it is
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
    eps added to both diagonals; a non-negligible imaginary part (above 1e-3,
    relative to the largest root, so that scaling the features by c scales FID
    by c^2) is an error, because the inputs are then not covariances.
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
    """IS = exp(E_x KL(p(y|x) || p(y))) per split: (mean, population std) over splits.

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


# ---------------------------------------------------------------------------
# 3. Conditioning and control
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


# ---------------------------------------------------------------------------
# 4. Feature networks: Inception v3, or a small classifier trained on the data
# ---------------------------------------------------------------------------
def check_images(images, what: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C), C = 1 or 3, N > 0 (a missing C axis is added)."""
    x = np.asarray(images)
    x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8 or x.shape[0] == 0:
        raise ValueError(f"{what} must be uint8 (N, H, W, C) with N > 0 and C = 1 or 3, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


class FeatureNetwork(nn.Module):
    """A frozen classifier read as a feature network: features for FID, logits for IS.

    `model` has timm's interface (forward_features, forward_head(pre_logits=True)
    for the pooled features, get_classifier for the class layer). Images are
    scaled to [0, 1], grey replicated for an RGB model, resized (bilinear) to
    image_size and normalised with the model's mean and std.
    """

    def __init__(self, name: str, model: nn.Module, image_size: int, mean, std,
                 antialias: bool = False, batch_size: int = 64):
        super().__init__()
        self.name, self.model, self.image_size = name, model.eval(), image_size
        self.antialias, self.batch_size = antialias, batch_size
        self.num_classes = model.get_classifier().out_features
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, images) -> torch.Tensor:
        """uint8 (B, H, W, C), numpy or tensor -> float (B, C', image_size, image_size), normalised."""
        x = torch.as_tensor(images).to(self.mean.device).permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W)
        channels = self.mean.shape[1]
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise ValueError(f"the {self.name} network takes grey images, got {x.shape[1]} channels")
            x = x.expand(-1, channels, -1, -1)  # grey -> RGB
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=self.antialias)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def features_and_logits(self, images) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) -> float64 features (N, D) and logits (N, K), in batches."""
        x = check_images(images)
        features, logits = [], []
        for lo in tqdm(range(0, len(x), self.batch_size), desc=f"{self.name} features", disable=None):
            f = self.model.forward_head(self.model.forward_features(self.prepare(x[lo:lo + self.batch_size])),
                                        pre_logits=True)  # (B, D)
            features.append(f.cpu().double())  # on the CPU first: MPS has no float64
            logits.append(self.model.get_classifier()(f).cpu().double())  # (B, K)
        return torch.cat(features).numpy(), torch.cat(logits).numpy()

    def logits(self, images) -> np.ndarray:
        return self.features_and_logits(images)[1]


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


class SmallClassifier(nn.Module):
    """Two conv stages, 4x4 average pooling, 128-d features, then the class layer."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(*block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
                                  *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                                  *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten())  # (B, 64 w)
        self.penultimate = nn.Sequential(nn.Linear(4 * w * 16, 128), nn.ReLU(inplace=True))  # (B, 128)
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(128, num_classes)  # (B, K)

    def forward_features(self, x):
        return self.penultimate(self.body(x))

    def forward_head(self, features, pre_logits: bool = False):
        return features if pre_logits else self.head(self.dropout(features))

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def network(self) -> FeatureNetwork:
        c = self.config["in_channels"]
        return FeatureNetwork("classifier", self, self.config["image_size"], (0.5,) * c, (0.5,) * c,
                              antialias=True, batch_size=256)


def train_classifier(images, labels, num_classes=None, steps: int = 300, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, device=None) -> FeatureNetwork:
    """Train the small classifier on uint8 images (N, H, W, C) and integer labels (N,).

    Adam with a one-cycle schedule, +-2 px random shifts; images above 64 px
    are downscaled to 64 px. The defaults reach about 98% held-out accuracy on
    the 5,000-digit MNIST sample in well under a minute on a 2-core CPU.
    """
    x, y = check_images(images, "training images"), np.asarray(labels)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"the classifier takes square images, got {x.shape[2]}x{x.shape[1]}")
    device = pick_device(device)
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's generator
        torch.manual_seed(seed)
        model = SmallClassifier(x.shape[3], num_classes, min(x.shape[1], 64))
    net = model.network().to(device)
    generator = torch.Generator().manual_seed(seed)
    pixels, targets = torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps))
    size, pad = net.image_size, 2
    model.train()
    for _ in tqdm(range(steps), desc="training classifier", disable=None):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator).to(device)
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        batch = F.pad(net.prepare(pixels[idx]), (pad,) * 4, value=-1.0)[..., dy:dy + size, dx:dx + size]
        loss = F.cross_entropy(model(batch), targets[idx])  # batch: (B, C, size, size), shifted
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


def save_classifier(net: FeatureNetwork, path) -> None:
    """Write the classifier (no pickled code: a dict of numbers and tensors), atomically."""
    payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "config": net.model.config,
               "state_dict": {k: v.cpu() for k, v in net.model.state_dict().items()}}
    data.write_atomically(str(path), lambda f: torch.save(payload, f))


def load_classifier(path) -> FeatureNetwork:
    """Read a file written by save_classifier (torch.load with weights_only=True: no code runs)."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
        if payload["format"] != CLASSIFIER_FORMAT or payload["version"] != CLASSIFIER_VERSION:
            raise ValueError(payload["format"])
        model = SmallClassifier(**{k: int(payload["config"][k]) for k in
                                   ("in_channels", "num_classes", "image_size", "width")})
        model.load_state_dict(payload["state_dict"])
    except Exception:  # torch's own message would advise weights_only=False: never the fix
        raise ValueError(f"{path} is not a classifier file of this metrics.py; delete it "
                         "(or pass another --classifier) to train a new one") from None
    return model.network()


def load_feature_network(name: str, weights=None, classifier_path=None, train_images=None,
                         train_labels=None, num_classes=None, device=None) -> FeatureNetwork:
    """"inception" (weights: see inception_network) or "classifier".

    The classifier is read from classifier_path if that file exists; otherwise
    it is trained on train_images and train_labels and saved to classifier_path.
    """
    if name == "inception":
        net = inception_network(weights)
    elif name != "classifier":
        raise ValueError(f"unknown feature network {name!r}; choose from inception, classifier")
    elif classifier_path is not None and os.path.exists(classifier_path):
        net = load_classifier(classifier_path)
        if num_classes is not None and net.num_classes != num_classes:
            raise ValueError(f"{classifier_path} was trained for {net.num_classes} classes, not {num_classes}; "
                             "delete it to train a new one")
    elif train_images is None or train_labels is None:
        where = f" ({classifier_path} does not exist)" if classifier_path is not None else ""
        raise ValueError(f"the classifier needs a classifier file{where} or train_images and train_labels")
    else:
        net = train_classifier(train_images, train_labels, num_classes, device=device)
        if classifier_path is not None:
            save_classifier(net, classifier_path)
    return net.to(pick_device(device))


def evaluate_images(real_images, generated_images, generated_labels, net: FeatureNetwork,
                    splits: int = 10) -> dict:
    """FID (real vs generated), IS of the generated images in min(splits, N) splits and,
    for the classifier, the conditioning accuracy of the labelled images (labels >= 0)."""
    real_features, _ = net.features_and_logits(real_images)
    features, logits = net.features_and_logits(generated_images)
    splits = min(int(splits), len(logits))
    out = {"fid": fid_from_features(real_features, features)}
    out["is_mean"], out["is_std"] = inception_score(logits, splits)
    out.update(is_splits=splits, n_real=len(real_features), n_generated=len(features))
    if generated_labels is not None and net.name == "classifier":  # ImageNet classes are not ours
        y = np.asarray(generated_labels)
        if y.shape != (len(logits),):
            raise ValueError(f"generated_labels must have shape ({len(logits)},), got {y.shape}")
        if (y >= 0).any():
            out["conditioning_accuracy"] = conditioning_accuracy(logits[y >= 0], y[y >= 0])
    return out


# ---------------------------------------------------------------------------
# 5. The command line
# ---------------------------------------------------------------------------
def load_image_set(path: str, image_size=None) -> tuple[np.ndarray, np.ndarray | None, list | None]:
    """(images, labels or None, class names or None) of a folder (flat, or one sub-directory
    per class) or of a .npz with `images` and optional `labels` and `class_names`."""
    path = str(path)
    if os.path.isdir(path):
        flat = data.list_images(path)
        images, labels, names = ((data.read_images(flat, image_size), None, None) if flat else
                                 data.load_image_folder(path, None, image_size, 0, None))
    elif not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: give a folder of images or a .npz file")
    elif not path.endswith(".npz"):
        raise ValueError(f"{path} is neither a folder of images nor a .npz file")
    else:
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except Exception:
            raise ValueError(f"{path} is not a readable .npz archive; write one with "
                             "numpy.savez(path, images=uint8 (N, H, W, C), labels=...)") from None
        if "images" not in arrays:
            raise ValueError(f"{path} has no 'images' array (it has: {', '.join(arrays) or 'nothing'})")
        images, labels = check_images(arrays["images"], f"'images' in {path}"), arrays.get("labels")
        names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else None
        if labels is not None and (labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"'labels' in {path} must be integers of shape ({len(images)},), "
                             f"got {labels.dtype} {labels.shape}")
        if image_size is not None:
            images = data.resize(images, image_size)
    if len(images) < 2:
        raise ValueError(f"{path} holds {len(images)} image; FID needs at least two on each side")
    return images, labels, names


def align_labels(labels, names, real_names, path):
    """Generated class indices re-numbered as the real set's classes of the same names."""
    if labels is None or names is None or real_names is None:
        return labels
    if not set(names) <= set(real_names):
        raise ValueError(f"classes of {path} not among the real classes: {sorted(set(names) - set(real_names))[:5]}")
    return np.where(labels >= 0, np.array([real_names.index(name) for name in names])[np.maximum(labels, 0)], -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="metrics.py", description="FID and IS between two image sets: folders "
                                     "(flat, or one sub-directory per class) or .npz files ('images', 'labels').")
    parser.add_argument("real")
    parser.add_argument("generated", help="e.g. sample.py's samples.npz")
    parser.add_argument("--features", choices=("inception", "classifier"), default="inception")
    parser.add_argument("--inception-weights", help="local Inception weights file (offline use)")
    parser.add_argument("--classifier", help="classifier file: read if it exists, else trained on REAL "
                        "(which then needs labels) and saved here (default: under .cache/metrics/)")
    parser.add_argument("--splits", type=int, default=10, help="IS splits (default 10, at most N)")
    parser.add_argument("--image-size", type=int, help="resize all images to N x N first")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")

    def error(message):  # argparse's errors as ours: one line, exit code 2
        raise ValueError(message)

    parser.error = error
    try:
        args = parser.parse_args(argv)
        for flag, value in (("--splits", args.splits), ("--image-size", args.image_size),
                            ("--batch-size", args.batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive number, got {value}")
        real, real_labels, real_names = load_image_set(args.real, args.image_size)
        generated, labels, names = load_image_set(args.generated, args.image_size)
        if args.features == "inception":
            net, labels = load_feature_network("inception", weights=args.inception_weights, device=args.device), None
        else:
            path = args.classifier
            if path is None and real_labels is not None:
                digest = hashlib.sha1(str(real.shape).encode())
                digest.update(real.data), digest.update(real_labels.astype(np.int64).data)
                path = os.path.join(".cache", "metrics", f"classifier-{digest.hexdigest()[:16]}.pt")
            if path is None or not os.path.exists(path):
                if real_labels is None:
                    raise ValueError(f"--features classifier trains on REAL, but {args.real} has no labels: "
                                     "use a .npz with 'labels', class sub-directories, or an existing --classifier")
                print(f"metrics.py: training the classifier on {args.real}, saving it to {path}", file=sys.stderr)
            net = load_feature_network("classifier", classifier_path=path, train_images=real,
                                       train_labels=real_labels, device=args.device)
            labels = align_labels(labels, names, real_names, args.generated)
            if labels is not None and labels.max() >= net.num_classes:
                raise ValueError(f"labels in {args.generated} go up to {labels.max()}, "
                                 f"but the classifier knows {net.num_classes} classes")
        net.batch_size = args.batch_size or net.batch_size
        result = {**evaluate_images(real, generated, labels, net, args.splits), "features": args.features}
    except (ValueError, OSError, WeightsUnavailableError) as error:
        print("metrics.py: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"FID: {result['fid']:.4f}")
        print(f"IS:  {result['is_mean']:.4f} +- {result['is_std']:.4f} ({result['is_splits']} splits)")
        if "conditioning_accuracy" in result:
            print(f"conditioning accuracy: {result['conditioning_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
