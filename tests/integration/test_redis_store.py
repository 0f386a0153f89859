"""The Redis store: same laws as the disk store, against real redis-server processes.

The shared server comes from the ``redis_base_url`` fixture (``$MNIMI_TEST_REDIS_URL``
or a private redis-server); tests that kill or reconfigure a server start their own.
The law suites (tests/test_laws.py, tests/test_concurrency.py) also run over Redis.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import pytest
import workers
from support import (
    FailingModel,
    NumberModel,
    RedisServer,
    drop_namespace,
    free_port,
    need_redis_server_binary,
    run_cli,
    with_namespace,
)

from mnimi_adapters import ReplicationCacheMiss
from mnimi_adapters.core import (
    CorruptStoreError,
    DiskStore,
    Independent,
    Persistent,
    Sample,
    StoreError,
    UnsupportedStoreVersion,
)
from mnimi_adapters.core.stores import RedisStore, open_store, redis_location

pytestmark = pytest.mark.redis

PROMPT = "Choose a number between 1 and 1000."
PASSWORD = "pw-Mnimi-7c1e-secret"
RECORD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "params": {}}


def raw_client(url: str) -> Any:
    """A plain redis client on ``url``'s server, for looking at (or damaging) the data."""
    import redis

    return redis.Redis.from_url(url.partition("?")[0], socket_timeout=5)


def prefix(url: str) -> str:
    return f"mnimi:{RedisStore(url).namespace}:"


