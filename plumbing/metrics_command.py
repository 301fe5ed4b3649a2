"""metrics.py's command line: its flags, the image sets it reads (folders or .npz files), the checks on them and
its output. Not the method: the metrics are metrics.py's (`python metrics.py REAL GENERATED` runs `main` here).
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import zipfile

import numpy as np
from PIL import Image

from plumbing import classifier
from plumbing import data
from plumbing import rundir
from plumbing.classifier import FeatureNetwork
from plumbing.weights import WeightsUnavailableError
import metrics


def load_image_set(path: str, image_size=None) -> tuple[np.ndarray, np.ndarray | None, list | None]:
    """(images, labels or None, class names or None) of a folder (flat, or one sub-directory
    per class) or of a .npz with `images` and optional `labels` and `class_names`."""
    path = str(path)
    if os.path.isdir(path):
        flat = data.list_images(path)
        images, labels, names = ((data.read_images(flat, image_size), None, None) if flat else
                                 data.load_image_folder(path, None, image_size, 0, None))
    elif not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: give a folder of images or a .npz file")
    elif not path.endswith(".npz"):
        raise ValueError(f"{path} is neither a folder of images nor a .npz file")
    else:
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except Exception:
            raise ValueError(f"{path} is not a readable .npz archive; write one with "
                             "numpy.savez(path, images=uint8 (N, H, W, C), labels=...)") from None
        if "images" not in arrays:
            raise ValueError(f"{path} has no 'images' array (it has: {', '.join(arrays) or 'nothing'})")
        images, labels = classifier.check_images(arrays["images"], f"'images' in {path}"), arrays.get("labels")
        names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else None
        if labels is not None and (labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"'labels' in {path} must be integers of shape ({len(images)},), "
                             f"got {labels.dtype} {labels.shape}")
        if image_size is not None:
            images = data.resize(images, image_size)
    if len(images) < 2:
        raise ValueError(f"{path} holds {len(images)} image; FID needs at least two on each side")
    return images, labels, names


def align_labels(labels, names, real_names, path):
    """Generated class indices re-numbered as the real set's classes of the same names."""
    if labels is not None and names is not None and len(labels) and labels.max() >= len(names):
        raise ValueError(f"labels in {path} go up to {labels.max()}, but its class_names has {len(names)} entries: "
                         "give one name per class")
    if labels is None or names is None or real_names is None:
        return labels
    if not set(names) <= set(real_names):
        raise ValueError(f"classes of {path} not among the real classes: {sorted(set(names) - set(real_names))[:5]}")
    return np.where(labels >= 0, np.array([real_names.index(name) for name in names])[np.maximum(labels, 0)], -1)


def check_trainable(real, real_labels, real_names, generated, labels, args) -> None:
    """Before --features classifier trains on REAL (and saves it): REAL has labels of two classes or more, the
    sets share their channels, and GENERATED's labels are among REAL's classes; else one line, nothing written."""
    if real_labels is None:
        raise ValueError(f"--features classifier trains on REAL, but {args.real} has no labels: "
                         "use a .npz with 'labels', class sub-directories, or an existing --classifier")
    classes = len(real_names) if real_names is not None else int(real_labels.max()) + 1
    if len(np.unique(real_labels)) < 2:
        raise ValueError(f"--features classifier trains on REAL, and {args.real} holds one class only: give it the "
                         "images of two classes or more")
    if real.shape[3] == 1 and generated.shape[3] == 3:  # (RGB REAL reads grey images: it copies them to RGB)
        raise ValueError(f"{args.real} holds grey images and {args.generated} RGB: a classifier trained on grey "
                         "images cannot read them; convert GENERATED to grey, or use --features inception")
    if labels is not None and len(labels) and labels.max() >= classes:
        raise ValueError(f"labels in {args.generated} go up to {labels.max()}, but {args.real} has {classes} classes")


def check_same_size(real, generated, real_path, generated_path) -> None:
    """Both sets at one image size: a network reads 28 px and 32 px digits differently, so the scores would
    compare the sizes, not the images (the caller resizes both with --image-size N)."""
    if real.shape[1:3] != generated.shape[1:3]:
        raise ValueError(f"{real_path} holds {real.shape[1]}x{real.shape[2]} images and {generated_path} "
                         f"{generated.shape[1]}x{generated.shape[2]}: pass --image-size N to resize both to N x N")


