"""A store whose samples, once read, are served from memory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..sample import Sample
from .base import Appended, Batched, Check, SequenceStore, Summary


class ReadThroughStore(SequenceStore):
    """A store whose samples, once read, are served from memory.

    Sample ``i`` of a key never changes once written, so a copy is as good as the
    row: replays skip the database (SQLite or a Redis round trip) and the JSON
    decoding. Under LiteLLM this matters more than the read itself: a SQLite read
    releases the GIL, and LiteLLM's logging threads, busy right after every call,
    may then hold it for a whole switch interval.

    The copy holds at most ``capacity`` samples, so it bounds what a replay of
    any number of keys keeps in memory. It would go stale only if another process
    deleted a sequence while this one replays it, which ``mnimi prune`` warns against.
    """

    def __init__(self, store: SequenceStore, capacity: int = 4096) -> None:
        self.inner = store
        self.location = store.location
        self._capacity = capacity
        self._samples: dict[tuple[str, int], Sample] = {}
        self._lock = threading.Lock()

    def get(self, key: str, index: int) -> Sample | None:
        sample = self._samples.get((key, index))
        if sample is None:
            sample = self.inner.get(key, index)
            if sample is not None:
                self._keep(key, index, sample)
        return sample

    def read(self, key: str, index: int) -> Sample | int:
        kept = self._samples.get((key, index))
        if kept is not None:
            return kept
        found = self.inner.read(key, index)
        if isinstance(found, Sample):
            self._keep(key, index, found)
        return found

    def _keep(self, key: str, index: int, sample: Sample) -> None:
        with self._lock:
            if len(self._samples) >= self._capacity:
                # Oldest first (dicts keep insertion order): a miss costs one read.
                del self._samples[next(iter(self._samples))]
            self._samples[(key, index)] = sample

    def length(self, key: str) -> int:
        return self.inner.length(key)

    def has_draw(self, key: str, draw_id: str) -> bool:
        return self.inner.has_draw(key, draw_id)

    def check_writable(self, doing: str) -> None:
        self.inner.check_writable(doing)

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> Appended:
        return self._kept(key, self.inner.append(key, samples, record))

    def append_many(self, batch: Sequence[Batched]) -> list[Appended | Exception]:
        outcomes = self.inner.append_many(batch)
        for (key, _, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Appended):
                self._kept(key, outcome)
        return outcomes

    def _kept(self, key: str, added: Appended) -> Appended:
        """``added``, copied at its positions: the caller that drew it reads it next."""
        if added.start is not None:
            for index, sample in enumerate(added, added.start):
                self._keep(key, index, sample)
        return added

    def summaries(self) -> Iterator[Summary]:
        return self.inner.summaries()

    def summary(self, key: str) -> Summary | None:
        return self.inner.summary(key)

    def delete(self, key: str) -> None:
        with self._lock:
            for cached in [k for k in self._samples if k[0] == key]:
                del self._samples[cached]
        self.inner.delete(key)

    def volume(self) -> int | None:
        return self.inner.volume()

    def check(self, progress: Callable[[int], None] | None = None) -> Check:
        return self.inner.check(progress)

    def touch(self, key: str) -> None:
        self.inner.touch(key)

    def close(self) -> None:
        with self._lock:
            self._samples.clear()
        self.inner.close()
