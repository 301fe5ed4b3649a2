"""experiments/bench_main.py: the phases of the main command's time table name functions that exist, and the
profile is read per function and file."""
import ast
import cProfile
import os

import pytest

from experiments import bench_main


def defined_functions(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(bench_main.ROOT, path)).read())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("label, path, name", bench_main.PHASES)
def test_every_phase_names_a_function_of_its_file(label, path, name):
    assert name in defined_functions(path), f"{label}: {path} has no function {name} (the table would read 0)"


def test_cumulative_reads_one_functions_time_in_its_own_file(tmp_path):
    import ddpm
    profile = str(tmp_path / "p.prof")
    cProfile.runctx("ddpm.beta_schedule('linear', 1000)", {"ddpm": ddpm}, {}, profile)
    import pstats
    stats = pstats.Stats(profile)
    assert bench_main.cumulative(stats, "ddpm.py", "beta_schedule") > 0
    assert bench_main.cumulative(stats, "unet.py", "beta_schedule") == 0  # another file's function of that name: not it


def test_the_section_times_a_tiny_command_in_fresh_processes(monkeypatch, capsys):
    monkeypatch.setattr(bench_main, "MAIN_FLAGS", ["--cond", "label", "--per-class", "2", "--steps", "2",
                                                   "--batch-size", "4", "--save-every", "2", "--image-size", "8"])
    rows = dict(bench_main.bench_main())
    printed = capsys.readouterr().out
    assert "the main command, cold:" in printed and "| training (all steps) |" in printed
    assert rows["start-up and imports"] > 0 and rows["training (all steps)"] > 0
    assert rows["UMAP fit (numba compiling its kernels, cold)"] == 0  # --cond label fits no UMAP
    assert rows["evaluation (sample.py --references 2 --eval)"] == 0  # no --eval in this tiny command


def test_kept_runs_keep_what_the_user_saw(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_main, "MAIN_FLAGS", ["--cond", "label", "--per-class", "2", "--steps", "2",
                                                   "--batch-size", "4", "--save-every", "2", "--image-size", "8"])
    bench_main.bench_main(keep=str(tmp_path / "kept"))
    for name in ("run", "run-profiled"):
        assert os.path.isfile(tmp_path / "kept" / name / "config.json")
        assert "steps 0->2" in (tmp_path / "kept" / f"{name}-output.txt").read_text()
    assert os.path.isfile(tmp_path / "kept" / "main.prof")
