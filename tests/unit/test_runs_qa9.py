"""A run record that is not one (another file given, or bytes altered) is refused by
line number with ``MnimiError``, like any other line that is not a run's: never a
decoding or recursion error out of the reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnimi_adapters.core.errors import MnimiError
from mnimi_adapters.core.runs import read_run, read_runs

DRAW = b'{"draw":0,"key":"m1-abc","index":0,"draw_id":"d0"}\n'


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"draw":1,"key":"m1-\xff","index":1,"draw_id":"d1"}\n', "'utf-8' codec can't decode"),
        (b"[" * 100_000 + b"\n", "maximum recursion depth exceeded"),
    ],
)
def test_a_line_that_cannot_be_read_is_named(tmp_path: Path, line: bytes, why: str) -> None:
    record = tmp_path / "run.jsonl"
    record.write_bytes(b'{"run":1,"started":0}\n' + DRAW + line + DRAW)
    with pytest.raises(MnimiError, match=rf"^{record}, line 3: not a run record line \({why}"):
        read_runs(record)
    with pytest.raises(MnimiError, match=r"line 3"):
        read_run(record)
