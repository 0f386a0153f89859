"""What a store writes is private to its owner, whatever the umask.

Under ``umask 000`` SQLite made ``cache.db`` 0644, readable by every local user, and the
write-ahead log and its index with it; an odd umask (0277) takes bits the owner needs.
Folders the store makes are 0700, its files 0600; a folder the user made keeps its mode.
"""

from __future__ import annotations

import stat
from itertools import islice
from pathlib import Path

from support import NumberModel

from mnimi_adapters.core import Persistent
from mnimi_adapters.core.stores import DiskStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_cache_and_the_folders_made_for_it_are_private(tmp_path: Path, umask: int) -> None:
    location = tmp_path / "home" / "llm_cache" / "project"
    cache = Persistent(NumberModel(), location)
    list(islice(cache.sample("Choose a number.", batch=2), 2))
    # While the store is open, SQLite's write-ahead log and its index exist too.
    files = ["cache.db", "cache.db-wal", "cache.db-shm"]
    assert {name: oct(mode(location / name)) for name in files} == dict.fromkeys(files, "0o600")
    cache.close()
    for folder in (tmp_path / "home", location.parent, location):
        assert oct(mode(folder)) == "0o700", folder
    assert oct(mode(location / "cache.db")) == "0o600"


def test_a_folder_the_user_made_keeps_its_mode_and_the_database_is_private(
    tmp_path: Path, umask: int
) -> None:
    location = tmp_path / "shared"
    location.mkdir()
    location.chmod(0o750)  # shared with a group on purpose: not the store's to change
    with DiskStore(location) as store:
        assert store.length("k") == 0
    assert oct(mode(location)) == "0o750"
    assert oct(mode(location / "cache.db")) == "0o600"


def test_a_store_opened_on_an_existing_database_leaves_its_mode(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    DiskStore(location).close()
    (location / "cache.db").chmod(0o640)  # the owner's choice, after the store made it
    DiskStore(location).close()
    assert oct(mode(location / "cache.db")) == "0o640"
