"""Sample sequence stores: in memory (for ``Repeatable``) and on disk (for ``Persistent``).

A store maps a request key to an append-only sequence of samples. Index ``i``
once written never changes, a draw id is never stored twice under one key, and
reading sample ``i`` costs one lookup whatever the sequence length.

The disk store lives in a diskcache directory (SQLite in WAL mode) with this
layout, every value a JSON string or an int, never a pickle::

    __mnimi_format__      format version (int)
    s:<key>:<i>           sample i of the sequence (JSON)
    n:<key>               sequence length (int)
    d:<key>:<draw id>     index of that draw (int): de-duplication in O(1)
    m:<key>               the request and running totals (JSON), for listings
"""

from __future__ import annotations

import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import diskcache
from diskcache.core import MODE_PICKLE, MODE_RAW

from .errors import CorruptStoreError, StoreError, UnsupportedStoreVersion
from .sample import Sample

FORMAT_VERSION = 1
FORMAT_KEY = "__mnimi_format__"


class SequenceStore(ABC):
    """Append-only sample sequences, one per request key."""

    @abstractmethod
    def get(self, key: str, index: int) -> Sample | None:
        """Sample ``index`` of ``key``'s sequence, or ``None`` past its end."""

    @abstractmethod
    def length(self, key: str) -> int:
        """How many samples ``key``'s sequence holds."""

    @abstractmethod
    def has_draw(self, key: str, draw_id: str) -> bool:
        """Whether ``key``'s sequence already holds the draw ``draw_id``."""

    @abstractmethod
    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> list[Sample]:
        """Atomically append the samples whose draw ids are new; return those.

        ``record`` describes the request (see :func:`request_record`); it is kept
        with the sequence for listings and error messages.
        """

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every request key that has a sequence."""

    #: Where the store lives, printable (never holds a password).
    location: str = "memory"

    def touch(self, key: str) -> None:  # noqa: B027 - optional hook
        """Note that ``key`` was used now (drives least-recently-used pruning)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_sample(raw: str | bytes, key: str, index: int) -> Sample:
    """A stored sample from its JSON text.

    Raises:
        CorruptStoreError: The text is not a sample this library wrote.
    """
    try:
        return Sample.from_dict(json.loads(raw))
    except (TypeError, ValueError) as error:
        # CorruptStoreError is a ValueError: from_dict's own message is kept.
        raise CorruptStoreError(f"sample #{index} of key {key} is damaged: {error}") from None


class MemoryStore(SequenceStore):
    """Sequences in a dict: the store of ``Repeatable``."""

    def __init__(self) -> None:
        self._sequences: dict[str, list[Sample]] = {}
        self._draws: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, index: int) -> Sample | None:
        sequence = self._sequences.get(key, ())
        return sequence[index] if index < len(sequence) else None

    def length(self, key: str) -> int:
        return len(self._sequences.get(key, ()))

    def has_draw(self, key: str, draw_id: str) -> bool:
        return draw_id in self._draws.get(key, ())

    def keys(self) -> Iterator[str]:
        return iter(list(self._sequences))

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> list[Sample]:
        with self._lock:
            sequence = self._sequences.setdefault(key, [])
            draws = self._draws.setdefault(key, set())
            added = []
            for sample in samples:
                if sample.draw_id not in draws:
                    draws.add(sample.draw_id)
                    sequence.append(sample)
                    added.append(sample)
            return added


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
        if filename is not None:
            raise CorruptStoreError(
                f"the row names a file, {filename!r}; a store keeps every value in its "
                "database, so the row is refused and the file left alone"
            )
        if mode == MODE_PICKLE:
            raise CorruptStoreError("the store holds a pickled value; refusing to load it")
        if mode != MODE_RAW:
            raise CorruptStoreError(f"the row's value is not stored inline (diskcache mode {mode})")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        """Delete nothing: diskcache calls this with the file a replaced or deleted row names.

        diskcache joins that name to the directory, so an absolute or ``../``
        name reaches any file of the user, and then removes its emptied parent
        folders. The store never writes a file, so there is never one of its own
        to remove.
        """


