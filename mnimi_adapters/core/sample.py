"""Samples: one completion choice each, stored as JSON."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptStoreError


def new_draw_id() -> str:
    """A globally unique id for one draw from a provider."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Sample:
    """One independent completion choice.

    Attributes:
        text: The assistant text ("" for a pure tool call).
        message: The assistant message as an OpenAI-style dict, tool calls included.
        finish_reason: Why generation stopped, as the provider said.
        usage: This sample's share of the response's token usage
            (``prompt_tokens``, ``completion_tokens``).
        model: The model name the provider reported.
        draw_id: Unique id of this draw; a sequence never holds one twice.
        created: Unix time of the draw.
        response_id: Id of the provider response it came from (shared by the
            ``n`` choices of one response).
        cost: This sample's share of the response cost in USD, when known.
        logprobs: The choice's token log probabilities as the provider gave them (an
            OpenAI-style dict), when the request asked for them.
        system_fingerprint: The backend configuration the provider reported, if any.
        origin: Where this draw was served from, set by the cache layers and
            never stored: ``key`` and ``index`` in the innermost cache's
            sequence, and ``cache_hit`` (no provider call was needed for it).

    Example:
        >>> sample = Sample.of_text("42")  # what a custom model's plain str becomes
        >>> sample.text, sample.message
        ('42', {'role': 'assistant', 'content': '42'})
        >>> Sample.from_dict(sample.to_dict()) == sample  # stored as JSON, read back whole
        True
        >>> from mnimi_adapters import BatchedModel, Repeatable
        >>> class Echo(BatchedModel):
        ...     def query(self, request, n):
        ...         return ["hi"] * n
        >>> cache = Repeatable(Echo("echo", 1.0))
        >>> first, again = (cache.draw("Say hi", 1)[0] for _ in range(2))
        >>> first.draw_id == again.draw_id, first.origin["cache_hit"], again.origin["cache_hit"]
        (True, False, True)
    """

    text: str
    message: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    draw_id: str = field(default_factory=new_draw_id)
    created: float = field(default_factory=time.time)
    response_id: str | None = None
    cost: float | None = None
    logprobs: dict[str, Any] | None = field(default=None, repr=False)
    system_fingerprint: str | None = None
    origin: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of_text(cls, text: str, response_id: str | None = None) -> Sample:
        """A sample for a plain string drawn by a custom model."""
        return cls(
            text=text, message={"role": "assistant", "content": text}, response_id=response_id
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored on disk.

        The nested ``message`` and ``usage`` are the sample's own (a sample is never
        changed): written out field by field, since ``dataclasses.asdict`` deep-copies
        every value, which made up half of what storing a sample cost.
        """
        stored = {
            "text": self.text,
            "message": self.message,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "model": self.model,
            "draw_id": self.draw_id,
            "created": self.created,
            "response_id": self.response_id,
            "cost": self.cost,
        }
        # Written only when present: a sample without them is stored as before, so an
        # earlier version of the library still reads it.
        stored.update(self.provider_extras())
        return stored

    def provider_extras(self) -> dict[str, Any]:
        """What only some providers give, when given: ``logprobs``, ``system_fingerprint``."""
        extras = {"logprobs": self.logprobs, "system_fingerprint": self.system_fingerprint}
        return {name: value for name, value in extras.items() if value is not None}

    @classmethod
    def from_dict(cls, data: Any) -> Sample:
        """Rebuild a sample from :meth:`to_dict` output.

        Raises:
            CorruptStoreError: ``data`` is not a stored sample.
        """
        if not isinstance(data, dict) or not isinstance(data.get("text"), str) or "origin" in data:
            raise CorruptStoreError(f"not a stored sample: {str(data)[:80]!r}")
        try:
            return cls(**data)
        except TypeError as error:
            raise CorruptStoreError(f"not a stored sample: {error}") from None

    def served(self, key: str, index: int, hit: bool) -> Sample:
        """This sample annotated as served by a cache layer at ``index`` of ``key``.

        The innermost cache layer names the position; any layer that had the
        sample stored makes it a hit.
        """
        if self.origin is None:
            origin = {"key": key, "index": index, "cache_hit": hit}
        elif hit and not self.origin["cache_hit"]:
            origin = {**self.origin, "cache_hit": True}
        else:
            return self
        # A shallow copy: dataclasses.replace re-runs __init__ and costs a cache hit
        # a few microseconds more.
        served = object.__new__(Sample)
        served.__dict__.update(self.__dict__)
        served.__dict__["origin"] = origin
        return served

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage.get("prompt_tokens", 0))

    @property
    def completion_tokens(self) -> int:
        return int(self.usage.get("completion_tokens", 0))


def split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal non-negative ints summing to it."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def stream_pieces(text: str, pieces: int = 4) -> list[str]:
    """``text`` cut into up to ``pieces`` consecutive parts that join back to it.

    How a stored sample is replayed as a stream, and how the local server streams.

    Example:
        >>> stream_pieces("abcdefg")
        ['ab', 'cd', 'ef', 'g']
    """
    if not text:
        return []
    size = -(-len(text) // min(pieces, len(text)))
    return [text[i : i + size] for i in range(0, len(text), size)]
