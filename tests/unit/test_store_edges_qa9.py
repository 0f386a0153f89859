"""Store edges: text with no UTF-8 form, database files that are links, uses of keys.

A provider's JSON may hold a lone surrogate (``"caf\\udcff"``): the sample is paid for,
so it must be stored and read back as the very same str, and a prompt holding one must
have a key. A cache directory whose database files are symbolic links must not be
opened, as SQLite would follow them out of the directory. And the times of use that a
replay notes must all be written, whatever the number of batches in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from diskcache.core import DBNAME
from support import FailingModel

from mnimi_adapters.core import (
    BatchedModel,
    DiskStore,
    Persistent,
    Request,
    Sample,
    StoreError,
    request_key,
)
from mnimi_adapters.core.request import record_key
from mnimi_adapters.core.stores import base, disk

LONE = "caf\udcff"  # what json.loads makes of the valid JSON "caf\udcff"
RECORD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "params": {}}


class EchoModel(BatchedModel):
    """A provider stand-in whose answers hold a lone surrogate; counts its requests."""

    def __init__(self) -> None:
        super().__init__("m", 1.0)
        self.calls = 0

    def query(self, request: Request, n: int) -> list[str]:
        self.calls += 1
        return [f"{LONE} {self.calls}.{i}" for i in range(n)]


def raw_row(path: Path, name: str) -> str:
    with closing(sqlite3.connect(path / DBNAME)) as connection:
        (value,) = connection.execute("SELECT value FROM Cache WHERE key = ?", (name,)).fetchone()
    return str(value)


# -- keys -----------------------------------------------------------------------


def test_keys_of_ordinary_requests_never_change() -> None:
    """Existing caches are found by these keys: the hashing must never move them."""
    plain = Request.of("Choose a number between 1 and 1000.")
    assert (
        request_key({"model": "gpt-4o", "params": {"temperature": 1.0}}, plain)
        == "m1-40caeafd9b000d552bc880f9f331452367d3202b"
    )
    accented = Request(
        (
            {"role": "system", "content": "Réponds en français ☕"},
            {"role": "user", "content": "数字を一つ"},
        ),
        {"max_tokens": 5, "stop": ["\n"]},
    )
    assert (
        request_key({"model": "gpt-4o", "params": {"temperature": 0.7}}, accented)
        == "m1-f0b852f0dcf227b9bb33f7918333e988f2d8a5b8"
    )


def test_a_prompt_with_a_lone_surrogate_has_a_key_of_its_own() -> None:
    identity = {"model": "m"}
    lone = request_key(identity, Request.of(LONE))
    assert lone.startswith("m1-")
    # Not the key of the text with a replacement character, nor of a whole pair.
    assert lone != request_key(identity, Request.of("caf\ufffd"))
    assert request_key(identity, Request.of("\ud83d\ude00")) != request_key(
        identity, Request.of("\U0001f600")
    )
    assert record_key({"text": LONE}) == record_key({"text": LONE})


# -- lone surrogates in stored values -------------------------------------------


def test_a_paid_answer_with_a_lone_surrogate_is_stored_and_replayed(tmp_path: Path) -> None:
    model = EchoModel()
    first = Persistent(model, tmp_path / "cache")
    drawn = next(first.samples("hello"))
    first.close()
    assert drawn.text == f"{LONE} 1.0"
    replay = Persistent(FailingModel("m", 1.0), tmp_path / "cache", replication=True)
    again = next(replay.samples("hello"))
    replay.close()
    assert (again.text, again.draw_id) == (drawn.text, drawn.draw_id)
    assert model.calls == 1


def test_a_prompt_with_a_lone_surrogate_is_cached(tmp_path: Path) -> None:
    first = Persistent(EchoModel(), tmp_path / "cache")
    drawn = next(first.samples(f"say {LONE}"))
    first.close()
    replay = Persistent(FailingModel("m", 1.0), tmp_path / "cache", replication=True)
    assert next(replay.samples(f"say {LONE}")).draw_id == drawn.draw_id
    replay.close()
    with DiskStore(tmp_path / "cache", create=False) as store:
        (summary,) = store.summaries()
        assert summary.messages == [{"role": "user", "content": f"say {LONE}"}]
        assert store.check().ok


def test_unencodable_values_read_back_identical_and_others_stay_compact(tmp_path: Path) -> None:
    sample = Sample(text=LONE, message={"role": "assistant", "content": "\ud800 ☕"})
    plain = Sample.of_text("café ☕")
    record = {"model": "m\udcff", "messages": [{"role": "user", "content": "é \udfff"}]}
    with DiskStore(tmp_path / "cache") as store:
        added = store.append("k", [sample, plain], {**record, "params": {}})
        assert len(added) == 2
        assert store.get("k", 0) == sample
        assert store.get("k", 1) == plain
        assert store.info("k")["request"] == {**record, "params": {}}  # type: ignore[index]
        # Noting a use edits the record in SQL: the escapes survive it.
        store.touch("k")
        store.flush()
        assert store.info("k")["request"]["messages"] == record["messages"]  # type: ignore[index]
        # Listings summed by SQLite read the escaped model name as Python does.
        totals = store.totals()
        assert [(row.model, row.samples) for row in totals.models] == [("m\udcff", 2)]
        assert store.check().ok
    # Ordinary text keeps its UTF-8 form; only the unencodable value is escaped.
    assert "café ☕" in raw_row(tmp_path / "cache", "s:k:1")
    assert "\\udcff" in raw_row(tmp_path / "cache", "s:k:0")
    assert json.loads(raw_row(tmp_path / "cache", "s:k:0"))["text"] == LONE


def test_dump_json_escapes_only_what_has_no_utf8_form() -> None:
    assert base.dump_json({"t": "é"}) == '{"t": "é"}'
    assert base.dump_json({"t": LONE}) == '{"t": "caf\\udcff"}'
    assert json.loads(base.dump_json({"t": LONE, "u": "é"})) == {"t": LONE, "u": "é"}


# -- database files that are links ----------------------------------------------


def filled(path: Path) -> None:
    with DiskStore(path) as store:
        store.append("k", [Sample.of_text("kept")], RECORD)


@pytest.mark.parametrize("name", [DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm"])
def test_a_database_file_that_is_a_link_is_refused(tmp_path: Path, name: str) -> None:
    other = tmp_path / "other"
    filled(other)
    target = other / name
    if not target.exists():
        target.write_bytes(b"")
    before = target.read_bytes()
    received = tmp_path / "received"
    received.mkdir(mode=0o700)
    if name != DBNAME:  # the database itself is a copy; only its log or index is a link
        (received / DBNAME).write_bytes((other / DBNAME).read_bytes())
    (received / name).symlink_to(target)
    for create, read_only in [(True, False), (False, False), (False, True)]:
        with pytest.raises(StoreError) as refused:
            DiskStore(received, create=create, read_only=read_only)
        message = str(refused.value)
        assert str(received / name) in message
        assert "symbolic link" in message
        assert str(target) in message
    assert target.read_bytes() == before
    # The cache itself opens, also through a linked directory or a linked parent folder.
    (tmp_path / "link").symlink_to(other, target_is_directory=True)
    (tmp_path / "parent").symlink_to(tmp_path, target_is_directory=True)
    for path in (other, tmp_path / "link", tmp_path / "parent" / "other"):
        with DiskStore(path, create=False) as store:
            assert store.length("k") == 1
        with DiskStore(path, read_only=True) as store:
            assert store.length("k") == 1


def test_a_dangling_database_link_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    received = tmp_path / "received"
    received.mkdir(mode=0o700)
    outside = tmp_path / "elsewhere" / "made.db"
    outside.parent.mkdir()
    (received / DBNAME).symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        DiskStore(received)
    assert not outside.exists()


# -- times of use ----------------------------------------------------------------


def used_times(path: Path) -> dict[str, float]:
    with DiskStore(path, create=False) as store:
        return {summary.key: summary.number("used") for summary in store.summaries()}


def many_keys(path: Path, count: int) -> list[str]:
    keys = [f"key-{i}" for i in range(count)]
    with DiskStore(path) as store:
        store.append_many([(key, [Sample.of_text(key)], RECORD) for key in keys])
    return keys


@pytest.mark.parametrize("ending", ["closed", "collected"])
@pytest.mark.parametrize("one_statement", [True, False], ids=["sqlite>=3.33", "older sqlite"])
def test_no_batch_of_uses_is_lost_to_the_librarys_own_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str, one_statement: bool
) -> None:
    """Hundreds of batches in flight at once, as a fast replay makes: every use is written,
    whether the store is closed or collected unclosed with batches still in flight."""
    keys = many_keys(tmp_path / "cache", 3000)
    monkeypatch.setattr(base, "USAGE_BATCH", 4)
    monkeypatch.setattr(disk, "_BATCH_UPDATES", one_statement)
    time.sleep(0.01)
    start = time.time()
    store = DiskStore(tmp_path / "cache")
    for key in keys:
        store.touch(key)
    if ending == "closed":
        store.close()
    del store
    stale = [key for key, used in used_times(tmp_path / "cache").items() if used < start]
    assert stale == []


@contextmanager
def held_write_lock(path: Path, seconds: float) -> Iterator[threading.Event]:
    """Another connection holding the write lock for ``seconds`` (an append, say)."""
    taken = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path / DBNAME, isolation_level=None)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            connection.execute("COMMIT")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        yield taken
    finally:
        holder.join()


def test_uses_wait_out_a_short_write_and_drop_only_a_long_one(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    keys = many_keys(path, 2)
    time.sleep(0.01)
    start = time.time()
    with DiskStore(path) as store:
        # A write as short as an append: the uses wait for it.
        with held_write_lock(path, 0.03) as taken:
            assert taken.wait(5)
            store.touch(keys[0])
            store.flush()
        assert used_times(path)[keys[0]] >= start
        # A write that holds the store far longer (another process's): the uses are
        # dropped, and neither a read nor the flush waits for it.
        with held_write_lock(path, 3.0) as taken:
            assert taken.wait(5)
            began = time.monotonic()
            store.touch(keys[1])
            assert store.length(keys[1]) == 1
            store.flush()
            assert time.monotonic() - began < 1.5
    assert used_times(path)[keys[1]] < start


def test_uses_waiting_for_a_busy_store_are_bounded_newest_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many uses pile up behind a store that cannot take them yet, memory stays
    bounded: the oldest batches beyond the bound are dropped, the newest written."""
    path = tmp_path / "cache"
    keys = many_keys(path, 400)
    monkeypatch.setattr(base, "USAGE_BATCH", 4)
    monkeypatch.setattr(disk, "_USAGE_BACKLOG", 40)
    time.sleep(0.01)
    start = time.time()
    with DiskStore(path) as store, held_write_lock(path, 0.05) as taken:
        assert taken.wait(5)
        for key in keys:
            store.touch(key)
    written = {key for key, used in used_times(path).items() if used >= start}
    assert set(keys[-40:]) <= written
    assert len(written) <= 40 + 2 * 4  # and the batch or two taken before the line filled
