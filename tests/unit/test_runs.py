"""Run records: two runs of one program consumed the same samples, or where they parted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnimi_adapters.core.errors import MnimiError
from mnimi_adapters.core.runs import RunRecorder, compare_runs, read_run, read_runs


def write(path: Path, draws: list[tuple[str, int, str]]) -> list[dict[str, object]]:
    with RunRecorder(path) as record:
        for key, index, draw_id in draws:
            record.consumed(key, index, draw_id)
    return read_run(path)


def test_equal_runs_compare_equal(tmp_path: Path) -> None:
    draws = [("k1", 0, "a"), ("k1", 1, "b"), ("k2", 0, "c")]
    assert (
        compare_runs(write(tmp_path / "a.jsonl", draws), write(tmp_path / "b.jsonl", draws)) is None
    )


def test_the_first_divergent_draw_is_named(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 1, "b"), ("k2", 0, "c")])
    # A retry loop that changed: the second run took one more sample of k1 first.
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a"), ("k1", 1, "b"), ("k1", 2, "d")])
    found = compare_runs(first, second)
    assert found == (
        "draw 2 differs: the first run consumed sample 0 of k2 (draw id c), "
        "the second sample 2 of k1 (draw id d)"
    )


def test_a_run_that_stopped_early(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 1, "b")])
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a")])
    assert compare_runs(first, second) == "the second run stopped after 1 draw; the first made 2"
    assert compare_runs(second, first) == "the first run stopped after 1 draw; the second made 2"


def test_a_rerun_appends_a_run_of_its_own_and_the_last_is_read(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    first = write(path, [("k1", 0, "a"), ("k1", 1, "b")])
    again = write(path, [("k1", 0, "a"), ("k1", 1, "b")])
    # Each run is numbered from 0, so a re-run compares equal to the first run.
    assert again == first and [d["draw"] for d in again] == [0, 1]
    assert read_runs(path) == [first, again]
    # A record written before runs were marked is one run.
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(
        "".join(line + "\n" for line in path.read_text().splitlines() if '"run"' not in line)
    )
    assert [len(run) for run in read_runs(legacy)] == [4]


def test_a_record_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MnimiError, match="cannot record the run"):
        RunRecorder(tmp_path)  # a directory


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    write(path, [("k1", 0, "a")])
    with path.open("a") as file:
        file.write("not json\n")
    with pytest.raises(MnimiError, match="line 3"):  # after the run's mark and a draw
        read_run(path)
