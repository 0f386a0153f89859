"""LiteLLM's Responses API (``litellm.responses``/``aresponses``) through MnimiCache's sequences.

A Responses call is answered like a ``completion`` call (see :mod:`mnimi_adapters.litellm`):
the same scopes, per-call ``metadata={"mnimi": ...}`` overrides, replication and key rules,
with the call's ``input`` in the place of the messages. A string ``input`` is keyed as the
one user message it stands for, and a ``{"type": "message", ...}`` item as the message
without its default type, so equivalent inputs share a sequence. ``instructions`` and the
sampling parameters are keyed, and so is ``api: "responses"``: a Responses call never
shares a sequence with the chat completion of the same text.

A sample holds the response's output text as its text, its function calls as the tool
calls of its message, and the output items themselves (``message["output"]``), from which
a hit rebuilds a ``ResponsesAPIResponse``. The Responses API has no ``n``: each call gets
one sample.

A streamed call (``stream=True``) is answered from the same sequence: its sample (a miss
draws it whole, not live) is replayed as the events LiteLLM's own stream yields.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final

from litellm.types.llms.openai import ResponsesAPIResponse

from ._compat import HIDDEN_PARAMS_FIELD, response_cost, responses_stream_events
from .core.request import Message, Request, canonical
from .core.sample import Sample
from .litellm import (
    MnimiCache,
    _answering,
    _answering_cache,
    _built_hidden,
    _CacheProvider,
    _Call,
    _drawn_alone,
    _facts,
    _litellm_errors,
    _plain_message,
)
from .providers import _plain

#: The marker that keeps a Responses call's key apart from a chat completion's.
API_MARKER: Final = {"api": "responses"}
#: Request parameters a response repeats, which a hit's rebuilt response repeats too.
_ECHOED: Final = (
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
)
#: An incomplete response's reason as a finish reason, and back.
_FINISH: Final = {"max_output_tokens": "length"}
_INCOMPLETE: Final = {finish: reason for reason, finish in _FINISH.items()}


def input_items(value: Any) -> list[Message]:
    """A Responses ``input`` as the canonical list of items it is keyed (and sent) as.

    Example:
        >>> input_items("hi")
        [{'role': 'user', 'content': 'hi'}]
        >>> input_items([{"type": "message", "role": "user", "content": "hi"}])
        [{'role': 'user', 'content': 'hi'}]
    """
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple):
        raise TypeError(f"responses needs an input string or list, got {type(value).__name__}")
    items = []
    for item in value:
        plain = _plain_message(item)
        if plain.get("type") == "message" and "role" in plain:
            del plain["type"]  # the default type of an item with a role
        items.append(plain)
    return items


class _ResponsesCall(_Call):
    """A ``litellm.responses`` call: its samples are drawn through the Responses API."""

    def new_provider(self, max_batch: int, **options: Any) -> _CacheProvider:
        return _ResponsesProvider(self.route, 1.0, max_batch=max_batch, supports_n=False, **options)


class _ResponsesProvider(_CacheProvider):
    """The provider layer of Responses calls: one ``litellm.responses`` request per sample."""

    entry_points = ("responses", "aresponses")

    def _kwargs(self, request: Request, n: int) -> dict[str, Any]:
        kwargs = super()._kwargs(request, n)
        kwargs["input"] = kwargs.pop("messages")
        for name in API_MARKER:
            del kwargs[name]
        return kwargs

    def _samples(self, response: Any) -> list[Sample]:
        return self._kept(response, [response_sample(response)])


def response_sample(response: Any) -> Sample:
    """The sample a ``ResponsesAPIResponse`` holds (text, function calls, output items).

    A response without text or function calls makes a sample the provider layer rejects
    as empty (law 8).
    """
    output = [_plain(item) for item in getattr(response, "output", None) or []]
    text = "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
    calls = [
        {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
        }
        for item in output
        if item.get("type") == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "output": output}
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls else "stop"
    if getattr(response, "status", None) == "incomplete":
        reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
        finish = _FINISH.get(str(reason), str(reason))
    usage = getattr(response, "usage", None)
    cached = getattr(getattr(usage, "input_tokens_details", None), "cached_tokens", None)
    reasoning = getattr(getattr(usage, "output_tokens_details", None), "reasoning_tokens", None)
    created = getattr(response, "created_at", None)
    sample = Sample(
        text=text,
        message=message,
        finish_reason=finish,
        usage={
            "prompt_tokens": int(getattr(usage, "input_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "output_tokens", 0) or 0),
            "cached_tokens": int(cached or 0),
            "reasoning_tokens": int(reasoning or 0),
        },
        model=getattr(response, "model", None),
        response_id=getattr(response, "id", None),
        cost=response_cost(response),
    )
    # When the provider says; a replayed response carries its original creation time.
    return dataclasses.replace(sample, created=float(created)) if created else sample


def _rebuilt(call: _Call, sample: Sample) -> ResponsesAPIResponse:
    """The response a stored sample came in, as far as it decides it."""
    params = call.request.sampling_params()  # a tool's credentials are not echoed back
    complete = sample.finish_reason in ("stop", "tool_calls")
    reason = _INCOMPLETE.get(str(sample.finish_reason), sample.finish_reason)
    usage = sample.usage
    fields = {name: canonical(params[name]) for name in _ECHOED if name in params}
    return ResponsesAPIResponse.model_validate(
        {
            **fields,
            "id": sample.response_id or f"resp_{sample.draw_id}",
            "object": "response",
            "created_at": int(sample.created),
            "model": sample.model or call.route,
            "status": "completed" if complete else "incomplete",
            "incomplete_details": None if complete else {"reason": reason},
            "output": copy.deepcopy(sample.message.get("output", [])),
            "usage": {
                "input_tokens": sample.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
                "output_tokens": sample.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
                "total_tokens": sample.prompt_tokens + sample.completion_tokens,
            },
            "metadata": call.transport.get("metadata", {}),
        }
    )


def _answer(call: _Call, samples: list[Sample]) -> Any:
    """The provider response when it alone drew the sample, else one rebuilt from it."""
    facts = _facts(samples)
    drawn = _drawn_alone(call, samples, facts)
    if drawn is not None:
        return drawn
    response = _rebuilt(call, samples[0])
    hidden = _built_hidden(call, samples, facts, response.model or call.route)
    setattr(response, HIDDEN_PARAMS_FIELD, hidden)
    return response


class _Events:
    """A stored response replayed as a stream: its events, for ``for`` and ``async for``,
    as LiteLLM's own Responses streams are iterated."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self._events = iter(responses_stream_events(response))

    def __iter__(self) -> _Events:
        return self

    def __next__(self) -> Any:
        return next(self._events)

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None


