"""Bad input as a user gives it: one line naming the flag or file, nothing lost."""
import argparse
import os

import pytest

import sample
from test_pipeline import copy_run, fails, folder, label_run, snapshot, tiny  # noqa: F401


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "label=nan", "label=3,pos=inf"])
def test_a_guidance_that_is_not_finite_is_refused_naming_the_flag(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        sample.parse_guidance(text)
    with pytest.raises(SystemExit):
        sample.build_parser().parse_args(["run", "--out", "x", "--guidance", text])
    assert "--guidance" in capsys.readouterr().err


def test_finite_guidance_still_parses():
    assert sample.parse_guidance("2.5") == 2.5 and sample.parse_guidance("label=1,pos=3") == {"label": 1.0, "pos": 3.0}


@pytest.mark.parametrize("script,argv,typo", [
    ("train", ["--out", "x", "--step", "5"], "--step"),  # --steps
    ("train", ["--out", "x", "--batch", "5"], "--batch"),  # --batch-size
    ("sample", ["run", "--out", "x", "--sampling-step", "5"], "--sampling-step"),  # --sampling-steps
    ("sample", ["run", "--out", "x", "--grid", "5"], "--grid"),  # --grid-per-class
])
def test_train_and_sample_both_refuse_an_abbreviated_flag_in_argparses_one_line(script, argv, typo, capsys):
    import train
    parser = (train if script == "train" else sample).build_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last.endswith(f"error: unrecognized arguments: {typo} 5"), last
    full = {"--step": "--steps", "--batch": "--batch-size", "--sampling-step": "--sampling-steps",
            "--grid": "--grid-per-class"}[typo]
    assert vars(parser.parse_args([*argv[:-2], full, "5"]))[full[2:].replace("-", "_")] == 5  # typed in full: fine


def test_eta_without_a_value_is_left_to_the_sampler_and_seed_and_eval_say_what_they_mean_in_each_script():
    import train
    assert sample.build_parser().parse_args(["run", "--out", "x"]).eta is None  # resolved by run_command
    helps = {name: {a.dest: a.help for a in module.build_parser()._actions} for name, module in
             (("train", train), ("sample", sample))}
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
    from rundir import RunError
    args = sample.build_parser().parse_args(["run", "--out", "x", "--between", "0", "1", "--walk-label", mode])
    run = types.SimpleNamespace(config={"unet": {"conditions": {"pos": 20}}, "data": {"class_names": ["a", "b"]}},
                                diffusion=types.SimpleNamespace(num_timesteps=100), dir="run", space=object(),
                                labels=np.array([0, 1]))
    with pytest.raises(RunError, match=f"--walk-label {mode} .* without one: leave --walk-label at fixed"):
        sample.check_against_run(args, run)
    sample.check_against_run(sample.build_parser().parse_args(["run", "--out", "x", "--between", "0", "1"]), run)


def test_a_plain_call_removes_the_earlier_calls_between_png_and_nothing_else(tmp_path):
    import json
    out = tmp_path / "o"
    sample.write_outputs(str(out), {"between.png": b"old", "samples.npz": b"old", "meta.json": json.dumps(
        dict(written_by="sample.py", files=["between.png", "meta.json", "samples.npz"])).encode()})
    (out / "notes.txt").write_text("mine")
    sample.write_outputs(str(out), {"samples.npz": b"new", "meta.json": json.dumps(
        dict(written_by="sample.py", files=["meta.json", "samples.npz"])).encode()})
    assert sorted(os.listdir(out)) == ["meta.json", "notes.txt", "samples.npz"]
    assert (out / "samples.npz").read_bytes() == b"new"


def test_a_full_disk_while_sampling_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    import errno

    from rundir import RunError
    real, calls = sample.write_atomically, {"n": 0}

    def fills_up(path, write):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, write)

    monkeypatch.setattr(sample, "write_atomically", fills_up)
    out = tmp_path / "new"
    with pytest.raises(RunError, match=r"the disk is full: --out \S+ could not be written \(1 of 2 files done; the "
                                       r"folder is removed again\)") as error:
        sample.write_outputs(str(out), {"class_grid.png": b"png", "samples.npz": b"npz"})
    assert "\n" not in str(error.value) and not out.exists()


# ---------------------------------------------------------------- experiment.py: its results.json and Ctrl-C
def test_experiment_refuses_a_broken_or_foreign_results_json_in_one_line_and_keeps_it(tmp_path):
    import experiment
    for name, text, match in [("cut", '{"format": "x", "compare": {', "cannot be read .*cut off or not JSON"),
                              ("other", '{"format": "another", "compare": {}}', "another configuration")]:
        out = tmp_path / name
        out.mkdir()
        (out / "results.json").write_text(text)
        fails(experiment, ["--out", str(out), "--runs", str(tmp_path / "runs"), "--sections", "compare"], match)
        assert (out / "results.json").read_text() == text and not (tmp_path / "runs").exists()


def test_ctrl_c_in_experiment_is_one_line_naming_the_sections_to_rerun_and_keeps_finished_ones(tmp_path, monkeypatch):
    import json

    import experiment
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
                    r"interrupted in section compare; .*python experiment.py --sections compare control")
    assert "Traceback" not in message and json.loads((out / "results.json").read_text()) == earlier
