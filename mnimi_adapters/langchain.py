"""LangChain adapter: :class:`MnimiChatModel`, a chat model over Mnimi sample sequences.

``MnimiChatModel`` drops into LCEL chains and LangGraph agents like any other
``BaseChatModel``. Every call becomes a :class:`~mnimi_adapters.core.Request`
(messages plus sampling parameters) and is answered from that request's
append-only sample sequence, so LangChain code gets the Mnimi semantics:

* outside any scope a call is *repeatable*: identical requests replay sample 0
  (and ``n=k`` replays samples ``0..k-1``), in this run and in later ones;
* inside ``with independent():`` successive identical calls continue the
  sequence, so retries and pass@k get fresh, statistically independent samples
  which a later run replays in the same order;
* ``with repeatable():`` nested in ``independent()`` fixes the samples for one
  attempt, exactly like the ``Repeatable(Independent(...))`` wrappers.

Example:
    >>> from mnimi_adapters import independent
    >>> from mnimi_adapters.langchain import MnimiChatModel
    >>> chat = MnimiChatModel(model="fireworks_ai/accounts/fireworks/models/qwen3-8b")
    >>> first = chat.invoke("Pick a number")  # doctest: +SKIP
    >>> chat.invoke("Pick a number").content == first.content  # doctest: +SKIP
    True
    >>> with independent():  # doctest: +SKIP
    ...     a, b = chat.invoke("Pick a number"), chat.invoke("Pick a number")  # two samples
"""

from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import contextvars
import difflib
import functools
import inspect
import itertools
import json
import logging
import os
import queue
import re
import threading
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, Literal, Self, cast

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import (
    BaseChatModel,
    BaseLanguageModel,
    BaseLLM,
    LanguageModelInput,
)
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.load.serializable import (
    SerializedConstructor,
    SerializedNotImplemented,
    to_json_not_implemented,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    ToolCall,
    ToolCallChunk,
    convert_to_messages,
    convert_to_openai_messages,
    message_chunk_to_message,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
    parse_tool_call,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableMap,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
)
from langchain_core.runnables.config import get_config_list, get_executor_for_config
from langchain_core.runnables.configurable import DynamicRunnable
from langchain_core.tools import BaseTool
from langchain_core.tracers.context import register_configure_hook
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from langsmith import tracing_context
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Secret,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from ._compat import (
    GraphRun,
    InvocationParamsWithoutCredentials,
    LLMOutputOfTheWrappedModel,
    NodeAttempt,
    carry_node_attempts_into_graphs,
    enclosing_graph_runs,
    in_runnable_context,
    is_configurable_chat_model,
    node_attempt,
    private_attributes,
    uses_responses_api,
    without_hooked_handlers,
)
from .core import (
    BatchedModel,
    CacheLayer,
    Layer,
    MnimiError,
    Persistent,
    ProviderError,
    ProviderRequestError,
    ReplicationCacheMiss,
    Request,
    Sample,
    scoped,
)
from .core.errors import rebuilt
from .core.gates import GATES, Abandonment
from .core.layers import start_apart
from .core.model import requests_at_most, usable
from .core.request import (
    canonical,
    canonical_json,
    is_credential,
    is_query_fields,
    is_sampling_param,
    keyed_params,
    names_credential,
    reveal_secret,
    sent_secrets,
    stop_list,
    url_secrets,
)
from .core.sample import new_draw_id, split_evenly, stream_pieces
from .core.scopes import Kind, Scope, caching_enabled, current_scope
from .core.stores import is_redis_url, shown_location, url_has_password
from .core.stores.base import anchored
from .providers import (
    LiteLLMModel,
    LiteLLMRequest,
    keyed_endpoint,
    provider_call_active,
    refuses_n,
)

__all__ = [
    "MnimiChatModel",
    "MnimiLLMCache",
    "ModelProviderRequestError",
    "ModelReplicationCacheMiss",
    "WrappedChatModel",
    "wrapped_identity",
]

try:
    from langchain_core.exceptions import ModelError
except ImportError:  # langchain-core before 1.5 has no error taxonomy: its helpers retry all

    class ModelError(Exception):  # type: ignore[no-redef]
        """Stands for LangChain's ``ModelError`` where langchain-core has none."""

        is_retryable = False


class ModelReplicationCacheMiss(ReplicationCacheMiss, ModelError):
    """The :class:`~mnimi_adapters.ReplicationCacheMiss` this module's chat models and
    cache raise: also LangChain's ``ModelError``, and never retryable.

    LangChain's retry helpers (the agents' ``ModelRetryMiddleware``) retry any exception
    but a ``ModelError`` that says it is not retryable, and may then answer with the
    failure as a message: a replication run would retry a miss that cannot pass, then
    finish as if nothing had failed. Catch it as ``ReplicationCacheMiss``.

    Example:
        >>> from mnimi_adapters import ReplicationCacheMiss
        >>> issubclass(ModelReplicationCacheMiss, ReplicationCacheMiss)
        True
    """

    is_retryable = False


class ModelProviderRequestError(ProviderRequestError, ModelError):
    """The :class:`~mnimi_adapters.ProviderRequestError` this module's chat models raise:
    also LangChain's ``ModelError``, retryable where the failure was of a retried kind.

    So LangChain's retry helpers give up at once on an answer that retrying cannot
    change (a 401, a 400), as they do for the partner models' own errors. Catch it as
    ``ProviderRequestError``.
    """

    @property
    def is_retryable(self) -> bool:  # type: ignore[override]
        """Whether retrying the same request may succeed (a rate limit, a server error)."""
        return self.retryable


#: The LangChain kind of each error a chat model of this module raises.
_MODEL_ERRORS: dict[type[BaseException], type[BaseException]] = {
    ReplicationCacheMiss: ModelReplicationCacheMiss,
    ProviderRequestError: ModelProviderRequestError,
}


#: The errors a chat model of this module raises as their LangChain kinds.
_JOINED = tuple(_MODEL_ERRORS)


def _as_model_error(error: BaseException) -> BaseException:
    """``error`` as the LangChain kind of itself (see above), its traceback kept; raised
    ``from error.__cause__``: its cause as it was (none where a credential was echoed)."""
    kind = _MODEL_ERRORS.get(type(error))
    if kind is None:
        return error
    return rebuilt(kind, error.args, error.__dict__).with_traceback(error.__traceback__)


# Constructor arguments that configure the provider layer MnimiChatModel builds itself;
# with ``layer=`` they belong to that layer and setting them here would be silently ignored.
_LAYER_FIELDS = (
    "temperature",
    "cache_dir",
    "slice_of",
    "replication",
    "max_batch",
    "alias",
    "api_base",
    "api_key",
    "timeout",
    "max_retries",
)

# Constructor arguments that configure how the string form calls LiteLLM; a wrapped chat
# model has its own, and setting them here would be silently ignored.
_WRAPPED_MODEL_FIELDS = (
    "temperature",
    "api_base",
    "api_key",
    "timeout",
    "max_retries",
    "model_kwargs",
)

# Per-call kwargs LangChain may pass that are not request parameters.
_CALL_ONLY = frozenset({"stream", "stream_options", "n", "model"})

logger = logging.getLogger("mnimi_adapters.langchain")

# Layers built by MnimiChatModel instances, one per sequence identity (model, temperature,
# alias, endpoint, store, replication). Scopes keep one cursor per layer, so two copies of
# one chat model inside ``with independent():`` must draw from one layer or they would hand
# out the same samples twice; that holds for copies that differ only in how requests are
# sent (api_key, timeout, max_retries, max_batch) too, so those travel with each call.
# Weak values: a layer lives as long as a chat model (or a scope) uses it.
_SHARED_LAYERS: weakref.WeakValueDictionary[tuple[Any, ...], Layer] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _hide(name: str, value: Any) -> Any:
    """A credential's value wrapped so that no repr, dump or log line shows it."""
    return _secret(value) if is_credential(name) else value


def _secret(value: Any) -> Any:
    """``value`` wrapped as a secret (``None`` and a secret already wrapped as they are)."""
    if value is None or isinstance(value, SecretStr | Secret):
        return value
    return SecretStr(value) if isinstance(value, str) else Secret(value)


def _public_kwargs(
    kwargs: Mapping[Any, Any], *, masked: bool, query: bool = False
) -> dict[Any, Any]:
    """Provider keywords for a repr, a dump or a trace: each credential, a keyword or a
    field of an object keyword at any depth (``extra_body={"session_token": ...}``, a
    query's ``code`` and ``sig`` too), wrapped as a secret (``masked``) or left out."""
    public: dict[Any, Any] = {}
    for name, value in kwargs.items():
        if names_credential(name, query):
            if masked:
                public[name] = _secret(value)
        elif isinstance(value, Mapping):
            public[name] = _public_kwargs(value, masked=masked, query=is_query_fields(name))
        else:
            public[name] = value
    return public


def _shown_url(url: str | None) -> str | None:
    """An endpoint as its cache key names it: without a password, token or query credential."""
    return keyed_endpoint(url) if url and url_secrets(url) else url


def _over_litellm(layer: Layer) -> bool:
    """Whether ``layer`` draws from a LiteLLMModel (so LiteLLM's rule decides the keys)."""
    # Not Layer.root: a custom layer need not be a Model nor name its inner layer.
    while isinstance(getattr(layer, "inner", None), Layer):
        layer = layer.inner  # type: ignore[attr-defined]
    return isinstance(layer, LiteLLMModel)


#: Keyword arguments LangChain's ``invoke``, ``stream`` and ``generate`` take out of a call
#: before ``_generate`` or ``_stream`` sees it: they name the structured output for traces.
_TRACE_LABELS = ("ls_structured_output_format", "structured_output_format")

_get_runtime: Callable[[], Any] | None = None
_langgraph_checked = False


def _watch_langgraph() -> None:
    """Find LangGraph's runtime once, and let graphs run in a node know its attempt."""
    global _get_runtime, _langgraph_checked
    if _langgraph_checked:
        return
    # Imported once, lazily: LangGraph is optional and its import is not free.
    try:
        from langgraph.runtime import get_runtime
    except ImportError:
        _get_runtime = None
    else:
        _get_runtime = get_runtime
        carry_node_attempts_into_graphs(current_scope)
    _langgraph_checked = True


#: How many outermost LangGraph tasks keep the scopes of their attempts: the most recent.
#: More than a graph runs at once (a task forgotten while it retries starts its attempts
#: afresh, and forgets another in turn), and a few MB at most.
_TASK_MEMORY = 4096


class _TaskScopes:
    """The scopes of one outermost LangGraph task's runs and attempts, and of what runs in them.

    Outside any scope, the attempts of a task are ``repeatable()`` blocks in one
    ``independent()`` block of the task's: identical calls of an attempt repeat. In an
    ``independent()`` block (the one open when the task first ran), each attempt is a
    ``repeatable()`` block in it, and each run of the attempt an ``independent()`` block
    in that: the calls of a run continue the block's sequences. A task run again from its
    start (LangGraph resumes an ``interrupt()`` so, with the same task id and its attempts
    counted from 1) goes on from its latest attempt, so it is served what that attempt was
    shown, and a retry of it draws afresh. A graph run in the node nests its tasks' blocks
    in the attempt's, and a scope the node's code opens nests in the blocks around it.
    Each is made once and kept, so every call of an attempt draws from the same wrappers.
    """

    def __init__(self, root: Scope | None) -> None:
        #: The ``independent()`` block the task first ran in; ``None`` outside any.
        self.root = root
        self._lock = threading.Lock()
        self._scopes: dict[tuple[int, Hashable], Scope] = {}
        #: Per task (this one and those of graphs run in it): when its latest run began,
        #: the attempts of its earlier runs but their last, and its highest attempt yet.
        self._runs: dict[str, tuple[float | None, int, int]] = {}

    def nested(self, parent: Scope | None, kind: Kind, what: Hashable) -> Scope:
        """The ``kind`` scope standing for ``what`` (a task, an attempt, a run, or a scope
        the node's code opened) in ``parent``."""
        # Every parent is kept here (or is None), so its id is not reused while it is.
        key = (id(parent), what)
        with self._lock:
            scope = self._scopes.get(key)
            if scope is None:
                scope = self._scopes[key] = Scope(kind, parent)
            return scope

    def _number(self, node: NodeAttempt) -> int:
        """``node``'s attempt counted over every run of its task: a run's first attempt is
        its task's latest attempt before it."""
        task, attempt, began = node
        with self._lock:
            latest, before, highest = self._runs.get(task, (began, 0, 0))
            if began != latest:  # run again from its start
                latest, before = began, max(highest - 1, 0)
            number = before + attempt
            self._runs[task] = (latest, before, max(highest, number))
            return number

    def attempt(self, parent: Scope | None, node: NodeAttempt) -> Scope:
        """The block the calls of ``node``'s attempt draw from, in ``parent``."""
        task, _, began = node
        number = self._number(node)
        if self.root is None:
            block = self.nested(parent, "independent", ("task", task))
            return self.nested(block, "repeatable", ("attempt", task, number))
        block = self.nested(parent, "repeatable", ("attempt", task, number))
        return self.nested(block, "independent", ("run", task, began))

    def opened(self, parent: Scope, outer: object, inner: object) -> Scope:
        """``parent`` with the scopes the node's code opened in ``outer`` up to ``inner``
        nested in it, as they are nested in each other."""
        opened: list[Scope] = []
        scope = inner
        while isinstance(scope, Scope) and scope is not outer:
            opened.append(scope)
            scope = scope.parent
        for scope in reversed(opened):
            parent = self.nested(parent, scope.kind, scope)
        return parent


_task_scopes: collections.OrderedDict[str, _TaskScopes] = collections.OrderedDict()
_task_scopes_lock = threading.Lock()


def _scopes_of_task(task: str, started_in: object) -> _TaskScopes | None:
    """The scopes of the outermost task ``task``, kept for the most recent tasks only.

    ``None`` for a task first run in a ``repeatable()`` block: its calls follow the block.
    """
    with _task_scopes_lock:
        scopes = _task_scopes.get(task)
        if scopes is None:
            if started_in is not None and not (
                isinstance(started_in, Scope) and started_in.kind == "independent"
            ):
                return None
            scopes = _task_scopes[task] = _TaskScopes(started_in)
            while len(_task_scopes) > _TASK_MEMORY:
                _task_scopes.popitem(last=False)
        else:
            _task_scopes.move_to_end(task)
        return scopes


def _scoped(base: Layer) -> Layer:
    """The layer a call draws from: ``base`` wrapped by the open scopes, and in a LangGraph
    node, by the blocks of its task's runs and attempts.

    LangGraph's ``RetryPolicy`` re-runs a failed node with identical input; outside any
    scope its attempts behave as ``with independent(): for attempt ...: with
    repeatable(): node(...)``, so an attempt draws from the first position its task's
    earlier attempts were not served (a failed draw is served nothing), identical calls in
    one attempt repeat, and a re-run of the graph replays every attempt. In a graph run in
    ``independent()``, an attempt's calls continue the block's sequences. A node run again
    from its start on resume is served what its latest attempt was (see
    :class:`_TaskScopes`). A graph run in the node (a subgraph, an agent) nests its tasks'
    attempts in the node's, and a scope the node's code opens nests in its attempt. The
    attempt is ``get_runtime().execution_info`` (public API: ``task_id`` stays the same
    across the attempts of one task, ``node_attempt`` counts them,
    ``node_first_attempt_time`` tells the runs apart). Only for a cached layer: a plain
    model draws afresh anyway.
    """
    _watch_langgraph()
    # LangGraph's get_runtime() raises outside a runnable context; checking first keeps
    # plain calls (the common case) free of a raised exception.
    if _get_runtime is None or not isinstance(base, CacheLayer) or not in_runnable_context():
        return scoped(base)
    try:
        node = node_attempt(_get_runtime())
    except Exception:  # a runnable outside any graph has no runtime
        node = None
    if node is None or not caching_enabled():
        return scoped(base)
    now = current_scope()
    # A graph started before LangGraph was watched is known by its node alone, and the
    # scope open when the first watched one started (or now) taken for its own.
    runs = enclosing_graph_runs() or (GraphRun(now, None),)
    if runs[0].node is not None:
        runs = (GraphRun(runs[0].noted, None), *runs)
    nodes = [run.node for run in runs[1:]] + [node]
    starts = [run.noted for run in runs] + [now]
    outermost = next(here for here in nodes if here is not None)
    tasks = _scopes_of_task(outermost[0], runs[0].noted)
    if tasks is None:
        return scoped(base)
    scope = tasks.root
    for here, (outer, inner) in zip(nodes, itertools.pairwise(starts), strict=True):
        if here is not None:
            scope = tasks.attempt(scope, here)
        if scope is not None:
            scope = tasks.opened(scope, outer, inner)
    assert scope is not None  # the node of this call has its attempt
    return scope.wrap(base)


