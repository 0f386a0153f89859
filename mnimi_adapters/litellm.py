"""``MnimiCache``: a LiteLLM cache that serves ``litellm.completion`` from sample sequences.

LiteLLM's own cache maps a request to *one* response, so a retry gets the same failing
answer and ``n`` "samples" of a pass@k run collapse into one. ``MnimiCache`` keeps, per
request, the append-only sequence of independent samples of :mod:`mnimi_adapters.core`
instead, and lets the scopes decide which of them a call gets::

    import litellm
    from mnimi_adapters import independent, repeatable
    from mnimi_adapters.litellm import MnimiCache

    with MnimiCache("~/.llm_cache"):
        litellm.completion(model=..., messages=...)   # sample 0 of the sequence, every run
        with independent():                            # each call continues the sequence
            for attempt in range(3):
                with repeatable():                     # one attempt: fresh, then repeated
                    litellm.completion(model=..., messages=...)

How a call is answered: the cache builds a :class:`~mnimi_adapters.core.request.Request`
from the call (messages and sampling parameters; never credentials, ``n``, timeouts or
metadata), takes ``n`` samples from the layer the open scopes select, and returns them as
one response with ``n`` choices. Samples missing from the sequence are drawn first, through
``litellm.completion`` itself (those inner calls carry a marker that makes this cache let
them through), and only as many as are missing: ``n=5`` after ``n=3`` sends one request
for 2.

The call is answered in a wrapper around ``litellm.completion``/``acompletion`` (see
below), before LiteLLM's own client wrapper runs, so a miss costs one LiteLLM call: when
one provider response holds exactly the samples a call gets, that response is returned
as it is. Any other answer (a hit, or samples from several requests) is built from the
samples; while a LiteLLM callback is installed, a hit is replayed through LiteLLM's cache
handler instead, which logs it as a hit, and a stream always is (LiteLLM shapes it; its
replay is logged only for a hit: fresh samples were logged by the call that drew them). A
streaming call with ``n=1`` whose sample is missing streams live: each chunk reaches the
caller as the provider sends it, the sample is stored when the stream ends, and a stream
its caller abandons stores nothing and gives its position back (an ``independent()``
scope hands it to its next call). A streaming call with ``n > 1`` draws its samples whole,
then LiteLLM replays them as a stream.

Per call, ``metadata={"mnimi": ...}`` overrides the scopes:

* ``"no_cache"``: the call goes to the provider; nothing is read or stored.
* ``"repeatable"``: replay the sequence from its start, whatever scope is open.
* ``"independent"``: continue a cursor the cache keeps per request (inside an
  ``independent()`` scope, the scope's cursor), so successive calls get fresh samples.

With ``replication=True`` nothing is ever sent: a sample missing from the cache raises
:class:`~mnimi_adapters.core.errors.ReplicationCacheMiss` out of ``litellm.completion``.
No caller can skip a replication cache, through three mechanisms (see ``_compat``):

* LiteLLM decides to skip its cache for ``caching=False`` and ``cache={"no-cache": ...}``
  (a Router without ``cache_responses`` sends the first, DSPy the second) before any hook
  runs, so installing a cache wraps ``litellm.completion`` and ``litellm.acompletion``;
  the newest installed cache decides whether those switches count. A replication cache
  (or one made with ``dspy=True``) drops them.
* DSPy's default engine talks HTTP itself; while such a cache is installed, DSPy's own
  engine selection is turned to its LiteLLM engine, call by call.
* DSPy sets ``litellm.cache = None`` on its first LiteLLM call; the wrapped entry points
  put the newest installed cache back.

Text completions reach the cache through ``completion``: ``litellm.atext_completion``,
which LiteLLM sends past every cache, runs the sync ``text_completion`` on a worker thread
instead, and the helpers that hand the caller's switches to LiteLLM's own ``completion``
(``text_completion``, the ``*_with_retries`` functions, the adapters) are wrapped to drop
them too. Every other LiteLLM entry point that sends a request is refused by a replication
cache before it sends.

``litellm.responses``/``aresponses`` (the Responses API) are answered from the sequences
too, by the same laws and switches (see ``_responses``): the ``input`` (a string or a
list of items) takes the place of the messages, ``instructions`` is keyed like the
sampling parameters, and the key carries ``api: "responses"``, so it never collides with
a chat completion's. A miss returns the provider's response; a hit, a
``ResponsesAPIResponse`` rebuilt from the stored output items. A streamed Responses call
gets the same sample replayed as stream events (a miss is drawn whole first, not live).

Keys: a call's key is the one :class:`~mnimi_adapters.providers.LiteLLMModel` with the
same model string, ``api_base`` and temperature uses (a call without a temperature samples,
and is keyed, at 1.0), so ``Persistent(LiteLLMModel(...), path)`` and this cache share
sequences in one directory. ``alias={"openai/llama3": "llama3"}`` renames a model (or a
Router model group) in keys and drops ``api_base`` from them. Router calls are keyed by
their model group, so a replay does not depend on which deployment the Router picks: what
the picked deployment's ``litellm_params`` set (its model, endpoint, region, project, a
``max_tokens``, ...) is sent but not keyed, and the sampling parameters the Router's
caller passed are keyed.

Importing this module imports LiteLLM (``import mnimi_adapters`` alone does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# An absolute import: this module is ``mnimi_adapters.litellm``, the library is ``litellm``.
import litellm
import openai
from litellm.caching.caching import Cache

from ._compat import (
    HIDDEN_PARAMS_FIELD,
    HiddenParams,
    carry_dspy_rollout_ids,
    client_class_methods,
    close_stream,
    dspy_rollout_id,
    has_cache_switches,
    hit_needs_litellm,
    in_dspy_call,
    init_without_global_callbacks,
    is_completions_provider,
    keep_entry_point_signatures,
    note_router_call_params,
    patch_stream_hit_check,
    prompt_count,
    request_entry_points,
    retried_entry_point,
    retry_helpers,
    route_dspy_through_litellm,
    routed_entry_points,
    router_call_params,
    skip_cache_writes_not_to_store,
    tell_logging_about_hit,
    unwrap_entry_points,
    without_cache_switches,
    wrap_entry_points,
)
from .core.errors import MnimiError, ProviderError
from .core.explain import LITELLM_TEMPERATURE
from .core.gates import GATES, Abandonment
from .core.layers import CacheLayer, Independent
from .core.model import Cursor, Layer, Model
from .core.request import (
    Request,
    request_key,
    stop_list,
)
from .core.sample import Sample
from .core.scopes import caching_enabled, scoped
from .core.stores import ReadThroughStore, is_redis_url, open_store, shown_location
from .core.stores.base import anchored, check_directory_location
from .providers import (
    LiteLLMModel,
    callers_max_retries,
    configured_api_base,
    in_provider_call,
    keyed_endpoint,
    litellm_param_role,
    retry_count,
)

__all__ = ["MnimiCache"]

logger = logging.getLogger("mnimi_adapters.litellm")

#: The attribute that holds a layer's wrapper for ``metadata={"mnimi": "independent"}``.
_PER_CALL_INDEPENDENT = "_mnimi_per_call_independent"

#: How long LiteLLM says a call took, in milliseconds: in ``_hidden_params`` and on the response.
_RESPONSE_MS: Final = "_response_ms"
#: ``metadata`` key of the per-call override.
METADATA_KEY: Final = "mnimi"
# Marks, in a replication run, a call whose cache switches were dropped (see _steered).
_SWITCHED_OFF: Final = "mnimi_switched_off"
_MODES: Final = frozenset({"independent", "repeatable", "no_cache"})
#: The most choices one provider request asks for when ``max_batch`` is not given
#: (OpenAI's limit on ``n``).
_DEFAULT_MAX_BATCH: Final = 128


def _plain_message(message: Any) -> dict[str, Any]:
    """A message as a plain dict: callers often append a response's ``Message`` object."""
    if isinstance(message, Mapping):
        return dict(message)
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        plain = dump(exclude_none=True)
        if isinstance(plain, dict):
            return plain
    raise TypeError(f"a message must be a dict with a 'role', got {type(message).__name__}")


def _sampling_value(name: str, value: Any) -> Any:
    """``response_format=SomePydanticModel`` becomes the JSON schema LiteLLM sends, and a
    lone stop string the one-item list it means (OpenAI takes both), so both share a key."""
    if name == "response_format" and isinstance(value, type):
        from litellm.utils import type_to_response_format_param

        return type_to_response_format_param(value)
    if name == "stop" and isinstance(value, str):
        return stop_list(value)
    return value


def _retries(kwargs: Mapping[str, Any]) -> int | None:
    """How often the provider layer may retry one request, or ``None`` for its default.

    A caller's (or a Router's) ``max_retries`` wins, else its ``num_retries``: the cache
    answers the call before LiteLLM's own retry loop would run, and a provider call is
    sent with LiteLLM's retries off, so the provider layer retries in its place.
    """
    max_retries = callers_max_retries(kwargs)
    if max_retries is None:
        return retry_count(kwargs.get("num_retries"))
    return max_retries


def _provider_name(route: str, transport: Mapping[str, Any]) -> str | None:
    """LiteLLM's provider for ``route`` (``openai`` for ``openai/llama3``), if it knows."""
    try:
        return str(
            litellm.get_llm_provider(
                model=route,
                custom_llm_provider=transport.get("custom_llm_provider"),
                api_base=transport.get("api_base"),
            )[1]
        )
    except Exception:  # an unknown route: LiteLLM's own call will say so
        return None


