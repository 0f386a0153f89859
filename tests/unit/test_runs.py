"""Run records: two runs of one program consumed the same samples, or where they parted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnimi_adapters.core.errors import MnimiError
from mnimi_adapters.core.runs import RunRecorder, compare_runs, diff_runs, read_run, read_runs


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


def test_the_key_where_runs_part_is_named_with_its_first_difference(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 1, "b"), ("k2", 0, "c")])
    # A retry loop that changed: the second run took one more sample of k1 first.
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a"), ("k1", 1, "b"), ("k1", 2, "d")])
    assert compare_runs(first, second) == (
        "2 of 2 keys differ (the first run made 3 draws, the second 3):\n"
        "k1: the first run consumed 2 samples of it, the second 3; only the second run "
        "consumed sample 2 (draw id d, at draw 2)\n"
        "k2: only the first run drew from it (1 sample, from draw 2 on)"
    )
    comparison = diff_runs(first, second)
    assert [d.key for d in comparison.differences] == ["k1", "k2"]
    assert comparison.draws == (3, 3) and comparison.keys == 2 and not comparison.identical


def test_another_draw_id_at_a_position_is_named(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 1, "b")])
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a"), ("k1", 1, "x")])
    assert compare_runs(first, second) == (
        "1 of 1 key differs (the first run made 2 draws, the second 2):\n"
        "k1: sample 1 differs: the first run consumed draw id b at draw 1, "
        "the second draw id x at draw 1"
    )


def test_a_sample_consumed_more_often_is_named(tmp_path: Path) -> None:
    # Repeatable steps replay a sample: how often each run consumed it counts.
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 0, "a"), ("k1", 1, "b")])
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a"), ("k1", 1, "b"), ("k1", 1, "b")])
    assert compare_runs(first, second) == (
        "1 of 1 key differs (the first run made 3 draws, the second 3):\n"
        "k1: the first run consumed sample 0 (draw id a) twice, the second once"
    )


def test_the_order_draws_completed_in_is_no_difference(tmp_path: Path) -> None:
    draws = [("k1", 0, "a"), ("k2", 0, "c"), ("k1", 1, "b"), ("k3", 0, "e")]
    first = write(tmp_path / "a.jsonl", draws)
    # Concurrent draws recorded as they completed: across keys, and within one key.
    second = write(tmp_path / "b.jsonl", [draws[3], draws[2], draws[1], draws[0]])
    assert compare_runs(first, second) is None
    comparison = diff_runs(first, second)
    assert comparison.identical and comparison.reordered == ["k1"]


def test_a_run_that_stopped_early(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [("k1", 0, "a"), ("k1", 1, "b")])
    second = write(tmp_path / "b.jsonl", [("k1", 0, "a")])
    assert compare_runs(first, second) == (
        "1 of 1 key differs (the first run made 2 draws, the second 1):\n"
        "k1: the first run consumed 2 samples of it, the second 1; only the first run "
        "consumed sample 1 (draw id b, at draw 1)"
    )
    assert (
        compare_runs([], first)
        == "the first run consumed no sample; the second made 2 draws over 1 key"
    )


def test_many_differing_keys_are_counted_past_the_limit(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [(f"k{i}", 0, f"a{i}") for i in range(25)])
    second = write(tmp_path / "b.jsonl", [(f"k{i}", 0, f"b{i}") for i in range(25)])
    lines = diff_runs(first, second).text(limit=20)
    assert lines is not None
    assert lines.splitlines()[0].startswith("25 of 25 keys differ")
    assert lines.splitlines()[-1] == "(and 5 more keys)" and len(lines.splitlines()) == 22


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


@pytest.mark.parametrize(
    "line",
    [
        '{"draw": 0, "key": "k1", "index": "0", "draw_id": "a"}',
        '{"draw": 0, "key": "k1", "index": -1, "draw_id": "a"}',
        '{"draw": 0, "key": 7, "index": 0, "draw_id": "a"}',
        '{"draw": 0, "key": "k1", "index": 0, "draw_id": null}',
    ],
)
def test_a_draw_with_fields_of_the_wrong_kind_is_named(tmp_path: Path, line: str) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MnimiError, match="line 1: not a run record line"):
        read_run(path)
