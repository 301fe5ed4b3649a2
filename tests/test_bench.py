"""python -m experiments.bench: every section it names (docs/SPEED.md, the README) run tiny through its main, as
the command runs it, each asserting what it printed and wrote; --help. The sizes are the modules' own settings,
shrunk where the sections read them; train.py, sample.py and the fresh-process check run in this process (the
bench's `python`, replaced): its argv still goes through the scripts' own parsers."""
import ast
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import sys

import numpy as np
import pytest
import torch

import boundary
import metrics
import sample
import train
from plumbing import classifier
from plumbing.weights import WeightsUnavailableError
from experiments import bench, bench_recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the main command's recipe until 2026-12-07 (with the small U-Net): its run serves sampler, walks and boundary
RECIPE = "v + p-drop 0.1 each, 600 steps"
RUN = os.path.join("runs", "bench-recipe", "v-p-drop-0-1-each-600-steps-s0")  # (the second of the default WALK_RUNS)
TINY = {
    bench: dict(BATCH=4, REPEAT=1, MATMUL_N=64, MATMUL_REPEAT=1, FEATURES_N=300, FEATURES_DIM=16, REFERENCES=5,
                MNIST_DIGITS=250, EXTRACT=(("resnet18", 2),), METRICS_N=200, FID_DIM=16, IS_CLASSES=10,
                CLASSIFIER_DIGITS=64, INCEPTION_IMAGES=2, BOUNDARY_N=1, BOUNDARY_SAMPLER=dict(steps=2)),
    bench_recipes: dict(
        TRAIN_FLAGS=("--steps", "2", "--per-class", "20", "--batch-size", "16", "--save-every", "2", "--warmup", "1",
                     "--log-every", "1"),
        SAMPLE_FLAGS=("--grid-per-class", "1", "--sampling-steps", "2"),  # every step count here is 2
        QUICK_RUN=RUN, QUALITY_SEEDS=(0,), QUALITY_N=10, EPS_MSE_N=16,
        RECIPES={RECIPE: bench_recipes.RECIPES[RECIPE]}, RECIPE_SEEDS=(0,), RECIPE_N=10,
        RECIPE_SAMPLER=["--sampler", "ddim", "--sampling-steps", "2", "--eta", "1", "--guidance", "3"],
        SAMPLER_GRID=[("dpm++2m", 2, 0.0)], SAMPLER_N=10,  # (ddim: recipe's sampler; dpm++2m eta 1: quality's)
        WALKS=2, WALK_POINTS=3, WALK_STEPS=2, WALK_RUNS=[RUN],
        QUICK_RECIPES={"default": [], "lower lr": ["--lr", "1e-3"]}, QUICK_SEEDS=(0,), QUICK_EVAL_FLAGS=("--n", "10")),
}
NUMBER = r"[-+]?(?:\d[\d,]*\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def in_process(*argv: str, quiet: bool = False, capture: bool = False) -> str:
    """bench_recipes.python without a new process: train.py and sample.py through their main(argv), `-c CODE ARGS`
    executed here with sys.argv as python sets it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet or capture else contextlib.nullcontext():
        if argv[0] == "-c":
            saved = sys.argv, list(sys.path)
            sys.argv = ["-c", *argv[2:]]
            try:
                exec(argv[1], {"__name__": "__main__"})
            finally:
                sys.argv, sys.path[:] = saved[0], saved[1]
        else:
            {"train.py": train.main, "sample.py": sample.main}[argv[0]](list(argv[1:]))
    return out.getvalue() if capture else ""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, small_space):
    """The bench's settings shrunk, in a fresh directory (its runs/ are the sections' runs/), its classifiers
    (evaluator, guide) trained 2 steps, no progress grids (figures: tests/test_pipeline.py), no Inception
    weights to be had (sample.py --eval skips Inception; random weights still load). (small_space: the session's
    one UMAP fit, which compiles umap's kernels for the fits here.)"""
    import huggingface_hub.constants

    root, threads = tmp_path_factory.mktemp("bench"), torch.get_num_threads()
    train_classifier, inception_network = classifier.train_classifier, metrics.inception_network

    def no_hub(weights=None):
        if weights is None:
            raise WeightsUnavailableError("no Inception weights in these tests")
        return inception_network(weights)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(root)
        for module, settings in TINY.items():
            for name, value in settings.items():
                assert hasattr(module, name), name  # a setting the section reads, not a new attribute
                m.setattr(module, name, value)
        m.setattr(bench_recipes, "python", in_process)
        m.setattr(bench, "python", in_process)
        m.setattr(boundary, "GUIDE_STEPS", 2)
        m.setattr(train, "write_grid", lambda run, step: None)
        m.setattr(metrics, "inception_network", no_hub)
        m.setattr(classifier, "train_classifier", lambda *a, steps=300, **k: train_classifier(*a, steps=2, **k))
        m.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        m.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
        torch.set_num_threads(1)  # (tiny tensors: a second thread only waits, for long on a busy machine)
        try:
            yield root
        finally:
            torch.set_num_threads(threads)


def run_main(*names: str) -> str:
    """bench.main(names), its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(list(names))
    return out.getvalue()


def rows(text: str, header: str, fields: int) -> list[list[str]]:
    """The rows of a section's table: the lines of `fields` fields joined by ' | ' after the line that holds
    `header` (whose first field may be a caption: the runs measured)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if header in line)
    return [line.split(" | ") for line in lines[start + 1:] if line.count(" | ") == fields - 1]