def _given_back(call: _Call, layer: Layer, samples: list[Sample]) -> list[Sample]:
    """``samples``, their positions given back to the scope if ``call`` takes none."""
    if call.gives_back:
        layer.open(call.request).give_back(samples)
    return samples


def _facts(samples: list[Sample]) -> dict[str, Any]:
    """What a response's ``_hidden_params["mnimi"]`` says: key, positions and hits."""
    origins = [s.origin or {} for s in samples]
    return {
        "key": origins[0].get("key"),
        "indices": [o.get("index") for o in origins],
        "cache_hits": [bool(o.get("cache_hit")) for o in origins],
    }


def _cost(samples: list[Sample], facts: Mapping[str, Any]) -> float | None:
    """What an answer built from ``samples`` cost: nothing on a hit, its fresh samples else.

    ``None`` when a fresh sample has no known price.
    """
    drawn = [s for s, hit in zip(samples, facts["cache_hits"], strict=True) if not hit]
    costs = [s.cost for s in drawn if s.cost is not None]
    return sum(costs) if costs else (0.0 if not drawn else None)


# Provider responses just drawn, by their first sample's draw id, each waiting for the
# call that gets exactly its samples. Concurrent calls of one request (an independent()
# scope) share its sequence, and a refill's samples land at the next free positions, not
# at the one the call that drew them reads (nine misses in ten of a burst of 200): the
# call that gets a response's samples takes the response, whichever call drew it. A
# response whose samples nobody takes (its call was cancelled) is dropped after
# _FRESH_LIMIT newer ones: a call takes its response moments after it lands.
_FRESH: dict[str, tuple[Any, list[str]]] = {}
_FRESH_LOCK = threading.Lock()
_FRESH_LIMIT: Final = 256


def _keep_fresh(response: Any, samples: list[Sample]) -> None:
    """Keep ``response`` for the call that gets exactly ``samples`` (see ``_FRESH``)."""
    draw_ids = [s.draw_id for s in samples]
    with _FRESH_LOCK:
        _FRESH[draw_ids[0]] = (response, draw_ids)
        if len(_FRESH) > _FRESH_LIMIT:
            del _FRESH[next(iter(_FRESH))]


def _drawn_alone(call: _Call, samples: list[Sample], facts: dict[str, Any]) -> Any:
    """The provider response that holds exactly ``samples``, if one does, told the facts.

    A miss then costs the one LiteLLM call that drew it: that response is the answer. A
    response is taken once, and never for a hit (a stored sample costs nothing).
    """
    if any(facts["cache_hits"]):
        return None
    draw_ids = [s.draw_id for s in samples]
    with _FRESH_LOCK:
        kept = _FRESH.get(draw_ids[0])
        if kept is None or kept[1] != draw_ids:
            return None
        del _FRESH[draw_ids[0]]
    response = kept[0]
    hidden = getattr(response, HIDDEN_PARAMS_FIELD, None)
    if isinstance(hidden, dict):
        hidden["mnimi"] = facts
        hidden["cache_hit"] = False  # as a built answer of fresh samples says
        if call.call_id is not None:  # the caller's id, as a built answer keeps it
            hidden[_CALL_ID] = call.call_id
    return response


#: LiteLLM's id of one call: what its callbacks' events and its response carry.
_CALL_ID: Final = "litellm_call_id"
#: LiteLLM's public per-call switch that keeps a call from its callbacks.
_NO_LOG: Final = "no-log"


