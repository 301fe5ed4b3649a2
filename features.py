"""Where an image sits in a pretrained feature space: its `umap_loc`.

The paper's new condition (PAPER.md, Method steps 1, 2 and 4):

1. every training image goes through an ImageNet-pretrained Swin Transformer
   V2 (timm `swinv2_base_window12to16_192to256.ms_in22k_ft_in1k`); its pooled
   features are a 1,024-d vector f(x)                 -> `extract_features`
2. UMAP (McInnes et al. 2018, umap-learn), fitted on the training features,
   maps each f(x) to a 20-d position u(x), the image's `umap_loc`
                                                       -> `FeatureSpace.fit`
4. a reference image's position comes from the same fitted UMAP
                                                       -> `FeatureSpace.transform`

The U-Net is fed standardised positions, (u - mean) / std with the mean and
std of the training positions (`FeatureSpace.standardize`). Figure 7 of the
report, a 2-D UMAP scatter coloured by class, is `plot_positions`.

`backbone="pixels"` replaces step 1 by the flattened pixels: no weights, fast,
and on MNIST UMAP separates the digits well from pixels alone.
"""
import contextlib
import hashlib
import os
import re
import socket
import tempfile
import urllib.parse

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

PAPER_BACKBONE = "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k"
RANDOM_WEIGHTS_SEED = 0  # weights="random" is reproducible, hence cacheable


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had (offline, or none exist for the model)."""


# ---------------------------------------------------------------------------
# Step 1: feature vectors f(x)
# ---------------------------------------------------------------------------
def extract_features(
    images: np.ndarray,
    backbone: str = PAPER_BACKBONE,
    weights: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | None = "data/cache",
) -> np.ndarray:
    """Feature vectors of uint8 images (N, H, W, C) -> float32 (N, D).

    backbone: "pixels" (flattened pixels in [0, 1]) or any timm model name.
    weights: None downloads the model's pretrained weights from the hub;
      a path loads a local timm state dict (.safetensors, or a torch file read
      with weights_only=True), e.g. the model.safetensors of the model's page
      on huggingface.co/timm; "random" is the explicit opt-in to random
      weights (tests only: random features are not a feature space).
    cache_dir: backbone features are saved there as .npy, keyed by the
      images' content, the backbone and the weights, so that a second run
      skips extraction; None disables the cache. Pixels are never cached.
    """
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] not in (1, 3):
        raise ValueError(
            f"images must be uint8 of shape (N, H, W, C) with C = 1 or 3, got {images.dtype} {images.shape}"
        )
    if backbone == "pixels":
        return pixel_features(images)
    if weights not in (None, "random") and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights} not found (weights=PATH needs a local file)")
    cache = cache_dir and os.path.join(cache_dir, cache_name(images, backbone, weights))
    if cache and os.path.exists(cache):
        features = load_cached(cache, len(images))
        if features is not None:
            return features
    model = create_backbone(backbone, weights)
    features = run_backbone(model, images, batch_size, device)
    if cache:
        write_atomically(cache, lambda f: np.save(f, features, allow_pickle=False))
    return features


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H*W*C) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def create_backbone(name: str, weights: str | None) -> torch.nn.Module:
    """A timm model without its classifier head (num_classes=0: forward gives pooled features)."""
    import timm  # imported on use, like umap below: both take seconds, and "pixels" needs neither

    if not timm.is_model(name):
        raise ValueError(
            f"unknown backbone {name!r}: use 'pixels' or a timm model name such as {PAPER_BACKBONE!r}"
        )
    if weights is None:
        model = create_pretrained(name)
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(name, pretrained=False, num_classes=0)
    else:
        model = timm.create_model(name, pretrained=False)  # pretrained_cfg (mean, std, size) still from the tag
        load_weights(model, weights)
        model.reset_classifier(0)
    return model.eval()


@contextlib.contextmanager
def hub_offline_if_unreachable():
    """Without a network, huggingface_hub retries each file for about 25 s before it
    gives up. When the hub's host name does not even resolve, switch the hub to
    offline mode for the call: cached weights still load, missing ones fail at once."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then uses its plain download URL
        yield
        return
    if getattr(constants, "HF_HUB_OFFLINE", True):
        yield
        return
    try:
        socket.getaddrinfo(urllib.parse.urlparse(constants.ENDPOINT).hostname, 443)
        reachable = True
    except (OSError, UnicodeError, TypeError):
        reachable = False
    if reachable:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def create_pretrained(name: str) -> torch.nn.Module:
    """timm's pretrained model from the hub, or one clear error saying how to do without."""
    import timm

    fix = (
        f"download the weights once where there is a network (huggingface.co/timm/{name}, "
        "model.safetensors) and pass weights=PATH, or use backbone='pixels', which needs no weights"
    )
    if not timm.is_model_pretrained(name):
        raise WeightsUnavailableError(f"timm has no pretrained weights for {name!r}: {fix}")
    try:
        with hub_offline_if_unreachable():
            return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:  # the hub's errors vary by version and transport
        raise WeightsUnavailableError(
            f"could not get pretrained weights for {name!r} ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0]}); {fix}"
        ) from error


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a local state dict into a timm model; every non-head parameter must be in the file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
        for key in ("state_dict", "model"):  # training checkpoints nest the weights
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as error:
        reason = str(error).strip().splitlines()[0]  # torch's weights_only refusal runs to many lines
        raise ValueError(
            f"{path}: not a state dict for {model.pretrained_cfg['architecture']} ({reason})"
        ) from error
    head = model.pretrained_cfg.get("classifier") or ()
    head_prefixes = tuple(h + "." for h in ([head] if isinstance(head, str) else head))
    missing = [key for key in missing if not key.startswith(head_prefixes)]  # head is dropped anyway
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {model.pretrained_cfg['architecture']}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )


