"""Run records: which key and position each draw of a run consumed, in order.

Two runs of one program over one cache give bit-identical results only if every step
consumed the same sample. Thread scheduling, a changed loop order or a new retry can
silently shift which sample a step gets; a run record makes that visible. It is a JSON
Lines file, one line per sample handed to the program::

    {"draw": 0, "key": "m1-...", "index": 0, "draw_id": "..."}

:func:`compare_runs` reports the first draw where two records part.

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
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import MnimiError

__all__ = ["RunRecorder", "compare_runs", "read_run"]

_quoted = json.JSONEncoder(ensure_ascii=True).encode

#: Keys whose line prefix a recorder keeps spelled, at most.
_PREFIXES = 4096


class RunRecorder:
    """Appends one line per consumed sample to a run record (thread-safe).

    Args:
        path: The JSON Lines file; created if missing, appended to otherwise.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.jsonl"
        >>> with RunRecorder(path) as record:
        ...     record.consumed("m1-abc", 0, "draw-1")
        >>> read_run(path)
        [{'draw': 0, 'key': 'm1-abc', 'index': 0, 'draw_id': 'draw-1'}]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        # Buffered: a write(2) per line cost a replay of hits 10% more. The buffer is
        # flushed when the recorder is closed or collected and at interpreter exit; a
        # process killed outright (SIGKILL) loses at most its last few kilobytes of lines.
        self._file = self.path.open("ab")
        weakref.finalize(self, self._file.close)
        #: Each key's line prefix, spelled once: a run draws from few keys many times.
        self._prefixes: dict[str, str] = {}
        # Appending to an earlier record continues its draw numbers.
        with self.path.open(encoding="utf-8") as earlier:
            self._draws = sum(1 for _ in earlier)

    def consumed(self, key: str, index: int, draw_id: str) -> None:
        """Record that the run was handed sample ``index`` of ``key``."""
        with self._lock:
            # Spelled out rather than json.dumps of a dict: this runs once per sample
            # served, and a replay's hits cost only tens of microseconds.
            prefix = self._prefixes.get(key)
            if prefix is None:
                if len(self._prefixes) >= _PREFIXES:  # a run over millions of keys
                    self._prefixes.clear()
                prefix = self._prefixes[key] = f',"key":{_quoted(key)},"index":'
            line = (
                f'{{"draw":{self._draws}{prefix}{index},"draw_id":{_quoted(draw_id)}}}\n'
            ).encode()
            self._file.write(line)
            self._draws += 1

    def flush(self) -> None:
        """Write the lines recorded so far to the file (for a reader while the run goes on)."""
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        """Close the file (recording a further draw raises :class:`ValueError`)."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_run(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The draws of a run record, in order.

    Raises:
        MnimiError: A line is not a draw written by :class:`RunRecorder`; the error names
            the file and the line number.
    """
    draws = []
    with Path(path).expanduser().open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                draw = json.loads(line)
                if not isinstance(draw, dict) or not {"key", "index", "draw_id"} <= set(draw):
                    raise ValueError("not a draw")
            except ValueError as error:
                raise MnimiError(
                    f"{path}, line {number}: not a run record line ({error})"
                ) from error
            draws.append(draw)
    return draws


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
