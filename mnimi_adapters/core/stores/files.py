"""Files and folders the library makes: private to their owner, whatever the umask.

A cache holds samples someone paid for, and a bundle or a run record stands for a
paper's run: no other local user may alter them, nor read a cache. ``open`` and
``mkdir`` take the process's umask off the mode they are given: a umask of 000 kept
the world bits of a plain ``open`` (files came out 0666), and an odd one (0277) can
take bits the owner needs. So each file and folder is created with its mode and given
that mode once more, explicitly, right after this call made it; one that was already
there (the user's own, or another process's) keeps the mode it has.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "create_private",
    "make_private_folder",
    "open_private",
    "write_private",
]

#: Every file the library writes: read and written by its owner only.
FILE_MODE = 0o600
#: Every folder the library makes.
DIRECTORY_MODE = 0o700


def create_private(path: Path, flags: int = os.O_WRONLY) -> int:
    """Create ``path`` (mode 0600) and open it with ``flags``; return the descriptor.

    ``O_EXCL``: a file, or a link, already at ``path`` is never opened nor followed.

    Raises:
        FileExistsError: Something is at ``path`` already.
        OSError: The file cannot be created.
    """
    descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def open_private(path: Path, flags: int) -> int:
    """Open ``path`` with ``flags``, creating it (mode 0600) if it does not exist.

    A file already there is opened as it is: its mode is its owner's choice.

    Raises:
        OSError: The file can be neither created nor opened.
    """
    try:
        return create_private(path, flags)
    except FileExistsError:
        return os.open(path, flags | os.O_CLOEXEC)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file ``path`` (mode 0600).

    Raises:
        FileExistsError: Something is at ``path`` already (it is left as it is).
        OSError: The file cannot be created or written (a partial one is removed).
    """
    descriptor = create_private(path)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
    except OSError:
        path.unlink(missing_ok=True)
        raise


def make_private_folder(path: Path) -> bool:
    """Make the folder ``path`` (mode 0700); return whether this call made it.

    A folder already there keeps its mode: it may be the user's own, shared on purpose.

    Raises:
        OSError: The folder cannot be made (and is not there).
    """
    try:
        path.mkdir(mode=DIRECTORY_MODE)
    except FileExistsError:
        if path.is_dir():
            return False
        raise
    os.chmod(path, DIRECTORY_MODE)
    return True
