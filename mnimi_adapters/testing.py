"""A local, OpenAI-compatible sampling server for tests and offline demos.

The server answers ``/v1/chat/completions`` with *random* samples (and ``/v1/messages``
and ``/v1/responses`` with the same answers in Anthropic's and OpenAI's Responses formats):
every choice of every request is different (with overwhelming probability), which is
exactly what a caching library needs to be tested against. A cache that wrongly replays a
sample shows up as a repeated text; a cache that wrongly discards one shows up as an extra
request in :attr:`SamplingServer.requests`.

It uses only the standard library so that importing it is cheap and it can run anywhere::

    with SamplingServer(seed=0) as server:
        litellm.completion(model="openai/mock-model", api_base=server.url, api_key="sk-test",
                           messages=[{"role": "user", "content": "Pick between 1 and 1000"}])

or from a shell: ``python -m mnimi_adapters.testing --port 8000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import selectors
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from .core.request import content_text
from .core.sample import stream_pieces

__all__ = ["LoggedRequest", "SamplingServer", "main"]

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODEL_PATHS = frozenset({"/v1/models", "/models"})
_REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})
_FAULT_KINDS = frozenset({"status", "timeout", "slow", "malformed", "empty"})
_DEFAULT_MODEL = "mock-model"
_FINGERPRINT = "mnimi-local"
# A JSON Schema number the mock draws: an integer, or a float.
_N = TypeVar("_N", int, float)

_RANGE_RE = re.compile(r"between (\d+) and (\d+)", re.IGNORECASE)
_INT_RE = re.compile(r"-?\d+")
_TOOL_HINT_RE = re.compile(r"\b(?:tools?|call(?:s|ed|ing)?|use|using)\b", re.IGNORECASE)
# A quoted phrase: ASCII quotes must not touch a word character on their outer side, so the
# apostrophes of "don't ... it's" never pair up into a phrase.
_QUOTED_RE = re.compile(
    r"(?<!\w)(?:'([^'\n]+?)'|\"([^\"\n]+?)\"|`([^`\n]+?)`)(?!\w)"
    r"|\u201c([^\u201d\n]+)\u201d|\u2018([^\u2019\n]+)\u2019|\u300c([^\u300d\n]+)\u300d"
)
_IDENTIFIER_RE = re.compile(r"[^\W\d][\w-]*")
# What may stand between two names of one list: "'a', 'b', and 'c'", "'a' or 'b'".
_NAME_SEPARATOR_RE = re.compile(r"\s*,?\s*(?:(?:and|or|&)\s*)?", re.IGNORECASE)
_KEY_WORD = r"(?:keys?|fields?|propert(?:y|ies)|attributes?)"
# A list of names counts as JSON keys when a key word closely precedes it ("with keys 'a'
# and 'b'", "fields: `a`, `b`") or follows it ("'a' and 'b' keys", "'a' and 'b' as keys").
_KEY_WORD_BEFORE_RE = re.compile(rf"\b{_KEY_WORD}(?:\s+(?:named|called))?\s*:?\s*$", re.IGNORECASE)
_KEY_WORD_AFTER_RE = re.compile(rf"^\s*(?:[^\W\d]+\s+){{0,2}}?{_KEY_WORD}\b", re.IGNORECASE)
_NAME_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[^\W\d_]+")
# Parts of tool names too generic to show that a message is about that tool: "tool" in
# "my_adder_tool" or "function" in "magic_function" say nothing about the user's request.
_STOP_WORDS = frozenset({
    "about", "args", "call", "data", "does", "from", "func", "function", "functions",
    "have", "helper", "info", "input", "into", "invoke", "item", "items", "make", "more",
    "name", "output", "result", "results", "some", "that", "them", "then", "there", "they",
    "this", "tool", "tools", "util", "utils", "value", "values", "what", "when", "where",
    "which", "will", "with", "your",
})  # fmt: skip
# Shorter name parts ("get", "set", "add") are verbs or abbreviations that match too much.
_MIN_NAME_PART = 4

_VOCABULARY = (
    "amber", "breeze", "candle", "delta", "ember", "falcon", "garden", "harbor", "island",
    "jasmine", "kettle", "lantern", "meadow", "nectar", "orbit", "pebble", "quartz", "river",
    "saffron", "timber", "umbra", "velvet", "willow", "zephyr", "quietly", "brightly",
    "slowly", "drifts", "glows", "hums", "sings", "wanders", "over", "under", "beside", "beyond",
)  # fmt: skip

# Below this size a range is sampled without replacement from an explicit list; above it by
# rejection, which stays cheap because such ranges are never close to exhausted in practice.
_SMALL_RANGE = 4096
# Sentences carry one number token from this range so that two texts never coincide.
_TOKEN_RANGE = (100_000, 999_999_999)
# Recursive ``$ref`` schemas would otherwise generate forever: past half this depth arrays
# shrink to their minimum length and optional values become null, so recursion bottoms out
# with a value that is still valid.
_MAX_SCHEMA_DEPTH = 12


@dataclass
class LoggedRequest:
    """One HTTP request received by a :class:`SamplingServer`.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: Request path without the query string, e.g. ``"/v1/chat/completions"``.
        body: Parsed JSON body (``{}`` if the body was empty or not a JSON object).
        headers: Request headers with lower-cased names; credentials (``authorization``,
            ``api-key``, ...) are replaced by ``"***"``.
        status: HTTP status the server answered. ``0`` while the request is still being
            processed, or if no answer was ever sent (an injected ``"timeout"`` fault whose
            client went away, or a server stopped mid-request).
        finished: Whether the last byte of the answer has been sent (for a stream, after
            its final event): a client that already holds part of a stream whose request
            is not finished got that part live.
    """

    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    finished: bool = False


@dataclass(frozen=True)
class _Fault:
    kind: str
    status: int
    retry_after: float | None
    hang: float
    echo: bool = False


@dataclass
class _Choice:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str


@dataclass
class _PromptValues:
    """Values the prompt spells out, which generated arguments use before random ones.

    A model asked for "magic_function(3)" passes 3, and one asked to "create a customer
    named 'Ada'" passes "Ada"; each value is used once, in prompt order.
    """

    ints: list[int]
    strings: list[str]

    @classmethod
    def of(cls, text: str, exclude: tuple[str, ...] = ()) -> _PromptValues:
        # Quoted tool names ("call 'get_weather' for 'Paris'") name the call, not a value.
        skip = {e.casefold() for e in exclude}
        strings = [p for p in _quoted_phrases(text) if p.casefold() not in skip]
        return cls([int(i) for i in _INT_RE.findall(text)], strings)


class _RequestError(Exception):
    """A client error reported to the caller as an OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.code = code
        self.param = param

    def payload(self) -> dict[str, Any]:
        return _error_payload(self.message, self.error_type, self.code, self.param)


