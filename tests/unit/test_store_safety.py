"""A cache directory from someone else can never make the store touch a file outside it.

diskcache keeps a ``filename`` per row and, when the row is replaced or deleted,
removes that file (and then its emptied parent folders). A received directory
can name any path there. These tests plant such rows in a real store, pointing
at a file outside the directory, and run the real operations over it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import diskcache
import pytest
from diskcache.core import DBNAME
from support import NumberModel

from mnimi_adapters.cli import main
from mnimi_adapters.core import (
    CorruptStoreError,
    DiskStore,
    Persistent,
    Request,
    Sample,
)
from mnimi_adapters.core.runs import RunRecorder
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.litellm import MnimiCache

PROMPT = "Choose a number between 1 and 1000."


class Planted:
    """A store of three samples, and a file outside it that a row may name."""

    def __init__(self, root: Path) -> None:
        self.path = root / "cache"
        model = Persistent(NumberModel(), self.path)
        first = list(islice(model.samples(PROMPT, batch=3), 3))
        model.close()
        assert first[0].origin is not None
        self.key = str(first[0].origin["key"])
        self.draws = [s.draw_id for s in first]
        # Alone in its folder, so diskcache's removedirs would take the folder too.
        self.victim = root / "home" / "docs" / "thesis.tex"
        self.victim.parent.mkdir(parents=True)
        self.victim.write_text("four years of work")

    def plant(self, name: str, filename: str) -> None:
        """Make row ``name`` (created if missing) name ``filename``, its value left intact."""
        with diskcache.Cache(str(self.path)) as raw:
            if name not in raw:
                raw.set(name, "planted")
        with sqlite3.connect(self.path / DBNAME) as connection:
            changed = connection.execute(
                "UPDATE Cache SET filename = ? WHERE key = ? AND raw = 1", (filename, name)
            ).rowcount
        connection.close()
        assert changed == 1

    def rows(self) -> set[str]:
        with diskcache.Cache(str(self.path)) as raw:
            return {name for name in raw.iterkeys() if isinstance(name, str)}

    def assert_victim_intact(self) -> None:
        assert self.victim.read_text() == "four years of work"


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    return Planted(tmp_path)


#: The two ways a row names a file outside the directory.
NAMINGS: dict[str, Callable[[Planted], str]] = {
    "absolute": lambda p: str(p.victim),
    "dot-dot": lambda p: "../home/docs/thesis.tex",
}


@pytest.fixture(params=sorted(NAMINGS))
def outside(request: pytest.FixtureRequest, planted: Planted) -> str:
    filename = NAMINGS[request.param](planted)
    assert (planted.path / filename).resolve() == planted.victim.resolve()
    return filename


def _row(planted: Planted, kind: str) -> str:
    return {
        "record": f"m:{planted.key}",
        "length": f"n:{planted.key}",
        "sample": f"s:{planted.key}:0",
    }[kind]


@pytest.mark.parametrize("kind", ["record", "length", "sample"])
def test_replay_refuses_the_row_and_leaves_the_file(
    planted: Planted, outside: str, kind: str
) -> None:
    row = _row(planted, kind)
    planted.plant(row, outside)
    model = Persistent(NumberModel(), planted.path)
    # Four: the replay of three, then a refill, which reads the length.
    with pytest.raises(CorruptStoreError) as raised:
        list(islice(model.sample(PROMPT, batch=3), 4))
    model.close()
    assert f"row {row} of {planted.path}" in str(raised.value)
    assert outside in str(raised.value)
    planted.assert_victim_intact()


def test_replication_replay_refuses_the_row(planted: Planted, outside: str) -> None:
    planted.plant(f"s:{planted.key}:1", outside)
    model = Persistent(NumberModel(), planted.path, replication=True)
    with pytest.raises(CorruptStoreError, match=f"row s:{planted.key}:1 of "):
        list(islice(model.sample(PROMPT), 2))
    planted.assert_victim_intact()


def test_a_row_beyond_the_sequence_is_refused_not_overwritten(
    planted: Planted, outside: str
) -> None:
    # The row the next append would write, and diskcache unlink the file of.
    row = f"s:{planted.key}:3"
    planted.plant(row, outside)
    model = Persistent(NumberModel(), planted.path)
    with pytest.raises(CorruptStoreError, match=f"row {row} of "):
        list(islice(model.sample(PROMPT, batch=2), 5))
    model.close()
    drawn = NumberModel().refill(Request.of(PROMPT), 2)
    with DiskStore(planted.path) as store:
        with pytest.raises(
            CorruptStoreError, match=f"row {row} of .* beyond the sequence's length 3"
        ):
            store.append(planted.key, drawn, {"model": "gpt-4o", "messages": []})
        assert store.length(planted.key) == 3
    planted.assert_victim_intact()


@pytest.mark.parametrize("kind", ["record", "length"])
def test_append_refuses_a_damaged_row_it_would_rewrite(
    planted: Planted, outside: str, kind: str
) -> None:
    row = _row(planted, kind)
    planted.plant(row, outside)
    drawn = NumberModel().refill(Request.of(PROMPT), 2)
    with DiskStore(planted.path) as store:
        with pytest.raises(CorruptStoreError, match=f"row {row} of "):
            store.append(planted.key, drawn, {"model": "gpt-4o", "messages": []})
        assert not store.has_draw(planted.key, drawn[0].draw_id)  # nothing half-written
    planted.assert_victim_intact()


def test_deleting_a_sequence_leaves_the_file(planted: Planted, outside: str) -> None:
    planted.plant(f"d:{planted.key}:{planted.draws[1]}", outside)
    with DiskStore(planted.path) as store:
        store.delete(planted.key)
        assert list(store.keys()) == []
    assert planted.rows() == {"__mnimi_format__"}
    planted.assert_victim_intact()


def test_deleting_a_sequence_with_a_damaged_sample_is_refused(
    planted: Planted, outside: str
) -> None:
    planted.plant(f"s:{planted.key}:2", outside)
    before = planted.rows()
    with DiskStore(planted.path) as store, pytest.raises(CorruptStoreError, match=":2 of "):
        store.delete(planted.key)
    assert planted.rows() == before  # one transaction: rolled back whole
    planted.assert_victim_intact()


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda cache: cache.clear(), id="clear"),
        pytest.param(lambda cache: cache.expire(now=float("inf")), id="expire"),
        pytest.param(lambda cache: cache.delete("stray"), id="delete"),
        pytest.param(lambda cache: cache.set("stray", "new"), id="replace"),
    ],
)
def test_the_store_diskcache_never_removes_a_file(
    planted: Planted, outside: str, operation: Callable[[diskcache.Cache], Any]
) -> None:
    planted.plant("stray", outside)
    with diskcache.Cache(str(planted.path)) as raw:
        raw.touch("stray", expire=1)  # so that expire() reaches it
    with sqlite3.connect(planted.path / DBNAME) as connection:
        (filename,) = connection.execute(
            "SELECT filename FROM Cache WHERE key = 'stray'"
        ).fetchone()
    connection.close()
    assert filename == outside
    with DiskStore(planted.path) as store:
        operation(store._cache)
    planted.assert_victim_intact()


def run_json(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, Any]:
    code = main(["--json", *(str(a) for a in argv)])
    out, _ = capsys.readouterr()
    return code, json.loads(out) if out else None


def test_prune_refuses_a_damaged_record(
    planted: Planted, outside: str, capsys: pytest.CaptureFixture[str]
) -> None:
    planted.plant(f"m:{planted.key}", outside)
    before = planted.rows()
    code = main(["prune", str(planted.path), "--max-size", "0"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "nothing removed" in err and outside in err
    assert planted.rows() == before
    planted.assert_victim_intact()


def test_prune_refuses_a_damaged_draw_row_and_leaves_the_file(
    planted: Planted, outside: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # verify reports the row as damage, so prune refuses the store, as it does any
    # store verify would report (and deleting the sequence by hand leaves the file,
    # see test_deleting_a_sequence_leaves_the_file).
    planted.plant(f"d:{planted.key}:{planted.draws[0]}", outside)
    before = planted.rows()
    for dry_run in ([], ["--dry-run"]):
        code = main(["prune", str(planted.path), "--max-size", "0", *dry_run])
        _, err = capsys.readouterr()
        assert code == 1 and "nothing removed" in err and outside in err
    assert planted.rows() == before
    planted.assert_victim_intact()


@pytest.mark.parametrize("kind", ["record", "length", "sample", "draw", "stray", "format"])
def test_verify_reports_a_row_naming_a_file(
    planted: Planted, outside: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {
        "draw": f"d:{planted.key}:{planted.draws[2]}",
        "stray": "stray",
        "format": "__mnimi_format__",
    }.get(kind) or _row(planted, kind)
    planted.plant(row, outside)
    code, data = run_json(capsys, "verify", planted.path)
    assert code == 1 and data["ok"] is False
    (problem,) = [p for p in data["problems"] if p["row"] == row]
    assert f"a file, {outside!r} (refused" in problem["problem"]
    planted.assert_victim_intact()


def test_values_never_go_to_files(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    with DiskStore(path) as store:
        # Even with diskcache told to spill every value, the store keeps them inline.
        store._cache.disk.min_file_size = 0
        drawn = [Sample.of_text("long " * 20_000), Sample.of_text("short")]
        assert store.append("k", drawn, {"model": "gpt-4o", "messages": []}) == drawn
        assert store.get("k", 0) == drawn[0]
        with pytest.raises(TypeError, match="str or int"), open(__file__, "rb") as handle:
            store._cache.set("x", handle, read=True)
    with sqlite3.connect(path / DBNAME) as connection:
        files = connection.execute("SELECT COUNT(*) FROM Cache WHERE filename IS NOT NULL")
        assert files.fetchone() == (0,)
    connection.close()
    assert [p for p in path.iterdir() if p.is_dir()] == []


def test_a_relative_cache_path_stays_where_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store opens its database again on each thread and after close(), and an adapter
    # opens its store at the first call: a relative path followed an os.chdir made since
    # into another project's cache, and read its samples as this one's.
    for project in ("a", "b"):
        (tmp_path / project).mkdir()
    monkeypatch.chdir(tmp_path / "b")
    theirs = Persistent(NumberModel(), "cache")
    their_samples = list(islice(theirs.sample(PROMPT), 2))
    theirs.close()
    monkeypatch.chdir(tmp_path / "a")
    mine = Persistent(NumberModel(), "cache")
    my_samples = list(islice(mine.sample(PROMPT), 3))
    record = RunRecorder("run.jsonl")
    model = MnimiChatModel(model="openai/mock-model", cache_dir="lc", slice_of="big")
    cache = MnimiCache("ll")
    mine.close()
    monkeypatch.chdir(tmp_path / "b")
    assert list(islice(mine.sample(PROMPT), 3)) == my_samples != their_samples[:3]
    with ThreadPoolExecutor(1) as pool:  # a new thread's connection, and a new sample
        assert pool.submit(lambda: list(islice(mine.sample(PROMPT), 4))).result()[:3] == my_samples
    mine.close()
    with DiskStore(tmp_path / "a" / "cache", create=False) as store:
        assert store.length(mine.key_of(Request.of(PROMPT))) == 4
    assert record.path == tmp_path / "a" / "run.jsonl"
    assert (model.cache_dir, model.slice_of) == (
        str(tmp_path / "a" / "lc"),
        str(tmp_path / "a" / "big"),
    )
    assert cache.path == tmp_path / "a" / "ll"
