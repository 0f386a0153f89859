"""An append says where it wrote, so a miss reads the store no more than it must."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import Independent, Persistent
from mnimi_adapters.core.layers import CacheLayer
from mnimi_adapters.core.sample import Sample
from mnimi_adapters.core.stores import (
    Appended,
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
        inner_get, inner_length = inner.get, inner.length

        def get(key: str, index: int) -> Sample | None:
            self.reads["get"] += 1
            return inner_get(key, index)

        def length(key: str) -> int:
            self.reads["length"] += 1
            return inner_length(key)

        inner.get, inner.length = get, length  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_an_append_names_the_position_of_its_first_sample(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else DiskStore(tmp_path)
    first = store.append("k", [Sample(text="a"), Sample(text="b")], {"model": "m"})
    again = store.append("k", [first[0], Sample(text="c")], {"model": "m"})
    assert isinstance(first, Appended) and (first.start, first.end) == (0, 2)
    assert [s.text for s in again] == ["c"] and (again.start, again.end) == (2, 3)
    assert store.get("k", 2) == again[0]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_miss_reads_the_position_and_the_length_once_each(tmp_path: Path, is_async: bool) -> None:
    store = CountingStore(DiskStore(tmp_path))
    layer = Independent(CacheLayer(NumberModel(), store))
    if is_async:
        drawn = asyncio.run(layer.adraw("Pick a number", 1))
    else:
        drawn = layer.draw("Pick a number", 1)
    # The sample drawn is served from the copy the append left, not read back.
    assert store.reads == Counter(get=1, length=1)
    assert drawn[0].origin is not None and drawn[0].origin["cache_hit"] is False


def test_positions_still_come_from_the_store_when_it_does_not_say(tmp_path: Path) -> None:
    class Silent(MemoryStore):
        def append(self, *args: object, **kwargs: object) -> Appended:
            return Appended(super().append(*args, **kwargs))  # type: ignore[arg-type]

    model = Persistent(NumberModel(), tmp_path / "c")
    layer = Independent(CacheLayer(model, Silent()))
    texts = [layer.draw("Pick", 1)[0].text for _ in range(3)]
    assert texts == [s.text for s in Independent(model).draw("Pick", 3)]
