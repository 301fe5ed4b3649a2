"""The small classifier: a convolutional network trained on the data set itself, read as a feature network.

metrics.py scores generated images with it (classifier-FID on its 128-d
penultimate features, classifier-IS and conditioning accuracy on its logits),
and features.py's `--backbone classifier` uses the same features as a semantic
position space:

    net = train_classifier(images, labels, device="cuda")   # a FeatureNetwork
    features, logits = net.features_and_logits(images)       # float64 (N, 128), (N, K)
    save_classifier(net, "clf.pt");  net = load_classifier("clf.pt", device="cpu")

`PixelMLP` is a reader of another architecture (a perceptron on the pixels, no
convolutions) with the same interface, files and training (`architecture="mlp"`),
and `Ensemble` reads a few classifiers together, each through its temperature
(the guide of boundary.py).

It is trained with two augmentations (`shift`, `intensity`): +-2 px shifts, and
a random linear intensity map that can lift the background up to mid-grey, so
that a digit on a grey background is still that digit (an evaluator trained on
clean digits alone reads every grey-background digit as an 8).

`FeatureNetwork` is also the wrapper of metrics.py's Inception network. This
module imports neither features.py nor metrics.py: both import it.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from plumbing.data import write_atomically

# The name and version its files carry. The name is the class's old address (metrics.py); it is
# kept so that the files written before the move, the same format, still load.
CLASSIFIER_FORMAT, CLASSIFIER_VERSION = "metrics.SmallClassifier", 1
# save_ensemble's files: several classifiers and each one's temperature. Version 2 added the temperatures: a file
# of version 1 is refused, so that boundary.boundary_guide trains the guide of a run again.
ENSEMBLE_FORMAT, ENSEMBLE_VERSION = "classifier.Ensemble", 2
ARCHITECTURES = ("cnn", "mlp")  # train_classifier's architecture: SmallClassifier, PixelMLP
MLP_HIDDEN = 256  # PixelMLP's hidden layer
# The training recipe, saved with the weights: files without one were trained with SHIFT_PIXELS shifts alone.
RECIPE = "shift+intensity"
SHIFT_PIXELS = 2  # random shifts of up to +-2 px
BACKGROUND_MAX = 0.5  # intensity map: background lifted to b ~ U(0, 0.5), i.e. up to mid-grey (128/255) ...
STROKE_MIN = 0.7  # ... strokes dimmed to a ~ U(0.7, 1), so the contrast a - b stays >= 0.2
INTENSITY_SHARE = 0.5  # share of each batch so mapped; the rest stays clean


# ---------------------------------------------------------------------------
# 1. Images and devices
# ---------------------------------------------------------------------------
def check_images(images, what: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C), C = 1 or 3, N > 0 (a missing C axis is added)."""
    x = np.asarray(images)
    x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8 or x.shape[0] == 0:
        raise ValueError(f"{what} must be uint8 (N, H, W, C) with N > 0 and C = 1 or 3, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x)


def choose_device(device=None) -> torch.device:
    """The device asked for (a --device value such as "cuda", "cuda:1", "mps", "cpu"), checked to exist
    here; None: torch's accelerator when one is available (cuda, mps, ...), else the CPU, the same
    choice as features.pick_device, which this module does not import."""
    if device is None:
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: not a device name; use cuda, cuda:N, mps or cpu") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(chosen.type, True) or (chosen.type == "cuda" and chosen.index is not None
                                                 and chosen.index >= torch.cuda.device_count()):
        raise ValueError(f"--device {device}: no such device on this machine; "
                         f"use one of: {', '.join(k for k, ok in available.items() if ok)}")
    return chosen


