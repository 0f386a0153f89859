"""Sequences as JSON Lines: one object per sample, readable without this library.

Each line holds the sequence's key, the sample's position, the request record (what
the key is the hash of) and the sample as stored::

    {"key": "m1-...", "index": 0, "request": {"model": ..., "messages": [...],
     "params": {...}}, "sample": {"text": ..., "draw_id": ..., ...}}

A file to import comes from someone else: every line is checked (its key must be the
hash of its request, its positions consecutive from 0, its draw ids new) before
anything is stored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, MnimiError
from ..request import Request, request_key
from ..sample import Sample
from .base import dump_json

__all__ = ["JsonlSequence", "jsonl_lines", "parse_jsonl", "read_jsonl"]


@dataclass
class JsonlSequence:
    """One sequence read from a JSON Lines file.

    Attributes:
        key: The request key.
        request: The request record.
        samples: The samples, in order.
        draws: Their draw ids.
    """

    key: str
    request: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    draws: set[str] = field(default_factory=set, repr=False)


def jsonl_lines(key: str, request: dict[str, Any], samples: Sequence[Sample]) -> Iterator[str]:
    """The lines (newline included) of one sequence.

    Example:
        >>> sample = Sample(text="4", draw_id="d0", created=0.0)
        >>> line = next(jsonl_lines("m1-k", {"model": "m"}, [sample]))
        >>> json.loads(line)["sample"]["text"]
        '4'
    """
    for index, sample in enumerate(samples):
        line = {"key": key, "index": index, "request": request, "sample": sample.to_dict()}
        yield dump_json(line, sort_keys=True) + "\n"


def _key_of(record: Any) -> str:
    """The key a request record hashes to.

    Raises:
        ValueError: ``record`` is not a request record.
    """
    if not isinstance(record, dict) or not isinstance(record.get("model"), str):
        raise ValueError('"request" is not a request record with a "model"')
    messages, params = record.get("messages"), record.get("params", {})
    if not isinstance(messages, list) or not isinstance(params, dict):
        raise ValueError('"request" needs a list of "messages" and a "params" object')
    try:
        request = Request.of(messages)
    except TypeError as error:
        raise ValueError(str(error)) from None
    identity = {"model": record["model"], "endpoint": record.get("endpoint")}
    return request_key(identity, Request(request.messages, params))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_fields(sample: Sample) -> None:
    """Refuse a sample whose fields the store would fail on half-way through an import.

    Raises:
        ValueError: A field has the wrong type.
    """
    usage = sample.usage
    if not isinstance(sample.draw_id, str) or not isinstance(sample.message, dict):
        raise ValueError('a sample\'s "draw_id" is a string and its "message" an object')
    if not isinstance(usage, dict) or not all(_number(v) for v in usage.values()):
        raise ValueError('a sample\'s "usage" maps names to token counts')
    if not (sample.cost is None or _number(sample.cost)) or not _number(sample.created):
        raise ValueError('a sample\'s "cost" and "created" are numbers')


def _line(raw: bytes, sequences: dict[str, JsonlSequence]) -> None:
    """Add one line's sample to its sequence.

    Raises:
        ValueError: The line is not a sample that continues its sequence.
    """
    line = json.loads(raw.decode("utf-8"))
    if not isinstance(line, dict) or not {"key", "index", "request", "sample"} <= set(line):
        raise ValueError('a line is an object with "key", "index", "request" and "sample"')
    key, index = line["key"], line["index"]
    if not isinstance(key, str) or key != _key_of(line["request"]):
        raise ValueError(f"key {str(key)[:80]!r} is not the hash of its request")
    sequence = sequences.setdefault(key, JsonlSequence(key, line["request"]))
    if line["request"] != sequence.request:
        raise ValueError(f"the request differs from the one of key {key} before it")
    if index != len(sequence.samples) or isinstance(index, bool):
        raise ValueError(f"index {index!r} of key {key}; {len(sequence.samples)} was next")
    try:
        sample = Sample.from_dict(line["sample"])
    except CorruptStoreError as error:
        raise ValueError(str(error)) from None
    _check_fields(sample)
    if sample.draw_id in sequence.draws:
        raise ValueError(f"draw {sample.draw_id!r} appears twice in key {key}")
    sequence.draws.add(sample.draw_id)
    sequence.samples.append(sample)


def read_jsonl(path: str | os.PathLike[str]) -> list[JsonlSequence]:
    """Every sequence of a JSON Lines file, each checked whole.

    Raises:
        MnimiError: A line is not well formed; the error names the file and the line
            number. Nothing is returned, so nothing of the file gets stored.
        OSError: The file cannot be read.
    """
    # Bytes, decoded line by line: text that is not UTF-8 is named by its line too.
    with Path(path).expanduser().open("rb") as lines:
        return parse_jsonl(lines, str(path))


def parse_jsonl(lines: Iterable[bytes], name: str) -> list[JsonlSequence]:
    """Every sequence of JSON Lines read from ``lines`` (a file, or stdin's bytes),
    each checked whole.

    Raises:
        MnimiError: A line is not well formed; the error names ``name`` and the line
            number. Nothing is returned, so nothing of the input gets stored.
        OSError: The input cannot be read.
    """
    sequences: dict[str, JsonlSequence] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            _line(raw, sequences)
        except (ValueError, RecursionError) as error:  # json's on deep nesting
            raise MnimiError(f"{name}, line {number}: {error}") from None
    return list(sequences.values())
