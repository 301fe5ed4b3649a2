"""Every flag of every command in every mode: used, or refused in one line naming it and the fix, before any work.

One table, (command, run, flags, expected): expected "used" (the command's checks accept it: the flag acts in
this mode) or the refusal's text. A refusal goes through the command's main(): one line, and --out is not made
(sample.py, train.py) or not changed (train.py --resume). A few real tiny runs below show a use itself.
"""
import json
import os
import re

import numpy as np
import pytest
import torch

import conditions
import metrics
import sample
import train
from features import FeatureSpace, extract_features
from plumbing import commands, metrics_command, rundir, train_command
from test_pipeline import copy_run, folder, label_run, snapshot, tiny  # noqa: F401

LP, L, NONE = "label+pos", "label", "none"  # sample.py's runs, by their conditions
IV = ["--guidance-interval", "0.5,inf"]

SAMPLE = [  # (run, flags, expected)
    # class grid only, and the samplers
    (LP, [], "used"), (LP, ["--sampler", "ddim"], "used"), (LP, ["--sampler", "dpm++2m"], "used"),
    (LP, ["--sampler", "ddpm"], "used"), (LP, ["--sampling-steps", "5"], "used"),
    (LP, ["--sampler", "ddim", "--eta", "0.5"], "used"), (LP, ["--eta", "0"], "used"),
    (LP, ["--eta", "0.5"], r"--eta must be 0 \(ODE\) or 1 \(SDE\) with --sampler dpm\+\+2m"),
    (LP, ["--sampler", "ddpm", "--sampling-steps", "10"], "--sampling-steps does not apply to --sampler ddpm"),
    (LP, ["--sampler", "ddpm", "--eta", "1"], "--eta does not apply to --sampler ddpm"),
    (LP, ["--sampling-batch-size", "8"], "used"), (LP, ["--seed", "3"], "used"),
    (LP, ["--grid-per-class", "2"], "used"), (LP, ["--device", "cpu"], "used"), (LP, ["--precision", "fp32"], "used"),
    (LP, ["--guidance", "2"], "used"), (LP, ["--guidance", "label=2,pos=1"], "used"),
    (LP, ["--guidance", "label=3,label=2"], "--guidance: 'label=3,label=2' names label more than once"),
    (LP, ["--guidance", "colour=2"], "--guidance names colour, which .* was not trained with"),
    (LP, IV, "used"), (LP, ["--sampler", "ddpm", *IV], "used"),
    (LP, ["--guidance", "1", *IV], "--guidance-interval limits the guidance .*--guidance 1 guides none"),
    (LP, ["--guidance", "label=1,pos=1", *IV], "--guidance-interval .*--guidance label=1,pos=1 guides none"),
    (LP, ["--guidance-interval", "1000,2000"], "--guidance-interval 1000,2000 holds none of the sampled steps"),
    # flags of a mode that is not asked for (typed at their default too)
    (LP, ["--points", "8"], "--points acts only with --between"), (LP, ["--walks", "1"], "--walks acts only with --between"),
    (LP, ["--walk-label", "fixed"], "--walk-label acts only with --between"),
    (LP, ["--walk-path", "line"], "--walk-path acts only with --between"),
    (LP, ["--n", "10"], "--n acts only with --eval"), (LP, ["--inception-weights", "{file}"], "--inception-weights acts only with --eval"),
    (LP, ["--per-reference", "10"], "--per-reference acts only with --references or --reference-images"),
    (LP, ["--reference-labels", "0"], "--reference-labels acts only with --reference-images"),
    (LP, ["--boundary-method", "soft"], "--boundary-method acts only with --boundary"),
    (LP, ["--boundary-guidance", "3"], "--boundary-guidance acts only with --boundary"),
    (LP, ["--boundary-n", "16"], "--boundary-n acts only with --boundary"),
    # --references, --reference-images
    (LP, ["--references", "1"], "used"), (LP, ["--references", "1", "--per-reference", "2"], "used"),
    (LP, ["--references", "1", "--reference-images", "{png}", "--reference-labels", "0"], "either --references K or --reference-images"),
    (LP, ["--reference-images", "{png}", "--reference-labels", "0"], "used"),
    (LP, ["--reference-images", "{png}", "--reference-labels", "0", "--per-reference", "2"], "used"),
    (LP, ["--reference-images", "{png}"], "give one --reference-labels value per --reference-images file"),
    (L, ["--references", "1"], "used"),
    # --between with each --walk-label and --walk-path
    (LP, ["--between", "0", "1"], "used"), (LP, ["--between", "0", "1", "--points", "3"], "used"),
    (LP, ["--between", "0", "1", "--points", "1"], "--points must be at least 2"),
    (LP, ["--between", "0", "1", "--walks", "2"], "used"),
    (LP, ["--between", "0", "1", "--walk-label", "soft"], "used"), (LP, ["--between", "0", "1", "--walk-label", "none"], "used"),
    (LP, ["--between", "0", "1", "--walk-path", "features"], "used"),
    (LP, ["--between", "0", "1", "--walk-label", "none", "--walk-path", "features"], "used"),
    (LP, ["--between", "0", "1", "--walk-label", "none", "--guidance", "label=5"],
     "--guidance label=5 weighs the label, which --walk-label none drops from the walk"),
    (LP, ["--between", "0", "1", "--walk-label", "none", "--guidance", "label=1,pos=2"], "--walk-label none drops"),
    (LP, ["--between", "0", "1", "--walk-label", "none", "--guidance", "pos=2"], "used"),
    (LP, ["--between", "0", "1", "--walk-label", "none", "--guidance", "5"], "used"),
    (LP, ["--between", "0", "1", "--walk-label", "soft", "--guidance", "label=5"], "used"),
    (LP, ["--between", "0", "1", "--guidance", "label=5"], "used"), (LP, ["--between", "0", "1", *IV], "used"),
    (LP, ["--between", "0", "5"], "--between 0 5: class 5 does not exist"),
    (L, ["--between", "0", "1"], "--between on .* moves no condition with --walk-label fixed: .*use --walk-label soft"),
    (L, ["--between", "0", "1", "--walk-label", "none"], "moves no condition with --walk-label none"),
    (L, ["--between", "0", "1", "--walk-label", "soft"], "used"),
    (L, ["--between", "0", "1", "--walk-path", "features"], "--walk-path features .*use --walk-path line"),
    # --boundary with each --boundary-method
    (LP, ["--boundary", "0", "1"], "used"), (LP, ["--boundary", "0", "1", "--boundary-method", "position"], "used"),
    (LP, ["--boundary", "0", "1", "--boundary-method", "compose"], "used"),
    (LP, ["--boundary", "0", "1", "--boundary-guidance", "2", *IV], "used"),
    (LP, ["--boundary", "0", "1", "--boundary-guidance", "1", *IV], "--boundary-guidance 1 guides none"),
    (LP, ["--boundary", "0", "1", "--boundary-n", "3", "--sampler", "ddpm"], "used"),
    (LP, ["--boundary", "0", "1", "--guidance", "3"], "--guidance does not apply to --boundary.*--boundary-guidance"),
    (LP, ["--boundary", "0", "1", "--grid-per-class", "10"], "--grid-per-class does not apply to --boundary"),
    (LP, ["--boundary", "0", "1", "--references", "1"], "run it without --references"),
    (LP, ["--boundary", "0", "1", "--between", "0", "1"], "run it without --between"),
    (LP, ["--boundary", "0", "1", "--eval"], "run it without --eval"),
    (LP, ["--boundary", "0", "1", "--points", "3"], "--points acts only with --between"),
    (L, ["--boundary", "0", "1", "--boundary-method", "position"], "--boundary-method position moves the pos condition"),
    (L, ["--boundary", "0", "1", "--boundary-method", "compose"], "used"),
    # --eval
    (LP, ["--eval"], "used"), (LP, ["--eval", "--n", "4"], "used"), (LP, ["--eval", "--n", "1"], "--n must be at least 2"),
    (LP, ["--eval", "--inception-weights", "{file}"], "used"), (LP, ["--eval", "--references", "1"], "used"),
    (LP, ["--eval", "--between", "0", "1"], "used"),
    # a model without conditions: nothing to guide or steer
    (NONE, [], "used"), (NONE, ["--eval"], "used"), (NONE, ["--grid-per-class", "2"], "used"),
    (NONE, ["--guidance", "2"], r"--guidance: .* was trained without conditions \(--cond none\)"),
    (NONE, IV, "--guidance-interval: .* without conditions"),
    (NONE, ["--references", "1"], "--references: .* without conditions"),
    (NONE, ["--between", "0", "1"], "--between: .* without conditions"),
]

