"""experiment.py's own pieces: the real split, the two reference protocols, cluster tightness, boundary requests,
the summary over seeds. (The models it trains are train.py's, tested in test_pipeline.py.)"""
import numpy as np
import pytest

import experiment
import sample


def fake_run(images, labels, space=None, conditions=("label", "pos"), root="data"):
    """A sample.Run with what request_conditions, draw_references and tightness read (no model)."""
    config = {"unet": {"conditions": {name: 20 if name == "pos" else 10 for name in conditions}},
              "settings": {"backbone": "pixels", "weights": None, "root": root}}
    return sample.Run("fake", config, None, None, space, images, labels)


def test_real_split_is_class_balanced_and_disjoint(mnist_sample):
    _, labels, _ = mnist_sample
    held, reference = experiment.real_split(labels)
    assert len(held) == 1000 and len(reference) == 4000
    assert np.intersect1d(held, reference).size == 0
    assert (np.bincount(labels[held], minlength=10) == 100).all()


@pytest.mark.parametrize("protocol", ["per-class", "per-sample"])
def test_protocols_request_every_class_equally_with_references_of_that_class(mnist_sample, protocol):
    images, labels, _ = mnist_sample
    want, refs = experiment.protocol_requests(fake_run(images, labels), protocol)
    assert len(want) == experiment.N_EVAL and (np.bincount(want) == experiment.N_EVAL // 10).all()
    assert (labels[refs] == want).all()  # a reference of the requested class
    distinct = [len(np.unique(refs[want == k])) for k in range(10)]
    if protocol == "per-class":
        assert distinct == [1] * 10  # the report's protocol: one reference for all of a class's samples
    else:
        assert min(distinct) > 80  # a fresh draw per sample (100 draws from 500 images)


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


def test_boundary_requests_lie_between_two_classes(small_space, small_space_data, tmp_path):
    images, labels = small_space_data
    run = fake_run(images, labels, small_space, root=str(tmp_path))
    cond, a, b, s = experiment.boundary_requests(run, seed=0)
    want = np.repeat(np.arange(10), experiment.N_AUGMENT // 10)
    assert (cond["label"] == want).all() and cond["pos"].shape == (len(want), 20)
    assert (labels[a] == want).all() and (labels[b] != want).all()  # from a class-A image towards another class
    assert 0.2 <= s.min() and s.max() <= 0.5 and s.std() > 0.05  # on A's side of the midpoint, spread out
    own = sample.request_conditions(run, labels, images)["pos"]  # every training image's position (N, 20)
    np.testing.assert_allclose(cond["pos"], (1 - s[:, None]) * own[a] + s[:, None] * own[b], atol=1e-5)


def test_summary_is_mean_and_spread_over_seeds():
    runs = {f"{stem}-s{seed}": {"per-sample": {"fid": 10.0 + 2 * seed, "accuracy": 0.9}}
            for stem in experiment.MODELS for seed in experiment.SEEDS}
    summary = experiment.summarise(runs)
    assert summary["label per-sample"]["fid"] == [11.0, 1.0]
    assert summary["pos per-sample"]["accuracy"] == [0.9, 0.0]
