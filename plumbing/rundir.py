"""The run directory: what train.py writes, how it is read back, and the rules that keep it safe.

    runs/NAME/config.json     every setting, the U-Net's arguments, the data's digest, the run id, changes on resume
    runs/NAME/checkpoint.pt   model, EMA, optimizer, GradScaler state, step, mean loss, run id, format, a copy of
                              the config (written atomically every --save-every steps and at the last)
    runs/NAME/space.npz       the fitted feature space, config["space_file"] (only when a condition needs one)
    runs/NAME/log.csv         the loss every --log-every steps, and its curve loss.png (train.py)
    runs/NAME/grids/          class grids, stepNNNNNNN.png
    runs/NAME/samples/        train.py --eval's sample.py outputs
    runs/NAME/.lock           while a train.py works on the run: its process id and host

The rules, each a function below:

- Belonging: config, checkpoint and space carry the same run id, a digest
  of the settings that define the run (IDENTITY) and of the training images,
  fixed when the run starts; a file of another run is refused, naming it.
- Resume: the IDENTITY settings stay; any other may change, and
  config["changes"] records each change with the step it took effect.
- Overwrite: only the files of a run (RUN_FILES, our grids, sample.py's
  outputs where its meta.json says so) are removed, and only from a folder
  that is provably a run; a damaged run may be replaced.
- One writer: `.lock` names the train.py working on the run; a second one
  is refused, a lock whose process died is taken over. Reading (sample.py)
  needs no lock: every file is replaced atomically.
- Every check before the first write; weights are loaded with
  weights_only=True (loading never runs code); a checkpoint is saved only
  when it is `healthy`: its weights finite and its recorded mean loss finite
  and below DIVERGED_LOSS (else the one before stays).

train.py and sample.py both use this module; it imports neither.
"""
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re

import numpy as np
import torch

from plumbing.data import TEMPORARY_NAME, cannot_write, load_dataset, temporary_beside, write_atomically
from plumbing.errors import RunError, WriteError  # noqa: F401 (rundir.RunError: where every module finds it)
from ddpm import Diffusion, beta_schedule
from features import FeatureSpace, pick_device
from plumbing.precision import resolve_precision
from unet import UNet

CONFIG_FORMAT = "fpdiff-run-3"  # 3: config["space_file"] (2: "space") and settings["data_seed"] (2: none)
CHECKPOINT_FORMAT = "fpdiff-checkpoint-2"
# Settings that define a run: a resumed run keeps them (--overwrite starts afresh).
IDENTITY = ("data", "data_seed", "per_class", "image_size", "channels", "cond", "backbone", "weights", "pos_dim",
            "size", "dropout", "schedule", "timesteps", "prediction", "min_snr", "batch_size", "weight_decay",
            "p_uncond", "p_drop", "seed", "base_channels")
# IDENTITY settings added after runs were made: absent from those runs' config.json, and left out of the run id
# while at their default (None), so that a run of the default settings keeps the id it had (kept sets name it).
LATER_IDENTITY = ("base_channels",)
# Every other setting (steps, lr, grad_clip, warmup, ema, save_every, sample_every, device, precision, ...)
# may change on --resume; config["changes"] records each change and the step it took effect.
SPACE_FILE = "space.npz"
RUN_FILES = ("config.json", "checkpoint.pt", SPACE_FILE, "classifier.pt", "guide.pt", "guide-v2.pt", "log.csv",
             "loss.png")  # + grids/, samples/ (guide-v2.pt: boundary.GUIDE_FILES' other guide, made by experiments)
GRID_NAME = re.compile(r"step\d{7}\.png")
# Everything a sample.py call may write into its --out (and the only files it ever replaces there).
SAMPLE_FILES = ("class_grid.png", "references.png", "between.png", "boundary.png", "samples.npz", "meta.json",
                "metrics.json", "eval_samples.npz")


