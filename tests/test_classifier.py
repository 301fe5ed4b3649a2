"""Tests of classifier.py on its own: where it sits among the modules, its augmentations and its devices.
(Its training, accuracy and files are tested through metrics.load_feature_network in test_metrics.py.)"""
import ast
from pathlib import Path

import pytest
import torch

import classifier

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(name: str) -> set[str]:
    """Every module that ROOT/name imports, at the top or inside a function."""
    tree = ast.parse((ROOT / name).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_circle_between_features_metrics_and_classifier():
    assert not imported_modules("classifier.py") & {"features", "metrics"}
    assert "metrics" not in imported_modules("features.py")
    assert "classifier" in imported_modules("features.py") and "classifier" in imported_modules("metrics.py")


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
