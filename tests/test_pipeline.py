"""train.py and sample.py end to end, on a tiny two-class image folder (8x8 grey)."""
import json
import os
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


@pytest.mark.parametrize("cond", ["label", "umap", "label+umap", "none"])
def test_every_condition_writes_a_run_directory(folder, tmp_path, cond):
    out = tmp_path / cond
    train.main(tiny(folder, out, "--cond", cond))
    config = json.loads((out / "config.json").read_text())
    assert config["cond"] == cond and config["class_names"] == ["bottom", "top"] and config["steps"] == 4
    assert state(out)["step"] == 4
    assert (out / "grids" / "step0000004.png").exists()
    assert (out / "space.npz").exists() == ("umap" in cond)
    model, _, _, space = train.load_run(str(out))
    assert (space is not None) == ("umap" in cond) and model.image_size == 8


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lu"
    train.main(tiny(folder, out, "--cond", "label+umap", "--steps", "6"))
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
        assert s["positions"].shape == (n, 20) and s["positions"].dtype == np.float32
        assert s["reference"].dtype == np.int64 and (s["reference"][:6] >= 0).all() and (s["reference"][-6:] == -1).all()
    # references: row = reference image then its samples -> 4 rows of 3 tiles (+ 2 px gaps)
    assert Image.open(out / "references.png").size == (3 * 10 + 2, 4 * 10 + 2)


def test_sample_with_own_reference_files_and_eval(run_dir, tmp_path, folder, monkeypatch):
    import huggingface_hub

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


def test_resume_after_an_interruption_gives_identical_weights(folder, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--cond", "label+umap", "--steps", "6", "--save-every", "3", "--dropout", "0.1"]
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


def test_resume_can_extend_a_run_but_not_change_it(folder, tmp_path):
    out = tmp_path / "r"
    train.main(tiny(folder, out, "--cond", "label"))
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        train.main(tiny(folder, out, "--cond", "label"))
    with pytest.raises(SystemExit, match="--cond label"):
        train.main(tiny(folder, out, "--resume", "--cond", "umap"))
    train.main(tiny(folder, out, "--resume", "--steps", "6"))
    assert state(out)["step"] == 6
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.main(tiny(folder, tmp_path / "empty", "--resume"))
    (out / "notes.txt").write_text("mine")
    train.main(tiny(folder, out, "--overwrite", "--cond", "none", "--steps", "2"))
    assert state(out)["step"] == 2 and (out / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_loss = ddpm.Diffusion.loss
    calls = {"n": 0}

    def nan_on_third(self, *a, **k):
        calls["n"] += 1
        loss = real_loss(self, *a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ddpm.Diffusion, "loss", nan_on_third)
    with pytest.raises(SystemExit, match="loss became nan at step 2.*last good checkpoint"):
        train.main(tiny(folder, out, "--cond", "label"))
    assert state(out)["step"] == 2


def test_corrupt_or_foreign_checkpoints_are_clear_errors(run_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "checkpoint.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(SystemExit, match="corrupt or not a checkpoint"):
        sample.main([str(bad), "--out", str(tmp_path / "o")])
    torch.save({"weights": torch.zeros(2)}, bad / "checkpoint.pt")
    with pytest.raises(SystemExit, match="not a train.py checkpoint"):
        sample.main([str(bad), "--out", str(tmp_path / "o")])
    torch.save({"evil": Image.new("L", (1, 1))}, bad / "checkpoint.pt")  # an arbitrary pickled object
    with pytest.raises(SystemExit, match="corrupt or not a checkpoint"):  # weights_only refuses it
        sample.main([str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not found"):
        sample.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


def test_label_run_refuses_references(folder, tmp_path):
    out = tmp_path / "l"
    train.main(tiny(folder, out, "--cond", "label", "--steps", "1"))
    with pytest.raises(SystemExit, match="references need a umap condition"):
        sample.main([str(out), "--out", str(tmp_path / "o"), "--steps", "2", "--references", "1"])


def test_torchrun_with_two_cpu_processes(folder, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(REPO, "train.py"), *tiny(folder, out, "--cond", "label+umap", "--steps", "3")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert state(out)["step"] == 3
    assert [p for p in os.listdir(out) if p.endswith(".tmp")] == []