# ---------------------------------------------------------------------------
# 2. A frozen classifier read as a feature network
# ---------------------------------------------------------------------------
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

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def to_unit_range(self, images) -> torch.Tensor:
        """uint8 (B, H, W, C), numpy or tensor -> float (B, C', image_size, image_size) in [0, 1]."""
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W)
        channels = self.mean.shape[1]
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise ValueError(f"the {self.name} network takes grey images, got {x.shape[1]} channels")
            x = x.expand(-1, channels, -1, -1)  # grey -> RGB
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=self.antialias)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, x in [0, 1] (B, C', S, S): what the model is fed."""
        return (x - self.mean) / self.std

    def prepare(self, images) -> torch.Tensor:
        """uint8 (B, H, W, C), numpy or tensor -> float (B, C', image_size, image_size), normalised."""
        return self.normalize(self.to_unit_range(images))

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


# ---------------------------------------------------------------------------
# 3. The network
# ---------------------------------------------------------------------------
class Reader(nn.Module):
    """What SmallClassifier and PixelMLP share: body -> penultimate (128-d features) -> dropout -> head (logits),
    in timm's interface, and the FeatureNetwork that reads it. A subclass sets config (what its file keeps to
    build it again: `new_network`), body, penultimate and head."""

    def __init__(self):
        super().__init__()
        self.recipe = RECIPE  # how train_classifier trains it; load_classifier sets the one of its file
        self.run_id = ""  # the training run it evaluates (save_classifier's run_id), "" for none
        self.dropout = nn.Dropout(0.25)

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


class SmallClassifier(Reader):
    """Three conv stages, 4x4 average pooling, 128-d features, then the class layer.

    Stage 1: two 3x3 convs of width w, 2x2 max-pool; stage 2: two of width 2w,
    2x2 max-pool; stage 3: one of width 4w. Each conv is followed by BatchNorm
    and ReLU. The 4x4 adaptive average pooling makes the features independent
    of the image size S; dropout 0.25 acts on the features in training only.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(*block(in_channels, w), *block(w, w), nn.MaxPool2d(2),  # (B, w, S/2, S/2)
                                  *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, S/4, S/4)
                                  *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten())  # (B, 64 w)
        self.penultimate = nn.Sequential(nn.Linear(4 * w * 16, 128), nn.ReLU(inplace=True))  # (B, 128)
        self.head = nn.Linear(128, num_classes)  # (B, K)


class PixelMLP(Reader):
    """A perceptron on the pixels, no convolutions: a reader of another architecture than SmallClassifier.

    The C x S x S pixels flattened, a hidden layer of `hidden` units, 128-d features, each Linear followed by
    ReLU; dropout 0.25 on the features in training only; then the class layer. Nothing in it is shared across
    positions, so it reads a digit by which pixels are lit, not by local strokes.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = MLP_HIDDEN):
        super().__init__()
        self.config = dict(architecture="mlp", in_channels=in_channels, num_classes=num_classes,
                           image_size=image_size, hidden=hidden)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden),
                                  nn.ReLU(inplace=True))  # (B, C, S, S) -> (B, hidden)
        self.penultimate = nn.Sequential(nn.Linear(hidden, 128), nn.ReLU(inplace=True))  # (B, 128)
        self.head = nn.Linear(128, num_classes)  # (B, K)


def new_network(config: dict) -> Reader:
    """The untrained network a file's config describes: PixelMLP where it says architecture "mlp", else
    SmallClassifier (every file written before PixelMLP existed)."""
    sizes = {k: int(config[k]) for k in ("in_channels", "num_classes", "image_size")}
    if config.get("architecture", "cnn") == "mlp":
        return PixelMLP(**sizes, hidden=int(config["hidden"]))
    return SmallClassifier(**sizes, width=int(config["width"]))


