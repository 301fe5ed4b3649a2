"""The experiment (python -m experiments): which digits each part may see, the replicates' seeds, intervals, the
boundary criterion, the confused pairs, one tiny run of all four sections end to end (2-step models on 200
digits), and the commands: python -m, a module run as a file."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plumbing import classifier
import metrics
import boundary
import generation
from plumbing import rundir, train_command
import train
from plumbing.data import load_dataset
from experiments import __main__ as cli
from experiments import augment, between, common, compare, control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root: python -m runs there


@pytest.fixture(scope="module")
def digits():
    return common.Digits.load()


def fake_run(images, labels, space=None, conditions=("label", "pos"), root="data"):
    """A rundir.Run with what request_conditions, draw_references and tightness read (no model)."""
    config = {"unet": {"conditions": {name: 20 if name == "pos" else 10 for name in conditions}},
              "settings": {"backbone": "pixels", "weights": None, "root": root}}
    return rundir.Run("fake", config, None, None, space, images, labels)


# ---------------------------------------------------------------------------
# The digits: no test digit in anything that trains
# ---------------------------------------------------------------------------
def test_test_digits_are_in_no_training_set_and_the_sets_are_train_pys(digits):
    test = digits.test
    assert len(test) == 1000 and (np.bincount(digits.labels[test]) == 100).all()
    used = {"train": digits.train, "floor": digits.floor()}
    for per_class in augment.SCARCE:
        for data_seed, _ in augment.AUGMENT_REPLICATES:
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
    floor, fit = digits.floor(), digits.evaluator_train()  # the floor: training digits the evaluator never sees
    assert (np.bincount(digits.labels[floor]) == 100).all() and np.intersect1d(floor, digits.train).size == 1000
    assert np.intersect1d(floor, fit).size == 0 and np.union1d(floor, fit).size == len(digits.train)


@pytest.mark.parametrize("protocol", ["per-class", "per-sample"])
def test_replicates_draw_their_own_references_and_noise(mnist_sample, protocol):
    images, labels, _ = mnist_sample
    run = fake_run(images, labels)
    (want0, refs0), (want1, refs1) = compare.requests(run, protocol, 0), compare.requests(run, protocol, 1)
    assert len(want0) == compare.N_EVAL and (np.bincount(want0) == compare.N_EVAL // 10).all()
    assert (want0 == want1).all() and (labels[refs0] == want0).all() and (labels[refs1] == want1).all()
    assert (refs0 != refs1).mean() > 0.9  # other references
    np.testing.assert_array_equal(refs0, compare.requests(run, protocol, 0)[1])  # and the same ones again
    distinct = [len(np.unique(refs0[want0 == k])) for k in range(10)]
    assert distinct == [1] * 10 if protocol == "per-class" else min(distinct) > 80
    assert common.noise_seed(0) != common.noise_seed(1)
    assert {common.noise_seed(r) for r in range(3)}.isdisjoint({common.reference_seed(r) for r in range(3)})


def test_the_guidance_curve_takes_the_same_number_of_each_class():
    rows = compare.curve_rows()
    want = np.repeat(np.arange(10), compare.N_EVAL // 10)
    assert len(rows) == compare.CURVE_N and (np.bincount(want[rows]) == compare.CURVE_N // 10).all()


# ---------------------------------------------------------------------------
# Intervals, criterion, pairs
# ---------------------------------------------------------------------------
def test_a_share_gets_an_interval_inside_0_and_1_from_its_counts_named_in_the_json():
    share = common.spread([0.99, 1.0, 1.0], 1000, share=True)  # a t-interval would pass 100%
    assert share["interval"] == "logit t" and 0 < share["low"] < share["high"] < 1
    assert (share["centre"], share["low"], share["high"]) == metrics.logit_t_interval([990, 1000, 1000], [1000] * 3)
    assert common.spread([0.99, 1.0, 1.0])["high"] > 1 and common.spread([0.99, 1.0, 1.0])["interval"] == "t"
    bounded = common.spread([0.01, 0.03, 0.02], share=True)  # no count: t on the logits
    logits = np.log(np.array([0.01, 0.03, 0.02]) / np.array([0.99, 0.97, 0.98]))
    assert bounded["low"] == pytest.approx(1 / (1 + np.exp(-metrics.t_interval(logits)[1])))
    assert common.spread([0.0, 0.01, 0.02], share=True)["low"] is None  # a logit of 0: no interval
    cells = common.summarise([dict(n=100, accuracy=a, fid=f, memorisation={"pixels": {"near_copy_share": c}})
                              for a, f, c in ((1.0, 3.0, 0.0), (0.99, 4.0, 0.01))])
    assert cells["accuracy"]["interval"] == cells["mem_pixels_near_copy_share"]["interval"] == "logit t"
    assert cells["fid"]["interval"] == "t" and cells["accuracy"]["high"] < 1 and cells["mem_pixels_near_copy_share"]["low"] > 0


OTHER_SHARES = ("all", "confused_pairs", "ece", "read_as_label", "soft_distance")  # augment's measures in [0, 1]


def spreads(tree, key=""):
    """Every `spread` in a results tree, with its measure's name."""
    if isinstance(tree, dict) and {"mean", "std", "values"} <= set(tree):
        yield key, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from spreads(v, k)


