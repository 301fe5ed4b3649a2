"""The experiment's section between (python -m experiments --sections between).

Samples at a class boundary (sample.boundary_samples): per walk
(one noise; only the conditions move from a class-A to a
class-B training digit) the point s* where a guide (classifiers
with seeds other than the evaluator's) reads P(B) = 0.5, by a
5-point grid and bisection to 1/64; pairs 4-9, 3-5, 7-1 and the
two a classifier confuses most on a validation split of training
digits; 20 walks per pair on each of the comparison's three
label+pos models; methods soft labels, the position alone and
product composition, each with eta 1 and 0 at w = 1 and the
default w, and with guidance over the middle noise range only.
Read at s* by the evaluator and by a second classifier (another seed and width):
mean min(P(A), P(B)), the share at 0.2 or more, P(A) + P(B), the
transition width, the crossing share, the nearest-training ratio;
the held-out test digits of A and B the evaluator finds ambiguous;
the success criterion (`boundary_success`), printed yes / no.
Time from nothing on the 2-core CPU: 15 variants x 5 pairs x 3
seeds x 20 walks x 9 images = 40,500 images, about 80,000 network
rows (1 per image at w = 1, 2 with label or position guidance, 3
with composition), plus 9 guide members and 2 classifiers:
26.4 min measured (2026-12-02; 33 estimated from the counts).
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/between.py: run python -m experiments --sections between (from the repository root)")
import os

import numpy as np
import scipy.special

import classifier
import metrics
import sample
from experiments.common import (CLASSIFIER_ARGS, DEFAULT_W, SAMPLER, SEEDS, TABLE_WEIGHTS, VAL_PER_CLASS, Context,
                                confused_pairs, kept_classifier, kept_set, set_key, soft_confusion, write_figure,
                                write_png)

# The section's settings (tests shrink them)
PAIRS = ((4, 9), (3, 5), (7, 1))  # the boundary walks' class pairs
WALKS, POINTS = 20, 9  # walks per pair and method; points per walk (odd: s = 0.5 is one)
WALK_SEED = 0
POS_GUIDANCE = {"label": 1.0, "pos": 3.0}  # per-condition guidance: out(label) + 3 (out(label, pos) - out(label))


# ---------------------------------------------------------------------------
# 3. Class-boundary samples: each walk's own crossing (sample.boundary_samples), read by readers that did not choose it
# ---------------------------------------------------------------------------
# The interval of noise levels sigma_t = sqrt((1 - abar_t) / abar_t) where the middle-range variant guides
# (Kynkaanniemi et al. 2024, their EDM interval); sampler key "guidance_interval" of ddpm.Diffusion.sample.
GUIDANCE_INTERVAL = (0.28, 5.42)
BOUNDARY_STEM = "label-pos"  # every method on the label+pos models (position shared; soft label or composition)
CONFUSED_PAIRS = 2  # pairs added to PAIRS: the most confused on a validation split of training digits
# The search, coarser than sample.py's: 5 grid points, 3 halvings to 1/64: 9 images per walk (the budget, below).
BETWEEN_GRID, BETWEEN_TOLERANCE = 5, 1 / 64
SECOND_READER_SEED, SECOND_READER_WIDTH = 7, 32  # the independent second classifier: another seed and width
SHOWN_REAL = 6  # most ambiguous real test digits (and boundary samples) per pair in the figure


def between_methods() -> dict:
    """name -> (boundary method, eta, w, guidance interval): each method with eta 1 and 0 at every TABLE_WEIGHTS w,
    and with guidance over the middle noise range only (eta 1, the default w)."""
    out = {}
    for method in sample.BOUNDARY_METHODS:
        for w in TABLE_WEIGHTS:
            for eta in (1.0, 0.0):
                out[f"{method}, w {w:g}, eta {eta:g}"] = (method, eta, w, None)
        out[f"{method}, w {DEFAULT_W:g}, eta 1, middle-range guidance"] = (method, 1.0, DEFAULT_W, GUIDANCE_INTERVAL)
    return out


def boundary_success(reader: dict, nn_ratio: float | None) -> dict:
    """The criterion for one method and pair, read by the evaluator (not the guide) at each walk's s*: mean
    min(P(A), P(B)) >= 0.25, at least 60% of walks at 0.2 or more, mean P(A) + P(B) >= 0.9, and median
    nearest-training ratio <= 1.3. reader: metrics.boundary_statistics; nn_ratio: median over the samples."""
    checks = dict(ambiguous=reader["ambiguity"] is not None and reader["ambiguity"] >= 0.25,
                  mostly_ambiguous=reader["ambiguous_share"] is not None and reader["ambiguous_share"] >= 0.6,
                  stays_on_a_and_b=reader["kept_mass"] is not None and reader["kept_mass"] >= 0.9,
                  near_the_data=nn_ratio is not None and nn_ratio <= 1.3)
    return dict(checks, success=all(checks.values()))


CHECKS = ("ambiguous", "mostly_ambiguous", "stays_on_a_and_b", "near_the_data")


def second_reader(ctx: Context) -> classifier.FeatureNetwork:
    """An independent digit classifier: the training digits, another seed and width (not the evaluator, no guide)."""
    path = os.path.join(ctx.runs, "second_reader.pt")
    if os.path.exists(path):
        return classifier.load_classifier(path)
    net = classifier.train_classifier(ctx.digits.images[ctx.digits.train], ctx.digits.labels[ctx.digits.train], 10,
                                      seed=SECOND_READER_SEED, width=SECOND_READER_WIDTH, **CLASSIFIER_ARGS)
    classifier.save_classifier(net, path)
    return net


def between_pairs(ctx: Context) -> list[tuple[int, int]]:
    """PAIRS and the CONFUSED_PAIRS pairs a classifier trained on the other training digits confuses most on a
    validation split (VAL_PER_CLASS per class) of the training digits."""
    val = ctx.digits.per_class(ctx.digits.train, VAL_PER_CLASS, WALK_SEED)
    rest = np.setdiff1d(ctx.digits.train, val)
    net = kept_classifier(os.path.join(ctx.runs, "pairs_classifier.pt"), ctx.digits.images[rest],
                          ctx.digits.labels[rest], seed=0)
    prob = scipy.special.softmax(net.logits(ctx.digits.images[val]), axis=1)
    taken = {tuple(sorted(p)) for p in PAIRS}
    extra = [p for p in confused_pairs(soft_confusion(prob, ctx.digits.labels[val]), 45) if p not in taken]
    return [tuple(p) for p in PAIRS] + [tuple(int(c) for c in p) for p in extra[:CONFUSED_PAIRS]]


def walk_scores(ctx: Context, run: sample.Run, part: dict, a: int, b: int, second) -> dict:
    """One method, pair and seed: the evaluator's and the second reader's boundary_statistics at each walk's s*,
    the guide's, and each sample's nearest-training ratio (evaluator features, over the test digits')."""
    crossed = np.isin(np.arange(WALKS), part["walk"])
    features, prob = ctx.scorer.features(part["images"]) if len(part["images"]) else (None, np.zeros((0, 10)))
    second_prob = (scipy.special.softmax(second.logits(part["images"]), axis=1) if len(part["images"])
                   else np.zeros((0, 10)))
    out = dict(evaluator=metrics.boundary_statistics(prob[:, a], prob[:, b], crossed),
               second=metrics.boundary_statistics(second_prob[:, a], second_prob[:, b], crossed),
               # the width is the guide's: the s range of ITS P(B) from 0.1 to 0.9 (sample.transition_width)
               guide=metrics.boundary_statistics(part["prob"][:, 0], part["prob"][:, 1], crossed, part.get("width")),
               s_median=float(np.median(part["s"])) if len(part["s"]) else None, nn_ratio=[])
    if features is not None:
        nn = metrics.nearest_distance(features, ctx.scorer.training_features(run.images))
        out["nn_ratio"] = (nn / ctx.scorer.nearest_baseline(run.images)).round(3).tolist()
    out["min_evaluator"] = np.minimum(prob[:, a], prob[:, b]).round(4).tolist()
    return out


def pooled(per_seed: list[dict], crossed_total: int, walks_total: int) -> dict:
    """The seeds' samples together: means weighted by samples, shares over all walks."""
    def mean(reader, key):
        pairs = [(r[reader][key], r[reader]["n_samples"]) for r in per_seed if r[reader][key] is not None]
        n = sum(k for _, k in pairs)
        return float(sum(v * k for v, k in pairs) / n) if n else None
    out = {reader: {key: mean(reader, key) for key in ("ambiguity", "ambiguous_share", "kept_mass", "width_median")}
           for reader in ("evaluator", "second", "guide")}
    for reader in out:
        out[reader]["crossing_share"] = crossed_total / walks_total
        out[reader].update(seed_intervals([r[reader] for r in per_seed]))
    ratios = [v for r in per_seed for v in r["nn_ratio"]]
    out["nn_ratio_median"] = float(np.median(ratios)) if ratios else None
    return out


def seed_intervals(per_seed: list[dict]) -> dict:
    """95% intervals over the seeds (each seed its own model, noise and walks) of one reader's boundary_statistics:
    the mean min(P(A), P(B)) by a t-interval on the per-seed means, the share at 0.2 or more by
    metrics.logit_t_interval of the per-seed counts (inside [0, 1]). Empty where a seed has no sample or
    there is one seed."""
    if len(per_seed) < 2 or any(r["n_samples"] == 0 for r in per_seed):
        return {}
    _, low, high = metrics.t_interval([r["ambiguity"] for r in per_seed])
    counts = [round(r["ambiguous_share"] * r["n_samples"]) for r in per_seed]
    _, share_low, share_high = metrics.logit_t_interval(counts, [r["n_samples"] for r in per_seed])
    return dict(ambiguity_interval=[low, high], ambiguous_share_interval=[share_low, share_high])


def ambiguous_real(ctx: Context, a: int, b: int) -> dict:
    """The held-out test digits of A and B the evaluator finds ambiguous: min(P(A), P(B)) >= 0.2, and the most so."""
    rows = np.flatnonzero(np.isin(ctx.scorer.test_labels, [a, b]))
    prob = scipy.special.softmax(ctx.scorer.test_logits[rows], axis=1)
    low = np.minimum(prob[:, a], prob[:, b])
    return dict(share=float((low >= metrics.AMBIGUOUS).mean()), n=int(len(rows)),
                most=rows[np.argsort(-low)[:SHOWN_REAL]].tolist(), most_min=np.sort(low)[::-1][:SHOWN_REAL].round(3).tolist())


def between(ctx: Context) -> dict:
    second = second_reader(ctx)
    pairs, methods = between_pairs(ctx), between_methods()
    result = {"pairs": [f"{a}-{b}" for a, b in pairs], "methods": {}, "real": {},
              "grid": BETWEEN_GRID, "tolerance": BETWEEN_TOLERANCE}
    kept_parts = {}
    for name, (method, eta, w, interval) in methods.items():
        result["methods"][name] = {}
        for a, b in pairs:
            per_seed, found = [], 0
            for seed in SEEDS:
                run = ctx.model(BOUNDARY_STEM, seed)
                guide = sample.boundary_guide(run)
                chosen = dict(SAMPLER, eta=eta, guidance=w, guidance_interval=interval)
                key = set_key(run, method=method, sampler=chosen, pair=[a, b], walks=WALKS, grid=BETWEEN_GRID,
                              tolerance=BETWEEN_TOLERANCE, seed=WALK_SEED, guide=guide.seeds)
                part = kept_set(os.path.join(ctx.out, "between", f"{slug(name)}-{a}-{b}-s{seed}"), key,
                                lambda: sample.boundary_samples(run, a, b, WALKS, method, WALK_SEED, guide, chosen,
                                                                BETWEEN_TOLERANCE, grid=BETWEEN_GRID,
                                                                evaluators=[ctx.scorer.net, second]))
                per_seed.append(walk_scores(ctx, run, part, a, b, second))
                found += len(part["walk"])
                kept_parts[name, a, b, seed] = part
            both = pooled(per_seed, found, WALKS * len(SEEDS))
            verdict = boundary_success(both["evaluator"], both["nn_ratio_median"])
            result["methods"][name][f"{a}-{b}"] = dict(both, seeds=per_seed, **verdict)
            print(name, f"{a}-{b}", "success" if verdict["success"] else "no", flush=True)
    for a, b in pairs:
        result["real"][f"{a}-{b}"] = ambiguous_real(ctx, a, b)
    result["works_on_pairs"] = {m: sum(p["success"] for p in ps.values()) for m, ps in result["methods"].items()}
    result["best"] = best_method(result["methods"])
    result["best_boundary_method"] = methods[result["best"]][0]
    walk_figure(ctx, result, kept_parts, pairs)
    return result


def slug(text: str) -> str:
    return text.replace(", ", "-").replace(" ", "-")


def best_method(methods: dict) -> str:
    """The method that works on most pairs; among equals, the one that passes most checks, then the most ambiguous."""
    def rank(name):
        rows = list(methods[name].values())
        checks = sum(sum(bool(r[c]) for c in CHECKS) for r in rows)
        return sum(r["success"] for r in rows), checks, float(np.mean([r["evaluator"]["ambiguity"] or 0.0 for r in rows]))
    return max(methods, key=rank)


def walk_figure(ctx: Context, result: dict, parts: dict, pairs: list) -> None:
    """between/boundary_vs_real.png: per pair a row of the most ambiguous real test digits of A and B, then the best
    method's boundary samples (seed 0) the evaluator reads as most ambiguous; between/ambiguity.png: per pair and
    method, the evaluator's mean min(P(A), P(B)) at s*."""
    from matplotlib.figure import Figure
    rows = []
    for a, b in pairs:
        real = ctx.scorer.test_images[result["real"][f"{a}-{b}"]["most"]]
        part = parts[result["best"], a, b, SEEDS[0]]
        low = np.array(result["methods"][result["best"]][f"{a}-{b}"]["seeds"][0]["min_evaluator"])
        found = part["images"][np.argsort(-low)[:SHOWN_REAL]] if len(low) else real[:0]
        rows.append(np.concatenate([real, found]))
    write_png(os.path.join(ctx.out, "between", "boundary_vs_real.png"), sample.grid_png(rows))
    figure = Figure(figsize=(1.2 * len(result["methods"]) + 2, 3.6))
    axes = figure.subplots()
    names = list(result["methods"])
    for j, (a, b) in enumerate(pairs):
        values = [result["methods"][m][f"{a}-{b}"]["evaluator"]["ambiguity"] or 0.0 for m in names]
        axes.plot(range(len(names)), values, "o-", ms=3, lw=1, label=f"{a}-{b}")
    axes.axhline(0.25, color="grey", lw=0.5)
    axes.set_xticks(range(len(names)), names, rotation=75, fontsize=6)
    axes.set(ylabel="evaluator mean min(P(A), P(B)) at s*")
    axes.legend(fontsize=6)
    write_figure(os.path.join(ctx.out, "between", "ambiguity.png"), figure)



# ---------------------------------------------------------------------------
# The section's table (tables.md)
# ---------------------------------------------------------------------------
def between_tables(b: dict) -> list[str]:
    def cell(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    def with_interval(reader, key):
        interval = reader.get(f"{key}_interval")
        return cell(reader[key]) + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
    text = ["Boundary samples: per walk (one noise; only the conditions move from a class-A to a class-B training "
            f"digit) the point s* where the guide (an ensemble of classifiers with seeds other than the evaluator's) "
            f"reads P(B) = 0.5: a {b['grid']}-point grid, then bisection to |s* - crossing| <= {b['tolerance']:.4f}. "
            f"{WALKS} walks per pair and seed, seeds {', '.join(map(str, SEEDS))} pooled. Read at s* by the evaluator "
            "and by a second independent classifier: mean min(P(A), P(B)), share of walks at 0.2 or more (each "
            "with its 95% interval over the seeds: t on the per-seed means, t on the per-seed logits), mean "
            "P(A) + P(B); crossed: share of walks the guide saw cross; width: median s range of the guide's P(B) from "
            "0.1 to 0.9; nearest-training ratio: median over the samples (evaluator features, over the test digits'). "
            "Success: evaluator mean min >= 0.25, share >= 60%, P(A) + P(B) >= 0.9, ratio <= 1.3.", "",
            "| method | pair | crossed | evaluator min | evaluator share >= 0.2 | evaluator P(A)+P(B) | second min | "
            "second share | second P(A)+P(B) | width | nearest-training ratio | success |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, pairs in b["methods"].items():
        for pair, p in pairs.items():
            e, s2 = p["evaluator"], p["second"]
            text.append(f"| {method} | {pair} | {cell(e['crossing_share'])} | {with_interval(e, 'ambiguity')} | "
                        f"{with_interval(e, 'ambiguous_share')} | {cell(e['kept_mass'])} | {cell(s2['ambiguity'])} | "
                        f"{cell(s2['ambiguous_share'])} | {cell(s2['kept_mass'])} | {cell(p['guide']['width_median'], 3)} | "
                        f"{cell(p['nn_ratio_median'])} | {'yes' if p['success'] else 'no'} |")
    text += ["", "Works (the criterion on at least three pairs): " + ", ".join(
        f"{m} {'yes' if n >= 3 else 'no'} ({n} of {len(b['pairs'])})" for m, n in b["works_on_pairs"].items()),
        f"Best method: {b['best']} (sample.py --boundary-method {b['best_boundary_method']})", "", "Held-out test digits of A and B the evaluator finds ambiguous (min(P(A), P(B)) >= 0.2):",
        "", "| pair | test digits of A and B | ambiguous share | the most ambiguous (min) |", "|---|---|---|---|"]
    for pair, r in b["real"].items():
        text.append(f"| {pair} | {r['n']} | {100 * r['share']:.1f}% | {' '.join(f'{v:.2f}' for v in r['most_min'])} |")
    return text + [""]