NEW = [  # train.py, a new run: (flags, expected); every run here has --data FOLDER --batch-size 8
    ([], "used"), (["--root", "{tmp}"], "--root is where --data mnist is downloaded .* uses neither: leave --root out"), (["--per-class", "10"], "used"),
    (["--per-class", "10", "--data-seed", "1"], "used"),
    (["--data-seed", "1"], "--data-seed chooses which images a --per-class subset takes.*add --per-class N"),
    (["--image-size", "6"], "used"), (["--channels", "3"], "used"),
    (["--cond", "label"], "used"), (["--cond", "pos"], "used"), (["--cond", "none"], "used"),
    (["--cond", "label+label"], "--cond label\\+label names label more than once"),
    (["--backbone", "resnet18", "--weights", "{file}"], "used"), (["--backbone", "classifier", "--weights", "{file}"], "used"),
    (["--pos-dim", "4"], "used"),
    (["--cond", "label", "--backbone", "resnet18"], "--backbone shapes the pos condition, and --cond label has none"),
    (["--cond", "label", "--pos-dim", "4"], "--pos-dim shapes the pos condition.*add pos to --cond"),
    (["--cond", "label", "--weights", "{file}"], "--weights shapes the pos condition"),
    (["--weights", "{file}"], "--weights is a backbone's weights file, and --backbone pixels takes none"),
    (["--size", "paper"], "used"), (["--dropout", "0.1"], "used"), (["--schedule", "cosine"], "used"),
    (["--base-channels", "8"], "used"), (["--base-channels", "0"], "--base-channels must be a positive number, got 0"),
    (["--base-channels", "1"], "--base-channels must be at least 2, got 1"), (["--base-channels", "3"], "used"),
    (["--root", "{tmp}", "--backbone", "resnet18"], "used"), (["--root", "{tmp}", "--cond", "label", "--backbone", "resnet18"], "--backbone shapes the pos"),
    (["--timesteps", "50"], "used"), (["--prediction", "eps"], "used"), (["--min-snr", "5"], "used"),
    (["--steps", "4"], "used"), (["--epochs", "2"], "used"),
    (["--steps", "4", "--epochs", "2"], "--steps and --epochs both set the run's length"),
    (["--lr", "1e-3"], "used"), (["--weight-decay", "0.01"], "used"), (["--warmup", "10"], "used"),
    (["--lr-schedule", "constant"], "used"), (["--lr-schedule", "cosine", "--steps", "200"], "used"),
    (["--lr-schedule", "cosine", "--steps", "50"], "--lr-schedule cosine decays after the warm-up, and --warmup 100"),
    (["--ema", "0.99"], "used"), (["--grad-clip", "0.5"], "used"), (["--seed", "1"], "used"),
    (["--p-uncond", "0.2"], "used"), (["--p-drop", "label=0.2"], "used"), (["--cond", "label", "--p-drop", "label=0.2"], "used"),
    (["--p-drop", "label=0.1,label=0.2"], "--p-drop: 'label=0.1,label=0.2' names label more than once"),
    (["--cond", "none", "--p-uncond", "0.2"], "--p-uncond drops conditions, and --cond none has none"),
    (["--cond", "none", "--p-drop", ""], "--p-drop drops conditions, and --cond none has none"),
    (["--device", "cpu"], "used"), (["--precision", "fp32"], "used"), (["--save-every", "2"], "used"),
    (["--log-every", "2"], "used"), (["--steps", "4", "--sample-every", "2"], "used"), (["--sample-every", "0"], "used"),
    (["--steps", "4", "--sample-every", "4"], "--sample-every 4: no step between 0 and the last, 4, is a multiple"),
    (["--eval"], "used"), (["--compile"], "used"), (["--overwrite"], "used"),
    (["--resume"], "nothing to resume"), (["--resume", "--overwrite"], "either --resume or --overwrite"),
]

