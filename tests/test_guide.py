"""The guide of sample.py --boundary (boundary.boundary_guide; design v2): members that differ, a
calibration split held out of their training, each member's temperature (Guo et al. 2017) and the trust rule on the
calibrated probabilities; the guide files' reload and retrain rules; the reader of another architecture
(classifier.PixelMLP); and python -m experiments.guide, tiny, end to end."""
import json
import os

import numpy as np
import pytest
import scipy.special
import torch

import boundary
from plumbing import classifier, rundir
from test_classifier import blobs
from test_pipeline import copy_run, fails, folder, run_dir  # noqa: F401 (fixtures)


def spy_training(monkeypatch) -> list[dict]:
    """Record every classifier.train_classifier call (its images, seed, width, architecture); train 2 steps."""
    calls, train = [], classifier.train_classifier

    def spy(images, labels, *args, seed=0, width=16, architecture="cnn", steps=300, **kwargs):
        calls.append(dict(images=np.array(images), seed=seed, width=width, architecture=architecture))
        return train(images, labels, *args, seed=seed, width=width, architecture=architecture, steps=2, **kwargs)
    monkeypatch.setattr(classifier, "train_classifier", spy)
    return calls


@pytest.fixture
def run(run_dir, tmp_path):  # noqa: F811
    """A copy of the tiny label+pos run (8x8, classes 'bottom' and 'top', 20 images each): guides are written there."""
    return rundir.load_run(str(copy_run(run_dir, tmp_path)))


# ---------------------------------------------------------------------------
# The members
# ---------------------------------------------------------------------------
def test_v2_members_differ_in_width_none_a_readers_and_v1_is_three_seeds_of_the_evaluators_network(run, monkeypatch):
    calls = spy_training(monkeypatch)
    v2 = boundary.boundary_guide(run, design="v2")
    assert boundary.DEFAULT_GUIDE_DESIGN == "v3" and v2.seeds == [1, 2, 3]  # v3: chosen by experiments.guide
    widths = [m.model.config["width"] for m in v2.members]
    assert widths == [8, 12, 24] and [c["width"] for c in calls] == widths and [c["seed"] for c in calls] == [1, 2, 3]
    assert all(isinstance(m.model, classifier.SmallClassifier) for m in v2.members)
    assert not {16, 32} & set(widths)  # none the width of the evaluator (16) or of between.py's second reader (32)
    assert 0 not in v2.seeds and boundary.EVALUATOR_SEED == 0
    calls.clear()
    v1 = boundary.boundary_guide(run, design="v1")
    assert [m.model.config["width"] for m in v1.members] == [16] * 3 and v1.seeds == [1, 2, 3]
    assert v1.temperatures == [1.0] * 3  # read as trained
    assert all(np.array_equal(c["images"], run.images) for c in calls)  # v1: every digit, as before v2
    assert os.path.exists(os.path.join(run.dir, "guide.pt")) and os.path.exists(os.path.join(run.dir, "guide-v2.pt"))
    shifted = boundary.boundary_guide(run, seed=4)  # (the augment section's later seeds)
    assert shifted.seeds == [4, 5, 6]
    with pytest.raises(ValueError, match="evaluator's seed"):
        boundary.boundary_guide(run, seed=0)
    with pytest.raises(ValueError, match="unknown guide design 'v9'"):
        boundary.boundary_guide(run, design="v9")


def test_every_guide_file_is_a_run_file_and_v3_reads_v1s_guide_pt():
    assert boundary.GUIDE_FILE == "guide.pt" == boundary.GUIDE_FILES["v1"]
    assert [boundary.members_design(d) for d in ("v1", "v2", "v3")] == ["v1", "v2", "v1"]  # v3: v1's members
    assert set(boundary.GUIDE_FILES) == {boundary.members_design(d) for d in boundary.GUIDE_DESIGNS}
    assert set(boundary.GUIDE_FILES.values()) <= set(rundir.RUN_FILES)  # an overwrite removes them with the run
    assert len(set(boundary.GUIDE_FILES.values())) == len(boundary.GUIDE_FILES)


# ---------------------------------------------------------------------------
# The calibration split
# ---------------------------------------------------------------------------
def test_the_calibration_split_is_class_balanced_fixed_and_disjoint(mnist_sample):
    _, labels, _ = mnist_sample  # 400 digits of each class
    fit, held = boundary.calibration_split(labels, 0.1)
    assert np.bincount(labels[held], minlength=10).tolist() == [40] * 10  # 10%, the same of every class
    assert np.intersect1d(fit, held).size == 0 and np.union1d(fit, held).tolist() == list(range(len(labels)))
    again = boundary.calibration_split(labels, 0.1)
    assert np.array_equal(again[1], held)  # fixed: the same digits every time
    assert not np.array_equal(boundary.calibration_split(labels, 0.1, seed=1)[1], held)  # (drawn by the seed)
    uneven = np.concatenate([np.zeros(50, int), np.ones(10, int)])  # class 1 has 10 digits: 1 of each class held
    assert np.bincount(uneven[boundary.calibration_split(uneven, 0.1)[1]]).tolist() == [1, 1]
    everything, nothing = boundary.calibration_split(labels, 0.0)
    assert len(everything) == len(labels) and len(nothing) == 0
    with pytest.raises(ValueError, match="class 1 has only 1"):
        boundary.calibration_split(np.array([0, 0, 0, 1]), 0.1)


