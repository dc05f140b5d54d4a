"""One training at a time in a run folder: a second one would mix the two runs' checkpoints,
base and logs without a word."""

from __future__ import annotations

import errno
import fcntl
import secrets
import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast

from ..data.errors import DataError
from ..files import write_text_atomic


class RunFolderLock:
    """An exclusive lock on the run folder (``.lock``), taken by the main process, released when
    the training ends however it ends.

    A POSIX record lock (``lockf``), not ``flock``: forked DataLoader workers would share an
    ``flock`` and hold it on for seconds after the main process was killed, refusing the resume."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main, self.file, self.created = run_dir, is_main, None, False

    def __enter__(self) -> "RunFolderLock":
        if self.is_main:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(self.run_dir / ".lock", "w")
            try:
                fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                self.file.close()
                raise DataError("another training is writing to this run folder", file=str(self.run_dir),
                                hint="wait for it to end, or choose another --output") from None
        return self

    def __exit__(self, error_type, *exc) -> None:
        if self.file is None:
            return
        self.file.close()  # closing releases the lock
        if error_type is not None and self.created and self.run_dir.is_dir() and \
                [p.name for p in self.run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(self.run_dir)  # a run that could not start leaves no empty folder behind


def training_now(run_dir: Path) -> bool:
    """Whether a training holds the run folder's lock (a run from before the lock file never does).
    For other processes only: closing a file drops the POSIX locks its own process holds on it."""
    lock = Path(run_dir) / ".lock"
    if not lock.is_file():
        return False
    with open(lock, "a") as file:
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return True
            raise
    return False  # closing released the lock just taken


def check_shared(run_dir: Path, accelerator) -> None:
    """Every process writes into the run folder (its random state, with each checkpoint), so on
    several machines it must be one shared folder: a run whose processes do not all see the same
    folder stops now, not at its first checkpoint. They look for a file of a name new to every run
    (a folder of the same path left on each machine would pass a test for a file it holds, and a
    network file system may remember for a while that an old name was absent)."""
    if accelerator.num_processes == 1:
        return
    device, main = accelerator.device, accelerator.is_main_process
    token = broadcast(torch.tensor([secrets.randbits(62) if main else 0], device=device), from_process=0)
    marker = Path(run_dir) / f".shared-{int(token):x}"
    if main:
        write_text_atomic(marker, "")
    accelerator.wait_for_everyone()
    deadline = time.monotonic() + 5
    while not marker.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = int(accelerator.reduce(torch.tensor([float(marker.is_file())], device=device), "sum"))
    accelerator.wait_for_everyone()
    if main:
        marker.unlink(missing_ok=True)
    if seen < accelerator.num_processes:
        raise DataError(f"{accelerator.num_processes - seen} of {accelerator.num_processes} processes do not see "
                        "this run folder", file=str(run_dir),
                        hint="on several machines, --output must be a folder they all share (a network file system)")