RESUME = [  # train.py --resume on a copy of a label run trained to its --steps 2, with --warmup 2: (flags, expected)
    ([], "used"),  # "already trained": nothing changes
    (["--steps", "4"], "used"), (["--steps", "4", "--lr", "1e-3", "--grad-clip", "0.5"], "used"),
    (["--steps", "1"], "is at step 2: --steps 1 would not train it; give --steps beyond step 2"),
    (["--steps", "2"], "used"),  # the run's own --steps restated: "already trained", config.json as it was
    (["--epochs", "0.2"], r"is at step 2: --epochs 0.2 \(1 steps\) would not train it"),
    (["--epochs", "1"], "used"), (["--steps", "4", "--epochs", "1"], "--steps and --epochs both"),
    (["--lr", "1e-3"], "already trained to step 2 .*--lr would change nothing; add --steps above 2"),
    (["--device", "cpu"], "already trained to step 2"),
    (["--steps", "4", "--cond", "label"], "used"), (["--steps", "4", "--data-seed", "0"], "used"),  # as it was
    (["--steps", "4", "--cond", "pos"], "trained with --cond label; a resumed run keeps"),
    (["--steps", "4", "--dropout", "0.1"], "trained with --dropout None"),
    (["--steps", "4", "--base-channels", "8"], "trained with --base-channels None"),
    (["--steps", "4", "--data-seed", "1"], "trained with --data-seed 0"),
    (["--steps", "4", "--sample-every", "3"], "used"),
    (["--steps", "4", "--sample-every", "5"], "--sample-every 5: no step between 2 and the last, 4"),
    (["--steps", "4", "--warmup", "3"], "used"),
    (["--steps", "400", "--warmup", "1"], "--warmup 1: .* past the warm-up either way"),
    (["--steps", "4", "--lr-schedule", "cosine"], "used"), (["--steps", "4", "--ema", "0.99"], "used"),
    (["--steps", "4", "--save-every", "1"], "used"), (["--steps", "4", "--log-every", "1"], "used"),
    (["--steps", "4", "--precision", "fp32"], "used"), (["--steps", "4", "--compile"], "used"),
    (["--steps", "4", "--eval"], "used"), (["--steps", "4", "--overwrite"], "either --resume or --overwrite"),
]

