"""experiment.py: which digits each part may see, the replicates' seeds, intervals, the boundary criterion,
the confused pairs, and one tiny run of all four sections end to end (2-step models on 200 digits)."""
import json
import os

import numpy as np
import pytest

import classifier
import experiment
import sample
import train
from data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return experiment.Digits.load()


def fake_run(images, labels, space=None, conditions=("label", "pos"), root="data"):
    """A sample.Run with what request_conditions, draw_references and tightness read (no model)."""
    config = {"unet": {"conditions": {name: 20 if name == "pos" else 10 for name in conditions}},
              "settings": {"backbone": "pixels", "weights": None, "root": root}}
    return sample.Run("fake", config, None, None, space, images, labels)


# ---------------------------------------------------------------------------
# The digits: no test digit in anything that trains
# ---------------------------------------------------------------------------
def test_test_digits_are_in_no_training_set_and_the_sets_are_train_pys(digits):
    test = digits.test
    assert len(test) == 1000 and (np.bincount(digits.labels[test]) == 100).all()
    used = {"train": digits.train, "floor": digits.floor(0)}
    for per_class in experiment.SCARCE:
        for data_seed, _ in experiment.AUGMENT_REPLICATES:
            used[f"scarce {per_class} {data_seed}"] = digits.scarce(per_class, data_seed)
            used[f"validation {per_class} {data_seed}"] = digits.validation(per_class, data_seed)
            assert np.intersect1d(digits.scarce(per_class, data_seed), digits.validation(per_class, data_seed)).size == 0
    for name, index in used.items():
        assert np.intersect1d(index, test).size == 0, name
    # What train.py loads is exactly these digits: the whole training split, or the scarce subset.
    images, _, _ = load_dataset("mnist-sample")
    np.testing.assert_array_equal(images, digits.images[digits.train])
    images, labels, _ = load_dataset("mnist-sample", per_class=10, data_seed=1)
    np.testing.assert_array_equal(images, digits.images[digits.scarce(10, 1)])
    assert (np.bincount(digits.labels[digits.floor(1)]) == 100).all()
    assert not np.array_equal(digits.floor(0), digits.floor(1))  # each replicate its own floor digits