def test_no_member_trains_on_the_calibration_digits_and_each_temperature_is_fitted_on_them(run, monkeypatch):
    calls = spy_training(monkeypatch)
    guide = boundary.boundary_guide(run, design="v2")
    fit, held = boundary.calibration_split(run.labels, boundary.GUIDE_DESIGNS["v2"].calibration_share)
    assert np.bincount(run.labels[held]).tolist() == [2, 2]  # 10% of each class's 20
    held_images = {image.tobytes() for image in run.images[held]}
    assert len(calls) == 3
    for call in calls:
        assert np.array_equal(call["images"], run.images[fit])
        assert not any(image.tobytes() in held_images for image in call["images"])
    for member, temperature in zip(guide.members, guide.temperatures):
        logits = member.logits(run.images[held])
        assert temperature == boundary.fit_temperature(logits, run.labels[held])  # on the held-out digits, exactly
        assert boundary.nll(logits, run.labels[held], temperature) <= boundary.nll(logits, run.labels[held]) + 1e-9


# ---------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------
def drawn_at(temperature: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z (n, 10) and labels drawn from softmax(z / temperature): z is calibrated at that temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, (n, 10))
    p = scipy.special.softmax(z / temperature, axis=1)
    return z, (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)


@pytest.mark.parametrize("truth", [1.0, 3.0, 0.5])
def test_temperature_scaling_finds_the_temperature_the_labels_were_drawn_at(truth):
    """Already calibrated: T = 1; overconfident logits (labels drawn at T = 3): T = 3; underconfident: T = 0.5."""
    z, labels = drawn_at(truth)
    t = boundary.fit_temperature(z, labels)
    assert t == pytest.approx(truth, rel=0.05)
    assert boundary.nll(z, labels, t) <= boundary.nll(z, labels, 1.0) + 1e-12
    if truth != 1.0:
        assert boundary.nll(z, labels, t) < boundary.nll(z, labels, 1.0) - 0.01  # and lowers it, where T = 1 is wrong


def test_nll_is_the_mean_negative_log_softmax_and_separable_data_stop_at_the_lower_bound():
    z, labels = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0])
    expected = -np.mean(np.log(scipy.special.softmax(z / 2, axis=1)[[0, 1], [0, 0]]))
    assert boundary.nll(z, labels, 2.0) == pytest.approx(expected)
    z, _ = drawn_at(1.0, n=500)
    assert boundary.fit_temperature(z, z.argmax(1)) == pytest.approx(boundary.TEMPERATURE_RANGE[0], rel=1e-3)


# ---------------------------------------------------------------------------
# The trust rule reads the calibrated probabilities
# ---------------------------------------------------------------------------
class Fixed:
    """A member whose logits are the same for every image (classes A = 0, B = 1, a third class 2)."""

    def __init__(self, logits):
        self.z = np.asarray(logits, np.float64)

    def logits(self, images):
        return np.tile(self.z, (len(images), 1))


@pytest.mark.parametrize("logits,temperature,as_trained,calibrated", [
    # sure of A or B as trained (the minor class 0.12); softened by T = 3: every member reads both >= 0.2
    ([[2.0, 0.0, -6.0], [0.0, 2.0, -6.0], [1.5, 0.5, -6.0]], 3.0, False, True),
    # ambiguous as trained (0.35 / 0.65); an underconfident network sharpened by T = 1/4: sure of A
    ([[0.6, 0.0, -6.0], [0.0, 0.6, -6.0], [0.3, 0.0, -6.0]], 0.25, True, False),
])
def test_the_temperature_changes_the_filters_verdict(logits, temperature, as_trained, calibrated):
    images = np.zeros((1, 8, 8, 1), np.uint8)
    members = [Fixed(z) for z in logits]
    for temperatures, verdict in ((None, as_trained), ([temperature] * 3, calibrated)):
        guide = classifier.Ensemble(members, [1, 2, 3], temperatures=temperatures)
        readings = boundary.guide_readings(guide, images, 0, 1)  # (1, 3, 2): what boundary_samples keeps and filters
        assert boundary.trusted(readings).tolist() == [verdict]
        t = 1.0 if temperatures is None else temperature
        expected = scipy.special.softmax(np.array(logits) / t, axis=1)[:, :2]  # (3, 2): softmax(z / T)
        np.testing.assert_allclose(readings[0], expected, rtol=1e-12)
        np.testing.assert_allclose(guide.prob(images)[0], scipy.special.softmax(np.array(logits) / t, axis=1).mean(0))


