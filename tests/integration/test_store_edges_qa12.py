"""Cache paths this user may not look into (a folder of mode 000, another user's cache).

Python 3.11's ``Path.exists()``, ``is_file()`` and ``is_symlink()`` raise
``PermissionError`` there rather than answer, and a raw traceback is no ``StoreError``:
a program that catches ``MnimiError`` (or ``StoreError``) to say "check the cache" got
neither. Each refusal must be a ``StoreError`` that names the folder to open up.

Modes bind root only without the capabilities that let it ignore them, so the programs
under test run in a subprocess without them (``setpriv``); where they cannot be dropped
the tests skip, never passing with the modes ignored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from support import NumberModel, run_unprivileged

from mnimi_adapters.core import Persistent


@pytest.fixture
def locked(tmp_path: Path, modes_bind: None) -> Iterator[Path]:
    """A cache directory holding samples, mode 000."""
    folder = tmp_path / "locked"
    cache = Persistent(NumberModel(), folder)
    list(islice(cache.sample("Choose a number.", batch=2), 2))
    cache.close()
    folder.chmod(0)
    yield folder
    folder.chmod(0o700)  # for the clean-up, as a user who is not root


#: What the subprocesses share: a model that is never asked.
_PRELUDE = """
import json, sys
from mnimi_adapters import MnimiError, Persistent
from mnimi_adapters.core import BatchedModel

class Unused(BatchedModel):
    def query(self, request, n):
        raise AssertionError("no provider call")
"""

#: Opens each cache given, in both modes, and prints each outcome as a JSON line.
_OPEN = (
    _PRELUDE
    + """
for path in sys.argv[1:]:
    for replication in (False, True):
        try:
            Persistent(Unused("m", 1.0), path, replication=replication).close()
            outcome = ["opened", ""]
        except MnimiError as error:
            outcome = [type(error).__name__, str(error)]
        print(json.dumps([path, replication, *outcome]))
"""
)


def test_a_cache_this_user_may_not_enter_is_a_store_error_naming_the_folder(
    locked: Path,
) -> None:
    # The folder itself, a cache inside it (a path through it), and a cache made there.
    paths = [locked, locked / "inner", locked / "inner" / "deeper"]
    done = run_unprivileged([sys.executable, "-c", _OPEN, *map(str, paths)])
    assert done.returncode == 0 and not done.stderr, done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(path, replication) for path, replication, *_ in outcomes] == [
        (str(path), replication) for path in paths for replication in (False, True)
    ]
    for path, _, kind, message in outcomes:
        assert kind == "StoreError", message
        assert message.startswith(f"cache directory {path} cannot be opened: ")
        # The folder that keeps the user out, and what to do about it.
        assert f"may not enter {locked} (Permission denied)" in message
        assert f"chmod u+rwx {locked}" in message and "choose another directory" in message


def test_a_database_this_user_may_not_read_is_a_store_error(
    tmp_path: Path, modes_bind: None
) -> None:
    folder = tmp_path / "cache"
    cache = Persistent(NumberModel(), folder)
    list(islice(cache.sample("Choose a number.", batch=2), 2))
    cache.close()
    database = folder / "cache.db"
    database.chmod(0)
    try:
        done = run_unprivileged([sys.executable, "-c", _OPEN, str(folder)])
    finally:
        database.chmod(0o600)
    assert done.returncode == 0 and not done.stderr, done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(outcomes) == 2
    for _, _, kind, message in outcomes:
        # SQLite alone says "unable to open database file".
        assert kind == "StoreError", message
        assert f"may not read {database}" in message and f"chmod u+rw {database}" in message


def test_a_run_record_in_a_folder_this_user_may_not_enter_is_refused_at_once(
    tmp_path: Path, locked: Path
) -> None:
    program = _PRELUDE + (
        "try:\n"
        "    Persistent(Unused('m', 1.0), sys.argv[1], record=sys.argv[2])\n"
        "except MnimiError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    record = locked / "run.jsonl"
    done = run_unprivileged([sys.executable, "-c", program, str(tmp_path / "cache"), str(record)])
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.startswith(
        f"MnimiError cannot record the run in {record}: Permission denied"
    )
    assert not (tmp_path / "cache").exists()  # refused before the store was made
