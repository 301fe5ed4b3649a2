"""The experiment's section control (python -m experiments --sections control).

Do the samples follow their reference? Two references per class,
ten samples each, for the position models in the pixel space (3
seeds) and in a semantic space (UMAP of a second classifier's
features, `--backbone classifier`): control in the conditioning
space and in the evaluator's features, each sample's distance to
its own reference (copying shows as copying), cluster tightness.
"""
if not __package__:  # run as a file, it could not import its neighbours: say what to run instead
    raise SystemExit("experiments/control.py: run python -m experiments --sections control (from the repository root)")
import json
import os

import numpy as np
import scipy.spatial

import metrics
from plumbing import outputs
from plumbing import rundir
import sample
from experiments.common import (DEFAULT_W, MODELS, SEEDS, Context, Digits, cell, conditions_of, flat, guidance_at,
                                kept_classifier, kept_set, noise_seed, reference_seed, sampler, set_key, summarise,
                                trained, write_png)
from experiments.compare import comparison_set, protocols
from features import plot_positions

# The section's settings (tests shrink them)
PER_REFERENCE = 10  # control: two references per class, this many samples each


def space_classifier(runs: str, digits: Digits) -> str:
    """The semantic space's backbone: a small classifier of the 4,000 training digits, seed 1 (the evaluator: seed 0)."""
    path = os.path.join(runs, "space_classifier.pt")
    kept_classifier(path, digits.images[digits.train], digits.labels[digits.train], seed=1)
    return path



# ---------------------------------------------------------------------------
# 2. Control, in a pixel and a semantic position space, measured in two spaces
# ---------------------------------------------------------------------------
def tightness(run: rundir.Run) -> dict:
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


def control_of(ctx: Context, run: rundir.Run, name: str, replicate: int) -> dict:
    """Two references per class, PER_REFERENCE samples each: control in the run's own space and in the
    evaluator's, and how near each sample lies to its own reference (pixels and evaluator features)."""
    refs = sample.draw_references(run.labels, 2, reference_seed(replicate))  # (20,): two per class
    want, reference = np.repeat(run.labels[refs], PER_REFERENCE), np.repeat(refs, PER_REFERENCE)
    chosen = sampler(guidance_at(conditions_of(run)))
    key = set_key(run, sampler=chosen, references=refs.tolist(), noise_seed=noise_seed(replicate))
    part = kept_set(os.path.join(ctx.out, "control", name), key,
                    lambda: sample.make_part(run, want, run.images[reference], reference, chosen, noise_seed(replicate)))
    rows = [np.concatenate([run.images[[r]], part["images"][i * PER_REFERENCE:(i + 1) * PER_REFERENCE]])
            for i, r in enumerate(refs)]  # each reference at the left of its row
    write_png(os.path.join(ctx.out, "control", f"{name}.png"), outputs.grid_png(rows))

    scores, features = ctx.scorer.score(part["images"], want, run.images, own_reference=run.images[reference])
    own = np.repeat(np.arange(len(refs)), PER_REFERENCE)  # each sample's reference, as an index into refs
    evaluator_space = metrics.controllability(features, own, want, ctx.scorer.features(run.images[refs])[0],
                                              run.labels[refs])
    conditioning_space = sample.control(run, dict(part, ref_images=run.images[refs], ref_labels=run.labels[refs]))
    return dict(space=run.config["settings"]["backbone"], conditioning_space=conditioning_space,
                evaluator_space=evaluator_space, tightness=tightness(run), **scores)


def control(ctx: Context) -> dict:
    result = {"runs": {}}
    for stem in ("label-pos", "pos"):
        for seed in SEEDS:
            result["runs"][f"{stem}-s{seed}"] = control_of(ctx, ctx.model(stem, seed), f"{stem}-s{seed}", seed)
            print(f"{stem}-s{seed}", json.dumps(flat(result["runs"][f"{stem}-s{seed}"])), flush=True)
    control_summaries(result)
    # The same in a semantic space: UMAP of a second classifier's features (trained like the evaluator, seed 1).
    name = "label-pos-classifier-s0"
    run = trained(ctx.runs, name, "--cond", "label+pos", "--backbone", "classifier",
                  "--weights", space_classifier(ctx.runs, ctx.digits))
    result["runs"][name] = control_of(ctx, run, name, 0)
    result["runs"][name]["quality"] = {}
    for protocol in protocols(run):  # its samples, scored like the comparison's
        part = comparison_set(ctx, run, f"{name}-{protocol}-w{DEFAULT_W:g}", protocol, DEFAULT_W, 0, section="control")
        result["runs"][name]["quality"][protocol] = flat(ctx.scorer.score(part["images"], part["labels"], run.images)[0])
    plot_positions(run.space.positions, run.labels, os.path.join(ctx.out, "control", "positions_classifier.png"))
    print(name, json.dumps(flat(result["runs"][name])), flush=True)
    return result