def test_an_ensemble_refuses_a_temperature_that_is_not_positive():
    for bad in ([1.0, 0.0], [1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="one finite temperature > 0 per member"):
            classifier.Ensemble([Fixed([0, 1]), Fixed([1, 0])], [1, 2], temperatures=bad)


# ---------------------------------------------------------------------------
# The guide files: reloaded for the same guide, trained again otherwise
# ---------------------------------------------------------------------------
def test_guide_files_are_reloaded_for_the_same_guide_and_trained_again_otherwise(run, monkeypatch):
    calls = spy_training(monkeypatch)
    path, v1_path = (os.path.join(run.dir, boundary.GUIDE_FILES[d]) for d in ("v2", "v1"))
    guide = boundary.boundary_guide(run, steps=2, design="v2")
    assert len(calls) == 3
    again = boundary.boundary_guide(run, steps=2, design="v2")  # reloaded (weights_only): nothing trained
    assert len(calls) == 3 and again.temperatures == guide.temperatures and again.tag == guide.tag
    assert all(classifier.same_weights(m, n) for m, n in zip(guide.members, again.members))
    assert "design=v2 widths=8,12,24 calibration=0.1" in guide.tag and run.config["run_id"] in guide.tag
    kept = open(path, "rb").read()
    boundary.boundary_guide(run, steps=2, design="v1")  # another design: its own file, guide-v2.pt untouched
    assert len(calls) == 6 and os.path.exists(v1_path) and open(path, "rb").read() == kept
    boundary.boundary_guide(run, steps=2, design="v2")
    assert len(calls) == 6  # and guide-v2.pt is still the v2 guide's
    boundary.boundary_guide(run, steps=3, design="v2")  # other steps: trained again, replaced
    assert len(calls) == 9 and open(path, "rb").read() != kept
    old = torch.load(path, weights_only=True)  # a guide.pt from before the temperatures: format version 1
    old["version"] = 1
    del old["temperatures"]
    torch.save(old, path)
    with pytest.raises(ValueError, match="not a classifier ensemble file"):
        classifier.load_ensemble(path)
    boundary.boundary_guide(run, steps=3, design="v2")
    assert len(calls) == 12 and classifier.load_ensemble(path).temperatures  # trained again, in the new format
    torch.save({"format": classifier.ENSEMBLE_FORMAT, "code": Fixed([0.0])}, path)  # would unpickle code
    with pytest.raises(ValueError, match="not a classifier ensemble file"):
        classifier.load_ensemble(path)  # refused by weights_only, never run
    open(path, "wb").write(b"cut off")
    boundary.boundary_guide(run, steps=3, design="v2")
    assert len(calls) == 15


def test_search_settings_record_the_guides_widths_and_temperatures(run, monkeypatch):
    spy_training(monkeypatch)
    guide = boundary.boundary_guide(run, design="v2")
    settings = boundary.search_settings(guide)
    assert settings["guide_widths"] == [8, 12, 24] and settings["guide_temperatures"] == guide.temperatures
    assert settings["guide_seeds"] == [1, 2, 3] and settings["guide_tag"] == guide.tag
    assert settings["trust"] == dict(member_min=0.2, mass=boundary.TRUST_MASS)


# ---------------------------------------------------------------------------
# The reader of another architecture
# ---------------------------------------------------------------------------
def test_the_pixel_mlp_has_no_convolution_learns_and_its_file_loads_with_weights_only(tmp_path):
    x, y = blobs(40)
    net = classifier.train_classifier(x, y, steps=40, batch_size=16, device="cpu", architecture="mlp", seed=3)
    assert isinstance(net.model, classifier.PixelMLP)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.model.modules())
    assert (net.logits(x).argmax(1) == y).mean() > 0.9
    features, logits = net.features_and_logits(x)
    assert features.shape == (40, 128) and logits.shape == (40, 2)
    path = tmp_path / "mlp.pt"
    classifier.save_classifier(net, path)
    loaded = classifier.load_classifier(path, "cpu")
    assert isinstance(loaded.model, classifier.PixelMLP) and classifier.same_weights(net, loaded)
    np.testing.assert_array_equal(loaded.logits(x), net.logits(x))
    cnn = classifier.train_classifier(x, y, steps=1, device="cpu")  # (a file of before: no architecture, a CNN)
    classifier.save_classifier(cnn, tmp_path / "cnn.pt")
    assert isinstance(classifier.load_classifier(tmp_path / "cnn.pt", "cpu").model, classifier.SmallClassifier)
    with pytest.raises(ValueError, match="architecture must be one of cnn, mlp"):
        classifier.train_classifier(x, y, steps=1, architecture="transformer")


