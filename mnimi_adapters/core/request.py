"""Requests and their canonical cache keys.

A request is everything that decides the output distribution: the model
identity, the messages and the sampling parameters. Its key is a versioned
hash of a canonical JSON form, so that kwarg order, ``1`` versus ``1.0`` and
parameters set to ``None`` never split one request into two keys, and so that
nothing that only changes *how* a request is sent (``n``, credentials,
timeouts, retries, metadata) ever reaches the key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

KEY_VERSION = "m1"

#: Parameters that change how a request is sent, not what it samples from.
#: Credentials are here so they can never reach a key or a stored value.
TRANSPORT_PARAMS = frozenset(
    {
        "n",
        "stream",
        "stream_options",
        "api_key",
        "api_base",
        "base_url",
        "api_version",
        "organization",
        "extra_headers",
        "headers",
        "timeout",
        "request_timeout",
        "num_retries",
        "max_retries",
        "metadata",
        "user",
        "caching",
        "cache",
        "no-cache",
        "litellm_logging_obj",
        "litellm_call_id",
        "proxy_server_request",
        "custom_llm_provider",
        "client",
        "callbacks",
    }
)

# Credentials have no fixed names (``aws_secret_access_key``, ``vertex_credentials``,
# ``github_copilot_user_session``, ``X-Api-Key``, ``apiKey``, ...), and every LiteLLM release
# adds some: a name is one by its shape, never by a list. A name is split into words (at
# ``_``, ``-``, ``.`` and camelCase humps); it is a credential if a word is one of these, or
# ends in one of the suffixes (``apikey``, ``accesstoken``). ``max_tokens`` stays a sampling
# parameter: "tokens" counts, it does not authenticate.
_CREDENTIAL_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "cookies",
        "credential",
        # Header values carry tokens under any name (X-Token, X-Goog-Api-Key, ...).
        "header",
        "headers",
        "credentials",
        "creds",
        "jwt",
        "key",
        "keys",
        "oauth",
        "passphrase",
        "passwd",
        "password",
        "private",
        "pwd",
        "secret",
        "secrets",
        "session",
        "signature",
        "token",
    }
)
_CREDENTIAL_SUFFIXES = ("key", "token", "secret", "password", "passwd", "credential", "session")
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")
# Sampling parameters with a credential-like word: prompt-template tokens (text the model
# sees) and token ids that stop or end a generation (vLLM, Hugging Face).
_NOT_CREDENTIALS = frozenset(
    {"bos_token", "eos_token", "stop_token_ids", "eos_token_id", "bos_token_id", "pad_token_id"}
)

# A URL's query string carries credentials under short names that are words of no other
# meaning there: Azure Functions' ``code`` and a shared access signature's ``sig``. Inside
# ``extra_query`` (what LiteLLM appends to the URL) they are credentials too.
_QUERY_CREDENTIALS = frozenset({"code", "sig"})
#: The parameter whose fields LiteLLM sends as the URL's query string.
_QUERY_PARAM = "extra_query"

Message = dict[str, Any]


@functools.lru_cache(maxsize=4096)
def is_credential(name: str) -> bool:
    """Whether a parameter name looks like a credential (never keyed, stored or logged).

    Decided by the name's shape, so that a credential parameter nobody has listed yet
    (a provider's new session token, say) is safe all the same.

    Example:
        >>> [is_credential(n) for n in ("api_key", "apiKey", "X-Auth-Token", "max_tokens")]
        [True, True, True, False]
        >>> is_credential("github_copilot_user_session"), is_credential("top_k")
        (True, False)
    """
    if name in _NOT_CREDENTIALS:
        return False
    for word in _WORD_BOUNDARY.split(name):
        word = word.lower()
        if word in _CREDENTIAL_WORDS or (len(word) > 3 and word.endswith(_CREDENTIAL_SUFFIXES)):
            return True
    return False


def is_query_credential(name: str) -> bool:
    """Whether a URL query parameter carries a credential: named as one (``key``,
    ``api-key``), or one of the short names that mean one in a query (``code``, ``sig``).

    Example:
        >>> [is_query_credential(n) for n in ("key", "code", "sig", "api-version")]
        [True, True, True, False]
    """
    return name in _QUERY_CREDENTIALS or is_credential(name)


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries, as written and as decoded.

    The password of its ``user:password@``, or the token given as the user name alone
    (``https://TOKEN@host``); the Basic credentials an HTTP client sends for either
    (``Authorization: Basic <base64>``), which a provider may echo back; and the values of
    its credential query parameters (:func:`is_query_credential`).

    Example:
        >>> url_secrets("http://user:pw%21@host/v1")
        ['pw%21', 'pw!', 'dXNlcjpwdyUyMQ==', 'dXNlcjpwdyE=']
        >>> url_secrets("https://tok@host/v1?code=c%2B1&api-version=2")
        ['tok', 'dG9rOg==', 'c%2B1', 'c+1']
        >>> url_secrets("http://host/v1"), url_secrets("not a url")
        ([], [])
    """
    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and userinfo:
        user, _, password = userinfo.partition(":")
        secret = password or user  # a user name alone is the token
        written, decoded = (user, password), (unquote(user), unquote(password))
        found += [secret, unquote(secret)]
        found += [base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in (written, decoded)]
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and is_query_credential(unquote_plus(name)):
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(found))


