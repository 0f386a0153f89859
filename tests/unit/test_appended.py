"""An append says where it wrote, so a miss reads the store no more than it must."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import Independent, Persistent
from mnimi_adapters.core.errors import CorruptStoreError
from mnimi_adapters.core.layers import CacheLayer
from mnimi_adapters.core.request import Request, request_record
from mnimi_adapters.core.sample import Sample
from mnimi_adapters.core.stores import (
    Appended,
    Batched,
    DiskStore,
    MemoryStore,
    ReadThroughStore,
    SequenceStore,
)


class CountingStore(ReadThroughStore):
    """A read-through store that counts what reaches the store under it."""

    def __init__(self, inner: SequenceStore) -> None:
        super().__init__(inner)
        self.reads: Counter[str] = Counter()
        inner_get, inner_length, inner_read = inner.get, inner.length, inner.read

        def get(key: str, index: int) -> Sample | None:
            self.reads["get"] += 1
            return inner_get(key, index)

        def length(key: str) -> int:
            self.reads["length"] += 1
            return inner_length(key)

        def read(key: str, index: int) -> Sample | int:
            self.reads["read"] += 1
            return inner_read(key, index)

        inner.get, inner.length, inner.read = get, length, read  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_an_append_names_the_position_of_its_first_sample(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else DiskStore(tmp_path)
    first = store.append("k", [Sample(text="a"), Sample(text="b")], {"model": "m"})
    again = store.append("k", [first[0], Sample(text="c")], {"model": "m"})
    assert isinstance(first, Appended) and (first.start, first.end) == (0, 2)
    assert [s.text for s in again] == ["c"] and (again.start, again.end) == (2, 3)
    assert store.get("k", 2) == again[0]


@pytest.mark.parametrize("kind", ["memory", "disk", "read-through"])
def test_a_read_gives_the_sample_or_past_the_end_the_length(kind: str, tmp_path: Path) -> None:
    store: SequenceStore = MemoryStore() if kind == "memory" else DiskStore(tmp_path)
    if kind == "read-through":
        store = ReadThroughStore(store)
    added = store.append("k", [Sample(text="a"), Sample(text="b")], {"model": "m"})
    assert store.read("k", 1) == added[1] and store.read("k", 0) == added[0]
    assert store.read("k", 2) == 2 and store.read("k", 9) == 2 and store.read("other", 0) == 0


def test_a_read_names_a_damaged_length(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.append("k", [Sample(text="a")], {"model": "m"})
    store._cache.set("n:k", "three")  # type: ignore[union-attr]
    with pytest.raises(CorruptStoreError, match="n:k"):
        store.read("k", 1)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_miss_reads_the_store_once(tmp_path: Path, is_async: bool) -> None:
    store = CountingStore(DiskStore(tmp_path))
    layer = Independent(CacheLayer(NumberModel(), store))
    if is_async:
        drawn = asyncio.run(layer.adraw("Pick a number", 1))
    else:
        drawn = layer.draw("Pick a number", 1)
    # The position and the length in one read; the sample drawn is served from the
    # copy the append left, not read back.
    assert store.reads == Counter(read=1)
    assert drawn[0].origin is not None and drawn[0].origin["cache_hit"] is False


def test_a_refill_ended_since_the_read_makes_the_plan_read_the_length_again(
    tmp_path: Path,
) -> None:
    store = CountingStore(DiskStore(tmp_path))
    layer = CacheLayer(NumberModel(), store)
    request = Request.of("Pick a number")
    key = layer.key_of(request)
    ended = layer.refills_ended
    read = store.read(key, 0)
    assert read == 0
    layer.draw(request, 1)  # another caller fills position 0 meanwhile
    store.reads.clear()
    layer.extend(request, key, 0, 1, (read, ended))
    # Planned on the stale length, position 0 would have been drawn a second time.
    assert store.reads["length"] == 1 and store.length(key) == 1


def test_positions_still_come_from_the_store_when_it_does_not_say(tmp_path: Path) -> None:
    class Silent(MemoryStore):
        def append(self, *args: object, **kwargs: object) -> Appended:
            return Appended(super().append(*args, **kwargs))  # type: ignore[arg-type]

    model = Persistent(NumberModel(), tmp_path / "c")
    layer = Independent(CacheLayer(model, Silent()))
    texts = [layer.draw("Pick", 1)[0].text for _ in range(3)]
    assert texts == [s.text for s in Independent(model).draw("Pick", 3)]


@pytest.mark.parametrize("row, value", [("n:bad", "three"), ("m:bad", "{}")])
def test_a_batch_of_appends_fails_only_the_damaged_one(
    tmp_path: Path, row: str, value: str
) -> None:
    store = DiskStore(tmp_path)
    store.append("bad", [Sample(text="x")], {"model": "m"})
    store._cache.set(row, value)  # type: ignore[union-attr]
    with pytest.raises(CorruptStoreError, match=row):
        store.append("bad", [Sample(text="y")], {"model": "m"})
    good, bad, other = store.append_many(
        [
            ("good", [Sample(text="a")], {"model": "m"}),
            ("bad", [Sample(text="b")], {"model": "m"}),
            ("good", [Sample(text="c"), Sample(text="d")], {"model": "m"}),
        ]
    )
    assert isinstance(bad, CorruptStoreError)
    assert isinstance(good, Appended) and isinstance(other, Appended)
    assert (good.start, other.start, other.end) == (0, 1, 3)
    assert [store.get("good", i).text for i in range(3)] == ["a", "c", "d"]  # type: ignore[union-attr]
    assert store.get("bad", 1) is None


def test_appends_to_one_key_in_a_batch_each_get_what_they_added(tmp_path: Path) -> None:
    """Written as one append, they answer as appends one after the other would."""
    store = DiskStore(tmp_path)
    record = {"model": "m", "messages": []}
    store.append("k", [Sample(text="held", draw_id="h")], record)
    a, b, c = Sample(text="a", draw_id="a"), Sample(text="b", draw_id="b"), Sample(text="c")
    first, repeated, last = store.append_many(
        [
            ("k", [Sample(text="again", draw_id="h"), a, b], record),
            ("k", [Sample(text="b again", draw_id="b")], record),  # law 3
            ("k", [c], record),
        ]
    )
    assert (list(first), first.start) == ([a, b], 1)
    assert (list(repeated), repeated.start) == ([], 3)
    assert (list(last), last.start) == ([c], 3)
    assert [store.get("k", i).text for i in range(4)] == ["held", "a", "b", "c"]  # type: ignore[union-attr]
    assert store.length("k") == 4 and store.check().problems == []


def test_concurrent_misses_land_together_and_each_gets_its_own_sample(tmp_path: Path) -> None:
    batches: list[int] = []

    class Batching(ReadThroughStore):
        def append_many(self, batch: Sequence[Batched]) -> list[Appended | Exception]:
            # Samples, not appends: a call woken by another's refill that has yet to plan
            # again is not pending, so the next call's refill may draw for both.
            batches.append(sum(len(samples) for _, samples, _ in batch))
            return super().append_many(batch)

    layer = CacheLayer(NumberModel(), Batching(DiskStore(tmp_path)))
    scoped = Independent(layer)

    async def many() -> list[str]:
        drawn = await asyncio.gather(*(scoped.adraw(f"Prompt {i % 3}", 1) for i in range(30)))
        return [samples[0].draw_id for samples in drawn]

    draw_ids = asyncio.run(many())
    assert len(set(draw_ids)) == 30
    assert sum(batches) == 30  # every refill landed ...
    assert len(batches) < 30  # ... and some of them together
    assert sum(layer.store.length(k.key) for k in layer.store.summaries()) == 30


def test_a_batch_left_pending_on_another_loop_does_not_stall_the_next() -> None:
    """What a forked child inherits mid-turn: a batch whose loop stayed with the parent."""
    from mnimi_adapters.core.layers import _Landings

    store = MemoryStore()
    landings = _Landings(store)
    parents = asyncio.new_event_loop()
    try:
        landings._pending = [(("left", [Sample(text="p")], {}), parents.create_future())]
        landings._loop = parents

        async def land() -> Appended:
            return await landings.land("child", [Sample(text="c")], {"model": "m"})

        added = asyncio.run(asyncio.wait_for(land(), 5))
    finally:
        parents.close()
    assert [s.text for s in added] == ["c"] and added.start == 0
    assert store.length("left") == 0  # the parent's batch is the parent's to write


class SlowNumbers(NumberModel):
    """Answers after a while (async), so that refills stay in flight."""

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        await asyncio.sleep(0.3)
        return list(self.query(request, n))


def test_a_burst_of_misses_reads_the_store_once(tmp_path: Path) -> None:
    """While refills of a key are in flight, a position past them is a miss without a read."""
    store = CountingStore(DiskStore(tmp_path))
    layer = Independent(CacheLayer(SlowNumbers(), store))

    async def burst() -> list[str]:
        drawn = await asyncio.gather(*(layer.adraw("Pick a number", 1) for _ in range(20)))
        return [samples[0].draw_id for samples in drawn]

    draw_ids = asyncio.run(burst())
    assert len(set(draw_ids)) == 20
    assert store.reads["read"] == 1  # the first call's; the other 19 knew it was a miss
    assert store.length(CacheLayer(NumberModel(), store).key_of(Request.of("Pick a number"))) == 20


def test_a_burst_sees_what_another_process_appends_meanwhile(tmp_path: Path) -> None:
    """Each call still gets the sample at its own position, and every paid one is kept."""
    model = SlowNumbers()
    layer = CacheLayer(model, ReadThroughStore(DiskStore(tmp_path)))
    request = Request.of("Pick a number")
    key = layer.key_of(request)
    scoped = Independent(layer)

    async def burst() -> list[list[Sample]]:
        calls = [asyncio.ensure_future(scoped.adraw("Pick a number", 1)) for _ in range(3)]
        await asyncio.sleep(0.1)  # the refills are in flight: another process appends
        with DiskStore(tmp_path) as other:
            other.append(key, [Sample(text="theirs")], request_record(layer.identity(), request))
        await asyncio.sleep(0.05)
        calls.append(asyncio.ensure_future(scoped.adraw("Pick a number", 1)))  # reads #3
        return list(await asyncio.gather(*calls))

    drawn = [samples[0] for samples in asyncio.run(burst())]
    with DiskStore(tmp_path) as store:
        stored = [store.get(key, i) for i in range(store.length(key))]
    assert [s.draw_id for s in drawn] == [s.draw_id for s in stored[:4]]  # type: ignore[union-attr]
    assert len(stored) == sum(model.calls) + 1 and store_check_clean(tmp_path)


def store_check_clean(path: Path) -> bool:
    with DiskStore(path) as store:
        return store.check().problems == []


def test_a_burst_over_a_store_that_does_not_say_where_it_wrote_pays_no_more(
    tmp_path: Path,
) -> None:
    """Without positions from its appends the layer asks the store, rather than plan from
    a length its refills have moved past (Redis did that, and paid up to twice over)."""

    class Silent(MemoryStore):
        def append(self, *args: object, **kwargs: object) -> Appended:
            return Appended(super().append(*args, **kwargs))  # type: ignore[arg-type]

    model = SlowNumbers(max_batch=2)
    scoped = Independent(CacheLayer(model, Silent()))

    async def burst() -> list[list[Sample]]:
        counts = (3, 1, 2, 5, 1, 3, 1, 4)
        return list(await asyncio.gather(*(scoped.adraw("Pick", n) for n in counts)))

    drawn = [s.draw_id for samples in asyncio.run(burst()) for s in samples]
    assert len(set(drawn)) == len(drawn) == 20 and sum(model.calls) == 20
