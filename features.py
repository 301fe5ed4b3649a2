"""Where an image sits in a feature space: its position `pos` (the report's `umap_loc`). The space is the
flattened pixels by default (train.py --backbone pixels: no pretrained network), a pretrained network's such as
the report's SwinV2 when --backbone names one.

The paper's new condition (docs/METHOD.md, steps 1, 2 and 4):

1. every training image goes through an ImageNet-pretrained Swin Transformer
   V2 (timm `swinv2_base_window12to16_192to256.ms_in22k_ft_in1k`); its pooled
   features are a 1,024-d vector f(x)                 -> `extract_features`
2. UMAP (McInnes et al. 2018, umap-learn), fitted on the training features,
   maps each f(x) to a 20-d (--pos-dim) position u(x), the image's `pos`
                                                       -> `FeatureSpace.fit`
4. a reference image's position comes from the same fitted UMAP: a training
   image's is its fitted position, space.positions[i], the one it was
   trained with; only a new image (not in training) is placed by UMAP's
   transform of its features                           -> `FeatureSpace.transform`
   (conditions.positions chooses between the two)

The U-Net is fed standardised positions, (u - mean) / std with the mean and
std of the training positions (`FeatureSpace.standardize`). Figure 7 of the
report, a 2-D UMAP scatter coloured by class, is `plot_positions`.

`--backbone pixels` (train.py's default) replaces step 1 by the flattened pixels: no weights, fast,
and on MNIST UMAP separates the digits well from pixels alone.

`create_backbone` is the one place a timm backbone is made (metrics.py's Inception too), with the hub's
weights, a local file's or seeded random ones; where weights come from and the feature cache are
plumbing/weights.py's (not the method).
"""
import functools
import os
import sys
import time
import warnings
import zipfile

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from plumbing import classifier
from plumbing.data import write_atomically
from plumbing.weights import cache_name, create_pretrained, first_line, head_prefixes, load_cached, load_weights

PAPER_BACKBONE = "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k"  # the report's backbone (train.py's default is pixels)
RANDOM_WEIGHTS_SEED = 0  # weights="random" is reproducible, hence cacheable


