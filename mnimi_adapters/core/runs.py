"""Run records: which key and position each draw of a run consumed, in order.

Two runs of one program over one cache give bit-identical results only if every step
consumed the same sample. Thread scheduling, a changed loop order or a new retry can
silently shift which sample a step gets; a run record makes that visible. It is a JSON
Lines file: each run a recorder makes starts with a line that marks it, then one line per
sample handed to the program, numbered from 0 in each run::

    {"run": 1, "started": 1764172800.0, "program": "3f2a..."}
    {"draw": 0, "key": "m1-...", "index": 0, "draw_id": "..."}

A re-run of the program appends its own run, so a record keeps every run and
:func:`read_run` reads the last one (a record written before runs were marked is one
run). A mark names its program (a digest of the ``multiprocessing`` authentication key,
which a program's worker processes inherit and no other program shares) and, written in
a worker, says so (``"worker": true``): the recorders of one program's workers, each with
a mark of its own and their lines interleaved, record one run, not one each.
:func:`diff_runs` compares two runs key by key: the lines of a concurrent run are
in the order its draws completed, which a retry or a slow request changes, so only what
each run consumed of each key is compared, never the order across keys.

Example:
    >>> a = [{"key": "k", "index": 0, "draw_id": "x"}, {"key": "k", "index": 1, "draw_id": "y"}]
    >>> compare_runs(a, a)
    >>> compare_runs(a, a[::-1])  # the same samples, completed in another order
    >>> print(compare_runs(a, [{"key": "k", "index": 0, "draw_id": "z"}, a[1]]))
    1 of 1 key differs (the first run made 2 draws, the second 2):
    k: sample 0 differs: the first run consumed draw id x at draw 0, the second draw id z at draw 0
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MnimiError
from .stores.base import anchored
from .stores.files import open_private

__all__ = [
    "KeyDifference",
    "RunComparison",
    "RunRecorder",
    "compare_runs",
    "diff_runs",
    "read_run",
    "read_runs",
]

_quoted = json.JSONEncoder(ensure_ascii=True).encode

#: Keys whose line prefix a recorder keeps spelled, at most.
_PREFIXES = 4096
#: How a run's first line starts (see :class:`RunRecorder`).
_RUN_MARK = b'{"run":'


def _program() -> str:
    """This program's name in a run's mark: the same in each of its ``multiprocessing``
    workers (spawned, forked or forkserver's), another in any other program.

    The authentication key is made at random when a program starts and handed to each
    process it starts; a digest of it, never the key itself, which guards the program's
    connections to its workers.
    """
    key = bytes(multiprocessing.current_process().authkey)
    return hashlib.sha256(b"mnimi run record\0" + key).hexdigest()[:16]


class RunRecorder:
    """Appends a run to a run record: one line per consumed sample (thread-safe).

    Args:
        path: The JSON Lines file; created if missing, appended to otherwise (the run
            starts with a line that marks it, written with its first draw).

    Raises:
        MnimiError: ``path`` is a directory or its folder does not exist (at once), or
            it cannot be opened for appending (at the first draw).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "run.jsonl"
        ...     with RunRecorder(path) as record:
        ...         record.consumed("m1-abc", 0, "draw-1")
        ...     read_run(path)
        [{'draw': 0, 'key': 'm1-abc', 'index': 0, 'draw_id': 'draw-1'}]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = anchored(path)
        # Checked now, opened with the run's first draw: a program that fails before it
        # draws (a store that cannot open) leaves no file behind.
        problem: str | None = None
        try:
            if self.path.is_dir():
                problem = "it is a directory"
            elif not self.path.parent.is_dir():
                problem = "its folder does not exist"
        except OSError as error:  # a folder on the way this user may not enter
            problem = (
                f"{error.strerror or error} (give this user access to its folder, or record "
                "elsewhere)"
            )
        if problem is not None:
            raise MnimiError(f"cannot record the run in {self.path}: {problem}")
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._closed = False
        #: Each key's line prefix, spelled once: a run draws from few keys many times.
        self._prefixes: dict[str, str] = {}
        self._draws = 0

    def _open(self) -> BinaryIO:
        """The record's file, opened for appending at the run's first draw."""
        if self._closed:
            raise ValueError(f"the run record {self.path} is closed")
        try:
            # Buffered: a write(2) per line cost a replay of hits 10% more. The buffer is
            # flushed when the recorder is closed or collected and at interpreter exit; a
            # process killed outright (SIGKILL) loses at most its last kilobytes of lines.
            # Created 0600 whatever the umask: a record stands for a run, and under umask
            # 000 a plain open made it world-writable. One already there keeps its mode.
            file = os.fdopen(open_private(self.path, os.O_WRONLY | os.O_APPEND), "ab")
            with self.path.open("rb") as earlier:
                self._run = 1 + sum(1 for line in earlier if line.startswith(_RUN_MARK))
        except OSError as error:
            raise MnimiError(
                f"cannot record the run in {self.path}: {error.strerror or error}"
            ) from None
        weakref.finalize(self, file.close)
        self._file = file
        return file

    def consumed(self, key: str, index: int, draw_id: str) -> None:
        """Record that the run was handed sample ``index`` of ``key``."""
        with self._lock:
            file = self._file or self._open()
            # Spelled out rather than json.dumps of a dict: this runs once per sample
            # served, and a replay's hits cost only tens of microseconds.
            prefix = self._prefixes.get(key)
            if prefix is None:
                if len(self._prefixes) >= _PREFIXES:  # a run over millions of keys
                    self._prefixes.clear()
                prefix = self._prefixes[key] = f',"key":{_quoted(key)},"index":'
            line = f'{{"draw":{self._draws}{prefix}{index},"draw_id":{_quoted(draw_id)}}}\n'
            if not self._draws:  # the run's mark goes with its first draw: no empty runs
                line = self._mark() + line
            file.write(line.encode())
            self._draws += 1

    def _mark(self) -> str:
        """The line that starts the run: its number, its time and its program (see
        :func:`read_runs`)."""
        worker = ',"worker":true' if multiprocessing.parent_process() is not None else ""
        return f'{{"run":{self._run},"started":{time.time()},"program":"{_program()}"{worker}}}\n'

    def flush(self) -> None:
        """Write the lines recorded so far to the file (for a reader while the run goes on)."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Close the file (recording a further draw raises :class:`ValueError`)."""
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_draw(entry: Any) -> bool:
    """Whether ``entry`` is a draw as :class:`RunRecorder` writes it (its fields typed:
    a comparison sorts and counts them)."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("index"), int)
        and not isinstance(entry["index"], bool)
        and entry["index"] >= 0
        and isinstance(entry.get("draw_id"), str)
    )


@dataclass
class _Run:
    """A run being read: its draws, and the recorders that marked it.

    Attributes:
        line: The line of its first mark (0 for a record written before runs were marked).
        program: The program its marks name (``None`` in a mark written before they did).
        main: Whether the program's main process marked it (each of the program's
            recorders there makes a run of its own).
        marks: How many recorders marked it.
    """

    line: int
    program: str | None = None
    main: bool = False
    marks: int = 0
    draws: list[dict[str, Any]] = field(default_factory=list)

    def joined_by(self, mark: Mapping[str, Any]) -> bool:
        """Whether the recorder that wrote ``mark`` records this run: a recorder of the
        same program's worker processes (their marks and lines interleave), or of its
        main process where only workers had marked the run."""
        if mark.get("program") is None or mark["program"] != self.program:
            return False
        return mark.get("worker") is True or not self.main

    def mark(self, mark: Mapping[str, Any]) -> None:
        self.program = mark.get("program")
        self.main = self.main or mark.get("worker") is not True
        self.marks += 1


def _interleaved(run: _Run) -> bool:
    """Whether ``run``, marked by one recorder, holds lines another recorder wrote among
    its own: one recorder numbers its draws 0, 1, 2, ... (a record without marks, a
    bundle's or one written before runs were marked, is not checked: its re-runs each
    numbered their draws from 0)."""
    return run.marks == 1 and any(
        draw.get("draw", number) != number for number, draw in enumerate(run.draws)
    )


def read_runs(path: str | os.PathLike[str]) -> list[list[dict[str, Any]]]:
    """The runs of a run record, oldest first, each its draws in order.

    A run is what one recorder wrote, or, in a program's ``multiprocessing`` workers,
    what all of them wrote (see :class:`RunRecorder`).

    Raises:
        MnimiError: A line is neither a run's mark nor a draw written by
            :class:`RunRecorder` (text that is not UTF-8 included: the wrong file given,
            or a record altered); the error names the file and the line number. Or the
            lines of several programs, or of recorders of one that do not record one
            run, are interleaved: which run a draw belongs to is lost.
        OSError: The file cannot be read.
    """
    runs: list[_Run] = []
    # Bytes, decoded line by line: a byte that is not UTF-8 is named by its line, like any
    # other line that is not the record's.
    with Path(path).expanduser().open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                entry = json.loads(raw.decode("utf-8"))
                if isinstance(entry, dict) and "run" in entry and "draw_id" not in entry:
                    if not (runs and runs[-1].joined_by(entry)):
                        runs.append(_Run(number))
                    runs[-1].mark(entry)
                    continue
                if not _is_draw(entry):
                    raise ValueError("not a draw")
            # UnicodeDecodeError is a ValueError; RecursionError is json's on deep nesting.
            except (ValueError, RecursionError) as error:
                raise MnimiError(
                    f"{path}, line {number}: not a run record line ({error})"
                ) from error
            if not runs:  # a record written before runs were marked: one run
                runs.append(_Run(0))
            runs[-1].draws.append(entry)
    tangled = next((run for run in runs if _interleaved(run)), None)
    if tangled is not None:
        raise MnimiError(
            f"{path}: the run from line {max(tangled.line, 1)} holds lines of other runs "
            "among its own (several programs, or several recorders of one program's "
            "main process, recorded into it at once), so which draws were its own is "
            "lost; give each program, or each recorder, a record file of its own"
        )
    return [run.draws for run in runs]


def read_run(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The draws of the last run in a run record, in order (none for an empty record).

    Raises:
        MnimiError: A line is not a run record line (see :func:`read_runs`).
    """
    runs = read_runs(path)
    return runs[-1] if runs else []


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second"}.get(n, f"#{n}")


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count:,} times")


