"""Storage failures at the edges: each a StoreError that names the store and says what to do.

Every failure here is real: a database file with overwritten pages, a file system
that is full (a small tmpfs) or read-only (a read-only bind mount), a Redis server at
its maxmemory, a Redis server stopped mid-use. Mounting needs root (CAP_SYS_ADMIN);
without it those tests skip. A replay and a replication run must still read what
is stored in each case, and noting a key's use for LRU never blocks or fails a read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from diskcache.core import DBNAME
from support import FailingModel, NumberModel, RedisServer, need_redis_server_binary, run_cli

from mnimi_adapters.core import (
    CorruptStoreError,
    DiskStore,
    Persistent,
    Request,
    Sample,
    StoreError,
)
from mnimi_adapters.core.errors import (
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnsupportedStoreVersion,
)
from mnimi_adapters.core.stores import RedisStore

PROMPT = "Choose a number between 1 and 1000."


def fill(location: str | Path, prompts: int = 1, count: int = 3) -> list[list[str]]:
    """Store ``count`` samples for each of ``prompts`` prompts; return their draw ids."""
    model = Persistent(NumberModel(), location)
    drawn = [
        [s.draw_id for s in islice(model.samples(f"{PROMPT} #{p}", batch=count), count)]
        for p in range(prompts)
    ]
    model.close()
    return drawn


def replay(location: str | Path, replication: bool, prompt: int = 0, count: int = 3) -> list[str]:
    """The draw ids a replay reads, through a provider that must never be asked."""
    model = Persistent(FailingModel("gpt-4o", 1.0), location, replication=replication)
    try:
        return [s.draw_id for s in islice(model.samples(f"{PROMPT} #{prompt}"), count)]
    finally:
        model.close()


def mount(*argv: str) -> None:
    """Run ``mount`` or skip: the test needs root (CAP_SYS_ADMIN) to make a real file system."""
    try:
        done = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {done.stderr.strip()}")


def umount(path: Path) -> None:
    # Lazy: refill threads of this process may still hold the database open.
    subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=True)


# -- corruption ----------------------------------------------------------------------


def test_corrupt_pages_are_a_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    fill(path, prompts=40, count=5)
    database = path / DBNAME
    with sqlite3.connect(database) as connection:  # every page in the file, none in the WAL
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    data = bytearray(database.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    # Every page but the first (the header and schema): the tables' pages are garbage.
    for start in range(page, len(data), page):
        data[start : start + 64] = b"\xa5" * 64
    database.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError) as raised:
        replay(path, replication=False)
    message = str(raised.value)
    assert str(path) in message and "mnimi verify" in message
    assert isinstance(raised.value, StoreError)
    with pytest.raises(CorruptStoreError, match="mnimi verify"):
        replay(path, replication=True)
    code, out, _ = run_cli("verify", path)
    assert code == 1 and "damaged" in out
    before = database.read_bytes()
    code, _, err = run_cli("prune", path, "--max-size", "0")
    assert code != 0 and str(path) in err
    assert database.read_bytes() == before


# -- a full disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where))
    yield where
    umount(where)


def fill_the_disk(where: Path) -> None:
    with open(where / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_a_full_disk_stops_appends_not_replays(small_disk: Path) -> None:
    path = small_disk / "cache"
    (drawn,) = fill(path)
    fill_the_disk(small_disk)
    store = DiskStore(path)
    big = [Sample(text="x" * 200_000) for _ in range(4)]
    with pytest.raises(StoreFull) as raised:
        store.append("k", big, {"model": "m", "messages": []})
    store.close()
    assert str(path) in str(raised.value) and "free space" in str(raised.value)
    # Replays read, and noting uses for LRU fails nobody.
    assert replay(path, replication=True) == drawn
    assert replay(path, replication=False) == drawn
    assert run_cli("verify", path)[0] == 0
    assert run_cli("stats", path)[0] == 0


def test_a_database_at_its_page_limit_is_full(tmp_path: Path) -> None:
    # Where no tmpfs can be mounted (CI without root): SQLite's own page limit on the
    # store's connection fails a write with the very error a full disk gives.
    path = tmp_path / "cache"
    (drawn,) = fill(path)
    with DiskStore(path) as store:
        assert store._cache is not None
        connection = store._cache._con
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreFull) as raised:
            store.append("k", [Sample(text="x" * 200_000)], {"model": "m", "messages": []})
        assert "database or disk is full" in str(raised.value)
        assert str(path) in str(raised.value) and "free space" in str(raised.value)
        (key,) = store.keys()
        assert [store.get(key, i).draw_id for i in range(3)] == drawn  # type: ignore[union-attr]


# -- read-only media -----------------------------------------------------------------


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A filled cache seen through a read-only bind mount."""
    source = tmp_path / "source"
    (drawn,) = fill(source / "cache")
    view = tmp_path / "view"
    view.mkdir()
    mount("--bind", str(source), str(view))
    try:
        mount("-o", "remount,ro,bind", str(view))
        yield view / "cache", drawn
    finally:
        umount(view)


