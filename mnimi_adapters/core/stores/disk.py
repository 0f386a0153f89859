"""Sequences in a diskcache directory (SQLite in WAL mode), shared by threads and processes.

The layout, every value a JSON string or an int, never a pickle::

    __mnimi_format__      format version (int)
    s:<key>:<i>           sample i of the sequence (JSON)
    n:<key>               sequence length (int)
    d:<key>:<draw id>     index of that draw (int): de-duplication in O(1)
    m:<key>               the request and running totals (JSON), for listings

Rows are read with plain SQL on diskcache's table (an index lookup, or one
range scan of a prefix for listings). An append writes its rows with plain SQL
too, in one transaction of a few statements: diskcache's ``set`` costs several
statements per row, and a cache miss pays for every one. A store that cannot be
written (read-only media, a full disk) opens read-only, so a replay or a
replication run still reads it.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import reprlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import DBNAME, DEFAULT_SETTINGS, METADATA, MODE_RAW

from ..errors import (
    CorruptStoreError,
    StoreError,
    StoreFull,
    StoreReadOnly,
    UnsupportedStoreVersion,
)
from ..sample import Sample
from .base import (
    FORMAT_KEY,
    FORMAT_VERSION,
    Appended,
    Batched,
    Check,
    ModelTotals,
    SequenceStore,
    Summary,
    Totals,
    UsageLog,
    anchored,
    check_directory_location,
    decode_record,
    decode_sample,
    dump_json,
    recency,
)
from .check import (
    PICKLED,
    UNREADABLE,
    Verifier,
    decode_row,
    is_int,
    kind,
    without_cycle_collection,
)
from .files import create_private, make_private_folder

_ROW = "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
# Several rows by name, in one statement (``{}``: a placeholder per name).
_ROWS = "SELECT key, mode, filename, value FROM Cache WHERE key IN ({}) AND raw = 1"
# A row as diskcache's ``set`` writes an inline value (size 0: no file), without its
# existence check or its culling, which an append needs neither of.
_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, "
    f"size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, {MODE_RAW}, NULL, ?)"
)
_UPSERT = (
    f"{_INSERT} ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, "
    "expire_time = NULL, access_time = excluded.access_time, tag = NULL, size = 0, "
    f"mode = {MODE_RAW}, filename = NULL, value = excluded.value"
)
# The key range of one prefix: SQLite plans it as one range scan of its (key, raw) index.
_SCAN = (
    "SELECT key, mode, filename, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1 "
    "ORDER BY key"
)

# Only sound records are touched (inline text, valid JSON), and never moved back in time.
_TOUCH = (
    "UPDATE Cache SET value = json_set(value, '$.used', ?) "
    f"WHERE key = ? AND raw = 1 AND filename IS NULL AND mode = {MODE_RAW} AND "
    "CASE WHEN json_valid(value) THEN json_extract(value, '$.used') END < ?"
)
# The same for a whole batch, given as one JSON object (key -> time), in one statement:
# sqlite3 lets go of the GIL for each statement it runs, and a batch written row by row
# then waits for the reading thread at every row, falling behind a fast replay.
# UPDATE ... FROM needs SQLite 3.33; an older one writes row by row.
_TOUCH_BATCH = (
    "UPDATE Cache SET value = json_set(Cache.value, '$.used', uses.value) "
    "FROM json_each(?) AS uses "
    "WHERE Cache.key = 'm:' || uses.key AND Cache.raw = 1 AND Cache.filename IS NULL "
    f"AND Cache.mode = {MODE_RAW} AND CASE WHEN json_valid(Cache.value) "
    "THEN json_extract(Cache.value, '$.used') END < uses.value"
)
_BATCH_UPDATES = sqlite3.sqlite_version_info >= (3, 33)

# -- listings in SQL ----------------------------------------------------------
# A listing of a million keys cannot decode a million records in Python (about
# 20 µs each), and looking rows up by name costs about 2 µs each at that size:
# the queries below read each prefix in one pass over the table (NOT INDEXED:
# in the table's order, several times faster than the index's order when every
# row is read) or probe the (key, raw) index alone, and SQLite sums the records.
# A row they cannot vouch for is decoded in Python, as the listing of a few
# keys always was, so damage is reported exactly as before. SQLite 3.40 parses
# a record once for all the JSON calls on it, so each field costs one call.

_RANGE = "key >= '{0}:' AND key < '{0};' AND raw = 1"
#: An inline text row (anything else is damage that Python names).
_TEXT = f"filename IS NULL AND mode = {MODE_RAW} AND typeof(value) = 'text'"
#: A length row as :func:`_summary` takes it: an int >= 0, inline.
_SOUND_LENGTH = (
    f"filename IS NULL AND mode = {MODE_RAW} AND typeof(value) = 'integer' AND value >= 0"
)
#: Sound length rows counted and summed; the keys of the others, as a JSON list.
_LENGTHS = (
    f"SELECT count(*) FILTER (WHERE sound), sum(value) FILTER (WHERE sound), "
    "json_group_array(substr(key, 3)) FILTER (WHERE NOT sound) "
    f"FROM (SELECT key, value, {_SOUND_LENGTH} AS sound "
    f"FROM Cache NOT INDEXED WHERE {_RANGE.format('n')} LIMIT -1)"
)
#: The keys of ``{0}:`` rows without a ``{1}:`` row: probes of the index only.
_ALONE = (
    f"SELECT substr(key, 3) FROM Cache AS row WHERE {_RANGE} AND NOT EXISTS "
    "(SELECT 1 FROM Cache WHERE key = '{1}:' || substr(row.key, 3) AND raw = 1)"
)
_COUNT = f"SELECT count(*) FROM Cache WHERE {_RANGE.format('m')}"


def _number(name: str) -> str:
    """A record's total as :meth:`Summary.number` reads it: a JSON number (not a bool), else 0."""
    return (
        f"CASE WHEN json_type(value, '$.{name}') IN ('integer', 'real') "
        f"THEN json_extract(value, '$.{name}') ELSE 0 END"
    )


#: Records as inline text holding a JSON object (``ok``), with the columns ``{}``.
#: ``json_valid`` first: from SQLite 3.42 on, ``json_type`` also reads JSON5 (comments,
#: trailing commas), which Python's ``json`` refuses, and before it raises on bad JSON.
_FIELDS = (
    "SELECT key, ok, {} FROM (SELECT key, value, "
    f"CASE WHEN {_TEXT} AND json_valid(value) THEN json_type(value) = 'object' ELSE 0 END "
    "AS ok "
    f"FROM Cache NOT INDEXED WHERE {_RANGE.format('m')}{{}} LIMIT -1) LIMIT -1"
)
#: Records SQLite reads as Python does (an int length, a text or no model): their
#: totals summed, per model if several (``{}``: GROUP BY model, or nothing), the
#: others' keys as a JSON list; without the keys in ``?`` (a JSON list). The model
#: comes as bytes (see :func:`_model_name`).
_RECORDS = (
    "SELECT count(DISTINCT model) FILTER (WHERE sure), "
    "CAST(min(model) FILTER (WHERE sure) AS BLOB), "
    "count(*) FILTER (WHERE sure), sum(length) FILTER (WHERE sure), "
    "sum(bytes) FILTER (WHERE sure), sum(prompt_tokens) FILTER (WHERE sure), "
    "sum(completion_tokens) FILTER (WHERE sure), total(cost) FILTER (WHERE sure), "
    "json_group_array(substr(key, 3)) FILTER (WHERE NOT sure) FROM ("
    + _FIELDS.format(
        "CASE WHEN ok THEN json_type(value, '$.length') = 'integer' "
        "AND coalesce(json_type(value, '$.request.model'), 'null') IN ('null', 'text') "
        "ELSE 0 END AS sure, "
        "CASE WHEN ok THEN coalesce(json_extract(value, '$.request.model'), '?') END AS model, "
        "CASE WHEN ok THEN json_extract(value, '$.length') END AS length, "
        # Truncated per key, as Python's int() of each key's figure.
        + ", ".join(
            f"CASE WHEN ok THEN CAST({_number(name)} AS INTEGER) END AS {name}"
            for name in ("bytes", "prompt_tokens", "completion_tokens")
        )
        + f", CASE WHEN ok THEN {_number('cost')} END AS cost",
        " AND substr(key, 3) NOT IN (SELECT value FROM json_each(?))",
    )
    + "){}"
)
#: The keys of the ``?`` most recently used records, in :func:`recency`'s order: a
#: record that is not a JSON object counts as never used, as Python reads it (a path
#: into anything but an object is NULL, so no ``json_type(value)`` parse is needed).
_RECENT = (
    "SELECT substr(key, 3) FROM (SELECT key, "
    f"CASE WHEN {_TEXT} AND json_valid(value) THEN {_number('used')} ELSE 0 END AS used "
    f"FROM Cache NOT INDEXED WHERE {_RANGE.format('m')} LIMIT -1) "
    "ORDER BY -used, substr(key, 3) LIMIT ?"
)