def finite(text: str) -> float:
    value = float(text.replace(",", ""))
    assert math.isfinite(value), text
    return value


def share(text: str) -> float:
    value = finite(text)
    assert 0 <= value <= 1, text
    return value


def numbers_after(label: str, text: str) -> list[float]:
    """The numbers on the line that holds `label`, after it; each must be finite."""
    line = next(line for line in text.splitlines() if label in line)
    return [finite(v) for v in re.findall(NUMBER, line.split(label, 1)[1])]


# ---------------------------------------------------------------------------
# Every name experiments/ imports exists (the sections import inside their functions: a moved name fails only
# when its section runs)
# ---------------------------------------------------------------------------
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def own_nodes(scope):
    """The nodes of a module's or function's own scope, and the scopes nested in it (not their insides)."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, SCOPES):
            todo.extend(ast.iter_child_nodes(node))


def missing_names(scope, path: str, visible: dict) -> list[str]:
    """`from X import Y` where X has no Y, `import X` where there is no X, and `X.attr` where the module X (a
    project module imported in this or an enclosing scope, not rebound here) has no attr."""
    project = {os.path.splitext(f)[0] for f in os.listdir(ROOT) if f.endswith(".py")} | {"plumbing", "experiments"}
    stored = {n.id for n in own_nodes(scope) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    if isinstance(scope, SCOPES[:3]):  # a function's arguments are its own names too
        stored |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
    visible, missing = {k: v for k, v in visible.items() if k not in stored}, []
    for node in own_nodes(scope):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                submodule = hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")
                if value is None and not submodule:
                    missing.append(f"{where}: from {node.module} import {alias.name}")
                elif value is None or isinstance(value, type(os)):
                    visible[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if importlib.util.find_spec(alias.name) is None:
                    missing.append(f"{where}: import {alias.name}")
                top = alias.name.split(".")[0]
                visible[alias.asname or top] = alias.name if alias.asname else top
    for node in own_nodes(scope):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in visible
                and visible[node.value.id].split(".")[0] in project):
            if not hasattr(importlib.import_module(visible[node.value.id]), node.attr):
                missing.append(f"{path}:{node.lineno}: {visible[node.value.id]}.{node.attr}")
        elif isinstance(node, SCOPES[:3]):
            missing += missing_names(node, path, dict(visible))
    return missing



@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py")))
def test_every_name_the_experiments_import_exists(name):
    path = os.path.join(ROOT, "experiments", name)
    with open(path) as f:
        assert missing_names(ast.parse(f.read()), f"experiments/{name}", {}) == []


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
def test_help_lists_every_section_and_option(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m experiments.bench [-h] [SECTION ...]") and "--help" in out
    for name in bench.SECTIONS:
        assert re.search(rf"^  {name} +\S", out, re.M), name
    assert "(none: diffusion features metrics)" in out


def test_the_gpu_section_on_a_machine_without_one_is_one_line_before_any_section_runs(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the gpu section would run")
    for argv in (["gpu"], ["diffusion", "gpu"]):  # docs/SPEED.md: a command for a GPU machine, no CPU fallback
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == bench.NO_GPU and "\n" not in bench.NO_GPU and "needs a CUDA GPU" in bench.NO_GPU
    assert capsys.readouterr().out == ""  # diffusion did not run first
    with pytest.raises(SystemExit) as stop:
        bench.bench_gpu()  # called on its own, too
    assert stop.value.code == bench.NO_GPU


# ---------------------------------------------------------------------------
# No section: diffusion, features, metrics
# ---------------------------------------------------------------------------
def test_the_default_runs_diffusion_features_and_metrics(tiny):
    out = run_main()
    heads = [line for line in out.splitlines() if line.startswith("== ")]
    assert heads == ["== diffusion ==", "== features ==", "== metrics =="]
    diffusion, features, metrics = (out.split(head)[1].split("== ")[0] for head in heads)
    assert not re.search(r"\b(nan|inf)\b", out), out
    assert re.search(r"^threads \d+ \| compact U-Net ", diffusion, re.M), diffusion  # train.py's default --size

    for dtype in ("fp32", "bf16"):  # the rates, finite and positive
        rates = re.search(rf"^{dtype}: large matmul +(\S+) GFLOP/s \| training \(batch 4\) +(\S+) images/s = +(\S+) "
                          rf"GFLOP/s = +(\S+)% of the {dtype} matmul", diffusion, re.M)
        assert rates and all(finite(v) >= 0 for v in rates.groups()), diffusion
        rates = re.search(rf"^{dtype}: sampling \(batch 4\) +(\S+) image-steps/s at guidance 1; at guidance 3 +(\S+) "
                          r"image-steps/s batched vs +(\S+) in two calls = (\S+)x", diffusion, re.M)
        assert rates and all(finite(v) >= 0 for v in rates.groups()), diffusion
    ratios = re.search(r"^bf16 / fp32: training (\S+)x, sampling (\S+)x", diffusion, re.M)
    assert ratios and all(finite(v) > 0 for v in ratios.groups())

    assert "FeatureSpace.fit 300 x 16 -> 20-d" in features
    assert "equal to the fitted space's: True" in features
    fresh = re.search(r"fresh process: import \+ load (\S+) s, first transform of 5 references (\S+) s \(numba "
                      r"compilation\), second (\S+) s", features)  # the script a fresh python runs, run here
    assert fresh and all(finite(v) >= 0 for v in fresh.groups())
    # below 4,096 points umap searches exactly too: every agreement is exact (tests/test_features.py)
    agreements = re.findall(r"umap's neighbour set differs from the exact one for (\S+)%", features)
    assert agreements == ["0.0"] * 3
    assert re.findall(r"\|ours - umap\| max (\S+),", features) == ["0"] * 3
    assert "MNIST pixels, space of 225 digits, the 25 held-out digits" in features
    assert len(re.findall(r"label of the nearest training position = the digit's label", features)) == 2
    assert numbers_after("extract_features resnet18 (random weights)", features)[-1] > 0

    fid = numbers_after("FID 200 x 16:", metrics)
    assert fid[-1] > 0  # the FID
    assert numbers_after("differs by", metrics)[0] < 1e-6  # pytorch-fid's formula: the same value
    assert numbers_after("IS 200 x 10 logits, 10 splits:", metrics)[0] >= 0
    assert numbers_after("classifier features+logits", metrics)[-1] > 0
    assert "inception features+logits at 299 px" in metrics


# ---------------------------------------------------------------------------
# Trained runs: recipe (its runs serve sampler, walks and boundary), quality
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recipe(tiny):
    """`python -m experiments.bench recipe`'s output: the main command's recipe, seed 0."""
    return run_main("recipe")


def test_recipe_trains_and_scores_each_recipe_and_reuses_finished_runs(tiny, recipe, monkeypatch):
    table = rows(recipe, "recipe | seed | train s |", 7)
    assert [(r[0], r[1]) for r in table] == [(RECIPE, "0")]
    for name, seed, seconds, accuracy, fid, grey, loss in table:
        assert finite(seconds) >= 0 and finite(fid) >= 0 and finite(loss) > 0
        share(accuracy), share(grey)
    assert os.path.isfile(os.path.join(tiny, RUN, "samples", "metrics.json"))
    monkeypatch.setattr(bench_recipes, "python", lambda *a, **k: pytest.fail("a finished recipe ran again"))
    again = rows(run_main("recipe"), "recipe | seed | train s |", 7)
    assert [r[:2] + r[3:] for r in again] == [r[:2] + r[3:] for r in table] and {r[2] for r in again} == {"-"}  # reused: not timed


def test_sampler_scores_each_grid_entry(tiny, recipe):
    table = rows(run_main("sampler"), "samples each | sampler | steps | eta |", 7)
    assert [(r[0], r[1], r[2]) for r in table] == [("dpm++2m", "2", "0")]
    for *_, accuracy, fid, grey, seconds in table:
        assert seconds.endswith(" (with scoring)")
        share(accuracy), share(grey)
        assert finite(fid) >= 0 and finite(seconds.split()[0]) >= 0
    assert os.path.isfile(os.path.join(tiny, RUN, "bench-sampler", "dpm++2m-2-0", "eval_samples.npz"))
    kept = json.loads(open(os.path.join(tiny, "results", "sampler", "sampler.json")).read())  # every scored set kept
    assert kept["run"] == RUN and [(r["sampler"], r["steps"], r["samples"]) for r in kept["rows"]] == [
        ("dpm++2m", 2, "dpm++2m-2-0.npz")]
    with np.load(os.path.join(tiny, "results", "sampler", "dpm++2m-2-0.npz")) as z:
        assert z["images"].shape[0] == 10 and f"{kept['rows'][0]['accuracy']:.3f}" == table[0][3]


def test_walks_scores_each_method(tiny, recipe):
    table = rows(run_main("walks"), "walks of 3 points | run | walk label |", 7)
    assert [(r[0], r[1], r[2]) for r in table] == [(os.path.basename(RUN), label, path)
                                                   for label, path, _ in bench_recipes.WALK_METHODS]
    for run, label, path, guidance, mean_b, crossing, mass in table:
        assert len(mean_b.split()) == 3 and all(0 <= share(v) for v in mean_b.split())
        assert crossing == "never" or share(crossing) >= 0
        share(mass)


def test_boundary_times_each_method_on_the_quick_run(tiny, recipe):
    table = rows(run_main("boundary"), "trusted samples asked | method | seconds |", 6)
    assert [r[0] for r in table] == list(boundary.BOUNDARY_METHODS)  # a label+pos run: every method
    for method, seconds, tried, crossed, trusted, per in table:
        assert finite(seconds) >= 0
        assert boundary.MAX_WALKS_PER_SAMPLE * bench.BOUNDARY_N >= int(tried) >= int(crossed) >= int(trusted) >= 0
        assert per == "-" if trusted == "0" else finite(per) == pytest.approx(int(tried) / int(trusted), abs=0.01)
    assert os.path.isfile(os.path.join(tiny, RUN, boundary.GUIDE_FILE))


def test_quality_trains_and_scores_fp32_and_bf16(tiny):
    out = run_main("quality")
    table = rows(out, "precision | conditioning accuracy (seed 0) |", 4)
    assert [r[0].strip() for r in table] == ["fp32", "bf16"]
    for precision, accuracy, fid, mse in table:
        share(accuracy)
        assert finite(fid) >= 0 and 0 < finite(mse) < 10
    for precision in ("fp32", "bf16"):
        assert os.path.isfile(os.path.join(tiny, "runs", "precision", f"{precision}-seed0", "samples", "metrics.json"))


def test_quick_scores_each_recipe_with_the_same_readers_and_keeps_every_set(tiny, monkeypatch):
    """`python -m experiments.bench quick`: each recipe run as the main command runs it, read by the experiment's
    evaluator and second reader; the sets and the table kept in results/quick-recipe/; a second call over one
    recipe reuses its run and keeps the other recipe's row."""
    table = rows(run_main("quick"), "recipe | seed | steps |", 8)
    assert [(r[0], r[1], r[2]) for r in table] == [("default", "0", "2"), ("lower lr", "0", "2")]
    for _, _, _, seconds, accuracy, fid, second, control in table:
        assert finite(seconds) >= 0 and finite(fid) >= 0
        share(accuracy), share(second), share(control)
    results = os.path.join(tiny, bench_recipes.QUICK_RESULTS)
    kept = json.load(open(os.path.join(results, "quick.json")))["rows"]
    assert [(row["recipe"], row["seed"]) for row in kept] == [("default", 0), ("lower lr", 0)]
    for row in kept:
        assert not os.path.isabs(row["samples"])
        with np.load(os.path.join(results, row["samples"])) as z:
            assert z["images"].shape == (10, 28, 28, 1) and len(z["labels"]) == 10
    bench_recipes.bench_quick(["default"])  # reuses its run and keeps the other row and its training seconds
    again = json.load(open(os.path.join(results, "quick.json")))["rows"]
    assert sorted((row["recipe"], row["accuracy"], row["train_seconds"]) for row in again) == sorted(
        (row["recipe"], row["accuracy"], row["train_seconds"]) for row in kept)
    assert all(math.isfinite(row["train_seconds"]) for row in again)
    os.remove(os.path.join(results, "quick.json"))  # a reused run whose training time nobody kept: null, not NaN
    bench_recipes.bench_quick(["default"])
    text = open(os.path.join(results, "quick.json")).read()
    assert "NaN" not in text and json.loads(text)["rows"][0]["train_seconds"] is None
    # a kept run of another recipe under the name (here: another --lr) is refused in one line, not reused
    monkeypatch.setitem(bench_recipes.QUICK_RECIPES, "default", ["--lr", "5e-4"])
    kept_json = open(os.path.join(results, "quick.json")).read()
    with pytest.raises(SystemExit, match=r"default-s0 was trained with --lr 0.002, this call needs 0.0005 \(recipe "
                                         r"'default'\); move it away"):
        bench_recipes.bench_quick(["default"])
    assert open(os.path.join(results, "quick.json")).read() == kept_json