# ---------------------------------------------------------------------------
# 4. Training, with augmentations
# ---------------------------------------------------------------------------
def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random shift of the batch x (B, C, S, S) in [0, 1] by dx, dy in [-2, 2] px, black filling in."""
    size, pad = x.shape[-1], SHIFT_PIXELS
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return F.pad(x, (pad,) * 4, value=0.0)[..., dy:dy + size, dx:dx + size]


def intensity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random linear intensity map per image, x in [0, 1] (B, C, S, S):

        x' = b (1 - x) + a x,   b ~ U(0, BACKGROUND_MAX),  a ~ U(STROKE_MIN, 1)

    black (x = 0) becomes the background level b, white (x = 1) the stroke
    level a, and everything between follows linearly (the contrast becomes
    a - b > 0, so x' stays in [0, 1] and keeps the order of the pixels). Only
    a random INTENSITY_SHARE of the images is mapped; the others keep a = 1, b = 0.
    """
    n = x.shape[0]
    b = BACKGROUND_MAX * torch.rand(n, generator=generator)  # (B,)
    a = STROKE_MIN + (1.0 - STROKE_MIN) * torch.rand(n, generator=generator)  # (B,)
    mapped = torch.rand(n, generator=generator) < INTENSITY_SHARE  # (B,)
    a, b = torch.where(mapped, a, 1.0), torch.where(mapped, b, 0.0)
    a, b = (v.view(n, 1, 1, 1).to(x.device) for v in (a, b))
    return b * (1.0 - x) + a * x


ROTATION_DEGREES = 15.0  # classic augmentation: rotations of up to +-15 degrees ...
CLASSIC_SHIFT = 2  # ... shifts of up to +-2 px ...
ELASTIC_ALPHA, ELASTIC_SIGMA = 34.0, 4.0  # ... and elastic deformation (Simard et al. 2003, Sec. 2; 28 px digits)


def elastic_field(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Simard et al. 2003's displacement field: uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of
    std ELASTIC_SIGMA px and scaled by ELASTIC_ALPHA px; returned in grid_sample's units (2 / size per px),
    (n, size, size, 2)."""
    noise = 2 * torch.rand(n, 2, size, size, generator=generator) - 1  # (n, 2, S, S)
    radius = int(3 * ELASTIC_SIGMA)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-t ** 2 / (2 * ELASTIC_SIGMA ** 2))
    kernel = kernel / kernel.sum()  # (2r + 1,) a normalised 1-d Gaussian, applied along rows then columns
    noise = F.conv2d(F.pad(noise.reshape(-1, 1, size, size), (radius,) * 4, mode="reflect"),
                     kernel.view(1, 1, 1, -1))
    noise = F.conv2d(noise, kernel.view(1, 1, -1, 1)).view(n, 2, size, size)
    return (ELASTIC_ALPHA * noise * 2 / size).permute(0, 2, 3, 1)  # (n, S, S, 2)


def classic_augment(images, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` new images, each one of `images` (uint8 (N, H, W, C), drawn with replacement, in turn when
    count >= N) moved by the classic recipe: an elastic deformation, a rotation of up to +-ROTATION_DEGREES
    and a shift of up to +-CLASSIC_SHIFT px, in one bilinear resampling (black filling in).
    Returns uint8 (count, H, W, C) and the index of each one's source image (count,)."""
    x = check_images(images)
    generator = torch.Generator().manual_seed(seed)
    source = torch.randperm(count, generator=generator) % len(x)  # (count,) every image about equally often
    n, size = count, x.shape[1]
    angle = torch.deg2rad(ROTATION_DEGREES * (2 * torch.rand(n, generator=generator) - 1))  # (n,)
    offset = 2 * CLASSIC_SHIFT / size * (2 * torch.rand(n, 2, generator=generator) - 1)  # (n, 2) grid units
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), offset[:, 0]], 1),
                         torch.stack([angle.sin(), angle.cos(), offset[:, 1]], 1)], 1)  # (n, 2, 3)
    grid = F.affine_grid(theta, (n, x.shape[3], size, size), align_corners=False)  # (n, S, S, 2)
    grid = grid + elastic_field(n, size, generator)
    pixels = torch.from_numpy(x[source.numpy()]).permute(0, 3, 1, 2).float()  # (n, C, S, S) in [0, 255]
    moved = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = moved.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (n, S, S, C)
    return np.ascontiguousarray(out), source.numpy()


