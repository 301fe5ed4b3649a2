"""Tests of plumbing/classifier.py on its own: where it sits among the modules, its augmentations and its devices.
(Its training, accuracy and files are tested through metrics.load_feature_network in test_metrics.py.)"""
import ast
from pathlib import Path

import pytest
import torch

from plumbing import classifier
ROOT = Path(__file__).resolve().parents[1]


def imported_modules(name: str) -> set[str]:
    """Every module that ROOT/name imports, at the top or inside a function."""
    tree = ast.parse((ROOT / name).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)  # from plumbing import classifier: plumbing.classifier
            if node.module == "plumbing":
                found.update(f"plumbing.{alias.name}" for alias in node.names)
    return found


def test_no_import_circle_between_features_metrics_and_classifier():
    assert not imported_modules("plumbing/classifier.py") & {"features", "metrics"}
    assert "metrics" not in imported_modules("features.py")
    assert "plumbing.classifier" in imported_modules("features.py") and "plumbing.classifier" in imported_modules("metrics.py")


def test_intensity_maps_black_to_the_background_and_white_to_the_stroke_level():
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(0.0, 1.0, 11).view(1, 1, 1, 11).expand(2000, 1, 1, 11)  # (B, 1, 1, 11): a ramp per image
    y = classifier.intensity(x, generator)
    b, a = y[:, 0, 0, 0], y[:, 0, 0, -1]  # what black and white became
    assert (b >= 0).all() and (b <= classifier.BACKGROUND_MAX).all()
    assert (a >= classifier.STROKE_MIN).all() and (a <= 1).all()
    torch.testing.assert_close(y, b.view(-1, 1, 1, 1) * (1 - x) + a.view(-1, 1, 1, 1) * x)  # linear in between
    clean = (b == 0) & (a == 1)
    assert 0.45 < clean.float().mean() < 0.55  # INTENSITY_SHARE = 0.5 of the images is mapped
    assert b[~clean].max() > 0.4 and a[~clean].min() < 0.75  # the whole range is drawn


def test_shift_moves_the_batch_by_at_most_two_pixels_filling_black():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        y = classifier.shift(x, generator)
        assert y.shape == x.shape and y.sum() == 1.0
        row, col = divmod(int(y.flatten().argmax()), 9)
        seen.add((row - 4, col - 4))
    assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_choose_device():
    assert classifier.choose_device("cpu") == torch.device("cpu")
    assert classifier.choose_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="--device banana"):
        classifier.choose_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such device"):
            classifier.choose_device("cuda")
    else:
        with pytest.raises(ValueError, match="no such device"):
            classifier.choose_device(f"cuda:{torch.cuda.device_count()}")


# ---------------------------------------------------------------------------
# Training arms: soft labels, the real share per batch, classic augmentation, mixup
# ---------------------------------------------------------------------------
import numpy as np  # noqa: E402


def blobs(n: int, seed: int = 0):
    """Two classes of 28 px images: a bright square on the left (0) or on the right (1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.zeros((n, 28, 28, 1), np.uint8)
    for i, c in enumerate(y):
        x[i, 8:18, (3 if c == 0 else 17):(3 if c == 0 else 17) + 8] = rng.integers(150, 256)
    return x, y


def test_batches_hold_the_real_share_and_equal_steps_make_equal_real_passes():
    g = torch.Generator().manual_seed(0)
    rows = classifier.batch_rows(100, 20, 0.5, 64, g)
    assert (rows[:32] < 20).all() and (rows[32:] >= 20).all()
    # the passes over the 20 real digits do not depend on how many images are added
    assert classifier.real_passes(300, 64, 20, 0.5) == 300 * 32 / 20
    assert (classifier.batch_rows(20, None, 0.5, 64, g) < 20).all()


def test_soft_labels_train_and_bad_soft_labels_are_refused():
    x, y = blobs(40)
    soft = np.eye(2, dtype=np.float32)[y] * 0.9 + 0.05  # rows sum to 1
    net = classifier.train_classifier(x, soft, steps=30, batch_size=16, device="cpu", real_count=20)
    assert (net.logits(x).argmax(1) == y).mean() > 0.9
    with pytest.raises(ValueError, match="soft labels"):
        classifier.train_classifier(x, soft * 2, steps=1, device="cpu")


def test_classic_augment_moves_each_source_image_a_little():
    x, y = blobs(6)
    out, source = classifier.classic_augment(x, 12, seed=0)
    assert out.shape == (12, 28, 28, 1) and out.dtype == np.uint8 and np.bincount(source).tolist() == [2] * 6
    assert not np.array_equal(out, x[source])  # moved
    # a small move: each still nearer its own class's mean image than the other's
    means = [x[y == c].astype(float).mean(0) for c in (0, 1)]
    near = [np.argmin([np.abs(o.astype(float) - m).sum() for m in means]) for o in out]
    assert (np.array(near) == y[source]).all()


def test_mixup_pairs_mix_the_pixels_and_the_labels_alike():
    x, y = blobs(8)
    out, soft = classifier.mixup_pairs(x, y, [(0, 1)], 5, num_classes=3, seed=0)
    assert out.shape == (5, 28, 28, 1) and np.allclose(soft.sum(1), 1) and (soft[:, 2] == 0).all()
    lam = soft[:, 0]
    # the left half holds only class 0's square, scaled by lam
    left = out[:, 8:18, 3:11, 0].astype(float).mean((1, 2))
    lo, hi = x[y == 0][:, 8:18, 3:11, 0].astype(float).mean((1, 2)).min(), 255
    assert ((left >= lam * lo - 1) & (left <= lam * hi + 1)).all()


def test_the_same_seed_gives_the_same_weights_whatever_the_callers_random_state():
    """seed fixes the initial weights, the batches and dropout's draws; the caller's generator is left as it was."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), np.arange(40) % 2
    torch.manual_seed(1)
    first = classifier.train_classifier(images, labels, 2, steps=3, batch_size=8, seed=5, device="cpu")
    torch.manual_seed(2)
    state = torch.get_rng_state()
    with pytest.MonkeyPatch.context() as m:  # a CPU training reseeds no other device's generator
        m.setattr(torch.cuda, "manual_seed_all", lambda *a: pytest.fail("reseeded every CUDA device"))
        m.setattr(torch.cuda, "manual_seed", lambda *a: pytest.fail("reseeded a CUDA device"))
        m.setattr(torch.mps, "manual_seed", lambda *a: pytest.fail("reseeded MPS"))
        second = classifier.train_classifier(images, labels, 2, steps=3, batch_size=8, seed=5, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's draws untouched
    assert classifier.same_weights(first, second)
    other = classifier.train_classifier(images, labels, 2, steps=3, batch_size=8, seed=6, device="cpu")
    assert not classifier.same_weights(first, other)