def _error_payload(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _error_kind(status: int) -> tuple[str, str | None]:
    """Maps a status to the ``type``/``code`` pair OpenAI uses, so SDKs classify it right."""
    known: dict[int, tuple[str, str | None]] = {
        400: ("invalid_request_error", None),
        401: ("authentication_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("not_found_error", "model_not_found"),
        408: ("timeout_error", None),
        409: ("conflict_error", None),
        422: ("invalid_request_error", None),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        503: ("server_error", "overloaded"),
        504: ("timeout_error", None),
    }
    if status in known:
        return known[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


# ---------------------------------------------------------------------------------------
# Request helpers (pure functions of the request body)
# ---------------------------------------------------------------------------------------


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _prompt_tokens(messages: list[Any]) -> int:
    words = sum(
        len(content_text(m.get("content")).split()) for m in messages if isinstance(m, dict)
    )
    return max(1, words)


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass; ``"n": true`` is a client bug, not a count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _RequestError(f"'{key}' must be a positive integer", param=key)
    return value


def _stop_sequences(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _RequestError("'stop' must be a string or a list of strings", param="stop")
    return [s for s in stop if s]


def _apply_stop_and_limit(text: str, stops: list[str], max_tokens: int | None) -> tuple[str, str]:
    """Cuts ``text`` like a model would: at the first stop sequence, then at the token limit."""
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    if positions:
        text = text[: min(positions)]
    if max_tokens is not None:
        tokens = text.split()
        if len(tokens) > max_tokens:
            # Only a real truncation is a "length" finish; a short answer stops naturally.
            return " ".join(tokens[:max_tokens]), "length"
    return text, "stop"


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            found.append(function)
    return found


def _mentioned_function(functions: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    # Longest name first, so "magic_function_no_args" is not mistaken for "magic_function".
    for function in sorted(functions, key=lambda f: len(f["name"]), reverse=True):
        if re.search(rf"(?<![\w-]){re.escape(function['name'])}(?![\w-])", text, re.IGNORECASE):
            return function
    return None


def _name_words(name: str) -> set[str]:
    """Meaningful words of a tool name: ``"getWeather_forecast"`` → weather, forecast."""
    words = {part.lower() for part in _NAME_PART_RE.findall(name)}
    return {w for w in words if len(w) >= _MIN_NAME_PART and w not in _STOP_WORDS}


def _topical_function(functions: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    """The tool whose name shares the most meaningful words with ``text`` (first on ties).

    A model calls ``get_weather`` for "What is the weather in Paris?" although the message
    never spells the tool's name; a plural ("customers") still counts as the word.
    """
    best, best_score = None, 0
    for function in functions:
        score = sum(
            1
            for word in _name_words(function["name"])
            if re.search(rf"(?<!\w){re.escape(word)}s?(?!\w)", text, re.IGNORECASE)
        )
        if score > best_score:
            best, best_score = function, score
    return best


def _quoted_phrases(text: str) -> list[str]:
    """Quoted phrases of ``text`` in order: ``"named 'Ada' in 'Paris'"`` → Ada, Paris."""
    phrases = []
    for match in _QUOTED_RE.finditer(text):
        phrase = next(group for group in match.groups() if group is not None).strip()
        if phrase:
            phrases.append(phrase)
    return phrases


def _named_keys(text: str) -> list[str]:
    """Names that ``text`` asks to be JSON keys, in order and without repeats.

    ``"Return JSON with 'setup' and 'punchline' keys"`` → setup, punchline. Only quoted or
    backticked identifiers next to a key word count, so that a quoted value elsewhere in the
    prompt ("a joke about 'cats'") is not mistaken for a key.
    """
    names: list[tuple[int, int, str]] = []
    for match in _QUOTED_RE.finditer(text):
        phrase = next(group for group in match.groups() if group is not None)
        if _IDENTIFIER_RE.fullmatch(phrase):
            names.append((match.start(), match.end(), phrase))
    # Consecutive names joined only by separators form one list: "'a', 'b' and 'c' keys".
    groups: list[list[tuple[int, int, str]]] = []
    for name in names:
        if groups and _NAME_SEPARATOR_RE.fullmatch(text, groups[-1][-1][1], name[0]):
            groups[-1].append(name)
        else:
            groups.append([name])
    keys: list[str] = []
    for group in groups:
        before, after = text[: group[0][0]], text[group[-1][1] :]
        if _KEY_WORD_BEFORE_RE.search(before) or _KEY_WORD_AFTER_RE.search(after):
            keys.extend(name for _, _, name in group if name not in keys)
    return keys


def _conversation_keys(messages: list[Any]) -> list[str]:
    """JSON keys named by the latest user or system message that names any."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") in ("user", "system", "developer"):
            keys = _named_keys(content_text(message.get("content")))
            if keys:
                return keys
    return []


def _dumps(value: Any) -> str:
    # Real models emit non-ASCII text as is ("你好", not "\u4f60\u597d"), so clients must be
    # tested against raw UTF-8 inside JSON strings, tool arguments included.
    return json.dumps(value, ensure_ascii=False)


def _encode(text: str) -> bytes:
    # A lone surrogate (which json.loads accepts from "\ud800") cannot be UTF-8 encoded;
    # it can only sit inside a JSON string, where "\ud800" is the valid escape for it.
    return text.encode("utf-8", "backslashreplace")


def _select_function(body: dict[str, Any], last_user: str) -> dict[str, Any] | None:
    """Decides whether the answer is a tool call, and to which function."""
    functions = _functions(body)
    messages = body["messages"]
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    # After a tool result a model summarises it instead of calling tools in a loop.
    if not functions or last.get("role") in ("tool", "function"):
        return None
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    if choice == "none":
        return None
    if isinstance(choice, dict):
        inner = choice.get("function")
        name = inner.get("name") if isinstance(inner, dict) else choice.get("name")
        for function in functions:
            if function["name"] == name:
                return function
        raise _RequestError(
            f"tool_choice names function {name!r}, which is not among 'tools'",
            param="tool_choice",
        )
    mentioned = _mentioned_function(functions, last_user) or _topical_function(functions, last_user)
    if choice in ("required", "any"):
        return mentioned or functions[0]
    if isinstance(choice, str) and choice != "auto":
        for function in functions:
            if function["name"] == choice:
                return function
    if mentioned is not None:
        return mentioned
    if len(functions) == 1 and _TOOL_HINT_RE.search(last_user):
        return functions[0]
    return None


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for raw in ref.lstrip("#").strip("/").split("/"):
        if not raw:
            continue
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return {}
        node = node[key]
    return node


# ---------------------------------------------------------------------------------------
# Sampling (not thread-safe on its own: SamplingServer calls it under its lock)
# ---------------------------------------------------------------------------------------


class _Sampler:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        # Values already handed out per range. Sampling without replacement makes "every
        # sample differs" hold deterministically (until a range is exhausted), so tests that
        # check a cache returned *fresh* samples cannot flake on a birthday collision.
        self._used: dict[tuple[int, int], set[int]] = {}

    def hex(self, bits: int = 96) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def unique_int(self, low: int, high: int) -> int:
        if low > high:
            low, high = high, low
        used = self._used.setdefault((low, high), set())
        size = high - low + 1
        if len(used) >= size:
            used.clear()
        if size <= _SMALL_RANGE:
            value = self.rng.choice([v for v in range(low, high + 1) if v not in used])
        else:
            value = self.rng.randint(low, high)
            while value in used:
                value = self.rng.randint(low, high)
        used.add(value)
        return value

    def words(self, count: int) -> str:
        return " ".join(self.rng.choice(_VOCABULARY) for _ in range(count))

    def sentence(self) -> str:
        # The number token comes first so that even a 1-token truncation stays unique.
        token = self.unique_int(*_TOKEN_RANGE)
        return f"{token} {self.words(self.rng.randint(4, 12))}"

    def answer(self, last_user: str) -> str:
        match = _RANGE_RE.search(last_user)
        if match:
            return str(self.unique_int(int(match.group(1)), int(match.group(2))))
        return self.sentence()

    # -- JSON schema ------------------------------------------------------------------

    def value(self, schema: Any, root: Any, given: _PromptValues, depth: int = 0) -> Any:
        """Generates a value that satisfies (the commonly used subset of) a JSON schema."""
        if depth > _MAX_SCHEMA_DEPTH:
            return None
        if schema is True or not isinstance(schema, dict):
            return self.words(2)
        if isinstance(schema.get("$ref"), str):
            return self.value(_resolve_ref(root, schema["$ref"]), root, given, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                # The first non-null option: Optional[X] should produce an X (unless deep in
                # a recursive schema, where null is what ends the recursion).
                nullable = any(_is_null_schema(o) for o in options)
                if nullable and depth >= _MAX_SCHEMA_DEPTH // 2:
                    return None
                pick = next((o for o in options if not _is_null_schema(o)), options[0])
                return self.value(pick, root, given, depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.value(self._merge(all_of, root), root, given, depth + 1)

        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self._object(schema, root, given, depth)
        if kind == "array":
            return self._array(schema, root, given, depth)
        if kind == "integer":
            return self._integer(schema, given)
        if kind == "number":
            return self._number(schema, given)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, given)

    def _merge(self, parts: list[Any], root: Any) -> dict[str, Any]:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("$ref"), str):
                part = _resolve_ref(root, part["$ref"])
            if not isinstance(part, dict):
                continue
            if "properties" not in part and "type" in part and part["type"] != "object":
                return part  # allOf of a scalar schema: the parts only add constraints.
            merged["properties"].update(part.get("properties") or {})
            merged["required"].extend(part.get("required") or [])
        return merged

    def _object(self, schema: dict[str, Any], root: Any, given: _PromptValues, depth: int) -> Any:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        # All properties, required ones first, so user-given integers land on required fields.
        required = [k for k in schema.get("required") or [] if k in properties]
        order = required + [k for k in properties if k not in required]
        return {key: self.value(properties[key], root, given, depth + 1) for key in order}

    def _array(self, schema: dict[str, Any], root: Any, given: _PromptValues, depth: int) -> Any:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return [self.value(item, root, given, depth + 1) for item in prefix]
        max_items = int(schema.get("maxItems", 3))
        low = int(schema.get("minItems", min(1, max_items)))
        high = max(low, min(max_items, 3))
        if depth >= _MAX_SCHEMA_DEPTH // 2:
            low = high = int(schema.get("minItems", 0))
        items = schema.get("items", {})
        return [
            self.value(items, root, given, depth + 1) for _ in range(self.rng.randint(low, high))
        ]

    @staticmethod
    def _bounds(schema: dict[str, Any], step: int) -> tuple[float | None, float | None]:
        low = schema.get("minimum")
        high = schema.get("maximum")
        if isinstance(schema.get("exclusiveMinimum"), int | float):
            low = schema["exclusiveMinimum"] + step
        if isinstance(schema.get("exclusiveMaximum"), int | float):
            high = schema["exclusiveMaximum"] - step
        return low, high

    def _take_int(self, given: _PromptValues, low: float | None, high: float | None) -> int | None:
        # Numbers from the prompt go first ("magic_function(3)" must be called with 3).
        while given.ints:
            candidate = given.ints.pop(0)
            if (low is None or candidate >= low) and (high is None or candidate <= high):
                return candidate
        return None

    @staticmethod
    def _span(low: float | None, high: float | None, kind: Callable[[float], _N]) -> tuple[_N, _N]:
        """Where to draw a number the prompt did not give: its bounds, open ends 100 apart."""
        lo = kind(low) if low is not None else min(kind(0), kind(0 if high is None else high))
        hi = kind(high) if high is not None else lo + 100
        return lo, max(lo, hi)

    def _integer(self, schema: dict[str, Any], given: _PromptValues) -> int:
        low, high = self._bounds(schema, 1)
        taken = self._take_int(given, low, high)
        return taken if taken is not None else self.rng.randint(*self._span(low, high, int))

    def _number(self, schema: dict[str, Any], given: _PromptValues) -> float | int:
        low, high = self._bounds(schema, 0)
        taken = self._take_int(given, low, high)
        if taken is not None:
            return taken
        return round(self.rng.uniform(*self._span(low, high, float)), 3)

    @staticmethod
    def _take_string(schema: dict[str, Any], given: _PromptValues) -> str | None:
        # Phrases from the prompt go first ("a customer named 'Ada'" is created as "Ada"), but
        # only for free text: a phrase is no date, email or pattern match. Unlike numbers, a
        # phrase that does not fit stays available for a later property.
        if "format" in schema or "pattern" in schema:
            return None
        low, high = schema.get("minLength"), schema.get("maxLength")
        for index, phrase in enumerate(given.strings):
            if (not isinstance(low, int) or len(phrase) >= low) and (
                not isinstance(high, int) or len(phrase) <= high
            ):
                return given.strings.pop(index)
        return None

    def _string(self, schema: dict[str, Any], given: _PromptValues) -> str:
        taken = self._take_string(schema, given)
        if taken is not None:
            return taken
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
            day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            text = f"{day}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "email":
            text = f"{rng.choice(_VOCABULARY)}{rng.randint(1, 9999)}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{rng.choice(_VOCABULARY)}/{rng.randint(1, 9999)}"
        elif fmt == "uuid":
            h = self.hex(128)
            text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        else:
            text = f"{self.words(rng.randint(1, 3))} {rng.randint(1, 99999)}"
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(text) < min_length:
            text = text + "x" * (min_length - len(text))
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(text) > max_length:
            text = text[:max_length]
        return text

    # -- Choices ----------------------------------------------------------------------

    def tool_call(self, function: dict[str, Any], last_user: str) -> dict[str, Any]:
        parameters = function.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {"type": "object", "properties": {}}
        given = _PromptValues.of(last_user, exclude=(function["name"],))
        arguments = self.value(parameters, parameters, given)
        if not isinstance(arguments, dict):
            arguments = {}
        return {
            "id": f"call_{self.hex(96)}",
            "type": "function",
            "function": {"name": function["name"], "arguments": _dumps(arguments)},
        }

    def choice(
        self,
        body: dict[str, Any],
        function: dict[str, Any] | None,
        stops: list[str],
        max_tokens: int | None,
    ) -> _Choice:
        messages = body["messages"]
        last_user = _last_user_text(messages)
        if function is not None:
            return _Choice(None, [self.tool_call(function, last_user)], "tool_calls")
        response_format = body.get("response_format")
        format_type = response_format.get("type") if isinstance(response_format, dict) else None
        # Structured answers are never truncated: callers of JSON mode expect parseable JSON.
        if format_type == "json_object":
            # JSON mode has no schema: a model follows the keys the prompt asks for.
            keys = _conversation_keys(messages)
            if keys:
                return _Choice(_dumps({key: self.sentence() for key in keys}), None, "stop")
        if format_type == "json_schema":
            spec = response_format.get("json_schema") if response_format else None
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if isinstance(schema, dict):
                value = self.value(schema, schema, _PromptValues.of(last_user))
                return _Choice(_dumps(value), None, "stop")

        last = messages[-1] if isinstance(messages[-1], dict) else {}
        if last.get("role") in ("tool", "function"):
            result = content_text(last.get("content"))[:200]
            text = f"The tool returned {result}. {self.sentence()}"
        else:
            text = self.answer(last_user)
        if format_type in ("json_object", "json_schema"):
            return _Choice(_dumps({"answer": text}), None, "stop")

        text, finish_reason = _apply_stop_and_limit(text, stops, max_tokens)
        return _Choice(text, None, finish_reason)


def _completion_tokens(choice: _Choice) -> int:
    if choice.tool_calls:
        text = " ".join(c["function"]["arguments"] for c in choice.tool_calls)
    else:
        text = choice.content or ""
    return max(1, len(text.split()))


def _stream_deltas(choice: _Choice) -> list[dict[str, Any]]:
    """The ``delta`` objects of one choice, in the order OpenAI streams them."""
    if choice.tool_calls:
        deltas: list[dict[str, Any]] = []
        for index, call in enumerate(choice.tool_calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [head]}
            if index == 0:
                delta = {"role": "assistant", "content": None, **delta}
            deltas.append(delta)
            deltas.extend(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in stream_pieces(call["function"]["arguments"])
            )
        return deltas
    return [
        {"role": "assistant", "content": ""},
        *({"content": piece} for piece in stream_pieces(choice.content or "")),
    ]


# ---------------------------------------------------------------------------------------
# Anthropic Messages API
# ---------------------------------------------------------------------------------------
#
def _function_tool(tool: dict[str, Any], schema: str) -> dict[str, Any]:
    """A chat-completions function tool from another API's tool, whose ``schema`` field
    holds the parameters (``input_schema`` for Anthropic, ``parameters`` for Responses)."""
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool.get("description", ""),
            "parameters": tool.get(schema) or {},
        },
    }


# ``POST /v1/messages`` answers what the chat-completions endpoint would answer to the same
# conversation, in Anthropic's format, so that a non-OpenAI client is tested for real.

_ANTHROPIC_PATHS = frozenset({"/v1/messages", "/messages"})
_ANTHROPIC_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ANTHROPIC_TOOL_CHOICES = {"any": "required", "auto": "auto", "none": "none"}


def _anthropic_text(content: Any) -> str:
    """The text of an Anthropic content field: a string or a list of blocks."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            parts.append(_anthropic_text(block.get("content")))
    return " ".join(parts)


def _chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as the chat-completions request the sampler answers."""
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _anthropic_text(body["system"])})
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        messages.extend(
            {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _anthropic_text(b)}
            for b in results
        )
        if not results:
            messages.append(
                {"role": message.get("role", "user"), "content": _anthropic_text(content)}
            )
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body.get("max_tokens"),
        "stop": body.get("stop_sequences"),
        "tools": [
            _function_tool(tool, "input_schema")
            for tool in body.get("tools") or []
            if isinstance(tool, dict) and tool.get("name")
        ],
    }
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, dict):
        chat["tool_choice"] = _ANTHROPIC_TOOL_CHOICES.get(str(choice.get("type")), "auto")
    return {key: value for key, value in chat.items() if value}


def _anthropic_message(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's first choice as an Anthropic message."""
    choice = completion["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call["id"].removeprefix("call_"),
                "name": call["function"]["name"],
                "input": json.loads(call["function"]["arguments"]),
            }
        )
    return {
        "id": "msg_" + completion["id"].removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": _ANTHROPIC_STOP_REASONS.get(choice["finish_reason"], "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": completion["usage"]["prompt_tokens"],
            "output_tokens": completion["usage"]["completion_tokens"],
        },
    }


def _anthropic_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), _encode(_dumps({"type": kind, **data})))


def _anthropic_events(message: dict[str, Any]) -> list[Any]:
    """The Server-Sent Events of a streamed Anthropic message, in the order Anthropic sends."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    events = [_anthropic_event("message_start", {"message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            head, field, kind, text = {**block, "text": ""}, "text", "text_delta", block["text"]
        else:
            head, field, kind, text = (
                {**block, "input": {}},
                "partial_json",
                "input_json_delta",
                _dumps(block["input"]),
            )
        events.append(
            _anthropic_event("content_block_start", {"index": index, "content_block": head})
        )
        events.extend(
            _anthropic_event(
                "content_block_delta", {"index": index, "delta": {"type": kind, field: piece}}
            )
            for piece in stream_pieces(text)
        )
        events.append(_anthropic_event("content_block_stop", {"index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(
        _anthropic_event(
            "message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}
        )
    )
    events.append(_anthropic_event("message_stop", {}))
    return events


# ---------------------------------------------------------------------------------------
# OpenAI Responses API
# ---------------------------------------------------------------------------------------
#
# ``POST /v1/responses`` answers what the chat-completions endpoint would answer to the same
# conversation, in the Responses format: LiteLLM sends ``litellm.responses`` for an
# ``openai/...`` model with an ``api_base`` there natively, not through its chat bridge.

_RESPONSES_PATHS = frozenset({"/v1/responses", "/responses"})


def _responses_input_messages(items: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` (a string or a list of items) as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            content = content_text(item.get("content"))
            messages.append({"role": item.get("role", "user"), "content": content})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _dumps(output)
            call_id = item.get("call_id")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
    return messages


def _responses_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses API request as the chat-completions request the sampler answers."""
    if body.get("input") in (None, "", []):
        raise _RequestError(
            "Missing required parameter: 'input'.",
            code="missing_required_parameter",
            param="input",
        )
    messages = _responses_input_messages(body.get("input"))
    if body.get("instructions"):
        messages.insert(0, {"role": "system", "content": str(body["instructions"])})
    chat: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body.get("max_output_tokens"),
        "tools": [
            _function_tool(tool, "parameters")
            for tool in body.get("tools") or []
            if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name")
        ],
    }
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, str):
        chat["tool_choice"] = choice
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": text_format}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    return {key: value for key, value in chat.items() if value}


