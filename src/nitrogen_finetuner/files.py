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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, Optional

import torch

from .data.errors import DataError

_UMASK = os.umask(0)  # read once, at import, before any thread could create a file meanwhile
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def output_file(name: str | os.PathLike, example: str = "model.pt") -> Path:
    """The file a command is asked to write: a name, and not a folder's ("new_folder/" is one).
    ``example`` is a name of the kind the command writes, for the hint."""
    if not str(name).strip():
        raise DataError("the output file name is empty", hint=f"give the file to write, e.g. {example}")
    if str(name).endswith(("/", os.sep)):
        raise DataError("the name ends in a slash, so it names a folder, not a file", file=str(name),
                        hint=f"give the file to write, e.g. {example}")
    if Path(name).is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(name))
    return Path(name)


def check_output_folder(folder: Path, command: str) -> None:
    """The folder a command writes its files into can be made where it is asked for; checked
    before any work, though the folder is made only when there is something to write."""
    existing = next(place for place in (folder, *folder.parents) if place.exists())
    if existing == folder and not folder.is_dir():
        raise DataError(f"a file of that name is in the way: {command} writes its files into a folder",
                        file=str(folder), hint="give a folder's name with --output")
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(existing))


def refuse_existing(path: Path, force: bool) -> None:
    """An existing file is replaced only with ``--force``: never real weights by accident."""
    if path.exists() and not force:
        raise DataError("the file exists", file=str(path), hint="choose another name, or pass --force to replace it")


@contextmanager
def replaced_when_done(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, renamed onto it only when the block succeeds: a failed
    write leaves no partial file, no folder it made, and an existing file as it was. The temporary
    keeps ``path``'s suffix, as writers such as PyAV choose the format by the name. It is created at
    once, so a folder that cannot be written is reported, by its name, before any work."""
    new_folders = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:  # name the folder, not the temporary file's random name
        raise type(err)(err.errno, err.strerror, str(path.parent)) from None
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        apply_umask(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        for folder in new_folders:  # deepest first; a folder that holds something else stays
            with suppress(OSError):
                folder.rmdir()
        raise


def apply_umask(path: str | os.PathLike) -> None:
    """Set ``FILE_MODE`` on a file, or on every file under a folder."""
    path = Path(path)
    for file in (path.rglob("*") if path.is_dir() else [path]):
        if file.is_file():
            os.chmod(file, FILE_MODE)


def write_text_atomic(path: Path, text: str) -> None:
    """A small text file (a run's config.yaml, base.json, metrics) whole on disk or not at all: a
    run killed meanwhile leaves the old file as it was, never a truncated one."""
    with replaced_when_done(path) as partial, open(partial, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_fix(err: Exception) -> str:
    """What to do about a write into the run folder that failed with ``err`` (an OSError, or a
    writer's own error that holds no errno: safetensors')."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the run folder writable"
    return "fix what keeps the run folder from being written"


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
    """After a failed write of ``needed`` bytes into ``folder``: why, if the disk is full (the
    folder itself may be what could not be made)."""
    folder = next(p for p in (Path(folder), *Path(folder).absolute().parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return f"no space left (about {needed / 2**20:,.1f} MiB needed, {free / 2**20:,.1f} MiB free)"
