"""The experiment's section compare (python -m experiments --sections compare).

Do positions improve the samples? `label`, `label+pos`, `pos` (the
report's label, label+umap, umap) x 3 seeds, 1,000 class-balanced
samples per set, at guidance w = 1 (the report's plain conditional
model) and at sample.py's default w; the position models under two
reference protocols (per-class: one reference per class, the
report's; per-sample: a fresh reference per sample). FID, IS,
KID, requested digit (t-interval of the per-seed logits, inside
[0, 1]), diversity by the class the evaluator reads and a
memorisation check per set, FID minus the floor's; the headline
ratio label+pos / label FID, seed r over seed r, with a t-interval
on the per-seed log-ratios (metrics.log_ratio_t_interval); the
guidance curve, FID and KID against requested digit for w in 1,
1.5, 2, 3 (every seed, 1,000 samples), also for label+pos with
guidance only at the noise levels of GUIDANCE_INTERVALS
(Kynkaanniemi et al. 2024); each curve's FID and KID at 95% and 98%
requested digit (metrics.at_matched_share, per seed); the best
guidance setting (`best_setting`: lowest FID at no fewer requested
digits than sample.py's default). Guidance takes
sample.py's default form at weight w (`guidance_at`: on the label
given the position; for `pos`, on the position).
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/compare.py: run python -m experiments --sections compare (from the repository root)")
import json
import os

import numpy as np

import metrics
from plumbing import outputs
from plumbing import rundir
import sample
from experiments.common import (DEFAULT_W, MODELS, SEEDS, TABLE_WEIGHTS, Context, cell, conditions_of, flat,
                                guidance_at, is_share, kept_set, noise_seed, reference_seed, sampler, seed_rows,
                                set_key, spread, summarise, write_figure, write_png)
from features import plot_positions

# The section's settings (tests shrink them)
N_EVAL = 1000  # samples per scored set, class-balanced
CURVE_WEIGHTS = (1.0, 1.5, 2.0, 3.0)  # the guidance curve: every seed, per-sample protocol, CURVE_N samples
CURVE_N = 1000
# Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024): (lo, hi] of sigma_t =
# sqrt((1 - abar_t) / abar_t). On train.py's linear schedule the 10 DPM-Solver++ steps sit at sigma 157, 53.6,
# 18.3, 6.29, 2.15, 0.73, 0.25, 0.086, 0.030, 0.010: (0.28, 5.42] (the paper's EDM2 interval) guides 2 of them,
# (0.2, 20] 5 (no guidance at the two highest noise levels nor at the three lowest).
GUIDANCE_INTERVALS = ((0.28, 5.42), (0.2, 20.0))
INTERVAL_WEIGHTS = (3.0, 5.0)  # the interval curve's w (with w = 1, no guidance, as its first point)
# the interval curve's models: label+pos, the main command's conditions (sample.py's default is measured there)
INTERVAL_STEMS = ("label-pos",)
MATCHED_SHARES = (0.95, 0.98)  # requested-digit shares at which the models' FID and KID are compared


# ---------------------------------------------------------------------------
# 1. The comparison (Tables 4-5, Figures 2-4 and 7), with held-out digits, seeds and matched guidance
# ---------------------------------------------------------------------------
def protocols(run: rundir.Run) -> tuple[str, ...]:
    """The label model takes no reference: one set stands for both protocols."""
    return ("per-class", "per-sample") if run.space is not None else ("per-sample",)


def requests(run: rundir.Run, protocol: str, replicate: int) -> tuple[np.ndarray, np.ndarray]:
    """N_EVAL class-balanced requests, class by class: (requested classes (n,), reference indices (n,)).
    per-class: one random reference per class for all of its samples (the report's protocol);
    per-sample: a fresh reference for each sample (a draw from p(pos | class)). Replicate r draws its own."""
    want = np.repeat(np.arange(10), N_EVAL // 10)  # (N_EVAL,)
    if protocol == "per-class":
        return want, sample.draw_references(run.labels, 1, reference_seed(replicate))[want]
    return want, sample.reference_of_each(run.labels, want, np.random.default_rng(reference_seed(replicate)))


def comparison_set(ctx: Context, run: rundir.Run, name: str, protocol: str, w: float, replicate: int,
                   rows: np.ndarray | None = None, section: str = "compare",
                   guidance_interval: tuple[float, float] | None = None) -> dict:
    """The set NAME: the requests of (protocol, replicate), or their `rows`, sampled at guidance w
    (only at the steps whose sigma lies in guidance_interval, if given)."""
    want, refs = requests(run, protocol, replicate)
    if rows is not None:
        want, refs = want[rows], refs[rows]
    chosen = sampler(guidance_at(conditions_of(run), w))
    if guidance_interval is not None:  # (a key without it stays the key of the sets made before the option)
        chosen["guidance_interval"] = list(guidance_interval)
    key = set_key(run, sampler=chosen, protocol=protocol, n=len(want), noise_seed=noise_seed(replicate),
                  reference_seed=reference_seed(replicate), rows=None if rows is None else len(rows))
    return kept_set(os.path.join(ctx.out, section, name), key,
                    lambda: sample.make_part(run, want, run.images[refs], refs, chosen, noise_seed(replicate)))


def curve_rows() -> np.ndarray:
    """The first CURVE_N / 10 requests of each class of a comparison set: the guidance curve's requests."""
    return np.flatnonzero(np.arange(N_EVAL) % (N_EVAL // 10) < CURVE_N // 10)


def compare(ctx: Context) -> dict:
    scorer, result = ctx.scorer, {"sets": {}, "evaluator_test_accuracy": ctx.scorer.test_accuracy}
    floor = ctx.digits.floor()  # the noise floor: held-out real training digits scored like a set
    result["floor"] = flat(scorer.score(ctx.digits.images[floor], ctx.digits.labels[floor], None)[0])
    for stem in MODELS:
        for seed in SEEDS:
            run = ctx.model(stem, seed)
            for w in TABLE_WEIGHTS:
                for protocol in protocols(run):
                    name = f"{stem}-s{seed}-{protocol}-w{w:g}"
                    part = comparison_set(ctx, run, name, protocol, w, seed)
                    result["sets"][name] = scorer.score(part["images"], part["labels"], run.images)[0]
                    print(name, json.dumps(flat(result["sets"][name])), flush=True)
    result["curve"] = guidance_curve(ctx)
    result["interval_curve"] = interval_curve(ctx)
    compare_summaries(result)
    figures_of_compare(ctx, result)
    return result


def compare_summaries(c: dict) -> dict:
    """Everything compare computes over the seeds, from the per-seed scores it keeps (sets, floor, the curves'
    per-seed values): the table cells, the FID ratios, the best w, matched shares, the best setting. A pure
    function of those: compare() ends with it, and a results.json read back gets it again (its intervals as made now)."""
    sets = c["sets"]
    stem_protocols = {stem: tuple(p for p in ("per-class", "per-sample")
                                  if f"{stem}-s{SEEDS[0]}-{p}-w{TABLE_WEIGHTS[0]:g}" in sets) for stem in MODELS}
    c["summary"] = {f"{stem} {protocol} w{w:g}": summary_of([sets[f"{stem}-s{s}-{protocol}-w{w:g}"] for s in SEEDS],
                                                            c["floor"])
                    for stem in MODELS for protocol in stem_protocols[stem] for w in TABLE_WEIGHTS}
    c["ratios"] = fid_ratios(sets, stem_protocols)
    c["curve"] = {stem: {w: curve_cell(curve_points(m)) for w, m in points.items()} for stem, points in c["curve"].items()}
    c["interval_curve"] = {stem: {name: dict(i, points={w: curve_cell(curve_points(m)) for w, m in i["points"].items()})
                                  for name, i in intervals.items()} for stem, intervals in c["interval_curve"].items()}
    c["best_w"] = {stem: min(curve, key=lambda w: curve[w]["fid"]["mean"]) for stem, curve in c["curve"].items()}
    c["matched"] = matched_accuracy(c["curve"], c["interval_curve"])
    c["best_setting"] = best_setting(c["curve"], c["interval_curve"], c["summary"])
    return c


def summary_of(per_seed: list[dict], floor: dict) -> dict:
    """`summarise` of one cell, plus FID minus the floor's FID per seed (fid_over_floor) and the requested-digit
    share's interval inside [0, 1] (accuracy_logit: metrics.logit_t_interval of the per-seed counts)."""
    out = summarise([dict(s, fid_over_floor=s["fid"] - floor["fid"]) for s in per_seed])
    if len(per_seed) > 1:
        share, low, high = metrics.logit_t_interval([s["correct"] for s in per_seed], [s["n"] for s in per_seed])
        out["accuracy_logit"] = dict(share=share, low=low, high=high)
    return out


def fid_ratios(sets: dict, stem_protocols: dict) -> dict:
    """FID of each position model over the label model's (the report: label+umap 0.77x), per protocol and w,
    seed r over seed r: the geometric mean of the per-seed ratios with a 95% t-interval on their logarithms
    (metrics.log_ratio_t_interval, seeds as the replicates); and KID's difference per seed, with its t-interval."""
    out = {}
    for w in TABLE_WEIGHTS:
        label = [sets[f"label-s{s}-per-sample-w{w:g}"] for s in SEEDS]
        for stem in ("label-pos", "pos"):
            for protocol in stem_protocols[stem]:
                model = [sets[f"{stem}-s{s}-{protocol}-w{w:g}"] for s in SEEDS]
                ratio, low, high = metrics.log_ratio_t_interval([m["fid"] for m in model], [m["fid"] for m in label])
                out[f"{stem} {protocol} w{w:g}"] = dict(ratio=ratio, low=low, high=high, kid_difference=spread(
                    [m["kid"] - b["kid"] for m, b in zip(model, label)]))
    return out


def curve_point(ctx: Context, run: rundir.Run, stem: str, seed: int, w: float,
                guidance_interval: tuple[float, float] | None = None) -> dict:
    """One point of a guidance curve: the CURVE_N curve requests of seed `seed`, per-sample protocol, at w
    (at a table weight without an interval: those rows of the table's set), scored."""
    rows = curve_rows()
    if guidance_interval is None and w in TABLE_WEIGHTS:
        part = comparison_set(ctx, run, f"{stem}-s{seed}-per-sample-w{w:g}", "per-sample", w, seed)
        images, labels = part["images"][rows], part["labels"][rows]
    else:
        where = "" if guidance_interval is None else "-interval{:g}-{:g}".format(*guidance_interval)
        part = comparison_set(ctx, run, f"{stem}-s{seed}-per-sample-w{w:g}{where}-curve", "per-sample", w, seed, rows,
                              guidance_interval=guidance_interval)
        images, labels = part["images"], part["labels"]
    scores = ctx.scorer.score(images, labels, None)[0]
    return {k: scores[k] for k in ("fid", "kid", "is_mean", "accuracy", "correct", "diversity", "n")}


def curve_cell(points: list[dict]) -> dict:
    """A curve point over the seeds: a `spread` per measure, the share's logit interval, the per-seed points."""
    n = [p["n"] for p in points]
    out = {k: spread([p[k] for p in points], n, is_share(k)) for k in ("fid", "kid", "is_mean", "accuracy", "diversity")}
    out["n"] = n[0]
    if len(points) > 1:
        share, low, high = metrics.logit_t_interval([p["correct"] for p in points], [p["n"] for p in points])
        out["accuracy_logit"] = dict(share=share, low=low, high=high)
    return out


def curve_points(m: dict) -> list[dict]:
    """A curve_cell -> the per-seed points it was made of (the count of requested digits: accuracy x n)."""
    return [dict(row, n=m["n"], correct=round(row["accuracy"] * m["n"])) for row in seed_rows(m)]


def guidance_curve(ctx: Context) -> dict:
    """FID and KID against requested digit over CURVE_WEIGHTS for every model and seed: per-sample protocol,
    the same CURVE_N requests and noise seed at every w. stem -> w -> curve_cell."""
    curve = {}
    for stem in MODELS:
        curve[stem] = {f"{w:g}": curve_cell([curve_point(ctx, ctx.model(stem, seed), stem, seed, w) for seed in SEEDS])
                       for w in CURVE_WEIGHTS}
    return curve


def interval_name(guidance_interval) -> str:
    return "sigma in ({:g}, {:g}]".format(*guidance_interval)


def interval_curve(ctx: Context) -> dict:
    """The guidance curve of INTERVAL_STEMS with guidance only at the noise levels of each of
    GUIDANCE_INTERVALS, at INTERVAL_WEIGHTS, every seed: stem -> interval_name -> {"interval": [lo, hi],
    "points": w -> curve_cell} (its w = 1 is the plain curve's point: no guidance at any step)."""
    return {stem: {interval_name(interval): {"interval": list(interval), "points": {
        f"{w:g}": curve_cell([curve_point(ctx, ctx.model(stem, seed), stem, seed, w, tuple(interval)) for seed in SEEDS])
        for w in INTERVAL_WEIGHTS}} for interval in GUIDANCE_INTERVALS} for stem in INTERVAL_STEMS}


def curves_of(curve: dict, interval_curves: dict) -> dict:
    """Every curve as (stem, setting) -> (guidance interval or None, [(w, cell)] in increasing w): the plain
    curves (setting "every step") and the interval ones (which start at the plain curve's w = 1)."""
    def ordered(points):
        return sorted(((float(w), cell) for w, cell in points.items()), key=lambda p: p[0])
    out = {(stem, "every step"): (None, ordered(points)) for stem, points in curve.items()}
    for stem, intervals in interval_curves.items():
        for name, c in intervals.items():
            plain = [(1.0, curve[stem]["1"])] if "1" in curve[stem] and "1" not in c["points"] else []
            out[(stem, name)] = (c["interval"], ordered(dict(c["points"], **{f"{w:g}": x for w, x in plain})))
    return out


def matched_accuracy(curve: dict, interval_curves: dict) -> dict:
    """Each curve's FID and KID where its requested-digit share reaches each of MATCHED_SHARES, interpolated
    per seed on that seed's curve (metrics.at_matched_share), then a `spread` over the seeds (None where a
    seed's curve never reaches the share); and each curve's FID over the label model's at the same share
    (metrics.log_ratio_t_interval, seed r over seed r)."""
    out, per_seed = {}, {}
    for (stem, setting), (_, points) in curves_of(curve, interval_curves).items():
        key = f"{stem} {setting}"
        out[key], per_seed[key] = {}, {}
        for share in MATCHED_SHARES:
            cell = {}
            for measure in ("fid", "kid"):
                values = [metrics.at_matched_share([c["accuracy"]["values"][r] for _, c in points],
                                                   [c[measure]["values"][r] for _, c in points], share)
                          for r in range(len(SEEDS))]
                per_seed[key][(share, measure)] = values
                cell[measure] = None if None in values else spread(values)
            out[key][f"{share:g}"] = cell
    for key in out:
        for share in MATCHED_SHARES:
            mine, label = per_seed[key][(share, "fid")], per_seed["label every step"][(share, "fid")]
            ratio = None
            if not key.startswith("label ") and None not in mine + label and len(SEEDS) > 1:
                r, low, high = metrics.log_ratio_t_interval(mine, label)
                ratio = dict(ratio=r, low=low, high=high)
            out[key][f"{share:g}"]["fid_over_label"] = ratio
    return out


def best_setting(curve: dict, interval_curves: dict, summary: dict) -> dict:
    """Per model of the interval curve: the guidance setting (w, guidance interval or None) of lowest mean FID
    among those whose mean requested-digit share is at least sample.py's default's (w = DEFAULT_W at every step,
    from the curve, or from the table's per-sample sets where the curve lacks it): the candidate for sample.py's
    default."""
    out = {}
    for stem in interval_curves:
        w = f"{DEFAULT_W:g}"
        default = curve[stem][w] if w in curve[stem] else summary[f"{stem} per-sample w{w}"]
        floor_share = default["accuracy"]["mean"]
        candidates = [(default["fid"]["mean"], DEFAULT_W, None)] + [
            (cell["fid"]["mean"], w, interval)
            for (s, _), (interval, points) in curves_of(curve, interval_curves).items() if s == stem
            for w, cell in points if cell["accuracy"]["mean"] >= floor_share]
        fid, w, interval = min(candidates, key=lambda c: c[0])
        out[stem] = dict(w=w, guidance_interval=interval, fid=fid, default_fid=default["fid"]["mean"],
                         default_accuracy=floor_share)
    return out


def figures_of_compare(ctx: Context, result: dict) -> None:
    """Class grids side by side (label | label+pos | pos, per-class protocol, seed 0, default w), Figure 7,
    and the guidance curve."""
    w, grids = DEFAULT_W, {}
    for stem in MODELS:
        run = ctx.model(stem, 0)
        protocol = protocols(run)[0]
        images = comparison_set(ctx, run, f"{stem}-s0-{protocol}-w{w:g}", protocol, w, 0)["images"]
        grids[stem] = images.reshape(10, -1, *images.shape[1:])[:, :10]  # (10 classes, up to 10, H, W, C)
    blank = np.full_like(grids["label"][:, :1], 255)
    rows = [np.concatenate([grids["label"][k], blank[k], grids["label-pos"][k], blank[k], grids["pos"][k]])
            for k in range(10)]
    write_png(os.path.join(ctx.out, "compare", "class_grids.png"), outputs.grid_png(rows))
    run = ctx.model("label-pos", 0)
    plot_positions(run.space.positions, run.labels, os.path.join(ctx.out, "compare", "positions_pixels.png"))

    from matplotlib.figure import Figure
    figure = Figure(figsize=(6, 4.2))
    axes = figure.subplots()
    for (stem, setting), (_, points) in curves_of(result["curve"], result["interval_curve"]).items():
        x = [100 * c["accuracy"]["mean"] for _, c in points]
        y = [c["fid"]["mean"] for _, c in points]
        label = MODELS[stem] if setting == "every step" else f"{MODELS[stem]}, guided at {setting}"
        axes.plot(x, y, "o-" if setting == "every step" else "s--", label=label)
        for (w, _), xi, yi in zip(points, x, y):
            axes.annotate(f"w={w:g}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
    axes.set(xlabel="requested digit (%)", ylabel="classifier-FID (vs test digits)",
             title=f"guidance curve (mean of seeds {', '.join(map(str, SEEDS))}, {CURVE_N} samples, per-sample)")
    axes.legend(fontsize=7)
    write_figure(os.path.join(ctx.out, "compare", "guidance_curve.png"), figure)



# ---------------------------------------------------------------------------
# The section's tables (tables.md)
# ---------------------------------------------------------------------------
def share_cell(m: dict | None) -> str:
    """A requested-digit share (the interval's centre) with its interval inside [0, 1] (metrics.logit_t_interval
    over the seeds)."""
    return "-" if m is None else f"{100 * m['share']:.1f}% [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


def ratio_cell(r: dict | None) -> str:
    """ratio [low, high] of metrics.log_ratio_t_interval, or - where there is none."""
    return "-" if r is None else f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def compare_tables(c: dict) -> list[str]:
    f, text = c["floor"], []
    share, low, high = metrics.wilson_interval(f["correct"], f["n"])
    for w in TABLE_WEIGHTS:
        text += [f"Guidance w = {w:g}: mean ± std [95% t-interval] over seeds {', '.join(map(str, SEEDS))}; FID, KID "
                 "and IS against the 1,000 test digits (KID x 1000: the unbiased MMD^2 of the evaluator's features, "
                 "cubic kernel); FID - floor: each seed's FID minus the noise floor's; requested digit with the 95% "
                 "t-interval of the per-seed logits (inside [0, 1]), and so the near-copy share's; diversity by the class the evaluator reads, "
                 "and nearest-training distance, relative to the test digits",
                 "", "| model | protocol | classifier-FID | FID - floor | KID x 1000 | classifier-IS | requested digit "
                 "| diversity | nearest training digit (features / pixels) | near-copies (features) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for key, m in c["summary"].items():
            stem, protocol, kw = key.split()
            if kw != f"w{w:g}":
                continue
            text.append(f"| {MODELS[stem]} | {protocol if stem != 'label' else '(no reference)'} | {cell(m['fid'])} | "
                        f"{cell(m['fid_over_floor'])} | {cell(m['kid'], 2, 1000)} | {cell(m['is_mean'])} | "
                        f"{share_cell(m.get('accuracy_logit'))} | {cell(m['diversity'])} | "
                        f"{cell(m['mem_features_median_ratio'])} / {cell(m['mem_pixels_median_ratio'])} | "
                        f"{cell(m['mem_features_near_copy_share'], 1, 100, '%')} |")
        text += [f"| held-out real training digits (noise floor) | | {f['fid']:.2f} | 0 | {1000 * f['kid']:.2f} | "
                 f"{f['is_mean']:.2f} | {100 * share:.1f}% [{100 * low:.1f}, {100 * high:.1f}] | {f['diversity']:.2f} "
                 "| | |", ""]
    text += [f"The noise floor is {f['n']} training digits held out of the evaluator's training (one set; its "
             f"requested digit is the evaluator's accuracy on them, 95% Wilson interval); the evaluator reads "
             f"{100 * c['evaluator_test_accuracy']:.1f}% of the test digits right.", ""]
    text += ["FID over the label model's at the same w (the report: label+umap 0.77x), seed r over seed r: geometric "
             "mean of the per-seed ratios, 95% t-interval on their logarithms; KID difference (x 1000) with its "
             "t-interval over seeds:", "", "| model | protocol | w | FID ratio | KID difference x 1000 |",
             "|---|---|---|---|---|"]
    for key, r in c["ratios"].items():
        stem, protocol, w = key.split()
        text.append(f"| {MODELS[stem]} | {protocol} | {w[1:]} | {ratio_cell(r)} | {cell(r['kid_difference'], 2, 1000)} |")
    text += ["", f"Guidance curves (mean over seeds {', '.join(map(str, SEEDS))}, per-sample references, {CURVE_N} "
             "samples each): FID / KID x 1000 / requested digit", "", "| model | guided steps | w | FID | KID x 1000 "
             "| requested digit |", "|---|---|---|---|---|---|"]
    for (stem, setting), (_, points) in curves_of(c["curve"], c["interval_curve"]).items():
        for w, m in points:
            text.append(f"| {MODELS[stem]} | {setting} | {w:g} | {cell(m['fid'])} | {cell(m['kid'], 2, 1000)} | "
                        f"{share_cell(m.get('accuracy_logit'))} |")
    text += ["", "Best w on each plain curve (lowest mean FID): " + ", ".join(
        f"{MODELS[stem]} w = {w}" for stem, w in c["best_w"].items()), ""]
    text += ["At matched requested digit (each seed's curve interpolated linearly to the share, then over seeds; "
             "- : a seed's curve does not reach it); FID over the label model's at the same share, 95% t-interval "
             "on the per-seed log-ratios:", "", "| model | guided steps | share | FID | KID x 1000 | FID / label |",
             "|---|---|---|---|---|---|"]
    for key, shares in c["matched"].items():
        stem, setting = key.split(" ", 1)
        for target, m in shares.items():
            text.append(f"| {MODELS[stem]} | {setting} | {100 * float(target):g}% | "
                        f"{'-' if m['fid'] is None else cell(m['fid'])} | "
                        f"{'-' if m['kid'] is None else cell(m['kid'], 2, 1000)} | {ratio_cell(m['fid_over_label'])} |")
    text.append("")
    for stem, b in c["best_setting"].items():
        where = "every step" if b["guidance_interval"] is None else interval_name(b["guidance_interval"])
        text.append(f"Best guidance setting of {MODELS[stem]} (lowest mean FID at a requested-digit share of at least "
                    f"the default's, w = {DEFAULT_W:g} at every step: {100 * b['default_accuracy']:.1f}%, FID "
                    f"{b['default_fid']:.2f}): w = {b['w']:g}, guided at {where}, FID {b['fid']:.2f}.")
    text.append("")
    return text
