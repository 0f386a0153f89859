"""Message text: one function for the CLI's listings and the mock server's prompts."""

from __future__ import annotations

from typing import Any

import pytest

from mnimi_adapters.cli import excerpt
from mnimi_adapters.core.request import content_text

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("content", "read", "shown"),
    [
        ("Pick a number", "Pick a number", "Pick a number"),
        (None, "", ""),
        (
            [{"type": "text", "text": "What is"}, IMAGE, "this?"],
            "What is this?",
            "What is [image_url] this?",
        ),
        ([{"type": "text", "text": 5}], "", "[text]"),
        ([{"text": None}], "", "[part]"),
        ({"odd": "shape"}, "", '{"odd": "shape"}'),
    ],
)
def test_a_model_reads_only_text_and_a_person_sees_every_part(
    content: Any, read: str, shown: str
) -> None:
    # What the mock server answers and counts tokens of: the text parts alone.
    assert content_text(content) == read
    # What `mnimi show` lists: a part without text stands as its type.
    assert content_text(content, shown=True) == shown


def test_an_empty_text_part_changes_no_listing() -> None:
    # An empty part adds no space to the text, as the mock server always read it; a
    # listing, which collapses runs of whitespace, shows what it showed with the space.
    content = [{"type": "text", "text": ""}, {"type": "text", "text": "b"}]
    assert content_text(content, shown=True) == "b"
    assert excerpt(" b") == excerpt(content_text(content, shown=True))
