"""train.py and sample.py end to end, on a tiny two-class image folder (8x8 grey)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
import sample
import train

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
    return ["--data", str(folder), "--out", str(out), "--batch-size", "8", "--steps", "4", "--save-every", "2",
            "--sample-every", "0", "--warmup", "2", "--root", str(os.path.dirname(out)), *extra]


def state(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


def fails(script, argv, match):
    """Run a script's main in-process; it must stop with ONE line matching `match` (a SystemExit, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    message = str(stop.value.code)
    assert "\n" not in message and "Traceback" not in message, message
    assert __import__("re").search(match, message), message
    return message


def snapshot(path):
    """Every file under path with its bytes: to prove that a failed command changed nothing."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


@pytest.mark.parametrize("cond", ["label", "pos", "label+pos", "none"])
def test_every_condition_writes_a_run_directory(folder, tmp_path, cond):
    out = tmp_path / cond
    train.main(tiny(folder, out, "--cond", cond))
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["cond"] == cond and config["data"]["class_names"] == ["bottom", "top"]
    assert sorted(config["unet"]["conditions"]) == sorted(train.cond_names(cond))
    assert state(out)["step"] == 4 and state(out)["run_id"] == config["run_id"]
    assert (out / "grids" / "step0000004.png").exists()
    assert (out / "space.npz").exists() == ("pos" in cond)
    run = sample.load_run(str(out))
    assert (run.space is not None) == ("pos" in cond) and run.model.image_size == 8
    assert sample.build_unet(config).conditions == run.model.conditions  # rebuilt from the stored arguments alone


def test_positions_from_a_classifiers_features(folder, tmp_path):
    """--backbone classifier --weights FILE: a semantic space, fitted at training and used again at sampling."""
    import metrics
    from data import load_dataset

    images, labels, _ = load_dataset(folder)
    weights = str(tmp_path / "features.pt")
    metrics.save_classifier(metrics.train_classifier(images, labels, steps=5, batch_size=8), weights)
    out = tmp_path / "run"
    train.main(tiny(folder, out, "--cond", "label+pos", "--backbone", "classifier", "--weights", weights))
    run = sample.load_run(str(out))
    assert run.space.features.shape == (40, 128)  # the classifier's penultimate layer, not the 64 pixels
    cond = sample.request_conditions(run, labels[:3], images[:3])
    assert cond["pos"].shape == (3, 20) and np.isfinite(cond["pos"]).all()
    os.remove(weights)
    fails(sample, [str(out), "--out", str(tmp_path / "s")], r"--weights \S+features.pt: file not found")


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lu"
    train.main(tiny(folder, out, "--cond", "label+pos", "--steps", "6"))
    return out


def test_sample_writes_grids_references_and_npz(run_dir, tmp_path):
    out = tmp_path / "s"
    sample.main([str(run_dir), "--out", str(out), "--steps", "5", "--per-class", "3", "--references", "2",
                 "--per-reference", "2", "--between", "0", "1", "--points", "3"])
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
    # a later call that makes fewer figures leaves no stale ones of ours beside its samples.npz
    sample.main([str(run_dir), "--out", str(out), "--steps", "2", "--per-class", "1"])
    assert sorted(os.listdir(out)) == ["class_grid.png", "meta.json", "samples.npz"]


def test_sample_with_own_reference_files_and_eval(run_dir, tmp_path, folder, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no Inception weights to be had
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "e"
    files = [os.path.join(folder, c, f"{i}.png") for c in ("top", "bottom") for i in (0, 1)]
    result = sample.main([str(run_dir), "--out", str(out), "--steps", "3", "--per-class", "2",
                          "--reference-images", *files, "--reference-labels", "1", "1", "0", "0", "--per-reference", "2",
                          "--eval", "--n", "8"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and np.isfinite(metrics["classifier"]["fid"])
    assert 0.0 <= metrics["classifier"]["conditioning_accuracy"] <= 1.0
    assert 0.0 <= metrics["controllability"]["own_reference_rate"] <= 1.0
    assert result["classifier"]["fid"] == metrics["classifier"]["fid"]
    assert metrics["inception"].startswith("skipped:") and "weights" in metrics["inception"]  # never random weights
    with np.load(out / "samples.npz") as s:
        assert (s["reference"][-8:] == -1).all() and s["labels"][-8:].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    with np.load(out / "eval_samples.npz") as s:  # the evaluated images are kept, to be scored by anyone
        assert s["images"].shape == (8, 8, 8, 1) and s["labels"].tolist() == [0, 1] * 4
        assert (s["reference"] >= 0).all() and s["cond_pos"].shape == (8, 20)


def test_eval_works_for_a_label_only_run(folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "l"
    train.main(tiny(folder, out, "--cond", "label", "--steps", "1"))
    sample.main([str(out), "--out", str(tmp_path / "o"), "--steps", "2", "--per-class", "1", "--references", "1",
                 "--per-reference", "1", "--eval", "--n", "4"])
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "controllability" not in metrics and 0 <= metrics["classifier"]["conditioning_accuracy"] <= 1


def test_resume_after_an_interruption_gives_identical_weights(folder, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--cond", "label+pos", "--steps", "6", "--save-every", "3", "--dropout", "0.1"]
    train.main(tiny(folder, straight, *args))

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_on_fifth(self, *a, **k):  # the process dies during step 5, after the step-3 checkpoint
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny(folder, broken, *args))
    monkeypatch.undo()
    assert state(broken)["step"] == 3
    train.main(["--out", str(broken), "--resume"])  # every setting comes from the run's config.json
    a, b = state(straight), state(broken)
    assert b["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])


def test_resume_can_extend_a_run_and_change_its_optimisation_but_not_what_defines_it(folder, tmp_path):
    out = tmp_path / "r"
    train.main(tiny(folder, out, "--cond", "label"))
    fails(train, tiny(folder, out, "--cond", "label"), "already holds a run; pass --resume")
    before = (out / "config.json").read_bytes()
    fails(train, tiny(folder, out, "--resume", "--cond", "pos"), "--cond label")
    fails(train, ["--out", str(out), "--resume", "--batch-size", "4"], "--batch-size 8")
    assert (out / "config.json").read_bytes() == before  # a refused resume rewrites nothing
    train.main(["--out", str(out), "--resume", "--steps", "6", "--lr", "1e-3", "--grad-clip", "0.5"])
    config = json.loads((out / "config.json").read_text())
    assert state(out)["step"] == 6 and config["settings"]["lr"] == 1e-3
    assert config["changes"] == [{"step": 4, "steps": [4, 6], "lr": [0.002, 0.001], "grad_clip": [1.0, 0.5]}]
    fails(train, tiny(folder, tmp_path / "empty", "--resume"), "nothing to resume")


def test_overwrite_with_bad_input_leaves_the_old_run_intact(folder, tmp_path):
    out = tmp_path / "o"
    train.main(tiny(folder, out, "--cond", "label+pos", "--steps", "2"))
    before = snapshot(out)
    fails(train, tiny("typo", out, "--overwrite"), "unknown dataset 'typo'")
    fails(train, tiny(folder, out, "--overwrite", "--cond", "label+colour"), "unknown condition 'colour'")
    fails(train, tiny(folder, out, "--overwrite", "--backbone", "resnet18", "--weights", "missing.pt"), "--weights")
    assert snapshot(out) == before


def test_overwrite_removes_only_the_projects_files(folder, tmp_path):
    out = tmp_path / "w"
    train.main(tiny(folder, out, "--cond", "label", "--steps", "2"))
    sample.main([str(out), "--out", str(out / "samples"), "--steps", "2", "--per-class", "1"])
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


def test_resume_without_config_json_takes_the_checkpoints_copy(folder, tmp_path):
    out = tmp_path / "c"
    train.main(tiny(folder, out, "--cond", "label+pos", "--steps", "2"))
    before = json.loads((out / "config.json").read_text())
    (out / "config.json").unlink()
    fails(train, tiny(folder, out), "already holds a run")
    train.main(["--out", str(out), "--resume", "--steps", "4"])
    after = json.loads((out / "config.json").read_text())
    assert state(out)["step"] == 4 and after["run_id"] == before["run_id"]


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed(folder, tmp_path, monkeypatch):
    out = tmp_path / "k"
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny(folder, out, "--cond", "label+pos"))
    monkeypatch.undo()
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    fails(train, tiny(folder, out, "--cond", "label+pos"), "pass --resume")
    train.main(["--out", str(out), "--resume"])  # the suggested command works
    assert state(out)["step"] == 4


def test_nan_loss_stops_with_advice_that_works(folder, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_loss = ddpm.Diffusion.loss
    calls = {"n": 0}

    def nan_on_third(self, *a, **k):
        calls["n"] += 1
        loss = real_loss(self, *a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ddpm.Diffusion, "loss", nan_on_third)
    message = fails(train, tiny(folder, out, "--cond", "label"),
                    r"loss became nan at step 2; .*checkpoint.pt \(step 2\) is kept.*--resume --lr 0.0005")
    calls["n"] = 0
    fails(train, tiny(folder, tmp_path / "early", "--cond", "label", "--save-every", "5"),
          "no checkpoint was written yet")
    monkeypatch.undo()
    advice = message.split("python train.py ")[1].split()
    train.main(advice)
    assert state(out)["step"] == 4 and json.loads((out / "config.json").read_text())["settings"]["lr"] == 0.0005
    train.main(["--out", str(tmp_path / "early"), "--resume", "--lr", "0.0005"])  # from step 0: no checkpoint yet
    assert state(tmp_path / "early")["step"] == 4


def test_a_kill_during_a_save_leaves_one_stray_file_that_the_next_save_replaces(folder, tmp_path):
    out = tmp_path / "t"
    train.main(tiny(folder, out, "--cond", "label", "--steps", "2"))
    (out / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")  # what kill -9 during torch.save leaves
    train.main(["--out", str(out), "--resume", "--steps", "4"])
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "checkpoint.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user makes


@pytest.mark.parametrize("extra,match", [
    (["--save-every", "0"], "--save-every must be a positive number"),
    (["--timesteps", "0"], "--timesteps must be a positive number"),
    (["--timesteps", "5"], "--timesteps 5 does not give a valid linear schedule"),
    (["--batch-size", "0"], "--batch-size must be a positive number"),
    (["--lr", "-1"], r"--lr must lie in \(0"),
    (["--p-uncond", "1"], r"--p-uncond must lie in \[0, 1\)"),
    (["--per-class", "30"], "--per-class"),
    (["--image-size", "0"], "--image-size must be a positive number"),
    (["--backbone", "classifier"], "--backbone classifier needs --weights FILE"),
])
def test_bad_settings_are_one_line_errors_before_any_write(folder, tmp_path, extra, match):
    fails(train, tiny(folder, tmp_path / "x", *extra), match)
    assert not (tmp_path / "x").exists()


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
    (["--per-class", "0"], "--per-class must be a positive count"),
    (["--steps", "-3"], "--steps must be a positive count"),
    (["--references", "-1"], "--references must be 0"),
    (["--references", "50"], "more than the 20 training images"),
    (["--eta", "2"], r"--eta must lie in \[0, 1\]"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--between", "0", "5"], "class 5 does not exist"),
    (["--steps", "5000"], "at most the run's 1000 timesteps"),
    (["--reference-images", "a.png"], "one --reference-labels value per"),
    (["--reference-images", "missing.png", "--reference-labels", "0"], "missing.png"),
])
def test_sample_checks_every_argument_before_writing(run_dir, tmp_path, extra, match):
    out = tmp_path / "s"
    sample.main([str(run_dir), "--out", str(out), "--steps", "2", "--per-class", "1"])
    before = snapshot(out)
    fails(sample, [str(run_dir), "--out", str(out), *extra], match)
    assert snapshot(out) == before  # a failed call leaves the earlier outputs as they were


def test_sample_never_replaces_files_it_did_not_write(run_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "meta.json").write_text("my notes")
    fails(sample, [str(run_dir), "--out", str(out), "--steps", "2"], "meta.json, which sample.py did not write")
    assert (out / "meta.json").read_text() == "my notes"


def test_corrupt_or_foreign_checkpoints_are_clear_errors(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "checkpoint.pt").write_bytes(b"not a zip file at all")
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "corrupt or not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, bad / "checkpoint.pt")
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "not a train.py checkpoint")
    torch.save({"evil": Image.new("L", (1, 1))}, bad / "checkpoint.pt")  # an arbitrary pickled object
    fails(sample, [str(bad), "--out", str(tmp_path / "o")], "corrupt or not a checkpoint")  # weights_only refuses it
    fails(train, ["--out", str(bad), "--resume"], "corrupt or not a checkpoint")
    fails(sample, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "not found")


def recipe_blocks() -> list[str]:
    """The three code blocks of the README's "Forking: add a new condition" section, in order."""
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Forking: add a new condition")[1].split("\n## ")[0]
    return [block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith("python")]


