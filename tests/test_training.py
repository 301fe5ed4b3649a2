"""The training loop of train.py: per-condition dropout, the EMA in eval mode, precision, the loss log, two ranks."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from plumbing import lock
from plumbing import precision
import sample
from plumbing import losslog
import train
from plumbing import train_command
from test_pipeline import folder, tiny  # noqa: F401  (the tiny two-class image folder and its run flags)
from unet import UNet


# ---------------------------------------------------------------- per-condition dropout in the U-Net
def random_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
               conditions={"label": 3, "pos": 2}).eval()
    for p in net.parameters():  # zero-initialised layers would hide every condition
        torch.nn.init.normal_(p, std=0.2)
    return net


def test_a_dropped_label_is_ignored_while_the_position_is_still_seen_and_the_other_way_round():
    net = random_unet()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 30, 60, 90])
    pos = torch.randn(4, 2)
    yes, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    with torch.no_grad():
        def out(label, position, drop):
            return net(x, t, {"label": label, "pos": position}, drop)
        label_dropped = {"label": yes, "pos": no}
        assert torch.equal(out(torch.tensor([0, 0, 0, 0]), pos, label_dropped),
                           out(torch.tensor([1, 2, 1, 2]), pos, label_dropped))  # the label does not matter
        assert not torch.allclose(out(torch.tensor([0, 0, 0, 0]), pos, label_dropped),
                                  out(torch.tensor([0, 0, 0, 0]), pos + 1, label_dropped))  # the position does
        pos_dropped = {"label": no, "pos": yes}
        assert torch.equal(out(torch.tensor([0, 1, 2, 0]), pos, pos_dropped),
                           out(torch.tensor([0, 1, 2, 0]), pos + 1, pos_dropped))
        assert not torch.allclose(out(torch.tensor([0, 1, 2, 0]), pos, pos_dropped),
                                  out(torch.tensor([1, 2, 0, 1]), pos, pos_dropped))
        # dropping both per condition is the unconditional model, as a single (B,) mask is
        assert torch.equal(out(torch.tensor([0, 1, 2, 0]), pos, {"label": yes, "pos": yes}),
                           out(torch.tensor([0, 1, 2, 0]), pos, yes))


def test_a_soft_label_embeds_as_the_mix_of_the_class_vectors():
    net = random_unet()
    e = net.encoders["label"]
    mix = torch.tensor([[0.25, 0.75, 0.0]])
    assert torch.allclose(e(mix), 0.25 * e(torch.tensor([0])) + 0.75 * e(torch.tensor([1])), atol=1e-6)
    assert torch.allclose(e(torch.eye(3)), e(torch.arange(3)))


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("bf16,capability,expected", [
    (True, (9, 0), torch.bfloat16),  # H100: native bf16
    (False, (7, 5), torch.float16),  # T4: bf16 only emulated -> fp16 with loss scaling
    (False, (6, 1), None),           # no tensor cores: fp32
])
def test_auto_precision_on_a_gpu_without_native_bf16(monkeypatch, bf16, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.resolve_precision("auto", torch.device("cuda")) is expected
    assert precision.resolve_precision("fp32", torch.device("cuda")) is None
    assert precision.resolve_precision("fp16", torch.device("cuda")) is torch.float16


# ---------------------------------------------------------------- batches of several ranks
def test_the_ranks_batches_are_disjoint_and_cover_each_epoch():
    n, batch, world = 64, 8, 2  # a step (16 images) never straddles two epochs here
    seen = []
    for step in range(12):  # 192 stream positions: 3 epochs
        parts = [train.batch_indices(step, n, batch, seed=3, rank=r, world=world) for r in range(world)]
        assert not set(parts[0].tolist()) & set(parts[1].tolist())  # the ranks never share an image in a step
        seen += [i for p in parts for i in p.tolist()]
    for epoch in range(3):
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))  # every image once per epoch


def _rank(rank: int, world: int, port: int, argv: list[str], tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        args, typed = train_command.parse_args(argv)
        run = train.prepare(args, typed, rank, world)
        seen = []
        original = train.batch_indices

        def recording(step, n, batch, seed, r, w, device=torch.device("cpu")):
            idx = original(step, n, batch, seed, r, w, device)
            seen.append(idx.tolist())
            return idx

        train.batch_indices = recording
        train.train(run, rank, world, torch.device("cpu"))
        torch.save(dict(ema=run["ema"].state_dict(), seen=seen), os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_keep_identical_ema_weights_on_disjoint_batches(folder, tmp_path):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = tiny(folder, tmp_path / "ddp", "--cond", "label", "--steps", "3", "--batch-size", "4")
    mp.spawn(_rank, args=(2, port, argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for name, value in r0["ema"].items():
        assert torch.equal(value, r1["ema"][name]), name
    for b0, b1 in zip(r0["seen"], r1["seen"]):
        assert not set(b0) & set(b1)
    assert r0["seen"] != r1["seen"]


# ---------------------------------------------------------------- the loop: EMA mode, loss log
def test_the_grids_come_from_the_ema_model_in_eval_mode(folder, tmp_path, monkeypatch):  # noqa: F811
    modes = []
    original = sample.class_grid

    def recording(run, *args, **kwargs):
        modes.append(run.model.training)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(sample, "class_grid", recording)
    train.main(tiny(folder, tmp_path / "ema", "--cond", "label", "--dropout", "0.1", "--sample-every", "2"))
    assert modes and not any(modes)


def test_the_loss_log_grows_by_a_row_every_log_every_steps_and_continues_on_resume(folder, tmp_path):  # noqa: F811
    out = tmp_path / "log"
    train.main(tiny(folder, out, "--cond", "label", "--log-every", "2", "--steps", "5", "--save-every", "4"))
    table = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    assert list(table.dtype.names) == losslog.LOG_COLUMNS
    assert table["step"].tolist() == [2, 4, 5]  # every 2 steps and at each save / the end
    assert np.isfinite(table["loss"]).all() and (table["images_per_s"] > 0).all()
    assert (out / "loss.png").stat().st_size > 1000
    with open(out / "log.csv", "a") as f:  # a row written after the last checkpoint (step 5) by a killed run
        f.write("6,1,1,1,1,1,1,1\n")
    train.main(tiny(folder, out, "--cond", "label", "--log-every", "2", "--resume", "--steps", "8"))
    table = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    assert table["step"].tolist() == [2, 4, 5, 6, 8]
    assert table["loss"][3] != 1  # the stale row went; step 6 is the resumed run's own


def test_log_lines_instead_of_a_bar_when_the_output_is_not_a_terminal(folder, tmp_path, capsys):  # noqa: F811
    train.main(tiny(folder, tmp_path / "quiet", "--cond", "label", "--log-every", "2"))
    captured = capsys.readouterr()
    assert "step 2/4 loss" in captured.out and "step 4/4 loss" in captured.out
    assert "\r" not in captured.err  # no tqdm bar in a file


# ---------------------------------------------------------------- fp16: the loss scaler's state survives a resume
def test_an_fp16_resume_restores_the_loss_scaler_and_replays_exactly(folder, tmp_path, monkeypatch):  # noqa: F811
    from plumbing import rundir
    from test_pipeline import advice, interrupted_at_step_5, state
    monkeypatch.setattr(train, "resolve_precision", lambda name, device: torch.float16)  # fp16 + GradScaler on CPU
    # fp16 convolutions are slow on a CPU: a narrower U-Net (base width 8), and no grids (tested elsewhere)
    small = train_command.unet_kwargs
    monkeypatch.setattr(train_command, "unet_kwargs", lambda *args: {**small(*args), "base_channels": 8})
    monkeypatch.setattr(train, "write_grid", lambda run, step: None)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--cond", "label", "--steps", "6", "--save-every", "3"]
    train.main(tiny(folder, straight, *args))
    message = interrupted_at_step_5(monkeypatch, tiny(folder, broken, *args), r"interrupted at step 4")
    assert state(broken)["step"] == 3 and state(broken)["scaler"]["_growth_tracker"] > 0  # the state a fresh scaler lacks
    train.main(advice(message))
    a, b = state(straight), state(broken)
    assert a["scaler"] == b["scaler"]  # a fresh scaler would count its growth from 0 again
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    assert not (broken / lock.LOCK_FILE).exists()


def test_make_scaler_continues_from_a_saved_state_and_is_off_outside_fp16():
    saved = torch.amp.GradScaler("cpu", init_scale=8.0)
    saved._lazy_init_scale_growth_tracker(torch.device("cpu"))
    saved._growth_tracker.fill_(5)
    restored = precision.make_scaler(torch.device("cpu"), torch.float16, saved.state_dict())
    assert restored.state_dict() == saved.state_dict() and restored.get_scale() == 8.0
    assert precision.make_scaler(torch.device("cpu"), torch.float16, None).get_scale() == 2.0 ** 16
    assert not precision.make_scaler(torch.device("cpu"), torch.bfloat16, saved.state_dict()).is_enabled()
