"""The ``mnimi`` command where it took an edited sequence, cut a run record, or misread damage.

- ``import`` (and ``export`` into a store) compared only draw ids: a sample whose text was
  changed but whose draw id was kept passed as the stored one ("0 new", exit 0).
- A ``multiprocessing`` run whose workers each recorded into one run record wrote a run
  mark per worker: ``export --bundle --record`` and ``diff-runs`` took the last worker's
  draws as the run, silently. Recorders whose lines interleave were not told apart.
"""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import gc
import json
import multiprocessing
import re
import shutil
import sqlite3
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from support import Locations, NumberModel, fill, mnimi

from mnimi_adapters import cli
from mnimi_adapters.core import BatchedModel, Persistent, Request
from mnimi_adapters.core.runs import RunRecorder, read_runs
from mnimi_adapters.core.stores.files import make_private_folder

PROMPT = "Choose a number between 1 and 1000."


# -- 1. a sample edited under its own draw id -----------------------------------------


def edited_export(location: str, tmp_path: Path) -> Path:
    """A JSON Lines export of ``location`` whose first sample's text is changed, its draw
    id kept."""
    lines = (tmp_path / "whole.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["sample"]["text"] = first["sample"]["message"]["content"] = "TAMPERED"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(f"{line}\n" for line in [json.dumps(first), *lines[1:]]))
    return edited


def test_an_edited_sample_under_its_draw_id_is_a_different_sequence(
    locations: Locations, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = locations.new("original")
    key = fill(original, NumberModel(), PROMPT, 2)
    assert mnimi(capsys, "export", original, str(tmp_path / "whole.jsonl"), "--jsonl")[0] == 0
    edited = edited_export(original, tmp_path)

    code, printed, err = mnimi(capsys, "import", str(edited), original)
    assert code == 1 and printed == ""
    assert f"holds a different sequence for key {key}; nothing imported" in err

    # The same edit carried by a store, exported into the original: refused too.
    copy = locations.new("copy")
    assert mnimi(capsys, "import", str(edited), copy)[0] == 0
    code, _, err = mnimi(capsys, "export", copy, original, "--grep", "")
    assert code == 1 and "holds a different sequence for this key; not exported" in err

    # The same samples, unedited, still add nothing and pass.
    code, printed, err = mnimi(capsys, "import", str(tmp_path / "whole.jsonl"), original)
    assert (code, err) == (0, "") and "(2 samples, 0 new)" in printed


# -- 2. a run recorded by several worker processes ------------------------------------

#: The worker's recording slice, made by the pool's initializer.
_SLICE: list[Persistent] = []


def _start_worker(cache: str, record: str, barrier: Any) -> None:
    big = Persistent(NumberModel(), f"{cache}/big")
    _SLICE.append(Persistent(big, f"{cache}/slice", record=record))
    _SLICE.append(barrier)


def _solve(problem: int) -> list[str]:
    """Two samples, then (once every worker has recorded its first) two more."""
    layer, barrier = _SLICE
    samples = layer.samples(f"Problem {problem}", batch=4)
    drawn = [s.draw_id for s in islice(samples, 2)]
    layer.recorder.flush()  # the workers' lines interleave in the file
    barrier.wait(timeout=60)
    drawn += [s.draw_id for s in islice(samples, 2)]
    layer.recorder.flush()
    return drawn


@pytest.mark.parametrize(
    "method", [m for m in ("spawn", "fork") if m in multiprocessing.get_all_start_methods()]
)
def test_the_recorders_of_one_program_s_workers_record_one_run(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record, context = tmp_path / "run.jsonl", multiprocessing.get_context(method)
    barrier = context.Barrier(3)
    with context.Pool(3, _start_worker, (str(tmp_path), str(record), barrier)) as pool:
        drawn = pool.map(_solve, range(3), chunksize=1)
    assert sum('"worker":true' in line for line in record.read_text().splitlines()) == 3

    (run,) = read_runs(record)
    assert sorted(d["draw_id"] for d in run) == sorted(d for ds in drawn for d in ds)
    bundle = tmp_path / "bundle"
    code, _, err = mnimi(
        capsys, "export", str(tmp_path / "slice"), str(bundle), "--bundle", "--record", str(record)
    )
    assert (code, err) == (0, "")
    (shipped,) = read_runs(bundle / "run.jsonl")
    assert [d["draw"] for d in shipped] == list(range(12))

    # A replay in one process consumed the same samples: identical.
    replay = Persistent(
        NumberModel(), bundle / "store", replication=True, record=tmp_path / "replay.jsonl"
    )
    for problem in range(3):
        list(islice(replay.samples(f"Problem {problem}", batch=4), 4))
    replay.close()
    code, printed, _ = mnimi(
        capsys, "diff-runs", str(bundle / "run.jsonl"), str(tmp_path / "replay.jsonl")
    )
    assert code == 0 and "identical: both runs consumed the same 12 samples of 3 keys" in printed
    assert mnimi(capsys, "diff-runs", str(record), str(tmp_path / "replay.jsonl"))[0] == 0


def test_two_recorders_of_one_process_interleaved_are_refused_not_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs at once into one record: which draws were whose is lost, and said."""
    record = tmp_path / "run.jsonl"
    first, second = RunRecorder(record), RunRecorder(record)
    for index in range(3):
        for name, recorder in (("a", first), ("b", second)):
            recorder.consumed(f"m1-{name}", index, f"{name}{index}")
            recorder.flush()
    first.close()
    second.close()
    code, _, err = mnimi(capsys, "diff-runs", str(record), str(record))
    assert code == 2
    assert f"{record}: the run from line 3 holds lines of other runs among its own" in err
    assert "give each program, or each recorder, a record file of its own" in err
    fill(tmp_path / "cache", NumberModel(), PROMPT, 1)
    code, _, err = mnimi(
        capsys,
        "export",
        str(tmp_path / "cache"),
        str(tmp_path / "b"),
        "--bundle",
        "--record",
        str(record),
    )
    assert code == 2 and "holds lines of other runs" in err


# -- 3. verify of a damaged page, and of a database cut short ------------------------


class Padded(BatchedModel):
    """Answers of one length (a stable page layout), each naming its request."""

    def query(self, request: Request, n: int) -> list[str]:
        return [f"{request.prompt} answer {i:03} ".ljust(400, "x") for i in range(n)]


def alone(cache: Path) -> Path:
    """A copy of the cache's ``cache.db`` alone, in a directory of its own (the store
    folds its write-ahead log in as it closes): damage to the file is damage to rows."""
    copy = cache.with_name(f"{cache.name}-copy")
    make_private_folder(copy)
    shutil.copyfile(cache / "cache.db", copy / "cache.db")
    return copy / "cache.db"


def damaged_cache(tmp_path: Path, keys: int = 40, samples: int = 60) -> Path:
    """A copy of a cache of ``keys`` x ``samples`` whose database has one page of rows
    overwritten from its header on: the page holding a sample of problem 20."""
    cache = tmp_path / "cache"
    layer = Persistent(Padded("fake", 1.0, max_batch=10), cache)
    for round_ in range(samples // 10):
        for key in range(keys):
            list(islice(layer.samples(f"problem {key:02}", batch=10), 10 * (round_ + 1)))
    layer.close()
    database = alone(cache)
    with closing(sqlite3.connect(database)) as connection:
        (page_size,) = connection.execute("PRAGMA page_size").fetchone()
    page = database.read_bytes().index(b"problem 20 answer") // page_size
    with database.open("r+b") as file:
        file.seek(page * page_size)
        file.write(b"\xff" * 3000)
    return database.parent


def test_verify_reports_rows_on_a_damaged_page_unreadable_and_checks_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = damaged_cache(tmp_path)
    code, printed, _ = mnimi(capsys, "verify", str(cache))
    assert code == 1
    assert "missing sample" not in printed and "a gap" not in printed
    unreadable = re.findall(r"^(m1-\w+): sample #(\d+) is unreadable", printed, re.MULTILINE)
    assert unreadable
    affected = {key for key, _ in unreadable}
    assert len(affected) < 40
    code, printed, _ = mnimi(capsys, "--json", "verify", str(cache))
    report = json.loads(printed)
    # Every sample is counted once: sound, or on the damaged page.
    assert (report["keys"], report["samples"] + len(unreadable)) == (40, 2400)
    assert {p["key"] for p in report["problems"] if p["key"]} == affected


def test_verify_of_a_database_cut_short_does_not_send_you_to_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    fill(cache, Padded("fake", 1.0), PROMPT, 300)
    database = alone(cache)
    database.write_bytes(database.read_bytes()[:60_000])
    code, printed, err = mnimi(capsys, "verify", str(database.parent))
    assert (code, err) == (1, "")
    assert "the store is damaged past opening (database disk image is malformed)" in printed
    assert "restore the directory from a copy" in printed
    assert "mnimi verify" not in printed


def test_a_row_of_text_that_is_not_utf8_is_damage_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's sqlite3 refuses such text: verify stopped with exit 2 ("Could not decode to
    # UTF-8"), and show and export called it a failure of SQLite, not damage to skip.
    cache = tmp_path / "cache"
    key = fill(cache, NumberModel(), PROMPT, 3)
    with closing(sqlite3.connect(cache / "cache.db")) as database:
        database.execute(
            "UPDATE Cache SET value = CAST(X'7B22FF' AS TEXT) WHERE key = ?", (f"s:{key}:1",)
        )
        database.commit()
    code, printed, _ = mnimi(capsys, "verify", str(cache))
    assert code == 1
    assert f"{key}: sample #1 is a bytes value, not JSON text" in printed
    assert "(2 sound samples)" in printed
    code, _, err = mnimi(capsys, "export", str(cache), str(tmp_path / "out.jsonl"), "--jsonl")
    assert "is damaged (Could not decode" in err and "not exported" in err


def test_a_command_runs_with_the_cycle_collector_held_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # prune keeps a record per key after its check; collections its allocations set off
    # scanned them again and again (6.2 s against 4.3 s at 100,000 keys).
    cache = tmp_path / "cache"
    fill(cache, NumberModel(), PROMPT, 3)
    seen: list[bool] = []
    real = cli._table
    monkeypatch.setattr(cli, "_table", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    assert mnimi(capsys, "prune", str(cache), "--max-size", "0", "--dry-run")[0] == 0
    assert seen == [False] and gc.isenabled()