def test_the_readmes_recipe_adds_a_condition_in_three_places(folder, tmp_path):
    """Apply the README's recipe (a brightness condition) to a copy of the code, then train and sample with it."""
    code = tmp_path / "fork"
    code.mkdir()
    for name in ("unet.py", "train.py", "sample.py", "ddpm.py", "data.py", "features.py", "metrics.py"):
        shutil.copy(os.path.join(REPO, name), code / name)
    anchors = [("unet.py", "    raise ValueError(f\"unknown condition"), ("train.py", "    return cond, space\n"),
               ("sample.py", "    return cond\n")]
    blocks = recipe_blocks()
    assert len(blocks) == 3
    for (name, anchor), block in zip(anchors, blocks):
        source = (code / name).read_text()
        assert source.count(anchor) == 1, f"the recipe's place in {name} moved"
        (code / name).write_text(source.replace(anchor, block + anchor))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    out = tmp_path / "bright"
    for argv in (["train.py", *tiny(folder, out, "--cond", "label+brightness")],
                 ["sample.py", str(out), "--out", str(out / "s"), "--steps", "2", "--per-class", "2"]):
        proc = subprocess.run([sys.executable, *argv], cwd=code, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["unet"]["conditions"] == {"label": 2, "brightness": 1}
    with np.load(out / "s" / "samples.npz") as s:
        assert s["cond_brightness"].shape == (4, 1) and 0 < s["cond_brightness"].min() <= s["cond_brightness"].max() < 1


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
    assert [p for p in os.listdir(out) if p.endswith(".tmp")] == []
