"""Stores at their edges, without a server: each failure a StoreError naming the store.

A store that knows it cannot keep samples refuses a miss before anything is drawn
(law 6: a paid sample is never thrown away); a location that only looks like a cache
path is refused; a damaged store says it is damaged.
"""

from __future__ import annotations

import io
import re
import shutil
import sqlite3
from contextlib import closing, redirect_stderr, redirect_stdout
from itertools import islice
from pathlib import Path

import pytest
from diskcache.core import DBNAME
from support import FailingModel, NumberModel

from mnimi_adapters.cli import main
from mnimi_adapters.core import (
    CacheLayer,
    CorruptStoreError,
    DiskStore,
    Independent,
    Persistent,
    ReplicationCacheMiss,
    StoreError,
)
from mnimi_adapters.core.errors import (
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnsupportedStoreVersion,
)
from mnimi_adapters.core.stores import (
    FORMAT_KEY,
    MemoryStore,
    ReadThroughStore,
    RedisStore,
    is_redis_url,
    open_store,
    redis_location,
)

PROMPT = "Choose a number between 1 and 1000."


def filled(path: Path) -> list[str]:
    """A store at ``path`` holding three samples of ``PROMPT``; their draw ids."""
    model = Persistent(NumberModel(), path)
    drawn = [s.draw_id for s in islice(model.samples(PROMPT, batch=3), 3)]
    model.close()
    return drawn


# -- a store that cannot keep samples asks no provider for them ------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> tuple[CacheLayer, NumberModel, list[str]]:
    """A cache layer (not a replication one) over a store opened read-only."""
    drawn = filled(tmp_path / "cache")
    model = NumberModel()
    store = ReadThroughStore(DiskStore(tmp_path / "cache", read_only=True))
    return CacheLayer(model, store), model, drawn


def test_a_miss_on_a_read_only_store_draws_nothing(
    read_only: tuple[CacheLayer, NumberModel, list[str]], tmp_path: Path
) -> None:
    layer, model, drawn = read_only
    assert [s.draw_id for s in islice(layer.samples(PROMPT), 3)] == drawn
    for _ in range(3):  # every retry is refused as the first was, for free
        with pytest.raises(StoreReadOnly) as raised:
            list(islice(layer.samples(PROMPT), 4))
    with pytest.raises(StoreReadOnly):
        list(islice(Independent(layer).samples("a prompt never stored"), 1))
    assert model.calls == []
    assert str(tmp_path / "cache") in str(raised.value)
    assert "none was requested" in str(raised.value)


async def test_an_async_miss_on_a_read_only_store_draws_nothing(
    read_only: tuple[CacheLayer, NumberModel, list[str]],
) -> None:
    layer, model, drawn = read_only
    assert [s.draw_id for s in await layer.adraw(PROMPT, 3)] == drawn
    with pytest.raises(StoreReadOnly):
        await layer.adraw("a prompt never stored", 1)
    assert model.calls == []


class FullStore(MemoryStore):
    """A store that knows, before any write, that it has no room left."""

    def check_writable(self, doing: str) -> None:
        raise StoreFull(f"cannot {doing}: no room left")


def test_the_layer_asks_the_store_before_drawing() -> None:
    model = NumberModel()
    with pytest.raises(StoreFull, match="no room left"):
        CacheLayer(model, ReadThroughStore(FullStore())).draw(PROMPT, 1)
    assert model.calls == []
    # A store that knows nothing against writing is written as before.
    layer = CacheLayer(model, ReadThroughStore(MemoryStore()))
    assert len(layer.draw(PROMPT, 2)) == 2 and sum(model.calls) == 2


def test_a_replication_miss_is_still_a_replication_miss(tmp_path: Path) -> None:
    filled(tmp_path / "cache")
    layer = Persistent(NumberModel(), tmp_path / "cache", replication=True)
    with pytest.raises(ReplicationCacheMiss):
        layer.draw(PROMPT, 4)
    layer.close()


# -- locations that are not what they look like -----------------------------------------


