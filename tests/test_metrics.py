"""Tests of metrics.py and plumbing/classifier.py: FID and IS against the accepted tools' formulas,
feature networks (the small classifier, robust to grey backgrounds, and Inception), controllability,
class-boundary walks, memorisation, intervals, and the command line."""
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import scipy.spatial.distance
import torch
from PIL import Image

from plumbing import classifier
import metrics
from plumbing import metrics_command
from metrics import (conditioning_accuracy, controllability, feature_statistics,
                     fid_from_features, frechet_distance, inception_score, load_feature_network,
                     memorisation, t_interval, walk_statistics, boundary_statistics)

ROOT = Path(__file__).resolve().parents[1]


def random_spd(rng, d, floor=0.05):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + floor * np.eye(d)


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------
def pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (src/pytorch_fid/fid_score.py), verbatim
    but for SciPy's `disp` argument (gone from recent SciPy) and the print."""
    def sqrtm(a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # older SciPy warns about singular matrices
            out = scipy.linalg.sqrtm(a)
        return out[0] if isinstance(out, tuple) else out

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError("Imaginary component {}".format(m))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    y = 1.3 * rng.normal(size=(400, 16)) + 0.2
    assert abs(fid_from_features(x, x)) < 1e-9
    assert fid_from_features(x, y) == pytest.approx(fid_from_features(y, x), rel=1e-10)
    assert fid_from_features(x, y) > 0.1


def test_fid_closed_forms():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    m1, m2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a mean shift adds |delta|^2
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10)
    mu, delta = rng.normal(size=10), rng.normal(size=10)
    base = frechet_distance(mu, s1, mu, s2)
    assert frechet_distance(mu + delta, s1, mu, s2) == pytest.approx(base + delta @ delta, rel=1e-10)
    # scaling the features by c scales FID by c^2
    x, y = rng.normal(size=(300, 10)), 0.7 * rng.normal(size=(300, 10)) + 0.3
    assert fid_from_features(3.0 * x, 3.0 * y) == pytest.approx(9.0 * fid_from_features(x, y), rel=1e-9)