def _replay_kwargs(samples: list[Sample], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What LiteLLM's replay of ``samples`` is called with: unlogged unless all are hits.

    A fresh sample was logged already, with its cost, by the provider call that drew it
    (it carries the caller's ``litellm_call_id``); LiteLLM's replay would log the call a
    second time, as a free cache hit. LiteLLM's own cache logs such a call once, as a
    miss with its cost. A call of hits only is logged by its replay, as a hit.
    """
    if all(bool((s.origin or {}).get("cache_hit")) for s in samples):
        return kwargs
    return {**kwargs, _NO_LOG: True}


def _built_hidden(
    call: _Call, samples: list[Sample], facts: dict[str, Any], model: str
) -> dict[str, Any]:
    """The ``_hidden_params`` of an answer built from ``samples`` without LiteLLM.

    What LiteLLM's own replay puts there, so code reading it finds the same fields.
    """
    hidden = {
        "response_cost": _cost(samples, facts),
        "mnimi": facts,
        "cache_hit": all(facts["cache_hits"]),
        # Never a password the base URL holds: a built answer is the library's own value.
        "api_base": call.api_base and keyed_endpoint(call.api_base),
        "litellm_model_name": call.route,
        "litellm_call_id": call.call_id or str(uuid.uuid4()),
        "model_id": None,
        "provider_response_model": model,
        "additional_headers": {},
        _RESPONSE_MS: (time.perf_counter() - call.started) * 1000,
    }
    if any(facts["cache_hits"]):
        hidden["cache_key"] = facts["key"]
    return hidden


#: LiteLLM's mock parameters (``mock_response``, ``mock_tool_calls``, ``mock_delay``, ...).
_MOCK_PREFIX: Final = "mock_"


def _mocked(kwargs: Mapping[str, Any], chat: bool) -> bool:
    """Whether LiteLLM answers a call with its mock, sending nothing.

    ``completion`` does for any ``mock_response`` (a text, a response, or an exception it
    raises), ``mock_tool_calls`` or ``mock_timeout``; ``responses`` for a text
    ``mock_response`` only. A mocked answer is not the model's: never stored, never
    replayed, so the call goes to LiteLLM as it is, in replication too.
    """
    mock = kwargs.get("mock_response")
    if not chat:
        return isinstance(mock, str) and bool(mock)
    return mock is not None or bool(kwargs.get("mock_tool_calls") or kwargs.get("mock_timeout"))


#: What keys a Router group's call to a completions endpoint apart from its chat calls,
#: as ``api`` keys a Responses call apart.
_COMPLETIONS_MARKER: Final = {"api": "completions"}


@functools.cache
def _call_markers() -> frozenset[str]:
    """The parameters the cache itself adds to a call it parses (``api`` of a Responses
    call): keyed, though no caller passed them."""
    from ._responses import API_MARKER  # imported late: that module imports this one

    return frozenset(API_MARKER)


def _wants_usage(kwargs: Mapping[str, Any]) -> bool:
    """Whether a streaming call asked for the usage chunk."""
    options = kwargs.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


# ---------------------------------------------------------------------------------------
# One call, parsed
# ---------------------------------------------------------------------------------------


@dataclass
class _Call:
    """What the cache needs to know about one ``completion`` call."""

    identity: dict[str, Any]
    request: Request
    n: int
    route: str
    api_base: str | None
    retries: int | None
    transport: dict[str, Any]
    mode: str | None
    #: When the call reached the cache (``perf_counter``): a built answer's ``_response_ms``.
    started: float = field(default_factory=time.perf_counter, init=False)
    #: The caller's ``litellm_call_id``, which a built answer keeps, as LiteLLM's does.
    call_id: str | None = field(default=None, init=False)
    #: Which layer serves the call: one per key space (model, endpoint).
    identity_token: tuple[str, str | None] = field(init=False)
    #: Where a live stream's chunks go, until its first refill takes it.
    sink: _Sink | None = field(default=None, init=False)
    #: LiteLLM answers the call with its mock (see ``_mocked``): no sample to read or store.
    mocked: bool = field(default=False, init=False)
    #: Switched off when recorded (``no-cache``, ``no-store``, ``caching=False``): its
    #: position goes back to the scope once it is answered (see ``_steered``).
    gives_back: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.identity_token = (self.identity["model"], self.identity.get("endpoint"))

    def send_request(self) -> Request:
        """The request as sent: sampling plus transport parameters (never stored).

        The provider call carries the caller's ``litellm_call_id``: it is what LiteLLM's
        callbacks log for a miss, so their events join with the response. A refill that
        serves other calls too (concurrent calls of one request) carries the id of the
        call that drew it.
        """
        params = {**self.request.params, **self.transport}
        if self.call_id is not None:
            params[_CALL_ID] = self.call_id
        return Request(self.request.messages, params)

    def new_provider(self, max_batch: int, **options: Any) -> _CacheProvider:
        """The provider layer that draws this kind of call's samples (``litellm.completion``)."""
        return _CacheProvider(self.route, 1.0, max_batch=max_batch, **options)


# The call being answered, so that the layers' inner model sends the samples it misses
# to the deployment (and with the credentials) of *this* call.
_current_call: ContextVar[tuple[MnimiCache, _Call] | None] = ContextVar(
    "mnimi_litellm_call", default=None
)


@contextmanager
def _answering(cache: MnimiCache, call: _Call) -> Iterator[None]:
    token = _current_call.set((cache, call))
    try:
        yield
    finally:
        _current_call.reset(token)


class _CallModel(Model):
    """The bottom of a cache layer: draws through the deployment of the current call.

    One layer serves every call whose key space (model, endpoint) is the same, whichever
    deployment or credentials the call uses: two layers over one key space would each
    keep their own cursors and hand out the same sample twice in an ``independent()``
    scope.
    """

    def __init__(self, identity: dict[str, Any]) -> None:
        super().__init__(str(identity["model"]), 1.0)
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return self._identity

    def open(self, request: Request) -> Cursor:
        return _CallCursor()


class _CallCursor(Cursor):
    """Each refill goes to the provider of the call that needs it, with its credentials."""

    ordered = False

    def take(self, request: Request, batch: int) -> list[Sample]:
        cache, call = self._current()
        _end_turn()  # positions are claimed before a refill: the next call may claim
        send = call.send_request()
        sink, call.sink = call.sink, None  # only a call's first refill goes live
        if sink is not None and batch == 1:
            return cache._provider(call).stream(send, sink)
        return cache._provider(call).open(send).take(send, batch)

    async def atake(self, request: Request, batch: int) -> list[Sample]:
        cache, call = self._current()
        send = call.send_request()
        sink, call.sink = call.sink, None
        if sink is not None and batch == 1:
            return await cache._provider(call).astream(send, sink)
        return await cache._provider(call).open(send).atake(send, batch)

    @staticmethod
    def _current() -> tuple[MnimiCache, _Call]:
        current = _current_call.get()
        if current is None:
            raise MnimiError("MnimiCache layers draw samples only while answering a call")
        return current


# ---------------------------------------------------------------------------------------
# Drawing for a call: the provider response itself, and live streams
# ---------------------------------------------------------------------------------------

#: Ends a live stream's chunks in its sink.
_DONE: Final = object()


class _Abandoned(Exception):
    """A live stream's reader stopped reading: the partial answer is no sample."""


@dataclass
class _Sink:
    """Where a live stream's chunks go, from the refill that draws them to the reader.

    The refill runs on a refill thread or the library's event loop (so that a sample
    paid for is stored whatever happens to the caller); the reader, on its own thread or
    loop, takes the chunks from a thread-safe queue. ``abandoned`` is the reader's word
    that nobody reads any more.
    """

    include_usage: bool
    chunks: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    abandoned: Abandonment = field(default_factory=Abandonment)

    def forward(self, chunk: Any) -> None:
        if self.abandoned.expired():
            raise _Abandoned
        if self.abandoned.is_set():
            return  # read on, briefly: it may be whole already (see Abandonment)
        if getattr(chunk, "choices", None) or self.include_usage:
            self.chunks.put(chunk)


class _CacheProvider(LiteLLMModel):
    """The provider layer of a cache: its responses are kept for the calls they answer.

    When one provider response alone answers a call, that response is what the caller
    gets: a miss costs the one LiteLLM call that drew it, not a second one to replay it.
    """

    def __repr__(self) -> str:
        # How its errors and log lines name it: the model the caller called, not this class,
        # which is no name a caller knows (and the endpoint comes with each call).
        return f"model {self.route!r}"

    def _kwargs(self, request: Request, n: int) -> dict[str, Any]:
        kwargs = super()._kwargs(request, n)
        kwargs.pop(DSPY_ROLLOUT, None)  # keyed only (see MnimiCache._parse)
        for name, value in _COMPLETIONS_MARKER.items():  # keyed only, as DSPY_ROLLOUT
            if kwargs.get(name) == value:
                del kwargs[name]
        return kwargs

    def _samples(self, response: Any) -> list[Sample]:
        return self._kept(response, super()._samples(response))

    @staticmethod
    def _kept(response: Any, samples: list[Sample]) -> list[Sample]:
        """``samples``, with ``response`` kept for the call that gets them."""
        _keep_fresh(response, samples)
        return samples

    def _stream_kwargs(self, request: Request) -> dict[str, Any]:
        kwargs = self._kwargs(request, 1)
        kwargs["stream"] = True
        # The usage of a stored sample, whatever the caller asked for.
        kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def _streamed(self, stream: Any, chunks: list[Any], kwargs: Mapping[str, Any]) -> list[Sample]:
        # With the stream's own logging object LiteLLM knows the provider; without it, it
        # searches its price map by model name, which prints a banner for an unknown one.
        response = litellm.stream_chunk_builder(
            chunks, messages=kwargs["messages"], logging_obj=getattr(stream, "logging_obj", None)
        )
        return super()._samples(response)

    def stream(self, request: Request, sink: _Sink) -> list[Sample]:
        """One streamed request: each chunk goes to ``sink`` as it arrives.

        A failure before the first chunk is retried as an unstreamed request's is (the
        caller has seen nothing yet); one after it ends the stream: what the caller was
        shown cannot be taken back.

        Returns:
            The streamed sample, once the stream has ended.
        """
        kwargs = self._stream_kwargs(request)
        (stream, chunks), tries = self._retrying(
            lambda: _started(litellm.completion(**kwargs)), request, 1, kwargs, []
        )
        received: list[Any] = []
        failed = None
        try:
            try:
                for chunk in chunks:
                    sink.forward(chunk)
                    received.append(chunk)
            finally:  # an abandoned stream closes the connection
                close_stream(stream)
        except _Abandoned:
            raise
        except Exception as error:
            failed = self._failed(error, tries, 1, kwargs)
        if failed is not None:  # out of the except block (see LiteLLMModel._failed)
            raise failed[0] from failed[1]
        return self._streamed(stream, received, kwargs)

    async def astream(self, request: Request, sink: _Sink) -> list[Sample]:
        """Async :meth:`stream`."""
        kwargs = self._stream_kwargs(request)

        async def start() -> tuple[Any, AsyncGenerator[Any]]:
            return await _astarted(await litellm.acompletion(**kwargs))

        (stream, chunks), tries = await self._aretrying(start, request, 1, kwargs, [])
        received: list[Any] = []
        failed = None
        try:
            try:
                async for chunk in chunks:
                    sink.forward(chunk)
                    received.append(chunk)
            finally:
                await chunks.aclose()
                await stream.aclose()
        except _Abandoned:
            raise
        except Exception as error:
            failed = self._failed(error, tries, 1, kwargs)
        if failed is not None:
            raise failed[0] from failed[1]
        return self._streamed(stream, received, kwargs)


def _started(stream: Any) -> tuple[Any, Iterator[Any]]:
    """``stream`` and its chunks, the first one read already (closed if that fails).

    Its first chunk is read within the attempt that opened it, so that a failure before
    any chunk (a provider that answers the stream's first read with an error) is retried.
    """
    chunks = iter(stream)
    try:
        first = next(chunks, None)
    except BaseException:
        close_stream(stream)
        raise
    return stream, iter(()) if first is None else itertools.chain((first,), chunks)


async def _astarted(stream: Any) -> tuple[Any, AsyncGenerator[Any]]:
    """Async :func:`_started`."""
    chunks = aiter(stream)
    try:
        first = await anext(chunks, None)
    except BaseException:
        await stream.aclose()
        raise
    return stream, _prefixed(first, chunks)


async def _prefixed(first: Any, rest: AsyncIterator[Any]) -> AsyncGenerator[Any]:
    """``first`` (unless it is ``None``: the stream was empty), then ``rest``."""
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


# Live streams draw here while their reader takes the chunks.
_LIVE_DRAWS = ThreadPoolExecutor(thread_name_prefix="mnimi-litellm-stream")


def _ends_answer(chunk: Any) -> bool:
    """Whether ``chunk`` closes the answer (it has a finish reason).

    A reader that stops right after it has read the whole answer: its stream is not
    abandoned, though a usage chunk may follow that it never asked for.
    """
    return any(getattr(choice, "finish_reason", None) for choice in getattr(chunk, "choices", ()))


def _relay(
    first: Any,
    sink: _Sink,
    drawing: Future[list[Sample]],
    give_back: Callable[[list[Sample]], None],
) -> Iterator[Any]:
    """A live stream for its caller: the chunks as the provider sends them."""
    complete = False
    try:
        item = first
        while item is not _DONE:
            complete = complete or _ends_answer(item)
            yield item
            item = sink.chunks.get()
        drawing.result()
        complete = True
    finally:
        if not complete:
            _abandon(sink, give_back)


def _replay_relay(stream: Any, on_abandon: Callable[[], None]) -> Iterator[Any]:
    """A replayed stream for its caller; abandoned before its end, ``on_abandon`` runs."""
    complete = False
    try:
        for chunk in stream:
            complete = complete or _ends_answer(chunk)
            yield chunk
        complete = True
    finally:
        if not complete:
            on_abandon()


async def _areplay_relay(stream: Any, on_abandon: Callable[[], None]) -> AsyncIterator[Any]:
    """Async :func:`_replay_relay`."""
    complete = False
    try:
        async for chunk in stream:
            complete = complete or _ends_answer(chunk)
            yield chunk
        complete = True
    finally:
        if not complete:
            on_abandon()


async def _arelay(
    first: Any,
    sink: _Sink,
    drawing: asyncio.Future[list[Sample]],
    give_back: Callable[[list[Sample]], None],
) -> AsyncIterator[Any]:
    """Async :func:`_relay`."""
    complete = False
    try:
        item = first
        while item is not _DONE:
            complete = complete or _ends_answer(item)
            yield item
            item = await asyncio.to_thread(sink.chunks.get)
        await drawing
        complete = True
    finally:
        if not complete:
            _abandon(sink, give_back)


def _abandon(sink: _Sink, give_back: Callable[[list[Sample]], None]) -> None:
    """Leave a live stream. A draw stopped part-way gives its position back; one the
    provider had finished is stored, and its position is handed on as well, here or by
    the draw as it ends (see :meth:`Abandonment.leave`), before its gate opens: the
    caller's next call of the request waits at that gate, and is served that position."""
    sink.abandoned.leave(functools.partial(_hand_on, give_back=give_back))


def _ended_live(
    sink: _Sink, samples: list[Sample] | None, give_back: Callable[[list[Sample]], None]
) -> None:
    """The end of a live stream's draw: its position handed on if its reader has left."""
    sink.abandoned.ended(samples, functools.partial(_hand_on, give_back=give_back))


def _hand_on(samples: list[Sample], give_back: Callable[[list[Sample]], None]) -> None:
    """Hand the positions of an abandoned stream's stored ``samples`` on (best effort: a
    stream's end, or its reader's leaving, never fails on it)."""
    with contextlib.suppress(Exception):
        give_back(samples)


def _with_logprobs(response: Any) -> Any:
    """``response``, each choice with a ``logprobs`` (``None`` if it has none).

    LiteLLM's ``Choices`` deletes a ``logprobs`` of ``None``, which a provider's response
    (what a miss returns) keeps: ``if choice.logprobs:`` worked on the first run and raised
    ``AttributeError`` on the replay.
    """
    if isinstance(response, litellm.ModelResponse):
        for choice in response.choices:
            if not hasattr(choice, "logprobs"):
                choice.logprobs = None
    return response


# A response answers with the samples drawn for it and replays them through LiteLLM: the
# call being replayed, and its samples.
_replaying: ContextVar[tuple[_Call, list[Sample]] | None] = ContextVar(
    "mnimi_litellm_replay", default=None
)


@contextmanager
def _replayed(call: _Call, samples: list[Sample]) -> Iterator[None]:
    """LiteLLM's cache handler answers the enclosed call with ``samples``."""
    token = _replaying.set((call, samples))
    try:
        yield
    finally:
        _replaying.reset(token)


# ---------------------------------------------------------------------------------------
# Async text completions: positions claimed in call order
# ---------------------------------------------------------------------------------------


class _Turns:
    """Turns handed out in call order, so worker threads claim positions in that order.

    ``atext_completion`` runs each call on a worker thread (see
    ``_ahandle_text_completion``), and threads reach the cache in any order: concurrent
    calls of one request in an ``independent()`` scope would get their positions, and so
    their samples, in a different order on each run (law 2). A call waits for the calls
    made before it to claim their positions (or to end) before it claims its own; it
    holds its turn only until then, not while its samples are drawn.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._issued = 0
        #: The lowest turn not done yet: every turn below it is done.
        self._lowest = 0
        self._done: set[int] = set()

    def take(self) -> _Turn:
        with self._condition:
            self._issued += 1
            return _Turn(self, self._issued - 1)

    def wait_for(self, number: int) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._lowest >= number)

    def finish(self, number: int) -> None:
        with self._condition:
            self._done.add(number)
            while self._lowest in self._done:
                self._done.remove(self._lowest)
                self._lowest += 1
            self._condition.notify_all()


@dataclass
class _Turn:
    """One call's turn to claim its positions (see :class:`_Turns`)."""

    turns: _Turns
    number: int
    finished: bool = False

    def wait(self) -> None:
        self.turns.wait_for(self.number)

    def finish(self) -> None:
        """The call has claimed its positions, or will claim none (idempotent)."""
        if not self.finished:
            self.finished = True
            self.turns.finish(self.number)


_TURNS = _Turns()
#: The turn of the text completion running on this worker thread, if it has one.
_turn: ContextVar[_Turn | None] = ContextVar("mnimi_litellm_turn", default=None)


def _end_turn() -> None:
    """The running call has claimed its positions, or will claim none."""
    turn = _turn.get()
    if turn is not None:
        turn.finish()


@contextmanager
def _in_turn() -> Iterator[None]:
    """Claim positions in the enclosed block only once the calls made before have."""
    turn = _turn.get()
    if turn is not None and not turn.finished:
        turn.wait()
    try:
        yield
    finally:
        _end_turn()


# ---------------------------------------------------------------------------------------
# Calls that switch the cache off, and DSPy
# ---------------------------------------------------------------------------------------

# The installed caches, newest last: the newest one decides what LiteLLM's per-call cache
# switches mean and whether DSPy's calls go through LiteLLM.
_installed: list[MnimiCache] = []
_installed_lock = threading.Lock()


def _newest_installed() -> MnimiCache | None:
    """The installed cache that has the say on a call, if any.

    A cache the user assigned (``litellm.cache = MnimiCache(...)``, LiteLLM's own way to
    set a cache) is installed here, at the first call, and uninstalled once
    ``litellm.cache`` no longer holds it. One installed with :meth:`MnimiCache.install`
    stays until uninstalled, and so does a replication or DSPy cache however it came:
    DSPy sets ``litellm.cache = None`` behind its back, and a replica must not let the
    calls that follow reach a provider. Nor does another MnimiCache assigned over a
    replica take its place (a library's or a notebook cell's own cache): it is not
    installed, and the replica takes ``litellm.cache`` back (see :func:`_take_back`).
    """
    try:  # read without the lock: it runs on every call, and an uninstall may empty it
        newest: MnimiCache | None = _installed[-1]
    except IndexError:
        newest = None
    current = litellm.cache
    if current is newest:
        return newest
    if newest is not None and newest._assigned and not (newest.replication or newest.dspy):
        newest.uninstall()  # replaced or removed by the user, as LiteLLM's caches are
        return _newest_installed()
    if isinstance(current, MnimiCache) and not current._installed:
        if newest is not None and newest.replication:
            return newest
        current._assigned = True
        return current.install()
    return newest


def _take_back(replica: MnimiCache, current: Any) -> None:
    """Put ``replica`` back in ``litellm.cache``, which ``current`` took, with a warning.

    ``litellm.enable_cache()`` or ``litellm.cache = Cache()`` (or another MnimiCache) would
    answer the calls, and send what it lacks: a replica stays until uninstalled.
    """
    logger.warning(
        "%r is installed, so litellm.cache goes back to it (it was set to %s): a "
        "replication run sends nothing; uninstall the replica to use another cache",
        replica,
        type(current).__name__,
    )
    litellm.cache = replica


def _arm(replication: bool, dspy: bool) -> None:
    """Patch LiteLLM and wrap its entry points for a cache (done once; each is idempotent).

    Made when a cache is made, not only when it is installed: ``litellm.cache =
    MnimiCache(...)`` (LiteLLM's own way to set a cache) installs it at the first call,
    and a replication cache must stop that call too (see :func:`_newest_installed`).
    """
    # Imported here: the Responses API's answers are built on this module.
    from ._responses import ahandle_responses, handle_responses

    patch_stream_hit_check()
    keep_entry_point_signatures()
    note_router_call_params()
    skip_cache_writes_not_to_store()
    wrap_entry_points(
        {
            "completion": _handle,
            "acompletion": _ahandle,
            "responses": handle_responses,
            "aresponses": ahandle_responses,
            "atext_completion": _ahandle_text_completion,
        }
    )
    routed: dict[str, Any] = dict.fromkeys(routed_entry_points(), _handle_routed)
    routed.update({name: functools.partial(_handle_retried, name) for name in retry_helpers()})
    wrap_entry_points(routed)
    for owner in client_class_methods():
        wrap_entry_points({"create": _handle_client_create}, owner)
    if replication:
        # Nothing leaves the process: LiteLLM's other entry points are refused.
        uncached = request_entry_points(_ANSWERED | set(routed_entry_points()))
        wrap_entry_points(dict.fromkeys(uncached, _handle_uncached))
        if callable(getattr(litellm, "get_valid_models", None)):
            wrap_entry_points({"get_valid_models": _handle_model_listing})
    if replication or dspy:
        route_dspy_through_litellm(_routing_dspy)
        carry_dspy_rollout_ids()


def _steered(kwargs: dict[str, Any]) -> MnimiCache | None:
    """The newest installed cache, once it has had its say on a call of a wrapped entry point.

    Drops the call's cache switches when that cache overrides them, and puts it back when
    ``litellm.cache`` was reset to ``None`` behind its back (DSPy does so on its first
    LiteLLM call in a process). ``None``: no cache is installed, or the call is our own
    provider layer's.
    """
    cache = _newest_installed()
    if cache is None or in_provider_call():
        return None
    current = litellm.cache
    if current is None:
        litellm.cache = cache
    elif current is not cache and cache.replication:
        _take_back(cache, current)
    if cache.replication or cache.dspy:
        # DSPy switches the cache off on every call: recorded (by a cache with dspy=True,
        # the only way they were), its calls took positions, as other calls did under such
        # a cache. Any other call with switches was sent and took no position: here it
        # must take none either, or each later call of its request would read the one
        # before's.
        recorded_as_switched_off = not (cache.dspy or in_dspy_call.get())
        if cache.replication and recorded_as_switched_off and has_cache_switches(kwargs):
            metadata = kwargs.get("metadata")
            metadata = metadata if isinstance(metadata, Mapping) else {}
            kwargs["metadata"] = {**metadata, _SWITCHED_OFF: True}
        without_cache_switches(kwargs)
    return cache


def _answering_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> MnimiCache | None:
    """The cache that answers a call of a wrapped entry point, if one does (see ``_steered``).

    ``None``: LiteLLM handles the call as it is (a positional ``completion`` still reaches
    the cache through LiteLLM's handler).
    """
    cache = _steered(kwargs)
    if cache is None or args or litellm.cache is not cache or has_cache_switches(kwargs):
        return None
    return cache


def _answerer(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[MnimiCache, _Call] | None:
    """The cache that answers a ``completion`` call and the parsed call, if one does."""
    cache = _answering_cache(args, kwargs)
    if cache is None:
        return None
    if not isinstance(kwargs.get("model"), str) or not isinstance(kwargs.get("messages"), list):
        return None
    call = cache._intercept(kwargs)
    return None if call is None else (cache, call)


def _handle(original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``litellm.completion`` while a MnimiCache is installed."""
    answering = _answerer(args, kwargs)
    if answering is None:
        return original(*args, **kwargs)
    cache, call = answering
    return cache._answer(original, call, kwargs)


async def _ahandle(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.acompletion`` while a MnimiCache is installed."""
    answering = _answerer(args, kwargs)
    if answering is None:
        return await original(*args, **kwargs)
    cache, call = answering
    return await cache._aanswer(original, call, kwargs)


#: The sampling parameter a DSPy call's ``rollout_id`` is keyed as (see ``_compat``).
DSPY_ROLLOUT: Final = "dspy_rollout_id"

#: The entry points a MnimiCache answers (text completions reach it through completion,
#: async ones through the sync one: see ``_ahandle_text_completion``).
_ANSWERED: Final = frozenset(
    {"completion", "acompletion", "text_completion", "atext_completion"}
    | {"responses", "aresponses"}
)


def _handle_routed(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.text_completion``, ``completion_with_retries``, ... (see ``_compat``).

    They call LiteLLM's own ``completion`` (or ``responses``), which reaches the cache
    through LiteLLM's cache handler: only the cache switches a replication cache overrides
    need dropping on the way. Async ones too: for them ``original(...)`` is the coroutine
    that the entry point's wrapper awaits (as for the other handlers that only check).
    """
    _steered(kwargs)
    return original(*args, **kwargs)


def _handle_retried(
    helper: str, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.*_with_retries``: each attempt is a call of the wrapped entry point.

    So a retried ``responses`` call is answered from the sequences as a plain one is
    (see ``_compat.retried_entry_point``).
    """
    if _steered(kwargs) is not None:
        retried_entry_point(helper, kwargs)
    return original(*args, **kwargs)


def _set_client_params(args: tuple[Any, ...]) -> None:
    """Set right the kept parameters of the ``litellm.LiteLLM`` client a ``create`` is called on.

    See ``_compat.client_class_methods``: its ``self`` is no parameter of a completion, and
    a cache that overrides a call's cache switches drops the kept ones too.
    """
    params = getattr(args[0], "params", None) if args else None
    if isinstance(params, dict):
        params.pop("self", None)
        _steered(params)


def _handle_client_create(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.LiteLLM().chat.completions.create``: LiteLLM's, with its parameters set right."""
    _set_client_params(args)
    return _handle_routed(original, args, kwargs)


async def _ahandle_text_completion(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.atext_completion``: answered as ``litellm.text_completion`` is.

    LiteLLM runs an async text completion as the sync one on a worker thread, flagged
    ``acompletion=True``, and its client wrapper skips every cache for a call so flagged:
    a replication cache never saw it, and the request was sent. While a cache answers, the
    sync text completion runs on a worker thread without the flag, so it reaches the cache
    through ``completion`` as a sync call does (a miss drawn there is stored even if the
    caller stops waiting). Its stream, replayed from the cache, iterates with ``async for``.
    """
    if _answering_cache((), kwargs) is None:
        return await original(*args, **kwargs)
    turn = _TURNS.take()  # now, in call order: see _Turns

    def complete() -> Any:
        _turn.set(turn)  # in the worker's own copy of the context
        try:
            return litellm.text_completion(*args, **kwargs)
        finally:
            turn.finish()

    try:
        return await asyncio.to_thread(complete)
    except BaseException:
        turn.finish()  # cancelled before the worker ran: the calls after it go on
        raise


def _refuse_under_replication(original: Callable[..., Any]) -> None:
    """Refuse a call of an entry point no cache answers while a replication cache is newest."""
    cache = _newest_installed()
    if cache is not None and cache.replication and not in_provider_call():
        name = getattr(original, "__name__", "this entry point")
        raise MnimiError(
            f"litellm.{name} is not cached by MnimiCache (it answers chat completions and "
            f"the Responses API), and {cache!r} sends nothing: a replication run cannot "
            "make this call"
        )


def _handle_uncached(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.embedding``, ``image_generation``, ...: sent as they are, unless replicating."""
    _refuse_under_replication(original)
    return original(*args, **kwargs)


def _handle_model_listing(
    original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``litellm.get_valid_models``: asks the provider only with ``check_provider_endpoint``.

    Without it, it reads LiteLLM's own model list and the environment, which a replication
    run may do. With it, it sends ``GET /models`` and returns ``[]`` on any failure, so the
    refusal comes before it.
    """
    if kwargs.get("check_provider_endpoint", args[0] if args else None):
        _refuse_under_replication(original)
    return original(*args, **kwargs)


def _routing_dspy() -> bool:
    """Whether DSPy's native engine is to hand its calls to LiteLLM (and so to the cache)."""
    cache = _newest_installed()
    return cache is not None and (cache.replication or cache.dspy)


# ---------------------------------------------------------------------------------------
# LiteLLM workarounds
# ---------------------------------------------------------------------------------------


@contextmanager
def _litellm_errors(call: Mapping[str, Any]) -> Iterator[None]:
    """Let a provider failure surface as the LiteLLM exception it was.

    Callers (and a Router's retries, cooldowns and fallbacks) expect
    ``litellm.RateLimitError``, ``litellm.ContextWindowExceededError``, ... from
    ``completion``. The provider layer wraps them in a ``ProviderError``; the LiteLLM
    exception is its cause, unless the provider echoed the API key into it, in which case
    the ``ProviderError`` (which has the key scrubbed) is what the caller gets.

    The exception says the retries of ``call`` (the caller's keyword arguments), as LiteLLM
    sets them, not those of the provider call, which has LiteLLM's retries off: a Router
    reads ``num_retries`` off the exception, and took that 0 for "retry no more".
    """
    try:
        yield
    except ProviderError as error:
        cause = error.__cause__
        if isinstance(cause, openai.APIError):
            for name in ("num_retries", "max_retries"):
                if hasattr(cause, name):
                    setattr(cause, name, call.get(name))
            raise cause from None
        raise


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------


def _location(location: str | os.PathLike[str], name: str) -> str | Path:
    """A cache location as given: a Redis URL, or a directory (``~`` expanded).

    Raises:
        TypeError: ``location`` is not a ``str`` or a path.
        StoreError: It is empty (``Path("")`` would be the current directory) or a
            URL that names no store.
    """
    if not isinstance(location, str | os.PathLike):
        raise TypeError(
            f"MnimiCache's {name} must be a directory or a Redis URL, got {type(location).__name__}"
        )
    if is_redis_url(location):
        return str(location)
    check_directory_location(location)
    return anchored(location)


def _same_location(one: str | Path, other: str | Path) -> bool:
    """Whether two locations name one cache (a directory, however it is spelt)."""
    if isinstance(one, Path) and isinstance(other, Path):
        return one.resolve() == other.resolve()
    return one == other


def _open(location: str | Path, replication: bool) -> ReadThroughStore:
    """The store at ``location``; in replication mode an existing one, opened to read."""
    return ReadThroughStore(open_store(location, create=not replication, read_only=replication))


class MnimiCache(Cache):
    """A ``litellm.cache`` that answers completions from Mnimi sample sequences.

    Args:
        path: The cache directory (created with mode 0700), shared with the core API.
        replication: Never call a provider: a sample missing from the cache raises
            :class:`~mnimi_adapters.core.errors.ReplicationCacheMiss` out of
            ``litellm.completion``, before any request is sent.
        alias: Names for models (as passed to ``completion``) or Router model groups in
            cache keys, e.g. ``{"openai/deepseek-v3-huoshan": "deepseek-v3"}``. An
            aliased model is keyed without its ``api_base``.
        max_batch: The most choices one provider request may ask for; a call with a
            larger ``n`` draws the missing samples with several concurrent requests.
        slice_of: A bigger cache (directory or Redis URL) that ``path`` is a slice of:
            calls read through it (drawing into it on a miss), and ``path`` receives
            exactly the prefix of each sequence the run used, as
            ``Persistent(Persistent(model, slice_of), path)`` does (law 4). Share ``path``
            for others to replay the run with ``replication=True``. With ``replication``,
            the bigger cache is the one read in replication mode, and the slice still
            receives what the run used.
        dspy: Serve DSPy programs: their calls get the laws although DSPy switches
            LiteLLM's cache off on every call, and DSPy's native engine hands its calls
            to LiteLLM. With this, LiteLLM's per-call switches ``caching=False`` and
            ``cache={"no-cache": True}`` or ``{"no-store": True}`` are ignored for every
            caller (use ``metadata={"mnimi": "no_cache"}`` or
            :func:`~mnimi_adapters.no_cache`).

    Outside replication mode (and without ``dspy=True``) LiteLLM's per-call switches
    ``caching=False``, ``cache={"no-cache": True}`` and ``cache={"no-store": True}`` skip
    this cache: the call is sent, nothing is read or stored, and (as under ``no_cache()``)
    it takes no position of an ``independent()`` scope. A ``no-store`` call is not
    answered from the cache either: whether it were would depend on whether its sample
    happened to be stored already, and so would the positions of the calls after it.
    ``cache={"ttl": N}``, ``{"s-maxage": N}`` and ``{"namespace": ...}`` have no effect:
    sequences are append-only, so that a re-run gets the answers of the first run.
    A ``litellm.Router`` built without ``cache_responses=True`` sends ``caching=False``.
    In replication mode nothing can skip the cache: those switches are ignored, and
    DSPy's LMs, on either engine, are answered by it too.

    A streaming call with ``n=1`` whose sample is missing streams live from the provider;
    a failure before its first chunk is retried as any miss is (``num_retries`` or
    ``max_retries``), one after it ends the stream. Its sample is stored when the stream
    ends. Other streaming calls
    are replayed as LiteLLM replays cached responses: the text arrives in one chunk (all
    ``n`` choices in the first chunk), then a chunk with the finish reason.

    Example:
        >>> import litellm  # doctest: +SKIP
        >>> with MnimiCache("~/.llm_cache"):  # doctest: +SKIP
        ...     a = litellm.completion(model="openai/gpt-4o-mini", messages=msgs, n=5)
        ...     b = litellm.completion(model="openai/gpt-4o-mini", messages=msgs, n=3)
        >>> [c.message.content for c in b.choices] == [  # doctest: +SKIP
        ...     c.message.content for c in a.choices[:3]]
        True
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "~/.llm_cache",
        replication: bool = False,
        *,
        alias: Mapping[str, str] | None = None,
        max_batch: int | None = None,
        dspy: bool = False,
        slice_of: str | os.PathLike[str] | None = None,
    ) -> None:
        # The Responses API too, only so that a call that skipped the wrapped entry points
        # reaches this cache, which refuses it under replication (see _refuse_unwrapped).
        init_without_global_callbacks(
            super().__init__,
            supported_call_types=["completion", "acompletion", "responses", "aresponses"],
        )
        self.path = _location(path, "path")
        self.slice_of = None if slice_of is None else _location(slice_of, "slice_of")
        if self.slice_of is not None and _same_location(self.path, self.slice_of):
            raise ValueError(
                "slice_of names the cache the slice is kept in "
                f"({shown_location(str(self.path))}): give the bigger cache as slice_of and "
                "a new directory as path"
            )
        self.replication = bool(replication)
        self.dspy = bool(dspy)
        if alias is not None and not isinstance(alias, Mapping):
            # One cache serves many models, so each alias names the model it renames.
            raise TypeError(
                "MnimiCache's alias must be a mapping of model (or Router group) to name, "
                f"such as {{'openai/gpt-4o-mini': 'gpt-4o-mini'}}, got {type(alias).__name__}"
            )
        self.alias: dict[str, str] = dict(alias or {})
        self.max_batch = _DEFAULT_MAX_BATCH if max_batch is None else int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._store: ReadThroughStore | None = None
        #: The bigger cache read through, with ``slice_of``.
        self._source: ReadThroughStore | None = None
        self._lock = threading.Lock()
        self._layers: dict[tuple[str, str | None], CacheLayer] = {}
        self._providers: dict[tuple[Any, ...], _CacheProvider] = {}
        self._previous: Any = None
        self._installed = False
        #: Installed because the user assigned it to ``litellm.cache``.
        self._assigned = False
        with _installed_lock:
            _arm(self.replication, self.dspy)
        # For repr(), which LiteLLM formats on every call: shown_location also hides a
        # password given as a query parameter.
        self._shown_path = shown_location(str(self.path))
        self._shown_source = None if self.slice_of is None else shown_location(str(self.slice_of))

    def __repr__(self) -> str:
        mode = ", replication=True" if self.replication else ""
        mode += ", dspy=True" if self.dspy else ""
        mode += "" if self._shown_source is None else f", slice_of={self._shown_source!r}"
        return f"MnimiCache({self._shown_path!r}{mode})"

    # -- installing ---------------------------------------------------------------------

    def install(self) -> MnimiCache:
        """Make this ``litellm.cache``; :meth:`uninstall` puts the previous one back.

        Returns:
            The cache itself.

        Example:
            >>> cache = MnimiCache("llm_cache").install()  # doctest: +SKIP
            >>> litellm.cache is cache  # doctest: +SKIP
            True
        """
        # One lock for every cache: installs and uninstalls edit one chain of caches.
        with _installed_lock:
            if self._installed:
                return self
            _arm(self.replication, self.dspy)
            # A cache assigned to litellm.cache is installed over whatever was there before.
            self._previous = None if litellm.cache is self else litellm.cache
            litellm.cache = self
            self._installed = True
            _installed.append(self)
        return self

    def uninstall(self) -> None:
        """Restore the ``litellm.cache`` that was set before :meth:`install`.

        If another cache replaced this one in the meantime, it is left in place, and
        whatever would have put this one back puts this one's previous cache back instead:
        caches may be uninstalled in any order. Once no MnimiCache is installed, LiteLLM's
        entry points are its own functions again.

        Example:
            >>> cache.uninstall()  # doctest: +SKIP
        """
        with _installed_lock:
            if not self._installed:
                return
            # Out of the chain of previous caches: a cache installed later that would
            # restore this one on its uninstall restores this one's previous cache.
            for later in _installed:
                if later._previous is self:
                    later._previous = self._previous
            if litellm.cache is self:
                litellm.cache = self._previous
            self._previous = None
            self._installed = self._assigned = False
            _installed.remove(self)
            if not _installed:
                unwrap_entry_points()

    def __enter__(self) -> MnimiCache:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def close(self) -> None:
        """Uninstall and close the store (it reopens if the cache is used again)."""
        self.uninstall()
        with self._lock:
            stores = (self._store, self._source)
            self._store = self._source = None
            self._layers.clear()
        for store in stores:
            if store is not None:
                store.close()

    # -- LiteLLM's Cache interface ------------------------------------------------------

    def get_cache(self, dynamic_cache_object: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        """Answer a ``completion`` call from the sample sequences (``None``: not cached).

        Overridden here rather than in a backend: ``Cache.get_cache`` swallows every
        exception, and a ``ReplicationCacheMiss`` must reach the caller.
        """
        cache = self._handed()
        if cache is not self:
            return cache.get_cache(dynamic_cache_object, **kwargs)
        replay = _replaying.get()
        if replay is not None:
            return self._response(*replay, kwargs.get("litellm_logging_obj"))
        call = self._intercept(kwargs)
        if call is None:
            _end_turn()  # sent as it is: it claims no position
            return None
        samples = self._drawn(call, kwargs)
        return self._response(call, samples, kwargs.get("litellm_logging_obj"))

    async def async_get_cache(
        self, dynamic_cache_object: Any = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        """Async :meth:`get_cache`, for ``acompletion``."""
        cache = self._handed()
        if cache is not self:
            return await cache.async_get_cache(dynamic_cache_object, **kwargs)
        replay = _replaying.get()
        if replay is not None:
            return self._response(*replay, kwargs.get("litellm_logging_obj"))
        call = self._intercept(kwargs)
        if call is None:
            return None
        samples = await self._adrawn(call, kwargs)
        return self._response(call, samples, kwargs.get("litellm_logging_obj"))

    def _handed(self) -> MnimiCache:
        """The cache that answers a call LiteLLM's cache handler hands this one.

        This one, installed now if it was only assigned to ``litellm.cache`` and reached
        without a wrapped entry point (a ``completion`` bound before any cache was made);
        but if it was assigned over an installed replica, the replica, which takes
        ``litellm.cache`` back (see :func:`_newest_installed`).
        """
        if self._installed:
            return self
        cache = _newest_installed()
        if cache is None or cache is self or not cache.replication:
            return self
        _take_back(cache, self)
        return cache

    def get_cache_key(self, **kwargs: Any) -> str:
        """The Mnimi key of a completion call (LiteLLM shows it as ``cache_key``)."""
        replay = _replaying.get()
        if replay is not None:  # the key the samples were drawn with, not computed again
            return str((replay[1][0].origin or {}).get("key"))
        if not isinstance(kwargs.get("messages"), list) or not isinstance(kwargs.get("model"), str):
            return str(super().get_cache_key(**kwargs))
        call = self._parse(kwargs)
        return request_key(call.identity, call.request)

    def add_cache(self, result: Any, **kwargs: Any) -> None:
        """Nothing to do: samples are stored when they are drawn."""

    async def async_add_cache(
        self, result: Any, dynamic_cache_object: Any = None, **kwargs: Any
    ) -> None:
        """Nothing to do: samples are stored when they are drawn."""

    async def async_add_cache_pipeline(
        self, result: Any, dynamic_cache_object: Any = None, **kwargs: Any
    ) -> None:
        """Nothing to do: embeddings are not cached."""

    # -- answering ----------------------------------------------------------------------
    #
    # A call through ``litellm.completion`` is answered here, before LiteLLM's client
    # wrapper runs: the samples are drawn (a miss sends one LiteLLM call, the provider
    # layer's), and the response is that provider response when it alone answers the
    # call, else one built from the samples, or (for a stream, and for a hit some LiteLLM
    # callback would log) the samples replayed through LiteLLM's cache handler
    # (``_replaying``), so that LiteLLM itself logs and shapes them.

    def _answer(self, original: Callable[..., Any], call: _Call, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("stream") is True and call.n == 1:
            return self._live(original, call, kwargs)
        return self._finish(original, call, self._drawn(call, kwargs), kwargs)

    async def _aanswer(
        self, original: Callable[..., Any], call: _Call, kwargs: dict[str, Any]
    ) -> Any:
        if kwargs.get("stream") is True and call.n == 1:
            return await self._alive(original, call, kwargs)
        return await self._afinish(original, call, await self._adrawn(call, kwargs), kwargs)

    def _gate(self, call: _Call, layer: Layer) -> tuple[Hashable, str]:
        """Where ``call``'s draws meet a live stream of its request (see ``core.gates``):
        the stored sequence, which any adapter over this cache (a ``MnimiChatModel`` too)
        draws into under the same gate, and its key, which every layer over it computes
        alike (and keeps on the request)."""
        assert self._store is not None  # opened with the call's layer
        return self._store.location, layer.key_of(call.request)

    def _drawn(self, call: _Call, kwargs: Mapping[str, Any]) -> list[Sample]:
        """The samples of ``call``, drawn whole (after a live stream of it, if one runs)."""
        layer = self._layer_for(call)
        with _answering(self, call), _litellm_errors(kwargs), _in_turn():
            drawn = GATES.through(self._gate(call, layer), lambda: layer.draw(call.request, call.n))
        return _given_back(call, layer, drawn)

    async def _adrawn(self, call: _Call, kwargs: Mapping[str, Any]) -> list[Sample]:
        """Async :meth:`_drawn`."""
        layer = self._layer_for(call)
        draw = functools.partial(layer.adraw, call.request, call.n)
        with _answering(self, call), _litellm_errors(kwargs):
            drawn = await GATES.athrough(self._gate(call, layer), draw)
        return _given_back(call, layer, drawn)

    def _finish(
        self,
        original: Callable[..., Any],
        call: _Call,
        samples: list[Sample],
        kwargs: dict[str, Any],
    ) -> Any:
        response = self._drawn_response(call, samples, kwargs)
        if response is not None:
            return response
        with _replayed(call, samples):
            return _with_logprobs(original(**_replay_kwargs(samples, kwargs)))

    async def _afinish(
        self,
        original: Callable[..., Any],
        call: _Call,
        samples: list[Sample],
        kwargs: dict[str, Any],
    ) -> Any:
        response = self._drawn_response(call, samples, kwargs)
        if response is not None:
            return response
        with _replayed(call, samples):
            return _with_logprobs(await original(**_replay_kwargs(samples, kwargs)))

    def _drawn_response(self, call: _Call, samples: list[Sample], kwargs: Mapping[str, Any]) -> Any:
        """The answer to a call, made without LiteLLM: ``None`` when LiteLLM must replay it.

        The provider response itself when it alone holds the samples; else one built from
        them. Drawn samples were sent, and logged, by the LiteLLM calls of the refills that
        drew them (concurrent calls of one request share refills), so an answer with a
        fresh sample is built here, never logged again. A call of hits only is built here
        only while no LiteLLM callback, call rule or budget is set; else LiteLLM's cache
        handler replays it, so that rules and budget check it and callbacks log it as a
        hit. A stream is always replayed by LiteLLM, unlogged unless all its samples are
        hits (see ``_replay_kwargs``).
        """
        facts = _facts(samples)
        if kwargs.get("stream") or (all(facts["cache_hits"]) and hit_needs_litellm()):
            return None
        drawn = _drawn_alone(call, samples, facts)
        if drawn is not None:
            return drawn
        built = self._response(call, samples, None)
        del built[HIDDEN_PARAMS_FIELD]
        response = _with_logprobs(litellm.ModelResponse(**built))
        hidden = _built_hidden(call, samples, facts, built["model"])
        setattr(response, HIDDEN_PARAMS_FIELD, hidden)
        # LiteLLM's own responses carry it as an attribute too (its pricing reads it there).
        setattr(response, _RESPONSE_MS, hidden[_RESPONSE_MS])
        return response

    def _live(self, original: Callable[..., Any], call: _Call, kwargs: dict[str, Any]) -> Any:
        """A stream: live from the provider on a miss, replayed by LiteLLM on a hit.

        Live only while no other draw of its request runs here (see ``core.gates``): then
        it is drawn whole once it may, and replayed.
        """
        layer = self._layer_for(call)
        gate = self._gate(call, layer)
        if not GATES.start_live(gate):
            return self._replaying(original, call, self._drawn(call, kwargs), kwargs)
        sink = call.sink = _Sink(_wants_usage(kwargs))
        give_back = self._giver(call)

        def draw() -> list[Sample]:
            samples = None
            try:
                with _answering(self, call), _litellm_errors(kwargs):
                    samples = layer.draw(call.request, 1)
                    return samples
            finally:
                _ended_live(sink, samples, give_back)
                GATES.end_live(gate)
                sink.chunks.put(_DONE)

        drawing = _LIVE_DRAWS.submit(contextvars.copy_context().run, draw)
        first = sink.chunks.get()
        if first is _DONE:  # nothing went live: the sample was stored
            return self._replaying(original, call, drawing.result(), kwargs)
        return _relay(first, sink, drawing, give_back)

    def _replaying(
        self,
        original: Callable[..., Any],
        call: _Call,
        samples: list[Sample],
        kwargs: dict[str, Any],
    ) -> Iterator[Any]:
        """Stored samples as LiteLLM replays a stream: abandoned, it gives its position back.

        As a live stream does: a run that abandons it and calls again is answered the same
        way on a re-run, where the stream is a hit (else the call after it would skip a
        position, and pay for it). A generator, as a live stream is, on every run.
        """
        stream = self._finish(original, call, samples, kwargs)
        return _replay_relay(stream, functools.partial(self._giver(call), samples))

    async def _areplaying(
        self,
        original: Callable[..., Any],
        call: _Call,
        samples: list[Sample],
        kwargs: dict[str, Any],
    ) -> AsyncIterator[Any]:
        """Async :meth:`_replaying`."""
        stream = await self._afinish(original, call, samples, kwargs)
        return _areplay_relay(stream, functools.partial(self._giver(call), samples))

    def _giver(self, call: _Call) -> Callable[[list[Sample]], None]:
        """What hands positions back to the scope serving ``call`` (an abandoned stream's)."""
        layer = self._layer_for(call)
        if isinstance(layer, CacheLayer) or not caching_enabled():
            return lambda samples: None  # each call starts from position 0 again anyway
        return layer.open(call.request).give_back  # a scope's own cursor: the one serving it

    async def _alive(
        self, original: Callable[..., Any], call: _Call, kwargs: dict[str, Any]
    ) -> Any:
        """Async :meth:`_live`."""
        layer = self._layer_for(call)
        gate = self._gate(call, layer)
        if not GATES.start_live(gate, on_loop=True):
            return await self._areplaying(original, call, await self._adrawn(call, kwargs), kwargs)
        sink = call.sink = _Sink(_wants_usage(kwargs))
        give_back = self._giver(call)

        async def draw() -> list[Sample]:
            samples = None
            try:
                with _answering(self, call), _litellm_errors(kwargs):
                    samples = await layer.adraw(call.request, 1)
                    return samples
            finally:
                _ended_live(sink, samples, give_back)
                GATES.end_live(gate)
                sink.chunks.put(_DONE)

        drawing = asyncio.ensure_future(draw())
        first = await asyncio.to_thread(sink.chunks.get)
        if first is _DONE:
            return await self._areplaying(original, call, await drawing, kwargs)
        return _arelay(first, sink, drawing, give_back)

    def _intercept(self, kwargs: Mapping[str, Any]) -> _Call | None:
        """The parsed call, or ``None`` when it must go to the provider as it is."""
        if in_provider_call():  # our own provider layer drawing missing samples
            return None
        if not (self.replication or self.dspy) and has_cache_switches(kwargs):
            # Reached through LiteLLM's cache handler, which reads the cache for a call
            # that says only ``no-store`` (see MnimiCache): sent as it is.
            return None
        if "messages" not in kwargs and "input" in kwargs:
            self._refuse_unwrapped(kwargs)
            return None
        if prompt_count(kwargs) > 1:
            self._refuse_prompt_list(kwargs)
            return None
        if kwargs.get("fallbacks"):
            # LiteLLM's fallback loop sends each model's attempt through the wrapped
            # ``litellm.acompletion``, without ``fallbacks``: answered there, keyed as that
            # model's call, as a Router's fallbacks are. Answered here, the first model's
            # failure would end the call.
            return None
        return self._admitted(self._parse(kwargs))

    def _admitted(self, call: _Call) -> _Call | None:
        """``call``, or ``None`` when ``no_cache`` sends it to the provider as it is, or
        LiteLLM answers it with its mock (which sends nothing, in replication too)."""
        if call.mocked:
            return None
        if call.mode == "no_cache" or not caching_enabled():
            if self.replication:
                raise MnimiError("no_cache cannot be used with a replication cache")
            return None
        return call

    def _refuse_unwrapped(self, kwargs: Mapping[str, Any]) -> None:
        """A Responses API call that reached LiteLLM's cache handler, not the wrapped entry
        point: a reference to ``litellm.responses`` bound before the cache was installed (a
        Router built before it binds one on LiteLLM 1.105). Sent as it is, never stored;
        a replication cache refuses it rather than send it.
        """
        if self.replication:
            raise MnimiError(
                f"a litellm Responses API call for {kwargs.get('model')!r} reached the cache "
                "without MnimiCache's wrapper (litellm.responses was bound before the cache "
                "was installed), so it cannot be answered from the sequences; a replication "
                "cache refuses it rather than send it: install the cache first, or call "
                "litellm.responses looked up on the module"
            )

    def _refuse_prompt_list(self, kwargs: Mapping[str, Any]) -> None:
        """A text completion of several prompts to a completions endpoint: its answers are
        not samples of one request, so it is sent as it is, never stored; a replication
        cache refuses it rather than send it."""
        if self.replication:
            raise MnimiError(
                f"litellm.text_completion with a list of {prompt_count(kwargs)} prompts for "
                f"{kwargs.get('model')!r} is not cached by MnimiCache (the endpoint answers "
                "each prompt apart), so a replication run cannot make this call: call "
                "text_completion once per prompt"
            )

    def _parse(self, kwargs: Mapping[str, Any], kind: type[_Call] = _Call) -> _Call:
        model = kwargs.get("model")
        messages = kwargs.get("messages")
        if not isinstance(model, str) or not model:
            raise TypeError(f"completion needs a model name, got {model!r}")
        if not isinstance(messages, list | tuple):
            raise TypeError(f"completion needs a list of messages, got {type(messages).__name__}")
        metadata = kwargs.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        mode = metadata.get(METADATA_KEY)
        if mode is not None and mode not in _MODES:
            raise ValueError(
                f"metadata[{METADATA_KEY!r}] must be one of {sorted(_MODES)}, got {mode!r}"
            )
        n = kwargs.get("n")
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")

        # A Router puts the group in ``metadata`` (chat) or ``litellm_metadata`` (Responses).
        router_metadata = kwargs.get("litellm_metadata")
        routed = router_metadata if isinstance(router_metadata, Mapping) else {}
        group = metadata.get("model_group") or routed.get("model_group")
        if metadata.get("model_group_alias") or routed.get("model_group_alias"):
            # Called through a model_group_alias: the group is the one the chosen
            # deployment belongs to, so the alias and the group share sequences.
            group = (
                metadata.get("deployment_model_name")
                or routed.get("deployment_model_name")
                or group
            )
        # The parameters the Router's caller passed: the others came from the deployment
        # the Router picked (or the Router's defaults), and a group's key must not depend
        # on which deployment serves it. ``None``: not a Router call, or one whose caller
        # is unknown (every sampling parameter is keyed then).
        passed = router_call_params.get() if isinstance(group, str) and group else None

        # A mock is no sample, and may be no value a key can hold (an exception to raise).
        mocked = _mocked(kwargs, chat=kind is _Call)
        sampling: dict[str, Any] = {}
        transport: dict[str, Any] = {}
        for name, value in kwargs.items():
            if value is None:
                continue
            role = litellm_param_role(name)
            if mocked and name.startswith(_MOCK_PREFIX):
                transport[name] = value
            elif role == "sampling":
                if passed is None or name in passed or name in _call_markers():
                    sampling[name] = _sampling_value(name, value)
                else:  # the deployment's setting: sent as it says, never keyed
                    transport[name] = value
            elif role == "transport":
                transport[name] = value
        if metadata:
            # Observability (tags, trace ids) follows the call to the provider.
            forwarded = {
                k: v for k, v in metadata.items() if k not in (METADATA_KEY, _SWITCHED_OFF)
            }
            if forwarded:
                transport["metadata"] = forwarded

        provider = kwargs.get("custom_llm_provider")
        name = model
        if isinstance(provider, str) and provider and not model.startswith(f"{provider}/"):
            name = f"{provider}/{model}"
        api_base = kwargs.get("api_base") or kwargs.get("base_url")
        api_base = api_base.rstrip("/") if isinstance(api_base, str) and api_base else None
        identity: dict[str, Any] = {"params": {"temperature": LITELLM_TEMPERATURE}}
        if isinstance(group, str) and group:
            # A Router call: keyed by its group, whichever deployment serves it. A group's
            # text completion sent to a completions endpoint (raw text, not a chat turn)
            # is another request than its chat call of the same words, as the provider
            # in the model's name keys them apart outside a Router.
            identity["model"] = self.alias.get(group, group)
            if is_completions_provider(provider or model.partition("/")[0]):
                sampling.update(_COMPLETIONS_MARKER)  # per call: the group's layer is one
        elif name in self.alias:
            identity["model"] = self.alias[name]
        else:
            identity["model"] = name
            keyed = api_base or configured_api_base(
                model, provider if isinstance(provider, str) else None
            )
            if keyed:
                identity["endpoint"] = keyed_endpoint(keyed)
        rollout = dspy_rollout_id.get()
        if rollout is not None:
            # DSPy's way to ask for a new sample: each rollout keyed apart, as DSPy's own
            # cache keys it, and never sent (DSPy does not send it either).
            sampling[DSPY_ROLLOUT] = rollout
        request = Request(tuple(_plain_message(m) for m in messages), sampling)
        call = kind(identity, request, n, model, api_base, _retries(kwargs), transport, mode)
        call_id = kwargs.get(_CALL_ID)
        # Made here when the caller gave none (LiteLLM would make one for the provider
        # call): the answer and the callbacks' event of its provider call share it.
        call.call_id = call_id if isinstance(call_id, str) and call_id else str(uuid.uuid4())
        call.mocked = mocked
        call.gives_back = metadata.get(_SWITCHED_OFF) is True
        return call

    def _layer_for(self, call: _Call) -> Layer:
        """The layer that serves ``call``, as the per-call override and the scopes say."""
        base = self._layer(call)
        if call.mode == "repeatable":
            return base
        layer = scoped(base)
        if call.mode == "independent":
            with self._lock:
                # Kept on the layer itself, so it goes with the scope that made the
                # layer (a weak mapping would never free it: the wrapper refers to
                # its key). Over a scope's Independent it shares that cursor (law 2).
                wrapper = getattr(layer, _PER_CALL_INDEPENDENT, None)
                if wrapper is None:
                    wrapper = Independent(layer)
                    setattr(layer, _PER_CALL_INDEPENDENT, wrapper)
            return wrapper
        return layer

    def _layer(self, call: _Call) -> CacheLayer:
        # Under the lock: concurrent first calls must share one layer, or each would
        # keep its own cursors and hand out the same samples (law 7).
        with self._lock:
            layer = self._layers.get(call.identity_token)
            if layer is None:
                model = _CallModel(call.identity)
                if self.slice_of is None:
                    layer = CacheLayer(model, self._opened(), self.replication)
                else:
                    if self._source is None:
                        self._source = _open(self.slice_of, self.replication)
                    # The slice takes what the run used, in replication mode too.
                    source = CacheLayer(model, self._source, self.replication)
                    layer = CacheLayer(source, self._opened(), False)
                self._layers[call.identity_token] = layer
            return layer

    def _opened(self) -> ReadThroughStore:
        """The store at ``path``, opened on first use (the caller holds the lock): to
        read only in replication mode, unless it is a slice, which takes what a run used."""
        if self._store is None:
            self._store = _open(self.path, self.replication and self.slice_of is None)
        return self._store

    def _provider(self, call: _Call) -> _CacheProvider:
        """The provider model that draws for ``call`` (its credentials travel per call)."""
        slot = (type(call), call.route, call.api_base, call.retries)
        with self._lock:
            provider = self._providers.get(slot)
            if provider is None:
                options: dict[str, Any] = {}
                if call.retries is not None:
                    options["max_retries"] = call.retries
                provider = call.new_provider(self.max_batch, **options)
                self._providers[slot] = provider
            return provider

    def _response(self, call: _Call, samples: list[Sample], logging_obj: Any) -> dict[str, Any]:
        """A chat completion (as LiteLLM caches them: a dict) with one choice per sample."""
        choices = []
        for index, sample in enumerate(samples):
            message = dict(sample.message) or {"role": "assistant", "content": sample.text}
            if any(isinstance(value, dict | list) for value in message.values()):
                # The stored sample's own lists and dicts (tool calls, provider fields) must
                # not reach the caller, who may change them, nor LiteLLM, which rewrites
                # tool calls in place when it replays a stream.
                message = copy.deepcopy(message)
            choice = {
                "index": index,
                "message": message,
                "finish_reason": sample.finish_reason or "stop",
                # As LiteLLM's conversion of a cached response adds it.
                "provider_specific_fields": {},
            }
            if sample.logprobs is not None:
                choice["logprobs"] = copy.deepcopy(sample.logprobs)
            choices.append(choice)
        prompt_tokens = sum(s.prompt_tokens for s in samples)
        completion_tokens = sum(s.completion_tokens for s in samples)
        facts = _facts(samples)
        # Preset, because LiteLLM would price the whole usage, replayed samples included.
        hidden = HiddenParams(response_cost=_cost(samples, facts), mnimi=facts)
        hidden.hit = all(facts["cache_hits"])
        tell_logging_about_hit(
            logging_obj, hidden.hit, lambda: _provider_name(call.route, call.transport)
        )
        first = samples[0]
        return {
            "id": first.response_id or f"chatcmpl-{first.draw_id}",
            "object": "chat.completion",
            "created": int(first.created),
            "model": first.model or call.route,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": first.system_fingerprint,
            # Not a response field: LiteLLM copies unknown keys onto the response object.
            HIDDEN_PARAMS_FIELD: hidden,
        }
