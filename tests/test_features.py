"""features.py: pixel and timm features, the weights loaders, the cache, the UMAP space and its file, Figure 7.

No test downloads anything: timm models run with explicitly random or
locally saved weights, and the offline path is forced through huggingface_hub.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import features
from plumbing import weights
from features import FeatureSpace, create_backbone, exact_distances, extract_features, pick_device, plot_positions
from plumbing.weights import WeightsUnavailableError, load_weights, read_state_dict

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


def test_cache_key_holds_the_device_type_and_precision(digits, tmp_path, capsys):
    keys = {weights.cache_name(digits, TINY, "random", device, dtype)
            for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float32))}
    assert len(keys) == 3  # one entry per device type and precision
    # bf16 features of a GPU run in the cache are not what a CPU run (fp32) reads back
    gpu_entry = tmp_path / weights.cache_name(digits, TINY, "random", "cuda", torch.bfloat16)
    np.save(gpu_entry, np.zeros((6, 64), np.float32))
    on_cpu = extract_features(digits, TINY, weights="random", device="cpu", cache_dir=str(tmp_path))
    assert np.abs(on_cpu).max() > 0
    cpu_name = weights.cache_name(digits, TINY, "random", "cpu", torch.float32)
    assert sorted(os.listdir(tmp_path)) == sorted([gpu_entry.name, cpu_name]) and "-cpu-float32-" in cpu_name
    said = capsys.readouterr().err
    assert f"features: 6 images through {TINY} on cpu in float32 ..." in said and "done in" in said


def test_device_reaches_the_backbone(digits, monkeypatch):
    seen = []

    def record(model, images, batch_size, device):
        seen.append(device)
        return np.zeros((len(images), 64), np.float32)

    monkeypatch.setattr(features, "run_backbone", record)
    extract_features(digits, TINY, weights="random", device="cpu", cache_dir=None)
    assert seen == [torch.device("cpu")]


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
    with pytest.raises(ValueError, match="evil.pt") as error:
        extract_features(digits, TINY, weights=str(tmp_path / "evil.pt"), cache_dir=None)
    assert_one_line_without_unsafe_advice(error.value)
    with pytest.raises(ValueError) as error:
        read_state_dict(str(tmp_path / "evil.pt"))
    assert str(error.value) == (f"{tmp_path / 'evil.pt'} holds pickled objects, not plain tensors; "
                                "it is refused because loading it could run code")


def assert_one_line_without_unsafe_advice(error: BaseException) -> None:
    message = str(error)
    assert "\n" not in message and "weights_only" not in message, message


@pytest.mark.parametrize("content", [os.urandom(2000), b"not weights", b"PK\x03\x04 a broken zip"])
def test_unreadable_weights_file_is_a_one_line_error(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    (tmp_path / "bad.safetensors").write_bytes(content)
    for name in ("bad.pt", "bad.safetensors"):
        with pytest.raises(ValueError, match=name) as error:
            read_state_dict(str(tmp_path / name))
        assert_one_line_without_unsafe_advice(error.value)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pt")  # loads, but holds no tensors
    with pytest.raises(ValueError, match="numbers.pt holds no state dict of tensors"):
        read_state_dict(str(tmp_path / "numbers.pt"))


def test_read_state_dict_unwraps_checkpoints_and_ddp_prefixes(tmp_path):
    state = {"conv.weight": torch.ones(2, 3), "conv.bias": torch.zeros(2)}
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "step": 7}, tmp_path / "ddp.pt")
    torch.save({"state_dict_ema": state}, tmp_path / "ema.pth")
    for name in ("ddp.pt", "ema.pth"):
        read = read_state_dict(str(tmp_path / name))
        assert read.keys() == state.keys()
        assert all(torch.equal(read[k], state[k]) for k in state)


def test_keep_head_keeps_the_logits(tmp_path):
    import timm

    headless = create_backbone(TINY, "random")
    assert not headless.training and headless.num_classes == 0
    with_head = create_backbone(TINY, "random", keep_head=True)
    assert not with_head.training and with_head.num_classes == 1000
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert headless(x).shape == (2, 64) and with_head(x).shape == (2, 1000)
    state = seeded_state_dict(TINY, seed=5)
    torch.save(state, tmp_path / "w.pt")
    loaded = create_backbone(TINY, str(tmp_path / "w.pt"), keep_head=True)
    reference = timm.create_model(TINY).eval()
    reference.load_state_dict(state)
    trunk = create_backbone(TINY, str(tmp_path / "w.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)  # the file's head, not a random one
        features = loaded.forward_head(loaded.forward_features(x), pre_logits=True)
        torch.testing.assert_close(trunk(x), features, rtol=0, atol=0)  # keep_head=False: the features under the head
    torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, tmp_path / "headless.pt")
    with pytest.raises(ValueError, match="headless.pt does not fit test_vit: 2 missing keys"):
        create_backbone(TINY, str(tmp_path / "headless.pt"), keep_head=True)  # logits need the head's weights


def test_load_weights_ignores_the_prefixes_it_is_told(tmp_path):
    import timm

    state = seeded_state_dict(TINY, seed=1)
    state["AuxLogits.fc.weight"] = torch.zeros(10, 4)  # like torchvision's Inception file for timm's model
    torch.save(state, tmp_path / "aux.pt")
    model = timm.create_model(TINY)
    with pytest.raises(ValueError, match=r"aux.pt does not fit test_vit: 0 missing keys \[\], 1 unexpected"):
        load_weights(model, str(tmp_path / "aux.pt"))
    load_weights(model, str(tmp_path / "aux.pt"), ignore_prefixes=("AuxLogits.",))
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])
    torch.save(dict(state, **{"head.weight": torch.zeros(3, 64)}), tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="1 of another shape"):
        load_weights(model, str(tmp_path / "shape.pt"), ignore_prefixes=("AuxLogits.",))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert pick_device().type != "cuda"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """huggingface_hub in offline mode with an empty cache: pretrained weights cannot be had."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_weights_that_cannot_be_downloaded_give_one_clear_error(digits, offline):
    with pytest.raises(WeightsUnavailableError) as error:
        extract_features(digits, "test_vit.r160_in1k", cache_dir=None)
    message = str(error.value)
    assert "--weights PATH" in message and "--backbone pixels" in message and "\n" not in message
    assert "huggingface.co/timm/test_vit.r160_in1k" in message


