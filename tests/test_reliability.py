"""Four classes of reliability defect, each tested at its rule and at the commands that meet it:

1. a file is removed only when this program's own mark says it made it (temporary files);
2. a write that fails in a run directory or --out is one line naming the file and the fix;
3. an image larger than data.MAX_IMAGE_PIXELS is one line naming the file and the limit, at every entry point;
4. results name no absolute path of the machine that made them.

Tiny sizes throughout: test_pipeline's two-class 8x8 image folder and a label-only run of 2 steps.
"""
import errno
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import boundary
import sample
import train
from plumbing import classifier, data, metrics_command, rundir
from plumbing.errors import WriteError

from test_pipeline import fails, folder, snapshot  # noqa: F401  (folder: two classes of 8x8 grey images)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(folder, out, *extra):
    return ["--data", str(folder), "--out", str(out), "--batch-size", "8", "--steps", "2", "--save-every", "2",
            "--sample-every", "0", "--warmup", "1", "--cond", "label", *extra]


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    """A label-only run of 2 steps (copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train.main(tiny(folder, out))
    return out


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """A 15000 x 15000 black PNG: 218 KB on disk, 225 million pixels decoded."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("L", (15000, 15000)).save(path)
    return path


def dead_pid() -> int:
    """The id of a process that has ended (what a killed train.py's temporary file names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------
# 1. Only files this program marked as its own are removed
# ---------------------------------------------------------------------------
USERS_LOOK_ALIKES = [".log.csv.mybackup.tmp", ".config.json.20241201.tmp", "grids/.step0000001.png.old_copy.tmp",
                     "config.json.tmp", "log.csv.tmp", "loss.png.tmp", "checkpoint.pt.tmp", "grids/step0000002.png.tmp",
                     ".checkpoint.pt.abcd1234.tmp", ".loss.png.123.abcd1234.tmp", "samples/.meta.json.x1y2z3w4.tmp",
                     ".log.csv.123.abcd1234.fpdiff-tmp.mine", "mine.fpdiff-tmp"]


def put(root, names, content=b"the user's"):
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(content)


@pytest.mark.parametrize("holds_run", [False, True])
def test_only_temporary_files_of_ended_processes_of_ours_are_removed(tmp_path, holds_run):
    out = tmp_path / "out"
    put(out, USERS_LOOK_ALIKES)
    if holds_run:
        (out / "config.json").write_text(json.dumps(dict(format=rundir.CONFIG_FORMAT)))
    pid = dead_pid()
    ours = [f".checkpoint.pt.{pid}.k3j_9x0a.fpdiff-tmp", f"grids/.step0000004.png.{pid}.aaaaaaaa.fpdiff-tmp",
            f"samples/.samples.npz.{pid}.0123abcd.fpdiff-tmp"]
    put(out, ours, b"half a file")
    live = f".guide.pt.{os.getpid()}.zzzzzzzz.fpdiff-tmp"  # a sample.py writing guide.pt into the run right now
    put(out, [live], b"being written")
    rundir.remove_stale_tmp(str(out))
    for name in USERS_LOOK_ALIKES + [live]:
        assert (out / name).exists(), name
    for name in ours:
        assert not (out / name).exists(), name


def test_temporary_names_carry_the_mark_and_process(tmp_path):
    made = data.temporary_beside(str(tmp_path / "config.json"))
    match = data.TEMPORARY_NAME.fullmatch(os.path.basename(made))
    assert match and match["name"] == "config.json" and int(match["pid"]) == os.getpid()
    assert rundir.stray_of(os.path.basename(made)) == "config.json"
    assert [rundir.stray_of(os.path.basename(name)) for name in USERS_LOOK_ALIKES] == [""] * len(USERS_LOOK_ALIKES)


def test_train_keeps_the_users_look_alikes_on_a_new_run_and_on_resume(folder, tmp_path):
    """The repro: files named like old temporary files, in a folder that never held a run, then on --resume."""
    out = tmp_path / "X"
    first = [".log.csv.mybackup.tmp", ".config.json.20241201.tmp", "grids/.step0000001.png.old_copy.tmp"]
    put(out, first)
    train.main(tiny(folder, out))
    assert (out / "checkpoint.pt").exists()
    later = ["config.json.tmp", "log.csv.tmp", "loss.png.tmp", "checkpoint.pt.tmp"]
    put(out, later)
    stray = f".checkpoint.pt.{dead_pid()}.abcdefgh.fpdiff-tmp"  # what a kill during torch.save leaves
    put(out, [stray], b"half a checkpoint")
    train.main(["--out", str(out), "--resume", "--steps", "3"])
    for name in first + later:
        assert (out / name).read_bytes() == b"the user's", name
    assert not (out / stray).exists()


# ---------------------------------------------------------------------------
# 2. A failed write in a run directory or --out: one line naming the file and the fix, nothing of the user's lost
# ---------------------------------------------------------------------------
def refuse_writes(monkeypatch, names, code=errno.EACCES):
    """Writing a file named in `names` fails as a read-only folder (EACCES: no file can be made there) or a full
    disk (ENOSPC: torch.save's bytes do not fit) makes it fail."""
    if code == errno.ENOSPC:
        real_save = torch.save

        def save(obj, f, **kwargs):
            if any(os.path.basename(getattr(f, "name", "")).startswith(f".{name}.") for name in names):
                f.write(b"half")
                raise OSError(code, os.strerror(code))
            return real_save(obj, f, **kwargs)
        monkeypatch.setattr(torch, "save", save)
        return
    real = data.temporary_beside

    def temporary_beside(path):
        if os.path.basename(path) in names:
            raise PermissionError(code, os.strerror(code), os.path.dirname(path))
        return real(path)
    monkeypatch.setattr(data, "temporary_beside", temporary_beside)


def quick_classifiers(monkeypatch):
    """Every small classifier trained in 1 step (the tests need its file, not its skill)."""
    real = classifier.train_classifier
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: real(*a, **{**k, "steps": 1, "batch_size": 4}))