def _private_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that it is a usable directory."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"cache path {path} exists and is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create cache directory {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"cache directory {path} is not writable")


class DiskStore(SequenceStore):
    """Sequences in a diskcache directory, shared safely by threads and processes.

    Args:
        path: The cache directory; created with mode 0700 if missing.

    Raises:
        StoreError: The path is a file or cannot be created or written.
        UnsupportedStoreVersion: The store was written by another format version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        _private_directory(self.path)
        try:
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
                # Kept in the directory's settings, so a plain diskcache.Cache
                # opened on it (a test, a script) writes values inline too.
                disk_min_file_size=2**30,
            )
        except Exception as error:  # sqlite3 errors carry no path
            raise StoreError(f"cannot open cache directory {self.path}: {error}") from None
        self._used: set[str] = set()
        self._check_format()

    def _check_format(self) -> None:
        # One transaction, so a process opening a new store cannot see another
        # one's first sample before that one's format marker.
        with self._cache.transact():
            version = self._get(FORMAT_KEY)
            if version is None:
                if len(self._cache):
                    raise StoreError(f"{self.path} holds a diskcache not written by mnimi_adapters")
                self._cache.set(FORMAT_KEY, FORMAT_VERSION)
        if version is not None and version != FORMAT_VERSION:
            raise UnsupportedStoreVersion(
                f"{self.path} was written in store format {version!r}; "
                f"this version of mnimi_adapters reads format {FORMAT_VERSION}"
            )

    def _get(self, name: str, default: Any = None) -> Any:
        """The value of row ``name``; damage is reported with the row and the store.

        Raises:
            CorruptStoreError: The row is pickled or names a file.
        """
        try:
            return self._cache.get(name, default)
        except CorruptStoreError as error:
            raise CorruptStoreError(f"row {name} of {self.path}: {error}") from None

    def _load(self, key: str, index: int) -> Sample | None:
        raw = self._get(f"s:{key}:{index}")
        return None if raw is None else decode_sample(raw, key, index)

    def get(self, key: str, index: int) -> Sample | None:
        return self._load(key, index)

    def length(self, key: str) -> int:
        return int(self._get(f"n:{key}", 0))

    def has_draw(self, key: str, draw_id: str) -> bool:
        return f"d:{key}:{draw_id}" in self._cache

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> list[Sample]:
        cache = self._cache
        # BEGIN IMMEDIATE: the read of the length and the writes after it are one
        # atomic step for every thread and process sharing the directory.
        with cache.transact():
            length = int(self._get(f"n:{key}", 0))
            meta = self.info(key) or {"request": record, "length": 0, "bytes": 0}
            added: list[Sample] = []
            for sample in samples:
                draw_key = f"d:{key}:{sample.draw_id}"
                if draw_key in cache:
                    continue
                index = length + len(added)
                name = f"s:{key}:{index}"
                if name in cache:
                    # Damage (appends are atomic): never overwrite it, whatever it holds.
                    raise CorruptStoreError(
                        f"row {name} of {self.path} lies beyond the sequence's length {length}"
                    )
                value = json.dumps(sample.to_dict(), ensure_ascii=False)
                cache.set(name, value)
                cache.set(draw_key, index)
                meta["bytes"] += len(value)
                meta["prompt_tokens"] = meta.get("prompt_tokens", 0) + sample.prompt_tokens
                meta["completion_tokens"] = (
                    meta.get("completion_tokens", 0) + sample.completion_tokens
                )
                meta["cost"] = meta.get("cost", 0.0) + (sample.cost or 0.0)
                added.append(sample)
            if added:
                meta["length"] = length + len(added)
                meta["stored"] = meta["used"] = time.time()
                cache.set(f"n:{key}", meta["length"])
                cache.set(f"m:{key}", json.dumps(meta, ensure_ascii=False))
                self._used.add(key)
        return added

    def touch(self, key: str) -> None:
        # Once per key and process: LRU pruning works at the grain of runs, and
        # a write per read would make replays as slow as appends.
        if key in self._used:
            return
        with self._cache.transact():
            meta = self.info(key)
            if meta is not None:
                meta["used"] = time.time()
                self._cache.set(f"m:{key}", json.dumps(meta, ensure_ascii=False))
        # Only now: a damaged record must be refused by every open, not just the first.
        self._used.add(key)

    # -- whole-store operations, used by the `mnimi` command ---------------

    def info(self, key: str) -> dict[str, Any] | None:
        """The request and totals recorded for ``key``, or ``None``."""
        raw = self._get(f"m:{key}")
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except ValueError as error:
            raise CorruptStoreError(f"the record of key {key} is damaged: {error}") from None
        if not isinstance(meta, dict):
            raise CorruptStoreError(f"the record of key {key} is damaged")
        return meta

    def keys(self) -> Iterator[str]:
        """Every request key that has a sequence."""
        for name in self._cache.iterkeys():
            if name.startswith("n:"):
                yield name[2:]

    def delete(self, key: str) -> None:
        """Remove ``key``'s whole sequence in one transaction."""
        with self._cache.transact():
            length = int(self._get(f"n:{key}", 0))
            for index in range(length):
                sample = self._load(key, index)
                if sample is not None:
                    self._cache.delete(f"d:{key}:{sample.draw_id}")
                self._cache.delete(f"s:{key}:{index}")
            self._cache.delete(f"n:{key}")
            self._cache.delete(f"m:{key}")

    def raw_items(self) -> Iterator[tuple[str, Any]]:
        """Every stored (name, value) pair, for integrity checks."""
        for name in self._cache.iterkeys():
            yield name, self._get(name)

    def volume(self) -> int:
        """Bytes the store occupies on disk."""
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()


