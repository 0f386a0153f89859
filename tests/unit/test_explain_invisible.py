"""A miss whose difference does not show in print is spelled in code points.

A replay that spells a prompt in NFD (macOS file names, text copied from a PDF) misses
the NFC recording, and quoting both strings showed two identical-looking strings. The
same goes for a zero-width or a no-break space, trailing whitespace and CRLF line ends.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from mnimi_adapters import cli
from mnimi_adapters.core import Persistent
from mnimi_adapters.core.errors import ReplicationCacheMiss
from mnimi_adapters.core.explain import first_difference, nearest_record
from mnimi_adapters.core.model import BatchedModel
from mnimi_adapters.core.request import Request

SHORT = "Café: Pick between 1 and 1000"
LONG = "Résumé: Pick a number between 1 and 1000, and answer with it alone."


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def record(content: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def difference(stored: str, requested: str) -> str:
    found = first_difference(record(stored), record(requested))
    assert found is not None
    return found


@pytest.mark.parametrize("text", [SHORT, LONG], ids=["short", "long"])
def test_nfc_against_nfd_names_the_code_points_and_the_normalisation(text: str) -> None:
    found = difference(nfc(text), nfd(text))
    at = nfc(text).index("é")
    assert f"at character {at} stored has U+00E9, requested has U+0065 U+0301" in found
    assert "differ only in Unicode normalisation (stored NFC, requested NFD)" in found
    assert "keys compare text exactly" in found
    assert 'unicodedata.normalize("NFC", prompt)' in found


def test_the_other_way_round_asks_for_nfd() -> None:
    found = difference(nfd(SHORT), nfc(SHORT))
    assert "stored has U+0065 U+0301 (COMBINING ACUTE ACCENT), requested has U+00E9" in found
    assert "(stored NFD, requested NFC)" in found
    assert 'unicodedata.normalize("NFD", prompt)' in found


@pytest.mark.parametrize(
    ("stored", "requested", "at", "spelled"),
    [
        ("Pick a number.", "Pick a\u00a0number.", 6, "U+0020 (SPACE), requested has U+00A0"),
        ("Pick a number.", "Pick a\u200b number.", 6, "nothing, requested has U+200B"),
        ("Pick a number.", "Pick a number. ", 14, "nothing, requested has U+0020 (SPACE)"),
        ("Pick a  number.", "Pick a number.", 7, "U+0020 (SPACE), requested has nothing"),
        ("Pick\r\na number.", "Pick\na number.", 4, "U+000D (CARRIAGE RETURN), requested has"),
    ],
    ids=["no-break space", "zero-width space", "trailing space", "double space", "CRLF"],
)
def test_invisible_characters_are_spelled(
    stored: str, requested: str, at: int, spelled: str
) -> None:
    found = difference(stored, requested)
    assert found.startswith(f"messages[0].content: stored {json.dumps(stored)}")
    assert f"; the difference does not show in print: at character {at} stored has " in found
    assert spelled in found
    assert "normalisation" not in found


def test_crlf_is_named_as_line_endings() -> None:
    found = difference("Pick\r\na number.", "Pick\na number.")
    assert "differ only in line endings (CRLF against LF)" in found


@pytest.mark.parametrize(
    ("stored", "requested"),
    [
        ("Sort the list.", "Sort a list."),
        ("Café", "Cafe"),
        ("a b", "ab"),
        (nfd("é"), nfd("è")),
        ("x" * 40 + "a b" + "y" * 40, "x" * 40 + "ab" + "y" * 40),
    ],
)
def test_a_visible_difference_is_quoted_as_before(stored: str, requested: str) -> None:
    found = difference(stored, requested)
    assert "U+" not in found and "does not show" not in found


class Counter(BatchedModel):
    def query(self, request: Request, n: int) -> list[Any]:
        return [f"answer {i}" for i in range(n)]


def prompt(text: str) -> Request:
    return Request(({"role": "user", "content": text},), {})


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache holding a sample of :data:`SHORT`, recorded in NFC."""
    path = tmp_path / "cache"
    model = Persistent(Counter("m", 0.7), path)
    model.draw(prompt(nfc(SHORT)), 1)
    model.close()
    return path


def test_a_replication_miss_in_nfd_says_so(cache: Path) -> None:
    replay = Persistent(Counter("m", 0.7), cache, replication=True)
    with pytest.raises(ReplicationCacheMiss) as raised:
        replay.draw(prompt(nfd(SHORT)), 1)
    replay.close()
    assert "stored has U+00E9, requested has U+0065 U+0301" in str(raised.value)
    assert "differ only in Unicode normalisation" in str(raised.value)


def test_mnimi_explain_of_an_nfd_request_says_so(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "request.json"
    body = {"model": "m", "messages": [{"role": "user", "content": nfd(SHORT)}]}
    file.write_text(json.dumps({**body, "temperature": 0.7}, ensure_ascii=False), "utf-8")
    assert cli.main(["explain", str(cache), str(file)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("first difference: messages[0].content: ")
    assert "stored has U+00E9, requested has U+0065 U+0301" in out[1]
    assert "differ only in Unicode normalisation" in out[1]


def test_the_nearest_request_with_a_large_image_is_found_at_once() -> None:
    # difflib compared the whole canonical JSON: a replication miss of a request with a
    # 1.5 MB base64 image spent more than ten minutes before it raised. Long strings are
    # now compared by their ends and a digest, which still tells images apart.
    image = "data:image/png;base64," + "A" * 1_500_000
    other = "data:image/png;base64," + "A" * 1_499_999 + "B"

    def record(text: str, url: str) -> dict[str, object]:
        parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        return {"model": "m", "messages": [{"role": "user", "content": parts}]}

    stored = [
        ("other-image", record("What is in it?", other)),
        ("same", record("What is it?", image)),
    ]
    assert nearest_record(record("What is in it?", image), stored) == stored[1]