@pytest.mark.parametrize("protocol", ["per-class", "per-sample"])
def test_replicates_draw_their_own_references_and_noise(mnist_sample, protocol):
    images, labels, _ = mnist_sample
    run = fake_run(images, labels)
    (want0, refs0), (want1, refs1) = experiment.requests(run, protocol, 0), experiment.requests(run, protocol, 1)
    assert len(want0) == experiment.N_EVAL and (np.bincount(want0) == experiment.N_EVAL // 10).all()
    assert (want0 == want1).all() and (labels[refs0] == want0).all() and (labels[refs1] == want1).all()
    assert (refs0 != refs1).mean() > 0.9  # other references
    np.testing.assert_array_equal(refs0, experiment.requests(run, protocol, 0)[1])  # and the same ones again
    distinct = [len(np.unique(refs0[want0 == k])) for k in range(10)]
    assert distinct == [1] * 10 if protocol == "per-class" else min(distinct) > 80
    assert experiment.noise_seed(0) != experiment.noise_seed(1)
    assert {experiment.noise_seed(r) for r in range(3)}.isdisjoint({experiment.reference_seed(r) for r in range(3)})


def test_the_guidance_curve_takes_the_same_number_of_each_class():
    rows = experiment.curve_rows()
    want = np.repeat(np.arange(10), experiment.N_EVAL // 10)
    assert len(rows) == experiment.CURVE_N and (np.bincount(want[rows]) == experiment.CURVE_N // 10).all()


# ---------------------------------------------------------------------------
# Intervals, criterion, pairs
# ---------------------------------------------------------------------------
def test_spread_is_the_student_t_interval_of_the_replicates():
    m = experiment.spread([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert m["mean"] == 2.0 and m["std"] == 1.0 and m["values"] == [1.0, 2.0, 3.0]
    assert m["low"] == pytest.approx(2 - half) and m["high"] == pytest.approx(2 + half)
    assert experiment.spread([5.0])["low"] is None  # one replicate: no interval


def walk_stats(mean_b, crossing=0.5, kept=0.95, ambiguity=0.3):
    return dict(mean_a=[1 - b for b in mean_b], mean_b=mean_b, crossing=crossing, monotonic=True, kept_mass=kept,
                ambiguity=ambiguity, n_walks=20)


def test_the_boundary_criterion_needs_every_part():
    good = walk_stats([0.05, 0.2, 0.5, 0.8, 0.95])
    assert experiment.boundary_success(good, [1.0, 1.1, 1.2, 1.1, 1.0])["success"]
    failures = {
        "starts_at_a": (walk_stats([0.15, 0.2, 0.5, 0.8, 0.95]), [1.0] * 5),
        "ends_at_b": (walk_stats([0.05, 0.2, 0.5, 0.8, 0.85]), [1.0] * 5),
        "crosses_midway": (walk_stats([0.05, 0.6, 0.8, 0.9, 0.95], crossing=0.2), [1.0] * 5),
        "stays_on_a_and_b": (walk_stats([0.05, 0.2, 0.5, 0.8, 0.95], kept=0.8), [1.0] * 5),
        "ambiguous_at_crossing": (walk_stats([0.05, 0.2, 0.5, 0.8, 0.95], ambiguity=0.1), [1.0] * 5),
        "near_the_data": (good, [1.0, 1.1, 1.4, 1.1, 1.0]),
    }
    for check, (stats, nn) in failures.items():
        verdict = experiment.boundary_success(stats, nn)
        assert not verdict["success"] and not verdict[check]
        assert all(verdict[c] for c in experiment.CHECKS if c != check), check
    never = experiment.boundary_success(walk_stats([0.0] * 5, crossing=None, ambiguity=None), [1.0] * 5)
    assert not never["crosses_midway"] and not never["ambiguous_at_crossing"]


def test_the_best_method_works_on_most_pairs():
    def pair(success, ambiguity):
        row = dict({c: success for c in experiment.CHECKS}, success=success, ambiguity=ambiguity)
        return dict(rows={"label 4": row}, criterion_row="label 4", success=success)
    methods = {"a": {"4-9": pair(True, 0.3), "3-5": pair(False, 0.4)},
               "b": {"4-9": pair(True, 0.2), "3-5": pair(True, 0.2)}}
    assert experiment.best_method(methods) == "b"


def test_confused_pairs_come_from_the_mass_put_on_the_other_class():
    labels = np.repeat(np.arange(10), 5)
    prob = np.eye(10)[labels] * 0.9 + 0.01
    prob[labels == 4, 9] += 0.3  # 4s look like 9s
    prob[labels == 5, 3] += 0.2  # 5s like 3s
    prob[labels == 3, 5] += 0.05
    confusion = experiment.soft_confusion(prob, labels)
    assert confusion[4, 9] == pytest.approx(0.31)
    assert experiment.confused_pairs(confusion, 2) == [(4, 9), (3, 5)]


def test_tightness_tells_clusters_from_noise():
    class Space:
        def __init__(self, positions):
            self.positions = positions

        def standardize(self, p):
            return (p - p.mean(0)) / p.std(0)

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    centres = rng.normal(0, 10, (10, 5))
    tight = experiment.tightness(fake_run(None, labels, Space(centres[labels] + rng.normal(0, 0.1, (500, 5)))))
    loose = experiment.tightness(fake_run(None, labels, Space(rng.normal(0, 1, (500, 5)))))
    assert tight["knn_same_class"] == 1.0 and tight["within_over_between"] < 0.05
    assert loose["knn_same_class"] < 0.2 and loose["within_over_between"] > 1


def test_a_kept_set_is_made_once_per_key(tmp_path):
    made = []

    def make():
        made.append(1)
        return dict(images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([1, 2]), reference=np.array([-1, -1]),
                    cond={"label": np.array([1, 2])})

    for key in ({"w": 1}, {"w": 1}, {"w": 3}):
        part = experiment.kept_set(str(tmp_path / "set"), key, make)
    assert len(made) == 2 and part["labels"].tolist() == [1, 2] and part["cond"]["label"].tolist() == [1, 2]
    assert json.loads((tmp_path / "set" / "set.json").read_text()) == {"w": 3}


# ---------------------------------------------------------------------------
# All four sections, tiny
# ---------------------------------------------------------------------------
def test_every_section_runs_end_to_end_and_no_test_digit_trains_anything(tmp_path, monkeypatch, digits, small_space):
    # (small_space: the session's one UMAP fit, which compiles umap's kernels for the fits here too)
    tiny = dict(TRAIN_FLAGS=("--steps", "2", "--per-class", "20", "--save-every", "2", "--warmup", "1",
                             "--root", str(tmp_path / "data")),
                SAMPLER=dict(experiment.SAMPLER, steps=2), CLASSIFIER_ARGS={"steps": 2}, SEEDS=(0, 1), N_EVAL=20,
                FLOOR_PER_CLASS=2, CURVE_WEIGHTS=(1.0, 2.0), CURVE_N=10, N_BOOT=2, PER_REFERENCE=2, PAIRS=((4, 9),), WALKS=2, POINTS=3, SCARCE=(10,),
                AUGMENT_REPLICATES=((0, 0), (0, 1)), VAL_PER_CLASS=5, N_PAIRS=2, N_AUGMENT=10)
    for name, value in tiny.items():
        monkeypatch.setattr(experiment, name, value)
    monkeypatch.setattr(train, "write_grid", lambda run, step: None)  # figures tested elsewhere: not needed here
    monkeypatch.setattr(experiment, "plot_positions", lambda *args: None)
    seen = []  # every classifier's training images, every diffusion model (its images and feature space)
    train_classifier, load_run = classifier.train_classifier, sample.load_run
    monkeypatch.setattr(classifier, "train_classifier", lambda images, *a, **k: seen.append(images) or
                        train_classifier(images, *a, **k))
    monkeypatch.setattr(sample, "load_run", lambda *a, **k: seen.append(load_run(*a, **k)) or seen[-1])

    out, runs = tmp_path / "out", tmp_path / "runs"
    experiment.main(["--out", str(out), "--runs", str(runs)])

    test_digits = {image.tobytes() for image in digits.images[digits.test]}
    runs_seen = [x for x in seen if isinstance(x, sample.Run)]
    assert len(runs_seen) >= 8 and len(seen) - len(runs_seen) >= 8  # every model, every classifier
    for run in runs_seen:  # a run's space is fitted on its training images (features.FeatureSpace: row i is image i)
        assert run.space is None or len(run.space.features) == len(run.images)
    trained_on = [x.images if isinstance(x, sample.Run) else x for x in seen]
    assert not any(image.tobytes() in test_digits for images in trained_on for image in images)
    results = json.loads((out / "results.json").read_text())
    assert set(experiment.SECTIONS) <= set(results) and all(results[s]["wall_s"] >= 0 for s in experiment.SECTIONS)
    c = results["compare"]
    assert set(c["sets"]) >= {"label-s1-per-sample-w1", "pos-s0-per-class-w3", "label-pos-s1-per-sample-w3"}
    cell = c["summary"]["label-pos per-sample w3"]["fid"]
    assert len(cell["values"]) == 2 and cell["low"] <= cell["mean"] <= cell["high"]
    assert {"ratio", "low", "high"} <= set(c["ratios"]["label-pos per-sample w3"])
    assert set(c["curve"]["pos"]) == {"1", "2"} and c["curve"]["pos"]["2"]["n"] == c["curve"]["pos"]["1"]["n"] == 10
    s0, s1 = (np.load(out / "compare" / f"label-pos-s{s}-per-sample-w3" / "samples.npz") for s in (0, 1))
    assert (s0["reference"] != s1["reference"]).any()  # each replicate its own references
    assert "own_median_ratio" in results["control"]["runs"]["pos-s1"]["memorisation"]["pixels"]
    between = results["between"]["methods"]
    assert set(between) == set(experiment.METHODS) and results["between"]["best_method"] in experiment.METHODS
    walk = np.load(out / "between" / "position-alone-on-data-4-9" / "samples.npz")
    assert walk["walk"].tolist() == [0, 0, 0, 1, 1, 1] and walk["s"].tolist() == [0, 0.5, 1] * 2
    assert results["augment"]["method"] == results["between"]["best_method"]
    gain = results["augment"]["sizes"]["10"]["gain_over_real"]["boundary"]
    assert len(gain["values"]) == 2
    tables = (out / "tables.md").read_text()
    assert "noise floor" in tables and "Best method" in tables and "confused pairs" in tables
    for figure in ("compare/class_grids.png", "compare/guidance_curve.png", "between/walks_p_b.png",
                   "between/soft-labels.png", "control/label-pos-s0.png"):
        assert os.path.getsize(out / figure) > 0

    # Run again: every model and set is reused (nothing trains or samples), and the numbers are the same.
    seen.clear()
    monkeypatch.setattr(sample, "generate", lambda *a, **k: pytest.fail("a kept set was generated again"))
    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished model was trained again"))
    experiment.main(["--out", str(out), "--runs", str(runs), "--sections", "between"])
    again = json.loads((out / "results.json").read_text())
    assert again["between"]["methods"] == results["between"]["methods"] and again["compare"] == c
