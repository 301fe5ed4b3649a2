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
