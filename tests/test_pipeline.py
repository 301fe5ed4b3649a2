"""train.py and sample.py end to end, on a tiny two-class image folder (8x8 grey)."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import conditions
import ddpm
from plumbing import rundir
import boundary
import generation
from plumbing import commands, lock
import sample
import train
from plumbing import train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class 'top' is bright in the upper half, class 'bottom' in the lower half; 20 images each."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for k, name in enumerate(["bottom", "top"]):
        os.makedirs(root / name)
        for i in range(20):
            image = rng.integers(0, 60, (8, 8), dtype=np.uint8)
            image[(4 if k == 0 else 0):(8 if k == 0 else 4)] += 180
            Image.fromarray(image).save(root / name / f"{i}.png")
    return str(root)


def tiny(folder, out, *extra):
    timm = "--backbone" in extra and extra[extra.index("--backbone") + 1] not in ("pixels", "classifier")
    root = ["--root", str(os.path.dirname(out))] if timm else []  # (its feature cache; a --root unused is refused)
    return ["--data", str(folder), "--out", str(out), "--batch-size", "8", "--steps", "4", "--save-every", "2",
            "--sample-every", "0", "--warmup", "2", *root, *extra]


def state(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def fails(script, argv, match):
    """Run a script's main in-process; it must stop with ONE line matching `match` (a SystemExit, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    message = str(stop.value.code)
    assert "\n" not in message and "Traceback" not in message, message
    assert re.search(match, message), message
    return message


def snapshot(path):
    """Every file under path with its bytes: to prove that a failed command changed nothing."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def advice(message):
    """The command a message advises, as train.main's argv."""
    return message.split("python train.py ")[1].split()


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    """A label+pos run, 6 steps: shared by the sampling tests (copy it before changing it). Of the small U-Net
    (train.py's default until 2026-12-07): the boundary tests' toy guides read its tiny images and were set on
    them (the default, compact, trains in every other run of the suite)."""
    out = tmp_path_factory.mktemp("runs") / "lu"
    train.main(tiny(folder, out, "--cond", "label+pos", "--steps", "6", "--size", "small"))
    return out


@pytest.fixture(scope="module")
def label_run(folder, tmp_path_factory):
    """A label-only run trained to step 2 (no UMAP): copied by the tests that resume, break or replace a run."""
    out = tmp_path_factory.mktemp("runs") / "l2"
    train.main(tiny(folder, out, "--cond", "label", "--steps", "2"))
    return out


def copy_run(run, tmp_path, name="copy"):
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


# ---------------------------------------------------------------------------
# Training and sampling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cond", ["label", "pos", "label+pos", "none"])
def test_every_condition_writes_a_run_directory(folder, tmp_path, cond):
    out = tmp_path / cond
    train.main(tiny(folder, out, "--cond", cond))
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["cond"] == cond and config["data"]["class_names"] == ["bottom", "top"]
    assert sorted(config["unet"]["conditions"]) == sorted(train_command.cond_names(cond))
    assert state(out)["step"] == 4 and state(out)["run_id"] == config["run_id"]
    assert (out / "grids" / "step0000004.png").exists()
    assert (out / "space.npz").exists() == ("pos" in cond) and config["space_file"] == ("space.npz" if "pos" in cond else None)
    assert not (out / lock.LOCK_FILE).exists()  # the lock goes with the process
    run = rundir.load_run(str(out))
    assert (run.space is not None) == ("pos" in cond) and run.model.image_size == 8
    assert rundir.build_unet(config).conditions == run.model.conditions  # rebuilt from the stored arguments alone


def test_positions_from_a_classifiers_features(folder, tmp_path):
    """--backbone classifier --weights FILE: a semantic space, fitted at training and used again at sampling."""
    from plumbing import classifier
    from plumbing.data import load_dataset

    images, labels, _ = load_dataset(folder)
    weights = str(tmp_path / "features.pt")
    classifier.save_classifier(classifier.train_classifier(images, labels, steps=5, batch_size=8), weights)
    out = tmp_path / "run"
    train.main(tiny(folder, out, "--cond", "label+pos", "--backbone", "classifier", "--weights", weights))
    run = rundir.load_run(str(out))
    assert run.space.features.shape == (40, 128)  # the classifier's penultimate layer, not the 64 pixels
    cond = conditions.request_conditions(run, labels[:3], images[:3])
    assert cond["pos"].shape == (3, 20) and np.isfinite(cond["pos"]).all()
    os.remove(weights)  # training references are at their fitted positions: no backbone needed for them
    sample.main([str(out), "--out", str(tmp_path / "s"), "--sampling-steps", "1", "--grid-per-class", "1"])
    new = os.path.join(folder, "top", "0.png")  # a reference file is placed through the backbone's features
    fails(sample, [str(out), "--out", str(tmp_path / "s"), "--reference-images", new, "--reference-labels", "1"],
          r"--weights \S+features.pt: file not found")


def test_a_training_image_as_reference_gets_its_fitted_position(run_dir, monkeypatch):
    """conditions.image_conditions: the position a training image was trained with, its features not re-extracted;
    a new image is placed by UMAP's transform."""
    run = rundir.load_run(str(run_dir))
    config = json.loads((run_dir / "config.json").read_text())
    training = conditions.image_conditions(["label", "pos"], run.images, run.labels, run.space, config["settings"],
                                           train_index=np.arange(len(run.images)))
    assert training["pos"].shape == (40, 20) and np.allclose(training["pos"].mean(0), 0, atol=1e-4)
    new = conditions.request_conditions(run, run.labels[:3], run.images[:3])["pos"]  # the same pixels as new images
    monkeypatch.setattr(conditions, "extract_features", lambda *a, **k: pytest.fail("features extracted again"))
    refs = np.array([5, 0, 39])
    known = conditions.request_conditions(run, run.labels[refs], run.images[refs], refs)
    np.testing.assert_array_equal(known["pos"], training["pos"][refs])  # exactly the training positions
    assert known["label"].tolist() == run.labels[refs].tolist()
    assert np.abs(new - training["pos"][:3]).max() > 0  # transform only approximates a training point's position
    assert np.linalg.norm(new - training["pos"][:3], axis=1).max() < 3  # ... near it (positions spread ~6 units)