def _streamed(response: Any, kwargs: Mapping[str, Any]) -> Any:
    """``response``, as events when the call asked for a stream."""
    return _Events(response) if kwargs.get("stream") is True else response


# ---------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _positional_names(original: Callable[..., Any]) -> tuple[str, ...]:
    """The names of ``original``'s positional parameters (``input``, ``model``, ...)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(original).parameters.values()
    return tuple(p.name for p in parameters if p.kind in kinds)


def _answerer(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[MnimiCache, _Call] | None:
    """The cache that answers a Responses call and the parsed call, if one does.

    Positional arguments are named first (``kwargs`` gets them): no LiteLLM cache handler
    answers a positional call later, and a replication cache must see every call.
    """
    kwargs.update(zip(_positional_names(original), args, strict=False))
    cache = _answering_cache((), kwargs)
    if cache is None:
        return None
    parsed = {name: value for name, value in kwargs.items() if name != "input"}
    parsed.update(API_MARKER, messages=input_items(kwargs.get("input")))
    call = cache._admitted(cache._parse(parsed, _ResponsesCall))
    return None if call is None else (cache, call)


def handle_responses(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.responses`` while a MnimiCache is installed.

    A streamed call gets its sample replayed as stream events (:class:`_Events`).
    """
    answering = _answerer(original, args, kwargs)
    if answering is None:
        return original(**kwargs)
    cache, call = answering
    layer = cache._layer_for(call)
    with _answering(cache, call), _litellm_errors(kwargs):
        samples = layer.draw(call.request, 1)
    return _streamed(_answer(call, samples), kwargs)


async def ahandle_responses(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.aresponses`` while a MnimiCache is installed (see :func:`handle_responses`)."""
    answering = _answerer(original, args, kwargs)
    if answering is None:
        return await original(**kwargs)
    cache, call = answering
    layer = cache._layer_for(call)
    with _answering(cache, call), _litellm_errors(kwargs):
        samples = await layer.adraw(call.request, 1)
    return _streamed(_answer(call, samples), kwargs)