#: One consumed sample: its index, its draw id, and the draw (of its run) that took it.
_Draw = tuple[int, str, int]


@dataclass(frozen=True)
class KeyDifference:
    """The first way two runs part at one key.

    Attributes:
        key: The request key.
        difference: A sentence: which sample one run consumed that the other did not
            (or not as often), or which draw id each consumed at one index.
    """

    key: str
    difference: str


@dataclass(frozen=True)
class RunComparison:
    """Two runs compared key by key (see :func:`diff_runs`).

    Attributes:
        draws: How many draws the first and the second run made.
        keys: How many keys either run drew from.
        differences: One per key whose consumed samples differ, in the order the keys
            were first drawn (by the first run, then by the second).
        reordered: Keys of which both runs consumed the same samples, in another order.
    """

    draws: tuple[int, int]
    keys: int
    differences: list[KeyDifference] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Whether both runs consumed the same samples of the same keys."""
        return not self.differences

    def text(self, limit: int = 20, missing: Sequence[str | None] = (None, None)) -> str | None:
        """What differs, in words: ``None`` if identical, else a line per key.

        Args:
            limit: At most this many keys are named; a last line counts the rest.
            missing: For each run, the record that does not exist (a run that
                consumed nothing writes none), named when that run is the empty one.
        """
        if self.identical:
            return None
        for empty, other in ((1, 0), (0, 1)):
            if not self.draws[empty]:  # one sentence, not a line for each of its keys
                absent = missing[empty]
                note = f" (no record at {absent})" if absent else ""
                return (
                    f"the {_ordinal(empty + 1)} run consumed no sample{note}; the "
                    f"{_ordinal(other + 1)} made {_plural(self.draws[other], 'draw')} "
                    f"over {_plural(self.keys, 'key')}"
                )
        count = len(self.differences)
        lines = [
            f"{count:,} of {_plural(self.keys, 'key')} differ{'s' if count == 1 else ''} "
            f"(the first run made {_plural(self.draws[0], 'draw')}, the second {self.draws[1]:,}):"
        ]
        lines += [f"{d.key}: {d.difference}" for d in self.differences[:limit]]
        if count > limit:
            lines.append(f"(and {_plural(count - limit, 'more key')})")
        return "\n".join(lines)


def _by_key(draws: Iterable[Mapping[str, Any]]) -> dict[str, list[_Draw]]:
    """Each key's consumed samples, in the order the run consumed them."""
    keys: dict[str, list[_Draw]] = {}
    for number, draw in enumerate(draws):
        keys.setdefault(draw["key"], []).append((draw["index"], draw["draw_id"], number))
    return keys