def mixup_pairs(images, labels, pairs, count: int, num_classes: int = 10, seed: int = 0,
                alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """mixup (Zhang et al. 2018, eq. 1) of real A/B pairs: x = lam x_a + (1 - lam) x_b, y = lam e_a + (1 - lam) e_b,
    lam ~ Beta(alpha, alpha), x_a of class a and x_b of class b of a pair (a, b) of `pairs`, the pairs in turn.
    Departs from the paper in mixing only the named class pairs and offline (count new images), not every batch.
    Returns uint8 images (count, H, W, C) and soft labels float32 (count, num_classes), rows summing to 1."""
    x, y = check_images(images), np.asarray(labels)
    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha, count)  # (count,)
    out, soft = np.empty((count, *x.shape[1:]), np.uint8), np.zeros((count, num_classes), np.float32)
    for i in range(count):
        a, b = pairs[i % len(pairs)]
        if not ((y == a).any() and (y == b).any()):
            raise ValueError(f"mixup of the pair {a}-{b} needs images of both classes")
        xa, xb = x[rng.choice(np.flatnonzero(y == a))], x[rng.choice(np.flatnonzero(y == b))]
        out[i] = np.round(lam[i] * xa.astype(np.float64) + (1 - lam[i]) * xb).astype(np.uint8)
        soft[i, a] += lam[i]
        soft[i, b] += 1 - lam[i]
    return out, soft


def check_targets(labels, n: int, num_classes) -> tuple[np.ndarray, int]:
    """Integer labels (n,), or soft labels (n, K) float with rows summing to 1: checked; returns them and K."""
    y = np.asarray(labels)
    if y.ndim == 2:
        if y.shape[0] != n or not np.issubdtype(y.dtype, np.floating) or (y < 0).any() \
                or not np.allclose(y.sum(1), 1.0, atol=1e-4):
            raise ValueError(f"soft labels must be float ({n}, K) rows of probabilities summing to 1, got {y.dtype} {y.shape}")
        if num_classes is not None and y.shape[1] != int(num_classes):
            raise ValueError(f"soft labels have {y.shape[1]} classes, num_classes is {num_classes}")
        return y.astype(np.float32), y.shape[1]
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {y.dtype} {y.shape}")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    return y, num_classes


def batch_rows(n: int, real_count, real_share: float, batch_size: int, generator) -> torch.Tensor:
    """One batch's rows (batch_size,): uniform over all n rows, or, with real_count, round(real_share * B) of
    the first real_count rows (the real digits) and the rest of the others (the added images)."""
    if real_count is None or real_count == n:
        return torch.randint(0, n, (batch_size,), generator=generator)
    real = int(round(real_share * batch_size))
    return torch.cat([torch.randint(0, real_count, (real,), generator=generator),
                      torch.randint(real_count, n, (batch_size - real,), generator=generator)])


def real_passes(steps: int, batch_size: int, real_count: int, real_share: float) -> float:
    """Passes over the real digits a training makes: steps * round(real_share * B) / real_count."""
    return steps * int(round(real_share * batch_size)) / real_count


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """torch's random draws on the CPU and on `device` seeded with `seed`, every caller's generator as it was after
    (torch.manual_seed would also reseed the other devices' generators, for good)."""
    forked = [] if device.type == "cpu" else [device]  # (the CPU's generator is always forked)
    with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        yield