METRICS = [  # metrics.py REAL GENERATED: (flags, expected)
    ([], "used"), (["--features", "classifier"], "used"), (["--features", "classifier", "--classifier", "{file}"], "used"),
    (["--inception-weights", "{file}"], "used"), (["--features", "inception", "--inception-weights", "{file}"], "used"),
    (["--classifier", "{file}"], "--classifier is the network of --features classifier; .*add --features classifier"),
    (["--features", "classifier", "--inception-weights", "{file}"], "--inception-weights are the weights of --features inception"),
    (["--splits", "5"], "used"), (["--features", "classifier", "--splits", "5"], "used"), (["--splits", "0"], "--splits must be"),
    (["--image-size", "28"], "used"), (["--feature-batch-size", "8"], "used"), (["--device", "cpu"], "used"),
    (["--json"], "used"), (["--batch-size", "8"], "--batch-size is now --feature-batch-size"),
]

TABLE = ([("sample", run, flags, want) for run, flags, want in SAMPLE] + [("train", None, f, w) for f, w in NEW]
         + [("resume", L, f, w) for f, w in RESUME] + [("metrics", None, f, w) for f, w in METRICS])


def quick_space(images, settings):
    """A stand-in for the UMAP fit (a random projection of the pixels): a label+pos run without numba's compile."""
    features = extract_features(images, "pixels")
    projection = np.random.default_rng(0).standard_normal((features.shape[1], settings["pos_dim"]))
    params = dict(n_neighbors=15, min_dist=0.1, spread=1.0, a=1.6, b=0.9, seed=0, transform_seed=42, n_epochs=-1,
                  learning_rate=1.0, repulsion_strength=1.0, negative_sample_rate=5, local_connectivity=1.0)
    return FeatureSpace(features, (features @ projection).astype(np.float32), params, "pixels")


@pytest.fixture(scope="module")
def runs(folder, label_run, tmp_path_factory):  # noqa: F811
    """sample.py's runs by their conditions: label+pos (a quick space), label (test_pipeline's), none."""
    root = tmp_path_factory.mktemp("settings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conditions, "fit_space", quick_space)
        train.main(tiny(folder, root / "lp", "--cond", LP, "--steps", "2", "--pos-dim", "4"))
    train.main(tiny(folder, root / "none", "--cond", NONE, "--steps", "2"))
    return {LP: root / "lp", L: label_run, NONE: root / "none"}


def refusal(call, capsys) -> str:
    """The one line a refused command printed: its SystemExit message, or argparse's last line (exit code 2)."""
    with pytest.raises(SystemExit) as stop:
        call()
    message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code != 0 and "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("command,run,flags,want", TABLE,
                         ids=[f"{c}-{r or ''}-{' '.join(f) or 'plain'}" for c, r, f, _ in TABLE])