def _key_difference(mine: list[_Draw], theirs: list[_Draw]) -> str | None:
    """How one key's consumed samples differ between two runs, or ``None``."""
    counts = Counter(d[:2] for d in mine), Counter(d[:2] for d in theirs)
    if counts[0] == counts[1]:
        return None
    for only, other in ((0, 1), (1, 0)):
        drawn = (mine, theirs)[only]
        if not (mine, theirs)[other]:
            return (
                f"only the {_ordinal(only + 1)} run drew from it "
                f"({_plural(len(drawn), 'sample')}, from draw {drawn[0][2]:,} on)"
            )
    # In index order, whichever way each run interleaved its draws: the first index
    # where the two runs' samples part is the one to name.
    a, b = sorted(mine), sorted(theirs)
    found = ""
    for position in range(max(len(a), len(b))):
        x = a[position] if position < len(a) else None
        y = b[position] if position < len(b) else None
        if x is not None and y is not None and x[:2] == y[:2]:
            continue
        if x is not None and y is not None and x[0] == y[0]:
            found = (
                f"sample {x[0]} differs: the first run consumed draw id {x[1]} at draw "
                f"{x[2]:,}, the second draw id {y[1]} at draw {y[2]:,}"
            )
            break
        # The sample one run consumed more often: x, unless y sorts first.
        run = 1 if y is None or (x is not None and x[:2] < y[:2]) else 2
        extra = x if run == 1 else y
        assert extra is not None  # the longer list has an item at every position
        index, draw_id, number = extra
        if counts[2 - run][index, draw_id]:
            found = (
                f"the first run consumed sample {index} (draw id {draw_id}) "
                f"{_times(counts[0][index, draw_id])}, "
                f"the second {_times(counts[1][index, draw_id])}"
            )
        else:
            found = (
                f"only the {_ordinal(run)} run consumed sample {index} "
                f"(draw id {draw_id}, at draw {number:,})"
            )
        break
    if len(a) != len(b):
        found = (
            f"the first run consumed {_plural(len(a), 'sample')} of it, "
            f"the second {len(b):,}; {found}"
        )
    return found