#: Milliseconds a usage write waits for another connection's write (an append, another
#: process's anything) before the batch is dropped. It waits on the writer's own thread,
#: never on a read's; only :meth:`DiskStore.close` may wait for it.
_USAGE_WAIT_MS = 100
#: Uses (keys) waiting for the writer, at most: if it cannot keep up at all (a starved
#: CPU), the oldest batches are dropped, so memory stays bounded (a few MB).
_USAGE_BACKLOG = 32 * 1024
#: Seconds ``close`` waits for the usage writer to finish the batches waiting, with room.
_USAGE_JOIN_SECONDS = 5.0
#: diskcache's own wait for a busy database, restored after a usage write.
_BUSY_WAIT_MS = 60_000


class _JSONOnlyDisk(diskcache.Disk):
    """A diskcache ``Disk`` that keeps str and int inline, never unpickles, never touches files.

    diskcache pickles anything that is not str, bytes, int or float, unpickles
    whatever a database row says is a pickle, and keeps large values in files
    whose names the rows hold, deleting the file when its row is replaced or
    deleted. A cache directory is shared between people for replication, so
    opening one must never be able to run code, nor read or delete a file: a
    row could name any path (``/home/...``, ``../../x``). Every value of the
    store is inline, so pickled rows and rows that name a file are damage.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"store keys are str, got {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise CorruptStoreError("the store holds a pickled key; refusing to load it")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        # Inline whatever the size (diskcache would spill long text to a file), so
        # an append is one transaction and a killed process never leaves half a value.
        if not read and (type(value) is str or (type(value) is int and -(2**63) <= value < 2**63)):
            return 0, MODE_RAW, None, value
        raise TypeError(f"store values are str or int, got {type(value).__name__}")

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        return _inline(decode_row(mode, filename, value))

    def remove(self, file_path: str) -> None:
        """Delete nothing: diskcache calls this with the file a replaced or deleted row names.

        diskcache joins that name to the directory, so an absolute or ``../``
        name reaches any file of the user, and then removes its emptied parent
        folders. The store never writes a file, so there is never one of its own
        to remove.
        """


def _inline(value: Any) -> Any:
    """A decoded row value, or the refusal of one that is a pickle or names a file.

    Raises:
        CorruptStoreError: The row is pickled or names a file.
    """
    if value is PICKLED:
        raise CorruptStoreError("the store holds a pickled value; refusing to load it")
    if not isinstance(value, str | int | bytes | float):
        raise CorruptStoreError(f"the row's value is {kind(value)}")
    return value


def _joined(parts: Sequence[Sequence[Sample]]) -> Sequence[Sample]:
    return parts[0] if len(parts) == 1 else [sample for part in parts for sample in part]


def _split(added: Appended, parts: Sequence[Sequence[Sample]]) -> list[Appended]:
    """What one append of ``parts`` joined added, as the appends of each part would have.

    ``added`` keeps the order of the samples given, minus the draws already held, so
    each part's share is contiguous and follows the shares before it.
    """
    shares: list[Appended] = []
    taken = 0
    for part in parts:
        share: list[Sample] = []
        for sample in part:
            if taken < len(added) and added[taken] is sample:
                share.append(sample)
                taken += 1
        start = None if added.start is None else added.start + taken - len(share)
        shares.append(Appended(share, start))
    return shares


def is_store_directory(path: Path) -> bool:
    """Whether the directory ``path`` holds a store's database."""
    return (path / DBNAME).is_file()