def test_model_without_pretrained_weights_never_falls_back_to_random(digits, offline):
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights"):
        extract_features(digits, "test_vit4", cache_dir=None)


def test_unknown_backbone_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net': use --backbone pixels"):
        extract_features(digits, "no_such_net", cache_dir=None)


def test_the_reports_full_size_swinv2_through_extraction_fit_and_transform(mnist_sample, tmp_path):
    """The report's backbone as train.py and sample.py use it, with random weights (the hub's are out of reach
    here): 24 training digits and 2 references at 256 px, so only the pretrained weights are missing."""
    from features import PAPER_BACKBONE

    images, labels, _ = mnist_sample
    train, references = images[:24], images[100:102]
    f = extract_features(train, PAPER_BACKBONE, weights="random", batch_size=8, cache_dir=str(tmp_path))
    assert f.shape == (24, 1024) and np.isfinite(f).all()  # SwinV2-base's pooled features
    space = FeatureSpace.fit(f, n_components=20, n_neighbors=5, backbone=PAPER_BACKBONE)
    path = str(tmp_path / "space.npz")
    space.save(path)
    loaded = FeatureSpace.load(path, backbone=PAPER_BACKBONE, n_components=20)
    r = extract_features(references, PAPER_BACKBONE, weights="random", cache_dir=str(tmp_path))
    positions = loaded.standardize(loaded.transform(r))
    assert positions.shape == (2, 20) and np.isfinite(positions).all()
    # the cache answers the training images' second extraction (sample.py places training references)
    np.testing.assert_array_equal(extract_features(train, PAPER_BACKBONE, weights="random", cache_dir=str(tmp_path)), f)


# ---------------------------------------------------------------- UMAP space
def test_fit_gives_positions_and_their_statistics(small_space):
    assert small_space.positions.dtype == np.float32 and small_space.positions.shape == (300, 20)
    assert small_space.n_components == 20 and small_space.backbone == "pixels"
    assert small_space.mean.shape == small_space.std.shape == (20,)
    z = small_space.standardize(small_space.positions)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)


