"""What sample.py writes: generated parts stacked into one, samples.npz and the PNG grids.

Not the method: a "part" is a dict of generated images and what they were asked for
(labels, reference, cond, and for walks walk, s, endpoints); these functions stack
and store them.
"""
import io
import os

import numpy as np
from PIL import Image


def grid_png(rows: list[np.ndarray], pad: int = 2) -> bytes:
    """Tile rows of uint8 (n, H, W, C) images into one PNG (white gaps between images)."""
    h, w, c = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = image
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buffer, format="png")
    return buffer.getvalue()


# What no walk has (dtype, value, shape of a row); prob and width: boundary samples only (boundary_samples).
WALK_FIELDS = dict(walk=(np.int64, -1, ()), s=(np.float32, np.nan, ()), endpoints=(np.int64, -1, (2,)),
                   prob=(np.float32, np.nan, (2,)), width=(np.float32, np.nan, ()))


BOUNDARY_FIELDS = ("guide_prob", "trusted")  # boundary samples only: each guide member's reading, the filter


def concatenate_parts(parts: list[dict]) -> dict:
    """Stack generated parts (images, labels, reference, cond, and the walk fields) into one."""
    out = dict(images=np.concatenate([p["images"] for p in parts]),
               labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
               reference=np.concatenate([p["reference"] for p in parts]).astype(np.int64),
               cond={name: stack_condition([p["cond"].get(name) for p in parts], [len(p["labels"]) for p in parts])
                     for name in dict.fromkeys(name for p in parts for name in p["cond"])})
    for field, (dtype, missing, shape) in WALK_FIELDS.items():
        out[field] = np.concatenate([np.asarray(p[field], dtype) if field in p
                                     else np.full((len(p["labels"]), *shape), missing, dtype) for p in parts])
    for field in BOUNDARY_FIELDS:  # kept where every part is a boundary part
        if all(field in p for p in parts):
            out[field] = np.concatenate([p[field] for p in parts])
    return out


def take_rows(part: dict, rows: np.ndarray) -> dict:
    """The images `rows` of a part, with every per-image array and condition (not `crossed`, which is per walk)."""
    out = {k: v[rows] for k, v in part.items() if isinstance(v, np.ndarray) and k != "crossed"}
    out["cond"] = {name: value[rows] for name, value in part["cond"].items()}
    return out


def stack_condition(values: list[np.ndarray | None], counts: list[int]) -> np.ndarray:
    """Concatenate one condition's values over parts of `counts` rows. A part without the condition (a walk
    that dropped the label) gets -1 (integers) or NaN (floats); where soft labels (M, K) meet class indices
    (N,), the indices become one-hot rows, so a call with a soft-label walk stores every label as a mix."""
    given = [v for v in values if v is not None]
    widths = {v.shape[1] for v in given if v.ndim == 2 and v.dtype.kind == "f"}
    if widths and any(v.ndim == 1 for v in given):
        given = [np.eye(max(widths), dtype=np.float32)[v] if v.ndim == 1 else v for v in given]
    like = given[0]
    missing = -1 if like.dtype.kind in "iu" else np.nan
    filled = iter(given)
    return np.concatenate([next(filled) if v is not None else np.full((n, *like.shape[1:]), missing, like.dtype)
                           for v, n in zip(values, counts)])


def samples_npz(part: dict) -> bytes:
    """samples.npz: images uint8 (N, H, W, C), labels (N,) the class each stands for, reference (N,)
    the training image whose conditions were asked for (-1: none or a user's file), cond_<name>
    for every condition the model saw (e.g. cond_label (N,), or (N, K) soft labels, cond_pos (N, pos_dim: 20 by default); -1 or
    NaN where an image was made without it),
    and for walks: walk (N,) the walk each image is on (-1: none), s (N,) its place along it (0: A, 1: B)
    and endpoints (N, 2) the two training images the walk goes between; for boundary samples prob (N, 2) the
    guide's (P(A), P(B)) at the sample's s and width (N,) the walk's transition width around its crossing s* (NaN
    for other images); and, in a file of boundary samples only, guide_prob (N, M, 2) each guide member's
    (P(A), P(B)) at s and trusted (N,) whether the sample passed `trusted`."""
    part = concatenate_parts([part])  # fills the walk fields of a part without walks
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=part["images"], labels=part["labels"], reference=part["reference"],
                        walk=part["walk"], s=part["s"], endpoints=part["endpoints"], prob=part["prob"],
                        width=part["width"], **{field: part[field] for field in BOUNDARY_FIELDS if field in part},
                        **{f"cond_{name}": value for name, value in part["cond"].items()})
    return buffer.getvalue()


def sample_meta(args, run, guidance, walk_guidance, written: list[str]) -> dict:
    """sample.py's meta.json: every argument as used (--eta: the value the sampler took), the guidance, the files
    this call wrote (sample.py's own: rundir.sample_outputs), the run's conditions, classes and id."""
    return dict(recorded_settings(args), guidance=guidance, walk_guidance=walk_guidance, written_by="sample.py",
                files=sorted(written), conditions=sorted(run.config["unet"]["conditions"]),
                class_names=run.config["data"]["class_names"], run_id=run.config["run_id"])


def boundary_meta(args, run, n: int, counts: dict, written_samples: int, search: dict, written: list[str]) -> dict:
    """--boundary's meta.json: the arguments, the walks tried, crossed and trusted, the search and trust settings
    (boundary.search_settings)."""
    return dict(recorded_settings(args), boundary_n=n, guidance=counts["guidance"], boundary_method=args.boundary_method,
                boundary=dict(tried=counts["tried"], crossed=counts["crossed"], trusted=counts["trusted"],
                              written=written_samples, **search),
                written_by="sample.py", files=sorted(written), conditions=sorted(run.config["unet"]["conditions"]),
                class_names=run.config["data"]["class_names"], run_id=run.config["run_id"])
# sample.py's flags that name a file or folder: meta.json (and metrics.json's settings) record them portably.
PATH_FLAGS = ("run", "out", "reference_images", "inception_weights")


def portable_path(path: str) -> str:
    """A path as a result file records it: as typed when relative; an absolute one relative to the folder the
    command ran in (os.path.relpath), so that no committed result names a folder of the machine that made it."""
    if not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows): no relative path exists
        return os.path.basename(path)


def recorded_settings(args) -> dict:
    """sample.py's flags as meta.json records them: every flag, the paths portable (portable_path)."""
    settings = dict(vars(args))
    for flag in PATH_FLAGS:
        value = settings.get(flag)
        if isinstance(value, str):
            settings[flag] = portable_path(value)
        elif isinstance(value, list):
            settings[flag] = [portable_path(v) if isinstance(v, str) else v for v in value]
    return settings