@pytest.mark.parametrize("d", [2, 8, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_agrees_with_pytorch_fid_formula(d, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    assert abs(frechet_distance(m1, s1, m2, s2) - pytorch_fid_frechet_distance(m1, s1, m2, s2)) < 1e-8


def test_fid_of_feature_sets_agrees_with_pytorch_fid_formula():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(1000, 256)), 0.8 * rng.normal(size=(1000, 256)) + 0.1
    stats = feature_statistics(x) + feature_statistics(y)
    assert fid_from_features(x, y) == pytest.approx(pytorch_fid_frechet_distance(*stats), rel=1e-10)


def test_singular_covariances_agree_with_pytorch_fid_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.5  # rank 9 and 11 of 40
    stats = feature_statistics(x) + feature_statistics(y)
    assert fid_from_features(x, y) == pytest.approx(pytorch_fid_frechet_distance(*stats), rel=1e-6)
    # constant features: all-zero covariances
    z = np.ones((5, 8))
    assert fid_from_features(z, z + 1.0) == pytest.approx(8.0, rel=1e-9)


@pytest.mark.parametrize("failure", ["nan", "solver"])
def test_a_failed_square_root_is_retried_with_a_diagonal_offset(monkeypatch, failure):
    calls = []
    real_roots = metrics.sqrt_eigenvalues

    def flaky(s1, s2):
        calls.append((s1.copy(), s2.copy()))
        roots, s1_roots = real_roots(s1, s2)
        if len(calls) == 1:
            if failure == "solver":
                raise np.linalg.LinAlgError("did not converge")
            roots = roots * np.nan
        return roots, s1_roots

    monkeypatch.setattr(metrics, "sqrt_eigenvalues", flaky)
    s = np.diag([1.0, 2.0, 3.0])
    value = frechet_distance(np.zeros(3), s, np.zeros(3), s)
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[1][0], s + 1e-6 * np.eye(3))
    np.testing.assert_array_equal(calls[1][1], s + 1e-6 * np.eye(3))
    assert abs(value) < 1e-5


def test_a_non_negligible_imaginary_part_is_an_error_as_in_pytorch_fid():
    bad = np.diag([-1.0, 1.0])  # not a covariance: sqrt(-1) is imaginary
    for args in ((np.zeros(2), bad, np.zeros(2), np.eye(2)), (np.zeros(2), np.eye(2), np.zeros(2), bad)):
        with pytest.raises(ValueError, match="imaginary"):
            frechet_distance(*args)
        with pytest.raises(ValueError, match="Imaginary"):
            pytorch_fid_frechet_distance(*args)
    # round-off-sized negative eigenvalues of large-magnitude features are not an error
    rng = np.random.default_rng(11)
    x, y = 1e9 * rng.normal(size=(5, 30)), 1e9 * rng.normal(size=(6, 30))
    assert np.isfinite(fid_from_features(x, y))


def test_fid_input_errors():
    with pytest.raises(ValueError, match="two samples"):
        feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="two samples"):
        fid_from_features(np.zeros((0, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-d"):
        feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((3, 2), np.inf))


def test_feature_statistics_are_unbiased_float64():
    x = np.random.default_rng(4).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(sigma, (x64 - mu).T @ (x64 - mu) / 49, rtol=1e-12)
    assert feature_statistics(x[:, :1])[1].shape == (1, 1)


# ---------------------------------------------------------------------------
# Inception score
# ---------------------------------------------------------------------------
def plain_is(logits):
    """The textbook formula on one split (no shuffle), for moderate logits."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = p.mean(0)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))))


def test_is_of_uniform_predictions_is_one():
    mean, std = inception_score(np.zeros((1000, 10)))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(np.full((7, 3), 5.0), splits=1)[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_is_of_balanced_confident_predictions_is_k_even_when_sorted(scale):
    k = 10
    logits = np.repeat(np.eye(k) * scale, 100, axis=0)  # sorted by class
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-9) and std == 0.0
    # ten splits of a class-sorted set: the seeded shuffle mixes classes into every split
    # (unshuffled, every split would hold one class and score 1)
    mean, std = inception_score(logits, splits=10)
    assert np.isfinite(mean) and np.isfinite(std)
    assert 0.9 * k < mean <= k and std < 0.5
    assert inception_score(logits, splits=10) == inception_score(logits, splits=10)  # fixed seed
    # balanced within every split: exactly k
    interleaved = np.tile(np.eye(k) * scale, (100, 1))
    assert inception_score(interleaved, splits=1)[0] == pytest.approx(k, rel=1e-9)


def test_is_is_invariant_to_permuting_classes_and_matches_the_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 2.0, (600, 20))
    perm = rng.permutation(20)
    a = inception_score(logits, splits=6)
    b = inception_score(logits[:, perm], splits=6)
    assert a[0] == pytest.approx(b[0], rel=1e-12) and a[1] == pytest.approx(b[1], rel=1e-9, abs=1e-12)
    assert inception_score(logits, splits=1)[0] == pytest.approx(plain_is(logits), rel=1e-12)
    # ten splits = the formula on each split of the seeded shuffle (torch-fidelity's
    # order), mean and population std
    shuffled = logits[np.random.RandomState(0).permutation(600)]
    scores = [plain_is(shuffled[i * 60:(i + 1) * 60]) for i in range(10)]
    mean, std = inception_score(logits, splits=10, seed=0)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


def test_is_input_errors():
    with pytest.raises(ValueError, match="per split"):
        inception_score(np.zeros((5, 3)), splits=10)
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=0)
    with pytest.raises(ValueError, match="2-d"):
        inception_score(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        inception_score(np.full((20, 3), np.nan))


# ---------------------------------------------------------------------------
# Conditioning accuracy and controllability
# ---------------------------------------------------------------------------
def test_conditioning_accuracy():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert conditioning_accuracy(logits, np.array([0, 1, 2, 1])) == 0.75
    with pytest.raises(ValueError, match="lie in"):
        conditioning_accuracy(logits, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="labels"):
        conditioning_accuracy(logits, np.array([0, 1]))


def reference_layout(rng, classes=5, per_class=2, dim=20):
    positions = rng.normal(0.0, 5.0, (classes * per_class, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return positions, labels


def test_controllability_of_points_placed_at_their_references():
    rng = np.random.default_rng(6)
    ref_pos, ref_lab = reference_layout(rng)
    reference = rng.integers(0, len(ref_pos), 400)
    generated = ref_pos[reference] + rng.normal(0.0, 0.1, (400, 20))
    out = controllability(generated, reference, ref_lab[reference], ref_pos, ref_lab)
    assert set(out) == {"mean_dist_own", "mean_dist_other_same_class", "own_reference_rate",
                        "retrieval_top1", "n_images", "n_compared"}
    assert out["own_reference_rate"] == 1.0
    assert out["retrieval_top1"] == 1.0
    assert out["mean_dist_own"] < 0.2 * out["mean_dist_other_same_class"]
    assert out["n_images"] == out["n_compared"] == 400
    # labels=None means "the own reference's class"
    assert controllability(generated, reference, None, ref_pos, ref_lab) == out


def test_controllability_of_shuffled_references_is_at_chance():
    rng = np.random.default_rng(7)
    ref_pos, ref_lab = reference_layout(rng)
    true_ref = rng.integers(0, len(ref_pos), 4000)
    generated = ref_pos[true_ref] + rng.normal(0.0, 0.1, (4000, 20))
    # claim a random reference of the right class for each image
    same_class = np.array([rng.choice(np.flatnonzero(ref_lab == ref_lab[r])) for r in true_ref])
    out = controllability(generated, same_class, ref_lab[true_ref], ref_pos, ref_lab)
    assert 0.45 < out["own_reference_rate"] < 0.55
    assert 0.45 < out["retrieval_top1"] < 0.55
    assert out["mean_dist_own"] == pytest.approx(out["mean_dist_other_same_class"], rel=0.1)


def test_controllability_errors_and_lonely_references():
    ref_pos = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ref_lab = np.array([0, 0, 1])
    gen = np.array([[1.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    out = controllability(gen, np.array([0, 1, 2]), np.array([0, 0, 1]), ref_pos, ref_lab)
    assert out["n_compared"] == 2 and out["own_reference_rate"] == 1.0  # class 1 has no rival
    assert out["retrieval_top1"] == 1.0
    assert out["mean_dist_own"] == pytest.approx(1.0) and out["mean_dist_other_same_class"] == pytest.approx(9.0)
    only_lonely = controllability(gen[2:], np.array([2]), None, ref_pos, ref_lab)
    assert np.isnan(only_lonely["own_reference_rate"]) and only_lonely["n_compared"] == 0
    with pytest.raises(ValueError, match="class other than their reference"):
        controllability(gen, np.array([0, 1, 2]), np.array([0, 1, 1]), ref_pos, ref_lab)
    with pytest.raises(ValueError, match="lie in"):
        controllability(gen, np.array([0, 1, 3]), None, ref_pos, ref_lab)
    with pytest.raises(ValueError, match="share d"):
        controllability(gen[:, :1], np.array([0, 1, 2]), None, ref_pos, ref_lab)


# ---------------------------------------------------------------------------
# The classifier feature network
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_split(mnist_sample):
    """conftest's MNIST digits, sorted by class, split into 50 held out per class and the rest."""
    images, labels, _ = mnist_sample
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        test[rng.choice(np.flatnonzero(labels == c), 50, replace=False)] = True
    return images[~test], labels[~test], images[test], labels[test]


@pytest.fixture(scope="module")
def trained_classifier(mnist_split, tmp_path_factory):
    """The classifier trained with its defaults and saved: (path, FeatureNetwork). Under pytest-xdist the first
    worker to get here trains and saves it in the session's shared folder, and the other loads that file (a file
    lock between them; torch's own dependency filelock)."""
    from filelock import FileLock

    train_x, train_y, _, _ = mnist_split
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # (shared by the session's workers)
    path = shared / "mnist-classifier" / "mnist-classifier.pt"  # (alone in its folder: no temporary file is left)
    with FileLock(str(shared / "mnist-classifier.lock")):
        path.parent.mkdir(exist_ok=True)
        net = load_feature_network("classifier", classifier_path=path, train_images=train_x,
                                   train_labels=train_y, num_classes=10, device="cpu")
    return path, net


def test_classifier_reaches_95_percent_on_held_out_mnist(mnist_split, trained_classifier):
    _, _, test_x, test_y = mnist_split
    path, net = trained_classifier
    feats, logits = net.features_and_logits(test_x)
    assert feats.shape == (500, 128) and logits.shape == (500, 10)
    assert feats.dtype == logits.dtype == np.float64
    accuracy = conditioning_accuracy(logits, test_y)
    assert accuracy >= 0.95, accuracy
    # saved atomically (no temporary files left) and reloaded with identical outputs
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    again = load_feature_network("classifier", classifier_path=path, device="cpu")
    np.testing.assert_array_equal(again.logits(test_x[:20]), logits[:20])
    np.testing.assert_array_equal(again.features_and_logits(test_x[:20])[0], feats[:20])


def test_existing_classifier_file_is_loaded_not_retrained(trained_classifier, monkeypatch):
    path, _ = trained_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("should not train")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    net = load_feature_network("classifier", classifier_path=path,
                               train_images=np.zeros((2, 28, 28, 1), np.uint8),
                               train_labels=np.array([0, 1]))
    assert net.num_classes == 10 and net.name == "classifier"
    with pytest.raises(ValueError, match="10 classes"):
        load_feature_network("classifier", classifier_path=path, num_classes=9)


def test_classifier_takes_grey_and_rgb_of_several_sizes():
    rng = np.random.default_rng(8)
    for size, channels in ((28, 1), (32, 3), (64, 3), (128, 3)):
        images = rng.integers(0, 256, (6, size, size, channels), dtype=np.uint8)
        net = classifier.train_classifier(images, np.arange(6) % 3, 3, steps=2, batch_size=4, device="cpu")
        assert net.image_size == min(size, 64)  # larger images are downscaled
        features, logits = net.features_and_logits(images)
        assert features.shape == (6, 128) and logits.shape == (6, 3)
    # an RGB network takes grey images too (replicated), and other sizes (resized)
    grey = rng.integers(0, 256, (2, 40, 40, 1), dtype=np.uint8)
    assert net.logits(grey).shape == (2, 3)
    with pytest.raises(ValueError, match="uint8"):
        net.logits(grey.astype(np.float32))


def test_corrupt_or_foreign_classifier_files_are_clear_errors(tmp_path, trained_classifier):
    good, _ = trained_classifier
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    other_format = tmp_path / "other.pt"
    torch.save({"format": "something else", "state_dict": {}}, other_format)
    code = tmp_path / "code.pt"
    torch.save({"format": classifier.CLASSIFIER_FORMAT, "obj": Path("x")}, code)  # pickled object
    damaged = tmp_path / "damaged.pt"
    payload = torch.load(good, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, damaged)
    for path in (truncated, foreign, other_format, code, damaged):
        with pytest.raises(ValueError, match=str(path.name)) as error:
            load_feature_network("classifier", classifier_path=path)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_feature_network_name_and_argument_errors():
    with pytest.raises(ValueError, match="inception, classifier"):
        load_feature_network("swin")
    with pytest.raises(ValueError, match="train_images"):
        load_feature_network("classifier")


def on_grey(images: np.ndarray, background: int) -> np.ndarray:
    """Digits with the background raised to `background`/255 and white strokes kept white:
    x' = background + x (255 - background) / 255."""
    return np.round(background + images.astype(np.float64) * (255 - background) / 255).astype(np.uint8)


def test_classifier_reads_digits_on_a_grey_background(mnist_split, trained_classifier):
    """Trained on clean digits alone, the classifier read every grey-background digit as an 8 (10%);
    the intensity augmentation keeps them the digits they are, and clean digits too."""
    _, _, test_x, test_y = mnist_split
    _, net = trained_classifier
    assert conditioning_accuracy(net.logits(test_x), test_y) >= 0.95
    for background in (60, 100, 128):  # 128: mid-grey, the edge of the augmentation's range
        assert conditioning_accuracy(net.logits(on_grey(test_x, background)), test_y) >= 0.9, background
    offset = np.minimum(test_x.astype(np.int64) + 100, 255).astype(np.uint8)  # an additive offset, clipped
    assert conditioning_accuracy(net.logits(offset), test_y) >= 0.9


def test_a_classifier_of_the_old_recipe_is_used_with_a_note(trained_classifier, tmp_path, capsys):
    path, net = trained_classifier
    assert net.model.recipe == classifier.RECIPE
    payload = torch.load(path, weights_only=True)
    del payload["recipe"]  # as written before the intensity augmentation
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    again = load_feature_network("classifier", classifier_path=old, device="cpu")
    assert again.model.recipe == "shift"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old.pt" in err[0] and "delete it" in err[0]
    load_feature_network("classifier", classifier_path=path, device="cpu")
    assert capsys.readouterr().err == ""  # the current recipe: no note


def test_the_classifier_trains_and_stays_on_the_device_asked_for(trained_classifier):
    path, net = trained_classifier  # trained with device="cpu"
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    for device in devices:
        loaded = load_feature_network("classifier", classifier_path=path, device=device)
        trained = classifier.train_classifier(images, np.arange(8) % 2, 2, steps=2, batch_size=4, device=device)
        for network in (loaded, trained):
            assert {p.device.type for p in network.parameters()} == {device}
            assert network.logits(images).shape[0] == 8
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda"):
            load_feature_network("classifier", classifier_path=path, device="cuda")


# ---------------------------------------------------------------------------
# The inception feature network (no download in tests)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file the user 'made': a randomly initialised timm inception_v3 state dict."""
    import timm

    path = tmp_path_factory.mktemp("weights") / "inception_v3_random.pth"
    torch.manual_seed(0)
    model = timm.create_model(metrics.INCEPTION_MODEL, pretrained=False)
    torch.save(model.state_dict(), path)
    return path


def test_inception_without_weights_offline_is_one_clear_error(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        raise AssertionError("random weights must not be used")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(metrics.WeightsUnavailableError, match="--inception-weights PATH") as error:
        load_feature_network("inception")
    message = str(error.value)
    assert "\n" not in message and "--features classifier" in message and "--backbone" not in message


def test_inception_offline_uses_the_hub_cache_and_fails_fast_without_it(tmp_path, monkeypatch,
                                                                        inception_weights):
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--timm--inception_v3.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    cached = repo / "snapshots" / commit / "model.safetensors"
    state = torch.load(inception_weights, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, cached)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    net = load_feature_network("inception", device="cpu")  # pretrained=True, from the cache
    loaded = net.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert hub.HF_HUB_OFFLINE is False  # offline mode only for the call
    cached.unlink()
    start = time.perf_counter()
    with pytest.raises(metrics.WeightsUnavailableError, match="--inception-weights PATH"):
        load_feature_network("inception")
    assert time.perf_counter() - start < 20  # no minute of retries
    assert hub.HF_HUB_OFFLINE is False


def test_inception_with_a_local_weights_file(inception_weights, tmp_path):
    net = load_feature_network("inception", weights=inception_weights, device="cpu")
    saved = torch.load(inception_weights, weights_only=True)
    state = net.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    rng = np.random.default_rng(9)
    grey = rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    feats, logits = net.features_and_logits(grey)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1000) and net.num_classes == 1000
    assert np.isfinite(feats).all() and np.isfinite(logits).all()
    # grey is replicated to three channels and resized to 299, scaled to [-1, 1]
    prepared = net.prepare(grey)
    assert tuple(prepared.shape) == (2, 3, 299, 299)
    assert torch.equal(prepared, net.prepare(np.repeat(grey, 3, axis=-1)))
    assert -1.0 <= float(prepared.min()) and float(prepared.max()) <= 1.0
    # torchvision's file (inception_v3_google-*.pth) also holds the auxiliary classifier
    torchvision_style = tmp_path / "inception_v3_google.pth"
    torch.save({**saved, "AuxLogits.fc.weight": torch.zeros(1000, 768)}, torchvision_style)
    again = load_feature_network("inception", weights=torchvision_style, device="cpu")
    np.testing.assert_array_equal(again.logits(grey), logits)


def test_inception_weights_file_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_feature_network("inception", weights=missing)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth") as error:
        load_feature_network("inception", weights=junk)
    assert "weights_only" not in str(error.value)  # torch's advice to unpickle code is never passed on
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit"):
        load_feature_network("inception", weights=other)


# ---------------------------------------------------------------------------
# Walks between classes
# ---------------------------------------------------------------------------
def test_walk_statistics_of_known_walks():
    s = np.linspace(0.0, 1.0, 5)
    prob_b = np.array([[0.0, 0.1, 0.3, 0.7, 1.0],
                       [0.0, 0.3, 0.5, 0.9, 1.0]])  # mean 0, .2, .4, .8, 1
    leak = np.array([0.0, 0.0, 0.2, 0.0, 0.0])  # belief on other classes mid-walk
    prob_a = 1.0 - prob_b - leak
    out = walk_statistics(prob_a, prob_b, s)
    np.testing.assert_allclose(out["mean_b"], [0.0, 0.2, 0.4, 0.8, 1.0])
    np.testing.assert_allclose(out["mean_a"], [1.0, 0.8, 0.4, 0.2, 0.0])
    assert out["crossing"] == pytest.approx(0.5 + (0.5 - 0.4) / (0.8 - 0.4) * 0.25)  # between s = .5 and .75
    assert out["monotonic"] is True and out["n_walks"] == 2
    assert out["kept_mass"] == pytest.approx(0.8) and "ambiguity" not in out  # per walk: boundary_statistics


def test_walk_statistics_without_a_crossing_or_with_a_dip():
    s = np.array([0.0, 1.0, 2.0, 3.0])
    never = walk_statistics(np.full((3, 4), 0.8), np.full((3, 4), 0.2), s)
    assert never["crossing"] is None and never["kept_mass"] == pytest.approx(1.0)
    assert walk_statistics(np.full((1, 4), 0.1), np.full((1, 4), 0.9), s)["crossing"] is None  # B from the start
    dip = np.array([[0.0, 0.6, 0.4, 1.0]])
    out = walk_statistics(1.0 - dip, dip, s)
    assert out["monotonic"] is False
    assert out["crossing"] == pytest.approx(0.5 / 0.6)  # the first rise through 0.5
    with pytest.raises(ValueError, match="increase"):
        walk_statistics(1.0 - dip, dip, s[::-1])
    with pytest.raises(ValueError, match="probabilities"):
        walk_statistics(dip, dip + 0.5, s)
    with pytest.raises(ValueError, match="shape"):
        walk_statistics(dip, dip, s[:3])


def test_boundary_statistics_at_each_walks_own_crossing():
    # three samples of four walks (walk 2 never crossed); min(P(A), P(B)) = 0.4, 0.1, 0.25
    prob_a, prob_b = np.array([0.4, 0.9, 0.25]), np.array([0.6, 0.1, 0.7])
    out = boundary_statistics(prob_a, prob_b, [True, True, False, True], width=[0.1, np.nan, 0.3])
    assert out["ambiguity"] == pytest.approx((0.4 + 0.1 + 0.25) / 3)
    assert out["ambiguous_share"] == pytest.approx(2 / 3)  # 0.4 and 0.25 are >= 0.2
    assert out["kept_mass"] == pytest.approx((1.0 + 1.0 + 0.95) / 3)
    assert out["crossing_share"] == pytest.approx(0.75) and out["width_median"] == pytest.approx(0.2)
    assert (out["n_samples"], out["n_walks"]) == (3, 4)
    none = boundary_statistics([], [], [False, False])
    assert none["ambiguity"] is None and none["crossing_share"] == 0.0 and none["width_median"] is None
    with pytest.raises(ValueError, match="crossed walks"):
        boundary_statistics(prob_a, prob_b, [True, False])
    with pytest.raises(ValueError, match="probabilities"):
        boundary_statistics(prob_a, prob_b + 0.5, [True, True, True])


# ---------------------------------------------------------------------------
# Memorisation
# ---------------------------------------------------------------------------
def test_memorisation_tells_copies_from_fresh_samples(mnist_split, trained_classifier):
    train_x, train_y, test_x, test_y = mnist_split
    _, net = trained_classifier
    train, baseline, fresh = train_x[::3], test_x[::2], test_x[1::2]  # fresh: held-out digits, not the baseline
    rng = np.random.default_rng(14)
    copies = train[rng.choice(len(train), len(fresh), replace=False)]
    noisy = np.clip(copies + rng.normal(0, 3, copies.shape), 0, 255).astype(np.uint8)  # copies, slightly perturbed
    pixels = lambda x: x.reshape(len(x), -1) / 255.0  # noqa: E731
    features = lambda x: net.features_and_logits(x)[0]  # noqa: E731
    for space in (pixels, features):
        reference = space(train)
        for copied in (copies, noisy):
            out = memorisation(space(copied), reference, space(baseline))
            assert out["near_copy_share"] >= 0.95 and out["median_ratio"] < 0.3, (space, out)
        out = memorisation(space(fresh), reference, space(baseline))
        assert out["near_copy_share"] < 0.1 and 0.7 < out["median_ratio"] < 1.4, (space, out)
        assert out["n_generated"] == len(fresh)


def test_memorisation_of_the_own_reference():
    rng = np.random.default_rng(15)
    train, test, fresh = rng.normal(size=(400, 8)), rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
    references = train[:100]  # each sample's reference, a training item
    copied = memorisation(references + 1e-3 * rng.normal(size=(100, 8)), train, test, own_reference=references)
    assert copied["own_near_copy_share"] == 1.0 and copied["own_median_ratio"] < 0.01
    new = memorisation(fresh, train, test, own_reference=references)
    assert new["own_near_copy_share"] <= 0.05 and new["own_median_ratio"] > 1.0  # farther than the nearest item
    assert new["near_copy_threshold"] == pytest.approx(np.percentile(
        scipy.spatial.distance.cdist(test, train).min(axis=1), 1.0))
    with pytest.raises(ValueError, match="own_reference"):
        memorisation(fresh, train, test, own_reference=references[:5])
    with pytest.raises(ValueError, match="held-out"):
        memorisation(fresh, train, train)  # the "test" items are the training items
    with pytest.raises(ValueError, match="one D"):
        memorisation(fresh[:, :4], train, test)


# ---------------------------------------------------------------------------
# Intervals over replicates
# ---------------------------------------------------------------------------
def test_t_interval_against_a_hand_computed_one():
    # n = 4, mean 2.5, s = sqrt(5/3); t_{0.975, 3} = 3.182 (any t table)
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182 * math.sqrt(5.0 / 3.0) / 2.0
    assert mean == 2.5 and low == pytest.approx(2.5 - half, rel=1e-3) and high == pytest.approx(2.5 + half, rel=1e-3)
    # n = 2 at 90%: t_{0.95, 1} = 6.314
    assert t_interval([0.0, 2.0], level=0.9)[2] == pytest.approx(1.0 + 6.314 * 1.0, rel=1e-3)  # s / sqrt(n) = 1
    assert t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="two"):
        t_interval([1.0])
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=95)


