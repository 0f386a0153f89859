"""docs/laws.md names real tests: every file and test it cites as a pin exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAWS = ROOT / "docs" / "laws.md"


def test_every_cited_test_exists() -> None:
    text = LAWS.read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(cited) >= 15
    for path, name in cited:
        source = (ROOT / path).read_text()
        assert not name or re.search(rf"def {name}\b", source), f"{path}::{name} is cited"


def test_all_eight_laws_are_numbered() -> None:
    numbers = re.findall(r"^(\d)\. \*\*", LAWS.read_text(), re.M)
    assert numbers == [str(n) for n in range(1, 9)]