def _holds_database(path: Path) -> bool:
    """Whether the directory ``path`` holds a database with anything in it.

    An empty database file (a copy cut short, a process killed as it made the store)
    is taken as no file at all: a read says there is no cache, rather than what SQLite
    says of a missing table, and a write makes a new store in it. Its write-ahead log
    may hold every page yet, so it counts too.
    """

    def size(file: Path) -> int:
        try:
            return file.stat().st_size if file.is_file() else 0
        except OSError:
            return 0

    database = path / DBNAME
    return size(database) > 0 or (_is_file(database) and size(path / f"{DBNAME}-wal") > 0)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, ``False`` where it may not be looked at (Python 3.11 raises)."""
    try:
        return path.is_file()
    except OSError:
        return False


#: The files SQLite opens in a cache directory: the database, its write-ahead log and
#: the log's shared-memory index.
_DATABASE_FILES = (DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm")

#: The settings a store opens with where they are not diskcache's defaults, all applied
#: by diskcache as it opens it (see :func:`_odd_settings`).
_OPENED_WITH = {
    # Kept in the directory's settings, so a plain diskcache.Cache opened on it (a
    # test, a script) writes values inline too.
    "disk_min_file_size": 2**30,
    # A bounded page cache and no memory map: replaying millions of keys must not grow
    # the process by the database's size (the OS caches the file anyway).
    "sqlite_cache_size": 2**10,
    "sqlite_mmap_size": 0,
}
#: The columns of diskcache's two tables, by table (SQLite's names are case-blind).
_DISKCACHE_COLUMNS = {
    "settings": frozenset({"key", "value"}),
    "cache": frozenset(
        {
            "rowid",
            "key",
            "raw",
            "store_time",
            "expire_time",
            "access_time",
            "access_count",
            "tag",
            "size",
            "mode",
            "filename",
            "value",
        }
    ),
}
#: The tables and views of a database, but SQLite's own.
_TABLES = (
    "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
#: The schema objects but ``Settings`` (checked by its columns) as diskcache's
#: ``Cache.__init__`` creates them, as SQLite keeps them (``type, name, sql``): the
#: ``Cache`` table, its indexes (those of each eviction policy, and the tag index a
#: plain ``diskcache.Cache`` may have made, which opening a store drops) and the
#: triggers that count its rows. diskcache creates each ``IF NOT EXISTS``, so one of
#: these names holding other SQL would stay as it is.
_DISKCACHE_OBJECTS = frozenset(
    {
        (
            "table",
            "Cache",
            "CREATE TABLE Cache ( rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, "
            "store_time REAL, expire_time REAL, access_time REAL, access_count INTEGER "
            "DEFAULT 0, tag BLOB, size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, "
            "filename TEXT, value BLOB)",
        ),
        ("index", "sqlite_autoindex_Settings_1", None),  # Settings' UNIQUE key
        ("index", "Cache_key_raw", "CREATE UNIQUE INDEX Cache_key_raw ON Cache(key, raw)"),
        ("index", "Cache_expire_time", "CREATE INDEX Cache_expire_time ON Cache (expire_time)"),
        ("index", "Cache_store_time", "CREATE INDEX Cache_store_time ON Cache (store_time)"),
        ("index", "Cache_access_time", "CREATE INDEX Cache_access_time ON Cache (access_time)"),
        (
            "index",
            "Cache_access_count",
            "CREATE INDEX Cache_access_count ON Cache (access_count)",
        ),
        ("index", "Cache_tag_rowid", "CREATE INDEX Cache_tag_rowid ON Cache(tag, rowid)"),
        *(
            (
                "trigger",
                f"Settings_{name}",
                f"CREATE TRIGGER Settings_{name} AFTER {event} ON Cache FOR EACH ROW BEGIN "
                f'UPDATE Settings SET value = {change} WHERE key = "{setting}"; END',
            )
            for name, event, change, setting in (
                ("count_insert", "INSERT", "value + 1", "count"),
                ("count_delete", "DELETE", "value - 1", "count"),
                ("size_insert", "INSERT", "value + NEW.size", "size"),
                ("size_update", "UPDATE", "value + NEW.size - OLD.size", "size"),
                ("size_delete", "DELETE", "value - OLD.size", "size"),
            )
        ),
    }
)
#: The schema objects to compare with diskcache's: all but tables and views (checked by
#: their names and columns), and the ``Cache`` table, which holds the samples.
_OBJECTS = (
    "SELECT type, name, sql FROM sqlite_master "
    "WHERE type NOT IN ('table', 'view') OR (type = 'table' AND name = 'Cache' COLLATE NOCASE)"
)
#: Whether the database has a ``Settings`` table (a store being made may have none yet).
_SETTINGS_TABLE = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Settings' COLLATE NOCASE"
)
#: What an alteration of a store's database means, for verify's report of one.
_ALTERED = (
    "so every command but verify refuses to open it (it could change the samples "
    "stored, or how they are written): ask for a clean copy, or restore the directory "
    "from one"
)
#: SQLite's file header, and where it says the journal is a write-ahead log (2).
_SQLITE_HEADER = b"SQLite format 3\x00"
_WAL_VERSION_AT = 18


def _foreign_schema(path: Path, altered: bool) -> str | None:
    """What makes the database of the directory ``path`` another program's, or ``None``.

    A store's database holds diskcache's tables ``Settings`` and ``Cache`` and nothing
    else (a store being made, or a process killed as it made one, has only some of
    them, or none). Any other table or view, or one of those two names with other
    columns (or, without a ``Cache`` table, settings diskcache never writes), is
    another program's data: diskcache would add its tables, triggers and settings to
    it, and set it to WAL mode. With ``altered``, so is what :func:`_alterations`
    finds. A few queries of the schema per open: reads never pay.

    Read without writing anything: a read-only connection, or, for a WAL database
    with no log beside it (every page in the file), an immutable one, since a
    read-only connection would leave an empty log and index behind.

    Raises:
        sqlite3.Error, OSError: The database cannot be read (damaged, not a database).
    """
    database = path / DBNAME
    with open(database, "rb") as file:
        header = file.read(_WAL_VERSION_AT + 1)
    settled = (
        header.startswith(_SQLITE_HEADER)
        and header[_WAL_VERSION_AT:] == b"\x02"
        and not _is_file(path / f"{DBNAME}-wal")
    )
    try:
        connection = _connect_readonly(database, _TABLES, immutable=settled)
        return _foreign_in(connection, altered)
    except sqlite3.DatabaseError:
        if not settled:
            raise
        # Another process opened it meanwhile and wrote under the immutable read.
        return _foreign_in(_connect_readonly(database, _TABLES), altered)


def _foreign_in(connection: sqlite3.Connection, altered: bool) -> str | None:
    """:func:`_foreign_schema` on ``connection``, which it closes."""
    with closing(connection):
        foreign = _foreign_tables(connection)
        if foreign is None and altered:
            foreign = next(iter(_alterations(connection)), None)
        return foreign


def _alterations(connection: sqlite3.Connection) -> list[str]:
    """What the database of a store holds that diskcache never creates, and settings
    that neither diskcache nor the store writes (see :func:`_odd_settings`).

    diskcache creates its indexes and triggers ``IF NOT EXISTS``: a shared cache may
    carry a trigger (under any name, one of diskcache's too) that rewrites every sample
    stored, so each object is compared with diskcache's by its exact SQL.
    """
    objects = [
        f"its {sort} {name!r} is not diskcache's"
        for sort, name, sql in connection.execute(_OBJECTS)
        if (sort, name, sql) not in _DISKCACHE_OBJECTS
    ]
    return objects + _odd_settings(connection)


def _foreign_tables(connection: sqlite3.Connection) -> str | None:
    """What makes the tables and views of ``connection`` another program's, or ``None``."""
    found = {name.lower(): (name, sort) for name, sort in connection.execute(_TABLES)}
    others = sorted(name for key, (name, _) in found.items() if key not in _DISKCACHE_COLUMNS)
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        return f"it holds table{'s' if len(others) > 1 else ''} {listed}"
    for key, (name, sort) in sorted(found.items()):
        columns = {
            str(column).lower()
            for (column,) in connection.execute("SELECT name FROM pragma_table_info(?)", (name,))
        }
        expected = _DISKCACHE_COLUMNS[key]
        if (
            sort != "table"
            or not expected <= columns
            or (key == "settings" and columns != expected)
        ):
            return f"its {sort} {name} is not diskcache's"
    if "settings" in found and "cache" not in found:
        return next(iter(_odd_settings(connection)), None)
    return None


def _odd_settings(connection: sqlite3.Connection) -> list[str]:
    """The rows of the ``Settings`` table (if any) that neither diskcache nor the store writes.

    diskcache applies the settings it finds there as it opens a store, but those it is
    given: a ``sqlite_*`` one as a pragma, a ``disk_*`` one as an argument of the Disk,
    any other as an attribute of the cache. A shared cache's could so take the store out
    of WAL mode (its appends no longer atomic), lock it, or break its opening. Each
    pragma and Disk setting is the value the store opens with, or diskcache's default
    (an older store's, made before the store set it).
    """
    if connection.execute(_SETTINGS_TABLE).fetchone() is None:
        return []
    problems = []
    for name, value in connection.execute("SELECT key, value FROM Settings"):
        if name not in DEFAULT_SETTINGS and name not in METADATA:
            problems.append(f"its setting {reprlib.repr(name)} is not diskcache's")
        elif name.startswith(("sqlite_", "disk_")) and value not in (
            DEFAULT_SETTINGS[name],
            _OPENED_WITH.get(name, DEFAULT_SETTINGS[name]),
        ):
            problems.append(
                f"its setting {name} is {reprlib.repr(value)}, which neither diskcache nor "
                "mnimi_adapters writes (diskcache would apply it as it opens the store)"
            )
    return problems


def _refuse_links(path: Path) -> None:
    """Refuse a cache directory whose database files are symbolic links.

    SQLite follows them: a ``cache.db`` linked to another cache's would read that
    cache, and ``mnimi prune`` would delete its samples; a link named ``cache.db-wal``
    would have SQLite write into (and truncate) whatever file it names. The store reads,
    writes and deletes only files inside its directory; the directory itself, and the
    folders on the way to it, may be links.

    Raises:
        StoreError: One of the files is a symbolic link (dangling or not).
    """
    for name in _DATABASE_FILES:
        file = path / name
        if not file.is_symlink():
            continue
        if name == DBNAME:
            fix = (
                "open the cache directory it points into instead, or replace the link "
                "with a copy of the file"
            )
        else:
            fix = "delete the link (SQLite makes its own file) while no process uses the cache"
        raise StoreError(
            f"{file} is a symbolic link (to {os.readlink(file)}), and a cache never reads "
            f"or changes a file outside its directory: {fix}"
        )


def _blocking_folder(path: Path) -> Path:
    """The first folder on the way to ``path`` (or ``path`` itself) this user may not enter."""
    for folder in [*reversed(path.parents), path]:
        if not os.access(folder, os.X_OK):
            return folder
    return path


def _unreachable(path: Path, error: OSError) -> StoreError:
    """The error for a cache directory the file system refuses to look into.

    A folder without search permission (mode 000, another user's) makes every ``stat``
    below it fail with EACCES, which Python 3.11's ``Path.exists()`` and ``is_file()``
    raise rather than answer: such a failure names the folder to open up.
    """
    reason = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM):
        blocked = _blocking_folder(path)
        return StoreError(
            f"cache directory {path} cannot be opened: this user may not enter {blocked} "
            f"({reason}); give it access (`chmod u+rwx {blocked}` if it is yours, or ask "
            "its owner), or choose another directory"
        )
    where = f" at {error.filename}" if error.filename else ""
    return StoreError(
        f"cache directory {path} cannot be opened ({reason}{where}): check the path, or "
        "choose another directory"
    )


