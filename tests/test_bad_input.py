"""Bad input as a user gives it: one line naming the flag or file, nothing lost."""
import argparse
import json
import os
import subprocess
import sys
import re

import pytest

from plumbing import commands
from plumbing import rundir
import sample
from test_pipeline import copy_run, fails, folder, label_run, snapshot, tiny  # noqa: F401


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "label=nan", "label=3,pos=inf"])
def test_a_guidance_that_is_not_finite_is_refused_naming_the_flag(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        commands.parse_guidance(text)
    with pytest.raises(SystemExit):
        commands.build_parser().parse_args(["run", "--out", "x", "--guidance", text])
    assert "--guidance" in capsys.readouterr().err


def test_finite_guidance_still_parses():
    assert commands.parse_guidance("2.5") == 2.5 and commands.parse_guidance("label=1,pos=3") == {"label": 1.0, "pos": 3.0}


@pytest.mark.parametrize("script,argv,typo", [
    ("train", ["--out", "x", "--step", "5"], "--step"),  # --steps
    ("train", ["--out", "x", "--batch", "5"], "--batch"),  # --batch-size
    ("sample", ["run", "--out", "x", "--sampling-step", "5"], "--sampling-step"),  # --sampling-steps
    ("sample", ["run", "--out", "x", "--grid", "5"], "--grid"),  # --grid-per-class
])
def test_train_and_sample_both_refuse_an_abbreviated_flag_in_argparses_one_line(script, argv, typo, capsys):
    from plumbing import train_command
    parser = (train_command if script == "train" else commands).build_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last.endswith(f"error: unrecognized arguments: {typo} 5"), last
    full = {"--step": "--steps", "--batch": "--batch-size", "--sampling-step": "--sampling-steps",
            "--grid": "--grid-per-class"}[typo]
    assert vars(parser.parse_args([*argv[:-2], full, "5"]))[full[2:].replace("-", "_")] == 5  # typed in full: fine


def test_eta_without_a_value_is_left_to_the_sampler_and_seed_and_eval_say_what_they_mean_in_each_script():
    from plumbing import train_command
    assert commands.build_parser().parse_args(["run", "--out", "x"]).eta is None  # resolved by run_command
    helps = {name: {a.dest: a.help for a in module.build_parser()._actions} for name, module in
             (("train", train_command), ("sample", commands))}
    assert "initialisation" in helps["train"]["seed"] and "sampling noise" in helps["sample"]["seed"]
    assert "sample.py" in helps["train"]["seed"] and "train.py" in helps["sample"]["seed"]
    assert "--references 2 --eval" in helps["train"]["eval"] and "metrics.json" in helps["sample"]["eval"]


def test_sample_on_a_run_without_config_json_points_to_resume(label_run, tmp_path):  # noqa: F811
    run = copy_run(label_run, tmp_path)
    os.remove(run / "config.json")
    before = snapshot(run)
    fails(sample, [str(run), "--out", str(tmp_path / "o")], r"has a checkpoint.pt: python train.py --out \S+ --resume")
    assert snapshot(run) == before and not (tmp_path / "o").exists()


def test_a_cut_off_config_json_is_called_cut_off(label_run, tmp_path):  # noqa: F811
    run = copy_run(label_run, tmp_path)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    fails(sample, [str(run), "--out", str(tmp_path / "o")], r"config.json is cut off .*move it away")


@pytest.mark.parametrize("mode", ["soft", "none"])
def test_walk_label_soft_or_none_on_a_model_without_a_label_is_one_line(mode):
    import types

    import numpy as np
    from plumbing.rundir import RunError
    args = commands.build_parser().parse_args(["run", "--out", "x", "--between", "0", "1", "--walk-label", mode])
    unet = {"conditions": {"pos": 20}, "image_size": 8, "image_channels": 1, "base_channels": 8}
    run = types.SimpleNamespace(config={"unet": unet, "data": {"class_names": ["a", "b"]}},
                                diffusion=types.SimpleNamespace(num_timesteps=100), dir="run", space=object(),
                                labels=np.array([0, 1]))
    with pytest.raises(RunError, match=f"--walk-label {mode} .* without one: leave --walk-label at fixed"):
        commands.check_against_run(args, run)
    commands.check_against_run(commands.build_parser().parse_args(["run", "--out", "x", "--between", "0", "1"]), run)


def test_a_plain_call_removes_the_earlier_calls_between_png_and_nothing_else(tmp_path):
    import json

    from plumbing import rundir
    out = tmp_path / "o"
    rundir.write_all_or_none(str(out), {"between.png": b"old", "samples.npz": b"old", "meta.json": json.dumps(
        dict(written_by="sample.py", files=["between.png", "meta.json", "samples.npz"])).encode()})
    (out / "notes.txt").write_text("mine")
    rundir.write_all_or_none(str(out), {"samples.npz": b"new", "meta.json": json.dumps(
        dict(written_by="sample.py", files=["meta.json", "samples.npz"])).encode()})
    assert sorted(os.listdir(out)) == ["meta.json", "notes.txt", "samples.npz"]
    assert (out / "samples.npz").read_bytes() == b"new"


def fill_up_at(n, monkeypatch):
    """rundir.write_bytes fails with a full disk at its n-th call (after the temporary file is made)."""
    import errno

    from plumbing import rundir
    real, calls = rundir.write_bytes, {"n": 0}

    def fills_up(path, content):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, content)

    monkeypatch.setattr(rundir, "write_bytes", fills_up)


