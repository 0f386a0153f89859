"""Run records: ``Persistent(..., record=...)`` writes which sample each draw consumed,
and ``mnimi diff-runs`` names the first draw where two runs part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mnimi_adapters import cli
from mnimi_adapters.core import Independent, Persistent
from mnimi_adapters.core.model import BatchedModel
from mnimi_adapters.core.request import Request
from mnimi_adapters.core.runs import read_run, read_runs

PROMPTS = ["alpha", "beta", "gamma"]


class Numbered(BatchedModel):
    """Answers numbered per prompt."""

    def query(self, request: Request, n: int) -> list[Any]:
        return [f"{request.prompt} answer" for _ in range(n)]


def program(cache: Path, record: Path, retries: dict[str, int] | None = None) -> list[str]:
    """Two attempts per prompt (more where ``retries`` says), as a retry loop would."""
    model = Persistent(Numbered("m", 1.0), cache, record=record)
    sampler = Independent(model)
    drawn = []
    for prompt in PROMPTS:
        for _ in range((retries or {}).get(prompt, 2)):
            drawn.append(next(sampler.samples(prompt)).draw_id)
    model.close()
    return drawn


def test_a_record_lists_each_consumed_sample_in_order(tmp_path: Path) -> None:
    cache, record = tmp_path / "cache", tmp_path / "run.jsonl"
    drawn = program(cache, record)
    keys = [Persistent(Numbered("m", 1.0), cache).key_of(Request.of(p)) for p in PROMPTS]
    draws = read_run(record)
    assert [d["draw_id"] for d in draws] == drawn
    assert [(d["draw"], d["key"], d["index"]) for d in draws] == [
        (draw, keys[draw // 2], draw % 2) for draw in range(6)
    ]


def test_two_runs_of_one_program_give_equal_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    program(cache, tmp_path / "first.jsonl")
    program(cache, tmp_path / "second.jsonl")
    first, second = read_run(tmp_path / "first.jsonl"), read_run(tmp_path / "second.jsonl")
    assert first == second and len(first) == 6
    assert (
        cli.main(["diff-runs", str(tmp_path / "first.jsonl"), str(tmp_path / "second.jsonl")]) == 0
    )
    assert capsys.readouterr().out == "identical: both runs consumed the same 6 samples in order\n"


def test_a_changed_retry_loop_names_the_first_divergent_draw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    program(cache, tmp_path / "first.jsonl")
    program(cache, tmp_path / "second.jsonl", retries={"beta": 3})
    first, second = read_run(tmp_path / "first.jsonl"), read_run(tmp_path / "second.jsonl")
    beta, gamma = first[2]["key"], first[4]["key"]
    args = ["diff-runs", str(tmp_path / "first.jsonl"), str(tmp_path / "second.jsonl")]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        f"draw 4 differs: the first run consumed sample 0 of {gamma} "
        f"(draw id {first[4]['draw_id']}), the second sample 2 of {beta} "
        f"(draw id {second[4]['draw_id']})"
    )
    assert cli.main(["--json", *args]) == 1
    assert json.loads(capsys.readouterr().out)["draws"] == [6, 7]


def test_a_rerun_into_one_record_appends_a_run_and_the_last_is_compared_and_shipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An author who runs the script twice (re-runs are free) before packaging it.
    cache, record = tmp_path / "cache", tmp_path / "paper-run.jsonl"
    program(cache, record)
    program(cache, record)
    program(cache, tmp_path / "replay.jsonl")
    assert cli.main(["diff-runs", str(record), str(tmp_path / "replay.jsonl")]) == 0
    assert f"{record} holds 2 runs: comparing its last" in capsys.readouterr().out
    bundle = tmp_path / "bundle"
    assert cli.main(["export", str(cache), str(bundle), "--bundle", "--record", str(record)]) == 0
    assert read_runs(bundle / "run.jsonl") == [read_run(record)]


def test_diff_runs_names_a_line_that_is_not_a_draw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    program(tmp_path / "cache", good)
    bad.write_text(good.read_text() + "not json\n")
    assert cli.main(["diff-runs", str(good), str(bad)]) == 2
    assert "line 8" in capsys.readouterr().err  # after the run's mark and 6 draws


def test_a_record_is_written_out_when_the_program_exits_without_closing(tmp_path: Path) -> None:
    # The record is buffered (a write per line cost a replay 10%); an ordinary exit, or
    # the recorder being collected, writes out every line all the same.
    import subprocess
    import sys

    record = tmp_path / "run.jsonl"
    script = (
        "import sys\n"
        "from mnimi_adapters.core.runs import RunRecorder\n"
        "recorder = RunRecorder(sys.argv[1])\n"
        "for index in range(3):\n"
        "    recorder.consumed('m1-abc', index, f'draw-{index}')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(record)], check=True, timeout=60)
    assert [d["index"] for d in read_run(record)] == [0, 1, 2]
