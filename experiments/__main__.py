"""The paper's experiment, rerun on a CPU with the embedded MNIST sample: one command.

    python -m experiments                                # every section, in this order
    python -m experiments --sections compare control     # some of them (a later section reuses earlier models)

Four sections, each in its own file beside this one, each answering one question of the report
(docs/METHOD.md); what they share (the protocol: held-out test digits, the evaluator, the noise floor,
seeds and intervals) is experiments/common.py:

  compare   Do positions improve the samples? (compare.py)
  control   Do the samples follow their reference? (control.py)
  between   Samples at a class boundary, read by readers that did not choose them (between.py)
  augment   At an equal number of added images, do boundary samples with soft labels raise a scarce
            classifier's test accuracy more than ordinary generated samples with soft labels? (augment.py)

Outputs: --out (results/experiment/) gets results.json (every per-seed number, and the
summaries over seeds made from them: `--sections` with no section makes them and tables.md again),
tables.md (every table, as printed), the figures, and every scored set as
SECTION/NAME/samples.npz (sample.py's format; walks carry walk, s, endpoints)
beside set.json, the settings that made it. Models go to --runs
(runs/experiment/, not in git).

Resuming: a finished model is reused, an unfinished one resumed (train.py
--resume), one trained with other settings is an error that names it. A set
whose set.json matches what would make it now is read back instead of being
generated again, and so is an augmentation replicate's json; everything else
(scoring, intervals, tables) is recomputed, in minutes. A killed command, run
again, continues where it stopped.

Time from nothing on the project's 2-core CPU, measured for this protocol
(2026-12-02): compare 64.3 min (9 models of the experiment's recipe, common.TRAIN_FLAGS: small, 600 steps; about 4.5 min
each with their sets, the curve over three seeds and label+pos's interval
curves), control 7.4, between 26.4 (15 variants x 5 pairs x 3 seeds x 20 walks
x 9 images); augment 148.5 (one of its 10 scarce generators trained before;
156 estimated from counts by `augment_minutes()`: 10 scarce generators, two
generators x 10 draws x 500 ordinary and 500 boundary samples, 17 arms of
classifiers per draw): about 4.1 h in all, more than one sitting. Every
section runs on its own (`--sections`) and resumes from its kept models, sets
and per-draw json, so the run can be spread over sittings as long as no code
it depends on changes between them. Each section's wall time is printed and
kept in results.json.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/__main__.py: run python -m experiments (from the repository root)")
import sys

try:  # a Ctrl-C while the modules load (torch: seconds) is one line too
    import argparse
    import json
    import os
    import time

    from plumbing.data import write_atomically
    from plumbing.errors import RunError
    from experiments.augment import augment, augment_summaries, augment_tables
    from experiments.between import between, between_tables
    from experiments.common import TRAIN_FLAGS, Context, Digits, Scorer, check_folders, new_run_settings
    from experiments.compare import compare, compare_summaries, compare_tables
    from experiments.control import control, control_summaries, control_tables
except KeyboardInterrupt:
    raise SystemExit("python -m experiments: interrupted while starting, before anything ran: "
                     + " ".join(["python -m experiments", *sys.argv[1:]])) from None

SECTIONS = ("compare", "control", "between", "augment")
# results.json of this protocol (held-out digits, 3 seeds, an evaluator without the floor's digits); older ones are not kept
RESULTS_FORMAT = "experiment-3"
# Each section's numbers over the seeds, a pure function of the per-seed numbers it keeps: applied to the sections
# of a results.json read back, so that every interval in the file is the one this code makes (between: its own)
SUMMARIES = {"compare": compare_summaries, "control": control_summaries, "augment": augment_summaries}


def tables(results: dict) -> str:
    """results.json as the Markdown tables of the README's results section."""
    text = []
    for name, make in (("compare", compare_tables), ("control", control_tables), ("between", between_tables),
                       ("augment", augment_tables)):
        if name in results:
            text += [f"## {name}", ""] + make(results[name])
    text.append("Wall time: " + ", ".join(f"{name} {results[name]['wall_s'] / 60:.1f} min" for name in SECTIONS
                                          if name in results))
    return "\n".join(text) + "\n"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def check_independent_dropout() -> None:
    """between and augment drop one condition of a label+pos model at sampling time: the models must have
    learnt that (train.py --p-drop label=P,pos=P, taken from its defaults and TRAIN_FLAGS)."""
    p_drop = new_run_settings(["--out", "unused", *TRAIN_FLAGS, "--cond", "label+pos"])["p_drop"]
    missing = [name for name in ("label", "pos") if not p_drop.get(name, 0) > 0]
    if missing:
        sys.exit(f"python -m experiments: the sections between and augment need label+pos models that drop each condition on "
                 f"its own, but train.py's --p-drop default does not drop {' and '.join(missing)}; make it do so "
                 f"or leave out those sections")


