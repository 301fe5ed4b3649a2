"""The paper's experiment, rerun on a CPU with the embedded MNIST sample: one command.

    python experiment.py                                # every section (about 1 h 45 min on 2 CPU cores)
    python experiment.py --sections compare control     # some of them

Four sections, each answering one question of PAPER.md (results in --out,
trained models in --runs; a finished model is reused, an unfinished one resumed):

  compare   Do positions improve the samples? The report's three models
            (`label`, `label+pos`, `pos`; its label, label+umap, umap), seeds
            0 and 1, 1,000 samples each under two protocols: one reference per
            class for all of the class's samples (the report's, Figs 2-4) and a
            fresh reference per sample (a draw from p(pos | class)). Classifier
            FID against 4,000 real digits, classifier IS, conditioning accuracy,
            and the noise floor: the same numbers for 1,000 real digits that no
            FID reference contains. Class grids side by side; Figure 7.
  control   Do the samples follow their reference? Two references per class,
            ten samples each, in two kinds of position space: pixels (UMAP of
            the raw pixels) and a semantic one (UMAP of the penultimate layer
            of a digit classifier, `--backbone classifier`); with how tight the
            classes cluster in each space (the report's explanation of its
            MNIST failure).
  between   Class-boundary samples (the report's motivation): walks from a
            class-A to a class-B reference (4-9, 3-5, 7-1), with label A and
            label B; the classifier's P(A), P(B) along the walk and each sample's
            distance to its nearest real digit, against that of real digits.
  augment   Does generated data help a classifier (the report's future work)?
            Scarce real sets (20 and 50 per class); diffusion models trained on
            them alone; the small classifier trained on real, real + label-model
            samples, real + label+pos samples at the real images' positions,
            real + boundary samples; accuracy on the held-out real digits.

All sampling uses sample.py's defaults (DDIM 25 steps, eta 1, guidance 3).
Every scored sample set is kept as `samples.npz` in sample.py's format.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import scipy.spatial
import torch

import metrics
import sample
import train
from data import choose_per_class, load_dataset, write_atomically
from features import plot_positions

SAMPLER = dict(steps=sample.DEFAULT_STEPS, eta=sample.DEFAULT_ETA, guidance=sample.DEFAULT_GUIDANCE, ddpm=False)
MODELS = {"label": "label", "label-pos": "label+pos", "pos": "pos"}  # run-name stem -> --cond
SEEDS = (0, 1)
N_EVAL = 1000  # samples per scored set, class-balanced
PAIRS = ((4, 9), (3, 5), (7, 1))  # confusable digits for the boundary walks
WALKS, POINTS = 20, 8  # boundary walks per pair (a reference pair and noise seed each), positions per walk
SCARCE = (20, 50)  # real images per class in the augmentation experiment
SCARCE_STEPS = 1500  # diffusion steps on a scarce set (2,000 on the 5,000 digits)
N_AUGMENT = 500  # generated images added to a scarce set, 50 per class
CLASSIFIER_SEEDS = (0, 1, 2)
SECTIONS = ("compare", "control", "between", "augment")


# ---------------------------------------------------------------------------
# Models: train.py, in this process (a finished run is only loaded)
# ---------------------------------------------------------------------------
def trained(runs: str, name: str, *flags: str) -> sample.Run:
    """Train runs/NAME with train.py's defaults plus `flags` (or resume it), then load it."""
    out = os.path.join(runs, name)
    resume = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
    train.main(["--out", out, *flags, *resume])
    return sample.load_run(out)


def classifier_space_run(runs: str) -> tuple[str, tuple[str, ...]]:
    """The label+pos model whose positions come from a classifier's features (a semantic space): (name, flags)."""
    return "label-pos-classifier-s0", ("--cond", "label+pos", "--backbone", "classifier",
                                       "--weights", feature_classifier(runs))


def feature_classifier(runs: str) -> str:
    """The semantic space's backbone: a small classifier of the 5,000 digits, seed 1 (the evaluator is seed 0)."""
    path = os.path.join(runs, "feature_classifier.pt")
    if not os.path.exists(path):
        images, labels, _ = load_dataset("mnist-sample")
        metrics.save_classifier(metrics.train_classifier(images, labels, seed=1), path)
    return path