def run_cli(*argv: str) -> tuple[int, str]:
    """``mnimi`` in this process: its exit code and what it wrote to stderr."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_an_unknown_redis_url_parameter_is_a_store_error() -> None:
    pytest.importorskip("redis")
    # The client refuses the option before it connects: no server is needed (port 9).
    url = "redis://:s3cret@127.0.0.1:9/0?namespac=project"
    with pytest.raises(StoreError) as raised:
        RedisStore(url)
    message = str(raised.value)
    assert "'namespac'" in message and "127.0.0.1:9" in message
    assert "s3cret" not in message
    code, err = run_cli("stats", url)
    assert code == 2 and "'namespac'" in err and "s3cret" not in err
    assert len(err.splitlines()) == 1  # no traceback


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("redis:/127.0.0.1:6379/0", "two slashes"),
        ("Rediss:/cache.internal:6380/0", "two slashes"),
        ("unix:/run/redis.sock", "two slashes"),
        ("http://cache-host:6379/0", "is a URL (http:)"),
        ("s3://bucket/cache", "is a URL (s3:)"),
    ],
)
def test_a_url_is_never_taken_for_a_directory(
    location: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=re.escape(says)) as raised:
        Persistent(NumberModel(), location)
    assert location in str(raised.value)
    code, err = run_cli("stats", location)
    assert code == 2 and location in err
    assert list(tmp_path.iterdir()) == []  # no directory was made of it


@pytest.mark.parametrize("location", ["", "  "])
def test_an_empty_location_is_refused(
    location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset variable must not make the current directory a cache."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="is empty"):
        Persistent(NumberModel(), location)
    code, err = run_cli("stats", location)
    assert code == 2 and "is empty" in err
    assert list(tmp_path.iterdir()) == []


def test_a_url_refused_hides_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as raised:
        DiskStore("https://user:s3cret@cache-host/x")
    assert "s3cret" not in str(raised.value) and "user:***@cache-host" in str(raised.value)


def test_paths_with_colons_that_are_no_urls_stay_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for location in ("C:/cache", "cache:one", tmp_path / "http:" / "cache"):
        drawn = filled(Path(location))
        with DiskStore(location) as store:
            (key,) = store.keys()
            assert [store.get(key, i).draw_id for i in range(3)] == drawn  # type: ignore[union-attr]


def test_a_redis_scheme_is_read_in_any_case() -> None:
    assert is_redis_url("Redis://127.0.0.1:6379/0") and is_redis_url("UNIX:///run/r.sock")
    assert redis_location("REDISS://:s3cret@cache.internal:6380/2?namespace=p") == (
        "rediss://:***@cache.internal:6380/2?namespace=p"
    )
    pytest.importorskip("redis")
    # Taken for Redis (port 9: nothing listens), not for a directory named "Redis:".
    with pytest.raises(StoreUnreachable, match=re.escape("redis://127.0.0.1:9/0")):
        open_store("Redis://127.0.0.1:9/0")


# -- a damaged or empty store says so ----------------------------------------------------


def set_marker(path: Path, value: str | int) -> None:
    """Overwrite the format marker of the store at ``path``, as a hand edit would."""
    with closing(sqlite3.connect(path / DBNAME)) as connection, connection:
        connection.execute("UPDATE Cache SET value = ? WHERE key = ?", (value, FORMAT_KEY))


@pytest.mark.parametrize("replication", [True, False])
def test_a_format_marker_that_is_no_version_is_damage(tmp_path: Path, replication: bool) -> None:
    path = tmp_path / "cache"
    filled(path)
    set_marker(path, "1")
    with pytest.raises(CorruptStoreError) as raised:
        Persistent(FailingModel("gpt-4o", 1.0), path, replication=replication)
    message = str(raised.value)
    assert "format marker" in message and "damaged" in message and "str value" in message
    assert str(path) in message and "mnimi verify" in message


def test_a_format_marker_of_another_version_is_still_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    filled(path)
    set_marker(path, 2)
    with pytest.raises(UnsupportedStoreVersion, match="format 2"):
        Persistent(FailingModel("gpt-4o", 1.0), path, replication=True)


def test_an_empty_database_is_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    filled(path)
    for name in (DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm"):
        (path / name).unlink(missing_ok=True)
    (path / DBNAME).write_bytes(b"")  # a copy cut short
    for read_only in (True, False):
        with pytest.raises(StoreError, match=r"no cache at .*is empty") as raised:
            DiskStore(path, create=False, read_only=read_only)
        assert str(path) in str(raised.value)
    with pytest.raises(StoreError, match=r"no cache at .*is empty"):
        Persistent(FailingModel("gpt-4o", 1.0), path, replication=True)
    code, err = run_cli("stats", str(path))
    assert code == 2 and "is empty" in err
    # A run that may write makes a new store in it, as in a directory without one.
    model = Persistent(NumberModel(), path)
    assert len(model.draw(PROMPT, 1)) == 1
    model.close()
    with DiskStore(path, read_only=True) as store:
        assert len(list(store.keys())) == 1


# -- closing ------------------------------------------------------------------------------


def test_closing_leaves_every_sample_in_the_database_file(tmp_path: Path) -> None:
    # The refill threads that stored the samples keep their connections open, so the
    # write-ahead log outlives close(): a copy of the database file alone must still
    # hold what was stored.
    model = Persistent(NumberModel(), tmp_path / "cache")
    drawn = [s.draw_id for s in model.draw(PROMPT, 5, batch=5)]
    model.close()
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "cache" / DBNAME, tmp_path / "copy" / DBNAME)
    with DiskStore(tmp_path / "copy", read_only=True) as store:
        (key,) = store.keys()
        assert [store.get(key, i).draw_id for i in range(5)] == drawn  # type: ignore[union-attr]
