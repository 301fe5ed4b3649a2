"""Image metrics: hand-written FID and IS, feature networks, control measures.

Usage as a library::

    net = load_feature_network("classifier", classifier_path="runs/clf.pt",
                               train_images=images, train_labels=labels)
    scores = evaluate_images(real_images, generated_images, generated_labels, net)

and from the command line, like pytorch-fid::

    python metrics.py REAL GENERATED [--features inception|classifier] [--json]

where each side is a folder of images (flat, or one sub-directory per class)
or a ``.npz`` with an ``images`` array (uint8, N x H x W x C) and optionally
``labels`` (sample.py writes such a file).

Images are uint8 numpy arrays of shape (N, H, W, C) with C = 1 or 3 everywhere.

The maths
---------
* ``frechet_distance``: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)) in
  float64 with pytorch-fid's safeguards (a 1e-6 diagonal offset when the
  square root is not finite; an error when it has a non-negligible imaginary
  part).  Only the trace of the square root enters the distance, and
  tr sqrt(S1 S2) = tr sqrt(L^T S2 L) with S1 = L L^T (or S1^1/2 S2 S1^1/2 when
  S1 is singular), a symmetric PSD matrix, so the default ``method="eigh"``
  needs only symmetric solvers (about 1 s for 2,048-d features on a 2-core
  CPU, against about 12 s for ``scipy.linalg.sqrtm``). ``method="sqrtm"`` is pytorch-fid's formula verbatim and
  ``method="eigvals"`` sums the roots of the eigenvalues of S1 S2; the tests
  check that the three agree.
* ``inception_score``: exp(E_x KL(p(y|x) || p(y))) per split from
  float64 log-softmax, after a seeded shuffle (as torch-fidelity does, so that
  class-sorted sets do not give one-class splits); mean and population std.

The "inception" network is timm's ``inception_v3.tv_in1k`` (torchvision's
ImageNet weights), so its FID/IS are close to, not identical with, the
numbers of pytorch-fid (which uses the TensorFlow FID Inception weights) and
of the original IS code (1,008 classes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.special

# One policy for all pretrained weights (hub, local file, or one clear error): features.py's.
from features import WeightsUnavailableError, hub_offline_if_unreachable

FEATURE_NETWORKS = ("inception", "classifier")
INCEPTION_MODEL = "inception_v3.tv_in1k"
INCEPTION_SIZE = 299
CLASSIFIER_FORMAT = "metrics.SmallClassifier"
CLASSIFIER_VERSION = 1
CLASSIFIER_MAX_SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")



def _reason(exc: BaseException) -> str:
    """'ErrorType: first line of the message', for one-line error messages."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features shaped (N, D)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-d array (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(
            f"feature statistics need at least two samples, got {x.shape[0]} "
            "(a covariance of fewer than two samples is undefined)")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _check_statistics(mu1, sigma1, mu2, sigma2):
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different or bad shapes: {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return mu1, sigma1, mu2, sigma2


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without the ``disp`` argument (removed in recent SciPy)."""
    with warnings.catch_warnings():
        # Old SciPy warns about singular matrices; non-finite results are
        # handled by the caller, as pytorch-fid does.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            out = scipy.linalg.sqrtm(a)
    if isinstance(out, tuple):  # (root, error estimate) from SciPy versions with disp=False
        out = out[0]
    return np.asarray(out)


FID_METHODS = ("eigh", "eigvals", "sqrtm")


def _root_values(sigma1: np.ndarray, sigma2: np.ndarray, method: str):
    """(values, check): sum(values) = tr sqrt(S1 S2); check's imaginary parts must vanish.

    eigh:    S1 S2 is similar to the symmetric PSD matrix L^T S2 L (S1 = L L^T,
             Cholesky) or, when S1 is singular, S1^1/2 S2 S1^1/2 (S1's
             eigenvalues are then checked too): the roots of its eigenvalues.
    eigvals: the square roots of the eigenvalues of S1 S2 (the trace of the
             principal square root is the sum of the eigenvalues' principal roots).
    sqrtm:   the diagonal of scipy.linalg.sqrtm(S1 S2), as pytorch-fid does.
    """
    with np.errstate(all="ignore"):
        if method == "sqrtm":
            values = np.diagonal(_sqrtm(sigma1 @ sigma2))
            return values, values
        if method == "eigvals":
            values = np.sqrt(scipy.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128))
            return values, values
        try:  # S1 = L L^T positive definite: S1 S2 is similar to L^T S2 L
            lower = scipy.linalg.cholesky(sigma1, lower=True)
            m, s1_roots = lower.T @ sigma2 @ lower, np.zeros(0, np.complex128)
        except np.linalg.LinAlgError:  # singular (fewer samples than dimensions) or invalid
            w1, v1 = scipy.linalg.eigh(sigma1)
            r1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
            m, s1_roots = r1 @ sigma2 @ r1, np.sqrt(w1.astype(np.complex128))
        values = np.sqrt(scipy.linalg.eigvalsh((m + m.T) / 2.0).astype(np.complex128))
        return values, np.concatenate([values, s1_roots])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "eigh") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)). Only the trace of the
    square root is needed, so the default ``method="eigh"`` takes it from a
    symmetric matrix similar to S1 S2 (about 1 s at 2,048-d on a 2-core CPU);
    ``"eigvals"`` from the eigenvalues of S1 S2; ``"sqrtm"`` is pytorch-fid's
    scipy.linalg.sqrtm(S1 S2) (about ten times slower).
    All three agree to about 1e-10 on well-conditioned covariances.

    Safeguards as in pytorch-fid: when the root is not finite (or the solver
    fails), retry with ``eps`` added to both diagonals; when the root has a
    non-negligible imaginary part (above 1e-3, scaled up by the largest root
    for features of large magnitude, so that scaling features by c scales FID
    by c^2), raise ValueError, since the inputs are not valid covariances.
    """
    mu1, sigma1, mu2, sigma2 = _check_statistics(mu1, sigma1, mu2, sigma2)
    if method not in FID_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(FID_METHODS)}")
    diff = mu1 - mu2
    try:
        values, check = _root_values(sigma1, sigma2, method)
        finite = bool(np.isfinite(values).all() and np.isfinite(check).all())
    except np.linalg.LinAlgError:
        finite = False
    if not finite:
        offset = np.eye(sigma1.shape[0]) * eps
        try:
            values, check = _root_values(sigma1 + offset, sigma2 + offset, method)
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"the matrix square root failed even with a diagonal offset of {eps} "
                             f"({_reason(exc)})") from None
        if not (np.isfinite(values).all() and np.isfinite(check).all()):
            raise ValueError("the matrix square root is not finite even with a diagonal offset "
                             f"of {eps}; the covariances are badly conditioned")
    if np.iscomplexobj(check):
        imag = float(np.max(np.abs(check.imag), initial=0.0))
        tolerance = 1e-3 * max(1.0, float(np.max(np.abs(values), initial=0.0)))
        if imag > tolerance:
            raise ValueError(f"the matrix square root has a non-negligible imaginary part ({imag:.3g}); "
                             "the inputs are not valid covariance matrices (not positive semi-definite)")
    tr_covmean = float(np.sum(values.real))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1, features2, **kwargs) -> float:
    """FID between two feature sets shaped (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), **kwargs)


# ---------------------------------------------------------------------------
# Inception score
# ---------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception score of class logits shaped (N, K): (mean, population std) over splits.

    The rows are shuffled with ``seed`` before splitting (as torch-fidelity
    does), so class-sorted inputs do not give one-class splits. Everything is
    computed from float64 log-softmax; confident (one-hot) predictions give no
    NaN. ``splits=1`` is the plain formula (the shuffle does not matter then).
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"logits must be a 2-d array (N, K), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or infinite values")
    splits = int(splits)
    n = x.shape[0]
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if n < splits:
        raise ValueError(f"the inception score needs at least one sample per split: "
                         f"{n} samples for {splits} splits")
    x = x[np.random.RandomState(seed).permutation(n)]
    log_p = _log_softmax(x)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        lp, pp = log_p[lo:hi], p[lo:hi]
        # log of the split's marginal p(y), from log-probabilities (finite even
        # where some class has vanishing probability everywhere).
        log_q = scipy.special.logsumexp(lp, axis=0) - math.log(hi - lo)
        kl = (pp * (lp - log_q)).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------
# Conditioning accuracy and controllability
# ---------------------------------------------------------------------------
def conditioning_accuracy(logits, requested_labels) -> float:
    """Share of images whose predicted class (argmax of logits) is the requested one."""
    x = np.asarray(logits)
    y = np.asarray(requested_labels)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need logits (N, K) and labels (N,), got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("conditioning accuracy of an empty set is undefined")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"requested labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"requested labels must lie in [0, {x.shape[1]}) for {x.shape[1]} "
                         f"classes, got {y.min()}..{y.max()}")
    return float(np.mean(np.argmax(x, axis=1) == y))


def controllability(positions, reference, labels, reference_positions,
                    reference_labels) -> dict:
    """How well generated images follow the reference image they were generated from.

    positions (N, d): the generated images' positions (features, then
    FeatureSpace.transform); reference (N,): index into reference_positions of
    each image's own reference; labels (N,): each image's class (None: the own
    reference's class); reference_positions (R, d); reference_labels (R,).

    Returns mean_dist_own (mean distance to the own reference),
    mean_dist_other_same_class (mean distance to the other references of the
    same class), own_reference_rate (share of images strictly closer to their
    own reference than to every other reference of their class; chance is 0.5
    with two references per class), retrieval_top1 (share of images whose
    nearest reference among all is their own) and the counts used. Images
    whose class has no other reference are left out of the two same-class
    numbers (NaN when no image is left).
    """
    pos = np.asarray(positions, dtype=np.float64)
    ref = np.asarray(reference)
    rpos = np.asarray(reference_positions, dtype=np.float64)
    rlab = np.asarray(reference_labels)
    if pos.ndim != 2 or rpos.ndim != 2 or pos.shape[1] != rpos.shape[1]:
        raise ValueError(f"positions (N, d) and reference_positions (R, d) must share d, "
                         f"got {pos.shape} and {rpos.shape}")
    n, r = pos.shape[0], rpos.shape[0]
    if n == 0 or r == 0:
        raise ValueError("controllability needs at least one generated image and one reference")
    if ref.shape != (n,) or not np.issubdtype(ref.dtype, np.integer):
        raise ValueError(f"reference must be an integer array of shape ({n},), got {ref.dtype} {ref.shape}")
    if ref.min() < 0 or ref.max() >= r:
        raise ValueError(f"reference indices must lie in [0, {r}), got {ref.min()}..{ref.max()}")
    if rlab.shape != (r,):
        raise ValueError(f"reference_labels must have shape ({r},), got {rlab.shape}")
    lab = rlab[ref] if labels is None else np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    bad = np.flatnonzero(lab != rlab[ref])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{bad.size} generated image(s) have a class other than their reference's "
                         f"(image {i}: class {lab[i]}, reference {ref[i]}: class {rlab[ref[i]]})")

    dist = scipy.spatial.distance.cdist(pos, rpos)  # (N, R)
    rows = np.arange(n)
    own = dist[rows, ref]
    other = (lab[:, None] == rlab[None, :])
    other[rows, ref] = False
    has_other = other.any(axis=1)
    masked = np.where(other, dist, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are dropped below
        mean_other = np.nanmean(masked[has_other], axis=1)
        min_other = np.nanmin(masked[has_other], axis=1)
    compared = int(has_other.sum())
    nan = float("nan")
    return {
        "mean_dist_own": float(own.mean()),
        "mean_dist_other_same_class": float(mean_other.mean()) if compared else nan,
        "own_reference_rate": float(np.mean(own[has_other] < min_other)) if compared else nan,
        "retrieval_top1": float(np.mean(np.argmin(dist, axis=1) == ref)),
        "n_images": int(n),
        "n_compared": compared,
    }


# ---------------------------------------------------------------------------
# Feature networks
# ---------------------------------------------------------------------------
def _check_images(images, what: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must be uint8 (N, H, W, C) with C = 1 or 3, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (N, H, W, C), got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return x


def _default_device(device=None):
    import torch
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class FeatureNetwork:
    """A frozen network that gives features (for FID) and class logits (for IS).

    ``features(images)``, ``logits(images)`` and ``features_and_logits(images)``
    take uint8 (N, H, W, C) arrays and return float64 numpy arrays, computed in
    batches without gradients.
    """

    def __init__(self, name: str, model, prepare: Callable, forward: Callable,
                 device, batch_size: int = 64, num_classes: Optional[int] = None):
        self.name = name
        self.model = model
        self.prepare = prepare      # uint8 numpy batch -> float tensor on device
        self.forward = forward      # prepared batch -> (features, logits)
        self.device = device
        self.batch_size = batch_size
        self.num_classes = num_classes

    def features_and_logits(self, images, batch_size: Optional[int] = None,
                            progress: Optional[bool] = False) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from tqdm import tqdm

        x = _check_images(images)
        bs = int(batch_size or self.batch_size)
        feats, logits = [], []
        self.model.eval()
        with torch.inference_mode():
            # progress=None: a bar only when stderr is a terminal
            for lo in tqdm(range(0, x.shape[0], bs), disable=None if progress is None else not progress,
                           desc=f"{self.name} features", unit="batch", file=sys.stderr):
                f, l = self.forward(self.prepare(x[lo:lo + bs]))
                feats.append(f.float().cpu().numpy().astype(np.float64))
                logits.append(l.float().cpu().numpy().astype(np.float64))
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images, **kwargs) -> np.ndarray:
        return self.features_and_logits(images, **kwargs)[0]

    def logits(self, images, **kwargs) -> np.ndarray:
        return self.features_and_logits(images, **kwargs)[1]

    def __repr__(self) -> str:
        return f"FeatureNetwork({self.name!r}, device={self.device})"


# --- Inception --------------------------------------------------------------
def _read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled code
        raise ValueError(f"cannot read weights file {path} ({_reason(exc)})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _load_inception(weights=None, device=None):
    import timm

    if weights is not None:
        path = Path(weights)
        sd = _read_state_dict(path)
        model = timm.create_model(INCEPTION_MODEL, pretrained=False)
        own = model.state_dict()
        # torchvision's file carries the auxiliary classifier, which timm's model lacks.
        sd = {k: v for k, v in sd.items() if k in own or not k.startswith("AuxLogits.")}
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise ValueError(
                f"weights file {path} does not fit {INCEPTION_MODEL}: "
                f"{len(missing)} missing keys, {len(unexpected)} unexpected, "
                f"{len(shapes)} with other shapes (e.g. {(missing + unexpected + shapes)[:3]})")
        model.load_state_dict(sd, strict=True)
    else:
        import logging

        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # offline, the hub logs a warning per retry
        try:
            with hub_offline_if_unreachable():
                model = timm.create_model(INCEPTION_MODEL, pretrained=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot get the pretrained weights of {INCEPTION_MODEL} "
                f"({_reason(exc)}). "
                f"Offline, download them once elsewhere (the Hugging Face file "
                f"timm/{INCEPTION_MODEL}/model.safetensors, or torchvision's "
                f"inception_v3_google-*.pth) and pass weights=PATH (CLI: --weights PATH); "
                f"or use the 'classifier' feature network, which needs no download.") from None
        finally:
            hub_log.setLevel(level)
    return _wrap_inception(model, device)


def _wrap_inception(model, device=None) -> FeatureNetwork:
    import torch
    import torch.nn.functional as F

    device = _default_device(device)
    model = model.to(device).eval()
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), device=device).view(1, 3, 1, 1)

    def prepare(batch: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            # bilinear, as pytorch-fid resizes
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                              align_corners=False)
        return (x - mean) / std

    def forward(x):
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        return pooled, model.get_classifier()(pooled)

    return FeatureNetwork("inception", model, prepare, forward, device, batch_size=32,
                          num_classes=model.num_classes)


# --- Small classifier ---------------------------------------------------------
def _make_classifier(in_channels: int, num_classes: int, width: int = 16):
    import torch.nn as nn

    class SmallClassifier(nn.Module):
        """Two conv blocks, adaptive pooling to 4x4, a 128-d penultimate layer."""

        def __init__(self):
            super().__init__()
            w = width

            def block(cin, cout):
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                        nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

            self.body = nn.Sequential(
                *block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
                *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                *block(2 * w, 4 * w),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            )
            self.penultimate = nn.Sequential(nn.Linear(4 * w * 16, 128), nn.ReLU(inplace=True))
            self.dropout = nn.Dropout(0.25)
            self.head = nn.Linear(128, num_classes)

        def features_and_logits(self, x):
            f = self.penultimate(self.body(x))
            return f, self.head(self.dropout(f))

        def forward(self, x):
            return self.features_and_logits(x)[1]

    return SmallClassifier()


def _classifier_input(images, in_channels: int, image_size: int, device):
    """uint8 (N, H, W, C) numpy array or tensor -> normalised float (N, C, S, S) tensor."""
    import torch
    import torch.nn.functional as F

    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.to(device).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] != in_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"the classifier takes grey images, got {x.shape[1]} channels")
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    return (x - 0.5) / 0.5


def train_classifier(images, labels, num_classes: Optional[int] = None, steps: int = 300,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, device=None,
                     progress: Optional[bool] = False):
    """Train the small CNN classifier on uint8 images (N, H, W, C) and int labels.

    Images larger than 64 px are downscaled to 64 px (at training and use).
    Adam with a one-cycle schedule and +-2 px random shifts. The defaults reach
    about 98% held-out accuracy on the 5,000-image MNIST sample in well under a
    minute on a 2-core CPU. Returns the model in eval mode; its ``config``
    attribute records what ``save_classifier`` needs.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    x = _check_images(images, "training images")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"the classifier takes square images, got {x.shape[1]}x{x.shape[2]}")
    device = _default_device(device)
    # larger images are downscaled to 64 px: plenty for a domain classifier, and cheap
    in_channels, image_size = int(x.shape[-1]), min(int(x.shape[1]), CLASSIFIER_MAX_SIZE)
    config = {"in_channels": in_channels, "num_classes": int(num_classes),
              "image_size": image_size, "width": 16}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _make_classifier(in_channels, num_classes, config["width"]).to(device)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # uint8; batches are converted
    target = torch.from_numpy(y.astype(np.int64)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    pad = 2
    model.train()
    for _ in tqdm(range(steps), disable=None if progress is None else not progress,
                  desc="training classifier", file=sys.stderr):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(device)
        xb = _classifier_input(data[idx], in_channels, image_size, device)
        # random shifts of up to `pad` pixels (background is -1 after normalising)
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        xb = F.pad(xb, (pad, pad, pad, pad), value=-1.0)[..., dy:dy + image_size, dx:dx + image_size]
        loss = F.cross_entropy(model(xb), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.config = config
    return model


def save_classifier(model, path) -> None:
    """Write the classifier atomically (temporary file, then rename)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION,
               "config": dict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_classifier(path, device=None):
    """Load a classifier written by ``save_classifier`` (weights_only, no code runs)."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable classifier file ({_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a classifier written by metrics.py")
    if payload.get("version") != CLASSIFIER_VERSION:
        raise ValueError(f"{path} is classifier format version {payload.get('version')}; "
                         f"this metrics.py reads version {CLASSIFIER_VERSION}")
    config = payload.get("config")
    try:
        model = _make_classifier(int(config["in_channels"]), int(config["num_classes"]),
                                 int(config["width"]))
        model.load_state_dict(payload["state_dict"], strict=True)
        config = {k: int(config[k]) for k in ("in_channels", "num_classes", "image_size", "width")}
    except Exception as exc:
        raise ValueError(f"{path} holds a damaged classifier ({_reason(exc)})") from None
    model.config = config
    return model.to(_default_device(device)).eval()


def _wrap_classifier(model, device=None) -> FeatureNetwork:
    device = _default_device(device)
    model = model.to(device).eval()
    cfg = model.config

    def prepare(batch):
        return _classifier_input(batch, cfg["in_channels"], cfg["image_size"], device)

    return FeatureNetwork("classifier", model, prepare, model.features_and_logits, device,
                          batch_size=256, num_classes=cfg["num_classes"])


def load_feature_network(name: str, weights=None, classifier_path=None, train_images=None,
                         train_labels=None, num_classes: Optional[int] = None, device=None,
                         progress: Optional[bool] = False, **train_kwargs) -> FeatureNetwork:
    """Build a feature network by name.

    "inception": timm's inception_v3.tv_in1k with pretrained weights (from the
    hub, or ``weights=PATH``, a local .safetensors/.pth file); offline without
    weights it stops with a WeightsUnavailableError naming ``weights=`` and never
    falls back to random weights.

    "classifier": the small CNN. If ``classifier_path`` exists it is loaded
    (weights_only); otherwise it is trained on train_images/train_labels and,
    when ``classifier_path`` is given, saved there atomically.
    """
    if name == "inception":
        return _load_inception(weights, device)
    if name == "classifier":
        if classifier_path is not None and Path(classifier_path).exists():
            model = load_classifier(classifier_path, device)
            if num_classes is not None and model.config["num_classes"] != num_classes:
                raise ValueError(f"{classifier_path} was trained for {model.config['num_classes']} "
                                 f"classes, not {num_classes}")
            return _wrap_classifier(model, device)
        if train_images is None or train_labels is None:
            where = f" ({classifier_path} does not exist)" if classifier_path is not None else ""
            raise ValueError("the 'classifier' feature network needs a trained classifier file "
                             f"or train_images and train_labels to train one{where}")
        model = train_classifier(train_images, train_labels, num_classes, device=device,
                                 progress=progress, **train_kwargs)
        if classifier_path is not None:
            save_classifier(model, classifier_path)
        return _wrap_classifier(model, device)
    raise ValueError(f"unknown feature network {name!r}; choose from {', '.join(FEATURE_NETWORKS)}")


# ---------------------------------------------------------------------------
# Convenience
# ---------------------------------------------------------------------------
def evaluate_images(real_images, generated_images, generated_labels, net: FeatureNetwork,
                    splits: int = 10, progress: Optional[bool] = False) -> dict:
    """FID (real vs generated), IS of the generated images and, when labels are
    given (entries < 0 mean "no label" and are left out) and ``net`` is the
    classifier, conditioning accuracy.

    IS uses min(splits, number of generated images) splits (reported as is_splits).
    """
    real_f, _ = net.features_and_logits(real_images, progress=progress)
    gen_f, gen_l = net.features_and_logits(generated_images, progress=progress)
    out = {"fid": fid_from_features(real_f, gen_f)}
    k = min(int(splits), gen_l.shape[0])
    out["is_mean"], out["is_std"] = inception_score(gen_l, splits=k)
    out["is_splits"] = k
    out["n_real"], out["n_generated"] = int(real_f.shape[0]), int(gen_f.shape[0])
    if generated_labels is not None:
        y = np.asarray(generated_labels)
        if y.shape != (gen_l.shape[0],):
            raise ValueError(f"generated_labels must have shape ({gen_l.shape[0]},), got {y.shape}")
        mask = y >= 0
        # ImageNet classes say nothing about the requested dataset classes.
        if mask.any() and net.name == "classifier":
            out["conditioning_accuracy"] = conditioning_accuracy(gen_l[mask], y[mask])
    return out


# ---------------------------------------------------------------------------
# Loading image sets for the command line
# ---------------------------------------------------------------------------
def _read_folder_images(files: Sequence[Path], root: Path) -> np.ndarray:
    from PIL import Image

    arrays, modes = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arrays.append(np.asarray(im.convert("L" if grey else "RGB")))
                modes.append(grey)
        except Exception as exc:
            raise ValueError(f"cannot read image {f} ({_reason(exc)})") from None
    if not all(modes):  # any colour image: make all RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    first = arrays[0].shape
    for f, a in zip(files, arrays):
        if a.shape[:2] != first[:2]:
            raise ValueError(f"images in {root} have different sizes: {files[0].name} is "
                             f"{first[1]}x{first[0]}, {f.relative_to(root)} is {a.shape[1]}x{a.shape[0]}")
    return np.stack(arrays).astype(np.uint8)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_set(path) -> tuple[np.ndarray, Optional[np.ndarray], Optional[list]]:
    """(images, labels or None, class names or None) from a .npz or a folder.

    A folder holds images directly (no labels) or one sub-directory per class
    (labels in sorted sub-directory order). A .npz holds ``images`` and
    optionally ``labels`` (and ``class_names``).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path} is neither a folder of images nor a .npz file")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data.files:
                    raise ValueError(f"{path} has no 'images' array (it has: {', '.join(data.files) or 'nothing'})")
                images = data["images"]
                labels = data["labels"] if "labels" in data.files else None
                names = [str(s) for s in data["class_names"]] if "class_names" in data.files else None
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"cannot read {path} ({_reason(exc)})") from None
        images = _check_images(images, f"'images' in {path}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"'labels' in {path} must be integers of shape ({images.shape[0]},), "
                                 f"got {labels.dtype} {labels.shape}")
        return images, labels, names
    files = _list_images(path)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if files:
        return _read_folder_images(files, path), None, None
    class_files = [(d.name, _list_images(d)) for d in subdirs]
    class_files = [(n, fs) for n, fs in class_files if fs]
    if not class_files:
        raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                         "neither directly nor in class sub-directories")
    all_files = [f for _, fs in class_files for f in fs]
    labels = np.concatenate([np.full(len(fs), i, dtype=np.int64) for i, (_, fs) in enumerate(class_files)])
    return _read_folder_images(all_files, path), labels, [n for n, _ in class_files]


def _align_labels(gen_labels, gen_names, real_names, gen_path) -> Optional[np.ndarray]:
    """Map generated class indices onto the real set's class indices via names."""
    if gen_labels is None or gen_names is None or real_names is None:
        return gen_labels
    index = {n: i for i, n in enumerate(real_names)}
    missing = [n for n in gen_names if n not in index]
    if missing:
        raise ValueError(f"classes in {gen_path} not among the real classes: {', '.join(missing[:5])}")
    lut = np.array([index[n] for n in gen_names], dtype=np.int64)
    out = np.asarray(gen_labels).astype(np.int64)
    ok = out >= 0
    out[ok] = lut[out[ok]]
    return out


def _default_classifier_path(images: np.ndarray, labels: np.ndarray) -> Path:
    h = hashlib.sha1()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return Path(".cache") / "metrics" / f"classifier-{h.hexdigest()[:16]}.pt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="metrics.py",
        description="FID and IS between two image sets (folders of PNG/JPEG, flat or one "
                    "sub-directory per class, or .npz files with 'images' and optional 'labels').")
    parser.add_argument("real", help="real images: folder or .npz")
    parser.add_argument("generated", help="generated images: folder or .npz (e.g. sample.py's samples.npz)")
    parser.add_argument("--features", choices=FEATURE_NETWORKS, default="inception",
                        help="feature network (default: inception)")
    parser.add_argument("--weights", help="local weights file for the inception network (offline use)")
    parser.add_argument("--classifier", help="classifier file: loaded if it exists, else trained on "
                        "REAL (which then needs labels) and saved here (default: .cache/metrics/)")
    parser.add_argument("--splits", type=int, default=10, help="IS splits (default 10, at most N)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    try:
        real, real_labels, real_names = load_image_set(args.real)
        gen, gen_labels, gen_names = load_image_set(args.generated)
        gen_labels = _align_labels(gen_labels, gen_names, real_names, args.generated)
        if args.features == "classifier":
            path = args.classifier
            if path is None or not Path(path).exists():
                if real_labels is None:
                    raise ValueError(
                        f"--features classifier trains on REAL, which needs labels: give a .npz "
                        f"with 'labels' or a folder with one sub-directory per class "
                        f"({args.real} has none), or an existing --classifier file")
                if path is None:
                    path = _default_classifier_path(real, real_labels)
                if not Path(path).exists():
                    print(f"metrics.py: training the classifier on {args.real}, saving it to {path}",
                          file=sys.stderr)
            net = load_feature_network("classifier", classifier_path=path, train_images=real,
                                       train_labels=real_labels, device=args.device, progress=None)
        else:
            net = load_feature_network("inception", weights=args.weights, device=args.device)
        if args.batch_size:
            net.batch_size = args.batch_size
        if gen_labels is not None and net.num_classes is not None and \
                args.features == "classifier" and gen_labels.max() >= net.num_classes:
            raise ValueError(f"labels in {args.generated} go up to {gen_labels.max()}, "
                             f"but the classifier knows {net.num_classes} classes")
        use_labels = gen_labels if args.features == "classifier" else None
        result = evaluate_images(real, gen, use_labels, net, splits=args.splits, progress=None)
    except (ValueError, OSError, WeightsUnavailableError) as exc:
        msg = " ".join(str(exc).split())
        print(f"metrics.py: error: {msg}", file=sys.stderr)
        return 2
    result["features"] = args.features
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
