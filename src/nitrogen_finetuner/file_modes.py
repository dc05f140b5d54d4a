"""Give the files we write the permissions of any file the user creates: 0666 less the umask.

``tempfile.mkstemp`` (behind our atomic checkpoint writes) and safetensors create files that only
their owner can read. A model exported by a training container running as root would then be
unreadable on the host, and a run folder on a shared disk unreadable by the rest of the team.
"""

from __future__ import annotations

import os
from pathlib import Path

_UMASK = os.umask(0)  # read once, at import, before any thread could create a file meanwhile
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def apply_umask(path: str | os.PathLike) -> None:
    """Set ``FILE_MODE`` on a file, or on every file under a folder."""
    path = Path(path)
    for file in (path.rglob("*") if path.is_dir() else [path]):
        if file.is_file():
            os.chmod(file, FILE_MODE)