def read_results(path: str) -> dict:
    """The results.json of an earlier run of this protocol ({} if none); anything else stops in one line, untouched."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        sys.exit(f"python -m experiments: {path} cannot be read ({type(error).__name__}: cut off or not JSON); "
                 "move it away or choose another --out")
    found = results.get("format") if isinstance(results, dict) else None
    if found != RESULTS_FORMAT:
        sys.exit(f"python -m experiments: {path} holds results of another configuration (format {found!r}, not "
                 f"{RESULTS_FORMAT!r}); move it away or choose another --out (it is kept as it is)")
    for name, summaries in SUMMARIES.items():
        if name in results:
            results[name] = summaries(results[name])
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS,
                   help="the sections to run (none: only rewrite results.json's summaries and tables.md from it)")
    p.add_argument("--runs", default="runs/experiment", help="where the trained models go (not for git)")
    p.add_argument("--out", default="results/experiment", help="where results.json, tables.md, figures and sets go")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file: Inception FID/IS too")
    args = p.parse_args(argv)
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        sys.exit(f"python -m experiments: --inception-weights {args.inception_weights}: file not found")
    todo = [name for name in SECTIONS if name in args.sections]  # in this order: later sections reuse earlier models
    path = os.path.join(args.out, "results.json")
    # before any work: both folders can be written (--runs only where a section trains)
    check_folders("python -m experiments", {"--out": args.out, **({"--runs": args.runs} if todo else {})})
    if not todo and not os.path.isfile(path):
        sys.exit(f"python -m experiments: --sections without a section rewrites {path}'s summaries and tables, and "
                 f"there is no {path}: run a section first (e.g. --sections compare), or give the --out that holds one")
    stage = {"where": f"before section {todo[0]} (reading {path}, loading the digits, the evaluator)" if todo
             else f"rewriting {path}'s summaries", "rerun": todo}
    try:
        run_sections(args, path, todo, stage)
    except KeyboardInterrupt:  # the finished sections are in results.json, the trained models in --runs
        rerun = " ".join(["python -m experiments", "--sections", *stage["rerun"]]
                         + [f"--{k} {getattr(args, k)}" for k in ("runs", "out") if getattr(args, k) != p.get_default(k)])
        sys.exit(f"python -m experiments: interrupted {stage['where']}; {path} keeps every section finished before "
                 f"and {args.runs} every trained model (an unfinished one resumes from its last checkpoint): {rerun}")
    except (RunError, OSError) as error:  # a file it could not write (a full disk, a read-only --out, ...)
        sys.exit(f"python -m experiments: {' '.join(str(error).split())}")


def run_sections(args: argparse.Namespace, path: str, todo: list[str], stage: dict) -> None:
    """The sections `todo`, in order, each written to results.json when it ends; then tables.md. `stage` says
    where it is and what is left to run (for the message of a Ctrl-C)."""
    results = read_results(path)  # a rerun of some sections keeps the others' results (of this protocol)
    results["format"] = RESULTS_FORMAT
    if not todo:  # only the summaries of the sections kept, and the tables
        text = json.dumps(results, indent=1)
        write_atomically(path, lambda f: f.write(text.encode()))
    if {"between", "augment"} & set(todo):
        check_independent_dropout()
    if todo:
        os.makedirs(args.runs, exist_ok=True)
        digits = Digits.load()
        ctx = Context(args.runs, args.out, digits, Scorer(args.runs, digits, args.inception_weights))
    sections = {"compare": compare, "control": control, "between": between, "augment": augment}
    for i, name in enumerate(todo):
        stage.update(where=f"in section {name}", rerun=todo[i:])
        start = time.perf_counter()
        results[name] = sections[name](ctx)
        results[name]["wall_s"] = round(time.perf_counter() - start)
        print(f"{name}: {results[name]['wall_s'] / 60:.1f} min", flush=True)
        text = json.dumps(results, indent=1)
        write_atomically(path, lambda f: f.write(text.encode()))
    stage.update(where="writing tables.md, after every section", rerun=[])
    markdown = tables(results)
    write_atomically(os.path.join(args.out, "tables.md"), lambda f: f.write(markdown.encode()))
    print(markdown)
    print(f"results: {path}, {args.out}/tables.md")


if __name__ == "__main__":
    main()