def _responses_object(completion: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's first choice as a Responses API response to ``body``."""
    # Ids follow the completion's and its tool calls', as distinct as they are.
    hex_id = completion["id"].removeprefix("chatcmpl-")
    choice = completion["choices"][0]
    message = choice["message"]
    output: list[dict[str, Any]] = []
    if message.get("content"):
        part = {"type": "output_text", "text": message["content"], "annotations": []}
        output.append(
            {
                "type": "message",
                "id": f"msg_{hex_id}",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    for call in message.get("tool_calls") or []:
        output.append(
            {
                "type": "function_call",
                "id": "fc_" + call["id"].removeprefix("call_"),
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    truncated = choice["finish_reason"] == "length"
    usage = completion["usage"]
    return {
        "id": f"resp_{hex_id}",
        "object": "response",
        "created_at": completion["created"],
        "status": "incomplete" if truncated else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": completion["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _responses_events(response: dict[str, Any]) -> list[Any]:
    """The Server-Sent Events of a streamed Responses API answer, in the order OpenAI sends."""
    events: list[dict[str, Any]] = []

    def add(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=opening)
    add("response.in_progress", response=opening)
    for index, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            add("response.output_item.added", output_index=index, item={**item, "content": []})
            part = item["content"][0]
            add("response.content_part.added", **where, content_index=0, part={**part, "text": ""})
            for piece in stream_pieces(part["text"]):
                add("response.output_text.delta", **where, content_index=0, delta=piece)
            add("response.output_text.done", **where, content_index=0, text=part["text"])
            add("response.content_part.done", **where, content_index=0, part=part)
        else:
            add("response.output_item.added", output_index=index, item={**item, "arguments": ""})
            for piece in stream_pieces(item["arguments"]):
                add("response.function_call_arguments.delta", **where, delta=piece)
            add("response.function_call_arguments.done", **where, arguments=item["arguments"])
        add("response.output_item.done", output_index=index, item=item)
    done = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    add(done, response=response)
    return [
        b"event: %s\ndata: %s\n\n" % (event["type"].encode(), _encode(_dumps(event)))
        for event in events
    ]


# ---------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Hanging "timeout" handlers must not make stop() wait for them.
    block_on_close = False
    allow_reuse_address = True
    # Refills arrive in bursts of concurrent connections; the default backlog of 5 would
    # make the kernel drop SYNs and clients stall for a second on the retry.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: SamplingServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise keep being served after stop().
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError) or self.stopping.is_set():
            return  # A client hanging up is normal life for a test server, not a traceback.
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately; with Nagle's algorithm and the
    # client's delayed ACK every keep-alive reply would stall about 40 ms.
    disable_nagle_algorithm = True
    server_version = "mnimi-sampling-server/1"
    sys_version = ""

    @property
    def _http(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Silences the per-request access log on stderr."""

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- Dispatch ---------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        if len(path) > 1:
            path = path.rstrip("/")
        raw = self._read_body()
        body = self._parse(raw)
        entry = LoggedRequest(
            method=method,
            path=path,
            body=body if isinstance(body, dict) else {},
            headers={
                name.lower(): "***" if name.lower() in _REDACTED_HEADERS else value
                for name, value in self.headers.items()
            },
            status=0,
        )
        owner = self._http.owner
        owner._log(entry)
        if method == "POST" and path in _CHAT_PATHS:
            self._chat(entry, body)
        elif method == "POST" and path in _ANTHROPIC_PATHS:
            self._messages(entry, body)
        elif method == "POST" and path in _RESPONSES_PATHS:
            self._responses(entry, body)
        elif method == "GET" and path in _MODEL_PATHS:
            self._send_json(entry, 200, owner._models_payload())
        else:
            message = f"Unknown endpoint: {method} {path}"
            self._send_json(entry, 404, _error_payload(message, "not_found_error", "not_found"))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # Trailers: nothing we need from them.
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _parse(raw: bytes) -> Any:
        try:
            return json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            return None

    def _chat(self, entry: LoggedRequest, body: Any) -> None:
        owner = self._http.owner
        fault = owner._pop_fault()
        stream = isinstance(body, dict) and body.get("stream") is True
        if not self._wait(owner.latency):
            return
        if fault is not None and fault.kind == "slow":
            if not self._hold(fault.hang):
                return
        elif fault is not None:
            self._send_fault(entry, fault, stream)
            return
        try:
            if not isinstance(body, dict):
                raise _RequestError("We could not parse the JSON body of your request.")
            result = owner._complete(body)
        except _RequestError as error:
            self._send_json(entry, error.status, error.payload())
            return
        except Exception as error:  # A bug here must reach the test as a 500, not hang it.
            payload = _error_payload(f"mock server error: {error!r}", "server_error")
            self._send_json(entry, 500, payload)
            return
        if isinstance(result, list):
            self._send_events(entry, result)
        else:
            self._send_json(entry, 200, result)

    def _messages(self, entry: LoggedRequest, body: Any) -> None:
        """Anthropic's Messages API: the chat answer to the same conversation, streamed too."""
        self._translated(
            entry, body, _chat_body, lambda chat, _: _anthropic_message(chat), _anthropic_events
        )

    def _responses(self, entry: LoggedRequest, body: Any) -> None:
        """OpenAI's Responses API: the chat answer to the same conversation, streamed too."""
        self._translated(entry, body, _responses_chat_body, _responses_object, _responses_events)

    def _translated(
        self,
        entry: LoggedRequest,
        body: Any,
        to_chat: Callable[[dict[str, Any]], dict[str, Any]],
        to_answer: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
        to_events: Callable[[dict[str, Any]], list[Any]],
    ) -> None:
        """Another API's endpoint: its request as a chat request, the chat answer in its shape.

        Args:
            entry: The logged request.
            body: The request's JSON body.
            to_chat: The body as a chat-completions request (raises ``_RequestError``).
            to_answer: The chat completion and the body as the API's answer.
            to_events: The answer as the API's stream events.
        """
        owner = self._http.owner
        if not self._wait(owner.latency):
            return
        try:
            if not isinstance(body, dict):
                raise _RequestError("We could not parse the JSON body of your request.")
            completion = owner._complete({**to_chat(body), "stream": False})
        except _RequestError as error:
            self._send_json(entry, error.status, error.payload())
            return
        answer = to_answer(cast(dict[str, Any], completion), body)
        if body.get("stream") is True:
            self._send_events(entry, to_events(answer))
        else:
            self._send_json(entry, 200, answer)

    def _send_fault(self, entry: LoggedRequest, fault: _Fault, stream: bool) -> None:
        if fault.kind == "status":
            error_type, code = _error_kind(fault.status)
            message = f"Injected fault: HTTP {fault.status}"
            if fault.echo:
                message += f"; request headers: {dict(self.headers.items())}"
            payload = _error_payload(message, error_type, code)
            headers = {}
            if fault.retry_after is not None:
                seconds = fault.retry_after
                headers["Retry-After"] = (
                    str(int(seconds)) if seconds == int(seconds) else str(seconds)
                )
                # The OpenAI SDK reads this one first, and it keeps sub-second precision.
                headers["retry-after-ms"] = str(int(seconds * 1000))
            self._send_json(entry, fault.status, payload, headers)
        elif fault.kind == "timeout":
            if self._hold(fault.hang):
                payload = _error_payload("Injected fault: timeout", "timeout_error")
                self._send_json(entry, 504, payload)
        elif fault.kind == "malformed":
            if stream:
                self._send_events(entry, [b'data: {"id": "chatcmpl-broken", "choices": [\n\n'])
            else:
                body = b'{"id": "chatcmpl-broken", "choices": [ this is not JSON'
                self._send_bytes(entry, 200, body, "application/json")
        else:  # "empty"
            payload = self._http.owner._empty_payload(chunk=stream)
            if stream:
                self._send_events(entry, [payload, None])
            else:
                self._send_json(entry, 200, payload)

    # -- Waiting ----------------------------------------------------------------------

    def _wait(self, seconds: float) -> bool:
        """Sleeps; returns False (and drops the connection) if the server stops meanwhile."""
        stopping = self._http.stopping
        if seconds > 0:
            stopping.wait(seconds)
        if stopping.is_set():
            self.close_connection = True
            return False
        return True

    def _hold(self, seconds: float) -> bool:
        """Holds the connection open; returns True if the client is still there afterwards."""
        deadline = time.monotonic() + seconds
        stopping = self._http.stopping
        # Not select.select: it refuses a descriptor past 1023, which a test process
        # holding many connections and stores reaches.
        with selectors.DefaultSelector() as watch:
            watch.register(self.connection, selectors.EVENT_READ)
            while not stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                # A readable socket with nothing to read means the client gave up: stop
                # hanging so a timed-out test leaves no thread behind.
                if watch.select(min(remaining, 0.05)):
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            break
                    except OSError:
                        break
                    stopping.wait(min(remaining, 0.05))  # Pipelined data: keep holding.
        self.close_connection = True
        return False

    # -- Writing ----------------------------------------------------------------------

    def _send_json(
        self,
        entry: LoggedRequest,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send_bytes(entry, status, _encode(_dumps(payload)), "application/json", headers)

    def _send_bytes(
        self,
        entry: LoggedRequest,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Logged before the first byte leaves, so a client that has its answer sees the entry.
        entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        entry.finished = True

    def _send_events(self, entry: LoggedRequest, events: list[Any]) -> None:
        """Streams Server-Sent Events; ``None`` stands for ``[DONE]``, bytes are sent raw."""
        entry.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # Chunked encoding delimits the stream, so the connection can be reused afterwards.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for position, event in enumerate(events):
            if position and not self._wait(self._http.owner.chunk_delay):
                return
            if event is None:
                data = b"data: [DONE]\n\n"
            elif isinstance(event, bytes):
                data = event
            else:
                data = b"data: " + _encode(_dumps(event)) + b"\n\n"
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        entry.finished = True


# ---------------------------------------------------------------------------------------
# Public server
# ---------------------------------------------------------------------------------------


class SamplingServer:
    """An OpenAI-compatible HTTP server that answers chat completions with random samples.

    Texts are drawn from a server-wide ``random.Random(seed)`` in request order, so a run is
    reproducible when requests arrive in the same order, while every choice of every request
    differs from all others (numbers are drawn without replacement within each range, and
    sentences carry a unique number token).

    Behaviour, decided by the last user message and the request parameters:

    * ``"... between 1 and 1000 ..."`` → a random integer in the range as the whole text;
      anything else → a short random sentence.
    * ``n``, ``max_tokens``/``max_completion_tokens`` (finish reason ``"length"`` when the
      text was cut), ``stop``, ``tools``/``tool_choice``, ``response_format`` (``json_object``
      and ``json_schema``), ``stream`` and ``stream_options.include_usage`` are honoured.
    * With ``tool_choice`` ``"auto"`` (or absent) a tool is called when the message names
      it, shares a meaningful word with its name ("weather" → ``get_weather``), or, if it
      is the only tool, asks to use a tool; after a tool result the answer is text.
    * Tool arguments (and ``json_schema`` values) use the message's integers and quoted
      phrases first: "create 'Ada', age 36" → ``{"name": "Ada", "age": 36}``.
    * ``json_object`` answers use the keys the conversation names ("a JSON with 'setup'
      and 'punchline' keys"), else ``{"answer": ...}``.
    * JSON is sent with non-ASCII characters unescaped, as real models send it.
    * ``POST /v1/responses`` (OpenAI's Responses API, streamed too) answers what the chat
      endpoint would answer to the same ``instructions`` and ``input``, as one output
      message or function call; ``max_output_tokens``, ``tools``/``tool_choice`` and
      ``text.format`` are honoured.
    * Faults can be injected with :meth:`fail_next` (for chat requests); every request is
      logged in :attr:`requests`.

    Args:
        seed: Seed of the server-wide random generator.
        latency: Seconds to sleep before answering each chat request (before the first byte
            when streaming). Can be changed at any time through :attr:`latency`.
        host: Interface to bind.
        port: Port to bind; ``0`` picks a free one.
        max_n: If set, requests with ``n`` above it are rejected with HTTP 400, like
            providers that do not support several choices.
        json_answers: Answer every request without a ``response_format`` as if it asked
            for ``json_object`` (a JSON object with the keys the conversation names), like
            a model following a prompt that asks for JSON (DSPy's ``JSONAdapter``).
        chunk_delay: Seconds to wait between the events of a streamed answer, so that a
            client can see its first chunk while the server is still sending.

    Example:
        >>> with SamplingServer(seed=1) as server:  # doctest: +SKIP
        ...     print(server.url)
        http://127.0.0.1:54321/v1
    """

    def __init__(
        self,
        seed: int = 0,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        max_n: int | None = None,
        json_answers: bool = False,
        chunk_delay: float = 0.0,
    ) -> None:
        self.seed = seed
        self.latency = latency
        self.host = host
        self.port = port
        self.max_n = max_n
        self.json_answers = json_answers
        self.chunk_delay = chunk_delay
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._sampler = _Sampler(seed)
        self._faults: deque[_Fault] = deque()
        self._models: dict[str, None] = {_DEFAULT_MODEL: None}  # Insertion-ordered set.
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- Lifecycle --------------------------------------------------------------------

    def start(self) -> SamplingServer:
        """Starts serving in a daemon thread; does nothing if already running.

        Returns:
            The server itself, for chaining (``server = SamplingServer().start()``).
        """
        with self._state_lock:
            if self._httpd is not None:
                return self
            httpd = _HTTPServer((self.host, self.port), self)
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},  # stop() returns within ~50 ms.
                name=f"mnimi-sampling-server:{httpd.server_address[1]}",
                daemon=True,
            )
            self._httpd, self._thread = httpd, thread
            thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and drops open connections; hanging faults are released."""
        with self._state_lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SamplingServer:
        """Starts the server (see :meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stops the server (see :meth:`stop`)."""
        self.stop()

    @property
    def root_url(self) -> str:
        """Base address without the API prefix, e.g. ``"http://127.0.0.1:8000"``.

        Raises:
            RuntimeError: If the server is not running.
        """
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError("SamplingServer is not running; call start() first")
        host, port = httpd.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"  # A wildcard bind is reachable on loopback.
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """OpenAI base URL (``api_base``/``base_url``), e.g. ``"http://127.0.0.1:8000/v1"``.

        Raises:
            RuntimeError: If the server is not running.
        """
        return f"{self.root_url}/v1"

    # -- Inspection and faults --------------------------------------------------------

    def chat_requests(self) -> list[LoggedRequest]:
        """Returns the logged requests to a chat-completions endpoint, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path in _CHAT_PATHS]

    def reset(self) -> None:
        """Clears the request log and the pending faults.

        The random generator and the memory of values already handed out are kept, so
        samples drawn after a reset still differ from those drawn before it.
        """
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    def fail_next(
        self,
        status: int = 500,
        count: int = 1,
        *,
        retry_after: float | None = None,
        kind: str = "status",
        hang: float = 30.0,
        echo: bool = False,
    ) -> None:
        """Queues faults for the next ``count`` chat requests.

        Args:
            status: HTTP status for ``kind="status"``; the body is an OpenAI-style error.
            count: Number of consecutive chat requests that fail.
            retry_after: Seconds to advertise in ``Retry-After`` (and ``retry-after-ms``).
            kind: ``"status"`` (error status), ``"timeout"`` (hold the connection for
                ``hang`` seconds, then answer 504 if the client is still there), ``"slow"``
                (hold it ``hang`` seconds, then answer as usual: a provider slower than
                the client's patience),
                ``"malformed"`` (200 with a body that is not JSON) or ``"empty"`` (200 with
                ``"choices": []``).
            hang: How long a ``"timeout"`` or ``"slow"`` fault holds the connection. It ends
                early when the client disconnects or the server stops.
            echo: For ``kind="status"``: the error message repeats every request header,
                credentials included, as some gateways do when they refuse a request.

        Raises:
            ValueError: If ``kind`` is unknown, ``count`` is negative or ``status`` is not an
                error status.
        """
        if kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_FAULT_KINDS)}")
        if count < 0:
            raise ValueError("count must be >= 0")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        fault = _Fault(kind, status, retry_after, hang, echo)
        with self._lock:
            self._faults.extend([fault] * count)

    # -- Internals used by the handler ------------------------------------------------

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _pop_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _models_payload(self) -> dict[str, Any]:
        with self._lock:
            names = list(self._models)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "mnimi"} for n in names]
        return {"object": "list", "data": data}

    def _empty_payload(self, chunk: bool) -> dict[str, Any]:
        with self._lock:
            identifier = f"chatcmpl-{self._sampler.hex()}"
        return {
            "id": identifier,
            "object": "chat.completion.chunk" if chunk else "chat.completion",
            "created": int(time.time()),
            "model": _DEFAULT_MODEL,
            "choices": [],
            "usage": None
            if chunk
            else {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
            "system_fingerprint": _FINGERPRINT,
        }

    def _complete(self, body: dict[str, Any]) -> dict[str, Any] | list[Any]:
        """Builds a completion (a dict) or the events of a streamed one (a list)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RequestError(
                "Missing required parameter: 'messages'.",
                code="missing_required_parameter",
                param="messages",
            )
        if self.json_answers and body.get("response_format") is None:
            body = {**body, "response_format": {"type": "json_object"}}
        n = _positive_int(body, "n") or 1
        if self.max_n is not None and n > self.max_n:
            raise _RequestError(f"n must be at most {self.max_n}", param="n")
        model = body.get("model")
        model = model if isinstance(model, str) and model else _DEFAULT_MODEL
        function = _select_function(body, _last_user_text(messages))
        stops = _stop_sequences(body)
        max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(
            body, "max_tokens"
        )
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )

        # One lock span per request: its draws are contiguous in the seeded sequence.
        with self._lock:
            self._models.setdefault(model, None)
            identifier = f"chatcmpl-{self._sampler.hex()}"
            choices = [self._sampler.choice(body, function, stops, max_tokens) for _ in range(n)]

        prompt_tokens = _prompt_tokens(messages)
        completion_tokens = sum(_completion_tokens(c) for c in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        base = {
            "id": identifier,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }
        if body.get("stream") is not True:
            return {
                "id": identifier,
                "object": "chat.completion",
                "created": base["created"],
                "model": model,
                "choices": [
                    {
                        "index": index,
                        "message": {
                            "role": "assistant",
                            "content": choice.content,
                            **({"tool_calls": choice.tool_calls} if choice.tool_calls else {}),
                        },
                        "finish_reason": choice.finish_reason,
                        "logprobs": None,
                    }
                    for index, choice in enumerate(choices)
                ],
                "usage": usage,
                "system_fingerprint": _FINGERPRINT,
            }

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            event = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": index,
                        "delta": delta,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
            }
            if include_usage:
                event["usage"] = None  # As OpenAI does: only the last chunk carries usage.
            return event

        # Choices are interleaved round-robin, as OpenAI does for n > 1.
        sequences = [
            [chunk(i, d, None) for d in _stream_deltas(c)] + [chunk(i, {}, c.finish_reason)]
            for i, c in enumerate(choices)
        ]
        events: list[Any] = []
        for step in range(max(len(s) for s in sequences)):
            events.extend(s[step] for s in sequences if step < len(s))
        if include_usage:
            events.append(
                {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        events.append(None)
        return events


def main(argv: list[str] | None = None) -> None:
    """Runs a :class:`SamplingServer` in the foreground until interrupted (Ctrl-C).

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m mnimi_adapters.testing",
        description="Local OpenAI-compatible server that answers with random samples.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random generator")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--max-n", type=int, default=None, help="reject requests with larger n")
    args = parser.parse_args(argv)
    server = SamplingServer(
        seed=args.seed, latency=args.latency, host=args.host, port=args.port, max_n=args.max_n
    ).start()
    print(f"Serving OpenAI-compatible API at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