def test_write_atomically_turns_every_failed_write_into_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("the user's")
    with pytest.raises(WriteError, match=r"cannot write \S+/file/x.json: .*a part of \S+ is a file"):
        data.write_atomically(str(tmp_path / "file" / "x.json"), lambda f: f.write(b"{}"))
    (tmp_path / "kept.pt").write_bytes(b"before")
    for error, match in [(OSError(errno.ENOSPC, "No space left on device"), "No space left on device; the file "
                          "there before is as it was; free some space"),
                         (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                          "the write failed .*unexpected pos")]:
        def write(f, error=error):
            f.write(b"half")
            raise error
        with pytest.raises(WriteError, match=rf"cannot write \S+kept.pt: {match}"):
            data.write_atomically(str(tmp_path / "kept.pt"), write)
        assert (tmp_path / "kept.pt").read_bytes() == b"before"
    assert sorted(os.listdir(tmp_path)) == ["file", "kept.pt"]  # no temporary file left
    with pytest.raises(RuntimeError, match="a bug"):  # not a write: shown as what it is
        data.write_atomically(str(tmp_path / "kept.pt"), lambda f: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_a_failed_checkpoint_write_is_one_line(run, tmp_path, monkeypatch):
    out = tmp_path / "r"
    shutil.copytree(run, out)
    before = (out / "checkpoint.pt").read_bytes()

    def save(obj, f, **kwargs):  # torch's own report of a stream it could not write, without an OSError
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", save)
    fails(train, ["--out", str(out), "--resume", "--steps", "4"],
          r"cannot write \S+checkpoint.pt: the write failed \(.*unexpected pos.*\); the file there before is as it was")
    assert (out / "checkpoint.pt").read_bytes() == before and not [f for f in os.listdir(out) if "tmp" in f]


@pytest.mark.parametrize("code, why", [(errno.EACCES, r"Permission denied; make \S+ writable"),
                                       (errno.ENOSPC, r"No space left on device; free some space")])
def test_sample_eval_cannot_write_classifier_pt_one_line(run, tmp_path, monkeypatch, code, why):
    run_copy, out = tmp_path / "r", tmp_path / "o"
    shutil.copytree(run, run_copy)
    put(out, ["mine.txt"])
    before, run_before = snapshot(out), snapshot(run_copy)
    quick_classifiers(monkeypatch)
    refuse_writes(monkeypatch, {"classifier.pt"}, code)
    fails(sample, [str(run_copy), "--out", str(out), "--sampling-steps", "1", "--grid-per-class", "1",
                   "--eval", "--n", "2"], rf"cannot write \S+/r/classifier.pt: {why}")
    assert snapshot(out) == before and snapshot(run_copy) == run_before


@pytest.mark.parametrize("code, why", [(errno.EACCES, r"Permission denied; make \S+ writable"),
                                       (errno.ENOSPC, r"No space left on device; free some space")])
def test_sample_boundary_cannot_write_guide_pt_one_line(run, tmp_path, monkeypatch, code, why):
    run_copy, out = tmp_path / "r", tmp_path / "o"
    shutil.copytree(run, run_copy)
    run_before = snapshot(run_copy)
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 1)
    refuse_writes(monkeypatch, {boundary.GUIDE_FILE}, code)
    fails(sample, [str(run_copy), "--out", str(out), "--boundary", "0", "1", "--boundary-n", "1", "--sampling-steps", "1"],
          rf"cannot write \S+/r/{boundary.GUIDE_FILE}: {why}")
    assert snapshot(run_copy) == run_before and not out.exists()