def test_every_flag_is_used_or_refused_in_one_line(command, run, flags, want, runs, folder, tmp_path, capsys):  # noqa: F811
    (tmp_path / "file.pt").write_bytes(b"x")
    fill = {"{file}": str(tmp_path / "file.pt"), "{png}": os.path.join(folder, "top", "0.png"), "{tmp}": str(tmp_path)}
    flags = [fill.get(flag, flag) for flag in flags]
    out = tmp_path / "out"
    if command == "sample":
        argv = [str(runs[run]), "--out", str(out), *flags]
        if want == "used":
            args, typed = commands.parse_args(argv)
            commands.check_args(args, typed)
            commands.check_against_run(args, rundir.load_run(str(runs[run]), "cpu"))
        else:
            message = refusal(lambda: sample.main(argv), capsys)
            assert re.search(want, message), message
        assert not out.exists()  # checked, or refused, before anything is made
    elif command in ("train", "resume"):
        if command == "resume":
            out = copy_run(runs[L], tmp_path, "run")
            argv = ["--out", str(out), "--resume", *flags]
        else:
            argv = ["--data", folder, "--out", str(out), "--batch-size", "8", *flags]
        before = snapshot(out) if out.exists() else None
        if want == "used":
            args, typed = train_command.parse_args(argv)
            train_command.check_command(args)
            train_command.open_run(args, typed, 1)  # the run in --out, the settings, the data and every check
        else:
            message = refusal(lambda: train.main(argv), capsys)
            assert re.search(want, message), message
        assert (snapshot(out) if out.exists() else None) == before  # nothing made, nothing changed
    else:
        argv = [str(tmp_path / "real.npz"), str(tmp_path / "generated.npz"), *flags]
        if want == "used":
            metrics_command.check_args(metrics_command.build_parser(metrics.MIN_IMAGES_PER_SPLIT).parse_args(argv))
        else:
            assert metrics_command.main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and re.search(want, err[0]), err


# ---------------------------------------------------------------------------
# The use itself, where a check alone would not show it
# ---------------------------------------------------------------------------
def test_the_walks_guidance_reaches_its_sampler_and_meta_json(runs, tmp_path, monkeypatch):
    """--between's own guidance (generation.walk_guidance) is what its sampler gets and what meta.json records."""
    import boundary
    seen = {}

    def spy(where):
        def generate(run, count, cond, sampler, seed, **kwargs):
            seen.setdefault(where, []).append(sampler["guidance"])
            return np.zeros((count, 8, 8, 1), np.uint8)  # no network: only the request matters here
        return generate

    monkeypatch.setattr(sample, "generate", spy("grid"))
    monkeypatch.setattr(boundary, "generate", spy("walk"))
    cases = [(["--walk-label", "none", "--guidance", "pos=2"], {"pos": 2.0}, {"pos": 2.0}),
             (["--walk-label", "fixed", "--guidance", "label=5"], {"label": 5.0}, {"label": 5.0}),
             (["--walk-label", "soft", "--guidance", "label=5"], {"label": 5.0}, {"label": 5.0}),
             (["--walk-label", "none"], {"label": 3.0}, 3.0)]  # the default: the label, or the position in the walk
    for i, (flags, grid, walk) in enumerate(cases):
        seen.clear()
        out = tmp_path / str(i)
        sample.main([str(runs[LP]), "--out", str(out), "--between", "0", "1", "--points", "3", *flags])
        meta = json.loads((out / "meta.json").read_text())
        assert seen == {"grid": [grid], "walk": [walk]} and meta["guidance"] == grid and meta["walk_guidance"] == walk
    sample.main([str(runs[NONE]), "--out", str(tmp_path / "none"), "--sampler", "ddpm"])
    meta = json.loads((tmp_path / "none" / "meta.json").read_text())  # what was done: nothing guided, no walk, T steps
    assert meta["guidance"] == 1.0 and meta["points"] is None and meta["walk_label"] is None and meta["n"] is None
    assert meta["sampling_steps"] == rundir.load_run(str(runs[NONE])).diffusion.num_timesteps and meta["eta"] is None