def check_batch_memory(net: FeatureNetwork, channels: int, batch_size) -> None:
    """--feature-batch-size against the memory available: a batch holds about 16 float32 copies of its images at
    the network's input size (resized, normalised, the first layers' maps), rundir.check_memory."""
    if batch_size is not None:
        rundir.check_memory({f"--feature-batch-size {batch_size}": batch_size * 16 * 4 * max(3, channels) * net.image_size ** 2})


# check_request_memory's estimates, in bytes: an image resized by --image-size is held about RESIZE_COPIES times (the
# set as read, the resized set); a batch row of the feature network FLOAT_COPIES float32 copies at the images' size
# (before the network's own resize), beside check_batch_memory's maps at the network's input size.
RESIZE_COPIES, FLOAT_COPIES = 2, 2
DEFAULT_FEATURE_BATCH = dict(classifier=256, inception=32)  # FeatureNetwork.batch_size of each
NETWORK_INPUT = dict(classifier=64, inception=299)  # the largest image side each network reads


def image_set_shape(path: str) -> tuple[int, int, int, int] | None:
    """(N, H, W, C) of an image set from its file names and headers alone: a folder's first image, a .npz's
    'images' header (None: unknown; then reading the set says what is wrong)."""
    try:
        if os.path.isdir(path):
            with contextlib.redirect_stderr(io.StringIO()):  # a note on skipped files comes when the set is read
                paths = data.list_images(path) or data.list_image_folder(data.split_folder(path, "train"))[0]
            with Image.open(paths[0]) as first:
                grey = first.mode in data.GREY_MODES + data.WIDE_GREY_MODES
                return len(paths), first.size[1], first.size[0], 1 if grey else 3
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, _ = (np.lib.format.read_array_header_1_0(f) if version == (1, 0) else
                           np.lib.format.read_array_header_2_0(f))
        return tuple(int(n) for n in shape) if len(shape) == 4 else None
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):
        return None


def check_request_memory(args) -> None:
    """--image-size and --feature-batch-size against the memory available (rundir.check_memory), before any image is
    read: the two sets resized, and a batch of the feature network at that size. Each request is named by the flag
    that makes it large: a batch by --feature-batch-size or --image-size, whichever is the further above its default.
    (--splits holds nothing: the score uses at most one split per metrics.MIN_IMAGES_PER_SPLIT images.)"""
    shapes = [shape for shape in (image_set_shape(args.real), image_set_shape(args.generated)) if shape is not None]
    if not shapes:
        return
    size, channels = args.image_size, max(shape[3] for shape in shapes)
    pixels = max(h * w for _, h, w, _ in shapes) if size is None else size * size  # of an image
    default_batch = DEFAULT_FEATURE_BATCH[args.features]
    batch = args.feature_batch_size or default_batch
    grown = pixels / min(h * w for _, h, w, _ in shapes)
    size_flag = f"--image-size {size}"
    batch_flag = size_flag if size is not None and grown > batch / default_batch else f"--feature-batch-size {batch}"
    side = min(NETWORK_INPUT[args.features], int(pixels ** 0.5)) if args.features == "classifier" else NETWORK_INPUT["inception"]
    requests = {batch_flag: batch * 4 * (FLOAT_COPIES * pixels * channels + 16 * max(3, channels) * side ** 2)}
    if size is not None:
        held = sum(n * (h * w * c + RESIZE_COPIES * pixels * c) for n, h, w, c in shapes)
        requests[size_flag] = requests.get(size_flag, 0) + held
    rundir.check_memory(requests)


def build_parser(min_per_split: int) -> argparse.ArgumentParser:
    """metrics.py's flags; argparse's errors raised as ValueError (one line, exit code 2 in metrics.main)."""
    parser = argparse.ArgumentParser(prog="metrics.py", description="FID and IS between two image sets: folders "
                                     "(flat, or one sub-directory per class) or .npz files ('images', 'labels').")
    parser.add_argument("real")
    parser.add_argument("generated", help="e.g. sample.py's samples.npz")
    parser.add_argument("--features", choices=("inception", "classifier"), default="inception")
    parser.add_argument("--inception-weights", help="local Inception weights file (offline use)")
    parser.add_argument("--classifier", help="classifier file: read if it exists, else trained on REAL "
                        "(which then needs labels) and saved here (default: under .cache/metrics/)")
    parser.add_argument("--splits", type=int, default=10, help=f"IS splits (default 10; fewer where a split would "
                        f"hold under {min_per_split} images, said in the result)")
    parser.add_argument("--image-size", type=int, help="resize all images to N x N first")
    parser.add_argument("--feature-batch-size", type=int,
                        help="images per batch of the feature network (default: 256 classifier, 32 inception)")
    parser.add_argument("--batch-size", dest="old_batch_size", help=argparse.SUPPRESS)  # the old name: an error
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")

    def error(message):  # argparse's errors as ours: one line, exit code 2
        raise ValueError(message)

    parser.error = error
    return parser