def run_backbone(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: str | None) -> np.ndarray:
    """Pooled features of every image, in batches: (N, H, W, C) uint8 -> (N, D) float32.

    Each image is prepared by the model's own eval transform (timm data
    config: resize, centre crop, normalise with its mean and std), grey
    replicated to RGB.
    """
    import timm.data

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    chunks = []
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    name = model.pretrained_cfg["architecture"]
    for start in tqdm(range(0, len(images), batch_size), desc=f"features ({name})"):
        batch = images[start:start + batch_size]  # (B, H, W, C) uint8
        pictures = [Image.fromarray(image if image.shape[2] == 3 else image[..., 0]).convert("RGB") for image in batch]
        x = torch.stack([transform(picture) for picture in pictures]).to(device)  # (B, 3, h, w), the model's size
        with torch.inference_mode(), autocast:
            chunks.append(model(x).float().cpu().numpy())  # (B, D)
    return np.concatenate(chunks).astype(np.float32)


def cache_name(images: np.ndarray, backbone: str, weights: str | None) -> str:
    """File name for the features of these exact images under this backbone and these weights."""
    digest = hashlib.sha256()
    digest.update(f"{images.shape}|{backbone}|".encode())
    digest.update(np.ascontiguousarray(images).data)
    if weights is None or weights == "random":
        digest.update(f"|{weights or 'pretrained'}".encode())
    else:  # a local file: key on its content, not its name
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', backbone)}-{digest.hexdigest()[:24]}.npy"


def load_cached(path: str, n: int) -> np.ndarray | None:
    """Cached (n, D) float32 features, or None if the file is unreadable or does not fit (then it is redone)."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return features if features.dtype == np.float32 and features.ndim == 2 and len(features) == n else None


def write_atomically(path: str, write) -> None:
    """write(f) into a temporary file beside `path`, then rename it into place (atomic)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------
# Steps 2 and 4: UMAP positions u(x)
# ---------------------------------------------------------------------------
class FeatureSpace:
    """A UMAP fitted on the training features: positions of training and reference images.

    Saving stores no pickle. The .npz file holds the training features, the
    UMAP parameters and seed, and the training positions; loading refits the
    UMAP (umap-learn is deterministic for a fixed random_state) and checks
    that the refit reproduces the stored positions exactly, so `transform`
    gives the same answers as before saving. A refit that differs (another
    umap-learn, numba or CPU) is a clear error, never a silently new space.
    The price: loading costs one fit (about as long as `fit`).
    """

    def __init__(self, umap, features: np.ndarray, seed: int, backbone: str):
        self.umap = umap
        self.features = features  # (N, D) training features, kept for save()
        self.seed = seed
        self.backbone = backbone
        self.n_components = umap.n_components
        self.positions = umap.embedding_.astype(np.float32)  # (N, n_components)
        self.mean = self.positions.mean(axis=0)  # (n_components,)
        self.std = self.positions.std(axis=0)  # (n_components,)

    @classmethod
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
        import umap

        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) <= n_neighbors:
            raise ValueError(
                f"features must be (N, D) with N > n_neighbors={n_neighbors}, got shape {features.shape}"
            )
        reducer = umap.UMAP(  # random_state makes the fit deterministic (and single-threaded)
            n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1
        )
        reducer.fit(features)
        return cls(reducer, features, seed, backbone)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Positions of new images (references) in this space: (M, D) -> (M, n_components) float32."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"features must be (M, {self.features.shape[1]}) like the {self.backbone!r} features "
                f"this space was fitted on, got shape {features.shape}"
            )
        return self.umap.transform(features).astype(np.float32)

    def standardize(self, positions: np.ndarray) -> np.ndarray:
        """z = (u - mean) / std, per dimension: what the U-Net is fed."""
        return ((positions - self.mean) / self.std).astype(np.float32)

    def save(self, path: str) -> None:
        """Write the space to an .npz (no pickle), atomically."""
        write_atomically(path, lambda f: np.savez(
            f,
            features=self.features,
            positions=self.positions,
            n_components=self.n_components,
            n_neighbors=self.umap.n_neighbors,
            min_dist=self.umap.min_dist,
            seed=self.seed,
            backbone=np.str_(self.backbone),
        ))

    @classmethod
    def load(cls, path: str, backbone: str | None = None, n_components: int | None = None) -> "FeatureSpace":
        """Rebuild a saved space by refitting; backbone / n_components, if given, must match the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature space {path} not found: fit one with FeatureSpace.fit and save it")
        try:
            with np.load(path, allow_pickle=False) as saved:
                stored = {key: saved[key] for key in
                          ("features", "positions", "n_components", "n_neighbors", "min_dist", "seed", "backbone")}
        except Exception as error:
            raise ValueError(f"{path}: not a saved FeatureSpace ({type(error).__name__}: {error})") from error
        saved_backbone, saved_components = str(stored["backbone"]), int(stored["n_components"])
        if backbone is not None and backbone != saved_backbone:
            raise ValueError(f"{path} was fitted on {saved_backbone!r} features, not {backbone!r}: refit the space")
        if n_components is not None and n_components != saved_components:
            raise ValueError(f"{path} is {saved_components}-dimensional, not {n_components}: refit the space")
        space = cls.fit(
            stored["features"], saved_components, int(stored["seed"]),
            int(stored["n_neighbors"]), float(stored["min_dist"]), saved_backbone,
        )
        if not np.array_equal(space.positions, stored["positions"]):
            raise ValueError(
                f"{path}: refitting UMAP did not reproduce the saved positions (another umap-learn, "
                "numba or CPU?); fit the space again here and retrain on it"
            )
        return space


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
