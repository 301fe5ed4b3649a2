"""Where the seconds of the main command go: `python -m experiments.bench main`.

Runs the README's main command, `python train.py --out OUT --eval`, twice in fresh processes, each as a new user
meets it: cold (numba compiles umap's kernels into an empty NUMBA_CACHE_DIR, as in a fresh virtual environment):
once plain, for the wall time a user sees, and once under cProfile, for the table of where that time goes
(cProfile slows Python-heavy code a little: the table says by how much). Nothing in the method is instrumented:
the phases are the cumulative times of the functions the command calls.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/bench_main.py: run python -m experiments.bench main (from the repository root)")
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_FLAGS = ["--eval"]  # the README's main command: python train.py --out OUT --eval (tests make it tiny)

# (phase, file, function): the cumulative time of that function in the profile. Indented phases are parts of
# the phase above them.
PHASES = [
    ("training images (load, check)", "plumbing/train_command.py", "open_run"),
    ("UMAP fit (numba compiling its kernels, cold)", "conditions.py", "fit_space"),
    ("waiting for the evaluator trained beside the UMAP fit", "plumbing/evaluator.py", "keep"),
    ("training (all steps)", "train.py", "train"),
    ("  of which the final class grid", "train.py", "write_grid"),
    ("evaluation (sample.py --references 2 --eval)", "sample.py", "run_command"),
    ("  loading the run", "plumbing/rundir.py", "load_run"),
    ("  class grid (100 samples)", "sample.py", "class_grid"),
    ("  reference grid (200 samples)", "sample.py", "reference_grid"),
    ("  sampling all (class grid, references, 1,000 scored)", "generation.py", "generate"),
    ("  the evaluator: trained (or loaded)", "metrics.py", "load_feature_network"),
    ("  FID / IS / accuracy (features included)", "metrics.py", "evaluate_images"),
    ("  memorisation", "sample.py", "memorisation_check"),
    ("  control (features, UMAP transform)", "sample.py", "control"),
    ("  writing the files", "plumbing/rundir.py", "write_all_or_none"),
]


def run_main_command(out: str, profile: str | None, env: dict) -> float:
    """Wall seconds of `python train.py --out OUT --eval` (MAIN_FLAGS) in a fresh process (under cProfile when profile names a file)."""
    command = [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), "train.py", "--out", out, *MAIN_FLAGS]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(os.path.join(os.path.dirname(out), os.path.basename(out) + "-output.txt"), "w") as f:
        f.write(done.stdout)  # what the user sees (stdout and stderr as they came), kept beside the run, failed or not
    if done.returncode != 0:
        raise SystemExit(f"python -m experiments.bench main: the main command failed: {done.stdout.strip()[-500:]}")
    umap_line = [line for line in done.stdout.splitlines() if line.startswith("UMAP:")]
    if umap_line and not profile:  # the fit's own time, unprofiled (cProfile slows numba's compilation most)
        print(f"  {umap_line[0]}", flush=True)
    return time.perf_counter() - start


def cumulative(stats: pstats.Stats, path: str, name: str) -> float:
    """Cumulative seconds of the function `name` defined in the repository file `path` (0 if never called)."""
    suffix = os.path.join(ROOT, path)
    return sum(row[3] for (file, _, function), row in stats.stats.items()
               if function == name and os.path.abspath(os.path.join(ROOT, file)) == suffix)  # (the profiled run's cwd: ROOT)


def phase_table(profile: str, plain_wall: float, profiled_wall: float) -> list[tuple[str, float]]:
    """[(phase, seconds)]: the start-up (imports) as the profiled wall time not inside train.main, then PHASES."""
    stats = pstats.Stats(profile)
    rows = [("start-up and imports", profiled_wall - cumulative(stats, "train.py", "main"))]
    rows += [(label, cumulative(stats, path, name)) for label, path, name in PHASES]
    return rows


def bench_main(keep: str | None = None) -> list[tuple[str, float]]:
    """Time the cold main command and print where its seconds go (a markdown table for docs/SPEED.md).
    keep: a new folder to keep the two runs, their output (run-output.txt, run-profiled-output.txt) and the profile
    in (else they are removed)."""
    work = tempfile.mkdtemp(prefix="bench-main-") if keep is None else keep
    if keep is not None:
        os.makedirs(keep)  # a new folder: nothing of the user's is written into or removed
    try:
        walls = []
        for profile in (None, os.path.join(work, "main.prof")):
            env = {**os.environ, "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=work)}  # cold: umap's kernels not cached
            out = os.path.join(work, "run-profiled" if profile else "run")
            print(f"main command, cold{', under cProfile' if profile else ''} ...", flush=True)
            walls.append(run_main_command(out, profile, env))
        rows = phase_table(os.path.join(work, "main.prof"), *walls)
        print(f"\nthe main command, cold: {walls[0]:.0f} s (under cProfile {walls[1]:.0f} s: x{walls[1] / walls[0]:.2f})")
        print("\n| phase (cProfile's cumulative seconds) | s |\n|---|---|")
        for label, seconds in rows:
            print(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {seconds:.1f} |")
        return rows
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