def diff_runs(
    first: Iterable[Mapping[str, Any]],
    second: Iterable[Mapping[str, Any]],
) -> RunComparison:
    """Compare two runs key by key: which samples of each key each run consumed.

    Draws of different keys are compared only as sets: a concurrent program (an
    ``asyncio.gather``, a thread pool) records its draws as they complete, and a retry
    or a slow request changes that order without changing what each step consumed. Of
    one key, each run's samples (index and draw id, each as often as it was consumed)
    are compared, whatever order concurrent draws of that key completed in.

    Args:
        first: The draws of the first run (see :func:`read_run`).
        second: The draws of the second run.

    Returns:
        The comparison: for each key where the runs part, the first difference.
    """
    a, b = list(first), list(second)
    mine, theirs = _by_key(a), _by_key(b)
    differences, reordered = [], []
    for key in {**mine, **theirs}:
        drawn, other = mine.get(key, []), theirs.get(key, [])
        difference = _key_difference(drawn, other)
        if difference is not None:
            differences.append(KeyDifference(key, difference))
        elif [d[:2] for d in drawn] != [d[:2] for d in other]:
            reordered.append(key)
    return RunComparison((len(a), len(b)), len({**mine, **theirs}), differences, reordered)


def compare_runs(
    first: Iterable[Mapping[str, Any]],
    second: Iterable[Mapping[str, Any]],
) -> str | None:
    """Where two runs part, in words: ``None`` if they consumed the same samples.

    Args:
        first: The draws of the first run (see :func:`read_run`).
        second: The draws of the second run.

    Returns:
        For each key where the runs part, its first difference (see :func:`diff_runs`),
        or that one run consumed no sample.
    """
    return diff_runs(first, second).text()
