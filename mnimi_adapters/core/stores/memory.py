"""Sequences in a dict: the store of ``Repeatable``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..sample import Sample
from .base import Appended, SequenceStore, Summary


class MemoryStore(SequenceStore):
    """Sequences in a dict, for one process's lifetime."""

    def __init__(self) -> None:
        self._sequences: dict[str, list[Sample]] = {}
        self._draws: dict[str, set[str]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, index: int) -> Sample | None:
        sequence = self._sequences.get(key, ())
        return sequence[index] if index < len(sequence) else None

    def length(self, key: str) -> int:
        return len(self._sequences.get(key, ()))

    def has_draw(self, key: str, draw_id: str) -> bool:
        return draw_id in self._draws.get(key, ())

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> Appended:
        with self._lock:
            sequence = self._sequences.setdefault(key, [])
            draws = self._draws.setdefault(key, set())
            self._records.setdefault(key, record)
            added = Appended(start=len(sequence))
            for sample in samples:
                if sample.draw_id not in draws:
                    draws.add(sample.draw_id)
                    sequence.append(sample)
                    added.append(sample)
            return added

    def summaries(self) -> Iterator[Summary]:
        with self._lock:
            keys = list(self._sequences)
        for key in keys:
            summary = self.summary(key)
            if summary is not None:
                yield summary

    def summary(self, key: str) -> Summary | None:
        with self._lock:
            sequence = self._sequences.get(key)
            if sequence is None:
                return None
            return Summary(key, len(sequence), {"request": self._records.get(key, {})})

    def delete(self, key: str) -> None:
        with self._lock:
            self._sequences.pop(key, None)
            self._draws.pop(key, None)
            self._records.pop(key, None)