def test_read_only_media_replay_and_refuse_appends(read_only_copy: tuple[Path, list[str]]) -> None:
    path, drawn = read_only_copy
    with pytest.raises(OSError):
        (path / "probe").write_text("")  # truly read-only, even for root
    assert replay(path, replication=True) == drawn
    assert replay(path, replication=False) == drawn
    with DiskStore(path) as store, pytest.raises(StoreReadOnly) as raised:
        store.append("k", [Sample(text="new")], {"model": "m", "messages": []})
    assert str(path) in str(raised.value) and "replication=True" in str(raised.value)
    assert run_cli("verify", path)[0] == 0
    assert run_cli("stats", path)[0] == 0
    code, _, err = run_cli("prune", path, "--max-size", "0")
    assert code == 2 and "read-only" in err


def test_a_store_opened_read_only_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    (drawn,) = fill(path)
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with DiskStore(path, read_only=True) as store:
        (key,) = store.keys()
        assert [store.get(key, i).draw_id for i in range(3)] == drawn  # type: ignore[union-attr]
        store.touch(key)
        with pytest.raises(StoreReadOnly, match="read-only"):
            store.append(key, [Sample(text="new")], {"model": "m", "messages": []})
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before


class CountingModel(NumberModel):
    """A provider that counts the requests it answers: each one would be paid for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def query(self, request: Request, n: int) -> list[str]:
        self.requests += 1
        return super().query(request, n)


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Seals a filled directory: its read-only view, which not even this process can write.

    As root (who writes through any mode) a read-only bind mount, else the directory
    itself with its modes forbidding writes.
    """
    sealed: list[Path] = []

    def seal(source: Path) -> Path:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "a-w", str(source)], check=True)
            sealed.append(source)
            return source
        view = tmp_path / "view"
        view.mkdir()
        mount("--bind", str(source), str(view))
        sealed.append(view)
        mount("-o", "remount,ro,bind", str(view))
        with pytest.raises(OSError):
            (view / "probe").write_text("")
        return view

    yield seal
    for where in sealed:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "u+w", str(where)], check=True)
        else:
            umount(where)


def test_a_miss_on_read_only_media_pays_for_nothing(
    tmp_path: Path, read_only_view: Callable[[Path], Path]
) -> None:
    (drawn,) = fill(tmp_path / "source" / "cache")
    path = read_only_view(tmp_path / "source") / "cache"
    model = CountingModel()
    cache = Persistent(model, path)
    assert [s.draw_id for s in islice(cache.samples(f"{PROMPT} #0"), 3)] == drawn
    for _ in range(3):  # a retry loop pays for nothing either
        with pytest.raises(StoreReadOnly) as raised:
            list(islice(cache.samples("a prompt never stored"), 1))
    cache.close()
    assert model.requests == 0
    assert str(path) in str(raised.value) and "replication=True" in str(raised.value)


