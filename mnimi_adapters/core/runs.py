"""Run records: which key and position each draw of a run consumed, in order.

Two runs of one program over one cache give bit-identical results only if every step
consumed the same sample. Thread scheduling, a changed loop order or a new retry can
silently shift which sample a step gets; a run record makes that visible. It is a JSON
Lines file: each run a recorder makes starts with a line that marks it, then one line per
sample handed to the program, numbered from 0 in each run::

    {"run": 1, "started": 1764172800.0}
    {"draw": 0, "key": "m1-...", "index": 0, "draw_id": "..."}

A re-run of the program appends its own run, so a record keeps every run and
:func:`read_run` reads the last one (a record written before runs were marked is one
run). :func:`compare_runs` reports the first draw where two runs part.

Example:
    >>> a = [{"key": "k", "index": 0, "draw_id": "x"}, {"key": "k", "index": 1, "draw_id": "y"}]
    >>> compare_runs(a, a)
    >>> compare_runs(a, a[:1])
    'the second run stopped after 1 draw; the first made 2'
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MnimiError

__all__ = ["RunRecorder", "compare_runs", "read_run", "read_runs"]

_quoted = json.JSONEncoder(ensure_ascii=True).encode

#: Keys whose line prefix a recorder keeps spelled, at most.
_PREFIXES = 4096
#: How a run's first line starts (see :class:`RunRecorder`).
_RUN_MARK = b'{"run":'


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
        self.path = Path(path).expanduser()
        # Checked now, opened with the run's first draw: a program that fails before it
        # draws (a store that cannot open) leaves no file behind.
        if self.path.is_dir() or not self.path.parent.is_dir():
            problem = "it is a directory" if self.path.is_dir() else "its folder does not exist"
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
            file = self.path.open("ab")
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
                line = f'{{"run":{self._run},"started":{time.time()}}}\n{line}'
            file.write(line.encode())
            self._draws += 1

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


def read_runs(path: str | os.PathLike[str]) -> list[list[dict[str, Any]]]:
    """The runs of a run record, oldest first, each its draws in order.

    Raises:
        MnimiError: A line is neither a run's mark nor a draw written by
            :class:`RunRecorder`; the error names the file and the line number.
    """
    runs: list[list[dict[str, Any]]] = []
    with Path(path).expanduser().open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                if isinstance(entry, dict) and "run" in entry and "draw_id" not in entry:
                    runs.append([])
                    continue
                if not isinstance(entry, dict) or not {"key", "index", "draw_id"} <= set(entry):
                    raise ValueError("not a draw")
            except ValueError as error:
                raise MnimiError(
                    f"{path}, line {number}: not a run record line ({error})"
                ) from error
            if not runs:  # a record written before runs were marked: one run
                runs.append([])
            runs[-1].append(entry)
    return runs


def read_run(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The draws of the last run in a run record, in order (none for an empty record).

    Raises:
        MnimiError: A line is not a run record line (see :func:`read_runs`).
    """
    runs = read_runs(path)
    return runs[-1] if runs else []


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second"}.get(n, f"#{n}")


def compare_runs(
    first: Iterable[Mapping[str, Any]],
    second: Iterable[Mapping[str, Any]],
) -> str | None:
    """Where two runs part: ``None`` if they consumed the same samples in the same order.

    Args:
        first: The draws of the first run (see :func:`read_run`).
        second: The draws of the second run.

    Returns:
        A sentence naming the first divergent draw (its number, and the key, index and
        draw id each run consumed there), or which run stopped early.
    """
    a, b = list(first), list(second)
    for draw, (mine, theirs) in enumerate(zip(a, b, strict=False)):
        if (mine["key"], mine["index"], mine["draw_id"]) != (
            theirs["key"],
            theirs["index"],
            theirs["draw_id"],
        ):
            return (
                f"draw {draw} differs: the first run consumed sample {mine['index']} of "
                f"{mine['key']} (draw id {mine['draw_id']}), the second sample "
                f"{theirs['index']} of {theirs['key']} (draw id {theirs['draw_id']})"
            )
    if len(a) == len(b):
        return None
    shorter, longer = (2, 1) if len(b) < len(a) else (1, 2)
    count = min(len(a), len(b))
    plural = "draw" if count == 1 else "draws"
    return (
        f"the {_ordinal(shorter)} run stopped after {count} {plural}; "
        f"the {_ordinal(longer)} made {max(len(a), len(b))}"
    )