# ---------------------------------------------------------------------------
# Step 1: feature vectors f(x)
# ---------------------------------------------------------------------------
def extract_features(
    images: np.ndarray,
    backbone: str,
    weights: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | None = "data/cache",
) -> np.ndarray:
    """Feature vectors of uint8 images (N, H, W, C) -> float32 (N, D).

    backbone: "pixels" (flattened pixels in [0, 1]), "classifier" (the 128-d
      penultimate features of a small digit classifier saved by plumbing/classifier.py,
      given as `weights`: a semantic space) or any timm model name, such as
      the report's PAPER_BACKBONE. No default: every caller says which.
    weights: see `create_backbone` (None: the hub; a path: a local file;
      "random": seeded random weights, tests only).
    device: where a timm backbone or the classifier runs (the user's --device);
      None picks the best available (`pick_device`). A timm backbone runs in
      bfloat16 on CUDA, float32 elsewhere (`backbone_dtype`).
    cache_dir: timm backbone features are saved there as .npy, keyed by the
      images' content, the backbone, the weights, the device type and the
      precision, so that a second run skips extraction and features computed
      in bf16 on a GPU are never mixed with fp32 ones; None disables the
      cache. Pixels and classifier features are never cached.
    """
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] not in (1, 3):
        raise ValueError(
            f"images must be uint8 of shape (N, H, W, C) with C = 1 or 3, got {images.dtype} {images.shape}"
        )
    if backbone == "pixels":
        return pixel_features(images)
    if backbone == "classifier":
        return classifier_features(images, weights, device)
    if weights not in (None, "random") and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights} not found (--weights PATH needs a local file)")
    device = pick_device(device)
    dtype = backbone_dtype(device)
    where = f"{backbone} on {device.type} in {str(dtype).removeprefix('torch.')}"
    cache = cache_dir and os.path.join(cache_dir, cache_name(images, backbone, weights, device.type, dtype))
    if cache and os.path.exists(cache):
        features = load_cached(cache, len(images))
        if features is not None:
            print(f"features: {len(images)} images through {where}: read from the cache {cache}", file=sys.stderr)
            return features
    print(f"features: {len(images)} images through {where} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    model = create_backbone(backbone, weights)
    features = run_backbone(model, images, batch_size, device)
    print(f"features: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if cache:
        write_atomically(cache, lambda f: np.save(f, features, allow_pickle=False))
    return features


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H*W*C) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def classifier_features(images: np.ndarray, weights: str | None, device: str | None = None) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, 128) float32: the penultimate layer of a classifier file written by
    classifier.save_classifier, run on `device` (None: the best available). Its distances follow the
    labels it was trained on, not the pixels."""
    if weights is None:
        raise FileNotFoundError("--backbone classifier needs --weights FILE, a classifier saved by plumbing/classifier.py "
                                "(metrics.py REAL GENERATED --features classifier --classifier FILE)")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights {weights}: file not found (the classifier of --backbone classifier)")
    return classifier.load_classifier(weights, device).features_and_logits(images)[0].astype(np.float32)


def create_backbone(
    name: str, weights: str | None, keep_head: bool = False, *, ignore_prefixes: tuple[str, ...] = ()
) -> torch.nn.Module:
    """A timm model in eval mode, with the weights asked for.

    weights:
      None      timm's pretrained weights from the Hugging Face hub (or its local
                cache); if they cannot be had, WeightsUnavailableError, never a
                silent fallback to random weights;
      "random"  seeded random weights: the explicit opt-in, for tests only;
      a path    a local .safetensors or torch file (`read_state_dict`: no code
                runs), e.g. the model.safetensors of the model's page on
                huggingface.co/timm (the --weights PATH of train.py).
    keep_head: False removes the classifier (num_classes=0: forward gives the
      pooled features, what `extract_features` uses); True keeps it (metrics.py
      needs Inception's logits).
    ignore_prefixes: keys of a weights file to skip (see `load_weights`).
    """
    import timm  # imported on use, like umap below: each takes seconds to import; "pixels" never needs timm

    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {name!r}: use --backbone pixels or a timm model name such as {PAPER_BACKBONE}")
    head = {} if keep_head else {"num_classes": 0}
    if weights is None:
        model = create_pretrained(name, **head)
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(name, pretrained=False, **head)
    else:
        model = timm.create_model(name, pretrained=False, **head)  # pretrained_cfg (mean, std, size) still from the tag
        if not keep_head:  # hub files carry the classifier this model no longer has
            ignore_prefixes = tuple(ignore_prefixes) + head_prefixes(model)
        load_weights(model, weights, ignore_prefixes)
    return model.eval()




def pick_device(name: str | None = None) -> torch.device:
    """The device asked for (e.g. --device cuda), else the best available: cuda, then mps, then cpu."""
    if name is not None:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def backbone_dtype(device: torch.device) -> torch.dtype:
    """The precision a backbone runs in: bfloat16 autocast on CUDA (tensor cores), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def run_backbone(
    model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device | str | None
) -> np.ndarray:
    """Pooled features of every image, in batches: (N, H, W, C) uint8 -> (N, D) float32.

    Each image is prepared by the model's own eval transform (timm data
    config: resize, centre crop, normalise with its mean and std), grey
    replicated to RGB. The model runs on `device` (None: `pick_device`) in
    `backbone_dtype(device)`; the features come back as float32.
    """
    import timm.data

    device = pick_device(device)
    model = model.to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    chunks = []
    dtype = backbone_dtype(device)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    name = model.pretrained_cfg["architecture"]
    # disable=None: a progress bar on a terminal, nothing in a log file (nohup, CI)
    for start in tqdm(range(0, len(images), batch_size), desc=f"features ({name})", disable=None):
        batch = images[start:start + batch_size]  # (B, H, W, C) uint8
        pictures = [Image.fromarray(image if image.shape[2] == 3 else image[..., 0]).convert("RGB") for image in batch]
        x = torch.stack([transform(picture) for picture in pictures]).to(device)  # (B, 3, h, w), the model's size
        with torch.inference_mode(), autocast:
            chunks.append(model(x).float().cpu().numpy())  # (B, D)
    return np.concatenate(chunks).astype(np.float32)


# ---------------------------------------------------------------------------
# Steps 2 and 4: UMAP positions u(x)
# ---------------------------------------------------------------------------
def keeps_torch_threads(function):
    """Run `function` (UMAP's numba code) and give torch back the number of CPU threads it had.

    numba's first parallel kernel in a process starts its OpenMP pool with
    omp_set_num_threads(NUMBA_NUM_THREADS, the logical CPUs); torch and numba
    load the same libgomp.so.1, so that call also sets the threads of every
    later torch op. The sums inside a torch op then split differently: a run
    that fitted its UMAP would train with other numerics than its --resume,
    which loads space.npz and never starts numba (e.g. OMP_NUM_THREADS=1: 1
    thread resumed, 2 after the fit on a 2-CPU machine). numba starts its
    pool only once, so restoring the count afterwards is enough; it is left
    alone where it did not change.
    """
    @functools.wraps(function)
    def kept(*args, **kwargs):
        threads = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    return kept


UMAP_EXACT_BELOW = 4096  # umap-learn finds the neighbours of fewer training points exactly (all N^2 distances)


def exact_distances(features: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances (N, D) -> (N, N) float32, the very matrix UMAP.fit computes below 4,096 points.

    umap-learn gets it from sklearn's pairwise_distances, calling its numba metric
    `umap.distances.euclidean` once per pair from Python: about 11 s for 4,000
    digits. The same metric on the same pairs (i < j, mirrored; then the
    diagonal, as sklearn does) in one compiled loop takes about 2 s, and UMAP
    fitted on it (metric="precomputed") gives the same embedding bit for bit
    (tests/test_features.py) where the neighbour graph is connected (FeatureSpace.fit
    refits from the features where it is not: umap's start then places the parts
    by distances from the data it was given).
    """
    return compiled_distances()(np.ascontiguousarray(features, dtype=np.float32))


@functools.cache
def compiled_distances():
    """exact_distances' loop, compiled by numba once per process (umap, and so numba, imported only when needed)."""
    import numba
    from umap.distances import euclidean

    @numba.njit
    def upper_triangle_mirrored(x):  # (N, D) float32 -> (N, N) float32
        n = x.shape[0]
        out = np.zeros((n, n), dtype=np.float32)
        for i in range(n):
            for j in range(i + 1, n):
                out[i, j] = euclidean(x[i], x[j])
        out = out + out.T
        for i in range(n):
            out[i, i] = euclidean(x[i], x[i])
        return out

    return upper_triangle_mirrored


SPACE_FORMAT = 2  # the .npz layout below; 1 was the refitting format (no a, b)
REFIT = "train.py writes it: train the run again with --overwrite"  # the fix for a bad space file


class FeatureSpace:
    """A UMAP fitted on the training features: positions of training and reference images.

    The space is plain arrays and numbers: the training features (N, D), their
    positions (N, d) from the fit, and the UMAP settings that placing a new
    point needs (`params`: a, b, n_neighbors, transform_seed, ...).

    `positions` are the fitted positions of the training images themselves
    (UMAP's embedding_), row i that of the image whose features are row i of
    `features`, i.e. in the order of the features the space was fitted on
    (the training images' order). A training image's position is its row
    here; `transform` is for new images (references not in training), and
    would place a training image near, not at, its fitted position.
    `standardize` maps either to what the U-Net is fed. `transform`
    computes UMAP's transform from these alone, with umap-learn's own
    building blocks, so a space loaded from its .npz (no pickle, no refit)
    gives exactly the positions of the space that was fitted and saved, on
    any machine. `umap` is the fitted umap.UMAP (None after `load`; below
    4,096 points fitted on the distances, so its transform takes distances, not features), kept only
    to compare against; nothing here uses it.
    """

    def __init__(self, features: np.ndarray, positions: np.ndarray, params: dict, backbone: str,
                 run_id: str = "", umap=None):
        self.features = features  # (N, D) float32 training features
        self.positions = positions  # (N, d) float32 training positions, UMAP's embedding_
        self.params = params  # UMAP's settings, plain numbers (see fit)
        self.backbone = backbone
        self.run_id = run_id  # which training run this space belongs to ("" before it is saved)
        self.umap = umap
        self.n_components = positions.shape[1]
        self.mean = positions.mean(axis=0)  # (d,)
        self.std = positions.std(axis=0)  # (d,)

    @classmethod
    @keeps_torch_threads
    def fit(
        cls,
        features: np.ndarray,
        n_components: int = 20,
        seed: int = 0,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        backbone: str = "unknown",
    ) -> "FeatureSpace":
        """Fit UMAP on training features (N, D) -> a space whose .positions are (N, n_components)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {features.shape}")
        if len(features) <= n_neighbors:
            raise ValueError(
                f"need more than {n_neighbors} training images (UMAP's n_neighbors), got {len(features)}"
            )
        if len(features) <= n_components + 1:  # UMAP's spectral start needs n_components + 1 eigenvectors of an N x N graph
            raise ValueError(f"need more than {n_components + 1} training images for a {n_components}-d position "
                             f"(--pos-dim {n_components}), got {len(features)}: add images or pass a smaller --pos-dim")
        import scipy.sparse.csgraph
        import umap  # (slow to import: after the checks)

        print(f"UMAP: fitting {len(features)} x {features.shape[1]} -> {n_components}-d (numba compiles its "
              "kernels on first use in a process: 10-30 s) ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if len(features) < UMAP_EXACT_BELOW:  # umap's exact case: hand it the distances it would compute
            data, metric = exact_distances(features), "precomputed"  # (N, D) -> (N, N)
        else:
            data, metric = features, "euclidean"
        reducer = umap.UMAP(  # random_state makes the fit deterministic (and single-threaded)
            n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1,
            metric=metric,
        )
        with warnings.catch_warnings():  # "using precomputed metric; inverse_transform will be unavailable": unused
            warnings.filterwarnings("ignore", message="using precomputed metric")
            reducer.fit(data)
        if metric == "precomputed" and scipy.sparse.csgraph.connected_components(reducer.graph_)[0] > 1:
            reducer = umap.UMAP(  # a graph in parts: umap places them by the data's distances, so fit on features
                n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1
            ).fit(features)
        print(f" done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        params = dict(  # the settings UMAP.transform reads from the fitted model (besides the two arrays) and,
            # not read by it, min_dist, spread and the fit's seed, kept to say how the space was made
            n_neighbors=int(reducer._n_neighbors),
            min_dist=float(reducer.min_dist),
            spread=float(reducer.spread),
            a=float(reducer._a),  # the output similarity 1 / (1 + a d^(2b)), a and b fitted to min_dist and spread
            b=float(reducer._b),
            seed=int(seed),
            transform_seed=int(reducer.transform_seed),
            n_epochs=-1 if reducer.n_epochs is None else int(reducer.n_epochs),  # -1: umap's default
            learning_rate=float(reducer.learning_rate),
            repulsion_strength=float(reducer.repulsion_strength),
            negative_sample_rate=int(reducer.negative_sample_rate),
            local_connectivity=float(reducer.local_connectivity),
        )
        return cls(features, reducer.embedding_.astype(np.float32), params, backbone, umap=reducer)

    @keeps_torch_threads
    def transform(self, features: np.ndarray) -> np.ndarray:
        """Positions of new images (references) in this space: (M, D) -> (M, d) float32.

        umap-learn's UMAP.transform (0.5), step by step, with its own numba
        kernels, on the stored arrays. The graph and the layout follow McInnes
        et al. 2018 (arXiv:1802.03426), Sec. 3.1 (graph) and 3.2 (layout).
        One difference: the neighbours are found exactly (brute force), as
        umap does for fewer than 4,096 training images; for more, umap
        searches its approximate NN-descent index, so the two differ a little
        (`python -m experiments.bench features` measures how much).
        """
        from scipy.sparse import coo_matrix
        from umap.layouts import optimize_layout_euclidean
        from umap.umap_ import (INT32_MAX, INT32_MIN, compute_membership_strengths, init_graph_transform,
                                make_epochs_per_sample, smooth_knn_dist)

        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"features must be (M, {self.features.shape[1]}) like the {self.backbone!r} features "
                f"this space was fitted on, got shape {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError("features must be finite: the reference features hold NaN or infinity")
        if len(x) == 0:
            return np.zeros((0, self.n_components), np.float32)
        p = self.params
        k = p["n_neighbors"]

        # 1. The k nearest training images of each new image, found exactly: (M, k) indices and distances.
        indices, distances = nearest_neighbours(x, self.features, k)

        # 2. Fuzzy membership of each edge new -> training image, as umap's transform computes it (the graph of
        #    Sec. 3.1 and its Algorithm 3, with two departures): w_j = exp(-(d_j - rho) / sigma) for each of the k
        #    neighbours j = 1..k, nearest first. rho = 0 here, not the paper's distance to the nearest neighbour:
        #    transform passes local_connectivity - 1 (0 for the fitted 1, umap's default), so only a neighbour
        #    at distance 0 (the same features) gets w = 1. sigma is found by binary search such that the k - 1
        #    weights of neighbours 2..k sum to log2(k) (smooth_knn_dist skips the first neighbour, which in a
        #    fit is the point itself), and is at least 1e-3 times the mean of all M x k distances.
        sigmas, rhos = smooth_knn_dist(
            distances, float(k), local_connectivity=float(max(0.0, p["local_connectivity"] - 1.0))
        )
        rows, cols, weights, _ = compute_membership_strengths(indices, distances, sigmas, rhos, bipartite=True)
        graph = coo_matrix((weights, (rows, cols)), shape=(len(x), len(self.features)))  # (M, N)

        # 3. Start at the weighted mean of the neighbours' positions (or at the position of a
        #    training image with the same features, whose weight is 1).
        start = graph.tocsr()
        start.eliminate_zeros()
        embedding = init_graph_transform(start, self.positions)  # (M, d) float32

        # 4. Epochs as umap's transform chooses them (100 for up to 10,000 new images, else 30; with an
        #    n_epochs given to the fit, a third of it); edges too weak to be sampled once in n_epochs
        #    (w < max w / n_epochs) are dropped, and each edge is sampled in proportion to its weight.
        if p["n_epochs"] < 0:
            n_epochs = 100 if len(x) <= 10_000 else 30
        else:
            n_epochs = int(p["n_epochs"] // 3.0)
        graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
        graph.eliminate_zeros()
        epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)

        # 5. Stochastic gradient descent on the fuzzy-set cross entropy (Sec. 3.2,
        #    Algorithm 5): attract along the edges, repel from randomly drawn
        #    training positions, which themselves stay fixed (move_other=False), with a
        #    learning rate starting at a quarter of the fit's. As in umap's transform;
        #    the random stream is seeded by transform_seed, as there.
        rng_state = np.random.RandomState(p["transform_seed"]).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
        embedding = optimize_layout_euclidean(
            embedding, self.positions.copy(), graph.row, graph.col, n_epochs, len(self.features),
            epochs_per_sample, p["a"], p["b"], rng_state,
            gamma=p["repulsion_strength"], initial_alpha=p["learning_rate"] / 4.0,
            negative_sample_rate=p["negative_sample_rate"], parallel=False, move_other=False,
        )
        return embedding.astype(np.float32)

    def standardize(self, positions: np.ndarray) -> np.ndarray:
        """z = (u - mean) / std, per dimension: what the U-Net is fed."""
        return ((positions - self.mean) / self.std).astype(np.float32)

    def save(self, path: str, run_id: str = "") -> None:
        """Write the space to an .npz of plain arrays (no pickle), atomically; run_id names its training run."""
        self.run_id = run_id
        arrays = dict(
            format=np.int64(SPACE_FORMAT),
            features=self.features,
            positions=self.positions,
            backbone=np.str_(self.backbone),
            run_id=np.str_(run_id),
            **{name: np.asarray(value) for name, value in self.params.items()},
        )
        write_atomically(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str, backbone: str | None = None, n_components: int | None = None) -> "FeatureSpace":
        """A saved space, from its arrays alone (nothing is fitted); backbone / n_components, if given, must match."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature space {path} not found; {REFIT}")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a feature space (not an .npz archive); {REFIT}")
        names = ("format", "features", "positions", "backbone", "run_id", *PARAM_TYPES)
        try:
            with np.load(path, allow_pickle=False) as saved:
                stored = {name: saved[name] for name in names if name in saved.files}
        except Exception as error:  # a damaged archive (bad CRC, truncated member) or a pickled array
            problem = ("holds pickled objects, not plain arrays, and is refused because loading it could run code"
                       if "allow_pickle" in str(error) else f"is damaged ({type(error).__name__}: {first_line(error)})")
            raise ValueError(f"{path} {problem}; {REFIT}") from None
        lacking = [name for name in names if name not in stored]
        if lacking:
            raise ValueError(f"{path} is not a feature space of this version (no {lacking[0]!r} array); {REFIT}")
        features, positions = stored["features"], stored["positions"]
        try:
            params = {name: kind(stored[name]) for name, kind in PARAM_TYPES.items()}  # plain numbers again
            fits = int(stored["format"]) == SPACE_FORMAT
        except (TypeError, ValueError):
            fits = False
        if (not fits or features.dtype != np.float32 or positions.dtype != np.float32
                or features.ndim != 2 or positions.ndim != 2 or len(features) != len(positions)):
            raise ValueError(
                f"{path} is not a feature space of this version (format {stored['format']}, features "
                f"{features.dtype} {features.shape}, positions {positions.dtype} {positions.shape}); {REFIT}"
            )
        saved_backbone, saved_components = str(stored["backbone"]), positions.shape[1]
        if backbone is not None and backbone != saved_backbone:
            raise ValueError(
                f"{path} was fitted on {saved_backbone!r} features, not {backbone!r}: "
                f"use --backbone {saved_backbone}, or train a new run (--overwrite)"
            )
        if n_components is not None and n_components != saved_components:
            raise ValueError(
                f"{path} is {saved_components}-dimensional, not {n_components}: "
                f"use --pos-dim {saved_components}, or train a new run (--overwrite)"
            )
        return cls(features, positions, params, saved_backbone, run_id=str(stored["run_id"]))


PARAM_TYPES = dict(  # FeatureSpace.params: name -> type, as saved
    n_neighbors=int, min_dist=float, spread=float, a=float, b=float, seed=int, transform_seed=int, n_epochs=int,
    learning_rate=float, repulsion_strength=float, negative_sample_rate=int, local_connectivity=float,
)


def nearest_neighbours(x: np.ndarray, train: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `train` (N, D) for each row of `x` (M, D), by brute force:
    int32 indices and float32 euclidean distances, (M, k) each, nearest first."""
    shortlist = min(2 * k, len(train))
    train64 = train.astype(np.float64)
    train_sq = (train64 ** 2).sum(axis=1)  # (N,)
    indices = np.empty((len(x), k), np.int32)
    distances = np.empty((len(x), k), np.float32)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]  # (m, D)
        # squared distances by |x|^2 + |t|^2 - 2 x.t (one matrix product), to shortlist 2k candidates ...
        part64 = part.astype(np.float64)
        d2 = (part64 ** 2).sum(axis=1)[:, None] + train_sq[None, :] - 2.0 * (part64 @ train64.T)  # (m, N)
        candidates = np.argpartition(d2, shortlist - 1, axis=1)[:, :shortlist]  # (m, 2k), unordered
        # ... then their exact distances, computed like umap's euclidean kernel
        # (float32 differences, squared, summed in float64), nearest first
        exact = np.sqrt(((part[:, None, :] - train[candidates]) ** 2).astype(np.float64).sum(axis=2))  # (m, 2k)
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        indices[start:start + chunk] = np.take_along_axis(candidates, order, axis=1)
        distances[start:start + chunk] = np.take_along_axis(exact, order, axis=1)
    return indices, distances


@keeps_torch_threads
def plot_positions(
    features_or_positions: np.ndarray,
    labels: np.ndarray,
    path: str,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> None:
    """The report's Figure 7: a 2-D UMAP scatter of the images, coloured by class, saved as PNG.

    Input with 2 columns is plotted as it is; anything wider is first reduced
    to 2-D by UMAP (random_state=seed).
    """
    import matplotlib
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    points = np.asarray(features_or_positions, dtype=np.float32)
    if points.ndim != 2 or len(points) != len(labels):
        raise ValueError(f"need (N, D) points and N labels, got {points.shape} and {len(labels)} labels")
    if points.shape[1] != 2:
        import umap

        points = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(points)  # (N, D) -> (N, 2)
    n_classes = int(labels.max()) + 1
    class_names = class_names or [str(k) for k in range(n_classes)]
    colours = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    for k in range(n_classes):
        members = labels == k
        axes.scatter(points[members, 0], points[members, 1], s=3, color=colours(k % colours.N), label=class_names[k])
    axes.set(title=f"2-D UMAP of {len(points)} images", xlabel="UMAP 1", ylabel="UMAP 2")
    axes.legend(markerscale=4, fontsize="small", loc="best")
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=120, bbox_inches="tight"))
