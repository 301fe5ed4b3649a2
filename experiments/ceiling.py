"""What do the walks allow? The readers' own ceiling for any guide. python -m experiments.ceiling RUN [RUN ...]

experiments.guide measures what each guide design keeps; this asks what any guide could keep. For each run and
pair it draws WALKS walks exactly as sample.py --boundary draws them (boundary.boundary_endpoints and
boundary.walk_images, walk seed 0, method soft, sample.py's sampler: the same endpoints and noise as the walks the
guide searches) at GRID_POINTS fixed values of s (steps of 1/32), and every reader reads every image:
experiments.guide's four (the evaluator, the second reader, the perceptron, and the vote of no architecture,
`experiments.guide.NearestNeighbours`: the share of each class among the 10 nearest of the readers' training digits,
in pixels, trained and tuned on nothing). Then per pair, pooled over the runs:

  where each reader places the boundary: its crossing on a walk (the first grid point where P(B) / (P(A) + P(B))
      reaches 0.5 after one below it), and its median offset in s from the evaluator's on the same walks;
  the ceiling: the share of walks with a grid point that a reader finds ambiguous (min(P(A), P(B)) >=
      metrics.AMBIGUOUS), per reader and for all four at once. A guide that knew every reader exactly would keep
      one point of each jointly ambiguous walk: 1 / that share walks per sample, every one ambiguous to all four;
  each guide on the grid: boundary.trusted and boundary.most_ambiguous (v3's rule) over a walk's grid points,
      with each run's guide of v1 and v3 (one guide), of v2, and `mixed_guide`, members of two architectures (two
      SmallClassifiers and a PixelMLP: the perceptron reader's architecture, so the nearest-neighbour reader is
      then the only reader of a kind no guide holds), and `mixup_guide`, v1's members trained with mixup between
      every pair of classes (decisions smoothed between digits); walks per kept point, and each reader's
      ambiguous share of the kept points.

The grid is coarser than the search's bisection (1/32 against 1/256), so a narrow ambiguous stretch can fall
between its points: the ceiling is a lower bound (results/guide/ceiling-fine/: --points 129 --walks 12
--pairs 4-9 2-7 on one run).

Outputs in --out (results/guide/ceiling/): results.json (with each kept point as [walk, grid index], the walk
counted over the runs' banks in run order: run r's walk i is r x walks + i),
tables.md, and every run's walks as banks/RUN/A-B/samples.npz (sample.py's format, walk and s per image; about
0.5 MB each) beside set.json (its key; a bank of the same key is read back). About 13 s per run and pair on the
2-core CPU for the compact U-Net at guidance 3 (about 36 s for small), plus the mixed and mixup guides' training
(three members of 300 steps each) per run on first use. --boundary-guidance W draws the walks at another weight.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/ceiling.py: run python -m experiments.ceiling RUN [RUN ...] (from the repository "
                     "root)")
import argparse
import json
import os
import sys
import time

import numpy as np

import boundary
import metrics
from plumbing import classifier, rundir
from plumbing.data import write_atomically
from plumbing.errors import RunError
from experiments import guide as guide_experiment
from experiments.common import Context, Digits, Scorer, check_folders, kept_set, set_key

WALKS, GRID_POINTS = 40, 33  # walks per run and pair; grid points per walk, s = 0, 1/32, .. 1
MIXED_SEEDS, MIXED_ARCHITECTURES = (1, 2, 3), ("cnn", "mlp", "cnn")  # mixed_guide's members (never seed 0)
MIXUP_SHARE = 0.5  # mixup_guide: the share of each batch that is mixed pairs of digits (the rest real digits)
GUIDE_FILE = "guide-{name}-{run}.pt"  # mixed and mixup, kept beside the readers (--readers), one per run
GUIDES = ("v3", "v2", "mixed", "mixup")  # v3: v1's members (one guide), read with v3's rule like the others
OUT = os.path.join("results", "guide", "ceiling")
SAMPLER = None  # sample.py's; tests give fewer steps


# ---------------------------------------------------------------------------
# The walks and the guides
# ---------------------------------------------------------------------------
def walk_bank(run: rundir.Run, a: int, b: int, out: str, walks: int = WALKS,
              points: int = GRID_POINTS, sampler: dict | None = None) -> np.ndarray:
    """Walks 0 .. walks-1 of sample.py --boundary A B (seed 0) at `points` grid values of s: uint8
    (walks, points, H, W, C), kept at out/banks/RUN/A-B; sampler None: sample.py's."""
    sampler = boundary.search_sampler("soft", sampler)
    ids = np.arange(walks)
    walk, s = np.repeat(ids, points), np.tile(np.linspace(0, 1, points, dtype=np.float32), walks)

    def make():
        endpoints = boundary.boundary_endpoints(run, a, b, 0, ids)
        images, cond = boundary.walk_images(run, endpoints, walk, s, "soft", a, sampler, 0)
        return dict(images=images, labels=np.full(len(s), a, np.int64), reference=np.full(len(s), -1, np.int64),
                    cond=cond, walk=walk, s=s, endpoints=endpoints[walk])

    key = set_key(run, kind="walk bank, python -m experiments.ceiling", pair=[a, b], walks=walks, points=points,
                  method="soft", sampler=sampler, seed=0)
    folder = os.path.join(out, "banks", guide_experiment.run_name(run), f"{a}-{b}")
    part = kept_set(folder, key, make)
    return part["images"].reshape(walks, points, *part["images"].shape[1:])