def sent_secrets(*fields: Mapping[Any, Any]) -> list[str]:
    """Every credential that sending ``fields`` (a call's parameters, a client's settings)
    reveals, longest first: a provider may echo any of them back in an error (a 401 that
    repeats the request it refused), so each is scrubbed from messages and logs.

    They are: a secret-wrapped value; the value of a field named as a credential, inside
    objects too (``extra_body={"session_token": ...}``, as :func:`keyed_params` drops it,
    and deeper, where it is sent all the same); the values of a mapping named so (headers:
    only longer ones, since a short value such as ``"true"`` is an ordinary word and
    scrubbing it would garble every message); ``code`` and ``sig`` of a query mapping
    (``extra_query``, ``default_query``); the secrets of every URL (:func:`url_secrets`);
    and the token of each ``Bearer <token>``.

    Example:
        >>> sent_secrets({"api_key": "sk-1", "extra_body": {"session_token": "tok-2", "k": 5}})
        ['tok-2', 'sk-1']
        >>> sent_secrets({"api_base": "http://u:pw-3@host", "extra_query": {"code": "c-44"}})
        ['dTpwdy0z', 'c-44', 'pw-3']
    """
    found: set[str] = set()
    for each in fields:
        _collect_secrets(each, found, headers=False, query=False, seen=set())
    # Longest first: a secret that holds a shorter one is scrubbed whole.
    return sorted(found, key=lambda secret: (-len(secret), secret))


def _collect_secrets(
    fields: Mapping[Any, Any], found: set[str], *, headers: bool, query: bool, seen: set[int]
) -> None:
    """Add the secrets of ``fields`` (see :func:`sent_secrets`) to ``found``; ``headers``
    and ``query``: whether they are header or query fields."""
    if id(fields) in seen:  # a mapping that holds itself
        return
    seen.add(id(fields))
    for name, wrapped in fields.items():
        value = reveal_secret(wrapped)
        named = value is not wrapped or names_credential(name, query)
        if isinstance(value, Mapping):
            in_query = is_query_fields(name)
            _collect_secrets(value, found, headers=headers or named, query=in_query, seen=seen)
        elif type(value) is list or type(value) is tuple:
            for item in value:
                if isinstance(item, Mapping):
                    _collect_secrets(item, found, headers=headers, query=False, seen=seen)
        elif named or headers:
            _add_secret(found, value, 8 if headers else 4)
        elif isinstance(value, str) and not any(c.isspace() for c in value):
            for secret in url_secrets(value):  # a text with spaces is no URL
                _add_secret(found, secret, 4)


def names_credential(name: object, query: bool = False) -> bool:
    """Whether a field named ``name`` holds a credential: by :func:`is_query_credential`
    among the fields of a URL's query (``query``), else by :func:`is_credential`."""
    return isinstance(name, str) and (is_query_credential(name) if query else is_credential(name))


def is_query_fields(name: object) -> bool:
    """Whether an object parameter holds the fields of a URL's query string."""
    return isinstance(name, str) and (
        name == _QUERY_PARAM or "query" in (w.lower() for w in _WORD_BOUNDARY.split(name))
    )


def _add_secret(found: set[str], value: Any, shortest: int) -> None:
    """Add ``value``, if a text of at least ``shortest`` characters, and the token of a
    ``Bearer <token>`` (only a long part: the scheme is no secret)."""
    if isinstance(value, str):
        if len(value) >= shortest:
            found.add(value)
        found.update(part for part in value.split()[1:] if len(part) >= 8)


