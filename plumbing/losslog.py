"""The training log: log.csv (a row every --log-every steps) and its curve, loss.png. Not the method: train.py's
loop makes one call a step (`LossLog.add`) and one a logged step (`LossLog.row`)."""
import io
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from plumbing.data import write_atomically

LOG_COLUMNS = ["step", "loss", "lr", "images_per_s"] + [f"loss_t{k}" for k in range(4)]  # loss_tK: t in the K-th quarter of 0..T-1


class LossLog:
    """The loss since the last row, overall and per quarter of t, kept on the device (no host sync a step)."""

    def __init__(self, out: str, start: int, num_timesteps: int, device: torch.device, world: int, main_process: bool):
        self.out, self.T, self.world, self.main_process = out, num_timesteps, world, main_process
        self.band_sum, self.band_count = torch.zeros(4, device=device), torch.zeros(4, device=device)
        self.first_bad = torch.tensor(-1, device=device)  # the first step whose loss was not finite
        self.tick, self.images_seen = time.perf_counter(), 0
        if main_process:
            start_log(out, start)

    def add(self, step: int, per_example: torch.Tensor, t: torch.Tensor, images: int) -> None:
        """One step's per-example loss (B,) at timesteps t (B,); `images` seen by all processes."""
        loss = per_example.mean()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)
        band = (t * 4 // self.T).clamp(max=3)
        self.band_sum.index_add_(0, band, per_example.detach())
        self.band_count.index_add_(0, band, torch.ones_like(per_example))
        self.images_seen += images

    def row(self, done: int, lr: float) -> tuple[float, float]:
        """The mean loss since the last row (over every process) and images/s; appends the row to log.csv (main
        process) and starts the next. The only step that reads values back from the device."""
        if self.world > 1:
            dist.all_reduce(self.band_sum)
            dist.all_reduce(self.band_count)
        sums, counts = self.band_sum.tolist(), self.band_count.tolist()
        mean = sum(sums) / max(1.0, sum(counts))
        rate = self.images_seen / (time.perf_counter() - self.tick)
        if self.main_process and np.isfinite(mean):
            append_log(self.out, [done, mean, lr, rate] + [s / c if c else float("nan") for s, c in zip(sums, counts)])
        self.band_sum.zero_()
        self.band_count.zero_()
        return mean, rate


def start_log(out: str, start: int) -> None:
    """Begin (or, on resume, continue) log.csv: rows past the checkpoint's step were never kept, so they go."""
    path = os.path.join(out, "log.csv")
    rows = []
    if start > 0 and os.path.isfile(path):
        with open(path) as f:
            rows = [line for line in f.read().splitlines()[1:] if line and int(line.split(",")[0]) <= start]
    elif start > 0:  # (removed by hand, or lost): the curve restarts here, said once
        print(f"note: {path} is missing: the loss of steps 1-{start} is lost, and log.csv and loss.png start at step "
              f"{start}", file=sys.stderr)
    write_atomically(path, lambda f: f.write("\n".join([",".join(LOG_COLUMNS)] + rows + [""]).encode()))


def append_log(out: str, row: list) -> None:
    with open(os.path.join(out, "log.csv"), "a") as f:
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")


def plot_loss(out: str) -> None:
    """loss.png: the loss over the steps, overall and per quarter of t (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    table = np.genfromtxt(os.path.join(out, "log.csv"), delimiter=",", names=True, ndmin=1)
    if table.size == 0:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in range(4):
        ax.plot(table["step"], table[f"loss_t{k}"], lw=1, label=f"t in quarter {k + 1}")
    ax.plot(table["step"], table["loss"], "k", lw=2, label="all t")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=os.path.basename(os.path.normpath(out)))
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomically(os.path.join(out, "loss.png"), lambda f: f.write(buffer.getvalue()))