# ---------------------------------------------------------------------------
# python -m experiments.guide, tiny
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory, small_space):
    """Two tiny label+pos runs on the embedded sample (20 digits per class, 2 steps), under two names (the second a
    copy of the first). (small_space: the session's one UMAP fit, which compiles umap's kernels.)"""
    import shutil

    import train
    root = tmp_path_factory.mktemp("guide-runs")
    first, second = root / "label-pos-s0", root / "label-pos-s1"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "write_grid", lambda run, step: None)  # (figures are tested elsewhere)
        train.main(["--out", str(first), "--cond", "label+pos", "--steps", "2", "--per-class", "20", "--save-every",
                    "2", "--warmup", "1", "--sample-every", "0"])
    shutil.copytree(first, second)
    return [str(first), str(second)]


def every_walk_crosses_and_every_other_point_is_trusted(monkeypatch):
    """The 2-step guides of these tiny runs never see a walk cross, nor agree: every walk 'crosses' at s = 1/2 (only
    the image at s* is made), and found points 0, 2, 4, .. of each round are trusted."""
    monkeypatch.setattr(boundary, "find_crossings", lambda prob_b, walks, grid, tolerance: dict(
        s=np.full(walks, 0.5), crossed=np.ones(walks, bool), points=[[(0.5, 0.5)] for _ in range(walks)]))
    monkeypatch.setattr(boundary, "trusted", lambda guide_prob: np.arange(len(guide_prob)) % 2 == 0)


def test_the_guide_experiment_reads_each_designs_trusted_samples_with_three_outside_readers(
        mnist_runs, tmp_path, monkeypatch):
    from experiments import common
    from experiments import guide as experiment
    from experiments.common import Digits
    monkeypatch.setattr(common, "CLASSIFIER_ARGS", {"steps": 2})  # the readers
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    monkeypatch.setattr(experiment, "SAMPLER", dict(steps=2))
    every_walk_crosses_and_every_other_point_is_trusted(monkeypatch)
    out, readers = tmp_path / "out", tmp_path / "readers"
    argv = [*mnist_runs, "--k", "2", "--pairs", "4-9", "--out", str(out), "--readers", str(readers)]
    experiment.main(argv)
    r = json.loads((out / "results.json").read_text())
    assert r["runs"] == ["label-pos-s0", "label-pos-s1"] and r["pairs"] == ["4-9"] and r["k"] == 2
    assert set(r["summary"]) == {"v1", "v2", "v3"} and set(r["readers"]) == {"evaluator", "second", "mlp", "knn"}
    mlp = classifier.load_classifier(readers / experiment.MLP_READER_FILE, "cpu")
    assert isinstance(mlp.model, classifier.PixelMLP)  # the reader of another architecture, kept with the others
    digits = Digits.load()
    fit = digits.evaluator_train()
    knn = experiment.NearestNeighbours(digits.images[fit], digits.labels[fit])  # the reader of no architecture
    for run in r["runs"]:
        assert r["guides"][run]["v2"]["widths"] == [8, 12, 24] and r["guides"][run]["v1"]["temperatures"] == [1.0] * 3
    for design in ("v1", "v2"):
        m = r["summary"][design]["4-9"]
        # per run: 2 walks (1 trusted), then 2 more (1 trusted): 2 walks per trusted sample
        assert m["trusted"] == 4 and m["tried"] == 8 and m["walks_per_trusted_runs"] == [2.0, 2.0]
        assert m["seconds_per_100"] == pytest.approx(100 * sum(m["seconds_runs"]) / 4, rel=0.01)  # (seconds: to 0.1)
        assert m["seconds"] == pytest.approx(sum(m["seconds_runs"]), abs=0.051)
        for name in experiment.READERS:
            share = m["readers"][name]
            assert len(share["runs"]) == 2 and share["share"] == pytest.approx(np.mean(share["runs"]))
            assert 0 <= share["interval"][0] <= share["interval"][1] <= 1 and share["range"] == [min(share["runs"]),
                                                                                               max(share["runs"])]
        assert m["all_readers"]["share"] <= min(m["readers"][name]["share"] for name in experiment.READERS)
        assert r["summary"][design]["all pairs"]["trusted"] == 4
        for run in r["runs"]:
            cell = r["sets"][design]["4-9"][run]
            assert not os.path.isabs(cell["path"]) and cell["path"].startswith(os.path.join("sets", run, design))
            with np.load(out / cell["path"]) as kept:  # the scored set, sample.py's format
                assert kept["images"].shape == (2, 28, 28, 1) and kept["guide_prob"].shape == (2, 3, 2)
                assert kept["trusted"].all() and kept["labels"].tolist() == [4, 4]
                p = experiment.probabilities(mlp, kept["images"])  # (2, 10)
                q = knn.prob(kept["images"])  # (2, 10): shares of the 10 nearest of the evaluator's digits
            assert cell["read"]["readers"]["mlp"]["ambiguous"] == int((np.minimum(p[:, 4], p[:, 9]) >= 0.2).sum())
            assert cell["read"]["readers"]["knn"]["ambiguous"] == int((np.minimum(q[:, 4], q[:, 9]) >= 0.2).sum())
    real = r["real"]["4-9"]
    assert real["n"] >= 20 and 0 <= real["mlp"]["ambiguous_share"] <= 1 and 0 <= real["knn"]["ambiguous_share"] <= 1
    assert set(real["kept_by_filter"]) == {"v1", "v2", "v3"}
    tables = (out / "tables.md").read_text()
    assert "| v2 | 4-9 | 4 / 4 | 2.0 (2.0, 2.0) |" in tables and "| v1 | all pairs |" in tables
    assert "| 4-9 |" in tables.split("The real reference")[1]
    # run again: every set read back (nothing generated), the same numbers
    monkeypatch.setattr(boundary, "generate", lambda *a, **k: pytest.fail("a kept set was made again"))
    again = json.loads(json.dumps(experiment.main(argv)))
    assert again["summary"] == r["summary"] and again["sets"] == r["sets"]