def test_fit_says_what_it_does_on_stderr(capsys):
    features = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    space = FeatureSpace.fit(features, n_components=2, n_neighbors=5)
    said = capsys.readouterr().err.strip()
    assert said.startswith("UMAP: fitting 40 x 6 -> 2-d") and "done in" in said and "\n" not in said
    assert space.positions.shape == (40, 2)


def test_fit_needs_more_points_than_neighbours():
    with pytest.raises(ValueError, match=r"need more than 15 training images \(UMAP's n_neighbors\), got 10"):
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
    with pytest.raises(ValueError, match="finite"):
        small_space.transform(np.full((2, 784), np.nan, np.float32))
    assert small_space.transform(np.zeros((0, 784), np.float32)).shape == (0, 20)


def held_out_digits(mnist_sample) -> np.ndarray:
    """Pixel features of 100 sample digits that `small_space` was not fitted on (it has the first 30 of each class)."""
    images, labels, _ = mnist_sample
    return extract_features(images[np.concatenate([np.flatnonzero(labels == k)[30:40] for k in range(10)])], "pixels")


def test_save_load_round_trip_is_exact(small_space, mnist_sample, tmp_path):
    path = str(tmp_path / "space.npz")
    small_space.save(path)
    loaded = FeatureSpace.load(path, backbone="pixels", n_components=20)
    for name in ("positions", "mean", "std", "features"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(small_space, name))
    assert loaded.params == small_space.params and loaded.umap is None
    assert loaded.backbone == "pixels" and loaded.n_components == 20
    # the loaded space places references exactly where the fitted one does: same arrays, same computation
    for references in (held_out_digits(mnist_sample), small_space.features[:50], small_space.features[:5] * 0.9):
        np.testing.assert_array_equal(loaded.transform(references), small_space.transform(references))
    with np.load(path, allow_pickle=False) as saved:  # plain arrays only, no pickled objects
        assert all(saved[key].dtype != object for key in saved.files)
    assert os.listdir(tmp_path) == ["space.npz"]  # written atomically, no temporary file left


@pytest.fixture(scope="module")
def umap_learns_fit(small_space):
    """umap-learn's own fit on small_space's features, with its own Euclidean metric (no precomputed distances)."""
    import umap

    p = small_space.params
    return umap.UMAP(n_components=small_space.n_components, n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                     random_state=p["seed"], n_jobs=1).fit(small_space.features)


def test_exact_distances_are_umap_learns(small_space, umap_learns_fit):
    """FeatureSpace.fit hands UMAP the distances umap-learn would compute (exact_distances, a compiled loop):
    the same matrix to the bit, hence the same fitted positions to the bit."""
    from sklearn.metrics import pairwise_distances
    from umap.distances import euclidean

    x = small_space.features[:60]
    np.testing.assert_array_equal(exact_distances(x), pairwise_distances(x, metric=euclidean))  # umap's own call
    assert small_space.umap.metric == "precomputed"  # 300 points: the shortcut was taken
    np.testing.assert_array_equal(small_space.positions, umap_learns_fit.embedding_)


def test_transform_is_umap_learns_transform(small_space, mnist_sample, umap_learns_fit):
    """FeatureSpace.transform vs umap-learn's own fit's transform.

    Below 4,096 training points umap-learn finds the neighbours exactly, as
    FeatureSpace.transform does, and the rest is umap's own kernels on the
    same arrays: the two agree bit for bit (measured: max |difference| 0).
    Above that umap searches approximate (NN-descent) neighbours; `python -m
    experiments.bench features` measures that case (see the README), as it
    needs a second, larger fit.
    """
    spread = small_space.std.mean()  # of the training positions, in UMAP units
    for references in (held_out_digits(mnist_sample), small_space.features[::7], small_space.features[:20] * 0.9):
        ours, theirs = small_space.transform(references), umap_learns_fit.transform(references)
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
        difference = np.abs(ours - theirs)
        assert difference.max() == 0.0, (
            f"max {difference.max():.3g}, mean {difference.mean():.3g} UMAP units "
            f"({difference.max() / spread:.3g} of the positions' std)"
        )