def test_a_read_only_run_is_refused_before_any_work(run, tmp_path, monkeypatch):
    """(As root, chmod stops nothing: the check's question, os.access, answers as for another user.)"""
    real = os.access
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False if str(path) == str(run) else real(path, mode))
    monkeypatch.setattr(sample, "class_grid", lambda *a: pytest.fail("work began"))
    fails(sample, [str(run), "--out", str(tmp_path / "o"), "--eval"],
          r"cannot write \S+classifier.pt: \S+ is read-only for you, and --eval keeps its classifier.pt there")
    fails(sample, [str(run), "--out", str(tmp_path / "o"), "--boundary", "0", "1"],
          rf"cannot write \S+{boundary.GUIDE_FILE}: .* --boundary keeps its {boundary.GUIDE_FILE} there")


def test_sample_out_that_cannot_be_written_is_one_line_and_keeps_the_earlier_files(run, tmp_path, monkeypatch):
    out = tmp_path / "o"
    sample.main([str(run), "--out", str(out), "--sampling-steps", "1", "--grid-per-class", "1"])
    put(out, ["mine.txt"])
    before = snapshot(out)

    def write_bytes(path, content):
        raise OSError(errno.EIO, "Input/output error", path)
    monkeypatch.setattr(rundir, "write_bytes", write_bytes)
    fails(sample, [str(run), "--out", str(out), "--sampling-steps", "1", "--grid-per-class", "1", "--seed", "1"],
          r"--out \S+ could not be written \(0 of 3 files done; the files in it are as they were\): cannot write "
          r"\S+class_grid.png: Input/output error")
    assert snapshot(out) == before