def control_summaries(c: dict) -> dict:
    """The position models' numbers over the seeds, from the per-seed runs control keeps: a pure function of
    them, which control() ends with and a results.json read back gets again (its intervals as made now)."""
    for stem in ("label-pos", "pos"):
        runs = [c["runs"][f"{stem}-s{s}"] for s in SEEDS]
        c[f"{stem} summary"] = summarise([control_summary(m) for m in runs])
        c[f"{stem} own-reference"] = own_reference_intervals(runs)
    return c


def own_reference_intervals(per_seed: list[dict]) -> dict | None:
    """The own-reference rate over seeds in each space (conditioning, evaluator): a share of a run's samples,
    so its interval is metrics.logit_t_interval of the per-seed counts (inside [0, 1]). None with one seed."""
    if len(per_seed) < 2:
        return None
    n = [m["n"] for m in per_seed]
    return {space: dict(zip(("share", "low", "high"), metrics.logit_t_interval(
                [round(m[space]["own_reference_rate"] * m["n"]) for m in per_seed], n)))
            for space in ("conditioning_space", "evaluator_space")}


def control_summary(m: dict) -> dict:
    """The control numbers of one run, flat (what the seeds are summarised over)."""
    out = {f"cond_{k}": v for k, v in m["conditioning_space"].items() if isinstance(v, float)}
    out.update({f"eval_{k}": v for k, v in m["evaluator_space"].items() if isinstance(v, float)})
    out.update(flat({k: v for k, v in m.items() if k not in ("conditioning_space", "evaluator_space", "space")}))
    return out



# ---------------------------------------------------------------------------
# The section's table (tables.md)
# ---------------------------------------------------------------------------
def control_tables(c: dict) -> list[str]:
    text = ["| model | space | own-reference rate (its space / evaluator) | retrieval top-1 (its space / evaluator) "
            "| distance to own reference, over test digits' nearest training digit (features / pixels) "
            "| copies of own reference | kNN same class | within / between | requested digit |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, m in c["runs"].items():
        cs, es, f, p = m["conditioning_space"], m["evaluator_space"], m["memorisation"]["features"], m["memorisation"]["pixels"]
        t = m["tightness"]
        text.append(f"| {name} | {m['space']} | {cs['own_reference_rate']:.3f} / {es['own_reference_rate']:.3f} | "
                    f"{cs['retrieval_top1']:.3f} / {es['retrieval_top1']:.3f} | {f['own_median_ratio']:.2f} / "
                    f"{p['own_median_ratio']:.2f} | {100 * f['own_near_copy_share']:.1f}% | {t['knn_same_class']:.3f} | "
                    f"{t['within_over_between']:.2f} | {100 * m['accuracy']:.1f}% |")
    text.append("")
    for stem in ("label-pos", "pos"):
        s = c[f"{stem} summary"]
        rate = c.get(f"{stem} own-reference")  # the share's interval on the per-seed logits (None: one seed)
        cond, evaluator = ((f"{rate[k]['share']:.3f} [{rate[k]['low']:.3f}, {rate[k]['high']:.3f}]"
                            for k in ("conditioning_space", "evaluator_space")) if rate else
                           (cell(s["cond_own_reference_rate"], 3), cell(s["eval_own_reference_rate"], 3)))
        text.append(f"{MODELS[stem]}, pixel space, over seeds: own-reference rate {cond} (evaluator {evaluator}; "
                    f"95% t-interval on the per-seed logits), own-reference distance ratio "
                    f"{cell(s['mem_features_own_median_ratio'])} (features)")
    quality = c["runs"]["label-pos-classifier-s0"]["quality"]
    text += ["label-pos-classifier-s0 quality: " + ", ".join(
        f"{p} FID {q['fid']:.2f}, IS {q['is_mean']:.2f}, requested digit {100 * q['accuracy']:.1f}%, "
        f"diversity {q['diversity']:.2f}" for p, q in quality.items()), ""]
    return text
