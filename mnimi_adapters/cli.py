"""The ``mnimi`` command: inspect, check, prune and slice a sample cache.

Usage::

    mnimi [--json] stats PATH
    mnimi [--json] show PATH [KEY | --grep TEXT] [--limit N]
    mnimi [--json] verify PATH
    mnimi [--json] prune PATH --max-size SIZE [--dry-run]
    mnimi [--json] export PATH OUT (--keys KEY [KEY ...] | --grep TEXT)
    mnimi [--json] export PATH OUT --bundle [--keys ... | --grep ...] [--record RUN.jsonl]
    mnimi [--json] export PATH OUT.jsonl --jsonl [--keys ... | --grep ...]   (- : stdout)
    mnimi [--json] import FILE.jsonl PATH                                     (- : stdin)
    mnimi [--json] explain PATH REQUEST.json
    mnimi [--json] diff-runs A B
    mnimi demo [ARGS ...]

PATH (and OUT) is a cache directory or a Redis URL such as
``redis://host:6379/0?namespace=my-project``. ``--json`` may also follow the
command. Exit codes: 0 ok; 1 damage found (or a key or match missing); 2 usage
error, or the store cannot be opened; 141 the output's reader left before it ended.

Commands that read a cache never create one: a PATH without a cache is an
error, not a new empty store.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import json
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from . import __version__
from .core.bundle import (
    Manifest,
    create_bundle_store,
    describe_foreign,
    foreign_draws,
    is_bundle,
    verify_bundle,
    write_run_record,
)
from .core.errors import CorruptStoreError, MnimiError, StoreError
from .core.explain import explain_miss, requested_record
from .core.request import content_text
from .core.runs import diff_runs, read_runs
from .core.sample import Sample
from .core.stores import (
    FORMAT_VERSION,
    Check,
    SequenceStore,
    Summary,
    is_redis_url,
    open_store,
    redis_location,
)
from .core.stores.base import dump_json, recency
from .core.stores.check import keyed_by, request_altered, without_cycle_collection
from .core.stores.check import plural as _plural
from .core.stores.disk import is_store_directory
from .core.stores.files import create_private
from .core.stores.jsonl import jsonl_lines, parse_jsonl, read_jsonl
from .providers import keyed_endpoint

#: The stores the command works on: a cache directory or a Redis namespace.
Store = SequenceStore

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_ERROR = 2
#: The reader of the output left before it ended (``mnimi show ... | head -1``): 128 +
#: SIGPIPE, what a shell reports for a command the signal ended.
EXIT_PIPE = 141

#: The FILE (or OUT) that is stdin (or stdout), as for ``explain``'s REQUEST.json.
STDIO = "-"

#: Width of one-line excerpts of prompts and sample texts.
EXCERPT = 60

_JSON_HELP = "machine-readable output (JSON with stable keys)"


class CommandError(Exception):
    """An expected failure: printed on stderr without a traceback.

    Attributes:
        code: The exit code (1: a miss or damage, 2: usage or store error).
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- sizes, numbers, text -------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    **{prefix: 1000**power for power, prefix in enumerate("kmgtpe", 1)},
    **{f"{prefix}b": 1000**power for power, prefix in enumerate("kmgtpe", 1)},
    **{f"{prefix}i": 1024**power for power, prefix in enumerate("kmgtpe", 1)},
    **{f"{prefix}ib": 1024**power for power, prefix in enumerate("kmgtpe", 1)},
}
#: The largest size taken: 8 EiB (2**63 bytes, all a file offset can address), far above
#: any store; a limit beyond it would only be printed as an absurd number of EiB.
_MAX_SIZE = 8 * 1024**6


def parse_size(text: str) -> int:
    """Parse a size such as ``500MB``, ``2GiB``, ``100k`` or ``1.5G`` into bytes.

    Decimal units (k, MB, ...) are powers of 1000 and binary ones (KiB, Mi,
    ...) powers of 1024, case-insensitively.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a size, or one above 8 EiB.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 500MB, 2GiB, 100k)")
    # Decimal, so that "0.1GB" is exactly 100000000 and not one byte short.
    size = int(Decimal(match.group(1)) * _UNITS[unit])
    if size > _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (at most 8EiB)")
    return size


#: The largest limit taken: SQLite's largest integer, far above any store's keys or samples.
_MAX_LIMIT = 2**63 - 1


def _limit(text: str) -> int:
    """An argparse type: a non-negative int a store can be asked for (at most 2**63-1)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r} (use a number >= 0)")
    if value > _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r} (at most {_MAX_LIMIT})")
    return value


def format_cost(cost: float) -> str:
    """US dollars to four decimals, or to two significant digits below a cent's hundredth:
    a cheap model's $0.0000098 must not read as free."""
    if cost == 0 or cost >= 0.0001:
        return f"${cost:.4f}"
    return f"${cost:.{1 - math.floor(math.log10(cost))}f}"


def format_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    power = 0
    while size >= 1024 and power < len(units) - 1:
        size /= 1024
        power += 1
    return f"{int(size)} B" if power == 0 else f"{size:.1f} {units[power]}"


def _when(timestamp: Any) -> str:
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    return "-"


def _repr_escape(char: str) -> str:
    """``char`` escaped as ``repr`` escapes it (``\\x1b``, ``\\u202e``)."""
    return repr(char)[1:-1]


def _json_escape(char: str) -> str:
    """``char`` as a JSON escape (``\\u009b``; a pair of them beyond the BMP)."""
    return json.dumps(char)[1:-1]


def _printable(text: str, escape: Callable[[str], str] = _repr_escape) -> str:
    """``text`` with every character that is not printable escaped, as ``repr`` shows it.

    A shared cache's model name, key, prompt or finish reason may hold terminal control
    sequences (retitling the terminal, hiding text, a carriage return that overwrites a
    line), or a newline that would fake a line of output: each field is shown escaped.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


def _printable_lines(text: str) -> str:
    """:func:`_printable` on each line of ``text``: its own line breaks are kept."""
    return "\n".join(map(_printable, text.split("\n")))


def excerpt(text: str, width: int = EXCERPT) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``width``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 3, 0)] + "..."


def _message_text(message: Any) -> str:
    """A message's text, or a note of its tool calls when it has no text."""
    if not isinstance(message, dict):
        return str(message)
    text = content_text(message.get("content"), shown=True)
    calls = message.get("tool_calls")
    if not text and isinstance(calls, list) and calls:
        names = [
            str(call.get("function", {}).get("name", "?")) if isinstance(call, dict) else "?"
            for call in calls
        ]
        text = f"[tool calls: {', '.join(names)}]"
    return text


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """A plain text table; columns in ``right`` (numbers) are right-aligned."""
    body = [[_printable(str(cell)) for cell in row] for row in rows]
    aligned = set(right)
    # One format string for every line: a prune of a million keys prints a million.
    template = "  ".join(
        f"{{:{'>' if index in aligned else '<'}{max(map(len, column))}}}"
        for index, column in enumerate(zip(headers, *body, strict=True))
    )
    return "\n".join(template.format(*cells).rstrip() for cells in [headers, *body])


