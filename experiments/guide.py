"""Does the guide's verdict hold for classifiers it does not contain? python -m experiments.guide RUN [RUN ...]

The filter of sample.py --boundary (boundary.trusted: every guide member reads a found point as ambiguous
between A and B) keeps what the guide's members find ambiguous; with the guide of three width-16 seeds
(design v1) it may keep what that one kind of classifier finds ambiguous, not what any classifier would. Here
each guide design (boundary.GUIDE_DESIGNS: v1, v2 and v3, the default) makes K trusted boundary samples per pair
on each given run, exactly as sample.py --boundary makes them (boundary.trusted_boundary_samples, its default
method and sampler, walk seed 0; each design's point), and four readers outside every guide read them:

  evaluator  the experiment's evaluator (plumbing/classifier.py's SmallClassifier, width 16, seed 0)
  second     between.py's second reader (SmallClassifier, width 32, seed 7)
  mlp        a perceptron on the pixels (classifier.PixelMLP, seed 5, no convolutions): an architecture that no
             guide design was chosen with
  knn        a vote of the 10 nearest digits in pixels (`NearestNeighbours`): no architecture, no training

the networks trained, with the classifier's one recipe, on the training digits without the noise floor's
(experiments/common.py; the vote reads the same digits), and kept in --readers (runs/experiment/, which
python -m experiments shares); every guide is checked against each network (boundary.check_guide). The runs:
label+pos models of different seeds trained on the embedded MNIST sample's training digits (python -m experiments'
runs/experiment/label-pos-s0 .. s2, or train.py --seed S runs); each keeps its guides in its directory
(boundary.GUIDE_FILES).

Per design, pair and reader: the share of the trusted samples that the reader finds ambiguous (min(P(A), P(B))
>= metrics.AMBIGUOUS), pooled over the runs, per run, their range and a 95% logit t-interval over the runs
(metrics.logit_t_interval; each run its own model, guide and walks); the share all four readers find ambiguous;
the walks tried per trusted sample and the seconds (per run, and per 100 trusted samples). Beside them, per pair,
between.py's real reference (`real_reference`: the real digits of A and B that no reader trained on and that the
evaluator finds most ambiguous, at least 20): each reader's ambiguous share of them, and the share of its test
digits each design's filter keeps (the guides trained on the floor's digits, not on the test digits).

Outputs in --out (results/guide/): results.json, tables.md, and every set as sets/RUN/DESIGN-A-B/samples.npz
(sample.py's format, with guide_prob and trusted; results.json names it relative to --out) beside set.json (what
made it, its walks and seconds). A set whose set.json holds the same key (run, guide weights, pair, K, sampler) is
read back instead of being made again, its seconds those of when it was made; the readers' scores are recomputed.
--boundary-guidance W draws the walks at another weight than sample.py's 3 (a set's key holds it).

Time on the 2-core CPU: about 0.4 s per walk tried with the small U-Net (docs/SPEED.md: 127 s for 345 walks with
sample.py's sampler, 14 images per walk that crosses), 0.2 s with the compact one (results/guide/: 45 s per 100
trusted samples at 2.2 walks each) and 0.1 s at --boundary-guidance 1; and runs x designs x pairs x K x (walks per
trusted sample) walks: at the default K = 50 with 3 runs, 3 designs, 5 pairs and 2.3-5 walks per trusted sample,
8,000-11,000 walks, about an hour with the small U-Net (K = 20 with 2 runs: 17 min on 2026-12-07 with the guides'
training, 12.6 min without);
plus, on first use, each guide's training (three members of 300 steps) and the three readers'.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/guide.py: run python -m experiments.guide RUN [RUN ...] (from the repository root)")
import sys

try:  # a Ctrl-C while the modules load (torch: seconds) is one line too
    import argparse
    import hashlib
    import json
    import math
    import os
    import time

    import numpy as np
    import scipy.special
    import torch

    import boundary
    import metrics
    from plumbing import classifier, outputs, rundir
    from plumbing.data import write_atomically
    from plumbing.errors import RunError
    from experiments import between
    from experiments.common import Context, Digits, Scorer, check_folders, kept_classifier, load_part, set_key
except KeyboardInterrupt:
    raise SystemExit("python -m experiments.guide: interrupted while starting, before anything ran") from None

# The command's settings (its flags' defaults; tests shrink SAMPLER)
PAIRS = ((4, 9), (3, 5), (7, 1), (8, 9), (2, 7))  # between.py's pairs (its three, then the two it found most confused)
K = 50  # trusted samples asked per run, design and pair (boundary.MAX_WALKS_PER_SAMPLE walks per sample at most)
DESIGNS = tuple(boundary.GUIDE_DESIGNS)  # v1, v2 and v3 (the default)
WALK_SEED = 0  # sample.py's default --seed
SAMPLER = None  # sample.py's (boundary_samples' defaults); tests give fewer steps
METHOD = boundary.DEFAULT_BOUNDARY_METHOD
OUT, READERS_DIR = os.path.join("results", "guide"), os.path.join("runs", "experiment")
MLP_READER_SEED, MLP_READER_FILE = 5, "mlp-reader-without-floor.pt"  # a seed no other classifier here uses
READERS = ("evaluator", "second", "mlp", "knn")
KNN_K = 10  # the nearest-neighbour reader's neighbours
SET_KIND = "trusted boundary samples, python -m experiments.guide"  # in every set's key
ROUNDS = 2  # in every set's key: boundary.walks_to_try's rule (2: a round at most doubles the walks, 2026-12-07)


# ---------------------------------------------------------------------------
# The readers: outside every guide
# ---------------------------------------------------------------------------
def mlp_reader(ctx: Context) -> classifier.FeatureNetwork:
    """The reader of another architecture: classifier.PixelMLP, trained with the classifier's recipe on the
    evaluator's digits (the training digits without the floor's), seed MLP_READER_SEED; kept in ctx.runs."""
    fit = ctx.digits.evaluator_train()
    return kept_classifier(os.path.join(ctx.runs, MLP_READER_FILE), ctx.digits.images[fit], ctx.digits.labels[fit],
                           seed=MLP_READER_SEED, architecture="mlp")


class NearestNeighbours:
    """P(c | x) = the share of class c among the k training digits nearest to x (Euclidean, pixels in [0, 1]).

    A classic MNIST classifier with no weights and no training, whose only choice is the pixel distance: it finds a
    digit ambiguous (at least 2 of its 10 nearest training digits of each class) when training digits of both
    classes lie nearest it. No guide can hold it (a guide's members are networks)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, k: int = KNN_K, num_classes: int = 10):
        self.bank = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)  # (N, D)
        self.labels, self.k, self.num_classes = np.asarray(labels), k, num_classes

    def prob(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> (N, K) class shares of the k nearest training digits."""
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)  # (N, D)
        out = np.zeros((len(x), self.num_classes))
        for start in range(0, len(x), 1024):
            nearest = torch.cdist(x[start:start + 1024], self.bank).topk(self.k, largest=False).indices.numpy()
            for c in range(self.num_classes):
                out[start:start + 1024, c] = (self.labels[nearest] == c).mean(axis=1)
        return out


def readers(ctx: Context) -> dict:
    """READERS: the evaluator, between.py's second reader, the perceptron, and the vote on the evaluator's digits."""
    fit = ctx.digits.evaluator_train()
    return dict(evaluator=ctx.scorer.net, second=between.second_reader(ctx), mlp=mlp_reader(ctx),
                knn=NearestNeighbours(ctx.digits.images[fit], ctx.digits.labels[fit]))


def networks(nets: dict) -> list[classifier.FeatureNetwork]:
    """The readers that are networks: what boundary.check_guide compares a guide's members with."""
    return [net for net in nets.values() if not isinstance(net, NearestNeighbours)]


def probabilities(net, images: np.ndarray) -> np.ndarray:
    """A reader's class probabilities of uint8 images (N, H, W, C) -> (N, K): a network's softmax, the vote's
    shares (K = 10 for no image)."""
    if isinstance(net, NearestNeighbours):
        return net.prob(images)
    return scipy.special.softmax(net.logits(images), axis=1) if len(images) else np.zeros((0, 10))


def reader_accuracy(ctx: Context, net) -> float:
    """The reader's accuracy on the 1,000 test digits (what it reads right where no one trained)."""
    test = ctx.digits.test
    return float((probabilities(net, ctx.digits.images[test]).argmax(1) == ctx.digits.labels[test]).mean())


# ---------------------------------------------------------------------------
# The runs and their guides
# ---------------------------------------------------------------------------
def run_name(run: rundir.Run) -> str:
    return os.path.basename(os.path.normpath(run.dir))


def check_runs(runs: list[rundir.Run], digits: Digits) -> None:
    """Every run trained on the embedded sample's training digits (what the readers know and the real reference
    leaves out), and no two runs of one name (the sets are kept by it)."""
    training = {image.tobytes() for image in digits.images[digits.train]}
    names = [run_name(run) for run in runs]
    for run, name in zip(runs, names):
        if names.count(name) > 1:
            raise ValueError(f"two runs are named {name}: their sets would share sets/{name}/; give runs of "
                             "different names")
        if run.images.shape[1:] != digits.images.shape[1:] or not all(x.tobytes() in training for x in run.images):
            raise ValueError(f"{run.dir} was not trained on the embedded MNIST sample's training digits (train.py "
                             "--data mnist-sample): the readers and the real reference are made from those digits; "
                             "give such a run")


def guide_digest(guide: classifier.Ensemble) -> str:
    """A guide's identity in a set's key: the members' weights and temperatures (a guide trained again, even
    with the same settings, is another guide: its sets are made again)."""
    digest = hashlib.sha1()
    for member, temperature in zip(guide.members, guide.temperatures):
        for name, value in member.model.state_dict().items():
            digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
        digest.update(repr(float(temperature)).encode())
    return digest.hexdigest()


def timed_guide(run: rundir.Run, design: str) -> tuple[classifier.Ensemble, float]:
    """boundary.boundary_guide of this design (trained once, kept in the run directory) and its seconds (loading
    only, where it was kept)."""
    start = time.perf_counter()
    guide = boundary.boundary_guide(run, design=design)
    return guide, time.perf_counter() - start


def guide_record(guide: classifier.Ensemble, seconds: float) -> dict:
    return dict(seeds=guide.seeds, widths=[m.model.config.get("width") for m in guide.members],
                temperatures=[round(t, 4) for t in guide.temperatures], seconds=round(seconds, 1))


# ---------------------------------------------------------------------------
# The sets: K trusted samples per run, design and pair, made once
# ---------------------------------------------------------------------------
def set_path(run: rundir.Run, design: str, a: int, b: int) -> str:
    """Where the set is kept, relative to --out."""
    return os.path.join("sets", run_name(run), f"{design}-{a}-{b}")


def walk_sampler(base: dict | None, weight: float | None) -> dict | None:
    """The sampler of the walks: `base` (None: sample.py's), at guidance weight `weight` on the label (None or
    sample.py's own 3: base unchanged, so that the kept sets of sample.py's walks are read back)."""
    if weight is None or weight == boundary.DEFAULT_GUIDANCE:
        return base
    return dict(base or {}, guidance=weight)


def trusted_set(out: str, run: rundir.Run, design: str, guide, a: int, b: int, k: int,
                sampler: dict | None = None) -> tuple[dict, dict]:
    """The run's K trusted samples between a and b with this guide (boundary.trusted_boundary_samples, as sample.py
    --boundary makes them; sampler None: its sampler), kept at out/set_path; returns the part and what making it
    took: tried, crossed, trusted, seconds."""
    folder = os.path.join(out, set_path(run, design, a, b))
    npz, meta = os.path.join(folder, "samples.npz"), os.path.join(folder, "set.json")
    point = boundary.GUIDE_DESIGNS[design].point  # (in the key where it is not v1's and v2's s*: their sets stay valid)
    key = json.loads(json.dumps(set_key(run, kind=SET_KIND, design=design, guide=guide_digest(guide), pair=[a, b],
                                        k=k, method=METHOD, sampler=sampler, seed=WALK_SEED, rounds=ROUNDS,
                                        **({} if point == "crossing" else {"point": point}))))
    if os.path.exists(npz) and os.path.exists(meta):
        with open(meta) as f:
            kept = json.load(f)
        if kept.get("key") == key:
            return load_part(npz), kept["made"]
    start = time.perf_counter()
    part, counts = boundary.trusted_boundary_samples(run, a, b, k, METHOD, WALK_SEED, guide, sampler, point=point)
    made = dict(tried=counts["tried"], crossed=counts["crossed"], trusted=counts["trusted"],
                seconds=round(time.perf_counter() - start, 2))
    write_atomically(npz, lambda f: f.write(outputs.samples_npz(part)))
    write_atomically(meta, lambda f: f.write(json.dumps(dict(key=key, made=made), indent=1).encode()))  # last
    return part, made


def read_set(part: dict, a: int, b: int, nets: dict) -> dict:
    """Each reader on a set's (trusted) samples: how many it finds ambiguous (min(P(A), P(B)) >= AMBIGUOUS),
    its mean min(P(A), P(B)) and mean P(A) + P(B); and how many every reader finds ambiguous."""
    n = len(part["images"])
    every = np.ones(n, bool)
    out = dict(n=n, readers={})
    for name, net in nets.items():
        p = probabilities(net, part["images"])  # (n, 10)
        low = np.minimum(p[:, a], p[:, b])  # (n,)
        every &= low >= metrics.AMBIGUOUS
        out["readers"][name] = dict(ambiguous=int((low >= metrics.AMBIGUOUS).sum()),
                                    ambiguity=float(low.mean()) if n else None,
                                    mass=float((p[:, a] + p[:, b]).mean()) if n else None)
    out["all_readers"] = int(every.sum())
    return out


# ---------------------------------------------------------------------------
# Over the runs
# ---------------------------------------------------------------------------
def share_over_runs(counts: list[int], ns: list[int]) -> dict:
    """A share over the runs: pooled (sum of counts over sum of n), each run's, their range, and a 95% logit
    t-interval over the runs (metrics.logit_t_interval; where there are two runs or more, each with samples)."""
    per_run = [c / n if n else None for c, n in zip(counts, ns)]
    given = [v for v in per_run if v is not None]
    interval = (list(metrics.logit_t_interval(counts, ns)[1:]) if len(ns) > 1 and all(n > 0 for n in ns) else None)
    return dict(share=sum(counts) / sum(ns) if sum(ns) else None, runs=per_run,
                range=[min(given), max(given)] if given else None, interval=interval)


def summary(cells: list[dict]) -> dict:
    """One design and pair (or every pair), over the runs: cells are the runs' sets (made and read), in run order.
    A run's cell of several pairs is summed first (`merge`)."""
    tried, trusted = [c["tried"] for c in cells], [c["trusted"] for c in cells]
    seconds, ns = [c["seconds"] for c in cells], [c["read"]["n"] for c in cells]
    out = dict(tried=sum(tried), trusted=sum(trusted), crossed=sum(c["crossed"] for c in cells),
               walks_per_trusted=sum(tried) / sum(trusted) if sum(trusted) else None,
               walks_per_trusted_runs=[t / k if k else None for t, k in zip(tried, trusted)],
               seconds=round(sum(seconds), 1), seconds_runs=seconds,
               seconds_per_100=100 * sum(seconds) / sum(trusted) if sum(trusted) else None)
    out["readers"] = {name: share_over_runs([c["read"]["readers"][name]["ambiguous"] for c in cells], ns)
                      for name in READERS}
    out["all_readers"] = share_over_runs([c["read"]["all_readers"] for c in cells], ns)
    return out


def merge(cells: list[dict]) -> dict:
    """Several pairs' cells of one run as one: counts and seconds added."""
    read = dict(n=sum(c["read"]["n"] for c in cells), all_readers=sum(c["read"]["all_readers"] for c in cells),
                readers={name: dict(ambiguous=sum(c["read"]["readers"][name]["ambiguous"] for c in cells))
                         for name in READERS})
    return dict({k: sum(c[k] for c in cells) for k in ("tried", "crossed", "trusted", "seconds")}, read=read)


# ---------------------------------------------------------------------------
# The case whose answer is known: real ambiguous digits
# ---------------------------------------------------------------------------
def real_rows(ctx: Context, near: between.Nearness, nets: dict, guides: dict, a: int, b: int) -> dict:
    """between.real_reference for the pair (its evaluator and second reader's statistics, nearness), with the
    perceptron's and the vote's ambiguous share of the same digits, and per design the share of its test digits that
    the filter (boundary.trusted with each run's guide of that design) keeps, averaged over the runs' guides."""
    first = next(iter(guides.values()))[DESIGNS[0]] if guides else None
    reference = between.real_reference(ctx, near, nets["second"], first, a, b)
    digits = np.array(reference["digits"])
    for name in ("mlp", "knn"):  # (between.real_reference reads the evaluator and the second reader)
        p = probabilities(nets[name], ctx.digits.images[digits])
        reference[name] = dict(ambiguous_share=float((np.minimum(p[:, a], p[:, b]) >= metrics.AMBIGUOUS).mean()))
    test = digits[np.isin(digits, ctx.digits.test)]
    reference["kept_by_filter"] = {}
    for design in DESIGNS:
        shares = [float(boundary.trusted(boundary.guide_readings(g[design], ctx.digits.images[test], a, b)).mean())
                  for g in guides.values()] if len(test) else []
        reference["kept_by_filter"][design] = float(np.mean(shares)) if shares else None
    return reference


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------
def run_guides(runs: list[rundir.Run], nets: dict) -> tuple[dict, dict]:
    """Every run's guide of every design (boundary.boundary_guide: trained once, kept in the run directory), each
    checked to hold no reader's weights; returns {run: {design: guide}} and what results.json records of them."""
    guides, records = {}, {}
    for run in runs:
        guides[run_name(run)], records[run_name(run)] = {}, {}
        for design in DESIGNS:
            guide, seconds = timed_guide(run, design)
            boundary.check_guide(guide, networks(nets))
            guides[run_name(run)][design] = guide
            records[run_name(run)][design] = guide_record(guide, seconds)
    return guides, records


def guide_experiment(run_dirs: list[str], k: int = K, pairs=PAIRS, out: str = OUT,
                     readers_dir: str = READERS_DIR, guidance: float | None = None) -> dict:
    """Everything the module's docstring says, for the runs in run_dirs (their walks at label guidance `guidance`,
    None: sample.py's); returns what results.json holds."""
    start = time.perf_counter()
    sampler = walk_sampler(SAMPLER, guidance)
    digits = Digits.load()
    runs = [rundir.load_run(path) for path in run_dirs]
    check_runs(runs, digits)  # before any reader trains
    os.makedirs(readers_dir, exist_ok=True)
    print(f"the readers: the evaluator, the second reader, the perceptron (trained on first use, then kept in "
          f"{readers_dir}), the nearest-neighbour vote", flush=True)
    ctx = Context(readers_dir, out, digits, Scorer(readers_dir, digits, None))
    nets = readers(ctx)
    print(f"the guides of {', '.join(DESIGNS)} per run (trained on first use, then kept in the run)", flush=True)
    guides, records = run_guides(runs, nets)
    designs = {d: dict(widths=list(boundary.GUIDE_DESIGNS[d].widths),
                       calibration_share=boundary.GUIDE_DESIGNS[d].calibration_share,
                       point=boundary.GUIDE_DESIGNS[d].point) for d in DESIGNS}
    result = dict(k=k, pairs=[f"{a}-{b}" for a, b in pairs], designs=designs, runs=[run_name(r) for r in runs],
                  method=METHOD, sampler=sampler or "sample.py's", guides=records,
                  readers={name: dict(test_accuracy=reader_accuracy(ctx, net)) for name, net in nets.items()},
                  sets={d: {} for d in DESIGNS}, summary={d: {} for d in DESIGNS}, real={})
    for a, b in pairs:
        pair = f"{a}-{b}"
        for design in DESIGNS:
            cells = []
            for run in runs:
                part, made = trusted_set(out, run, design, guides[run_name(run)][design], a, b, k, sampler)
                cells.append(dict(made, read=read_set(part, a, b, nets),
                                  path=os.path.join(set_path(run, design, a, b), "samples.npz")))
                print(f"{run_name(run)} {design} {pair}: {made['trusted']} trusted of {made['tried']} walks, "
                      f"{made['seconds']:.1f} s", flush=True)
            result["sets"][design][pair] = {run_name(r): c for r, c in zip(runs, cells)}
            result["summary"][design][pair] = summary(cells)
    for design in DESIGNS:
        per_run = [merge([result["sets"][design][p][run_name(r)] for p in result["pairs"]]) for r in runs]
        result["summary"][design]["all pairs"] = summary(per_run)
    near = between.Nearness(ctx, digits.images[digits.train])  # (real_reference finds a digit's row among these)
    for a, b in pairs:
        result["real"][f"{a}-{b}"] = real_rows(ctx, near, nets, guides, a, b)
    result["wall_s"] = round(time.perf_counter() - start)
    return result


def number(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def percent(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def share_cell(m: dict) -> str:
    """A share_over_runs as 'pooled% [low, high] (run, run, ..)'."""
    if m["share"] is None:
        return "-"
    interval = f" [{100 * m['interval'][0]:.0f}, {100 * m['interval'][1]:.0f}]" if m["interval"] else ""
    runs = ", ".join("-" if v is None else f"{100 * v:.0f}" for v in m["runs"])
    return f"{percent(m['share'])}{interval} ({runs})"


def guides_table(r: dict) -> list[str]:
    """The readers' test accuracy, and each run's guides: widths, temperatures, seconds to make them."""
    accuracy = ", ".join(f"{name} {100 * m['test_accuracy']:.1f}%" for name, m in r["readers"].items())
    text = [f"Trusted boundary samples (`boundary.trusted_boundary_samples`, method {r['method']}, sampler "
            f"{r['sampler']}), {r['k']} asked per run, design and pair; runs {', '.join(r['runs'])}. Readers "
            f"outside every guide, accuracy on the 1,000 test digits: {accuracy}.", "",
            "| run | design | widths | temperatures | guide s (loading only where kept) |", "|---|---|---|---|---|"]
    for run, designs in r["guides"].items():
        for design, g in designs.items():
            text.append(f"| {run} | {design} | {', '.join(map(str, g['widths']))} | "
                        f"{', '.join(f'{t:.2f}' for t in g['temperatures'])} | {g['seconds']:.0f} |")
    return text + [""]


def shares_table(r: dict) -> list[str]:
    """Per design and pair (and all pairs): trusted samples, walks per trusted sample, seconds, the readers' shares."""
    text = ["Share of the trusted samples each reader finds ambiguous (min(P(A), P(B)) >= 0.2), of the K kept per "
            "run (the first K trusted, by walk): pooled over the runs [95% logit t-interval over the runs] (each "
            "run's); all readers: the share every reader finds ambiguous. Found / asked: every trusted sample the "
            "rounds of walks found (a last round may find more than asked) over the K asked of every run. Walks per "
            "trusted sample: walks tried over trusted found (each run's); seconds for 100 trusted samples (all runs' "
            "seconds over their trusted samples found).", "",
            "| design | pair | found / asked | walks per trusted | s per 100 | " + " | ".join(READERS)
            + " | all readers |",
            "|---|---|---|---|---|" + "---|" * (len(READERS) + 1)]
    for design, pairs in r["summary"].items():
        for pair, m in pairs.items():
            asked = r["k"] * len(r["runs"]) * (len(r["pairs"]) if pair == "all pairs" else 1)
            walks = f"{number(m['walks_per_trusted'])} ({', '.join(number(v) for v in m['walks_per_trusted_runs'])})"
            shares = [share_cell(m["readers"][name]) for name in READERS] + [share_cell(m["all_readers"])]
            text.append(f"| {design} | {pair} | {m['trusted']} / {asked} | {walks} | "
                        f"{number(m['seconds_per_100'], 0)} | " + " | ".join(shares) + " |")
    return text + [""]


def real_table(r: dict) -> list[str]:
    """Per pair, the real reference: each reader's ambiguous share of its digits, the share each filter keeps."""
    text = ["The real reference (between.py's `real_reference`): per pair the real digits of A and B that no reader "
            "trained on and the evaluator finds most ambiguous (all it finds ambiguous, at least 20); each reader's "
            "ambiguous share of them, and the share of their test digits each design's filter keeps (mean over the "
            "runs' guides).", "",
            "| pair | digits (evaluator-ambiguous) | " + " | ".join(READERS) + " | "
            + " | ".join(f"kept by {d}" for d in r["designs"]) + " |",
            "|---|---|" + "---|" * (len(READERS) + len(r["designs"]))]
    for pair, real in r["real"].items():
        shares = [real[name]["ambiguous_share"] for name in READERS] + [real["kept_by_filter"][d] for d in r["designs"]]
        text.append(f"| {pair} | {real['n']} ({real['n_ambiguous']}) | " + " | ".join(map(percent, shares)) + " |")
    return text + [""]


def guide_tables(r: dict) -> list[str]:
    """results.json as Markdown (tables.md)."""
    wall = (f"Wall time of the call that wrote this: {r['wall_s'] / 60:.1f} min (kept sets are read back, not made: "
            "their own seconds are the table's)")
    return guides_table(r) + shares_table(r) + real_table(r) + [wall, ""]


BOUNDARY_GUIDANCE_HELP = ("the walks' guidance weight on the label (method soft), as sample.py --boundary-guidance W "
                          "(default 3; 1: none)")


def check_boundary_guidance(weight: float | None, prog: str = "python -m experiments.guide") -> float | None:
    """--boundary-guidance W as sample.py takes it: None (sample.py's) or a finite weight >= 0; else one line, exit."""
    if weight is not None and (not math.isfinite(weight) or weight < 0):
        sys.exit(f"{prog}: --boundary-guidance {weight}: give a finite weight >= 0 (1: no guidance, 3: sample.py's)")
    return weight


def parse_pair(text: str, prog: str = "python -m experiments.guide") -> tuple[int, int]:
    """'4-9' -> (4, 9): two different digits 0..9; anything else a one-line error (from `prog`)."""
    parts = text.split("-")
    if len(parts) != 2 or not all(p.isdigit() and int(p) < 10 for p in parts) or parts[0] == parts[1]:
        sys.exit(f"{prog}: --pairs {text}: a pair is two different digits 0-9 as A-B, e.g. 4-9")
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.guide", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="label+pos runs of train.py on the embedded MNIST sample "
                   "(different seeds), e.g. runs/experiment/label-pos-s0")
    p.add_argument("--k", type=int, default=K, help=f"trusted samples asked per run, design and pair (default {K})")
    p.add_argument("--pairs", nargs="+", default=[f"{a}-{b}" for a, b in PAIRS], metavar="A-B",
                   help="class pairs (default: " + " ".join(f"{a}-{b}" for a, b in PAIRS) + ")")
    p.add_argument("--out", default=OUT, help=f"results.json, tables.md and the sets (default {OUT})")
    p.add_argument("--readers", default=READERS_DIR, help="where the readers are kept, trained on first use "
                   f"(default {READERS_DIR}, python -m experiments' own)")
    p.add_argument("--boundary-guidance", type=float, default=None, metavar="W", help=BOUNDARY_GUIDANCE_HELP)
    args = p.parse_args(argv)
    weight = check_boundary_guidance(args.boundary_guidance)
    if args.k < 1:
        sys.exit(f"python -m experiments.guide: --k {args.k}: ask for at least one trusted sample")
    pairs = [parse_pair(text) for text in args.pairs]
    check_folders("python -m experiments.guide", {"--out": args.out, "--readers": args.readers})
    try:
        result = guide_experiment(args.runs, args.k, pairs, args.out, args.readers, weight)
        markdown = "\n".join(guide_tables(result))
        text = json.dumps(result, indent=1)
        write_atomically(os.path.join(args.out, "results.json"), lambda f: f.write(text.encode()))
        write_atomically(os.path.join(args.out, "tables.md"), lambda f: f.write(markdown.encode()))
    except KeyboardInterrupt:
        sys.exit(f"python -m experiments.guide: interrupted; the sets made so far are kept in {args.out}/sets and "
                 "are read back when the same command runs again")
    except (RunError, ValueError, OSError) as error:
        sys.exit(f"python -m experiments.guide: {' '.join(str(error).split())}")
    print(markdown)
    print(f"results: {os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'tables.md')}")
    return result


if __name__ == "__main__":
    main()