def check_reachable(path: Path) -> None:
    """Refuse a cache directory this user may not look into, or whose database it may
    not read, with a message that names what to open up.

    A missing ``path`` passes: whether that is an error is the caller's to say.

    Raises:
        StoreError: ``path`` (or a folder on the way) cannot be entered, or its database
            cannot be read.
    """
    database = path / DBNAME
    try:
        database.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise _unreachable(path, error) from None
    if not database.is_symlink() and not os.access(database, os.R_OK):
        # SQLite would say only "unable to open database file".
        raise StoreError(
            f"cache directory {path} cannot be opened: this user may not read {database}; "
            f"give it access (`chmod u+rw {database}` if it is yours, or ask its owner), or "
            "choose another directory"
        )


def _private_directory(path: Path, create: bool) -> bool:
    """Create ``path`` (mode 0700) if asked, check it is a directory; return if it is writable.

    Raises:
        StoreError: ``path`` is not a directory, its database files are links (see
            :func:`_refuse_links`), it is a replication bundle, it holds no cache (and
            ``create`` is false), it cannot be created, or this user may not look into it
            (see :func:`check_reachable`).
    """
    check_reachable(path)
    try:
        return _checked_directory(path, create)
    except OSError as error:  # a folder made unreachable since: a StoreError all the same
        raise _unreachable(path, error) from None


def _checked_directory(path: Path, create: bool) -> bool:
    """:func:`_private_directory`'s checks, on a path it may look into."""
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"cache path {path} exists and is not a directory, so is not a cache directory"
        )
    _refuse_links(path)
    holds = path.exists() and _holds_database(path)
    if path.exists() and not holds:
        # Imported here: the bundle module builds on the stores.
        from ..bundle import STORE, is_bundle

        if is_bundle(path):  # the directory a colleague was sent, not the cache in it
            if create:  # a cache made inside it would leave its manifest behind
                raise StoreError(
                    f"{path} is a replication bundle, not a cache: its cache is "
                    f"{path / STORE} (replay it with replication=True; copy it to extend it)"
                )
            raise StoreError(
                f"no cache at {path}: it is a replication bundle, whose cache is {path / STORE}"
            )
    if not create:
        if not holds:
            empty = is_store_directory(path)
            why = f": its {DBNAME} is empty (a copy cut short?); copy it again" if empty else ""
            raise StoreError(f"no cache at {path}{why}")
    elif not path.exists():
        # The folders it makes on the way are private too (``~/.llm_cache`` for
        # ``~/.llm_cache/project``): mkdir(parents=True) gives them the umask's mode.
        missing = [path, *(parent for parent in path.parents if not parent.exists())]
        try:
            for folder in reversed(missing):
                make_private_folder(folder)
        except OSError as error:
            raise StoreError(
                f"cannot create cache directory {path}: {error.strerror} (at {error.filename}); "
                "choose a directory this user may write to"
            ) from None
    return os.access(path, os.W_OK | os.X_OK)


def _store_error(error: BaseException, location: Path, doing: str) -> StoreError:
    """A SQLite or file-system failure as the ``StoreError`` that says what to do."""
    text = str(error) or type(error).__name__
    name = getattr(error, "sqlite_errorname", "")
    number = getattr(error, "errno", None)
    corrupt = name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or _undecodable(error)
    if corrupt or "malformed" in text or "not a database" in text:
        return CorruptStoreError(
            f"the database of {location} is damaged ({text}) while {doing}: run "
            f"`mnimi verify {location}` for what is left, then restore the directory from "
            "a copy, or `mnimi export` the sound sequences into a new one"
        )
    if name.startswith("SQLITE_FULL") or "disk is full" in text or number == errno.ENOSPC:
        return StoreFull(
            f"the disk holding {location} is full ({text}) while {doing}: free space on it; "
            "until then the cache can be replayed and replicated, but not extended"
        )
    if (
        name.startswith("SQLITE_READONLY")
        or "readonly" in text
        or number in (errno.EROFS, errno.EACCES, errno.EPERM)
    ):
        return StoreReadOnly(
            f"{location} is on read-only media or not writable ({text}) while {doing}: "
            "replay it with replication=True, or copy the directory somewhere writable"
        )
    if isinstance(error, diskcache.Timeout) or name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(
            f"{location} stayed locked by another process while {doing}: retry, and check "
            "that no process hangs with it open"
        )
    return StoreError(f"SQLite failed {doing} in {location}: {text}")