def _emit_json(data: Any, file: TextIO | None = None) -> None:
    # json escapes C0 controls only: DEL, C1 controls (\x9b opens a terminal command)
    # and the like are escaped too, line by line (a line break is the output's own).
    lines = json.dumps(data, indent=2, ensure_ascii=False).split("\n")
    print("\n".join(_printable(line, _json_escape) for line in lines), file=file)


def _warn(message: str) -> None:
    print(f"mnimi: {_printable_lines(message)}", file=sys.stderr)


# -- progress -------------------------------------------------------------


class Progress:
    """A one-line progress counter on stderr, drawn only when stderr is a terminal.

    Redirected or captured stderr stays clean, so logs and pipes never see
    carriage returns.
    """

    def __init__(self, label: str, total: int | None = None) -> None:
        self._stream: TextIO = sys.stderr
        try:
            self._enabled = self._stream.isatty()
        except (AttributeError, ValueError):
            self._enabled = False
        self._label = label
        self.total = total
        self._done = 0
        self._drawn = 0.0

    def advance(self, step: int = 1) -> None:
        """Count ``step`` more items done, redrawing at most ten times a second."""
        self._done += step
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            if self.total:
                filled = min(20, 20 * self._done // self.total)
                bar = "#" * filled + "-" * (20 - filled)
                text = f"{self._label} [{bar}] {self._done:,}/{self.total:,}"
            else:
                text = f"{self._label} {self._done:,}"
            self._stream.write(f"\r{text}\x1b[K")
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._enabled and self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


# -- opening stores -------------------------------------------------------


def _shown(path_text: str) -> str:
    """``path_text`` fit for a message: a Redis URL's password never appears."""
    return redis_location(path_text) if is_redis_url(path_text) else path_text


@contextmanager
def _open_store(path_text: str, read_only: bool = True) -> Iterator[Store]:
    """The existing store at ``path_text`` (a directory or a Redis URL), closed after use.

    Never creates one: a location without a store is an error. Opened read-only
    unless the command writes, so it never changes what it reads.
    """
    store = open_store(path_text, create=False, read_only=read_only)
    try:
        yield store
    finally:
        store.close()


#: One sequence as the listings see it.
Entry = Summary


def _prompt(entry: Entry) -> str:
    """The first user message (else the first message): what a listing shows."""
    messages = entry.messages
    first = next(
        (m for m in messages if isinstance(m, dict) and m.get("role") == "user"),
        messages[0] if messages else None,
    )
    return "" if first is None else _message_text(first)


def _matches(entry: Entry, needle: str) -> bool:
    """Whether ``needle`` occurs (case-insensitively) in the model or messages."""
    parts = [entry.model, *(_message_text(message) for message in entry.messages)]
    return needle.casefold() in "\n".join(parts).casefold()


def _listed(entry: Entry) -> dict[str, Any]:
    """The stable JSON form of a listing line."""
    return {
        "key": entry.key,
        "model": entry.model,
        "samples": entry.length,
        "messages": len(entry.messages),
        "prompt": excerpt(_prompt(entry), 200),
        "bytes": int(entry.number("bytes")),
        "stored": entry.info.get("stored"),
        "used": entry.info.get("used"),
        "error": entry.error,
    }


def _entry(store: Store, key: str) -> Entry:
    """``key``'s length and record; damage is noted on the entry, not raised."""
    return store.summary(key) or Entry(key, error=f"key {key} has no record")


def _entries(store: Store) -> list[Entry]:
    """Every sequence of ``store`` with its record, damaged records marked."""
    entries = []
    with Progress("reading", None) as progress:
        for entry in store.summaries():
            entries.append(entry)
            progress.advance()
    return entries


def _exists(store: Store, key: str) -> bool:
    """Whether ``key`` has a sequence (a damaged one counts: its damage is reported later)."""
    return store.summary(key) is not None


def _resolve_key(store: Store, wanted: str, keys: list[str] | None = None) -> str:
    """``wanted`` itself, or the one key it is a prefix of (like git hashes).

    Raises:
        CommandError: No key (code 1) or several keys (code 2) match.
    """
    if _exists(store, wanted):
        return wanted
    candidates = [k for k in (keys if keys is not None else store.keys()) if k.startswith(wanted)]
    if not candidates:
        raise CommandError(f"no key {wanted} in {store.location}", EXIT_FOUND)
    if len(candidates) > 1:
        raise CommandError(f"key prefix {wanted} is ambiguous ({len(candidates)} keys match)")
    return candidates[0]


# -- stats ----------------------------------------------------------------


def cmd_stats(args: argparse.Namespace) -> int:
    """Keys, samples, sizes, tokens and cost, overall and per model."""
    with _open_store(args.path) as store:
        totals = store.totals()
        volume = store.volume()
    in_redis = store.held_in == "memory"
    per_model = [asdict(row) for row in totals.models]
    damaged = [{"key": e.key, "error": e.error} for e in totals.damaged]
    summed: dict[str, Any] = {
        name: sum(row[name] for row in per_model)
        for name in ("samples", "bytes", "prompt_tokens", "completion_tokens")
    }
    summed["cost"] = float(sum(row["cost"] for row in per_model))
    if args.json:
        _emit_json(
            {
                "path": store.location,
                "format": FORMAT_VERSION,
                "keys": totals.keys,
                **summed,
                # A Redis store occupies server memory, not disk: each size under its name.
                "disk_bytes": None if in_redis else volume,
                **({"memory_bytes": volume} if in_redis else {}),
                "models": per_model,
                "damaged": damaged,
            }
        )
    else:
        print(f"cache      {store.location} (format {FORMAT_VERSION})")
        print(f"keys       {totals.keys:,}")
        print(f"samples    {summed['samples']:,}")
        where = "in Redis memory" if in_redis else "on disk"
        held = "unknown" if volume is None else format_size(volume)
        print(f"size       {held} {where}, {format_size(summed['bytes'])} of samples")
        print(
            f"tokens     {summed['prompt_tokens']:,} prompt + "
            f"{summed['completion_tokens']:,} completion"
        )
        print(f"cost       {format_cost(summed['cost'])} (where the provider reported it)")
        if per_model:
            print()
            print(
                _table(
                    ["MODEL", "KEYS", "SAMPLES", "PROMPT TOK", "COMPL TOK", "COST", "SAMPLES SIZE"],
                    (
                        [
                            r["model"],
                            f"{r['keys']:,}",
                            f"{r['samples']:,}",
                            f"{r['prompt_tokens']:,}",
                            f"{r['completion_tokens']:,}",
                            format_cost(r["cost"]),
                            format_size(r["bytes"]),
                        ]
                        for r in per_model
                    ),
                    right=range(1, 7),
                )
            )
    if damaged:
        _warn(
            f"{_plural(len(damaged), 'key')} with a damaged record; "
            f"run `mnimi verify {_shown(args.path)}` for details"
        )
        return EXIT_FOUND
    return EXIT_OK


# -- show -----------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    """A listing of the requests, or one request and its samples."""
    if args.key is not None and args.grep is not None:
        raise CommandError("show takes a KEY or --grep TEXT, not both")
    with _open_store(args.path) as store:
        if args.key is not None:
            return _show_key(store, _resolve_key(store, args.key), args)
        return _show_listing(store, args)


def _show_listing(store: Store, args: argparse.Namespace) -> int:
    # Most recently used first: what the last run did is what one looks for.
    if args.grep is None:
        matched, entries = store.recent(args.limit)
    else:
        entries = [e for e in _entries(store) if e.error is None and _matches(e, args.grep)]
        entries.sort(key=recency)
        matched = len(entries)
        entries = entries[: args.limit]
    damaged = sum(1 for e in entries if e.error)
    if args.json:
        _emit_json(
            {
                "path": store.location,
                "matched": matched,
                "keys": [_listed(e) for e in entries],
            }
        )
    elif matched:
        if entries:  # none under --limit 0: the count below still says what is there
            print(
                _table(
                    ["KEY", "MODEL", "SAMPLES", "MSGS", "PROMPT"],
                    (
                        [
                            e.key,
                            e.model,
                            f"{e.length:,}",
                            len(e.messages),
                            f"(damaged: {e.error})" if e.error else repr(excerpt(_prompt(e))),
                        ]
                        for e in entries
                    ),
                    right=(2, 3),
                )
            )
        if len(entries) < matched:
            print(f"({len(entries):,} of {matched:,} keys shown)")
    elif args.grep is None and not matched:
        print(f"no requests cached in {store.location}")
    if args.grep is not None and not matched:
        _warn(f"no request in {store.location} matches {args.grep!r}")
        return EXIT_FOUND
    return EXIT_FOUND if damaged else EXIT_OK


def _show_key(store: Store, key: str, args: argparse.Namespace) -> int:
    entry = _entry(store, key)
    count = entry.length if args.limit is None else min(entry.length, args.limit)
    samples: list[dict[str, Any]] = []
    damaged = entry.error is not None
    for index in range(count):
        try:
            sample = store.get(key, index)
        except CorruptStoreError as error:
            samples.append({"index": index, "error": str(error)})
            damaged = True
            continue
        if sample is None:
            samples.append({"index": index, "error": f"sample #{index} is missing"})
            damaged = True
        else:
            samples.append({"index": index, **sample.to_dict()})
    if args.json:
        _emit_json(
            {
                "key": key,
                "request": entry.request,
                "length": entry.length,
                "prompt_tokens": int(entry.number("prompt_tokens")),
                "completion_tokens": int(entry.number("completion_tokens")),
                "cost": float(entry.number("cost")),
                "bytes": int(entry.number("bytes")),
                "stored": entry.info.get("stored"),
                "used": entry.info.get("used"),
                "error": entry.error,
                "samples": samples,
            }
        )
    else:
        _print_request(entry)
        print()
        if samples:
            print(
                _table(
                    ["#", "FINISH", "PROMPT TOK", "COMPL TOK", "TEXT"],
                    (_sample_row(s) for s in samples),
                    right=(0, 2, 3),
                )
            )
        if count < entry.length:
            print(f"({count:,} of {entry.length:,} samples shown)")
    return EXIT_FOUND if damaged else EXIT_OK


def _print_request(entry: Entry) -> None:
    request = entry.request
    print(f"key        {_printable(entry.key)}")
    if entry.error:
        print(f"damaged    {_printable(entry.error)}")
    print(f"model      {_printable(entry.model)}")
    if request.get("endpoint"):
        print(f"endpoint   {_printable(str(request['endpoint']))}")
    params = json.dumps(request.get("params"), ensure_ascii=False, sort_keys=True)
    print(f"params     {_printable(params)}")
    print(f"messages   {len(entry.messages)}")
    for message in entry.messages:
        role = message.get("role", "?") if isinstance(message, dict) else "?"
        print(f"  {_printable(str(role))}: {_printable(excerpt(_message_text(message), 100))}")
    print(
        f"samples    {entry.length:,}, {int(entry.number('prompt_tokens')):,} prompt + "
        f"{int(entry.number('completion_tokens')):,} completion tokens, "
        f"{format_cost(entry.number('cost'))}, {format_size(entry.number('bytes'))}"
    )
    print(f"stored     {_when(entry.info.get('stored'))}")
    print(f"used       {_when(entry.info.get('used'))}")


def _sample_row(sample: dict[str, Any]) -> list[str]:
    if "error" in sample:
        return [str(sample["index"]), "", "", "", f"(damaged: {sample['error']})"]
    usage = sample.get("usage") or {}
    text = _message_text(sample.get("message") or {}) if not sample["text"] else sample["text"]
    return [
        str(sample["index"]),
        str(sample.get("finish_reason") or "-"),
        f"{usage.get('prompt_tokens', 0):,}",
        f"{usage.get('completion_tokens', 0):,}",
        repr(excerpt(text)),
    ]


# -- verify ---------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every entry of the store; list each problem."""
    # check_format is the store's own: an unknown version is an error, a damaged
    # marker one problem among the others.
    if not is_redis_url(args.path) and is_bundle(args.path):
        notes: list[str] = []
        with Progress("verify bundle", None) as progress:
            check = verify_bundle(args.path, progress.advance, notes.append)
        return _verify_report(args, args.path, check, notes)
    try:
        store = open_store(args.path, create=False, read_only=True, check_format=False)
    except CorruptStoreError as error:
        # Verify's own finding, not the advice to run verify that a store's error gives.
        return _verify_report(args, args.path, Check(problems=[_unopenable(error)]))
    with store, Progress("verify", None) as progress:
        result = store.check(progress.advance)
    return _verify_report(args, store.location, result)


def _unopenable(error: CorruptStoreError) -> dict[str, str | None]:
    """The problem of a store too damaged to open (a ``cache.db`` cut short, say)."""
    # SQLite's own words, where the store's error came from it.
    cause = error.__context__
    detail = f" ({cause})" if isinstance(cause, sqlite3.Error) else f": {error}"
    return {
        "key": None,
        "row": None,
        "problem": f"the store is damaged past opening{detail}, so no command can read it: "
        "restore the directory from a copy",
    }


def _verify_report(
    args: argparse.Namespace, location: str, check: Check, notes: Sequence[str] = ()
) -> int:
    result = {
        "path": location,
        "format": check.format,
        "ok": check.ok,
        "keys": check.keys,
        "samples": check.samples,
        "rows": check.rows,
        "problems": check.problems,
        "notes": list(notes),
    }
    if args.json:
        _emit_json(result)
    else:
        for note in notes:
            print(f"note: {_printable(note)}")
        for problem in check.problems:
            where = problem["key"] or problem["row"] or location
            print(f"{_printable(where)}: {_printable(str(problem['problem']))}")
        checked = f"{_plural(result['keys'], 'key')}, {_plural(result['samples'], 'sample')}"
        if check.problems:
            bad = len({p["key"] for p in check.problems if p["key"] is not None})
            print(
                f"damaged: {_plural(len(check.problems), 'problem')}, "
                f"{bad:,} of {_plural(result['keys'], 'key')} affected "
                f"({_plural(result['samples'], 'sound sample')})"
            )
        else:
            print(f"ok: {checked}")
    return EXIT_FOUND if check.problems else EXIT_OK


# -- prune ----------------------------------------------------------------


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove least-recently-used whole sequences until the samples fit."""
    limit: int = args.max_size
    with _open_store(args.path, read_only=args.dry_run) as store:
        with Progress("prune: checking", None) as progress:
            check = store.check(progress.advance)
        if check.problems:
            # Whatever verify reports: unknown sizes and times would make any
            # choice a guess, and deleting beside damage may lose what repair needs.
            for problem in check.problems:
                _warn(f"{problem['key'] or problem['row'] or store.location}: {problem['problem']}")
            raise CommandError(
                f"the store is damaged ({_plural(len(check.problems), 'problem')}); nothing "
                f"removed (run `mnimi verify {_shown(args.path)}`)",
                EXIT_FOUND,
            )
        entries = check.summaries
        before = sum(int(e.number("bytes")) for e in entries)
        total = before
        victims: list[Entry] = []
        for entry in sorted(entries, key=lambda e: (e.number("used"), e.number("stored"), e.key)):
            if total <= limit:
                break
            victims.append(entry)
            total -= int(entry.number("bytes"))
        if not args.dry_run:
            with Progress("prune", len(victims)) as progress:
                for entry in victims:
                    # One transaction per sequence: an interrupted prune never
                    # leaves part of a sequence behind.
                    store.delete(entry.key)
                    progress.advance()
    removed: list[dict[str, Any]] = [
        {
            "key": e.key,
            "model": e.model,
            "samples": e.length,
            "bytes": int(e.number("bytes")),
            "used": e.info.get("used"),
        }
        for e in victims
    ]
    if args.json:
        _emit_json(
            {
                "path": store.location,
                "dry_run": bool(args.dry_run),
                "max_size": limit,
                "bytes_before": before,
                "bytes_after": total,
                "removed": removed,
                "kept": len(entries) - len(victims),
            }
        )
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    if not victims:
        print(
            f"nothing to prune: {format_size(before)} of samples fit in {format_size(limit)} "
            f"({_plural(len(entries), 'key')})"
        )
        return EXIT_OK
    print(
        _table(
            ["ACTION", "KEY", "MODEL", "SAMPLES", "SIZE", "LAST USED"],
            (
                [
                    verb,
                    r["key"],
                    r["model"],
                    f"{r['samples']:,}",
                    format_size(r["bytes"]),
                    _when(r["used"]),
                ]
                for r in removed
            ),
            right=(3, 4),
        )
    )
    print(
        f"{verb} {len(victims):,} of {_plural(len(entries), 'sequence')} "
        f"({_plural(sum(r['samples'] for r in removed), 'sample')}, "
        f"{format_size(before - total)}); {format_size(total)} of samples "
        f"{'would ' if args.dry_run else ''}remain (limit {format_size(limit)})"
    )
    return EXIT_OK


# -- export ---------------------------------------------------------------


@contextmanager
def _writing_to(out: Path) -> Iterator[None]:
    """Checks of an export's OUT: a file-system refusal is an error that names OUT.

    Python 3.11's ``exists()`` and ``is_dir()`` raise where this user may not look
    (a folder of mode 000), rather than answer.

    Raises:
        CommandError: OUT, or a folder on the way to it, cannot be looked into.
    """
    try:
        yield
    except OSError as error:
        at = f" at {error.filename}" if error.filename not in (None, str(out)) else ""
        raise CommandError(
            f"cannot write {out}: {error.strerror or error}{at}; give this user access to "
            "its folder, or choose another OUT"
        ) from None


def _export_target(path_text: str, source: Store) -> tuple[Callable[[], Store], str]:
    """How to open (creating it) the store at OUT, and how to name it in messages.

    Raises:
        CommandError: OUT is the source, or a directory that is not a cache.
    """
    if is_redis_url(path_text):
        location = redis_location(path_text)
        # Same server spelled the same way, same namespace: the same store.
        if location == source.location:
            raise CommandError("OUT must differ from PATH")
        return lambda: open_store(path_text), location
    out = Path(path_text).expanduser()
    with _writing_to(out):
        if (
            not is_redis_url(source.location)
            and out.exists()
            and out.resolve() == Path(source.location).resolve()
        ):
            raise CommandError("OUT must differ from PATH")
        if out.is_dir() and not is_store_directory(out) and any(out.iterdir()):
            # Never drop a cache into a directory that holds other things.
            raise CommandError(f"{out} exists and is not a cache directory")
    return lambda: open_store(out), str(out)


def _read_sequence(source: Store, entry: Entry) -> tuple[list[Sample], str | None]:
    """Every sample of one sequence, or the reason it cannot be exported whole."""
    if request_altered(entry.key, entry.request):  # copied, it would pass for the sampled one
        return [], "its recorded request is not the one its key is the hash of; not exported"
    samples: list[Sample] = []
    try:
        for index in range(entry.length):
            sample = source.get(entry.key, index)
            if sample is None:
                return [], f"sample #{index} is missing; not exported"
            samples.append(sample)
    except CorruptStoreError as error:
        return [], f"{error}; not exported"
    draws = [s.draw_id for s in samples]
    if len(set(draws)) != len(draws):
        # The target would drop the second copy and shift every later index.
        return [], "the sequence holds a draw twice; not exported"
    return samples, None


def _stored_form(sample: Sample | None) -> str | None:
    """``sample`` as the JSON a store keeps, its fields in one order: what two copies of
    one sample share, a changed text or message included (a draw id alone is not)."""
    return None if sample is None else dump_json(sample.to_dict(), sort_keys=True)


def _holds_another(target: Store, key: str, samples: list[Sample]) -> bool:
    """Whether ``target`` holds, under ``key``, a sequence other than ``samples``: one
    that ``samples`` neither extend nor begin (a slice exported back into the longer
    sequence it was cut from holds the same samples, not different ones).

    Samples are compared whole, not by draw id: an edited copy that kept its draw ids
    would otherwise pass as the sequence it was made from.
    """
    common = min(target.length(key), len(samples))
    held = [_stored_form(target.get(key, i)) for i in range(common)]
    return held != [_stored_form(s) for s in samples[:common]]


def _write_sequence(
    target: Store, key: str, request: dict[str, Any], samples: list[Sample]
) -> tuple[int, str | None]:
    """Append what ``target`` lacks of one sequence; return (samples added, problem)."""
    if _holds_another(target, key, samples):
        # Appending would interleave two different sequences under one key.
        return 0, f"{target.location} holds a different sequence for this key; not exported"
    missing = samples[target.length(key) :]  # none when target holds them all, or more
    return len(target.append(key, missing, request)), None


def _bundle_target(
    path_text: str, record: str | None
) -> tuple[Callable[[], Store], str, list[dict[str, Any]] | None]:
    """How to open (creating it) a new bundle's store, the bundle's name, and the draws
    of the run record's last run (the one that made the slice) if one is to be carried.

    Raises:
        CommandError: OUT is a Redis URL or a directory that is not empty, or the run
            record to carry is not one.
    """
    if is_redis_url(path_text):
        raise CommandError("a bundle is a directory, not a Redis store")
    out = Path(path_text).expanduser()
    with _writing_to(out):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CommandError(f"{out} exists and is not an empty directory")
    # A record that is not one fails before anything is written.
    draws = None if record is None else _run(record)[0]
    return lambda: create_bundle_store(out), str(out), draws


def _check_record(
    record: str, source: Store, entries: list[Entry], draws: list[dict[str, Any]]
) -> None:
    """Refuse a run record that names a sample the exported sequences do not hold.

    Raises:
        CommandError: A draw of the record consumed a sample the export leaves out or
            ``source`` lacks (a record of another cache, or of another slice).
    """
    lengths = {entry.key: entry.length for entry in entries}
    foreign = foreign_draws(draws, lengths, source)
    first = next(foreign, None)
    if first is None:
        return
    more = sum(1 for _ in foreign)
    draw, why = first
    hint = ""
    if why == "no key" and _exists(source, draw["key"]):
        hint = f" ({source.location} holds it: select it too, with --keys or --grep)"
    elif why == "no key":
        hint = f" (nor does {source.location}: is it the record of another cache?)"
    raise CommandError(
        f"{record} records samples the export does not hold: "
        f"{describe_foreign(draw, why, lengths)}{hint}"
        + (f"; and {_plural(more, 'more draw')}" if more else "")
        + "; nothing written"
    )


def _selected(source: Store, args: argparse.Namespace) -> list[Entry]:
    """The sequences ``--keys`` or ``--grep`` name; every one for a bundle without them."""
    if args.keys is not None:
        known = None if all(_exists(source, k) for k in args.keys) else list(source.keys())
        wanted = list(dict.fromkeys(_resolve_key(source, k, known) for k in args.keys))
        return [_entry(source, key) for key in wanted]
    if args.grep is None:
        if not (args.bundle or args.jsonl):
            raise CommandError(
                "export needs --keys or --grep (or --bundle or --jsonl, for everything)"
            )
        return _entries(source)
    entries = [e for e in _entries(source) if e.error is None and _matches(e, args.grep)]
    if not entries:
        raise CommandError(f"no request in {source.location} matches {args.grep!r}", EXIT_FOUND)
    return entries


#: Stores one whole sequence somewhere; returns (samples added, problem).
Writer = Callable[[Entry, list[Sample]], tuple[int, str | None]]


def _copy(source: Store, entries: list[Entry], write: Writer) -> list[dict[str, Any]]:
    """Read each sequence whole and hand it to ``write``; one result per sequence."""
    results: list[dict[str, Any]] = []
    with Progress("export", len(entries)) as progress:
        for entry in entries:
            added, problem = 0, entry.error
            samples: list[Sample] = []
            if problem is None:
                samples, problem = _read_sequence(source, entry)
            if problem is None:
                added, problem = write(entry, samples)
            results.append(
                {
                    "key": entry.key,
                    "model": entry.model,
                    "samples": 0 if problem else entry.length,
                    "added": added,
                    "error": problem,
                }
            )
            progress.advance()
    return results


@contextmanager
def _whole_file(path: Path) -> Iterator[TextIO]:
    """``path`` opened for writing, named so only once written whole.

    Raises:
        CommandError: ``path`` exists, its folder does not (a mistyped path: made, it
            would hide the typo), or it cannot be written (a full disk, no permission).
    """
    with _writing_to(path):
        if path.exists():
            raise CommandError(f"{path} exists")
        if not path.parent.is_dir():
            raise CommandError(f"cannot write {path}: its folder does not exist (create it first)")
    # A reader never sees half a file, nor a failed export one at all.
    partial = path.with_name(path.name + ".part")
    try:
        # Created anew, 0600 whatever the umask (under umask 000 a plain open made the
        # export world-writable): a leftover of an export that was killed goes first.
        if partial.is_file() and not partial.is_symlink():
            partial.unlink()
        lines = os.fdopen(create_private(partial), "w", encoding="utf-8")
    except OSError as error:  # nothing made: what is there (a folder, a link) is not ours
        reason = error.strerror or str(error)
        if partial.is_symlink():
            reason = f"{partial} is a link in its way (not ours to follow or remove)"
        elif partial.is_dir():
            reason = os.strerror(errno.EISDIR)
        raise CommandError(f"cannot write {path}: {reason}") from None
    try:
        with lines:
            yield lines
        partial.replace(path)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)


def _export_jsonl(source: Store, entries: list[Entry], lines: TextIO) -> list[dict[str, Any]]:
    def write(entry: Entry, samples: list[Sample]) -> tuple[int, str | None]:
        lines.writelines(jsonl_lines(entry.key, entry.request, samples))
        return len(samples), None

    return _copy(source, entries, write)


@contextmanager
def _utf8_stdout() -> Iterator[TextIO]:
    """stdout (OUT ``-``) writing the same UTF-8 bytes a file gets, whatever its encoding."""
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)
    if binary is None:  # a stream without bytes below it (a test's capture): as it is
        yield sys.stdout
        return
    text = io.TextIOWrapper(binary, encoding="utf-8")
    try:
        yield text
    finally:
        text.flush()
        text.detach()  # stdout stays open for the report


def _export_store(
    source: Store,
    entries: list[Entry],
    create_target: Callable[[], Store],
    manifest: Manifest | None,
) -> list[dict[str, Any]]:
    # OUT is created only once a sequence is known to be whole: a failed
    # export leaves no empty store behind.
    target: Store | None = None

    def write(entry: Entry, samples: list[Sample]) -> tuple[int, str | None]:
        nonlocal target
        target = target or create_target()
        added, problem = _write_sequence(target, entry.key, entry.request, samples)
        if problem is None and manifest is not None:
            manifest.add(entry, samples)
        return added, problem

    try:
        results = _copy(source, entries, write)
        if manifest is not None:
            target = target or create_target()
    finally:
        if target is not None:
            target.close()
    return results


def cmd_export(args: argparse.Namespace) -> int:
    """Copy whole sequences into a new (or a compatible existing) store, a bundle, or
    a JSON Lines file."""
    if args.record is not None and not args.bundle:
        raise CommandError("--record goes with --bundle")
    if args.jsonl and is_redis_url(args.out):
        raise CommandError("a JSON Lines export is a file, not a Redis store")
    if args.out == STDIO and not args.jsonl:
        # As explain reads stdin from -, OUT - is stdout: JSON Lines only.
        raise CommandError(
            f"OUT - is stdout, for --jsonl; a {'bundle' if args.bundle else 'store'} is a "
            "directory (write ./- for one named -)"
        )
    # Written to stdout, the export leaves the report to stderr.
    report = sys.stderr if args.out == STDIO else sys.stdout
    with _open_store(args.path) as source:
        if args.jsonl:
            entries = _selected(source, args)  # before anything is written
            to_stdout = args.out == STDIO
            out = "stdout" if to_stdout else str(Path(args.out).expanduser())
            with _utf8_stdout() if to_stdout else _whole_file(Path(out)) as lines:
                results = _export_jsonl(source, entries, lines)
        elif args.bundle:
            create_target, out, draws = _bundle_target(args.out, args.record)
            entries = _selected(source, args)
            if draws is not None:  # before anything is written
                _check_record(args.record, source, entries, draws)
            manifest = Manifest()
            results = _export_store(source, entries, create_target, manifest)
            if draws is not None:
                manifest.run_record = write_run_record(Path(out), draws)
            # Written last: a bundle with a manifest holds everything it lists.
            manifest.write(Path(out))
        else:
            create_target, out = _export_target(args.out, source)
            results = _export_store(source, _selected(source, args), create_target, None)
    failed = [r for r in results if r["error"]]
    copied = [r for r in results if not r["error"]]
    if args.json:
        _emit_json({"path": source.location, "out": out, "keys": results}, report)
    else:
        for r in copied:
            note = "" if r["added"] == r["samples"] else f" ({r['added']:,} new)"
            print(
                f"exported {_printable(r['key'])}  {_printable(r['model'])}  "
                f"{_plural(r['samples'], 'sample')}{note}",
                file=report,
            )
        print(
            f"wrote {_plural(len(copied), 'sequence')} "
            f"({_plural(sum(r['samples'] for r in copied), 'sample')}) to {out}",
            file=report,
        )
    for r in failed:
        _warn(f"{r['key']}: {r['error']}")
    return EXIT_FOUND if failed else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Build (or extend) a store from a JSON Lines export, all or nothing."""
    # As explain reads its request, - is stdin: `mnimi export A - --jsonl | mnimi import - B`.
    name = "stdin" if args.file == STDIO else args.file
    try:
        if args.file == STDIO:
            sequences = parse_jsonl(sys.stdin.buffer, name)
        else:
            sequences = read_jsonl(args.file)
    except OSError as error:
        raise CommandError(f"cannot read {name}: {error}") from None
    except MnimiError as error:
        raise CommandError(f"{error}; nothing imported", EXIT_FOUND) from None
    if not sequences:  # a failed export or redirect, or the wrong file: no empty store
        raise CommandError(
            f"{name} holds no sample (is it the file export --jsonl wrote?); nothing imported",
            EXIT_FOUND,
        )
    # The key of each line is the hash of its request in canonical form; stored as
    # written, a request otherwise spelled would be reported altered by verify.
    respelled = next((s.key for s in sequences if not keyed_by(s.key, s.request)), None)
    if respelled is not None:
        raise CommandError(
            f"{name}: the request of key {respelled} is not written in the canonical "
            "form its key is the hash of (as export --jsonl writes it); nothing imported",
            EXIT_FOUND,
        )
    with open_store(args.path) as store:
        clash = next((s.key for s in sequences if _holds_another(store, s.key, s.samples)), None)
        if clash is not None:
            raise CommandError(
                f"{store.location} holds a different sequence for key {clash}; nothing imported",
                EXIT_FOUND,
            )
        added = sum(_write_sequence(store, s.key, s.request, s.samples)[0] for s in sequences)
    total = sum(len(s.samples) for s in sequences)
    if args.json:
        _emit_json(
            {"path": store.location, "sequences": len(sequences), "samples": total, "added": added}
        )
    else:
        print(
            f"imported {_plural(len(sequences), 'sequence')} ({_plural(total, 'sample')}, "
            f"{added:,} new) into {store.location}"
        )
    return EXIT_OK


# -- explain and diff-runs ------------------------------------------------


def _read_input(name: str) -> str:
    """The text of the file ``name``, or of stdin for ``-``."""
    try:
        return sys.stdin.read() if name == STDIO else Path(name).expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {name}: {error}") from None


def _with_endpoint(body: Any) -> Any:
    """A body with its endpoint keyed as MnimiCache keys it (without a password or a
    key in its query, which are never shown): its ``endpoint`` as export --jsonl writes
    it, or, written as it was passed to ``litellm.completion``, its ``api_base`` (or
    ``base_url``)."""
    if not isinstance(body, dict):
        return body
    names = ("endpoint",) if "endpoint" in body else ("api_base", "base_url")
    base = next((body[name] for name in names if body.get(name)), None)
    if not isinstance(base, str):
        return body
    rest = {k: v for k, v in body.items() if k not in names}
    return {**rest, "endpoint": keyed_endpoint(base)}


def cmd_explain(args: argparse.Namespace) -> int:
    """Name the stored request nearest to a request, and the first field that differs."""
    try:
        requested = requested_record(_with_endpoint(json.loads(_read_input(args.request))))
    except (ValueError, RecursionError) as error:  # RecursionError: json's on deep nesting
        raise CommandError(f"{args.request} is not JSON: {error}") from None
    except MnimiError as error:
        raise CommandError(f"{args.request}: {error}") from None
    with _open_store(args.path) as store:
        found = explain_miss(requested, store.summaries())
    key, difference = found or (None, None)
    if args.json:
        _emit_json({"model": requested["model"], "nearest": key, "difference": difference})
    elif key is None:
        print(f"nothing is stored for the model {requested['model']!r} in {store.location}")
    elif difference is None:
        print(f"stored: the request is key {_printable(key)}")
    else:
        print(f"nearest stored request: {_printable(key)}")
        print(f"first difference: {_printable(difference)}")
    return EXIT_OK if key is not None and difference is None else EXIT_FOUND


def _run(name: str) -> tuple[list[dict[str, Any]], int]:
    """The draws of the last run in the record ``name``, and how many runs it holds."""
    try:
        runs = read_runs(name)
    except OSError as error:
        raise CommandError(f"cannot read {name}: {error}") from None
    except MnimiError as error:
        raise CommandError(str(error)) from None
    return (runs[-1] if runs else []), len(runs)


def _compared_run(name: str) -> tuple[list[dict[str, Any]], int, bool]:
    """Like :func:`_run`, and whether there is no record: a run that consumed nothing.

    A recorder opens its file with the run's first draw, so a run that failed before
    it (a replay whose first request misses) leaves none. A missing file in an existing
    folder is such a run; a missing folder is a mistyped path.
    """
    path = Path(name).expanduser()
    try:
        absent = not path.exists() and not path.is_symlink() and path.parent.is_dir()
    except OSError:  # a folder this user may not enter: reading the record says so
        absent = False
    if absent:
        return [], 0, True
    return (*_run(name), False)


def cmd_diff_runs(args: argparse.Namespace) -> int:
    """Compare the last runs of two run records, key by key: where they part, if anywhere."""
    (first, runs_a, missing_a), (second, runs_b, missing_b) = (
        _compared_run(args.a),
        _compared_run(args.b),
    )
    if missing_a and missing_b:  # two runs that drew nothing compare nothing: a typo?
        raise CommandError(f"no run record at {args.a} nor at {args.b}")
    compared = diff_runs(first, second)
    divergence = compared.text(
        missing=(args.a if missing_a else None, args.b if missing_b else None)
    )
    if args.json:
        _emit_json(
            {
                "draws": list(compared.draws),
                "keys": compared.keys,
                "runs": [runs_a, runs_b],
                "missing": [missing_a, missing_b],
                "divergence": divergence,
                "differences": [asdict(d) for d in compared.differences],
                "reordered": compared.reordered,
            }
        )
        return EXIT_OK if divergence is None else EXIT_FOUND
    for name, runs in ((args.a, runs_a), (args.b, runs_b)):
        if runs > 1:  # a re-run of the program appended its own run
            print(f"{name} holds {runs} runs: comparing its last")
    if divergence is not None:
        print(_printable_lines(divergence))
        return EXIT_FOUND
    print(
        f"identical: both runs consumed the same {_plural(len(first), 'sample')} "
        f"of {_plural(compared.keys, 'key')}"
    )
    if compared.reordered:
        # Not a difference: concurrent draws of one request are recorded as they complete.
        print(
            f"(the samples of {_plural(len(compared.reordered), 'key')} in another order: "
            "concurrent draws are recorded as they complete)"
        )
    return EXIT_OK


# -- demo -----------------------------------------------------------------


def _forward_to_demo(argv: list[str]) -> int:
    """Hand ``argv`` to ``mnimi_adapters.demo.main``, imported only now (it pulls in LiteLLM)."""
    try:
        demo = importlib.import_module("mnimi_adapters.demo")
    except ModuleNotFoundError as error:
        if error.name == "mnimi_adapters.demo":
            raise CommandError("the demo is not part of this installation") from None
        raise CommandError(f"the demo needs the module {error.name!r}: install it first") from None
    try:
        result = demo.main(argv)
    except SystemExit as exit_:
        result = exit_.code
    if result is None:
        return EXIT_OK
    if isinstance(result, int):
        return result
    _warn(str(result))
    return EXIT_FOUND


# -- entry point ----------------------------------------------------------

_EPILOG = """\
exit codes: 0 ok; 1 damage found, or a key or match missing;
            2 usage error, no cache at PATH, or a store that cannot be opened;
            141 the output's reader left before it ended (as in `mnimi show PATH | head`)

sizes: 500MB, 1.5G, 100k (powers of 1000); 2GiB, 64Ki (powers of 1024); at most 8EiB
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``mnimi`` argument parser."""
    # Subcommands take --json too; SUPPRESS keeps one given before the
    # command from being reset by the subparser's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    parser = argparse.ArgumentParser(
        prog="mnimi",
        description="Inspect, check, prune and slice a mnimi_adapters sample cache.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)
    parser.add_argument("--version", action="version", version=f"mnimi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        sub.add_argument(
            "path", metavar="PATH", help="the cache directory, or a Redis URL (redis://...)"
        )
        return sub

    command("stats", cmd_stats, "Keys, samples, size, tokens and cost, overall and per model.")
    show = command(
        "show",
        cmd_show,
        "List the cached requests, or show one request (KEY or a unique prefix of it) "
        "and its samples.",
    )
    show.add_argument("key", metavar="KEY", nargs="?", help="a key or a unique prefix of one")
    show.add_argument(
        "--grep", metavar="TEXT", help="only requests whose model or messages contain TEXT"
    )
    show.add_argument(
        "--limit", metavar="N", type=_limit, help="show at most N keys (or N samples of KEY)"
    )
    command(
        "verify",
        cmd_verify,
        "Check the store's integrity (read-only): format, lengths, gaps, samples, draw ids "
        "and records (each request against its key); on a bundle, also every sample and "
        "the run record against MANIFEST.json, and that the record names only samples the "
        "bundle holds. Exit 1 lists each problem.",
    )
    prune = command(
        "prune",
        cmd_prune,
        "Remove whole least-recently-used sequences until the stored samples fit in SIZE.",
    )
    prune.add_argument(
        "--max-size", metavar="SIZE", type=parse_size, required=True, help="e.g. 500MB, 2GiB"
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    export = command(
        "export",
        cmd_export,
        "Copy whole sequences (same samples, order and draw ids) into the store at OUT, "
        "a bundle (--bundle) or a JSON Lines file (--jsonl).",
    )
    export.add_argument(
        "out",
        metavar="OUT",
        help="the directory (or Redis URL) of the store to write; with --jsonl, the file "
        "(- writes stdout)",
    )
    form = export.add_mutually_exclusive_group()
    form.add_argument(
        "--bundle",
        action="store_true",
        help="write a replication package: OUT/store plus OUT/MANIFEST.json, a SHA-256 "
        "per sample (every sequence unless --keys or --grep)",
    )
    export.add_argument(
        "--record",
        metavar="RUN.jsonl",
        help="with --bundle: carry the last run of this run record as OUT/run.jsonl "
        "(refused if it names a sample the export does not hold)",
    )
    form.add_argument(
        "--jsonl",
        action="store_true",
        help="write OUT as JSON Lines: one object per sample with its key, index, request "
        "and sample, readable without this library (every sequence unless --keys or --grep)",
    )
    which = export.add_mutually_exclusive_group()
    which.add_argument("--keys", metavar="KEY", nargs="+", help="keys (or unique prefixes)")
    which.add_argument(
        "--grep", metavar="TEXT", help="every request whose model or messages contain TEXT"
    )
    explain = command(
        "explain",
        cmd_explain,
        "Name the stored request nearest to REQUEST (same model) and the first field "
        "that differs. Exit 0 if REQUEST is stored, 1 if not.",
    )
    explain.add_argument(
        "request",
        metavar="REQUEST.json",
        help='{"model", "messages", "params"} or an OpenAI-style body; - reads stdin',
    )
    import_ = commands.add_parser(
        "import",
        parents=[common],
        help="Build (or extend) the store at PATH from a JSON Lines export.",
        description="Build (or extend) the store at PATH from a JSON Lines export. Every "
        "line is checked first: a line that is not well formed is named, and nothing "
        "from the file is stored. A file that holds no sample is refused.",
    )
    import_.set_defaults(handler=cmd_import)
    import_.add_argument(
        "file", metavar="FILE.jsonl", help="a file written by export --jsonl; - reads stdin"
    )
    import_.add_argument("path", metavar="PATH", help="the cache directory, or a Redis URL")
    diff_runs = commands.add_parser(
        "diff-runs",
        parents=[common],
        help="Compare two run records (Persistent(..., record=...)). Exit 1 if they differ.",
        description="Compare the last runs of two run records (a re-run appends a run to "
        "its record), key by key: whether both consumed the same samples of each request, "
        "and for each key where they part, the first difference. The order across keys is "
        "not compared: a concurrent run records its draws as they complete. A record that "
        "does not exist (in a folder that does) is a run that consumed no sample. Exit 0 "
        "if identical, 1 if not.",
    )
    diff_runs.set_defaults(handler=cmd_diff_runs)
    diff_runs.add_argument("a", metavar="A", help="a run record (JSON Lines)")
    diff_runs.add_argument("b", metavar="B", help="another run record")
    commands.add_parser(
        "demo", help="Run the demo (all further arguments are passed on to it).", add_help=False
    )
    parser.set_defaults(commands=frozenset(commands.choices))
    return parser


def command_names() -> frozenset[str]:
    """The names of ``mnimi``'s commands (``stats``, ``show``, ..., ``demo``)."""
    names: frozenset[str] = build_parser().get_default("commands")
    return names


def _demo_argv(argv: Sequence[str]) -> list[str] | None:
    """The demo's arguments if the command is ``demo``: they bypass our parser."""
    position = 0
    while position < len(argv) and argv[position] == "--json":
        position += 1
    if position < len(argv) and argv[position] == "demo":
        return list(argv[position + 1 :])
    return None


def _drop_closed_pipes() -> None:
    """Point each standard stream whose reader left at ``/dev/null``: what it still
    buffers would otherwise fail again at exit ("Exception ignored ... BrokenPipeError")."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    """Run ``mnimi`` with ``argv`` (default: the command line); return the exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):
        # A stored prompt or answer may hold a lone surrogate (see stores.base.dump_json),
        # which has no UTF-8 form: shown escaped rather than ending the command.
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(errors="backslashreplace")
    try:
        code = _run_command(arguments)
        # Output to a pipe is buffered: a reader that left (`| head -1`) is found here,
        # not in a flush at exit that could only print an error.
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # The reader left before the output ended: 128 + SIGPIPE, as a shell reports a
        # command the signal ended and git exits, never 1 (damage found) nor 0 (all of
        # it was read).
        _drop_closed_pipes()
        return EXIT_PIPE
    return code


def _run_command(arguments: list[str]) -> int:
    """Parse ``arguments`` and run their command; an expected failure is a message."""
    try:
        demo_argv = _demo_argv(arguments)
        if demo_argv is not None:
            return _forward_to_demo(demo_argv)
        parser = build_parser()
        try:
            args = parser.parse_args(arguments)
        except SystemExit as exit_:  # --help, --version and usage errors
            return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
        # A command lists, checks or copies a store in one short run: the records it keeps
        # (one a key) make no cycles, and collections would scan them again and again.
        code: int = without_cycle_collection(args.handler)(args)
        return code
    except CommandError as error:
        _warn(str(error))
        return error.code
    except CorruptStoreError as error:
        _warn(f"{error} (run `mnimi verify` on the cache for every problem)")
        return EXIT_FOUND
    except StoreError as error:
        _warn(str(error))
        return EXIT_ERROR
    except MnimiError as error:  # from the demo: a replication miss, a provider failure
        _warn(str(error))
        return EXIT_FOUND
    except KeyboardInterrupt:
        _warn("interrupted")
        return 130
    except BrokenPipeError:
        raise  # an output whose reader left, not a file-system refusal: main's to report
    except OSError as error:
        # A file-system refusal no check above names (a folder made unreachable as the
        # command ran): a message and the exit code of an unusable store, never a
        # traceback and exit 1, which says the store is damaged.
        where = f" ({error.filename})" if error.filename else ""
        _warn(f"{error.strerror or error}{where}: check the path and its permissions")
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
