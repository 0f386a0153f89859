"""A run record is private to its owner, whatever the umask: it stands for a paper's run,
and under ``umask 000`` a plain ``open`` made it world-writable, so any local user could
alter which samples the run consumed. A record the user made keeps its mode."""

from __future__ import annotations

import stat
from pathlib import Path

from mnimi_adapters.core.runs import RunRecorder, read_runs


def record_a_run(path: Path) -> None:
    with RunRecorder(path) as record:
        record.consumed("m1-abc", 0, "d0")


def test_a_new_run_record_is_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "run.jsonl"
    record_a_run(path)
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o600"
    record_a_run(path)  # appended to, as before
    assert [len(run) for run in read_runs(path)] == [1, 1]


def test_a_record_the_user_made_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "run.jsonl"
    path.touch()
    path.chmod(0o644)  # the owner's choice, for a reader in the group
    record_a_run(path)
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o644"
    assert [len(run) for run in read_runs(path)] == [1]