def test_a_full_disk_while_sampling_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    from plumbing import rundir
    from plumbing.rundir import RunError
    fill_up_at(2, monkeypatch)
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RunError, match=r"the disk is full: --out \S+ could not be written \(1 of 2 files done; the "
                                       r"folder is removed again\)") as error:
        rundir.write_all_or_none(str(out), {"class_grid.png": b"png", "samples.npz": b"npz"})
    assert "\n" not in str(error.value) and not (tmp_path / "new").exists()


def test_a_full_disk_over_an_earlier_call_replaces_none_of_its_files(tmp_path, monkeypatch):
    """All of a call's files are put in place, or none: never the new class_grid.png beside the old samples.npz."""
    import json

    from plumbing import rundir
    from plumbing.rundir import RunError
    out = tmp_path / "o"
    meta = json.dumps(dict(written_by="sample.py", files=["class_grid.png", "meta.json", "samples.npz"])).encode()
    before = {"class_grid.png": b"old png", "samples.npz": b"old npz", "meta.json": meta}
    rundir.write_all_or_none(str(out), before)
    (out / "mine.txt").write_text("the user's")
    for n in (1, 2, 3):
        fill_up_at(n, monkeypatch)
        with pytest.raises(RunError, match=rf"\({n - 1} of 3 files done; the files in it are as they were\)"):
            rundir.write_all_or_none(str(out), {"class_grid.png": b"new", "samples.npz": b"new", "meta.json": b"{}"})
        assert {name: (out / name).read_bytes() for name in before} == before
        assert sorted(os.listdir(out)) == ["class_grid.png", "meta.json", "mine.txt", "samples.npz"]  # no temp left
        monkeypatch.undo()


def test_temporary_names_are_unique_and_never_take_over_a_users_file(tmp_path):
    """A file of the user's named like a temporary file (the old fixed NAME.tmp) is neither replaced nor renamed."""
    from plumbing.data import temporary_beside, write_atomically

    from plumbing import rundir
    (tmp_path / "samples.npz.tmp").write_bytes(b"the user's")
    (tmp_path / "config.json.tmp").write_bytes(b"the user's too")
    write_atomically(str(tmp_path / "config.json"), lambda f: f.write(b"{}"))
    rundir.write_all_or_none(str(tmp_path), {"samples.npz": b"npz"})
    assert (tmp_path / "samples.npz.tmp").read_bytes() == b"the user's" and (tmp_path / "samples.npz").read_bytes() == b"npz"
    assert (tmp_path / "config.json.tmp").read_bytes() == b"the user's too"
    assert temporary_beside(str(tmp_path / "x")) != temporary_beside(str(tmp_path / "x"))  # O_EXCL, new each time
    strays = [f for f in os.listdir(tmp_path) if f.startswith(".x.")]
    assert len(strays) == 2 and all(rundir.stray_of(f) == "x" for f in strays)
    # a stray of a killed write (its process gone) goes when the next run starts; the user's look-alikes stay
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    killed = f".log.csv.{child.pid}.{strays[0].split('.')[-2]}.fpdiff-tmp"
    os.rename(tmp_path / strays[0], tmp_path / killed)
    (tmp_path / ".log.csv.mybackup.tmp").write_bytes(b"the user's")
    os.remove(tmp_path / "config.json")
    rundir.remove_stale_tmp(str(tmp_path))
    assert not (tmp_path / killed).exists() and (tmp_path / "config.json.tmp").exists()
    assert (tmp_path / ".log.csv.mybackup.tmp").exists() and (tmp_path / strays[1]).exists()  # its process runs


