"""Stop training cleanly on Ctrl-C or SIGTERM (``docker stop``, a cluster taking the machine back).

The first signal lets the running optimizer step finish; the trainer then writes a checkpoint at
that step boundary and stops, so ``--resume`` continues exactly. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .checkpoints import checkpoint_dirs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STDERR = 2


@dataclass
class TrainingStopped(Exception):
    """Raised by the trainer once the checkpoint of the step it stopped at is written."""

    run_dir: Path
    step: int
    signal_number: int
    processes: int = 1

    def __str__(self) -> str:
        return (f"stopped by {signal.Signals(self.signal_number).name} after step {self.step}; "
                f"its checkpoint is saved: continue with  {resume_command(self.run_dir, self.processes)}")


class AnotherProcessStopped(RuntimeError):
    """A collective failed because another process of the run ended (gloo's words for it: a
    worker killed, or stopped by its own error, which it prints): one line saying so and where the
    run goes on from, instead of a backend traceback."""

    def __init__(self, run_dir: Path, err: RuntimeError, processes: int):
        reason = re.sub(r"^\[[^\]]*\] ", "", str(err).splitlines()[0]).split(". ")[0]  # gloo's, without its source
        newest = checkpoint_dirs(run_dir)
        go_on = (f"the newest checkpoint is {newest[-1].name}: continue with  {resume_command(run_dir, processes)}"
                 if newest else "no checkpoint was saved: start the run again")
        super().__init__(f"another process of the run stopped, and this one lost it ({reason}; the other's error, "
                         f"if it printed one, says why); {go_on}")

    @staticmethod
    def caused(err: RuntimeError) -> bool:
        """Whether ``err`` is a collective's failure because another process ended."""
        import torch.distributed as dist  # noqa: PLC0415

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return False
        return any(sign in str(err) for sign in ("Connection closed by peer", "Connection reset by peer"))


def resume_command(run_dir: Path, processes: int, settings: str = "") -> str:
    """The command that resumes a run stopped with this many processes (any number may resume
    it; the same launch is the obvious one), with ``settings`` to change (``--set key=value``)."""
    resume = f"train --resume {shlex.quote(str(run_dir))}" + (f" {settings}" if settings else "")
    if processes == 1:
        return f"nitrogen-finetune {resume}"
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    machines = processes // per_machine
    return (f"torchrun --nproc_per_node {per_machine} -m nitrogen_finetuner.cli {resume}"
            + (f"  (on each of the {machines} machines, with their --nnodes, --node_rank and address "
               "options; or accelerate launch with the same processes)" if machines > 1
               else "  (or accelerate launch with the same processes)"))


def interrupted(run_dir: Path, processes: int) -> str:
    """What a second Ctrl-C, which stops at once, leaves: the newest checkpoint (written
    atomically, so whole) and the command that goes on from it."""
    saved = checkpoint_dirs(run_dir)
    if not saved:
        return "interrupted before the run's first checkpoint"
    return f"interrupted; the newest checkpoint is {saved[-1].name}: continue with  {resume_command(run_dir, processes)}"


class StopRequest:
    """Catches the stop signals while training runs (main thread only: Python delivers signals
    there) and remembers the first."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.signal_number: Optional[int] = None
        self.what_happens = "stopping after this step and saving a checkpoint"
        self._previous: dict[int, object] = {}

    def steps_done(self) -> None:
        """From now on a signal has no step to stop after: the run is writing its final outputs."""
        self.what_happens = "the training steps are done; finishing the final checkpoint and model"

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signal_number: int, _frame) -> None:
        if self.requested:
            if signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_number = signal_number
        if self.announce:
            # A raw write to stderr's descriptor: print() here could land inside the progress bar's
            # own write to sys.stderr, and Python refuses such a reentrant call with an error.
            again = "Ctrl-C again" if signal_number == signal.SIGINT else "Ctrl-C"
            notice = f"\n{signal.Signals(signal_number).name}: {self.what_happens} ({again} stops at once)\n"
            with contextlib.suppress(OSError):
                os.write(STDERR, notice.encode())

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