def _is_pydantic_class(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def _usage(sample: Sample) -> UsageMetadata:
    prompt, completion = sample.prompt_tokens, sample.completion_tokens
    return UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


def _parse_tool_calls(
    raw_calls: list[dict[str, Any]],
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    tool_calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except Exception as error:  # a provider's malformed JSON arguments
            function = raw.get("function") or {}
            invalid.append(
                invalid_tool_call(
                    name=function.get("name"),
                    args=function.get("arguments"),
                    id=raw.get("id"),
                    error=str(error),
                )
            )
            continue
        if parsed is not None:
            tool_calls.append(
                ToolCall(name=parsed["name"], args=parsed["args"], id=parsed.get("id"))
            )
    return tool_calls, invalid


# -- wrapping a LangChain chat model --------------------------------------------------------

# Words of a wrapped model's identifying params that say how a request is sent, not what it
# samples from (``streaming``, ``max_retries``, ``default_request_timeout``, Mistral's
# ``max_concurrent_requests``): never keyed.
_SENDING_WORDS = frozenset(
    {"stream", "streaming", "timeout", "retries", "retry", "concurrent", "concurrency"}
)
# With "api", words of a setting that says which version or kind of an API carries the
# call (Azure's ``openai_api_version``, ``openai_api_type``): never keyed, as LiteLLM's
# ``api_version`` is not.
_API_SENDING_WORDS = frozenset({"version", "type"})
# Words of a field that names the endpoint a wrapped model talks to (``openai_api_base``,
# ``anthropic_api_url``, ``azure_endpoint``): keyed unless an alias is given, as api_base.
_ENDPOINT_WORDS = frozenset({"url", "endpoint", "base"})
# Where a stored sample of a wrapped model keeps the model's own message (LangChain's dict),
# and where MnimiLLMCache keeps a cached response's generations.
_LANGCHAIN_MESSAGE = "langchain"
_LANGCHAIN_GENERATIONS = "langchain_generations"
# Samples one request of a wrapped model with an ``n`` field asks for at most, by default.
_WRAPPED_MAX_N = 16
# Words of a reply's metadata entry that holds HTTP headers (``ChatOpenAI``'s
# ``include_response_headers``): they say how an answer was sent, not what it is, and carry
# credentials (a session cookie, a gateway echoing the Authorization it got).
_HEADER_WORDS = frozenset({"header", "headers", "cookie", "cookies"})
# What a live stream's reader receives once the draw has ended, stored or failed.
_DONE = object()


# Words of a model setting that say how it is called, not what it answers: headers and
# query parameters (where gateways take their keys), HTTP clients, proxies, and the
# account billed.
_CALL_WORDS = frozenset(
    {"headers", "query", "client", "proxy", "proxies", "organization", "project"}
)
# Settings that shape the answer but are not in a model's ``_identifying_params``: a
# Responses API answer (content blocks) is no Chat Completions one, nor is a "v1" message.
_SHAPE_SETTINGS = ("use_responses_api", "output_version")


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def _keyed_setting(name: str) -> bool:
    words = _words(name)
    sending = words & _SENDING_WORDS or ("api" in words and words & _API_SENDING_WORDS)
    return is_sampling_param(name) and not sending


def _jsonable(value: Any) -> Any:
    try:
        return canonical(value)
    except TypeError:  # a client object or a callable: what it is, never its repr
        return f"<{type(value).__qualname__}>"


def wrapped_identity(
    chat: BaseChatModel, alias: str | None = None, ls_params: LangSmithParams | None = None
) -> dict[str, Any]:
    """What identifies a LangChain chat model's outputs in a cache key, credentials left out.

    Its class, its model name (``ls_provider/ls_model_name`` of ``_get_ls_params``; an
    ``alias`` stands for both), the sampling settings of ``_identifying_params`` (the identity LangChain's
    own caches key on) without ``n``, streaming, timeouts, retries or credentials, what shapes
    the answer besides (``use_responses_api``, ``output_version``, where set), and,
    without an alias, the endpoint it talks to (``base_url``, userinfo removed).

    Args:
        chat: The wrapped chat model.
        alias: The model's name in keys instead of its own; its class, the name its
            provider serves it under and the endpoint are then left out.
        ls_params: ``chat._get_ls_params()``, if the caller has it already.

    Returns:
        ``{"model": ..., "params": {...}}``, with ``"endpoint"`` where the model names one.

    Example:
        >>> from langchain_openai import ChatOpenAI
        >>> wrapped_identity(ChatOpenAI(model="gpt-4o", api_key="sk-x", temperature=0.5))
        {'model': 'openai/gpt-4o', 'params': {'langchain_class': 'langchain_openai.chat_models.base.ChatOpenAI', 'model_name': 'gpt-4o', 'model': 'gpt-4o', 'temperature': 0.5}}
    """  # noqa: E501
    cls = type(chat)
    params: dict[str, Any] = {"langchain_class": f"{cls.__module__}.{cls.__qualname__}"}
    for name, value in chat._identifying_params.items():
        if value is None or not _keyed_setting(name):
            continue
        if isinstance(value, Mapping):  # model_kwargs: its credentials stay out too
            kept = {k: v for k, v in value.items() if _keyed_setting(str(k))}
            if value and all(is_credential(str(k)) for k in value):
                continue  # credentials alone: keyed as if not given, as keyed_params does
            value = kept
        params[name] = _jsonable(value)
    for name in _SHAPE_SETTINGS:
        value = getattr(chat, name, None)
        if value is not None:
            params.setdefault(name, _jsonable(value))
    params.update(_settings_beyond(chat, params))
    if ls_params is None:
        ls_params = chat._get_ls_params()
    named = [ls_params.get("ls_provider"), ls_params.get("ls_model_name")]
    if alias is not None:
        # The alias is the model, whoever serves it under whatever name: one model on two
        # providers (two classes) or under two served names shares its sequences.
        params = {
            name: value
            for name, value in params.items()
            if name != "langchain_class" and not _names_the_model(name, value, named[1])
        }
    identity: dict[str, Any] = {
        "model": alias or "/".join(str(part) for part in named if part) or cls.__name__,
        "params": params,
    }
    if alias is None:
        endpoint = {
            name: keyed_endpoint(value)
            for field, name in _endpoint_fields(cls)
            if isinstance(value := getattr(chat, field, None), str) and value
        }
        if endpoint:
            identity["endpoint"] = endpoint
    return identity


def _names_the_model(name: str, value: Any, served: Any) -> bool:
    """Whether a setting is the name a provider serves the model under (``model_name``,
    ``model``, ``model_id``, Azure's ``deployment_name``, ...)."""
    return isinstance(value, str) and (
        value == served or name in ("model", "model_name", "model_id")
    )


def _settings_beyond(chat: BaseChatModel, params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the user gave a model that its ``_identifying_params`` leave out, though
    they reach the request (``ChatAnthropic``'s ``stop_sequences``, ``betas``,
    ``mcp_servers``): keyed as :func:`_keyed_settings` keys a setting, unless the
    identifying params hold the value already under another name (``ChatOpenAI``'s
    ``max_tokens`` as ``max_completion_tokens``, its ``model_kwargs`` merged in)."""
    beyond: dict[str, Any] = {}
    for name in _own_settings(chat):
        value = getattr(chat, name, None)
        if value is None or name in params:
            continue
        keyed = keyed_params({name: _jsonable(value)}).get(name)
        if keyed in (None, {}, []) or _held(keyed, params):
            continue
        beyond[name] = keyed
    return beyond


def _own_settings(chat: BaseChatModel) -> list[str]:
    """The fields the user set on a chat model that may decide its answer: not LangChain's
    own (cache, callbacks, tags, rate limiter), nor credentials, clients, headers, the
    endpoint, timeouts, retries or streaming, nor those :data:`_SHAPE_SETTINGS` key."""
    return sorted(
        name
        for name in chat.model_fields_set
        if name not in BaseChatModel.model_fields
        and name not in _SHAPE_SETTINGS
        and _keyed_setting(name)
        and not _words(name) & (_CALL_WORDS | _ENDPOINT_WORDS)
    )


def _held(value: Any, params: Mapping[str, Any]) -> bool:
    """Whether ``params`` hold ``value``, or each item of a mapping ``value``."""
    if isinstance(value, dict) and value:
        return all(k in params and params[k] == v for k, v in value.items())
    return any(held == value and type(held) is type(value) for held in params.values())


@functools.lru_cache(maxsize=256)
def _endpoint_fields(cls: type[BaseChatModel]) -> tuple[tuple[str, str], ...]:
    """The (field, name) pairs of a chat model class that hold its endpoint."""
    return tuple(
        (field, info.alias or field)
        for field, info in cls.model_fields.items()
        if not is_credential(field)
        and (_words(field) | _words(info.alias or field)) & _ENDPOINT_WORDS
    )


_PLAIN = (str, int, float, bool, type(None))
# What _plain_copy gives for a value that is not plain JSON.
_NOT_PLAIN = object()


def _plain_copy(value: Any) -> Any:
    """A deep copy of plain JSON data (dicts with str keys, lists, tuples, scalars), or
    ``_NOT_PLAIN`` for anything else, whose key cannot be told from a comparison."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        copied = {k: _plain_copy(v) for k, v in value.items() if type(k) is str}
        ok = len(copied) == len(value) and _NOT_PLAIN not in copied.values()
        return copied if ok else _NOT_PLAIN
    if kind is list or kind is tuple:
        items = [_plain_copy(v) for v in value]
        return kind(items) if all(item is not _NOT_PLAIN for item in items) else _NOT_PLAIN
    return _NOT_PLAIN


def _same(copied: Any, value: Any) -> bool:
    """Whether ``value`` equals a :func:`_plain_copy`, types included (``True`` is not ``1``,
    which ``==`` says and a key does not)."""
    kind = type(copied)
    if kind is not type(value):
        return False
    if kind is dict:
        return len(copied) == len(value) and all(
            k in value and _same(v, value[k]) for k, v in copied.items()
        )
    if kind is list or kind is tuple:
        return len(copied) == len(value) and all(map(_same, copied, value))
    return bool(copied == value)


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON: a parsed pydantic object in a message becomes its dict."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    dump = getattr(value, "model_dump", None)
    return _json_safe(dump()) if callable(dump) else _jsonable(value)


@functools.lru_cache(maxsize=256)
def _holds_headers(name: str) -> bool:
    return bool(_words(name) & _HEADER_WORDS)


def _without_headers(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A reply's metadata (or generation info) without the HTTP headers it may carry: never
    stored, nor replayed from a cache written before they were left out."""
    return {k: v for k, v in (metadata or {}).items() if not _holds_headers(str(k))}


def _facts(sample: Sample) -> dict[str, Any]:
    """Where a sample came from: the cache facts every answer's metadata carries."""
    origin = sample.origin or {}
    return {
        "cache_hit": bool(origin.get("cache_hit", False)),
        "sequence_index": origin.get("index"),
        "cache_key": origin.get("key"),
        "draw_id": sample.draw_id,
    }


def _sample_of(
    message: BaseMessage,
    response_id: str,
    usage: UsageMetadata | None,
    shares: int = 1,
    reply: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Sample:
    """A wrapped model's answer as a sample: OpenAI form for people, LangChain's for replay.

    ``usage`` and ``shares``: one of ``shares`` samples a response answered at once, with
    its share of the usage; the cost the model reports (``response_cost``, ChatLiteLLM's)
    is shared evenly too. ``reply``: what ``generate`` said of it besides the message
    (see :func:`_reply`).
    """
    message = message_chunk_to_message(message)
    stored = _json_safe(message_to_dict(message))
    stored["data"]["response_metadata"] = _without_headers(stored["data"].get("response_metadata"))
    for name, value in (reply or {}).items():
        if value:
            stored[name] = _json_safe(_without_headers(value))
    if usage is not None:  # one share of a response that answered several samples
        stored["data"]["usage_metadata"] = dict(usage)
    tokens = stored["data"].get("usage_metadata") or {}
    metadata = message.response_metadata
    return Sample(
        text=message.text,
        message={**convert_to_openai_messages(message), _LANGCHAIN_MESSAGE: stored},
        finish_reason=metadata.get("finish_reason") or metadata.get("stop_reason"),
        usage={
            "prompt_tokens": int(tokens.get("input_tokens", 0)),
            "completion_tokens": int(tokens.get("output_tokens", 0)),
        },
        model=metadata.get("model_name") or metadata.get("model"),
        response_id=response_id,
        cost=_reported_cost(metadata.get("response_cost"), shares),
    )


def _reported_cost(cost: Any, shares: int) -> float | None:
    """A share of the cost a wrapped model reports, or ``None`` where it reports none."""
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0:
        return None
    return float(cost) / shares


def _parsed_everywhere(messages: list[BaseMessage]) -> list[BaseMessage]:
    """``messages``, each parsed as the first one is, when it is a structured answer.

    langchain-openai parses the first choice of a structured-output response only (it
    sets ``additional_kwargs["parsed"]`` on generation 0 alone), and its parser refuses a
    message without one. Here a response of ``n`` choices answers ``n`` calls, and each
    of them parses: the others get the JSON object of their own text.
    """
    if len(messages) < 2 or messages[0].additional_kwargs.get("parsed") is None:
        return messages
    filled = messages[:1]
    for message in messages[1:]:
        extra = message.additional_kwargs
        if "parsed" not in extra and isinstance(message.content, str):
            try:
                parsed = json.loads(message.content)
            except ValueError:  # not JSON (a refusal, a cut answer): the parser says so
                parsed = None
            if isinstance(parsed, dict):
                message = message.model_copy(
                    update={"additional_kwargs": {**extra, "parsed": parsed}}
                )
        filled.append(message)
    return filled


def _samples_of(generations: Sequence[Any], llm_output: dict[str, Any] | None) -> list[Sample]:
    """The samples of one response (its generations, and its ``llm_output``); each of ``n``
    generations gets its share of the usage."""
    response_id = new_draw_id()
    messages = _parsed_everywhere([g.message for g in generations])
    replies = [
        {"generation_info": g.generation_info, "llm_output": llm_output} for g in generations
    ]
    usage = getattr(messages[0], "usage_metadata", None) if messages else None
    if len(messages) < 2 or not usage:
        return [
            _sample_of(m, response_id, None, 1, r) for m, r in zip(messages, replies, strict=True)
        ]
    # The response's usage rides on every generation; each sample keeps its share.
    inputs = split_evenly(usage["input_tokens"], len(messages))
    outputs = split_evenly(usage["output_tokens"], len(messages))
    return [
        _sample_of(
            m,
            response_id,
            UsageMetadata(input_tokens=i, output_tokens=o, total_tokens=i + o),
            len(messages),
            r,
        )
        for m, i, o, r in zip(messages, inputs, outputs, replies, strict=True)
    ]


def _reply(sample: Sample, name: str) -> dict[str, Any] | None:
    """What the wrapped model's ``generate`` said of a stored sample besides its message,
    or None where nothing was kept.

    Kept beside the message, and replayed: ``"generation_info"`` (the generation's finish
    reason, logprobs) and ``"llm_output"`` (the response's: ChatOpenAI's token usage, model
    name, system fingerprint). Optional: samples stored before they were kept, and
    streamed ones (a stream has neither), replay without them.
    """
    stored = sample.message.get(_LANGCHAIN_MESSAGE)
    return stored.get(name) if isinstance(stored, dict) else None


def _stored_message(sample: Sample, facts: bool = False) -> AIMessage | None:
    """The wrapped model's own message a sample holds, or None for a string-form sample;
    with ``facts``, the cache facts added to its metadata."""
    stored = sample.message.get(_LANGCHAIN_MESSAGE)
    if not isinstance(stored, dict):
        return None
    if stored.get("type") != "ai":
        return None
    data = stored["data"]
    if facts:
        metadata = {**_without_headers(data.get("response_metadata")), **_facts(sample)}
        if metadata["cache_hit"] and "response_cost" in metadata:
            metadata["response_cost"] = 0.0  # a replay costs nothing, as MnimiCache's hits
        data = {**data, "response_metadata": metadata}
    # Not validated again: the dict is LangChain's own dump of a valid AIMessage, and
    # validation would cost a cache hit several microseconds.
    return AIMessage.model_construct(**data)


class _Sink:
    """Where a live stream's chunks go while the wrapped model produces them, each with
    whether it closes the answer (see :func:`_for_reader`).

    The stream runs on a refill thread or the library's event loop (so a paid sample is
    stored whatever happens to the caller); its consumer reads here, on its own thread
    or loop. ``abandoned`` is the consumer's word that nobody reads any more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None
        self.abandoned = Abandonment()
        #: The draw id of the sample streamed live, once it is complete.
        self.draw_id: str | None = None
        #: Whether the live chunks' content was content blocks (a list), not a string.
        self.blocks = False
        #: The id the live chunks carry, which the stream's last chunk carries too: a UI
        #: that groups chunks by id shows one message.
        self.message_id: str | None = None

    def put(self, item: Any) -> None:
        if self._ready is None or self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._ready.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody reads
            self.abandoned.set()

    def get(self) -> Any:
        return self._queue.get()

    async def aget(self) -> Any:
        assert self._ready is not None
        return await self._ready.get()


class _Abandoned(Exception):
    """A live stream's consumer stopped reading: the partial answer is no sample."""


@dataclass
class _Call:
    """What a wrapped model's refill needs beyond the request: never part of the key."""

    chat: BaseChatModel
    messages: list[BaseMessage]
    max_batch: int
    sink: _Sink | None = None


def _call_of(request: Request) -> _Call:
    call = request.source
    if not isinstance(call, _Call):
        raise TypeError("a wrapped chat model draws only for MnimiChatModel calls")
    return call


def _secrets_of(chat: BaseChatModel, params: Mapping[str, Any]) -> list[str]:
    """The credentials a wrapped model sends, longest first: those of its fields (secret
    ones, headers, query and body objects, the endpoint's URL) and of the call's keywords
    (see :func:`sent_secrets`)."""
    fields = {name: getattr(chat, name, None) for name in type(chat).model_fields}
    return sent_secrets(fields, params)


def _scrubbed(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with every secret replaced by ``***`` in its strings, or ``value`` itself
    (the same object) where none occurs."""
    if isinstance(value, str):
        text = value
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return value if text == value else text
    if isinstance(value, dict):
        items = {k: _scrubbed(v, secrets) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if isinstance(value, list | tuple):
        parts = [_scrubbed(v, secrets) for v in value]
        if all(p is v for p, v in zip(parts, value, strict=True)):
            return value
        return parts if isinstance(value, list) else tuple(parts)
    return value


def _scrub_error(error: BaseException, secrets: Sequence[str]) -> None:
    """Remove ``secrets`` from ``error`` in place, keeping its type: its ``args``, its
    string (and dict or list) attributes, and the same for every exception in its
    ``__cause__`` / ``__context__`` chain. A provider may echo the request's headers in
    its refusal; users and LangGraph's ``RetryPolicy`` catch the wrapped model's own
    exception classes, so the error is cleaned rather than replaced."""
    if not secrets:
        return
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        link = todo.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        args = _scrubbed(link.args, secrets)
        if args is not link.args:
            link.args = args
        for name, value in list(getattr(link, "__dict__", {}).items()):
            sent = _sent_request(value)
            if sent is not None:
                _scrub_request(sent, secrets)
                continue
            clean = _scrubbed(value, secrets)
            if clean is not value:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(link, name, clean)
        todo += [e for e in (link.__cause__, link.__context__) if e is not None]
        todo += [e for e in getattr(link, "exceptions", ()) if isinstance(e, BaseException)]


def _sent_request(value: Any) -> Any:
    """The HTTP request ``value`` is or answers (``error.request``, ``error.response``), or
    ``None``. Told by its shape: SDKs vendor their HTTP client under other names (the
    OpenAI SDK's ``httpx2``)."""
    if isinstance(getattr(value, "status_code", None), int):  # a response
        try:
            value = value.request
        except RuntimeError:  # httpx: a response made without one
            return None
    looks_sent = isinstance(getattr(value, "method", None), str) and hasattr(value, "url")
    return (
        value
        if looks_sent and isinstance(getattr(value, "headers", None), MutableMapping)
        else None
    )


def _scrub_request(sent: Any, secrets: Sequence[str]) -> None:
    """Remove ``secrets`` from the URL and headers of a sent request, which an HTTP error
    keeps: the URL holds a password or a query key as given, the headers the API key and
    the Basic credentials."""
    url = _scrubbed(str(sent.url), secrets)
    if url != str(sent.url):
        sent.url = type(sent.url)(url)
    for name, value in list(sent.headers.items()):
        clean = _scrubbed(value, secrets)
        if clean is not value:
            sent.headers[name] = clean


def _forward(sink: _Sink, total: BaseMessage | None, chunk: BaseMessage) -> BaseMessage:
    """Hand one chunk of a live stream to its reader; the sum of the chunks so far.

    Once the reader left, chunks are summed unforwarded for a moment: the answer may be
    whole already (see ``core.gates.Abandonment``).
    """
    if sink.abandoned.expired():
        raise _Abandoned
    forward = not sink.abandoned.is_set()
    if isinstance(chunk, AIMessageChunk):
        if forward:
            sink.message_id = sink.message_id or chunk.id
            sink.put(_for_reader(chunk))
        return chunk if total is None else cast(BaseMessage, total + chunk)
    # A model that cannot stream answers whole (LangChain's stream() falls back to invoke).
    for piece in _replay_chunks(cast(AIMessage, chunk)) if forward else ():
        sink.put(_for_reader(piece.message))
    return chunk


def _for_reader(chunk: BaseMessage) -> tuple[BaseMessage, bool]:
    """A wrapped model's chunk as its reader gets it, and whether it closes the answer.

    Unmarked as the last: the stream's end is this call's to mark, after the cache facts.
    Whether it closes the answer is told here, where the model's own mark is still on it.
    """
    return chunk.model_copy(update={"chunk_position": None}), _ends_answer(chunk)


def _as_invoked(message: BaseMessage) -> BaseMessage:
    """A streamed answer in the shape the wrapped model's ``invoke`` gives it, so that a
    later ``invoke`` replays what it would have received.

    Only Anthropic's shape differs: its chunks add up to content blocks that keep the
    stream's ``index`` and a tool call's arguments as ``partial_json`` beside an empty
    ``input``, and a lone text block stays a list where ``invoke`` gives a string (as
    ``ChatAnthropic._format_output`` does). Other models' streams are stored as they add
    up. The OpenAI form of either shape, and so every key, is the same.
    """
    content = message.content
    if not isinstance(content, list) or message.response_metadata.get("model_provider") != (
        "anthropic"
    ):
        return message
    blocks: list[Any] = []
    for block in content:
        if isinstance(block, dict) and ("index" in block or "partial_json" in block):
            block = {k: v for k, v in block.items() if k != "index"}
            if "partial_json" in block and not block.get("input"):
                try:
                    arguments = json.loads(block["partial_json"] or "{}")
                except (TypeError, ValueError):  # cut short: left as streamed
                    arguments = None
                if isinstance(arguments, dict):
                    del block["partial_json"]
                    block["input"] = arguments
        blocks.append(block)
    shaped: str | list[Any] = blocks
    if (
        len(blocks) == 1
        and isinstance(blocks[0], dict)
        and blocks[0].get("type") == "text"
        and isinstance(blocks[0].get("text"), str)
        and not blocks[0].get("citations")
    ):
        shaped = blocks[0]["text"]
    return message.model_copy(update={"content": shaped})


class WrappedChatModel(BatchedModel):
    """The provider layer of ``MnimiChatModel(model=<a BaseChatModel>)``.

    A refill runs the calling ``MnimiChatModel``'s own wrapped model (its client, its
    credentials, its retries and rate limiter) through LangChain's public ``generate``
    and ``stream``, with LangChain's own cache switched off for the call, since that
    cache would answer every refill with one generation. The layer is shared by every
    wrapped model of one identity (:func:`wrapped_identity`), so copies that differ only
    in credentials share sequences, and a scope's cursor.

    The wrapped model's run is the wrapper's implementation, not a second model call of
    the user's: it runs with its own callbacks only, untraced, so that the handlers of
    the caller's run (LangGraph's ``stream_mode="messages"``, ``astream_events``,
    tracers) see each token once, from the ``MnimiChatModel`` run.

    An async miss runs the same synchronous path on a refill thread. Async HTTP clients
    belong to the event loop that first used them (``langchain-openai`` shares one per
    endpoint between all its models, upstream issue langchain-ai/langchain#35783), while
    a refill must outlive the caller's loop (law 6): on any other loop it would break the
    user's own models. LangChain itself runs a model without async code this way.
    """

    def __init__(self, identity: dict[str, Any]) -> None:
        super().__init__(str(identity["model"]), 1.0)
        self._identity = identity
        #: Whether the provider refused ``n`` > 1 (Groq's API does, though ChatGroq has
        #: an ``n``): learnt once, then every refill asks one sample a request.
        self._n_refused = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"

    def identity(self) -> dict[str, Any]:
        return self._identity

    def batch_limit(self, request: Request) -> int:
        call = _call_of(request)
        # OpenAI's Responses API answers one sample a request.
        if call.max_batch > 1 and (
            self._n_refused or uses_responses_api(call.chat, request.params)
        ):
            return 1
        return call.max_batch

    def refill(self, request: Request, batch: int) -> list[Sample]:
        try:
            return super().refill(request, batch)
        except Exception as error:
            if not self._learns_n_refused(error, request, batch):
                raise
        return super().refill(request, batch)

    async def arefill(self, request: Request, batch: int) -> list[Sample]:
        try:
            return await super().arefill(request, batch)
        except Exception as error:
            if not self._learns_n_refused(error, request, batch):
                raise
        return await super().arefill(request, batch)

    def _learns_n_refused(self, error: Exception, request: Request, batch: int) -> bool:
        """Whether ``error`` is the provider refusing ``n`` > 1 for this refill: then
        learnt, and the refill is asked again one sample a request."""
        if self._n_refused or self.batch_limit(request) == 1 or batch == 1:
            return False
        if not refuses_n(error):
            return False
        logger.info("%r refused n > 1; drawing one sample a request from now on", self)
        self._n_refused = True
        return True

    @staticmethod
    def _arguments(request: Request, n: int) -> tuple[_Call, BaseChatModel, dict[str, Any]]:
        call = _call_of(request)
        chat = call.chat
        if chat.cache is not False:
            # LangChain serializes a model for its callbacks once per object (a cached
            # property, which leaves out the cache), some 85 us: made on the user's
            # model, where it stays, and carried into each copy, which then skips it.
            getattr(chat, "_serialized", None)
            chat = chat.model_copy(update={"cache": False})
        kwargs = dict(request.params)
        # Always given where the model has its own n (ChatOpenAI(n=3)): a refill asks for
        # the missing samples only. Never to OpenAI's Responses API, which has no n (the
        # batch limit keeps its refills to one sample a request).
        if (n > 1 or "n" in type(chat).model_fields) and not uses_responses_api(chat, kwargs):
            kwargs["n"] = n
        return call, chat, kwargs

    @staticmethod
    @contextlib.contextmanager
    def _scrubbing(request: Request) -> Iterator[None]:
        """The wrapped model's errors, with any of its credentials they echo as ``***``."""
        try:
            yield
        except Exception as error:
            _scrub_error(error, _secrets_of(_call_of(request).chat, request.params))
            raise

    def query(self, request: Request, n: int) -> list[str | Sample]:
        with self._scrubbing(request):
            return self._query(request, n)

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        try:
            return await asyncio.wrap_future(start_apart(functools.partial(self.query, request, n)))
        except NotImplementedError:
            pass  # a model with async code alone: its async path, on the library's loop
        with self._scrubbing(request):
            return await self._aquery(request, n)

    def _query(self, request: Request, n: int) -> list[str | Sample]:
        call, chat, kwargs = self._arguments(request, n)
        stop = kwargs.pop("stop", None)
        # Its own callbacks only: none of the caller's run (see the class docstring).
        # A provider call: an installed MnimiCache lets it through rather than answer it
        # from a cursor of its own, which would serve this layer what it already has.
        with tracing_context(enabled=False), without_hooked_handlers(), provider_call_active():
            if call.sink is not None and n == 1:
                total: BaseMessage | None = None
                chunks = cast(
                    Generator[BaseMessage, None, None],
                    chat.stream(call.messages, {"callbacks": []}, stop=stop, **kwargs),
                )
                with contextlib.closing(chunks):  # an abandoned stream closes the connection
                    for chunk in chunks:
                        total = _forward(call.sink, total, chunk)
                return self._streamed(call.sink, total)
            result = chat.generate([call.messages], stop=stop, callbacks=[], **kwargs)
        return list(_samples_of(result.generations[0], result.llm_output))

    async def _aquery(self, request: Request, n: int) -> list[str | Sample]:
        """Async :meth:`_query`, for a model whose sync path is not implemented."""
        call, chat, kwargs = self._arguments(request, n)
        stop = kwargs.pop("stop", None)
        # A provider call: an installed MnimiCache lets it through rather than answer it
        # from a cursor of its own, which would serve this layer what it already has.
        with tracing_context(enabled=False), without_hooked_handlers(), provider_call_active():
            if call.sink is not None and n == 1:
                total: BaseMessage | None = None
                chunks = cast(
                    AsyncGenerator[BaseMessage, None],
                    chat.astream(call.messages, {"callbacks": []}, stop=stop, **kwargs),
                )
                try:
                    async for chunk in chunks:
                        total = _forward(call.sink, total, chunk)
                finally:
                    await chunks.aclose()
                return self._streamed(call.sink, total)
            result = await chat.agenerate([call.messages], stop=stop, callbacks=[], **kwargs)
        return list(_samples_of(result.generations[0], result.llm_output))

    @staticmethod
    def _streamed(sink: _Sink, total: BaseMessage | None) -> list[str | Sample]:
        if total is None:
            raise ProviderError("the wrapped model's stream ended without a chunk")
        sample = _sample_of(_as_invoked(message_chunk_to_message(total)), new_draw_id(), None)
        sink.blocks = not isinstance(total.content, str)
        sink.draw_id = sample.draw_id
        return [sample]


def _gated(draw: _Draw) -> list[Sample]:
    """Draw past the gate of the request's sequence (waiting while it streams live)."""
    ahead = _predrawn(draw)
    if ahead is not None:
        return ahead
    if draw.gate is None:
        return draw.samples()
    return GATES.through(draw.gate, draw.samples)


async def _agated(draw: _Draw) -> list[Sample]:
    """Async :func:`_gated`."""
    ahead = _predrawn(draw)
    if ahead is not None:
        return ahead
    if draw.gate is None:
        return await draw.asamples()
    return await GATES.athrough(draw.gate, draw.asamples)


def _as_raw(message: Any) -> dict[str, Any]:
    """A model's answer as ``include_raw``'s ``{"raw": ...}``."""
    return {"raw": message}


def _model_first(runnable: Any) -> Any:
    """``{"raw": model} | parse`` (``include_raw``) as ``model | {"raw": ...} | parse``.

    The same outputs and stream; but a ``batch`` of it is now the model's own,
    whose draws are grouped by request in input order (deterministic, one request per
    group), not a map's call per input on a thread pool.
    """
    if not isinstance(runnable, RunnableSequence):
        return runnable
    first = runnable.first
    if not isinstance(first, RunnableParallel) or list(first.steps__) != ["raw"]:
        return runnable
    chain: Runnable[Any, Any] = first.steps__["raw"] | RunnableLambda(_as_raw)
    for step in runnable.steps[1:]:
        chain = chain | step
    return chain


def _ends_answer(chunk: BaseMessage) -> bool:
    """Whether ``chunk`` closes the answer: it has a finish or stop reason, or it is the
    model's last chunk (LangChain's ``chunk_position="last"``: the Responses API's, which
    carries its status and usage and no finish reason, and the one every stream ends with).

    A reader that stops right after it has read the whole answer: its stream is not
    abandoned, though the chunk with the cache facts may follow.
    """
    if getattr(chunk, "chunk_position", None) == "last":
        return True
    metadata = chunk.response_metadata
    return bool(metadata.get("finish_reason") or metadata.get("stop_reason"))


def _kept(draw: _Draw, sink: _Sink, samples: list[Sample]) -> list[Sample]:
    """A live stream's samples; if its reader left already, their positions go to the
    next call (one that leaves later hands them on itself, see :func:`_left`).

    The provider had finished it, so it is stored (law 6), but an abandoned stream gives
    its position on, whether it ended live or replayed (see ``_replayed``).
    """
    sink.abandoned.ended(samples, draw.give_back)
    return samples


def _left(draw: _Draw, sink: _Sink) -> None:
    """The reader left a live stream before the end of its answer: what its draw stored,
    now or when it ends, goes to the next call, as a replayed stream's does.

    Whenever the reader leaves: a slow one that leaves after the draw stored the sample
    is answered as it is on a re-run, where the stream is a replayed hit.
    """
    sink.abandoned.leave(draw.give_back)


def _live_draw(draw: _Draw, sink: _Sink) -> list[Sample]:
    """Draw for a live stream; the gate opens and the reader wakes however it ends."""
    try:
        return _kept(draw, sink, draw.samples())
    finally:
        assert draw.gate is not None
        GATES.end_live(draw.gate)
        sink.put(_DONE)


async def _alive_draw(draw: _Draw, sink: _Sink) -> list[Sample]:
    """Async :func:`_live_draw`."""
    try:
        return _kept(draw, sink, await draw.asamples())
    finally:
        assert draw.gate is not None
        GATES.end_live(draw.gate)
        sink.put(_DONE)


@dataclass
class _Draw:
    """One call's draw: the layer, the request, how many samples and from which position."""

    layer: Layer
    request: Request
    n: int
    model: str
    #: The request's key in the adapter's own layer.
    key: tuple[int, str]
    #: The gate a wrapped model's draw passes (so that a live stream draws its key alone):
    #: the stored sequence, which every adapter over one cache draws into under one gate.
    gate: tuple[Hashable, str] | None

    def samples(self) -> list[Sample]:
        # Without a batch a refill asks for just the missing samples, in one request where
        # the provider can answer several (n).
        return self.layer.draw(self.request, self.n)

    async def asamples(self) -> list[Sample]:
        return await self.layer.adraw(self.request, self.n)

    def continues(self) -> bool:
        """Whether successive calls draw fresh samples (``independent()``, ``no_cache()``)."""
        return not (isinstance(self.layer, CacheLayer) and caching_enabled())

    def give_back(self, samples: list[Sample]) -> None:
        """Hand the positions of ``samples`` to the next call of the scope that served them."""
        if self.continues():  # from position 0 each time otherwise: nothing to hand on
            self.layer.open(self.request).give_back(samples)


#: What one call of a batch gets: its samples, or the error drawing them.
_Outcome = list[Sample] | BaseException

#: Samples drawn ahead for one input of a ``batch``: (key, its outcome). Each input's call
#: finds its own here, whatever order the threads run in.
_PREDRAWN: contextvars.ContextVar[tuple[tuple[int, str], _Outcome] | None] = contextvars.ContextVar(
    "mnimi_predrawn", default=None
)


def _group_draw(draw: _Draw, size: int) -> _Draw:
    """One draw for ``size`` identical calls: ``size`` times the samples where each call
    continues the sequence, once where each replays it."""
    return replace(draw, n=draw.n * size) if draw.continues() else draw


def _split(draw: _Draw, size: int, drawn: list[Sample]) -> list[_Outcome]:
    """A group's samples, call by call: the i-th call gets the i-th n where calls continue
    the sequence, and all of them where each replays it."""
    if not draw.continues():
        return [drawn] * size
    return [drawn[k * draw.n : (k + 1) * draw.n] for k in range(size)]


def _group_outcomes(draw: _Draw, size: int) -> list[_Outcome]:
    """The outcomes of ``size`` identical calls of a batch, in input order.

    One draw serves them all. Where it fails and each call continues the sequence, the
    calls draw again one by one, in input order: those whose positions are there (cached,
    or paid for before the failure) get them, as they would one call at a time, and the
    first that fails hands its error to the ones after it, which need later positions
    still, without asking the provider again.
    """
    try:
        return _split(draw, size, _gated(_group_draw(draw, size)))
    except Exception as error:
        if not draw.continues() or size == 1:
            return [error] * size
    outcomes: list[_Outcome] = []
    while len(outcomes) < size:
        try:
            outcomes.append(_gated(draw))
        except Exception as error:
            outcomes += [error] * (size - len(outcomes))
    return outcomes


def _shared(
    groups: list[tuple[_Draw, list[int]]], drawn: Iterable[list[_Outcome]]
) -> dict[int, tuple[tuple[int, str], _Outcome]]:
    """Each input of a batch with its own outcome, found by its call under its group's key."""
    return {
        i: (draw.key, outcome)
        for (draw, members), outcomes in zip(groups, drawn, strict=True)
        for i, outcome in zip(members, outcomes, strict=True)
    }


async def _agroup_outcomes(draw: _Draw, size: int) -> list[_Outcome]:
    """Async :func:`_group_outcomes`."""
    try:
        return _split(draw, size, await _agated(_group_draw(draw, size)))
    except Exception as error:
        if not draw.continues() or size == 1:
            return [error] * size
    outcomes: list[_Outcome] = []
    while len(outcomes) < size:
        try:
            outcomes.append(await _agated(draw))
        except Exception as error:
            outcomes += [error] * (size - len(outcomes))
    return outcomes


def _predrawn(draw: _Draw) -> list[Sample] | None:
    """The samples drawn ahead for this call of a batch, if it is one."""
    ahead = _PREDRAWN.get()
    if ahead is None or ahead[0] != draw.key:
        return None
    if isinstance(ahead[1], BaseException):
        raise ahead[1]
    return ahead[1]


def _keyed_messages(messages: Sequence[BaseMessage]) -> tuple[dict[str, Any], ...]:
    """The messages as a key holds them: OpenAI's form, what the model reads and no more.

    A message's id, ``response_metadata`` (the cache facts of a hit) and ``usage_metadata``
    differ between the run that drew an answer and the runs that replay it; in a
    conversation's history they must not change the next step's key.
    """
    return tuple(convert_to_openai_messages(messages))


def _messages_of(value: LanguageModelInput) -> list[BaseMessage]:
    """A chat model's input as messages, as LangChain's own conversion makes them."""
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(value)]
    return convert_to_messages(value)


def _pieces(
    content: str | list[Any],
    calls: list[ToolCallChunk],
    last: AIMessageChunk,
    info: dict[str, Any] | None,
) -> Iterator[ChatGenerationChunk]:
    """One answer as a stream: text pieces, tool-call chunks, then ``last`` with the totals."""
    empty: str | list[Any] = "" if isinstance(content, str) else []
    if isinstance(content, str):
        for piece in stream_pieces(content):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
    elif content:  # content blocks (Anthropic): one chunk, LangChain merges blocks by index
        yield ChatGenerationChunk(message=AIMessageChunk(content=content))
    for call in calls:
        yield ChatGenerationChunk(message=AIMessageChunk(content=empty, tool_call_chunks=[call]))
    # Usage and metadata ride on the last chunk only: LangChain adds chunks up, so
    # metadata on several chunks would be concatenated or counted twice.
    yield ChatGenerationChunk(message=last, generation_info=info)


def _replay_chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """A wrapped model's stored message as a stream that adds up to it again."""
    # The invalid calls too (arguments that are not JSON, cut short), as their raw text:
    # summed up, the chunks give them back as invalid, as the model's own stream would.
    raw: list[tuple[str | None, str | None, str | None]] = [
        (c["name"], json.dumps(c["args"]), c.get("id")) for c in message.tool_calls
    ]
    raw += [(c.get("name"), c.get("args"), c.get("id")) for c in message.invalid_tool_calls]
    calls = [
        tool_call_chunk(name=name, args=args, id=call_id, index=i)
        for i, (name, args, call_id) in enumerate(raw)
    ]
    last = AIMessageChunk(
        content="" if isinstance(message.content, str) else [],
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=message.usage_metadata,
        # No id: the run replaying it gives every chunk its own, as a model's stream does
        # (the first run's id on the last chunk alone made two messages of one).
        chunk_position="last",
    )
    return _pieces(message.content, calls, last, None)


def _check_wrappable(model: Any) -> None:
    """Refuse a chat model already bound to tools, a schema, arguments or retries, or a
    configurable one.

    Such a runnable is no chat model (pydantic would say only that it fits neither branch
    of ``str | BaseChatModel``), and its bindings belong on the wrapper, where their calls
    are cached.
    """
    if isinstance(model, BaseLanguageModel) and not isinstance(model, BaseChatModel):
        raise TypeError(
            f"MnimiChatModel(model=...) takes a chat model or a LiteLLM model name, not a "
            f"completion model ({type(model).__name__}, a BaseLLM): wrap its chat "
            "counterpart (ChatOpenAI for OpenAI), or cache it with "
            "set_llm_cache(MnimiLLMCache(...))"
        )
    if model is not None and not isinstance(model, str | Runnable):
        raise TypeError(
            "MnimiChatModel(model=...) takes a chat model or a LiteLLM model name "
            f'("openai/gpt-4o"), got {type(model).__name__}'
        )
    if isinstance(model, DynamicRunnable) or is_configurable_chat_model(model):
        raise TypeError(
            "MnimiChatModel(model=...) takes a chat model or a LiteLLM model name, not a "
            f"configurable model ({type(model).__name__}, as init_chat_model(..., "
            "configurable_fields=...), configurable_fields() and configurable_alternatives() "
            "return): it makes a chat model for each call from the call's config, which a "
            "wrapper made once cannot follow. Wrap each configured model "
            '(MnimiChatModel(model=init_chat_model("openai:gpt-4o-mini", temperature=0.2))), '
            "choose among such wrappers at run time with configurable_alternatives() on one "
            "of them, or keep the configurable model as it is and cache its calls with "
            "set_llm_cache(MnimiLLMCache(...))"
        )
    if isinstance(model, Runnable) and not isinstance(model, BaseChatModel):
        raise TypeError(
            "MnimiChatModel(model=...) takes a chat model or a LiteLLM model name, not a "
            f"runnable built from a chat model ({type(model).__name__}, as bind_tools, "
            "with_structured_output, bind and with_retry return). Wrap the chat model itself "
            "and call those on the MnimiChatModel: "
            "MnimiChatModel(model=ChatOpenAI(...)).bind_tools([...])"
        )


#: Options of the library's other entry points a user may try on MnimiChatModel: sent to
#: the provider as model keywords, they would do nothing the user meant, silently.
_OPTIONS_ELSEWHERE = {
    "record": "a run record is made by Persistent(..., record=...)",
    "path": "the cache directory is cache_dir=",
    "dspy": "dspy=True is MnimiCache's",
}


def _refuse_own_option(name: str, fields: set[str]) -> None:
    """Refuse a keyword that is no model keyword but a slip for one of the library's own:
    a misspelt field (``slice_off``) or another entry point's option (``record``)."""
    if name in _OPTIONS_ELSEWHERE:
        raise TypeError(
            f"MnimiChatModel takes no {name}= ({_OPTIONS_ELSEWHERE[name]}); other keywords "
            "are passed to the model as model_kwargs"
        )
    near = difflib.get_close_matches(name, sorted(fields), n=1, cutoff=0.85)
    if near:
        raise TypeError(
            f"MnimiChatModel got {name}=, did you mean {near[0]}=? (other keywords are "
            "passed to the model as model_kwargs)"
        )


#: MnimiChatModel's private memos, as a model has them before its first call.
_NO_MEMOS: dict[str, None] = {"_built": None, "_last_key": None, "_identity_memo": None}


@dataclass
class _IdentityMemo:
    """A wrapped model's identity, and copies of what it was derived from.

    Copies, not the model's own objects: a setting changed in place (``extra_body["top_k"]
    = 9``) must show, or the old sequences would go on answering it.
    """

    chat: BaseChatModel
    alias: str | None
    identifying: Any
    #: How many fields the user has set: one set since is a setting to look at.
    fields_set: int
    #: The other settings the identity reads, by name, as copied.
    settings: tuple[tuple[str, Any], ...]
    identity: dict[str, Any]
    ls_params: LangSmithParams

    @classmethod
    def of(
        cls, chat: BaseChatModel, alias: str | None, identity: dict[str, Any], ls: LangSmithParams
    ) -> _IdentityMemo:
        # What the identifying params (compared whole) do not show already. Every setting
        # the user gave, keyed or not: one given as None (ChatGroq(max_tokens=None), as
        # its docs write it) and set later is keyed then, and adds no field to count.
        names = [*_SHAPE_SETTINGS, *(f for f, _ in _endpoint_fields(type(chat)))]
        names += _own_settings(chat)
        identifying = chat._identifying_params
        names = [name for name in names if name not in identifying]
        settings = tuple((name, _plain_copy(getattr(chat, name, None))) for name in names)
        return cls(
            chat,
            alias,
            _plain_copy(identifying),
            len(chat.model_fields_set),
            settings,
            identity,
            ls,
        )

    def holds(self, chat: BaseChatModel, alias: str | None) -> bool:
        """Whether the identity is still ``chat``'s: nothing it was derived from changed."""
        # A value that is not plain JSON cannot be told unchanged: derived anew each call.
        # Compared with ==, against copies: it runs twice a hit, and a setting that turns
        # from 1 into True in place is the one change it misses.
        if (
            chat is not self.chat
            or alias != self.alias
            or len(chat.model_fields_set) != self.fields_set
            or self.identifying is _NOT_PLAIN
            or self.identifying != chat._identifying_params
        ):
            return False
        for name, copied in self.settings:
            if copied is _NOT_PLAIN or copied != getattr(chat, name, None):
                return False
        return True


class MnimiChatModel(InvocationParamsWithoutCredentials, LLMOutputOfTheWrappedModel, BaseChatModel):
    """A LangChain chat model whose answers come from Mnimi sample sequences.

    By default it draws from ``Persistent(LiteLLMModel(model, ...), cache_dir)``,
    built on the first call (under a lock, so concurrent first calls share one
    layer). Pass ``layer=`` to draw from any core layer instead.

    ``model=`` may also be the user's own LangChain chat model (``ChatOpenAI``,
    ``ChatAnthropic``, any ``BaseChatModel``): a miss then runs that model's own request
    path, keyed by :func:`wrapped_identity` (class, model name, sampling settings,
    endpoint; never credentials) plus the call's messages, tools, tool choice and response
    format. Its settings stay on it (``temperature=`` here is refused); ``stop`` and
    ``max_tokens`` given here are sent with each call. A streamed miss is live: chunks
    reach the caller as the model produces them, and the sample is stored once the stream
    completes; an abandoned stream stores nothing and gives its position back.
    ``bind_tools`` and ``with_structured_output`` are the wrapped model's own, their calls
    sent through this model. ``n`` samples come in one request where the model has an ``n``
    field (``max_batch`` caps it); the wrapped model's own ``n`` (``ChatOpenAI(n=3)``) is the
    default, so ``generate`` returns as many generations as the model itself would.

    Everything that changes the output distribution is in the cache key: the
    model (or ``alias``), ``temperature``, the generic endpoint ``api_base``
    (without an alias), ``max_tokens``, ``stop``, bound ``tools`` /
    ``tool_choice`` / ``response_format`` and any other provider keyword
    (``top_p``, ``seed``, ...; unknown constructor keywords are collected in
    ``model_kwargs``). ``n``, credentials, ``timeout``, ``max_retries`` and LiteLLM's
    own options (``ssl_verify``, ``tags``, ...) are not: copies of a chat model that differ
    only in those (or in ``max_batch``) draw from one shared sequence, so inside
    ``independent()`` they get distinct samples, and each sends its refills with its own
    key, timeout and retries. Credentials given as provider keywords
    (``aws_secret_access_key=...``) are kept as secrets: never shown, traced or serialised.

    Semantics of a call, decided by the enclosing scopes (``mnimi_adapters.independent``,
    ``repeatable``, ``no_cache``):

    * outside any scope: repeatable; identical requests replay positions
      ``0..n-1`` of their sequence;
    * in ``independent()``: the next ``n`` positions of the sequence;
    * in ``no_cache()``: straight to the provider, nothing stored.

    ``n=k`` makes ``generate`` return ``k`` distinct generations, drawn in one
    provider request where possible; ``invoke`` returns the first (as
    LangChain does). Streaming replays a cached sample as chunks; through LiteLLM a
    streamed miss is drawn without streaming, stored once complete and then streamed.

    LangGraph retries: a node with a ``RetryPolicy`` re-sends identical input. In a
    graph run outside any scope, the attempts of one node task behave as
    ``with independent(): for attempt ...: with repeatable(): node(...)``: each attempt
    reads, per request, from the first position the task's earlier attempts were not
    served (a failed draw serves nothing), identical calls within an attempt repeat, and
    re-running the whole graph (in this process or a later one) replays every attempt.
    Graphs the node runs (subgraphs, agents), ``@task`` calls and scopes its code opens
    nest in its attempt. In a graph run in ``independent()`` every call and attempt draws
    afresh; in ``repeatable()`` identical calls repeat. A node LangGraph runs again from
    its start on resume is served what its latest attempt was. A plain model as
    ``layer`` is not cached, and draws afresh anyway.

    Each generation's ``response_metadata`` holds ``model_name``,
    ``finish_reason`` and the cache facts ``cache_hit``, ``sequence_index`` and
    ``cache_key``; ``usage_metadata`` holds the sample's share of the token usage.
    In replication mode a missing sample raises
    :class:`~mnimi_adapters.ReplicationCacheMiss` through chains.

    LangChain's own cache (``cache=``, ``set_llm_cache``) is off by default: it
    would return one generation for every identical request.

    Args:
        model: LiteLLM model name, e.g. ``"fireworks_ai/accounts/fireworks/models/x"``
            or ``"openai/<name>"`` with ``api_base``. A per-call ``model=`` keyword
            selects another model (with its own sequences). Or a LangChain chat model
            to wrap, e.g. ``ChatOpenAI(model="gpt-4o-mini")``.
        temperature: Sampling temperature.
        cache_dir: Directory of the persistent sample store (a ``str`` or ``Path``), or
            a Redis URL.
        slice_of: A bigger cache (directory or Redis URL) that ``cache_dir`` is a slice
            of: calls read through it (drawing into it on a miss), and ``cache_dir``
            receives exactly the prefix of each sequence the run used, as
            ``Persistent(Persistent(model, slice_of), cache_dir)`` does (law 4). Share
            ``cache_dir`` for others to replay the run with ``replication=True``.
        replication: Never call the provider; a missing sample raises
            ``ReplicationCacheMiss``. With ``slice_of``, the bigger cache is the one
            read in replication mode, and the slice still receives what the run used.
        n: Generations per call.
        max_batch: Most samples one provider request may return.
        alias: The model's name in cache keys (share a cache across providers).
        api_base: Base URL of an OpenAI-compatible endpoint.
        api_key: The provider key; if not given, LiteLLM reads the provider's own
            variable (e.g. ``FIREWORKS_API_KEY``) when the first request is sent.
        max_tokens: Completion token limit.
        stop: Stop sequences.
        timeout: Seconds per provider request.
        max_retries: Provider retries on transient errors.
        model_kwargs: Further LiteLLM parameters, sent with (and keyed into) every request.
        layer: Draw from this core layer instead of building one.

    Example:
        >>> from langchain_openai import ChatOpenAI  # doctest: +SKIP
        >>> chat = MnimiChatModel(model=ChatOpenAI(model="gpt-4o-mini"))  # doctest: +SKIP
        >>> from mnimi_adapters.core import Persistent  # doctest: +SKIP
        >>> chat = MnimiChatModel(layer=Persistent(my_model, "llm_cache"))  # doctest: +SKIP
        >>> chain = prompt | chat | StrOutputParser()  # doctest: +SKIP
        >>> with independent():  # doctest: +SKIP
        ...     answers = chain.batch([{"topic": "cats"}] * 5)  # five independent samples
    """

    # A refused argument's error must not show the others, an api_key among them.
    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)

    model: str | BaseChatModel | None = None
    temperature: float = 1.0
    cache_dir: str = "~/.llm_cache"
    slice_of: str | None = None
    replication: bool = False
    n: int = Field(default=1, ge=1)
    max_batch: int = Field(default=1, ge=1)
    alias: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    layer: Layer | None = Field(default=None, exclude=True)
    # LangChain's request-level cache returns one answer to every identical request,
    # which is exactly the independence bug Mnimi exists to fix: off unless asked for.
    cache: BaseCache | bool | None = Field(default=False, exclude=True)

    # The configuration the layers were built for, and the layers by model override. A
    # copy (model_copy) or a changed field never reuses a layer built for another one.
    _built: tuple[tuple[Any, ...], dict[str | None, Layer]] | None = PrivateAttr(default=None)
    # A wrapped model's last request and its key (see _key_of).
    _last_key: tuple[Layer, Any, Any, str] | None = PrivateAttr(default=None)
    # The wrapped model's identity and what it was derived from (see _wrapped_identity).
    _identity_memo: _IdentityMemo | None = PrivateAttr(default=None)

    def __getstate__(self) -> dict[Any, Any]:
        # The memos hold the shared cache layer (locks, a store's connection): a model
        # unpickled, like one made anew, derives its own at its first call.
        state = super().__getstate__()
        state["__pydantic_private__"] = {**state["__pydantic_private__"], **_NO_MEMOS}
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        private = private_attributes(self)
        kept = {name: private[name] for name in _NO_MEMOS}
        private.update(_NO_MEMOS)  # a deep copy of the shared layer would be no cache
        try:
            return super().__deepcopy__(memo)
        finally:
            private.update(kept)

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Move unknown constructor keywords into ``model_kwargs`` (``top_p=...``)."""
        if not isinstance(values, dict):
            return values
        _check_wrappable(values.get("model"))
        known = set()
        for name, info in cls.model_fields.items():
            known.add(name)
            if info.alias:
                known.add(info.alias)
        extra = {k: values[k] for k in list(values) if k not in known}
        if not extra:
            return values
        for name in extra:
            _refuse_own_option(name, known)
        values = {k: v for k, v in values.items() if k not in extra}
        model_kwargs = dict(values.get("model_kwargs") or {})
        for key, value in extra.items():
            if key in model_kwargs:
                raise ValueError(f"{key!r} was given both directly and in model_kwargs")
            model_kwargs[key] = value
        values["model_kwargs"] = model_kwargs
        return values

    @field_validator("cache_dir", "slice_of", mode="before")
    @classmethod
    def _location_text(cls, value: Any) -> Any:
        """A ``pathlib.Path`` is taken as its text, as ``Persistent`` takes it; an empty
        location (an unset variable) would make the current directory a cache."""
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"the cache location {value!r} is empty: give a directory")
        if isinstance(value, str) and not is_redis_url(value):
            return str(anchored(value))  # an os.chdir before the first call moves nothing
        return value

    @model_validator(mode="after")
    def _check_source(self) -> MnimiChatModel:
        # Before any graph runs: a graph started unwatched hides its nodes' attempts from
        # the graphs run in them (its first call would import LangGraph anyway).
        _watch_langgraph()
        if self.layer is None and not self.model:
            raise ValueError(
                "MnimiChatModel needs model=... (a LiteLLM model name or a LangChain chat "
                "model) or layer=..."
            )
        if isinstance(self.model, MnimiChatModel):
            raise TypeError("MnimiChatModel cannot wrap another MnimiChatModel")
        self._refuse_wrapped_settings()
        if self.layer is not None:
            if self.model:
                raise ValueError("give MnimiChatModel either model=... or layer=..., not both")
            if not isinstance(self.layer, Layer):
                raise TypeError(f"layer must be a core Layer, got {type(self.layer).__name__}")
            clash = sorted(f for f in _LAYER_FIELDS if f in self.model_fields_set)
            if clash:
                raise ValueError(
                    f"{', '.join(clash)} configure the provider layer; with layer=... set them "
                    "on that layer instead"
                )
        forbidden = {"api_key", "n", "stream", "model"} & set(self.model_kwargs)
        if forbidden:
            raise ValueError(f"model_kwargs may not hold {sorted(forbidden)}; use the fields")
        if any(is_credential(name) for name in self.model_kwargs):
            # Wrapped like api_key, so that repr, model_dump and tracebacks never show them.
            self.model_kwargs = {k: _hide(k, v) for k, v in self.model_kwargs.items()}
        return self

    def _refuse_wrapped_settings(self) -> None:
        """Refuse a setting given here that belongs to the wrapped model: ignored, it would
        leave the user believing the wrapped model samples with it."""
        if not isinstance(self.model, BaseChatModel):
            return
        # Compared with the defaults, not just given: configurable_fields() rebuilds the
        # wrapper with every field given.
        fields = type(self).model_fields
        clash = sorted(
            name
            for name in _WRAPPED_MODEL_FIELDS
            if getattr(self, name) != fields[name].get_default(call_default_factory=True)
        )
        if clash:
            belong = "belongs" if len(clash) == 1 else "belong"
            # Keywords the wrapper does not know (base_url=) land in model_kwargs: named.
            named = [
                f"{name} ({', '.join(sorted(self.model_kwargs))})"
                if name == "model_kwargs"
                else name
                for name in clash
            ]
            raise ValueError(
                f"{', '.join(named)} {belong} to the wrapped {type(self.model).__name__}; "
                "set it there (for a choice at run time, configurable_alternatives() "
                "of wrappers)"
            )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy of this model, ``update`` applied to its fields.

        Pydantic applies ``update`` unvalidated, and keeps a name that is no field of the
        model's: a setting of the wrapped model's given here is refused as the constructor
        refuses it, and a name that is no setting of this model's is refused too, rather
        than ignored.

        Raises:
            ValueError: ``update`` sets what belongs to the wrapped model (``temperature``),
                or what is no setting of this model's (``base_url``).
        """
        unknown = sorted(set(update or ()) - set(type(self).model_fields))
        if unknown:
            where = (
                f"set it on the wrapped {type(self.model).__name__}"
                if isinstance(self.model, BaseChatModel)
                else "pass a provider's own parameter in model_kwargs"
            )
            raise ValueError(f"MnimiChatModel has no setting {', '.join(unknown)}: {where}")
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._refuse_wrapped_settings()
        return copied

    @field_serializer("api_base")
    def _dump_api_base(self, api_base: str | None) -> str | None:
        """The endpoint without its credentials in ``model_dump`` and ``model_dump_json``."""
        return _shown_url(api_base)

    @field_serializer("model_kwargs")
    def _dump_model_kwargs(self, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Credentials nested in provider keywords shown as secrets, as a keyword's are."""
        return _public_kwargs(model_kwargs, masked=True)

    @field_serializer("cache_dir", "slice_of")
    def _dump_location(self, location: str | None) -> str | None:
        """A Redis URL's password as ``***`` in ``model_dump`` and ``model_dump_json``, as in
        the repr; a location without one is dumped as given."""
        if location is None or not url_has_password(location):
            return location
        return shown_location(location)

    # -- LangChain plumbing ------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "mnimi-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """What identifies this model's outputs (never a credential).

        LangChain sends these to callbacks and tracers (as invocation params).
        """
        defaults = self._request_defaults()
        if self.model_kwargs:
            defaults = _public_kwargs(defaults, masked=False)
        if self.layer is not None:
            return {"layer": repr(self.layer), **defaults, "n": self.n}
        if isinstance(self.model, BaseChatModel):
            return {
                **self._wrapped_identity(self.model),
                "cache_dir": shown_location(self.cache_dir),
                "slice_of": self.slice_of and shown_location(self.slice_of),
                "replication": self.replication,
                "n": self.n,
            }
        return {
            "model": self.model,
            "temperature": self.temperature,
            "alias": self.alias,
            "api_base": _shown_url(self.api_base),
            # Invocation params reach callbacks and tracers: a Redis password must not.
            "cache_dir": shown_location(self.cache_dir),
            "slice_of": self.slice_of and shown_location(self.slice_of),
            "replication": self.replication,
            "n": self.n,
            "max_batch": self.max_batch,
            **defaults,
        }

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["mnimi_adapters", "langchain"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        # Serialised with the secret replaced by this variable name, read back on load.
        secrets = {"api_key": "MNIMI_API_KEY"}
        if self.api_base and url_secrets(self.api_base):  # a password, a token in the URL
            secrets["api_base"] = "MNIMI_API_BASE"
        if url_has_password(self.cache_dir):  # a Redis URL with its password
            secrets["cache_dir"] = "MNIMI_CACHE_DIR"
        if self.slice_of is not None and url_has_password(self.slice_of):
            secrets["slice_of"] = "MNIMI_SLICE_OF"
        for name in self.model_kwargs:
            if is_credential(name):  # aws_secret_access_key -> AWS_SECRET_ACCESS_KEY
                secrets[name] = name.upper()  # serialised as a keyword of its own: to_json
        return secrets

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "model_kwargs" and value:
                # Also when a credential was put there after construction, unwrapped.
                value = _public_kwargs(value, masked=True)
            elif name == "api_base":
                value = _shown_url(value)
            shown = name in ("cache_dir", "slice_of") and value is not None
            yield name, shown_location(value) if shown else value

    def to_json(self) -> Any:
        """LangChain serialisation; a model over a user ``layer`` cannot be serialised."""
        if self.layer is not None:
            not_implemented: SerializedNotImplemented = to_json_not_implemented(self)
            return not_implemented
        serialized = super().to_json()
        public = _public_kwargs(self.model_kwargs, masked=False)
        if public == self.model_kwargs or serialized.get("type") != "constructor":
            return serialized
        hidden = [name for name in self.model_kwargs if is_credential(name)]
        # Credentials among the provider keywords become secret references of their own:
        # LangChain escapes a reference nested in model_kwargs, so it would not be read
        # back. On load the keyword returns to model_kwargs (_collect_model_kwargs). One
        # inside a keyword (extra_body's session token) has no name to be read back by:
        # left out, it is given again to the loaded model.
        constructor = cast(SerializedConstructor, serialized)
        kwargs = dict(constructor["kwargs"])
        kwargs.pop("model_kwargs", None)
        if public:
            kwargs["model_kwargs"] = public
        for name in hidden:
            kwargs[name] = {"lc": 1, "type": "secret", "id": [self.lc_secrets[name]]}
        constructor["kwargs"] = kwargs
        return constructor

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        if isinstance(self.model, BaseChatModel):  # traced as the model it wraps
            if stop is not None or kwargs:
                return self.model._get_ls_params(stop=stop, **kwargs)
            # Derived with the identity, which every call checks anyway (in _prepare): a
            # trace may show params one change late, a key never uses them.
            memo = private_attributes(self)["_identity_memo"]
            if memo is None:
                self._wrapped_identity(self.model)
                memo = private_attributes(self)["_identity_memo"]
            return LangSmithParams(**memo.ls_params)
        params = LangSmithParams(
            ls_provider="mnimi",
            ls_model_name=str(kwargs.get("model") or self._model_name(None)),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature if self.layer is None else None)
        if isinstance(temperature, int | float):
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = stop_list(stop)
        return params

    @property
    def model_name(self) -> str:
        """The model's name, where LangChain's helpers look for a chat model's: the wrapped
        model's own (``ChatOpenAI``'s ``"gpt-4o-mini"``), or the LiteLLM model name.

        ``create_agent`` reads it to choose how to ask for structured output.
        """
        if isinstance(self.model, BaseChatModel):
            for field in ("model_name", "model", "model_id"):
                name = getattr(self.model, field, None)
                if isinstance(name, str) and name:
                    return name
        return self._model_name(None)

    def _resolve_model_profile(self) -> ModelProfile | None:
        # The wrapped model's (ChatOpenAI's knows its context window and structured
        # output, which create_agent and SummarizationMiddleware read); a LiteLLM model
        # name has none unless given (profile=...).
        if isinstance(self.model, BaseChatModel) and self.model.profile is not None:
            return cast(ModelProfile, dict(self.model.profile))
        return None

    # Token counts: the wrapped model's own tokenizer (ChatOpenAI's tiktoken, its
    # custom_get_token_ids), which trim_messages and the summarising middleware read;
    # LangChain's default here needs transformers and counts with GPT-2's. One given to
    # this model (custom_get_token_ids=) comes first, as for any model.

    def _counts_tokens(self) -> BaseChatModel | None:
        """The wrapped model, where it counts this model's tokens."""
        if isinstance(self.model, BaseChatModel) and self.custom_get_token_ids is None:
            return self.model
        return None

    def get_token_ids(self, text: str) -> list[int]:
        """The token ids of ``text``, as the wrapped model tokenizes it.

        Args:
            text: The text to tokenize.

        Returns:
            Its token ids.
        """
        counter = self._counts_tokens()
        return super().get_token_ids(text) if counter is None else counter.get_token_ids(text)

    def get_num_tokens(self, text: str) -> int:
        """How many tokens ``text`` is, as the wrapped model counts them.

        Args:
            text: The text to count.

        Returns:
            Its number of tokens.
        """
        counter = self._counts_tokens()
        return super().get_num_tokens(text) if counter is None else counter.get_num_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """How many tokens ``messages`` (and ``tools``) are, as the wrapped model counts.

        Args:
            messages: The messages to count.
            tools: Tools the model is given, where the model counts them.

        Returns:
            Their number of tokens.
        """
        counter = self._counts_tokens()
        if counter is None:
            return super().get_num_tokens_from_messages(messages, tools)
        return counter.get_num_tokens_from_messages(messages, tools)

    # -- layers -------------------------------------------------------------------------

    def _model_name(self, override: str | None) -> str:
        if override:
            return override
        if isinstance(self.model, BaseChatModel):
            return str(self._wrapped_identity(self.model)["model"])
        if self.model:
            return self.model
        assert self.layer is not None
        return str(self.layer.identity().get("model"))

    def _config(self) -> tuple[Any, ...]:
        """The fields a built layer depends on (how requests are sent travels per call)."""
        return (
            self.model,
            self.temperature,
            self.alias,
            self.api_base,
            self.cache_dir,
            self.slice_of,
            self.replication,
        )

    def _persistent(self, inner: Layer) -> Layer:
        """``inner`` kept in ``cache_dir``, read through ``slice_of`` first if given."""
        if self.slice_of is None:
            return Persistent(inner, self.cache_dir, replication=self.replication)
        source = Persistent(inner, self.slice_of, replication=self.replication)
        return Persistent(source, self.cache_dir)

    def _layer_for(self, override: str | None) -> Layer:
        """The cache layer for ``override`` (or the configured model), built once."""
        if self.layer is not None:
            if override and override != self._model_name(None):
                raise ValueError(
                    f"cannot switch to model {override!r}: this MnimiChatModel draws from a "
                    "given layer"
                )
            return self.layer
        if isinstance(self.model, BaseChatModel):
            if override:
                raise ValueError(
                    f"cannot switch to model {override!r}: this MnimiChatModel wraps a "
                    f"{type(self.model).__name__}"
                )
            return self._wrapped_layer(self.model)
        config = self._config()
        built = private_attributes(self)["_built"]
        # Compared, not hashed: tuple equality checks identity first, so a hit costs
        # well under a microsecond.
        if built is not None and built[0] == config:
            layer = built[1].get(override)
            if layer is not None:
                return layer
        model = override or self.model
        assert model is not None
        # The sequence identity only: copies that differ in api_key, timeout, max_retries or
        # max_batch must share the layer (and so a scope's cursor); _prepare sends those
        # with each call.
        key = (
            model,
            self.temperature,
            self.alias if not override else None,
            self.api_base,
            os.path.abspath(os.path.expanduser(self.cache_dir)),
            self.slice_of,
            self.replication,
        )
        # One lock for building: concurrent first calls (asyncio.gather, thread pools)
        # must end up with the same layer, or each would start its own cursors.
        with _SHARED_LOCK:
            built = self._built
            if built is None or built[0] != config:
                built = self._built = (config, {})
            layer = built[1].get(override)
            if layer is None:
                layer = _SHARED_LAYERS.get(key)
                if layer is None:
                    layer = self._build_layer(model, alias=key[2])
                    _SHARED_LAYERS[key] = layer
                built[1][override] = layer
        return layer

    def _wrapped_identity(self, chat: BaseChatModel) -> dict[str, Any]:
        """:func:`wrapped_identity`, derived anew only when the wrapped model changed.

        The wrapped model is the user's, and a changed temperature must not keep drawing
        from the old sequences; what LangChain identifies it by (``_identifying_params``)
        and its endpoint are compared on each call, which costs a few microseconds where
        deriving the identity costs tens.
        """
        # The memos are read through the private attributes' dict: pydantic's own way
        # costs more than the whole check.
        private = private_attributes(self)
        memo: _IdentityMemo | None = private["_identity_memo"]
        if memo is not None and memo.holds(chat, self.alias):
            return memo.identity
        ls_params = chat._get_ls_params()
        identity = wrapped_identity(chat, self.alias, ls_params)
        private["_identity_memo"] = _IdentityMemo.of(chat, self.alias, identity, ls_params)
        return identity

    def _wrapped_layer(self, chat: BaseChatModel) -> Layer:
        """The cache layer over a wrapped model, shared by every model of its identity."""
        identity = self._wrapped_identity(chat)
        config = (identity, self.cache_dir, self.slice_of, self.replication)
        built = private_attributes(self)["_built"]
        # The identity is derived anew on each call: the wrapped model is the user's, and a
        # changed temperature must not keep drawing from the old sequences.
        if built is not None and built[0] == config:
            return built[1][None]
        key = (
            canonical_json(identity),
            os.path.abspath(os.path.expanduser(self.cache_dir)),
            self.slice_of,
            self.replication,
        )
        with _SHARED_LOCK:
            layer = _SHARED_LAYERS.get(key)
            if layer is None:
                layer = self._persistent(WrappedChatModel(identity))
                _SHARED_LAYERS[key] = layer
            self._built = (config, {None: layer})
        return layer

    def _build_layer(self, model: str, alias: str | None) -> Layer:
        # No key, timeout, retries or max_batch here: the layer is shared by every copy
        # of this configuration, and each call brings its own (see _prepare).
        provider = LiteLLMModel(model, self.temperature, alias=alias, api_base=self.api_base)
        return self._persistent(provider)

    def cache_stats(self, model: str | None = None) -> dict[str, int | float]:
        """What the cache layer did so far: hits, misses, provider requests, tokens, cost.

        Args:
            model: A per-call model override to report on (default: the configured model).

        Returns:
            :meth:`CacheLayer.stats` of the layer, or ``{}`` when it is not a cache layer
            or has not been used yet.

        Example:
            >>> chat.cache_stats()  # doctest: +SKIP
            {'hits': 4, 'misses': 1, 'requests': 1, 'samples_stored': 1, ...}
        """
        if self.layer is not None:
            layer: Layer | None = self.layer
        elif isinstance(self.model, BaseChatModel):
            layer = self._built[1][None] if self._built else None
        else:
            built = self._built
            override = None if model == self.model else model
            layer = built[1].get(override) if built and built[0] == self._config() else None
        return layer.stats() if isinstance(layer, CacheLayer) else {}

    # -- requests and samples ----------------------------------------------------------

    def _request_defaults(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.model_kwargs)
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.stop:
            params["stop"] = list(self.stop)
        return params

    def _prepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        sink: _Sink | None = None,
    ) -> _Draw:
        """Turn one LangChain call into the draw that answers it."""
        override = kwargs.get("model")
        if override is not None and not isinstance(override, str):
            raise TypeError(f"model must be a str, got {type(override).__name__}")
        wrapped = self.model if isinstance(self.model, BaseChatModel) else None
        n = kwargs.get("n")
        if n is None:
            n = self.n
            if wrapped is not None and "n" not in self.model_fields_set:
                # ChatOpenAI(n=3) answers with 3 generations: so does its wrapper.
                n = getattr(wrapped, "n", None) or n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if sink is not None:
            n = 1  # a stream is one generation
        params = self._request_defaults()
        if stop is not None:
            if stop:
                params["stop"] = stop_list(stop)
            else:
                params.pop("stop", None)
        for key, value in kwargs.items():
            if key not in _CALL_ONLY and value is not None:
                params[key] = value
        if override == self.model:
            override = None
        chat = _keyed_messages(messages)
        request: Request
        if wrapped is not None:
            limit = self.max_batch
            if "max_batch" not in self.model_fields_set and "n" in type(wrapped).model_fields:
                limit = _WRAPPED_MAX_N  # one request answers a whole refill
            request = Request(chat, params, _Call(wrapped, messages, limit, sink))
        elif self.layer is None:
            # How this caller's refills are sent: the shared layer serves copies that
            # differ in these, so they travel with the call (a per-call keyword wins).
            # LiteLLMRequest keys none of them, nor LiteLLM's own options, as MnimiCache.
            if self.api_key is not None:
                params.setdefault("api_key", self.api_key)
            if self.timeout is not None:
                params.setdefault("timeout", self.timeout)
            if self.max_retries is not None:
                params.setdefault("max_retries", self.max_retries)
            request = LiteLLMRequest(chat, params, max_batch=self.max_batch)
        elif _over_litellm(self.layer):
            request = LiteLLMRequest(chat, params)
        else:
            # A custom model gets its keywords as given, secrets unwrapped.
            request = Request(chat, {k: reveal_secret(v) for k, v in params.items()})
        base = self._layer_for(override)
        layer = _scoped(base)
        key = self._key_of(base, request) if wrapped is not None else base.key_of(request)
        sequence = (id(base), key)
        # Gated wherever a live stream may draw the same stored sequence: this adapter's
        # wrapped models, or MnimiCache over the same cache.
        gate = (base.sequences(), key) if isinstance(base, CacheLayer) else None
        model = str(base.identity()["model"]) if wrapped is not None else self._model_name(override)
        return _Draw(layer, request, n, model, sequence, gate)

    def _key_of(self, base: Layer, request: Request) -> str:
        """``base.key_of(request)`` for a wrapped model, reused when the previous call asked
        the same: the canonical JSON and hash of a request are a third of a hit's own cost.

        Only there: a wrapped model's layer has one fixed identity, while a given layer's
        may change. The request is kept as a copy, so a value changed in place since (a
        bound tool's dict) is seen; anything but plain JSON is always hashed.
        """
        private = private_attributes(self)
        last = private["_last_key"]
        if (
            last is not None
            and last[0] is base
            and _same(last[1], request.messages)
            and _same(last[2], request.params)
        ):
            root = base.root
            # Where key_of keeps the keys it computed: every layer of the stack asks again.
            request.keys[id(root)] = (root, last[3])
            return str(last[3])
        key = base.key_of(request)
        messages, params = _plain_copy(request.messages), _plain_copy(dict(request.params))
        if messages is not _NOT_PLAIN and params is not _NOT_PLAIN:
            private["_last_key"] = (base, messages, params, key)
        return key

    def _draw(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> tuple[list[Sample], str]:
        draw = self._prepare(messages, stop, kwargs)
        return _gated(draw), draw.model

    async def _adraw(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> tuple[list[Sample], str]:
        draw = self._prepare(messages, stop, kwargs)
        return await _agated(draw), draw.model

    def _metadata(self, sample: Sample, model: str) -> dict[str, Any]:
        return {
            "model_name": model,
            "finish_reason": sample.finish_reason,
            **_facts(sample),
            "provider_model_name": sample.model,
            **sample.provider_extras(),  # where ChatOpenAI puts them
        }

    def _generation(self, sample: Sample, model: str) -> ChatGeneration:
        replayed = _stored_message(sample, facts=True)
        if replayed is not None:
            return ChatGeneration(
                message=replayed, generation_info=_reply(sample, "generation_info")
            )
        raw_calls = sample.message.get("tool_calls")
        content = sample.text or sample.message.get("content") or ""
        calls: dict[str, Any] = {}
        if raw_calls:  # skipped when empty: validating empty lists costs a cache hit ~0.5 us
            calls["tool_calls"], calls["invalid_tool_calls"] = _parse_tool_calls(raw_calls)
        message = AIMessage(
            content=content,
            usage_metadata=_usage(sample),
            response_metadata=self._metadata(sample, model),
            **calls,
        )
        return ChatGeneration(
            message=message, generation_info={"finish_reason": sample.finish_reason}
        )

    def _llm_output(self, samples: list[Sample]) -> dict[str, Any] | None:
        """The wrapped model's ``llm_output`` of the responses that drew ``samples``,
        combined as the model combines them where they are several."""
        if len(samples) == 1:  # most calls, cache hits among them: nothing to combine
            return _reply(samples[0], "llm_output")
        outputs = {s.response_id: out for s in samples if (out := _reply(s, "llm_output"))}
        if len(outputs) < 2:
            return next(iter(outputs.values()), None)
        return self._combine_llm_outputs(list(outputs.values()))

    def _chunks(self, sample: Sample, model: str) -> Iterator[ChatGenerationChunk]:
        """A stored sample as a stream: text pieces, tool-call chunks, then the totals."""
        replayed = _stored_message(sample, facts=True)
        if replayed is not None:
            yield from _replay_chunks(replayed)
            return
        content = sample.text or sample.message.get("content") or ""
        raw_calls: list[dict[str, Any]] = sample.message.get("tool_calls") or []
        calls: list[ToolCallChunk] = []
        for index, raw in enumerate(raw_calls):
            function = raw.get("function") or {}
            calls.append(
                tool_call_chunk(
                    name=function.get("name"),
                    args=function.get("arguments") or "",
                    id=raw.get("id"),
                    index=index,
                )
            )
        last = AIMessageChunk(
            content="",
            usage_metadata=_usage(sample),
            response_metadata=self._metadata(sample, model),
            chunk_position="last",
        )
        yield from _pieces(content, calls, last, {"finish_reason": sample.finish_reason})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        try:
            samples, model = self._draw(messages, stop, kwargs)
        except _JOINED as error:
            raise _as_model_error(error) from error.__cause__
        return self._result(samples, model)

    def _result(self, samples: list[Sample], model: str) -> ChatResult:
        """The call's samples as the chat model's result, with the wrapped model's output."""
        # Built unvalidated: every part is made here, and a cache hit is counted in
        # microseconds (validation cost it about 1% of a hit).
        return ChatResult.model_construct(
            generations=[self._generation(s, model) for s in samples],
            llm_output=self._llm_output(samples),
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        try:
            samples, model = await self._adraw(messages, stop, kwargs)
        except _JOINED as error:
            raise _as_model_error(error) from error.__cause__
        return self._result(samples, model)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        try:
            if isinstance(self.model, BaseChatModel):
                chunks = self._live(messages, stop, kwargs)
            else:
                # Through LiteLLM a miss is drawn whole (and stored) before anything is
                # streamed: a half-read stream must never leave a torn sample behind.
                samples, model = self._draw(messages, stop, kwargs)
                chunks = self._chunks(samples[0], model)
            for chunk in chunks:
                if run_manager is not None:
                    run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                yield chunk
        except _JOINED as error:
            raise _as_model_error(error) from error.__cause__

    def _live(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> Iterator[ChatGenerationChunk]:
        """A wrapped model's stream: live on a miss, stored once complete; a hit replayed."""
        sink = _Sink()
        draw = self._prepare(messages, stop, kwargs, sink)
        assert draw.gate is not None
        if not GATES.start_live(draw.gate):  # another draw of this request is running
            _call_of(draw.request).sink = None
            yield from self._replayed(draw, _gated(draw))
            return
        # Drawn on a refill thread, which also runs the refill itself: one hand-off, and
        # a sample paid for is stored whatever the reader does (law 6).
        drawing = start_apart(functools.partial(_live_draw, draw, sink))
        complete = False
        try:
            while (item := sink.get()) is not _DONE:
                message, ends = item
                complete = complete or ends
                yield ChatGenerationChunk(message=message)
            samples = drawing.result()
            complete = True
        finally:
            if not complete:  # abandoned, or failed: a partial answer is no sample
                _left(draw, sink)
        yield from self._stream_end(draw, samples, sink)

    def _replayed(self, draw: _Draw, samples: list[Sample]) -> Iterator[ChatGenerationChunk]:
        """A stored sample as a stream: abandoned before its end, it gives its position back.

        As a live stream does: a run that abandons it and calls again is answered the
        same way on a re-run, where the stream is a hit (else the call after it would
        skip a position, and pay for it).
        """
        complete = False
        try:
            for chunk in self._chunks(samples[0], draw.model):
                complete = complete or _ends_answer(chunk.message)
                yield chunk
            complete = True
        finally:
            if not complete:
                draw.give_back(samples)

    def _stream_end(
        self, draw: _Draw, samples: list[Sample], sink: _Sink
    ) -> Iterator[ChatGenerationChunk]:
        """What follows a stream's live chunks: the cache facts, or the whole replayed sample."""
        sample = samples[0]
        if sink.draw_id is None:  # nothing went live: a stored sample
            yield from self._replayed(draw, samples)
        elif sink.draw_id == sample.draw_id:
            # Of the live chunks' kind: the stored content may be a string where they were
            # blocks (_as_invoked), and a string would turn their sum into one.
            content: str | list[Any] = [] if sink.blocks else ""
            facts = AIMessageChunk(
                content=content,
                response_metadata=_facts(sample),
                id=sink.message_id,
                chunk_position="last",
            )
            yield ChatGenerationChunk(message=facts)
        else:
            # Only another process appending to this sequence at the same moment can do
            # this: the streamed answer landed at another position than this call reads.
            raise MnimiError(
                f"the sample streamed live for {sample.origin and sample.origin.get('key')} "
                "was stored at another position while another process extended the sequence; "
                "stream again"
            )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        try:
            if isinstance(self.model, BaseChatModel):
                async for chunk in self._alive(messages, stop, kwargs):
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                    yield chunk
                return
            samples, model = await self._adraw(messages, stop, kwargs)
            for chunk in self._chunks(samples[0], model):
                if run_manager is not None:
                    await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                yield chunk
        except _JOINED as error:
            raise _as_model_error(error) from error.__cause__

    async def _alive(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Async :meth:`_live`."""
        sink = _Sink(asyncio.get_running_loop())
        draw = self._prepare(messages, stop, kwargs, sink)
        assert draw.gate is not None
        if not GATES.start_live(draw.gate, on_loop=True):
            _call_of(draw.request).sink = None
            for chunk in self._replayed(draw, await _agated(draw)):
                yield chunk
            return
        drawing = asyncio.ensure_future(_alive_draw(draw, sink))
        # An abandoned stream's draw ends in _Abandoned that nobody awaits: seen here.
        drawing.add_done_callback(lambda done: done.cancelled() or done.exception())
        complete = False
        try:
            while (item := await sink.aget()) is not _DONE:
                message, ends = item
                complete = complete or ends
                yield ChatGenerationChunk(message=message)
            samples = await drawing
            complete = True
        finally:
            if not complete:
                _left(draw, sink)
        for chunk in self._stream_end(draw, samples, sink):
            yield chunk

    # -- batches ------------------------------------------------------------------------

    def _plan_batch(
        self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]
    ) -> dict[tuple[int, str], tuple[_Draw, list[int]]]:
        """The inputs of a batch grouped by request, in input order: one draw per group."""
        options = dict(kwargs)
        stop = options.pop("stop", None)
        # Only labels for LangChain's traces (``with_structured_output`` binds them): its
        # ``invoke`` drops them before ``_generate``, so each input's own call is keyed
        # without them, and a draw keyed with them would be paid for and never read.
        for label in _TRACE_LABELS:
            options.pop(label, None)
        groups: dict[tuple[int, str], tuple[_Draw, list[int]]] = {}
        for index, value in enumerate(inputs):
            draw = self._prepare(_messages_of(value), stop, options)
            groups.setdefault(draw.key, (draw, []))[1].append(index)
        return groups

    def _ahead(
        self,
        inputs: list[LanguageModelInput],
        kwargs: dict[str, Any],
        executor: Executor,
        config: RunnableConfig,
    ) -> dict[int, tuple[tuple[int, str], _Outcome]]:
        """Each input's outcome, drawn before any input runs: identical inputs together, in
        input order (their positions), different requests concurrently on ``executor``;
        at most ``max_concurrency`` provider requests at once, whatever the groups."""
        groups = list(self._plan_batch(inputs, kwargs).values())
        with requests_at_most(config.get("max_concurrency")):
            drawn = list(
                executor.map(lambda group: _group_outcomes(group[0], len(group[1])), groups)
            )
        return _shared(groups, drawn)

    async def _aahead(
        self, inputs: list[LanguageModelInput], kwargs: dict[str, Any], config: RunnableConfig
    ) -> dict[int, tuple[tuple[int, str], _Outcome]]:
        """Async :meth:`_ahead`."""
        groups = list(self._plan_batch(inputs, kwargs).values())
        with requests_at_most(config.get("max_concurrency")):
            drawn = await asyncio.gather(
                *(_agroup_outcomes(draw, len(members)) for draw, members in groups)
            )
        return _shared(groups, drawn)

    def _run_drawn(
        self,
        drawn: tuple[tuple[int, str], _Outcome],
        value: LanguageModelInput,
        config: RunnableConfig,
        return_exceptions: bool,
        kwargs: dict[str, Any],
    ) -> Any:
        """One input of a batch as its own call (callbacks, tracing), answered by ``drawn``."""
        _PREDRAWN.set(drawn)
        try:
            return self.invoke(value, config, **kwargs)
        except Exception as error:
            if return_exceptions:
                return error
            raise

    async def _arun_drawn(
        self,
        drawn: tuple[tuple[int, str], _Outcome],
        value: LanguageModelInput,
        config: RunnableConfig,
        return_exceptions: bool,
        kwargs: dict[str, Any],
    ) -> Any:
        """Async :meth:`_run_drawn` (in the input's own task)."""
        _PREDRAWN.set(drawn)
        try:
            return await self.ainvoke(value, config, **kwargs)
        except Exception as error:
            if return_exceptions:
                return error
            raise

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer several inputs; in ``independent()`` input ``i`` gets the same position
        on every run, whatever order the threads run in.

        Identical inputs are drawn together, in input order, in as few provider requests
        as the provider allows; different requests are drawn concurrently. Each input gets
        its own outcome: if the draw of identical inputs fails part-way (a replication miss,
        a provider error), the inputs whose positions are there are answered. Then every input
        runs as its own call (callbacks, tracing), answered by the samples drawn for it.

        Example:
            >>> with independent():  # doctest: +SKIP
            ...     votes = chat.batch(["Pick a number"] * 5)  # positions 0..4, in order
        """
        if len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        with get_executor_for_config(configs[0]) as executor:
            ahead = self._ahead(inputs, kwargs, executor, configs[0])
            return list(
                executor.map(
                    lambda i: self._run_drawn(
                        ahead[i], inputs[i], configs[i], return_exceptions, kwargs
                    ),
                    range(len(inputs)),
                )
            )

    def batch_as_completed(  # type: ignore[override]
        self,
        inputs: Sequence[LanguageModelInput],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, AIMessage | Exception]]:
        """:meth:`batch`'s answers as each input's call ends, with its index; as
        deterministic: input ``i`` gets the same position on every run."""
        inputs = list(inputs)
        if not inputs:
            return
        configs = get_config_list(config, len(inputs))
        with get_executor_for_config(configs[0]) as executor:
            ahead = self._ahead(inputs, kwargs, executor, configs[0])
            running = {
                executor.submit(
                    self._run_drawn, ahead[i], inputs[i], configs[i], return_exceptions, kwargs
                ): i
                for i in range(len(inputs))
            }
            for done in as_completed(running):
                yield running[done], done.result()

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async :meth:`batch`, as deterministic."""
        if len(inputs) < 2:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        configs = get_config_list(config, len(inputs))
        ahead = await self._aahead(inputs, kwargs, configs[0])
        return list(
            await asyncio.gather(
                *(
                    self._arun_drawn(ahead[i], inputs[i], configs[i], return_exceptions, kwargs)
                    for i in range(len(inputs))
                )
            )
        )

    async def abatch_as_completed(  # type: ignore[override]
        self,
        inputs: Sequence[LanguageModelInput],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[tuple[int, AIMessage | Exception]]:
        """Async :meth:`batch_as_completed`, as deterministic."""
        inputs = list(inputs)
        if not inputs:
            return
        configs = get_config_list(config, len(inputs))
        ahead = await self._aahead(inputs, kwargs, configs[0])

        async def indexed(i: int) -> tuple[int, Any]:
            drawn = self._arun_drawn(ahead[i], inputs[i], configs[i], return_exceptions, kwargs)
            return i, await drawn

        for done in asyncio.as_completed([indexed(i) for i in range(len(inputs))]):
            yield await done

    # -- tools and structured output ---------------------------------------------------

    def _rebind(self, runnable: Any) -> Any:
        """``runnable`` (built by the wrapped model) with this model wherever it has that one.

        ``bind_tools`` and ``with_structured_output`` of a chat model return bindings of
        the model itself, inside sequences, maps and fallbacks; each of them is a pydantic
        model whose fields hold its parts, so the parts are replaced field by field.
        """
        if runnable is self.model:
            return self
        if isinstance(runnable, list):
            items = [self._rebind(item) for item in runnable]
            changed = any(new is not old for new, old in zip(items, runnable, strict=True))
            return items if changed else runnable
        if isinstance(runnable, dict):
            entries = {name: self._rebind(item) for name, item in runnable.items()}
            changed = any(entries[name] is not item for name, item in runnable.items())
            return entries if changed else runnable
        if not isinstance(runnable, Runnable) or not isinstance(runnable, BaseModel):
            return runnable
        update = {}
        for name in type(runnable).model_fields:
            part = getattr(runnable, name)
            rebound = self._rebind(part)
            if rebound is not part:
                update[name] = rebound
        return runnable.model_copy(update=update) if update else runnable

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI format); their calls are cached and replayed intact.

        Args:
            tools: Tools as dicts, pydantic classes, functions or ``BaseTool`` objects.
            tool_choice: ``"auto"``, ``"none"``, ``"required"``/``"any"``/``True``
                (call some tool), a tool name, or an OpenAI ``tool_choice`` dict.
            strict: Ask the provider to follow the schemas exactly.
            parallel_tool_calls: Allow several tool calls in one answer.
            **kwargs: Further request parameters.

        Returns:
            A runnable that returns ``AIMessage`` objects with ``tool_calls``.

        Example:
            >>> chat.bind_tools([get_weather], tool_choice="get_weather")  # doctest: +SKIP
        """
        if isinstance(self.model, BaseChatModel):
            # Formatted by the wrapped model itself (Anthropic's format for ChatAnthropic).
            given: dict[str, Any] = {"tool_choice": tool_choice, "strict": strict}
            given["parallel_tool_calls"] = parallel_tool_calls
            options = {k: v for k, v in given.items() if v is not None}
            return self._rebind(self.model.bind_tools(tools, **options, **kwargs))
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        names = [tool["function"]["name"] for tool in formatted]
        if tool_choice is not None and tool_choice is not False:
            if tool_choice is True or tool_choice == "any":
                tool_choice = "required"
            elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
                if tool_choice not in names:
                    raise ValueError(f"tool_choice {tool_choice!r} names none of the tools {names}")
                tool_choice = {"type": "function", "function": {"name": tool_choice}}
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] | None = None,
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable that answers with an instance of ``schema`` (or a dict).

        LangChain's default implementation always uses tool calling; this one
        also offers the providers' JSON modes.

        Args:
            schema: A pydantic class, a ``TypedDict``, a JSON schema or an OpenAI
                tool schema.
            method: ``"function_calling"`` (a forced tool call, the default of the string
                form), ``"json_mode"`` (``response_format={"type": "json_object"}``; the
                prompt must ask for the keys) or ``"json_schema"`` (the provider's
                structured outputs). A wrapped model's own default when not given: the
                wrapper sends what the model alone would.
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of
                raising on a parsing error.
            strict: Ask the provider to follow the schema exactly.
            **kwargs: Not supported; present for interface compatibility.

        Returns:
            A runnable returning pydantic objects (pydantic schemas) or dicts.

        Raises:
            ValueError: Unknown ``method`` or unexpected keyword arguments.

        Example:
            >>> class Joke(BaseModel):  # doctest: +SKIP
            ...     setup: str
            ...     punchline: str
            >>> jokes = chat.with_structured_output(Joke, method="json_schema")  # doctest: +SKIP
            >>> jokes.invoke("Tell me a joke about cats.")  # doctest: +SKIP
            Joke(setup='...', punchline='...')
        """
        if isinstance(self.model, BaseChatModel):
            # The wrapped model's own methods and parsers, its calls sent through this one.
            options: dict[str, Any] = {"strict": strict} if strict is not None else {}
            if method is not None:
                options["method"] = method
            structured = self.model.with_structured_output(
                schema, include_raw=include_raw, **options, **kwargs
            )
            return _model_first(self._rebind(structured))
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        method = method or "function_calling"
        pydantic = _is_pydantic_class(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: OutputParserLike[Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict, ls_structured_output_format=trace
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_mode", "json_schema"):
            if method == "json_mode":
                response_format: dict[str, Any] = {"type": "json_object"}
            else:
                function = convert_to_openai_tool(schema, strict=strict)["function"]
                spec: dict[str, Any] = {"name": function["name"], "schema": function["parameters"]}
                if function.get("description"):
                    spec["description"] = function["description"]
                if strict is not None:
                    spec["strict"] = strict
                response_format = {"type": "json_schema", "json_schema": spec}
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'function_calling', 'json_mode' or 'json_schema', got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )


# LangChain inspects ``_generate``'s signature on every uncached call (to see whether it
# takes ``run_manager``); a precomputed ``__signature__`` makes that lookup ~10 us cheaper,
# a noticeable share of a cache hit.
MnimiChatModel._generate.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    MnimiChatModel._generate
)
MnimiChatModel._agenerate.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    MnimiChatModel._agenerate
)


# -- LangChain's cache interface --------------------------------------------------------


class _Miss(Exception):
    """A lookup found no sample at its position: LangChain calls the model, then update()."""


#: Locks that keep the lookups and updates of one key in order (see MnimiLLMCache).
_KEY_LOCKS = 64


def _keyed_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A chat model's settings as :class:`MnimiLLMCache` keys them, as a wrapped model is.

    What decides the answer stays (the sampling settings of :func:`wrapped_identity`, the
    endpoint without its userinfo), and ``n``: a cached value is one response of ``n``
    generations. Credentials, headers, query parameters, clients, timeouts, retries and
    streaming never do: a key, a stored record and a replication miss's message show them.
    """
    keyed: dict[str, Any] = {}
    for name, value in settings.items():
        words = _words(name)
        if is_credential(name) or words & _CALL_WORDS:
            continue
        if words & _ENDPOINT_WORDS:
            if isinstance(value, str) and value:
                keyed[name] = keyed_endpoint(value)
        elif name == "n":
            if value != 1:  # one generation, set or not, is the default
                keyed[name] = value
        elif _keyed_setting(name):
            keyed.update(keyed_params({name: _jsonable(value)}))
    return keyed


def _llm_params(llm_string: str) -> dict[str, Any]:
    """The request parameters of LangChain's ``llm_string``, as :func:`_keyed_settings`.

    LangChain builds it as the model's serialised JSON (its constructor's arguments, a
    secret field only as a reference, but headers, ``extra_body`` and the base URL as
    given), then ``---`` and the repr of the call's parameters (a per-call credential in
    plain text); a model LangChain cannot serialise gives the repr of its parameters alone.
    """
    serialised, _, call = llm_string.partition("---")
    try:
        model: Any = json.loads(serialised)
    except ValueError:
        model, call = None, llm_string
        _warn_unserialised(call)
    if isinstance(model, dict):
        settings = model.get("kwargs")
        model = {
            "id": model.get("id"),
            "kwargs": _keyed_settings(settings) if isinstance(settings, dict) else None,
        }
    try:
        pairs = _call_pairs(call) if call else []
        params: Any = _keyed_settings({str(k): v for k, v in pairs})
    except (ValueError, SyntaxError, TypeError):
        params = None  # not a repr of plain values: what it holds cannot be told apart
    return {"langchain_model": model, "call": params}


#: The model types :func:`_warn_unserialised` has warned of.
_WARNED_UNSERIALISED: set[str] = set()


def _warn_unserialised(call: str) -> None:
    """Warn that a model LangChain cannot serialise is keyed by its invocation params alone.

    Its ``llm_string`` holds no more: a setting its ``_identifying_params`` leave out
    (ChatDeepSeek's endpoint, ChatLiteLLM's ``max_tokens``) is then in no key, and models
    that differ only there share sequences, in every LangChain cache. Shown once per model
    type: LangChain's own ``catch_warnings`` blocks reset Python's registry of those shown.
    """
    found = re.search(r"\('_type', '([^']*)'\)", call)
    kind = found.group(1) if found else "unknown type"
    if kind in _WARNED_UNSERIALISED:
        return
    _WARNED_UNSERIALISED.add(kind)
    warnings.warn(
        f"MnimiLLMCache: LangChain cannot serialise this chat model ({kind}), so its cache "
        "calls carry only its _identifying_params: settings they leave out (an endpoint, "
        "max_tokens, ...) are in no key, and models that differ only there share samples. "
        "Wrap the model instead: MnimiChatModel(model=your_model, cache_dir=...)",
        UserWarning,
        stacklevel=2,
    )


#: CPython 3.11 (before 3.11.9) raises SystemError, "AST constructor recursion depth
#: mismatch", when threads build ASTs at once (gh-106905): the lookups of a batch's
#: concurrent calls did. One parse at a time, and each call's parameters parsed once.
_PARSING = threading.Lock()


@functools.lru_cache(maxsize=256)
def _call_pairs(call: str) -> Any:
    """The value of the repr of a call's parameters (see :func:`_llm_params`)."""
    with _PARSING:
        return ast.literal_eval(call)


def _prompt_messages(prompt: str) -> tuple[dict[str, Any], ...]:
    """LangChain's cache prompt as the messages a key holds (see :func:`_keyed_messages`).

    A chat model's prompt is its messages serialised whole (``dumps``), so an earlier
    answer in the history carries its ids, usage and cache facts, which a replay changes;
    keyed as they are, no conversation would replay past its first step. A completion
    model's prompt is plain text: one user message.
    """
    try:
        serialised = json.loads(prompt)
        # What a reply got back besides its message (usage, response facts) is not what the
        # model reads, and a replayed one's differs: LangChain gives a cache hit the usage
        # {"total_cost": 0}, which no message even accepts.
        messages = messages_from_dict(
            [
                {"type": item["kwargs"]["type"], "data": _without_reply_facts(item["kwargs"])}
                for item in serialised
            ]
        )
    except (ValueError, TypeError, KeyError):  # not LangChain's serialised messages
        return ({"role": "user", "content": prompt},)
    return _keyed_messages(messages)


def _without_reply_facts(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in ("usage_metadata", "response_metadata")}


class _Generations(BatchedModel):
    """The provider behind :class:`MnimiLLMCache`: what LangChain hands to ``update``.

    A lookup's draw finds no value and fails (nothing is stored, the position goes back
    to its cursor); an update's draw lands the model's answer at the position it claims.
    """

    def __init__(self) -> None:
        super().__init__("langchain-cache", 1.0)

    def identity(self) -> dict[str, Any]:
        # The model is in each request's parameters (LangChain's llm_string).
        return {"model": self.model_name, "params": {}}

    def query(self, request: Request, n: int) -> list[str | Sample]:
        pending: list[Sample] = request.source
        if not pending:
            raise _Miss
        return [pending.pop()]  # once: a refill that asks again finds no answer


class MnimiLLMCache(BaseCache):
    """LangChain's cache interface over Mnimi sample sequences, for code you cannot touch.

    ``set_llm_cache(MnimiLLMCache(path))`` or ``ChatAnthropic(cache=MnimiLLMCache(path))``
    gives every chat model call LangChain caches the Mnimi semantics: outside any scope a
    call replays position 0 of its request's sequence; in ``independent()`` each
    ``lookup`` serves the next position of the scope's cursor and a miss's ``update``
    appends the model's answer at that position; ``replication=True`` makes a miss raise
    :class:`~mnimi_adapters.ReplicationCacheMiss` before anything is sent. A key holds
    the prompt's messages in OpenAI's form (as ``MnimiChatModel`` keys them), not
    LangChain's serialised prompt, so that an answer's ids, usage and cache facts in a
    conversation's history leave the next step's key alone: agent loops replay. Of the
    model it holds what :func:`_keyed_settings` keeps, never a credential, header or
    retry setting. The attempts of a LangGraph ``RetryPolicy`` draw as for
    ``MnimiChatModel``: fresh per attempt, the same within one, replayed by a re-run.

    What LangChain's cache interface cannot carry: streaming bypasses it (``stream``,
    ``astream`` and ``stream_events(version="v3")`` neither read nor write any LangChain
    cache; with ``replication=True`` such a call raises :class:`MnimiError` before it
    sends, see :class:`_ReplicationStreamGuard`), and a response of ``n`` generations is
    one cached value. Wrap the model instead (``MnimiChatModel(model=...)``)
    for live streaming that is cached, ``n`` samples in one request, and tool calls keyed by
    the model's own format. Two concurrent misses at one position (outside a scope) store
    the first answer to arrive there; the other caller keeps its own answer, which is
    stored at the next position (it was paid for), as is an answer whose position another
    process filled first. In ``independent()``, concurrent identical calls each store
    their answer, at the first position not yet stored: a re-run replays the same
    samples, not always to the same call (LangChain's lookups race to the cache; the
    wrapper reserves input order).

    Args:
        path: The cache directory (or a Redis URL), as for ``Persistent``.
        replication: Never let a miss through; raise ``ReplicationCacheMiss`` instead.

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> set_llm_cache(MnimiLLMCache("~/.llm_cache"))  # doctest: +SKIP
        >>> with independent():  # doctest: +SKIP
        ...     votes = [chat.invoke("Pick a number").content for _ in range(3)]  # 3 samples
    """

    def __init__(self, path: str | os.PathLike[str], replication: bool = False) -> None:
        _watch_langgraph()  # before any graph runs, as the wrapper
        self._layer = Persistent(_Generations(), path, replication=replication)
        # Lookups and updates of one key, one at a time (the model calls between them run
        # concurrently): a lookup's miss hands its position back before an update claims
        # one, so an update always claims the first position not stored, and its answer
        # lands there. Without, concurrent identical calls in independent() let an update
        # claim a position past an unstored one, whose refill LangChain's answer could
        # not fill: _Miss escaped update() and the paid answer was lost.
        self._key_locks = tuple(threading.Lock() for _ in range(_KEY_LOCKS))
        if replication:
            _guard_streams()

    @property
    def replication(self) -> bool:
        """Whether a miss raises ``ReplicationCacheMiss`` instead of letting a request out."""
        return self._layer.replication

    def __repr__(self) -> str:
        mode = ", replication=True" if self._layer.replication else ""
        return f"MnimiLLMCache({shown_location(str(self._layer.store.location))!r}{mode})"

    @staticmethod
    def _request(prompt: str, llm_string: str, pending: list[Sample]) -> Request:
        return Request(_prompt_messages(prompt), _llm_params(llm_string), pending)

    def _draw(self, request: Request) -> Sample:
        """This call's sample: the next position of its scope (see :func:`_scoped`)."""
        layer = _scoped(self._layer)
        key = self._layer.key_of(request)
        with self._key_locks[hash(key) % _KEY_LOCKS]:
            return layer.draw(request, 1)[0]

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """The generations at this call's position of the request's sequence, or None."""
        try:
            sample = self._draw(self._request(prompt, llm_string, []))
        except _Miss:
            return None
        except _JOINED as error:
            raise _as_model_error(error) from error.__cause__
        return _generations_of(sample)

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Store the model's answer to a missed lookup at the position that missed."""
        stored = _generations_sample(return_val)
        if stored is None:  # an empty answer is no sample (law 8)
            return
        request = self._request(prompt, llm_string, [stored])
        try:
            served = self._draw(request)
        except _Miss:
            # The answer is stored, but the position it meant to fill was behind a draw of
            # another adapter or process still in flight; the caller has its answer.
            return
        if served.draw_id != stored.draw_id:
            # Another process stored an answer at this position first (positions are per
            # process): the caller keeps its own, which was paid for, so it is stored too,
            # at the end of the sequence, for a later position to serve (law 6).
            self._layer.keep(request, [stored])

    def clear(self, **kwargs: Any) -> None:
        """Not supported: sequences are append-only; ``mnimi prune`` evicts whole ones."""
        raise MnimiError("a Mnimi cache is append-only: evict sequences with `mnimi prune` instead")

    def stats(self) -> dict[str, int | float]:
        """What the cache did so far: hits, misses, stored samples (see ``CacheLayer``)."""
        return self._layer.stats()


def _generations_sample(generations: Sequence[Generation]) -> Sample | None:
    """LangChain's cached value (a response's generations) as one sample, or None if empty."""
    if not generations:
        return None
    first = generations[0]
    message = {"role": "assistant", "content": first.text}
    stored: list[dict[str, Any]] = []
    for generation in generations:
        info = generation.generation_info
        entry: dict[str, Any] = {"text": generation.text, "info": info and _without_headers(info)}
        if isinstance(generation, ChatGeneration):
            message_dict = message_to_dict(generation.message)
            data = message_dict["data"]
            data["response_metadata"] = _without_headers(data.get("response_metadata"))
            entry["message"] = message_dict
        stored.append(_json_safe(entry))
    if isinstance(first, ChatGeneration):
        message = convert_to_openai_messages(first.message)
    sample = Sample(text=first.text, message={**message, _LANGCHAIN_GENERATIONS: stored})
    return sample if usable(sample) else None


def _generations_of(sample: Sample) -> list[Generation]:
    """A stored sample as LangChain's cached value, the cache facts in chat metadata."""
    generations: list[Generation] = []
    for entry in sample.message.get(_LANGCHAIN_GENERATIONS) or []:
        if "message" not in entry:
            generations.append(Generation(text=entry["text"], generation_info=entry["info"]))
            continue
        message = messages_from_dict([entry["message"]])[0]
        message.response_metadata = {
            **_without_headers(message.response_metadata),
            **_facts(sample),
        }
        generations.append(ChatGeneration(message=message, generation_info=entry["info"]))
    return generations


# -- streams that would bypass a replication MnimiLLMCache ------------------------------

# The model methods that ask LangChain's cache before a request: a run they start is
# answered by the cache (or raises ReplicationCacheMiss in its lookup).
_CACHED_PATHS = frozenset(
    method.__code__
    for method in (
        BaseChatModel.generate,
        BaseChatModel.agenerate,
        BaseLLM.generate,
        BaseLLM.agenerate,
    )
)
# Frames between the guard and the model method that starts the run: the callback
# manager's dispatch (a few more on the async path and for on_llm_start's fallback).
_FRAMES_TO_THE_MODEL = 12


def _model_starting_a_run() -> tuple[BaseLanguageModel[Any], str] | None:
    """The model whose run start is being announced, and its method, if no cache answers it.

    The nearest frame up the stack that belongs to a language model (its ``self``, a free
    variable too in ``stream_events``'s nested starter) is the method that announced the
    run; ``generate``/``agenerate`` ask the cache, every other (``stream``, ``astream``,
    ``stream_events``) sends the request without asking.
    """
    frame = inspect.currentframe()
    for _ in range(_FRAMES_TO_THE_MODEL):
        if frame is None:
            return None
        frame = frame.f_back
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, BaseLanguageModel):
            return None if frame.f_code in _CACHED_PATHS else (owner, frame.f_code.co_name)
    return None


def _refuse_a_bypassing_stream() -> None:
    """Raise if the run starting now bypasses a replication MnimiLLMCache its model uses."""
    starting = _model_starting_a_run()
    if starting is None:
        return
    model, method = starting
    if model.cache is False:
        return
    cache = model.cache if isinstance(model.cache, BaseCache) else get_llm_cache()
    if isinstance(cache, MnimiLLMCache) and cache.replication:
        raise MnimiError(
            f"{type(model).__name__}.{method}() would send a request: LangChain's stream(), "
            "astream() and stream_events() never ask a cache, and this model's MnimiLLMCache "
            "is in replication mode. Call invoke() instead (answered from the cache), give "
            "the model disable_streaming=True (stream() then answers from the cache in one "
            "chunk), or wrap it: MnimiChatModel(model=..., replication=True) streams its "
            "cached samples"
        )


class _ReplicationStreamGuard(BaseCallbackHandler):
    """Stops a streamed call that would bypass a replication MnimiLLMCache, before it sends.

    LangChain's ``stream``, ``astream`` and ``stream_events(version="v3")`` never consult a
    cache, so a replication cache cannot answer them; they announce the run to the
    callbacks (``on_chat_model_start``, ``on_llm_start``) before the request, and a handler
    with ``raise_error`` stops it there. It runs inline, so that on the async path too it
    is called from the model method's own stack, which tells a stream from a ``generate``.
    """

    raise_error = True
    run_inline = True
    # Only run starts matter: chains, tools, retrievers and retries never reach it.
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        _refuse_a_bypassing_stream()

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        _refuse_a_bypassing_stream()


_stream_guard: contextvars.ContextVar[BaseCallbackHandler | None] | None = None


def _guard_streams() -> None:
    """Add the stream guard to every callback manager LangChain configures from now on.

    ``register_configure_hook`` adds a context variable's handler to each new callback
    manager; the variable's default holds the guard, so it is there in every thread and
    task. Registered once, when the first replication MnimiLLMCache is made: processes
    without one never pay for the guard.
    """
    global _stream_guard
    with _SHARED_LOCK:
        if _stream_guard is None:
            # The default, not set(): a value set here would be seen in this context only.
            # The guard holds no state, so one shared instance is safe.
            _stream_guard = contextvars.ContextVar(
                "mnimi_replication_stream_guard",
                default=_ReplicationStreamGuard(),  # noqa: B039
            )
            register_configure_hook(_stream_guard, inheritable=False)