# ---------------------------------------------------------------- python -m experiments: its results.json and Ctrl-C
def test_experiment_refuses_a_broken_or_foreign_results_json_in_one_line_and_keeps_it(tmp_path):
    from experiments import __main__ as experiment
    for name, text, match in [("cut", '{"format": "x", "compare": {', "cannot be read .*cut off or not JSON"),
                              ("other", '{"format": "another", "compare": {}}', "another configuration")]:
        out = tmp_path / name
        out.mkdir()
        (out / "results.json").write_text(text)
        fails(experiment, ["--out", str(out), "--runs", str(tmp_path / "runs"), "--sections", "compare"], match)
        assert (out / "results.json").read_text() == text and not (tmp_path / "runs").exists()


def test_ctrl_c_in_experiment_is_one_line_naming_the_sections_to_rerun_and_keeps_finished_ones(tmp_path, monkeypatch):
    import json

    from experiments import __main__ as experiment
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    earlier = {"format": experiment.RESULTS_FORMAT, "between": {"best_method": "m", "wall_s": 1}}
    (out / "results.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(experiment.Digits, "load", staticmethod(lambda: None))
    monkeypatch.setattr(experiment, "Scorer", lambda *a: None)

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "compare", interrupted)
    message = fails(experiment, ["--out", str(out), "--runs", str(runs), "--sections", "compare", "control"],
                    r"interrupted in section compare; .*python -m experiments --sections compare control")
    assert "Traceback" not in message and json.loads((out / "results.json").read_text()) == earlier


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt(3)  # (train.train passes its step)


class InterruptedScorer:
    """The evaluator, trained: a section's scoring is what is interrupted."""
    def __init__(self, *args):
        self.score = interrupted