def test_paired_t_interval_against_a_hand_computed_one():
    # a - b = (1, 2, 3, 4) while a and b themselves spread widely: the interval is that of the differences
    a, b = [11.0, 102.0, 53.0, 1004.0], [10.0, 100.0, 50.0, 1000.0]
    mean, low, high = metrics.paired_t_interval(a, b)
    half = 3.182 * math.sqrt(5.0 / 3.0) / 2.0  # n = 4, s = sqrt(5/3), t_{0.975, 3} = 3.182
    assert mean == 2.5 and low == pytest.approx(2.5 - half, rel=1e-3) and high == pytest.approx(2.5 + half, rel=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        metrics.paired_t_interval([1.0, 2.0], [1.0, 2.0, 3.0])


def test_expected_calibration_error_against_a_hand_computed_case():
    # 4 rows, 2 bins (0, 0.5], (0.5, 1]: confidences 0.5, 0.5 (bin 1, both right: |1 - 0.5| = 0.5) and
    # 0.9, 0.7 (bin 2, one right: |0.5 - 0.8| = 0.3); ECE = 2/4 * 0.5 + 2/4 * 0.3 = 0.4
    prob = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 0])
    assert metrics.expected_calibration_error(prob, labels, bins=2) == pytest.approx(0.4)
    # perfectly calibrated: confidence 1 and always right
    assert metrics.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
    # confident and always wrong: ECE = 1
    assert metrics.expected_calibration_error(np.eye(3), np.array([1, 2, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prob"):
        metrics.expected_calibration_error(np.ones(3), np.zeros(3))


# ---------------------------------------------------------------------------
# evaluate_images and the command line
# ---------------------------------------------------------------------------
def write_folder(root: Path, images: np.ndarray, labels=None):
    for i, img in enumerate(images):
        folder = root if labels is None else root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:04d}.png")


def test_evaluate_images(mnist_split, trained_classifier):
    _, _, test_x, test_y = mnist_split
    _, net = trained_classifier
    real, gen, gen_y = test_x[::2], test_x[1::2], test_y[1::2]  # the sample is sorted by class
    out = metrics.evaluate_images(real, gen, gen_y, net)
    assert set(out) == {"fid", "is_mean", "is_std", "is_splits", "n_real", "n_generated",
                        "conditioning_accuracy"}
    assert out["conditioning_accuracy"] >= 0.9 and out["is_mean"] > 3.0
    assert out["n_real"] == out["n_generated"] == 250 and out["is_splits"] == 10
    one_class = fid_from_features(net.features_and_logits(real)[0],
                                  net.features_and_logits(gen[gen_y == 3])[0])
    assert 0 <= out["fid"] < one_class / 5
    unlabelled = metrics.evaluate_images(test_x[:20], test_x[20:24], np.full(4, -1), net)
    # 4 images: one split of all 4 (splits of one image would each score exactly 1), and the result says so
    assert "conditioning_accuracy" not in unlabelled and unlabelled["is_splits"] == 1
    assert "1 split of 4 images, not 10" in unlabelled["is_note"]


def test_is_splits_hold_at_least_the_minimum_of_images(mnist_split, trained_classifier):
    _, _, test_x, _ = mnist_split
    _, net = trained_classifier
    assert [metrics.is_splits(n) for n in (1, 10, 39, 40, 199, 200, 5000)] == [1, 1, 1, 2, 9, 10, 10]
    ten = metrics.evaluate_images(test_x[:50], test_x[::50], None, net)  # a digit of each class: --eval --n 10
    assert ten["is_splits"] == 1 and ten["is_mean"] > 1.5  # ten splits of one image each would give exactly 1.0
    assert "is_note" not in metrics.evaluate_images(test_x[:50], test_x[:200], None, net)


def test_a_run_evaluator_carries_its_run_id_and_another_runs_is_refused(tmp_path, mnist_split, trained_classifier):
    from plumbing import classifier
    _, net = trained_classifier
    path = tmp_path / "classifier.pt"
    classifier.save_classifier(net, path, "run-a")
    assert load_feature_network("classifier", classifier_path=path, device="cpu", run_id="run-a").model.run_id == "run-a"
    with pytest.raises(ValueError, match=r"belongs to another run \(run id run-a, this run is run-b\).*move it away"):
        load_feature_network("classifier", classifier_path=path, device="cpu", run_id="run-b")
    classifier.save_classifier(net, path)  # a file of no run (as files from before run ids)
    with pytest.raises(ValueError, match=r"run id none, this run is run-b"):
        load_feature_network("classifier", classifier_path=path, device="cpu", run_id="run-b")
    assert load_feature_network("classifier", classifier_path=path, device="cpu").model.run_id == ""  # metrics.py's


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "metrics.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_on_folders_and_npz(tmp_path, mnist_split, trained_classifier):
    _, _, test_x, test_y = mnist_split
    clf_path, _ = trained_classifier
    real = tmp_path / "real"
    write_folder(real, test_x[::8], test_y[::8])            # one sub-directory per class
    flat = tmp_path / "generated"
    write_folder(flat, test_x[1::16])                        # flat folder
    npz = tmp_path / "samples.npz"
    np.savez(npz, images=test_x[3::12], labels=test_y[3::12])

    done = run_cli(real, flat, "--features", "classifier", "--classifier", clf_path)
    assert done.returncode == 0, done.stderr
    assert "FID:" in done.stdout and "IS:" in done.stdout
    assert "conditioning" not in done.stdout

    done = run_cli(real, npz, "--features", "classifier", "--classifier", clf_path, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["conditioning_accuracy"] >= 0.85
    assert result["fid"] >= 0 and result["is_mean"] >= 1 and result["n_generated"] == 42
    assert result["n_real"] == 63 and result["features"] == "classifier"


def test_cli_refuses_sets_of_two_sizes_unless_image_size_is_given(tmp_path, mnist_split, trained_classifier, capsys):
    # (in this process, as the other refusals here: python metrics.py's own process is test_cli_on_folders_and_npz's
    # and test_cli_subprocess_offline_inception_is_one_line_exit_2's)
    _, _, test_x, test_y = mnist_split
    clf_path, _ = trained_classifier
    real, generated = tmp_path / "real.npz", tmp_path / "generated.npz"
    np.savez(real, images=test_x[::2], labels=test_y[::2])
    np.savez(generated, images=np.pad(test_x[1::2], ((0, 0), (2, 2), (2, 2), (0, 0))))  # 32 px digits
    for features in ("classifier", "inception"):
        argv = [str(real), str(generated), "--features", features,
                *(["--classifier", str(clf_path)] if features == "classifier" else [])]
        assert metrics_command.main(argv) == 2
        said = capsys.readouterr()
        assert said.err.count("\n") == 1 and said.out == "", said.err
        assert "28x28" in said.err and "32x32" in said.err and "--image-size N" in said.err
    assert metrics_command.main([str(real), str(generated), "--features", "classifier", "--classifier", str(clf_path),
                                 "--image-size", "28"]) == 0, capsys.readouterr().err


def test_cli_says_when_is_uses_fewer_splits_and_bounds_the_feature_batch(tmp_path, mnist_split, trained_classifier,
                                                                          capsys):
    _, _, test_x, test_y = mnist_split
    clf_path, _ = trained_classifier
    real, ten = tmp_path / "real.npz", tmp_path / "ten.npz"
    np.savez(real, images=test_x[::2], labels=test_y[::2])
    np.savez(ten, images=test_x[1:20:2])
    argv = [str(real), str(ten), "--features", "classifier", "--classifier", str(clf_path)]
    assert metrics_command.main(argv) == 0
    out = capsys.readouterr().out
    assert "(1 splits)" in out and "note: 1 split of 10 images, not 10" in out
    assert metrics_command.main([*argv, "--feature-batch-size", "10000000000"]) == 2
    assert "--feature-batch-size 10000000000 asks for more than this machine can hold" in capsys.readouterr().err


def test_cli_trains_the_classifier_on_labelled_real_images(tmp_path, mnist_split, monkeypatch, capsys):
    train_x, train_y, _, _ = mnist_split
    real = tmp_path / "real.npz"
    np.savez(real, images=train_x[::20], labels=train_y[::20])  # the sample is sorted by class
    generated = tmp_path / "gen"
    write_folder(generated, train_x[1::200], train_y[1::200])    # class folders "0".."9"
    fast_train = classifier.train_classifier
    monkeypatch.setattr(classifier, "train_classifier",
                        lambda *a, **k: fast_train(*a, **{**k, "steps": 5}))
    clf = tmp_path / "sub" / "clf.pt"
    assert metrics_command.main([str(real), str(generated), "--features", "classifier",
                         "--classifier", str(clf)]) == 0
    assert clf.is_file()
    monkeypatch.chdir(tmp_path)  # default location: .cache/metrics/ under the working directory
    assert metrics_command.main([str(real), str(generated), "--features", "classifier", "--json"]) == 0
    assert len(list((tmp_path / ".cache" / "metrics").glob("classifier-*.pt"))) == 1
    assert "conditioning_accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_refuses_what_the_classifier_could_not_read_before_training_or_saving_it(tmp_path, mnist_split, monkeypatch,
                                                                                        capsys):
    train_x, train_y, _, _ = mnist_split
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained before the check"))
    grey, rgb, one, named = (tmp_path / f"{n}.npz" for n in ("grey", "rgb", "one", "named"))
    np.savez(grey, images=train_x[::20], labels=train_y[::20])
    np.savez(rgb, images=np.repeat(train_x[1::40], 3, axis=3))
    np.savez(one, images=train_x[:50], labels=np.zeros(50, np.int64))
    np.savez(named, images=train_x[2::200], labels=np.arange(len(train_x[2::200])) % 3, class_names=np.array(["0", "1"]))
    clf = tmp_path / "clf.pt"
    for real, generated, says in [(grey, rgb, f"{grey} holds grey images and {rgb} RGB: .* convert GENERATED"),
                                  (one, grey, f"{one} holds one class only"),
                                  (grey, named, f"labels in {named} go up to 2, but its class_names has 2 entries")]:
        assert metrics_command.main([str(real), str(generated), "--features", "classifier",
                                     "--classifier", str(clf)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(says, err), err
    assert not clf.exists()


def test_cli_with_inception_and_a_local_weights_file(tmp_path, inception_weights, capsys):
    rng = np.random.default_rng(10)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(3))
    assert metrics_command.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--inception-weights",
                         str(inception_weights), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["fid"]) and result["is_splits"] == 1  # 3 images: one split (is_splits), not 3 of one
    assert "conditioning_accuracy" not in result  # ImageNet classes are not the requested ones


def test_cli_image_size_resizes_mixed_sizes(tmp_path, trained_classifier, capsys):
    clf_path, _ = trained_classifier
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate((28, 32, 28)):
        Image.new("L", (size, size), 40 * i).save(mixed / f"{i}.png")
    args = [str(mixed), str(mixed), "--features", "classifier", "--classifier", str(clf_path), "--json"]
    assert metrics_command.main(args) == 2
    assert "--image-size" in capsys.readouterr().err
    assert metrics_command.main(args + ["--image-size", "28"]) == 0
    assert json.loads(capsys.readouterr().out)["n_real"] == 3


CLI_ERRORS = {  # case: (what the one-line message must name, what it must not say)
    "missing": ("does-not-exist", None),
    "not-npz": ("x.txt", None),
    "random-bytes-npz": ("random.npz", "allow_pickle"),
    "no-images-key": ("'images'", None),
    "empty-folder": ("other", None),
    "bad-image": ("a.png", None),
    "mixed-sizes": ("--image-size", None),
    "no-labels": ("--classifier", None),
    "few-images": ("one.npz", None),
    "garbage-weights": ("x.pt", "weights_only"),
    "splits-zero": ("--splits", None),
    "negative-batch-size": ("--feature-batch-size", None),
    "old-batch-size": ("--feature-batch-size", None),  # train.py's --batch-size means the training batch
    "no-such-device": ("--device", None),
    "not-a-number": ("--splits", None),
    "unknown-flag": ("--frobnicate", None),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_user_errors_are_one_line_naming_the_file_or_flag_and_exit_2(tmp_path, case, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 28, 28, 1), np.uint8))
    other = tmp_path / "other"
    other.mkdir()
    extra = []
    if case == "empty-folder":
        pass
    elif case == "missing":
        other = tmp_path / "does-not-exist"
    elif case == "not-npz":
        other = tmp_path / "x.txt"
        other.write_text("hello")
    elif case == "random-bytes-npz":
        other = tmp_path / "random.npz"
        other.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "no-images-key":
        other = tmp_path / "x.npz"
        np.savez(other, pictures=np.zeros((4, 28, 28, 1), np.uint8))
    elif case == "bad-image":
        (other / "a.png").write_bytes(b"not a png")
    elif case == "mixed-sizes":
        Image.new("L", (28, 28)).save(other / "a.png")
        Image.new("L", (32, 32)).save(other / "b.png")
    elif case == "no-labels":
        write_folder(other, np.zeros((3, 28, 28, 1), np.uint8))
        extra = ["--features", "classifier", "--classifier", str(tmp_path / "new.pt")]
    elif case == "few-images":
        other = tmp_path / "one.npz"
        np.savez(other, images=np.zeros((1, 28, 28, 1), np.uint8))
    elif case == "garbage-weights":
        other = good
        (tmp_path / "x.pt").write_bytes(np.random.default_rng(1).bytes(4096))
        extra = ["--inception-weights", str(tmp_path / "x.pt")]
    else:
        other = good
        extra = {"splits-zero": ["--splits", "0"], "negative-batch-size": ["--feature-batch-size", "-1"],
                 "old-batch-size": ["--batch-size", "8"], "no-such-device": ["--device", "tpu9"],
                 "not-a-number": ["--splits", "ten"], "unknown-flag": ["--frobnicate"]}[case]
    assert metrics_command.main([str(other), str(good), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metrics.py: error:"), err
    must_name, must_not_say = CLI_ERRORS[case]
    assert must_name in err[0], err[0]
    if must_not_say:
        assert must_not_say not in err[0], err[0]


def test_cli_subprocess_offline_inception_is_one_line_exit_2(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 28, 28, 1), np.uint8))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    done = run_cli(tmp_path / "a.npz", tmp_path / "a.npz", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--inception-weights PATH" in lines[0] and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------
# Seed-level intervals, shares, KID, matched accuracy, diversity by the class read
# ---------------------------------------------------------------------------
def test_log_ratio_t_interval_of_three_seeds_against_its_hand_computation():
    # log-ratios 0, 1, 2: mean 1, s = 1, t_{0.975, 2} = 4.302653: exp(1 -+ 4.302653 / sqrt(3))
    b = np.array([2.0, 3.0, 5.0])
    ratio, low, high = metrics.log_ratio_t_interval(b * np.exp([0.0, 1.0, 2.0]), b)
    half = 4.302652729911275 / math.sqrt(3)
    assert ratio == pytest.approx(math.e) and low == pytest.approx(math.exp(1 - half))
    assert high == pytest.approx(math.exp(1 + half))
    # the three per-seed ratios 0.96, 0.67, 0.96: about [0.51, 1.43], wider than a 3-replicate bootstrap's
    _, low, high = metrics.log_ratio_t_interval([0.96, 0.67, 0.96], [1.0, 1.0, 1.0])
    assert (round(low, 2), round(high, 2)) == (0.51, 1.43)
    with pytest.raises(ValueError, match="positive"):
        metrics.log_ratio_t_interval([1.0, -1.0], [1.0, 1.0])


def test_wilson_interval_against_its_hand_computation_and_inside_0_1():
    share, low, high = metrics.wilson_interval(8, 10)  # p 0.8, z^2 / n = 0.38415: centre 0.71674, half 0.22658
    assert share == 0.8 and low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 20)[1] == 0.0 and metrics.wilson_interval(20, 20)[2] == 1.0
    assert 0 < metrics.wilson_interval(20, 20)[1] < 1


def test_logit_t_interval_stays_inside_0_1_where_a_plain_t_interval_passes_1():
    k, n = np.array([995, 1000, 990]), np.array([1000, 1000, 1000])
    plain = metrics.t_interval(k / n)
    share, low, high = metrics.logit_t_interval(k, n)
    assert plain[2] > 1 and 0 < low < share < high < 1 and share == pytest.approx(k.sum() / n.sum(), abs=3e-3)
    logits = np.log((k + 0.5) / (n - k + 0.5))  # by hand: the t-interval of the logits, through the logistic
    centre, lo, hi = metrics.t_interval(logits)
    assert low == pytest.approx(1 / (1 + math.exp(-lo))) and high == pytest.approx(1 / (1 + math.exp(-hi)))
    assert share == pytest.approx(1 / (1 + math.exp(-centre)))


def test_logit_t_interval_of_agreeing_seeds_keeps_their_binomial_width_and_holds_their_share():
    # two seeds of 15 of 20: the logits agree (s = 0), so the half-width is the binomial one, z sqrt(v / 2)
    v = 1 / 15.5 + 1 / 5.5
    centre, half = math.log(15.5 / 5.5), scipy.stats.norm.ppf(0.975) * math.sqrt(v / 2)
    share, low, high = metrics.logit_t_interval([15, 15], [20, 20])
    assert share == pytest.approx(scipy.special.expit(centre))
    assert (low, high) == pytest.approx((scipy.special.expit(centre - half), scipy.special.expit(centre + half)))
    assert (round(100 * low), round(100 * high)) == (59, 85)  # not the zero-width [74%, 74%] that missed 75%
    # seeds that differ more than chance would make them: the seeds' own spread, as a plain t-interval of the logits
    k, n = np.array([100, 500, 900]), np.array([1000] * 3)
    _, lo, hi = metrics.t_interval(np.log((k + 0.5) / (n - k + 0.5)))
    assert metrics.logit_t_interval(k, n)[1:] == pytest.approx((scipy.special.expit(lo), scipy.special.expit(hi)))


def test_mmd2_unbiased_of_two_small_sets_against_its_closed_form():
    # d = 1, k(a, b) = (ab + 1)^3; x = (0, 1), y = (1, 2): K_xx off-diagonal 1 (twice) / 2 = 1,
    # K_yy off-diagonal 27 (twice) / 2 = 27, K_xy 1 + 1 + 8 + 27 = 37, times 2 / 4 = 18.5: MMD^2 = 9.5
    assert metrics.mmd2_unbiased([[0.0], [1.0]], [[1.0], [2.0]]) == pytest.approx(9.5)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(4, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    by_hand = (sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
               + sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
               - 2 * sum(k(a, b) for a in x for b in y) / 20)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(by_hand)


def test_kid_averages_the_unbiased_mmd_over_subsets():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)), rng.normal(0.5, 1.0, size=(40, 4))
    whole = metrics.kid(x[:20], y[:20], subsets=3, subset_size=20)  # a subset of every row: the same value 3 times
    assert whole["kid"] == pytest.approx(metrics.mmd2_unbiased(x[:20], y[:20])) and whole["std"] < 1e-9
    part = metrics.kid(x, y, subsets=50, subset_size=10, seed=3)
    assert part["subset_size"] == 10 and part["std"] > 0 and part["kid"] > 0  # two different distributions
    same = metrics.kid(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)), subsets=20, subset_size=100)
    assert abs(same["kid"]) < 3 * same["std"]  # one distribution: KID near 0, either sign


def test_at_matched_share_interpolates_the_curve_by_hand():
    shares, fids = [0.90, 0.96, 0.99], [4.0, 6.0, 9.0]
    assert metrics.at_matched_share(shares, fids, 0.95) == pytest.approx(4 + 2 * 5 / 6)  # 5/6 of the way 0.90 -> 0.96
    assert metrics.at_matched_share(shares, fids, 0.98) == pytest.approx(8.0)  # 2/3 of the way 0.96 -> 0.99
    assert metrics.at_matched_share(shares, fids, 0.96) == 6.0
    assert metrics.at_matched_share(shares, fids, 0.995) is None and metrics.at_matched_share(shares, fids, 0.8) is None


def test_diversity_by_class_groups_by_the_class_given():
    f = np.array([[0.0], [1.0], [10.0], [10.0]])
    assert metrics.diversity_by_class(f, np.array([0, 0, 1, 1])) == pytest.approx(0.5)  # (1 + 0) / 2
    assert metrics.diversity_by_class(f, np.array([0, 0, 0, 1])) == pytest.approx((1 + 10 + 9) / 3)