def kept_guide(run: rundir.Run, directory: str, name: str, tag: str, members) -> classifier.Ensemble:
    """The guide `name` of this run (seeds MIXED_SEEDS), kept in `directory` as GUIDE_FILE (not in the run: no
    design of sample.py reads it); members() trains its members where no file of this tag is kept."""
    path = os.path.join(directory, GUIDE_FILE.format(name=name, run=guide_experiment.run_name(run)))
    if os.path.exists(path):
        guide = classifier.load_ensemble(path)
        if guide.tag == tag and guide.seeds == list(MIXED_SEEDS):
            return guide
    guide = classifier.Ensemble(members(), list(MIXED_SEEDS), tag)
    classifier.save_ensemble(guide, path)
    return guide


def mixed_guide(run: rundir.Run, directory: str) -> classifier.Ensemble:
    """A guide of two architectures: SmallClassifier, PixelMLP, SmallClassifier (seeds MIXED_SEEDS), each trained
    with the classifier's recipe for boundary.GUIDE_STEPS on the run's training digits, read as trained (T = 1)."""
    return kept_guide(run, directory, "mixed", f"{run.config['run_id']} mixed {MIXED_ARCHITECTURES}", lambda: [
        classifier.train_classifier(run.images, run.labels, len(run.config["data"]["class_names"]),
                                    steps=boundary.GUIDE_STEPS, seed=seed, device=run.device, architecture=architecture)
        for seed, architecture in zip(MIXED_SEEDS, MIXED_ARCHITECTURES)])


def mixup_guide(run: rundir.Run, directory: str) -> classifier.Ensemble:
    """v1's members (three width-16 SmallClassifiers, seeds MIXED_SEEDS) trained with mixup between every pair of
    classes (Zhang et al. 2018; classifier.mixup_pairs, soft labels): MIXUP_SHARE of each batch is a blend
    lam x_a + (1 - lam) x_b labelled lam e_a + (1 - lam) e_b, so a member's P(B) rises gradually between digits
    instead of flipping; the blends are drawn anew per member (its seed), the same number as the training digits."""
    k = len(run.config["data"]["class_names"])
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]  # every pair alike: tuned on no pair asked

    def members():
        out = []
        for seed in MIXED_SEEDS:
            blends, soft = classifier.mixup_pairs(run.images, run.labels, pairs, len(run.images), k, seed=seed)
            targets = np.concatenate([np.eye(k, dtype=np.float32)[run.labels], soft])  # (2N, K)
            out.append(classifier.train_classifier(np.concatenate([run.images, blends]), targets, k,
                                                   steps=boundary.GUIDE_STEPS, seed=seed, device=run.device,
                                                   real_count=len(run.images), real_share=1 - MIXUP_SHARE))
        return out
    return kept_guide(run, directory, "mixup", f"{run.config['run_id']} mixup {MIXUP_SHARE}", members)


