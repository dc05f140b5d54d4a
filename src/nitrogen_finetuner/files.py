"""What every file we write shares: a name checked before any work, ordinary permissions, and a
clear message when the disk is full.

``tempfile.mkstemp`` (behind our atomic checkpoint writes) and safetensors create files that only
their owner can read. A model exported by a training container running as root would then be
unreadable on the host, and a run folder on a shared disk unreadable by the rest of the team, so
our files get 0666 less the umask, as any file the user creates.

A full disk shows up as whatever the writer says (torch: "unexpected pos ..."), so after a failed
write we compare the free space with what the write needed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .data.errors import DataError

_UMASK = os.umask(0)  # read once, at import, before any thread could create a file meanwhile
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def output_file(name: str | os.PathLike) -> Path:
    """The file a command is asked to write: a name, and not a folder's ("new_folder/" is one)."""
    if not str(name).strip():
        raise DataError("the output file name is empty", hint="give the file to write, e.g. model.pt")
    if str(name).endswith(("/", os.sep)):
        raise DataError("the name ends in a slash, so it names a folder, not a file", file=str(name),
                        hint="give the file to write, e.g. model.pt")
    if Path(name).is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(name))
    return Path(name)


def refuse_existing(path: Path, force: bool) -> None:
    """An existing file is replaced only with ``--force``: never real weights by accident."""
    if path.exists() and not force:
        raise DataError("the file exists", file=str(path), hint="choose another name, or pass --force to replace it")


def apply_umask(path: str | os.PathLike) -> None:
    """Set ``FILE_MODE`` on a file, or on every file under a folder."""
    path = Path(path)
    for file in (path.rglob("*") if path.is_dir() else [path]):
        if file.is_file():
            os.chmod(file, FILE_MODE)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (a run's config.yaml, base.json, metrics) through a temporary file
    and a rename: a run killed meanwhile leaves the old file whole, never a truncated one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tensor_bytes(*states) -> int:
    """The bytes of every tensor in (nested) state dicts and lists: about what they take on disk."""
    def walk(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0
    return sum(walk(state) for state in states)


def no_space_left(folder: str | os.PathLike, needed: int) -> Optional[str]:
    """After a failed write of ``needed`` bytes into ``folder``: why, if the disk is full."""
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return f"no space left (about {needed / 2**20:,.1f} MiB needed, {free / 2**20:,.1f} MiB free)"
