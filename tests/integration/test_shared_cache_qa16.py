"""A cache directory someone shares: what its database may hold besides diskcache's.

A trigger, an index or any schema object diskcache never creates is refused at every
open but verify's (nothing written), and verify reports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path

import diskcache
import pytest
from diskcache.core import DBNAME
from support import run_cli

from mnimi_adapters import OpenAICompatible
from mnimi_adapters.core import DiskStore, Independent, Persistent, StoreError
from mnimi_adapters.testing import SamplingServer

PROMPT = "Pick between 1 and 1000"

#: A trigger that makes every sample stored say "999", its draw id and JSON intact.
REWRITE = (
    "CREATE TRIGGER {name} AFTER INSERT ON Cache WHEN NEW.key LIKE 's:%' BEGIN "
    "UPDATE Cache SET value = json_set(NEW.value, '$.text', '999') "
    "WHERE rowid = NEW.rowid; END"
)


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=1) as running:
        yield running


def persistent(server: SamplingServer, path: Path, **options: object) -> Persistent:
    model = OpenAICompatible("mock-model", 1.0, api_base=server.url, api_key="x", alias="mock")
    return Persistent(model, path, **options)  # type: ignore[arg-type]


def fill(server: SamplingServer, path: Path, count: int = 2) -> list[str]:
    """``count`` samples drawn into the store at ``path``: their texts."""
    model = persistent(server, path)
    try:
        return [s.text for s in islice(model.samples(PROMPT, batch=count), count)]
    finally:
        model.close()


def alter(path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(path / DBNAME, isolation_level=None)) as connection:
        for statement in statements:
            connection.execute(statement)


def state(path: Path) -> tuple[str, list[str]]:
    """The database's bytes (hashed) and the directory's files."""
    return hashlib.sha256((path / DBNAME).read_bytes()).hexdigest(), sorted(os.listdir(path))


OPENS: dict[str, Callable[[SamplingServer, Path], object]] = {
    "create": lambda server, path: DiskStore(path),
    "existing only": lambda server, path: DiskStore(path, create=False),
    "read-only": lambda server, path: DiskStore(path, read_only=True),
    "Persistent": lambda server, path: persistent(server, path),
    "Persistent, replication": lambda server, path: persistent(server, path, replication=True),
}

ALTERATIONS = {
    "a trigger of its own": (REWRITE.format(name="zz_evil"),),
    # diskcache creates its triggers IF NOT EXISTS: one of their names holding other SQL
    # would stay.
    "a trigger under diskcache's name": (
        "DROP TRIGGER Settings_count_insert",
        REWRITE.format(name="Settings_count_insert"),
    ),
    "an index of its own": ("CREATE INDEX mine ON Cache (value)",),
    "a unique constraint of its own": ("CREATE UNIQUE INDEX one_per_raw ON Cache (tag)",),
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_a_schema_object_diskcache_never_creates_is_refused_and_verify_reports_it(
    tmp_path: Path, server: SamplingServer, alteration: str
) -> None:
    path = tmp_path / "shared"
    fill(server, path)
    alter(path, *ALTERATIONS[alteration])
    before = state(path)
    sent = len(server.chat_requests())
    for opening in OPENS.values():
        with pytest.raises(StoreError, match="not written by mnimi_adapters") as raised:
            opening(server, path)
        assert "is not diskcache's" in str(raised.value)
    assert state(path) == before and len(server.chat_requests()) == sent
    code, out, err = run_cli("verify", path)
    assert code == 1, out + err
    assert "is not diskcache's" in out and "refuses to open it" in out
    assert "2 sound samples" in out  # and the rows are checked all the same
    assert state(path) == before


def test_a_trigger_cannot_rewrite_the_samples_a_run_pays_for(
    tmp_path: Path, server: SamplingServer
) -> None:
    path = tmp_path / "shared"
    fill(server, path)
    alter(path, REWRITE.format(name="zz_evil"))
    sent = len(server.chat_requests())
    with pytest.raises(StoreError, match="trigger 'zz_evil' is not diskcache's"):
        model = persistent(server, path)
        list(islice(Independent(model).samples(PROMPT), 3))
    assert len(server.chat_requests()) == sent  # refused before a sample was paid for
    with closing(sqlite3.connect(path / DBNAME)) as connection:
        values = [str(value) for (value,) in connection.execute("SELECT value FROM Cache")]
    assert not any('"999"' in value for value in values)


@pytest.mark.parametrize(
    "policy", ["none", "least-recently-stored", "least-recently-used", "least-frequently-used"]
)
def test_a_store_a_plain_diskcache_opened_still_opens(
    tmp_path: Path, server: SamplingServer, policy: str
) -> None:
    path = tmp_path / "store"
    paid = fill(server, path)
    # A script's diskcache with its own eviction policy and tag index: diskcache's indexes.
    diskcache.Cache(str(path), eviction_policy=policy, tag_index=True).close()
    code, out, err = run_cli("verify", path)
    assert code == 0, out + err
    assert fill(server, path) == paid


# -- settings ---------------------------------------------------------------------------

#: Settings rows diskcache would apply as it opens the store (a pragma, an argument of
#: its Disk, an attribute of the cache).
ODD_SETTINGS = {
    "out of WAL mode": ("sqlite_journal_mode", "off"),
    "locked": ("sqlite_locking_mode", "exclusive"),
    "read-only": ("sqlite_query_only", 1),
    "an argument the Disk does not take": ("disk_foo", 1),
    "an attribute of the cache": ("_timeout", 0),
}


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path / DBNAME)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.mark.parametrize("setting", list(ODD_SETTINGS))
def test_a_setting_diskcache_would_apply_is_refused_by_name_and_reported(
    tmp_path: Path, server: SamplingServer, setting: str
) -> None:
    path = tmp_path / "shared"
    fill(server, path)
    name, value = ODD_SETTINGS[setting]
    alter(path, f"INSERT OR REPLACE INTO Settings VALUES ('{name}', '{value}')")
    before = state(path)
    for opening in OPENS.values():
        with pytest.raises(StoreError, match="not written by mnimi_adapters") as raised:
            opening(server, path)
        assert f"its setting {name}" in str(raised.value) or f"'{name}'" in str(raised.value)
    assert state(path) == before and journal_mode(path) == "wal"
    code, out, err = run_cli("verify", path)
    assert code == 1 and name in out and "refuses to open it" in out, out + err


def test_the_settings_of_an_older_store_and_of_diskcache_open(
    tmp_path: Path, server: SamplingServer
) -> None:
    path = tmp_path / "older"
    paid = fill(server, path)
    # Made before the store set its page cache and memory map: diskcache's defaults.
    alter(
        path,
        "UPDATE Settings SET value = 8192 WHERE key = 'sqlite_cache_size'",
        "UPDATE Settings SET value = 67108864 WHERE key = 'sqlite_mmap_size'",
    )
    code, out, err = run_cli("verify", path)
    assert code == 0, out + err
    assert fill(server, path) == paid
    assert journal_mode(path) == "wal"


# -- what the command prints ------------------------------------------------------------

#: Terminal commands: retitle the terminal, hide text, return to the line's start, CSI.
CONTROLS = ("\x1b", "\x07", "\r", "\x9b")


def test_the_command_shows_a_shared_caches_control_characters_escaped(
    tmp_path: Path, server: SamplingServer
) -> None:
    path = tmp_path / "shared"
    fill(server, path)
    with closing(sqlite3.connect(path / DBNAME, isolation_level=None)) as connection:
        (key,) = connection.execute(
            "SELECT substr(key, 3) FROM Cache WHERE key LIKE 'n:%'"
        ).fetchone()
        record = json.loads(
            connection.execute("SELECT value FROM Cache WHERE key = ?", (f"m:{key}",)).fetchone()[0]
        )
        record["request"]["model"] = "mock\x1b]0;PWNED\x07"
        record["request"]["messages"][0]["content"] = "\x1b[8mDelete my files.\x1b[0m\rPick"
        sample = json.loads(
            connection.execute("SELECT value FROM Cache WHERE key = ?", (f"s:{key}:0",)).fetchone()[
                0
            ]
        )
        sample["finish_reason"] = "stop\x9b8m"
        for name, value in ((f"m:{key}", record), (f"s:{key}:0", sample)):
            connection.execute(
                "UPDATE Cache SET value = ? WHERE key = ?", (json.dumps(value), name)
            )
    for command in (
        ("show", path),
        ("show", path, key),
        ("stats", path),
        ("verify", path),
        ("prune", path, "--max-size", "1", "--dry-run"),
        ("--json", "show", path, key),
        ("--json", "stats", path),
    ):
        _, out, err = run_cli(*command)
        assert not any(control in out + err for control in CONTROLS), (command, out + err)
    _, out, _ = run_cli("show", path, key)
    assert "mock\\x1b]0;PWNED\\x07" in out and "stop\\x9b8m" in out and "\\x1b[8mDelete" in out


# -- explain ----------------------------------------------------------------------------


def test_explain_keys_an_endpoint_as_export_writes_it_and_never_shows_its_credentials(
    tmp_path: Path, server: SamplingServer
) -> None:
    import litellm

    from mnimi_adapters.litellm import MnimiCache

    messages = [{"role": "user", "content": "Pick between 1 and 100"}]
    with MnimiCache(str(tmp_path / "cache")):
        litellm.completion(
            model="openai/mock-model", messages=messages, api_base=server.url, api_key="sk-x"
        )
    code, out, err = run_cli("export", tmp_path / "cache", "-", "--jsonl")
    assert code == 0, err
    request = json.loads(out.splitlines()[0])["request"]
    # The endpoint export wrote, with a password and a query key added: the cache keys the
    # request so, and the credentials are never shown.
    secret = request["endpoint"].replace("://", "://user:PASSWORD42@") + "?api-key=KEY42"
    for endpoint, answer in (
        (secret, "stored: the request is key m1-"),
        (secret.replace("127.0.0.1", "localhost"), "nearest stored request: m1-"),
    ):
        file = tmp_path / "request.json"
        file.write_text(json.dumps({**request, "endpoint": endpoint}))
        code, out, err = run_cli("explain", tmp_path / "cache", file)
        assert out.startswith(answer), out + err
        assert code == (0 if answer.startswith("stored") else 1)
        assert "PASSWORD42" not in out + err and "KEY42" not in out + err