def test_base_channels_sets_the_u_nets_width_and_the_default_keeps_the_run_id(runs, folder, tmp_path):  # noqa: F811
    """--base-channels C: config.json's U-Net and the network built from it have C channels at their first level;
    the default (the size's own, None) leaves the run id as it was before the flag existed."""
    from plumbing.train_command import unet_kwargs
    from unet import UNet
    argv = ["--data", folder, "--batch-size", "8", "--steps", "1", "--save-every", "1", "--cond", "label"]
    train.main(["--out", str(tmp_path / "narrow"), *argv, "--base-channels", "8"])
    config = json.loads((tmp_path / "narrow" / "config.json").read_text())
    assert config["unet"]["base_channels"] == 8 and config["settings"]["base_channels"] == 8
    assert UNet(**config["unet"]).input_conv.out_channels == 8
    assert unet_kwargs("small", (28, 28, 1), None, {})["base_channels"] == 32
    odd = UNet(**unet_kwargs("small", (8, 8, 1), None, {"label": 2}, 50))  # attention over 100 channels: 2 heads
    assert odd(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), {"label": torch.zeros(2, dtype=torch.long)}
               ).shape == (2, 1, 8, 8)
    settings = json.loads((runs[L] / "config.json").read_text())["settings"]
    old = {key: value for key, value in settings.items() if key != "base_channels"}  # a config from before the flag
    assert rundir.make_run_id(old, "d") == rundir.make_run_id(dict(old, base_channels=None), "d")
    assert rundir.make_run_id(old, "d") != rundir.make_run_id(dict(old, base_channels=8), "d")


def test_the_default_u_net_is_compact_narrow_where_small_costs_most_and_small_keeps_its_run_ids(runs):  # noqa: F811
    """--size compact (the default since 2026-12-07): widths 16, 32, 64, so its 7x7 level is as wide as small's
    (32, 64, 64) and its 28x28 and 14x14 levels, small's costly ones, are half as wide; --size small is stored in config.json as it was,
    so runs of the previous default keep their ids (kept sets name them), and the two sizes never share one."""
    from plumbing.train_command import build_parser, unet_kwargs
    from unet import UNet, count_parameters
    assert build_parser().get_default("size") == "compact" and build_parser().get_default("steps") == 800
    compact, small = (unet_kwargs(size, (28, 28, 1), None, {"label": 10, "pos": 20}) for size in ("compact", "small"))
    widths = lambda kw: [kw["base_channels"] * m for m in kw["channel_mults"]]  # noqa: E731
    assert widths(compact) == [16, 32, 64] and widths(small) == [32, 64, 64]
    assert {k: v for k, v in compact.items() if k not in ("base_channels", "channel_mults")} == \
        {k: v for k, v in small.items() if k not in ("base_channels", "channel_mults")}
    assert 0.6e6 < count_parameters(UNet(**compact)) < 0.75e6 < 1.1e6 < count_parameters(UNet(**small)) < 1.2e6
    assert widths(unet_kwargs("compact", (28, 28, 1), None, {}, 8)) == [8, 16, 32]  # --base-channels scales every level
    settings = json.loads((runs[L] / "config.json").read_text())["settings"]
    assert rundir.make_run_id(dict(settings, size="small"), "d") != rundir.make_run_id(dict(settings, size="compact"), "d")


def test_a_resume_records_the_steps_it_trains_and_a_refused_one_changes_nothing(runs, tmp_path, capsys):
    out = copy_run(runs[L], tmp_path)  # trained to its --steps 2; 40 images in batches of 8: an epoch is 5 steps
    before = snapshot(out)
    refusal(lambda: train.main(["--out", str(out), "--resume", "--steps", "1"]), capsys)
    assert snapshot(out) == before
    train.main(["--out", str(out), "--resume", "--epochs", "1"])
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["steps"] == 5 and config["changes"] == [{"step": 2, "epochs": [None, 1.0], "steps": [2, 5]}]
    train.main(["--out", str(out), "--resume", "--steps", "6"])  # --steps takes over from the saved --epochs: both said
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["epochs"] is None and config["changes"][-1] == {"step": 5, "steps": [5, 6], "epochs": [1.0, None]}
    assert rundir.checkpoint_step(os.path.join(out, "checkpoint.pt")) == 6
