"""The protocol every sample store implements, and what the stores share.

A store maps a request key to an append-only sequence of samples. Index ``i``
once written never changes, a draw id is never stored twice under one key, and
reading sample ``i`` costs one lookup whatever the sequence length.

Besides reads and appends, a persistent store answers the questions of the
``mnimi`` command itself, so that no caller needs to know its layout: every
sequence with its record in one pass (:meth:`SequenceStore.summaries`), the
space taken, whole-sequence deletion and an integrity check.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ..errors import CorruptStoreError, StoreError
from ..sample import Sample

FORMAT_VERSION = 1
FORMAT_KEY = "__mnimi_format__"

#: Keys whose use is remembered before it is written, at most: bounds both the
#: memory a replay of millions of keys takes and the work of one write.
USAGE_BATCH = 1024


class Appended(list[Sample]):
    """The samples an append added, in order, and the position of the first of them.

    One append is atomic, so the samples it adds sit at ``start``, ``start + 1``, ...
    ``start`` is ``None`` where a store does not tell it (then nothing is assumed).
    """

    def __init__(self, samples: Iterable[Sample] = (), start: int | None = None) -> None:
        super().__init__(samples)
        self.start = start

    @property
    def end(self) -> int | None:
        """The sequence's length right after the append, if known."""
        return None if self.start is None else self.start + len(self)


#: One append of a batch: the key, the samples, the request's record.
Batched = tuple[str, Sequence[Sample], dict[str, Any]]


@dataclass
class Summary:
    """One sequence as listings see it: its key, length and record.

    Attributes:
        key: The request key.
        length: How many samples the sequence holds.
        info: The record: ``request`` and the totals ``bytes``, ``prompt_tokens``,
            ``completion_tokens``, ``cost``, ``stored``, ``used``.
        error: Why the record cannot be read, when it is damaged.
    """

    key: str
    length: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def request(self) -> dict[str, Any]:
        """The recorded request: ``model``, ``messages``, ``params`` [, ``endpoint``]."""
        request = self.info.get("request")
        return request if isinstance(request, dict) else {}

    @property
    def model(self) -> str:
        """The model name in the key (its alias, if one was given)."""
        model = self.request.get("model")
        return "?" if model is None else str(model)

    @property
    def messages(self) -> list[Any]:
        """The request's messages."""
        messages = self.request.get("messages")
        return messages if isinstance(messages, list) else []

    def number(self, name: str) -> float:
        """A numeric total of the record (``bytes``, ``cost``, ``used``...), 0 if absent."""
        value = self.info.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        return 0


@dataclass
class ModelTotals:
    """The totals of the sequences of one model, as ``mnimi stats`` lists them.

    Attributes:
        model: The model name (:attr:`Summary.model`).
        keys: How many sequences.
        samples: How many samples they hold.
        bytes: Characters of sample JSON the records count.
        prompt_tokens: Prompt tokens the records count.
        completion_tokens: Completion tokens the records count.
        cost: Cost in USD the records count, where the provider reported it.
    """

    model: str
    keys: int = 0
    samples: int = 0
    bytes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, summary: Summary) -> None:
        """Count one more sequence."""
        self.keys += 1
        self.samples += summary.length
        # Truncated per key, as each key's own figures are shown.
        self.bytes += int(summary.number("bytes"))
        self.prompt_tokens += int(summary.number("prompt_tokens"))
        self.completion_tokens += int(summary.number("completion_tokens"))
        self.cost += float(summary.number("cost"))


@dataclass
class Totals:
    """A store's sequences summed up, per model (see :meth:`SequenceStore.totals`).

    Attributes:
        keys: How many sequences.
        models: The totals of each model, most samples first.
        damaged: The sequences whose length or record is damaged.
    """

    keys: int = 0
    models: list[ModelTotals] = field(default_factory=list)
    damaged: list[Summary] = field(default_factory=list)

    @classmethod
    def of(
        cls, summaries: Iterable[Summary], keys: int = 0, models: Iterable[ModelTotals] = ()
    ) -> Totals:
        """``summaries`` added to the partial totals ``keys`` and ``models``."""
        by_model = {row.model: row for row in models}
        damaged = []
        for summary in summaries:
            keys += 1
            by_model.setdefault(summary.model, ModelTotals(summary.model)).add(summary)
            if summary.error:
                damaged.append(summary)
        ordered = sorted(by_model.values(), key=lambda row: (-row.samples, row.model))
        return cls(keys, ordered, damaged)


def recency(summary: Summary) -> tuple[float, str]:
    """The order of listings: most recently used first, then by key."""
    return (-summary.number("used"), summary.key)