def test_litellm_on_read_only_media_sends_no_request_for_a_miss(
    tmp_path: Path, read_only_view: Callable[[Path], Path]
) -> None:
    # Real litellm.completion through MnimiCache to the local server, which counts requests.
    import litellm

    from mnimi_adapters.litellm import MnimiCache
    from mnimi_adapters.testing import SamplingServer

    def ask(server: SamplingServer, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        response = litellm.completion(
            model="openai/mock-model", api_base=server.url, api_key="sk-test", messages=messages
        )
        return str(response.choices[0].message.content)

    with SamplingServer(seed=5) as server:
        with MnimiCache(str(tmp_path / "source" / "cache")) as cache:
            stored = ask(server, PROMPT)
        cache.close()
        path = read_only_view(tmp_path / "source") / "cache"
        with MnimiCache(str(path)) as cache:
            assert ask(server, PROMPT) == stored
            for _ in range(2):
                with pytest.raises(StoreReadOnly, match="replication=True"):
                    ask(server, "a prompt never stored")
        cache.close()
        assert len(server.chat_requests()) == 1  # the fill's request alone


# -- recording usage -----------------------------------------------------------------


def test_noting_a_use_never_waits_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    drawn = fill(path, prompts=3)
    with DiskStore(path) as store:
        used = {s.key: s.info["used"] for s in store.summaries()}
    model = Persistent(FailingModel("gpt-4o", 1.0), path)
    writer = sqlite3.connect(path / DBNAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock throughout
    try:
        for prompt, ids in enumerate(drawn):
            assert [s.draw_id for s in islice(model.samples(f"{PROMPT} #{prompt}"), 3)] == ids
        model.close()  # its uses are dropped, the lock being held
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    model = Persistent(FailingModel("gpt-4o", 1.0), path)
    assert [s.draw_id for s in islice(model.samples(f"{PROMPT} #0"), 3)] == drawn[0]
    model.close()  # now written
    with DiskStore(path) as store:
        after = {s.key: s.info["used"] for s in store.summaries()}
    assert sum(after[key] > used[key] for key in used) == 1


# -- Redis -------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis_server_binary()
    server = RedisServer(tmp_path / "redis", options=["--maxmemory-policy", "noeviction"])
    server.start()
    yield server
    server.stop()


@pytest.mark.redis
def test_redis_at_maxmemory_stops_appends_not_replays(redis_server: RedisServer) -> None:
    import redis

    url = redis_server.url()
    (drawn,) = fill(url)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used))
    client.close()
    store = RedisStore(url)
    with pytest.raises(StoreFull) as raised:
        store.append("k", [Sample(text="x" * 100_000)], {"model": "m", "messages": []})
    store.close()
    assert "127.0.0.1" in str(raised.value) and "maxmemory" in str(raised.value)
    assert replay(url, replication=True) == drawn
    assert replay(url, replication=False) == drawn  # its use is noted, and dropped
    code, out, err = run_cli("--json", "verify", url)
    assert code == 0 and json.loads(out)["ok"], err


def set_maxmemory(server: RedisServer, value: int | str) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5) as client:
        client.config_set("maxmemory", str(value))


