"""features.py: pixel and timm features, the cache, the UMAP space and its file, the Figure 7 plot.

No test downloads anything: timm models run with explicitly random or
locally saved weights, and the offline path is forced through huggingface_hub.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import features
from features import FeatureSpace, WeightsUnavailableError, extract_features, plot_positions

TINY = "test_vit"  # timm's 0.3M-parameter test ViT (160x160 input, 64-d features)


@pytest.fixture(scope="module")
def digits(mnist_sample) -> np.ndarray:
    """Six MNIST digits, (6, 28, 28, 1) uint8."""
    return mnist_sample[0][:6]


# ---------------------------------------------------------------- pixels
def test_pixels_are_flattened_and_scaled(digits, tmp_path):
    f = extract_features(digits, "pixels", cache_dir=str(tmp_path))
    assert f.dtype == np.float32 and f.shape == (6, 784)
    np.testing.assert_allclose(f, digits.reshape(6, -1) / 255.0, rtol=1e-6)
    assert f.min() == 0.0 and f.max() == 1.0
    assert os.listdir(tmp_path) == []  # pixels are never cached


@pytest.mark.parametrize("bad", [np.zeros((2, 28, 28), np.uint8), np.zeros((2, 8, 8, 1), np.float32),
                                 np.zeros((2, 8, 8, 2), np.uint8)])
def test_images_must_be_uint8_nhwc(bad):
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        extract_features(bad, "pixels")


# ---------------------------------------------------------------- timm backbones
def test_tiny_timm_model_with_random_weights(digits):
    f = extract_features(digits, TINY, weights="random", batch_size=4, cache_dir=None)
    assert f.dtype == np.float32 and f.shape == (6, 64) and np.isfinite(f).all()
    again = extract_features(digits[::-1].copy(), TINY, weights="random", batch_size=6, cache_dir=None)
    np.testing.assert_allclose(again[::-1], f, atol=1e-5)  # seeded weights, batch-independent, per image
    assert np.abs(f[0] - f[1]).max() > 1e-4  # different digits, different features
    rgb = extract_features(np.repeat(digits, 3, axis=3), TINY, weights="random", cache_dir=None)
    np.testing.assert_allclose(rgb, f, atol=1e-5)  # grey is replicated to RGB


def test_features_are_cached_by_content(digits, tmp_path, monkeypatch):
    first = extract_features(digits, TINY, weights="random", cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1 and os.listdir(tmp_path)[0].endswith(".npy")

    def no_model(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(features, "create_backbone", no_model)
    np.testing.assert_array_equal(extract_features(digits, TINY, weights="random", cache_dir=str(tmp_path)), first)
    monkeypatch.undo()
    changed = digits.copy()
    changed[0, 14, 14, 0] ^= 1  # one pixel differs: a new cache entry
    extract_features(changed, TINY, weights="random", cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2


def seeded_state_dict(name: str, seed: int) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def test_local_weights_file_safetensors_and_torch(digits, tmp_path):
    from safetensors.torch import save_file

    state = seeded_state_dict(TINY, seed=123)  # with its classifier head, as hub files have
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")  # a training checkpoint
    headless = {key: value for key, value in state.items() if not key.startswith("head.")}
    torch.save(headless, tmp_path / "headless.pth")  # as saved from a num_classes=0 model
    a = extract_features(digits, TINY, weights=str(tmp_path / "w.safetensors"), cache_dir=None)
    b = extract_features(digits, TINY, weights=str(tmp_path / "w.pt"), cache_dir=None)
    c = extract_features(digits, TINY, weights=str(tmp_path / "headless.pth"), cache_dir=None)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    random = extract_features(digits, TINY, weights="random", cache_dir=None)
    assert np.abs(a - random).max() > 1e-3  # the file's weights were used


def test_weights_file_for_another_model_is_a_clear_error(digits, tmp_path):
    torch.save(seeded_state_dict("test_resnet", seed=0), tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match="resnet.pt") as error:
        extract_features(digits, TINY, weights=str(tmp_path / "resnet.pt"), cache_dir=None)
    assert TINY in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        extract_features(digits, TINY, weights=str(tmp_path / "missing.pt"), cache_dir=None)


class Payload:
    """Unpickling this would run code; torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_weights_file_with_pickled_code_is_refused(digits, tmp_path):
    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        extract_features(digits, TINY, weights=str(tmp_path / "evil.pt"), cache_dir=None)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """huggingface_hub in offline mode with an empty cache: pretrained weights cannot be had."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_weights_that_cannot_be_downloaded_give_one_clear_error(digits, offline):
    with pytest.raises(WeightsUnavailableError) as error:
        extract_features(digits, "test_vit.r160_in1k", cache_dir=None)
    assert "weights=PATH" in str(error.value) and "'pixels'" in str(error.value)


def test_model_without_pretrained_weights_never_falls_back_to_random(digits, offline):
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights"):
        extract_features(digits, "test_vit4", cache_dir=None)


def test_unknown_backbone_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'"):
        extract_features(digits, "no_such_net", cache_dir=None)


# ---------------------------------------------------------------- UMAP space
def test_fit_gives_positions_and_their_statistics(small_space):
    assert small_space.positions.dtype == np.float32 and small_space.positions.shape == (300, 20)
    assert small_space.n_components == 20 and small_space.backbone == "pixels"
    assert small_space.mean.shape == small_space.std.shape == (20,)
    z = small_space.standardize(small_space.positions)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)


def test_fit_needs_more_points_than_neighbours():
    with pytest.raises(ValueError, match="n_neighbors"):
        FeatureSpace.fit(np.zeros((10, 4), np.float32))


def test_transform_puts_training_images_near_their_own_positions(small_space):
    picked = np.arange(0, 300, 10)  # 3 digits of each class
    u = small_space.transform(small_space.features[picked])
    assert u.dtype == np.float32 and u.shape == (30, 20)
    # distance from each transformed image to every training position: (30, 300)
    distances = np.linalg.norm(u[:, None, :] - small_space.positions[None, :, :], axis=2)
    rank_of_own = (distances < distances[np.arange(30), picked][:, None]).sum(axis=1)
    assert (rank_of_own < 15).mean() >= 0.9  # among its n_neighbors nearest training positions
    own = distances[np.arange(30), picked]
    assert np.median(own) < 0.25 * np.median(distances)


def test_transform_checks_the_feature_width(small_space):
    with pytest.raises(ValueError, match="784"):
        small_space.transform(np.zeros((2, 100), np.float32))


def test_save_load_round_trip_is_exact(small_space, tmp_path):
    path = str(tmp_path / "space.npz")
    small_space.save(path)
    loaded = FeatureSpace.load(path, backbone="pixels", n_components=20)
    for name in ("positions", "mean", "std", "features"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(small_space, name))
    assert loaded.backbone == "pixels" and loaded.n_components == 20
    references = small_space.features[:5] * 0.9
    np.testing.assert_array_equal(loaded.transform(references), small_space.transform(references))
    with np.load(path, allow_pickle=False) as saved:  # plain arrays only, no pickled objects
        assert all(saved[key].dtype != object for key in saved.files)


def test_load_refuses_another_backbone_or_dimension(small_space, tmp_path):
    path = str(tmp_path / "space.npz")
    small_space.save(path)
    with pytest.raises(ValueError, match=f"'pixels' features, not '{TINY}'"):
        FeatureSpace.load(path, backbone=TINY)
    with pytest.raises(ValueError, match="20-dimensional, not 2"):
        FeatureSpace.load(path, n_components=2)


def test_load_refuses_a_file_whose_refit_differs(small_space, tmp_path):
    path = str(tmp_path / "space.npz")
    small_space.save(path)
    with np.load(path) as saved:
        tampered = dict(saved)
    tampered["positions"] = tampered["positions"] + 1
    np.savez(path, **tampered)
    with pytest.raises(ValueError, match="did not reproduce"):
        FeatureSpace.load(path)


def test_load_missing_or_corrupt_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        FeatureSpace.load(str(tmp_path / "nothing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        FeatureSpace.load(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved FeatureSpace"):
        FeatureSpace.load(str(tmp_path / "other.npz"))


# ---------------------------------------------------------------- Figure 7
def test_plot_positions_writes_a_png(small_space, small_space_data, tmp_path):
    labels = small_space_data[1]
    plot_positions(small_space.positions[:, :2], labels, str(tmp_path / "given.png"))
    plot_positions(small_space.features, labels, str(tmp_path / "umap.png"), class_names=list("abcdefghij"))
    for name in ("given.png", "umap.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 200
    assert sorted(os.listdir(tmp_path)) == ["given.png", "umap.png"]  # no temporary files left
