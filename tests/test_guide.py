"""The guide of sample.py --boundary (boundary.boundary_guide; design v2, issue 38): members that differ, a
calibration split held out of their training, each member's temperature (Guo et al. 2017) and the trust rule on the
calibrated probabilities; the guide files' reload and retrain rules; and the reader of another
architecture (classifier.PixelMLP)."""
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
    v2 = boundary.boundary_guide(run)
    assert boundary.DEFAULT_GUIDE_DESIGN == "v2" and v2.seeds == [1, 2, 3]
    widths = [m.model.config["width"] for m in v2.members]
    assert widths == [8, 12, 24] and [c["width"] for c in calls] == widths and [c["seed"] for c in calls] == [1, 2, 3]
    assert all(isinstance(m.model, classifier.SmallClassifier) for m in v2.members)
    assert not {16, 32} & set(widths)  # none the width of the evaluator (16) or of between.py's second reader (32)
    assert 0 not in v2.seeds and boundary.EVALUATOR_SEED == 0
    calls.clear()
    v1 = boundary.boundary_guide(run, design="v1")
    assert [m.model.config["width"] for m in v1.members] == [16] * 3 and v1.seeds == [1, 2, 3]
    assert v1.temperatures == [1.0] * 3  # read as trained
    assert all(np.array_equal(c["images"], run.images) for c in calls)  # v1: every digit, as before issue 38
    assert os.path.exists(os.path.join(run.dir, "guide.pt")) and os.path.exists(os.path.join(run.dir, "guide-v1.pt"))
    shifted = boundary.boundary_guide(run, seed=4)  # (the augment section's later seeds)
    assert shifted.seeds == [4, 5, 6]
    with pytest.raises(ValueError, match="evaluator's seed"):
        boundary.boundary_guide(run, seed=0)
    with pytest.raises(ValueError, match="unknown guide design 'v9'"):
        boundary.boundary_guide(run, design="v9")


def test_every_guide_file_is_a_run_file_and_sample_py_keeps_the_default_in_guide_pt():
    assert boundary.GUIDE_FILE == "guide.pt" == boundary.GUIDE_FILES[boundary.DEFAULT_GUIDE_DESIGN]
    assert set(boundary.GUIDE_FILES) == set(boundary.GUIDE_DESIGNS)
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
    guide = boundary.boundary_guide(run)
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
    guide = boundary.boundary_guide(run, steps=2)
    assert len(calls) == 3
    again = boundary.boundary_guide(run, steps=2)  # reloaded (weights_only): nothing trained
    assert len(calls) == 3 and again.temperatures == guide.temperatures and again.tag == guide.tag
    assert all(classifier.same_weights(m, n) for m, n in zip(guide.members, again.members))
    assert "design=v2 widths=8,12,24 calibration=0.1" in guide.tag and run.config["run_id"] in guide.tag
    kept = open(path, "rb").read()
    boundary.boundary_guide(run, steps=2, design="v1")  # another design: its own file, guide.pt untouched
    assert len(calls) == 6 and os.path.exists(v1_path) and open(path, "rb").read() == kept
    boundary.boundary_guide(run, steps=2)
    assert len(calls) == 6  # and guide.pt is still the v2 guide's
    boundary.boundary_guide(run, steps=3)  # other steps: trained again, replaced
    assert len(calls) == 9 and open(path, "rb").read() != kept
    old = torch.load(path, weights_only=True)  # a guide.pt from before the temperatures: format version 1
    old["version"] = 1
    del old["temperatures"]
    torch.save(old, path)
    with pytest.raises(ValueError, match="not a classifier ensemble file"):
        classifier.load_ensemble(path)
    boundary.boundary_guide(run, steps=3)
    assert len(calls) == 12 and classifier.load_ensemble(path).temperatures  # trained again, in the new format
    torch.save({"format": classifier.ENSEMBLE_FORMAT, "code": Fixed([0.0])}, path)  # would unpickle code
    with pytest.raises(ValueError, match="not a classifier ensemble file"):
        classifier.load_ensemble(path)  # refused by weights_only, never run
    open(path, "wb").write(b"cut off")
    boundary.boundary_guide(run, steps=3)
    assert len(calls) == 15


def test_search_settings_record_the_guides_widths_and_temperatures(run, monkeypatch):
    spy_training(monkeypatch)
    guide = boundary.boundary_guide(run)
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
