"""The integrity check both persistent stores share: their entries as rows of one layout.

A store feeds every entry it holds to a :class:`Verifier` as the rows of the disk
layout (``s:<key>:<i>``, ``n:<key>``, ``d:<key>:<draw id>``, ``m:<key>``), each
value decoded but never unpickled, never read from a file; the verifier then
cross-checks each key's rows: lengths, gaps, samples, draw ids and records, and that a
key a model layer computed is the hash of the request its record holds.
"""

from __future__ import annotations

import functools
import gc
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from diskcache.core import MODE_BINARY, MODE_PICKLE

from ..errors import CorruptStoreError
from ..request import KEY_VERSION, record_key
from ..sample import Sample
from .base import FORMAT_KEY, Check, Summary

F = TypeVar("F", bound=Callable[..., Any])


def without_cycle_collection(check: F) -> F:
    """Run ``check`` with Python's cyclic garbage collector held off.

    A check keeps a decoded record per key and makes none of the reference cycles the
    collector is for, yet its allocations set collections off that scan every object
    it keeps, again and again: about a third of ``verify``'s time at a million keys.
    """

    @functools.wraps(check)
    def held_off(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return check(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return held_off  # type: ignore[return-value]


def plural(count: int, word: str) -> str:
    """``1 key``, ``2,000 keys``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def ranges(indices: Iterable[int], most: int = 8) -> str:
    """``[1, 2, 3, 7]`` -> ``#1-#3, #7`` (at most ``most`` runs, then a count)."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    shown = [f"#{a}" if a == b else f"#{a}-#{b}" for a, b in runs[:most]]
    if len(runs) > most:
        shown.append(f"... ({len(set(indices))} in all)")
    return ", ".join(shown)


class _Pickled:
    """Stands for a pickled key or value: reported, never loaded."""

    def __repr__(self) -> str:
        return "<pickle>"


class _InFile:
    """Stands for a value a row keeps in a file: reported, never read."""

    def __init__(self, filename: str) -> None:
        self.filename = filename


PICKLED = _Pickled()


class _Unreadable:
    """Stands for the value of a row the index names but SQLite cannot read (a damaged
    page): damage, not a row that is missing."""

    def __repr__(self) -> str:
        return "<unreadable>"


UNREADABLE = _Unreadable()


def decode_row(mode: int, filename: str | None, value: Any) -> Any:
    """A diskcache row's value, decoded like diskcache would, minus unpickling and files."""
    # The file name first, whatever the mode says: a row can name any path
    # (absolute, or ../), and the store itself never writes a file.
    if filename is not None:
        return _InFile(filename)
    if mode == MODE_PICKLE:
        return PICKLED
    if mode == MODE_BINARY or isinstance(value, memoryview):
        return bytes(value)
    return value


def kind(value: Any) -> str:
    """What ``value`` is, for a problem's message."""
    if value is PICKLED:
        return "a pickle (refused: unpickling can run code)"
    if value is UNREADABLE:
        return "unreadable (on a damaged page of the database)"
    if isinstance(value, _InFile):
        return (
            f"a file, {value.filename!r} (refused: the store keeps every value in its "
            "database, and diskcache deletes the file a replaced or deleted row names)"
        )
    return f"a {type(value).__name__} value"


def _unexpected(value: Any) -> str:
    """The problem of a row that mnimi_adapters never writes."""
    problem = "unexpected row (not written by mnimi_adapters)"
    return f"{problem}; its value is {kind(value)}" if isinstance(value, _InFile) else problem


#: A key as a model layer computes it: the hash of its request (see ``record_key``).
_REQUEST_KEY = re.compile(rf"{re.escape(KEY_VERSION)}-[0-9a-f]{{40}}")

#: The problem of a record whose request is not the one its key is the hash of.
ALTERED_REQUEST = (
    "the recorded request is not the one the key is the hash of: it was altered "
    "(show, explain and export would present a request that was never sampled)"
)


def keyed_by(key: str, request: Mapping[str, Any]) -> bool:
    """Whether ``key`` is the hash of ``request`` as written.

    A cache stores the very record it hashed, so any edit of it (a prompt, an added
    parameter) shows. Stricter than an import's check of a line, which hashes the line's
    request in canonical form: there an added credential, or ``1.0`` for ``1``, hashes
    alike, yet would be stored (and shown) as written.
    """
    return record_key(request) == key


def request_altered(key: str, request: Mapping[str, Any]) -> bool:
    """Whether ``key`` has the form a model layer computes, yet is not the hash of
    ``request``: the store itself takes any key, and a program may use one directly,
    but a key of that form promises to be its request's hash."""
    return _REQUEST_KEY.fullmatch(key) is not None and not keyed_by(key, request)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _Sequence:
    """What verify gathered about one key's rows."""

    #: index -> (draw id, stored characters); draw id None when the sample is damaged.
    samples: dict[int, tuple[str | None, int]] = field(default_factory=dict)
    length: int | None = None
    length_seen: bool = False
    record: dict[str, Any] | None = None
    record_seen: bool = False
    #: draw id -> the index its d: row names (None when that row is damaged).
    draws: dict[str, int | None] = field(default_factory=dict)


@dataclass
class Verifier:
    """Checks a store's rows against the layout of :mod:`mnimi_adapters.core.stores.disk`."""

    problems: list[dict[str, str | None]] = field(default_factory=list)
    sequences: dict[str, _Sequence] = field(default_factory=dict)
    draw_rows: list[tuple[str, Any]] = field(default_factory=list)
    rows: int = 0

    def report(self, key: str | None, row: str | None, problem: str) -> None:
        """Note a problem of ``key`` (if known) found in ``row`` (if one)."""
        self.problems.append({"key": key, "row": row, "problem": problem})

    def _sequence(self, key: str) -> _Sequence:
        return self.sequences.setdefault(key, _Sequence())

    def row(self, name: Any, value: Any) -> None:
        """Take in one stored (name, value) pair."""
        self.rows += 1
        if name is PICKLED:
            problem = "a row has a pickled name (refused: unpickling can run code)"
            if isinstance(value, _InFile):
                problem += f"; its value is {kind(value)}"
            self.report(None, None, problem)
        elif not isinstance(name, str):
            self.report(None, repr(name), _unexpected(value))
        elif name == FORMAT_KEY:
            pass  # checked before the scan
        elif name.startswith("s:"):
            key, sep, index = name[2:].rpartition(":")
            if not (sep and key and index.isascii() and index.isdigit()) or index != str(
                int(index)
            ):
                self.report(None, name, _unexpected(value))
            else:
                self._sample(key, int(index), name, value)
        elif name.startswith("n:"):
            sequence = self._sequence(name[2:])
            sequence.length_seen = True
            if value is UNREADABLE:
                self.report(name[2:], name, f"the length is {kind(value)}")
            elif is_int(value) and value >= 0:
                sequence.length = value
            else:
                self.report(name[2:], name, f"the length is {kind(value)}, not a count")
        elif name.startswith("m:"):
            self._record(name[2:], name, value)
        elif name.startswith("d:"):
            # Which key a draw row belongs to is known once every key is seen.
            self.draw_rows.append((name, value))
        else:
            self.report(None, name, _unexpected(value))

    def _sample(self, key: str, index: int, name: str, value: Any) -> None:
        sequence = self._sequence(key)
        sequence.samples[index] = (None, 0)
        if value is UNREADABLE:
            self.report(key, name, f"sample #{index} is {kind(value)}")
            return
        if not isinstance(value, str):
            self.report(key, name, f"sample #{index} is {kind(value)}, not JSON text")
            return
        try:
            data = json.loads(value)
        except (ValueError, RecursionError) as error:  # json's on deep nesting
            self.report(key, name, f"sample #{index} is not valid JSON ({error})")
            return
        try:
            sample = Sample.from_dict(data)
        except CorruptStoreError as error:
            self.report(key, name, f"sample #{index} is not a stored sample ({error})")
            return
        if not isinstance(sample.draw_id, str):
            self.report(key, name, f"sample #{index} has no string draw id")
            return
        sequence.samples[index] = (sample.draw_id, len(value))

    def _record(self, key: str, name: str, value: Any) -> None:
        sequence = self._sequence(key)
        sequence.record_seen = True
        if value is UNREADABLE:
            self.report(key, name, f"the record is {kind(value)}")
            return
        if not isinstance(value, str):
            self.report(key, name, f"the record is {kind(value)}, not JSON text")
            return
        try:
            record = json.loads(value)
        except (ValueError, RecursionError) as error:
            self.report(key, name, f"the record is not valid JSON ({error})")
            return
        request = record.get("request") if isinstance(record, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            self.report(key, name, "the record holds no request")
            return
        if request_altered(key, request):
            self.report(key, name, ALTERED_REQUEST)
        sequence.record = record

    def _draw_key(self, rest: str) -> str | None:
        """The known key that ``d:<key>:<draw id>`` (minus ``d:``) starts with."""
        for position, char in enumerate(rest):
            if char == ":" and rest[:position] in self.sequences:
                return rest[:position]
        return None

    def finish(self) -> None:
        """Cross-check the rows of every key once all are in."""
        for name, value in self.draw_rows:
            key = self._draw_key(name[2:])
            if key is None:
                self.report(None, name, "draw index of a key that has no sequence")
                continue
            draw = name[len(key) + 3 :]
            index_ok = is_int(value)
            if value is UNREADABLE:
                self.report(key, name, f"the draw index of {draw} is {kind(value)}")
            elif not index_ok:
                self.report(key, name, f"the draw index is {kind(value)}, not an index")
            self.sequences[key].draws[draw] = value if index_ok else None
        for key in sorted(self.sequences):
            self._check(key, self.sequences[key])

    def _check(self, key: str, sequence: _Sequence) -> None:
        before = len(self.problems)
        length, samples = sequence.length, sequence.samples
        if not sequence.length_seen:
            self.report(key, None, f"no length row (n:) for {plural(len(samples), 'sample')}")
        elif length is not None:
            missing = [i for i in range(length) if i not in samples]
            if missing:
                self.report(
                    key,
                    None,
                    f"missing sample {ranges(missing)} of {length} (a gap in the sequence)",
                )
            extra = [i for i in samples if i >= length]
            if extra:
                self.report(key, None, f"sample {ranges(extra)} stored beyond the length {length}")
        positions: dict[str, list[int]] = {}
        for index, (draw, _) in sorted(samples.items()):
            if draw is not None:
                positions.setdefault(draw, []).append(index)
        for draw, where in positions.items():
            if len(where) > 1:
                self.report(
                    key, None, f"draw {draw} is stored {len(where)} times: samples {ranges(where)}"
                )
        for draw, target in sequence.draws.items():
            where = positions.get(draw, [])
            if target is None or target in where:
                continue
            row = f"d:{key}:{draw}"
            if target in samples and samples[target][0] is None:
                continue  # that sample is damaged, reported above
            if length is not None and 0 <= target < length and target not in samples:
                continue  # a gap, reported above
            if where:
                self.report(key, row, f"the draw index says #{target}, but {draw} is #{where[0]}")
            elif target in samples:
                self.report(
                    key, row, f"the draw index of {draw} points at #{target}, a different draw"
                )
            else:
                self.report(key, row, f"the draw index of {draw} points at #{target}: no sample")
        for draw, where in positions.items():
            if draw not in sequence.draws:
                self.report(key, None, f"sample #{where[0]} (draw {draw}) has no draw index (d:)")
        record = sequence.record
        if not sequence.record_seen:
            self.report(key, None, "no record (m:) of the request")
        elif record is not None:
            recorded = record.get("length")
            if length is not None and recorded != length:
                self.report(
                    key, f"m:{key}", f"the record says {recorded} samples, the length row {length}"
                )
            stored = sum(size for _, size in samples.values())
            # Totals are only comparable when every sample is there and sound (a damaged
            # one was reported as its row was read, before this key's checks).
            sound = all(draw is not None for draw, _ in samples.values())
            if sound and len(self.problems) == before and record.get("bytes") != stored:
                self.report(
                    key,
                    f"m:{key}",
                    f"the record counts {record.get('bytes')} bytes of samples, "
                    f"the samples hold {stored}",
                )

    def result(self, version: Any) -> Check:
        """What was found, once :meth:`finish` has run."""
        return Check(
            format=version,
            keys=len(self.sequences),
            samples=sum(
                1 for s in self.sequences.values() for d, _ in s.samples.values() if d is not None
            ),
            rows=self.rows,
            problems=self.problems,
            summaries=[]
            if self.problems
            else [
                # Sound: every key has its length and its record (else a problem).
                Summary(key, sequence.length or 0, sequence.record or {})
                for key, sequence in sorted(self.sequences.items())
            ],
        )