@pytest.mark.redis
def test_redis_at_maxmemory_refuses_a_miss_before_sending_it(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Law 6: a miss on a full server (noeviction) sent a paid request, then failed to
    store its samples and threw them away. It is refused before, like a read-only disk."""
    from mnimi_adapters import OpenAICompatible
    from mnimi_adapters.core.stores import redis_store
    from mnimi_adapters.testing import SamplingServer

    monkeypatch.setattr(redis_store, "ROOM_TTL", 0.2, raising=False)
    url = redis_server.url() + "?namespace=full"
    with SamplingServer(seed=0) as server:
        model = OpenAICompatible("mock", 1.0, api_base=server.url, api_key="x", alias="mock")
        filled = Persistent(model, url)
        drawn = [s.draw_id for s in islice(filled.samples(PROMPT, batch=2), 2)]
        filled.close()
        server.reset()
        set_maxmemory(redis_server, 1)
        try:
            layer = Persistent(model, url)
            # Hits read as usual: the check runs before a refill only.
            assert [s.draw_id for s in islice(layer.samples(PROMPT), 2)] == drawn
            for miss in (
                lambda: next(layer.sample("A prompt never asked")),
                lambda: list(islice(layer.sample(PROMPT), 3)),  # past the stored end
            ):
                with pytest.raises(StoreFull) as raised:
                    miss()
                assert server.chat_requests() == []  # nothing paid for, nothing thrown away
                message = str(raised.value)
                assert "127.0.0.1" in message and "namespace=full" in message
                assert "maxmemory" in message and "so none was requested" in message
                assert "mnimi prune" in message
            assert server.chat_requests() == []
            assert replay_redis(url, drawn) == drawn
        finally:
            set_maxmemory(redis_server, 0)
        time.sleep(0.25)  # the server's answer is trusted for ROOM_TTL, no longer
        assert len(list(islice(layer.sample("A prompt never asked"), 1))) == 1
        assert len(server.chat_requests()) == 1
        layer.close()


def replay_redis(url: str, drawn: list[str]) -> list[str]:
    model = Persistent(FailingModel("mock", 1.0, alias="mock"), url, replication=True)
    try:
        return [s.draw_id for s in islice(model.samples(PROMPT), len(drawn))]
    finally:
        model.close()


@pytest.mark.redis
def test_redis_room_is_asked_once_per_burst_and_only_of_a_full_noeviction_server(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from mnimi_adapters.core.stores import redis_store

    url = redis_server.url() + "?namespace=room"
    store = RedisStore(url)
    asked: list[float] = []
    info = store._client.info

    def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(time.monotonic())
        return info(*args, **kwargs)

    store._client.info = counted  # type: ignore[method-assign]
    with redis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        used = int(client.info("memory")["used_memory"])
        try:
            # Well under the limit: a miss may go on.
            client.config_set("maxmemory", str(used + 64 * 2**20))
            store.check_writable("store samples of key k")
            # A burst of misses asks the server once.
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda _: store.check_writable("store"), range(64)))
            assert len(asked) == 1
            monkeypatch.setattr(redis_store, "ROOM_TTL", 0.0)  # from here on, ask each time
            # An evicting policy is not judged: the server frees memory for writes.
            client.config_set("maxmemory", "1")
            client.config_set("maxmemory-policy", "volatile-lru")
            store.check_writable("store samples of key k")
            client.config_set("maxmemory-policy", "noeviction")
            with pytest.raises(StoreFull, match="cannot store samples of key k"):
                store.check_writable("store samples of key k")
            # Under the limit, but without room for a burst's samples (1% of it, here).
            client.config_set("maxmemory", str(used + 2000))
            with pytest.raises(StoreFull, match="bytes used of maxmemory"):
                store.check_writable("store samples of key k")
            assert len(asked) == 4
        finally:
            client.config_set("maxmemory", "0")
            client.config_set("maxmemory-policy", "noeviction")
    store.close()


@pytest.mark.redis
def test_a_redis_user_refused_info_still_fills_misses(redis_server: RedisServer) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        client.execute_command("ACL", "SETUSER", "noinfo", "on", ">pw", "~*", "+@all", "-info")
    url = f"redis://noinfo:pw@127.0.0.1:{redis_server.port}/0?namespace=acl"
    with (
        redis.Redis.from_url(url.partition("?")[0]) as limited,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        limited.info("memory")
    model = NumberModel()
    layer = Persistent(model, url)
    assert len(list(islice(layer.samples(PROMPT, batch=2), 2))) == 2
    assert sum(model.calls) == 2
    layer.close()


@pytest.mark.redis
def test_a_redis_server_gone_mid_use(redis_server: RedisServer) -> None:
    url = redis_server.url()
    (drawn,) = fill(url)
    model = Persistent(NumberModel(), url)
    assert [s.draw_id for s in islice(model.samples(f"{PROMPT} #0"), 3)] == drawn
    redis_server.stop()
    with pytest.raises(StoreUnreachable) as raised:
        list(islice(model.samples(f"{PROMPT} #1"), 1))
    assert "127.0.0.1" in str(raised.value) and "server runs" in str(raised.value)
    model.close()  # the uses it noted are dropped, not raised
    code, _, err = run_cli("stats", url)
    assert code == 2 and "unreachable" in err


def test_refused_requests_store_nothing(tmp_path: Path) -> None:
    """Sanity: the edge helpers above replay what fill() stored, with no provider."""
    path = tmp_path / "cache"
    (drawn,) = fill(path)
    assert replay(path, replication=True) == drawn
    with pytest.raises(AssertionError, match="provider was called"):
        Persistent(FailingModel("gpt-4o", 1.0), path).draw(Request.of("other"), 1)


@pytest.mark.redis
def test_a_redis_url_with_its_scheme_in_capitals_is_the_same_store(redis_url: str) -> None:
    scheme, _, rest = redis_url.partition("://")
    (drawn,) = fill(f"{scheme.upper()}://{rest}")
    assert replay(redis_url, replication=True) == drawn
    code, out, _ = run_cli("stats", f"{scheme.capitalize()}://{rest}")
    assert code == 0 and "samples    3" in out


@pytest.mark.redis
@pytest.mark.parametrize(
    ("marker", "error", "says"),
    [("one", CorruptStoreError, "is damaged"), ("2", UnsupportedStoreVersion, "format '2'")],
)
def test_a_redis_format_marker_that_is_no_version_is_damage(
    redis_url: str, marker: str, error: type[StoreError], says: str
) -> None:
    import redis

    fill(redis_url)
    store = RedisStore(redis_url)
    client = redis.Redis.from_url(redis_url.partition("?")[0])
    client.set(f"mnimi:{store.namespace}:format", marker)
    client.close()
    store.close()
    for replication in (True, False):
        with pytest.raises(error, match=says) as raised:
            Persistent(FailingModel("gpt-4o", 1.0), redis_url, replication=replication)
        assert type(raised.value) is error