def reveal_secret(value: Any) -> Any:
    """The value inside a secret wrapper (pydantic ``SecretStr``/``Secret``), else ``value``.

    Callers may pass credentials wrapped, so that no repr of a request shows them; they
    are revealed only to be sent.

    Example:
        >>> from pydantic import SecretStr
        >>> reveal_secret(SecretStr("sk-1")), reveal_secret(0.5)
        ('sk-1', 0.5)
    """
    reveal = getattr(value, "get_secret_value", None)
    return reveal() if callable(reveal) else value


def is_sampling_param(name: str) -> bool:
    """Whether a parameter decides the output distribution, and so belongs in the key."""
    return name not in TRANSPORT_PARAMS and not is_credential(name)


def keyed_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that belong in a key and a stored record, credentials left out.

    A parameter that lists objects (``tools``, Anthropic's ``mcp_servers``) may carry a
    credential in each: an MCP server's ``authorization`` or ``headers`` say who calls it,
    not what the model answers. So may a parameter that is an object of fields passed on
    to the provider (``extra_body={"session_token": ...}``), and its plumbing, such as
    the ``metadata`` where LiteLLM takes a tracer's keys, as at the top level. They are
    still sent; only the key and the record lose them. Only the object's own fields are
    looked at: deeper down, a name is a tool's argument or a schema's property, which the
    model does see.

    Example:
        >>> keyed_params({"api_key": "sk", "tools": [{"type": "mcp", "headers": {}}]})
        {'tools': [{'type': 'mcp'}]}
        >>> keyed_params({"extra_body": {"top_k": 5, "session_token": "t", "metadata": {}}})
        {'extra_body': {'top_k': 5}}
        >>> keyed_params({"logit_bias": {50256: -100}})
        {'logit_bias': {50256: -100}}
        >>> keyed_params({"extra_query": {"code": "c", "sig": "s", "api-version": "1"}})
        {'extra_query': {'api-version': '1'}}
    """
    keyed = {}
    for name, value in params.items():
        if not is_sampling_param(name):
            continue
        if isinstance(value, Mapping):
            kept = _without_credentials(value)
            if name == _QUERY_PARAM:
                kept = {k: v for k, v in kept.items() if k not in _QUERY_CREDENTIALS}
            if value and not kept:  # credentials alone: keyed as if not passed
                continue
            value = kept
        elif type(value) is list and any(isinstance(item, Mapping) for item in value):
            value = [
                _without_credentials(item) if isinstance(item, Mapping) else item for item in value
            ]
        keyed[name] = value
    return keyed


def _without_credentials(fields: Mapping[Any, Any]) -> dict[Any, Any]:
    """``fields`` without the ones named like credentials or plumbing (a token id of
    ``logit_bias`` is a number, never either)."""
    return {k: v for k, v in fields.items() if not isinstance(k, str) or is_sampling_param(k)}


def stop_list(stop: str | Sequence[str]) -> list[str]:
    """Stop sequences as a list: a lone string is one sequence (as OpenAI takes it), not
    one per character, and keys as the one-item list it means.

    Example:
        >>> stop_list("END"), stop_list(("a", "b"))
        (['END'], ['a', 'b'])
    """
    return [stop] if isinstance(stop, str) else list(stop)


def canonical(value: Any) -> Any:
    """Return a JSON-ready canonical form of ``value``.

    Dicts lose their ``None`` entries, integral floats become ints, tuples
    become lists and pydantic-style objects are dumped to dicts.
    """
    kind = type(value)
    # Exact-type checks first: this runs on every call, mostly over plain JSON.
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items() if v is not None}
    if kind is list or kind is tuple:
        return [canonical(v) for v in value]
    if kind is float or isinstance(value, float):
        if not math.isfinite(value):
            # JSON has no NaN or Infinity: sent, stored or exported, it would be invalid.
            raise ValueError(f"cannot use {value!r} in a request: JSON numbers are finite")
        return int(value) if value.is_integer() else float(value)
    if isinstance(value, Enum):
        return canonical(value.value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        # A pydantic class given as response_format: its schema is what the model sees.
        return {"schema": canonical(schema()), "title": value.__name__}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return canonical(dump(exclude_none=True))
    raise TypeError(f"cannot use a value of type {type(value).__name__} in a request: {value!r}")


def canonical_json(value: Any) -> str:
    """Serialise ``value`` canonically (sorted keys, no spaces)."""
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_text(content: Any, *, shown: bool = False) -> str:
    """The text of an OpenAI-style message content: a str, or the text parts of a list.

    Args:
        content: A message's ``content``.
        shown: For a person to read: a part without text stands as its ``[type]``, and
            content of another shape as JSON. Otherwise both are left out, so that only
            what a model would read as text remains.

    Example:
        >>> parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url"}]
        >>> content_text(parts), content_text(parts, shown=True)
        ('What is this?', 'What is this? [image_url]')
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return json.dumps(content, ensure_ascii=False) if shown and content is not None else ""
    texts = []
    for part in content:
        if not isinstance(part, dict):
            texts.append(str(part))
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif shown:
            texts.append(f"[{part.get('type', 'part')}]")
    return " ".join(text for text in texts if text)


@dataclass(frozen=True, eq=False)
class Request:
    """One sampling request: messages plus per-call sampling parameters.

    Args:
        messages: OpenAI-style message dicts.
        params: Sampling parameters of this call (``max_tokens``, ``tools``,
            ``response_format``, ...). Transport parameters are ignored for the key.
        source: The prompt exactly as the caller gave it; wrappers hand it to a
            custom inner ``Model.sample`` unchanged.

    Example:
        >>> Request.of("Choose a number between 1 and 1000.").prompt
        'Choose a number between 1 and 1000.'
    """

    messages: tuple[Message, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    source: Any = None
    #: Keys computed for this request, by model: every layer of a stack asks.
    keys: dict[int, tuple[Any, str]] = field(default_factory=dict, repr=False)
    #: The records those keys hash, by model: a cache layer stores it with the samples.
    records: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, prompt: str | list[Message] | tuple[Message, ...] | Request) -> Request:
        """Build a request from a prompt string, a message list or a request.

        Raises:
            TypeError: ``prompt`` is of another type, or a message is not a dict
                with a ``role``.
            ValueError: ``prompt`` is an empty list of messages, which every provider
                refuses (it is not sent, nor paid for).
        """
        if isinstance(prompt, Request):
            return prompt
        if isinstance(prompt, str):
            return cls(({"role": "user", "content": prompt},), {}, prompt)
        if isinstance(prompt, list | tuple):
            if not prompt:
                raise ValueError("prompt has no messages: give a str or at least one message")
            for i, message in enumerate(prompt):
                if not isinstance(message, Mapping) or "role" not in message:
                    raise TypeError(
                        f"prompt message #{i} must be a dict with a 'role', got {message!r}"
                    )
            return cls(tuple(dict(m) for m in prompt), {}, prompt)
        raise TypeError(
            "prompt must be a str, a list of message dicts or a Request, "
            f"got {type(prompt).__name__}"
        )

    @property
    def prompt(self) -> str | None:
        """The text of a single-user-message request, else ``None``."""
        if len(self.messages) == 1 and self.messages[0].get("role") == "user":
            content = self.messages[0].get("content")
            if isinstance(content, str):
                return content
        return None

    def sampling_params(self) -> dict[str, Any]:
        """The parameters that decide the output distribution (see :func:`keyed_params`)."""
        return keyed_params(self.params)

    def describe(self, identity: Mapping[str, Any], width: int = 80) -> str:
        """A one-line human summary, for error messages and listings."""
        last = self.messages[-1].get("content") if self.messages else ""
        text = last if isinstance(last, str) else json.dumps(last)
        if len(text) > width:
            text = text[: width - 3] + "..."
        extra = f", {len(self.messages)} messages" if len(self.messages) > 1 else ""
        return f"(model={identity.get('model')}{extra}) {text!r}"


def request_record(identity: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """The canonical description of a request: what its key is the hash of."""
    # Filtered again: a provider's identity must not smuggle a credential into the key.
    params = keyed_params(identity.get("params", {}))
    params.update(request.sampling_params())
    record: dict[str, Any] = {
        "model": identity.get("model"),
        "messages": list(request.messages),
        "params": params,
    }
    if identity.get("endpoint"):
        record["endpoint"] = identity["endpoint"]
    return canonical(record)


def record_key(record: Mapping[str, Any]) -> str:
    """The versioned cache key of a request's canonical ``record`` (see :func:`request_record`).

    The JSON is hashed as UTF-8. A lone surrogate (half of a pair, which valid JSON and
    Python strs may hold) has no UTF-8 form: ``surrogatepass`` gives it its own three
    bytes, so such a prompt has a key of its own, while any other text hashes exactly
    as it always did (the keys of existing caches never change).
    """
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    data = text.encode("utf-8", "surrogatepass")
    return f"{KEY_VERSION}-{hashlib.sha256(data).hexdigest()[:40]}"


def request_key(identity: Mapping[str, Any], request: Request) -> str:
    """The versioned cache key of ``request`` sent to the model ``identity``."""
    return record_key(request_record(identity, request))