# ---------------------------------------------------------------------------
# Scoring with the experiment's classifier
# ---------------------------------------------------------------------------
def real_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits -> 1,000 held (100 per class) and the 4,000 others, the FID reference."""
    held = choose_per_class(labels, 100, 0, [str(k) for k in range(10)])
    return held, np.setdiff1d(np.arange(len(labels)), held)


class Scorer:
    """Classifier FID (vs the 4,000 reference digits), IS and conditioning accuracy of image sets."""

    def __init__(self, runs: str, inception_weights: str | None):
        self.images, self.labels, _ = load_dataset("mnist-sample")
        self.held, self.reference = real_split(self.labels)
        self.classifier = metrics.load_feature_network("classifier", classifier_path=os.path.join(runs, "classifier.pt"),
                                                       train_images=self.images, train_labels=self.labels)
        self.real_features, self.real_logits = self.classifier.features_and_logits(self.images)  # (5000, 128), (5000, 10)
        self.inception = metrics.inception_network(inception_weights) if inception_weights else None
        if self.inception:
            self.inception_reference = self.inception.features_and_logits(self.images[self.reference])[0]

    def score(self, images: np.ndarray, requested: np.ndarray) -> dict:
        features, logits = self.classifier.features_and_logits(images)
        out = dict(fid=metrics.fid_from_features(self.real_features[self.reference], features),
                   is_mean=metrics.inception_score(logits)[0],
                   accuracy=metrics.conditioning_accuracy(logits, requested))
        if self.inception:
            features, logits = self.inception.features_and_logits(images)
            out.update(inception_fid=metrics.fid_from_features(self.inception_reference, features),
                       inception_is=metrics.inception_score(logits)[0])
        return out

    def floor(self) -> dict:
        """The noise floor: 1,000 real digits that the FID reference does not hold, scored like a sample set."""
        return self.score(self.images[self.held], self.labels[self.held])


def save_npz(path: str, part: dict) -> None:
    write_atomically(path, lambda f: f.write(sample.samples_npz(part)))


def mean_std(values: list[float]) -> list[float]:
    return [float(np.mean(values)), float(np.std(values))]


# ---------------------------------------------------------------------------
# 1. The comparison (Tables 4-5, Figures 2-4 and 7)
# ---------------------------------------------------------------------------
def protocol_requests(run: sample.Run, protocol: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N_EVAL class-balanced requests: (requested classes, reference indices).
    per-class: one random reference per class for all its samples (the report); per-sample: a fresh one each."""
    want = np.repeat(np.arange(10), N_EVAL // 10)  # (N_EVAL,)
    if protocol == "per-class":
        return want, sample.draw_references(run.labels, 1, seed)[want]
    return want, sample.reference_of_each(run.labels, want, np.random.default_rng(seed))


def compare(runs: str, out: str, scorer: Scorer) -> dict:
    result, rows = {"floor": scorer.floor(), "runs": {}}, {}
    for stem, cond in MODELS.items():
        for seed in SEEDS:
            name = f"{stem}-s{seed}"
            run = trained(runs, name, "--cond", cond, "--seed", str(seed))
            # The label model takes no reference: one set stands for both protocols.
            for protocol in ("per-class", "per-sample") if run.space else ("per-sample",):
                want, refs = protocol_requests(run, protocol)
                part = sample.make_part(run, want, run.images[refs], refs, SAMPLER, seed=0)
                save_npz(os.path.join(out, "compare", f"{name}-{protocol}", "samples.npz"), part)
                result["runs"].setdefault(name, {})[protocol] = scorer.score(part["images"], want)
                if seed == 0 and (protocol == "per-class" or not run.space):  # the grids' sets
                    rows[stem] = part["images"].reshape(10, N_EVAL // 10, *part["images"].shape[1:])[:, :10]
                print(name, protocol, json.dumps(result["runs"][name][protocol]), flush=True)
            if stem == "label-pos" and seed == 0:
                plot_positions(run.space.positions, run.labels, os.path.join(out, "compare", "positions_pixels.png"))
    # Class grids side by side: label | label+pos | pos, one row per class, a blank column between.
    blank = np.full_like(rows["label"][:, :1], 255)
    grid = [np.concatenate([rows["label"][k], blank[k], rows["label-pos"][k], blank[k], rows["pos"][k]])
            for k in range(10)]
    png = sample.grid_png(grid)
    write_atomically(os.path.join(out, "compare", "class_grids.png"), lambda f: f.write(png))
    result["summary"] = summary = summarise(result["runs"])
    # The report's direction: label+umap FID about 0.77x the label-only FID.
    result["fid_ratio_to_label"] = {key: summary[key]["fid"][0] / summary["label per-sample"]["fid"][0]
                                    for key in summary if not key.startswith("label ")}
    return result


def summarise(runs: dict) -> dict:
    """Mean and spread over seeds of every (model, protocol, measure)."""
    summary = {}
    for stem in MODELS:
        seeds = [runs[f"{stem}-s{s}"] for s in SEEDS if f"{stem}-s{s}" in runs]
        for protocol in seeds[0]:
            summary[f"{stem} {protocol}"] = {key: mean_std([r[protocol][key] for r in seeds])
                                             for key in seeds[0][protocol]}
    return summary


# ---------------------------------------------------------------------------
# 2. Control, in a pixel and a semantic position space
# ---------------------------------------------------------------------------
def tightness(run: sample.Run) -> dict:
    """How tightly the classes cluster in the run's standardised positions: the share of each image's
    10 nearest neighbours of its own class, and the mean distance to the own class's centre over the
    mean distance between class centres (small: tight, well-separated clusters)."""
    pos = run.space.standardize(run.space.positions)  # (N, d)
    _, nn = scipy.spatial.cKDTree(pos).query(pos, k=11)  # (N, 11), the first is the image itself
    centres = np.stack([pos[run.labels == k].mean(0) for k in range(10)])  # (10, d)
    within = np.linalg.norm(pos - centres[run.labels], axis=1).mean()
    between = scipy.spatial.distance.pdist(centres).mean()
    return dict(knn_same_class=float((run.labels[nn[:, 1:]] == run.labels[:, None]).mean()),
                within_over_between=float(within / between))


def control(runs: str, out: str, scorer: Scorer) -> dict:
    models = [(f"{stem}-s{seed}", ("--cond", MODELS[stem], "--seed", str(seed)))
              for stem in ("label-pos", "pos") for seed in SEEDS]
    models.append(classifier_space_run(runs))
    result = {}
    for name, flags in models:
        run = trained(runs, name, *flags)
        refs = sample.draw_references(run.labels, 2, seed=0)  # (20,): two per class
        part, png = sample.reference_grid(run, run.images[refs], run.labels[refs], refs, 10, SAMPLER, seed=0)
        write_atomically(os.path.join(out, "control", f"{name}.png"), lambda f: f.write(png))
        save_npz(os.path.join(out, "control", name, "samples.npz"), part)
        result[name] = dict(sample.control(run, dict(part, ref_images=run.images[refs], ref_labels=run.labels[refs])),
                            space=run.config["settings"]["backbone"], tightness=tightness(run),
                            accuracy=scorer.score(part["images"], part["labels"])["accuracy"])
        if name == "label-pos-classifier-s0":  # its quality, scored like the comparison's models
            want, refs = protocol_requests(run, "per-class")
            quality = sample.make_part(run, want, run.images[refs], refs, SAMPLER, seed=0)
            save_npz(os.path.join(out, "control", f"{name}-per-class", "samples.npz"), quality)
            result[name]["per_class"] = scorer.score(quality["images"], want)
            plot_positions(run.space.positions, run.labels, os.path.join(out, "control", "positions_classifier.png"))
        print(name, json.dumps(result[name]), flush=True)
    return result


# ---------------------------------------------------------------------------
# 3. Class-boundary samples
# ---------------------------------------------------------------------------
def between(runs: str, out: str, scorer: Scorer) -> dict:
    """P(A), P(B) along each walk (rows: label A, label B) and the samples' nearest-real-digit distance
    in the classifier's feature space, over the held real digits' own distance to the reference set."""
    real_nn = scipy.spatial.cKDTree(scorer.real_features[scorer.reference])
    held_distance = float(np.median(real_nn.query(scorer.real_features[scorer.held])[0]))
    result = {"real_median_nn_distance": held_distance}
    for name, flags in [("label-pos-s0", ("--cond", "label+pos")), classifier_space_run(runs)]:
        run = trained(runs, name, *flags)
        for a, b in PAIRS:
            parts = []
            for walk in range(WALKS):
                part, png = sample.between_grid(run, a, b, POINTS, SAMPLER, seed=walk)
                parts.append(part)
                if walk == 0:
                    write_atomically(os.path.join(out, "between", f"{name}-{a}-{b}.png"), lambda f: f.write(png))
            part = sample.concatenate_parts(parts)
            save_npz(os.path.join(out, "between", f"{name}-{a}-{b}", "samples.npz"), part)
            features, logits = scorer.classifier.features_and_logits(part["images"])
            p = torch.softmax(torch.from_numpy(logits), 1).numpy().reshape(WALKS, 2, POINTS, 10)  # walk, row, s, class
            nn_distance = real_nn.query(features)[0].reshape(WALKS, 2, POINTS) / held_distance
            result[f"{name} {a}-{b}"] = {
                f"label {row_label}": dict(p_a=p[:, row, :, a].mean(0).round(3).tolist(),
                                           p_b=p[:, row, :, b].mean(0).round(3).tolist(),
                                           nn_distance=nn_distance[:, row].mean(0).round(2).tolist())
                for row, row_label in enumerate((a, b))}
            print(name, a, b, json.dumps(result[f"{name} {a}-{b}"]), flush=True)
    return result


# ---------------------------------------------------------------------------
# 4. Does generated data help a classifier?
# ---------------------------------------------------------------------------
def boundary_requests(run: sample.Run, seed: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """N_AUGMENT label-A requests whose position lies between a class-A and a class-B image:
    pos = (1 - s) pos_A + s pos_B, s ~ U(0.2, 0.5), B a random other class (A's side of the midpoint).
    Returns (cond, the A images' indices, the B images' indices, s)."""
    rng = np.random.default_rng(seed)
    want = np.repeat(np.arange(10), N_AUGMENT // 10)
    partner = (want + rng.integers(1, 10, len(want))) % 10
    a = sample.reference_of_each(run.labels, want, rng)
    b = sample.reference_of_each(run.labels, partner, rng)
    s = rng.uniform(0.2, 0.5, (len(want), 1)).astype(np.float32)
    c_a = sample.request_conditions(run, want, run.images[a])
    c_b = sample.request_conditions(run, want, run.images[b])
    return dict(c_a, pos=((1 - s) * c_a["pos"] + s * c_b["pos"]).astype(np.float32)), a, b, s[:, 0]


def generated_sets(runs: str, per_class: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three kinds of generated training data for one scarce set: name -> (images, labels)."""
    flags = ("--per-class", str(per_class), "--steps", str(SCARCE_STEPS))
    label_run = trained(runs, f"scarce{per_class}-label-s0", "--cond", "label", *flags)
    pos_run = trained(runs, f"scarce{per_class}-label-pos-s0", "--cond", "label+pos", *flags)
    want = np.repeat(np.arange(10), N_AUGMENT // 10)
    at_real = np.concatenate([np.resize(np.flatnonzero(pos_run.labels == k), N_AUGMENT // 10) for k in range(10)])
    sets = {
        "label model": sample.make_part(label_run, want, label_run.images[at_real], at_real, SAMPLER, seed=0),
        "label+pos at real positions": sample.make_part(pos_run, want, pos_run.images[at_real], at_real, SAMPLER, 0),
    }
    cond, a, _, _ = boundary_requests(pos_run, seed=0)
    sets["label+pos boundary"] = dict(images=sample.generate(pos_run, N_AUGMENT, cond, SAMPLER, seed=0), labels=want,
                                      reference=a, cond=cond)
    return sets


def augment(runs: str, out: str, scorer: Scorer) -> dict:
    result = {}
    images, labels = scorer.images, scorer.labels
    for per_class in SCARCE:
        scarce = choose_per_class(labels, per_class, 0, [str(k) for k in range(10)])  # as train.py --per-class, seed 0
        test = np.setdiff1d(np.arange(len(labels)), scarce)  # every other digit of the sample: never trained on
        sets = generated_sets(runs, per_class)
        rows = {"real only": []}
        for seed in CLASSIFIER_SEEDS:
            rows["real only"].append(accuracy_after_training(images[scarce], labels[scarce], images[test],
                                                             labels[test], seed))
        for kind, part in sets.items():
            save_npz(os.path.join(out, "augment", f"scarce{per_class}-{kind.replace(' ', '-')}", "samples.npz"), part)
            x = np.concatenate([images[scarce], part["images"]])
            y = np.concatenate([labels[scarce], part["labels"]])
            rows[kind] = [accuracy_after_training(x, y, images[test], labels[test], seed) for seed in CLASSIFIER_SEEDS]
        result[f"{per_class} per class"] = {kind: mean_std(values) for kind, values in rows.items()}
        result[f"{per_class} per class"]["n_test"] = int(len(test))
        print(per_class, json.dumps(result[f"{per_class} per class"]), flush=True)
    return result


def accuracy_after_training(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int) -> float:
    """Train the small classifier (metrics.py) on (x, y); its accuracy on the held-out real digits."""
    net = metrics.train_classifier(x, y, num_classes=10, seed=seed)
    return float((net.logits(x_test).argmax(1) == y_test).mean())


# ---------------------------------------------------------------------------
# The README's tables
# ---------------------------------------------------------------------------
def pm(values: list[float], digits: int) -> str:
    return f"{values[0]:.{digits}f} ± {values[1]:.{digits}f}"


def tables(results: dict) -> str:
    """results.json as the Markdown tables of the README's results section."""
    text = []
    if "compare" in results:
        c = results["compare"]
        text += ["| model | protocol | classifier-FID | classifier-IS | requested digit |", "|---|---|---|---|---|"]
        for key, m in c["summary"].items():
            stem, protocol = key.split()
            inception = f" Inception FID {pm(m['inception_fid'], 2)}, IS {pm(m['inception_is'], 2)}" \
                if "inception_fid" in m else ""
            text.append(f"| {MODELS[stem]} | {protocol if stem != 'label' else '(no reference)'} | {pm(m['fid'], 2)} "
                        f"| {pm(m['is_mean'], 2)} | {pm([100 * v for v in m['accuracy']], 1)}% |{inception}")
        f = c["floor"]
        text += [f"| real digits (1,000 held out) | | {f['fid']:.2f} | {f['is_mean']:.2f} | {100 * f['accuracy']:.1f}% |", ""]
        text += ["FID relative to the label model (the report: label+umap 0.77x): " + ", ".join(
            f"{MODELS[key.split()[0]]} {key.split()[1]} {ratio:.2f}x" for key, ratio in c["fid_ratio_to_label"].items()), ""]
    if "control" in results:
        text += ["| model | space | own-reference rate | retrieval top-1 | distance own / other | kNN same class "
                 "| within / between | requested digit |", "|---|---|---|---|---|---|---|---|"]
        for name, m in results["control"].items():
            if name == "wall_s":
                continue
            t = m["tightness"]
            text.append(f"| {name} | {m['space']} | {m['own_reference_rate']:.3f} | {m['retrieval_top1']:.3f} | "
                        f"{m['mean_dist_own']:.2f} / {m['mean_dist_other_same_class']:.2f} | "
                        f"{t['knn_same_class']:.3f} | {t['within_over_between']:.2f} | {100 * m['accuracy']:.1f}% |")
        text.append("")
    if "between" in results:
        text += ["| model | walk | row label | P(A) along the walk | P(B) along the walk | nearest-real distance |",
                 "|---|---|---|---|---|---|"]
        for key, rows in results["between"].items():
            if not isinstance(rows, dict):
                continue
            name, pair = key.split()
            for row, m in rows.items():
                text.append(f"| {name} | {pair} | {row.split()[1]} | {' '.join(f'{v:.2f}' for v in m['p_a'])} | "
                            f"{' '.join(f'{v:.2f}' for v in m['p_b'])} | {' '.join(f'{v:.2f}' for v in m['nn_distance'])} |")
        text.append("")
    if "augment" in results:
        kinds = ["real only", "label model", "label+pos at real positions", "label+pos boundary"]
        text += ["| real images per class | test digits | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
        for size, m in results["augment"].items():
            if isinstance(m, dict):
                text.append(f"| {size.split()[0]} | {m['n_test']} | "
                            + " | ".join(pm([100 * v for v in m[k]], 1) + "%" for k in kinds) + " |")
        text.append("")
    return "\n".join(text)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--runs", default="runs/experiment", help="where the trained models go (not for git)")
    p.add_argument("--out", default="results/experiment", help="where results.json, the figures and samples go")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file: Inception FID/IS too")
    args = p.parse_args(argv)
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        sys.exit(f"experiment.py: --inception-weights {args.inception_weights}: file not found")
    if os.path.isfile(args.out) or os.path.isfile(args.runs):
        sys.exit("experiment.py: --out and --runs must be directories")
    os.makedirs(args.runs, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(path):  # a rerun of some sections keeps the others' results
        with open(path) as f:
            results = json.load(f)
    scorer = Scorer(args.runs, args.inception_weights)
    sections = {"compare": compare, "control": control, "between": between, "augment": augment}
    for name in SECTIONS:  # in this order: later sections reuse the models of earlier ones
        if name in args.sections:
            start = time.perf_counter()
            results[name] = sections[name](args.runs, args.out, scorer)
            results[name]["wall_s"] = round(time.perf_counter() - start)
            text = json.dumps(results, indent=1)
            write_atomically(path, lambda f: f.write(text.encode()))
    markdown = tables(results)
    write_atomically(os.path.join(args.out, "tables.md"), lambda f: f.write(markdown.encode()))
    print(markdown)
    print(f"results: {path}, {args.out}/tables.md")


if __name__ == "__main__":
    main()
