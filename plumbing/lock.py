"""One writer per run directory: --out/.lock (train.py holds it while it trains).

Not the method: the lock file, who holds it, and when a holder is gone (stale).
"""
import contextlib
import json
import os
import socket
import time

from plumbing.rundir import RunError, missing_folders, remove_empty


LOCK_FILE = ".lock"


@contextlib.contextmanager
def writer_lock(out: str):
    """Hold `out` for one writer: out/.lock holds this process's id and host while the block runs.

    A second writer is refused in one line naming the first; the lock of a
    process that no longer runs (on this host) is taken over. Creates `out`
    when missing and removes it again, if still empty, when the block fails.
    """
    made = missing_folders(out)
    try:
        os.makedirs(out, exist_ok=True)
        take_lock(os.path.join(out, LOCK_FILE), out)
    except OSError as error:
        remove_empty(made)
        raise RunError(f"--out {out}: cannot write there ({error.strerror})") from None
    except RunError:
        remove_empty(made)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out, LOCK_FILE))
        remove_empty(made)


def take_lock(path: str, out: str) -> None:
    """Create the lock file exclusively (O_EXCL: of two processes, exactly one succeeds)."""
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if not ours(holder, path):
                raise RunError(f"{out} holds {path}, which train.py did not write (not its process id and host); it "
                               "is left alone: move it away (if it is a lock of yours), or use another --out") from None
            if not stale(holder, path):
                raise RunError(f"{out} is in use by train.py, process {holder.get('pid', '?')} on "
                               f"{holder.get('host', '?')} (since {holder.get('since', '?')}); wait for it to finish, "
                               f"or use another --out (if that process is gone, delete {path})") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # the process that wrote it is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(dict(pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%d %H:%M:%S")), f)
        return
    raise RunError(f"{out} is in use by another train.py that just started; use another --out")


def read_lock(path: str) -> dict:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def ours(holder: dict, path: str) -> bool:
    """Is the lock file train.py's? Its JSON names a process and a host; or it is empty (made with O_EXCL, not yet
    written, or its writer killed in between). Anything else is someone else's file, never removed."""
    if isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
        return True
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return True  # gone meanwhile: nothing of anyone's to keep


def stale(holder: dict, path: str) -> bool:
    """Is the lock's process gone? (Same host and no such process id; unreadable and older than a minute.)"""
    pid = holder.get("pid")
    if not isinstance(pid, int):  # being written this very moment, or garbage
        try:
            return time.time() - os.path.getmtime(path) > 60
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # a process on another machine: it cannot be asked from here
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False