def run_guides(run: rundir.Run, readers: dict, directory: str) -> dict:
    """GUIDES of this run, each checked to hold no reader's weights."""
    guides = dict(v3=boundary.boundary_guide(run, design="v3"), v2=boundary.boundary_guide(run, design="v2"),
                  mixed=mixed_guide(run, directory), mixup=mixup_guide(run, directory))
    for guide in guides.values():
        boundary.check_guide(guide, guide_experiment.networks(readers))
    return guides


# ---------------------------------------------------------------------------
# The measures (each on one bank: W walks of P points)
# ---------------------------------------------------------------------------
def on_grid(prob_fn, bank: np.ndarray, a: int, b: int) -> np.ndarray:
    """prob_fn(images (N, ...)) -> (N, K) on every bank image: (W, P, 2), each point's (P(A), P(B))."""
    w, p = bank.shape[:2]
    return prob_fn(bank.reshape(w * p, *bank.shape[2:]))[:, [a, b]].reshape(w, p, 2)


def ambiguous(readings: np.ndarray) -> np.ndarray:
    """(..., 2) (P(A), P(B)) -> (...) bool: min(P(A), P(B)) >= metrics.AMBIGUOUS."""
    return readings.min(axis=-1) >= metrics.AMBIGUOUS


def crossings(readings: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(W, P, 2) -> (W,) the first grid s where P(B) / (P(A) + P(B)) reaches 0.5 after a point below it (NaN: none)."""
    share_b = readings[..., 1] / np.maximum(readings.sum(axis=-1), 1e-12)  # (W, P)
    up = (share_b[:, :-1] < 0.5) & (share_b[:, 1:] >= 0.5)  # (W, P - 1)
    return np.where(up.any(axis=1), s[1:][up.argmax(axis=1)], np.nan)


def member_readings(guide, bank: np.ndarray, a: int, b: int) -> np.ndarray:
    """Each guide member's (P(A), P(B)) at every bank point: (W, P, M, 2) (boundary.guide_readings per point)."""
    w, p = bank.shape[:2]
    return boundary.guide_readings(guide, bank.reshape(w * p, *bank.shape[2:]), a, b).reshape(w, p, -1, 2)


def guide_on_grid(readings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, P, M, 2) the guide members' readings -> kept (W,): a grid point passes boundary.trusted; pick (W,): the
    point boundary.most_ambiguous keeps (v3's rule, over the grid's points instead of the search's)."""
    kept = np.array([boundary.trusted(walk).any() for walk in readings])
    pick = np.array([boundary.most_ambiguous(walk) for walk in readings])
    return kept, pick


def pair_cells(banks: list[np.ndarray], readers: dict, guides: list[dict], a: int, b: int) -> dict:
    """One pair over the runs' banks (and each run's guides): what results.json keeps per pair."""
    s = np.linspace(0, 1, banks[0].shape[1])
    read = {name: np.concatenate([on_grid(lambda x: guide_experiment.probabilities(r, x), bank, a, b)
                                  for bank in banks])
            for name, r in readers.items()}  # name -> (runs * W, P, 2)
    crossing = {name: crossings(v, s) for name, v in read.items()}
    amb = {name: ambiguous(v) for name, v in read.items()}  # name -> (runs * W, P)
    joint = np.logical_and.reduce(list(amb.values()))  # (runs * W, P)
    cell = dict(walks=len(joint), offset_from_evaluator={
        name: float(np.nanmedian(c - crossing["evaluator"])) if np.isfinite(c - crossing["evaluator"]).any() else None
        for name, c in crossing.items()},
        crossed={name: float(np.isfinite(c).mean()) for name, c in crossing.items()},
        walks_with_ambiguous={name: float(v.any(axis=1).mean()) for name, v in amb.items()},
        walks_with_joint=float(joint.any(axis=1).mean()), guides={})
    for name in GUIDES if guides else ():  # (no guides: the readers' measures alone)
        member = np.concatenate([member_readings(g[name], bank, a, b) for g, bank in zip(guides, banks)])
        kept, pick = guide_on_grid(member)
        at_pick = {reader: amb[reader][np.arange(len(pick)), pick][kept] for reader in readers}  # (kept,)
        cell["guides"][name] = dict(kept=int(kept.sum()), walks_per_kept=len(kept) / kept.sum() if kept.any() else None,
                                    readers={reader: float(v.mean()) if kept.any() else None
                                             for reader, v in at_pick.items()},
                                    all_readers=float(np.logical_and.reduce(list(at_pick.values())).mean())
                                    if kept.any() else None,
                                    points=[[int(w), int(p)] for w, p in zip(np.flatnonzero(kept), pick[kept])])
    return cell


def all_pairs(cells: dict) -> dict:
    """Every pair's kept points together, per guide: walks per kept point and each reader's share, pooled."""
    out = {}
    for name in GUIDES:
        kept = sum(c["guides"][name]["kept"] for c in cells.values())
        walks = sum(c["walks"] for c in cells.values())
        shares = {reader: sum((c["guides"][name]["readers"][reader] or 0) * c["guides"][name]["kept"]
                              for c in cells.values()) / kept if kept else None
                  for reader in next(iter(cells.values()))["walks_with_ambiguous"]}
        out[name] = dict(kept=kept, walks_per_kept=walks / kept if kept else None, readers=shares)
    return out


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------
def ceiling_experiment(run_dirs: list[str], pairs=guide_experiment.PAIRS, out: str = OUT,
                       readers_dir: str = guide_experiment.READERS_DIR, walks: int = WALKS,
                       points: int = GRID_POINTS, guidance: float | None = None) -> dict:
    """Everything the module's docstring says, for the runs in run_dirs (their walks at label guidance `guidance`,
    None: sample.py's); returns what results.json holds."""
    start = time.perf_counter()
    sampler = guide_experiment.walk_sampler(SAMPLER, guidance)
    unguided = boundary.search_sampler("soft", sampler)["guidance"]["label"] == 1  # one network call a step, not two
    per_image = 0.005 if unguided else 0.01  # seconds, for the progress line
    digits = Digits.load()
    runs = [rundir.load_run(path) for path in run_dirs]
    guide_experiment.check_runs(runs, digits)  # before any reader trains
    os.makedirs(readers_dir, exist_ok=True)
    ctx = Context(readers_dir, out, digits, Scorer(readers_dir, digits, None))
    readers = guide_experiment.readers(ctx)
    guides = []
    for run in runs:
        print(f"{guide_experiment.run_name(run)}: the guides (trained on first use, then kept)", flush=True)
        guides.append(run_guides(run, readers, readers_dir))
    result = dict(runs=[guide_experiment.run_name(r) for r in runs], walks=walks, points=points, method="soft",
                  sampler=sampler or "sample.py's", knn_k=guide_experiment.KNN_K, mixed=dict(seeds=list(MIXED_SEEDS),
                                                                          architectures=list(MIXED_ARCHITECTURES)),
                  mixup=dict(seeds=list(MIXED_SEEDS), share=MIXUP_SHARE),
                  readers={name: guide_experiment.reader_accuracy(ctx, r) for name, r in readers.items()}, pairs={})
    for a, b in pairs:
        banks = []
        for run in runs:
            print(f"{guide_experiment.run_name(run)} {a}-{b}: {walks} walks of {points} points (made on first use: "
                  f"about {walks * points * per_image:.0f} s on a 2-core CPU for the compact U-Net, then kept)",
                  flush=True)
            banks.append(walk_bank(run, a, b, out, walks, points, sampler))
        result["pairs"][f"{a}-{b}"] = pair_cells(banks, readers, guides, a, b)
    result["all pairs"] = all_pairs(result["pairs"])
    result["wall_s"] = round(time.perf_counter() - start)
    return result


def ceiling_tables(r: dict) -> list[str]:
    """results.json as Markdown (tables.md)."""
    names = list(r["readers"])
    text = [f"Walks of sample.py --boundary (method {r['method']}, sampler {r['sampler']}, walk seed 0), {r['walks']} "
            f"per run and pair at {r['points']} grid points; runs {', '.join(r['runs'])}. Readers' accuracy on the "
            "1,000 test digits: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in r["readers"].items()) + ".", "",
            "Where each reader places the boundary: its median crossing minus the evaluator's on the same walks, in "
            "s (positive: later, nearer B); and the ceiling: the share of walks with a grid point that the reader "
            "finds ambiguous, and that all four find ambiguous at once (1 / it: walks per sample for a guide that "
            "knew the readers).", "",
            "| pair | " + " | ".join(f"{n}: offset" for n in names) + " | " + " | ".join(f"{n}: walks" for n in names)
            + " | all four: walks |", "|---|" + "---|" * (2 * len(names) + 1)]
    for pair, c in r["pairs"].items():
        text.append(f"| {pair} | " + " | ".join(f"{c['offset_from_evaluator'][n]:+.3f}"
                                                if c["offset_from_evaluator"][n] is not None else "-" for n in names)
                    + " | " + " | ".join(guide_experiment.percent(c["walks_with_ambiguous"][n]) for n in names)
                    + f" | {guide_experiment.percent(c['walks_with_joint'])} |")
    text += ["", "Each guide on the grid (boundary.trusted and boundary.most_ambiguous over a walk's grid points): "
             "walks per kept point, and each reader's ambiguous share of the kept points; all pairs pooled last.", "",
             "| guide | pair | walks per kept | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for name in GUIDES:
        for pair, c in [*r["pairs"].items(), ("all pairs", None)]:
            g = r["all pairs"][name] if c is None else c["guides"][name]
            text.append(f"| {name} | {pair} | {guide_experiment.number(g['walks_per_kept'])} | "
                        + " | ".join(guide_experiment.percent(g["readers"][n]) for n in names) + " |")
    wall = f"Wall time of the call that wrote this: {r['wall_s'] / 60:.1f} min (kept banks are read back, not made)"
    return text + ["", wall, ""]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="label+pos runs of train.py on the embedded MNIST sample")
    p.add_argument("--walks", type=int, default=WALKS, help=f"walks per run and pair (default {WALKS})")
    p.add_argument("--points", type=int, default=GRID_POINTS,
                   help=f"grid points per walk, s = 0 .. 1 (default {GRID_POINTS}: steps of 1/32)")
    p.add_argument("--pairs", nargs="+", default=[f"{a}-{b}" for a, b in guide_experiment.PAIRS], metavar="A-B",
                   help="class pairs (default: experiments.guide's)")
    p.add_argument("--out", default=OUT, help=f"results.json, tables.md and the banks (default {OUT})")
    p.add_argument("--readers", default=guide_experiment.READERS_DIR,
                   help=f"where the readers are kept (default {guide_experiment.READERS_DIR})")
    p.add_argument("--boundary-guidance", type=float, default=None, metavar="W",
                   help=guide_experiment.BOUNDARY_GUIDANCE_HELP)
    args = p.parse_args(argv)
    weight = guide_experiment.check_boundary_guidance(args.boundary_guidance, "python -m experiments.ceiling")
    if args.walks < 1:
        sys.exit(f"python -m experiments.ceiling: --walks {args.walks}: give at least one walk")
    if args.points < 3:
        sys.exit(f"python -m experiments.ceiling: --points {args.points}: a walk needs at least 3 grid points")
    pairs = [guide_experiment.parse_pair(text, "python -m experiments.ceiling") for text in args.pairs]
    check_folders("python -m experiments.ceiling", {"--out": args.out, "--readers": args.readers})
    try:  # a pair's banks of every run in memory at once: a 28x28 digit and the readers' and guides' float readings
        rundir.check_memory({f"--walks {args.walks} --points {args.points}": len(args.runs) * args.walks * args.points
                             * (28 * 28 + 8 * 10 * 8)})
        result = ceiling_experiment(args.runs, pairs, args.out, args.readers, args.walks, args.points, weight)
        markdown = "\n".join(ceiling_tables(result))
        text = json.dumps(result, indent=1)
        write_atomically(os.path.join(args.out, "results.json"), lambda f: f.write(text.encode()))
        write_atomically(os.path.join(args.out, "tables.md"), lambda f: f.write(markdown.encode()))
    except KeyboardInterrupt:
        sys.exit(f"python -m experiments.ceiling: interrupted; the banks made so far are kept in {args.out}/banks")
    except (RunError, ValueError, OSError) as error:
        sys.exit(f"python -m experiments.ceiling: {' '.join(str(error).split())}")
    print(markdown)
    print(f"results: {os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'tables.md')}, the banks in "
          f"{os.path.join(args.out, 'banks')}")
    return result


if __name__ == "__main__":
    main()
