"""Run records: ``Persistent(..., record=...)`` writes which sample each draw consumed,
and ``mnimi diff-runs`` names, key by key, where two runs part."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mnimi_adapters import cli
from mnimi_adapters.core import Independent, Persistent
from mnimi_adapters.core.errors import ReplicationCacheMiss
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
    assert capsys.readouterr().out == "identical: both runs consumed the same 6 samples of 3 keys\n"


def test_a_changed_retry_loop_names_the_key_and_sample_where_the_runs_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    program(cache, tmp_path / "first.jsonl")
    program(cache, tmp_path / "second.jsonl", retries={"beta": 3})
    first, second = read_run(tmp_path / "first.jsonl"), read_run(tmp_path / "second.jsonl")
    beta = first[2]["key"]
    args = ["diff-runs", str(tmp_path / "first.jsonl"), str(tmp_path / "second.jsonl")]
    assert cli.main(args) == 1
    # Only beta differs: gamma's samples moved to later draws, which is no difference.
    assert capsys.readouterr().out == (
        "1 of 3 keys differs (the first run made 6 draws, the second 7):\n"
        f"{beta}: the first run consumed 2 samples of it, the second 3; only the second "
        f"run consumed sample 2 (draw id {second[4]['draw_id']}, at draw 4)\n"
    )
    assert cli.main(["--json", *args]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["draws"] == [6, 7] and report["keys"] == 3
    assert [d["key"] for d in report["differences"]] == [beta]


class Slow(BatchedModel):
    """Answers after a delay set per prompt, so concurrent draws complete out of order."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__("m", 1.0)
        self.delays = delays

    def query(self, request: Request, n: int) -> list[Any]:
        return [f"{request.prompt} answer" for _ in range(n)]

    async def aquery(self, request: Request, n: int) -> list[Any]:
        await asyncio.sleep(self.delays.get(request.prompt, 0.0))
        return self.query(request, n)


def gathered(
    cache: Path, record: Path, prompts: list[str], delays: dict[str, float] | None = None
) -> list[str]:
    """One draw per prompt, all at once; a replication run where ``delays`` is None."""
    replication = delays is None
    model = Persistent(Slow(delays or {}), cache, replication=replication, record=record)
    sampler = Independent(model)

    async def run() -> list[list[Any]]:
        return await asyncio.gather(*(sampler.adraw(prompt, 1) for prompt in prompts))

    drawn = [samples[0].draw_id for samples in asyncio.run(run())]
    model.close()
    return drawn


def test_a_concurrent_run_and_its_replay_are_identical_whatever_order_draws_completed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The author's slow requests (a retry, a long answer) complete last; the replay's
    # hits complete in program order. Each step consumed the same sample all the same.
    cache, author, replay = tmp_path / "cache", tmp_path / "author.jsonl", tmp_path / "replay.jsonl"
    drawn = gathered(cache, author, PROMPTS, delays={"alpha": 0.3, "beta": 0.15})
    assert gathered(cache, replay, PROMPTS) == drawn
    first, second = read_run(author), read_run(replay)
    assert [d["draw_id"] for d in first] == drawn[::-1]  # completion order
    assert [d["draw_id"] for d in second] == drawn  # program order
    assert cli.main(["diff-runs", str(author), str(replay)]) == 0
    assert capsys.readouterr().out == "identical: both runs consumed the same 3 samples of 3 keys\n"
    # Concurrent draws of one request, too: which completes first is no difference.
    prompts = ["alpha", "alpha", "beta", "alpha"]
    drawn = gathered(tmp_path / "again", author, prompts, delays={"alpha": 0.1})
    assert gathered(tmp_path / "again", replay, prompts) == drawn
    assert cli.main(["diff-runs", str(author), str(replay)]) == 0
    assert capsys.readouterr().out.startswith(
        f"{author} holds 2 runs: comparing its last\n{replay} holds 2 runs: comparing its last\n"
        "identical: both runs consumed the same 4 samples of 2 keys"
    )


def test_a_replay_of_other_samples_or_other_requests_is_reported_per_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    author, replay = tmp_path / "author.jsonl", tmp_path / "replay.jsonl"
    drawn = gathered(tmp_path / "cache", author, PROMPTS, delays={"alpha": 0.1})
    # Replayed from another cache: same requests (keys), other samples, and one request
    # (gamma) changed into another (delta).
    other = gathered(tmp_path / "other", replay, ["alpha", "beta", "delta"], delays={})
    first = {d["draw_id"]: d for d in read_run(author)}
    second = {d["draw_id"]: d for d in read_run(replay)}
    alpha, beta, gamma = (first[draw_id] for draw_id in drawn)
    alpha2, beta2, delta = (second[draw_id] for draw_id in other)
    assert cli.main(["diff-runs", str(author), str(replay)]) == 1
    differs = {
        mine["key"]: f"{mine['key']}: sample 0 differs: the first run consumed draw id "
        f"{mine['draw_id']} at draw {mine['draw']}, the second draw id {theirs['draw_id']} "
        f"at draw {theirs['draw']}"
        for mine, theirs in [(alpha, alpha2), (beta, beta2)]
    }
    differs[gamma["key"]] = (
        f"{gamma['key']}: only the first run drew from it (1 sample, from draw {gamma['draw']} on)"
    )
    # The keys in the order the first run drew them, then those only the second drew.
    assert capsys.readouterr().out.splitlines() == [
        "4 of 4 keys differ (the first run made 3 draws, the second 3):",
        *(differs[d["key"]] for d in read_run(author)),
        f"{delta['key']}: only the second run drew from it (1 sample, from draw "
        f"{delta['draw']} on)",
    ]


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


def test_a_replay_that_missed_at_its_first_draw_consumed_no_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, author, replay = tmp_path / "cache", tmp_path / "author.jsonl", tmp_path / "replay.jsonl"
    program(cache, author)
    # Another temperature: the replay's first request is not in the cache. The recorder
    # writes nothing for a run that consumed nothing, so there is no record.
    model = Persistent(Numbered("m", 0.7), cache, replication=True, record=replay)
    with pytest.raises(ReplicationCacheMiss):
        next(Independent(model).samples(PROMPTS[0]))
    model.close()
    assert not replay.exists()
    assert cli.main(["diff-runs", str(author), str(replay)]) == 1
    assert capsys.readouterr().out == (
        f"the second run consumed no sample (no record at {replay}); "
        "the first made 6 draws over 3 keys\n"
    )
    assert cli.main(["--json", "diff-runs", str(replay), str(author)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == [True, False] and report["draws"] == [0, 6]
    assert report["divergence"].startswith(
        f"the first run consumed no sample (no record at {replay})"
    )
    # Two records that do not exist, or one in a folder that does not: a mistyped path.
    assert cli.main(["diff-runs", str(replay), str(tmp_path / "other.jsonl")]) == 2
    assert "no run record at" in capsys.readouterr().err
    assert cli.main(["diff-runs", str(author), str(tmp_path / "nowhere" / "replay.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


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