def test_condition_sizes_and_the_shape_of_a_float_condition():
    sizes = conditions.condition_sizes({"label": np.array([0, 3, 1]), "pos": np.zeros((3, 20), np.float32)})
    assert sizes == {"label": 4, "pos": 20}
    with pytest.raises(ValueError, match=r"'brightness' is a float array of shape \(3,\).*value\[:, None\]"):
        conditions.condition_sizes({"brightness": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="has no value: compute it in conditions.image_conditions"):
        conditions.image_conditions(["label", "colour"], np.zeros((2, 8, 8, 1), np.uint8), [0, 1], None, {})


def test_sample_writes_grids_references_and_npz(run_dir, tmp_path):
    out = tmp_path / "s"
    sample.main([str(run_dir), "--out", str(out), "--sampling-steps", "5", "--grid-per-class", "3", "--references",
                 "2", "--per-reference", "2", "--between", "0", "1", "--points", "3"])
    for name in ["class_grid.png", "references.png", "between.png", "meta.json"]:
        assert (out / name).exists()
    with np.load(out / "samples.npz") as s:
        n = 2 * 3 + 2 * 2 * 2 + 2 * 3  # class grid + references + between (label A and label B rows)
        assert s["images"].shape == (n, 8, 8, 1) and s["images"].dtype == np.uint8
        assert s["labels"].dtype == np.int64 and s["labels"].tolist()[:6] == [0, 0, 0, 1, 1, 1]
        assert s["cond_label"].tolist() == s["labels"].tolist()
        assert s["cond_pos"].shape == (n, 20) and s["cond_pos"].dtype == np.float32
        assert (s["reference"][:6] >= 0).all() and (s["reference"][-6:] == -1).all()
        walk = s["cond_pos"][-6:-3]  # the label-A row walks from reference A to reference B
        assert np.allclose(walk[1], (walk[0] + walk[2]) / 2, atol=1e-5)
    # references: row = reference image then its samples -> 4 rows of 3 tiles (+ 2 px gaps)
    assert Image.open(out / "references.png").size == (3 * 10 + 2, 4 * 10 + 2)
    # a later call that makes fewer figures removes the earlier ones (they would not match its samples.npz);
    # its meta.json lists the files it wrote
    sample.main([str(run_dir), "--out", str(out), "--sampling-steps", "2", "--grid-per-class", "1"])
    assert not (out / "between.png").exists() and not (out / "references.png").exists()
    assert json.loads((out / "meta.json").read_text())["files"] == ["class_grid.png", "meta.json", "samples.npz"]


def test_walks_change_only_their_conditions_and_say_which_walk_point_and_pair_each_image_is(run_dir, tmp_path):
    run = rundir.load_run(str(run_dir))
    sampler = dict(name="ddim", steps=3, eta=1.0, guidance={"label": 1.0, "pos": 3.0})
    part = boundary.walks(run, 0, 1, points=3, sampler=sampler, seed=0, count=2, label="fixed", path="line")
    assert part["images"].shape == (2 * 2 * 3, 8, 8, 1)  # 2 walks x (label A row, label B row) x 3 points
    assert part["walk"].tolist() == [0] * 6 + [1] * 6 and part["s"].tolist()[:3] == [0.0, 0.5, 1.0]
    assert part["labels"].tolist()[:6] == [0, 0, 0, 1, 1, 1] and (run.labels[part["endpoints"][:, 0]] == 0).all()
    assert (run.labels[part["endpoints"][:, 1]] == 1).all()
    # one walk's points share every noise: the same conditions at every point give the same image
    same = {name: np.repeat(value[:1], 3, axis=0) for name, value in part["cond"].items()}
    images = generation.generate(run, 3, same, sampler, seed=5, noise_index=np.zeros(3, int))
    assert (images == images[0]).all()
    # soft labels mix the one-hot vectors; "none" drops the label; "features" places the path by UMAP's transform
    soft = boundary.walks(run, 0, 1, 3, sampler, 0, label="soft", path="features")
    assert soft["cond"]["label"].shape == (3, 2) and np.allclose(soft["cond"]["label"][1], [0.5, 0.5])
    pos, fitted = soft["cond"]["pos"], run.space.standardize(run.space.positions)
    assert np.isfinite(pos).all() and (pos.min(0) >= fitted.min(0) - 1).all() and (pos.max(0) <= fitted.max(0) + 1).all()
    assert "label" not in boundary.walks(run, 0, 1, 3, sampler, 0, label="none")["cond"]
    # on the command line, samples.npz keeps the walk fields
    out = tmp_path / "w"
    sample.main([str(run_dir), "--out", str(out), "--sampling-steps", "2", "--grid-per-class", "1", "--between", "0",
                 "1", "--points", "3", "--walks", "2", "--walk-label", "soft", "--walk-path", "features",
                 "--guidance", "label=1,pos=2"])
    with np.load(out / "samples.npz") as s:
        assert s["walk"].tolist() == [-1, -1] + [0] * 3 + [1] * 3 and np.isnan(s["s"][:2]).all()
        assert s["endpoints"].shape == (8, 2) and s["cond_label"].shape == (8, 2)


def test_a_fixed_label_walk_of_a_model_without_a_label_is_one_row_per_walk(run_dir):
    """With no label to fix, rows "label A" and "label B" would be the same images twice: one row per walk."""
    run = rundir.load_run(str(run_dir))
    run.config["unet"]["conditions"] = {"pos": run.config["unet"]["conditions"]["pos"]}  # as a --cond pos run
    sampler = dict(name="ddim", steps=2, eta=1.0, guidance={"pos": 3.0})
    part = boundary.walks(run, 0, 1, points=3, sampler=sampler, seed=0, count=2, label="fixed", path="line")
    assert part["images"].shape == (2 * 3, 8, 8, 1) and part["walk"].tolist() == [0] * 3 + [1] * 3
    assert "label" not in part["cond"] and part["labels"].tolist() == [0] * 6


def test_a_walk_without_its_label_guides_the_position_by_default(run_dir, tmp_path):
    # the default label=3 has no label to guide in a --walk-label none walk: it guides the position at 3 instead
    common = ["--sampling-steps", "2", "--grid-per-class", "1", "--between", "0", "1", "--points", "3",
              "--walk-label", "none"]
    sample.main([str(run_dir), "--out", str(tmp_path / "default"), *common])
    sample.main([str(run_dir), "--out", str(tmp_path / "three"), *common, "--guidance", "3"])
    meta = json.loads((tmp_path / "default" / "meta.json").read_text())
    assert meta["guidance"] == {"label": 3.0} and meta["walk_guidance"] == 3.0
    with np.load(tmp_path / "default" / "samples.npz") as a, np.load(tmp_path / "three" / "samples.npz") as b:
        walk = a["walk"] >= 0
        assert walk.sum() == 3 and np.array_equal(a["images"][walk], b["images"][walk])


def test_a_walk_on_the_features_needs_a_feature_space(label_run, tmp_path):
    fails(sample, [str(label_run), "--out", str(tmp_path / "w"), "--between", "0", "1", "--walk-path", "features"],
          r"--walk-path features .* use --walk-path line")
    assert not (tmp_path / "w").exists()  # stopped before any work or write


def test_per_condition_guidance_names_are_checked_against_the_run(run_dir, tmp_path):
    fails(sample, [str(run_dir), "--out", str(tmp_path / "g"), "--guidance", "label=1,colour=3"],
          r"--guidance names colour")
    fails(sample, [str(run_dir), "--out", str(tmp_path / "g"), "--sampler", "dpm++2m", "--eta", "0.5"], r"--eta")


def test_sample_with_own_reference_files_and_eval(run_dir, tmp_path, folder, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no Inception weights to be had
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "e"
    files = [os.path.join(folder, c, f"{i}.png") for c in ("top", "bottom") for i in (0, 1)]
    result = sample.main([str(run_dir), "--out", str(out), "--sampling-steps", "3", "--grid-per-class", "2",
                          "--reference-images", *files, "--reference-labels", "1", "1", "0", "0", "--per-reference", "2",
                          "--eval", "--n", "8"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and np.isfinite(metrics["classifier"]["fid"])
    assert 0.0 <= metrics["classifier"]["conditioning_accuracy"] <= 1.0
    assert 0.0 <= metrics["controllability"]["own_reference_rate"] <= 1.0
    assert result["classifier"]["fid"] == metrics["classifier"]["fid"]
    assert metrics["inception"].startswith("skipped:") and "weights" in metrics["inception"]  # never random weights
    assert "--inception-weights PATH" in metrics["inception"] and "--features" not in metrics["inception"]  # (metrics.py's)
    with np.load(out / "samples.npz") as s:
        assert (s["reference"][-8:] == -1).all() and s["labels"][-8:].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    with np.load(out / "eval_samples.npz") as s:  # the evaluated images are kept, to be scored by anyone
        assert s["images"].shape == (8, 8, 8, 1) and s["labels"].tolist() == [0, 1] * 4
        assert (s["reference"] >= 0).all() and s["cond_pos"].shape == (8, 20)


def test_a_reference_image_converted_or_resized_for_the_run_is_said_once(run_dir, folder, tmp_path, capsys):
    from plumbing import commands
    run = rundir.load_run(str(run_dir))
    colour = tmp_path / "colour.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(colour)
    grey = os.path.join(folder, "top", "0.png")  # 8x8 grey, as the run's images: nothing to say
    images = commands.load_reference_files(run, [str(colour), grey])
    assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8
    assert capsys.readouterr().err.splitlines() == [
        f"note: --reference-images {colour}: converted from RGB to grey, resized from 30x20 to 8x8, as the run's "
        "images are"]


def test_eval_works_for_a_label_only_run_and_says_each_stage_on_stderr(label_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = copy_run(label_run, tmp_path)
    sample.main([str(out), "--out", str(tmp_path / "o"), "--sampling-steps", "2", "--grid-per-class", "1",
                 "--references", "1", "--per-reference", "1", "--eval", "--n", "4"])
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "controllability" not in metrics and 0 <= metrics["classifier"]["conditioning_accuracy"] <= 1
    said = capsys.readouterr()
    assert json.loads(said.out) == {k: v for k, v in metrics.items() if k != "settings"}  # stdout: the metrics only
    lines = said.err.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["sampling the class grid", "sampling the reference grid",
                                                           "--eval", "--eval"], said.err
    assert "the training images" in lines[3] and "not held out" in lines[3]  # (this folder has no test/)
    assert lines[4:] == ["wrote class_grid.png, eval_samples.npz, meta.json, metrics.json, references.png, samples.npz "
                         f"in {tmp_path / 'o'}"]


# ---------------------------------------------------------------------------
# Resume, overwrite, belonging
# ---------------------------------------------------------------------------
def interrupted_at_step_5(monkeypatch, argv: list[str], match: str) -> str:
    """train.main(argv) stopped by Ctrl-C during step 5 (after a step-3 checkpoint): its one-line message."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def ctrl_c_on_fifth(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", ctrl_c_on_fifth)
    message = fails(train, argv, match)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    return message


def test_resume_after_an_interruption_gives_identical_weights(folder, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--cond", "label+pos", "--steps", "6", "--save-every", "3", "--dropout", "0.1"]
    train.main(tiny(folder, straight, *args))

    message = interrupted_at_step_5(monkeypatch, tiny(folder, broken, *args),
                                    r"interrupted at step 4; \S+checkpoint.pt \(step 3\) is intact")
    assert state(broken)["step"] == 3 and not (broken / lock.LOCK_FILE).exists()
    assert advice(message) == ["--out", str(broken), "--resume"]  # every setting comes from the run's config.json
    train.main(advice(message))
    a, b = state(straight), state(broken)
    assert b["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])


def test_a_resume_in_a_fresh_process_trains_as_the_process_that_fitted_the_umap(folder, tmp_path):
    """numba's OpenMP pool, started by the UMAP fit, shares libgomp with torch and set torch's threads to
    NUMBA_NUM_THREADS; a resume loads space.npz and never starts it, so it trained with other numerics.
    With 1 torch thread and 2 numba threads: one process fits, trains 2 steps and goes on to 4; a copy of
    its step-2 run is resumed to 4 in a fresh process. (One fit only: numba compiles UMAP's kernels anew in
    every process.)"""
    fitted, fresh = tmp_path / "fitted", tmp_path / "fresh"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    script = (f"import shutil, train; train.main({tiny(folder, fitted, '--cond', 'label+pos', '--steps', '2')!r}); "
              f"shutil.copytree({str(fitted)!r}, {str(fresh)!r}); "
              f"train.main(['--out', {str(fitted)!r}, '--resume', '--steps', '4'])")
    for argv in (["-c", script], ["train.py", "--out", str(fresh), "--resume", "--steps", "4"]):
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = state(fitted), state(fresh)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


def test_resume_can_extend_a_run_and_change_its_optimisation_but_not_what_defines_it(folder, label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    fails(train, tiny(folder, out, "--cond", "label"), "already holds a run; pass --resume")
    before = (out / "config.json").read_bytes()
    fails(train, tiny(folder, out, "--resume", "--cond", "pos"), "--cond label")
    fails(train, ["--out", str(out), "--resume", "--batch-size", "4"], "--batch-size 8")
    fails(train, ["--out", str(out), "--resume", "--data-seed", "1"], "--data-seed 0")
    assert (out / "config.json").read_bytes() == before  # a refused resume rewrites nothing
    train.main(["--out", str(out), "--resume", "--steps", "4", "--lr", "1e-3", "--grad-clip", "0.5"])
    config = json.loads((out / "config.json").read_text())
    assert state(out)["step"] == 4 and config["settings"]["lr"] == 1e-3
    assert config["changes"] == [{"step": 2, "steps": [2, 4], "lr": [0.002, 0.001], "grad_clip": [1.0, 0.5]}]
    fails(train, tiny(folder, tmp_path / "empty", "--resume"), "nothing to resume")


def test_a_run_of_the_previous_config_format_is_resumed_as_the_same_run(label_run, tmp_path):
    """Format 2 named the space file "space" and drew --per-class subsets with --seed: read as today's names."""
    out = copy_run(label_run, tmp_path)
    config = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in config.items() if k != "space_file"}
    old.update(format="fpdiff-run-2", space=None, settings={k: v for k, v in config["settings"].items() if k != "data_seed"})
    (out / "config.json").write_text(json.dumps(old))
    checkpoint = state(out)
    torch.save(dict(checkpoint, config=old), out / "checkpoint.pt")  # its own copy of the config: format 2 too
    train.main(["--out", str(out), "--resume", "--steps", "3"])
    new = json.loads((out / "config.json").read_text())
    assert new["format"] == rundir.CONFIG_FORMAT and new["run_id"] == config["run_id"] and state(out)["step"] == 3
    assert new["space_file"] is None and new["settings"]["data_seed"] == 0
    sample.main([str(out), "--out", str(tmp_path / "s"), "--sampling-steps", "2", "--grid-per-class", "1"])  # read again
    assert (tmp_path / "s" / "class_grid.png").is_file()


def test_a_run_whose_data_folder_moved_samples_after_its_path_is_edited(label_run, folder, tmp_path):
    """--data is the one defining setting config.json may change by hand: the images' digest still guards it."""
    out = copy_run(label_run, tmp_path)
    moved = tmp_path / "moved-data"
    shutil.copytree(folder, moved)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, settings=dict(config["settings"], data=str(moved)))))
    sample.main([str(out), "--out", str(tmp_path / "s"), "--sampling-steps", "2", "--grid-per-class", "1"])
    assert (tmp_path / "s" / "class_grid.png").is_file()


def test_overwrite_with_bad_input_leaves_the_old_run_intact(folder, label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    before = snapshot(out)
    fails(train, tiny("typo", out, "--overwrite"), "unknown dataset 'typo'")
    fails(train, tiny(folder, out, "--overwrite", "--cond", "label+colour"), "unknown condition 'colour'")
    fails(train, tiny(folder, out, "--overwrite", "--backbone", "resnet18", "--weights", "missing.pt"), "--weights")
    assert snapshot(out) == before


def test_overwrite_removes_only_the_projects_files(folder, label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    sample.main([str(out), "--out", str(out / "samples"), "--sampling-steps", "2", "--grid-per-class", "1"])
    (out / "notes.txt").write_text("mine")
    (out / "grids" / "annotated.png").write_text("mine")
    (out / "samples" / "selection.txt").write_text("mine")
    train.main(tiny(folder, out, "--overwrite", "--cond", "none", "--steps", "2"))
    assert state(out)["step"] == 2 and json.loads((out / "config.json").read_text())["settings"]["cond"] == "none"
    assert (out / "notes.txt").read_text() == "mine" and (out / "grids" / "annotated.png").read_text() == "mine"
    assert sorted(os.listdir(out / "samples")) == ["selection.txt"]
    # a folder whose config.json is the user's own is never taken for a run, nor overwritten
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.json").write_text('{"my": "settings"}')
    fails(train, tiny(folder, own, "--overwrite"), "not written by this version of train.py")
    assert (own / "config.json").read_text() == '{"my": "settings"}'


def test_overwrite_replaces_a_damaged_run_but_never_unproven_files(folder, label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[:len(data) // 2])  # truncated: a disk that filled, a copy cut short
    fails(train, ["--out", str(out), "--resume"], "corrupt or not a checkpoint.*--overwrite")
    train.main(tiny(folder, out, "--overwrite", "--cond", "label", "--steps", "2"))
    assert state(out)["step"] == 2
    # a damaged checkpoint and no config.json: nothing shows the folder is a run, so nothing is removed
    (out / "config.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"half a file")
    before = snapshot(out)
    fails(train, tiny(folder, out, "--overwrite"), "nothing intact shows it is a run of train.py")
    assert snapshot(out) == before


def test_parts_of_another_run_are_refused(folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(tiny(folder, a, "--cond", "label+pos", "--steps", "2"))
    train.main(tiny(folder, b, "--cond", "label+pos", "--steps", "2", "--seed", "1"))
    broken = tmp_path / "mixed"
    shutil.copytree(a, broken)
    shutil.copy(b / "space.npz", broken / "space.npz")
    fails(sample, [str(broken), "--out", str(tmp_path / "s")], "space.npz belongs to another run")
    fails(train, ["--out", str(broken), "--resume", "--steps", "4"], "space.npz belongs to another run")
    shutil.copy(a / "space.npz", broken / "space.npz")
    shutil.copy(b / "checkpoint.pt", broken / "checkpoint.pt")
    fails(sample, [str(broken), "--out", str(tmp_path / "s")], "checkpoint.pt belongs to another run")
    fails(train, ["--out", str(broken), "--resume", "--steps", "4"], "checkpoint.pt belongs to another run")
    assert not (tmp_path / "s").exists()


def test_resume_without_config_json_takes_the_checkpoints_copy(folder, label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    before = json.loads((out / "config.json").read_text())
    (out / "config.json").unlink()
    fails(train, tiny(folder, out), "already holds a run")
    train.main(["--out", str(out), "--resume", "--steps", "3"])
    after = json.loads((out / "config.json").read_text())
    assert state(out)["step"] == 3 and after["run_id"] == before["run_id"]


def test_a_run_interrupted_before_its_first_checkpoint_can_be_resumed(folder, tmp_path, monkeypatch):
    out = tmp_path / "k"
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    message = fails(train, tiny(folder, out, "--cond", "label"), "interrupted at step 0, before the first checkpoint")
    monkeypatch.undo()
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    fails(train, tiny(folder, out, "--cond", "label"), "pass --resume")
    train.main(advice(message))  # the suggested command works
    assert state(out)["step"] == 4


def test_resume_without_log_csv_says_the_loss_history_is_lost(label_run, tmp_path, capsys):
    out = copy_run(label_run, tmp_path)
    step = state(out)["step"]
    os.remove(out / "log.csv")
    train.main(["--out", str(out), "--resume", "--steps", str(step + 2)])
    assert (f"note: {out}/log.csv is missing: the loss of steps 1-{step} is lost, and log.csv and loss.png start at "
            f"step {step}") in capsys.readouterr().err
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,loss")


def test_ctrl_c_during_train_eval_says_the_run_is_saved_and_its_advice_scores_it(folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "e"
    real = sample.evaluate
    monkeypatch.setattr(sample, "evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    message = fails(train, tiny(folder, out, "--cond", "label", "--eval"),
                    rf"^train\.py: interrupted during --eval; the run is trained and saved in {out}, and {out}/samples "
                    rf"is as it was; to score it: python train.py --out {out} --resume --eval$")
    assert state(out)["step"] == 4 and not (out / "samples" / "metrics.json").exists()
    monkeypatch.setattr(sample, "evaluate", real)
    train.main(advice(message))  # the suggested command works
    assert json.loads((out / "samples" / "metrics.json").read_text())["n"] > 0 and state(out)["step"] == 4


# ---------------------------------------------------------------------------
# Faults: one writer, a non-finite loss, a full disk, a kill during a save
# ---------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    lock_file = out / lock.LOCK_FILE
    host = __import__("socket").gethostname()
    lock_file.write_text(json.dumps(dict(pid=os.getpid(), host=host, since="now")))  # a live process holds the run
    before = snapshot(out)
    fails(train, ["--out", str(out), "--resume", "--steps", "3"], rf"in use by train.py, process {os.getpid()} on")
    assert snapshot(out) == before  # neither the run nor the other process's lock was touched
    sample.main([str(out), "--out", str(tmp_path / "s"), "--sampling-steps", "1", "--grid-per-class", "1"])  # reading is fine
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(json.dumps(dict(pid=dead.pid, host=host, since="then")))  # killed: its lock stayed behind
    train.main(["--out", str(out), "--resume", "--steps", "3"])
    assert state(out)["step"] == 3 and not lock_file.exists()


def test_a_non_finite_loss_gives_advice_that_works(folder, tmp_path, monkeypatch):
    """--lr 1e6 blows the weights up within two steps: the advice may not resume from a checkpoint that holds them."""
    out = tmp_path / "lr"
    message = fails(train, tiny(folder, out, "--cond", "label", "--lr", "1e6", "--steps", "6"),
                    r"loss became non-finite at step \d")
    remove = re.search(r"Remove (\S+checkpoint.pt)", message)
    if remove:  # the newest checkpoint gives the loss itself: the advice says to remove it first
        os.remove(remove.group(1))
    train.main(advice(message))
    assert state(out)["step"] == 6 and rundir.finite_weights(state(out))

    real_losses = ddpm.Diffusion.losses
    calls = {"n": 0}

    def nan_on_fourth(self, *a, **k):  # a single bad batch at step 3, after the step-2 checkpoint
        calls["n"] += 1
        per_example, t = real_losses(self, *a, **k)
        return (per_example * float("nan") if calls["n"] == 4 else per_example), t

    monkeypatch.setattr(ddpm.Diffusion, "losses", nan_on_fourth)
    message = fails(train, tiny(folder, tmp_path / "nan", "--cond", "label"),
                    r"non-finite at step 3.*checkpoint.pt \(step 2\) is kept.*--resume --lr 0.0002")
    calls["n"] = 0
    early = fails(train, tiny(folder, tmp_path / "early", "--cond", "label", "--save-every", "5"),
                  "no checkpoint was written yet")
    monkeypatch.undo()
    train.main(advice(message))
    assert state(tmp_path / "nan")["step"] == 4 and json.loads((tmp_path / "nan" / "config.json").read_text())["settings"]["lr"] == 0.0002
    train.main(advice(early))  # from step 0: no checkpoint yet
    assert state(tmp_path / "early")["step"] == 4


def test_a_full_disk_during_a_save_is_one_line_and_the_last_checkpoint_stays(label_run, tmp_path, monkeypatch):
    out = copy_run(label_run, tmp_path)
    real_save = torch.save

    class Full:  # a file on a disk with 1,000 bytes left
        def __init__(self, f):
            self.f, self.left = f, 1000

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(torch, "save", lambda obj, f, **k: real_save(obj, Full(f), **k))
    fails(train, ["--out", str(out), "--resume", "--steps", "4"],
          r"the disk is full: \S+checkpoint.pt \(step 4\) could not be written; the checkpoint there before it is intact")
    monkeypatch.undo()
    assert state(out)["step"] == 2 and not [name for name in os.listdir(out) if name.endswith("tmp")]


def test_a_stray_tmp_of_a_killed_save_goes_when_the_next_run_starts(label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    stray = f".checkpoint.pt.{killed.pid}.a1b2c3d4.fpdiff-tmp"  # what kill -9 during torch.save leaves
    (out / stray).write_bytes(b"half a checkpoint")
    (out / "checkpoint.pt.tmp").write_bytes(b"the user's")  # named like one, but not made by train.py
    (out / "grids" / "mine.tmp").write_bytes(b"the user's")
    train.main(["--out", str(out), "--resume"])  # already trained to step 2: no save, yet the stray file goes
    assert not (out / stray).exists() and (out / "grids" / "mine.tmp").exists() and (out / "checkpoint.pt.tmp").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "checkpoint.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user makes


# ---------------------------------------------------------------------------
# Bad input: one line, before any work or write
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra,match", [
    (["--save-every", "0"], "--save-every must be a positive number"),
    (["--timesteps", "0"], "--timesteps must be a positive number"),
    (["--timesteps", "5"], "--timesteps 5 does not give a valid linear schedule"),
    (["--batch-size", "0"], "--batch-size must be a positive number"),
    (["--lr", "-1"], r"--lr must lie in \(0"),
    (["--p-uncond", "1"], r"--p-uncond must lie in \[0, 1\)"),
    (["--per-class", "30"], "--per-class"),
    (["--image-size", "0"], "--image-size must be a positive number"),
    (["--backbone", "classifier"], r"--backbone classifier needs --weights FILE.*python metrics.py"),
    (["--device", "foo"], "--device foo is not a device name"),
    (["--device", "cuda:99"], "--device cuda:99: this machine has no such device"),
])
def test_bad_settings_are_one_line_errors_before_any_write(folder, tmp_path, extra, match):
    fails(train, tiny(folder, tmp_path / "x", *extra), match)
    assert not (tmp_path / "x").exists()


def test_a_resume_on_a_device_this_machine_lacks_changes_nothing(label_run, tmp_path):
    out = copy_run(label_run, tmp_path)
    before = snapshot(out)
    fails(train, ["--out", str(out), "--resume", "--device", "cuda:99"], "--device cuda:99: this machine has no such")
    fails(train, ["--out", str(out), "--resume", "--device", "foo"], "--device foo is not a device name")
    assert snapshot(out) == before


def test_an_unusable_out_is_one_line_before_the_data_is_read(run_dir, tmp_path):
    """--data typo would be the error if --out were checked after the data load."""
    (tmp_path / "file").write_text("a file")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    cases = [(tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "lies under .*file, which is a file"),
             (tmp_path / "link", "symbolic link to .*gone, which does not exist")]
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    if not os.access(readonly, os.W_OK):  # (the superuser may write anywhere)
        cases.append((readonly / "run", "is read-only for you"))
    for out, match in cases:
        fails(train, tiny("typo", out), match)
        fails(sample, [str(run_dir), "--out", str(out)], match)
    assert sorted(os.listdir(tmp_path)) == ["file", "link", "readonly"] and os.listdir(readonly) == []


def test_bad_data_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    fails(train, tiny(empty, tmp_path / "x"), "empty class")
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "0.png").write_bytes(b"not a png")
    fails(train, tiny(broken, tmp_path / "x"), "0.png: unreadable image")
    mixed = tmp_path / "mixed"
    for k, size in enumerate((8, 9)):
        (mixed / str(k)).mkdir(parents=True)
        Image.new("L", (size, size)).save(mixed / str(k) / "0.png")
    fails(train, tiny(mixed, tmp_path / "x"), "--image-size")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,match", [
    (["--grid-per-class", "0"], "--grid-per-class must be a positive count"),
    (["--sampling-steps", "-3"], "--sampling-steps must be a positive count"),
    (["--steps", "5"], "--steps is now --sampling-steps"),
    (["--per-class", "5"], "--per-class is now --grid-per-class"),
    (["--references", "-1"], "--references must be 0"),
    (["--references", "50"], "more than the 20 training images"),
    (["--eta", "2"], r"--eta must lie in \[0, 1\]"),
    (["--guidance", "-1"], "--guidance .*>= 0"),
    (["--between", "0", "5"], "--between 0 5: class 5 does not exist"),
    (["--reference-images", "a.png", "--reference-labels", "7"], "--reference-labels 7: class 7 does not exist"),
    (["--sampling-steps", "5000"], "at most the run's 1000 timesteps"),
    (["--reference-images", "a.png"], "one --reference-labels value per"),
    (["--reference-images", "missing.png", "--reference-labels", "0"], "missing.png"),
    (["--device", "cuda:99"], "--device cuda:99: this machine has no such device"),
])
def test_sample_checks_every_argument_before_writing(run_dir, tmp_path, extra, match):
    out = tmp_path / "s"
    sample.main([str(run_dir), "--out", str(out), "--sampling-steps", "2", "--grid-per-class", "1"])
    before = snapshot(out)
    fails(sample, [str(run_dir), "--out", str(out), *extra], match)
    assert snapshot(out) == before  # a failed call leaves the earlier outputs as they were


def test_sample_never_replaces_files_it_did_not_write(run_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "meta.json").write_text("my notes")
    fails(sample, [str(run_dir), "--out", str(out)], "meta.json, which no earlier sample.py call there wrote")
    assert (out / "meta.json").read_text() == "my notes"


def test_corrupt_or_foreign_checkpoints_are_clear_errors(label_run, tmp_path):
    bad = copy_run(label_run, tmp_path, "bad")
    (bad / "checkpoint.pt").write_bytes(b"not a zip file at all")
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "corrupt or not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, bad / "checkpoint.pt")
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "not a train.py checkpoint")
    torch.save({"evil": Image.new("L", (1, 1))}, bad / "checkpoint.pt")  # an arbitrary pickled object
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "corrupt or not a checkpoint")  # weights_only refuses it
    fails(train, ["--out", str(bad), "--resume"], "corrupt or not a checkpoint")
    fails(sample, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "not found")


# ---------------------------------------------------------------------------
# The README's code, run as written
# ---------------------------------------------------------------------------
def readme_blocks(section: str, path: str = "README.md") -> list[str]:
    """The python code blocks of one section of the README (or of another page of the docs), in order."""
    text = open(os.path.join(REPO, path)).read()
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    return [block.split("\n", 1)[1] for block in body.split("```")[1::2] if block.startswith("python")]


def test_the_readmes_recipe_adds_a_condition_in_two_places(folder, tmp_path):
    """Apply the README's recipe (a brightness condition) to a copy of the code, then train and sample with it."""
    code = tmp_path / "fork"
    code.mkdir()
    for name in os.listdir(REPO):
        if name.endswith(".py"):
            shutil.copy(os.path.join(REPO, name), code / name)
    shutil.copytree(os.path.join(REPO, "plumbing"), code / "plumbing", ignore=shutil.ignore_patterns("__pycache__"))
    anchors = [("unet.py", "    raise ValueError(f\"unknown condition"),
               ("conditions.py", "    missing = [name for name in names if name not in cond]\n")]
    blocks = readme_blocks("Forking: add a new condition")
    assert len(blocks) == 2
    for (name, anchor), block in zip(anchors, blocks):
        source = (code / name).read_text()
        assert source.count(anchor) == 1, f"the recipe's place in {name} moved"
        (code / name).write_text(source.replace(anchor, block + anchor))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    out = tmp_path / "bright"
    for argv in (["train.py", *tiny(folder, out, "--cond", "label+brightness")],
                 ["sample.py", str(out), "--out", str(out / "s"), "--sampling-steps", "2", "--grid-per-class", "2"]):
        proc = subprocess.run([sys.executable, *argv], cwd=code, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["unet"]["conditions"] == {"label": 2, "brightness": 1}
    with np.load(out / "s" / "samples.npz") as s:
        assert s["cond_brightness"].shape == (4, 1) and 0 < s["cond_brightness"].min() <= s["cond_brightness"].max() < 1


def test_the_readmes_python_section_runs(run_dir, folder, tmp_path, monkeypatch):
    """docs/PYTHON.md's "From Python" blocks, as written, in a folder where runs/quick is a tiny run and a.png a reference."""
    (tmp_path / "runs").mkdir()
    shutil.copytree(run_dir, tmp_path / "runs" / "quick")
    shutil.copy(os.path.join(folder, "top", "0.png"), tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    [block, boundary_block] = readme_blocks("From Python", "docs/PYTHON.md")
    names = {}
    exec(compile(block, "README.md", "exec"), names)
    # The boundary block on the tiny run's two classes (0 and 1 stand for the README's 4 and 9), a 2-step guide.
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    exec(compile(boundary_block.replace("4, 9", "0, 1"), "README.md", "exec"), names)
    assert names["part"]["crossed"].shape == (20,) and len(names["part"]["s"]) == names["part"]["crossed"].sum()
    assert (tmp_path / "boundary.npz").stat().st_size > 0
    assert names["images"].shape == (8, 8, 8, 1) and names["like_mine"].shape == (8, 8, 8, 1)
    assert (names["cond"]["pos"] == conditions.request_conditions(names["run"], names["labels"], names["run"].images[names["refs"]], names["refs"])["pos"]).all()
    assert np.isfinite(names["scores"]["fid"]) and 0 <= names["scores"]["conditioning_accuracy"] <= 1
    assert (tmp_path / "runs" / "quick" / "classifier.pt").exists()


def test_torchrun_with_two_cpu_processes(folder, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(REPO, "train.py"), *tiny(folder, out, "--cond", "label+pos", "--steps", "3")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert state(out)["step"] == 3
    assert [p for p in os.listdir(out) if p.endswith("tmp")] == []


def test_guidance_interval_is_passed_on_and_recorded_and_bad_values_are_one_line_errors(run_dir, tmp_path, capsys,
                                                                                        monkeypatch):
    seen = []
    sample_of = ddpm.Diffusion.sample
    monkeypatch.setattr(ddpm.Diffusion, "sample", lambda self, *a, **k: seen.append(k["guidance_interval"])
                        or sample_of(self, *a, **k))
    sample.main([str(run_dir), "--out", str(tmp_path / "i"), "--sampling-steps", "2", "--grid-per-class", "1",
                 "--guidance-interval", "0.2,inf"])
    assert seen and all(g == (0.2, float("inf")) for g in seen)
    assert json.loads((tmp_path / "i" / "meta.json").read_text())["guidance_interval"] == [0.2, float("inf")]
    for bad, match in (("3,1", "0 <= LO < HI"), ("abc", "two numbers LO,HI"), ("1,2,3", "two numbers LO,HI")):
        with pytest.raises(SystemExit) as stop:
            sample.main([str(run_dir), "--out", str(tmp_path / "bad"), "--guidance-interval", bad])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert stop.value.code == 2 and "--guidance-interval" in last and match in last, last
    assert not (tmp_path / "bad").exists()


def test_eta_without_a_value_is_the_samplers_own_and_meta_json_records_the_value_used(run_dir, tmp_path, monkeypatch):
    """--eta None: ddim 0 (deterministic), dpm++2m 1 (its SDE form), ddpm none; a given --eta is kept."""
    seen = []
    sample_of = ddpm.Diffusion.sample

    def recording(self, model, shape, **k):
        seen.append((k["sampler"], k["eta"]))
        if k["sampler"] == "ddpm":  # all T steps: only what it is asked
            return torch.zeros(shape)
        return sample_of(self, model, shape, **k)

    monkeypatch.setattr(ddpm.Diffusion, "sample", recording)
    for sampler, extra, eta in (("ddim", [], 0.0), ("dpm++2m", [], 1.0), ("ddim", ["--eta", "0.5"], 0.5),
                                ("ddpm", [], None)):
        out = tmp_path / f"{sampler}{len(extra)}"
        seen.clear()
        steps = [] if sampler == "ddpm" else ["--sampling-steps", "2"]  # (ddpm takes all T steps: refused there)
        sample.main([str(run_dir), "--out", str(out), "--sampler", sampler, *steps, "--grid-per-class", "1", *extra])
        assert seen and all(s == (sampler, eta) for s in seen), seen
        assert json.loads((out / "meta.json").read_text())["eta"] == eta


def test_eval_trains_the_evaluator_beside_the_umap_fit(folder, tmp_path, monkeypatch, capsys):
    """train.py --eval trains sample.py --eval's classifier in a second process while UMAP fits (plumbing/evaluator):
    the run's classifier.pt comes from there (nothing in this process trains one), and the U-Net is the one a run
    without --eval trains; if the second process fails, a note says so and the evaluation trains its own."""
    from plumbing import classifier, evaluator

    monkeypatch.setattr(evaluator, "FROM_IMAGES", 0)  # (the tiny folder's fit is quick: no time to save here)
    monkeypatch.setattr(commands, "DEFAULT_EVAL_N", 20)  # (--eval scores 20 samples, not 1,000: what is scored is not tested here)
    plain = tmp_path / "plain"
    train.main(tiny(folder, plain, "--cond", "label+pos", "--pos-dim", "2"))
    trained_here = classifier.train_classifier
    with monkeypatch.context() as m:
        m.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("the evaluator was trained again"))
        beside = tmp_path / "beside"
        train.main(tiny(folder, beside, "--cond", "label+pos", "--pos-dim", "2", "--eval"))
    config = json.load(open(beside / "config.json"))
    assert classifier.load_classifier(str(beside / "classifier.pt")).model.run_id == config["run_id"]
    assert os.path.exists(beside / "samples" / "metrics.json")
    plain_ema, beside_ema = state(plain)["ema"], state(beside)["ema"]
    for key, value in plain_ema.items():
        assert torch.equal(value, beside_ema[key]), key

    start = evaluator.start  # (eval_after, fits_umap, images, labels, num_classes, ...): 1 class fails there
    monkeypatch.setattr(evaluator, "start", lambda *args: start(*args[:4], 1, *args[5:]))
    failed = tmp_path / "failed"
    calls = []
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: calls.append(1) or trained_here(*a, **k))
    capsys.readouterr()
    train.main(tiny(folder, failed, "--cond", "label+pos", "--pos-dim", "2", "--eval"))
    err = capsys.readouterr().err
    assert "the evaluator trained beside the UMAP fit failed" in err and "Traceback" not in err
    assert calls == [1] and os.path.exists(failed / "classifier.pt")  # the evaluation trained it
    assert not [name for name in os.listdir(failed) if name.startswith(".")]  # no temporary file left in --out
