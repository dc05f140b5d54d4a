"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a folder ``checkpoints/step_000120/`` holding the trainable weights (and EMA
weights) as safetensors, the optimizer and scheduler state (plain tensors and numbers, loaded
with ``weights_only=True``), the RNG state of every process and the data position. It is
assembled in a temporary folder and renamed into place, so a run killed while saving leaves the
previous checkpoint intact; only the newest ``keep_last`` are kept, and with ``keep_best`` the one
with the lowest validation loss (its step is in every later checkpoint's progress).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.errors import DataError, user_message
from ..files import apply_umask, no_space_left, tensor_bytes, write_fix, write_text_atomic

STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class Progress:
    """Where training stands: optimizer steps done and the data position for the next one."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already consumed
    windows_per_batch: Optional[int] = None  # windows in one of those micro-batches, over all processes
    best_step: Optional[int] = None  # the checkpoint with the lowest validation loss (keep_best)
    best_val_loss: Optional[float] = None
    train_windows: Optional[int] = None  # windows of the training episodes: a resume checks it reads the same data
    processes: Optional[int] = None  # under data.shard blocks the data order depends on them
    skipped_bad_frames: int = 0  # times skip_bad_rows left a training frame out so far (once per epoch per frame)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint written at ``step``."""
    return run_dir / "checkpoints" / f"step_{step:06d}"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=_step_of)


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors (safetensors-friendly)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([py_version, *py_state, -1 if py_gauss is None else 0], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if py_gauss is None else py_gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": torch.tensor([np_state[2], np_state[3], np_state[4]], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"].tolist()
    gauss = None if py[-1] == -1 else float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:-1]), gauss))
    pos, has_gauss, cached = state["numpy_rest"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def run_folder_deleted(run_dir: Path) -> DataError:
    """The run folder vanished under a training run (a user's rm -rf): nothing of it is left to resume."""
    return DataError("the run folder was deleted while the run trained", file=str(run_dir),
                     hint="start the run again")


class CheckpointWriter:
    """Writes checkpoints from every process: the main one writes the shared files, each process
    its own RNG state, then the main one renames the folder into place."""

    def __init__(self, run_dir: Path, keep_last: int, rank: int, barrier):
        self.root = run_dir / "checkpoints"
        self.keep_last, self.rank, self.barrier = keep_last, rank, barrier

    def save(
        self,
        progress: Progress,
        weights: dict[str, torch.Tensor],
        optimizer: dict,
        scheduler: dict,
        ema: Optional[dict[str, torch.Tensor]],
        config_text: str,
        scaler: Optional[dict] = None,
    ) -> Path:
        final = checkpoint_dir(self.root.parent, progress.step)
        tmp = final.with_name(f".{final.name}.tmp")
        if self.rank == 0 and not self.root.parent.is_dir():  # not made anew with this one checkpoint in it
            raise run_folder_deleted(self.root.parent)
        try:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.barrier()
            save_file(_contiguous(rng_state()), str(tmp / f"rng_rank{self.rank}.safetensors"))
            if self.rank == 0:
                save_file(_contiguous(weights), str(tmp / "weights.safetensors"))
                if ema is not None:
                    save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
                torch.save({"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}, tmp / "optimizer.pt")
                (tmp / "progress.json").write_text(json.dumps(asdict(progress)))
                (tmp / "config.yaml").write_text(config_text)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.rank == 0 and not self.root.parent.is_dir():  # deleted while this checkpoint was written
                raise run_folder_deleted(self.root.parent) from err
            full = no_space_left(self.root, tensor_bytes(weights, ema, optimizer))
            if full is None and not isinstance(err, (OSError, SafetensorError)):  # safetensors' own I/O errors
                raise
            newest = checkpoint_dirs(self.root.parent)
            kept = f"the newest complete checkpoint, {newest[-1].name}, is kept" if newest else "no checkpoint yet"
            # Rotation deletes old checkpoints after the new one is written: keep_last frees nothing now.
            fix = write_fix(err) if not full else \
                "free some space (an older checkpoint folder frees its size)" if newest else "free some space"
            raise DataError(f"checkpoint {final.name}: {full or getattr(err, 'strerror', None) or err}; {kept}",
                            file=str(self.root),
                            hint=f"{fix}, then continue with --resume {self.root.parent}" if newest else
                            f"{fix}, then start the run again") from err
        self.barrier()
        if self.rank == 0:
            apply_umask(tmp)
            for file in tmp.iterdir():  # on disk before the rename makes the folder a checkpoint
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._rotate(progress)
        self.barrier()
        return final

    def record_progress(self, progress: Progress) -> None:
        """Rewrite the progress of this step's checkpoint, saved before its validation found it the
        best (keep_best); atomically, from the main process."""
        if self.rank != 0:
            return
        folder = checkpoint_dir(self.root.parent, progress.step)
        try:
            write_text_atomic(folder / "progress.json", json.dumps(asdict(progress)))
        except OSError as err:
            raise DataError(f"checkpoint {folder.name}: its record of the best step cannot be written "
                            f"({err.strerror or err}); the checkpoint itself is complete", file=str(self.root),
                            hint=f"{write_fix(err)}, then finish the run with --resume {self.root.parent}") from err
        self._rotate(progress)

    def _rotate(self, progress: Progress) -> None:
        """Keep the newest keep_last checkpoints, and the best one."""
        best = None if progress.best_step is None else checkpoint_dir(self.root.parent, progress.best_step)
        for old in checkpoint_dirs(self.root.parent)[: -self.keep_last]:
            if old != best:
                shutil.rmtree(old, ignore_errors=True)


@dataclass
class LoadedWeights:
    progress: Progress
    weights: dict[str, torch.Tensor]
    ema: Optional[dict[str, torch.Tensor]]


@dataclass
class LoadedTrainingState(LoadedWeights):
    optimizer: dict
    scheduler: dict
    rng: Optional[dict[str, torch.Tensor]]
    scaler: Optional[dict] = None  # fp16's loss scale and its growth tracker


def _read_progress(checkpoint: Path) -> Progress:
    return Progress(**json.loads((checkpoint / "progress.json").read_text()))


def load_progress(checkpoint: Path) -> Progress:
    """A checkpoint's progress, or one line naming the checkpoint when it is missing or damaged."""
    _present(checkpoint, "progress.json")
    with _readable(checkpoint):
        return _read_progress(checkpoint)


def load_weights(checkpoint: Path) -> LoadedWeights:
    """What an export needs of a checkpoint folder: its progress, trained and EMA weights."""
    ema_file = checkpoint / "ema.safetensors"
    _present(checkpoint, "progress.json", "weights.safetensors")
    with _readable(checkpoint):
        return LoadedWeights(progress=_read_progress(checkpoint),
                             weights=load_file(str(checkpoint / "weights.safetensors")),
                             ema=load_file(str(ema_file)) if ema_file.exists() else None)


def load_training_state(checkpoint: Path, rank: int = 0) -> LoadedTrainingState:
    """Everything a resume needs of a checkpoint folder: weights, optimizer, scheduler, RNG."""
    rng_file = checkpoint / f"rng_rank{rank}.safetensors"
    loaded = load_weights(checkpoint)
    # Each process of the run wrote its random state; a process it did not have starts afresh.
    _present(checkpoint, "optimizer.pt", *([rng_file.name] if rank < (loaded.progress.processes or 1) else []))
    with _readable(checkpoint):
        states = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        return LoadedTrainingState(
            **vars(loaded),
            optimizer=states["optimizer"],
            scheduler=states["scheduler"],
            rng=load_file(str(rng_file)) if rng_file.exists() else None,
            scaler=states.get("scaler"),
        )


def _present(checkpoint: Path, *names: str) -> None:
    """Files a checkpoint must hold, checked by name first: safetensors reports a missing or
    unreadable file without naming it."""
    for name in names:
        if not (checkpoint / name).is_file():
            raise DataError(f"checkpoint {checkpoint.name} is incomplete: {name} is missing", file=str(checkpoint),
                            hint=damaged_hint(checkpoint))
    for file in [*(checkpoint / name for name in names), *checkpoint.glob("rng_rank*.safetensors")]:
        if not os.access(file, os.R_OK):
            raise _not_permitted(checkpoint, file)


def _not_permitted(checkpoint: Path, file) -> DataError:
    return DataError(f"checkpoint {checkpoint.name} cannot be read (Permission denied: {file})", file=str(checkpoint),
                     hint="give the user running this read permission")


@contextlib.contextmanager
def _readable(checkpoint: Path):
    """A checkpoint that cannot be read is one line naming it, and what to do depends on why: a
    file missing (a copy cut short) or damaged means the folder is lost, and --resume goes on from
    the one before it once it is deleted; a file without read permission is only to be fixed."""
    try:
        yield
    except PermissionError as err:
        raise _not_permitted(checkpoint, err.filename) from None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError,
            SafetensorError) as err:
        reason = "a file ends early: it is empty or cut short" if isinstance(err, EOFError) else \
            f"{type(err).__name__}: {user_message(err)}"
        raise DataError(f"checkpoint {checkpoint.name} cannot be read ({reason})",
                        file=str(checkpoint), hint=f"it is damaged: {damaged_hint(checkpoint)}") from None


def _step_of(checkpoint: Path) -> int:
    found = STEP_DIR.match(checkpoint.name)
    return int(found.group(1)) if found else -1


def damaged_hint(checkpoint: Path) -> str:
    """What to do about a checkpoint folder that is lost: where the run goes on from without it."""
    step = _step_of(checkpoint)
    earlier = [d for d in checkpoint_dirs(checkpoint.parent.parent) if _step_of(d) < step]
    go_on = (f"--resume continues from {earlier[-1].name}" if earlier
             else "start the run again without --resume (it has no checkpoint before this one)")
    return f"copy it again if it came from elsewhere; else delete the folder, and {go_on}"