def test_metrics_cannot_write_its_classifier_one_line(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), np.arange(40) % 2
    np.savez(tmp_path / "real.npz", images=images, labels=labels)
    (tmp_path / "file").write_text("the user's")
    quick_classifiers(monkeypatch)
    assert metrics_command.main([str(tmp_path / "real.npz"), str(tmp_path / "real.npz"), "--features", "classifier",
                         "--classifier", str(tmp_path / "file" / "c.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"metrics.py: error: cannot write \S+/file/c.pt: .*a part of \S+ is a file.*", err[-1]), err


# ---------------------------------------------------------------------------
# 3. Images beyond data.MAX_IMAGE_PIXELS: one line naming the file and the limit, wherever an image is read
# ---------------------------------------------------------------------------
LIMIT = r"more than the 16,777,216 \(4096 x 4096\) read here"


@pytest.mark.parametrize("side", [5000, 10000])  # above the limit; above PIL's warning (89 million pixels)
def test_open_image_refuses_a_large_image_in_one_line(tmp_path, side, recwarn):
    path = tmp_path / f"{side}.png"
    Image.new("L", (side, side)).save(path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: the image is .*pixels, {LIMIT}"):
        data.open_image(str(path))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.new("L", (4096, 4096)).save(path)  # at the limit: read
    assert data.open_image(str(path)).size == (4096, 4096)


def test_sample_reference_images_refuses_a_huge_image(run, tmp_path, huge_png):
    fails(sample, [str(run), "--out", str(tmp_path / "o"), "--reference-images", str(huge_png),
                   "--reference-labels", "0"], rf"{re.escape(str(huge_png))}: the image is 225,000,000 pixels, {LIMIT}")
    assert not (tmp_path / "o").exists()


def test_metrics_folder_refuses_a_huge_image(folder, tmp_path, huge_png, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(Path(folder) / "top" / "0.png", flat / "a.png")
    shutil.copy(huge_png, flat / "b.png")
    assert metrics_command.main([str(flat), str(flat), "--features", "classifier"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(rf"b.png: the image is 225,000,000 pixels, {LIMIT}", err[0]), err


def test_train_data_folder_whose_first_image_is_huge_is_one_line_too(folder, tmp_path, huge_png):
    """The memory check reads the first image's header for the data's size: a bomb there is left to the loader."""
    data_folder = tmp_path / "data"
    shutil.copytree(folder, data_folder)
    shutil.copy(huge_png, data_folder / "bottom" / "0.png")  # the first file train.py's memory check opens
    fails(train, tiny(data_folder, tmp_path / "out"), rf"bottom/0.png: the image is 225,000,000 pixels, {LIMIT}")
    assert not (tmp_path / "out").exists()


def test_train_data_folder_refuses_a_huge_image(folder, tmp_path, huge_png):
    data_folder = tmp_path / "data"
    shutil.copytree(folder, data_folder)
    shutil.copy(huge_png, data_folder / "top" / "huge.png")
    fails(train, tiny(data_folder, tmp_path / "out"), rf"top/huge.png: the image is 225,000,000 pixels, {LIMIT}")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# 4. No absolute path of the machine in what sample.py records, nor in the committed results
# ---------------------------------------------------------------------------
ABSOLUTE = re.compile(r"""(^|["'\s(=:,])(/(tmp|home|work|root|Users|mnt|scratch|data|var|opt|srv)/|[A-Za-z]:\\)""")


def test_meta_json_records_no_absolute_path(run, folder, tmp_path, monkeypatch):
    out = tmp_path / "o"
    reference = str(Path(folder) / "top" / "0.png")
    monkeypatch.chdir(tmp_path)
    sample.main([str(run.absolute()), "--out", str(out.absolute()), "--sampling-steps", "1", "--grid-per-class", "1",
                 "--reference-images", reference, "--reference-labels", "1", "--per-reference", "1"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["out"] == "o" and meta["run"] == os.path.relpath(run, tmp_path)
    assert meta["reference_images"] == [os.path.relpath(reference, tmp_path)]
    assert not any(os.path.isabs(v) for v in (meta["run"], meta["out"], *meta["reference_images"]))
    typed = os.path.relpath(run, tmp_path) + "/"
    sample.main([typed, "--out", "./o", "--sampling-steps", "1", "--grid-per-class", "1"])  # relative: as typed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["run"] == typed and meta["out"] == "./o"


def test_no_committed_result_names_an_absolute_path():
    found = []
    for directory, _, files in os.walk(os.path.join(REPO, "results")):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                content = f.read()
            try:
                text = content.decode()
            except UnicodeDecodeError:
                continue  # a PNG or an npz: no text
            found += [f"{os.path.relpath(path, REPO)}:{i + 1}: {line.strip()}"
                      for i, line in enumerate(text.splitlines()) if ABSOLUTE.search(line)]
    assert not found, found


def test_a_lock_file_train_did_not_write_is_never_removed(folder, tmp_path):
    """The lock is the same rule: only an empty `.lock` (train.py's, its writer killed) or one naming a process and
    host is train.py's; anything else there is the user's, refused in one line and kept."""
    from plumbing import lock

    out = tmp_path / "X"
    put(out, [lock.LOCK_FILE], b"my notes")
    os.utime(out / lock.LOCK_FILE, (0, 0))  # old: no train.py is writing it now
    fails(train, tiny(folder, out), r"holds \S+\.lock, which train.py did not write")
    assert (out / lock.LOCK_FILE).read_bytes() == b"my notes"
    (out / lock.LOCK_FILE).write_bytes(b"")
    os.utime(out / lock.LOCK_FILE, (0, 0))  # an empty lock of a train.py killed before it wrote its id
    train.main(tiny(folder, out))
    assert not (out / lock.LOCK_FILE).exists() and (out / "checkpoint.pt").exists()
