"""Sample sequence stores, one module each, all behind :class:`SequenceStore`.

=================  ==========================================================
``base``           the protocol, the listing and check results, what stores share
``memory``         :class:`MemoryStore`: a dict, the store of ``Repeatable``
``disk``           :class:`DiskStore`: a diskcache directory (SQLite, WAL)
``redis_store``    :class:`RedisStore`: a Redis namespace shared by many machines
``read_through``   :class:`ReadThroughStore`: a bounded in-memory copy of what was read
``check``          the integrity check both persistent stores share
``files``          files and folders made private (0600, 0700) whatever the umask
=================  ==========================================================

:func:`open_store` picks the store a location names. The modules import only
``base``, ``check`` and ``files`` (and this package only them), so there is no import
circle.
"""

from __future__ import annotations

import os

from .base import (
    FORMAT_KEY,
    FORMAT_VERSION,
    Appended,
    Batched,
    Check,
    SequenceStore,
    Summary,
    decode_sample,
    is_redis_url,
    printable_location,
)
from .disk import DiskStore
from .memory import MemoryStore
from .read_through import ReadThroughStore
from .redis_store import RedisStore, redis_location, shown_location, url_has_password


def open_store(
    location: str | os.PathLike[str],
    *,
    create: bool = True,
    read_only: bool = False,
    check_format: bool = True,
) -> DiskStore | RedisStore:
    """Open the store at ``location``: a directory path, or a Redis URL.

    Args:
        location: A cache directory, or a ``redis://``, ``rediss://`` or ``unix://`` URL
            (the scheme in any case).
        create: Create a missing store; ``False`` makes it an error.
        read_only: Never write to an existing store (a directory is opened read-only).
        check_format: Check the format marker at open (``mnimi verify`` checks it
            itself, to report a damaged marker as one problem among others).

    Raises:
        StoreError: The store cannot be opened, or is missing and ``create`` is false.

    Example:
        >>> open_store("~/.llm_cache")  # doctest: +SKIP
        >>> open_store("redis://127.0.0.1:6379/0?namespace=my-project")  # doctest: +SKIP
    """
    if is_redis_url(location):
        return RedisStore(str(location), create=create, check_format=check_format)
    return DiskStore(location, create=create, read_only=read_only, check_format=check_format)


__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "Appended",
    "Batched",
    "Check",
    "DiskStore",
    "MemoryStore",
    "ReadThroughStore",
    "RedisStore",
    "SequenceStore",
    "Summary",
    "decode_sample",
    "is_redis_url",
    "open_store",
    "printable_location",
    "redis_location",
    "shown_location",
    "url_has_password",
]
