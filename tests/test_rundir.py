"""plumbing/rundir.py's rules on their own: resume, belonging, overwrite, one writer, saving, the messages. No training."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from plumbing import lock
from plumbing import rundir
from plumbing.rundir import RunError


def tiny_checkpoint(value: float = 1.0) -> dict:
    """A checkpoint of the layout train.py saves, with a one-parameter model."""
    net = torch.nn.Linear(1, 1)
    torch.nn.init.constant_(net.weight, value)
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 1)).sum().backward()
    optimizer.step()
    return dict(format=rundir.CHECKPOINT_FORMAT, run_id="r1", step=7, config={}, model=net.state_dict(),
                ema=net.state_dict(), optimizer=optimizer.state_dict())


def test_resume_keeps_what_defines_a_run_and_records_the_rest():
    saved = dict(data="mnist-sample", data_seed=0, seed=0, lr=2e-3, steps=100, epochs=3.0)
    settings, changes = rundir.resumed_settings(saved, dict(lr=1e-3, steps=200, seed=0), "runs/x")
    assert settings["lr"] == 1e-3 and settings["epochs"] is None  # --steps takes over from --epochs: both recorded
    assert changes == {"lr": [2e-3, 1e-3], "steps": [100, 200], "epochs": [3.0, None]}
    for key in ("seed", "data_seed"):
        with pytest.raises(RunError, match=f"trained with --{key.replace('_', '-')} 0; a resumed run keeps"):
            rundir.resumed_settings(saved, {key: 1}, "runs/x")
    assert "data_seed" in rundir.IDENTITY and "lr" not in rundir.IDENTITY


def test_a_run_id_is_a_digest_of_the_identity_settings_and_the_data():
    settings = {key: 0 for key in rundir.IDENTITY}
    assert rundir.make_run_id(settings, "d1") == rundir.make_run_id(dict(settings, lr=5), "d1")
    assert rundir.make_run_id(settings, "d1") != rundir.make_run_id(dict(settings, data_seed=1), "d1")
    assert rundir.make_run_id(settings, "d1") != rundir.make_run_id(settings, "d2")


def test_a_config_of_format_2_is_read_in_todays_names(tmp_path):
    old = dict(format="fpdiff-run-2", run_id="r", settings=dict(seed=3), space="space.npz", data={}, unet={})
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = rundir.read_config(str(tmp_path))
    assert config["format"] == rundir.CONFIG_FORMAT and config["space_file"] == "space.npz" and "space" not in config
    assert config["settings"]["data_seed"] == 3  # format 2 drew --per-class subsets with --seed
    (tmp_path / "config.json").write_text(json.dumps(dict(old, format="fpdiff-run-1")))
    with pytest.raises(RunError, match="not written by this version"):
        rundir.read_config(str(tmp_path))


def test_save_checkpoint_never_replaces_good_weights_with_non_finite_ones(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    assert rundir.save_checkpoint(path, tiny_checkpoint(1.0))
    good = open(path, "rb").read()
    for bad in (float("nan"), float("inf")):
        assert not rundir.finite_weights(tiny_checkpoint(bad))
        assert not rundir.save_checkpoint(path, tiny_checkpoint(bad))
    assert not rundir.save_checkpoint(path, dict(tiny_checkpoint(1.0), loss=1.5e14))  # finite, but blown up
    assert not rundir.save_checkpoint(path, dict(tiny_checkpoint(1.0), loss=float("nan")))
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["checkpoint.pt"]
    assert rundir.save_checkpoint(path, dict(tiny_checkpoint(2.0), loss=0.9))
    assert rundir.checkpoint_step(path) == 7 and rundir.checkpoint_step(str(tmp_path / "none.pt")) is None


def test_a_full_disk_is_named_and_the_earlier_checkpoint_stays(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    rundir.save_checkpoint(path, tiny_checkpoint())
    good = open(path, "rb").read()

    def full(obj, f, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 2367296 vs 2367184") \
            from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunError, match=r"the disk is full: \S+checkpoint.pt \(step 7\) could not be written"):
        rundir.save_checkpoint(path, tiny_checkpoint())
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["checkpoint.pt"]  # no .tmp left
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # anything else is not disguised as a full disk
        rundir.save_checkpoint(path, tiny_checkpoint())


def test_the_nan_advice_never_resumes_from_weights_that_give_the_nan():
    none = rundir.nan_message("runs/x", 5, None, 2e-3)
    assert "no checkpoint was written yet" in none and none.endswith("python train.py --out runs/x --resume --lr 0.0002")
    kept = rundir.nan_message("runs/x", 5, 4, 2e-3)
    assert "checkpoint.pt (step 4) is kept" in kept and kept.endswith("--resume --lr 0.0002")
    own = rundir.nan_message("runs/x", 4, 4, 1e6)  # its own weights give the loss: resuming would fail again
    assert "Remove runs/x/checkpoint.pt" in own and own.endswith("--resume --lr 0.001")  # at most 1e-3


def test_the_out_check_names_what_is_wrong(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    rundir.check_out(str(tmp_path / "new" / "deeper"))  # can be made: fine
    rundir.check_out(str(tmp_path))
    for out, match in [("file", "is a file"), ("file/run", "lies under .*file, which is a file"),
                       ("dangling", "symbolic link to .*nowhere, which does not exist"),
                       ("dangling/run", "symbolic link to")]:
        with pytest.raises(RunError, match=f"--out .*{match}"):
            rundir.check_out(str(tmp_path / out))


def test_the_device_check_names_the_flag():
    rundir.check_device(None)
    rundir.check_device("cpu")
    with pytest.raises(RunError, match="--device foo is not a device name"):
        rundir.check_device("foo")
    with pytest.raises(RunError, match=r"--device cuda:99: this machine has no such device \(it has cpu"):
        rundir.check_device("cuda:99")


def test_one_writer_at_a_time(tmp_path):
    out = str(tmp_path / "a" / "run")
    with lock.writer_lock(out):
        holder = json.loads(open(os.path.join(out, lock.LOCK_FILE)).read())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunError, match=rf"in use by train.py, process {os.getpid()} on {socket.gethostname()}"):
            with lock.writer_lock(out):
                pass
        assert os.path.exists(os.path.join(out, lock.LOCK_FILE))  # the refused writer leaves the lock alone
    assert not (tmp_path / "a").exists()  # nothing was written: the folders made for the lock go again

    os.makedirs(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = os.path.join(out, lock.LOCK_FILE)
    with open(lock_file, "w") as f:
        json.dump(dict(pid=dead.pid, host=socket.gethostname(), since="earlier"), f)
    with lock.writer_lock(out):  # the process that held it is gone: taken over
        assert json.loads(open(lock_file).read())["pid"] == os.getpid()
    with open(lock_file, "w") as f:
        json.dump(dict(pid=1, host="another-machine", since="earlier"), f)
    with pytest.raises(RunError, match=r"on another-machine .*\(if that process is gone, delete"):
        with lock.writer_lock(out):  # cannot be checked from here: refused, with the way out
            pass


def test_overwrite_removes_only_files_of_a_proven_run(tmp_path):
    out = tmp_path / "run"
    (out / "grids").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(dict(format=rundir.CONFIG_FORMAT)))
    (out / "checkpoint.pt").write_bytes(b"truncated")
    (out / "grids" / "step0000004.png").write_bytes(b"png")
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    (out / "grids" / f".step0000004.png.{killed.pid}.abcdefgh.fpdiff-tmp").write_bytes(b"half")
    (out / "grids" / "mine.png").write_bytes(b"the user's")
    (out / f".checkpoint.pt.{killed.pid}.abcdefgh.fpdiff-tmp").write_bytes(b"half")
    (out / "checkpoint.pt.tmp").write_bytes(b"the user's: train.py never makes this name")
    rundir.check_ours(str(out))  # our config.json beside a damaged checkpoint: a run that may be replaced
    rundir.remove_stale_tmp(str(out))
    assert sorted(os.listdir(out / "grids")) == ["mine.png", "step0000004.png"]
    rundir.remove_run_files(str(out))
    assert sorted(os.listdir(out)) == ["checkpoint.pt.tmp", "grids"] and os.listdir(out / "grids") == ["mine.png"]
    os.remove(out / "checkpoint.pt.tmp")
    (out / "config.json").write_text('{"mine": 1}')
    with pytest.raises(RunError, match="not written by this version of train.py"):
        rundir.check_ours(str(out))
    (out / "config.json").write_text('{"trunc')
    (out / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(RunError, match="nothing intact shows it is a run of train.py"):
        rundir.check_ours(str(out))
    torch.save(tiny_checkpoint(), out / "checkpoint.pt")
    rundir.check_ours(str(out))  # a damaged config.json beside an intact checkpoint of ours


def test_a_full_disk_at_the_first_checkpoint_does_not_promise_an_earlier_one(tmp_path, monkeypatch):
    def full(obj, f, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunError, match=r"could not be written; no earlier checkpoint existed\. Free some space"):
        rundir.save_checkpoint(str(tmp_path / "checkpoint.pt"), tiny_checkpoint())
    assert os.listdir(tmp_path) == []
