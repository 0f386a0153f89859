"""Why a request misses: the nearest stored request and the first field that differs.

A replication run that misses usually sends *almost* the request the original run sent:
a temperature changed, one character of a system prompt edited, a tool schema grown a
field. The key is a hash, so it says only "different"; these functions compare the
requests' canonical records (:func:`~mnimi_adapters.core.request.request_record`) and say
where, in words.

Example:
    >>> stored = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
    ...           "params": {"temperature": 0.7}}
    >>> first_difference(stored, {**stored, "params": {"temperature": 0.8}})
    'temperature: stored 0.7, requested 0.8'
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from difflib import SequenceMatcher
from typing import Any

from .errors import MnimiError
from .request import Request, request_record
from .stores.base import Summary

__all__ = ["explain_miss", "first_difference", "nearest_record", "requested_record"]

#: Characters of context shown on each side of the first differing character.
_CONTEXT = 16
_MISSING = object()


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_unequal(stored: str, requested: str) -> int:
    """The index of the first character in which two strings differ."""
    return next(
        (i for i, (a, b) in enumerate(zip(stored, requested, strict=False)) if a != b),
        min(len(stored), len(requested)),
    )


def _text_difference(path: str, stored: str, requested: str) -> str:
    at = _first_unequal(stored, requested)
    start = max(0, at - _CONTEXT)
    lead = "..." if start else ""

    def around(text: str) -> str:
        tail = "..." if len(text) > at + _CONTEXT else ""
        return json.dumps(lead + text[start : at + _CONTEXT] + tail, ensure_ascii=False)

    return f"{path} at character {at}: stored {around(stored)}, requested {around(requested)}"


#: Characters compared past the first difference to find where two strings agree again.
_WINDOW = 64


def _glyphs(text: str) -> str:
    """``text`` as it looks printed: composed, format characters (zero-width, direction
    marks) dropped and every kind of whitespace a space, runs of it one space."""
    shown = (
        " " if ch.isspace() else ch
        for ch in unicodedata.normalize("NFC", text)
        if unicodedata.category(ch) != "Cf"
    )
    return " ".join("".join(shown).split())


#: Names of the control characters that are whitespace; Unicode names none of them.
_CONTROLS = {"\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\v": "LINE TABULATION"}


def _code_points(text: str) -> str:
    """``text`` spelled as code points, invisible ones named: ``U+0065 U+0301``."""
    if not text:
        return "nothing"

    def point(ch: str) -> str:
        visible = not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Mn", "Me"))
        name = "" if visible else unicodedata.name(ch, _CONTROLS.get(ch, ""))
        return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")

    return " ".join(point(ch) for ch in text)


def _form(text: str) -> str:
    for form in ("NFC", "NFD"):
        if unicodedata.is_normalized(form, text):
            return form
    return "mixed"


def _invisible_difference(stored: str, requested: str) -> str | None:
    """The first difference spelled in code points when printing the strings hides it.

    ``None`` when the first differing characters look different printed, as most edits
    do: the quoted strings already show the difference.
    """
    at = _first_unequal(stored, requested)
    # The first run of differing characters: from the first difference to where the
    # strings agree again, looked for in a window so a long prompt is not compared whole.
    # Both windows start with differing characters, so the first opcode is not "equal".
    window = SequenceMatcher(
        None, stored[at : at + _WINDOW], requested[at : at + _WINDOW], autojunk=False
    )
    opcodes = window.get_opcodes()
    _, _, i2, _, j2 = opcodes[0]
    # A combining mark is shown with the character it sits on: "e" + U+0301 against "é".
    begin = at
    while begin > 0 and any(
        begin < len(text) and unicodedata.combining(text[begin]) for text in (stored, requested)
    ):
        begin -= 1
    ours, theirs = stored[begin : at + i2], requested[begin : at + j2]
    # Printed, with the text around it, which both share: differing whitespace shows
    # between words, not trailing at the end, nor doubled, nor as a no-break space.
    lead = stored[max(0, begin - _CONTEXT) : begin]
    tail = ""
    if len(opcodes) > 1 and opcodes[1][0] == "equal":
        tail = stored[at + i2 : at + min(opcodes[1][2], i2 + _CONTEXT)]
    if _glyphs(lead + ours + tail) != _glyphs(lead + theirs + tail):
        return None
    spelled = (
        f"the difference does not show in print: at character {begin} stored has "
        f"{_code_points(ours)}, requested has {_code_points(theirs)}"
    )
    if unicodedata.normalize("NFC", stored) == unicodedata.normalize("NFC", requested):
        form = _form(stored)
        how = f' (unicodedata.normalize("{form}", prompt))' if form != "mixed" else ""
        return (
            f"{spelled}. They differ only in Unicode normalisation (stored {form}, "
            f"requested {_form(requested)}), and keys compare text exactly: normalise "
            f"the prompt the same way as the recording did{how}"
        )
    if stored.replace("\r\n", "\n") == requested.replace("\r\n", "\n"):
        return (
            f"{spelled}. They differ only in line endings (CRLF against LF), and keys "
            "compare text exactly: end lines the same way as the recording did"
        )
    return f"{spelled}, and keys compare text exactly"


def _difference(path: str, stored: Any, requested: Any) -> str | None:
    """The first difference below ``path``, depth first in a stable order, or ``None``."""
    if stored is _MISSING and requested is _MISSING:
        return None
    if stored is _MISSING:
        return f"{path}: not stored, requested {_shown(requested)}"
    if requested is _MISSING:
        return f"{path}: stored {_shown(stored)}, not requested"
    if isinstance(stored, Mapping) and isinstance(requested, Mapping):
        for name in sorted(set(stored) | set(requested)):
            below = f"{path}.{name}" if path else str(name)
            found = _difference(below, stored.get(name, _MISSING), requested.get(name, _MISSING))
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(requested, list):
        if len(stored) != len(requested):
            # An item added or dropped (a system message put first): say so, rather than
            # compare every item after it with its neighbour's.
            return _list_difference(path, stored, requested)
        for i, (item, asked) in enumerate(zip(stored, requested, strict=True)):
            found = _difference(f"{path}[{i}]", item, asked)
            if found:
                return found
        return None
    if stored == requested and type(stored) is type(requested):
        return None
    long_text = max(len(str(stored)), len(str(requested))) > 2 * _CONTEXT
    if isinstance(stored, str) and isinstance(requested, str):
        shown = (
            _text_difference(path, stored, requested)
            if long_text
            else f"{path}: stored {_shown(stored)}, requested {_shown(requested)}"
        )
        hidden = _invisible_difference(stored, requested)
        return f"{shown}; {hidden}" if hidden else shown
    return f"{path}: stored {_shown(stored)}, requested {_shown(requested)}"


def _list_difference(path: str, stored: list[Any], requested: list[Any]) -> str | None:
    """The first difference of two lists of unequal length, items aligned as by ``diff``."""
    items = SequenceMatcher(
        None, [_item_text(v) for v in stored], [_item_text(v) for v in requested], autojunk=False
    )
    for change, start, end, asked_start, asked_end in items.get_opcodes():
        if change == "insert":
            return f"{path}[{asked_start}]: not stored, requested {_shown(requested[asked_start])}"
        if change == "delete":
            return f"{path}[{start}]: stored {_shown(stored[start])}, not requested"
        if change == "replace":
            if end - start == asked_end - asked_start:
                return _difference(f"{path}[{start}]", stored[start], requested[asked_start])
            return (
                f"{path}: {len(stored)} stored, {len(requested)} requested; from [{start}] "
                f"stored {_shown(stored[start])}, requested {_shown(requested[asked_start])}"
            )
    return None


def _item_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def first_difference(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> str | None:
    """The first field in which two request records differ, in words; ``None`` if equal.

    Fields are compared in the order a person checks them: the model and endpoint, then
    the sampling parameters (named without a ``params.`` prefix), then the messages.

    Args:
        stored: The canonical record of a stored request.
        requested: The canonical record of the request that missed.

    Example:
        >>> a = {"model": "m", "messages": [{"role": "user", "content": "Sort the list."}]}
        >>> first_difference(a, {"model": "m", "messages": [
        ...     {"role": "user", "content": "Sort a list."}]})
        'messages[0].content: stored "Sort the list.", requested "Sort a list."'
    """
    for field in ("model", "endpoint"):
        found = _difference(field, stored.get(field, _MISSING), requested.get(field, _MISSING))
        if found:
            return found
    found = _difference("", stored.get("params", {}), requested.get("params", {}))
    if found:
        return found
    rest = {k: v for k, v in stored.items() if k not in ("model", "endpoint", "params")}
    asked = {k: v for k, v in requested.items() if k not in ("model", "endpoint", "params")}
    return _difference("", rest, asked)


#: Text longer than this is compared by its ends and a digest (see :func:`_compared`).
_LONG_TEXT = 256
#: The most characters of a record the nearest-request search compares.
_COMPARED = 20_000


def _compared(value: Any) -> Any:
    """``value`` with every long string (a base64 image, a pasted document) cut to its
    ends and a digest of the whole: the same text stays the same, another differs."""
    if isinstance(value, str):
        if len(value) <= _LONG_TEXT:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{value[:96]}...<{len(value)} chars, sha256 {digest}>...{value[-48:]}"
    if isinstance(value, Mapping):
        return {key: _compared(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_compared(item) for item in value]
    return value


def _canonical_text(record: Mapping[str, Any]) -> str:
    """What the nearest-request search compares of ``record``, at most :data:`_COMPARED`
    characters: difflib's ratio takes time in the square of the length, and a miss of a
    request with a 1.5 MB image spent more than ten minutes there before it raised."""
    text = json.dumps(_compared(record), sort_keys=True, ensure_ascii=False)
    if len(text) > _COMPARED:
        half = _COMPARED // 2
        text = text[:half] + text[-half:]
    return text


def nearest_record(
    requested: Mapping[str, Any], stored: Iterable[tuple[str, Mapping[str, Any]]]
) -> tuple[str, Mapping[str, Any]] | None:
    """The stored ``(key, record)`` nearest to ``requested``, among those of its model.

    Args:
        requested: The canonical record of the request that missed.
        stored: ``(key, record)`` pairs of the stored requests.

    Returns:
        The first pair whose canonical JSON is most alike; when nothing is stored for the
        same model, the same request stored under another model name or endpoint (the
        alias a replica forgot, or another server's URL); else ``None``.
    """
    matcher = SequenceMatcher(None, autojunk=False)
    # The requested side is analysed once; each stored record is only compared.
    matcher.set_seq2(_canonical_text(requested))
    best: tuple[str, Mapping[str, Any]] | None = None
    best_ratio = -1.0
    asked = _apart_from_model(requested)
    renamed: tuple[str, Mapping[str, Any]] | None = None
    for key, record in stored:
        if record.get("model") != requested.get("model"):
            if renamed is None and _apart_from_model(record) == asked:
                renamed = (key, record)
            continue
        matcher.set_seq1(_canonical_text(record))
        # The cheap upper bounds first, as difflib.get_close_matches does: a store
        # of many keys is mostly ruled out without the full comparison.
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best, best_ratio = (key, record), ratio
    return best or renamed


def _apart_from_model(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without what names the model: its model and endpoint."""
    return {k: v for k, v in record.items() if k not in ("model", "endpoint")}


def explain_miss(
    requested: Mapping[str, Any], stored: Iterable[Summary]
) -> tuple[str, str | None] | None:
    """The nearest stored request to one that missed, and how it differs.

    Args:
        requested: The canonical record of the request that missed.
        stored: The store's sequences (see :meth:`SequenceStore.summaries`); damaged
            records are skipped.

    Returns:
        ``(key, difference)`` of the nearest stored request of the same model (the
        difference ``None`` when that request is the one asked for), or of the same
        request under another model name (the difference names both); ``None`` when
        neither is stored.
    """
    pairs = ((s.key, s.request) for s in stored if s.error is None and s.request)
    nearest = nearest_record(requested, pairs)
    if nearest is None:
        return None
    key, record = nearest
    return key, first_difference(record, requested)


#: The temperature MnimiCache keys a LiteLLM call without one at (OpenAI's default).
LITELLM_TEMPERATURE = 1.0
#: Fields of an OpenAI-style body that are not sampling parameters.
_BODY_FIELDS = ("model", "messages", "params", "endpoint")


def requested_record(body: Any) -> dict[str, Any]:
    """The canonical record of a request given as JSON.

    Args:
        body: ``{"model": ..., "messages": [...], "params": {...}}``, or an OpenAI-style
            body whose other fields (``temperature``, ``tools``...) are the parameters,
            its temperature 1.0 if it gives none, as for ``MnimiCache``.
            Fields that do not decide the sample (``stream``, credentials) are dropped,
            as they are from keys.

    Raises:
        MnimiError: ``body`` is not a request.

    Example:
        >>> requested_record({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        ...                   "temperature": 0.5})["params"]
        {'temperature': 0.5}
    """
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise MnimiError('a request is a JSON object with a "model" and "messages"')
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise MnimiError('a request\'s "params" must be a JSON object')
    # A body as passed to LiteLLM is keyed as MnimiCache keys one: without a temperature,
    # at OpenAI's default.
    default = {} if "params" in body else {"temperature": LITELLM_TEMPERATURE}
    params = {**default, **{k: v for k, v in body.items() if k not in _BODY_FIELDS}, **params}
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise MnimiError('a request\'s "messages" must be a JSON list')
    try:
        request = Request.of(messages)
    except TypeError as error:
        raise MnimiError(f"a request needs a list of messages: {error}") from None
    identity = {"model": body["model"], "endpoint": body.get("endpoint")}
    return request_record(identity, Request(request.messages, params))