def train_classifier(images, labels, num_classes=None, steps: int = 300, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, device=None, width: int = 16, real_count: int | None = None,
                     real_share: float = 0.5, architecture: str = "cnn") -> FeatureNetwork:
    """Train the small classifier on uint8 images (N, H, W, C) and integer labels (N,), or soft labels
    (N, K) float (rows summing to 1: the loss is then the cross-entropy to those probabilities).

    Adam with a one-cycle schedule; each batch is shifted (`shift`) and half its
    images get a random background and contrast (`intensity`). Images above
    64 px are downscaled to 64 px. device: where it trains and stays (None: see
    `choose_device`). The defaults reach 97-98% held-out accuracy on the
    MNIST sample in well under a minute on a 2-core CPU. width: SmallClassifier's channels (another width
    and seed give an independent second reader of the same digits). architecture: "cnn" (SmallClassifier) or
    "mlp" (PixelMLP, trained the same way; width does not apply to it).

    real_count: the first real_count rows are real digits, the rest added images; each batch then holds
    round(real_share * batch_size) real rows, so that at equal steps every arm makes the same passes over
    the real digits (`real_passes`) whatever the number added. None (the default): batches uniform over all rows.
    """
    x = check_images(images, "training images")
    y, num_classes = check_targets(labels, len(x), num_classes)
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"the classifier takes square images, got {x.shape[2]}x{x.shape[1]}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    if real_count is not None and not (0 < real_count <= len(x) and 0 < real_share <= 1):
        raise ValueError(f"real_count must lie in (0, {len(x)}] and real_share in (0, 1], got {real_count}, {real_share}")
    device = choose_device(device)
    with seeded(seed, torch.device("cpu")):  # the initial weights
        size = min(x.shape[1], 64)
        model = (SmallClassifier(x.shape[3], num_classes, size, width) if architecture == "cnn"
                 else PixelMLP(x.shape[3], num_classes, size))
    net = model.network().to(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
    pixels = torch.from_numpy(x).to(device)
    targets = torch.from_numpy(y.astype(np.int64) if y.ndim == 1 else y).to(device)  # (N,) or (N, K)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps))
    model.train()
    with seeded(seed, device):  # dropout's draws
        for _ in tqdm(range(steps), desc="training classifier", disable=None):
            idx = batch_rows(len(x), real_count, real_share, batch_size, generator).to(device)
            batch = intensity(shift(net.to_unit_range(pixels[idx]), generator), generator)  # (B, C, S, S) in [0, 1]
            loss = F.cross_entropy(model(net.normalize(batch)), targets[idx])  # soft targets: -sum_k q_k log p_k
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


# ---------------------------------------------------------------------------
# 5. Files
# ---------------------------------------------------------------------------
def save_classifier(net: FeatureNetwork, path, run_id: str = "") -> None:
    """Write the classifier (no pickled code: a dict of numbers, strings and tensors), atomically.

    run_id: the training run it belongs to (a run's evaluator, classifier.pt), as its
    config, checkpoint and space carry it; "" for a classifier of no run.
    """
    net.model.run_id = run_id
    payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "config": net.model.config,
               "recipe": net.model.recipe, "run_id": run_id, "state_dict": {k: v.cpu() for k, v in net.model.state_dict().items()}}
    write_atomically(str(path), lambda f: torch.save(payload, f))