class DiskStore(SequenceStore):
    """Sequences in a diskcache directory, shared safely by threads and processes.

    Args:
        path: The cache directory; created with mode 0700 if missing.
        create: Create a missing store. ``False`` makes a missing store an error
            (the ``mnimi`` command never creates a cache it was asked to read).
        read_only: Never write to an existing store: open its database read-only
            (a missing one is created if ``create`` allows: there is nothing to
            protect). A store that cannot be written (read-only media, a full
            disk) is opened this way on its own; appending to it then raises.
        check_format: Check the format marker at open. ``mnimi verify`` opens with
            ``False`` (and ``read_only``) and checks the marker itself, to report damage
            as a problem; it reports so what the database holds that diskcache never
            creates, which any other open refuses.

    Raises:
        StoreError: The path is a file or a URL, cannot be created, or holds no
            cache (``create=False``), or the database cannot be opened.
        CorruptStoreError: The database is damaged.
        UnsupportedStoreVersion: The store was written by another format version.
    """

    held_in = "disk"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        check_format: bool = True,
    ) -> None:
        check_directory_location(path)
        self.path = anchored(path)
        #: As given (``~`` expanded): what messages and listings show.
        self.location = str(Path(path).expanduser())
        self._cache: diskcache.Cache | None = None
        #: Why the store cannot be written, when it was opened read-only.
        self._unwritable: StoreError | None = None
        self._local = threading.local()
        self._usage = UsageLog()
        writable = _private_directory(self.path, create)
        present = _holds_database(self.path)
        if present:
            # Nothing diskcache applies or a trigger runs on reaches verify's read-only
            # connection: it reports them as problems (see check()).
            self._refuse_foreign(altered=check_format or not read_only)
        if (read_only and present) or not writable:
            if not present:
                raise StoreReadOnly(
                    f"cache directory {self.path} is not writable: make it writable, or "
                    "choose another"
                )
            self._unwritable = StoreReadOnly(
                f"{self.path} was opened read-only"
                if writable
                else f"{self.path} is on read-only media or not writable: replay it with "
                "replication=True, or copy the directory somewhere writable"
            )
        else:
            try:
                self._open_writable(check_format)
            except (StoreFull, StoreReadOnly) as error:
                if not present:
                    raise
                self._close_cache()
                self._cache = None
                self._unwritable = error
        if self._unwritable is not None and check_format:
            with self._sqlite("opening the store"):
                self._check_version(self._value(FORMAT_KEY))
        #: Writes the uses reads note; none for a store that cannot be written.
        self._writer = None if self._cache is None else _UsageWriter(self._cache)
        # Uses noted but not written yet are written when the store is collected
        # or the interpreter exits: a run that never closes its store loses none.
        self._finalizer = weakref.finalize(self, _finish_usage, self._writer, self._usage)

    # -- opening -----------------------------------------------------------

    def _refuse_foreign(self, altered: bool) -> None:
        """Refuse a database another program wrote, before anything could write to it.

        Args:
            altered: Refuse a store's database altered too (see :func:`_alterations`).

        Raises:
            StoreError: The database holds tables that are not diskcache's (or, if
                ``altered``, anything else diskcache never creates).
            CorruptStoreError: It is damaged, or not a SQLite database.
        """
        with self._sqlite("opening the store"):
            foreign = _foreign_schema(self.path, altered)
        if foreign is not None:
            raise StoreError(
                f"{self.path} holds a SQLite database not written by mnimi_adapters "
                f"({foreign}), so it is not a cache: nothing was changed in it; choose "
                f"another directory for the cache, or move {self.path / DBNAME} away"
            )

    def _open_writable(self, check_format: bool) -> None:
        with self._sqlite("opening the store"):
            # SQLite creates its database 0644 less the umask (under umask 000, readable by
            # every local user) and gives the write-ahead log and its index the database's
            # mode: a database created 0600 first keeps all three private. One already
            # there (another process's, an older store) keeps its mode.
            with suppress(FileExistsError):
                os.close(create_private(self.path / DBNAME))
            self._cache = diskcache.Cache(
                str(self.path),
                disk=_JSONOnlyDisk,
                # Evicting single rows would punch holes into sequences; pruning
                # removes whole sequences instead (see `mnimi prune`).
                eviction_policy="none",
                size_limit=2**62,
                cull_limit=0,
                statistics=False,
                tag_index=False,
                **_OPENED_WITH,
            )
            if not check_format:
                return
            # A marker, once written, never goes: a store that has one is opened
            # without a write transaction.
            version = self._value(FORMAT_KEY)
            if version is None:
                # One transaction, so a process opening a new store cannot see another
                # one's first sample before that one's format marker.
                with self._cache.transact():
                    version = self._value(FORMAT_KEY)
                    if version is None:
                        if self._sql("SELECT 1 FROM Cache LIMIT 1").fetchone() is not None:
                            raise StoreError(
                                f"{self.path} holds a diskcache not written by mnimi_adapters"
                            )
                        self._cache.set(FORMAT_KEY, FORMAT_VERSION)
                        version = FORMAT_VERSION
            self._check_version(version)

    def _check_version(self, version: Any) -> None:
        if version is None:
            # A read-only store whose marker is missing: empty, or not ours.
            if self._sql("SELECT 1 FROM Cache LIMIT 1").fetchone() is not None:
                raise StoreError(f"{self.path} holds a diskcache not written by mnimi_adapters")
        elif not is_int(version):
            # Only an int is a version: '1' is not format 1 but a marker someone rewrote.
            raise CorruptStoreError(
                f"the format marker of {self.path} is damaged: it is {kind(version)}, not a "
                f"version; run `mnimi verify {self.path}` for every problem, then restore the "
                "directory from a copy"
            )
        elif version != FORMAT_VERSION:
            raise UnsupportedStoreVersion(
                f"{self.path} was written in store format {version!r}; "
                f"this version of mnimi_adapters reads format {FORMAT_VERSION}"
            )

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (for a store that cannot be written)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _connect_readonly(self.path / DBNAME)
        return connection

    def _sql(self, query: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        if self._cache is not None:
            cursor: sqlite3.Cursor = self._cache._sql(query, parameters)
            return cursor
        return self._reader().execute(query, parameters)

    @contextmanager
    def _sqlite(self, doing: str) -> Iterator[None]:
        """Turn SQLite's and the file system's failures into a ``StoreError`` naming the store."""
        try:
            yield
        except (sqlite3.Error, OSError, diskcache.Timeout) as error:
            raise _store_error(error, self.path, doing) from None

    # -- rows --------------------------------------------------------------

    def _value(self, name: str) -> Any:
        """The value of row ``name``, or ``None``; damage is reported with the row and store.

        Raises:
            CorruptStoreError: The row is pickled or names a file.
        """
        return self._decoded(name, self._sql(_ROW, (name,)).fetchone())

    def _decoded(self, name: str, row: Sequence[Any] | None) -> Any:
        """The value of row ``name`` from its ``(mode, filename, value)``, as :meth:`_value`."""
        if row is None:
            return None
        try:
            return _inline(decode_row(*row))
        except CorruptStoreError as error:
            raise CorruptStoreError(f"row {name} of {self.path}: {error}") from None

    def _length(self, key: str, length: Any) -> int:
        """The length in ``key``'s decoded length row (``None``: no row, so 0)."""
        if length is None:
            return 0
        if not is_int(length) or length < 0:
            raise CorruptStoreError(f"row n:{key} of {self.path}: the length is {kind(length)}")
        return int(length)

    def _scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every row whose name starts with ``prefix``, in name order: one range scan."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        for name, mode, filename, value in self._sql(_SCAN, (prefix, end)):
            yield name, decode_row(mode, filename, value)

    # -- SequenceStore ---------------------------------------------------------

    def get(self, key: str, index: int) -> Sample | None:
        with self._sqlite(f"reading sample #{index} of key {key}"):
            raw = self._value(f"s:{key}:{index}")
        return None if raw is None else decode_sample(raw, key, index)

    def read(self, key: str, index: int) -> Sample | int:
        name, length = f"s:{key}:{index}", f"n:{key}"
        with self._sqlite(f"reading sample #{index} of key {key}"):
            found = {row[0]: row[1:] for row in self._sql(_ROWS.format("?, ?"), (name, length))}
            if name in found:
                return decode_sample(self._decoded(name, found[name]), key, index)
            return self._length(key, self._decoded(length, found.get(length)))

    def length(self, key: str) -> int:
        with self._sqlite(f"reading the length of key {key}"):
            return self._length(key, self._value(f"n:{key}"))

    def has_draw(self, key: str, draw_id: str) -> bool:
        with self._sqlite(f"reading the draw index of key {key}"):
            return self._sql(_ROW, (f"d:{key}:{draw_id}",)).fetchone() is not None

    def check_writable(self, doing: str) -> None:
        self._writable(doing)

    def _writable(self, doing: str) -> diskcache.Cache:
        """The cache to write to, or the error that says why there is none (see __init__)."""
        if self._cache is None:
            error = self._unwritable or StoreReadOnly(f"{self.path} is read-only")
            raise type(error)(f"cannot {doing}: {error}")
        return self._cache

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> Appended:
        cache = self._writable(f"store samples of key {key}")
        # BEGIN IMMEDIATE: the read of the length and the writes after it are one
        # atomic step for every thread and process sharing the directory.
        with self._sqlite(f"appending to key {key}"), cache.transact():
            return self._append_rows(cache._con, key, samples, record)

    def append_many(self, batch: Sequence[Batched]) -> list[Appended | Exception]:
        """Several appends in one transaction, each key's in a savepoint of its own.

        The appends to one key (concurrent misses of one request, landing together)
        are written as one: one read of its length, record and draws, one write of the
        length and record; each caller still gets its own samples and their positions.
        A damaged sequence fails the appends to it only; a failure of the database
        (a full disk, say) fails them all, and stores none.
        """
        cache = self._writable(f"store samples of {len(batch)} keys")
        by_key: dict[str, list[int]] = {}
        for position, (key, _, _) in enumerate(batch):
            by_key.setdefault(key, []).append(position)
        outcomes: list[Appended | Exception] = [Appended()] * len(batch)
        with self._sqlite(f"appending to {len(by_key)} keys"), cache.transact():
            connection = cache._con
            for key, positions in by_key.items():
                parts = [batch[position][1] for position in positions]
                connection.execute("SAVEPOINT mnimi_append")
                try:
                    # One key, one request: the records of its appends are the same.
                    record = batch[positions[0]][2]
                    added = self._append_rows(connection, key, _joined(parts), record)
                except sqlite3.Error:
                    raise  # the database failed, not this sequence: the whole batch did
                except Exception as error:  # this sequence's damage, for its callers alone
                    connection.execute("ROLLBACK TO mnimi_append")
                    for position in positions:
                        outcomes[position] = error
                else:
                    for position, part in zip(positions, _split(added, parts), strict=True):
                        outcomes[position] = part
                connection.execute("RELEASE mnimi_append")
        return outcomes

    def _append_rows(
        self,
        connection: sqlite3.Connection,
        key: str,
        samples: Sequence[Sample],
        record: dict[str, Any],
    ) -> Appended:
        """One append's reads and writes, inside a transaction that is already open."""
        # One read for the length, the record and every draw the samples name.
        names = [f"n:{key}", f"m:{key}", *(f"d:{key}:{s.draw_id}" for s in samples)]
        found = {
            row[0]: row[1:]
            for row in connection.execute(
                _ROWS.format(", ".join("?" * len(names))), names
            ).fetchall()
        }
        length = self._length(key, self._decoded(names[0], found.get(names[0])))
        raw = self._decoded(names[1], found.get(names[1]))
        meta: dict[str, Any] = (
            {"request": record, "length": 0, "bytes": 0}
            if raw is None
            else self._totals(key, decode_record(raw, key))
        )
        added = Appended(start=length)
        now = time.time()
        rows: list[tuple[str, float, float, str | int]] = []
        # The draws held, and those of this batch: a provider may repeat one (law 3).
        seen = set(found)
        for sample in samples:
            draw_key = f"d:{key}:{sample.draw_id}"
            if draw_key in seen:
                continue
            seen.add(draw_key)
            index = length + len(added)
            value = dump_json(sample.to_dict())
            rows.append((f"s:{key}:{index}", now, now, value))
            rows.append((draw_key, now, now, index))
            meta["bytes"] += len(value)
            meta["prompt_tokens"] = meta.get("prompt_tokens", 0) + sample.prompt_tokens
            meta["completion_tokens"] = meta.get("completion_tokens", 0) + sample.completion_tokens
            meta["cost"] = meta.get("cost", 0.0) + (sample.cost or 0.0)
            added.append(sample)
        if added:
            meta["length"] = length + len(added)
            meta["stored"] = meta["used"] = now
            try:
                # A plain INSERT: a sample row already there is damage (appends
                # are atomic), never overwritten whatever it holds.
                connection.executemany(_INSERT, rows)
            except sqlite3.IntegrityError:
                raise self._beyond(key, length, len(added)) from None
            # The length and record rows were read above: inline, never a file.
            connection.executemany(
                _UPSERT,
                [
                    (names[0], now, now, meta["length"]),
                    (names[1], now, now, dump_json(meta)),
                ],
            )
        return added

    def _totals(self, key: str, meta: dict[str, Any]) -> dict[str, Any]:
        """``key``'s record, if its totals can be added to.

        Raises:
            CorruptStoreError: A total is missing (``bytes``) or not a number.
        """
        for name, default in (
            ("bytes", None),
            ("prompt_tokens", 0),
            ("completion_tokens", 0),
            ("cost", 0.0),
        ):
            value = meta.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CorruptStoreError(f"row m:{key} of {self.path}: its {name} is {kind(value)}")
        return meta

    def _beyond(self, key: str, length: int, count: int) -> CorruptStoreError:
        """The error for a sample row an append found beyond the sequence's length."""
        names = [f"s:{key}:{index}" for index in range(length, length + count)]
        name = next(name for name in names if self._sql(_ROW, (name,)).fetchone() is not None)
        return CorruptStoreError(
            f"row {name} of {self.path} lies beyond the sequence's length {length}"
        )

    def touch(self, key: str) -> None:
        if self._writer is None:
            return  # a store that cannot be written keeps no time of use
        batch = self._usage.note(key)
        if batch:
            # Written on the writer's thread: the read that filled the batch never
            # pays for the write.
            self._writer.submit(batch)

    def flush(self) -> None:
        """Write the uses noted so far and wait for the writer (best effort: a store busy
        for longer than its wait, or full, drops them)."""
        _finish_usage(self._writer, self._usage)

    # -- the admin side ------------------------------------------------------

    def summaries(self) -> Iterator[Summary]:
        with self._sqlite("listing the sequences"):
            records = self._scan("m:")
            record = next(records, None)
            for name, length in self._scan("n:"):
                key = name[2:]
                while record is not None and record[0][2:] < key:
                    yield _summary(record[0][2:], None, record[1])
                    record = next(records, None)
                if record is not None and record[0][2:] == key:
                    yield _summary(key, length, record[1])
                    record = next(records, None)
                else:
                    yield _summary(key, length, None)
            while record is not None:
                yield _summary(record[0][2:], None, record[1])
                record = next(records, None)

    def totals(self) -> Totals:
        """Summed by SQLite: only the keys whose rows it cannot vouch for are decoded.

        Each model's samples are its records' lengths; they are exact when the
        length rows sum to the same, else (a damaged store) every key is decoded.
        The length rows are read on a thread of their own meanwhile (SQLite lets
        go of the GIL), as the records take most of the time.
        """
        with self._sqlite("summing the sequences"), ThreadPoolExecutor(1) as pool:
            lengths = pool.submit(self._lengths)
            models, odd = self._records(set())
            _, total, odd_lengths = lengths.result()
            if odd_lengths:
                models, odd = self._records(odd_lengths)
            odd |= odd_lengths
            found = (self.summary(key) for key in sorted(odd))
            flagged = [summary for summary in found if summary is not None]
        if sum(row.samples for row in models) != total - sum(s.length for s in flagged):
            return Totals.of(self.summaries())
        return Totals.of(flagged, sum(row.keys for row in models), models)

    def _lengths(self) -> tuple[int, int, set[str]]:
        """How many length rows are sound, their sum, and the keys not in both prefixes.

        On a connection of its own, as it runs on another thread.
        """
        with closing(_connect_readonly(self.path / DBNAME)) as connection:
            sound, total, odd = connection.execute(_LENGTHS).fetchone()
            keys = set(json.loads(odd))
            alone = [key for (key,) in connection.execute(_ALONE.format("n", "m"))]
            (records,) = connection.execute(_COUNT).fetchone()
            # Every record has a length row unless there are more records than pairs.
            if records > sound + len(keys) - len(alone):
                keys.update(key for (key,) in connection.execute(_ALONE.format("m", "n")))
        return sound, total or 0, keys.union(alone)

    def _apart(self, query: str) -> list[str]:
        """The keys ``query`` lists, read on a connection of its own (another thread)."""
        with closing(_connect_readonly(self.path / DBNAME)) as connection:
            return [key for (key,) in connection.execute(query)]

    def _records(self, leave: set[str]) -> tuple[list[ModelTotals], set[str]]:
        """The totals of the records SQLite reads as Python does, per model, but ``leave``'s;
        and the keys of the others."""
        grouped = ""
        while True:
            rows = self._sql(_RECORDS.format(grouped), (json.dumps(sorted(leave)),))
            found = rows.fetchall()
            if grouped or found[0][0] <= 1:
                break
            grouped = " GROUP BY model"  # several models: SQLite sorts the records
        models, odd = [], set()
        for _, model, keys, *totals, others in found:
            odd.update(json.loads(others))
            if keys:
                models.append(ModelTotals(_model_name(model), keys, *totals))
        return models, odd

    def recent(self, limit: int | None) -> tuple[int, list[Summary]]:
        """Sorted by SQLite: only the ``limit`` keys shown (and any without a record) are
        decoded."""
        if limit is None:
            return super().recent(limit)  # every record is decoded anyway
        with self._sqlite("listing the sequences"), ThreadPoolExecutor(1) as pool:
            # The keys without a record meanwhile, on a connection of their own.
            lonely = pool.submit(self._apart, _ALONE.format("n", "m"))
            (records,) = self._sql(_COUNT).fetchone()
            top = [key for (key,) in self._sql(_RECENT, (limit,))]
            alone = lonely.result()
            found = (self.summary(key) for key in {*alone, *top})
            summaries = sorted((s for s in found if s is not None), key=recency)
        return records + len(alone), summaries[:limit]

    def summary(self, key: str) -> Summary | None:
        with self._sqlite(f"reading key {key}"):
            rows = {}
            for prefix in ("n:", "m:"):
                row = self._sql(_ROW, (prefix + key,)).fetchone()
                if row is not None:
                    rows[prefix] = decode_row(*row)
        if not rows:
            return None
        return _summary(key, rows.get("n:"), rows.get("m:"))

    def delete(self, key: str) -> None:
        cache = self._writable(f"delete key {key}")
        with self._sqlite(f"deleting key {key}"), cache.transact():
            for index in range(self._length(key, self._value(f"n:{key}"))):
                raw = self._value(f"s:{key}:{index}")
                if raw is not None:
                    cache.delete(f"d:{key}:{decode_sample(raw, key, index).draw_id}")
                cache.delete(f"s:{key}:{index}")
            cache.delete(f"n:{key}")
            cache.delete(f"m:{key}")

    def volume(self) -> int:
        """Bytes the database occupies on disk."""
        with self._sqlite("measuring the store"):
            (pages,) = self._sql("PRAGMA page_count").fetchone()
            (size,) = self._sql("PRAGMA page_size").fetchone()
        return int(pages) * int(size)

    @without_cycle_collection
    def check(self, progress: Callable[[int], None] | None = None) -> Check:
        """Check every row (in one read transaction, on a read-only connection).

        The rows are read in one pass; where SQLite cannot read on (a damaged page), the
        rest are listed from the index of their names and read one by one, so a row on
        the damaged page is reported unreadable and every row past it is still checked.
        """
        verifier = Verifier()
        version: Any = None
        connection: sqlite3.Connection | None = None
        try:
            connection = _connect_readonly(self.path / DBNAME)
            # One read transaction: a consistent snapshot, even while another
            # process appends, and no lock that would make its writers wait.
            connection.execute("BEGIN")
            version = self._marker(connection, verifier)
            for problem in _alterations(connection):
                verifier.report(None, None, f"the database is not a store's: {problem}, {_ALTERED}")
            self._quick_check(connection, verifier)
            last = self._check_rows(connection, verifier, progress)
            if last is not None:
                self._read_past(connection, verifier, last, progress)
        except (sqlite3.Error, OSError) as error:
            self._damaged(error, verifier)
        finally:
            if connection is not None:
                connection.close()
        verifier.finish()
        return verifier.result(version)

    def _damaged(self, error: sqlite3.Error | OSError, verifier: Verifier) -> None:
        """Report damage that stopped a read as a problem; any other failure is raised."""
        self._raise_unless_damage(error)
        verifier.report(None, None, f"the database is damaged: {error}")

    def _raise_unless_damage(self, error: sqlite3.Error | OSError) -> None:
        """Raise a check's failure as the ``StoreError`` it is, unless it is damage."""
        failure = _store_error(error, self.path, "checking the store")
        if not isinstance(failure, CorruptStoreError):
            raise failure from None

    def _quick_check(self, connection: sqlite3.Connection, verifier: Verifier) -> None:
        """SQLite's own check of its pages; where it fails to read one, that is damage
        too, and the rows are read all the same."""
        try:
            for (message,) in connection.execute("PRAGMA quick_check(20)"):
                if message != "ok":
                    verifier.report(None, None, f"SQLite: {message}")
        except sqlite3.DatabaseError as error:
            self._damaged(error, verifier)

    def _check_rows(
        self,
        connection: sqlite3.Connection,
        verifier: Verifier,
        progress: Callable[[int], None] | None,
    ) -> int | None:
        """Read every row in one pass; ``None`` when it got through, else the row id of
        the last row read before the damage (-1: none)."""
        last = -1
        try:
            rows = connection.execute(
                "SELECT rowid, key, raw, mode, filename, value FROM Cache ORDER BY rowid"
            )
            for rowid, name, raw, mode, filename, value in rows:
                _checked_row(verifier, name, raw, decode_row(mode, filename, value), progress)
                last = rowid
        except sqlite3.DatabaseError as error:
            # Text that is not UTF-8 is a damaged row, which the rows read one by one
            # report; anything else is damage the pass could not read past.
            if not _undecodable(error):
                self._damaged(error, verifier)
            return last
        return None

    def _read_past(
        self,
        connection: sqlite3.Connection,
        verifier: Verifier,
        last: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Read one by one the rows after row id ``last``, listed by the index of names
        (kept on other pages than the rows): a row that cannot be read is reported so,
        under its name, not taken for a missing one."""
        connection.text_factory = _text_or_bytes
        try:
            listed = connection.execute(
                "SELECT rowid, key, raw FROM Cache INDEXED BY Cache_key_raw WHERE rowid > ?",
                (last,),
            ).fetchall()
        except sqlite3.DatabaseError as error:
            self._damaged(error, verifier)
            verifier.report(
                None,
                None,
                "the rows after the damage cannot be listed (the index of their names is "
                "damaged too): a sample reported missing may be one that cannot be read",
            )
            return
        for rowid, name, raw in listed:
            try:
                row = connection.execute(
                    "SELECT mode, filename, value FROM Cache WHERE rowid = ?", (rowid,)
                ).fetchone()
            except sqlite3.DatabaseError as error:
                self._raise_unless_damage(error)
                row = None
            value = UNREADABLE if row is None else decode_row(*row)
            _checked_row(verifier, name, raw, value, progress)

    def _marker(self, connection: sqlite3.Connection, verifier: Verifier) -> Any:
        """The format marker; an unknown version is an error, a damaged one a problem."""
        row = connection.execute(_ROW, (FORMAT_KEY,)).fetchone()
        if row is None:
            if connection.execute("SELECT 1 FROM Cache LIMIT 1").fetchone() is not None:
                verifier.report(None, FORMAT_KEY, "the format marker is missing")
            return None
        version = decode_row(*row)
        if not is_int(version):
            problem = f"the format marker is {kind(version)}, not a version"
            verifier.report(None, FORMAT_KEY, problem)
            return None
        self._check_version(version)
        return version

    def _checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, as far as it can.

        SQLite does so itself when the process's last connection closes, but refill
        threads keep theirs open for the process's life: until then a copy of
        ``cache.db`` alone (a bundle zipped mid-notebook) would hold no new sample.
        PASSIVE never waits for another connection and leaves a page that one still
        reads to the log; a failure (a full disk) leaves the log as it was, still sound.
        """
        if self._cache is None:
            return
        with suppress(sqlite3.Error, OSError, diskcache.Timeout):
            self._cache._sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _close_cache(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def close(self) -> None:
        self.flush()
        self._checkpoint()
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        self._close_cache()


def _undecodable(error: BaseException) -> bool:
    """Whether ``error`` is Python's refusal of a text value that is not UTF-8 (damage)."""
    return isinstance(error, sqlite3.OperationalError) and "Could not decode" in str(error)


def _text_or_bytes(data: bytes) -> str | bytes:
    """A text value as Python reads it, or its bytes where they are not UTF-8 (damage,
    which the check then reports as a row of bytes, not text)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _checked_row(
    verifier: Verifier,
    name: Any,
    raw: Any,
    value: Any,
    progress: Callable[[int], None] | None,
) -> None:
    """Hand one row of the table to ``verifier`` (a name diskcache pickled, unread)."""
    if not raw:
        name = PICKLED
    elif isinstance(name, memoryview):
        name = bytes(name)
    verifier.row(name, value)
    if progress is not None and verifier.rows % 1000 == 0:
        progress(1000)


def _summary(key: str, length: Any, record: Any) -> Summary:
    """A listing line from a key's decoded length and record rows (``None``: no row).

    Damage is noted on the summary, not raised.
    """
    summary = Summary(key)
    if length is None:
        summary.error = f"key {key} has no length row"
    elif not is_int(length) or length < 0:
        summary.error = f"the length of key {key} is {kind(length)}"
    else:
        summary.length = int(length)
    if record is None:
        summary.error = summary.error or f"key {key} has no record"
    elif not isinstance(record, str):
        summary.error = summary.error or f"the record of key {key} is {kind(record)}"
    else:
        try:
            summary.info = decode_record(record, key)
        except CorruptStoreError as error:
            summary.error = summary.error or str(error)
    return summary


def _model_name(raw: bytes) -> str:
    """A model name as SQLite's ``json_extract`` gave it, read as Python's ``json`` would.

    SQLite turns an escaped lone surrogate (``"m\\udcff"``, a name stored escaped, see
    :func:`dump_json`) into the three bytes that ``surrogatepass`` reads back, which
    plain UTF-8 text refuses. Bytes that are not even that (a damaged row) are shown
    with replacement characters: it is only a listing's name.
    """
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _connect_readonly(
    database: Path, probe: str = "SELECT 1 FROM Cache LIMIT 1", immutable: bool = False
) -> sqlite3.Connection:
    """A read-only connection: it never changes what it reads, and needs no free space.

    ``probe``: a query it must be able to run. ``immutable``: read the file as it
    stands, ignoring locks and any write-ahead log.
    """
    uri = f"{database.resolve().as_uri()}?mode=ro"
    if immutable:
        return sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None)
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
    try:
        connection.execute(probe).fetchall()
    except sqlite3.OperationalError:
        # Without a writable directory (or room for the WAL index a reader
        # needs) SQLite cannot read a WAL database as is; nobody can be writing
        # to it then, so read the file as it stands.
        connection.close()
        connection = sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None)
    return connection


class _UsageWriter:
    """Writes a store's uses of keys on one thread at a time, whatever the readers.

    Each full batch used to get a thread of its own, which waited for no other
    writer: under a fast replay the batches overlapped and dropped one another,
    most uses of a run going unwritten. Here batches handed over while a write runs
    wait in line (a thread runs while there is something to write, and ends when
    there is not), each written in a short transaction of its own, as before. A
    write waits a little for another connection, off every read's path, so only a
    store busy for longer (another process's long transaction), full or damaged
    drops a batch; and a line longer than ``_USAGE_BACKLOG`` uses loses its oldest.
    """

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._batches: collections.deque[dict[str, float]] = collections.deque()
        #: The uses in those batches.
        self._waiting = 0
        # Reentrant: the store's finalizer calls finish(), and the garbage collector
        # may run it on any thread, this lock held (an allocation under it).
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def submit(self, batch: dict[str, float]) -> None:
        """Hand ``batch`` over, to be written on the writer's thread (started if none runs)."""
        with self._lock:
            self._line_up(batch)
            if self._thread is not None:
                return  # the running writer takes it in turn
            # A daemon thread: exit never waits for it; the finalizer does, briefly.
            thread = threading.Thread(target=self._run, name="mnimi-usage", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (exiting): flush or finalizer writes it
                return
            self._thread = thread

    def finish(self, batch: dict[str, float]) -> None:
        """Write ``batch`` and everything handed over before returning (best effort).

        Waits for a running writer, which takes ``batch`` too; without one, it writes on
        the calling thread: at interpreter exit no new thread may start.
        """
        with self._lock:
            self._line_up(batch)
            thread = self._thread
        if thread is threading.current_thread():
            return  # collected on the writer's thread: its loop takes the batch
        if thread is not None:
            thread.join(_USAGE_JOIN_SECONDS)
        while self._write_next():
            pass

    def _line_up(self, batch: dict[str, float]) -> None:
        """Put ``batch`` in line, dropping the oldest batches beyond ``_USAGE_BACKLOG`` uses."""
        if batch:
            self._batches.append(batch)
            self._waiting += len(batch)
        while self._waiting > _USAGE_BACKLOG:
            self._waiting -= len(self._batches.popleft())

    def _run(self) -> None:
        try:
            while self._write_next(last=True):
                pass
        finally:
            # diskcache opens a connection per thread; one left to the garbage
            # collector keeps its page cache, so a replay of a million keys would hold
            # hundreds.
            self._cache.close()  # this thread's connection only

    def _write_next(self, last: bool = False) -> bool:
        """Write the first batch in line; return whether there was one.

        ``last``: on the writer's thread, which ends (under the lock, so that no batch
        is handed to a thread that has ended) when there is nothing left.
        """
        with self._lock:
            batch = self._batches.popleft() if self._batches else None
            if batch is not None:
                self._waiting -= len(batch)
            elif last:
                self._thread = None
        if batch is None:
            return False
        _write_usage(self._cache, batch)
        return True


def _finish_usage(writer: _UsageWriter | None, usage: UsageLog) -> None:
    """Write the uses ``usage`` holds and those handed to ``writer``, if the store is writable."""
    batch = usage.take()
    if writer is not None:
        writer.finish(batch)


def _write_usage(cache: diskcache.Cache, batch: dict[str, float]) -> None:
    """Record when keys were last used, in one write that waits briefly for other writers.

    Best effort: a store busy beyond that wait, full, read-only or damaged drops the
    batch, as a use not recorded only makes pruning a little less exact.
    """
    try:
        cache._sql(f"PRAGMA busy_timeout = {_USAGE_WAIT_MS}")
        try:
            with cache.transact(retry=False):
                # SQLite edits the record's JSON itself: no row crosses into Python.
                if _BATCH_UPDATES:
                    cache._con.execute(_TOUCH_BATCH, (json.dumps(batch),))
                else:
                    cache._con.executemany(
                        _TOUCH, [(used, f"m:{key}", used) for key, used in batch.items()]
                    )
        finally:
            cache._sql(f"PRAGMA busy_timeout = {_BUSY_WAIT_MS}")
    except (sqlite3.Error, OSError, diskcache.Timeout):
        pass