def test_the_guide_experiment_refuses_bad_input_in_one_line(mnist_runs, run_dir, tmp_path):  # noqa: F811
    from experiments import guide as experiment
    out = ["--out", str(tmp_path / "out"), "--readers", str(tmp_path / "readers")]
    fails(experiment, [str(run_dir), *out], "was not trained on the embedded MNIST sample's training digits")
    fails(experiment, [mnist_runs[0], mnist_runs[0], *out], "two runs are named label-pos-s0")
    fails(experiment, [mnist_runs[0], "--pairs", "4-4", *out], "--pairs 4-4: a pair is two different digits")
    fails(experiment, [mnist_runs[0], "--pairs", "4-x", *out], "--pairs 4-x: a pair is two different digits")
    fails(experiment, [mnist_runs[0], "--k", "0", *out], "--k 0: ask for at least one trusted sample")
    fails(experiment, [mnist_runs[0], "--boundary-guidance", "-1", *out],
          "--boundary-guidance -1.0: give a finite weight >= 0")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    fails(experiment, [mnist_runs[0], "--out", str(a_file), out[2], out[3]], rf"experiments.guide: --out {a_file} is a file")
    fails(experiment, [mnist_runs[0], *out[:2], "--readers", str(a_file)], rf"--readers {a_file} is a file; give a folder")
    assert not (tmp_path / "readers").exists() and a_file.read_text() == "mine"  # refused before any reader trained


# ---------------------------------------------------------------------------
# v3: the walk's most ambiguous point
# ---------------------------------------------------------------------------
def test_most_ambiguous_is_the_point_whose_least_ambiguous_member_is_most_ambiguous_trusted_first():
    readings = np.array([[[0.5, 0.5], [0.9, 0.1]],  # one member sure: min 0.1
                         [[0.35, 0.6], [0.6, 0.35]],  # every member between: min 0.35
                         [[0.45, 0.55], [0.75, 0.25]]])  # (P, M, 2): min 0.25
    assert boundary.most_ambiguous(readings) == 1
    third_class = [[0.4, 0.4], [0.42, 0.4]]  # min 0.4, but a fifth of the mass elsewhere: not trusted
    assert boundary.most_ambiguous(np.array([*readings, third_class])) == 1  # the trusted point, though less ambiguous
    assert boundary.most_ambiguous(np.array([readings[0], third_class])) == 1  # none trusted: the most ambiguous


