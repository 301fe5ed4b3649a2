"""train.py --eval's evaluator, trained in a second process while the UMAP fit runs.

UMAP's fit with a fixed seed runs on one core (numba compiling its kernels, then its single-threaded layout), so
on a 2-core CPU the other core idles for 10-30 s. The classifier that sample.py --eval scores with
(the run's classifier.pt) needs only the training images and labels, so it can be trained there meanwhile: the
same function and arguments sample.py --eval would call (metrics.load_feature_network), on one thread. train.py
waits for it before the U-Net trains (two jobs on two cores would slow each other's threads), then moves it into
--out after the run is written; sample.py --eval then loads it instead of training it.

If it fails, nothing is lost: a one-line note says so, and sample.py --eval trains the evaluator as it always did.
"""
import multiprocessing
import os
import signal
import sys
import tempfile
import threading

import numpy as np

from plumbing.data import write_atomically

FROM_IMAGES = 2000  # below this a fit takes seconds, less than the second process's start (imports: seconds)
FILE = "classifier.pt"  # sample.py --eval's evaluator in the run directory


def train_into(path: str, images: np.ndarray, labels: np.ndarray, num_classes: int, run_id: str) -> None:
    """The second process: what metrics.load_feature_network trains and saves for sample.py --eval, on one thread."""
    import torch

    from plumbing import classifier

    torch.set_num_threads(1)
    try:
        net = classifier.train_classifier(images, labels, num_classes, device="cpu")
        classifier.save_classifier(net, path, run_id)
    except Exception as error:  # its reason, beside train.py's note (keep) of what happens instead
        print(f"note: the evaluator beside the UMAP fit: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(1)


class Beside:
    """The second process and the temporary folder it writes into (outside --out: nothing is written there before
    train.py's checks are done and the run is written). A context manager: leaving it without `keep` (an error,
    a Ctrl-C) ends the process and removes the folder. Without work to do (`start` said no) it does nothing."""

    def __init__(self, work: tuple | None):
        self.process = self.folder = None
        if work is not None:
            self.folder = tempfile.TemporaryDirectory(prefix="fpdiff-evaluator-")
            self.path = os.path.join(self.folder.name, FILE)
            self.process = multiprocessing.get_context("spawn").Process(target=train_into, args=(self.path, *work),
                                                                        daemon=True)
            main = threading.current_thread() is threading.main_thread()  # (only it may set a signal handler)
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # the child ignores Ctrl-C
            try:  # (a new Python keeps SIGINT ignored): train.py reports it, and __exit__ ends the child
                self.process.start()
            finally:
                if main:
                    signal.signal(signal.SIGINT, interrupt)

    def keep(self, out: str) -> None:
        """Wait for the evaluator; move it into --out (where sample.py --eval finds it), or say why not."""
        if self.process is None:
            return
        self.process.join()
        try:
            if self.process.exitcode != 0 or not os.path.exists(self.path):
                raise RuntimeError(f"exit code {self.process.exitcode}")
            with open(self.path, "rb") as f:  # (the temporary folder may be on another file system)
                trained = f.read()
            write_atomically(os.path.join(out, FILE), lambda f: f.write(trained))
        except Exception as error:  # nothing lost: the evaluation trains its own, as without this process
            print(f"note: the evaluator trained beside the UMAP fit failed ({' '.join(str(error).split())}); "
                  "sample.py --eval trains it after the U-Net", file=sys.stderr)

    def __enter__(self) -> "Beside":
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join()
        if self.folder is not None:
            self.folder.cleanup()


def start(eval_after: bool, fits_umap: bool, images: np.ndarray, labels: np.ndarray, num_classes: int, run_id: str,
          device_type: str, world: int) -> Beside:
    """The evaluator trained beside the fit when that saves time: --eval, a UMAP fit to come (a new run: a
    --resume has its space, and its evaluator if it was scored), on a CPU, one process, and enough images for the
    fit to outlast the second process's start; else a Beside that does nothing."""
    saves_time = (eval_after and fits_umap and device_type == "cpu" and world == 1 and len(images) >= FROM_IMAGES)
    return Beside((images, labels, num_classes, run_id) if saves_time else None)