# ---------------------------------------------------------------------------
# Reading a run: config.json, checkpoint.pt, space.npz, the training images
# ---------------------------------------------------------------------------
def read_config(run_dir: str) -> dict:
    """config.json of a run written by train.py; anything else is a one-line error."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"{run_dir} is a file, not a run directory: give the folder that train.py --out wrote")
    path = os.path.join(run_dir, "config.json")
    has_checkpoint = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
    if not os.path.isfile(path):
        if has_checkpoint:  # train.py --resume rewrites config.json from the checkpoint's copy (read_run)
            raise RunError(f"{path} not found, but {run_dir} has a checkpoint.pt: python train.py --out {run_dir} "
                           "--resume restores config.json from the checkpoint's copy")
        check_not_training(path, run_dir, f"setting {run_dir} up")
        raise RunError(f"{path} not found: {run_dir} is not a run directory (train one: python train.py --out {run_dir})")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        cut = not error.doc.rstrip().endswith("}")  # a config is one object: the text ended before it did
        fix = (f"move it away, then python train.py --out {run_dir} --resume restores it from checkpoint.pt"
               if has_checkpoint else f"is {run_dir} a run made by train.py?")
        raise RunError(f"{path} is {'cut off' if cut else 'not valid JSON'} ({error.msg}, line {error.lineno}): "
                       f"{fix}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"cannot read {path} ({type(error).__name__}); is {run_dir} a run made by train.py?") from error
    return in_todays_format(config, path)


def check_not_training(path: str, run_dir: str, doing: str) -> None:
    """A run file not written yet because train.py is still `doing` it (run_dir/.lock, lock.LOCK_FILE: lock.py
    imports this module) is said so, not called missing."""
    if os.path.lexists(os.path.join(run_dir, ".lock")):
        raise RunError(f"{path} not found yet: train.py is {doing} ({run_dir}/.lock); wait until it writes its first "
                       "checkpoint (or, if no train.py runs, move the .lock away)")


def in_todays_format(config, path: str) -> dict:
    """A config of this format; one of format 2 is read as the same run in today's names, anything else refused.

    Format 2 had "space" for today's "space_file", and no --data-seed: it drew a
    --per-class subset with --seed, so its data_seed is its seed (the data digest checks it).
    """
    if isinstance(config, dict) and config.get("format") == "fpdiff-run-2":
        settings = dict(config["settings"], data_seed=config["settings"]["seed"])
        config = {**{k: v for k, v in config.items() if k != "space"}, "format": CONFIG_FORMAT,
                  "settings": settings, "space_file": config["space"]}
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise RunError(f"{path} was not written by this version of train.py (format {CONFIG_FORMAT} expected)")
    return config


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with weights_only=True (no code runs); anything else is a one-line error."""
    if not os.path.isfile(path):
        run_dir = os.path.dirname(path) or "."
        check_not_training(path, run_dir, f"training {run_dir}")
        raise RunError(f"{path} not found: train first (python train.py --out {run_dir})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle, ... all mean the same to the user
        raise RunError(f"{path} is corrupt or not a checkpoint of this project ({type(error).__name__}); "
                       "replace the run (--overwrite), or resume from an intact copy") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a train.py checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return checkpoint


def check_belongs(path: str, run_id: str, expected: str) -> None:
    """A space (or checkpoint) carries its run's id: one from another run is refused, naming the file. The advice
    never removes anything (--overwrite would remove the run's own files too)."""
    if run_id != expected:
        raise RunError(f"{path} belongs to another run (run id {run_id or 'none'}, this run is {expected}); move it "
                       "away and copy back this run's own file, or train a new run in another --out")


def check_same_run(run_dir: str, config: dict, checkpoint: dict) -> None:
    """config.json and checkpoint.pt carry one run id; when they do not, the one copied in is named; when they
    do, config.json must still describe the run as the checkpoint's copy does (check_unedited).

    The checkpoint holds the run (its weights and a copy of its config), so config.json is taken for the stray
    one, unless the run's space.npz carries config.json's id and not the checkpoint's. Either way the advice
    moves the stray file away, never removes the other (--overwrite would remove the checkpoint).
    """
    theirs, ours = config["run_id"], checkpoint.get("run_id", "")
    if theirs == ours:
        return check_unedited(run_dir, config, checkpoint)
    space = space_run_id(os.path.join(run_dir, SPACE_FILE))
    if space == theirs:
        raise RunError(f"{run_dir}/checkpoint.pt belongs to another run (run id {ours or 'none'}; config.json and "
                       f"{SPACE_FILE} are of run {theirs}): it was copied in; move it away and copy back this run's "
                       "own checkpoint.pt")
    others = f"checkpoint.pt and {SPACE_FILE} are" if space == ours else "checkpoint.pt is"
    raise RunError(f"{run_dir}/config.json belongs to another run (run id {theirs}; {others} of run {ours or 'none'}): "
                   f"it was copied in. Move it away; then python train.py --out {run_dir} --resume restores this "
                   "run's config.json from checkpoint.pt's own copy")


def check_unedited(run_dir: str, config: dict, checkpoint: dict) -> None:
    """config.json's settings that define the run (IDENTITY) and its U-Net are those of checkpoint.pt's own copy of
    the config: one edited by hand (or removed) would sample, or resume, the weights with other maths (e.g. eps for
    a v-prediction model) without a word. --data may differ (a moved folder): check_data compares the images."""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):  # (every checkpoint of this format has one)
        return
    saved = in_todays_format(saved, os.path.join(run_dir, "checkpoint.pt"))
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731  (tuples and lists alike)
    ours, theirs = as_json(config.get("settings") or {}), as_json(saved["settings"])
    edited = [f"--{key.replace('_', '-')}" for key in IDENTITY if key != "data"
              and (key in ours, ours.get(key)) != (key in theirs, theirs.get(key))]  # (removed counts, even at None)
    edited += ['"unet"'] if as_json(config.get("unet")) != as_json(saved.get("unet")) else []
    if edited:
        raise RunError(f"{run_dir}/config.json was edited ({', '.join(edited)} not as in checkpoint.pt's own copy; "
                       "the settings that define a run cannot change): move config.json away; python train.py "
                       f"--out {run_dir} --resume then restores it from checkpoint.pt's copy")