def samples(count: int, tag: str = "s") -> list[Sample]:
    return [
        Sample(text=f"{tag} {i}", usage={"prompt_tokens": 3, "completion_tokens": 2}, cost=0.001)
        for i in range(count)
    ]


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore(redis_url) as opened:
        yield opened


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server that keeps every acknowledged write (AOF, fsync always), with a password."""
    need_redis_server_binary()
    server = RedisServer(
        tmp_path / "durable",
        options=["--appendonly", "yes", "--appendfsync", "always", "--requirepass", PASSWORD],
    )
    server.start()
    yield server
    server.stop()


# -- the store ----------------------------------------------------------------------------


def test_append_reads_and_record(store: RedisStore) -> None:
    first = samples(3)
    added = store.append("k", [*first, first[0]], RECORD)
    assert added == first and added.start == 0  # a repeat within one call
    assert store.append("k", first, {"model": "other"}) == []  # law 3: never twice
    more = samples(2, "more")
    added = store.append("k", more, RECORD)
    assert added == more and added.start == 3  # where they went: read back from memory
    assert store.length("k") == 5
    assert [store.get("k", i) for i in range(5)] == [*first, *more]
    assert store.get("k", 5) is None and store.get("other", 0) is None
    assert store.read("k", 4) == more[1]  # a sample, or past the end the length:
    assert store.read("k", 5) == 5 and store.read("other", 0) == 0
    assert store.has_draw("k", first[1].draw_id) and not store.has_draw("k", "nope")
    info = store.info("k")
    assert info is not None
    assert info["request"] == RECORD  # the first append's record is kept
    assert info["length"] == 5
    assert (info["prompt_tokens"], info["completion_tokens"]) == (15, 10)
    assert info["cost"] == pytest.approx(0.005)
    assert info["bytes"] == sum(len(json.dumps(s.to_dict())) for s in [*first, *more])
    assert info["stored"] == info["used"] and time.time() - info["stored"] < 60
    assert store.info("nothing") is None and store.length("nothing") == 0
    assert list(store.keys()) == ["k"]


def test_values_are_json_and_the_record_is_kept_verbatim(store: RedisStore, redis_url: str) -> None:
    record = {
        "model": "m",
        "messages": [{"role": "user", "content": 'Ünïcode ✓ / \\ "quoted"'}],
        "params": {"stop": [], "tools": [], "temperature": 0.7, "seed": 2**60},
    }
    sample = Sample(text="ß", message={"role": "assistant", "content": "ß"}, usage={})
    store.append("k", [sample], record)
    assert store.info("k")["request"] == record  # type: ignore[index]  # empty lists stay lists
    client = raw_client(redis_url)
    stored = client.hget(prefix(redis_url) + "s:k", "0").decode()
    assert json.loads(stored) == sample.to_dict()  # JSON text, never a pickle
    assert client.type(prefix(redis_url) + "s:k") == b"hash"  # sample i: one HGET
    client.close()


def test_touch_and_delete_are_per_sequence(store: RedisStore, redis_url: str) -> None:
    store.append("k", samples(2), RECORD)
    store.append("other", samples(1), RECORD)
    before = store.info("k")["used"]  # type: ignore[index]
    time.sleep(0.01)
    with RedisStore(redis_url) as reader:
        reader.touch("k")
        assert store.info("k")["used"] == before  # type: ignore[index]  # noted, not written
    assert store.info("k")["used"] > before  # type: ignore[index]  # written at close
    store.touch("never-written")
    store.flush()
    assert store.info("never-written") is None  # touching creates nothing
    store.delete("k")
    assert store.length("k") == 0 and store.info("k") is None and store.get("k", 0) is None
    assert not store.has_draw("k", "x")
    assert list(store.keys()) == ["other"]
    assert sorted(store.names()) == ["d:other", "format", "keys", "m:other", "s:other"]


def test_namespaces_isolate(redis_url: str) -> None:
    a = RedisStore(redis_url)
    other = with_namespace(redis_url, a.namespace + "-b")
    b = RedisStore(other)
    try:
        a.append("k", samples(2, "a"), RECORD)
        b.append("k", samples(1, "b"), RECORD)
        assert (a.length("k"), b.length("k")) == (2, 1)
        assert a.get("k", 0).text == "a 0" and b.get("k", 0).text == "b 0"  # type: ignore[union-attr]
        b.delete("k")
        assert a.length("k") == 2 and list(b.keys()) == []
        assert a.location.endswith(f"?namespace={a.namespace}")
    finally:
        drop_namespace(other)


def test_an_unknown_query_parameter_is_named_in_the_url_as_typed(redis_url: str) -> None:
    """The message showed the URL the store rebuilt (``?namespace=default``), not the one
    with the misspelt parameter; a password stays hidden, in the user part or the query."""
    base = redis_url.partition("?")[0].replace("redis://", f"redis://user:{PASSWORD}@", 1)
    with pytest.raises(StoreError, match="unknown query parameter 'nmespace'") as raised:
        RedisStore(f"{base}?nmespace=x&password={PASSWORD}")
    assert "?nmespace=x&password=***" in str(raised.value) and PASSWORD not in str(raised.value)


def test_url_forms_and_namespace_rules() -> None:
    assert (
        redis_location("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0?namespace=default"
    )
    assert (
        redis_location(f"redis://user:{PASSWORD}@h:1/2?socket_timeout=1&namespace=p&password=x")
        == "redis://user:***@h:1/2?namespace=p"
    )
    assert redis_location("unix:///run/redis.sock?db=1&namespace=p") == (
        "unix:///run/redis.sock?namespace=p"
    )
    for bad in ("a:b", "*", "", "x" * 101, "a b"):
        with pytest.raises(StoreError, match="namespace"):
            RedisStore(f"redis://127.0.0.1:1/0?namespace={bad}")
    with pytest.raises(StoreError, match="once"):
        RedisStore("redis://127.0.0.1:1/0?namespace=a&namespace=b")


def test_format_marker(store: RedisStore, redis_url: str) -> None:
    store.append("k", samples(1), RECORD)
    client = raw_client(redis_url)
    marker = prefix(redis_url) + "format"
    assert client.get(marker) == b"1"
    client.set(marker, "2")
    with pytest.raises(UnsupportedStoreVersion, match="format '2'"):
        RedisStore(redis_url)
    with pytest.raises(UnsupportedStoreVersion):
        store.append("k", samples(1), RECORD)
    client.delete(marker)
    with pytest.raises(StoreError, match="no format marker"):
        RedisStore(redis_url)
    # A server that lost its data under a running store: a clear error, nothing written.
    with pytest.raises(StoreError, match=r"format marker .* is gone"):
        store.append("k", samples(1), RECORD)
    assert store.length("k") == 1
    client.close()


def test_a_foreign_key_type_is_damage_and_nothing_is_half_written(
    store: RedisStore, redis_url: str
) -> None:
    store.append("k", samples(1), RECORD)
    client = raw_client(redis_url)
    client.delete(prefix(redis_url) + "s:k")
    client.set(prefix(redis_url) + "s:k", "not a hash")
    with pytest.raises(CorruptStoreError, match="wrong type"):
        store.append("k", samples(2), RECORD)
    # The script failed before its first write: no draw index, no record change.
    assert client.hlen(prefix(redis_url) + "d:k") == 1
    assert store.info("k")["length"] == 1  # type: ignore[index]
    client.close()


def test_missing_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` now fails
    with pytest.raises(StoreError) as refused:
        open_store("redis://127.0.0.1:6379/0")
    # Commands that work today: the package is installed from a checkout, not an index.
    assert 'pip install "redis>=5"' in str(refused.value)
    assert 'pip install -e ".[redis]"' in str(refused.value)


def test_closed_store_reconnects(store: RedisStore) -> None:
    store.append("k", samples(1), RECORD)
    store.close()
    assert store.length("k") == 1


# -- failures -----------------------------------------------------------------------------


def test_unreachable_server_fails_fast_without_the_password() -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0?namespace=proj"
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        Persistent(NumberModel(), url)
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert f"cannot open the cache at redis://:***@127.0.0.1:{port}/0?namespace=proj" in message
    assert "unreachable" in message and "Connection refused" in message
    assert PASSWORD not in message
    code, out, err = run_cli("stats", url)
    assert code == 2 and "unreachable" in err and PASSWORD not in out + err


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            RedisStore(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2")
        assert time.monotonic() - started < 3


def test_eviction_of_single_keys_is_refused(tmp_path: Path) -> None:
    need_redis_server_binary()
    server = RedisServer(tmp_path / "lru", options=["--maxmemory-policy", "allkeys-lru"]).start()
    try:
        with pytest.raises(StoreError, match="allkeys-lru"):
            RedisStore(server.url())
    finally:
        server.stop()


def test_server_restart_mid_run(durable: RedisServer) -> None:
    url = with_namespace(durable.url(PASSWORD), "restart")
    layer = Independent(Persistent(NumberModel(), url))
    first = [next(layer.samples(PROMPT, batch=2)) for _ in range(5)]
    assert first[0].origin is not None
    key = first[0].origin["key"]
    store = RedisStore(url)
    assert store.length(key) >= 5

    durable.kill()
    started = time.monotonic()
    errors = []
    for attempt in (
        lambda: store.get(key, 0),
        lambda: store.append(key, samples(1), RECORD),
        # A prompt never read: a position a refill drew ahead is served from memory.
        lambda: next(layer.samples("A prompt never read")),
        lambda: RedisStore(url),
    ):
        with pytest.raises(StoreError) as raised:
            attempt()
        errors.append(str(raised.value))
    assert time.monotonic() - started < 5, "a dead server must fail a run fast"
    shown = f"redis://:***@127.0.0.1:{durable.port}/0?namespace=restart"
    assert all(shown in message and PASSWORD not in message for message in errors)
    assert f"lost the Redis server at {shown} while reading sample #0" in errors[0]
    assert "while appending" in errors[1]

    durable.start()  # same port, same data directory: the AOF is replayed
    length = store.length(key)
    assert [store.get(key, i).draw_id for i in range(5)] == [s.draw_id for s in first]  # type: ignore[union-attr]
    # The same store and layer go on where they were: the pool reconnects.
    more = [next(layer.samples(PROMPT)) for _ in range(3)]
    assert all(s.origin is not None and s.origin["index"] >= 5 for s in more)
    assert store.length(key) > length
    ids = [store.get(key, i).draw_id for i in range(store.length(key))]  # type: ignore[union-attr]
    assert len(set(ids)) == len(ids)
    assert run_cli("verify", url)[0] == 0


def test_acknowledged_appends_survive_a_server_crash(durable: RedisServer) -> None:
    url = with_namespace(durable.url(PASSWORD), "crash")
    acknowledged: list[list[str]] = [[], []]
    failures: list[str] = []

    def writer(mine: list[str]) -> None:
        store = RedisStore(url)
        while True:
            sample = Sample(text="x" * 500)
            try:
                store.append("k", [sample], RECORD)
            except StoreError as error:
                failures.append(str(error))
                return
            mine.append(sample.draw_id)

    threads = [threading.Thread(target=writer, args=(mine,)) for mine in acknowledged]
    for thread in threads:
        thread.start()
    while sum(map(len, acknowledged)) < 200:
        time.sleep(0.01)
    durable.kill()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a writer hangs on a dead server"
    assert len(failures) == 2 and all(PASSWORD not in f for f in failures)

    durable.start()
    store = RedisStore(url)
    length = store.length("k")
    stored = [store.get("k", i) for i in range(length)]
    ids = [s.draw_id for s in stored if s is not None]
    assert len(ids) == length == len(set(ids)), "no gap, no torn entry, no sample twice"
    # Every append the server acknowledged survived (at most the two in flight are extra).
    assert {d for mine in acknowledged for d in mine} <= set(ids)
    assert length - sum(map(len, acknowledged)) in (0, 1, 2)
    assert store.info("k")["length"] == length  # type: ignore[index]
    assert run_cli("verify", url)[0] == 0


# -- concurrency --------------------------------------------------------------------------


def test_eight_processes_append_to_one_key(redis_url: str) -> None:
    processes, rounds = 8, 150
    contested = [f"contested-{i}" for i in range(40)]
    start_at = time.time() + 1.5  # every process has imported and connected by then
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        added = pool.starmap(
            workers.append_contested,
            [(redis_url, "k", w, rounds, contested, start_at) for w in range(processes)],
        )
    every = [draw for mine in added for draw in mine]
    assert len(every) == len(set(every)), "a draw added by two appends"
    own = {f"w{w}-{r}" for w in range(processes) for r in range(rounds)}
    assert set(every) == own | set(contested), "an append lost"

    store = RedisStore(redis_url)
    length = store.length("k")
    assert length == len(own) + len(contested)
    raw = store.raw_sequence("k")
    assert sorted(raw.samples, key=int) == [str(i) for i in range(length)], "indices contiguous"
    ids = [json.loads(raw.samples[str(i)])["draw_id"] for i in range(length)]
    assert sorted(ids) == sorted(every)
    assert {draw: int(index) for draw, index in raw.draws.items()} == {
        draw: index for index, draw in enumerate(ids)
    }
    owners = [draw.split("-")[0] for draw in ids if draw.startswith("w")]
    switches = sum(a != b for a, b in pairwise(owners))
    assert switches > len(owners) // 10, "the processes did not append concurrently"
    for w in range(processes):  # each process's own appends keep their order
        mine = [i for i, draw in enumerate(ids) if draw.startswith(f"w{w}-")]
        assert [ids[i] for i in mine] == [f"w{w}-{r}" for r in range(rounds)]
    info = store.info("k")
    assert info is not None and info["length"] == length
    assert info["bytes"] == sum(len(v) for v in raw.samples.values())  # type: ignore[misc]
    assert run_cli("verify", redis_url)[0] == 0


# -- layers and adapters --------------------------------------------------------------------


def test_persistent_replays_and_replication_misses(redis_url: str) -> None:
    recorder = Persistent(NumberModel(), redis_url)
    recorded = list(islice(recorder.sample(PROMPT, batch=2), 3))
    assert list(islice(Persistent(NumberModel(), redis_url).sample(PROMPT), 3)) == recorded
    assert repr(recorder) == f"Persistent({recorder.inner!r}, {redis_location(redis_url)!r})"

    replica = Persistent(FailingModel("gpt-4o", 1.0), redis_url, replication=True)
    items = replica.sample(PROMPT)
    cached = RedisStore(redis_url).length(next(iter(RedisStore(redis_url).keys())))
    assert list(islice(items, cached)) == list(islice(recorder.sample(PROMPT), cached))
    with pytest.raises(ReplicationCacheMiss) as miss:
        next(items)
    assert (miss.value.cached, miss.value.index) == (cached, cached)
    with pytest.raises(ReplicationCacheMiss):
        next(replica.sample("Never recorded"))


def test_slicing_from_disk_into_redis(tmp_path: Path, redis_url: str) -> None:
    """Law 4 across stores: Persistent(Persistent(m, disk), redis) keeps the used prefix."""
    base = Persistent(NumberModel(), tmp_path / "base")
    everything = list(islice(base.samples(PROMPT, batch=5), 5))
    sliced = Persistent(base, redis_url)
    used = list(islice(sliced.samples(PROMPT), 3))
    assert [s.draw_id for s in used] == [s.draw_id for s in everything[:3]]
    store = RedisStore(redis_url)
    (key,) = store.keys()
    assert (
        [store.get(key, i).draw_id for i in range(store.length(key))]
        == [  # type: ignore[union-attr]
            s.draw_id for s in everything[:3]
        ]
    )


@pytest.fixture(scope="module")
def sampling_server() -> Iterator[Any]:
    from mnimi_adapters.testing import SamplingServer

    with SamplingServer(seed=5) as running:
        yield running


def test_a_burst_of_misses_pays_for_what_it_asked(sampling_server: Any, redis_url: str) -> None:
    """An append says where it wrote, so concurrent misses plan from it: a burst with
    failures paid for up to 47 samples where it asked for 20."""
    from mnimi_adapters import OpenAICompatible

    sampling_server.reset()
    sampling_server.latency = 0.03
    sampling_server.fail_next(500, count=2)
    model = OpenAICompatible(
        "mock-model", 1.0, api_base=sampling_server.url, api_key="k", max_batch=2
    )
    scoped = Independent(Persistent(model, redis_url))

    async def burst() -> list[list[Any]]:
        counts = (3, 1, 2, 5, 1, 3, 1, 4)
        calls = [scoped.adraw(f"{PROMPT} ({i % 2})", n) for i, n in enumerate(counts)]
        return await asyncio.gather(*calls)

    try:
        drawn = [s.draw_id for samples in asyncio.run(burst()) for s in samples]
    finally:
        sampling_server.latency = 0.0
    paid = sum(r.body.get("n", 1) for r in sampling_server.chat_requests() if r.status == 200)
    assert len(set(drawn)) == len(drawn) == 20 and paid == 20


def test_chat_model_with_a_redis_cache_dir(sampling_server: Any, redis_url: str) -> None:
    from mnimi_adapters import independent
    from mnimi_adapters.langchain import MnimiChatModel

    sampling_server.reset()

    def chat(**extra: Any) -> MnimiChatModel:
        params: dict[str, Any] = {
            "model": "openai/mock-model",
            "api_base": sampling_server.url,
            "api_key": "sk-test",
            "cache_dir": redis_url,
        }
        return MnimiChatModel(**{**params, **extra})

    first = chat().invoke(PROMPT).content
    assert chat().invoke(PROMPT).content == first  # another model, same Redis cache
    assert len(sampling_server.chat_requests()) == 1
    with independent():
        model = chat()
        drawn = [model.invoke(PROMPT).content for _ in range(3)]
    assert drawn[0] == first and len(set(drawn)) == 3
    assert chat(replication=True, api_key=None).invoke(PROMPT).content == first
    with pytest.raises(ReplicationCacheMiss):
        chat(replication=True).invoke("Never recorded")
    code, out, _ = run_cli("stats", redis_url)
    assert code == 0 and "mock-model" in out


def test_litellm_cache_with_a_redis_path(sampling_server: Any, redis_url: str) -> None:
    import litellm

    from mnimi_adapters.litellm import MnimiCache

    sampling_server.reset()

    def call() -> str:
        response = litellm.completion(
            model="openai/mock-model",
            api_base=sampling_server.url,
            api_key="sk-test",
            messages=[{"role": "user", "content": PROMPT}],
        )
        return str(response.choices[0].message.content)

    with MnimiCache(path=redis_url) as cache:
        first = call()
        assert call() == first
    cache.close()
    assert len(sampling_server.chat_requests()) == 1
    with MnimiCache(path=redis_url, replication=True) as replica:
        assert call() == first
        assert PASSWORD not in repr(replica)
    replica.close()


# -- the mnimi command ----------------------------------------------------------------------


@pytest.fixture
def filled(redis_url: str) -> str:
    """Two sequences drawn through Persistent: gpt-4o x3, llama3 x2."""
    for model, count in (("gpt-4o", 3), ("llama3", 2)):
        layer = Persistent(NumberModel(model), redis_url)
        list(islice(layer.sample(f"{model} says", batch=count), count))
        time.sleep(0.01)  # distinct `used` times: a known LRU order
    return redis_url


def test_cli_stats_show_and_verify(filled: str) -> None:
    code, out, err = run_cli("stats", filled)
    assert code == 0, err
    assert f"cache      {redis_location(filled)} (format 1)" in out
    assert "samples    5" in out and "in Redis memory" in out
    code, out, _ = run_cli("--json", "stats", filled)
    data = json.loads(out)
    assert (data["keys"], data["samples"], data["disk_bytes"]) == (2, 5, None)
    assert data["memory_bytes"] > data["bytes"] > 0
    code, out, _ = run_cli("show", filled)
    assert code == 0 and "llama3" in out.splitlines()[1]  # most recently used first
    key = json.loads(run_cli("--json", "show", filled, "--grep", "llama3")[1])["keys"][0]["key"]
    code, out, _ = run_cli("--json", "show", filled, key[:8])
    assert code == 0 and json.loads(out)["length"] == 2
    code, out, _ = run_cli("verify", filled)
    assert (code, out.strip()) == (0, "ok: 2 keys, 5 samples")


def test_cli_on_a_namespace_without_a_cache(redis_url: str) -> None:
    code, _, err = run_cli("stats", redis_url)
    assert code == 2 and f"no cache at {redis_location(redis_url)}" in err
    code, _, err = run_cli("verify", redis_url)
    assert code == 2 and "no cache" in err
    assert list(RedisStore(redis_url, check_format=False).names()) == []  # nothing created


def test_cli_verify_finds_damage(filled: str) -> None:
    store = RedisStore(filled)
    keys = sorted(store.keys(), key=lambda k: store.length(k))
    short, long = keys  # llama3 x2, gpt-4o x3
    client = raw_client(filled)
    p = prefix(filled)
    client.hset(p + f"s:{long}", "1", "{not json")
    client.hdel(p + f"s:{short}", "1")  # a gap
    client.hset(p + f"d:{short}", "stray-draw", "7")
    client.srem(p + "keys", long)
    client.set(p + "junk", "x")
    code, out, _ = run_cli("--json", "verify", filled)
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    problems = {(p["key"], p["problem"].split(" (")[0]) for p in report["problems"]}
    assert (long, "sample #1 is not valid JSON") in problems
    assert (short, "missing sample #1 of 2") in problems
    assert (short, "the draw index of stray-draw points at #7: no sample") in problems
    assert (long, "missing from the key index: listings and prune miss it") in problems
    assert (None, "unexpected key") in problems
    client.close()


def test_cli_prune_and_export_both_ways(filled: str, tmp_path: Path, redis_base_url: str) -> None:
    # Redis -> directory, and that directory -> another Redis namespace.
    out = tmp_path / "exported"
    code, _, err = run_cli("export", filled, str(out), "--grep", "says")
    assert code == 0, err
    source = RedisStore(filled)
    with DiskStore(out) as disk:
        for key in list(source.keys()):
            assert [disk.get(key, i) for i in range(disk.length(key))] == [
                source.get(key, i) for i in range(source.length(key))
            ]
    back = with_namespace(redis_base_url, f"{source.namespace}-back")
    try:
        code, stdout, err = run_cli("export", str(out), back, "--grep", "says")
        assert code == 0, err
        assert f"to {redis_location(back)}" in stdout
        target = RedisStore(back)
        for key in list(source.keys()):
            assert [target.get(key, i) for i in range(target.length(key))] == [
                source.get(key, i) for i in range(source.length(key))
            ]
        assert run_cli("verify", back)[0] == 0
        code, _, err = run_cli("export", back, back, "--grep", "says")
        assert code == 2 and "differ" in err
    finally:
        drop_namespace(back)
    # prune: the least recently used sequence (gpt-4o) goes first, whole.
    code, out_text, err = run_cli("--json", "prune", filled, "--max-size", "1")
    assert code == 0, err
    assert [r["model"] for r in json.loads(out_text)["removed"]] == ["gpt-4o", "llama3"]
    assert list(source.keys()) == []
    assert sorted(source.names()) == ["format"]  # Redis drops the emptied key index


def test_cli_messages_never_show_the_password(durable: RedisServer) -> None:
    url = with_namespace(durable.url(PASSWORD), "cli")
    Persistent(NumberModel(), url)
    for argv in (("stats", url), ("show", url), ("verify", url), ("--json", "stats", url)):
        code, out, err = run_cli(*argv)
        assert code == 0, err
        assert PASSWORD not in out + err
    wrong = with_namespace(durable.url("wrong-" + PASSWORD), "cli")
    code, out, err = run_cli("stats", wrong)
    assert code == 2 and PASSWORD not in out + err
    assert f"Redis at redis://:***@{durable.address}/0?namespace=cli refused the login" in err
    code, out, err = run_cli("stats", with_namespace(durable.url(), "cli"))  # no password
    assert code == 2 and "refused the login" in err


@pytest.mark.skipif(os.name != "posix", reason="unix sockets")
def test_unix_socket_url(tmp_path: Path) -> None:
    need_redis_server_binary()
    path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", options=["--unixsocket", str(path)]).start()
    try:
        url = f"unix://{path}?db=0&namespace=sock"
        layer = Persistent(NumberModel(), url)
        assert next(layer.sample(PROMPT)) == next(Persistent(NumberModel(), url).sample(PROMPT))
        assert layer.store.location == f"unix://{path}?namespace=sock"
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_adapters_never_show_a_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.load import dumps, loads

    from mnimi_adapters.langchain import MnimiChatModel
    from mnimi_adapters.litellm import MnimiCache

    url = f"redis://:{PASSWORD}@127.0.0.1:6379/0?namespace=p"
    chat = MnimiChatModel(model="openai/x", cache_dir=url)
    shown = "redis://:***@127.0.0.1:6379/0?namespace=p"
    # Invocation params reach callbacks and tracers; repr reaches logs.
    assert chat._get_invocation_params()["cache_dir"] == shown
    assert shown in repr(chat) and PASSWORD not in repr(chat)
    serialised = dumps(chat)
    assert PASSWORD not in serialised and "MNIMI_CACHE_DIR" in serialised
    monkeypatch.setenv("MNIMI_CACHE_DIR", url)
    loaded = loads(
        serialised,
        valid_namespaces=["mnimi_adapters"],
        secrets_from_env=True,
        allowed_objects=[MnimiChatModel],
    )
    assert loaded.cache_dir == url
    assert "MNIMI_CACHE_DIR" not in dumps(MnimiChatModel(model="openai/x", cache_dir="~/c"))
    cache = MnimiCache(f"redis://127.0.0.1:6379/0?password={PASSWORD}")
    assert PASSWORD not in repr(cache)