def load_classifier(path, device=None, fix: str = "give a classifier file written by save_classifier") -> FeatureNetwork:
    """Read a file written by save_classifier (torch.load with weights_only=True: no code runs),
    onto `device` (None: see `choose_device`). Its .model.recipe says how it was trained. fix: what the caller's
    user does about a file that is not one (cut off, or another kind of file), in the one-line error."""
    device = choose_device(device)
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
        if payload["format"] != CLASSIFIER_FORMAT or payload["version"] != CLASSIFIER_VERSION:
            raise ValueError(payload["format"])
        model = new_network(payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.recipe = str(payload.get("recipe", "shift"))  # files from before the intensity map: shifts only
        model.run_id = str(payload.get("run_id", ""))  # files from before run ids: of no run
    except Exception:  # torch's own message would advise weights_only=False: never the fix
        raise ValueError(f"{path} is not a classifier file of this classifier.py (cut off, or another kind of "
                         f"file): {fix}") from None
    return model.network().to(device)


# ---------------------------------------------------------------------------
# 6. An ensemble of small classifiers (the guide of boundary.boundary_samples)
# ---------------------------------------------------------------------------
class Ensemble:
    """A few classifiers read together, each through its temperature T_m (1: as trained):

        p_m(x) = softmax(z_m(x) / T_m),   prob(x) = mean_m p_m(x)   (N, K)

    z_m the member's logits. Dividing the logits by T is temperature scaling (Guo et al. 2017, sec. 4.2): T > 1
    softens the probabilities, T < 1 sharpens them, the argmax stays. boundary.fit_temperature fits each T."""

    def __init__(self, members: list[FeatureNetwork], seeds: list[int], tag: str = "",
                 temperatures: list[float] | None = None):
        self.members, self.seeds, self.tag = members, list(seeds), tag  # tag: what they were trained on
        self.temperatures = [1.0] * len(members) if temperatures is None else [float(t) for t in temperatures]
        if len(self.temperatures) != len(members) or not all(np.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError(f"an ensemble needs one finite temperature > 0 per member, got {self.temperatures} "
                             f"for {len(members)} members")

    def member_prob(self, images) -> np.ndarray:
        """uint8 (N, H, W, C) -> (M, N, K) float: each member's softmax(logits / T)."""
        return np.stack([torch.softmax(torch.from_numpy(member.logits(images) / t).double(), 1).numpy()
                         for member, t in zip(self.members, self.temperatures)])

    def prob(self, images) -> np.ndarray:
        """uint8 (N, H, W, C) -> (N, K) float: mean over members of softmax(logits / T)."""
        return self.member_prob(images).mean(axis=0)


def train_ensemble(images, labels, seeds: list[int], num_classes=None, steps: int = 300, device=None,
                   tag: str = "", widths: list[int] | None = None) -> Ensemble:
    """One train_classifier per seed, on the same images and labels; member i a SmallClassifier of widths[i]
    (None: the default width 16 for each). Every temperature 1 (boundary.train_guide fits them where the design
    holds digits out: v2)."""
    widths = [16] * len(seeds) if widths is None else list(widths)
    if len(widths) != len(seeds):
        raise ValueError(f"an ensemble needs one width per seed, got {len(widths)} widths for {len(seeds)} seeds")
    return Ensemble([train_classifier(images, labels, num_classes, steps=steps, seed=seed, device=device, width=width)
                     for seed, width in zip(seeds, widths)], seeds, tag)


def save_ensemble(ensemble: Ensemble, path) -> None:
    """Write an ensemble as one file of numbers, strings and tensors (as save_classifier), atomically."""
    payload = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "seeds": ensemble.seeds,
               "tag": ensemble.tag, "temperatures": ensemble.temperatures, "members": [
                   {"config": m.model.config, "recipe": m.model.recipe,
                    "state_dict": {k: v.cpu() for k, v in m.model.state_dict().items()}} for m in ensemble.members]}
    write_atomically(str(path), lambda f: torch.save(payload, f))


def load_ensemble(path, device=None) -> Ensemble:
    """Read a file written by save_ensemble (torch.load with weights_only=True). A file of another format or
    version (one from before the temperatures), cut off or damaged, is a ValueError."""
    device = choose_device(device)
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
        if payload["format"] != ENSEMBLE_FORMAT or payload["version"] != ENSEMBLE_VERSION:
            raise ValueError(payload["format"])
        members = []
        for member in payload["members"]:
            model = new_network(member["config"])
            model.load_state_dict(member["state_dict"])
            model.recipe = str(member["recipe"])
            members.append(model.network().to(device).eval())
        return Ensemble(members, [int(s) for s in payload["seeds"]], str(payload["tag"]),
                        [float(t) for t in payload["temperatures"]])
    except Exception:
        raise ValueError(f"{path} is not a classifier ensemble file of this classifier.py; delete it "
                         "to train a new one") from None


def same_weights(a: FeatureNetwork, b: FeatureNetwork) -> bool:
    """Do two classifiers hold the same weights (the same network, whatever the file)?"""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)