@dataclass
class Check:
    """What :meth:`SequenceStore.check` found.

    Attributes:
        format: The format version the store records (``None`` if unreadable).
        keys: How many sequences were checked.
        samples: How many sound samples they hold.
        rows: How many stored entries were read.
        problems: Each problem: ``key`` (or ``None``), ``row`` (or ``None``), ``problem``.
        summaries: Every sequence as listings see it, in key order, when nothing is
            damaged (else empty): the check has decoded each record already, so a
            ``prune`` ranks them without reading the store a second time.
    """

    format: Any = None
    keys: int = 0
    samples: int = 0
    rows: int = 0
    problems: list[dict[str, str | None]] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged."""
        return not self.problems


class SequenceStore(ABC):
    """Append-only sample sequences, one per request key."""

    #: Where the store lives, printable (never holds a password).
    location: str = "memory"
    #: What :meth:`volume` measures: ``"disk"`` space, or server ``"memory"``.
    held_in: str = "memory"

    @abstractmethod
    def get(self, key: str, index: int) -> Sample | None:
        """Sample ``index`` of ``key``'s sequence, or ``None`` past its end."""

    @abstractmethod
    def length(self, key: str) -> int:
        """How many samples ``key``'s sequence holds."""

    def read(self, key: str, index: int) -> Sample | int:
        """Sample ``index`` of ``key``'s sequence or, past its end, the sequence's length.

        What a cache reads first: a miss then knows how far the sequence reaches. A
        store that can read both at once (one SQL statement) does.
        """
        sample = self.get(key, index)
        return self.length(key) if sample is None else sample

    @abstractmethod
    def has_draw(self, key: str, draw_id: str) -> bool:
        """Whether ``key``'s sequence already holds the draw ``draw_id``."""

    @abstractmethod
    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> Appended:
        """Atomically append the samples whose draw ids are new; return those, and where.

        ``record`` describes the request (see :func:`request_record`); it is kept
        with the sequence for listings and error messages.
        """

    def append_many(self, batch: Sequence[Batched]) -> list[Appended | Exception]:
        """Several appends, as :meth:`append` does each: the outcome of each, in order.

        An append that fails gives its exception in its place; the others still count.
        A store that can write them together (one transaction) does.
        """
        outcomes: list[Appended | Exception] = []
        for key, samples, record in batch:
            try:
                outcomes.append(self.append(key, samples, record))
            except Exception as error:  # handed to that append's caller
                outcomes.append(error)
        return outcomes

    @abstractmethod
    def summaries(self) -> Iterator[Summary]:
        """Every sequence with its record, in one pass over the store.

        A damaged record is noted on its summary, never raised.
        """

    @abstractmethod
    def summary(self, key: str) -> Summary | None:
        """``key``'s sequence with its record, or ``None`` when nothing is stored for it."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``'s whole sequence in one transaction."""

    def totals(self) -> Totals:
        """Every sequence summed up: how many, and per model their samples, sizes and cost."""
        return Totals.of(self.summaries())

    def recent(self, limit: int | None) -> tuple[int, list[Summary]]:
        """The ``limit`` (``None``: all) most recently used sequences, and how many there are.

        The order is :func:`recency`'s; damaged sequences are included, marked.
        """
        summaries = sorted(self.summaries(), key=recency)
        return len(summaries), summaries[:limit]

    def keys(self) -> Iterator[str]:
        """Every request key that has a sequence."""
        return (summary.key for summary in self.summaries())

    def info(self, key: str) -> dict[str, Any] | None:
        """The request and totals recorded for ``key``, or ``None``.

        Raises:
            CorruptStoreError: The record is damaged.
        """
        summary = self.summary(key)
        if summary is None or (summary.error is None and not summary.info):
            return None
        if summary.error is not None:
            raise CorruptStoreError(summary.error)
        return summary.info

    def volume(self) -> int | None:
        """Bytes the store occupies (on disk, or in server memory), ``None`` if unknown."""
        return None

    def check(self, progress: Callable[[int], None] | None = None) -> Check:
        """Check every stored entry against the layout; report each problem.

        Args:
            progress: Called with a count of entries as they are checked.
        """
        summaries = list(self.summaries())
        if progress is not None:
            progress(len(summaries))
        problems: list[dict[str, str | None]] = [
            {"key": s.key, "row": None, "problem": s.error} for s in summaries if s.error
        ]
        return Check(
            format=FORMAT_VERSION,
            keys=len(summaries),
            samples=sum(s.length for s in summaries),
            rows=len(summaries),
            problems=problems,
            summaries=[] if problems else summaries,
        )

    def check_writable(self, doing: str) -> None:  # noqa: B027 - optional hook
        """Raise the error writing would meet, when the store knows it without trying.

        A cache asks before drawing samples for a miss: a provider paid for samples
        the store then refuses would be thrown away (law 6). A store that learns of a
        failure only by writing (a Redis replica, a disk filling up) raises nothing here.

        Args:
            doing: What the write is for, in words (``store samples of key k``).

        Raises:
            StoreReadOnly: The store was opened read-only, or its media is read-only.
            StoreFull: The store was opened on a full disk.
        """

    def touch(self, key: str) -> None:  # noqa: B027 - optional hook
        """Note that ``key`` was used now (drives least-recently-used pruning).

        Never blocks or fails a read: stores remember uses and write them in
        batches, dropping a batch the store cannot take.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UsageLog:
    """Uses of keys noted by reads, handed over for writing in batches.

    A write per first read would make a replay as slow as appends and slow every
    other reader of the store; a use not written only makes pruning a little
    less exact, so a batch the store cannot take (busy, full, read-only) is dropped.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, key: str) -> dict[str, float] | None:
        """Remember that ``key`` was used now; return a full batch to write, if one is."""
        with self._lock:
            self._pending[key] = time.time()
            if len(self._pending) < USAGE_BATCH:
                return None
            return self._take_locked()

    def take(self) -> dict[str, float]:
        """Every use remembered so far, forgotten here."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> dict[str, float]:
        batch, self._pending = self._pending, {}
        return batch


def dump_json(value: Any, **options: Any) -> str:
    """``value`` as the JSON text a store keeps: UTF-8 text as it is, a lone surrogate escaped.

    Valid JSON may escape half of a surrogate pair alone (a provider's ``"caf\\udcff"``),
    which ``json.loads`` turns into a str that has no UTF-8 form: neither SQLite nor
    Redis could take it, and the paid sample would be lost. Such a value alone is
    written with every non-ASCII character escaped, which reads back as the very same
    str; any other text keeps its compact form. ``options`` go to :func:`json.dumps`
    (``sort_keys``, ``indent``), for the files an export writes.
    """
    text = json.dumps(value, ensure_ascii=False, **options)
    if not text.isascii():  # O(1): CPython knows whether a str is ASCII
        try:
            text.encode()
        except UnicodeEncodeError:
            return json.dumps(value, **options)
    return text


def decode_sample(raw: str | bytes, key: str, index: int) -> Sample:
    """A stored sample from its JSON text.

    Raises:
        CorruptStoreError: The text is not a sample this library wrote.
    """
    try:
        return Sample.from_dict(json.loads(raw))
    except (TypeError, ValueError, RecursionError) as error:  # json's on deep nesting
        # CorruptStoreError is a ValueError: from_dict's own message is kept.
        raise CorruptStoreError(f"sample #{index} of key {key} is damaged: {error}") from None


def decode_record(raw: Any, key: str) -> dict[str, Any]:
    """A stored record (request and totals) from its JSON text.

    Raises:
        CorruptStoreError: The text is not a record.
    """
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError, RecursionError) as error:  # json's on deep nesting
        raise CorruptStoreError(f"the record of key {key} is damaged: {error}") from None
    if not isinstance(meta, dict):
        raise CorruptStoreError(f"the record of key {key} is damaged")
    return meta


#: URL schemes that select the Redis store wherever a cache path is accepted, in any case.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: A location that starts as a URL does: a scheme of two characters or more, then ``:/``
#: (one letter and a colon is a Windows drive, ``C:/``).
_URL_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")


def is_redis_url(location: object) -> bool:
    """Whether ``location`` names a Redis store rather than a directory."""
    return isinstance(location, str) and location.lower().startswith(REDIS_SCHEMES)


def anchored(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory now.

    A store opens its database again on each thread that reads it, and an adapter opens
    its store at the first call: a relative path taken then would follow an ``os.chdir``
    made since into another directory, and read (or make) another project's cache there.
    """
    return Path(path).expanduser().absolute()


def check_directory_location(location: str | os.PathLike[str]) -> None:
    """Refuse a cache directory path that is empty, or a URL (a Redis URL mistyped).

    ``Path`` would make ``""`` the current directory, and ``redis:/host`` or
    ``http://host`` a directory under it: a run would fill it in silence instead of
    the cache meant (an unset variable, a typo).

    Raises:
        StoreError: ``location`` is empty or blank, or starts with a URL scheme.
    """
    text = str(location)
    if not text.strip():
        raise StoreError(
            f'cache location {text!r} is empty: give a directory ("." for the current '
            "one) or a Redis URL"
        )
    found = _URL_LIKE.match(text)
    if found is None:
        return
    shown = _hide_password(text)
    if f"{found.group(1).lower()}://" in REDIS_SCHEMES:
        raise StoreError(
            f"cache location {shown} is not a Redis URL: write two slashes after "
            f"the scheme ({found.group(1)}://...)"
        )
    raise StoreError(
        f"cache location {shown} is a URL ({found.group(1)}:), not a directory; a cache is "
        "a directory or a redis://, rediss:// or unix:// URL (for a directory of that "
        "name, give its absolute path)"
    )


def printable_location(location: str | os.PathLike[str]) -> str:
    """``location`` with any password in a URL replaced by ``***``."""
    text = str(location)
    return _hide_password(text) if is_redis_url(text) else text


def _hide_password(url: str) -> str:
    """``url`` (``scheme://[user[:password]@]host...``) with its password as ``***``."""
    scheme, slashes, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (slashes and at):
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"