def test_load_never_fits(small_space, mnist_sample, tmp_path, monkeypatch):
    import umap

    path = str(tmp_path / "space.npz")
    small_space.save(path)

    def no_fit(*args, **kwargs):
        raise AssertionError("loading or transforming must not fit UMAP")

    for name in ("__init__", "fit", "fit_transform"):
        monkeypatch.setattr(umap.UMAP, name, no_fit)
    references = held_out_digits(mnist_sample)[:20]
    np.testing.assert_array_equal(FeatureSpace.load(path).transform(references), small_space.transform(references))


def test_run_id_round_trip(small_space, tmp_path):
    path = str(tmp_path / "space.npz")
    try:
        small_space.save(path)
        assert FeatureSpace.load(path).run_id == ""
        small_space.save(path, run_id="2026-11-27T10:00:00-quick-7f3a")
        assert FeatureSpace.load(path).run_id == small_space.run_id == "2026-11-27T10:00:00-quick-7f3a"
    finally:
        small_space.run_id = ""  # the fixture is shared by the session


def test_load_refuses_another_backbone_or_dimension(small_space, tmp_path):
    path = str(tmp_path / "space.npz")
    small_space.save(path)
    with pytest.raises(ValueError, match=f"'pixels' features, not '{TINY}': use --backbone pixels"):
        FeatureSpace.load(path, backbone=TINY)
    with pytest.raises(ValueError, match="20-dimensional, not 2: use --pos-dim 20"):
        FeatureSpace.load(path, n_components=2)


def test_missing_or_damaged_space_files_are_one_line_errors(small_space, tmp_path):
    def error_for(name: str, exception=ValueError) -> str:
        with pytest.raises(exception) as error:
            FeatureSpace.load(str(tmp_path / name))
        message = str(error.value)
        assert str(tmp_path / name) in message and "\n" not in message and "--overwrite" in message, message
        return message

    assert "not found" in error_for("nothing.npz", FileNotFoundError)
    (tmp_path / "random.npz").write_bytes(os.urandom(4000))
    assert "not an .npz archive" in error_for("random.npz")
    small_space.save(str(tmp_path / "space.npz"))
    whole = (tmp_path / "space.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    error_for("truncated.npz")
    damaged = bytearray(whole)
    damaged[len(damaged) // 3] ^= 0xFF  # one byte inside the features array: the zip CRC check fails
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    assert "is damaged" in error_for("damaged.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    assert "not a feature space of this version (no 'format' array)" in error_for("other.npz")
    with np.load(tmp_path / "space.npz") as saved:
        arrays = dict(saved)
    np.savez(tmp_path / "pickled.npz", **dict(arrays, backbone=np.array([print], dtype=object)))
    assert "holds pickled objects" in error_for("pickled.npz")
    np.savez(tmp_path / "old.npz", **{k: v for k, v in arrays.items() if k not in ("a", "b")})
    assert "no 'a' array" in error_for("old.npz")


# ---------------------------------------------------------------- Figure 7
def test_plot_positions_writes_a_png(small_space, small_space_data, tmp_path):
    labels = small_space_data[1]
    plot_positions(small_space.positions[:, :2], labels, str(tmp_path / "given.png"))
    plot_positions(small_space.features, labels, str(tmp_path / "umap.png"), class_names=list("abcdefghij"))
    for name in ("given.png", "umap.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 200
    assert sorted(os.listdir(tmp_path)) == ["given.png", "umap.png"]  # no temporary files left


def test_a_graph_in_parts_is_fitted_as_umap_learn_fits_it(small_space):
    """Two far-apart clusters: UMAP's neighbour graph has two parts, and umap's spectral start places the parts by
    distances from the data it is given, so FeatureSpace.fit refits from the features: umap-learn's own positions.
    (small_space: the session's UMAP fit has compiled umap's kernels.)"""
    import scipy.sparse.csgraph
    import umap

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(1000, 1, (40, 8))]).astype(np.float32)
    space = FeatureSpace.fit(features, n_components=3, seed=0)
    assert scipy.sparse.csgraph.connected_components(space.umap.graph_)[0] == 2  # the case this is about
    theirs = umap.UMAP(n_components=3, n_neighbors=15, min_dist=0.1, random_state=0, n_jobs=1).fit(features)
    np.testing.assert_array_equal(space.positions, theirs.embedding_)
