"""A cache directory whose ``cache.db`` is another program's SQLite database.

Opening it, in any mode and through any entry point, is refused with a StoreError that
says it was not written by mnimi_adapters, and nothing is written into it: diskcache
would add its tables, triggers and settings, and switch the file to WAL mode. A store
that is empty, half made or real opens as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from itertools import islice
from pathlib import Path

import pytest
from diskcache.core import DBNAME
from support import FailingModel, NumberModel, run_cli

from mnimi_adapters.core import (
    CorruptStoreError,
    DiskStore,
    Persistent,
    StoreError,
    UnsupportedStoreVersion,
)
from mnimi_adapters.core.stores import FORMAT_KEY

PROMPT = "Choose a number between 1 and 1000."


def make_database(path: Path, *statements: str, wal: bool = False) -> Path:
    """A directory whose ``cache.db`` another program made with ``statements``."""
    path.mkdir()
    with closing(sqlite3.connect(path / DBNAME)) as connection:
        if wal:
            connection.execute("PRAGMA journal_mode=wal")
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    return path


def tables(path: Path) -> list[str]:
    with closing(sqlite3.connect(f"{(path / DBNAME).as_uri()}?mode=ro", uri=True)) as connection:
        return sorted(name for (name,) in connection.execute("SELECT name FROM sqlite_master"))


def state(path: Path) -> tuple[str, list[str], list[str]]:
    """The database's bytes (hashed), its schema and the directory's files."""
    digest = hashlib.sha256((path / DBNAME).read_bytes()).hexdigest()
    return digest, tables(path), sorted(os.listdir(path))


FOREIGN = {
    "an app's table": ("CREATE TABLE app_users(name)", "INSERT INTO app_users VALUES ('alice')"),
    "an empty table of its own": ("CREATE TABLE foo(x)",),
    "diskcache's tables and one more": (
        "CREATE TABLE Settings(key TEXT NOT NULL UNIQUE, value)",
        "CREATE TABLE Cache(rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, value BLOB)",
        "CREATE TABLE notes(text)",
    ),
    "a settings table of its own": (
        "CREATE TABLE Settings(key TEXT NOT NULL UNIQUE, value)",
        "INSERT INTO Settings VALUES ('theme', 'dark')",
    ),
    "a Cache table of its own": (
        "CREATE TABLE Cache(url TEXT, body BLOB)",
        "INSERT INTO Cache VALUES ('https://example.org', x'00')",
    ),
    "a view": ("CREATE VIEW answer AS SELECT 42",),
}

OPENS: dict[str, Callable[[Path], object]] = {
    "create": lambda path: DiskStore(path),
    "existing only": lambda path: DiskStore(path, create=False),
    "read-only": lambda path: DiskStore(path, read_only=True),
    "read-only, created if missing": lambda path: DiskStore(path, create=True, read_only=True),
    "unchecked format (verify)": lambda path: DiskStore(path, create=False, check_format=False),
    "Persistent": lambda path: Persistent(FailingModel("gpt-4o", 1.0), path),
    "Persistent, replication": lambda path: Persistent(
        FailingModel("gpt-4o", 1.0), path, replication=True
    ),
}


@pytest.mark.parametrize("wal", [False, True], ids=["rollback journal", "WAL"])
@pytest.mark.parametrize("schema", list(FOREIGN))
@pytest.mark.parametrize("opening", list(OPENS))
def test_a_foreign_database_is_refused_and_left_unchanged(
    tmp_path: Path, opening: str, schema: str, wal: bool
) -> None:
    path = make_database(tmp_path / "app", *FOREIGN[schema], wal=wal)
    before = state(path)
    with pytest.raises(StoreError, match="not written by mnimi_adapters") as raised:
        OPENS[opening](path)
    assert str(path) in str(raised.value) and "not a cache" in str(raised.value)
    assert not isinstance(raised.value, CorruptStoreError)
    # Not a byte of the file, no table, no WAL file or index beside it.
    assert state(path) == before


@pytest.mark.parametrize(
    "command",
    [
        ("prune", "--max-size", "1MB"),
        ("prune", "--max-size", "1MB", "--dry-run"),
        ("stats",),
        ("show",),
        ("verify",),
    ],
)
def test_the_command_refuses_a_foreign_database_and_changes_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = make_database(tmp_path / "app", *FOREIGN["an app's table"])
    before = state(path)
    code, _, err = run_cli(command[0], path, *command[1:])
    assert code == 2 and "not written by mnimi_adapters" in err and "not a cache" in err, err
    assert state(path) == before
    with closing(sqlite3.connect(path / DBNAME)) as connection:
        assert connection.execute("SELECT name FROM app_users").fetchall() == [("alice",)]


def test_a_foreign_database_is_refused_before_any_request(tmp_path: Path) -> None:
    from mnimi_adapters import OpenAICompatible
    from mnimi_adapters.testing import SamplingServer

    path = make_database(tmp_path / "app", *FOREIGN["an app's table"])
    before = state(path)
    with SamplingServer(seed=0) as server:
        model = OpenAICompatible("mock", 1.0, api_base=server.url, api_key="x", alias="mock")
        with pytest.raises(StoreError, match="not written by mnimi_adapters"):
            next(Persistent(model, path).sample("hi"))
        assert server.chat_requests() == []
    assert state(path) == before


# -- what still opens -------------------------------------------------------------------


def replay(path: Path, count: int = 3) -> list[str]:
    model = Persistent(FailingModel("gpt-4o", 1.0), path, replication=True)
    try:
        return [s.draw_id for s in islice(model.samples(PROMPT), count)]
    finally:
        model.close()


def fill(path: Path, count: int = 3) -> list[str]:
    model = Persistent(NumberModel(), path)
    try:
        return [s.draw_id for s in islice(model.samples(PROMPT, batch=count), count)]
    finally:
        model.close()


def test_a_store_opens_in_every_mode(tmp_path: Path) -> None:
    drawn = fill(tmp_path / "filled")
    # cache.db alone, as shared: every page in the file, in WAL mode, no log beside it.
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    shutil.copyfile(tmp_path / "filled" / DBNAME, path / DBNAME)
    for opening in OPENS.values():
        opened = opening(path)
        opened.close()  # type: ignore[attr-defined]
    assert replay(path) == drawn
    # Open in another process's place (its log beside the file): read the same.
    with DiskStore(path) as holder:
        assert holder.length(next(iter(holder.keys()))) == 3
        assert replay(path) == drawn
        with DiskStore(path, read_only=True) as reader:
            assert reader.length(next(iter(reader.keys()))) == 3
    code, _, err = run_cli("verify", path)
    assert code == 0, err


def test_empty_and_half_made_stores_open_as_before(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / DBNAME).write_bytes(b"")  # a copy cut short: no cache, or a new one
    with pytest.raises(StoreError, match="no cache at"):
        DiskStore(empty, create=False)
    assert fill(empty) == replay(empty)
    # A process killed as diskcache made the store: its settings, no Cache table yet.
    half = make_database(
        tmp_path / "half",
        "CREATE TABLE Settings(key TEXT NOT NULL UNIQUE, value)",
        "INSERT INTO Settings VALUES ('statistics', 0), ('count', 0), ('sqlite_cache_size', 1024)",
    )
    assert fill(half) == replay(half)
    # A database with no table at all holds nothing to protect.
    bare = make_database(tmp_path / "bare", "PRAGMA user_version = 7")
    assert fill(bare) == replay(bare)


def test_damage_and_other_versions_keep_their_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DBNAME).write_bytes(b"not a database at all " * 500)
    for read_only in (False, True):
        with pytest.raises(CorruptStoreError):
            DiskStore(garbage, read_only=read_only)
    newer = tmp_path / "newer"
    fill(newer)
    with closing(sqlite3.connect(newer / DBNAME)) as connection:
        connection.execute("UPDATE Cache SET value = 99 WHERE key = ?", (FORMAT_KEY,))
        connection.commit()
    for read_only in (False, True):
        with pytest.raises(UnsupportedStoreVersion, match="format 99"):
            DiskStore(newer, read_only=read_only)
    # A diskcache another program filled: refused as before, with the same words.
    plain = tmp_path / "plain"
    import diskcache

    with diskcache.Cache(str(plain)) as cache:
        cache.set("x", "y")
    for read_only in (False, True):
        with pytest.raises(StoreError, match="holds a diskcache not written by mnimi_adapters"):
            DiskStore(plain, read_only=read_only)