@pytest.mark.parametrize("stage", ["evaluator", "training inside train.py", "scoring"])
def test_ctrl_c_at_every_stage_of_the_experiment_is_one_line_naming_what_to_rerun(tmp_path, monkeypatch, capsys, stage):
    import json

    import train
    from experiments import __main__ as experiment
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    earlier = {"format": experiment.RESULTS_FORMAT, "between": {"best_method": "m", "wall_s": 1}}
    (out / "results.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(experiment.Digits, "load", staticmethod(lambda: None))
    monkeypatch.setattr(experiment, "Scorer", {"evaluator": interrupted}.get(stage, InterruptedScorer))
    monkeypatch.setattr(train, "prepare", lambda *a: None)  # a model of the section trains: train.train is stopped
    monkeypatch.setattr(train, "train", interrupted)
    monkeypatch.setattr(experiment, "compare", lambda ctx: ctx.scorer.score() if stage == "scoring" else ctx.model("label", 0))
    where = "before section compare" if stage == "evaluator" else "in section compare"
    message = fails(experiment, ["--out", str(out), "--runs", str(runs), "--sections", "compare", "control"],
                    rf"^python -m experiments: interrupted {where}.*: python -m experiments --sections compare control "
                    rf"--runs {runs} --out {out}$")
    assert "train.py" not in message and "Traceback" not in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == earlier  # nothing finished is lost


def test_ctrl_c_in_the_benchmarks_is_one_line_naming_the_sections_still_to_run(monkeypatch, capsys):
    from experiments import bench
    monkeypatch.setattr(bench, "SECTIONS", dict(bench.SECTIONS, metrics=lambda: print("done"), features=interrupted))
    with pytest.raises(SystemExit) as stop:
        bench.main(["metrics", "features", "diffusion"])
    assert stop.value.code == ("python -m experiments.bench: interrupted in section features; the sections before it "
                               "printed their numbers above: python -m experiments.bench features diffusion")
    assert "done" in capsys.readouterr().out


def test_a_bench_section_whose_run_is_missing_is_one_line_and_a_section_named_twice_runs_once(monkeypatch, capsys):
    from experiments import bench

    def missing():
        raise rundir.RunError("runs/bench-recipe/x/config.json not found: train it first")
    ran = []
    monkeypatch.setattr(bench, "SECTIONS", dict(bench.SECTIONS, metrics=lambda: ran.append("metrics"), walks=missing))
    with pytest.raises(SystemExit) as stop:
        bench.main(["metrics", "metrics", "walks"])
    assert stop.value.code == ("python -m experiments.bench: section walks stopped: runs/bench-recipe/x/config.json "
                               "not found: train it first; when it is fixed: python -m experiments.bench walks")
    assert ran == ["metrics"] and capsys.readouterr().out.count("== metrics ==") == 1


def test_the_experiment_without_sections_rewrites_the_summaries_and_tables_from_results_json(tmp_path, monkeypatch):
    import json

    from experiments import __main__ as experiment
    monkeypatch.setattr(experiment.Digits, "load", lambda: pytest.fail("no section runs: nothing is loaded"))
    (tmp_path / "results.json").write_text(json.dumps({"format": experiment.RESULTS_FORMAT}))
    experiment.main(["--out", str(tmp_path), "--runs", str(tmp_path / "runs"), "--sections"])
    assert (tmp_path / "tables.md").read_text() == experiment.tables({"format": experiment.RESULTS_FORMAT})
    assert not (tmp_path / "runs").exists()


def test_the_experiment_refuses_an_unusable_out_or_runs_before_any_work(tmp_path, monkeypatch):
    from experiments import __main__ as experiment
    monkeypatch.setattr(experiment.Digits, "load", lambda: pytest.fail("refused before any work"))
    a_file, locked = tmp_path / "a-file", tmp_path / "locked"
    a_file.write_text("mine")
    locked.mkdir(mode=0o500)
    good = ["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    for argv, match in [(["--out", "", "--runs", str(tmp_path / "runs")], r"--out is an empty path"),
                        (["--out", str(tmp_path / "out"), "--runs", ""], r"--runs is an empty path"),
                        (["--out", str(a_file), "--runs", str(tmp_path / "runs")], rf"--out {a_file} is a file"),
                        (["--out", str(tmp_path / "out"), "--runs", str(a_file / "x")], rf"--runs {a_file}/x lies under"),
                        ([*good[:2], "--runs", str(locked / "runs")], rf"--runs {locked}/runs: {locked} is read-only"),
                        ([*good, "--sections"], rf"there is no {tmp_path}/out/results.json: run a section first")]:
        if "read-only" in match and os.access(locked, os.W_OK):  # (root writes anywhere)
            continue
        fails(experiment, [*argv, "--sections", "compare"] if "--sections" not in argv else argv, match)
    assert a_file.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["a-file", "locked"]


# ---------------------------------------------------------------- ownership per file, both commands
@pytest.mark.parametrize("name", ["log.csv", "loss.png", "classifier.pt", "guide.pt", "space.npz",
                                  os.path.join("grids", "step0000004.png"), os.path.join("samples", "samples.npz")])
def test_train_refuses_a_users_file_with_a_run_files_name_in_a_folder_without_a_run(folder, tmp_path, name):  # noqa: F811
    out = tmp_path / "u2"
    os.makedirs(os.path.dirname(out / name), exist_ok=True)
    (out / name).write_text("mine")
    (out / "notes.txt").write_text("the user's own")
    before = snapshot(out)
    import train
    fails(train, tiny(folder, out, "--cond", "label"), rf"{name} exists, and \S+ holds no run .*Move it away, or "
                                                      "choose another --out")
    assert snapshot(out) == before and not (out / "config.json").exists()


def test_sample_replaces_only_the_files_an_earlier_call_listed(label_run, tmp_path):  # noqa: F811
    out = tmp_path / "o"
    quick = ["--sampling-steps", "2", "--grid-per-class", "1"]
    sample.main([str(label_run), "--out", str(out), *quick])  # a plain call: class_grid.png, samples.npz, meta.json
    (out / "references.png").write_bytes(b"the user's")  # a name sample.py uses, but this folder's calls did not
    before = snapshot(out)
    fails(sample, [str(label_run), "--out", str(out), *quick, "--references", "1"],
          r"--out \S+ holds references.png, which no earlier sample.py call there wrote .*move it away")
    assert snapshot(out) == before
    os.remove(out / "references.png")
    sample.main([str(label_run), "--out", str(out), *quick, "--references", "1"])  # now its own: listed, replaced
    sample.main([str(label_run), "--out", str(out), *quick, "--references", "1", "--seed", "1"])
    assert "references.png" in json.loads((out / "meta.json").read_text())["files"]


# ---------------------------------------------------------------- silently wrong
@pytest.mark.parametrize("text", ["", ",", " , "])
def test_an_empty_guidance_is_refused_naming_the_flag_and_its_forms(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match=r"a weight W .* or NAME=W pairs"):
        commands.parse_guidance(text)
    with pytest.raises(SystemExit):
        commands.build_parser().parse_args(["run", "--out", "x", "--guidance", text])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--guidance" in last and "NAME=W" in last


@pytest.mark.parametrize("run_id", ["0123456789abcdef", ""])
def test_eval_refuses_a_foreign_or_id_less_evaluator(label_run, tmp_path, run_id):  # noqa: F811
    from plumbing import classifier
    run = copy_run(label_run, tmp_path)
    net = classifier.SmallClassifier(1, 2, 8).network()
    classifier.save_classifier(net, run / "classifier.pt", run_id)  # copied from another run, or of no run
    before = snapshot(run)
    fails(sample, [str(run), "--out", str(tmp_path / "o"), "--sampling-steps", "2", "--grid-per-class", "1",
                   "--eval", "--n", "4"],
          rf"classifier.pt belongs to another run \(run id {run_id or 'none'}, this run is \w+\).*move it away")
    assert snapshot(run) == before and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- unbounded requests
@pytest.mark.parametrize("flags, flag", [(["--eval", "--n", "1000000000"], "--n 1000000000"),
                                         (["--boundary", "0", "1", "--boundary-n", "1000000000"], "--boundary-n 1000000000"),
                                         (["--grid-per-class", "1000000000"], "--grid-per-class 1000000000"),
                                         (["--references", "1", "--per-reference", "1000000000"],
                                          "--per-reference 1000000000"),
                                         (["--between", "0", "1", "--walks", "1000000000"], "--walks 1000000000"),
                                         (["--between", "0", "1", "--points", "1000000000"], "--points 1000000000")])
def test_a_request_larger_than_memory_is_refused_before_any_work(label_run, tmp_path, monkeypatch, flags, flag):  # noqa: F811
    from plumbing import rundir
    monkeypatch.setattr(sample, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    message = fails(sample, [str(label_run), "--out", str(tmp_path / "o"), *flags],
                    rf"{flag} asks for more than this machine can hold: about [\d,.]+ GiB .* GiB is available")
    assert not (tmp_path / "o").exists()
    assert "GiB" in message
    monkeypatch.setattr(rundir, "available_memory", lambda: 2**28)  # 256 MiB: a grid of 2 x 10^6 8x8 images does not fit
    fails(sample, [str(label_run), "--out", str(tmp_path / "o"), "--grid-per-class", "1000000"],
          r"--grid-per-class 1000000 asks for more than this machine can hold: about \d+ MiB .* 256 MiB is available")


@pytest.mark.parametrize("flags, flag", [(["--batch-size", "100000"], "--batch-size 100000"),
                                         (["--timesteps", "1000000000"], "--timesteps 1000000000"),
                                         (["--image-size", "2000"], "--image-size 2000"),
                                         (["--image-size", "100000"], "--image-size 100000"),  # 10**10 pixels each
                                         (["--pos-dim", "100000000"], "--pos-dim 100000000")])
def test_a_training_request_larger_than_memory_is_one_line_before_any_work(folder, tmp_path, monkeypatch, flags, flag):  # noqa: F811
    import train
    monkeypatch.setattr(rundir, "load_training_images", lambda *a: pytest.fail("loaded the data before the check"))
    out = tmp_path / "run"
    fails(train, tiny(folder, out, *flags), rf"^train.py: {flag} asks for more than this machine can hold: about "
          r"[\d,.]+ GiB of memory \([\d,.]+ GiB for \S+ alone\), and [\d,.]+ GiB is available; ask for fewer$")
    assert not out.exists()


def test_the_training_memory_check_names_the_flag_against_what_is_available(folder, tmp_path, monkeypatch):  # noqa: F811
    import train
    from plumbing import train_command
    monkeypatch.setattr(rundir, "available_memory", lambda: 2**28)  # 256 MiB: 2000 rows of 8x8 maps do not fit
    fails(train, tiny(folder, tmp_path / "run", "--batch-size", "2000"),
          r"--batch-size 2000 asks for more than this machine can hold: about [\d,.]+ [MG]iB .* 256 MiB is available")
    fails(train, tiny(folder, tmp_path / "run", "--image-size", "200"),  # 625 times the pixels: --image-size's doing
          r"--image-size 200 asks for more than this machine can hold")
    assert not (tmp_path / "run").exists()
    settings = lambda *argv: {k: v for k, v in vars(train_command.parse_args(["--out", "x", *argv])[0]).items()  # noqa: E731
                              if k not in train_command.NOT_SETTINGS}
    train_command.check_memory(settings("--data", folder, "--batch-size", "8"))  # the tiny runs fit


@pytest.mark.parametrize("argv", [[], ["--data", "mnist", "--per-class", "1000", "--size", "paper", "--batch-size", "64"],
                                  ["--data", "mnist", "--per-class", "1000", "--cond", "label+pos", "--backbone",
                                   "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k", "--size", "paper", "--lr", "1e-5",
                                   "--epochs", "500", "--batch-size", "64", "--sample-every", "5000"],  # the report's
                                  ["--data", "mnist", "--cond", "label+pos", "--size", "paper"]])
@pytest.mark.parametrize("gpu", [None, 70 * 2**30])  # the CPU, an H100's free memory
def test_the_defaults_and_the_readmes_runs_pass_the_memory_check_of_a_24_gb_machine(monkeypatch, argv, gpu):
    from plumbing import train_command
    monkeypatch.setattr(rundir, "available_memory", lambda: 16 * 2**30)  # what a 24 GB machine has free, and less
    monkeypatch.setattr(train_command, "cuda_memory", lambda name: gpu)  # None: the batch in this machine's memory
    args, _ = train_command.parse_args(["--out", "x", *argv])
    train_command.check_memory({k: v for k, v in vars(args).items() if k not in train_command.NOT_SETTINGS})


def test_on_a_gpu_the_training_batch_is_checked_against_the_gpus_memory(monkeypatch):
    from plumbing import train_command
    monkeypatch.setattr(rundir, "available_memory", lambda: 16 * 2**30)
    monkeypatch.setattr(train_command, "cuda_memory", lambda name: 2**30)  # 1 GiB free on the GPU
    args, _ = train_command.parse_args(["--out", "x", "--batch-size", "1000"])
    with pytest.raises(rundir.RunError, match=r"^--batch-size 1000 asks for more than the GPU can hold: about [\d.]+ "
                                              r"GiB of memory .* and 1.0 GiB is available; ask for fewer$"):
        train_command.check_memory({k: v for k, v in vars(args).items() if k not in train_command.NOT_SETTINGS})


@pytest.mark.parametrize("flags, flag", [(["--image-size", "1500"], "--image-size 1500"),
                                         (["--image-size", "100000"], "--image-size 100000"),  # past numpy's sizes
                                         (["--feature-batch-size", "100000"], "--feature-batch-size 100000")])
def test_a_metrics_request_larger_than_memory_is_one_line_before_any_image_is_read(tmp_path, monkeypatch, capsys,
                                                                                   flags, flag):
    import numpy as np
    from plumbing import metrics_command
    real, generated = tmp_path / "real.npz", tmp_path / "gen"
    np.savez(real, images=np.zeros((1000, 28, 28, 1), np.uint8), labels=np.arange(1000) % 10)
    generated.mkdir()
    from PIL import Image
    for i in range(3):
        Image.new("L", (28, 28)).save(generated / f"{i}.png")
    monkeypatch.setattr(rundir, "available_memory", lambda: 2**30)  # 1 GiB
    monkeypatch.setattr(metrics_command, "load_image_set", lambda *a: pytest.fail("read the images before the check"))
    assert metrics_command.main([str(real), str(generated), "--features", "classifier", *flags]) == 2
    err = capsys.readouterr()
    assert not err.out and len(err.err.strip().splitlines()) == 1, err
    assert re.match(rf"metrics.py: error: {flag} asks for more than this machine can hold: about [\d,.]+ GiB .*"
                    r"1.0 GiB is available", err.err), err.err


@pytest.mark.parametrize("flags, says", [(["--classifier", "DIR"], "--classifier DIR is a folder: give a file path"),
                                         (["--classifier", ""], r"--classifier is an empty path \(''\): give a file"),
                                         (["--features", "inception", "--inception-weights", ""],
                                          r"--inception-weights is an empty path"),
                                         (["--features", "inception", "--inception-weights", "DIR"],
                                          "--inception-weights DIR is a folder")])
def test_metrics_path_flags_that_are_empty_or_a_folder_are_refused_up_front(tmp_path, monkeypatch, capsys, flags, says):
    from plumbing import metrics_command
    monkeypatch.chdir(tmp_path)
    os.mkdir("DIR")
    monkeypatch.setattr(metrics_command, "load_image_set", lambda *a: pytest.fail("read the images before the check"))
    assert metrics_command.main(["real.npz", "gen.npz", "--features", "classifier", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert re.match(rf"metrics.py: error: {says}", err) and "delete" not in err and "\n" not in err, err
    assert os.path.isdir("DIR")


# ---------------------------------------------------------------- unclear messages
@pytest.mark.parametrize("argv, says", [
    (["--guidance-interval", "-1,2"], r"argument --guidance-interval: .* needs 0 <= LO < HI .* got -1.0,2.0"),
    (["--guidance", "=3"], r"argument --guidance: .* got '=3'; for one weight on every condition write --guidance 3"),
    (["--guidance", "-inf"], r"argument --guidance: every weight must be a finite number"),
])
def test_a_value_starting_with_minus_or_equals_reaches_its_flags_check(capsys, argv, says):
    with pytest.raises(SystemExit):
        commands.build_parser().parse_args(["run", "--out", "x", *argv])
    assert re.search(says, capsys.readouterr().err.strip().splitlines()[-1])
    assert commands.build_parser().parse_args(["run", "--out", "x", "--guidance-interval", "0.5,inf"]).guidance_interval == (0.5, float("inf"))


@pytest.mark.parametrize("script, flag, value", [("train", "--seed", -1), ("train", "--seed", 2**64),
                                                 ("train", "--data-seed", -1), ("train", "--data-seed", 2**32),
                                                 ("sample", "--seed", -1), ("sample", "--seed", 2**64)])
def test_a_seed_out_of_range_is_one_line_naming_its_flag_in_both_scripts(label_run, folder, tmp_path, script, flag, value):  # noqa: F811
    import train
    argv = (tiny(folder, tmp_path / "run") if script == "train" else [str(label_run), "--out", str(tmp_path / "run")])
    fails(train if script == "train" else sample, [*argv, flag, str(value)],
          rf"^\w+.py: {flag} must be a whole number in \[0, 2\*\*32\) \(4,294,967,295 at most\), got {value}$")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["train", "sample"])
def test_an_empty_out_is_refused_before_any_work(label_run, folder, tmp_path, monkeypatch, script):  # noqa: F811
    import train
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sample, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    argv = tiny(folder, "") if script == "train" else [str(label_run), "--out", ""]
    fails(train if script == "train" else sample, argv, r"--out is an empty path \(''\): give the folder to write in")
    assert os.listdir(tmp_path) == []


def test_sample_on_a_file_or_on_a_run_whose_unet_block_was_edited_says_what_to_do(label_run, tmp_path):  # noqa: F811
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    fails(sample, [str(a_file), "--out", str(tmp_path / "o")], rf"{a_file} is a file, not a run directory: give the "
                                                               "folder that train.py --out wrote")
    run = copy_run(label_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["unet"]["dropout"] = 0.5  # the weights would still load: only the checkpoint's copy tells
    (run / "config.json").write_text(json.dumps(config))
    fails(sample, [str(run), "--out", str(tmp_path / "o")], rf"{run}/config.json was edited \(\"unet\" not as in "
          rf"checkpoint\.pt's own copy; .*\): move config.json away; python train.py --out {run} --resume then")
    assert a_file.read_text() == "mine" and not (tmp_path / "o").exists()


def test_sample_into_the_run_or_its_grids_is_refused_before_any_work(label_run, tmp_path, monkeypatch):  # noqa: F811
    run = copy_run(label_run, tmp_path)
    monkeypatch.setattr(sample, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    before = snapshot(run)
    for out, what in ((run, "folder"), (run / "grids", "grids/ folder"), (run / "." / "grids", "grids/ folder")):
        fails(sample, [str(run), "--out", str(out)], rf"--out {out} is the run's own {what}, where train.py keeps the "
                                                     rf"model's files: give a folder of its own, e.g. --out {run}/samples")
    assert snapshot(run) == before


def test_a_truncated_classifier_pt_says_what_sample_py_does_about_it(label_run, tmp_path):  # noqa: F811
    run = copy_run(label_run, tmp_path)
    (run / "classifier.pt").write_bytes(b"PK\x03\x04 half a file")
    message = fails(sample, [str(run), "--out", str(tmp_path / "o"), "--sampling-steps", "2", "--grid-per-class", "1",
                             "--eval", "--n", "4"],
                    r"classifier.pt is not a classifier file of this classifier.py \(cut off, or another kind of "
                    r"file\): move it away, and sample.py --eval trains this run's own$")
    assert "--classifier" not in message and "delete" not in message and not (tmp_path / "o").exists()


def test_a_config_json_of_another_run_is_named_and_the_advice_keeps_the_checkpoint(label_run, tmp_path):  # noqa: F811
    import train
    run = copy_run(label_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    settings = dict(config["settings"], seed=config["settings"]["seed"] + 1)  # another run's config.json: its own id
    other = rundir.make_run_id(settings, config["data"]["digest"])
    (run / "config.json").write_text(json.dumps(dict(config, settings=settings, run_id=other)))
    before = snapshot(run)
    for script, argv in ((sample, [str(run), "--out", str(tmp_path / "o")]), (train, ["--out", str(run), "--resume"])):
        message = fails(script, argv, rf"{run}/config.json belongs to another run \(run id {other}; "
                        rf"checkpoint.pt is of run {config['run_id']}\): it was copied in. Move it away; then "
                        rf"python train.py --out {run} --resume restores this run's config.json")
        assert "--overwrite" not in message and snapshot(run) == before
    os.rename(run / "config.json", tmp_path / "stray.json")  # the advice, followed
    train.main(["--out", str(run), "--resume"])
    assert json.loads((run / "config.json").read_text())["run_id"] == config["run_id"]


def test_sample_on_a_run_train_py_is_still_setting_up_says_so_not_that_it_is_no_run(tmp_path):
    run = tmp_path / "setting-up"
    run.mkdir()
    (run / ".lock").write_text(json.dumps(dict(pid=os.getpid(), host="here", since="now")))  # train.py fitting UMAP
    message = fails(sample, [str(run), "--out", str(tmp_path / "o")],
                    rf"{run}/config.json not found yet: train.py is setting {run} up \({run}/\.lock\); wait until it "
                    "writes its first checkpoint")
    assert "train one" not in message and not (tmp_path / "o").exists()


@pytest.mark.parametrize("edit", [dict(prediction="eps"), dict(timesteps=500), dict(cond="none"), "per_class"])
def test_a_config_json_edited_by_hand_is_refused_before_sampling_or_resuming(label_run, tmp_path, edit):  # noqa: F811
    """A defining setting changed (or removed) in config.json would sample or resume the weights with other maths."""
    import train
    run = copy_run(label_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    settings = ({k: v for k, v in config["settings"].items() if k != edit} if isinstance(edit, str)
                else dict(config["settings"], **edit))
    (run / "config.json").write_text(json.dumps(dict(config, settings=settings)))
    before = snapshot(run)
    flag = "--" + (edit if isinstance(edit, str) else next(iter(edit))).replace("_", "-")
    what = (rf"{run}/config.json was edited \({flag} not as in checkpoint\.pt's own copy; the settings that define a "
            rf"run cannot change\): move config.json away; python train.py --out {run} --resume then restores it")
    for script, argv in ((sample, [str(run), "--out", str(tmp_path / "o")]), (train, ["--out", str(run), "--resume"])):
        message = fails(script, argv, what)
        assert snapshot(run) == before and not (tmp_path / "o").exists(), message
    os.rename(run / "config.json", tmp_path / "edited.json")  # the advice, followed
    train.main(["--out", str(run), "--resume"])
    assert json.loads((run / "config.json").read_text())["settings"] == config["settings"]


def test_a_run_with_fewer_timesteps_than_the_grids_sampling_steps_trains_and_writes_its_grid(folder, tmp_path):  # noqa: F811
    import train
    out = tmp_path / "t1"
    train.main(tiny(folder, out, "--cond", "label", "--timesteps", "1", "--steps", "2"))
    assert (out / "grids" / "step0000002.png").is_file() and (out / "loss.png").is_file()


def test_ctrl_c_during_the_last_grid_is_finished_by_resume(folder, tmp_path, monkeypatch, capsys):  # noqa: F811
    import train
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train.main(tiny(folder, straight, "--cond", "label", "--steps", "2"))
    real_write_grid = train.write_grid

    def ctrl_c_at_the_last_step(run, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_grid", ctrl_c_at_the_last_step)
    fails(train, tiny(folder, broken, "--cond", "label", "--steps", "2"),
          r"interrupted at step \d+; \S+checkpoint.pt \(step 2\) is intact. Continue: python train.py --out \S+ --resume")
    assert not (broken / "loss.png").exists() and not (broken / "grids" / "step0000002.png").exists()
    monkeypatch.setattr(train, "write_grid", real_write_grid)
    capsys.readouterr()
    train.main(["--out", str(broken), "--resume"])
    said = capsys.readouterr().out
    assert f"{broken}: wrote loss.png and grids/step0000002.png, which the run stopped before writing" in said
    assert (broken / "grids" / "step0000002.png").read_bytes() == (straight / "grids" / "step0000002.png").read_bytes()
    assert (broken / "loss.png").is_file()
    train.main(["--out", str(broken), "--resume"])  # a finished run: nothing more to write, nor to say
    assert "wrote" not in capsys.readouterr().out