def check_args(args) -> None:
    """The counts, the renamed --batch-size and each feature network's own flag, before any image is read."""
    if args.old_batch_size is not None:  # train.py's --batch-size is the training batch; this is another thing
        raise ValueError("--batch-size is now --feature-batch-size (images per batch of the feature network)")
    if args.features == "inception" and args.classifier is not None:
        raise ValueError("--classifier is the network of --features classifier; with --features inception it would "
                         "be ignored: add --features classifier, or leave --classifier out")
    if args.features == "classifier" and args.inception_weights is not None:
        raise ValueError("--inception-weights are the weights of --features inception; with --features classifier "
                         "they would be ignored: leave --inception-weights out, or choose --features inception")
    for flag, value in (("--splits", args.splits), ("--image-size", args.image_size),
                        ("--feature-batch-size", args.feature_batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive number, got {value}")
    for flag, path in (("--classifier", args.classifier), ("--inception-weights", args.inception_weights)):
        if path == "":
            raise ValueError(f"{flag} is an empty path (''): give a file, or leave the flag out")
        if path is not None and os.path.isdir(path):
            what = ("read if it exists, else trained on REAL and saved there" if flag == "--classifier" else
                    "a weights file")
            raise ValueError(f"{flag} {path} is a folder: give a file path ({what})")


def classifier_cache_path(real: np.ndarray, real_labels: np.ndarray) -> str:
    """Where --features classifier keeps the classifier it trains on REAL (without --classifier): .cache/metrics/,
    named by the images, labels and training recipe."""
    digest = hashlib.sha1(str(real.shape).encode())
    digest.update(real.data), digest.update(real_labels.astype(np.int64).data)
    digest.update(classifier.RECIPE.encode())  # a new training recipe trains a new classifier
    return os.path.join(".cache", "metrics", f"classifier-{digest.hexdigest()[:16]}.pt")


def main(argv=None) -> int:
    """python metrics.py REAL GENERATED: FID, IS (and conditioning accuracy) of two image sets; 0, or 2 after a
    one-line error."""
    parser = build_parser(metrics.MIN_IMAGES_PER_SPLIT)
    try:
        args = parser.parse_args(argv)
        check_args(args)
        classifier.choose_device(args.device)  # an unavailable --device fails before any work
        check_request_memory(args)
        real, real_labels, real_names = load_image_set(args.real, args.image_size)
        generated, labels, names = load_image_set(args.generated, args.image_size)
        check_same_size(real, generated, args.real, args.generated)
        if args.features == "inception":
            net, labels = metrics.load_feature_network("inception", weights=args.inception_weights, device=args.device), None
        else:
            path = args.classifier
            if path is None and real_labels is not None:
                path = classifier_cache_path(real, real_labels)
            labels = align_labels(labels, names, real_names, args.generated)
            if path is None or not os.path.exists(path):
                check_trainable(real, real_labels, real_names, generated, labels, args)
                print(f"metrics.py: training the classifier on {args.real}, saving it to {path}", file=sys.stderr)
            net = metrics.load_feature_network("classifier", classifier_path=path, train_images=real,
                                       train_labels=real_labels, device=args.device)
            if labels is not None and labels.max() >= net.num_classes:
                raise ValueError(f"labels in {args.generated} go up to {labels.max()}, "
                                 f"but the classifier knows {net.num_classes} classes")
        net.batch_size = args.feature_batch_size or net.batch_size
        check_batch_memory(net, real.shape[3], args.feature_batch_size)
        result = {**metrics.evaluate_images(real, generated, labels, net, args.splits), "features": args.features}
    except (ValueError, OSError, WeightsUnavailableError, rundir.RunError) as error:
        print("metrics.py: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"FID: {result['fid']:.4f}")
        print(f"IS:  {result['is_mean']:.4f} +- {result['is_std']:.4f} ({result['is_splits']} splits)")
        if "is_note" in result:
            print(f"note: {result['is_note']}")
        if "conditioning_accuracy" in result:
            print(f"conditioning accuracy: {result['conditioning_accuracy']:.4f}")
    return 0
