"""Store edges: text with no UTF-8 form, database files that are links, uses of keys.

A provider's JSON may hold a lone surrogate (``"caf\\udcff"``): the sample is paid for,
so it must be stored and read back as the very same str, and a prompt holding one must
have a key. A cache directory whose database files are symbolic links must not be
opened, as SQLite would follow them out of the directory. And the times of use that a
replay notes must all be written, whatever the number of batches in flight.
"""

from __future__ import annotations

from mnimi_adapters.core import (
    Request,
    request_key,
)
from mnimi_adapters.core.request import record_key

LONE = "caf\udcff"  # what json.loads makes of the valid JSON "caf\udcff"


# -- keys -----------------------------------------------------------------------


def test_keys_of_ordinary_requests_never_change() -> None:
    """Existing caches are found by these keys: the hashing must never move them."""
    plain = Request.of("Choose a number between 1 and 1000.")
    assert (
        request_key({"model": "gpt-4o", "params": {"temperature": 1.0}}, plain)
        == "m1-40caeafd9b000d552bc880f9f331452367d3202b"
    )
    accented = Request(
        (
            {"role": "system", "content": "Réponds en français ☕"},
            {"role": "user", "content": "数字を一つ"},
        ),
        {"max_tokens": 5, "stop": ["\n"]},
    )
    assert (
        request_key({"model": "gpt-4o", "params": {"temperature": 0.7}}, accented)
        == "m1-f0b852f0dcf227b9bb33f7918333e988f2d8a5b8"
    )


def test_a_prompt_with_a_lone_surrogate_has_a_key_of_its_own() -> None:
    identity = {"model": "m"}
    lone = request_key(identity, Request.of(LONE))
    assert lone.startswith("m1-")
    # Not the key of the text with a replacement character, nor of a whole pair.
    assert lone != request_key(identity, Request.of("caf\ufffd"))
    assert request_key(identity, Request.of("\ud83d\ude00")) != request_key(
        identity, Request.of("\U0001f600")
    )
    assert record_key({"text": LONE}) == record_key({"text": LONE})
