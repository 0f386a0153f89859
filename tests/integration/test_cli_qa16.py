"""The ``mnimi`` command where it took an edited sequence, cut a run record, or misread damage.

- ``import`` (and ``export`` into a store) compared only draw ids: a sample whose text was
  changed but whose draw id was kept passed as the stored one ("0 new", exit 0).
"""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
from pathlib import Path

import pytest
from support import Locations, NumberModel, fill, mnimi

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