def test_the_kept_results_json_read_back_has_every_share_interval_inside_0_and_1_and_its_numbers():
    path = os.path.join(ROOT, "results", "experiment", "results.json")
    with open(path) as f:
        kept = json.load(f)
    results = cli.read_results(path)  # every section's summaries again, from its per-seed numbers
    assert set(cli.SUMMARIES) == {"compare", "control", "augment"} and results["between"] == kept["between"]
    checked = 0
    for section in cli.SUMMARIES:
        again = cli.SUMMARIES[section](json.loads(json.dumps(results[section])))
        assert again == results[section]  # a pure function of the per-seed numbers: the same when applied again
        for (name, m), (_, before) in zip(spreads(results[section]), spreads(kept[section])):
            assert m["values"] == before["values"] and m["mean"] == before["mean"]
            if common.is_share(name) or name in OTHER_SHARES:
                assert m["interval"] == "logit t" and 0 <= m["low"] <= m["high"] <= 1, (section, name, m)
                checked += 1
            else:
                assert m["interval"] == "t"
    assert checked > 100
    cell = results["compare"]["summary"]["label per-sample w3"]["accuracy"]
    logit = results["compare"]["summary"]["label per-sample w3"]["accuracy_logit"]
    assert (cell["low"], cell["high"]) == (logit["low"], logit["high"]) and logit["high"] < 1