def space_run_id(path: str) -> str | None:
    """The run id a space file carries (None: no such file, or unreadable); only that array is read."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return str(saved["run_id"])
    except Exception:  # absent, damaged, not ours: no evidence either way
        return None


def read_run(run_dir: str) -> tuple[dict, dict | None]:
    """(config, checkpoint or None) of a run; a lost config.json is replaced by the checkpoint's copy."""
    path = os.path.join(run_dir, "config.json")
    config = read_config(run_dir) if os.path.lexists(path) else None
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = load_checkpoint(checkpoint_path) if os.path.lexists(checkpoint_path) else None
    if config is None and checkpoint is None:
        raise RunError(f"{path} not found: {run_dir} is not a run directory (train one: python train.py --out {run_dir})")
    if config is None:
        config = in_todays_format(checkpoint.get("config"), checkpoint_path)
    if checkpoint is not None:
        check_same_run(run_dir, config, checkpoint)
    return config, checkpoint


def load_space(run_dir: str, config: dict) -> FeatureSpace | None:
    """The run's fitted feature space (None when no condition of the run needs one), checked to belong to it."""
    if not config["space_file"]:
        return None
    path = os.path.join(run_dir, config["space_file"])
    space = FeatureSpace.load(path)
    check_belongs(path, space.run_id, config["run_id"])
    return space


def build_unet(config: dict) -> UNet:
    """The U-Net of a run, from the arguments stored in its config alone."""
    return UNet(**config["unet"])