class ReadThroughStore(SequenceStore):
    """A store whose samples, once read, are served from memory.

    Sample ``i`` of a key never changes once written, so a copy is as good as the
    row: replays skip the database (SQLite or a Redis round trip) and the JSON
    decoding. Under LiteLLM this matters more than the read itself: a SQLite read
    releases the GIL, and LiteLLM's logging threads, busy right after every call,
    may then hold it for a whole switch interval.

    The copy would go stale only if another process deleted a sequence while this
    one replays it, which ``mnimi prune`` warns against.
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
                with self._lock:
                    if len(self._samples) >= self._capacity:
                        # Oldest first (dicts keep insertion order): a miss costs one read.
                        del self._samples[next(iter(self._samples))]
                    self._samples[(key, index)] = sample
        return sample

    def length(self, key: str) -> int:
        return self.inner.length(key)

    def has_draw(self, key: str, draw_id: str) -> bool:
        return self.inner.has_draw(key, draw_id)

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> list[Sample]:
        return self.inner.append(key, samples, record)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def touch(self, key: str) -> None:
        self.inner.touch(key)

    def close(self) -> None:
        with self._lock:
            self._samples.clear()
        self.inner.close()


#: URL schemes that select the Redis store wherever a cache path is accepted.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(location: object) -> bool:
    """Whether ``location`` names a Redis store rather than a directory."""
    return isinstance(location, str) and location.startswith(REDIS_SCHEMES)


def printable_location(location: str | os.PathLike[str]) -> str:
    """``location`` with any password in a URL replaced by ``***``."""
    text = str(location)
    if not is_redis_url(text):
        return text
    scheme, _, rest = text.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return text
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


def open_store(location: str | os.PathLike[str]) -> SequenceStore:
    """Open the store at ``location``: a directory path, or a Redis URL.

    Example:
        >>> open_store("~/.llm_cache")  # doctest: +SKIP
        >>> open_store("redis://127.0.0.1:6379/0?namespace=my-project")  # doctest: +SKIP
    """
    if is_redis_url(location):
        # Imported here: the redis client is an optional dependency.
        from .redis_store import RedisStore

        return RedisStore(str(location))
    return DiskStore(location)