def test_spread_is_the_student_t_interval_of_the_replicates():
    m = common.spread([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert m["mean"] == 2.0 and m["std"] == 1.0 and m["values"] == [1.0, 2.0, 3.0]
    assert m["low"] == pytest.approx(2 - half) and m["high"] == pytest.approx(2 + half)
    assert common.spread([5.0])["low"] is None  # one replicate: no interval


def curve_cell(accuracy, fid):
    """A curve point over two seeds, as compare.curve_cell makes it (KID = FID / 1000 here)."""
    return {"accuracy": common.spread(accuracy), "fid": common.spread(fid),
            "kid": common.spread([f / 1000 for f in fid])}


def test_matched_accuracy_and_the_best_setting_by_hand(monkeypatch):
    monkeypatch.setattr(compare, "SEEDS", (0, 1))
    monkeypatch.setattr(compare, "MATCHED_SHARES", (0.95,))
    curve = {"label": {"1": curve_cell([0.90, 0.92], [4.0, 4.0]), "3": curve_cell([0.96, 0.98], [6.0, 8.0])},
             "label-pos": {"1": curve_cell([0.90, 0.90], [3.0, 3.0]), "3": curve_cell([0.99, 0.96], [6.0, 5.0])}}
    intervals = {"label-pos": {"mid": {"interval": [0.2, 20.0], "points": {"3": curve_cell([0.97, 0.97], [4.0, 4.0])}}}}
    m = compare.matched_accuracy(curve, intervals)
    # label: seed 0 5/6 of the way 0.90 -> 0.96 (4 + 2 * 5/6), seed 1 half way 0.92 -> 0.98 (4 + 4 / 2)
    assert m["label every step"]["0.95"]["fid"]["values"] == pytest.approx([4 + 2 * 5 / 6, 6.0])
    # label+pos: 5/9 of the way 0.90 -> 0.99 (3 + 3 * 5/9); seed 1 5/6 of 0.90 -> 0.96 (3 + 2 * 5/6)
    fid = [3 + 3 * 5 / 9, 3 + 2 * 5 / 6]
    assert m["label-pos every step"]["0.95"]["fid"]["values"] == pytest.approx(fid)
    assert m["label-pos every step"]["0.95"]["kid"]["values"] == pytest.approx([f / 1000 for f in fid])
    assert m["label-pos mid"]["0.95"]["fid"]["values"] == pytest.approx([3 + 5 / 7, 3 + 5 / 7])  # 0.90 -> 0.97
    ratio = m["label-pos every step"]["0.95"]["fid_over_label"]["ratio"]
    assert ratio == pytest.approx(np.sqrt(fid[0] / (4 + 2 * 5 / 6) * fid[1] / 6.0))  # the geometric mean
    assert m["label every step"]["0.95"]["fid_over_label"] is None
    best = compare.best_setting(curve, intervals, {})["label-pos"]  # default w = 3: 97.5%, FID 5.5
    assert (best["w"], best["guidance_interval"], best["fid"]) == (3.0, None, 5.5)  # 97% < 97.5%: the default
    intervals["label-pos"]["mid"]["points"]["3"] = curve_cell([0.98, 0.98], [4.0, 4.0])
    best = compare.best_setting(curve, intervals, {})["label-pos"]
    assert (best["w"], best["guidance_interval"], best["fid"]) == (3.0, [0.2, 20.0], 4.0)


def reader(ambiguity=0.3, share=0.7, kept=0.95):
    return dict(ambiguity=ambiguity, ambiguous_share=share, kept_mass=kept, crossing_share=1.0, width_median=0.1,
                n_samples=20, n_walks=20)


def test_the_boundary_criterion_needs_every_part():
    """Near the data means: not farther than the real ambiguous digits' upper 95% bound (here 1.5)."""
    assert between.boundary_success(reader(), 1.5, 1.5)["success"]
    failures = {
        "ambiguous": (reader(ambiguity=0.24), 1.0),
        "mostly_ambiguous": (reader(share=0.55), 1.0),
        "stays_on_a_and_b": (reader(kept=0.85), 1.0),
        "near_the_data": (reader(), 1.51),
    }
    for check, (stats, nn) in failures.items():
        verdict = between.boundary_success(stats, nn, 1.5)
        assert not verdict["success"] and not verdict[check]
        assert all(verdict[c] for c in between.CHECKS if c != check), check
    never = between.boundary_success(reader(ambiguity=None, share=None, kept=None), None, 1.5)  # no walk crossed
    assert not any(never.values())
    assert not between.boundary_success(reader(), 1.0, None)["near_the_data"]  # no reference: not shown near


def test_the_real_reference_is_made_of_digits_no_reader_trained_on(digits):
    """The 2,000 digits of the real reference: the test digits and the floor's, none of the evaluator's (and so
    of the second reader's, which trains on the same digits) training digits."""
    from types import SimpleNamespace
    pool = between.unseen_real(SimpleNamespace(digits=digits))
    assert len(pool) == len(set(pool.tolist())) == 2000
    assert not set(pool.tolist()) & set(digits.evaluator_train().tolist())
    assert set(pool.tolist()) == set(digits.test.tolist()) | set(digits.floor().tolist())


def test_agreement_and_the_nearest_training_ratio_leave_nothing_out_but_the_digit_itself():
    from types import SimpleNamespace
    assert between.agreement(np.array([0.3, 0.25, 0.1, 0.4]), np.array([0.2, 0.1, 0.5, 0.3])) == dict(
        n=3, both=2, share=2 / 3)  # of the three the first reader finds ambiguous, two are for the second
    assert between.agreement(np.array([0.1]), np.array([0.5]))["share"] is None
    train_images = np.stack([np.full((2, 2, 1), v, np.uint8) for v in (0, 100, 200)])  # (3, 2, 2, 1)
    scorer = SimpleNamespace(training_features=lambda images: images.reshape(len(images), -1) / 255.0,
                             features=lambda images: (images.reshape(len(images), -1) / 255.0, None),
                             test_features=np.full((1, 4), 50 / 255), test_images=np.full((1, 2, 2, 1), 50, np.uint8))
    near = between.Nearness(SimpleNamespace(scorer=scorer), train_images)
    features, pixels = near.ratios(train_images[1:2])  # a training digit: its own copy is at distance 0
    assert features[0] == pixels[0] == 0
    features, pixels = near.ratios(train_images[1:2], np.array([1]))  # left out: the next one, 100 grey levels away
    assert features[0] == pytest.approx(2.0) and pixels[0] == pytest.approx(2.0)  # over the test digit's 50


def test_the_guide_reports_the_walks_widths_and_the_seeds_give_intervals():
    """walk_scores gives the transition width to the guide's statistics (it is the guide's P(B) that was
    searched), and seed_intervals puts seed-level intervals on what the readers see."""
    from types import SimpleNamespace
    rng = np.random.default_rng(0)
    prob = np.full((3, 10), 0.0)
    prob[:, 4], prob[:, 9] = [0.5, 0.7, 0.9], [0.5, 0.3, 0.1]
    scorer = SimpleNamespace(features=lambda images: (rng.normal(size=(len(images), 4)), prob),
                             training_features=lambda images: rng.normal(size=(len(images), 4)),
                             nearest_baseline=lambda images: 1.0)
    second = SimpleNamespace(logits=lambda images: np.log(prob + 1e-9))
    part = dict(images=np.zeros((3, 28, 28, 1), np.uint8), walk=np.array([0, 2, 3]), s=np.array([0.4, 0.5, 0.6]),
                prob=np.array([[0.5, 0.5], [0.45, 0.55], [0.5, 0.5]]), width=np.array([0.1, np.nan, 0.3]))
    near = SimpleNamespace(ratios=lambda images, own=None, features=None: (np.full(len(images), 1.5),
                                                                        np.full(len(images), 2.0)))
    monkey = SimpleNamespace(scorer=scorer)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(between, "WALKS", 4)
        scores = between.walk_scores(monkey, near, part, 4, 9, second)
    assert scores["nn_ratio"] == [1.5] * 3 and scores["nn_ratio_pixels"] == [2.0] * 3
    assert scores["guide"]["width_median"] == pytest.approx(0.2)  # the finite widths 0.1 and 0.3
    assert scores["evaluator"]["ambiguity"] == pytest.approx(0.3) and scores["evaluator"]["crossing_share"] == 0.75

    seeds = [dict(ambiguity=a, ambiguous_share=k / 20, n_samples=20) for a, k in ((0.2, 8), (0.3, 12), (0.25, 10))]
    out = between.seed_intervals(seeds)
    half = 4.302653 * 0.05 / np.sqrt(3)  # t(0.975, 2) s / sqrt(3), s = 0.05
    assert out["ambiguity_interval"] == pytest.approx([0.25 - half, 0.25 + half], abs=1e-5)
    low, high = out["ambiguous_share_interval"]
    assert 0 < low < 0.5 < high < 1
    assert between.seed_intervals(seeds[:1]) == {} and between.seed_intervals(
        seeds[:2] + [dict(ambiguity=None, ambiguous_share=None, n_samples=0)]) == {}


def test_the_own_reference_rate_interval_stays_inside_0_and_1():
    runs = [dict(n=200, conditioning_space=dict(own_reference_rate=r), evaluator_space=dict(own_reference_rate=e))
            for r, e in ((0.955, 0.76), (0.855, 0.61), (0.875, 0.63))]
    out = control.own_reference_intervals(runs)
    for space in ("conditioning_space", "evaluator_space"):
        assert 0 < out[space]["low"] < out[space]["share"] < out[space]["high"] < 1
    assert out["conditioning_space"]["high"] < 1.0 and out["conditioning_space"]["share"] == pytest.approx(0.90, abs=0.02)
    assert control.own_reference_intervals(runs[:1]) is None


def test_the_best_method_works_on_most_pairs():
    def pair(success, ambiguity):
        return dict({c: success for c in between.CHECKS}, success=success, evaluator=reader(ambiguity=ambiguity))
    methods = {"a": {"4-9": pair(True, 0.3), "3-5": pair(False, 0.4)},
               "b": {"4-9": pair(True, 0.2), "3-5": pair(True, 0.2)}}
    assert between.best_method(methods) == "b"


def test_confused_pairs_come_from_the_mass_put_on_the_other_class():
    labels = np.repeat(np.arange(10), 5)
    prob = np.eye(10)[labels] * 0.9 + 0.01
    prob[labels == 4, 9] += 0.3  # 4s look like 9s
    prob[labels == 5, 3] += 0.2  # 5s like 3s
    prob[labels == 3, 5] += 0.05
    confusion = common.soft_confusion(prob, labels)
    assert confusion[4, 9] == pytest.approx(0.31)
    assert common.confused_pairs(confusion, 2) == [(4, 9), (3, 5)]


def test_tightness_tells_clusters_from_noise():
    class Space:
        def __init__(self, positions):
            self.positions = positions

        def standardize(self, p):
            return (p - p.mean(0)) / p.std(0)

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    centres = rng.normal(0, 10, (10, 5))
    tight = control.tightness(fake_run(None, labels, Space(centres[labels] + rng.normal(0, 0.1, (500, 5)))))
    loose = control.tightness(fake_run(None, labels, Space(rng.normal(0, 1, (500, 5)))))
    assert tight["knn_same_class"] == 1.0 and tight["within_over_between"] < 0.05
    assert loose["knn_same_class"] < 0.2 and loose["within_over_between"] > 1


def test_a_kept_set_is_made_once_per_key(tmp_path):
    made = []

    def make():
        made.append(1)
        return dict(images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([1, 2]), reference=np.array([-1, -1]),
                    cond={"label": np.array([1, 2])})

    for key in ({"w": 1}, {"w": 1}, {"w": 3}):
        part = common.kept_set(str(tmp_path / "set"), key, make)
    assert len(made) == 2 and part["labels"].tolist() == [1, 2] and part["cond"]["label"].tolist() == [1, 2]
    assert json.loads((tmp_path / "set" / "set.json").read_text()) == {"w": 3}


# ---------------------------------------------------------------------------
# All four sections, tiny
# ---------------------------------------------------------------------------
def test_soft_labels_come_from_the_labeller_and_sum_to_one():
    class Labeller:
        def logits(self, images):
            return np.log(np.tile(np.arange(1, 11, dtype=np.float64), (len(images), 1)))

    soft = augment.soft_labels(Labeller(), np.zeros((3, 28, 28, 1), np.uint8))
    assert np.allclose(soft.sum(1), 1) and np.allclose(soft[0], np.arange(1, 11) / 55, atol=1e-6)


class TruthReader:
    """An evaluator that knows every digit's class (a lookup) and whose features are its pixels."""

    def __init__(self, images, labels):
        self.truth = {image.tobytes(): label for image, label in zip(images, labels)}

    def features_and_logits(self, images):
        classes = np.array([self.truth[image.tobytes()] for image in images])
        return common.pixels(images), 10.0 * np.eye(10)[classes]


def test_set_mechanism_sees_copies_label_noise_and_wrong_soft_labels(digits):
    """Copies of the scarce digits with their own labels: read as labelled, copies (ratio 0, near-copy share 1);
    other digits labelled one class off with uniform soft labels: none read as labelled, soft labels far from
    the evaluator's reading, as new as the test digits (ratio about 1)."""
    scorer = object.__new__(common.Scorer)
    scorer.net = TruthReader(digits.images, digits.labels)
    scorer.test_images = digits.images[digits.test]
    scorer.test_features, logits = scorer.net.features_and_logits(scorer.test_images)
    scorer.test_diversity = common.diversity(scorer.test_features, logits.argmax(1))
    scorer.training_sets = {}
    scarce = digits.scarce(10, 0)
    real, labels = digits.images[scarce], digits.labels[scarce]
    copies = augment.set_mechanism(scorer, dict(images=real, labels=labels, soft=np.eye(10)[labels]), real)
    assert copies["read_as_label"] == 1 and copies["soft_distance"] < 0.01
    assert copies["nearest_ratio_pixels"] == 0 and copies["nearest_ratio_features"] == 0
    assert copies["near_copy_share"] == 1
    other = digits.validation(10, 0)
    wrong = augment.set_mechanism(scorer, dict(images=digits.images[other], labels=(digits.labels[other] + 1) % 10,
                                                  soft=np.full((len(other), 10), 0.1)), real)
    assert wrong["read_as_label"] == 0 and wrong["soft_distance"] > 0.85
    assert 0.8 < wrong["nearest_ratio_pixels"] < 1.25 and wrong["near_copy_share"] < 0.05
    assert 0.8 < wrong["diversity"] < 1.25
    one = augment.set_mechanism(scorer, dict(images=np.repeat(real[:1], 5, 0), labels=np.repeat(labels[:1], 5),
                                                soft=np.eye(10)[np.repeat(labels[:1], 5)]), real)
    assert one["diversity"] == 0  # five copies of one digit: no spread


def crossing_everywhere(run, a, b, walks, method=None, seed=0, guide=None, sampler=None, **search):
    """boundary.boundary_samples faked for augment's tiny 2-step models, whose walks the real guide never sees
    cross: training digits of class a as the 'crossed' rows (every walk crosses, at s = 0.4)."""
    rows = np.flatnonzero(run.labels == a)[np.arange(walks) % (run.labels == a).sum()]
    return dict(images=run.images[rows], labels=np.full(walks, a, np.int64), reference=np.full(walks, -1),
                cond={"label": np.full(walks, a, np.int64)}, walk=np.arange(walks), s=np.full(walks, 0.4),
                endpoints=np.tile([rows[0], rows[0]], (walks, 1)), prob=np.full((walks, 2), 0.5),
                width=np.full(walks, 0.1), crossed=np.ones(walks, bool))


def fake_augment_crossings(monkeypatch):
    """augment's boundary_set with the faked search (the between section keeps the real one)."""
    real_set = augment.boundary_set

    def boundary_set(*args, **kwargs):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(boundary, "boundary_samples", crossing_everywhere)
            return real_set(*args, **kwargs)

    monkeypatch.setattr(augment, "boundary_set", boundary_set)


def shrink(monkeypatch, **settings):
    """Set each name in every experiments module that holds it: a section imports the shared settings by name,
    so the module that defines a setting and each that reads it have their own binding."""
    for name, value in settings.items():
        holders = [m for m in (common, compare, control, between, augment, cli) if hasattr(m, name)]
        assert holders, name
        for module in holders:
            monkeypatch.setattr(module, name, value)


def test_every_section_runs_end_to_end_and_no_test_digit_trains_anything(tmp_path, monkeypatch, digits, small_space):
    # (small_space: the session's one UMAP fit, which compiles umap's kernels for the fits here too)
    tiny = dict(TRAIN_FLAGS=("--steps", "2", "--per-class", "20", "--batch-size", "16", "--save-every", "2",
                             "--warmup", "1"),
                SAMPLER=dict(common.SAMPLER, steps=2), CLASSIFIER_ARGS={"steps": 2}, SEEDS=(0, 1), N_EVAL=20,
                FLOOR_PER_CLASS=2, CURVE_WEIGHTS=(1.0, 2.0), CURVE_N=10,
                INTERVAL_WEIGHTS=(3.0,), GUIDANCE_INTERVALS=((0.2, 20.0),), KID_SUBSETS=2, PER_REFERENCE=2, PAIRS=((4, 9),), WALKS=2, POINTS=3, SCARCE=(10,),
                BETWEEN_GRID=3, BETWEEN_TOLERANCE=0.25, CONFUSED_PAIRS=1,
                AUGMENT_REPLICATES=((0, 0), (0, 1)), VAL_PER_CLASS=5, N_PAIRS=2, N_AUGMENT=10,
                AUGMENT_SWEEP=(6,), AUGMENT_STEPS=2)
    shrink(monkeypatch, **tiny)
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    fake_augment_crossings(monkeypatch)
    monkeypatch.setattr(train, "write_grid", lambda run, step: None)  # figures tested elsewhere: not needed here
    monkeypatch.setattr(train, "plot_loss", lambda out: None)  # (loss.png: tests/test_training.py, test_bad_input.py)
    small = train_command.unet_kwargs  # a U-Net of base width 8: what flows where is tested here, not quality
    monkeypatch.setattr(train_command, "unet_kwargs", lambda *args: {**small(*args), "base_channels": 8})
    shrink(monkeypatch, plot_positions=lambda *args: None)
    seen = []  # every classifier's training images, every diffusion model (its images and feature space)
    train_classifier, load_run = classifier.train_classifier, rundir.load_run
    # (a classifier trained with its default steps, augment's labeller, trains 2 here, as CLASSIFIER_ARGS's do)
    monkeypatch.setattr(classifier, "train_classifier", lambda images, *a, **k: seen.append(images) or
                        train_classifier(images, *a, **{"steps": 2, **k}))
    monkeypatch.setattr(rundir, "load_run", lambda *a, **k: seen.append(load_run(*a, **k)) or seen[-1])
    points, samples_of = [], boundary.boundary_samples  # sections 3 and 4 keep v1's point, whatever sample.py's
    monkeypatch.setattr(boundary, "boundary_samples", lambda *a, **k: points.append(k.get("point")) or samples_of(*a, **k))

    out, runs = tmp_path / "out", tmp_path / "runs"
    cli.main(["--out", str(out), "--runs", str(runs)])

    test_digits = {image.tobytes() for image in digits.images[digits.test]}
    runs_seen = [x for x in seen if isinstance(x, rundir.Run)]
    assert len(runs_seen) >= 8 and len(seen) - len(runs_seen) >= 8  # every model, every classifier
    for run in runs_seen:  # a run's space is fitted on its training images (features.FeatureSpace: row i is image i)
        assert run.space is None or len(run.space.features) == len(run.images)
    trained_on = [x.images if isinstance(x, rundir.Run) else x for x in seen]
    assert not any(image.tobytes() in test_digits for images in trained_on for image in images)
    results = json.loads((out / "results.json").read_text())
    assert set(cli.SECTIONS) <= set(results) and all(results[s]["wall_s"] >= 0 for s in cli.SECTIONS)
    c = results["compare"]
    assert set(c["sets"]) >= {"label-s1-per-sample-w1", "pos-s0-per-class-w3", "label-pos-s1-per-sample-w3"}
    cell = c["summary"]["label-pos per-sample w3"]["fid"]
    assert len(cell["values"]) == 2 and cell["low"] <= cell["mean"] <= cell["high"]
    assert {"ratio", "low", "high"} <= set(c["ratios"]["label-pos per-sample w3"])
    assert set(c["curve"]["pos"]) == {"1", "2"} and c["curve"]["pos"]["2"]["n"] == c["curve"]["pos"]["1"]["n"] == 10
    assert len(c["curve"]["pos"]["2"]["fid"]["values"]) == 2  # the curve over every seed
    interval = c["interval_curve"]["label-pos"]["sigma in (0.2, 20]"]
    assert interval["interval"] == [0.2, 20.0] and set(interval["points"]) == {"3"}
    key = json.loads((out / "compare" / "label-pos-s1-per-sample-w3-interval0.2-20-curve" / "set.json").read_text())
    assert key["sampler"]["guidance_interval"] == [0.2, 20.0]
    assert set(c["matched"]["label-pos sigma in (0.2, 20]"]) == {"0.95", "0.98"}
    assert set(c["best_setting"]["label-pos"]) >= {"w", "guidance_interval", "fid"}
    accuracy = c["summary"]["label-pos per-sample w3"]["accuracy_logit"]
    assert 0 <= accuracy["low"] <= accuracy["share"] <= accuracy["high"] <= 1
    copies = c["summary"]["label-pos per-sample w3"]["mem_features_near_copy_share"]
    assert copies["interval"] == "logit t" and 0 <= copies["low"] <= copies["high"] <= 1
    assert "kid" in c["sets"]["pos-s0-per-class-w3"] and "fid_over_floor" in c["summary"]["pos per-class w3"]
    s0, s1 = (np.load(out / "compare" / f"label-pos-s{s}-per-sample-w3" / "samples.npz") for s in (0, 1))
    assert (s0["reference"] != s1["reference"]).any()  # each replicate its own references
    assert "own_median_ratio" in results["control"]["runs"]["pos-s1"]["memorisation"]["pixels"]
    methods = results["between"]["methods"]
    assert set(methods) == set(between.between_methods())
    assert len(results["between"]["pairs"]) == 2 and results["between"]["pairs"][0] == "4-9"
    assert results["between"]["best_boundary_method"] in boundary.BOUNDARY_METHODS
    assert points and set(points) == {boundary.GUIDE_DESIGNS[common.GUIDE_DESIGN].point} == {"crossing"}
    walk = np.load(out / "between" / "compose-w-3-eta-0-4-9-s1" / "samples.npz")
    assert set(walk["walk"].tolist()) <= {0, 1} and walk["prob"].shape == (len(walk["walk"]), 2)
    assert ((walk["s"] > 0) & (walk["s"] < 1)).all()
    cell = methods["soft, w 3, eta 1"]["4-9"]
    assert {"evaluator", "second", "guide", "nn_ratio_median", "success"} <= set(cell) and len(cell["seeds"]) == 2
    real = results["between"]["real"]["4-9"]  # the real reference: unseen by both readers, at least REAL_AT_LEAST
    assert real["n"] >= between.REAL_AT_LEAST and not set(real["digits"]) & set(digits.evaluator_train().tolist())
    assert set(digits.labels[real["digits"]].tolist()) <= {4, 9} and real["nn_ratio_interval"][0] <= real["nn_ratio_interval"][1]
    assert sorted(real["min_evaluator"], reverse=True) == real["min_evaluator"]  # the most ambiguous first
    filtered = results["between"]["trusted"]["soft, w 3, eta 1"]["4-9"]  # the filter, on sets with the readings
    assert filtered["walks"] == 4 and filtered["trusted"] <= filtered["found"] <= filtered["walks"]
    members = np.load(out / "between" / "soft-w-3-eta-1-4-9-s0-members" / "samples.npz")
    assert members["guide_prob"].shape == (len(members["walk"]), 3, 2)
    assert members["trusted"].tolist() == boundary.trusted(members["guide_prob"]).tolist()
    assert set(results["between"]["default"]) >= {"current", "best", "change"}
    for seed, scores in enumerate(cell["seeds"]):  # the guide's width is the kept walks' width
        widths = np.load(out / "between" / f"soft-w-3-eta-1-4-9-s{seed}" / "samples.npz")["width"]
        finite = widths[np.isfinite(widths)]
        assert scores["guide"]["width_median"] == (pytest.approx(np.median(finite)) if len(finite) else None)
    own = results["control"]["pos own-reference"]["evaluator_space"]
    assert 0 <= own["low"] <= own["share"] <= own["high"] <= 1
    a = results["augment"]
    assert a["method"] in boundary.BOUNDARY_METHODS
    for r in a["sizes"]["10"]["replicates"].values():  # every arm: the same images added, the same real passes
        arms = [k for k in r["added"] if k != "real only" and "@" not in k]
        assert {r["added"][k] for k in arms} == {10} and len(set(r["real_passes"].values())) == 1
        assert {"scarce boundary soft @6", "full ordinary soft @6", "more real", "mixup", "classic"} <= set(r["added"])
    gain = a["sizes"]["10"]["gain_over_real"]["scarce boundary soft"]
    assert gain["n"] == 2 and gain["low"] <= gain["mean"] <= gain["high"]
    assert set(a["sizes"]["10"]["boundary_over_ordinary"]) == {"scarce ordinary soft", "full ordinary soft",
                                                                "scarce ordinary soft @6", "full ordinary soft @6"}
    mechanism = a["sizes"]["10"]["mechanism"]
    assert set(mechanism) == {"labeller on test digits", "scarce ordinary", "scarce boundary", "full ordinary",
                              "full boundary"}
    assert len(mechanism["scarce boundary"]["read_as_label"]["values"]) == 2 and "What the added sets" in (
        out / "tables.md").read_text()
    kept = np.load(out / "augment" / "scarce10-d0-s0-scarce-boundary" / "samples.npz")
    assert kept["soft"].shape == (10, 10) and np.allclose(kept["soft"].sum(1), 1) and (kept["labels"] >= 0).all()
    tables = (out / "tables.md").read_text()
    assert "noise floor" in tables and "Best method" in tables and "confused pairs" in tables
    for figure in ("augment.png", "compare/class_grids.png", "compare/guidance_curve.png", "between/boundary_vs_real.png",
                   "between/ambiguity.png", "control/label-pos-s0.png"):
        assert os.path.getsize(out / figure) > 0

    # Run again: every model and set is reused (nothing trains or samples), and the numbers are the same.
    seen.clear()
    for module in (generation, boundary):  # where generate is read: label_mode_set, boundary_samples' walks
        monkeypatch.setattr(module, "generate", lambda *a, **k: pytest.fail("a kept set was generated again"))
    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished model was trained again"))
    cli.main(["--out", str(out), "--runs", str(runs), "--sections", "between"])
    again = json.loads((out / "results.json").read_text())
    assert again["between"]["methods"] == results["between"]["methods"] and again["compare"] == c


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------
def run_python(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_python_m_runs_the_experiment_and_the_benchmarks():
    done = run_python("-m", "experiments", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m experiments [-h]")
    assert "The paper's experiment, rerun on a CPU" in done.stdout and "{compare,control,between,augment}" in done.stdout
    done = run_python("-m", "experiments.bench", "nope")
    assert done.returncode == 1 and done.stderr.strip() == (
        "python -m experiments.bench: unknown section 'nope'; choose from diffusion, features, metrics, quality, "
        "recipe, quick, sampler, walks, boundary, gpu, main")


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                                        if not p.endswith("__init__.py")))
def test_a_module_run_as_a_file_says_in_one_line_to_use_python_m(path):
    name = os.path.relpath(path, ROOT)
    done = run_python(name)
    assert done.returncode == 1 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"{name}: run python -m experiments"), done.stderr


def test_a_boundary_sets_key_names_any_guide_design_but_v1_so_the_kept_v1_sets_stay_valid(monkeypatch):
    """between's and augment's boundary sets are kept under a key; v1's (made before designs had names) carry no
    design, and every kept boundary set in results/ is such a v1 set, so they stay valid; another design makes them
    again."""
    assert common.GUIDE_DESIGN == "v1" and common.guide_design_key() == {}
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "experiment")
    kept = [os.path.join(root, "set.json") for root, _, files in os.walk(results) if "set.json" in files
            and (os.sep + "between" + os.sep in root or root.endswith("-boundary"))]
    assert kept and not any("guide_design" in json.load(open(path)) for path in kept)
    monkeypatch.setattr(common, "GUIDE_DESIGN", "v2")
    assert common.guide_design_key() == {"guide_design": "v2"}