def make_diffusion(settings: dict) -> Diffusion:
    """The run's noise schedule and what its U-Net predicts (eps or v), from its settings."""
    return Diffusion(beta_schedule(settings["schedule"], settings["timesteps"]), settings.get("prediction", "eps"),
                     settings.get("min_snr"))


def load_training_images(settings: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, H, W, C) uint8 images, (N,) labels and class names, as a run's settings say."""
    return load_dataset(settings["data"], root=settings["root"], per_class=settings["per_class"],
                        image_size=settings["image_size"], data_seed=settings["data_seed"],
                        channels=settings["channels"])


def data_digest(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> str:
    """A fingerprint of the training data: the run's images, labels and class names."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(images.shape), class_names]).encode())
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()[:16]


def check_data(run_dir: str, config: dict, digest: str) -> None:
    """Resuming and sampling need the images the run was trained on (references and metrics come from them)."""
    if digest != config["data"]["digest"]:
        raise RunError(f"the training data of {run_dir} ({config['settings']['data']}) changed since it was trained; "
                       "resuming and sampling need the same images: restore them, or train a new run (--overwrite)")


def make_run_id(settings: dict, digest: str) -> str:
    """A digest of what defines a new run: its IDENTITY settings and its training data."""
    identity = json.dumps({key: settings.get(key) for key in IDENTITY
                           if key not in LATER_IDENTITY or settings.get(key) is not None}, sort_keys=True)
    return hashlib.sha256(f"{identity}|{digest}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# The rules of resume and overwrite
# ---------------------------------------------------------------------------
def resumed_settings(saved: dict, typed: dict, out: str) -> tuple[dict, dict]:
    """The run's saved settings with the settings typed on --resume: (settings, changes).

    A setting in IDENTITY may not change; any other may, and changes[key] = [old, new].
    """
    settings, changes = dict(saved), {}
    for key, new in typed.items():
        if new == saved.get(key):
            continue
        if key in IDENTITY:
            raise RunError(f"{out} was trained with --{key.replace('_', '-')} {saved.get(key)}; a resumed run "
                           f"keeps the settings that define it (use --overwrite, or another --out, to start a new run)")
        settings[key], changes[key] = new, [saved.get(key), new]
    if "steps" in typed and saved.get("epochs") is not None:  # --steps on resume wins over a saved --epochs
        settings["epochs"], changes["epochs"] = None, [saved["epochs"], None]
    return settings, changes


def holds_run(out: str) -> bool:
    """Does `out` hold a run's config.json or checkpoint.pt (intact or not)?"""
    return any(os.path.lexists(os.path.join(out, name)) for name in ("config.json", "checkpoint.pt"))


def check_ours(out: str) -> None:
    """The run in `out` is provably train.py's: an intact config.json of ours, or else an intact checkpoint.

    Only then may --overwrite remove its files. A damaged checkpoint beside our
    config.json may be replaced; a config.json of someone else's never is.
    """
    path = os.path.join(out, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = None  # absent or damaged: then the checkpoint has to show it
    if config is not None:
        in_todays_format(config, path)  # a readable config.json that is not ours is the user's: refused
        return
    path = os.path.join(out, "checkpoint.pt")
    if os.path.isfile(path):
        try:
            load_checkpoint(path)
            return
        except RunError:
            pass
    raise RunError(f"{out} holds a damaged config.json or checkpoint.pt and nothing intact shows it is a run of "
                   "train.py, so nothing is removed: move those files away yourself, or choose another --out")


def our_grid_files(out: str) -> list[str]:
    grids = os.path.join(out, "grids")
    return [os.path.join(grids, f) for f in os.listdir(grids) if GRID_NAME.fullmatch(f)] if os.path.isdir(grids) else []


def check_new_run_out(out: str) -> None:
    """A new run in a folder without one owns nothing there: a file train.py would write that exists already
    (RUN_FILES, grids/stepNNNNNNN.png, samples/'s SAMPLE_FILES) is the user's, and is refused, naming it."""
    for folder in ("grids", "samples"):
        path = os.path.join(out, folder)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise RunError(f"{path} exists and is not a folder; train.py writes its {folder} there: move it away, "
                           "or choose another --out")
    planned = [os.path.join(out, name) for name in RUN_FILES] + our_grid_files(out)
    planned += [os.path.join(out, "samples", name) for name in SAMPLE_FILES]
    for path in planned:
        if os.path.lexists(path):
            raise RunError(f"{path} exists, and {out} holds no run of train.py (no config.json) that it could "
                           "belong to: train.py would replace it. Move it away, or choose another --out")


def sample_outputs(folder: str) -> list[str]:
    """The files an earlier sample.py call wrote in `folder`, as its meta.json's `files` lists them
    ([] if none or unreadable): the only files in it that sample.py (or train.py --overwrite) may replace."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    files = meta.get("files") if isinstance(meta, dict) and meta.get("written_by") == "sample.py" else None
    return [name for name in files if name in SAMPLE_FILES] if isinstance(files, list) else []


def remove_run_files(out: str) -> None:
    """--overwrite: remove only what train.py and sample.py wrote; anything else of the user's stays."""
    samples = os.path.join(out, "samples")
    paths = [os.path.join(out, name) for name in RUN_FILES] + our_grid_files(out)
    paths += [os.path.join(samples, name) for name in sample_outputs(samples)]
    for path in paths:
        if os.path.isfile(path):
            os.remove(path)
    for folder in (os.path.join(out, "grids"), samples):
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def stray_of(filename: str) -> str:
    """The NAME whose temporary file `filename` is, "" if it is none of ours: only a name that matches
    data.TEMPORARY_NAME exactly (`.NAME.<pid>.XXXXXXXX.fpdiff-tmp`, what temporary_beside makes) is one."""
    match = TEMPORARY_NAME.fullmatch(filename)
    return match["name"] if match else ""


def process_alive(pid: int) -> bool:
    """Does process `pid` run on this machine? (Signal 0 only asks; another user's process counts as running.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_tmp(out: str) -> None:
    """A kill during a write leaves a temporary file beside NAME (data.write_atomically); the next run removes
    those in `out`, grids/ and samples/ whose name is exactly one temporary_beside makes and whose process
    is gone (a sample.py writing classifier.pt there meanwhile keeps its own). Any other name is the user's
    and stays, whatever it looks like (`log.csv.tmp`, `.config.json.20241201.tmp`, ...)."""
    for folder in (out, os.path.join(out, "grids"), os.path.join(out, "samples")):
        if not os.path.isdir(folder):
            continue
        for filename in os.listdir(folder):
            match = TEMPORARY_NAME.fullmatch(filename)
            path = os.path.join(folder, filename)
            if match and not process_alive(int(match["pid"])) and os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


# ---------------------------------------------------------------------------
# sample.py's --out: which files are its own, and all of a call's files or none
# ---------------------------------------------------------------------------
def check_sample_out(out: str, names: list[str]) -> None:
    """--out is a writable folder where each file this call writes (`names`) is absent or listed as written by
    an earlier sample.py call in its meta.json (sample_outputs): a file of the user's is never replaced."""
    check_out(out)
    owned = sample_outputs(out)
    for name in names:
        if os.path.lexists(os.path.join(out, name)) and name not in owned:
            raise RunError(f"--out {out} holds {name}, which no earlier sample.py call there wrote (its meta.json "
                           "does not list it): move it away, or choose another --out")


def write_all_or_none(out: str, files: dict[str, bytes]) -> None:
    """Write a call's files into `out`: all to new temporary names first, then each renamed over its name.

    A failed write (a full disk, a folder made read-only meanwhile, ...) removes
    only the temporary files this call made, and a folder it made, and is one
    line: the files there before are as they were, never a mix of this call's
    and an earlier one's. Then the earlier call's outputs that this one does
    not remake are removed (they would not match); anything else in `out` stays.
    """
    made, stale = missing_folders(out), [name for name in sample_outputs(out) if name not in files]
    temporary, done = {}, 0
    try:
        os.makedirs(out, exist_ok=True)
        for name, content in files.items():
            temporary[name] = temporary_beside(os.path.join(out, name))
            write_bytes(temporary[name], content)
            done += 1
    except OSError as error:
        for path in temporary.values():
            with contextlib.suppress(OSError):
                os.remove(path)
        remove_empty(made)
        kept = "the folder is removed again" if made else "the files in it are as they were"
        if disk_full(error):
            raise RunError(f"the disk is full: --out {out} could not be written ({done} of {len(files)} "
                           f"files done; {kept}); free some space and run it again") from None
        raise WriteError(f"--out {out} could not be written ({done} of {len(files)} files done; {kept}): "
                         + cannot_write(os.path.join(out, list(files)[done]), error)) from error
    renamed = []
    try:
        for name, path in temporary.items():
            os.replace(path, os.path.join(out, name))
            renamed.append(name)
        for name in stale:
            if os.path.isfile(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    except OSError as error:  # (rare: the files are written; a rename or a removal was refused)
        for name, path in temporary.items():
            if name not in renamed:
                with contextlib.suppress(OSError):
                    os.remove(path)
        raise WriteError(f"--out {out} is only partly updated ({', '.join(renamed) or 'no file'} of this call's "
                         f"files in place): {error.strerror or error} ({error.filename}); fix that and run it "
                         "again") from error


def write_bytes(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


# ---------------------------------------------------------------------------
# Requests bounded by memory: sample.py's and metrics.py's counts
# ---------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available now: Linux's MemAvailable (/proc/meminfo), else the free pages (os.sysconf)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # unknown: no bound


def check_memory(requests: dict[str, int], available: int | None = None, where: str = "this machine") -> None:
    """requests: a flag as typed ("--n 1000") -> the bytes it makes the call hold at once (an estimate).

    Their sum must fit in the memory available now (`available`, else available_memory(): `where`'s); else one
    line naming the largest, the estimate and the limit. Python's integers never overflow: 100000**2 pixels is a
    request like any other.
    """
    limit, total = available_memory() if available is None else available, sum(requests.values())
    if limit is None or total <= limit:
        return
    flag = max(requests, key=requests.get)
    raise RunError(f"{flag} asks for more than {where} can hold: about {byte_size(total)} of memory "
                   f"({byte_size(requests[flag])} for {flag.split()[0]} alone), and {byte_size(limit)} is available; "
                   "ask for fewer")


def byte_size(n: int) -> str:
    """1.5 GiB, 300 MiB; a number of bytes too large for a float (10**400) in powers of ten."""
    if n >= 2**30 * 10**15:
        return f"10^{len(str(n)) - 1} bytes"
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------
# Writing a run
# ---------------------------------------------------------------------------
def grid_path(out: str, step: int) -> str:
    """A run's progress grid of one step: OUT/grids/stepNNNNNNN.png."""
    return os.path.join(out, "grids", f"step{step:07d}.png")


def write_config(out: str, config: dict) -> None:
    write_atomically(os.path.join(out, "config.json"), lambda f: f.write(json.dumps(config, indent=2).encode()))


# The training loss is E||target - prediction||^2 of a target with unit variance (eps, or v): predicting 0
# scores 1 and a fresh U-Net about that. A mean loss above this means the weights have blown up.
DIVERGED_LOSS = 100.0


def finite_weights(checkpoint: dict) -> bool:
    """Are the model's, the EMA's and the optimizer's numbers all finite?"""
    tensors = [*checkpoint["model"].values(), *checkpoint["ema"].values()]
    tensors += [v for state in checkpoint["optimizer"]["state"].values() for v in state.values()]
    return all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def healthy(checkpoint: dict) -> bool:
    """Weights worth resuming from: all finite, and (where the checkpoint records it) a mean loss below DIVERGED_LOSS.

    Finite is not enough: at --lr 1e6 the weights reach 1e6 in two steps, finite,
    with a loss near 1e14, and every later step gives a non-finite loss whatever the --lr.
    """
    loss = checkpoint.get("loss")  # the mean loss of the steps since the last log, when the loop stores it
    return finite_weights(checkpoint) and (loss is None or (math.isfinite(loss) and loss < DIVERGED_LOSS))


def save_checkpoint(path: str, checkpoint: dict) -> bool:
    """torch.save to a temporary file beside it, then an atomic rename: a kill never leaves half a checkpoint.

    Returns False, writing nothing, when the weights are not `healthy`: the
    checkpoint already at `path` stays. A full disk is a one-line error; the
    earlier checkpoint stays intact then too.
    """
    if not healthy(checkpoint):
        return False
    earlier = os.path.isfile(path)  # what the message can promise
    try:
        write_atomically(path, lambda f: torch.save(checkpoint, f))
    except WriteError as error:  # any failed write (torch.save reports one as a RuntimeError about its position)
        if not disk_full(error):
            raise  # one line already: the file, why, and the fix
        kept = "the checkpoint there before it is intact" if earlier else "no earlier checkpoint existed"
        raise RunError(f"the disk is full: {path} (step {checkpoint['step']}) could not be written; {kept}. Free "
                       f"some space, then: python train.py --out {os.path.dirname(path) or '.'} --resume") from None
    return True


def disk_full(error: BaseException | None) -> bool:
    """Is a full disk (or quota) the cause, anywhere in the chain of exceptions?"""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def checkpoint_step(path: str) -> int | None:
    """The step of the checkpoint at `path` (None: none, or unreadable); memory-mapped, so cheap."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


# ---------------------------------------------------------------------------
# Messages for a run that stops: a non-finite loss, an interruption
# ---------------------------------------------------------------------------
def nan_message(out: str, step: int, last_good_step: int | None, lr: float) -> str:
    """What to do after the loss became non-finite at `step`; last_good_step: the newest checkpoint's step, or None.

    The loss of step S is computed with the weights after S updates, which is
    what a checkpoint at step S holds, and a resumed run replays step S's
    batch and noise exactly: so when last_good_step == step, that checkpoint
    gives the same non-finite loss at any --lr (its weights blew up before it
    was saved); without a checkpoint, --resume starts the run again from step 0.
    The advice is a tenth of --lr and at most 1e-3 (AdamW moves every weight
    by up to about lr per step, and a fresh U-Net's weights are O(0.1)).
    """
    lower = f"{min(lr / 10, 1e-3):g}"
    head = f"the loss became non-finite at step {step} (--lr {lr:g} is likely too high)"
    if last_good_step is None:
        return (f"{head}; no checkpoint was written yet. Start again from step 0 with a lower learning rate: "
                f"python train.py --out {out} --resume --lr {lower}")
    if last_good_step < step:
        return (f"{head}; {out}/checkpoint.pt (step {last_good_step}) is kept. Continue from it with a lower "
                f"learning rate: python train.py --out {out} --resume --lr {lower}")
    return (f"{head}; {out}/checkpoint.pt (step {last_good_step}) holds the weights that give it, so resuming "
            f"from it fails at any --lr, and no earlier checkpoint is kept. Remove {out}/checkpoint.pt, then start "
            f"the run again from step 0 with a lower learning rate: python train.py --out {out} --resume --lr {lower}")


def interrupted_message(out: str, at_step: int | None = None) -> str:
    """Ctrl-C (at training step at_step, if known): what is on disk, and the command that continues."""
    step = checkpoint_step(os.path.join(out, "checkpoint.pt"))
    where = "interrupted" if at_step is None else f"interrupted at step {at_step}"
    if step is not None:
        return f"{where}; {out}/checkpoint.pt (step {step}) is intact. Continue: python train.py --out {out} --resume"
    if os.path.isfile(os.path.join(out, "config.json")):
        return f"{where}, before the first checkpoint. Start again from step 0: python train.py --out {out} --resume"
    return f"interrupted before the run was set up; {out} holds no run"


# ---------------------------------------------------------------------------
# Before the first write: --out, --device, and one writer at a time
# ---------------------------------------------------------------------------
def check_out(out: str, flag: str = "--out") -> None:
    """`flag` (--out) is a folder, or a path where one can be made, and writable: else one line saying what is wrong."""
    if not out:  # os.path.abspath("") is the current folder, where nothing could be written as asked
        raise RunError(f"{flag} is an empty path (''): give the folder to write in")
    path = os.path.abspath(out)
    while not os.path.exists(path):  # up to the nearest thing that exists
        if os.path.islink(path):
            raise RunError(f"{flag} {out}: {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                           f"create its target, or give another {flag}")
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "is a file" if path == os.path.abspath(out) else f"lies under {path}, which is a file"
        raise RunError(f"{flag} {out} {where}; give a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"{flag} {out}: {path} is read-only for you; give a folder you can write to")


def check_run_writable(run_dir: str, name: str, flag: str) -> None:
    """sample.py's `flag` keeps `name` (the evaluator, the guide) in the run: refused before any work where the
    run directory is read-only for the user (a full disk shows only when written: a WriteError then)."""
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunError(f"cannot write {os.path.join(run_dir, name)}: {run_dir} is read-only for you, and {flag} "
                       f"keeps its {name} there; make {run_dir} writable (or sample from a copy of the run)")


def check_device(name: str | None) -> None:
    """--device names a device this machine has (None: the best available one is taken)."""
    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name} is not a device name; use cpu, cuda, cuda:N or mps") from None
    has = dict(cpu=True, cuda=torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
               mps=torch.backends.mps.is_available())
    if not has.get(device.type, False):
        present = ", ".join(kind for kind, there in has.items() if there)
        raise RunError(f"--device {name}: this machine has no such device (it has {present}); "
                       "pass one of those, or leave --device out for the best available")


def missing_folders(out: str) -> list[str]:
    """The folders that creating `out` would make, deepest first."""
    made, path = [], os.path.abspath(out)
    while not os.path.lexists(path):
        made.append(path)
        path = os.path.dirname(path)
    return made


def remove_empty(folders: list[str]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only if empty


@dataclasses.dataclass
class Run:
    """Everything sampling needs: the (EMA) model, its diffusion, the run's config, space and training data."""
    dir: str
    config: dict
    model: UNet
    diffusion: Diffusion
    space: FeatureSpace | None
    images: np.ndarray  # (N, H, W, C) uint8 training images
    labels: np.ndarray  # (N,) int64
    precision: torch.dtype | None = None  # autocast dtype of the network, None: fp32

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(run_dir: str, device: str | None = None, precision: str = "auto") -> Run:
    """The EMA model, diffusion, config, feature space and training data of a run (no UMAP refit).

    device: cuda, mps, cpu (None: the best available); precision: auto, bf16, fp16 or fp32 (see resolve_precision).
    """
    check_device(device)
    config = read_config(run_dir)
    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = load_checkpoint(path)
    check_same_run(run_dir, config, checkpoint)
    model = build_unet(config)
    try:
        model.load_state_dict(checkpoint["ema"])
    except (RuntimeError, KeyError) as error:
        raise RunError(f"{path} does not fit the U-Net its config.json describes (a checkpoint of another version "
                       "of unet.py?): train the run again (--overwrite), or sample it with the code that trained it") from error
    space = load_space(run_dir, config)
    images, labels, class_names = load_training_images(config["settings"])
    check_data(run_dir, config, data_digest(images, labels, class_names))
    device = pick_device(device)
    model.to(device).eval()
    diffusion = make_diffusion(config["settings"]).to(device)
    return Run(run_dir, config, model, diffusion, space, images, labels, resolve_precision(precision, device))