class TwoRamps:
    """A toy guide of two members reading the tiny images' upper-half brightness t: P(B) = t, and a steeper
    P(B) = clip(2 t - 1/2, 0, 1); both cross 0.5 at t = 0.5 (as test_boundary's Ramp)."""
    seeds = [1, 2]

    def member_prob(self, images):  # (2, N, 2)
        t = images[:, : images.shape[1] // 2].mean(axis=(1, 2, 3)) / 255.0
        steep = np.clip(2 * t - 0.5, 0, 1)
        return np.stack([np.stack([1 - t, t], 1), np.stack([1 - steep, steep], 1)])

    def prob(self, images):
        return self.member_prob(images).mean(axis=0)


def test_v3_is_v1s_members_keeping_each_walks_most_ambiguous_read_point(run, monkeypatch):
    """v3 reads v1's guide (guide.pt, trained once); boundary_samples with its point keeps, per walk that crossed,
    the point of its grid, bisection and s* where the least ambiguous member is most ambiguous (trusted points
    first), judged by `trusted` there; with "crossing" the point is s* itself."""
    v1, v3 = boundary.GUIDE_DESIGNS["v1"], boundary.GUIDE_DESIGNS["v3"]
    assert (v3.widths, v3.calibration_share, v1.point, v3.point) == (v1.widths, v1.calibration_share, "crossing",
                                                                     "most ambiguous")
    assert boundary.guide_tag(run, "v3", 2) == boundary.guide_tag(run, "v1", 2)  # one guide: the point is not in it
    calls = spy_training(monkeypatch)
    g1, g3 = (boundary.boundary_guide(run, steps=2, design=d) for d in ("v1", "v3"))
    assert len(calls) == 3 and all(classifier.same_weights(m, n) for m, n in zip(g1.members, g3.members))
    assert sorted(f for f in os.listdir(run.dir) if f.startswith("guide")) == ["guide.pt"]  # v3 read v1's guide.pt
    guide, sampler = TwoRamps(), dict(name="ddim", steps=2, eta=1.0, guidance=1.0)
    searched, find = {}, boundary.find_crossings

    def spy(prob_b, walks, grid, tolerance):  # every (walk, s) the search reads
        def reading(walk, s):
            for w, s_w in zip(walk, s):
                searched.setdefault(int(w), []).append(float(s_w))
            return prob_b(walk, s)
        return find(reading, walks, grid, tolerance)
    monkeypatch.setattr(boundary, "find_crossings", spy)
    kept = boundary.boundary_samples(run, 0, 1, 6, guide=guide, sampler=sampler, evaluators=[], point="most ambiguous")
    searched_v3 = dict(searched)
    searched.clear()
    star = boundary.boundary_samples(run, 0, 1, 6, guide=guide, sampler=sampler, evaluators=[], point="crossing")
    assert searched == searched_v3 and kept["walk"].tolist() == star["walk"].tolist() and len(kept["walk"])
    endpoints = boundary.boundary_endpoints(run, 0, 1, 0, np.arange(6))
    for i, w in enumerate(kept["walk"]):
        s = np.array([*searched[int(w)], star["s"][i]], np.float32)  # its grid, its bisection, then s*
        images, _ = boundary.walk_images(run, endpoints, np.full(len(s), w), s, "soft", 0, sampler, 0)
        readings = boundary.guide_readings(guide, images, 0, 1)  # (P, M, 2)
        best = boundary.most_ambiguous(readings)
        assert kept["s"][i] == s[best] and np.array_equal(kept["images"][i], images[best])
        assert np.allclose(kept["guide_prob"][i], readings[best], atol=1e-6)
        assert np.allclose(kept["cond"]["label"][i, 1], kept["s"][i])  # the soft label at the point kept
        assert kept["trusted"][i] or not star["trusted"][i]  # s* is one of its points: trusted where v1's is
    np.testing.assert_array_equal(kept["width"], star["width"])  # the width: around s* in both
    assert kept["trusted"].tolist() == boundary.trusted(kept["guide_prob"]).tolist()
    assert not np.array_equal(kept["s"], star["s"])  # (another point than s* here)
    with pytest.raises(ValueError, match="unknown boundary point 'middle'"):
        boundary.boundary_samples(run, 0, 1, 1, guide=guide, sampler=sampler, evaluators=[], point="middle")


# ---------------------------------------------------------------------------
# python -m experiments.ceiling: what the walks allow any guide
# ---------------------------------------------------------------------------
class Threshold:
    """A toy reader of images whose brightness is s: P(B) = sigmoid(slope (s - t)), P(A) the rest, nothing else."""

    def __init__(self, t: float, a: int = 4, b: int = 9, slope: float = 20.0):
        self.t, self.a, self.b, self.slope = t, a, b, slope

    def logits(self, images):  # (N, 10): log-probabilities, -inf-ish off A and B
        s = images.reshape(len(images), -1).mean(axis=1) / 255.0
        p_b = scipy.special.expit(self.slope * (s - self.t))
        z = np.full((len(images), 10), -50.0)
        z[:, self.a], z[:, self.b] = np.log(1 - p_b + 1e-12), np.log(p_b + 1e-12)
        return z


def ramp_bank(walks: int, points: int) -> np.ndarray:
    """(W, P, 4, 4, 1) images whose brightness is the grid's s = 0 .. 1 on every walk."""
    s = np.linspace(0, 1, points)
    return np.broadcast_to(np.round(255 * s)[None, :, None, None, None], (walks, points, 4, 4, 1)).astype(np.uint8)


def test_the_ceiling_sees_where_readers_agree_and_where_they_do_not():
    """Known answers: readers of thresholds 0.45 and 0.55 (slope 20: each ambiguous within 0.069 of its threshold)
    share an ambiguous stretch around s = 1/2; a third at 0.75 shares none with them. The offsets are the grid
    distances between their crossings; a guide of the two agreeing readers keeps every walk, at a point all three
    cannot find ambiguous."""
    from experiments import ceiling
    bank = ramp_bank(3, 33)
    near = dict(evaluator=Threshold(0.45), second=Threshold(0.55))
    cell = ceiling.pair_cells([bank], near, [], 4, 9)
    assert cell["walks"] == 3 and cell["walks_with_joint"] == 1.0
    assert cell["offset_from_evaluator"] == dict(evaluator=0.0, second=pytest.approx(3 / 32))  # 15/32 -> 18/32
    far = dict(near, mlp=Threshold(0.75))
    cell = ceiling.pair_cells([bank, bank], far, [], 4, 9)
    assert cell["walks"] == 6 and cell["walks_with_joint"] == 0.0 and cell["walks_with_ambiguous"]["mlp"] == 1.0
    s = np.linspace(0, 1, 33)
    readings = ceiling.on_grid(lambda x: scipy.special.softmax(Threshold(0.45).logits(x), axis=1), bank, 4, 9)
    assert readings.shape == (3, 33, 2)
    np.testing.assert_array_equal(ceiling.crossings(readings, s), np.full(3, 15 / 32))  # first grid s >= 0.45
    assert np.isnan(ceiling.crossings(readings[:, 20:], s[20:])).all()  # already past 0.5 at its first point


class ReadersAsGuide:
    """A guide whose members are toy readers (boundary.guide_readings reads member_prob)."""
    seeds = [1, 2]

    def __init__(self, *readers):
        self.readers = readers

    def member_prob(self, images):
        return np.stack([scipy.special.softmax(r.logits(images), axis=1) for r in self.readers])


def test_a_guide_on_the_grid_keeps_what_boundary_keeps_and_its_point_is_read_by_every_reader():
    from experiments import ceiling
    bank = ramp_bank(2, 33)
    readers = dict(evaluator=Threshold(0.45), second=Threshold(0.55), mlp=Threshold(0.75))
    guides = [{name: ReadersAsGuide(Threshold(0.45), Threshold(0.55)) for name in ceiling.GUIDES}]
    member = ceiling.member_readings(guides[0]["v3"], bank, 4, 9)  # (W, P, M, 2)
    kept, pick = ceiling.guide_on_grid(member)
    assert kept.all() and pick.tolist() == [boundary.most_ambiguous(member[0])] * 2 and pick[0] == 16  # s = 1/2
    cell = ceiling.pair_cells([bank], readers, guides, 4, 9)["guides"]["v3"]
    assert cell["kept"] == 2 and cell["walks_per_kept"] == 1.0 and cell["points"] == [[0, 16], [1, 16]]
    assert cell["readers"] == dict(evaluator=1.0, second=1.0, mlp=0.0) and cell["all_readers"] == 0.0


def test_the_nearest_neighbour_reader_gives_the_class_shares_of_the_nearest_training_digits():
    from experiments import guide as experiment
    images = np.zeros((6, 2, 2, 1), np.uint8)
    images[:3] = 0  # three dark digits of class 1
    images[3:, 0, 0] = [[200], [220], [240]]  # three bright ones of class 3
    knn = experiment.NearestNeighbours(images, np.array([1, 1, 1, 3, 3, 3]), k=4)
    query = np.zeros((2, 2, 2, 1), np.uint8)
    query[1, 0, 0] = 230
    p = knn.prob(query)
    assert p.shape == (2, 10) and np.allclose(p.sum(axis=1), 1)
    assert p[0, 1] == 0.75 and p[0, 3] == 0.25 and p[1, 3] == 0.75 and p[1, 1] == 0.25


def test_the_ceiling_experiment_end_to_end(mnist_runs, tmp_path, monkeypatch):
    """Tiny: two runs, one pair, 2 walks of 5 points; the banks are kept in sample.py's format and read back."""
    from experiments import ceiling, common
    monkeypatch.setattr(common, "CLASSIFIER_ARGS", {"steps": 2})  # the readers
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    monkeypatch.setattr(ceiling, "SAMPLER", dict(steps=2))
    out, readers = tmp_path / "out", tmp_path / "readers"
    trained, real_train = [], classifier.train_classifier

    def spy(images, labels, *args, **kwargs):
        trained.append((len(images), np.asarray(labels).shape, kwargs.get("real_count"), kwargs.get("real_share")))
        return real_train(images, labels, *args, **kwargs)
    monkeypatch.setattr(classifier, "train_classifier", spy)
    r = ceiling.ceiling_experiment(mnist_runs, [(4, 9)], str(out), str(readers), walks=2, points=5)
    assert set(r["readers"]) == {"evaluator", "second", "mlp", "knn"} and r["runs"] == ["label-pos-s0", "label-pos-s1"]
    cell = r["pairs"]["4-9"]
    assert cell["walks"] == 4 and 0 <= cell["walks_with_joint"] <= min(cell["walks_with_ambiguous"].values())
    assert set(cell["guides"]) == set(ceiling.GUIDES) >= {"mixed", "mixup"}
    mixed = classifier.load_ensemble(readers / ceiling.GUIDE_FILE.format(name="mixed", run="label-pos-s0"))
    assert [type(m.model).__name__ for m in mixed.members] == ["SmallClassifier", "PixelMLP", "SmallClassifier"]
    mixup = classifier.load_ensemble(readers / ceiling.GUIDE_FILE.format(name="mixup", run="label-pos-s0"))
    assert [type(m.model).__name__ for m in mixup.members] == ["SmallClassifier"] * 3 and mixup.seeds == [1, 2, 3]
    n = 200  # (the runs' 20 digits per class) mixup's members: the real digits and as many blends, soft labels,
    blended = [t for t in trained if t[2] is not None]  # half of each batch blends
    assert blended == [(2 * n, (2 * n, 10), n, 1 - ceiling.MIXUP_SHARE)] * 6  # 3 members x 2 runs
    with np.load(out / "banks" / "label-pos-s0" / "4-9" / "samples.npz") as bank:
        assert bank["images"].shape == (10, 28, 28, 1) and bank["walk"].tolist() == [0] * 5 + [1] * 5
        np.testing.assert_allclose(bank["s"][:5], np.linspace(0, 1, 5))
    monkeypatch.setattr(boundary, "generate", lambda *a, **k: pytest.fail("a kept bank was made again"))
    again = ceiling.ceiling_experiment(mnist_runs, [(4, 9)], str(out), str(readers), walks=2, points=5)
    assert json.loads(json.dumps(again["pairs"])) == json.loads(json.dumps(r["pairs"]))
    assert "| 4-9 |" in "\n".join(ceiling.ceiling_tables(r))


def test_the_ceiling_command_says_last_where_it_wrote(mnist_runs, tmp_path, monkeypatch, capsys):
    from experiments import ceiling, common
    monkeypatch.setattr(common, "CLASSIFIER_ARGS", {"steps": 2})
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    monkeypatch.setattr(ceiling, "SAMPLER", dict(steps=2))
    out = tmp_path / "out"
    ceiling.main([mnist_runs[0], "--walks", "1", "--points", "3", "--pairs", "4-9", "--out", str(out), "--readers",
                  str(tmp_path / "readers"), "--boundary-guidance", "1"])
    said = capsys.readouterr().out.strip().splitlines()
    assert said[0].startswith("label-pos-s0: the guides") and "4-9: 1 walks of 3 points" in said[1]
    assert said[-1] == f"results: {out / 'results.json'}, {out / 'tables.md'}, the banks in {out / 'banks'}"
    assert (out / "results.json").is_file() and (out / "tables.md").is_file()
    # --boundary-guidance W: the walks' label guidance, in the results and in the bank's key (kept apart from other weights)
    assert json.loads((out / "results.json").read_text())["sampler"] == {"steps": 2, "guidance": 1.0}
    key = json.loads((out / "banks" / "label-pos-s0" / "4-9" / "set.json").read_text())
    assert key["sampler"]["guidance"] == {"label": 1.0}
    assert ceiling.SAMPLER == dict(steps=2)  # the flag is this call's alone: a later call walks at sample.py's weight


def test_boundary_guidance_3_reads_back_the_sets_of_sample_pys_walks():
    """--boundary-guidance 3 is sample.py's own weight: the walks' sampler (and so a kept set's key) is unchanged."""
    from experiments import guide as experiment
    assert experiment.walk_sampler(None, None) is None and experiment.walk_sampler(None, 3.0) is None
    assert experiment.walk_sampler({"steps": 2}, 3) == {"steps": 2}
    assert experiment.walk_sampler({"steps": 2}, 1.0) == {"steps": 2, "guidance": 1.0}


def test_the_ceiling_experiment_refuses_bad_input_in_one_line(mnist_runs, run_dir, tmp_path):  # noqa: F811
    from experiments import ceiling
    out = ["--out", str(tmp_path / "out"), "--readers", str(tmp_path / "readers")]
    fails(ceiling, [str(run_dir), *out], "was not trained on the embedded MNIST sample's training digits")
    fails(ceiling, [mnist_runs[0], "--walks", "0", *out], "--walks 0: give at least one walk")
    fails(ceiling, [mnist_runs[0], "--points", "2", *out], "--points 2: a walk needs at least 3 grid points")
    fails(ceiling, [mnist_runs[0], "--pairs", "4-4", *out], "experiments.ceiling: --pairs 4-4: a pair is two different digits")
    fails(ceiling, [mnist_runs[0], "--boundary-guidance", "inf", *out], "--boundary-guidance inf: give a finite weight >= 0")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    fails(ceiling, [mnist_runs[0], "--out", str(a_file), out[2], out[3]], rf"experiments.ceiling: --out {a_file} is a file")
    fails(ceiling, [mnist_runs[0], *out[:2], "--readers", str(a_file / "x")], rf"--readers {a_file}/x lies under")
    fails(ceiling, [mnist_runs[0], "--points", "100000000000", *out],
          "--walks 40 --points 100000000000 asks for more than this machine can hold")
    assert not (tmp_path / "readers").exists() and not (tmp_path / "out").exists()  # refused before any work
