"""The conditions of a set of images: what the U-Net is told about each image, in training and in sampling.

The method: an image's conditions are its class, `label`, and its
position in a feature space, `pos`: by default (train.py --backbone pixels)
the space of the flattened pixels, no pretrained network; a pretrained
network's, such as the report's SwinV2, when --backbone names one:

    f(x)       features of the image: pixels (the default), a small classifier or a timm model (the report: SwinV2)
    u          a --pos-dim (default 20) UMAP position of f(x)      (McInnes et al. 2018; features.FeatureSpace)
    pos        z = (u - mean) / std, each dimension standardised over the training positions

Training fits the UMAP on the features of every training image
(`fit_space`, Method steps 1-2; sampling never fits). Where u comes from:

- a training image (its index in the training set known) gets the position
  UMAP fitted for it, u_i = space.positions[i]: the very position the model
  was trained with. A training image used as a reference (sample.py's class
  grids, --references, the endpoints of a --between walk along the default
  `--walk-path line`) is therefore at its training position, and its
  features are not extracted again. Not so along `--walk-path features`:
  there every point, the endpoints s = 0 and 1 included, is UMAP's transform
  of the mixed features (1 - s) f_A + s f_B (boundary.walk_conditions; the
  stored training features, not extracted again), and UMAP's transform of a
  training image's own features is in general not its fitted position;
- a new image (a reference file of the user's) gets UMAP's transform of its
  features, `space.transform(f(x))` (Method step 4).

`image_conditions` is the one place where conditions are computed: train.py
calls it for the training images, sample.py for every request. A fork adds a
condition here and in unet.py (README, "Forking: add a new condition").
"""
import os

import numpy as np

from features import FeatureSpace, extract_features
from plumbing.rundir import Run


def image_conditions(names: list[str], images: np.ndarray, labels: np.ndarray, space: FeatureSpace | None,
                     settings: dict, train_index: np.ndarray | None = None, device=None) -> dict[str, np.ndarray]:
    """The conditions `names` of M images: name -> (M, ...) array.

    images (M, H, W, C) uint8 and labels (M,) their classes; space: the run's
    fitted FeatureSpace (for "pos"); settings: the run's settings (backbone,
    weights, root); train_index (M,): each image's index in the training set,
    -1 for a new image (None: every image is new).
    """
    cond = {}
    if "label" in names:
        cond["label"] = np.asarray(labels, dtype=np.int64)  # (M,) class index
    if "pos" in names:
        cond["pos"] = positions(images, space, settings, train_index, device)  # (M, d) standardised
    missing = [name for name in names if name not in cond]
    if missing:
        raise ValueError(f"condition {missing[0]!r} has no value: compute it in conditions.image_conditions")
    # float conditions in float32, the U-Net's dtype: a float64 one would fail in nn.Linear in fp32 but pass under autocast
    return {name: value.astype(np.float32) if value.dtype.kind == "f" else value for name, value in cond.items()}


def positions(images: np.ndarray, space: FeatureSpace, settings: dict,
              train_index: np.ndarray | None = None, device=None) -> np.ndarray:
    """Standardised positions (M, d): the fitted position of a training image, UMAP's transform for a new one."""
    index = np.full(len(images), -1) if train_index is None else np.asarray(train_index, dtype=np.int64)
    known = index >= 0
    u = np.empty((len(images), space.n_components), np.float32)  # (M, d) UMAP positions
    u[known] = space.positions[index[known]]
    if not known.all():
        u[~known] = space.transform(image_features(images[~known], settings, device))
    return space.standardize(u)


def image_features(images: np.ndarray, settings: dict, device=None) -> np.ndarray:
    """f(x) with the run's backbone: (M, H, W, C) uint8 -> (M, D) float32 (a timm backbone's features cached in
    ROOT/cache, ROOT the run's train.py --root; pixels and classifier features never), on `device` (the command's
    --device; None: the best available)."""
    return extract_features(images, backbone=settings["backbone"], weights=settings["weights"],
                            device=None if device is None else str(device), cache_dir=os.path.join(settings["root"], "cache"))


def fit_space(images: np.ndarray, settings: dict) -> FeatureSpace:
    """Method steps 1-2, training only: the features of every training image -> a fitted --pos-dim UMAP."""
    return FeatureSpace.fit(image_features(images, settings, settings.get("device")), n_components=settings["pos_dim"],
                            seed=settings["seed"], backbone=settings["backbone"])


def condition_sizes(cond: dict[str, np.ndarray]) -> dict[str, int]:
    """The U-Net's `conditions` (name -> size), read off the values of every training image.

    An integer condition is a category per image, shape (N,): it has max + 1
    categories. A float condition is d numbers per image, shape (N, d): it is
    d wide (one number per image is (N, 1): write value[:, None]).
    """
    sizes = {}
    for name, value in cond.items():
        value = np.asarray(value)
        if value.dtype.kind in "iu" and value.ndim == 1:
            sizes[name] = int(value.max()) + 1
        elif value.dtype.kind == "f" and value.ndim == 2:
            if value.dtype != np.float32:  # nn.Linear in fp32 refuses other floats; bf16 autocast would hide it
                raise ValueError(f"condition {name!r} is {value.dtype}: give float32 (value.astype(np.float32)), "
                                 "the U-Net's dtype")
            sizes[name] = value.shape[1]
        else:
            kind = "a float" if value.dtype.kind == "f" else "an integer" if value.dtype.kind in "iu" else "a"
            raise ValueError(f"condition {name!r} is {kind} array of shape {value.shape}: a category condition must "
                             "be integers of shape (N,), a float condition (N, d) (for one number per image, "
                             "value[:, None])")
    return sizes


def reference_positions(run: Run, reference_images: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Method step 4: (R, H, W, C) uint8 references -> (R, d) standardised positions (conditions.positions).

    reference (R,): each image's index in the training data (its fitted position), -1 or None: a new image (UMAP transform).
    """
    return positions(reference_images, run.space, run.config["settings"], reference, run.device)


def request_conditions(run: Run, labels: np.ndarray, reference_images: np.ndarray,
                       reference: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The conditions of M requests (a class and a reference image each): (M,), (M, H, W, C) -> name -> (M, ...).

    Only the conditions the run's U-Net takes, computed by conditions.image_conditions as in training;
    reference (M,): each reference's index in the training data, -1 or None for a new image.
    """
    return image_conditions(list(run.config["unet"]["conditions"]), reference_images, labels, run.space,
                                       run.config["settings"], train_index=reference, device=run.device)
