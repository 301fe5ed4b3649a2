"""sample.py's boundary samples: the per-walk crossing search, its guide, and `--boundary A B`."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from plumbing import classifier
import boundary
import conditions
from plumbing import rundir
import sample
from test_pipeline import copy_run, fails, folder, run_dir, snapshot  # noqa: F401 (fixtures)


# ---------------------------------------------------------------- the search, on toy functions of s
@pytest.mark.parametrize("grid,tolerance", [(9, 1 / 256), (5, 0.01), (17, 0.001)])
def test_bisection_finds_a_known_crossing_to_the_tolerance(grid, tolerance):
    """P(B) = sigmoid((s - c_w) / 0.03), a known crossing c_w per walk; walks that never cross are reported."""
    rng = np.random.default_rng(0)
    c = rng.uniform(0.02, 0.98, 40)
    never = np.zeros(40, bool)
    never[::7] = True  # these stay at P(B) = 0.3
    calls = []

    def prob_b(walk, s):
        calls.append(len(walk))
        p = 1 / (1 + np.exp(-(s - c[walk]) / 0.03))
        return np.where(never[walk], 0.3, p)

    found = boundary.find_crossings(prob_b, 40, grid, tolerance)
    assert found["crossed"].tolist() == (~never).tolist() and np.isnan(found["s"][never]).all()
    assert np.abs(found["s"][~never] - c[~never]).max() <= tolerance
    halvings = int(np.ceil(np.log2(1 / (grid - 1) / (2 * tolerance))))
    assert calls == [40 * grid] + [int((~never).sum())] * halvings  # batched: one call per stage


def test_a_walk_that_starts_at_b_or_goes_down_is_not_crossed():
    # walk 0 starts above 0.5; walk 1 falls from 0.9 to 0.1; walk 2 rises: only walk 2 crosses
    curves = [lambda s: 0.8 + 0 * s, lambda s: 0.9 - 0.8 * s, lambda s: s]
    found = boundary.find_crossings(lambda w, s: np.array([curves[i](x) for i, x in zip(w, s)]), 3)
    assert found["crossed"].tolist() == [False, False, True] and abs(found["s"][2] - 0.5) <= boundary.BOUNDARY_TOLERANCE


def test_transition_width_from_the_evaluated_points():
    # P(B) = s: from 0.1 to 0.9 in s 0.1 .. 0.9 (linear: interpolation is exact), and one that never reaches 0.9
    grid = np.linspace(0, 1, 9)
    assert boundary.transition_width(list(zip(grid, grid)), 0.5) == pytest.approx(0.8)
    steep = [(s, float(np.clip((s - 0.5) * 4 + 0.5, 0, 1))) for s in np.linspace(0, 1, 33)]  # 0.1 .. 0.9: s 0.4 .. 0.6
    assert boundary.transition_width(steep, 0.5) == pytest.approx(0.2)
    assert np.isnan(boundary.transition_width(list(zip(grid, 0.6 * grid)), 0.8))


# ---------------------------------------------------------------- the guide
def test_the_guide_is_never_the_evaluator(run_dir, tmp_path):  # noqa: F811
    run = rundir.load_run(str(copy_run(run_dir, tmp_path)))
    evaluator = classifier.train_classifier(run.images, run.labels, 2, steps=5)  # seed 0, as --eval's classifier.pt
    classifier.save_classifier(evaluator, os.path.join(run.dir, "classifier.pt"))
    said = []
    guide = boundary.boundary_guide(run, steps=5, report=said.append)
    assert len(guide.members) == boundary.GUIDE_MEMBERS and 0 not in guide.seeds
    assert not any(classifier.same_weights(m, evaluator) for m in guide.members)
    assert os.path.exists(os.path.join(run.dir, boundary.GUIDE_FILE))
    assert said == [f"training the guide: 3 classifiers on the run's {len(run.images)} training digits (kept as "
                    f"{os.path.join(run.dir, boundary.GUIDE_FILE)} for later calls)"]  # (sample.py says it: it takes a while)
    again = boundary.boundary_guide(run, steps=5, report=said.append)  # reloaded from its file: the same weights
    assert len(said) == 1  # nothing trained, nothing said
    assert all(classifier.same_weights(m, n) for m, n in zip(guide.members, again.members))
    # the evaluator's own weights as the guide (here from its file, under another name) are refused
    same = classifier.Ensemble([classifier.load_classifier(os.path.join(run.dir, "classifier.pt"))], [7])
    with pytest.raises(ValueError, match="evaluator's weights"):
        boundary.boundary_samples(run, 0, 1, 2, guide=same, sampler=dict(name="ddim", steps=2, eta=0.0))
    with pytest.raises(ValueError, match="evaluator's seed"):
        boundary.boundary_guide(run, seed=0)


# ---------------------------------------------------------------- boundary_samples and --boundary
class Ramp:
    """A toy guide: P(class 1) = the image's mean brightness in its upper half (class 'top' is bright there)."""
    seeds = [1]

    def prob(self, images):
        top = images[:, : images.shape[1] // 2].mean(axis=(1, 2, 3)) / 255.0
        return np.stack([1 - top, top], 1)

    def member_prob(self, images):  # one member: (1, N, K)
        return self.prob(images)[None]


def test_the_filter_keeps_an_ambiguous_point_and_drops_a_clear_one_and_a_third_class():
    """boundary.trusted on three members' (P(A), P(B)) readings (N, M, 2)."""
    ambiguous = [[0.45, 0.5], [0.3, 0.65], [0.6, 0.35]]  # every member: min >= 0.2, mass about 0.95
    clear = [[0.45, 0.5], [0.9, 0.08], [0.6, 0.35]]  # one member is sure it is A: the members disagree
    third = [[0.25, 0.3], [0.2, 0.25], [0.3, 0.2]]  # all ambiguous between A and B, but half their mass elsewhere
    edge = [[0.2, 0.75], [0.5, 0.5], [0.75, 0.25]]  # min exactly at the threshold 0.2 counts as ambiguous
    kept = boundary.trusted(np.array([ambiguous, clear, third, edge], np.float64))
    assert kept.tolist() == [True, False, False, True]


class Members:
    """A toy guide of three members that read the same ramp as Ramp, one of them sure the image is class 0."""
    seeds = [1, 2, 3]

    def member_prob(self, images):
        ramp = Ramp().prob(images)  # (N, 2)
        sure = np.tile([0.95, 0.05], (len(images), 1))
        return np.stack([ramp, ramp, np.where(np.arange(len(images))[:, None] % 2 == 0, ramp, sure)])

    def prob(self, images):
        return self.member_prob(images).mean(axis=0)


@pytest.mark.parametrize("point", boundary.POINTS)
def test_boundary_samples_keep_each_walks_noise_and_report_what_they_found(run_dir, point):  # noqa: F811
    run = rundir.load_run(str(run_dir))
    sampler = dict(name="ddim", steps=2, eta=1.0, guidance=1.0)
    part = boundary.boundary_samples(run, 0, 1, 6, method="soft", guide=Ramp(), sampler=sampler, evaluators=[],
                                     point=point)
    n = int(part["crossed"].sum())
    assert part["crossed"].shape == (6,) and part["images"].shape == (n, 8, 8, 1) and part["labels"].tolist() == [0] * n
    assert part["walk"].tolist() == np.flatnonzero(part["crossed"]).tolist() and part["prob"].shape == (n, 2)
    assert ((part["s"] >= 0) & (part["s"] <= 1)).all() and part["cond"]["label"].shape == (n, 2)
    assert np.allclose(part["cond"]["label"][:, 1], part["s"])  # the soft label at s*
    assert np.allclose(part["prob"], Ramp().prob(part["images"]), atol=1e-6)
    assert part["guide_prob"].shape == (n, 1, 2) and np.allclose(part["guide_prob"][:, 0], part["prob"])
    assert part["trusted"].tolist() == boundary.trusted(part["guide_prob"]).tolist()
    # a walk's image is a function of s alone: generated alone or beside other walks, the same noise
    endpoints = boundary.boundary_endpoints(run, 0, 1, 0, np.arange(6))
    s = np.array([0.3, 0.3, 0.7], np.float32)
    mixed, _ = boundary.walk_images(run, endpoints, np.array([4, 1, 4]), s, "soft", 0, sampler, 0)
    alone, _ = boundary.walk_images(run, endpoints, np.array([4]), s[:1], "soft", 0, sampler, 0)
    assert np.array_equal(mixed[0], alone[0]) and not np.array_equal(mixed[0], mixed[1])
    # walks 3..5 of a later call are walks 3..5 of this one
    later = boundary.boundary_samples(run, 0, 1, 3, method="soft", guide=Ramp(), sampler=sampler, first_walk=3,
                                    evaluators=[], point=point)
    assert later["crossed"].tolist() == part["crossed"][3:].tolist()
    keep = part["walk"] >= 3
    assert np.array_equal(later["images"], part["images"][keep]) and np.allclose(later["s"], part["s"][keep])


def test_a_round_asks_the_rate_so_far_at_most_doubling_the_walks_so_the_search_overshoots_less(
        run_dir, monkeypatch):  # noqa: F811
    assert boundary.walks_to_try(8, 0, 0) == 8  # one walk per sample at first
    assert boundary.walks_to_try(8, 0, 8) == 8  # none kept of 8: not 64 walks at once, 8 more first
    assert boundary.walks_to_try(60, 40, 100) == 100 and boundary.walks_to_try(10, 40, 100) == 25  # rate 0.4
    run = rundir.load_run(str(run_dir))
    sampler = dict(name="ddim", steps=2, eta=1.0, guidance=1.0)
    part, counts = boundary.trusted_boundary_samples(run, 0, 1, 3, guide=Members(), sampler=sampler)

    def uncapped(wanted, kept, tried):  # the rule before the cap: straight to the rate's estimate
        return int(np.ceil(wanted / max(kept / tried, 1 / boundary.MAX_WALKS_PER_SAMPLE))) if tried else wanted
    monkeypatch.setattr(boundary, "walks_to_try", uncapped)
    before, before_counts = boundary.trusted_boundary_samples(run, 0, 1, 3, guide=Members(), sampler=sampler)
    assert len(part["walk"]) == len(before["walk"]) == 3 and counts["trusted"] >= 3
    assert counts["tried"] <= before_counts["tried"] and counts["trusted"] <= before_counts["trusted"]


def test_the_boundary_command_end_to_end(run_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    run = copy_run(run_dir, tmp_path)
    monkeypatch.setattr(boundary, "boundary_guide", lambda run, report=None: Members())  # a guide that reads these tiny images
    seen = []
    real = boundary.boundary_samples

    def spy(*args, **kwargs):
        seen.append(args[7])  # the sampler boundary_samples is given
        return real(*args, **kwargs)
    monkeypatch.setattr(boundary, "boundary_samples", spy)
    out = tmp_path / "b"
    sample.main([str(run), "--out", str(out), "--boundary", "0", "1", "--boundary-n", "3", "--sampling-steps", "2",
                 "--boundary-method", "compose", "--guidance-interval", "0.5,inf", "--boundary-guidance", "2"])
    meta = json.loads((out / "meta.json").read_text())
    said = capsys.readouterr()
    b = meta["boundary"]
    rounds = [line for line in said.err.splitlines() if line.startswith("--boundary 0 1: round ")]
    assert rounds and rounds[-1].endswith(f"so far {b['tried']} walks (at most 24), {b['crossed']} crossed, "
                                          f"{b['trusted']} of 3 trusted")  # a line per round, also without a terminal
    assert said.out.splitlines()[-1] == (f"kept {b['written']} trusted boundary samples between 0 and 1 from "
                                         f"{b['tried']} walks ({b['crossed']} crossed the guide's P(1) = 0.5); "
                                         f"wrote boundary.png, meta.json, samples.npz in {out}")
    assert meta["files"] == ["boundary.png", "meta.json", "samples.npz"] and meta["boundary_method"] == "compose"
    # what meta.json records is what was done: the interval and the method's weight reached the sampler
    assert all(s["guidance_interval"] == (0.5, float("inf")) and s["guidance"] == 2.0 for s in seen)
    assert meta["guidance_interval"] == [0.5, float("inf")] and meta["guidance"] == {boundary.COMPOSE: 2.0}
    b = meta["boundary"]
    with np.load(out / "samples.npz") as s:
        n = len(s["images"])
        assert 1 <= n <= 3 and n == b["written"] <= b["trusted"] <= b["crossed"] <= b["tried"]
        assert s["prob"].shape == (n, 2) and np.isfinite(s["prob"]).all() and np.isfinite(s["s"]).all()
        assert s["endpoints"].shape == (n, 2) and (s["walk"] >= 0).all() and s["labels"].tolist() == [0] * n
        # only trusted samples are written, each with its three members' readings
        assert s["guide_prob"].shape == (n, 3, 2) and s["trusted"].all()
        assert boundary.trusted(s["guide_prob"]).all()
    assert Image.open(out / "boundary.png").size == (3 * 10 + 2, n * 10 + 2)  # image A, the sample, image B


class Sure(Members):
    """Every member sure of class 0: no found point is ever trusted."""
    def member_prob(self, images):
        return np.tile([0.97, 0.03], (3, len(images), 1))


def test_a_boundary_without_trusted_samples_is_one_line_and_writes_nothing(run_dir, tmp_path, monkeypatch):  # noqa: F811
    run = copy_run(run_dir, tmp_path)
    monkeypatch.setattr(boundary, "boundary_guide", lambda run, report=None: Sure())
    monkeypatch.setattr(Sure, "prob", lambda self, images: Ramp().prob(images))  # the search still crosses
    out = tmp_path / "none"
    with pytest.raises(SystemExit, match=r"none of 16 walks gave a trusted sample \([1-9][0-9]* crossed"):  # (crossed, none trusted)
        sample.main([str(run), "--out", str(out), "--boundary", "0", "1", "--boundary-n", "2", "--sampling-steps", "2"])
    assert not out.exists()


@pytest.mark.parametrize("extra,match", [
    (["--boundary", "0", "1", "--guidance", "3"], "--guidance does not apply to --boundary.*--boundary-guidance"),
    (["--boundary", "0", "1", "--grid-per-class", "3"], "--grid-per-class does not apply to --boundary"),
    (["--boundary-method", "compose"], "--boundary-method acts only with --boundary"),
    (["--boundary-guidance", "2"], "--boundary-guidance acts only with --boundary"),
    (["--walks", "3"], "--walks acts only with --between"),
    (["--walk-path", "features"], "--walk-path acts only with --between"),
    (["--n", "5"], "--n acts only with --eval"),
    (["--boundary-n", "5"], "--boundary-n acts only with --boundary"),
    (["--boundary", "0", "1", "--n", "5"], "--n acts only with --eval.*--boundary's count of trusted samples is --boundary-n"),
    (["--sampler", "ddpm", "--sampling-steps", "5"], "--sampling-steps does not apply to --sampler ddpm"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta does not apply to --sampler ddpm"),
    (["--boundary", "0", "1", "--sampler", "ddpm", "--eta", "0"], "--eta does not apply to --sampler ddpm"),
    (["--per-reference", "3"], "--per-reference acts only with --references or --reference-images"),
    (["--reference-labels", "1"], "--reference-labels acts only with --reference-images"),
    (["--boundary", "0", "1", "--boundary-guidance", "nan"], "--boundary-guidance must be finite"),
])
def test_a_flag_the_mode_cannot_honour_is_refused(run_dir, tmp_path, extra, match):  # noqa: F811
    out = tmp_path / "o"
    with pytest.raises(SystemExit, match=match):
        sample.main([str(run_dir), "--out", str(out), *extra])
    assert not out.exists()


@pytest.mark.parametrize("extra,match", [
    (["--boundary", "1", "1"], "--boundary 1 1: .*two different classes"),
    (["--boundary", "0", "4"], "--boundary 0 4: class 4 does not exist"),
    (["--boundary", "0", "1", "--boundary-method", "wiggle"], "--boundary-method"),
    (["--boundary", "0", "1", "--between", "0", "1"], "--boundary .*--between"),
])
def test_bad_boundary_input_is_one_line_before_any_write(run_dir, tmp_path, extra, match):  # noqa: F811
    out = tmp_path / "s"
    fails(sample, [str(run_dir), "--out", str(out), *extra], match)
    assert not out.exists()


def test_a_method_the_model_cannot_run_is_one_line(folder, tmp_path):  # noqa: F811
    import train
    from test_pipeline import tiny
    pos_only = tmp_path / "p"
    train.main(tiny(folder, pos_only, "--cond", "pos", "--steps", "2"))
    for method in ("soft", "compose"):
        fails(sample, [str(pos_only), "--out", str(tmp_path / "s"), "--boundary", "0", "1", "--boundary-method",
                       method], rf"--boundary-method {method} moves the label .*use --boundary-method position")


def test_bench_boundary_runs_on_a_tiny_run(run_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from experiments import bench
    monkeypatch.setattr(boundary, "GUIDE_STEPS", 2)
    monkeypatch.setattr(boundary, "DEFAULT_STEPS", 2)
    bench.bench_boundary(str(copy_run(run_dir, tmp_path)), 0, 1, n=2, methods=("soft", "position"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("soft | ") and lines[2].startswith("position | ")
    for line in lines[1:3]:  # walks tried >= crossed >= trusted, at most 8 walks per sample asked for
        tried, crossed, trusted = (int(v) for v in line.split(" | ")[2:5])
        assert 2 * boundary.MAX_WALKS_PER_SAMPLE >= tried >= crossed >= trusted >= 0


def test_walk_modes_mix_or_drop_only_the_label_a_forks_integer_condition_stays_image_as(run_dir, monkeypatch):  # noqa: F811
    run = rundir.load_run(str(run_dir))
    ends = dict(label=np.array([0, 1]), style=np.array([5, 7]), pos=np.array([[0.0, 2.0], [1.0, 0.0]], np.float32))
    monkeypatch.setattr(boundary, "request_conditions", lambda *a, **k: ends)
    s = np.array([0.0, 0.25, 1.0], np.float32)
    for mode in boundary.WALK_LABELS:
        cond = boundary.walk_conditions(run, 0, 1, s, mode, 1, "line")
        assert cond["style"].tolist() == [5, 5, 5] and cond["style"].dtype == ends["style"].dtype, mode
        assert np.allclose(cond["pos"][1], [0.25, 1.5])
    assert np.allclose(boundary.walk_conditions(run, 0, 1, s, "soft", 0, "line")["label"][1], [0.75, 0.25])
    assert "label" not in boundary.walk_conditions(run, 0, 1, s, "none", 0, "line")
    assert boundary.walk_conditions(run, 0, 1, s, "fixed", 1, "line")["label"].tolist() == [1, 1, 1]
